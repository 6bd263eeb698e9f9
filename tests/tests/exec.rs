//! `dcos task exec` against real runc containers through a real agent: streams, exit codes, the container's
//! namespaces, cgroup, user, capabilities, stdin, terminals and signals.

mod support;

use std::io::{Read, Write};
use std::process::Stdio;
use std::time::Duration;
use support::*;

#[test]
fn stdout_stderr_and_exit_code_come_back_separately() {
    if skip() {
        return;
    }
    let w = world();
    let o = w.agent.sh(&w.main_task, "echo out; echo err >&2; exit 7");
    assert_eq!(stdout(&o), "out\n");
    assert_eq!(stderr(&o), "err\n");
    assert_eq!(o.status.code(), Some(7));
}

#[test]
fn process_joins_every_namespace_and_the_cgroup_of_the_container_init() {
    if skip() {
        return;
    }
    let w = world();
    let init = w.main.init_pid();
    let script = "for n in mnt pid net ipc uts cgroup; do echo $n $(readlink /proc/self/ns/$n); done; \
                  echo ---; cat /proc/self/cgroup; echo ---; cat /proc/1/cgroup";
    let o = run(w.agent.dcos().args(["task", "exec", &w.main.id, "sh", "-c", script]));
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let out = stdout(&o);
    let mut parts = out.split("---\n");
    let ns = parts.next().unwrap();
    for line in ns.lines() {
        let (name, link) = line.split_once(' ').unwrap();
        let host = std::fs::read_link(format!("/proc/{init}/ns/{name}")).unwrap();
        assert_eq!(link, host.to_str().unwrap(), "namespace {name}");
    }
    assert_eq!(ns.lines().count(), 6);
    let (mine, inits) = (parts.next().unwrap(), parts.next().unwrap());
    assert_eq!(mine, inits, "the session sits in the init's cgroups");
    // And from the host: the process is listed in the container's cgroup.
    let host_cg = std::fs::read_to_string(format!("/proc/{init}/cgroup")).unwrap();
    assert!(host_cg.lines().count() >= 1);
}

#[test]
fn process_shows_in_ps_with_a_pid_of_the_container() {
    if skip() {
        return;
    }
    let w = world();
    let o = w.agent.sh(&w.main.id, "echo $$; ps -o pid,args; true");
    let out = stdout(&o);
    let mut lines = out.lines();
    let pid: i32 = lines.next().unwrap().trim().parse().unwrap();
    assert!(pid > 1 && pid < 10_000, "pid {pid} is of the container's namespace");
    let rest: Vec<&str> = lines.collect();
    assert!(rest.iter().any(|l| l.trim_start().starts_with("1 ") && l.contains("sleep 100000")), "{out}");
    assert!(rest.iter().any(|l| l.trim_start().starts_with(&format!("{pid} "))), "{out}");
}

#[test]
fn stdin_is_forwarded_and_eof_reaches_the_process() {
    if skip() {
        return;
    }
    let w = world();
    let o = run_with_input(w.agent.dcos().args(["task", "exec", "-i", &w.main_task, "sort"]), b"b\na\n");
    assert_eq!(stdout(&o), "a\nb\n");
    assert_eq!(o.status.code(), Some(0));
    // Without -i the process reads EOF at once.
    let o = run(w.agent.dcos().args(["task", "exec", &w.main_task, "wc", "-c"]));
    assert_eq!(stdout(&o).trim(), "0");
}

#[test]
fn large_streams_arrive_intact_both_ways() {
    if skip() {
        return;
    }
    let w = world();
    let data: Vec<u8> = (0..8_000_000u32).map(|i| ((i.wrapping_mul(2_654_435_761) >> 13) & 0xff) as u8).collect();
    let o = run_with_input(w.agent.dcos().args(["task", "exec", "-i", &w.main.id, "cat"]), &data);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(o.stdout == data, "8 MB echoed back byte for byte (got {} bytes)", o.stdout.len());
    let o = run(w.agent.dcos().args(["task", "exec", &w.main.id, "head", "-c", "50000000", "/dev/zero"]));
    assert_eq!(o.stdout.len(), 50_000_000);
    assert!(o.stdout.iter().all(|&b| b == 0));
}

#[test]
fn exit_codes_follow_docker_exec() {
    if skip() {
        return;
    }
    let w = world();
    let code = |args: &[&str]| {
        let mut full = vec!["task", "exec", w.main.id.as_str()];
        full.extend_from_slice(args);
        let o = run(w.agent.dcos().args(&full));
        (o.status.code(), stderr(&o))
    };
    let (c, e) = code(&["no-such-tool"]);
    assert_eq!(c, Some(127), "{e}");
    assert!(e.contains("not found"), "{e}");
    let (c, e) = code(&["/etc/passwd"]);
    assert_eq!(c, Some(126), "{e}");
    assert_eq!(code(&["sh", "-c", "kill -9 $$"]).0, Some(137));
    assert_eq!(code(&["sh", "-c", "kill -TERM $$"]).0, Some(143));
    let (c, e) = code(&["-w", "/nonexistent", "true"]).clone();
    assert_eq!(c, Some(125), "{e}");
}

