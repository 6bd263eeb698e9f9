//! The exec helper: a fresh single-threaded process (run from the sealed memfd) that joins the container and
//! forks the user's command into it.
//!
//! File descriptors on entry: 0-2 the session's stdio (pipes, or /dev/null with a TTY), 3 control (agent ->
//! helper: the spec, then 4-byte records), 4 events (helper -> agent: JSON lines), 5 console socket (TTY only:
//! the pty master goes back over it with SCM_RIGHTS).

use super::{CapSets, HelperEvent, HelperSpec, CTRL_SIGNAL};
use dcos_exec_proto::{ErrorCode, Status};
use nix::sys::signal::{SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use std::ffi::CString;
use std::io::{Read, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::time::{Duration, Instant};

const CTRL_FD: RawFd = 3;
const EVENT_FD: RawFd = 4;
const CONSOLE_FD: RawFd = 5;

/// Stages the forked child reports a failure from.
const STAGE_CGROUP: u32 = 1;
const STAGE_TTY: u32 = 2;
const STAGE_RLIMIT: u32 = 3;
const STAGE_CREDS: u32 = 4;
const STAGE_CAPS: u32 = 5;
const STAGE_CWD: u32 = 6;
const STAGE_EXEC: u32 = 7;
const STAGE_SETSID: u32 = 8;
const KIND_PID: u32 = 1;
const KIND_FAIL: u32 = 2;

struct Fail(ErrorCode, String);

fn fail<E: std::fmt::Display>(code: ErrorCode, what: &str) -> impl FnOnce(E) -> Fail + '_ {
    move |e| Fail(code, format!("{what}: {e}"))
}

/// Entry point; never returns.
pub fn main() -> ! {
    // SAFETY: plain prctl calls on this process. Not dumpable while we hold host resources (CVE-2016-9962):
    // /proc/PID/{mem,fd,environ} of this process stay closed to anything in the container.
    unsafe {
        libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0);
        // Whatever the agent left open past fd 5 must not survive into the container.
        libc::syscall(libc::SYS_close_range, 6u32, u32::MAX, 0u32);
    }
    // A panic must not print into the session's stderr (fd 2 is the user's stream): report it as the status.
    std::panic::set_hook(Box::new(|info| {
        let ev =
            HelperEvent::Finished(Status::Error { code: ErrorCode::Internal, message: format!("exec helper: {info}") });
        if let Ok(mut line) = serde_json::to_vec(&ev) {
            line.push(b'\n');
            // SAFETY: write(2) of a buffer we own to our event fd.
            unsafe { libc::write(EVENT_FD, line.as_ptr().cast(), line.len()) };
        }
    }));
    // SAFETY: fds 3 and 4 are ours by the calling convention above and used only through these handles.
    let mut ctrl = unsafe { std::fs::File::from_raw_fd(CTRL_FD) };
    let mut events = unsafe { std::fs::File::from_raw_fd(EVENT_FD) };
    let spec = match read_spec(&mut ctrl) {
        Ok(s) => s,
        Err(e) => {
            emit(&mut events, &HelperEvent::Finished(Status::Error { code: ErrorCode::Internal, message: e }));
            std::process::exit(1)
        }
    };
    let status = match run(&spec, &mut ctrl, &mut events) {
        Ok(s) => s,
        Err(Fail(code, message)) => Status::Error { code, message },
    };
    emit(&mut events, &HelperEvent::Finished(status));
    std::process::exit(0)
}

fn emit(events: &mut std::fs::File, ev: &HelperEvent) {
    if let Ok(mut line) = serde_json::to_vec(ev) {
        line.push(b'\n');
        let _ = events.write_all(&line);
    }
}

fn read_spec(ctrl: &mut std::fs::File) -> Result<HelperSpec, String> {
    let mut len = [0u8; 4];
    ctrl.read_exact(&mut len).map_err(|e| format!("reading spec length: {e}"))?;
    let len = u32::from_le_bytes(len) as usize;
    if len > 1 << 20 {
        return Err("spec too large".into());
    }
    let mut buf = vec![0u8; len];
    ctrl.read_exact(&mut buf).map_err(|e| format!("reading spec: {e}"))?;
    serde_json::from_slice(&buf).map_err(|e| format!("decoding spec: {e}"))
}

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
    std::fs::metadata(path).ok().map(|m| {
        use std::os::unix::fs::MetadataExt;
        (m.dev(), m.ino())
    })
}

