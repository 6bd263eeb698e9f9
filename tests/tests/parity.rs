//! The process `dcos task exec` makes, checked against the one `runc exec` makes: the same probe runs through both
//! on the same containers (varying user, additional gids, capabilities, no_new_privs, rlimits, seccomp, OOM score,
//! a read-only root with masked and read-only paths, a user namespace, a cwd the user cannot reach) with and
//! without `-u` and `-t`, and every line must match except the documented choices listed in `excluded`.

mod support;

use std::collections::BTreeMap;
use std::io::Read;
use std::os::fd::AsFd;
use std::process::{Command, Stdio};
use support::*;

/// What the probe prints: ids, groups, capabilities, no_new_privs, seccomp; cgroups; namespaces; limits;
/// oom_score_adj; umask; environment; cwd; the mount table it sees (masked and read-only paths: mount point and
/// options); and the owner of the terminal or of the stdio pipes.
const PROBE: &str =
    "grep -E '^(Uid|Gid|Groups|CapInh|CapPrm|CapEff|CapBnd|CapAmb|NoNewPrivs|Seccomp):' /proc/self/status; \
     sed 's/^/cgroup /' /proc/self/cgroup; \
     for n in /proc/self/ns/*; do echo \"ns ${n##*/} $(readlink $n)\"; done; \
     sed 's/^/limit /' /proc/self/limits; \
     echo \"oom_score_adj $(cat /proc/self/oom_score_adj)\"; \
     echo \"umask $(umask)\"; \
     env | sort | sed 's/^/env /'; \
     echo \"pwd $(pwd)\"; \
     awk '{print \"mount\", $5, $6}' /proc/self/mountinfo; \
     if t=$(tty); then stat -c \"tty %u %g %a\" $t; else stat -L -c 'stdout %u %g' /proc/self/fd/1; \
     stat -L -c 'stderr %u %g' /proc/self/fd/2; fi";

/// A way of running the probe: options of `dcos task exec` and the `runc exec` ones that mean the same.
struct Variant {
    name: &'static str,
    dcos: &'static [&'static str],
    runc: &'static [&'static str],
    /// `-u` without a group: docker's rule applies.
    user_without_group: bool,
    tty: bool,
}

const VARIANTS: &[Variant] = &[
    Variant { name: "as configured", dcos: &[], runc: &[], user_without_group: false, tty: false },
    Variant {
        name: "-u 1000:1000",
        dcos: &["-u", "1000:1000"],
        runc: &["--user", "1000:1000"],
        user_without_group: false,
        tty: false,
    },
    Variant { name: "-u 0", dcos: &["-u", "0"], runc: &["--user", "0"], user_without_group: true, tty: false },
    Variant { name: "-t", dcos: &["-t"], runc: &["-t"], user_without_group: false, tty: true },
    Variant { name: "-w /tmp", dcos: &["-w", "/tmp"], runc: &["--cwd", "/tmp"], user_without_group: false, tty: false },
    // A new variable only: for one the config already has, runc appends a duplicate where docker replaces it.
    Variant {
        name: "-e NEW=1 -u 1000:1000",
        dcos: &["-e", "NEW=1", "-u", "1000:1000"],
        runc: &["--env", "NEW=1", "--user", "1000:1000"],
        user_without_group: false,
        tty: false,
    },
    Variant {
        name: "-t -u 1000:1000",
        dcos: &["-t", "-u", "1000:1000"],
        runc: &["-t", "--user", "1000:1000"],
        user_without_group: false,
        tty: true,
    },
];

/// Documented differences from `runc exec`, each a choice of `dcos task exec` (docker's rules):
/// - `TERM=xterm` is added with `-t` (docker exec does the same; runc passes the config's env only);
/// - `-u USER` without a group takes the gid (and supplementary groups) from the container's /etc/passwd and
///   /etc/group, as docker does, where runc keeps the config's gid: the `Gid:` line is not compared then;
/// - a missing command exits 127 (docker) where runc exits 255: the probe never runs one, so nothing is excluded
///   for it here.
///
/// And one bug of the reference: runc 1.1.x built with Go >= 1.19 sets RLIMIT_NOFILE of `runc exec` racily (Go's
/// start-up raises the soft limit to the hard one around runc's prlimit: opencontainers/runc#4195, fixed by #4266),
/// so the `Max open files` line is checked against the config instead (see [`nofile_as_configured`]).
fn excluded(v: &Variant, line: &str) -> bool {
    (v.tty && line == "env TERM=xterm")
        || (v.user_without_group && line.starts_with("Gid:"))
        || line.starts_with("limit Max open files ")
}

