//! The rollout window of an invocation (deckhand extension, issue #16,
//! docs/fleet.md): which held targets to let go, and when to stop the
//! rollout because too many targets ended in error.
//!
//! The window is state in the store, not in a hub's memory: a target the
//! window holds back is `released = 0` (and `Pending`, never sent). It is
//! moved inside the transaction that commits a target's transition (the
//! group-commit batch, a delivery expiry), with the invocation row locked,
//! so two replicas settling targets of one invocation at once cannot both
//! fill the same free slot. [`SqlStore::advance_windows_impl`] moves every
//! window that can move: the backstop after a restart or a missed
//! announcement, and the only path once `BatchWait` has passed.

use sqlx::AssertSqlSafe;

use super::conns::WriteTx;

use super::super::*;
use super::SqlStore;
use super::dialect::{Dialect, bound_count};
use super::rows::{col, status_col};
use super::writes::{Moved, move_target};
use crate::lifecycle::{Event, TargetState};

/// Most invocations one backstop pass looks at; the next pass takes the rest.
const ADVANCE_BATCH: i64 = 1000;

/// How a window stands, from the targets it has let go.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Standing {
    /// Released and not settled.
    in_flight: i64,
    /// Released and settled in any state but `Success`.
    errors: i64,
}

async fn standing(tx: &mut WriteTx, d: Dialect, invoke_id: &str) -> Result<Standing> {
    let rows =
        sqlx::query(AssertSqlSafe(d.sql("SELECT status, COUNT(*) AS n FROM targets WHERE invoke_id = ? AND released = 1 GROUP BY status")))
            .bind(invoke_id)
            .fetch_all(&mut **tx)
            .await?;
    let mut st = Standing::default();
    for row in rows {
        let status = status_col(&row, "targets", invoke_id)?;
        let n: i64 = col(&row, "targets", "n", invoke_id)?;
        match status.outcome() {
            None => st.in_flight += n,
            Some(crate::lifecycle::Outcome::Succeeded) => {}
            Some(_) => st.errors += n,
        }
    }
    Ok(st)
}

/// Held targets of one invocation, in release order (instance id), at most `limit`.
async fn held(tx: &mut WriteTx, d: Dialect, invoke_id: &str, limit: i64) -> Result<Vec<String>> {
    let ids = sqlx::query_scalar(AssertSqlSafe(d.sql(concat!(
        "SELECT instance_id FROM targets WHERE invoke_id = ? AND released = 0 AND status = ? AND delivered = 0 \
         ORDER BY instance_id LIMIT ",
        bound_count!()
    ))))
    .bind(invoke_id)
    .bind(TargetState::CREATED.status.as_str())
    .bind(limit)
    .fetch_all(&mut **tx)
    .await?;
    Ok(ids)
}

/// Moves the window of `invoke_id` inside `tx`: cancels every held target
/// when errors exceed `MaxErrors`, otherwise releases held targets into
/// the free slots (unless `BatchWait` has not passed). Returns the
/// targets released. No-op for an invocation without a window.
pub(super) async fn advance(tx: &mut WriteTx, d: Dialect, invoke_id: &str) -> Result<Vec<String>> {
    // Locks the invocation row: every advance of one window is serialised.
    let sql =
        format!("SELECT max_concurrency, max_errors, batch_wait_secs, repeat_mode FROM invocations WHERE invoke_id = ?{}", d.for_update());
    let Some(row) = sqlx::query(AssertSqlSafe(d.sql(&sql))).bind(invoke_id).fetch_optional(&mut **tx).await? else {
        return Ok(Vec::new());
    };
    // A periodic invocation's window is per fire (`fires.rs`), not per target.
    let mode: String = col(&row, "invocations", "repeat_mode", invoke_id)?;
    if mode == crate::lifecycle::RepeatMode::Period.as_str() {
        return Ok(Vec::new());
    }
    let max_concurrency: i64 = col(&row, "invocations", "max_concurrency", invoke_id)?;
    let max_errors: i64 = col(&row, "invocations", "max_errors", invoke_id)?;
    let batch_wait: i64 = col(&row, "invocations", "batch_wait_secs", invoke_id)?;
    if max_concurrency <= 0 {
        return Ok(Vec::new());
    }
    let st = standing(tx, d, invoke_id).await?;
    if max_errors >= 0 && st.errors > max_errors {
        halt(tx, d, invoke_id, st.errors, max_errors).await?;
        return Ok(Vec::new());
    }
    let slots = max_concurrency - st.in_flight;
    if slots <= 0 {
        return Ok(Vec::new());
    }
    if batch_wait > 0 && !batch_wait_passed(tx, d, invoke_id, batch_wait).await? {
        return Ok(Vec::new());
    }
    let ids = held(tx, d, invoke_id, slots).await?;
    let now = now_str();
    for id in &ids {
        sqlx::query(AssertSqlSafe(
            d.sql("UPDATE targets SET released = 1, released_at = ?, updated_at = ? WHERE invoke_id = ? AND instance_id = ?"),
        ))
        .bind(&now)
        .bind(&now)
        .bind(invoke_id)
        .bind(id)
        .execute(&mut **tx)
        .await?;
    }
    if !ids.is_empty() {
        tracing::debug!(invoke_id, released = ids.len(), in_flight = st.in_flight, "rollout window moved");
    }
    Ok(ids)
}

