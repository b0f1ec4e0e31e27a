//! Where the SQL store gets its connections, for reads and for writes.
//!
//! PostgreSQL uses sqlx's pool for both, except the group commit's
//! transactions, which take a connection the store holds for them alone.
//! SQLite uses connections the store holds itself: four for reads, one that
//! every write goes through.
//! sqlx's pool, on every release, spawns a task that pings the connection,
//! which for SQLite is one more hand-off to the connection's worker thread
//! and back, and a wait for a busy runtime to run that task (issue #21: a
//! third of a `DescribeInvocationResults`' hub CPU went to such hand-offs,
//! and a group commit during a fan-out waited 3.5 to 7 ms of its 12 to 15
//! ms for the write connection to come back). A connection to a file on
//! this host does not go stale while held, so nothing is lost by not
//! testing it.
//!
//! The held write connection runs its transactions with plain `BEGIN
//! IMMEDIATE` / `COMMIT`: a [`WriteTx`] dropped without a commit (an error,
//! a cancelled request) rolls back at once in a task that holds the
//! connection until it is done (as sqlx's own transactions do), so a lock
//! on the file is not kept for the next writer of another process. A
//! rollback that fails (a COMMIT that failed on a full disk has already
//! rolled back; issue #14) leaves the connection marked, and whoever takes
//! it next replaces it.
//!
//! PostgreSQL's group-commit connection is opened by its first taker, the
//! group commit's own thread (`hub::writer`), so that thread's runtime
//! drives its socket: a pooled connection opened by the sessions' runtime
//! woke the writer only when that busy runtime got to it (issue #21).
//! Like the pool's, it is tested with a round trip only after an idle
//! spell, and replaced when that test, a `BEGIN` or a rollback fails on
//! the connection itself.

use std::ops::{Deref, DerefMut};
use std::time::{Duration, Instant};

use sqlx::{Any, AnyConnection, Connection, Executor, Transaction};
use std::sync::Arc;

use tokio::sync::{Mutex, MutexGuard, OwnedMutexGuard, Semaphore, SemaphorePermit};

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
            conns.push(Mutex::new(connect(url, pragmas).await?));
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

/// Every write's connection.
pub(super) enum Writes {
    Pool(sqlx::Pool<Any>),
    Held(HeldWriter),
}

/// A write connection the store holds: SQLite's one write connection, or
/// PostgreSQL's group-commit connection ([`LazyWriter`]).
pub(super) struct HeldWriter {
    slot: Arc<Mutex<Slot>>,
    /// How long a writer waits for the connection before it fails busy.
    wait: Duration,
}

/// PostgreSQL's group-commit connection, opened by its first taker.
pub(super) struct LazyWriter {
    cell: tokio::sync::OnceCell<HeldWriter>,
    url: String,
    /// Idle longer than this, the connection is tested before use.
    ping_idle: Duration,
    wait: Duration,
}

impl LazyWriter {
    pub(super) fn new(url: &str, ping_idle: Duration, wait: Duration) -> Self {
        Self { cell: tokio::sync::OnceCell::new(), url: url.to_string(), ping_idle, wait }
    }

    /// A transaction on the connection, which the first call opens (on
    /// the caller's runtime).
    pub(super) async fn begin(&self, begin: &'static str) -> Result<WriteTx> {
        let held = self.cell.get_or_try_init(|| HeldWriter::open(&self.url, "", self.wait, Some(self.ping_idle))).await?;
        held.begin(begin).await
    }
}

pub(super) struct Slot {
    conn: AnyConnection,
    /// A transaction may be open on `conn` that nobody will commit.
    open: bool,
    /// To replace the connection (its URL and set-up).
    url: String,
    pragmas: String,
    /// Tested with a round trip when idle longer than this (a server's
    /// connection can go away while held; a file's does not).
    ping_idle: Option<Duration>,
    /// When the connection was last taken.
    used: Instant,
}