fn run(spec: &HelperSpec, ctrl: &mut std::fs::File, events: &mut std::fs::File) -> Result<Status, Fail> {
    let pid = spec.init_pid;
    // SAFETY: pidfd_open takes a pid and flags and returns a new fd or -1.
    let raw = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) } as RawFd;
    if raw < 0 {
        return Err(Fail(ErrorCode::ContainerNotRunning, format!("container init {pid} is gone")));
    }
    // SAFETY: raw is a fresh fd we own.
    let pidfd = unsafe { OwnedFd::from_raw_fd(raw) };
    // Checked after pidfd_open: from here on the pid cannot be recycled under us.
    if crate::runtime::proc_start_time(pid) != Some(spec.init_start) {
        return Err(Fail(ErrorCode::ContainerNotRunning, format!("container init {pid} is gone")));
    }
    let mut flags = 0;
    for (name, flag) in NAMESPACES {
        let theirs = ns_id(&format!("/proc/{pid}/ns/{name}"));
        if theirs.is_some() && theirs != ns_id(&format!("/proc/self/ns/{name}")) {
            flags |= flag;
        }
    }
    // Join the container's cgroups now, before touching anything of the container: its device controller then
    // also governs what this root process may open in there (a planted device node stays closed), and its
    // limits cover the session from the start. The child inherits them.
    for f in open_cgroups(pid)? {
        use std::io::Write as _;
        let mut f = std::fs::File::from(f);
        f.write_all(b"0").map_err(fail(ErrorCode::StartFailed, "joining the container's cgroup"))?;
    }
    // Read on the host: after setns, /proc/sys belongs to the container and could lie.
    let last_cap = std::fs::read_to_string("/proc/sys/kernel/cap_last_cap")
        .ok()
        .and_then(|s| s.trim().parse::<u32>().ok())
        .unwrap_or(40);

    // Kept to find the session's processes on the host later (by session id), whatever process groups they made.
    let host_proc = std::fs::File::open("/proc").ok().map(OwnedFd::from);

    // The debug image's overlay is built now, while the cached layer dirs are still reachable by path.
    let overlay = match &spec.debug {
        Some(d) => Some(
            super::debugfs::build_overlay(&d.layers)
                .map_err(|e| Fail(ErrorCode::StartFailed, format!("debug image: {e}")))?,
        ),
        None => None,
    };

    // Joining all namespaces in one call: the kernel orders them (user first) and the set is atomic.
    // SAFETY: setns on a valid pidfd; this process is single-threaded, as joining mnt/user requires.
    if unsafe { libc::setns(pidfd.as_raw_fd(), flags) } != 0 {
        let e = std::io::Error::last_os_error();
        if crate::runtime::proc_start_time(pid).is_none() {
            return Err(Fail(ErrorCode::ContainerNotRunning, format!("container init {pid} is gone")));
        }
        return Err(Fail(ErrorCode::StartFailed, format!("joining the container's namespaces: {e}")));
    }
    drop(pidfd);
    if let (Some(o), Some(d)) = (overlay, &spec.debug) {
        super::debugfs::enter(o, &d.target).map_err(|e| Fail(ErrorCode::StartFailed, format!("debug image: {e}")))?;
    }
    // Now inside the container's mount namespace, at its root.
    let plan = Plan::build(spec, last_cap)?;

    let (tty_slave, master) = if spec.tty { open_pty(spec, &plan)? } else { (None, None) };
    if let Some(m) = &master {
        send_fd(m.as_fd()).map_err(fail(ErrorCode::StartFailed, "handing the terminal to the agent"))?;
    }
    drop(master);

    // SIGCHLD goes through a signalfd; the child restores the mask before exec.
    let mut mask = SigSet::empty();
    mask.add(Signal::SIGCHLD);
    let old_mask = mask
        .thread_swap_mask(nix::sys::signal::SigmaskHow::SIG_BLOCK)
        .map_err(fail(ErrorCode::Internal, "sigprocmask"))?;
    let sfd = SignalFd::with_flags(&mask, SfdFlags::SFD_CLOEXEC | SfdFlags::SFD_NONBLOCK)
        .map_err(fail(ErrorCode::Internal, "signalfd"))?;

    let (err_r, err_w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(fail(ErrorCode::Internal, "pipe"))?;
    let child = ChildArgs {
        plan: &plan,
        tty_slave: tty_slave.as_ref().map(|f| f.as_raw_fd()),
        err_fd: err_w.as_raw_fd(),
        old_mask: *old_mask.as_ref(),
    };
    // SAFETY: this process is single-threaded; the child runs only `child_main`, which makes raw syscalls on
    // data prepared above and never returns.
    let child_pid = match unsafe { libc::fork() } {
        -1 => {
            let e = std::io::Error::last_os_error();
            // A pid namespace whose init is gone refuses new members (ENOMEM).
            if crate::runtime::proc_start_time(pid) != Some(spec.init_start) {
                return Err(Fail(ErrorCode::ContainerNotRunning, format!("container init {pid} is gone")));
            }
            return Err(Fail(ErrorCode::StartFailed, format!("fork: {e}")));
        }
        0 => unsafe { child_main(&child) },
        p => p,
    };
    drop(err_w);
    drop(tty_slave);

    // The child first reports its pid in the container's pid namespace, then either execs (EOF) or fails.
    let mut errf = std::fs::File::from(err_r);
    let mut rec = [0u8; 12];
    let mut inner_pid = 0;
    loop {
        match read_record(&mut errf, &mut rec) {
            Some((KIND_PID, _, v)) => inner_pid = v,
            Some((KIND_FAIL, stage, errno)) => {
                // SAFETY: waiting for our own child.
                unsafe { libc::waitpid(child_pid, std::ptr::null_mut(), 0) };
                return Err(stage_error(stage, errno, &plan));
            }
            _ => break,
        }
    }
    if inner_pid == 0 {
        // The child died before it could even report its pid (killed with its namespace, most likely).
        // SAFETY: waiting for our own child.
        unsafe { libc::waitpid(child_pid, std::ptr::null_mut(), 0) };
        if crate::runtime::proc_start_time(pid) != Some(spec.init_start) {
            return Err(Fail(ErrorCode::ContainerNotRunning, format!("container init {pid} is gone")));
        }
        return Err(Fail(ErrorCode::StartFailed, "the process died before it started".into()));
    }
    emit(events, &HelperEvent::Started { pid: inner_pid });
    let session = Session { leader: child_pid, proc_dir: host_proc };
    Ok(supervise(&session, ctrl, &sfd, Duration::from_millis(spec.grace_ms)))
}

