//! The SQL implementation of [`Store`], over SQLite (one hub, one file)
//! or PostgreSQL (several hub replicas on one database).
//!
//! SQLite runs WAL with `synchronous=FULL`, so a committed transaction
//! survives power loss; PostgreSQL gives the same guarantee with its
//! defaults (`fsync`, `synchronous_commit` on). Queries are written once;
//! [`dialect`] holds the differences.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use sqlx::any::{AnyArguments, AnyRow};
use sqlx::pool::PoolOptions;
use sqlx::query::{Query, QueryScalar};
// Dynamic SQL here is built only from fixed column names; values are bound.
use sqlx::{Any, AssertSqlSafe};

use conns::WriteTx;

mod access;
mod batch;
mod cluster;
mod conns;
mod dialect;
mod fires;
mod reports;
mod rows;
mod updates;
mod window;
mod writes;

use dialect::{Dialect, bound_count};
pub use reports::to_wire;
use rows::*;

/// The per-instance statuses that are not settled (bound into queries
/// that look for work still owed).
fn unsettled() -> Vec<InvocationStatus> {
    InvocationStatus::ALL.iter().copied().filter(|s| !s.is_final()).collect()
}

/// `WHERE` for target queries: the invocation filter's target-level
/// fields, and `status_expr IN statuses` when any are given.
fn target_where(f: &InvocationFilter, statuses: &[InvocationStatus], status_expr: &str) -> (String, Vec<String>) {
    let mut clauses = Vec::new();
    let mut binds = Vec::new();
    for (c, v) in [("t.invoke_id", &f.invoke_id), ("t.instance_id", &f.instance_id), ("i.command_id", &f.command_id)] {
        if let Some(v) = v {
            clauses.push(format!("{c} = ?"));
            binds.push(v.clone());
        }
    }
    if !statuses.is_empty() {
        clauses.push(format!("{status_expr} IN ({})", placeholders(statuses.len())));
        binds.extend(statuses.iter().map(|s| s.as_str().to_string()));
    }
    let w = if clauses.is_empty() { String::new() } else { format!("WHERE {}", clauses.join(" AND ")) };
    (w, binds)
}

use super::*;

/// SQLite: four connections for reads, held by the store (`conns`; WAL
/// lets them run beside the writer), and one more that every write goes
/// through (`writes`).
const SQLITE_READERS: usize = 4;
/// SQLite page cache of each read connection, KiB. Reads are point
/// lookups and short pages, and the OS keeps the file's pages cached:
/// SQLite's default (2 MiB a connection, 8 MiB for the pool) held up to
/// 6 MiB more of the hub's RSS (about 0.2 KiB per agent in the 10,000-agent
/// fan-out bench) for no measured gain in `DescribeInvocationResults`
/// (issue #21).
const READ_CACHE_KIB: u32 = 512;
/// The write connection keeps SQLite's default: every group commit walks
/// the same index pages.
const WRITE_CACHE_KIB: u32 = 2000;
/// PostgreSQL: enough for the API, the group-commit writer and agent
/// sessions of one replica; N replicas use N times this (size the server's
/// `max_connections` accordingly).
const POSTGRES_POOL: u32 = 16;
/// A pooled PostgreSQL connection idle longer than this is pinged before
/// it is used again, so one that a server restart or a dropped TCP session
/// broke while it sat idle is replaced instead of failing a request; one
/// in steady use skips the round trip (the bypass window connection pools
/// such as HikariCP use, for the same reason).
const POSTGRES_PING_IDLE: Duration = Duration::from_secs(1);
/// A writer waits this long for a lock or a pooled connection before
/// failing the request.
const BUSY_TIMEOUT: Duration = Duration::from_secs(10);
/// Serialisation failures and deadlocks (PostgreSQL) are retried this many
/// times; they are normal under concurrency and the retry is cheap.
const TX_RETRIES: u32 = 5;
/// Fixed key of the advisory lock that serialises migrations when several
/// replicas start at once on an empty database.
const MIGRATION_LOCK: i64 = 0x6465_636b_6861_6e64; // "deckhand"

#[derive(Clone)]
pub struct SqlStore {
    /// Where reads get a connection (`conns`): held SQLite connections,
    /// or the PostgreSQL pool that `writes` also uses.
    reads: Arc<conns::Readers>,
    /// Every write: on SQLite one connection the store holds (`conns`),
    /// so writers queue here (woken as soon as the one before commits)
    /// instead of in SQLite's busy handler, which sleeps 1 to 100 ms
    /// between tries (issue #21: a group commit spent most of its 84–330 ms
    /// there). On PostgreSQL the same pool as reads.
    writes: Arc<conns::Writes>,
    /// PostgreSQL's group-commit transactions: a connection of their own,
    /// driven by the group commit's thread (`conns::LazyWriter`). SQLite's
    /// go through `writes`.
    batch: Option<Arc<conns::LazyWriter>>,
    d: Dialect,
    /// PostgreSQL URL, for the LISTEN connection (not pooled).
    url: String,
    /// Targets released by this handle's committed transactions.
    released: tokio::sync::broadcast::Sender<Released>,
    /// Fire decisions made by this handle's committed transactions.
    fires: tokio::sync::broadcast::Sender<Vec<FireAnswer>>,
}

/// Release announcements buffered for a slow hub; beyond it the hub
/// learns of a lag and the backstop finds the rest.
const RELEASED_QUEUE: usize = 1024;

impl SqlStore {
    /// Opens the store named by `spec`: a `postgres://` or `postgresql://`
    /// URL, otherwise a path to an SQLite file (created if missing).
    pub async fn open(spec: &str) -> Result<Self> {
        if spec.starts_with("postgres://") || spec.starts_with("postgresql://") {
            Self::connect_postgres(spec).await
        } else {
            Self::open_sqlite(std::path::Path::new(spec.strip_prefix("sqlite://").unwrap_or(spec))).await
        }
    }

