//! The hub's durable state behind one trait, so handlers never see SQL.
//!
//! Owns: the `Store` trait, its row types, and the SQL implementation
//! over SQLite (default, one hub) or PostgreSQL (several hub replicas).
//! Every write that the hub acknowledges to an agent or API caller is
//! committed before it returns.

mod schema;
mod sql;

pub use sql::{SqlStore, to_wire};

use async_trait::async_trait;
use tokio::sync::mpsc;

use crate::lifecycle::{CommandType, Counts, ErrorCode, InvocationOverall, InvocationStatus, InvokeStatus, RepeatMode};
use crate::protocol::{FileSpec, HostFacts, Invocation, RecordReport};

/// What went wrong in the store, with the cause kept: a busy database is
/// not a corrupt one, and a full disk is neither.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database error: {0}")]
    Db(sqlx::Error),
    /// The database stayed locked (SQLite) or kept failing serialisation
    /// (PostgreSQL) past the busy timeout and the retries.
    #[error("database busy: {0}")]
    Busy(sqlx::Error),
    /// The database's disk (or quota) is full: nothing can be written until
    /// an operator frees space. The API answers 503.
    #[error("the hub's database disk is full: {0}")]
    DiskFull(sqlx::Error),
    #[error("schema version {found} is newer than this hub understands ({known})")]
    SchemaTooNew { found: i64, known: i64 },
    /// Replicas of an older release are alive on the shared database;
    /// migrating under them would let them write rows this release reads
    /// differently.
    #[error(
        "{replicas} replica(s) of an older release (schema version {version}) are running on this database; stop them before starting this release, which migrates the schema"
    )]
    OlderReplicasRunning { replicas: i64, version: i64 },
    /// A stored value this hub cannot read, named by table, column and row.
    #[error("stored value {table}.{column} of {id:?} cannot be read: {detail}")]
    Decode { table: &'static str, column: &'static str, id: String, detail: String },
    #[error("an invocation with client token {0:?} already exists")]
    DuplicateClientToken(String),
    /// The group-commit writer task is gone (the hub is shutting down).
    #[error("the store writer has stopped")]
    WriterStopped,
    /// The group-commit batch this write was part of failed.
    #[error("batched write failed: {0}")]
    Batch(std::sync::Arc<StoreError>),
}

impl StoreError {
    /// Full disk, here or as the cause of a failed batch.
    pub fn is_disk_full(&self) -> bool {
        match self {
            StoreError::DiskFull(_) => true,
            StoreError::Batch(inner) => inner.is_disk_full(),
            _ => false,
        }
    }

    /// Busy past the timeout and the retries, here or in a failed batch:
    /// transient, worth a retry by the caller.
    pub fn is_busy(&self) -> bool {
        match self {
            StoreError::Busy(_) => true,
            StoreError::Batch(inner) => inner.is_busy(),
            _ => false,
        }
    }

    /// Sorts a driver error by cause (SQLite result codes, PostgreSQL
    /// SQLSTATEs): full disk, busy, or anything else.
    pub fn classify(e: sqlx::Error) -> StoreError {
        let code = match &e {
            sqlx::Error::Database(db) => db.code().map(|c| c.into_owned()),
            sqlx::Error::PoolTimedOut => return StoreError::Busy(e),
            _ => None,
        };
        match code.as_deref() {
            // SQLITE_FULL; PostgreSQL disk_full, out_of_memory.
            Some("13") | Some("53100") => StoreError::DiskFull(e),
            // SQLITE_BUSY, SQLITE_LOCKED (and extended codes).
            Some("5") | Some("6") | Some("517") | Some("261") | Some("262") => StoreError::Busy(e),
            _ => StoreError::Db(e),
        }
    }
}

/// Every driver error is sorted by cause where it enters (a full disk on
/// any write path is `DiskFull`, whichever query met it).
impl From<sqlx::Error> for StoreError {
    fn from(e: sqlx::Error) -> Self {
        StoreError::classify(e)
    }
}

pub type Result<T> = std::result::Result<T, StoreError>;

#[derive(Debug, Clone, Default)]
pub struct InstanceRow {
    pub instance_id: String,
    pub instance_name: String,
    pub token_hash: String,
    /// A rotated credential not yet confirmed by the agent ('' if none).
    pub pending_token_hash: String,
    pub facts: HostFacts,
    pub ip: String,
    pub online: bool,
    pub last_seen: String,
    pub registered_at: String,
    pub activation_id: String,
    pub tags: Vec<(String, String)>,
}