fn read_record(f: &mut std::fs::File, rec: &mut [u8; 12]) -> Option<(u32, u32, i32)> {
    f.read_exact(rec).ok()?;
    let w = |i: usize| [rec[i], rec[i + 1], rec[i + 2], rec[i + 3]];
    Some((u32::from_ne_bytes(w(0)), u32::from_ne_bytes(w(4)), i32::from_ne_bytes(w(8))))
}

fn stage_error(stage: u32, errno: i32, plan: &Plan) -> Fail {
    let e = std::io::Error::from_raw_os_error(errno);
    let argv0 = &plan.argv0;
    match stage {
        STAGE_EXEC if errno == libc::ENOENT => {
            Fail(ErrorCode::CommandNotFound, format!("{argv0}: no such file or directory in the container"))
        }
        STAGE_EXEC if matches!(errno, libc::EACCES | libc::ENOEXEC | libc::EISDIR | libc::EPERM) => {
            Fail(ErrorCode::CommandNotExecutable, format!("{argv0}: cannot execute: {e}"))
        }
        STAGE_EXEC => Fail(ErrorCode::StartFailed, format!("exec {argv0}: {e}")),
        STAGE_CWD => Fail(ErrorCode::StartFailed, format!("working directory {}: {e}", plan.cwd_display)),
        STAGE_CGROUP => Fail(ErrorCode::StartFailed, format!("joining the container's cgroup: {e}")),
        STAGE_TTY => Fail(ErrorCode::StartFailed, format!("attaching the terminal: {e}")),
        STAGE_RLIMIT => Fail(ErrorCode::StartFailed, format!("setting rlimits: {e}")),
        STAGE_CREDS => Fail(ErrorCode::StartFailed, format!("switching to uid {} gid {}: {e}", plan.uid, plan.gid)),
        STAGE_CAPS => Fail(ErrorCode::StartFailed, format!("setting capabilities: {e}")),
        STAGE_SETSID => Fail(ErrorCode::StartFailed, format!("setsid: {e}")),
        _ => Fail(ErrorCode::StartFailed, format!("stage {stage}: {e}")),
    }
}

/// Waits for the child, forwarding signals from the agent. Control EOF means the client is gone: SIGHUP the
/// session's process group, then SIGKILL it after the grace period.
/// The processes of one exec session: the child (a session leader, via setsid) and everything in its session,
/// including process groups a job-control shell made.
struct Session {
    leader: libc::pid_t,
    proc_dir: Option<OwnedFd>,
}

