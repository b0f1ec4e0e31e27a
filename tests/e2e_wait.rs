//! `WaitSeconds` on `DescribeInvocationResults` (deckhand extension, issue
//! #21): a real `deckhand-hub` on SQLite and a real `deckhand-agent` over
//! TLS on loopback. A waiting call is held until a shown result changes,
//! ends at its deadline otherwise, and bad values are refused by name.

#[path = "support/harness.rs"]
mod harness;

use std::time::{Duration, Instant};

use deckhand::cli::client::CliError;
use harness::{Hub, wait_until};
use serde_json::Value;

const TOKEN: &str = "metrics-token-for-tests-0002";

fn status(v: &Value) -> String {
    v["Invocation"]["InvocationResults"]["InvocationResult"][0]["InvocationStatus"].as_str().unwrap_or("").to_string()
}

fn waiting_calls(hub: &Hub) -> Option<f64> {
    let (code, body) = hub.client().get("/metrics", Some(TOKEN)).ok()?;
    assert_eq!(code, 200, "{body}");
    body.lines().find_map(|l| l.strip_prefix("deckhand_hub_api_waiting_calls ")?.parse().ok())
}

fn running(hub: &Hub, invoke_id: &str) {
    wait_until("the run is Running", Duration::from_secs(30), || {
        let v = hub.call("DescribeInvocationResults", &[("InvokeId", invoke_id)]).ok()?;
        (status(&v) == "Running").then_some(())
    });
}

#[test]
fn a_waiting_call_is_answered_when_its_result_changes() {
    let hub = Hub::start_with(&["--metrics-token", TOKEN]);
    let (_agent, id) = hub.online_agent();
    let marker = tempfile::tempdir().unwrap();
    let go = marker.path().join("go");
    let script = format!("while [ ! -e '{}' ]; do sleep 0.05; done; echo released", go.display());
    let invoke_id = hub.run(&script, &[&id], &[("Timeout", "60")]);
    running(&hub, &invoke_id);

    let client = hub.client();
    let inv = invoke_id.clone();
    let waiter = std::thread::spawn(move || {
        let t0 = Instant::now();
        let v = client.call("DescribeInvocationResults", &[("InvokeId", inv), ("WaitSeconds", "30".to_string())]);
        (v, t0.elapsed())
    });
    // The hub holds the call (it shows in /metrics) while the run is Running.
    wait_until("one call waiting", Duration::from_secs(30), || (waiting_calls(&hub) == Some(1.0)).then_some(()));
    std::fs::write(&go, b"").unwrap();
    let (answer, took) = waiter.join().unwrap();
    let answer = answer.expect("waiting DescribeInvocationResults");
    // It was Running when the call came in: a final answer means the call
    // waited for the change, and it came well before the 30 s deadline.
    assert_eq!(status(&answer), "Success", "{answer}");
    assert!(took < Duration::from_secs(25), "answered at the deadline, not on the change: {took:?}");
    assert_eq!(answer["Invocation"]["InvocationResults"]["InvocationResult"].as_array().map(Vec::len), Some(1), "{answer}");
    wait_until("no call waiting", Duration::from_secs(10), || (waiting_calls(&hub) == Some(0.0)).then_some(()));

    // Settled: a waiting call answers at once.
    let t0 = Instant::now();
    let v = hub.call("DescribeInvocationResults", &[("InvokeId", &invoke_id), ("WaitSeconds", "30")]).unwrap();
    assert_eq!(status(&v), "Success", "{v}");
    assert!(t0.elapsed() < Duration::from_secs(20), "a settled result was held: {:?}", t0.elapsed());
}

#[test]
fn a_wait_ends_at_its_deadline_and_bad_values_are_refused() {
    let hub = Hub::start();
    let (_agent, id) = hub.online_agent();
    let invoke_id = hub.run("sleep 120", &[&id], &[("Timeout", "300")]);
    running(&hub, &invoke_id);

    // Nothing changes: the answer comes at the deadline, still Running.
    let t0 = Instant::now();
    let v = hub.call("DescribeInvocationResults", &[("InvokeId", &invoke_id), ("WaitSeconds", "2")]).unwrap();
    assert_eq!(status(&v), "Running", "{v}");
    assert!(t0.elapsed() >= Duration::from_secs(2), "answered before the deadline with nothing changed: {:?}", t0.elapsed());

    let refused = |params: &[(&str, &str)], why: &str| match hub.call("DescribeInvocationResults", params) {
        Err(CliError::Api { code, message, .. }) => {
            assert_eq!(code, "InvalidParameter.WaitSeconds", "{message}");
            assert!(message.contains(why), "{message}");
        }
        other => panic!("{params:?} accepted: {other:?}"),
    };
    refused(&[("InvokeId", &invoke_id), ("WaitSeconds", "31")], "0..=30");
    refused(&[("InvokeId", &invoke_id), ("WaitSeconds", "-1")], "0..=30");
    refused(&[("InvokeId", &invoke_id), ("WaitSeconds", "soon")], "not an integer");
    refused(&[("InstanceId", &id), ("WaitSeconds", "5")], "needs InvokeId");
    hub.call("StopInvocation", &[("InvokeId", &invoke_id)]).unwrap();
}

/// `deckhand run` (statuses only: `--json`) follows its run by waiting on
/// the hub, not by polling: the hub shows the CLI's call held while the run
/// goes on, and the CLI still ends with the run's result.
#[test]
fn the_cli_follows_a_run_by_waiting() {
    let hub = Hub::start();
    let (_agent, id) = hub.online_agent();
    let marker = tempfile::tempdir().unwrap();
    let go = marker.path().join("go");
    let script = format!("while [ ! -e '{}' ]; do sleep 0.05; done; echo released", go.display());
    let cli = std::process::Command::new(env!("CARGO_BIN_EXE_deckhand"))
        .args(["--endpoint", &hub.url, "--ca-file", hub.ca.to_str().unwrap()])
        .args(["--access-key-id", harness::AK_ID, "--access-key-secret", harness::AK_SECRET])
        .args(["--config", "/nonexistent/cli.json", "--json", "run", "-i", &id, "--timeout", "60s", "--", &script])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // No metrics token: loopback peers may scrape.
    let waiting = || {
        let (code, body) = hub.client().get("/metrics", None).ok()?;
        assert_eq!(code, 200, "{body}");
        body.lines().find_map(|l| l.strip_prefix("deckhand_hub_api_waiting_calls ")?.parse::<f64>().ok())
    };
    wait_until("the CLI's call held by the hub", Duration::from_secs(30), || (waiting() == Some(1.0)).then_some(()));
    std::fs::write(&go, b"").unwrap();
    let out = cli.wait_with_output().unwrap();
    assert!(out.status.success(), "{out:?}");
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["Results"][0]["InvocationStatus"], "Success", "{v}");
}
