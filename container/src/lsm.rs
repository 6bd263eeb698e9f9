//! AppArmor profiles and SELinux labels for the exec'd process, as runc applies them: written to the
//! process's own `attr/exec` file just before `execve`, so they take effect with the new program.
//!
//! Only when the host has the LSM enabled (runc does the same); neither is enabled on the machines the test
//! suite runs on, so this path is exercised there only up to that check.

use std::ffi::CString;

/// What to write, and where, prepared before fork so the child only makes syscalls.
#[derive(Debug)]
pub struct ExecLabel {
    /// Path inside the container's `/proc` of the calling thread's attr file.
    pub path: CString,
    /// The label to write there.
    pub value: Vec<u8>,
}

/// `PROC_SUPER_MAGIC`: the attr file must be on a real procfs, not something the container mounted there.
pub const PROC_SUPER_MAGIC: i64 = 0x9fa0;

fn apparmor_enabled() -> bool {
    std::fs::read_to_string("/sys/module/apparmor/parameters/enabled").is_ok_and(|s| s.trim() == "Y")
}

fn selinux_enabled() -> bool {
    std::fs::metadata("/sys/fs/selinux/enforce").is_ok()
}

/// The labels to apply for the container's profile and label, given which LSMs the host has.
pub fn plan(apparmor_profile: Option<&str>, selinux_label: Option<&str>) -> Vec<ExecLabel> {
    let mut out = Vec::new();
    if let Some(p) = apparmor_profile.filter(|_| apparmor_enabled()) {
        if let Ok(path) = CString::new("/proc/thread-self/attr/apparmor/exec") {
            out.push(ExecLabel { path, value: format!("exec {p}").into_bytes() });
        }
    }
    if let Some(l) = selinux_label.filter(|_| selinux_enabled()) {
        if let Ok(path) = CString::new("/proc/thread-self/attr/exec") {
            out.push(ExecLabel { path, value: l.as_bytes().to_vec() });
        }
    }
    out
}

/// Writes one label. Async-signal-safe: open, fstatfs, write, close. Returns errno on failure.
pub fn apply(l: &ExecLabel) -> Result<(), i32> {
    // SAFETY: raw syscalls on a NUL-terminated path and a buffer prepared before fork.
    unsafe {
        let fd = libc::open(l.path.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC | libc::O_NOFOLLOW);
        if fd < 0 {
            return Err(*libc::__errno_location());
        }
        let mut st: libc::statfs = std::mem::zeroed();
        if libc::fstatfs(fd, &mut st) != 0 || st.f_type != PROC_SUPER_MAGIC {
            libc::close(fd);
            return Err(libc::EPERM);
        }
        let n = libc::write(fd, l.value.as_ptr().cast(), l.value.len());
        let errno = *libc::__errno_location();
        libc::close(fd);
        if n < 0 {
            return Err(errno);
        }
    }
    Ok(())
}
