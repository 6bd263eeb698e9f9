//! The gateway side: the whole directory in memory, kept current by a watch.
//!
//! A first `get` of the prefix gives the records and the revision they are at; a watch from the next revision
//! applies every change after it. A watch that breaks, is cancelled or falls behind a compaction is replaced
//! by a new `get` and a new watch (nothing is missed: the `get` is the truth at its revision). Every second the
//! watch is asked for a progress report; a watch that stays silent for [`SILENT`] counts as broken, so a
//! member that died or lost the majority is noticed even when nothing changes.
//!
//! [`Directory::snapshot`] answers from memory. While the watch is not known to be current the snapshot says
//! for how long (`stale_for`); once that exceeds `max_stale` it refuses with [`DirectoryError::Unavailable`].

use crate::config::EtcdConfig;
use crate::connect::{member_failed, Failover};
use crate::error::{ClusterError, DirectoryError};
use crate::keys::{Key, Layout};
use crate::record::{NodeRecord, TaskRecord};
use dcos_exec_access::names;
use etcd_client::{EventType, GetOptions, WatchOptions};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};
use tokio::task::JoinHandle;

/// How often the watch is asked for a progress report.
const PROGRESS_EVERY: Duration = Duration::from_secs(1);
/// A watch that has not said anything (event or progress) for this long is replaced.
pub const SILENT: Duration = Duration::from_secs(3);
/// Deadline of the initial `get`.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// Keys per page of the initial read: records are a few hundred bytes, so a page stays far below gRPC's 4 MiB
/// message limit.
const PAGE: i64 = 2000;
/// Retry pace while etcd cannot be reached.
const RETRY: Duration = Duration::from_millis(500);

/// The directory at one revision.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Snapshot {
    /// Live nodes by name.
    pub nodes: BTreeMap<String, NodeRecord>,
    /// Every node's tasks, ordered by node, then container id.
    pub tasks: Vec<TaskRecord>,
    /// The etcd revision the snapshot reflects.
    pub revision: i64,
    /// None while the directory is current; how long it has not been, while etcd is unreachable.
    pub stale_for: Option<Duration>,
}

impl Snapshot {
    /// The tasks of `node` (the tasks are ordered by node): a binary search, not a scan.
    pub fn tasks_of(&self, node: &str) -> &[TaskRecord] {
        let start = self.tasks.partition_point(|t| t.node.as_str() < node);
        let end = start + self.tasks[start..].partition_point(|t| t.node == node);
        &self.tasks[start..end]
    }
}

/// A shared snapshot and the index of its tasks' names, built once per snapshot on the first lookup and
/// shared by every request that reads the same snapshot.
#[derive(Debug)]
pub struct Indexed {
    /// The snapshot.
    pub snapshot: Arc<Snapshot>,
    index: OnceLock<names::Index>,
}

impl Indexed {
    /// `snapshot`, to be indexed on the first lookup.
    pub fn new(snapshot: Arc<Snapshot>) -> Indexed {
        Indexed { snapshot, index: OnceLock::new() }
    }

    /// The names of the tasks of registered nodes (a task whose node record is gone names nothing), indexing
    /// `snapshot.tasks`. Built by the first caller; the others wait for it.
    pub fn index(&self) -> &names::Index {
        self.index.get_or_init(|| {
            let s = &self.snapshot;
            names::Index::build(&s.tasks, |t| s.nodes.contains_key(&t.node))
        })
    }
}

/// One change, as a watch or a `get` reports it.
#[derive(Debug, Clone, Copy)]
pub enum Change<'a> {
    /// A key was created or updated.
    Put {
        /// The key.
        key: &'a [u8],
        /// Its new value.
        value: &'a [u8],
    },
    /// A key was deleted (or its lease expired).
    Delete {
        /// The key.
        key: &'a [u8],
    },
}

/// The records, indexed for applying changes.
#[derive(Debug, Clone, Default)]
pub struct State {
    nodes: BTreeMap<String, NodeRecord>,
    tasks: BTreeMap<(String, String), TaskRecord>,
    revision: i64,
}

