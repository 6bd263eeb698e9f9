//! A sealed in-memory copy of the agent binary, executed as the exec helper (cf. CVE-2019-5736).
//!
//! Even a process that could reach `/proc/PID/exe` of a helper finds an immutable anonymous file, never the
//! agent's binary on disk.

use nix::fcntl::{FcntlArg, SealFlag};
use nix::sys::memfd::{memfd_create, MFdFlags};
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};

/// The sealed copy; keep it alive as long as sessions may start.
pub struct SealedExe {
    fd: OwnedFd,
}

impl SealedExe {
    /// Copies `/proc/self/exe` into a new sealed memfd.
    pub fn new() -> io::Result<SealedExe> {
        // MFD_EXEC (6.3+) marks the memfd executable where vm.memfd_noexec would otherwise forbid it.
        const MFD_EXEC: u32 = 0x10;
        let base = MFdFlags::MFD_CLOEXEC | MFdFlags::MFD_ALLOW_SEALING;
        let fd = memfd_create("dcos-exec-helper", base | MFdFlags::from_bits_retain(MFD_EXEC))
            .or_else(|_| memfd_create("dcos-exec-helper", base))
            .map_err(io::Error::from)?;
        let mut dst = File::from(fd);
        let mut src = File::open("/proc/self/exe")?;
        io::copy(&mut src, &mut dst)?;
        let seals = SealFlag::F_SEAL_SEAL | SealFlag::F_SEAL_SHRINK | SealFlag::F_SEAL_GROW | SealFlag::F_SEAL_WRITE;
        nix::fcntl::fcntl(&dst, FcntlArg::F_ADD_SEALS(seals)).map_err(io::Error::from)?;
        // Park it on a high fd: children remap their low fds before exec'ing this very path.
        let high = nix::fcntl::fcntl(&dst, FcntlArg::F_DUPFD_CLOEXEC(1000)).map_err(io::Error::from)?;
        // SAFETY: F_DUPFD_CLOEXEC returned a new fd that nothing else owns.
        let fd = unsafe { std::os::fd::FromRawFd::from_raw_fd(high) };
        Ok(SealedExe { fd })
    }

    /// Path to execute it by. Valid in this process and in children between fork and exec.
    pub fn path(&self) -> String {
        format!("/proc/self/fd/{}", self.fd.as_raw_fd())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copy_is_sealed_against_writes() {
        let exe = SealedExe::new().unwrap();
        let r = std::fs::OpenOptions::new().write(true).open(exe.path());
        let err = match r {
            Ok(mut f) => io::Write::write_all(&mut f, b"x").unwrap_err(),
            Err(e) => e,
        };
        assert_eq!(err.raw_os_error(), Some(libc::EPERM), "{err}");
        assert_eq!(std::fs::metadata(exe.path()).unwrap().len(), std::fs::metadata("/proc/self/exe").unwrap().len());
    }
}
