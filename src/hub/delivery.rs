//! The one delivery path: what is owed to instance X, in its wire form,
//! and the only code that hands invocations and stops to agent sessions.
//!
//! Four triggers use it: the API push after `RunCommand`/`InvokeCommand`,
//! `ModifyInvocationAttribute` (a new revision to every unsettled target)
//! and `StopInvocation` ([`push_new`], [`relay`], [`stop`]); a replica relaying
//! another replica's announcement and the backstop redelivering stalled
//! work ([`relay`], [`relay_stop`]); and an agent reconnecting
//! ([`resync`]). The wire form (with the hub's region) is built here only
//! ([`wire`]), so no trigger can send a different one. Fire decisions of
//! per-fire rollout windows (docs/fleet.md) go out here too: the answer
//! to the asking agent ([`fire_reply`]) and those a settle or the backstop
//! made for others ([`fire_answers`], [`relay_fire_answers`]).

use std::collections::HashSet;

use super::Hub;
use super::store::{FireAnswer, FireDecision, FireOutcome, InvocationRow, StoreError, WriteOp};
use crate::lifecycle::{ErrorCode, InvocationStatus};
use crate::protocol::{FILE_PROTOCOL, HubMsg, Invocation, RecordReport};

/// The wire form of a stored invocation for one instance of this hub.
pub fn wire(hub: &Hub, inv: &InvocationRow, instance_name: String) -> Invocation {
    let mut wire = super::store::to_wire(inv, instance_name);
    wire.region_id = hub.config.region_id.clone();
    wire
}

fn send_invoke(hub: &Hub, instance_id: &str, invocation: Invocation) -> bool {
    if invocation.file.is_some() && hub.agents.protocol(instance_id).is_some_and(|p| p < FILE_PROTOCOL) {
        let writer = hub.writer.clone();
        let (instance_id, invoke_id) = (instance_id.to_string(), invocation.invoke_id);
        tokio::spawn(async move { settle_old_agent(&writer, instance_id, invoke_id).await });
        return false;
    }
    hub.agents.send(instance_id, HubMsg::Invoke { invocation: Box::new(invocation) })
}

/// An agent older than file deliveries would not understand one: its
/// target is settled `Invalid` / `ClientNeedUpgrade` (Cloud Assistant's
/// code for exactly this) instead of being sent something it cannot do.
async fn settle_old_agent(writer: &super::writer::Writer, instance_id: String, invoke_id: String) {
    let report = RecordReport {
        invoke_id: invoke_id.clone(),
        record_seq: 0,
        status: InvocationStatus::Invalid,
        exit_code: None,
        output_b64: String::new(),
        dropped: 0,
        error_code: Some(ErrorCode::ClientNeedUpgrade),
        error_info: format!("the agent speaks protocol 1; file deliveries need protocol {FILE_PROTOCOL} (upgrade deckhand-agent)"),
        start_time: String::new(),
        finish_time: super::store::now_str(),
    };
    match writer.write(WriteOp::Report { instance_id: instance_id.clone(), report }).await {
        Ok(_) => tracing::info!(invoke_id, instance_id, "file delivery refused for an agent too old to take it"),
        // Still Pending: the next resync or the backstop tries again.
        Err(e) => tracing::warn!(invoke_id, instance_id, error = %e, "cannot settle a file delivery for an old agent"),
    }
}

fn send_stop(hub: &Hub, instance_id: &str, invoke_id: &str) -> bool {
    hub.agents.send(instance_id, HubMsg::Stop { invoke_id: invoke_id.to_string() })
}

/// A just-created invocation to those of its targets connected here;
/// the others get it on reconnect, from another replica, or by the backstop.
pub fn push_new(hub: &Hub, inv: &InvocationRow, targets: &[(String, String)]) {
    for (id, name) in targets {
        send_invoke(hub, id, wire(hub, inv, name.clone()));
    }
}

/// A stop to the agents (connected here) of the targets the store marked.
pub fn stop(hub: &Hub, invoke_id: &str, instances: &[String]) {
    for id in instances {
        send_stop(hub, id, invoke_id);
    }
}

/// A stored invocation to the agents this replica holds (every unsettled
/// target, or only `only`). The invocation is read once, not per target.
pub async fn relay(hub: &Hub, invoke_id: &str, only: Option<&HashSet<String>>) -> Result<(), StoreError> {
    let Some(inv) = hub.store.get_invocation(invoke_id).await? else {
        return Ok(());
    };
    for d in hub.store.deliveries(invoke_id).await? {
        let instance_id = d.instance_id;
        if only.is_some_and(|o| !o.contains(&instance_id)) || !hub.agents.is_online(&instance_id) {
            continue;
        }
        if send_invoke(hub, &instance_id, wire(hub, &inv, d.instance_name)) {
            tracing::debug!(invoke_id, instance_id, "pushed invocation announced by another replica");
        }
    }
    Ok(())
}

