//! RunCommand, InvokeCommand, DescribeInvocations, DescribeInvocationResults,
//! StopInvocation.

use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use serde_json::{Map, Value, json};

use super::error::ApiError;
use super::fleet::{self, Resolved, Selector};
use super::params::Params;
use super::{Paging, Request};
use crate::hub::changes;
use crate::hub::store::{CommandRow, InvocationFilter, InvocationRow, Page, ResultRow, StatusFilter, TargetRow, now_str};
use crate::lifecycle::{
    CommandType, Counts, ErrorCode, InvocationOverall, InvocationStatus, InvokeRecordStatus, InvokeStatus, RepeatMode, UnknownName,
    error_info,
};
use crate::protocol::MAX_SCRIPT_BYTES;
/// Seconds. Cloud Assistant documents 10..=86400; we also accept shorter
/// timeouts (down to 1 s), which scripts in tests and health probes want.
pub const TIMEOUT_RANGE: (i64, i64) = (1, 86_400);
pub const DEFAULT_TIMEOUT: i64 = 60;
/// Cloud Assistant allows at most 20 custom parameters per command.
pub const MAX_PARAMETERS: usize = 20;
/// DescribeInvocations lists at most this many `InvokeInstances` per
/// invocation (by instance id), so a page costs O(page), not O(targets);
/// DescribeInvocationResults pages through all of them. A deckhand limit,
/// documented in docs/api.md.
pub const MAX_INVOKE_INSTANCES: i64 = 100;

/// An optional parameter spelled as one of a lifecycle enum's names.
pub fn named<T>(p: &Params, field: &str, parse: impl Fn(&str) -> Result<T, UnknownName>) -> Result<Option<T>, ApiError> {
    p.get(field).map(|v| parse(v).map_err(|e| ApiError::invalid(field, e))).transpose()
}