#[test]
fn env_user_workdir_come_from_the_bundle_and_the_overrides() {
    if skip() {
        return;
    }
    let w = world();
    let o = w.agent.sh(&w.main.id, "id -u; pwd; echo $PATH; echo $HOME");
    assert_eq!(stdout(&o), "0\n/\n/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin\n/root\n");
    let o = run(w.agent.dcos().args([
        "task",
        "exec",
        "-u",
        "app",
        "-w",
        "/tmp",
        "-e",
        "A=b=c",
        "-e",
        "PATH=/bin",
        &w.main.id,
        "sh",
        "-c",
        "id -u; id -g; id -G; pwd; echo $A; echo $PATH; echo $HOME",
    ]));
    assert_eq!(stdout(&o), "1000\n1000\n1000 2000\n/tmp\nb=c\n/bin\n/home/app\n", "{}", stderr(&o));
    let o = run(w.agent.dcos().args(["task", "exec", "-u", "1234:55", &w.main.id, "sh", "-c", "id -u; id -g"]));
    assert_eq!(stdout(&o), "1234\n55\n");
    let o = run(w.agent.dcos().args(["task", "exec", "-u", "nobody-here", &w.main.id, "true"]));
    assert_eq!(o.status.code(), Some(125));
    assert!(stderr(&o).contains("no user"), "{}", stderr(&o));
}

#[test]
fn unprivileged_container_keeps_its_user_capabilities_and_no_new_privs() {
    if skip() {
        return;
    }
    let w = world();
    let o = w.agent.sh(&w.app.id, "id -u; pwd; grep -E '^(CapEff|CapPrm|CapBnd|NoNewPrivs)' /proc/self/status");
    let out = stdout(&o);
    assert!(out.starts_with("1000\n/home/app\n"), "{out}");
    // CAP_NET_BIND_SERVICE is bit 10.
    assert!(out.contains("CapEff:\t0000000000000400"), "{out}");
    assert!(out.contains("CapPrm:\t0000000000000400"), "{out}");
    assert!(out.contains("CapBnd:\t0000000000000400"), "{out}");
    assert!(out.contains("NoNewPrivs:\t1"), "{out}");
    let o = run(w.agent.dcos().args(["task", "exec", &w.app.id, "sh", "-c", "ulimit -n"]));
    assert_eq!(stdout(&o).trim(), "1024", "rlimits of the bundle apply");
}

#[test]
fn read_only_rootfs_stays_read_only() {
    if skip() {
        return;
    }
    let w = world();
    let o = w.agent.sh(&w.ro.id, "touch /x 2>&1; echo rc=$?");
    let out = stdout(&o);
    assert!(out.contains("Read-only file system") && out.contains("rc=1"), "{out}");
}

#[test]
fn no_agent_fd_cwd_or_binary_reaches_the_container() {
    if skip() {
        return;
    }
    let w = world();
    let o = w.agent.sh(&w.main.id, "ls /proc/$$/fd; readlink /proc/$$/cwd; readlink /proc/$$/root; for p in /proc/[0-9]*; do readlink $p/exe; done; true");
    let out = stdout(&o);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(&lines[..5], &["0", "1", "2", "/", "/"], "{out}");
    assert!(!out.contains("dcos") && !out.contains("memfd"), "{out}");
}

#[test]
fn signals_are_forwarded_without_a_tty() {
    if skip() {
        return;
    }
    let w = world();
    let mut child = w
        .agent
        .dcos()
        .args([
            "task",
            "exec",
            &w.main.id,
            "sh",
            "-c",
            "trap 'echo got-int; exit 9' INT; echo ready; while :; do sleep 0.1; done",
        ])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = child.stdout.take().unwrap();
    let mut buf = [0u8; 6];
    out.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"ready\n");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(i32::try_from(child.id()).unwrap()),
        nix::sys::signal::Signal::SIGINT,
    )
    .unwrap();
    let mut rest = String::new();
    out.read_to_string(&mut rest).unwrap();
    let st = child.wait().unwrap();
    assert_eq!(rest, "got-int\n");
    assert_eq!(st.code(), Some(9));
}

