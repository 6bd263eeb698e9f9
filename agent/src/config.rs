//! The agent's configuration file (`agent.toml`): where keys, ACL, audit log and container runtimes live.

use dcos_exec_server::config as config_file;
use dcos_exec_server::config::FileError;
pub use dcos_exec_server::logging::LogFormat;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Errors loading the configuration.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error(transparent)]
    File(#[from] FileError),
    #[error("{path}: {key} must be at least 1 (0 would refuse every {what})")]
    Zero { path: PathBuf, key: &'static str, what: &'static str },
    #[error("{path}: {message}")]
    Cluster { path: PathBuf, message: String },
    #[error(
        "{path}: runtimes.cri_o_roots names {root:?}, which is in neither runtimes.runc_roots nor runtimes.crun_roots"
    )]
    CriORoot { path: PathBuf, root: PathBuf },
}

/// `agent.toml`. Relative paths are relative to the directory holding the file.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentConfig {
    /// Address the HTTPS API listens on, e.g. `127.0.0.1:7443`.
    pub listen: String,
    /// PEM certificate chain the agent presents.
    pub tls_cert: PathBuf,
    /// PEM private key of `tls_cert`.
    pub tls_key: PathBuf,
    /// PEM public key (Ed25519 SPKI) that verifies bearer tokens.
    pub token_public_key: PathBuf,
    /// PEM private key (Ed25519 PKCS#8) used by `dcos-exec-agent token`; the server never reads it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_private_key: Option<PathBuf>,
    /// Required `iss` claim of tokens.
    #[serde(default = "default_issuer")]
    pub issuer: String,
    /// Required `aud` claim of tokens.
    #[serde(default = "default_audience")]
    pub audience: String,
    /// ACL file (see README, "ACL"), reloaded when it changes; `"etcd"` reads it from `{prefix}/acl` of the
    /// `[cluster]` etcd instead (watched).
    pub acl: PathBuf,
    /// Audit log, JSON lines, appended.
    pub audit_log: PathBuf,
    /// How long a session's processes get between SIGHUP and SIGKILL once the client is gone.
    #[serde(default = "default_grace")]
    pub grace_period: String,
    /// After the process exits, how long to keep forwarding output that processes it left behind still write.
    #[serde(default = "default_drain")]
    pub output_drain: String,
    /// After the process exits, how long output is forwarded at most, quiet or not: a process of the container
    /// that keeps writing into the session's stdout or terminal must not hold the session (and its status) open.
    #[serde(default = "default_drain_max")]
    pub output_drain_max: String,
    /// Connections accepted but not yet past authentication (TLS handshake, first request); more are closed at once.
    #[serde(default = "default_max_unauthenticated")]
    pub max_unauthenticated: usize,
    /// Sessions one user may have open at once; more are refused with `forbidden`.
    #[serde(default = "default_max_sessions_per_user")]
    pub max_sessions_per_user: usize,
    /// On SIGTERM or SIGINT, how long live sessions get to be hung up, audited and told before the agent exits.
    #[serde(default = "default_shutdown_grace")]
    pub shutdown_grace: String,
    /// OCI annotation whose value is the task id; containers without it are known by their container id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task_id_annotation: Option<String>,
    /// Where container runtimes keep their state.
    #[serde(default)]
    pub runtimes: RuntimesConfig,
    /// Capabilities `--cap-add` may grant (names without `CAP_`). Keep host-root equivalents such as
    /// SYS_ADMIN, SYS_MODULE, DAC_READ_SEARCH, MKNOD or SYS_RAWIO off this list.
    #[serde(default = "default_cap_add_allowed")]
    pub cap_add_allowed: Vec<String>,
    /// OpenID Connect issuers whose tokens are accepted besides the agent's own (`[[oidc]]` tables).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub oidc: Vec<dcos_exec_access::oidc::OidcConfig>,
    /// `text` (the default) or `json`: one JSON object per log line on stderr.
    #[serde(default)]
    pub log_format: LogFormat,
    /// Address of a plain-HTTP listener serving `/metrics`, `/healthz` and `/readyz` without authentication
    /// (none by default: `/metrics` is then only on the API port, for tokens granted `metrics`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metrics_listen: Option<String>,
    /// Debug images: cache, registries, unpack policy (`init` leaves it out: the defaults apply until an
    /// `[images]` table is added).
    #[serde(default, skip_serializing)]
    pub images: ImagesConfig,
    /// Membership of a cluster (see README, "Cluster"); without it the agent works alone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster: Option<ClusterConfig>,
}