impl State {
    /// Applies one change. A record that does not parse is treated as absent (and logged): a bad write by one
    /// agent must not hide the others.
    pub fn apply(&mut self, layout: &Layout, change: Change<'_>) {
        let (key, value) = match change {
            Change::Put { key, value } => (key, Some(value)),
            Change::Delete { key } => (key, None),
        };
        match layout.parse(key) {
            Some(Key::Node(name)) => {
                match value.map(serde_json::from_slice::<NodeRecord>) {
                    Some(Ok(mut r)) => {
                        // The key is what the layout guarantees; a record that names another node is renamed.
                        r.name.clone_from(&name);
                        self.nodes.insert(name, r);
                    }
                    Some(Err(e)) => {
                        tracing::warn!(key = %String::from_utf8_lossy(key), "ignoring a node record: {e}");
                        self.nodes.remove(&name);
                    }
                    None => {
                        self.nodes.remove(&name);
                    }
                }
            }
            Some(Key::Task { node, container }) => {
                let k = (node, container);
                match value.map(serde_json::from_slice::<TaskRecord>) {
                    Some(Ok(mut r)) => {
                        r.node.clone_from(&k.0);
                        r.task.container.clone_from(&k.1);
                        self.tasks.insert(k, r);
                    }
                    Some(Err(e)) => {
                        tracing::warn!(key = %String::from_utf8_lossy(key), "ignoring a task record: {e}");
                        self.tasks.remove(&k);
                    }
                    None => {
                        self.tasks.remove(&k);
                    }
                }
            }
            Some(Key::Acl) | None => {}
        }
    }

    /// The state at `revision` made of `changes` (a `get`'s key-values as puts).
    pub fn load<'a>(layout: &Layout, revision: i64, changes: impl IntoIterator<Item = Change<'a>>) -> State {
        let mut s = State { revision, ..State::default() };
        for c in changes {
            s.apply(layout, c);
        }
        s
    }

    /// The revision the state reflects.
    pub fn revision(&self) -> i64 {
        self.revision
    }

    /// Notes that the state reflects `revision`.
    pub fn set_revision(&mut self, revision: i64) {
        self.revision = self.revision.max(revision);
    }

    /// A snapshot of the state (current: `stale_for` None).
    pub fn snapshot(&self) -> Snapshot {
        Snapshot {
            nodes: self.nodes.clone(),
            tasks: self.tasks.values().cloned().collect(),
            revision: self.revision,
            stale_for: None,
        }
    }
}

#[derive(Default)]
struct Shared {
    state: State,
    /// The snapshot of `state` and its index, built on the first read after a change.
    cached: Option<Arc<Indexed>>,
    /// When the directory was last known to be current (None: never).
    current_at: Option<Instant>,
    /// What went wrong last.
    last_error: Option<String>,
    /// The member the watch runs on.
    endpoint: Option<String>,
}

/// A watched copy of the directory. See the module documentation.
pub struct Directory {
    shared: Mutex<Shared>,
    max_stale: Duration,
    layout: Layout,
    watcher: Mutex<Option<JoinHandle<()>>>,
}

impl Directory {
    /// Starts watching the directory under `prefix` in the etcd of `etcd`. Answers
    /// [`DirectoryError::Unavailable`] until the first `get` succeeds, and once etcd has been unreachable for
    /// longer than `max_stale`. Needs a tokio runtime.
    pub fn spawn(etcd: EtcdConfig, prefix: &str, max_stale: Duration) -> Arc<Directory> {
        let dir = Arc::new(Directory {
            shared: Mutex::default(),
            max_stale,
            layout: Layout::new(prefix),
            watcher: Mutex::new(None),
        });
        let task = tokio::spawn(watch_loop(Arc::downgrade(&dir), etcd));
        *dir.watcher.lock().unwrap_or_else(|e| e.into_inner()) = Some(task);
        dir
    }

