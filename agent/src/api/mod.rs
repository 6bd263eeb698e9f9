//! The HTTP API. An exec request goes through these modules in order: [`route`] (here) finds the endpoint,
//! `authenticate` (here) checks the token, [`parse`] reads the request, [`authorize`] resolves the task and checks
//! the ACL, and [`upgrade`] admits the session and switches to the WebSocket. Every refusal on the way is a
//! [`Refusal`], audited as a `denied` record.

pub mod authorize;
pub mod observe;
pub mod origin;
pub mod parse;
pub mod refusal;
pub mod upgrade;

pub use origin::Origin;
pub use refusal::Refusal;

use crate::runtime::Discovery;
use crate::server::Agent;
use dcos_exec_access::acl::Principal;
use dcos_exec_access::audit::DenialRecord;
use dcos_exec_access::auth::Claims;
use dcos_exec_proto::TaskInfo;
use dcos_exec_server::gate::Pending;
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
    /// The connection presented a certificate of the gateway CA.
    pub gateway: bool,
    /// The connection's slot among those not yet authenticated, given up on its first authenticated request.
    pub pending: &'a Pending,
}

/// Dispatches one request of a connection.
pub async fn route(agent: Arc<Agent>, caller: Caller<'_>, req: Request<Incoming>) -> Response<Body> {
    let path = req.uri().path().to_string();
    // Refused before authentication, yet audited (as unauthenticated: bounded and rate-limited).
    let early = |r: Refusal| {
        agent.audit_refusal(&Origin::direct(caller.peer), &path, None, None, &r);
        r.response()
    };
    if req.method() != http::Method::GET {
        return early(parse::ParseError::Method.into());
    }
    match path.as_str() {
        "/healthz" => return observe::healthz(),
        "/readyz" => return observe::readyz(&agent),
        "/metrics" => return metrics(&agent, &caller, &req).await,
        _ => {}
    }
    let segs: Vec<&str> = path.trim_matches('/').split('/').collect();
    match segs.as_slice() {
        ["v1", "tasks"] => list(&agent, &caller, &req).await,
        ["v1", "runtimes"] => runtimes(&agent, &caller, &req).await,
        ["v1", "tasks", task, "exec"] => match parse::task_segment(task) {
            Ok(task) => exec(agent, &caller, req, task).await,
            Err(e) => early(e.into()),
        },
        // Not a request of the API at all: never audited, there is no user yet.
        _ => Refusal::from(parse::ParseError::NoEndpoint(path)).response(),
    }
}

impl Agent {
    /// Writes the `denied` record of a refusal, logs it and counts it. Unauthenticated refusals are recorded
    /// (in both logs) at most [`dcos_exec_access::audit::UNAUTHENTICATED_PER_SECOND`] a second, the rest only
    /// counted; request fields are escaped and cut to a bounded length in both.
    fn audit_refusal(&self, origin: &Origin, path: &str, user: Option<&str>, task: Option<&str>, r: &Refusal) {
        use dcos_exec_access::text::bounded;
        self.metrics.refused(r.code);
        let Some(suppressed) = self.audit.admit_refusal(user) else { return };
        let code = dcos_exec_access::metrics::code_name(r.code);
        let (shown_user, shown_task) =
            (user.map_or_else(|| "-".into(), bounded), task.map_or_else(|| "-".into(), bounded));
        tracing::info!(
            code,
            user = shown_user.as_str(),
            task = shown_task.as_str(),
            source = %origin.source,
            via = origin.via.as_deref().unwrap_or("-"),
            path = bounded(path).as_str(),
            reason = bounded(&r.message).as_str(),
            suppressed,
            "refused"
        );
        self.audit.denial(&DenialRecord {
            event: "denied",
            time: dcos_exec_access::audit::now(),
            user: user.map(String::from),
            source: origin.source.clone(),
            via: origin.via.clone(),
            path: path.to_string(),
            task: task.map(String::from),
            code: r.code,
            reason: r.message.clone(),
            suppressed,
        });
    }

    /// Step 1 of every API request: the caller's claims and where the request comes from, or the (audited)
    /// refusal. A caller that authenticates no longer counts against `max_unauthenticated`. Forwarding headers
    /// from a connection without a gateway certificate are refused, whatever the token.
    async fn authenticate(&self, caller: &Caller<'_>, req: &Request<Incoming>) -> Result<(Claims, Origin), Refusal> {
        let origin = origin::of(caller.peer, caller.gateway, req.headers());
        let audited = origin.as_ref().map_or_else(|_| Origin::direct(caller.peer), Clone::clone);
        let path = req.uri().path();
        let h = req.headers().get(header::AUTHORIZATION).and_then(|v| v.to_str().ok());
        let claims = self.verifier.verify_header(h).await.map_err(|e| {
            let r = Refusal::from(e);
            self.audit_refusal(&audited, path, None, None, &r);
            r
        })?;
        caller.pending.authenticated();
        let origin = origin.map_err(|e| {
            let r = Refusal::from(e);
            self.audit_refusal(&audited, path, Some(&claims.sub), None, &r);
            r
        })?;
        Ok((claims, origin))
    }
}

