//! The debug image's root: an overlay built detached on the host, attached in a private copy of the target's
//! mount namespace, with the target's root at `/target`.
//!
//! Layout inside the session: `/` is an overlay of the image's cached layer dirs (read-only lowers, top first)
//! with a writable upper on a tmpfs of its own; `/target` is a recursive clone of the target's root; `/proc`,
//! `/dev` and `/sys` are the target's. Nothing is mounted in the target's namespace, and every mount goes away with
//! the session's last process.

use std::ffi::CString;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

const FSOPEN_CLOEXEC: libc::c_uint = 1;
const FSCONFIG_SET_STRING: libc::c_uint = 1;
const FSCONFIG_CMD_CREATE: libc::c_uint = 6;
const FSMOUNT_CLOEXEC: libc::c_uint = 1;
const MOVE_MOUNT_F_EMPTY_PATH: libc::c_uint = 4;
const OPEN_TREE_CLONE: libc::c_uint = 1;

fn c(s: &str) -> Result<CString, String> {
    CString::new(s).map_err(|_| format!("{s:?} contains a NUL byte"))
}

fn check(r: libc::c_long, what: &str) -> Result<RawFd, String> {
    if r < 0 {
        Err(format!("{what}: {}", std::io::Error::last_os_error()))
    } else {
        Ok(r as RawFd)
    }
}

/// A new, detached mount of filesystem `fstype` configured with `opts`.
fn detached_mount(fstype: &str, opts: &[(&str, &str)]) -> Result<OwnedFd, String> {
    let ty = c(fstype)?;
    // SAFETY: fsopen takes a NUL-terminated name and flags; returns a new fd or -1.
    let fs = check(unsafe { libc::syscall(libc::SYS_fsopen, ty.as_ptr(), FSOPEN_CLOEXEC) }, "fsopen")?;
    // SAFETY: fs is the fd fsopen just returned; nothing else owns it.
    let fs = unsafe { OwnedFd::from_raw_fd(fs) };
    for (k, v) in opts {
        let (k, v) = (c(k)?, c(v)?);
        // SAFETY: valid fs context fd and NUL-terminated key and value.
        let r = unsafe {
            libc::syscall(libc::SYS_fsconfig, fs.as_raw_fd(), FSCONFIG_SET_STRING, k.as_ptr(), v.as_ptr(), 0)
        };
        check(r, &format!("{fstype} option {}", k.to_string_lossy()))?;
    }
    // SAFETY: valid fs context fd; CMD_CREATE takes no key or value.
    let r = unsafe {
        libc::syscall(
            libc::SYS_fsconfig,
            fs.as_raw_fd(),
            FSCONFIG_CMD_CREATE,
            std::ptr::null::<u8>(),
            std::ptr::null::<u8>(),
            0,
        )
    };
    check(r, &format!("creating the {fstype}"))?;
    // SAFETY: valid, created fs context fd.
    let m = check(unsafe { libc::syscall(libc::SYS_fsmount, fs.as_raw_fd(), FSMOUNT_CLOEXEC, 0) }, "fsmount")?;
    // SAFETY: fsmount returned a new fd that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(m) })
}

/// Builds the overlay of `layers` (host paths, top layer first) with a per-session tmpfs upper. Runs on the host
/// side, before the helper joins the target's mount namespace, because the layer paths only exist there.
pub fn build_overlay(layers: &[String]) -> Result<OwnedFd, String> {
    if layers.is_empty() {
        return Err("the image has no layers".into());
    }
    let scratch = detached_mount("tmpfs", &[("mode", "0755"), ("size", "1g")])?;
    for d in ["upper", "work"] {
        let name = c(d)?;
        // SAFETY: valid dir fd (the tmpfs root) and NUL-terminated name.
        check(unsafe { libc::mkdirat(scratch.as_raw_fd(), name.as_ptr(), 0o755) } as libc::c_long, "mkdir on tmpfs")?;
    }
    // The detached tmpfs is reachable by path only through our own fd.
    let base = format!("/proc/self/fd/{}", scratch.as_raw_fd());
    // Layers by fd, like the upper: the session's /proc/mounts then shows no host path.
    let layer_fds = layers
        .iter()
        .map(|l| std::fs::File::open(l).map(OwnedFd::from).map_err(|e| format!("opening layer {l}: {e}")))
        .collect::<Result<Vec<_>, _>>()?;
    let lower = layer_fds.iter().map(|f| format!("/proc/self/fd/{}", f.as_raw_fd())).collect::<Vec<_>>().join(":");
    let upper = format!("{base}/upper");
    let work = format!("{base}/work");
    let ovl = detached_mount("overlay", &[("lowerdir", &lower), ("upperdir", &upper), ("workdir", &work)])?;
    // The overlay holds its own references.
    drop(scratch);
    drop(layer_fds);
    Ok(ovl)
}