pub(super) fn new_id(prefix: &str) -> String {
    crate::ids::random(&format!("{prefix}-"), 22)
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

fn command_type(p: &Params) -> Result<CommandType, ApiError> {
    named(p, "Type", CommandType::parse_command)?.ok_or_else(|| ApiError::missing("Type"))
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

/// Cloud Assistant's `RepeatMode=DryRun`: validate everything, run nothing.
/// A request-only value: it never reaches the store or an agent.
const DRY_RUN: &str = "DryRun";

/// RepeatMode and Frequency, validated with the agent's own scheduler
/// grammar so the API refuses what an agent could never fire.
/// `DryRun` is validated as `Once`.
fn repeat(p: &Params, timeout_secs: i64) -> Result<(RepeatMode, String), ApiError> {
    let mode = match p.get("RepeatMode") {
        Some(DRY_RUN) => RepeatMode::Once,
        _ => named(p, "RepeatMode", RepeatMode::parse)?.unwrap_or(RepeatMode::Once),
    };
    let freq = p.string("Frequency", 256)?.unwrap_or_default();
    if mode == RepeatMode::Period && freq.is_empty() {
        return Err(ApiError::missing("Frequency"));
    }
    if mode == RepeatMode::Period {
        let timeout = std::time::Duration::from_secs(timeout_secs.max(0) as u64);
        crate::agent::schedule::validate_frequency(&freq, timeout, chrono::Utc::now()).map_err(|e| ApiError::invalid("Frequency", e))?;
    }
    Ok((mode, freq))
}

/// The targets of a new invocation, fixed here: the instances a selector
/// (`ResourceTag.N`, deckhand's `Target*`) matches now, or the listed
/// `InstanceId.N`.
pub(super) async fn targets(req: &Request<'_>, action: &str) -> Result<Resolved, ApiError> {
    match Selector::from_params(&req.params)? {
        Some(sel) => fleet::resolve(req, &sel, action).await,
        None => instances(req).await,
    }
}

/// Target instances, de-duplicated, each known; with their names (one query).
async fn instances(req: &Request<'_>) -> Result<Resolved, ApiError> {
    let mut ids = req.params.list("InstanceId")?;
    if ids.is_empty() {
        return Err(ApiError::missing("InstanceId"));
    }
    let mut seen = std::collections::HashSet::new();
    ids.retain(|i| seen.insert(i.clone()));
    // One more than can match: a short page tells the total, so the store
    // skips its count query (one statement less per RunCommand, issue #21).
    let page = crate::hub::store::Page { offset: 0, limit: ids.len() as i64 + 1 };
    let (rows, _) = req.hub.store.list_instances(&ids, None, None, page).await?;
    let mut out = Resolved::default();
    for r in &rows {
        out.note_fire_grants(r);
    }
    let names: std::collections::HashMap<_, _> = rows.into_iter().map(|r| (r.instance_id, r.instance_name)).collect();
    out.targets = ids
        .into_iter()
        .map(|id| match names.get(&id) {
            Some(name) => Ok((id, name.clone())),
            None => Err(ApiError::new(
                axum::http::StatusCode::NOT_FOUND,
                "InvalidInstance.NotFound",
                format!("The specified instance \"{id}\" does not exist."),
            )),
        })
        .collect::<Result<_, _>>()?;
    Ok(out)
}

/// The answer already given for `token` (ClientToken idempotency), if any.
pub(super) async fn answer_for_token(req: &Request<'_>, token: &str) -> Result<Option<Value>, ApiError> {
    let Some(existing) = req.hub.store.find_by_client_token(token).await? else { return Ok(None) };
    let inv = req.hub.store.get_invocation(&existing).await?.ok_or_else(|| ApiError::internal("token row vanished"))?;
    Ok(Some(json!({ "CommandId": inv.command_id, "InvokeId": inv.invoke_id })))
}

pub async fn run_command(req: &Request<'_>) -> Result<Value, ApiError> {
    let p = &req.params;
    if let Some(token) = p.string("ClientToken", 64)?
        && let Some(answer) = answer_for_token(req, &token).await?
    {
        return Ok(answer);
    }
    let ctype = command_type(p)?;
    let content = decode_content(p, "CommandContent", "PlainText")?;
    let enable_parameter = p.bool("EnableParameter")?.unwrap_or(false);
    let parameters = parameters(p, &content, enable_parameter, req.value_policy())?;
    let timeout = p.int("Timeout", TIMEOUT_RANGE.0, TIMEOUT_RANGE.1)?.unwrap_or(DEFAULT_TIMEOUT);
    let (repeat_mode, frequency) = repeat(p, timeout)?;
    let resolved = targets(req, "RunCommand").await?;
    let window = fleet::window(p, resolved.targets.len(), repeat_mode)?;
    fleet::require_fire_grants(&window, repeat_mode, &resolved)?;
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
    let mut inv = invocation_for(&cmd, parameters, repeat_mode, frequency, p.get("ClientToken").unwrap_or(""));
    inv.window = window;
    if p.get("RepeatMode") == Some(DRY_RUN) {
        return Ok(dry_run(&inv, &resolved));
    }
    inv.unreachable = resolved.unreachable;
    create_and_push(req, Some(&cmd), inv, &resolved.targets).await
}

/// The answer to `RepeatMode=DryRun`: no ids (nothing was created), and
/// what would have run (deckhand extension `DryRunResult`).
fn dry_run(inv: &InvocationRow, resolved: &Resolved) -> Value {
    let shown: Vec<&str> = resolved.targets.iter().take(MAX_INVOKE_INSTANCES as usize).map(|(id, _)| id.as_str()).collect();
    json!({
        "CommandId": "",
        "InvokeId": "",
        "DryRunResult": {
            "TargetCount": resolved.targets.len(),
            "UnreachableCount": resolved.unreachable.len(),
            "InstanceIds": { "InstanceId": shown },
            "MaxConcurrency": inv.window.max_concurrency,
            "MaxErrors": inv.window.max_errors,
            "BatchWait": inv.window.batch_wait_secs,
        },
    })
}

pub async fn invoke_command(req: &Request<'_>) -> Result<Value, ApiError> {
    let p = &req.params;
    if let Some(token) = p.string("ClientToken", 64)?
        && let Some(existing) = req.hub.store.find_by_client_token(&token).await?
    {
        return Ok(json!({ "InvokeId": existing }));
    }
    let command_id = p.require("CommandId")?;
    let Some(mut cmd) = req.hub.store.get_command(command_id).await?.filter(|c| c.visible) else {
        return Err(ApiError::new(
            axum::http::StatusCode::NOT_FOUND,
            "InvalidCommandId.NotFound",
            format!("The specified command \"{command_id}\" does not exist."),
        ));
    };
    let parameters = parameters(p, &cmd.content, cmd.enable_parameter, req.value_policy())?;
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
    let resolved = targets(req, "InvokeCommand").await?;
    let mut inv = invocation_for(&cmd, parameters, repeat_mode, frequency, p.get("ClientToken").unwrap_or(""));
    inv.window = fleet::window(p, resolved.targets.len(), repeat_mode)?;
    fleet::require_fire_grants(&inv.window, repeat_mode, &resolved)?;
    if p.get("RepeatMode") == Some(DRY_RUN) {
        let mut v = dry_run(&inv, &resolved);
        if let Value::Object(m) = &mut v {
            m.remove("CommandId");
        }
        return Ok(v);
    }
    inv.unreachable = resolved.unreachable;
    let mut v = create_and_push(req, None, inv, &resolved.targets).await?;
    if let Value::Object(m) = &mut v {
        m.remove("CommandId");
    }
    Ok(v)
}

fn invocation_for(cmd: &CommandRow, parameters: String, repeat_mode: RepeatMode, frequency: String, token: &str) -> InvocationRow {
    InvocationRow {
        invoke_id: new_id("t"),
        command_id: cmd.command_id.clone(),
        command_name: cmd.name.clone(),
        command_type: cmd.command_type,
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
        counts: Counts::default(),
        window: Default::default(),
        revision: 0,
        unreachable: Vec::new(),
        file: None,
    }
}

/// Commits the invocation (with its command for RunCommand) first, then
/// pushes it to whoever is online;
/// offline targets get it when they connect.
pub(super) async fn create_and_push(
    req: &Request<'_>,
    cmd: Option<&CommandRow>,
    inv: InvocationRow,
    targets: &[(String, String)],
) -> Result<Value, ApiError> {
    let ids: Vec<String> = targets.iter().map(|(i, _)| i.clone()).collect();
    // The call's audit event commits with the invocation (issue #21).
    let event = req.success_event(&inv.invoke_id);
    let created = match cmd {
        Some(cmd) => req.hub.store.run_command(cmd, &inv, &ids, event.as_ref()).await,
        None => req.hub.store.create_invocation(&inv, &ids, event.as_ref()).await,
    };
    match created {
        Ok(()) if event.is_some() => req.success_audited(),
        Ok(()) => {}
        // The same ClientToken committed meanwhile (through another replica,
        // or a concurrent retry): answer with that invocation, run nothing new.
        Err(crate::hub::store::StoreError::DuplicateClientToken(token)) => {
            return answer_for_token(req, &token).await?.ok_or_else(|| ApiError::internal("token row vanished"));
        }
        Err(e) => return Err(e.into()),
    }
    if inv.window.max_concurrency > 0 {
        // The store chose the first window: send what it released. The
        // invocation is committed: a failed read here is not the caller's
        // error (the backstop and reconnects deliver).
        if let Err(e) = crate::hub::delivery::relay(req.hub, &inv.invoke_id, None).await {
            tracing::warn!(invoke_id = %inv.invoke_id, error = %e, "first window not sent now; the backstop will");
        }
    } else {
        // Instances matched while offline are settled already: never sent.
        let unreachable: std::collections::HashSet<&str> = inv.unreachable.iter().map(String::as_str).collect();
        let reachable: Vec<(String, String)> = targets.iter().filter(|(id, _)| !unreachable.contains(id.as_str())).cloned().collect();
        crate::hub::delivery::push_new(req.hub, &inv, &reachable);
    }
    crate::hub::cluster::announce(req.hub, crate::hub::cluster::Event::Invoke { id: inv.invoke_id.clone() }).await;
    tracing::info!(invoke_id = %inv.invoke_id, targets = ids.len(), "invocation created");
    Ok(json!({ "CommandId": inv.command_id, "InvokeId": inv.invoke_id }))
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

/// `InvokeRecordStatus` filter: a record-level name selects every
/// per-instance status shown under it; deckhand also accepts a
/// per-instance `InvocationStatus` name (`Timeout`, `Cancelled`, …) to
/// select just that one (an extension, docs/api.md).
fn record_status_filter(p: &Params, field: &str) -> Result<Vec<InvocationStatus>, ApiError> {
    let Some(s) = p.get(field) else { return Ok(Vec::new()) };
    if let Ok(r) = InvokeRecordStatus::parse(s) {
        return Ok(InvocationStatus::with_record_status(r));
    }
    InvocationStatus::parse(s).map(|one| vec![one]).map_err(|_| {
        ApiError::invalid(
            field,
            format!("{s:?} is not one of {} (or a per-instance InvocationStatus)", InvokeRecordStatus::NAMES.join(", ")),
        )
    })
}

/// DescribeInvocations' status filter: `InvokeStatus` (legacy names) or
/// `InvocationStatus` (current names); a value in either vocabulary
/// matches invocations whose kept aggregate has it.
pub(super) fn overall_status_filter(p: &Params) -> Result<Option<StatusFilter>, ApiError> {
    let (field, v) = match (p.get("InvokeStatus"), p.get("InvocationStatus")) {
        (Some(v), _) => ("InvokeStatus", v),
        (None, Some(v)) => ("InvocationStatus", v),
        (None, None) => return Ok(None),
    };
    let legacy = InvokeStatus::parse(v).ok();
    let current = InvocationOverall::parse(v).ok();
    if legacy.is_none() && current.is_none() {
        let mut names: Vec<&str> = InvokeStatus::NAMES.iter().chain(InvocationOverall::NAMES).copied().collect();
        names.sort_unstable();
        names.dedup();
        return Err(ApiError::invalid(field, format!("{v:?} is not one of {}", names.join(", "))));
    }
    Ok(Some((legacy, current)))
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
        command_type: named(p, "CommandType", CommandType::parse_command)?,
        command_name: p.get("CommandName").map(str::to_string),
        repeat_mode: named(p, "RepeatMode", RepeatMode::parse)?,
        status: overall_status_filter(p)?,
        file_name: None,
    };
    // Filtered and paged in SQL on the kept aggregates: TotalCount and
    // NextToken count matching invocations, and no target is read to
    // decide a status.
    let (rows, total) = req.hub.store.list_invocations(&filter, paging.page).await?;
    let mut list = Vec::with_capacity(rows.len());
    for inv in rows {
        let targets = req.hub.store.some_targets(&inv.invoke_id, MAX_INVOKE_INSTANCES, include_output).await?;
        let instances: Vec<Value> = targets.iter().map(|t| invoke_instance_json(req, t, include_output, plain)).collect();
        list.push(json!({
            "InvokeId": inv.invoke_id,
            "CommandId": inv.command_id,
            "CommandName": inv.command_name,
            "CommandType": inv.command_type.as_str(),
            "CommandContent": encode_output(inv.content.as_bytes(), plain),
            "InvokeStatus": inv.invoke_status().as_str(),
            "InvocationStatus": inv.invocation_status().as_str(),
            "Timed": inv.repeat_mode == RepeatMode::Period,
            "RepeatMode": inv.repeat_mode.as_str(),
            "Frequency": inv.frequency,
            "CreationTime": inv.created_at,
            "Parameters": inv.parameters,
            "Username": inv.username,
            "WorkingDir": inv.working_dir,
            "Timeout": inv.timeout_secs,
            "InvokeInstances": { "InvokeInstance": instances },
            // deckhand extensions (docs/fleet.md): the resolved target
            // count and the rollout window.
            "TargetCount": inv.counts.total(),
            "StatusCounts": InvocationStatus::ALL.iter().map(|st| (st.as_str().to_string(), Value::from(inv.counts.get(*st)))).collect::<Map<String, Value>>(),
            "MaxConcurrency": inv.window.max_concurrency,
            "MaxErrors": inv.window.max_errors,
            "BatchWait": inv.window.batch_wait_secs,
        }));
    }
    let mut out = Map::new();
    out.insert("Invocations".into(), json!({ "Invocation": list }));
    paging.annotate(&mut out, total);
    Ok(Value::Object(out))
}

/// `ErrorCode` and `ErrorInfo` as the API shows them: Alibaba's fixed text
/// where the code has one, otherwise the stored detail.
pub(super) fn error_fields(code: &Option<ErrorCode>, info: &str) -> (String, String) {
    (code.as_ref().map(|c| c.as_str().to_string()).unwrap_or_default(), error_info(code.as_ref(), info).into_owned())
}

fn stop_time(status: InvocationStatus, finish_time: &str) -> String {
    if status.record_status() == InvokeRecordStatus::Stopped { finish_time.to_string() } else { String::new() }
}

fn invoke_instance_json(req: &Request<'_>, t: &TargetRow, include_output: bool, plain: bool) -> Value {
    let output = if include_output { live_or_stored(req, t) } else { Vec::new() };
    let (code, info) = error_fields(&t.error_code, &t.error_info);
    json!({
        "InstanceId": t.instance_id,
        "InstanceInvokeStatus": t.status.record_status().as_str(),
        "InvocationStatus": t.status.as_str(),
        "Repeats": t.repeats,
        "Output": encode_output(&output, plain),
        "Dropped": t.dropped,
        "ExitCode": t.exit_code,
        "ErrorCode": code,
        "ErrorInfo": info,
        "CreationTime": t.created_at,
        "StartTime": t.start_time,
        "FinishTime": t.finish_time,
        "UpdateTime": t.updated_at,
        "StopTime": stop_time(t.status, &t.finish_time),
        "Timed": false,
    })
}

/// Running records show the live stream; final ones their stored output.
fn live_or_stored(req: &Request<'_>, t: &TargetRow) -> Vec<u8> {
    if !t.status.is_final()
        && let Some(live) = req.hub.live.get(&t.invoke_id, &t.instance_id)
    {
        return live;
    }
    t.output.clone()
}

pub async fn describe_invocation_results(req: &Request<'_>) -> Result<Vec<u8>, ApiError> {
    let p = &req.params;
    let paging = Paging::from(p, 10, 50)?;
    let plain = wants_plain(p)?;
    let include_history = p.bool("IncludeHistory")?.unwrap_or(false);
    let mut statuses = record_status_filter(p, "InvokeRecordStatus")?;
    // deckhand extension: filter by the per-instance InvocationStatus
    // (`Failed` here means a non-zero exit, unlike the record level).
    if let Some(one) = named(p, "InvocationStatus", InvocationStatus::parse)? {
        if p.get("InvokeRecordStatus").is_some() {
            return Err(ApiError::invalid("InvocationStatus", "give InvokeRecordStatus or InvocationStatus, not both"));
        }
        statuses = vec![one];
    }
    let filter = InvocationFilter {
        invoke_id: p.get("InvokeId").map(str::to_string),
        instance_id: p.get("InstanceId").map(str::to_string),
        command_id: p.get("CommandId").map(str::to_string),
        ..Default::default()
    };
    // deckhand extension: hold the answer until what it shows changes
    // (`hub::changes`; docs/api.md). Listening starts before the first
    // read, so a change committed in between is not missed.
    let wait = p.int("WaitSeconds", 0, changes::MAX_WAIT_SECONDS)?.unwrap_or(0);
    let mut listener = match (&filter.invoke_id, wait) {
        (_, 0) => None,
        (None, _) => return Err(ApiError::invalid("WaitSeconds", "needs InvokeId: a wait follows one invocation")),
        // Every slot taken: answer at once, as without WaitSeconds.
        (Some(_), _) => req.hub.changes.listen(),
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(wait.unsigned_abs());
    let (mut history, mut targets, mut total) = read_results(req, &filter, &statuses, paging.page, include_history).await?;
    if let (Some(l), Some(id)) = (listener.as_mut(), &filter.invoke_id) {
        let shown = shown_statuses(&history, &targets);
        // Nothing to wait for: no results yet means no targets at all, and
        // settled results stay as they are.
        let mut waiting = !shown.is_empty() && shown.iter().any(|(_, s)| !s.is_final());
        while waiting && l.next(id, deadline, Some(changes::RECHECK), &req.hub.shutdown).await == changes::Wake::Maybe {
            (history, targets, total) = read_results(req, &filter, &statuses, paging.page, include_history).await?;
            waiting = shown_statuses(&history, &targets) == shown;
        }
        if waiting {
            // Over (deadline or shutdown): answer what the store holds now.
            (history, targets, total) = read_results(req, &filter, &statuses, paging.page, include_history).await?;
        }
    }
    drop(listener);
    // Only an empty answer needs to know whether the invocation exists: a
    // result proves it, and the lookup was a third query on every poll
    // (issue #21).
    if total == 0
        && let Some(id) = &filter.invoke_id
        && req.hub.store.get_invocation(id).await?.is_none()
    {
        return Err(ApiError::new(
            axum::http::StatusCode::NOT_FOUND,
            "InvalidInvokeId.NotFound",
            format!("The specified invocation \"{id}\" does not exist."),
        ));
    }
    let mut results: Vec<ResultOut<'_>> = history.iter().map(|r| result_from_history(r, plain)).collect();
    results.extend(targets.iter().map(|t| result_from_target(req, t, plain)));
    let answer = ResultsAnswer {
        invocation: ResultsPage { invocation_results: ResultList { invocation_result: results }, paging: paging.fields(total) },
    };
    serde_json::to_vec(&answer).map_err(|e| ApiError::internal(format!("serializing the answer: {e}")))
}

/// `DescribeInvocationResults`' answer, serialized straight to bytes
/// (issue #21: the poll path builds no `Value` tree). Field names are
/// Cloud Assistant's.
#[derive(serde::Serialize)]
#[serde(rename_all = "PascalCase")]
struct ResultsAnswer<'a> {
    invocation: ResultsPage<'a>,
}

#[derive(serde::Serialize)]
#[serde(rename_all = "PascalCase")]
struct ResultsPage<'a> {
    invocation_results: ResultList<'a>,
    #[serde(flatten)]
    paging: super::PageFields,
}

#[derive(serde::Serialize)]
#[serde(rename_all = "PascalCase")]
struct ResultList<'a> {
    invocation_result: Vec<ResultOut<'a>>,
}

