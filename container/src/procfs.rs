//! Reading `/proc/PID/stat` and `/proc/PID/status`: written once, used by runtime discovery and the helper.

use std::io::Read;
use std::os::fd::BorrowedFd;

/// The fields of `/proc/PID/stat` we use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stat {
    /// `R`, `S`, `Z`, ...
    pub state: char,
    /// The parent's pid.
    pub ppid: i32,
    /// The process group.
    pub pgrp: i32,
    /// The session id.
    pub session: i32,
    /// Clock ticks after boot.
    pub start_time: u64,
}

impl Stat {
    /// Parses the text of a stat file. `comm` may hold spaces and parentheses: fields start after the last `)`.
    pub fn parse(text: &str) -> Option<Stat> {
        let rest = text.get(text.rfind(')')? + 2..)?;
        let f: Vec<&str> = rest.split_whitespace().collect();
        Some(Stat {
            state: f.first()?.chars().next()?,
            ppid: f.get(1)?.parse().ok()?,
            pgrp: f.get(2)?.parse().ok()?,
            session: f.get(3)?.parse().ok()?,
            start_time: f.get(19)?.parse().ok()?,
        })
    }

    /// Gone in all but name: a zombie or a dead task.
    pub fn is_dead(&self) -> bool {
        matches!(self.state, 'Z' | 'X' | 'x')
    }
}

/// `/proc/PID/stat` of a process, read through the host's `/proc`.
pub fn stat(pid: i32) -> Option<Stat> {
    Stat::parse(&std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
}

/// `stat` relative to an open `/proc` directory.
pub fn stat_at(proc_dir: BorrowedFd<'_>, pid: i32) -> Option<Stat> {
    let flags = nix::fcntl::OFlag::O_RDONLY | nix::fcntl::OFlag::O_CLOEXEC;
    let fd = nix::fcntl::openat(proc_dir, format!("{pid}/stat").as_str(), flags, nix::sys::stat::Mode::empty()).ok()?;
    let mut text = String::new();
    std::fs::File::from(fd).read_to_string(&mut text).ok()?;
    Stat::parse(&text)
}

/// Start time of a live (not zombie) process; `None` once it is gone.
pub fn start_time(pid: i32) -> Option<u64> {
    stat(pid).filter(|s| !s.is_dead()).map(|s| s.start_time)
}

/// The innermost pid of `pid` (its pid in its own pid namespace), from the `NSpid` line of a status text.
pub fn innermost_pid(status: &str) -> Option<i32> {
    status.lines().find_map(|l| l.strip_prefix("NSpid:")).and_then(|v| v.split_whitespace().last()?.parse().ok())
}

/// The host id that id 0 of a user namespace maps to, from the text of its `uid_map` or `gid_map`.
pub fn host_id_of_root(map: &str) -> Option<u32> {
    map.lines().find_map(|l| {
        let mut f = l.split_whitespace().map(|x| x.parse::<u32>().ok());
        match (f.next()??, f.next()??, f.next()??) {
            (0, host, n) if n > 0 => Some(host),
            _ => None,
        }
    })
}

/// The current `oom_score_adj` of a process.
pub fn oom_score_adj(pid: i32) -> Option<i32> {
    std::fs::read_to_string(format!("/proc/{pid}/oom_score_adj")).ok()?.trim().parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_after_a_tricky_comm() {
        let text = "42 (a) b) (c) S 1 42 40 0 -1 4194560 1 0 0 0 0 0 0 0 20 0 1 0 987654 1 2 3";
        let s = Stat::parse(text).unwrap();
        assert_eq!(s, Stat { state: 'S', ppid: 1, pgrp: 42, session: 40, start_time: 987654 });
        assert!(!s.is_dead());
        assert!(Stat::parse("42 (x) Z 1 2 3").is_none());
        assert!(Stat::parse(&text.replace(" S ", " Z ")).unwrap().is_dead());
        assert!(Stat::parse("garbage").is_none());
    }

    #[test]
    fn own_process_is_readable_and_nspid_is_innermost() {
        let me = nix::unistd::getpid().as_raw();
        assert!(start_time(me).is_some());
        assert!(stat(me).is_some_and(|s| !s.is_dead() && s.ppid > 0));
        assert_eq!(innermost_pid("Name:\tx\nNSpid:\t4242\t7\nX:\t1\n"), Some(7));
        assert_eq!(innermost_pid("NSpid:\t4242\n"), Some(4242));
        assert_eq!(innermost_pid("Name:\tx\n"), None);
        assert_eq!(host_id_of_root("         0     100000      65536\n"), Some(100000));
        assert_eq!(
            host_id_of_root("      1000       2000          1\n         0     100000       1000\n"),
            Some(100000)
        );
        assert_eq!(host_id_of_root("      1000       2000          1\n"), None);
        assert_eq!(host_id_of_root("garbage"), None);
    }
}
