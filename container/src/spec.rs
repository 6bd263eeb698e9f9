//! The plain-data description of one exec, built from the container's `config.json` and the request.

use crate::caps::CapSets;
use dcos_exec_proto::TermSize;
use oci_spec::runtime::{PosixRlimitType, Spec};
use serde::{Deserialize, Serialize};

/// `CAP_MKNOD`, never given in a stopped container's sandbox.
const CAP_MKNOD: u32 = 27;

/// One rlimit, `resource` as in setrlimit(2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rlimit {
    /// `RLIMIT_*`.
    pub resource: i32,
    /// The limit enforced.
    pub soft: u64,
    /// The ceiling the soft limit may be raised to.
    pub hard: u64,
}

/// The container's user from `config.json`, as numbers (checked against the allowed range by the helper).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConfigUser {
    /// `process.user.uid`.
    pub uid: u32,
    /// `process.user.gid`.
    pub gid: u32,
    /// `process.user.additionalGids`.
    pub additional_gids: Vec<u32>,
}

/// Everything the helper needs, sent as the first [`crate::channel::Control`] frame.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExecSpec {
    /// The container's init, whose namespaces and cgroups the session joins.
    pub init_pid: i32,
    /// The init's start time (clock ticks after boot), against pid reuse.
    pub init_start: u64,
    /// The command and its arguments.
    pub args: Vec<String>,
    /// The process's environment, overrides merged.
    pub env: Vec<String>,
    /// The container's user, used unless `user_override` is given.
    pub user: ConfigUser,
    /// `-u USER[:GROUP]`, resolved by the helper in the session's root.
    pub user_override: Option<String>,
    /// The working directory inside the session's root.
    pub cwd: String,
    /// The capabilities the process runs with (the container's, plus `--cap-add`).
    pub caps: CapSets,
    /// The container's `noNewPrivileges`.
    pub no_new_privs: bool,
    /// The container's rlimits.
    pub rlimits: Vec<Rlimit>,
    /// The container's umask (0o022 if unset).
    pub umask: u32,
    /// The container's `oomScoreAdj`, or its init's current value.
    pub oom_score_adj: Option<i32>,
    /// The container's seccomp filter, compiled to classic BPF by [`crate::seccomp::compile`].
    pub seccomp: Option<crate::seccomp::Program>,
    /// The container's AppArmor profile and SELinux label, applied when the host has them enabled.
    pub apparmor_profile: Option<String>,
    /// See `apparmor_profile`.
    pub selinux_label: Option<String>,
    /// Whether the process gets a terminal.
    pub tty: bool,
    /// The terminal's initial size.
    pub size: Option<TermSize>,
    /// Between SIGHUP and SIGKILL once the client is gone.
    pub grace_ms: u64,
    /// With `--debug-image`: the session's root is built from these layers.
    pub debug: Option<DebugRoot>,
}

/// A debug image's part of a session.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DebugRoot {
    /// How many layer directories the agent passes, as descriptors, from fd [`crate::helper::FIRST_LAYER_FD`]
    /// on; top layer first (overlay lowerdir order).
    pub layers: usize,
    /// Where the target's root appears in the session, e.g. `/target`.
    pub target: String,
    /// A stopped container: there is no init to join, so the session gets fresh namespaces and the container's
    /// root filesystem (and its bind mounts) from descriptors that follow the layers'.
    pub stopped: Option<StoppedTarget>,
}

impl DebugRoot {
    /// How many descriptors the agent passes from [`crate::helper::FIRST_LAYER_FD`] on.
    pub fn fds(&self) -> usize {
        self.layers + self.stopped.as_ref().map_or(0, |s| s.root.fds() + s.binds.len())
    }
}

/// How a stopped container's root filesystem reaches the helper.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StoppedRoot {
    /// One directory (a bundle's `rootfs`, Docker's `vfs` layer, containerd's `native` snapshot): cloned.
    #[default]
    Dir,
    /// The layers of an overlay snapshot (Docker's `overlay2`, containerd's `overlayfs`), mounted afresh as an
    /// overlay: `lowers` directories, top first, then, when `upper`, the container's upper and work directories
    /// (only for a writable session; a read-only one gets the upper as its top lower).
    Overlay {
        /// How many lower directories.
        lowers: usize,
        /// Whether an upper and a work directory follow.
        upper: bool,
    },
}

