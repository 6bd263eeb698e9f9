//! [`Client`]: one agent (its URL, token and TLS trust), its task list, and the exec upgrade.

use crate::config::{self, Origin, Overrides, Settings, SslVerify, Timeouts, TlsOptions};
use crate::exec::Command;
use crate::{tls, Error, Output};
use dcos_exec_proto::{ErrorBody, ExecRequest, NodeInfo, TaskInfo, EXEC_REQUEST_HEADER, SUBPROTOCOL};
use http::Uri;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

/// The largest task or node list accepted: 100 000 tasks are about 20 MB of JSON, so this is generous, and
/// it bounds what a hostile agent or gateway can make the CLI hold in memory.
pub const MAX_LISTING: usize = 256 << 20;
/// The largest refusal body accepted: a refusal is one JSON line with a message.
pub const MAX_REFUSAL: usize = 64 << 10;
/// The most entries a list may hold: ten times the largest clusters' 100 000 tasks. Parsed entries take
/// several times the bytes of their smallest JSON, so the byte limit alone would still let a hostile list of
/// minimal entries take gigabytes.
pub const MAX_ENTRIES: usize = 1_000_000;

/// A JSON list of at most [`MAX_ENTRIES`] entries; parsing stops at the first one beyond.
struct Capped<T>(Vec<T>);

impl<'de, T: serde::Deserialize<'de>> serde::Deserialize<'de> for Capped<T> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Entries<T>(std::marker::PhantomData<T>);
        impl<'de, T: serde::Deserialize<'de>> serde::de::Visitor<'de> for Entries<T> {
            type Value = Vec<T>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                write!(f, "a list of at most {MAX_ENTRIES} entries")
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<T>, A::Error> {
                let mut out = Vec::new();
                while let Some(x) = seq.next_element()? {
                    if out.len() == MAX_ENTRIES {
                        return Err(serde::de::Error::custom(format!("more than {MAX_ENTRIES} entries")));
                    }
                    out.push(x);
                }
                Ok(out)
            }
        }
        d.deserialize_seq(Entries(std::marker::PhantomData)).map(Capped)
    }
}

/// The WebSocket of a session.
pub(crate) type Ws = tokio_tungstenite::WebSocketStream<TlsStream<TcpStream>>;

/// A connection recipe for one agent: cheap to clone, each call opens its own connection.
#[derive(Clone)]
pub struct Client {
    host: String,
    port: u16,
    url: String,
    url_origin: Origin,
    token: Option<String>,
    token_origin: Origin,
    tls: TlsOptions,
    config_file: Option<PathBuf>,
    connector: tokio_rustls::TlsConnector,
    server_name: rustls_pki_types::ServerName<'static>,
    connect_timeout: Duration,
    timeouts: Timeouts,
    /// Seconds a gateway said its directory was stale at its last answer (`x-dcos-exec-stale`), or -1.
    stale: Arc<std::sync::atomic::AtomicI64>,
    /// The last answer came from a gateway (`x-dcos-exec-gateway`).
    gateway: Arc<std::sync::atomic::AtomicBool>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the token.
        f.debug_struct("Client").field("url", &self.url).field("tls", &self.tls).finish_non_exhaustive()
    }
}

/// Every byte outside RFC 3986's unreserved set is escaped.
const SEGMENT: &percent_encoding::AsciiSet =
    &percent_encoding::NON_ALPHANUMERIC.remove(b'-').remove(b'.').remove(b'_').remove(b'~');

/// Percent-encodes a path segment (task ids are usually plain, but never let one escape its segment).
fn encode_segment(s: &str) -> String {
    percent_encoding::utf8_percent_encode(s, SEGMENT).to_string()
}

fn refusal(status: u16, body: &[u8]) -> Error {
    match serde_json::from_slice::<ErrorBody>(body) {
        Ok(b) => Error::from_wire(b.code, b.message),
        Err(_) => Error::Protocol(format!("agent answered HTTP {status}")),
    }
}

impl Client {
    /// A client configured the way the `dcos` CLI is without flags: the `DCOS_PROFILE`, `DCOS_URL`,
    /// `DCOS_ACS_TOKEN` and `DCOS_SSL_VERIFY` variables and `dcos.toml` (see [`crate::config`]).
    pub fn from_env() -> Result<Client, Error> {
        Client::from_settings(&config::resolve(Overrides::default())?)
    }

    /// A client for resolved settings (what the CLI builds from its flags with [`config::resolve`]).
    pub fn from_settings(s: &Settings) -> Result<Client, Error> {
        let mut c = Client::new(&s.url, s.token.clone(), s.tls.clone()).map_err(|e| match e {
            Error::InvalidUrl(m) => Error::InvalidUrl(format!("{m} (from the {})", s.url_origin)),
            e => e,
        })?;
        c.config_file.clone_from(&s.config_file);
        c.url_origin = s.url_origin.clone();
        c.token_origin = s.token_origin.clone();
        c.timeouts = s.timeouts;
        Ok(c)
    }

