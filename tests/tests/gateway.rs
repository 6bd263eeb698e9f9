//! The gateway against real components: a three-member etcd cluster (TLS, client certificates), two agents on
//! loopback with their own runc state roots and real runc containers, registered in etcd, and a gateway in
//! front of them, set up with `dcos-exec-agent init cluster` and driven through the real `dcos` binary. Lists
//! across nodes, exec, `-i`, `-t` and `--debug-image` relayed to the owning agent, ambiguity across nodes,
//! refusals at the gateway and at the agent (defence in depth), forged forwarding headers and foreign client
//! certificates at an agent, and the failures: a dead agent, a task replaced between lookup and connect, etcd
//! gone (stale snapshot, then `cluster_unavailable`).

#[path = "support/registry.rs"]
mod registry;
mod support;

use dcos_exec_proto::exit;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};
use support::etcd::Cluster as Etcd;
use support::*;

const ANNOTATION: &str = "io.dcos.task-id";

/// The agents' ACL: the shared test ACL, and nothing for `eve`.
fn agent_acl() -> String {
    let admin_debug =
        "[[rule]]\nsubjects = [\"user:admin\"]\ntasks = [\"*\"]\nactions = [\"debug\"]\nimages = [\"**\"]\n";
    format!("{}\n{admin_debug}", support::ACL)
}

