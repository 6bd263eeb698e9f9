//! The `--debug-image` root: an overlay built detached on the host, attached in a private copy of the target's
//! mount namespace, with the target's root at `/target`.
//!
//! Inside the session `/` is an overlay of the image's layer directories (read-only lowers, top first) with a
//! writable upper on a tmpfs of its own; `/target` is a recursive clone of the target's root; `/proc`, `/dev`
//! and `/sys` are the target's. The overlay and its tmpfs are `nosuid,nodev`: an image grants no privilege
//! by itself. Every mount point is opened with no symlink on the way, so neither the image nor the target can
//! redirect a mount. Nothing is mounted in the target's namespace, and every mount goes away with the
//! session's last process.

use crate::resolve::open_mount_point;
use rustix::mount::{
    fsconfig_create, fsconfig_set_string, fsmount, fsopen, move_mount, open_tree, FsMountFlags, FsOpenFlags,
    MountAttrFlags, MoveMountFlags, OpenTreeFlags,
};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};

/// Errors building or entering the debug root.
#[derive(Debug, thiserror::Error)]
#[error("{what}: {source}")]
pub struct MountError {
    what: String,
    source: std::io::Error,
}

fn err(what: impl Into<String>) -> impl FnOnce(rustix::io::Errno) -> MountError {
    let what = what.into();
    move |e| MountError { what, source: e.into() }
}

