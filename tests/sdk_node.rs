//! The official Alibaba Cloud Node.js SDK (`@alicloud/pop-core`, pinned by
//! tests/sdk/node/package-lock.json) against a real hub and agent:
//! tests/sdk/node/test_pop_core.js.
//!
//! Needs `node` and the SDK installed with `npm ci` in tests/sdk/node
//! (.ci/run does both). Without them the test says so loudly and passes
//! only outside CI; in CI (`CI` set) a missing SDK is a failure.

#[path = "support/harness.rs"]
mod harness;

use std::path::Path;
use std::process::Command;

use harness::Hub;

#[test]
fn official_node_sdk_sees_alibaba_values() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/sdk/node");
    if !dir.join("node_modules/@alicloud/pop-core").exists() {
        if std::env::var_os("CI").is_some() {
            panic!("@alicloud/pop-core is not installed in CI: run `npm ci` in tests/sdk/node");
        }
        eprintln!("SKIPPED: @alicloud/pop-core not installed (run `npm ci` in tests/sdk/node)");
        return;
    }
    let hub = Hub::start();
    let a = hub.agent();
    let id = a.instance_id();
    hub.wait_online(&id);
    let out = Command::new("node")
        .arg("test_pop_core.js")
        .current_dir(&dir)
        .env("NODE_EXTRA_CA_CERTS", &hub.ca)
        .env("DECKHAND_ENDPOINT", hub.url.trim_start_matches("https://"))
        .env("DECKHAND_AK", harness::AK_ID)
        .env("DECKHAND_SK", harness::AK_SECRET)
        .env("DECKHAND_INSTANCE", &id)
        .output()
        .expect("run node");
    let text = format!("{}\n{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    println!("{text}");
    assert!(out.status.success(), "Node SDK test failed:\n{text}");
    assert!(text.contains("4 checks passed"), "the Node SDK test did not run to its end:\n{text}");
}
