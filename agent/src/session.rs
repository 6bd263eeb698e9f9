//! One exec session over a WebSocket, in four steps that [`drive`] runs in order: [`pull`] the debug image
//! (if any), [`start`] the process through the exec helper, [`wire`] its stdio to the client until it exits,
//! and [`finish`] into the final status. [`run`] writes the `session_start` record before them and the
//! `session_end` record after them. The pumps and their flow-control rules are in [`flow`].

mod flow;
mod pty;

use crate::exec::{self, ExecError};
use crate::limits::SessionSlot;
use crate::runtime::stopped::StoppedFiles;
use crate::server::Agent;
use crate::shutdown::{Live, ShuttingDown};
use dcos_exec_access::audit::{SessionInfo, SessionRecord, SessionStartRecord};
use dcos_exec_access::metrics::{Metrics, PullResult, SessionOutcome};
use dcos_exec_container::channel::Event as HelperEvent;
use dcos_exec_container::spec::Rlimit;
use dcos_exec_images::pull::{PullError, PullPolicy, PulledImage};
use dcos_exec_images::reference::ImageRef;
use dcos_exec_proto::{channel, frame, ErrorCode, ExecRequest, Started, Status};
use flow::{Reader, Tally, Writer};
use futures_util::StreamExt;
use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

/// Who asked for what; filled by the server after authorization.
pub struct Context {
    pub user: String,
    pub source: String,
    /// The gateway that relayed the session, if one did.
    pub via: Option<String>,
    pub task: String,
    pub container: crate::runtime::Container,
    pub request: ExecRequest,
    /// `--debug-image`, parsed and authorized.
    pub image: Option<ImageRef>,
    pub pull_policy: dcos_exec_images::pull::PullPolicy,
    /// `--cap-add`, allowed by the agent and the ACL, as kernel numbers.
    pub cap_add: Vec<u32>,
    /// A debug session on a stopped container may write to its files (ACL `debug:write`).
    pub writable: bool,
    pub grace_ms: u64,
}

/// What admitted the session; held (for its `Drop`) until the session has ended and told its client.
pub struct Admission {
    /// Counts the session against `max_sessions_per_user`.
    pub _slot: SessionSlot,
    /// Makes the agent's shutdown wait for the session.
    pub _live: Live,
}

