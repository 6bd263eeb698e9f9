//! crun containers end to end: real crun containers (see support/crun.rs for the cgroup set-up on a hybrid host)
//! found by an agent with its default configuration (crun's state root `/run/crun`), driven through the real
//! `dcos` binary: the task list, streams and exit codes, stdin, a terminal, user, environment and working
//! directory, the init's namespaces and cgroups (and parity with `crun exec`), a debug image, and a killed
//! container.

#[path = "support/registry.rs"]
mod registry;
mod support;

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;
use support::crun::*;
use support::*;

const ACL: &str = r#"
[[rule]]
subjects = ["user:admin"]
tasks = ["**"]
actions = ["*"]
images = ["**"]
"#;

/// One agent, a root crun container with a task id, an unprivileged one, and a busybox OCI layout.
struct CrunWorld {
    root: PathBuf,
    agent: Agent,
    main: CrunContainer,
    app: CrunContainer,
    main_task: String,
    layout: PathBuf,
}

fn crun_world() -> &'static CrunWorld {
    static W: OnceLock<CrunWorld> = OnceLock::new();
    W.get_or_init(|| {
        // Started from a thread that lives as long as the process: the agent's parent-death signal fires only
        // when the test process ends.
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            remove_stale_crun_containers();
            let p = prefix();
            let root = std::env::temp_dir().join(format!("{p}-crun"));
            let _ = std::fs::remove_dir_all(&root);
            std::fs::create_dir_all(&root).unwrap();
            let main_task = format!("crun-web-{p}");
            let main = CrunContainer::start(
                &root,
                &format!("{p}-crun-main"),
                &ContainerOpts {
                    annotations: vec![("io.dcos.task-id".into(), main_task.clone())],
                    prepare: Some(|rootfs| std::fs::write(rootfs.join("etc/crun-marker"), "made-for-crun\n").unwrap()),
                    ..Default::default()
                },
            );
            let app = CrunContainer::start(
                &root,
                &format!("{p}-crun-app"),
                &ContainerOpts { unprivileged: true, tweak: Some(add_seccomp), ..Default::default() },
            );
            let layout = root.join("layouts/busybox");
            std::fs::create_dir_all(layout.parent().unwrap()).unwrap();
            registry::umoci_image(&layout, "latest", &[&registry::populate_busybox]);
            // The default `[runtimes]` that `init` writes: crun's state root is found without configuration.
            let agent = registry::start_agent(&root.join("agent"), "", ACL);
            agent.kill_at_exit();
            tx.send(CrunWorld { root, agent, main, app, main_task, layout }).unwrap();
            loop {
                std::thread::park();
            }
        });
        rx.recv().expect("crun set-up failed (see the panic above)")
    })
}

fn ok(o: &Output) -> String {
    assert_eq!(o.status.code(), Some(0), "stdout: {}\nstderr: {}", stdout(o), stderr(o));
    stdout(o)
}

fn exec(w: &CrunWorld, opts: &[&str], task: &str, cmd: &[&str]) -> Output {
    run(w.agent.dcos().args(["task", "exec"]).args(opts).arg(task).args(cmd))
}

#[test]
fn crun_refuses_to_create_containers_on_this_hosts_cgroups_as_documented() {
    if skip() {
        return;
    }
    // The reason for the private mount namespace in support/crun.rs: without it, even with cgroups disabled,
    // crun refuses. On a host where crun runs as it is there is nothing to show.
    let Some(controllers) = hybrid_v2_controllers() else {
        return;
    };
    let w = crun_world();
    let id = format!("{}-crun-plain", prefix());
    let bundle = w.root.join(&id);
    let _ = std::fs::remove_dir_all(&bundle);
    copy_bundle(&w.main.bundle, &bundle);
    let err_path = w.root.join(format!("{id}.crun-err"));
    for manager in ["cgroupfs", "disabled"] {
        // Stdio to files: had crun started an init, it would hold a pipe open for ever.
        let st = Command::new("crun")
            .arg(format!("--cgroup-manager={manager}"))
            .args(["run", "-d", "--bundle"])
            .arg(&bundle)
            .arg(&id)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&err_path).unwrap())
            .status()
            .unwrap();
        let _ = Command::new("crun").args(["delete", "-f", &id]).output();
        let err = std::fs::read_to_string(&err_path).unwrap();
        assert!(!st.success(), "crun ran with cgroup2 controllers {controllers:?}");
        assert!(
            err.contains("cgroups in hybrid mode not supported, drop all controllers from cgroupv2"),
            "{manager}: {err}"
        );
    }
    let _ = std::fs::remove_dir_all(&bundle);
}

