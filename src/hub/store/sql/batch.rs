//! The group-commit batch (`hub::writer`) applied with a fixed handful of
//! statements, whatever its size (issue #21).
//!
//! Applying each operation on its own cost about seven statements per
//! report, each a hand-off to sqlx's SQLite worker thread or a PostgreSQL
//! round trip, under the write lock. Here the batch is read once (its
//! invocations, targets and records, locked on PostgreSQL), folded in
//! memory operation by operation in submission order — every target
//! transition still decided by `lifecycle::transition`, with the row
//! changes of [`super::writes::move_target`] — and written
//! back with a few multi-row statements per table, each of one of nine
//! fixed shapes ([`shaped`]) so that it is prepared once a connection,
//! not parsed anew for every batch size. The invocation counts move
//! in the same transaction, and the rollout windows of invocations that
//! had a target settled are advanced before the commit.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use sqlx::{Any, AssertSqlSafe};

use super::conns::WriteTx;

use super::super::*;
use super::SqlStore;
use super::dialect::{Dialect, shaped};
use super::rows::{col, counts_from, key, status_col};
use super::writes::Moved;
use crate::lifecycle::{Counts, Event, TargetState, transition};

/// `(?,…,?)` for `cols` values, `rows` times, comma-separated.
fn values(rows: usize, cols: usize) -> String {
    let one = format!("({})", vec!["?"; cols].join(","));
    vec![one; rows].join(",")
}

/// What the batch knows of one invocation: read once, locked on PostgreSQL.
struct Inv {
    mode: RepeatMode,
    frequency: String,
    /// Has a rollout window (`MaxConcurrency` > 0; fixed at creation).
    windowed: bool,
    counts: Counts,
    changed: bool,
}

/// One target as the batch has left it so far.
struct Target {
    /// The status as read: the counts move from it once, at the end.
    read: InvocationStatus,
    state: TargetState,
    repeats: i64,
    start_time: String,
    finish_time: String,
    updated_at: String,
    /// The op whose report columns the target shows (the last applied).
    report: Option<usize>,
    changed: bool,
}

/// One record: its status as stored (or as this batch left it), and the op
/// whose report it now holds.
struct Rec {
    status: Option<InvocationStatus>,
    write: Option<usize>,
}

type TargetKey = (String, String);
type RecKey = (String, String, i64);

impl Target {
    /// The row change [`super::writes::move_target`] makes: state, and the
    /// finish time stamped when the target settles without one.
    fn moved(&mut self, to: TargetState, now: &str) {
        if to != self.state {
            if to.status.is_final() && self.finish_time.is_empty() {
                self.finish_time = now.to_string();
            }
            self.state = to;
            self.updated_at = now.to_string();
            self.changed = true;
        }
    }
}

/// Applies `event` to one target in memory through the lifecycle; `None`
/// when there is no such target.
fn step(targets: &mut HashMap<TargetKey, Target>, invs: &HashMap<String, Inv>, key: &TargetKey, event: Event, now: &str) -> Option<Moved> {
    let t = targets.get_mut(key)?;
    let inv = invs.get(&key.0)?;
    Some(match transition(t.state, event, inv.mode, &inv.frequency) {
        Ok(to) => {
            let from = t.state;
            t.moved(to, now);
            Moved::Changed { from, to }
        }
        Err(r) => Moved::Refused(r),
    })
}

/// The batch's view of the store: what it read, and what it changed so far.
struct Fold {
    invs: HashMap<String, Inv>,
    targets: HashMap<TargetKey, Target>,
    recs: BTreeMap<RecKey, Rec>,
}

