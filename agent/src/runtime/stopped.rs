//! What the engines keep of a stopped Docker or containerd container, for a debug sandbox on its files: Docker
//! and containerd remove a container's bundle when its task ends, so its root filesystem, its mounts and its
//! process come from the engine instead: Docker's inspect (`GraphDriver`, `Mounts`, `Config`, `HostConfig`),
//! containerd's container record (its OCI spec) and the mounts of its snapshot.
//!
//! An engine is trusted, a container's files are not: every path an engine answers is opened here, before it
//! reaches a mount, and only if it is absolute, free of `..`, under the engine's data root (bind mounts of host
//! directories: anywhere) and reached without following any symlink (`openat2` with `RESOLVE_NO_SYMLINKS`, and
//! `RESOLVE_BENEATH` the data root). The helper then mounts descriptors, never paths.

use super::docker::EngineError;
use dcos_exec_container::spec::{StoppedBind, StoppedMask, StoppedRoot};
use nix::fcntl::{OFlag, OpenHow, ResolveFlag};
use serde::Deserialize;
use std::collections::HashMap;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Component, Path, PathBuf};
use std::time::Duration;

/// The engine that knows a container, and how to ask it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Engine {
    Docker { socket: PathBuf },
    Containerd { socket: PathBuf, namespace: String },
}

/// A stopped container's files, opened, and the process spec to run with.
#[derive(Debug)]
pub struct StoppedFiles {
    /// Its process (user, capabilities, hostname); mounts and root are in `root`, `binds` and `fds`.
    pub config: oci_spec::runtime::Spec,
    pub root: StoppedRoot,
    pub binds: Vec<StoppedBind>,
    /// Its other mounts, and binds left out: hidden in the sandbox.
    pub masks: Vec<StoppedMask>,
    /// The root's descriptors (see [`StoppedRoot`]), then one per bind.
    pub fds: Vec<OwnedFd>,
}

/// Why a stopped container's files cannot be had.
#[derive(Debug, thiserror::Error)]
pub enum StoppedError {
    #[error("container {0} was removed")]
    Gone(String),
    #[error(transparent)]
    Engine(#[from] EngineError),
    #[error("the engine answered a path the agent will not mount: {path}: {why}")]
    Path { path: String, why: String },
    #[error("the container's storage is not supported: {0}")]
    Unsupported(String),
    #[error("opening the container's {what}: {cause}")]
    Open { what: String, cause: std::io::Error },
    #[error("the engine's answer: {0}")]
    Answer(String),
}

impl StoppedError {
    pub fn code(&self) -> dcos_exec_proto::ErrorCode {
        match self {
            StoppedError::Gone(_) => dcos_exec_proto::ErrorCode::TaskNotFound,
            _ => dcos_exec_proto::ErrorCode::StartFailed,
        }
    }
}

/// A container's root filesystem as its engine keeps it, in paths the engine answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Snapshot {
    /// One directory.
    Dir(PathBuf),
    /// Overlay layers: lowers top first, and the upper and work directories.
    Overlay { lowers: Vec<PathBuf>, upper: PathBuf, work: PathBuf },
}

/// One mount of the container, in paths the engine answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountSource {
    /// `None` for a mount that is not a bind (a tmpfs, the engine's `/proc`...): the sandbox hides its
    /// destination.
    pub source: Option<PathBuf>,
    /// Where, and how (recursive, read-only, noexec), as the engine's runtime mounted it.
    pub bind: StoppedBind,
    /// A volume the engine manages (under its data root), not a host directory someone chose.
    pub managed: bool,
}

/// What an engine says about a stopped container, before anything is opened.
#[derive(Debug)]
pub struct Answer {
    /// The engine's data root: every snapshot and volume path must be under it.
    pub data_root: PathBuf,
    pub snapshot: Snapshot,
    /// Every mount of the container, in the order its runtime mounted them.
    pub mounts: Vec<MountSource>,
    pub config: oci_spec::runtime::Spec,
}

/// The files of a stopped container known to `engine`, opened; `writable` when the session may write to them.
pub async fn files(engine: &Engine, id: &str, writable: bool, timeout: Duration) -> Result<StoppedFiles, StoppedError> {
    let socket = match engine {
        Engine::Docker { socket } | Engine::Containerd { socket, .. } => socket.clone(),
    };
    let ask = async {
        match engine {
            Engine::Docker { socket } => docker(socket, id).await,
            Engine::Containerd { socket, namespace } => containerd(socket, namespace, id).await,
        }
    };
    let answer = tokio::time::timeout(timeout, ask).await.map_err(|_| EngineError::Timeout(socket, timeout))??;
    open(answer, writable)
}

/// A path of the engine's: absolute, without `.` or `..`.
fn plain(p: &Path) -> Result<(), StoppedError> {
    let bad = |why: &str| StoppedError::Path { path: p.display().to_string(), why: why.into() };
    if !p.is_absolute() {
        return Err(bad("not absolute"));
    }
    if p.components().any(|c| !matches!(c, Component::RootDir | Component::Normal(_))) {
        return Err(bad("not a plain path"));
    }
    Ok(())
}

