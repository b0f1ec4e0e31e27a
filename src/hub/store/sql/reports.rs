//! Applying an agent report: the record upsert and the target transition
//! it implies (through `writes::move_target`); and the wire form of a
//! stored invocation.

use sqlx::{Any, AssertSqlSafe, Transaction};

use super::super::*;
use super::dialect::Dialect;
use super::rows::status_col;
use super::writes::{Moved, move_target};
use crate::lifecycle::Event;

pub(super) async fn apply_report_tx(
    tx: &mut Transaction<'static, Any>,
    d: Dialect,
    instance_id: &str,
    r: &RecordReport,
) -> Result<ReportEffect> {
    // Refused before anything is written: storing an empty output in
    // place of one we could not read would hide the loss.
    let output = match base64_decode(&r.output_b64) {
        Ok(o) => o,
        Err(e) => return Ok(ReportEffect::Refused(format!("output_b64 is not valid base64: {e}"))),
    };
    let existing =
        sqlx::query(AssertSqlSafe(d.sql("SELECT status FROM records WHERE invoke_id = ? AND instance_id = ? AND record_seq = ?")))
            .bind(&r.invoke_id)
            .bind(instance_id)
            .bind(r.record_seq as i64)
            .fetch_optional(&mut **tx)
            .await?;
    // A one-shot invocation has exactly one record, number 0: a rogue agent
    // cannot add hundreds (issue #14).
    if r.record_seq != 0 {
        let once: Option<i64> =
            sqlx::query_scalar(AssertSqlSafe(d.sql("SELECT 1 FROM invocations WHERE invoke_id = ? AND repeat_mode = ?")))
                .bind(&r.invoke_id)
                .bind(RepeatMode::Once.as_str())
                .fetch_optional(&mut **tx)
                .await?;
        if once.is_some() {
            return Ok(ReportEffect::Refused(format!("a Once invocation has only record 0, not {}", r.record_seq)));
        }
    }
    if let Some(existing) = existing {
        let existing = status_col(&existing, "records", &format!("{}/{instance_id}/{}", r.invoke_id, r.record_seq))?;
        // A final record never changes again; a repeated non-final state adds nothing.
        if existing.is_final() || existing == r.status {
            return Ok(ReportEffect::Duplicate);
        }
    }
    let moved = move_target(tx, d, &r.invoke_id, instance_id, Event::Reported(r.status)).await?;
    let target_status = match moved {
        Moved::Missing => return Ok(ReportEffect::NotATarget),
        Moved::Changed { to, .. } => Some(to.status),
        // A settled target keeps its state, but the run's record is still
        // kept (a late result after a stop or a delivery timeout).
        Moved::Refused(refusal) => {
            tracing::debug!(invoke_id = %r.invoke_id, instance_id, %refusal, "report leaves the target unchanged");
            None
        }
    };
    let error_code = r.error_code.as_ref().map(|c| c.as_str()).unwrap_or_default();
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
    .bind(error_code)
    .bind(&r.error_info)
    .bind(&r.start_time)
    .bind(&r.finish_time)
    .execute(&mut **tx)
    .await?;
    let Some(target_status) = target_status else { return Ok(ReportEffect::Applied) };
    let sql = format!(
        "UPDATE targets SET repeats = {}(repeats, ?), exit_code = ?, output = ?, \
         dropped = ?, error_code = ?, error_info = ?, \
         start_time = CASE WHEN start_time = '' THEN ? ELSE start_time END, finish_time = ? \
         WHERE invoke_id = ? AND instance_id = ?",
        d.greatest()
    );
    sqlx::query(AssertSqlSafe(d.sql(&sql)))
        .bind(r.record_seq as i64)
        .bind(r.exit_code)
        .bind(&output)
        .bind(r.dropped as i64)
        .bind(error_code)
        .bind(&r.error_info)
        .bind(&r.start_time)
        .bind(if target_status.is_final() { r.finish_time.as_str() } else { "" })
        .bind(&r.invoke_id)
        .bind(instance_id)
        .execute(&mut **tx)
        .await?;
    Ok(ReportEffect::Applied)
}

fn base64_decode(s: &str) -> std::result::Result<Vec<u8>, base64::DecodeError> {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.decode(s)
}

/// The wire form of a stored invocation for one instance.
pub fn to_wire(inv: &InvocationRow, instance_name: String) -> Invocation {
    Invocation {
        invoke_id: inv.invoke_id.clone(),
        command_id: inv.command_id.clone(),
        command_type: inv.command_type,
        content: inv.content.clone(),
        timeout_secs: inv.timeout_secs.max(0) as u64,
        working_dir: (!inv.working_dir.is_empty()).then(|| inv.working_dir.clone()),
        username: (!inv.username.is_empty()).then(|| inv.username.clone()),
        enable_parameter: inv.enable_parameter,
        parameters: serde_json::from_str(&inv.parameters).unwrap_or_default(),
        repeat_mode: inv.repeat_mode,
        frequency: (!inv.frequency.is_empty()).then(|| inv.frequency.clone()),
        instance_name,
        region_id: String::new(),
        created_at: inv.created_at.clone(),
        revision: inv.revision.max(0) as u64,
        file: inv.file.as_ref().map(|f| Box::new(f.spec.clone())),
        fire_window: inv.repeat_mode == RepeatMode::Period && inv.window.max_concurrency > 0,
    }
}