    pub async fn open_sqlite(path: &std::path::Path) -> Result<Self> {
        sqlx::any::install_default_drivers();
        let url = format!("sqlite://{}?mode=rwc", path.display());
        // Durability, locking and cache settings are per connection.
        let pragmas = |cache_kib: u32| {
            format!(
                "PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL; PRAGMA foreign_keys = ON; \
                 PRAGMA busy_timeout = 10000; PRAGMA cache_size = -{cache_kib};"
            )
        };
        // The writer's statement journals (what lets one statement of a
        // transaction fail alone; a multi-row UPDATE under foreign keys
        // keeps one) stay in memory instead of spilling to a temporary file
        // past 64 KiB: a 3,000-agent fan-out opened 46 such files, and the
        // fan-out to 10,000 was 4–14 % faster without them (issue #21). One
        // holds the pages a single statement changes, and the group
        // commit's statements change at most 256 rows each
        // (`dialect::MAX_SHAPE`). Reads keep
        // spilling large sorts to disk.
        let write_pragmas = format!("{} PRAGMA temp_store = MEMORY;", pragmas(WRITE_CACHE_KIB));
        let writes = conns::HeldWriter::open(&url, &write_pragmas, BUSY_TIMEOUT, None).await?;
        let reads = conns::Held::open(&url, SQLITE_READERS, &pragmas(READ_CACHE_KIB), BUSY_TIMEOUT).await?;
        let store = Self {
            reads: Arc::new(conns::Readers::Held(reads)),
            writes: Arc::new(conns::Writes::Held(writes)),
            batch: None,
            d: Dialect::Sqlite,
            url: String::new(),
            released: tokio::sync::broadcast::channel(RELEASED_QUEUE).0,
            fires: tokio::sync::broadcast::channel(RELEASED_QUEUE).0,
        };
        store.migrate().await?;
        Ok(store)
    }

    pub async fn connect_postgres(url: &str) -> Result<Self> {
        sqlx::any::install_default_drivers();
        let pool = PoolOptions::<Any>::new()
            .max_connections(POSTGRES_POOL)
            .acquire_timeout(BUSY_TIMEOUT)
            // A round trip to the server before every query (sqlx's default)
            // only for connections idle past `POSTGRES_PING_IDLE` (issue #21).
            .test_before_acquire(false)
            .before_acquire(|conn, meta| {
                Box::pin(async move {
                    if meta.idle_for > POSTGRES_PING_IDLE {
                        use sqlx::Connection;
                        conn.ping().await?;
                    }
                    Ok(true)
                })
            })
            .after_release(|conn, _| Box::pin(async move { Ok(fit_for_reuse(conn)) }))
            .connect(url)
            .await?;
        let store = Self {
            writes: Arc::new(conns::Writes::Pool(pool.clone())),
            reads: Arc::new(conns::Readers::Pool(pool)),
            batch: Some(Arc::new(conns::LazyWriter::new(url, POSTGRES_PING_IDLE, BUSY_TIMEOUT))),
            d: Dialect::Postgres,
            url: url.to_string(),
            released: tokio::sync::broadcast::channel(RELEASED_QUEUE).0,
            fires: tokio::sync::broadcast::channel(RELEASED_QUEUE).0,
        };
        store.migrate().await?;
        Ok(store)
    }

    fn q(&self, sql: &str) -> Query<'static, Any, AnyArguments> {
        sqlx::query(AssertSqlSafe(self.d.sql(sql)))
    }

    fn qs<O>(&self, sql: &str) -> QueryScalar<'static, Any, O, AnyArguments>
    where
        (O,): for<'r> sqlx::FromRow<'r, sqlx::any::AnyRow>,
    {
        sqlx::query_scalar(AssertSqlSafe(self.d.sql(sql)))
    }

    /// One page of `SELECT {select} {from_where} ORDER BY {order}` and the
    /// total count of `from_where`; `binds` fill its placeholders in order.
    async fn page_of(&self, select: &str, from_where: &str, order: &str, binds: &[String], page: Page) -> Result<(Vec<AnyRow>, i64)> {
        let mut count = self.qs::<i64>(&format!("SELECT COUNT(*) {from_where}"));
        let mut rows = self
            .q(&format!(concat!("SELECT {} {} ORDER BY {} LIMIT ", bound_count!(), " OFFSET ", bound_count!()), select, from_where, order));
        for b in binds {
            count = count.bind(b);
            rows = rows.bind(b);
        }
        if page.limit <= 0 {
            return Ok((Vec::new(), count.fetch_one(&mut *self.reads.get().await?).await?));
        }
        let rows = rows.bind(page.limit).bind(page.offset).fetch_all(&mut *self.reads.get().await?).await?;
        // A short page that is not past the end already tells the total:
        // the count query is skipped (issue #21: most calls, and every
        // poll of one invocation's results, read a single short page).
        let short = (rows.len() as i64) < page.limit;
        if short && (page.offset == 0 || !rows.is_empty()) {
            let total = page.offset + rows.len() as i64;
            return Ok((rows, total));
        }
        Ok((rows, count.fetch_one(&mut *self.reads.get().await?).await?))
    }

    async fn begin(&self) -> Result<WriteTx> {
        self.writes.begin(self.d.begin()).await
    }

    /// A group commit's transaction (see `batch`).
    async fn begin_batch(&self) -> Result<WriteTx> {
        match &self.batch {
            Some(lazy) => lazy.begin(self.d.begin()).await,
            None => self.begin().await,
        }
    }

    async fn migrate(&self) -> Result<()> {
        let mut tx = self.begin().await?;
        if self.d == Dialect::Postgres {
            // Replicas starting together on an empty database: one migrates,
            // the others wait here and then find nothing left to do.
            self.q("SELECT pg_advisory_xact_lock(?)").bind(MIGRATION_LOCK).execute(&mut *tx).await?;
        }
        sqlx::raw_sql(AssertSqlSafe(self.d.ddl("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")))
            .execute(&mut *tx)
            .await?;
        let current: Option<i64> = self.qs("SELECT MAX(version) FROM schema_version").fetch_one(&mut *tx).await?;
        let current = current.unwrap_or(0);
        let known = schema::MIGRATIONS.len() as i64;
        if current > known {
            return Err(StoreError::SchemaTooNew { found: current, known });
        }
        // Replicas of the previous release still running on this database
        // would keep writing the old status names without the kept counts:
        // refuse to migrate under them, naming how many.
        if self.d == Dialect::Postgres && current >= 3 && (current as usize) < schema::LIFECYCLE_STEP {
            let alive: i64 = self
                .qs("SELECT COUNT(*) FROM hubs WHERE last_seen >= ?")
                .bind(ago_str(crate::hub::cluster::DEAD_AFTER))
                .fetch_one(&mut *tx)
                .await?;
            if alive > 0 {
                return Err(StoreError::OlderReplicasRunning { replicas: alive, version: current });
            }
        }
        // All pending steps commit together: a crash mid-way leaves the old
        // schema, never half of a step.
        for (i, step) in schema::MIGRATIONS.iter().enumerate().skip(current as usize) {
            sqlx::raw_sql(AssertSqlSafe(self.d.ddl(step))).execute(&mut *tx).await?;
            if i + 1 == schema::LIFECYCLE_STEP {
                writes::upgrade_lifecycle(&mut tx, self.d).await?;
            }
            self.q("INSERT INTO schema_version (version) VALUES (?)").bind(i as i64 + 1).execute(&mut *tx).await?;
            tracing::info!(version = i + 1, "applied schema migration");
        }
        tx.commit().await?;
        Ok(())
    }
}

