//! Wire protocol between the `dcos` CLI and the agent: requests, channel frames, statuses, error codes.
//!
//! See `docs/protocol.md` for the prose version; this crate is the single source of truth.

// Public items say what they are: other crates and their authors build on them.
#![warn(missing_docs)]
// Library code returns errors rather than panicking, and leaves the process's stdout and stderr to its
// caller.
#![warn(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout, clippy::print_stderr)]

use base64::Engine;
use serde::{Deserialize, Serialize};

/// WebSocket subprotocol spoken on `/v1/tasks/{task}/exec`.
pub const SUBPROTOCOL: &str = "v1.exec.dcos-exec.io";
/// Request header that carries the base64url-encoded JSON [`ExecRequest`].
/// A header (not the query string) so that commands and `-e` values never end up in access logs.
pub const EXEC_REQUEST_HEADER: &str = "x-dcos-exec-request";
/// Audience a token must carry to be accepted by an agent.
pub const TOKEN_AUDIENCE: &str = "dcos-exec";

/// One leading byte per WebSocket binary message names its channel (Kubernetes `v5.channel.k8s.io` numbering,
/// extended with channels 5 to 7).
pub mod channel {
    /// Client to agent: bytes for the process's stdin.
    pub const STDIN: u8 = 0;
    /// Agent to client: bytes the process wrote to stdout (or the terminal, with a TTY).
    pub const STDOUT: u8 = 1;
    /// Agent to client: bytes the process wrote to stderr.
    pub const STDERR: u8 = 2;
    /// Agent to client: the final [`super::Status`] as JSON; always the last data message of a session.
    pub const STATUS: u8 = 3;
    /// Client to agent: a [`super::TermSize`] as JSON.
    pub const RESIZE: u8 = 4;
    /// Client to agent: a [`super::SignalRequest`] as JSON (forwarded when the session has no TTY).
    pub const SIGNAL: u8 = 5;
    /// Agent to client: [`super::Started`] as JSON once the process runs inside the container.
    pub const STARTED: u8 = 6;
    /// Agent to client: a progress line (debug-image pulls), UTF-8 text.
    pub const PROGRESS: u8 = 7;
    /// Either way: close of the channel named by the next byte (only `STDIN` is meaningful today).
    pub const CLOSE: u8 = 255;
}

/// What the client asks the agent to run; sent in [`EXEC_REQUEST_HEADER`].
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ExecRequest {
    /// argv of the process; the first element is looked up in the container's `PATH`.
    pub command: Vec<String>,
    /// Forward stdin (`-i`).
    #[serde(default)]
    pub stdin: bool,
    /// Allocate a pseudo-terminal inside the container (`-t`).
    #[serde(default)]
    pub tty: bool,
    /// `-u`: `NAME`, `UID`, `NAME:GROUP` or `UID:GID`, resolved inside the container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// `-w`: working directory inside the container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workdir: Option<String>,
    /// `-e KEY=VAL` additions/overrides to the container process's environment.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub env: Vec<String>,
    /// Initial terminal size, with `tty`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<TermSize>,
    /// `--debug-image`: run the command from this image, with the target's root at `/target`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub debug_image: Option<String>,
    /// `--pull-policy`: `always`, `if-not-present` (default) or `never`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pull_policy: Option<String>,
    /// `--cap-add`: capabilities beyond the target's (debug sessions only; ACL action `debug:caps`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cap_add: Vec<String>,
}

/// Errors decoding a request header or a frame.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    /// The header value is not unpadded base64url.
    #[error("request header is not base64url: {0}")]
    Base64(#[from] base64::DecodeError),
    /// The decoded bytes are not a request (unknown fields included).
    #[error("request is not valid JSON: {0}")]
    Json(#[from] serde_json::Error),
    /// A WebSocket message without even its channel byte.
    #[error("empty frame")]
    EmptyFrame,
}

impl ExecRequest {
    /// Encodes the request for [`EXEC_REQUEST_HEADER`].
    pub fn to_header(&self) -> String {
        let json = serde_json::to_vec(self).unwrap_or_default();
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(json)
    }

    /// Decodes the value of [`EXEC_REQUEST_HEADER`].
    pub fn from_header(value: &str) -> Result<Self, DecodeError> {
        let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(value.trim())?;
        Ok(serde_json::from_slice(&raw)?)
    }
}

/// Terminal size in character cells.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct TermSize {
    /// Columns.
    pub width: u16,
    /// Rows.
    pub height: u16,
}

