//! The child: the first process of the session inside the container's pid namespace. It runs between fork and
//! exec, so it only makes raw, async-signal-safe syscalls on a [`Plan`] prepared by the joiner.
//!
//! It starts with the session's credentials, capabilities and seccomp filter already in place, traced by the
//! supervisor (so nothing else can trace it), and holds only fds 0-2 (stdio) and, with a terminal, 3.

use crate::channel::ChildFailure;
use crate::error::{Stage, StartError};
use crate::lsm::ExecLabel;
use crate::seccomp::Program;
use crate::spec::ExecSpec;
use std::ffi::CString;
use std::sync::atomic::{AtomicU64, Ordering};

/// The terminal, with `-t`.
pub(crate) const TTY_FD: libc::c_int = 3;

/// Where a child that fails before `execve` leaves its [`ChildFailure`] word: the supervisor reads it from the
/// child's memory at the same address (the child is a fork of a fork of the supervisor, so the layout is one).
pub(crate) static FAILURE: AtomicU64 = AtomicU64::new(0);

/// Everything the child needs, computed before fork.
pub struct Plan {
    path: CString,
    // Kept alive for the pointer arrays.
    _argv: Vec<CString>,
    _envp: Vec<CString>,
    argv_ptrs: Vec<*const libc::c_char>,
    envp_ptrs: Vec<*const libc::c_char>,
    tty: bool,
    /// Installed by the joiner (before the credential switch without no_new_privs, just before the fork with
    /// it), so the child is filtered from its first instant.
    pub(crate) seccomp: Option<Program>,
    labels: Vec<ExecLabel>,
    /// What `getppid()` must return: 0 when the supervisor is outside the child's pid namespace.
    expected_ppid: libc::pid_t,
}

fn cstr(s: &str, what: &str) -> Result<CString, StartError> {
    CString::new(s).map_err(|_| StartError::BadRequest(format!("{what} contains a NUL byte")))
}

impl Plan {
    /// Prepares the child's work for `spec`, running `path` with `env`.
    pub fn new(
        spec: &ExecSpec,
        path: &str,
        env: &[String],
        tty: bool,
        new_pid_ns: bool,
        supervisor: libc::pid_t,
    ) -> Result<Plan, StartError> {
        let argv = spec.args.iter().map(|a| cstr(a, "an argument")).collect::<Result<Vec<_>, _>>()?;
        let envp = env.iter().map(|a| cstr(a, "an environment variable")).collect::<Result<Vec<_>, _>>()?;
        let mut argv_ptrs: Vec<_> = argv.iter().map(|c| c.as_ptr()).collect();
        argv_ptrs.push(std::ptr::null());
        let mut envp_ptrs: Vec<_> = envp.iter().map(|c| c.as_ptr()).collect();
        envp_ptrs.push(std::ptr::null());
        Ok(Plan {
            path: cstr(path, "the command")?,
            _argv: argv,
            _envp: envp,
            argv_ptrs,
            envp_ptrs,
            tty,
            seccomp: spec.seccomp.clone(),
            labels: crate::lsm::plan(spec.apparmor_profile.as_deref(), spec.selinux_label.as_deref()),
            expected_ppid: if new_pid_ns { 0 } else { supervisor },
        })
    }
}

/// What the child gets from the joiner.
pub struct ChildArgs<'a> {
    /// Everything the child does, resolved before fork.
    pub plan: &'a Plan,
}

fn fail(stage: Stage) -> ! {
    // SAFETY: reading errno, a store to a static and _exit: async-signal-safe.
    unsafe {
        let errno = *libc::__errno_location();
        FAILURE.store(ChildFailure::encode(stage, errno), Ordering::SeqCst);
        libc::_exit(127)
    }
}

/// Every signal's disposition to `SIG_DFL` and an empty mask. Raw `rt_sigaction`, because glibc's `sigaction`
/// refuses the two signals it keeps for itself (32 and 33), which an agent may still have inherited as ignored.
fn reset_signals() {
    // The kernel's struct sigaction, all zero in every architecture's layout: SIG_DFL, no flags, empty mask.
    let dfl = [0u64; 4];
    // SAFETY: rt_sigaction reads the zeroed struct above (large enough for any layout with an 8-byte sigset) and
    // fails harmlessly (EINVAL) for SIGKILL and SIGSTOP; rt_sigprocmask reads an empty 8-byte set. Both are
    // async-signal-safe.
    unsafe {
        for sig in 1..=64 as libc::c_long {
            libc::syscall(libc::SYS_rt_sigaction, sig, dfl.as_ptr(), std::ptr::null_mut::<u64>(), 8usize);
        }
        let none = 0u64;
        libc::syscall(
            libc::SYS_rt_sigprocmask,
            libc::SIG_SETMASK,
            &none as *const u64,
            std::ptr::null_mut::<u64>(),
            8usize,
        );
    }
}

/// Runs in the forked child. Only async-signal-safe calls: every allocation happened in [`Plan::new`].
///
/// # Safety
/// Must be called only in the freshly cloned child of a single-threaded joiner, with fds arranged as the
/// module describes.
pub unsafe fn run(a: &ChildArgs<'_>) -> ! {
    let p = a.plan;
    // SAFETY: raw syscalls on memory prepared before the clone (see the function's contract).
    unsafe {
        // Die with the supervisor (our parent through CLONE_PARENT); if it is already gone, do not run at all.
        libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0);
        if libc::getppid() != p.expected_ppid {
            *libc::__errno_location() = 0;
            fail(Stage::Orphaned);
        }
        // An ignored signal stays ignored across execve, and a blocked one blocked: Rust ignores SIGPIPE, and an
        // agent started under nohup ignores SIGHUP (the session's hang-up would do nothing). The command starts
        // as from a fresh login: every disposition the default, nothing blocked (as runc does).
        reset_signals();
        if libc::setsid() < 0 {
            fail(Stage::Setsid);
        }
        if p.tty {
            if libc::ioctl(TTY_FD, libc::TIOCSCTTY, 0) < 0 {
                fail(Stage::Tty);
            }
            for target in 0..3 {
                if libc::dup2(TTY_FD, target) < 0 {
                    fail(Stage::Tty);
                }
            }
            libc::close(TTY_FD);
        }
        for l in &p.labels {
            if let Err(e) = crate::lsm::apply(l) {
                *libc::__errno_location() = e;
                fail(Stage::Lsm);
            }
        }
        libc::execve(p.path.as_ptr(), p.argv_ptrs.as_ptr(), p.envp_ptrs.as_ptr());
        fail(Stage::Exec)
    }
}
