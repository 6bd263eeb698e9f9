//! A cluster on one machine: hosts as network namespaces (support/hosts.rs), each with its own agent, runc root
//! and containers, a three-member etcd, and gateways, all driven through the real `dcos` binary against a
//! gateway. Read-only tests share one cluster; each failure test builds its own, so that killing an agent, etcd's
//! leader, a link or a gateway cannot disturb the others.

mod support;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use std::io::Write;
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};
use support::hosts::{Cluster, ClusterOpts, Host, LEASE_TTL};
use support::{eventually, prefix, run, run_with_input, skip, stderr, stdout, ContainerOpts};

const ACL: &str = r#"
[[rule]]
subjects = ["user:admin"]
tasks = ["*"]
actions = ["*"]
images = ["**"]

[[rule]]
subjects = ["user:alice"]
tasks = ["web-*"]
actions = ["list", "exec"]

[[rule]]
effect = "deny"
subjects = ["user:mallory"]
tasks = ["*"]
actions = ["*"]
"#;

/// The ACL of host h3's agent: stricter than the gateways' (alice may do nothing there), so that a session the
/// gateway lets through is refused by the agent.
const ACL_H3: &str = r#"
[[rule]]
subjects = ["user:admin"]
tasks = ["*"]
actions = ["*"]
images = ["**"]

[[rule]]
effect = "deny"
subjects = ["user:mallory", "user:alice"]
tasks = ["*"]
actions = ["*"]
"#;

/// The task id of the container on `host`.
fn web(host: &str) -> String {
    format!("web-{host}-{}", prefix())
}

/// Starts on every host a container whose task id is `web-<host>-<prefix>`, with `/etc/whoami` naming the host,
/// and on the first two hosts a container each with the task id `dup-<prefix>`.
fn populate(c: &Cluster) {
    let p = prefix();
    for (i, h) in c.net.hosts.iter().enumerate() {
        let o = ContainerOpts { annotations: vec![("io.dcos.task-id".into(), web(&h.name))], ..Default::default() };
        let id = h.start_container(&format!("{p}-{}", h.name), &o);
        std::fs::write(h.dir.join(&id).join("rootfs/etc/whoami"), format!("{}\n", h.name)).unwrap();
        if i < 2 {
            let o = ContainerOpts {
                annotations: vec![("io.dcos.task-id".into(), format!("dup-{p}"))],
                ..Default::default()
            };
            h.start_container(&format!("{p}-{}-dup", h.name), &o);
        }
    }
    let all: Vec<String> = c.net.hosts.iter().map(|h| web(&h.name)).collect();
    let all: Vec<&str> = all.iter().map(String::as_str).collect();
    // Every gateway follows etcd on a watch of its own: tests ask any of them, so wait for each.
    for (g, gw) in c.gateways.iter().enumerate() {
        assert!(c.wait_listed_via(g, &all, true, 30), "gateway {g} never listed {all:?}: {}", gw.log_tail());
        // Each agent registers on its own scan, so the web tasks being listed says nothing of the dup ones: wait
        // until both hosts' dup rows are there.
        let dup = format!("dup-{p}");
        let mut list = String::new();
        let both = support::eventually(30, || {
            list = stdout(&run(c.dcos_via(g, &c.admin_token).args(["task", "list"])));
            list.lines().filter(|l| l.split_whitespace().any(|w| w == dup)).count() == 2
        });
        assert!(both, "gateway {g} never listed {dup} on two nodes:\n{list}\n{}", gw.log_tail());
    }
}

fn shared() -> &'static Cluster {
    static C: OnceLock<Cluster> = OnceLock::new();
    C.get_or_init(|| {
        // Started from a thread that lives as long as the process: the processes' parent-death signal fires
        // when the thread that started them ends.
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let c = Cluster::start(&ClusterOpts {
                hosts: 3,
                gateways: 2,
                acl: ACL,
                agent_acl: |h| if h == "h3" { ACL_H3 } else { ACL },
                ..Default::default()
            });
            populate(&c);
            tx.send(c).unwrap();
            loop {
                std::thread::park();
            }
        });
        rx.recv().expect("cluster set-up failed (see the panic above)")
    })
}

