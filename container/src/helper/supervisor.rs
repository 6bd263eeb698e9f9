//! The supervisor: on the host, invisible to the container. Starts the joiner, learns from it which child it
//! forked, learns from the child whether `execve` succeeded, then watches the session to its end.

use super::joiner::{self, Joiner};
use super::{CONTROL_FD, EVENTS_FD, FIRST_LAYER_FD};
use crate::channel::{self, ChildFailure, Control, Event, JoinReport, REPORT_PAGE};
use crate::error::StartError;
use crate::spec::ExecSpec;
use dcos_exec_proto::Status;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::signal::{SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use std::fs::File;
use std::io::Read;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::time::{Duration, Instant};

/// Namespaces, in `setns(pidfd, ...)` flag form, with their /proc/PID/ns names.
const NAMESPACES: &[(&str, libc::c_int)] = &[
    ("user", libc::CLONE_NEWUSER),
    ("mnt", libc::CLONE_NEWNS),
    ("pid", libc::CLONE_NEWPID),
    ("net", libc::CLONE_NEWNET),
    ("ipc", libc::CLONE_NEWIPC),
    ("uts", libc::CLONE_NEWUTS),
    ("cgroup", libc::CLONE_NEWCGROUP),
    ("time", libc::CLONE_NEWTIME),
];

fn ns_id(path: &str) -> Option<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path).ok().map(|m| (m.dev(), m.ino()))
}

fn emit(events: &mut File, ev: &Event) {
    #[allow(clippy::let_underscore_must_use, reason = "the events pipe is the only way to tell the agent anything")]
    let _ = channel::write(events, ev);
}

/// Entry point of the helper process; never returns.
pub fn main() -> ! {
    // SAFETY: prctl on this process. Not dumpable while we hold host resources (CVE-2016-9962).
    unsafe { libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0) };
    // A panic must not print into the session's stderr (fd 2 is the user's stream): it becomes the status.
    std::panic::set_hook(Box::new(|info| {
        let ev = Event::Finished(StartError::Internal(format!("exec helper: {info}")).status());
        let frame = channel::encode(&ev);
        // SAFETY: write(2) of a buffer we own to our event fd.
        unsafe { libc::write(EVENTS_FD, frame.as_ptr().cast(), frame.len()) };
    }));
    // SAFETY: fds 3 and 4 are ours by the calling convention ([`super`]) and used only through these handles.
    let mut ctrl = unsafe { File::from_raw_fd(CONTROL_FD) };
    // SAFETY: as above.
    let mut events = unsafe { File::from_raw_fd(EVENTS_FD) };
    let spec = match channel::read::<Control>(&mut ctrl) {
        Ok(Some(Control::Spec(s))) => *s,
        Ok(_) => std::process::exit(1),
        Err(e) => {
            emit(&mut events, &Event::Finished(StartError::internal("reading the spec", e).status()));
            std::process::exit(1)
        }
    };
    // Whatever the agent left open past what the convention gives us must not travel further.
    let Some(last) = super::fd_after(FIRST_LAYER_FD, spec.debug.as_ref().map_or(0, |d| d.fds())) else {
        emit(&mut events, &Event::Finished(StartError::Internal("too many layer fds".into()).status()));
        std::process::exit(1)
    };
    // SAFETY: close_range on fds this process does not use.
    unsafe { libc::syscall(libc::SYS_close_range, last.cast_unsigned(), u32::MAX, 0u32) };
    let status = match run(&spec, &mut ctrl, &mut events) {
        Ok(s) => s,
        Err(e) => e.status(),
    };
    emit(&mut events, &Event::Finished(status));
    std::process::exit(0)
}

fn gone(pid: i32) -> StartError {
    StartError::ContainerGone(format!("container init {pid} is gone"))
}

/// With a user namespace, the session's stdio pipes (created by the agent, owned by host root) go to the
/// container's root first, as runc's `InitializeIO` does: the joiner, root of that namespace, can then give them
/// to the session's user.
fn give_stdio_to_container_root(pid: i32) {
    let root_of = |map: &str| {
        let text = std::fs::read_to_string(format!("/proc/{pid}/{map}")).ok()?;
        crate::procfs::host_id_of_root(&text)
    };
    let (Some(uid), Some(gid)) = (root_of("uid_map"), root_of("gid_map")) else { return };
    for fd in 0..3 {
        // SAFETY: fds 0-2 are the session's stdio.
        let fd = unsafe { BorrowedFd::borrow_raw(fd) };
        if nix::sys::stat::fstat(fd).is_ok_and(|st| st.st_mode & libc::S_IFMT == libc::S_IFIFO) {
            // Best effort, as runc: a pipe left to host root reads as nobody's inside, nothing worse.
            if nix::unistd::fchown(fd, Some(uid.into()), Some(gid.into())).is_err() {
                continue;
            }
        }
    }
}

