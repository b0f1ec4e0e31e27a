//! Upgrades keep everything (issue #15): a hub database and an agent state
//! directory written by deckhand 0.1.0 are read by this build intact, and a
//! 0.1.0 agent keeps working against this hub.
//!
//! The fixtures under tests/fixtures/upgrade/ were made by the 0.1.0
//! binaries (commit b5dd0c5) with `make_upgrade_fixtures` below (ignored;
//! run it with `DECKHAND_V010_BIN=<dir of 0.1.0 binaries> cargo test --test
//! upgrade -- --ignored make_upgrade_fixtures`). The live test with the
//! old agent needs the same variable and is skipped, loudly, without it:
//! building 0.1.0 inside the test costs a full release build.
//! PostgreSQL: no 0.1.0 dump is committed; `postgres_database_of_0_1_0_is_migrated`
//! makes one live with the 0.1.0 hub (needs DECKHAND_V010_BIN and a server,
//! see support/pg.rs) and checks the same migration there, and that it
//! refuses to run under live replicas of the old release.

#[path = "support/harness.rs"]
mod harness;
#[path = "support/pg.rs"]
mod pg;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use harness::{Agent, Hub, output_of, wait_until};
use serde_json::Value;

const WAIT: Duration = Duration::from_secs(30);

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/upgrade")
}

fn old_bin() -> Option<PathBuf> {
    std::env::var_os("DECKHAND_V010_BIN").map(PathBuf::from).filter(|d| d.join("deckhand-hub").exists())
}

fn result(hub: &Hub, invoke_id: &str) -> Value {
    let v = hub.call("DescribeInvocationResults", &[("InvokeId", invoke_id)]).unwrap();
    v["Invocation"]["InvocationResults"]["InvocationResult"][0].clone()
}

fn invocation(hub: &Hub, invoke_id: &str) -> Value {
    let v = hub.call("DescribeInvocations", &[("InvokeId", invoke_id)]).unwrap();
    v["Invocations"]["Invocation"][0].clone()
}

/// A new hub on a copy of the 0.1.0 database.
fn hub_on_fixture() -> Hub {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("data")).unwrap();
    std::fs::copy(fixtures().join("hub.db.fixture"), dir.path().join("data/hub.db")).unwrap();
    Hub::start_in(dir, &[])
}

fn kinds() -> BTreeMap<String, String> {
    serde_json::from_slice(&std::fs::read(fixtures().join("invocations.json")).unwrap()).unwrap()
}

