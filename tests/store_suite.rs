//! One store test suite, run against both engines: an SQLite file and a
//! real PostgreSQL server (see support/pg.rs for how the server is found
//! and when the PostgreSQL half is skipped).

#[path = "support/pg.rs"]
mod pg;

use std::sync::Arc;

use deckhand::hub::store::*;
use deckhand::lifecycle::{CommandType, ErrorCode, InvocationOverall, InvocationStatus as S, InvokeStatus, RepeatMode};
use deckhand::protocol::{HostFacts, RecordReport};

/// Opens one store of each kind for a check; `open` may be called again
/// for a second connection pool on the same database (a second replica).
struct Engine {
    spec: String,
    _dir: Option<tempfile::TempDir>,
    db: Option<pg::TestDb>,
}

impl Engine {
    async fn sqlite() -> Engine {
        let dir = tempfile::tempdir().unwrap();
        Engine { spec: dir.path().join("hub.db").display().to_string(), _dir: Some(dir), db: None }
    }

    async fn postgres(test: &str) -> Option<Engine> {
        let db = pg::TestDb::create(test).await?;
        Some(Engine { spec: db.url.clone(), _dir: None, db: Some(db) })
    }

    async fn open(&self) -> Arc<SqlStore> {
        Arc::new(SqlStore::open(&self.spec).await.unwrap_or_else(|e| panic!("open {}: {e}", self.spec)))
    }

    async fn finish(self) {
        if let Some(db) = self.db {
            db.drop_db().await;
        }
    }
}

/// `suite!(name)` runs `async fn name(&Engine)` once per engine.
macro_rules! suite {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let e = super::Engine::sqlite().await;
                    super::$name(&e).await;
                    e.finish().await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let Some(e) = super::Engine::postgres(concat!("store_suite::postgres::", stringify!($name))).await else { return };
                    super::$name(&e).await;
                    e.finish().await;
                }
            )*
        }
    };
}

suite!(
    migrations_are_idempotent_and_refuse_newer_schema,
    sessions_in_one_batch_keep_their_order,
    activation_slots_hold_under_concurrent_registration,
    invocation_lifecycle_keeps_binary_output_and_ignores_duplicates,
    periodic_records_count_fires_and_keep_target_running,
    lists_filter_and_paginate,
    stop_marks_undelivered_stopped_and_delivered_stopping,
    undelivered_targets_expire,
    status_filter_pages_in_sql_on_kept_counts,
    history_pages_in_sql,
    bad_output_is_refused_not_stored_empty,
    deregistering_releases_unsettled_targets,
    replicas_track_who_holds_each_agent,
    announcements_reach_every_replica,
    rollout_window_releases_in_order_and_halts_on_errors,
    two_replicas_share_one_window,
    batch_wait_spaces_releases_by_the_hub_clock,
    access_keys_and_audit_events_round_trip_across_replicas,
    modifications_raise_the_revision_and_reach_the_wire_form,
    instances_stream_in_keyset_pages,
    many_targets_insert_in_batches_and_state_counts_sum_them,
    a_batch_cut_into_statement_shapes_applies_every_op,
    overview_counts_instances_and_invocations_by_hour,
    file_content_is_stored_once_and_served_only_to_targets,
    file_contents_are_kept_while_used_and_pruned_after,
    agent_update_slots_are_shared_by_replicas,
    periodic_windows_hold_each_fire_across_replicas,
    one_batch_equals_the_same_ops_one_at_a_time,
);

/// `ModifyInvocationAttribute` (issue #16): a change to what runs raises
/// the revision by one, which the wire form (resync on reconnect) carries;
/// adding instances alone does not.
async fn modifications_raise_the_revision_and_reach_the_wire_form(e: &Engine) {
    let s = e.open().await;
    s.create_invocation(&invocation("t-m", "2026-11-23T00:00:00Z", RepeatMode::Period, "rate(1m)"), &["i-1".into()], None).await.unwrap();
    assert_eq!(s.get_invocation("t-m").await.unwrap().unwrap().revision, 0);
    let change = Modification { invoke_id: "t-m".into(), content: Some("echo v2".into()), ..Default::default() };
    assert!(change.changes_definition());
    s.modify_invocation(&change).await.unwrap();
    let add = Modification { invoke_id: "t-m".into(), add: vec!["i-2".into()], ..Default::default() };
    assert!(!add.changes_definition());
    assert_eq!(s.modify_invocation(&add).await.unwrap(), ["i-2"]);
    let freq = Modification { invoke_id: "t-m".into(), frequency: Some("rate(5m)".into()), ..Default::default() };
    s.modify_invocation(&freq).await.unwrap();
    let inv = s.get_invocation("t-m").await.unwrap().unwrap();
    assert_eq!((inv.revision, inv.content.as_str(), inv.frequency.as_str()), (2, "echo v2", "rate(5m)"));
    let owed = s.undelivered_for("i-2").await.unwrap();
    assert_eq!((owed[0].invocation.revision, owed[0].invocation.content.as_str()), (2, "echo v2"));
}

/// Fleet selectors stream the registered instances in keyset pages by id
/// (issue #16): every instance exactly once, in order, whatever the page size.
async fn instances_stream_in_keyset_pages(e: &Engine) {
    let s = e.open().await;
    activation(&s, "act-k", 10).await;
    for i in [3, 1, 7, 5, 2, 9, 4] {
        assert!(register(&s, "act-k", &format!("i-{i}")).await);
    }
    let mut seen = Vec::new();
    let mut after = String::new();
    loop {
        let page = s.instances_after(&after, 3).await.unwrap();
        let Some(last) = page.last() else { break };
        after = last.instance_id.clone();
        seen.extend(page.into_iter().map(|i| i.instance_id));
    }
    assert_eq!(seen, ["i-1", "i-2", "i-3", "i-4", "i-5", "i-7", "i-9"]);
    assert!(s.instances_after("i-9", 3).await.unwrap().is_empty());
}

fn page(offset: i64, limit: i64) -> Page {
    Page { offset, limit }
}

fn invocation(id: &str, created_at: &str, repeat_mode: RepeatMode, frequency: &str) -> InvocationRow {
    InvocationRow {
        invoke_id: id.into(),
        command_id: format!("c-{id}"),
        command_name: "name".into(),
        command_type: CommandType::RunShellScript,
        content: "echo hi".into(),
        timeout_secs: 60,
        working_dir: String::new(),
        username: String::new(),
        enable_parameter: false,
        parameters: "{}".into(),
        repeat_mode,
        frequency: frequency.into(),
        created_at: created_at.into(),
        client_token: format!("tok-{id}"),
        stop_requested: false,
        counts: Default::default(),
        window: Default::default(),
        revision: 0,
        unreachable: Vec::new(),
        file: None,
    }
}

const ONCE: RepeatMode = RepeatMode::Once;

fn report(invoke_id: &str, seq: u32, status: S, output: &[u8]) -> WriteOp {
    use base64::Engine;
    WriteOp::Report {
        instance_id: "i-1".into(),
        report: RecordReport {
            invoke_id: invoke_id.into(),
            record_seq: seq,
            status,
            exit_code: status.is_final().then_some(3),
            output_b64: base64::engine::general_purpose::STANDARD.encode(output),
            dropped: 0,
            error_code: None,
            error_info: String::new(),
            start_time: "2026-11-23T00:00:01Z".into(),
            finish_time: if status.is_final() { "2026-11-23T00:00:02Z".into() } else { String::new() },
        },
    }
}

async fn register(store: &SqlStore, activation: &str, id: &str) -> bool {
    let inst = InstanceRow {
        instance_id: id.into(),
        instance_name: id.into(),
        token_hash: "h".into(),
        registered_at: now_str(),
        ..Default::default()
    };
    store.register_instance(activation, &inst).await.unwrap()
}

async fn activation(store: &SqlStore, id: &str, count: i64) {
    let a = ActivationRow {
        activation_id: id.into(),
        code_hash: "x".into(),
        instance_count: count,
        time_to_live_hours: 4,
        ip_address_range: "0.0.0.0/0".into(),
        created_at: now_str(),
        ..Default::default()
    };
    store.create_activation(&a).await.unwrap();
}

async fn migrations_are_idempotent_and_refuse_newer_schema(e: &Engine) {
    let a = e.open().await;
    activation(&a, "act-1", 1).await;
    drop(a);
    // Reopening applies nothing and keeps the data.
    let b = e.open().await;
    assert!(b.get_activation("act-1").await.unwrap().is_some());
    drop(b);
    if e.db.is_none() {
        // WAL is a property of the file: see it from outside the store.
        use sqlx::Connection;
        let mut c = sqlx::sqlite::SqliteConnection::connect(&format!("sqlite://{}", e.spec)).await.unwrap();
        let mode: String = sqlx::query_scalar("PRAGMA journal_mode").fetch_one(&mut c).await.unwrap();
        assert_eq!(mode, "wal");
    }
    // A database written by a newer hub is refused, not misread.
    raw(e, "INSERT INTO schema_version (version) VALUES (999)").await;
    let err = SqlStore::open(&e.spec).await.err().expect("newer schema must be refused");
    assert!(matches!(err, StoreError::SchemaTooNew { found: 999, .. }), "{err}");
}

async fn raw(e: &Engine, sql: &str) {
    use sqlx::{Connection, Executor};
    let sql = sqlx::AssertSqlSafe(sql.to_string());
    if let Some(db) = &e.db {
        let mut c = sqlx::postgres::PgConnection::connect(&db.url).await.unwrap();
        c.execute(sql).await.unwrap();
    } else {
        let mut c = sqlx::sqlite::SqliteConnection::connect(&format!("sqlite://{}", e.spec)).await.unwrap();
        c.execute(sql).await.unwrap();
    }
}

async fn activation_slots_hold_under_concurrent_registration(e: &Engine) {
    // Two replicas (two pools) race 20 machines for 5 slots.
    let (a, b) = (e.open().await, e.open().await);
    activation(&a, "act-race", 5).await;
    let mut tasks = Vec::new();
    for i in 0..20 {
        let s = if i % 2 == 0 { a.clone() } else { b.clone() };
        tasks.push(tokio::spawn(async move { register(&s, "act-race", &format!("i-{i}")).await }));
    }
    let mut won = 0;
    for t in tasks {
        won += t.await.unwrap() as i32;
    }
    assert_eq!(won, 5);
    let act = a.get_activation("act-race").await.unwrap().unwrap();
    assert_eq!(act.registered_count, 5);
    let (_, total) = a.list_instances(&[], None, None, page(0, 100)).await.unwrap();
    assert_eq!(total, 5);
    // Deregistering counts, and an activation in use cannot be deleted.
    let (rows, _) = a.list_instances(&[], None, None, page(0, 1)).await.unwrap();
    assert!(!a.delete_activation("act-race").await.unwrap());
    assert!(a.deregister_instance(&rows[0].instance_id).await.unwrap());
    assert!(!a.deregister_instance(&rows[0].instance_id).await.unwrap());
    assert_eq!(a.get_activation("act-race").await.unwrap().unwrap().deregistered_count, 1);
}

