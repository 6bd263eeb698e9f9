//! crun's state: `ROOT/ID/status`.

use super::{proc_start_time, proc_state, Container, State};
use serde::Deserialize;
use std::path::{Path, PathBuf};

#[derive(Deserialize)]
struct CrunStatus {
    pid: i32,
    #[serde(rename = "process-start-time", default)]
    process_start_time: u64,
    bundle: PathBuf,
}

/// The container whose state directory is `dir`, or None while it is unreadable.
pub(super) fn read(dir: &Path) -> Option<Container> {
    let s: CrunStatus = serde_json::from_slice(&std::fs::read(dir.join("status")).ok()?).ok()?;
    let id = dir.file_name()?.to_str()?.to_string();
    let start = if s.process_start_time != 0 { s.process_start_time } else { proc_start_time(s.pid).unwrap_or(0) };
    let mut state = proc_state(s.pid, start);
    // Like runc, crun keeps exec.fifo until `crun start`: the init is still crun itself, waiting, and its
    // namespaces are not the container's finished ones yet.
    if state == State::Running && dir.join("exec.fifo").exists() {
        state = State::Created;
    }
    Some(Container {
        task_id: id.clone(),
        id,
        runtime: "crun",
        pid: s.pid,
        start_time: start,
        state,
        bundle: s.bundle,
        ..Container::default()
    })
}
