//! Opening the container's files as the container would: every path resolved inside its root.
//!
//! `openat2(RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS)`: `..` and absolute symlinks stop at the container's
//! root, and `/proc/PID/{fd,root,cwd,exe}` links are refused, so a symlink the container planted cannot lead
//! the (privileged) joiner anywhere else. The root itself is the joiner's, after it entered the container.

use rustix::fs::{Mode, OFlags, ResolveFlags};
use std::io::Read;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

/// Largest container file the helper reads (passwd, group).
pub const MAX_READ: u64 = 4 << 20;

fn resolve_flags() -> ResolveFlags {
    ResolveFlags::IN_ROOT | ResolveFlags::NO_MAGICLINKS
}

/// Opens the current root directory, to resolve container paths against.
pub fn open_root() -> std::io::Result<OwnedFd> {
    Ok(rustix::fs::open("/", OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC, Mode::empty())?)
}

/// Opens `path` (absolute or relative, read as if `root` were `/`) with `flags` (close-on-exec added).
pub fn open(root: BorrowedFd<'_>, path: &str, flags: OFlags) -> std::io::Result<OwnedFd> {
    let rel = path.trim_start_matches('/');
    let rel = if rel.is_empty() { "." } else { rel };
    // openat2 refuses O_PATH with flags it would ignore.
    let extra = if flags.contains(OFlags::PATH) { OFlags::CLOEXEC } else { OFlags::CLOEXEC | OFlags::NOCTTY };
    Ok(rustix::fs::openat2(root, rel, flags | extra, Mode::empty(), resolve_flags())?)
}

/// Reads a small text file of the container. Only a regular file, opened non-blocking (a FIFO would hang a
/// plain read), and at most [`MAX_READ`] bytes of it; anything else reads as empty.
pub fn read_small(root: BorrowedFd<'_>, path: &str) -> String {
    let Ok(fd) = open(root, path, OFlags::RDONLY | OFlags::NONBLOCK) else {
        return String::new();
    };
    let f = std::fs::File::from(fd);
    if !f.metadata().is_ok_and(|m| m.is_file()) {
        return String::new();
    }
    let mut buf = Vec::new();
    if f.take(MAX_READ).read_to_end(&mut buf).is_err() {
        return String::new();
    }
    String::from_utf8_lossy(&buf).into_owned()
}

/// What a `PATH` search found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Found {
    /// An executable regular file.
    Executable(String),
    /// Something by that name that cannot be executed; exec'ing it gives the shell's 126.
    NotExecutable(String),
}

/// Looks `name` up in `path_var` inside `root`, the way a shell does.
pub fn lookup_path(root: BorrowedFd<'_>, name: &str, path_var: &str) -> Option<Found> {
    use std::os::unix::fs::PermissionsExt;
    let mut fallback = None;
    for dir in path_var.split(':') {
        let dir = if dir.is_empty() { "." } else { dir };
        let cand = format!("{}/{}", dir.trim_end_matches('/'), name);
        let Ok(fd) = open(root, &cand, OFlags::PATH) else {
            continue;
        };
        let Ok(meta) = std::fs::File::from(fd).metadata() else {
            continue;
        };
        if meta.is_file() && meta.permissions().mode() & 0o111 != 0 {
            return Some(Found::Executable(cand));
        }
        fallback.get_or_insert(Found::NotExecutable(cand));
    }
    fallback
}

/// Opens a directory for mounting onto: no symlink at all on the way, a directory at the end.
pub fn open_mount_point(dir: impl AsFd, path: &str) -> std::io::Result<OwnedFd> {
    let flags = OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC | OFlags::NOFOLLOW;
    Ok(rustix::fs::openat2(dir, path, flags, Mode::empty(), ResolveFlags::BENEATH | ResolveFlags::NO_SYMLINKS)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;

    fn tree() -> (tempfile::TempDir, OwnedFd) {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(d.path().join("etc")).unwrap();
        std::fs::create_dir_all(d.path().join("bin")).unwrap();
        std::fs::write(d.path().join("etc/passwd"), "root:x:0:0::/root:/bin/sh\n").unwrap();
        let root = rustix::fs::open(d.path(), OFlags::PATH | OFlags::DIRECTORY, Mode::empty()).unwrap();
        (d, root)
    }

    #[test]
    fn symlinks_out_of_the_root_stay_inside_it() {
        let (d, root) = tree();
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("secret"), "hostonly:x:4242:4343::/:/bin/sh\n").unwrap();
        let secret = outside.path().join("secret");
        // Absolute, relative-with-dotdot, and magic links all fail to leave the root.
        std::os::unix::fs::symlink(&secret, d.path().join("etc/abs")).unwrap();
        let dotdots = format!("../../../../../../..{}", secret.display());
        std::os::unix::fs::symlink(&dotdots, d.path().join("etc/rel")).unwrap();
        std::os::unix::fs::symlink("/proc/self/root/etc/hostname", d.path().join("etc/magic")).unwrap();
        for p in ["/etc/abs", "etc/rel", "/etc/magic", "/../../../etc/hostname"] {
            assert_eq!(read_small(root.as_fd(), p), "", "{p}");
        }
        assert_eq!(read_small(root.as_fd(), "/etc/passwd"), "root:x:0:0::/root:/bin/sh\n");
        // A symlink inside the root is followed inside it.
        std::os::unix::fs::symlink("/etc/passwd", d.path().join("etc/inner")).unwrap();
        assert_eq!(read_small(root.as_fd(), "/etc/inner"), "root:x:0:0::/root:/bin/sh\n");
    }

    #[test]
    fn fifos_and_directories_read_as_empty() {
        let (d, root) = tree();
        nix::unistd::mkfifo(&d.path().join("etc/group"), nix::sys::stat::Mode::from_bits_truncate(0o644)).unwrap();
        assert_eq!(read_small(root.as_fd(), "/etc/group"), "");
        assert_eq!(read_small(root.as_fd(), "/etc"), "");
    }

    #[test]
    fn path_lookup_prefers_executables_and_stays_inside() {
        use std::os::unix::fs::PermissionsExt;
        let (d, root) = tree();
        std::fs::create_dir_all(d.path().join("sbin")).unwrap();
        std::fs::write(d.path().join("bin/tool"), "").unwrap();
        std::fs::write(d.path().join("sbin/tool"), "").unwrap();
        std::fs::set_permissions(d.path().join("sbin/tool"), std::fs::Permissions::from_mode(0o755)).unwrap();
        assert_eq!(lookup_path(root.as_fd(), "tool", "/bin:/sbin"), Some(Found::Executable("/sbin/tool".into())));
        assert_eq!(lookup_path(root.as_fd(), "tool", "/bin"), Some(Found::NotExecutable("/bin/tool".into())));
        assert_eq!(lookup_path(root.as_fd(), "sh", "/proc/self/root/bin:/nope"), None);
    }

    #[test]
    fn mount_points_must_be_plain_directories() {
        let (d, root) = tree();
        std::os::unix::fs::symlink("/etc", d.path().join("link")).unwrap();
        assert!(open_mount_point(root.as_fd(), "etc").is_ok());
        assert!(open_mount_point(root.as_fd(), "link").is_err());
        assert!(open_mount_point(root.as_fd(), "etc/passwd").is_err());
        assert!(open_mount_point(root.as_fd(), "../etc").is_err());
    }
}