/// A signal to deliver to the remote process, by name without the `SIG` prefix (`INT`, `TERM`, `HUP`, ...).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct SignalRequest {
    /// The signal's name, such as `INT`.
    pub signal: String,
}

/// Sent once on [`channel::STARTED`].
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Started {
    /// Agent-assigned session id, as written in the audit log.
    pub session: String,
    /// Pid of the process inside the container's pid namespace.
    pub pid: i32,
}

/// The final word of a session on [`channel::STATUS`].
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum Status {
    /// The process exited with `code`.
    Exited {
        /// The exit code.
        code: i32,
    },
    /// The process was killed by `signal`.
    Signaled {
        /// The signal number.
        signal: i32,
    },
    /// The process never ran, or the session failed; `code` says why.
    Error {
        /// The kind of failure, stable for scripts.
        code: ErrorCode,
        /// What happened, for people.
        message: String,
    },
}

impl Status {
    /// The exit code a CLI should use, `docker exec` style.
    pub fn exit_code(&self) -> i32 {
        match self {
            Status::Exited { code } => *code,
            Status::Signaled { signal } => 128 + signal,
            Status::Error { code, .. } => code.exit_code(),
        }
    }
}

/// Stable error codes, used in HTTP error bodies and in [`Status::Error`].
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Hash)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// No bearer token, or one that is malformed, expired, not yet valid or wrongly signed.
    Unauthenticated,
    /// The ACL does not grant the action.
    Forbidden,
    /// No container carries this task id.
    TaskNotFound,
    /// The container exists but its init is not running.
    ContainerNotRunning,
    /// The container is paused (frozen): nothing can start in it until it is resumed.
    ContainerPaused,
    /// The request is malformed.
    BadRequest,
    /// The command was not found in the container (exit 127).
    CommandNotFound,
    /// The command exists but cannot be executed (exit 126).
    CommandNotExecutable,
    /// Joining the container or setting up the process failed before exec.
    StartFailed,
    /// The container stopped while the session ran.
    ContainerStopped,
    /// The debug image could not be pulled, verified or unpacked.
    ImageFailed,
    /// Anything else on the agent.
    Internal,
    /// The task name matches more than one container; the message lists them.
    Ambiguous,
    /// The gateway could not reach the agent of the node that owns the task.
    NodeUnreachable,
    /// The gateway's directory (etcd) has been unreachable for longer than its `max_stale`.
    ClusterUnavailable,
}

/// Exit codes of the CLI for failures that happen before the remote process runs.
/// They sit just below `docker exec`'s 125 so they never collide with 126/127 and 128+N.
pub mod exit {
    /// Usage error (clap's own code).
    pub const USAGE: i32 = 2;
    /// The agent could not be reached (DNS, connection refused, timeout).
    pub const UNREACHABLE: i32 = 115;
    /// TLS failed (unknown CA, name mismatch, bad CA file).
    pub const TLS: i32 = 116;
    /// No token, or the agent rejected it.
    pub const UNAUTHENTICATED: i32 = 117;
    /// The ACL denies this user the action on this task.
    pub const FORBIDDEN: i32 = 118;
    /// No task with this id.
    pub const TASK_NOT_FOUND: i32 = 119;
    /// The task's container is not running (or stopped during the session).
    pub const CONTAINER_NOT_RUNNING: i32 = 120;
    /// The session was lost (connection dropped before a status arrived).
    pub const SESSION_LOST: i32 = 121;
    /// The debug image could not be pulled, verified or unpacked.
    pub const IMAGE: i32 = 122;
    /// The task name matches more than one container.
    pub const AMBIGUOUS: i32 = 123;
    /// The gateway could not reach the agent that owns the task.
    pub const NODE_UNREACHABLE: i32 = 113;
    /// The gateway's cluster directory is unavailable (etcd unreachable for longer than `max_stale`).
    pub const CLUSTER_UNAVAILABLE: i32 = 114;
    /// The task's container is paused.
    pub const CONTAINER_PAUSED: i32 = 124;
    /// Bad request, internal agent error, failure to join the container, bad local config.
    pub const FAILED: i32 = 125;
    /// The command exists but cannot be executed.
    pub const NOT_EXECUTABLE: i32 = 126;
    /// The command was not found.
    pub const NOT_FOUND: i32 = 127;
}

