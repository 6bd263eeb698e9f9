//! The gateway's HTTP API, the agent's own (so the CLI does not change): `GET /v1/tasks` and `GET /v1/nodes`
//! from the directory snapshot, and `/v1/tasks/{task}/exec` authenticated, read, resolved to its node and
//! judged here with the agent's code ([`dcos_exec_access`]), then relayed ([`crate::relay`]). The agent
//! verifies the token and judges the ACL again: a gateway cannot widen anyone's rights.

use crate::resolve::{self, target, ResolveError, Row};
use crate::server::Gateway;
use dcos_exec_access::acl::Principal;
use dcos_exec_access::audit::DenialRecord;
use dcos_exec_access::auth::{AuthError, Claims};
use dcos_exec_access::judge::{self, Denied, Refused};
use dcos_exec_access::metrics::RelayResult;
use dcos_exec_access::request::{self, ParseError};
use dcos_exec_cluster::{DirectoryError, Indexed, Snapshot};
use dcos_exec_proto::{forward, ErrorBody, ErrorCode, NodeInfo, TaskInfo};
use dcos_exec_server::gate::Pending;
use http::{header, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

pub type Body = Full<Bytes>;

/// Why a request was refused here.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub code: ErrorCode,
    pub message: String,
}

impl Refusal {
    pub fn response(&self) -> Response<Body> {
        let status = StatusCode::from_u16(self.code.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        json_response(status, &ErrorBody { code: self.code, message: self.message.clone() })
    }
}

macro_rules! refusal_from {
    ($($t:ty),*) => {$(
        impl From<$t> for Refusal {
            fn from(e: $t) -> Self {
                Refusal { code: e.code(), message: dcos_exec_access::text::escape_controls(&e.to_string()).into_owned() }
            }
        }
    )*};
}
refusal_from!(AuthError, ParseError, Denied, ResolveError, crate::relay::Unreachable);

impl From<DirectoryError> for Refusal {
    fn from(e: DirectoryError) -> Self {
        Refusal { code: ErrorCode::ClusterUnavailable, message: e.to_string() }
    }
}

pub fn json_response<T: serde::Serialize>(status: StatusCode, body: &T) -> Response<Body> {
    let bytes = serde_json::to_vec(body).unwrap_or_default();
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from(bytes)))
        .unwrap_or_default()
}

/// Dispatches one request.
pub async fn route(gw: Arc<Gateway>, peer: SocketAddr, pending: &Pending, req: Request<Incoming>) -> Response<Body> {
    let path = req.uri().path().to_string();
    // Refused before authentication, yet audited (as unauthenticated: bounded and rate-limited).
    let early = |r: Refusal| {
        gw.audit_refusal(peer, &path, None, None, &r);
        r
    };
    if req.method() != http::Method::GET {
        return early(ParseError::Method.into()).response();
    }
    if path == "/healthz" {
        let directory = gw.directory.shared_snapshot().is_ok();
        return json_response(StatusCode::OK, &serde_json::json!({"ok": true, "directory": directory}));
    }
    let segs: Vec<&str> = path.trim_matches('/').split('/').collect();
    let r = match segs.as_slice() {
        ["v1", "tasks"] => {
            list(&gw, peer, pending, &req).await.map(|(s, rows)| stale(json_response(StatusCode::OK, &rows), &s))
        }
        ["metrics"] => metrics(&gw, peer, pending, &req).await,
        ["v1", "nodes"] => {
            nodes(&gw, peer, pending, &req).await.map(|(s, rows)| stale(json_response(StatusCode::OK, &rows), &s))
        }
        ["v1", "tasks", task, "exec"] => match request::task_segment(task) {
            Ok(task) => exec(gw, peer, pending, req, task).await,
            Err(e) => Err(early(e.into())),
        },
        _ => Err(ParseError::NoEndpoint(path).into()),
    };
    r.unwrap_or_else(|r| r.response())
}

/// Marks a response served from a stale snapshot, for the CLI to warn about.
fn stale(mut resp: Response<Body>, s: &View) -> Response<Body> {
    resp.headers_mut().insert(forward::GATEWAY, http::HeaderValue::from_static("1"));
    if let Some(d) = s.stale_for {
        if let Ok(v) = d.as_secs().to_string().parse() {
            resp.headers_mut().insert(forward::STALE, v);
        }
    }
    resp
}

