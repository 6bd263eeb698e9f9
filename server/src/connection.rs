//! One accepted connection: the TLS handshake (bounded in time), then HTTP/1.1 with upgrades, its requests
//! answered by a service made once the handshake says who the peer is.

use hyper::body::Incoming;
use hyper::service::Service;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::net::TcpStream;
use tokio_rustls::TlsAcceptor;

/// How long a TLS handshake and a request's headers may take: a client that stalls there is cut off.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Serves the requests of one connection until it closes. `make_service` sees the TLS session (for a client
/// certificate, say) before the first request.
pub async fn serve_tls<S, B>(
    acceptor: TlsAcceptor,
    tcp: TcpStream,
    peer: SocketAddr,
    make_service: impl FnOnce(&rustls::ServerConnection) -> S,
) where
    S: Service<Request<Incoming>, Response = Response<B>> + Send,
    S::Future: Send + 'static,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    B: hyper::body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
        Ok(Ok(t)) => t,
        Ok(Err(e)) => return tracing::debug!("TLS handshake with {peer}: {e}"),
        Err(_) => return tracing::debug!("TLS handshake with {peer} timed out"),
    };
    let svc = make_service(tls.get_ref().1);
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(HANDSHAKE_TIMEOUT)
        .serve_connection(TokioIo::new(tls), svc)
        .with_upgrades();
    if let Err(e) = conn.await {
        tracing::debug!("connection from {peer}: {e}");
    }
}