impl ErrorCode {
    /// The CLI exit code for this error.
    pub fn exit_code(self) -> i32 {
        match self {
            ErrorCode::Unauthenticated => exit::UNAUTHENTICATED,
            ErrorCode::Forbidden => exit::FORBIDDEN,
            ErrorCode::TaskNotFound => exit::TASK_NOT_FOUND,
            ErrorCode::ContainerNotRunning | ErrorCode::ContainerStopped => exit::CONTAINER_NOT_RUNNING,
            ErrorCode::ContainerPaused => exit::CONTAINER_PAUSED,
            ErrorCode::CommandNotFound => exit::NOT_FOUND,
            ErrorCode::ImageFailed => exit::IMAGE,
            ErrorCode::Ambiguous => exit::AMBIGUOUS,
            ErrorCode::NodeUnreachable => exit::NODE_UNREACHABLE,
            ErrorCode::ClusterUnavailable => exit::CLUSTER_UNAVAILABLE,
            ErrorCode::CommandNotExecutable => exit::NOT_EXECUTABLE,
            ErrorCode::BadRequest | ErrorCode::StartFailed | ErrorCode::Internal => exit::FAILED,
        }
    }

    /// HTTP status for a refusal carrying this code.
    pub fn http_status(self) -> u16 {
        match self {
            ErrorCode::Unauthenticated => 401,
            ErrorCode::Forbidden => 403,
            ErrorCode::TaskNotFound => 404,
            ErrorCode::ContainerNotRunning
            | ErrorCode::ContainerStopped
            | ErrorCode::ContainerPaused
            | ErrorCode::Ambiguous => 409,
            ErrorCode::BadRequest => 400,
            ErrorCode::ImageFailed | ErrorCode::NodeUnreachable => 502,
            ErrorCode::ClusterUnavailable => 503,
            _ => 500,
        }
    }
}

/// Body of every refused HTTP request.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ErrorBody {
    /// The kind of refusal, stable for scripts.
    pub code: ErrorCode,
    /// What was refused and why, for people.
    pub message: String,
}

/// One row of `GET /v1/tasks`: every container the caller may list, stopped ones included.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct TaskInfo {
    /// Task id: the agent's `task_id_annotation` of the bundle, else the container id.
    pub id: String,
    /// The container id of its runtime.
    pub container: String,
    /// The runtime's own name (Docker's container name without the leading `/`), if it has one.
    #[serde(default)]
    pub name: Option<String>,
    /// `runc`, `crun`, `docker`, `containerd` or `cri-o`.
    pub runtime: String,
    /// `created`, `running` or `stopped`.
    pub state: String,
    /// The container's init process, in the agent's pid namespace.
    pub pid: i32,
    /// Seconds since the container's init started (0 when stopped).
    pub age_secs: u64,
    /// Exit status of a stopped container, when its runtime records it.
    #[serde(default)]
    pub exit_code: Option<i32>,
    /// Compose's service label.
    #[serde(default)]
    pub service: Option<String>,
    /// Compose's project label.
    #[serde(default)]
    pub project: Option<String>,
    /// The node that runs it, in lists served by a gateway.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
}

/// One row of `GET /v1/nodes` (served by a gateway): an agent registered in the cluster directory.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct NodeInfo {
    /// The node's name.
    pub name: String,
    /// The URL under which gateways reach its agent.
    pub url: String,
    /// Its labels.
    #[serde(default)]
    pub labels: std::collections::BTreeMap<String, String>,
    /// `ready` while its lease is alive in the directory; `stale` when the directory snapshot is stale.
    pub state: String,
    /// Tasks it runs that the caller may list.
    pub tasks: usize,
}

/// Request headers a gateway adds when it relays a session to the owning agent; an agent honours them only on
/// a connection that presented a gateway certificate.
pub mod forward {
    /// The user's address (`ip:port`) as the gateway saw it.
    pub const FORWARDED_FOR: &str = "x-dcos-exec-forwarded-for";
    /// The container id the gateway resolved the task to: the agent execs into exactly that one or refuses.
    pub const CONTAINER: &str = "x-dcos-exec-container";
    /// Response header of a gateway serving from a stale directory snapshot: seconds since etcd last answered.
    pub const STALE: &str = "x-dcos-exec-stale";
    /// Response header of a gateway on its lists (`1`): the rows name their node, even when there are none.
    pub const GATEWAY: &str = "x-dcos-exec-gateway";
}

