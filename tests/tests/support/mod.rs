//! Fixtures for end-to-end tests: a busybox-static rootfs, real runc containers, a real agent over TLS, and
//! the real `dcos` binary. Needs root, runc and busybox-static (scripts/test installs them).

#![allow(dead_code)]

pub mod crun;
pub mod dockerd;
pub mod etcd;
pub mod hosts;
pub mod oidc;

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Mutex, Once, OnceLock};
use std::time::{Duration, Instant};

/// True (after saying so on the terminal) when this end-to-end test cannot run here: it needs root. With
/// `DCOS_EXEC_E2E=1` (set by scripts/test) a missing precondition fails the test instead.
pub fn skip() -> bool {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        return false;
    }
    let name = std::thread::current().name().unwrap_or("an end-to-end test").to_string();
    assert!(
        std::env::var_os("DCOS_EXEC_E2E").is_none_or(|v| v != "1"),
        "{name} needs root (runc containers, namespaces) and DCOS_EXEC_E2E=1 asks for every end-to-end test to run"
    );
    // Straight to the terminal: the test harness captures print!/eprint! of passing tests.
    let _ =
        writeln!(std::io::stderr(), "SKIPPED {name}: end-to-end tests need root (set DCOS_EXEC_E2E=1 to fail instead)");
    true
}

type ExitHook = Box<dyn FnOnce() + Send>;
static EXIT_HOOKS: Mutex<Vec<ExitHook>> = Mutex::new(Vec::new());

/// Runs `f` when the test process exits (statics are never dropped: the shared agents, registries and
/// containers live in them). Hooks run last-registered first.
pub fn at_exit(f: impl FnOnce() + Send + 'static) {
    static REGISTER: Once = Once::new();
    REGISTER.call_once(|| {
        extern "C" fn run_hooks() {
            let hooks = std::mem::take(&mut *EXIT_HOOKS.lock().unwrap_or_else(|e| e.into_inner()));
            for h in hooks.into_iter().rev() {
                let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(h));
            }
        }
        // SAFETY: registers a function that lives as long as the program.
        unsafe { libc::atexit(run_hooks) };
    });
    EXIT_HOOKS.lock().unwrap_or_else(|e| e.into_inner()).push(Box::new(f));
}

/// At exit, deletes this process's containers and everything named with its prefix in the temp dir.
fn clean_up_at_exit() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        at_exit(|| {
            let p = format!("{}-", prefix());
            if let Ok(o) = Command::new("runc").args(["list", "-q"]).output() {
                for id in String::from_utf8_lossy(&o.stdout).lines().filter(|id| id.starts_with(&p)) {
                    let _ = Command::new("runc").args(["delete", "-f", id]).output();
                }
            }
            for dir in [std::env::temp_dir(), PathBuf::from("/tmp")] {
                let Ok(rd) = std::fs::read_dir(&dir) else { continue };
                for e in rd.flatten() {
                    if e.file_name().to_string_lossy().starts_with(&p) {
                        let _ = std::fs::remove_dir_all(e.path()).or_else(|_| std::fs::remove_file(e.path()));
                    }
                }
            }
        })
    });
}

/// Where cargo put the binaries (this test binary lives in target/<profile>/deps).
/// `DCOS_EXEC_E2E_BIN_DIR` runs the tests against binaries built elsewhere (an older commit, a release build).
pub fn bin(name: &str) -> PathBuf {
    let dir = match std::env::var_os("DCOS_EXEC_E2E_BIN_DIR") {
        Some(d) => PathBuf::from(d),
        None => {
            let exe = std::env::current_exe().expect("current_exe");
            exe.parent().and_then(Path::parent).expect("target dir").to_path_buf()
        }
    };
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
    clean_up_at_exit();
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
    /// Edits `config.json` after the options above are applied.
    pub tweak: Option<fn(&mut serde_json::Value)>,
    /// Runs on the rootfs after it is made, before the container starts.
    pub prepare: Option<fn(&Path)>,
}

/// A runc container, deleted on drop.
pub struct Container {
    pub id: String,
    pub bundle: PathBuf,
}

impl Container {
    pub fn start(root: &Path, id: &str, o: &ContainerOpts) -> Container {
        Container::try_start(root, id, o).unwrap_or_else(|e| panic!("{e}"))
    }

    /// Like [`Container::start`], but a container that runc refuses to run is an error (with runc's message).
    pub fn try_start(root: &Path, id: &str, o: &ContainerOpts) -> Result<Container, String> {
        let bundle = prepare_bundle("runc", root, id, o);
        Container::try_run_bundle(root, id, bundle)
    }
}

