//! Docker containers as tasks, end to end: a real `dockerd` (its own data root, exec root and socket, no bridge
//! or iptables, its own containerd), an image imported from a local busybox rootfs (no network), and the real
//! agent and `dcos` CLI. One dockerd per test binary; it and its directories go at exit, pass or fail.

#[path = "support/registry.rs"]
mod registry;
mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::Duration;
use support::*;

use support::dockerd::{self, DOCKER};

struct Dockerd {
    sock: PathBuf,
    exec_root: PathBuf,
    image: String,
}

struct DockerWorld {
    d: Dockerd,
    agent: Agent,
}

fn docker(d: &Dockerd, args: &[&str]) -> Output {
    run(Command::new(DOCKER).arg("-H").arg(format!("unix://{}", d.sock.display())).args(args))
}

fn docker_ok(d: &Dockerd, args: &[&str]) -> String {
    let o = docker(d, args);
    assert!(o.status.success(), "docker {args:?}: {}", stderr(&o));
    stdout(&o).trim().to_string()
}

/// Starts dockerd in `dir` (see `support::dockerd`) with the tests' busybox image imported.
fn start_dockerd(dir: &Path) -> Dockerd {
    // vfs: no overlay mounts to leave behind, and it works on any filesystem the temp dir is on.
    start_dockerd_with(dir, "vfs")
}

/// [`start_dockerd`] with another storage driver.
fn start_dockerd_with(dir: &Path, driver: &str) -> Dockerd {
    let daemon = dockerd::start_with(dir, driver);
    let d = Dockerd { sock: daemon.sock, exec_root: daemon.exec_root, image: format!("{}-img:1", prefix()) };
    // The image: the tests' busybox rootfs, imported from a tar (no registry, no network).
    let rootfs = dir.join("rootfs");
    make_rootfs(&rootfs);
    let tar = dir.join("rootfs.tar");
    let o = run(Command::new("tar").arg("-C").arg(&rootfs).arg("-cf").arg(&tar).arg("."));
    assert!(o.status.success(), "tar: {}", stderr(&o));
    docker_ok(&d, &["import", &tar.display().to_string(), &d.image]);
    d
}

static WORLD: OnceLock<DockerWorld> = OnceLock::new();

/// The agent's `[runtimes]`: this dockerd's runc root, its socket and one that does not exist, its containerd.
fn runtimes(d: &Dockerd, root: &Path) -> String {
    format!(
        "runc_roots = [\"{}/runtime-runc/moby\"]\ncrun_roots = []\n\
         docker_sockets = [\"{}\", \"{}/no-such-engine.sock\"]\n\
         containerd_sockets = [\"{}/containerd/containerd.sock\"]\napi_timeout = \"10s\"",
        d.exec_root.display(),
        d.sock.display(),
        root.display(),
        d.exec_root.display(),
    )
}

/// Debug sessions: `ro` may look at a stopped container's files, `rw` may change them too.
const DEBUG_RULES: &str = r#"
[[rule]]
subjects = ["user:admin", "user:rw"]
tasks = ["*"]
actions = ["list", "debug", "debug:write"]
images = ["**"]

[[rule]]
subjects = ["user:ro"]
tasks = ["*"]
actions = ["list", "debug"]
images = ["**"]
"#;

fn world() -> &'static DockerWorld {
    WORLD.get_or_init(|| {
        // Started from a thread that lives as long as the process: the parent-death signals of dockerd and
        // the agent fire only when the test process ends.
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let root = std::env::temp_dir().join(format!("{}-docker", prefix()));
            let d = start_dockerd(&root);
            let runtimes = runtimes(&d, &root);
            let agent = Agent::start_with_runtimes(&root.join("agent"), "", &runtimes, &format!("{ACL}{DEBUG_RULES}"));
            agent.kill_at_exit();
            tx.send(DockerWorld { d, agent }).unwrap();
            loop {
                std::thread::park();
            }
        });
        rx.recv().expect("docker world set-up failed (see the panic above)")
    })
}

