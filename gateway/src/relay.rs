//! The hop to the owning agent: an mTLS connection (the gateway's client certificate, agents verified against
//! the cluster CA), the exec request passed on with the user's address and the resolved container, the
//! agent's answer passed back, and after both upgrades the bytes copied both ways. TCP back-pressure on each
//! leg carries flow control end to end: nothing is buffered beyond one copy buffer per direction.
//!
//! The URL comes from the node's record in etcd, which anyone holding an etcd client certificate can rewrite:
//! before anything is sent, the agent's server certificate must name the record's node
//! (`urn:dcos-exec:node:NAME`, see [`dcos_exec_cluster::identity`]). Another node's agent, a listener with
//! another node's certificate, or the gateway itself (whose certificate names no node) is refused.

use crate::config::Loaded;
use anyhow::{Context, Result};
use dcos_exec_proto::{forward, ErrorCode, TaskInfo};
use http::{header, HeaderMap, Request, Response, StatusCode};
use http_body_util::{BodyExt, Empty, Full, Limited};
use hyper::body::{Bytes, Incoming};
use hyper_util::rt::TokioIo;
use rustls_pki_types::ServerName;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

/// The agent of a node could not be reached, or broke off before it answered.
#[derive(Debug, thiserror::Error)]
#[error("node {node} ({url}) is unreachable: {cause}")]
pub struct Unreachable {
    pub node: String,
    pub url: String,
    pub cause: String,
}

impl Unreachable {
    pub fn code(&self) -> ErrorCode {
        ErrorCode::NodeUnreachable
    }
}

/// Connects to agents.
pub struct Relay {
    connector: tokio_rustls::TlsConnector,
    connect_timeout: Duration,
}

/// How long an agent gets to answer an exec request it has accepted the connection for. It answers before
/// anything slow happens (a debug image is pulled after the upgrade).
const ANSWER_TIMEOUT: Duration = Duration::from_secs(30);

/// Headers of the user's request that the agent needs: the token (verified again there), the request, and
/// the WebSocket handshake, whose key the agent answers so that the user's client checks the agent's accept.
const PASSED_ON: [&str; 7] = [
    "authorization",
    dcos_exec_proto::EXEC_REQUEST_HEADER,
    "upgrade",
    "connection",
    "sec-websocket-key",
    "sec-websocket-version",
    "sec-websocket-protocol",
];

/// Headers of the agent's 101 that the user's client checks.
const PASSED_BACK: [&str; 4] = ["upgrade", "connection", "sec-websocket-accept", "sec-websocket-protocol"];

impl Relay {
    pub fn new(cfg: &Loaded) -> Result<Relay> {
        let f = &cfg.file;
        let mut roots = rustls::RootCertStore::empty();
        for c in dcos_exec_server::tls::load_certs(&f.cluster_ca).context("cluster_ca")? {
            roots.add(c)?;
        }
        let (certs, key) = dcos_exec_server::tls::load_pair(&f.client_cert, &f.client_key)?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut c = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots)
            .with_client_auth_cert(certs, key)
            .context("gateway client certificate and key do not match")?;
        c.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Relay { connector: tokio_rustls::TlsConnector::from(Arc::new(c)), connect_timeout: cfg.connect_timeout })
    }

    /// An HTTP/1.1 connection to the agent at `url` (`https://host:port`).
    async fn connect(
        &self,
        node: &str,
        url: &str,
    ) -> Result<hyper::client::conn::http1::SendRequest<Empty<Bytes>>, Unreachable> {
        let fail = |cause: String| Unreachable { node: node.into(), url: url.into(), cause };
        let uri: http::Uri = url.parse().map_err(|e| fail(format!("bad URL: {e}")))?;
        let host = uri.host().ok_or_else(|| fail("URL has no host".into()))?;
        let host = host.trim_start_matches('[').trim_end_matches(']').to_string();
        let port = uri.port_u16().unwrap_or(443);
        let name = ServerName::try_from(host.clone()).map_err(|e| fail(format!("bad host name: {e}")))?;
        let connector = self.connector.clone();
        let expected = node.to_string();
        let dial = async move {
            let tcp = tokio::net::TcpStream::connect((host.as_str(), port)).await.map_err(|e| e.to_string())?;
            dcos_exec_server::listener::tune_socket(&tcp);
            let tls = connector.connect(name, tcp).await.map_err(|e| format!("TLS: {e}"))?;
            let leaf = tls.get_ref().1.peer_certificates().and_then(|c| c.first());
            check_identity(leaf.map(|c| c.as_ref()), &expected)?;
            let (send, conn) =
                hyper::client::conn::http1::handshake(TokioIo::new(tls)).await.map_err(|e| e.to_string())?;
            tokio::spawn(async move {
                if let Err(e) = conn.with_upgrades().await {
                    tracing::debug!("agent connection: {e}");
                }
            });
            Ok::<_, String>(send)
        };
        match tokio::time::timeout(self.connect_timeout, dial).await {
            Ok(r) => r.map_err(fail),
            Err(_) => Err(fail(format!("no connection within {}", humantime::format_duration(self.connect_timeout)))),
        }
    }
}

