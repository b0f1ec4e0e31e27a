//! RunCommand, InvokeCommand, DescribeInvocations, DescribeInvocationResults,
//! StopInvocation.

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use serde_json::{Map, Value, json};

use super::error::ApiError;
use super::params::Params;
use super::{Paging, Request};
use crate::hub::store::{CommandRow, InvocationFilter, InvocationRow, RecordRow, TargetRow, now_str};
use crate::protocol::{HubMsg, MAX_SCRIPT_BYTES, RecordStatus, aggregate_invocation_status};

pub const COMMAND_TYPES: &[&str] = &["RunShellScript", "RunPowerShellScript", "RunBatScript", "ApplyKubeletReserved"];
pub const REPEAT_MODES: &[&str] = &["Once", "Period", "NextRebootOnly", "EveryReboot"];
/// Seconds. Cloud Assistant documents 10..=86400; we also accept shorter
/// timeouts (down to 1 s), which scripts in tests and health probes want.
pub const TIMEOUT_RANGE: (i64, i64) = (1, 86_400);
pub const DEFAULT_TIMEOUT: i64 = 60;
/// Cloud Assistant allows at most 20 custom parameters per command.
pub const MAX_PARAMETERS: usize = 20;

fn new_id(prefix: &str) -> String {
    format!("{prefix}-{}", &uuid::Uuid::new_v4().simple().to_string()[..22])
}

/// Decodes `CommandContent` per `ContentEncoding` and enforces the 16 KB
/// limit on the raw script (seed 001).
pub fn decode_content(p: &Params, field: &str, default_encoding: &str) -> Result<String, ApiError> {
    let raw = p.require(field)?;
    let encoding = p.get("ContentEncoding").unwrap_or(default_encoding);
    let bytes = match encoding {
        e if e.eq_ignore_ascii_case("Base64") => B64.decode(raw).map_err(|e| ApiError::invalid(field, format!("not valid base64: {e}")))?,
        e if e.eq_ignore_ascii_case("PlainText") => raw.as_bytes().to_vec(),
        other => return Err(ApiError::invalid("ContentEncoding", format!("{other:?} is not PlainText or Base64"))),
    };
    if bytes.len() > MAX_SCRIPT_BYTES {
        return Err(ApiError::invalid(field, format!("script is {} bytes, the limit is {MAX_SCRIPT_BYTES} bytes (16 KB)", bytes.len())));
    }
    String::from_utf8(bytes).map_err(|_| ApiError::invalid(field, "script is not valid UTF-8"))
}

fn command_type(p: &Params) -> Result<String, ApiError> {
    let t = p.require("Type")?;
    if !COMMAND_TYPES.contains(&t) {
        return Err(ApiError::invalid("Type", format!("{t:?} is not one of {}", COMMAND_TYPES.join(", "))));
    }
    Ok(t.to_string())
}

/// Parameters JSON object, bounded; every `{{name}}` used must have a value.
fn parameters(p: &Params, content: &str, enabled: bool, policy: crate::exec::params::ValuePolicy) -> Result<String, ApiError> {
    let map: Map<String, Value> = match p.get("Parameters") {
        None => Map::new(),
        Some(raw) => match serde_json::from_str::<Value>(raw) {
            Ok(Value::Object(m)) => m,
            _ => return Err(ApiError::invalid("Parameters", "must be a JSON object of name to string value")),
        },
    };
    if map.len() > MAX_PARAMETERS {
        return Err(ApiError::invalid("Parameters", format!("{} parameters, the limit is {MAX_PARAMETERS}", map.len())));
    }
    if enabled {
        // The agent's own renderer, built-ins empty: names, count, value
        // types, NUL, size and (under the strict policy) the value rule are
        // all checked here, so nothing the agent would refuse is accepted.
        let builtins = crate::exec::params::Builtins::default();
        crate::exec::params::render_script(content, true, &map, &builtins, policy).map_err(|e| ApiError::invalid("Parameters", e))?;
    }
    Ok(Value::Object(map).to_string())
}

