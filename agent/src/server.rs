//! The agent's server: its shared state, the TLS listener, admission of connections, and the orderly shutdown.
//! What happens to a request once it arrives is in [`crate::api`].

use crate::config::{AclSource, Loaded};
use crate::exec::SealedExe;
use crate::limits::UserSessions;
use crate::runtime::Discovery;
use crate::shutdown::Shutdown;
use anyhow::{Context, Result};
use dcos_exec_access::acl::Shared;
use dcos_exec_access::audit::AuditLog;
use dcos_exec_access::auth::Verifier;
use dcos_exec_server::connection::serve_tls;
use dcos_exec_server::gate::{ConnectionGate, Pending};
use dcos_exec_server::listener::accept_until_signal;
use std::sync::Arc;
use std::time::Duration;

/// How often the ACL file is checked for changes.
const ACL_POLL: Duration = Duration::from_secs(1);

/// Shared state of a running agent.
pub struct Agent {
    pub cfg: Loaded,
    pub verifier: Verifier,
    /// The ACL in force, reloaded from its file or from etcd when it changes.
    pub acl: Arc<Shared>,
    /// With `acl = "etcd"`: the key the ACL documents in etcd must be signed with.
    pub acl_key: Option<dcos_exec_cluster::signed::AclKey>,
    pub audit: AuditLog,
    pub discovery: Discovery,
    pub exe: SealedExe,
    pub puller: dcos_exec_images::pull::Puller,
    /// Pulls share it, a prune takes it alone: a prune must not remove what a pull is still assembling.
    pub cache_lock: tokio::sync::RwLock<()>,
    /// Connections not yet past authentication (`max_unauthenticated`).
    pub gate: ConnectionGate,
    /// Open sessions by user (`max_sessions_per_user`).
    pub user_sessions: Arc<UserSessions>,
    pub shutdown: Arc<Shutdown>,
    /// What `/metrics` serves.
    pub metrics: dcos_exec_access::metrics::Metrics,
    tls: Arc<rustls::ServerConfig>,
}

impl Agent {
    pub fn new(cfg: Loaded) -> Result<Arc<Agent>> {
        let f = &cfg.file;
        let pub_pem = std::fs::read(&f.token_public_key)
            .with_context(|| format!("reading token public key {}", f.token_public_key.display()))?;
        if f.oidc.iter().any(|o| o.issuer == f.issuer) {
            anyhow::bail!("[[oidc]] issuer {:?} is also the agent's own issuer: choose another `issuer`", f.issuer);
        }
        let issuers = dcos_exec_access::oidc::issuers(&f.oidc)?;
        let verifier = Verifier::new(&pub_pem, &f.issuer, &f.audience)?.with_oidc(issuers);
        let (acl, acl_key) = match (&cfg.acl, &cfg.cluster) {
            (AclSource::File(path), _) => (Shared::watch_file(path, ACL_POLL)?, None),
            (AclSource::Etcd, Some(c)) => {
                let path = c.file.acl_key.as_ref().context("acl = \"etcd\" needs cluster.acl_key")?;
                let pem = std::fs::read(path).with_context(|| format!("reading cluster.acl_key {}", path.display()))?;
                let key = dcos_exec_cluster::signed::AclKey::from_pem(&pem)
                    .with_context(|| format!("cluster.acl_key {}", path.display()))?;
                (dcos_exec_cluster::acl::EtcdAcl::empty(&c.file.prefix), Some(key))
            }
            (AclSource::Etcd, None) => anyhow::bail!("acl = \"etcd\" needs a [cluster] section"),
        };
        let audit = AuditLog::open(&f.audit_log).with_context(|| format!("opening {}", f.audit_log.display()))?;
        let discovery = Discovery::new(&f.runtimes, f.task_id_annotation.clone(), cfg.api_timeout);
        let exe = SealedExe::new().context("copying the agent binary into a sealed memfd")?;
        let tls = Arc::new(tls_config(&cfg)?);
        let puller = puller(&cfg.file.images)?;
        Ok(Arc::new(Agent {
            gate: ConnectionGate::new(cfg.file.max_unauthenticated),
            user_sessions: UserSessions::new(cfg.file.max_sessions_per_user),
            shutdown: Default::default(),
            metrics: dcos_exec_access::metrics::Metrics::new(
                dcos_exec_access::metrics::Component::Agent,
                env!("CARGO_PKG_VERSION"),
                crate::REVISION,
            ),
            cfg,
            verifier,
            acl,
            acl_key,
            audit,
            discovery,
            exe,
            puller,
            cache_lock: Default::default(),
            tls,
        }))
    }
}

/// The debug-image puller over the configured cache and registries.
pub fn puller(c: &crate::config::ImagesConfig) -> Result<dcos_exec_images::pull::Puller> {
    use dcos_exec_images::pull::{Credentials, Puller, RegistryOptions};
    let cache = dcos_exec_images::cache::Cache::open(&c.cache_dir)
        .with_context(|| format!("opening the image cache {}", c.cache_dir.display()))?;
    let ca_pems = c
        .ca_files
        .iter()
        .map(|p| std::fs::read(p).with_context(|| format!("reading registry CA {}", p.display())))
        .collect::<Result<Vec<_>>>()?;
    let credentials = c
        .credentials
        .iter()
        .map(|(k, v)| (k.clone(), Credentials { username: v.username.clone(), password: v.password.clone() }))
        .collect();
    let opts = RegistryOptions {
        insecure: c.insecure_registries.clone(),
        ca_pems,
        credentials,
        docker_config: c.docker_config.clone(),
        unpack: dcos_exec_images::unpack::UnpackOptions {
            allow_devices: c.allow_devices,
            keep_setid: c.keep_setid,
            limits: c.limits(),
        },
        read_timeout: None,
        retry: Default::default(),
    };
    Ok(Puller::new(Arc::new(cache), opts))
}

