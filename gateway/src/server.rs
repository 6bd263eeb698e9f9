//! The gateway's server: its shared state, the TLS listener for users, and each connection's requests. What
//! happens to a request is in [`crate::api`]; how a session reaches its agent is in [`crate::relay`].

use crate::config::Loaded;
use crate::relay::Relay;
use anyhow::{Context, Result};
use dcos_exec_access::acl::Shared;
use dcos_exec_access::audit::AuditLog;
use dcos_exec_access::auth::Verifier;
use dcos_exec_access::metrics::{Component, Metrics};
use dcos_exec_cluster::acl::EtcdAcl;
use dcos_exec_cluster::Directory;
use dcos_exec_server::connection::serve_tls;
use dcos_exec_server::gate::{ConnectionGate, Pending};
use dcos_exec_server::listener::accept_until_signal;
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
    /// Connections not yet past authentication (`max_unauthenticated`).
    pub gate: ConnectionGate,
    /// What `/metrics` serves.
    pub metrics: Metrics,
    tls: Arc<rustls::ServerConfig>,
}

impl Gateway {
    pub async fn new(cfg: Loaded) -> Result<Arc<Gateway>> {
        let f = &cfg.file;
        let pub_pem = std::fs::read(&f.token_public_key)
            .with_context(|| format!("reading token public key {}", f.token_public_key.display()))?;
        if f.oidc.iter().any(|o| o.issuer == f.issuer) {
            anyhow::bail!("[[oidc]] issuer {:?} is also the cluster's own issuer: choose another `issuer`", f.issuer);
        }
        let issuers = dcos_exec_access::oidc::issuers(&f.oidc)?;
        let verifier = Verifier::new(&pub_pem, &f.issuer, &f.audience)?.with_oidc(issuers);
        let (acl, etcd_acl) = if f.acl == std::path::Path::new(crate::config::ACL_IN_ETCD) {
            // Any etcd client can write the key: only the operator's signature makes a document an ACL.
            let path = f.acl_key.as_ref().context(
                "acl = \"etcd\" needs acl_key, the public key the ACL in etcd is signed with (`init cluster` writes \
                 it as acl-signing.pub; see the README, \"Cluster\", for an older set-up)",
            )?;
            let pem = std::fs::read(path).with_context(|| format!("reading acl_key {}", path.display()))?;
            let key = dcos_exec_cluster::signed::AclKey::from_pem(&pem)
                .with_context(|| format!("acl_key {}", path.display()))?;
            let e = EtcdAcl::spawn(f.etcd.clone(), &f.etcd_prefix, key, EtcdAcl::empty(&f.etcd_prefix));
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
        let gate = ConnectionGate::new(cfg.file.max_unauthenticated);
        let metrics = Metrics::new(Component::Gateway, env!("CARGO_PKG_VERSION"), crate::REVISION);
        Ok(Arc::new(Gateway { cfg, verifier, acl, _etcd_acl: etcd_acl, audit, directory, relay, gate, metrics, tls }))
    }
}

fn tls_config(cfg: &Loaded) -> Result<rustls::ServerConfig> {
    let f = &cfg.file;
    let (certs, key) = dcos_exec_server::tls::load_pair(&f.tls_cert, &f.tls_key)?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut c = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .context("TLS certificate and key do not match")?;
    c.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(c)
}

/// Accepts connections until SIGTERM or SIGINT.
pub async fn serve(gw: Arc<Gateway>) -> Result<()> {
    let listener = tokio::net::TcpListener::bind(&gw.cfg.file.listen)
        .await
        .with_context(|| format!("listening on {}", gw.cfg.file.listen))?;
    tracing::info!("listening on https://{}", listener.local_addr()?);
    // OIDC issuers' keys: fetched now and refreshed on rotation.
    gw.verifier.spawn_refresh();
    let acceptor = tokio_rustls::TlsAcceptor::from(gw.tls.clone());
    accept_until_signal(&listener, &gw.gate, |tcp, peer, pending| {
        tokio::spawn(connection(gw.clone(), acceptor.clone(), tcp, peer, pending));
    })
    .await?;
    Ok(())
}

/// One TLS connection: its requests share `pending`, the slot it holds until a request authenticates.
async fn connection(
    gw: Arc<Gateway>,
    acceptor: tokio_rustls::TlsAcceptor,
    tcp: tokio::net::TcpStream,
    peer: std::net::SocketAddr,
    pending: Pending,
) {
    let pending = Arc::new(pending);
    serve_tls(acceptor, tcp, peer, |_| {
        hyper::service::service_fn(move |req| {
            let (gw, pending) = (gw.clone(), pending.clone());
            async move { Ok::<_, std::convert::Infallible>(crate::api::route(gw, peer, &pending, req).await) }
        })
    })
    .await
}
