//! The one delivery path: what is owed to instance X, in its wire form,
//! and the only code that hands invocations and stops to agent sessions.
//!
//! Four triggers use it: the API push after `RunCommand`/`InvokeCommand`,
//! `ModifyInvocationAttribute` (a new revision to every unsettled target)
//! and `StopInvocation` ([`push_new`], [`relay`], [`stop`]); a replica relaying
//! another replica's announcement and the backstop redelivering stalled
//! work ([`relay`], [`relay_stop`]); and an agent reconnecting
//! ([`resync`]). The wire form (with the hub's region) is built here only
//! ([`wire`]), so no trigger can send a different one.

use std::collections::HashSet;

use super::Hub;
use super::store::{InvocationRow, StoreError, WriteOp};
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