/// The gateway's ACL grants `eve` everything: the agents must still refuse her.
fn gateway_acl() -> String {
    format!(
        "{}\n[[rule]]\nsubjects = [\"user:eve\"]\ntasks = [\"**\"]\nactions = [\"*\"]\nimages = [\"**\"]\n",
        agent_acl()
    )
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn wait_port(port: u16, what: &str, log: &Path) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            Instant::now() < deadline,
            "{what} did not listen on {port}:\n{}",
            std::fs::read_to_string(log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Starts `bin run --config cfg`, logging to `log`; the process dies with the thread that started it.
fn spawn(bin_name: &str, cfg: &Path, log: &Path) -> Child {
    let mut cmd = Command::new(bin(bin_name));
    cmd.args(["run", "--config"])
        .arg(cfg)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log).unwrap())
        .env("DCOS_EXEC_LOG", "debug")
        .env("RUST_LOG", "info");
    // SAFETY: prctl in the child before exec.
    unsafe {
        std::os::unix::process::CommandExt::pre_exec(&mut cmd, || {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
    cmd.spawn().unwrap_or_else(|e| panic!("starting {bin_name}: {e}"))
}

/// A runc container under its own state root, deleted on drop.
struct Task {
    id: String,
    state_root: PathBuf,
}

impl Task {
    fn start(bundles: &Path, state_root: &Path, id: &str, task_id: &str) -> Task {
        let o = ContainerOpts { annotations: vec![(ANNOTATION.into(), task_id.into())], ..Default::default() };
        let bundle = prepare_bundle("runc", bundles, id, &o);
        let err_path = bundles.join(format!("{id}.runc-err"));
        let st = Command::new("runc")
            .arg("--root")
            .arg(state_root)
            .args(["run", "-d", "--bundle"])
            .arg(&bundle)
            .arg(id)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&err_path).unwrap())
            .status()
            .unwrap();
        assert!(st.success(), "runc run {id}: {}", std::fs::read_to_string(&err_path).unwrap_or_default());
        let t = Task { id: id.into(), state_root: state_root.into() };
        let (root, id) = (t.state_root.clone(), t.id.clone());
        // Statics are never dropped: the container goes at exit too.
        at_exit(move || {
            let _ = Command::new("runc").arg("--root").arg(&root).args(["delete", "-f", &id]).output();
        });
        t
    }

    fn delete(&self) {
        let _ = Command::new("runc").arg("--root").arg(&self.state_root).args(["delete", "-f", &self.id]).output();
    }
}

impl Drop for Task {
    fn drop(&mut self) {
        self.delete();
    }
}

/// One agent of the cluster.
struct Node {
    name: String,
    dir: PathBuf,
    port: u16,
    state_root: PathBuf,
    child: Child,
}

impl Node {
    fn audit(&self) -> Vec<serde_json::Value> {
        read_audit(&self.dir.join("audit.log"))
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill();
    }
}

fn read_audit(p: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(p).unwrap_or_default().lines().filter_map(|l| serde_json::from_str(l).ok()).collect()
}

/// etcd, two agents and a gateway, from `init cluster`.
struct Net {
    dir: PathBuf,
    etcd: Etcd,
    nodes: Vec<Node>,
    gateway: Child,
    gateway_port: u16,
    admin: String,
}

/// How a [`Net`] differs from the default.
struct NetOptions {
    max_stale: &'static str,
    lease_ttl: &'static str,
    max_unauthenticated: usize,
    /// Agents and gateway take the ACL from etcd (`acl = "etcd"`), which starts empty.
    acl_in_etcd: bool,
}

impl Default for NetOptions {
    fn default() -> Self {
        NetOptions { max_stale: "30s", lease_ttl: "10s", max_unauthenticated: 256, acl_in_etcd: false }
    }
}

/// `acl = "acl.toml"` of a generated config, or `acl = "etcd"`.
fn acl_line(text: String, in_etcd: bool) -> String {
    if in_etcd {
        text.replacen("\nacl = \"acl.toml\"\n", "\nacl = \"etcd\"\n", 1)
    } else {
        text
    }
}

/// Replaces the TOML table `header` (to the next table or the end) with `body`.
fn replace_table(text: &str, header: &str, body: &str) -> String {
    let start = text.find(&format!("\n{header}\n")).unwrap_or_else(|| panic!("{header} in {text}")) + 1;
    let rest = &text[start + header.len() + 1..];
    let end = rest.find("\n[").map_or(text.len(), |i| start + header.len() + 1 + i + 1);
    format!("{}{header}\n{body}\n{}", &text[..start], &text[end..])
}

impl Net {
    fn start(dir: &Path, o: &NetOptions) -> Net {
        let _ = std::fs::remove_dir_all(dir);
        std::fs::create_dir_all(dir).unwrap();
        let etcd = Etcd::start(&dir.join("etcd"));
        let gateway_port = free_port();
        let names = ["node-a", "node-b"];
        let ports: Vec<u16> = names.iter().map(|_| free_port()).collect();
        let setup = dir.join("cluster");
        let mut init = Command::new(bin("dcos-exec-agent"));
        init.args(["init", "cluster", "--dir"]).arg(&setup).args([
            "--gateway",
            "127.0.0.1",
            "--gateway-port",
            &gateway_port.to_string(),
        ]);
        for (n, p) in names.iter().zip(&ports) {
            init.args(["--agent", &format!("{n}=https://127.0.0.1:{p}")]);
        }
        for e in etcd.endpoints() {
            init.args(["--etcd", &e]);
        }
        let out = run(&mut init);
        assert!(out.status.success(), "init cluster: {}", stderr(&out));
        assert!(
            stdout(&out).contains(&format!("export DCOS_URL=https://127.0.0.1:{gateway_port}")),
            "{}",
            stdout(&out)
        );
        let token_key = setup.join("pki/token-signing.key");
        let mut nodes = Vec::new();
        for (name, port) in names.iter().zip(&ports) {
            let d = setup.join("agents").join(name);
            let state_root = dir.join(format!("runc-{name}"));
            std::fs::create_dir_all(&state_root).unwrap();
            let text = std::fs::read_to_string(d.join("agent.toml")).unwrap();
            let text = text
                .replace("listen = \"0.0.0.0:", "listen = \"127.0.0.1:")
                .replace("grace_period = \"5s\"", "grace_period = \"1s\"")
                .replacen(
                    "\n[runtimes]",
                    &format!(
                        "\ntask_id_annotation = \"{ANNOTATION}\"\ntoken_private_key = {:?}\n\n[runtimes]",
                        token_key.display().to_string()
                    ),
                    1,
                );
            let runtimes = format!(
                "runc_roots = [{:?}]\ncrun_roots = []\ndocker_sockets = []\ncontainerd_sockets = []",
                state_root.display().to_string()
            );
            let text = replace_table(&text, "[runtimes]", &runtimes);
            let text = text.replacen("\n[cluster]\n", &format!("\n[cluster]\nlease_ttl = \"{}\"\n", o.lease_ttl), 1);
            let text = replace_table(&text, "[cluster.etcd]", &etcd.config_toml());
            std::fs::write(d.join("agent.toml"), acl_line(text, o.acl_in_etcd)).unwrap();
            std::fs::write(d.join("acl.toml"), agent_acl()).unwrap();
            let child = spawn("dcos-exec-agent", &d.join("agent.toml"), &d.join("agent.log"));
            wait_port(*port, name, &d.join("agent.log"));
            nodes.push(Node { name: name.to_string(), dir: d, port: *port, state_root, child });
        }
        let g = setup.join("gateway");
        let text = std::fs::read_to_string(g.join("gateway.toml")).unwrap();
        let text = text.replace("listen = \"0.0.0.0:", "listen = \"127.0.0.1:").replace(
            "max_stale = \"30s\"",
            &format!(
                "max_stale = \"{}\"\nmax_unauthenticated = {}\nlog_format = \"json\"",
                o.max_stale, o.max_unauthenticated
            ),
        );
        let text = replace_table(&text, "[etcd]", &etcd.config_toml());
        std::fs::write(g.join("gateway.toml"), acl_line(text, o.acl_in_etcd)).unwrap();
        std::fs::write(g.join("acl.toml"), gateway_acl()).unwrap();
        let gateway = spawn("dcos-exec-gateway", &g.join("gateway.toml"), &g.join("gateway.log"));
        wait_port(gateway_port, "gateway", &g.join("gateway.log"));
        let admin = std::fs::read_to_string(setup.join("admin.token")).unwrap().trim().to_string();
        Net { dir: dir.into(), etcd, nodes, gateway, gateway_port, admin }
    }

    fn setup(&self) -> PathBuf {
        self.dir.join("cluster")
    }

    fn node(&self, name: &str) -> &Node {
        self.nodes.iter().find(|n| n.name == name).unwrap()
    }

    fn token(&self, user: &str) -> String {
        let cfg = self.nodes[0].dir.join("agent.toml");
        let o = run(Command::new(bin("dcos-exec-agent")).args(["token", "--config"]).arg(cfg).args(["--user", user]));
        assert!(o.status.success(), "token: {}", stderr(&o));
        stdout(&o).trim().to_string()
    }

    fn dcos_as(&self, token: &str) -> Command {
        let mut c = Command::new(bin("dcos"));
        c.env_clear()
            .env("PATH", "/usr/bin:/bin")
            .env("HOME", &self.dir)
            .env("DCOS_URL", format!("https://127.0.0.1:{}", self.gateway_port))
            .env("DCOS_SSL_VERIFY", self.setup().join("pki/cluster-ca.crt"))
            .env("DCOS_ACS_TOKEN", token)
            .stdin(Stdio::null());
        c
    }

    fn dcos(&self) -> Command {
        self.dcos_as(&self.admin)
    }

    fn gateway_audit(&self) -> Vec<serde_json::Value> {
        read_audit(&self.setup().join("gateway/audit.log"))
    }

    fn gateway_log(&self) -> String {
        std::fs::read_to_string(self.setup().join("gateway/gateway.log")).unwrap_or_default()
    }

    /// The task list through the gateway, as (node, task id, container) rows.
    fn listed(&self) -> Vec<(String, String, String)> {
        let o = run(self.dcos().args(["task", "list", "--json"]));
        if !o.status.success() {
            return Vec::new();
        }
        let rows: Vec<serde_json::Value> = serde_json::from_slice(&o.stdout).unwrap_or_default();
        rows.iter()
            .map(|r| {
                let s = |k: &str| r[k].as_str().unwrap_or_default().to_string();
                (s("node"), s("id"), s("container"))
            })
            .collect()
    }

    /// Waits until the gateway lists `container` (on `node`) as `task`.
    fn wait_listed(&self, node: &str, task: &str, container: &str) {
        let want = (node.to_string(), task.to_string(), container.to_string());
        assert!(
            eventually(30, || self.listed().contains(&want)),
            "{want:?} never listed by the gateway: {:?}\n{}",
            self.listed(),
            self.gateway_log()
        );
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        let _ = self.gateway.kill();
        let _ = self.gateway.wait();
    }
}

/// The shared cluster of most tests, with its tasks: `web-P` on node-a, `db-P` on node-b, and `amb-P-1` and
/// `amb-P-2` (a prefix that is ambiguous across the nodes).
struct World {
    net: Net,
    web: String,
    db: String,
    amb: String,
    _tasks: Vec<Task>,
}

fn world() -> &'static World {
    static W: OnceLock<World> = OnceLock::new();
    W.get_or_init(|| {
        let (tx, rx) = std::sync::mpsc::channel();
        // From a thread that lives as long as the process: the agents' and gateway's parent-death signal.
        std::thread::spawn(move || {
            let p = prefix();
            let dir = std::env::temp_dir().join(format!("{p}-gw"));
            let net = Net::start(&dir, &NetOptions::default());
            let bundles = dir.join("bundles");
            std::fs::create_dir_all(&bundles).unwrap();
            let (web, db, amb) = (format!("web-{p}"), format!("db-{p}"), format!("amb-{p}"));
            let a = net.node("node-a").state_root.clone();
            let b = net.node("node-b").state_root.clone();
            let tasks = vec![
                Task::start(&bundles, &a, &format!("{p}-gw-web"), &web),
                Task::start(&bundles, &b, &format!("{p}-gw-db"), &db),
                Task::start(&bundles, &a, &format!("{p}-gw-amb1"), &format!("{amb}-1")),
                Task::start(&bundles, &b, &format!("{p}-gw-amb2"), &format!("{amb}-2")),
            ];
            net.wait_listed("node-a", &web, &format!("{p}-gw-web"));
            net.wait_listed("node-b", &db, &format!("{p}-gw-db"));
            net.wait_listed("node-a", &format!("{amb}-1"), &format!("{p}-gw-amb1"));
            net.wait_listed("node-b", &format!("{amb}-2"), &format!("{p}-gw-amb2"));
            tx.send(World { net, web, db, amb, _tasks: tasks }).unwrap();
            loop {
                std::thread::park();
            }
        });
        rx.recv().expect("cluster set-up failed (see the panic above)")
    })
}

