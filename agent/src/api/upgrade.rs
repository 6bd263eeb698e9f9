//! Step 5 of an exec request: admit the session (the agent is not stopping, the user is under
//! `max_sessions_per_user`), answer `101 Switching Protocols` and hand the connection to the session.

use crate::api::parse::ExecParams;
use crate::api::{Body, Refusal};
use crate::runtime::Container;
use crate::server::Agent;
use crate::shutdown::ShuttingDown;
use dcos_exec_access::auth::Claims;
use dcos_exec_proto::SUBPROTOCOL;
use http::{header, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper_util::rt::TokioIo;
use std::sync::Arc;

/// The session's start record could not be written: the audit trail fails closed, the session does not start.
#[derive(Debug, thiserror::Error)]
#[error("session refused: the agent cannot write its audit log")]
pub struct AuditFailed;

impl AuditFailed {
    pub fn code(&self) -> dcos_exec_proto::ErrorCode {
        dcos_exec_proto::ErrorCode::Internal
    }
}

/// Admits the session and switches protocols; the session runs in its own task from here on.
pub fn exec(
    agent: &Arc<Agent>,
    origin: &crate::api::Origin,
    mut req: Request<Incoming>,
    claims: &Claims,
    p: ExecParams,
    container: Container,
    writable: bool,
) -> Result<Response<Body>, Refusal> {
    if agent.shutdown.is_stopping() {
        return Err(ShuttingDown.into());
    }
    // Both guards live as long as the session: the slot counts it for its user, `live` holds the shutdown.
    let admission =
        crate::session::Admission { _slot: agent.user_sessions.acquire(&claims.sub)?, _live: agent.shutdown.track() };
    let accept = tokio_tungstenite::tungstenite::handshake::derive_accept_key(p.ws_key.as_bytes());
    let ctx = crate::session::Context {
        user: claims.sub.clone(),
        source: origin.source.clone(),
        via: origin.via.clone(),
        task: p.task,
        container,
        request: p.request,
        image: p.image,
        pull_policy: p.pull_policy,
        cap_add: p.cap_add,
        writable,
        grace_ms: u64::try_from(agent.cfg.grace_period.as_millis()).unwrap_or(u64::MAX),
    };
    let begun = crate::session::begin(agent, &ctx).map_err(|_| AuditFailed)?;
    let agent = agent.clone();
    let peer = origin.via.clone().unwrap_or_else(|| origin.source.clone());
    tokio::spawn(async move {
        match hyper::upgrade::on(&mut req).await {
            Ok(upgraded) => crate::session::run(agent, TokioIo::new(upgraded), ctx, admission, begun).await,
            Err(e) => {
                tracing::debug!("upgrade from {peer} failed: {e}");
                crate::session::abandoned(&agent, begun);
            }
        }
    });
    Ok(Response::builder()
        .status(StatusCode::SWITCHING_PROTOCOLS)
        .header(header::CONNECTION, "Upgrade")
        .header(header::UPGRADE, "websocket")
        .header(header::SEC_WEBSOCKET_ACCEPT, accept)
        .header(header::SEC_WEBSOCKET_PROTOCOL, SUBPROTOCOL)
        .body(Full::new(Bytes::new()))
        .unwrap_or_default())
}
