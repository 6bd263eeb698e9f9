//! How to reach etcd: endpoints, TLS files, dial timeout. The same table is used by agents (`[cluster.etcd]`)
//! and gateways.

use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// `[cluster.etcd]` of an agent, `[etcd]` of a gateway.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EtcdConfig {
    /// Client URLs of the etcd members, e.g. `https://10.0.0.1:2379`; requests fail over between them.
    pub endpoints: Vec<String>,
    /// PEM CA that signed the members' server certificates (the system's roots are not used).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<PathBuf>,
    /// PEM client certificate presented to etcd (with `--client-cert-auth`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cert_file: Option<PathBuf>,
    /// PEM private key of `cert_file`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_file: Option<PathBuf>,
    /// How long connecting to one member may take, e.g. `"5s"`.
    #[serde(default = "default_dial_timeout", with = "humantime_serde_compat")]
    pub dial_timeout: Duration,
}

/// Five seconds, etcd's own client default.
pub fn default_dial_timeout() -> Duration {
    Duration::from_secs(5)
}

impl EtcdConfig {
    /// A configuration of plain endpoints with no TLS files and the default dial timeout.
    pub fn new(endpoints: impl IntoIterator<Item = impl Into<String>>) -> EtcdConfig {
        EtcdConfig {
            endpoints: endpoints.into_iter().map(Into::into).collect(),
            ca_file: None,
            cert_file: None,
            key_file: None,
            dial_timeout: default_dial_timeout(),
        }
    }

    /// Makes relative TLS file paths relative to `base` (the directory of the file that holds this table).
    pub fn resolve_paths(&mut self, base: &Path) {
        for p in [&mut self.ca_file, &mut self.cert_file, &mut self.key_file].into_iter().flatten() {
            *p = base.join(&*p);
        }
    }
}

/// Durations as humantime strings (`"5s"`, `"250ms"`), the way every other duration of the configs is written.
mod humantime_serde_compat {
    use serde::{Deserialize, Deserializer, Serializer};
    use std::time::Duration;

    /// Writes `d` as `"5s"`.
    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&humantime::format_duration(*d).to_string())
    }

    /// Reads `"5s"`, `"250ms"`, ...
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let text = String::deserialize(d)?;
        humantime::parse_duration(&text)
            .map_err(|e| serde::de::Error::custom(format!("{text:?} is not a duration like \"5s\": {e}")))
    }
}

/// Durations of other tables (`lease_ttl`, `max_stale`) in the same humantime notation.
pub mod duration {
    pub use super::humantime_serde_compat::{deserialize, serialize};
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_with_defaults_and_refuses_unknown_keys() {
        let c: EtcdConfig = toml::from_str("endpoints = ['https://127.0.0.1:2379']\nca_file = 'ca.pem'\n").unwrap();
        assert_eq!(c.dial_timeout, Duration::from_secs(5));
        assert_eq!(c.ca_file.as_deref(), Some(Path::new("ca.pem")));
        let c: EtcdConfig = toml::from_str("endpoints = []\ndial_timeout = '250ms'\n").unwrap();
        assert_eq!(c.dial_timeout, Duration::from_millis(250));
        assert!(toml::from_str::<EtcdConfig>("endpoints = []\ndial_timeout = 'soon'\n").is_err());
        assert!(toml::from_str::<EtcdConfig>("endpoints = []\nca = 'x'\n").is_err());
        let mut c: EtcdConfig = toml::from_str("endpoints = []\ncert_file = 'c.pem'\nkey_file = '/k.pem'\n").unwrap();
        c.resolve_paths(Path::new("/etc/dcos-exec"));
        assert_eq!(c.cert_file.as_deref(), Some(Path::new("/etc/dcos-exec/c.pem")));
        assert_eq!(c.key_file.as_deref(), Some(Path::new("/k.pem")));
    }
}