fn io_err(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> MountError {
    let what = what.into();
    move |source| MountError { what, source }
}

/// A new detached mount of `fstype` with `opts`, `nosuid,nodev`.
fn detached(fstype: &str, opts: &[(&str, &str)]) -> Result<OwnedFd, MountError> {
    let fs = fsopen(fstype, FsOpenFlags::FSOPEN_CLOEXEC).map_err(err(format!("fsopen {fstype}")))?;
    for (k, v) in opts {
        fsconfig_set_string(&fs, *k, *v).map_err(err(format!("{fstype} option {k}")))?;
    }
    fsconfig_create(&fs).map_err(err(format!("creating the {fstype}")))?;
    let attrs = MountAttrFlags::MOUNT_ATTR_NOSUID | MountAttrFlags::MOUNT_ATTR_NODEV;
    fsmount(&fs, FsMountFlags::FSMOUNT_CLOEXEC, attrs).map_err(err(format!("mounting the {fstype}")))
}

/// A new detached overlay of `lowers` (top first) with the options `rest`, `nosuid,nodev`. Each lower is added by
/// itself with `lowerdir+` (Linux 6.8): `fsconfig` takes option strings of at most 256 bytes, so one joined
/// `lowerdir` holds only about a dozen `/proc/self/fd/N` paths. Kernels without `lowerdir+` get the joined form.
fn overlay(lowers: &[String], rest: &[(&str, &str)]) -> Result<OwnedFd, MountError> {
    let fs = fsopen("overlay", FsOpenFlags::FSOPEN_CLOEXEC).map_err(err("fsopen overlay"))?;
    for (i, l) in lowers.iter().enumerate() {
        match fsconfig_set_string(&fs, "lowerdir+", l.as_str()) {
            Ok(()) => {}
            Err(rustix::io::Errno::INVAL) if i == 0 => {
                let joined = lowers.join(":");
                let opts: Vec<(&str, &str)> =
                    std::iter::once(("lowerdir", joined.as_str())).chain(rest.iter().copied()).collect();
                return detached("overlay", &opts);
            }
            Err(e) => return Err(err(format!("overlay option lowerdir+ (layer {} of {})", i + 1, lowers.len()))(e)),
        }
    }
    for (k, v) in rest {
        fsconfig_set_string(&fs, *k, *v).map_err(err(format!("overlay option {k}")))?;
    }
    fsconfig_create(&fs).map_err(err("creating the overlay"))?;
    let attrs = MountAttrFlags::MOUNT_ATTR_NOSUID | MountAttrFlags::MOUNT_ATTR_NODEV;
    fsmount(&fs, FsMountFlags::FSMOUNT_CLOEXEC, attrs).map_err(err("mounting the overlay"))
}

/// Builds the overlay of `layers` (directory fds, top layer first) with a per-session tmpfs upper. Runs on the
/// host side, before the helper joins the target's mount namespace.
pub fn build_overlay(layers: &[BorrowedFd<'_>]) -> Result<OwnedFd, MountError> {
    if layers.is_empty() {
        return Err(MountError { what: "the image".into(), source: std::io::Error::other("has no layers") });
    }
    let scratch = detached("tmpfs", &[("mode", "0755"), ("size", "1g")])?;
    for d in ["upper", "work"] {
        rustix::fs::mkdirat(&scratch, d, rustix::fs::Mode::from_raw_mode(0o755))
            .map_err(err(format!("mkdir {d} on the session's tmpfs")))?;
    }
    // Everything by fd: the session's /proc/mounts then shows no host path.
    let base = format!("/proc/self/fd/{}", scratch.as_raw_fd());
    let lowers: Vec<String> = layers.iter().map(|f| format!("/proc/self/fd/{}", f.as_raw_fd())).collect();
    let upper = format!("{base}/upper");
    let work = format!("{base}/work");
    overlay(&lowers, &[("upperdir", &upper), ("workdir", &work)])
}

/// A stopped container's root filesystem from its overlay snapshot's directories (`lowers` top first): with
/// `upper` (its upper and work directories) writable, as the container saw it; without, read-only, the upper
/// then being passed as the top lower. Built on the host side from descriptors, so no path of the engine's
/// reaches the mount.
pub fn container_overlay(
    lowers: &[BorrowedFd<'_>],
    upper: Option<(BorrowedFd<'_>, BorrowedFd<'_>)>,
) -> Result<OwnedFd, MountError> {
    let path = |f: &BorrowedFd<'_>| format!("/proc/self/fd/{}", f.as_raw_fd());
    let lower: Vec<String> = lowers.iter().map(path).collect();
    let mnt = match &upper {
        Some((u, w)) => overlay(&lower, &[("upperdir", &path(u)), ("workdir", &path(w))])?,
        None => overlay(&lower, &[])?,
    };
    if upper.is_none() {
        set_attrs(&mnt, MOUNT_ATTR_RDONLY | MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV, "the container's root")?;
    }
    Ok(mnt)
}

fn clone_tree(dir: impl AsFd, path: &str) -> Result<OwnedFd, MountError> {
    let flags = OpenTreeFlags::OPEN_TREE_CLONE
        | OpenTreeFlags::OPEN_TREE_CLOEXEC
        | OpenTreeFlags::AT_RECURSIVE
        | OpenTreeFlags::AT_SYMLINK_NOFOLLOW;
    // The point is opened first with no symlink anywhere, so the clone is of exactly that directory.
    let at = open_mount_point(dir, path).map_err(io_err(format!("opening {path}")))?;
    open_tree(&at, "", flags | OpenTreeFlags::AT_EMPTY_PATH).map_err(err(format!("cloning {path}")))
}

fn attach(mnt: &OwnedFd, onto: &OwnedFd, what: &str) -> Result<(), MountError> {
    let flags = MoveMountFlags::MOVE_MOUNT_F_EMPTY_PATH | MoveMountFlags::MOVE_MOUNT_T_EMPTY_PATH;
    move_mount(mnt, "", onto, "", flags).map_err(err(format!("attaching {what}")))
}

/// Inside the target's mount namespace (after setns): makes a private copy of it and switches this process's
/// root to the overlay, with the target's root at `target` (e.g. `/target`).
pub fn enter(overlay: OwnedFd, target: &str) -> Result<(), MountError> {
    let target = target.trim_start_matches('/');
    if target.is_empty() || target.split('/').any(|p| p == ".." || p == "." || p.is_empty()) {
        return Err(MountError {
            what: format!("target path /{target}"),
            source: std::io::ErrorKind::InvalidInput.into(),
        });
    }
    // SAFETY: unsharing the mount namespace of this single-threaded process; no other thread shares its
    // fs state.
    unsafe { rustix::thread::unshare_unsafe(rustix::thread::UnshareFlags::NEWNS) }
        .map_err(err("unshare(CLONE_NEWNS)"))?;
    // Private from here on: nothing mounted below propagates back into the target's namespace.
    rustix::mount::mount_change(
        "/",
        rustix::mount::MountPropagationFlags::PRIVATE | rustix::mount::MountPropagationFlags::REC,
    )
    .map_err(err("making / private"))?;
    let root = crate::resolve::open_root().map_err(io_err("opening /"))?;
    let target_root = clone_tree(&root, ".")?;
    attach(&overlay, &root, "the image on /")?;
    // The overlay's root, now on top of the target's root.
    let new_root = open_tree(&overlay, "", OpenTreeFlags::OPEN_TREE_CLOEXEC | OpenTreeFlags::AT_EMPTY_PATH)
        .map_err(err("opening the image's root"))?;
    mkdir_in(&new_root, target)?;
    attach(&target_root, &open_mount_point(&new_root, target).map_err(io_err(format!("opening /{target}")))?, target)?;
    for sub in ["proc", "dev", "sys"] {
        let from = format!("{target}/{sub}");
        // Only a real directory of the target, and only onto a real directory of the image.
        let Ok(tree) = clone_tree(&new_root, &from) else {
            continue;
        };
        mkdir_in(&new_root, sub)?;
        let onto = open_mount_point(&new_root, sub).map_err(io_err(format!("opening /{sub}")))?;
        attach(&tree, &onto, sub)?;
    }
    rustix::process::fchdir(&new_root).map_err(err("entering the image's root"))?;
    // pivot_root(".", ".") stacks the old root on the new one; the detach drops it (runc's trick for when
    // there is no directory to put the old root in).
    rustix::process::pivot_root(".", ".").map_err(err("pivot_root"))?;
    rustix::mount::unmount(".", rustix::mount::UnmountFlags::DETACH).map_err(err("detaching the old root"))?;
    rustix::process::chdir("/").map_err(err("chdir /"))?;
    Ok(())
}

/// How a tree of a stopped container is cloned into its sandbox.
#[derive(Debug, Clone, Copy)]
pub struct CloneMode {
    /// With the mounts below `dir` (`rbind`), or its own mount only (`bind`).
    pub recursive: bool,
    /// Read-only, every mount of the clone.
    pub readonly: bool,
    /// No execution, every mount of the clone.
    pub noexec: bool,
}

/// A detached clone of the tree at `dir`, made in the host's mount namespace, where `dir` is (a clone can only be
/// made of mounts in the caller's own namespace). Always `nosuid,nodev`: the sandbox has no device cgroup, so a
/// device node the session makes there (with the container's `CAP_MKNOD`) must not open. Private: nothing
/// mounted on the host below the source later propagates into the sandbox, and nothing mounted in the sandbox
/// propagates out.
pub fn detached_clone(dir: &OwnedFd, mode: CloneMode, what: &str) -> Result<OwnedFd, MountError> {
    let mut flags = OpenTreeFlags::OPEN_TREE_CLONE | OpenTreeFlags::OPEN_TREE_CLOEXEC | OpenTreeFlags::AT_EMPTY_PATH;
    if mode.recursive {
        flags |= OpenTreeFlags::AT_RECURSIVE;
    }
    let tree = open_tree(dir, "", flags).map_err(err(format!("cloning {what}")))?;
    let mut attrs = MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV;
    if mode.readonly {
        attrs |= MOUNT_ATTR_RDONLY;
    }
    if mode.noexec {
        attrs |= MOUNT_ATTR_NOEXEC;
    }
    set_attrs(&tree, attrs, what)?;
    Ok(tree)
}

/// Filesystems that are the kernel's interfaces to the host (its processes, kernel tunables, cgroups, namespaces,
/// IPC, security policy): never shown in a stopped container's sandbox through a bind. With the host's procfs
/// there, `/proc/PID/root` of any host process with the session's uid is the host's root, writable.
const KERNEL_FS: &[&str] = &[
    "proc",
    "sysfs",
    "cgroup",
    "cgroup2",
    "nsfs",
    "mqueue",
    "debugfs",
    "tracefs",
    "securityfs",
    "bpf",
    "configfs",
    "efivarfs",
    "pstore",
    "fusectl",
    "binfmt_misc",
    "selinuxfs",
];

/// One line of `/proc/self/mountinfo`: mount id, parent id, mount point (unescaped), filesystem type.
struct MountLine {
    id: u64,
    parent: u64,
    point: String,
    fstype: String,
}

/// mountinfo's octal escapes (`\040` for a space, ...).
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let octal = b.get(i + 1..i + 4).filter(|d| b[i] == b'\\' && d.iter().all(|c| (b'0'..=b'7').contains(c)));
        if let Some(byte) = octal.and_then(|d| u8::from_str_radix(std::str::from_utf8(d).ok()?, 8).ok()) {
            out.push(byte);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn mountinfo(text: &str) -> Vec<MountLine> {
    text.lines()
        .filter_map(|l| {
            let (left, right) = l.split_once(" - ")?;
            let f: Vec<&str> = left.split(' ').collect();
            Some(MountLine {
                id: f.first()?.parse().ok()?,
                parent: f.get(1)?.parse().ok()?,
                point: unescape(f.get(4)?),
                fstype: right.split(' ').next()?.to_string(),
            })
        })
        .collect()
}

/// The mounts a clone of the directory at `path` in mount `id` may hold, of those in `mounts`: its own, and when
/// `recursive` every one mounted at or below `path` but for the mounts its own is stacked on (more than the clone
/// holds when a mount was stacked over the source later: never less).
fn clone_holds<'a>(mounts: &'a [MountLine], id: u64, path: &str, recursive: bool) -> Vec<&'a MountLine> {
    let mut below_own = Vec::new();
    let mut at = mounts.iter().find(|m| m.id == id).map(|m| m.parent);
    while let Some(p) = at.filter(|p| !below_own.contains(p) && *p != id) {
        below_own.push(p);
        at = mounts.iter().find(|m| m.id == p).map(|m| m.parent);
    }
    let prefix = if path == "/" { "/".to_string() } else { format!("{}/", path.trim_end_matches('/')) };
    mounts
        .iter()
        .filter(|m| {
            m.id == id
                || (recursive
                    && !below_own.contains(&m.id)
                    && (m.point == path.trim_end_matches('/') || m.point.starts_with(&prefix)))
        })
        .collect()
}

/// What kernel filesystem of the host (see [`KERNEL_FS`]) a clone of `dir` would bring into a sandbox, if any:
/// the source's own mount, or, for a recursive clone, one mounted at or below it. Read from this process's
/// mountinfo, in the host's namespace where the clone is made; a source whose place there is unknown is refused
/// as if it held one.
pub fn kernel_fs_in(dir: &OwnedFd, recursive: bool) -> Result<Option<String>, MountError> {
    use rustix::fs::{AtFlags, StatxFlags};
    let stx = rustix::fs::statx(dir, "", AtFlags::EMPTY_PATH, StatxFlags::MNT_ID)
        .map_err(err("finding the mount of a bind source"))?;
    if stx.stx_mask & StatxFlags::MNT_ID.bits() == 0 {
        return Err(MountError {
            what: "finding the mount of a bind source".into(),
            source: std::io::Error::other("the kernel does not report mount ids"),
        });
    }
    let path = std::fs::read_link(format!("/proc/self/fd/{}", dir.as_raw_fd()))
        .map_err(io_err("finding where a bind source is"))?;
    let path = path.to_string_lossy().into_owned();
    if !path.starts_with('/') || path.ends_with(" (deleted)") {
        return Ok(Some(format!("a source out of reach ({path})")));
    }
    let text = std::fs::read_to_string("/proc/self/mountinfo").map_err(io_err("reading /proc/self/mountinfo"))?;
    let mounts = mountinfo(&text);
    let held = clone_holds(&mounts, stx.stx_mnt_id, &path, recursive);
    if !held.iter().any(|m| m.id == stx.stx_mnt_id) {
        return Ok(Some(format!("a source on a mount not in this namespace ({path})")));
    }
    Ok(held.iter().find(|m| KERNEL_FS.contains(&m.fstype.as_str())).map(|m| format!("{} at {}", m.fstype, m.point)))
}

const MOUNT_ATTR_RDONLY: u64 = 0x1;
const MOUNT_ATTR_NOSUID: u64 = 0x2;
const MOUNT_ATTR_NODEV: u64 = 0x4;
const MOUNT_ATTR_NOEXEC: u64 = 0x8;
/// `MS_PRIVATE`, for `mount_attr.propagation`.
const MS_PRIVATE: u64 = 1 << 18;

/// One bind mount of a stopped container: a detached clone of its source, and where it goes inside the
/// container's root.
#[derive(Debug)]
pub struct Bind<'a> {
    /// The source's tree, from [`detached_clone`].
    pub source: OwnedFd,
    /// Its destination inside the container's root.
    pub destination: &'a str,
}

/// `struct mount_attr` of `mount_setattr(2)`.
#[repr(C)]
struct MountAttr {
    attr_set: u64,
    attr_clr: u64,
    propagation: u64,
    userns_fd: u64,
}

/// Sets mount attributes on a detached tree, recursively, and makes it private.
fn set_attrs(tree: &OwnedFd, attrs: u64, what: &str) -> Result<(), MountError> {
    let attr = MountAttr { attr_set: attrs, attr_clr: 0, propagation: MS_PRIVATE, userns_fd: 0 };
    let empty = c"";
    let flags = libc::AT_EMPTY_PATH | libc::AT_RECURSIVE;
    // SAFETY: mount_setattr on a mount fd with an empty path, reading one mount_attr of the size passed.
    let r = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            tree.as_raw_fd(),
            empty.as_ptr(),
            flags,
            &attr as *const MountAttr,
            std::mem::size_of::<MountAttr>(),
        )
    };
    if r != 0 {
        return Err(MountError { what: format!("restricting {what}"), source: std::io::Error::last_os_error() });
    }
    Ok(())
}

