//! Running a command: the [`Command`] builder, its collected [`Output`], and the streaming [`Session`].

use crate::client::{Client, Ws};
use crate::Error;
use dcos_exec_proto::{channel, frame, split_frame, ExecRequest, SignalRequest, Started, Status, TermSize};
use futures_util::stream::SplitStream;
use futures_util::{SinkExt, StreamExt};
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;

/// How a command that ran ended, like [`std::process::ExitStatus`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExitStatus(Ended);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ended {
    Exited(i32),
    Signaled(i32),
}

impl ExitStatus {
    /// True when the command exited with 0.
    pub fn success(&self) -> bool {
        self.0 == Ended::Exited(0)
    }

    /// The exit code, if the command exited (rather than being killed by a signal).
    pub fn code(&self) -> Option<i32> {
        match self.0 {
            Ended::Exited(c) => Some(c),
            Ended::Signaled(_) => None,
        }
    }

    /// The signal that killed the command, if one did.
    pub fn signal(&self) -> Option<i32> {
        match self.0 {
            Ended::Signaled(s) => Some(s),
            Ended::Exited(_) => None,
        }
    }

    /// One number, as a shell and `dcos task exec` report it: the code, or 128 + the signal.
    pub fn shell_code(&self) -> i32 {
        match self.0 {
            Ended::Exited(c) => c,
            Ended::Signaled(s) => 128 + s,
        }
    }
}

impl std::fmt::Display for ExitStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            Ended::Exited(c) => write!(f, "exit status: {c}"),
            Ended::Signaled(s) => write!(f, "signal: {s}"),
        }
    }
}

/// What a command printed and how it ended, like [`std::process::Output`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Output {
    /// How it ended.
    pub status: ExitStatus,
    /// Everything on stdout (with a terminal, everything the terminal showed).
    pub stdout: Vec<u8>,
    /// Everything on stderr (empty with a terminal).
    pub stderr: Vec<u8>,
}

impl Output {
    /// stdout as text (invalid UTF-8 replaced).
    pub fn stdout_text(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }

    /// stderr as text (invalid UTF-8 replaced).
    pub fn stderr_text(&self) -> String {
        String::from_utf8_lossy(&self.stderr).into_owned()
    }
}

/// A command to run in a task's container; made by [`Client::command`].
#[must_use = "a Command does nothing until output() or spawn()"]
pub struct Command<'c> {
    client: &'c Client,
    task: String,
    req: ExecRequest,
    input: Option<Vec<u8>>,
    /// The first malformed variable name given to [`Command::env`], refused at [`Command::spawn`].
    bad_env: Option<String>,
}