/// RepeatMode and Frequency, validated with the agent's own scheduler
/// grammar so the API refuses what an agent could never fire.
fn repeat(p: &Params, timeout_secs: i64) -> Result<(String, String), ApiError> {
    let mode = p.get("RepeatMode").unwrap_or("Once");
    if !REPEAT_MODES.contains(&mode) {
        return Err(ApiError::invalid("RepeatMode", format!("{mode:?} is not one of {}", REPEAT_MODES.join(", "))));
    }
    let freq = p.string("Frequency", 256)?.unwrap_or_default();
    if mode == "Period" && freq.is_empty() {
        return Err(ApiError::missing("Frequency"));
    }
    if mode == "Period" {
        let timeout = std::time::Duration::from_secs(timeout_secs.max(0) as u64);
        crate::agent::schedule::validate_frequency(&freq, timeout, chrono::Utc::now()).map_err(|e| ApiError::invalid("Frequency", e))?;
    }
    Ok((mode.to_string(), freq))
}

/// Target instances, de-duplicated, each known; with their names (one query).
async fn instances(req: &Request<'_>) -> Result<Vec<(String, String)>, ApiError> {
    let mut ids = req.params.list("InstanceId")?;
    if ids.is_empty() {
        return Err(ApiError::missing("InstanceId"));
    }
    let mut seen = std::collections::HashSet::new();
    ids.retain(|i| seen.insert(i.clone()));
    let page = crate::hub::store::Page { offset: 0, limit: ids.len() as i64 };
    let (rows, _) = req.hub.store.list_instances(&ids, None, page).await?;
    let names: std::collections::HashMap<_, _> = rows.into_iter().map(|r| (r.instance_id, r.instance_name)).collect();
    ids.into_iter()
        .map(|id| match names.get(&id) {
            Some(name) => Ok((id, name.clone())),
            None => Err(ApiError::new(axum::http::StatusCode::NOT_FOUND, "InvalidInstance.NotFound", format!("The specified instance \"{id}\" does not exist."))),
        })
        .collect()
}

/// The answer already given for `token` (ClientToken idempotency), if any.
async fn answer_for_token(req: &Request<'_>, token: &str) -> Result<Option<Value>, ApiError> {
    let Some(existing) = req.hub.store.find_by_client_token(token).await? else { return Ok(None) };
    let inv = req.hub.store.get_invocation(&existing).await?.ok_or_else(|| ApiError::internal("token row vanished"))?;
    Ok(Some(json!({ "CommandId": inv.command_id, "InvokeId": inv.invoke_id })))
}

pub async fn run_command(req: &Request<'_>) -> Result<Value, ApiError> {
    let p = &req.params;
    if let Some(token) = p.string("ClientToken", 64)? {
        if let Some(answer) = answer_for_token(req, &token).await? {
            return Ok(answer);
        }
    }
    let ctype = command_type(p)?;
    let content = decode_content(p, "CommandContent", "PlainText")?;
    let enable_parameter = p.bool("EnableParameter")?.unwrap_or(false);
    let parameters = parameters(p, &content, enable_parameter, req.hub.config.parameter_values)?;
    let timeout = p.int("Timeout", TIMEOUT_RANGE.0, TIMEOUT_RANGE.1)?.unwrap_or(DEFAULT_TIMEOUT);
    let (repeat_mode, frequency) = repeat(p, timeout)?;
    let ids = instances(req).await?;
    let cmd = CommandRow {
        command_id: new_id("c"),
        name: p.string("Name", 128)?.unwrap_or_default(),
        description: p.string("Description", 512)?.unwrap_or_default(),
        command_type: ctype,
        content,
        working_dir: p.string("WorkingDir", 200)?.unwrap_or_default(),
        timeout_secs: timeout,
        enable_parameter,
        username: p.string("Username", 255)?.unwrap_or_default(),
        created_at: now_str(),
        visible: p.bool("KeepCommand")?.unwrap_or(false),
        invoke_times: 0,
    };
    req.hub.store.create_command(&cmd).await?;
    let inv = invocation_for(&cmd, parameters, repeat_mode, frequency, p.get("ClientToken").unwrap_or(""));
    create_and_push(req, inv, &ids).await
}

