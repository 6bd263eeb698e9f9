//! The gateway's lookup of one task at directory scale, in memory (no etcd): a snapshot of `--nodes` nodes of
//! `--tasks` tasks each, named as `simulate` names them, and a real ACL that hides some of them from the caller.
//! Measures the index's build (once per snapshot) and lookups through it (pick, then judge the candidates),
//! against the linear path the gateway had before (judge every task, then pick among the visible ones).
//!
//! ```text
//! cargo run --release -p dcos-exec-cluster --example lookup -- [--nodes 1000] [--tasks 100] [--rounds 2000]
//! ```
//!
//! Prints one JSON object, times in milliseconds.

#![allow(clippy::print_stdout, clippy::print_stderr)]

use dcos_exec_access::acl::{Acl, Principal, Target};
use dcos_exec_access::names::{self, Named, Pick};
use dcos_exec_cluster::{Indexed, NodeRecord, Snapshot, TaskRecord};
use dcos_exec_proto::TaskInfo;
use std::sync::Arc;
use std::time::Instant;

const ACL: &str = r#"
[[rule]]
subjects = ["group:ops"]
tasks = ["**"]
actions = ["exec"]

[[rule]]
subjects = ["user:dev"]
tasks = ["app-0[0-3]*"]
actions = ["exec"]

[[rule]]
effect = "deny"
subjects = ["*"]
tasks = ["app-031.*"]
actions = ["exec"]
"#;

/// A borrowed record, as the gateway's rows are.
#[derive(Clone, Copy)]
struct Row<'a>(&'a TaskRecord);

impl Named for Row<'_> {
    fn container_id(&self) -> &str {
        self.0.container_id()
    }
    fn task_id(&self) -> &str {
        self.0.task_id()
    }
    fn name(&self) -> Option<&str> {
        self.0.name()
    }
}

fn target(t: &TaskRecord) -> Target<'_> {
    Target {
        task_id: &t.task.id,
        container_id: &t.task.container,
        name: t.task.name.as_deref().map(|n| n.trim_start_matches('/')),
        name_unknown: false,
    }
}

/// The query of a kind for task `j` of node `n`.
type Query = fn(usize, usize) -> String;

fn percentile(xs: &mut [f64], p: f64) -> f64 {
    xs.sort_by(f64::total_cmp);
    // The index of a percentile of at most a few thousand samples fits.
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss, clippy::cast_precision_loss)]
    let i = (((xs.len() - 1) as f64) * p / 100.0).round() as usize;
    xs[i]
}

fn stats(xs: &mut [f64]) -> serde_json::Value {
    serde_json::json!({"median": percentile(xs, 50.0), "p99": percentile(xs, 99.0), "max": percentile(xs, 100.0)})
}

fn ms(t: Instant) -> f64 {
    t.elapsed().as_secs_f64() * 1e3
}