async fn invocation_lifecycle_keeps_binary_output_and_ignores_duplicates(e: &Engine) {
    let s = e.open().await;
    activation(&s, "act", 10).await;
    assert!(register(&s, "act", "i-1").await);
    assert!(register(&s, "act", "i-2").await);
    s.create_invocation(&invocation("t-1", "2026-11-23T00:00:00Z", ONCE, ""), &["i-1".into(), "i-2".into()], None).await.unwrap();
    assert_eq!(s.find_by_client_token("tok-t-1").await.unwrap().as_deref(), Some("t-1"));
    assert_eq!(s.find_by_client_token("tok-none").await.unwrap(), None);
    // The same client token again (a retry through another replica) writes nothing.
    let mut again = invocation("t-1b", "2026-11-23T00:00:00Z", ONCE, "");
    again.client_token = "tok-t-1".into();
    let err = s.create_invocation(&again, &["i-1".into()], None).await.unwrap_err();
    assert!(matches!(&err, StoreError::DuplicateClientToken(t) if t == "tok-t-1"), "{err}");
    assert!(s.get_invocation("t-1b").await.unwrap().is_none());
    // RunCommand's anonymous command commits with its invocation or not at all.
    let cmd = CommandRow {
        command_id: "c-orphan".into(),
        name: String::new(),
        description: String::new(),
        command_type: CommandType::RunShellScript,
        content: "echo".into(),
        working_dir: String::new(),
        timeout_secs: 60,
        enable_parameter: false,
        username: String::new(),
        created_at: now_str(),
        visible: false,
        invoke_times: 0,
    };
    // The call's audit event commits with the invocation (one commit per
    // call, issue #21), and not at all when the invocation does not.
    let event = |request_id: &str, invoke_id: &str| AuditEvent {
        event_id: format!("e-{request_id}"),
        at: now_str(),
        key_id: "k1".into(),
        source: "127.0.0.1".into(),
        action: "RunCommand".into(),
        targets: "i-1".into(),
        outcome: "Success".into(),
        request_id: request_id.into(),
        invoke_id: invoke_id.into(),
        detail: String::new(),
    };
    let refused = event("R-dup", "t-1b");
    let err = s.run_command(&cmd, &again, &["i-1".into()], Some(&refused)).await.unwrap_err();
    assert!(matches!(&err, StoreError::DuplicateClientToken(_)), "{err}");
    assert!(s.get_command("c-orphan").await.unwrap().is_none(), "no orphan command");
    assert!(s.targets("t-1b").await.unwrap().is_empty());
    let owed = s.undelivered_for("i-1").await.unwrap();
    assert_eq!(owed.len(), 1);
    assert_eq!(owed[0].invocation.instance_name, "i-1");
    assert!(!owed[0].stop);
    let deliveries = s.deliveries("t-1").await.unwrap();
    let pending = |id: &str| Delivery { instance_id: id.into(), instance_name: id.into(), status: S::Pending };
    assert_eq!(deliveries, [pending("i-1"), pending("i-2")]);

    let bytes: Vec<u8> = vec![0xff, 0x00, b'o', b'k', 0xfe];
    let ops = vec![
        WriteOp::Delivered { invoke_id: "t-1".into(), instance_id: "i-1".into() },
        report("t-1", 0, S::Running, b""),
        report("t-1", 0, S::Failed, &bytes),
        // Resent after a reconnect: ignored.
        report("t-1", 0, S::Running, b""),
        WriteOp::Report {
            instance_id: "i-9".into(),
            report: match report("t-1", 0, S::Failed, b"") {
                WriteOp::Report { report, .. } => report,
                _ => unreachable!(),
            },
        },
        WriteOp::Touch { instance_id: "i-1".into() },
    ];
    let effects = s.apply_batch(&ops).await.unwrap();
    use ReportEffect::*;
    assert_eq!(effects, [Applied, Applied, Applied, Duplicate, NotATarget, Applied]);
    let t = s.targets("t-1").await.unwrap();
    assert_eq!(t[0].status, S::Failed);
    assert!(t[0].delivered);
    assert_eq!(t[0].output, bytes);
    assert_eq!(t[0].exit_code, Some(3));
    assert_eq!(t[1].status, S::Pending);
    let records = s.records("t-1", "i-1").await.unwrap();
    assert_eq!(records.len(), 1);
    assert_eq!(records[0].output, bytes);
    // Only the unfinished target is still owed.
    assert_eq!(s.deliveries("t-1").await.unwrap().len(), 1);
    assert!(s.undelivered_for("i-1").await.unwrap().is_empty());
    let mut fresh = invocation("t-1c", "2026-11-23T00:00:00Z", ONCE, "");
    fresh.command_id = "c-audited".into();
    let audited = CommandRow { command_id: "c-audited".into(), ..cmd.clone() };
    s.run_command(&audited, &fresh, &["i-1".into()], Some(&event("R-ok", "t-1c"))).await.unwrap();
    let (trail, _) = s.list_audit(&AuditFilter::default(), page(0, 10)).await.unwrap();
    let requests: Vec<&str> = trail.iter().map(|e| e.request_id.as_str()).collect();
    assert_eq!(requests, ["R-ok"], "only the committed call is in the trail");
    assert_eq!(trail[0].invoke_id, "t-1c");
    // RunCommand's command is created with its one invocation counted; an
    // InvokeCommand of it counts one more.
    assert_eq!(s.get_command("c-audited").await.unwrap().map(|c| c.invoke_times), Some(1));
    let mut second = invocation("t-1d", "2026-11-23T00:00:00Z", ONCE, "");
    second.command_id = "c-audited".into();
    s.create_invocation(&second, &["i-1".into()], None).await.unwrap();
    assert_eq!(s.get_command("c-audited").await.unwrap().map(|c| c.invoke_times), Some(2));
}

async fn periodic_records_count_fires_and_keep_target_running(e: &Engine) {
    let s = e.open().await;
    s.create_invocation(&invocation("t-p", "2026-11-23T00:00:00Z", RepeatMode::Period, "rate(1m)"), &["i-1".into()], None).await.unwrap();
    s.apply_batch(&[WriteOp::Delivered { invoke_id: "t-p".into(), instance_id: "i-1".into() }]).await.unwrap();
    assert_eq!(s.targets("t-p").await.unwrap()[0].status, S::Running);
    for seq in 1..=3 {
        s.apply_batch(&[report("t-p", seq, S::Running, b""), report("t-p", seq, S::Failed, format!("fire {seq}").as_bytes())])
            .await
            .unwrap();
    }
    // A late report of an earlier fire does not lower the count.
    s.apply_batch(&[report("t-p", 1, S::Failed, b"late")]).await.unwrap();
    let t = &s.targets("t-p").await.unwrap()[0];
    assert_eq!((t.status, t.repeats), (S::Running, 3));
    let records = s.records("t-p", "i-1").await.unwrap();
    assert_eq!(records.iter().map(|r| r.record_seq).collect::<Vec<_>>(), [1, 2, 3]);
    assert_eq!(records[2].output, b"fire 3");
}

async fn lists_filter_and_paginate(e: &Engine) {
    let s = e.open().await;
    for i in 0..7 {
        let mut inv = invocation(&format!("t-{i}"), &format!("2026-11-23T00:00:0{i}Z"), ONCE, "");
        inv.command_type = if i % 2 == 0 { CommandType::RunShellScript } else { CommandType::RunPowerShellScript };
        let targets: Vec<String> = if i < 3 { vec!["i-a".into()] } else { vec!["i-b".into(), "i-c".into()] };
        s.create_invocation(&inv, &targets, None).await.unwrap();
    }
    let all = InvocationFilter::default();
    let (rows, total) = s.list_invocations(&all, page(0, 3)).await.unwrap();
    assert_eq!(total, 7);
    // Newest first, whatever the database's locale.
    assert_eq!(rows.iter().map(|r| r.invoke_id.as_str()).collect::<Vec<_>>(), ["t-6", "t-5", "t-4"]);
    // Every page shape gives the same total: short last page (its count is
    // taken from the rows), exactly full, short first page, zero-sized.
    let (rows, total) = s.list_invocations(&all, page(6, 3)).await.unwrap();
    assert_eq!((rows.len(), total), (1, 7));
    assert_eq!(s.list_invocations(&all, page(4, 3)).await.unwrap().1, 7);
    assert_eq!(s.list_invocations(&all, page(0, 7)).await.unwrap().1, 7);
    assert_eq!(s.list_invocations(&all, page(0, 50)).await.unwrap().1, 7);
    let (rows, total) = s.list_invocations(&all, page(0, 0)).await.unwrap();
    assert_eq!((rows.len(), total), (0, 7));
    let f = InvocationFilter { instance_id: Some("i-a".into()), ..Default::default() };
    assert_eq!(s.list_invocations(&f, page(0, 10)).await.unwrap().1, 3);
    let f = InvocationFilter { command_type: Some(CommandType::RunPowerShellScript), ..Default::default() };
    assert_eq!(s.list_invocations(&f, page(0, 10)).await.unwrap().1, 3);
    let (targets, total) = s
        .list_targets(&InvocationFilter { instance_id: Some("i-c".into()), ..Default::default() }, &[S::Pending], page(0, 2))
        .await
        .unwrap();
    assert_eq!((targets.len(), total), (2, 4));
    assert_eq!(s.list_targets(&all, &[S::Failed], page(0, 10)).await.unwrap().1, 0);
    // A page beyond the end is empty and still counts.
    let (rows, total) = s.list_invocations(&all, page(70, 10)).await.unwrap();
    assert_eq!((rows.len(), total), (0, 7));
}

