//! Wire round trips, frame bounds, and the exhaustive status-aggregation table.

use super::*;

#[test]
fn messages_round_trip_with_type_tag() {
    let m = AgentMsg::Heartbeat { sent_ms: 42 };
    let text = encode(&m).expect("encode");
    assert_eq!(text, r#"{"type":"heartbeat","sent_ms":42}"#);
    assert_eq!(decode::<AgentMsg>(&text).unwrap(), m);
}

#[test]
fn oversized_frame_is_refused_before_parsing() {
    let big = "x".repeat(MAX_FRAME_BYTES + 1);
    let err = decode::<AgentMsg>(&big).unwrap_err();
    assert!(err.to_string().contains("exceeds the limit"), "{err}");
}

#[test]
fn unknown_type_is_a_malformed_error() {
    let err = decode::<AgentMsg>(r#"{"type":"launch_missiles"}"#).unwrap_err();
    assert!(matches!(err, FrameError::Malformed { kind: "schema", .. }));
}

/// Regression (issue #14): serde's messages quote the offending value, and
/// the hub logged and echoed them: a 1 MiB garbage frame became 1 MiB of log.
#[test]
fn frame_errors_never_carry_frame_content() {
    for bad in [
        r#"{"type":"SECRET-PAYLOAD-1"}"#.to_string(),
        r#"{"type":"heartbeat","sent_ms":"SECRET-PAYLOAD-1"}"#.to_string(),
        format!(r#"{{"type":"hello","protocol":1,"instance_id":{},"token":"t"}}"#, "[\"SECRET-PAYLOAD-1\"]"),
        "SECRET-PAYLOAD-1".to_string(),
        format!("{{\"type\":\"{}", "SECRET-PAYLOAD-1".repeat(1000)),
    ] {
        let e = decode::<AgentMsg>(&bad).unwrap_err().to_string();
        assert!(!e.contains("SECRET") && e.len() < 100, "{e}");
    }
}

fn report(output: &[u8], dropped: u64) -> RecordReport {
    use base64::Engine;
    RecordReport {
        invoke_id: "t-1".into(),
        record_seq: 0,
        status: crate::lifecycle::InvocationStatus::Success,
        exit_code: Some(0),
        output_b64: base64::engine::general_purpose::STANDARD.encode(output),
        dropped,
        error_code: None,
        error_info: String::new(),
        start_time: String::new(),
        finish_time: String::new(),
    }
}

/// Regression (issue #14): a rogue agent stored a 700 KiB report, and
/// `Dropped: -1` after sending 2^64-1.
#[test]
fn reports_are_brought_within_the_caps() {
    use base64::Engine;
    let big = vec![b'a'; 700 * 1024];
    let r = report(&big, 5).bounded().unwrap();
    let kept = base64::engine::general_purpose::STANDARD.decode(&r.output_b64).unwrap();
    assert_eq!(kept.len(), OUTPUT_CAP_BYTES);
    assert_eq!(r.dropped, 5 + (700 * 1024 - OUTPUT_CAP_BYTES) as u64);
    let r = report(b"ok", u64::MAX).bounded().unwrap();
    assert_eq!(r.dropped, i64::MAX as u64);
    let r = report(&big, u64::MAX).bounded().unwrap();
    assert_eq!(r.dropped, i64::MAX as u64);
    let mut bad = report(b"", 0);
    bad.output_b64 = "%%%not base64".into();
    assert_eq!(bad.bounded().unwrap_err(), ReportError::OutputNotBase64);
    let mut long = report(b"", 0);
    long.error_info = "é".repeat(5000);
    long.start_time = "x".repeat(5000);
    let r = long.bounded().unwrap();
    assert!(r.error_info.len() <= report_limits::MAX_ERROR_INFO && r.error_info.chars().all(|c| c == 'é'));
    assert_eq!(r.start_time.len(), report_limits::MAX_SHORT_TEXT);
    let mut id = report(b"", 0);
    id.invoke_id = "t".repeat(65);
    assert!(matches!(id.bounded(), Err(ReportError::IdTooLong(65))));
    // A report within the bounds is unchanged.
    let ok = report(b"hello", 3);
    assert_eq!(ok.clone().bounded().unwrap(), ok);
}

/// A 0.1.0 agent's reports (and journal entries) decode to the status
/// they meant; a protocol 2 report round-trips unchanged.
#[test]
fn reports_of_both_versions_decode() {
    let old = |status: &str, extra: &str| {
        decode::<RecordReport>(&format!(r#"{{"invoke_id":"t-1","record_seq":0,"status":"{status}"{extra}}}"#)).unwrap()
    };
    assert_eq!(old("Finished", r#","exit_code":0,"start_time":"2026-01-01T00:00:00Z""#).status, InvocationStatus::Success);
    assert_eq!(old("Finished", r#","exit_code":2,"start_time":"2026-01-01T00:00:00Z""#).status, InvocationStatus::Failed);
    assert_eq!(old("Stopped", "").status, InvocationStatus::Cancelled);
    let r = old("Failed", r#","error_code":"InstanceRestarted","start_time":"2026-01-01T00:00:00Z""#);
    assert_eq!((r.status, r.error_code), (InvocationStatus::Error, Some(ErrorCode::ExecutionInterrupted)));
    assert_eq!(old("Timeout", r#","error_code":"ExecutionTimeout""#).status, InvocationStatus::Timeout);
    let err = decode::<RecordReport>(r#"{"invoke_id":"t-1","record_seq":0,"status":"Exploded"}"#).unwrap_err();
    // Refused as a schema error; the message never quotes the peer's text.
    assert!(matches!(err, FrameError::Malformed { kind: "schema", .. }) && !err.to_string().contains("Exploded"), "{err}");
    let new = RecordReport {
        invoke_id: "t-2".into(),
        record_seq: 3,
        status: InvocationStatus::Terminated,
        exit_code: None,
        output_b64: String::new(),
        dropped: 0,
        error_code: None,
        error_info: String::new(),
        start_time: "2026-01-01T00:00:00Z".into(),
        finish_time: "2026-01-01T00:00:05Z".into(),
    };
    let text = encode(&new).expect("encode");
    assert!(text.contains(r#""status":"Terminated""#) && text.contains(r#""error_code":"""#), "{text}");
    assert_eq!(decode::<RecordReport>(&text).unwrap(), new);
}

#[test]
fn hub_speaks_this_version_and_the_one_before() {
    assert!(hub_speaks(PROTOCOL_VERSION) && hub_speaks(PROTOCOL_VERSION - 1));
    assert!(!hub_speaks(PROTOCOL_VERSION + 1) && !hub_speaks(0));
}
