//! Real crun containers for end-to-end tests, from the same busybox rootfs as the runc ones, in crun's default
//! state root (`/run/crun`), which the agent's default configuration reads.
//!
//! crun (1.8) refuses to create any container, whatever its cgroup manager (even `disabled`), on a hybrid host
//! whose cgroup2 hierarchy at /sys/fs/cgroup/unified has a controller bound to it ("cgroups in hybrid mode not
//! supported, drop all controllers from cgroupv2"). On such a host `crun run` is started in a private mount
//! namespace without that cgroup2 mount: crun then sees a legacy (v1 only) host, creates the container's cgroups in
//! every v1 hierarchy, and the container keeps the cgroup2 cgroup of whoever started it. The container itself
//! and every later crun command (`state`, `exec`, `kill`, `delete`) live in the host's namespaces as usual.

use super::{prefix, run, stdout, ContainerOpts};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::Once;

/// The controllers bound to cgroup2 on a hybrid host (the reason crun refuses to run here), or None when crun
/// can create containers as it is: a unified host, a legacy one, or a hybrid one with an empty cgroup2.
pub fn hybrid_v2_controllers() -> Option<String> {
    let unified = Path::new("/sys/fs/cgroup/unified");
    let fs = nix::sys::statfs::statfs(unified).ok()?;
    if fs.filesystem_type() != nix::sys::statfs::CGROUP2_SUPER_MAGIC {
        return None;
    }
    let controllers = std::fs::read_to_string(unified.join("cgroup.controllers")).ok()?;
    let controllers = controllers.trim();
    (!controllers.is_empty()).then(|| controllers.to_string())
}

/// `crun ARGS...` for a command that creates a container (`run`, `create`): in a private mount namespace with
/// /sys/fs/cgroup/unified unmounted when the host is hybrid with cgroup2 controllers (see the module doc).
pub fn crun_creating() -> Command {
    if hybrid_v2_controllers().is_none() {
        return Command::new("crun");
    }
    let mut c = Command::new("unshare");
    // `--propagation private`: the unmount stays in the new namespace.
    c.args(["--mount", "--propagation", "private", "--", "sh", "-c"])
        .arg("umount /sys/fs/cgroup/unified && exec crun \"$@\"")
        .arg("crun");
    c
}

/// At exit, deletes the crun containers of this test process.
fn delete_ours_at_exit() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        super::at_exit(|| {
            let p = format!("{}-", prefix());
            if let Ok(o) = Command::new("crun").args(["list", "-q"]).output() {
                for id in String::from_utf8_lossy(&o.stdout).lines().filter(|id| id.starts_with(&p)) {
                    let _ = Command::new("crun").args(["delete", "-f", id]).output();
                }
            }
        })
    });
}

/// Deletes crun containers that earlier test processes (now gone) left behind.
pub fn remove_stale_crun_containers() {
    let Ok(o) = Command::new("crun").args(["list", "-q"]).output() else { return };
    for id in stdout(&o).lines() {
        let Some(pid) = id.strip_prefix("dcx").and_then(|r| r.split('-').next()).and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        if !Path::new(&format!("/proc/{pid}")).exists() {
            let _ = Command::new("crun").args(["delete", "-f", id]).output();
            let _ = std::fs::remove_dir_all(std::env::temp_dir().join(format!("dcx{pid}-crun")));
        }
    }
}

/// A crun container running `sleep 100000`, deleted on drop.
pub struct CrunContainer {
    pub id: String,
    pub bundle: PathBuf,
}

impl CrunContainer {
    /// A bundle like [`super::Container::start`]'s (from `crun spec`, with the same options), run detached.
    pub fn start(root: &Path, id: &str, o: &ContainerOpts) -> CrunContainer {
        delete_ours_at_exit();
        let bundle = super::prepare_bundle("crun", root, id, o);
        // The detached init inherits crun's stdio: a pipe would never reach EOF, so errors go to a file.
        let err_path = root.join(format!("{id}.crun-err"));
        let err = std::fs::File::create(&err_path).unwrap();
        let st = crun_creating()
            .args(["run", "-d", "--bundle"])
            .arg(&bundle)
            .arg(id)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(err)
            .status()
            .unwrap();
        let c = CrunContainer { id: id.into(), bundle };
        assert!(st.success(), "crun run {id}: {}", std::fs::read_to_string(&err_path).unwrap_or_default());
        c
    }

    pub fn rootfs(&self) -> PathBuf {
        self.bundle.join("rootfs")
    }

    /// `crun state ID` as JSON.
    pub fn state(&self) -> serde_json::Value {
        let o = run(Command::new("crun").args(["state", &self.id]));
        serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("crun state {}: {e}: {}", self.id, stdout(&o)))
    }

    pub fn init_pid(&self) -> i32 {
        i32::try_from(self.state()["pid"].as_i64().expect("pid")).expect("pid fits i32")
    }

    /// What crun recorded in its state root (`/run/crun/ID/status`), the file the agent reads.
    pub fn status_file(&self) -> serde_json::Value {
        let text = std::fs::read(Path::new("/run/crun").join(&self.id).join("status")).unwrap();
        serde_json::from_slice(&text).unwrap()
    }

    /// Runs `crun exec ARGS... ID CMD...` (output captured, stdin empty).
    pub fn crun_exec(&self, args: &[&str], cmd: &[&str]) -> Output {
        run(Command::new("crun").arg("exec").args(args).arg(&self.id).args(cmd).stdin(Stdio::null()))
    }

    /// `crun exec --process FILE ID` with the container's own `process` from its `config.json` and `args`, as
    /// containerd and podman call it: unlike plain `crun exec ID CMD` (crun 1.8), it applies the config's
    /// `noNewPrivileges` and `rlimits`.
    pub fn crun_exec_as_configured(&self, args: &[&str]) -> Output {
        let cfg: serde_json::Value =
            serde_json::from_slice(&std::fs::read(self.bundle.join("config.json")).unwrap()).unwrap();
        let mut process = cfg["process"].clone();
        process["args"] = serde_json::json!(args);
        process["terminal"] = false.into();
        let file = self.bundle.join("exec-process.json");
        std::fs::write(&file, serde_json::to_vec(&process).unwrap()).unwrap();
        let mut c = Command::new("crun");
        run(c.args(["exec", "--process"]).arg(&file).arg(&self.id).stdin(Stdio::null()))
    }

    pub fn kill(&self) {
        let o = run(Command::new("crun").args(["kill", &self.id, "KILL"]));
        assert!(o.status.success(), "crun kill {}: {}", self.id, String::from_utf8_lossy(&o.stderr));
    }
}

impl Drop for CrunContainer {
    fn drop(&mut self) {
        let _ = Command::new("crun").args(["delete", "-f", &self.id]).output();
        let _ = std::fs::remove_dir_all(&self.bundle);
    }
}