/// `docker run -d` with `args` before the image, then `CMD`; returns the full id.
fn run_container(w: &DockerWorld, name: &str, args: &[&str], cmd: &[&str]) -> String {
    let mut a = vec!["run", "-d", "--name", name];
    a.extend_from_slice(args);
    a.push(&w.d.image);
    a.extend_from_slice(cmd);
    docker_ok(&w.d, &a)
}

fn list_json(w: &DockerWorld, args: &[&str]) -> Vec<serde_json::Value> {
    let o = run(w.agent.dcos().args(["task", "list", "--json"]).args(args));
    assert!(o.status.success(), "{}", stderr(&o));
    serde_json::from_slice(&o.stdout).unwrap()
}

#[test]
fn docker_containers_are_tasks_by_name_slash_name_short_id_and_full_id() {
    if skip() {
        return;
    }
    let w = world();
    let name = format!("{}-web", prefix());
    let project = format!("{}proj", prefix());
    let id = run_container(
        w,
        &name,
        &["-l", "com.docker.compose.service=web", "-l", &format!("com.docker.compose.project={project}")],
        &["sleep", "100000"],
    );
    assert_eq!(id.len(), 64, "{id}");
    let rows = list_json(w, &[]);
    let row = rows.iter().find(|t| t["container"] == id.as_str()).unwrap_or_else(|| panic!("{rows:?}"));
    assert_eq!(row["name"], name.as_str());
    assert_eq!(row["runtime"], "docker");
    assert_eq!(row["state"], "running");
    assert_eq!((row["service"].as_str(), row["project"].as_str()), (Some("web"), Some(project.as_str())));
    // The table shows the name and the 12-character id, in aligned columns.
    let o = run(w.agent.dcos().args(["task", "list"]));
    let table = stdout(&o);
    let header = table.lines().next().unwrap();
    let line = table.lines().find(|l| l.contains(&name)).unwrap_or_else(|| panic!("{table}"));
    assert!(line.starts_with(&id[..12]) && !line.contains(&id), "{table}");
    assert_eq!(header.find("NAME"), line.find(&name), "{table}");
    assert_eq!(header.find("RUNTIME"), line.find("docker"), "{table}");
    // The pattern filters, -q prints ids only.
    let o = run(w.agent.dcos().args(["task", "list", "-q", &name]));
    assert_eq!(stdout(&o), format!("{id}\n"));
    // Docker sets HOSTNAME to the short id: the exec runs in this container, with its environment.
    let short = &id[..12];
    for task in [name.clone(), format!("/{name}"), short.to_string(), id[..8].to_string(), id.clone()] {
        let o = w.agent.sh(&task, "echo $HOSTNAME");
        assert_eq!((o.status.code(), stdout(&o)), (Some(0), format!("{short}\n")), "{task}: {}", stderr(&o));
    }
    docker_ok(&w.d, &["rm", "-f", &id]);
}

