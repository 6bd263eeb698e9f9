//! The HTTP API. An exec request goes through these modules in order: [`route`] (here) finds the endpoint,
//! `authenticate` (here) checks the token, [`parse`] reads the request, [`authorize`] resolves the task and checks
//! the ACL, and [`upgrade`] admits the session and switches to the WebSocket. Every refusal on the way is a
//! [`Refusal`], audited as a `denied` record.

pub mod authorize;
pub mod parse;
pub mod refusal;
pub mod upgrade;

pub use refusal::Refusal;

use crate::acl::Principal;
use crate::audit::DenialRecord;
use crate::auth::Claims;
use crate::limits::Pending;
use crate::server::Agent;
use dcos_exec_proto::TaskInfo;
use http::{header, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use std::net::SocketAddr;
use std::sync::Arc;

pub type Body = Full<Bytes>;

pub fn json_response<T: serde::Serialize>(status: StatusCode, body: &T) -> Response<Body> {
    let bytes = serde_json::to_vec(body).unwrap_or_default();
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from(bytes)))
        .unwrap_or_default()
}

/// Who sent a request, and on which connection.
pub struct Caller<'a> {
    pub peer: SocketAddr,
    /// The connection's slot among those not yet authenticated, given up on its first authenticated request.
    pub pending: &'a Pending,
}

/// Dispatches one request of a connection.
pub fn route(agent: Arc<Agent>, caller: Caller<'_>, req: Request<Incoming>) -> Response<Body> {
    let path = req.uri().path().to_string();
    if req.method() != http::Method::GET {
        return Refusal::from(parse::ParseError::Method).response();
    }
    if path == "/healthz" {
        return json_response(StatusCode::OK, &serde_json::json!({"ok": true}));
    }
    let segs: Vec<&str> = path.trim_matches('/').split('/').collect();
    match segs.as_slice() {
        ["v1", "tasks"] => list(&agent, &caller, &req),
        ["v1", "tasks", task, "exec"] => match parse::task_segment(task) {
            Ok(task) => exec(agent, &caller, req, task),
            Err(e) => Refusal::from(e).response(),
        },
        // Not a request of the API at all: never audited, there is no user yet.
        _ => Refusal::from(parse::ParseError::NoEndpoint(path)).response(),
    }
}

impl Agent {
    /// Writes the `denied` record of a refusal.
    fn audit_refusal(&self, peer: SocketAddr, path: &str, user: Option<&str>, task: Option<&str>, r: &Refusal) {
        self.audit.denial(&DenialRecord {
            event: "denied",
            time: crate::audit::now(),
            user: user.map(String::from),
            source: peer.to_string(),
            path: path.to_string(),
            task: task.map(String::from),
            code: r.code,
            reason: r.message.clone(),
        });
    }

    /// Step 1 of every API request: the caller's claims, or the (audited) refusal. A caller that authenticates
    /// no longer counts against `max_unauthenticated`.
    fn authenticate(&self, caller: &Caller<'_>, req: &Request<Incoming>) -> Result<Claims, Refusal> {
        let h = req.headers().get(header::AUTHORIZATION).and_then(|v| v.to_str().ok());
        match self.verifier.verify_header(h) {
            Ok(c) => {
                caller.pending.authenticated();
                Ok(c)
            }
            Err(e) => {
                let r = Refusal::from(e);
                self.audit_refusal(caller.peer, req.uri().path(), None, None, &r);
                Err(r)
            }
        }
    }
}

/// `GET /v1/tasks`: the tasks the ACL lets the caller see.
fn list(agent: &Agent, caller: &Caller<'_>, req: &Request<Incoming>) -> Response<Body> {
    let claims = match agent.authenticate(caller, req) {
        Ok(c) => c,
        Err(r) => return r.response(),
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

/// `GET /v1/tasks/{task}/exec`: authenticate, parse, authorize, upgrade; the first refusal ends it.
fn exec(agent: Arc<Agent>, caller: &Caller<'_>, req: Request<Incoming>, task: String) -> Response<Body> {
    let path = req.uri().path().to_string();
    let claims = match agent.authenticate(caller, &req) {
        Ok(c) => c,
        Err(r) => return r.response(),
    };
    let steps = |req: Request<Incoming>| -> Result<Response<Body>, Refusal> {
        let mut params = parse::exec_request(task.clone(), req.headers())?;
        authorize::cap_add(&params, &agent.cfg.file.cap_add_allowed)?;
        let layout_failure = authorize::judge_image(&mut params)?;
        let container = authorize::exec(&agent.acl, |t| agent.discovery.resolve(t), &claims, &params)?;
        // A layout that cannot be read is reported only to those allowed to use it.
        if let Some(f) = layout_failure {
            return Err(f.into());
        }
        upgrade::exec(&agent, caller.peer, req, &claims, params, container)
    };
    steps(req).unwrap_or_else(|r| {
        agent.audit_refusal(caller.peer, &path, Some(&claims.sub), Some(&task), &r);
        r.response()
    })
}