#[derive(Debug, Clone, Default)]
pub struct ActivationRow {
    pub activation_id: String,
    pub code_hash: String,
    pub instance_name: String,
    pub description: String,
    pub instance_count: i64,
    pub registered_count: i64,
    pub deregistered_count: i64,
    pub time_to_live_hours: i64,
    pub ip_address_range: String,
    pub created_at: String,
    pub disabled: bool,
}

#[derive(Debug, Clone)]
pub struct CommandRow {
    pub command_id: String,
    pub name: String,
    pub description: String,
    pub command_type: CommandType,
    /// Plain text.
    pub content: String,
    pub working_dir: String,
    pub timeout_secs: i64,
    pub enable_parameter: bool,
    pub username: String,
    pub created_at: String,
    /// False for the anonymous commands `RunCommand` makes without `KeepCommand`.
    pub visible: bool,
    pub invoke_times: i64,
}

/// What an invocation asks for, and the counts of its targets per state.
#[derive(Debug, Clone)]
pub struct InvocationRow {
    pub invoke_id: String,
    pub command_id: String,
    pub command_name: String,
    pub command_type: CommandType,
    pub content: String,
    pub timeout_secs: i64,
    pub working_dir: String,
    pub username: String,
    pub enable_parameter: bool,
    /// JSON object of custom parameter values.
    pub parameters: String,
    pub repeat_mode: RepeatMode,
    pub frequency: String,
    pub created_at: String,
    pub client_token: String,
    pub stop_requested: bool,
    /// Targets per state, kept by the store with every transition
    /// (ignored on create: all targets start Pending).
    pub counts: Counts,
    /// The rollout window (deckhand extension; default: none).
    pub window: Window,
    /// 0 as created; +1 for each `ModifyInvocationAttribute` that changed
    /// what runs (content, frequency, parameters). Sent to agents.
    pub revision: i64,
    /// On create only: targets matched by tag or facts whose agent was
    /// not connected. They are created settled (`Aborted`,
    /// `ClientNotRunning`) and never sent. Not read back.
    pub unreachable: Vec<String>,
    /// A file delivery (`command_type` `SendFile`); `None` for commands.
    pub file: Option<FileRow>,
}

/// What `SendFile` asked for: the agent's part ([`FileSpec`]) and what
/// only the API shows. Stored as JSON in `invocations.file_spec`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct FileRow {
    pub spec: FileSpec,
    #[serde(default)]
    pub description: String,
    /// `PlainText` or `Base64`, as the caller sent `Content`.
    #[serde(default)]
    pub content_type: String,
}

/// Stored file content: its size and how many of its chunks are present.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileContent {
    pub size: i64,
    pub chunks_present: i64,
    /// Its chunks were hashed to its digest once (`touch_file_content`).
    pub verified: bool,
}

/// Rate control of one invocation (deckhand extension, docs/fleet.md),
/// resolved to counts at creation and kept on the invocation row, so
/// every replica and a restarted hub drive the same window.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Window {
    /// Targets sent and not yet settled at any moment; 0: no window.
    pub max_concurrency: i64,
    /// Settled-in-error targets tolerated; one more stops the rollout
    /// (`None`: no limit).
    pub max_errors: Option<i64>,
    /// Seconds after the latest target settled before the next starts.
    pub batch_wait_secs: i64,
}

/// `ModifyInvocationAttribute`: what to change on a stored invocation
/// (`None`: unchanged) and instances to add as new targets.
#[derive(Debug, Clone, Default)]
pub struct Modification {
    pub invoke_id: String,
    /// Plain text.
    pub content: Option<String>,
    pub frequency: Option<String>,
    /// JSON object of custom parameter values.
    pub parameters: Option<String>,
    pub enable_parameter: Option<bool>,
    pub add: Vec<String>,
}

impl Modification {
    /// Whether what runs changes (agents holding it must be sent the new
    /// revision), as opposed to only adding instances.
    pub fn changes_definition(&self) -> bool {
        self.content.is_some() || self.frequency.is_some() || self.parameters.is_some() || self.enable_parameter.is_some()
    }
}

