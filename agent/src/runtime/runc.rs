//! runc's state: `ROOT/ID/state.json`, written by runc itself (and by containerd's and Docker's shims through it).

use super::{proc_state, Container, State};
use serde::Deserialize;
use std::path::{Path, PathBuf};

#[derive(Deserialize)]
struct RuncState {
    id: String,
    init_process_pid: i32,
    init_process_start: u64,
    config: RuncConfig,
}

#[derive(Deserialize)]
struct RuncConfig {
    #[serde(default)]
    labels: Vec<String>,
}

/// The container whose state directory is `dir`, or None while it is unreadable.
pub(super) fn read(dir: &Path) -> Option<Container> {
    let s: RuncState = serde_json::from_slice(&std::fs::read(dir.join("state.json")).ok()?).ok()?;
    let bundle = s.config.labels.iter().find_map(|l| l.strip_prefix("bundle=")).map(PathBuf::from)?;
    let mut state = proc_state(s.init_process_pid, s.init_process_start);
    // runc keeps exec.fifo until `runc start`: the init exists but waits.
    if state == State::Running && dir.join("exec.fifo").exists() {
        state = State::Created;
    }
    Some(Container {
        task_id: s.id.clone(),
        id: s.id,
        runtime: "runc",
        pid: s.init_process_pid,
        start_time: s.init_process_start,
        bundle,
        state,
        ..Container::default()
    })
}