/// What `docker exec` gives the process (user, groups, environment, workdir), `dcos task exec` gives it too, with
/// and without `-u`, `-e`, `-w`; and `-i` and `-t` work.
#[test]
fn exec_gives_what_docker_exec_gives() {
    if skip() {
        return;
    }
    let w = world();
    let name = format!("{}-parity", prefix());
    run_container(w, &name, &["-u", "app", "-w", "/srv", "-e", "ZONE=blue"], &["sleep", "100000"]);
    let script = "id; pwd; echo $ZONE $HOME $PATH $HOSTNAME; cat /proc/self/status | grep -E '^Cap(Eff|Bnd)'";
    // Not compared: `-u` naming another user or a group. Docker writes the container user's
    // /etc/group memberships into config.json's additionalGids and `docker exec -u root` drops them, while the
    // exec helper keeps config.json's additionalGids for every user, as `runc exec` does.
    for opts in [&[][..], &["-u", "app"], &["-u", "1000"], &["-e", "ZONE=red", "-e", "X=1"], &["-w", "/tmp"]] {
        let mut d = vec!["exec"];
        d.extend_from_slice(opts);
        d.extend_from_slice(&[&name, "sh", "-c", script]);
        let want = docker_ok(&w.d, &d);
        let o = run(w.agent.dcos().args(["task", "exec"]).args(opts).args([&name, "sh", "-c", script]));
        assert_eq!(o.status.code(), Some(0), "{opts:?}: {}", stderr(&o));
        assert_eq!(stdout(&o).trim(), want, "{opts:?}");
    }
    let o = run(w.agent.dcos().args(["task", "exec", "-u", "root", &name, "id", "-u"]));
    assert_eq!(stdout(&o), "0\n", "{}", stderr(&o));
    let o = run_with_input(w.agent.dcos().args(["task", "exec", "-i", &name, "sh", "-c", "cat; echo ."]), b"fed\n");
    assert_eq!(stdout(&o), "fed\n.\n", "{}", stderr(&o));
    let o = run(w.agent.dcos().args(["task", "exec", "-t", &name, "tty"]));
    assert!(stdout(&o).starts_with("/dev/pts/"), "{}", stdout(&o));
    docker_ok(&w.d, &["rm", "-f", &name]);
}

#[test]
fn an_ambiguous_name_fails_with_its_candidates_and_exit_123() {
    if skip() {
        return;
    }
    let w = world();
    let base = format!("{}-twin", prefix());
    let one = run_container(w, &format!("{base}-1"), &[], &["sleep", "100000"]);
    let two = run_container(w, &format!("{base}-2"), &[], &["sleep", "100000"]);
    let o = w.agent.sh(&base, "true");
    assert_eq!(o.status.code(), Some(123), "{}", stderr(&o));
    let err = stderr(&o);
    assert!(err.contains(&format!("{base}-1")) && err.contains(&format!("{base}-2")), "{err}");
    assert!(err.contains(&one[..12]) && err.contains(&two[..12]), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    // The exact name still wins, and so does a unique part.
    assert_eq!(stdout(&w.agent.sh(&format!("{base}-2"), "echo $HOSTNAME")), format!("{}\n", &two[..12]));
    assert_eq!(stdout(&w.agent.sh("twin-1", "echo $HOSTNAME")), format!("{}\n", &one[..12]));
    let o = run(w.agent.dcos().args(["task", "list", "-q", &base]));
    let mut ids: Vec<String> = stdout(&o).lines().map(String::from).collect();
    ids.sort();
    let mut want = vec![one.clone(), two.clone()];
    want.sort();
    assert_eq!(ids, want);
    docker_ok(&w.d, &["rm", "-f", &one, &two]);
}

/// The attack: a Docker user names a container after another container's short id, the 12 characters
/// `dcos task list` and `docker ps` print and people type. Were an exact name to win over an id prefix, the
/// victim's `dcos task exec -i SHORT-ID` would land in the attacker's container with its stdin. It is ambiguous
/// instead, naming both; the full id and the victim's name still reach the victim.
#[test]
fn a_container_named_after_another_ones_short_id_does_not_take_its_sessions() {
    if skip() {
        return;
    }
    let w = world();
    let victim = run_container(w, &format!("{}-victim", prefix()), &[], &["sleep", "100000"]);
    let short = &victim[..12];
    let attacker = run_container(w, short, &[], &["sh", "-c", "cat > /got-stdin; sleep 100000"]);
    let o =
        run_with_input(w.agent.dcos().args(["task", "exec", "-i", short, "sh", "-c", "cat > /dev/null"]), b"secret\n");
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(123), "{err}");
    assert!(err.contains(short) && err.contains(&attacker[..12]), "both are named: {err}");
    let got = docker(&w.d, &["exec", &attacker, "cat", "/got-stdin"]);
    assert!(!stdout(&got).contains("secret"), "the attacker got the victim's input");
    for task in [victim.clone(), format!("{}-victim", prefix())] {
        let o = w.agent.sh(&task, "echo $HOSTNAME");
        assert_eq!((o.status.code(), stdout(&o)), (Some(0), format!("{short}\n")), "{task}: {}", stderr(&o));
    }
    docker_ok(&w.d, &["rm", "-f", &victim, &attacker]);
}