fn code(o: &Output) -> i32 {
    o.status.code().unwrap_or(-1)
}

#[test]
fn list_shows_every_nodes_tasks_with_their_node_and_filters_by_node() {
    if skip() {
        return;
    }
    let w = world();
    let o = run(w.net.dcos().args(["task", "list"]));
    assert!(o.status.success(), "{}", stderr(&o));
    let out = stdout(&o);
    let head = out.lines().next().unwrap();
    assert!(head.starts_with("NODE    ID"), "{out}");
    let row = |task: &str| out.lines().find(|l| l.contains(task)).unwrap_or_else(|| panic!("{task} in {out}"));
    assert!(row(&w.web).starts_with("node-a  "), "{out}");
    assert!(row(&w.db).starts_with("node-b  "), "{out}");
    // No row: the header still has the NODE column of a gateway's list.
    let o = run(w.net.dcos().args(["task", "list", "no-task-has-this-in-its-id"]));
    assert_eq!(
        stdout(&o).lines().collect::<Vec<_>>(),
        ["NODE  ID  NAME  CONTAINER  RUNTIME  STATE  PID  AGE"],
        "{}",
        stderr(&o)
    );
    let o = run(w.net.dcos().args(["task", "list", "--node", "node-b", "-q"]));
    let ids: Vec<String> = stdout(&o).lines().map(String::from).collect();
    assert!(ids.contains(&w.db) && !ids.contains(&w.web), "{ids:?}");
    // alice may list web-* only: the gateway filters with the ACL.
    let o = run(w.net.dcos_as(&w.net.token("alice")).args(["task", "list", "-q"]));
    let ids: Vec<String> = stdout(&o).lines().map(String::from).collect();
    assert_eq!(ids, std::slice::from_ref(&w.web), "{}", stderr(&o));
    // dcos node list: both nodes, their URLs and task counts.
    let o = run(w.net.dcos().args(["node", "list"]));
    assert!(o.status.success(), "{}", stderr(&o));
    let out = stdout(&o);
    assert!(out.starts_with("NAME    URL"), "{out}");
    for n in &w.net.nodes {
        let line = out.lines().find(|l| l.starts_with(&n.name)).unwrap_or_else(|| panic!("{} in {out}", n.name));
        assert!(line.contains(&format!("https://127.0.0.1:{}", n.port)) && line.contains("ready"), "{out}");
    }
    let o = run(w.net.dcos().args(["node", "list", "--json"]));
    let nodes: Vec<serde_json::Value> = serde_json::from_slice(&o.stdout).unwrap();
    let a = nodes.iter().find(|n| n["name"] == "node-a").unwrap();
    assert!(a["tasks"].as_u64().unwrap() >= 2, "{a}");
}

#[test]
fn exec_through_the_gateway_reaches_the_owning_node_with_exact_output_and_exit_codes() {
    if skip() {
        return;
    }
    let w = world();
    for (task, node) in [(&w.web, "node-a"), (&w.db, "node-b")] {
        let o = run(w.net.dcos().args(["task", "exec", task, "sh", "-c", "echo out; echo err >&2; exit 3"]));
        assert_eq!((stdout(&o).as_str(), stderr(&o).as_str(), code(&o)), ("out\n", "err\n", 3), "{task}");
        // The session ran on the owning node: its audit has it, with the user's address and the gateway's.
        let n = w.net.node(node);
        let rec = n
            .audit()
            .into_iter()
            .rev()
            .find(|r| r["event"] == "session_end" && r["task"] == task.as_str())
            .unwrap_or_else(|| panic!("no session of {task} in {node}'s audit"));
        assert_eq!(rec["status"]["code"], 3);
        assert!(rec["via"].as_str().is_some_and(|v| v.starts_with("127.0.0.1:")), "{rec}");
        assert!(rec["source"].as_str().is_some_and(|v| v.starts_with("127.0.0.1:")), "{rec}");
        assert_ne!(rec["source"], rec["via"]);
    }
    // The gateway writes relay_end when both legs have closed, which may be after the CLI exited.
    let relays = || -> Vec<_> {
        w.net.gateway_audit().into_iter().filter(|r| r["event"] == "relay_end" && r["task"] == w.db.as_str()).collect()
    };
    let ended = eventually(30, || relays().iter().any(|r| r["node"] == "node-b" && r["bytes_out"].as_u64() > Some(0)));
    assert!(ended, "{:?}", relays());
    // -i: stdin through both hops.
    let o =
        run_with_input(w.net.dcos().args(["task", "exec", "-i", &w.web, "sh", "-c", "tr a-z A-Z; exit 5"]), b"hello\n");
    assert_eq!((stdout(&o).as_str(), code(&o)), ("HELLO\n", 5), "{}", stderr(&o));
    // A command that does not exist: the agent's own code, passed back.
    let o = run(w.net.dcos().args(["task", "exec", &w.db, "no-such-command"]));
    assert_eq!(code(&o), 127, "{}", stderr(&o));
    // A large output arrives whole.
    let o = run(w.net.dcos().args(["task", "exec", &w.db, "sh", "-c", "head -c 3000000 /dev/zero | tr '\\0' x"]));
    assert_eq!((o.stdout.len(), code(&o)), (3_000_000, 0), "{}", stderr(&o));
}

#[test]
fn tty_sessions_work_through_the_gateway() {
    if skip() {
        return;
    }
    let w = world();
    let mut cmd = w.net.dcos();
    cmd.args(["task", "exec", "-t", "-i", &w.web, "sh", "-c", "stty size; tty; exit 4"]);
    let (mut master, mut child, _slave) = on_pty(&mut cmd, 33, 101);
    let out = read_until(&mut master, "/dev/pts/", 30);
    let status = child.wait().unwrap();
    assert!(out.contains("33 101"), "{out}");
    assert_eq!(status.code(), Some(4), "{out}");
}