/// Every kind of invocation 0.1.0 recorded, read through this build's
/// API with the values Cloud Assistant shows.
#[test]
fn hub_database_of_0_1_0_is_read_intact() {
    let hub = hub_on_fixture();
    let k = kinds();
    let id = |kind: &str| k.get(kind).unwrap_or_else(|| panic!("fixture lacks {kind}")).clone();
    // (kind, InvokeRecordStatus, InvocationStatus, ErrorCode)
    let expected = [
        ("ok", "Finished", "Success", ""),
        ("nonzero", "Finished", "Failed", "ExitCodeNonzero"),
        ("timeout", "Failed", "Timeout", "ExecutionTimeout"),
        ("stopped_running", "Stopped", "Terminated", ""),
        ("stopped_before_start", "Stopped", "Cancelled", ""),
        ("interrupted", "Failed", "Error", "ExecutionInterrupted"),
        ("undelivered", "Failed", "Aborted", "ClientNotResponse"),
        ("bad_directory", "Failed", "Invalid", "DirectoryNotExists"),
        ("period", "Running", "Running", ""),
        ("next_reboot", "Scheduled", "Scheduled", ""),
    ];
    for (kind, record, instance, code) in expected {
        let r = result(&hub, &id(kind));
        assert_eq!(
            (r["InvokeRecordStatus"].as_str(), r["InvocationStatus"].as_str(), r["ErrorCode"].as_str()),
            (Some(record), Some(instance), Some(code)),
            "{kind}: {r}"
        );
    }
    assert_eq!(output_of(&result(&hub, &id("ok"))), b"ok\n");
    assert_eq!(output_of(&result(&hub, &id("nonzero"))), b"bad\n");
    assert_eq!(invocation(&hub, &id("ok"))["InvocationStatus"], "Success");
    assert_eq!(invocation(&hub, &id("nonzero"))["InvokeStatus"], "Finished");
    assert_eq!(invocation(&hub, &id("period"))["InvocationStatus"], "Running");
    // The kept aggregates were filled by the migration: the SQL filter finds them.
    let v = hub.call("DescribeInvocations", &[("InvokeStatus", "Stopped"), ("PageSize", "50")]).unwrap();
    let stopped: Vec<&str> = v["Invocations"]["Invocation"].as_array().unwrap().iter().filter_map(|i| i["InvokeId"].as_str()).collect();
    assert!(stopped.contains(&id("stopped_running").as_str()) && stopped.contains(&id("stopped_before_start").as_str()), "{v}");
    // The command kept with KeepCommand and its invocation count survive.
    let c = hub.call("DescribeCommands", &[("CommandId", &id("kept_command"))]).unwrap();
    assert_eq!(c["Commands"]["Command"][0]["Name"], "upgrade-kept", "{c}");
    // Instances and their credentials: the 0.1.0 agent's identity still logs in.
    let agent = Agent::with_state(&hub, &fixtures().join("agent-state"), PathBuf::from(env!("CARGO_BIN_EXE_deckhand-agent")));
    let instance = agent.instance_id();
    assert_eq!(instance, id("instance"));
    hub.wait_online(&instance);
    // The schedule journaled by 0.1.0 is still armed: stopping it ends it.
    hub.call("StopInvocation", &[("InvokeId", &id("period"))]).unwrap();
    wait_until("period stopped", WAIT, || (result(&hub, &id("period"))["InvokeRecordStatus"] == "Stopped").then_some(()));
    // And new work runs on the upgraded agent.
    let inv = hub.run("echo upgraded", &[&instance], &[]);
    let r = &hub.wait_final(&inv, WAIT)[0];
    assert_eq!((r["InvocationStatus"].as_str(), output_of(r)), (Some("Success"), b"upgraded\n".to_vec()));
}

/// A 0.1.0 agent (protocol 1) keeps working against this hub, and what it
/// reports is recorded with Alibaba's values.
#[test]
fn agent_0_1_0_keeps_working_against_this_hub() {
    let Some(bin) = old_bin() else {
        eprintln!("SKIPPED: DECKHAND_V010_BIN (a directory with the 0.1.0 binaries) is not set");
        return;
    };
    let hub = hub_on_fixture();
    let agent = Agent::with_state(&hub, &fixtures().join("agent-state"), bin.join("deckhand-agent"));
    let instance = kinds()["instance"].clone();
    assert_eq!(agent.instance_id(), instance);
    hub.wait_online(&instance);
    let nonzero = hub.run("echo old; exit 3", &[&instance], &[]);
    let r = &hub.wait_final(&nonzero, WAIT)[0];
    assert_eq!(
        (r["InvokeRecordStatus"].as_str(), r["InvocationStatus"].as_str(), r["ErrorCode"].as_str()),
        (Some("Finished"), Some("Failed"), Some("ExitCodeNonzero")),
        "{r}"
    );
    let timeout = hub.run("sleep 30", &[&instance], &[("Timeout", "1")]);
    let r = &hub.wait_final(&timeout, WAIT)[0];
    assert_eq!((r["InvokeRecordStatus"].as_str(), r["InvocationStatus"].as_str()), (Some("Failed"), Some("Timeout")), "{r}");
    let long = hub.run("sleep 60", &[&instance], &[("Timeout", "120")]);
    wait_until("running", WAIT, || (result(&hub, &long)["InvocationStatus"] == "Running").then_some(()));
    hub.call("StopInvocation", &[("InvokeId", &long)]).unwrap();
    let r = &hub.wait_final(&long, WAIT)[0];
    assert_eq!((r["InvokeRecordStatus"].as_str(), r["InvocationStatus"].as_str()), (Some("Stopped"), Some("Terminated")), "{r}");
}

