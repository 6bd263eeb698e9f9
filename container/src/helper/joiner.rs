//! The joiner: enters the container, prepares everything, drops to the session's credentials, and forks the
//! child with nothing of the host left in its hands. Runs in the host's pid namespace, where the container
//! cannot see it.

use super::child::{self, Plan};
use super::CONSOLE_FD;
use crate::channel::JoinReport;
use crate::error::StartError;
use crate::resolve;
use crate::spec::ExecSpec;
use std::ffi::CString;
use std::fs::File;
use std::io::Write;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, IntoRawFd, OwnedFd, RawFd};

/// What the supervisor hands over (by fork).
pub struct Joiner<'a> {
    /// The session as the agent sent it.
    pub spec: &'a ExecSpec,
    /// The running container's namespaces and cgroups to join, or a stopped container's files for fresh ones.
    pub entry: super::supervisor::Entry,
    /// The debug image's overlay, built on the host, to mount as the session's root.
    pub overlay: Option<OwnedFd>,
    /// Readable once the supervisor traces the joiner (its children are then traced from birth).
    pub traced: OwnedFd,
    /// Fds of the supervisor's that the joiner closes at once.
    pub traced_w_in_supervisor: RawFd,
    /// The supervisor's host `/proc`, closed at once too.
    pub host_proc: RawFd,
    /// The host's highest capability number, read before joining (the container's `/proc/sys` could lie).
    pub last_cap: u32,
    /// The supervisor's pid: the joiner exits if its parent is anyone else.
    pub supervisor: libc::pid_t,
}

/// Runs the joiner and exits; the report lands in `page`.
pub fn run(j: Joiner<'_>, page: &mut [u8]) -> ! {
    // Die with the supervisor; it must still be the parent (it could have died before this line).
    // SAFETY: prctl and getppid on this process.
    unsafe {
        libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0);
        if libc::getppid() != j.supervisor {
            libc::_exit(1);
        }
        // SAFETY: madvise on the report page, which this process owns a view of. The child must not get it.
        libc::madvise(page.as_mut_ptr().cast(), page.len(), libc::MADV_DONTFORK);
        // The supervisor's channels to the agent and its /proc never travel further.
        libc::close(super::CONTROL_FD);
        libc::close(super::EVENTS_FD);
        libc::close(j.traced_w_in_supervisor);
        libc::close(j.host_proc);
    }
    // Nothing happens before the supervisor traces us: the child must be traced from its first instant.
    let mut b = [0u8; 1];
    if !matches!(nix::unistd::read(&j.traced, &mut b), Ok(1)) {
        // SAFETY: leaving at once; the supervisor failed to trace us and reports it.
        unsafe { libc::_exit(1) };
    }
    let report = match join(j) {
        Ok(pid) => JoinReport::Forked { pid },
        Err(e) => JoinReport::Failed(e),
    };
    report.store(page);
    // SAFETY: leaving without running destructors or atexit handlers of the supervisor's state.
    unsafe { libc::_exit(0) }
}

fn errno() -> std::io::Error {
    std::io::Error::last_os_error()
}

