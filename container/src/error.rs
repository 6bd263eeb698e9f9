//! Why a process could not be started in a container, and the one mapping of that onto the wire's codes.

use dcos_exec_proto::{ErrorCode, Status};
use serde::{Deserialize, Serialize};

/// A session that never ran its command. Crosses process boundaries (helper to agent), hence plain data.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[serde(tag = "kind", content = "message", rename_all = "snake_case")]
pub enum StartError {
    /// The container's init is gone (or going).
    #[error("{0}")]
    ContainerGone(String),
    /// The container is paused (its cgroup frozen): joining it would hang until it is resumed.
    #[error("{0}")]
    ContainerPaused(String),
    /// A value of the request (or of the container, for the request's sake) cannot be used.
    #[error("{0}")]
    BadRequest(String),
    /// The container's own configuration holds a value that is refused (an id out of range, ...).
    #[error("{0}")]
    BadContainer(String),
    /// The command is not in the container.
    #[error("{0}")]
    CommandNotFound(String),
    /// The command is there but cannot be executed.
    #[error("{0}")]
    CommandNotExecutable(String),
    /// Joining the container or preparing the process failed.
    #[error("{0}")]
    Setup(String),
    /// The helper itself failed (a bug, or the host is out of resources).
    #[error("{0}")]
    Internal(String),
}

impl StartError {
    /// The wire's error code for this failure.
    pub fn code(&self) -> ErrorCode {
        match self {
            StartError::ContainerGone(_) => ErrorCode::ContainerNotRunning,
            StartError::ContainerPaused(_) => ErrorCode::ContainerPaused,
            StartError::BadRequest(_) => ErrorCode::BadRequest,
            StartError::CommandNotFound(_) => ErrorCode::CommandNotFound,
            StartError::CommandNotExecutable(_) => ErrorCode::CommandNotExecutable,
            StartError::BadContainer(_) | StartError::Setup(_) => ErrorCode::StartFailed,
            StartError::Internal(_) => ErrorCode::Internal,
        }
    }

    /// The session's final status.
    pub fn status(&self) -> Status {
        Status::Error { code: self.code(), message: self.to_string() }
    }

    /// `Setup` with the OS error that caused it.
    pub fn setup(what: impl std::fmt::Display, e: impl std::fmt::Display) -> StartError {
        StartError::Setup(format!("{what}: {e}"))
    }

    /// `Internal` with the OS error that caused it.
    pub fn internal(what: impl std::fmt::Display, e: impl std::fmt::Display) -> StartError {
        StartError::Internal(format!("{what}: {e}"))
    }
}

/// Where the last step before `execve` failed, as the visible child reports it (see [`crate::channel`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum Stage {
    /// `setsid`.
    Setsid = 1,
    /// Making the terminal the controlling terminal and the stdio.
    Tty = 2,
    /// Writing the AppArmor profile or SELinux label for exec.
    Lsm = 3,
    /// `execve` itself.
    Exec = 4,
    /// The helper that forked the child went away before the child ran.
    Orphaned = 5,
}

impl Stage {
    /// The stage with this number, if it is one.
    pub fn from_u32(n: u32) -> Option<Stage> {
        Some(match n {
            1 => Stage::Setsid,
            2 => Stage::Tty,
            3 => Stage::Lsm,
            4 => Stage::Exec,
            5 => Stage::Orphaned,
            _ => return None,
        })
    }

    /// What a failure at this stage with `errno` means for the session running `argv0`.
    pub fn error(self, errno: i32, argv0: &str) -> StartError {
        let e = std::io::Error::from_raw_os_error(errno);
        match self {
            Stage::Exec if errno == libc::ENOENT => {
                StartError::CommandNotFound(format!("{argv0}: no such file or directory in the container"))
            }
            Stage::Exec if matches!(errno, libc::EACCES | libc::ENOEXEC | libc::EISDIR | libc::EPERM) => {
                StartError::CommandNotExecutable(format!("{argv0}: cannot execute: {e}"))
            }
            Stage::Exec => StartError::setup(format_args!("exec {argv0}"), e),
            Stage::Setsid => StartError::setup("setsid", e),
            Stage::Tty => StartError::setup("attaching the terminal", e),
            Stage::Lsm => StartError::setup("applying the container's AppArmor profile or SELinux label", e),
            Stage::Orphaned => StartError::Internal("the exec helper went away".into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stages_map_to_codes_like_a_shell() {
        assert_eq!(Stage::Exec.error(libc::ENOENT, "nope").code(), ErrorCode::CommandNotFound);
        assert_eq!(Stage::Exec.error(libc::EACCES, "x").code(), ErrorCode::CommandNotExecutable);
        assert_eq!(Stage::Exec.error(libc::ENOEXEC, "x").code(), ErrorCode::CommandNotExecutable);
        assert_eq!(Stage::Exec.error(libc::E2BIG, "x").code(), ErrorCode::StartFailed);
        assert_eq!(Stage::Lsm.error(libc::EINVAL, "x").code(), ErrorCode::StartFailed);
        assert_eq!(Stage::Orphaned.error(0, "x").code(), ErrorCode::Internal);
        for n in 1..=5 {
            assert_eq!(Stage::from_u32(n).map(|s| s as u32), Some(n));
        }
        assert_eq!(Stage::from_u32(0), None);
        assert_eq!(Stage::from_u32(6), None);
    }

    #[test]
    fn errors_round_trip_as_json_and_keep_their_code() {
        let e = StartError::BadRequest("uid 4294967295 is out of range".into());
        let back: StartError = serde_json::from_str(&serde_json::to_string(&e).unwrap()).unwrap();
        assert_eq!(back, e);
        assert_eq!(back.status(), Status::Error { code: ErrorCode::BadRequest, message: e.to_string() });
    }
}
