//! Audit trail: one JSON line when a session starts, one when it ends, one per refusal, appended to the
//! configured file. It fails closed: a session whose start record cannot be written does not start. A failed
//! write never damages the next record, and what an unauthenticated peer can make it write is bounded.

use serde::Serialize;
use std::io::Write;
use std::path::Path;
use std::sync::Mutex;
use std::time::{Instant, SystemTime};

/// Unauthenticated refusals recorded (in the audit log and the text log) per second at most; the rest are
/// counted and the count is carried by the next one recorded (`suppressed`).
pub const UNAUTHENTICATED_PER_SECOND: u64 = 20;

/// The bytes of a command's arguments a session record keeps at most. A request may carry a command of hundreds of
/// kilobytes, twice recorded per session: uncut, one user with an `exec` grant fills the disk within the hour,
/// and the audit trail, which fails closed, then refuses everyone.
pub const COMMAND_RECORDED: usize = 4096;

/// `argv` as a session record keeps it: whole when it fits in [`COMMAND_RECORDED`] bytes, else cut (each argument
/// at a character boundary, the arguments past the budget left out) with the whole one's size and SHA-256.
pub fn recorded_command(argv: &[String]) -> (Vec<String>, Option<usize>, Option<String>) {
    let total: usize = argv.iter().map(String::len).sum();
    if total <= COMMAND_RECORDED {
        return (argv.to_vec(), None, None);
    }
    let mut left = COMMAND_RECORDED;
    let mut kept = Vec::new();
    for a in argv {
        if left == 0 {
            break;
        }
        let mut end = a.len().min(left);
        while !a.is_char_boundary(end) {
            end -= 1;
        }
        kept.push(a[..end].to_string());
        left -= end;
    }
    let mut h = ring::digest::Context::new(&ring::digest::SHA256);
    for a in argv {
        h.update(a.as_bytes());
        h.update(&[0]);
    }
    let hex: String = h.finish().as_ref().iter().map(|b| format!("{b:02x}")).collect();
    (kept, Some(total), Some(hex))
}

