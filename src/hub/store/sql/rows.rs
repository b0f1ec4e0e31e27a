//! Row decoding and the filter builder for the SQL store.
//!
//! Every column is read with `try_get`: a value this hub cannot decode is
//! a [`StoreError::Decode`] naming table, column and row, never a panic
//! (release builds abort on panic).

use sqlx::any::AnyRow;
use sqlx::{Decode, Row, Type};

use super::super::*;
use crate::lifecycle::{Counts, ErrorCode, InvocationStatus};

/// Reads one column of a row of `table` identified by `id`.
pub(super) fn col<'r, T>(r: &'r AnyRow, table: &'static str, column: &'static str, id: &str) -> Result<T>
where
    T: Decode<'r, sqlx::Any> + Type<sqlx::Any>,
{
    r.try_get(column).map_err(|e| StoreError::Decode { table, column, id: id.to_string(), detail: e.to_string() })
}

/// The row's own key, for naming it in errors.
pub(super) fn key(r: &AnyRow, table: &'static str, column: &'static str) -> Result<String> {
    col(r, table, column, "?")
}

fn flag(r: &AnyRow, table: &'static str, column: &'static str, id: &str) -> Result<bool> {
    Ok(col::<i64>(r, table, column, id)? != 0)
}

/// A stored status through the lifecycle codec.
pub(super) fn status_col(r: &AnyRow, table: &'static str, id: &str) -> Result<InvocationStatus> {
    named(r, table, "status", id, InvocationStatus::parse)
}

fn error_code_col(r: &AnyRow, table: &'static str, id: &str) -> Result<Option<ErrorCode>> {
    Ok(ErrorCode::parse(&col::<String>(r, table, "error_code", id)?))
}

fn json_col<T: serde::de::DeserializeOwned>(r: &AnyRow, table: &'static str, column: &'static str, id: &str) -> Result<T> {
    let s: String = col(r, table, column, id)?;
    serde_json::from_str(&s).map_err(|e| StoreError::Decode { table, column, id: id.to_string(), detail: e.to_string() })
}

fn named<T>(
    r: &AnyRow,
    table: &'static str,
    column: &'static str,
    id: &str,
    parse: impl Fn(&str) -> std::result::Result<T, crate::lifecycle::UnknownName>,
) -> Result<T> {
    let s: String = col(r, table, column, id)?;
    parse(&s).map_err(|e| StoreError::Decode { table, column, id: id.to_string(), detail: e.to_string() })
}

/// `invocations.file_spec`: '' for a command, JSON of a `FileRow` for a
/// file delivery.
fn file_col(r: &AnyRow, id: &str) -> Result<Option<FileRow>> {
    let s: String = col(r, "invocations", "file_spec", id)?;
    if s.is_empty() {
        return Ok(None);
    }
    serde_json::from_str(&s).map(Some).map_err(|e| StoreError::Decode {
        table: "invocations",
        column: "file_spec",
        id: id.to_string(),
        detail: e.to_string(),
    })
}

pub(super) fn activation_from(r: &AnyRow) -> Result<ActivationRow> {
    const T: &str = "activations";
    let id = key(r, T, "activation_id")?;
    Ok(ActivationRow {
        code_hash: col(r, T, "code_hash", &id)?,
        instance_name: col(r, T, "instance_name", &id)?,
        description: col(r, T, "description", &id)?,
        instance_count: col(r, T, "instance_count", &id)?,
        registered_count: col(r, T, "registered_count", &id)?,
        deregistered_count: col(r, T, "deregistered_count", &id)?,
        time_to_live_hours: col(r, T, "time_to_live_hours", &id)?,
        ip_address_range: col(r, T, "ip_address_range", &id)?,
        created_at: col(r, T, "created_at", &id)?,
        disabled: flag(r, T, "disabled", &id)?,
        activation_id: id,
    })
}

pub(super) fn instance_from(r: &AnyRow) -> Result<InstanceRow> {
    const T: &str = "instances";
    let id = key(r, T, "instance_id")?;
    Ok(InstanceRow {
        instance_name: col(r, T, "instance_name", &id)?,
        token_hash: col(r, T, "token_hash", &id)?,
        pending_token_hash: col(r, T, "pending_token_hash", &id)?,
        facts: json_col(r, T, "facts", &id)?,
        ip: col(r, T, "ip", &id)?,
        online: flag(r, T, "online", &id)?,
        last_seen: col(r, T, "last_seen", &id)?,
        registered_at: col(r, T, "registered_at", &id)?,
        activation_id: col(r, T, "activation_id", &id)?,
        tags: json_col(r, T, "tags", &id)?,
        instance_id: id,
    })
}