/// A cluster of its own for a test that breaks something, with the containers of [`populate`].
fn own(hosts: usize, gateways: usize, gateway_extra: &'static str) -> Cluster {
    let c = Cluster::start(&ClusterOpts { hosts, gateways, acl: ACL, gateway_extra, ..Default::default() });
    populate(&c);
    c
}

/// The one line `dcos` printed on stderr, and its exit code.
fn failure(o: &std::process::Output) -> (String, Option<i32>) {
    (stderr(o).trim_end().to_string(), o.status.code())
}

/// The list's row for `task`, split on whitespace.
fn row(list: &str, task: &str) -> Vec<String> {
    list.lines()
        .find(|l| l.split_whitespace().any(|w| w == task))
        .unwrap_or_else(|| panic!("{task} is not listed:\n{list}"))
        .split_whitespace()
        .map(str::to_string)
        .collect()
}

#[test]
fn list_shows_every_host_with_its_node() {
    if skip() {
        return;
    }
    let c = shared();
    for g in 0..c.gateways.len() {
        let o = run(c.dcos_via(g, &c.admin_token).args(["task", "list"]));
        assert!(o.status.success(), "{}", stderr(&o));
        let list = stdout(&o);
        let header: Vec<&str> = list.lines().next().unwrap().split_whitespace().collect();
        let col = header.iter().position(|h| *h == "NODE").unwrap_or_else(|| panic!("no NODE column:\n{list}"));
        for h in &c.net.hosts {
            assert_eq!(row(&list, &web(&h.name))[col], h.name, "{list}");
        }
    }
    // --node keeps exactly that node's tasks.
    let o = run(c.dcos().args(["task", "list", "--node", "h2"]));
    let list = stdout(&o);
    assert!(o.status.success() && list.contains(&web("h2")), "{list}{}", stderr(&o));
    assert!(!list.contains(&web("h1")) && !list.contains(&web("h3")), "{list}");
    // Nodes: all three, with their task counts (h1 and h2 run two containers, h3 one).
    let o = run(c.dcos().args(["node", "list"]));
    let nodes = stdout(&o);
    assert!(o.status.success(), "{}", stderr(&o));
    for (h, n) in [("h1", "2"), ("h2", "2"), ("h3", "1")] {
        let r = row(&nodes, h);
        assert!(r.iter().any(|w| w == n), "{h} should have {n} tasks: {nodes}");
    }
    // A user sees only what the ACL lets them list, across nodes.
    let alice = c.token("alice", &[]);
    let list = stdout(&run(c.dcos_via(0, &alice).args(["task", "list"])));
    assert!(list.contains(&web("h1")) && !list.contains(&format!("dup-{}", prefix())), "{list}");
}

#[test]
fn exec_reaches_the_owning_host() {
    if skip() {
        return;
    }
    let c = shared();
    for (g, h) in [(0, "h1"), (1, "h2"), (0, "h3")] {
        let host = c.net.host(h);
        // The container shares its host's network: its address says which host answered.
        let o = run(c.dcos_via(g, &c.admin_token).args(["task", "exec", &web(h), "sh", "-c", "ip -o -4 addr; exit 7"]));
        assert_eq!(o.status.code(), Some(7), "{}", stderr(&o));
        assert!(stdout(&o).contains(&format!("inet {}/24", host.ip)), "{}", stdout(&o));
        // -i: stdin through the gateway and back.
        let o = run_with_input(
            c.dcos_via(g, &c.admin_token).args(["task", "exec", "-i", &web(h), "sh", "-c", "cat; cat /etc/whoami"]),
            b"ping\n",
        );
        assert_eq!((stdout(&o), o.status.code()), (format!("ping\n{h}\n"), Some(0)), "{}", stderr(&o));
        // The agent's audit record names the user's address and the gateway it came through.
        let rec = host.audit().into_iter().rev().find(|r| r["task"] == web(h)).expect("an audit record");
        assert!(rec.to_string().contains("127.0.0.1"), "{rec}");
    }
}