/// `[cluster]`: the agent registers its node and tasks in etcd, where gateways find them.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterConfig {
    /// The node's name in the cluster (default: the hostname).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    /// How gateways reach this agent, e.g. `https://10.0.0.7:7443` (default: `https://` and `listen`, when
    /// that names one address).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// Free-form labels of the node record.
    #[serde(default)]
    pub labels: std::collections::BTreeMap<String, String>,
    /// How to reach etcd.
    pub etcd: dcos_exec_cluster::EtcdConfig,
    /// Key prefix in etcd.
    #[serde(default = "default_cluster_prefix")]
    pub prefix: String,
    /// How long the node's records outlive an agent that died.
    #[serde(default = "default_lease_ttl")]
    pub lease_ttl: String,
    /// PEM CA whose client certificates are gateways (they may relay sessions for users).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway_ca: Option<PathBuf>,
    /// Ed25519 public key (PEM) the ACL in etcd must be signed with; needed by `acl = "etcd"`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub acl_key: Option<PathBuf>,
}

fn default_cluster_prefix() -> String {
    dcos_exec_cluster::DEFAULT_PREFIX.into()
}
fn default_lease_ttl() -> String {
    "10s".into()
}

/// Why `acl = "etcd"` without `cluster.acl_key` is refused, with the way out for older set-ups.
const ACL_KEY_NEEDED: &str = "acl = \"etcd\" needs cluster.acl_key, the public key the ACL in etcd is signed with \
    (any etcd client could write an unsigned one): `init cluster` writes it as acl-signing.pub; for an older set-up \
    make a pair with `openssl genpkey -algorithm ed25519 -out acl-signing.key` and \
    `openssl pkey -in acl-signing.key -pubout -out acl-signing.pub`, then write the ACL with \
    `dcos-exec-agent acl push --key acl-signing.key --config agent.toml acl.toml`";

/// Where the ACL comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AclSource {
    /// A file, reloaded when it changes.
    File(PathBuf),
    /// `{prefix}/acl` in the cluster's etcd, watched.
    Etcd,
}

/// `[images]`: where `--debug-image` images are cached and how registries are reached.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImagesConfig {
    /// Content-addressed cache of blobs and unpacked layers.
    #[serde(default = "default_cache_dir")]
    pub cache_dir: PathBuf,
    /// Registries (`host[:port]`) reached over plain HTTP instead of HTTPS.
    #[serde(default)]
    pub insecure_registries: Vec<String>,
    /// Extra CA certificates (PEM files) trusted for registries, besides the system's.
    #[serde(default)]
    pub ca_files: Vec<PathBuf>,
    /// A Docker-style `config.json` whose `auths` supply registry credentials.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub docker_config: Option<PathBuf>,
    /// Create device nodes and fifos found in layers (refused by default).
    #[serde(default)]
    pub allow_devices: bool,
    /// Keep setuid/setgid bits and file capabilities (`security.capability`) of files in layers (stripped by
    /// default).
    #[serde(default)]
    pub keep_setid: bool,
    /// Cache size (bytes) above which the agent prunes what no cached image needs after a pull; 0 for no cap.
    #[serde(default)]
    pub max_cache_bytes: u64,
    /// Credentials by registry, e.g. `[images.credentials."registry.example:5000"]`.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub credentials: std::collections::BTreeMap<String, RegistryCredentials>,
    /// Bytes one layer may unpack to (its uncompressed stream, and the file content written).
    #[serde(default = "default_max_layer_bytes")]
    pub max_layer_bytes: u64,
    /// Bytes all layers unpacked by one pull may take together.
    #[serde(default = "default_max_image_bytes")]
    pub max_image_bytes: u64,
    /// Entries of one layer.
    #[serde(default = "default_max_entries")]
    pub max_entries: u64,
    /// Bytes of an entry's path or link target.
    #[serde(default = "default_max_path_len")]
    pub max_path_len: u64,
    /// Components of an entry's path.
    #[serde(default = "default_max_depth")]
    pub max_depth: u64,
    /// Layers of one image.
    #[serde(default = "default_max_layers")]
    pub max_layers: u64,
}