    fn shared(&self) -> MutexGuard<'_, Shared> {
        self.shared.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The directory as last seen; `stale_for` says how long etcd has been unreachable. Refuses once that is
    /// longer than `max_stale`, or while etcd was never reached.
    pub fn snapshot(&self) -> Result<Snapshot, DirectoryError> {
        self.shared_snapshot().map(|(s, stale_for)| Snapshot { stale_for, ..Snapshot::clone(&s) })
    }

    /// Like [`Directory::snapshot`] without copying the records: the shared snapshot (whose own `stale_for` is
    /// None) and how stale it is. For lookups at scale.
    pub fn shared_snapshot(&self) -> Result<(Arc<Snapshot>, Option<Duration>), DirectoryError> {
        self.indexed_snapshot().map(|(i, stale_for)| (i.snapshot.clone(), stale_for))
    }

    /// Like [`Directory::shared_snapshot`], with the index of the tasks' names that lookups use: built once per
    /// snapshot (see [`Indexed::index`]), shared by concurrent requests.
    pub fn indexed_snapshot(&self) -> Result<(Arc<Indexed>, Option<Duration>), DirectoryError> {
        let mut sh = self.shared();
        let Some(at) = sh.current_at else {
            return Err(DirectoryError::Unavailable {
                stale_for: None,
                reason: sh.last_error.clone().unwrap_or_else(|| "etcd has not been reached yet".into()),
            });
        };
        let age = at.elapsed();
        let stale_for = (age > SILENT).then_some(age);
        if stale_for.is_some_and(|s| s > self.max_stale) {
            return Err(DirectoryError::Unavailable {
                stale_for,
                reason: format!(
                    "etcd unreachable for {} (longer than max_stale {}): {}",
                    humantime::format_duration(round(age)),
                    humantime::format_duration(self.max_stale),
                    sh.last_error.as_deref().unwrap_or("no answer")
                ),
            });
        }
        let snap = match &sh.cached {
            Some(s) => s.clone(),
            None => {
                let s = Arc::new(Indexed::new(Arc::new(sh.state.snapshot())));
                sh.cached = Some(s.clone());
                s
            }
        };
        Ok((snap, stale_for))
    }

