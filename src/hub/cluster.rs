//! Several hub replicas on one database.
//!
//! Owns: this replica's identity and liveness, announcements between
//! replicas (an invocation or stop created through one replica reaches the
//! agent whose socket another holds), and the backstop that redelivers what
//! an announcement lost. With SQLite there is one replica; the same code
//! runs, announcements are simply not needed.
//!
//! Routing: the replica that takes an API call pushes to the agents it
//! holds, then publishes `{origin, kind, id}` on the store's channel
//! (PostgreSQL NOTIFY). Every other replica looks the work up in the tables
//! and pushes to the agents it holds. NOTIFY is not stored, so a replica
//! also resynchronises after its LISTEN connection comes back, and every
//! [`TICK`] it redelivers what its own agents have been owed for longer than
//! [`STALL_AFTER`]. Agents deduplicate by invoke id, so a double push is
//! harmless; a missed one costs at most one tick.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::Hub;
use super::store::{Notice, ago_str};
use crate::lifecycle::InvocationStatus;

/// Liveness and backstop period. Not the delivery path: announcements are.
pub const TICK: Duration = Duration::from_secs(5);
/// A replica silent this long is dead: its agents are shown offline until
/// they reconnect elsewhere (they do within their back-off, usually seconds).
pub const DEAD_AFTER: Duration = Duration::from_secs(30);
/// Owed work younger than this is left to the announcement path.
pub const STALL_AFTER: Duration = Duration::from_secs(3);
/// Targets redelivered per tick; the rest wait for the next tick.
const BACKSTOP_BATCH: i64 = 2000;

/// What one replica tells the others.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Event {
    /// A new invocation: push it to its targets.
    Invoke { id: String },
    /// A stop was requested: tell the targets now Stopping.
    Stop { id: String },
    /// Issue a new credential to this agent (only its replica can).
    Rotate { id: String },
    /// Fires of this invocation were granted or denied: tell the agents
    /// held here (per-fire rollout windows, docs/fleet.md).
    Fires { id: String },
}

#[derive(Debug, Serialize, Deserialize)]
struct Envelope {
    origin: String,
    #[serde(flatten)]
    event: Event,
}

/// A fresh identity for this replica's process lifetime.
pub fn new_hub_id() -> String {
    crate::ids::random("hub-", 12)
}

/// Tells the other replicas; failure only delays delivery to the next
/// backstop tick, so it is logged, not returned.
pub async fn announce(hub: &Hub, event: Event) {
    if !hub.store.shared() {
        return;
    }
    let payload = serde_json::to_string(&Envelope { origin: hub.id.clone(), event }).unwrap_or_default();
    if let Err(e) = hub.store.publish(&payload).await {
        tracing::warn!(error = %e, "announcement not sent; the backstop will deliver");
    }
}

/// Runs until shutdown: liveness, release of dead replicas' agents, the
/// backstop, and handling of other replicas' announcements.
pub async fn run(hub: Arc<Hub>) {
    let mut notices = hub.store.subscribe();
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let notice = async {
            match notices.as_mut() {
                Some(rx) => rx.recv().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = hub.shutdown.cancelled() => return,
            _ = tick.tick() => housekeeping(&hub).await,
            n = notice => match n {
                Some(Notice::Message(m)) => on_message(&hub, &m).await,
                Some(Notice::Resync) => backstop(&hub, Duration::ZERO).await,
                None => notices = None,
            },
        }
    }
}

async fn housekeeping(hub: &Hub) {
    if let Err(e) = hub.store.hub_alive(&hub.id).await {
        tracing::warn!(error = %e, hub_id = %hub.id, "cannot record replica liveness");
    }
    match hub.store.release_dead_hubs(&ago_str(DEAD_AFTER)).await {
        Ok(0) => {}
        Ok(n) => tracing::info!(agents = n, "released agents of replicas that stopped"),
        Err(e) => tracing::warn!(error = %e, "cannot release dead replicas"),
    }
    backstop(hub, STALL_AFTER).await;
}

async fn on_message(hub: &Hub, payload: &str) {
    let env: Envelope = match serde_json::from_str(payload) {
        Ok(e) => e,
        Err(e) => {
            tracing::warn!(error = %e, "ignored malformed announcement");
            return;
        }
    };
    if env.origin == hub.id {
        return;
    }
    let result = match env.event {
        Event::Invoke { id } => super::delivery::relay(hub, &id, None).await,
        Event::Stop { id } => super::delivery::relay_stop(hub, &id).await,
        Event::Rotate { id } => super::api::rotate_held(hub, &id).await.map(|_| ()),
        Event::Fires { id } => super::delivery::relay_fire_answers(hub, &id).await,
    };
    if let Err(e) = result {
        tracing::warn!(error = %e, "announcement not handled; the backstop will deliver");
    }
}

/// Redelivers work owed to this replica's agents since before `older_than`.
async fn backstop(hub: &Hub, older_than: Duration) {
    let owed = match hub.store.stalled(&hub.id, &ago_str(older_than), BACKSTOP_BATCH).await {
        Ok(o) => o,
        Err(e) => {
            tracing::warn!(error = %e, "backstop query failed");
            return;
        }
    };
    let mut invocations: std::collections::HashMap<String, HashSet<String>> = Default::default();
    for (instance_id, invoke_id, status) in owed {
        if !hub.agents.is_online(&instance_id) {
            continue;
        }
        match status {
            InvocationStatus::Stopping => super::delivery::restop(hub, &instance_id, &invoke_id),
            _ => {
                invocations.entry(invoke_id).or_default().insert(instance_id);
            }
        }
    }
    for (invoke_id, instances) in invocations {
        tracing::info!(invoke_id, agents = instances.len(), "redelivering owed invocation");
        if let Err(e) = super::delivery::relay(hub, &invoke_id, Some(&instances)).await {
            tracing::warn!(error = %e, invoke_id, "backstop delivery failed");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn envelope_round_trips_and_is_small() {
        let e = Envelope { origin: "hub-0123456789ab".into(), event: Event::Invoke { id: "t-0123456789abcdef".into() } };
        let s = serde_json::to_string(&e).unwrap();
        assert_eq!(s, r#"{"origin":"hub-0123456789ab","kind":"invoke","id":"t-0123456789abcdef"}"#);
        let back: Envelope = serde_json::from_str(&s).unwrap();
        assert_eq!(back.event, e.event);
        // NOTIFY payloads are limited to 8000 bytes.
        assert!(s.len() < 200);
    }
}