pub async fn invoke_command(req: &Request<'_>) -> Result<Value, ApiError> {
    let p = &req.params;
    if let Some(token) = p.string("ClientToken", 64)? {
        if let Some(existing) = req.hub.store.find_by_client_token(&token).await? {
            return Ok(json!({ "InvokeId": existing }));
        }
    }
    let command_id = p.require("CommandId")?;
    let Some(mut cmd) = req.hub.store.get_command(command_id).await?.filter(|c| c.visible) else {
        return Err(ApiError::new(axum::http::StatusCode::NOT_FOUND, "InvalidCommandId.NotFound", format!("The specified command \"{command_id}\" does not exist.")));
    };
    let parameters = parameters(p, &cmd.content, cmd.enable_parameter, req.hub.config.parameter_values)?;
    if let Some(t) = p.int("Timeout", TIMEOUT_RANGE.0, TIMEOUT_RANGE.1)? {
        cmd.timeout_secs = t;
    }
    let (repeat_mode, frequency) = repeat(p, cmd.timeout_secs)?;
    if let Some(u) = p.string("Username", 255)? {
        cmd.username = u;
    }
    if let Some(w) = p.string("WorkingDir", 200)? {
        cmd.working_dir = w;
    }
    let ids = instances(req).await?;
    let inv = invocation_for(&cmd, parameters, repeat_mode, frequency, p.get("ClientToken").unwrap_or(""));
    let mut v = create_and_push(req, inv, &ids).await?;
    if let Value::Object(m) = &mut v {
        m.remove("CommandId");
    }
    Ok(v)
}

fn invocation_for(cmd: &CommandRow, parameters: String, repeat_mode: String, frequency: String, token: &str) -> InvocationRow {
    InvocationRow {
        invoke_id: new_id("t"),
        command_id: cmd.command_id.clone(),
        command_name: cmd.name.clone(),
        command_type: cmd.command_type.clone(),
        content: cmd.content.clone(),
        timeout_secs: cmd.timeout_secs,
        working_dir: cmd.working_dir.clone(),
        username: cmd.username.clone(),
        enable_parameter: cmd.enable_parameter,
        parameters,
        repeat_mode,
        frequency,
        created_at: now_str(),
        client_token: token.to_string(),
        stop_requested: false,
    }
}

/// Commits the invocation first, then pushes it to whoever is online;
/// offline targets get it when they connect.
async fn create_and_push(req: &Request<'_>, inv: InvocationRow, targets: &[(String, String)]) -> Result<Value, ApiError> {
    let ids: Vec<String> = targets.iter().map(|(i, _)| i.clone()).collect();
    match req.hub.store.create_invocation(&inv, &ids).await {
        Ok(()) => {}
        // The same ClientToken committed meanwhile (through another replica,
        // or a concurrent retry): answer with that invocation, run nothing new.
        Err(crate::hub::store::StoreError::DuplicateClientToken(token)) => {
            return answer_for_token(req, &token).await?.ok_or_else(|| ApiError::internal("token row vanished"));
        }
        Err(e) => return Err(e.into()),
    }
    for (id, name) in targets {
        req.hub.agents.send(id, HubMsg::Invoke { invocation: req.hub.wire(&inv, name.clone()) });
    }
    crate::hub::cluster::announce(req.hub, crate::hub::cluster::Event::Invoke { id: inv.invoke_id.clone() }).await;
    tracing::info!(invoke_id = %inv.invoke_id, targets = ids.len(), "invocation created");
    Ok(json!({ "CommandId": inv.command_id, "InvokeId": inv.invoke_id }))
}

/// Today's per-instance `InvocationStatus` (Success / Failed / Timeout / …)
/// from the record state; `InstanceInvokeStatus` keeps the legacy name.
pub fn instance_invocation_status(status: RecordStatus, exit_code: Option<i64>, error_code: &str) -> &'static str {
    match status {
        RecordStatus::Finished if exit_code == Some(0) => "Success",
        RecordStatus::Finished => "Failed",
        RecordStatus::Failed if error_code == "ClientNotResponse" || error_code == "DeliveryTimeout" => "Error",
        other => other.as_str(),
    }
}

/// Today's invocation-level `InvocationStatus`: as the legacy aggregate,
/// but "Success" when every finished run exited 0.
fn overall_invocation_status(targets: &[TargetRow]) -> &'static str {
    let states: Vec<_> = targets.iter().map(|t| t.status).collect();
    let legacy = aggregate_invocation_status(&states);
    if legacy != "Finished" {
        return legacy;
    }
    let any_nonzero = targets.iter().any(|t| t.status == RecordStatus::Finished && t.exit_code != Some(0));
    if !any_nonzero {
        "Success"
    } else if targets.iter().all(|t| t.exit_code != Some(0)) {
        "Failed"
    } else {
        "PartialFailed"
    }
}

fn encode_output(bytes: &[u8], plain: bool) -> String {
    if plain { String::from_utf8_lossy(bytes).into_owned() } else { B64.encode(bytes) }
}

