//! Session lifetime: a vanished client's processes get SIGHUP then SIGKILL; thousands of sessions leave no
//! zombie, fd or mount behind in the agent.

mod support;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use support::*;

fn running(w: &World, pattern: &str) -> bool {
    let o = run(w.agent.dcos().args(["task", "exec", &w.main.id, "ps", "-o", "args"]));
    // A `ps` that did not run says nothing: it must not pass for "the process is gone".
    assert!(o.status.success(), "ps in {}: {}", w.main.id, stderr(&o));
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
    // The shell may print "up" before it starts the marked process.
    assert!(eventually(30, || running(w, marker)), "session process is up");
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
    assert!(eventually(30, || !running(w, "sleep 4242")), "hung-up session process is gone");
    // Ignores the hangup: killed after grace_period (1s in the tests), with its children.
    start_and_vanish(w, "trap '' HUP; echo up; sleep 4343 & sleep 4444; wait", "sleep 4444");
    assert!(eventually(30, || !running(w, "sleep 4444") && !running(w, "sleep 4343")), "stubborn session killed");
    // With a terminal, job control puts a background job in a process group of its own; it ignores the hangup,
    // so only a SIGKILL that reaches the whole session (not just the leader's group) ends it.
    start_and_vanish_with(w, &["-t"], "set -m; trap '' HUP; sleep 4545 & echo up; sleep 4646", "sleep 4646");
    assert!(eventually(30, || !running(w, "sleep 4545") && !running(w, "sleep 4646")), "job-control job killed");
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
    assert!(eventually(30, || count_fds(agent.pid()) <= fds0 + 2), "agent fds {} -> {}", fds0, count_fds(agent.pid()));
    assert!(eventually(30, || zombies_of(agent.pid()) == 0), "no zombie children of the agent");
    assert_eq!(mount_count(), mounts0, "no mounts left on the host");
    let o = run(agent.dcos().args(["task", "exec", &c.id, "ps", "-o", "stat"]));
    assert!(!stdout(&o).lines().any(|l| l.trim().starts_with('Z')), "no zombies in the container: {}", stdout(&o));
    let count = |ev: &str| agent.audit().iter().filter(|r| r["event"] == ev).count();
    assert_eq!(count("session_end"), 1006, "every session audited");
    assert_eq!(count("session_start"), 1006, "every session's start audited");
}

/// Processes on the host (any pid namespace) whose command line is `argv` (words joined by spaces).
fn host_processes(argv: &str) -> usize {
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| std::fs::read(e.path().join("cmdline")).ok())
        .map(|c| String::from_utf8_lossy(&c).replace('\0', " "))
        .filter(|c| c.trim_end() == argv)
        .count()
}

