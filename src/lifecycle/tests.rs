//! The lifecycle tested without processes: every state × event × mode,
//! the aggregation tables for up to three instances, and the codec.

use super::*;
use InvocationStatus as S;

fn events() -> Vec<Event> {
    let mut v = vec![
        Event::Delivered,
        Event::StopRequested,
        Event::DeliveryExpired,
        Event::InstanceDeregistered,
        Event::ClientNotRunning,
        Event::RolloutHalted,
    ];
    v.extend(S::ALL.iter().map(|s| Event::Reported(*s)));
    v
}

/// The expected next state, written as a table independent of the
/// implementation's structure.
fn expected(from: TargetState, e: Event, mode: RepeatMode, frequency: &str) -> Result<TargetState, Refusal> {
    let final_ =
        matches!(from.status, S::Invalid | S::Aborted | S::Success | S::Failed | S::Error | S::Timeout | S::Cancelled | S::Terminated);
    if final_ {
        return Err(Refusal::Final(from.status));
    }
    let repeating = match mode {
        RepeatMode::Period => !frequency.starts_with("at("),
        RepeatMode::EveryReboot => true,
        _ => false,
    };
    let st = |status, delivered| Ok(TargetState { status, delivered });
    match e {
        Event::Delivered => {
            if from.status != S::Pending {
                st(from.status, true)
            } else if mode == RepeatMode::NextRebootOnly {
                st(S::Scheduled, true)
            } else if repeating {
                st(S::Running, true)
            } else {
                st(S::Pending, true)
            }
        }
        Event::Reported(S::Pending | S::Stopping | S::Aborted) => {
            let Event::Reported(r) = e else { unreachable!() };
            Err(Refusal::NotReportable(r))
        }
        Event::Reported(r) => {
            let stopping = from.status == S::Stopping;
            let status = match (repeating, r) {
                (true, S::Cancelled) if !stopping => S::Running,
                (_, S::Cancelled | S::Terminated) => r,
                (true, _) if stopping => S::Stopping,
                (true, _) => S::Running,
                (false, S::Running | S::Scheduled) if stopping => S::Stopping,
                (false, other) => other,
            };
            st(status, true)
        }
        Event::StopRequested if from.delivered => st(S::Stopping, true),
        Event::StopRequested => st(S::Cancelled, false),
        Event::DeliveryExpired if from.status == S::Pending && !from.delivered => st(S::Aborted, false),
        Event::DeliveryExpired => Err(Refusal::NotApplicable { event: e, status: from.status, delivered: from.delivered }),
        Event::InstanceDeregistered if from.delivered => st(S::Error, true),
        Event::InstanceDeregistered => st(S::Aborted, false),
        Event::ClientNotRunning if from == TargetState::CREATED => st(S::Aborted, false),
        Event::RolloutHalted if from == TargetState::CREATED => st(S::Cancelled, false),
        Event::ClientNotRunning | Event::RolloutHalted => {
            Err(Refusal::NotApplicable { event: e, status: from.status, delivered: from.delivered })
        }
    }
}

#[test]
fn every_state_event_and_mode() {
    let mut checked = 0;
    for from in TargetState::all() {
        for e in events() {
            for mode in RepeatMode::ALL {
                for freq in ["rate(5m)", "at(2030-01-01T00:00:00Z)"] {
                    assert_eq!(transition(from, e, *mode, freq), expected(from, e, *mode, freq), "{from:?} {e:?} {mode} {freq}");
                    checked += 1;
                }
            }
        }
    }
    assert_eq!(checked, 24 * 18 * 4 * 2);
}

#[test]
fn the_paths_the_api_shows() {
    let once = |s, e| transition(s, e, RepeatMode::Once, "").map(|t| t.status);
    let created = TargetState::CREATED;
    let delivered = TargetState { status: S::Pending, delivered: true };
    let running = TargetState { status: S::Running, delivered: true };
    // Stop before delivery: Cancelled at once; stop while running: Stopping, then Terminated.
    assert_eq!(once(created, Event::StopRequested), Ok(S::Cancelled));
    assert_eq!(once(running, Event::StopRequested), Ok(S::Stopping));
    let stopping = TargetState { status: S::Stopping, delivered: true };
    assert_eq!(once(stopping, Event::Reported(S::Running)), Ok(S::Stopping));
    assert_eq!(once(stopping, Event::Reported(S::Terminated)), Ok(S::Terminated));
    assert_eq!(once(delivered, Event::Reported(S::Timeout)), Ok(S::Timeout));
    assert_eq!(once(created, Event::DeliveryExpired), Ok(S::Aborted));
    assert_eq!(
        once(delivered, Event::DeliveryExpired).unwrap_err().to_string(),
        "DeliveryExpired does not apply to a target in Pending (delivered: true)"
    );
    assert_eq!(once(TargetState { status: S::Success, delivered: true }, Event::Reported(S::Failed)), Err(Refusal::Final(S::Success)));
    assert_eq!(Event::DeliveryExpired.error_code(true), Some(ErrorCode::DeliveryTimeout));
    assert_eq!(Event::DeliveryExpired.error_code(false), Some(ErrorCode::ClientNotResponse));
    let accepting = states_accepting(Event::DeliveryExpired);
    assert_eq!(accepting, vec![TargetState::CREATED]);
}

