//! A real dockerd of this test process's own: its own data root, exec root, socket and containerd, no bridge or
//! iptables, vfs storage. Stopped (its containers removed first) when the test process exits.

use super::{at_exit, run, unmount_under};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

pub const DOCKERD: &str = "/usr/sbin/dockerd";
/// Debian's client, not whatever else is first on PATH.
pub const DOCKER: &str = "/usr/bin/docker";

pub struct Daemon {
    pub sock: PathBuf,
    pub exec_root: PathBuf,
}

impl Daemon {
    /// `docker -H unix://SOCK ARGS...`, output captured.
    pub fn docker(&self, args: &[&str]) -> Output {
        run(Command::new(DOCKER).arg("-H").arg(self.host()).args(args))
    }

    /// Like [`Daemon::docker`]; a failure fails the test. Returns stdout, trimmed.
    pub fn docker_ok(&self, args: &[&str]) -> String {
        let o = self.docker(args);
        assert!(o.status.success(), "docker {args:?}: {}", String::from_utf8_lossy(&o.stderr));
        String::from_utf8_lossy(&o.stdout).trim().to_string()
    }

    /// The value for `docker -H` and `DOCKER_HOST`.
    pub fn host(&self) -> String {
        format!("unix://{}", self.sock.display())
    }
}

/// Starts dockerd in `dir` and waits until it answers.
pub fn start(dir: &Path) -> Daemon {
    // vfs: no overlay mounts to leave behind, and it works on any filesystem the temp dir is on.
    start_with(dir, "vfs")
}

/// [`start`] with another storage driver.
pub fn start_with(dir: &Path, driver: &str) -> Daemon {
    assert!(Path::new(DOCKERD).exists(), "dockerd is missing: scripts/setup installs docker.io");
    std::fs::create_dir_all(dir).unwrap();
    let sock = dir.join("docker.sock");
    let exec_root = dir.join("exec");
    let log = std::fs::File::create(dir.join("dockerd.log")).unwrap();
    let mut cmd = Command::new(DOCKERD);
    cmd.arg("--data-root")
        .arg(dir.join("data"))
        .arg("--exec-root")
        .arg(&exec_root)
        .arg("--pidfile")
        .arg(dir.join("dockerd.pid"))
        .arg("-H")
        .arg(format!("unix://{}", sock.display()))
        // vfs: no overlay mounts to leave behind, and it works on any filesystem the temp dir is on.
        .args(["--bridge=none", "--iptables=false", "--ip6tables=false"])
        .arg(format!("--storage-driver={driver}"))
        .args(["--shutdown-timeout=1", "--log-level=warn"])
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log);
    // SAFETY: prctl in the child before exec; dockerd dies with the thread that started it.
    unsafe {
        std::os::unix::process::CommandExt::pre_exec(&mut cmd, || {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
            Ok(())
        });
    }
    let mut child = cmd.spawn().expect("starting dockerd");
    let pid = i32::try_from(child.id()).expect("pid fits i32");
    let d = Daemon { sock, exec_root };
    let host = d.host();
    let top = dir.to_path_buf();
    // Registered after `prefix()`'s clean-up, so it runs before the directories are removed.
    at_exit(move || {
        if let Ok(o) = Command::new(DOCKER).args(["-H", &host, "ps", "-aq"]).output() {
            let ids: Vec<String> = String::from_utf8_lossy(&o.stdout).lines().map(String::from).collect();
            if !ids.is_empty() {
                let _ = Command::new(DOCKER).args(["-H", &host, "rm", "-f"]).args(&ids).output();
            }
        }
        // SAFETY: kill on our own child.
        unsafe { libc::kill(pid, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline && !matches!(child.try_wait(), Ok(Some(_))) {
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = child.kill();
        let _ = child.wait();
        // dockerd leaves its default network namespace mounted under the exec root.
        unmount_under(&top);
    });
    let deadline = Instant::now() + Duration::from_secs(60);
    while !d.docker(&["version"]).status.success() {
        assert!(
            Instant::now() < deadline,
            "dockerd did not answer: {}",
            std::fs::read_to_string(dir.join("dockerd.log")).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    d
}