#[test]
fn sigterm_hangs_up_sessions_audits_them_and_exits_within_the_grace() {
    if skip() {
        return;
    }
    let w = world();
    // An agent of its own (it sees the same runc containers), to be stopped.
    let root = std::env::temp_dir().join(format!("{}-term", prefix()));
    let mut agent = Agent::start_with(&root.join("agent"), "shutdown_grace = \"5s\"");
    let spawn = |script: &str| {
        let mut c = agent
            .dcos()
            .args(["task", "exec", &w.main.id, "sh", "-c", script])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut buf = [0u8; 3];
        std::io::Read::read_exact(c.stdout.as_mut().unwrap(), &mut buf).unwrap();
        c
    };
    // One that dies of the hangup, one that ignores it and needs the SIGKILL after grace_period (1s here).
    let plain = spawn("echo up; sleep 4747");
    let stubborn = spawn("trap '' HUP; echo up; sleep 4848 & sleep 4949; wait");
    // "up" comes before the shell starts the sleeps.
    assert!(eventually(30, || host_processes("sleep 4747") == 1 && host_processes("sleep 4949") == 1));
    // Both sessions left a start record while they run: a crash now would still leave a trace.
    let starts = agent.audit().into_iter().filter(|r| r["event"] == "session_start").count();
    assert_eq!(starts, 2, "{:?}", agent.audit());

    let t0 = Instant::now();
    // SAFETY: kill(2) on the agent, our own child.
    assert_eq!(unsafe { libc::kill(agent.pid(), libc::SIGTERM) }, 0);
    let exited = loop {
        if let Some(st) = agent.child.try_wait().unwrap() {
            break st;
        }
        assert!(t0.elapsed() < Duration::from_secs(30), "agent still running 30 s after SIGTERM");
        std::thread::sleep(Duration::from_millis(20));
    };
    let took = t0.elapsed();
    eprintln!("agent exited {took:?} after SIGTERM");
    assert!(exited.success(), "agent exit status {exited:?}");
    // shutdown_grace bounds the exit (plus slack for the runtime to wind down on a loaded machine; well short of
    // the 10 s default grace, so a configured grace that is ignored still fails).
    assert!(took < Duration::from_millis(7000), "agent took {took:?} to exit after SIGTERM");

    for (client, marker) in [(plain, "4747"), (stubborn, "4949")] {
        let out = client.wait_with_output().unwrap();
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(125), "{marker}: {err}");
        assert!(err.contains("agent is shutting down"), "{marker}: {err}");
        assert_eq!(err.lines().count(), 1, "{err}");
        let end = agent
            .audit()
            .into_iter()
            .find(|r| r["event"] == "session_end" && r["command"][2].as_str().unwrap().contains(marker))
            .unwrap_or_else(|| panic!("no end record for {marker}: {:?}", agent.audit()));
        assert_eq!(end["status"]["code"], "internal");
        assert!(end["status"]["message"].as_str().unwrap().contains("agent is shutting down"));
    }
    let recs = agent.audit();
    let ids = |ev: &str| {
        let mut v: Vec<String> =
            recs.iter().filter(|r| r["event"] == ev).map(|r| r["session"].as_str().unwrap().to_string()).collect();
        v.sort();
        v
    };
    assert_eq!(ids("session_start"), ids("session_end"), "every started session has its end record");
    assert!(
        eventually(30, || host_processes("sleep 4747") + host_processes("sleep 4848") + host_processes("sleep 4949")
            == 0),
        "the sessions' processes are gone"
    );
    let _ = std::fs::remove_dir_all(&root);
}

#[test]
fn a_session_cut_short_by_an_agent_crash_leaves_its_start_record_and_no_process() {
    if skip() {
        return;
    }
    let w = world();
    let root = std::env::temp_dir().join(format!("{}-crash", prefix()));
    let mut agent = Agent::start(&root.join("agent"));
    let mut c = agent
        .dcos()
        .args(["task", "exec", &w.main.id, "sh", "-c", "echo up; exec sleep 5353"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut buf = [0u8; 3];
    std::io::Read::read_exact(c.stdout.as_mut().unwrap(), &mut buf).unwrap();
    assert!(eventually(30, || host_processes("sleep 5353") == 1));
    // No chance to clean up: SIGKILL.
    agent.child.kill().unwrap();
    agent.child.wait().unwrap();
    let out = c.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(121), "session lost: {}", stderr(&out));
    // Said plainly, in one line, without the TLS library's wording or a link to its documentation.
    let err = stderr(&out);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("connection to the agent lost") && !err.contains("https://"), "{err}");
    let recs = agent.audit();
    let start = recs
        .iter()
        .find(|r| r["event"] == "session_start" && r["command"][2] == "echo up; exec sleep 5353")
        .unwrap_or_else(|| panic!("no start record: {recs:?}"));
    assert_eq!(start["user"], "admin");
    assert_eq!(start["container"], w.main.id.as_str());
    assert!(start["time"].as_str().is_some() && start["session"].as_str().is_some());
    assert!(!recs.iter().any(|r| r["event"] == "session_end"), "a killed agent writes nothing more");
    // The helper saw its control pipe close, as when a client is lost: SIGHUP.
    assert!(eventually(30, || host_processes("sleep 5353") == 0), "the session's process is gone");
    let _ = std::fs::remove_dir_all(&root);
}

/// `(soft, hard)` of "Max open files" in /proc/PID/limits.
fn nofile_of(pid: i32) -> (u64, u64) {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let line = limits.lines().find(|l| l.starts_with("Max open files")).unwrap();
    let f: Vec<u64> = line.split_whitespace().filter_map(|w| w.parse().ok()).collect();
    (f[0], f[1])
}