fn join(j: Joiner<'_>) -> Result<i32, StartError> {
    let spec = j.spec;
    let (ns_flags, stopped) = match j.entry {
        super::supervisor::Entry::Join { pidfd, flags, cgroups } => {
            // Join the cgroups before touching anything of the container: its device controller then governs
            // what this root process may open in there, and its limits cover the session from the start.
            for f in cgroups {
                File::from(f).write_all(b"0").map_err(|e| StartError::setup("joining the container's cgroup", e))?;
            }
            set_oom_score_adj(spec)?;
            if flags != 0 {
                // All namespaces in one call: the kernel orders them (user first) and the set is atomic.
                // SAFETY: setns on a valid pidfd; this process is single-threaded, as joining mnt/user requires.
                if unsafe { libc::setns(pidfd.as_raw_fd(), flags) } != 0 {
                    let e = errno();
                    if init_exited(&pidfd) {
                        return Err(StartError::ContainerGone(format!("container init {} is gone", spec.init_pid)));
                    }
                    return Err(StartError::setup("joining the container's namespaces", e));
                }
            }
            (flags, None)
        }
        super::supervisor::Entry::Fresh { flags, root, binds } => {
            set_oom_score_adj(spec)?;
            // SAFETY: unshare of this single-threaded process; the pid namespace applies to its children.
            if unsafe { libc::unshare(flags) } != 0 {
                return Err(StartError::setup("creating the session's namespaces", errno()));
            }
            // The container's own name, in the sandbox's own UTS namespace.
            if let Some(h) = spec.debug.as_ref().and_then(|d| d.stopped.as_ref()?.hostname.as_ref()) {
                if flags & libc::CLONE_NEWUTS != 0 && !h.is_empty() {
                    rustix::system::sethostname(h.as_bytes())
                        .map_err(|e| StartError::setup("setting the sandbox's hostname", e))?;
                }
            }
            (flags, Some((root, binds)))
        }
    };
    if ns_flags & libc::CLONE_NEWUSER != 0 {
        // Host root is not mapped in the container's user namespace: become its root (as runc's nsexec does),
        // so the files this process creates there (the terminal) belong to someone the container knows.
        // SAFETY: credential syscalls with id 0 of the namespace just joined, in which this process holds every
        // capability; keepcaps so they survive the switch.
        unsafe {
            libc::prctl(libc::PR_SET_KEEPCAPS, 1, 0, 0, 0);
            if libc::setresgid(0, 0, 0) != 0 || libc::setresuid(0, 0, 0) != 0 {
                return Err(StartError::setup("becoming root of the container's user namespace", errno()));
            }
            libc::prctl(libc::PR_SET_KEEPCAPS, 0, 0, 0, 0);
        }
    }
    // Here, inside the user namespace and before any seccomp filter (which may deny keyctl); the child inherits it.
    join_new_session_keyring()?;
    if let (Some(o), Some(d)) = (j.overlay, &spec.debug) {
        let r = match (stopped, &d.stopped) {
            (Some((root, bind_fds)), Some(s)) => {
                use crate::debugroot::{Bind, StoppedMount};
                // The container's order: each mask after the binds it followed. A bind the supervisor left out
                // (a kernel filesystem of the host) is masked as well.
                let mut mounts = Vec::new();
                let masks_at = |i: usize| s.masks.iter().filter(move |m| m.after == i).map(|m| m.destination.as_str());
                for (i, (fd, b)) in bind_fds.into_iter().zip(&s.binds).enumerate() {
                    mounts.extend(masks_at(i).map(StoppedMount::Mask));
                    mounts.push(match fd {
                        Some(source) => StoppedMount::Bind(Bind { source, destination: &b.destination }),
                        None => StoppedMount::Mask(&b.destination),
                    });
                }
                mounts.extend(
                    s.masks.iter().filter(|m| m.after >= s.binds.len()).map(|m| StoppedMount::Mask(&m.destination)),
                );
                crate::debugroot::enter_stopped(o, &d.target, root, mounts)
            }
            _ => crate::debugroot::enter(o, &d.target),
        };
        r.map_err(|e| StartError::Setup(format!("debug image: {e}")))?;
    }
    // From here on every container path is resolved inside this root.
    let root = resolve::open_root().map_err(|e| StartError::setup("opening the container's root", e))?;
    let passwd = crate::user::parse_passwd(&resolve::read_small(root.as_fd(), "/etc/passwd"));
    let group = crate::user::parse_group(&resolve::read_small(root.as_fd(), "/etc/group"));
    let creds = crate::user::resolve(&spec.user, spec.user_override.as_deref(), &passwd, &group)?;
    let mut env = spec.env.clone();
    crate::user::fill_home(&mut env, creds.home.as_deref());
    let path = command_path(root.as_fd(), spec, &env)?;

    let slave = if spec.tty {
        let (master, slave) = crate::pty::open(root.as_fd(), creds.uid, spec.size)
            .map_err(|e| StartError::setup("opening the container's /dev/ptmx", e))?;
        // SAFETY: CONSOLE_FD is the console socket by the calling convention.
        let console = unsafe { BorrowedFd::borrow_raw(CONSOLE_FD) };
        crate::pty::send_fd(console, master.as_fd())
            .map_err(|e| StartError::setup("handing the terminal to the agent", e))?;
        Some(slave)
    } else {
        // runc's fixStdioPermissions: the user may reopen its own stdio (`echo x > /dev/stderr`).
        for fd in 0..3 {
            // SAFETY: fds 0-2 are the session's stdio.
            let fd = unsafe { BorrowedFd::borrow_raw(fd) };
            if nix::sys::stat::fstat(fd).is_ok_and(|st| st.st_mode & libc::S_IFMT == libc::S_IFIFO) {
                match nix::unistd::fchown(fd, Some(creds.uid.into()), None) {
                    // As runc: EINVAL (the uid is not mapped in the container's user namespace) and EPERM (the
                    // pipe's owner is not) leave the pipe as it is rather than fail the session.
                    Ok(()) | Err(nix::errno::Errno::EINVAL | nix::errno::Errno::EPERM) => {}
                    Err(e) => return Err(StartError::setup("giving the session's stdio to the user", e)),
                }
            }
        }
        None
    };
    drop(root);
    // SAFETY: the console socket has done its job; closing an fd we own by convention.
    unsafe { libc::close(CONSOLE_FD) };

    let plan = Plan::new(spec, &path, &env, slave.is_some(), ns_flags & libc::CLONE_NEWPID != 0, j.supervisor)?;

    // Privileged steps, in runc's order.
    for r in &spec.rlimits {
        set_rlimit(r.resource, r.soft, r.hard)?;
    }
    if !spec.no_new_privs {
        // Without no_new_privs a filter needs CAP_SYS_ADMIN: installed now, before the capabilities go (runc
        // does the same); everything below then runs under it.
        install_seccomp(&plan)?;
    }
    let cwd = CString::new(spec.cwd.as_str())
        .map_err(|_| StartError::BadRequest("the working directory contains a NUL byte".into()))?;
    // Tried first with privilege (a directory the user cannot enter but root can), again as the user on EACCES,
    // as runc does.
    // SAFETY: chdir with a NUL-terminated path.
    let cwd_done = unsafe { libc::chdir(cwd.as_ptr()) } == 0;
    if !cwd_done {
        let e = errno();
        if !matches!(e.raw_os_error(), Some(libc::EACCES | libc::EPERM)) {
            return Err(StartError::Setup(format!("working directory {}: {e}", spec.cwd)));
        }
    }
    drop_privileges(spec, &creds, j.last_cap)?;
    if !cwd_done {
        // SAFETY: as above.
        if unsafe { libc::chdir(cwd.as_ptr()) } != 0 {
            return Err(StartError::Setup(format!("working directory {}: {}", spec.cwd, errno())));
        }
    }
    check_cwd(&spec.cwd)?;

    // The child gets exactly: 0-2 and the terminal at 3. Nothing else of ours.
    drop(j.traced);
    let keep: Vec<RawFd> = slave.map(|s| s.into_raw_fd()).into_iter().collect();
    arrange(&keep)?;
    if spec.no_new_privs {
        // With no_new_privs the filter goes on last, as the session's user: the child is then governed by it
        // from its first instant, so even a tracer in the container cannot make it step around the filter.
        install_seccomp(&plan)?;
    }

    let args = child::ChildArgs { plan: &plan };
    // CLONE_PARENT makes the supervisor the child's parent, CLONE_PTRACE its tracer from birth: nothing in the
    // container can trace it, and its execve is the kernel's word, not a message.
    let flags = (libc::CLONE_PARENT | libc::CLONE_PTRACE) as libc::c_ulong;
    // SAFETY: this process is single-threaded; the child runs only `child::run`, which makes raw syscalls on
    // `plan` and never returns.
    let pid = unsafe { libc::syscall(libc::SYS_clone, flags, 0usize, 0usize, 0usize, 0usize) };
    match pid {
        -1 => {
            let e = errno();
            // A pid namespace whose init is gone refuses new members (ENOMEM). (The init's pidfd is closed by
            // now, and this process sees the container's /proc, where the init's host pid means nothing.)
            if e.raw_os_error() == Some(libc::ENOMEM) && ns_flags & libc::CLONE_NEWPID != 0 {
                return Err(StartError::ContainerGone(format!("container init {} is gone", spec.init_pid)));
            }
            // The pids controller (and RLIMIT_NPROC) refuse with EAGAIN.
            if e.raw_os_error() == Some(libc::EAGAIN) {
                return Err(StartError::Setup(format!(
                    "cannot start a process in the container: it is at its pids limit (pids.max of its cgroup) \
                     or the user's process limit: {e}"
                )));
            }
            Err(StartError::setup("fork", e))
        }
        // SAFETY: see above.
        0 => unsafe { child::run(&args) },
        p => libc::pid_t::try_from(p).map_err(|_| StartError::Internal(format!("clone returned {p}"))),
    }
}