    /// A client for the agent at `url` (`https://HOST[:PORT]`), with a bearer token and a TLS trust.
    pub fn new(url: &str, token: Option<String>, tls: TlsOptions) -> Result<Client, Error> {
        let bad = |why: &str| Error::InvalidUrl(format!("agent URL {url:?} {why}"));
        let uri: Uri = url.parse().map_err(|_| bad("is not a URL"))?;
        if uri.scheme_str() != Some("https") {
            return Err(bad("must start with https://"));
        }
        let host = uri.host().ok_or_else(|| bad("has no host"))?.trim_matches(['[', ']']).to_string();
        let port = uri.port_u16().unwrap_or(443);
        let server_name = rustls_pki_types::ServerName::try_from(host.clone()).map_err(|_| bad("has a bad host"))?;
        let cfg = tls::client_config(&tls)?;
        Ok(Client {
            url: format!("https://{}:{port}", bracket(&host)),
            url_origin: Origin::Api,
            host,
            port,
            token: token.map(|t| t.trim().to_string()).filter(|t| !t.is_empty()),
            token_origin: Origin::Api,
            tls,
            config_file: config::config_path(),
            connector: tokio_rustls::TlsConnector::from(Arc::new(cfg)),
            server_name,
            connect_timeout: Duration::from_secs(10),
            timeouts: Timeouts::default(),
            stale: Arc::new(std::sync::atomic::AtomicI64::new(-1)),
            gateway: Arc::new(std::sync::atomic::AtomicBool::new(false)),
        })
    }

    /// How long the TCP connect and the TLS handshake may each take (default 10 s).
    pub fn connect_timeout(mut self, t: Duration) -> Client {
        self.connect_timeout = t;
        self
    }

    /// How long an agent may take, once TLS is up, to send the headers of its answer to a request (the task
    /// list, the exec upgrade), and to pause while it sends a body (default 45 s); a refusal's body must end
    /// within it, a listing's within ten times it. A silent or dribbling agent then gives [`Error::Unreachable`].
    pub fn request_timeout(mut self, t: Duration) -> Client {
        self.timeouts.request = t;
        self
    }

    /// How long a session may hear nothing from the agent, not even one of its pings (sent every 20 s), before
    /// it ends with [`Error::SessionLost`] (default 60 s).
    pub fn liveness_timeout(mut self, t: Duration) -> Client {
        self.timeouts.liveness = t;
        self
    }

    pub(crate) fn timeouts(&self) -> Timeouts {
        self.timeouts
    }

    /// The agent's URL, normalised (`https://host:port`).
    pub fn url(&self) -> &str {
        &self.url
    }

    /// True when the agent's certificate is not verified (`DCOS_SSL_VERIFY=false`): callers should warn.
    pub fn verification_off(&self) -> bool {
        self.tls.verify == SslVerify::Off
    }

    /// The tasks the token may list (`GET /v1/tasks`), stopped ones included.
    pub async fn tasks(&self) -> Result<Vec<TaskInfo>, Error> {
        self.get_list("/v1/tasks").await
    }

    /// The tasks of one node (`GET /v1/tasks?node=NAME`): a gateway answers with that node's tasks only; an
    /// agent, or a gateway that predates the parameter, with all of them (callers filter again).
    pub async fn tasks_of(&self, node: &str) -> Result<Vec<TaskInfo>, Error> {
        self.get_list(&format!("/v1/tasks?node={}", encode_segment(node))).await
    }

    /// The nodes of a cluster (`GET /v1/nodes`, served by gateways).
    pub async fn nodes(&self) -> Result<Vec<NodeInfo>, Error> {
        self.get_list("/v1/nodes").await
    }

    /// How stale, in seconds, the cluster directory was that a gateway answered the last request from (etcd
    /// unreachable, the gateway serving its last snapshot); `None` when it was fresh or no gateway answered.
    /// Callers should warn: the answer may be out of date.
    pub fn stale_directory(&self) -> Option<u64> {
        u64::try_from(self.stale.load(std::sync::atomic::Ordering::Relaxed)).ok()
    }