#[test]
fn stopped_containers_are_listed_with_their_exit_status_and_refused() {
    if skip() {
        return;
    }
    let w = world();
    let name = format!("{}-crashed", prefix());
    let o = docker(&w.d, &["run", "--name", &name, &w.d.image, "sh", "-c", "exit 3"]);
    assert_eq!(o.status.code(), Some(3), "{}", stderr(&o));
    assert!(list_json(w, &[]).iter().all(|t| t["name"] != name.as_str()), "stopped ones only with --all");
    let rows = list_json(w, &["--all"]);
    let row = rows.iter().find(|t| t["name"] == name.as_str()).unwrap_or_else(|| panic!("{rows:?}"));
    assert_eq!((row["state"].as_str(), row["exit_code"].as_i64()), (Some("stopped"), Some(3)));
    let table = stdout(&run(w.agent.dcos().args(["task", "list", "--all", &name])));
    assert!(table.contains("stopped (3)"), "{table}");
    let o = w.agent.sh(&name, "true");
    assert_eq!(o.status.code(), Some(120), "{}", stderr(&o));
    assert!(stderr(&o).contains("not running"), "{}", stderr(&o));
    docker_ok(&w.d, &["rm", "-f", &name]);
}

#[test]
fn a_container_removed_mid_session_ends_it_with_container_stopped() {
    if skip() {
        return;
    }
    let w = world();
    let name = format!("{}-doomed", prefix());
    run_container(w, &name, &[], &["sleep", "100000"]);
    let mut child = w
        .agent
        .dcos()
        .args(["task", "exec", &name, "sh", "-c", "echo up; sleep 1000"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = [0u8; 3];
    std::io::Read::read_exact(child.stdout.as_mut().unwrap(), &mut first).unwrap();
    docker_ok(&w.d, &["rm", "-f", &name]);
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(120), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stderr).contains("stopped"), "{}", String::from_utf8_lossy(&out.stderr));
    let o = w.agent.sh(&name, "true");
    assert_eq!(o.status.code(), Some(119), "gone from Docker and runc alike: {}", stderr(&o));
}

/// The agent is configured with a second Docker socket that does not exist: lists and execs work, the log warns,
/// and `GET /v1/runtimes` says which engine is unreachable and why.
#[test]
fn an_unreachable_engine_is_a_warning_and_a_status_never_a_failure() {
    if skip() {
        return;
    }
    let w = world();
    let name = format!("{}-still", prefix());
    run_container(w, &name, &[], &["sleep", "100000"]);
    assert!(list_json(w, &[]).iter().any(|t| t["name"] == name.as_str()));
    assert_eq!(w.agent.sh(&name, "true").status.code(), Some(0));
    let log = std::fs::read_to_string(w.agent.dir.join("agent.log")).unwrap();
    assert!(log.contains("no-such-engine.sock") && log.contains("unreachable"), "{log}");
    let get = |token: &str| {
        run(Command::new("curl")
            .args(["-sS", "--cacert"])
            .arg(w.agent.dir.join("ca.crt"))
            .args(["-H", &format!("Authorization: Bearer {token}"), "-w", "\n%{http_code}"])
            .arg(format!("{}/v1/runtimes", w.agent.url)))
    };
    let o = get(&w.agent.admin_token);
    let text = stdout(&o);
    let (body, code) = text.rsplit_once('\n').unwrap();
    assert_eq!(code, "200", "{text}");
    let v: Vec<serde_json::Value> = serde_json::from_str(body).unwrap();
    let by = |path: &str| v.iter().find(|r| r["path"].as_str().is_some_and(|p| p.ends_with(path))).unwrap();
    assert_eq!(by("docker.sock")["status"], "ok", "{body}");
    assert!(by("docker.sock")["containers"].as_u64().unwrap() >= 1, "{body}");
    assert_eq!(by("no-such-engine.sock")["status"], "unreachable", "{body}");
    assert!(by("no-such-engine.sock")["error"].as_str().unwrap().contains("No such file"), "{body}");
    assert_eq!(by("containerd.sock")["status"], "ok", "dockerd's own containerd: {body}");
    assert_eq!(by("runtime-runc/moby")["status"], "ok", "{body}");
    // Authenticated, and only for those who may list something.
    assert!(stdout(&get("not-a-token")).ends_with("401"));
    let mallory = w.agent.token("mallory", &[], "1h");
    assert!(stdout(&get(&mallory)).ends_with("403"));
    docker_ok(&w.d, &["rm", "-f", &name]);
}

