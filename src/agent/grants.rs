//! Asking the hub before a fire of a windowed periodic invocation
//! (`Invocation::fire_window`, docs/fleet.md "Periodic invocations").
//!
//! Owns: the fire requests waiting for the hub's answer ([`Gate`]),
//! sent by the connection loop in `agent::mod` (again every
//! [`ASK_AGAIN`] and after every reconnect, until answered), and the
//! answers it hands back. Deciding is the hub's: the agent only waits,
//! bounded by the fire's own deadline (the next fire), which the caller
//! enforces.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};

use crate::lifecycle::ErrorCode;

/// Requests waiting for the connection; beyond this one is dropped and
/// asked again after [`ASK_AGAIN`].
const REQUEST_QUEUE: usize = 64;
/// A fire not answered in this time is asked again: a grant lost with a
/// connection, or announced by a replica that does not hold us.
const ASK_AGAIN: Duration = Duration::from_secs(5);
/// Longest error text kept from the hub's answer.
const MAX_INFO: usize = 512;

/// One fire to ask about: (invoke id, record number, nominal instant).
pub type FireKey = (String, u32);

/// The hub's decision on a fire.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    Granted,
    Denied { code: Option<ErrorCode>, info: String },
}

/// Fire requests between periodic schedules and the hub connection.
pub struct Gate {
    tx: mpsc::Sender<(FireKey, String)>,
    rx: tokio::sync::Mutex<mpsc::Receiver<(FireKey, String)>>,
    waiting: Mutex<HashMap<FireKey, (String, oneshot::Sender<Answer>)>>,
}

impl Default for Gate {
    fn default() -> Self {
        let (tx, rx) = mpsc::channel(REQUEST_QUEUE);
        Self { tx, rx: tokio::sync::Mutex::new(rx), waiting: Mutex::new(HashMap::new()) }
    }
}

impl Gate {
    fn waiting(&self) -> std::sync::MutexGuard<'_, HashMap<FireKey, (String, oneshot::Sender<Answer>)>> {
        self.waiting.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The queue of requests for the connection to send (one connection at a time).
    pub async fn requests(&self) -> tokio::sync::MutexGuard<'_, mpsc::Receiver<(FireKey, String)>> {
        self.rx.lock().await
    }

    /// Fires asked about and not answered (asked again on a new connection).
    pub fn outstanding(&self) -> Vec<(FireKey, String)> {
        self.waiting().iter().map(|(k, (at, _))| (k.clone(), at.clone())).collect()
    }

    /// The hub's answer; one nobody waits for (a repeat, a fire already
    /// given up) is dropped.
    pub fn answered(&self, invoke_id: &str, record_seq: u32, granted: bool, error_code: &str, error_info: &str) {
        let Some((_, waiter)) = self.waiting().remove(&(invoke_id.to_string(), record_seq)) else { return };
        let answer = if granted {
            Answer::Granted
        } else {
            let mut info = error_info.to_string();
            crate::protocol::truncate_text(&mut info, MAX_INFO);
            Answer::Denied { code: ErrorCode::parse(error_code), info }
        };
        let _ = waiter.send(answer);
    }

    /// Asks until answered. The caller bounds the wait (the next fire, a
    /// stop); dropping this future forgets the request.
    pub async fn ask(&self, invoke_id: &str, record_seq: u32, scheduled: &str) -> Answer {
        let key: FireKey = (invoke_id.to_string(), record_seq);
        let _forget = Forget { gate: self, key: key.clone() };
        loop {
            let (tx, rx) = oneshot::channel();
            self.waiting().insert(key.clone(), (scheduled.to_string(), tx));
            // Full or no connection: the wait below times out and asks again.
            let _ = self.tx.try_send((key.clone(), scheduled.to_string()));
            match tokio::time::timeout(ASK_AGAIN, rx).await {
                Ok(Ok(answer)) => return answer,
                Ok(Err(_)) | Err(_) => continue,
            }
        }
    }
}

/// Removes a request when its asker stops waiting (granted, superseded, stopped).
struct Forget<'a> {
    gate: &'a Gate,
    key: FireKey,
}

impl Drop for Forget<'_> {
    fn drop(&mut self) {
        self.gate.waiting().remove(&self.key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn an_answer_reaches_its_asker_only() {
        let gate = std::sync::Arc::new(Gate::default());
        let g = gate.clone();
        let asker = tokio::spawn(async move { g.ask("t-1", 3, "2026-11-24T15:00:05Z").await });
        let mut rx = gate.requests().await;
        let ((id, seq), at) = rx.recv().await.unwrap();
        assert_eq!((id.as_str(), seq, at.as_str()), ("t-1", 3, "2026-11-24T15:00:05Z"));
        assert_eq!(gate.outstanding().len(), 1);
        // Another fire's answer, and one for an invocation nobody asked about, are dropped.
        gate.answered("t-1", 2, true, "", "");
        gate.answered("t-x", 3, true, "", "");
        assert!(!asker.is_finished());
        gate.answered("t-1", 3, false, "MaxErrorsExceeded", &"x".repeat(2000));
        let answer = asker.await.unwrap();
        let Answer::Denied { code, info } = answer else { panic!("denied expected") };
        assert_eq!(code, Some(ErrorCode::MaxErrorsExceeded));
        assert!(info.len() <= MAX_INFO);
        assert!(gate.outstanding().is_empty());
    }

    #[tokio::test]
    async fn a_dropped_ask_is_forgotten() {
        let gate = Gate::default();
        let r = tokio::time::timeout(Duration::from_millis(20), gate.ask("t-1", 1, "x")).await;
        assert!(r.is_err());
        assert!(gate.outstanding().is_empty());
    }
}
