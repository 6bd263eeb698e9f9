//! Fixtures for end-to-end tests: a busybox-static rootfs, real runc containers, a real agent over TLS, and
//! the real `dcos` binary. Needs root, runc and busybox-static (scripts/test installs them).

#![allow(dead_code)]

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// Where cargo put the binaries (this test binary lives in target/<profile>/deps).
pub fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    let dir = exe.parent().and_then(Path::parent).expect("target dir");
    let p = dir.join(name);
    assert!(p.exists(), "{} is missing: run `cargo build --workspace` first", p.display());
    p
}

pub fn run(cmd: &mut Command) -> Output {
    cmd.output().unwrap_or_else(|e| panic!("running {cmd:?}: {e}"))
}

fn sh(script: &str) -> Output {
    let o = run(Command::new("sh").arg("-c").arg(script));
    assert!(o.status.success(), "{script}: {}", String::from_utf8_lossy(&o.stderr));
    o
}

/// A prefix unique to this test process, for container ids.
pub fn prefix() -> String {
    format!("dcx{}", std::process::id())
}

/// Deletes containers left by earlier test processes (statics are never dropped), keeping live ones.
pub fn remove_stale_containers() {
    let o = run(Command::new("runc").args(["list", "-q"]));
    for id in stdout(&o).lines() {
        let Some(pid) = id.strip_prefix("dcx").and_then(|r| r.split('-').next()).and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        if !Path::new(&format!("/proc/{pid}")).exists() {
            let _ = Command::new("runc").args(["delete", "-f", id]).output();
            let _ = std::fs::remove_dir_all(std::env::temp_dir().join(format!("dcx{pid}-e2e")));
        }
    }
}

/// Builds a busybox-static rootfs with a root user and an unprivileged `app` user (1000).
pub fn make_rootfs(dir: &Path) {
    let bin_dir = dir.join("bin");
    std::fs::create_dir_all(&bin_dir).unwrap();
    for d in ["proc", "sys", "dev", "etc", "tmp", "home/app", "root"] {
        std::fs::create_dir_all(dir.join(d)).unwrap();
    }
    std::fs::copy("/bin/busybox", bin_dir.join("busybox")).expect("busybox-static is installed");
    let list = run(Command::new("/bin/busybox").arg("--list"));
    for applet in String::from_utf8_lossy(&list.stdout).lines() {
        if applet != "busybox" {
            let _ = std::os::unix::fs::symlink("busybox", bin_dir.join(applet));
        }
    }
    std::fs::write(dir.join("etc/passwd"), "root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000:app:/home/app:/bin/sh\n")
        .unwrap();
    std::fs::write(dir.join("etc/group"), "root:x:0:\napp:x:1000:\nextra:x:2000:app\n").unwrap();
    std::fs::set_permissions(dir.join("tmp"), std::os::unix::fs::PermissionsExt::from_mode(0o1777)).unwrap();
}

/// How a test container differs from `runc spec`'s default.
#[derive(Default, Clone)]
pub struct ContainerOpts {
    pub readonly: bool,
    /// uid/gid 1000 and only CAP_NET_BIND_SERVICE.
    pub unprivileged: bool,
    pub annotations: Vec<(String, String)>,
}

/// A runc container, deleted on drop.
pub struct Container {
    pub id: String,
    pub bundle: PathBuf,
}

impl Container {
    pub fn start(root: &Path, id: &str, o: &ContainerOpts) -> Container {
        let bundle = root.join(id);
        let _ = std::fs::remove_dir_all(&bundle);
        std::fs::create_dir_all(&bundle).unwrap();
        make_rootfs(&bundle.join("rootfs"));
        let _ = Command::new("runc").args(["delete", "-f", id]).output();
        sh(&format!("cd {} && runc spec", bundle.display()));
        let cfg_path = bundle.join("config.json");
        let mut cfg: serde_json::Value = serde_json::from_slice(&std::fs::read(&cfg_path).unwrap()).unwrap();
        cfg["process"]["terminal"] = false.into();
        cfg["process"]["args"] = serde_json::json!(["sleep", "100000"]);
        cfg["root"]["readonly"] = o.readonly.into();
        if o.unprivileged {
            cfg["process"]["user"] = serde_json::json!({"uid": 1000, "gid": 1000});
            cfg["process"]["cwd"] = "/home/app".into();
            let caps = serde_json::json!(["CAP_NET_BIND_SERVICE"]);
            cfg["process"]["capabilities"] = serde_json::json!({"bounding": caps, "effective": caps, "permitted": caps, "ambient": caps, "inheritable": caps});
        }
        let ann: serde_json::Map<String, serde_json::Value> =
            o.annotations.iter().map(|(k, v)| (k.clone(), v.clone().into())).collect();
        cfg["annotations"] = ann.into();
        std::fs::write(&cfg_path, serde_json::to_vec_pretty(&cfg).unwrap()).unwrap();
        Container::run_bundle(root, id, bundle)
    }

