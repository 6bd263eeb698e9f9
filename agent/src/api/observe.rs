//! How the agent is watched: `/healthz` (liveness: the process answers), `/readyz` (readiness: the runtimes
//! were read once and the agent is not shutting down) and `/metrics` (Prometheus). On the API port `/healthz`
//! and `/readyz` need no token and `/metrics` needs one whose ACL grants `metrics`; `metrics_listen` serves all
//! three over plain HTTP without authentication, for scrapers and probes on a trusted network. No metric names
//! a task, container or user (see `dcos_exec_access::metrics`).

use super::{json_response, Body};
use crate::server::Agent;
use http::{header, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use std::sync::Arc;
use std::time::Duration;

/// Connections the unauthenticated listener serves at once; more wait in the kernel's backlog.
const MAX_CONNECTIONS: usize = 32;

pub fn healthz() -> Response<Body> {
    json_response(StatusCode::OK, &serde_json::json!({"ok": true}))
}

/// 200 once the runtimes were read and while the agent is not shutting down, else 503.
pub fn readyz(agent: &Agent) -> Response<Body> {
    let read = agent.discovery.has_answered();
    let stopping = agent.shutdown.is_stopping();
    let ready = read && !stopping;
    let status = if ready { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    json_response(status, &serde_json::json!({"ready": ready, "runtimes_read": read, "shutting_down": stopping}))
}

/// The metrics page, for a caller already let through.
pub fn metrics(agent: &Agent) -> Response<Body> {
    Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, dcos_exec_access::metrics::CONTENT_TYPE)
        .body(Full::new(Bytes::from(agent.metrics.encode())))
        .unwrap_or_default()
}

fn plain(status: StatusCode, text: &'static str) -> Response<Body> {
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "text/plain")
        .body(Full::new(Bytes::from_static(text.as_bytes())))
        .unwrap_or_default()
}

/// The `metrics_listen` server: plain HTTP/1.1, `GET /metrics`, `/healthz` and `/readyz`, nothing else.
pub async fn serve(agent: Arc<Agent>, listener: tokio::net::TcpListener) {
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    loop {
        let Ok(slot) = slots.clone().acquire_owned().await else { return };
        let (tcp, peer) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                tracing::warn!("metrics_listen accept: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let agent = agent.clone();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
                let agent = agent.clone();
                async move {
                    let r = match (req.method() == http::Method::GET, req.uri().path()) {
                        (false, _) => plain(StatusCode::METHOD_NOT_ALLOWED, "only GET\n"),
                        (true, "/metrics") => metrics(&agent),
                        (true, "/healthz") => healthz(),
                        (true, "/readyz") => readyz(&agent),
                        (true, _) => plain(StatusCode::NOT_FOUND, "/metrics, /healthz or /readyz\n"),
                    };
                    Ok::<_, std::convert::Infallible>(r)
                }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(Duration::from_secs(10))
                .serve_connection(TokioIo::new(tcp), svc);
            if let Err(e) = conn.await {
                tracing::debug!("metrics connection from {peer}: {e}");
            }
            drop(slot);
        });
    }
}