async fn stop_marks_undelivered_stopped_and_delivered_stopping(e: &Engine) {
    let s = e.open().await;
    s.create_invocation(&invocation("t-s", "2026-11-23T00:00:00Z", ONCE, ""), &["i-1".into(), "i-2".into(), "i-3".into()], None)
        .await
        .unwrap();
    s.apply_batch(&[
        WriteOp::Delivered { invoke_id: "t-s".into(), instance_id: "i-1".into() },
        WriteOp::Delivered { invoke_id: "t-s".into(), instance_id: "i-3".into() },
        WriteOp::Report {
            instance_id: "i-3".into(),
            report: match report("t-s", 0, S::Failed, b"done") {
                WriteOp::Report { report, .. } => report,
                _ => unreachable!(),
            },
        },
    ])
    .await
    .unwrap();
    let notify = s.request_stop("t-s", &[]).await.unwrap();
    assert_eq!(notify, ["i-1", "i-2"]);
    let t = s.targets("t-s").await.unwrap();
    assert_eq!(t.iter().map(|t| t.status).collect::<Vec<_>>(), [S::Stopping, S::Cancelled, S::Failed]);
    let inv = s.get_invocation("t-s").await.unwrap().unwrap();
    assert_eq!(
        (inv.counts.get(S::Stopping), inv.counts.get(S::Cancelled), inv.counts.get(S::Failed), inv.counts.get(S::Pending)),
        (1, 1, 1, 0)
    );
    assert_eq!((inv.invoke_status(), inv.invocation_status()), (InvokeStatus::Stopping, InvocationOverall::Stopping));
    assert!(s.get_invocation("t-s").await.unwrap().unwrap().stop_requested);
    // What a replica relays the stop to: the one target still Stopping.
    let owed: Vec<_> = s.deliveries("t-s").await.unwrap().into_iter().map(|d| (d.instance_id, d.status)).collect();
    assert_eq!(owed, [("i-1".to_string(), S::Stopping)]);
    // The agent confirms: Terminated; the invocation is settled.
    let mut confirm = report("t-s", 0, S::Terminated, b"killed");
    if let WriteOp::Report { report, .. } = &mut confirm {
        report.exit_code = None;
    }
    s.apply_batch(&[confirm]).await.unwrap();
    let inv = s.get_invocation("t-s").await.unwrap().unwrap();
    assert_eq!((inv.invoke_status(), inv.invocation_status()), (InvokeStatus::Finished, InvocationOverall::Failed));
}

async fn undelivered_targets_expire(e: &Engine) {
    let s = e.open().await;
    s.create_invocation(&invocation("t-old", "2026-11-20T00:00:00Z", ONCE, ""), &["i-1".into()], None).await.unwrap();
    s.create_invocation(&invocation("t-new", "2099-01-01T00:00:00Z", ONCE, ""), &["i-1".into()], None).await.unwrap();
    assert_eq!(s.expire_undelivered("2026-11-21T00:00:00Z").await.unwrap(), 1);
    let t = &s.targets("t-old").await.unwrap()[0];
    // i-1 is not even registered, so offline: the client did not respond.
    assert_eq!((t.status, t.error_code.clone()), (S::Aborted, Some(ErrorCode::ClientNotResponse)));
    assert_eq!(t.error_info, "the aliyun service in the instance does not response");
    let inv = s.get_invocation("t-old").await.unwrap().unwrap();
    assert_eq!((inv.invoke_status(), inv.invocation_status()), (InvokeStatus::Failed, InvocationOverall::Failed));
    // An online agent that never acknowledged: the delivery timed out.
    activation(&s, "act", 5).await;
    assert!(register(&s, "act", "i-on").await);
    s.instance_connected("i-on", "hub-a", 1, &HostFacts::default(), "10.0.0.1").await.unwrap();
    s.create_invocation(&invocation("t-on", "2026-11-20T00:00:00Z", ONCE, ""), &["i-on".into()], None).await.unwrap();
    assert_eq!(s.expire_undelivered("2026-11-21T00:00:00Z").await.unwrap(), 1);
    assert_eq!(s.targets("t-on").await.unwrap()[0].error_code, Some(ErrorCode::DeliveryTimeout));
    assert_eq!(s.targets("t-new").await.unwrap()[0].status, S::Pending);
}

async fn replicas_track_who_holds_each_agent(e: &Engine) {
    let (a, b) = (e.open().await, e.open().await);
    activation(&a, "act", 10).await;
    for i in ["i-1", "i-2"] {
        assert!(register(&a, "act", i).await);
    }
    let facts = HostFacts { hostname: "h".into(), ..Default::default() };
    a.hub_alive("hub-a").await.unwrap();
    b.hub_alive("hub-b").await.unwrap();
    a.instance_connected("i-1", "hub-a", 1, &facts, "10.0.0.1").await.unwrap();
    b.instance_connected("i-2", "hub-b", 1, &facts, "10.0.0.2").await.unwrap();
    // i-1 moves to hub-b; hub-a's late disconnect must not take it offline.
    b.instance_connected("i-1", "hub-b", 1, &facts, "10.0.0.1").await.unwrap();
    a.instance_disconnected("i-1", "hub-a", 1).await.unwrap();
    assert!(b.get_instance("i-1").await.unwrap().unwrap().online);
    assert_eq!(b.get_instance("i-1").await.unwrap().unwrap().facts.hostname, "h");
    // i-1 reconnects to hub-b (session 2) while session 1's end is still
    // being written: that "offline" landing last must not hide session 2.
    b.instance_connected("i-1", "hub-b", 2, &facts, "10.0.0.1").await.unwrap();
    b.instance_disconnected("i-1", "hub-b", 1).await.unwrap();
    assert!(b.get_instance("i-1").await.unwrap().unwrap().online, "a stale session's end is ignored");
    b.instance_disconnected("i-1", "hub-b", 2).await.unwrap();
    assert!(!b.get_instance("i-1").await.unwrap().unwrap().online, "the current session's end takes it offline");
    b.instance_connected("i-1", "hub-b", 3, &facts, "10.0.0.1").await.unwrap();

    // Work owed to hub-b's agents, and only theirs.
    a.create_invocation(&invocation("t-1", "2026-11-23T00:00:00Z", ONCE, ""), &["i-1".into(), "i-2".into(), "i-9".into()], None)
        .await
        .unwrap();
    let owed = b.stalled("hub-b", "2099-01-01T00:00:00Z", 10).await.unwrap();
    let mut ids: Vec<_> = owed.iter().map(|(i, inv, st)| (i.as_str(), inv.as_str(), *st)).collect();
    ids.sort_by(|x, y| (x.0, x.1).cmp(&(y.0, y.1)));
    assert_eq!(ids, [("i-1", "t-1", S::Pending), ("i-2", "t-1", S::Pending)]);
    assert!(a.stalled("hub-a", "2099-01-01T00:00:00Z", 10).await.unwrap().is_empty());
    // Too recent to count as stalled.
    assert!(b.stalled("hub-b", "2000-01-01T00:00:00Z", 10).await.unwrap().is_empty());

    // hub-b stops heartbeating: a cutoff after its last beat releases its agents.
    assert_eq!(a.release_dead_hubs("2099-01-01T00:00:00Z").await.unwrap(), 2);
    assert!(!a.get_instance("i-2").await.unwrap().unwrap().online);
    // It was only slow: its next beat brings the agents it holds back.
    b.hub_alive("hub-b").await.unwrap();
    assert!(a.get_instance("i-2").await.unwrap().unwrap().online);
    // A clean disconnect is final.
    b.instance_disconnected("i-2", "hub-b", 1).await.unwrap();
    b.hub_alive("hub-b").await.unwrap();
    assert!(!a.get_instance("i-2").await.unwrap().unwrap().online);
}

/// Sessions starting and ending go through the group commit: within one
/// batch each sees the ones queued before it, as separate writes would.
async fn sessions_in_one_batch_keep_their_order(e: &Engine) {
    let s = e.open().await;
    activation(&s, "act", 10).await;
    for i in ["i-1", "i-2", "i-3"] {
        assert!(register(&s, "act", i).await);
    }
    let facts = HostFacts { hostname: "batched".into(), ..Default::default() };
    let connected = |id: &str, session: u64| WriteOp::Connected {
        instance_id: id.into(),
        hub_id: "hub-a".into(),
        session,
        facts: facts.clone(),
        ip: "10.0.0.7".into(),
    };
    let ended = |id: &str, session: u64| WriteOp::Disconnected { instance_id: id.into(), hub_id: "hub-a".into(), session };
    let effects = s
        .apply_batch(&[
            // i-1: a session that ends in the same batch.
            connected("i-1", 1),
            ended("i-1", 1),
            // i-2: reconnects; the old session's end, queued after, is stale.
            connected("i-2", 1),
            connected("i-2", 2),
            ended("i-2", 1),
            // i-3: its end, then a new session.
            connected("i-3", 1),
            ended("i-3", 1),
            connected("i-3", 2),
            // Not registered: nothing to change, nothing refused.
            connected("i-none", 1),
        ])
        .await
        .unwrap();
    assert_eq!(effects.len(), 9);
    assert!(effects.iter().all(|e| *e == ReportEffect::Applied), "{effects:?}");
    let one = s.get_instance("i-1").await.unwrap().unwrap();
    assert!(!one.online, "i-1's session ended in the batch");
    let two = s.get_instance("i-2").await.unwrap().unwrap();
    assert!(two.online, "a stale session's end is ignored");
    assert_eq!((two.facts.hostname.as_str(), two.ip.as_str()), ("batched", "10.0.0.7"));
    assert!(s.get_instance("i-3").await.unwrap().unwrap().online, "the session after the end holds");
    assert!(s.get_instance("i-none").await.unwrap().is_none());
    // The store's own calls are the same operation.
    s.instance_disconnected("i-2", "hub-a", 2).await.unwrap();
    assert!(!s.get_instance("i-2").await.unwrap().unwrap().online);
}

async fn announcements_reach_every_replica(e: &Engine) {
    let (a, b) = (e.open().await, e.open().await);
    if e.db.is_none() {
        assert!(!a.shared());
        assert!(a.subscribe().is_none(), "a store only one hub uses has no announcements");
        a.publish("ignored").await.unwrap();
        return;
    }
    assert!(a.shared());
    let mut rx = b.subscribe().expect("PostgreSQL store announces");
    let first = tokio::time::timeout(std::time::Duration::from_secs(10), rx.recv()).await.unwrap();
    assert_eq!(first, Some(Notice::Resync), "a new subscription starts with a resync");
    for i in 0..3 {
        a.publish(&format!("{{\"n\":{i}}}")).await.unwrap();
    }
    for i in 0..3 {
        let got = tokio::time::timeout(std::time::Duration::from_secs(10), rx.recv()).await.unwrap();
        assert_eq!(got, Some(Notice::Message(format!("{{\"n\":{i}}}"))));
    }
}