impl Fold {
    /// One report (the rules the per-report path had before issue #21):
    /// a Once invocation has only record 0; a record already final, or
    /// already in this state, makes the report a duplicate; a settled
    /// target keeps its state but the record is still kept.
    fn report(&mut self, i: usize, instance_id: &str, r: &RecordReport, now: &str) -> ReportEffect {
        let seq = i64::from(r.record_seq);
        let rk = (r.invoke_id.clone(), instance_id.to_string(), seq);
        let existing = self.recs.get(&rk).and_then(|x| x.status);
        if seq != 0 && self.invs.get(&r.invoke_id).is_some_and(|inv| inv.mode == RepeatMode::Once) {
            return ReportEffect::Refused(format!("a Once invocation has only record 0, not {}", r.record_seq));
        }
        if let Some(existing) = existing
            && (existing.is_final() || existing == r.status)
        {
            return ReportEffect::Duplicate;
        }
        let tk = (r.invoke_id.clone(), instance_id.to_string());
        let to = match step(&mut self.targets, &self.invs, &tk, Event::Reported(r.status), now) {
            None => return ReportEffect::NotATarget,
            Some(Moved::Changed { to, .. }) => Some(to),
            Some(Moved::Missing) => return ReportEffect::NotATarget,
            Some(Moved::Refused(refusal)) => {
                tracing::debug!(invoke_id = %r.invoke_id, instance_id, %refusal, "report leaves the target unchanged");
                None
            }
        };
        let rec = self.recs.entry(rk).or_insert(Rec { status: None, write: None });
        rec.status = Some(r.status);
        rec.write = Some(i);
        if let (Some(to), Some(t)) = (to, self.targets.get_mut(&tk)) {
            t.repeats = t.repeats.max(seq);
            t.report = Some(i);
            if t.start_time.is_empty() {
                t.start_time = r.start_time.clone();
            }
            t.finish_time = if to.status.is_final() { r.finish_time.clone() } else { String::new() };
            t.changed = true;
        }
        ReportEffect::Applied
    }
}

fn base64_decode(s: &str) -> std::result::Result<Vec<u8>, base64::DecodeError> {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.decode(s)
}

/// A statement of one of [`shaped`]'s shapes, kept prepared (sqlx's
/// default): at most nine shapes for each of the batch's seven
/// statements.
fn dynamic(d: Dialect, sql: &str) -> sqlx::query::Query<'static, Any, sqlx::any::AnyArguments> {
    sqlx::query(AssertSqlSafe(d.sql(sql)))
}

async fn read_invocations(tx: &mut WriteTx, d: Dialect, ids: &BTreeSet<&str>) -> Result<HashMap<String, Inv>> {
    let ids: Vec<&str> = ids.iter().copied().collect();
    let count_cols: Vec<&str> = InvocationStatus::ALL.iter().map(|s| s.count_column()).collect();
    let mut out = HashMap::with_capacity(ids.len());
    for chunk in shaped(&ids) {
        let sql = format!(
            "SELECT invoke_id, repeat_mode, frequency, max_concurrency, {} FROM invocations WHERE invoke_id IN ({}) \
             ORDER BY invoke_id{}",
            count_cols.join(", "),
            vec!["?"; chunk.len()].join(","),
            d.for_update()
        );
        let mut q = dynamic(d, &sql);
        for id in chunk {
            q = q.bind(*id);
        }
        for row in q.fetch_all(&mut **tx).await? {
            let id = key(&row, "invocations", "invoke_id")?;
            let mode_s: String = col(&row, "invocations", "repeat_mode", &id)?;
            let mode = RepeatMode::parse(&mode_s).map_err(|e| StoreError::Decode {
                table: "invocations",
                column: "repeat_mode",
                id: id.clone(),
                detail: e.to_string(),
            })?;
            let inv = Inv {
                mode,
                frequency: col(&row, "invocations", "frequency", &id)?,
                windowed: col::<i64>(&row, "invocations", "max_concurrency", &id)? > 0,
                counts: counts_from(&row, &id)?,
                changed: false,
            };
            out.insert(id, inv);
        }
    }
    Ok(out)
}

