//! One exec session over a WebSocket: spawns the helper, pumps stdio frames both ways, ends with a status.

use crate::audit::SessionRecord;
use crate::exec;
use crate::server::Agent;
use dcos_exec_container::channel::Event as HelperEvent;
use dcos_exec_proto::{channel, frame, split_frame, ErrorCode, ExecRequest, SignalRequest, Started, Status, TermSize};
use futures_util::{SinkExt, StreamExt};
use std::os::fd::{AsRawFd, OwnedFd};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{ready, Poll};
use std::time::Duration;
use tokio::io::unix::AsyncFd;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::sync::{mpsc, watch};
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

/// Who asked for what; filled by the server after authorization.
pub struct Context {
    pub user: String,
    pub source: String,
    pub task: String,
    pub container: crate::runtime::Container,
    pub request: ExecRequest,
    /// `--debug-image`, parsed and authorized.
    pub image: Option<dcos_exec_images::reference::ImageRef>,
    pub pull_policy: dcos_exec_images::pull::PullPolicy,
    /// `--cap-add`, checked against the allowlist, as kernel numbers.
    pub cap_add: Vec<u32>,
    pub grace_ms: u64,
}

const PING_EVERY: Duration = Duration::from_secs(20);
/// No message at all (not even a pong) for this long means the client is gone.
const CLIENT_SILENCE: Duration = Duration::from_secs(65);
/// Output is read (and framed) in pieces up to this large: fewer frames per byte, at a per-session memory cost.
const CHUNK: usize = 64 * 1024;

type Reader = Box<dyn AsyncRead + Unpin + Send>;
type Writer = Box<dyn AsyncWrite + Unpin + Send>;

fn new_session_id() -> String {
    let mut b = [0u8; 8];
    let _ = getrandom::fill(&mut b);
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Runs the session to its end and writes its audit record.
pub async fn run<S>(agent: Arc<Agent>, io: S, ctx: Context)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    // Client-to-agent traffic is small (stdin, control): a small read buffer keeps the per-session cost low.
    let cfg = WebSocketConfig::default()
        .max_message_size(Some(4 << 20))
        .max_frame_size(Some(1 << 20))
        .read_buffer_size(16 << 10);
    let ws = WebSocketStream::from_raw_socket(io, Role::Server, Some(cfg)).await;
    let (sink, stream) = ws.split();
    let (tx, rx) = mpsc::channel::<Message>(16);
    // Set when the client can no longer be written to: the session then ends as if the client had left.
    let (gone_tx, gone_rx) = watch::channel(false);
    let writer = tokio::spawn(write_loop(sink, rx, gone_tx));
    let id = new_session_id();
    let start = crate::audit::now();
    let bytes_in = Arc::new(AtomicU64::new(0));
    let bytes_out = Arc::new(AtomicU64::new(0));
    tracing::info!(session = %id, user = %ctx.user, task = %ctx.task, "session start");

    let mut image = None;
    let status = drive(&agent, &ctx, &id, &mut image, &tx, (stream, gone_rx), &bytes_in, &bytes_out).await;

    let json = serde_json::to_vec(&status).unwrap_or_default();
    tracing::info!(session = %id, status = ?status, "session end");
    // Audited before the client learns the outcome: whoever saw a session end can find its record.
    agent.audit.session(&SessionRecord {
        event: "session",
        session: id,
        user: ctx.user,
        source: ctx.source,
        task: ctx.task,
        container: ctx.container.id,
        image: image.as_ref().map(|(r, _): &(String, String)| r.clone()),
        image_digest: image.map(|(_, d)| d),
        command: ctx.request.command,
        tty: ctx.request.tty,
        stdin: ctx.request.stdin,
        run_as: ctx.request.user,
        start,
        end: crate::audit::now(),
        status,
        bytes_in: bytes_in.load(Ordering::Relaxed),
        bytes_out: bytes_out.load(Ordering::Relaxed),
    });
    let _ = tx.send(Message::Binary(frame(channel::STATUS, &json).into())).await;
    drop(tx);
    let _ = writer.await;
}