fn open_how() -> OpenHow {
    OpenHow::new()
        .flags(OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC)
        .resolve(ResolveFlag::RESOLVE_NO_SYMLINKS | ResolveFlag::RESOLVE_NO_MAGICLINKS)
}

/// Opens the directory `p`, which must lie under `root` and be reached from it without a symlink.
fn open_beneath(root_fd: &OwnedFd, root: &Path, p: &Path, what: &str) -> Result<OwnedFd, StoppedError> {
    plain(p)?;
    let rel = p.strip_prefix(root).map_err(|_| StoppedError::Path {
        path: p.display().to_string(),
        why: format!("not under the engine's data root {}", root.display()),
    })?;
    let rel = if rel.as_os_str().is_empty() { Path::new(".") } else { rel };
    let how = open_how()
        .resolve(ResolveFlag::RESOLVE_BENEATH | ResolveFlag::RESOLVE_NO_SYMLINKS | ResolveFlag::RESOLVE_NO_MAGICLINKS);
    nix::fcntl::openat2(root_fd, rel, how)
        .map_err(|e| StoppedError::Open { what: format!("{what} {}", p.display()), cause: e.into() })
}

/// Opens a host directory a user bound into the container: absolute, no symlink on the way.
fn open_host_dir(p: &Path, what: &str) -> Result<OwnedFd, StoppedError> {
    plain(p)?;
    nix::fcntl::openat2(nix::fcntl::AT_FDCWD, p, open_how())
        .map_err(|e| StoppedError::Open { what: format!("{what} {}", p.display()), cause: e.into() })
}

/// Checks and opens what an engine answered. Read-only sessions get an overlay's upper as its top lower, so
/// nothing of the container's can change.
pub fn open(a: Answer, writable: bool) -> Result<StoppedFiles, StoppedError> {
    plain(&a.data_root)?;
    // The data root itself is the engine's configuration (it may be a symlink an administrator made).
    let root_fd = nix::fcntl::open(
        &a.data_root,
        OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        nix::sys::stat::Mode::empty(),
    )
    .map_err(|e| StoppedError::Open { what: format!("data root {}", a.data_root.display()), cause: e.into() })?;
    let dir = |p: &Path, what: &str| open_beneath(&root_fd, &a.data_root, p, what);
    let (root, mut fds) = match &a.snapshot {
        Snapshot::Dir(p) => (StoppedRoot::Dir, vec![dir(p, "root filesystem")?]),
        Snapshot::Overlay { lowers, upper, work } => {
            let mut fds = Vec::new();
            if !writable {
                fds.push(dir(upper, "upper layer")?);
            }
            for l in lowers {
                fds.push(dir(l, "layer")?);
            }
            let n = fds.len();
            if writable {
                fds.push(dir(upper, "upper layer")?);
                fds.push(dir(work, "overlay work directory")?);
                (StoppedRoot::Overlay { lowers: n, upper: true }, fds)
            } else if n == 1 {
                // An overlay needs two lowers when it has no upper; one directory is a plain root.
                (StoppedRoot::Dir, fds)
            } else {
                (StoppedRoot::Overlay { lowers: n, upper: false }, fds)
            }
        }
    };
    let (mut binds, mut masks) = (Vec::new(), Vec::new());
    for m in &a.mounts {
        let mask = |masks: &mut Vec<StoppedMask>, after: usize| {
            masks.push(StoppedMask { destination: m.bind.destination.clone(), after })
        };
        let Some(source) = &m.source else {
            mask(&mut masks, binds.len());
            continue;
        };
        let fd = if m.managed { dir(source, "volume") } else { open_host_dir(source, "bind mount") };
        match fd {
            Ok(fd) => {
                fds.push(fd);
                binds.push(m.bind.clone());
            }
            // A file (a key masked with /dev/null, /etc/hosts), or a directory gone since: not reproduced, as for
            // runc's bundles, but hidden, so what it covered does not show; a refused path is an error.
            Err(StoppedError::Open { what, cause }) => {
                tracing::info!("masking the stopped container's {what}: {cause}");
                mask(&mut masks, binds.len());
            }
            Err(e) => return Err(e),
        }
    }
    Ok(StoppedFiles { config: a.config, root, binds, masks, fds })
}

// ---- Docker ----------------------------------------------------------------------------------------------------

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Info {
    docker_root_dir: PathBuf,
}