impl Gateway {
    fn audit_refusal(&self, peer: SocketAddr, path: &str, user: Option<&str>, task: Option<&str>, r: &Refusal) {
        use dcos_exec_access::text::bounded;
        self.metrics.refused(r.code);
        // Unauthenticated refusals: at most so many a second in both logs, the rest counted (as the agent).
        let Some(suppressed) = self.audit.admit_refusal(user) else { return };
        let (shown_user, shown_task) =
            (user.map_or_else(|| "-".into(), bounded), task.map_or_else(|| "-".into(), bounded));
        // The same fields as the agent's `refused` line; never the token.
        tracing::info!(
            code = dcos_exec_access::metrics::code_name(r.code),
            user = shown_user.as_str(),
            task = shown_task.as_str(),
            source = %peer,
            path = dcos_exec_access::text::bounded(path).as_str(),
            reason = dcos_exec_access::text::bounded(&r.message).as_str(),
            suppressed,
            "refused"
        );
        self.audit.denial(&DenialRecord {
            event: "denied",
            time: dcos_exec_access::audit::now(),
            user: user.map(String::from),
            source: peer.to_string(),
            via: None,
            path: path.to_string(),
            task: task.map(String::from),
            code: r.code,
            reason: r.message.clone(),
            suppressed,
        });
    }

    /// The caller's claims, or the audited refusal. A caller that authenticates no longer counts against
    /// `max_unauthenticated`.
    async fn authenticate(
        &self,
        peer: SocketAddr,
        pending: &Pending,
        req: &Request<Incoming>,
    ) -> Result<Claims, Refusal> {
        let h = req.headers().get(header::AUTHORIZATION).and_then(|v| v.to_str().ok());
        let claims = self.verifier.verify_header(h).await.map_err(|e| {
            let r = Refusal::from(e);
            self.audit_refusal(peer, req.uri().path(), None, None, &r);
            r
        })?;
        pending.authenticated();
        Ok(claims)
    }

    /// The directory snapshot, or `cluster_unavailable` once etcd has been gone longer than `max_stale`.
    /// Serving from a stale one is logged, and the response says so.
    fn snapshot(&self) -> Result<View, Refusal> {
        let (indexed, stale_for) = self.directory.indexed_snapshot()?;
        if let Some(d) = stale_for {
            tracing::warn!(
                "serving from a directory snapshot {} old: etcd unreachable (max_stale {})",
                humantime::format_duration(Duration::from_secs(d.as_secs())),
                humantime::format_duration(self.cfg.max_stale)
            );
        }
        Ok(View { indexed, stale_for })
    }
}

/// The directory as one request sees it: the shared snapshot (not copied) with its index, and how stale it is.
pub struct View {
    indexed: Arc<Indexed>,
    stale_for: Option<Duration>,
}

impl View {
    fn snap(&self) -> &Snapshot {
        &self.indexed.snapshot
    }

    /// The tasks of registered nodes, borrowed; only those of `node` when given (a binary search).
    fn rows(&self, node: Option<&str>) -> impl Iterator<Item = Row<'_>> {
        let s = self.snap();
        let tasks = match node {
            Some(n) => s.tasks_of(n),
            None => &s.tasks[..],
        };
        tasks.iter().filter(|t| s.nodes.contains_key(&t.node)).map(Row)
    }
}

/// The `node` parameter of `GET /v1/tasks?node=NAME` (percent-decoded), if any.
fn node_param(uri: &http::Uri) -> Option<String> {
    uri.query()?.split('&').find_map(|kv| {
        let v = kv.strip_prefix("node=")?;
        percent_encoding::percent_decode_str(v).decode_utf8().ok().map(|v| v.into_owned())
    })
}

/// `GET /v1/tasks`: the tasks of every node (of one with `?node=NAME`) that the ACL lets the caller list.
async fn list(
    gw: &Gateway,
    peer: SocketAddr,
    pending: &Pending,
    req: &Request<Incoming>,
) -> Result<(View, Vec<TaskInfo>), Refusal> {
    let claims = gw.authenticate(peer, pending, req).await?;
    let s = gw.snapshot()?;
    let who = Principal { user: &claims.sub, groups: &claims.groups };
    let acl = gw.acl.current();
    let now = dcos_exec_cluster::record::unix_now();
    let node = node_param(req.uri());
    let mut rows: Vec<TaskInfo> = s
        .rows(node.as_deref())
        .filter(|r| acl.allows_target(&who, &target(r), "list", None))
        .map(|r| r.info(now))
        .collect();
    rows.sort_by(|a, b| (&a.id, &a.node).cmp(&(&b.id, &b.node)));
    Ok((s, rows))
}

