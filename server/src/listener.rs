//! The accept loop of a server, and how its sockets are tuned.

use crate::gate::{ConnectionGate, Pending};
use std::net::SocketAddr;
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio::signal::unix::{signal, SignalKind};

/// Dead peers are noticed by the kernel: keep-alive probes when idle, and unacknowledged data for a minute
/// fails the connection, so that a session blocked on a vanished peer (or a partition on a relay's leg) ends
/// instead of hanging. Small writes go out at once: sessions are interactive.
pub fn tune_socket(tcp: &TcpStream) {
    use nix::sys::socket::{setsockopt, sockopt};
    let _ = tcp.set_nodelay(true);
    let _ = setsockopt(tcp, sockopt::KeepAlive, &true);
    let _ = setsockopt(tcp, sockopt::TcpKeepIdle, &30);
    let _ = setsockopt(tcp, sockopt::TcpKeepInterval, &10);
    let _ = setsockopt(tcp, sockopt::TcpKeepCount, &3);
    let _ = setsockopt(tcp, sockopt::TcpUserTimeout, &60_000);
}

/// Accepts connections until SIGTERM or SIGINT and hands each one, tuned and holding a slot of `gate`, to
/// `handle`. Over the gate's cap a connection is closed before its TLS handshake costs anything.
pub async fn accept_until_signal(
    listener: &TcpListener,
    gate: &ConnectionGate,
    mut handle: impl FnMut(TcpStream, SocketAddr, Pending),
) -> std::io::Result<()> {
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    loop {
        let (tcp, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!("accept: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = term.recv() => { tracing::info!("SIGTERM: shutting down"); return Ok(()) }
            _ = int.recv() => { tracing::info!("SIGINT: shutting down"); return Ok(()) }
        };
        let Some(slot) = gate.admit() else {
            drop(tcp);
            continue;
        };
        tune_socket(&tcp);
        handle(tcp, peer, Pending::new(slot));
    }
}