/// The hub's decision on one fire of a windowed periodic invocation
/// (docs/fleet.md, `store::sql::fires`), for the agent that asked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FireAnswer {
    pub invoke_id: String,
    pub instance_id: String,
    pub record_seq: u32,
    pub decision: FireDecision,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FireDecision {
    /// Run it now.
    Granted,
    /// Do not run it: the agent records the fire `Cancelled` with this
    /// code (`MaxErrorsExceeded`, `FireNotGranted`) and text.
    Denied { code: crate::lifecycle::ErrorCode, info: String },
}

/// What a fire request came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FireOutcome {
    /// The asking instance is not a target of that invocation.
    NotATarget,
    /// Held: the fire's window has no free slot yet.
    Waiting,
    Decided(FireDecision),
}

/// Targets a rollout window let go (they are to be sent now).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Released {
    pub invoke_id: String,
    pub instances: Vec<String>,
}

impl InvocationRow {
    pub fn invoke_status(&self) -> InvokeStatus {
        self.counts.legacy()
    }

    pub fn invocation_status(&self) -> InvocationOverall {
        self.counts.overall()
    }
}

/// One instance's slice of an invocation.
#[derive(Debug, Clone)]
pub struct TargetRow {
    pub invoke_id: String,
    pub instance_id: String,
    pub status: InvocationStatus,
    pub delivered: bool,
    pub repeats: i64,
    pub exit_code: Option<i64>,
    /// Empty unless the read asked for output.
    pub output: Vec<u8>,
    pub dropped: i64,
    pub error_code: Option<ErrorCode>,
    pub error_info: String,
    pub start_time: String,
    pub finish_time: String,
    pub updated_at: String,
    pub created_at: String,
}

/// One run (record) on one instance.
#[derive(Debug, Clone)]
pub struct RecordRow {
    pub invoke_id: String,
    pub instance_id: String,
    pub record_seq: i64,
    pub status: InvocationStatus,
    pub exit_code: Option<i64>,
    pub output: Vec<u8>,
    pub dropped: i64,
    pub error_code: Option<ErrorCode>,
    pub error_info: String,
    pub start_time: String,
    pub finish_time: String,
}

/// Filters shared by the list calls; `None` means "any".
#[derive(Debug, Clone, Default)]
pub struct InvocationFilter {
    pub invoke_id: Option<String>,
    pub command_id: Option<String>,
    pub instance_id: Option<String>,
    pub command_type: Option<CommandType>,
    pub command_name: Option<String>,
    pub repeat_mode: Option<RepeatMode>,
    /// DescribeInvocations' `InvokeStatus`/`InvocationStatus`: an
    /// invocation matches when its legacy or its current aggregate status
    /// is one of these (filtered in SQL on the kept aggregates).
    pub status: Option<StatusFilter>,
    /// deckhand: a file delivery's `Name` (DescribeSendFileResults).
    pub file_name: Option<String>,
}

/// An invocation-level status filter: the legacy and/or the current name
/// (a value may be valid in one vocabulary or both).
pub type StatusFilter = (Option<InvokeStatus>, Option<InvocationOverall>);

/// One row of DescribeInvocationResults: a record, or a target that has
/// none yet (with `IncludeHistory`).
#[derive(Debug, Clone)]
pub struct ResultRow {
    pub invoke_id: String,
    pub instance_id: String,
    /// `None` for a target without records.
    pub record_seq: Option<i64>,
    pub status: InvocationStatus,
    pub repeats: i64,
    pub exit_code: Option<i64>,
    pub output: Vec<u8>,
    pub dropped: i64,
    pub error_code: Option<ErrorCode>,
    pub error_info: String,
    pub start_time: String,
    pub finish_time: String,
}

/// One agent's self-update as the store keeps it (see
/// [`Store::claim_update`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AgentUpdateState {
    /// Offered this version; not settled yet.
    InProgress { version: String },
    /// Its last update, to this version, failed (the agent's bounded text).
    Failed { version: String, error: String },
}

/// What the console's Overview shows (see [`Store::overview`]).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Overview {
    pub online: i64,
    pub offline: i64,
    /// (hour `YYYY-MM-DDTHH`, status, invocations), oldest hour first.
    pub invocations: Vec<(String, InvocationOverall, i64)>,
}

/// Offset pagination; `NextToken` is the offset encoded by the API layer.
#[derive(Debug, Clone, Copy)]
pub struct Page {
    pub offset: i64,
    pub limit: i64,
}