/// A 0.1.0 hub on PostgreSQL writes its rows; a new replica refuses to
/// migrate while the old one is alive, then migrates once it is gone and
/// shows every result with Alibaba's values.
#[test]
fn postgres_database_of_0_1_0_is_migrated() {
    let Some(bin) = old_bin() else {
        eprintln!("SKIPPED: DECKHAND_V010_BIN (a directory with the 0.1.0 binaries) is not set");
        return;
    };
    let rt = tokio::runtime::Runtime::new().unwrap();
    let Some(db) = rt.block_on(pg::TestDb::create("upgrade::postgres")) else { return };
    let old = Hub::start_binary(bin.join("deckhand-hub"), tempfile::tempdir().unwrap(), &["--store", &db.url]);
    let agent = old.agent_binary(&old.url, bin.join("deckhand-agent"));
    let id = agent.instance_id();
    old.wait_online(&id);
    let status = |hub: &Hub, inv: &str| result(hub, inv)["InvokeRecordStatus"].as_str().unwrap_or("").to_string();
    let settled = |hub: &Hub, inv: &str| {
        wait_until("0.1.0 final", WAIT, || matches!(status(hub, inv).as_str(), "Finished" | "Failed" | "Stopped" | "Timeout").then_some(()))
    };
    let ok = old.run("echo pg-ok", &[&id], &[]);
    settled(&old, &ok);
    let timeout = old.run("sleep 30", &[&id], &[("Timeout", "1")]);
    settled(&old, &timeout);
    let stopped = old.run("sleep 60", &[&id], &[("Timeout", "120")]);
    wait_until("running", WAIT, || (status(&old, &stopped) == "Running").then_some(()));
    old.call("StopInvocation", &[("InvokeId", &stopped)]).unwrap();
    settled(&old, &stopped);

    // The old replica is alive: the new release refuses to migrate under it.
    let err = rt.block_on(deckhand::hub::store::SqlStore::open(&db.url)).err().expect("refused while an old replica runs");
    assert!(err.to_string().contains("replica(s) of an older release"), "{err}");
    drop(agent);
    let mut old = old;
    old.terminate();
    // As if its liveness deadline had passed.
    rt.block_on(async {
        use sqlx::{Connection, Executor};
        let mut c = sqlx::postgres::PgConnection::connect(&db.url).await.unwrap();
        c.execute("UPDATE hubs SET last_seen = '2000-01-01T00:00:00Z'").await.unwrap();
    });
    let new = Hub::start_in(tempfile::tempdir().unwrap(), &["--store", &db.url]);
    let r = result(&new, &ok);
    assert_eq!((r["InvocationStatus"].as_str(), output_of(&r)), (Some("Success"), b"pg-ok\n".to_vec()), "{r}");
    let r = result(&new, &timeout);
    assert_eq!(
        (r["InvokeRecordStatus"].as_str(), r["InvocationStatus"].as_str(), r["ErrorCode"].as_str()),
        (Some("Failed"), Some("Timeout"), Some("ExecutionTimeout")),
        "{r}"
    );
    let r = result(&new, &stopped);
    assert_eq!((r["InvokeRecordStatus"].as_str(), r["InvocationStatus"].as_str()), (Some("Stopped"), Some("Terminated")), "{r}");
    assert_eq!(invocation(&new, &ok)["InvocationStatus"], "Success");
    drop(new);
    rt.block_on(db.drop_db());
}

