//! The container's seccomp filter: compiled from `config.json` with libseccomp (as runc does), installed by
//! the process that execs, with the kernel's `seccomp(2)` and no allocation.

use libseccomp::{ScmpAction, ScmpArch, ScmpArgCompare, ScmpCompareOp, ScmpFilterContext, ScmpSyscall};
use oci_spec::runtime::{LinuxSeccomp, LinuxSeccompAction, LinuxSeccompOperator};
use serde::{Deserialize, Serialize};
use std::io::{Read, Seek};
use std::str::FromStr;

/// Errors compiling a filter.
#[derive(Debug, thiserror::Error)]
pub enum SeccompError {
    /// Something in the profile this helper cannot apply faithfully (a seccomp agent, an out-of-range value).
    #[error("{0} is not supported")]
    Unsupported(String),
    /// An architecture name libseccomp does not know.
    #[error("unknown architecture {0}")]
    Arch(String),
    /// libseccomp refused a rule.
    #[error("libseccomp: {0}")]
    Lib(#[from] libseccomp::error::SeccompError),
    /// Writing the compiled program out failed.
    #[error("exporting the filter: {0}")]
    Io(#[from] std::io::Error),
}

/// A compiled filter: classic BPF instructions (8 bytes each) and the `seccomp(2)` flags.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Program {
    /// The instructions, as the kernel reads them.
    pub bpf: Vec<u8>,
    /// `SECCOMP_FILTER_FLAG_*` for `seccomp(SECCOMP_SET_MODE_FILTER)`.
    pub flags: u32,
}

const SECCOMP_FILTER_FLAG_LOG: u32 = 2;
const SECCOMP_FILTER_FLAG_SPEC_ALLOW: u32 = 4;

fn name<T: Serialize>(v: T) -> String {
    serde_json::to_value(v).ok().and_then(|v| v.as_str().map(String::from)).unwrap_or_default()
}

/// The config's `errnoRet` (EPERM if absent) as the action's argument type; a value that does not fit is
/// refused rather than wrapped or cut to another errno.
fn errno_ret<T: TryFrom<u32>>(errno: Option<u32>) -> Result<T, SeccompError> {
    let e = errno.unwrap_or(libc::EPERM.cast_unsigned());
    T::try_from(e).map_err(|_| SeccompError::Unsupported(format!("errnoRet {e}")))
}

fn action(a: LinuxSeccompAction, errno: Option<u32>) -> Result<ScmpAction, SeccompError> {
    Ok(match a {
        LinuxSeccompAction::ScmpActKill | LinuxSeccompAction::ScmpActKillThread => ScmpAction::KillThread,
        LinuxSeccompAction::ScmpActKillProcess => ScmpAction::KillProcess,
        LinuxSeccompAction::ScmpActTrap => ScmpAction::Trap,
        LinuxSeccompAction::ScmpActErrno => ScmpAction::Errno(errno_ret(errno)?),
        LinuxSeccompAction::ScmpActTrace => ScmpAction::Trace(errno_ret(errno)?),
        LinuxSeccompAction::ScmpActLog => ScmpAction::Log,
        LinuxSeccompAction::ScmpActAllow => ScmpAction::Allow,
        LinuxSeccompAction::ScmpActNotify => {
            return Err(SeccompError::Unsupported("SCMP_ACT_NOTIFY (a seccomp agent)".into()))
        }
    })
}

fn compare(op: LinuxSeccompOperator, value: u64, value_two: Option<u64>) -> (ScmpCompareOp, u64) {
    match op {
        LinuxSeccompOperator::ScmpCmpNe => (ScmpCompareOp::NotEqual, value),
        LinuxSeccompOperator::ScmpCmpLt => (ScmpCompareOp::Less, value),
        LinuxSeccompOperator::ScmpCmpLe => (ScmpCompareOp::LessOrEqual, value),
        LinuxSeccompOperator::ScmpCmpEq => (ScmpCompareOp::Equal, value),
        LinuxSeccompOperator::ScmpCmpGe => (ScmpCompareOp::GreaterEqual, value),
        LinuxSeccompOperator::ScmpCmpGt => (ScmpCompareOp::Greater, value),
        // runc's reading: value is the mask, valueTwo the datum.
        LinuxSeccompOperator::ScmpCmpMaskedEq => (ScmpCompareOp::MaskedEqual(value), value_two.unwrap_or(0)),
    }
}

/// Compiles a `linux.seccomp` section the way runc does: unknown syscall names are skipped (the kernel of the
/// moment may not have them), rules with the default action are skipped, and several conditions on one
/// argument become one rule each (libseccomp cannot AND them).
pub fn compile(s: &LinuxSeccomp) -> Result<Program, SeccompError> {
    let default = action(s.default_action(), s.default_errno_ret())?;
    let mut ctx = ScmpFilterContext::new(default)?;
    // Other architectures' syscalls fail rather than slip through under another numbering.
    for a in s.architectures().iter().flatten() {
        let n = name(a);
        let arch = ScmpArch::from_str(&n).map_err(|_| SeccompError::Arch(n.clone()))?;
        // The native one is there already.
        if arch != ScmpArch::native() {
            ctx.add_arch(arch)?;
        }
    }
    // The process installs the filter itself, with no_new_privs or CAP_SYS_ADMIN as the case may be.
    ctx.set_ctl_nnp(false)?;
    let mut flags = 0;
    for f in s.flags().iter().flatten() {
        match name(f).as_str() {
            "SECCOMP_FILTER_FLAG_LOG" => flags |= SECCOMP_FILTER_FLAG_LOG,
            "SECCOMP_FILTER_FLAG_SPEC_ALLOW" => flags |= SECCOMP_FILTER_FLAG_SPEC_ALLOW,
            // TSYNC is meaningless for a single-threaded process.
            "SECCOMP_FILTER_FLAG_TSYNC" => {}
            other => return Err(SeccompError::Unsupported(format!("seccomp flag {other}"))),
        }
    }
    for rule in s.syscalls().iter().flatten() {
        let act = action(rule.action(), rule.errno_ret())?;
        if act == default {
            continue;
        }
        let conds: Vec<ScmpArgCompare> = rule
            .args()
            .iter()
            .flatten()
            .map(|a| {
                let (op, datum) = compare(a.op(), a.value(), a.value_two());
                let index = u32::try_from(a.index())
                    .map_err(|_| SeccompError::Unsupported(format!("argument index {}", a.index())))?;
                Ok(ScmpArgCompare::new(index, op, datum))
            })
            .collect::<Result<_, SeccompError>>()?;
        let mut indices: Vec<usize> = rule.args().iter().flatten().map(|a| a.index()).collect();
        indices.sort_unstable();
        let repeated = indices.windows(2).any(|w| w[0] == w[1]);
        for n in rule.names() {
            let Ok(sc) = ScmpSyscall::from_name(n) else {
                continue;
            };
            if repeated {
                for c in &conds {
                    ctx.add_rule_conditional(act, sc, std::slice::from_ref(c))?;
                }
            } else {
                ctx.add_rule_conditional(act, sc, &conds)?;
            }
        }
    }
    let fd = nix::sys::memfd::memfd_create("seccomp", nix::sys::memfd::MFdFlags::MFD_CLOEXEC)
        .map_err(std::io::Error::from)?;
    ctx.export_bpf(&fd)?;
    let mut f = std::fs::File::from(fd);
    f.rewind()?;
    let mut bpf = Vec::new();
    f.read_to_end(&mut bpf)?;
    if bpf.is_empty() || bpf.len() % 8 != 0 || bpf.len() / 8 > usize::from(u16::MAX) {
        return Err(SeccompError::Unsupported(format!("a filter of {} bytes", bpf.len())));
    }
    Ok(Program { bpf, flags })
}

/// `struct sock_fprog`.
#[repr(C)]
pub struct SockFprog {
    /// Number of instructions.
    pub len: u16,
    /// The first instruction.
    pub filter: *const u8,
}

impl Program {
    /// The kernel's view of this program; valid as long as `self` is.
    pub fn fprog(&self) -> SockFprog {
        // `compile` refuses longer programs; one that arrived some other way gets length 0, which the kernel
        // refuses, rather than a prefix of itself.
        SockFprog { len: u16::try_from(self.bpf.len() / 8).unwrap_or(0), filter: self.bpf.as_ptr() }
    }
}

/// Installs `prog` on the calling thread. Async-signal-safe: one syscall on memory prepared before fork.
///
/// # Safety
/// `prog` must come from [`Program::fprog`] of a program that is still alive.
pub unsafe fn install(prog: &SockFprog, flags: u32) -> libc::c_long {
    const SECCOMP_SET_MODE_FILTER: libc::c_uint = 1;
    // SAFETY: seccomp(2) reads `prog` and the instructions it points to; the caller keeps them alive.
    unsafe { libc::syscall(libc::SYS_seccomp, SECCOMP_SET_MODE_FILTER, flags, prog as *const SockFprog) }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn filter(json: &str) -> LinuxSeccomp {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn compiles_actions_arguments_and_architectures() {
        let p = compile(&filter(
            r#"{"defaultAction": "SCMP_ACT_ALLOW", "architectures": ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"],
                "flags": ["SECCOMP_FILTER_FLAG_LOG"],
                "syscalls": [
                  {"names": ["mkdir", "mkdirat", "no_such_syscall"], "action": "SCMP_ACT_ERRNO", "errnoRet": 38},
                  {"names": ["socket"], "action": "SCMP_ACT_ERRNO", "errnoRet": 97,
                   "args": [{"index": 0, "value": 10, "op": "SCMP_CMP_EQ"}]},
                  {"names": ["personality"], "action": "SCMP_ACT_ERRNO",
                   "args": [{"index": 0, "value": 8, "op": "SCMP_CMP_EQ"}, {"index": 0, "value": 9, "op": "SCMP_CMP_EQ"}]},
                  {"names": ["getpid"], "action": "SCMP_ACT_ALLOW"}
                ]}"#,
        ))
        .unwrap();
        assert_eq!(p.flags, SECCOMP_FILTER_FLAG_LOG);
        assert!(p.bpf.len() >= 8 * 10, "{}", p.bpf.len());
        // errno 38 and 97 appear as SECCOMP_RET_ERRNO | errno return values in the program.
        let words: Vec<u32> = p.bpf.chunks(8).map(|i| u32::from_ne_bytes([i[4], i[5], i[6], i[7]])).collect();
        assert!(words.contains(&(0x0005_0000 | 38)) && words.contains(&(0x0005_0000 | 97)), "{words:x?}");
    }

    #[test]
    fn notify_and_unknown_flags_are_refused() {
        let notify =
            r#"{"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [{"names": ["mkdir"], "action": "SCMP_ACT_NOTIFY"}]}"#;
        assert!(matches!(compile(&filter(notify)), Err(SeccompError::Unsupported(_))));
        let flag = r#"{"defaultAction": "SCMP_ACT_ALLOW", "flags": ["SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV"]}"#;
        assert!(compile(&filter(flag)).is_err());
    }
}