/// A stored AccessKey (issue #18). `secret` is the signing secret
/// itself (HMAC verification needs it; docs/permissions.md).
#[derive(Debug, Clone)]
pub struct AccessKeyRow {
    pub key_id: String,
    pub secret: String,
    pub description: String,
    pub enabled: bool,
    /// The policy document as set ('' = none: no access).
    pub policy: String,
    pub created_at: String,
    pub updated_at: String,
}

/// One audit trail entry: a call that changed something, or any refused
/// call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditEvent {
    pub event_id: String,
    pub at: String,
    pub key_id: String,
    /// The caller's address.
    pub source: String,
    pub action: String,
    /// Instance ids (or the key/command the call named), comma-separated.
    pub targets: String,
    /// `Success` or the error code answered.
    pub outcome: String,
    pub request_id: String,
    /// The invocation a RunCommand/InvokeCommand created.
    pub invoke_id: String,
    /// The refusal message, bounded; '' on success.
    pub detail: String,
}

/// DescribeAuditEvents' filters; `None` means "any".
#[derive(Debug, Clone, Default)]
pub struct AuditFilter {
    /// Inclusive bounds, in the stored time form.
    pub since: Option<String>,
    pub until: Option<String>,
    pub key_id: Option<String>,
    pub action: Option<String>,
}

/// What applying an agent report did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReportEffect {
    Applied,
    /// Same record, same or older state: ignored (at-least-once delivery).
    Duplicate,
    /// The instance is not a target of that invocation: refused.
    NotATarget,
    /// The report itself is unusable (its output is not valid base64):
    /// refused, nothing stored; the reason names the field.
    Refused(String),
}

/// A small write the hub batches (see `hub::writer`).
#[derive(Debug, Clone)]
pub enum WriteOp {
    Report {
        instance_id: String,
        report: RecordReport,
    },
    Delivered {
        invoke_id: String,
        instance_id: String,
    },
    Touch {
        instance_id: String,
    },
    /// The agent now holds session `session` on replica `hub_id`, with
    /// these facts and address (what [`Store::instance_connected`] records).
    Connected {
        instance_id: String,
        hub_id: String,
        session: u64,
        facts: HostFacts,
        ip: String,
    },
    /// Session `session` on `hub_id` ended (what
    /// [`Store::instance_disconnected`] records: no effect once the agent
    /// holds a newer session).
    Disconnected {
        instance_id: String,
        hub_id: String,
        session: u64,
    },
}