#[test]
fn tty_through_the_gateway() {
    if skip() {
        return;
    }
    let c = shared();
    for h in ["h1", "h3"] {
        let mut cmd = c.dcos();
        cmd.args(["task", "exec", "-i", "-t", &web(h), "sh"]);
        let (mut master, mut child, _slave) = support::on_pty(&mut cmd, 24, 91);
        master.write_all(b"stty size; tty; cat /etc/whoami; exit 5\n").unwrap();
        let out = support::read_until(&mut master, &format!("{h}\r\n"), 30);
        assert!(out.contains("24 91") && out.contains("/dev/pts/"), "{out}");
        let deadline = Instant::now() + Duration::from_secs(20);
        let st = loop {
            if let Some(st) = child.try_wait().unwrap() {
                break st;
            }
            assert!(Instant::now() < deadline, "the -t session did not end: {out}");
            std::thread::sleep(Duration::from_millis(50));
        };
        assert_eq!(st.code(), Some(5));
    }
}

/// An OCI layout with busybox, built once with umoci.
fn debug_image() -> String {
    static IMG: OnceLock<String> = OnceLock::new();
    IMG.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("{}-cluster-image", prefix()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let layout = dir.join("tools");
        let image = format!("{}:busybox", layout.display());
        let bundle = dir.join("bundle");
        let ok = |c: &mut Command| {
            let o = run(c);
            assert!(o.status.success(), "{c:?}: {}", stderr(&o));
        };
        ok(Command::new("umoci").args(["init", "--layout"]).arg(&layout));
        ok(Command::new("umoci").args(["new", "--image", &image]));
        ok(Command::new("umoci").args(["unpack", "--rootless", "--image", &image]).arg(&bundle));
        support::make_rootfs(&bundle.join("rootfs"));
        ok(Command::new("umoci").args(["config", "--image", &image, "--config.env", "PATH=/bin"]));
        ok(Command::new("umoci").args(["repack", "--image", &image]).arg(&bundle));
        format!("oci:{image}")
    })
    .clone()
}

#[test]
fn debug_image_on_every_host() {
    if skip() {
        return;
    }
    let c = shared();
    let image = debug_image();
    for h in &c.net.hosts {
        let o =
            run(c.dcos().args(["task", "exec", "--debug-image", &image, &web(&h.name), "cat", "/target/etc/whoami"]));
        assert_eq!((stdout(&o), o.status.code()), (format!("{}\n", h.name), Some(0)), "{}", stderr(&o));
    }
}

#[test]
fn ambiguous_across_nodes_names_the_candidates() {
    if skip() {
        return;
    }
    let c = shared();
    let o = run(c.dcos().args(["task", "exec", &format!("dup-{}", prefix()), "true"]));
    let p = prefix();
    // Container ids are shortened to 12 characters, as in the agent's own message.
    let short = |h: &str| format!("{p}-{h}-dup").chars().take(12).collect::<String>();
    assert_eq!(
        failure(&o),
        (
            format!(
                "dcos: task \"dup-{p}\" is ambiguous, it matches: dup-{p} (container {}) on h1, dup-{p} (container {}) \
                 on h2; name one of them",
                short("h1"),
                short("h2")
            ),
            Some(123)
        )
    );
}