#[test]
fn debug_image_sessions_work_through_the_gateway() {
    if skip() {
        return;
    }
    let w = world();
    let layout = w.net.dir.join(format!("layout-{}", std::process::id()));
    std::fs::create_dir_all(&layout).unwrap();
    let desc = registry::put_image(
        &layout,
        "amd64",
        &[registry::busybox_layer(), registry::tar_layer(&[registry::Entry::file("etc/motd", 0o644, b"tools\n")])],
    );
    registry::tag_layout(&layout, "v1", &desc);
    let image = format!("oci:{}:v1", layout.display());
    let o = run(w.net.dcos().args([
        "task",
        "exec",
        "--debug-image",
        &image,
        &w.db,
        "sh",
        "-c",
        "cat /etc/motd; test -d /target/proc && echo target; exit 6",
    ]));
    assert_eq!((stdout(&o).as_str(), code(&o)), ("tools\ntarget\n", 6), "{}", stderr(&o));
}

#[test]
fn a_name_ambiguous_across_nodes_names_every_candidate_and_its_node() {
    if skip() {
        return;
    }
    let w = world();
    let o = run(w.net.dcos().args(["task", "exec", &w.amb, "true"]));
    assert_eq!(code(&o), exit::AMBIGUOUS, "{}", stderr(&o));
    let err = stderr(&o);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains(&format!("{}-1", w.amb)) && err.contains("on node-a"), "{err}");
    assert!(err.contains(&format!("{}-2", w.amb)) && err.contains("on node-b"), "{err}");
    // A unique name of either works.
    let o = run(w.net.dcos().args(["task", "exec", &format!("{}-2", w.amb), "true"]));
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let o = run(w.net.dcos().args(["task", "exec", "no-such-task-anywhere", "true"]));
    assert_eq!(code(&o), exit::TASK_NOT_FOUND, "{}", stderr(&o));
}

#[test]
fn refusals_happen_at_the_gateway_and_again_at_the_agent() {
    if skip() {
        return;
    }
    let w = world();
    // mallory is denied by the gateway: nothing reaches the agent.
    let o = run(w.net.dcos_as(&w.net.token("mallory")).args(["task", "exec", &w.db, "true"]));
    assert_eq!(code(&o), exit::FORBIDDEN, "{}", stderr(&o));
    let denied = |r: &serde_json::Value, user: &str| r["event"] == "denied" && r["user"] == user;
    assert!(w.net.gateway_audit().iter().any(|r| denied(r, "mallory")), "gateway audit");
    assert!(!w.net.node("node-b").audit().iter().any(|r| denied(r, "mallory")), "mallory reached the agent");
    // alice may exec web-* but not a tty: refused at the gateway too.
    let o = run(w.net.dcos_as(&w.net.token("alice")).args(["task", "exec", &w.db, "true"]));
    assert_eq!(code(&o), exit::FORBIDDEN, "{}", stderr(&o));
    // eve: the gateway's ACL grants her everything, the agents' ACL nothing. The agent refuses: a gateway
    // cannot widen anyone's rights.
    let o = run(w.net.dcos_as(&w.net.token("eve")).args(["task", "exec", &w.db, "sh", "-c", "echo ran"]));
    assert_eq!((code(&o), stdout(&o).as_str()), (exit::FORBIDDEN, ""), "{}", stderr(&o));
    assert!(stderr(&o).contains("eve"), "{}", stderr(&o));
    let rec = w.net.node("node-b").audit().into_iter().rev().find(|r| denied(r, "eve")).expect("the agent's refusal");
    assert!(rec["via"].as_str().is_some_and(|v| v.starts_with("127.0.0.1:")), "{rec}");
    assert_ne!(rec["source"], rec["via"], "{rec}");
    // A bad token: refused at the gateway.
    let o = run(w.net.dcos_as("not-a-token").args(["task", "exec", &w.db, "true"]));
    assert_eq!(code(&o), exit::UNAUTHENTICATED, "{}", stderr(&o));
}

#[test]
fn the_gateway_logs_refusals_and_relays_as_json_lines_without_tokens() {
    if skip() {
        return;
    }
    let w = world();
    let mallory = w.net.token("mallory");
    let o = run(w.net.dcos_as(&mallory).args(["task", "exec", &w.db, "true"]));
    assert_eq!(code(&o), exit::FORBIDDEN, "{}", stderr(&o));
    let o = run(w.net.dcos().args(["task", "exec", &w.db, "sh", "-c", "echo logged-relay"]));
    assert_eq!((code(&o), stdout(&o).as_str()), (0, "logged-relay\n"), "{}", stderr(&o));
    let lines = || -> Vec<serde_json::Value> {
        let log = w.net.gateway_log();
        // Every line is one JSON object (log_format = "json"), and no token is in any of them.
        assert!(!log.contains(&mallory) && !log.contains(&w.net.admin), "a token in the gateway's log");
        log.lines().map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}"))).collect()
    };
    let refused = lines().into_iter().find(|l| l["message"] == "refused" && l["user"] == "mallory");
    let refused = refused.expect("no `refused` line for mallory");
    assert_eq!((refused["code"].as_str(), refused["level"].as_str()), (Some("forbidden"), Some("INFO")), "{refused}");
    assert!(refused["source"].as_str().is_some_and(|s| s.starts_with("127.0.0.1:")), "{refused}");
    // The relay's end is logged once the session is over, with the bytes it carried back.
    let ended = eventually(30, || {
        lines()
            .iter()
            .any(|l| l["message"] == "relay end" && l["task"] == w.db.as_str() && l["bytes_out"].as_u64() > Some(0))
    });
    assert!(ended, "no `relay end` line for {}:\n{}", w.db, w.net.gateway_log());
    let start = lines().into_iter().find(|l| l["message"] == "relay start" && l["task"] == w.db.as_str());
    let start = start.expect("no `relay start` line");
    assert_eq!((start["user"].as_str(), start["node"].as_str()), (Some("admin"), Some("node-b")), "{start}");
}

/// `GET path` on the gateway with `token` (or none): (HTTP status, body).
fn gateway_get(net: &Net, path: &str, token: Option<&str>) -> (String, String) {
    let mut c = Command::new("curl");
    c.args(["-sS", "--max-time", "20", "-o", "-", "-w", "\n%{http_code}", "--cacert"])
        .arg(net.setup().join("pki/cluster-ca.crt"));
    if let Some(t) = token {
        c.args(["-H", &format!("Authorization: Bearer {t}")]);
    }
    let out = stdout(&run(c.arg(format!("https://127.0.0.1:{}{path}", net.gateway_port))));
    let (body, status) = out.rsplit_once('\n').unwrap_or(("", &out));
    (status.to_string(), body.to_string())
}

/// The value of the sample `name` (with its labels, as written) on a metrics page; 0 when absent.
fn sample(page: &str, name: &str) -> f64 {
    page.lines().find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok()).unwrap_or(0.0)
}