#[test]
fn task_list_shows_crun_containers_with_runtime_crun() {
    if skip() {
        return;
    }
    let w = crun_world();
    let o = run(w.agent.dcos().args(["task", "list", "--json"]));
    let v: Vec<serde_json::Value> = serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("{e}: {}", stderr(&o)));
    let main = v.iter().find(|t| t["container"] == w.main.id.as_str()).unwrap_or_else(|| panic!("main listed: {v:?}"));
    assert_eq!(main["id"], w.main_task.as_str(), "the task id comes from the bundle's annotation");
    assert_eq!(main["runtime"], "crun");
    assert_eq!(main["state"], "running");
    assert_eq!(main["pid"], w.main.init_pid());
    assert_eq!(main["pid"], w.main.status_file()["pid"]);
    let app = v.iter().find(|t| t["id"] == w.app.id.as_str()).expect("app listed by its container id");
    assert_eq!(app["runtime"], "crun");
    let table = ok(&run(w.agent.dcos().args(["task", "list"])));
    let line = table.lines().find(|l| l.starts_with(&w.main_task)).unwrap_or_else(|| panic!("{table}"));
    let cols: Vec<&str> = line.split_whitespace().collect();
    for cell in [w.main.id.as_str(), "crun", "running"] {
        assert!(cols.contains(&cell), "{cell} in {table}");
    }
}

#[test]
fn stdout_stderr_and_exit_code_come_back_separately() {
    if skip() {
        return;
    }
    let w = crun_world();
    for task in [&w.main_task, &w.main.id] {
        let o = w.agent.sh(task, "echo out; echo err >&2; exit 7");
        assert_eq!(stdout(&o), "out\n");
        assert_eq!(stderr(&o), "err\n");
        assert_eq!(o.status.code(), Some(7));
    }
    assert_eq!(exec(w, &[], &w.main.id, &["no-such-tool"]).status.code(), Some(127));
    assert_eq!(exec(w, &[], &w.main.id, &["sh", "-c", "kill -KILL $$"]).status.code(), Some(137));
    // The root filesystem is the container's.
    assert_eq!(ok(&exec(w, &[], &w.main.id, &["cat", "/etc/crun-marker"])), "made-for-crun\n");
}

#[test]
fn stdin_is_forwarded_with_i_and_eof_reaches_the_process() {
    if skip() {
        return;
    }
    let w = crun_world();
    let data: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    let o = run_with_input(w.agent.dcos().args(["task", "exec", "-i", &w.main.id, "sh", "-c", "cat; echo end"]), &data);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let mut expected = data.clone();
    expected.extend_from_slice(b"end\n");
    assert!(o.stdout == expected, "{} bytes back of {}", o.stdout.len(), expected.len());
    // Without -i nothing is forwarded: the process reads EOF at once.
    let o = run_with_input(w.agent.dcos().args(["task", "exec", &w.main.id, "sh", "-c", "wc -c"]), b"ignored");
    assert_eq!(stdout(&o).trim(), "0");
}

/// Runs `dcos` on a real pseudo-terminal; returns (master, child, slave).

#[test]
fn tty_session_gets_a_container_pts_of_the_local_size() {
    if skip() {
        return;
    }
    let w = crun_world();
    let init = w.main.init_pid();
    let (mut master, mut child, _slave) =
        on_pty(w.agent.dcos().args(["task", "exec", "-i", "-t", &w.main.id, "sh"]), 27, 93);
    master.write_all(b"t=$(tty); ls $t && echo TTY=$t; stty size; echo N=$(readlink /proc/self/ns/pid)\r").unwrap();
    let out = read_until(&mut master, "N=pid:", 30);
    let out = format!("{out}{}", read_until(&mut master, "]", 10));
    assert!(out.contains("TTY=/dev/pts/"), "{out}");
    assert!(out.contains("27 93"), "{out}");
    let init_pid_ns = std::fs::read_link(format!("/proc/{init}/ns/pid")).unwrap();
    assert!(out.contains(&format!("N={}", init_pid_ns.display())), "{out}");
    // Ctrl-C reaches the remote foreground process, then the shell's exit code comes back.
    // Sent once the sleep runs; only the Ctrl-C can end it within the wait.
    master.write_all(b"sleep 3131\r").unwrap();
    assert!(eventually(30, || host_process_count("sleep 3131") == 1), "the sleep did not start");
    master.write_all(b"\x03").unwrap();
    assert!(eventually(30, || host_process_count("sleep 3131") == 0), "Ctrl-C did not end the remote sleep");
    master.write_all(b"echo after-int; exit 5\r").unwrap();
    let out = read_until(&mut master, "after-int", 30);
    assert!(out.contains("after-int"), "{out}");
    let st = wait_within(&mut child, 30, "the tty session after `exit 5`");
    assert_eq!(st.code(), Some(5));
}