/// `GET /v1/nodes`: every registered node, with the number of its tasks the caller may list; for callers the
/// ACL grants `list` on some task.
async fn nodes(
    gw: &Gateway,
    peer: SocketAddr,
    pending: &Pending,
    req: &Request<Incoming>,
) -> Result<(View, Vec<NodeInfo>), Refusal> {
    let claims = gw.authenticate(peer, pending, req).await?;
    let who = Principal { user: &claims.sub, groups: &claims.groups };
    let acl = gw.acl.current();
    if !acl.grants_somewhere(&who, "list") {
        let r =
            Refusal::from(Denied { user: claims.sub.clone(), action: "list".into(), image: None, task: "*".into() });
        gw.audit_refusal(peer, req.uri().path(), Some(&claims.sub), None, &r);
        return Err(r);
    }
    let s = gw.snapshot()?;
    let rows = s
        .snap()
        .nodes
        .values()
        .map(|n| NodeInfo {
            name: n.name.clone(),
            url: n.url.clone(),
            labels: n.labels.clone(),
            state: if s.stale_for.is_some() { "stale" } else { "ready" }.into(),
            tasks: s.rows(Some(&n.name)).filter(|r| acl.allows_target(&who, &target(r), "list", None)).count(),
        })
        .collect();
    Ok((s, rows))
}

/// `GET /metrics`: the gateway's own counters (see `dcos_exec_access::metrics`), for callers the ACL grants
/// `metrics` on some task.
async fn metrics(
    gw: &Gateway,
    peer: SocketAddr,
    pending: &Pending,
    req: &Request<Incoming>,
) -> Result<Response<Body>, Refusal> {
    let claims = gw.authenticate(peer, pending, req).await?;
    let who = Principal { user: &claims.sub, groups: &claims.groups };
    if !gw.acl.current().grants_somewhere(&who, "metrics") {
        let r =
            Refusal::from(Denied { user: claims.sub.clone(), action: "metrics".into(), image: None, task: "*".into() });
        gw.audit_refusal(peer, req.uri().path(), Some(&claims.sub), None, &r);
        return Err(r);
    }
    Ok(Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, dcos_exec_access::metrics::CONTENT_TYPE)
        .body(Full::new(Bytes::from(gw.metrics.encode())))
        .unwrap_or_default())
}

/// `GET /v1/tasks/{task}/exec`: authenticate, read, resolve over the snapshot, judge, relay.
async fn exec(
    gw: Arc<Gateway>,
    peer: SocketAddr,
    pending: &Pending,
    req: Request<Incoming>,
    task: String,
) -> Result<Response<Body>, Refusal> {
    let path = req.uri().path().to_string();
    let claims = gw.authenticate(peer, pending, &req).await?;
    let audited = |r: Refusal| {
        gw.audit_refusal(peer, &path, Some(&claims.sub), Some(&task), &r);
        r
    };
    let s = gw.snapshot().map_err(audited)?;
    let judged = (|| {
        request::http_version(req.version())?;
        let mut params = request::exec_request(task.clone(), req.headers())?;
        // An OCI layout lives on the agent's host: judged here by its lexical form, by its real path there.
        params.image = params.image.map(|i| i.lexically_normal());
        let debug = params.image.is_some();
        let t = judge::exec(
            &gw.acl.current(),
            target,
            |name, v| resolve::resolve(&s.indexed, name, v, debug),
            &claims,
            &params,
        )
        .map_err(|r| match r {
            Refused::Denied(d) => Refusal::from(d),
            Refused::Resolve(e) => Refusal::from(e),
        })?;
        Ok::<_, Refusal>(t.info(dcos_exec_cluster::record::unix_now()))
    })();
    let t = judged.map_err(audited)?;
    let node = t.node.clone().unwrap_or_default();
    let Some(url) = s.snap().nodes.get(&node).map(|n| n.url.clone()) else {
        return Err(audited(ResolveError::NotFound(task.clone()).into()));
    };
    let session = crate::relay::Session { user: claims.sub.clone(), source: peer, task: task.clone(), url };
    match crate::relay::exec(gw.clone(), req, &t, session).await {
        Ok(resp) => {
            let taken = resp.status() == StatusCode::SWITCHING_PROTOCOLS;
            gw.metrics.relay(if taken { RelayResult::Relayed } else { RelayResult::Refused });
            Ok(stale(resp, &s))
        }
        Err(e) => {
            gw.metrics.relay(RelayResult::Unreachable);
            tracing::warn!("{e}");
            Err(audited(e.into()))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_node_parameter_is_read_and_decoded() {
        let n = |u: &str| node_param(&u.parse().unwrap());
        assert_eq!(n("/v1/tasks?node=node-a"), Some("node-a".into()));
        assert_eq!(n("/v1/tasks?x=1&node=n%20b"), Some("n b".into()));
        assert_eq!(n("/v1/tasks"), None);
        assert_eq!(n("/v1/tasks?nodes=a"), None);
    }
}