impl Session {
    /// Sends `sig` to every live process of the session (0 probes); returns how many there were.
    fn signal(&self, sig: libc::c_int) -> usize {
        // SAFETY: signalling the session's own process group. Its answer only counts without /proc, because
        // zombies answer a probe too.
        let group = unsafe { libc::kill(-self.leader, sig) } == 0;
        let Some(dir) = self.proc_dir.as_ref().and_then(|d| d.try_clone().ok()) else { return usize::from(group) };
        let Ok(mut dir) = nix::dir::Dir::from_fd(dir) else { return usize::from(group) };
        let dirfd = dir.as_raw_fd();
        let mut n = 0;
        for entry in dir.iter().flatten() {
            let Some(pid) = entry.file_name().to_str().ok().and_then(|s| s.parse::<libc::pid_t>().ok()) else {
                continue;
            };
            let path = format!("{pid}/stat");
            // SAFETY: dirfd belongs to `dir`, which outlives this borrow.
            let at = unsafe { BorrowedFd::borrow_raw(dirfd) };
            let flags = nix::fcntl::OFlag::O_RDONLY | nix::fcntl::OFlag::O_CLOEXEC;
            let Ok(fd) = nix::fcntl::openat(at, path.as_str(), flags, nix::sys::stat::Mode::empty()) else {
                continue;
            };
            let mut stat = String::new();
            let _ = std::fs::File::from(fd).read_to_string(&mut stat);
            // After "pid (comm)": state, ppid, pgrp, session. Zombies are past signalling (and may never be reaped
            // by a container init that does not wait), so they do not count.
            let mut f = stat.rfind(')').map(|i| stat[i + 2..].split_whitespace()).into_iter().flatten();
            let state = f.next();
            let sid = f.nth(2).and_then(|x| x.parse::<libc::pid_t>().ok());
            // SAFETY: signalling a live process of the session just found.
            if sid == Some(self.leader)
                && state != Some("Z")
                && state != Some("X")
                && unsafe { libc::kill(pid, sig) } == 0
            {
                n += 1;
            }
        }
        n
    }
}

fn supervise(session: &Session, ctrl: &mut std::fs::File, sfd: &SignalFd, grace: Duration) -> Status {
    let child = session.leader;
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    let mut ctrl_open = true;
    let mut deadline: Option<Instant> = None;
    let mut status: Option<Status> = None;
    loop {
        if let Some(s) = &status {
            // Once terminating, wait until nothing of the session is left (or the grace ran out).
            if deadline.is_none() || session.signal(0) == 0 {
                return s.clone();
            }
        }
        let timeout = match deadline {
            Some(d) => {
                let left = d.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    session.signal(libc::SIGKILL);
                    deadline = Some(Instant::now() + Duration::from_secs(3600));
                    PollTimeout::from(50u16)
                } else {
                    PollTimeout::try_from(left.as_millis().min(50) as i32).unwrap_or(PollTimeout::NONE)
                }
            }
            None => PollTimeout::NONE,
        };
        let ctrl_fd = ctrl.as_fd();
        let mut fds = vec![PollFd::new(sfd.as_fd(), PollFlags::POLLIN)];
        if ctrl_open {
            fds.push(PollFd::new(ctrl_fd, PollFlags::POLLIN));
        }
        let _ = poll(&mut fds, timeout);
        let ctrl_ready = ctrl_open && fds.get(1).and_then(|f| f.revents()).is_some_and(|r| !r.is_empty());
        drop(fds);
        if ctrl_ready {
            let mut rec = [0u8; 4];
            match ctrl.read_exact(&mut rec) {
                Ok(()) if rec[0] == CTRL_SIGNAL && status.is_none() => {
                    // SAFETY: the child is unreaped, so its pid cannot have been reused.
                    unsafe { libc::kill(child, rec[1] as libc::c_int) };
                }
                Ok(()) => {}
                Err(_) => {
                    ctrl_open = false;
                    // The whole session gets the hangup, as a closing terminal would; stopped jobs wake to see it.
                    session.signal(libc::SIGHUP);
                    session.signal(libc::SIGCONT);
                    deadline = Some(Instant::now() + grace);
                }
            }
        }
        while let Ok(Some(_)) = sfd.read_signal() {}
        if status.is_none() {
            let mut ws = 0;
            // SAFETY: non-blocking wait for our own child.
            let r = unsafe { libc::waitpid(child, &mut ws, libc::WNOHANG) };
            if r == child {
                status = Some(if libc::WIFSIGNALED(ws) {
                    Status::Signaled { signal: libc::WTERMSIG(ws) }
                } else {
                    Status::Exited { code: libc::WEXITSTATUS(ws) }
                });
            }
        }
    }
}

/// Everything the child needs, computed before fork so that the child only makes syscalls.
struct Plan {
    argv0: String,
    cwd_display: String,
    path: CString,
    cwd: CString,
    // Keep the CStrings alive for the pointer arrays.
    _argv: Vec<CString>,
    _envp: Vec<CString>,
    argv_ptrs: Vec<*const libc::c_char>,
    envp_ptrs: Vec<*const libc::c_char>,
    uid: u32,
    gid: u32,
    groups: Vec<libc::gid_t>,
    rlimits: Vec<(libc::c_int, libc::rlimit)>,
    cap_drop: Vec<u32>,
    cap_data: [CapData; 2],
    ambient: Vec<u32>,
    no_new_privs: bool,
    umask: libc::mode_t,
}

#[repr(C)]
struct CapHeader {
    version: u32,
    pid: libc::c_int,
}

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