/// The parts of `GET /containers/{id}/json` used here.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Inspect {
    pub id: String,
    pub graph_driver: GraphDriver,
    #[serde(default)]
    pub mounts: Vec<InspectMount>,
    #[serde(default)]
    pub config: InspectConfig,
    #[serde(default)]
    pub host_config: HostConfig,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct GraphDriver {
    pub name: String,
    #[serde(default)]
    pub data: Option<HashMap<String, String>>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct InspectMount {
    #[serde(default)]
    pub r#type: String,
    #[serde(default)]
    pub source: PathBuf,
    pub destination: String,
    #[serde(rename = "RW", default)]
    pub rw: bool,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct InspectConfig {
    #[serde(default)]
    pub hostname: String,
    #[serde(default)]
    pub user: String,
    #[serde(default)]
    pub env: Option<Vec<String>>,
    #[serde(default)]
    pub working_dir: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct HostConfig {
    #[serde(default)]
    pub cap_add: Option<Vec<String>>,
    #[serde(default)]
    pub cap_drop: Option<Vec<String>>,
    #[serde(default)]
    pub privileged: bool,
    /// `--mount` mounts, as asked (`-v` ones are in `Binds`, always recursive).
    #[serde(default)]
    pub mounts: Option<Vec<HostMount>>,
    /// `--tmpfs` mounts: destination to options (not in the inspect's `Mounts`).
    #[serde(default)]
    pub tmpfs: Option<HashMap<String, String>>,
}

/// One `HostConfig.Mounts` entry: the parts that say how a bind is mounted.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct HostMount {
    #[serde(default)]
    pub target: String,
    #[serde(default)]
    pub bind_options: Option<BindOptions>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct BindOptions {
    #[serde(default)]
    pub non_recursive: bool,
}

/// Docker's default capabilities (moby's `caps.DefaultCapabilities`).
const DOCKER_CAPS: &[&str] = &[
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FSETID",
    "CAP_FOWNER",
    "CAP_MKNOD",
    "CAP_NET_RAW",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETFCAP",
    "CAP_SETPCAP",
    "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT",
    "CAP_KILL",
    "CAP_AUDIT_WRITE",
];

/// The capability set Docker gives a container with these `--cap-add`, `--cap-drop` and `--privileged`.
pub fn docker_caps(h: &HostConfig) -> Vec<String> {
    let norm = |c: &String| {
        let c = c.to_ascii_uppercase();
        if c == "ALL" || c.starts_with("CAP_") {
            c
        } else {
            format!("CAP_{c}")
        }
    };
    let all = || caps::all().into_iter().map(|c| c.to_string()).collect::<Vec<_>>();
    if h.privileged {
        return all();
    }
    let add: Vec<String> = h.cap_add.iter().flatten().map(norm).collect();
    let drop: Vec<String> = h.cap_drop.iter().flatten().map(norm).collect();
    let mut set: Vec<String> = if drop.iter().any(|c| c == "ALL") {
        Vec::new()
    } else {
        DOCKER_CAPS.iter().map(|c| c.to_string()).filter(|c| !drop.contains(c)).collect()
    };
    if add.iter().any(|c| c == "ALL") {
        set = all().into_iter().filter(|c| !drop.contains(c)).collect();
    } else {
        set.extend(add);
    }
    set.sort();
    set.dedup();
    set
}

/// Docker's `Config.User` (`name|uid[:group|gid]`) as numbers, names looked up in the container's own files.
fn docker_user(spec: &str, passwd: &str, group: &str) -> Result<(u32, u32), StoppedError> {
    use dcos_exec_container::user::{parse_group, parse_passwd};
    let bad = || StoppedError::Answer(format!("user {spec:?}"));
    let (u, g) = spec.split_once(':').map_or((spec, None), |(u, g)| (u, Some(g)));
    let users = parse_passwd(passwd);
    let (uid, mut gid): (u64, u64) = match u {
        "" => (0, 0),
        n if n.bytes().all(|b| b.is_ascii_digit()) => {
            let uid: u64 = n.parse().map_err(|_| bad())?;
            (uid, users.iter().find(|p| p.uid == uid).map_or(uid, |p| p.gid))
        }
        name => users
            .iter()
            .find(|p| p.name == name)
            .map(|p| (p.uid, p.gid))
            .ok_or_else(|| StoppedError::Answer(format!("user {name:?} is not in the container's /etc/passwd")))?,
    };
    if let Some(g) = g.filter(|g| !g.is_empty()) {
        gid = match g.parse() {
            Ok(n) => n,
            Err(_) => parse_group(group)
                .iter()
                .find(|e| e.name == g)
                .map(|e| e.gid)
                .ok_or_else(|| StoppedError::Answer(format!("group {g:?} is not in the container's /etc/group")))?,
        };
    }
    // setresuid(-1) leaves the id unchanged: never a user.
    let id = |n: u64| u32::try_from(n).ok().filter(|&n| n != u32::MAX).ok_or_else(bad);
    Ok((id(uid)?, id(gid)?))
}

/// Reads `rel` (at most 1 MiB) from the first of `layers` (top first) that has it, without following a symlink
/// out of the layer: the container's files are not trusted.
fn read_in_layers(layers: &[PathBuf], rel: &str) -> String {
    use std::io::Read;
    for l in layers {
        let Ok(dir) =
            nix::fcntl::open(l, OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC, nix::sys::stat::Mode::empty())
        else {
            continue;
        };
        // O_PATH first: a device node or a fifo the container put there is never opened on the host, only a
        // regular file is, through its O_PATH descriptor.
        let how = OpenHow::new()
            .flags(OFlag::O_PATH | OFlag::O_CLOEXEC)
            .resolve(ResolveFlag::RESOLVE_IN_ROOT | ResolveFlag::RESOLVE_NO_MAGICLINKS);
        let Ok(fd) = nix::fcntl::openat2(&dir, rel, how) else { continue };
        if !nix::sys::stat::fstat(&fd).is_ok_and(|st| st.st_mode & libc::S_IFMT == libc::S_IFREG) {
            continue;
        }
        let Ok(f) = std::fs::File::open(format!("/proc/self/fd/{}", fd.as_raw_fd())) else { continue };
        let mut s = String::new();
        let _ = f.take(1 << 20).read_to_string(&mut s);
        return s;
    }
    String::new()
}

/// The OCI process spec Docker would have written for this container (as far as a debug session uses it).
pub fn docker_spec(i: &Inspect, layers: &[PathBuf]) -> Result<oci_spec::runtime::Spec, StoppedError> {
    let (uid, gid) =
        docker_user(&i.config.user, &read_in_layers(layers, "etc/passwd"), &read_in_layers(layers, "etc/group"))?;
    let caps = docker_caps(&i.host_config);
    let cwd = if i.config.working_dir.is_empty() { "/".to_string() } else { i.config.working_dir.clone() };
    let v = serde_json::json!({
        "ociVersion": "1.0.2",
        "hostname": i.config.hostname,
        "process": {
            "user": {"uid": uid, "gid": gid},
            "args": ["sh"],
            "env": i.config.env.clone().unwrap_or_default(),
            "cwd": cwd,
            "capabilities": {"bounding": caps, "effective": caps, "permitted": caps},
        },
    });
    serde_json::from_value(v).map_err(|e| StoppedError::Answer(format!("building the process spec: {e}")))
}

/// What Docker's inspect says of the container's root filesystem and mounts.
pub fn docker_answer(i: Inspect, data_root: PathBuf) -> Result<Answer, StoppedError> {
    let data = i.graph_driver.data.clone().unwrap_or_default();
    let snapshot = match i.graph_driver.name.as_str() {
        "overlay2" | "overlay" => {
            let get = |k: &str| {
                data.get(k).map(PathBuf::from).ok_or_else(|| StoppedError::Answer(format!("GraphDriver has no {k}")))
            };
            let lowers = data.get("LowerDir").map(|l| l.split(':').map(PathBuf::from).collect()).unwrap_or_default();
            Snapshot::Overlay { lowers, upper: get("UpperDir")?, work: get("WorkDir")? }
        }
        "vfs" => {
            // vfs keeps the container's layer under an id of its own, which only the layer store maps.
            let f = data_root.join("image/vfs/layerdb/mounts").join(&i.id).join("mount-id");
            plain(&f)?;
            let id = std::fs::read_to_string(&f)
                .map_err(|cause| StoppedError::Open { what: format!("layer id {}", f.display()), cause })?;
            let id = id.trim();
            if id.is_empty() || !id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') {
                return Err(StoppedError::Answer(format!("vfs layer id {id:?}")));
            }
            Snapshot::Dir(data_root.join("vfs/dir").join(id))
        }
        other => return Err(StoppedError::Unsupported(format!("Docker storage driver {other:?}"))),
    };
    let layers: Vec<PathBuf> = match &snapshot {
        Snapshot::Dir(d) => vec![d.clone()],
        Snapshot::Overlay { lowers, upper, .. } => std::iter::once(upper.clone()).chain(lowers.clone()).collect(),
    };
    let config = docker_spec(&i, &layers)?;
    let mut mounts: Vec<MountSource> = i
        .mounts
        .iter()
        .map(|m| {
            // Docker mounts binds and volumes with `rbind` unless `--mount ...,bind-nonrecursive`
            // (`BindOptions.NonRecursive` of the HostConfig's mount at that target), read-only ones recursively
            // (the sandbox makes every read-only bind read-only throughout).
            let non_recursive = i
                .host_config
                .mounts
                .iter()
                .flatten()
                .any(|h| h.target == m.destination && h.bind_options.as_ref().is_some_and(|b| b.non_recursive));
            let bind = m.r#type == "bind" || m.r#type == "volume";
            MountSource {
                source: bind.then(|| m.source.clone()),
                bind: StoppedBind {
                    destination: m.destination.clone(),
                    recursive: !non_recursive,
                    readonly: !m.rw,
                    noexec: false,
                },
                managed: m.r#type == "volume",
            }
        })
        .collect();
    // What Docker mounts besides: `--tmpfs`, and its own mounts (the kernel filesystems, `/dev`, and the files
    // it writes for the container), all hiding what the image has there.
    let own = DOCKER_MOUNTS.iter().map(|d| d.to_string());
    let tmpfs = i.host_config.tmpfs.iter().flatten().map(|(d, _)| d.clone());
    for d in own.chain(tmpfs) {
        if !mounts.iter().any(|m| m.bind.destination == d) {
            mounts.push(MountSource { source: None, bind: mask_at(d), managed: false });
        }
    }
    // Docker mounts shallow destinations first (moby's `sortMounts`), so that a mount below another is on top.
    mounts.sort_by_key(|m| Path::new(&m.bind.destination).components().count());
    Ok(Answer { data_root, snapshot, mounts, config })
}

/// The mounts Docker gives every container besides its volumes: the OCI defaults and the files it writes for
/// the container (`/etc/hosts`, `/etc/hostname`, `/etc/resolv.conf`).
const DOCKER_MOUNTS: &[&str] = &[
    "/proc",
    "/dev",
    "/dev/pts",
    "/sys",
    "/sys/fs/cgroup",
    "/dev/mqueue",
    "/dev/shm",
    "/etc/resolv.conf",
    "/etc/hostname",
    "/etc/hosts",
];

/// A mount entry that only names its destination (the sandbox hides it).
fn mask_at(destination: String) -> StoppedBind {
    StoppedBind { destination, recursive: false, readonly: true, noexec: false }
}

async fn docker(socket: &Path, id: &str) -> Result<Answer, StoppedError> {
    let info: Info = match super::docker::get(socket, "/info").await? {
        Some(b) => serde_json::from_slice(&b).map_err(|e| StoppedError::Answer(format!("/info: {e}")))?,
        None => return Err(StoppedError::Answer("/info: not found".into())),
    };
    if !id.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(StoppedError::Answer(format!("container id {id:?}")));
    }
    let inspect: Inspect = match super::docker::get(socket, &format!("/containers/{id}/json")).await? {
        Some(b) => serde_json::from_slice(&b).map_err(|e| StoppedError::Answer(format!("inspect: {e}")))?,
        None => return Err(StoppedError::Gone(id.into())),
    };
    docker_answer(inspect, info.docker_root_dir)
}

// ---- containerd ------------------------------------------------------------------------------------------------

/// The root filesystem in the mounts a snapshotter gives for a container's snapshot: a bind of one directory
/// (`native`, or an overlay snapshot without parents) or an overlay.
pub fn containerd_snapshot(mounts: &[(String, String, Vec<String>)]) -> Result<Snapshot, StoppedError> {
    let [(typ, source, options)] = mounts else {
        return Err(StoppedError::Unsupported(format!("{} mounts for one snapshot", mounts.len())));
    };
    match typ.as_str() {
        "bind" | "rbind" => Ok(Snapshot::Dir(source.into())),
        "overlay" => {
            let opt = |k: &str| options.iter().find_map(|o| o.strip_prefix(k)).map(String::from);
            let lowers: Vec<PathBuf> =
                opt("lowerdir=").map(|l| l.split(':').map(PathBuf::from).collect()).unwrap_or_default();
            match (opt("upperdir="), opt("workdir=")) {
                (Some(u), Some(w)) => Ok(Snapshot::Overlay { lowers, upper: u.into(), work: w.into() }),
                // A view (read-only snapshot): its lowers are all there is.
                _ => match lowers.as_slice() {
                    [one] => Ok(Snapshot::Dir(one.clone())),
                    _ => Err(StoppedError::Unsupported("an overlay snapshot without an upper directory".into())),
                },
            }
        }
        other => Err(StoppedError::Unsupported(format!("snapshot mount type {other:?}"))),
    }
}

/// The mounts of a container's OCI spec, in order: binds with their sources, the others to hide.
fn spec_binds(spec: &oci_spec::runtime::Spec) -> Vec<MountSource> {
    let mut out = Vec::new();
    for m in spec.mounts().iter().flatten() {
        let opts = m.options().clone().unwrap_or_default();
        let destination = m.destination().display().to_string();
        out.push(match StoppedBind::from_oci(&destination, m.typ().as_deref(), &opts) {
            Some(bind) => MountSource { source: m.source().clone(), bind, managed: false },
            None => MountSource { source: None, bind: mask_at(destination), managed: false },
        });
    }
    out
}

async fn containerd(socket: &Path, namespace: &str, id: &str) -> Result<Answer, StoppedError> {
    use containerd_client::services::v1::containers_client::ContainersClient;
    use containerd_client::services::v1::introspection_client::IntrospectionClient;
    use containerd_client::services::v1::snapshots::snapshots_client::SnapshotsClient;
    use containerd_client::services::v1::snapshots::MountsRequest;
    use containerd_client::services::v1::{GetContainerRequest, PluginsRequest};
    use containerd_client::tonic::{metadata::MetadataValue, Code, Request};
    let http = |e: &dyn std::fmt::Display| EngineError::Http(socket.into(), e.to_string());
    let ns = MetadataValue::try_from(namespace).map_err(|e| StoppedError::Answer(format!("namespace: {e}")))?;
    fn scoped<T>(ns: &MetadataValue<containerd_client::tonic::metadata::Ascii>, r: T) -> Request<T> {
        let mut r = Request::new(r);
        r.metadata_mut().insert("containerd-namespace", ns.clone());
        r
    }
    let channel = containerd_client::connect(socket).await.map_err(|e| http(&e))?;
    let record =
        match ContainersClient::new(channel.clone()).get(scoped(&ns, GetContainerRequest { id: id.into() })).await {
            Ok(r) => r.into_inner().container.ok_or_else(|| StoppedError::Gone(id.into()))?,
            Err(s) if s.code() == Code::NotFound => return Err(StoppedError::Gone(id.into())),
            Err(s) => return Err(http(&s).into()),
        };
    // containerd keeps the container's OCI spec, as JSON, in its record.
    let spec = record.spec.ok_or_else(|| StoppedError::Answer("the container record has no spec".into()))?;
    let config: oci_spec::runtime::Spec =
        serde_json::from_slice(&spec.value).map_err(|e| StoppedError::Answer(format!("the container's spec: {e}")))?;
    if record.snapshotter.is_empty() || record.snapshot_key.is_empty() {
        return Err(StoppedError::Unsupported("a container without a snapshot".into()));
    }
    let req = MountsRequest { snapshotter: record.snapshotter.clone(), key: record.snapshot_key.clone() };
    let mounts = match SnapshotsClient::new(channel.clone()).mounts(scoped(&ns, req)).await {
        Ok(r) => r.into_inner().mounts,
        Err(s) if s.code() == Code::NotFound => return Err(StoppedError::Gone(id.into())),
        Err(s) => return Err(http(&s).into()),
    };
    let mounts: Vec<_> = mounts.into_iter().map(|m| (m.r#type, m.source, m.options)).collect();
    let snapshot = containerd_snapshot(&mounts)?;
    // Where the snapshotter keeps its snapshots: the root it exports, else (`native` exports none) its directory
    // under containerd's root, `ROOT/io.containerd.snapshotter.v1.ID`, ROOT read from the content store's export.
    let filters = vec![
        format!("type==io.containerd.snapshotter.v1,id=={}", record.snapshotter),
        "type==io.containerd.content.v1,id==content".to_string(),
    ];
    let plugins = IntrospectionClient::new(channel)
        .plugins(PluginsRequest { filters })
        .await
        .map_err(|e| http(&e))?
        .into_inner()
        .plugins;
    let export = |typ: &str| plugins.iter().find(|p| p.r#type == typ).and_then(|p| p.exports.get("root"));
    let data_root = match (export("io.containerd.snapshotter.v1"), export("io.containerd.content.v1")) {
        (Some(root), _) => PathBuf::from(root),
        (None, Some(content)) => Path::new(content)
            .parent()
            .map(|r| r.join(format!("io.containerd.snapshotter.v1.{}", record.snapshotter)))
            .ok_or_else(|| StoppedError::Answer(format!("content store root {content:?}")))?,
        (None, None) => {
            return Err(StoppedError::Answer(format!("snapshotter {:?} exports no root", record.snapshotter)))
        }
    };
    let mounts = spec_binds(&config);
    Ok(Answer { data_root, snapshot, mounts, config })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> oci_spec::runtime::Spec {
        serde_json::from_str(r#"{"ociVersion":"1.0.2","process":{"user":{"uid":0,"gid":0},"cwd":"/"}}"#).unwrap()
    }

    #[test]
    fn docker_overlay2_vfs_and_caps() {
        let i: Inspect = serde_json::from_str(
            r#"{"Id":"abc","GraphDriver":{"Name":"overlay2","Data":{"LowerDir":"/d/overlay2/x-init/diff:/d/overlay2/y/diff",
               "UpperDir":"/d/overlay2/x/diff","WorkDir":"/d/overlay2/x/work","MergedDir":"/d/overlay2/x/merged"}},
               "Mounts":[{"Type":"volume","Source":"/d/volumes/v/_data","Destination":"/v","RW":true},
                         {"Type":"bind","Source":"/srv","Destination":"/srv","RW":false},
                         {"Type":"bind","Source":"/nr","Destination":"/nr","RW":true},
                         {"Type":"tmpfs","Source":"","Destination":"/run","RW":true}],
               "Config":{"Hostname":"abc","User":"0:0","Env":["A=1"],"WorkingDir":"/w"},
               "HostConfig":{"CapAdd":["SYS_ADMIN"],"Tmpfs":{"/data/hidden":"size=1m"},"CapDrop":["mknod","CAP_KILL"],
                             "Mounts":[{"Type":"bind","Source":"/nr","Target":"/nr","BindOptions":{"NonRecursive":true}},
                                       {"Type":"bind","Source":"/srv","Target":"/srv","ReadOnly":true}]}}"#,
        )
        .unwrap();
        let a = docker_answer(i, "/d".into()).unwrap();
        assert_eq!(
            a.snapshot,
            Snapshot::Overlay {
                lowers: vec!["/d/overlay2/x-init/diff".into(), "/d/overlay2/y/diff".into()],
                upper: "/d/overlay2/x/diff".into(),
                work: "/d/overlay2/x/work".into()
            }
        );
        let m: Vec<_> = a
            .mounts
            .iter()
            .filter(|m| m.source.is_some())
            .map(|m| (m.bind.destination.as_str(), m.bind.recursive, m.bind.readonly, m.managed))
            .collect();
        assert_eq!(m, [("/v", true, false, true), ("/srv", true, true, false), ("/nr", false, false, false)]);
        // Everything else Docker mounts is hidden: its tmpfs mounts (`--mount type=tmpfs`, `--tmpfs`), its own.
        let masked: Vec<_> =
            a.mounts.iter().filter(|m| m.source.is_none()).map(|m| m.bind.destination.as_str()).collect();
        for d in ["/run", "/data/hidden", "/etc/hosts", "/proc", "/dev"] {
            assert!(masked.contains(&d), "{d} in {masked:?}");
        }
        // Shallow destinations first, as Docker mounts them: a tmpfs below a volume goes on after it.
        let at = |d: &str| a.mounts.iter().position(|m| m.bind.destination == d).unwrap();
        assert!(at("/v") < at("/data/hidden") && at("/dev") < at("/dev/shm"));
        assert_eq!(a.config.hostname().as_deref(), Some("abc"));
        let p = a.config.process().as_ref().unwrap();
        assert_eq!(p.cwd().to_str(), Some("/w"));
        let caps = docker_caps(&HostConfig {
            cap_add: Some(vec!["SYS_ADMIN".into()]),
            cap_drop: Some(vec!["mknod".into(), "CAP_KILL".into()]),
            privileged: false,
            mounts: None,
            tmpfs: None,
        });
        assert!(caps.contains(&"CAP_SYS_ADMIN".to_string()) && caps.contains(&"CAP_CHOWN".to_string()));
        assert!(!caps.contains(&"CAP_MKNOD".to_string()) && !caps.contains(&"CAP_KILL".to_string()));
        let none = docker_caps(&HostConfig { cap_drop: Some(vec!["ALL".into()]), ..Default::default() });
        assert!(none.is_empty());
    }

    /// vfs: the layer id comes from the layer store's `mount-id` file; one that would lead elsewhere is refused.
    #[test]
    fn a_vfs_layer_id_is_a_plain_name() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().to_path_buf();
        let ids = root.join("image/vfs/layerdb/mounts/abc");
        std::fs::create_dir_all(&ids).unwrap();
        let inspect =
            || -> Inspect { serde_json::from_str(r#"{"Id":"abc","GraphDriver":{"Name":"vfs","Data":null}}"#).unwrap() };
        std::fs::write(ids.join("mount-id"), "f00d\n").unwrap();
        assert_eq!(docker_answer(inspect(), root.clone()).unwrap().snapshot, Snapshot::Dir(root.join("vfs/dir/f00d")));
        for bad in ["../../../etc", "/etc", "", "a/b"] {
            std::fs::write(ids.join("mount-id"), bad).unwrap();
            assert!(matches!(docker_answer(inspect(), root.clone()), Err(StoppedError::Answer(_))), "{bad:?}");
        }
        let btrfs: Inspect = serde_json::from_str(r#"{"Id":"abc","GraphDriver":{"Name":"btrfs"}}"#).unwrap();
        assert!(matches!(docker_answer(btrfs, root), Err(StoppedError::Unsupported(_))));
    }

    #[test]
    fn docker_users_come_from_the_containers_files() {
        let passwd = "root:x:0:0::/root:/bin/sh\napp:x:1000:1001::/home/app:/bin/sh\n";
        let group = "root:x:0:\nstaff:x:50:\n";
        assert_eq!(docker_user("", passwd, group).unwrap(), (0, 0));
        assert_eq!(docker_user("app", passwd, group).unwrap(), (1000, 1001));
        assert_eq!(docker_user("1000", passwd, group).unwrap(), (1000, 1001));
        assert_eq!(docker_user("app:staff", passwd, group).unwrap(), (1000, 50));
        assert_eq!(docker_user("7:8", passwd, group).unwrap(), (7, 8));
        assert!(docker_user("nobody", passwd, group).is_err());
        assert!(docker_user("4294967295", passwd, group).is_err());
    }

    /// The container's /etc/passwd may be anything: a fifo (an open would block), a device node (an open on the
    /// host may act), a symlink out of its root. Only a regular file inside the layer is read; the upper layer
    /// hides the lower ones.
    #[test]
    fn passwd_is_read_from_the_top_layer_only_as_a_regular_file_inside_it() {
        let tmp = tempfile::tempdir().unwrap();
        let (upper, lower) = (tmp.path().join("upper"), tmp.path().join("lower"));
        for d in [&upper, &lower] {
            std::fs::create_dir_all(d.join("etc")).unwrap();
        }
        std::fs::write(lower.join("etc/passwd"), "app:x:7:7::/:/bin/sh\n").unwrap();
        let layers = [upper.clone(), lower.clone()];
        assert!(read_in_layers(&layers, "etc/passwd").contains("app:x:7"));
        nix::unistd::mkfifo(&upper.join("etc/passwd"), nix::sys::stat::Mode::S_IRUSR).unwrap();
        assert!(read_in_layers(&layers, "etc/passwd").contains("app:x:7"), "the fifo is skipped, not opened");
        std::fs::remove_file(upper.join("etc/passwd")).unwrap();
        // /dev/zero's node: opened, it would be read to the limit.
        nix::sys::stat::mknod(
            &upper.join("etc/passwd"),
            nix::sys::stat::SFlag::S_IFCHR,
            nix::sys::stat::Mode::S_IRUSR,
            nix::sys::stat::makedev(1, 5),
        )
        .unwrap();
        assert!(read_in_layers(&layers, "etc/passwd").contains("app:x:7"));
        std::fs::remove_file(upper.join("etc/passwd")).unwrap();
        // A link to the host's file resolves inside the layer (RESOLVE_IN_ROOT), where there is none.
        std::fs::write(tmp.path().join("host-passwd"), "host:x:0:0::/:/bin/sh\n").unwrap();
        std::os::unix::fs::symlink(tmp.path().join("host-passwd"), upper.join("etc/passwd")).unwrap();
        assert!(!read_in_layers(&layers, "etc/passwd").contains("host:x"));
        std::fs::remove_file(upper.join("etc/passwd")).unwrap();
        std::fs::write(upper.join("etc/passwd"), "top:x:8:8::/:/bin/sh\n").unwrap();
        assert_eq!(read_in_layers(&layers, "etc/passwd"), "top:x:8:8::/:/bin/sh\n");
    }

    #[test]
    fn containerd_snapshot_mounts() {
        let m =
            |t: &str, s: &str, o: &[&str]| (t.to_string(), s.to_string(), o.iter().map(|x| x.to_string()).collect());
        assert_eq!(
            containerd_snapshot(&[m("bind", "/c/snapshots/4", &["rbind", "rw"])]).unwrap(),
            Snapshot::Dir("/c/snapshots/4".into())
        );
        assert_eq!(
            containerd_snapshot(&[m(
                "overlay",
                "overlay",
                &["index=off", "workdir=/c/s/5/work", "upperdir=/c/s/5/fs", "lowerdir=/c/s/2/fs:/c/s/1/fs"]
            )])
            .unwrap(),
            Snapshot::Overlay {
                lowers: vec!["/c/s/2/fs".into(), "/c/s/1/fs".into()],
                upper: "/c/s/5/fs".into(),
                work: "/c/s/5/work".into()
            }
        );
        assert!(containerd_snapshot(&[]).is_err());
        assert!(containerd_snapshot(&[m("zfs", "pool/x", &[])]).is_err());
    }

    /// The attacks an engine's answer could carry from a container's files: a path out of the data root, one with
    /// `..`, one through a symlink that a container planted (its upper directory is its own to write), a relative
    /// one. Each is refused before anything is mounted; the honest answer opens.
    #[test]
    fn paths_out_of_the_data_root_or_through_symlinks_are_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("data");
        let upper = root.join("overlay2/c/diff");
        std::fs::create_dir_all(&upper).unwrap();
        std::fs::create_dir_all(root.join("overlay2/c/work")).unwrap();
        std::fs::create_dir_all(root.join("overlay2/l/diff")).unwrap();
        std::fs::create_dir_all(root.join("volumes/v/_data")).unwrap();
        // The container made /escape in its upper layer, a link to the host's /.
        std::os::unix::fs::symlink("/", upper.join("escape")).unwrap();
        std::os::unix::fs::symlink(root.join("overlay2/l"), root.join("overlay2/link")).unwrap();
        let answer = |lower: PathBuf, volume: PathBuf| Answer {
            data_root: root.clone(),
            snapshot: Snapshot::Overlay {
                lowers: vec![lower],
                upper: upper.clone(),
                work: root.join("overlay2/c/work"),
            },
            mounts: vec![MountSource {
                source: Some(volume),
                bind: StoppedBind { destination: "/v".into(), recursive: true, readonly: false, noexec: false },
                managed: true,
            }],
            config: spec(),
        };
        let ok = open(answer(root.join("overlay2/l/diff"), root.join("volumes/v/_data")), false).unwrap();
        assert_eq!(ok.root, StoppedRoot::Overlay { lowers: 2, upper: false });
        assert_eq!(ok.fds.len(), 3);
        let ok = open(answer(root.join("overlay2/l/diff"), root.join("volumes/v/_data")), true).unwrap();
        assert_eq!(ok.root, StoppedRoot::Overlay { lowers: 1, upper: true });
        for bad in [
            PathBuf::from("/etc"),
            root.join("overlay2/../../../etc"),
            upper.join("escape/etc"),
            root.join("overlay2/link/diff"),
            PathBuf::from("overlay2/l/diff"),
        ] {
            let e = open(answer(bad.clone(), root.join("volumes/v/_data")), false);
            assert!(matches!(e, Err(StoppedError::Path { .. } | StoppedError::Open { .. })), "{bad:?}: {e:?}");
            // As a volume: refused, and never opened (a refused path is an error, not a silently skipped mount).
            let e = open(answer(root.join("overlay2/l/diff"), bad.clone()), false);
            match e {
                Err(StoppedError::Path { .. }) => {}
                Ok(f) => assert!(f.binds.is_empty(), "{bad:?} was opened"),
                Err(e) => panic!("{bad:?}: {e:?}"),
            }
        }
        // A host directory bound in: anywhere, but never through a symlink.
        let link = tmp.path().join("hostlink");
        std::os::unix::fs::symlink("/", &link).unwrap();
        assert!(open_host_dir(&link.join("etc"), "bind").is_err());
        assert!(open_host_dir(tmp.path(), "bind").is_ok());
    }
}
