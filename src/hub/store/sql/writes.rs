//! The store's multi-statement write transactions: creating an invocation
//! with its targets, the group-commit batch, and a stop request. Each is
//! one transaction; the `Store` impl wraps them with retries.

use sqlx::Row;

use super::reports::apply_report_tx;
use super::rows::status_of;
use super::super::*;
use super::SqlStore;

impl SqlStore {
    pub(super) async fn create_invocation_once(&self, inv: &InvocationRow, instances: &[String]) -> Result<()> {
        let mut tx = self.begin().await?;
        self.q(
            "INSERT INTO invocations (invoke_id, command_id, command_name, command_type, content, timeout_secs, \
             working_dir, username, enable_parameter, parameters, repeat_mode, frequency, created_at, client_token) \
             VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
        )
        .bind(&inv.invoke_id)
        .bind(&inv.command_id)
        .bind(&inv.command_name)
        .bind(&inv.command_type)
        .bind(&inv.content)
        .bind(inv.timeout_secs)
        .bind(&inv.working_dir)
        .bind(&inv.username)
        .bind(inv.enable_parameter as i64)
        .bind(&inv.parameters)
        .bind(&inv.repeat_mode)
        .bind(&inv.frequency)
        .bind(&inv.created_at)
        .bind(&inv.client_token)
        .execute(&mut *tx)
        .await?;
        for i in instances {
            self.q(
                "INSERT INTO targets (invoke_id, instance_id, status, created_at, updated_at) VALUES (?,?,'Pending',?,?)",
            )
            .bind(&inv.invoke_id)
            .bind(i)
            .bind(&inv.created_at)
            .bind(&inv.created_at)
            .execute(&mut *tx)
            .await?;
        }
        self.q("UPDATE commands SET invoke_times = invoke_times + 1 WHERE command_id = ?")
            .bind(&inv.command_id)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    pub(super) async fn apply_batch_once(&self, ops: &[WriteOp]) -> Result<Vec<ReportEffect>> {
        // One transaction, one fsync, for the whole batch: this is what lets
        // a hub absorb a fleet-wide fan-out.
        let mut tx = self.begin().await?;
        let mut effects = Vec::with_capacity(ops.len());
        let now = now_str();
        for op in ops {
            let effect = match op {
                WriteOp::Report { instance_id, report } => apply_report_tx(&mut tx, self.d, instance_id, report).await?,
                WriteOp::Delivered { invoke_id, instance_id } => {
                    // A delivered schedule is live on the agent: Running
                    // (seed 001) or, until the next boot, Scheduled.
                    self.q(
                        "UPDATE targets SET delivered = 1, updated_at = ?1, status = CASE WHEN status = 'Pending' THEN \
                         (SELECT CASE WHEN repeat_mode = 'NextRebootOnly' THEN 'Scheduled' \
                                      WHEN repeat_mode IN ('Period', 'EveryReboot') THEN 'Running' ELSE 'Pending' END \
                          FROM invocations WHERE invoke_id = ?2) ELSE status END \
                         WHERE invoke_id = ?2 AND instance_id = ?3",
                    )
                        .bind(&now)
                        .bind(invoke_id)
                        .bind(instance_id)
                        .execute(&mut *tx)
                        .await?;
                    ReportEffect::Applied
                }
                WriteOp::Touch { instance_id } => {
                    self.q("UPDATE instances SET last_seen = ? WHERE instance_id = ?").bind(&now).bind(instance_id).execute(&mut *tx).await?;
                    ReportEffect::Applied
                }
            };
            effects.push(effect);
        }
        tx.commit().await?;
        Ok(effects)
    }

    pub(super) async fn request_stop_once(&self, invoke_id: &str, instances: &[String]) -> Result<Vec<String>> {
        let mut tx = self.begin().await?;
        self.q("UPDATE invocations SET stop_requested = 1 WHERE invoke_id = ?").bind(invoke_id).execute(&mut *tx).await?;
        // Locked: a report landing meanwhile must not be overwritten with Stopping.
        let sql = format!("SELECT instance_id, delivered, status FROM targets WHERE invoke_id = ? ORDER BY instance_id{}", self.d.for_update());
        let rows = self.q(&sql)
            .bind(invoke_id)
            .fetch_all(&mut *tx)
            .await?;
        let now = now_str();
        let mut notify = Vec::new();
        for row in rows {
            let id: String = row.get("instance_id");
            if !instances.is_empty() && !instances.contains(&id) {
                continue;
            }
            let status = status_of(row.get("status"))?;
            if status.is_final() {
                continue;
            }
            // Never delivered: nothing runs anywhere, so it is Stopped now.
            // Delivered: Stopping until the agent confirms.
            let new = if row.get::<i64, _>("delivered") == 0 { RecordStatus::Stopped } else { RecordStatus::Stopping };
            self.q("UPDATE targets SET status = ?, updated_at = ?, finish_time = CASE WHEN ? THEN ? ELSE finish_time END WHERE invoke_id = ? AND instance_id = ?")
                .bind(new.as_str())
                .bind(&now)
                .bind(new.is_final())
                .bind(&now)
                .bind(invoke_id)
                .bind(&id)
                .execute(&mut *tx)
                .await?;
            notify.push(id);
        }
        tx.commit().await?;
        Ok(notify)
    }
}