    /// Whether the last answer came from a gateway (its task rows name their node, even when there are none).
    pub fn served_by_gateway(&self) -> bool {
        self.gateway.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Remembers what a gateway's answer says about its directory.
    fn note_stale(&self, h: &http::HeaderMap) {
        self.gateway.store(h.contains_key(dcos_exec_proto::forward::GATEWAY), std::sync::atomic::Ordering::Relaxed);
        let secs = h
            .get(dcos_exec_proto::forward::STALE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<i64>().ok())
            .filter(|s| *s >= 0)
            .unwrap_or(-1);
        self.stale.store(secs, std::sync::atomic::Ordering::Relaxed);
    }

    /// The error for an agent that accepted TLS and then said nothing for `timeouts.request`.
    fn silent(&self, what: &str) -> Error {
        Error::Unreachable {
            url: self.url.clone(),
            message: format!("{what} within {}s of the TLS handshake", self.timeouts.request.as_secs_f64()),
        }
    }

    /// `GET path` with the token; a 200 answer's JSON list (at most [`MAX_ENTRIES`] entries). The answer's headers must come within the request
    /// timeout, its body may pause no longer than that, and it may hold at most [`MAX_LISTING`] bytes
    /// ([`MAX_REFUSAL`] for a refusal).
    async fn get_list<T: serde::de::DeserializeOwned>(&self, path: &str) -> Result<Vec<T>, Error> {
        use http_body_util::{BodyExt, Empty};
        let auth = self.auth_header()?;
        let tls = self.connect().await?;
        let lost = |e: &dyn std::fmt::Display| Error::SessionLost(format!("HTTP to {}: {e}", self.url));
        let req = http::Request::get(path)
            .header(http::header::HOST, &self.host)
            .header(http::header::AUTHORIZATION, auth)
            .body(Empty::<hyper::body::Bytes>::new())
            .map_err(|e| Error::InvalidRequest(e.to_string()))?;
        let asked = async {
            let (mut send, conn) =
                hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tls)).await.map_err(|e| lost(&e))?;
            tokio::spawn(conn);
            send.send_request(req).await.map_err(|e| lost(&e))
        };
        let resp = tokio::time::timeout(self.timeouts.request, asked)
            .await
            .map_err(|_| self.silent(&format!("no answer to GET {path}")))??;
        let status = resp.status().as_u16();
        self.note_stale(resp.headers());
        let limit = if status == 200 { MAX_LISTING } else { MAX_REFUSAL };
        // A body sent a byte at a time never pauses for long: it must also end in time, a refusal within the
        // request timeout, a listing within ten (a 20 MB list on a slow link).
        let whole = self.timeouts.request.saturating_mul(if status == 200 { 10 } else { 1 });
        let started = tokio::time::Instant::now();
        let mut incoming = resp.into_body();
        let mut body = Vec::new();
        loop {
            let left = whole.saturating_sub(started.elapsed());
            let frame =
                tokio::time::timeout(self.timeouts.request.min(left), incoming.frame()).await.map_err(|_| {
                    if left <= self.timeouts.request {
                        Error::Unreachable {
                            url: self.url.clone(),
                            message: format!(
                                "the answer to GET {path} did not end within {}s (HTTP {status}, {} bytes so far)",
                                whole.as_secs_f64(),
                                body.len()
                            ),
                        }
                    } else {
                        self.silent(&format!("the answer to GET {path} stalled: no byte"))
                    }
                })?;
            let Some(frame) = frame else { break };
            if let Ok(data) = frame.map_err(|e| lost(&e))?.into_data() {
                if body.len() + data.len() > limit {
                    return Err(Error::Protocol(format!(
                        "the answer (HTTP {status}) to GET {path} from {} is larger than {}: refused",
                        self.url,
                        size(limit)
                    )));
                }
                body.extend_from_slice(&data);
            }
        }
        if status != 200 {
            return Err(refusal(status, &body));
        }
        serde_json::from_slice::<Capped<T>>(&body)
            .map(|c| c.0)
            .map_err(|e| Error::Protocol(format!("bad answer to {path} from {}: {e}", self.url)))
    }

    /// Runs `argv` in `task`'s container and collects its output, like [`std::process::Command::output`]:
    /// no stdin, no terminal, the container's user, environment and working directory.
    ///
    /// A command that ran gives `Ok` whatever its exit status; a command that could not run (unknown task,
    /// refused, not found in the container...) gives the matching [`Error`].
    pub async fn exec<I, S>(&self, task: &str, argv: I) -> Result<Output, Error>
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.command(task, argv).output().await
    }

    /// A [`Command`] to configure (stdin, environment, user, working directory, terminal, debug image) before
    /// running it with [`Command::output`] or [`Command::spawn`].
    pub fn command<I, S>(&self, task: &str, argv: I) -> Command<'_>
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        Command::new(self, task, argv.into_iter().map(Into::into).collect())
    }

    fn auth_header(&self) -> Result<http::HeaderValue, Error> {
        match &self.token {
            // A line break or a control character (a pasted file, a second line) cannot go in a header: say
            // which setting holds it rather than what the HTTP library thinks of the header.
            Some(t) if t.bytes().all(|b| b.is_ascii_graphic() || b == b' ') => {
                http::HeaderValue::from_str(&format!("Bearer {t}"))
                    .map_err(|_| Error::MalformedToken { origin: self.token_origin.to_string() })
            }
            Some(_) => Err(Error::MalformedToken { origin: self.token_origin.to_string() }),
            None => Err(Error::NoToken {
                config_file: self.config_file.as_ref().map_or_else(|| "dcos.toml".into(), |p| p.display().to_string()),
            }),
        }
    }

    async fn connect(&self) -> Result<TlsStream<TcpStream>, Error> {
        // Where the URL came from, when a setting chose it: a stale variable or profile is a common cause.
        let from = match &self.url_origin {
            Origin::Api | Origin::Default => String::new(),
            o => format!(" (the URL is from the {o})"),
        };
        let unreachable = |message: String| Error::Unreachable { url: self.url.clone(), message: message + &from };
        let tcp = tokio::time::timeout(self.connect_timeout, TcpStream::connect((self.host.as_str(), self.port)))
            .await
            .map_err(|_| unreachable("timed out".into()))?
            .map_err(|e| unreachable(e.to_string()))?;
        let _ = tcp.set_nodelay(true);
        tokio::time::timeout(self.connect_timeout, self.connector.connect(self.server_name.clone(), tcp))
            .await
            .map_err(|_| tls::error(&self.tls, format!("TLS handshake with {} timed out", self.url)))?
            .map_err(|e| tls::error(&self.tls, format!("TLS handshake with {} failed: {e}", self.url)))
    }

    /// Opens the exec WebSocket for `task`.
    pub(crate) async fn upgrade(&self, task: &str, req: &ExecRequest) -> Result<Ws, Error> {
        use tokio_tungstenite::tungstenite::client::IntoClientRequest;
        use tokio_tungstenite::tungstenite::Error as WsError;
        let auth = self.auth_header()?;
        let url = format!("wss://{}:{}/v1/tasks/{}/exec", bracket(&self.host), self.port, encode_segment(task));
        let mut r = url.into_client_request().map_err(|e| Error::InvalidRequest(e.to_string()))?;
        let h = r.headers_mut();
        let hv =
            |s: String| http::HeaderValue::from_str(&s).map_err(|_| Error::InvalidRequest("bad header value".into()));
        h.insert(http::header::AUTHORIZATION, auth);
        h.insert(EXEC_REQUEST_HEADER, hv(req.to_header())?);
        h.insert(http::header::SEC_WEBSOCKET_PROTOCOL, hv(SUBPROTOCOL.to_string())?);
        let tls = self.connect().await?;
        let cfg = tokio_tungstenite::tungstenite::protocol::WebSocketConfig::default()
            .max_message_size(Some(4 << 20))
            .max_frame_size(Some(1 << 20));
        let upgraded =
            tokio::time::timeout(self.timeouts.request, tokio_tungstenite::client_async_with_config(r, tls, Some(cfg)))
                .await
                .map_err(|_| self.silent("no answer to the exec request"))?;
        match upgraded {
            Ok((ws, resp)) => {
                self.note_stale(resp.headers());
                Ok(ws)
            }
            Err(WsError::Http(resp)) => {
                self.note_stale(resp.headers());
                Err(refusal(resp.status().as_u16(), resp.body().as_deref().unwrap_or_default()))
            }
            Err(e) => Err(Error::SessionLost(format!("opening the session on {}: {e}", self.url))),
        }
    }
}