/// The debug image: the tests' busybox as an OCI layout (no registry).
fn debug_image(dir: &Path) -> String {
    let layout = dir.join("layout");
    registry::write_layout(&layout, "v1", &[registry::busybox_layer()]);
    format!("oci:{}:v1", layout.display())
}

/// What a debug session sees of a crashed container: its log in its root, its named volume, its read-only bind
/// mount of a host directory, its hostname; no network; and whether it may write to the container's root.
const PROBE: &str = "cat /target/root/app.log /target/vol/note /target/host/note; hostname; ip -o link | wc -l; \
                     touch /target/root/written 2>/dev/null; echo touch=$?";

/// A container of a real dockerd that wrote a file and exited 3: Docker removed its bundle and runc state, so its
/// files come from the engine (inspect's GraphDriver, Mounts, Config). Listed with its exit status, refused to
/// plain exec, debugged read-only without `debug:write` and read-write with it, in a sandbox without network;
/// and once removed, gone.
#[test]
fn a_crashed_docker_container_is_debugged_in_a_sandbox_on_its_files() {
    if skip() {
        return;
    }
    let w = world();
    let p = prefix();
    let name = format!("{p}-dbg");
    let dir = std::env::temp_dir().join(format!("{p}-docker-dbg"));
    let host = dir.join("host");
    std::fs::create_dir_all(&host).unwrap();
    std::fs::write(host.join("note"), "from the host\n").unwrap();
    let image = debug_image(&dir);
    let o = docker(
        &w.d,
        &[
            "run",
            "--name",
            &name,
            "--hostname",
            "crashbox",
            "-v",
            &format!("{p}-vol:/vol"),
            "-v",
            &format!("{}:/host:ro", host.display()),
            &w.d.image,
            "sh",
            "-c",
            "echo crashed > /root/app.log; echo kept > /vol/note; exit 3",
        ],
    );
    assert_eq!(o.status.code(), Some(3), "{}", stderr(&o));
    let rows = list_json(w, &["--all"]);
    let row = rows.iter().find(|t| t["name"] == name.as_str()).unwrap_or_else(|| panic!("{rows:?}"));
    assert_eq!((row["state"].as_str(), row["exit_code"].as_i64()), (Some("stopped"), Some(3)));
    // Plain exec has nothing to join.
    let o = w.agent.sh(&name, "true");
    assert_eq!(o.status.code(), Some(120), "{}", stderr(&o));
    let debug = |user: &str, cmd: &[&str]| {
        let token = w.agent.token(user, &[], "1h");
        run(w.agent.dcos_as(&token).args(["task", "exec", "--debug-image", &image, &name]).args(cmd))
    };
    let o = debug("ro", &["sh", "-c", PROBE]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let out = stdout(&o);
    let lines: Vec<&str> = out.lines().map(str::trim).collect();
    assert_eq!(lines, ["crashed", "kept", "from the host", "crashbox", "1", "touch=1"], "{out}");
    let cp = |path: &str| docker(&w.d, &["cp", &format!("{name}:{path}"), "-"]).status.success();
    assert!(!cp("/root/written"));
    // With debug:write the session changes the container's own files (Docker sees them), not its read-only bind.
    let o = debug("rw", &["sh", "-c", PROBE]);
    assert!(stdout(&o).contains("touch=0"), "{}{}", stdout(&o), stderr(&o));
    assert!(cp("/root/written"), "Docker sees the file the session wrote");
    let o = debug("rw", &["touch", "/target/host/x"]);
    assert_ne!(o.status.code(), Some(0), "the read-only bind mount stays read-only");
    assert!(!host.join("x").exists());
    assert_eq!(docker_ok(&w.d, &["inspect", "-f", "{{.State.Status}}", &name]), "exited");
    docker_ok(&w.d, &["rm", &name]);
    let o = debug("ro", &["true"]);
    assert_eq!(o.status.code(), Some(119), "{}", stderr(&o));
    let _ = docker(&w.d, &["volume", "rm", &format!("{p}-vol")]);
    // The process is the container's user: `-u app`, a name looked up in the container's own /etc/passwd (the
    // sandbox has no /proc to show capabilities; Docker's capability set is a unit test).
    let app = format!("{p}-dbg-app");
    let o = docker(&w.d, &["run", "--name", &app, "-u", "app", &w.d.image, "true"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let token = w.agent.token("ro", &[], "1h");
    let o =
        run(w.agent.dcos_as(&token).args(["task", "exec", "--debug-image", &image, &app, "sh", "-c", "id -u; id -g"]));
    assert_eq!(stdout(&o), "1000\n1000\n", "{}", stderr(&o));
    docker_ok(&w.d, &["rm", &app]);
}

/// The container is removed after the agent resolved it and while the debug image is pulled: the session ends
/// with a clear "removed" error and the exit code of a missing task, not a failed mount.
#[test]
fn a_container_removed_before_its_debug_sandbox_starts_is_a_clear_error() {
    if skip() {
        return;
    }
    let w = world();
    let p = prefix();
    let dir = std::env::temp_dir().join(format!("{p}-docker-gone"));
    let pki = registry::Pki::create(&dir.join("pki"));
    let reg = registry::Registry::start_with(&dir.join("registry"), &pki, false, false);
    registry::write_layout(&dir.join("layout"), "v1", &[registry::busybox_layer()]);
    reg.push(&dir.join("layout"), "v1", "tools/bb", false);
    let (port, seen, release) = registry::gated_proxy(reg.host());
    let root = std::env::temp_dir().join(format!("{p}-docker"));
    let agent = Agent::start_with_runtimes(
        &dir.join("agent"),
        &format!("[images]\ninsecure_registries = [\"127.0.0.1:{port}\"]\n"),
        &runtimes(&w.d, &root),
        &format!("{ACL}{DEBUG_RULES}"),
    );
    let name = format!("{p}-gone");
    let o = docker(&w.d, &["run", "--name", &name, &w.d.image, "sh", "-c", "exit 3"]);
    assert_eq!(o.status.code(), Some(3), "{}", stderr(&o));
    let child = agent
        .dcos()
        .args(["task", "exec", "--debug-image", &format!("127.0.0.1:{port}/tools/bb:latest"), &name, "true"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    seen.recv_timeout(Duration::from_secs(30)).expect("the pull starts once the task is resolved");
    docker_ok(&w.d, &["rm", &name]);
    release.send(()).unwrap();
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(119), "{err}");
    assert!(err.contains("was removed"), "{err}");
    assert_eq!(err.lines().filter(|l| l.starts_with("dcos:")).count(), 1, "{err}");
}

/// Docker's default storage driver, overlay2: the container's layers (inspect's `LowerDir`, `UpperDir`, `WorkDir`)
/// are mounted afresh as an overlay, read-only with the upper as the top lower for a reader, with the container's
/// upper for a writer; what the writer changes is in the container as Docker sees it. A dockerd of its own.
#[test]
fn a_crashed_container_on_overlay2_is_debugged_on_its_layers() {
    if skip() {
        return;
    }
    let p = prefix();
    let root = std::env::temp_dir().join(format!("{p}-docker-o2"));
    let d = start_dockerd_with(&root, "overlay2");
    let agent =
        Agent::start_with_runtimes(&root.join("agent"), "", &runtimes(&d, &root), &format!("{ACL}{DEBUG_RULES}"));
    let name = format!("{p}-o2");
    let o = docker(&d, &["run", "--name", &name, &d.image, "sh", "-c", "echo crashed > /root/app.log; exit 3"]);
    assert_eq!(o.status.code(), Some(3), "{}", stderr(&o));
    assert_eq!(docker_ok(&d, &["inspect", "-f", "{{.GraphDriver.Name}}", &name]), "overlay2");
    let image = debug_image(&root);
    let probe = "cat /target/root/app.log; ls /target/bin/busybox; touch /target/root/written 2>/dev/null; \
                 echo touch=$?; grep -c ' /target overlay ' /proc/self/mountinfo 2>/dev/null; true";
    let debug = |user: &str| {
        let token = agent.token(user, &[], "1h");
        run(agent.dcos_as(&token).args(["task", "exec", "--debug-image", &image, &name, "sh", "-c", probe]))
    };
    let o = debug("ro");
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let out = stdout(&o);
    assert!(out.starts_with("crashed\n/target/bin/busybox\ntouch=1\n"), "{out}");
    let cp = |path: &str| docker(&d, &["cp", &format!("{name}:{path}"), "-"]).status.success();
    assert!(!cp("/root/written"));
    let o = debug("rw");
    assert!(stdout(&o).contains("touch=0"), "{}{}", stdout(&o), stderr(&o));
    assert!(cp("/root/written"), "Docker sees the file the session wrote in the container's upper layer");
    // The container still starts, with the file: its overlay was not left in use.
    let o = docker(&d, &["start", "-a", &name]);
    assert_eq!(o.status.code(), Some(3), "{}", stderr(&o));
    docker_ok(&d, &["rm", &name]);
}

/// The attack: a Docker container binds a host directory with `--mount ...,bind-nonrecursive=true`, so it never
/// sees the tmpfs mounted below that directory on the host; once it exited, its debug sandbox (Docker keeps no
/// bundle: the mounts come from inspect) must not show that tmpfs either. The same directory bound with `-v`
/// (`rbind`, Docker's default) brings it, as it did to the running container.
#[test]
fn a_non_recursive_docker_bind_brings_no_host_mount_into_its_sandbox() {
    if skip() {
        return;
    }
    let w = world();
    let p = prefix();
    let name = format!("{p}-nonrec");
    let dir = std::env::temp_dir().join(format!("{p}-docker-nonrec"));
    let vol = dir.join("vol");
    std::fs::create_dir_all(vol.join("sub")).unwrap();
    std::fs::write(vol.join("plain"), "IN-THE-SOURCE\n").unwrap();
    let o = run(Command::new("mount").args(["-t", "tmpfs", "-o", "size=1m", "tmpfs"]).arg(vol.join("sub")));
    assert!(o.status.success(), "{}", stderr(&o));
    struct Unmount(PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = Command::new("umount").arg("-l").arg(&self.0).output();
        }
    }
    let _unmount = Unmount(vol.join("sub"));
    std::fs::write(vol.join("sub/secret"), "MOUNTED-BELOW-THE-SOURCE\n").unwrap();
    let image = debug_image(&dir);
    let probe = "cat /nr/plain; cat /nr/sub/secret 2>/dev/null; echo ---; cat /rec/sub/secret; exit 3";
    let o = docker(
        &w.d,
        &[
            "run",
            "--name",
            &name,
            "--mount",
            &format!("type=bind,source={},target=/nr,bind-nonrecursive=true", vol.display()),
            "-v",
            &format!("{}:/rec", vol.display()),
            &w.d.image,
            "sh",
            "-c",
            probe,
        ],
    );
    assert_eq!(o.status.code(), Some(3), "{}", stderr(&o));
    assert_eq!(stdout(&o), "IN-THE-SOURCE\n---\nMOUNTED-BELOW-THE-SOURCE\n", "what the running container saw");
    let token = w.agent.token("ro", &[], "1h");
    let o = run(w
        .agent
        .dcos_as(&token)
        .args(["task", "exec", "--debug-image", &image, &name, "sh", "-c"])
        .arg("cat /target/nr/plain; cat /target/nr/sub/secret 2>/dev/null; echo ---; cat /target/rec/sub/secret"));
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert_eq!(stdout(&o), "IN-THE-SOURCE\n---\nMOUNTED-BELOW-THE-SOURCE\n", "the sandbox sees what the container saw");
    docker_ok(&w.d, &["rm", &name]);
}

/// The attack: a Docker container hides a key with `-v /dev/null:/data/key.pem:ro` and directories with
/// `--tmpfs` and `--mount type=tmpfs` over parts of its bind of a host directory; running, it sees none of them.
/// Once it exited, a user with `debug` opens a sandbox on it: the file bind and the tmpfs mounts are not
/// reproduced, and what they hid must not show; the rest of the bind does.
#[test]
fn a_docker_containers_file_bind_and_tmpfs_masks_hold_in_its_sandbox() {
    if skip() {
        return;
    }
    let w = world();
    let p = prefix();
    let name = format!("{p}-masks");
    let dir = std::env::temp_dir().join(format!("{p}-docker-masks"));
    let vol = dir.join("vol");
    for d in ["hidden", "hidden2"] {
        std::fs::create_dir_all(vol.join(d)).unwrap();
        std::fs::write(vol.join(d).join("x"), format!("{d}-DIR-SECRET\n")).unwrap();
    }
    std::fs::write(vol.join("key.pem"), "KEY-SECRET\n").unwrap();
    std::fs::write(vol.join("plain"), "IN-THE-SOURCE\n").unwrap();
    let image = debug_image(&dir);
    let probe = "cat /data/plain /data/key.pem /data/hidden/x /data/hidden2/x 2>/dev/null; exit 3";
    let o = docker(
        &w.d,
        &[
            "run",
            "--name",
            &name,
            "-v",
            &format!("{}:/data:ro", vol.display()),
            "-v",
            "/dev/null:/data/key.pem:ro",
            "--tmpfs",
            "/data/hidden",
            "--mount",
            "type=tmpfs,target=/data/hidden2",
            &w.d.image,
            "sh",
            "-c",
            probe,
        ],
    );
    assert_eq!(o.status.code(), Some(3), "{}", stderr(&o));
    assert_eq!(stdout(&o), "IN-THE-SOURCE\n", "what the running container saw");
    let token = w.agent.token("ro", &[], "1h");
    let o = run(w.agent.dcos_as(&token).args(["task", "exec", "--debug-image", &image, &name, "sh", "-c"]).arg(
        "cat /target/data/plain /target/data/key.pem /target/data/hidden/x /target/data/hidden2/x 2>/dev/null; \
              cat /target/etc/hostname; echo END",
    ));
    let out = stdout(&o);
    assert_eq!(o.status.code(), Some(0), "{out}{}", stderr(&o));
    assert!(!out.contains("SECRET"), "what the container's mounts hid shows in the sandbox: {out}");
    assert_eq!(out, "IN-THE-SOURCE\nEND\n", "the bind shows, the masks are empty: {}", stderr(&o));
    docker_ok(&w.d, &["rm", &name]);
}
