//! What the directory holds: one [`NodeRecord`] per agent and one [`TaskRecord`] per container, as JSON.

use dcos_exec_proto::TaskInfo;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::time::{SystemTime, UNIX_EPOCH};

/// `{prefix}/nodes/{node}`: an agent that is alive (its lease is kept alive).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeRecord {
    /// The node's name (`[cluster] node`, default the hostname); unique in the cluster.
    pub name: String,
    /// How gateways reach this agent, e.g. `https://10.0.0.7:7443`.
    pub url: String,
    /// `[cluster] labels`, for people and for placement-aware tools.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// The agent's version.
    pub version: String,
    /// When the agent started, Unix seconds.
    pub started_at: u64,
}

/// `{prefix}/tasks/{node}/{container}`: one row of the agent's `GET /v1/tasks` (unfiltered) and the node it
/// runs on. The JSON is the [`TaskInfo`]'s fields plus `node` and `started_at`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskRecord {
    /// The task as the agent lists it; `age_secs` is its age when the record was written.
    #[serde(flatten)]
    pub task: TaskInfo,
    /// The node whose agent wrote it.
    pub node: String,
    /// When the container's init started, Unix seconds (None when stopped), so that readers can compute its
    /// age without the record being rewritten every second.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<u64>,
}

/// Now, in Unix seconds.
pub fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

impl dcos_exec_access::names::Named for TaskRecord {
    fn container_id(&self) -> &str {
        &self.task.container
    }
    fn task_id(&self) -> &str {
        &self.task.id
    }
    fn name(&self) -> Option<&str> {
        self.task.name.as_deref()
    }
}

impl TaskRecord {
    /// The record of `task` on `node`, as written at `now` (Unix seconds).
    pub fn new(node: &str, task: TaskInfo, now: u64) -> TaskRecord {
        let started_at = (task.state != "stopped").then(|| now.saturating_sub(task.age_secs));
        TaskRecord { task, node: node.to_string(), started_at }
    }

    /// The task with its age as of `now` (Unix seconds).
    pub fn info_at(&self, now: u64) -> TaskInfo {
        let mut t = self.task.clone();
        if let Some(s) = self.started_at {
            t.age_secs = now.saturating_sub(s);
        }
        t
    }

    /// True when `other` says the same about the task, its age aside: a running task's age grows every second
    /// and must not cause a write every second.
    pub fn same_as(&self, other: &TaskRecord) -> bool {
        let strip = |r: &TaskRecord| TaskInfo { age_secs: 0, ..r.task.clone() };
        self.node == other.node && strip(self) == strip(other)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn task(state: &str, age: u64) -> TaskInfo {
        TaskInfo {
            id: "web-1".into(),
            container: "c1".into(),
            runtime: "runc".into(),
            state: state.into(),
            pid: 42,
            age_secs: age,
            ..Default::default()
        }
    }

    #[test]
    fn json_is_the_task_plus_node_and_round_trips() {
        let r = TaskRecord::new("n1", task("running", 10), 1000);
        let v = serde_json::to_value(&r).unwrap();
        assert_eq!(v["id"], "web-1");
        assert_eq!(v["container"], "c1");
        assert_eq!(v["node"], "n1");
        assert_eq!(v["started_at"], 990);
        let back: TaskRecord = serde_json::from_value(v).unwrap();
        assert_eq!(back, r);
        assert_eq!(back.info_at(1005).age_secs, 15);
        let n = NodeRecord {
            name: "n1".into(),
            url: "https://10.0.0.1:7443".into(),
            labels: [("zone".to_string(), "a".to_string())].into(),
            version: "0.1.0".into(),
            started_at: 5,
        };
        assert_eq!(serde_json::from_str::<NodeRecord>(&serde_json::to_string(&n).unwrap()).unwrap(), n);
    }

    #[test]
    fn age_alone_is_not_a_change() {
        let a = TaskRecord::new("n1", task("running", 10), 1000);
        let b = TaskRecord::new("n1", task("running", 11), 1001);
        assert!(a.same_as(&b));
        assert!(!a.same_as(&TaskRecord::new("n1", task("stopped", 0), 1001)));
        assert!(!a.same_as(&TaskRecord::new("n2", task("running", 10), 1000)));
        assert_eq!(TaskRecord::new("n1", task("stopped", 0), 1000).started_at, None);
    }
}