/// A shared page the joiner writes its report into (not inherited by the child: `MADV_DONTFORK`).
pub(crate) struct ReportPage {
    ptr: *mut u8,
}

impl ReportPage {
    fn new() -> Result<ReportPage, StartError> {
        // SAFETY: an anonymous shared mapping of REPORT_PAGE bytes; checked for failure below.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                REPORT_PAGE,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(StartError::internal("mmap", std::io::Error::last_os_error()));
        }
        Ok(ReportPage { ptr: ptr.cast() })
    }

    /// The page's bytes.
    pub(crate) fn bytes(&mut self) -> &mut [u8] {
        // SAFETY: the mapping is REPORT_PAGE bytes long, lives as long as self, and this process is
        // single-threaded, so no other reference exists meanwhile (the joiner writes its own copy's view
        // only while the supervisor waits for it to exit).
        unsafe { std::slice::from_raw_parts_mut(self.ptr, REPORT_PAGE) }
    }
}

/// A stopped container's session gets these fresh namespaces (no network: a new one with only `lo`).
const SANDBOX_NAMESPACES: libc::c_int =
    libc::CLONE_NEWNS | libc::CLONE_NEWPID | libc::CLONE_NEWNET | libc::CLONE_NEWIPC | libc::CLONE_NEWUTS;

/// What the joiner enters: a running container's namespaces, or fresh ones for a stopped container.
pub enum Entry {
    /// `setns` into the init's namespaces.
    Join {
        /// The init, pinned.
        pidfd: OwnedFd,
        /// `CLONE_NEW*` flags of the init's namespaces that differ from the supervisor's.
        flags: libc::c_int,
        /// `cgroup.procs` of each of the init's hierarchies, opened on the host.
        cgroups: Vec<OwnedFd>,
    },
    /// `unshare` fresh namespaces for a stopped container.
    Fresh {
        /// The namespaces to create.
        flags: libc::c_int,
        /// The container's root filesystem.
        root: OwnedFd,
        /// The clones of its directory bind mounts, in the order of the spec's `binds`; `None` for one left out.
        binds: Vec<Option<OwnedFd>>,
    },
}

fn join_running(spec: &ExecSpec) -> Result<Entry, StartError> {
    let pid = spec.init_pid;
    let pidfd = rustix::process::pidfd_open(
        rustix::process::Pid::from_raw(pid).ok_or_else(|| gone(pid))?,
        rustix::process::PidfdFlags::empty(),
    )
    .map_err(|_| gone(pid))?;
    // Checked after pidfd_open: from here on the pid cannot be recycled under us.
    if crate::procfs::start_time(pid) != Some(spec.init_start) {
        return Err(gone(pid));
    }
    let mut flags = 0;
    for (name, flag) in NAMESPACES {
        let theirs = ns_id(&format!("/proc/{pid}/ns/{name}"));
        if theirs.is_some() && theirs != ns_id(&format!("/proc/self/ns/{name}")) {
            flags |= flag;
        }
    }
    if flags & libc::CLONE_NEWUSER != 0 {
        give_stdio_to_container_root(pid);
    }
    let cgroups = crate::cgroup::open_procs(pid)?;
    // Refused rather than joined: a joiner in a frozen cgroup hangs, and its command would run at the unpause.
    if crate::cgroup::frozen(pid) {
        return Err(StartError::ContainerPaused(format!("the container (init pid {pid}) is paused, unpause it first")));
    }
    Ok(Entry::Join { pidfd, flags, cgroups })
}