#[allow(clippy::too_many_arguments)]
async fn drive<St>(
    agent: &Agent,
    ctx: &Context,
    id: &str,
    image_info: &mut Option<(String, String)>,
    tx: &mpsc::Sender<Message>,
    (stream, gone): (St, watch::Receiver<bool>),
    bytes_in: &Arc<AtomicU64>,
    bytes_out: &Arc<AtomicU64>,
) -> Status
where
    St: futures_util::Stream<Item = Result<Message, tokio_tungstenite::tungstenite::Error>> + Unpin + Send + 'static,
{
    let internal = |m: String| Status::Error { code: ErrorCode::Internal, message: m };
    // Pulled only now, after authorization and the upgrade, so progress reaches the client as it happens.
    let image = match &ctx.image {
        Some(r) => {
            let ptx = tx.clone();
            let progress = move |line: String| {
                // Progress is best effort: a full queue drops a line rather than stalling the pull.
                let _ = ptx.try_send(Message::Binary(frame(channel::PROGRESS, line.as_bytes()).into()));
            };
            let pulled = {
                let _shared = agent.cache_lock.read().await;
                agent.puller.pull(r, ctx.pull_policy, &progress).await
            };
            let cap = agent.cfg.file.images.max_cache_bytes;
            if cap > 0 && agent.puller.size() > cap {
                let _alone = agent.cache_lock.write().await;
                let p = agent.puller.prune();
                tracing::info!(blobs = p.blobs, layers = p.layers, bytes = p.bytes, "image cache over its cap: pruned");
            }
            match pulled {
                Ok(img) => {
                    *image_info = Some((img.reference.clone(), img.digest.to_string()));
                    Some(img)
                }
                Err(e) => {
                    *image_info = Some((r.to_string(), String::new()));
                    return Status::Error { code: ErrorCode::ImageFailed, message: e.to_string() };
                }
            }
        }
        None => None,
    };
    let (spec, layers) = match exec::build_spec(
        &ctx.container,
        &ctx.request,
        ctx.grace_ms,
        image.as_ref(),
        &ctx.cap_add,
        agent.nofile,
    ) {
        Ok(s) => s,
        Err(e) => return Status::Error { code: e.code(), message: e.to_string() },
    };
    let mut sp = match exec::spawn(&agent.exe, &spec, layers).await {
        Ok(s) => s,
        Err(e) => return Status::Error { code: e.code(), message: e.to_string() },
    };
    let events = &mut sp.events;
    let container_gone =
        |ctx: &Context| dcos_exec_container::procfs::start_time(ctx.container.pid) != Some(ctx.container.start_time);
    let helper_died = |ctx: &Context| {
        if container_gone(ctx) {
            Status::Error {
                code: ErrorCode::ContainerStopped,
                message: format!("container {} stopped", ctx.container.id),
            }
        } else {
            internal("the exec helper died".into())
        }
    };
    match exec::next_event(events).await {
        Some(HelperEvent::Started { pid }) => {
            let s = serde_json::to_vec(&Started { session: id.into(), pid }).unwrap_or_default();
            let _ = tx.send(Message::Binary(frame(channel::STARTED, &s).into())).await;
        }
        Some(HelperEvent::Finished(s)) => {
            let _ = sp.child.wait().await;
            return s;
        }
        None => {
            let _ = sp.child.wait().await;
            return helper_died(ctx);
        }
    }

    // Wire up stdio: pipes, or the pty master the helper sent before it forked.
    let mut stdin: Option<Writer> = None;
    let mut outputs: Vec<(u8, Reader)> = Vec::new();
    let mut master_for_resize: Option<OwnedFd> = None;
    if spec.tty {
        let master = match sp.console.as_ref().map(exec::recv_master) {
            Some(Ok(m)) => m,
            Some(Err(e)) => return internal(format!("receiving the terminal: {e}")),
            None => return internal("no console socket".into()),
        };
        let (r, w, m) = match (Pty::new(&master), Pty::new(&master), master.try_clone()) {
            (Ok(r), Ok(w), Ok(m)) => (r, w, m),
            _ => return internal("setting up the terminal".into()),
        };
        outputs.push((channel::STDOUT, Box::new(r)));
        stdin = Some(Box::new(w));
        master_for_resize = Some(m);
    } else {
        if let Some(w) = sp.child.stdin.take() {
            stdin = Some(Box::new(w));
        }
        if let Some(r) = sp.child.stdout.take() {
            // A deeper pipe lets a fast writer run ahead between our reads (the default is 64 KiB).
            let _ = nix::fcntl::fcntl(&r, nix::fcntl::FcntlArg::F_SETPIPE_SZ(1 << 20));
            outputs.push((channel::STDOUT, Box::new(r)));
        }
        if let Some(r) = sp.child.stderr.take() {
            outputs.push((channel::STDERR, Box::new(r)));
        }
    }
    if !ctx.request.stdin {
        // No -i: the process sees EOF on stdin at once, as with docker exec.
        stdin = None;
    }

    let (exited_tx, exited_rx) = watch::channel(false);
    let drain = agent.cfg.output_drain;
    let pumps: Vec<_> = outputs
        .into_iter()
        .map(|(ch, r)| tokio::spawn(pump_out(ch, r, tx.clone(), bytes_out.clone(), exited_rx.clone(), drain)))
        .collect();
    let input = tokio::spawn(pump_in(stream, gone, stdin, sp.ctrl, master_for_resize, bytes_in.clone()));

    let mut status = loop {
        match exec::next_event(events).await {
            Some(HelperEvent::Finished(s)) => break s,
            Some(HelperEvent::Started { .. }) => continue,
            None => break helper_died(ctx),
        }
    };
    let _ = exited_tx.send(true);
    for p in pumps {
        let _ = p.await;
    }
    input.abort();
    let _ = sp.child.wait().await;
    // SIGKILL is how a dying pid namespace takes its processes; the init may need a moment to be reaped.
    if status == (Status::Signaled { signal: libc::SIGKILL }) {
        for _ in 0..20 {
            if container_gone(ctx) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }
    if matches!(status, Status::Signaled { .. }) && container_gone(ctx) {
        status = Status::Error {
            code: ErrorCode::ContainerStopped,
            message: format!("container {} stopped during the session", ctx.container.id),
        };
    }
    status
}

/// Sends frames in order, batching what is queued into one flush; pings the client; closes at the end.
async fn write_loop<Si>(mut sink: Si, mut rx: mpsc::Receiver<Message>, gone: watch::Sender<bool>)
where
    Si: futures_util::Sink<Message> + Unpin,
{
    use tokio::time::timeout;
    let mut ping = tokio::time::interval(PING_EVERY);
    ping.tick().await;
    // A client that takes no data for this long (stopped reading, or vanished) is treated as gone.
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

/// Copies one output stream into frames. The bounded channel is the flow control: a slow client stalls this
/// read, the pipe fills, and the process blocks in write(2), so nothing buffers without bound.
async fn pump_out(
    ch: u8,
    mut r: Reader,
    tx: mpsc::Sender<Message>,
    count: Arc<AtomicU64>,
    mut exited: watch::Receiver<bool>,
    drain: Duration,
) {
    let mut buf = vec![0u8; CHUNK + 1];
    loop {
        let n = tokio::select! {
            n = r.read(&mut buf[1..]) => match n { Ok(0) | Err(_) => return, Ok(n) => n },
            // Output still open after the process exited (a background child holds it): stop after a quiet spell.
            _ = idle_after_exit(&mut exited, drain) => return,
        };
        buf[0] = ch;
        count.fetch_add(n as u64, Ordering::Relaxed);
        if tx.send(Message::Binary(buf[..=n].to_vec().into())).await.is_err() {
            return;
        }
    }
}

fn signal_number(name: &str) -> Option<i32> {
    use std::str::FromStr;
    if let Ok(n) = name.parse::<i32>() {
        return (1..=64).contains(&n).then_some(n);
    }
    let up = name.to_ascii_uppercase();
    let full = if up.starts_with("SIG") { up } else { format!("SIG{up}") };
    nix::sys::signal::Signal::from_str(&full).ok().map(|s| s as i32)
}

/// Client to process: stdin bytes, stdin close, resize, signals. Returns when the client is gone, which drops the
/// control pipe and so tells the helper to hang up the session.
async fn pump_in<St>(
    mut stream: St,
    mut gone: watch::Receiver<bool>,
    mut stdin: Option<Writer>,
    mut ctrl: tokio::net::unix::pipe::Sender,
    master: Option<OwnedFd>,
    count: Arc<AtomicU64>,
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
                    // A process that stops reading stalls this write (that is the flow control); a client found
                    // gone meanwhile still ends the session.
                    let written = tokio::select! {
                        r = w.write_all(payload) => r.is_ok(),
                        _ = gone.wait_for(|g| *g) => return,
                    };
                    if written {
                        count.fetch_add(payload.len() as u64, Ordering::Relaxed);
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
                    let _ = ctrl.write_all(&exec::signal_frame(n)).await;
                }
            }
            _ => {}
        }
    }
}

