//! CreateCommand, DescribeCommands, ModifyCommand, DeleteCommand.

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use serde_json::{Map, Value, json};

use super::error::ApiError;
use super::invocations::{DEFAULT_TIMEOUT, TIMEOUT_RANGE, decode_content, named};
use super::{Paging, Request};
use crate::hub::store::{CommandRow, now_str};
use crate::lifecycle::CommandType;

fn not_found(id: &str) -> ApiError {
    ApiError::new(axum::http::StatusCode::NOT_FOUND, "InvalidCommandId.NotFound", format!("The specified command \"{id}\" does not exist."))
}

pub async fn create(req: &Request<'_>) -> Result<Value, ApiError> {
    let p = &req.params;
    let name = p.string("Name", 128)?.ok_or_else(|| ApiError::missing("Name"))?;
    let t = named(p, "Type", CommandType::parse_command)?.ok_or_else(|| ApiError::missing("Type"))?;
    // CreateCommand's CommandContent is Base64 unless told otherwise.
    let content = decode_content(p, "CommandContent", "Base64")?;
    let cmd = CommandRow {
        command_id: crate::ids::random("c-", 22),
        name,
        description: p.string("Description", 512)?.unwrap_or_default(),
        command_type: t,
        content,
        working_dir: p.string("WorkingDir", 200)?.unwrap_or_default(),
        timeout_secs: p.int("Timeout", TIMEOUT_RANGE.0, TIMEOUT_RANGE.1)?.unwrap_or(DEFAULT_TIMEOUT),
        enable_parameter: p.bool("EnableParameter")?.unwrap_or(false),
        username: p.string("Username", 255)?.unwrap_or_default(),
        created_at: now_str(),
        visible: true,
        invoke_times: 0,
    };
    req.hub.store.create_command(&cmd).await?;
    Ok(json!({ "CommandId": cmd.command_id }))
}

pub async fn describe(req: &Request<'_>) -> Result<Value, ApiError> {
    let p = &req.params;
    let paging = Paging::from(p, 10, 50)?;
    let (rows, total) =
        req.hub.store.list_commands(p.get("CommandId"), p.get("Name"), named(p, "Type", CommandType::parse)?, paging.page).await?;
    let list: Vec<Value> = rows
        .iter()
        .map(|c| {
            json!({
                "CommandId": c.command_id,
                "Name": c.name,
                "Description": c.description,
                "Type": c.command_type.as_str(),
                "CommandContent": B64.encode(&c.content),
                "WorkingDir": c.working_dir,
                "Timeout": c.timeout_secs,
                "EnableParameter": c.enable_parameter,
                "Username": c.username,
                "CreationTime": c.created_at,
                "InvokeTimes": c.invoke_times,
                "Provider": "",
                "Category": "",
                "Version": 1,
                "Latest": true,
                "ParameterNames": { "ParameterName": crate::exec::params::custom_names(&c.content) },
            })
        })
        .collect();
    let mut out = Map::new();
    out.insert("Commands".into(), json!({ "Command": list }));
    paging.annotate(&mut out, total);
    Ok(Value::Object(out))
}

pub async fn modify(req: &Request<'_>) -> Result<Value, ApiError> {
    let p = &req.params;
    let id = p.require("CommandId")?;
    let Some(mut cmd) = req.hub.store.get_command(id).await?.filter(|c| c.visible) else { return Err(not_found(id)) };
    if let Some(n) = p.string("Name", 128)? {
        cmd.name = n;
    }
    if let Some(d) = p.string("Description", 512)? {
        cmd.description = d;
    }
    if p.get("CommandContent").is_some() {
        cmd.content = decode_content(p, "CommandContent", "Base64")?;
    }
    if let Some(w) = p.string("WorkingDir", 200)? {
        cmd.working_dir = w;
    }
    if let Some(t) = p.int("Timeout", TIMEOUT_RANGE.0, TIMEOUT_RANGE.1)? {
        cmd.timeout_secs = t;
    }
    if let Some(u) = p.string("Username", 255)? {
        cmd.username = u;
    }
    req.hub.store.update_command(&cmd).await?;
    Ok(json!({}))
}

pub async fn delete(req: &Request<'_>) -> Result<Value, ApiError> {
    let id = req.params.require("CommandId")?;
    if !req.hub.store.delete_command(id).await? {
        return Err(not_found(id));
    }
    Ok(json!({}))
}
