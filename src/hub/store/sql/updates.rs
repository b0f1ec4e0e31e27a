//! Agent self-update progress in SQL (issue #20): one row per instance
//! offered a build or whose last update failed, so every replica counts
//! the same offer slots and a failure outlives a hub restart.

use super::rows::{col, key};
use super::*;

const T: &str = "agent_updates";
const IN_PROGRESS: &str = "InProgress";
const FAILED: &str = "Failed";
/// Serializes claims across PostgreSQL replicas (SQLite's `BEGIN
/// IMMEDIATE` already does).
const CLAIM_LOCK: i64 = 0x6465_636b_7570_6474; // "deckupdt"

impl SqlStore {
    pub(super) async fn claim_update_impl(&self, instance_id: &str, version: &str, slots: i64, stale_before: &str) -> Result<Option<i64>> {
        let mut tx = self.begin().await?;
        if self.d == Dialect::Postgres {
            self.q("SELECT pg_advisory_xact_lock(?)").bind(CLAIM_LOCK).execute(&mut *tx).await?;
        }
        let now = now_str();
        let stale = self
            .q("UPDATE agent_updates SET state = ?, error = ?, updated_at = ? WHERE state = ? AND updated_at < ?")
            .bind(FAILED)
            .bind(format!("no result within {} s", crate::hub::updates::IN_FLIGHT_TIMEOUT.as_secs()))
            .bind(&now)
            .bind(IN_PROGRESS)
            .bind(stale_before)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        if stale > 0 {
            tracing::warn!(stale, "agent updates with no result counted failed");
        }
        if let Some(r) =
            self.q("SELECT state, version FROM agent_updates WHERE instance_id = ?").bind(instance_id).fetch_optional(&mut *tx).await?
        {
            let state: String = col(&r, T, "state", instance_id)?;
            let was: String = col(&r, T, "version", instance_id)?;
            if state == IN_PROGRESS || was == version {
                tx.commit().await?;
                return Ok(None);
            }
        }
        let busy: i64 = self.qs("SELECT COUNT(*) FROM agent_updates WHERE state = ?").bind(IN_PROGRESS).fetch_one(&mut *tx).await?;
        if busy >= slots {
            tx.commit().await?;
            return Ok(None);
        }
        self.q(
            "INSERT INTO agent_updates (instance_id, version, state, error, updated_at) VALUES (?,?,?,'',?) \
             ON CONFLICT (instance_id) DO UPDATE SET version = excluded.version, state = excluded.state, error = '', updated_at = excluded.updated_at",
        )
        .bind(instance_id)
        .bind(version)
        .bind(IN_PROGRESS)
        .bind(&now)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(Some(busy + 1))
    }

    pub(super) async fn settle_update_impl(&self, instance_id: &str, version: &str, failure: Option<&str>) -> Result<bool> {
        let done = match failure {
            None => {
                self.q("DELETE FROM agent_updates WHERE instance_id = ? AND version = ?")
                    .bind(instance_id)
                    .bind(version)
                    .execute(&mut *self.writes.get().await?)
                    .await?
            }
            Some(error) => {
                self.q("INSERT INTO agent_updates (instance_id, version, state, error, updated_at) VALUES (?,?,?,?,?) \
                     ON CONFLICT (instance_id) DO UPDATE SET version = excluded.version, state = excluded.state, \
                     error = excluded.error, updated_at = excluded.updated_at")
                    .bind(instance_id)
                    .bind(version)
                    .bind(FAILED)
                    .bind(error)
                    .bind(now_str())
                    .execute(&mut *self.writes.get().await?)
                    .await?
            }
        };
        Ok(done.rows_affected() > 0)
    }

    pub(super) async fn update_progress_impl(&self) -> Result<(i64, i64)> {
        let busy: i64 = self
            .qs("SELECT COUNT(*) FROM agent_updates WHERE state = ?")
            .bind(IN_PROGRESS)
            .fetch_one(&mut *self.reads.get().await?)
            .await?;
        let online: i64 = self.qs("SELECT COUNT(*) FROM instances WHERE online = 1").fetch_one(&mut *self.reads.get().await?).await?;
        Ok((busy, online))
    }

    pub(super) async fn update_states_impl(&self, instance_ids: &[String]) -> Result<Vec<(String, AgentUpdateState)>> {
        if instance_ids.is_empty() {
            return Ok(Vec::new());
        }
        let marks = vec!["?"; instance_ids.len()].join(",");
        let sql = format!("SELECT instance_id, version, state, error FROM agent_updates WHERE instance_id IN ({marks})");
        let mut q = self.q(&sql);
        for id in instance_ids {
            q = q.bind(id.as_str());
        }
        let mut out = Vec::new();
        for r in q.fetch_all(&mut *self.reads.get().await?).await? {
            let id = key(&r, T, "instance_id")?;
            let version: String = col(&r, T, "version", &id)?;
            let state: String = col(&r, T, "state", &id)?;
            let shown = match state.as_str() {
                IN_PROGRESS => AgentUpdateState::InProgress { version },
                _ => AgentUpdateState::Failed { version, error: col(&r, T, "error", &id)? },
            };
            out.push((id, shown));
        }
        Ok(out)
    }
}