/// The probe's `Max open files` soft and hard limits equal the config's RLIMIT_NOFILE (when it sets one).
fn nofile_as_configured(c: &Container, out: &str) -> Option<String> {
    let cfg: serde_json::Value = serde_json::from_slice(&std::fs::read(c.bundle.join("config.json")).unwrap()).unwrap();
    let want = cfg["process"]["rlimits"].as_array()?.iter().find(|r| r["type"] == "RLIMIT_NOFILE")?.clone();
    let line = out.lines().find(|l| l.starts_with("limit Max open files "))?;
    let got: Vec<u64> = line.split_whitespace().filter_map(|w| w.parse().ok()).collect();
    let want = vec![want["soft"].as_u64()?, want["hard"].as_u64()?];
    (got != want).then(|| format!("Max open files {got:?}, the config says {want:?}"))
}

fn lines(out: &str, v: &Variant) -> Vec<String> {
    out.replace('\r', "").lines().filter(|l| !excluded(v, l)).map(str::to_string).collect()
}

/// `runc exec -t ...` needs a terminal of its own: runs it on a fresh pty and returns (output, exit code).
fn runc_on_pty(args: &[&str]) -> (String, Option<i32>) {
    let pty = nix::pty::openpty(None, None).unwrap();
    let slave = pty.slave;
    let mut child = Command::new("runc")
        .args(args)
        .stdin(Stdio::from(slave.as_fd().try_clone_to_owned().unwrap()))
        .stdout(Stdio::from(slave.as_fd().try_clone_to_owned().unwrap()))
        .stderr(Stdio::from(slave.as_fd().try_clone_to_owned().unwrap()))
        .spawn()
        .unwrap();
    drop(slave);
    let mut master = std::fs::File::from(pty.master);
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    // EIO once the last slave fd is closed.
    while let Ok(n) = master.read(&mut buf) {
        if n == 0 {
            break;
        }
        out.extend_from_slice(&buf[..n]);
    }
    let st = child.wait().unwrap();
    (String::from_utf8_lossy(&out).into_owned(), st.code())
}

fn through_runc(c: &Container, v: &Variant, script: &str) -> (String, Option<i32>) {
    let mut args = vec!["exec"];
    args.extend_from_slice(v.runc);
    args.extend([c.id.as_str(), "sh", "-c", script]);
    if v.tty {
        runc_on_pty(&args)
    } else {
        let o = run(Command::new("runc").args(&args).stdin(Stdio::null()));
        (stdout(&o) + &stderr(&o), o.status.code())
    }
}

fn through_dcos(c: &Container, v: &Variant, script: &str) -> (String, Option<i32>) {
    let o = run(world().agent.dcos().args(["task", "exec"]).args(v.dcos).args([c.id.as_str(), "sh", "-c", script]));
    (stdout(&o) + &stderr(&o), o.status.code())
}

/// Runs the probe both ways; returns the differences (one string each), empty when they agree.
fn compare(label: &str, c: &Container) -> Vec<String> {
    let mut findings = Vec::new();
    for v in VARIANTS {
        let (theirs, their_code) = through_runc(c, v, PROBE);
        let (ours, our_code) = through_dcos(c, v, PROBE);
        let (theirs_l, ours_l) = (lines(&theirs, v), lines(&ours, v));
        if their_code != Some(0) {
            findings.push(format!("{label} [{}]: runc exec failed ({their_code:?}): {theirs}", v.name));
            continue;
        }
        if our_code != their_code {
            findings.push(format!(
                "{label} [{}]: exit {our_code:?}, runc exec {their_code:?}: {}",
                v.name,
                ours.trim()
            ));
            continue;
        }
        let mut count: BTreeMap<&str, i32> = BTreeMap::new();
        for l in &theirs_l {
            *count.entry(l).or_default() += 1;
        }
        for l in &ours_l {
            *count.entry(l).or_default() -= 1;
        }
        let only_runc: Vec<&str> = count.iter().filter(|(_, n)| **n > 0).map(|(l, _)| *l).collect();
        let only_dcos: Vec<&str> = count.iter().filter(|(_, n)| **n < 0).map(|(l, _)| *l).collect();
        if let Some(f) = nofile_as_configured(c, &ours.replace('\r', "")) {
            findings.push(format!("{label} [{}]: {f}", v.name));
        }
        if !only_runc.is_empty() || !only_dcos.is_empty() {
            findings
                .push(format!("{label} [{}]: runc exec has {only_runc:?}, dcos task exec has {only_dcos:?}", v.name));
        }
    }
    for code in [0, 3] {
        let v = &VARIANTS[0];
        let script = format!("exit {code}");
        let (theirs, ours) = (through_runc(c, v, &script).1, through_dcos(c, v, &script).1);
        if theirs != ours {
            findings.push(format!("{label} [exit {code}]: dcos task exec {ours:?}, runc exec {theirs:?}"));
        }
    }
    findings
}

fn findings(name: &str, o: &ContainerOpts) -> Vec<String> {
    let c = Container::start(&world().root, &format!("{}-par-{name}", prefix()), o);
    compare(name, &c)
}

fn check(name: &str, o: &ContainerOpts) {
    assert_same(findings(name, o));
}

fn assert_same(findings: Vec<String>) {
    assert!(findings.is_empty(), "dcos task exec differs from runc exec:\n{}", findings.join("\n"));
}