/// One `InvocationResult`.
#[derive(serde::Serialize)]
#[serde(rename_all = "PascalCase")]
struct ResultOut<'a> {
    invoke_id: &'a str,
    instance_id: &'a str,
    invoke_record_status: &'static str,
    invocation_status: &'static str,
    repeats: i64,
    output: String,
    dropped: i64,
    exit_code: Option<i64>,
    error_code: &'a str,
    error_info: std::borrow::Cow<'a, str>,
    start_time: &'a str,
    finished_time: &'a str,
    stop_time: &'a str,
}

/// `ErrorCode` and `ErrorInfo` as the API shows them (Alibaba's fixed
/// text where the code has one), borrowed from the row.
fn error_pair<'a>(code: &'a Option<ErrorCode>, info: &'a str) -> (&'a str, std::borrow::Cow<'a, str>) {
    (code.as_ref().map(|c| c.as_str()).unwrap_or_default(), error_info(code.as_ref(), info))
}

/// `StopTime`: the finish time of a stopped run, empty otherwise.
fn stop_time_of(status: InvocationStatus, finish_time: &str) -> &str {
    if status.record_status() == InvokeRecordStatus::Stopped { finish_time } else { "" }
}

fn result_from_target<'a>(req: &Request<'_>, t: &'a TargetRow, plain: bool) -> ResultOut<'a> {
    let output = if !t.status.is_final()
        && let Some(live) = req.hub.live.get(&t.invoke_id, &t.instance_id)
    {
        encode_output(&live, plain)
    } else {
        encode_output(&t.output, plain)
    };
    let (error_code, error_info) = error_pair(&t.error_code, &t.error_info);
    ResultOut {
        invoke_id: &t.invoke_id,
        instance_id: &t.instance_id,
        invoke_record_status: t.status.record_status().as_str(),
        invocation_status: t.status.as_str(),
        repeats: t.repeats,
        output,
        dropped: t.dropped,
        exit_code: t.exit_code,
        error_code,
        error_info,
        start_time: &t.start_time,
        finished_time: &t.finish_time,
        stop_time: stop_time_of(t.status, &t.finish_time),
    }
}