#[test]
fn record_status_has_no_timeout_and_maps_every_instance_status() {
    use InvokeRecordStatus as R;
    let table = [
        (S::Pending, R::Pending),
        (S::Scheduled, R::Scheduled),
        (S::Invalid, R::Failed),
        (S::Aborted, R::Failed),
        (S::Running, R::Running),
        (S::Success, R::Finished),
        (S::Failed, R::Finished),
        (S::Error, R::Failed),
        (S::Timeout, R::Failed),
        (S::Cancelled, R::Stopped),
        (S::Stopping, R::Stopping),
        (S::Terminated, R::Stopped),
    ];
    assert_eq!(table.len(), S::ALL.len());
    for (s, r) in table {
        assert_eq!(s.record_status(), r, "{s}");
    }
    assert_eq!(InvocationStatus::with_record_status(R::Stopped), vec![S::Cancelled, S::Terminated]);
    assert_eq!(
        S::NAMES,
        [
            "Pending",
            "Scheduled",
            "Invalid",
            "Aborted",
            "Running",
            "Success",
            "Failed",
            "Error",
            "Timeout",
            "Cancelled",
            "Stopping",
            "Terminated"
        ]
    );
}

/// Every combination of up to three instance states against the documented
/// rules, written out independently.
#[test]
fn aggregation_tables_are_exhaustive() {
    let mut checked = 0;
    for a in S::ALL {
        for b in S::ALL {
            for c in S::ALL {
                for n in 1..=3 {
                    let states = &[*a, *b, *c][..n];
                    let counts = Counts::of(states);
                    let has = |s| states.contains(&s);
                    let count = |f: &dyn Fn(S) -> bool| states.iter().filter(|s| f(**s)).count();
                    let failed_class = |s: S| matches!(s, S::Invalid | S::Aborted | S::Failed | S::Error | S::Timeout);
                    let stopped_class = |s: S| matches!(s, S::Cancelled | S::Terminated);
                    let settled = if has(S::Running) {
                        None
                    } else if has(S::Stopping) {
                        Some("Stopping")
                    } else if has(S::Pending) {
                        Some("Pending")
                    } else if has(S::Scheduled) {
                        Some("Scheduled")
                    } else {
                        Some("")
                    };
                    let overall = match settled {
                        None => "Running",
                        Some(s) if !s.is_empty() => s,
                        _ => {
                            let ok = count(&|s| s == S::Success);
                            let bad = count(&failed_class);
                            match (ok > 0, bad > 0) {
                                (false, false) => "Stopped",
                                (true, false) => "Success",
                                (false, true) => "Failed",
                                (true, true) => "PartialFailed",
                            }
                        }
                    };
                    assert_eq!(counts.overall().as_str(), overall, "{states:?}");
                    let record_failed = |s: S| matches!(s, S::Invalid | S::Aborted | S::Error | S::Timeout);
                    let legacy = match settled {
                        None => "Running",
                        Some(s) if !s.is_empty() => s,
                        _ => {
                            if count(&stopped_class) == n {
                                "Stopped"
                            } else if count(&record_failed) == n {
                                "Failed"
                            } else if count(&record_failed) > 0 {
                                "PartialFailed"
                            } else {
                                "Finished"
                            }
                        }
                    };
                    assert_eq!(counts.legacy().as_str(), legacy, "{states:?}");
                    checked += 1;
                }
            }
        }
    }
    assert_eq!(checked, 12 * 12 * 12 * 3);
    // Seed 001's examples.
    assert_eq!(Counts::of(&[S::Success, S::Terminated]).legacy(), InvokeStatus::Finished);
    assert_eq!(Counts::of(&[S::Timeout, S::Success]).legacy(), InvokeStatus::PartialFailed);
    assert_eq!(Counts::of(&[S::Failed, S::Success]).legacy(), InvokeStatus::Finished);
    assert_eq!(Counts::of(&[S::Failed, S::Success]).overall(), InvocationOverall::PartialFailed);
    assert_eq!(Counts::default().overall(), InvocationOverall::Pending);
}

