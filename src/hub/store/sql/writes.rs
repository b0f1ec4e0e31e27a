//! The store's multi-statement write transactions: creating an invocation
//! with its targets, a stop request, delivery expiry, deregistration, and
//! the 0.1.0 data upgrade (the group-commit batch is `batch.rs`). Each is
//! one transaction; the `Store` impl wraps them with retries.
//!
//! Every target status change here goes through [`move_target`], which
//! asks `lifecycle::transition` and moves the invocation's kept counts in
//! the same transaction (`batch.rs` folds the same rule over many targets).

use sqlx::AssertSqlSafe;

use super::conns::WriteTx;

use super::super::*;
use super::SqlStore;
use super::dialect::Dialect;
use super::rows::{col, counts_from, key, status_col};
use crate::lifecycle::{Event, Refusal, TargetState, transition};

/// Every count column, for `RETURNING` and recounts.
fn count_columns() -> String {
    InvocationStatus::ALL.iter().map(|s| s.count_column()).collect::<Vec<_>>().join(", ")
}

/// What moving a target did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Moved {
    /// No such target.
    Missing,
    Refused(Refusal),
    Changed {
        from: TargetState,
        to: TargetState,
    },
}

/// Applies `event` to one target inside `tx`: reads it (locked), asks the
/// lifecycle for the next state, writes it, and moves the invocation's
/// counts and aggregate statuses in the same transaction.
pub(super) async fn move_target(tx: &mut WriteTx, d: Dialect, invoke_id: &str, instance_id: &str, event: Event) -> Result<Moved> {
    let sql = format!(
        "SELECT t.status, t.delivered, i.repeat_mode, i.frequency FROM targets t JOIN invocations i ON i.invoke_id = t.invoke_id \
         WHERE t.invoke_id = ? AND t.instance_id = ?{}",
        d.for_update()
    );
    let row = sqlx::query(AssertSqlSafe(d.sql(&sql))).bind(invoke_id).bind(instance_id).fetch_optional(&mut **tx).await?;
    let Some(row) = row else { return Ok(Moved::Missing) };
    let id = format!("{invoke_id}/{instance_id}");
    let from = TargetState { status: status_col(&row, "targets", &id)?, delivered: col::<i64>(&row, "targets", "delivered", &id)? != 0 };
    let mode_s: String = col(&row, "invocations", "repeat_mode", invoke_id)?;
    let mode = RepeatMode::parse(&mode_s).map_err(|e| StoreError::Decode {
        table: "invocations",
        column: "repeat_mode",
        id: invoke_id.to_string(),
        detail: e.to_string(),
    })?;
    let frequency: String = col(&row, "invocations", "frequency", invoke_id)?;
    let to = match transition(from, event, mode, &frequency) {
        Ok(to) => to,
        Err(refusal) => return Ok(Moved::Refused(refusal)),
    };
    if to != from {
        let now = now_str();
        sqlx::query(AssertSqlSafe(d.sql(
            "UPDATE targets SET status = ?, delivered = ?, updated_at = ?, \
             finish_time = CASE WHEN ? = 1 AND finish_time = '' THEN ? ELSE finish_time END \
             WHERE invoke_id = ? AND instance_id = ?",
        )))
        .bind(to.status.as_str())
        .bind(to.delivered as i64)
        .bind(&now)
        .bind(to.status.is_final() as i64)
        .bind(&now)
        .bind(invoke_id)
        .bind(instance_id)
        .execute(&mut **tx)
        .await?;
        shift_counts(tx, d, invoke_id, from.status, to.status).await?;
    }
    Ok(Moved::Changed { from, to })
}

/// Moves one target from `from` to `to` in the invocation's counts and
/// rewrites its two aggregate statuses from the new counts.
async fn shift_counts(tx: &mut WriteTx, d: Dialect, invoke_id: &str, from: InvocationStatus, to: InvocationStatus) -> Result<()> {
    if from == to {
        return Ok(());
    }
    let (f, t) = (from.count_column(), to.count_column());
    let sql = format!("UPDATE invocations SET {f} = {f} - 1, {t} = {t} + 1 WHERE invoke_id = ? RETURNING {}", count_columns());
    let row = sqlx::query(AssertSqlSafe(d.sql(&sql))).bind(invoke_id).fetch_one(&mut **tx).await?;
    let counts = counts_from(&row, invoke_id)?;
    write_aggregates(tx, d, invoke_id, counts).await
}