/// Makes tests/fixtures/upgrade/ with the 0.1.0 binaries. Ignored: run
/// by hand (see the module comment) when the fixtures must be remade.
#[test]
#[ignore]
fn make_upgrade_fixtures() {
    let bin = old_bin().expect("DECKHAND_V010_BIN must name a directory with the 0.1.0 binaries");
    let hub = Hub::start_binary(bin.join("deckhand-hub"), tempfile::tempdir().unwrap(), &["--delivery-timeout-secs", "2"]);
    let mut agent = hub.agent_binary(&hub.url, bin.join("deckhand-agent"));
    let id = agent.instance_id();
    hub.wait_online(&id);
    let mut kinds: BTreeMap<String, String> = BTreeMap::new();
    kinds.insert("instance".into(), id.clone());
    let status = |inv: &str| result(&hub, inv)["InvokeRecordStatus"].as_str().unwrap_or("").to_string();
    // 0.1.0's record states, "Timeout" included.
    let final_ = |inv: &str| {
        wait_until(&format!("{inv} final (0.1.0)"), WAIT, || {
            matches!(status(inv).as_str(), "Finished" | "Failed" | "Stopped" | "Timeout").then_some(())
        })
    };

    let ok = hub.run("echo ok", &[&id], &[]);
    final_(&ok);
    kinds.insert("ok".into(), ok);
    let nonzero = hub.run("echo bad; exit 3", &[&id], &[]);
    final_(&nonzero);
    kinds.insert("nonzero".into(), nonzero);
    let timeout = hub.run("sleep 30", &[&id], &[("Timeout", "1")]);
    final_(&timeout);
    kinds.insert("timeout".into(), timeout);
    let bad_dir = hub.run("pwd", &[&id], &[("WorkingDir", "/nonexistent/upgrade")]);
    final_(&bad_dir);
    kinds.insert("bad_directory".into(), bad_dir);
    let running = hub.run("sleep 60", &[&id], &[("Timeout", "120")]);
    wait_until("running", WAIT, || (status(&running) == "Running").then_some(()));
    hub.call("StopInvocation", &[("InvokeId", &running)]).unwrap();
    final_(&running);
    kinds.insert("stopped_running".into(), running);
    let before = hub.run("echo never", &[&id], &[("RepeatMode", "NextRebootOnly")]);
    wait_until("scheduled", WAIT, || (status(&before) == "Scheduled").then_some(()));
    hub.call("StopInvocation", &[("InvokeId", &before)]).unwrap();
    final_(&before);
    kinds.insert("stopped_before_start".into(), before);
    let interrupted = hub.run("sleep 30", &[&id], &[("Timeout", "120")]);
    wait_until("running", WAIT, || (status(&interrupted) == "Running").then_some(()));
    agent.kill();
    agent.spawn();
    final_(&interrupted);
    kinds.insert("interrupted".into(), interrupted);
    let period = hub.run("echo fire", &[&id], &[("RepeatMode", "Period"), ("Frequency", "0 0 3 1 1 ? 2098")]);
    wait_until("period armed", WAIT, || (status(&period) == "Running").then_some(()));
    kinds.insert("period".into(), period);
    let reboot = hub.run("echo after-boot", &[&id], &[("RepeatMode", "NextRebootOnly")]);
    wait_until("scheduled", WAIT, || (status(&reboot) == "Scheduled").then_some(()));
    kinds.insert("next_reboot".into(), reboot);
    let c = hub.call("CreateCommand", &[("Name", "upgrade-kept"), ("Type", "RunShellScript"), ("CommandContent", "ZWNobyBrZXB0")]).unwrap();
    let command_id = c["CommandId"].as_str().unwrap().to_string();
    let kept = hub.call("InvokeCommand", &[("CommandId", &command_id), ("InstanceId.1", &id)]).unwrap();
    final_(kept["InvokeId"].as_str().unwrap());
    kinds.insert("kept_command".into(), command_id);
    // A second instance whose agent is gone: its invocation is never delivered.
    let mut gone = hub.agent_binary(&hub.url, bin.join("deckhand-agent"));
    let gone_id = gone.instance_id();
    hub.wait_online(&gone_id);
    gone.kill();
    hub.wait_offline(&gone_id);
    let undelivered = hub.run("true", &[&gone_id], &[]);
    final_(&undelivered);
    kinds.insert("undelivered".into(), undelivered);

    let state = agent.state_dir();
    agent.terminate();
    let mut hub = hub;
    hub.terminate();
    let out = fixtures();
    let _ = std::fs::remove_dir_all(&out);
    std::fs::create_dir_all(&out).unwrap();
    // Fold the WAL into the file so one file holds everything.
    let db = hub.dir.path().join("data/hub.db");
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        use sqlx::{Connection, Executor};
        let mut c = sqlx::sqlite::SqliteConnection::connect(&format!("sqlite://{}", db.display())).await.unwrap();
        c.execute("PRAGMA wal_checkpoint(TRUNCATE)").await.unwrap();
        c.execute("PRAGMA journal_mode = DELETE").await.unwrap();
    });
    std::fs::copy(&db, out.join("hub.db.fixture")).unwrap();
    harness::copy_dir(&state, &out.join("agent-state"));
    std::fs::write(out.join("invocations.json"), serde_json::to_vec_pretty(&kinds).unwrap()).unwrap();
    eprintln!("fixtures written to {}: {kinds:?}", out.display());
}
