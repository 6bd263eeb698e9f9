//! The gateway's server: its shared state, the TLS listener for users, and each connection's requests. What
//! happens to a request is in [`crate::api`]; how a session reaches its agent is in [`crate::relay`].

use crate::config::Loaded;
use crate::relay::Relay;
use anyhow::{Context, Result};
use dcos_exec_access::acl::Shared;
use dcos_exec_access::audit::AuditLog;
use dcos_exec_access::auth::Verifier;
use dcos_exec_cluster::acl::EtcdAcl;
use dcos_exec_cluster::Directory;
use hyper_util::rt::TokioIo;
use std::sync::Arc;
use std::time::Duration;

/// Shared state of a running gateway. It keeps no state of its own beyond the directory's snapshot: any
/// gateway of a cluster serves any request.
pub struct Gateway {
    pub cfg: Loaded,
    pub verifier: Verifier,
    /// The ACL in force, reloaded when its file or its etcd key changes.
    pub acl: Arc<Shared>,
    /// Feeds `acl` from etcd, with `acl = "etcd"`.
    _etcd_acl: Option<EtcdAcl>,
    pub audit: AuditLog,
    pub directory: Arc<Directory>,
    pub relay: Relay,
    /// One permit per connection not yet past authentication (`max_unauthenticated`).
    pub unauthenticated: Arc<tokio::sync::Semaphore>,
    tls: Arc<rustls::ServerConfig>,
}

/// A connection's permit among those not yet authenticated, given up on its first authenticated request.
#[derive(Default)]
pub struct Pending(std::sync::Mutex<Option<tokio::sync::OwnedSemaphorePermit>>);

impl Pending {
    pub fn authenticated(&self) {
        drop(self.0.lock().unwrap_or_else(|p| p.into_inner()).take());
    }
}

impl Gateway {
    pub async fn new(cfg: Loaded) -> Result<Arc<Gateway>> {
        let f = &cfg.file;
        let pub_pem = std::fs::read(&f.token_public_key)
            .with_context(|| format!("reading token public key {}", f.token_public_key.display()))?;
        let verifier = Verifier::new(&pub_pem, &f.issuer, &f.audience)?;
        let (acl, etcd_acl) = if f.acl == std::path::Path::new(crate::config::ACL_IN_ETCD) {
            let e = EtcdAcl::spawn(f.etcd.clone(), &f.etcd_prefix, EtcdAcl::empty(&f.etcd_prefix));
            if !e.loaded(Duration::from_secs(5)).await {
                tracing::warn!("the ACL could not be read from etcd yet: every request is refused until it is");
            }
            (e.shared().clone(), Some(e))
        } else {
            (Shared::watch_file(&f.acl, Duration::from_secs(2))?, None)
        };
        let audit = AuditLog::open(&f.audit_log).with_context(|| format!("opening {}", f.audit_log.display()))?;
        let relay = Relay::new(&cfg)?;
        let tls = Arc::new(tls_config(&cfg)?);
        let directory = Directory::spawn(f.etcd.clone(), &f.etcd_prefix, cfg.max_stale);
        let unauthenticated = Arc::new(tokio::sync::Semaphore::new(cfg.file.max_unauthenticated));
        Ok(Arc::new(Gateway { cfg, verifier, acl, _etcd_acl: etcd_acl, audit, directory, relay, unauthenticated, tls }))
    }
}

fn tls_config(cfg: &Loaded) -> Result<rustls::ServerConfig> {
    let f = &cfg.file;
    let (certs, key) = crate::relay::load_pair(&f.tls_cert, &f.tls_key)?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut c = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .context("TLS certificate and key do not match")?;
    c.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(c)
}

/// Dead peers are noticed by the kernel on both legs of a relay: keep-alive probes when idle, and
/// unacknowledged data for a minute fails the connection, so a partition ends the session instead of hanging it.
pub fn tune_socket(tcp: &tokio::net::TcpStream) {
    use nix::sys::socket::{setsockopt, sockopt};
    let _ = tcp.set_nodelay(true);
    let _ = setsockopt(tcp, sockopt::KeepAlive, &true);
    let _ = setsockopt(tcp, sockopt::TcpKeepIdle, &30);
    let _ = setsockopt(tcp, sockopt::TcpKeepInterval, &10);
    let _ = setsockopt(tcp, sockopt::TcpKeepCount, &3);
    let _ = setsockopt(tcp, sockopt::TcpUserTimeout, &60_000);
}

/// Accepts connections until SIGTERM or SIGINT.
pub async fn serve(gw: Arc<Gateway>) -> Result<()> {
    let listener = tokio::net::TcpListener::bind(&gw.cfg.file.listen)
        .await
        .with_context(|| format!("listening on {}", gw.cfg.file.listen))?;
    tracing::info!("listening on https://{}", listener.local_addr()?);
    let acceptor = tokio_rustls::TlsAcceptor::from(gw.tls.clone());
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let mut int = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())?;
    loop {
        let (tcp, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    tracing::warn!("accept: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = term.recv() => { tracing::info!("SIGTERM: shutting down"); break }
            _ = int.recv() => { tracing::info!("SIGINT: shutting down"); break }
        };
        // Over the cap, the connection is closed before the TLS handshake costs anything.
        let Ok(permit) = gw.unauthenticated.clone().try_acquire_owned() else {
            tracing::debug!("closing a connection from {peer}: max_unauthenticated connections are pending");
            drop(tcp);
            continue;
        };
        tune_socket(&tcp);
        let pending = Pending(std::sync::Mutex::new(Some(permit)));
        tokio::spawn(connection(gw.clone(), acceptor.clone(), tcp, peer, pending));
    }
    Ok(())
}

async fn connection(
    gw: Arc<Gateway>,
    acceptor: tokio_rustls::TlsAcceptor,
    tcp: tokio::net::TcpStream,
    peer: std::net::SocketAddr,
    pending: Pending,
) {
    let tls = match tokio::time::timeout(Duration::from_secs(10), acceptor.accept(tcp)).await {
        Ok(Ok(t)) => t,
        Ok(Err(e)) => return tracing::debug!("TLS handshake with {peer}: {e}"),
        Err(_) => return tracing::debug!("TLS handshake with {peer} timed out"),
    };
    let pending = Arc::new(pending);
    let svc = hyper::service::service_fn(move |req| {
        let (gw, pending) = (gw.clone(), pending.clone());
        async move { Ok::<_, std::convert::Infallible>(crate::api::route(gw, peer, &pending, req).await) }
    });
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(Duration::from_secs(10))
        .serve_connection(TokioIo::new(tls), svc)
        .with_upgrades();
    if let Err(e) = conn.await {
        tracing::debug!("connection from {peer}: {e}");
    }
}
