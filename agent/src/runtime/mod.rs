//! Container discovery: reads the state that OCI runtimes (runc, crun) keep on the host and the bundle's config,
//! and picks the container a user's name for it means ([`names`]).

pub mod containerd;
mod crun;
pub mod docker;
mod runc;
pub mod stopped;

pub use dcos_exec_access::names;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::Duration;

/// Errors resolving a task.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error("no task {0:?} on this host")]
    NotFound(String),
    #[error("task {task:?} is ambiguous, it matches: {}; name one of them", candidates.join(", "))]
    Ambiguous { task: String, candidates: Vec<String> },
    /// A gateway resolved the task to a container that is no longer here.
    #[error("task {task:?} moved or ended: its container {container} is no longer on this host; try again")]
    Gone { task: String, container: String },
    #[error("container {id} is {state}, not running")]
    NotRunning { id: String, state: String },
}

impl RuntimeError {
    /// The wire code of each resolution failure.
    pub fn code(&self) -> dcos_exec_proto::ErrorCode {
        use dcos_exec_proto::ErrorCode;
        match self {
            RuntimeError::NotFound(_) | RuntimeError::Gone { .. } => ErrorCode::TaskNotFound,
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
    /// A Docker or containerd container (by its bundle's containerd namespace) that has no name because an engine
    /// did not answer: the ACL then applies every deny rule, in case one was written for its name.
    pub name_unknown: bool,
    pub runtime: &'static str,
    pub pid: i32,
    /// Start time of the init in clock ticks after boot (field 22 of /proc/PID/stat): guards against pid reuse.
    pub start_time: u64,
    pub bundle: PathBuf,
    pub state: State,
    /// The engine that knows it (Docker, containerd), where a stopped container's files come from once its
    /// bundle is gone.
    pub engine: Option<stopped::Engine>,
}

impl names::Named for Container {
    fn container_id(&self) -> &str {
        &self.id
    }
    fn task_id(&self) -> &str {
        &self.task_id
    }
    fn name(&self) -> Option<&str> {
        self.name.as_deref()
    }
}

/// How one configured runtime answered, for `GET /v1/runtimes`.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct RuntimeStatus {
    /// `runc`, `crun`, `docker` or `containerd`.
    pub runtime: &'static str,
    /// The state root or socket.
    pub path: PathBuf,
    /// `ok`; `absent` (a state root that does not exist: nothing of that runtime on this host); `unreachable`.
    pub status: &'static str,
    /// Containers found there (state roots and engines that answered).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub containers: Option<usize>,
    /// Why an engine is unreachable.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// Finds containers under the configured state roots and asks the configured engines about them.
pub struct Discovery {
    runc_roots: Vec<PathBuf>,
    crun_roots: Vec<PathBuf>,
    /// Those of the roots above that are CRI-O's: only their containers are named from CRI-O's annotations.
    cri_o_roots: Vec<PathBuf>,
    docker_sockets: Vec<PathBuf>,
    containerd_sockets: Vec<PathBuf>,
    timeout: Duration,
    annotation: Option<String>,
    /// Engines last seen unreachable, so that the log warns once when one goes away and once when it is back.
    down: Mutex<HashMap<PathBuf, String>>,
    /// Set once a list has completed (every engine answered or timed out): the agent is ready (`/readyz`).
    answered: AtomicBool,
}

impl Discovery {
    pub fn new(cfg: &crate::config::RuntimesConfig, annotation: Option<String>, timeout: Duration) -> Self {
        Discovery {
            runc_roots: cfg.runc_roots.clone(),
            crun_roots: cfg.crun_roots.clone(),
            cri_o_roots: cfg.cri_o_roots.clone(),
            docker_sockets: cfg.docker_sockets.clone(),
            containerd_sockets: cfg.containerd_sockets.clone(),
            timeout,
            annotation,
            down: Mutex::default(),
            answered: AtomicBool::new(false),
        }
    }

    /// Whether the runtimes have been read once: state roots walked, every engine answered or timed out.
    pub fn has_answered(&self) -> bool {
        self.answered.load(Ordering::Relaxed)
    }

    /// Every container found, in no particular order: those in the runtimes' state (running, created, or
    /// stopped but not yet deleted), with what the engines know about them, and the engines' stopped containers
    /// that no state root holds any more. Unreadable entries are skipped (a runtime may be writing its state
    /// while we look) and an engine that does not answer is left out: a list never fails.
    pub async fn list(&self) -> Vec<Container> {
        let mut out = self.in_state_roots();
        let answers = futures_util::future::join_all(
            self.docker_sockets.iter().map(|s| async move { (s, docker::containers(s, self.timeout).await) }),
        )
        .await;
        let ctd_answers = futures_util::future::join_all(
            self.containerd_sockets.iter().map(|s| async move { (s, containerd::containers(s, self.timeout).await) }),
        )
        .await;
        let mut docker_silent = false;
        for (socket, answer) in answers {
            match answer {
                Ok(entries) => {
                    self.note(socket, None);
                    merge_docker(&mut out, entries, socket);
                }
                Err(e) => {
                    docker_silent = true;
                    self.note(socket, Some(e.to_string()));
                }
            }
        }
        let mut ctd_silent = false;
        for (socket, answer) in ctd_answers {
            match answer {
                Ok(listed) => {
                    self.note(socket, None);
                    containerd::merge(&mut out, listed, socket);
                }
                Err(e) => {
                    ctd_silent = true;
                    self.note(socket, Some(e.to_string()));
                }
            }
        }
        // Names that a silent engine would have given: deny rules written for them must still hold.
        for c in out.iter_mut().filter(|c| c.name.is_none()) {
            let ns = containerd::namespace(&c.bundle);
            let docker = c.runtime != "docker" && ns == Some("moby");
            let ctd = ns.is_some_and(|n| n != "moby");
            c.name_unknown = (docker && docker_silent) || (ctd && ctd_silent);
        }
        out.iter_mut().for_each(refuse_control_characters);
        self.answered.store(true, Ordering::Relaxed);
        out
    }

    /// Containers in the runc and crun state roots, with their task ids.
    fn in_state_roots(&self) -> Vec<Container> {
        let mut out = Vec::new();
        let mut origins = Vec::new();
        let roots = self
            .runc_roots
            .iter()
            .map(|r| (r, runc::read as fn(&Path) -> Option<Container>))
            .chain(self.crun_roots.iter().map(|r| (r, crun::read as fn(&Path) -> Option<Container>)));
        for (root, read) in roots {
            let cri_o = self.cri_o_roots.contains(root);
            let found =
                expand(std::slice::from_ref(root)).into_iter().flat_map(|d| subdirs(&d)).filter_map(|d| read(&d));
            for mut c in found {
                let t = self.task_id(&c.bundle);
                origins.push(containerd::Origin { annotated: t.is_some(), cri_o });
                if let Some(t) = t {
                    c.task_id = t;
                }
                out.push(c);
            }
        }
        containerd::name_all(&mut out, |b| read_annotations(b).unwrap_or_default(), &origins);
        out
    }

    /// Logs an engine going away or coming back, once per change.
    fn note(&self, socket: &Path, error: Option<String>) {
        let Ok(mut down) = self.down.lock() else { return };
        match error {
            Some(e) => {
                if down.insert(socket.into(), e.clone()).is_none() {
                    tracing::warn!(socket = %socket.display(), "container engine unreachable, listing without it: {e}");
                }
            }
            None => {
                if down.remove(socket).is_some() {
                    tracing::info!(socket = %socket.display(), "container engine reachable again");
                }
            }
        }
    }

    /// How each configured runtime answers now.
    pub async fn statuses(&self) -> Vec<RuntimeStatus> {
        let mut out = Vec::new();
        for (runtime, roots, read) in [
            ("runc", &self.runc_roots, runc::read as fn(&Path) -> Option<Container>),
            ("crun", &self.crun_roots, crun::read),
        ] {
            for root in roots {
                let dirs = expand(std::slice::from_ref(root));
                let present = dirs.iter().any(|d| d.is_dir());
                let n = dirs.iter().flat_map(|d| subdirs(d)).filter_map(|d| read(&d)).count();
                out.push(RuntimeStatus {
                    runtime,
                    path: root.clone(),
                    status: if present { "ok" } else { "absent" },
                    containers: present.then_some(n),
                    error: None,
                });
            }
        }
        for socket in &self.docker_sockets {
            let r = docker::containers(socket, self.timeout).await;
            let (status, containers, error) = match r {
                Ok(v) => ("ok", Some(v.len()), None),
                Err(e) => ("unreachable", None, Some(e.to_string())),
            };
            self.note(socket, error.clone());
            out.push(RuntimeStatus { runtime: "docker", path: socket.clone(), status, containers, error });
        }
        for socket in &self.containerd_sockets {
            let (status, containers, error) = match containerd::containers(socket, self.timeout).await {
                Ok(v) => ("ok", Some(v.len()), None),
                Err(e) => ("unreachable", None, Some(e.to_string())),
            };
            self.note(socket, error.clone());
            out.push(RuntimeStatus { runtime: "containerd", path: socket.clone(), status, containers, error });
        }
        out
    }

    /// The running container that `task` names among those of `all` that are `visible` to the caller (see
    /// [`names::pick`]). Containers the caller may not see neither match nor make a name ambiguous. A stopped
    /// container is an answer only when `stopped_ok` (a debug session, which gets a sandbox on its files).
    pub fn resolve(
        all: Vec<Container>,
        task: &str,
        visible: impl Fn(&Container) -> bool,
        stopped_ok: bool,
    ) -> Result<Container, RuntimeError> {
        let mut all: Vec<Container> = all.into_iter().filter(|c| visible(c)).collect();
        let c = match names::pick(&all, task) {
            names::Pick::One(i) => all.swap_remove(i),
            names::Pick::None => return Err(RuntimeError::NotFound(task.into())),
            names::Pick::Many(hits) => {
                let mut candidates: Vec<String> = hits.iter().map(|&i| names::describe(&all[i])).collect();
                candidates.sort();
                return Err(RuntimeError::Ambiguous { task: task.into(), candidates });
            }
        };
        if c.state != State::Running && !(stopped_ok && c.state == State::Stopped) {
            return Err(RuntimeError::NotRunning { id: c.id, state: c.state.as_str().into() });
        }
        Ok(c)
    }

    /// The container with exactly this id, which a gateway resolved `task` to, if the caller may see it; the
    /// same state rules as [`Discovery::resolve`].
    pub fn resolve_container(
        all: Vec<Container>,
        id: &str,
        task: &str,
        visible: impl Fn(&Container) -> bool,
        stopped_ok: bool,
    ) -> Result<Container, RuntimeError> {
        let gone = || RuntimeError::Gone { task: task.into(), container: id.into() };
        let c = all.into_iter().find(|c| c.id == id).filter(|c| visible(c)).ok_or_else(gone)?;
        if c.state != State::Running && !(stopped_ok && c.state == State::Stopped) {
            return Err(RuntimeError::NotRunning { id: c.id, state: c.state.as_str().into() });
        }
        Ok(c)
    }

    /// The bundle's `task_id_annotation`, unless it holds a control character: the container is then named as
    /// one without it (`NS/ID` in containerd), see [`refuse_control_characters`].
    fn task_id(&self, bundle: &Path) -> Option<String> {
        let t = read_annotations(bundle)?.remove(self.annotation.as_ref()?)?;
        if dcos_exec_access::text::has_controls(&t) {
            tracing::debug!(bundle = %bundle.display(), task = t.as_str(), "task id with control characters ignored");
            return None;
        }
        Some(t)
    }
}

/// Task ids, names and labels come from whoever wrote the container's config: one with a control character
/// (a newline to forge log lines, an ESC to drive the terminal of whoever lists tasks) is not used. A task id
/// annotation with one was already left out ([`Discovery::task_id`]); any other task id (a pod's names) falls
/// back to the container id; a refused name counts as unknown, so every deny rule applies to it.
fn refuse_control_characters(c: &mut Container) {
    use dcos_exec_access::text::has_controls;
    if has_controls(&c.task_id) {
        tracing::debug!(
            container = c.id.as_str(),
            task = c.task_id.as_str(),
            "task id with control characters ignored"
        );
        c.task_id = c.id.clone();
    }
    if c.name.as_deref().is_some_and(has_controls) {
        c.name = None;
        c.name_unknown = true;
    }
    for label in [&mut c.service, &mut c.project] {
        if label.as_deref().is_some_and(has_controls) {
            *label = None;
        }
    }
}

/// Adds Docker's names and labels to the containers found in its runc root, and its stopped containers (whose
/// runc state is gone) as stopped tasks with their exit status.
fn merge_docker(out: &mut Vec<Container>, entries: Vec<docker::Entry>, socket: &Path) {
    for e in entries {
        let known = out.iter_mut().find(|c| c.id == e.id);
        let stopped = known.is_none();
        let c = match known {
            Some(c) => c,
            // Only what the engine knows: no bundle, no pid. Listed, and refused as not running.
            None if e.state != "running" => {
                out.push(Container {
                    task_id: e.id.clone(),
                    id: e.id.clone(),
                    runtime: "docker",
                    ..Container::default()
                });
                let Some(c) = out.last_mut() else { continue };
                c
            }
            // Running but in no configured runc root: the agent cannot exec into it, so it is not a task here.
            None => continue,
        };
        c.runtime = "docker";
        c.engine = Some(stopped::Engine::Docker { socket: socket.into() });
        c.name = e.name();
        c.service = e.label("com.docker.compose.service");
        c.project = e.label("com.docker.compose.project");
        if stopped || c.state == State::Stopped {
            c.exit_code = e.exit_code();
        }
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
        let me = i32::try_from(std::process::id()).unwrap();
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
        let cfg = crate::config::RuntimesConfig {
            runc_roots: vec![runc],
            crun_roots: vec![tmp.path().join("crun/*")],
            ..Default::default()
        };
        let d = Discovery::new(&cfg, Some("task".into()), Duration::from_secs(1));
        let mut all: Vec<_> = d.in_state_roots().into_iter().map(|c| (c.id, c.task_id, c.runtime, c.state)).collect();
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
        let any = |_: &Container| true;
        let resolve = |t: &str, v: &dyn Fn(&Container) -> bool| Discovery::resolve(d.in_state_roots(), t, v, false);
        match resolve("web.1", &any) {
            Err(RuntimeError::Ambiguous { candidates, .. }) => {
                assert_eq!(candidates, ["web.1 (container dead)", "web.1 (container live)"])
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(resolve("live", &any).unwrap().pid, me);
        assert!(matches!(resolve("dead", &any), Err(RuntimeError::NotRunning { .. })));
        assert!(matches!(resolve("c3", &any), Err(RuntimeError::NotRunning { .. })));
        assert!(matches!(resolve("nope", &any), Err(RuntimeError::NotFound(_))));
        // A debug session may have a stopped container (not a created one).
        assert_eq!(Discovery::resolve(d.in_state_roots(), "dead", any, true).unwrap().state, State::Stopped);
        assert!(matches!(
            Discovery::resolve(d.in_state_roots(), "c3", any, true),
            Err(RuntimeError::NotRunning { .. })
        ));
        // What the caller may not see does not make a name ambiguous.
        assert_eq!(resolve("web.1", &|c: &Container| c.id != "dead").unwrap().id, "live");
        assert!(matches!(resolve("live", &|c: &Container| c.id != "live"), Err(RuntimeError::NotFound(_))));
    }

    /// CRI-O's annotations name a pod only for a container of a root configured as CRI-O's: in runc's own root,
    /// which anyone who runs runc or podman writes to, the same annotations neither name a pod nor hide a
    /// container as a sandbox.
    #[test]
    fn cri_o_annotations_are_believed_only_in_cri_o_roots() {
        let tmp = tempfile::tempdir().unwrap();
        let me = i32::try_from(std::process::id()).unwrap();
        let start = proc_start_time(me).unwrap();
        let bundle = |name: &str, kind: &str, container: &str| {
            let b = tmp.path().join("bundles").join(name);
            std::fs::create_dir_all(&b).unwrap();
            let a = serde_json::json!({"annotations": {
                "io.kubernetes.cri-o.ContainerType": kind,
                "io.kubernetes.container.name": container,
                "io.kubernetes.pod.name": "db-0",
                "io.kubernetes.pod.namespace": "data",
            }});
            std::fs::write(b.join("config.json"), a.to_string()).unwrap();
            b
        };
        let (app, pause) = (bundle("app", "container", "db"), bundle("pause", "sandbox", "POD"));
        let (crio, runc) = (tmp.path().join("crio"), tmp.path().join("runc"));
        for root in [&crio, &runc] {
            write_runc(root, "app", me, start, &app);
            write_runc(root, "pause", me, start, &pause);
        }
        let cfg = crate::config::RuntimesConfig {
            runc_roots: vec![crio.clone(), runc],
            crun_roots: vec![],
            cri_o_roots: vec![crio],
            ..Default::default()
        };
        let d = Discovery::new(&cfg, None, Duration::from_secs(1));
        let mut got: Vec<_> = d.in_state_roots().into_iter().map(|c| (c.task_id, c.name, c.runtime)).collect();
        got.sort();
        let s = |x: &str| x.to_string();
        assert_eq!(
            got,
            [(s("app"), None, "runc"), (s("data/db-0/db"), Some(s("data/db-0")), "cri-o"), (s("pause"), None, "runc"),]
        );
    }

    /// A task id annotation with a control character is left out: a containerd container is then `NS/ID`, as
    /// without it, not its bare id; on a runc root's container, its container id.
    #[test]
    fn a_task_id_annotation_with_controls_names_the_container_as_without_it() {
        let tmp = tempfile::tempdir().unwrap();
        let me = i32::try_from(std::process::id()).unwrap();
        let start = proc_start_time(me).unwrap();
        let runc = tmp.path().join("runc");
        for (id, bundle) in [
            ("ctd", tmp.path().join("io.containerd.runtime.v2.task/dev/ctd")),
            ("plain", tmp.path().join("bundles/plain")),
        ] {
            std::fs::create_dir_all(&bundle).unwrap();
            std::fs::write(bundle.join("config.json"), r#"{"annotations":{"task":"prod/web\u001b[2J"}}"#).unwrap();
            write_runc(&runc, id, me, start, &bundle);
        }
        let cfg = crate::config::RuntimesConfig { runc_roots: vec![runc], crun_roots: vec![], ..Default::default() };
        let d = Discovery::new(&cfg, Some("task".into()), Duration::from_secs(1));
        let mut got: Vec<_> = d.in_state_roots().into_iter().map(|c| c.task_id).collect();
        got.sort();
        assert_eq!(got, ["dev/ctd", "plain"]);
    }

    #[test]
    fn docker_adds_names_labels_and_its_stopped_containers() {
        let running = Container {
            id: "7fee".into(),
            task_id: "7fee".into(),
            runtime: "runc",
            state: State::Running,
            ..Container::default()
        };
        let mut out = vec![running];
        let entries: Vec<docker::Entry> = serde_json::from_str(
            r#"[{"Id":"7fee","Names":["/web-1"],"State":"running","Status":"Up 1 second",
                 "Labels":{"com.docker.compose.service":"web","com.docker.compose.project":"shop"}},
                {"Id":"dead","Names":["/crashed"],"State":"exited","Status":"Exited (3) 1 second ago"},
                {"Id":"elsewhere","Names":["/x"],"State":"running","Status":"Up"}]"#,
        )
        .unwrap();
        merge_docker(&mut out, entries, Path::new("/run/docker.sock"));
        let got: Vec<_> = out
            .iter()
            .map(|c| (c.id.as_str(), c.name.as_deref(), c.runtime, c.state, c.exit_code, c.service.as_deref()))
            .collect();
        assert_eq!(
            got,
            [
                ("7fee", Some("web-1"), "docker", State::Running, None, Some("web")),
                ("dead", Some("crashed"), "docker", State::Stopped, Some(3), None),
            ]
        );
        assert_eq!(out[0].project.as_deref(), Some("shop"));
        let e = Discovery::resolve(out, "crash", |_| true, false).unwrap_err();
        assert!(matches!(e, RuntimeError::NotRunning { .. }), "{e:?}");
    }

    /// With an engine silent, a container in Docker's namespace has a name nobody could learn: marked, so that
    /// deny rules written for names still hold (see `Target::name_unknown`).
    #[tokio::test]
    async fn a_silent_engine_leaves_its_containers_marked_name_unknown() {
        let tmp = tempfile::tempdir().unwrap();
        let me = i32::try_from(std::process::id()).unwrap();
        let start = proc_start_time(me).unwrap();
        let runc = tmp.path().join("runc");
        let moby = tmp.path().join("io.containerd.runtime.v2.task/moby/7fee");
        let plain = tmp.path().join("bundles/plain");
        write_runc(&runc, "7fee", me, start, &moby);
        write_runc(&runc, "plain", me, start, &plain);
        let cfg = crate::config::RuntimesConfig {
            runc_roots: vec![runc],
            crun_roots: vec![],
            docker_sockets: vec![tmp.path().join("gone.sock")],
            containerd_sockets: vec![],
            ..Default::default()
        };
        let d = Discovery::new(&cfg, None, Duration::from_secs(1));
        let mut got: Vec<_> = d.list().await.into_iter().map(|c| (c.id, c.name_unknown)).collect();
        got.sort();
        assert_eq!(got, [("7fee".to_string(), true), ("plain".to_string(), false)]);
        let statuses = d.statuses().await;
        let docker = statuses.iter().find(|s| s.runtime == "docker").unwrap();
        assert_eq!((docker.status, docker.containers), ("unreachable", None));
        // No engine configured: nothing to be silent, nothing marked.
        let d = Discovery::new(
            &crate::config::RuntimesConfig { docker_sockets: vec![], ..cfg },
            None,
            Duration::from_secs(1),
        );
        assert!(d.list().await.iter().all(|c| !c.name_unknown));
    }
}
