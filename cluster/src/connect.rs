//! etcd clients from an [`EtcdConfig`]: mutual TLS when the files are given, HTTP/2 keep-alive so that a dead
//! member is noticed within seconds, and "require leader" so that a member cut off from the majority refuses
//! instead of serving a frozen view.
//!
//! [`Failover`] holds one client per member and sticks to one of them until it fails, then moves on to the
//! next (as etcd's own Go client pins an endpoint). One channel balanced over all members would keep sending
//! a share of the requests to a dead member, each failing or waiting for the dial timeout.

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

/// One client per member, used one at a time: see the module documentation.
#[derive(Clone)]
pub struct Failover {
    clients: Vec<(String, Client)>,
    current: usize,
}

impl Failover {
    /// Clients for every endpoint of `cfg` (connections are made on first use).
    pub async fn new(cfg: &EtcdConfig) -> Result<Failover, ClusterError> {
        let o = options(cfg)?;
        if cfg.endpoints.is_empty() {
            return Err(ClusterError::Config("endpoints must name at least one etcd member".into()));
        }
        let mut clients = Vec::new();
        for e in &cfg.endpoints {
            let one = std::slice::from_ref(e);
            let c = match tokio::time::timeout(cfg.dial_timeout, Client::connect(one, Some(o.clone()))).await {
                Ok(r) => r?,
                Err(_) => return Err(ClusterError::Timeout(cfg.dial_timeout)),
            };
            clients.push((e.clone(), c));
        }
        // Processes start on different members, so that a thousand agents do not all load the first one.
        let spread = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos() ^ std::process::id())
            .unwrap_or(0);
        let current = usize::try_from(spread).unwrap_or(0) % clients.len().max(1);
        Ok(Failover { clients, current })
    }

    /// The client of the member in use.
    pub fn client(&self) -> Client {
        self.clients[self.current % self.clients.len()].1.clone()
    }

    /// The endpoint of the member in use.
    pub fn endpoint(&self) -> &str {
        &self.clients[self.current % self.clients.len()].0
    }

    /// Moves on to the next member (after a failure of the current one).
    pub fn next(&mut self) {
        self.current = (self.current + 1) % self.clients.len();
    }

    /// Runs `f` on the member in use, and on the next ones while it fails the way an unreachable or cut-off
    /// member fails (each attempt within `limit`); the first answer, or the last error.
    pub async fn run<T, F, Fut>(&mut self, limit: Duration, mut f: F) -> Result<T, ClusterError>
    where
        F: FnMut(Client) -> Fut,
        Fut: std::future::Future<Output = Result<T, etcd_client::Error>>,
    {
        let mut last = None;
        for _ in 0..self.clients.len() {
            match within(limit, f(self.client())).await {
                Ok(v) => return Ok(v),
                Err(e) if member_failed(&e) => {
                    tracing::debug!(endpoint = self.endpoint(), "etcd member failed, trying the next: {e}");
                    last = Some(e);
                    self.next();
                }
                Err(e) => return Err(e),
            }
        }
        Err(last.unwrap_or(ClusterError::Config("no endpoints".into())))
    }
}

/// True for errors that say "this member cannot answer now" (down, unreachable, without a leader, too slow)
/// rather than "the request is wrong" (a lease that is gone, a bad argument): only those are worth asking
/// another member.
pub fn member_failed(e: &ClusterError) -> bool {
    use tonic::Code;
    match e {
        ClusterError::Timeout(_) => true,
        ClusterError::Etcd(etcd_client::Error::GRpcStatus(s)) => matches!(
            s.code(),
            Code::Unavailable
                | Code::DeadlineExceeded
                | Code::Unknown
                | Code::Internal
                | Code::Cancelled
                | Code::Aborted
                | Code::ResourceExhausted
        ),
        // A lease that is not found is not found on any member.
        ClusterError::Etcd(etcd_client::Error::LeaseKeepAliveError(m)) => !m.contains("not found"),
        ClusterError::Etcd(
            etcd_client::Error::TransportError(_) | etcd_client::Error::IoError(_) | etcd_client::Error::WatchError(_),
        ) => true,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_member_failures_move_to_another_member() {
        let status = |code| ClusterError::Etcd(etcd_client::Error::GRpcStatus(tonic::Status::new(code, "x")));
        assert!(member_failed(&status(tonic::Code::Unavailable)), "down, or no leader");
        assert!(member_failed(&status(tonic::Code::DeadlineExceeded)));
        assert!(member_failed(&ClusterError::Timeout(Duration::from_secs(1))));
        // The request itself is wrong: asking another member would get the same answer.
        assert!(!member_failed(&status(tonic::Code::NotFound)), "a lease that is gone");
        assert!(!member_failed(&status(tonic::Code::InvalidArgument)));
        assert!(!member_failed(&status(tonic::Code::PermissionDenied)));
        assert!(!member_failed(&ClusterError::LeaseLost(1)));
    }

    #[test]
    fn bad_tables_are_refused_before_connecting() {
        assert!(matches!(options(&EtcdConfig::new(Vec::<String>::new())), Err(ClusterError::Config(_))));
        let mixed = EtcdConfig::new(["http://127.0.0.1:1", "https://127.0.0.1:2"]);
        assert!(matches!(options(&mixed), Err(ClusterError::Config(_))));
        let mut half = EtcdConfig::new(["https://127.0.0.1:2"]);
        half.cert_file = Some("/nonexistent/c.pem".into());
        assert!(matches!(options(&half), Err(ClusterError::Read { .. }) | Err(ClusterError::Config(_))));
        let mut missing = EtcdConfig::new(["https://127.0.0.1:2"]);
        missing.ca_file = Some("/nonexistent/ca.pem".into());
        assert!(matches!(options(&missing), Err(ClusterError::Read { .. })));
        assert!(options(&EtcdConfig::new(["http://127.0.0.1:2379"])).is_ok());
    }
}
