//! The terminal side of an exec session: this process's stdin, signals and window size go up; stdout, stderr
//! and pull progress come down. The session itself is the library's [`dcos_exec::Session`].

use crate::failure::Failure;
use crate::terminal;
use dcos_exec::{Event, Session, Stdin};
use dcos_exec_proto::exit;
use std::io::Write;
use std::os::fd::FromRawFd;
use std::time::{Duration, Instant};
use tokio::signal::unix::{signal, SignalKind};

/// Reads stdin on a plain thread (a blocking read must never hold up the runtime's shutdown) and writes it to
/// the session, then closes the session's stdin. The session's bounded queue makes a slow agent push back.
fn spawn_stdin_reader(tx: Stdin) {
    std::thread::spawn(move || {
        // SAFETY: fd 0 is open for the life of the process; ManuallyDrop keeps it open after this thread.
        let mut stdin = std::mem::ManuallyDrop::new(unsafe { std::fs::File::from_raw_fd(0) });
        let mut buf = vec![0u8; 32 * 1024];
        loop {
            match std::io::Read::read(&mut *stdin, &mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if tx.blocking_write(&buf[..n]).is_err() {
                        return;
                    }
                }
            }
        }
        tx.blocking_close();
    });
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
        // The agent's progress quotes registries and image references: never raw control characters.
        let text = crate::failure::printable(&String::from_utf8_lossy(text));
        let _ = if self.tty {
            self.open = true;
            let line = match bar(&text) {
                Some(b) => format!("\r\x1b[K{b} {text}"),
                None => format!("\r\x1b[K{text}"),
            };
            err.write_all(line.as_bytes())
        } else {
            err.write_all(text.as_bytes()).and_then(|_| err.write_all(b"\n"))
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

/// How long the agent has to show it is alive after a SIGINT or SIGTERM is forwarded (the ping that follows
/// the signal is answered at once by a live agent) before a second SIGINT or SIGTERM ends `dcos` itself.
const SIGNAL_ANSWER: Duration = Duration::from_secs(3);

/// A SIGINT or SIGTERM that was forwarded and not yet answered: when, and which.
struct Pending {
    at: Instant,
    name: &'static str,
}

/// What to do with a SIGINT or SIGTERM: forward it (`None`), or, when the one before it has gone unanswered
/// for [`SIGNAL_ANSWER`] (nothing at all heard from the agent since), end with `session lost`: the link is dead,
/// and a user pressing Ctrl-C twice must not be ignored.
fn interrupt(pending: &mut Option<Pending>, heard: Instant, name: &'static str) -> Option<Failure> {
    let now = Instant::now();
    match pending {
        Some(p) if heard < p.at && now.duration_since(p.at) >= SIGNAL_ANSWER => {
            return Some(Failure::new(
                exit::SESSION_LOST,
                format!(
                    "connection to the agent lost: no answer to SIG{} for {}s; the command may go on running until \
                     the agent notices",
                    p.name,
                    now.duration_since(p.at).as_secs()
                ),
            ))
        }
        // Still within the grace: the first one stands.
        Some(p) if heard < p.at => {}
        _ => *pending = Some(Pending { at: now, name }),
    }
    None
}

/// Pumps the session until the command's status arrives; returns the exit code.
pub async fn run(mut session: Session, tty: bool) -> Result<i32, Failure> {
    if let Some(tx) = session.stdin() {
        spawn_stdin_reader(tx);
    }
    let control = session.control();
    let sig = |k| signal(k).map_err(|e| Failure::new(exit::FAILED, format!("installing signal handlers: {e}")));
    let (mut sint, mut sterm, mut shup, mut swinch) = (
        sig(SignalKind::interrupt())?,
        sig(SignalKind::terminate())?,
        sig(SignalKind::hangup())?,
        sig(SignalKind::window_change())?,
    );
    let (mut stdout, mut stderr) = (out(1), out(2));
    let mut progress = Progress { tty: terminal::is_tty(2), open: false };
    let mut pending: Option<Pending> = None;
    loop {
        tokio::select! {
            ev = session.next_event() => match ev? {
                // Our reader went away (`| head`): end like a shell pipeline would.
                Some(Event::Stdout(b)) => if stdout.write_all(&b).is_err() { return Ok(128 + libc::SIGPIPE) },
                Some(Event::Stderr(b)) => { let _ = stderr.write_all(&b); }
                Some(Event::Progress(line)) => progress.line(&mut *stderr, line.as_bytes()),
                Some(Event::Started(_)) => progress.finish(&mut *stderr),
                Some(Event::Exit(status)) => return Ok(status.shell_code()),
                Some(_) => {}
                None => return Err(Failure::new(exit::SESSION_LOST, "the session had already ended")),
            },
            _ = sint.recv() => match interrupt(&mut pending, session.last_heard(), "INT") {
                Some(f) => return Err(f),
                None => control.signal("INT"),
            },
            _ = sterm.recv() => match interrupt(&mut pending, session.last_heard(), "TERM") {
                Some(f) => return Err(f),
                None => control.signal("TERM"),
            },
            _ = shup.recv() => control.signal("HUP"),
            _ = swinch.recv(), if tty => {
                if let Some(sz) = terminal::size() {
                    control.resize(sz);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_interrupt_ends_dcos_only_when_the_first_went_unanswered() {
        let mut pending = None;
        let long_ago = Instant::now().checked_sub(Duration::from_secs(60)).unwrap_or_else(Instant::now);
        // First: forwarded.
        assert!(interrupt(&mut pending, long_ago, "INT").is_none());
        // Second, at once: still forwarded (the agent has had no time to answer).
        assert!(interrupt(&mut pending, long_ago, "INT").is_none());
        // Second, after the grace, with nothing heard: dcos ends, session lost.
        pending.as_mut().unwrap().at -= SIGNAL_ANSWER;
        let f = interrupt(&mut pending, long_ago, "TERM").unwrap();
        assert_eq!(f.exit, exit::SESSION_LOST);
        assert!(f.message.contains("SIGINT"), "{}", f.message);
        // The agent answered (heard after the first): forwarded again, a new wait starts.
        let mut pending = Some(Pending { at: Instant::now() - SIGNAL_ANSWER * 2, name: "INT" });
        assert!(interrupt(&mut pending, Instant::now(), "INT").is_none());
        assert!(pending.unwrap().at.elapsed() < SIGNAL_ANSWER);
    }

    #[test]
    fn progress_lines_with_sizes_get_a_bar() {
        assert_eq!(bar("layer 1e9172b6adfe 5.0 MiB / 20.0 MiB").as_deref(), Some("[#####...............]"));
        assert_eq!(bar("layer 1e9172b6adfe 0.0 MiB / 0.0 MiB"), None);
        assert_eq!(bar("resolving busybox"), None);
    }
}
