//! The session's two directions on the WebSocket, and the flow control that bounds them.
//!
//! The rules, all enforced in this module:
//!
//! 1. **Output is never buffered without bound.** Each output stream is read in pieces of at most [`CHUNK`]
//!    bytes into a queue of [`QUEUE`] frames shared with the writer ([`pump_out`]). A client that reads slowly
//!    fills the queue, the pump stops reading, the pipe (or pty) fills, and the process blocks in `write(2)`.
//! 2. **Input is never buffered without bound.** A stdin frame is written to the process before the next frame
//!    is read from the client ([`pump_in`]): a process that stops reading stalls the client's TCP window.
//! 3. **A client that takes nothing is gone.** A batch of frames the client does not take within
//!    [`CLIENT_SILENCE`] ([`write_loop`]), or no message at all from it (not even a pong to the pings sent
//!    every [`PING_EVERY`]) for as long ([`pump_in`]), ends the session as if the client had left.
//! 4. **Output after exit is bounded in time.** Once the process exited, output still open (a background child
//!    holds it) is forwarded until it is quiet for `output_drain` ([`pump_out`]), and for `output_drain_max` at
//!    most, or until the agent shuts down (the session's `wire` step).
//! 5. **Leaving hangs up.** When the client is gone, [`pump_in`] returns and drops the session's signal sender,
//!    which the helper sees as a hang-up (SIGHUP, then SIGKILL after `grace_period`).

use dcos_exec_access::metrics::Counter;
use dcos_exec_proto::{channel, split_frame, SignalRequest, TermSize};
use futures_util::{SinkExt, StreamExt};
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::{mpsc, watch};
use tokio_tungstenite::tungstenite::Message;

pub const PING_EVERY: Duration = Duration::from_secs(20);
/// No message at all (not even a pong) for this long, or no frame taken for this long, means the client is gone.
pub const CLIENT_SILENCE: Duration = Duration::from_secs(65);
/// Output is read (and framed) in pieces up to this large: fewer frames per byte, at a per-session memory cost.
pub const CHUNK: usize = 64 * 1024;
/// Frames queued for the client at most (rule 1): with [`CHUNK`], about 1 MiB per session.
pub const QUEUE: usize = 16;

/// Bytes one direction of a session moved: the session's own count (for its end record) and the agent's total
/// (for `/metrics`), both added to as the bytes flow, so a long session shows in the total while it runs.
#[derive(Clone, Default)]
pub struct Tally {
    session: Arc<AtomicU64>,
    total: Counter,
}

impl Tally {
    pub fn new(total: Counter) -> Tally {
        Tally { session: Arc::default(), total }
    }

    fn add(&self, n: u64) {
        self.session.fetch_add(n, Ordering::Relaxed);
        self.total.inc_by(n);
    }

    /// The session's count.
    pub fn get(&self) -> u64 {
        self.session.load(Ordering::Relaxed)
    }
}

pub type Reader = Box<dyn AsyncRead + Unpin + Send>;
pub type Writer = Box<dyn AsyncWrite + Unpin + Send>;

/// Sends frames in order, batching what is queued into one flush; pings the client; closes at the end. Sets
/// `gone` when the client takes nothing for [`CLIENT_SILENCE`] (rule 3).
pub async fn write_loop<Si>(mut sink: Si, mut rx: mpsc::Receiver<Message>, gone: watch::Sender<bool>)
where
    Si: futures_util::Sink<Message> + Unpin,
{
    use tokio::time::timeout;
    let mut ping = tokio::time::interval(PING_EVERY);
    ping.tick().await;
    let stall = CLIENT_SILENCE;
    loop {
        let ok = tokio::select! {
            m = rx.recv() => match m {
                Some(m) => {
                    let batch = async {
                        sink.feed(m).await?;
                        while let Ok(m) = rx.try_recv() {
                            sink.feed(m).await?;
                        }
                        sink.flush().await
                    };
                    matches!(timeout(stall, batch).await, Ok(Ok(())))
                }
                None => {
                    let _ = timeout(stall, sink.send(Message::Close(None))).await;
                    let _ = timeout(stall, sink.close()).await;
                    return;
                }
            },
            _ = ping.tick() => matches!(timeout(stall, sink.send(Message::Ping(Vec::new().into()))).await, Ok(Ok(()))),
        };
        if !ok {
            let _ = gone.send(true);
            return;
        }
    }
}

/// Resolves `drain` after `exited` turned true; never before.
async fn idle_after_exit(exited: &mut watch::Receiver<bool>, drain: Duration) {
    while !*exited.borrow_and_update() {
        if exited.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
    }
    tokio::time::sleep(drain).await;
}