/// A `/dev` of the session's own: the host's null, zero, full, random, urandom and tty bound read-only onto a
/// `nodev` tmpfs (so that a node the session makes there with `CAP_MKNOD` does not open: the sandbox has no device
/// cgroup), and a new devpts instance for `-t`. Runs before the host's root is detached, where `/dev` is the
/// host's.
fn attach_dev(new_root: &OwnedFd) -> Result<(), MountError> {
    use rustix::fs::{symlinkat, Mode, OFlags};
    let fs = fsopen("tmpfs", FsOpenFlags::FSOPEN_CLOEXEC).map_err(err("fsopen tmpfs for /dev"))?;
    for (k, v) in [("mode", "0755"), ("size", "1m")] {
        fsconfig_set_string(&fs, k, v).map_err(err(format!("/dev option {k}")))?;
    }
    fsconfig_create(&fs).map_err(err("creating /dev"))?;
    let attrs =
        MountAttrFlags::MOUNT_ATTR_NOSUID | MountAttrFlags::MOUNT_ATTR_NOEXEC | MountAttrFlags::MOUNT_ATTR_NODEV;
    let dev = fsmount(&fs, FsMountFlags::FSMOUNT_CLOEXEC, attrs).map_err(err("mounting /dev"))?;
    mkdir_in(new_root, "dev")?;
    attach(&dev, &open_mount_point(new_root, "dev").map_err(io_err("opening /dev"))?, "/dev")?;
    let dev = open_mount_point(new_root, "dev").map_err(io_err("opening /dev"))?;
    let host_dev = rustix::fs::open("/dev", OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC, Mode::empty())
        .map_err(err("opening the host's /dev"))?;
    for name in ["null", "zero", "full", "random", "urandom", "tty"] {
        let flags =
            OpenTreeFlags::OPEN_TREE_CLONE | OpenTreeFlags::OPEN_TREE_CLOEXEC | OpenTreeFlags::AT_SYMLINK_NOFOLLOW;
        let node = open_tree(&host_dev, name, flags).map_err(err(format!("cloning /dev/{name}")))?;
        // Read-only: the node stays the host's, whose mode, owner and times the session (the container's root)
        // must not change; reading and writing the device itself does not need a writable mount.
        set_attrs(&node, MOUNT_ATTR_RDONLY | MOUNT_ATTR_NOSUID | MOUNT_ATTR_NOEXEC, name)?;
        let point = rustix::fs::openat(
            &dev,
            name,
            OFlags::CREATE | OFlags::EXCL | OFlags::WRONLY | OFlags::CLOEXEC | OFlags::NOFOLLOW,
            Mode::from_raw_mode(0o666),
        )
        .map_err(err(format!("creating /dev/{name}")))?;
        attach(&node, &point, name)?;
    }
    mkdir_in(&dev, "pts")?;
    let pts = fsopen("devpts", FsOpenFlags::FSOPEN_CLOEXEC).map_err(err("fsopen devpts"))?;
    for (k, v) in [("ptmxmode", "0666"), ("mode", "0620"), ("gid", "5")] {
        fsconfig_set_string(&pts, k, v).map_err(err(format!("devpts option {k}")))?;
    }
    fsconfig_create(&pts).map_err(err("creating devpts"))?;
    let attrs = MountAttrFlags::MOUNT_ATTR_NOSUID | MountAttrFlags::MOUNT_ATTR_NOEXEC;
    let pts = fsmount(&pts, FsMountFlags::FSMOUNT_CLOEXEC, attrs).map_err(err("mounting devpts"))?;
    attach(&pts, &open_mount_point(&dev, "pts").map_err(io_err("opening /dev/pts"))?, "/dev/pts")?;
    symlinkat("pts/ptmx", &dev, "ptmx").map_err(err("symlink /dev/ptmx"))?;
    Ok(())
}