#[test]
fn the_gateway_serves_its_metrics_to_callers_granted_metrics() {
    if skip() {
        return;
    }
    let w = world();
    let scrape = || {
        let (status, page) = gateway_get(&w.net, "/metrics", Some(&w.net.admin));
        assert_eq!(status, "200", "{page}");
        page
    };
    let before = scrape();
    assert!(before.contains(r#"dcos_exec_build_info{component="gateway""#), "{before}");
    assert!(!before.contains("image_") && !before.contains("session_start"), "agent-only metrics: {before}");
    // Other tests relay sessions at the same time: counters only grow, by at least what this test did.
    let o = run(w.net.dcos().args(["task", "exec", &w.db, "sh", "-c", "head -c 200000 /dev/zero"]));
    assert_eq!((code(&o), o.stdout.len()), (0, 200_000), "{}", stderr(&o));
    let refused = |p: &str| sample(p, r#"dcos_exec_denials_total{code="forbidden"}"#);
    let (status, _) = gateway_get(&w.net, "/metrics", Some(&w.net.token("mallory")));
    assert_eq!(status, "403");
    assert_eq!(gateway_get(&w.net, "/metrics", None).0, "401", "metrics without a token");
    // The relay's byte count is added when the session's relay ends, just after the client saw its exit.
    let mut after = String::new();
    let counted = eventually(30, || {
        after = scrape();
        sample(&after, r#"dcos_exec_relayed_bytes_total{direction="to_user"}"#)
            >= sample(&before, r#"dcos_exec_relayed_bytes_total{direction="to_user"}"#) + 200_000.0
    });
    assert!(counted, "200000 bytes relayed are not counted:\n{before}\n{after}");
    let relayed = r#"dcos_exec_relays_total{result="relayed"}"#;
    assert!(sample(&after, relayed) >= sample(&before, relayed) + 1.0, "{after}");
    assert!(refused(&after) >= refused(&before) + 1.0, "mallory's refusal is not counted: {after}");
    // No user or task name on any metric.
    assert!(!after.contains("mallory") && !after.contains(&w.db) && !after.contains("admin"), "{after}");
}

/// `curl` against an agent directly, with `args` (headers, client certificate); (HTTP status, body).
fn curl(net: &Net, node: &Node, path: &str, args: &[&str]) -> (String, String, i32) {
    let o = run(Command::new("curl")
        .args(["-sS", "--max-time", "20", "-o", "-", "-w", "\n%{http_code}", "--cacert"])
        .arg(net.setup().join("pki/cluster-ca.crt"))
        .args(args)
        .arg(format!("https://127.0.0.1:{}{path}", node.port)));
    let out = stdout(&o);
    let (body, status) = out.rsplit_once('\n').unwrap_or(("", &out));
    (status.to_string(), body.to_string(), code(&o))
}

#[test]
fn forged_forwarding_headers_and_foreign_client_certificates_are_refused_by_agents() {
    if skip() {
        return;
    }
    let w = world();
    let n = w.net.node("node-b");
    let bearer = format!("authorization: Bearer {}", w.net.admin);
    let request = {
        use base64::Engine;
        let json = br#"{"command":["sh","-c","echo forged"]}"#;
        format!("x-dcos-exec-request: {}", base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(json))
    };
    let exec_path = format!("/v1/tasks/{}/exec", w.db);
    let upgrade = [
        "-H",
        "connection: Upgrade",
        "-H",
        "upgrade: websocket",
        "-H",
        "sec-websocket-version: 13",
        "-H",
        "sec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==",
    ];
    // Control: a user straight to the agent, no forwarding headers: served.
    let (status, _, _) = curl(&w.net, n, "/v1/tasks", &["-H", &bearer]);
    assert_eq!(status, "200");
    // The attack: a user (no gateway certificate) who claims another address and picks a container.
    let forged = "x-dcos-exec-forwarded-for: 203.0.113.66:4444";
    let mut args = vec!["-H", bearer.as_str(), "-H", request.as_str(), "-H", forged];
    args.extend(upgrade);
    let (status, body, _) = curl(&w.net, n, &exec_path, &args);
    assert_eq!(status, "403", "{body}");
    assert!(body.contains("forbidden") && body.contains("gateway certificate"), "{body}");
    let (status, body, _) = curl(&w.net, n, "/v1/tasks", &["-H", &bearer, "-H", "x-dcos-exec-container: x"]);
    assert_eq!(status, "403", "{body}");
    let audit = n.audit();
    let rec = audit
        .iter()
        .rev()
        .find(|r| {
            r["event"] == "denied" && r["reason"].as_str().is_some_and(|s| s.contains("x-dcos-exec-forwarded-for"))
        })
        .expect("the forged request is audited");
    assert_ne!(rec["source"], "203.0.113.66:4444", "the forged address must not be taken: {rec}");
    assert!(rec.get("via").is_none(), "{rec}");
    assert!(!audit.iter().any(|r| r["source"] == "203.0.113.66:4444"), "a forged source reached the audit");
    // A client certificate of another CA (here: an etcd client certificate of the cluster CA, which is not
    // the gateway CA): the handshake fails.
    let etcd_client = w.net.setup().join("gateway/etcd-client");
    let cert = format!("{}.crt", etcd_client.display());
    let key = format!("{}.key", etcd_client.display());
    let mut args = vec!["--cert", cert.as_str(), "--key", key.as_str(), "-H", bearer.as_str(), "-H", forged];
    args.extend(["-H", request.as_str()]);
    let (status, _, curl_code) = curl(&w.net, n, &exec_path, &args);
    assert!(curl_code != 0 && status == "000", "status {status}, curl exit {curl_code}");
    // The gateway's own client certificate is honoured (the headers take effect): the forwarded address is
    // the one audited, and a container that is not there is refused as moved.
    let gw = w.net.setup().join("gateway/client");
    let cert = format!("{}.crt", gw.display());
    let key = format!("{}.key", gw.display());
    let moved = "x-dcos-exec-container: 0000-not-here";
    let mut args = vec!["--cert", cert.as_str(), "--key", key.as_str(), "-H", bearer.as_str(), "-H", forged];
    args.extend(["-H", request.as_str(), "-H", moved]);
    args.extend(upgrade);
    let (status, body, _) = curl(&w.net, n, &exec_path, &args);
    assert_eq!(status, "404", "{body}");
    assert!(body.contains("task_not_found") && body.contains("moved or ended"), "{body}");
    let rec = n.audit().into_iter().rev().find(|r| r["event"] == "denied" && r["code"] == "task_not_found").unwrap();
    assert_eq!(rec["source"], "203.0.113.66:4444", "{rec}");
    assert!(rec["via"].as_str().is_some_and(|v| v.starts_with("127.0.0.1:")), "{rec}");

    // Forwarding headers a user sends to the gateway are not passed on: the gateway writes its own, so the
    // agent audits the user's real address and execs into the container the gateway resolved.
    let marker = "echo-through-gateway-with-forged-headers";
    let request = {
        use base64::Engine;
        let json = format!(r#"{{"command":["sh","-c","echo {marker}"]}}"#);
        format!("x-dcos-exec-request: {}", base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(json))
    };
    let other = format!("x-dcos-exec-container: {}-gw-amb2", prefix());
    let mut args = vec!["-H", bearer.as_str(), "-H", request.as_str(), "-H", forged, "-H", other.as_str()];
    args.extend(upgrade);
    // curl cannot speak WebSocket: it returns when the session ends and the relay closes, or at --max-time,
    // which must leave the session time to reach the agent and run on a loaded machine.
    let _ = run(Command::new("curl")
        .args(["-sS", "--max-time", "20", "-o", "/dev/null", "--cacert"])
        .arg(w.net.setup().join("pki/cluster-ca.crt"))
        .args(&args)
        .arg(format!("https://127.0.0.1:{}{exec_path}", w.net.gateway_port)));
    let found = || {
        n.audit()
            .into_iter()
            .find(|r| r["event"] == "session_end" && r["command"][2].as_str().is_some_and(|c| c.contains(marker)))
    };
    assert!(eventually(30, || found().is_some()), "the session through the gateway did not run");
    let rec = found().unwrap();
    assert_eq!(rec["container"], format!("{}-gw-db", prefix()), "{rec}");
    assert!(rec["source"].as_str().is_some_and(|s| s.starts_with("127.0.0.1:")), "{rec}");
    assert!(rec["via"].as_str().is_some_and(|s| s.starts_with("127.0.0.1:")), "{rec}");
}

#[test]
fn failures_dead_agent_replaced_task_and_etcd_gone_each_have_their_error() {
    if skip() {
        return;
    }
    let p = prefix();
    let dir = std::env::temp_dir().join(format!("{p}-gw-fail"));
    let mut net = Net::start(
        &dir,
        &NetOptions { max_stale: "20s", lease_ttl: "60s", max_unauthenticated: 4, ..Default::default() },
    );
    let bundles = dir.join("bundles");
    std::fs::create_dir_all(&bundles).unwrap();
    let a = net.node("node-a").state_root.clone();
    let b = net.node("node-b").state_root.clone();
    let (moving, lost) = (format!("mv-{p}"), format!("lost-{p}"));
    let first = Task::start(&bundles, &a, &format!("{p}-mv1"), &moving);
    let _lost = Task::start(&bundles, &b, &format!("{p}-lost"), &lost);
    net.wait_listed("node-a", &moving, &format!("{p}-mv1"));
    net.wait_listed("node-b", &lost, &format!("{p}-lost"));

    // Clients that never authenticate cannot fill the cluster's one entrance: past max_unauthenticated (4
    // here) a new connection is closed at once, and the slots come back when those clients go.
    let gw = ("127.0.0.1", net.gateway_port);
    let idle: Vec<std::net::TcpStream> = (0..4).map(|_| std::net::TcpStream::connect(gw).unwrap()).collect();
    std::thread::sleep(Duration::from_millis(500));
    let mut extra = std::net::TcpStream::connect(gw).unwrap();
    // Closed at accept; 8 s is slack for a loaded machine and still short of the 10 s TLS handshake timeout,
    // which would close it anyway (a read that times out fails the match below).
    extra.set_read_timeout(Some(Duration::from_secs(8))).unwrap();
    let read = std::io::Read::read(&mut extra, &mut [0u8; 16]);
    assert!(
        matches!(&read, Ok(0)) || read.as_ref().is_err_and(|e| e.kind() == std::io::ErrorKind::ConnectionReset),
        "a connection over max_unauthenticated was kept open: {read:?}"
    );
    drop(idle);
    assert!(eventually(30, || run(net.dcos().args(["task", "list"])).status.success()), "slots never came back");

    // A task replaced between lookup and connect: with etcd frozen the gateway still holds the old container;
    // the agent execs into exactly that one or refuses, and the user is told the task moved.
    for i in 0..net.etcd.members.len() {
        net.etcd.freeze(i, true);
    }
    assert!(
        eventually(30, || stderr(&run(net.dcos().args(["task", "list"])))
            .contains("warning: the cluster directory is stale")),
        "no stale warning:\n{}",
        net.gateway_log()
    );
    assert!(net.gateway_log().contains("serving from a directory snapshot"), "{}", net.gateway_log());
    first.delete();
    let _second = Task::start(&bundles, &a, &format!("{p}-mv2"), &moving);
    let o = run(net.dcos().args(["task", "exec", &moving, "true"]));
    assert_eq!(code(&o), exit::TASK_NOT_FOUND, "{}", stderr(&o));
    let err = stderr(&o);
    assert!(err.contains("warning: the cluster directory is stale"), "{err}");
    assert!(err.contains("moved or ended"), "{err}");
    for i in 0..net.etcd.members.len() {
        net.etcd.freeze(i, false);
    }
    net.wait_listed("node-a", &moving, &format!("{p}-mv2"));
    let o = run(net.dcos().args(["task", "exec", &moving, "sh", "-c", "echo moved"]));
    assert_eq!((stdout(&o).as_str(), code(&o)), ("moved\n", 0), "{}", stderr(&o));

    // The owning agent is dead (its records outlive it until the lease expires): node_unreachable.
    let started = Instant::now();
    net.nodes.iter_mut().find(|n| n.name == "node-b").unwrap().kill();
    let o = run(net.dcos().args(["task", "exec", &lost, "true"]));
    assert_eq!(code(&o), exit::NODE_UNREACHABLE, "{}", stderr(&o));
    let err = stderr(&o);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("node-b") && err.contains("unreachable"), "{err}");
    // Refused at once, not after the lease (60 s) would have expired.
    assert!(started.elapsed() < Duration::from_secs(30), "took {:?}", started.elapsed());
    // Tasks of the live node still work.
    let o = run(net.dcos().args(["task", "exec", &moving, "true"]));
    assert_eq!(code(&o), 0, "{}", stderr(&o));

    // etcd gone: the last snapshot serves, with a warning, for max_stale; then cluster_unavailable.
    for i in 0..net.etcd.members.len() {
        net.etcd.kill(i);
    }
    let o = run(net.dcos().args(["task", "exec", &moving, "sh", "-c", "echo still"]));
    assert_eq!((stdout(&o).as_str(), code(&o)), ("still\n", 0), "{}", stderr(&o));
    let unavailable = || {
        let o = run(net.dcos().args(["task", "list"]));
        code(&o) == exit::CLUSTER_UNAVAILABLE
    };
    assert!(eventually(60, unavailable), "never cluster_unavailable:\n{}", net.gateway_log());
    let o = run(net.dcos().args(["task", "exec", &moving, "true"]));
    assert_eq!(code(&o), exit::CLUSTER_UNAVAILABLE, "{}", stderr(&o));
    let err = stderr(&o);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("max_stale"), "{err}");
}

/// At the gateway too: a request that is not a GET or whose task id is not percent-encoded UTF-8 is refused
/// before authentication and still audited, and an exec over HTTP/1.0 is refused as no RFC 6455 handshake.
#[test]
fn early_refusals_are_audited_and_exec_needs_http_1_1() {
    if skip() {
        return;
    }
    let w = world();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/support/raw_https.py");
    let admin = &w.net.admin;
    let exec = format!("/v1/tasks/{}/exec", w.web);
    let body = base64::Engine::encode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, r#"{"command":["true"]}"#);
    let handshake = "Connection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n";
    let requests = [
        format!("POST {exec} HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"),
        "GET /v1/tasks/%ff/exec HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".to_string(),
        format!("GET {exec} HTTP/1.0\r\nHost: x\r\nAuthorization: Bearer {admin}\r\nx-dcos-exec-request: {body}\r\n{handshake}\r\n"),
    ];
    let job = serde_json::json!({
        "port": w.net.gateway_port,
        "ca": w.net.setup().join("pki/cluster-ca.crt"),
        "requests": requests,
    });
    let o = run_with_input(Command::new("python3").arg(script), job.to_string().as_bytes());
    assert!(o.status.success(), "{}", stderr(&o));
    let answers: Vec<String> = serde_json::from_slice(&o.stdout).unwrap();
    for a in &answers {
        assert!(a.contains(" 400 "), "{a}");
    }
    assert!(answers[2].contains("HTTP/1.1 is needed"), "{}", answers[2]);
    let denied: Vec<serde_json::Value> =
        w.net.gateway_audit().into_iter().filter(|r| r["event"] == "denied" && r["user"].is_null()).collect();
    for path in ["/v1/tasks/%ff/exec", exec.as_str()] {
        assert!(denied.iter().any(|r| r["path"] == path && r["code"] == "bad_request"), "{path}: {denied:?}");
    }
}

/// `dcos-exec-agent acl push --key KEY --config (node-a's agent.toml) FILE` with `text` as the ACL.
fn acl_push(net: &Net, key: &Path, text: &str) -> Output {
    let file = net.dir.join("pushed-acl.toml");
    std::fs::write(&file, text).unwrap();
    let cfg = net.node("node-a").dir.join("agent.toml");
    run(Command::new(bin("dcos-exec-agent")).args(["acl", "push", "--key"]).arg(key).arg("--config").arg(cfg).arg(file))
}

/// The value of `key` in the net's etcd.
fn etcd_value(net: &Net, key: &str) -> String {
    let o = net.etcd.etcdctl_at(&net.etcd.endpoints().join(","), &["get", "--print-value-only", key]);
    assert!(o.status.success() && !o.stdout.is_empty(), "get {key}: {}", stderr(&o));
    stdout(&o).strip_suffix('\n').unwrap_or_default().to_string()
}

/// How many times `log` says an ACL from etcd was refused.
fn refused_acls(log: &Path) -> usize {
    std::fs::read_to_string(log).unwrap_or_default().matches("ACL in etcd refused").count()
}

#[test]
fn only_an_acl_signed_with_the_acl_signing_key_is_enforced_from_etcd() {
    if skip() {
        return;
    }
    let p = prefix();
    let dir = std::env::temp_dir().join(format!("{p}-gw-aclsig"));
    let net = Net::start(&dir, &NetOptions { acl_in_etcd: true, ..Default::default() });
    let bundles = dir.join("bundles");
    std::fs::create_dir_all(&bundles).unwrap();
    let (web, db) = (format!("web-{p}"), format!("db-{p}"));
    let _web = Task::start(&bundles, &net.node("node-a").state_root.clone(), &format!("{p}-as-web"), &web);
    let _db = Task::start(&bundles, &net.node("node-b").state_root.clone(), &format!("{p}-as-db"), &db);
    let key = net.setup().join("pki/acl-signing.key");
    // The operator's ACL: alice may list and exec web-* only.
    let o = acl_push(&net, &key, &agent_acl());
    assert!(o.status.success(), "acl push: {}", stderr(&o));
    let first = etcd_value(&net, "/dcos-exec/v1/acl");
    net.wait_listed("node-b", &db, &format!("{p}-as-db"));
    let alice = net.token("alice");
    let node_b = net.node("node-b");
    let (agent_log, gateway_log) = (node_b.dir.join("agent.log"), net.setup().join("gateway/gateway.log"));
    let direct = |task: &str| {
        let mut c = net.dcos_as(&alice);
        c.env("DCOS_URL", format!("https://127.0.0.1:{}", net.node("node-b").port));
        code(&run(c.args(["task", "exec", task, "true"])))
    };
    let via_gateway = |task: &str| code(&run(net.dcos_as(&alice).args(["task", "exec", task, "true"])));
    assert!(eventually(30, || direct(&db) == exit::FORBIDDEN), "alice is not refused on {db} at the agent");
    assert_eq!(via_gateway(&db), exit::FORBIDDEN);
    assert_eq!(via_gateway(&web), 0, "{}", net.gateway_log());
    // Gateway and agents enforce the one signed document: alice's listing through the gateway is the agents'.
    let listed = |url: Option<u16>| {
        let mut c = net.dcos_as(&alice);
        if let Some(port) = url {
            c.env("DCOS_URL", format!("https://127.0.0.1:{port}"));
        }
        stdout(&run(c.args(["task", "list", "-q"])))
    };
    let (gw_list, b_list) = (listed(None), listed(Some(net.node("node-b").port)));
    assert!(gw_list.contains(&web) && !gw_list.contains(&db), "{gw_list}");
    assert!(!b_list.contains(&db), "{b_list}");

    // Written with the gateway's etcd client certificate: an ACL granting alice everything, unsigned...
    let wide = "[[rule]]\nsubjects = [\"user:alice\"]\ntasks = [\"**\"]\nactions = [\"*\"]\nimages = [\"**\"]\n";
    let (before_agent, before_gateway) = (refused_acls(&agent_log), refused_acls(&gateway_log));
    let o = net.etcd.etcdctl_at(&net.etcd.endpoints().join(","), &["put", "/dcos-exec/v1/acl", wide]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        eventually(30, || refused_acls(&agent_log) > before_agent && refused_acls(&gateway_log) > before_gateway),
        "the forged ACL was not refused and logged:\n{}",
        std::fs::read_to_string(&agent_log).unwrap_or_default()
    );
    assert!(std::fs::read_to_string(&agent_log).unwrap().contains("signed ACL document"));
    assert_eq!(direct(&db), exit::FORBIDDEN, "a forged ACL in etcd was enforced by the agent");
    assert_eq!(via_gateway(&db), exit::FORBIDDEN, "a forged ACL in etcd was enforced by the gateway");
    // ... or signed, with a key of the attacker's own.
    let own = dir.join("own-acl.key");
    let o = run(Command::new("openssl").args(["genpkey", "-algorithm", "ed25519", "-out"]).arg(&own));
    assert!(o.status.success(), "{}", stderr(&o));
    let before = refused_acls(&agent_log);
    let o = acl_push(&net, &own, wide);
    assert!(o.status.success(), "acl push: {}", stderr(&o));
    assert!(eventually(30, || refused_acls(&agent_log) > before), "the ACL signed with another key was not refused");
    assert!(std::fs::read_to_string(&agent_log).unwrap().contains("the signature does not verify"));
    assert_eq!(direct(&db), exit::FORBIDDEN, "an ACL signed with another key was enforced");
    assert_eq!(via_gateway(&db), exit::FORBIDDEN);

    // The operator's own push is enforced by both (issued a second later than the first).
    std::thread::sleep(Duration::from_millis(1100));
    let o = acl_push(&net, &key, &format!("{}\n{wide}", agent_acl()));
    assert!(o.status.success(), "acl push: {}", stderr(&o));
    assert!(eventually(30, || direct(&db) == 0), "the pushed ACL was not enforced by the agent");
    assert!(eventually(30, || via_gateway(&db) == 0), "the pushed ACL was not enforced by the gateway");
    // An older signed document replayed does not replace it.
    let before = refused_acls(&agent_log);
    let o = net.etcd.etcdctl_at(&net.etcd.endpoints().join(","), &["put", "/dcos-exec/v1/acl", &first]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(eventually(30, || refused_acls(&agent_log) > before), "the replayed ACL was not refused");
    assert!(std::fs::read_to_string(&agent_log).unwrap().contains("replayed"));
    assert_eq!(direct(&db), 0, "a replayed older ACL replaced the one in force");
}

/// A TLS listener with `cert`/`key` that appends every byte it receives, per connection, to `out` (after a
/// line `CONNECTION`); prints its port.
const RECORDER: &str = r#"
import socket, ssl, sys, threading
cert, key, out = sys.argv[1:4]
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
ctx.load_cert_chain(cert, key)
s = socket.socket()
s.bind(("127.0.0.1", 0))
s.listen(16)
print(s.getsockname()[1], flush=True)
def serve(c):
    with open(out, "ab") as f:
        f.write(b"CONNECTION\n"); f.flush()
        try:
            t = ctx.wrap_socket(c, server_side=True)
            t.settimeout(5)
            while True:
                d = t.recv(4096)
                if not d:
                    break
                f.write(d); f.flush()
        except Exception as e:
            f.write(("closed: %s\n" % e).encode()); f.flush()
while True:
    c, _ = s.accept()
    threading.Thread(target=serve, args=(c,), daemon=True).start()
"#;

#[test]
fn a_rewritten_node_record_sends_no_session_and_no_token_to_another_server() {
    if skip() {
        return;
    }
    let p = prefix();
    let dir = std::env::temp_dir().join(format!("{p}-gw-redirect"));
    let net = Net::start(&dir, &NetOptions::default());
    let bundles = dir.join("bundles");
    std::fs::create_dir_all(&bundles).unwrap();
    let web = format!("web-{p}");
    let _web = Task::start(&bundles, &net.node("node-a").state_root.clone(), &format!("{p}-rd-web"), &web);
    net.wait_listed("node-a", &web, &format!("{p}-rd-web"));
    let alice = net.token("alice");
    let exec = |net: &Net| run(net.dcos_as(&alice).args(["task", "exec", &web, "true"]));
    assert_eq!(code(&exec(&net)), 0, "{}", net.gateway_log());
    // The agents' certificates from `init cluster` name their nodes: no warning at start.
    let log = std::fs::read_to_string(net.node("node-a").dir.join("agent.log")).unwrap();
    assert!(!log.contains("gateways will not relay"), "{log}");

    // A compromised node-b's own listener, with node-b's cluster-CA server certificate.
    let b = net.node("node-b").dir.clone();
    let out = dir.join("recorded");
    let mut recorder = Command::new("python3")
        .args(["-c", RECORDER])
        .arg(b.join("server.crt"))
        .arg(b.join("server.key"))
        .arg(&out)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufRead::read_line(&mut std::io::BufReader::new(recorder.stdout.take().unwrap()), &mut line).unwrap();
    let listener: u16 = line.trim().parse().unwrap();

    let key = "/dcos-exec/v1/nodes/node-a";
    let original = etcd_value(&net, key);
    let gw_pid = net.gateway.id();
    let fds = || std::fs::read_dir(format!("/proc/{gw_pid}/fd")).map(|d| d.count()).unwrap_or(0);
    let fds_before = fds();
    let mut outcomes = Vec::new();
    for (what, port) in [
        ("a listener with node-b's certificate", listener),
        ("node-b's agent", net.node("node-b").port),
        ("the gateway itself", net.gateway_port),
    ] {
        let mut record: serde_json::Value = serde_json::from_str(&original).unwrap();
        record["url"] = format!("https://127.0.0.1:{port}").into();
        let o = net.etcd.etcdctl_at(&net.etcd.endpoints().join(","), &["put", key, &record.to_string()]);
        assert!(o.status.success(), "{}", stderr(&o));
        let mut last = None;
        let refused = eventually(30, || {
            let o = exec(&net);
            let done = code(&o) == exit::NODE_UNREACHABLE;
            last = Some(o);
            done
        });
        outcomes.push((what, refused, last.unwrap()));
    }
    // The listener was reached (TLS), and received nothing: no request, no token.
    let recorded = std::fs::read_to_string(&out).unwrap_or_default();
    assert!(recorded.contains("CONNECTION"), "the gateway never reached the listener: {recorded:?}");
    for leak in ["authorization", "Bearer", alice.as_str(), "GET "] {
        assert!(!recorded.contains(leak), "the listener received {leak:?}: {recorded}");
    }
    for (what, refused, o) in outcomes {
        assert!(refused, "record pointed at {what}: {} {}\n{}", code(&o), stderr(&o), net.gateway_log());
        assert!(stderr(&o).contains("not the agent of node node-a"), "{what}: {}", stderr(&o));
    }
    // No loop through the gateway itself: its descriptors stay where they were.
    assert!(fds() < fds_before + 50, "the gateway's descriptors grew from {fds_before} to {}", fds());
    let audited = net.gateway_audit().iter().filter(|r| r.to_string().contains("node_unreachable")).count();
    assert!(audited >= 3, "refusals not audited: {:?}", net.gateway_audit());
    // Put back, node-a is reached again.
    let o = net.etcd.etcdctl_at(&net.etcd.endpoints().join(","), &["put", key, &original]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(eventually(30, || code(&exec(&net)) == 0), "{}", net.gateway_log());
    let _ = recorder.kill();
    let _ = recorder.wait();
}
