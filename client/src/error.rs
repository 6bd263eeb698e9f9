//! The one error type of the library, with the one mapping from the agent's wire codes.

use crate::config::ConfigError;
use dcos_exec_proto::{exit, ErrorCode};

/// Everything that can go wrong before or during a session. Refusals of the agent carry its message; each
/// variant has the exit code the `dcos` CLI uses for it ([`Error::exit_code`]).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The settings could not be resolved (no URL, a bad `dcos.toml`, an unknown profile).
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The URL is not an `https://` URL with a host.
    #[error("{0}")]
    InvalidUrl(String),
    /// The request cannot be sent as asked (a bad header value, an empty command).
    #[error("{0}")]
    InvalidRequest(String),
    /// The agent could not be reached (DNS, connection refused, timeout).
    #[error("cannot reach the agent at {url}: {message}")]
    Unreachable {
        /// The agent.
        url: String,
        /// Why.
        message: String,
    },
    /// TLS failed: the CA bundle cannot be read, or the handshake failed (unknown CA, name mismatch).
    #[error("{message}; trusted {trust} ({origin}): set DCOS_SSL_VERIFY (or --ssl-verify) to the CA bundle that signed the agent's certificate")]
    Tls {
        /// What failed.
        message: String,
        /// What was trusted: "the CA file PATH" or "the system's trusted roots".
        trust: String,
        /// Where that trust was configured.
        origin: String,
    },
    /// No token was configured; the agent needs one.
    #[error("no bearer token: set the DCOS_ACS_TOKEN variable, pass the --acs-token flag, or set dcos_acs_token under [core] (or the profile's table) in {config_file}")]
    NoToken {
        /// The config file consulted.
        config_file: String,
    },
    /// The configured token cannot be sent: it holds a line break, a control or a non-ASCII character (a
    /// file or variable pasted with more than the token).
    #[error(
        "the bearer token ({origin}) is malformed: it holds a line break, a control character or a non-ASCII character"
    )]
    MalformedToken {
        /// Where the token was read from (a flag, a variable, a key of the config file).
        origin: String,
    },
    /// The agent rejected the token (malformed, expired, wrongly signed, another issuer or audience).
    #[error("{0}")]
    Unauthenticated(String),
    /// The ACL does not grant the action on this task (or the user hit a session cap).
    #[error("{0}")]
    Forbidden(String),
    /// No task or container matches the name.
    #[error("{0}")]
    TaskNotFound(String),
    /// The name matches more than one container; the message lists them.
    #[error("{0}")]
    Ambiguous(String),
    /// The task's container is not running, or stopped during the session.
    #[error("{0}")]
    ContainerNotRunning(String),
    /// The task's container is paused (frozen); unpause it first.
    #[error("{0}")]
    ContainerPaused(String),
    /// The command was not found in the container.
    #[error("{0}")]
    CommandNotFound(String),
    /// The command exists but cannot be executed.
    #[error("{0}")]
    CommandNotExecutable(String),
    /// The debug image could not be pulled, verified or unpacked.
    #[error("{0}")]
    Image(String),
    /// Any other refusal or failure the agent reported (bad request, start failure, internal error, and codes
    /// this library does not know yet).
    #[error("{message}")]
    Agent {
        /// The wire code.
        code: ErrorCode,
        /// The agent's message.
        message: String,
    },
    /// The agent answered something that is not the protocol (a non-JSON refusal, a bad task list).
    #[error("{0}")]
    Protocol(String),
    /// The blocking client could not start its runtime.
    #[error("cannot start the client's runtime: {0}")]
    Runtime(std::io::Error),
    /// The connection dropped before the command's exit status arrived.
    #[error("connection to the agent lost: {0}")]
    SessionLost(String),
}

impl Error {
    /// The error for a wire code and message (an HTTP refusal body or a session's error status).
    pub fn from_wire(code: ErrorCode, message: String) -> Error {
        match code {
            ErrorCode::Unauthenticated => Error::Unauthenticated(message),
            ErrorCode::Forbidden => Error::Forbidden(message),
            ErrorCode::TaskNotFound => Error::TaskNotFound(message),
            ErrorCode::Ambiguous => Error::Ambiguous(message),
            ErrorCode::ContainerNotRunning | ErrorCode::ContainerStopped => Error::ContainerNotRunning(message),
            ErrorCode::ContainerPaused => Error::ContainerPaused(message),
            ErrorCode::CommandNotFound => Error::CommandNotFound(message),
            ErrorCode::CommandNotExecutable => Error::CommandNotExecutable(message),
            ErrorCode::ImageFailed => Error::Image(message),
            code => Error::Agent { code, message },
        }
    }

    /// The wire code behind this error, when the agent sent one.
    pub fn code(&self) -> Option<ErrorCode> {
        Some(match self {
            Error::Unauthenticated(_) => ErrorCode::Unauthenticated,
            Error::Forbidden(_) => ErrorCode::Forbidden,
            Error::TaskNotFound(_) => ErrorCode::TaskNotFound,
            Error::Ambiguous(_) => ErrorCode::Ambiguous,
            Error::ContainerNotRunning(_) => ErrorCode::ContainerNotRunning,
            Error::ContainerPaused(_) => ErrorCode::ContainerPaused,
            Error::CommandNotFound(_) => ErrorCode::CommandNotFound,
            Error::CommandNotExecutable(_) => ErrorCode::CommandNotExecutable,
            Error::Image(_) => ErrorCode::ImageFailed,
            Error::Agent { code, .. } => *code,
            _ => return None,
        })
    }

    /// The exit code the `dcos` CLI uses for this error (see `dcos_exec_proto::exit`).
    pub fn exit_code(&self) -> i32 {
        match self {
            Error::Config(_)
            | Error::InvalidUrl(_)
            | Error::InvalidRequest(_)
            | Error::Protocol(_)
            | Error::Runtime(_) => exit::FAILED,
            Error::Unreachable { .. } => exit::UNREACHABLE,
            Error::Tls { .. } => exit::TLS,
            Error::NoToken { .. } | Error::MalformedToken { .. } => exit::UNAUTHENTICATED,
            Error::SessionLost(_) => exit::SESSION_LOST,
            e => e.code().map_or(exit::FAILED, ErrorCode::exit_code),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_paused_container_has_its_own_error_code_and_exit_code() {
        let e = Error::from_wire(ErrorCode::ContainerPaused, "container c is paused, unpause it first".into());
        assert!(matches!(e, Error::ContainerPaused(_)), "{e:?}");
        assert_eq!((e.code(), e.exit_code()), (Some(ErrorCode::ContainerPaused), 124));
        assert_eq!(e.to_string(), "container c is paused, unpause it first");
    }
}
