//! Which node and container a user's name for a task means, over the directory snapshot of every node: the
//! agent's own rules ([`dcos_exec_access::names`]: exact id, exact name, unique prefix, unique substring), with
//! the node of each candidate named when a name is ambiguous across nodes. It works on borrowed rows of the
//! shared snapshot: a lookup copies only the task it picks.

use dcos_exec_access::acl::Target;
use dcos_exec_access::names::{self, Named, Pick};
use dcos_exec_cluster::TaskRecord;
use dcos_exec_proto::{ErrorCode, TaskInfo};

/// Why a name resolves to no single task.
#[derive(Debug, thiserror::Error)]
pub enum ResolveError {
    #[error("no task {0:?} in the cluster")]
    NotFound(String),
    #[error("task {task:?} is ambiguous, it matches: {}; name one of them", candidates.join(", "))]
    Ambiguous { task: String, candidates: Vec<String> },
    #[error("container {id} on node {node} is {state}, not running")]
    NotRunning { id: String, node: String, state: String },
}

impl ResolveError {
    pub fn code(&self) -> ErrorCode {
        match self {
            ResolveError::NotFound(_) => ErrorCode::TaskNotFound,
            ResolveError::Ambiguous { .. } => ErrorCode::Ambiguous,
            ResolveError::NotRunning { .. } => ErrorCode::ContainerNotRunning,
        }
    }
}

/// One task of the snapshot, borrowed.
#[derive(Debug, Clone, Copy)]
pub struct Row<'a>(pub &'a TaskRecord);

impl Named for Row<'_> {
    fn container_id(&self) -> &str {
        &self.0.task.container
    }
    fn task_id(&self) -> &str {
        &self.0.task.id
    }
    fn name(&self) -> Option<&str> {
        self.0.task.name.as_deref()
    }
}

impl Row<'_> {
    pub fn node(&self) -> &str {
        &self.0.node
    }

    /// The row as `GET /v1/tasks` shows it, with its node and its age as of `now` (Unix seconds).
    pub fn info(&self, now: u64) -> TaskInfo {
        TaskInfo { node: Some(self.0.node.clone()), ..self.0.info_at(now) }
    }
}

/// Every name the ACL judges a task by (the gateway does not know names an engine did not tell its agent: the
/// agent, which does, judges again).
pub fn target<'a>(r: &'a Row<'_>) -> Target<'a> {
    let t = &r.0.task;
    Target {
        task_id: &t.id,
        container_id: &t.container,
        name: t.name.as_deref().map(|n| n.trim_start_matches('/')),
        name_unknown: false,
    }
}

/// `web-1 (container 3f9c0a1b2c3d) on node-a`.
pub fn describe(r: &Row<'_>) -> String {
    format!("{} on {}", names::describe(r), r.node())
}

/// The task that `task` names among the rows that are `visible` to the caller. A stopped task is an answer only
/// when `stopped_ok` (a debug session), as on the agent.
pub fn resolve<'a>(
    all: impl IntoIterator<Item = Row<'a>>,
    task: &str,
    visible: &dyn Fn(&Row<'a>) -> bool,
    stopped_ok: bool,
) -> Result<Row<'a>, ResolveError> {
    let all: Vec<Row<'a>> = all.into_iter().filter(|r| visible(r)).collect();
    let r = match names::pick(&all, task) {
        Pick::One(i) => all[i],
        Pick::None => return Err(ResolveError::NotFound(task.into())),
        Pick::Many(hits) => {
            let mut candidates: Vec<String> = hits.iter().map(|&i| describe(&all[i])).collect();
            candidates.sort();
            return Err(ResolveError::Ambiguous { task: task.into(), candidates });
        }
    };
    let state = &r.0.task.state;
    if state != "running" && !(stopped_ok && state == "stopped") {
        return Err(ResolveError::NotRunning {
            node: r.node().into(),
            id: r.0.task.container.clone(),
            state: state.clone(),
        });
    }
    Ok(r)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(node: &str, container: &str, id: &str, state: &str) -> TaskRecord {
        let info = TaskInfo { id: id.into(), container: container.into(), state: state.into(), ..TaskInfo::default() };
        TaskRecord::new(node, info, 1000)
    }

    #[test]
    fn names_resolve_across_nodes_and_ambiguity_names_the_nodes() {
        let all = [
            t("node-a", "aa01", "web.1", "running"),
            t("node-b", "bb01", "web.2", "running"),
            t("node-b", "bb02", "db.1", "stopped"),
        ];
        let rows = || all.iter().map(Row);
        let any = |_: &Row<'_>| true;
        assert_eq!(resolve(rows(), "web.2", &any, false).unwrap().node(), "node-b");
        assert_eq!(resolve(rows(), "aa0", &any, false).unwrap().0.task.container, "aa01");
        match resolve(rows(), "web", &any, false) {
            Err(e @ ResolveError::Ambiguous { .. }) => {
                assert_eq!(e.code(), ErrorCode::Ambiguous);
                assert_eq!(
                    e.to_string(),
                    "task \"web\" is ambiguous, it matches: web.1 (container aa01) on node-a, \
                     web.2 (container bb01) on node-b; name one of them"
                );
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(resolve(rows(), "db.1", &any, false), Err(ResolveError::NotRunning { .. })));
        assert_eq!(resolve(rows(), "db.1", &any, true).unwrap().0.task.container, "bb02");
        assert!(matches!(resolve(rows(), "nope", &any, false), Err(ResolveError::NotFound(_))));
        // What the caller may not see does not make a name ambiguous.
        let not_a = |r: &Row<'_>| r.node() != "node-a";
        assert_eq!(resolve(rows(), "web", &not_a, false).unwrap().0.task.container, "bb01");
        assert_eq!(resolve(rows(), "web.1", &any, false).unwrap().info(1000).node.as_deref(), Some("node-a"));
    }
}
