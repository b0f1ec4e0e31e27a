//! Issue #18 end to end: stored keys, policies and the audit trail through
//! real hub processes. Two replicas on one real PostgreSQL show that a key
//! created through one is honoured by the other and that disabling it
//! through one refuses it at once on the other; the `deckhand` CLI manages
//! keys, policies and reads the trail. (The official SDK tests are in
//! tests/sdk/test_permissions.py.)

#[path = "support/harness.rs"]
mod harness;
#[path = "support/pg.rs"]
mod pg;

use std::process::Command;

use deckhand::cli::{CliError, Client, ClientConfig};
use harness::Hub;
use serde_json::Value;

fn as_key(hub: &Hub, id: &str, secret: &str) -> Client {
    Client::new(ClientConfig {
        endpoint: hub.url.clone(),
        access_key_id: id.into(),
        access_key_secret: secret.into(),
        ca_file: Some(hub.ca.clone()),
    })
    .expect("client")
}

fn code(r: Result<Value, CliError>) -> (u16, String, String) {
    match r {
        Err(CliError::Api { status, code, message, .. }) => (status, code, message),
        other => panic!("expected an API error, got {other:?}"),
    }
}

#[test]
fn a_key_disabled_through_one_replica_is_refused_at_once_by_another() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let Some(db) = rt.block_on(pg::TestDb::create("e2e_permissions::a_key_disabled_through_one_replica_is_refused_at_once_by_another"))
    else {
        return;
    };
    let store = ["--store", db.url.as_str()];
    let a = Hub::start_with(&store);
    let b = Hub::start_replica(&a, &store);
    let policy = r#"{"Statement":[{"Effect":"Allow","Action":"Describe*"}]}"#;
    let created = a.call("CreateAccessKey", &[("PolicyDocument", policy)]).expect("create through a");
    let (id, secret) = (created["AccessKeyId"].as_str().unwrap().to_string(), created["AccessKeySecret"].as_str().unwrap().to_string());
    let on_b = as_key(&b, &id, &secret);
    on_b.call("DescribeInvocations", &[]).expect("allowed on b");
    let (status, c, message) = code(
        on_b.call("RunCommand", &[("Type", "RunShellScript".into()), ("CommandContent", "id".into()), ("InstanceId.1", "mi-x".into())]),
    );
    assert_eq!((status, c.as_str()), (403, "Forbidden.RAM"));
    assert!(message.contains("RunCommand") && message.contains(&id), "{message}");
    a.call("DisableAccessKey", &[("UserAccessKeyId", &id)]).expect("disable through a");
    // No wait: the very next call on b is refused.
    let (status, c, _) = code(on_b.call("DescribeInvocations", &[]));
    assert_eq!((status, c.as_str()), (403, "InvalidAccessKeyId.Inactive"));
    // Both refusals are in the shared trail, read through either replica.
    let trail = b.call("DescribeAuditEvents", &[("UserAccessKeyId", &id)]).expect("audit");
    let mut outcomes: Vec<(String, String)> = trail["AuditEvents"]["AuditEvent"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e["Action"].as_str().unwrap().to_string(), e["Outcome"].as_str().unwrap().to_string()))
        .collect();
    outcomes.sort();
    assert_eq!(
        outcomes,
        [
            ("DescribeInvocations".to_string(), "InvalidAccessKeyId.Inactive".to_string()),
            ("RunCommand".to_string(), "Forbidden.RAM".to_string())
        ]
    );
    drop(b);
    drop(a);
    rt.block_on(db.drop_db());
}

