//! Per-fire rollout windows of periodic invocations (deckhand extension,
//! issue #16, docs/fleet.md "Periodic invocations").
//!
//! A `Period` invocation with a window keeps every target armed; what the
//! window holds back is each *fire*. Before a fire the agent asks
//! ([`SqlStore::fire_request_once`]); the request becomes a `fires` row
//! keyed by (invocation, instance, record_seq) and grouped by the fire's
//! nominal instant `fire_at`: the rows sharing it are that fire's window.
//! As for one-shot windows (`window.rs`), every move happens in a
//! transaction that locks the invocation row first (`FOR UPDATE` on
//! PostgreSQL, SQLite's single writer): a request, a record's settle (the
//! report batch, [`settle`]), and the backstop pass
//! ([`SqlStore::advance_fires_impl`]). Two replicas cannot both fill one
//! slot. What was decided is announced after commit and sent by
//! `hub::rollout` through `hub::delivery`.

use std::collections::BTreeSet;

use sqlx::AssertSqlSafe;

use super::conns::WriteTx;

use super::super::*;
use super::SqlStore;
use super::dialect::{Dialect, bound_count};
use super::rows::{col, key, status_col};
use crate::lifecycle::{ErrorCode, InvocationStatus, RepeatMode};

/// A fire request for an instant further than this from the hub's clock
/// is refused when first seen (a re-ask of a known fire is not checked:
/// it may wait up to one period). Generous for clock skew, small enough
/// that an agent cannot book fires far ahead.
pub const MAX_FIRE_SKEW_SECS: i64 = 300;
/// Fires kept per target: a new fire's request deletes this target's rows
/// older than this many record numbers, so the table is bounded by
/// targets × this whatever agents send.
const KEEP_PER_TARGET: i64 = 8;
/// Most fire windows one backstop pass looks at; the next takes the rest.
const ADVANCE_BATCH: i64 = 1000;
/// Longest `scheduled` text accepted.
const MAX_INSTANT_LEN: usize = 64;

/// Where one fire of one target stands. One codec: [`FireState::as_str`]
/// and [`FireState::parse`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FireState {
    /// Asked, held by the window.
    Waiting,
    /// May run; holds a slot until its record settles.
    Granted,
    /// Will not run (MaxErrors exceeded for this fire).
    Denied,
    /// Its record settled (ran, or ended without running).
    Done,
}

impl FireState {
    pub fn as_str(self) -> &'static str {
        match self {
            FireState::Waiting => "waiting",
            FireState::Granted => "granted",
            FireState::Denied => "denied",
            FireState::Done => "done",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        [FireState::Waiting, FireState::Granted, FireState::Denied, FireState::Done].into_iter().find(|f| f.as_str() == s)
    }
}

/// One fire window's counts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Standing {
    /// Granted and not settled.
    pub in_flight: i64,
    /// Granted, settled in error.
    pub errors: i64,
    pub waiting: i64,
}

/// What a window does next, from its counts alone (the arithmetic, kept
/// pure so it is tested without a database).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Errors exceed MaxErrors: every waiting fire is denied.
    Halt,
    /// Grant this many waiting fires (≥ 1).
    Grant(i64),
    /// Nothing to do now.
    Hold,
}

/// `max_errors` < 0: no limit.
pub fn step(st: Standing, max_concurrency: i64, max_errors: i64) -> Step {
    if st.waiting == 0 {
        return Step::Hold;
    }
    if max_errors >= 0 && st.errors > max_errors {
        return Step::Halt;
    }
    let free = max_concurrency.max(1) - st.in_flight;
    if free <= 0 { Step::Hold } else { Step::Grant(free.min(st.waiting)) }
}

/// Whether a settled record counts as an error of its fire: it was
/// granted and ended in any state but `Success` or `Cancelled` (a
/// cancelled fire never started: a stop, or a grant that came too late).
pub fn counts_as_error(status: InvocationStatus) -> bool {
    status.is_final() && status != InvocationStatus::Success && status != InvocationStatus::Cancelled
}

