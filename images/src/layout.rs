//! An OCI image layout directory held open by descriptor.
//!
//! A layout is named by a path, and the path is what an ACL judges. Reading it by path afterwards would let a
//! symlink swapped in between (or a `..` that meant something else by then) send the pull to another
//! directory. So the directory is opened once, its real path is read back from the open descriptor (that is
//! the path judged), and every later read goes through that descriptor, one component at a time, never
//! following a symlink inside the layout either.

use std::ffi::CString;
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;

/// An open layout directory and the real path it had when it was opened.
#[derive(Clone)]
pub struct LayoutDir {
    path: PathBuf,
    fd: Arc<OwnedFd>,
}

impl std::fmt::Debug for LayoutDir {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "LayoutDir({}, fd {})", self.path.display(), self.fd.as_raw_fd())
    }
}

// Two handles are the same layout when they were opened at the same real path.
impl PartialEq for LayoutDir {
    fn eq(&self, other: &Self) -> bool {
        self.path == other.path
    }
}
impl Eq for LayoutDir {}
impl std::hash::Hash for LayoutDir {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.path.hash(state)
    }
}

fn cstr(name: &[u8]) -> io::Result<CString> {
    CString::new(name).map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path contains a NUL byte"))
}

fn openat(dir: libc::c_int, name: &CString, flags: libc::c_int) -> io::Result<OwnedFd> {
    // SAFETY: `name` is NUL-terminated and outlives the call; the returned descriptor is owned below.
    let fd = unsafe { libc::openat(dir, name.as_ptr(), flags | libc::O_CLOEXEC) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: openat just returned this descriptor and nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

impl LayoutDir {
    /// Opens the directory at `path` (made absolute against the working directory; symlinks and `..` are
    /// followed as the kernel resolves them) and records the real path of what was opened.
    pub fn open(path: &Path) -> io::Result<LayoutDir> {
        let abs = std::path::absolute(path)?;
        let fd = openat(libc::AT_FDCWD, &cstr(abs.as_os_str().as_bytes())?, libc::O_RDONLY | libc::O_DIRECTORY)?;
        let real = std::fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd()))?;
        // A directory removed after the open reads back as "/x (deleted)": not a path anyone can judge.
        if !real.is_absolute() || !Path::new(&real).exists() {
            return Err(io::Error::new(io::ErrorKind::NotFound, format!("{} is gone", real.display())));
        }
        Ok(LayoutDir { path: real, fd: Arc::new(fd) })
    }

    /// The real path of the directory when it was opened.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Opens the regular file at `rel` (plain components only) below the layout without following symlinks.
    pub fn open_file(&self, rel: &[&str]) -> io::Result<File> {
        let (last, dirs) = rel.split_last().ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "empty"))?;
        let mut cur: Option<OwnedFd> = None;
        for c in dirs.iter().chain(std::iter::once(last)) {
            if c.is_empty() || *c == "." || *c == ".." || c.contains('/') {
                return Err(io::Error::new(io::ErrorKind::InvalidInput, format!("bad component {c:?}")));
            }
        }
        for d in dirs {
            let at = cur.as_ref().map_or(self.fd.as_raw_fd(), |f| f.as_raw_fd());
            cur = Some(openat(at, &cstr(d.as_bytes())?, libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW)?);
        }
        let at = cur.as_ref().map_or(self.fd.as_raw_fd(), |f| f.as_raw_fd());
        let fd = openat(at, &cstr(last.as_bytes())?, libc::O_RDONLY | libc::O_NOFOLLOW | libc::O_NONBLOCK)?;
        let file = File::from(fd);
        if !file.metadata()?.is_file() {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, format!("{last} is not a regular file")));
        }
        Ok(file)
    }
}

/// `path` made absolute with `.`, empty and `..` components removed by text alone (a `..` drops the component
/// before it, and stays at `/`). For judging a path that cannot be opened: what it names can change, but no
/// spelling of it can reach a pattern the normal form does not.
pub fn lexically_normal(path: &Path) -> PathBuf {
    let abs = std::path::absolute(path).unwrap_or_else(|_| Path::new("/").join(path));
    let mut out = PathBuf::from("/");
    for c in abs.components() {
        match c {
            Component::Normal(n) => out.push(n),
            Component::ParentDir => {
                out.pop();
            }
            Component::RootDir | Component::CurDir | Component::Prefix(_) => {}
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    #[test]
    fn the_real_path_is_recorded_and_reads_stay_in_the_opened_directory() {
        let tmp = tempfile::tempdir().unwrap();
        let base = std::fs::canonicalize(tmp.path()).unwrap();
        for d in ["corpus/good", "extra/x"] {
            std::fs::create_dir_all(base.join(d)).unwrap();
            std::fs::write(base.join(d).join("index.json"), d).unwrap();
        }
        std::os::unix::fs::symlink(base.join("corpus/good"), base.join("link")).unwrap();
        let spellings = [
            format!("{}//extra/x", base.display()),
            format!("{}/./extra/x", base.display()),
            format!("{}/corpus/../extra/x", base.display()),
            format!("{}/corpus/good/../../extra/x", base.display()),
        ];
        for s in &spellings {
            assert_eq!(LayoutDir::open(Path::new(s)).unwrap().path(), base.join("extra/x"), "{s}");
            assert_eq!(lexically_normal(Path::new(s)), base.join("extra/x"), "{s}");
        }
        let l = LayoutDir::open(&base.join("link")).unwrap();
        assert_eq!(l.path(), base.join("corpus/good"));
        // Swapping the symlink afterwards changes nothing for the open handle.
        std::fs::remove_file(base.join("link")).unwrap();
        std::os::unix::fs::symlink(base.join("extra/x"), base.join("link")).unwrap();
        let mut s = String::new();
        l.open_file(&["index.json"]).unwrap().read_to_string(&mut s).unwrap();
        assert_eq!(s, "corpus/good");
    }

    #[test]
    fn symlinks_inside_the_layout_are_not_followed() {
        let tmp = tempfile::tempdir().unwrap();
        let base = tmp.path();
        std::fs::create_dir_all(base.join("lay/blobs")).unwrap();
        std::fs::create_dir_all(base.join("other/sha256")).unwrap();
        std::fs::write(base.join("other/sha256/abc"), "secret").unwrap();
        std::fs::write(base.join("other/index.json"), "secret").unwrap();
        std::os::unix::fs::symlink(base.join("other/sha256"), base.join("lay/blobs/sha256")).unwrap();
        std::os::unix::fs::symlink(base.join("other/index.json"), base.join("lay/index.json")).unwrap();
        let l = LayoutDir::open(&base.join("lay")).unwrap();
        assert!(l.open_file(&["blobs", "sha256", "abc"]).is_err());
        assert!(l.open_file(&["index.json"]).is_err());
        assert!(l.open_file(&["..", "other", "index.json"]).is_err());
        assert!(l.open_file(&["blobs"]).is_err(), "a directory is not a blob");
    }

    #[test]
    fn lexical_normal_form() {
        assert_eq!(lexically_normal(Path::new("/srv//extra/./x/")), Path::new("/srv/extra/x"));
        assert_eq!(lexically_normal(Path::new("/../../srv")), Path::new("/srv"));
        assert_eq!(lexically_normal(Path::new("/srv/corpus/good-busybox/../../extra/x")), Path::new("/srv/extra/x"));
    }
}