/// Copies one output stream into frames on channel `ch` (rules 1 and 4).
pub async fn pump_out(
    ch: u8,
    mut r: Reader,
    tx: mpsc::Sender<Message>,
    count: Tally,
    mut exited: watch::Receiver<bool>,
    drain: Duration,
) {
    let mut buf = vec![0u8; CHUNK + 1];
    loop {
        let n = tokio::select! {
            n = r.read(&mut buf[1..]) => match n { Ok(0) | Err(_) => return, Ok(n) => n },
            _ = idle_after_exit(&mut exited, drain) => return,
        };
        buf[0] = ch;
        count.add(n as u64);
        // The bounded queue is the back-pressure: a full one stalls this read.
        if tx.send(Message::Binary(buf[..=n].to_vec().into())).await.is_err() {
            return;
        }
    }
}

pub fn signal_number(name: &str) -> Option<i32> {
    use std::str::FromStr;
    if let Ok(n) = name.parse::<i32>() {
        return (1..=64).contains(&n).then_some(n);
    }
    let up = name.to_ascii_uppercase();
    let full = if up.starts_with("SIG") { up } else { format!("SIG{up}") };
    nix::sys::signal::Signal::from_str(&full).ok().map(|s| s as i32)
}

/// Client to process: stdin bytes, stdin close, resize, signals (rules 2, 3 and 5). Returns when the client is
/// gone; dropping `signals` then hangs the session up.
pub async fn pump_in<St>(
    mut stream: St,
    mut gone: watch::Receiver<bool>,
    mut stdin: Option<Writer>,
    signals: mpsc::Sender<i32>,
    master: Option<OwnedFd>,
    count: Tally,
) where
    St: futures_util::Stream<Item = Result<Message, tokio_tungstenite::tungstenite::Error>> + Unpin,
{
    loop {
        let msg = tokio::select! {
            m = tokio::time::timeout(CLIENT_SILENCE, stream.next()) => match m {
                Ok(Some(Ok(m))) => m,
                _ => return,
            },
            _ = gone.wait_for(|g| *g) => return,
        };
        let data = match msg {
            Message::Binary(b) => b,
            Message::Close(_) => return,
            _ => continue,
        };
        let Ok((ch, payload)) = split_frame(&data) else {
            continue;
        };
        match ch {
            channel::STDIN => {
                if let Some(w) = stdin.as_mut() {
                    // The next frame is read only once this one is written; a client found gone meanwhile
                    // still ends the session.
                    let written = tokio::select! {
                        r = w.write_all(payload) => r.is_ok(),
                        _ = gone.wait_for(|g| *g) => return,
                    };
                    if written {
                        count.add(payload.len() as u64);
                    } else {
                        stdin = None;
                    }
                }
            }
            // Dropping the write end is what makes the process read EOF (pipes; a terminal keeps its master).
            channel::CLOSE if payload.first() == Some(&channel::STDIN) && master.is_none() => {
                stdin = None;
            }
            channel::RESIZE => {
                if let (Some(m), Ok(sz)) = (&master, serde_json::from_slice::<TermSize>(payload)) {
                    let ws = libc::winsize { ws_row: sz.height, ws_col: sz.width, ws_xpixel: 0, ws_ypixel: 0 };
                    // SAFETY: TIOCSWINSZ reads one winsize from a valid pointer; the fd is our pty master.
                    unsafe { libc::ioctl(m.as_raw_fd(), libc::TIOCSWINSZ, &ws) };
                }
            }
            channel::SIGNAL => {
                if let Some(n) =
                    serde_json::from_slice::<SignalRequest>(payload).ok().and_then(|s| signal_number(&s.signal))
                {
                    let _ = signals.send(n).await;
                }
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use dcos_exec_proto::frame;
    use std::pin::Pin;
    use std::task::{Context, Poll};

    fn bin(ch: u8, payload: &[u8]) -> Result<Message, tokio_tungstenite::tungstenite::Error> {
        Ok(Message::Binary(frame(ch, payload).into()))
    }

    #[tokio::test]
    async fn input_reaches_the_process_and_a_leaving_client_hangs_up() {
        let (w, mut r) = tokio::io::duplex(1024);
        let (signals, mut signal_rx) = mpsc::channel(8);
        let (_gone_tx, gone) = watch::channel(false);
        let count = Tally::default();
        let client = futures_util::stream::iter(vec![
            bin(channel::STDIN, b"hello"),
            bin(channel::SIGNAL, br#"{"signal":"INT"}"#),
            bin(channel::STDIN, b" world"),
        ]);
        // The client's stream ends after these frames: it left.
        pump_in(client, gone, Some(Box::new(w)), signals, None, count.clone()).await;
        let mut got = String::new();
        r.read_to_string(&mut got).await.unwrap();
        assert_eq!(got, "hello world", "stdin delivered, then EOF");
        assert_eq!(count.get(), 11);
        assert_eq!(signal_rx.recv().await, Some(libc::SIGINT));
        assert_eq!(signal_rx.recv().await, None, "the signal sender is gone: the helper sees a hang-up");
    }

    #[tokio::test]
    async fn closing_stdin_gives_the_process_eof_while_the_session_goes_on() {
        let (w, mut r) = tokio::io::duplex(1024);
        let (signals, _signal_rx) = mpsc::channel(8);
        let (_gone_tx, gone) = watch::channel(false);
        let (client_tx, client_rx) = mpsc::unbounded_channel();
        client_tx.send(bin(channel::STDIN, b"data")).unwrap();
        client_tx.send(bin(channel::CLOSE, &[channel::STDIN])).unwrap();
        let client = stream_of(client_rx);
        let input = tokio::spawn(pump_in(client, gone, Some(Box::new(w)), signals, None, Default::default()));
        let mut got = String::new();
        r.read_to_string(&mut got).await.unwrap();
        assert_eq!(got, "data");
        assert!(!input.is_finished(), "the client is still there");
        drop(client_tx);
        input.await.unwrap();
    }

    /// A stream of the messages sent on `rx`, ending when every sender is gone.
    fn stream_of(
        mut rx: mpsc::UnboundedReceiver<Result<Message, tokio_tungstenite::tungstenite::Error>>,
    ) -> impl futures_util::Stream<Item = Result<Message, tokio_tungstenite::tungstenite::Error>> + Unpin {
        Box::pin(futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx)))
    }

    #[tokio::test(start_paused = true)]
    async fn a_slow_client_stalls_the_process_instead_of_buffering() {
        let (mut w, r) = tokio::io::duplex(64 * 1024);
        // Nobody takes the frames: the queue (one frame here) fills and stays full.
        let (tx, _rx) = mpsc::channel(1);
        let (_exited_tx, exited) = watch::channel(false);
        let count = Tally::default();
        let pump = tokio::spawn(pump_out(channel::STDOUT, Box::new(r), tx, count.clone(), exited, Duration::ZERO));
        let big = vec![b'x'; 8 << 20];
        let wrote = tokio::time::timeout(Duration::from_secs(3600), w.write_all(&big)).await;
        assert!(wrote.is_err(), "the writer blocks");
        // What the pump read is bounded by the queue and one chunk, not by what the process wrote.
        assert!(count.get() <= 2 * CHUNK as u64, "{}", count.get());
        pump.abort();
    }

    #[tokio::test(start_paused = true)]
    async fn output_held_open_after_exit_is_forwarded_until_quiet() {
        let (mut w, r) = tokio::io::duplex(1024);
        let (tx, mut rx) = mpsc::channel(16);
        let (exited_tx, exited) = watch::channel(false);
        let drain = Duration::from_secs(1);
        let pump = tokio::spawn(pump_out(channel::STDERR, Box::new(r), tx, Default::default(), exited, drain));
        w.write_all(b"before").await.unwrap();
        let Some(Message::Binary(m)) = rx.recv().await else { panic!("a frame") };
        assert_eq!(&m[..], &frame(channel::STDERR, b"before")[..]);
        exited_tx.send(true).unwrap();
        let t0 = tokio::time::Instant::now();
        // `w` stays open (a background child holds it), yet the pump ends after `drain`.
        pump.await.unwrap();
        assert_eq!(t0.elapsed(), drain);
        drop(w);
    }

    /// A client that takes nothing.
    struct Stuck;

    impl futures_util::Sink<Message> for Stuck {
        type Error = std::io::Error;
        fn poll_ready(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
            Poll::Pending
        }
        fn start_send(self: Pin<&mut Self>, _: Message) -> Result<(), Self::Error> {
            Ok(())
        }
        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
            Poll::Pending
        }
        fn poll_close(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
            Poll::Pending
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_client_that_takes_nothing_is_gone_after_the_silence_limit() {
        let (tx, rx) = mpsc::channel(16);
        let (gone_tx, mut gone) = watch::channel(false);
        tx.send(Message::Binary(frame(channel::STDOUT, b"x").into())).await.unwrap();
        let t0 = tokio::time::Instant::now();
        write_loop(Stuck, rx, gone_tx).await;
        assert!(*gone.borrow_and_update());
        assert_eq!(t0.elapsed(), CLIENT_SILENCE);
    }

    #[test]
    fn signal_names_and_numbers() {
        assert_eq!(signal_number("INT"), Some(libc::SIGINT));
        assert_eq!(signal_number("SIGTERM"), Some(libc::SIGTERM));
        assert_eq!(signal_number("hup"), Some(libc::SIGHUP));
        assert_eq!(signal_number("9"), Some(9));
        assert_eq!(signal_number("NOPE"), None);
        assert_eq!(signal_number("0"), None);
    }
}
