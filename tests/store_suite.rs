//! One store test suite, run against both engines: an SQLite file and a
//! real PostgreSQL server (see support/pg.rs for how the server is found
//! and when the PostgreSQL half is skipped).

#[path = "support/pg.rs"]
mod pg;

use std::sync::Arc;

use deckhand::hub::store::*;
use deckhand::protocol::{HostFacts, RecordReport, RecordStatus};

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
    activation_slots_hold_under_concurrent_registration,
    invocation_lifecycle_keeps_binary_output_and_ignores_duplicates,
    periodic_records_count_fires_and_keep_target_running,
    lists_filter_and_paginate,
    stop_marks_undelivered_stopped_and_delivered_stopping,
    undelivered_targets_expire,
    replicas_track_who_holds_each_agent,
    announcements_reach_every_replica,
);

fn page(offset: i64, limit: i64) -> Page {
    Page { offset, limit }
}

fn invocation(id: &str, created_at: &str, repeat_mode: &str, frequency: &str) -> InvocationRow {
    InvocationRow {
        invoke_id: id.into(),
        command_id: format!("c-{id}"),
        command_name: "name".into(),
        command_type: "RunShellScript".into(),
        content: "echo hi".into(),
        timeout_secs: 60,
        parameters: "{}".into(),
        repeat_mode: repeat_mode.into(),
        frequency: frequency.into(),
        created_at: created_at.into(),
        client_token: format!("tok-{id}"),
        ..Default::default()
    }
}

fn report(invoke_id: &str, seq: u32, status: RecordStatus, output: &[u8]) -> WriteOp {
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
            error_code: String::new(),
            error_info: String::new(),
            start_time: "2026-11-23T00:00:01Z".into(),
            finish_time: if status.is_final() { "2026-11-23T00:00:02Z".into() } else { String::new() },
        },
    }
}

async fn register(store: &SqlStore, activation: &str, id: &str) -> bool {
    let inst = InstanceRow { instance_id: id.into(), instance_name: id.into(), token_hash: "h".into(), registered_at: now_str(), ..Default::default() };
    store.register_instance(activation, &inst).await.unwrap()
}

async fn activation(store: &SqlStore, id: &str, count: i64) {
    let a = ActivationRow { activation_id: id.into(), code_hash: "x".into(), instance_count: count, time_to_live_hours: 4, ip_address_range: "0.0.0.0/0".into(), created_at: now_str(), ..Default::default() };
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
    let (_, total) = a.list_instances(&[], None, page(0, 100)).await.unwrap();
    assert_eq!(total, 5);
    // Deregistering counts, and an activation in use cannot be deleted.
    let (rows, _) = a.list_instances(&[], None, page(0, 1)).await.unwrap();
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
    s.create_invocation(&invocation("t-1", "2026-11-23T00:00:00Z", "Once", ""), &["i-1".into(), "i-2".into()]).await.unwrap();
    assert_eq!(s.find_by_client_token("tok-t-1").await.unwrap().as_deref(), Some("t-1"));
    assert_eq!(s.find_by_client_token("tok-none").await.unwrap(), None);
    // The same client token again (a retry through another replica) writes nothing.
    let mut again = invocation("t-1b", "2026-11-23T00:00:00Z", "Once", "");
    again.client_token = "tok-t-1".into();
    let err = s.create_invocation(&again, &["i-1".into()]).await.unwrap_err();
    assert!(matches!(&err, StoreError::DuplicateClientToken(t) if t == "tok-t-1"), "{err}");
    assert!(s.get_invocation("t-1b").await.unwrap().is_none());
    assert!(s.targets("t-1b").await.unwrap().is_empty());
    let owed = s.undelivered_for("i-1").await.unwrap();
    assert_eq!(owed.len(), 1);
    assert_eq!(owed[0].instance_name, "i-1");
    let deliveries = s.deliveries("t-1").await.unwrap();
    let pending = |id: &str| Delivery { instance_id: id.into(), instance_name: id.into(), status: RecordStatus::Pending };
    assert_eq!(deliveries, [pending("i-1"), pending("i-2")]);

    let bytes: Vec<u8> = vec![0xff, 0x00, b'o', b'k', 0xfe];
    let ops = vec![
        WriteOp::Delivered { invoke_id: "t-1".into(), instance_id: "i-1".into() },
        report("t-1", 0, RecordStatus::Running, b""),
        report("t-1", 0, RecordStatus::Finished, &bytes),
        // Resent after a reconnect: ignored.
        report("t-1", 0, RecordStatus::Running, b""),
        WriteOp::Report { instance_id: "i-9".into(), report: match report("t-1", 0, RecordStatus::Finished, b"") { WriteOp::Report { report, .. } => report, _ => unreachable!() } },
        WriteOp::Touch { instance_id: "i-1".into() },
    ];
    let effects = s.apply_batch(&ops).await.unwrap();
    use ReportEffect::*;
    assert_eq!(effects, [Applied, Applied, Applied, Duplicate, NotATarget, Applied]);
    let t = s.targets("t-1").await.unwrap();
    assert_eq!(t[0].status, RecordStatus::Finished);
    assert!(t[0].delivered);
    assert_eq!(t[0].output, bytes);
    assert_eq!(t[0].exit_code, Some(3));
    assert_eq!(t[1].status, RecordStatus::Pending);
    let records = s.records("t-1", "i-1").await.unwrap();
    assert_eq!(records.len(), 1);
    assert_eq!(records[0].output, bytes);
    // Only the unfinished target is still owed.
    assert_eq!(s.deliveries("t-1").await.unwrap().len(), 1);
    assert!(s.undelivered_for("i-1").await.unwrap().is_empty());
}