fn result_from_history(r: &ResultRow, plain: bool) -> ResultOut<'_> {
    let (error_code, error_info) = error_pair(&r.error_code, &r.error_info);
    ResultOut {
        invoke_id: &r.invoke_id,
        instance_id: &r.instance_id,
        invoke_record_status: r.status.record_status().as_str(),
        invocation_status: r.status.as_str(),
        repeats: r.record_seq.unwrap_or(r.repeats),
        output: encode_output(&r.output, plain),
        dropped: r.dropped,
        exit_code: r.exit_code,
        error_code,
        error_info,
        start_time: &r.start_time,
        finished_time: &r.finish_time,
        stop_time: stop_time_of(r.status, &r.finish_time),
    }
}

/// `ModifyInvocationAttribute` (Cloud Assistant): a `Period` invocation's
/// `Frequency`, `CommandContent`, `Parameters`/`EnableParameter`, and more
/// instances (`InstanceId.N`, each must exist). Validated as
/// `RunCommand` validates them. A change to what runs raises the
/// invocation's revision and is re-delivered, through the one delivery
/// path, to every unsettled target: agents holding the invocation replace
/// their copy and re-arm their schedule (docs/fleet.md).
pub async fn modify_invocation_attribute(req: &Request<'_>) -> Result<Value, ApiError> {
    let p = &req.params;
    let invoke_id = p.require("InvokeId")?;
    let Some(inv) = req.hub.store.get_invocation(invoke_id).await? else {
        return Err(ApiError::new(
            axum::http::StatusCode::NOT_FOUND,
            "InvalidInvokeId.NotFound",
            format!("The specified invocation \"{invoke_id}\" does not exist."),
        ));
    };
    if inv.repeat_mode != RepeatMode::Period {
        return Err(ApiError::invalid("InvokeId", format!("only a Period invocation can be modified; this one is {}", inv.repeat_mode)));
    }
    let unsettled: i64 = InvocationStatus::ALL.iter().filter(|s| !s.is_final()).map(|s| inv.counts.get(*s)).sum();
    if inv.stop_requested || unsettled == 0 {
        return Err(ApiError::invalid("InvokeId", "the invocation is stopped or finished and can no longer be modified"));
    }
    let content = match p.get("CommandContent") {
        Some(_) => Some(decode_content(p, "CommandContent", "PlainText")?),
        None => None,
    };
    let frequency = p.string("Frequency", 256)?.filter(|f| !f.is_empty());
    // A per-fire window groups fires by nominal instant, which every target
    // derives from the same anchor; agents re-anchor a new frequency on
    // their own clocks, so the window could no longer group them.
    if frequency.as_ref().is_some_and(|f| *f != inv.frequency) && inv.window.max_concurrency > 0 {
        return Err(ApiError::invalid(
            "Frequency",
            "the Frequency of a Period invocation with a rollout window (MaxConcurrency/MaxErrors) cannot be changed; stop it and run a new one",
        ));
    }
    if let Some(f) = &frequency {
        let timeout = std::time::Duration::from_secs(inv.timeout_secs.max(0) as u64);
        crate::agent::schedule::validate_frequency(f, timeout, chrono::Utc::now()).map_err(|e| ApiError::invalid("Frequency", e))?;
    }
    let enable_parameter = p.bool("EnableParameter")?;
    let script = content.as_deref().unwrap_or(&inv.content);
    let enabled = enable_parameter.unwrap_or(inv.enable_parameter);
    // Parameters are checked against the script they will be spliced into:
    // the new one, or the stored one with the stored values.
    let parameters = if p.get("Parameters").is_some() {
        Some(parameters(p, script, enabled, req.hub.config.parameter_values)?)
    } else {
        if enabled && (content.is_some() || enable_parameter.is_some()) {
            let stored: Map<String, Value> = serde_json::from_str(&inv.parameters).unwrap_or_default();
            let builtins = crate::exec::params::Builtins::default();
            crate::exec::params::render_script(script, true, &stored, &builtins, req.hub.config.parameter_values)
                .map_err(|e| ApiError::invalid("Parameters", e))?;
        }
        None
    };
    let add = if p.list("InstanceId")?.is_empty() {
        Vec::new()
    } else {
        let resolved = instances(req).await?;
        fleet::require_fire_grants(&inv.window, inv.repeat_mode, &resolved)?;
        resolved.targets
    };
    let m = crate::hub::store::Modification {
        invoke_id: invoke_id.to_string(),
        content,
        frequency,
        parameters,
        enable_parameter,
        add: add.iter().map(|(id, _)| id.clone()).collect(),
    };
    let added = req.hub.store.modify_invocation(&m).await?;
    let revised = m.changes_definition();
    if revised {
        // Every unsettled target held here, added ones included, gets the
        // new revision; other replicas do the same for theirs on the
        // announcement, and agents offline now get it on reconnect. The
        // change is committed: a failed push is not the caller's error (an
        // agent missing it gets the newest revision when it reconnects).
        if let Err(e) = crate::hub::delivery::relay(req.hub, invoke_id, None).await {
            tracing::warn!(invoke_id, error = %e, "pushing the modified invocation; agents get it on reconnect");
        }
    } else if !added.is_empty() {
        let fresh = req.hub.store.get_invocation(invoke_id).await?.ok_or_else(|| ApiError::internal("invocation vanished"))?;
        let targets: Vec<(String, String)> = add.into_iter().filter(|(id, _)| added.contains(id)).collect();
        crate::hub::delivery::push_new(req.hub, &fresh, &targets);
    }
    if revised || !added.is_empty() {
        crate::hub::cluster::announce(req.hub, crate::hub::cluster::Event::Invoke { id: invoke_id.to_string() }).await;
    }
    tracing::info!(invoke_id, added = added.len(), revised, "invocation modified");
    Ok(json!({ "CommandId": inv.command_id }))
}

