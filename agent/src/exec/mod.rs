//! Exec: turns a request and a container into a process inside it, the way `runc exec` would, without runc.
//!
//! The agent is multithreaded and `setns` into mount or user namespaces needs a single thread, so each session
//! runs a helper (see [`helper`]) executed from a sealed copy of this binary (see [`memfd`]).

pub mod debugfs;
pub mod helper;
pub mod memfd;

use crate::runtime::Container;
use dcos_exec_proto::{ExecRequest, Status, TermSize};
use serde::{Deserialize, Serialize};
use std::collections::HashSet;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::process::Stdio;

/// argv[1] that makes the agent binary act as the helper.
pub const HELPER_ARG: &str = "__exec-helper";
/// Control record: deliver signal `rec[1]` to the process.
pub const CTRL_SIGNAL: u8 = 1;

/// Errors before the helper runs.
#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    #[error("{0}")]
    Bundle(String),
    #[error("starting the exec helper: {0}")]
    Spawn(#[from] std::io::Error),
}

impl ExecError {
    /// Neither can the client fix: an unreadable bundle or a helper that cannot start is the agent's failure.
    pub fn code(&self) -> dcos_exec_proto::ErrorCode {
        dcos_exec_proto::ErrorCode::Internal
    }
}

/// Capability sets as numbers (`CAP_CHOWN` is 0).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct CapSets {
    pub bounding: Vec<u32>,
    pub effective: Vec<u32>,
    pub permitted: Vec<u32>,
    pub inheritable: Vec<u32>,
    pub ambient: Vec<u32>,
}

/// One rlimit, `resource` as in setrlimit(2).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Rlimit {
    pub resource: i32,
    pub soft: u64,
    pub hard: u64,
}

/// Everything the helper needs; sent over its control pipe.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HelperSpec {
    pub init_pid: i32,
    pub init_start: u64,
    pub args: Vec<String>,
    pub env: Vec<String>,
    pub uid: u32,
    pub gid: u32,
    pub additional_gids: Vec<u32>,
    pub user_override: Option<String>,
    pub cwd: String,
    pub caps: CapSets,
    pub no_new_privs: bool,
    pub rlimits: Vec<Rlimit>,
    pub umask: u32,
    pub tty: bool,
    pub size: Option<TermSize>,
    pub grace_ms: u64,
    /// With `--debug-image`: the session's root is this image, the target's root is mounted below it.
    pub debug: Option<DebugSpec>,
}

/// The debug image's part of a session.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DebugSpec {
    /// Unpacked layer dirs on the host, top layer first (overlay lowerdir order).
    pub layers: Vec<String>,
    /// Where the target's root filesystem appears, e.g. `/target`.
    pub target: String,
}

/// Where a debug session sees the target's root filesystem.
pub const TARGET_MOUNT: &str = "/target";

/// What the helper reports on its event pipe, one JSON line each.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HelperEvent {
    /// The command was exec'd; `pid` is in the container's pid namespace.
    Started { pid: i32 },
    /// The final status.
    Finished(Status),
}

fn cap_numbers(set: Option<&HashSet<oci_spec::runtime::Capability>>) -> Vec<u32> {
    use std::str::FromStr;
    let mut out: Vec<u32> = set
        .into_iter()
        .flatten()
        .filter_map(|c| serde_json::to_value(c).ok())
        .filter_map(|v| v.as_str().and_then(|s| caps::Capability::from_str(s).ok()))
        .map(|c| u32::from(c.index()))
        .collect();
    out.sort_unstable();
    out
}

fn rlimit_resource(t: oci_spec::runtime::PosixRlimitType) -> Option<i32> {
    let name = serde_json::to_value(t).ok()?;
    Some(match name.as_str()? {
        "RLIMIT_CPU" => libc::RLIMIT_CPU,
        "RLIMIT_FSIZE" => libc::RLIMIT_FSIZE,
        "RLIMIT_DATA" => libc::RLIMIT_DATA,
        "RLIMIT_STACK" => libc::RLIMIT_STACK,
        "RLIMIT_CORE" => libc::RLIMIT_CORE,
        "RLIMIT_RSS" => libc::RLIMIT_RSS,
        "RLIMIT_NPROC" => libc::RLIMIT_NPROC,
        "RLIMIT_NOFILE" => libc::RLIMIT_NOFILE,
        "RLIMIT_MEMLOCK" => libc::RLIMIT_MEMLOCK,
        "RLIMIT_AS" => libc::RLIMIT_AS,
        "RLIMIT_LOCKS" => libc::RLIMIT_LOCKS,
        "RLIMIT_SIGPENDING" => libc::RLIMIT_SIGPENDING,
        "RLIMIT_MSGQUEUE" => libc::RLIMIT_MSGQUEUE,
        "RLIMIT_NICE" => libc::RLIMIT_NICE,
        "RLIMIT_RTPRIO" => libc::RLIMIT_RTPRIO,
        "RLIMIT_RTTIME" => libc::RLIMIT_RTTIME,
        _ => return None,
    } as i32)
}