/// 25 invocations, 12 of them running: the status filter runs in SQL on
/// the kept aggregates, so pages hold 10 + 2 and TotalCount is 12.
async fn status_filter_pages_in_sql_on_kept_counts(e: &Engine) {
    let s = e.open().await;
    for i in 0..25 {
        let id = format!("t-{i:02}");
        s.create_invocation(&invocation(&id, &format!("2026-11-23T00:00:{i:02}Z"), ONCE, ""), &["i-1".into()], None).await.unwrap();
        // 12 running, 4 succeeded, 9 never started.
        let mut ops = vec![WriteOp::Delivered { invoke_id: id.clone(), instance_id: "i-1".into() }];
        if i < 12 {
            ops.push(report(&id, 0, S::Running, b""));
        } else if i < 16 {
            ops.push(report(&id, 0, S::Success, b"ok"));
        }
        s.apply_batch(&ops).await.unwrap();
    }
    let running = InvocationFilter { status: Some((Some(InvokeStatus::Running), Some(InvocationOverall::Running))), ..Default::default() };
    let (first, total) = s.list_invocations(&running, page(0, 10)).await.unwrap();
    assert_eq!((first.len(), total), (10, 12), "{first:?}");
    let (second, total2) = s.list_invocations(&running, page(10, 10)).await.unwrap();
    assert_eq!((second.len(), total2), (2, 12));
    assert!(first.iter().chain(&second).all(|i| i.invocation_status() == InvocationOverall::Running));
    // The current vocabulary alone, and a legacy-only name.
    let success = InvocationFilter { status: Some((None, Some(InvocationOverall::Success))), ..Default::default() };
    assert_eq!(s.list_invocations(&success, page(0, 50)).await.unwrap().1, 4);
    let finished = InvocationFilter { status: Some((Some(InvokeStatus::Finished), None)), ..Default::default() };
    assert_eq!(s.list_invocations(&finished, page(0, 50)).await.unwrap().1, 4);
    // No target is read for a listing; InvokeInstances are read per invocation, bounded.
    let some = s.some_targets("t-01", 100, false).await.unwrap();
    assert_eq!((some.len(), some[0].status, some[0].output.len()), (1, S::Running, 0));
}

async fn history_pages_in_sql(e: &Engine) {
    let s = e.open().await;
    s.create_invocation(&invocation("t-h", "2026-11-23T00:00:00Z", RepeatMode::Period, "rate(1m)"), &["i-1".into(), "i-2".into()], None)
        .await
        .unwrap();
    for seq in 1..=5 {
        s.apply_batch(&[report("t-h", seq, S::Success, format!("fire {seq}").as_bytes())]).await.unwrap();
    }
    let f = InvocationFilter { invoke_id: Some("t-h".into()), ..Default::default() };
    // Five records of i-1 and one row for i-2, which has none yet.
    let (rows, total) = s.list_history(&f, &[], page(0, 4)).await.unwrap();
    assert_eq!((rows.len(), total), (4, 6));
    assert_eq!(rows.iter().map(|r| r.record_seq).collect::<Vec<_>>(), [Some(1), Some(2), Some(3), Some(4)]);
    assert_eq!(rows[0].output, b"fire 1");
    let (rows, _) = s.list_history(&f, &[], page(4, 4)).await.unwrap();
    assert_eq!(
        rows.iter().map(|r| (r.instance_id.as_str(), r.record_seq, r.status)).collect::<Vec<_>>(),
        [("i-1", Some(5), S::Success), ("i-2", None, S::Pending)]
    );
    let (rows, total) = s.list_history(&f, &[S::Pending], page(0, 10)).await.unwrap();
    assert_eq!((rows.len(), total), (1, 1));
}

async fn bad_output_is_refused_not_stored_empty(e: &Engine) {
    let s = e.open().await;
    s.create_invocation(&invocation("t-b", "2026-11-23T00:00:00Z", ONCE, ""), &["i-1".into()], None).await.unwrap();
    let mut bad = report("t-b", 0, S::Success, b"");
    if let WriteOp::Report { report, .. } = &mut bad {
        report.output_b64 = "not base64!".into();
    }
    let effects = s.apply_batch(&[bad]).await.unwrap();
    assert!(matches!(&effects[0], ReportEffect::Refused(why) if why.contains("output_b64")), "{effects:?}");
    assert_eq!(s.targets("t-b").await.unwrap()[0].status, S::Pending);
    assert!(s.records("t-b", "i-1").await.unwrap().is_empty());
}

async fn deregistering_releases_unsettled_targets(e: &Engine) {
    let s = e.open().await;
    activation(&s, "act", 5).await;
    assert!(register(&s, "act", "i-1").await);
    s.create_invocation(&invocation("t-d", "2026-11-23T00:00:00Z", ONCE, ""), &["i-1".into()], None).await.unwrap();
    s.create_invocation(&invocation("t-r", "2026-11-23T00:00:01Z", ONCE, ""), &["i-1".into()], None).await.unwrap();
    s.apply_batch(&[WriteOp::Delivered { invoke_id: "t-r".into(), instance_id: "i-1".into() }, report("t-r", 0, S::Running, b"")])
        .await
        .unwrap();
    assert!(s.deregister_instance("i-1").await.unwrap());
    let never = &s.targets("t-d").await.unwrap()[0];
    assert_eq!((never.status, never.error_code.clone()), (S::Aborted, Some(ErrorCode::InstanceReleased)));
    let running = &s.targets("t-r").await.unwrap()[0];
    assert_eq!((running.status, running.error_code.clone()), (S::Error, Some(ErrorCode::InstanceReleased)));
    assert_eq!(s.get_invocation("t-r").await.unwrap().unwrap().invocation_status(), InvocationOverall::Failed);
}

/// A full disk is told apart from other failures: SQLite's own page limit
/// (`max_page_count`) produces the same SQLITE_FULL a full disk does.
#[tokio::test]
async fn full_database_is_classified_as_disk_full() {
    use sqlx::{Connection, Executor};
    let dir = tempfile::tempdir().unwrap();
    let mut c =
        sqlx::sqlite::SqliteConnection::connect(&format!("sqlite://{}?mode=rwc", dir.path().join("full.db").display())).await.unwrap();
    c.execute("CREATE TABLE t (b BLOB)").await.unwrap();
    let pages: i64 = sqlx::query_scalar("PRAGMA page_count").fetch_one(&mut c).await.unwrap();
    c.execute(sqlx::AssertSqlSafe(format!("PRAGMA max_page_count = {pages}"))).await.unwrap();
    let err = sqlx::query("INSERT INTO t VALUES (zeroblob(1000000))").execute(&mut c).await.unwrap_err();
    let e = StoreError::classify(err);
    assert!(e.is_disk_full(), "{e:?}");
    assert!(e.to_string().starts_with("the hub's database disk is full"), "{e}");
    let busy = StoreError::classify(sqlx::Error::PoolTimedOut);
    assert!(matches!(busy, StoreError::Busy(_)) && !busy.is_disk_full());
}

/// A report of `status` from `instance` on record 0 of `invoke_id`.
fn report_from(invoke_id: &str, instance: &str, status: S) -> WriteOp {
    match report(invoke_id, 0, status, b"out") {
        WriteOp::Report { mut report, .. } => {
            report.exit_code = Some(if status == S::Success { 0 } else { 1 });
            WriteOp::Report { instance_id: instance.into(), report }
        }
        other => other,
    }
}

fn windowed(id: &str, max_concurrency: i64, max_errors: Option<i64>, unreachable: &[&str]) -> InvocationRow {
    let mut inv = invocation(id, "2026-11-23T00:00:00Z", ONCE, "");
    inv.window = Window { max_concurrency, max_errors, batch_wait_secs: 0 };
    inv.unreachable = unreachable.iter().map(|s| s.to_string()).collect();
    inv
}

/// Non-final targets the window has let go (what replicas deliver).
async fn in_flight(s: &SqlStore, id: &str) -> Vec<String> {
    s.deliveries(id).await.unwrap().into_iter().map(|d| d.instance_id).collect()
}

async fn rollout_window_releases_in_order_and_halts_on_errors(e: &Engine) {
    let s = e.open().await;
    let mut released = s.released();
    let ids: Vec<String> = (1..=7).map(|i| format!("i-{i}")).collect();
    s.create_invocation(&windowed("t-w", 2, Some(2), &["i-7"]), &ids, None).await.unwrap();
    // The first window, in instance order; the offline match is settled at once.
    assert_eq!(in_flight(&s, "t-w").await, ["i-1", "i-2"]);
    let t = s.targets("t-w").await.unwrap();
    assert_eq!((t[6].status, t[6].error_code.clone()), (S::Aborted, Some(ErrorCode::ClientNotRunning)));
    assert_eq!(t[6].error_info, "the aliyun service is not running on the instance");
    let inv = s.get_invocation("t-w").await.unwrap().unwrap();
    assert_eq!((inv.counts.get(S::Pending), inv.counts.get(S::Aborted)), (6, 1));
    assert_eq!(inv.window, Window { max_concurrency: 2, max_errors: Some(2), batch_wait_secs: 0 });
    // Held targets are owed to nobody: a reconnecting agent is not sent them.
    assert!(s.undelivered_for("i-3").await.unwrap().is_empty());
    assert_eq!(s.undelivered_for("i-1").await.unwrap().len(), 1);
    // A held target never expires: its delivery timeout starts at release.
    assert_eq!(s.expire_undelivered("2026-11-24T00:00:00Z").await.unwrap(), 2);
    assert_eq!(in_flight(&s, "t-w").await, ["i-3", "i-4"], "expiry frees the slots in the same transaction");
    // The offline match never counts as an error (it never started): 2 errors, MaxErrors 2.
    assert!(s.targets("t-w").await.unwrap().iter().all(|t| t.status != S::Cancelled));
    while released.try_recv().is_ok() {}

    s.create_invocation(&windowed("t-x", 2, Some(1), &[]), &ids, None).await.unwrap();
    s.apply_batch(&[report_from("t-x", "i-1", S::Success)]).await.unwrap();
    let r = released.try_recv().expect("a release is announced after commit");
    assert_eq!((r.invoke_id.as_str(), r.instances.clone()), ("t-x", vec!["i-3".to_string()]));
    assert_eq!(in_flight(&s, "t-x").await, ["i-2", "i-3"]);
    s.apply_batch(&[report_from("t-x", "i-2", S::Failed)]).await.unwrap();
    assert_eq!(in_flight(&s, "t-x").await, ["i-3", "i-4"], "one error is within MaxErrors 1");
    // The second error exceeds MaxErrors: the held end Cancelled, the running run on.
    s.apply_batch(&[report_from("t-x", "i-3", S::Timeout)]).await.unwrap();
    assert_eq!(in_flight(&s, "t-x").await, ["i-4"]);
    let st: Vec<S> = s.targets("t-x").await.unwrap().iter().map(|t| t.status).collect();
    assert_eq!(st, [S::Success, S::Failed, S::Timeout, S::Pending, S::Cancelled, S::Cancelled, S::Cancelled]);
    let t = s.targets("t-x").await.unwrap();
    assert!(t[4..].iter().all(|t| t.error_code == Some(ErrorCode::MaxErrorsExceeded)));
    assert!(t[4].error_info.contains("2 targets ended in error, more than MaxErrors 1"), "{}", t[4].error_info);
    s.apply_batch(&[report_from("t-x", "i-4", S::Success)]).await.unwrap();
    let inv = s.get_invocation("t-x").await.unwrap().unwrap();
    assert_eq!(inv.invocation_status(), InvocationOverall::PartialFailed);
    // The backstop finds nothing left to move.
    assert!(s.advance_windows().await.unwrap().is_empty());
}