    /// `runc run -d` of a prepared bundle.
    pub fn run_bundle(root: &Path, id: &str, bundle: PathBuf) -> Container {
        // The detached init inherits runc's stdio: a pipe would never reach EOF, so errors go to a file.
        let err_path = root.join(format!("{id}.runc-err"));
        let err = std::fs::File::create(&err_path).unwrap();
        let st = Command::new("runc")
            .args(["run", "-d", "--bundle"])
            .arg(&bundle)
            .arg(id)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(err)
            .status()
            .unwrap();
        assert!(st.success(), "runc run {id}: {}", std::fs::read_to_string(&err_path).unwrap_or_default());
        Container { id: id.into(), bundle }
    }

    pub fn init_pid(&self) -> i32 {
        let o = run(Command::new("runc").args(["state", &self.id]));
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("runc state");
        v["pid"].as_i64().expect("pid") as i32
    }

    pub fn kill(&self) {
        let _ = run(Command::new("runc").args(["kill", &self.id, "KILL"]));
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        let _ = Command::new("runc").args(["delete", "-f", &self.id]).output();
        let _ = std::fs::remove_dir_all(&self.bundle);
    }
}

/// A running agent with its generated set-up.
pub struct Agent {
    pub dir: PathBuf,
    pub url: String,
    pub child: Child,
    pub admin_token: String,
}

pub const ACL: &str = r#"
[[rule]]
subjects = ["user:admin"]
tasks = ["*"]
actions = ["*"]

[[rule]]
subjects = ["user:alice"]
tasks = ["web-*"]
actions = ["list", "exec"]

[[rule]]
subjects = ["group:ops"]
tasks = ["*"]
actions = ["list", "exec", "exec:stdin"]

[[rule]]
subjects = ["user:sre"]
tasks = ["*"]
actions = ["*"]

[[rule]]
effect = "deny"
subjects = ["user:sre"]
tasks = ["web-*"]
actions = ["exec:tty"]

[[rule]]
effect = "deny"
subjects = ["user:mallory"]
tasks = ["*"]
actions = ["*"]
"#;

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

impl Agent {
    /// `init` into `dir`, tune the config for tests, start `run` and wait until it answers.
    pub fn start(dir: &Path) -> Agent {
        Agent::start_with(dir, "")
    }

