//! Live output of running records, kept in memory only: streamed chunks are
//! best effort and the final result (stored) supersedes them.
//!
//! Every byte held is bounded three ways (issue #14: a rogue agent's flood
//! of output frames held 240 MB and starved everyone else's live view):
//! per record ([`OUTPUT_CAP_BYTES`], the most recent bytes), per invocation
//! ([`MAX_INVOCATION_BYTES`]) and per hub ([`MAX_TOTAL_BYTES`]). A record
//! that would pass a bound is not started; records already shown keep
//! updating. Which frames reach this store at all (only the sender's own
//! targets) is decided by the agent session.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

use crate::protocol::OUTPUT_CAP_BYTES;

/// Most records whose live output is held at once.
pub const MAX_LIVE_RECORDS: usize = 10_000;
/// Most live bytes held for one invocation (a few hundred records' worth).
pub const MAX_INVOCATION_BYTES: usize = 8 * 1024 * 1024;
/// Most live bytes held by the hub.
pub const MAX_TOTAL_BYTES: usize = 64 * 1024 * 1024;

#[derive(Default)]
struct Inner {
    records: HashMap<(String, String), VecDeque<u8>>,
    per_invocation: HashMap<String, usize>,
    total: usize,
    /// Chunks refused by a bound since start (for metrics and tests).
    refused: u64,
}

#[derive(Default)]
pub struct LiveOutput {
    inner: Mutex<Inner>,
}

impl LiveOutput {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn push(&self, invoke_id: &str, instance_id: &str, data: &[u8]) {
        // Only the most recent bytes are shown: never copy more than that,
        // whatever the chunk size.
        let data = &data[data.len().saturating_sub(OUTPUT_CAP_BYTES)..];
        let mut m = self.lock();
        let key = (invoke_id.to_string(), instance_id.to_string());
        let held = m.records.get(&key).map_or(0, VecDeque::len);
        let after = (held + data.len()).min(OUTPUT_CAP_BYTES);
        let growth = after - held;
        let inv_bytes = m.per_invocation.get(invoke_id).copied().unwrap_or(0);
        let is_new = !m.records.contains_key(&key);
        if (is_new && m.records.len() >= MAX_LIVE_RECORDS)
            || m.total + growth > MAX_TOTAL_BYTES
            || inv_bytes + growth > MAX_INVOCATION_BYTES
        {
            m.refused += 1;
            super::metrics::get().live_output_dropped();
            return;
        }
        let buf = m.records.entry(key).or_default();
        buf.extend(data);
        let excess = buf.len().saturating_sub(OUTPUT_CAP_BYTES);
        buf.drain(..excess);
        m.total += growth;
        *m.per_invocation.entry(invoke_id.to_string()).or_default() += growth;
    }

    pub fn get(&self, invoke_id: &str, instance_id: &str) -> Option<Vec<u8>> {
        let m = self.lock();
        m.records.get(&(invoke_id.to_string(), instance_id.to_string())).map(|b| b.iter().copied().collect())
    }

    pub fn clear(&self, invoke_id: &str, instance_id: &str) {
        let mut m = self.lock();
        let Some(buf) = m.records.remove(&(invoke_id.to_string(), instance_id.to_string())) else { return };
        m.total -= buf.len();
        if let Some(n) = m.per_invocation.get_mut(invoke_id) {
            *n -= buf.len();
            if *n == 0 {
                m.per_invocation.remove(invoke_id);
            }
        }
    }

    /// (records held, bytes held, chunks refused by a bound).
    pub fn usage(&self) -> (usize, usize, u64) {
        let m = self.lock();
        (m.records.len(), m.total, m.refused)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_record_keeps_its_most_recent_bytes() {
        let l = LiveOutput::default();
        l.push("t-1", "i-1", b"hello ");
        l.push("t-1", "i-1", b"world");
        assert_eq!(l.get("t-1", "i-1").unwrap(), b"hello world");
        let big = vec![b'x'; 3 * OUTPUT_CAP_BYTES];
        l.push("t-1", "i-1", &big);
        l.push("t-1", "i-1", b"END");
        let got = l.get("t-1", "i-1").unwrap();
        assert_eq!(got.len(), OUTPUT_CAP_BYTES);
        assert!(got.ends_with(b"xEND"));
        assert_eq!(l.usage().1, OUTPUT_CAP_BYTES);
        l.clear("t-1", "i-1");
        assert_eq!(l.usage(), (0, 0, 0));
    }

    #[test]
    fn per_invocation_and_total_bounds_hold_and_others_keep_working() {
        let l = LiveOutput::default();
        let chunk = vec![b'y'; OUTPUT_CAP_BYTES];
        // One invocation with far more records than its budget.
        for i in 0..1000 {
            l.push("t-flood", &format!("i-{i}"), &chunk);
        }
        let (_, bytes, refused) = l.usage();
        assert!(bytes <= MAX_INVOCATION_BYTES, "{bytes}");
        assert!(refused > 0);
        // Another invocation still shows its output.
        l.push("t-other", "i-1", b"still here");
        assert_eq!(l.get("t-other", "i-1").unwrap(), b"still here");
        // Many invocations: the hub-wide bound holds.
        for i in 0..20_000 {
            l.push(&format!("t-{i}"), "i-1", &chunk);
        }
        let (records, bytes, _) = l.usage();
        assert!(bytes <= MAX_TOTAL_BYTES && records <= MAX_LIVE_RECORDS, "{records} {bytes}");
    }
}