impl<'c> Command<'c> {
    pub(crate) fn new(client: &'c Client, task: &str, argv: Vec<String>) -> Command<'c> {
        Command {
            client,
            task: task.to_string(),
            req: ExecRequest { command: argv, ..ExecRequest::default() },
            input: None,
            bad_env: None,
        }
    }

    /// Feeds these bytes to the command's stdin, then EOF ([`Command::output`]). Needs `exec:stdin`.
    pub fn stdin_bytes(mut self, input: impl Into<Vec<u8>>) -> Self {
        self.input = Some(input.into());
        self.req.stdin = true;
        self
    }

    /// Forwards stdin ([`Session::stdin`]); needs `exec:stdin`. Without it the command reads EOF at once.
    pub fn interactive(mut self, on: bool) -> Self {
        self.req.stdin = on;
        self
    }

    /// Sets `KEY=VAL` in the command's environment, over the container's value. A `KEY` that is empty or holds
    /// `=` or NUL makes [`Command::spawn`] fail with [`Error::InvalidRequest`].
    pub fn env(mut self, key: impl AsRef<str>, val: impl AsRef<str>) -> Self {
        let key = key.as_ref();
        if self.bad_env.is_none() && (key.is_empty() || key.contains(['=', '\0'])) {
            self.bad_env = Some(key.to_string());
        }
        self.req.env.push(format!("{key}={}", val.as_ref()));
        self
    }

    /// Sets several variables, as [`Command::env`].
    pub fn envs<I, K, V>(mut self, vars: I) -> Self
    where
        I: IntoIterator<Item = (K, V)>,
        K: AsRef<str>,
        V: AsRef<str>,
    {
        for (k, v) in vars {
            self = self.env(k, v);
        }
        self
    }

    /// Runs as `USER[:GROUP]` (names resolved in the container); needs `exec:user`.
    pub fn user(mut self, user: impl Into<String>) -> Self {
        self.req.user = Some(user.into());
        self
    }

    /// The working directory inside the container.
    pub fn workdir(mut self, dir: impl Into<String>) -> Self {
        self.req.workdir = Some(dir.into());
        self
    }

    /// Allocates a terminal of this size inside the container; needs `exec:tty`. Output then all arrives on
    /// stdout, with the terminal's line endings (`\r\n`).
    pub fn tty(mut self, size: Option<TermSize>) -> Self {
        self.req.tty = true;
        self.req.size = size;
        self
    }

    /// Runs the command from this OCI image, with the task's root at `/target`; needs `debug` on the image.
    pub fn debug_image(mut self, image: impl Into<String>) -> Self {
        self.req.debug_image = Some(image.into());
        self
    }

    /// With a debug image: `always`, `if-not-present` (the agent's default) or `never`.
    pub fn pull_policy(mut self, policy: impl Into<String>) -> Self {
        self.req.pull_policy = Some(policy.into());
        self
    }

    /// With a debug image: a capability beyond the task's (`SYS_PTRACE`); needs `debug:caps`.
    pub fn cap_add(mut self, cap: impl Into<String>) -> Self {
        self.req.cap_add.push(cap.into());
        self
    }

    /// The request as it goes on the wire.
    pub fn request(&self) -> &ExecRequest {
        &self.req
    }

    /// Runs the command and collects its output; stdin gets [`Command::stdin_bytes`], then EOF.
    pub async fn output(self) -> Result<Output, Error> {
        let input = self.input.clone();
        let mut s = self.spawn().await?;
        // Without input bytes an interactive command's stdin is dropped here: it reads EOF.
        if let (Some(bytes), Some(stdin)) = (input, s.stdin()) {
            // Written from a task of its own, so a command that prints before it reads cannot deadlock us.
            tokio::spawn(async move {
                if stdin.write(&bytes).await.is_ok() {
                    stdin.close().await;
                }
            });
        }
        s.output().await
    }

    /// Opens the session and returns at once, for streaming: read [`Session::next_event`], write
    /// [`Session::stdin`], send signals and resizes through [`Session::control`].
    pub async fn spawn(self) -> Result<Session, Error> {
        if self.req.command.is_empty() {
            return Err(Error::InvalidRequest("no command to run".into()));
        }
        if let Some(k) = &self.bad_env {
            return Err(Error::InvalidRequest(format!("{k:?} is not a variable name (empty, or with = or NUL)")));
        }
        let ws = self.client.upgrade(&self.task, &self.req).await?;
        Ok(Session::new(ws, self.req.stdin, self.client.timeouts().liveness))
    }
}

/// One piece of a running session.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Event {
    /// The process runs inside the container (its pid there, and the agent's session id of the audit log).
    Started(Started),
    /// Bytes on stdout (or the terminal).
    Stdout(Vec<u8>),
    /// Bytes on stderr.
    Stderr(Vec<u8>),
    /// A progress line of a debug-image pull.
    Progress(String),
    /// The command ended; the last event.
    Exit(ExitStatus),
}

/// Sends signals and window sizes to a running session; cheap to clone, usable while the session is read.
#[derive(Debug, Clone)]
pub struct Control {
    tx: mpsc::UnboundedSender<Message>,
}

impl Control {
    /// Delivers a signal by name without `SIG` (`INT`, `TERM`, `HUP`...) to the process. A ping follows it,
    /// so that a live agent answers at once ([`Session::last_heard`] moves) even when the process does not.
    pub fn signal(&self, name: &str) {
        let j = serde_json::to_vec(&SignalRequest { signal: name.into() }).unwrap_or_default();
        let _ = self.tx.send(Message::Binary(frame(channel::SIGNAL, &j).into()));
        let _ = self.tx.send(Message::Ping(Vec::new().into()));
    }

    /// Tells the process's terminal its new size.
    pub fn resize(&self, size: TermSize) {
        let j = serde_json::to_vec(&size).unwrap_or_default();
        let _ = self.tx.send(Message::Binary(frame(channel::RESIZE, &j).into()));
    }
}

/// The write end of a session's stdin; taken once with [`Session::stdin`]. A slow agent pushes back on
/// writes. Dropping it closes the process's stdin, as dropping a [`std::process::ChildStdin`] does.
#[derive(Debug)]
pub struct Stdin {
    tx: Option<mpsc::Sender<Message>>,
}

fn close_frame() -> Message {
    Message::Binary(frame(channel::CLOSE, &[channel::STDIN]).into())
}

impl Drop for Stdin {
    fn drop(&mut self) {
        let Some(tx) = self.tx.take() else { return };
        if let Err(mpsc::error::TrySendError::Full(m)) = tx.try_send(close_frame()) {
            // Behind queued input: sent once there is room, if a runtime is there to send it.
            if let Ok(rt) = tokio::runtime::Handle::try_current() {
                rt.spawn(async move {
                    let _ = tx.send(m).await;
                });
            }
        }
    }
}

