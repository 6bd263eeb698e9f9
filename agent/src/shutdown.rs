//! Orderly shutdown on SIGTERM or SIGINT: stop accepting, hang up every live session, let each write its end
//! record and tell its client, and exit within `shutdown_grace`.

use dcos_exec_proto::ErrorCode;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::watch;
use tokio::time::Instant;

/// The status message of a session the agent hung up because it is going away.
#[derive(Debug, Clone, Copy, thiserror::Error)]
#[error("agent is shutting down; the session was hung up")]
pub struct ShuttingDown;

impl ShuttingDown {
    /// Not the command's or the client's fault: `internal` (exit 125).
    pub fn code(&self) -> ErrorCode {
        ErrorCode::Internal
    }
}

/// Shared by the accept loop (which starts it) and every session (which watch it).
pub struct Shutdown {
    stopping: watch::Sender<bool>,
    live: watch::Sender<usize>,
    /// When sessions must have been hung up and audited; set by [`Shutdown::begin`].
    hangup_by: Mutex<Option<Instant>>,
}

/// Counts as a live session until dropped.
pub struct Live(Arc<Shutdown>);

impl Drop for Live {
    fn drop(&mut self) {
        self.0.live.send_modify(|n| *n -= 1);
    }
}

impl Default for Shutdown {
    fn default() -> Self {
        Shutdown { stopping: watch::Sender::new(false), live: watch::Sender::new(0), hangup_by: Mutex::new(None) }
    }
}

impl Shutdown {
    /// Starts the shutdown: from now on sessions hang up and no new one starts. Of `grace`, sessions get all but
    /// a last quarter (at most a second) to see their processes go; the rest is for their records and clients.
    pub fn begin(&self, grace: Duration) {
        let reserve = (grace / 4).min(Duration::from_secs(1));
        *self.hangup_by.lock().unwrap_or_else(|p| p.into_inner()) = Some(Instant::now() + grace - reserve);
        self.stopping.send_replace(true);
    }

    pub fn is_stopping(&self) -> bool {
        *self.stopping.borrow()
    }

    /// Resolves once the shutdown has begun (at once if it has).
    pub async fn stopping(&self) {
        let mut rx = self.stopping.subscribe();
        let _ = rx.wait_for(|s| *s).await;
    }

    /// Resolves when a stopping session must stop waiting for its processes (never before the shutdown).
    pub async fn hangup_deadline(&self) {
        self.stopping().await;
        let by = *self.hangup_by.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(by) = by {
            tokio::time::sleep_until(by).await;
        }
    }

    /// Registers a live session; the agent waits for it (within the grace) before it exits.
    pub fn track(self: &Arc<Self>) -> Live {
        self.live.send_modify(|n| *n += 1);
        Live(self.clone())
    }

    /// Sessions registered and not yet dropped.
    pub fn live(&self) -> usize {
        *self.live.borrow()
    }

    /// Resolves when no session is live.
    pub async fn drained(&self) {
        let mut rx = self.live.subscribe();
        let _ = rx.wait_for(|n| *n == 0).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn sessions_see_the_shutdown_and_the_agent_waits_for_them() {
        let s = Arc::new(Shutdown::default());
        assert!(!s.is_stopping());
        let live = s.track();
        assert_eq!(s.live(), 1);
        // Nothing resolves before the shutdown begins.
        let early = tokio::time::timeout(Duration::from_secs(3600), s.stopping()).await;
        assert!(early.is_err());
        let drained = tokio::time::timeout(Duration::from_secs(3600), s.drained()).await;
        assert!(drained.is_err(), "a live session holds the shutdown");

        let t0 = tokio::time::Instant::now();
        s.begin(Duration::from_secs(10));
        assert!(s.is_stopping());
        s.stopping().await;
        s.hangup_deadline().await;
        // 10 s less a reserve of one second for the end records and the clients.
        assert_eq!(t0.elapsed(), Duration::from_secs(9));
        drop(live);
        assert_eq!(s.live(), 0);
        s.drained().await;
        assert!(ShuttingDown.to_string().contains("agent is shutting down"));
        assert_eq!(ShuttingDown.code(), ErrorCode::Internal);
    }

    #[tokio::test(start_paused = true)]
    async fn a_short_grace_keeps_a_quarter_for_the_records() {
        let s = Shutdown::default();
        let t0 = tokio::time::Instant::now();
        s.begin(Duration::from_secs(2));
        s.hangup_deadline().await;
        assert_eq!(t0.elapsed(), Duration::from_millis(1500));
    }
}
