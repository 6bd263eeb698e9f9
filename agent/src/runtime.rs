//! Container discovery: reads the state that OCI runtimes (runc, crun) keep on the host and the bundle's config.

use serde::Deserialize;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// Errors resolving a task.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error("no task {0:?} on this host")]
    NotFound(String),
    #[error("task {task:?} has {count} containers; use the container id")]
    Ambiguous { task: String, count: usize },
    #[error("container {id} is {state}, not running")]
    NotRunning { id: String, state: String },
}

impl RuntimeError {
    /// The wire code of each resolution failure.
    pub fn code(&self) -> dcos_exec_proto::ErrorCode {
        use dcos_exec_proto::ErrorCode;
        match self {
            RuntimeError::NotFound(_) => ErrorCode::TaskNotFound,
            RuntimeError::NotRunning { .. } => ErrorCode::ContainerNotRunning,
            // The client named something that needs disambiguation: it can fix the request.
            RuntimeError::Ambiguous { .. } => ErrorCode::BadRequest,
        }
    }
}

/// What the runtime says about the container's init.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum State {
    Created,
    Running,
    Stopped,
}

impl State {
    pub fn as_str(self) -> &'static str {
        match self {
            State::Created => "created",
            State::Running => "running",
            State::Stopped => "stopped",
        }
    }
}

/// One container found on the host.
#[derive(Debug, Clone)]
pub struct Container {
    pub id: String,
    pub task_id: String,
    pub runtime: &'static str,
    pub pid: i32,
    /// Start time of the init in clock ticks after boot (field 22 of /proc/PID/stat): guards against pid reuse.
    pub start_time: u64,
    pub bundle: PathBuf,
    pub state: State,
}

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

#[derive(Deserialize)]
struct CrunStatus {
    pid: i32,
    #[serde(rename = "process-start-time", default)]
    process_start_time: u64,
    bundle: PathBuf,
}

/// Finds containers under the configured state roots.
pub struct Discovery {
    runc_roots: Vec<PathBuf>,
    crun_roots: Vec<PathBuf>,
    annotation: Option<String>,
}

impl Discovery {
    pub fn new(cfg: &crate::config::RuntimesConfig, annotation: Option<String>) -> Self {
        Discovery { runc_roots: cfg.runc_roots.clone(), crun_roots: cfg.crun_roots.clone(), annotation }
    }

    /// Every container found, in no particular order. Unreadable entries are skipped: a runtime may be
    /// writing its state while we look.
    pub fn list(&self) -> Vec<Container> {
        let mut out = Vec::new();
        for dir in expand(&self.runc_roots) {
            for entry in subdirs(&dir) {
                if let Some(c) = self.read_runc(&entry) {
                    out.push(c);
                }
            }
        }
        for dir in expand(&self.crun_roots) {
            for entry in subdirs(&dir) {
                if let Some(c) = self.read_crun(&entry) {
                    out.push(c);
                }
            }
        }
        out
    }

    /// The container for a task id (or a container id), which must be running.
    pub fn resolve(&self, task: &str) -> Result<Container, RuntimeError> {
        let mut all = self.list();
        // An exact container id wins over annotation values.
        let pos = all.iter().position(|c| c.id == task);
        let c = match pos {
            Some(i) => all.swap_remove(i),
            None => {
                let mut hits: Vec<_> = all.into_iter().filter(|c| c.task_id == task).collect();
                match hits.len() {
                    0 => return Err(RuntimeError::NotFound(task.into())),
                    1 => hits.remove(0),
                    count => return Err(RuntimeError::Ambiguous { task: task.into(), count }),
                }
            }
        };
        if c.state != State::Running {
            return Err(RuntimeError::NotRunning { id: c.id, state: c.state.as_str().into() });
        }
        Ok(c)
    }

    fn task_id(&self, id: &str, bundle: &Path) -> String {
        let Some(key) = &self.annotation else {
            return id.into();
        };
        read_annotations(bundle).and_then(|mut a| a.remove(key)).unwrap_or_else(|| id.into())
    }

    fn read_runc(&self, dir: &Path) -> Option<Container> {
        let s: RuncState = serde_json::from_slice(&std::fs::read(dir.join("state.json")).ok()?).ok()?;
        let bundle = s.config.labels.iter().find_map(|l| l.strip_prefix("bundle=")).map(PathBuf::from)?;
        let mut state = proc_state(s.init_process_pid, s.init_process_start);
        // runc keeps exec.fifo until `runc start`: the init exists but waits.
        if state == State::Running && dir.join("exec.fifo").exists() {
            state = State::Created;
        }
        Some(Container {
            task_id: self.task_id(&s.id, &bundle),
            id: s.id,
            runtime: "runc",
            pid: s.init_process_pid,
            start_time: s.init_process_start,
            bundle,
            state,
        })
    }

