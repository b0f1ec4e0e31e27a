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

/// Every combination of up to three instance states, checked against the
/// seed's rules written out independently of the implementation's order.
#[test]
fn aggregation_table_is_exhaustive() {
    use RecordStatus::*;
    let all = [Pending, Scheduled, Running, Stopping, Finished, Failed, Stopped, Timeout];
    let mut checked = 0;
    for a in all {
        for b in all {
            for c in all {
                for n in 1..=3 {
                    let states = &[a, b, c][..n];
                    let got = aggregate_invocation_status(states);
                    let has = |s| states.contains(&s);
                    let expected = if has(Running) {
                        "Running"
                    } else if has(Stopping) {
                        "Stopping"
                    } else if has(Pending) {
                        "Pending"
                    } else if has(Scheduled) {
                        "Scheduled"
                    } else {
                        let nf = states.iter().filter(|s| matches!(s, Failed | Timeout)).count();
                        let ns = states.iter().filter(|s| **s == Stopped).count();
                        if ns == n {
                            "Stopped"
                        } else if nf == n {
                            "Failed"
                        } else if nf > 0 {
                            "PartialFailed"
                        } else {
                            "Finished"
                        }
                    };
                    assert_eq!(got, expected, "{states:?}");
                    checked += 1;
                }
            }
        }
    }
    assert_eq!(checked, 8 * 8 * 8 * 3);
    assert_eq!(aggregate_invocation_status(&[Finished, Stopped]), "Finished");
    assert_eq!(aggregate_invocation_status(&[Failed, Finished]), "PartialFailed");
}
