//! Example: smoke checks inside a test container from a Rust integration test, the way a CI pipeline runs them.
//!
//! In a pipeline the agent and the test container already run: the job gets `DCOS_URL`, `DCOS_SSL_VERIFY` and
//! a short-lived `DCOS_ACS_TOKEN` scoped by the ACL to its test containers (see the README's CI section), and
//! all it needs is [`smoke_checks`] with `Client::from_env()`. To be self-contained, this test first makes that
//! world itself: a busybox container made as `runc spec` makes it (read-only root), and a real agent
//! (`dcos-exec-agent init` and `run`) whose ACL gives the group `ci` `list`, `exec` and `exec:stdin` on tasks
//! `ci-*` and nothing else, with a 10-minute token for the pipeline's user.
//!
//! Needs root, runc and busybox-static, and the workspace built (`cargo build --workspace`); skipped without
//! root unless `DCOS_EXEC_E2E=1`.

use dcos_exec::{Client, Error, Settings, TermSize, TlsOptions};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// One check: its name, and why it failed.
type Check = (&'static str, Result<(), String>);

/// What a pipeline runs against its test container: every check runs, each failure says why.
async fn smoke_checks(client: &Client, task: &str) -> Vec<Check> {
    let mut checks = Vec::new();
    // A check is a command that must exit 0; on failure, its exit status and output are the reason.
    let must_succeed = |argv: &'static [&'static str]| {
        let client = client.clone();
        let task = task.to_string();
        async move {
            match client.exec(&task, argv.iter().copied()).await {
                Ok(out) if out.status.success() => Ok(out.stdout_text()),
                Ok(out) => Err(format!("{}: {}{}", out.status, out.stdout_text(), out.stderr_text())),
                // The session never ran: the message says why (unknown task, denied, token, TLS...).
                Err(e) => Err(format!("did not run (exit {}): {e}", e.exit_code())),
            }
        }
    };
    checks.push(("process 1 is alive", must_succeed(&["test", "-d", "/proc/1"]).await.map(drop)));
    checks.push(("root user exists", must_succeed(&["grep", "-q", "^root:", "/etc/passwd"]).await.map(drop)));
    checks.push((
        "hostname is the bundle's",
        must_succeed(&["hostname"]).await.and_then(|h| {
            if h.trim() == "runc" {
                Ok(())
            } else {
                Err(format!("hostname is {h:?}"))
            }
        }),
    ));
    // The root filesystem is read-only: the scratch space is /dev/shm, and writing elsewhere fails as such.
    checks.push((
        "/dev/shm is writable",
        must_succeed(&["sh", "-c", "echo probe > /dev/shm/smoke && cat /dev/shm/smoke && rm /dev/shm/smoke"])
            .await
            .and_then(|out| if out == "probe\n" { Ok(()) } else { Err(format!("read back {out:?}")) }),
    ));
    checks.push(("the root is read-only", {
        match client.exec(task, ["touch", "/smoke"]).await {
            Ok(out) if !out.status.success() && out.stderr_text().contains("Read-only file system") => Ok(()),
            Ok(out) => Err(format!("touch /smoke: {}: {}", out.status, out.stderr_text())),
            Err(e) => Err(e.to_string()),
        }
    }));
    checks.push(("stdin round trip", {
        match client.command(task, ["sort"]).stdin_bytes("b\na\n").output().await {
            Ok(out) if out.stdout_text() == "a\nb\n" => Ok(()),
            Ok(out) => Err(format!("sort printed {:?} ({})", out.stdout_text(), out.status)),
            Err(e) => Err(e.to_string()),
        }
    }));
    checks
}

#[tokio::test]
async fn smoke_checks_pass_in_a_test_container() {
    let Some(world) = World::start() else { return };
    // What the pipeline does: settings from the environment it was given (here: a Settings value, since
    // tests share one process environment).
    let client = Client::from_settings(&world.settings).unwrap();

    let results = smoke_checks(&client, &world.task).await;
    let failed: Vec<String> =
        results.iter().filter_map(|(name, r)| r.as_ref().err().map(|why| format!("{name}: {why}"))).collect();
    assert!(failed.is_empty(), "failed checks:\n{}", failed.join("\n"));
    assert_eq!(results.len(), 6);

    // The token is scoped: the pipeline sees its tasks only, and gets no terminal.
    let tasks = client.tasks().await.unwrap();
    assert!(tasks.iter().all(|t| t.id.starts_with("ci-")), "{tasks:?}");
    assert!(tasks.iter().any(|t| t.id == world.task), "{tasks:?}");
    let e = client.command(&world.task, ["sh"]).tty(Some(TermSize { width: 80, height: 24 })).output().await;
    assert!(matches!(&e, Err(Error::Forbidden(m)) if m.contains("exec:tty")), "{e:?}");

    // A failing check says why: an unknown task never runs, a failing command shows its status and output.
    let results = smoke_checks(&client, "ci-no-such-task").await;
    assert!(
        results.iter().all(|(_, r)| r
            .as_ref()
            .is_err_and(|why| why.contains("did not run (exit 119)") || why.contains("no task"))),
        "{results:?}"
    );
    let out = client.exec(&world.task, ["sh", "-c", "echo missing >&2; exit 4"]).await.unwrap();
    assert_eq!((out.status.code(), out.stderr_text().as_str()), (Some(4), "missing\n"));
}