    fn read_crun(&self, dir: &Path) -> Option<Container> {
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
            task_id: self.task_id(&id, &s.bundle),
            id,
            runtime: "crun",
            pid: s.pid,
            start_time: start,
            state,
            bundle: s.bundle,
        })
    }
}

fn expand(roots: &[PathBuf]) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for r in roots {
        if r.file_name().is_some_and(|n| n == "*") {
            if let Some(parent) = r.parent() {
                out.extend(subdirs(parent));
            }
        } else {
            out.push(r.clone());
        }
    }
    out
}

fn subdirs(dir: &Path) -> Vec<PathBuf> {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    rd.filter_map(Result::ok).filter(|e| e.file_type().is_ok_and(|t| t.is_dir())).map(|e| e.path()).collect()
}

fn read_annotations(bundle: &Path) -> Option<HashMap<String, String>> {
    #[derive(Deserialize)]
    struct Partial {
        #[serde(default)]
        annotations: HashMap<String, String>,
    }
    let p: Partial = serde_json::from_slice(&std::fs::read(bundle.join("config.json")).ok()?).ok()?;
    Some(p.annotations)
}

pub use dcos_exec_container::procfs::start_time as proc_start_time;

fn proc_state(pid: i32, start: u64) -> State {
    match proc_start_time(pid) {
        Some(t) if t == start || start == 0 => State::Running,
        _ => State::Stopped,
    }
}

/// Seconds since a process that started at `start_ticks` began.
pub fn age_secs(start_ticks: u64) -> u64 {
    let ticks = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .and_then(|t| u64::try_from(t).ok())
        .filter(|&t| t > 0)
        .unwrap_or(100);
    // Whole seconds of "SECONDS.FRACTION IDLE".
    let uptime: u64 = std::fs::read_to_string("/proc/uptime")
        .ok()
        .and_then(|s| s.split(['.', ' ']).next()?.parse().ok())
        .unwrap_or(0);
    uptime.saturating_sub(start_ticks / ticks)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write_runc(root: &Path, id: &str, pid: i32, start: u64, bundle: &Path) {
        let d = root.join(id);
        std::fs::create_dir_all(&d).unwrap();
        let json = serde_json::json!({"id": id, "init_process_pid": pid, "init_process_start": start,
            "config": {"labels": [format!("bundle={}", bundle.display())]}});
        std::fs::write(d.join("state.json"), json.to_string()).unwrap();
    }

    #[test]
    fn finds_runc_and_crun_state_and_task_annotations() {
        let tmp = tempfile::tempdir().unwrap();
        let me = nix::unistd::getpid().as_raw();
        let start = proc_start_time(me).unwrap();
        let bundle = tmp.path().join("bundle");
        std::fs::create_dir_all(&bundle).unwrap();
        std::fs::write(bundle.join("config.json"), r#"{"annotations":{"task":"web.1"}}"#).unwrap();
        let runc = tmp.path().join("runc");
        write_runc(&runc, "live", me, start, &bundle);
        write_runc(&runc, "dead", me, start + 1, &bundle);
        let crun_ns = tmp.path().join("crun/ns1/c2");
        std::fs::create_dir_all(&crun_ns).unwrap();
        std::fs::write(crun_ns.join("status"), format!(r#"{{"pid":{me},"bundle":"/nonexistent"}}"#)).unwrap();
        // `crun create` without `crun start`: the fifo is still there.
        let crun_created = tmp.path().join("crun/ns1/c3");
        std::fs::create_dir_all(&crun_created).unwrap();
        std::fs::write(crun_created.join("status"), format!(r#"{{"pid":{me},"bundle":"/nonexistent"}}"#)).unwrap();
        nix::unistd::mkfifo(&crun_created.join("exec.fifo"), nix::sys::stat::Mode::S_IRUSR).unwrap();
        let cfg = crate::config::RuntimesConfig { runc_roots: vec![runc], crun_roots: vec![tmp.path().join("crun/*")] };
        let d = Discovery::new(&cfg, Some("task".into()));
        let mut all: Vec<_> = d.list().into_iter().map(|c| (c.id, c.task_id, c.runtime, c.state)).collect();
        all.sort();
        assert_eq!(
            all,
            vec![
                ("c2".into(), "c2".into(), "crun", State::Running),
                ("c3".into(), "c3".into(), "crun", State::Created),
                ("dead".into(), "web.1".into(), "runc", State::Stopped),
                ("live".into(), "web.1".into(), "runc", State::Running),
            ]
        );
        assert!(matches!(d.resolve("web.1"), Err(RuntimeError::Ambiguous { count: 2, .. })));
        assert_eq!(d.resolve("live").unwrap().pid, me);
        assert!(matches!(d.resolve("dead"), Err(RuntimeError::NotRunning { .. })));
        assert!(matches!(d.resolve("c3"), Err(RuntimeError::NotRunning { .. })));
        assert!(matches!(d.resolve("nope"), Err(RuntimeError::NotFound(_))));
    }
}
