//! The client against hostile or frozen agents: in-process TLS servers that accept the connection and then
//! stream an endless body, never answer, or go silent in the middle of a session. Each must end in a bounded
//! time and memory with the error the CLI maps to its exit code.

use dcos_exec::{Client, Error, TlsOptions};
use futures_util::{SinkExt, StreamExt};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

const TOKEN: &str = "secret-token-of-the-organisation";

fn acceptor() -> TlsAcceptor {
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
    let key = rustls_pki_types::PrivateKeyDer::Pkcs8(cert.signing_key.serialize_der().into());
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![cert.cert.der().clone()], key)
        .unwrap();
    TlsAcceptor::from(Arc::new(cfg))
}

/// A TLS server on a free port that runs `serve` on each connection; the client aimed at it.
async fn hostile<F, Fut>(serve: F) -> Client
where
    F: Fn(tokio_rustls::server::TlsStream<tokio::net::TcpStream>) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let tls = acceptor();
    let serve = Arc::new(serve);
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else { return };
            let (tls, serve) = (tls.clone(), serve.clone());
            tokio::spawn(async move {
                if let Ok(s) = tls.accept(tcp).await {
                    serve(s).await;
                }
            });
        }
    });
    Client::new(&format!("https://localhost:{port}"), Some(TOKEN.into()), TlsOptions::insecure()).unwrap()
}

/// Reads the request head (up to the blank line).
async fn read_head<S: tokio::io::AsyncRead + Unpin>(s: &mut S) {
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") && s.read(&mut b).await.unwrap_or(0) == 1 {
        head.push(b[0]);
    }
}

/// Answers with `status` and a chunked body that never ends.
async fn endless(mut s: tokio_rustls::server::TlsStream<tokio::net::TcpStream>, status: &str) {
    read_head(&mut s).await;
    let head = format!("HTTP/1.1 {status}\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n");
    if s.write_all(head.as_bytes()).await.is_err() {
        return;
    }
    let chunk = format!("{:x}\r\n{}\r\n", 1 << 16, "[".repeat(1 << 16));
    while s.write_all(chunk.as_bytes()).await.is_ok() {}
}

/// Peak resident memory of this process, in MiB.
fn peak_rss_mib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let kb: u64 =
        status.lines().find_map(|l| l.strip_prefix("VmHWM:")).unwrap().trim().trim_end_matches(" kB").parse().unwrap();
    kb / 1024
}

#[tokio::test]
async fn an_endless_refusal_body_is_cut_at_64_kib() {
    let c = hostile(|s| endless(s, "500 Internal Server Error")).await;
    let e =
        tokio::time::timeout(Duration::from_secs(20), c.tasks()).await.expect("the client must give up").unwrap_err();
    assert!(matches!(e, Error::Protocol(_)), "{e:?}");
    assert!(e.to_string().contains("larger than 64 KiB"), "{e}");
    assert_eq!(e.exit_code(), 125);
}

#[tokio::test]
async fn an_endless_task_list_is_cut_at_256_mib() {
    let c = hostile(|s| endless(s, "200 OK")).await;
    let e =
        tokio::time::timeout(Duration::from_secs(120), c.tasks()).await.expect("the client must give up").unwrap_err();
    assert!(matches!(e, Error::Protocol(_)), "{e:?}");
    assert!(e.to_string().contains("larger than 256 MiB") && e.to_string().contains("/v1/tasks"), "{e}");
    assert_eq!(e.to_string().lines().count(), 1);
    // The limit, not the stream, bounds memory: well under twice the limit.
    assert!(peak_rss_mib() < 600, "peak RSS {} MiB", peak_rss_mib());
}