impl ImagesConfig {
    /// The budgets as the unpacker takes them.
    pub fn limits(&self) -> dcos_exec_images::unpack::Limits {
        dcos_exec_images::unpack::Limits {
            max_layer_bytes: self.max_layer_bytes,
            max_image_bytes: self.max_image_bytes,
            max_entries: self.max_entries,
            max_path_len: self.max_path_len,
            max_depth: self.max_depth,
            max_layers: self.max_layers,
        }
    }
}

fn default_max_layer_bytes() -> u64 {
    dcos_exec_images::unpack::Limits::default().max_layer_bytes
}
fn default_max_image_bytes() -> u64 {
    dcos_exec_images::unpack::Limits::default().max_image_bytes
}
fn default_max_entries() -> u64 {
    dcos_exec_images::unpack::Limits::default().max_entries
}
fn default_max_path_len() -> u64 {
    dcos_exec_images::unpack::Limits::default().max_path_len
}
fn default_max_depth() -> u64 {
    dcos_exec_images::unpack::Limits::default().max_depth
}
fn default_max_layers() -> u64 {
    dcos_exec_images::unpack::Limits::default().max_layers
}

/// Basic-auth credentials of one registry (also used for its token service).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegistryCredentials {
    pub username: String,
    pub password: String,
}

impl Default for ImagesConfig {
    fn default() -> Self {
        ImagesConfig {
            cache_dir: default_cache_dir(),
            insecure_registries: Vec::new(),
            ca_files: Vec::new(),
            docker_config: None,
            allow_devices: false,
            keep_setid: false,
            max_cache_bytes: 0,
            credentials: Default::default(),
            max_layer_bytes: default_max_layer_bytes(),
            max_image_bytes: default_max_image_bytes(),
            max_entries: default_max_entries(),
            max_path_len: default_max_path_len(),
            max_depth: default_max_depth(),
            max_layers: default_max_layers(),
        }
    }
}

pub fn default_cap_add_allowed() -> Vec<String> {
    ["SYS_PTRACE", "NET_ADMIN", "NET_RAW"].map(String::from).to_vec()
}

fn default_cache_dir() -> PathBuf {
    "images".into()
}

/// `[runtimes]`: where the agent finds containers. The OCI runtimes' state roots give every container with its
/// bundle (what an exec needs); the engines' sockets add what only the engine knows (Docker's names, Compose
/// labels, exit statuses of stopped containers). A trailing `/*` in a root means "every directory below"
/// (containerd keeps one root per namespace). An engine that does not answer is a warning, never an error.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuntimesConfig {
    #[serde(default = "default_runc_roots")]
    pub runc_roots: Vec<PathBuf>,
    #[serde(default = "default_crun_roots")]
    pub crun_roots: Vec<PathBuf>,
    /// Those of `runc_roots` and `crun_roots` that CRI-O's runtime keeps its state in: only containers found
    /// there are named from CRI-O's Kubernetes annotations, which anyone who starts a container can write.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cri_o_roots: Vec<PathBuf>,
    /// Docker Engine API sockets, asked for container names, labels and exit statuses (`[]` to ask none).
    #[serde(default = "default_docker_sockets")]
    pub docker_sockets: Vec<PathBuf>,
    /// containerd sockets, asked over containerd's API for container labels (nerdctl's name, Compose's labels);
    /// the containers themselves are found through the runc and crun roots above.
    #[serde(default = "default_containerd_sockets")]
    pub containerd_sockets: Vec<PathBuf>,
    /// How long one engine gets to answer before a list goes on without it.
    #[serde(default = "default_api_timeout")]
    pub api_timeout: String,
}

