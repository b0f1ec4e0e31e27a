//! Sends what rollout windows release (issue #16, docs/fleet.md).
//!
//! The window itself lives in the store and moves in the transaction that
//! settles a target (`store::sql::window`); this task only turns each
//! committed release into deliveries, through `hub::delivery` (to the
//! agents held here) and a replica announcement (to those held
//! elsewhere). A periodic pass over every open window is the backstop: it
//! resumes windows after a restart, releases after `BatchWait`, and
//! catches releases another replica's handle made.
//!
//! Per-fire windows of periodic invocations (`store::sql::fires`) go the
//! same way: decisions announced by the store after commit, and the
//! backstop pass over fire windows with a fire waiting.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::broadcast::error::RecvError;

use super::Hub;
use super::store::Released;

/// How often every open window is looked at. Short: it is also what ends
/// a `BatchWait` (in whole seconds).
const BACKSTOP_EVERY: Duration = Duration::from_secs(1);

pub async fn run(hub: Arc<Hub>) {
    let mut released = hub.store.released();
    let mut fires = hub.store.fire_answers();
    let mut tick = tokio::time::interval(BACKSTOP_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = hub.shutdown.cancelled() => return,
            r = released.recv() => match r {
                Ok(r) => send(&hub, r).await,
                // Missed announcements: the next backstop pass finds the
                // targets (they are released in the store, undelivered).
                Err(RecvError::Lagged(n)) => tracing::warn!(missed = n, "rollout releases lagged; the backstop resends"),
                Err(RecvError::Closed) => return,
            },
            f = fires.recv() => match f {
                Ok(answers) => super::delivery::fire_answers(&hub, answers).await,
                // Missed: agents ask again for fires still waiting.
                Err(RecvError::Lagged(n)) => tracing::warn!(missed = n, "fire decisions lagged; agents ask again"),
                Err(RecvError::Closed) => return,
            },
            _ = tick.tick() => {
                match hub.store.advance_windows().await {
                    Ok(list) => {
                        for r in list {
                            send(&hub, r).await;
                        }
                    }
                    Err(e) => tracing::warn!(error = %e, "advancing rollout windows"),
                }
                match hub.store.advance_fires().await {
                    Ok(answers) => super::delivery::fire_answers(&hub, answers).await,
                    Err(e) => tracing::warn!(error = %e, "advancing fire windows"),
                }
            }
        }
    }
}

/// Released targets to their agents: here directly, elsewhere through
/// the replica that holds them.
async fn send(hub: &Hub, r: Released) {
    let only: HashSet<String> = r.instances.iter().cloned().collect();
    if let Err(e) = super::delivery::relay(hub, &r.invoke_id, Some(&only)).await {
        tracing::warn!(invoke_id = %r.invoke_id, error = %e, "sending released targets");
    }
    super::cluster::announce(hub, super::cluster::Event::Invoke { id: r.invoke_id.clone() }).await;
    tracing::debug!(invoke_id = %r.invoke_id, released = r.instances.len(), "released targets sent");
}
