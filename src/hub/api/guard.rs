//! The authorization hook of every API call (issue #18): gathers the
//! facts a policy can name (the instances a call touches with their tags,
//! a saved command's type and run-as user) from the parameters and the
//! store, and asks the pure evaluator in `hub::authz`.
//!
//! A refusal is Alibaba's `Forbidden.RAM` (HTTP 403) naming the action and,
//! when the refusal is about one, the instance.

use std::collections::HashMap;

use axum::http::StatusCode;

use super::error::ApiError;
use super::params::Params;
use crate::hub::Hub;
use crate::hub::authz::{self, Access, Principal, Target};
use crate::lifecycle::CommandType;

/// At most this many targets of one invocation are checked when a call
/// names the invocation rather than instances (StopInvocation and the
/// Describe calls by `InvokeId`): an invocation's target list is bounded
/// by the API's list limit, so this covers all of them.
const MAX_INVOCATION_TARGETS: i64 = 1000;

/// The instance ids a call names, in any of the API's spellings.
pub fn named_instances(params: &Params) -> Result<Vec<String>, ApiError> {
    let mut ids = params.list("InstanceId")?;
    ids.extend(params.list("ResourceId")?);
    let mut seen = std::collections::HashSet::new();
    ids.retain(|i| seen.insert(i.clone()));
    Ok(ids)
}

/// Allows the call or refuses it with `Forbidden.RAM`. Configured keys
/// pass without a store read.
///
/// A run that targets by selector (`ResourceTag.N`, `Target*`) names no
/// instance yet: its check waits until the handler has resolved the
/// selector (`authorize_resolved`, called by `fleet::resolve`), so a key
/// limited to `env=staging` can target `env=staging` by tag.
pub async fn authorize(hub: &Hub, principal: &Principal, action: &str, params: &Params) -> Result<(), ApiError> {
    if matches!(action, "RunCommand" | "InvokeCommand" | "SendFile") && super::fleet::Selector::from_params(params)?.is_some() {
        return Ok(());
    }
    authorize_with(hub, principal, action, params, &[]).await
}

/// For handlers that resolve their targets themselves (targeting by tag,
/// fleet selections): the call is decided again with the resolved
/// instances added, so each must be allowed for this key (with the call's
/// command type, command and user) or the whole call is refused naming the
/// first that is not. Call it after resolving, before creating anything.
pub async fn authorize_resolved(
    req: &super::Request<'_>,
    action: &str,
    resolved: &[crate::hub::store::InstanceRow],
) -> Result<(), ApiError> {
    authorize_with(req.hub, &req.principal, action, &req.params, resolved).await
}

async fn authorize_with(
    hub: &Hub,
    principal: &Principal,
    action: &str,
    params: &Params,
    resolved: &[crate::hub::store::InstanceRow],
) -> Result<(), ApiError> {
    if matches!(principal, Principal::Configured { .. }) {
        return Ok(());
    }
    let mut ids = named_instances(params)?;
    // A call naming an invocation but no instance touches its targets.
    if ids.is_empty()
        && matches!(action, "StopInvocation" | "DescribeInvocationResults" | "DescribeInvocations" | "DescribeSendFileResults")
        && let Some(invoke_id) = params.get("InvokeId")
    {
        ids = hub.store.some_targets(invoke_id, MAX_INVOCATION_TARGETS, false).await?.into_iter().map(|t| t.instance_id).collect();
    }
    let tags: HashMap<String, Vec<(String, String)>> = if ids.is_empty() {
        HashMap::new()
    } else {
        let page = crate::hub::store::Page { offset: 0, limit: ids.len() as i64 };
        hub.store.list_instances(&ids, None, None, page).await?.0.into_iter().map(|r| (r.instance_id, r.tags)).collect()
    };
    let none: Vec<(String, String)> = Vec::new();
    let mut targets: Vec<Target<'_>> = ids.iter().map(|id| Target { id, tags: tags.get(id).unwrap_or(&none) }).collect();
    targets.extend(resolved.iter().map(|r| Target { id: &r.instance_id, tags: &r.tags }));
    let command_id = params.get("CommandId");
    let (mut command_type, mut username) = (None, params.get("Username").map(str::to_string));
    match action {
        "RunCommand" => {
            command_type = params.get("Type").and_then(|t| CommandType::parse(t).ok());
            username.get_or_insert_with(String::new);
        }
        "InvokeCommand" => {
            if let Some(id) = command_id
                && let Some(cmd) = hub.store.get_command(id).await?
            {
                command_type = Some(cmd.command_type);
                username.get_or_insert(cmd.username);
            }
            username.get_or_insert_with(String::new);
        }
        _ => {}
    }
    let access = Access { action, targets, command_type, command_id, username: username.as_deref() };
    authz::check(principal, &access).map_err(|d| {
        tracing::info!(access_key_id = %d.key_id, action = %d.action, instance = d.instance.as_deref().unwrap_or(""), "API call refused by policy");
        forbidden(&d)
    })
}

/// Alibaba's answer to a RAM refusal, with the action (and instance) named.
pub fn forbidden(d: &authz::Denied) -> ApiError {
    ApiError::new(
        StatusCode::FORBIDDEN,
        "Forbidden.RAM",
        format!("User not authorized to operate on the specified resource, or this API doesn't support RAM. {d}."),
    )
}