/// Inserts one command row inside `tx`, already invoked `invoke_times`
/// times (RunCommand's command is created with its one invocation).
async fn insert_command(tx: &mut WriteTx, d: Dialect, c: &CommandRow, invoke_times: i64) -> Result<()> {
    sqlx::query(AssertSqlSafe(d.sql(
        "INSERT INTO commands (command_id, name, description, command_type, content, working_dir, timeout_secs, \
         enable_parameter, username, created_at, visible, invoke_times) VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
    )))
    .bind(&c.command_id)
    .bind(&c.name)
    .bind(&c.description)
    .bind(c.command_type.as_str())
    .bind(&c.content)
    .bind(&c.working_dir)
    .bind(c.timeout_secs)
    .bind(c.enable_parameter as i64)
    .bind(&c.username)
    .bind(&c.created_at)
    .bind(c.visible as i64)
    .bind(invoke_times)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// A unique violation while creating an invocation with a ClientToken:
/// the same token committed meanwhile (another replica, a concurrent retry).
fn duplicate_token(r: Result<()>, inv: &InvocationRow) -> Result<()> {
    match sorted(r) {
        Err(StoreError::Db(sqlx::Error::Database(e))) if e.is_unique_violation() && !inv.client_token.is_empty() => {
            Err(StoreError::DuplicateClientToken(inv.client_token.clone()))
        }
        other => other,
    }
}

/// A pooled (PostgreSQL) connection goes back to the pool only outside any
/// transaction. When a COMMIT fails on a full disk, the database may have
/// rolled back already, the driver's ROLLBACK then fails, and its
/// transaction count stays at 1: reused, that connection refused every
/// later BEGIN ("begin_with at non-zero transaction depth") until a restart
/// (issue #14, seen on SQLite). Closing it instead costs one reconnect.
/// SQLite's held write connection does the same its own way (`conns`).
fn fit_for_reuse(conn: &mut sqlx::AnyConnection) -> bool {
    use sqlx::Connection;
    !conn.is_in_transaction()
}

/// True for errors a retried transaction can get past: PostgreSQL's
/// serialisation failure and deadlock, SQLite's busy.
fn retryable(e: &StoreError) -> bool {
    let (StoreError::Db(sqlx::Error::Database(db)) | StoreError::Busy(sqlx::Error::Database(db))) = e else { return false };
    matches!(db.code().as_deref(), Some("40001") | Some("40P01") | Some("5") | Some("517"))
}

/// Runs one write transaction, again (up to [`TX_RETRIES`] more times)
/// while it fails on a conflict another writer caused (serialization
/// failure, deadlock, SQLite busy); its error sorted as [`sorted`] does.
async fn retrying<T, F, Fut>(mut once: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T>>,
{
    let mut attempt = 0;
    loop {
        match sorted(once().await) {
            Err(e) if retryable(&e) && attempt < TX_RETRIES => attempt += 1,
            other => return other,
        }
    }
}

/// Keeps a writer's error with its cause sorted (busy, disk full, other).
fn sorted<T>(r: Result<T>) -> Result<T> {
    r.map_err(|e| match e {
        StoreError::Db(e) => StoreError::classify(e),
        other => other,
    })
}

#[async_trait]
impl Store for SqlStore {
    async fn create_activation(&self, a: &ActivationRow) -> Result<()> {
        self.q("INSERT INTO activations (activation_id, code_hash, instance_name, description, instance_count, \
             time_to_live_hours, ip_address_range, created_at) VALUES (?,?,?,?,?,?,?,?)")
            .bind(&a.activation_id)
            .bind(&a.code_hash)
            .bind(&a.instance_name)
            .bind(&a.description)
            .bind(a.instance_count)
            .bind(a.time_to_live_hours)
            .bind(&a.ip_address_range)
            .bind(&a.created_at)
            .execute(&mut *self.writes.get().await?)
            .await?;
        Ok(())
    }

    async fn get_activation(&self, id: &str) -> Result<Option<ActivationRow>> {
        let r = self.q("SELECT * FROM activations WHERE activation_id = ?").bind(id).fetch_optional(&mut *self.reads.get().await?).await?;
        r.as_ref().map(activation_from).transpose()
    }

    async fn list_activations(&self, id: Option<&str>, page: Page) -> Result<(Vec<ActivationRow>, i64)> {
        let (w, binds) = match id {
            Some(id) => ("WHERE activation_id = ?", vec![id.to_string()]),
            None => ("", vec![]),
        };
        let (rows, total) = self.page_of("*", &format!("FROM activations {w}"), "created_at DESC, activation_id", &binds, page).await?;
        Ok((rows.iter().map(activation_from).collect::<Result<_>>()?, total))
    }

    async fn set_activation_disabled(&self, id: &str) -> Result<bool> {
        let r =
            self.q("UPDATE activations SET disabled = 1 WHERE activation_id = ?").bind(id).execute(&mut *self.writes.get().await?).await?;
        Ok(r.rows_affected() > 0)
    }

    async fn delete_activation(&self, id: &str) -> Result<bool> {
        let r = self
            .q("DELETE FROM activations WHERE activation_id = ? AND NOT EXISTS \
             (SELECT 1 FROM instances WHERE activation_id = activations.activation_id)")
            .bind(id)
            .execute(&mut *self.writes.get().await?)
            .await?;
        Ok(r.rows_affected() > 0)
    }

    async fn register_instance(&self, activation_id: &str, inst: &InstanceRow) -> Result<bool> {
        let mut tx = self.begin().await?;
        // The count check and the insert commit together, so two machines
        // racing for the last slot cannot both register.
        let claimed = self
            .q("UPDATE activations SET registered_count = registered_count + 1 \
             WHERE activation_id = ? AND disabled = 0 AND registered_count < instance_count")
            .bind(activation_id)
            .execute(&mut *tx)
            .await?;
        if claimed.rows_affected() == 0 {
            return Ok(false);
        }
        self.q("INSERT INTO instances (instance_id, instance_name, token_hash, facts, ip, registered_at, activation_id) \
             VALUES (?,?,?,?,?,?,?)")
            .bind(&inst.instance_id)
            .bind(&inst.instance_name)
            .bind(&inst.token_hash)
            .bind(serde_json::to_string(&inst.facts).unwrap_or_default())
            .bind(&inst.ip)
            .bind(&inst.registered_at)
            .bind(activation_id)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(true)
    }

    async fn get_instance(&self, id: &str) -> Result<Option<InstanceRow>> {
        let r = self.q("SELECT * FROM instances WHERE instance_id = ?").bind(id).fetch_optional(&mut *self.reads.get().await?).await?;
        r.as_ref().map(instance_from).transpose()
    }

    async fn list_instances(
        &self,
        ids: &[String],
        name: Option<&str>,
        online: Option<bool>,
        page: Page,
    ) -> Result<(Vec<InstanceRow>, i64)> {
        let mut clauses = Vec::new();
        let mut binds: Vec<String> = Vec::new();
        if !ids.is_empty() {
            clauses.push(format!("instance_id IN ({})", vec!["?"; ids.len()].join(",")));
            binds.extend(ids.iter().cloned());
        }
        if let Some(n) = name {
            clauses.push("instance_name = ?".to_string());
            binds.push(n.to_string());
        }
        // A literal, not a bind: the binds are text and `online` an integer.
        if let Some(on) = online {
            clauses.push(format!("online = {}", i32::from(on)));
        }
        let w = if clauses.is_empty() { String::new() } else { format!("WHERE {}", clauses.join(" AND ")) };
        let (rows, total) = self.page_of("*", &format!("FROM instances {w}"), "registered_at, instance_id", &binds, page).await?;
        Ok((rows.iter().map(instance_from).collect::<Result<_>>()?, total))
    }

    async fn instances_after(&self, after: &str, limit: i64) -> Result<Vec<InstanceRow>> {
        let rows = self
            .q(concat!("SELECT * FROM instances WHERE instance_id > ? ORDER BY instance_id LIMIT ", bound_count!()))
            .bind(after)
            .bind(limit)
            .fetch_all(&mut *self.reads.get().await?)
            .await?;
        rows.iter().map(instance_from).collect()
    }

    async fn deregister_instance(&self, id: &str) -> Result<bool> {
        let mut tx = self.begin().await?;
        let act: Option<String> =
            self.qs("SELECT activation_id FROM instances WHERE instance_id = ?").bind(id).fetch_optional(&mut *tx).await?;
        let Some(act) = act else { return Ok(false) };
        self.release_targets(&mut tx, id).await?;
        self.q("DELETE FROM instances WHERE instance_id = ?").bind(id).execute(&mut *tx).await?;
        self.q("UPDATE activations SET deregistered_count = deregistered_count + 1 WHERE activation_id = ?")
            .bind(act)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(true)
    }

    async fn instance_connected(&self, id: &str, hub_id: &str, session: u64, facts: &HostFacts, ip: &str) -> Result<()> {
        // The one implementation is the batch's (the hub sends these through
        // its group-commit writer).
        let op = WriteOp::Connected {
            instance_id: id.to_string(),
            hub_id: hub_id.to_string(),
            session,
            facts: facts.clone(),
            ip: ip.to_string(),
        };
        self.apply_batch(&[op]).await.map(drop)
    }

    async fn instance_disconnected(&self, id: &str, hub_id: &str, session: u64) -> Result<()> {
        let op = WriteOp::Disconnected { instance_id: id.to_string(), hub_id: hub_id.to_string(), session };
        self.apply_batch(&[op]).await.map(drop)
    }

    async fn set_pending_token(&self, id: &str, hash: &str) -> Result<()> {
        self.q("UPDATE instances SET pending_token_hash = ? WHERE instance_id = ?")
            .bind(hash)
            .bind(id)
            .execute(&mut *self.writes.get().await?)
            .await?;
        Ok(())
    }

    async fn promote_pending_token(&self, id: &str) -> Result<()> {
        self.q("UPDATE instances SET token_hash = pending_token_hash, pending_token_hash = '' WHERE instance_id = ? AND pending_token_hash != ''")
            .bind(id)
            .execute(&mut *self.writes.get().await?)
            .await?;
        Ok(())
    }

    async fn set_tags(&self, id: &str, tags: &[(String, String)]) -> Result<()> {
        let Some(inst) = self.get_instance(id).await? else { return Ok(()) };
        let mut merged = inst.tags;
        for (k, v) in tags {
            merged.retain(|(ek, _)| ek != k);
            merged.push((k.clone(), v.clone()));
        }
        self.q("UPDATE instances SET tags = ? WHERE instance_id = ?")
            .bind(serde_json::to_string(&merged).unwrap_or_default())
            .bind(id)
            .execute(&mut *self.writes.get().await?)
            .await?;
        Ok(())
    }

    async fn remove_tags(&self, id: &str, keys: &[String]) -> Result<()> {
        let Some(inst) = self.get_instance(id).await? else { return Ok(()) };
        let kept: Vec<_> = inst.tags.into_iter().filter(|(k, _)| !keys.contains(k)).collect();
        self.q("UPDATE instances SET tags = ? WHERE instance_id = ?")
            .bind(serde_json::to_string(&kept).unwrap_or_default())
            .bind(id)
            .execute(&mut *self.writes.get().await?)
            .await?;
        Ok(())
    }

    async fn create_command(&self, c: &CommandRow) -> Result<()> {
        let mut tx = self.begin().await?;
        insert_command(&mut tx, self.d, c, 0).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn get_command(&self, id: &str) -> Result<Option<CommandRow>> {
        let r = self.q("SELECT * FROM commands WHERE command_id = ?").bind(id).fetch_optional(&mut *self.reads.get().await?).await?;
        r.as_ref().map(command_from).transpose()
    }

    async fn list_commands(
        &self,
        id: Option<&str>,
        name: Option<&str>,
        ctype: Option<CommandType>,
        page: Page,
    ) -> Result<(Vec<CommandRow>, i64)> {
        let mut clauses = vec!["visible = 1".to_string()];
        let mut binds = Vec::new();
        for (col, v) in [("command_id", id), ("name", name), ("command_type", ctype.map(|t| t.as_str()))] {
            if let Some(v) = v {
                clauses.push(format!("{col} = ?"));
                binds.push(v.to_string());
            }
        }
        let w = format!("WHERE {}", clauses.join(" AND "));
        let (rows, total) = self.page_of("*", &format!("FROM commands {w}"), "created_at DESC, command_id", &binds, page).await?;
        Ok((rows.iter().map(command_from).collect::<Result<_>>()?, total))
    }

    async fn update_command(&self, c: &CommandRow) -> Result<()> {
        self.q("UPDATE commands SET name = ?, description = ?, content = ?, working_dir = ?, timeout_secs = ?, \
             username = ? WHERE command_id = ?")
            .bind(&c.name)
            .bind(&c.description)
            .bind(&c.content)
            .bind(&c.working_dir)
            .bind(c.timeout_secs)
            .bind(&c.username)
            .bind(&c.command_id)
            .execute(&mut *self.writes.get().await?)
            .await?;
        Ok(())
    }

    async fn delete_command(&self, id: &str) -> Result<bool> {
        let r =
            self.q("DELETE FROM commands WHERE command_id = ? AND visible = 1").bind(id).execute(&mut *self.writes.get().await?).await?;
        Ok(r.rows_affected() > 0)
    }

    async fn create_invocation(&self, inv: &InvocationRow, instances: &[String], audit: Option<&AuditEvent>) -> Result<()> {
        duplicate_token(self.create_invocation_once(None, inv, instances, audit).await, inv)
    }

    async fn run_command(&self, cmd: &CommandRow, inv: &InvocationRow, instances: &[String], audit: Option<&AuditEvent>) -> Result<()> {
        duplicate_token(self.create_invocation_once(Some(cmd), inv, instances, audit).await, inv)
    }

    async fn find_by_client_token(&self, token: &str) -> Result<Option<String>> {
        Ok(self
            .qs("SELECT invoke_id FROM invocations WHERE client_token = ? LIMIT 1")
            .bind(token)
            .fetch_optional(&mut *self.reads.get().await?)
            .await?)
    }

    async fn state_counts(&self) -> Result<StateCounts> {
        let rows = self
            .q("SELECT invocation_status, COUNT(*) AS n FROM invocations GROUP BY invocation_status")
            .fetch_all(&mut *self.reads.get().await?)
            .await?;
        let mut invocations = Vec::with_capacity(rows.len());
        for r in &rows {
            let s: String = col(r, "invocations", "invocation_status", "(all)")?;
            let status = InvocationOverall::parse(&s).map_err(|e| StoreError::Decode {
                table: "invocations",
                column: "invocation_status",
                id: "(all)".into(),
                detail: e.to_string(),
            })?;
            invocations.push((status, col(r, "invocations", "n", "(all)")?));
        }
        // CAST: PostgreSQL's SUM of a BIGINT is a NUMERIC.
        let sums: Vec<String> = InvocationStatus::ALL
            .iter()
            .map(|s| s.count_column())
            .map(|c| format!("CAST(COALESCE(SUM({c}), 0) AS BIGINT) AS {c}"))
            .collect();
        let row = self.q(&format!("SELECT {} FROM invocations", sums.join(", "))).fetch_one(&mut *self.reads.get().await?).await?;
        Ok(StateCounts { invocations, targets: counts_from(&row, "(all)")? })
    }

    async fn get_invocation(&self, id: &str) -> Result<Option<InvocationRow>> {
        let r = self.q("SELECT * FROM invocations WHERE invoke_id = ?").bind(id).fetch_optional(&mut *self.reads.get().await?).await?;
        r.as_ref().map(invocation_from).transpose()
    }

    async fn list_invocations(&self, f: &InvocationFilter, page: Page) -> Result<(Vec<InvocationRow>, i64)> {
        let (w, binds) = invocation_where(f, "invocations.");
        let (rows, total) = self.page_of("*", &format!("FROM invocations {w}"), "created_at DESC, invoke_id DESC", &binds, page).await?;
        Ok((rows.iter().map(invocation_from).collect::<Result<_>>()?, total))
    }

    async fn targets(&self, invoke_id: &str) -> Result<Vec<TargetRow>> {
        let rows = self
            .q("SELECT * FROM targets WHERE invoke_id = ? ORDER BY instance_id")
            .bind(invoke_id)
            .fetch_all(&mut *self.reads.get().await?)
            .await?;
        rows.iter().map(|r| target_from(r, true)).collect()
    }

    async fn some_targets(&self, invoke_id: &str, limit: i64, with_output: bool) -> Result<Vec<TargetRow>> {
        let cols = if with_output { format!("{TARGET_COLS}, t.output") } else { TARGET_COLS.to_string() };
        let rows = self
            .q(&format!(concat!("SELECT {} FROM targets t WHERE t.invoke_id = ? ORDER BY t.instance_id LIMIT ", bound_count!()), cols))
            .bind(invoke_id)
            .bind(limit)
            .fetch_all(&mut *self.reads.get().await?)
            .await?;
        rows.iter().map(|r| target_from(r, with_output)).collect()
    }

    async fn list_targets(&self, f: &InvocationFilter, statuses: &[InvocationStatus], page: Page) -> Result<(Vec<TargetRow>, i64)> {
        let (w, binds) = target_where(f, statuses, "t.status");
        // The invocation row is joined only to filter by its command: the
        // poll path (by InvokeId) reads the targets alone (issue #21).
        let from = if f.command_id.is_some() { "FROM targets t JOIN invocations i ON i.invoke_id = t.invoke_id" } else { "FROM targets t" };
        let (rows, total) = self
            .page_of(
                &format!("{TARGET_COLS}, t.output"),
                &format!("{from} {w}"),
                "t.created_at DESC, t.invoke_id, t.instance_id",
                &binds,
                page,
            )
            .await?;
        let rows: Result<Vec<_>> = rows.iter().map(|r| target_from(r, true)).collect();
        Ok((rows?, total))
    }

    async fn list_history(&self, f: &InvocationFilter, statuses: &[InvocationStatus], page: Page) -> Result<(Vec<ResultRow>, i64)> {
        // One row per record, and one per target that has no record yet
        // (the LEFT JOIN's NULL side): the whole history pages in SQL.
        let pick = |c: &str| format!("CASE WHEN r.record_seq IS NULL THEN t.{c} ELSE r.{c} END AS {c}");
        let select = format!(
            "t.invoke_id AS invoke_id, t.instance_id AS instance_id, r.record_seq AS record_seq, t.repeats AS repeats, {}",
            ["status", "exit_code", "output", "dropped", "error_code", "error_info", "start_time", "finish_time"].map(pick).join(", ")
        );
        let (w, binds) = target_where(f, statuses, "CASE WHEN r.record_seq IS NULL THEN t.status ELSE r.status END");
        let from = "FROM targets t JOIN invocations i ON i.invoke_id = t.invoke_id                     LEFT JOIN records r ON r.invoke_id = t.invoke_id AND r.instance_id = t.instance_id";
        let (rows, total) = self
            .page_of(&select, &format!("{from} {w}"), "t.created_at DESC, t.invoke_id, t.instance_id, r.record_seq", &binds, page)
            .await?;
        let rows: Result<Vec<_>> = rows.iter().map(result_from).collect();
        Ok((rows?, total))
    }

    async fn records(&self, invoke_id: &str, instance_id: &str) -> Result<Vec<RecordRow>> {
        let rows = self
            .q("SELECT * FROM records WHERE invoke_id = ? AND instance_id = ? ORDER BY record_seq")
            .bind(invoke_id)
            .bind(instance_id)
            .fetch_all(&mut *self.reads.get().await?)
            .await?;
        rows.iter().map(record_from).collect()
    }

    async fn undelivered_for(&self, instance_id: &str) -> Result<Vec<Owed>> {
        let open = unsettled();
        let sql = format!(
            "SELECT i.*, t.status AS status, inst.instance_name AS inst_name FROM targets t \
             JOIN invocations i ON i.invoke_id = t.invoke_id \
             LEFT JOIN instances inst ON inst.instance_id = t.instance_id \
             WHERE t.instance_id = ? AND t.released = 1 AND t.status IN ({}) \
             ORDER BY i.created_at, i.invoke_id",
            placeholders(open.len())
        );
        let mut q = self.q(&sql).bind(instance_id);
        for s in &open {
            q = q.bind(s.as_str());
        }
        let rows = q.fetch_all(&mut *self.reads.get().await?).await?;
        rows.iter()
            .map(|r| {
                let inv = invocation_from(r)?;
                let name: Option<String> = col(r, "instances", "inst_name", instance_id)?;
                let status = status_col(r, "targets", &inv.invoke_id)?;
                Ok(Owed { invocation: to_wire(&inv, name.unwrap_or_default()), stop: status == InvocationStatus::Stopping })
            })
            .collect()
    }

    async fn apply_batch(&self, ops: &[WriteOp]) -> Result<Vec<ReportEffect>> {
        retrying(|| self.apply_batch_once(ops)).await
    }

    async fn request_stop(&self, invoke_id: &str, instances: &[String]) -> Result<Vec<String>> {
        retrying(|| self.request_stop_once(invoke_id, instances)).await
    }

    async fn modify_invocation(&self, m: &Modification) -> Result<Vec<String>> {
        retrying(|| self.modify_invocation_once(m)).await
    }

    async fn advance_windows(&self) -> Result<Vec<Released>> {
        retrying(|| self.advance_windows_impl()).await
    }

    fn released(&self) -> tokio::sync::broadcast::Receiver<Released> {
        self.released.subscribe()
    }

    async fn fire_request(&self, invoke_id: &str, instance_id: &str, record_seq: u32, scheduled: &str) -> Result<FireOutcome> {
        retrying(|| self.fire_request_once(invoke_id, instance_id, record_seq, scheduled)).await
    }

    async fn advance_fires(&self) -> Result<Vec<FireAnswer>> {
        retrying(|| self.advance_fires_impl()).await
    }

    fn fire_answers(&self) -> tokio::sync::broadcast::Receiver<Vec<FireAnswer>> {
        self.fires.subscribe()
    }

    async fn recent_fire_answers(&self, invoke_id: &str, since: &str) -> Result<Vec<FireAnswer>> {
        self.recent_fire_answers_impl(invoke_id, since).await
    }

    async fn expire_undelivered(&self, cutoff: &str) -> Result<u64> {
        retrying(|| self.expire_undelivered_once(cutoff)).await
    }

    async fn put_file_chunk(&self, sha256: &str, size: i64, seq: i64, data: &[u8]) -> Result<()> {
        let mut tx = self.begin().await?;
        // An upload in progress keeps its content alive (`used_at`).
        let now = now_str();
        self.q("INSERT INTO file_contents (sha256, size, created_at, used_at) VALUES (?,?,?,?) \
             ON CONFLICT (sha256) DO UPDATE SET used_at = excluded.used_at")
            .bind(sha256)
            .bind(size)
            .bind(&now)
            .bind(&now)
            .execute(&mut *tx)
            .await?;
        self.q("INSERT INTO file_chunks (sha256, seq, data) VALUES (?,?,?) ON CONFLICT (sha256, seq) DO NOTHING")
            .bind(sha256)
            .bind(seq)
            .bind(data)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    async fn file_content(&self, sha256: &str) -> Result<Option<FileContent>> {
        let Some(r) = self
            .q("SELECT size, verified FROM file_contents WHERE sha256 = ?")
            .bind(sha256)
            .fetch_optional(&mut *self.reads.get().await?)
            .await?
        else {
            return Ok(None);
        };
        let size: i64 = col(&r, "file_contents", "size", sha256)?;
        let verified: i64 = col(&r, "file_contents", "verified", sha256)?;
        let chunks_present: i64 =
            self.qs("SELECT COUNT(*) FROM file_chunks WHERE sha256 = ?").bind(sha256).fetch_one(&mut *self.reads.get().await?).await?;
        Ok(Some(FileContent { size, chunks_present, verified: verified != 0 }))
    }

    async fn touch_file_content(&self, sha256: &str, verified: bool) -> Result<bool> {
        let sql = if verified {
            "UPDATE file_contents SET used_at = ?, verified = 1 WHERE sha256 = ?"
        } else {
            "UPDATE file_contents SET used_at = ? WHERE sha256 = ?"
        };
        let done = self.q(sql).bind(now_str()).bind(sha256).execute(&mut *self.writes.get().await?).await?;
        Ok(done.rows_affected() > 0)
    }

    async fn file_store_bytes(&self) -> Result<i64> {
        Ok(self.qs("SELECT CAST(COALESCE(SUM(size), 0) AS BIGINT) FROM file_contents").fetch_one(&mut *self.reads.get().await?).await?)
    }

    async fn prune_file_contents(&self, cutoff: &str) -> Result<u64> {
        // Kept whatever its age: a content a delivery not yet settled may
        // still pull, and a small one (≤ `Content`'s 32 KiB) any delivery
        // still names, because DescribeSendFileResults shows it.
        let unsettled = unsettled().iter().map(|s| format!("i.{}", s.count_column())).collect::<Vec<_>>().join(" + ");
        let gone = format!(
            "used_at < ? AND NOT EXISTS (SELECT 1 FROM invocations i WHERE i.file_sha256 = file_contents.sha256 \
             AND (({unsettled}) > 0 OR file_contents.size <= {}))",
            crate::protocol::MAX_FILE_CONTENT_BYTES
        );
        let mut tx = self.begin().await?;
        self.q(&format!("DELETE FROM file_chunks WHERE sha256 IN (SELECT sha256 FROM file_contents WHERE {gone})"))
            .bind(cutoff)
            .execute(&mut *tx)
            .await?;
        let n = self.q(&format!("DELETE FROM file_contents WHERE {gone}")).bind(cutoff).execute(&mut *tx).await?.rows_affected();
        tx.commit().await?;
        Ok(n)
    }

    async fn claim_update(&self, instance_id: &str, version: &str, slots: i64, stale_before: &str) -> Result<Option<i64>> {
        self.claim_update_impl(instance_id, version, slots, stale_before).await
    }

    async fn settle_update(&self, instance_id: &str, version: &str, failure: Option<&str>) -> Result<bool> {
        self.settle_update_impl(instance_id, version, failure).await
    }

    async fn update_progress(&self) -> Result<(i64, i64)> {
        self.update_progress_impl().await
    }

    async fn update_states(&self, instance_ids: &[String]) -> Result<Vec<(String, AgentUpdateState)>> {
        self.update_states_impl(instance_ids).await
    }

    async fn delete_file_content(&self, sha256: &str) -> Result<()> {
        let mut tx = self.begin().await?;
        self.q("DELETE FROM file_chunks WHERE sha256 = ?").bind(sha256).execute(&mut *tx).await?;
        self.q("DELETE FROM file_contents WHERE sha256 = ?").bind(sha256).execute(&mut *tx).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn file_chunk(&self, sha256: &str, seq: i64) -> Result<Option<Vec<u8>>> {
        Ok(self
            .qs("SELECT data FROM file_chunks WHERE sha256 = ? AND seq = ?")
            .bind(sha256)
            .bind(seq)
            .fetch_optional(&mut *self.reads.get().await?)
            .await?)
    }

    async fn file_chunk_for(&self, invoke_id: &str, instance_id: &str, seq: i64) -> Result<Option<Vec<u8>>> {
        let sql = "SELECT c.data FROM invocations i \
                   JOIN targets t ON t.invoke_id = i.invoke_id AND t.instance_id = ? \
                   JOIN file_chunks c ON c.sha256 = i.file_sha256 AND c.seq = ? \
                   WHERE i.invoke_id = ? AND i.file_sha256 <> ''";
        Ok(self.qs(sql).bind(instance_id).bind(seq).bind(invoke_id).fetch_optional(&mut *self.reads.get().await?).await?)
    }

    async fn create_access_key(&self, k: &AccessKeyRow) -> Result<()> {
        self.create_access_key_impl(k).await
    }

    async fn get_access_key(&self, id: &str) -> Result<Option<AccessKeyRow>> {
        self.get_access_key_impl(id).await
    }

    async fn list_access_keys(&self, page: Page) -> Result<(Vec<AccessKeyRow>, i64)> {
        self.list_access_keys_impl(page).await
    }

    async fn set_access_key_enabled(&self, id: &str, enabled: bool) -> Result<bool> {
        self.set_access_key_enabled_impl(id, enabled).await
    }

    async fn set_access_key_policy(&self, id: &str, policy: &str) -> Result<bool> {
        self.set_access_key_policy_impl(id, policy).await
    }

    async fn delete_access_key(&self, id: &str) -> Result<bool> {
        self.delete_access_key_impl(id).await
    }

    async fn reseal_access_key(&self, id: &str, old: &str, new: &str) -> Result<bool> {
        self.reseal_access_key_impl(id, old, new).await
    }

    async fn record_audit(&self, e: &AuditEvent) -> Result<()> {
        self.record_audit_impl(e).await
    }

    async fn list_audit(&self, f: &AuditFilter, page: Page) -> Result<(Vec<AuditEvent>, i64)> {
        self.list_audit_impl(f, page).await
    }

    async fn prune_audit(&self, cutoff: &str, keep: u64) -> Result<u64> {
        self.prune_audit_impl(cutoff, keep).await
    }

    async fn overview(&self, since: &str) -> Result<Overview> {
        let mut out = Overview::default();
        let rows = self.q("SELECT online, COUNT(*) AS n FROM instances GROUP BY online").fetch_all(&mut *self.reads.get().await?).await?;
        for r in &rows {
            let n: i64 = col(r, "instances", "n", "overview")?;
            if col::<i64>(r, "instances", "online", "overview")? != 0 {
                out.online += n;
            } else {
                out.offline += n;
            }
        }
        let rows = self
            .q("SELECT SUBSTR(created_at, 1, 13) AS hour, invocation_status, COUNT(*) AS n FROM invocations \
                WHERE created_at >= ? GROUP BY SUBSTR(created_at, 1, 13), invocation_status ORDER BY hour")
            .bind(since)
            .fetch_all(&mut *self.reads.get().await?)
            .await?;
        for r in &rows {
            let status: String = col(r, "invocations", "invocation_status", "overview")?;
            // Rows written before the aggregate column existed have none:
            // they are older than any 24 h window, so skipping is exact.
            let Ok(status) = InvocationOverall::parse(&status) else { continue };
            out.invocations.push((col(r, "invocations", "hour", "overview")?, status, col(r, "invocations", "n", "overview")?));
        }
        Ok(out)
    }

    fn shared(&self) -> bool {
        self.d == Dialect::Postgres
    }

    async fn hub_alive(&self, hub_id: &str) -> Result<()> {
        self.hub_alive_impl(hub_id).await
    }

    async fn release_dead_hubs(&self, cutoff: &str) -> Result<u64> {
        self.release_dead_hubs_impl(cutoff).await
    }

    async fn deliveries(&self, invoke_id: &str) -> Result<Vec<Delivery>> {
        self.deliveries_impl(invoke_id).await
    }

    async fn stalled(&self, hub_id: &str, cutoff: &str, limit: i64) -> Result<Vec<(String, String, InvocationStatus)>> {
        self.stalled_impl(hub_id, cutoff, limit).await
    }

    async fn publish(&self, payload: &str) -> Result<()> {
        self.publish_impl(payload).await
    }

    fn subscribe(&self) -> Option<tokio::sync::mpsc::Receiver<Notice>> {
        self.subscribe_impl()
    }
}