/// Stops owed for one invocation (targets `Stopping`) to the agents held here.
pub async fn relay_stop(hub: &Hub, invoke_id: &str) -> Result<(), StoreError> {
    for d in hub.store.deliveries(invoke_id).await? {
        if d.status == InvocationStatus::Stopping {
            send_stop(hub, &d.instance_id, invoke_id);
        }
    }
    Ok(())
}

/// A stop owed to one agent held here (the backstop).
pub fn restop(hub: &Hub, instance_id: &str, invoke_id: &str) {
    send_stop(hub, instance_id, invoke_id);
}

/// Everything owed to an agent that just connected, in order: each
/// unsettled invocation, followed by its stop when one is owed.
pub async fn resync(hub: &Hub, instance_id: &str) -> Result<Vec<HubMsg>, StoreError> {
    let mut out = Vec::new();
    let too_old_for_files = hub.agents.protocol(instance_id).is_some_and(|p| p < FILE_PROTOCOL);
    for owed in hub.store.undelivered_for(instance_id).await? {
        if too_old_for_files && owed.invocation.file.is_some() {
            settle_old_agent(&hub.writer, instance_id.to_string(), owed.invocation.invoke_id).await;
            continue;
        }
        let mut invocation = owed.invocation;
        invocation.region_id = hub.config.region_id.clone();
        let invoke_id = invocation.invoke_id.clone();
        out.push(HubMsg::Invoke { invocation: Box::new(invocation) });
        if owed.stop {
            out.push(HubMsg::Stop { invoke_id });
        }
    }
    Ok(out)
}

fn fire_msg(a: FireAnswer) -> HubMsg {
    let (granted, error_code, error_info) = match a.decision {
        FireDecision::Granted => (true, String::new(), String::new()),
        FireDecision::Denied { code, info } => (false, code.as_str().to_string(), info),
    };
    HubMsg::FireAnswer { invoke_id: a.invoke_id, record_seq: a.record_seq, granted, error_code, error_info }
}

/// What an agent's own fire request is answered with: the decision, an
/// error when it is not a target, nothing while the fire waits (the
/// grant comes later through [`fire_answers`]).
pub fn fire_reply(instance_id: &str, invoke_id: &str, record_seq: u32, outcome: FireOutcome) -> Option<HubMsg> {
    match outcome {
        FireOutcome::Waiting => None,
        FireOutcome::Decided(decision) => {
            if let FireDecision::Denied { code, .. } = &decision {
                tracing::debug!(invoke_id, instance_id, record_seq, code = %code, "fire denied");
            }
            Some(fire_msg(FireAnswer { invoke_id: invoke_id.to_string(), instance_id: instance_id.to_string(), record_seq, decision }))
        }
        FireOutcome::NotATarget => {
            let shown = super::edge::shown_id(invoke_id);
            if let Some(suppressed) = super::edge::peer_warnings().allow() {
                tracing::warn!(
                    instance_id,
                    invoke_id = shown,
                    suppressed,
                    "fire request for an invocation this instance is not a target of"
                );
            }
            let message = format!("instance {instance_id} is not a target of {shown}");
            Some(HubMsg::Error { code: "NotATarget".into(), message, fatal: false })
        }
    }
}

/// Fire decisions to the agents held here; the rest are announced to
/// the other replicas (each relays those of its own agents).
pub async fn fire_answers(hub: &Hub, answers: Vec<FireAnswer>) {
    let mut elsewhere = std::collections::BTreeSet::new();
    for a in answers {
        if hub.agents.is_online(&a.instance_id) {
            let (invoke_id, instance_id) = (a.invoke_id.clone(), a.instance_id.clone());
            if hub.agents.send(&instance_id, fire_msg(a)) {
                tracing::debug!(invoke_id, instance_id, "fire decision sent");
            }
        } else {
            elsewhere.insert(a.invoke_id);
        }
    }
    for id in elsewhere {
        super::cluster::announce(hub, super::cluster::Event::Fires { id }).await;
    }
}

/// How far back a replica relays another's fire decisions: announcements
/// arrive within a second; an agent that misses one asks again.
const FIRE_RELAY_WINDOW: std::time::Duration = std::time::Duration::from_secs(30);

/// Another replica decided fires of `invoke_id`: the recent decisions to
/// the agents held here (a repeated answer is dropped by the agent).
pub async fn relay_fire_answers(hub: &Hub, invoke_id: &str) -> Result<(), StoreError> {
    let since = super::store::ago_str(FIRE_RELAY_WINDOW);
    for a in hub.store.recent_fire_answers(invoke_id, &since).await? {
        if hub.agents.is_online(&a.instance_id) {
            let instance_id = a.instance_id.clone();
            hub.agents.send(&instance_id, fire_msg(a));
        }
    }
    Ok(())
}