/// A bundle for `id` under `root`: the busybox rootfs and `RUNTIME spec`'s config.json (runc or crun) with the
/// options applied; any container of that id is deleted first.
pub fn prepare_bundle(runtime: &str, root: &Path, id: &str, o: &ContainerOpts) -> PathBuf {
    let bundle = root.join(id);
    let _ = std::fs::remove_dir_all(&bundle);
    std::fs::create_dir_all(&bundle).unwrap();
    make_rootfs(&bundle.join("rootfs"));
    let _ = Command::new(runtime).args(["delete", "-f", id]).output();
    let spec = run(Command::new(runtime).arg("spec").current_dir(&bundle));
    assert!(spec.status.success(), "{runtime} spec: {}", String::from_utf8_lossy(&spec.stderr));
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
    if let Some(t) = o.tweak {
        t(&mut cfg);
    }
    if let Some(p) = o.prepare {
        p(&bundle.join("rootfs"));
    }
    std::fs::write(&cfg_path, serde_json::to_vec_pretty(&cfg).unwrap()).unwrap();
    bundle
}

impl Container {
    /// `runc run -d` of a prepared bundle.
    pub fn run_bundle(root: &Path, id: &str, bundle: PathBuf) -> Container {
        Container::try_run_bundle(root, id, bundle).unwrap_or_else(|e| panic!("{e}"))
    }

    /// [`Container::run_bundle`] that returns runc's complaint instead of panicking.
    pub fn try_run_bundle(root: &Path, id: &str, bundle: PathBuf) -> Result<Container, String> {
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
        let c = Container { id: id.into(), bundle };
        if !st.success() {
            // Dropping `c` deletes what runc left and the bundle.
            return Err(format!("runc run {id}: {}", std::fs::read_to_string(&err_path).unwrap_or_default()));
        }
        Ok(c)
    }

    /// The container's root filesystem, as seen from the host.
    pub fn rootfs(&self) -> PathBuf {
        self.bundle.join("rootfs")
    }

    /// Runs `runc exec ARGS... ID CMD...` (output captured, stdin empty).
    pub fn runc_exec(&self, args: &[&str], cmd: &[&str]) -> Output {
        run(Command::new("runc").arg("exec").args(args).arg(&self.id).args(cmd).stdin(Stdio::null()))
    }

    /// Starts `CMD` in the container in the background (`runc exec -d`).
    pub fn runc_exec_detached(&self, cmd: &[&str]) {
        let st = Command::new("runc")
            .args(["exec", "-d", &self.id])
            .args(cmd)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .unwrap();
        assert!(st.success(), "runc exec -d {} {cmd:?}", self.id);
    }