fn wants_plain(p: &Params) -> Result<bool, ApiError> {
    match p.get("ContentEncoding") {
        None => Ok(false),
        Some(e) if e.eq_ignore_ascii_case("Base64") => Ok(false),
        Some(e) if e.eq_ignore_ascii_case("PlainText") => Ok(true),
        Some(other) => Err(ApiError::invalid("ContentEncoding", format!("{other:?} is not PlainText or Base64"))),
    }
}

fn status_filter(p: &Params, field: &str) -> Result<Option<RecordStatus>, ApiError> {
    match p.get(field) {
        None => Ok(None),
        Some(s) => RecordStatus::parse(s).map(Some).ok_or_else(|| ApiError::invalid(field, format!("{s:?} is not a known status"))),
    }
}

pub async fn describe_invocations(req: &Request<'_>) -> Result<Value, ApiError> {
    let p = &req.params;
    let paging = Paging::from(p, 10, 50)?;
    let plain = wants_plain(p)?;
    let include_output = p.bool("IncludeOutput")?.unwrap_or(false);
    let filter = InvocationFilter {
        invoke_id: p.get("InvokeId").map(str::to_string),
        command_id: p.get("CommandId").map(str::to_string),
        instance_id: p.get("InstanceId").map(str::to_string),
        command_type: p.get("CommandType").map(str::to_string),
        command_name: p.get("CommandName").map(str::to_string),
        repeat_mode: p.get("RepeatMode").map(str::to_string),
    };
    let status = p.get("InvokeStatus").or(p.get("InvocationStatus")).map(str::to_string);
    let (rows, total) = req.hub.store.list_invocations(&filter, paging.page).await?;
    let mut list = Vec::new();
    for inv in rows {
        let targets = req.hub.store.targets(&inv.invoke_id).await?;
        let legacy = aggregate_invocation_status(&targets.iter().map(|t| t.status).collect::<Vec<_>>());
        let today = overall_invocation_status(&targets);
        if let Some(s) = &status {
            if s != legacy && s != today {
                continue;
            }
        }
        let instances: Vec<Value> = targets.iter().map(|t| invoke_instance_json(req, t, include_output, plain)).collect();
        list.push(json!({
            "InvokeId": inv.invoke_id,
            "CommandId": inv.command_id,
            "CommandName": inv.command_name,
            "CommandType": inv.command_type,
            "CommandContent": encode_output(inv.content.as_bytes(), plain),
            "InvokeStatus": legacy,
            "InvocationStatus": today,
            "Timed": inv.repeat_mode == "Period",
            "RepeatMode": inv.repeat_mode,
            "Frequency": inv.frequency,
            "CreationTime": inv.created_at,
            "Parameters": inv.parameters,
            "Username": inv.username,
            "WorkingDir": inv.working_dir,
            "Timeout": inv.timeout_secs,
            "InvokeInstances": { "InvokeInstance": instances },
        }));
    }
    let mut out = Map::new();
    out.insert("Invocations".into(), json!({ "Invocation": list }));
    paging.annotate(&mut out, total);
    Ok(Value::Object(out))
}

fn invoke_instance_json(req: &Request<'_>, t: &TargetRow, include_output: bool, plain: bool) -> Value {
    let output = live_or_stored(req, t);
    json!({
        "InstanceId": t.instance_id,
        "InstanceInvokeStatus": t.status.as_str(),
        "InvocationStatus": instance_invocation_status(t.status, t.exit_code, &t.error_code),
        "Repeats": t.repeats,
        "Output": if include_output { encode_output(&output, plain) } else { String::new() },
        "Dropped": t.dropped,
        "ExitCode": t.exit_code,
        "ErrorCode": t.error_code,
        "ErrorInfo": t.error_info,
        "CreationTime": t.created_at,
        "StartTime": t.start_time,
        "FinishTime": t.finish_time,
        "UpdateTime": t.updated_at,
        "StopTime": if t.status == RecordStatus::Stopped { t.finish_time.clone() } else { String::new() },
        "Timed": false,
    })
}

/// Running records show the live stream; final ones their stored output.
fn live_or_stored(req: &Request<'_>, t: &TargetRow) -> Vec<u8> {
    if !t.status.is_final() {
        if let Some(live) = req.hub.live.get(&t.invoke_id, &t.instance_id) {
            return live;
        }
    }
    t.output.clone()
}