/// Answers 403 with a body sent one byte every 200 ms, never ending: no pause is long, the whole is endless.
async fn dribble(mut s: tokio_rustls::server::TlsStream<tokio::net::TcpStream>) {
    read_head(&mut s).await;
    let head = "HTTP/1.1 403 Forbidden\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n";
    if s.write_all(head.as_bytes()).await.is_err() {
        return;
    }
    while s.write_all(b"1\r\n \r\n").await.is_ok() && s.flush().await.is_ok() {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn a_refusal_dribbled_a_byte_at_a_time_must_end_within_the_request_timeout() {
    let c = hostile(dribble).await.request_timeout(Duration::from_secs(2));
    let t0 = Instant::now();
    let e =
        tokio::time::timeout(Duration::from_secs(30), c.tasks()).await.expect("the client must give up").unwrap_err();
    assert!(matches!(e, Error::Unreachable { .. }), "{e:?}");
    assert!(e.to_string().contains("did not end within 2s"), "{e}");
    assert!(t0.elapsed() < Duration::from_secs(10), "{:?}", t0.elapsed());
}

/// Answers 200 with a list of one million and one minimal tasks (about 70 MB): under the byte limit, but as
/// parsed entries several times that.
async fn many(mut s: tokio_rustls::server::TlsStream<tokio::net::TcpStream>) {
    read_head(&mut s).await;
    let task = br#"{"id":"","container":"","runtime":"","state":"","pid":0,"age_secs":0},"#;
    let n = 1_000_001;
    let len = 1 + task.len() * n - 1 + 1;
    let head = format!("HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {len}\r\n\r\n[");
    if s.write_all(head.as_bytes()).await.is_err() {
        return;
    }
    let block: Vec<u8> = task.repeat(1000);
    for _ in 0..(n / 1000) {
        if s.write_all(&block).await.is_err() {
            return;
        }
    }
    let last = &task[..task.len() - 1];
    let _ = s.write_all(last).await;
    let _ = s.write_all(b"]").await;
    let _ = s.flush().await;
}

#[tokio::test]
async fn a_list_of_more_than_a_million_entries_is_refused() {
    let c = hostile(many).await;
    let e =
        tokio::time::timeout(Duration::from_secs(120), c.tasks()).await.expect("the client must give up").unwrap_err();
    assert!(matches!(e, Error::Protocol(_)), "{e:?}");
    assert!(e.to_string().contains("more than 1000000 entries"), "{e}");
}

/// Accepts TLS, reads what comes, never answers.
async fn silent(mut s: tokio_rustls::server::TlsStream<tokio::net::TcpStream>) {
    let mut buf = [0u8; 4096];
    while s.read(&mut buf).await.unwrap_or(0) > 0 {}
}

#[tokio::test]
async fn an_agent_that_never_answers_is_unreachable_after_the_request_timeout() {
    let c = hostile(silent).await.request_timeout(Duration::from_secs(1));
    let t0 = Instant::now();
    let e = tokio::time::timeout(Duration::from_secs(20), c.tasks()).await.expect("the list must give up").unwrap_err();
    assert!(matches!(e, Error::Unreachable { .. }), "{e:?}");
    assert_eq!(e.exit_code(), 115);
    let m = e.to_string();
    assert!(m.contains(c.url()) && m.contains("no answer") && !m.contains(TOKEN), "{m}");
    let e = tokio::time::timeout(Duration::from_secs(20), c.exec("web-1", ["true"]))
        .await
        .expect("the exec handshake must give up")
        .unwrap_err();
    assert!(matches!(e, Error::Unreachable { .. }), "{e:?}");
    assert!(!e.to_string().contains(TOKEN), "{e}");
    assert!(t0.elapsed() < Duration::from_secs(10), "{:?}", t0.elapsed());
}

/// Completes the WebSocket upgrade, then pings every `ping` (or never) and sends nothing else; after `exit`
/// (if any) sends an exit status.
async fn upgraded_then(
    s: tokio_rustls::server::TlsStream<tokio::net::TcpStream>,
    ping: Option<Duration>,
    exit: Option<Duration>,
) {
    use tokio_tungstenite::tungstenite::handshake::server::{Request, Response};
    use tokio_tungstenite::tungstenite::Message;
    // The callback's type is tungstenite's, error response and all.
    #[allow(clippy::result_large_err)]
    let pick = |_: &Request, mut r: Response| {
        r.headers_mut().insert("sec-websocket-protocol", dcos_exec_proto::SUBPROTOCOL.parse().unwrap());
        Ok(r)
    };
    let Ok(ws) = tokio_tungstenite::accept_hdr_async(s, pick).await else { return };
    let (mut sink, mut stream) = ws.split();
    // Read (and so answer pings) in the background, like a live agent.
    tokio::spawn(async move { while stream.next().await.is_some() {} });
    let start = tokio::time::Instant::now();
    let mut tick = tokio::time::interval(ping.unwrap_or(Duration::from_secs(3600)));
    loop {
        tick.tick().await;
        if exit.is_some_and(|e| start.elapsed() >= e) {
            let status = dcos_exec_proto::frame(dcos_exec_proto::channel::STATUS, br#"{"status":"exited","code":7}"#);
            let _ = sink.send(Message::Binary(status.into())).await;
            std::future::pending::<()>().await;
        }
        if ping.is_some() && sink.send(Message::Ping(Vec::new().into())).await.is_err() {
            return;
        }
    }
}

#[tokio::test]
async fn a_session_that_hears_nothing_for_the_liveness_timeout_is_lost() {
    let c = hostile(|s| upgraded_then(s, None, None)).await.liveness_timeout(Duration::from_secs(2));
    let t0 = Instant::now();
    let e = tokio::time::timeout(Duration::from_secs(30), c.exec("web-1", ["sleep", "100"]))
        .await
        .expect("the session must end")
        .unwrap_err();
    assert!(matches!(e, Error::SessionLost(_)), "{e:?}");
    assert_eq!(e.exit_code(), 121);
    assert!(e.to_string().contains("no ping"), "{e}");
    assert!(t0.elapsed() >= Duration::from_secs(2), "{:?}", t0.elapsed());
}

#[tokio::test]
async fn pings_keep_a_quiet_session_alive() {
    let c = hostile(|s| upgraded_then(s, Some(Duration::from_millis(300)), Some(Duration::from_secs(4)))).await;
    let c = c.liveness_timeout(Duration::from_secs(2));
    let out = tokio::time::timeout(Duration::from_secs(30), c.exec("web-1", ["sleep", "4"]))
        .await
        .expect("the session must end")
        .unwrap();
    assert_eq!(out.status.code(), Some(7));
}
