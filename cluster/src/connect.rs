//! An etcd client from an [`EtcdConfig`]: mutual TLS when the files are given, every endpoint in one balanced
//! channel (a request goes to a member that answers), HTTP/2 keep-alive so that a dead member is noticed
//! within seconds, and "require leader" so that a member cut off from the majority refuses instead of
//! serving a frozen view.

use crate::config::EtcdConfig;
use crate::error::ClusterError;
use etcd_client::{Certificate, Client, ConnectOptions, Identity, TlsOptions};
use std::time::Duration;

/// How often the channel pings a member, and how long a ping may go unanswered.
const KEEP_ALIVE: (Duration, Duration) = (Duration::from_secs(1), Duration::from_secs(2));

fn read(path: &std::path::Path) -> Result<Vec<u8>, ClusterError> {
    std::fs::read(path).map_err(|cause| ClusterError::Read { path: path.into(), cause })
}

/// The connect options of `cfg` (reads its TLS files).
pub fn options(cfg: &EtcdConfig) -> Result<ConnectOptions, ClusterError> {
    if cfg.endpoints.is_empty() {
        return Err(ClusterError::Config("endpoints must name at least one etcd member".into()));
    }
    let mut o = ConnectOptions::new()
        .with_connect_timeout(cfg.dial_timeout)
        .with_keep_alive(KEEP_ALIVE.0, KEEP_ALIVE.1)
        .with_keep_alive_while_idle(true)
        .with_require_leader(true);
    let tls = cfg.endpoints.iter().any(|e| e.starts_with("https://"));
    if tls || cfg.ca_file.is_some() || cfg.cert_file.is_some() {
        if cfg.endpoints.iter().any(|e| e.starts_with("http://")) {
            return Err(ClusterError::Config("endpoints mix http:// and https://".into()));
        }
        let mut t = TlsOptions::new();
        if let Some(ca) = &cfg.ca_file {
            t = t.ca_certificate(Certificate::from_pem(read(ca)?));
        }
        match (&cfg.cert_file, &cfg.key_file) {
            (Some(c), Some(k)) => t = t.identity(Identity::from_pem(read(c)?, read(k)?)),
            (None, None) => {}
            _ => return Err(ClusterError::Config("cert_file and key_file go together".into())),
        }
        o = o.with_tls(t);
    }
    Ok(o)
}

/// Connects to the members of `cfg`. Fails when no member can be reached within the dial timeout.
pub async fn connect(cfg: &EtcdConfig) -> Result<Client, ClusterError> {
    let o = options(cfg)?;
    // The endpoints are dialled lazily; bound the whole set-up in case every member hangs.
    match tokio::time::timeout(cfg.dial_timeout + Duration::from_secs(1), Client::connect(&cfg.endpoints, Some(o)))
        .await
    {
        Ok(r) => Ok(r?),
        Err(_) => Err(ClusterError::Timeout(cfg.dial_timeout)),
    }
}

/// Runs an etcd request with a deadline: a member that stopped answering must not stall the caller longer.
pub async fn within<T>(
    limit: Duration,
    f: impl std::future::Future<Output = Result<T, etcd_client::Error>>,
) -> Result<T, ClusterError> {
    match tokio::time::timeout(limit, f).await {
        Ok(r) => Ok(r?),
        Err(_) => Err(ClusterError::Timeout(limit)),
    }
}