#[test]
fn the_agent_raises_its_open_files_limit_and_container_processes_get_the_original() {
    if skip() {
        return;
    }
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let (soft0, hard) = getrlimit(Resource::RLIMIT_NOFILE).unwrap();
    let low = 1024.min(hard / 2);
    // A container whose config sets no RLIMIT_NOFILE (runc spec's default sets one).
    let root = std::env::temp_dir().join(format!("{}-nofile", prefix()));
    let id = format!("{}-nofile", prefix());
    let bundle = root.join(&id);
    let _ = std::fs::remove_dir_all(&bundle);
    make_rootfs(&bundle.join("rootfs"));
    assert!(run(Command::new("runc").arg("spec").current_dir(&bundle)).status.success());
    let cfg_path = bundle.join("config.json");
    let mut cfg: serde_json::Value = serde_json::from_slice(&std::fs::read(&cfg_path).unwrap()).unwrap();
    cfg["process"]["terminal"] = false.into();
    cfg["process"]["args"] = serde_json::json!(["sleep", "100000"]);
    cfg["process"].as_object_mut().unwrap().remove("rlimits");
    std::fs::write(&cfg_path, serde_json::to_vec_pretty(&cfg).unwrap()).unwrap();
    let c = Container::run_bundle(&root, &id, bundle);
    // The agent starts with a low soft limit, as under systemd's default.
    setrlimit(Resource::RLIMIT_NOFILE, low, hard).unwrap();
    let agent = Agent::start(&root.join("agent"));
    setrlimit(Resource::RLIMIT_NOFILE, soft0, hard).unwrap();
    assert_eq!(nofile_of(agent.pid()), (hard, hard), "the agent raised its soft limit to the hard one");
    let o = agent.sh(&c.id, "ulimit -Sn; ulimit -Hn");
    assert_eq!(stdout(&o), format!("{low}\n{hard}\n"), "{}", stderr(&o));
    // A container that sets its own keeps it.
    let w = world();
    let o = agent.sh(&w.main.id, "ulimit -Sn; ulimit -Hn");
    assert_eq!(stdout(&o), "1024\n1024\n", "{}", stderr(&o));
    drop(c);
    let _ = std::fs::remove_dir_all(&root);
}

/// Runs in the agent's process before it executes: SIGHUP and SIGINT ignored, SIGUSR1 blocked, as `nohup` or a
/// shell's background job would leave them.
fn agent_under_nohup() -> std::io::Result<()> {
    // SAFETY: signal dispositions and the mask of the about-to-exec process; async-signal-safe calls.
    unsafe {
        libc::signal(libc::SIGHUP, libc::SIG_IGN);
        libc::signal(libc::SIGINT, libc::SIG_IGN);
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGUSR1);
        libc::sigprocmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
    }
    Ok(())
}

#[test]
fn sessions_of_an_agent_under_nohup_start_with_default_signals_and_die_of_the_hangup() {
    if skip() {
        return;
    }
    let w = world();
    // A long grace: only the hangup itself can end the session process within the wait below.
    let agent = Agent::start_set_up(
        &w.root.join(format!("{}-nohup-agent", prefix())),
        "grace_period = \"300s\"",
        ACL,
        agent_under_nohup,
    );
    let o = run(agent.dcos().args(["task", "exec", &w.main.id, "cat", "/proc/self/status"]));
    assert!(o.status.success(), "{}", stderr(&o));
    let status = stdout(&o);
    for field in ["SigIgn:", "SigBlk:"] {
        let line = status.lines().find(|l| l.starts_with(field)).unwrap_or_default();
        assert_eq!(line.trim_start_matches(field).trim(), "0000000000000000", "{field} of the session: {status}");
    }
    let marker = format!("sleep {}", 40000 + std::process::id() % 20000);
    let mut c = agent
        .dcos()
        .args(["task", "exec", &w.main.id, "sh", "-c", &format!("echo up; {marker}")])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut buf = [0u8; 3];
    std::io::Read::read_exact(c.stdout.as_mut().unwrap(), &mut buf).unwrap();
    assert!(eventually(30, || host_processes(&marker) == 1), "the session process is up");
    c.kill().unwrap();
    c.wait().unwrap();
    assert!(eventually(30, || host_processes(&marker) == 0), "the hangup of a lost client ends {marker}");
}