async fn write_aggregates(tx: &mut WriteTx, d: Dialect, invoke_id: &str, counts: crate::lifecycle::Counts) -> Result<()> {
    sqlx::query(AssertSqlSafe(d.sql("UPDATE invocations SET invoke_status = ?, invocation_status = ? WHERE invoke_id = ?")))
        .bind(counts.legacy().as_str())
        .bind(counts.overall().as_str())
        .bind(invoke_id)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

/// Recounts every invocation's targets per state and rewrites the kept
/// aggregates (the upgrade step; O(targets) once).
async fn recount_all(tx: &mut WriteTx, d: Dialect) -> Result<()> {
    for s in InvocationStatus::ALL {
        let c = s.count_column();
        let sql = format!(
            "UPDATE invocations SET {c} = (SELECT COUNT(*) FROM targets t WHERE t.invoke_id = invocations.invoke_id AND t.status = ?)"
        );
        sqlx::query(AssertSqlSafe(d.sql(&sql))).bind(s.as_str()).execute(&mut **tx).await?;
    }
    let rows =
        sqlx::query(AssertSqlSafe(d.sql(&format!("SELECT invoke_id, {} FROM invocations", count_columns())))).fetch_all(&mut **tx).await?;
    for row in rows {
        let id = key(&row, "invocations", "invoke_id")?;
        let counts = counts_from(&row, &id)?;
        write_aggregates(tx, d, &id, counts).await?;
    }
    Ok(())
}

/// Rewrites statuses written by 0.1.0 (`Finished`, `Stopped`, `Failed`,
/// `Timeout`) through the lifecycle codec, and 0.1.0's `InstanceRestarted`
/// as `ExecutionInterrupted`; then fills the kept counts. Runs once, in the
/// migration transaction of schema step 4.
pub(super) async fn upgrade_lifecycle(tx: &mut WriteTx, d: Dialect) -> Result<()> {
    for table in ["targets", "records"] {
        let seq = if table == "records" { "record_seq" } else { "0 AS record_seq" };
        let sql = format!("SELECT invoke_id, instance_id, {seq}, status, exit_code, start_time, error_code FROM {table}");
        let rows = sqlx::query(AssertSqlSafe(d.sql(&sql))).fetch_all(&mut **tx).await?;
        let mut rewritten = 0u64;
        for row in rows {
            let invoke_id = key(&row, "targets", "invoke_id")?;
            let instance_id: String = col(&row, "targets", "instance_id", &invoke_id)?;
            let record_seq: i64 = col(&row, "targets", "record_seq", &invoke_id)?;
            let id = format!("{invoke_id}/{instance_id}/{record_seq}");
            let raw: String = col(&row, "targets", "status", &id)?;
            let exit_code: Option<i64> = col(&row, "targets", "exit_code", &id)?;
            let start: String = col(&row, "targets", "start_time", &id)?;
            let raw_code: String = col(&row, "targets", "error_code", &id)?;
            let code = ErrorCode::parse(&raw_code);
            let status = crate::lifecycle::reported_status(&raw, exit_code, !start.is_empty(), code.as_ref())
                .map_err(|e| StoreError::Decode { table: "targets", column: "status", id: id.clone(), detail: e.to_string() })?;
            let new_code = code.as_ref().map(|c| c.as_str().to_string()).unwrap_or_default();
            if status.as_str() == raw && new_code == raw_code {
                continue;
            }
            let upd = format!(
                "UPDATE {table} SET status = ?, error_code = ? WHERE invoke_id = ? AND instance_id = ?{}",
                if table == "records" { " AND record_seq = ?" } else { "" }
            );
            let mut q = sqlx::query(AssertSqlSafe(d.sql(&upd))).bind(status.as_str()).bind(new_code).bind(&invoke_id).bind(&instance_id);
            if table == "records" {
                q = q.bind(record_seq);
            }
            q.execute(&mut **tx).await?;
            rewritten += 1;
        }
        tracing::info!(table, rewritten, "lifecycle upgrade: statuses rewritten");
    }
    recount_all(tx, d).await
}

impl SqlStore {
    /// The invocation, its targets and (for `RunCommand`) its command, in
    /// one transaction: a duplicate ClientToken leaves no orphan command.
    pub(super) async fn create_invocation_once(
        &self,
        cmd: Option<&CommandRow>,
        inv: &InvocationRow,
        instances: &[String],
        audit: Option<&AuditEvent>,
    ) -> Result<()> {
        let mut tx = self.begin().await?;
        if let Some(cmd) = cmd {
            // Created with its one invocation: no separate count update.
            super::insert_command(&mut tx, self.d, cmd, 1).await?;
        }
        // Fixed at creation (issue #16): which targets start settled
        // (matched while offline), which the window lets go now, and the
        // per-state counts that follow from it.
        let unreachable: std::collections::HashSet<&str> = inv.unreachable.iter().map(String::as_str).collect();
        let offline =
            transition(TargetState::CREATED, Event::ClientNotRunning, inv.repeat_mode, &inv.frequency).unwrap_or(TargetState::CREATED);
        let offline_code = Event::ClientNotRunning.error_code(false);
        let mut order: Vec<&String> = instances.iter().collect();
        order.sort();
        // A periodic invocation's window holds back fires, not targets
        // (`fires.rs`): every target is sent at once.
        let per_target = inv.window.max_concurrency > 0 && inv.repeat_mode != RepeatMode::Period;
        let mut free = if per_target { inv.window.max_concurrency } else { i64::MAX };
        let mut counts = crate::lifecycle::Counts::default();
        let mut rows = Vec::with_capacity(order.len());
        for id in order {
            let (state, released) = if unreachable.contains(id.as_str()) {
                (offline, false)
            } else if free > 0 {
                free -= 1;
                (TargetState::CREATED, true)
            } else {
                (TargetState::CREATED, false)
            };
            counts.add(state.status, 1);
            rows.push((id, state, released));
        }
        let count_cols: Vec<&str> = InvocationStatus::ALL.iter().map(|s| s.count_column()).collect();
        let sql = format!(
            "INSERT INTO invocations (invoke_id, command_id, command_name, command_type, content, timeout_secs, \
             working_dir, username, enable_parameter, parameters, repeat_mode, frequency, created_at, client_token, \
             {}, invoke_status, invocation_status, max_concurrency, max_errors, batch_wait_secs, file_spec, file_sha256) \
             VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,{},?,?,?,?,?,?,?)",
            count_cols.join(", "),
            vec!["?"; count_cols.len()].join(",")
        );
        let mut q = self
            .q(&sql)
            .bind(&inv.invoke_id)
            .bind(&inv.command_id)
            .bind(&inv.command_name)
            .bind(inv.command_type.as_str())
            .bind(&inv.content)
            .bind(inv.timeout_secs)
            .bind(&inv.working_dir)
            .bind(&inv.username)
            .bind(inv.enable_parameter as i64)
            .bind(&inv.parameters)
            .bind(inv.repeat_mode.as_str())
            .bind(&inv.frequency)
            .bind(&inv.created_at)
            .bind(&inv.client_token);
        for s in InvocationStatus::ALL {
            q = q.bind(counts.get(*s));
        }
        q.bind(counts.legacy().as_str())
            .bind(counts.overall().as_str())
            .bind(inv.window.max_concurrency)
            .bind(inv.window.max_errors.unwrap_or(-1))
            .bind(inv.window.batch_wait_secs)
            .bind(match &inv.file {
                // Serializing plain strings and numbers cannot fail.
                Some(f) => serde_json::to_string(f).unwrap_or_default(),
                None => String::new(),
            })
            .bind(inv.file.as_ref().map(|f| f.spec.sha256.as_str()).unwrap_or(""))
            .execute(&mut *tx)
            .await?;
        // Multi-row INSERTs (issue #21: one statement per target cost a
        // round trip each under the write lock, 100 for one RunCommand), of
        // the fixed shapes that stay prepared.
        for chunk in super::dialect::shaped(&rows) {
            let sql = format!(
                "INSERT INTO targets (invoke_id, instance_id, status, created_at, updated_at, released, released_at, \
                 error_code, error_info, finish_time) VALUES {}",
                vec!["(?,?,?,?,?,?,?,?,?,?)"; chunk.len()].join(",")
            );
            let mut q = self.q(&sql);
            for (id, state, released) in chunk {
                let settled = state.status.is_final();
                let code = if settled { offline_code.as_ref() } else { None };
                q = q
                    .bind(&inv.invoke_id)
                    .bind(*id)
                    .bind(state.status.as_str())
                    .bind(&inv.created_at)
                    .bind(&inv.created_at)
                    .bind(*released as i64)
                    .bind(if *released { inv.created_at.as_str() } else { "" })
                    .bind(code.map(|c| c.as_str()).unwrap_or_default())
                    .bind(code.and_then(|c| c.fixed_info()).unwrap_or_default())
                    .bind(if settled { inv.created_at.as_str() } else { "" });
            }
            q.execute(&mut *tx).await?;
        }
        if cmd.is_none() {
            self.q("UPDATE commands SET invoke_times = invoke_times + 1 WHERE command_id = ?")
                .bind(&inv.command_id)
                .execute(&mut *tx)
                .await?;
        }
        if let Some(e) = audit {
            self.insert_audit(e).execute(&mut *tx).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    pub(super) async fn modify_invocation_once(&self, m: &Modification) -> Result<Vec<String>> {
        let mut tx = self.begin().await?;
        let sql = format!("SELECT invoke_id FROM invocations WHERE invoke_id = ?{}", self.d.for_update());
        let found: Option<String> = self.qs(&sql).bind(&m.invoke_id).fetch_optional(&mut *tx).await?;
        if found.is_none() {
            return Ok(Vec::new());
        }
        for (column, value) in [("content", &m.content), ("frequency", &m.frequency), ("parameters", &m.parameters)] {
            if let Some(v) = value {
                // Fixed column names only; the value is bound.
                self.q(&format!("UPDATE invocations SET {column} = ? WHERE invoke_id = ?"))
                    .bind(v)
                    .bind(&m.invoke_id)
                    .execute(&mut *tx)
                    .await?;
            }
        }
        if let Some(e) = m.enable_parameter {
            self.q("UPDATE invocations SET enable_parameter = ? WHERE invoke_id = ?")
                .bind(e as i64)
                .bind(&m.invoke_id)
                .execute(&mut *tx)
                .await?;
        }
        if m.changes_definition() {
            self.q("UPDATE invocations SET revision = revision + 1 WHERE invoke_id = ?").bind(&m.invoke_id).execute(&mut *tx).await?;
        }
        let existing: Vec<String> =
            self.qs("SELECT instance_id FROM targets WHERE invoke_id = ?").bind(&m.invoke_id).fetch_all(&mut *tx).await?;
        let existing: std::collections::HashSet<String> = existing.into_iter().collect();
        let now = now_str();
        let mut added = Vec::new();
        for id in &m.add {
            if existing.contains(id) || added.contains(id) {
                continue;
            }
            self.q("INSERT INTO targets (invoke_id, instance_id, status, created_at, updated_at, released, released_at) VALUES (?,?,?,?,?,1,?)")
                .bind(&m.invoke_id)
                .bind(id)
                .bind(TargetState::CREATED.status.as_str())
                .bind(&now)
                .bind(&now)
                .bind(&now)
                .execute(&mut *tx)
                .await?;
            added.push(id.clone());
        }
        if !added.is_empty() {
            let c = TargetState::CREATED.status.count_column();
            let sql = format!("UPDATE invocations SET {c} = {c} + ? WHERE invoke_id = ? RETURNING {}", count_columns());
            let row = self.q(&sql).bind(added.len() as i64).bind(&m.invoke_id).fetch_one(&mut *tx).await?;
            let counts = counts_from(&row, &m.invoke_id)?;
            write_aggregates(&mut tx, self.d, &m.invoke_id, counts).await?;
        }
        tx.commit().await?;
        Ok(added)
    }

    pub(super) async fn request_stop_once(&self, invoke_id: &str, instances: &[String]) -> Result<Vec<String>> {
        let mut tx = self.begin().await?;
        self.q("UPDATE invocations SET stop_requested = 1 WHERE invoke_id = ?").bind(invoke_id).execute(&mut *tx).await?;
        let ids: Vec<String> =
            self.qs("SELECT instance_id FROM targets WHERE invoke_id = ? ORDER BY instance_id").bind(invoke_id).fetch_all(&mut *tx).await?;
        let mut notify = Vec::new();
        for id in ids {
            if !instances.is_empty() && !instances.contains(&id) {
                continue;
            }
            // Locked inside move_target: a report landing meanwhile is not
            // overwritten. A target that was never delivered is Cancelled
            // at once, but its agent is still told (a push may be in flight).
            if let Moved::Changed { .. } = move_target(&mut tx, self.d, invoke_id, &id, Event::StopRequested).await? {
                notify.push(id);
            }
        }
        tx.commit().await?;
        Ok(notify)
    }

    pub(super) async fn expire_undelivered_once(&self, cutoff: &str) -> Result<u64> {
        let mut tx = self.begin().await?;
        // The states the lifecycle lets a delivery timeout end, bound here
        // so this query and `transition` cannot disagree.
        let states = crate::lifecycle::states_accepting(Event::DeliveryExpired);
        let mut expired = 0;
        let mut touched = std::collections::BTreeSet::new();
        for st in states {
            let rows = self
                .q("SELECT t.invoke_id, t.instance_id, COALESCE(inst.online, 0) AS online FROM targets t \
                    LEFT JOIN instances inst ON inst.instance_id = t.instance_id \
                    WHERE t.status = ? AND t.delivered = ? AND t.released = 1 AND t.released_at < ? \
                    ORDER BY t.invoke_id, t.instance_id")
                .bind(st.status.as_str())
                .bind(st.delivered as i64)
                .bind(cutoff)
                .fetch_all(&mut *tx)
                .await?;
            for row in rows {
                let invoke_id = key(&row, "targets", "invoke_id")?;
                let instance_id: String = col(&row, "targets", "instance_id", &invoke_id)?;
                let online = col::<i64>(&row, "instances", "online", &instance_id)? != 0;
                if let Moved::Changed { .. } = move_target(&mut tx, self.d, &invoke_id, &instance_id, Event::DeliveryExpired).await? {
                    self.stamp_error(&mut tx, &invoke_id, &instance_id, Event::DeliveryExpired.error_code(online)).await?;
                    expired += 1;
                    touched.insert(invoke_id);
                }
            }
        }
        let released = super::window::advance_all(&mut tx, self.d, &touched).await?;
        tx.commit().await?;
        self.announce_released(&released);
        Ok(expired)
    }

    async fn stamp_error(&self, tx: &mut WriteTx, invoke_id: &str, instance_id: &str, code: Option<ErrorCode>) -> Result<()> {
        let Some(code) = code else { return Ok(()) };
        self.q("UPDATE targets SET error_code = ?, error_info = ? WHERE invoke_id = ? AND instance_id = ?")
            .bind(code.as_str())
            .bind(code.fixed_info().unwrap_or_default())
            .bind(invoke_id)
            .bind(instance_id)
            .execute(&mut **tx)
            .await?;
        Ok(())
    }

    /// Settles every unsettled target of a deregistered instance
    /// (`InstanceReleased`), inside the deregistration transaction.
    pub(super) async fn release_targets(&self, tx: &mut WriteTx, instance_id: &str) -> Result<()> {
        let ids: Vec<String> = self
            .qs("SELECT invoke_id FROM targets WHERE instance_id = ? ORDER BY invoke_id")
            .bind(instance_id)
            .fetch_all(&mut **tx)
            .await?;
        for invoke_id in ids {
            if let Moved::Changed { .. } = move_target(tx, self.d, &invoke_id, instance_id, Event::InstanceDeregistered).await? {
                self.stamp_error(tx, &invoke_id, instance_id, Event::InstanceDeregistered.error_code(false)).await?;
            }
        }
        Ok(())
    }
}