async fn two_replicas_share_one_window(e: &Engine) {
    let (a, b) = (e.open().await, e.open().await);
    let ids: Vec<String> = (10..40).map(|i| format!("i-{i}")).collect();
    a.create_invocation(&windowed("t-r", 3, None, &[]), &ids, None).await.unwrap();
    let mut done = 0;
    let mut peak = 0;
    while done < ids.len() {
        let now = in_flight(&a, "t-r").await;
        assert!(now.len() <= 3, "window exceeded: {now:?}");
        peak = peak.max(now.len());
        // Two replicas settle two targets of the window at the same moment.
        let (x, y) = (now.first().cloned(), now.get(1).cloned());
        let fa = async {
            if let Some(x) = &x {
                a.apply_batch(&[report_from("t-r", x, S::Success)]).await.unwrap();
            }
        };
        let fb = async {
            if let Some(y) = &y {
                b.apply_batch(&[report_from("t-r", y, S::Success)]).await.unwrap();
            }
        };
        tokio::join!(fa, fb);
        done += usize::from(x.is_some()) + usize::from(y.is_some());
        // Either replica's backstop pass may run meanwhile; neither overfills.
        let _ = b.advance_windows().await.unwrap();
    }
    assert_eq!(peak, 3);
    let inv = a.get_invocation("t-r").await.unwrap().unwrap();
    assert_eq!(inv.counts.get(S::Success), ids.len() as i64);
}

async fn batch_wait_spaces_releases_by_the_hub_clock(e: &Engine) {
    let s = e.open().await;
    let mut inv = windowed("t-b", 1, None, &[]);
    inv.window.batch_wait_secs = 2;
    s.create_invocation(&inv, &["i-1".into(), "i-2".into()], None).await.unwrap();
    assert_eq!(in_flight(&s, "t-b").await, ["i-1"]);
    // The report carries the agent's (old) finish time; the wait counts
    // from when the hub committed the result.
    s.apply_batch(&[report_from("t-b", "i-1", S::Success)]).await.unwrap();
    let settled = std::time::Instant::now();
    assert!(in_flight(&s, "t-b").await.is_empty(), "the slot is free but BatchWait holds the next target");
    let released = loop {
        let r = s.advance_windows().await.unwrap();
        if !r.is_empty() {
            break r;
        }
        assert!(settled.elapsed() < std::time::Duration::from_secs(10), "never released");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    };
    // Stored times have whole seconds: 2 s after the settle second is at
    // least 1 s after the settle itself.
    assert!(settled.elapsed() >= std::time::Duration::from_secs(1), "released after {:?}", settled.elapsed());
    assert_eq!(released, [Released { invoke_id: "t-b".into(), instances: vec!["i-2".into()] }]);
}

/// Issue #18: a key written through one replica is seen (and its disabling
/// takes effect) through another at once; the audit trail filters, pages
/// newest first and prunes by age.
async fn access_keys_and_audit_events_round_trip_across_replicas(e: &Engine) {
    let a = e.open().await;
    let b = e.open().await;
    let key = AccessKeyRow {
        key_id: "LTAIdh01".into(),
        secret: "s3cret".into(),
        description: "ci".into(),
        enabled: true,
        policy: r#"{"Statement":[]}"#.into(),
        created_at: "2026-11-24T08:00:00Z".into(),
        updated_at: "2026-11-24T08:00:00Z".into(),
    };
    a.create_access_key(&key).await.unwrap();
    assert!(a.create_access_key(&key).await.is_err(), "duplicate id must be refused");
    let seen = b.get_access_key("LTAIdh01").await.unwrap().expect("visible on the other replica");
    assert_eq!((seen.secret.as_str(), seen.enabled, seen.policy.as_str()), ("s3cret", true, key.policy.as_str()));
    assert!(a.set_access_key_enabled("LTAIdh01", false).await.unwrap());
    assert!(!b.get_access_key("LTAIdh01").await.unwrap().unwrap().enabled, "disabled at once on every replica");
    assert!(b.set_access_key_policy("LTAIdh01", "").await.unwrap());
    assert_eq!(a.get_access_key("LTAIdh01").await.unwrap().unwrap().policy, "");
    assert!(!a.set_access_key_enabled("nope", true).await.unwrap());
    assert_eq!(a.list_access_keys(page(0, 10)).await.unwrap().1, 1);
    assert!(b.delete_access_key("LTAIdh01").await.unwrap());
    assert!(a.get_access_key("LTAIdh01").await.unwrap().is_none());

    let ev = |n: u32, key: &str, action: &str| AuditEvent {
        event_id: format!("e{n:03}"),
        at: format!("2026-11-{:02}T00:00:00Z", 10 + n),
        key_id: key.into(),
        source: "127.0.0.1".into(),
        action: action.into(),
        targets: "i-1".into(),
        outcome: "Success".into(),
        request_id: format!("R{n}"),
        invoke_id: String::new(),
        detail: String::new(),
    };
    for (n, k, act) in [(1, "k1", "RunCommand"), (2, "k2", "RunCommand"), (3, "k1", "DeleteCommand"), (4, "k1", "RunCommand")] {
        a.record_audit(&ev(n, k, act)).await.unwrap();
    }
    let f = AuditFilter { key_id: Some("k1".into()), action: Some("RunCommand".into()), ..Default::default() };
    let (rows, total) = b.list_audit(&f, page(0, 1)).await.unwrap();
    assert_eq!(total, 2);
    assert_eq!(rows.iter().map(|r| r.event_id.as_str()).collect::<Vec<_>>(), ["e004"], "newest first");
    let since = AuditFilter { since: Some("2026-11-13T00:00:00Z".into()), ..Default::default() };
    assert_eq!(b.list_audit(&since, page(0, 10)).await.unwrap().1, 2);
    assert_eq!(a.prune_audit("2026-11-13T00:00:00Z", 1000).await.unwrap(), 2);
    assert_eq!(b.list_audit(&AuditFilter::default(), page(0, 10)).await.unwrap().1, 2);
    // The count bound: the newest one is kept, by time.
    assert_eq!(a.prune_audit("2026-11-13T00:00:00Z", 1).await.unwrap(), 1);
    let (left, total) = b.list_audit(&AuditFilter::default(), page(0, 10)).await.unwrap();
    assert_eq!((total, left[0].event_id.as_str()), (1, "e004"));
    assert_eq!(a.prune_audit("2026-11-13T00:00:00Z", 1).await.unwrap(), 0);
}

/// Issue #21: targets go in as multi-row INSERTs (1,201 spans three
/// statements), and the `/metrics` state figures sum the kept counts.
async fn many_targets_insert_in_batches_and_state_counts_sum_them(e: &Engine) {
    let s = e.open().await;
    let empty = s.state_counts().await.unwrap();
    assert!(empty.invocations.is_empty(), "{empty:?}");
    assert_eq!(empty.targets.total(), 0);
    let many: Vec<String> = (0..1201).map(|i| format!("i-{i:04}")).collect();
    s.create_invocation(&invocation("t-many", "2026-11-23T00:00:00Z", ONCE, ""), &many, None).await.unwrap();
    let stored = s.targets("t-many").await.unwrap();
    assert_eq!(stored.len(), many.len());
    assert_eq!(stored.iter().map(|t| t.instance_id.clone()).collect::<Vec<_>>(), many, "every target, in order");
    assert!(stored.iter().all(|t| t.status == S::Pending));
    s.create_invocation(&invocation("t-one", "2026-11-23T00:00:01Z", ONCE, ""), &["i-1".into()], None).await.unwrap();
    s.apply_batch(&[WriteOp::Delivered { invoke_id: "t-one".into(), instance_id: "i-1".into() }, report("t-one", 0, S::Success, b"ok")])
        .await
        .unwrap();
    let c = s.state_counts().await.unwrap();
    assert_eq!(c.targets.get(S::Pending), 1201);
    assert_eq!(c.targets.get(S::Success), 1);
    assert_eq!(c.targets.total(), 1202);
    let mut inv = c.invocations.clone();
    inv.sort_by_key(|(st, _)| st.as_str());
    assert_eq!(inv, vec![(InvocationOverall::Pending, 1), (InvocationOverall::Success, 1)]);
}

