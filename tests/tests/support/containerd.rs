//! A real `containerd` for end-to-end tests: its own root, state and socket, images imported from OCI archives
//! written here (no network), and at exit its containers killed and removed, the daemon stopped and whatever it
//! left mounted under its directory unmounted.
//!
//! Included with `#[path = "support/containerd.rs"]` next to `support` and `registry`.

#![allow(dead_code)]

use crate::registry;
use crate::support::{at_exit, run, stderr, stdout, unmount_under};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

/// The containerd namespace of the CRI plugin (fixed in containerd).
pub const CRI_NAMESPACE: &str = "k8s.io";

pub struct Containerd {
    pub dir: PathBuf,
    pub sock: PathBuf,
    /// The namespace `ctr` works in.
    pub ns: String,
    /// Where containerd's runc shim keeps the runc state of `ns` (the agent's `runc_roots`).
    pub runc_root: PathBuf,
}

/// `ctr -a SOCK -n NS ARGS...`.
pub fn ctr(c: &Containerd, args: &[&str]) -> Output {
    run(Command::new("ctr").arg("-a").arg(&c.sock).args(["-n", &c.ns]).args(args))
}

pub fn ctr_ok(c: &Containerd, args: &[&str]) -> String {
    let o = ctr(c, args);
    assert!(o.status.success(), "ctr {args:?}: {}", stderr(&o));
    stdout(&o)
}

/// The CRI plugin's part of the configuration: pods get `sandbox_image`, images are unpacked with the native
/// snapshotter (as `ctr images import --snapshotter native` does), runc keeps its state under `dir` rather than
/// in the host's `/run/containerd/runc/k8s.io`, and CNI looks for its configuration in `dir`, not in the host's
/// `/etc/cni/net.d` (host-network pods need none). AppArmor stays off: the tests' pods never ask for it. Pause
/// containers' `oomScoreAdj` is kept no lower than containerd's own, as for a containerd that may not lower it
/// (where the machine denies that, runc fails with "failed to update /proc/self/oom_score_adj: Permission
/// denied").
fn cri_config(dir: &Path, sandbox_image: &str) -> String {
    let d = dir.display();
    format!(
        "[plugins.\"io.containerd.grpc.v1.cri\"]\n\
         sandbox_image = \"{sandbox_image}\"\n\
         disable_apparmor = true\n\
         restrict_oom_score_adj = true\n\
         stream_server_address = \"127.0.0.1\"\n\
         stream_server_port = \"0\"\n\
         [plugins.\"io.containerd.grpc.v1.cri\".cni]\n\
         conf_dir = \"{d}/cni\"\n\
         [plugins.\"io.containerd.grpc.v1.cri\".containerd]\n\
         snapshotter = \"native\"\n\
         default_runtime_name = \"runc\"\n\
         [plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.runc]\n\
         runtime_type = \"io.containerd.runc.v2\"\n\
         [plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.runc.options]\n\
         Root = \"{d}/runc\"\n"
    )
}