/// One mount of a stopped container, in the container's order, for [`enter_stopped`].
pub enum StoppedMount<'a> {
    /// A directory bind, reproduced.
    Bind(Bind<'a>),
    /// Any other mount (or a bind left out), hidden: its destination gets an empty read-only directory or file.
    Mask(&'a str),
}

/// In fresh namespaces (after `unshare`, in a private copy of the host's mounts): switches this process's root to
/// the overlay, with a stopped container's root filesystem (`target_root`, a [`detached_clone`]) at `target` and
/// its mounts inside it (directory binds reproduced, every other mount masked, in the container's order), a
/// `/dev` of the session's own, and no `/proc` or `/sys` (the container has no processes, and the host's must not
/// show). Nothing of the host stays reachable: the old root is detached.
pub fn enter_stopped(
    overlay: OwnedFd,
    target: &str,
    target_root: OwnedFd,
    mounts: Vec<StoppedMount<'_>>,
) -> Result<(), MountError> {
    let target = target.trim_start_matches('/');
    if target.is_empty() || target.split('/').any(|p| p == ".." || p == "." || p.is_empty()) {
        return Err(MountError {
            what: format!("target path /{target}"),
            source: std::io::ErrorKind::InvalidInput.into(),
        });
    }
    // Private from here on: nothing mounted below propagates back into the host's namespace.
    rustix::mount::mount_change(
        "/",
        rustix::mount::MountPropagationFlags::PRIVATE | rustix::mount::MountPropagationFlags::REC,
    )
    .map_err(err("making / private"))?;
    let host_root = crate::resolve::open_root().map_err(io_err("opening /"))?;
    attach(&overlay, &host_root, "the image on /")?;
    let new_root = open_tree(&overlay, "", OpenTreeFlags::OPEN_TREE_CLOEXEC | OpenTreeFlags::AT_EMPTY_PATH)
        .map_err(err("opening the image's root"))?;
    mkdir_in(&new_root, target)?;
    attach(&target_root, &open_mount_point(&new_root, target).map_err(io_err(format!("opening /{target}")))?, target)?;
    let plain = |d: &str| {
        let d = d.trim_matches('/').to_string();
        (!d.is_empty() && !d.split('/').any(|p| p == ".." || p == "." || p.is_empty())).then_some(d)
    };
    for m in mounts {
        match m {
            StoppedMount::Bind(b) => {
                let Some(dest) = plain(b.destination) else { continue };
                // Only onto a real directory of the container's root, reached without a symlink.
                let Ok(onto) = open_mount_point(&new_root, &format!("{target}/{dest}")) else {
                    continue;
                };
                attach(&b.source, &onto, &dest)?;
            }
            StoppedMount::Mask(d) => {
                let Some(dest) = plain(d) else { continue };
                mask(&new_root, target, &dest)?;
            }
        }
    }
    attach_dev(&new_root)?;
    rustix::process::fchdir(&new_root).map_err(err("entering the image's root"))?;
    rustix::process::pivot_root(".", ".").map_err(err("pivot_root"))?;
    rustix::mount::unmount(".", rustix::mount::UnmountFlags::DETACH).map_err(err("detaching the old root"))?;
    rustix::process::chdir("/").map_err(err("chdir /"))?;
    Ok(())
}

/// Name of the empty file a file mask is cloned from, made in the image's (session-private) root and unlinked
/// once attached.
const MASK_FILE: &str = ".dcos-exec-mask";

/// Covers `target/dest` of `new_root` with an empty read-only directory (a tmpfs) or an empty read-only file.
/// The destination is reached without a symlink (as a bind's is) and skipped when it does not exist, nothing
/// being there to hide; a symlink on the way (runc follows those inside the root) is followed inside the
/// container's root only, so that what the container's mount hid stays hidden.
fn mask(new_root: &OwnedFd, target: &str, dest: &str) -> Result<(), MountError> {
    use rustix::fs::{Mode, OFlags, ResolveFlags};
    let troot = open_mount_point(new_root, target).map_err(io_err(format!("opening /{target}")))?;
    // Without O_NOFOLLOW: a symlink as the last component fails with ELOOP too, and is then followed in the root.
    let flags = OFlags::PATH | OFlags::CLOEXEC;
    let onto = match rustix::fs::openat2(
        &troot,
        dest,
        flags,
        Mode::empty(),
        ResolveFlags::BENEATH | ResolveFlags::NO_SYMLINKS,
    ) {
        Ok(fd) => fd,
        Err(rustix::io::Errno::LOOP | rustix::io::Errno::XDEV) => {
            let how = ResolveFlags::IN_ROOT | ResolveFlags::NO_MAGICLINKS;
            match rustix::fs::openat2(&troot, dest, OFlags::PATH | OFlags::CLOEXEC, Mode::empty(), how) {
                Ok(fd) => fd,
                Err(_) => return Ok(()),
            }
        }
        Err(_) => return Ok(()),
    };
    let st = rustix::fs::fstat(&onto).map_err(err(format!("inspecting /{target}/{dest}")))?;
    let what = format!("the mask on /{target}/{dest}");
    let cover = match rustix::fs::FileType::from_raw_mode(st.st_mode) {
        rustix::fs::FileType::Directory => {
            let fs = fsopen("tmpfs", FsOpenFlags::FSOPEN_CLOEXEC).map_err(err("fsopen tmpfs"))?;
            for (k, v) in [("size", "4k"), ("mode", "0555")] {
                fsconfig_set_string(&fs, k, v).map_err(err(format!("tmpfs option {k}")))?;
            }
            fsconfig_create(&fs).map_err(err("creating the tmpfs"))?;
            let attrs = MountAttrFlags::MOUNT_ATTR_NOSUID
                | MountAttrFlags::MOUNT_ATTR_NODEV
                | MountAttrFlags::MOUNT_ATTR_NOEXEC
                | MountAttrFlags::MOUNT_ATTR_RDONLY;
            fsmount(&fs, FsMountFlags::FSMOUNT_CLOEXEC, attrs).map_err(err(&what))?
        }
        rustix::fs::FileType::Symlink => return Ok(()),
        _ => {
            // A bind of an empty file: made in the image's root (attached, so it can be cloned), unlinked once
            // cloned; the clone keeps it.
            let f = rustix::fs::openat(
                new_root,
                MASK_FILE,
                OFlags::CREATE | OFlags::EXCL | OFlags::WRONLY | OFlags::CLOEXEC | OFlags::NOFOLLOW,
                Mode::from_raw_mode(0o444),
            )
            .map_err(err(format!("creating /{MASK_FILE}")))?;
            drop(f);
            let flags =
                OpenTreeFlags::OPEN_TREE_CLONE | OpenTreeFlags::OPEN_TREE_CLOEXEC | OpenTreeFlags::AT_SYMLINK_NOFOLLOW;
            // The kernel does not attach a mount of an unlinked file: the name goes once the clone is attached.
            let attached = open_tree(new_root, MASK_FILE, flags).map_err(err(&what)).and_then(|clone| {
                let attrs = MOUNT_ATTR_RDONLY | MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV | MOUNT_ATTR_NOEXEC;
                set_attrs(&clone, attrs, &what)?;
                attach(&clone, &onto, &what)
            });
            let unlinked = rustix::fs::unlinkat(new_root, MASK_FILE, rustix::fs::AtFlags::empty())
                .map_err(err(format!("removing /{MASK_FILE}")));
            return attached.and(unlinked);
        }
    };
    attach(&cover, &onto, &what)
}

fn mkdir_in(dir: &OwnedFd, name: &str) -> Result<(), MountError> {
    match rustix::fs::mkdirat(dir, name, rustix::fs::Mode::from_raw_mode(0o755)) {
        Ok(()) | Err(rustix::io::Errno::EXIST) => Ok(()),
        Err(e) => Err(err(format!("mkdir /{name}"))(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MOUNTINFO: &str = "\
22 27 0:21 / /proc rw,relatime - proc proc rw
27 1 254:0 / / rw,relatime shared:1 - ext4 /dev/vda rw
40 27 0:40 / /srv/vol rw - ext4 /dev/vdb rw
41 40 0:41 / /srv/vol/sub rw - tmpfs tmpfs rw
42 40 0:42 / /srv/vol/with\\040space rw - proc proc rw
43 27 0:43 / /srv/volume rw - sysfs sysfs rw
44 40 0:44 / /srv/vol rw - tmpfs tmpfs rw
";

    fn held(id: u64, path: &str, recursive: bool) -> Vec<String> {
        let m = mountinfo(MOUNTINFO);
        clone_holds(&m, id, path, recursive).iter().map(|m| format!("{} {}", m.fstype, m.point)).collect()
    }

    /// A `bind` holds its own mount only; an `rbind` everything at or below its path (not a sibling that merely
    /// shares the prefix, not the mounts it is stacked over), escapes undone.
    #[test]
    fn what_a_clone_holds() {
        assert_eq!(held(40, "/srv/vol", false), ["ext4 /srv/vol"]);
        assert_eq!(
            held(40, "/srv/vol", true),
            ["ext4 /srv/vol", "tmpfs /srv/vol/sub", "proc /srv/vol/with space", "tmpfs /srv/vol"]
        );
        assert_eq!(held(44, "/srv/vol", true), ["tmpfs /srv/vol/sub", "proc /srv/vol/with space", "tmpfs /srv/vol"]);
        assert_eq!(held(27, "/", false), ["ext4 /"]);
        assert_eq!(unescape("a\\040b\\134\\777\\04"), "a b\\\\777\\04");
        assert_eq!(held(27, "/", true).len(), 7, "everything");
        assert_eq!(
            held(27, "/srv", true),
            [
                "ext4 /",
                "ext4 /srv/vol",
                "tmpfs /srv/vol/sub",
                "proc /srv/vol/with space",
                "sysfs /srv/volume",
                "tmpfs /srv/vol"
            ]
        );
    }
}