impl Slot {
    /// Ends a transaction nobody will commit: rolled back or, where that
    /// fails, the connection replaced. On error `open` stays set, and the
    /// next taker tries again.
    async fn settle(&mut self) -> Result<()> {
        if !self.open {
            if self.ping_idle.is_some_and(|idle| self.used.elapsed() > idle) && self.conn.ping().await.is_err() {
                tracing::warn!("write connection replaced after it failed its idle test");
                self.conn = connect(&self.url, &self.pragmas).await?;
            }
            return Ok(());
        }
        if self.conn.execute("ROLLBACK").await.is_err() {
            // Nothing to roll back (SQLite already did, on a failed
            // COMMIT) or the connection is broken: a new one is sure.
            tracing::warn!("write connection replaced after a transaction it could not roll back");
            self.conn = connect(&self.url, &self.pragmas).await?;
        }
        self.open = false;
        Ok(())
    }
}

impl HeldWriter {
    /// Opens the connection; with `ping_idle`, it is tested with a round
    /// trip before use once idle longer than that (a server's connection).
    pub(super) async fn open(url: &str, pragmas: &str, wait: Duration, ping_idle: Option<Duration>) -> Result<Self> {
        let conn = connect(url, pragmas).await?;
        let slot = Slot { conn, open: false, url: url.to_string(), pragmas: pragmas.to_string(), ping_idle, used: Instant::now() };
        Ok(Self { slot: Arc::new(Mutex::new(slot)), wait })
    }

    /// A transaction begun with `begin` on the held connection.
    async fn begin(&self, begin: &'static str) -> Result<WriteTx> {
        let mut slot = self.take().await?;
        // Marked first, so that a BEGIN cancelled half-way is settled by
        // the next taker.
        slot.open = true;
        if let Err(e) = slot.conn.execute(begin).await {
            // A BEGIN that failed began nothing, unless the connection
            // itself failed: then the next taker's rollback fails too and
            // replaces it.
            slot.open = connection_failed(&e);
            return Err(e.into());
        }
        Ok(WriteTx::Held(HeldTx(slot)))
    }

    /// The connection, outside any transaction.
    async fn take(&self) -> Result<OwnedMutexGuard<Slot>> {
        let Ok(mut slot) = tokio::time::timeout(self.wait, self.slot.clone().lock_owned()).await else {
            return Err(StoreError::Busy(sqlx::Error::PoolTimedOut));
        };
        slot.settle().await?;
        slot.used = Instant::now();
        Ok(slot)
    }
}

/// The connection itself failed, not the statement: its socket, or the
/// server ending the session (PostgreSQL's classes 08, connection
/// exception, and 57, operator intervention: a shutdown, a terminated
/// backend).
fn connection_failed(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Io(_) | sqlx::Error::Tls(_) | sqlx::Error::Protocol(_) => true,
        sqlx::Error::Database(db) => db.code().is_some_and(|c| c.starts_with("08") || c.starts_with("57")),
        _ => false,
    }
}

async fn connect(url: &str, pragmas: &str) -> Result<AnyConnection> {
    let mut conn = AnyConnection::connect(url).await?;
    if !pragmas.is_empty() {
        conn.execute(sqlx::AssertSqlSafe(pragmas.to_string())).await?;
    }
    Ok(conn)
}

impl Writes {
    /// A connection for writes outside a transaction (each statement
    /// commits on its own).
    pub(super) async fn get(&self) -> Result<WriteConn> {
        match self {
            Writes::Pool(pool) => Ok(WriteConn::Pooled(pool.acquire().await?)),
            Writes::Held(held) => Ok(WriteConn::Held(held.take().await?)),
        }
    }

    /// A transaction begun with `begin` (the dialect's statement).
    pub(super) async fn begin(&self, begin: &'static str) -> Result<WriteTx> {
        match self {
            Writes::Pool(pool) => Ok(WriteTx::Pooled(pool.begin_with(begin).await?)),
            Writes::Held(held) => held.begin(begin).await,
        }
    }
}