    pub fn init_pid(&self) -> i32 {
        let o = run(Command::new("runc").args(["state", &self.id]));
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("runc state");
        i32::try_from(v["pid"].as_i64().expect("pid")).expect("pid")
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

/// A running agent with its generated set-up; killed on drop.
pub struct Agent {
    pub dir: PathBuf,
    pub url: String,
    pub child: Child,
    pub admin_token: String,
}

impl Agent {
    /// For agents kept in statics (never dropped): killed and reaped when the test process exits, before the
    /// clean-up removes their directories (hooks run last-registered first).
    pub fn kill_at_exit(&self) {
        let pid = self.pid();
        at_exit(move || {
            // SAFETY: kill and waitpid on our own child, which is never reaped before exit.
            unsafe {
                libc::kill(pid, libc::SIGKILL);
                libc::waitpid(pid, std::ptr::null_mut(), 0);
            }
        });
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
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
        Agent::start_configured(dir, extra, None, ACL)
    }

    /// Like [`Agent::start_with`], with `acl` as the ACL.
    pub fn start_with_acl(dir: &Path, extra: &str, acl: &str) -> Agent {
        Agent::start_configured(dir, extra, None, acl)
    }

    /// Like [`Agent::start_with`], with the keys of the `[runtimes]` table replaced by `runtimes` and `acl` as
    /// the ACL.
    pub fn start_with_runtimes(dir: &Path, extra: &str, runtimes: &str, acl: &str) -> Agent {
        Agent::start_configured(dir, extra, Some(runtimes), acl)
    }

    fn start_configured(dir: &Path, extra: &str, runtimes: Option<&str>, acl: &str) -> Agent {
        Agent::start_logging(dir, extra, runtimes, acl, "debug")
    }

    /// [`Agent::start_with_runtimes`] with `DCOS_EXEC_LOG` set to `filter` instead of `debug`.
    pub fn start_logging(dir: &Path, extra: &str, runtimes: Option<&str>, acl: &str, filter: &str) -> Agent {
        Agent::start_full(dir, extra, runtimes, acl, filter, None)
    }

    /// [`Agent::start_with_acl`], with `setup` run in the agent's process just before it executes (async-signal-safe
    /// calls only): the way a service manager or a shell sets up what the agent inherits.
    pub fn start_set_up(dir: &Path, extra: &str, acl: &str, setup: fn() -> std::io::Result<()>) -> Agent {
        Agent::start_full(dir, extra, None, acl, "debug", Some(setup))
    }

    fn start_full(
        dir: &Path,
        extra: &str,
        runtimes: Option<&str>,
        acl: &str,
        filter: &str,
        setup: Option<fn() -> std::io::Result<()>>,
    ) -> Agent {
        // The port is free when picked, but another process can bind it before the agent does: try a new one.
        let mut last = String::new();
        for _ in 0..3 {
            match Agent::try_start_full(dir, extra, runtimes, acl, filter, setup) {
                Ok(a) => return a,
                Err(log) if log.contains("in use") => last = log,
                Err(log) => panic!("the agent exited before it listened:\n{log}"),
            }
        }
        panic!("the agent found its port taken three times:\n{last}")
    }

    /// One start of [`Agent::start_full`]; the agent's log when it exits before it listens.
    fn try_start_full(
        dir: &Path,
        extra: &str,
        runtimes: Option<&str>,
        acl: &str,
        filter: &str,
        setup: Option<fn() -> std::io::Result<()>>,
    ) -> Result<Agent, String> {
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
        if let Some(r) = runtimes {
            // `init` writes `[runtimes]` last.
            let at = text.find("\n[runtimes]").expect("init writes [runtimes]");
            text = format!("{}\n[runtimes]\n{r}\n", &text[..at]);
        }
        std::fs::write(&cfg, text).unwrap();
        std::fs::write(dir.join("acl.toml"), acl).unwrap();
        let log = std::fs::File::create(dir.join("agent.log")).unwrap();
        let mut cmd = Command::new(bin("dcos-exec-agent"));
        cmd.args(["run", "--config"]).arg(&cfg).stdout(Stdio::null()).stderr(log).env("DCOS_EXEC_LOG", filter);
        // SAFETY: prctl in the child before exec; the agent dies with the thread that started it.
        unsafe {
            std::os::unix::process::CommandExt::pre_exec(&mut cmd, move || {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                setup.map_or(Ok(()), |f| f())
            });
        }
        let mut child = cmd.spawn().expect("starting the agent");
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(&listen).is_err() {
            if matches!(child.try_wait(), Ok(Some(_))) {
                return Err(std::fs::read_to_string(dir.join("agent.log")).unwrap_or_default());
            }
            assert!(Instant::now() < deadline, "agent did not listen on {listen}");
            std::thread::sleep(Duration::from_millis(20));
        }
        let admin_token = std::fs::read_to_string(dir.join("admin.token")).unwrap().trim().to_string();
        Ok(Agent { dir: dir.into(), url: format!("https://127.0.0.1:{port}"), child, admin_token })
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
        i32::try_from(self.child.id()).unwrap()
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
            agent.kill_at_exit();
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

/// How many processes on the host (in any pid namespace) run exactly `argv` (its words joined by spaces).
pub fn host_process_count(argv: &str) -> usize {
    let Ok(rd) = std::fs::read_dir("/proc") else { return 0 };
    rd.flatten()
        .filter_map(|e| std::fs::read(e.path().join("cmdline")).ok())
        .filter(|c| String::from_utf8_lossy(c).replace('\0', " ").trim_end() == argv)
        .count()
}

/// Waits at most `secs` for `child` to exit; kills it and fails, with `what` in the message, if it does not.
pub fn wait_within(child: &mut Child, secs: u64, what: &str) -> std::process::ExitStatus {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(st) = child.try_wait().unwrap() {
            return st;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{what}: still running after {secs} s");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Adds CAP_SYS_PTRACE to all five capability sets of the process.
pub fn add_sys_ptrace(cfg: &mut serde_json::Value) {
    for set in ["bounding", "effective", "permitted", "ambient", "inheritable"] {
        let caps = &mut cfg["process"]["capabilities"][set];
        if !caps.is_array() {
            *caps = serde_json::json!([]);
        }
        caps.as_array_mut().unwrap().push("CAP_SYS_PTRACE".into());
    }
}

/// A seccomp filter that allows everything except mkdir/mkdirat (ENOSYS) and IPv6 sockets (EAFNOSUPPORT).
pub fn add_seccomp(cfg: &mut serde_json::Value) {
    cfg["linux"]["seccomp"] = serde_json::json!({
        "defaultAction": "SCMP_ACT_ALLOW",
        "architectures": ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"],
        "syscalls": [
            {"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO", "errnoRet": 38},
            {"names": ["socket"], "action": "SCMP_ACT_ERRNO", "errnoRet": 97,
             "args": [{"index": 0, "value": 10, "op": "SCMP_CMP_EQ"}]}
        ]
    });
}

/// `support/attacker.c` built with `gcc -static` (busybox has no ptrace tool), once per test process.
pub fn attacker() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("{}-attacker", prefix()));
        std::fs::create_dir_all(&dir).unwrap();
        let out = dir.join("attacker");
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/support/attacker.c");
        let o = run(Command::new("gcc").args(["-static", "-O2", "-Wall", "-o"]).arg(&out).arg(&src));
        assert!(o.status.success(), "gcc -static {}: {}", src.display(), stderr(&o));
        out
    })
    .clone()
}

/// A directory only the host has, under the host's /tmp, with a uniquely named file in it: a session that
/// lists it or reads the file has escaped. Removed at exit.
pub struct HostMarker {
    pub name: String,
    pub dir: PathBuf,
}

pub fn host_marker() -> &'static HostMarker {
    static M: OnceLock<HostMarker> = OnceLock::new();
    M.get_or_init(|| {
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().subsec_nanos();
        let name = format!("{}-hostonly-{nanos:08x}", prefix());
        let dir = Path::new("/tmp").join(&name);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("inside"), "host-marker-file\n").unwrap();
        HostMarker { name, dir }
    })
}

