//! The CLI side of an exec session: stdin, signals and resizes up; stdout, stderr and the final status down.

use crate::client::{Failure, Ws};
use crate::terminal;
use dcos_exec_proto::{channel, exit, frame, split_frame, SignalRequest, Status};
use futures_util::{SinkExt, StreamExt};
use std::io::Write;
use std::os::fd::FromRawFd;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;

/// Reads stdin on a plain thread (a blocking read must never hold up the runtime's shutdown) and queues STDIN
/// frames, then the stdin close, for the writer. The bounded queue makes a slow agent push back on the reader.
fn spawn_stdin_reader(tx: mpsc::Sender<Message>) {
    std::thread::spawn(move || {
        // SAFETY: fd 0 is open for the life of the process; ManuallyDrop keeps it open after this thread.
        let mut stdin = std::mem::ManuallyDrop::new(unsafe { std::fs::File::from_raw_fd(0) });
        let mut buf = vec![0u8; 32 * 1024];
        loop {
            match std::io::Read::read(&mut *stdin, &mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if tx.blocking_send(Message::Binary(frame(channel::STDIN, &buf[..n]).into())).is_err() {
                        return;
                    }
                }
            }
        }
        let _ = tx.blocking_send(Message::Binary(frame(channel::CLOSE, &[channel::STDIN]).into()));
    });
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

fn out(fd: i32) -> std::mem::ManuallyDrop<std::fs::File> {
    // SAFETY: fds 1 and 2 are open for the life of the process; ManuallyDrop never closes them.
    std::mem::ManuallyDrop::new(unsafe { std::fs::File::from_raw_fd(fd) })
}

/// Debug-image pull progress on stderr: one updating line on a terminal, plain lines otherwise.
struct Progress {
    tty: bool,
    open: bool,
}

impl Progress {
    fn line(&mut self, err: &mut impl Write, text: &[u8]) {
        let _ = if self.tty {
            self.open = true;
            let text = String::from_utf8_lossy(text);
            let line = match bar(&text) {
                Some(b) => format!("\r\x1b[K{b} {text}"),
                None => format!("\r\x1b[K{text}"),
            };
            err.write_all(line.as_bytes())
        } else {
            err.write_all(text).and_then(|_| err.write_all(b"\n"))
        };
    }

    fn finish(&mut self, err: &mut impl Write) {
        if std::mem::take(&mut self.open) {
            let _ = err.write_all(b"\r\x1b[K");
        }
    }
}

/// A 20-cell bar for progress lines that end in "DONE / TOTAL MiB".
fn bar(text: &str) -> Option<String> {
    let (head, total) = text.strip_suffix(" MiB")?.rsplit_once(" / ")?;
    let done = head.rsplit(' ').nth(1)?.parse::<f64>().ok()?;
    let total = total.parse::<f64>().ok().filter(|t| *t > 0.0)?;
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss, reason = "a whole number in 0..=20")]
    let filled = ((done / total).clamp(0.0, 1.0) * 20.0).round() as usize;
    Some(format!("[{}{}]", "#".repeat(filled), ".".repeat(20 - filled)))
}

/// Pumps the session until the agent sends its status; returns the exit code.
pub async fn run(ws: Ws, stdin: bool, tty: bool) -> Result<i32, Failure> {
    let (sink, mut stream) = ws.split();
    let (data_tx, data_rx) = mpsc::channel::<Message>(8);
    let (ctl_tx, ctl_rx) = mpsc::unbounded_channel::<Message>();
    let writer = tokio::spawn(write_loop(sink, data_rx, ctl_rx));
    if stdin {
        spawn_stdin_reader(data_tx);
    } else {
        drop(data_tx);
    }
    let sig = |k| signal(k).map_err(|e| Failure::new(exit::FAILED, format!("installing signal handlers: {e}")));
    let (mut sint, mut sterm, mut shup, mut swinch) = (
        sig(SignalKind::interrupt())?,
        sig(SignalKind::terminate())?,
        sig(SignalKind::hangup())?,
        sig(SignalKind::window_change())?,
    );
    let (mut stdout, mut stderr) = (out(1), out(2));
    let mut status: Option<Status> = None;
    let mut progress = Progress { tty: terminal::is_tty(2), open: false };
    let lost = |e: String| Failure::new(exit::SESSION_LOST, format!("connection to the agent lost: {e}"));

    loop {
        let forward: Option<&str> = tokio::select! {
            msg = stream.next() => {
                let m = match msg {
                    Some(Ok(m)) => m,
                    Some(Err(e)) => return status.map(|s| s.exit_code()).ok_or_else(|| lost(e.to_string())),
                    None => break,
                };
                let data = match m {
                    Message::Binary(b) => b,
                    Message::Close(_) => break,
                    _ => continue,
                };
                let Ok((ch, payload)) = split_frame(&data) else { continue };
                match ch {
                    // Our reader went away (`| head`): end like a shell pipeline would.
                    channel::STDOUT if stdout.write_all(payload).is_err() => return Ok(128 + libc::SIGPIPE),
                    channel::STDERR => { let _ = stderr.write_all(payload); }
                    channel::PROGRESS => progress.line(&mut *stderr, payload),
                    channel::STARTED => progress.finish(&mut *stderr),
                    channel::STATUS => {
                        status = serde_json::from_slice(payload).ok();
                    }
                    _ => {}
                }
                None
            }
            _ = sint.recv() => Some("INT"),
            _ = sterm.recv() => Some("TERM"),
            _ = shup.recv() => Some("HUP"),
            _ = swinch.recv(), if tty => {
                if let Some(sz) = terminal::size() {
                    let j = serde_json::to_vec(&sz).unwrap_or_default();
                    let _ = ctl_tx.send(Message::Binary(frame(channel::RESIZE, &j).into()));
                }
                None
            }
        };
        if let Some(name) = forward {
            let j = serde_json::to_vec(&SignalRequest { signal: name.into() }).unwrap_or_default();
            let _ = ctl_tx.send(Message::Binary(frame(channel::SIGNAL, &j).into()));
        }
    }
    writer.abort();
    match status {
        Some(Status::Error { code, message }) => Err(Failure::new(code.exit_code(), message)),
        Some(s) => Ok(s.exit_code()),
        None => Err(lost("closed before the command's exit status arrived".into())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn progress_lines_with_sizes_get_a_bar() {
        assert_eq!(bar("layer 1e9172b6adfe 5.0 MiB / 20.0 MiB").as_deref(), Some("[#####...............]"));
        assert_eq!(bar("layer 1e9172b6adfe 0.0 MiB / 0.0 MiB"), None);
        assert_eq!(bar("resolving busybox"), None);
    }
}