/// Starts containerd in `dir` and waits until it answers. `ctr` then works in namespace `ns`. With
/// `cri = Some(sandbox_image)` the CRI plugin is on and `ns` is its namespace, [`CRI_NAMESPACE`]; without,
/// the plugin is disabled.
pub fn start(dir: &Path, ns: &str, cri: Option<&str>) -> Containerd {
    std::fs::create_dir_all(dir).unwrap();
    let sock = dir.join("containerd.sock");
    let config = dir.join("config.toml");
    // Top-level keys come before the first table.
    let (top, tables) = match cri {
        Some(image) => (String::new(), cri_config(dir, image)),
        None => ("disabled_plugins = [\"io.containerd.grpc.v1.cri\"]\n".to_string(), String::new()),
    };
    std::fs::write(
        &config,
        format!(
            "version = 2\nroot = \"{d}/root\"\nstate = \"{d}/state\"\n{top}\
             [grpc]\naddress = \"{s}\"\n[ttrpc]\naddress = \"{s}.ttrpc\"\n[debug]\naddress = \"\"\n{tables}",
            d = dir.display(),
            s = sock.display()
        ),
    )
    .unwrap();
    let runc_root = match cri {
        Some(_) => dir.join("runc").join(ns),
        // containerd's runc shim default.
        None => PathBuf::from(format!("/run/containerd/runc/{ns}")),
    };
    let log = std::fs::File::create(dir.join("containerd.log")).unwrap();
    let mut cmd = Command::new("containerd");
    cmd.arg("--config").arg(&config).stdin(Stdio::null()).stdout(log.try_clone().unwrap()).stderr(log);
    // SAFETY: prctl in the child before exec; containerd dies with the thread that started it.
    unsafe {
        std::os::unix::process::CommandExt::pre_exec(&mut cmd, || {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
            Ok(())
        });
    }
    let mut child = cmd.spawn().expect("starting containerd (scripts/setup installs it with docker.io)");
    let pid = i32::try_from(child.id()).expect("pid fits i32");
    let c = Containerd { dir: dir.into(), sock, ns: ns.into(), runc_root };
    let (sock, ns, dir, runc_root) = (c.sock.clone(), c.ns.clone(), c.dir.clone(), c.runc_root.clone());
    // Registered after `prefix()`'s clean-up, so it runs before the directories are removed.
    at_exit(move || {
        remove_containers(&sock, &ns);
        // SAFETY: kill on our own child.
        unsafe { libc::kill(pid, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline && !matches!(child.try_wait(), Ok(Some(_))) {
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = child.kill();
        let _ = child.wait();
        unmount_under(&dir);
        if !runc_root.starts_with(&dir) {
            let _ = std::fs::remove_dir_all(&runc_root);
        }
        // `ctr run` puts a container's cgroup at /NAMESPACE/ID; the CRI's pods go where the test says.
        if ns != CRI_NAMESPACE {
            remove_cgroup(&ns);
        }
    });
    let deadline = Instant::now() + Duration::from_secs(30);
    while !ctr(&c, &["version"]).status.success() {
        assert!(
            Instant::now() < deadline,
            "containerd did not answer: {}",
            std::fs::read_to_string(c.dir.join("containerd.log")).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    c
}

/// Kills and removes every container of namespace `ns` of the containerd on `sock`.
fn remove_containers(sock: &Path, ns: &str) {
    let ctr = |args: &[&str]| Command::new("ctr").arg("-a").arg(sock).args(["-n", ns]).args(args).output();
    if let Ok(o) = ctr(&["containers", "ls", "-q"]) {
        for id in String::from_utf8_lossy(&o.stdout).lines() {
            let _ = ctr(&["tasks", "kill", "-s", "KILL", id]);
            let _ = ctr(&["tasks", "rm", "-f", id]);
            let _ = ctr(&["containers", "rm", id]);
        }
    }
}

/// `c`'s containerd with `ctr` working in another namespace, `ns`. Containers run there with
/// [`runc_root_args`] keep their runc state under `c`'s directory, in `runc_root`; at exit they are killed and
/// removed, before containerd stops.
pub fn namespace(c: &Containerd, ns: &str) -> Containerd {
    let other =
        Containerd { dir: c.dir.clone(), sock: c.sock.clone(), ns: ns.into(), runc_root: c.dir.join("runc").join(ns) };
    let (sock, ns) = (other.sock.clone(), other.ns.clone());
    // Registered after containerd's hook, so it runs before that stops containerd.
    at_exit(move || remove_containers(&sock, &ns));
    other
}

/// `ctr run`'s flags that put the runc state of its container in `c.runc_root` (containerd's runc shim adds the
/// namespace to the root it is given).
pub fn runc_root_args(c: &Containerd) -> Vec<String> {
    match c.runc_root.parent() {
        Some(root) => vec!["--runc-root".into(), root.display().to_string()],
        None => Vec::new(),
    }
}

/// Removes the cgroup `/name` of every hierarchy (cgroup v1 and v2), if it is empty.
pub fn remove_cgroup(name: &str) {
    let top = Path::new("/sys/fs/cgroup");
    let _ = std::fs::remove_dir(top.join(name));
    let Ok(hierarchies) = std::fs::read_dir(top) else { return };
    for h in hierarchies.flatten() {
        let _ = std::fs::remove_dir(h.path().join(name));
    }
}

/// Imports the image of the OCI layout `layout` (named by its `org.opencontainers.image.ref.name`) into the
/// namespace, unpacked for the native snapshotter.
pub fn import(c: &Containerd, layout: &Path) {
    let tar = layout.with_extension("tar");
    let o = run(Command::new("tar").arg("-C").arg(layout).arg("-cf").arg(&tar).arg("."));
    assert!(o.status.success(), "tar: {}", stderr(&o));
    ctr_ok(c, &["images", "import", "--snapshotter", "native", &tar.display().to_string()]);
}

/// Writes an OCI layout at `dir` holding `image` made of the busybox layer, and imports it.
pub fn import_busybox(c: &Containerd, dir: &Path, image: &str) {
    registry::write_layout(dir, image, &[registry::busybox_layer()]);
    import(c, dir);
}