/// Checks that the agent's server certificate names `node`.
fn check_identity(cert: Option<&[u8]>, node: &str) -> Result<(), String> {
    let der = cert.ok_or("the agent presented no certificate")?;
    dcos_exec_cluster::identity::check(der, node)
        .map_err(|why| format!("the server there is not the agent of node {node}: {why}"))
}

/// What the relay needs to know about the session, for its audit records.
pub struct Session {
    pub user: String,
    pub source: SocketAddr,
    pub task: String,
    pub url: String,
}

/// Passes the exec request on to the agent that owns `task` and returns the agent's answer: a refusal as the
/// agent wrote it, or its `101 Switching Protocols`, after which the bytes are copied both ways.
pub async fn exec(
    gw: Arc<crate::server::Gateway>,
    mut req: Request<Incoming>,
    task: &TaskInfo,
    s: Session,
) -> Result<Response<Full<Bytes>>, Unreachable> {
    let node = task.node.clone().unwrap_or_default();
    let mut send = gw.relay.connect(&node, &s.url).await?;
    let fail = |cause: String| Unreachable { node: node.clone(), url: s.url.clone(), cause };
    let path = req.uri().path_and_query().map(|p| p.as_str().to_string()).unwrap_or_default();
    let mut out = Request::get(path);
    if let Some(h) = out.headers_mut() {
        pass(req.headers(), h, &PASSED_ON);
        if let Ok(v) = s.source.to_string().parse() {
            h.insert(forward::FORWARDED_FOR, v);
        }
        if let Ok(v) = task.container.parse() {
            h.insert(forward::CONTAINER, v);
        }
        if let Ok(u) = s.url.parse::<http::Uri>() {
            if let Some(Ok(v)) = u.authority().map(|a| a.as_str().parse()) {
                h.insert(header::HOST, v);
            }
        }
    }
    let out = out.body(Empty::new()).map_err(|e| fail(e.to_string()))?;
    let answer = tokio::time::timeout(ANSWER_TIMEOUT, send.send_request(out))
        .await
        .map_err(|_| fail("no answer to the exec request".into()))?
        .map_err(|e| fail(e.to_string()))?;
    let status = answer.status();
    let mut back = Response::builder().status(status);
    if status != StatusCode::SWITCHING_PROTOCOLS {
        // The agent's refusal, as it wrote it (a small JSON body).
        if let Some(h) = back.headers_mut() {
            pass(answer.headers(), h, &["content-type"]);
        }
        let body = Limited::new(answer.into_body(), 64 << 10).collect().await.map(|b| b.to_bytes()).unwrap_or_default();
        return back.body(Full::new(body)).map_err(|e| fail(e.to_string()));
    }
    if let Some(h) = back.headers_mut() {
        pass(answer.headers(), h, &PASSED_BACK);
    }
    let record = |event, end: Option<(u64, u64)>| dcos_exec_access::audit::RelayRecord {
        event,
        time: dcos_exec_access::audit::now(),
        user: s.user.clone(),
        source: s.source.to_string(),
        task: s.task.clone(),
        node: node.clone(),
        container: task.container.clone(),
        end: end.map(|_| dcos_exec_access::audit::now()),
        bytes_in: end.map(|e| e.0),
        bytes_out: end.map(|e| e.1),
    };
    gw.audit.relay(&record("relay_start", None));
    let esc = dcos_exec_access::text::escape_controls;
    tracing::info!(user = %esc(&s.user), task = %esc(&s.task), node = %esc(&node), source = %s.source, "relay start");
    let start = record("relay_end", None);
    let gw2 = gw.clone();
    let active = gw.metrics.active_session();
    tokio::spawn(async move {
        let _active = active;
        let (user, agent) = tokio::join!(hyper::upgrade::on(&mut req), hyper::upgrade::on(answer));
        let (user, agent) = match (user, agent) {
            (Ok(u), Ok(a)) => (TokioIo::new(u), TokioIo::new(a)),
            (Err(e), _) | (_, Err(e)) => return tracing::debug!("relay upgrade failed: {e}"),
        };
        let (up, down) = splice(user, agent).await;
        let mut end = start;
        end.end = Some(dcos_exec_access::audit::now());
        end.bytes_in = Some(up);
        end.bytes_out = Some(down);
        tracing::info!(
            user = %esc(&end.user),
            task = %esc(&end.task),
            node = %esc(&end.node),
            bytes_in = up,
            bytes_out = down,
            "relay end"
        );
        gw2.audit.relay(&end);
        gw2.metrics.relayed(up, down);
    });
    back.body(Full::new(Bytes::new())).map_err(|e| fail(e.to_string()))
}

