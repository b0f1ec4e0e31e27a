//! The real official Alibaba Cloud Python SDKs (both generations) as API
//! clients against a real hub and agent: tests/sdk/test_cloud_assistant.py.
//!
//! Needs `DECKHAND_SDK_PYTHON` (a python with tests/sdk/requirements.txt
//! installed; .ci/run sets it up). Without it the test says so loudly and
//! passes only outside CI; in CI (`CI` set) a missing SDK is a failure.

#[path = "support/harness.rs"]
mod harness;

use std::process::Command;

use harness::Hub;

#[test]
fn official_python_sdks_drive_the_hub() {
    let Some(python) = std::env::var_os("DECKHAND_SDK_PYTHON") else {
        if std::env::var_os("CI").is_some() {
            panic!("DECKHAND_SDK_PYTHON is not set in CI: the SDK tests must run there");
        }
        eprintln!("SKIPPED: DECKHAND_SDK_PYTHON not set (run .ci/run to install the Alibaba Cloud SDKs)");
        return;
    };
    // A short delivery timeout lets the SDK test see a delivery abort
    // (Aborted) on an instance whose agent is stopped.
    let hub = Hub::start_with(&["--delivery-timeout-secs", "3"]);
    let mut offline = hub.agent();
    let offline_id = offline.instance_id();
    hub.wait_online(&offline_id);
    offline.kill();
    hub.wait_offline(&offline_id);
    let a = hub.agent();
    let id = a.instance_id();
    hub.wait_online(&id);
    let out = Command::new(python)
        .args(["-m", "pytest", "-q", "-p", "no:cacheprovider", concat!(env!("CARGO_MANIFEST_DIR"), "/tests/sdk/test_cloud_assistant.py")])
        .env("DECKHAND_ENDPOINT", hub.url.trim_start_matches("https://"))
        .env("DECKHAND_CA", &hub.ca)
        .env("DECKHAND_AK", harness::AK_ID)
        .env("DECKHAND_SK", harness::AK_SECRET)
        .env("DECKHAND_INSTANCE", &id)
        .env("DECKHAND_OFFLINE_INSTANCE", &offline_id)
        .output()
        .expect("run pytest");
    let text = format!("{}\n{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    println!("{text}");
    assert!(out.status.success(), "SDK tests failed:\n{text}");
    assert!(text.contains(" passed"), "pytest ran no test:\n{text}");
}

/// Issue #18: per-key policies, disabled keys and the audit trail, driven
/// by the official SDKs (tests/sdk/test_permissions.py) against a real
/// hub and two real agents (tagged env=staging and env=prod by the test).
#[test]
fn official_python_sdks_obey_key_policies() {
    let Some(python) = std::env::var_os("DECKHAND_SDK_PYTHON") else {
        if std::env::var_os("CI").is_some() {
            panic!("DECKHAND_SDK_PYTHON is not set in CI: the SDK tests must run there");
        }
        eprintln!("SKIPPED: DECKHAND_SDK_PYTHON not set (run .ci/run to install the Alibaba Cloud SDKs)");
        return;
    };
    let hub = Hub::start();
    let staging = hub.agent();
    let prod = hub.agent();
    let (s, p) = (staging.instance_id(), prod.instance_id());
    hub.wait_online(&s);
    hub.wait_online(&p);
    let out = Command::new(python)
        .args(["-m", "pytest", "-q", "-p", "no:cacheprovider", concat!(env!("CARGO_MANIFEST_DIR"), "/tests/sdk/test_permissions.py")])
        .env("DECKHAND_ENDPOINT", hub.url.trim_start_matches("https://"))
        .env("DECKHAND_CA", &hub.ca)
        .env("DECKHAND_AK", harness::AK_ID)
        .env("DECKHAND_SK", harness::AK_SECRET)
        .env("DECKHAND_STAGING", &s)
        .env("DECKHAND_PROD", &p)
        .output()
        .expect("run pytest");
    let text = format!("{}\n{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    println!("{text}");
    assert!(out.status.success(), "SDK permission tests failed:\n{text}\nhub log:\n{}", hub.log());
    assert!(text.contains("5 passed"), "pytest did not run all five permission tests:\n{text}");
}
