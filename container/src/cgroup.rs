//! Joining the cgroups of the container's init (v1, v2 and hybrid hosts).

use crate::error::StartError;
use std::os::fd::OwnedFd;

/// Opens, on the host, the `cgroup.procs` file of every hierarchy the container's init is in. The joiner
/// writes "0" to each before it touches anything of the container.
pub fn open_procs(pid: i32) -> Result<Vec<OwnedFd>, StartError> {
    let cg = std::fs::read_to_string(format!("/proc/{pid}/cgroup"))
        .map_err(|e| StartError::ContainerGone(format!("reading the container's cgroups: {e}")))?;
    let mounts =
        std::fs::read_to_string("/proc/self/mountinfo").map_err(|e| StartError::internal("reading mountinfo", e))?;
    let mut out = Vec::new();
    for line in cg.lines() {
        let mut parts = line.splitn(3, ':');
        let (Some(_), Some(ctrls), Some(path)) = (parts.next(), parts.next(), parts.next()) else {
            continue;
        };
        let Some(dir) = dir(&mounts, ctrls, path) else {
            continue;
        };
        let procs = format!("{dir}/cgroup.procs");
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(&procs)
            .map_err(|e| StartError::setup(format_args!("opening {procs}"), e))?;
        out.push(OwnedFd::from(f));
    }
    Ok(out)
}

/// Whether the container's init is in a frozen cgroup (`runc pause`, `docker pause`, containerd's pause: all
/// use the freezer). A process that joins it is frozen at once, so a session there would hang and then run its
/// command at some later unpause. cgroup v2's `cgroup.events` and v1's `freezer.state` both report the
/// effective state, an ancestor's freeze included.
pub fn frozen(pid: i32) -> bool {
    let (Ok(cg), Ok(mounts)) =
        (std::fs::read_to_string(format!("/proc/{pid}/cgroup")), std::fs::read_to_string("/proc/self/mountinfo"))
    else {
        return false;
    };
    cg.lines().any(|line| {
        let mut parts = line.splitn(3, ':');
        let (Some(_), Some(ctrls), Some(path)) = (parts.next(), parts.next(), parts.next()) else {
            return false;
        };
        if !ctrls.is_empty() && !ctrls.split(',').any(|c| c == "freezer") {
            return false;
        }
        let Some(dir) = dir(&mounts, ctrls, path) else { return false };
        if ctrls.is_empty() {
            let events = std::fs::read_to_string(format!("{dir}/cgroup.events")).unwrap_or_default();
            events_frozen(&events)
        } else {
            let state = std::fs::read_to_string(format!("{dir}/freezer.state")).unwrap_or_default();
            matches!(state.trim(), "FROZEN" | "FREEZING")
        }
    })
}

/// `frozen 1` in a cgroup v2 `cgroup.events` text.
fn events_frozen(events: &str) -> bool {
    events.lines().any(|l| l.split_whitespace().eq(["frozen", "1"]))
}

/// The directory of cgroup `path` in the hierarchy with controllers `ctrls` ("" means cgroup v2).
pub fn dir(mountinfo: &str, ctrls: &str, path: &str) -> Option<String> {
    // A path with `..` would leave the hierarchy; the kernel never writes one.
    if path.split('/').any(|c| c == "..") {
        return None;
    }
    for m in mountinfo.lines() {
        let (left, right) = m.split_once(" - ")?;
        let l: Vec<&str> = left.split(' ').collect();
        let r: Vec<&str> = right.split(' ').collect();
        let (root, point) = (*l.get(3)?, *l.get(4)?);
        let fstype = *r.first()?;
        let opts = r.get(2).copied().unwrap_or("");
        let hit = if ctrls.is_empty() {
            fstype == "cgroup2"
        } else {
            fstype == "cgroup" && ctrls.split(',').all(|c| opts.split(',').any(|o| o == c))
        };
        if hit {
            // Component-wise: mount root /sub is a prefix of /sub/c1, not of /subother.
            let rel = match path.strip_prefix(root) {
                Some(r) if root == "/" || r.is_empty() || r.starts_with('/') => r,
                _ => path,
            };
            let rel = rel.trim_start_matches('/');
            return Some(if rel.is_empty() { point.to_string() } else { format!("{point}/{rel}") });
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dirs_for_v1_and_v2_mounts() {
        let mi = "30 25 0:26 / /sys/fs/cgroup/unified rw - cgroup2 cgroup2 rw\n\
                  31 25 0:27 / /sys/fs/cgroup/cpu,cpuacct rw - cgroup cgroup rw,cpu,cpuacct\n\
                  32 25 0:28 /sub /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory\n";
        assert_eq!(dir(mi, "", "/c1").as_deref(), Some("/sys/fs/cgroup/unified/c1"));
        assert_eq!(dir(mi, "cpu,cpuacct", "/c1").as_deref(), Some("/sys/fs/cgroup/cpu,cpuacct/c1"));
        assert_eq!(dir(mi, "memory", "/sub/c1").as_deref(), Some("/sys/fs/cgroup/memory/c1"));
        assert_eq!(dir(mi, "pids", "/c1"), None);
        assert_eq!(dir(mi, "memory", "/subother/c1").as_deref(), Some("/sys/fs/cgroup/memory/subother/c1"));
        assert_eq!(dir(mi, "", "/c1/../../etc"), None);
    }

    #[test]
    fn frozen_from_cgroup_events() {
        assert!(events_frozen("populated 1\nfrozen 1\n"));
        assert!(!events_frozen("populated 1\nfrozen 0\n"));
        assert!(!events_frozen("populated 1\n"));
    }
}
