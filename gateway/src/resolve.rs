//! Which node and container a user's name for a task means, over the directory snapshot of every node: the
//! agent's own rules ([`dcos_exec_access::names`]: exact id, exact name, unique prefix, unique substring), with
//! the node of each candidate named when a name is ambiguous across nodes. It works on borrowed rows of the
//! shared snapshot and its index of names ([`dcos_exec_cluster::Indexed`], built once per snapshot): a lookup
//! costs a few binary searches, judges the ACL only on the candidates of the deciding step, and copies only
//! the task it picks.

use dcos_exec_access::acl::Target;
use dcos_exec_access::names::{self, Named, Pick};
use dcos_exec_cluster::{Indexed, TaskRecord};
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

/// The task that `task` names among the tasks of registered nodes that are `visible` to the caller, answered
/// from the snapshot's index: `visible` is asked only about candidates, and the answer is the one the agent
/// would give over the visible tasks alone (hidden tasks neither match nor make a name ambiguous). A stopped
/// task is an answer only when `stopped_ok` (a debug session), as on the agent.
pub fn resolve<'a>(
    snap: &'a Indexed,
    task: &str,
    visible: &dyn Fn(&Row<'a>) -> bool,
    stopped_ok: bool,
) -> Result<Row<'a>, ResolveError> {
    let all = &snap.snapshot.tasks;
    let r = match snap.index().pick(all, task, |i| visible(&Row(&all[i]))) {
        Pick::One(i) => Row(&all[i]),
        Pick::None => return Err(ResolveError::NotFound(task.into())),
        Pick::Many(hits) => {
            let mut candidates: Vec<String> = hits.iter().map(|&i| describe(&Row(&all[i]))).collect();
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

    /// The snapshot of `tasks`, every node registered but `node-gone`.
    fn indexed(tasks: Vec<TaskRecord>) -> Indexed {
        let mut snap = dcos_exec_cluster::Snapshot::default();
        for t in &tasks {
            if t.node != "node-gone" {
                let n = dcos_exec_cluster::NodeRecord {
                    name: t.node.clone(),
                    url: format!("https://{}:7443", t.node),
                    labels: Default::default(),
                    version: "0".into(),
                    started_at: 0,
                };
                snap.nodes.insert(t.node.clone(), n);
            }
        }
        let mut tasks = tasks;
        tasks.sort_by(|a, b| (&a.node, &a.task.container).cmp(&(&b.node, &b.task.container)));
        snap.tasks = tasks;
        Indexed::new(std::sync::Arc::new(snap))
    }

    #[test]
    fn names_resolve_across_nodes_and_ambiguity_names_the_nodes() {
        let s = indexed(vec![
            t("node-a", "aa01", "web.1", "running"),
            t("node-b", "bb01", "web.2", "running"),
            t("node-b", "bb02", "db.1", "stopped"),
            t("node-gone", "cc01", "web.3", "running"),
        ]);
        let any = |_: &Row<'_>| true;
        assert_eq!(resolve(&s, "web.2", &any, false).unwrap().node(), "node-b");
        assert_eq!(resolve(&s, "aa0", &any, false).unwrap().0.task.container, "aa01");
        match resolve(&s, "web", &any, false) {
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
        assert!(matches!(resolve(&s, "db.1", &any, false), Err(ResolveError::NotRunning { .. })));
        assert_eq!(resolve(&s, "db.1", &any, true).unwrap().0.task.container, "bb02");
        assert!(matches!(resolve(&s, "nope", &any, false), Err(ResolveError::NotFound(_))));
        // A task whose node record is gone names nothing.
        assert!(matches!(resolve(&s, "web.3", &any, false), Err(ResolveError::NotFound(_))));
        assert!(matches!(resolve(&s, "cc01", &any, false), Err(ResolveError::NotFound(_))));
        // What the caller may not see does not make a name ambiguous.
        let not_a = |r: &Row<'_>| r.node() != "node-a";
        assert_eq!(resolve(&s, "web", &not_a, false).unwrap().0.task.container, "bb01");
        assert_eq!(resolve(&s, "web.1", &any, false).unwrap().info(1000).node.as_deref(), Some("node-a"));
        // Nor is it named among the candidates, nor found.
        let not_b1 = |r: &Row<'_>| r.0.task.container != "bb01";
        assert_eq!(resolve(&s, "web", &not_b1, false).unwrap().0.task.container, "aa01");
        assert!(matches!(resolve(&s, "web.2", &not_b1, false), Err(ResolveError::NotFound(_))));
    }

    /// The real ACL through the judge the agent uses, over 100 000 tasks on 1000 nodes: the gateway evaluates
    /// the ACL a handful of times per lookup, not once per task, and a caller learns nothing of hidden tasks.
    /// [`target`], counting the ACL evaluations (one per call).
    fn counted(n: &std::cell::Cell<usize>) -> impl for<'a, 'b> Fn(&'a Row<'b>) -> Target<'a> + '_ {
        move |r| {
            n.set(n.get() + 1);
            target(r)
        }
    }

    #[test]
    fn a_lookup_among_100_000_tasks_judges_a_handful() {
        use dcos_exec_access::acl::Acl;
        use dcos_exec_access::auth::Claims;
        use dcos_exec_access::judge::{self, Refused};
        use dcos_exec_access::request::ExecParams;
        use std::cell::Cell;

        let mut tasks = Vec::new();
        for n in 0..1000 {
            for k in 0..100 {
                let id = format!("team{}.svc{k}.{n}", n % 2);
                tasks.push(t(&format!("node-{n:04}"), &format!("{:012x}{n:04}{k:02}", n * 100 + k), &id, "running"));
            }
        }
        let s = indexed(tasks);
        let acl = Acl::parse(
            "[[rule]]\nsubjects=['user:alice']\ntasks=['team0.**']\nactions=['exec']\n\
             [[rule]]\nsubjects=['user:bob']\ntasks=['team1.**']\nactions=['exec']\n",
        )
        .unwrap();
        let judged = Cell::new(0);
        let claims = |u: &str| Claims {
            sub: u.into(),
            groups: vec![],
            iss: "i".into(),
            aud: "a".into(),
            iat: 0,
            nbf: 0,
            exp: 0,
        };
        let params = |task: &str| ExecParams {
            task: task.into(),
            request: dcos_exec_proto::ExecRequest { command: vec!["sh".into()], ..Default::default() },
            image: None,
            pull_policy: Default::default(),
            cap_add: vec![],
            ws_key: http::HeaderValue::from_static("k"),
        };
        let run = |user: &str, task: &str| {
            judged.set(0);
            let r = judge::exec(
                &acl,
                counted(&judged),
                |name, v| resolve(&s, name, v, false),
                &claims(user),
                &params(task),
            )
            .map(|r| r.0.task.container.clone());
            (r, judged.get())
        };
        let (r, n) = run("alice", "team0.svc7.42");
        assert_eq!(r.unwrap(), format!("{:012x}004207", 4207));
        assert!(n <= 3, "the ACL was evaluated {n} times");
        let (r, n) = run("bob", "team1.svc99.999");
        assert!(r.is_ok());
        assert!(n <= 3, "the ACL was evaluated {n} times");
        // Bob may not see alice's task: he is told nothing about it (refused on the name he typed).
        let (r, n) = run("bob", "team0.svc7.42");
        assert!(matches!(r, Err(Refused::Denied(_))), "{r:?}");
        // The exact id and then the prefix step (team0.svc7.420, .422, ... .428) are judged: 6 rows.
        assert!(n <= 6, "the ACL was evaluated {n} times");
        // A prefix of 5500 tasks, all alice's: ambiguous, among hers only.
        let (r, _) = run("alice", "team0.svc1");
        match r {
            Err(Refused::Resolve(ResolveError::Ambiguous { candidates, .. })) => {
                assert!(candidates.iter().all(|c| c.starts_with("team0.svc1")), "{candidates:?}");
                assert_eq!(candidates.len(), 11 * 500, "svc1 and svc10..svc19 on the even nodes");
            }
            other => panic!("{other:?}"),
        }
        // To bob none of them exists: not an ambiguity that would list them, a refusal on the name he typed.
        let (r, _) = run("bob", "team0.svc1");
        assert!(matches!(r, Err(Refused::Denied(_))), "{r:?}");
    }
}