fn cstr(s: &str, what: &str) -> Result<CString, Fail> {
    CString::new(s).map_err(|_| Fail(ErrorCode::BadRequest, format!("{what} contains a NUL byte")))
}

impl Plan {
    fn build(spec: &HelperSpec, last_cap: u32) -> Result<Plan, Fail> {
        let mut env = spec.env.clone();
        let (uid, gid, groups) = match &spec.user_override {
            Some(u) => resolve_user(u)?,
            None => (spec.uid, spec.gid, spec.additional_gids.clone()),
        };
        if !env.iter().any(|e| e.starts_with("HOME=")) {
            let home =
                passwd_entries().into_iter().find(|p| p.uid == uid).map(|p| p.home).unwrap_or_else(|| "/".into());
            env.push(format!("HOME={home}"));
        }
        let argv0 = spec.args.first().cloned().ok_or_else(|| Fail(ErrorCode::BadRequest, "empty command".into()))?;
        let path = if argv0.contains('/') {
            argv0.clone()
        } else {
            let path_var = env
                .iter()
                .find_map(|e| e.strip_prefix("PATH="))
                .unwrap_or("/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin");
            lookup_path(&argv0, path_var).ok_or_else(|| {
                Fail(ErrorCode::CommandNotFound, format!("{argv0:?}: executable file not found in $PATH"))
            })?
        };
        let argv = spec.args.iter().map(|a| cstr(a, "an argument")).collect::<Result<Vec<_>, _>>()?;
        let envp = env.iter().map(|a| cstr(a, "an environment variable")).collect::<Result<Vec<_>, _>>()?;
        let mut argv_ptrs: Vec<_> = argv.iter().map(|c| c.as_ptr()).collect();
        argv_ptrs.push(std::ptr::null());
        let mut envp_ptrs: Vec<_> = envp.iter().map(|c| c.as_ptr()).collect();
        envp_ptrs.push(std::ptr::null());
        let caps: &CapSets = &spec.caps;
        let cap_drop = (0..=last_cap).filter(|c| !caps.bounding.contains(c)).collect();
        let mut cap_data = [CapData::default(); 2];
        for (set, field) in [(&caps.effective, 0), (&caps.permitted, 1), (&caps.inheritable, 2)] {
            for &c in set.iter().filter(|&&c| c <= last_cap) {
                let d = &mut cap_data[(c / 32) as usize];
                let bit = 1u32 << (c % 32);
                match field {
                    0 => d.effective |= bit,
                    1 => d.permitted |= bit,
                    _ => d.inheritable |= bit,
                }
            }
        }
        Ok(Plan {
            cwd_display: spec.cwd.clone(),
            cwd: cstr(&spec.cwd, "the working directory")?,
            path: cstr(&path, "the command")?,
            argv0,
            _argv: argv,
            _envp: envp,
            argv_ptrs,
            envp_ptrs,
            uid,
            gid,
            groups,
            rlimits: spec
                .rlimits
                .iter()
                .map(|r| (r.resource, libc::rlimit { rlim_cur: r.soft, rlim_max: r.hard }))
                .collect(),
            cap_drop,
            cap_data,
            // The kernel only raises ambient caps that are permitted and inheritable; runc skips the others too.
            ambient: caps
                .ambient
                .iter()
                .copied()
                .filter(|c| *c <= last_cap && caps.permitted.contains(c) && caps.inheritable.contains(c))
                .collect(),
            no_new_privs: spec.no_new_privs,
            umask: spec.umask as libc::mode_t,
        })
    }
}

fn lookup_path(name: &str, path_var: &str) -> Option<String> {
    use std::os::unix::fs::PermissionsExt;
    let mut fallback = None;
    for dir in path_var.split(':') {
        let dir = if dir.is_empty() { "." } else { dir };
        let cand = format!("{}/{}", dir.trim_end_matches('/'), name);
        if let Ok(m) = std::fs::metadata(&cand) {
            if m.is_file() && m.permissions().mode() & 0o111 != 0 {
                return Some(cand);
            }
            // Found but not executable: exec it anyway so the error is 126, as in a shell.
            fallback.get_or_insert(cand);
        }
    }
    fallback
}

/// Reads a small text file of the container. The container controls it: a FIFO would hang a plain read and a
/// huge file would eat memory, so only a regular file, opened non-blocking, and at most 4 MiB of it, is read.
fn read_container_file(path: &str) -> String {
    use std::os::unix::fs::OpenOptionsExt;
    let Ok(f) = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY | libc::O_CLOEXEC)
        .open(path)
    else {
        return String::new();
    };
    if !f.metadata().is_ok_and(|m| m.is_file()) {
        return String::new();
    }
    let mut buf = Vec::new();
    let _ = f.take(4 << 20).read_to_end(&mut buf);
    String::from_utf8_lossy(&buf).into_owned()
}