/// Runs `cmd` on a new pseudo-terminal of `rows`×`cols` as its controlling terminal: (master, child, slave).
pub fn on_pty(cmd: &mut Command, rows: u16, cols: u16) -> (std::fs::File, std::process::Child, std::os::fd::OwnedFd) {
    use std::os::fd::AsRawFd;
    let ws = nix::pty::Winsize { ws_row: rows, ws_col: cols, ws_xpixel: 0, ws_ypixel: 0 };
    let pty = nix::pty::openpty(Some(&ws), None).unwrap();
    let slave = pty.slave;
    let s = slave.as_raw_fd();
    cmd.stdin(Stdio::from(slave.try_clone().unwrap()))
        .stdout(Stdio::from(slave.try_clone().unwrap()))
        .stderr(Stdio::from(slave.try_clone().unwrap()));
    // SAFETY: setsid and TIOCSCTTY between fork and exec, both async-signal-safe.
    unsafe {
        std::os::unix::process::CommandExt::pre_exec(cmd, move || {
            libc::setsid();
            libc::ioctl(0, libc::TIOCSCTTY, 0);
            let _ = s;
            Ok(())
        });
    }
    let child = cmd.spawn().unwrap();
    (std::fs::File::from(pty.master), child, slave)
}

/// Reads the master until `needle` shows up or `secs` pass; what was read.
pub fn read_until(master: &mut std::fs::File, needle: &str, secs: u64) -> String {
    use std::os::fd::AsRawFd;
    let deadline = std::time::Instant::now() + Duration::from_secs(secs);
    let mut acc = Vec::new();
    let mut buf = [0u8; 4096];
    while std::time::Instant::now() < deadline {
        let mut fds = [libc::pollfd { fd: master.as_raw_fd(), events: libc::POLLIN, revents: 0 }];
        // SAFETY: poll on one valid pollfd.
        if unsafe { libc::poll(fds.as_mut_ptr(), 1, 100) } <= 0 {
            continue;
        }
        match master.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => acc.extend_from_slice(&buf[..n]),
        }
        if String::from_utf8_lossy(&acc).contains(needle) {
            break;
        }
    }
    String::from_utf8_lossy(&acc).into_owned()
}

/// Lazily unmounts every mount point under `dir`, deepest first: what a killed shim, CRI plugin or dockerd left
/// (pod `/dev/shm`s, container roots, network namespaces), so the directory can be removed.
pub fn unmount_under(dir: &Path) {
    let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") else { return };
    let mut points: Vec<PathBuf> =
        info.lines().filter_map(|l| l.split(' ').nth(4)).map(PathBuf::from).filter(|p| p.starts_with(dir)).collect();
    points.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    for p in points {
        let _ = nix::mount::umount2(&p, nix::mount::MntFlags::MNT_DETACH);
    }
}
