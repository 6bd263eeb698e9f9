//! Which node and container a user's name for a task means, over the directory snapshot of every node: the
//! agent's own rules ([`dcos_exec_access::names`]: exact id, exact name, unique prefix, unique substring), with
//! the node of each candidate named when a name is ambiguous across nodes.

use dcos_exec_access::names::{self, Pick};
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

fn node(t: &TaskInfo) -> &str {
    t.node.as_deref().unwrap_or("?")
}

/// `web-1 (container 3f9c0a1b2c3d) on node-a`.
pub fn describe(t: &TaskInfo) -> String {
    format!("{} on {}", names::describe(t), node(t))
}

/// The task that `task` names among those of `all` (each with its node) that are `visible` to the caller. A
/// stopped task is an answer only when `stopped_ok` (a debug session), as on the agent.
pub fn resolve(
    all: Vec<TaskInfo>,
    task: &str,
    visible: &dyn Fn(&TaskInfo) -> bool,
    stopped_ok: bool,
) -> Result<TaskInfo, ResolveError> {
    let mut all: Vec<TaskInfo> = all.into_iter().filter(|t| visible(t)).collect();
    let t = match names::pick(&all, task) {
        Pick::One(i) => all.swap_remove(i),
        Pick::None => return Err(ResolveError::NotFound(task.into())),
        Pick::Many(hits) => {
            let mut candidates: Vec<String> = hits.iter().map(|&i| describe(&all[i])).collect();
            candidates.sort();
            return Err(ResolveError::Ambiguous { task: task.into(), candidates });
        }
    };
    if t.state != "running" && !(stopped_ok && t.state == "stopped") {
        return Err(ResolveError::NotRunning { node: node(&t).into(), id: t.container, state: t.state });
    }
    Ok(t)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(node: &str, container: &str, id: &str, state: &str) -> TaskInfo {
        TaskInfo {
            id: id.into(),
            container: container.into(),
            node: Some(node.into()),
            state: state.into(),
            ..TaskInfo::default()
        }
    }

    #[test]
    fn names_resolve_across_nodes_and_ambiguity_names_the_nodes() {
        let all = vec![
            t("node-a", "aa01", "web.1", "running"),
            t("node-b", "bb01", "web.2", "running"),
            t("node-b", "bb02", "db.1", "stopped"),
        ];
        let any = |_: &TaskInfo| true;
        assert_eq!(resolve(all.clone(), "web.2", &any, false).unwrap().node.as_deref(), Some("node-b"));
        assert_eq!(resolve(all.clone(), "aa0", &any, false).unwrap().container, "aa01");
        match resolve(all.clone(), "web", &any, false) {
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
        assert!(matches!(resolve(all.clone(), "db.1", &any, false), Err(ResolveError::NotRunning { .. })));
        assert_eq!(resolve(all.clone(), "db.1", &any, true).unwrap().container, "bb02");
        assert!(matches!(resolve(all.clone(), "nope", &any, false), Err(ResolveError::NotFound(_))));
        // What the caller may not see does not make a name ambiguous.
        let not_a = |t: &TaskInfo| t.node.as_deref() != Some("node-a");
        assert_eq!(resolve(all, "web", &not_a, false).unwrap().container, "bb01");
    }
}