/// Bytes per STDIN frame.
const CHUNK: usize = 32 * 1024;

impl Stdin {
    /// Writes bytes to the process's stdin.
    pub async fn write(&self, data: &[u8]) -> Result<(), Error> {
        let Some(tx) = &self.tx else { return Ok(()) };
        for c in data.chunks(CHUNK) {
            tx.send(Message::Binary(frame(channel::STDIN, c).into()))
                .await
                .map_err(|_| Error::SessionLost("the session ended before stdin was written".into()))?;
        }
        Ok(())
    }

    /// [`Stdin::write`] from a thread outside the runtime (a blocking reader of a local file or terminal).
    pub fn blocking_write(&self, data: &[u8]) -> Result<(), Error> {
        let Some(tx) = &self.tx else { return Ok(()) };
        for c in data.chunks(CHUNK) {
            tx.blocking_send(Message::Binary(frame(channel::STDIN, c).into()))
                .map_err(|_| Error::SessionLost("the session ended before stdin was written".into()))?;
        }
        Ok(())
    }

    /// Closes the process's stdin: it reads EOF.
    pub async fn close(mut self) {
        if let Some(tx) = self.tx.take() {
            let _ = tx.send(close_frame()).await;
        }
    }

    /// [`Stdin::close`] from a thread outside the runtime.
    pub fn blocking_close(mut self) {
        if let Some(tx) = self.tx.take() {
            let _ = tx.blocking_send(close_frame());
        }
    }
}

/// A running command: its events in order, ending with [`Event::Exit`]. Dropping it hangs up the process
/// (the agent sends it `SIGHUP`, then `SIGKILL`).
pub struct Session {
    stream: SplitStream<Ws>,
    stdin: Option<Stdin>,
    ctl: mpsc::UnboundedSender<Message>,
    writer: tokio::task::JoinHandle<()>,
    done: bool,
    /// When the agent last sent anything (a frame, a ping, a pong).
    heard: Instant,
    /// How long it may stay silent before the session counts as lost.
    liveness: Duration,
}

impl Drop for Session {
    fn drop(&mut self) {
        self.writer.abort();
    }
}

/// Owns the sending half, so that reading output never waits on a send (which could deadlock with an agent
/// that waits for us to read). Control frames (signals, resizes) go before queued stdin.
async fn write_loop<Si>(mut sink: Si, mut data: mpsc::Receiver<Message>, mut ctl: mpsc::UnboundedReceiver<Message>)
where
    Si: futures_util::Sink<Message> + Unpin,
{
    let mut data_open = true;
    loop {
        let m = tokio::select! {
            biased;
            m = ctl.recv() => match m { Some(m) => m, None => return },
            m = data.recv(), if data_open => match m { Some(m) => m, None => { data_open = false; continue } },
        };
        if sink.send(m).await.is_err() {
            return;
        }
    }
}

impl Session {
    fn new(ws: Ws, stdin: bool, liveness: Duration) -> Session {
        let (sink, stream) = ws.split();
        // Bounded: a slow agent pushes back on the stdin writer.
        let (data_tx, data_rx) = mpsc::channel::<Message>(8);
        let (ctl, ctl_rx) = mpsc::unbounded_channel::<Message>();
        let writer = tokio::spawn(write_loop(sink, data_rx, ctl_rx));
        let stdin = stdin.then_some(Stdin { tx: Some(data_tx) });
        Session { stream, stdin, ctl, writer, done: false, heard: Instant::now(), liveness }
    }

    /// The stdin writer, once, when the command was made [`Command::interactive`] or with stdin bytes.
    pub fn stdin(&mut self) -> Option<Stdin> {
        self.stdin.take()
    }

    /// A handle for signals and resizes.
    pub fn control(&self) -> Control {
        Control { tx: self.ctl.clone() }
    }

    /// When the agent last sent anything at all: output, a ping (every 20 s), or the answer to the ping that
    /// follows each [`Control::signal`]. Nothing since a signal, for some seconds, means the link is dead.
    pub fn last_heard(&self) -> std::time::Instant {
        self.heard.into_std()
    }