/// Merges `-e KEY=VAL` overrides into an environment list.
pub fn merge_env(base: &[String], overrides: &[String]) -> Vec<String> {
    let mut env: Vec<String> = base.to_vec();
    for o in overrides {
        let key = o.split_once('=').map(|(k, _)| k).unwrap_or(o);
        env.retain(|e| e.split_once('=').map(|(k, _)| k).unwrap_or(e) != key);
        env.push(o.clone());
    }
    env
}

/// Capability names (`SYS_PTRACE` or `CAP_SYS_PTRACE`) to kernel numbers.
pub fn parse_caps(names: &[String]) -> Result<Vec<u32>, String> {
    use std::str::FromStr;
    names
        .iter()
        .map(|n| {
            let up = n.to_ascii_uppercase();
            let full = if up.starts_with("CAP_") { up } else { format!("CAP_{up}") };
            caps::Capability::from_str(&full)
                .map(|c| u32::from(c.index()))
                .map_err(|_| format!("unknown capability {n:?}"))
        })
        .collect()
}

/// Builds the helper spec from the container's bundle config (`config.json`) and the request; with a debug
/// image, its environment and working directory replace the container's, and `cap_add` joins every set.
pub fn build_spec(
    c: &Container,
    req: &ExecRequest,
    grace_ms: u64,
    image: Option<&dcos_exec_images::pull::PulledImage>,
) -> Result<HelperSpec, ExecError> {
    let path = c.bundle.join("config.json");
    let spec = oci_spec::runtime::Spec::load(&path)
        .map_err(|e| ExecError::Bundle(format!("reading {}: {e}", path.display())))?;
    let process =
        spec.process().as_ref().ok_or_else(|| ExecError::Bundle(format!("{} has no process", path.display())))?;
    let base_env = match image {
        Some(img) if !img.env.is_empty() => img.env.clone(),
        Some(_) => vec!["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into()],
        None => process.env().clone().unwrap_or_default(),
    };
    let mut env = merge_env(&base_env, &req.env);
    if req.tty && !env.iter().any(|e| e.starts_with("TERM=")) {
        env.push("TERM=xterm".into());
    }
    let user = process.user();
    let capabilities = process.capabilities().as_ref();
    let mut caps = CapSets {
        bounding: cap_numbers(capabilities.and_then(|c| c.bounding().as_ref())),
        effective: cap_numbers(capabilities.and_then(|c| c.effective().as_ref())),
        permitted: cap_numbers(capabilities.and_then(|c| c.permitted().as_ref())),
        inheritable: cap_numbers(capabilities.and_then(|c| c.inheritable().as_ref())),
        ambient: cap_numbers(capabilities.and_then(|c| c.ambient().as_ref())),
    };
    for cap in parse_caps(&req.cap_add).map_err(ExecError::Bundle)? {
        for set in
            [&mut caps.bounding, &mut caps.effective, &mut caps.permitted, &mut caps.inheritable, &mut caps.ambient]
        {
            if !set.contains(&cap) {
                set.push(cap);
            }
        }
    }
    let rlimits = process
        .rlimits()
        .as_ref()
        .into_iter()
        .flatten()
        .filter_map(|r| Some(Rlimit { resource: rlimit_resource(r.typ())?, soft: r.soft(), hard: r.hard() }))
        .collect();
    Ok(HelperSpec {
        init_pid: c.pid,
        init_start: c.start_time,
        args: req.command.clone(),
        env,
        uid: user.uid(),
        gid: user.gid(),
        additional_gids: user.additional_gids().clone().unwrap_or_default(),
        user_override: req.user.clone(),
        cwd: match (&req.workdir, image) {
            (Some(w), _) => w.clone(),
            (None, Some(img)) => img.working_dir.clone().unwrap_or_else(|| "/".into()),
            (None, None) => process.cwd().display().to_string(),
        },
        caps,
        no_new_privs: process.no_new_privileges().unwrap_or(false),
        rlimits,
        umask: user.umask().unwrap_or(0o022),
        tty: req.tty,
        size: req.size,
        grace_ms,
        debug: image.map(|img| DebugSpec {
            layers: img.layers.iter().rev().map(|p| p.display().to_string()).collect(),
            target: TARGET_MOUNT.into(),
        }),
    })
}

/// A running helper and the agent's ends of its pipes.
pub struct Spawned {
    pub child: tokio::process::Child,
    /// Control pipe (spec, then signal records); dropping it tells the helper the client is gone.
    pub ctrl: tokio::net::unix::pipe::Sender,
    pub events: tokio::net::unix::pipe::Receiver,
    /// The agent's end of the console socket (TTY sessions).
    pub console: Option<OwnedFd>,
}

fn pipe() -> std::io::Result<(OwnedFd, OwnedFd)> {
    nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(std::io::Error::from)
}

/// Starts the helper for `spec`: stdio pipes unless it is a TTY session.
pub fn spawn(exe: &memfd::SealedExe, spec: &HelperSpec) -> Result<Spawned, ExecError> {
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
    let mut cmd = tokio::process::Command::new(exe.path());
    cmd.arg0("dcos-exec-helper").arg(HELPER_ARG).env_clear().kill_on_drop(false);
    if spec.tty {
        cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null());
    } else {
        cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped());
    }
    let mut map: Vec<RawFd> = vec![ctrl_r.as_raw_fd(), ev_w.as_raw_fd()];
    if let Some((_, theirs)) = &console {
        map.push(theirs.as_raw_fd());
    }
    // SAFETY: the closure runs between fork and exec and only calls fcntl/dup2 (async-signal-safe) on fds
    // that are open in the parent. Sources are first moved above 100 so no dup2 clobbers a later source.
    unsafe {
        cmd.pre_exec(move || {
            let mut high = [0; 3];
            for (i, &fd) in map.iter().enumerate() {
                high[i] = libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 100);
                if high[i] < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            for (i, &fd) in high[..map.len()].iter().enumerate() {
                if libc::dup2(fd, 3 + i as RawFd) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
    let child = cmd.spawn()?;
    drop((ctrl_r, ev_w));
    let console = console.map(|(ours, theirs)| {
        drop(theirs);
        ours
    });
    let ctrl = tokio::net::unix::pipe::Sender::from_owned_fd(ctrl_w)?;
    let events = tokio::net::unix::pipe::Receiver::from_owned_fd(ev_r)?;
    Ok(Spawned { child, ctrl, events, console })
}

/// Encodes the spec for the control pipe (length-prefixed JSON).
pub fn encode_spec(spec: &HelperSpec) -> Vec<u8> {
    let json = serde_json::to_vec(spec).unwrap_or_default();
    let mut out = (json.len() as u32).to_le_bytes().to_vec();
    out.extend_from_slice(&json);
    out
}

/// Receives the pty master the helper sent over the console socket.
pub fn recv_master(sock: &OwnedFd) -> std::io::Result<OwnedFd> {
    use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags};
    use std::os::fd::FromRawFd;
    let mut buf = [0u8; 1];
    let mut iov = [std::io::IoSliceMut::new(&mut buf)];
    let mut space = nix::cmsg_space!([RawFd; 1]);
    let msg = recvmsg::<()>(sock.as_raw_fd(), &mut iov, Some(&mut space), MsgFlags::MSG_CMSG_CLOEXEC)
        .map_err(std::io::Error::from)?;
    for c in msg.cmsgs().map_err(std::io::Error::from)? {
        if let ControlMessageOwned::ScmRights(fds) = c {
            if let Some(&fd) = fds.first() {
                // SAFETY: the kernel just installed this fd for us.
                return Ok(unsafe { OwnedFd::from_raw_fd(fd) });
            }
        }
    }
    Err(std::io::Error::other("the helper sent no terminal"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_overrides_replace_by_key() {
        let base = vec!["PATH=/bin".to_string(), "A=1".to_string()];
        let env = merge_env(&base, &["A=2".into(), "B=x=y".into()]);
        assert_eq!(env, vec!["PATH=/bin", "A=2", "B=x=y"]);
    }

    #[test]
    fn capability_names_map_to_kernel_numbers() {
        use oci_spec::runtime::Capability;
        let set: HashSet<_> = [Capability::Chown, Capability::NetBindService, Capability::SysAdmin].into();
        assert_eq!(cap_numbers(Some(&set)), vec![0, 10, 21]);
        assert_eq!(rlimit_resource(oci_spec::runtime::PosixRlimitType::RlimitNofile), Some(libc::RLIMIT_NOFILE as i32));
    }
}