    /// Like [`Agent::start`], with `extra` (top-level `agent.toml` keys) added to the configuration.
    pub fn start_with(dir: &Path, extra: &str) -> Agent {
        let _ = std::fs::remove_dir_all(dir);
        let port = free_port();
        let listen = format!("127.0.0.1:{port}");
        let o = run(Command::new(bin("dcos-exec-agent")).args(["init", "--listen", &listen, "--dir"]).arg(dir));
        assert!(o.status.success(), "init: {}", String::from_utf8_lossy(&o.stderr));
        let cfg = dir.join("agent.toml");
        let mut text = std::fs::read_to_string(&cfg).unwrap();
        text = text.replace("grace_period = \"5s\"", "grace_period = \"1s\"");
        // A key in `extra` replaces the one `init` wrote.
        for key in extra.lines().filter_map(|l| l.split_once('=')).map(|(k, _)| format!("{} =", k.trim())) {
            text = text.lines().filter(|l| !l.starts_with(&key)).map(|l| format!("{l}\n")).collect();
        }
        text = text.replacen(
            "\n[runtimes]",
            &format!("\ntask_id_annotation = \"io.dcos.task-id\"\n{extra}\n[runtimes]"),
            1,
        );
        std::fs::write(&cfg, text).unwrap();
        std::fs::write(dir.join("acl.toml"), ACL).unwrap();
        let log = std::fs::File::create(dir.join("agent.log")).unwrap();
        let mut cmd = Command::new(bin("dcos-exec-agent"));
        cmd.args(["run", "--config"]).arg(&cfg).stdout(Stdio::null()).stderr(log).env("DCOS_EXEC_LOG", "debug");
        // SAFETY: prctl in the child before exec; the agent dies with the thread that started it.
        unsafe {
            std::os::unix::process::CommandExt::pre_exec(&mut cmd, || {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        let child = cmd.spawn().expect("starting the agent");
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(&listen).is_err() {
            assert!(Instant::now() < deadline, "agent did not listen on {listen}");
            std::thread::sleep(Duration::from_millis(20));
        }
        let admin_token = std::fs::read_to_string(dir.join("admin.token")).unwrap().trim().to_string();
        Agent { dir: dir.into(), url: format!("https://127.0.0.1:{port}"), child, admin_token }
    }

    pub fn token(&self, user: &str, groups: &[&str], ttl: &str) -> String {
        let mut c = Command::new(bin("dcos-exec-agent"));
        c.args(["token", "--config"]).arg(self.dir.join("agent.toml")).args(["--user", user, "--ttl", ttl]);
        for g in groups {
            c.args(["--group", g]);
        }
        let o = run(&mut c);
        assert!(o.status.success(), "token: {}", String::from_utf8_lossy(&o.stderr));
        String::from_utf8(o.stdout).unwrap().trim().to_string()
    }

    /// A `dcos` command aimed at this agent with the admin token.
    pub fn dcos(&self) -> Command {
        self.dcos_as(&self.admin_token)
    }

    pub fn dcos_as(&self, token: &str) -> Command {
        let mut c = Command::new(bin("dcos"));
        c.env_clear()
            .env("PATH", "/usr/bin:/bin")
            .env("HOME", &self.dir)
            .env("DCOS_URL", &self.url)
            .env("DCOS_SSL_VERIFY", self.dir.join("ca.crt"))
            .env("DCOS_ACS_TOKEN", token)
            .stdin(Stdio::null());
        c
    }

    /// `dcos task exec TASK sh -c SCRIPT` as the admin.
    pub fn sh(&self, task: &str, script: &str) -> Output {
        run(self.dcos().args(["task", "exec", task, "sh", "-c", script]))
    }

    pub fn audit(&self) -> Vec<serde_json::Value> {
        std::fs::read_to_string(self.dir.join("audit.log"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }
}

/// The shared world of most tests: one agent and four containers.
pub struct World {
    pub root: PathBuf,
    pub agent: Agent,
    pub main: Container,
    pub ro: Container,
    pub app: Container,
    /// The task id of `main` (from its annotation).
    pub main_task: String,
}

static WORLD: OnceLock<World> = OnceLock::new();

pub fn world() -> &'static World {
    WORLD.get_or_init(|| {
        // Started from a thread that lives as long as the process, so the agent's parent-death signal only
        // fires when the test process ends.
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            remove_stale_containers();
            let root = std::env::temp_dir().join(format!("{}-e2e", prefix()));
            std::fs::create_dir_all(&root).unwrap();
            let p = prefix();
            let main_task = format!("web-{p}");
            let main = Container::start(
                &root,
                &format!("{p}-main"),
                &ContainerOpts {
                    annotations: vec![("io.dcos.task-id".into(), main_task.clone())],
                    ..Default::default()
                },
            );
            let ro =
                Container::start(&root, &format!("{p}-ro"), &ContainerOpts { readonly: true, ..Default::default() });
            let app = Container::start(
                &root,
                &format!("{p}-app"),
                &ContainerOpts { unprivileged: true, ..Default::default() },
            );
            let agent = Agent::start(&root.join("agent"));
            tx.send(World { root, agent, main, ro, app, main_task }).unwrap();
            loop {
                std::thread::park();
            }
        });
        rx.recv().expect("world set-up failed (see the panic above)")
    })
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Runs `cmd` with `input` on stdin.
pub fn run_with_input(cmd: &mut Command, input: &[u8]) -> Output {
    let mut child = cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let data = input.to_vec();
    let writer = std::thread::spawn(move || {
        let _ = stdin.write_all(&data);
    });
    let out = child.wait_with_output().unwrap();
    writer.join().unwrap();
    out
}

/// Polls `f` until it returns true or `secs` pass.
pub fn eventually(secs: u64, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while Instant::now() < deadline {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    f()
}
