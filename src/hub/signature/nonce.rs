//! Replay protection: each (AccessKey, nonce) is accepted once within the
//! timestamp window. Bounded: the oldest entries go first when full.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

use chrono::{DateTime, Utc};

use super::{MAX_SKEW, SignatureError};

/// At most this many nonces are remembered (≈ 100 requests/s sustained
/// over a 30-minute window); beyond it the oldest are forgotten first.
pub const MAX_NONCES: usize = 200_000;

/// Nonces by key with their time, and the same in insertion order for expiry.
type Seen = (HashMap<String, DateTime<Utc>>, VecDeque<(DateTime<Utc>, String)>);

#[derive(Default)]
pub struct NonceCache {
    inner: Mutex<Seen>,
}

impl NonceCache {
    pub fn check_and_insert(&self, key: &str, now: DateTime<Utc>) -> Result<(), SignatureError> {
        let mut g = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let (map, order) = &mut *g;
        // A timestamp may be up to MAX_SKEW old or new: remember twice that.
        let horizon = now - MAX_SKEW * 2;
        while let Some((t, k)) = order.front() {
            if *t >= horizon && order.len() < MAX_NONCES {
                break;
            }
            map.remove(k);
            order.pop_front();
        }
        if map.contains_key(key) {
            return Err(SignatureError::NonceUsed(key.split_once(':').map(|(_, n)| n).unwrap_or(key).to_string()));
        }
        map.insert(key.to_string(), now);
        order.push_back((now, key.to_string()));
        Ok(())
    }
}
