//! Attacks on the exec path, performed for real: a hostile client or a hostile container (root in it, with
//! `CAP_SYS_PTRACE` where named) tries to reach the host through the session's working directory, the descriptors
//! of the process that joins the container, the passwd and group lookups, uid/gid -1, `--cap-add`, and tries to
//! run outside the container's seccomp filter. Each test names the attack it performs; the host is reached when
//! a session lists the host-only marker directory under the host's /tmp or reads the agent's token-signing key.

#[path = "support/registry.rs"]
mod registry;
mod support;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::time::{Duration, Instant};
use support::*;

/// `../` often enough to climb from any host directory to the host's `/` (and to stay at `/` inside).
const UP: &str = "../../../../../../../../../../../../../../../";

/// A container of this test process, dropped (deleted) by the caller.
fn container(name: &str, o: &ContainerOpts) -> Container {
    Container::start(&world().root, &format!("{}-{name}", prefix()), o)
}

fn with_ptrace() -> ContainerOpts {
    ContainerOpts { tweak: Some(add_sys_ptrace), ..Default::default() }
}

/// Puts the attacker binary at `/attacker` in the container.
fn install_attacker(c: &Container) {
    let dst = c.rootfs().join("attacker");
    std::fs::copy(attacker(), &dst).unwrap();
    std::fs::set_permissions(&dst, std::fs::Permissions::from_mode(0o755)).unwrap();
}

/// Lines of the signing key long enough not to appear by chance.
fn key_lines(agent: &Agent) -> Vec<String> {
    let key = std::fs::read_to_string(agent.dir.join("token-signing.key")).expect("the agent's signing key");
    let lines: Vec<String> =
        key.lines().filter(|l| l.len() >= 16 && !l.starts_with("-----")).map(str::to_string).collect();
    assert!(!lines.is_empty(), "the key has a body");
    lines
}

fn head(s: &str) -> String {
    s.lines().take(12).collect::<Vec<_>>().join(" | ")
}

/// How the sessions of a workdir attack ended: refused on their working directory, or run with a cwd inside the
/// container; everything else is a failure (described).
#[derive(Default)]
struct Outcomes {
    refused: usize,
    inside: usize,
    failures: Vec<String>,
}

impl Outcomes {
    fn add(&mut self, agent: &Agent, task: &str, opts: &[&str], label: &str) {
        match workdir_attack(agent, task, opts, label) {
            Ok(true) => self.refused += 1,
            Ok(false) => self.inside += 1,
            Err(e) => self.failures.push(e),
        }
    }

    fn check(&self, what: &str) {
        note(&format!(
            "{what}: {} sessions refused on their working directory, {} ran inside",
            self.refused, self.inside
        ));
        report(what, &self.failures, self.refused + self.inside + self.failures.len());
    }
}

/// One `dcos task exec OPTS TASK sh -c PROBE`: the probe lists the host-only marker and reads the signing key
/// through `..` from wherever its cwd is. Ok(true) when the session failed on its working directory (exit 125),
/// Ok(false) when it ran with a cwd inside the container, otherwise a description of what went wrong.
fn workdir_attack(agent: &Agent, task: &str, opts: &[&str], label: &str) -> Result<bool, String> {
    let m = host_marker();
    let key = agent.dir.join("token-signing.key");
    let probe = format!(
        "echo PWD=$(pwd -P 2>&1); \
         if [ \"$(stat -c %d:%i \"$(pwd -P)\" 2>/dev/null)\" = \"$(stat -c %d:%i .)\" ]; then echo CWD-INSIDE; fi; \
         ls -a {UP}tmp {UP}tmp/{name} 2>&1; cat {UP}{key} 2>&1; ls -a {UP}tmp/{name} . .. 2>&1; true",
        name = m.name,
        key = key.display().to_string().trim_start_matches('/'),
    );
    let o = run(agent.dcos().args(["task", "exec"]).args(opts).args([task, "sh", "-c", &probe]));
    let (out, err) = (stdout(&o), stderr(&o));
    let reached_marker = out.contains(&m.name);
    let read_key = key_lines(agent).iter().any(|l| out.contains(l.as_str()));
    let refused = o.status.code() == Some(125) && err.contains("working directory");
    let inside = out.contains("CWD-INSIDE");
    if reached_marker || read_key || !(refused || inside) {
        Err(format!(
            "{label}: exit {:?}, host marker listed: {reached_marker}, signing key read: {read_key}, \
             cwd inside: {inside}; stdout: {}; stderr: {}",
            o.status.code(),
            head(&out),
            head(&err)
        ))
    } else {
        Ok(refused)
    }
}

/// The matrix of issue 7: as the container's root and as uid 1000, with and without a terminal.
fn variants() -> Vec<(Vec<&'static str>, &'static str)> {
    vec![
        (vec![], "root"),
        (vec!["-t"], "root -t"),
        (vec!["-u", "1000"], "uid 1000"),
        (vec!["-u", "1000", "-t"], "uid 1000 -t"),
    ]
}

fn report(what: &str, failures: &[String], tried: usize) {
    assert!(failures.is_empty(), "{what}: {} of {tried} sessions failed:\n{}", failures.len(), failures.join("\n"));
}

#[test]
fn workdir_through_proc_self_fd_never_reaches_the_host() {
    if skip() {
        return;
    }
    let w = world();
    let c = container("fdcwd", &ContainerOpts::default());
    let mut seen = Outcomes::default();
    for n in 0..=24 {
        let wd = format!("/proc/self/fd/{n}");
        for (opts, who) in variants() {
            let mut all = vec!["-w", wd.as_str()];
            all.extend(opts);
            seen.add(&w.agent, &c.id, &all, &format!("-w {wd} as {who}"));
        }
    }
    seen.check("-w /proc/self/fd/N");
}

#[test]
fn debug_workdir_through_proc_self_fd_never_reaches_the_host() {
    if skip() {
        return;
    }
    let f = registry::fixture();
    let c = container("dbgcwd", &ContainerOpts::default());
    let mut seen = Outcomes::default();
    for n in 0..=24 {
        let wd = format!("/proc/self/fd/{n}");
        for (opts, who) in variants() {
            let mut all = vec!["--debug-image", f.busybox.as_str(), "-w", wd.as_str()];
            all.extend(opts);
            seen.add(&f.agent, &c.id, &all, &format!("--debug-image -w {wd} as {who}"));
        }
    }
    seen.check("--debug-image -w /proc/self/fd/N");
}

/// Replaces `/app` in the container's root with a symlink to `target`, as the container's root can.
fn plant(c: &Container, path: &str, target: &str) {
    let p = c.rootfs().join(path.trim_start_matches('/'));
    let _ = std::fs::remove_file(&p).or_else(|_| std::fs::remove_dir_all(&p));
    std::os::unix::fs::symlink(target, &p).unwrap();
}

#[test]
fn planted_symlink_workdir_never_reaches_the_host() {
    if skip() {
        return;
    }
    let w = world();
    let c = container("symcwd", &ContainerOpts::default());
    let mut seen = Outcomes::default();
    for n in 0..=24 {
        plant(&c, "/app", &format!("/proc/self/fd/{n}"));
        for (opts, who) in variants() {
            let mut all = vec!["-w", "/app"];
            all.extend(opts);
            seen.add(&w.agent, &c.id, &all, &format!("-w /app -> /proc/self/fd/{n} as {who}"));
        }
    }
    seen.check("planted /app symlink");
}

#[test]
fn planted_symlink_as_the_config_cwd_never_reaches_the_host() {
    if skip() {
        return;
    }
    let w = world();
    // The container starts in a real /app, then replaces it with a symlink (runc itself followed it at start).
    let c = container(
        "cfgcwd",
        &ContainerOpts {
            tweak: Some(|cfg| cfg["process"]["cwd"] = "/app".into()),
            prepare: Some(|r| std::fs::create_dir_all(r.join("app")).unwrap()),
            ..Default::default()
        },
    );
    let mut seen = Outcomes::default();
    for n in 0..=24 {
        plant(&c, "/app", &format!("/proc/self/fd/{n}"));
        for (opts, who) in variants() {
            seen.add(&w.agent, &c.id, &opts, &format!("config cwd /app -> /proc/self/fd/{n} as {who}"));
        }
    }
    seen.check("config.json cwd through a planted symlink");
}

// ---------------------------------------------------------------------------------------------------------------
// uid and gid -1 (setresuid(-1) changes nothing: the process would stay root).

/// Exit 125 with "out of range", and the command (`id`) never ran.
fn refused_out_of_range(o: &Output, label: &str) -> Option<String> {
    let (out, err) = (stdout(o), stderr(o));
    if o.status.code() == Some(125) && err.contains("out of range") && !out.contains("uid=") {
        None
    } else {
        Some(format!("{label}: exit {:?}, stdout: {}, stderr: {}", o.status.code(), head(&out), head(&err)))
    }
}

#[test]
fn uid_and_gid_minus_one_in_the_request_are_refused() {
    if skip() {
        return;
    }
    let w = world();
    let mut failures = Vec::new();
    let values = ["4294967295", "1000:4294967295", "4294967295:1000", "4294967296", "1000:4294967296", "2147483648"];
    for u in values {
        for tty in [false, true] {
            let mut c = w.agent.dcos();
            c.args(["task", "exec", "-u", u]);
            if tty {
                c.arg("-t");
            }
            let o = run(c.args([&w.main.id, "id"]));
            failures.extend(refused_out_of_range(&o, &format!("-u {u}{}", if tty { " -t" } else { "" })));
        }
    }
    report("-u with ids out of range", &failures, values.len() * 2);
}

