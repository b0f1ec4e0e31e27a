//! Activations, managed instances, Cloud Assistant status and tags.

use std::net::IpAddr;

use serde_json::{Map, Value, json};

use super::error::ApiError;
use super::{Paging, Request};
use crate::hub::agents::hash_token;
use crate::hub::store::{ActivationRow, InstanceRow, now_str};
use crate::hub::updates::AgentUpdateState;

/// Cloud Assistant bounds: 1..=1000 instances per activation, TTL up to 876,000 h.
const MAX_ACTIVATION_INSTANCES: i64 = 1000;
const MAX_TTL_HOURS: i64 = 876_000;

pub fn activation_expired(a: &ActivationRow) -> bool {
    let Ok(created) = chrono::DateTime::parse_from_rfc3339(&a.created_at) else { return true };
    created + chrono::Duration::hours(a.time_to_live_hours) < chrono::Utc::now()
}

/// `a.b.c.d/n` (or IPv6) membership; a malformed range admits nobody.
pub fn ip_in_range(ip: &IpAddr, range: &str) -> bool {
    let (net, bits) = match range.split_once('/') {
        Some((n, b)) => (n, b.parse::<u32>().ok()),
        None => (range, None),
    };
    let Ok(net) = net.parse::<IpAddr>() else { return false };
    match (ip, net) {
        (IpAddr::V4(a), IpAddr::V4(n)) => {
            let bits = bits.unwrap_or(32).min(32);
            let mask = if bits == 0 { 0 } else { u32::MAX << (32 - bits) };
            u32::from(*a) & mask == u32::from(n) & mask
        }
        (IpAddr::V6(a), IpAddr::V6(n)) => {
            let bits = bits.unwrap_or(128).min(128);
            let mask = if bits == 0 { 0 } else { u128::MAX << (128 - bits) };
            u128::from(*a) & mask == u128::from(n) & mask
        }
        _ => false,
    }
}

fn not_found_activation(id: &str) -> ApiError {
    ApiError::new(
        axum::http::StatusCode::NOT_FOUND,
        "InvalidActivationId.NotFound",
        format!("The specified activation \"{id}\" does not exist."),
    )
}

fn not_found_instance(id: &str) -> ApiError {
    ApiError::new(axum::http::StatusCode::NOT_FOUND, "InvalidInstance.NotFound", format!("The specified instance \"{id}\" does not exist."))
}

pub async fn create_activation(req: &Request<'_>) -> Result<Value, ApiError> {
    let p = &req.params;
    let range = p.string("IpAddressRange", 64)?.unwrap_or_else(|| "0.0.0.0/0".into());
    if range.split('/').next().and_then(|n| n.parse::<IpAddr>().ok()).is_none() {
        return Err(ApiError::invalid("IpAddressRange", format!("{range:?} is not an address or CIDR range")));
    }
    let row = ActivationRow {
        activation_id: format!("{}", uuid::Uuid::new_v4()).to_uppercase(),
        code_hash: String::new(),
        instance_name: p.string("InstanceName", 50)?.unwrap_or_default(),
        description: p.string("Description", 100)?.unwrap_or_default(),
        instance_count: p.int("InstanceCount", 1, MAX_ACTIVATION_INSTANCES)?.unwrap_or(10),
        time_to_live_hours: p.int("TimeToLiveInHours", 1, MAX_TTL_HOURS)?.unwrap_or(4),
        ip_address_range: range,
        created_at: now_str(),
        ..Default::default()
    };
    let code = format!("a-{}", uuid::Uuid::new_v4().simple());
    let row = ActivationRow { code_hash: hash_token(&code), ..row };
    req.hub.store.create_activation(&row).await?;
    Ok(json!({ "ActivationId": row.activation_id, "ActivationCode": code }))
}

fn activation_json(a: &ActivationRow) -> Value {
    json!({
        "ActivationId": a.activation_id,
        "InstanceName": a.instance_name,
        "Description": a.description,
        "InstanceCount": a.instance_count,
        "RegisteredCount": a.registered_count,
        "DeregisteredCount": a.deregistered_count,
        "TimeToLiveInHours": a.time_to_live_hours,
        "IpAddressRange": a.ip_address_range,
        "CreationTime": a.created_at,
        "Disabled": a.disabled,
    })
}

pub async fn describe_activations(req: &Request<'_>) -> Result<Value, ApiError> {
    let paging = Paging::from(&req.params, 10, 50)?;
    let (rows, total) = req.hub.store.list_activations(req.params.get("ActivationId"), paging.page).await?;
    let mut out = Map::new();
    out.insert("ActivationList".into(), json!({ "Activation": rows.iter().map(activation_json).collect::<Vec<_>>() }));
    paging.annotate(&mut out, total);
    Ok(Value::Object(out))
}