async fn read_targets(tx: &mut WriteTx, d: Dialect, keys: &BTreeSet<(&str, &str)>) -> Result<HashMap<TargetKey, Target>> {
    let keys: Vec<(&str, &str)> = keys.iter().copied().collect();
    let mut out = HashMap::with_capacity(keys.len());
    for chunk in shaped(&keys) {
        // A join from the key list, so each target is an index lookup
        // (SQLite scans the table for a row-value `IN`).
        let sql = format!(
            "WITH k(k_inv, k_inst) AS (VALUES {}) SELECT t.invoke_id, t.instance_id, t.status, t.delivered, t.repeats, \
             t.start_time, t.finish_time, t.updated_at FROM k JOIN targets t ON t.invoke_id = k.k_inv AND t.instance_id = k.k_inst \
             ORDER BY t.invoke_id, t.instance_id{}",
            values(chunk.len(), 2),
            d.for_update_of("t")
        );
        let mut q = dynamic(d, &sql);
        for (inv, inst) in chunk {
            q = q.bind(*inv).bind(*inst);
        }
        for row in q.fetch_all(&mut **tx).await? {
            let invoke_id = key(&row, "targets", "invoke_id")?;
            let instance_id: String = col(&row, "targets", "instance_id", &invoke_id)?;
            let id = format!("{invoke_id}/{instance_id}");
            let status = status_col(&row, "targets", &id)?;
            let t = Target {
                read: status,
                state: TargetState { status, delivered: col::<i64>(&row, "targets", "delivered", &id)? != 0 },
                repeats: col(&row, "targets", "repeats", &id)?,
                start_time: col(&row, "targets", "start_time", &id)?,
                finish_time: col(&row, "targets", "finish_time", &id)?,
                updated_at: col(&row, "targets", "updated_at", &id)?,
                report: None,
                changed: false,
            };
            out.insert((invoke_id, instance_id), t);
        }
    }
    Ok(out)
}

async fn read_records(tx: &mut WriteTx, d: Dialect, keys: &BTreeSet<(&str, &str, i64)>) -> Result<BTreeMap<RecKey, Rec>> {
    let keys: Vec<(&str, &str, i64)> = keys.iter().copied().collect();
    let mut out = BTreeMap::new();
    for chunk in shaped(&keys) {
        let sql = format!(
            "WITH k(k_inv, k_inst, k_seq) AS (VALUES {}) SELECT r.invoke_id, r.instance_id, r.record_seq, r.status \
             FROM k JOIN records r ON r.invoke_id = k.k_inv AND r.instance_id = k.k_inst AND r.record_seq = k.k_seq",
            values(chunk.len(), 3)
        );
        let mut q = dynamic(d, &sql);
        for (inv, inst, seq) in chunk {
            q = q.bind(*inv).bind(*inst).bind(*seq);
        }
        for row in q.fetch_all(&mut **tx).await? {
            let invoke_id = key(&row, "records", "invoke_id")?;
            let instance_id: String = col(&row, "records", "instance_id", &invoke_id)?;
            let seq: i64 = col(&row, "records", "record_seq", &invoke_id)?;
            let status = status_col(&row, "records", &format!("{invoke_id}/{instance_id}/{seq}"))?;
            out.insert((invoke_id, instance_id, seq), Rec { status: Some(status), write: None });
        }
    }
    Ok(out)
}

/// The report behind op `i` and its decoded output.
fn report_of<'a>(ops: &'a [WriteOp], outputs: &'a [Option<Vec<u8>>], i: usize) -> Option<(&'a RecordReport, &'a [u8])> {
    match (ops.get(i), outputs.get(i)) {
        (Some(WriteOp::Report { report, .. }), Some(Some(out))) => Some((report, out.as_slice())),
        _ => None,
    }
}

async fn write_records(
    tx: &mut WriteTx,
    d: Dialect,
    ops: &[WriteOp],
    outputs: &[Option<Vec<u8>>],
    recs: &BTreeMap<RecKey, Rec>,
) -> Result<()> {
    // One row per record (the last report of it wins, as consecutive
    // upserts would leave it): a multi-row upsert may not touch a row twice.
    let rows: Vec<(&RecKey, &RecordReport, &[u8])> =
        recs.iter().filter_map(|(k, rec)| rec.write.and_then(|i| report_of(ops, outputs, i)).map(|(r, out)| (k, r, out))).collect();
    for chunk in shaped(&rows) {
        let sql = format!(
            "INSERT INTO records (invoke_id, instance_id, record_seq, status, exit_code, output, dropped, error_code, \
             error_info, start_time, finish_time) VALUES {} \
             ON CONFLICT (invoke_id, instance_id, record_seq) DO UPDATE SET status = excluded.status, \
             exit_code = excluded.exit_code, output = excluded.output, dropped = excluded.dropped, \
             error_code = excluded.error_code, error_info = excluded.error_info, start_time = excluded.start_time, \
             finish_time = excluded.finish_time",
            values(chunk.len(), 11)
        );
        let mut q = dynamic(d, &sql);
        for ((inv, inst, seq), r, out) in chunk {
            q = q
                .bind(inv.as_str())
                .bind(inst.as_str())
                .bind(*seq)
                .bind(r.status.as_str())
                .bind(r.exit_code)
                .bind(*out)
                .bind(r.dropped as i64)
                .bind(r.error_code.as_ref().map(|c| c.as_str()).unwrap_or_default())
                .bind(r.error_info.as_str())
                .bind(r.start_time.as_str())
                .bind(r.finish_time.as_str());
        }
        q.execute(&mut **tx).await?;
    }
    Ok(())
}