pub(super) enum WriteConn {
    Pooled(sqlx::pool::PoolConnection<Any>),
    Held(OwnedMutexGuard<Slot>),
}

impl Deref for WriteConn {
    type Target = AnyConnection;
    fn deref(&self) -> &AnyConnection {
        match self {
            WriteConn::Pooled(c) => c,
            WriteConn::Held(slot) => &slot.conn,
        }
    }
}

impl DerefMut for WriteConn {
    fn deref_mut(&mut self) -> &mut AnyConnection {
        match self {
            WriteConn::Pooled(c) => c,
            WriteConn::Held(slot) => &mut slot.conn,
        }
    }
}

/// An open write transaction; rolled back unless [`WriteTx::commit`]ted.
pub(super) enum WriteTx {
    Pooled(Transaction<'static, Any>),
    Held(HeldTx),
}

/// A transaction on the held write connection.
pub(super) struct HeldTx(OwnedMutexGuard<Slot>);

impl WriteTx {
    pub(super) async fn commit(self) -> Result<()> {
        match self {
            WriteTx::Pooled(tx) => Ok(tx.commit().await?),
            WriteTx::Held(mut held) => {
                // On failure `open` stays set, and the drop rolls back.
                held.0.conn.execute("COMMIT").await?;
                held.0.open = false;
                Ok(())
            }
        }
    }
}

impl Drop for HeldTx {
    fn drop(&mut self) {
        if !self.0.open {
            return;
        }
        // The lock is released as this returns; whoever takes it next, this
        // task or a writer already waiting, finds `open` and settles it.
        // Outside a runtime (not reached: stores live in one) that is the
        // next writer.
        let slot = OwnedMutexGuard::mutex(&self.0).clone();
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move {
                // A failure leaves `open` set for the next taker.
                let _ = slot.lock_owned().await.settle().await;
            });
        }
    }
}

impl Deref for WriteTx {
    type Target = AnyConnection;
    fn deref(&self) -> &AnyConnection {
        match self {
            WriteTx::Pooled(tx) => tx,
            WriteTx::Held(held) => &held.0.conn,
        }
    }
}