/// runc spec's defaults (root, the default capabilities, no_new_privs, RLIMIT_NOFILE 1024, masked and read-only
/// paths), with a read-only root.
#[test]
fn same_process_as_runc_exec_in_a_default_read_only_container() {
    if skip() {
        return;
    }
    check("default", &ContainerOpts { readonly: true, ..Default::default() });
}

/// uid 1000, gid 1000, additional gids 2000 and 3000, different capability sets, no no_new_privs, rlimits,
/// oom_score_adj 300, a seccomp filter and an empty `HOME=` in the config's env.
fn user_container(cfg: &mut serde_json::Value) {
    let p = &mut cfg["process"];
    p["user"] = serde_json::json!({"uid": 1000, "gid": 1000, "additionalGids": [2000, 3000]});
    p["cwd"] = "/home/app".into();
    p["env"] = serde_json::json!(["PATH=/usr/sbin:/usr/bin:/sbin:/bin", "HOME=", "FOO=bar baz"]);
    p["capabilities"] = serde_json::json!({
        "bounding": ["CAP_CHOWN", "CAP_KILL", "CAP_NET_BIND_SERVICE", "CAP_NET_RAW"],
        "effective": ["CAP_KILL", "CAP_NET_BIND_SERVICE"],
        "permitted": ["CAP_KILL", "CAP_NET_BIND_SERVICE", "CAP_NET_RAW"],
        "inheritable": ["CAP_KILL", "CAP_NET_BIND_SERVICE"],
        "ambient": ["CAP_NET_BIND_SERVICE"],
    });
    p["noNewPrivileges"] = false.into();
    p["rlimits"] = serde_json::json!([
        {"type": "RLIMIT_NOFILE", "soft": 1234, "hard": 2345},
        {"type": "RLIMIT_NPROC", "soft": 3000, "hard": 4000},
    ]);
    p["oomScoreAdj"] = 300.into();
    add_seccomp(cfg);
}

#[test]
fn same_process_as_runc_exec_for_a_user_with_groups_caps_rlimits_seccomp_and_oom_score() {
    if skip() {
        return;
    }
    check("user", &ContainerOpts { tweak: Some(user_container), ..Default::default() });
}

/// The config's user (1000) cannot enter its cwd (/root, 0700), or root without CAP_DAC_OVERRIDE (`-u 0`, runc
/// spec's default capabilities) cannot enter the user's (/home/app, 0700): runc changes directory before the
/// credential switch and again after it on EACCES.
#[test]
fn same_process_as_runc_exec_when_the_user_cannot_reach_the_cwd() {
    if skip() {
        return;
    }
    let mut all = findings(
        "cwd-own",
        &ContainerOpts {
            tweak: Some(|cfg| {
                cfg["process"]["user"] = serde_json::json!({"uid": 1000, "gid": 1000});
                cfg["process"]["cwd"] = "/home/app".into();
            }),
            prepare: Some(|r| {
                let home = r.join("home/app");
                std::os::unix::fs::chown(&home, Some(1000), Some(1000)).unwrap();
                std::fs::set_permissions(&home, std::os::unix::fs::PermissionsExt::from_mode(0o700)).unwrap()
            }),
            ..Default::default()
        },
    );
    all.extend(findings(
        "cwd",
        &ContainerOpts {
            tweak: Some(|cfg| {
                cfg["process"]["user"] = serde_json::json!({"uid": 1000, "gid": 1000});
                cfg["process"]["cwd"] = "/root".into();
            }),
            prepare: Some(|r| {
                std::fs::set_permissions(r.join("root"), std::os::unix::fs::PermissionsExt::from_mode(0o700)).unwrap()
            }),
            ..Default::default()
        },
    ));
    assert_same(all);
}

/// Container root is host uid 100000 (65536 ids mapped); the rootfs belongs to it.
#[test]
fn same_process_as_runc_exec_in_a_user_namespace() {
    if skip() {
        return;
    }
    let o = ContainerOpts {
        tweak: Some(|cfg| {
            cfg["linux"]["namespaces"].as_array_mut().unwrap().push(serde_json::json!({"type": "user"}));
            let map = serde_json::json!([{"containerID": 0, "hostID": 100000, "size": 65536}]);
            cfg["linux"]["uidMappings"] = map.clone();
            cfg["linux"]["gidMappings"] = map;
        }),
        prepare: Some(|r| {
            let ok = Command::new("chown").arg("-R").arg("-h").arg("100000:100000").arg(r).status().unwrap();
            assert!(ok.success());
            let ok = Command::new("chown").arg("-R").arg("101000:101000").arg(r.join("home/app")).status().unwrap();
            assert!(ok.success());
        }),
        ..Default::default()
    };
    let id = format!("{}-par-userns", prefix());
    let c = match Container::try_start(&world().root, &id, &o) {
        Ok(c) => c,
        Err(e) => {
            use std::io::Write;
            let _ = writeln!(std::io::stderr(), "SKIPPED user-namespace parity: runc cannot run it here: {e}");
            return;
        }
    };
    assert_same(compare("userns", &c));
}
