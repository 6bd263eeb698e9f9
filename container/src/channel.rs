//! Every message between the agent and its helper, and inside the helper between its processes.
//!
//! - Control pipe (agent to helper, the helper's fd 3): [`Control`] frames. The first is the spec; then
//!   signals. End of file means the client is gone: the helper hangs up the session.
//! - Event pipe (helper to agent, fd 4): [`Event`] frames: `Started` once the command runs, then `Finished`.
//! - Console socket (fd 5, TTY sessions): the pty master, passed with `SCM_RIGHTS` ([`crate::pty`]).
//! - Joiner to supervisor: a [`JoinReport`] in a shared memory page, read once the joiner has exited.
//! - Visible child to supervisor: nothing on any descriptor. The supervisor traces the child from its birth
//!   (`CLONE_PTRACE`), so `execve` is the kernel's `PTRACE_EVENT_EXEC`; a child that fails first leaves a
//!   [`ChildFailure`] word in its memory, which the supervisor reads at its `PTRACE_EVENT_EXIT`.
//!
//! Frames are a 4-byte little-endian length and a JSON body of at most [`MAX_FRAME`] bytes.

use crate::error::{Stage, StartError};
use crate::spec::ExecSpec;
use dcos_exec_proto::Status;
use serde::{de::DeserializeOwned, Deserialize, Serialize};
use std::io::{Read, Write};

/// Largest frame either side accepts.
pub const MAX_FRAME: usize = 4 << 20;

/// Agent to helper.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Control {
    /// What to run; always the first frame.
    Spec(Box<ExecSpec>),
    /// Deliver this signal (1..=64) to the command.
    Signal(i32),
}

/// Helper to agent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Event {
    /// The command was exec'd; `pid` is its pid in the container's pid namespace.
    Started {
        /// The command's pid in the container's pid namespace.
        pid: i32,
    },
    /// The session's final status; always the last frame.
    Finished(Status),
}

/// Errors reading a frame.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// The length prefix announces more than [`MAX_FRAME`] bytes.
    #[error("frame of {0} bytes is larger than {MAX_FRAME}")]
    TooLarge(usize),
    /// The pipe failed or ended inside a frame.
    #[error("reading a frame: {0}")]
    Io(#[from] std::io::Error),
    /// The frame's body is not the message expected.
    #[error("decoding a frame: {0}")]
    Json(#[from] serde_json::Error),
}

/// One frame for `msg`.
pub fn encode<T: Serialize>(msg: &T) -> Vec<u8> {
    // Serializing these plain types cannot fail; an empty body would be refused by the reader.
    let json = serde_json::to_vec(msg).unwrap_or_default();
    let mut out = Vec::with_capacity(json.len() + 4);
    // Beyond u32 (never, for these types) the prefix says u32::MAX, which the reader refuses as too large.
    out.extend_from_slice(&u32::try_from(json.len()).unwrap_or(u32::MAX).to_le_bytes());
    out.extend_from_slice(&json);
    out
}

/// The body length announced by a frame header, if acceptable.
pub fn body_len(header: [u8; 4]) -> Result<usize, FrameError> {
    let n = u32::from_le_bytes(header) as usize;
    if n > MAX_FRAME {
        return Err(FrameError::TooLarge(n));
    }
    Ok(n)
}

/// Decodes a frame body.
pub fn decode<T: DeserializeOwned>(body: &[u8]) -> Result<T, FrameError> {
    Ok(serde_json::from_slice(body)?)
}

/// Writes one frame.
pub fn write<T: Serialize>(w: &mut impl Write, msg: &T) -> std::io::Result<()> {
    w.write_all(&encode(msg))
}

/// Reads one frame; `Ok(None)` at a clean end of file.
pub fn read<T: DeserializeOwned>(r: &mut impl Read) -> Result<Option<T>, FrameError> {
    let mut header = [0u8; 4];
    match r.read_exact(&mut header) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e.into()),
    }
    let mut body = vec![0u8; body_len(header)?];
    r.read_exact(&mut body)?;
    decode(&body).map(Some)
}

/// What the joiner tells the supervisor before it exits.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JoinReport {
    /// The visible child was forked; its host pid. It reports its own failure, if any, as a [`ChildFailure`].
    Forked {
        /// The child's pid in the host's pid namespace.
        pid: i32,
    },
    /// Nothing was forked.
    Failed(StartError),
}

/// Size of the page the joiner writes its report into.
pub const REPORT_PAGE: usize = 64 << 10;

impl JoinReport {
    /// Writes the report into `page` (length-prefixed JSON), truncating an over-long message.
    pub fn store(&self, page: &mut [u8]) {
        let mut body = serde_json::to_vec(self).unwrap_or_default();
        if body.len() + 4 > page.len() {
            let short = JoinReport::Failed(StartError::Internal("the exec helper's report was too long".into()));
            body = serde_json::to_vec(&short).unwrap_or_default();
        }
        // The body fits the page, and a page never reaches u32::MAX bytes.
        page[..4].copy_from_slice(&u32::try_from(body.len()).unwrap_or(u32::MAX).to_le_bytes());
        page[4..4 + body.len()].copy_from_slice(&body);
    }