/// A record that could not be appended.
#[derive(Debug, thiserror::Error)]
#[error("audit log write failed: {0}")]
pub struct AuditError(#[from] std::io::Error);

/// What both records of a session say about it: who asked, from where, for which container, to run
/// what. Flattened into each record, so the JSON fields stay top-level.
#[derive(Debug, Clone, Serialize)]
pub struct SessionInfo {
    /// The token's subject.
    pub user: String,
    /// The user's address: as the agent saw it, or as a gateway that relayed the session reported it.
    pub source: String,
    /// The gateway that relayed the session (its address), when one did.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub via: Option<String>,
    /// The task id as requested.
    pub task: String,
    /// The container id the task resolved to.
    pub container: String,
    /// The command and its arguments, cut to [`COMMAND_RECORDED`] bytes in all (see [`recorded_command`]).
    pub command: Vec<String>,
    /// When `command` was cut: the whole command's size in bytes (arguments end to end) and its SHA-256 (of the
    /// arguments, each followed by a NUL), so a command shown elsewhere can still be matched to the record.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub command_bytes: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub command_sha256: Option<String>,
    /// Whether a terminal was requested.
    pub tty: bool,
    /// Whether stdin was requested.
    pub stdin: bool,
    /// `--user` as requested, when given.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub run_as: Option<String>,
    /// `--debug-image`: as normalised in the start record, as pulled in the end record (absent if the
    /// pull failed).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
}

/// A session that got past the upgrade, written before anything is pulled or started: if the agent dies
/// mid-session, this record is what remains.
#[derive(Debug, Clone, Serialize)]
pub struct SessionStartRecord {
    /// `session_start`.
    pub event: &'static str,
    /// The session id, shared with the end record.
    pub session: String,
    /// When the session started.
    pub time: String,
    /// Who, where and what.
    #[serde(flatten)]
    pub info: SessionInfo,
}

/// A session that ended: ran, failed to start, or was hung up.
#[derive(Debug, Clone, Serialize)]
pub struct SessionRecord {
    /// `session_end`.
    pub event: &'static str,
    /// The session id, shared with the start record.
    pub session: String,
    /// Who, where and what.
    #[serde(flatten)]
    pub info: SessionInfo,
    /// The manifest digest `image` resolved to.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub image_digest: Option<String>,
    /// When the session started (the start record's `time`).
    pub start: String,
    /// When the session ended.
    pub end: String,
    /// The final status as sent to the client.
    pub status: dcos_exec_proto::Status,
    /// Bytes received from the client (stdin).
    pub bytes_in: u64,
    /// Bytes sent to the client (stdout and stderr).
    pub bytes_out: u64,
}

/// A refused request.
#[derive(Debug, Clone, Serialize)]
pub struct DenialRecord {
    pub event: &'static str,
    pub time: String,
    pub user: Option<String>,
    pub source: String,
    /// The gateway that relayed the request, when one did.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub via: Option<String>,
    pub path: String,
    pub task: Option<String>,
    pub code: dcos_exec_proto::ErrorCode,
    pub reason: String,
    /// Unauthenticated refusals since the previous one recorded that were only counted (rate limit).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub suppressed: Option<u64>,
}

/// A session a gateway relayed to the agent of its node: `relay_start` once the agent switched protocols,
/// `relay_end` (with the byte counts and `end`) when either side closed.
#[derive(Debug, Clone, Serialize)]
pub struct RelayRecord {
    /// `relay_start` or `relay_end`.
    pub event: &'static str,
    /// When the relay started.
    pub time: String,
    /// The token's subject.
    pub user: String,
    /// The user's address.
    pub source: String,
    /// The task as requested.
    pub task: String,
    /// The node and container it resolved to.
    pub node: String,
    pub container: String,
    /// When the relay ended (end record only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub end: Option<String>,
    /// Bytes from user to agent, and back (end record only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bytes_in: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bytes_out: Option<u64>,
}

/// The append-only audit log.
pub struct AuditLog {
    file: Mutex<Appender>,
    unauthenticated: Mutex<Window>,
}

struct Appender {
    file: std::fs::File,
    /// A failed write may have left part of a record: the next one starts on a fresh line.
    torn: bool,
}

/// The current second of unauthenticated refusals: how many were recorded, how many only counted.
struct Window {
    start: Instant,
    recorded: u64,
    suppressed: u64,
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
        Ok(AuditLog {
            file: Mutex::new(Appender { file, torn: false }),
            unauthenticated: Mutex::new(Window { start: Instant::now(), recorded: 0, suppressed: 0 }),
        })
    }

    fn write<T: Serialize>(&self, rec: &T) -> Result<(), AuditError> {
        let mut line = serde_json::to_vec(rec).map_err(std::io::Error::from)?;
        line.push(b'\n');
        // One write per record so concurrent sessions never interleave within a line.
        let mut a = self.file.lock().unwrap_or_else(|p| p.into_inner());
        if a.torn {
            line.insert(0, b'\n');
        }
        let before = a.file.metadata().map(|m| m.len());
        let r = a.file.write_all(&line);
        match r {
            Ok(()) => {
                a.torn = false;
                Ok(())
            }
            Err(e) => {
                // Take back what part of the record made it; if that fails too, end the torn line first
                // next time, so the records after it still parse.
                let undone = before.is_ok_and(|len| a.file.set_len(len).is_ok());
                a.torn = !undone;
                tracing::error!("audit log write failed: {e}");
                Err(e.into())
            }
        }
    }

    /// Writes the start record; a session must not start when this fails.
    pub fn session_start(&self, rec: &SessionStartRecord) -> Result<(), AuditError> {
        self.write(rec)
    }

    pub fn session(&self, rec: &SessionRecord) {
        let _ = self.write(rec);
    }

    /// Writes a refusal, with its request-controlled fields escaped and cut to [`crate::text::MAX_FIELD`].
    pub fn denial(&self, rec: &DenialRecord) {
        let bounded = |s: &Option<String>| s.as_deref().map(crate::text::bounded);
        let _ = self.write(&DenialRecord {
            user: bounded(&rec.user),
            path: crate::text::bounded(&rec.path),
            task: bounded(&rec.task),
            reason: crate::text::bounded(&rec.reason),
            ..rec.clone()
        });
    }

    pub fn relay(&self, rec: &RelayRecord) {
        let _ = self.write(rec);
    }

    /// Whether to record (audit and log) a refusal of `user` (`None`: not authenticated): `Some(suppressed)`
    /// to record it, with the count of unauthenticated refusals only counted since the last one recorded (`None`
    /// when there were none); `None` to count it only. Refusals of an authenticated user are always recorded.
    pub fn admit_refusal(&self, user: Option<&str>) -> Option<Option<u64>> {
        match user {
            Some(_) => Some(None),
            None => self.admit_unauthenticated().map(|n| (n > 0).then_some(n)),
        }
    }

    /// Whether to record (audit and log) an unauthenticated refusal now: `Some(n)` with the number of them
    /// only counted since the last one recorded, `None` when over [`UNAUTHENTICATED_PER_SECOND`].
    pub fn admit_unauthenticated(&self) -> Option<u64> {
        let mut w = self.unauthenticated.lock().unwrap_or_else(|p| p.into_inner());
        if w.start.elapsed().as_secs() >= 1 {
            w.start = Instant::now();
            w.recorded = 0;
        }
        if w.recorded >= UNAUTHENTICATED_PER_SECOND {
            w.suppressed += 1;
            return None;
        }
        w.recorded += 1;
        Some(std::mem::take(&mut w.suppressed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(image: Option<&str>) -> SessionInfo {
        SessionInfo {
            user: "alice".into(),
            source: "10.0.0.1:5000".into(),
            via: None,
            task: "web.1".into(),
            container: "c1".into(),
            command: vec!["sh".into(), "-c".into(), "id".into()],
            command_bytes: None,
            command_sha256: None,
            tty: true,
            stdin: false,
            run_as: Some("1000".into()),
            image: image.map(Into::into),
        }
    }

    /// The records are read by operators' tools and by the end-to-end tests: the flattened shared part
    /// must leave the field names and their order exactly as they were when each record spelled them out.
    #[test]
    fn records_keep_their_field_names_and_order() {
        let start = SessionStartRecord {
            event: "session_start",
            session: "s1".into(),
            time: "t0".into(),
            info: info(Some("docker.io/library/busybox:latest")),
        };
        assert_eq!(
            serde_json::to_string(&start).unwrap(),
            r#"{"event":"session_start","session":"s1","time":"t0","user":"alice","source":"10.0.0.1:5000","task":"web.1","container":"c1","command":["sh","-c","id"],"tty":true,"stdin":false,"run_as":"1000","image":"docker.io/library/busybox:latest"}"#
        );
        let end = SessionRecord {
            event: "session_end",
            session: "s1".into(),
            info: info(Some("docker.io/library/busybox:latest")),
            image_digest: Some("sha256:ab".into()),
            start: "t0".into(),
            end: "t1".into(),
            status: dcos_exec_proto::Status::Exited { code: 3 },
            bytes_in: 5,
            bytes_out: 7,
        };
        assert_eq!(
            serde_json::to_string(&end).unwrap(),
            r#"{"event":"session_end","session":"s1","user":"alice","source":"10.0.0.1:5000","task":"web.1","container":"c1","command":["sh","-c","id"],"tty":true,"stdin":false,"run_as":"1000","image":"docker.io/library/busybox:latest","image_digest":"sha256:ab","start":"t0","end":"t1","status":{"status":"exited","code":3},"bytes_in":5,"bytes_out":7}"#
        );
    }

    /// Absent optional values leave their keys out in both records, as before.
    #[test]
    fn absent_options_are_omitted() {
        let mut i = info(None);
        i.run_as = None;
        let start =
            SessionStartRecord { event: "session_start", session: "s".into(), time: "t".into(), info: i.clone() };
        let v = serde_json::to_value(&start).unwrap();
        let keys: Vec<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
        assert_eq!(
            keys,
            ["command", "container", "event", "session", "source", "stdin", "task", "time", "tty", "user"]
        );
        let end = SessionRecord {
            event: "session_end",
            session: "s".into(),
            info: i,
            image_digest: None,
            start: "t".into(),
            end: "t".into(),
            status: dcos_exec_proto::Status::Signaled { signal: 9 },
            bytes_in: 0,
            bytes_out: 0,
        };
        let v = serde_json::to_value(&end).unwrap();
        for k in ["run_as", "image", "image_digest"] {
            assert!(v.get(k).is_none(), "{k} present in {v}");
        }
        assert_eq!(v["status"]["signal"], 9);
    }

    /// Request-controlled fields of a refusal are escaped and cut before they are written.
    #[test]
    fn denials_are_bounded_and_escaped() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.log");
        let log = AuditLog::open(&path).unwrap();
        log.denial(&DenialRecord {
            event: "denied",
            time: now(),
            user: None,
            source: "10.0.0.9:1".into(),
            via: None,
            path: format!("/v1/tasks/{}/exec", "A".repeat(60_000)),
            task: Some("t\n2026 INFO forged".into()),
            code: dcos_exec_proto::ErrorCode::Unauthenticated,
            reason: "r".into(),
            suppressed: None,
        });
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.len() < 1024, "{}", text.len());
        let v: serde_json::Value = serde_json::from_str(text.trim_end()).unwrap();
        assert!(v["path"].as_str().unwrap().ends_with("more bytes]"));
        assert_eq!(v["task"], "t\\n2026 INFO forged");
        assert!(v.get("suppressed").is_none());
    }

    /// At most UNAUTHENTICATED_PER_SECOND a second are admitted; the next admitted one carries the count.
    #[test]
    fn unauthenticated_refusals_are_rate_limited_and_counted() {
        let dir = tempfile::tempdir().unwrap();
        let log = AuditLog::open(&dir.path().join("audit.log")).unwrap();
        let admitted: Vec<Option<u64>> =
            (0..UNAUTHENTICATED_PER_SECOND + 5).map(|_| log.admit_unauthenticated()).collect();
        let (first, rest) = admitted.split_at(usize::try_from(UNAUTHENTICATED_PER_SECOND).unwrap());
        assert!(first.iter().all(|a| *a == Some(0)));
        assert!(rest.len() == 5 && rest.iter().all(Option::is_none));
        std::thread::sleep(std::time::Duration::from_millis(1010));
        assert_eq!(log.admit_unauthenticated(), Some(5));
        assert_eq!(log.admit_unauthenticated(), Some(0));
    }

    /// A write that fails (here every write: /dev/full) reports the error, and marks the next record to start
    /// on a fresh line, since a device cannot be cut back.
    #[test]
    fn a_failed_write_is_an_error_and_marks_the_line_torn() {
        let log = AuditLog::open(Path::new("/dev/full")).unwrap();
        let rec =
            SessionStartRecord { event: "session_start", session: "s".into(), time: "t".into(), info: info(None) };
        assert!(log.session_start(&rec).is_err());
        assert!(log.file.lock().unwrap().torn);
    }

    #[test]
    fn commands_are_recorded_whole_up_to_the_budget_then_cut_with_size_and_digest() {
        let small = vec!["sh".to_string(), "-c".into(), "id".into()];
        assert_eq!(recorded_command(&small), (small.clone(), None, None));
        let huge = vec!["sh".to_string(), "-c".into(), "é".repeat(200_000), "tail".into()];
        let (kept, bytes, sha) = recorded_command(&huge);
        assert_eq!(bytes, Some(400_008));
        assert!(kept.iter().map(String::len).sum::<usize>() <= COMMAND_RECORDED);
        assert_eq!(kept.len(), 3, "the arguments past the budget are left out");
        assert!(kept[2].chars().all(|c| c == 'é'), "cut at a character boundary");
        let (_, _, other) = recorded_command(&[huge[0].clone(), huge[1].clone(), huge[2].clone(), "tail2".into()]);
        assert_ne!(sha, other, "the digest covers what was cut");
        assert_eq!(sha.map(|h| h.len()), Some(64));
    }
}