pub async fn stop_invocation(req: &Request<'_>) -> Result<Value, ApiError> {
    let p = &req.params;
    let invoke_id = p.require("InvokeId")?;
    if req.hub.store.get_invocation(invoke_id).await?.is_none() {
        return Err(ApiError::new(
            axum::http::StatusCode::NOT_FOUND,
            "InvalidInvokeId.NotFound",
            format!("The specified invocation \"{invoke_id}\" does not exist."),
        ));
    }
    let only = p.list("InstanceId")?;
    let notify = req.hub.store.request_stop(invoke_id, &only).await?;
    crate::hub::delivery::stop(req.hub, invoke_id, &notify);
    crate::hub::cluster::announce(req.hub, crate::hub::cluster::Event::Stop { id: invoke_id.to_string() }).await;
    tracing::info!(invoke_id, instances = notify.len(), "stop requested");
    Ok(json!({}))
}

/// One page of `DescribeInvocationResults`: the records (`IncludeHistory`)
/// or the targets, and the total matching.
async fn read_results(
    req: &Request<'_>,
    filter: &InvocationFilter,
    statuses: &[InvocationStatus],
    page: Page,
    include_history: bool,
) -> Result<(Vec<ResultRow>, Vec<TargetRow>, i64), ApiError> {
    Ok(if include_history {
        let (rows, total) = req.hub.store.list_history(filter, statuses, page).await?;
        (rows, Vec::new(), total)
    } else {
        let (targets, total) = req.hub.store.list_targets(filter, statuses, page).await?;
        (Vec::new(), targets, total)
    })
}

/// What a waiting call compares: each shown result's instance, record and
/// status, in page order.
fn shown_statuses(history: &[ResultRow], targets: &[TargetRow]) -> Vec<((String, Option<i64>), InvocationStatus)> {
    history
        .iter()
        .map(|r| ((r.instance_id.clone(), r.record_seq), r.status))
        .chain(targets.iter().map(|t| ((t.instance_id.clone(), None), t.status)))
        .collect()
}