async fn write_targets(
    tx: &mut WriteTx,
    d: Dialect,
    ops: &[WriteOp],
    outputs: &[Option<Vec<u8>>],
    targets: &HashMap<TargetKey, Target>,
) -> Result<()> {
    let mut rows: Vec<(&TargetKey, &Target)> = targets.iter().filter(|(_, t)| t.changed).collect();
    rows.sort_by(|a, b| a.0.cmp(b.0));
    for chunk in shaped(&rows) {
        // The report columns change only for targets a report reached
        // (`k_rep`); the state columns are written as the fold left them
        // (the rows are locked, or SQLite's write lock is held).
        let sql = format!(
            "WITH v(k_inv, k_inst, k_status, k_delivered, k_repeats, k_start, k_finish, k_updated, k_rep, k_exit, k_output, \
             k_dropped, k_code, k_info) AS (VALUES {}) \
             UPDATE targets SET status = v.k_status, delivered = v.k_delivered, repeats = v.k_repeats, start_time = v.k_start, \
             finish_time = v.k_finish, updated_at = v.k_updated, \
             exit_code = CASE WHEN v.k_rep = 1 THEN v.k_exit ELSE targets.exit_code END, \
             output = CASE WHEN v.k_rep = 1 THEN v.k_output ELSE targets.output END, \
             dropped = CASE WHEN v.k_rep = 1 THEN v.k_dropped ELSE targets.dropped END, \
             error_code = CASE WHEN v.k_rep = 1 THEN v.k_code ELSE targets.error_code END, \
             error_info = CASE WHEN v.k_rep = 1 THEN v.k_info ELSE targets.error_info END \
             FROM v WHERE targets.invoke_id = v.k_inv AND targets.instance_id = v.k_inst",
            values(chunk.len(), 14)
        );
        let mut q = dynamic(d, &sql);
        for ((inv, inst), t) in chunk {
            let rep = t.report.and_then(|i| report_of(ops, outputs, i));
            q = q
                .bind(inv.as_str())
                .bind(inst.as_str())
                .bind(t.state.status.as_str())
                .bind(t.state.delivered as i64)
                .bind(t.repeats)
                .bind(t.start_time.as_str())
                .bind(t.finish_time.as_str())
                .bind(t.updated_at.as_str())
                .bind(rep.is_some() as i64)
                .bind(rep.and_then(|(r, _)| r.exit_code))
                .bind(rep.map(|(_, out)| out).unwrap_or_default())
                .bind(rep.map(|(r, _)| r.dropped as i64).unwrap_or_default())
                .bind(rep.and_then(|(r, _)| r.error_code.as_ref()).map(|c| c.as_str()).unwrap_or_default())
                .bind(rep.map(|(r, _)| r.error_info.as_str()).unwrap_or_default());
        }
        q.execute(&mut **tx).await?;
    }
    Ok(())
}