#[test]
fn user_env_and_workdir_from_the_bundle_and_the_flags() {
    if skip() {
        return;
    }
    let w = crun_world();
    // The bundle's user, env and cwd.
    let out = ok(&w.agent.sh(&w.main.id, "id -u; id -g; pwd; echo $PATH; echo $HOME"));
    assert_eq!(out, "0\n0\n/\n/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin\n/root\n");
    let out = ok(&w.agent.sh(&w.app.id, "id -u; id -g; pwd; grep CapEff /proc/self/status"));
    assert_eq!(out, "1000\n1000\n/home/app\nCapEff:\t0000000000000400\n");
    // -u, -e, -w.
    let out = ok(&exec(w, &["-u", "1000"], &w.main.id, &["sh", "-c", "id; echo $HOME; touch /root/x 2>&1 || true"]));
    let mut lines = out.lines();
    // The user's groups from the container's /etc/group, as `docker exec -u` gives them.
    assert_eq!(lines.next(), Some("uid=1000(app) gid=1000(app) groups=2000(extra)"), "{out}");
    assert_eq!(lines.next(), Some("/home/app"), "{out}");
    assert!(lines.next().is_some_and(|l| l.contains("Permission denied")), "{out}");
    let out = ok(&exec(w, &["-u", "app:extra"], &w.main.id, &["id"]));
    // USER:GROUP adds no groups from /etc/group (busybox `id` then prints no `groups=`).
    assert_eq!(out, "uid=1000(app) gid=2000(extra)\n");
    let out =
        ok(&exec(w, &["-e", "FOO=bar baz", "-e", "PATH=/bin"], &w.main.id, &["sh", "-c", "echo $FOO; echo $PATH"]));
    assert_eq!(out, "bar baz\n/bin\n");
    let out = ok(&exec(w, &["-w", "/tmp"], &w.main.id, &["pwd"]));
    assert_eq!(out, "/tmp\n");
    let o = exec(w, &["-w", "/no/such/dir"], &w.main.id, &["pwd"]);
    assert_ne!(o.status.code(), Some(0), "{}", stdout(&o));
}

#[test]
fn seccomp_filter_of_the_crun_container_applies_as_in_crun_exec() {
    if skip() {
        return;
    }
    let w = crun_world();
    // `app` denies mkdir with ENOSYS and IPv6 sockets with EAFNOSUPPORT (support::add_seccomp).
    let script = "mkdir /tmp/d$$ 2>&1; echo rc=$?; grep Seccomp: /proc/self/status";
    let ours = ok(&w.agent.sh(&w.app.id, script));
    assert!(ours.contains("Function not implemented\nrc=1\nSeccomp:\t2\n"), "{ours}");
    let o = w.app.crun_exec_as_configured(&["sh", "-c", script]);
    assert_eq!(o.status.code(), Some(0), "crun exec: {}", stderr(&o));
    assert_eq!(
        stdout(&o).replace(char::is_numeric, "#"),
        ours.replace(char::is_numeric, "#"),
        "crun exec: {}",
        stdout(&o)
    );
    // Without a filter in its config, the root container's sessions are not filtered.
    assert_eq!(ok(&w.agent.sh(&w.main.id, "grep Seccomp: /proc/self/status")), "Seccomp:\t0\n");
}

/// `name link` lines for every namespace of /proc/self, then those of /proc/1, the cgroups of both, the
/// capabilities, no_new_privs and seccomp mode, then the open-files limit, umask, oom_score_adj and ids.
const NS_AND_CGROUPS: &str = "for n in cgroup ipc mnt net pid time user uts; do echo $n $(readlink /proc/self/ns/$n); \
                              done; echo ---; for n in cgroup ipc mnt net pid time user uts; do \
                              echo $n $(readlink /proc/1/ns/$n); done; echo ---; cat /proc/self/cgroup; echo ---; \
                              cat /proc/1/cgroup; echo ---; grep -E '^(Cap|NoNewPrivs|Seccomp:)' /proc/self/status; \
                              echo ---; ulimit -n; umask; cat /proc/self/oom_score_adj; id";