impl Default for RuntimesConfig {
    fn default() -> Self {
        RuntimesConfig {
            runc_roots: default_runc_roots(),
            crun_roots: default_crun_roots(),
            cri_o_roots: Vec::new(),
            docker_sockets: default_docker_sockets(),
            containerd_sockets: default_containerd_sockets(),
            api_timeout: default_api_timeout(),
        }
    }
}

fn default_issuer() -> String {
    "dcos-exec-agent".into()
}
fn default_audience() -> String {
    dcos_exec_proto::TOKEN_AUDIENCE.into()
}
fn default_grace() -> String {
    "5s".into()
}
fn default_drain() -> String {
    "1s".into()
}
fn default_drain_max() -> String {
    "10s".into()
}
pub fn default_max_unauthenticated() -> usize {
    256
}
pub fn default_max_sessions_per_user() -> usize {
    64
}
pub fn default_shutdown_grace() -> String {
    "10s".into()
}
/// runc's own default, containerd's runc v2 shim (one root per namespace) and Docker's.
pub fn default_runc_roots() -> Vec<PathBuf> {
    ["/run/runc", "/run/containerd/runc/*", "/run/docker/runtime-runc/moby"].iter().map(PathBuf::from).collect()
}
/// Docker's default socket.
pub fn default_docker_sockets() -> Vec<PathBuf> {
    vec!["/run/docker.sock".into()]
}
/// containerd's default socket.
pub fn default_containerd_sockets() -> Vec<PathBuf> {
    vec!["/run/containerd/containerd.sock".into()]
}
fn default_api_timeout() -> String {
    "2s".into()
}
/// crun's default and containerd's crun roots.
pub fn default_crun_roots() -> Vec<PathBuf> {
    ["/run/crun", "/run/containerd/crun/*"].iter().map(PathBuf::from).collect()
}

/// A loaded configuration with paths made absolute and durations parsed.
#[derive(Debug, Clone)]
pub struct Loaded {
    pub file: AgentConfig,
    pub grace_period: Duration,
    pub output_drain: Duration,
    pub output_drain_max: Duration,
    pub shutdown_grace: Duration,
    /// `[runtimes] api_timeout`.
    pub api_timeout: Duration,
    /// Where the ACL comes from (`acl`).
    pub acl: AclSource,
    /// `[cluster]` with its defaults filled in, if present.
    pub cluster: Option<Cluster>,
}

/// `[cluster]` resolved: the node's name and URL known, the lease TTL parsed, paths absolute.
#[derive(Debug, Clone)]
pub struct Cluster {
    pub node: String,
    pub url: String,
    pub lease_ttl: Duration,
    pub file: ClusterConfig,
}

impl AgentConfig {
    /// The configuration `init` and `init cluster` write: the files they create beside it, defaults for the
    /// rest. `token_private_key` only where tokens are minted on this host.
    pub fn generated(listen: String, token_private_key: Option<PathBuf>) -> AgentConfig {
        AgentConfig {
            listen,
            tls_cert: "server.crt".into(),
            tls_key: "server.key".into(),
            token_public_key: "token-signing.pub".into(),
            token_private_key,
            issuer: "dcos-exec-agent".into(),
            audience: dcos_exec_proto::TOKEN_AUDIENCE.into(),
            acl: "acl.toml".into(),
            audit_log: "audit.log".into(),
            grace_period: "5s".into(),
            output_drain: "1s".into(),
            output_drain_max: default_drain_max(),
            max_unauthenticated: default_max_unauthenticated(),
            max_sessions_per_user: default_max_sessions_per_user(),
            shutdown_grace: default_shutdown_grace(),
            task_id_annotation: None,
            runtimes: RuntimesConfig::default(),
            cap_add_allowed: default_cap_add_allowed(),
            oidc: Vec::new(),
            log_format: LogFormat::default(),
            metrics_listen: None,
            images: ImagesConfig::default(),
            cluster: None,
        }
    }