// ---- The world a pipeline would already have: a test container and an agent. ----

struct World {
    dir: PathBuf,
    /// The runc container id (prefixed so the test suite's clean-up finds it after a crash).
    container: String,
    /// Its task id, from its annotation: what the pipeline names.
    task: String,
    agent: Child,
    settings: Settings,
}

const ACL: &str = r#"
# CI pipelines (group ci) may list and run checks, with stdin, in their test containers only.
[[rule]]
subjects = ["group:ci"]
tasks = ["ci-*"]
actions = ["list", "exec", "exec:stdin"]
"#;

fn run(cmd: &mut Command) -> String {
    let o = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(o.status.success(), "{cmd:?}: {}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// The workspace's binaries: this test runs from target/<profile>/deps.
fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let p = exe.parent().and_then(Path::parent).unwrap().join(name);
    assert!(p.exists(), "{} is missing: run `cargo build --workspace` first", p.display());
    p
}

impl World {
    /// `None` (after saying so) when not root, unless DCOS_EXEC_E2E=1 asks for a failure instead.
    fn start() -> Option<World> {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            assert!(std::env::var("DCOS_EXEC_E2E").as_deref() != Ok("1"), "the smoke example needs root");
            eprintln!("SKIPPED: the smoke example needs root (runc)");
            return None;
        }
        let id = format!("dcx{}-ci-smoke", std::process::id());
        let task = format!("ci-smoke-{}", std::process::id());
        let dir = std::env::temp_dir().join(&id);
        let _ = std::fs::remove_dir_all(&dir);
        // The container, as the README's demo makes it: a busybox rootfs and `runc spec` (read-only root).
        let rootfs = dir.join("bundle/rootfs");
        for d in ["bin", "proc", "sys", "dev", "etc", "tmp", "root"] {
            std::fs::create_dir_all(rootfs.join(d)).unwrap();
        }
        std::fs::copy("/bin/busybox", rootfs.join("bin/busybox")).expect("busybox-static is installed");
        for applet in run(Command::new("/bin/busybox").arg("--list")).lines().filter(|a| *a != "busybox") {
            std::os::unix::fs::symlink("busybox", rootfs.join("bin").join(applet)).unwrap();
        }
        std::fs::write(rootfs.join("etc/passwd"), "root:x:0:0:root:/root:/bin/sh\n").unwrap();
        run(Command::new("runc").arg("spec").current_dir(dir.join("bundle")));
        let cfg = dir.join("bundle/config.json");
        let mut spec: serde_json::Value = serde_json::from_slice(&std::fs::read(&cfg).unwrap()).unwrap();
        spec["process"]["terminal"] = false.into();
        spec["process"]["args"] = serde_json::json!(["sleep", "100000"]);
        // The task id the pipeline knows it by; the agent reads it with `task_id_annotation`.
        spec["annotations"] = serde_json::json!({ "org.example.ci-task": task });
        std::fs::write(&cfg, serde_json::to_vec(&spec).unwrap()).unwrap();
        let st = Command::new("runc")
            .args(["run", "-d", "--bundle"])
            .arg(dir.join("bundle"))
            .arg(&id)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .unwrap();
        assert!(st.success(), "runc run {id}");

        // The agent, with the CI ACL, on a free port.
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let agent_dir = dir.join("agent");
        let listen = format!("127.0.0.1:{port}");
        run(Command::new(bin("dcos-exec-agent")).args(["init", "--listen", &listen, "--dir"]).arg(&agent_dir));
        std::fs::write(agent_dir.join("acl.toml"), ACL).unwrap();
        let cfg = agent_dir.join("agent.toml");
        let text = std::fs::read_to_string(&cfg).unwrap();
        // A top-level key, so before the first table.
        let text = text.replacen("\n[", "\ntask_id_annotation = \"org.example.ci-task\"\n\n[", 1);
        std::fs::write(&cfg, text).unwrap();
        let agent = Command::new(bin("dcos-exec-agent"))
            .args(["run", "--config"])
            .arg(agent_dir.join("agent.toml"))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("agent.log")).unwrap())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(&listen).is_err() {
            assert!(Instant::now() < deadline, "the agent did not listen on {listen}");
            std::thread::sleep(Duration::from_millis(20));
        }
        // The pipeline's token: its own user, the ci group, ten minutes.
        let token = run(Command::new(bin("dcos-exec-agent"))
            .args(["token", "--config"])
            .arg(agent_dir.join("agent.toml"))
            .args(["--user", "pipeline-4711", "--group", "ci", "--ttl", "10m"]));
        let settings = Settings {
            url: format!("https://{listen}"),
            url_origin: dcos_exec::Origin::Api,
            token: Some(token.trim().to_string()),
            token_origin: dcos_exec::Origin::Api,
            tls: TlsOptions::ca_file(agent_dir.join("ca.crt")),
            config_file: None,
            profile: None,
            timeouts: dcos_exec::config::Timeouts::default(),
        };
        Some(World { dir, container: id, task, agent, settings })
    }
}

impl Drop for World {
    fn drop(&mut self) {
        let _ = self.agent.kill();
        let _ = self.agent.wait();
        let _ = Command::new("runc").args(["delete", "-f", &self.container]).output();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
