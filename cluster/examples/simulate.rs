//! Directory scale by simulation: registers many nodes with many tasks each in a real etcd through the real
//! [`Registrar`] (one lease, keep-alive and sync loop per node, as many agents would), watches them with a real
//! [`Directory`], and measures how long registration takes, how large the records are and how long a gateway's
//! lookup of one task in the snapshot takes. Used by `bench/run`.
//!
//! ```text
//! cargo run --release -p dcos-exec-cluster --example simulate -- \
//!     --endpoints http://127.0.0.1:2379 [--nodes 1000] [--tasks 100] [--prefix /dcos-exec/v1] [--hold 30]
//! ```
//!
//! Prints one JSON object when every record is in the directory (`"ready": true`), keeps the registrations
//! alive for `--hold` seconds (or until stdin closes, with `--hold 0`), then revokes them and prints the final
//! object. Progress goes to stderr.

#![allow(clippy::print_stdout, clippy::print_stderr)]

use dcos_exec_access::names::{self, Pick};
use dcos_exec_cluster::record::unix_now;
use dcos_exec_cluster::registrar::{Options, Status};
use dcos_exec_cluster::{Directory, EtcdConfig, NodeRecord, Registrar, TaskRecord};
use dcos_exec_proto::TaskInfo;
use futures_util::FutureExt;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

struct Args {
    endpoints: Vec<String>,
    nodes: usize,
    tasks: usize,
    prefix: String,
    hold: u64,
}

fn args() -> Result<Args, String> {
    let mut a = Args { endpoints: vec![], nodes: 1000, tasks: 100, prefix: "/dcos-exec/v1".into(), hold: 30 };
    let mut it = std::env::args().skip(1);
    while let Some(k) = it.next() {
        let v = it.next().ok_or_else(|| format!("{k} needs a value"))?;
        let num = |v: &str| v.parse::<u64>().map_err(|e| format!("{k} {v}: {e}"));
        match k.as_str() {
            "--endpoints" => a.endpoints = v.split(',').map(str::to_string).collect(),
            "--nodes" => a.nodes = usize::try_from(num(&v)?).map_err(|e| e.to_string())?,
            "--tasks" => a.tasks = usize::try_from(num(&v)?).map_err(|e| e.to_string())?,
            "--prefix" => a.prefix = v,
            "--hold" => a.hold = num(&v)?,
            _ => return Err(format!("unknown option {k}")),
        }
    }
    if a.endpoints.is_empty() {
        return Err("--endpoints URL[,URL...] is required".into());
    }
    Ok(a)
}

/// Node `n`'s tasks: realistic ids and names (Marathon-like task ids, a container id of 64 hex digits).
fn tasks_of(n: usize, count: usize) -> Vec<TaskInfo> {
    (0..count)
        .map(|j| TaskInfo {
            id: format!("app-{:03}.instance-{n:04}-{j:03}", j % 50),
            container: format!("{n:032x}{j:032x}"),
            name: Some(format!("app-{:03}-{n:04}-{j:03}", j % 50)),
            runtime: "runc".into(),
            state: "running".into(),
            pid: i32::try_from(10_000 + j).unwrap_or(i32::MAX),
            age_secs: 3600,
            exit_code: None,
            service: None,
            project: None,
            node: None,
        })
        .collect()
}

fn percentile(xs: &mut [f64], p: f64) -> f64 {
    xs.sort_by(f64::total_cmp);
    if xs.is_empty() {
        return f64::NAN;
    }
    // The index of a percentile of at most a few thousand samples fits.
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss, clippy::cast_precision_loss)]
    let i = (((xs.len() - 1) as f64) * p / 100.0).round() as usize;
    xs[i]
}

/// A lookup without copying: exact task id or container id, else exact name, else a prefix of an id, over the
/// records of the shared snapshot.
fn lookup<'a>(tasks: &'a [TaskRecord], want: &str) -> Vec<&'a TaskRecord> {
    let exact: Vec<_> = tasks.iter().filter(|t| t.task.id == want || t.task.container == want).collect();
    if !exact.is_empty() {
        return exact;
    }
    let named: Vec<_> = tasks.iter().filter(|t| t.task.name.as_deref() == Some(want)).collect();
    if !named.is_empty() {
        return named;
    }
    tasks.iter().filter(|t| t.task.id.starts_with(want) || t.task.container.starts_with(want)).collect()
}