/// Why a session ended without its process's own exit status.
#[derive(Debug, thiserror::Error)]
enum SessionError {
    #[error("{0}")]
    Pull(PullError),
    #[error(transparent)]
    Exec(#[from] ExecError),
    #[error("receiving the terminal: {0}")]
    Terminal(std::io::Error),
    #[error("no console socket")]
    NoConsole,
    #[error("setting up the terminal: {0}")]
    TerminalSetup(std::io::Error),
    #[error("the exec helper died")]
    HelperDied,
    #[error("the client went away before the process started")]
    ClientGone,
    #[error("container {0} stopped")]
    ContainerStopped(String),
    #[error("container {0} stopped during the session")]
    StoppedDuring(String),
    #[error(transparent)]
    ShuttingDown(#[from] ShuttingDown),
    #[error("the stopped container's files: {0}")]
    Stopped(crate::runtime::stopped::StoppedError),
}

impl SessionError {
    fn code(&self) -> ErrorCode {
        match self {
            SessionError::Pull(e) => e.code(),
            SessionError::Exec(e) => e.code(),
            SessionError::ShuttingDown(e) => e.code(),
            SessionError::Stopped(e) => e.code(),
            SessionError::ContainerStopped(_) | SessionError::StoppedDuring(_) => ErrorCode::ContainerStopped,
            SessionError::Terminal(_)
            | SessionError::NoConsole
            | SessionError::TerminalSetup(_)
            | SessionError::HelperDied
            | SessionError::ClientGone => ErrorCode::Internal,
        }
    }
}

impl From<SessionError> for Status {
    fn from(e: SessionError) -> Status {
        Status::Error { code: e.code(), message: e.to_string() }
    }
}

/// Bytes moved (for the end record and the agent's totals), and what ended the session, for its outcome.
struct Counters {
    bytes_in: Tally,
    bytes_out: Tally,
    /// The client went away before the process ended.
    lost: AtomicBool,
    /// The agent hung the session up because it is shutting down.
    shut_down: AtomicBool,
    /// A pull or prune may have changed the image cache's size, measured once the client has its status.
    cache_changed: AtomicBool,
}

impl Counters {
    fn new(m: &Metrics) -> Counters {
        Counters {
            bytes_in: Tally::new(m.stdin_bytes()),
            bytes_out: Tally::new(m.output_bytes()),
            lost: AtomicBool::new(false),
            shut_down: AtomicBool::new(false),
            cache_changed: AtomicBool::new(false),
        }
    }

    /// How the session ended, for `dcos_exec_sessions_total`.
    fn outcome(&self, status: &Status) -> SessionOutcome {
        if self.shut_down.load(Ordering::Relaxed) {
            SessionOutcome::Shutdown
        } else if self.lost.load(Ordering::Relaxed) {
            SessionOutcome::Lost
        } else {
            match status {
                Status::Exited { .. } => SessionOutcome::Exited,
                Status::Signaled { .. } => SessionOutcome::Signaled,
                Status::Error { .. } => SessionOutcome::Failed,
            }
        }
    }
}

fn new_session_id() -> String {
    let mut b = [0u8; 8];
    let _ = getrandom::fill(&mut b);
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// A session whose start record is written: its id, its start time and what both records say about it.
pub struct Begun {
    id: String,
    start: String,
    info: SessionInfo,
}

/// Writes the `session_start` record (and the `session start` line) of a session about to be accepted. The
/// audit trail fails closed: when the record cannot be written the session must not start.
pub fn begin(agent: &Agent, ctx: &Context) -> Result<Begun, dcos_exec_access::audit::AuditError> {
    let id = new_session_id();
    let start = dcos_exec_access::audit::now();
    let (command, command_bytes, command_sha256) = dcos_exec_access::audit::recorded_command(&ctx.request.command);
    let info = SessionInfo {
        user: ctx.user.clone(),
        source: ctx.source.clone(),
        via: ctx.via.clone(),
        task: ctx.task.clone(),
        container: ctx.container.id.clone(),
        command,
        command_bytes,
        command_sha256,
        tty: ctx.request.tty,
        stdin: ctx.request.stdin,
        run_as: ctx.request.user.clone(),
        image: ctx.image.as_ref().map(|r| r.to_string()),
    };
    agent.audit.session_start(&SessionStartRecord {
        event: "session_start",
        session: id.clone(),
        time: start.clone(),
        info: info.clone(),
    })?;
    // Strings as debug values: quoted and escaped, so nothing in them can start a line of its own.
    tracing::info!(
        session = %id,
        user = ctx.user.as_str(),
        task = ctx.task.as_str(),
        container = ctx.container.id.as_str(),
        source = ctx.source.as_str(),
        tty = ctx.request.tty,
        stdin = ctx.request.stdin,
        image = ctx.image.as_ref().map(|r| r.to_string()),
        "session start"
    );
    Ok(Begun { id, start, info })
}

/// Ends, in the audit log, a session whose client went away before the upgrade completed.
pub fn abandoned(agent: &Agent, begun: Begun) {
    let now = dcos_exec_access::audit::now();
    agent.audit.session(&SessionRecord {
        event: "session_end",
        session: begun.id,
        info: begun.info,
        image_digest: None,
        start: begun.start,
        end: now,
        status: Status::Error { code: ErrorCode::Internal, message: "the upgrade to WebSocket failed".into() },
        bytes_in: 0,
        bytes_out: 0,
    });
}

/// Runs the session to its end; its start record is written ([`begin`]), its end record is written here.
pub async fn run<S>(agent: Arc<Agent>, io: S, ctx: Context, admission: Admission, begun: Begun)
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
    let (tx, rx) = mpsc::channel::<Message>(flow::QUEUE);
    // Set when the client can no longer be written to: the session then ends as if the client had left.
    let (gone_tx, gone_rx) = watch::channel(false);
    let writer = tokio::spawn(flow::write_loop(sink, rx, gone_tx));
    let Begun { id, start, info } = begun;
    let active = agent.metrics.active_session();

    let counters = Counters::new(&agent.metrics);
    let mut image = None;
    let status = drive(&agent, &ctx, &id, &mut image, &tx, (stream, gone_rx), &counters).await;

    let json = serde_json::to_vec(&status).unwrap_or_default();
    let outcome = counters.outcome(&status);
    let error = match &status {
        Status::Error { code, .. } => Some(*code),
        _ => None,
    };
    agent.metrics.session_ended(outcome, error);
    let (exit_code, signal) = match &status {
        Status::Exited { code } => (Some(*code), None),
        Status::Signaled { signal } => (None, Some(*signal)),
        Status::Error { .. } => (None, None),
    };
    tracing::info!(
        session = %id,
        user = ctx.user.as_str(),
        task = ctx.task.as_str(),
        outcome = outcome.as_str(),
        exit_code,
        signal,
        error = error.map(dcos_exec_access::metrics::code_name),
        bytes_in = counters.bytes_in.get(),
        bytes_out = counters.bytes_out.get(),
        "session end"
    );
    // Audited before the client learns the outcome: whoever saw a session end can find its record.
    agent.audit.session(&SessionRecord {
        event: "session_end",
        session: id,
        info: SessionInfo { image: image.as_ref().map(|(r, _): &(String, String)| r.clone()), ..info },
        image_digest: image.map(|(_, d)| d),
        start,
        end: dcos_exec_access::audit::now(),
        status,
        bytes_in: counters.bytes_in.get(),
        bytes_out: counters.bytes_out.get(),
    });
    let _ = tx.send(Message::Binary(frame(channel::STATUS, &json).into())).await;
    drop(tx);
    let _ = writer.await;
    drop(active);
    drop(admission);
    if counters.cache_changed.load(Ordering::Relaxed) {
        // Walking the cache takes a while on a big one: off the session's path, and off the async threads.
        let _ = tokio::task::spawn_blocking(move || agent.metrics.set_image_cache_bytes(agent.puller.size())).await;
    }
}

/// Pull, start, wire, finish. A shutdown of the agent ends any of them with [`ShuttingDown`].
#[allow(clippy::too_many_arguments)]
async fn drive<St>(
    agent: &Agent,
    ctx: &Context,
    id: &str,
    image_info: &mut Option<(String, String)>,
    tx: &mpsc::Sender<Message>,
    client: (St, watch::Receiver<bool>),
    counters: &Counters,
) -> Status
where
    St: futures_util::Stream<Item = Result<Message, tokio_tungstenite::tungstenite::Error>> + Unpin + Send + 'static,
{
    let stop = &agent.shutdown;
    let began = std::time::Instant::now();
    let shutting_down = || {
        counters.shut_down.store(true, Ordering::Relaxed);
        Status::from(SessionError::from(ShuttingDown))
    };
    let image = match &ctx.image {
        None => None,
        Some(r) => {
            let pulled = tokio::select! {
                p = pull(agent, ctx, r, tx, &counters.cache_changed) => p,
                _ = stop.stopping() => return shutting_down(),
            };
            match pulled {
                Ok(img) => {
                    *image_info = Some((img.reference.clone(), img.digest.to_string()));
                    Some(img)
                }
                Err(e) => {
                    *image_info = Some((r.to_string(), String::new()));
                    return SessionError::Pull(e).into();
                }
            }
        }
    };
    let mut gone = client.1.clone();
    let running = tokio::select! {
        r = start(agent, ctx, image.as_ref()) => r,
        // Dropping the half-started session closes the helper's control pipe: it hangs up whatever it started
        // (a start that blocks, say on a FUSE mount the container serves, included).
        _ = stop.stopping() => return shutting_down(),
        _ = gone.wait_for(|g| *g) => {
            counters.lost.store(true, Ordering::Relaxed);
            return SessionError::ClientGone.into();
        }
    };
    let running = match running {
        Ok(r) => r,
        Err(status) => return status,
    };
    agent.metrics.started(ctx.image.is_some(), began.elapsed());
    let s = serde_json::to_vec(&Started { session: id.into(), pid: running.pid }).unwrap_or_default();
    let _ = tx.send(Message::Binary(frame(channel::STARTED, &s).into())).await;
    let wired = wire(agent, running, tx, client, counters).await;
    if wired.shut_down {
        counters.shut_down.store(true, Ordering::Relaxed);
    }
    finish(ctx, wired).await
}

/// Step 1: pulls the debug image (after authorization and the upgrade, so progress reaches the client as it
/// happens), then prunes the cache if it is over its cap.
async fn pull(
    agent: &Agent,
    ctx: &Context,
    r: &ImageRef,
    tx: &mpsc::Sender<Message>,
    cache_changed: &AtomicBool,
) -> Result<PulledImage, PullError> {
    let ptx = tx.clone();
    let progress = move |line: String| {
        // Progress is best effort: a full queue drops a line rather than stalling the pull.
        let _ = ptx.try_send(Message::Binary(frame(channel::PROGRESS, line.as_bytes()).into()));
    };
    let (pulled, cached) = {
        let _shared = agent.cache_lock.read().await;
        let cached = ctx.pull_policy != PullPolicy::Always && agent.puller.is_cached(r);
        (agent.puller.pull(r, ctx.pull_policy, &progress).await, cached)
    };
    agent.metrics.image_pull(match (&pulled, cached) {
        (Err(_), _) => PullResult::Failed,
        (Ok(_), true) => PullResult::Cached,
        (Ok(_), false) => PullResult::Pulled,
    });
    match &pulled {
        Ok(img) => tracing::info!(image = %img.reference, digest = %img.digest, cached, "debug image ready"),
        Err(e) => tracing::info!(image = %r, error = %e, "debug image failed"),
    }
    let cap = agent.cfg.file.images.max_cache_bytes;
    let mut changed = !cached;
    if cap > 0 && agent.puller.size() > cap {
        let _alone = agent.cache_lock.write().await;
        let p = agent.puller.prune();
        tracing::info!(blobs = p.blobs, layers = p.layers, bytes = p.bytes, "image cache over its cap: pruned");
        changed = true;
    }
    cache_changed.store(changed, Ordering::Relaxed);
    pulled
}

/// A process started in the container, as the rest of the session sees it.
struct Running {
    /// In the container's pid namespace.
    pid: i32,
    stdin: Option<Writer>,
    outputs: Vec<(u8, Reader)>,
    /// The pty master, for window resizes (`-t`).
    master: Option<OwnedFd>,
    /// Signals for the process. Dropping the last sender hangs the session up: the helper sends SIGHUP to the
    /// session, then SIGKILL after `grace_period`.
    signals: mpsc::Sender<i32>,
    /// The helper's final status, once it has been reaped; `None` if it died without one.
    exit: JoinHandle<Option<Status>>,
}

/// The agent raised its own soft open-files limit at start; a process in the container gets the limit the
/// agent was started with, unless the container's config sets one.
fn restore_nofile(rlimits: &mut Vec<Rlimit>) {
    let Ok(nofile) = i32::try_from(libc::RLIMIT_NOFILE) else { return };
    if let Some((soft, hard)) = crate::limits::original_nofile() {
        if !rlimits.iter().any(|r| r.resource == nofile) {
            rlimits.push(Rlimit { resource: nofile, soft, hard });
        }
    }
}

/// A stopped container of an engine (Docker, containerd): its files come from the engine, whatever is left of
/// its bundle (Docker removes it; containerd's shim unmounts its `rootfs` when the task exits and removes the
/// rest with the task). `None` for runc and crun containers, whose bundles stay as they were.
async fn engine_files(agent: &Agent, ctx: &Context, debug: bool) -> Result<Option<StoppedFiles>, Status> {
    let c = &ctx.container;
    let Some(engine) = c.engine.as_ref().filter(|_| debug && c.state == crate::runtime::State::Stopped) else {
        return Ok(None);
    };
    // A few answers in a row (inspect and info, or a record, its snapshot's mounts and the plugins), once per
    // session: more time than a listing gets.
    let timeout = agent.cfg.api_timeout.max(Duration::from_secs(10));
    match crate::runtime::stopped::files(engine, &c.id, ctx.writable, timeout).await {
        Ok(f) => Ok(Some(f)),
        Err(e) => Err(SessionError::Stopped(e).into()),
    }
}

/// Step 2: builds the helper's spec, spawns the helper and waits until it has exec'd the command. Everything
/// that speaks the helper's protocol is here; the returned [`Running`] hides it. On failure, the final status
/// (the helper's own, such as `command_not_found`, or the session's error).
async fn start(agent: &Agent, ctx: &Context, image: Option<&PulledImage>) -> Result<Running, Status> {
    let engine_files = engine_files(agent, ctx, image.is_some()).await?;
    let (mut spec, layers) =
        exec::build_spec(&ctx.container, &ctx.request, ctx.grace_ms, image, &ctx.cap_add, ctx.writable, engine_files)
            .map_err(SessionError::from)?;
    restore_nofile(&mut spec.rlimits);
    let mut sp = exec::spawn(&agent.exe, &spec, layers).await.map_err(SessionError::from)?;
    // Pipes, unless the session has a terminal (its master comes over the console socket below).
    let mut stdin: Option<Writer> = sp.child.stdin.take().map(|w| Box::new(w) as Writer);
    let mut outputs: Vec<(u8, Reader)> = Vec::new();
    if let Some(r) = sp.child.stdout.take() {
        // A deeper pipe lets a fast writer run ahead between our reads (the default is 64 KiB).
        let _ = nix::fcntl::fcntl(&r, nix::fcntl::FcntlArg::F_SETPIPE_SZ(1 << 20));
        outputs.push((channel::STDOUT, Box::new(r)));
    }
    if let Some(r) = sp.child.stderr.take() {
        outputs.push((channel::STDERR, Box::new(r)));
    }

    // Signals become control records; when the last sender is gone the pipe closes: the helper's hang-up.
    let (signals, mut signal_rx) = mpsc::channel::<i32>(8);
    let mut ctrl = sp.ctrl;
    tokio::spawn(async move {
        while let Some(n) = signal_rx.recv().await {
            if ctrl.write_all(&exec::signal_frame(n)).await.is_err() {
                break;
            }
        }
    });

    // Events: `started` once, then the final status; the helper is reaped after its last word.
    let (started_tx, started_rx) = oneshot::channel();
    let (mut child, mut events) = (sp.child, sp.events);
    let exit = tokio::spawn(async move {
        let mut started_tx = Some(started_tx);
        let status = loop {
            match exec::next_event(&mut events).await {
                Some(HelperEvent::Started { pid }) => {
                    if let Some(t) = started_tx.take() {
                        let _ = t.send(pid);
                    }
                }
                Some(HelperEvent::Finished(s)) => break Some(s),
                None => break None,
            }
        };
        let _ = child.wait().await;
        status
    });
    let Ok(pid) = started_rx.await else {
        // The helper's last word came before `started`.
        return Err(match exit.await.ok().flatten() {
            // The helper knows the init's pid; the user knows the container by its name.
            Some(Status::Error { code: ErrorCode::ContainerPaused, .. }) => {
                let c = &ctx.container;
                let name = c.name.as_deref().unwrap_or(&c.id);
                let message = format!("container {name} is paused, unpause it first");
                Status::Error { code: ErrorCode::ContainerPaused, message }
            }
            Some(s) => s,
            None => helper_died(ctx).into(),
        });
    };

    let mut master = None;
    if spec.tty {
        let m = match sp.console.as_ref().map(exec::recv_master) {
            Some(Ok(m)) => m,
            Some(Err(e)) => return Err(SessionError::Terminal(e).into()),
            None => return Err(SessionError::NoConsole.into()),
        };
        let (r, w, m) = (|| Ok((pty::Pty::new(&m)?, pty::Pty::new(&m)?, m.try_clone()?)))()
            .map_err(|e: std::io::Error| SessionError::TerminalSetup(e))?;
        outputs.push((channel::STDOUT, Box::new(r)));
        stdin = Some(Box::new(w));
        master = Some(m);
    }
    if !ctx.request.stdin {
        // No -i: the process sees EOF on stdin at once, as with docker exec.
        stdin = None;
    }
    Ok(Running { pid, stdin, outputs, master, signals, exit })
}

/// How the wire step ended.
struct Wired {
    /// The helper's final status; `None` if it died without one, or did not finish within the shutdown grace.
    status: Option<Status>,
    /// The agent hung the session up because it is shutting down.
    shut_down: bool,
}

/// Step 3: pumps stdio between the client and the process until the helper reports the end (see [`flow`]), or
/// until the agent shuts down: then the session is hung up and given until the shutdown's deadline to end.
async fn wire<St>(
    agent: &Agent,
    running: Running,
    tx: &mpsc::Sender<Message>,
    (stream, gone): (St, watch::Receiver<bool>),
    counters: &Counters,
) -> Wired
where
    St: futures_util::Stream<Item = Result<Message, tokio_tungstenite::tungstenite::Error>> + Unpin + Send + 'static,
{
    let Running { stdin, outputs, master, signals, mut exit, .. } = running;
    let (exited_tx, exited_rx) = watch::channel(false);
    let drain = agent.cfg.output_drain;
    let mut pumps: Vec<_> = outputs
        .into_iter()
        .map(|(ch, r)| {
            tokio::spawn(flow::pump_out(ch, r, tx.clone(), counters.bytes_out.clone(), exited_rx.clone(), drain))
        })
        .collect();
    // `pump_in` owns the only signal sender: when it returns (client gone) or is aborted, the session hangs up.
    let input = tokio::spawn(flow::pump_in(stream, gone, stdin, signals, master, counters.bytes_in.clone()));
    let stop = &agent.shutdown;
    let wired = tokio::select! {
        s = &mut exit => {
            // The input pump only returns when the client is gone; before the end, that is what ended it.
            if input.is_finished() {
                counters.lost.store(true, Ordering::Relaxed);
            }
            Wired { status: s.ok().flatten(), shut_down: false }
        }
        _ = stop.stopping() => {
            input.abort();
            let status = tokio::select! {
                s = &mut exit => s.ok().flatten(),
                _ = stop.hangup_deadline() => None,
            };
            Wired { status, shut_down: true }
        }
    };
    let _ = exited_tx.send(true);
    // No drain for a client that is about to be told the agent is leaving. Otherwise output is drained until it
    // is quiet (in the pumps), but never beyond `output_drain_max` nor past the start of a shutdown: a process of
    // the container can keep writing into the session's pipe or terminal for ever.
    if !wired.shut_down {
        let drained = async {
            for p in pumps.iter_mut() {
                let _ = p.await;
            }
        };
        tokio::select! {
            _ = drained => {}
            _ = tokio::time::sleep(agent.cfg.output_drain_max) => {
                tracing::info!("output still written {:?} after the command exited; ending the session", agent.cfg.output_drain_max);
            }
            _ = stop.stopping() => {}
        }
    }
    for p in pumps {
        p.abort();
    }
    input.abort();
    wired
}

/// Whether the container's init went away during the session. Never, for a debug sandbox on a stopped
/// container: there was none to begin with.
fn container_gone(ctx: &Context) -> bool {
    ctx.container.state == crate::runtime::State::Running
        && dcos_exec_container::procfs::start_time(ctx.container.pid) != Some(ctx.container.start_time)
}

/// The helper ended without a status: because the container went away, or on its own.
fn helper_died(ctx: &Context) -> SessionError {
    if container_gone(ctx) {
        SessionError::ContainerStopped(ctx.container.id.clone())
    } else {
        SessionError::HelperDied
    }
}

/// Step 4: the final status, telling a process killed by its container's end from one killed otherwise.
async fn finish(ctx: &Context, wired: Wired) -> Status {
    if wired.shut_down {
        return SessionError::from(ShuttingDown).into();
    }
    let Some(status) = wired.status else {
        return helper_died(ctx).into();
    };
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
        return SessionError::StoppedDuring(ctx.container.id.clone()).into();
    }
    status
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn session_errors_map_to_their_wire_codes() {
        let cases = [
            (SessionError::from(ShuttingDown), ErrorCode::Internal),
            (SessionError::ContainerStopped("c".into()), ErrorCode::ContainerStopped),
            (SessionError::StoppedDuring("c".into()), ErrorCode::ContainerStopped),
            (SessionError::HelperDied, ErrorCode::Internal),
            (
                SessionError::Exec(ExecError::Bundle { path: "config.json".into(), cause: "gone".into() }),
                ErrorCode::StartFailed,
            ),
            (SessionError::Exec(ExecError::Spawn(std::io::Error::other("EPIPE"))), ErrorCode::Internal),
        ];
        for (e, want) in cases {
            let msg = e.to_string();
            match Status::from(e) {
                Status::Error { code, message } => assert_eq!((code, message), (want, msg)),
                other => panic!("{other:?}"),
            }
        }
        let Status::Error { message, .. } = Status::from(SessionError::from(ShuttingDown)) else { unreachable!() };
        assert!(message.contains("agent is shutting down"), "{message}");
    }

    #[test]
    fn a_session_outcome_says_shutdown_then_lost_before_the_status() {
        let m = Metrics::new(dcos_exec_access::metrics::Component::Agent, "0", "r");
        let exited = Status::Exited { code: 3 };
        let signaled = Status::Signaled { signal: libc::SIGHUP };
        let failed = Status::Error { code: ErrorCode::CommandNotFound, message: String::new() };
        let c = Counters::new(&m);
        assert_eq!(c.outcome(&exited), SessionOutcome::Exited);
        assert_eq!(c.outcome(&signaled), SessionOutcome::Signaled);
        assert_eq!(c.outcome(&failed), SessionOutcome::Failed);
        c.lost.store(true, Ordering::Relaxed);
        assert_eq!(c.outcome(&signaled), SessionOutcome::Lost, "the hang-up of a vanished client");
        c.shut_down.store(true, Ordering::Relaxed);
        assert_eq!(c.outcome(&signaled), SessionOutcome::Shutdown, "the agent hung up first");
    }

    #[test]
    fn the_original_open_files_limit_goes_to_the_process_unless_the_container_sets_one() {
        crate::limits::raise_nofile().unwrap();
        let (soft, hard) = crate::limits::original_nofile().unwrap();
        let nofile = i32::try_from(libc::RLIMIT_NOFILE).unwrap();
        let mut none = Vec::new();
        restore_nofile(&mut none);
        assert_eq!(none.len(), 1);
        assert_eq!((none[0].resource, none[0].soft, none[0].hard), (nofile, soft, hard));
        let mut own = vec![Rlimit { resource: nofile, soft: 5, hard: 6 }];
        restore_nofile(&mut own);
        assert_eq!((own.len(), own[0].soft), (1, 5));
    }
}