/// Copies bytes both ways until both directions end, or one fails (a peer vanished: the other side is then
/// closed, so a lost user ends the agent's session and a lost agent ends the user's); returns the bytes copied
/// each way. An end of stream is passed on as a half-close.
async fn splice<U, A>(user: U, agent: A) -> (u64, u64)
where
    U: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    A: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let (mut ur, mut uw) = tokio::io::split(user);
    let (mut ar, mut aw) = tokio::io::split(agent);
    let (mut up, mut down) = (0u64, 0u64);
    {
        let up_pump = pump(&mut ur, &mut aw, &mut up);
        let down_pump = pump(&mut ar, &mut uw, &mut down);
        tokio::pin!(up_pump, down_pump);
        let (mut up_done, mut down_done) = (false, false);
        while !(up_done && down_done) {
            tokio::select! {
                r = &mut up_pump, if !up_done => {
                    up_done = true;
                    if r.is_err() { break }
                }
                r = &mut down_pump, if !down_done => {
                    down_done = true;
                    if r.is_err() { break }
                }
            }
        }
    }
    (up, down)
}

/// Copies `from` into `to`, counting into `n`; shuts `to` down at the end of `from`.
async fn pump<R, W>(from: &mut R, to: &mut W, n: &mut u64) -> std::io::Result<()>
where
    R: tokio::io::AsyncRead + Unpin,
    W: tokio::io::AsyncWrite + Unpin,
{
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut buf = vec![0u8; 64 << 10];
    loop {
        let k = from.read(&mut buf).await?;
        if k == 0 {
            return to.shutdown().await;
        }
        to.write_all(&buf[..k]).await?;
        *n += k as u64;
    }
}

fn pass(from: &HeaderMap, to: &mut HeaderMap, names: &[&str]) {
    for name in names {
        for v in from.get_all(*name) {
            if let Ok(n) = header::HeaderName::from_bytes(name.as_bytes()) {
                to.append(n, v.clone());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn splice_copies_both_ways_passes_half_closes_and_counts() {
        let (user_side, mut user) = tokio::io::duplex(16);
        let (agent_side, mut agent) = tokio::io::duplex(16);
        let relay = tokio::spawn(splice(user_side, agent_side));
        // More than the pipes hold: back-pressure, not buffering, carries it through.
        let big = vec![7u8; 100_000];
        let send = big.clone();
        let writer = tokio::spawn(async move {
            user.write_all(&send).await.unwrap();
            user.shutdown().await.unwrap();
            user
        });
        let mut got = Vec::new();
        agent.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, big, "the user's bytes and then their end of stream");
        let mut user = writer.await.unwrap();
        agent.write_all(b"status").await.unwrap();
        agent.shutdown().await.unwrap();
        let mut back = Vec::new();
        user.read_to_end(&mut back).await.unwrap();
        assert_eq!(back, b"status");
        assert_eq!(relay.await.unwrap(), (100_000, 6));
    }

    #[tokio::test]
    async fn a_vanished_side_ends_the_relay() {
        let (user_side, user) = tokio::io::duplex(16);
        let (agent_side, mut agent) = tokio::io::duplex(16);
        let relay = tokio::spawn(splice(user_side, agent_side));
        drop(user);
        // The agent sees the end of the user's stream and the relay ends once the agent's side closes too.
        let mut rest = Vec::new();
        agent.read_to_end(&mut rest).await.unwrap();
        drop(agent);
        assert_eq!(tokio::time::timeout(Duration::from_secs(5), relay).await.unwrap().unwrap(), (0, 0));
    }
}