/// A batch larger than the largest statement shape (256 rows): 1,201
/// deliveries, 600 results and 1,201 heartbeats over three invocations are
/// cut into statements of several shapes (256, 128, …, 1), and every op is
/// applied once.
async fn a_batch_cut_into_statement_shapes_applies_every_op(e: &Engine) {
    let s = e.open().await;
    let many: Vec<String> = (0..1201).map(|i| format!("i-{i:04}")).collect();
    let inv_of = |n: usize| format!("t-shapes-{}", n % 3);
    for k in 0..3 {
        let mine: Vec<String> = many.iter().enumerate().filter(|(n, _)| n % 3 == k).map(|(_, i)| i.clone()).collect();
        s.create_invocation(&invocation(&inv_of(k), "2026-11-23T00:00:00Z", ONCE, ""), &mine, None).await.unwrap();
    }
    // 300 of the instances exist (two shapes of heartbeat rows); the others'
    // heartbeats touch nothing.
    activation(&s, "a-shapes", 300).await;
    for id in many.iter().take(300) {
        assert!(register(&s, "a-shapes", id).await);
    }
    let mut ops: Vec<WriteOp> =
        many.iter().enumerate().map(|(n, i)| WriteOp::Delivered { invoke_id: inv_of(n), instance_id: i.clone() }).collect();
    ops.extend(many.iter().enumerate().take(600).map(|(n, i)| report_from(&inv_of(n), i, S::Success)));
    ops.extend(many.iter().map(|i| WriteOp::Touch { instance_id: i.clone() }));
    let effects = s.apply_batch(&ops).await.unwrap();
    assert_eq!(effects.len(), ops.len());
    assert!(effects.iter().all(|e| *e == ReportEffect::Applied), "{:?}", effects.iter().find(|e| **e != ReportEffect::Applied));
    for k in 0..3 {
        let counts = s.get_invocation(&inv_of(k)).await.unwrap().unwrap().counts;
        assert_eq!(counts.get(S::Success), 200, "{}: its counts moved with its targets", inv_of(k));
        let t = s.targets(&inv_of(k)).await.unwrap();
        assert_eq!(t.len(), (1201 + 2 - k) / 3, "{}", inv_of(k));
        for row in &t {
            let n: usize = row.instance_id.trim_start_matches("i-").parse().unwrap();
            assert!(row.delivered, "{} not delivered", row.instance_id);
            let rec = s.records(&inv_of(k), &row.instance_id).await.unwrap();
            if n < 600 {
                assert_eq!((row.status, row.exit_code), (S::Success, Some(0)), "{}", row.instance_id);
                assert_eq!(rec.len(), 1, "{}", row.instance_id);
                assert_eq!((rec[0].status, rec[0].output.as_slice()), (S::Success, b"out".as_slice()), "{}", row.instance_id);
            } else {
                assert!(!row.status.is_final(), "{} is {:?} without a result", row.instance_id, row.status);
                assert!(rec.is_empty(), "{}", row.instance_id);
            }
        }
    }
    for id in many.iter().take(300) {
        let inst = s.get_instance(id).await.unwrap().unwrap();
        assert!(!inst.last_seen.is_empty(), "{id}: heartbeat not applied");
    }
    let c = s.state_counts().await.unwrap();
    assert_eq!(c.targets.get(S::Success), 600);
    assert_eq!(c.targets.total(), 1201);
    let mut invs = c.invocations.clone();
    invs.sort_by_key(|(st, _)| st.as_str());
    assert_eq!(invs.iter().map(|(_, n)| n).sum::<i64>(), 3, "{invs:?}");
}

/// The console's Overview: two grouped queries, the same answer on both engines.
async fn overview_counts_instances_and_invocations_by_hour(e: &Engine) {
    let s = e.open().await;
    activation(&s, "a-1", 5).await;
    for id in ["i-1", "i-2", "i-3"] {
        assert!(register(&s, "a-1", id).await);
    }
    s.instance_connected("i-1", "hub-a", 1, &HostFacts::default(), "10.0.0.1").await.unwrap();
    for (id, at) in [
        ("t-old", "2026-11-22T00:00:00Z"),
        ("t-a", "2026-11-23T01:10:00Z"),
        ("t-b", "2026-11-23T01:50:00Z"),
        ("t-c", "2026-11-23T02:05:00Z"),
    ] {
        s.create_invocation(&invocation(id, at, ONCE, ""), &["i-1".to_string()], None).await.unwrap();
    }
    let o = s.overview("2026-11-23T00:00:00Z").await.unwrap();
    assert_eq!((o.online, o.offline), (1, 2));
    assert_eq!(
        o.invocations,
        vec![("2026-11-23T01".to_string(), InvocationOverall::Pending, 2), ("2026-11-23T02".to_string(), InvocationOverall::Pending, 1)],
        "the invocation before the window is not counted"
    );
}

/// SendFile (issue #19): content stored once per digest in chunks, a file
/// delivery round-trips with its spec, a chunk is served only to a target
/// of a delivery using it, and command listings leave file deliveries out.
async fn file_content_is_stored_once_and_served_only_to_targets(e: &Engine) {
    use deckhand::protocol::FileSpec;
    let s = e.open().await;
    activation(&s, "act", 10).await;
    assert!(register(&s, "act", "i-1").await);
    assert!(register(&s, "act", "i-2").await);
    let sha = "ab".repeat(32);
    assert_eq!(s.file_content(&sha).await.unwrap(), None);
    s.put_file_chunk(&sha, 5, 1, b"ef").await.unwrap();
    assert_eq!(s.file_content(&sha).await.unwrap(), Some(FileContent { size: 5, chunks_present: 1, verified: false }));
    s.put_file_chunk(&sha, 5, 0, b"abc").await.unwrap();
    // Again (a retried upload, or another delivery's): kept once, unchanged.
    s.put_file_chunk(&sha, 5, 0, b"xyz").await.unwrap();
    assert_eq!(s.file_content(&sha).await.unwrap(), Some(FileContent { size: 5, chunks_present: 2, verified: false }));
    assert_eq!(s.file_chunk(&sha, 0).await.unwrap().as_deref(), Some(&b"abc"[..]));
    let spec = FileSpec {
        name: "app.conf".into(),
        target_dir: "/etc/app".into(),
        mode: "0640".into(),
        owner: String::new(),
        group: "adm".into(),
        overwrite: true,
        size: 5,
        sha256: sha.clone(),
    };
    let mut inv = invocation("f-1", "2026-11-23T00:00:00Z", ONCE, "");
    inv.command_type = CommandType::SendFile;
    inv.command_name = "app.conf".into();
    inv.file = Some(FileRow { spec: spec.clone(), description: "d".into(), content_type: "Base64".into() });
    s.create_invocation(&inv, &["i-1".into()], None).await.unwrap();
    s.create_invocation(&invocation("t-cmd", "2026-11-23T00:00:01Z", ONCE, ""), &["i-1".into()], None).await.unwrap();
    let back = s.get_invocation("f-1").await.unwrap().unwrap();
    assert_eq!(back.file.as_ref().map(|f| &f.spec), Some(&spec));
    assert!(s.get_invocation("t-cmd").await.unwrap().unwrap().file.is_none());
    // The wire form carries the spec for the agent.
    let owed = s.undelivered_for("i-1").await.unwrap();
    let wire = owed.iter().find(|o| o.invocation.invoke_id == "f-1").unwrap();
    assert_eq!(wire.invocation.file.as_deref(), Some(&spec));
    assert_eq!(s.file_chunk_for("f-1", "i-1", 1).await.unwrap().as_deref(), Some(&b"ef"[..]));
    assert_eq!(s.file_chunk_for("f-1", "i-2", 0).await.unwrap(), None, "not a target");
    assert_eq!(s.file_chunk_for("f-1", "i-1", 2).await.unwrap(), None, "no such chunk");
    assert_eq!(s.file_chunk_for("t-cmd", "i-1", 0).await.unwrap(), None, "a command has no content");
    // Listings: commands by default, file deliveries only when asked for (by name too).
    let (cmds, _) = s.list_invocations(&InvocationFilter::default(), page(0, 10)).await.unwrap();
    assert_eq!(cmds.iter().map(|i| i.invoke_id.as_str()).collect::<Vec<_>>(), vec!["t-cmd"]);
    let files = InvocationFilter { command_type: Some(CommandType::SendFile), file_name: Some("app.conf".into()), ..Default::default() };
    let (found, total) = s.list_invocations(&files, page(0, 10)).await.unwrap();
    assert_eq!((found.len(), total, found[0].invoke_id.as_str()), (1, 1, "f-1"));
    let none = InvocationFilter { command_type: Some(CommandType::SendFile), file_name: Some("other".into()), ..Default::default() };
    assert_eq!(s.list_invocations(&none, page(0, 10)).await.unwrap().1, 0);
    s.delete_file_content(&sha).await.unwrap();
    assert_eq!(s.file_content(&sha).await.unwrap(), None);
    assert_eq!(s.file_chunk(&sha, 0).await.unwrap(), None);
}

/// Stored contents (docs/files.md, "How long contents are kept"): an idle
/// upload is pruned after the retention; one a delivery not yet settled
/// needs is kept whatever its age, and goes once the delivery settles; a
/// small one a delivery names is kept (DescribeSendFileResults shows it);
/// verification is remembered; the store's total is what the bound sees.
async fn file_contents_are_kept_while_used_and_pruned_after(e: &Engine) {
    use deckhand::protocol::{FileSpec, MAX_FILE_CONTENT_BYTES};
    let s = e.open().await;
    activation(&s, "act", 10).await;
    assert!(register(&s, "act", "i-1").await);
    let big = MAX_FILE_CONTENT_BYTES as i64 + 1;
    let (idle, needed, small) = ("11".repeat(32), "22".repeat(32), "33".repeat(32));
    s.put_file_chunk(&idle, big, 0, b"x").await.unwrap();
    s.put_file_chunk(&needed, big, 0, b"y").await.unwrap();
    s.put_file_chunk(&small, 3, 0, b"abc").await.unwrap();
    assert_eq!(s.file_store_bytes().await.unwrap(), 2 * big + 3);
    assert!(s.touch_file_content(&needed, true).await.unwrap());
    assert!(s.file_content(&needed).await.unwrap().unwrap().verified);
    assert!(!s.touch_file_content(&"44".repeat(32), true).await.unwrap(), "no such content");
    let delivery = |id: &str, sha: &str, size: i64| {
        let mut inv = invocation(id, "2026-11-23T00:00:00Z", ONCE, "");
        inv.command_type = CommandType::SendFile;
        let spec = FileSpec {
            name: "f".into(),
            target_dir: "/tmp".into(),
            mode: "0644".into(),
            owner: String::new(),
            group: String::new(),
            overwrite: true,
            size: size as u64,
            sha256: sha.to_string(),
        };
        inv.file = Some(FileRow { spec, description: String::new(), content_type: "Base64".into() });
        inv
    };
    s.create_invocation(&delivery("f-needed", &needed, big), &["i-1".into()], None).await.unwrap();
    s.create_invocation(&delivery("f-small", &small, 3), &["i-1".into()], None).await.unwrap();
    // Nothing is older than a cutoff in the past.
    assert_eq!(s.prune_file_contents("2000-01-01T00:00:00Z").await.unwrap(), 0);
    // Everything is older than one in the future: only the idle upload goes.
    let future = "2999-01-01T00:00:00Z";
    assert_eq!(s.prune_file_contents(future).await.unwrap(), 1);
    assert_eq!(s.file_content(&idle).await.unwrap(), None);
    assert_eq!(s.file_chunk(&idle, 0).await.unwrap(), None, "its chunks go with it");
    assert!(s.file_content(&needed).await.unwrap().is_some(), "a pending delivery still pulls it");
    // The delivery settles: its large content is no longer needed.
    s.apply_batch(&[WriteOp::Delivered { invoke_id: "f-needed".into(), instance_id: "i-1".into() }]).await.unwrap();
    s.apply_batch(&[report("f-needed", 0, S::Success, b"")]).await.unwrap();
    assert_eq!(s.prune_file_contents(future).await.unwrap(), 1);
    assert_eq!(s.file_content(&needed).await.unwrap(), None);
    // The small one stays while a delivery names it, settled or not.
    s.apply_batch(&[WriteOp::Delivered { invoke_id: "f-small".into(), instance_id: "i-1".into() }]).await.unwrap();
    s.apply_batch(&[report("f-small", 0, S::Success, b"")]).await.unwrap();
    assert_eq!(s.prune_file_contents(future).await.unwrap(), 0);
    assert_eq!(s.file_store_bytes().await.unwrap(), 3);
}