fn open_tree(path: &str, recursive: bool) -> Result<OwnedFd, String> {
    let p = c(path)?;
    let flags = OPEN_TREE_CLONE
        | libc::O_CLOEXEC as libc::c_uint
        | if recursive { libc::AT_RECURSIVE as libc::c_uint } else { 0 };
    // SAFETY: NUL-terminated path relative to the cwd; returns a new fd or -1.
    let fd = check(
        unsafe { libc::syscall(libc::SYS_open_tree, libc::AT_FDCWD, p.as_ptr(), flags) },
        &format!("cloning {path}"),
    )?;
    // SAFETY: open_tree returned a new fd that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn attach(mnt: &OwnedFd, to: &str) -> Result<(), String> {
    let (empty, dst) = (c("")?, c(to)?);
    // SAFETY: a mount fd with an empty path (F_EMPTY_PATH) moved onto a NUL-terminated path relative to the cwd.
    let r = unsafe {
        libc::syscall(
            libc::SYS_move_mount,
            mnt.as_raw_fd(),
            empty.as_ptr(),
            libc::AT_FDCWD,
            dst.as_ptr(),
            MOVE_MOUNT_F_EMPTY_PATH,
        )
    };
    check(r, &format!("attaching {to}")).map(|_| ())
}

fn mkdir(path: &str) -> Result<(), String> {
    let p = c(path)?;
    // SAFETY: NUL-terminated path relative to the cwd.
    if unsafe { libc::mkdir(p.as_ptr(), 0o755) } != 0 {
        let e = std::io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EEXIST) {
            return Err(format!("mkdir {path}: {e}"));
        }
    }
    Ok(())
}

/// Inside the target's mount namespace (after setns): makes a private copy of it and switches this process's
/// root to the overlay, with the target's root at `target` (e.g. "target" for `/target`).
pub fn enter(overlay: OwnedFd, target: &str) -> Result<(), String> {
    let target = target.trim_start_matches('/');
    if target.is_empty() || target.split('/').any(|p| p == ".." || p.is_empty()) {
        return Err(format!("bad target mount path /{target}"));
    }
    // SAFETY: unshare and mount with constant arguments; only this single-threaded process is affected.
    unsafe {
        if libc::unshare(libc::CLONE_NEWNS) != 0 {
            return Err(format!("unshare(CLONE_NEWNS): {}", std::io::Error::last_os_error()));
        }
        // Private from here on: nothing mounted below propagates back into the target's namespace.
        let root = c("/")?;
        if libc::mount(
            std::ptr::null(),
            root.as_ptr(),
            std::ptr::null(),
            libc::MS_REC | libc::MS_PRIVATE,
            std::ptr::null(),
        ) != 0
        {
            return Err(format!("making / private: {}", std::io::Error::last_os_error()));
        }
    }
    let target_root = open_tree("/", true)?;
    attach(&overlay, "/")?;
    // SAFETY: fchdir to the overlay's root, which is now attached on top of the target's root.
    if unsafe { libc::fchdir(overlay.as_raw_fd()) } != 0 {
        return Err(format!("entering the overlay: {}", std::io::Error::last_os_error()));
    }
    mkdir(target)?;
    attach(&target_root, target)?;
    for sub in ["proc", "dev", "sys"] {
        let from = format!("{target}/{sub}");
        if std::fs::symlink_metadata(&from).is_ok_and(|m| m.is_dir()) {
            mkdir(sub)?;
            attach(&open_tree(&from, true)?, sub)?;
        }
    }
    let dot = c(".")?;
    // SAFETY: pivot_root(".", ".") stacks the old root on the new one; the detach below then drops it (runc's
    // trick for when there is no directory to put the old root in).
    unsafe {
        if libc::syscall(libc::SYS_pivot_root, dot.as_ptr(), dot.as_ptr()) != 0 {
            return Err(format!("pivot_root: {}", std::io::Error::last_os_error()));
        }
        if libc::umount2(dot.as_ptr(), libc::MNT_DETACH) != 0 {
            return Err(format!("detaching the old root: {}", std::io::Error::last_os_error()));
        }
        if libc::chdir(c("/")?.as_ptr()) != 0 {
            return Err(format!("chdir /: {}", std::io::Error::last_os_error()));
        }
    }
    Ok(())
}