/// Writes the counts and both aggregate statuses of every invocation the
/// batch moved a target of (read locked at the start, so absolute values
/// are safe).
async fn write_counts(tx: &mut WriteTx, d: Dialect, invs: &HashMap<String, Inv>) -> Result<()> {
    let mut rows: Vec<(&String, &Inv)> = invs.iter().filter(|(_, i)| i.changed).collect();
    rows.sort_by(|a, b| a.0.cmp(b.0));
    let all = InvocationStatus::ALL;
    let names: Vec<String> = (0..all.len()).map(|n| format!("k_n{n}")).collect();
    let sets: Vec<String> = all.iter().zip(&names).map(|(s, n)| format!("{} = v.{n}", s.count_column())).collect();
    for chunk in shaped(&rows) {
        let sql = format!(
            "WITH v(k_id, {}, k_legacy, k_overall) AS (VALUES {}) UPDATE invocations SET {}, invoke_status = v.k_legacy, \
             invocation_status = v.k_overall FROM v WHERE invocations.invoke_id = v.k_id",
            names.join(", "),
            values(chunk.len(), all.len() + 3),
            sets.join(", ")
        );
        let mut q = dynamic(d, &sql);
        for (id, inv) in chunk {
            q = q.bind(id.as_str());
            for s in all {
                q = q.bind(inv.counts.get(*s));
            }
            q = q.bind(inv.counts.legacy().as_str()).bind(inv.counts.overall().as_str());
        }
        q.execute(&mut **tx).await?;
    }
    Ok(())
}

/// Heartbeats: `last_seen` of every instance that sent one.
async fn touch(tx: &mut WriteTx, d: Dialect, ids: &BTreeSet<&str>, now: &str) -> Result<()> {
    let ids: Vec<&str> = ids.iter().copied().collect();
    for chunk in shaped(&ids) {
        let sql = format!("UPDATE instances SET last_seen = ? WHERE instance_id IN ({})", vec!["?"; chunk.len()].join(","));
        let mut q = dynamic(d, &sql).bind(now);
        for id in chunk {
            q = q.bind(*id);
        }
        q.execute(&mut **tx).await?;
    }
    Ok(())
}

/// Sessions starting and ending, one statement each in submission order
/// (a disconnect's guard must see the connects queued before it); what
/// they share is the batch's one commit: a fleet reconnecting after a hub
/// restart no longer costs an fsync per agent (issue #21).
async fn sessions(tx: &mut WriteTx, d: Dialect, ops: &[WriteOp], now: &str) -> Result<()> {
    for op in ops {
        match op {
            WriteOp::Connected { instance_id, hub_id, session, facts, ip } => {
                sqlx::query(AssertSqlSafe(d.sql(
                    "UPDATE instances SET online = 1, hub_id = ?, session = ?, facts = ?, ip = ?, last_seen = ? WHERE instance_id = ?",
                )))
                .bind(hub_id.as_str())
                .bind(*session as i64)
                .bind(serde_json::to_string(facts).unwrap_or_default())
                .bind(ip.as_str())
                .bind(now)
                .bind(instance_id.as_str())
                .execute(&mut **tx)
                .await?;
            }
            WriteOp::Disconnected { instance_id, hub_id, session } => {
                sqlx::query(AssertSqlSafe(d.sql(
                    "UPDATE instances SET online = 0, hub_id = '', last_seen = ? WHERE instance_id = ? AND hub_id = ? AND session = ?",
                )))
                .bind(now)
                .bind(instance_id.as_str())
                .bind(hub_id.as_str())
                .bind(*session as i64)
                .execute(&mut **tx)
                .await?;
            }
            WriteOp::Report { .. } | WriteOp::Delivered { .. } | WriteOp::Touch { .. } => {}
        }
    }
    Ok(())
}