#[tokio::main]
async fn main() {
    let a = match args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("simulate: {e}");
            std::process::exit(2);
        }
    };
    let etcd = EtcdConfig::new(a.endpoints.clone());
    let options = Options { prefix: a.prefix.clone(), ..Options::default() };

    let record_bytes: usize = tasks_of(0, a.tasks)
        .into_iter()
        .map(|t| serde_json::to_vec(&TaskRecord::new("node-0000", t, 0)).map(|v| v.len()).unwrap_or(0))
        .sum::<usize>()
        / a.tasks.max(1);

    let t0 = Instant::now();
    let mut registrars = Vec::with_capacity(a.nodes);
    for n in 0..a.nodes {
        let node = NodeRecord {
            name: format!("node-{n:04}"),
            url: format!("https://10.{}.{}.{}:7443", n / 65536, (n / 256) % 256, n % 256),
            labels: BTreeMap::from([("zone".into(), format!("z{}", n % 3))]),
            version: env!("CARGO_PKG_VERSION").into(),
            started_at: 0,
        };
        let list = Arc::new(tasks_of(n, a.tasks));
        let source = Arc::new(move || {
            let l = list.clone();
            async move { (*l).clone() }.boxed()
        });
        registrars.push(Registrar::spawn_with(etcd.clone(), node, options.clone(), source));
    }
    let spawned = t0.elapsed();

    // Every registrar has written everything once when each reports Registered and the directory holds all.
    let directory = Directory::spawn(etcd.clone(), &a.prefix, Duration::from_secs(30));
    let want = a.nodes * a.tasks;
    let mut last_log = Instant::now();
    let registered_at = loop {
        let registered = registrars.iter().filter(|r| matches!(r.status(), Status::Registered { .. })).count();
        let seen = directory.shared_snapshot().map(|(s, _)| (s.nodes.len(), s.tasks.len())).unwrap_or((0, 0));
        // At least: other agents (a real one in the bench) may share the prefix.
        if registered == a.nodes && seen.0 >= a.nodes && seen.1 >= want {
            break t0.elapsed();
        }
        if last_log.elapsed() > Duration::from_secs(5) {
            eprintln!(
                "simulate: {registered}/{} registered, directory has {}/{} nodes, {}/{want} tasks",
                a.nodes, seen.0, a.nodes, seen.1
            );
            last_log = Instant::now();
        }
        if t0.elapsed() > Duration::from_secs(600) {
            eprintln!("simulate: registration did not finish in 10 minutes");
            std::process::exit(1);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };

    // A fresh directory: the time a gateway takes to load everything at start.
    let t1 = Instant::now();
    let cold = Directory::spawn(etcd.clone(), &a.prefix, Duration::from_secs(30));
    let cold_load = loop {
        if cold.shared_snapshot().is_ok_and(|(s, _)| s.tasks.len() >= want) {
            break t1.elapsed();
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    drop(cold);

    // Lookups of tasks spread over the directory: by a scan of the shared snapshot (exact ids and prefixes),
    // and the way the gateway resolves a session's task (on fewer samples: it copies the directory).
    let mut exact = Vec::new();
    let mut prefix = Vec::new();
    let mut full_copy = Vec::new();
    let mut as_built = Vec::new();
    // The gateway's lookup now: the index of the shared snapshot (built once per snapshot; the first call pays
    // for it), exact id and unique-or-not prefix.
    let mut indexed = Vec::new();
    let _ = directory.indexed_snapshot().map(|(s, _)| s.index().len());
    for i in 0..200 {
        let n = (i * 7919) % a.nodes;
        let j = (i * 31) % a.tasks;
        let id = format!("app-{:03}.instance-{n:04}-{j:03}", j % 50);
        for q in [&id[..], &id[..id.len() - 1]] {
            let t = Instant::now();
            let found = directory
                .indexed_snapshot()
                .map(|(s, _)| !matches!(s.index().pick(&s.snapshot.tasks, q, |_| true), Pick::None));
            indexed.push(t.elapsed().as_secs_f64() * 1e3);
            assert!(found.unwrap_or(false), "indexed lookup of {q}");
        }
    }
    for i in 0..200 {
        let n = (i * 7919) % a.nodes;
        let j = (i * 31) % a.tasks;
        let id = format!("app-{:03}.instance-{n:04}-{j:03}", j % 50);
        let t = Instant::now();
        let snap = directory.shared_snapshot().map(|(s, _)| s);
        let hits = snap.as_ref().map(|s| lookup(&s.tasks, &id).len()).unwrap_or(0);
        exact.push(t.elapsed().as_secs_f64() * 1e3);
        assert_eq!(hits, 1, "lookup of {id}");
        let t = Instant::now();
        let hits = snap.as_ref().map(|s| lookup(&s.tasks, &id[..id.len() - 1]).len()).unwrap_or(0);
        prefix.push(t.elapsed().as_secs_f64() * 1e3);
        assert!(hits >= 1);
        if i < 20 {
            let t = Instant::now();
            let copied = directory.snapshot().map(|s| s.tasks.len()).unwrap_or(0);
            full_copy.push(t.elapsed().as_secs_f64() * 1e3);
            assert!(copied >= want);
            // What the gateway does per session today: a copy of the snapshot, every record made a TaskInfo
            // with its node, then the agent's name rules over all of them.
            let t = Instant::now();
            let picked = directory.snapshot().map(|s| {
                let now = unix_now();
                let all: Vec<TaskInfo> = s
                    .tasks
                    .iter()
                    .filter(|t| s.nodes.contains_key(&t.node))
                    .map(|t| TaskInfo { node: Some(t.node.clone()), ..t.info_at(now) })
                    .collect();
                matches!(names::pick(&all, &id), Pick::One(_))
            });
            as_built.push(t.elapsed().as_secs_f64() * 1e3);
            assert!(picked.unwrap_or(false), "pick {id}");
        }
    }
    let report = |ready: bool, extra: serde_json::Value| {
        let mut v = serde_json::json!({
            "ready": ready,
            "nodes": a.nodes,
            "tasks_per_node": a.tasks,
            "records": want + a.nodes,
            "task_record_bytes": record_bytes,
            "spawn_s": spawned.as_secs_f64(),
            "register_all_s": registered_at.as_secs_f64(),
            "gateway_cold_load_s": cold_load.as_secs_f64(),
            "lookup_exact_ms": {"median": percentile(&mut exact.clone(), 50.0), "p99": percentile(&mut exact.clone(), 99.0)},
            "lookup_prefix_ms": {"median": percentile(&mut prefix.clone(), 50.0), "p99": percentile(&mut prefix.clone(), 99.0)},
            "lookup_indexed_ms": {"median": percentile(&mut indexed.clone(), 50.0), "p99": percentile(&mut indexed.clone(), 99.0)},
            "snapshot_copy_ms": {"median": percentile(&mut full_copy.clone(), 50.0)},
            "lookup_as_built_ms": {"median": percentile(&mut as_built.clone(), 50.0), "p99": percentile(&mut as_built.clone(), 99.0)},
        });
        if let (Some(o), serde_json::Value::Object(e)) = (v.as_object_mut(), extra) {
            o.extend(e);
        }
        println!("{v}");
    };
    report(true, serde_json::json!({}));

    // Hold: the steady state whose load on etcd the caller measures.
    let hold = async {
        if a.hold == 0 {
            let _ = tokio::task::spawn_blocking(|| std::io::copy(&mut std::io::stdin(), &mut std::io::sink())).await;
        } else {
            tokio::time::sleep(Duration::from_secs(a.hold)).await;
        }
    };
    hold.await;
    let lost = registrars.iter().filter(|r| !matches!(r.status(), Status::Registered { .. })).count();
    let t2 = Instant::now();
    futures_util::future::join_all(registrars.into_iter().map(Registrar::stop)).await;
    report(false, serde_json::json!({"not_registered_after_hold": lost, "revoke_all_s": t2.elapsed().as_secs_f64()}));
}
