//! The gateway's configuration file (`gateway.toml`). Relative paths are relative to the directory holding it.

use dcos_exec_cluster::EtcdConfig;
use dcos_exec_server::config as config_file;
use dcos_exec_server::config::FileError;
use dcos_exec_server::logging::LogFormat;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// `gateway.toml`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GatewayConfig {
    /// Address the HTTPS API for users listens on, e.g. `0.0.0.0:7443`.
    pub listen: String,
    /// PEM certificate chain presented to users.
    pub tls_cert: PathBuf,
    /// PEM private key of `tls_cert`.
    pub tls_key: PathBuf,
    /// PEM of the cluster CA, which signed every agent's server certificate.
    pub cluster_ca: PathBuf,
    /// PEM client certificate presented to agents (signed by the CA of their `[cluster] gateway_ca`).
    pub client_cert: PathBuf,
    /// PEM private key of `client_cert`.
    pub client_key: PathBuf,
    /// PEM public key (Ed25519 SPKI) that verifies bearer tokens: the agents' key.
    pub token_public_key: PathBuf,
    /// Required `iss` claim of tokens.
    #[serde(default = "default_issuer")]
    pub issuer: String,
    /// Required `aud` claim of tokens.
    #[serde(default = "default_audience")]
    pub audience: String,
    /// OpenID Connect issuers whose tokens are accepted besides the cluster's own (`[[oidc]]` tables, as in
    /// `agent.toml`): give the gateway and the agents the same ones.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub oidc: Vec<dcos_exec_access::oidc::OidcConfig>,
    /// ACL file, or `"etcd"` for the ACL kept in the directory at `{etcd_prefix}/acl`; judged here before
    /// any agent is asked (each agent judges again with its own), reloaded on change.
    pub acl: PathBuf,
    /// Ed25519 public key (PEM) the ACL in etcd must be signed with; needed by `acl = "etcd"`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub acl_key: Option<PathBuf>,
    /// Audit log, JSON lines, appended.
    pub audit_log: PathBuf,
    /// How long the last directory snapshot keeps being served while etcd is unreachable.
    #[serde(default = "default_max_stale")]
    pub max_stale: String,
    /// How long connecting to an agent (TCP and TLS) may take before it counts as unreachable.
    #[serde(default = "default_connect_timeout")]
    pub connect_timeout: String,
    /// Connections accepted but not yet past authentication (TLS handshake, first request); more are closed at
    /// once, so that idle or slow clients cannot take every socket of the cluster's one entrance.
    #[serde(default = "default_max_unauthenticated")]
    pub max_unauthenticated: usize,
    /// `text` (the default) or `json`: one JSON object per log line on stderr.
    #[serde(default)]
    pub log_format: LogFormat,
    /// Key prefix of the directory in etcd.
    #[serde(default = "default_prefix")]
    pub etcd_prefix: String,
    /// The etcd cluster holding the directory.
    pub etcd: EtcdConfig,
}

fn default_issuer() -> String {
    "dcos-exec-agent".into()
}
fn default_audience() -> String {
    dcos_exec_proto::TOKEN_AUDIENCE.into()
}
fn default_max_stale() -> String {
    "30s".into()
}
fn default_max_unauthenticated() -> usize {
    256
}
fn default_connect_timeout() -> String {
    "3s".into()
}
/// The value of `acl` that reads the ACL from etcd.
pub const ACL_IN_ETCD: &str = "etcd";

/// The directory's default key prefix.
pub fn default_prefix() -> String {
    dcos_exec_cluster::DEFAULT_PREFIX.into()
}

/// A loaded configuration with paths made absolute and durations parsed.
#[derive(Debug, Clone)]
pub struct Loaded {
    pub file: GatewayConfig,
    pub max_stale: Duration,
    pub connect_timeout: Duration,
}

impl GatewayConfig {
    /// Reads and validates `path`, resolving relative paths against its directory.
    pub fn load(path: &Path) -> Result<Loaded, FileError> {
        let (mut cfg, base) = config_file::read::<GatewayConfig>(path)?;
        for p in [
            &mut cfg.tls_cert,
            &mut cfg.tls_key,
            &mut cfg.cluster_ca,
            &mut cfg.client_cert,
            &mut cfg.client_key,
            &mut cfg.token_public_key,
            &mut cfg.audit_log,
        ] {
            *p = base.join(&*p);
        }
        if cfg.acl != Path::new(ACL_IN_ETCD) {
            cfg.acl = base.join(&cfg.acl);
        }
        if let Some(p) = cfg.acl_key.as_mut() {
            *p = base.join(&*p);
        }
        cfg.etcd.resolve_paths(&base);
        for o in &mut cfg.oidc {
            o.resolve_paths(&base);
        }
        let dur = |key: &'static str, value: &str| config_file::duration(path, key, value);
        let max_stale = dur("max_stale", &cfg.max_stale)?;
        let connect_timeout = dur("connect_timeout", &cfg.connect_timeout)?;
        Ok(Loaded { file: cfg, max_stale, connect_timeout })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = r#"
listen = "127.0.0.1:0"
tls_cert = "gateway.crt"
tls_key = "gateway.key"
cluster_ca = "ca.crt"
client_cert = "gateway-client.crt"
client_key = "gateway-client.key"
token_public_key = "token-signing.pub"
acl = "acl.toml"
audit_log = "audit.log"
[etcd]
endpoints = ["https://127.0.0.1:2379"]
ca_file = "ca.crt"
"#;

    #[test]
    fn defaults_paths_and_unknown_keys() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("gateway.toml");
        std::fs::write(&p, MINIMAL).unwrap();
        let l = GatewayConfig::load(&p).unwrap();
        assert_eq!((l.max_stale, l.connect_timeout), (Duration::from_secs(30), Duration::from_secs(3)));
        assert!(l.file.cluster_ca.is_absolute() && l.file.etcd.ca_file.as_ref().unwrap().is_absolute());
        assert_eq!(l.file.etcd_prefix, "/dcos-exec/v1");
        std::fs::write(&p, format!("max_stale = \"soon\"\n{MINIMAL}")).unwrap();
        assert!(matches!(GatewayConfig::load(&p), Err(FileError::Duration { key: "max_stale", .. })));
        std::fs::write(&p, format!("relay_everything = true\n{MINIMAL}")).unwrap();
        assert!(matches!(GatewayConfig::load(&p), Err(FileError::Parse { .. })));
    }
}