struct PasswdEntry {
    name: String,
    uid: u32,
    gid: u32,
    home: String,
}

fn passwd_entries() -> Vec<PasswdEntry> {
    let text = read_container_file("/etc/passwd");
    text.lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            Some(PasswdEntry {
                name: f.first()?.to_string(),
                uid: f.get(2)?.parse().ok()?,
                gid: f.get(3)?.parse().ok()?,
                home: f.get(5).unwrap_or(&"/").to_string(),
            })
        })
        .collect()
}

/// (name, gid, members) of the container's /etc/group.
fn group_entries() -> Vec<(String, u32, Vec<String>)> {
    let text = read_container_file("/etc/group");
    text.lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            let members = f.get(3).map(|m| m.split(',').filter(|s| !s.is_empty()).map(String::from).collect());
            Some((f.first()?.to_string(), f.get(2)?.parse().ok()?, members.unwrap_or_default()))
        })
        .collect()
}

/// `-u USER[:GROUP]`, names resolved in the container's /etc/passwd and /etc/group, as `docker exec -u` does.
fn resolve_user(spec: &str) -> Result<(u32, u32, Vec<u32>), Fail> {
    let (user, group) = match spec.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (spec, None),
    };
    let users = passwd_entries();
    let entry = users.iter().find(|p| p.name == user);
    let uid = match (user.parse::<u32>(), entry) {
        (Ok(n), _) => n,
        (_, Some(p)) => p.uid,
        _ => return Err(Fail(ErrorCode::BadRequest, format!("no user {user:?} in the container's /etc/passwd"))),
    };
    let entry = entry.or_else(|| users.iter().find(|p| p.uid == uid));
    let groups = group_entries();
    let gid =
        match group {
            Some(g) => match g.parse::<u32>() {
                Ok(n) => n,
                Err(_) => groups.iter().find(|(n, _, _)| n == g).map(|(_, id, _)| *id).ok_or_else(|| {
                    Fail(ErrorCode::BadRequest, format!("no group {g:?} in the container's /etc/group"))
                })?,
            },
            None => entry.map(|p| p.gid).unwrap_or(0),
        };
    let name = entry.map(|p| p.name.as_str()).unwrap_or("");
    let extra = groups.iter().filter(|(_, _, m)| m.iter().any(|x| x == name)).map(|(_, id, _)| *id).collect();
    Ok((uid, gid, extra))
}

/// Finds the cgroup.procs files of every hierarchy the container's init is in, opened now (on the host view)
/// so the child can join by writing "0" after it has entered the container.
fn open_cgroups(pid: i32) -> Result<Vec<OwnedFd>, Fail> {
    let cg = std::fs::read_to_string(format!("/proc/{pid}/cgroup"))
        .map_err(fail(ErrorCode::ContainerNotRunning, "reading the container's cgroups"))?;
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").map_err(fail(ErrorCode::Internal, "mountinfo"))?;
    let mut out = Vec::new();
    for line in cg.lines() {
        let mut parts = line.splitn(3, ':');
        let (Some(_), Some(ctrls), Some(path)) = (parts.next(), parts.next(), parts.next()) else {
            continue;
        };
        let Some(dir) = cgroup_dir(&mounts, ctrls, path) else {
            continue;
        };
        let procs = format!("{dir}/cgroup.procs");
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(&procs)
            .map_err(|e| Fail(ErrorCode::StartFailed, format!("opening {procs}: {e}")))?;
        out.push(OwnedFd::from(f));
    }
    Ok(out)
}

/// The directory of cgroup `path` in the hierarchy with controllers `ctrls` ("" means cgroup v2).
fn cgroup_dir(mountinfo: &str, ctrls: &str, path: &str) -> Option<String> {
    for m in mountinfo.lines() {
        let (left, right) = m.split_once(" - ")?;
        let l: Vec<&str> = left.split(' ').collect();
        let r: Vec<&str> = right.split(' ').collect();
        let (root, point) = (*l.get(3)?, *l.get(4)?);
        let fstype = *r.first()?;
        let opts = r.get(2).copied().unwrap_or("");
        let hit = if ctrls.is_empty() {
            fstype == "cgroup2"
        } else {
            fstype == "cgroup" && ctrls.split(',').all(|c| opts.split(',').any(|o| o == c))
        };
        if hit {
            // Component-wise: mount root /sub is a prefix of /sub/c1, not of /subother.
            let rel = match path.strip_prefix(root) {
                Some(r) if root == "/" || r.is_empty() || r.starts_with('/') => r,
                _ => path,
            };
            let rel = rel.trim_start_matches('/');
            return Some(if rel.is_empty() { point.to_string() } else { format!("{point}/{rel}") });
        }
    }
    None
}