impl StoppedRoot {
    /// How many descriptors the root takes.
    pub fn fds(&self) -> usize {
        match *self {
            StoppedRoot::Dir => 1,
            StoppedRoot::Overlay { lowers, upper } => lowers + if upper { 2 } else { 0 },
        }
    }
}

/// The part of a debug session on a stopped container: its root's descriptors come right after the layers'
/// (see [`StoppedRoot`]), then one per bind mount, in order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoppedTarget {
    /// How its root filesystem is passed.
    #[serde(default)]
    pub root: StoppedRoot,
    /// The container's hostname, set in the sandbox's own UTS namespace.
    #[serde(default)]
    pub hostname: Option<String>,
    /// The bind mounts of its `config.json` whose sources are directories.
    pub binds: Vec<StoppedBind>,
    /// Its other mounts (tmpfs and other filesystems, file binds, binds left out): each hides what it covered
    /// in the container, so the sandbox covers the same place with an empty read-only directory or file.
    #[serde(default)]
    pub masks: Vec<StoppedMask>,
    /// Whether the session may write to the container's files (ACL action `debug:write`); read-only otherwise.
    pub writable: bool,
}

/// One bind mount of a stopped container.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoppedBind {
    /// Where it is mounted inside the container's root.
    pub destination: String,
    /// `rbind` (Docker's default): the mounts below the source come along. A `bind` is the source's own mount
    /// only, as runc mounts it: what is mounted below the source on the host was never in the container.
    #[serde(default)]
    pub recursive: bool,
    /// `ro` or `rro`: read-only, every mount of the bind (runc's `ro` is the top mount only: the sandbox is
    /// stricter, never looser).
    pub readonly: bool,
    /// `noexec` or `rnoexec`: no execution from any mount of the bind.
    #[serde(default)]
    pub noexec: bool,
}

/// A mount of a stopped container the sandbox does not reproduce, hidden instead.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoppedMask {
    /// Where it is mounted inside the container's root.
    pub destination: String,
    /// How many of [`StoppedTarget::binds`] the container mounted before it: the mask goes on after those and
    /// before the rest, as in the container (a bind below a tmpfs stays visible, one above it stays hidden).
    pub after: usize,
}

impl StoppedBind {
    /// The bind mount an OCI `mounts` entry describes, as runc reads it: a bind when its type is `bind` or its
    /// options hold `bind` or `rbind`; recursive only with `rbind`; options in order, a later `rw`/`rrw`
    /// (`exec`/`rexec`) undoing an earlier `ro`/`rro` (`noexec`/`rnoexec`). `nosuid` and `nodev` need no
    /// carrying: every tree of the sandbox has both. `None` when it is not a bind mount.
    pub fn from_oci(destination: &str, typ: Option<&str>, options: &[String]) -> Option<StoppedBind> {
        let is_bind = typ == Some("bind") || options.iter().any(|o| o == "bind" || o == "rbind");
        if !is_bind {
            return None;
        }
        // runc keeps the top mount's flags (`ro`, `rw`) and the recursive attributes (`rro`, `rrw`) apart: the
        // recursive ones are applied last, so an `rrw` clears an `ro` too.
        let (mut ro, mut rro, mut rrw) = (false, false, false);
        let (mut noexec, mut rnoexec, mut rexec) = (false, false, false);
        for o in options {
            match o.as_str() {
                "ro" => ro = true,
                "rw" => ro = false,
                "rro" => (rro, rrw) = (true, false),
                "rrw" => (rro, rrw) = (false, true),
                "noexec" => noexec = true,
                "exec" => noexec = false,
                "rnoexec" => (rnoexec, rexec) = (true, false),
                "rexec" => (rnoexec, rexec) = (false, true),
                _ => {}
            }
        }
        Some(StoppedBind {
            destination: destination.to_string(),
            recursive: options.iter().any(|o| o == "rbind"),
            readonly: rro || (ro && !rrw),
            noexec: rnoexec || (noexec && !rexec),
        })
    }
}

/// Where a debug session sees the target's root filesystem.
pub const TARGET_MOUNT: &str = "/target";

