//! Applying an agent report: the record upsert and the instance-level
//! status it implies; and the wire form of a stored invocation.

use sqlx::{Any, AssertSqlSafe, Row, Transaction};

use super::dialect::Dialect;
use super::rows::status_of;
use super::super::*;

pub(super) async fn apply_report_tx(tx: &mut Transaction<'static, Any>, d: Dialect, instance_id: &str, r: &RecordReport) -> Result<ReportEffect> {
    let target = sqlx::query(AssertSqlSafe(d.sql(
        "SELECT t.status, i.repeat_mode, i.frequency FROM targets t JOIN invocations i ON i.invoke_id = t.invoke_id \
         WHERE t.invoke_id = ? AND t.instance_id = ?",
    )))
    .bind(&r.invoke_id)
    .bind(instance_id)
    .fetch_optional(&mut **tx)
    .await?;
    let Some(target) = target else { return Ok(ReportEffect::NotATarget) };
    let repeat_mode: String = target.get("repeat_mode");
    let frequency: String = target.get("frequency");
    // A one-shot invocation has exactly one record, number 0: a rogue agent
    // cannot add hundreds (issue #14).
    if repeat_mode == "Once" && r.record_seq != 0 {
        return Ok(ReportEffect::NotATarget);
    }
    let existing: Option<String> =
        sqlx::query_scalar(AssertSqlSafe(d.sql("SELECT status FROM records WHERE invoke_id = ? AND instance_id = ? AND record_seq = ?")))
            .bind(&r.invoke_id)
            .bind(instance_id)
            .bind(r.record_seq as i64)
            .fetch_optional(&mut **tx)
            .await?;
    if let Some(existing) = existing {
        let existing = status_of(&existing)?;
        // A final record never changes again; a repeated non-final state adds nothing.
        if existing.is_final() || existing == r.status {
            return Ok(ReportEffect::Duplicate);
        }
    }
    let output = base64_decode(&r.output_b64);
    sqlx::query(AssertSqlSafe(d.sql(
        "INSERT INTO records (invoke_id, instance_id, record_seq, status, exit_code, output, dropped, error_code, \
         error_info, start_time, finish_time) VALUES (?,?,?,?,?,?,?,?,?,?,?) \
         ON CONFLICT (invoke_id, instance_id, record_seq) DO UPDATE SET status = excluded.status, \
         exit_code = excluded.exit_code, output = excluded.output, dropped = excluded.dropped, \
         error_code = excluded.error_code, error_info = excluded.error_info, start_time = excluded.start_time, \
         finish_time = excluded.finish_time",
    )))
    .bind(&r.invoke_id)
    .bind(instance_id)
    .bind(r.record_seq as i64)
    .bind(r.status.as_str())
    .bind(r.exit_code)
    .bind(&output)
    .bind(r.dropped as i64)
    .bind(&r.error_code)
    .bind(&r.error_info)
    .bind(&r.start_time)
    .bind(&r.finish_time)
    .execute(&mut **tx)
    .await?;
    let target_status = target_status_after(&repeat_mode, &frequency, r.status);
    let sql = format!(
        "UPDATE targets SET status = ?, delivered = 1, repeats = {}(repeats, ?), exit_code = ?, output = ?, \
         dropped = ?, error_code = ?, error_info = ?, \
         start_time = CASE WHEN start_time = '' THEN ? ELSE start_time END, finish_time = ?, updated_at = ? \
         WHERE invoke_id = ? AND instance_id = ?",
        d.greatest()
    );
    sqlx::query(AssertSqlSafe(d.sql(&sql)))
    .bind(target_status.as_str())
    .bind(r.record_seq as i64)
    .bind(r.exit_code)
    .bind(&output)
    .bind(r.dropped as i64)
    .bind(&r.error_code)
    .bind(&r.error_info)
    .bind(&r.start_time)
    .bind(if target_status.is_final() { r.finish_time.as_str() } else { "" })
    .bind(now_str())
    .bind(&r.invoke_id)
    .bind(instance_id)
    .execute(&mut **tx)
    .await?;
    Ok(ReportEffect::Applied)
}

/// Instance-level status after a record changes (seed 001): a one-shot
/// invocation (and a `Period` one whose frequency is a single `at()`)
/// mirrors its record; a repeating one stays Running between fires until
/// the user stops it.
pub(super) fn target_status_after(repeat_mode: &str, frequency: &str, record: RecordStatus) -> RecordStatus {
    let repeating = match repeat_mode {
        "Period" => !frequency.trim_start().starts_with("at("),
        "EveryReboot" => true,
        _ => false,
    };
    match repeating {
        true => match record {
            RecordStatus::Stopped => RecordStatus::Stopped,
            _ => RecordStatus::Running,
        },
        false => record,
    }
}

fn base64_decode(s: &str) -> Vec<u8> {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.decode(s).unwrap_or_default()
}

/// The wire form of a stored invocation for one instance.
pub fn to_wire(inv: &InvocationRow, instance_name: String) -> Invocation {
    Invocation {
        invoke_id: inv.invoke_id.clone(),
        command_id: inv.command_id.clone(),
        command_type: inv.command_type.clone(),
        content: inv.content.clone(),
        timeout_secs: inv.timeout_secs.max(0) as u64,
        working_dir: (!inv.working_dir.is_empty()).then(|| inv.working_dir.clone()),
        username: (!inv.username.is_empty()).then(|| inv.username.clone()),
        enable_parameter: inv.enable_parameter,
        parameters: serde_json::from_str(&inv.parameters).unwrap_or_default(),
        repeat_mode: inv.repeat_mode.clone(),
        frequency: (!inv.frequency.is_empty()).then(|| inv.frequency.clone()),
        instance_name,
        region_id: String::new(),
        created_at: inv.created_at.clone(),
    }
}
