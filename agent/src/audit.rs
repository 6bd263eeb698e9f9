//! Audit trail: one JSON line when a session starts, one when it ends, one per refusal, appended to the
//! configured file.

use serde::Serialize;
use std::io::Write;
use std::path::Path;
use std::sync::Mutex;
use std::time::SystemTime;

/// A session that got past the upgrade, written before anything is pulled or started: if the agent dies
/// mid-session, this record is what remains.
#[derive(Debug, Clone, Serialize)]
pub struct SessionStartRecord {
    /// `session_start`.
    pub event: &'static str,
    pub session: String,
    pub time: String,
    pub user: String,
    pub source: String,
    pub task: String,
    pub container: String,
    pub command: Vec<String>,
    pub tty: bool,
    pub stdin: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub run_as: Option<String>,
    /// `--debug-image` as normalised.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
}

/// A session that ended: ran, failed to start, or was hung up.
#[derive(Debug, Clone, Serialize)]
pub struct SessionRecord {
    /// `session_end`.
    pub event: &'static str,
    pub session: String,
    pub user: String,
    pub source: String,
    pub task: String,
    pub container: String,
    pub command: Vec<String>,
    pub tty: bool,
    pub stdin: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub run_as: Option<String>,
    /// `--debug-image` as normalised, and the manifest digest it resolved to (empty if the pull failed).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub image_digest: Option<String>,
    pub start: String,
    pub end: String,
    /// The final status as sent to the client.
    pub status: dcos_exec_proto::Status,
    pub bytes_in: u64,
    pub bytes_out: u64,
}

/// A refused request.
#[derive(Debug, Clone, Serialize)]
pub struct DenialRecord {
    pub event: &'static str,
    pub time: String,
    pub user: Option<String>,
    pub source: String,
    pub path: String,
    pub task: Option<String>,
    pub code: dcos_exec_proto::ErrorCode,
    pub reason: String,
}

/// The append-only audit log.
pub struct AuditLog {
    file: Mutex<std::fs::File>,
}

/// RFC 3339 timestamp with microseconds, UTC.
pub fn now() -> String {
    humantime::format_rfc3339_micros(SystemTime::now()).to_string()
}

impl AuditLog {
    /// Opens (creating, mode 0600) the log for appending.
    pub fn open(path: &Path) -> std::io::Result<AuditLog> {
        use std::os::unix::fs::OpenOptionsExt;
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let file = std::fs::OpenOptions::new().create(true).append(true).mode(0o600).open(path)?;
        Ok(AuditLog { file: Mutex::new(file) })
    }

    fn write<T: Serialize>(&self, rec: &T) {
        let Ok(mut line) = serde_json::to_vec(rec) else {
            return;
        };
        line.push(b'\n');
        // One write per record so concurrent sessions never interleave within a line.
        let mut f = self.file.lock().unwrap_or_else(|p| p.into_inner());
        if let Err(e) = f.write_all(&line) {
            tracing::error!("audit log write failed: {e}");
        }
    }

    pub fn session_start(&self, rec: &SessionStartRecord) {
        self.write(rec)
    }

    pub fn session(&self, rec: &SessionRecord) {
        self.write(rec)
    }

    pub fn denial(&self, rec: &DenialRecord) {
        self.write(rec)
    }
}