/// A byte count as people read it: 64 KiB, 256 MiB.
fn size(n: usize) -> String {
    if n >= 1 << 20 {
        format!("{} MiB", n >> 20)
    } else {
        format!("{} KiB", n >> 10)
    }
}

fn bracket(host: &str) -> String {
    if host.contains(':') {
        format!("[{host}]")
    } else {
        host.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn task_ids_cannot_escape_their_path_segment() {
        assert_eq!(encode_segment("web.1_a-b"), "web.1_a-b");
        assert_eq!(encode_segment("../x?y"), "..%2Fx%3Fy");
    }

    #[test]
    fn debug_output_never_shows_the_token() {
        let c = Client::new("https://a:1", Some("secret-token".into()), TlsOptions::system()).unwrap();
        let d = format!("{c:?}");
        assert!(d.contains("https://a:1") && !d.contains("secret-token"), "{d}");
    }

    #[test]
    fn urls_must_be_https_with_a_host() {
        for bad in ["http://a:1", "not a url", "https://"] {
            let e = Client::new(bad, None, TlsOptions::system()).unwrap_err();
            assert!(matches!(e, Error::InvalidUrl(_)), "{bad}: {e}");
        }
        let c = Client::new("https://[::1]:7443", None, TlsOptions::system()).unwrap();
        assert_eq!(c.url(), "https://[::1]:7443");
    }
}