/// Opens a pseudo-terminal from the container's own /dev/ptmx, so the slave is one of its /dev/pts entries.
fn open_pty(spec: &HelperSpec, plan: &Plan) -> Result<(Option<OwnedFd>, Option<OwnedFd>), Fail> {
    use nix::fcntl::OFlag;
    let flags = OFlag::O_RDWR | OFlag::O_NOCTTY | OFlag::O_CLOEXEC;
    let master =
        nix::pty::posix_openpt(flags).map_err(fail(ErrorCode::StartFailed, "opening the container's /dev/ptmx"))?;
    nix::pty::grantpt(&master).map_err(fail(ErrorCode::StartFailed, "grantpt"))?;
    nix::pty::unlockpt(&master).map_err(fail(ErrorCode::StartFailed, "unlockpt"))?;
    // The peer of this very master (TIOCGPTPEER), not whatever the container put at /dev/pts/N.
    // SAFETY: TIOCGPTPEER takes open flags and returns a new fd for the slave, or -1.
    let raw =
        unsafe { libc::ioctl(master.as_raw_fd(), libc::TIOCGPTPEER, libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC) };
    if raw < 0 {
        return Err(Fail(ErrorCode::StartFailed, format!("opening the terminal: {}", std::io::Error::last_os_error())));
    }
    // SAFETY: the ioctl returned a new fd that nothing else owns.
    let slave = unsafe { OwnedFd::from_raw_fd(raw) };
    // The session's user owns its terminal, as login does.
    let _ = nix::unistd::fchown(&slave, Some(plan.uid.into()), Some(plan.gid.into()));
    let _ = nix::sys::stat::fchmod(&slave, nix::sys::stat::Mode::from_bits_truncate(0o620));
    if let Some(sz) = spec.size {
        let ws = libc::winsize { ws_row: sz.height, ws_col: sz.width, ws_xpixel: 0, ws_ypixel: 0 };
        // SAFETY: TIOCSWINSZ reads one winsize from a valid pointer.
        unsafe { libc::ioctl(master.as_raw_fd(), libc::TIOCSWINSZ, &ws) };
    }
    // SAFETY: into_raw_fd hands over ownership of a valid fd.
    let master = unsafe { OwnedFd::from_raw_fd(std::os::fd::IntoRawFd::into_raw_fd(master)) };
    Ok((Some(slave), Some(master)))
}

fn send_fd(fd: BorrowedFd<'_>) -> nix::Result<()> {
    use nix::sys::socket::{sendmsg, ControlMessage, MsgFlags, UnixAddr};
    let fds = [fd.as_raw_fd()];
    let iov = [std::io::IoSlice::new(b"m")];
    sendmsg::<UnixAddr>(CONSOLE_FD, &iov, &[ControlMessage::ScmRights(&fds)], MsgFlags::empty(), None)?;
    Ok(())
}

struct ChildArgs<'a> {
    plan: &'a Plan,
    tty_slave: Option<RawFd>,
    err_fd: RawFd,
    old_mask: libc::sigset_t,
}

fn report(fd: RawFd, kind: u32, stage: u32, value: i32) {
    let mut rec = [0u8; 12];
    rec[..4].copy_from_slice(&kind.to_ne_bytes());
    rec[4..8].copy_from_slice(&stage.to_ne_bytes());
    rec[8..].copy_from_slice(&value.to_ne_bytes());
    // SAFETY: write(2) of a stack buffer; async-signal-safe.
    unsafe { libc::write(fd, rec.as_ptr().cast(), rec.len()) };
}