pub(super) fn command_from(r: &AnyRow) -> Result<CommandRow> {
    const T: &str = "commands";
    let id = key(r, T, "command_id")?;
    Ok(CommandRow {
        name: col(r, T, "name", &id)?,
        description: col(r, T, "description", &id)?,
        command_type: named(r, T, "command_type", &id, CommandType::parse)?,
        content: col(r, T, "content", &id)?,
        working_dir: col(r, T, "working_dir", &id)?,
        timeout_secs: col(r, T, "timeout_secs", &id)?,
        enable_parameter: flag(r, T, "enable_parameter", &id)?,
        username: col(r, T, "username", &id)?,
        created_at: col(r, T, "created_at", &id)?,
        visible: flag(r, T, "visible", &id)?,
        invoke_times: col(r, T, "invoke_times", &id)?,
        command_id: id,
    })
}

/// The per-state counts kept on an invocation row.
pub(super) fn counts_from(r: &AnyRow, id: &str) -> Result<Counts> {
    let mut c = Counts::default();
    for s in InvocationStatus::ALL {
        let column = s.count_column();
        let n: i64 = r.try_get(column).map_err(|e| StoreError::Decode {
            table: "invocations",
            column,
            id: id.to_string(),
            detail: e.to_string(),
        })?;
        c.set(*s, n);
    }
    Ok(c)
}

pub(super) fn invocation_from(r: &AnyRow) -> Result<InvocationRow> {
    const T: &str = "invocations";
    let id = key(r, T, "invoke_id")?;
    Ok(InvocationRow {
        command_id: col(r, T, "command_id", &id)?,
        command_name: col(r, T, "command_name", &id)?,
        command_type: named(r, T, "command_type", &id, CommandType::parse)?,
        content: col(r, T, "content", &id)?,
        timeout_secs: col(r, T, "timeout_secs", &id)?,
        working_dir: col(r, T, "working_dir", &id)?,
        username: col(r, T, "username", &id)?,
        enable_parameter: flag(r, T, "enable_parameter", &id)?,
        parameters: col(r, T, "parameters", &id)?,
        repeat_mode: named(r, T, "repeat_mode", &id, RepeatMode::parse)?,
        frequency: col(r, T, "frequency", &id)?,
        created_at: col(r, T, "created_at", &id)?,
        client_token: col(r, T, "client_token", &id)?,
        stop_requested: flag(r, T, "stop_requested", &id)?,
        counts: counts_from(r, &id)?,
        window: Window {
            max_concurrency: col(r, T, "max_concurrency", &id)?,
            max_errors: Some(col::<i64>(r, T, "max_errors", &id)?).filter(|n| *n >= 0),
            batch_wait_secs: col(r, T, "batch_wait_secs", &id)?,
        },
        revision: col(r, T, "revision", &id)?,
        unreachable: Vec::new(),
        file: file_col(r, &id)?,
        invoke_id: id,
    })
}

/// Target columns without the output blob.
pub(super) const TARGET_COLS: &str = "t.invoke_id, t.instance_id, t.status, t.delivered, t.repeats, t.exit_code, t.dropped, \
     t.error_code, t.error_info, t.start_time, t.finish_time, t.updated_at, t.created_at";

/// A target row; `output` is read only when the query selected it.
pub(super) fn target_from(r: &AnyRow, with_output: bool) -> Result<TargetRow> {
    const T: &str = "targets";
    let invoke_id: String = key(r, T, "invoke_id")?;
    let instance_id: String = col(r, T, "instance_id", &invoke_id)?;
    let id = format!("{invoke_id}/{instance_id}");
    Ok(TargetRow {
        status: status_col(r, T, &id)?,
        delivered: flag(r, T, "delivered", &id)?,
        repeats: col(r, T, "repeats", &id)?,
        exit_code: col(r, T, "exit_code", &id)?,
        output: if with_output { col(r, T, "output", &id)? } else { Vec::new() },
        dropped: col(r, T, "dropped", &id)?,
        error_code: error_code_col(r, T, &id)?,
        error_info: col(r, T, "error_info", &id)?,
        start_time: col(r, T, "start_time", &id)?,
        finish_time: col(r, T, "finish_time", &id)?,
        updated_at: col(r, T, "updated_at", &id)?,
        created_at: col(r, T, "created_at", &id)?,
        invoke_id,
        instance_id,
    })
}

