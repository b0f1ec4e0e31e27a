//! deckhand extensions managing stored AccessKeys (issue #18):
//! `CreateAccessKey`, `DescribeAccessKeys`, `DisableAccessKey`,
//! `EnableAccessKey`, `DeleteAccessKey`, `SetAccessKeyPolicy`. The secret
//! is returned once, by `CreateAccessKey`, and never shown again.

use serde_json::{Map, Value, json};

use super::error::ApiError;
use super::{Paging, Request};
use crate::hub::authz::Policy;
use crate::hub::store::{AccessKeyRow, now_str};

fn policy_param(req: &Request<'_>) -> Result<Option<String>, ApiError> {
    let Some(doc) = req.params.get("PolicyDocument") else { return Ok(None) };
    Policy::parse(doc).map_err(|e| ApiError::invalid("PolicyDocument", e))?;
    Ok(Some(doc.to_string()))
}

fn key_not_found(id: &str) -> ApiError {
    ApiError::new(
        axum::http::StatusCode::NOT_FOUND,
        "InvalidAccessKeyId.NotFound",
        format!("The specified access key \"{id}\" does not exist."),
    )
}

pub async fn create(req: &Request<'_>) -> Result<Value, ApiError> {
    let description = req.params.string("Description", 256)?.unwrap_or_default();
    let policy = policy_param(req)?.unwrap_or_default();
    // 64 bits of id (unique, not secret); 256 bits of secret.
    let key_id = format!("LTAIdh{:016x}", rand::random::<u64>());
    let secret = crate::hub::agents::new_token();
    let now = now_str();
    let row = AccessKeyRow {
        key_id: key_id.clone(),
        secret: crate::hub::sealed::to_store(req.hub.config.secrets.as_deref(), &secret).map_err(ApiError::internal)?,
        description,
        enabled: true,
        policy,
        created_at: now.clone(),
        updated_at: now,
    };
    req.hub.store.create_access_key(&row).await?;
    tracing::info!(access_key_id = %key_id, "access key created");
    Ok(json!({ "AccessKeyId": key_id, "AccessKeySecret": secret }))
}

pub async fn describe(req: &Request<'_>) -> Result<Value, ApiError> {
    let paging = Paging::from(&req.params, 50, 100)?;
    let (rows, total) = match req.params.get("UserAccessKeyId") {
        Some(id) => {
            let row = req.hub.store.get_access_key(id).await?;
            let n = row.is_some() as i64;
            (row.into_iter().collect(), n)
        }
        None => req.hub.store.list_access_keys(paging.page).await?,
    };
    let list: Vec<Value> = rows
        .into_iter()
        .map(|k| {
            json!({
                "AccessKeyId": k.key_id,
                "Description": k.description,
                "Status": if k.enabled { "Active" } else { "Inactive" },
                "PolicyDocument": k.policy,
                "CreateTime": k.created_at,
                "UpdateTime": k.updated_at,
            })
        })
        .collect();
    let mut out = Map::new();
    out.insert("AccessKeys".into(), json!({ "AccessKey": list }));
    paging.annotate(&mut out, total);
    Ok(Value::Object(out))
}

async fn set_enabled(req: &Request<'_>, enabled: bool) -> Result<Value, ApiError> {
    let id = req.params.require("UserAccessKeyId")?;
    if !req.hub.store.set_access_key_enabled(id, enabled).await? {
        return Err(key_not_found(id));
    }
    tracing::info!(access_key_id = %id, enabled, "access key status changed");
    Ok(json!({}))
}

pub async fn disable(req: &Request<'_>) -> Result<Value, ApiError> {
    set_enabled(req, false).await
}

pub async fn enable(req: &Request<'_>) -> Result<Value, ApiError> {
    set_enabled(req, true).await
}

pub async fn delete(req: &Request<'_>) -> Result<Value, ApiError> {
    let id = req.params.require("UserAccessKeyId")?;
    if !req.hub.store.delete_access_key(id).await? {
        return Err(key_not_found(id));
    }
    tracing::info!(access_key_id = %id, "access key deleted");
    Ok(json!({}))
}

/// Replaces a key's policy; an empty `PolicyDocument` removes it (the
/// key then has no access).
pub async fn set_policy(req: &Request<'_>) -> Result<Value, ApiError> {
    let id = req.params.require("UserAccessKeyId")?;
    let doc = match req.params.get("PolicyDocument") {
        None => return Err(ApiError::missing("PolicyDocument")),
        Some("") => String::new(),
        Some(_) => policy_param(req)?.unwrap_or_default(),
    };
    if !req.hub.store.set_access_key_policy(id, &doc).await? {
        return Err(key_not_found(id));
    }
    tracing::info!(access_key_id = %id, "access key policy set");
    Ok(json!({}))
}