/// What the request (and, for a debug session, the image) changes of the container's process.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    /// The command and its arguments.
    pub args: Vec<String>,
    /// `-e KEY=VAL`.
    pub env: Vec<String>,
    /// `-u USER[:GROUP]`.
    pub user: Option<String>,
    /// `-w DIR`.
    pub workdir: Option<String>,
    /// `-t`.
    pub tty: bool,
    /// The client's terminal size, with `tty`.
    pub size: Option<TermSize>,
    /// With a debug image: its environment and working directory replace the container's.
    pub image_env: Option<Vec<String>>,
    /// See `image_env`.
    pub image_workdir: Option<String>,
    /// Capabilities added to every set (already checked against the agent's allowlist).
    pub cap_add: Vec<u32>,
    /// With a debug image: how many layer directories the agent passes (see [`DebugRoot::layers`]).
    pub debug_layers: Option<usize>,
    /// With a debug image on a stopped container.
    pub stopped: Option<StoppedTarget>,
}

/// Errors building a spec.
#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    /// `config.json` has no `process` to take the user, capabilities and limits from.
    #[error("the container's config.json has no process")]
    NoProcess,
    /// The container's seccomp profile cannot be compiled.
    #[error("the container's seccomp filter: {0}")]
    Seccomp(#[from] crate::seccomp::SeccompError),
}

/// The default `PATH` of a process whose environment has none (runc's and docker's).
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Merges `-e KEY=VAL` overrides into an environment list: a key set again replaces the earlier value.
pub fn merge_env(base: &[String], overrides: &[String]) -> Vec<String> {
    let key = |e: &str| e.split_once('=').map(|(k, _)| k).unwrap_or(e).to_string();
    let mut env: Vec<String> = base.to_vec();
    for o in overrides {
        let k = key(o);
        env.retain(|e| key(e) != k);
        env.push(o.clone());
    }
    env
}

fn rlimit_resource(t: PosixRlimitType) -> Option<i32> {
    let name = serde_json::to_value(t).ok()?;
    i32::try_from(match name.as_str()? {
        "RLIMIT_CPU" => libc::RLIMIT_CPU,
        "RLIMIT_FSIZE" => libc::RLIMIT_FSIZE,
        "RLIMIT_DATA" => libc::RLIMIT_DATA,
        "RLIMIT_STACK" => libc::RLIMIT_STACK,
        "RLIMIT_CORE" => libc::RLIMIT_CORE,
        "RLIMIT_RSS" => libc::RLIMIT_RSS,
        "RLIMIT_NPROC" => libc::RLIMIT_NPROC,
        "RLIMIT_NOFILE" => libc::RLIMIT_NOFILE,
        "RLIMIT_MEMLOCK" => libc::RLIMIT_MEMLOCK,
        "RLIMIT_AS" => libc::RLIMIT_AS,
        "RLIMIT_LOCKS" => libc::RLIMIT_LOCKS,
        "RLIMIT_SIGPENDING" => libc::RLIMIT_SIGPENDING,
        "RLIMIT_MSGQUEUE" => libc::RLIMIT_MSGQUEUE,
        "RLIMIT_NICE" => libc::RLIMIT_NICE,
        "RLIMIT_RTPRIO" => libc::RLIMIT_RTPRIO,
        "RLIMIT_RTTIME" => libc::RLIMIT_RTTIME,
        _ => return None,
    })
    .ok()
}

