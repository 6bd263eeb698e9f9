//! Capabilities: names to numbers, and the kernel's capset layout.

use oci_spec::runtime::{Capability, LinuxCapabilities};
use serde::{Deserialize, Serialize};
use std::collections::HashSet;
use std::str::FromStr;

/// Capability sets as kernel numbers (`CAP_CHOWN` is 0), sorted.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CapSets {
    /// The bounding set: what the process and its children can ever gain.
    pub bounding: Vec<u32>,
    /// What the kernel checks.
    pub effective: Vec<u32>,
    /// What the process may make effective.
    pub permitted: Vec<u32>,
    /// What survives execve of a file with matching file capabilities.
    pub inheritable: Vec<u32>,
    /// What survives execve of any file (for a non-root user).
    pub ambient: Vec<u32>,
}

fn numbers(set: Option<&HashSet<Capability>>) -> Vec<u32> {
    let mut out: Vec<u32> = set
        .into_iter()
        .flatten()
        .filter_map(|c| serde_json::to_value(c).ok())
        .filter_map(|v| v.as_str().and_then(|s| caps::Capability::from_str(s).ok()))
        .map(|c| u32::from(c.index()))
        .collect();
    out.sort_unstable();
    out
}

impl CapSets {
    /// The sets of a `config.json` process (absent sets are empty, as runc reads them).
    pub fn from_oci(c: Option<&LinuxCapabilities>) -> CapSets {
        CapSets {
            bounding: numbers(c.and_then(|c| c.bounding().as_ref())),
            effective: numbers(c.and_then(|c| c.effective().as_ref())),
            permitted: numbers(c.and_then(|c| c.permitted().as_ref())),
            inheritable: numbers(c.and_then(|c| c.inheritable().as_ref())),
            ambient: numbers(c.and_then(|c| c.ambient().as_ref())),
        }
    }

    /// Takes `caps` out of every set.
    pub fn remove_everywhere(&mut self, caps: &[u32]) {
        for set in
            [&mut self.bounding, &mut self.effective, &mut self.permitted, &mut self.inheritable, &mut self.ambient]
        {
            set.retain(|c| !caps.contains(c));
        }
    }

    /// Adds `caps` to all five sets (`--cap-add`).
    pub fn add_everywhere(&mut self, caps: &[u32]) {
        for set in
            [&mut self.bounding, &mut self.effective, &mut self.permitted, &mut self.inheritable, &mut self.ambient]
        {
            for c in caps {
                if !set.contains(c) {
                    set.push(*c);
                }
            }
            set.sort_unstable();
        }
    }

    /// The `capset(2)` payload (version 3: two 32-bit words per set), capabilities above `last_cap` dropped.
    pub fn data(&self, last_cap: u32) -> [CapData; 2] {
        let mut d = [CapData::default(); 2];
        let bits = |set: &[u32], word: u32| {
            set.iter().filter(|&&c| c <= last_cap && c / 32 == word).fold(0u32, |acc, c| acc | 1 << (c % 32))
        };
        for (w, slot) in (0u32..).zip(d.iter_mut()) {
            *slot = CapData {
                effective: bits(&self.effective, w),
                permitted: bits(&self.permitted, w),
                inheritable: bits(&self.inheritable, w),
            };
        }
        d
    }

    /// Capabilities to drop from the bounding set.
    pub fn bounding_drops(&self, last_cap: u32) -> Vec<u32> {
        (0..=last_cap).filter(|c| !self.bounding.contains(c)).collect()
    }

    /// Ambient capabilities the kernel will accept: permitted and inheritable ones (runc skips the others too).
    pub fn raisable_ambient(&self, last_cap: u32) -> Vec<u32> {
        self.ambient
            .iter()
            .copied()
            .filter(|c| *c <= last_cap && self.permitted.contains(c) && self.inheritable.contains(c))
            .collect()
    }
}

/// `struct __user_cap_header_struct`.
#[repr(C)]
pub struct CapHeader {
    /// [`CAP_VERSION_3`].
    pub version: u32,
    /// 0: this thread.
    pub pid: libc::c_int,
}

/// `_LINUX_CAPABILITY_VERSION_3`.
pub const CAP_VERSION_3: u32 = 0x2008_0522;

/// `struct __user_cap_data_struct`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CapData {
    /// One 32-capability word of the effective set.
    pub effective: u32,
    /// The same word of the permitted set.
    pub permitted: u32,
    /// The same word of the inheritable set.
    pub inheritable: u32,
}

/// Capability names (`SYS_PTRACE` or `CAP_SYS_PTRACE`, any case) to kernel numbers.
pub fn parse_names(names: &[String]) -> Result<Vec<u32>, String> {
    names.iter().map(|n| parse_name(n).ok_or_else(|| format!("unknown capability {n:?}"))).collect()
}

/// One capability name to its number.
pub fn parse_name(n: &str) -> Option<u32> {
    let up = n.to_ascii_uppercase();
    let full = if up.starts_with("CAP_") { up } else { format!("CAP_{up}") };
    caps::Capability::from_str(&full).ok().map(|c| u32::from(c.index()))
}

/// The name of capability `n` without the `CAP_` prefix.
pub fn name(n: u32) -> String {
    caps::all()
        .into_iter()
        .find(|c| u32::from(c.index()) == n)
        .map(|c| c.to_string().trim_start_matches("CAP_").to_string())
        .unwrap_or_else(|| n.to_string())
}

/// The highest capability number of the running kernel.
pub fn last_cap() -> u32 {
    std::fs::read_to_string("/proc/sys/kernel/cap_last_cap").ok().and_then(|s| s.trim().parse().ok()).unwrap_or(40)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_map_to_kernel_numbers_both_ways() {
        let set: HashSet<_> = [Capability::Chown, Capability::NetBindService, Capability::SysAdmin].into();
        assert_eq!(numbers(Some(&set)), vec![0, 10, 21]);
        assert_eq!(parse_names(&["sys_ptrace".into(), "CAP_NET_RAW".into()]).unwrap(), vec![19, 13]);
        assert!(parse_names(&["FLY".into()]).is_err());
        assert_eq!(name(19), "SYS_PTRACE");
    }

    #[test]
    fn capset_words_split_at_32_and_respect_the_kernel() {
        let s = CapSets { effective: vec![0, 33, 63], permitted: vec![0, 33], ..Default::default() };
        let d = s.data(40);
        assert_eq!(d[0], CapData { effective: 1, permitted: 1, inheritable: 0 });
        assert_eq!(d[1], CapData { effective: 2, permitted: 2, inheritable: 0 });
        assert_eq!(CapSets { bounding: vec![0, 2], ..Default::default() }.bounding_drops(3), vec![1, 3]);
        let amb = CapSets { ambient: vec![1, 2], permitted: vec![1, 2], inheritable: vec![2], ..Default::default() };
        assert_eq!(amb.raisable_ambient(40), vec![2]);
    }
}