#[test]
fn uid_and_gid_minus_one_from_passwd_and_group_are_refused() {
    if skip() {
        return;
    }
    let w = world();
    let c = container("bigids", &ContainerOpts::default());
    let etc = c.rootfs().join("etc");
    let mut passwd = std::fs::read_to_string(etc.join("passwd")).unwrap();
    passwd.push_str("bigu:x:4294967295:1000:big:/:/bin/sh\nbigg:x:1000:4294967295:big:/:/bin/sh\n");
    passwd.push_str("hugeu:x:4294967296:1000:huge:/:/bin/sh\n");
    std::fs::write(etc.join("passwd"), passwd).unwrap();
    let mut group = std::fs::read_to_string(etc.join("group")).unwrap();
    group.push_str("biggrp:x:4294967295:\n");
    std::fs::write(etc.join("group"), group).unwrap();
    let mut failures = Vec::new();
    let cases = ["bigu", "bigg", "hugeu", "1000:biggrp", "app:biggrp", "bigu:1000"];
    for u in cases {
        let o = run(w.agent.dcos().args(["task", "exec", "-u", u, &c.id, "id"]));
        failures.extend(refused_out_of_range(&o, &format!("-u {u}")));
    }
    report("ids out of range from the container's passwd and group", &failures, cases.len());
}

#[test]
fn uid_and_gid_minus_one_from_config_json_are_refused() {
    if skip() {
        return;
    }
    let w = world();
    type Tweak = fn(&mut serde_json::Value);
    let cases: [(&str, Tweak); 3] = [
        ("process.user.uid 4294967295", |cfg| cfg["process"]["user"]["uid"] = 4294967295u32.into()),
        ("process.user.gid 4294967295", |cfg| cfg["process"]["user"]["gid"] = 4294967295u32.into()),
        ("process.user.additionalGids [4294967295]", |cfg| {
            cfg["process"]["user"]["additionalGids"] = serde_json::json!([2000, 4294967295u32])
        }),
    ];
    let mut failures = Vec::new();
    for (i, (what, tweak)) in cases.iter().enumerate() {
        let id = format!("{}-cfgid{i}", prefix());
        let started = Container::try_start(&w.root, &id, &ContainerOpts { tweak: Some(*tweak), ..Default::default() });
        let c = match started {
            Ok(c) => {
                let o = c.runc_exec(&[], &["id"]);
                note(&format!("runc ran a container with {what}; `runc exec id` in it: {}", stdout(&o).trim()));
                c
            }
            Err(e) => {
                // runc refuses it: start it plain and then write the value into the bundle's config.json, which
                // the agent reads for every session (whoever writes the bundle, the agent must not trust it).
                note(&format!(
                    "runc refuses to run a container with {what} ({}); the value is written into \
                     the running container's config.json instead",
                    e.lines().last().unwrap_or_default().trim()
                ));
                let c = Container::start(&w.root, &id, &ContainerOpts::default());
                let path = c.bundle.join("config.json");
                let mut cfg: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
                tweak(&mut cfg);
                std::fs::write(&path, serde_json::to_vec_pretty(&cfg).unwrap()).unwrap();
                c
            }
        };
        for u in [None, Some("app"), Some("1000:1000")] {
            let mut cmd = w.agent.dcos();
            cmd.args(["task", "exec"]);
            if let Some(u) = u {
                cmd.args(["-u", u]);
            }
            let o = run(cmd.args([&c.id, "id"]));
            match u {
                // With the config's user in use, the value reaches the credentials: refused.
                None => failures.extend(refused_out_of_range(&o, what)),
                // additionalGids are kept with any -u: refused too; a replaced uid/gid is simply not used.
                Some(u) if what.contains("additionalGids") => {
                    failures.extend(refused_out_of_range(&o, &format!("{what} with -u {u}")))
                }
                Some(u) => {
                    let out = stdout(&o);
                    if out.contains("uid=0") || out.contains("gid=0") || out.contains("4294967295") {
                        failures.push(format!("{what} with -u {u}: {}", head(&out)));
                    }
                }
            }
        }
    }
    report("ids out of range from config.json", &failures, cases.len() * 3);
}

/// Says something on the terminal that the report of this run needs (the harness captures print!).
fn note(s: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "NOTE {}: {s}", std::thread::current().name().unwrap_or("?"));
}

// ---------------------------------------------------------------------------------------------------------------
// A container-planted /etc/passwd or /etc/group that points at a host file.

