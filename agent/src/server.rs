//! The HTTPS API: TLS (rustls), routing, authentication, authorization, and the upgrade into a session.

use crate::acl::{Acl, Principal};
use crate::audit::{AuditLog, DenialRecord};
use crate::auth::{Claims, Verifier};
use crate::config::Loaded;
use crate::exec::SealedExe;
use crate::runtime::{Discovery, RuntimeError};
use anyhow::{Context, Result};
use dcos_exec_proto::{ErrorBody, ErrorCode, ExecRequest, TaskInfo, EXEC_REQUEST_HEADER, SUBPROTOCOL};
use http::{header, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper_util::rt::TokioIo;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

type Body = Full<Bytes>;

/// Shared state of a running agent.
pub struct Agent {
    pub cfg: Loaded,
    pub verifier: Verifier,
    pub acl: Acl,
    pub audit: AuditLog,
    pub discovery: Discovery,
    pub exe: SealedExe,
    /// The soft RLIMIT_NOFILE the agent started with, restored in sessions.
    pub nofile: Option<dcos_exec_container::spec::Rlimit>,
    pub puller: dcos_exec_images::pull::Puller,
    /// Pulls share it, a prune takes it alone: a prune must not remove what a pull is still assembling.
    pub cache_lock: tokio::sync::RwLock<()>,
    tls: Arc<rustls::ServerConfig>,
}

impl Agent {
    pub fn new(cfg: Loaded) -> Result<Arc<Agent>> {
        let f = &cfg.file;
        let pub_pem = std::fs::read(&f.token_public_key)
            .with_context(|| format!("reading token public key {}", f.token_public_key.display()))?;
        let verifier = Verifier::new(&pub_pem, &f.issuer, &f.audience)?;
        let acl = Acl::load(&f.acl)?;
        let audit = AuditLog::open(&f.audit_log).with_context(|| format!("opening {}", f.audit_log.display()))?;
        let discovery = Discovery::new(&f.runtimes, f.task_id_annotation.clone());
        let exe = SealedExe::new().context("copying the agent binary into a sealed memfd")?;
        let tls = Arc::new(tls_config(&cfg)?);
        let puller = puller(&cfg.file.images)?;
        let nofile = None;
        Ok(Arc::new(Agent {
            cfg,
            verifier,
            acl,
            audit,
            discovery,
            exe,
            nofile,
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
        unpack: dcos_exec_images::unpack::UnpackOptions { allow_devices: c.allow_devices, keep_setid: c.keep_setid },
    };
    Ok(Puller::new(Arc::new(cache), opts))
}

fn tls_config(cfg: &Loaded) -> Result<rustls::ServerConfig> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    let f = &cfg.file;
    let certs = CertificateDer::pem_file_iter(&f.tls_cert)
        .with_context(|| format!("reading {}", f.tls_cert.display()))?
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("parsing {}", f.tls_cert.display()))?;
    let key = PrivateKeyDer::from_pem_file(&f.tls_key).with_context(|| format!("reading {}", f.tls_key.display()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut c = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .context("TLS certificate and key do not match")?;
    c.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(c)
}

/// Dead peers are noticed by the kernel: keep-alive probes when idle, and unacknowledged data for a minute
/// fails the connection (so a session blocked on a vanished client ends).
fn tune_socket(tcp: &tokio::net::TcpStream) {
    use nix::sys::socket::{setsockopt, sockopt};
    let _ = setsockopt(tcp, sockopt::KeepAlive, &true);
    let _ = setsockopt(tcp, sockopt::TcpKeepIdle, &30);
    let _ = setsockopt(tcp, sockopt::TcpKeepInterval, &10);
    let _ = setsockopt(tcp, sockopt::TcpKeepCount, &3);
    let _ = setsockopt(tcp, sockopt::TcpUserTimeout, &60_000);
}

/// Accepts connections until the process is stopped.
pub async fn serve(agent: Arc<Agent>) -> Result<()> {
    let listener = tokio::net::TcpListener::bind(&agent.cfg.file.listen)
        .await
        .with_context(|| format!("listening on {}", agent.cfg.file.listen))?;
    tracing::info!("listening on https://{}", listener.local_addr()?);
    let acceptor = tokio_rustls::TlsAcceptor::from(agent.tls.clone());
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    loop {
        let (tcp, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!("accept: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = term.recv() => { tracing::info!("SIGTERM: stopping"); return Ok(()) }
            _ = tokio::signal::ctrl_c() => { tracing::info!("SIGINT: stopping"); return Ok(()) }
        };
        let _ = tcp.set_nodelay(true);
        tune_socket(&tcp);
        let agent = agent.clone();
        let acceptor = acceptor.clone();
        tokio::spawn(async move {
            let tls = match tokio::time::timeout(Duration::from_secs(10), acceptor.accept(tcp)).await {
                Ok(Ok(t)) => t,
                Ok(Err(e)) => return tracing::debug!("TLS handshake with {peer}: {e}"),
                Err(_) => return tracing::debug!("TLS handshake with {peer} timed out"),
            };
            let svc = hyper::service::service_fn(move |req| {
                let agent = agent.clone();
                async move { Ok::<_, std::convert::Infallible>(route(agent, peer, req).await) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(Duration::from_secs(10))
                .serve_connection(TokioIo::new(tls), svc)
                .with_upgrades();
            if let Err(e) = conn.await {
                tracing::debug!("connection from {peer}: {e}");
            }
        });
    }
}

fn json_response<T: serde::Serialize>(status: StatusCode, body: &T) -> Response<Body> {
    let bytes = serde_json::to_vec(body).unwrap_or_default();
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from(bytes)))
        .unwrap_or_default()
}

/// A refusal: JSON body with a stable code.
pub fn refuse(code: ErrorCode, message: impl Into<String>) -> Response<Body> {
    let status = StatusCode::from_u16(code.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    json_response(status, &ErrorBody { code, message: message.into() })
}

async fn route(agent: Arc<Agent>, peer: SocketAddr, req: Request<Incoming>) -> Response<Body> {
    let path = req.uri().path().to_string();
    if req.method() != http::Method::GET {
        return refuse(ErrorCode::BadRequest, "only GET is supported");
    }
    if path == "/healthz" {
        return json_response(StatusCode::OK, &serde_json::json!({"ok": true}));
    }
    let segs: Vec<&str> = path.trim_matches('/').split('/').collect();
    match segs.as_slice() {
        ["v1", "tasks"] => list(&agent, peer, &req),
        ["v1", "tasks", task, "exec"] => match percent_decode(task) {
            Some(task) => exec(agent, peer, req, task).await,
            None => refuse(ErrorCode::BadRequest, "task id is not valid percent-encoded UTF-8"),
        },
        _ => refuse(ErrorCode::BadRequest, format!("no such endpoint: {path}")),
    }
}

/// Decodes `%XX` escapes of a path segment (the CLI encodes every byte outside the unreserved set).
fn percent_decode(seg: &str) -> Option<String> {
    let b = seg.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = std::str::from_utf8(b.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

impl Agent {
    fn deny(
        &self,
        peer: SocketAddr,
        path: &str,
        user: Option<&str>,
        task: Option<&str>,
        code: ErrorCode,
        reason: &str,
    ) {
        self.audit.denial(&DenialRecord {
            event: "denied",
            time: crate::audit::now(),
            user: user.map(String::from),
            source: peer.to_string(),
            path: path.to_string(),
            task: task.map(String::from),
            code,
            reason: reason.to_string(),
        });
    }

    /// The caller's claims, or the reason (already audited) why there are none.
    fn authenticate(&self, peer: SocketAddr, req: &Request<Incoming>) -> Result<Claims, String> {
        let h = req.headers().get(header::AUTHORIZATION).and_then(|v| v.to_str().ok());
        self.verifier.verify_header(h).map_err(|e| {
            let msg = e.to_string();
            self.deny(peer, req.uri().path(), None, None, ErrorCode::Unauthenticated, &msg);
            msg
        })
    }
}

fn list(agent: &Agent, peer: SocketAddr, req: &Request<Incoming>) -> Response<Body> {
    let claims = match agent.authenticate(peer, req) {
        Ok(c) => c,
        Err(msg) => return refuse(ErrorCode::Unauthenticated, msg),
    };
    let who = Principal { user: &claims.sub, groups: &claims.groups };
    let mut rows: Vec<TaskInfo> = agent
        .discovery
        .list()
        .into_iter()
        .filter(|c| agent.acl.allows_container(&who, &c.task_id, &c.id, "list", None))
        .map(|c| TaskInfo {
            age_secs: crate::runtime::age_secs(c.start_time),
            id: c.task_id,
            container: c.id,
            runtime: c.runtime.into(),
            state: c.state.as_str().into(),
            pid: c.pid,
        })
        .collect();
    rows.sort_by(|a, b| a.id.cmp(&b.id));
    json_response(StatusCode::OK, &rows)
}

async fn exec(agent: Arc<Agent>, peer: SocketAddr, mut req: Request<Incoming>, task: String) -> Response<Body> {
    let path = req.uri().path().to_string();
    let claims = match agent.authenticate(peer, &req) {
        Ok(c) => c,
        Err(msg) => return refuse(ErrorCode::Unauthenticated, msg),
    };
    let user = claims.sub.clone();
    let deny = |code: ErrorCode, msg: String| {
        agent.deny(peer, &path, Some(&user), Some(&task), code, &msg);
        refuse(code, msg)
    };
    let Some(raw) = req.headers().get(EXEC_REQUEST_HEADER).and_then(|v| v.to_str().ok()) else {
        return deny(ErrorCode::BadRequest, format!("missing {EXEC_REQUEST_HEADER} header"));
    };
    let exec_req = match ExecRequest::from_header(raw) {
        Ok(r) => r,
        Err(e) => return deny(ErrorCode::BadRequest, e.to_string()),
    };
    if exec_req.command.is_empty() {
        return deny(ErrorCode::BadRequest, "no command given".into());
    }
    let ws_key = req.headers().get(header::SEC_WEBSOCKET_KEY).cloned();
    let is_upgrade = req
        .headers()
        .get(header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("websocket"));
    let Some(ws_key) = ws_key.filter(|_| is_upgrade) else {
        return deny(ErrorCode::BadRequest, "exec needs a WebSocket upgrade".into());
    };

    // Authorization before any side effect, and before revealing whether the task exists.
    let image = match exec_req.debug_image.as_deref().map(dcos_exec_images::reference::ImageRef::parse) {
        Some(Ok(r)) => Some(r),
        Some(Err(e)) => return deny(ErrorCode::BadRequest, format!("--debug-image: {e}")),
        None => None,
    };
    let pull_policy = match exec_req.pull_policy.as_deref().unwrap_or("").parse() {
        Ok(p) => p,
        Err(e) => return deny(ErrorCode::BadRequest, e),
    };
    if !exec_req.cap_add.is_empty() && image.is_none() {
        return deny(ErrorCode::BadRequest, "--cap-add needs --debug-image".into());
    }
    // Only capabilities on the agent's allowlist: the others amount to root on the host.
    let cap_add = match crate::exec::check_cap_add(&exec_req.cap_add, &agent.cfg.file.cap_add_allowed) {
        Ok(c) => c,
        Err((code, msg)) => return deny(code, msg),
    };
    // A debug session needs `debug` for its image instead of `exec`; the stdin/tty/user modifiers are the same.
    let mut actions = vec![if image.is_some() { "debug" } else { "exec" }];
    if !exec_req.cap_add.is_empty() {
        actions.push("debug:caps");
    }
    if exec_req.stdin {
        actions.push("exec:stdin");
    }
    if exec_req.tty {
        actions.push("exec:tty");
    }
    if exec_req.user.is_some() {
        actions.push("exec:user");
    }
    let who = Principal { user: &claims.sub, groups: &claims.groups };
    let image_name = image.as_ref().map(|r| r.to_string());
    let denied = |task_id: &str, container_id: &str| {
        actions.iter().find(|a| !agent.acl.allows_container(&who, task_id, container_id, a, image_name.as_deref()))
    };
    let refusal = |a: &str| {
        let what = match (&image_name, a.starts_with("debug")) {
            (Some(i), true) => format!("{a} with image {i}"),
            _ => a.to_string(),
        };
        format!("user {user:?} may not {what} on task {task:?}")
    };
    // Resolve first, then authorize against what the name resolved to (a container id must not dodge a deny
    // rule written for its task id). Someone with no grant on the name learns nothing about its existence.
    let container = match agent.discovery.resolve(&task) {
        Ok(c) => c,
        Err(e) => {
            if let Some(a) = denied(&task, &task) {
                return deny(ErrorCode::Forbidden, refusal(a));
            }
            return match e {
                RuntimeError::NotRunning { .. } => deny(ErrorCode::ContainerNotRunning, e.to_string()),
                RuntimeError::NotFound(_) => deny(ErrorCode::TaskNotFound, e.to_string()),
                _ => deny(ErrorCode::BadRequest, e.to_string()),
            };
        }
    };
    if let Some(a) = denied(&container.task_id, &container.id) {
        return deny(ErrorCode::Forbidden, refusal(a));
    }

    let accept = tokio_tungstenite::tungstenite::handshake::derive_accept_key(ws_key.as_bytes());
    let ctx = crate::session::Context {
        user,
        source: peer.to_string(),
        task,
        container,
        request: exec_req,
        image,
        pull_policy,
        cap_add,
        grace_ms: agent.cfg.grace_period.as_millis() as u64,
    };
    tokio::spawn(async move {
        match hyper::upgrade::on(&mut req).await {
            Ok(upgraded) => crate::session::run(agent, TokioIo::new(upgraded), ctx).await,
            Err(e) => tracing::debug!("upgrade from {peer} failed: {e}"),
        }
    });
    Response::builder()
        .status(StatusCode::SWITCHING_PROTOCOLS)
        .header(header::CONNECTION, "Upgrade")
        .header(header::UPGRADE, "websocket")
        .header(header::SEC_WEBSOCKET_ACCEPT, accept)
        .header(header::SEC_WEBSOCKET_PROTOCOL, SUBPROTOCOL)
        .body(Full::new(Bytes::new()))
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn task_segments_are_percent_decoded() {
        assert_eq!(percent_decode("web.1").as_deref(), Some("web.1"));
        assert_eq!(percent_decode("a%2Fb%20c").as_deref(), Some("a/b c"));
        assert_eq!(percent_decode("bad%2"), None);
        assert_eq!(percent_decode("bad%zz"), None);
        assert_eq!(percent_decode("%ff"), None);
    }
}
