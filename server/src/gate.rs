//! Connections between accept and their first authenticated request: capped (`max_unauthenticated`), so that
//! idle or slow clients cannot take every socket of the process.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The cap on unauthenticated connections.
pub struct ConnectionGate {
    max: usize,
    open: Arc<AtomicUsize>,
    refused: AtomicU64,
    last_log: Mutex<Option<Instant>>,
}

/// How often at most refused connections are logged (a flood must not flood the log too).
const REFUSAL_LOG_EVERY: Duration = Duration::from_secs(10);

/// A slot of the gate, held by a connection until it authenticates (see [`Pending::authenticated`]).
pub struct Unauthenticated {
    open: Arc<AtomicUsize>,
}

impl Drop for Unauthenticated {
    fn drop(&mut self) {
        self.open.fetch_sub(1, Ordering::AcqRel);
    }
}

/// The per-connection state the requests of one connection share: whether it still holds a gate slot.
pub struct Pending(Mutex<Option<Unauthenticated>>);

impl Pending {
    pub fn new(slot: Unauthenticated) -> Self {
        Pending(Mutex::new(Some(slot)))
    }

    /// The connection got past authentication: it no longer counts against `max_unauthenticated`.
    pub fn authenticated(&self) {
        drop(self.0.lock().unwrap_or_else(|p| p.into_inner()).take());
    }
}

impl ConnectionGate {
    pub fn new(max: usize) -> Self {
        ConnectionGate { max, open: Default::default(), refused: AtomicU64::new(0), last_log: Mutex::new(None) }
    }

    /// A slot for a new connection, or `None` when `max` connections are still unauthenticated; the caller then
    /// closes the connection at once. Refusals are logged at most once per [`REFUSAL_LOG_EVERY`].
    pub fn admit(&self) -> Option<Unauthenticated> {
        let taken = self.open.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| (n < self.max).then_some(n + 1));
        if taken.is_ok() {
            return Some(Unauthenticated { open: self.open.clone() });
        }
        let refused = self.refused.fetch_add(1, Ordering::Relaxed) + 1;
        let mut last = self.last_log.lock().unwrap_or_else(|p| p.into_inner());
        if last.is_none_or(|t| t.elapsed() >= REFUSAL_LOG_EVERY) {
            *last = Some(Instant::now());
            tracing::warn!(
                refused_total = refused,
                "closing new connections: {} connections are not authenticated yet (max_unauthenticated)",
                self.max
            );
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_gate_closes_at_the_cap_and_reopens_on_authentication() {
        let g = ConnectionGate::new(2);
        let p1 = Pending::new(g.admit().unwrap());
        let s2 = g.admit().unwrap();
        assert!(g.admit().is_none(), "over the cap");
        assert!(g.admit().is_none());
        p1.authenticated();
        assert_eq!(g.open.load(Ordering::Acquire), 1);
        // A second authenticated request on the same connection frees nothing more.
        p1.authenticated();
        assert_eq!(g.open.load(Ordering::Acquire), 1);
        let s3 = g.admit().unwrap();
        drop(s2);
        drop(s3);
        assert_eq!(g.open.load(Ordering::Acquire), 0);
        assert_eq!(g.refused.load(Ordering::Relaxed), 2);
    }
}
