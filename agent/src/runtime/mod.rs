//! Container discovery: reads the state that OCI runtimes (runc, crun) keep on the host and the bundle's config,
//! and picks the container a user's name for it means ([`names`]).

mod crun;
pub mod names;
mod runc;

use serde::Deserialize;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// Errors resolving a task.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error("no task {0:?} on this host")]
    NotFound(String),
    #[error("task {task:?} is ambiguous, it matches: {}; name one of them", candidates.join(", "))]
    Ambiguous { task: String, candidates: Vec<String> },
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
            RuntimeError::Ambiguous { .. } => ErrorCode::Ambiguous,
        }
    }
}

/// What the runtime says about the container's init.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord)]
pub enum State {
    Created,
    Running,
    #[default]
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
#[derive(Debug, Clone, Default)]
pub struct Container {
    pub id: String,
    /// The `task_id_annotation` of its bundle, else its container id.
    pub task_id: String,
    /// The runtime's own name for it (Docker's `/name`), when the runtime has one.
    pub name: Option<String>,
    /// Compose's `com.docker.compose.service` and `com.docker.compose.project` labels.
    pub service: Option<String>,
    pub project: Option<String>,
    /// Exit status of a stopped container, when its runtime records one.
    pub exit_code: Option<i32>,
    pub runtime: &'static str,
    pub pid: i32,
    /// Start time of the init in clock ticks after boot (field 22 of /proc/PID/stat): guards against pid reuse.
    pub start_time: u64,
    pub bundle: PathBuf,
    pub state: State,
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
        let found = expand(&self.runc_roots)
            .into_iter()
            .flat_map(|d| subdirs(&d))
            .filter_map(|d| runc::read(&d))
            .chain(expand(&self.crun_roots).into_iter().flat_map(|d| subdirs(&d)).filter_map(|d| crun::read(&d)));
        for mut c in found {
            if let Some(t) = self.task_id(&c.bundle) {
                c.task_id = t;
            }
            out.push(c);
        }
        out
    }

    /// The running container that `task` names among those `visible` to the caller (see [`names::pick`]).
    /// Containers the caller may not see neither match nor make a name ambiguous.
    pub fn resolve(&self, task: &str, visible: impl Fn(&Container) -> bool) -> Result<Container, RuntimeError> {
        let mut all: Vec<Container> = self.list().into_iter().filter(|c| visible(c)).collect();
        let c = match names::pick(&all, task) {
            names::Pick::One(i) => all.swap_remove(i),
            names::Pick::None => return Err(RuntimeError::NotFound(task.into())),
            names::Pick::Many(hits) => {
                let mut candidates: Vec<String> = hits.iter().map(|&i| names::describe(&all[i])).collect();
                candidates.sort();
                return Err(RuntimeError::Ambiguous { task: task.into(), candidates });
            }
        };
        if c.state != State::Running {
            return Err(RuntimeError::NotRunning { id: c.id, state: c.state.as_str().into() });
        }
        Ok(c)
    }

    fn task_id(&self, bundle: &Path) -> Option<String> {
        read_annotations(bundle)?.remove(self.annotation.as_ref()?)
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

pub(crate) fn proc_state(pid: i32, start: u64) -> State {
    match proc_start_time(pid) {
        Some(t) if t == start || start == 0 => State::Running,
        _ => State::Stopped,
    }
}

/// Seconds since a process that started at `start_ticks` began.
pub fn age_secs(start_ticks: u64) -> u64 {
    let ticks = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK).ok().flatten().unwrap_or(100) as u64;
    let uptime: f64 = std::fs::read_to_string("/proc/uptime")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(0.0);
    (uptime as u64).saturating_sub(start_ticks / ticks.max(1))
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
        let me = std::process::id() as i32;
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
        let cfg = crate::config::RuntimesConfig { runc_roots: vec![runc], crun_roots: vec![tmp.path().join("crun/*")] };
        let d = Discovery::new(&cfg, Some("task".into()));
        let mut all: Vec<_> = d.list().into_iter().map(|c| (c.id, c.task_id, c.runtime, c.state)).collect();
        all.sort();
        assert_eq!(
            all,
            vec![
                ("c2".into(), "c2".into(), "crun", State::Running),
                ("dead".into(), "web.1".into(), "runc", State::Stopped),
                ("live".into(), "web.1".into(), "runc", State::Running),
            ]
        );
        let any = |_: &Container| true;
        match d.resolve("web.1", any) {
            Err(RuntimeError::Ambiguous { candidates, .. }) => {
                assert_eq!(candidates, ["web.1 (container dead)", "web.1 (container live)"])
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(d.resolve("live", any).unwrap().pid, me);
        assert!(matches!(d.resolve("dead", any), Err(RuntimeError::NotRunning { .. })));
        assert!(matches!(d.resolve("nope", any), Err(RuntimeError::NotFound(_))));
        // What the caller may not see does not make a name ambiguous.
        assert_eq!(d.resolve("web.1", |c: &Container| c.id != "dead").unwrap().id, "live");
        assert!(matches!(d.resolve("live", |c: &Container| c.id != "live"), Err(RuntimeError::NotFound(_))));
    }
}