impl DerefMut for WriteTx {
    fn deref_mut(&mut self) -> &mut AnyConnection {
        match self {
            WriteTx::Pooled(tx) => tx,
            WriteTx::Held(held) => &mut held.0.conn,
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

    async fn writer(wait: Duration) -> (tempfile::TempDir, Writes) {
        sqlx::any::install_default_drivers();
        let dir = tempfile::tempdir().expect("tempdir");
        let url = format!("sqlite://{}?mode=rwc", dir.path().join("w.db").display());
        let held = HeldWriter::open(&url, "PRAGMA journal_mode = WAL;", wait, None).await.expect("open");
        let writes = Writes::Held(held);
        sqlx::query("CREATE TABLE t (n INTEGER)").execute(&mut *writes.get().await.expect("conn")).await.expect("create");
        (dir, writes)
    }

    async fn rows(writes: &Writes) -> Vec<i64> {
        sqlx::query_scalar("SELECT n FROM t ORDER BY n").fetch_all(&mut *writes.get().await.expect("conn")).await.expect("select")
    }

    async fn insert(tx: &mut WriteTx, n: i64) {
        sqlx::query("INSERT INTO t (n) VALUES (?)").bind(n).execute(&mut **tx).await.expect("insert");
    }

    #[tokio::test]
    async fn a_write_transaction_keeps_only_what_it_committed() {
        let (_dir, writes) = writer(Duration::from_secs(5)).await;
        let mut tx = writes.begin("BEGIN IMMEDIATE").await.expect("begin");
        insert(&mut tx, 1).await;
        tx.commit().await.expect("commit");
        // Dropped without a commit (an error, a cancelled request): gone.
        let mut tx = writes.begin("BEGIN IMMEDIATE").await.expect("begin");
        insert(&mut tx, 2).await;
        drop(tx);
        assert_eq!(rows(&writes).await, vec![1]);
        // And the connection takes the next transaction as usual.
        let mut tx = writes.begin("BEGIN IMMEDIATE").await.expect("begin after a rollback");
        insert(&mut tx, 3).await;
        tx.commit().await.expect("commit");
        assert_eq!(rows(&writes).await, vec![1, 3]);
    }

    #[tokio::test]
    async fn a_dropped_transaction_frees_the_file_for_another_process_at_once() {
        let (dir, a) = writer(Duration::from_secs(5)).await;
        // A second store on the same file, as a second hub process would be
        // (it waits in SQLite's busy handler for the file's write lock).
        let url = format!("sqlite://{}?mode=rwc", dir.path().join("w.db").display());
        let b = Writes::Held(HeldWriter::open(&url, "PRAGMA busy_timeout = 10000;", Duration::from_secs(5), None).await.expect("open b"));
        let mut tx = a.begin("BEGIN IMMEDIATE").await.expect("begin a");
        insert(&mut tx, 1).await;
        drop(tx);
        let mut tx = tokio::time::timeout(Duration::from_secs(3), b.begin("BEGIN IMMEDIATE"))
            .await
            .expect("the lock was released well before the 10 s busy timeout")
            .expect("begin b");
        insert(&mut tx, 2).await;
        tx.commit().await.expect("commit b");
        assert_eq!(rows(&a).await, vec![2]);
    }

    #[tokio::test]
    async fn writers_take_turns_and_a_wait_past_the_bound_fails_busy() {
        let (_dir, writes) = writer(Duration::from_millis(50)).await;
        let tx = writes.begin("BEGIN IMMEDIATE").await.expect("begin");
        let second = writes.begin("BEGIN IMMEDIATE").await;
        assert!(matches!(second, Err(StoreError::Busy(_))), "{:?}", second.err().map(|e| e.to_string()));
        assert!(matches!(writes.get().await, Err(StoreError::Busy(_))));
        drop(tx);
        writes.begin("BEGIN IMMEDIATE").await.expect("free again").commit().await.expect("commit");
    }

    #[tokio::test]
    async fn a_transaction_that_cannot_be_rolled_back_gets_a_new_connection() {
        let (_dir, writes) = writer(Duration::from_secs(5)).await;
        // Connection-local: it shows whether the connection was replaced.
        sqlx::query("CREATE TEMP TABLE marker (x)").execute(&mut *writes.get().await.expect("conn")).await.expect("marker");
        // As after a COMMIT that failed on a full disk: SQLite has ended
        // the transaction already, so the ROLLBACK owed for it fails.
        let mut tx = writes.begin("BEGIN IMMEDIATE").await.expect("begin");
        insert(&mut tx, 1).await;
        sqlx::query("ROLLBACK").execute(&mut *tx).await.expect("ended behind the writer's back");
        drop(tx);
        let mut tx = writes.begin("BEGIN IMMEDIATE").await.expect("begin on the new connection");
        insert(&mut tx, 2).await;
        tx.commit().await.expect("commit");
        assert_eq!(rows(&writes).await, vec![2]);
        let marker: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM sqlite_temp_master WHERE name = 'marker'")
            .fetch_one(&mut *writes.get().await.expect("conn"))
            .await
            .expect("temp schema");
        assert_eq!(marker, 0, "a new connection");
    }

    #[tokio::test]
    async fn a_read_past_the_wait_fails_busy() {
        let (_dir, readers) = held(1, Duration::from_millis(50)).await;
        let _only = readers.get().await.expect("first");
        let second = readers.get().await;
        assert!(matches!(second, Err(StoreError::Busy(_))), "{:?}", second.err());
    }
}
