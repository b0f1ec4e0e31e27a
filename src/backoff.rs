//! Reconnect back-off: exponential with full jitter, so a fleet that lost
//! its hub (or hub replicas that lost their database) does not reconnect
//! in lock-step. Used by the agent's hub connection and the hub's LISTEN
//! connection.

use std::time::Duration;

use rand::Rng;

#[derive(Debug, Clone)]
pub struct Backoff {
    base: Duration,
    cap: Duration,
    attempt: u32,
}

impl Backoff {
    pub fn new(base: Duration, cap: Duration) -> Self {
        Self { base, cap, attempt: 0 }
    }

    /// The ceiling for the next delay: `min(cap, base * 2^attempt)`.
    pub fn ceiling(&self) -> Duration {
        let exp = self.base.saturating_mul(1u32 << self.attempt.min(20));
        exp.min(self.cap)
    }

    /// A uniformly random delay in `[0, ceiling]` ("full jitter").
    pub fn next_delay(&mut self) -> Duration {
        let ceiling = self.ceiling();
        self.attempt = self.attempt.saturating_add(1);
        let ms = rand::rng().random_range(0..=ceiling.as_millis() as u64);
        Duration::from_millis(ms)
    }

    pub fn reset(&mut self) {
        self.attempt = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ceiling_doubles_to_cap_and_delays_stay_below() {
        let mut b = Backoff::new(Duration::from_millis(500), Duration::from_secs(60));
        let mut ceilings = Vec::new();
        for _ in 0..12 {
            let c = b.ceiling();
            let d = b.next_delay();
            assert!(d <= c, "{d:?} > {c:?}");
            ceilings.push(c.as_millis());
        }
        assert_eq!(&ceilings[..4], &[500, 1000, 2000, 4000]);
        assert_eq!(*ceilings.last().unwrap(), 60_000);
        b.reset();
        assert_eq!(b.ceiling(), Duration::from_millis(500));
    }

    #[test]
    fn jitter_spreads_delays() {
        let mut distinct = std::collections::HashSet::new();
        for _ in 0..50 {
            let mut b = Backoff::new(Duration::from_secs(10), Duration::from_secs(60));
            distinct.insert(b.next_delay().as_millis());
        }
        assert!(distinct.len() > 10, "only {} distinct delays", distinct.len());
    }
}
