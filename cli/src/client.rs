//! Talking to an agent: TLS (rustls) connections, `GET /v1/tasks`, and the exec WebSocket upgrade.

use crate::config::{Settings, SslVerify};
use dcos_exec_proto::{exit, ErrorBody, ExecRequest, NodeInfo, TaskInfo, EXEC_REQUEST_HEADER, SUBPROTOCOL};
use http::Uri;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

/// A failure with the exit code the CLI should use.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct Failure {
    pub exit: i32,
    pub message: String,
}

impl Failure {
    pub fn new(exit: i32, message: impl Into<String>) -> Failure {
        Failure { exit, message: message.into() }
    }
}

/// An agent endpoint with its TLS settings.
pub struct Agent {
    host: String,
    port: u16,
    url: String,
    token: Option<String>,
    connector: tokio_rustls::TlsConnector,
    server_name: rustls_pki_types::ServerName<'static>,
}

pub type Ws = tokio_tungstenite::WebSocketStream<TlsStream<TcpStream>>;

#[derive(Debug)]
struct NoVerify(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for NoVerify {
    fn verify_server_cert(
        &self,
        _: &rustls_pki_types::CertificateDer<'_>,
        _: &[rustls_pki_types::CertificateDer<'_>],
        _: &rustls_pki_types::ServerName<'_>,
        _: &[u8],
        _: rustls_pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        m: &[u8],
        c: &rustls_pki_types::CertificateDer<'_>,
        d: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(m, c, d, &self.0.signature_verification_algorithms)
    }
    fn verify_tls13_signature(
        &self,
        m: &[u8],
        c: &rustls_pki_types::CertificateDer<'_>,
        d: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(m, c, d, &self.0.signature_verification_algorithms)
    }
    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

fn tls_config(verify: &SslVerify) -> Result<rustls::ClientConfig, Failure> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::CertificateDer;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| Failure::new(exit::TLS, e.to_string()))?;
    let mut roots = rustls::RootCertStore::empty();
    let cfg = match verify {
        SslVerify::Off => {
            eprintln!("dcos: warning: TLS verification is off (DCOS_SSL_VERIFY=false)");
            builder.dangerous().with_custom_certificate_verifier(Arc::new(NoVerify(provider))).with_no_client_auth()
        }
        SslVerify::CaFile(p) => {
            let certs: Vec<CertificateDer> = CertificateDer::pem_file_iter(p)
                .and_then(|it| it.collect::<Result<_, _>>())
                .map_err(|e| Failure::new(exit::TLS, format!("cannot read CA bundle {}: {e}", p.display())))?;
            if certs.is_empty() {
                return Err(Failure::new(exit::TLS, format!("CA bundle {} holds no certificate", p.display())));
            }
            roots.add_parsable_certificates(certs);
            builder.with_root_certificates(roots).with_no_client_auth()
        }
        SslVerify::System => {
            roots.add_parsable_certificates(rustls_native_certs::load_native_certs().certs);
            builder.with_root_certificates(roots).with_no_client_auth()
        }
    };
    Ok(cfg)
}

/// Every byte outside RFC 3986's unreserved set is escaped.
const SEGMENT: &percent_encoding::AsciiSet =
    &percent_encoding::NON_ALPHANUMERIC.remove(b'-').remove(b'.').remove(b'_').remove(b'~');

/// Percent-encodes a path segment (task ids are usually plain, but never let one escape its segment).
fn encode_segment(s: &str) -> String {
    percent_encoding::utf8_percent_encode(s, SEGMENT).to_string()
}

fn refusal(status: u16, body: &[u8]) -> Failure {
    match serde_json::from_slice::<ErrorBody>(body) {
        Ok(b) => Failure::new(b.code.exit_code(), b.message),
        Err(_) => Failure::new(exit::FAILED, format!("agent answered HTTP {status}")),
    }
}

/// A gateway that answers from a stale directory snapshot (etcd unreachable) says so in a header: one line
/// on stderr, since the answer may be out of date.
fn warn_if_stale(h: &http::HeaderMap) {
    if let Some(secs) = h.get(dcos_exec_proto::forward::STALE).and_then(|v| v.to_str().ok()) {
        eprintln!("dcos: warning: the cluster directory is stale ({secs}s since etcd last answered the gateway)");
    }
}

impl Agent {
    pub fn new(s: &Settings) -> Result<Agent, Failure> {
        let uri: Uri =
            s.url.parse().map_err(|_| Failure::new(exit::FAILED, format!("DCOS_URL {:?} is not a URL", s.url)))?;
        if uri.scheme_str() != Some("https") {
            return Err(Failure::new(exit::FAILED, format!("DCOS_URL {:?} must start with https://", s.url)));
        }
        let host = uri
            .host()
            .ok_or_else(|| Failure::new(exit::FAILED, format!("DCOS_URL {:?} has no host", s.url)))?
            .trim_matches(['[', ']'])
            .to_string();
        let port = uri.port_u16().unwrap_or(443);
        let server_name = rustls_pki_types::ServerName::try_from(host.clone())
            .map_err(|_| Failure::new(exit::FAILED, format!("bad host name {host:?}")))?;
        let cfg = tls_config(&s.ssl_verify)?;
        Ok(Agent {
            url: format!("https://{}:{port}", if host.contains(':') { format!("[{host}]") } else { host.clone() }),
            host,
            port,
            token: s.token.clone(),
            connector: tokio_rustls::TlsConnector::from(Arc::new(cfg)),
            server_name,
        })
    }

    async fn connect(&self) -> Result<TlsStream<TcpStream>, Failure> {
        let tcp = tokio::time::timeout(Duration::from_secs(10), TcpStream::connect((self.host.as_str(), self.port)))
            .await
            .map_err(|_| Failure::new(exit::UNREACHABLE, format!("cannot reach the agent at {}: timed out", self.url)))?
            .map_err(|e| Failure::new(exit::UNREACHABLE, format!("cannot reach the agent at {}: {e}", self.url)))?;
        let _ = tcp.set_nodelay(true);
        tokio::time::timeout(Duration::from_secs(10), self.connector.connect(self.server_name.clone(), tcp))
            .await
            .map_err(|_| Failure::new(exit::TLS, format!("TLS handshake with {} timed out", self.url)))?
            .map_err(|e| Failure::new(exit::TLS, format!("TLS handshake with {} failed: {e}", self.url)))
    }

    fn auth_header(&self) -> Option<String> {
        self.token.as_ref().map(|t| format!("Bearer {t}"))
    }

    /// `GET /v1/tasks`.
    pub async fn list(&self) -> Result<Vec<TaskInfo>, Failure> {
        self.get("/v1/tasks", "task list").await
    }

    /// `GET /v1/nodes` (served by gateways).
    pub async fn nodes(&self) -> Result<Vec<NodeInfo>, Failure> {
        self.get("/v1/nodes", "node list").await
    }

    /// A JSON `GET` of the API.
    async fn get<T: serde::de::DeserializeOwned>(&self, path: &str, what: &str) -> Result<T, Failure> {
        use http_body_util::{BodyExt, Empty};
        let tls = self.connect().await?;
        let (mut send, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tls))
            .await
            .map_err(|e| Failure::new(exit::SESSION_LOST, format!("HTTP to {}: {e}", self.url)))?;
        tokio::spawn(conn);
        let mut req = http::Request::get(path).header(http::header::HOST, &self.host);
        if let Some(a) = self.auth_header() {
            req = req.header(http::header::AUTHORIZATION, a);
        }
        let req =
            req.body(Empty::<hyper::body::Bytes>::new()).map_err(|e| Failure::new(exit::FAILED, e.to_string()))?;
        let resp = send.send_request(req).await.map_err(|e| Failure::new(exit::SESSION_LOST, e.to_string()))?;
        let status = resp.status().as_u16();
        warn_if_stale(resp.headers());
        let body =
            resp.into_body().collect().await.map_err(|e| Failure::new(exit::SESSION_LOST, e.to_string()))?.to_bytes();
        if status != 200 {
            return Err(refusal(status, &body));
        }
        serde_json::from_slice(&body).map_err(|e| Failure::new(exit::FAILED, format!("bad {what} from agent: {e}")))
    }

    /// Opens the exec WebSocket for `task`.
    pub async fn exec(&self, task: &str, req: &ExecRequest) -> Result<Ws, Failure> {
        use tokio_tungstenite::tungstenite::client::IntoClientRequest;
        use tokio_tungstenite::tungstenite::Error as WsError;
        let url = format!("wss://{}:{}/v1/tasks/{}/exec", self.host_for_url(), self.port, encode_segment(task));
        let mut r = url.into_client_request().map_err(|e| Failure::new(exit::FAILED, e.to_string()))?;
        let h = r.headers_mut();
        let hv =
            |s: String| http::HeaderValue::from_str(&s).map_err(|_| Failure::new(exit::FAILED, "bad header value"));
        if let Some(a) = self.auth_header() {
            h.insert(http::header::AUTHORIZATION, hv(a)?);
        }
        h.insert(EXEC_REQUEST_HEADER, hv(req.to_header())?);
        h.insert(http::header::SEC_WEBSOCKET_PROTOCOL, hv(SUBPROTOCOL.to_string())?);
        let tls = self.connect().await?;
        let cfg = tokio_tungstenite::tungstenite::protocol::WebSocketConfig::default()
            .max_message_size(Some(4 << 20))
            .max_frame_size(Some(1 << 20));
        match tokio_tungstenite::client_async_with_config(r, tls, Some(cfg)).await {
            Ok((ws, resp)) => {
                warn_if_stale(resp.headers());
                Ok(ws)
            }
            Err(WsError::Http(resp)) => {
                warn_if_stale(resp.headers());
                Err(refusal(resp.status().as_u16(), resp.body().as_deref().unwrap_or_default()))
            }
            Err(e) => Err(Failure::new(exit::SESSION_LOST, format!("opening the session on {}: {e}", self.url))),
        }
    }

    fn host_for_url(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        }
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
}