fn run(spec: &ExecSpec, ctrl: &mut File, events: &mut File) -> Result<Status, StartError> {
    let entry = match spec.debug.as_ref().and_then(|d| Some((d.layers, d.stopped.as_ref()?))) {
        Some((layers, stopped)) => {
            let fd = |i: usize| {
                super::fd_after(FIRST_LAYER_FD, layers + i)
                    // SAFETY: the agent passed the stopped container's root and bind sources at these fds, right
                    // after the layers (see the module's convention); each is owned here once.
                    .map(|fd| unsafe { OwnedFd::from_raw_fd(fd) })
                    .ok_or_else(|| StartError::Internal("too many descriptors".into()))
            };
            // Cloned here, in the host's mount namespace where they are; the joiner attaches the clones.
            let setup = |e: crate::debugroot::MountError| StartError::Setup(format!("debug image: {e}"));
            let clone = |f: &OwnedFd, mode: crate::debugroot::CloneMode, what: &str| {
                crate::debugroot::detached_clone(f, mode, what).map_err(setup)
            };
            let root = match stopped.root {
                crate::spec::StoppedRoot::Dir => {
                    let f = fd(0)?;
                    // runc binds a bundle's rootfs recursively; a kernel filesystem of the host below it is refused.
                    if let Some(k) = crate::debugroot::kernel_fs_in(&f, true).map_err(setup)? {
                        return Err(StartError::Setup(format!(
                            "debug image: the container's root filesystem holds the host's {k}, which a sandbox \
                             does not show"
                        )));
                    }
                    let mode =
                        crate::debugroot::CloneMode { recursive: true, readonly: !stopped.writable, noexec: false };
                    clone(&f, mode, "the container's root")?
                }
                crate::spec::StoppedRoot::Overlay { lowers, upper } => {
                    let lower_fds = (0..lowers).map(fd).collect::<Result<Vec<_>, _>>()?;
                    let upper_fds = match upper {
                        true => Some((fd(lowers)?, fd(lowers + 1)?)),
                        false => None,
                    };
                    let borrowed: Vec<BorrowedFd<'_>> = lower_fds.iter().map(|l| l.as_fd()).collect();
                    let upper = upper_fds.as_ref().map(|(u, w)| (u.as_fd(), w.as_fd()));
                    crate::debugroot::container_overlay(&borrowed, upper)
                        .map_err(|e| StartError::Setup(format!("debug image: {e}")))?
                }
            };
            let first_bind = stopped.root.fds();
            let mut binds = Vec::new();
            for (i, b) in stopped.binds.iter().enumerate() {
                let f = fd(first_bind + i)?;
                // A kernel filesystem of the host (its procfs: `/proc/PID/root` is the host's root) must never
                // show in the sandbox: such a bind is left out, as one whose source is gone.
                if crate::debugroot::kernel_fs_in(&f, b.recursive).map_err(setup)?.is_some() {
                    binds.push(None);
                    continue;
                }
                let mode = crate::debugroot::CloneMode {
                    recursive: b.recursive,
                    readonly: !stopped.writable || b.readonly,
                    noexec: b.noexec,
                };
                binds.push(Some(clone(&f, mode, &b.destination)?));
            }
            Entry::Fresh { flags: SANDBOX_NAMESPACES, root, binds }
        }
        None => join_running(spec)?,
    };
    // Read on the host: after setns, /proc/sys belongs to the container and could lie.
    let last_cap = crate::caps::last_cap();
    let host_proc: OwnedFd = File::open("/proc").map_err(|e| StartError::internal("opening /proc", e))?.into();
    let overlay = match &spec.debug {
        Some(d) => {
            let end = super::fd_after(FIRST_LAYER_FD, d.layers)
                .ok_or_else(|| StartError::Internal(format!("{} layer fds", d.layers)))?;
            // SAFETY: the agent passed the layer directories at these fds (see the module's convention); they are
            // owned here and closed once the overlay holds its own references.
            let layers: Vec<OwnedFd> = (FIRST_LAYER_FD..end).map(|fd| unsafe { OwnedFd::from_raw_fd(fd) }).collect();
            let borrowed: Vec<BorrowedFd<'_>> = layers.iter().map(|l| l.as_fd()).collect();
            let o = crate::debugroot::build_overlay(&borrowed)
                .map_err(|e| StartError::Setup(format!("debug image: {e}")))?;
            Some(o)
        }
        None => None,
    };
    let mut page = ReportPage::new()?;
    let (traced_r, traced_w) =
        nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| StartError::internal("pipe", e))?;

    // SIGCHLD goes through a signalfd; the child empties its mask before exec.
    let mut mask = SigSet::empty();
    mask.add(Signal::SIGCHLD);
    mask.thread_block().map_err(|e| StartError::internal("sigprocmask", e))?;

    let joiner = Joiner {
        spec,
        entry,
        overlay,
        traced: traced_r,
        traced_w_in_supervisor: traced_w.as_raw_fd(),
        host_proc: host_proc.as_raw_fd(),
        last_cap,
        supervisor: nix::unistd::getpid().as_raw(),
    };
    // SAFETY: this process is single-threaded; the joiner runs `joiner::run`, which never returns.
    let joiner_pid = match unsafe { libc::fork() } {
        -1 => return Err(StartError::internal("fork", std::io::Error::last_os_error())),
        0 => joiner::run(joiner, page.bytes()),
        p => p,
    };
    // Our copies of what only the joiner needed.
    drop(joiner);
    // Traced before it does anything, so that the child it forks is traced from birth (CLONE_PTRACE):
    // exec events, exit events, and the tracees die with us.
    let opts = libc::PTRACE_O_TRACEEXEC | libc::PTRACE_O_TRACEEXIT | libc::PTRACE_O_EXITKILL;
    // SAFETY: PTRACE_SEIZE of our own child with option flags; no memory is passed.
    if unsafe { libc::ptrace(libc::PTRACE_SEIZE, joiner_pid, 0, opts as libc::c_long) } != 0 {
        let e = std::io::Error::last_os_error();
        // SAFETY: our own child, killed and reaped.
        unsafe {
            libc::kill(joiner_pid, libc::SIGKILL);
            libc::waitpid(joiner_pid, std::ptr::null_mut(), 0);
        }
        return Err(StartError::setup("tracing the exec helper (is ptrace disabled on this host?)", e));
    }
    #[allow(
        clippy::let_underscore_must_use,
        reason = "the joiner goes on only after reading this byte, and a failed write leaves it EOF once traced_w is dropped"
    )]
    let _ = nix::unistd::write(&traced_w, b"t");
    drop(traced_w);

    let sfd = SignalFd::with_flags(&mask, SfdFlags::SFD_CLOEXEC | SfdFlags::SFD_NONBLOCK)
        .map_err(|e| StartError::internal("signalfd", e))?;
    let mut sup = Supervisor {
        spec,
        ctrl,
        ctrl_open: true,
        sfd,
        host_proc,
        joiner: Some(joiner_pid),
        reported: None,
        joiner_status: None,
        child: None,
        exec_seen: false,
        failure: None,
        status: None,
        deadline: None,
    };
    sup.run(events, &mut page)
}