/// Whether `batch_wait` seconds have passed since the latest released
/// target settled (true when none has: the first window waits for nothing).
/// The hub's clock decides: a settled target's `updated_at` is when the
/// hub committed its final state (`finish_time` is the agent's clock).
async fn batch_wait_passed(tx: &mut WriteTx, d: Dialect, invoke_id: &str, batch_wait: i64) -> Result<bool> {
    let finals: Vec<InvocationStatus> = InvocationStatus::ALL.iter().copied().filter(|s| s.is_final()).collect();
    let sql = format!(
        "SELECT MAX(updated_at) FROM targets WHERE invoke_id = ? AND released = 1 AND status IN ({})",
        vec!["?"; finals.len()].join(",")
    );
    let mut q = sqlx::query_scalar(AssertSqlSafe(d.sql(&sql))).bind(invoke_id);
    for s in &finals {
        q = q.bind(s.as_str());
    }
    let last: Option<String> = q.fetch_one(&mut **tx).await?;
    let Some(last) = last.and_then(|t| chrono::DateTime::parse_from_rfc3339(&t).ok()) else {
        return Ok(true);
    };
    let due = last.with_timezone(&chrono::Utc) + chrono::Duration::seconds(batch_wait);
    Ok(chrono::Utc::now() >= due)
}

/// Errors exceeded `MaxErrors`: every held target ends `Cancelled`
/// through the lifecycle, with an ErrorInfo that says why. Targets
/// already sent run to their end.
async fn halt(tx: &mut WriteTx, d: Dialect, invoke_id: &str, errors: i64, max_errors: i64) -> Result<()> {
    let ids = held(tx, d, invoke_id, i64::MAX).await?;
    let code = Event::RolloutHalted.error_code(false);
    let info =
        format!("the rollout stopped before this instance started: {errors} targets ended in error, more than MaxErrors {max_errors}");
    let mut cancelled = 0u64;
    for id in &ids {
        if let Moved::Changed { .. } = move_target(tx, d, invoke_id, id, Event::RolloutHalted).await? {
            sqlx::query(AssertSqlSafe(d.sql("UPDATE targets SET error_code = ?, error_info = ? WHERE invoke_id = ? AND instance_id = ?")))
                .bind(code.as_ref().map(|c| c.as_str()).unwrap_or_default())
                .bind(&info)
                .bind(invoke_id)
                .bind(id)
                .execute(&mut **tx)
                .await?;
            cancelled += 1;
        }
    }
    if cancelled > 0 {
        tracing::info!(invoke_id, errors, max_errors, cancelled, "rollout stopped: errors exceeded MaxErrors");
    }
    Ok(())
}

impl SqlStore {
    pub(super) async fn advance_windows_impl(&self) -> Result<Vec<Released>> {
        let ids: Vec<String> = self
            .qs(concat!(
                "SELECT DISTINCT invoke_id FROM targets WHERE released = 0 AND status = ? AND delivered = 0 ORDER BY invoke_id LIMIT ",
                bound_count!()
            ))
            .bind(TargetState::CREATED.status.as_str())
            .bind(ADVANCE_BATCH)
            .fetch_all(&mut *self.reads.get().await?)
            .await?;
        let mut out = Vec::new();
        for invoke_id in ids {
            let mut tx = self.begin().await?;
            let instances = advance(&mut tx, self.d, &invoke_id).await?;
            tx.commit().await?;
            if !instances.is_empty() {
                out.push(Released { invoke_id, instances });
            }
        }
        Ok(out)
    }

    /// Tells this process's hub about targets released by a committed
    /// transaction (nobody listening is fine: the backstop finds them).
    pub(super) fn announce_released(&self, released: &[Released]) {
        for r in released {
            let _ = self.released.send(r.clone());
        }
    }
}

/// Advances the windows of `invoke_ids` inside `tx` (the transaction that
/// settled some of their targets).
pub(super) async fn advance_all(tx: &mut WriteTx, d: Dialect, invoke_ids: &std::collections::BTreeSet<String>) -> Result<Vec<Released>> {
    let mut out = Vec::new();
    for invoke_id in invoke_ids {
        let instances = advance(tx, d, invoke_id).await?;
        if !instances.is_empty() {
            out.push(Released { invoke_id: invoke_id.clone(), instances });
        }
    }
    Ok(out)
}