#[test]
fn refusals_at_the_gateway_and_at_the_agent() {
    if skip() {
        return;
    }
    let c = shared();
    // Denied at the gateway: the agent never hears of it.
    let mallory = c.token("mallory", &[]);
    let o = run(c.dcos_via(0, &mallory).args(["task", "exec", &web("h1"), "true"]));
    let (line, code) = failure(&o);
    assert_eq!(code, Some(118), "{line}");
    assert!(line.starts_with("dcos: ") && line.contains("mallory"), "{line}");
    assert!(!c.net.host("h1").audit().iter().any(|r| r.to_string().contains("mallory")));
    assert!(c.gateways[0].audit().iter().any(|r| r.to_string().contains("mallory")));
    // A bad token is refused at the gateway.
    let o = run(c.dcos_via(0, "not-a-token").args(["task", "list"]));
    assert_eq!(o.status.code(), Some(117), "{}", stderr(&o));
    // Allowed by the gateway's ACL, refused by h3's own: defence in depth.
    let alice = c.token("alice", &[]);
    let o = run(c.dcos_via(0, &alice).args(["task", "exec", &web("h1"), "true"]));
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let o = run(c.dcos_via(0, &alice).args(["task", "exec", &web("h3"), "true"]));
    let (line, code) = failure(&o);
    assert_eq!(code, Some(118), "{line}");
    let h3 = c.net.host("h3");
    assert!(h3.audit().iter().any(|r| r.to_string().contains("alice")), "h3 audited no refusal of alice");
}