/// Whether the container's init (pinned by `pidfd`) has exited. Asked of the pidfd, not of `/proc`: after setns
/// this process sees the container's `/proc`, where the init's host pid means nothing.
fn init_exited(pidfd: &OwnedFd) -> bool {
    let mut fds = [libc::pollfd { fd: pidfd.as_raw_fd(), events: libc::POLLIN, revents: 0 }];
    // SAFETY: poll with a zero timeout on one valid pollfd; a pidfd is readable once its process has exited.
    let n = unsafe { libc::poll(fds.as_mut_ptr(), 1, 0) };
    n == 1 && fds[0].revents & (libc::POLLIN | libc::POLLHUP) != 0
}

/// Leaves the agent's session keyring for a new anonymous one, as `runc exec` does: the agent's (systemd's
/// per-service keyring, a login's, a container's) may hold host keys that its possessors can read, and would be
/// shared by every session of every container. A kernel without keys (ENOSYS) has nothing to share; any other
/// failure refuses the session.
fn join_new_session_keyring() -> Result<(), StartError> {
    // SAFETY: keyctl(KEYCTL_JOIN_SESSION_KEYRING, NULL) only replaces this process's session keyring; a NULL name
    // means no memory is read.
    let r = unsafe {
        libc::syscall(
            libc::SYS_keyctl,
            libc::c_long::from(libc::KEYCTL_JOIN_SESSION_KEYRING),
            std::ptr::null::<libc::c_char>(),
        )
    };
    if r < 0 {
        let e = errno();
        if e.raw_os_error() != Some(libc::ENOSYS) {
            return Err(StartError::setup("joining a new session keyring", e));
        }
    }
    Ok(())
}