#[test]
fn cli_manages_keys_and_policies_and_reads_the_audit_trail() {
    let hub = Hub::start();
    let dir = tempfile::tempdir().unwrap();
    let cli_as = |id: &str, secret: &str, args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_deckhand"))
            .args(["--endpoint", &hub.url, "--ca-file", hub.ca.to_str().unwrap()])
            .args(["--access-key-id", id, "--access-key-secret", secret])
            .args(["--config", "/nonexistent/cli.json"])
            .args(args)
            .output()
            .expect("run cli")
    };
    let cli = |args: &[&str]| cli_as(harness::AK_ID, harness::AK_SECRET, args);
    let json = |out: std::process::Output| -> Value {
        assert!(out.status.success(), "{out:?}");
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {out:?}"))
    };
    let created = json(cli(&["--json", "keys", "create", "--description", "dashboard"]));
    let (id, secret) = (created["AccessKeyId"].as_str().unwrap().to_string(), created["AccessKeySecret"].as_str().unwrap().to_string());
    // No policy yet: no access.
    let out = cli_as(&id, &secret, &["instances"]);
    assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("Forbidden.RAM"), "{out:?}");
    let file = dir.path().join("ro.json");
    std::fs::write(&file, r#"{"Version":"1","Statement":[{"Effect":"Allow","Action":["Describe*","List*"]}]}"#).unwrap();
    assert!(cli(&["policy", "set", &id, file.to_str().unwrap()]).status.success());
    let shown = json(cli(&["policy", "show", &id]));
    assert_eq!(shown["Statement"][0]["Action"][0], "Describe*");
    assert!(cli_as(&id, &secret, &["instances"]).status.success());
    let out = cli_as(&id, &secret, &["activate", "--count", "1"]);
    assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("CreateActivation"), "{out:?}");
    // A bad document is refused naming the field, and changes nothing.
    std::fs::write(&file, r#"{"Statement":[{"Effect":"Allow","Action":"*","CommandType":"Bash"}]}"#).unwrap();
    let out = cli(&["policy", "set", &id, file.to_str().unwrap()]);
    assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("InvalidParameter.PolicyDocument"), "{out:?}");
    assert_eq!(json(cli(&["policy", "show", &id]))["Statement"][0]["Action"][1], "List*");
    assert!(cli(&["keys", "disable", &id]).status.success());
    let listed = json(cli(&["--json", "keys", "list"]));
    assert_eq!(listed[0]["Status"], "Inactive");
    assert!(listed[0].get("AccessKeySecret").is_none());
    let trail = json(cli(&["--json", "audit", "--key", &id]));
    let outcomes: Vec<(&str, &str)> =
        trail.as_array().unwrap().iter().map(|e| (e["Action"].as_str().unwrap(), e["Outcome"].as_str().unwrap())).collect();
    assert_eq!(outcomes, [("CreateActivation", "Forbidden.RAM"), ("DescribeManagedInstances", "Forbidden.RAM")], "newest first");
    let mine = json(cli(&["--json", "audit", "--key", harness::AK_ID, "--action", "SetAccessKeyPolicy"]));
    assert_eq!(mine.as_array().unwrap().len(), 2, "{mine}");
    assert!(cli(&["keys", "delete", &id]).status.success());
    assert_eq!(json(cli(&["--json", "keys", "list"])), serde_json::json!([]));
}

/// Stored secrets are sealed at rest (docs/permissions.md): the row holds
/// no plaintext, the key file is private, a restart reads it back, and a
/// secret stored unsealed (before sealing existed) is sealed at the next
/// start and keeps working.
#[test]
fn stored_secrets_are_sealed_at_rest_and_survive_restarts() {
    use deckhand::hub::store::{AccessKeyRow, SqlStore, Store};
    let mut hub = Hub::start();
    let created = hub
        .call(
            "CreateAccessKey",
            &[("Description", "sealed"), ("PolicyDocument", r#"{"Statement":[{"Effect":"Allow","Action":"Describe*"}]}"#)],
        )
        .unwrap();
    let (id, secret) = (created["AccessKeyId"].as_str().unwrap().to_string(), created["AccessKeySecret"].as_str().unwrap().to_string());
    assert!(as_key(&hub, &id, &secret).call("DescribeInvocations", &[]).is_ok());
    let data = hub.dir.path().join("data");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(data.join("secrets.key")).unwrap().permissions().mode() & 0o777, 0o600);
    }
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let store = rt.block_on(SqlStore::open_sqlite(&data.join("hub.db"))).unwrap();
    let row = rt.block_on(store.get_access_key(&id)).unwrap().unwrap();
    assert!(row.secret.starts_with("sealed:v1:") && !row.secret.contains(&secret), "stored as {:?}", row.secret);
    // A row as an older hub wrote it: the secret in clear.
    let legacy = AccessKeyRow {
        key_id: "LTAIdhlegacy0001".into(),
        secret: "legacy-secret-in-clear".into(),
        description: "old".into(),
        enabled: true,
        policy: r#"{"Statement":[{"Effect":"Allow","Action":"Describe*"}]}"#.into(),
        created_at: "2026-11-01T00:00:00Z".into(),
        updated_at: "2026-11-01T00:00:00Z".into(),
    };
    rt.block_on(store.create_access_key(&legacy)).unwrap();
    hub.restart();
    assert!(as_key(&hub, &id, &secret).call("DescribeInvocations", &[]).is_ok(), "the key file is read back after a restart");
    assert!(as_key(&hub, &legacy.key_id, &legacy.secret).call("DescribeInvocations", &[]).is_ok());
    let resealed = rt.block_on(store.get_access_key(&legacy.key_id)).unwrap().unwrap();
    assert!(resealed.secret.starts_with("sealed:v1:") && !resealed.secret.contains("legacy-secret"), "{:?}", resealed.secret);
    // The key file lost: a new one is made, the sealed secrets open with
    // nothing — the keys are refused like unknown ones (never a crash) and
    // the start says why.
    std::fs::remove_file(data.join("secrets.key")).unwrap();
    hub.restart();
    let (status, code_, _) = code(as_key(&hub, &id, &secret).call("DescribeInvocations", &[]));
    assert_eq!((status, code_.as_str()), (404, "InvalidAccessKeyId.NotFound"));
    assert!(hub.log().contains("sealed with another secrets_key_file"), "{}", hub.log());
    assert!(!hub.log().contains(&secret) && !hub.log().contains("legacy-secret-in-clear"), "a secret reached the log");
}
