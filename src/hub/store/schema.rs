//! Versioned schema migrations, applied in order inside one transaction each.
//!
//! Never edit a released step: append a new one. `schema_version` records
//! the highest applied step; a database newer than this binary is refused.

pub const MIGRATIONS: &[&str] = &[
    // 1: initial schema.
    r#"
    CREATE TABLE activations (
        activation_id TEXT PRIMARY KEY,
        code_hash TEXT NOT NULL,
        instance_name TEXT NOT NULL DEFAULT '',
        description TEXT NOT NULL DEFAULT '',
        instance_count INTEGER NOT NULL,
        registered_count INTEGER NOT NULL DEFAULT 0,
        deregistered_count INTEGER NOT NULL DEFAULT 0,
        time_to_live_hours INTEGER NOT NULL,
        ip_address_range TEXT NOT NULL DEFAULT '0.0.0.0/0',
        created_at TEXT NOT NULL,
        disabled INTEGER NOT NULL DEFAULT 0
    );
    CREATE TABLE instances (
        instance_id TEXT PRIMARY KEY,
        instance_name TEXT NOT NULL DEFAULT '',
        token_hash TEXT NOT NULL,
        facts TEXT NOT NULL DEFAULT '{}',
        ip TEXT NOT NULL DEFAULT '',
        online INTEGER NOT NULL DEFAULT 0,
        last_seen TEXT NOT NULL DEFAULT '',
        registered_at TEXT NOT NULL,
        activation_id TEXT NOT NULL DEFAULT '',
        tags TEXT NOT NULL DEFAULT '[]'
    );
    CREATE TABLE commands (
        command_id TEXT PRIMARY KEY,
        name TEXT NOT NULL,
        description TEXT NOT NULL DEFAULT '',
        command_type TEXT NOT NULL,
        content TEXT NOT NULL,
        working_dir TEXT NOT NULL DEFAULT '',
        timeout_secs INTEGER NOT NULL,
        enable_parameter INTEGER NOT NULL DEFAULT 0,
        username TEXT NOT NULL DEFAULT '',
        created_at TEXT NOT NULL,
        visible INTEGER NOT NULL DEFAULT 1,
        invoke_times INTEGER NOT NULL DEFAULT 0
    );
    CREATE TABLE invocations (
        invoke_id TEXT PRIMARY KEY,
        command_id TEXT NOT NULL,
        command_name TEXT NOT NULL DEFAULT '',
        command_type TEXT NOT NULL,
        content TEXT NOT NULL,
        timeout_secs INTEGER NOT NULL,
        working_dir TEXT NOT NULL DEFAULT '',
        username TEXT NOT NULL DEFAULT '',
        enable_parameter INTEGER NOT NULL DEFAULT 0,
        parameters TEXT NOT NULL DEFAULT '{}',
        repeat_mode TEXT NOT NULL DEFAULT 'Once',
        frequency TEXT NOT NULL DEFAULT '',
        created_at TEXT NOT NULL,
        client_token TEXT NOT NULL DEFAULT '',
        stop_requested INTEGER NOT NULL DEFAULT 0
    );
    CREATE INDEX invocations_created ON invocations (created_at);
    CREATE INDEX invocations_token ON invocations (client_token);
    CREATE TABLE targets (
        invoke_id TEXT NOT NULL,
        instance_id TEXT NOT NULL,
        status TEXT NOT NULL,
        delivered INTEGER NOT NULL DEFAULT 0,
        repeats INTEGER NOT NULL DEFAULT 0,
        exit_code INTEGER,
        output BLOB NOT NULL DEFAULT x'',
        dropped INTEGER NOT NULL DEFAULT 0,
        error_code TEXT NOT NULL DEFAULT '',
        error_info TEXT NOT NULL DEFAULT '',
        start_time TEXT NOT NULL DEFAULT '',
        finish_time TEXT NOT NULL DEFAULT '',
        created_at TEXT NOT NULL,
        updated_at TEXT NOT NULL,
        PRIMARY KEY (invoke_id, instance_id)
    );
    CREATE INDEX targets_instance ON targets (instance_id, status);
    CREATE TABLE records (
        invoke_id TEXT NOT NULL,
        instance_id TEXT NOT NULL,
        record_seq INTEGER NOT NULL,
        status TEXT NOT NULL,
        exit_code INTEGER,
        output BLOB NOT NULL DEFAULT x'',
        dropped INTEGER NOT NULL DEFAULT 0,
        error_code TEXT NOT NULL DEFAULT '',
        error_info TEXT NOT NULL DEFAULT '',
        start_time TEXT NOT NULL DEFAULT '',
        finish_time TEXT NOT NULL DEFAULT '',
        PRIMARY KEY (invoke_id, instance_id, record_seq)
    );
    "#,
    // 2: credential rotation keeps the next token beside the current one.
    r#"
    ALTER TABLE instances ADD COLUMN pending_token_hash TEXT NOT NULL DEFAULT '';
    "#,
    // 3: replicas. `hub_id` names the replica holding the agent's session;
    // `hubs` records each replica's liveness so the others can release
    // the agents of one that died.
    r#"
    ALTER TABLE instances ADD COLUMN hub_id TEXT NOT NULL DEFAULT '';
    CREATE INDEX instances_hub ON instances (hub_id);
    CREATE TABLE hubs (
        hub_id TEXT PRIMARY KEY,
        started_at TEXT NOT NULL,
        last_seen TEXT NOT NULL
    );
    CREATE INDEX targets_waiting ON targets (status, delivered, updated_at);
    -- ClientToken makes RunCommand/InvokeCommand idempotent; with replicas a
    -- retry may land on another hub at the same moment, so the database,
    -- not a check-then-insert, decides.
    CREATE UNIQUE INDEX invocations_client_token ON invocations (client_token) WHERE client_token != '';
    "#,
    // 4: the lifecycle (issue #15). Targets and records store Alibaba's
    // per-instance InvocationStatus (Success, Invalid, Cancelled, …) instead
    // of 0.1.0's record states; the statuses are rewritten in Rust through
    // the lifecycle codec right after this step (`sql::upgrade`), which
    // also fills the per-state counts and the two aggregate statuses kept
    // on each invocation so DescribeInvocations filters and pages in SQL.
    r#"
    ALTER TABLE invocations ADD COLUMN n_pending INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE invocations ADD COLUMN n_scheduled INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE invocations ADD COLUMN n_invalid INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE invocations ADD COLUMN n_aborted INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE invocations ADD COLUMN n_running INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE invocations ADD COLUMN n_success INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE invocations ADD COLUMN n_failed INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE invocations ADD COLUMN n_error INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE invocations ADD COLUMN n_timeout INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE invocations ADD COLUMN n_cancelled INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE invocations ADD COLUMN n_stopping INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE invocations ADD COLUMN n_terminated INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE invocations ADD COLUMN invoke_status TEXT NOT NULL DEFAULT '';
    ALTER TABLE invocations ADD COLUMN invocation_status TEXT NOT NULL DEFAULT '';
    CREATE INDEX invocations_invoke_status ON invocations (invoke_status, created_at);
    CREATE INDEX invocations_invocation_status ON invocations (invocation_status, created_at);
    "#,
    // 5: fleet runs (issue #16, docs/fleet.md). The rollout window of an
    // invocation lives here, so every replica and a restarted hub see the
    // same one: `max_concurrency` (0: no window) and `max_errors` (-1: no
    // limit) resolved to counts at creation, `batch_wait_secs`. A target
    // the window holds back is `released = 0` (Pending, never sent);
    // `released_at` is when it was let go (delivery timeouts count from it).
    r#"
    ALTER TABLE invocations ADD COLUMN max_concurrency INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE invocations ADD COLUMN max_errors INTEGER NOT NULL DEFAULT -1;
    ALTER TABLE invocations ADD COLUMN batch_wait_secs INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE targets ADD COLUMN released INTEGER NOT NULL DEFAULT 1;
    ALTER TABLE targets ADD COLUMN released_at TEXT NOT NULL DEFAULT '';
    UPDATE targets SET released_at = created_at;
    -- Invocations with held targets (the backstop pass) ...
    CREATE INDEX targets_held ON targets (released, status, invoke_id);
    -- ... and one window's standing and next targets in release order,
    -- read from the index instead of sorting a large rollout each time.
    CREATE INDEX targets_window ON targets (invoke_id, released, status, instance_id);
    "#,
    // 6: who may do what (issue #18). Access keys managed through the API
    // and CLI, beside the full-access keys of hub.toml. `secret` is the
    // signing secret itself: HMAC verification needs it, so a hash cannot
    // do (docs/permissions.md says what protects it). `policy` is the JSON
    // document ('' = no access). The audit trail is bounded by the
    // pruner (`audit_retention_days`); `event_id` begins with the time in
    // nanoseconds, so it orders events that share a second.
    r#"
    CREATE TABLE access_keys (
        key_id TEXT PRIMARY KEY,
        secret TEXT NOT NULL,
        description TEXT NOT NULL DEFAULT '',
        enabled INTEGER NOT NULL DEFAULT 1,
        policy TEXT NOT NULL DEFAULT '',
        created_at TEXT NOT NULL,
        updated_at TEXT NOT NULL
    );
    CREATE TABLE audit_events (
        event_id TEXT PRIMARY KEY,
        at TEXT NOT NULL,
        key_id TEXT NOT NULL,
        source TEXT NOT NULL DEFAULT '',
        action TEXT NOT NULL,
        targets TEXT NOT NULL DEFAULT '',
        outcome TEXT NOT NULL,
        request_id TEXT NOT NULL,
        invoke_id TEXT NOT NULL DEFAULT '',
        detail TEXT NOT NULL DEFAULT ''
    );
    CREATE INDEX audit_events_at ON audit_events (at, event_id);
    CREATE INDEX audit_events_key ON audit_events (key_id, at);
    "#,
    // 7: fleet follow-ups (issue #16). `revision` counts the
    // ModifyInvocationAttribute changes of what an invocation runs; it goes
    // to agents on the wire so one holding the invocation replaces its copy
    // with a newer one only (docs/fleet.md).
    r#"
    ALTER TABLE invocations ADD COLUMN revision INTEGER NOT NULL DEFAULT 0;
    "#,
    // 8: SendFile (issue #19, docs/files.md). A file delivery is an invocation
    // (command_type 'SendFile') whose `file_spec` holds the JSON of
    // `store::FileRow` and `file_sha256` its content's digest. The content
    // is stored once, however many invocations and targets use it:
    // `file_contents` by digest, its bytes in `file_chunks` of
    // `protocol::FILE_CHUNK_BYTES` (the unit agents pull), numbered from 0.
    r#"
    ALTER TABLE invocations ADD COLUMN file_spec TEXT NOT NULL DEFAULT '';
    ALTER TABLE invocations ADD COLUMN file_sha256 TEXT NOT NULL DEFAULT '';
    CREATE TABLE file_contents (
        sha256 TEXT PRIMARY KEY,
        size INTEGER NOT NULL,
        created_at TEXT NOT NULL
    );
    CREATE TABLE file_chunks (
        sha256 TEXT NOT NULL,
        seq INTEGER NOT NULL,
        data BLOB NOT NULL DEFAULT x'',
        PRIMARY KEY (sha256, seq)
    );
    "#,
    // 9: stored file contents are kept only while used (docs/files.md,
    // "How long contents are kept"). `used_at`: the last upload of a chunk
    // or SendFile naming it; `verified`: its chunks were hashed to its
    // digest once, so later SendFiles do not hash 100 MiB again.
    r#"
    ALTER TABLE file_contents ADD COLUMN used_at TEXT NOT NULL DEFAULT '';
    ALTER TABLE file_contents ADD COLUMN verified INTEGER NOT NULL DEFAULT 0;
    UPDATE file_contents SET used_at = created_at;
    CREATE INDEX file_contents_used_at ON file_contents (used_at);
    CREATE INDEX invocations_file_sha256 ON invocations (file_sha256);
    "#,
    // 10: agent self-update progress, shared by every replica (issue #20,
    // docs/operations.md): one row per instance offered a build
    // (`InProgress`) or whose last update failed (`Failed`). The offer
    // slots (`percent` of the online fleet) are counted here, so replicas
    // together never exceed them, and failures survive a hub restart.
    r#"
    CREATE TABLE agent_updates (
        instance_id TEXT PRIMARY KEY,
        version TEXT NOT NULL,
        state TEXT NOT NULL,
        error TEXT NOT NULL DEFAULT '',
        updated_at TEXT NOT NULL
    );
    CREATE INDEX agent_updates_state ON agent_updates (state, updated_at);
    "#,
    // 11: per-fire rollout windows of periodic invocations (issue #16,
    // docs/fleet.md, `store::sql::fires`): one row per fire an agent asked
    // to run, (invocation, instance, record_seq). `fire_at` is the fire's
    // nominal instant (UTC, whole seconds): the rows sharing it are one
    // fire's window. `state`: waiting / granted / denied / done; `failed`:
    // a granted fire that settled in error (MaxErrors counts them).
    r#"
    CREATE TABLE fires (
        invoke_id TEXT NOT NULL,
        instance_id TEXT NOT NULL,
        record_seq INTEGER NOT NULL,
        fire_at TEXT NOT NULL,
        state TEXT NOT NULL,
        failed INTEGER NOT NULL DEFAULT 0,
        error_info TEXT NOT NULL DEFAULT '',
        requested_at TEXT NOT NULL,
        decided_at TEXT NOT NULL DEFAULT '',
        PRIMARY KEY (invoke_id, instance_id, record_seq)
    );
    CREATE INDEX fires_window ON fires (invoke_id, fire_at, state);
    CREATE INDEX fires_waiting ON fires (state, invoke_id, fire_at);
    "#,
    // 12: which session of its replica last brought an instance online, so
    // an old session's "offline" landing after a reconnect's "online"
    // (both from one replica, in either order) cannot hide a connected
    // agent.
    r#"
    ALTER TABLE instances ADD COLUMN session INTEGER NOT NULL DEFAULT 0;
    "#,
];

/// The schema version whose data is rewritten in Rust after its DDL.
pub const LIFECYCLE_STEP: usize = 4;