async fn periodic_records_count_fires_and_keep_target_running(e: &Engine) {
    let s = e.open().await;
    s.create_invocation(&invocation("t-p", "2026-11-23T00:00:00Z", "Period", "rate(1m)"), &["i-1".into()]).await.unwrap();
    s.apply_batch(&[WriteOp::Delivered { invoke_id: "t-p".into(), instance_id: "i-1".into() }]).await.unwrap();
    assert_eq!(s.targets("t-p").await.unwrap()[0].status, RecordStatus::Running);
    for seq in 1..=3 {
        s.apply_batch(&[report("t-p", seq, RecordStatus::Running, b""), report("t-p", seq, RecordStatus::Finished, format!("fire {seq}").as_bytes())]).await.unwrap();
    }
    // A late report of an earlier fire does not lower the count.
    s.apply_batch(&[report("t-p", 1, RecordStatus::Finished, b"late")]).await.unwrap();
    let t = &s.targets("t-p").await.unwrap()[0];
    assert_eq!((t.status, t.repeats), (RecordStatus::Running, 3));
    let records = s.records("t-p", "i-1").await.unwrap();
    assert_eq!(records.iter().map(|r| r.record_seq).collect::<Vec<_>>(), [1, 2, 3]);
    assert_eq!(records[2].output, b"fire 3");
}

async fn lists_filter_and_paginate(e: &Engine) {
    let s = e.open().await;
    for i in 0..7 {
        let mut inv = invocation(&format!("t-{i}"), &format!("2026-11-23T00:00:0{i}Z"), "Once", "");
        inv.command_type = if i % 2 == 0 { "RunShellScript".into() } else { "RunPowerShellScript".into() };
        let targets: Vec<String> = if i < 3 { vec!["i-a".into()] } else { vec!["i-b".into(), "i-c".into()] };
        s.create_invocation(&inv, &targets).await.unwrap();
    }
    let all = InvocationFilter::default();
    let (rows, total) = s.list_invocations(&all, page(0, 3)).await.unwrap();
    assert_eq!(total, 7);
    // Newest first, whatever the database's locale.
    assert_eq!(rows.iter().map(|r| r.invoke_id.as_str()).collect::<Vec<_>>(), ["t-6", "t-5", "t-4"]);
    let (rows, _) = s.list_invocations(&all, page(6, 3)).await.unwrap();
    assert_eq!(rows.len(), 1);
    let f = InvocationFilter { instance_id: Some("i-a".into()), ..Default::default() };
    assert_eq!(s.list_invocations(&f, page(0, 10)).await.unwrap().1, 3);
    let f = InvocationFilter { command_type: Some("RunPowerShellScript".into()), ..Default::default() };
    assert_eq!(s.list_invocations(&f, page(0, 10)).await.unwrap().1, 3);
    let (targets, total) = s.list_targets(&InvocationFilter { instance_id: Some("i-c".into()), ..Default::default() }, Some(RecordStatus::Pending), page(0, 2)).await.unwrap();
    assert_eq!((targets.len(), total), (2, 4));
    assert_eq!(s.list_targets(&all, Some(RecordStatus::Finished), page(0, 10)).await.unwrap().1, 0);
}