impl SqlStore {
    pub(super) async fn apply_batch_once(&self, ops: &[WriteOp]) -> Result<Vec<ReportEffect>> {
        // One transaction, one fsync, for the whole batch: this is what lets
        // a hub absorb a fleet-wide fan-out.
        let mut tx = self.begin_batch().await?;
        let d = self.d;
        let now = now_str();
        // Reports whose output is not base64 are refused before anything
        // is read or written (storing an empty output would hide the loss).
        let mut outputs: Vec<Option<Vec<u8>>> = Vec::with_capacity(ops.len());
        let mut refused: Vec<Option<String>> = Vec::with_capacity(ops.len());
        let (mut inv_ids, mut target_keys, mut rec_keys, mut touched) =
            (BTreeSet::new(), BTreeSet::new(), BTreeSet::new(), BTreeSet::new());
        for op in ops {
            let (mut out, mut why) = (None, None);
            match op {
                WriteOp::Report { instance_id, report: r } => match base64_decode(&r.output_b64) {
                    Ok(o) => {
                        out = Some(o);
                        inv_ids.insert(r.invoke_id.as_str());
                        target_keys.insert((r.invoke_id.as_str(), instance_id.as_str()));
                        rec_keys.insert((r.invoke_id.as_str(), instance_id.as_str(), i64::from(r.record_seq)));
                    }
                    Err(e) => why = Some(format!("output_b64 is not valid base64: {e}")),
                },
                WriteOp::Delivered { invoke_id, instance_id } => {
                    inv_ids.insert(invoke_id.as_str());
                    target_keys.insert((invoke_id.as_str(), instance_id.as_str()));
                }
                WriteOp::Touch { instance_id } => {
                    touched.insert(instance_id.as_str());
                }
                WriteOp::Connected { .. } | WriteOp::Disconnected { .. } => {}
            }
            outputs.push(out);
            refused.push(why);
        }

        let mut fold = Fold {
            invs: read_invocations(&mut tx, d, &inv_ids).await?,
            targets: read_targets(&mut tx, d, &target_keys).await?,
            recs: read_records(&mut tx, d, &rec_keys).await?,
        };

        // The ops in submission order, each seeing what the ones before it did.
        let mut effects = Vec::with_capacity(ops.len());
        let mut settled = BTreeSet::new();
        // Records of windowed invocations that settled: a periodic fire's
        // slot may free (`fires::settle`; only windowed ones have rows).
        let mut fire_records = Vec::new();
        for (i, op) in ops.iter().enumerate() {
            let effect = match op {
                WriteOp::Touch { .. } | WriteOp::Connected { .. } | WriteOp::Disconnected { .. } => ReportEffect::Applied,
                WriteOp::Delivered { invoke_id, instance_id } => {
                    let k = (invoke_id.clone(), instance_id.clone());
                    if let Some(Moved::Refused(r)) = step(&mut fold.targets, &fold.invs, &k, Event::Delivered, &now) {
                        tracing::debug!(invoke_id, instance_id, refusal = %r, "acknowledgement changes nothing");
                    }
                    ReportEffect::Applied
                }
                WriteOp::Report { instance_id, report: r } => match refused.get_mut(i).and_then(Option::take) {
                    Some(why) => ReportEffect::Refused(why),
                    None => {
                        let effect = fold.report(i, instance_id, r, &now);
                        if effect == ReportEffect::Applied && r.status.is_final() {
                            settled.insert(r.invoke_id.clone());
                            if fold.invs.get(&r.invoke_id).is_some_and(|inv| inv.windowed && inv.mode == RepeatMode::Period) {
                                fire_records.push((instance_id.as_str(), r));
                            }
                        }
                        effect
                    }
                },
            };
            effects.push(effect);
        }

        // Counts move once per target whose status differs from what was
        // read: the net of every transition the fold made.
        for ((invoke_id, _), t) in &fold.targets {
            if t.state.status != t.read
                && let Some(inv) = fold.invs.get_mut(invoke_id)
            {
                inv.counts.add(t.read, -1);
                inv.counts.add(t.state.status, 1);
                inv.changed = true;
            }
        }

        write_records(&mut tx, d, ops, &outputs, &fold.recs).await?;
        write_targets(&mut tx, d, ops, &outputs, &fold.targets).await?;
        write_counts(&mut tx, d, &fold.invs).await?;
        touch(&mut tx, d, &touched, &now).await?;
        sessions(&mut tx, d, ops, &now).await?;
        // Only an invocation with a window has one to move (fixed at creation).
        let windowed: BTreeSet<String> = settled.into_iter().filter(|id| fold.invs.get(id).is_some_and(|i| i.windowed)).collect();
        let released = super::window::advance_all(&mut tx, d, &windowed).await?;
        let mut fires = BTreeSet::new();
        for (instance_id, r) in fire_records {
            if let Some(fire) = super::fires::settle(&mut tx, d, instance_id, &r.invoke_id, r.record_seq, r.status).await? {
                fires.insert(fire);
            }
        }
        let granted = super::fires::advance_settled(&mut tx, d, &fires).await?;
        tx.commit().await?;
        self.announce_released(&released);
        self.announce_fires(granted);
        Ok(effects)
    }
}