/// `GET /v1/tasks`: the tasks the ACL lets the caller see.
async fn list(agent: &Agent, caller: &Caller<'_>, req: &Request<Incoming>) -> Response<Body> {
    let (claims, _) = match agent.authenticate(caller, req).await {
        Ok(c) => c,
        Err(r) => return r.response(),
    };
    let who = Principal { user: &claims.sub, groups: &claims.groups };
    let acl = agent.acl.current();
    let mut rows: Vec<TaskInfo> = agent
        .discovery
        .list()
        .await
        .into_iter()
        .filter(|c| acl.allows_target(&who, &authorize::target(c), "list", None))
        .map(task_info)
        .collect();
    rows.sort_by(|a, b| a.id.cmp(&b.id));
    json_response(StatusCode::OK, &rows)
}

/// A container as a row of `GET /v1/tasks` (and a task record in the cluster directory).
pub fn task_info(c: crate::runtime::Container) -> TaskInfo {
    // Runtimes report a paused container as running; its frozen cgroup says what an exec would meet.
    let paused = c.state == crate::runtime::State::Running && c.pid > 0 && dcos_exec_container::cgroup::frozen(c.pid);
    TaskInfo {
        age_secs: if c.state == crate::runtime::State::Stopped { 0 } else { crate::runtime::age_secs(c.start_time) },
        id: c.task_id,
        container: c.id,
        name: c.name.map(|n| n.trim_start_matches('/').to_string()),
        runtime: c.runtime.into(),
        state: if paused { "paused" } else { c.state.as_str() }.into(),
        pid: c.pid,
        exit_code: c.exit_code,
        service: c.service,
        project: c.project,
        node: None,
    }
}

/// `GET /v1/runtimes`: how each configured runtime answers, for callers the ACL grants `list` on some task.
async fn runtimes(agent: &Agent, caller: &Caller<'_>, req: &Request<Incoming>) -> Response<Body> {
    let (claims, origin) = match agent.authenticate(caller, req).await {
        Ok(c) => c,
        Err(r) => return r.response(),
    };
    let who = Principal { user: &claims.sub, groups: &claims.groups };
    if !agent.acl.current().grants_somewhere(&who, "list") {
        let r = Refusal::from(authorize::Denied {
            user: claims.sub.clone(),
            action: "list".into(),
            image: None,
            task: "*".into(),
        });
        agent.audit_refusal(&origin, req.uri().path(), Some(&claims.sub), None, &r);
        return r.response();
    }
    json_response(StatusCode::OK, &agent.discovery.statuses().await)
}

/// `GET /metrics` on the API port: for callers the ACL grants `metrics` (on any task).
async fn metrics(agent: &Agent, caller: &Caller<'_>, req: &Request<Incoming>) -> Response<Body> {
    let (claims, origin) = match agent.authenticate(caller, req).await {
        Ok(c) => c,
        Err(r) => return r.response(),
    };
    let who = Principal { user: &claims.sub, groups: &claims.groups };
    if !agent.acl.current().grants_somewhere(&who, "metrics") {
        let r = Refusal::from(authorize::Denied {
            user: claims.sub.clone(),
            action: "metrics".into(),
            image: None,
            task: "*".into(),
        });
        agent.audit_refusal(&origin, req.uri().path(), Some(&claims.sub), None, &r);
        return r.response();
    }
    observe::metrics(agent)
}

/// `GET /v1/tasks/{task}/exec`: authenticate, parse, authorize, upgrade; the first refusal ends it.
async fn exec(agent: Arc<Agent>, caller: &Caller<'_>, req: Request<Incoming>, task: String) -> Response<Body> {
    let path = req.uri().path().to_string();
    let (claims, origin) = match agent.authenticate(caller, &req).await {
        Ok(c) => c,
        Err(r) => {
            agent.metrics.session_ended(dcos_exec_access::metrics::SessionOutcome::Refused, None);
            return r.response();
        }
    };
    let all = agent.discovery.list().await;
    // A gateway names the container it resolved: exactly that one, or a refusal.
    let resolve = |all, t: &str, v: &dyn Fn(&crate::runtime::Container) -> bool, debug| match &origin.container {
        Some(id) => Discovery::resolve_container(all, id, t, v, debug),
        None => Discovery::resolve(all, t, v, debug),
    };
    // One ACL judges the whole request, even if a reload happens meanwhile.
    let acl = agent.acl.current();
    let steps = |req: Request<Incoming>| -> Result<Response<Body>, Refusal> {
        parse::http_version(req.version())?;
        let mut params = parse::exec_request(task.clone(), req.headers())?;
        authorize::cap_add(&params, &agent.cfg.file.cap_add_allowed)?;
        authorize::judge_image(&mut params)?;
        let debug = params.image.is_some();
        let container = authorize::exec(&acl, |t, v| resolve(all, t, v, debug), &claims, &params)?;
        // After the ACL: only those allowed on the container learn which namespaces it shares with the host.
        authorize::cap_add_on(&params, &container)?;
        // Opened only for those allowed to use it, who alone learn whether it can be read.
        authorize::open_layout(&mut params)?;
        let writable = authorize::may_write(&acl, &claims, &params, &container);
        upgrade::exec(&agent, &origin, req, &claims, params, container, writable)
    };
    steps(req).unwrap_or_else(|r| {
        agent.audit_refusal(&origin, &path, Some(&claims.sub), Some(&task), &r);
        agent.metrics.session_ended(dcos_exec_access::metrics::SessionOutcome::Refused, None);
        r.response()
    })
}