/// Host-only passwd and group files (mode 0600) that define `hostonly` (4242:4343) and `hostgrp` (4343, with
/// `app` as a member).
fn host_account_files() -> (PathBuf, PathBuf) {
    let dir = host_marker().dir.clone();
    let passwd = dir.join("passwd");
    let group = dir.join("group");
    std::fs::write(&passwd, "hostonly:x:4242:4343:host only:/tmp:/bin/sh\n").unwrap();
    std::fs::write(&group, "hostgrp:x:4343:app,hostonly\n").unwrap();
    for f in [&passwd, &group] {
        std::fs::set_permissions(f, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    (passwd, group)
}

/// Points the container's /etc/`file` (passwd or group) at `target`, runs the lookups that would use an entry of
/// the host files, and reports any session that got one of their ids.
fn lookups_through(agent: &Agent, c: &Container, file: &str, target: &str, failures: &mut Vec<String>) {
    let etc = c.rootfs().join("etc");
    let original = std::fs::read(etc.join(format!("{file}.orig"))).unwrap_or_else(|_| {
        let o = std::fs::read(etc.join(file)).unwrap();
        std::fs::write(etc.join(format!("{file}.orig")), &o).unwrap();
        o
    });
    plant(c, &format!("/etc/{file}"), target);
    let users: &[&str] = if file == "passwd" { &["hostonly"] } else { &["1000:hostgrp", "app"] };
    for user in users {
        let o = run(agent.dcos().args(["task", "exec", "-u", user, &c.id, "sh", "-c", "id -u; id -g; id -G"]));
        let out = stdout(&o);
        if out.contains("4242") || out.contains("4343") {
            failures.push(format!("/etc/{file} -> {target}, -u {user}: got a host id: {}", head(&out)));
        }
    }
    std::fs::remove_file(etc.join(file)).unwrap();
    std::fs::write(etc.join(file), original).unwrap();
}

/// Where a symlink could lead from a directory descriptor of the host (its /proc, its /, or anything else).
fn through_dir(base: &str, host_file: &Path, agent_pid: i32) -> Vec<String> {
    let h = host_file.display().to_string();
    let rel = h.trim_start_matches('/');
    vec![format!("{base}/1/root{h}"), format!("{base}/{agent_pid}/root{h}"), format!("{base}/{UP}{rel}")]
}

#[test]
fn planted_passwd_and_group_symlinks_never_read_host_files() {
    if skip() {
        return;
    }
    let w = world();
    let (passwd, group) = host_account_files();
    let c = container("pwlink", &ContainerOpts::default());
    let agent_pid = w.agent.pid();
    let mut failures = Vec::new();
    let mut tried = 0;
    for (file, host) in [("passwd", &passwd), ("group", &group)] {
        let h = host.display().to_string();
        let rel = h.trim_start_matches('/').to_string();
        let mut t = vec![
            h.clone(),
            format!("/proc/1/root/{UP}{rel}"),
            format!("/proc/1/root{h}"),
            format!("/proc/1/cwd/{UP}{rel}"),
            format!("/proc/self/root/{UP}{rel}"),
            format!("/proc/self/cwd/{UP}{rel}"),
            format!("/proc/thread-self/cwd/{UP}{rel}"),
            format!("../../../../../../..{h}"),
        ];
        for n in 0..=24 {
            t.extend(through_dir(&format!("/proc/self/fd/{n}"), host, agent_pid));
        }
        // An absolute chain: /etc/FILE -> /etc/chain1 -> /etc/chain2 -> the host file.
        plant(&c, "/etc/chain2", &h);
        plant(&c, "/etc/chain1", "/etc/chain2");
        t.push("/etc/chain1".into());
        for target in &t {
            tried += 1;
            lookups_through(&w.agent, &c, file, target, &mut failures);
        }
    }
    report("planted passwd/group symlinks", &failures, tried);
}

/// Waits for `path` to exist (and be non-empty) for up to `secs`.
fn wait_file(path: &Path, secs: u64) -> Option<String> {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while Instant::now() < deadline {
        if let Ok(s) = std::fs::read_to_string(path) {
            if !s.is_empty() {
                return Some(s);
            }
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    None
}

#[test]
fn stopped_child_does_not_lend_its_descriptors_to_passwd_lookups() {
    if skip() {
        return;
    }
    let w = world();
    let (passwd, group) = host_account_files();
    // No extra capability: the container's root can SIGSTOP the new process and point symlinks through it.
    let c = container("stopped", &ContainerOpts::default());
    install_attacker(&c);
    let hold = c.rootfs().join("tmp/hold");
    std::fs::create_dir_all(&hold).unwrap();
    c.runc_exec_detached(&["/attacker", "hold", "/tmp/hold", "true"]);
    std::thread::sleep(Duration::from_millis(200));
    // Sessions until one is caught before its execve.
    let mut held_session = None;
    for _ in 0..200 {
        let child = w
            .agent
            .dcos()
            .args(["task", "exec", &c.id, "true"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut child = Some(child);
        while Instant::now() < deadline {
            if hold.join("held").exists() {
                held_session = child.take();
                break;
            }
            if let Some(Ok(Some(_))) = child.as_mut().map(|c| c.try_wait()) {
                break;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        if let Some(mut ch) = child {
            let _ = ch.wait();
        }
        if held_session.is_some() {
            break;
        }
    }
    let held = std::fs::read_to_string(hold.join("held")).expect("a session's process was stopped before execve");
    let pid: i32 = held.split_whitespace().next().unwrap().parse().unwrap();
    let fds = std::fs::read_to_string(hold.join("fds")).unwrap_or_default();
    note(&format!("held pid {pid} ({}) with fd links: {}", held.trim(), fds.lines().collect::<Vec<_>>().join(", ")));
    let mut failures = Vec::new();
    let mut tried = 0;
    for (file, host) in [("passwd", &passwd), ("group", &group)] {
        let h = host.display().to_string();
        let rel = h.trim_start_matches('/').to_string();
        let mut targets = vec![
            format!("/proc/{pid}/cwd/{UP}{rel}"),
            format!("/proc/{pid}/root/{UP}{rel}"),
            format!("/proc/{pid}/root{h}"),
        ];
        for n in 0..=24 {
            targets.extend(through_dir(&format!("/proc/{pid}/fd/{n}"), host, w.agent.pid()));
        }
        for t in &targets {
            tried += 1;
            lookups_through(&w.agent, &c, file, t, &mut failures);
        }
    }
    tried += ptmx_through(&w.agent, &c, pid, &mut failures);
    std::fs::write(hold.join("release"), "").unwrap();
    let o = held_session.unwrap().wait_with_output().unwrap();
    assert_eq!(o.status.code(), Some(0), "the held session finishes once released: {}", stderr(&o));
    report("passwd/group through a stopped session process", &failures, tried);
}

/// Points the container's /dev/ptmx (on its /dev tmpfs, so from inside) at a host file through the stopped
/// process `pid` and out of the root, runs a terminal session for each, and reports every one after which the host
/// file had been opened (inotify). Returns how many were tried.
fn ptmx_through(agent: &Agent, c: &Container, pid: i32, failures: &mut Vec<String>) -> usize {
    let dir = host_marker().dir.join("dev");
    std::fs::create_dir_all(&dir).unwrap();
    let target = dir.join("ptmx");
    std::fs::write(&target, "").unwrap();
    let h = target.display().to_string();
    let rel = h.trim_start_matches('/').to_string();
    let mut targets = vec![h.clone(), format!("/proc/1/root{h}"), format!("/proc/{pid}/cwd/{UP}{rel}")];
    for n in 0..=24 {
        targets.extend(through_dir(&format!("/proc/{pid}/fd/{n}"), &target, agent.pid()));
    }
    // SAFETY: inotify_init1 takes flags and returns a new fd (owned below) or -1.
    let ino = unsafe { libc::inotify_init1(libc::IN_NONBLOCK | libc::IN_CLOEXEC) };
    assert!(ino >= 0);
    // SAFETY: ino is a fresh fd that nothing else owns.
    let ino = unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(ino) };
    let cdir = std::ffi::CString::new(dir.display().to_string()).unwrap();
    let raw = std::os::fd::AsRawFd::as_raw_fd(&ino);
    // SAFETY: a valid inotify fd and a NUL-terminated path that outlives the call.
    let watch = unsafe { libc::inotify_add_watch(raw, cdir.as_ptr(), libc::IN_OPEN) };
    assert!(watch >= 0);
    let opened = || {
        let mut buf = [0u8; 4096];
        // SAFETY: read into a buffer we own.
        unsafe { libc::read(std::os::fd::AsRawFd::as_raw_fd(&ino), buf.as_mut_ptr().cast(), buf.len()) > 0 }
    };
    for t in &targets {
        let o = c.runc_exec(&[], &["sh", "-c", &format!("rm -f /dev/ptmx && ln -s '{t}' /dev/ptmx")]);
        assert!(o.status.success(), "planting /dev/ptmx: {}", stderr(&o));
        let o = run(agent.dcos().args(["task", "exec", "-t", &c.id, "true"]));
        if opened() {
            failures.push(format!("/dev/ptmx -> {t}: the host file was opened (session exit {:?})", o.status.code()));
        }
    }
    let o = c.runc_exec(&[], &["sh", "-c", "rm -f /dev/ptmx && ln -s pts/ptmx /dev/ptmx"]);
    assert!(o.status.success());
    targets.len()
}

/// Runs `attacker MODE` in `c`, then `sessions` × `dcos task exec OPTS C true` one after another (session i with
/// `variants[i % len]`); returns the exit codes
/// seen (code -> count; `None` for a session still running after a minute, which is then killed; the run stops
/// after three of those) and the attacker's log.
fn race(
    c: &Container,
    mode: &str,
    sessions: usize,
    variants: &[&[&str]],
) -> (std::collections::BTreeMap<Option<i32>, usize>, String) {
    race_with(&world().agent, c, mode, sessions, variants)
}

/// [`race`] through `agent`.
fn race_with(
    agent: &Agent,
    c: &Container,
    mode: &str,
    sessions: usize,
    variants: &[&[&str]],
) -> (std::collections::BTreeMap<Option<i32>, usize>, String) {
    install_attacker(c);
    let log = c.rootfs().join(format!("tmp/{mode}.log"));
    c.runc_exec_detached(&["/attacker", mode, &format!("/tmp/{mode}.log"), &host_marker().name]);
    assert!(wait_file(&log, 10).is_some(), "the attacker started");
    let mut codes = std::collections::BTreeMap::new();
    let mut odd = Vec::new();
    for i in 0..sessions {
        let mut child = agent
            .dcos()
            .args(["task", "exec"])
            .args(variants[i % variants.len()])
            .args([&c.id, "true"])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(60);
        let code = loop {
            if let Some(st) = child.try_wait().unwrap() {
                break Some(st.code());
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
            std::thread::sleep(Duration::from_millis(2));
        };
        let err = match (code, child.stderr.take()) {
            (Some(_), Some(mut e)) => {
                let mut s = String::new();
                let _ = std::io::Read::read_to_string(&mut e, &mut s);
                s
            }
            _ => "still running after 60 s".into(),
        };
        let code = code.flatten();
        *codes.entry(code).or_insert(0) += 1;
        if code != Some(0) && odd.len() < 5 {
            odd.push(format!("session {i}: exit {code:?}: {}", head(&err)));
        }
        if codes.get(&None).copied().unwrap_or(0) >= 3 {
            break;
        }
    }
    std::fs::write(log.with_extension("log.stop"), "").unwrap();
    // Its log is complete once it says DONE.
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut text = String::new();
    while Instant::now() < deadline {
        text = std::fs::read_to_string(&log).unwrap_or_default();
        if text.contains("\nDONE") {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    if !odd.is_empty() {
        note(&format!("{mode}: failed sessions: {}", odd.join("; ")));
    }
    (codes, text)
}

/// Counts of what the attacker obtained, by how and type, and the lines that show an escape (a directory or
/// regular file, a pty master, or an ESCAPE line).
fn grabbed(log: &str) -> (std::collections::BTreeMap<String, usize>, Vec<String>) {
    let mut counts = std::collections::BTreeMap::new();
    let mut bad = Vec::new();
    for l in log.lines() {
        if let Some(rest) = l.strip_prefix("GOT ") {
            let how = rest.split_whitespace().next().unwrap_or("?");
            let ty = rest.split_whitespace().find_map(|f| f.strip_prefix("type=")).unwrap_or("?");
            *counts.entry(format!("{how} {ty}")).or_insert(0) += 1;
            // A directory or file, or a terminal's master (5:2): input could be injected into the session.
            if ty == "dir" || ty == "reg" || (ty == "chr" && rest.contains(" rdev=5:2 ")) {
                bad.push(l.to_string());
            }
        } else if ["ESCAPE", "SEIZED", "FORGED", "KEPT"].iter().any(|p| l.starts_with(p)) {
            let k = l.split_whitespace().next().unwrap().to_string();
            *counts.entry(k).or_insert(0) += 1;
            if l.starts_with("ESCAPE") {
                bad.push(l.to_string());
            }
        }
    }
    bad.dedup();
    if bad.len() > 30 {
        let n = bad.len();
        bad.truncate(30);
        bad.push(format!("... {n} lines in all"));
    }
    (counts, bad)
}

#[test]
fn ptrace_race_on_new_processes_reaches_nothing_of_the_host() {
    if skip() {
        return;
    }
    let c = container("ptrace", &with_ptrace());
    let o = c.runc_exec(&[], &["grep", "CapEff", "/proc/self/status"]);
    let eff = u64::from_str_radix(stdout(&o).split_whitespace().last().unwrap_or("0"), 16).unwrap();
    assert!(eff & (1 << 19) != 0, "CAP_SYS_PTRACE (bit 19) in the container: {}", stdout(&o));
    let (codes, log) = race(&c, "grab", 1000, &[&[]]);
    let (counts, bad) = grabbed(&log);
    let seized_before_exec = log.lines().filter(|l| l.starts_with("SEIZED ") && !l.ends_with(" comm=true")).count();
    note(&format!(
        "1000 sessions under a ptrace racer: exit codes {codes:?}; attacker obtained {counts:?}; \
         {seized_before_exec} processes seized before their execve"
    ));
    assert!(
        codes.get(&Some(0)) == Some(&1000) && bad.is_empty(),
        "every session exits 0 (no status forged): {codes:?}; the racer obtained {counts:?}; host directories or \
         files reached:\n{}",
        bad.join("\n")
    );
}

#[test]
fn ptrace_race_on_debug_sessions_reaches_nothing_of_the_host() {
    if skip() {
        return;
    }
    let f = registry::fixture();
    let c = container("ptracedbg", &with_ptrace());
    let image = f.busybox.as_str();
    let (codes, log) =
        race_with(&f.agent, &c, "grab", 300, &[&["--debug-image", image], &["--debug-image", image, "-t"]]);
    let (counts, bad) = grabbed(&log);
    note(&format!("300 debug sessions under a ptrace racer: exit codes {codes:?}; attacker obtained {counts:?}"));
    assert!(
        codes.get(&Some(0)) == Some(&300) && bad.is_empty(),
        "every session exits 0 (no status forged): {codes:?}; the racer obtained {counts:?}; host directories or \
         files reached:\n{}",
        bad.join("\n")
    );
}

#[test]
fn ptrace_racer_keeping_session_sockets_neither_hangs_nor_forges_a_session() {
    if skip() {
        return;
    }
    let c = container("keeper", &with_ptrace());
    let (codes, log) = race(&c, "keep", 200, &[&[]]);
    let (counts, _) = grabbed(&log);
    note(&format!("200 sessions, the racer keeping copies of their sockets: exit codes {codes:?}; {counts:?}"));
    assert_eq!(codes.get(&Some(0)), Some(&200), "every session ends, with exit 0: {codes:?}; {counts:?}");
}

#[test]
fn stopped_new_processes_hold_no_host_directory_or_file() {
    if skip() {
        return;
    }
    let c = container("stopper", &with_ptrace());
    let o = c.runc_exec(&[], &["grep", "CapEff", "/proc/self/status"]);
    let container_caps = u64::from_str_radix(stdout(&o).split_whitespace().last().unwrap_or("0"), 16).unwrap();
    // A third of them with a terminal (the pty's master must never be in the container's reach either), a third
    // as uid 1000.
    let (codes, log) = race(&c, "stop", 300, &[&[], &["-t"], &["-u", "1000"]]);
    // Caught before execve (comm is not yet `true`), a process already has no capability the container lacks.
    let mut before_exec = std::collections::BTreeSet::new();
    let mut over_privileged = Vec::new();
    for l in log.lines().filter(|l| l.starts_with("STATUS ") && !l.contains(" comm=true ")) {
        let field = |k: &str| l.split_whitespace().find_map(|f| f.strip_prefix(k)).unwrap_or("?").to_string();
        let caps = u64::from_str_radix(&field("CapEff="), 16).unwrap_or(u64::MAX);
        if caps & !container_caps != 0 {
            over_privileged.push(l.to_string());
        }
        before_exec.insert(format!("comm={} CapEff={} Uid={}", field("comm="), field("CapEff="), field("Uid=")));
    }
    note(&format!("processes stopped before execve: {before_exec:?}"));
    let (counts, bad) = grabbed(&log);
    let links: std::collections::BTreeSet<String> = log
        .lines()
        .filter_map(|l| l.strip_prefix("LINK "))
        .filter_map(|l| l.split_once(' ').and_then(|(_, r)| r.split_once(' ')).map(|(_, link)| link.to_string()))
        // pipe:[1234] -> pipe:[]
        .map(|l| match l.split_once('[') {
            Some((kind, _)) => format!("{kind}[]"),
            None => l,
        })
        .collect();
    note(&format!("300 sessions, each new pid stopped and listed: exit codes {codes:?}; {counts:?}; links {links:?}"));
    let masters: Vec<&String> = links.iter().filter(|l| l.contains("ptmx")).collect();
    assert!(
        codes.get(&Some(0)) == Some(&300) && bad.is_empty() && masters.is_empty() && over_privileged.is_empty(),
        "exit codes {codes:?}; pty masters held: {masters:?}; capabilities beyond the container's \
         ({container_caps:x}) before execve: {over_privileged:?}; host directories or files held:\n{}",
        bad.join("\n")
    );
}

// ---------------------------------------------------------------------------------------------------------------
// Seccomp: the container's filter applies to exec'd processes exactly as `runc exec` applies it.

const SECCOMP_PROBE: &str =
    "rmdir /tmp/x 2>/dev/null; mkdir /tmp/x 2>&1; echo mkdir=$?; A/attacker socket 2; A/attacker socket 10; \
                             grep '^Seccomp:' /proc/self/status";

#[test]
fn seccomp_filter_of_the_container_denies_in_exec_as_in_runc_exec() {
    if skip() {
        return;
    }
    let w = world();
    let c = container("seccomp", &ContainerOpts { tweak: Some(add_seccomp), ..Default::default() });
    install_attacker(&c);
    let probe = SECCOMP_PROBE.replace("A/", "/");
    let theirs = c.runc_exec(&[], &["sh", "-c", &probe]);
    let ours = w.agent.sh(&c.id, &probe);
    let want = [
        "Function not implemented",
        "mkdir=1",
        "socket 2: ok",
        "socket 10: Address family not supported",
        "Seccomp:\t2",
    ];
    for s in want {
        assert!(stdout(&theirs).contains(s), "runc exec shows {s:?}: {}", stdout(&theirs));
    }
    assert_eq!(stdout(&ours), stdout(&theirs), "dcos task exec shows what runc exec shows ({})", stderr(&ours));
    // With -u and a terminal too.
    let o = run(w.agent.dcos().args(["task", "exec", "-t", "-u", "1000", &c.id, "sh", "-c", &probe]));
    let out = stdout(&o).replace('\r', "");
    for s in want {
        assert!(out.contains(s), "-t -u 1000: {s:?}: {out}");
    }
}

#[test]
fn debug_session_gets_the_seccomp_filter_of_the_container() {
    if skip() {
        return;
    }
    let f = registry::fixture();
    let c = container("seccompdbg", &ContainerOpts { tweak: Some(add_seccomp), ..Default::default() });
    install_attacker(&c);
    let probe = SECCOMP_PROBE.replace("A/", "/target/");
    let theirs = c.runc_exec(&[], &["sh", "-c", &SECCOMP_PROBE.replace("A/", "/")]);
    let o = f.debug(&f.busybox, &[], &c.id, &["sh", "-c", &probe]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert_eq!(stdout(&o), stdout(&theirs), "the debug session is filtered like runc exec");
    // --cap-add does not lift the filter.
    let o = f.debug(&f.busybox, &["--cap-add", "SYS_PTRACE"], &c.id, &["sh", "-c", &probe]);
    assert_eq!(stdout(&o), stdout(&theirs), "{}", stderr(&o));
}

// ---------------------------------------------------------------------------------------------------------------
// --cap-add: only the configured allowlist.

#[test]
fn debug_cap_add_of_host_root_capabilities_is_refused() {
    if skip() {
        return;
    }
    let f = registry::fixture();
    let w = world();
    let mut failures = Vec::new();
    for cap in ["SYS_ADMIN", "MKNOD", "DAC_READ_SEARCH", "SYS_MODULE", "CAP_SYS_ADMIN"] {
        let o = f.debug(&f.busybox, &["--cap-add", cap], &w.main.id, &["grep", "CapEff", "/proc/self/status"]);
        let err = stderr(&o);
        let names_allowlist = err.contains("cap_add_allowed") || err.to_lowercase().contains("allowlist");
        if o.status.code() != Some(118) || !names_allowlist || !stdout(&o).is_empty() {
            failures.push(format!(
                "--cap-add {cap}: exit {:?}, stdout {}, stderr {}",
                o.status.code(),
                head(&stdout(&o)),
                head(&err)
            ));
        }
    }
    // SYS_PTRACE is on the default allowlist and still works (bit 19).
    let o = f.debug(&f.busybox, &["--cap-add", "SYS_PTRACE"], &w.main.id, &["grep", "CapEff", "/proc/self/status"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let eff = u64::from_str_radix(stdout(&o).split_whitespace().last().unwrap(), 16).unwrap();
    assert!(eff & (1 << 19) != 0, "{}", stdout(&o));
    report("--cap-add outside the allowlist", &failures, 5);
}

/// The host directory bind-mounted into the user-namespaced container below, holding a file only the host's
/// root may read.
fn userns_secret_dir() -> PathBuf {
    std::env::temp_dir().join(format!("{}-userns-secret", prefix()))
}

/// A container in a user namespace (its root is uid 100000 on the host) with the host directory above at
/// `/data`, that exits at once.
fn in_user_namespace(cfg: &mut serde_json::Value) {
    cfg["process"]["args"] = serde_json::json!(["sh", "-c", "exit 3"]);
    cfg["linux"]["namespaces"].as_array_mut().unwrap().push(serde_json::json!({"type": "user"}));
    let map = serde_json::json!([{"containerID": 0, "hostID": 100000, "size": 65536}]);
    cfg["linux"]["uidMappings"] = map.clone();
    cfg["linux"]["gidMappings"] = map;
    cfg["mounts"].as_array_mut().unwrap().push(serde_json::json!({
        "destination": "/data", "type": "bind", "source": userns_secret_dir(), "options": ["rbind", "ro"]
    }));
}

/// The attack: a container whose root is an unprivileged uid on the host (a user namespace) stops, and a user
/// with only `debug` opens a sandbox on it. Without a user namespace of its own the sandbox would run the
/// container's uid 0 and capabilities as the host's root: the host-root-only file in the container's bind mount,
/// which the container itself could never read, and everything its capabilities reach on the host. The session
/// must be refused before anything runs.
#[test]
fn a_stopped_user_namespaced_container_is_not_debugged_as_host_root() {
    if skip() {
        return;
    }
    let f = registry::fixture();
    let dir = f.scratch("userns-stopped");
    let secret = userns_secret_dir();
    std::fs::create_dir_all(&secret).unwrap();
    std::fs::write(secret.join("secret"), "HOST-ROOT-ONLY\n").unwrap();
    std::fs::set_permissions(secret.join("secret"), std::fs::Permissions::from_mode(0o600)).unwrap();
    let opts = ContainerOpts {
        tweak: Some(in_user_namespace),
        prepare: Some(|root| std::fs::create_dir_all(root.join("data")).unwrap()),
        ..Default::default()
    };
    std::fs::create_dir_all(dir.join("bundles")).unwrap();
    let c = Container::start(&dir.join("bundles"), &format!("{}-userns-stopped", prefix()), &opts);
    let state = || {
        let o = run(std::process::Command::new("runc").args(["state", &c.id]));
        serde_json::from_slice::<serde_json::Value>(&o.stdout).map(|v| v["status"].clone()).unwrap_or_default()
    };
    assert!(eventually(30, || state() == "stopped"), "the container exits");
    let acl = r#"
[[rule]]
subjects = ["user:dbg"]
tasks = ["*"]
actions = ["debug"]
images = ["**"]
"#;
    let agent = registry::start_agent(&dir.join("agent"), "", acl);
    let layout = dir.join("layout");
    registry::write_layout(&layout, "v1", &[registry::busybox_layer()]);
    let image = format!("oci:{}:v1", layout.display());
    let dbg = agent.token("dbg", &[], "1h");
    let o =
        run(agent.dcos_as(&dbg).args(["task", "exec", "--debug-image", &image, &c.id, "cat", "/target/data/secret"]));
    assert!(!stdout(&o).contains("HOST-ROOT-ONLY"), "the sandbox read a host-root-only file: {}", stdout(&o));
    assert_ne!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(stderr(&o).contains("user namespace"), "the refusal names the reason: {}", stderr(&o));
    assert_eq!(state(), "stopped");
}

/// A running container in a user namespace (its root is uid 100000 on the host) holding `CAP_SYS_PTRACE` there.
fn user_namespace_with_ptrace(cfg: &mut serde_json::Value) {
    add_sys_ptrace(cfg);
    cfg["linux"]["namespaces"].as_array_mut().unwrap().push(serde_json::json!({"type": "user"}));
    let map = serde_json::json!([{"containerID": 0, "hostID": 100000, "size": 65536}]);
    cfg["linux"]["uidMappings"] = map.clone();
    cfg["linux"]["gidMappings"] = map;
}

/// The attacks of the tests above on a container with a user namespace, where the helper also joins the user
/// namespace and becomes its root: `-w /proc/self/fd/N` (as root and uid 1000, with and without a terminal),
/// then a `CAP_SYS_PTRACE` racer grabbing every new process over 300 sessions (with and without a terminal).
#[test]
fn a_user_namespaced_container_reaches_nothing_of_the_host_by_workdir_or_ptrace() {
    if skip() {
        return;
    }
    let f = registry::fixture();
    let c = container("userns", &ContainerOpts { tweak: Some(user_namespace_with_ptrace), ..Default::default() });
    let map = std::fs::read_to_string(format!("/proc/{}/uid_map", c.init_pid())).unwrap();
    assert!(map.split_whitespace().nth(1) == Some("100000"), "the container has its own user namespace: {map}");
    // The session is in the container's user namespace too, as its root.
    let o = run(f.agent.dcos().args(["task", "exec", &c.id, "cat", "/proc/self/uid_map"]));
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(stdout(&o).split_whitespace().nth(1) == Some("100000"), "{}", stdout(&o));
    let mut seen = Outcomes::default();
    for n in 0..=24 {
        let wd = format!("/proc/self/fd/{n}");
        for (opts, who) in variants() {
            let mut all = vec!["-w", wd.as_str()];
            all.extend(opts.iter().copied());
            seen.add(&f.agent, &c.id, &all, &format!("userns -w {wd} as {who}"));
        }
    }
    seen.check("-w /proc/self/fd/N in a user namespace");
    // A debug image cannot be set up there (its root belongs to the host's root, whom the container's user
    // namespace does not map): a clean refusal, nothing run.
    let o = run(f.agent.dcos().args(["task", "exec", "--debug-image", &f.busybox, &c.id, "sh", "-c", "echo RAN"]));
    assert_eq!(o.status.code(), Some(125), "{}", stderr(&o));
    assert!(!stdout(&o).contains("RAN"), "{}", stdout(&o));
    let (codes, log) = race_with(&f.agent, &c, "grab", 300, &[&[], &["-t"]]);
    let (counts, bad) = grabbed(&log);
    note(&format!("300 sessions in a user namespace under a ptrace racer: exit codes {codes:?}; {counts:?}"));
    assert!(
        codes.get(&Some(0)) == Some(&300) && bad.is_empty(),
        "every session exits 0: {codes:?}; the racer obtained {counts:?}; host directories or files reached:\n{}",
        bad.join("\n")
    );
}

fn without_namespace(cfg: &mut serde_json::Value, kind: &str) {
    cfg["linux"]["namespaces"].as_array_mut().unwrap().retain(|n| n["type"] != kind);
}

/// The attack: `--cap-add` of a capability on the default allowlist, on a container that shares one of the
/// host's namespaces. `SYS_PTRACE` in the host's pid namespace reads the agent's signing key through
/// `/proc/AGENT/root` (the container's root cannot: it lacks the capability); `NET_ADMIN` in the host's network
/// namespace adds an address to the host's `lo`. Both are refused with exit 118, naming the namespace; on a
/// container with namespaces of its own they are still given (see `cap_add_gives_the_debug_process_more_than_the_
/// target_has`).
#[test]
fn cap_add_on_a_container_sharing_a_host_namespace_is_refused() {
    if skip() {
        return;
    }
    let f = registry::fixture();
    let host_pid =
        container("hostpid", &ContainerOpts { tweak: Some(|cfg| without_namespace(cfg, "pid")), ..Default::default() });
    let agent_pid = f.agent.child.id();
    let key = f.agent.dir.join("token-signing.key");
    let probe = format!("cat /proc/{agent_pid}/root{} 2>&1; echo END", key.display());
    let lines = key_lines(&f.agent);
    let read_key = |o: &Output| lines.iter().any(|l| stdout(o).contains(l.as_str()));
    // Without the capability the container's own root cannot (the control of the attack).
    let o = f.debug(&f.busybox, &[], &host_pid.id, &["sh", "-c", &probe]);
    assert!(stdout(&o).contains("END") && !read_key(&o), "{}{}", stdout(&o), stderr(&o));
    let o = f.debug(&f.busybox, &["--cap-add", "SYS_PTRACE"], &host_pid.id, &["sh", "-c", &probe]);
    assert!(!read_key(&o), "--cap-add SYS_PTRACE in the host's pid namespace read the agent's signing key");
    assert_eq!(o.status.code(), Some(118), "{}", stderr(&o));
    assert!(stderr(&o).contains("host's pid namespace"), "{}", stderr(&o));

    let host_net = container(
        "hostnet",
        &ContainerOpts { tweak: Some(|cfg| without_namespace(cfg, "network")), ..Default::default() },
    );
    let addr = format!("127.77.{}.{}/32", std::process::id() % 250, 1 + std::process::id() % 200);
    let on_host_lo = || stdout(&run(std::process::Command::new("ip").args(["-o", "addr", "show", "dev", "lo"])));
    let o = f.debug(&f.busybox, &["--cap-add", "NET_ADMIN"], &host_net.id, &["ip", "addr", "add", &addr, "dev", "lo"]);
    let added = on_host_lo().contains(&addr);
    if added {
        run(std::process::Command::new("ip").args(["addr", "del", &addr, "dev", "lo"]));
    }
    assert!(!added, "--cap-add NET_ADMIN in the host's network namespace changed the host's lo");
    assert_eq!(o.status.code(), Some(118), "{}", stderr(&o));
    assert!(stderr(&o).contains("host's net namespace"), "{}", stderr(&o));
    // The same capability on a container with its own network namespace is given.
    let own = container("ownnet", &ContainerOpts::default());
    let o = f.debug(&f.busybox, &["--cap-add", "NET_ADMIN"], &own.id, &["ip", "addr", "add", &addr, "dev", "lo"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(!on_host_lo().contains(&addr));
}

/// The volume of the container below: a host directory bind-mounted writable at `/data`, whose subdirectory
/// `cache` is also bind-mounted at `/cache`.
fn nested_volume_dir() -> PathBuf {
    std::env::temp_dir().join(format!("{}-nested-volume", prefix()))
}

/// A container that, as its last act, replaces the source directory of its `/cache` bind mount (reached through
/// its writable `/data`, where it is no mount point) with a symlink to the host's `/`.
fn plants_a_bind_source_symlink(cfg: &mut serde_json::Value) {
    cfg["process"]["args"] = serde_json::json!(["sh", "-c", "rm -rf /data/cache && ln -s / /data/cache; exit 3"]);
    let vol = nested_volume_dir();
    let mounts = cfg["mounts"].as_array_mut().unwrap();
    mounts.push(serde_json::json!({"destination": "/data", "type": "bind", "source": vol, "options": ["rbind"]}));
    mounts.push(serde_json::json!({
        "destination": "/cache", "type": "bind", "source": vol.join("cache"), "options": ["rbind", "ro"]
    }));
}

/// The attack: a container plants a symlink to the host's `/` where the source of one of its bind mounts was, then
/// stops; a user with `debug` (and `debug:write`) opens a sandbox on it, whose bind mounts would then clone the
/// host's root at `/target/cache`. The agent's signing key must not be readable there.
#[test]
fn a_bind_source_replaced_by_a_symlink_does_not_bring_the_host_into_a_stopped_sandbox() {
    if skip() {
        return;
    }
    let f = registry::fixture();
    let dir = f.scratch("bind-source-symlink");
    let vol = nested_volume_dir();
    let _ = std::fs::remove_dir_all(&vol);
    std::fs::create_dir_all(vol.join("cache")).unwrap();
    let opts = ContainerOpts {
        tweak: Some(plants_a_bind_source_symlink),
        prepare: Some(|root| {
            std::fs::create_dir_all(root.join("data")).unwrap();
            std::fs::create_dir_all(root.join("cache")).unwrap();
        }),
        ..Default::default()
    };
    std::fs::create_dir_all(dir.join("bundles")).unwrap();
    let c = Container::start(&dir.join("bundles"), &format!("{}-bindsrc", prefix()), &opts);
    let state = || {
        let o = run(std::process::Command::new("runc").args(["state", &c.id]));
        serde_json::from_slice::<serde_json::Value>(&o.stdout).map(|v| v["status"].clone()).unwrap_or_default()
    };
    assert!(eventually(30, || state() == "stopped"), "the container exits");
    let planted = std::fs::read_link(vol.join("cache"));
    assert_eq!(planted.as_deref().ok(), Some(Path::new("/")), "the container planted the symlink: {planted:?}");
    let acl = r#"
[[rule]]
subjects = ["user:dbg"]
tasks = ["*"]
actions = ["debug", "debug:write"]
images = ["**"]
"#;
    let agent = registry::start_agent(&dir.join("agent"), "", acl);
    let layout = dir.join("layout");
    registry::write_layout(&layout, "v1", &[registry::busybox_layer()]);
    let image = format!("oci:{}:v1", layout.display());
    let dbg = agent.token("dbg", &[], "1h");
    let key = agent.dir.join("token-signing.key");
    let probe = format!("cat /target/cache{} 2>&1; ls /target/cache 2>&1; echo END", key.display());
    let o = run(agent.dcos_as(&dbg).args(["task", "exec", "--debug-image", &image, &c.id, "sh", "-c", &probe]));
    let read_key = key_lines(&agent).iter().any(|l| stdout(&o).contains(l.as_str()));
    assert!(!read_key, "the sandbox read the agent's signing key through the planted bind source");
    assert_eq!(o.status.code(), Some(0), "the session runs, without that bind mount: {}", stderr(&o));
    assert!(stdout(&o).contains("END"), "{}", stdout(&o));
    let _ = std::fs::remove_file(vol.join("cache"));
}

/// A host directory of this test process for the stopped-sandbox tests below.
fn sandbox_host_dir(name: &str) -> PathBuf {
    std::env::temp_dir().join(format!("{}-sbx-{name}", prefix()))
}

/// A tmpfs this test mounted on the host, lazily unmounted when dropped (also when the test fails).
struct HostMount(PathBuf);

impl HostMount {
    fn tmpfs(at: &Path) -> HostMount {
        std::fs::create_dir_all(at).unwrap();
        let o = run(std::process::Command::new("mount").args(["-t", "tmpfs", "-o", "size=1m", "tmpfs"]).arg(at));
        assert!(o.status.success(), "mount tmpfs on {}: {}", at.display(), stderr(&o));
        HostMount(at.to_path_buf())
    }
}

impl Drop for HostMount {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg("-l").arg(&self.0).output();
    }
}

/// A runc container of `opts` (under `dir`) run until it stopped, an agent of its own in `dir` granting user `dbg`
/// `actions` on every task and image, a busybox debug image, and dbg's token.
fn stopped_for_dbg(dir: &Path, name: &str, opts: &ContainerOpts, actions: &str) -> (Container, Agent, String, String) {
    std::fs::create_dir_all(dir.join("bundles")).unwrap();
    let c = Container::start(&dir.join("bundles"), &format!("{}-{name}", prefix()), opts);
    let state = || {
        let o = run(std::process::Command::new("runc").args(["state", &c.id]));
        serde_json::from_slice::<serde_json::Value>(&o.stdout).map(|v| v["status"].clone()).unwrap_or_default()
    };
    assert!(eventually(30, || state() == "stopped"), "the container exits");
    let acl = format!("[[rule]]\nsubjects = [\"user:dbg\"]\ntasks = [\"*\"]\nactions = {actions}\nimages = [\"**\"]\n");
    let agent = registry::start_agent(&dir.join("agent"), "", &acl);
    let layout = dir.join("layout");
    registry::write_layout(&layout, "v1", &[registry::busybox_layer()]);
    let image = format!("oci:{}:v1", layout.display());
    let dbg = agent.token("dbg", &[], "1h");
    (c, agent, image, dbg)
}

/// The container of the test below: it binds the host directory `vol` (a tmpfs is mounted on its `sub` on the
/// host) with `bind` and with `rbind`, the host's `/` with `bind` and with `rbind`, and the host's `/proc` and
/// `/sys` themselves; it exits at once.
fn binds_the_host(cfg: &mut serde_json::Value) {
    cfg["process"]["args"] = serde_json::json!(["sh", "-c", "exit 3"]);
    let vol = sandbox_host_dir("vol");
    let mounts = cfg["mounts"].as_array_mut().unwrap();
    for (dest, source, opts) in [
        ("/vol", vol.as_path(), serde_json::json!(["bind", "ro"])),
        ("/rvol", vol.as_path(), serde_json::json!(["rbind", "ro"])),
        ("/host", Path::new("/"), serde_json::json!(["bind", "ro"])),
        ("/rhost", Path::new("/"), serde_json::json!(["rbind", "ro"])),
        ("/hproc", Path::new("/proc"), serde_json::json!(["bind", "ro"])),
        ("/hsys", Path::new("/sys"), serde_json::json!(["bind", "ro"])),
    ] {
        mounts.push(serde_json::json!({"destination": dest, "type": "bind", "source": source, "options": opts}));
    }
}

/// The attack: a container binds the host's `/` read-only and not recursively (`bind`, not `rbind`), as its
/// `config.json` may; running, its `/host/proc` is an empty directory. Stopped, a user with `debug` opens a
/// sandbox on it: were the bind cloned recursively, `/target/host/proc` would be the host's procfs, and
/// `/proc/PID/root` of a host process of the session's uid the host's root, writable. Likewise a tmpfs mounted
/// below a `bind` source on the host, which the container never saw. A `bind` must bring its own mount only, an
/// `rbind` everything (the tmpfs), but never a kernel filesystem of the host: an `rbind` of `/`, and binds of
/// `/proc` and `/sys` themselves, are left out.
#[test]
fn a_plain_bind_brings_neither_host_mounts_nor_the_hosts_procfs_into_a_stopped_sandbox() {
    if skip() {
        return;
    }
    let dir = sandbox_host_dir("plainbind");
    let _ = std::fs::remove_dir_all(&dir);
    let vol = sandbox_host_dir("vol");
    let _ = std::fs::remove_dir_all(&vol);
    std::fs::create_dir_all(vol.join("sub")).unwrap();
    std::fs::write(vol.join("plain"), "IN-THE-SOURCE\n").unwrap();
    let _tmpfs = HostMount::tmpfs(&vol.join("sub"));
    std::fs::write(vol.join("sub/secret"), "MOUNTED-BELOW-THE-SOURCE\n").unwrap();
    let opts = ContainerOpts {
        tweak: Some(binds_the_host),
        prepare: Some(|root| {
            for d in ["vol", "rvol", "host", "rhost", "hproc", "hsys"] {
                std::fs::create_dir_all(root.join(d)).unwrap();
            }
        }),
        ..Default::default()
    };
    let (c, agent, image, dbg) = stopped_for_dbg(&dir, "plainbind", &opts, r#"["debug"]"#);
    let probe = "cat /target/vol/plain /target/vol/sub/secret 2>&1; echo ---; cat /target/rvol/sub/secret 2>&1; \
                 echo ---; for p in host/proc/1/root host/proc/self rhost/etc rhost/proc/1 hproc/1 hproc/self \
                 hsys/kernel; do test -e /target/$p && echo PRESENT /target/$p; done; test -d /target/host/etc && \
                 echo HOST-ETC; echo END";
    let o = run(agent.dcos_as(&dbg).args(["task", "exec", "--debug-image", &image, &c.id, "sh", "-c", probe]));
    let out = stdout(&o);
    assert_eq!(o.status.code(), Some(0), "{}{}", out, stderr(&o));
    let parts: Vec<&str> = out.split("---\n").collect();
    assert_eq!(parts.len(), 3, "{out}");
    assert!(parts[0].contains("IN-THE-SOURCE"), "the bind's own files show: {out}");
    assert!(!parts[0].contains("MOUNTED-BELOW"), "a `bind` brought a host mount below its source: {out}");
    assert!(parts[1].contains("MOUNTED-BELOW-THE-SOURCE"), "an `rbind` brings the mounts below its source: {out}");
    assert!(!out.contains("PRESENT"), "a kernel filesystem of the host shows in the sandbox: {out}");
    assert!(out.contains("HOST-ETC") && out.contains("END"), "the `bind` of / itself is there: {out}");
}

/// The attack: the stopped container's root (uid 0, the `runc spec` default) in its sandbox changes the mode
/// and times of `/dev/full`, which is the host's device inode bound in: the host's `/dev/full` (and as well
/// `/dev/null`: `chmod 000` would break the host). The nodes are bound read-only: mode and time changes fail
/// with EROFS, reading and writing the devices still work. The mode set is the one the node has, so the host's
/// node keeps its mode even where the attack succeeds.
#[test]
fn a_stopped_sandbox_cannot_change_the_hosts_device_nodes() {
    if skip() {
        return;
    }
    let dir = sandbox_host_dir("devnodes");
    let _ = std::fs::remove_dir_all(&dir);
    let opts = ContainerOpts {
        tweak: Some(|cfg| cfg["process"]["args"] = serde_json::json!(["sh", "-c", "exit 3"])),
        ..Default::default()
    };
    let (c, agent, image, dbg) = stopped_for_dbg(&dir, "devnodes", &opts, r#"["debug", "debug:write"]"#);
    use std::os::unix::fs::MetadataExt;
    let before: Vec<(u32, u32)> = ["null", "full"]
        .iter()
        .map(|n| std::fs::metadata(format!("/dev/{n}")).map(|m| (m.mode(), m.uid())).unwrap())
        .collect();
    let probe = "id -u; for n in null full zero tty; do chmod \"$(stat -c %a /dev/$n)\" /dev/$n 2>/dev/null && \
                 echo CHMOD-$n; touch -c /dev/$n 2>/dev/null && echo TOUCH-$n; done; \
                 echo data > /dev/null && echo NULL-WRITE; head -c 7 /dev/zero | wc -c; \
                 head -c 5 /dev/urandom | wc -c; echo x > /dev/full 2>/dev/null || echo FULL-ENOSPC; echo END";
    let o = run(agent.dcos_as(&dbg).args(["task", "exec", "--debug-image", &image, &c.id, "sh", "-c", probe]));
    let out = stdout(&o);
    assert_eq!(o.status.code(), Some(0), "{}{}", out, stderr(&o));
    assert!(out.starts_with("0\n"), "the session is the container's root: {out}");
    assert!(!out.contains("CHMOD-") && !out.contains("TOUCH-"), "the host's device nodes were changed: {out}");
    let lines: Vec<&str> = out.lines().map(str::trim).collect();
    for want in ["NULL-WRITE", "7", "5", "FULL-ENOSPC", "END"] {
        assert!(lines.contains(&want), "the devices work ({want}): {out}");
    }
    let after: Vec<(u32, u32)> = ["null", "full"]
        .iter()
        .map(|n| std::fs::metadata(format!("/dev/{n}")).map(|m| (m.mode(), m.uid())).unwrap())
        .collect();
    assert_eq!(before, after);
}

/// The container of the test below: `/data` binds `ro-vol` with `rbind,rro` (its `sub` is a tmpfs on the
/// host), `/ro` the same with `rbind,ro`, `/tools` binds `tools` `rbind,noexec,nosuid,nodev`, `/rw` binds `rw`
/// writable; it exits at once.
fn binds_with_options(cfg: &mut serde_json::Value) {
    cfg["process"]["args"] = serde_json::json!(["sh", "-c", "exit 3"]);
    let mounts = cfg["mounts"].as_array_mut().unwrap();
    for (dest, source, opts) in [
        ("/data", "ro-vol", serde_json::json!(["rbind", "rro"])),
        ("/ro", "ro-vol", serde_json::json!(["rbind", "ro"])),
        ("/tools", "tools", serde_json::json!(["rbind", "noexec", "nosuid", "nodev"])),
        ("/rw", "rw", serde_json::json!(["rbind", "rw"])),
    ] {
        let source = sandbox_host_dir(source);
        mounts.push(serde_json::json!({"destination": dest, "type": "bind", "source": source, "options": opts}));
    }
}

/// The attack: a container binds a host directory recursively read-only (`rro`), another `noexec`; running, it
/// can write to neither the directory nor a mount below it, nor run what the other holds. A user with `debug`
/// and `debug:write` opens a sandbox on it once stopped, and writes into the host's directory (and the mount
/// below it), and runs a program from the `noexec` one. Read-only (`ro` too, throughout) and `noexec` must
/// carry over; a writable bind stays writable (the control).
#[test]
fn a_stopped_sandbox_keeps_rro_and_noexec_of_the_containers_binds() {
    if skip() {
        return;
    }
    let dir = sandbox_host_dir("bindopts");
    let _ = std::fs::remove_dir_all(&dir);
    let (ro_vol, tools, rw) = (sandbox_host_dir("ro-vol"), sandbox_host_dir("tools"), sandbox_host_dir("rw"));
    for d in [&ro_vol, &tools, &rw] {
        let _ = std::fs::remove_dir_all(d);
        std::fs::create_dir_all(d).unwrap();
    }
    std::fs::write(ro_vol.join("file"), "original\n").unwrap();
    let _tmpfs = HostMount::tmpfs(&ro_vol.join("sub"));
    std::fs::write(ro_vol.join("sub/file"), "original\n").unwrap();
    std::fs::write(tools.join("tool"), "#!/bin/sh\necho TOOL-RAN\n").unwrap();
    std::fs::set_permissions(tools.join("tool"), std::fs::Permissions::from_mode(0o755)).unwrap();
    let opts = ContainerOpts {
        tweak: Some(binds_with_options),
        prepare: Some(|root| {
            for d in ["data", "ro", "tools", "rw"] {
                std::fs::create_dir_all(root.join(d)).unwrap();
            }
        }),
        ..Default::default()
    };
    let (c, agent, image, dbg) = stopped_for_dbg(&dir, "bindopts", &opts, r#"["debug", "debug:write"]"#);
    let probe = "for f in data/file data/sub/file ro/file ro/sub/file; do echo changed > /target/$f 2>/dev/null && \
                 echo WROTE-$f; done; /target/tools/tool 2>/dev/null; echo written > /target/rw/file && \
                 echo RW-OK; echo END";
    let o = run(agent.dcos_as(&dbg).args(["task", "exec", "--debug-image", &image, &c.id, "sh", "-c", probe]));
    let out = stdout(&o);
    assert_eq!(o.status.code(), Some(0), "{}{}", out, stderr(&o));
    assert!(!out.contains("WROTE-"), "a read-only bind was written: {out}");
    assert!(!out.contains("TOOL-RAN"), "a program ran from a noexec bind: {out}");
    assert!(out.contains("RW-OK") && out.contains("END"), "{out}");
    for f in ["file", "sub/file"] {
        assert_eq!(std::fs::read_to_string(ro_vol.join(f)).unwrap(), "original\n", "{f}");
    }
    assert_eq!(std::fs::read_to_string(rw.join("file")).unwrap(), "written\n");
}

/// The container of the test below: `CAP_SYS_ADMIN`, and the shared host tmpfs `shared` bound at `/s` with
/// `rbind`; it exits at once.
fn binds_a_shared_mount_with_sys_admin(cfg: &mut serde_json::Value) {
    cfg["process"]["args"] = serde_json::json!(["sh", "-c", "exit 3"]);
    for set in ["bounding", "effective", "permitted"] {
        cfg["process"]["capabilities"][set].as_array_mut().unwrap().push("CAP_SYS_ADMIN".into());
    }
    let mounts = cfg["mounts"].as_array_mut().unwrap();
    mounts.push(serde_json::json!({
        "destination": "/s", "type": "bind", "source": sandbox_host_dir("shared"), "options": ["rbind"]
    }));
}

/// The attack: a stopped container with `CAP_SYS_ADMIN` bound a host directory that is a shared mount (as `/` is
/// on systemd hosts). Running, its binds are slaves of the host's (runc makes its root `rslave`): what it mounts
/// there stays in the container. In its sandbox a clone of the bind would still be the host mount's peer, so a
/// mount the session makes there would appear on the host. Clones are private: it must not.
#[test]
fn a_mount_in_a_stopped_sandbox_does_not_propagate_to_the_host() {
    if skip() {
        return;
    }
    let dir = sandbox_host_dir("propagation");
    let _ = std::fs::remove_dir_all(&dir);
    let shared = sandbox_host_dir("shared");
    let _ = std::fs::remove_dir_all(&shared);
    let _tmpfs = HostMount::tmpfs(&shared);
    let o = run(std::process::Command::new("mount").arg("--make-shared").arg(&shared));
    assert!(o.status.success(), "{}", stderr(&o));
    std::fs::create_dir_all(shared.join("x")).unwrap();
    let opts = ContainerOpts {
        tweak: Some(binds_a_shared_mount_with_sys_admin),
        prepare: Some(|root| std::fs::create_dir_all(root.join("s")).unwrap()),
        ..Default::default()
    };
    let (c, agent, image, dbg) = stopped_for_dbg(&dir, "propagation", &opts, r#"["debug"]"#);
    let probe = "mount -t tmpfs -o size=1m sandbox /target/s/x && echo MOUNTED; touch /target/s/x/from-sandbox; \
                 echo END";
    let o = run(agent.dcos_as(&dbg).args(["task", "exec", "--debug-image", &image, &c.id, "sh", "-c", probe]));
    let out = stdout(&o);
    assert!(
        out.contains("MOUNTED") && out.contains("END"),
        "the session mounts (the attack's premise): {out}{}",
        stderr(&o)
    );
    let on_host = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let x = shared.join("x").display().to_string();
    let leaked = on_host.lines().any(|l| l.split(' ').nth(4) == Some(x.as_str()));
    if leaked {
        let _ = std::process::Command::new("umount").arg("-l").arg(&x).output();
    }
    assert!(!leaked, "the sandbox's mount propagated to the host's {x}");
    assert!(!shared.join("x/from-sandbox").exists());
}

/// The attack: the host has a procfs mounted below a stopped container's root filesystem (its bundle's `rootfs`,
/// which the sandbox clones recursively as runc binds it). A debug user would find the host's processes at
/// `/target/hostproc` (and, with the uid of one, its root at `/target/hostproc/PID/root`). The session must fail,
/// naming why.
#[test]
fn a_stopped_root_filesystem_holding_the_hosts_procfs_is_refused() {
    if skip() {
        return;
    }
    let dir = sandbox_host_dir("rootproc");
    let _ = std::fs::remove_dir_all(&dir);
    let opts = ContainerOpts {
        tweak: Some(|cfg| cfg["process"]["args"] = serde_json::json!(["sh", "-c", "exit 3"])),
        prepare: Some(|root| std::fs::create_dir_all(root.join("hostproc")).unwrap()),
        ..Default::default()
    };
    let (c, agent, image, dbg) = stopped_for_dbg(&dir, "rootproc", &opts, r#"["debug"]"#);
    let at = c.rootfs().join("hostproc");
    let o = run(std::process::Command::new("mount").args(["-t", "proc", "proc"]).arg(&at));
    assert!(o.status.success(), "{}", stderr(&o));
    let _proc = HostMount(at);
    let probe = "test -d /target/hostproc/1 && echo HOST-PROC; echo RAN";
    let o = run(agent.dcos_as(&dbg).args(["task", "exec", "--debug-image", &image, &c.id, "sh", "-c", probe]));
    assert!(!stdout(&o).contains("HOST-PROC"), "the host's procfs showed in the sandbox: {}", stdout(&o));
    assert_eq!(o.status.code(), Some(125), "{}{}", stdout(&o), stderr(&o));
    assert!(stderr(&o).contains("the host's proc"), "the refusal names the reason: {}", stderr(&o));
}

/// Description and payload of the key the agent's session keyring holds, as systemd's per-service keyring holds
/// its invocation id or a host credential.
const AGENT_KEY: &str = "dcos-exec-e2e-agent-secret";
const AGENT_KEY_PAYLOAD: &str = "HOST-ONLY-KEY-PAYLOAD-5f1c";

/// Runs in the agent's process before it executes: a session keyring of its own holding a root-owned key, as a
/// systemd service (KeyringMode=private) or a login session has.
fn agent_in_a_session_keyring() -> std::io::Result<()> {
    // SAFETY: raw keyctl/add_key with NUL-terminated static strings; async-signal-safe.
    unsafe {
        let name = c"_ses.dcos-exec-e2e-agent";
        if libc::syscall(libc::SYS_keyctl, 1 as libc::c_long, name.as_ptr()) < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let desc = c"dcos-exec-e2e-agent-secret";
        let payload = AGENT_KEY_PAYLOAD.as_bytes();
        if libc::syscall(
            libc::SYS_add_key,
            c"user".as_ptr(),
            desc.as_ptr(),
            payload.as_ptr(),
            payload.len(),
            -3 as libc::c_long,
        ) < 0
        {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

#[test]
fn sessions_get_a_session_keyring_of_their_own() {
    if skip() {
        return;
    }
    let f = registry::fixture();
    let dir = f.scratch("keyring");
    let acl = r#"
[[rule]]
subjects = ["user:admin"]
tasks = ["*"]
actions = ["*"]
images = ["**"]

[[rule]]
subjects = ["user:limited"]
tasks = ["*"]
actions = ["list", "exec"]
"#;
    let agent = Agent::start_set_up(&dir.join("agent"), "", acl, agent_in_a_session_keyring);
    let a = container("keys-a", &ContainerOpts { unprivileged: true, ..Default::default() });
    let b = container("keys-b", &ContainerOpts::default());
    install_attacker(&a);
    install_attacker(&b);
    let limited = agent.token("limited", &[], "10m");
    let planted = format!("planted-{}", prefix());
    // uid 1000 with no capability: reads what its session keyring holds and plants a key for the next session.
    let o =
        run(agent.dcos_as(&limited).args(["task", "exec", &a.id, "/attacker", "keys", AGENT_KEY, &planted, "from-a"]));
    let out = stdout(&o);
    assert!(o.status.success(), "{out} {}", stderr(&o));
    assert!(out.contains(&format!("added {planted}")), "a session may use its own keyring: {out}");
    assert!(!out.contains(AGENT_KEY_PAYLOAD) && !out.contains(AGENT_KEY), "the agent's key is reachable: {out}");
    assert!(out.contains("search: "), "the search must fail: {out}");
    // Another session, in another container (and another in the same one), sees nothing of it.
    for c in [&b, &a] {
        let o = run(agent.dcos().args(["task", "exec", &c.id, "/attacker", "keys", &planted]));
        let out = stdout(&o);
        let log = std::fs::read_to_string(agent.dir.join("agent.log")).unwrap_or_default();

        assert!(o.status.success(), "{out} {} {log}", stderr(&o));
        assert!(!out.contains("from-a") && !out.contains(&planted), "{}: a planted key is shared: {out}", c.id);
        assert!(!out.contains(AGENT_KEY_PAYLOAD), "{}: the agent's key is reachable: {out}", c.id);
    }
    // A debug session on a stopped container runs the user's command in a keyring of its own too.
    let stopped = container("keys-stopped", &ContainerOpts::default());
    install_attacker(&stopped);
    stopped.kill();
    let layout = dir.join("layout");
    registry::write_layout(&layout, "v1", &[registry::busybox_layer()]);
    let image = format!("oci:{}:v1", layout.display());
    let state = || {
        let o = run(std::process::Command::new("runc").args(["state", &stopped.id]));
        serde_json::from_slice::<serde_json::Value>(&o.stdout).map(|v| v["status"].clone()).unwrap_or_default()
    };
    assert!(eventually(30, || state() == "stopped"), "the container stops");
    let o = run(agent.dcos().args([
        "task",
        "exec",
        "--debug-image",
        &image,
        &stopped.id,
        "/target/attacker",
        "keys",
        AGENT_KEY,
    ]));
    let out = stdout(&o);
    assert!(o.status.success(), "{out} {}", stderr(&o));
    assert!(
        !out.contains(AGENT_KEY_PAYLOAD) && !out.contains(AGENT_KEY),
        "debug sandbox reaches the agent's key: {out}"
    );
}

/// The container of the test below: `/data` binds the host directory `masked-vol` read-only, `/dev/null` is
/// bound over its `key.pem` and a tmpfs is mounted over its `hidden`, and likewise over the root filesystem's
/// `/etc/key.pem` and `/srv/hidden`; `/late` gets a tmpfs, then the same bind over it; it exits at once.
fn masks_secrets(cfg: &mut serde_json::Value) {
    cfg["process"]["args"] = serde_json::json!(["sh", "-c", "exit 3"]);
    let mounts = cfg["mounts"].as_array_mut().unwrap();
    let vol = sandbox_host_dir("masked-vol");
    mounts
        .push(serde_json::json!({"destination": "/late", "type": "tmpfs", "source": "tmpfs", "options": ["size=1m"]}));
    mounts.push(serde_json::json!({"destination": "/late", "type": "bind", "source": vol, "options": ["rbind", "ro"]}));
    mounts.push(serde_json::json!({"destination": "/data", "type": "bind", "source": vol, "options": ["rbind", "ro"]}));
    for file in ["/data/key.pem", "/etc/key.pem"] {
        mounts.push(
            serde_json::json!({"destination": file, "type": "bind", "source": "/dev/null", "options": ["bind", "ro"]}),
        );
    }
    for dir in ["/data/hidden", "/srv/hidden"] {
        mounts
            .push(serde_json::json!({"destination": dir, "type": "tmpfs", "source": "tmpfs", "options": ["size=1m"]}));
    }
}

/// The attack: a container hides a secret file under a `/dev/null` bind (`-v /dev/null:/data/key.pem`) and a
/// secret directory under a tmpfs, in a bind and in its root filesystem; running, it sees an empty file and an
/// empty directory. A user with `debug` (and `debug:write`) opens a sandbox on it once stopped: were only its
/// directory binds reproduced, the secrets would show under `/target`. Each mount the sandbox does not reproduce
/// is masked, after the bind it lies in, and before a bind the container mounted over it (`/late`: the bind shows).
#[test]
fn a_stopped_sandbox_does_not_show_what_the_containers_masks_hid() {
    if skip() {
        return;
    }
    let dir = sandbox_host_dir("masks");
    let _ = std::fs::remove_dir_all(&dir);
    let vol = sandbox_host_dir("masked-vol");
    let _ = std::fs::remove_dir_all(&vol);
    std::fs::create_dir_all(vol.join("hidden")).unwrap();
    std::fs::write(vol.join("key.pem"), "VOLUME-KEY-SECRET\n").unwrap();
    std::fs::write(vol.join("hidden/x"), "VOLUME-DIR-SECRET\n").unwrap();
    std::fs::write(vol.join("plain"), "VOLUME-PLAIN\n").unwrap();
    let opts = ContainerOpts {
        tweak: Some(masks_secrets),
        prepare: Some(|root| {
            std::fs::create_dir_all(root.join("data")).unwrap();
            std::fs::create_dir_all(root.join("late")).unwrap();
            std::fs::create_dir_all(root.join("srv/hidden")).unwrap();
            std::fs::write(root.join("etc/key.pem"), "ROOTFS-KEY-SECRET\n").unwrap();
            std::fs::write(root.join("srv/hidden/x"), "ROOTFS-DIR-SECRET\n").unwrap();
        }),
        ..Default::default()
    };
    let (c, agent, image, dbg) = stopped_for_dbg(&dir, "masks", &opts, r#"["debug", "debug:write"]"#);
    let probe =
        "cat /target/data/plain /target/late/plain; for f in data/key.pem etc/key.pem data/hidden/x srv/hidden/x; do \
                 cat /target/$f 2>/dev/null; done; ls -A /target/data/hidden /target/srv/hidden; \
                 test -f /target/data/key.pem && test ! -s /target/data/key.pem && echo EMPTY-KEY; \
                 echo planted > /target/srv/hidden/y 2>/dev/null && echo WROTE-MASK; echo END";
    let o = run(agent.dcos_as(&dbg).args(["task", "exec", "--debug-image", &image, &c.id, "sh", "-c", probe]));
    let out = stdout(&o);
    assert_eq!(o.status.code(), Some(0), "{}{}", out, stderr(&o));
    assert!(!out.contains("SECRET"), "a secret the container's mounts hid shows in the sandbox: {out}");
    assert!(!out.contains("WROTE-MASK"), "a mask is writable: {out}");
    assert_eq!(out.matches("VOLUME-PLAIN").count(), 2, "the binds show, also one over a mask: {out}");
    assert!(out.contains("EMPTY-KEY") && out.contains("END"), "{out}");
}