/// The process `runc exec` would make from `config` with these overrides.
pub fn build(
    config: &Spec,
    init_pid: i32,
    init_start: u64,
    o: &Overrides,
    grace_ms: u64,
) -> Result<ExecSpec, SpecError> {
    let process = config.process().as_ref().ok_or(SpecError::NoProcess)?;
    let base_env = match &o.image_env {
        Some(env) if !env.is_empty() => env.clone(),
        Some(_) => vec![format!("PATH={DEFAULT_PATH}")],
        None => process.env().clone().unwrap_or_default(),
    };
    let mut env = merge_env(&base_env, &o.env);
    // docker exec's rule: a terminal session gets a TERM unless one is set.
    if o.tty && !env.iter().any(|e| e.starts_with("TERM=")) {
        env.push("TERM=xterm".into());
    }
    let user = process.user();
    let mut caps = CapSets::from_oci(process.capabilities().as_ref());
    caps.add_everywhere(&o.cap_add);
    if o.stopped.is_some() {
        // No device cgroup governs a stopped container's sandbox: a node it made (for the host's disk, say) would
        // stay on the host's filesystem in the container's root, openable there by whoever reaches it.
        caps.remove_everywhere(&[CAP_MKNOD]);
    }
    let rlimits: Vec<Rlimit> = process
        .rlimits()
        .as_ref()
        .into_iter()
        .flatten()
        .filter_map(|r| Some(Rlimit { resource: rlimit_resource(r.typ())?, soft: r.soft(), hard: r.hard() }))
        .collect();
    let linux = config.linux().as_ref();
    let seccomp = match linux.and_then(|l| l.seccomp().as_ref()) {
        Some(s) => Some(crate::seccomp::compile(s)?),
        None => None,
    };
    let oom_score_adj = process.oom_score_adj().or_else(|| crate::procfs::oom_score_adj(init_pid));
    Ok(ExecSpec {
        init_pid,
        init_start,
        args: o.args.clone(),
        env,
        user: ConfigUser {
            uid: user.uid(),
            gid: user.gid(),
            additional_gids: user.additional_gids().clone().unwrap_or_default(),
        },
        user_override: o.user.clone(),
        cwd: match (&o.workdir, &o.debug_layers) {
            (Some(w), _) => w.clone(),
            (None, Some(_)) => o.image_workdir.clone().unwrap_or_else(|| "/".into()),
            (None, None) => process.cwd().display().to_string(),
        },
        caps,
        no_new_privs: process.no_new_privileges().unwrap_or(false),
        rlimits,
        umask: user.umask().unwrap_or(0o022),
        oom_score_adj,
        seccomp,
        apparmor_profile: process.apparmor_profile().clone().filter(|p| !p.is_empty()),
        selinux_label: process.selinux_label().clone().filter(|p| !p.is_empty()),
        tty: o.tty,
        size: o.size,
        grace_ms,
        debug: o.debug_layers.map(|layers| DebugRoot {
            layers,
            target: TARGET_MOUNT.into(),
            stopped: o.stopped.clone(),
        }),
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn sample() -> ExecSpec {
        let cfg: Spec = serde_json::from_str(CONFIG).unwrap();
        let o = Overrides { args: vec!["sh".into()], env: vec!["B=2".into()], tty: true, ..Default::default() };
        build(&cfg, 1, 2, &o, 5000).unwrap()
    }

    const CONFIG: &str = r#"{
        "ociVersion": "1.0.2",
        "process": {
            "user": {"uid": 1000, "gid": 1000, "additionalGids": [2000, 3000], "umask": 63},
            "args": ["sleep", "1"],
            "env": ["PATH=/bin", "B=1", "HOME="],
            "cwd": "/home/app",
            "capabilities": {"bounding": ["CAP_CHOWN", "CAP_KILL"], "effective": ["CAP_KILL"],
                             "permitted": ["CAP_KILL"], "inheritable": [], "ambient": []},
            "rlimits": [{"type": "RLIMIT_NOFILE", "hard": 2345, "soft": 1234}],
            "noNewPrivileges": true,
            "oomScoreAdj": 300,
            "apparmorProfile": "docker-default"
        },
        "root": {"path": "rootfs"},
        "linux": {"seccomp": {"defaultAction": "SCMP_ACT_ALLOW", "architectures": ["SCMP_ARCH_X86_64"],
                  "syscalls": [{"names": ["mkdir"], "action": "SCMP_ACT_ERRNO", "errnoRet": 38}]}}
    }"#;

    #[test]
    fn the_config_becomes_the_process_runc_would_make() {
        let s = sample();
        assert_eq!(s.user, ConfigUser { uid: 1000, gid: 1000, additional_gids: vec![2000, 3000] });
        assert_eq!(s.env, vec!["PATH=/bin", "HOME=", "B=2", "TERM=xterm"]);
        assert_eq!(s.cwd, "/home/app");
        assert_eq!(s.umask, 63);
        assert!(s.no_new_privs);
        assert_eq!(s.oom_score_adj, Some(300));
        assert_eq!(
            s.rlimits,
            vec![Rlimit { resource: i32::try_from(libc::RLIMIT_NOFILE).unwrap(), soft: 1234, hard: 2345 }]
        );
        assert_eq!(s.caps.bounding, vec![0, 5]);
        assert_eq!(s.caps.effective, vec![5]);
        assert_eq!(s.apparmor_profile.as_deref(), Some("docker-default"));
        assert!(s.seccomp.as_ref().is_some_and(|p| !p.bpf.is_empty() && p.bpf.len() % 8 == 0));
        assert_eq!(s.debug, None);
    }

    #[test]
    fn a_debug_image_brings_its_env_and_workdir_and_cap_add_joins_every_set() {
        let cfg: Spec = serde_json::from_str(CONFIG).unwrap();
        let o = Overrides {
            args: vec!["sh".into()],
            image_env: Some(vec![]),
            image_workdir: Some("/work".into()),
            cap_add: vec![19],
            debug_layers: Some(2),
            ..Default::default()
        };
        let s = build(&cfg, 1, 2, &o, 0).unwrap();
        assert_eq!(s.env, vec![format!("PATH={DEFAULT_PATH}")]);
        assert_eq!(s.cwd, "/work");
        for set in [&s.caps.bounding, &s.caps.effective, &s.caps.permitted, &s.caps.inheritable, &s.caps.ambient] {
            assert!(set.contains(&19), "{set:?}");
        }
        assert_eq!(s.debug, Some(DebugRoot { layers: 2, target: "/target".into(), stopped: None }));
        assert_eq!(s.debug.as_ref().map(DebugRoot::fds), Some(2));
        let binds = vec![StoppedBind { destination: "/data".into(), recursive: true, readonly: true, noexec: false }];
        let stopped = Overrides {
            stopped: Some(StoppedTarget {
                binds,
                // A mask takes no descriptor.
                masks: vec![StoppedMask { destination: "/data/key.pem".into(), after: 1 }],
                writable: false,
                root: StoppedRoot::Overlay { lowers: 2, upper: true },
                hostname: None,
            }),
            ..o.clone()
        };
        assert_eq!(build(&cfg, 0, 0, &stopped, 0).unwrap().debug.as_ref().map(DebugRoot::fds), Some(7));
        let mut with_mknod = stopped.clone();
        with_mknod.cap_add.push(CAP_MKNOD);
        let s = build(&cfg, 0, 0, &with_mknod, 0).unwrap();
        for set in [&s.caps.bounding, &s.caps.effective, &s.caps.permitted, &s.caps.inheritable, &s.caps.ambient] {
            assert!(!set.contains(&CAP_MKNOD), "no CAP_MKNOD in a stopped container's sandbox: {set:?}");
        }
        let o = Overrides { workdir: Some("/tmp".into()), ..o };
        assert_eq!(build(&cfg, 1, 2, &o, 0).unwrap().cwd, "/tmp");
    }

    #[test]
    fn env_overrides_replace_by_key() {
        let base = vec!["PATH=/bin".to_string(), "A=1".to_string()];
        assert_eq!(merge_env(&base, &["A=2".into(), "B=x=y".into()]), vec!["PATH=/bin", "A=2", "B=x=y"]);
    }

    /// runc's reading of a bind's options: `bind` is not recursive, `rbind` is; `ro`/`rro` and
    /// `noexec`/`rnoexec` in order, undone by a later `rw`/`rrw` and `exec`/`rexec`.
    #[test]
    fn bind_options_as_runc_reads_them() {
        let b = |typ: Option<&str>, o: &[&str]| {
            let o: Vec<String> = o.iter().map(|s| s.to_string()).collect();
            StoppedBind::from_oci("/d", typ, &o).map(|b| (b.recursive, b.readonly, b.noexec))
        };
        assert_eq!(b(Some("bind"), &["bind", "ro"]), Some((false, true, false)));
        assert_eq!(b(Some("bind"), &[]), Some((false, false, false)));
        assert_eq!(b(None, &["rbind", "rro"]), Some((true, true, false)));
        assert_eq!(b(Some("none"), &["rbind", "rw", "noexec", "nosuid", "nodev"]), Some((true, false, true)));
        assert_eq!(b(Some("bind"), &["rbind", "rnoexec"]), Some((true, false, true)));
        assert_eq!(b(Some("bind"), &["ro", "rw"]), Some((false, false, false)));
        assert_eq!(b(Some("bind"), &["ro", "rrw"]), Some((false, false, false)));
        assert_eq!(b(Some("bind"), &["rro", "rw"]), Some((false, true, false)));
        assert_eq!(b(Some("bind"), &["rrw", "ro"]), Some((false, false, false)));
        assert_eq!(b(Some("bind"), &["noexec", "exec"]), Some((false, false, false)));
        assert_eq!(b(Some("tmpfs"), &["nosuid"]), None);
        assert_eq!(b(Some("proc"), &[]), None);
    }
}