fn tls_config(cfg: &Loaded) -> Result<rustls::ServerConfig> {
    let f = &cfg.file;
    let (certs, key) = dcos_exec_server::tls::load_pair(&f.tls_cert, &f.tls_key)?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder =
        rustls::ServerConfig::builder_with_provider(provider.clone()).with_safe_default_protocol_versions()?;
    let builder = match f.cluster.as_ref().and_then(|c| c.gateway_ca.as_ref()) {
        None => builder.with_no_client_auth(),
        Some(ca) => builder.with_client_cert_verifier(gateway_verifier(ca, provider)?),
    };
    let mut c = builder.with_single_cert(certs, key).context("TLS certificate and key do not match")?;
    c.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(c)
}

/// Asks clients for a certificate and verifies one that is given against the gateway CA, but lets clients
/// without one in: users talk to agents directly as before, and only what a gateway relays needs the
/// certificate (see [`crate::api::origin`]). A certificate of another CA fails the handshake.
fn gateway_verifier(
    ca: &std::path::Path,
    provider: Arc<rustls::crypto::CryptoProvider>,
) -> Result<Arc<dyn rustls::server::danger::ClientCertVerifier>> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in dcos_exec_server::tls::load_certs(ca).context("gateway_ca")? {
        roots.add(cert)?;
    }
    rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
        .allow_unauthenticated()
        .build()
        .with_context(|| format!("gateway_ca {}", ca.display()))
}

/// Accepts connections until SIGTERM or SIGINT, then shuts down within `shutdown_grace`: no new connection or
/// session, every live session hung up, audited and told, then return.
pub async fn serve(agent: Arc<Agent>) -> Result<()> {
    let listener = tokio::net::TcpListener::bind(&agent.cfg.file.listen)
        .await
        .with_context(|| format!("listening on {}", agent.cfg.file.listen))?;
    tracing::info!("listening on https://{}", listener.local_addr()?);
    agent.verifier.spawn_refresh();
    if let Some(addr) = &agent.cfg.file.metrics_listen {
        let l = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("listening on {addr} (metrics_listen)"))?;
        tracing::info!("serving /metrics, /healthz and /readyz on http://{}", l.local_addr()?);
        tokio::spawn(crate::api::observe::serve(agent.clone(), l));
    }
    // Ready (`/readyz`) once the runtimes have been read; the cache's size is known before the first pull.
    tokio::spawn({
        let agent = agent.clone();
        async move {
            let found = agent.discovery.list().await.len();
            tracing::info!(containers = found, "runtimes read: ready");
        }
    });
    tokio::task::spawn_blocking({
        let agent = agent.clone();
        move || agent.metrics.set_image_cache_bytes(agent.puller.size())
    });
    // Cluster membership (and the ACL from etcd) before the first connection, so that the first request is
    // judged by the ACL in etcd rather than the empty one.
    let membership = crate::cluster::Membership::start(&agent).await;
    let acceptor = tokio_rustls::TlsAcceptor::from(agent.tls.clone());
    accept_until_signal(&listener, &agent.gate, |tcp, peer, pending| {
        tokio::spawn(connection(agent.clone(), acceptor.clone(), tcp, peer, pending));
    })
    .await?;
    drop(listener);
    shut_down(&agent).await;
    membership.stop().await;
    Ok(())
}

/// One TLS connection: its requests share `pending`, the slot it holds until a request authenticates.
async fn connection(
    agent: Arc<Agent>,
    acceptor: tokio_rustls::TlsAcceptor,
    tcp: tokio::net::TcpStream,
    peer: std::net::SocketAddr,
    pending: Pending,
) {
    let pending = Arc::new(pending);
    serve_tls(acceptor, tcp, peer, |tls| {
        // Only a certificate that the gateway CA verified gets this far (see `gateway_verifier`).
        let gateway = tls.peer_certificates().is_some_and(|c| !c.is_empty());
        hyper::service::service_fn(move |req| {
            let (agent, pending) = (agent.clone(), pending.clone());
            async move {
                let caller = crate::api::Caller { peer, gateway, pending: &pending };
                Ok::<_, std::convert::Infallible>(crate::api::route(agent, caller, req).await)
            }
        })
    })
    .await
}

/// Tells every session to hang up and waits for them (each writes its end record and tells its client) for at
/// most `shutdown_grace`.
async fn shut_down(agent: &Agent) {
    let grace = agent.cfg.shutdown_grace;
    let live = agent.shutdown.live();
    tracing::info!(sessions = live, "hanging up live sessions (shutdown_grace {})", humantime::format_duration(grace));
    agent.shutdown.begin(grace);
    if tokio::time::timeout(grace, agent.shutdown.drained()).await.is_err() {
        tracing::warn!(sessions = agent.shutdown.live(), "sessions still open after shutdown_grace; exiting anyway");
    }
}