pub async fn disable_activation(req: &Request<'_>) -> Result<Value, ApiError> {
    let id = req.params.require("ActivationId")?;
    if !req.hub.store.set_activation_disabled(id).await? {
        return Err(not_found_activation(id));
    }
    let a = req.hub.store.get_activation(id).await?.ok_or_else(|| not_found_activation(id))?;
    Ok(json!({ "Activation": activation_json(&a) }))
}

pub async fn delete_activation(req: &Request<'_>) -> Result<Value, ApiError> {
    let id = req.params.require("ActivationId")?;
    let Some(a) = req.hub.store.get_activation(id).await? else { return Err(not_found_activation(id)) };
    if !req.hub.store.delete_activation(id).await? {
        return Err(ApiError::new(
            axum::http::StatusCode::FORBIDDEN,
            "Activation.InUse",
            format!("Activation \"{id}\" still has registered instances; deregister them first."),
        ));
    }
    Ok(json!({ "Activation": activation_json(&a) }))
}

fn instance_json(i: &InstanceRow) -> Value {
    // The store knows which replica holds each agent; this one may not.
    let online = i.online;
    json!({
        "InstanceId": i.instance_id,
        "InstanceName": i.instance_name,
        "Hostname": i.facts.hostname,
        "OsType": i.facts.os_type,
        "OsVersion": i.facts.os_name,
        "KernelVersion": i.facts.kernel,
        "Arch": i.facts.arch,
        "CpuCount": i.facts.cpu_count,
        "MemoryBytes": i.facts.memory_bytes,
        "AgentVersion": i.facts.agent_version,
        // deckhand extension: the agent cannot write its journal (state dir
        // full…); results still arrive. null when healthy (docs/journal.md).
        "AgentJournalDegraded": i.facts.journal_degraded,
        "Connected": online,
        "Status": if online { "Online" } else { "Offline" },
        "LastSeen": i.last_seen,
        "InternetIp": i.ip,
        "IntranetIp": i.ip,
        "RegistrationTime": i.registered_at,
        "ActivationId": i.activation_id,
        "Tags": { "Tag": i.tags.iter().map(|(k, v)| json!({"TagKey": k, "TagValue": v})).collect::<Vec<_>>() },
    })
}

pub async fn describe_managed_instances(req: &Request<'_>) -> Result<Value, ApiError> {
    let paging = Paging::from(&req.params, 10, 50)?;
    let ids = req.params.list("InstanceId")?;
    // deckhand extension: `Connected=true|false` filters in the store, so a
    // page of 10,000 instances is still one page (docs/api.md).
    let online = req.params.bool("Connected")?;
    let (rows, total) = req.hub.store.list_instances(&ids, req.params.get("InstanceName"), online, paging.page).await?;
    let mut out = Map::new();
    out.insert("Instances".into(), json!({ "Instance": rows.iter().map(instance_json).collect::<Vec<_>>() }));
    paging.annotate(&mut out, total);
    Ok(Value::Object(out))
}

/// deckhand extension: issue a new credential to connected agents. The
/// old one keeps working until the agent confirms it stored the new one,
/// so rotation never locks an agent out.
pub async fn rotate_credential(req: &Request<'_>) -> Result<Value, ApiError> {
    let ids = req.params.list("InstanceId")?;
    if ids.is_empty() {
        return Err(ApiError::missing("InstanceId"));
    }
    let mut rotated = Vec::new();
    let mut offline = Vec::new();
    for id in &ids {
        let Some(inst) = req.hub.store.get_instance(id).await? else { return Err(not_found_instance(id)) };
        if rotate_held(req.hub, id).await? {
            rotated.push(id.clone());
        } else if inst.online {
            // Another replica holds this agent's socket: it issues the credential.
            crate::hub::cluster::announce(req.hub, crate::hub::cluster::Event::Rotate { id: id.clone() }).await;
            rotated.push(id.clone());
        } else {
            offline.push(id.clone());
        }
    }
    Ok(json!({ "RotatedInstances": { "InstanceId": rotated }, "OfflineInstances": { "InstanceId": offline } }))
}

/// Issues a new credential to an agent whose socket this replica holds;
/// false when it holds none for `id`.
pub async fn rotate_held(hub: &crate::hub::Hub, id: &str) -> Result<bool, crate::hub::store::StoreError> {
    if !hub.agents.is_online(id) {
        return Ok(false);
    }
    let token = crate::hub::agents::new_token();
    hub.store.set_pending_token(id, &hash_token(&token)).await?;
    Ok(hub.agents.send(id, crate::protocol::HubMsg::RotateCredential { token }))
}

pub async fn deregister(req: &Request<'_>) -> Result<Value, ApiError> {
    let id = req.params.require("InstanceId")?;
    if !req.hub.store.deregister_instance(id).await? {
        return Err(not_found_instance(id));
    }
    Ok(json!({}))
}