/// Runs `dcos` on a real pseudo-terminal; returns (master, child).
#[test]
fn tty_session_has_a_container_pts_forwards_size_and_restores_the_terminal() {
    if skip() {
        return;
    }
    use std::os::fd::AsFd;
    let w = world();
    let (mut master, mut child, slave) =
        on_pty(w.agent.dcos().args(["task", "exec", "-i", "-t", &w.main.id, "sh"]), 33, 101);
    let before = nix::sys::termios::tcgetattr(slave.as_fd()).unwrap();
    master.write_all(b"t=$(tty); ls $t && echo TTY=$t; stty size; echo T=$TERM\r").unwrap();
    let out = read_until(&mut master, "T=xterm", 30);
    assert!(out.contains("TTY=/dev/pts/"), "{out}");
    assert!(out.contains("33 101"), "{out}");
    // The local terminal is raw while the session runs.
    let during = nix::sys::termios::tcgetattr(slave.as_fd()).unwrap();
    assert!(!during.local_flags.contains(nix::sys::termios::LocalFlags::ICANON));
    // Resize: change the local window, tell dcos, ask the remote side.
    let ws = libc::winsize { ws_row: 40, ws_col: 120, ws_xpixel: 0, ws_ypixel: 0 };
    // SAFETY: TIOCSWINSZ with a valid winsize on our pty master.
    unsafe { libc::ioctl(std::os::fd::AsRawFd::as_raw_fd(&master), libc::TIOCSWINSZ, &ws) };
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(i32::try_from(child.id()).unwrap()),
        nix::sys::signal::Signal::SIGWINCH,
    )
    .unwrap();
    // dcos forwards the new size when it gets to it: ask until the remote side has it.
    let mut out = String::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !out.contains("40 120") {
        assert!(std::time::Instant::now() < deadline, "the new size never reached the session: {out}");
        master.write_all(b"stty size\r").unwrap();
        out.push_str(&read_until(&mut master, "40 120", 1));
    }
    // Ctrl-C goes to the remote foreground process (sleep), not to dcos: sent once the sleep runs, and only it
    // can end the sleep within the wait.
    master.write_all(b"sleep 3030\r").unwrap();
    assert!(eventually(30, || host_process_count("sleep 3030") == 1), "the sleep did not start");
    master.write_all(b"\x03").unwrap();
    assert!(eventually(30, || host_process_count("sleep 3030") == 0), "Ctrl-C did not end the remote sleep");
    master.write_all(b"echo after-int; exit 5\r").unwrap();
    let out = read_until(&mut master, "after-int", 30);
    assert!(out.contains("after-int"), "{out}");
    let st = wait_within(&mut child, 30, "the tty session after `exit 5`");
    assert_eq!(st.code(), Some(5));
    let after = nix::sys::termios::tcgetattr(slave.as_fd()).unwrap();
    assert_eq!(after.local_flags, before.local_flags, "terminal restored");
    assert_eq!(after.input_flags, before.input_flags, "terminal restored");
}

#[test]
fn tty_without_a_local_terminal_is_refused_like_docker() {
    if skip() {
        return;
    }
    let w = world();
    let o = run(w.agent.dcos().args(["task", "exec", "-it", &w.main.id, "sh"]));
    assert_eq!(o.status.code(), Some(125));
    assert!(stderr(&o).contains("not a TTY"), "{}", stderr(&o));
    // -t alone works without one: the remote side still gets a terminal.
    let o = run(w.agent.dcos().args(["task", "exec", "-t", &w.main.id, "tty"]));
    assert!(stdout(&o).starts_with("/dev/pts/"), "{}", stdout(&o));
}

#[test]
fn task_list_shows_tasks_with_their_annotation_ids() {
    if skip() {
        return;
    }
    let w = world();
    let o = run(w.agent.dcos().args(["task", "list", "--json"]));
    let v: Vec<serde_json::Value> = serde_json::from_slice(&o.stdout).unwrap();
    let main = v.iter().find(|t| t["container"] == w.main.id.as_str()).expect("main listed");
    assert_eq!(main["id"], w.main_task.as_str());
    assert_eq!(main["runtime"], "runc");
    assert_eq!(main["state"], "running");
    assert_eq!(main["pid"], w.main.init_pid());
    assert!(v.iter().any(|t| t["id"] == w.app.id.as_str()));
    let o = run(w.agent.dcos().args(["task", "list"]));
    let table = stdout(&o);
    assert!(table.starts_with("ID"), "{table}");
    assert!(table.lines().any(|l| l.starts_with(&w.main_task) && l.contains("running")), "{table}");
}

#[test]
fn sessions_are_audited_with_user_command_status_and_bytes() {
    if skip() {
        return;
    }
    let w = world();
    let marker = format!("audit-marker-{}", std::process::id());
    let o = run(w.agent.dcos().args(["task", "exec", &w.main_task, "echo", &marker]));
    assert_eq!(o.status.code(), Some(0));
    let recs = w.agent.audit();
    let r = recs
        .iter()
        .find(|r| r["event"] == "session_end" && r["command"][1] == marker.as_str())
        .expect("session record");
    assert_eq!(r["user"], "admin");
    assert_eq!(r["task"], w.main_task.as_str());
    assert_eq!(r["container"], w.main.id.as_str());
    assert_eq!(r["status"]["status"], "exited");
    assert_eq!(r["status"]["code"], 0);
    assert_eq!(r["bytes_out"], marker.len() as u64 + 1);
    assert!(r["source"].as_str().unwrap().starts_with("127.0.0.1:"));
    assert!(r["start"].as_str().is_some() && r["end"].as_str().is_some());
    let log = std::fs::read_to_string(w.agent.dir.join("audit.log")).unwrap();
    assert!(!log.contains(&w.agent.admin_token), "no token in the audit log");
    let alog = std::fs::read_to_string(w.agent.dir.join("agent.log")).unwrap();
    assert!(!alog.contains(&w.agent.admin_token), "no token in the agent log");
}