/// The session's state as the supervisor sees it.
struct Supervisor<'a> {
    spec: &'a ExecSpec,
    ctrl: &'a mut File,
    ctrl_open: bool,
    sfd: SignalFd,
    host_proc: OwnedFd,
    /// The joiner, until it has been reaped.
    joiner: Option<libc::pid_t>,
    /// What the joiner reported, once it exited.
    reported: Option<JoinReport>,
    /// How the joiner ended, for the message when it ends without a report.
    joiner_status: Option<Status>,
    /// The child (host pid): our only other child, traced from birth.
    child: Option<libc::pid_t>,
    /// The child's `PTRACE_EVENT_EXEC` came: the command runs (and is no longer traced).
    exec_seen: bool,
    /// What a child that failed before `execve` left in its memory.
    failure: Option<ChildFailure>,
    /// The child's exit, once reaped.
    status: Option<Status>,
    /// Set once the client is gone: when the session gets SIGKILL.
    deadline: Option<Instant>,
}

fn event(ws: libc::c_int) -> libc::c_int {
    (ws >> 16) & 0xff
}

impl Supervisor<'_> {
    fn run(&mut self, events: &mut File, page: &mut ReportPage) -> Result<Status, StartError> {
        let grace = Duration::from_millis(self.spec.grace_ms);
        let mut started = false;
        loop {
            // Before the exit is looked at: a command may run and exit between two turns.
            if !started && self.exec_seen {
                started = true;
                let pid = self.child.and_then(|c| self.inner_pid(c)).unwrap_or(0);
                emit(events, &Event::Started { pid });
            }
            if let Some(s) = &self.status {
                if !started {
                    return Err(self.start_failure());
                }
                // Once terminating, wait until nothing of the session is left (or the grace ran out).
                if self.deadline.is_none() || self.signal_session(0) == 0 {
                    return Ok(s.clone());
                }
            }
            if self.joiner.is_none() {
                match self.reported.clone() {
                    Some(JoinReport::Failed(e)) => {
                        self.kill_child();
                        return Err(e);
                    }
                    Some(JoinReport::Forked { pid }) if self.child.is_some_and(|c| c != pid) => {
                        self.kill_child();
                        return Err(StartError::Internal("the exec helper reported another process".into()));
                    }
                    Some(JoinReport::Forked { pid }) => self.child = Some(pid),
                    None if self.child.is_none() => {
                        let how = match self.joiner_status {
                            Some(Status::Signaled { signal }) => format!(" (killed by signal {signal})"),
                            Some(Status::Exited { code }) => format!(" (exit status {code})"),
                            _ => String::new(),
                        };
                        return Err(self.died(&format!("the exec helper died before the process started{how}")));
                    }
                    None => {}
                }
            }
            let timeout = match self.deadline {
                Some(d) => {
                    let left = d.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        self.signal_session(libc::SIGKILL);
                        self.deadline = Some(Instant::now() + Duration::from_secs(3600));
                        PollTimeout::from(50u16)
                    } else {
                        PollTimeout::try_from(left.as_millis().min(50) as i32).unwrap_or(PollTimeout::NONE)
                    }
                }
                None => PollTimeout::NONE,
            };
            let ctrl_ready = {
                let mut fds = vec![PollFd::new(self.sfd.as_fd(), PollFlags::POLLIN)];
                if self.ctrl_open {
                    fds.push(PollFd::new(self.ctrl.as_fd(), PollFlags::POLLIN));
                }
                #[allow(
                    clippy::let_underscore_must_use,
                    reason = "a failed poll (EINTR) reads as nothing ready; the loop polls again"
                )]
                let _ = poll(&mut fds, timeout);
                fds.get(1).and_then(|f| f.revents()).is_some_and(|r| !r.is_empty())
            };
            if ctrl_ready {
                self.read_control(grace);
            }
            while let Ok(Some(_)) = self.sfd.read_signal() {}
            self.reap(page);
        }
    }

    fn died(&self, what: &str) -> StartError {
        let pid = self.spec.init_pid;
        let sandbox = self.spec.debug.as_ref().is_some_and(|d| d.stopped.is_some());
        if !sandbox && crate::procfs::start_time(pid) != Some(self.spec.init_start) {
            return gone(pid);
        }
        StartError::Internal(what.into())
    }

    /// Why a child that exited before `execve` did.
    fn start_failure(&self) -> StartError {
        let argv0 = self.spec.args.first().map(String::as_str).unwrap_or("");
        match self.failure {
            Some(f) => f.stage.error(f.errno, argv0),
            None => self.died("the process died before it started"),
        }
    }

    fn kill_child(&mut self) {
        if let Some(c) = self.child.filter(|_| self.status.is_none()) {
            // SAFETY: our own unreaped child.
            unsafe {
                libc::kill(c, libc::SIGKILL);
                libc::waitpid(c, std::ptr::null_mut(), libc::__WALL);
            }
        }
    }

    /// Every state change of our children: the joiner and the child, stops (they are traced) and exits.
    fn reap(&mut self, page: &mut ReportPage) {
        loop {
            let mut ws = 0;
            // SAFETY: non-blocking wait for any of our children (the joiner and, through CLONE_PARENT, the child).
            let pid = unsafe { libc::waitpid(-1, &mut ws, libc::WNOHANG | libc::__WALL) };
            if pid <= 0 {
                return;
            }
            let is_joiner = Some(pid) == self.joiner;
            if libc::WIFSTOPPED(ws) {
                let mut sig = 0;
                match event(ws) {
                    libc::PTRACE_EVENT_EXEC if !is_joiner => {
                        self.child.get_or_insert(pid);
                        self.exec_seen = true;
                        // The command runs untraced, as it would under runc: its users may trace it themselves.
                        // SAFETY: detaching a tracee of ours that is in a ptrace stop.
                        unsafe { libc::ptrace(libc::PTRACE_DETACH, pid, 0, 0) };
                        continue;
                    }
                    libc::PTRACE_EVENT_EXIT if !is_joiner => {
                        self.child.get_or_insert(pid);
                        let addr = &super::child::FAILURE as *const _ as *mut libc::c_void;
                        // SAFETY: reading one word of a stopped tracee at the address of our own static, which the
                        // tracee shares by fork. errno tells a failed read from a read of -1.
                        let word = unsafe {
                            *libc::__errno_location() = 0;
                            libc::ptrace(libc::PTRACE_PEEKDATA, pid, addr, 0)
                        };
                        if word != -1 || std::io::Error::last_os_error().raw_os_error() == Some(0) {
                            self.failure = ChildFailure::decode(word.cast_unsigned());
                        }
                    }
                    // A signal on its way: hand it on.
                    0 => sig = libc::WSTOPSIG(ws),
                    // The initial stop of a child traced from birth, group stops, the joiner's own events.
                    _ => {}
                }
                if !is_joiner {
                    self.child.get_or_insert(pid);
                }
                // SAFETY: resuming a tracee of ours that is in a ptrace stop.
                unsafe { libc::ptrace(libc::PTRACE_CONT, pid, 0, sig as libc::c_long) };
                continue;
            }
            let status = if libc::WIFSIGNALED(ws) {
                Status::Signaled { signal: libc::WTERMSIG(ws) }
            } else {
                Status::Exited { code: libc::WEXITSTATUS(ws) }
            };
            if is_joiner {
                self.joiner = None;
                self.joiner_status = Some(status);
                self.reported = JoinReport::load(page.bytes());
            } else {
                self.child.get_or_insert(pid);
                self.status = Some(status);
            }
        }
    }

    /// One control frame: a signal, or end of file (the client is gone: hang up the whole session).
    fn read_control(&mut self, grace: Duration) {
        match channel::read::<Control>(self.ctrl) {
            Ok(Some(Control::Signal(n))) if (1..=64).contains(&n) && self.status.is_none() => {
                if let Some(c) = self.child {
                    // SAFETY: the child is unreaped (status is None), so its pid cannot have been reused.
                    unsafe { libc::kill(c, n) };
                }
            }
            Ok(Some(_)) => {}
            Ok(None) | Err(_) => {
                self.ctrl_open = false;
                if let Some(j) = self.joiner {
                    // SAFETY: our own unreaped child.
                    unsafe { libc::kill(j, libc::SIGKILL) };
                }
                if !self.exec_seen {
                    // Not started yet: nothing to hang up gracefully.
                    if let Some(c) = self.child.filter(|_| self.status.is_none()) {
                        // SAFETY: our own unreaped child.
                        unsafe { libc::kill(c, libc::SIGKILL) };
                    }
                }
                // The whole session gets the hangup, as a closing terminal would; stopped jobs wake to see it.
                self.signal_session(libc::SIGHUP);
                self.signal_session(libc::SIGCONT);
                self.deadline = Some(Instant::now() + grace);
            }
        }
    }

    fn inner_pid(&self, host_pid: i32) -> Option<i32> {
        let flags = nix::fcntl::OFlag::O_RDONLY | nix::fcntl::OFlag::O_CLOEXEC;
        let path = format!("{host_pid}/status");
        let fd = nix::fcntl::openat(&self.host_proc, path.as_str(), flags, nix::sys::stat::Mode::empty()).ok()?;
        let mut text = String::new();
        File::from(fd).read_to_string(&mut text).ok()?;
        crate::procfs::innermost_pid(&text)
    }

    /// Sends `sig` to every live process of the session (0 probes); returns how many there were. The session
    /// is the child's (it called setsid), found by session id on the host's /proc, so process groups that a
    /// job-control shell made are included.
    fn signal_session(&self, sig: libc::c_int) -> usize {
        let Some(leader) = self.child else { return 0 };
        // SAFETY: signalling the session's own process group. Its answer only counts without /proc, because
        // zombies answer a probe too.
        let group = unsafe { libc::kill(-leader, sig) } == 0;
        let Ok(dir) = self.host_proc.try_clone() else { return usize::from(group) };
        let Ok(mut dir) = nix::dir::Dir::from_fd(dir) else { return usize::from(group) };
        let dirfd = dir.as_raw_fd();
        let mut n = 0;
        for entry in dir.iter().flatten() {
            let Some(pid) = entry.file_name().to_str().ok().and_then(|s| s.parse::<libc::pid_t>().ok()) else {
                continue;
            };
            // SAFETY: dirfd belongs to `dir`, which outlives this borrow.
            let at = unsafe { BorrowedFd::borrow_raw(dirfd) };
            let Some(st) = crate::procfs::stat_at(at, pid) else { continue };
            // Zombies are past signalling (and may never be reaped by a container init that does not wait).
            // SAFETY: signalling a live process of the session just found.
            if st.session == leader && !st.is_dead() && unsafe { libc::kill(pid, sig) } == 0 {
                n += 1;
            }
        }
        n
    }
}