async fn stop_marks_undelivered_stopped_and_delivered_stopping(e: &Engine) {
    let s = e.open().await;
    s.create_invocation(&invocation("t-s", "2026-11-23T00:00:00Z", "Once", ""), &["i-1".into(), "i-2".into(), "i-3".into()]).await.unwrap();
    s.apply_batch(&[
        WriteOp::Delivered { invoke_id: "t-s".into(), instance_id: "i-1".into() },
        WriteOp::Delivered { invoke_id: "t-s".into(), instance_id: "i-3".into() },
        WriteOp::Report { instance_id: "i-3".into(), report: match report("t-s", 0, RecordStatus::Finished, b"done") { WriteOp::Report { report, .. } => report, _ => unreachable!() } },
    ])
    .await
    .unwrap();
    let notify = s.request_stop("t-s", &[]).await.unwrap();
    assert_eq!(notify, ["i-1", "i-2"]);
    let t = s.targets("t-s").await.unwrap();
    assert_eq!(t.iter().map(|t| t.status).collect::<Vec<_>>(), [RecordStatus::Stopping, RecordStatus::Stopped, RecordStatus::Finished]);
    assert!(s.get_invocation("t-s").await.unwrap().unwrap().stop_requested);
    // What a replica relays the stop to: the one target still Stopping.
    let owed: Vec<_> = s.deliveries("t-s").await.unwrap().into_iter().map(|d| (d.instance_id, d.status)).collect();
    assert_eq!(owed, [("i-1".to_string(), RecordStatus::Stopping)]);
}

async fn undelivered_targets_expire(e: &Engine) {
    let s = e.open().await;
    s.create_invocation(&invocation("t-old", "2026-11-20T00:00:00Z", "Once", ""), &["i-1".into()]).await.unwrap();
    s.create_invocation(&invocation("t-new", "2099-01-01T00:00:00Z", "Once", ""), &["i-1".into()]).await.unwrap();
    assert_eq!(s.expire_undelivered("2026-11-21T00:00:00Z", "ClientNotResponse", "gone").await.unwrap(), 1);
    let t = &s.targets("t-old").await.unwrap()[0];
    assert_eq!((t.status, t.error_code.as_str()), (RecordStatus::Failed, "ClientNotResponse"));
    assert_eq!(s.targets("t-new").await.unwrap()[0].status, RecordStatus::Pending);
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
    a.instance_connected("i-1", "hub-a", &facts, "10.0.0.1").await.unwrap();
    b.instance_connected("i-2", "hub-b", &facts, "10.0.0.2").await.unwrap();
    // i-1 moves to hub-b; hub-a's late disconnect must not take it offline.
    b.instance_connected("i-1", "hub-b", &facts, "10.0.0.1").await.unwrap();
    a.instance_disconnected("i-1", "hub-a").await.unwrap();
    assert!(b.get_instance("i-1").await.unwrap().unwrap().online);
    assert_eq!(b.get_instance("i-1").await.unwrap().unwrap().facts.hostname, "h");

    // Work owed to hub-b's agents, and only theirs.
    a.create_invocation(&invocation("t-1", "2026-11-23T00:00:00Z", "Once", ""), &["i-1".into(), "i-2".into(), "i-9".into()]).await.unwrap();
    let owed = b.stalled("hub-b", "2099-01-01T00:00:00Z", 10).await.unwrap();
    let mut ids: Vec<_> = owed.iter().map(|(i, inv, st)| (i.as_str(), inv.as_str(), *st)).collect();
    ids.sort_by(|x, y| (x.0, x.1).cmp(&(y.0, y.1)));
    assert_eq!(ids, [("i-1", "t-1", RecordStatus::Pending), ("i-2", "t-1", RecordStatus::Pending)]);
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
    b.instance_disconnected("i-2", "hub-b").await.unwrap();
    b.hub_alive("hub-b").await.unwrap();
    assert!(!a.get_instance("i-2").await.unwrap().unwrap().online);
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