    /// Waits until the directory has been loaded once, for at most `limit`.
    pub async fn ready(&self, limit: Duration) -> Result<(), DirectoryError> {
        let deadline = Instant::now() + limit;
        loop {
            match self.snapshot() {
                Ok(_) => return Ok(()),
                Err(e) if Instant::now() >= deadline => return Err(e),
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    }

    /// The etcd member the directory reads from now (it moves to another when that one fails).
    pub fn endpoint(&self) -> Option<String> {
        self.shared().endpoint.clone()
    }

    /// The layout this directory reads.
    pub fn layout(&self) -> &Layout {
        &self.layout
    }

    fn replace(&self, state: State) {
        let mut sh = self.shared();
        sh.state = state;
        sh.cached = None;
        sh.current_at = Some(Instant::now());
    }

    fn update(&self, f: impl FnOnce(&mut State, &Layout)) {
        let mut sh = self.shared();
        f(&mut sh.state, &self.layout);
        sh.cached = None;
        sh.current_at = Some(Instant::now());
    }

    fn current(&self, revision: i64) {
        let mut sh = self.shared();
        if revision > sh.state.revision() {
            sh.state.set_revision(revision);
            sh.cached = None;
        }
        sh.current_at = Some(Instant::now());
    }

    fn failed(&self, e: &ClusterError) {
        let mut sh = self.shared();
        let msg = e.to_string();
        if sh.last_error.as_deref() != Some(&msg) {
            tracing::warn!("cluster directory: {msg}");
        }
        sh.last_error = Some(msg);
    }
}

impl Drop for Directory {
    fn drop(&mut self) {
        if let Some(t) = self.watcher.get_mut().unwrap_or_else(|e| e.into_inner()).take() {
            t.abort();
        }
    }
}

fn round(d: Duration) -> Duration {
    Duration::from_millis(u64::try_from(d.as_millis()).unwrap_or(u64::MAX) / 100 * 100)
}

/// Lists and watches until the directory is dropped.
async fn watch_loop(dir: std::sync::Weak<Directory>, etcd: EtcdConfig) {
    let mut client: Option<Failover> = None;
    let mut was_down = false;
    loop {
        let Some(d) = dir.upgrade() else { return };
        let c = match client.as_mut() {
            Some(c) => c,
            None => match Failover::new(&etcd).await {
                Ok(c) => client.insert(c),
                Err(e) => {
                    d.failed(&e);
                    was_down = true;
                    drop(d);
                    tokio::time::sleep(RETRY).await;
                    continue;
                }
            },
        };
        match list_and_watch(&d, c, &mut was_down).await {
            Ok(()) => return,
            Err(e) => {
                if member_failed(&e) {
                    c.next();
                }
                d.failed(&e);
                was_down = true;
            }
        }
        drop(d);
        tokio::time::sleep(RETRY).await;
    }
}

/// One `get` and the watch after it; returns when the watch breaks (Err) or the directory is dropped (Ok).
async fn list_and_watch(d: &Arc<Directory>, c: &mut Failover, was_down: &mut bool) -> Result<(), ClusterError> {
    let root = d.layout.root();
    // The whole prefix in pages, all at the revision of the first: one response for a large cluster would
    // exceed gRPC's 4 MiB message limit (1000 nodes of 100 tasks are about 40 MB) and never load.
    let end = crate::keys::range_end(root.as_bytes());
    let mut from = root.clone().into_bytes();
    let mut revision = 0;
    let mut state: Option<State> = None;
    loop {
        let resp = c
            .run(REQUEST_TIMEOUT, |mut cl| {
                let (from, end) = (from.clone(), end.clone());
                let mut o = GetOptions::new().with_range(end).with_limit(PAGE);
                if revision > 0 {
                    o = o.with_revision(revision);
                }
                async move { cl.get(from, Some(o)).await }
            })
            .await?;
        if revision == 0 {
            revision = resp.header().map(|h| h.revision()).unwrap_or(0);
        }
        let st = state.get_or_insert_with(|| State::load(&d.layout, revision, std::iter::empty()));
        for kv in resp.kvs() {
            st.apply(&d.layout, Change::Put { key: kv.key(), value: kv.value() });
        }
        match resp.kvs().last() {
            Some(last) if resp.more() => {
                from = last.key().to_vec();
                from.push(0);
            }
            _ => break,
        }
    }
    let state = state.unwrap_or_else(|| State::load(&d.layout, revision, std::iter::empty()));
    let (nodes, tasks) = (state.nodes.len(), state.tasks.len());
    d.replace(state);
    d.shared().endpoint = Some(c.endpoint().to_string());
    if std::mem::take(was_down) {
        tracing::info!(revision, nodes, tasks, "cluster directory: etcd is back, directory reloaded");
    } else {
        tracing::info!(revision, nodes, tasks, "cluster directory loaded");
    }
    let opts = WatchOptions::new().with_prefix().with_start_revision(revision + 1).with_progress_notify();
    let mut stream = c
        .run(REQUEST_TIMEOUT, |mut cl| {
            let (root, opts) = (root.clone(), opts.clone());
            async move { cl.watch(root, Some(opts)).await }
        })
        .await?;
    let mut progress = tokio::time::interval(PROGRESS_EVERY);
    let mut heard = Instant::now();
    loop {
        tokio::select! {
            msg = stream.message() => {
                let Some(r) = msg? else {
                    return Err(ClusterError::Config("the watch stream ended".into()));
                };
                heard = Instant::now();
                if r.canceled() || r.compact_revision() > 0 {
                    return Err(ClusterError::Config(format!(
                        "the watch was cancelled ({}{}); listing again",
                        r.cancel_reason(),
                        if r.compact_revision() > 0 { ", behind a compaction" } else { "" }
                    )));
                }
                let rev = r.header().map(|h| h.revision()).unwrap_or(0);
                if r.events().is_empty() {
                    d.current(rev);
                } else {
                    d.update(|state, layout| {
                        for e in r.events() {
                            let Some(kv) = e.kv() else { continue };
                            let change = match e.event_type() {
                                EventType::Put => Change::Put { key: kv.key(), value: kv.value() },
                                EventType::Delete => Change::Delete { key: kv.key() },
                            };
                            state.apply(layout, change);
                            state.set_revision(kv.mod_revision());
                        }
                        state.set_revision(rev);
                    });
                }
            }
            _ = progress.tick() => {
                if heard.elapsed() > SILENT {
                    return Err(ClusterError::Timeout(SILENT));
                }
                stream.request_progress().await?;
            }
        }
        if Arc::strong_count(d) == 1 {
            // Only this task holds it: the directory was dropped.
            return Ok(());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_tasks_of_a_node_are_found_by_a_binary_search() {
        let t = |node: &str, c: &str| {
            let info = dcos_exec_proto::TaskInfo { id: c.into(), container: c.into(), ..Default::default() };
            TaskRecord::new(node, info, 0)
        };
        let snap = Snapshot {
            tasks: vec![t("a", "1"), t("b", "1"), t("b", "2"), t("bb", "1"), t("c", "1")],
            ..Snapshot::default()
        };
        let of = |n: &str| snap.tasks_of(n).iter().map(|t| format!("{}/{}", t.node, t.task.id)).collect::<Vec<_>>();
        assert_eq!(of("b"), ["b/1", "b/2"]);
        assert_eq!(of("a"), ["a/1"]);
        assert_eq!(of("c"), ["c/1"]);
        assert!(of("ba").is_empty() && of("").is_empty() && of("z").is_empty());
    }
    use dcos_exec_proto::TaskInfo;

    fn node(name: &str) -> Vec<u8> {
        serde_json::to_vec(&NodeRecord {
            name: name.into(),
            url: format!("https://{name}:7443"),
            labels: Default::default(),
            version: "0.1.0".into(),
            started_at: 1,
        })
        .unwrap()
    }

    fn task(node: &str, container: &str, state: &str) -> Vec<u8> {
        let t = TaskInfo {
            id: format!("task-{container}"),
            container: container.into(),
            runtime: "runc".into(),
            state: state.into(),
            ..Default::default()
        };
        serde_json::to_vec(&TaskRecord::new(node, t, 100)).unwrap()
    }

    #[test]
    fn puts_and_deletes_build_the_snapshot() {
        let l = Layout::new("/p");
        let (n1, n2) = (node("n1"), node("n2"));
        let (t1, t2, t3) = (task("n1", "a", "running"), task("n1", "b", "running"), task("n2", "a", "running"));
        let (k1, k2, k3) = (l.task("n1", "a"), l.task("n1", "b"), l.task("n2", "a"));
        let mut s = State::load(
            &l,
            7,
            [
                Change::Put { key: l.node("n1").as_bytes(), value: &n1 },
                Change::Put { key: k1.as_bytes(), value: &t1 },
                Change::Put { key: b"/p/acl", value: b"[[rule]]" },
                Change::Put { key: b"/other/nodes/x", value: &n2 },
            ],
        );
        let snap = s.snapshot();
        assert_eq!((snap.revision, snap.nodes.len(), snap.tasks.len()), (7, 1, 1));
        assert_eq!(snap.nodes["n1"].url, "https://n1:7443");
        s.apply(&l, Change::Put { key: l.node("n2").as_bytes(), value: &n2 });
        s.apply(&l, Change::Put { key: k3.as_bytes(), value: &t3 });
        s.apply(&l, Change::Put { key: k2.as_bytes(), value: &t2 });
        let stopped = task("n1", "a", "stopped");
        s.apply(&l, Change::Put { key: k1.as_bytes(), value: &stopped });
        s.set_revision(9);
        let snap = s.snapshot();
        let rows: Vec<(&str, &str, &str)> =
            snap.tasks.iter().map(|t| (t.node.as_str(), t.task.container.as_str(), t.task.state.as_str())).collect();
        assert_eq!(rows, [("n1", "a", "stopped"), ("n1", "b", "running"), ("n2", "a", "running")]);
        assert_eq!(snap.revision, 9);
        // A lease that expires deletes the node and its tasks, one event each.
        s.apply(&l, Change::Delete { key: l.node("n1").as_bytes() });
        s.apply(&l, Change::Delete { key: k1.as_bytes() });
        s.apply(&l, Change::Delete { key: k2.as_bytes() });
        let snap = s.snapshot();
        assert_eq!(snap.nodes.keys().collect::<Vec<_>>(), ["n2"]);
        assert_eq!(snap.tasks.len(), 1);
        s.set_revision(3);
        assert_eq!(s.revision(), 9, "revisions only move forward");
    }

    #[test]
    fn the_key_decides_the_node_and_bad_records_are_dropped() {
        let l = Layout::default();
        let mut s = State::default();
        // An agent that writes a record naming another node under its own key cannot move it.
        let lying = task("victim", "c1", "running");
        let k = l.task("liar", "c1");
        s.apply(&l, Change::Put { key: k.as_bytes(), value: &lying });
        assert_eq!(s.snapshot().tasks[0].node, "liar");
        let k2 = l.task("liar", "other");
        s.apply(&l, Change::Put { key: k2.as_bytes(), value: &lying });
        assert_eq!(s.snapshot().tasks[1].task.container, "other");
        // A record that stops parsing disappears instead of keeping its old content.
        s.apply(&l, Change::Put { key: k.as_bytes(), value: b"{not json" });
        assert_eq!(s.snapshot().tasks.len(), 1);
        s.apply(&l, Change::Put { key: l.node("n").as_bytes(), value: &node("n") });
        s.apply(&l, Change::Put { key: l.node("n").as_bytes(), value: b"[]" });
        assert!(s.snapshot().nodes.is_empty());
        let renamed = node("other");
        s.apply(&l, Change::Put { key: l.node("n").as_bytes(), value: &renamed });
        assert_eq!(s.snapshot().nodes["n"].name, "n");
    }

    #[tokio::test]
    async fn unreachable_etcd_is_unavailable_and_says_why() {
        // Nothing listens on a port just bound and released.
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let mut cfg = EtcdConfig::new([format!("http://127.0.0.1:{port}")]);
        cfg.dial_timeout = Duration::from_millis(200);
        let d = Directory::spawn(cfg, "/p", Duration::from_secs(5));
        let Err(DirectoryError::Unavailable { stale_for, reason }) = d.snapshot() else { panic!("available") };
        assert_eq!(stale_for, None);
        assert!(!reason.is_empty());
        assert!(d.ready(Duration::from_millis(300)).await.is_err());
    }

    #[test]
    fn a_stale_snapshot_is_served_until_max_stale_then_refused() {
        let d = Directory {
            shared: Mutex::default(),
            max_stale: Duration::from_secs(10),
            layout: Layout::default(),
            watcher: Mutex::new(None),
        };
        let l = Layout::default();
        let mut s = State::default();
        s.apply(&l, Change::Put { key: l.node("n").as_bytes(), value: &node("n") });
        d.replace(s);
        assert_eq!(d.snapshot().unwrap().stale_for, None);
        assert_eq!(d.snapshot().unwrap().nodes.len(), 1);
        // etcd went away 5 s ago: still served, saying how stale.
        d.shared().current_at = Instant::now().checked_sub(Duration::from_secs(5));
        let snap = d.snapshot().unwrap();
        assert!(snap.stale_for.is_some_and(|s| s >= Duration::from_secs(5)));
        assert_eq!(snap.nodes.len(), 1);
        // 11 s ago: refused.
        d.failed(&ClusterError::Timeout(Duration::from_secs(3)));
        d.shared().current_at = Instant::now().checked_sub(Duration::from_secs(11));
        let Err(DirectoryError::Unavailable { stale_for, reason }) = d.snapshot() else { panic!("served") };
        assert!(stale_for.is_some_and(|s| s >= Duration::from_secs(11)));
        assert!(reason.contains("max_stale"), "{reason}");
    }
}
