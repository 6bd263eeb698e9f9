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

/// A detached, recursive clone of the tree at `dir`, made in the host's mount namespace, where `dir` is (a clone
/// can only be made of mounts in the caller's own namespace). Always `nosuid,nodev`: the sandbox has no device
/// cgroup, so a device node the session makes there (with the container's `CAP_MKNOD`) must not open; read-only
/// unless `writable`.
pub fn detached_clone(dir: &OwnedFd, writable: bool, what: &str) -> Result<OwnedFd, MountError> {
    let flags = OpenTreeFlags::OPEN_TREE_CLONE
        | OpenTreeFlags::OPEN_TREE_CLOEXEC
        | OpenTreeFlags::AT_RECURSIVE
        | OpenTreeFlags::AT_EMPTY_PATH;
    let tree = open_tree(dir, "", flags).map_err(err(format!("cloning {what}")))?;
    let mut attrs = MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV;
    if !writable {
        attrs |= MOUNT_ATTR_RDONLY;
    }
    set_attrs(&tree, attrs, what)?;
    Ok(tree)
}

const MOUNT_ATTR_RDONLY: u64 = 0x1;
const MOUNT_ATTR_NOSUID: u64 = 0x2;
const MOUNT_ATTR_NODEV: u64 = 0x4;

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

/// Sets mount attributes on a detached tree, recursively.
fn set_attrs(tree: &OwnedFd, attrs: u64, what: &str) -> Result<(), MountError> {
    let attr = MountAttr { attr_set: attrs, attr_clr: 0, propagation: 0, userns_fd: 0 };
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

/// A `/dev` of the session's own: the host's null, zero, full, random, urandom and tty bound onto a `nodev`
/// tmpfs (so that a node the session makes there with `CAP_MKNOD` does not open: the sandbox has no device
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
        set_attrs(&node, MOUNT_ATTR_NOSUID, name)?;
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

/// In fresh namespaces (after `unshare`, in a private copy of the host's mounts): switches this process's root to
/// the overlay, with a stopped container's root filesystem (`target_root`, a [`detached_clone`]) at `target` and
/// its directory bind mounts inside it, a `/dev` of the session's own, and no `/proc` or `/sys` (the container
/// has no processes, and the host's must not show). Nothing of the host stays reachable: the old root is
/// detached.
pub fn enter_stopped(
    overlay: OwnedFd,
    target: &str,
    target_root: OwnedFd,
    binds: Vec<Bind<'_>>,
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
    for b in binds {
        let dest = b.destination.trim_matches('/');
        if dest.is_empty() || dest.split('/').any(|p| p == ".." || p == "." || p.is_empty()) {
            continue;
        }
        // Only onto a real directory of the container's root, reached without a symlink.
        let Ok(onto) = open_mount_point(&new_root, &format!("{target}/{dest}")) else {
            continue;
        };
        attach(&b.source, &onto, dest)?;
    }
    attach_dev(&new_root)?;
    rustix::process::fchdir(&new_root).map_err(err("entering the image's root"))?;
    rustix::process::pivot_root(".", ".").map_err(err("pivot_root"))?;
    rustix::mount::unmount(".", rustix::mount::UnmountFlags::DETACH).map_err(err("detaching the old root"))?;
    rustix::process::chdir("/").map_err(err("chdir /"))?;
    Ok(())
}

fn mkdir_in(dir: &OwnedFd, name: &str) -> Result<(), MountError> {
    match rustix::fs::mkdirat(dir, name, rustix::fs::Mode::from_raw_mode(0o755)) {
        Ok(()) | Err(rustix::io::Errno::EXIST) => Ok(()),
        Err(e) => Err(err(format!("mkdir /{name}"))(e)),
    }
}
