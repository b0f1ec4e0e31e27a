//! Committed changes to invocations, announced to the API calls waiting
//! for them: `WaitSeconds` on `DescribeInvocationResults` (a deckhand
//! extension; docs/api.md) holds its answer until what it would show
//! changes, so a client that follows a run needs neither a polling loop
//! nor its cost (issue #21: the latency bench spent a core polling).
//!
//! The group-commit writer announces every invocation a batch touched once
//! the batch has committed (agents' acks and reports: a run's path); a
//! waiting call then re-reads the store. Other changes (a delivery that
//! expired, a periodic fire decided, a report committed by another replica
//! on the same database) are not announced: a waiter also re-reads every
//! [`RECHECK`], so they reach it that much later, never not at all.
//!
//! Bounded: at most [`MAX_WAITERS`] calls wait at once on a hub (beyond
//! that a call answers at once, as without `WaitSeconds`), each at most
//! [`MAX_WAIT_SECONDS`], and every wait ends when the hub shuts down.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::sync::broadcast;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// Longest `WaitSeconds` a call may ask for.
pub const MAX_WAIT_SECONDS: i64 = 30;
/// Most calls waiting at once on one hub.
pub const MAX_WAITERS: usize = 1024;
/// How often a waiter re-reads for changes nobody announced.
pub const RECHECK: Duration = Duration::from_secs(1);
/// Announcements buffered for a slow waiter; one that falls further behind
/// re-reads (it may have missed its invocation).
const QUEUE: usize = 1024;

/// The announcements of one hub.
pub struct Changes {
    tx: broadcast::Sender<Arc<str>>,
    waiting: Arc<AtomicUsize>,
    max_waiters: usize,
}

impl Default for Changes {
    fn default() -> Self {
        Self::new(MAX_WAITERS)
    }
}

impl Changes {
    pub fn new(max_waiters: usize) -> Self {
        let (tx, _) = broadcast::channel(QUEUE);
        Self { tx, waiting: Arc::new(AtomicUsize::new(0)), max_waiters }
    }

    /// `invoke_id` changed in a committed transaction. Costs nothing when
    /// no call is waiting (the fan-out path calls it once per result).
    pub fn announce(&self, invoke_id: &str) {
        if self.tx.receiver_count() > 0 {
            let _ = self.tx.send(Arc::from(invoke_id));
        }
    }

    /// Starts listening (before the caller's first read, so a change
    /// committed between that read and the wait is not missed). `None`
    /// when [`MAX_WAITERS`] calls are already waiting.
    pub fn listen(&self) -> Option<Listener> {
        let taken = self.waiting.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| (n < self.max_waiters).then_some(n + 1));
        taken.ok()?;
        Some(Listener { rx: self.tx.subscribe(), waiting: self.waiting.clone() })
    }

    /// Calls waiting now (`deckhand_hub_api_waiting_calls`).
    pub fn waiting(&self) -> usize {
        self.waiting.load(Ordering::Acquire)
    }
}

/// Why [`Listener::next`] returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wake {
    /// The invocation was announced, announcements were missed, or a
    /// recheck came due: read again.
    Maybe,
    /// The deadline passed or the hub is shutting down: answer now.
    Over,
}

/// One waiting call's place; frees its slot when dropped.
pub struct Listener {
    rx: broadcast::Receiver<Arc<str>>,
    waiting: Arc<AtomicUsize>,
}

impl Drop for Listener {
    fn drop(&mut self) {
        self.waiting.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Listener {
    /// Waits for `invoke_id` to be announced, a `recheck` to come due, the
    /// `deadline` or `shutdown`, whichever is first.
    pub async fn next(&mut self, invoke_id: &str, deadline: Instant, recheck: Option<Duration>, shutdown: &CancellationToken) -> Wake {
        let recheck_at = recheck.map(|r| (Instant::now() + r).min(deadline));
        loop {
            tokio::select! {
                got = self.rx.recv() => match got {
                    Ok(id) if &*id == invoke_id => return Wake::Maybe,
                    Ok(_) => {}
                    Err(broadcast::error::RecvError::Lagged(_)) => return Wake::Maybe,
                    Err(broadcast::error::RecvError::Closed) => return Wake::Over,
                },
                _ = until(recheck_at) => return Wake::Maybe,
                _ = tokio::time::sleep_until(deadline) => return Wake::Over,
                _ = shutdown.cancelled() => return Wake::Over,
            }
        }
    }
}

async fn until(t: Option<Instant>) {
    match t {
        Some(t) => tokio::time::sleep_until(t).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn waiters_are_capped_and_their_slots_come_back() {
        let c = Changes::new(2);
        let a = c.listen().expect("first");
        let _b = c.listen().expect("second");
        assert!(c.listen().is_none(), "a third waiter is over the cap");
        assert_eq!(c.waiting(), 2);
        drop(a);
        assert!(c.listen().is_some(), "a freed slot is reused");
    }

    #[tokio::test(start_paused = true)]
    async fn only_its_own_invocation_wakes_a_waiter() {
        let c = Changes::new(4);
        let mut l = c.listen().expect("slot");
        let stop = CancellationToken::new();
        c.announce("t-other");
        c.announce("t-mine");
        let deadline = Instant::now() + Duration::from_secs(30);
        assert_eq!(l.next("t-mine", deadline, None, &stop).await, Wake::Maybe);
        // Nothing more for it: the deadline ends the wait (paused time).
        c.announce("t-other");
        let t0 = Instant::now();
        assert_eq!(l.next("t-mine", t0 + Duration::from_secs(5), None, &stop).await, Wake::Over);
        assert!(Instant::now() >= t0 + Duration::from_secs(5));
    }

    #[tokio::test(start_paused = true)]
    async fn missed_announcements_and_rechecks_mean_read_again() {
        let c = Changes::new(4);
        let mut l = c.listen().expect("slot");
        let stop = CancellationToken::new();
        for _ in 0..QUEUE + 10 {
            c.announce("t-other");
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        assert_eq!(l.next("t-mine", deadline, None, &stop).await, Wake::Maybe, "lagged");
        let t0 = Instant::now();
        // Drain what is left, then the recheck comes due.
        assert_eq!(l.next("t-mine", deadline, Some(RECHECK), &stop).await, Wake::Maybe);
        assert!(Instant::now() >= t0 + RECHECK);
        stop.cancel();
        assert_eq!(l.next("t-mine", deadline, None, &stop).await, Wake::Over, "shutdown ends the wait");
    }
}