/// The container's `oomScoreAdj` (or its init's), not the agent's (which may be -1000). Still on the host's /proc.
fn set_oom_score_adj(spec: &ExecSpec) -> Result<(), StartError> {
    if let Some(adj) = spec.oom_score_adj {
        std::fs::write("/proc/self/oom_score_adj", adj.to_string())
            .map_err(|e| StartError::setup("setting oom_score_adj", e))?;
    }
    Ok(())
}

fn install_seccomp(plan: &Plan) -> Result<(), StartError> {
    if let Some(p) = &plan.seccomp {
        // SAFETY: the program lives in `plan`, alive across the call.
        if unsafe { crate::seccomp::install(&p.fprog(), p.flags) } != 0 {
            return Err(StartError::setup("installing the container's seccomp filter", errno()));
        }
    }
    Ok(())
}

fn set_rlimit(resource: i32, soft: u64, hard: u64) -> Result<(), StartError> {
    let lim = libc::rlimit { rlim_cur: soft, rlim_max: hard };
    let Ok(which) = resource.try_into() else {
        return Err(StartError::Internal(format!("rlimit resource {resource}")));
    };
    // SAFETY: setrlimit reads one rlimit from a valid pointer.
    if unsafe { libc::setrlimit(which, &lim) } != 0 {
        return Err(StartError::setup(format_args!("setting rlimit {resource} to {soft}/{hard}"), errno()));
    }
    Ok(())
}

/// Puts `fds` (owned, raw) at 3, 4, ... (close-on-exec) and closes every other fd above 2.
fn arrange(fds: &[RawFd]) -> Result<(), StartError> {
    let too_many = || StartError::Internal(format!("{} fds to hand on", fds.len()));
    let floor = super::fd_after(3, fds.len()).ok_or_else(too_many)?;
    let mut high = Vec::with_capacity(fds.len());
    for &fd in fds {
        // SAFETY: duplicating an fd this process owns above every target, so no dup3 below clobbers a source.
        let h = unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, floor + 64) };
        if h < 0 {
            return Err(StartError::internal("fcntl", errno()));
        }
        high.push(h);
    }
    for (i, &h) in high.iter().enumerate() {
        let target = super::fd_after(3, i).ok_or_else(too_many)?;
        // SAFETY: dup3 of an open fd onto a number reserved for it.
        if unsafe { libc::dup3(h, target, libc::O_CLOEXEC) } < 0 {
            return Err(StartError::internal("dup3", errno()));
        }
    }
    // SAFETY: closing every fd above the kept ones (sources and their copies included); none is used again.
    unsafe { libc::syscall(libc::SYS_close_range, floor.cast_unsigned(), u32::MAX, 0u32) };
    Ok(())
}