pub(super) fn record_from(r: &AnyRow) -> Result<RecordRow> {
    const T: &str = "records";
    let invoke_id: String = key(r, T, "invoke_id")?;
    let instance_id: String = col(r, T, "instance_id", &invoke_id)?;
    let record_seq: i64 = col(r, T, "record_seq", &invoke_id)?;
    let id = format!("{invoke_id}/{instance_id}/{record_seq}");
    Ok(RecordRow {
        status: status_col(r, T, &id)?,
        exit_code: col(r, T, "exit_code", &id)?,
        output: col(r, T, "output", &id)?,
        dropped: col(r, T, "dropped", &id)?,
        error_code: error_code_col(r, T, &id)?,
        error_info: col(r, T, "error_info", &id)?,
        start_time: col(r, T, "start_time", &id)?,
        finish_time: col(r, T, "finish_time", &id)?,
        invoke_id,
        instance_id,
        record_seq,
    })
}

/// A history row (see `list_history`): the record's columns, or the
/// target's when it has no record (`record_seq` NULL).
pub(super) fn result_from(r: &AnyRow) -> Result<ResultRow> {
    const T: &str = "records";
    let invoke_id: String = key(r, T, "invoke_id")?;
    let instance_id: String = col(r, T, "instance_id", &invoke_id)?;
    let record_seq: Option<i64> = col(r, T, "record_seq", &invoke_id)?;
    let id = format!("{invoke_id}/{instance_id}/{record_seq:?}");
    Ok(ResultRow {
        status: status_col(r, T, &id)?,
        repeats: col(r, T, "repeats", &id)?,
        exit_code: col(r, T, "exit_code", &id)?,
        output: col(r, T, "output", &id)?,
        dropped: col(r, T, "dropped", &id)?,
        error_code: error_code_col(r, T, &id)?,
        error_info: col(r, T, "error_info", &id)?,
        start_time: col(r, T, "start_time", &id)?,
        finish_time: col(r, T, "finish_time", &id)?,
        invoke_id,
        instance_id,
        record_seq,
    })
}

/// Builds `WHERE` clauses for invocation filters; values bound in order.
pub(super) fn invocation_where(f: &InvocationFilter, alias: &str) -> (String, Vec<String>) {
    let mut clauses = Vec::new();
    let mut binds = Vec::new();
    let mut add = |col: &str, v: Option<&str>| {
        if let Some(v) = v {
            clauses.push(format!("{alias}{col} = ?"));
            binds.push(v.to_string());
        }
    };
    add("invoke_id", f.invoke_id.as_deref());
    add("command_id", f.command_id.as_deref());
    add("command_type", f.command_type.map(|t| t.as_str()));
    add("command_name", f.command_name.as_deref());
    add("repeat_mode", f.repeat_mode.map(|m| m.as_str()));
    // A file delivery's command_name is its file name.
    add("command_name", f.file_name.as_deref());
    // File deliveries are listed only when asked for by type (the
    // SendFile family), as Cloud Assistant keeps them apart.
    if f.command_type.is_none() {
        clauses.push(format!("{alias}command_type <> ?"));
        binds.push(crate::lifecycle::CommandType::SendFile.as_str().to_string());
    }
    if let Some((legacy, current)) = &f.status {
        // Both aggregates are kept on the row (see `writes::move_target`),
        // so this filter runs before paging, in SQL.
        let mut either = Vec::new();
        if let Some(l) = legacy {
            either.push(format!("{alias}invoke_status = ?"));
            binds.push(l.as_str().to_string());
        }
        if let Some(c) = current {
            either.push(format!("{alias}invocation_status = ?"));
            binds.push(c.as_str().to_string());
        }
        if either.is_empty() {
            either.push("1 = 0".to_string());
        }
        clauses.push(format!("({})", either.join(" OR ")));
    }
    if let Some(i) = &f.instance_id {
        clauses.push(format!("EXISTS (SELECT 1 FROM targets t2 WHERE t2.invoke_id = {alias}invoke_id AND t2.instance_id = ?)"));
        binds.push(i.clone());
    }
    let w = if clauses.is_empty() { String::new() } else { format!("WHERE {}", clauses.join(" AND ")) };
    (w, binds)
}

/// `?,?,…` for `n` binds (at least one, so `IN ()` is never produced).
pub(super) fn placeholders(n: usize) -> String {
    vec!["?"; n.max(1)].join(",")
}