/// The nominal instant of a fire, normalised (UTC, whole seconds), so
/// agents that format it differently still share the window.
pub fn normalise_instant(s: &str) -> Option<chrono::DateTime<chrono::Utc>> {
    if s.len() > MAX_INSTANT_LEN {
        return None;
    }
    let t = chrono::DateTime::parse_from_rfc3339(s).ok()?.with_timezone(&chrono::Utc);
    chrono::DateTime::from_timestamp(t.timestamp(), 0)
}

fn instant_str(t: chrono::DateTime<chrono::Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

fn denied(info: impl Into<String>) -> FireDecision {
    FireDecision::Denied { code: ErrorCode::FireNotGranted, info: info.into() }
}

/// The window of invocation `invoke_id`: (MaxConcurrency, MaxErrors), read
/// with the row locked; `None` when it has no per-fire window.
async fn lock_window(tx: &mut WriteTx, d: Dialect, invoke_id: &str) -> Result<Option<Option<(i64, i64)>>> {
    let sql = format!("SELECT repeat_mode, max_concurrency, max_errors FROM invocations WHERE invoke_id = ?{}", d.for_update());
    let Some(row) = sqlx::query(AssertSqlSafe(d.sql(&sql))).bind(invoke_id).fetch_optional(&mut **tx).await? else {
        return Ok(None);
    };
    let mode: String = col(&row, "invocations", "repeat_mode", invoke_id)?;
    let max_concurrency: i64 = col(&row, "invocations", "max_concurrency", invoke_id)?;
    let max_errors: i64 = col(&row, "invocations", "max_errors", invoke_id)?;
    let windowed = RepeatMode::parse(&mode).ok() == Some(RepeatMode::Period) && max_concurrency > 0;
    Ok(Some(windowed.then_some((max_concurrency, max_errors))))
}

async fn standing(tx: &mut WriteTx, d: Dialect, invoke_id: &str, fire_at: &str) -> Result<Standing> {
    let rows = sqlx::query(AssertSqlSafe(
        d.sql("SELECT state, failed, COUNT(*) AS n FROM fires WHERE invoke_id = ? AND fire_at = ? GROUP BY state, failed"),
    ))
    .bind(invoke_id)
    .bind(fire_at)
    .fetch_all(&mut **tx)
    .await?;
    let mut st = Standing::default();
    for row in rows {
        let state: String = col(&row, "fires", "state", invoke_id)?;
        let failed: i64 = col(&row, "fires", "failed", invoke_id)?;
        let n: i64 = col(&row, "fires", "n", invoke_id)?;
        match FireState::parse(&state) {
            Some(FireState::Waiting) => st.waiting += n,
            Some(FireState::Granted) => st.in_flight += n,
            Some(FireState::Done) if failed != 0 => st.errors += n,
            Some(FireState::Done | FireState::Denied) => {}
            None => {
                return Err(StoreError::Decode {
                    table: "fires",
                    column: "state",
                    id: invoke_id.to_string(),
                    detail: "not a fire state".into(),
                });
            }
        }
    }
    Ok(st)
}

/// Moves the window of one fire inside `tx` (the invocation row already
/// locked by the caller); returns what it decided.
async fn advance(
    tx: &mut WriteTx,
    d: Dialect,
    invoke_id: &str,
    fire_at: &str,
    (max_concurrency, max_errors): (i64, i64),
) -> Result<Vec<FireAnswer>> {
    let st = standing(tx, d, invoke_id, fire_at).await?;
    let (limit, decision, state) = match step(st, max_concurrency, max_errors) {
        Step::Hold => return Ok(Vec::new()),
        Step::Grant(n) => (n, FireDecision::Granted, FireState::Granted),
        Step::Halt => {
            let info = format!(
                "the rollout of this fire ({fire_at}) stopped before this instance started: {} fires ended in error, more than MaxErrors {max_errors}",
                st.errors
            );
            (st.waiting, FireDecision::Denied { code: ErrorCode::MaxErrorsExceeded, info }, FireState::Denied)
        }
    };
    let rows = sqlx::query(AssertSqlSafe(d.sql(concat!(
        "SELECT instance_id, record_seq FROM fires WHERE invoke_id = ? AND fire_at = ? AND state = ? \
         ORDER BY requested_at, instance_id LIMIT ",
        bound_count!()
    ))))
    .bind(invoke_id)
    .bind(fire_at)
    .bind(FireState::Waiting.as_str())
    .bind(limit)
    .fetch_all(&mut **tx)
    .await?;
    let info = match &decision {
        FireDecision::Denied { info, .. } => info.clone(),
        FireDecision::Granted => String::new(),
    };
    let now = now_str();
    let mut out = Vec::with_capacity(rows.len());
    for row in rows {
        let instance_id = key(&row, "fires", "instance_id")?;
        let seq: i64 = col(&row, "fires", "record_seq", &instance_id)?;
        sqlx::query(AssertSqlSafe(
            d.sql("UPDATE fires SET state = ?, error_info = ?, decided_at = ? WHERE invoke_id = ? AND instance_id = ? AND record_seq = ?"),
        ))
        .bind(state.as_str())
        .bind(&info)
        .bind(&now)
        .bind(invoke_id)
        .bind(&instance_id)
        .bind(seq)
        .execute(&mut **tx)
        .await?;
        out.push(FireAnswer {
            invoke_id: invoke_id.to_string(),
            instance_id,
            record_seq: u32::try_from(seq).unwrap_or(0),
            decision: decision.clone(),
        });
    }
    match decision {
        FireDecision::Granted => tracing::debug!(invoke_id, fire_at, granted = out.len(), in_flight = st.in_flight, "fire window moved"),
        FireDecision::Denied { .. } => {
            tracing::info!(
                invoke_id,
                fire_at,
                errors = st.errors,
                max_errors,
                denied = out.len(),
                "fire stopped: errors exceeded MaxErrors"
            )
        }
    }
    Ok(out)
}

/// The decision stored on a row, for a request asked again.
fn stored_decision(state: FireState, info: String) -> Option<FireDecision> {
    match state {
        FireState::Waiting => None,
        FireState::Granted => Some(FireDecision::Granted),
        FireState::Denied => Some(FireDecision::Denied { code: ErrorCode::MaxErrorsExceeded, info }),
        FireState::Done => Some(denied("this fire has already settled")),
    }
}

/// A record of a windowed fire settled (inside the report batch's
/// transaction): its row is done, and when it held a slot the fire's
/// window is returned to be moved. No-op for records without a row.
pub(super) async fn settle(
    tx: &mut WriteTx,
    d: Dialect,
    instance_id: &str,
    invoke_id: &str,
    record_seq: u32,
    status: InvocationStatus,
) -> Result<Option<(String, String)>> {
    if record_seq == 0 || !status.is_final() {
        return Ok(None);
    }
    let row =
        sqlx::query(AssertSqlSafe(d.sql("SELECT state, fire_at FROM fires WHERE invoke_id = ? AND instance_id = ? AND record_seq = ?")))
            .bind(invoke_id)
            .bind(instance_id)
            .bind(record_seq as i64)
            .fetch_optional(&mut **tx)
            .await?;
    let Some(row) = row else { return Ok(None) };
    let state: String = col(&row, "fires", "state", invoke_id)?;
    let fire_at: String = col(&row, "fires", "fire_at", invoke_id)?;
    let state = FireState::parse(&state);
    if matches!(state, Some(FireState::Done)) {
        return Ok(None);
    }
    let held_slot = state == Some(FireState::Granted);
    sqlx::query(AssertSqlSafe(d.sql("UPDATE fires SET state = ?, failed = ? WHERE invoke_id = ? AND instance_id = ? AND record_seq = ?")))
        .bind(FireState::Done.as_str())
        .bind((held_slot && counts_as_error(status)) as i64)
        .bind(invoke_id)
        .bind(instance_id)
        .bind(record_seq as i64)
        .execute(&mut **tx)
        .await?;
    Ok(held_slot.then(|| (invoke_id.to_string(), fire_at)))
}

/// Moves the windows of fires whose slots `settle` freed, inside `tx`.
pub(super) async fn advance_settled(tx: &mut WriteTx, d: Dialect, fires: &BTreeSet<(String, String)>) -> Result<Vec<FireAnswer>> {
    let mut out = Vec::new();
    for (invoke_id, fire_at) in fires {
        if let Some(Some(w)) = lock_window(tx, d, invoke_id).await? {
            out.extend(advance(tx, d, invoke_id, fire_at, w).await?);
        }
    }
    Ok(out)
}

impl SqlStore {
    pub(super) async fn fire_request_once(
        &self,
        invoke_id: &str,
        instance_id: &str,
        record_seq: u32,
        scheduled: &str,
    ) -> Result<FireOutcome> {
        let mut tx = self.begin().await?;
        let outcome = self.fire_request_tx(&mut tx, invoke_id, instance_id, record_seq, scheduled).await?;
        tx.commit().await?;
        let (outcome, others) = outcome;
        self.announce_fires(others);
        Ok(outcome)
    }

    async fn fire_request_tx(
        &self,
        tx: &mut WriteTx,
        invoke_id: &str,
        instance_id: &str,
        record_seq: u32,
        scheduled: &str,
    ) -> Result<(FireOutcome, Vec<FireAnswer>)> {
        let d = self.d;
        let Some(window) = lock_window(tx, d, invoke_id).await? else { return Ok((FireOutcome::NotATarget, Vec::new())) };
        let target = sqlx::query(AssertSqlSafe(d.sql("SELECT status FROM targets WHERE invoke_id = ? AND instance_id = ?")))
            .bind(invoke_id)
            .bind(instance_id)
            .fetch_optional(&mut **tx)
            .await?;
        let Some(target) = target else { return Ok((FireOutcome::NotATarget, Vec::new())) };
        let status = status_col(&target, "targets", invoke_id)?;
        if status.is_final() || status == InvocationStatus::Stopping {
            let info = format!("the invocation no longer runs on this instance (it is {status})");
            return Ok((FireOutcome::Decided(denied(info)), Vec::new()));
        }
        // No per-fire window (never had one): nothing to hold the fire for.
        let Some(window) = window else { return Ok((FireOutcome::Decided(FireDecision::Granted), Vec::new())) };
        if record_seq == 0 {
            return Ok((FireOutcome::Decided(denied("record_seq 0 is not a fire; fires are numbered from 1")), Vec::new()));
        }
        let seq = record_seq as i64;
        let known = sqlx::query(AssertSqlSafe(
            d.sql("SELECT state, error_info FROM fires WHERE invoke_id = ? AND instance_id = ? AND record_seq = ?"),
        ))
        .bind(invoke_id)
        .bind(instance_id)
        .bind(seq)
        .fetch_optional(&mut **tx)
        .await?;
        if let Some(row) = known {
            let state: String = col(&row, "fires", "state", invoke_id)?;
            let info: String = col(&row, "fires", "error_info", invoke_id)?;
            let Some(state) = FireState::parse(&state) else {
                return Err(StoreError::Decode {
                    table: "fires",
                    column: "state",
                    id: invoke_id.to_string(),
                    detail: "not a fire state".into(),
                });
            };
            return Ok((stored_decision(state, info).map_or(FireOutcome::Waiting, FireOutcome::Decided), Vec::new()));
        }
        let Some(at) = normalise_instant(scheduled) else {
            return Ok((FireOutcome::Decided(denied("scheduled is not an RFC 3339 time of at most 64 bytes")), Vec::new()));
        };
        let skew = (at - chrono::Utc::now()).num_seconds();
        if skew.abs() > MAX_FIRE_SKEW_SECS {
            let info = format!("the fire's instant is {skew} s from the hub's clock; the limit is {MAX_FIRE_SKEW_SECS} s");
            return Ok((FireOutcome::Decided(denied(info)), Vec::new()));
        }
        let newest: Option<i64> =
            sqlx::query_scalar(AssertSqlSafe(d.sql("SELECT MAX(record_seq) FROM fires WHERE invoke_id = ? AND instance_id = ?")))
                .bind(invoke_id)
                .bind(instance_id)
                .fetch_one(&mut **tx)
                .await?;
        if let Some(newest) = newest
            && seq < newest
        {
            let info = format!("record_seq {seq} is older than fire {newest} this instance already asked for");
            return Ok((FireOutcome::Decided(denied(info)), Vec::new()));
        }
        // This target has moved on: an older fire still waiting never got
        // its slot (the agent ends it `Cancelled` itself), and rows beyond
        // the last few are forgotten.
        sqlx::query(AssertSqlSafe(d.sql("UPDATE fires SET state = ? WHERE invoke_id = ? AND instance_id = ? AND state = ?")))
            .bind(FireState::Done.as_str())
            .bind(invoke_id)
            .bind(instance_id)
            .bind(FireState::Waiting.as_str())
            .execute(&mut **tx)
            .await?;
        sqlx::query(AssertSqlSafe(d.sql("DELETE FROM fires WHERE invoke_id = ? AND instance_id = ? AND record_seq <= ?")))
            .bind(invoke_id)
            .bind(instance_id)
            .bind(seq - KEEP_PER_TARGET)
            .execute(&mut **tx)
            .await?;
        let fire_at = instant_str(at);
        sqlx::query(AssertSqlSafe(
            d.sql("INSERT INTO fires (invoke_id, instance_id, record_seq, fire_at, state, requested_at) VALUES (?,?,?,?,?,?)"),
        ))
        .bind(invoke_id)
        .bind(instance_id)
        .bind(seq)
        .bind(&fire_at)
        .bind(FireState::Waiting.as_str())
        .bind(now_str())
        .execute(&mut **tx)
        .await?;
        let mut answers = advance(tx, d, invoke_id, &fire_at, window).await?;
        let mine = answers.iter().position(|a| a.instance_id == instance_id && a.record_seq == record_seq);
        let outcome = match mine {
            Some(i) => FireOutcome::Decided(answers.swap_remove(i).decision),
            None => FireOutcome::Waiting,
        };
        Ok((outcome, answers))
    }

    pub(super) async fn advance_fires_impl(&self) -> Result<Vec<FireAnswer>> {
        // A fire waiting on a target that is stopped or settled will never
        // be asked about again (the agent ends the wait silently on a stop).
        let ended: Vec<InvocationStatus> =
            InvocationStatus::ALL.iter().copied().filter(|s| s.is_final() || *s == InvocationStatus::Stopping).collect();
        let sql = format!(
            "UPDATE fires SET state = ? WHERE state = ? AND EXISTS (SELECT 1 FROM targets t WHERE t.invoke_id = fires.invoke_id \
             AND t.instance_id = fires.instance_id AND t.status IN ({}))",
            vec!["?"; ended.len()].join(",")
        );
        let mut q = self.q(&sql).bind(FireState::Done.as_str()).bind(FireState::Waiting.as_str());
        for st in &ended {
            q = q.bind(st.as_str());
        }
        q.execute(&mut *self.writes.get().await?).await?;
        // Newest fires first: a fire whose agent went away waits until that
        // agent asks about a later one, and must not crowd out live fires.
        let rows = self
            .q(concat!(
                "SELECT DISTINCT invoke_id, fire_at FROM fires WHERE state = ? ORDER BY fire_at DESC, invoke_id LIMIT ",
                bound_count!()
            ))
            .bind(FireState::Waiting.as_str())
            .bind(ADVANCE_BATCH)
            .fetch_all(&mut *self.reads.get().await?)
            .await?;
        let mut out = Vec::new();
        for row in rows {
            let invoke_id = key(&row, "fires", "invoke_id")?;
            let fire_at: String = col(&row, "fires", "fire_at", &invoke_id)?;
            let mut tx = self.begin().await?;
            let answers = match lock_window(&mut tx, self.d, &invoke_id).await? {
                Some(Some(w)) => advance(&mut tx, self.d, &invoke_id, &fire_at, w).await?,
                _ => Vec::new(),
            };
            tx.commit().await?;
            out.extend(answers);
        }
        Ok(out)
    }

    pub(super) async fn recent_fire_answers_impl(&self, invoke_id: &str, since: &str) -> Result<Vec<FireAnswer>> {
        let rows = self
            .q("SELECT instance_id, record_seq, state, error_info FROM fires WHERE invoke_id = ? AND state IN (?, ?) AND decided_at >= ?")
            .bind(invoke_id)
            .bind(FireState::Granted.as_str())
            .bind(FireState::Denied.as_str())
            .bind(since)
            .fetch_all(&mut *self.reads.get().await?)
            .await?;
        let mut out = Vec::with_capacity(rows.len());
        for row in rows {
            let instance_id = key(&row, "fires", "instance_id")?;
            let seq: i64 = col(&row, "fires", "record_seq", &instance_id)?;
            let state: String = col(&row, "fires", "state", &instance_id)?;
            let info: String = col(&row, "fires", "error_info", &instance_id)?;
            let Some(decision) = FireState::parse(&state).and_then(|s| stored_decision(s, info)) else { continue };
            out.push(FireAnswer { invoke_id: invoke_id.to_string(), instance_id, record_seq: u32::try_from(seq).unwrap_or(0), decision });
        }
        Ok(out)
    }

    /// Tells this process's hub about fire decisions of a committed
    /// transaction (nobody listening is fine: agents ask again).
    pub(super) fn announce_fires(&self, answers: Vec<FireAnswer>) {
        if !answers.is_empty() {
            let _ = self.fires.send(answers);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn st(in_flight: i64, errors: i64, waiting: i64) -> Standing {
        Standing { in_flight, errors, waiting }
    }

    #[test]
    fn grants_fill_free_slots_and_never_more_than_wait() {
        assert_eq!(step(st(0, 0, 5), 2, -1), Step::Grant(2));
        assert_eq!(step(st(1, 0, 5), 2, -1), Step::Grant(1));
        assert_eq!(step(st(2, 0, 5), 2, -1), Step::Hold);
        assert_eq!(step(st(0, 0, 1), 2, -1), Step::Grant(1));
        assert_eq!(step(st(0, 0, 0), 2, -1), Step::Hold);
        // More in flight than the window (a window narrowed): hold.
        assert_eq!(step(st(3, 0, 5), 2, -1), Step::Hold);
    }

    #[test]
    fn errors_beyond_max_errors_halt_only_with_waiters() {
        assert_eq!(step(st(0, 3, 4), 2, 2), Step::Halt);
        assert_eq!(step(st(0, 2, 4), 2, 2), Step::Grant(2));
        assert_eq!(step(st(0, 1, 4), 2, 0), Step::Halt);
        assert_eq!(step(st(0, 9, 0), 2, 0), Step::Hold);
        // No limit.
        assert_eq!(step(st(0, 99, 4), 2, -1), Step::Grant(2));
    }

    #[test]
    fn only_granted_runs_that_did_not_succeed_or_cancel_are_errors() {
        assert!(counts_as_error(InvocationStatus::Failed));
        assert!(counts_as_error(InvocationStatus::Timeout));
        assert!(counts_as_error(InvocationStatus::Terminated));
        assert!(!counts_as_error(InvocationStatus::Success));
        assert!(!counts_as_error(InvocationStatus::Cancelled));
        assert!(!counts_as_error(InvocationStatus::Running));
    }

    #[test]
    fn instants_normalise_to_utc_seconds_and_refuse_junk() {
        let a = normalise_instant("2026-11-24T16:00:05.250+01:00").unwrap();
        assert_eq!(instant_str(a), "2026-11-24T15:00:05Z");
        assert_eq!(normalise_instant("2026-11-24T15:00:05Z"), Some(a));
        assert!(normalise_instant("yesterday").is_none());
        assert!(normalise_instant(&"9".repeat(100)).is_none());
        assert!(normalise_instant("").is_none());
    }

    #[test]
    fn fire_states_round_trip() {
        for s in [FireState::Waiting, FireState::Granted, FireState::Denied, FireState::Done] {
            assert_eq!(FireState::parse(s.as_str()), Some(s));
        }
        assert_eq!(FireState::parse("Granted"), None);
    }
}