#[async_trait]
pub trait Store: Send + Sync + 'static {
    // Instances and activations.
    async fn create_activation(&self, a: &ActivationRow) -> Result<()>;
    async fn get_activation(&self, id: &str) -> Result<Option<ActivationRow>>;
    async fn list_activations(&self, id: Option<&str>, page: Page) -> Result<(Vec<ActivationRow>, i64)>;
    async fn set_activation_disabled(&self, id: &str) -> Result<bool>;
    /// Deletes only an activation with no registered instances left.
    async fn delete_activation(&self, id: &str) -> Result<bool>;
    /// Atomically checks the activation's remaining count and registers.
    async fn register_instance(&self, activation_id: &str, inst: &InstanceRow) -> Result<bool>;
    async fn get_instance(&self, id: &str) -> Result<Option<InstanceRow>>;
    /// `online`: only connected (`Some(true)`) or disconnected instances.
    async fn list_instances(&self, ids: &[String], name: Option<&str>, online: Option<bool>, page: Page)
    -> Result<(Vec<InstanceRow>, i64)>;
    /// At most `limit` instances whose id sorts after `after` ('' for the
    /// first page), by id: the keyset pages a fleet selector streams
    /// through, so resolving one never holds the whole fleet in memory.
    async fn instances_after(&self, after: &str, limit: i64) -> Result<Vec<InstanceRow>>;
    async fn deregister_instance(&self, id: &str) -> Result<bool>;
    /// The agent now holds session `session` (unique within the replica's
    /// process) on replica `hub_id`.
    async fn instance_connected(&self, id: &str, hub_id: &str, session: u64, facts: &HostFacts, ip: &str) -> Result<()>;
    /// Session `session` on `hub_id` ended. No effect when the agent has
    /// already connected again, to this replica or another, whatever order
    /// the two writes land in.
    async fn instance_disconnected(&self, id: &str, hub_id: &str, session: u64) -> Result<()>;
    /// Stores the next credential hash beside the current one.
    async fn set_pending_token(&self, id: &str, hash: &str) -> Result<()>;
    /// The agent holds the pending credential: it becomes the only one.
    async fn promote_pending_token(&self, id: &str) -> Result<()>;
    async fn set_tags(&self, id: &str, tags: &[(String, String)]) -> Result<()>;
    async fn remove_tags(&self, id: &str, keys: &[String]) -> Result<()>;

    // Commands.
    async fn create_command(&self, c: &CommandRow) -> Result<()>;
    async fn get_command(&self, id: &str) -> Result<Option<CommandRow>>;
    async fn list_commands(
        &self,
        id: Option<&str>,
        name: Option<&str>,
        ctype: Option<CommandType>,
        page: Page,
    ) -> Result<(Vec<CommandRow>, i64)>;
    async fn update_command(&self, c: &CommandRow) -> Result<()>;
    async fn delete_command(&self, id: &str) -> Result<bool>;

    // Invocations.
    /// Inserts the invocation and a Pending target per instance in one
    /// transaction, with the call's audit event when given. A non-empty
    /// client token already used: `DuplicateClientToken`, nothing written.
    async fn create_invocation(&self, inv: &InvocationRow, instances: &[String], audit: Option<&AuditEvent>) -> Result<()>;
    /// `RunCommand`: the command and the invocation (as
    /// `create_invocation`) in one transaction; nothing is written on a
    /// duplicate client token.
    async fn run_command(&self, cmd: &CommandRow, inv: &InvocationRow, instances: &[String], audit: Option<&AuditEvent>) -> Result<()>;
    async fn find_by_client_token(&self, token: &str) -> Result<Option<String>>;
    async fn get_invocation(&self, id: &str) -> Result<Option<InvocationRow>>;
    /// One page of invocations, filtered (status included) in SQL; reads
    /// no targets.
    async fn list_invocations(&self, f: &InvocationFilter, page: Page) -> Result<(Vec<InvocationRow>, i64)>;
    /// Every target of one invocation, with output.
    async fn targets(&self, invoke_id: &str) -> Result<Vec<TargetRow>>;
    /// At most `limit` targets of one invocation, by instance id; output
    /// only when asked (DescribeInvocations' `InvokeInstances`).
    async fn some_targets(&self, invoke_id: &str, limit: i64, with_output: bool) -> Result<Vec<TargetRow>>;
    /// One page of targets whose status is one of `statuses` (any if empty).
    async fn list_targets(&self, f: &InvocationFilter, statuses: &[InvocationStatus], page: Page) -> Result<(Vec<TargetRow>, i64)>;
    /// One page of every record of matching targets (a target with no
    /// record yet counts as one row), newest targets first: paged in SQL.
    async fn list_history(&self, f: &InvocationFilter, statuses: &[InvocationStatus], page: Page) -> Result<(Vec<ResultRow>, i64)>;
    async fn records(&self, invoke_id: &str, instance_id: &str) -> Result<Vec<RecordRow>>;
    /// Unsettled invocations an instance should have, for (re)delivery,
    /// each with whether a stop is owed too (see `hub::delivery`).
    async fn undelivered_for(&self, instance_id: &str) -> Result<Vec<Owed>>;
    /// Applies many small writes in one transaction (one fsync); effects
    /// are returned in order (`Applied` for non-report operations).
    async fn apply_batch(&self, ops: &[WriteOp]) -> Result<Vec<ReportEffect>>;
    /// Marks stop requested; returns targets that are not yet final.
    async fn request_stop(&self, invoke_id: &str, instances: &[String]) -> Result<Vec<String>>;
    /// Applies `m` in one transaction (the revision goes up by one when
    /// `m.changes_definition()`); returns the instances it added as targets
    /// (those already targets are skipped).
    async fn modify_invocation(&self, m: &Modification) -> Result<Vec<String>>;
    /// Moves every rollout window that can move (a slot free, `BatchWait`
    /// passed, errors beyond `MaxErrors`); the backstop of the advance
    /// made with each target transition, and what resumes windows after
    /// a restart. Returns the targets released.
    async fn advance_windows(&self) -> Result<Vec<Released>>;
    /// Targets released by transactions of this store handle, after they
    /// committed (the hub sends them through `hub::delivery`).
    fn released(&self) -> tokio::sync::broadcast::Receiver<Released>;
    /// Fire `record_seq` (nominal instant `scheduled`) of periodic
    /// invocation `invoke_id` on `instance_id` asks to run: recorded and
    /// decided in one transaction with the invocation row locked
    /// (docs/fleet.md "Periodic invocations").
    async fn fire_request(&self, invoke_id: &str, instance_id: &str, record_seq: u32, scheduled: &str) -> Result<FireOutcome>;
    /// Moves every per-fire window with a waiting fire (the backstop:
    /// after a restart, a missed announcement); returns the decisions.
    async fn advance_fires(&self) -> Result<Vec<FireAnswer>>;
    /// Fire decisions made by transactions of this store handle, after
    /// they committed (the hub sends them through `hub::delivery`).
    fn fire_answers(&self) -> tokio::sync::broadcast::Receiver<Vec<FireAnswer>>;
    /// Decisions made since `since` (RFC 3339) on fires of `invoke_id`:
    /// what a replica relays to the agents it holds.
    async fn recent_fire_answers(&self, invoke_id: &str, since: &str) -> Result<Vec<FireAnswer>>;
    /// Aborts targets never delivered since before `cutoff` (RFC 3339):
    /// `DeliveryTimeout` when the agent is online, `ClientNotResponse`
    /// when it is not.
    async fn expire_undelivered(&self, cutoff: &str) -> Result<u64>;

    // File content (SendFile, docs/files.md), stored once per digest.
    /// Stores chunk `seq` of the content with digest `sha256` and total
    /// `size`; a chunk already present is kept (same digest, same bytes
    /// once verified). A digest already stored with another size: refused
    /// by the caller before this is reached.
    async fn put_file_chunk(&self, sha256: &str, size: i64, seq: i64, data: &[u8]) -> Result<()>;
    async fn file_content(&self, sha256: &str) -> Result<Option<FileContent>>;
    /// Marks a content used now, and verified (its chunks hash to its
    /// digest) when `verified`; false when no such content is stored.
    async fn touch_file_content(&self, sha256: &str, verified: bool) -> Result<bool>;
    /// Bytes of all stored contents (what `file_store_max_mib` bounds).
    async fn file_store_bytes(&self) -> Result<i64>;
    // Agent self-update progress (`hub::updates`), shared by replicas.
    /// In one serialized transaction: marks offers older than
    /// `stale_before` failed ("no result within …"), then records
    /// `instance_id` as updating to `version` unless it already is, its
    /// last attempt at `version` failed, or `slots` updates are in
    /// progress. When recorded (the caller offers the build): the updates
    /// now in progress, this one included.
    async fn claim_update(&self, instance_id: &str, version: &str, slots: i64, stale_before: &str) -> Result<Option<i64>>;
    /// The agent's result: success forgets its row for `version`, failure
    /// keeps it. True when a row changed.
    async fn settle_update(&self, instance_id: &str, version: &str, failure: Option<&str>) -> Result<bool>;
    /// Updates in progress, and instances online (the slots' base).
    async fn update_progress(&self) -> Result<(i64, i64)>;
    /// The update state of each of `instance_ids` that has one.
    async fn update_states(&self, instance_ids: &[String]) -> Result<Vec<(String, AgentUpdateState)>>;

    /// Forgets a content and its chunks (an upload that did not verify).
    async fn delete_file_content(&self, sha256: &str) -> Result<()>;
    /// Deletes contents not used since `cutoff` that no delivery still
    /// needs (docs/files.md, "How long contents are kept"); returns how
    /// many.
    async fn prune_file_contents(&self, cutoff: &str) -> Result<u64>;
    /// Chunk `seq` of a stored content.
    async fn file_chunk(&self, sha256: &str, seq: i64) -> Result<Option<Vec<u8>>>;
    /// Chunk `seq` of the content of file delivery `invoke_id`, only when
    /// `instance_id` is one of its targets (what an agent may pull).
    async fn file_chunk_for(&self, invoke_id: &str, instance_id: &str, seq: i64) -> Result<Option<Vec<u8>>>;

    // Access keys and the audit trail (see `hub::authz`).
    async fn create_access_key(&self, k: &AccessKeyRow) -> Result<()>;
    async fn get_access_key(&self, id: &str) -> Result<Option<AccessKeyRow>>;
    async fn list_access_keys(&self, page: Page) -> Result<(Vec<AccessKeyRow>, i64)>;
    async fn set_access_key_enabled(&self, id: &str, enabled: bool) -> Result<bool>;
    /// Replaces the policy document (already validated by the caller).
    async fn set_access_key_policy(&self, id: &str, policy: &str) -> Result<bool>;
    async fn delete_access_key(&self, id: &str) -> Result<bool>;
    /// Replaces a key's stored secret if it still is `old` (sealing at start).
    async fn reseal_access_key(&self, id: &str, old: &str, new: &str) -> Result<bool>;
    async fn record_audit(&self, e: &AuditEvent) -> Result<()>;
    /// One page of events, newest first.
    async fn list_audit(&self, f: &AuditFilter, page: Page) -> Result<(Vec<AuditEvent>, i64)>;
    /// Deletes events older than `cutoff`, then all but the newest `keep`;
    /// returns how many.
    async fn prune_audit(&self, cutoff: &str, keep: u64) -> Result<u64>;

    /// The console's Overview (`hub::console`): instances online and
    /// offline, and invocations created since `since` counted by hour
    /// (`2026-11-24T10`) and aggregate status. Two grouped queries, so its
    /// cost does not grow with what is sent to the browser.
    async fn overview(&self, since: &str) -> Result<Overview>;

    // Replicas (see `hub::cluster`).
    /// True when several hubs may share this store (PostgreSQL).
    fn shared(&self) -> bool;
    /// Records that replica `hub_id` is alive now, and marks online again
    /// the agents whose sessions it still holds.
    async fn hub_alive(&self, hub_id: &str) -> Result<()>;
    /// Agents held by replicas not seen since `cutoff` go offline; returns
    /// how many.
    async fn release_dead_hubs(&self, cutoff: &str) -> Result<u64>;
    /// Non-final targets of one invocation (no outputs: cheap to read for
    /// every push and stop a replica relays).
    async fn deliveries(&self, invoke_id: &str) -> Result<Vec<Delivery>>;
    /// Targets whose agent replica `hub_id` holds and that have waited on
    /// it since before `cutoff`: never delivered, or Stopping.
    /// (instance id, invoke id, status), oldest first.
    async fn stalled(&self, hub_id: &str, cutoff: &str, limit: i64) -> Result<Vec<(String, String, InvocationStatus)>>;
    /// Announces `payload` to every replica (no-op when not shared).
    async fn publish(&self, payload: &str) -> Result<()>;
    /// Announcements from every replica, this one included; `None` when
    /// the store is not shared.
    fn subscribe(&self) -> Option<mpsc::Receiver<Notice>>;

    // Operations (`hub::metrics`).
    /// How many invocations are in each overall status and how many targets
    /// in each per-instance status, from the counts kept on invocation rows
    /// (one pass over invocations; targets are not read).
    async fn state_counts(&self) -> Result<StateCounts>;
}