/// Prefixes a payload with its channel byte.
pub fn frame(channel: u8, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(payload.len() + 1);
    out.push(channel);
    out.extend_from_slice(payload);
    out
}

/// Splits a binary message into its channel and payload.
pub fn split_frame(msg: &[u8]) -> Result<(u8, &[u8]), DecodeError> {
    msg.split_first().map(|(c, p)| (*c, p)).ok_or(DecodeError::EmptyFrame)
}

/// Whether `c` must be escaped before text from a server or a container reaches a terminal or a log line:
/// C0, DEL and C1 controls (a `\n` starts a forged line, an ESC drives the terminal), and the invisible
/// characters that reorder or hide text (bidi embeddings, overrides and isolates U+202A-U+202E and
/// U+2066-U+2069, the line and paragraph separators U+2028/U+2029, the zero-width and direction marks
/// U+200B-U+200F, the Arabic letter mark U+061C, the last of Unicode's bidi controls, and U+FEFF). The CLI's terminal output and the agent's and gateway's logs and refusals
/// share it, so both escape the same.
pub fn must_escape(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            '\u{061C}' | '\u{200B}'..='\u{200F}' | '\u{2028}'..='\u{202E}' | '\u{2066}'..='\u{2069}' | '\u{FEFF}'
        )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_round_trips_through_header() {
        let req = ExecRequest {
            command: vec!["sh".into(), "-c".into(), "echo $A".into()],
            stdin: true,
            env: vec!["A=b=c".into()],
            ..Default::default()
        };
        let back = ExecRequest::from_header(&req.to_header()).unwrap();
        assert_eq!(back, req);
    }

    #[test]
    fn unknown_request_fields_are_refused() {
        let hdr = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(br#"{"command":["x"],"privileged":true}"#);
        assert!(ExecRequest::from_header(&hdr).is_err());
    }

    #[test]
    fn invisible_and_reordering_characters_must_be_escaped() {
        for c in [
            '\n', '\u{1b}', '\u{9b}', '\u{202e}', '\u{2066}', '\u{2069}', '\u{2028}', '\u{2029}', '\u{200b}',
            '\u{feff}', '\u{61c}', '\u{200e}',
        ] {
            assert!(must_escape(c), "{c:?}");
        }
        for c in ['a', ' ', 'é', '✓', '\u{2027}', '\u{2070}', '\u{2010}'] {
            assert!(!must_escape(c), "{c:?}");
        }
    }

    #[test]
    fn status_exit_codes_follow_docker() {
        assert_eq!(Status::Signaled { signal: 9 }.exit_code(), 137);
        assert_eq!(Status::Exited { code: 3 }.exit_code(), 3);
        let nf = Status::Error { code: ErrorCode::CommandNotFound, message: String::new() };
        assert_eq!(nf.exit_code(), 127);
        let json = serde_json::to_string(&nf).unwrap();
        assert!(json.contains(r#""status":"error""#) && json.contains(r#""code":"command_not_found""#), "{json}");
        let amb = serde_json::to_string(&ErrorCode::Ambiguous).unwrap();
        assert_eq!((amb.as_str(), ErrorCode::Ambiguous.exit_code()), (r#""ambiguous""#, 123));
        let paused = serde_json::to_string(&ErrorCode::ContainerPaused).unwrap();
        let p = ErrorCode::ContainerPaused;
        assert_eq!((paused.as_str(), p.exit_code(), p.http_status()), (r#""container_paused""#, 124, 409));
    }

    #[test]
    fn task_rows_of_older_agents_still_parse() {
        let old = r#"{"id":"t","container":"c","runtime":"runc","state":"running","pid":1,"age_secs":2}"#;
        let t: TaskInfo = serde_json::from_str(old).unwrap();
        assert_eq!((t.name, t.exit_code), (None, None));
    }

    #[test]
    fn frames_split_back() {
        let f = frame(channel::STDERR, b"oops");
        assert_eq!(split_frame(&f).unwrap(), (channel::STDERR, &b"oops"[..]));
        assert!(split_frame(&[]).is_err());
    }
}