/// Agent self-update (issue #20): the offer slots are counted in the store,
/// so two replicas together never pass `percent` of the online fleet; a
/// chunk goes only to an agent offered that version, by any replica; a
/// failure is remembered by a new store handle (a restarted hub); a stale
/// offer frees its slot as a failure; reconnecting on the target settles.
async fn agent_update_slots_are_shared_by_replicas(e: &Engine) {
    use base64::Engine as _;
    use deckhand::hub::updates::{AgentUpdateFile, AgentUpdateState, Catalog};
    use deckhand::protocol::HubMsg;
    use sha2::Digest;
    let (a, b) = (e.open().await, e.open().await);
    activation(&a, "act", 10).await;
    for i in 0..4 {
        let id = format!("i-{i}");
        assert!(register(&a, "act", &id).await);
        a.instance_connected(&id, "hub-a", 1, &HostFacts::default(), "127.0.0.1").await.unwrap();
    }
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("agent-2"), b"build two").unwrap();
    let sig = base64::engine::general_purpose::STANDARD.encode([7u8; 64]);
    let digest = hex::encode(sha2::Sha256::digest(b"build two"));
    std::fs::write(
        dir.path().join("two.toml"),
        format!("version = \"2.0\"\nos = \"linux\"\narch = \"x86_64\"\nfile = \"agent-2\"\nsha256 = \"{digest}\"\nsignature = \"{sig}\"\n"),
    )
    .unwrap();
    let file = AgentUpdateFile { builds_dir: dir.path().into(), version: Some("2.0".into()), percent: Some(50), window: None };
    // One catalog per replica, as each hub process has its own.
    let (ca, cb) = (Catalog::load(&file).unwrap(), Catalog::load(&file).unwrap());
    let facts = |v: &str| HostFacts {
        os_type: "linux".into(),
        arch: "x86_64".into(),
        agent_version: v.into(),
        self_update: true,
        ..Default::default()
    };
    let now = chrono::Utc::now();
    assert!(matches!(ca.offer_for(a.as_ref(), "i-0", &facts("1.0"), now).await, Some(HubMsg::UpdateOffer { size: 9, .. })));
    assert!(ca.offer_for(a.as_ref(), "i-0", &facts("1.0"), now).await.is_none(), "one offer at a time per agent");
    assert!(cb.offer_for(b.as_ref(), "i-1", &facts("1.0"), now).await.is_some(), "the other replica takes the second slot");
    assert!(ca.offer_for(a.as_ref(), "i-2", &facts("1.0"), now).await.is_none(), "50% of 4 online is 2, across replicas");
    assert!(cb.offer_for(b.as_ref(), "i-3", &facts("1.0"), now).await.is_none());
    assert!(ca.offer_for(a.as_ref(), "i-3", &facts("2.0"), now).await.is_none(), "already there");
    let old = HostFacts { self_update: false, ..facts("1.0") };
    assert!(ca.offer_for(a.as_ref(), "i-3", &old, now).await.is_none(), "an agent that predates self-update is never offered a build");
    let Some(HubMsg::UpdateChunk { data_b64, .. }) = ca.chunk(a.as_ref(), "i-1", &facts("1.0"), "2.0", 0).await else {
        panic!("i-1 was offered the build by the other replica")
    };
    assert_eq!(base64::engine::general_purpose::STANDARD.decode(data_b64).unwrap(), b"build two");
    assert!(ca.chunk(a.as_ref(), "i-2", &facts("1.0"), "2.0", 0).await.is_none(), "not offered to i-2");
    assert!(ca.chunk(a.as_ref(), "i-1", &facts("1.0"), "2.0", 9).await.is_none(), "past the end");
    // i-1 fails; i-0 comes back on the target version.
    cb.result(b.as_ref(), "i-1", "2.0", false, "trial failed").await;
    ca.connected(a.as_ref(), "i-0", &facts("2.0")).await;
    let states = ca.states_of(a.as_ref(), &["i-0".into(), "i-1".into()]).await;
    assert_eq!(states, vec![("i-1".to_string(), AgentUpdateState::Failed { version: "2.0".into(), error: "trial failed".into() })]);
    let restarted = e.open().await;
    assert_eq!(
        restarted.claim_update("i-1", "2.0", 100, "2000-01-01T00:00:00Z").await.unwrap(),
        None,
        "a failed version is not offered again"
    );
    // A stale offer frees its slot, counted as a failure.
    assert_eq!(restarted.claim_update("i-2", "2.0", 1, "2000-01-01T00:00:00Z").await.unwrap(), Some(1));
    assert_eq!(restarted.claim_update("i-3", "2.0", 1, "2000-01-01T00:00:00Z").await.unwrap(), None, "one slot, taken");
    assert_eq!(restarted.claim_update("i-3", "2.0", 1, "2999-01-01T00:00:00Z").await.unwrap(), Some(1), "i-2's offer went stale");
    match ca.state_of(a.as_ref(), "i-2").await {
        Some(AgentUpdateState::Failed { error, .. }) => assert!(error.contains("no result within"), "{error}"),
        other => panic!("i-2: {other:?}"),
    }
}

fn fire_report(invoke_id: &str, instance: &str, seq: u32, status: S) -> WriteOp {
    match report_from(invoke_id, instance, status) {
        WriteOp::Report { mut report, instance_id } => {
            report.record_seq = seq;
            WriteOp::Report { instance_id, report }
        }
        other => other,
    }
}

