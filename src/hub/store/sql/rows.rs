//! Row mapping and the filter builder for the SQL store.

use sqlx::Row;
use sqlx::any::AnyRow;

use super::super::*;

pub(super) fn status_of(s: &str) -> Result<RecordStatus> {
    RecordStatus::parse(s).ok_or_else(|| StoreError::Corrupt(format!("unknown status {s:?}")))
}

pub(super) fn activation_from(r: &AnyRow) -> ActivationRow {
    ActivationRow {
        activation_id: r.get("activation_id"),
        code_hash: r.get("code_hash"),
        instance_name: r.get("instance_name"),
        description: r.get("description"),
        instance_count: r.get("instance_count"),
        registered_count: r.get("registered_count"),
        deregistered_count: r.get("deregistered_count"),
        time_to_live_hours: r.get("time_to_live_hours"),
        ip_address_range: r.get("ip_address_range"),
        created_at: r.get("created_at"),
        disabled: r.get::<i64, _>("disabled") != 0,
    }
}

pub(super) fn instance_from(r: &AnyRow) -> InstanceRow {
    let facts: String = r.get("facts");
    let tags: String = r.get("tags");
    InstanceRow {
        instance_id: r.get("instance_id"),
        instance_name: r.get("instance_name"),
        token_hash: r.get("token_hash"),
        pending_token_hash: r.get("pending_token_hash"),
        facts: serde_json::from_str(&facts).unwrap_or_default(),
        ip: r.get("ip"),
        online: r.get::<i64, _>("online") != 0,
        last_seen: r.get("last_seen"),
        registered_at: r.get("registered_at"),
        activation_id: r.get("activation_id"),
        tags: serde_json::from_str(&tags).unwrap_or_default(),
    }
}

pub(super) fn command_from(r: &AnyRow) -> CommandRow {
    CommandRow {
        command_id: r.get("command_id"),
        name: r.get("name"),
        description: r.get("description"),
        command_type: r.get("command_type"),
        content: r.get("content"),
        working_dir: r.get("working_dir"),
        timeout_secs: r.get("timeout_secs"),
        enable_parameter: r.get::<i64, _>("enable_parameter") != 0,
        username: r.get("username"),
        created_at: r.get("created_at"),
        visible: r.get::<i64, _>("visible") != 0,
        invoke_times: r.get("invoke_times"),
    }
}

pub(super) fn invocation_from(r: &AnyRow) -> InvocationRow {
    InvocationRow {
        invoke_id: r.get("invoke_id"),
        command_id: r.get("command_id"),
        command_name: r.get("command_name"),
        command_type: r.get("command_type"),
        content: r.get("content"),
        timeout_secs: r.get("timeout_secs"),
        working_dir: r.get("working_dir"),
        username: r.get("username"),
        enable_parameter: r.get::<i64, _>("enable_parameter") != 0,
        parameters: r.get("parameters"),
        repeat_mode: r.get("repeat_mode"),
        frequency: r.get("frequency"),
        created_at: r.get("created_at"),
        client_token: r.get("client_token"),
        stop_requested: r.get::<i64, _>("stop_requested") != 0,
    }
}

pub(super) fn target_from(r: &AnyRow) -> Result<TargetRow> {
    Ok(TargetRow {
        invoke_id: r.get("invoke_id"),
        instance_id: r.get("instance_id"),
        status: status_of(r.get("status"))?,
        delivered: r.get::<i64, _>("delivered") != 0,
        repeats: r.get("repeats"),
        exit_code: r.get("exit_code"),
        output: r.get("output"),
        dropped: r.get("dropped"),
        error_code: r.get("error_code"),
        error_info: r.get("error_info"),
        start_time: r.get("start_time"),
        finish_time: r.get("finish_time"),
        updated_at: r.get("updated_at"),
        created_at: r.get("created_at"),
    })
}

pub(super) fn record_from(r: &AnyRow) -> Result<RecordRow> {
    Ok(RecordRow {
        invoke_id: r.get("invoke_id"),
        instance_id: r.get("instance_id"),
        record_seq: r.get("record_seq"),
        status: status_of(r.get("status"))?,
        exit_code: r.get("exit_code"),
        output: r.get("output"),
        dropped: r.get("dropped"),
        error_code: r.get("error_code"),
        error_info: r.get("error_info"),
        start_time: r.get("start_time"),
        finish_time: r.get("finish_time"),
    })
}

/// Builds `WHERE` clauses for invocation filters; values bound in order.
pub(super) fn invocation_where(f: &InvocationFilter, alias: &str) -> (String, Vec<String>) {
    let mut clauses = Vec::new();
    let mut binds = Vec::new();
    let mut add = |col: &str, v: &Option<String>| {
        if let Some(v) = v {
            clauses.push(format!("{alias}{col} = ?"));
            binds.push(v.clone());
        }
    };
    add("invoke_id", &f.invoke_id);
    add("command_id", &f.command_id);
    add("command_type", &f.command_type);
    add("command_name", &f.command_name);
    add("repeat_mode", &f.repeat_mode);
    if let Some(i) = &f.instance_id {
        clauses.push(format!(
            "EXISTS (SELECT 1 FROM targets t2 WHERE t2.invoke_id = {alias}invoke_id AND t2.instance_id = ?)"
        ));
        binds.push(i.clone());
    }
    let w = if clauses.is_empty() { String::new() } else { format!("WHERE {}", clauses.join(" AND ")) };
    (w, binds)
}
