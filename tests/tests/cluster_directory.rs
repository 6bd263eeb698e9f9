//! The cluster directory against a real three-member etcd cluster (TLS, client certificates) and real agents
//! with real runc containers: agents register their node and tasks under a lease, the records follow
//! containers that start and stop, vanish when the agent dies, come back when it restarts, and survive the
//! death of the etcd leader; the ACL is reloaded from a file or from etcd without a restart, and a broken
//! version never replaces a working one.

mod support;

use dcos_exec_cluster::{Directory, DirectoryError, EtcdConfig};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;
use support::etcd::Cluster;
use support::{eventually, prefix, run, skip, stderr, Agent, Container, ContainerOpts};

const PREFIX: &str = "/dcos-exec/v1";
/// Exit code of `dcos` when the ACL refuses (proto's `exit::FORBIDDEN`).
const FORBIDDEN: i32 = 118;

fn test_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("{}-{name}", prefix()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// `[cluster]` of an agent named `node` in `etcd`, and `extra` keys of the table.
fn cluster_section(etcd: &Cluster, node: &str, extra: &str) -> String {
    etcd.agent_section(node, &format!("{extra}\nlabels = {{ test = \"{}\" }}", prefix()))
}

/// A container with the task id annotation, under `root`.
fn task_container(root: &Path, id: &str, task: &str) -> Container {
    Container::start(
        root,
        id,
        &ContainerOpts { annotations: vec![("io.dcos.task-id".into(), task.into())], ..Default::default() },
    )
}

/// The task records of `node`, by container id.
fn tasks_of(etcd: &mut Cluster, node: &str) -> std::collections::BTreeMap<String, Value> {
    etcd.get_prefix(&format!("{PREFIX}/tasks/{node}/"))
        .into_iter()
        .map(|(k, v)| (k.rsplit('/').next().unwrap_or_default().to_string(), serde_json::from_str(&v).unwrap()))
        .collect()
}

fn node_record(etcd: &mut Cluster, node: &str) -> Option<Value> {
    etcd.get(&format!("{PREFIX}/nodes/{node}")).map(|v| serde_json::from_str(&v).unwrap())
}

fn log_of(agent: &Agent) -> String {
    std::fs::read_to_string(agent.dir.join("agent.log")).unwrap_or_default()
}

/// Waits until `container` is registered for `node` as a running task named `task`.
fn wait_registered(etcd: &mut Cluster, node: &str, container: &str, task: &str, agent: &Agent) {
    let ok = eventually(30, || {
        tasks_of(etcd, node)
            .get(container)
            .is_some_and(|t| t["id"] == task && t["state"] == "running" && t["node"] == node && t["runtime"] == "runc")
    });
    assert!(ok, "{container} not registered for {node}: {:?}\nagent log:\n{}", tasks_of(etcd, node), log_of(agent));
}

fn wait_gone(etcd: &mut Cluster, node: &str, container: &str, agent: &Agent) {
    let ok = eventually(30, || !tasks_of(etcd, node).contains_key(container));
    assert!(ok, "{container} still registered for {node}\nagent log:\n{}", log_of(agent));
}

#[test]
fn etcd_fixture_serves_over_mutual_tls_and_survives_its_leader() {
    if skip() {
        return;
    }
    // 127.0.0.2 stands for the host side of a veth pair: loopback answers on all of 127/8.
    let extra: std::net::IpAddr = "127.0.0.2".parse().unwrap();
    let opts = support::etcd::Options { extra_client_ips: vec![extra], ..Default::default() };
    let mut etcd = Cluster::start_with(&test_dir("etcd-fixture"), &opts);
    etcd.put("/t/k", "v1");
    assert_eq!(etcd.get("/t/k").as_deref(), Some("v1"));
    let o = etcd.etcdctl_at(&etcd.endpoints_on(extra).join(","), &["get", "--print-value-only", "/t/k"]);
    assert_eq!(support::stdout(&o).trim(), "v1", "{}", stderr(&o));
    // Without a client certificate etcd refuses.
    let eps = etcd.endpoints().join(",");
    let o = run(std::process::Command::new("etcdctl")
        .args(["--endpoints", &eps, "--cacert"])
        .arg(&etcd.ca_file)
        .args(["--dial-timeout", "2s", "--command-timeout", "3s", "get", "/t/k"]));
    assert!(!o.status.success(), "etcd answered a client without a certificate: {}", support::stdout(&o));
    let old = etcd.kill_leader();
    etcd.wait_healthy(30);
    let new = etcd.leader().expect("a new leader");
    assert_ne!(old, new);
    etcd.put("/t/k", "v2");
    etcd.restart(old);
    etcd.wait_healthy(30);
    assert_eq!(etcd.running_endpoints().len(), 3);
    let url = etcd.members[old].client_url.clone();
    let o = etcd.etcdctl_at(&url, &["get", "--print-value-only", "/t/k"]);
    assert_eq!(support::stdout(&o).trim(), "v2", "the restarted member caught up");
    assert_eq!(etcd.get_prefix("/t/"), [("/t/k".to_string(), "v2".to_string())]);
}

#[test]
fn an_agent_registers_its_node_and_tasks_and_follows_containers_that_start_and_stop() {
    if skip() {
        return;
    }
    let root = test_dir("reg");
    let mut etcd = Cluster::start(&root.join("etcd"));
    let p = prefix();
    let node = format!("node-{p}-a");
    let first = task_container(&root, &format!("{p}-reg-1"), &format!("web-{p}-1"));
    let agent = Agent::start_with(&root.join("agent"), &cluster_section(&etcd, &node, ""));
    wait_registered(&mut etcd, &node, &first.id, &format!("web-{p}-1"), &agent);
    let n = node_record(&mut etcd, &node).expect("node record");
    assert_eq!((n["name"].as_str(), n["url"].as_str()), (Some(node.as_str()), Some(agent.url.as_str())));
    assert_eq!(n["labels"]["test"], p);
    assert_eq!(n["version"], env!("CARGO_PKG_VERSION"));
    // Both records are under one lease: the agent's.
    let lease = |etcd: &mut Cluster, key: &str| -> i64 {
        let o = etcd.etcdctl(&["get", "-w", "json", "--", key]);
        let v: Value = serde_json::from_slice(&o.stdout).unwrap();
        v["kvs"][0]["lease"].as_i64().unwrap_or(0)
    };
    let node_lease = lease(&mut etcd, &format!("{PREFIX}/nodes/{node}"));
    assert_ne!(node_lease, 0, "the node record has no lease");
    assert_eq!(lease(&mut etcd, &format!("{PREFIX}/tasks/{node}/{}", first.id)), node_lease);
    assert!(log_of(&agent).contains("registered in the cluster directory"), "{}", log_of(&agent));

    // A container that starts shows up; one that stops is marked stopped; one that is deleted disappears.
    let second = task_container(&root, &format!("{p}-reg-2"), &format!("web-{p}-2"));
    wait_registered(&mut etcd, &node, &second.id, &format!("web-{p}-2"), &agent);
    second.kill();
    let stopped =
        eventually(30, || tasks_of(&mut etcd, &node).get(&second.id).is_some_and(|t| t["state"] == "stopped"));
    assert!(stopped, "{:?}", tasks_of(&mut etcd, &node).get(&second.id));
    let id = second.id.clone();
    drop(second);
    wait_gone(&mut etcd, &node, &id, &agent);
    assert!(tasks_of(&mut etcd, &node).contains_key(&first.id), "the other task went too");

    // A running task's record is not rewritten as its age grows: its mod revision stays.
    let modrev = |etcd: &mut Cluster| -> i64 {
        let o = etcd.etcdctl(&["get", "-w", "json", "--", &format!("{PREFIX}/tasks/{node}/{}", first.id)]);
        let v: Value = serde_json::from_slice(&o.stdout).unwrap();
        v["kvs"][0]["mod_revision"].as_i64().unwrap()
    };
    let before = modrev(&mut etcd);
    std::thread::sleep(Duration::from_millis(2500));
    assert_eq!(modrev(&mut etcd), before, "an unchanged task was written again");

    // A graceful stop leaves the directory at once (lease revoked).
    // SAFETY: kill on our own child.
    unsafe { libc::kill(agent.pid(), libc::SIGTERM) };
    let left = eventually(30, || node_record(&mut etcd, &node).is_none() && tasks_of(&mut etcd, &node).is_empty());
    assert!(left, "records left after SIGTERM\n{}", log_of(&agent));
}

#[test]
fn a_killed_agent_leaves_when_its_lease_expires_and_a_restarted_one_registers_again() {
    if skip() {
        return;
    }
    let root = test_dir("lease");
    let mut etcd = Cluster::start(&root.join("etcd"));
    let p = prefix();
    let node = format!("node-{p}-b");
    let c = task_container(&root, &format!("{p}-lease-1"), &format!("db-{p}-1"));
    // Renewed every third of the TTL: 6 s leaves the check below at least 4 s, ample for one etcdctl on a
    // loaded machine.
    let section = cluster_section(&etcd, &node, "lease_ttl = \"6s\"");
    let mut agent = Agent::start_with(&root.join("agent"), &section);
    wait_registered(&mut etcd, &node, &c.id, &format!("db-{p}-1"), &agent);
    // SIGKILL: nothing is revoked; the lease runs out.
    agent.child.kill().unwrap();
    agent.child.wait().unwrap();
    assert!(node_record(&mut etcd, &node).is_some(), "records went before the lease expired");
    let gone = eventually(30, || node_record(&mut etcd, &node).is_none() && tasks_of(&mut etcd, &node).is_empty());
    assert!(gone, "records outlived the lease: {:?}", tasks_of(&mut etcd, &node));
    drop(agent);

    // Restarted, it registers the node and its tasks again.
    let agent = Agent::start_with(&root.join("agent"), &section);
    wait_registered(&mut etcd, &node, &c.id, &format!("db-{p}-1"), &agent);
    assert!(node_record(&mut etcd, &node).is_some());
}

#[test]
fn an_agent_whose_lease_expired_while_it_hung_registers_everything_again() {
    if skip() {
        return;
    }
    let root = test_dir("regrant");
    let mut etcd = Cluster::start(&root.join("etcd"));
    let p = prefix();
    let node = format!("node-{p}-g");
    let c = task_container(&root, &format!("{p}-rg-1"), &format!("job-{p}-1"));
    let agent = Agent::start_with(&root.join("agent"), &cluster_section(&etcd, &node, "lease_ttl = \"3s\""));
    wait_registered(&mut etcd, &node, &c.id, &format!("job-{p}-1"), &agent);
    // Hung (SIGSTOP) for longer than the TTL while etcd is fine: the lease expires and the records go.
    // SAFETY: kill on our own child.
    unsafe { libc::kill(agent.pid(), libc::SIGSTOP) };
    let gone = eventually(30, || node_record(&mut etcd, &node).is_none() && tasks_of(&mut etcd, &node).is_empty());
    // SAFETY: as above.
    unsafe { libc::kill(agent.pid(), libc::SIGCONT) };
    assert!(gone, "the records outlived the lease");
    // Woken up, it learns that its lease is gone, takes a new one and writes everything again.
    wait_registered(&mut etcd, &node, &c.id, &format!("job-{p}-1"), &agent);
    assert!(eventually(30, || node_record(&mut etcd, &node).is_some()));
    assert!(log_of(&agent).contains("registering again"), "{}", log_of(&agent));
}

#[test]
fn a_second_agent_with_the_same_node_name_waits_instead_of_taking_over() {
    if skip() {
        return;
    }
    let root = test_dir("twin");
    let mut etcd = Cluster::start(&root.join("etcd"));
    let p = prefix();
    let node = format!("node-{p}-h");
    let c = task_container(&root, &format!("{p}-tw-1"), &format!("twin-{p}-1"));
    let section = cluster_section(&etcd, &node, "lease_ttl = \"3s\"");
    let mut first = Agent::start_with(&root.join("first"), &section);
    wait_registered(&mut etcd, &node, &c.id, &format!("twin-{p}-1"), &first);
    let second = Agent::start_with(&root.join("second"), &section);
    let refused = eventually(30, || log_of(&second).contains("registered by another agent"));
    assert!(refused, "{}", log_of(&second));
    assert_eq!(node_record(&mut etcd, &node).unwrap()["url"], first.url.as_str(), "the second agent took over");
    // Once the first is gone and its lease has run out, the name is free.
    first.child.kill().unwrap();
    first.child.wait().unwrap();
    let taken = eventually(30, || node_record(&mut etcd, &node).is_some_and(|n| n["url"] == second.url.as_str()));
    assert!(taken, "{}", log_of(&second));
    wait_registered(&mut etcd, &node, &c.id, &format!("twin-{p}-1"), &second);
}

#[test]
fn a_restarted_agent_removes_tasks_that_stopped_while_it_was_down() {
    if skip() {
        return;
    }
    let root = test_dir("restart");
    let mut etcd = Cluster::start(&root.join("etcd"));
    let p = prefix();
    let node = format!("node-{p}-c");
    // A lease far longer than the test: only the restarted agent can remove the stale record. The URL stays
    // the same across the restart (the test agent listens on a new port each time): that is how the agent
    // knows the record under its name is its own.
    let section = cluster_section(&etcd, &node, "lease_ttl = \"600s\"\nurl = \"https://agent-c.test:7443\"");
    let stays = task_container(&root, &format!("{p}-rs-1"), &format!("app-{p}-1"));
    let goes = task_container(&root, &format!("{p}-rs-2"), &format!("app-{p}-2"));
    let mut agent = Agent::start_with(&root.join("agent"), &section);
    wait_registered(&mut etcd, &node, &goes.id, &format!("app-{p}-2"), &agent);
    agent.child.kill().unwrap();
    agent.child.wait().unwrap();
    let goes_id = goes.id.clone();
    drop(goes);
    assert!(tasks_of(&mut etcd, &node).contains_key(&goes_id), "the dead agent's records stay until its lease ends");
    drop(agent);
    let agent = Agent::start_with(&root.join("agent"), &section);
    wait_gone(&mut etcd, &node, &goes_id, &agent);
    wait_registered(&mut etcd, &node, &stays.id, &format!("app-{p}-1"), &agent);
    // And everything is under the new agent's lease.
    let o = etcd.etcdctl(&["get", "-w", "json", "--prefix", "--", &format!("{PREFIX}/tasks/{node}/")]);
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    let leases: std::collections::BTreeSet<i64> =
        v["kvs"].as_array().unwrap().iter().map(|kv| kv["lease"].as_i64().unwrap()).collect();
    let o = etcd.etcdctl(&["get", "-w", "json", "--", &format!("{PREFIX}/nodes/{node}")]);
    let n: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(leases, [n["kvs"][0]["lease"].as_i64().unwrap()].into(), "{v}");
}

#[test]
fn registration_keeps_working_when_the_etcd_leader_dies_and_comes_back_after_an_outage() {
    if skip() {
        return;
    }
    let root = test_dir("leader");
    let mut etcd = Cluster::start(&root.join("etcd"));
    let p = prefix();
    let node = format!("node-{p}-d");
    let section = cluster_section(&etcd, &node, "lease_ttl = \"10s\"");
    let agent = Agent::start_with(&root.join("agent"), &section);
    let a = task_container(&root, &format!("{p}-ld-1"), &format!("svc-{p}-1"));
    wait_registered(&mut etcd, &node, &a.id, &format!("svc-{p}-1"), &agent);

    let killed = etcd.kill_leader();
    etcd.wait_healthy(30);
    let b = task_container(&root, &format!("{p}-ld-2"), &format!("svc-{p}-2"));
    wait_registered(&mut etcd, &node, &b.id, &format!("svc-{p}-2"), &agent);
    let a_id = a.id.clone();
    drop(a);
    wait_gone(&mut etcd, &node, &a_id, &agent);
    // Longer than the lease TTL: the lease is kept alive through the surviving members.
    std::thread::sleep(Duration::from_secs(12));
    assert!(node_record(&mut etcd, &node).is_some(), "the node fell out of the directory\n{}", log_of(&agent));
    assert!(tasks_of(&mut etcd, &node).contains_key(&b.id));
    assert!(!log_of(&agent).contains("lost etcd"), "one member down is not etcd lost:\n{}", log_of(&agent));

    // A second member gone: no majority, no writes. The agent says so, and says when etcd is back.
    let others: Vec<usize> = (0..3).filter(|i| *i != killed).collect();
    etcd.kill(others[0]);
    let lost = eventually(30, || log_of(&agent).contains("lost etcd"));
    assert!(lost, "the agent did not notice:\n{}", log_of(&agent));
    etcd.restart(killed);
    etcd.restart(others[0]);
    etcd.wait_healthy(60);
    let back = eventually(30, || log_of(&agent).contains("etcd is back"));
    assert!(back, "{}", log_of(&agent));
    let c = task_container(&root, &format!("{p}-ld-3"), &format!("svc-{p}-3"));
    wait_registered(&mut etcd, &node, &c.id, &format!("svc-{p}-3"), &agent);
    wait_registered(&mut etcd, &node, &b.id, &format!("svc-{p}-2"), &agent);
    assert!(node_record(&mut etcd, &node).is_some());
}

/// ACL rules: the admin may do anything, and `carol` may exec when `carol` is true.
fn acl(carol: bool) -> String {
    let mut a = String::from("[[rule]]\nsubjects = [\"user:admin\"]\ntasks = [\"*\"]\nactions = [\"*\"]\n");
    if carol {
        a.push_str("\n[[rule]]\nsubjects = [\"user:carol\"]\ntasks = [\"*\"]\nactions = [\"exec\"]\n");
    }
    a
}

/// The exit code of `dcos task exec TASK true` with `token`.
fn exec_code(agent: &Agent, token: &str, task: &str) -> Option<i32> {
    run(agent.dcos_as(token).args(["task", "exec", task, "true"])).status.code()
}

#[test]
fn an_acl_file_that_changes_takes_effect_without_a_restart_and_a_broken_one_is_refused() {
    if skip() {
        return;
    }
    let root = test_dir("aclfile");
    let p = prefix();
    let c = task_container(&root, &format!("{p}-af-1"), &format!("web-{p}-af"));
    let agent = Agent::start_with_runtimes(&root.join("agent"), "", "", &acl(false));
    let carol = agent.token("carol", &[], "1h");
    let task = format!("web-{p}-af");
    assert_eq!(exec_code(&agent, &carol, &task), Some(FORBIDDEN));
    let acl_path = agent.dir.join("acl.toml");
    // Written elsewhere and renamed into place, as config managers do.
    let install = |text: &str| {
        let tmp = agent.dir.join("acl.toml.new");
        std::fs::write(&tmp, text).unwrap();
        std::fs::rename(&tmp, &acl_path).unwrap();
    };
    install(&acl(true));
    assert!(
        eventually(30, || exec_code(&agent, &carol, &task) == Some(0)),
        "the grant was not loaded\n{}",
        log_of(&agent)
    );
    // A broken version: refused, the grant stays, the log says why.
    install("[[rule]]\nsubjects = [\"user:carol\"]\ntasks = [\"*\"]\nactions = [\"fly\"]\n");
    assert!(eventually(30, || log_of(&agent).contains("ACL not reloaded")), "{}", log_of(&agent));
    assert_eq!(exec_code(&agent, &carol, &task), Some(0), "a broken ACL replaced the working one");
    // Edited in place, not parseable as TOML at all: same.
    std::fs::write(&acl_path, "[[rule]\nsubjects = ").unwrap();
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(exec_code(&agent, &carol, &task), Some(0));
    install(&acl(false));
    assert!(eventually(30, || exec_code(&agent, &carol, &task) == Some(FORBIDDEN)), "the revocation was not loaded");
    assert_eq!(exec_code(&agent, &agent.admin_token, &task), Some(0));
    drop(c);
}

#[test]
fn an_acl_in_etcd_takes_effect_without_a_restart_and_a_broken_one_is_refused() {
    if skip() {
        return;
    }
    let root = test_dir("acletcd");
    let mut etcd = Cluster::start(&root.join("etcd"));
    let p = prefix();
    let node = format!("node-{p}-e");
    let c = task_container(&root, &format!("{p}-ae-1"), &format!("web-{p}-ae"));
    let task = format!("web-{p}-ae");
    // The operator's ACL-signing key: only documents it signed are put in force.
    let key = root.join("acl-signing.key");
    let pubkey = root.join("acl-signing.pub");
    assert!(run(Command::new("openssl").args(["genpkey", "-algorithm", "ed25519", "-out"]).arg(&key)).status.success());
    assert!(run(Command::new("openssl").arg("pkey").arg("-in").arg(&key).arg("-pubout").arg("-out").arg(&pubkey))
        .status
        .success());
    let pem = std::fs::read(&key).unwrap();
    let issued = std::cell::Cell::new(0);
    let signed = |text: &str| {
        issued.set(issued.get() + 1);
        dcos_exec_cluster::signed::sign(&pem, text, issued.get()).unwrap()
    };
    // The key is absent: every request is refused, the admin's too.
    let section = cluster_section(&etcd, &node, &format!("acl_key = {:?}", pubkey.display().to_string()));
    let agent = Agent::start_with(&root.join("agent"), &format!("acl = \"etcd\"\n{section}"));
    let carol = agent.token("carol", &[], "1h");
    assert_eq!(exec_code(&agent, &agent.admin_token, &task), Some(FORBIDDEN), "{}", log_of(&agent));
    // Its certificate (from a plain `init`) names no node: it says gateways will not relay to it.
    assert!(log_of(&agent).contains("gateways will not relay sessions to this agent"), "{}", log_of(&agent));
    etcd.put(&format!("{PREFIX}/acl"), &signed(&acl(false)));
    assert!(eventually(30, || exec_code(&agent, &agent.admin_token, &task) == Some(0)), "{}", log_of(&agent));
    assert_eq!(exec_code(&agent, &carol, &task), Some(FORBIDDEN));
    etcd.put(&format!("{PREFIX}/acl"), &signed(&acl(true)));
    assert!(eventually(30, || exec_code(&agent, &carol, &task) == Some(0)), "{}", log_of(&agent));
    // Broken: refused, the grant stays.
    etcd.put(
        &format!("{PREFIX}/acl"),
        &signed("[[rule]]\nsubjects = [\"carol\"]\ntasks = [\"*\"]\nactions = [\"exec\"]\n"),
    );
    assert!(eventually(30, || log_of(&agent).contains("ACL not reloaded")), "{}", log_of(&agent));
    assert_eq!(exec_code(&agent, &carol, &task), Some(0), "a broken ACL replaced the working one");
    etcd.put(&format!("{PREFIX}/acl"), &signed(&acl(false)));
    assert!(eventually(30, || exec_code(&agent, &carol, &task) == Some(FORBIDDEN)));
    // Deleted: nothing is granted any more.
    etcd.del(&format!("{PREFIX}/acl"));
    assert!(eventually(30, || exec_code(&agent, &agent.admin_token, &task) == Some(FORBIDDEN)), "{}", log_of(&agent));
    // Listing is still answered, with nothing in it.
    let o = run(agent.dcos().args(["task", "list", "--json"]));
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(serde_json::from_slice::<Value>(&o.stdout).unwrap(), serde_json::json!([]));
    drop(c);
}

/// The directory a gateway holds, in this process, over the test cluster.
fn directory(etcd: &Cluster, rt: &tokio::runtime::Runtime, max_stale: Duration) -> std::sync::Arc<Directory> {
    let cfg: EtcdConfig = toml::from_str(&etcd.config_toml()).unwrap();
    let _guard = rt.enter();
    Directory::spawn(cfg, PREFIX, max_stale)
}

fn snapshot_has(d: &Directory, node: &str, container: &str, state: &str) -> bool {
    d.snapshot().is_ok_and(|s| {
        s.nodes.contains_key(node)
            && s.tasks.iter().any(|t| t.node == node && t.task.container == container && t.task.state == state)
    })
}

#[test]
fn the_directory_follows_agents_and_serves_a_stale_snapshot_for_max_stale_then_refuses() {
    if skip() {
        return;
    }
    let root = test_dir("dir");
    let mut etcd = Cluster::start(&root.join("etcd"));
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let p = prefix();
    let (n1, n2) = (format!("node-{p}-f1"), format!("node-{p}-f2"));
    let a1 = Agent::start_with(&root.join("agent1"), &cluster_section(&etcd, &n1, "lease_ttl = \"3s\""));
    let a2 = Agent::start_with(&root.join("agent2"), &cluster_section(&etcd, &n2, "lease_ttl = \"3s\""));
    let c = task_container(&root, &format!("{p}-dir-1"), &format!("web-{p}-dir"));
    let d = directory(&etcd, &rt, Duration::from_secs(8));
    assert!(rt.block_on(d.ready(Duration::from_secs(20))).is_ok());
    // Both agents list the same runc root: the task shows up once per node.
    assert!(eventually(30, || snapshot_has(&d, &n1, &c.id, "running") && snapshot_has(&d, &n2, &c.id, "running")));
    let s = d.snapshot().unwrap();
    assert_eq!(s.stale_for, None);
    assert_eq!(s.nodes[&n1].url, a1.url);
    assert_eq!(s.nodes[&n2].url, a2.url);
    assert!(s.revision > 0);
    let t = s.tasks.iter().find(|t| t.node == n1 && t.task.container == c.id).unwrap();
    assert_eq!(t.task.id, format!("web-{p}-dir"));

    // A container that goes, goes from the snapshot; an agent that dies, with its lease.
    let id = c.id.clone();
    drop(c);
    assert!(eventually(30, || d.snapshot().is_ok_and(|s| !s.tasks.iter().any(|t| t.task.container == id))));
    drop(a2);
    assert!(eventually(30, || d.snapshot().is_ok_and(|s| !s.nodes.contains_key(&n2) && s.nodes.contains_key(&n1))));

    // The etcd leader dies: the directory stays current through the other members.
    let c2 = task_container(&root, &format!("{p}-dir-2"), &format!("web-{p}-dir2"));
    etcd.kill_leader();
    assert!(eventually(30, || snapshot_has(&d, &n1, &c2.id, "running")), "{:?}", d.snapshot());
    // Past SILENT: a watch on the dead member has been given up by now. Replacing it (a retry pause, a new
    // `get`) can show as briefly stale on a loaded machine; what must hold is that it becomes current again
    // while the leader stays dead, through the surviving members.
    std::thread::sleep(Duration::from_secs(4));
    let current = eventually(20, || d.snapshot().is_ok_and(|s| s.stale_for.is_none()));
    assert!(current, "not current through the surviving members: {:?}", d.snapshot());

    // Every member gone: the last snapshot is served, saying how stale, then refused after max_stale.
    for i in 0..3 {
        etcd.kill(i);
    }
    let stale = eventually(30, || d.snapshot().is_ok_and(|s| s.stale_for.is_some() && s.nodes.contains_key(&n1)));
    assert!(stale, "{:?}", d.snapshot());
    let refused = eventually(30, || matches!(d.snapshot(), Err(DirectoryError::Unavailable { .. })));
    assert!(refused, "{:?}", d.snapshot());
    let Err(DirectoryError::Unavailable { stale_for, reason }) = d.snapshot() else { unreachable!() };
    assert!(stale_for.is_some_and(|s| s > Duration::from_secs(8)), "{stale_for:?}");
    assert!(reason.contains("max_stale"), "{reason}");

    // etcd back: current again, with what changed meanwhile.
    let c2_id = c2.id.clone();
    drop(c2);
    for i in 0..3 {
        etcd.restart(i);
    }
    etcd.wait_healthy(60);
    let back = eventually(60, || {
        d.snapshot().is_ok_and(|s| s.stale_for.is_none() && !s.tasks.iter().any(|t| t.task.container == c2_id))
    });
    assert!(back, "{:?}\nagent log:\n{}", d.snapshot(), log_of(&a1));
    assert!(d.snapshot().unwrap().nodes.contains_key(&n1), "{}", log_of(&a1));
}

#[test]
fn the_directory_reads_records_written_by_hand_and_ignores_foreign_and_broken_ones() {
    if skip() {
        return;
    }
    let root = test_dir("dirhand");
    let mut etcd = Cluster::start(&root.join("etcd"));
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
    let d = directory(&etcd, &rt, Duration::from_secs(10));
    assert!(rt.block_on(d.ready(Duration::from_secs(20))).is_ok());
    let node = r#"{"name":"h1","url":"https://10.9.9.9:7443","labels":{},"version":"x","started_at":1}"#;
    etcd.put(&format!("{PREFIX}/nodes/h1"), node);
    etcd.put(
        &format!("{PREFIX}/tasks/h1/c1"),
        r#"{"id":"t1","container":"c1","runtime":"runc","state":"running","pid":1,"age_secs":0,"node":"h1"}"#,
    );
    etcd.put(&format!("{PREFIX}/tasks/h1/c2"), "not json");
    etcd.put("/elsewhere/nodes/h9", node);
    assert!(
        eventually(30, || d.snapshot().is_ok_and(|s| s.tasks.len() == 1 && s.nodes.len() == 1)),
        "{:?}",
        d.snapshot()
    );
    // A compaction up to the watch's revision loses nothing: what follows is still seen.
    let rev = d.snapshot().unwrap().revision;
    let o = etcd.etcdctl(&["compact", &rev.to_string()]);
    assert!(o.status.success(), "{}", stderr(&o));
    etcd.del(&format!("{PREFIX}/tasks/h1/c1"));
    assert!(
        eventually(30, || d.snapshot().is_ok_and(|s| s.tasks.is_empty() && s.revision > rev)),
        "{:?}",
        d.snapshot()
    );

    // The member the directory watches hangs (its connections stay open, nothing answers): the silent watch
    // is replaced through another member, and the changes made meanwhile are there.
    let first = d.endpoint().expect("the member the directory reads");
    let hung = etcd.members.iter().position(|m| m.client_url == first).expect("one of the members");
    etcd.freeze(hung, true);
    let others: Vec<String> =
        etcd.members.iter().filter(|m| m.client_url != first).map(|m| m.client_url.clone()).collect();
    let others = others.join(",");
    let c3 = r#"{"id":"t3","container":"c3","runtime":"runc","state":"running","pid":1,"age_secs":0,"node":"h1"}"#;
    // When the hung member was the leader, a write waits for the election: try again until it goes through.
    let key = format!("{PREFIX}/tasks/h1/c3");
    let written = eventually(30, || etcd.etcdctl_at(&others, &["put", "--", &key, c3]).status.success());
    assert!(written, "no write through the other members:\n{}", etcd.logs());
    let seen = eventually(30, || d.snapshot().is_ok_and(|s| s.tasks.iter().any(|t| t.task.container == "c3")));
    etcd.freeze(hung, false);
    assert!(seen, "the directory stayed on the hung member {first}: {:?}", d.snapshot());
    assert_ne!(d.endpoint().as_deref(), Some(first.as_str()), "it reads from another member now");
    etcd.wait_healthy(30);

    // A member that lost the majority still answers, but must not pass for current: the directory says it
    // is stale until the majority is back.
    assert!(eventually(30, || d.snapshot().is_ok_and(|s| s.stale_for.is_none())));
    let reading = d.endpoint().expect("the member the directory reads");
    let others: Vec<usize> = (0..3).filter(|i| etcd.members[*i].client_url != reading).collect();
    for &i in &others {
        etcd.kill(i);
    }
    let stale = eventually(30, || d.snapshot().is_ok_and(|s| s.stale_for.is_some()));
    assert!(stale, "a member without a leader served as current: {:?}", d.snapshot());
    for &i in &others {
        etcd.restart(i);
    }
    etcd.wait_healthy(60);
    assert!(eventually(30, || d.snapshot().is_ok_and(|s| s.stale_for.is_none())), "{:?}", d.snapshot());
}

#[test]
fn an_agent_whose_etcd_is_down_still_serves_and_registers_once_etcd_is_up() {
    if skip() {
        return;
    }
    let root = test_dir("etcddown");
    let mut etcd = Cluster::start(&root.join("etcd"));
    for i in 0..3 {
        etcd.stop(i);
    }
    let p = prefix();
    let node = format!("node-{p}-i");
    let c = task_container(&root, &format!("{p}-ed-1"), &format!("web-{p}-ed"));
    let agent = Agent::start_with(&root.join("agent"), &cluster_section(&etcd, &node, ""));
    // The cluster is the agent's second job: exec works without etcd.
    let o = agent.sh(&format!("web-{p}-ed"), "echo alone");
    assert_eq!(support::stdout(&o), "alone\n", "{}", stderr(&o));
    assert!(eventually(30, || log_of(&agent).contains("lost etcd")), "{}", log_of(&agent));
    for i in 0..3 {
        etcd.restart(i);
    }
    etcd.wait_healthy(60);
    wait_registered(&mut etcd, &node, &c.id, &format!("web-{p}-ed"), &agent);
    assert!(log_of(&agent).contains("etcd is back"), "{}", log_of(&agent));
}
