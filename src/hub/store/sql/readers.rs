//! Where the SQL store's reads get a connection.
//!
//! PostgreSQL reads use sqlx's pool. SQLite reads use a few connections
//! the store holds itself: sqlx's pool, on every release, spawns a task
//! that pings the connection, which for SQLite is one more hand-off to the
//! connection's worker thread and back for every query (issue #21: with
//! the ping before each use, a third of a `DescribeInvocationResults`'
//! hub CPU went to such hand-offs). A connection to a file on this host
//! does not go stale while held, so nothing is lost by not testing it.

use std::ops::{Deref, DerefMut};
use std::time::Duration;

use sqlx::{Any, AnyConnection, Connection, Executor};
use tokio::sync::{Mutex, MutexGuard, Semaphore, SemaphorePermit};

use super::super::{Result, StoreError};

pub(super) enum Readers {
    Pool(sqlx::Pool<Any>),
    Held(Held),
}

/// SQLite's read connections, each used by one query at a time.
pub(super) struct Held {
    conns: Vec<Mutex<AnyConnection>>,
    /// One permit per connection: a holder of a permit always finds one
    /// of `conns` unlocked.
    permits: Semaphore,
    /// How long a read waits for a free connection before it fails busy.
    wait: Duration,
}

impl Held {
    /// Opens `n` connections to `url`, each set up with `pragmas`.
    pub(super) async fn open(url: &str, n: usize, pragmas: &str, wait: Duration) -> Result<Self> {
        let mut conns = Vec::with_capacity(n);
        for _ in 0..n {
            let mut conn = AnyConnection::connect(url).await?;
            conn.execute(sqlx::AssertSqlSafe(pragmas.to_string())).await?;
            conns.push(Mutex::new(conn));
        }
        Ok(Self { conns, permits: Semaphore::new(n), wait })
    }
}

impl Readers {
    /// A connection for one read; it is free again when the guard drops.
    pub(super) async fn get(&self) -> Result<ReadConn<'_>> {
        match self {
            Readers::Pool(pool) => Ok(ReadConn::Pooled(pool.acquire().await?)),
            Readers::Held(held) => {
                let Ok(Ok(permit)) = tokio::time::timeout(held.wait, held.permits.acquire()).await else {
                    return Err(StoreError::Busy(sqlx::Error::PoolTimedOut));
                };
                match held.conns.iter().find_map(|c| c.try_lock().ok()) {
                    Some(conn) => Ok(ReadConn::Held { conn, _permit: permit }),
                    // Not reached: permits and connections are as many.
                    None => Err(StoreError::Busy(sqlx::Error::PoolTimedOut)),
                }
            }
        }
    }
}

pub(super) enum ReadConn<'a> {
    Pooled(sqlx::pool::PoolConnection<Any>),
    /// Field order: the connection is unlocked before the permit returns.
    Held {
        conn: MutexGuard<'a, AnyConnection>,
        _permit: SemaphorePermit<'a>,
    },
}

impl Deref for ReadConn<'_> {
    type Target = AnyConnection;
    fn deref(&self) -> &AnyConnection {
        match self {
            ReadConn::Pooled(c) => c,
            ReadConn::Held { conn, .. } => conn,
        }
    }
}

impl DerefMut for ReadConn<'_> {
    fn deref_mut(&mut self) -> &mut AnyConnection {
        match self {
            ReadConn::Pooled(c) => c,
            ReadConn::Held { conn, .. } => conn,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn held(n: usize, wait: Duration) -> (tempfile::TempDir, Readers) {
        sqlx::any::install_default_drivers();
        let dir = tempfile::tempdir().expect("tempdir");
        let url = format!("sqlite://{}?mode=rwc", dir.path().join("r.db").display());
        let held = Held::open(&url, n, "PRAGMA journal_mode = WAL;", wait).await.expect("open");
        (dir, Readers::Held(held))
    }

    #[tokio::test]
    async fn every_connection_serves_one_read_at_a_time() {
        let (_dir, readers) = held(2, Duration::from_secs(5)).await;
        let mut a = readers.get().await.expect("first");
        let mut b = readers.get().await.expect("second");
        // Two distinct live connections.
        let one: i64 = sqlx::query_scalar("SELECT 1").fetch_one(&mut *a).await.expect("query a");
        let two: i64 = sqlx::query_scalar("SELECT 2").fetch_one(&mut *b).await.expect("query b");
        assert_eq!((one, two), (1, 2));
        assert!(!std::ptr::eq(&*a, &*b));
        // Both taken: a third read waits (here, past 100 ms) until one is dropped.
        assert!(tokio::time::timeout(Duration::from_millis(100), readers.get()).await.is_err());
        drop(a);
        let mut c = readers.get().await.expect("third");
        let three: i64 = sqlx::query_scalar("SELECT 3").fetch_one(&mut *c).await.expect("query c");
        assert_eq!(three, 3);
        drop(b);
    }

    #[tokio::test]
    async fn a_read_past_the_wait_fails_busy() {
        let (_dir, readers) = held(1, Duration::from_millis(50)).await;
        let _only = readers.get().await.expect("first");
        let second = readers.get().await;
        assert!(matches!(second, Err(StoreError::Busy(_))), "{:?}", second.err());
    }
}
