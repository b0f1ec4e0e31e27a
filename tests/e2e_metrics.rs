//! `/metrics` during a real fan-out (issue #21): one real `deckhand-hub`
//! on SQLite with a metrics token, real `deckhand-agent` processes over
//! TLS on loopback. The figures scraped while the run is in flight and
//! after it must match what the run did.

#[path = "support/harness.rs"]
mod harness;

use std::time::Duration;

use harness::{Hub, wait_until};

const AGENTS: usize = 6;
const TOKEN: &str = "metrics-token-for-tests-0001";

/// The value of one series (`name{labels}` exactly as the hub prints it).
fn value(body: &str, series: &str) -> Option<f64> {
    body.lines().find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.split(' ').next()?.parse().ok())
}

fn scrape(hub: &Hub) -> String {
    let (status, body) = hub.client().get("/metrics", Some(TOKEN)).expect("scrape");
    assert_eq!(status, 200, "{body}");
    body
}

#[test]
fn metrics_match_a_fan_out() {
    let hub = Hub::start_with(&["--metrics-token", TOKEN]);
    // Without the token (or with a wrong one) nothing is shown.
    for bearer in [None, Some("wrong-token-wrong-token")] {
        let (status, body) = hub.client().get("/metrics", bearer).expect("scrape");
        assert_eq!(status, 403, "{body}");
        assert!(!body.contains("deckhand_hub"), "{body}");
    }
    let agents: Vec<_> = (0..AGENTS).map(|_| hub.agent()).collect();
    let ids: Vec<String> = agents.iter().map(|a| a.instance_id()).collect();
    for id in &ids {
        hub.wait_online(id);
    }
    let body = scrape(&hub);
    assert_eq!(value(&body, "deckhand_hub_agents_connected"), Some(AGENTS as f64), "{body}");
    assert_eq!(value(&body, "deckhand_hub_results_stored_total"), Some(0.0), "{body}");
    assert!(body.trim_end().ends_with("# EOF"), "{body}");

    // In flight: every target Running, by the store's counts.
    let refs: Vec<&str> = ids.iter().map(String::as_str).collect();
    let invoke_id = hub.run("sleep 3; echo done", &refs, &[("Timeout", "60")]);
    let running = wait_until("all targets Running in /metrics", Duration::from_secs(30), || {
        let body = scrape(&hub);
        (value(&body, r#"deckhand_hub_targets{state="Running"}"#) == Some(AGENTS as f64)).then_some(body)
    });
    assert_eq!(value(&running, r#"deckhand_hub_invocations{state="Running"}"#), Some(1.0), "{running}");
    assert_eq!(value(&running, r#"deckhand_hub_targets{state="Success"}"#), Some(0.0), "{running}");

    let results = hub.wait_final(&invoke_id, Duration::from_secs(60));
    assert_eq!(results.len(), AGENTS);
    assert!(results.iter().all(|r| r["InvocationStatus"] == "Success"), "{results:?}");
    let body = scrape(&hub);
    let v = |s: &str| value(&body, s).unwrap_or_else(|| panic!("no series {s} in:\n{body}"));
    assert_eq!(v("deckhand_hub_results_stored_total"), AGENTS as f64);
    assert_eq!(v(r#"deckhand_hub_targets{state="Success"}"#), AGENTS as f64);
    assert_eq!(v(r#"deckhand_hub_targets{state="Running"}"#), 0.0);
    assert_eq!(v(r#"deckhand_hub_invocations{state="Success"}"#), 1.0);
    assert_eq!(v(r#"deckhand_hub_api_calls_total{action="RunCommand",code="OK"}"#), 1.0);
    assert_eq!(v(r#"deckhand_hub_api_call_seconds_count{action="RunCommand"}"#), 1.0);
    // Each agent was sent its invocation and sent back an ack, Running and
    // the final report (each report acknowledged): at least that many frames.
    assert!(v(r#"deckhand_hub_websocket_frames_total{direction="out"}"#) >= (AGENTS * 3) as f64, "{body}");
    assert!(v(r#"deckhand_hub_websocket_frames_total{direction="in"}"#) >= (AGENTS * 3) as f64, "{body}");
    assert!(v(r#"deckhand_hub_websocket_bytes_total{direction="in"}"#) > v(r#"deckhand_hub_websocket_frames_total{direction="in"}"#));
    // Every ack and report went through the group-commit writer.
    assert!(v("deckhand_hub_store_batch_operations_sum") >= (AGENTS * 3) as f64, "{body}");
    assert!(v("deckhand_hub_store_batch_seconds_count") >= 1.0, "{body}");
    assert_eq!(v("deckhand_hub_live_output_dropped_total"), 0.0);
    drop(agents);
}
