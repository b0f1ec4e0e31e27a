//! What several hub replicas share through the database: replica liveness,
//! the agents each holds, deliveries still owed, and the announcement
//! channel (PostgreSQL LISTEN/NOTIFY).

use std::time::Duration;

use sqlx::postgres::PgListener;
use tokio::sync::mpsc;

use super::super::*;
use super::rows::{col, key, placeholders, status_col};
use super::{Dialect, SqlStore, bound_count};

/// The one NOTIFY channel every replica listens on.
const CHANNEL: &str = "deckhand";
/// Announcements buffered for the hub; beyond it the listener waits.
const NOTICE_QUEUE: usize = 1024;
/// Reconnect back-off for the LISTEN connection.
const LISTEN_RETRY_MIN: Duration = Duration::from_millis(500);
const LISTEN_RETRY_MAX: Duration = Duration::from_secs(15);

impl SqlStore {
    pub(super) async fn hub_alive_impl(&self, hub_id: &str) -> Result<()> {
        let now = now_str();
        self.q("INSERT INTO hubs (hub_id, started_at, last_seen) VALUES (?1, ?2, ?2) ON CONFLICT (hub_id) DO UPDATE SET last_seen = ?2")
            .bind(hub_id)
            .bind(&now)
            .execute(&mut *self.writes.get().await?)
            .await?;
        // A replica that missed its liveness deadline (a stalled database,
        // say) had its agents released by another; those it still holds
        // come back online here.
        self.q("UPDATE instances SET online = 1 WHERE hub_id = ? AND online = 0")
            .bind(hub_id)
            .execute(&mut *self.writes.get().await?)
            .await?;
        Ok(())
    }

    pub(super) async fn release_dead_hubs_impl(&self, cutoff: &str) -> Result<u64> {
        let r = self
            .q("UPDATE instances SET online = 0 WHERE online = 1 AND hub_id NOT IN (SELECT hub_id FROM hubs WHERE last_seen >= ?)")
            .bind(cutoff)
            .execute(&mut *self.writes.get().await?)
            .await?;
        self.q("DELETE FROM hubs WHERE last_seen < ?").bind(cutoff).execute(&mut *self.writes.get().await?).await?;
        Ok(r.rows_affected())
    }

    pub(super) async fn deliveries_impl(&self, invoke_id: &str) -> Result<Vec<Delivery>> {
        // Names only: the invocation (whose script may be large) is read
        // once by the caller, not once per target.
        let open = super::unsettled();
        let sql = format!(
            "SELECT t.instance_id, t.status, inst.instance_name FROM targets t \
             LEFT JOIN instances inst ON inst.instance_id = t.instance_id \
             WHERE t.invoke_id = ? AND t.released = 1 AND t.status IN ({}) ORDER BY t.instance_id",
            placeholders(open.len())
        );
        let mut q = self.q(&sql).bind(invoke_id);
        for s in &open {
            q = q.bind(s.as_str());
        }
        let rows = q.fetch_all(&mut *self.reads.get().await?).await?;
        rows.iter()
            .map(|r| {
                let id: String = key(r, "targets", "instance_id")?;
                let name: Option<String> = col(r, "instances", "instance_name", &id)?;
                Ok(Delivery {
                    status: status_col(r, "targets", &format!("{invoke_id}/{id}"))?,
                    instance_name: name.unwrap_or_default(),
                    instance_id: id,
                })
            })
            .collect()
    }

    pub(super) async fn stalled_impl(&self, hub_id: &str, cutoff: &str, limit: i64) -> Result<Vec<(String, String, InvocationStatus)>> {
        // Only this replica's agents: targets of offline agents can wait
        // for days and must not crowd out the ones that can be delivered.
        // Owed: a target never delivered (still in the created state), or
        // a stop not yet confirmed.
        let rows = self
            .q(concat!(
                "SELECT t.instance_id, t.invoke_id, t.status FROM targets t \
                JOIN instances inst ON inst.instance_id = t.instance_id AND inst.hub_id = ? AND inst.online = 1 \
                WHERE ((t.status = ? AND t.delivered = 0 AND t.released = 1) OR t.status = ?) AND t.updated_at < ? \
                ORDER BY t.updated_at LIMIT ",
                bound_count!()
            ))
            .bind(hub_id)
            .bind(crate::lifecycle::TargetState::CREATED.status.as_str())
            .bind(InvocationStatus::Stopping.as_str())
            .bind(cutoff)
            .bind(limit)
            .fetch_all(&mut *self.reads.get().await?)
            .await?;
        rows.iter()
            .map(|r| {
                let id: String = key(r, "targets", "instance_id")?;
                let inv: String = col(r, "targets", "invoke_id", &id)?;
                let status = status_col(r, "targets", &format!("{inv}/{id}"))?;
                Ok((id, inv, status))
            })
            .collect()
    }

    pub(super) async fn publish_impl(&self, payload: &str) -> Result<()> {
        if self.d != Dialect::Postgres {
            return Ok(());
        }
        self.q("SELECT pg_notify(?, ?)").bind(CHANNEL).bind(payload).execute(&mut *self.writes.get().await?).await?;
        Ok(())
    }

    pub(super) fn subscribe_impl(&self) -> Option<mpsc::Receiver<Notice>> {
        if self.d != Dialect::Postgres {
            return None;
        }
        let (tx, rx) = mpsc::channel(NOTICE_QUEUE);
        tokio::spawn(listen(self.url.clone(), tx));
        Some(rx)
    }
}

/// Holds a LISTEN connection for as long as the receiver lives. After any
/// (re)connection it sends `Resync`: NOTIFY is not stored, so what was
/// announced while disconnected must be found in the tables.
async fn listen(url: String, tx: mpsc::Sender<Notice>) {
    let mut backoff = crate::backoff::Backoff::new(LISTEN_RETRY_MIN, LISTEN_RETRY_MAX);
    loop {
        match connect(&url).await {
            Ok(mut listener) => {
                backoff.reset();
                if tx.send(Notice::Resync).await.is_err() {
                    return;
                }
                loop {
                    let notice = match listener.try_recv().await {
                        Ok(Some(n)) => Notice::Message(n.payload().to_string()),
                        // Connection lost; the next call reconnects and listens again.
                        Ok(None) => {
                            tracing::warn!("announcement channel lost; reconnecting");
                            Notice::Resync
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, "announcement channel failed");
                            break;
                        }
                    };
                    if tx.send(notice).await.is_err() {
                        return;
                    }
                }
            }
            Err(e) => tracing::warn!(error = %e, "cannot listen for announcements"),
        }
        if tx.is_closed() {
            return;
        }
        tokio::time::sleep(backoff.next_delay()).await;
    }
}

async fn connect(url: &str) -> std::result::Result<PgListener, sqlx::Error> {
    let mut listener = PgListener::connect(url).await?;
    listener.listen(CHANNEL).await?;
    Ok(listener)
}