/// Sends a session upgrade straight to `host`'s agent with the gateway's headers, from a client with
/// `cert` (or none): what the agent answers (HTTP status line and body).
fn forged(c: &Cluster, host: &Host, cert: Option<(&std::path::Path, &std::path::Path)>) -> String {
    let mut cmd = Command::new("curl");
    cmd.args(["-sS", "--http1.1", "-i", "--max-time", "10", "--cacert"]).arg(&c.pki.ca);
    if let Some((crt, key)) = cert {
        cmd.arg("--cert").arg(crt).arg("--key").arg(key);
    }
    cmd.args(["-H", "Connection: Upgrade", "-H", "Upgrade: websocket", "-H", "Sec-WebSocket-Version: 13"])
        .args([
            "-H",
            "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
            "-H",
            "Sec-WebSocket-Protocol: v1.exec.dcos-exec.io",
        ])
        .args(["-H", &format!("Authorization: Bearer {}", c.admin_token)])
        .args(["-H", "x-dcos-exec-forwarded-for: 203.0.113.9:4444"])
        .args(["-H", &format!("x-dcos-exec-container: {}-{}-dup", prefix(), host.name)])
        .args(["-H", &format!("x-dcos-exec-request: {}", URL_SAFE_NO_PAD.encode(br#"{"command":["true"]}"#))])
        .arg(format!("{}/v1/tasks/{}/exec", host.url(), web(&host.name)));
    let o = run(&mut cmd);
    stdout(&o)
}

#[test]
fn agents_honour_gateway_headers_only_from_gateway_certificates() {
    if skip() {
        return;
    }
    let c = shared();
    let h1 = c.net.host("h1");
    // No client certificate: a forged forwarded-for and container are refused, and nothing runs.
    let answer = forged(c, h1, None);
    assert!(answer.starts_with("HTTP/1.1 403"), "{answer}");
    assert!(answer.contains("forbidden"), "{answer}");
    // A client certificate of another CA does not make a gateway either (the handshake or the request fails).
    let other = support::hosts::Pki::new(&c.net.dir.join("other-pki"));
    let (crt, key) = other.issue("intruder", &[], "clientAuth");
    let answer = forged(c, h1, Some((&crt, &key)));
    assert!(!answer.contains(" 101 "), "{answer}");
    assert!(
        !h1.audit().iter().any(|r| r.to_string().contains("203.0.113.9")),
        "a forged address reached the audit trail"
    );
}

#[test]
fn dead_agent_is_unreachable_then_leaves_and_comes_back() {
    if skip() {
        return;
    }
    let c = own(2, 1, "");
    let h1 = c.net.host("h1");
    // Timed from the kill: the lease was last renewed at most a third of its TTL before it.
    let killed = Instant::now();
    h1.kill_agent();
    let o = run(c.dcos().args(["task", "exec", &web("h1"), "true"]));
    let (line, code) = failure(&o);
    assert_eq!(code, Some(113), "{line}");
    assert!(line.starts_with("dcos: ") && line.contains("h1"), "{line}");
    // The other host is not affected.
    assert_eq!(run(c.dcos().args(["task", "exec", &web("h2"), "true"])).status.code(), Some(0));
    // Its tasks leave the list once its lease expires, and come back with the restarted agent.
    // The lower bound below is what proves the lease; the deadline only has to outlast a loaded machine.
    assert!(c.wait_listed(&[&web("h1")], false, LEASE_TTL.as_secs() + 30), "the dead agent's task stayed listed");
    let earliest = LEASE_TTL - LEASE_TTL / 3;
    assert!(killed.elapsed() >= earliest, "gone {:?} after the kill, before the lease could expire", killed.elapsed());
    assert!(c.wait_listed(&[&web("h2")], true, 1));
    h1.start_agent();
    assert!(c.wait_listed(&[&web("h1")], true, 30), "the restarted agent's task did not come back");
    let o = run(c.dcos().args(["task", "exec", &web("h1"), "cat", "/etc/whoami"]));
    assert_eq!((stdout(&o), o.status.code()), ("h1\n".to_string(), Some(0)), "{}", stderr(&o));
}

#[test]
fn etcd_leader_dies_and_then_all_of_etcd() {
    if skip() {
        return;
    }
    // max_stale must outlast killing the members and one `dcos task list` on a loaded machine (the snapshot's
    // age counts from the last progress report, up to a second before the kill).
    let c = own(2, 1, "max_stale = \"8s\"");
    let leader = c.etcd.lock().unwrap().kill_leader();
    // Everything keeps working: lists, sessions, and registration of a new task.
    for _ in 0..5 {
        let o = run(c.dcos().args(["task", "exec", &web("h2"), "true"]));
        assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    }
    let new = c.net.host("h1").start_container(
        &format!("{}-late", prefix()),
        &ContainerOpts {
            annotations: vec![("io.dcos.task-id".into(), format!("late-{}", prefix()))],
            ..Default::default()
        },
    );
    assert!(
        c.wait_listed(&[&format!("late-{}", prefix())], true, 30),
        "a task started after the leader died is not listed ({new})"
    );
    // Without etcd, the gateway serves its snapshot for max_stale, then refuses.
    for i in 0..3 {
        if i != leader {
            c.etcd.lock().unwrap().kill(i);
        }
    }
    let o = run(c.dcos().args(["task", "list"]));
    assert!(o.status.success() && stdout(&o).contains(&web("h1")), "{}", stderr(&o));
    assert!(
        eventually(30, || run(c.dcos().args(["task", "list"])).status.code() == Some(114)),
        "the gateway kept serving a stale directory"
    );
    let o = run(c.dcos().args(["task", "exec", &web("h1"), "true"]));
    let (line, code) = failure(&o);
    assert_eq!(code, Some(114), "{line}");
    assert!(line.starts_with("dcos: "), "{line}");
    // etcd back: so is the directory.
    for i in 0..3 {
        c.etcd.lock().unwrap().restart(i);
    }
    assert!(eventually(30, || run(c.dcos().args(["task", "exec", &web("h1"), "true"])).status.success()));
}

/// The pid (root namespace) of the `sh` whose command line contains `marker`. Only a process run as `sh`: the
/// `dcos` client carries the same script in its arguments, and it is gone as soon as the test reaps it.
fn pid_of(marker: &str) -> Option<i32> {
    std::fs::read_dir("/proc").ok()?.flatten().find_map(|e| {
        let pid: i32 = e.file_name().to_str()?.parse().ok()?;
        let cmd = std::fs::read(e.path().join("cmdline")).ok()?;
        let argv0 = cmd.split(|b| *b == 0).next()?;
        (argv0 == b"sh" && String::from_utf8_lossy(&cmd).contains(marker)).then_some(pid)
    })
}

/// A session through gateway `g` into `task` whose shell prints a tick every 200 ms, fed a line of stdin every
/// 200 ms (so data is in flight both ways); the shell's root-namespace pid.
fn ticking_session(c: &Cluster, g: usize, task: &str, marker: &str) -> (std::process::Child, i32) {
    let script = format!("while :; do echo tick; sleep 0.2; done; : {marker}");
    let mut child = c
        .dcos_via(g, &c.admin_token)
        .args(["task", "exec", "-i", task, "sh", "-c", &script])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    std::thread::spawn(move || {
        while stdin.write_all(b"keystroke\n").is_ok() {
            std::thread::sleep(Duration::from_millis(200));
        }
    });
    let mut out = child.stdout.take().unwrap();
    let mut buf = [0u8; 5];
    std::io::Read::read_exact(&mut out, &mut buf).expect("the session printed nothing");
    std::thread::spawn(move || std::io::copy(&mut out, &mut std::io::sink()));
    // The shell printed, so it runs.
    let pid = pid_of(marker).expect("the session's shell");
    (child, pid)
}

/// Waits for `child` for at most `secs`: its exit code and its stderr.
fn wait_for(mut child: std::process::Child, secs: u64) -> (Option<i32>, String) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(st) = child.try_wait().unwrap() {
            let mut err = String::new();
            let _ = std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err);
            return (st.code(), err);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("the session did not end within {secs} s");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn cut_link_mid_session_loses_the_session_and_hangs_up_the_process() {
    if skip() {
        return;
    }
    let c = own(2, 1, "");
    let marker = format!("{}-cut", prefix());
    let (child, pid) = ticking_session(&c, 0, &web("h1"), &marker);
    let h1 = c.net.host("h1");
    h1.set_link(false);
    let (code, err) = wait_for(child, 150);
    let line = err.trim_end().lines().last().unwrap_or_default().to_string();
    assert_eq!(code, Some(121), "{err}");
    assert!(line.starts_with("dcos: connection to the agent lost: "), "{line}");
    // The agent noticed too: the process got its hang-up and is gone.
    assert!(
        eventually(120, || !std::path::Path::new(&format!("/proc/{pid}")).exists()),
        "the process outlived the cut"
    );
    // Back on the network, the agent registers again (its lease expired meanwhile) and serves.
    h1.set_link(true);
    let mut last = String::new();
    let back = eventually(30, || {
        let o = run(c.dcos().args(["task", "exec", &web("h1"), "true"]));
        last = stderr(&o);
        o.status.success()
    });
    assert!(back, "h1 did not come back: {last}\n{}", h1.agent_log_tail());
}

#[test]
fn killed_gateway_loses_its_sessions_and_the_other_serves() {
    if skip() {
        return;
    }
    let c = own(2, 2, "");
    let marker = format!("{}-gw", prefix());
    let (child, pid) = ticking_session(&c, 0, &web("h2"), &marker);
    c.gateways[0].kill();
    let (code, err) = wait_for(child, 30);
    let line = err.trim_end().lines().last().unwrap_or_default().to_string();
    assert_eq!(code, Some(121), "{err}");
    assert!(line.starts_with("dcos: connection to the agent lost: "), "{line}");
    // The other gateway serves new sessions, and the lost session's process was hung up by its agent.
    let o = run(c.dcos_via(1, &c.admin_token).args(["task", "exec", &web("h2"), "cat", "/etc/whoami"]));
    assert_eq!((stdout(&o), o.status.code()), ("h2\n".to_string(), Some(0)), "{}", stderr(&o));
    assert!(
        eventually(30, || !std::path::Path::new(&format!("/proc/{pid}")).exists()),
        "the process outlived its session"
    );
}