    /// Reads and validates `path`, resolving relative paths against its directory.
    pub fn load(path: &Path) -> Result<Loaded, ConfigError> {
        let (mut cfg, base) = config_file::read::<AgentConfig>(path)?;
        let acl_in_etcd = cfg.acl == Path::new(dcos_exec_cluster::acl::ETCD_SOURCE);
        for p in [&mut cfg.tls_cert, &mut cfg.tls_key, &mut cfg.token_public_key, &mut cfg.acl, &mut cfg.audit_log] {
            *p = base.join(&*p);
        }
        if let Some(p) = cfg.token_private_key.as_mut() {
            *p = base.join(&*p);
        }
        cfg.images.cache_dir = base.join(&cfg.images.cache_dir);
        if let Some(p) = cfg.cluster.as_mut().and_then(|c| c.gateway_ca.as_mut()) {
            *p = base.join(&*p);
        }
        for o in &mut cfg.oidc {
            o.resolve_paths(&base);
        }
        for p in cfg.images.ca_files.iter_mut().chain(cfg.images.docker_config.as_mut()) {
            *p = base.join(&*p);
        }
        let dur = |key: &'static str, value: &str| config_file::duration(path, key, value);
        let grace_period = dur("grace_period", &cfg.grace_period)?;
        let output_drain = dur("output_drain", &cfg.output_drain)?;
        let output_drain_max = dur("output_drain_max", &cfg.output_drain_max)?;
        let shutdown_grace = dur("shutdown_grace", &cfg.shutdown_grace)?;
        let api_timeout = dur("runtimes.api_timeout", &cfg.runtimes.api_timeout)?;
        for (key, value, what) in [
            ("max_unauthenticated", cfg.max_unauthenticated, "connection"),
            ("max_sessions_per_user", cfg.max_sessions_per_user, "session"),
        ] {
            if value == 0 {
                return Err(ConfigError::Zero { path: path.into(), key, what });
            }
        }
        let r = &cfg.runtimes;
        if let Some(root) = r.cri_o_roots.iter().find(|x| !r.runc_roots.contains(x) && !r.crun_roots.contains(x)) {
            return Err(ConfigError::CriORoot { path: path.into(), root: root.clone() });
        }
        let cluster = match cfg.cluster.as_mut() {
            None => None,
            Some(c) => {
                c.etcd.resolve_paths(&base);
                if let Some(p) = c.acl_key.as_mut() {
                    *p = base.join(&*p);
                }
                if let Some(p) = c.gateway_ca.as_mut() {
                    *p = base.join(&*p);
                }
                let lease_ttl = dur("cluster.lease_ttl", &c.lease_ttl)?;
                let bad = |message: String| ConfigError::Cluster { path: path.into(), message };
                if lease_ttl < Duration::from_secs(2) {
                    return Err(bad("cluster.lease_ttl must be at least 2s (etcd's minimum)".into()));
                }
                if c.etcd.endpoints.is_empty() {
                    return Err(bad("cluster.etcd.endpoints must name at least one etcd member".into()));
                }
                let node = match &c.node {
                    Some(n) => n.clone(),
                    None => nix::unistd::gethostname()
                        .ok()
                        .and_then(|h| h.into_string().ok())
                        .filter(|h| !h.is_empty())
                        .ok_or_else(|| bad("cluster.node is not set and the hostname is unknown".into()))?,
                };
                if node.is_empty() || node.chars().any(|ch| ch.is_control() || ch == '/') {
                    return Err(bad(format!("cluster.node {node:?} must be a non-empty name without '/'")));
                }
                let url = match &c.url {
                    Some(u) => u.clone(),
                    None => match cfg.listen.rsplit_once(':') {
                        Some((host, _)) if !matches!(host, "0.0.0.0" | "[::]" | "") => {
                            format!("https://{}", cfg.listen)
                        }
                        _ => {
                            return Err(bad(format!(
                                "cluster.url must be set: listen {} names no one address",
                                cfg.listen
                            )))
                        }
                    },
                };
                if !url.starts_with("https://") {
                    return Err(bad(format!("cluster.url {url:?} must be an https:// URL")));
                }
                Some(Cluster { node, url, lease_ttl, file: c.clone() })
            }
        };
        let acl = if acl_in_etcd {
            let bad = |message: &str| ConfigError::Cluster { path: path.into(), message: message.into() };
            match &cluster {
                None => return Err(bad("acl = \"etcd\" needs a [cluster] section naming the etcd")),
                Some(c) if c.file.acl_key.is_none() => return Err(bad(ACL_KEY_NEEDED)),
                Some(_) => {}
            }
            AclSource::Etcd
        } else {
            AclSource::File(cfg.acl.clone())
        };
        Ok(Loaded {
            file: cfg,
            grace_period,
            output_drain,
            output_drain_max,
            shutdown_grace,
            api_timeout,
            acl,
            cluster,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_paths_resolve_against_the_config_dir() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("agent.toml");
        std::fs::write(
            &p,
            "listen='127.0.0.1:1'\ntls_cert='c.pem'\ntls_key='k.pem'\ntoken_public_key='t.pub'\nacl='acl.toml'\naudit_log='/var/log/a.log'\ngrace_period='250ms'\n",
        )
        .unwrap();
        let l = AgentConfig::load(&p).unwrap();
        assert_eq!(l.file.tls_cert, std::fs::canonicalize(dir.path()).unwrap().join("c.pem"));
        assert_eq!(l.file.audit_log, PathBuf::from("/var/log/a.log"));
        assert_eq!(l.grace_period, Duration::from_millis(250));
        assert_eq!(l.file.runtimes.runc_roots, default_runc_roots());
        assert!(l.file.runtimes.cri_o_roots.is_empty(), "no root's CRI-O annotations are believed by default");
        assert_eq!(l.file.runtimes.docker_sockets, [PathBuf::from("/run/docker.sock")]);
        assert_eq!(l.file.runtimes.containerd_sockets, [PathBuf::from("/run/containerd/containerd.sock")]);
        assert_eq!(l.api_timeout, Duration::from_secs(2));
        assert_eq!((l.file.max_unauthenticated, l.file.max_sessions_per_user), (256, 64));
        assert_eq!(l.shutdown_grace, Duration::from_secs(10));
    }

    #[test]
    fn unknown_keys_and_bad_durations_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("agent.toml");
        std::fs::write(
            &p,
            "listen='x'\ntls_cert='c'\ntls_key='k'\ntoken_public_key='t'\nacl='a'\naudit_log='l'\nlisten_port=3\n",
        )
        .unwrap();
        assert!(matches!(AgentConfig::load(&p), Err(ConfigError::File(FileError::Parse { .. }))));
        std::fs::write(&p, "listen='x'\ntls_cert='c'\ntls_key='k'\ntoken_public_key='t'\nacl='a'\naudit_log='l'\ngrace_period='soon'\n").unwrap();
        assert!(matches!(AgentConfig::load(&p), Err(ConfigError::File(FileError::Duration { .. }))));
        let base = "listen='x'\ntls_cert='c'\ntls_key='k'\ntoken_public_key='t'\nacl='a'\naudit_log='l'\n";
        std::fs::write(&p, format!("{base}shutdown_grace='later'\n")).unwrap();
        assert!(matches!(
            AgentConfig::load(&p),
            Err(ConfigError::File(FileError::Duration { key: "shutdown_grace", .. }))
        ));
        for key in ["max_unauthenticated", "max_sessions_per_user"] {
            std::fs::write(&p, format!("{base}{key}=0\n")).unwrap();
            assert!(matches!(AgentConfig::load(&p), Err(ConfigError::Zero { key: k, .. }) if k == key), "{key}");
        }
        std::fs::write(&p, format!("{base}[runtimes]\napi_timeout='whenever'\n")).unwrap();
        assert!(matches!(
            AgentConfig::load(&p),
            Err(ConfigError::File(FileError::Duration { key: "runtimes.api_timeout", .. }))
        ));
        std::fs::write(&p, format!("{base}[runtimes]\ndocker_socket='/run/docker.sock'\n")).unwrap();
        assert!(
            matches!(AgentConfig::load(&p), Err(ConfigError::File(FileError::Parse { .. }))),
            "a misspelt key is an error"
        );
        std::fs::write(&p, format!("{base}max_sessions_per_user=-1\n")).unwrap();
        assert!(matches!(AgentConfig::load(&p), Err(ConfigError::File(FileError::Parse { .. }))));
        // A CRI-O root must be one the agent reads, as runc's or crun's.
        std::fs::write(&p, format!("{base}[runtimes]\ncri_o_roots=['/run/crio/runc']\n")).unwrap();
        assert!(matches!(AgentConfig::load(&p), Err(ConfigError::CriORoot { .. })));
        std::fs::write(&p, format!("{base}[runtimes]\ncri_o_roots=['/run/runc', '/run/crun']\n")).unwrap();
        let l = AgentConfig::load(&p).unwrap();
        assert_eq!(l.file.runtimes.cri_o_roots, [PathBuf::from("/run/runc"), PathBuf::from("/run/crun")]);
    }

    #[test]
    fn oidc_tables_parse_with_defaults_and_relative_ca_files() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("agent.toml");
        let base = "listen='x'\ntls_cert='c'\ntls_key='k'\ntoken_public_key='t'\nacl='a'\naudit_log='l'\n";
        std::fs::write(&p, base).unwrap();
        assert!(AgentConfig::load(&p).unwrap().file.oidc.is_empty());
        let two = "[[oidc]]\nissuer='https://a'\naudience='cli'\nca_file='idp.pem'\nuser_claim='email'\n\
                   [[oidc]]\nissuer='https://b'\naudience='x'\ngroup_prefix='b:'\n";
        std::fs::write(&p, format!("{base}{two}")).unwrap();
        let o = AgentConfig::load(&p).unwrap().file.oidc;
        assert_eq!(o.len(), 2);
        assert_eq!(o[0].ca_file, Some(std::fs::canonicalize(dir.path()).unwrap().join("idp.pem")));
        assert_eq!((o[0].user_claim.as_str(), o[0].groups_claim.as_str()), ("email", "groups"));
        assert_eq!(
            (o[1].user_claim.as_str(), o[1].group_prefix.as_str(), o[1].refresh_interval.as_str()),
            ("sub", "b:", "5m")
        );
        std::fs::write(&p, format!("{base}[[oidc]]\nissuer='https://a'\naudience='cli'\ngroup_claim='g'\n")).unwrap();
        assert!(
            matches!(AgentConfig::load(&p), Err(ConfigError::File(FileError::Parse { .. }))),
            "a misspelt key is an error"
        );
    }

