//! Access keys and the audit trail in SQL (issue #18).
//!
//! Point reads by primary key for authentication (every API call by a
//! stored key reads its row, so disabling a key takes effect at once on
//! every replica); the audit trail is append-only, paged newest first and
//! pruned by age.

use super::rows::{col, key};
use super::*;

const KEYS: &str = "access_keys";
const AUDIT: &str = "audit_events";

fn key_from(r: &AnyRow) -> Result<AccessKeyRow> {
    let id = key(r, KEYS, "key_id")?;
    Ok(AccessKeyRow {
        secret: col(r, KEYS, "secret", &id)?,
        description: col(r, KEYS, "description", &id)?,
        enabled: col::<i64>(r, KEYS, "enabled", &id)? != 0,
        policy: col(r, KEYS, "policy", &id)?,
        created_at: col(r, KEYS, "created_at", &id)?,
        updated_at: col(r, KEYS, "updated_at", &id)?,
        key_id: id,
    })
}

fn event_from(r: &AnyRow) -> Result<AuditEvent> {
    let id = key(r, AUDIT, "event_id")?;
    Ok(AuditEvent {
        at: col(r, AUDIT, "at", &id)?,
        key_id: col(r, AUDIT, "key_id", &id)?,
        source: col(r, AUDIT, "source", &id)?,
        action: col(r, AUDIT, "action", &id)?,
        targets: col(r, AUDIT, "targets", &id)?,
        outcome: col(r, AUDIT, "outcome", &id)?,
        request_id: col(r, AUDIT, "request_id", &id)?,
        invoke_id: col(r, AUDIT, "invoke_id", &id)?,
        detail: col(r, AUDIT, "detail", &id)?,
        event_id: id,
    })
}

impl SqlStore {
    pub(super) async fn create_access_key_impl(&self, k: &AccessKeyRow) -> Result<()> {
        self.q("INSERT INTO access_keys (key_id, secret, description, enabled, policy, created_at, updated_at) VALUES (?,?,?,?,?,?,?)")
            .bind(&k.key_id)
            .bind(&k.secret)
            .bind(&k.description)
            .bind(k.enabled as i64)
            .bind(&k.policy)
            .bind(&k.created_at)
            .bind(&k.updated_at)
            .execute(&mut *self.writes.get().await?)
            .await?;
        Ok(())
    }

    pub(super) async fn get_access_key_impl(&self, id: &str) -> Result<Option<AccessKeyRow>> {
        let row = self.q("SELECT * FROM access_keys WHERE key_id = ?").bind(id).fetch_optional(&mut *self.reads.get().await?).await?;
        row.as_ref().map(key_from).transpose()
    }

    pub(super) async fn list_access_keys_impl(&self, page: Page) -> Result<(Vec<AccessKeyRow>, i64)> {
        let (rows, total) = self.page_of("*", "FROM access_keys", "created_at, key_id", &[], page).await?;
        Ok((rows.iter().map(key_from).collect::<Result<_>>()?, total))
    }

    pub(super) async fn set_access_key_enabled_impl(&self, id: &str, enabled: bool) -> Result<bool> {
        let r = self
            .q("UPDATE access_keys SET enabled = ?, updated_at = ? WHERE key_id = ?")
            .bind(enabled as i64)
            .bind(now_str())
            .bind(id)
            .execute(&mut *self.writes.get().await?)
            .await?;
        Ok(r.rows_affected() > 0)
    }

    pub(super) async fn set_access_key_policy_impl(&self, id: &str, policy: &str) -> Result<bool> {
        let r = self
            .q("UPDATE access_keys SET policy = ?, updated_at = ? WHERE key_id = ?")
            .bind(policy)
            .bind(now_str())
            .bind(id)
            .execute(&mut *self.writes.get().await?)
            .await?;
        Ok(r.rows_affected() > 0)
    }

    pub(super) async fn delete_access_key_impl(&self, id: &str) -> Result<bool> {
        let r = self.q("DELETE FROM access_keys WHERE key_id = ?").bind(id).execute(&mut *self.writes.get().await?).await?;
        Ok(r.rows_affected() > 0)
    }

    pub(super) async fn reseal_access_key_impl(&self, id: &str, old: &str, new: &str) -> Result<bool> {
        let r = self
            .q("UPDATE access_keys SET secret = ? WHERE key_id = ? AND secret = ?")
            .bind(new)
            .bind(id)
            .bind(old)
            .execute(&mut *self.writes.get().await?)
            .await?;
        Ok(r.rows_affected() > 0)
    }

    pub(super) async fn record_audit_impl(&self, e: &AuditEvent) -> Result<()> {
        self.insert_audit(e).execute(&mut *self.writes.get().await?).await?;
        Ok(())
    }

    /// The one INSERT of an audit event: on its own, or inside the
    /// transaction of the call it records (`create_invocation_once`).
    pub(super) fn insert_audit<'e>(&self, e: &'e AuditEvent) -> Query<'e, Any, AnyArguments> {
        sqlx::query(AssertSqlSafe(self.d.sql(
            "INSERT INTO audit_events (event_id, at, key_id, source, action, targets, outcome, request_id, invoke_id, detail) \
             VALUES (?,?,?,?,?,?,?,?,?,?)",
        )))
        .bind(&e.event_id)
        .bind(&e.at)
        .bind(&e.key_id)
        .bind(&e.source)
        .bind(&e.action)
        .bind(&e.targets)
        .bind(&e.outcome)
        .bind(&e.request_id)
        .bind(&e.invoke_id)
        .bind(&e.detail)
    }

    pub(super) async fn list_audit_impl(&self, f: &AuditFilter, page: Page) -> Result<(Vec<AuditEvent>, i64)> {
        let mut clauses = Vec::new();
        let mut binds = Vec::new();
        for (c, v) in [("at >= ?", &f.since), ("at <= ?", &f.until), ("key_id = ?", &f.key_id), ("action = ?", &f.action)] {
            if let Some(v) = v {
                clauses.push(c);
                binds.push(v.clone());
            }
        }
        let w = if clauses.is_empty() { String::new() } else { format!("WHERE {}", clauses.join(" AND ")) };
        let (rows, total) = self.page_of("*", &format!("FROM audit_events {w}"), "at DESC, event_id DESC", &binds, page).await?;
        Ok((rows.iter().map(event_from).collect::<Result<_>>()?, total))
    }

    pub(super) async fn prune_audit_impl(&self, cutoff: &str, keep: u64) -> Result<u64> {
        let r = self.q("DELETE FROM audit_events WHERE at < ?").bind(cutoff).execute(&mut *self.writes.get().await?).await?;
        // The newest event past `keep` and everything older go, in the
        // listing's order (at, event_id). Fewer events: the subquery has no
        // row, the comparison is NULL and nothing is deleted.
        let keep = i64::try_from(keep).unwrap_or(i64::MAX);
        let over = self
            .q(concat!("DELETE FROM audit_events WHERE (at, event_id) <= (SELECT at, event_id FROM audit_events ORDER BY at DESC, event_id DESC LIMIT 1 OFFSET ", bound_count!(), ")"))
            .bind(keep)
            .execute(&mut *self.writes.get().await?)
            .await?;
        Ok(r.rows_affected() + over.rows_affected())
    }
}