#[test]
fn what_a_010_agent_sends_is_read_as_meant() {
    let interrupted = ErrorCode::parse("InstanceRestarted");
    assert_eq!(interrupted, Some(ErrorCode::ExecutionInterrupted));
    type Row<'a> = (&'a str, Option<i64>, bool, Option<&'a ErrorCode>, S);
    let table: &[Row] = &[
        ("Finished", Some(0), true, None, S::Success),
        ("Finished", Some(3), true, None, S::Failed),
        ("Stopped", None, false, None, S::Cancelled),
        ("Stopped", Some(143), true, None, S::Terminated),
        ("Timeout", None, true, None, S::Timeout),
        ("Failed", None, false, Some(&ErrorCode::DirectoryNotExists), S::Invalid),
        ("Failed", None, true, interrupted.as_ref(), S::Error),
        ("Failed", Some(2), true, None, S::Failed),
        ("Failed", None, true, Some(&ErrorCode::DirectoryNotExists), S::Invalid),
        ("Failed", None, true, None, S::Error),
        ("Failed", None, true, Some(&ErrorCode::ExitCodeNonzero), S::Failed),
        ("Failed", None, false, Some(&ErrorCode::ClientNotResponse), S::Aborted),
        // A protocol 2 file delivery's Failed carries a SendFile code, no exit code.
        ("Failed", None, true, Some(&ErrorCode::FileAlreadyExists), S::Failed),
        ("Failed", None, true, Some(&ErrorCode::FileCreateFail), S::Failed),
        ("Running", None, true, None, S::Running),
        // Protocol 2 names read as themselves.
        ("Success", Some(0), true, None, S::Success),
        ("Invalid", None, false, None, S::Invalid),
        ("Terminated", None, true, None, S::Terminated),
    ];
    for (raw, exit, started, code, want) in table {
        assert_eq!(reported_status(raw, *exit, *started, *code), Ok(*want), "{raw} {exit:?} {started}");
    }
    let e = reported_status("Exploded", None, true, None).unwrap_err();
    assert_eq!(e.to_string(), format!("InvocationStatus \"Exploded\" is not one of {}", S::NAMES.join(", ")));
}

#[test]
fn codec_round_trips_and_error_codes() {
    for s in S::ALL {
        assert_eq!(S::parse(s.as_str()), Ok(*s));
        assert_eq!(serde_json::to_string(s).unwrap(), format!("\"{s}\""));
    }
    for m in RepeatMode::ALL {
        assert_eq!(RepeatMode::parse(m.as_str()), Ok(*m));
    }
    assert!(RepeatMode::parse("once").is_err());
    for t in CommandType::ALL {
        assert_eq!(CommandType::parse(t.as_str()), Ok(*t));
        // A command's Type is any kind but the file delivery's.
        assert_eq!(CommandType::parse_command(t.as_str()).is_ok(), !t.is_file(), "{t}");
    }
    assert!(CommandType::parse_command("SendFile").unwrap_err().accepted.contains("RunShellScript"));
    assert!(!CommandType::parse_command("SendFile").unwrap_err().accepted.contains("SendFile"));
    for name in ErrorCode::KNOWN {
        let c = ErrorCode::parse(name).unwrap();
        assert_eq!(c.as_str(), *name);
        assert!(!matches!(c, ErrorCode::Other(_)));
        // Alibaba's codes carry Alibaba's fixed text; deckhand's own
        // (rate control) and SendFile's (whose texts are not one per code)
        // carry the stored detail instead.
        let detail_shown = c == ErrorCode::MaxErrorsExceeded || c == ErrorCode::FireNotGranted || c.is_file_code();
        assert_eq!(c.fixed_info().is_some(), !detail_shown, "{name}");
    }
    assert_eq!(ErrorCode::parse(""), None);
    assert_eq!(ErrorCode::parse("KubeletUnhealthy"), Some(ErrorCode::Other("KubeletUnhealthy".into())));
    assert_eq!(ErrorCode::parse(&"x".repeat(500)).unwrap().as_str().len(), MAX_ERROR_CODE_LEN);
    assert_eq!(error_info(Some(&ErrorCode::ExecutionTimeout), "killed after 5 s"), "the command execution has been timeout");
    assert_eq!(error_info(Some(&ErrorCode::Other("KubeletUnhealthy".into())), "kubelet did not come back"), "kubelet did not come back");
    assert!(RepeatMode::Period.keeps_target_running("rate(5m)") && !RepeatMode::Period.keeps_target_running(" at(2030-01-01T00:00:00Z)"));
}
