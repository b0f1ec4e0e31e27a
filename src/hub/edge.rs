//! What the hub grants a peer before it has authenticated, and how loudly
//! it complains about one (issue #14).
//!
//! Owns: the per-address cap on connections that have not yet sent a
//! request ([`PendingPeers`]), and the rate limit on warnings that a remote
//! peer can trigger at will ([`LogLimiter`]). The time bounds (TLS
//! handshake, header read, hello) live with the code that waits.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Connections one address may hold open that have not sent a complete
/// first request yet (TLS handshake or headers in progress). Well above
/// what a NAT'd fleet reconnecting at once needs (agents back off with
/// jitter; the fan-out bench dials 128 at a time from one address), far
/// below a file-descriptor limit.
pub const MAX_PENDING_PER_ADDR: usize = 256;

/// Counts unauthenticated connections per address.
#[derive(Default, Clone)]
pub struct PendingPeers {
    inner: Arc<Mutex<HashMap<IpAddr, usize>>>,
}

/// A connection's [`PendingSlot`] carried to the agent endpoint in the
/// upgrade request's extensions (which must be `Clone`): the agent's
/// connection keeps it until its hello, so one address cannot hold more
/// than [`MAX_PENDING_PER_ADDR`] unauthenticated WebSockets either, each
/// able to buffer a first frame of up to the message bound.
#[derive(Clone)]
pub struct HelloSlot(Arc<Mutex<Option<PendingSlot>>>);

impl HelloSlot {
    pub fn new(slot: PendingSlot) -> Self {
        Self(Arc::new(Mutex::new(Some(slot))))
    }

    /// The slot, once (a clone finds it taken).
    pub fn take(&self) -> Option<PendingSlot> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).take()
    }
}

/// Held while a connection has not sent its first request (for an agent's
/// WebSocket: its hello); dropping it gives the slot back.
pub struct PendingSlot {
    peers: PendingPeers,
    ip: IpAddr,
}

impl PendingPeers {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<IpAddr, usize>> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A slot for a new connection from `ip`, or `None` when the address
    /// already holds [`MAX_PENDING_PER_ADDR`].
    pub fn admit(&self, ip: IpAddr) -> Option<PendingSlot> {
        let mut m = self.lock();
        let n = m.entry(ip).or_default();
        if *n >= MAX_PENDING_PER_ADDR {
            return None;
        }
        *n += 1;
        Some(PendingSlot { peers: self.clone(), ip })
    }

    pub fn pending(&self, ip: IpAddr) -> usize {
        self.lock().get(&ip).copied().unwrap_or(0)
    }
}

impl Drop for PendingSlot {
    fn drop(&mut self) {
        let mut m = self.peers.lock();
        if let Some(n) = m.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                m.remove(&self.ip);
            }
        }
    }
}

/// At most `per_window` messages in each window; the others are counted
/// and the count is reported with the next message let through.
pub struct LogLimiter {
    window: Duration,
    per_window: u32,
    state: Mutex<(Instant, u32)>,
    suppressed: AtomicU64,
}

impl LogLimiter {
    pub fn new(window: Duration, per_window: u32) -> Self {
        Self { window, per_window, state: Mutex::new((Instant::now(), 0)), suppressed: AtomicU64::new(0) }
    }

    /// `Some(n)` when this message may be logged, `n` being how many were
    /// suppressed since the last one; `None` to stay quiet.
    pub fn allow(&self) -> Option<u64> {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        if now.duration_since(s.0) >= self.window {
            *s = (now, 0);
        }
        if s.1 >= self.per_window {
            self.suppressed.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        s.1 += 1;
        Some(self.suppressed.swap(0, Ordering::Relaxed))
    }
}

/// Warnings a peer can cause by sending garbage: 10 per 10 s per hub.
pub fn peer_warnings() -> &'static LogLimiter {
    static L: std::sync::OnceLock<LogLimiter> = std::sync::OnceLock::new();
    L.get_or_init(|| LogLimiter::new(Duration::from_secs(10), 10))
}

/// An id from a peer, fit to log or echo: short ASCII ids as they are,
/// anything else replaced (never echo a payload).
pub fn shown_id(id: &str) -> &str {
    if !id.is_empty() && id.len() <= 64 && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_') {
        id
    } else {
        "<malformed id>"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pending_slots_are_capped_per_address_and_returned_on_drop() {
        let p = PendingPeers::default();
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        let held: Vec<_> = (0..MAX_PENDING_PER_ADDR).map(|_| p.admit(a).unwrap()).collect();
        assert!(p.admit(a).is_none());
        assert!(p.admit(b).is_some(), "another address is not affected");
        drop(held);
        assert_eq!(p.pending(a), 0);
        assert!(p.admit(a).is_some());
    }

    #[test]
    fn limiter_lets_a_few_through_and_counts_the_rest() {
        let l = LogLimiter::new(Duration::from_secs(3600), 3);
        assert_eq!((0..3).filter_map(|_| l.allow()).count(), 3);
        assert!((0..100).all(|_| l.allow().is_none()));
        let l = LogLimiter::new(Duration::ZERO, 1);
        assert_eq!(l.allow(), Some(0));
    }

    #[test]
    fn ids_are_shown_only_when_plain() {
        assert_eq!(shown_id("mi-abc_1"), "mi-abc_1");
        assert_eq!(shown_id(&"a".repeat(65)), "<malformed id>");
        assert_eq!(shown_id("a\nb"), "<malformed id>");
        assert_eq!(shown_id(""), "<malformed id>");
    }
}
