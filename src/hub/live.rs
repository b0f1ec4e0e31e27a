//! Live output of running records, kept in memory only: streamed chunks are
//! best effort and the final result (stored) supersedes them.

use std::collections::HashMap;
use std::sync::Mutex;

use crate::protocol::OUTPUT_CAP_BYTES;

/// At most this many records' live output is held; beyond it new chunks are
/// ignored until finished records free space (bounds hub memory).
const MAX_LIVE_RECORDS: usize = 10_000;

#[derive(Default)]
pub struct LiveOutput {
    inner: Mutex<HashMap<(String, String), Vec<u8>>>,
}

impl LiveOutput {
    pub fn push(&self, invoke_id: &str, instance_id: &str, data: &[u8]) {
        let mut m = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let key = (invoke_id.to_string(), instance_id.to_string());
        if !m.contains_key(&key) && m.len() >= MAX_LIVE_RECORDS {
            return;
        }
        // Live view shows the most recent bytes; the stored final result
        // carries the head+tail form.
        let buf = m.entry(key).or_default();
        buf.extend_from_slice(data);
        if buf.len() > OUTPUT_CAP_BYTES {
            let excess = buf.len() - OUTPUT_CAP_BYTES;
            buf.drain(..excess);
        }
    }

    pub fn get(&self, invoke_id: &str, instance_id: &str) -> Option<Vec<u8>> {
        let m = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        m.get(&(invoke_id.to_string(), instance_id.to_string())).cloned()
    }

    pub fn clear(&self, invoke_id: &str, instance_id: &str) {
        let mut m = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        m.remove(&(invoke_id.to_string(), instance_id.to_string()));
    }
}