/// Runs in the forked child, inside the container's pid namespace. Only async-signal-safe calls: every
/// allocation happened in `Plan::build`.
unsafe fn child_main(a: &ChildArgs<'_>) -> ! {
    let p = a.plan;
    let die = |stage: u32| -> ! {
        report(a.err_fd, KIND_FAIL, stage, *libc::__errno_location());
        libc::_exit(127)
    };
    // Die with the helper from the start; the credential switch below clears this, so it is set again after it.
    libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0);
    libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    libc::sigprocmask(libc::SIG_SETMASK, &a.old_mask, std::ptr::null_mut());
    report(a.err_fd, KIND_PID, 0, libc::getpid());
    if libc::setsid() < 0 {
        die(STAGE_SETSID);
    }
    if let Some(s) = a.tty_slave {
        if libc::ioctl(s, libc::TIOCSCTTY, 0) < 0 {
            die(STAGE_TTY);
        }
        for target in 0..3 {
            if libc::dup2(s, target) < 0 {
                die(STAGE_TTY);
            }
        }
    }
    for (res, lim) in &p.rlimits {
        if libc::setrlimit(*res as _, lim) != 0 {
            die(STAGE_RLIMIT);
        }
    }
    // Bounding set first: dropping needs CAP_SETPCAP, which the uid switch may take away.
    for &c in &p.cap_drop {
        if libc::prctl(libc::PR_CAPBSET_DROP, c as libc::c_ulong, 0, 0, 0) != 0
            && *libc::__errno_location() != libc::EINVAL
        {
            die(STAGE_CAPS);
        }
    }
    libc::prctl(libc::PR_SET_KEEPCAPS, 1, 0, 0, 0);
    if libc::setgroups(p.groups.len(), p.groups.as_ptr()) != 0
        || libc::setresgid(p.gid, p.gid, p.gid) != 0
        || libc::setresuid(p.uid, p.uid, p.uid) != 0
    {
        die(STAGE_CREDS);
    }
    libc::prctl(libc::PR_SET_KEEPCAPS, 0, 0, 0, 0);
    let hdr = CapHeader { version: 0x2008_0522, pid: 0 };
    if libc::syscall(libc::SYS_capset, &hdr as *const CapHeader, p.cap_data.as_ptr()) != 0 {
        die(STAGE_CAPS);
    }
    libc::prctl(libc::PR_CAP_AMBIENT, libc::PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0);
    for &c in &p.ambient {
        if libc::prctl(libc::PR_CAP_AMBIENT, libc::PR_CAP_AMBIENT_RAISE, c as libc::c_ulong, 0, 0) != 0 {
            die(STAGE_CAPS);
        }
    }
    if p.no_new_privs && libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 {
        die(STAGE_CAPS);
    }
    libc::umask(p.umask);
    // cwd is set only now, inside the container's mount namespace and as the target user (CVE-2024-21626).
    if libc::chdir(p.cwd.as_ptr()) != 0 {
        die(STAGE_CWD);
    }
    // After the credential change, which would clear it.
    libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0);
    // Nothing of the host survives exec: every fd past stdio is marked close-on-exec.
    libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, 4u32 /* CLOSE_RANGE_CLOEXEC */);
    libc::execve(p.path.as_ptr(), p.argv_ptrs.as_ptr(), p.envp_ptrs.as_ptr());
    die(STAGE_EXEC)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cgroup_dirs_for_v1_and_v2_mounts() {
        let mi = "30 25 0:26 / /sys/fs/cgroup/unified rw - cgroup2 cgroup2 rw\n\
                  31 25 0:27 / /sys/fs/cgroup/cpu,cpuacct rw - cgroup cgroup rw,cpu,cpuacct\n\
                  32 25 0:28 /sub /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory\n";
        assert_eq!(cgroup_dir(mi, "", "/c1").as_deref(), Some("/sys/fs/cgroup/unified/c1"));
        assert_eq!(cgroup_dir(mi, "cpu,cpuacct", "/c1").as_deref(), Some("/sys/fs/cgroup/cpu,cpuacct/c1"));
        assert_eq!(cgroup_dir(mi, "memory", "/sub/c1").as_deref(), Some("/sys/fs/cgroup/memory/c1"));
        assert_eq!(cgroup_dir(mi, "pids", "/c1"), None);
        // A mount root is a prefix by components only.
        assert_eq!(cgroup_dir(mi, "memory", "/subother/c1").as_deref(), Some("/sys/fs/cgroup/memory/subother/c1"));
    }

    #[test]
    fn path_lookup_prefers_executables() {
        use std::os::unix::fs::PermissionsExt;
        let d = tempfile::tempdir().unwrap();
        let (a, b) = (d.path().join("a"), d.path().join("b"));
        std::fs::create_dir_all(&a).unwrap();
        std::fs::create_dir_all(&b).unwrap();
        std::fs::write(a.join("tool"), "").unwrap();
        std::fs::write(b.join("tool"), "").unwrap();
        std::fs::set_permissions(b.join("tool"), std::fs::Permissions::from_mode(0o755)).unwrap();
        let pv = format!("{}:{}", a.display(), b.display());
        assert_eq!(lookup_path("tool", &pv), Some(format!("{}/tool", b.display())));
        std::fs::remove_file(b.join("tool")).unwrap();
        assert_eq!(lookup_path("tool", &pv), Some(format!("{}/tool", a.display())));
        assert_eq!(lookup_path("nope", &pv), None);
    }

    #[test]
    fn container_files_that_are_not_regular_are_not_read() {
        let d = tempfile::tempdir().unwrap();
        let fifo = d.path().join("passwd");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o644)).unwrap();
        // Would block forever with a plain read.
        assert_eq!(read_container_file(fifo.to_str().unwrap()), "");
        let f = d.path().join("group");
        std::fs::write(&f, "root:x:0:\n").unwrap();
        assert_eq!(read_container_file(f.to_str().unwrap()), "root:x:0:\n");
    }
}