    /// Reads a report stored by [`JoinReport::store`]; `None` if there is none (the joiner died first).
    pub fn load(page: &[u8]) -> Option<JoinReport> {
        let n = u32::from_le_bytes(page.get(..4)?.try_into().ok()?) as usize;
        serde_json::from_slice(page.get(4..4 + n)?).ok()
    }
}

/// The visible child's only message: the stage it failed at, and errno, packed in one machine word that the
/// supervisor reads from the child's memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChildFailure {
    /// The step that failed.
    pub stage: Stage,
    /// Its errno.
    pub errno: i32,
}

impl ChildFailure {
    /// Marks a word as written (a zero word means the child wrote nothing).
    const MAGIC: u64 = 0xdc05 << 48;

    /// Packs without allocating (the child runs between fork and exec).
    pub const fn encode(stage: Stage, errno: i32) -> u64 {
        // The errno's bits as they are; decode reinterprets them the same way.
        Self::MAGIC | ((stage as u64) << 32) | (errno.cast_unsigned() as u64)
    }

    /// Unpacks a word; anything but a well-formed record is refused.
    pub fn decode(word: u64) -> Option<ChildFailure> {
        if word & (0xffff << 48) != Self::MAGIC {
            return None;
        }
        let stage = Stage::from_u32(((word >> 32) & 0xffff) as u32)?;
        let errno = ((word & 0xffff_ffff) as u32).cast_signed();
        (0..4096).contains(&errno).then_some(ChildFailure { stage, errno })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use dcos_exec_proto::ErrorCode;

    #[test]
    fn control_and_events_round_trip() {
        let spec = crate::spec::tests::sample();
        let mut buf = Vec::new();
        write(&mut buf, &Control::Spec(Box::new(spec.clone()))).unwrap();
        write(&mut buf, &Control::Signal(15)).unwrap();
        let mut r = &buf[..];
        assert_eq!(read::<Control>(&mut r).unwrap(), Some(Control::Spec(Box::new(spec))));
        assert_eq!(read::<Control>(&mut r).unwrap(), Some(Control::Signal(15)));
        assert_eq!(read::<Control>(&mut r).unwrap(), None);

        let evs = [Event::Started { pid: 7 }, Event::Finished(Status::Exited { code: 3 })];
        let mut buf = Vec::new();
        for e in &evs {
            write(&mut buf, e).unwrap();
        }
        let mut r = &buf[..];
        for e in &evs {
            assert_eq!(read::<Event>(&mut r).unwrap().as_ref(), Some(e));
        }
    }

    #[test]
    fn oversized_truncated_and_garbled_frames_are_errors() {
        let mut big = u32::try_from(MAX_FRAME + 1).unwrap().to_le_bytes().to_vec();
        big.extend_from_slice(b"{}");
        assert!(matches!(read::<Event>(&mut &big[..]), Err(FrameError::TooLarge(_))));
        let mut cut = encode(&Event::Started { pid: 1 });
        cut.pop();
        assert!(matches!(read::<Event>(&mut &cut[..]), Err(FrameError::Io(_))));
        let mut bad = 2u32.to_le_bytes().to_vec();
        bad.extend_from_slice(b"{]");
        assert!(matches!(read::<Event>(&mut &bad[..]), Err(FrameError::Json(_))));
    }

    #[test]
    fn join_reports_survive_the_page_and_long_ones_are_cut() {
        let mut page = vec![0u8; REPORT_PAGE];
        assert_eq!(JoinReport::load(&page), None);
        let r = JoinReport::Forked { pid: 4242 };
        r.store(&mut page);
        assert_eq!(JoinReport::load(&page), Some(r));
        let long = JoinReport::Failed(StartError::BadRequest("x".repeat(REPORT_PAGE)));
        long.store(&mut page);
        let back = JoinReport::load(&page).unwrap();
        assert!(matches!(back, JoinReport::Failed(ref e) if e.code() == ErrorCode::Internal), "{back:?}");
        // A page the joiner never wrote holds no report.
        assert_eq!(JoinReport::load(&vec![0u8; REPORT_PAGE]), None);
    }

    #[test]
    fn child_failures_are_exact_records() {
        let w = ChildFailure::encode(Stage::Exec, libc::ENOENT);
        assert_eq!(ChildFailure::decode(w), Some(ChildFailure { stage: Stage::Exec, errno: libc::ENOENT }));
        assert_eq!(ChildFailure::decode(0), None);
        assert_eq!(ChildFailure::decode(w & !(1 << 60)), None);
        assert_eq!(ChildFailure::decode(ChildFailure::encode(Stage::Exec, -1)), None);
        assert_eq!(ChildFailure::decode((w & !(0xffff << 32)) | (99 << 32)), None);
    }
}