/// Async reads and writes on a pty master.
struct Pty {
    fd: AsyncFd<OwnedFd>,
}

impl Pty {
    fn new(master: &OwnedFd) -> std::io::Result<Pty> {
        let fd = master.try_clone()?;
        let flags = nix::fcntl::fcntl(&fd, nix::fcntl::FcntlArg::F_GETFL).map_err(std::io::Error::from)?;
        let flags = nix::fcntl::OFlag::from_bits_truncate(flags) | nix::fcntl::OFlag::O_NONBLOCK;
        nix::fcntl::fcntl(&fd, nix::fcntl::FcntlArg::F_SETFL(flags)).map_err(std::io::Error::from)?;
        // SAFETY: `fd` is an OwnedFd moved into the AsyncFd, so it stays open and the same for its lifetime.
        let fd = unsafe { AsyncFd::register(fd) }.map_err(|e| std::io::Error::other(e.to_string()))?;
        Ok(Pty { fd })
    }
}

impl AsyncRead for Pty {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        loop {
            let mut guard = ready!(self.fd.poll_read_ready(cx))?;
            let unfilled = buf.initialize_unfilled();
            match guard.try_io(|fd| nix::unistd::read(fd.get_ref(), unfilled).map_err(std::io::Error::from)) {
                Ok(Ok(n)) => {
                    buf.advance(n);
                    return Poll::Ready(Ok(()));
                }
                // EIO: every slave fd is closed, the terminal's end of file.
                Ok(Err(e)) if e.raw_os_error() == Some(libc::EIO) => return Poll::Ready(Ok(())),
                Ok(Err(e)) => return Poll::Ready(Err(e)),
                Err(_would_block) => continue,
            }
        }
    }
}

impl AsyncWrite for Pty {
    fn poll_write(self: Pin<&mut Self>, cx: &mut std::task::Context<'_>, data: &[u8]) -> Poll<std::io::Result<usize>> {
        loop {
            let mut guard = ready!(self.fd.poll_write_ready(cx))?;
            match guard.try_io(|fd| nix::unistd::write(fd.get_ref(), data).map_err(std::io::Error::from)) {
                Ok(r) => return Poll::Ready(r),
                Err(_would_block) => continue,
            }
        }
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut std::task::Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut std::task::Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