/// See [`Store::state_counts`].
#[derive(Debug, Clone, Default)]
pub struct StateCounts {
    pub invocations: Vec<(InvocationOverall, i64)>,
    pub targets: Counts,
}

/// An invocation owed to one instance (wire form without the region,
/// which the delivery service adds), and whether a stop is owed after it.
#[derive(Debug, Clone)]
pub struct Owed {
    pub invocation: Invocation,
    pub stop: bool,
}

/// A non-final target, as a replica relaying work needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    pub instance_id: String,
    pub instance_name: String,
    pub status: InvocationStatus,
}

/// What the announcement channel delivers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Notice {
    Message(String),
    /// The channel was (re)established and announcements may have been
    /// missed meanwhile: the receiver should resynchronise from the tables.
    Resync,
}

/// Current time as Cloud Assistant prints it: `2026-11-22T23:01:05Z`.
pub fn now_str() -> String {
    stamp(chrono::Utc::now())
}

/// The time `d` ago, in the same form: the cutoffs the store compares with.
pub fn ago_str(d: std::time::Duration) -> String {
    stamp(chrono::Utc::now() - chrono::Duration::from_std(d).unwrap_or_default())
}

/// A time in the one form stored times take (they compare as text).
pub fn stamp(t: chrono::DateTime<chrono::Utc>) -> String {
    t.format("%Y-%m-%dT%H:%M:%SZ").to_string()
}
