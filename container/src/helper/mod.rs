//! The exec helper: three processes, so that nothing of the host is ever in reach of the container.
//!
//! 1. The **supervisor** ([`supervisor`]) is what the agent starts (from the sealed copy of its binary). It
//!    stays on the host, in the host's pid namespace, invisible to the container. It holds the agent's control
//!    and event pipes and the host's `/proc`, forks the joiner and traces it (`PTRACE_SEIZE`) before the joiner
//!    does anything, and then watches the session: signals from the agent, the hang-up when the client is
//!    gone, the exit status.
//! 2. The **joiner** ([`joiner`]) joins the container's cgroups and namespaces, builds the debug root, resolves
//!    the user and the command inside the container's root, opens the terminal, applies rlimits, and drops to
//!    the session's credentials and capabilities. It is still in the host's pid namespace (joining a pid
//!    namespace only affects children), so the container cannot see, signal or trace it. Before it forks it
//!    closes everything but the session's stdio and the terminal.
//! 3. The **child** ([`child`]) is forked by the joiner with `CLONE_PARENT | CLONE_PTRACE` (the supervisor is
//!    its parent and its tracer) into the container's pid namespace. From its first instant it has the
//!    session's credentials, capabilities and seccomp filter, holds only stdio and the terminal, and cannot be
//!    traced by anything in the container (a process has one tracer). It makes the terminal its controlling
//!    terminal, applies AppArmor/SELinux and calls `execve`. The supervisor learns of the exec from the
//!    kernel (`PTRACE_EVENT_EXEC`) and detaches; a child that fails first leaves a
//!    [`crate::channel::ChildFailure`] word in its memory, read at its `PTRACE_EVENT_EXIT`. No descriptor
//!    carries status, so nothing in the container can forge one.
//!
//! File descriptors of the supervisor on entry: 0-2 the session's stdio (pipes, or /dev/null with a terminal),
//! [`CONTROL_FD`], [`EVENTS_FD`], [`CONSOLE_FD`] (terminal sessions), and the debug image's layer directories
//! from [`FIRST_LAYER_FD`] on.

pub mod child;
pub mod joiner;
pub mod supervisor;

use crate::spec::ExecSpec;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};

/// `argv[1]` that makes the agent binary act as the helper.
pub const HELPER_ARG: &str = "__exec-helper";
/// Agent to helper: [`crate::channel::Control`] frames.
pub const CONTROL_FD: RawFd = 3;
/// Helper to agent: [`crate::channel::Event`] frames.
pub const EVENTS_FD: RawFd = 4;
/// Terminal sessions: the pty master goes back over this unix socket.
pub const CONSOLE_FD: RawFd = 5;
/// The first of the debug image's layer directories.
pub const FIRST_LAYER_FD: RawFd = 6;

/// Fd number `base + i`, for the few fds handed on by convention (the channels, a terminal, one image's
/// layers); `None` where that is no fd number.
pub(crate) fn fd_after(base: RawFd, i: usize) -> Option<RawFd> {
    RawFd::try_from(i).ok()?.checked_add(base)
}

pub use supervisor::main;

/// A helper ready to start: the command, and the agent's ends of its channels.
pub struct Launch {
    /// The helper's command, with its fds arranged for the convention above; spawn it.
    pub command: Command,
    /// Write end of the control pipe. Dropping it tells the helper the client is gone.
    pub control: OwnedFd,
    /// Read end of the event pipe.
    pub events: OwnedFd,
    /// The agent's end of the console socket (terminal sessions).
    pub console: Option<OwnedFd>,
    /// The helper's ends, kept open until it has started.
    helper_ends: Vec<OwnedFd>,
}

impl Launch {
    /// Call once the command has been spawned: the agent's copies of the helper's ends are closed.
    pub fn spawned(&mut self) {
        self.helper_ends.clear();
    }
}

fn pipe() -> std::io::Result<(OwnedFd, OwnedFd)> {
    nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(std::io::Error::from)
}

/// Prepares the helper for `spec`, executed from `exe` (the sealed copy), with `layers` (directory fds, top
/// first) for a debug session. The session's stdio is pipes, or /dev/null with a terminal.
pub fn launch(exe: &str, spec: &ExecSpec, layers: Vec<OwnedFd>) -> std::io::Result<Launch> {
    use nix::sys::socket::{socketpair, AddressFamily, SockFlag, SockType};
    let (ctrl_r, ctrl_w) = pipe()?;
    let (ev_r, ev_w) = pipe()?;
    let console = if spec.tty {
        Some(
            socketpair(AddressFamily::Unix, SockType::Stream, None, SockFlag::SOCK_CLOEXEC)
                .map_err(std::io::Error::from)?,
        )
    } else {
        None
    };
    let mut command = Command::new(exe);
    command.arg0("dcos-exec-helper").arg(HELPER_ARG).env_clear();
    if spec.tty {
        command.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null());
    } else {
        command.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped());
    }
    // Target fd -> source fd; -1 leaves a gap (no console without a terminal).
    let mut map: Vec<RawFd> = vec![ctrl_r.as_raw_fd(), ev_w.as_raw_fd()];
    map.push(console.as_ref().map_or(-1, |(_, theirs)| theirs.as_raw_fd()));
    map.extend(layers.iter().map(|l| l.as_raw_fd()));
    // SAFETY: the closure runs between fork and exec and only calls fcntl/dup2/close (async-signal-safe) on
    // fds open in the parent. Sources first move above every target, so no dup2 clobbers a later source.
    unsafe {
        command.pre_exec(move || {
            let too_many = || std::io::Error::from_raw_os_error(libc::EMFILE);
            let floor = fd_after(103, map.len()).ok_or_else(too_many)?;
            let mut high = Vec::with_capacity(map.len());
            for &fd in &map {
                let h = if fd < 0 { -1 } else { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, floor) };
                if fd >= 0 && h < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                high.push(h);
            }
            for (i, &h) in high.iter().enumerate() {
                let target = fd_after(CONTROL_FD, i).ok_or_else(too_many)?;
                if h < 0 {
                    libc::close(target);
                } else if libc::dup2(h, target) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
    let mut helper_ends = vec![ctrl_r, ev_w];
    helper_ends.extend(layers);
    let console = console.map(|(ours, theirs)| {
        helper_ends.push(theirs);
        ours
    });
    Ok(Launch { command, control: ctrl_w, events: ev_r, console, helper_ends })
}