/// The command's path: as given if it has a `/`, else found in the session's `PATH` inside its root.
fn command_path(root: BorrowedFd<'_>, spec: &ExecSpec, env: &[String]) -> Result<String, StartError> {
    let argv0 = spec.args.first().ok_or_else(|| StartError::BadRequest("empty command".into()))?;
    if argv0.contains('/') {
        return Ok(argv0.clone());
    }
    let path_var = env.iter().find_map(|e| e.strip_prefix("PATH=")).unwrap_or(crate::spec::DEFAULT_PATH);
    match resolve::lookup_path(root, argv0, path_var) {
        Some(resolve::Found::Executable(p) | resolve::Found::NotExecutable(p)) => Ok(p),
        None => Err(StartError::CommandNotFound(format!("{argv0:?}: executable file not found in $PATH"))),
    }
}

/// Bounding set, groups, gid, uid, capabilities, ambient set, no_new_privs, umask: the session's credentials.
fn drop_privileges(spec: &ExecSpec, creds: &crate::user::Credentials, last_cap: u32) -> Result<(), StartError> {
    let caps = &spec.caps;
    let creds_err =
        |e: std::io::Error| StartError::setup(format!("switching to uid {} gid {}", creds.uid, creds.gid), e);
    // SAFETY: plain credential syscalls on this single-threaded process, with arguments checked above (ids are
    // in 0..=i32::MAX, so never the "unchanged" -1).
    unsafe {
        // Bounding set first: dropping needs CAP_SETPCAP, which the uid switch may take away.
        for c in caps.bounding_drops(last_cap) {
            if libc::prctl(libc::PR_CAPBSET_DROP, c as libc::c_ulong, 0, 0, 0) != 0
                && errno().raw_os_error() != Some(libc::EINVAL)
            {
                return Err(StartError::setup("dropping from the bounding set", errno()));
            }
        }
        libc::prctl(libc::PR_SET_KEEPCAPS, 1, 0, 0, 0);
        if libc::setgroups(creds.groups.len(), creds.groups.as_ptr()) != 0 {
            let e = errno();
            // A user namespace with setgroups denied: runc skips them there too.
            if !(e.raw_os_error() == Some(libc::EPERM) && creds.groups.is_empty()) {
                return Err(creds_err(e));
            }
        }
        if libc::setresgid(creds.gid, creds.gid, creds.gid) != 0
            || libc::setresuid(creds.uid, creds.uid, creds.uid) != 0
        {
            return Err(creds_err(errno()));
        }
        libc::prctl(libc::PR_SET_KEEPCAPS, 0, 0, 0, 0);
        let hdr = crate::caps::CapHeader { version: crate::caps::CAP_VERSION_3, pid: 0 };
        let data = caps.data(last_cap);
        if libc::syscall(libc::SYS_capset, &hdr as *const _, data.as_ptr()) != 0 {
            return Err(StartError::setup("setting capabilities", errno()));
        }
        libc::prctl(libc::PR_CAP_AMBIENT, libc::PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0);
        for c in caps.raisable_ambient(last_cap) {
            if libc::prctl(libc::PR_CAP_AMBIENT, libc::PR_CAP_AMBIENT_RAISE, c as libc::c_ulong, 0, 0) != 0 {
                return Err(StartError::setup("raising ambient capabilities", errno()));
            }
        }
        if spec.no_new_privs && libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 {
            return Err(StartError::setup("setting no_new_privs", errno()));
        }
        libc::umask((spec.umask & 0o777) as libc::mode_t);
    }
    Ok(())
}

/// The working directory must be inside the session's root (runc's check since 1.1.12): the kernel reports a
/// directory outside the root as "(unreachable)/...", never starting with `/`.
fn check_cwd(cwd: &str) -> Result<(), StartError> {
    let mut buf = vec![0u8; libc::PATH_MAX as usize + 1];
    // SAFETY: raw getcwd into a buffer of the given size (the raw syscall, unlike glibc's, does not hide
    // "(unreachable)").
    let n = unsafe { libc::syscall(libc::SYS_getcwd, buf.as_mut_ptr(), buf.len()) };
    if n <= 0 || buf.first() != Some(&b'/') {
        return Err(StartError::Setup(format!("working directory {cwd} is outside the container")));
    }
    Ok(())
}