/// Per-fire windows of a periodic invocation (issue #16, docs/fleet.md):
/// every target is sent at once; each fire's requests are granted at most
/// `MaxConcurrency` at a time, across two store handles (replicas); a
/// fire's errors beyond `MaxErrors` deny the rest of that fire only; the
/// next fire starts fresh; requests from non-targets, for far-off
/// instants or older fires are refused. A skipped fire keeps the target Running.
async fn periodic_windows_hold_each_fire_across_replicas(e: &Engine) {
    let (a, b) = (e.open().await, e.open().await);
    let mut announced = a.fire_answers();
    let ids: Vec<String> = (1..=4).map(|i| format!("i-{i}")).collect();
    let mut inv = invocation("t-p", "2026-11-23T00:00:00Z", RepeatMode::Period, "rate(1m)");
    inv.window = Window { max_concurrency: 2, max_errors: Some(0), batch_wait_secs: 0 };
    a.create_invocation(&inv, &ids, None).await.unwrap();
    // Every target is sent, and told to ask before each fire.
    assert_eq!(in_flight(&a, "t-p").await, ids);
    assert!(a.undelivered_for("i-3").await.unwrap()[0].invocation.fire_window);
    for id in &ids {
        a.apply_batch(&[WriteOp::Delivered { invoke_id: "t-p".into(), instance_id: id.clone() }]).await.unwrap();
    }
    let fire1 = chrono::Utc::now().to_rfc3339();
    // Four targets ask for fire 1 through two replicas at once: two granted.
    let asks = ids.iter().enumerate().map(|(i, id)| {
        let s = if i % 2 == 0 { a.clone() } else { b.clone() };
        let (id, at) = (id.clone(), fire1.clone());
        tokio::spawn(async move { (id.clone(), s.fire_request("t-p", &id, 1, &at).await.unwrap()) })
    });
    let mut granted = Vec::new();
    let mut waiting = Vec::new();
    for h in asks {
        match h.await.unwrap() {
            (id, FireOutcome::Decided(FireDecision::Granted)) => granted.push(id),
            (id, FireOutcome::Waiting) => waiting.push(id),
            other => panic!("{other:?}"),
        }
    }
    assert_eq!((granted.len(), waiting.len()), (2, 2), "granted {granted:?}");
    // Asked again: the same answers, nothing more granted.
    assert_eq!(b.fire_request("t-p", &waiting[0], 1, &fire1).await.unwrap(), FireOutcome::Waiting);
    assert_eq!(a.fire_request("t-p", &granted[0], 1, &fire1).await.unwrap(), FireOutcome::Decided(FireDecision::Granted));
    assert!(b.advance_fires().await.unwrap().is_empty(), "no slot is free");
    // One run succeeds (on replica B): one waiting fire is granted, announced by B.
    let mut announced_b = b.fire_answers();
    b.apply_batch(&[fire_report("t-p", &granted[0], 1, S::Success)]).await.unwrap();
    let got = announced_b.try_recv().unwrap();
    assert_eq!(got.len(), 1);
    assert_eq!((got[0].record_seq, got[0].decision.clone()), (1, FireDecision::Granted));
    assert!(waiting.contains(&got[0].instance_id));
    let last = waiting.iter().find(|w| **w != got[0].instance_id).unwrap().clone();
    // One run fails: errors 1 > MaxErrors 0, the last waiting fire is denied.
    a.apply_batch(&[fire_report("t-p", &granted[1], 1, S::Failed)]).await.unwrap();
    let got = announced.try_recv().unwrap();
    assert_eq!(got[0].instance_id, last);
    let FireDecision::Denied { code, info } = &got[0].decision else { panic!("{got:?}") };
    assert_eq!(*code, ErrorCode::MaxErrorsExceeded);
    assert!(info.contains("more than MaxErrors 0"), "{info}");
    // What another replica relays: the decisions made recently.
    let recent = b.recent_fire_answers("t-p", "2000-01-01T00:00:00Z").await.unwrap();
    assert!(recent.iter().any(|r| r.instance_id == last && matches!(r.decision, FireDecision::Denied { .. })), "{recent:?}");
    // The denied fire's Cancelled record keeps the target Running.
    let mut denied = fire_report("t-p", &last, 1, S::Cancelled);
    if let WriteOp::Report { report, .. } = &mut denied {
        report.error_code = Some(ErrorCode::MaxErrorsExceeded);
    }
    a.apply_batch(&[denied]).await.unwrap();
    let t = a.targets("t-p").await.unwrap();
    assert!(t.iter().all(|t| t.status == S::Running), "{t:?}");
    // The next fire starts fresh: two granted again despite fire 1's error.
    let fire2 = (chrono::Utc::now() + chrono::Duration::seconds(60)).to_rfc3339();
    let mut n = 0;
    for id in &ids {
        if a.fire_request("t-p", id, 2, &fire2).await.unwrap() == FireOutcome::Decided(FireDecision::Granted) {
            n += 1;
        }
    }
    assert_eq!(n, 2);
    // Refused: not a target, an unknown invocation, a far-off instant, an older fire.
    assert_eq!(a.fire_request("t-p", "i-99", 3, &fire2).await.unwrap(), FireOutcome::NotATarget);
    assert_eq!(a.fire_request("t-none", "i-1", 3, &fire2).await.unwrap(), FireOutcome::NotATarget);
    let far = (chrono::Utc::now() + chrono::Duration::days(1)).to_rfc3339();
    let FireOutcome::Decided(FireDecision::Denied { code, info }) = a.fire_request("t-p", "i-1", 3, &far).await.unwrap() else {
        panic!("far-off fire granted")
    };
    assert_eq!((code, info.contains("limit is 300 s")), (ErrorCode::FireNotGranted, true), "{info}");
    let FireOutcome::Decided(FireDecision::Denied { info, .. }) = a.fire_request("t-p", "i-4", 1, &fire1).await.unwrap() else {
        panic!("older fire")
    };
    assert!(info.contains("already settled") || info.contains("older"), "{info}");
    // Stopped: no more grants.
    a.request_stop("t-p", &[]).await.unwrap();
    let FireOutcome::Decided(FireDecision::Denied { .. }) = a.fire_request("t-p", "i-1", 3, &fire2).await.unwrap() else {
        panic!("a stopped invocation's fire granted")
    };
    // The backstop ends fires waiting on stopped targets and moves nothing.
    assert!(b.advance_fires().await.unwrap().is_empty());
}
/// Issue #21: the group-commit batch is read once, folded in memory and
/// written with a few multi-row statements. Whatever shares a batch, the
/// outcome must be what the same ops give applied one at a time: the
/// effects, every target column, the records and the kept counts. 600
/// targets span two statements of each kind; a periodic target, repeated
/// and late reports, a Once record 1, a non-target and bad base64 ride along.
async fn one_batch_equals_the_same_ops_one_at_a_time(e: &Engine) {
    let s = e.open().await;
    let ids: Vec<String> = (0..600).map(|i| format!("i-{i:04}")).collect();
    let ops_for = |p: &str| -> Vec<WriteOp> {
        let (a, per) = (format!("{p}-a"), format!("{p}-p"));
        let mut ops = Vec::new();
        for (k, id) in ids.iter().enumerate() {
            if k % 7 != 0 {
                ops.push(WriteOp::Delivered { invoke_id: a.clone(), instance_id: id.clone() });
            }
            if k % 11 != 0 {
                ops.push(report_from(&a, id, S::Running));
            }
        }
        for (k, id) in ids.iter().enumerate() {
            let status = match k % 3 {
                0 => S::Success,
                1 => S::Failed,
                _ => continue,
            };
            ops.push(report_from(&a, id, status));
            if k % 5 == 0 {
                // Resent after the final one: a duplicate.
                ops.push(report_from(&a, id, S::Running));
                ops.push(WriteOp::Delivered { invoke_id: a.clone(), instance_id: id.clone() });
            }
        }
        ops.push(WriteOp::Delivered { invoke_id: per.clone(), instance_id: "i-1".into() });
        for seq in 1..=2 {
            ops.push(report(&per, seq, S::Running, b""));
            ops.push(report(&per, seq, S::Failed, format!("fire {seq}").as_bytes()));
        }
        ops.push(report(&per, 1, S::Failed, b"late"));
        ops.push(report(&a, 1, S::Running, b"")); // record 1 of a Once invocation
        ops.push(report_from(&a, "i-none", S::Success)); // not a target
        if let WriteOp::Report { instance_id, mut report } = report_from(&a, "i-0002", S::Success) {
            report.output_b64 = "not base64!".into();
            ops.push(WriteOp::Report { instance_id, report });
        }
        ops.push(WriteOp::Touch { instance_id: "i-0001".into() });
        ops
    };
    for p in ["one", "each"] {
        s.create_invocation(&invocation(&format!("{p}-a"), "2026-11-23T00:00:00Z", ONCE, ""), &ids, None).await.unwrap();
        let per = invocation(&format!("{p}-p"), "2026-11-23T00:00:00Z", RepeatMode::Period, "rate(1m)");
        s.create_invocation(&per, &["i-1".into()], None).await.unwrap();
    }
    let one = s.apply_batch(&ops_for("one")).await.unwrap();
    let mut each = Vec::new();
    for op in ops_for("each") {
        each.extend(s.apply_batch(&[op]).await.unwrap());
    }
    assert_eq!(one, each, "effects");
    assert!(one.contains(&ReportEffect::Duplicate));
    assert!(one.iter().any(|e| matches!(e, ReportEffect::Refused(_))));
    assert!(one.contains(&ReportEffect::NotATarget));
    for inv in ["a", "p"] {
        let (x, y) = (s.targets(&format!("one-{inv}")).await.unwrap(), s.targets(&format!("each-{inv}")).await.unwrap());
        assert_eq!(x.len(), y.len());
        for (x, y) in x.iter().zip(&y) {
            let cols = |t: &TargetRow| {
                (
                    t.instance_id.clone(),
                    t.status,
                    t.delivered,
                    t.repeats,
                    t.exit_code,
                    t.output.clone(),
                    t.error_code.clone(),
                    t.start_time.clone(),
                    t.finish_time.is_empty(),
                )
            };
            assert_eq!(cols(x), cols(y), "target of {inv}");
        }
        let (ci, cj) = (
            s.get_invocation(&format!("one-{inv}")).await.unwrap().unwrap(),
            s.get_invocation(&format!("each-{inv}")).await.unwrap().unwrap(),
        );
        assert_eq!(ci.counts, cj.counts, "kept counts of {inv}");
        let mut recount = deckhand::lifecycle::Counts::default();
        for t in &x {
            recount.add(t.status, 1);
        }
        assert_eq!(ci.counts, recount, "kept counts of {inv} match the targets");
    }
    let p = s.targets("one-p").await.unwrap();
    assert_eq!((p[0].status, p[0].repeats), (S::Running, 2));
    for id in ["i-0000", "i-0003", "i-0001"] {
        let (x, y) = (s.records("one-a", id).await.unwrap(), s.records("each-a", id).await.unwrap());
        assert_eq!(
            x.iter().map(|r| (r.status, r.output.clone())).collect::<Vec<_>>(),
            y.iter().map(|r| (r.status, r.output.clone())).collect::<Vec<_>>()
        );
        assert_eq!(x.len(), 1, "{id}");
    }
}

/// Ends every session of the test database but the caller's own, as a
/// server restart or an operator would; returns how many were ended.
async fn end_sessions(url: &str) -> i64 {
    use sqlx::{Connection, Row};
    let mut admin = sqlx::postgres::PgConnection::connect(url).await.expect("admin connection");
    let ended: i64 = sqlx::query(
        "SELECT COUNT(*) FROM (SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
         WHERE datname = current_database() AND pid <> pg_backend_pid()) AS t",
    )
    .fetch_one(&mut admin)
    .await
    .expect("terminate the store's sessions")
    .get(0);
    let _ = admin.close().await;
    ended
}

/// PostgreSQL: pooled connections the server ended while they sat idle
/// (a restart, a failover, an idle-session timeout) are replaced before
/// use, not handed to a request that then fails. The store skips sqlx's
/// ping before every query and pings only connections idle for more than
/// a second (issue #21).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_connections_ended_while_idle_are_replaced() {
    let Some(e) = Engine::postgres("store_suite::postgres_connections_ended_while_idle_are_replaced").await else { return };
    let store = e.open().await;
    // Several reads at once, so the pool holds several connections.
    let reads = futures_util::future::join_all((0..6).map(|_| store.get_instance("i-none"))).await;
    assert!(reads.iter().all(|r| matches!(r, Ok(None))), "{:?}", reads.iter().find(|r| r.is_err()));
    let url = &e.db.as_ref().expect("a PostgreSQL engine").url;
    assert!(end_sessions(url).await >= 1, "the store held no session to end");
    // Past the idle window: the pool must test each connection it hands out.
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    for n in 0..8 {
        let r = store.get_instance("i-none").await;
        assert!(matches!(r, Ok(None)), "read {n} after the server ended the pooled sessions: {:?}", r.err());
    }
    e.finish().await;
}

/// PostgreSQL: the group commit's own connection (held by the store, not
/// pooled; issue #21), ended by the server: while idle past a second it is
/// tested and replaced before the next batch; in use, the batch that finds
/// it ended fails (its reports are resent from the agents' journals) and
/// the next one commits on a new connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_group_commit_replaces_a_connection_the_server_ended() {
    let Some(e) = Engine::postgres("store_suite::postgres_group_commit_replaces_a_connection_the_server_ended").await else { return };
    let store = e.open().await;
    let url = e.db.as_ref().expect("a PostgreSQL engine").url.clone();
    let touch = || [WriteOp::Touch { instance_id: "i-none".into() }];
    store.apply_batch(&touch()).await.expect("first batch opens the connection");
    assert!(end_sessions(&url).await >= 1, "the store held no session to end");
    // At once: at most one batch fails on the ended connection.
    if let Err(first) = store.apply_batch(&touch()).await {
        let again = store.apply_batch(&touch()).await;
        assert!(again.is_ok(), "the batch after one that failed on an ended connection ({first}): {:?}", again.err());
    }
    // Idle past the test window: the batch itself never sees the ended one.
    assert!(end_sessions(&url).await >= 1, "the store held no session to end");
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    for n in 0..3 {
        let r = store.apply_batch(&touch()).await;
        assert!(r.is_ok(), "batch {n} after the server ended an idle group-commit connection: {:?}", r.err());
    }
    e.finish().await;
}