#[test]
fn process_joins_every_namespace_and_cgroup_of_the_init_as_crun_exec_does() {
    if skip() {
        return;
    }
    let w = crun_world();
    let init = w.main.init_pid();
    let out = ok(&w.agent.sh(&w.main.id, NS_AND_CGROUPS));
    let parts: Vec<&str> = out.split("---\n").collect();
    assert_eq!(parts.len(), 6, "{out}");
    // The rlimit of `crun spec`'s config (the agent's own limit is raised to the hard one), umask, root.
    assert_eq!(parts[5], "1024\n0022\n0\nuid=0(root) gid=0(root)\n");
    assert_eq!(parts[0], parts[1], "namespaces of the session and of the init, from inside");
    assert_eq!(parts[0].lines().count(), 8, "{out}");
    for line in parts[0].lines() {
        let (name, link) = line.split_once(' ').unwrap();
        let theirs = std::fs::read_link(format!("/proc/{init}/ns/{name}")).unwrap();
        assert_eq!(link, theirs.to_str().unwrap(), "namespace {name}, as the host sees the init's");
        let ours = std::fs::read_link(format!("/proc/self/ns/{name}")).unwrap();
        if ["ipc", "mnt", "net", "pid", "uts"].contains(&name) {
            assert_ne!(link, ours.to_str().unwrap(), "crun gave the container its own {name} namespace");
        }
    }
    assert_eq!(parts[2], parts[3], "the session sits in the init's cgroups");
    let host_view = std::fs::read_to_string(format!("/proc/{init}/cgroup")).unwrap();
    assert_eq!(parts[2], host_view);
    // crun put the init in cgroups of its own (so joining them is observable): the status file's cgroup path.
    let cg_path = w.main.status_file()["cgroup-path"].as_str().expect("cgroup-path").to_string();
    assert!(!cg_path.is_empty());
    let memory = host_view.lines().find(|l| l.contains(":memory:")).expect("a memory cgroup");
    assert!(memory.ends_with(&format!(":memory:{cg_path}")), "{memory} vs {cg_path}");
    assert_ne!(host_view, std::fs::read_to_string("/proc/self/cgroup").unwrap());

    // no_new_privs comes from the container's config.json (`noNewPrivileges: true` in `crun spec`), as the init has.
    let init_status = std::fs::read_to_string(format!("/proc/{init}/status")).unwrap();
    assert!(init_status.contains("NoNewPrivs:\t1") && parts[4].contains("NoNewPrivs:\t1"), "{}", parts[4]);

    // `crun exec` with the container's process spec gives its process the same of everything above.
    let o = w.main.crun_exec_as_configured(&["sh", "-c", NS_AND_CGROUPS]);
    assert_eq!(o.status.code(), Some(0), "crun exec: {}", stderr(&o));
    assert_eq!(stdout(&o), out, "dcos task exec and crun exec --process");
    // Plain `crun exec ID CMD` (crun 1.8) leaves out the config's no_new_privs and rlimits; runc exec, docker exec
    // and the agent apply them. The rest is the same.
    let o = w.main.crun_exec(&[], &["sh", "-c", NS_AND_CGROUPS]);
    let plain = stdout(&o);
    let plain: Vec<&str> = plain.split("---\n").collect();
    assert_eq!(plain[..4], parts[..4], "plain crun exec: {}", stdout(&o));
}