    #[test]
    fn log_format_and_metrics_listen_default_off_and_can_be_set() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("agent.toml");
        let base = "listen='x'\ntls_cert='c'\ntls_key='k'\ntoken_public_key='t'\nacl='a'\naudit_log='l'\n";
        std::fs::write(&p, base).unwrap();
        let l = AgentConfig::load(&p).unwrap().file;
        assert_eq!((l.log_format, l.metrics_listen), (LogFormat::Text, None));
        std::fs::write(&p, format!("{base}log_format='json'\nmetrics_listen='127.0.0.1:9464'\n")).unwrap();
        let l = AgentConfig::load(&p).unwrap().file;
        assert_eq!((l.log_format, l.metrics_listen.as_deref()), (LogFormat::Json, Some("127.0.0.1:9464")));
        std::fs::write(&p, format!("{base}log_format='logfmt'\n")).unwrap();
        assert!(
            matches!(AgentConfig::load(&p), Err(ConfigError::File(FileError::Parse { .. }))),
            "an unknown format is an error"
        );
    }

    #[test]
    fn cluster_section_defaults_and_checks() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("agent.toml");
        let base = "listen='10.0.0.7:7443'\ntls_cert='c'\ntls_key='k'\ntoken_public_key='t'\nacl='a'\naudit_log='l'\n";
        std::fs::write(&p, base).unwrap();
        let l = AgentConfig::load(&p).unwrap();
        assert!(l.cluster.is_none(), "no [cluster]: the agent works alone");
        assert_eq!(l.acl, AclSource::File(std::fs::canonicalize(dir.path()).unwrap().join("a")));
        let etcd = "[cluster.etcd]\nendpoints=['https://127.0.0.1:2379']\nca_file='etcd-ca.pem'\n";
        std::fs::write(&p, format!("{base}[cluster]\nnode='n1'\nlabels={{zone='a'}}\n{etcd}")).unwrap();
        let l = AgentConfig::load(&p).unwrap();
        let c = l.cluster.unwrap();
        assert_eq!((c.node.as_str(), c.url.as_str()), ("n1", "https://10.0.0.7:7443"));
        assert_eq!(c.lease_ttl, Duration::from_secs(10));
        assert_eq!(c.file.prefix, "/dcos-exec/v1");
        assert_eq!(c.file.labels["zone"], "a");
        assert_eq!(c.file.etcd.ca_file, Some(std::fs::canonicalize(dir.path()).unwrap().join("etcd-ca.pem")));
        std::fs::write(&p, format!("{base}[cluster]\n{etcd}")).unwrap();
        assert!(!AgentConfig::load(&p).unwrap().cluster.unwrap().node.is_empty(), "the hostname by default");
        let any = base.replace("10.0.0.7", "0.0.0.0");
        std::fs::write(&p, format!("{any}[cluster]\n{etcd}")).unwrap();
        assert!(matches!(AgentConfig::load(&p), Err(ConfigError::Cluster { .. })), "no url to derive");
        for bad in ["lease_ttl='1s'", "lease_ttl='later'", "node='a/b'", "url='http://x'", "nodes='x'"] {
            std::fs::write(&p, format!("{base}[cluster]\n{bad}\n{etcd}")).unwrap();
            assert!(AgentConfig::load(&p).is_err(), "{bad}");
        }
        // The ACL in etcd needs the cluster's etcd.
        let in_etcd = base.replace("acl='a'", "acl='etcd'");
        std::fs::write(&p, &in_etcd).unwrap();
        assert!(matches!(AgentConfig::load(&p), Err(ConfigError::Cluster { .. })));
        // And the key its documents are signed with: without it any etcd client could write the ACL.
        std::fs::write(&p, format!("{in_etcd}[cluster]\n{etcd}")).unwrap();
        let e = AgentConfig::load(&p).unwrap_err().to_string();
        assert!(e.contains("cluster.acl_key") && e.contains("acl push"), "{e}");
        std::fs::write(&p, format!("{in_etcd}[cluster]\nacl_key='acl-signing.pub'\n{etcd}")).unwrap();
        assert_eq!(AgentConfig::load(&p).unwrap().acl, AclSource::Etcd);
    }

    #[test]
    fn image_budgets_default_and_can_be_set() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("agent.toml");
        let base = "listen='x'\ntls_cert='c'\ntls_key='k'\ntoken_public_key='t'\nacl='a'\naudit_log='l'\n";
        std::fs::write(&p, base).unwrap();
        let l = AgentConfig::load(&p).unwrap().file.images.limits();
        assert_eq!(
            (l.max_layer_bytes, l.max_image_bytes, l.max_entries, l.max_path_len, l.max_depth),
            (4 << 30, 8 << 30, 500_000, 4096, 128)
        );
        std::fs::write(&p, format!("{base}[images]\nmax_layer_bytes = 67108864\nmax_depth = 8\n")).unwrap();
        let l = AgentConfig::load(&p).unwrap().file.images.limits();
        assert_eq!((l.max_layer_bytes, l.max_depth, l.max_entries), (64 << 20, 8, 500_000));
        std::fs::write(&p, format!("{base}[images]\nmax_layer_byte = 1\n")).unwrap();
        assert!(matches!(AgentConfig::load(&p), Err(ConfigError::File(FileError::Parse { .. }))));
    }
}
