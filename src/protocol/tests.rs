//! Wire round trips, frame bounds, and the exhaustive status-aggregation table.

use super::*;

#[test]
fn messages_round_trip_with_type_tag() {
    let m = AgentMsg::Heartbeat { sent_ms: 42 };
    let text = encode(&m);
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
    assert!(matches!(err, FrameError::Malformed(_)));
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
    assert!(err.to_string().contains("InvocationStatus \"Exploded\" is not one of"), "{err}");
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
    let text = encode(&new);
    assert!(text.contains(r#""status":"Terminated""#) && text.contains(r#""error_code":"""#), "{text}");
    assert_eq!(decode::<RecordReport>(&text).unwrap(), new);
}

#[test]
fn hub_speaks_this_version_and_the_one_before() {
    assert!(hub_speaks(PROTOCOL_VERSION) && hub_speaks(PROTOCOL_VERSION - 1));
    assert!(!hub_speaks(PROTOCOL_VERSION + 1) && !hub_speaks(0));
}
