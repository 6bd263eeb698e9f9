//! The agent's own limits: open files and sessions per user (connections not yet authenticated are capped by
//! the shared server's gate).

use dcos_exec_proto::ErrorCode;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

/// `RLIMIT_NOFILE` as the agent found it, before [`raise_nofile`].
static ORIGINAL_NOFILE: OnceLock<(u64, u64)> = OnceLock::new();

/// Raises the soft open-files limit to the hard one: every session holds a handful of descriptors, and a
/// systemd default of 1024 would fail sessions with EMFILE long before memory runs out. Returns (old soft, new).
pub fn raise_nofile() -> std::io::Result<(u64, u64)> {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE)?;
    let _ = ORIGINAL_NOFILE.set((soft, hard));
    if soft < hard {
        setrlimit(Resource::RLIMIT_NOFILE, hard, hard)?;
    }
    Ok((soft, hard))
}

/// The `(soft, hard)` open-files limit the agent started with, if [`raise_nofile`] ran. Processes started in
/// containers get this back (unless the container's config sets its own), so the agent's raised limit never
/// leaks into them.
pub fn original_nofile() -> Option<(u64, u64)> {
    ORIGINAL_NOFILE.get().copied()
}

/// A user already has as many sessions as `max_sessions_per_user` allows.
#[derive(Debug, thiserror::Error)]
#[error("user {user:?} already has {limit} sessions open, the limit of this agent (max_sessions_per_user)")]
pub struct TooManySessions {
    pub user: String,
    pub limit: usize,
}

impl TooManySessions {
    /// A policy refusal of the agent's configuration.
    pub fn code(&self) -> ErrorCode {
        ErrorCode::Forbidden
    }
}

/// Open sessions by user.
pub struct UserSessions {
    max: usize,
    open: Mutex<HashMap<String, usize>>,
}

/// One open session of a user; dropping it frees the slot.
pub struct SessionSlot {
    table: Arc<UserSessions>,
    user: String,
}

impl Drop for SessionSlot {
    fn drop(&mut self) {
        let mut open = self.table.open.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = open.get_mut(&self.user) {
            *n -= 1;
            if *n == 0 {
                open.remove(&self.user);
            }
        }
    }
}

impl UserSessions {
    pub fn new(max: usize) -> Arc<Self> {
        Arc::new(UserSessions { max, open: Mutex::default() })
    }

    /// A slot for one more session of `user`, or the refusal when the user is at the limit.
    pub fn acquire(self: &Arc<Self>, user: &str) -> Result<SessionSlot, TooManySessions> {
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        let n = open.entry(user.to_string()).or_insert(0);
        if *n >= self.max {
            return Err(TooManySessions { user: user.into(), limit: self.max });
        }
        *n += 1;
        Ok(SessionSlot { table: self.clone(), user: user.into() })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sessions_are_counted_per_user_and_freed_on_drop() {
        let t = UserSessions::new(2);
        let a1 = t.acquire("alice").unwrap();
        let a2 = t.acquire("alice").unwrap();
        let Err(e) = t.acquire("alice") else { panic!("a third session of alice was admitted") };
        assert_eq!((e.limit, e.code()), (2, ErrorCode::Forbidden));
        assert!(e.to_string().contains("max_sessions_per_user"), "{e}");
        // Another user is not affected.
        let _b = t.acquire("bob").unwrap();
        drop(a1);
        assert_eq!(t.open.lock().unwrap().get("alice").copied().unwrap_or(0), 1);
        let _a3 = t.acquire("alice").unwrap();
        drop(a2);
        drop(_a3);
        assert_eq!(t.open.lock().unwrap().get("alice").copied().unwrap_or(0), 0);
        assert!(t.open.lock().unwrap().get("alice").is_none(), "no entry left behind for a user with none open");
    }

    #[test]
    fn nofile_is_raised_to_the_hard_limit_and_the_original_kept() {
        use nix::sys::resource::{getrlimit, Resource};
        let before = getrlimit(Resource::RLIMIT_NOFILE).unwrap();
        let (soft, hard) = raise_nofile().unwrap();
        assert_eq!((soft, hard), before);
        assert_eq!(getrlimit(Resource::RLIMIT_NOFILE).unwrap(), (hard, hard));
        // Another test of this process may have raised it first: the original is the first one seen.
        let (orig_soft, orig_hard) = original_nofile().unwrap();
        assert!(orig_soft <= soft && orig_hard == hard);
    }
}