pub async fn describe_invocation_results(req: &Request<'_>) -> Result<Value, ApiError> {
    let p = &req.params;
    let paging = Paging::from(p, 10, 50)?;
    let plain = wants_plain(p)?;
    let include_history = p.bool("IncludeHistory")?.unwrap_or(false);
    let status = status_filter(p, "InvokeRecordStatus")?;
    let filter = InvocationFilter {
        invoke_id: p.get("InvokeId").map(str::to_string),
        instance_id: p.get("InstanceId").map(str::to_string),
        command_id: p.get("CommandId").map(str::to_string),
        ..Default::default()
    };
    if let Some(id) = &filter.invoke_id {
        if req.hub.store.get_invocation(id).await?.is_none() {
            return Err(ApiError::new(axum::http::StatusCode::NOT_FOUND, "InvalidInvokeId.NotFound", format!("The specified invocation \"{id}\" does not exist.")));
        }
    }
    let mut results = Vec::new();
    let total;
    if include_history {
        // Every record of every matching target, newest targets first.
        let (targets, _) = req.hub.store.list_targets(&filter, None, crate::hub::store::Page { offset: 0, limit: 1000 }).await?;
        let mut all = Vec::new();
        for t in &targets {
            let records = req.hub.store.records(&t.invoke_id, &t.instance_id).await?;
            if records.is_empty() {
                all.push(result_from_target(req, t, plain));
            }
            for r in records.iter().filter(|r| status.is_none_or(|s| s == r.status)) {
                all.push(result_from_record(r, &t.invoke_id, plain));
            }
        }
        total = all.len() as i64;
        results = all.into_iter().skip(paging.page.offset as usize).take(paging.page.limit as usize).collect();
    } else {
        let (targets, count) = req.hub.store.list_targets(&filter, status, paging.page).await?;
        total = count;
        for t in &targets {
            results.push(result_from_target(req, t, plain));
        }
    }
    let mut inner = Map::new();
    inner.insert("InvocationResults".into(), json!({ "InvocationResult": results }));
    paging.annotate(&mut inner, total);
    Ok(json!({ "Invocation": Value::Object(inner) }))
}

fn result_from_target(req: &Request<'_>, t: &TargetRow, plain: bool) -> Value {
    let output = live_or_stored(req, t);
    json!({
        "InvokeId": t.invoke_id,
        "InstanceId": t.instance_id,
        "InvokeRecordStatus": t.status.as_str(),
        "InvocationStatus": instance_invocation_status(t.status, t.exit_code, &t.error_code),
        "Repeats": t.repeats,
        "Output": encode_output(&output, plain),
        "Dropped": t.dropped,
        "ExitCode": t.exit_code,
        "ErrorCode": t.error_code,
        "ErrorInfo": t.error_info,
        "StartTime": t.start_time,
        "FinishedTime": t.finish_time,
        "StopTime": if t.status == RecordStatus::Stopped { t.finish_time.clone() } else { String::new() },
    })
}

fn result_from_record(r: &RecordRow, invoke_id: &str, plain: bool) -> Value {
    json!({
        "InvokeId": invoke_id,
        "InstanceId": r.instance_id,
        "InvokeRecordStatus": r.status.as_str(),
        "InvocationStatus": instance_invocation_status(r.status, r.exit_code, &r.error_code),
        "Repeats": r.record_seq,
        "Output": encode_output(&r.output, plain),
        "Dropped": r.dropped,
        "ExitCode": r.exit_code,
        "ErrorCode": r.error_code,
        "ErrorInfo": r.error_info,
        "StartTime": r.start_time,
        "FinishedTime": r.finish_time,
        "StopTime": if r.status == RecordStatus::Stopped { r.finish_time.clone() } else { String::new() },
    })
}

pub async fn stop_invocation(req: &Request<'_>) -> Result<Value, ApiError> {
    let p = &req.params;
    let invoke_id = p.require("InvokeId")?;
    if req.hub.store.get_invocation(invoke_id).await?.is_none() {
        return Err(ApiError::new(axum::http::StatusCode::NOT_FOUND, "InvalidInvokeId.NotFound", format!("The specified invocation \"{invoke_id}\" does not exist.")));
    }
    let only = p.list("InstanceId")?;
    let notify = req.hub.store.request_stop(invoke_id, &only).await?;
    for id in &notify {
        req.hub.agents.send(id, HubMsg::Stop { invoke_id: invoke_id.to_string() });
    }
    crate::hub::cluster::announce(req.hub, crate::hub::cluster::Event::Stop { id: invoke_id.to_string() }).await;
    tracing::info!(invoke_id, instances = notify.len(), "stop requested");
    Ok(json!({}))
}