pub async fn cloud_assistant_status(req: &Request<'_>) -> Result<Value, ApiError> {
    let paging = Paging::from(&req.params, 10, 50)?;
    let ids = req.params.list("InstanceId")?;
    let (rows, total) = req.hub.store.list_instances(&ids, None, None, paging.page).await?;
    // deckhand extension: each agent's self-update, one query for the page.
    let updates = match &req.hub.config.agent_updates {
        Some(u) => u.states_of(req.hub.store.as_ref(), &rows.iter().map(|i| i.instance_id.clone()).collect::<Vec<_>>()).await,
        None => Vec::new(),
    };
    let list: Vec<Value> = rows
        .iter()
        .map(|i| {
            let online = i.online;
            let mut v = json!({
                "InstanceId": i.instance_id,
                "CloudAssistantStatus": if online { "true" } else { "false" },
                "CloudAssistantVersion": i.facts.agent_version,
                "LastHeartbeatTime": i.last_seen,
                "OSType": i.facts.os_type,
                "SupportSessionManager": false,
            });
            let update = updates.iter().find(|(id, _)| *id == i.instance_id).map(|(_, s)| s.clone());
            if let (Some(update), Some(obj)) = (update, v.as_object_mut()) {
                let shown = match update {
                    AgentUpdateState::InProgress { version } => json!({ "Status": "InProgress", "Version": version }),
                    AgentUpdateState::Failed { version, error } => json!({ "Status": "Failed", "Version": version, "Error": error }),
                };
                obj.insert("DeckhandAgentUpdate".into(), shown);
            }
            v
        })
        .collect();
    let mut out = Map::new();
    out.insert("InstanceCloudAssistantStatusSet".into(), json!({ "InstanceCloudAssistantStatus": list }));
    paging.annotate(&mut out, total);
    Ok(Value::Object(out))
}

fn check_resource_type(req: &Request<'_>) -> Result<(), ApiError> {
    match req.params.get("ResourceType") {
        Some(t) if t.eq_ignore_ascii_case("instance") || t.eq_ignore_ascii_case("managedinstance") => Ok(()),
        Some(t) => Err(ApiError::invalid("ResourceType", format!("{t:?}: only instance tags are supported"))),
        None => Err(ApiError::missing("ResourceType")),
    }
}

pub async fn tag_resources(req: &Request<'_>) -> Result<Value, ApiError> {
    check_resource_type(req)?;
    let ids = req.params.list("ResourceId")?;
    let tags = req.params.tags("Tag")?;
    if ids.is_empty() {
        return Err(ApiError::missing("ResourceId"));
    }
    for id in &ids {
        if req.hub.store.get_instance(id).await?.is_none() {
            return Err(not_found_instance(id));
        }
    }
    for id in &ids {
        req.hub.store.set_tags(id, &tags).await?;
    }
    Ok(json!({}))
}

pub async fn untag_resources(req: &Request<'_>) -> Result<Value, ApiError> {
    check_resource_type(req)?;
    let ids = req.params.list("ResourceId")?;
    let keys = req.params.list("TagKey")?;
    for id in &ids {
        req.hub.store.remove_tags(id, &keys).await?;
    }
    Ok(json!({}))
}

pub async fn list_tag_resources(req: &Request<'_>) -> Result<Value, ApiError> {
    check_resource_type(req)?;
    let ids = req.params.list("ResourceId")?;
    let want = req.params.tags("Tag")?;
    let (rows, _) = req.hub.store.list_instances(&ids, None, None, crate::hub::store::Page { offset: 0, limit: 1000 }).await?;
    let mut list = Vec::new();
    for i in rows {
        for (k, v) in &i.tags {
            if want.is_empty() || want.iter().any(|(wk, wv)| wk == k && (wv.is_empty() || wv == v)) {
                list.push(json!({ "ResourceId": i.instance_id, "ResourceType": "instance", "TagKey": k, "TagValue": v }));
            }
        }
    }
    Ok(json!({ "TagResources": { "TagResource": list }, "NextToken": "" }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn activation_expiry() {
        let mut a = ActivationRow { time_to_live_hours: 4, created_at: now_str(), ..Default::default() };
        assert!(!activation_expired(&a));
        a.created_at = (chrono::Utc::now() - chrono::Duration::hours(5)).format("%Y-%m-%dT%H:%M:%SZ").to_string();
        assert!(activation_expired(&a));
        a.created_at = "garbage".into();
        assert!(activation_expired(&a), "an unreadable creation time never admits anyone");
    }

    #[test]
    fn cidr_membership() {
        let ip: IpAddr = "10.1.2.3".parse().unwrap();
        assert!(ip_in_range(&ip, "10.0.0.0/8"));
        assert!(!ip_in_range(&ip, "192.168.0.0/16"));
        assert!(ip_in_range(&ip, "0.0.0.0/0"));
        assert!(ip_in_range(&ip, "10.1.2.3"));
        assert!(!ip_in_range(&ip, "garbage"));
        assert!(ip_in_range(&"::1".parse().unwrap(), "::1/128"));
    }
}
