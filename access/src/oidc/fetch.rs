//! HTTPS GET of an issuer's discovery document and JWKS: hyper over rustls (ring), the same stack as the
//! agent's own TLS. Bounded in time and size: an issuer is outside our control.

use http_body_util::{BodyExt, Empty, Limited};
use hyper::body::Bytes;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

/// A discovery document or JWKS is small; anything larger is refused.
const MAX_BODY: usize = 1 << 20;
const TIMEOUT: Duration = Duration::from_secs(10);

/// The TLS client configuration for one issuer: its CA file, else the system's roots.
pub fn tls_config(ca_file: Option<&Path>) -> Result<rustls::ClientConfig, String> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::CertificateDer;
    let mut roots = rustls::RootCertStore::empty();
    match ca_file {
        Some(p) => {
            let certs: Vec<CertificateDer> = CertificateDer::pem_file_iter(p)
                .and_then(|it| it.collect::<Result<_, _>>())
                .map_err(|e| format!("cannot read CA file {}: {e}", p.display()))?;
            if certs.is_empty() {
                return Err(format!("CA file {} holds no certificate", p.display()));
            }
            roots.add_parsable_certificates(certs);
        }
        None => {
            roots.add_parsable_certificates(rustls_native_certs::load_native_certs().certs);
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

/// GETs `url` (https only) and returns the body of a 200 answer.
pub async fn get(tls: &Arc<rustls::ClientConfig>, url: &str) -> Result<Vec<u8>, String> {
    tokio::time::timeout(TIMEOUT, get_inner(tls, url)).await.map_err(|_| format!("{url}: timed out"))?
}

async fn get_inner(tls: &Arc<rustls::ClientConfig>, url: &str) -> Result<Vec<u8>, String> {
    let uri: http::Uri = url.parse().map_err(|_| format!("{url:?} is not a URL"))?;
    if uri.scheme_str() != Some("https") {
        return Err(format!("{url}: only https is accepted"));
    }
    let host = uri.host().ok_or_else(|| format!("{url}: no host"))?.trim_matches(['[', ']']).to_string();
    let port = uri.port_u16().unwrap_or(443);
    let name = rustls_pki_types::ServerName::try_from(host.clone()).map_err(|_| format!("{url}: bad host name"))?;
    let tcp = tokio::net::TcpStream::connect((host.as_str(), port)).await.map_err(|e| format!("{url}: {e}"))?;
    let stream = tokio_rustls::TlsConnector::from(tls.clone())
        .connect(name, tcp)
        .await
        .map_err(|e| format!("{url}: TLS: {e}"))?;
    let (mut send, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
        .await
        .map_err(|e| format!("{url}: {e}"))?;
    tokio::spawn(conn);
    let path = uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
    let authority = uri.authority().map(|a| a.as_str()).unwrap_or(&host);
    let req = http::Request::get(path)
        .header(http::header::HOST, authority)
        .header(http::header::ACCEPT, "application/json")
        .body(Empty::<Bytes>::new())
        .map_err(|e| format!("{url}: {e}"))?;
    let resp = send.send_request(req).await.map_err(|e| format!("{url}: {e}"))?;
    let status = resp.status();
    let body = Limited::new(resp.into_body(), MAX_BODY)
        .collect()
        .await
        .map_err(|e| format!("{url}: reading the answer: {e}"))?
        .to_bytes();
    if status != http::StatusCode::OK {
        return Err(format!("{url}: HTTP {}", status.as_u16()));
    }
    Ok(body.to_vec())
}