    /// The next event; `Ok(None)` after [`Event::Exit`]. A command that could not run, or a container that
    /// stopped under it, ends the session with the matching [`Error`] instead, and so does an agent that
    /// sends nothing, not even a ping, for the liveness timeout ([`Error::SessionLost`], see
    /// [`Client::liveness_timeout`]). Cancel-safe: usable in `tokio::select!` next to signals and timers.
    pub async fn next_event(&mut self) -> Result<Option<Event>, Error> {
        while !self.done {
            // Measured from the last message rather than from this call, so that a caller's select! loop that
            // wakes for signals or resizes does not keep pushing the deadline away.
            let next = match self.heard.checked_add(self.liveness) {
                Some(deadline) => tokio::time::timeout_at(deadline, self.stream.next()).await,
                // A timeout beyond what the clock can count: no timeout.
                None => Ok(self.stream.next().await),
            };
            let Ok(next) = next else {
                let secs = self.liveness.as_secs_f64();
                return Err(self.end(Error::SessionLost(format!(
                    "nothing from the agent for {secs}s (no output, no ping): the link to it is down"
                ))));
            };
            self.heard = Instant::now();
            let m = match next {
                Some(Ok(m)) => m,
                Some(Err(e)) => return Err(self.end(Error::SessionLost(broken(&e)))),
                None => {
                    return Err(self.end(Error::SessionLost("closed before the command's exit status arrived".into())))
                }
            };
            let data = match m {
                Message::Binary(b) => b,
                Message::Close(_) => {
                    return Err(self.end(Error::SessionLost("closed before the command's exit status arrived".into())))
                }
                _ => continue,
            };
            let Ok((ch, payload)) = split_frame(&data) else { continue };
            let ev = match ch {
                channel::STDOUT => Event::Stdout(payload.to_vec()),
                channel::STDERR => Event::Stderr(payload.to_vec()),
                channel::PROGRESS => Event::Progress(String::from_utf8_lossy(payload).into_owned()),
                channel::STARTED => match serde_json::from_slice(payload) {
                    Ok(s) => Event::Started(s),
                    Err(_) => continue,
                },
                channel::STATUS => {
                    let status = serde_json::from_slice::<Status>(payload)
                        .map_err(|e| Error::Protocol(format!("bad exit status from the agent: {e}")));
                    return match status {
                        Ok(Status::Exited { code }) => self.finish(Ended::Exited(code)),
                        Ok(Status::Signaled { signal }) => self.finish(Ended::Signaled(signal)),
                        Ok(Status::Error { code, message }) => Err(self.end(Error::from_wire(code, message))),
                        Err(e) => Err(self.end(e)),
                    };
                }
                _ => continue,
            };
            return Ok(Some(ev));
        }
        Ok(None)
    }

    fn finish(&mut self, s: Ended) -> Result<Option<Event>, Error> {
        self.done = true;
        self.writer.abort();
        Ok(Some(Event::Exit(ExitStatus(s))))
    }

    fn end(&mut self, e: Error) -> Error {
        self.done = true;
        self.writer.abort();
        e
    }

    /// Reads the session to its end, collecting stdout and stderr.
    pub async fn output(mut self) -> Result<Output, Error> {
        let (mut stdout, mut stderr) = (Vec::new(), Vec::new());
        loop {
            match self.next_event().await? {
                Some(Event::Stdout(b)) => stdout.extend_from_slice(&b),
                Some(Event::Stderr(b)) => stderr.extend_from_slice(&b),
                Some(Event::Exit(status)) => return Ok(Output { status, stdout, stderr }),
                Some(_) => {}
                None => return Err(Error::Protocol("the session had already ended".into())),
            }
        }
    }

    /// Reads the session to its end, discarding output, and returns how the command ended.
    pub async fn wait(self) -> Result<ExitStatus, Error> {
        self.output().await.map(|o| o.status)
    }
}

/// What a broken WebSocket means to a user: a connection closed without TLS's goodbye (the agent or the link
/// died) is said plainly rather than with the TLS library's wording and its link to its documentation.
fn broken(e: &tokio_tungstenite::tungstenite::Error) -> String {
    use tokio_tungstenite::tungstenite::Error as E;
    match e {
        E::Io(io) if io.kind() == std::io::ErrorKind::UnexpectedEof => {
            "the connection closed before the command's exit status arrived".into()
        }
        E::Io(io) => format!("the connection broke: {}", io.kind()),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use crate::{Client, Error, TlsOptions};

    #[tokio::test]
    async fn malformed_requests_fail_before_connecting() {
        // Nothing listens on port 1: these must fail on their own, not as unreachable.
        let c = Client::new("https://127.0.0.1:1", Some("t".into()), TlsOptions::system()).unwrap();
        for key in ["", "A=B", "A\0"] {
            let e = c.command("t", ["env"]).env(key, "v").spawn().await.err().unwrap();
            assert!(matches!(e, Error::InvalidRequest(_)), "{key:?}: {e:?}");
        }
        let e = c.exec("t", Vec::<String>::new()).await.unwrap_err();
        assert!(matches!(e, Error::InvalidRequest(_)), "{e:?}");
        let e = c.exec("t", ["true"]).await.unwrap_err();
        assert!(matches!(e, Error::Unreachable { .. }), "{e:?}");
    }
}