#[test]
fn debug_image_session_sees_the_crun_container_at_target() {
    if skip() {
        return;
    }
    let w = crun_world();
    let init = w.main.init_pid();
    let mounts_before = std::fs::read_to_string(format!("/proc/{init}/mountinfo")).unwrap();
    let image = format!("oci:{}:latest", w.layout.display());
    let script = "cat /target/etc/crun-marker; ls /target/bin/busybox; cat /proc/1/cmdline | tr '\\0' ' '; echo; \
                  readlink /proc/self/ns/net; readlink /proc/self/ns/pid; ls /etc/crun-marker 2>&1; \
                  grep ' /target ' /proc/self/mountinfo | wc -l";
    let o = exec(w, &["--debug-image", &image], &w.main.id, &["sh", "-c", script]);
    let out = ok(&o);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 7, "{out}");
    assert_eq!(lines[0], "made-for-crun");
    assert_eq!(lines[1], "/target/bin/busybox");
    assert_eq!(lines[2], "sleep 100000 ");
    assert_eq!(lines[3], std::fs::read_link(format!("/proc/{init}/ns/net")).unwrap().to_str().unwrap());
    assert_eq!(lines[4], std::fs::read_link(format!("/proc/{init}/ns/pid")).unwrap().to_str().unwrap());
    assert!(lines[5].contains("No such file"), "/ is the image, not the container: {out}");
    assert_eq!(lines[6], "1", "{out}");
    let mounts_after = std::fs::read_to_string(format!("/proc/{init}/mountinfo")).unwrap();
    assert_eq!(mounts_before, mounts_after, "the container saw no new mount");
    // With -t as well.
    let (mut master, mut child, _slave) =
        on_pty(w.agent.dcos().args(["task", "exec", "-i", "-t", "--debug-image", &image, &w.main.id, "sh"]), 24, 80);
    master.write_all(b"tty; cat /target/etc/crun-marker; exit 4\r").unwrap();
    let out = read_until(&mut master, "made-for-crun", 30);
    assert!(out.contains("/dev/pts/") && out.contains("made-for-crun"), "{out}");
    assert_eq!(child.wait().unwrap().code(), Some(4));
}

#[test]
fn killed_crun_container_ends_the_session_and_is_refused_with_120() {
    if skip() {
        return;
    }
    let w = crun_world();
    let doomed = CrunContainer::start(&w.root, &format!("{}-crun-doomed", prefix()), &ContainerOpts::default());
    let mut child = w
        .agent
        .dcos()
        .args(["task", "exec", &doomed.id, "sh", "-c", "echo up; sleep 1000"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = [0u8; 3];
    child.stdout.as_mut().unwrap().read_exact(&mut first).unwrap();
    assert_eq!(&first, b"up\n");
    doomed.kill();
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(120), "{}", stderr(&out));
    assert!(stderr(&out).contains("stopped"), "{}", stderr(&out));
    // crun keeps its state until `crun delete`: the agent still finds the container (not 119, no such task) and
    // refuses it as not running.
    assert!(eventually(30, || doomed.state()["status"] == "stopped"), "{}", doomed.state());
    assert!(Path::new("/run/crun").join(&doomed.id).join("status").exists());
    let o = run(w.agent.dcos().args(["task", "exec", &doomed.id, "true"]));
    assert_eq!(o.status.code(), Some(120), "{}", stderr(&o));
    assert!(stderr(&o).contains("not running"), "{}", stderr(&o));
}

/// A container that `crun create` made but nobody started yet holds crun's `exec.fifo`: it is not running.
#[test]
fn created_but_not_started_crun_container_is_not_running() {
    if skip() {
        return;
    }
    let w = crun_world();
    let id = format!("{}-crun-created", prefix());
    let bundle = w.root.join(&id);
    let _ = std::fs::remove_dir_all(&bundle);
    copy_bundle(&w.main.bundle, &bundle);
    // The waiting init inherits crun's stdio: a pipe would never reach EOF, so errors go to a file.
    let err_path = w.root.join(format!("{id}.crun-err"));
    let st = crun_creating()
        .args(["create", "--bundle"])
        .arg(&bundle)
        .arg(&id)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&err_path).unwrap())
        .status()
        .unwrap();
    let created = CrunContainer { id: id.clone(), bundle };
    assert!(st.success(), "crun create: {}", std::fs::read_to_string(&err_path).unwrap_or_default());
    assert_eq!(created.state()["status"], "created");
    assert!(Path::new("/run/crun").join(&id).join("exec.fifo").exists());
    let v: Vec<serde_json::Value> =
        serde_json::from_slice(&run(w.agent.dcos().args(["task", "list", "--json"])).stdout).unwrap();
    let t = v.iter().find(|t| t["container"] == id.as_str()).expect("the created container is listed");
    assert_eq!(t["state"], "created");
    let o = run(w.agent.dcos().args(["task", "exec", &id, "true"]));
    assert_eq!(o.status.code(), Some(120), "{}", stderr(&o));
}

/// `cp -a` of a bundle (config and rootfs).
fn copy_bundle(from: &Path, to: &Path) {
    let o = run(Command::new("cp").arg("-a").arg(from).arg(to));
    assert!(o.status.success(), "cp -a: {}", stderr(&o));
}