/// The container's init of the test below: it watches for a process whose arguments hold the marker and starts,
/// once per process, a writer of its own session that writes into that process's stdout (a pipe, or the
/// session's terminal with `-t`) for ever. The marker is put together at run time so that this script's own
/// arguments do not hold it.
const HOLDER: &str = "m=victim; m=\"$m-mark\"; seen=' '; while :; do for p in /proc/[0-9]*; do \
    case \"$(tr '\\0' ' ' < $p/cmdline 2>/dev/null)\" in *\"$m\"*) case \"$seen\" in *\" $p \"*) ;; *) \
    seen=\"$seen$p \"; setsid sh -c 'while :; do echo HELD; sleep 0.2; done' > $p/fd/1 2>/dev/null & ;; esac;; \
    esac; done; sleep 0.05; done";

/// The attack: a process of the container (no privilege beyond the container's root) opens the stdout of
/// another user's session through `/proc/PID/fd/1` and keeps writing into it. Output after the command's exit
/// is forwarded only until it is quiet for `output_drain`, which never comes: without a bound the session
/// would never send its exit status, its client would wait for ever and its slot and record would stay open.
/// `output_drain_max` (3 s here) bounds it: the client gets the command's own exit code.
#[test]
fn a_container_process_writing_into_a_finished_sessions_output_cannot_hold_it_open() {
    if skip() {
        return;
    }
    let w = world();
    let opts = ContainerOpts {
        tweak: Some(|cfg| cfg["process"]["args"] = serde_json::json!(["sh", "-c", HOLDER])),
        ..Default::default()
    };
    let c = Container::start(&w.root, &format!("{}-holder", prefix()), &opts);
    let root = std::env::temp_dir().join(format!("{}-hold", prefix()));
    let agent = Agent::start_with(&root.join("agent"), "output_drain_max = \"3s\"");
    for flags in [&[][..], &["-t"]] {
        let mut client = agent
            .dcos()
            .args(["task", "exec"])
            .args(flags)
            .args([&c.id, "sh", "-c", "sleep 2; echo victim-done; exit 5", "victim-mark"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let st = wait_within(&mut client, 60, "a session whose output a container process holds");
        let out = client.wait_with_output().unwrap();
        let text = stdout(&out);
        assert!(text.contains("HELD"), "{flags:?}: the attack wrote into the session: {text}");
        assert!(text.contains("victim-done"), "{flags:?}: {text}");
        assert_eq!(st.code(), Some(5), "{flags:?}: {}", stderr(&out));
    }
    let ends = agent.audit().into_iter().filter(|r| r["event"] == "session_end").count();
    assert_eq!(ends, 2, "{:?}", agent.audit());

    // A shutdown ends the drain at once: the session still gets its status and its end record, where waiting
    // for the quiet would have run out `shutdown_grace` and lost both.
    let mut agent = Agent::start_with(&root.join("agent2"), "output_drain_max = \"600s\"\nshutdown_grace = \"5s\"");
    let mut client = agent
        .dcos()
        .args(["task", "exec", &c.id, "sh", "-c", "echo victim-up; sleep 1; exit 6", "victim-mark"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = client.stdout.take().unwrap();
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    // Draining: the command has exited (it prints once, then exits after 1 s) and the holder is writing.
    while !String::from_utf8_lossy(&seen).contains("HELD\nHELD\nHELD") {
        let n = std::io::Read::read(&mut out, &mut buf).unwrap();
        assert!(n > 0, "output ended: {}", String::from_utf8_lossy(&seen));
        seen.extend_from_slice(&buf[..n]);
    }
    std::thread::sleep(Duration::from_millis(1500));
    // SAFETY: kill(2) on the agent, our own child.
    assert_eq!(unsafe { libc::kill(agent.pid(), libc::SIGTERM) }, 0);
    let reader = std::thread::spawn(move || std::io::Read::read_to_end(&mut out, &mut Vec::new()));
    let st = wait_within(&mut client, 60, "a draining session at shutdown");
    let _ = reader.join();
    let exited = wait_within(&mut agent.child, 60, "the agent after SIGTERM");
    assert!(exited.success(), "{exited:?}");
    assert_eq!(st.code(), Some(6), "the command's own status");
    let end = agent.audit().into_iter().find(|r| r["event"] == "session_end");
    assert_eq!(end.map(|r| r["status"]["code"].clone()), Some(serde_json::json!(6)), "{:?}", agent.audit());
    let _ = std::fs::remove_dir_all(&root);
}
