//! Session lifetime: a vanished client's processes get SIGHUP then SIGKILL; thousands of sessions leave no
//! zombie, fd or mount behind in the agent.

mod support;

use std::process::{Command, Stdio};
use support::*;

fn running(w: &World, pattern: &str) -> bool {
    let o = run(w.agent.dcos().args(["task", "exec", &w.main.id, "ps", "-o", "args"]));
    stdout(&o).lines().any(|l| l.contains(pattern))
}

fn start_and_vanish(w: &World, script: &str, marker: &str) {
    start_and_vanish_with(w, &[], script, marker)
}

fn start_and_vanish_with(w: &World, flags: &[&str], script: &str, marker: &str) {
    let mut c = w
        .agent
        .dcos()
        .args(["task", "exec"])
        .args(flags)
        .args([&w.main.id, "sh", "-c", script])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut buf = [0u8; 3];
    std::io::Read::read_exact(c.stdout.as_mut().unwrap(), &mut buf).unwrap();
    assert!(running(w, marker), "session process is up");
    // SIGKILL: the client cannot say goodbye, the agent only sees the connection drop.
    c.kill().unwrap();
    c.wait().unwrap();
}

#[test]
fn client_gone_means_sighup_then_sigkill_after_the_grace_period() {
    if skip() {
        return;
    }
    let w = world();
    // Dies of the hangup.
    start_and_vanish(w, "echo up; sleep 4242", "sleep 4242");
    assert!(eventually(10, || !running(w, "sleep 4242")), "hung-up session process is gone");
    // Ignores the hangup: killed after grace_period (1s in the tests), with its children.
    start_and_vanish(w, "trap '' HUP; echo up; sleep 4343 & sleep 4444; wait", "sleep 4444");
    assert!(eventually(15, || !running(w, "sleep 4444") && !running(w, "sleep 4343")), "stubborn session killed");
    // With a terminal, job control puts a background job in a process group of its own; it ignores the hangup,
    // so only a SIGKILL that reaches the whole session (not just the leader's group) ends it.
    start_and_vanish_with(w, &["-t"], "set -m; trap '' HUP; sleep 4545 & echo up; sleep 4646", "sleep 4646");
    assert!(eventually(15, || !running(w, "sleep 4545") && !running(w, "sleep 4646")), "job-control job killed");
}

fn count_fds(pid: i32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map(|d| d.count()).unwrap_or(0)
}

fn zombies_of(pid: i32) -> usize {
    let mut n = 0;
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(stat) = std::fs::read_to_string(e.path().join("stat")) else {
            continue;
        };
        let Some(rest) = stat.rfind(')').map(|i| &stat[i + 2..]) else {
            continue;
        };
        let f: Vec<&str> = rest.split_whitespace().collect();
        if f.first() == Some(&"Z") && f.get(1) == Some(&pid.to_string().as_str()) {
            n += 1;
        }
    }
    n
}

fn mount_count() -> usize {
    std::fs::read_to_string("/proc/self/mountinfo").unwrap().lines().count()
}

#[test]
fn a_thousand_sessions_leak_nothing() {
    if skip() {
        return;
    }
    // An agent of its own, so no other test's sessions move the counters.
    let root = std::env::temp_dir().join(format!("{}-leak", prefix()));
    let c = Container::start(&root, &format!("{}-leak", prefix()), &ContainerOpts::default());
    let agent = Agent::start(&root.join("agent"));
    let ok = |o: &std::process::Output| o.status.code() == Some(0);
    // Warm up: first sessions allocate the runtime's lazily created fds.
    for _ in 0..5 {
        assert!(ok(&run(agent.dcos().args(["task", "exec", &c.id, "true"]))));
    }
    let (fds0, mounts0) = (count_fds(agent.pid()), mount_count());
    let threads: Vec<_> = (0..4)
        .map(|t| {
            let dcos = bin("dcos");
            let (url, ca, tok, id) =
                (agent.url.clone(), agent.dir.join("ca.crt"), agent.admin_token.clone(), c.id.clone());
            std::thread::spawn(move || {
                let mut failures = 0;
                for i in 0..250 {
                    let mut cmd = Command::new(&dcos);
                    cmd.env("DCOS_URL", &url).env("DCOS_SSL_VERIFY", &ca).env("DCOS_ACS_TOKEN", &tok);
                    // A mix: plain, with stdin, with a terminal, failing to start.
                    match i % 4 {
                        0 => cmd.args(["task", "exec", &id, "true"]),
                        1 => cmd.args(["task", "exec", "-i", &id, "cat"]),
                        2 => cmd.args(["task", "exec", "-t", &id, "true"]),
                        _ => cmd.args(["task", "exec", &id, "no-such-binary"]),
                    };
                    let o = cmd.stdin(Stdio::null()).output().unwrap();
                    let want = if i % 4 == 3 { 127 } else { 0 };
                    if o.status.code() != Some(want) {
                        failures += 1;
                        eprintln!("thread {t} session {i}: {:?} {}", o.status, String::from_utf8_lossy(&o.stderr));
                    }
                }
                failures
            })
        })
        .collect();
    let failures: usize = threads.into_iter().map(|t| t.join().unwrap()).sum();
    assert_eq!(failures, 0, "all 1000 sessions succeed");
    assert!(eventually(10, || count_fds(agent.pid()) <= fds0 + 2), "agent fds {} -> {}", fds0, count_fds(agent.pid()));
    assert!(eventually(10, || zombies_of(agent.pid()) == 0), "no zombie children of the agent");
    assert_eq!(mount_count(), mounts0, "no mounts left on the host");
    let o = run(agent.dcos().args(["task", "exec", &c.id, "ps", "-o", "stat"]));
    assert!(!stdout(&o).lines().any(|l| l.trim().starts_with('Z')), "no zombies in the container: {}", stdout(&o));
    let sessions = agent.audit().iter().filter(|r| r["event"] == "session").count();
    assert_eq!(sessions, 1006, "every session audited");
}