fn main() {
    let (mut nodes, mut tasks, mut rounds) = (1000usize, 100usize, 2000usize);
    let mut it = std::env::args().skip(1);
    while let Some(k) = it.next() {
        let v = it.next().and_then(|v| v.parse().ok());
        match (k.as_str(), v) {
            ("--nodes", Some(v)) => nodes = v,
            ("--tasks", Some(v)) => tasks = v,
            ("--rounds", Some(v)) => rounds = v,
            _ => {
                eprintln!("lookup: usage: [--nodes N] [--tasks N] [--rounds N]");
                std::process::exit(2);
            }
        }
    }
    let Ok(acl) = Acl::parse(ACL) else {
        eprintln!("lookup: the built-in ACL does not parse");
        std::process::exit(2);
    };
    let mut snap = Snapshot::default();
    for n in 0..nodes {
        let name = format!("node-{n:04}");
        let url = format!("https://10.0.{}.{}:7443", n / 256, n % 256);
        let record =
            NodeRecord { name: name.clone(), url, labels: Default::default(), version: "0".into(), started_at: 0 };
        snap.nodes.insert(name.clone(), record);
        for j in 0..tasks {
            let id = format!("app-{:03}.instance-{n:04}-{j:03}", j % 50);
            let container = format!("{:016x}{:048x}", (n * tasks + j) as u64 * 0x9e37_79b9_7f4a_7c15, n * tasks + j);
            let info = TaskInfo {
                id,
                name: (j % 2 == 0).then(|| format!("/web-{n}-{j}")),
                container,
                state: "running".into(),
                ..TaskInfo::default()
            };
            snap.tasks.push(TaskRecord::new(&name, info, 0));
        }
    }
    snap.tasks.sort_by(|a, b| (&a.node, &a.task.container).cmp(&(&b.node, &b.task.container)));
    let snap = Arc::new(snap);

    let t = Instant::now();
    let indexed = Indexed::new(snap.clone());
    let _ = indexed.index();
    let build_ms = ms(t);

    let dev = Principal { user: "dev", groups: &[] };
    let ops_groups = ["ops".to_string()];
    let ops = Principal { user: "op", groups: &ops_groups };
    let all = &snap.tasks;
    // What the gateway does now: pick over the index, judge only candidates, then judge the answer.
    let indexed_lookup = |who: &Principal<'_>, q: &str| -> (bool, usize) {
        let mut judged = 0;
        let p = indexed.index().pick(all, q, |i| {
            judged += 1;
            acl.allows_target(who, &target(&all[i]), "exec", None)
        });
        match p {
            Pick::One(i) => (acl.allows_target(who, &target(&all[i]), "exec", None), judged + 1),
            _ => (false, judged),
        }
    };
    // What it did before: judge every task of a registered node, then the agent's pick over the visible ones.
    let linear_lookup = |who: &Principal<'_>, q: &str| -> bool {
        let visible: Vec<Row<'_>> = all
            .iter()
            .filter(|t| snap.nodes.contains_key(&t.node))
            .filter(|t| acl.allows_target(who, &target(t), "exec", None))
            .map(Row)
            .collect();
        matches!(names::pick(&visible, q), Pick::One(_))
    };

    let kinds: [(&str, Query); 6] = [
        ("task_id", |n, j| format!("app-{:03}.instance-{n:04}-{j:03}", j % 50)),
        ("name", |n, j| format!("web-{n}-{}", j - j % 2)),
        ("container_prefix", |_, _| String::new()),
        ("task_id_prefix", |n, j| format!("app-{:03}.instance-{n:04}-{j:03}", j % 50)[..22].to_string()),
        ("substring", |n, j| format!("instance-{n:04}-{j:03}")),
        ("not_found", |n, _| format!("gone-{n}")),
    ];
    let mut report = serde_json::json!({"nodes": nodes, "tasks": all.len(), "index_build_ms": build_ms});
    for (kind, query) in kinds {
        let mut new = Vec::new();
        let mut old = Vec::new();
        let mut judged_max = 0;
        for i in 0..rounds {
            let n = (i * 7919) % nodes;
            let j = (i * 31) % tasks;
            let q = match kind {
                "container_prefix" => {
                    let k = n * tasks + j;
                    format!("{:016x}{:048x}", k as u64 * 0x9e37_79b9_7f4a_7c15, k)[..12].to_string()
                }
                _ => query(n, j),
            };
            for who in [&ops, &dev] {
                let t = Instant::now();
                let (_, judged) = indexed_lookup(who, &q);
                new.push(ms(t));
                judged_max = judged_max.max(judged);
                if i < 10 {
                    let t = Instant::now();
                    let _ = linear_lookup(who, &q);
                    old.push(ms(t));
                }
            }
        }
        report[kind] = serde_json::json!({
            "indexed_ms": stats(&mut new),
            "before_ms": stats(&mut old),
            "acl_evaluations_max": judged_max,
        });
    }
    let t = Instant::now();
    let mut listed = 0;
    for n in 0..nodes.min(200) {
        listed += snap.tasks_of(&format!("node-{n:04}")).len();
    }
    report["tasks_of_node_ms"] = serde_json::json!(ms(t) / nodes.min(200) as f64);
    report["tasks_of_node_rows"] = serde_json::json!(listed / nodes.min(200));
    println!("{}", serde_json::to_string_pretty(&report).unwrap_or_default());
}
