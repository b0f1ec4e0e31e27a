//! Runs that survive an agent restart (issue #14): real hub and agent
//! processes; the agent is killed with SIGKILL while scripts run under
//! their supervisors, restarted, and must report each run's real outcome —
//! once, with its output — including stops and timeouts that happen while
//! no agent is there.

#![cfg(unix)]

#[path = "support/harness.rs"]
mod harness;

use std::time::Duration;

use harness::{Agent, Hub, output_of, wait_until};

const WAIT: Duration = Duration::from_secs(60);

fn status(hub: &Hub, invoke_id: &str) -> String {
    let v = hub.call("DescribeInvocationResults", &[("InvokeId", invoke_id)]).unwrap();
    v["Invocation"]["InvocationResults"]["InvocationResult"][0]["InvokeRecordStatus"].as_str().unwrap_or("").to_string()
}

/// A hub with one agent online, the agent's instance id, and a scratch
/// directory where the scripts leave their marks.
fn online() -> (Hub, Agent, String, tempfile::TempDir) {
    let hub = Hub::start();
    let (a, id) = hub.online_agent();
    (hub, a, id, tempfile::tempdir().unwrap())
}

fn lines(path: &std::path::Path) -> Vec<String> {
    std::fs::read_to_string(path).unwrap_or_default().lines().map(str::to_string).collect()
}

#[test]
fn twenty_runs_survive_agent_kill9_with_real_output_none_twice() {
    let hub = Hub::start();
    let mut a = hub.agent();
    // Every run in flight at once, none queued.
    a.extra = vec!["--max-concurrent".into(), "32".into()];
    a.restart();
    let id = a.instance_id();
    hub.wait_online(&id);
    let marker = tempfile::tempdir().unwrap();
    let log = marker.path().join("ran.log");
    let invs: Vec<String> = (0..20)
        .map(|i| hub.run(&format!("echo run-{i} >> {}; sleep 3; echo done-{i}", log.display()), &[&id], &[("Timeout", "60")]))
        .collect();
    // Every script has started (its first line is written) before the kill.
    wait_until("20 scripts started", WAIT, || (lines(&log).len() == 20).then_some(()));
    a.kill(); // SIGKILL, mid-sleep for all 20
    assert!(invs.iter().all(|inv| status(&hub, inv) != "Finished"), "no run finished before the kill");
    a.spawn();
    for (i, inv) in invs.iter().enumerate() {
        let r = &hub.wait_final(inv, WAIT)[0];
        assert_eq!(r["InvokeRecordStatus"], "Finished", "{r}");
        assert_eq!(r["InvocationStatus"], "Success", "{r}");
        assert_eq!(r["ExitCode"], 0, "{r}");
        assert_eq!(String::from_utf8(output_of(r)).unwrap(), format!("done-{i}\n"), "{inv}");
    }
    let mut ran = lines(&log);
    assert_eq!(ran.len(), 20, "each run started exactly once: {ran:?}");
    ran.sort();
    ran.dedup();
    assert_eq!(ran.len(), 20, "no run started twice");
    assert!(a.log().contains("re-attaching to a run that outlived the previous agent"), "the restarted agent re-attached");
    // Finished runs leave no run directory behind.
    wait_until("run directories removed", WAIT, || {
        let n = std::fs::read_dir(a.state_dir().join("runs")).map(|d| d.count()).unwrap_or(0);
        (n == 0).then_some(())
    });
}

#[test]
fn stop_and_timeout_cross_an_agent_restart() {
    let (hub, mut a, id, marker) = online();
    let stopped_log = marker.path().join("stopped.log");
    let timed_log = marker.path().join("timed.log");
    // Each script notes it started, then outlives the agent's absence.
    let stopped = hub.run(
        &format!("echo begun >> {}; echo begun; sleep 120; echo not-reached", stopped_log.display()),
        &[&id],
        &[("Timeout", "300")],
    );
    let timed =
        hub.run(&format!("echo begun >> {}; echo begun; sleep 120; echo not-reached", timed_log.display()), &[&id], &[("Timeout", "5")]);
    wait_until("both started", WAIT, || (lines(&stopped_log).len() == 1 && lines(&timed_log).len() == 1).then_some(()));
    a.kill();
    hub.wait_offline(&id);
    // The stop is owed to an agent that is not there; the hub sends it
    // when the restarted agent connects, which re-attached first.
    hub.call("StopInvocation", &[("InvokeId", &stopped)]).unwrap();
    a.spawn();
    let r = &hub.wait_final(&stopped, WAIT)[0];
    assert_eq!(r["InvokeRecordStatus"], "Stopped", "{r}");
    assert_eq!(r["InvocationStatus"], "Terminated", "{r}");
    assert_eq!(output_of(r), b"begun\n", "output from before the restart kept: {r}");
    let r = &hub.wait_final(&timed, WAIT)[0];
    assert_eq!(r["InvocationStatus"], "Timeout", "{r}");
    assert_eq!(r["ErrorCode"], "ExecutionTimeout", "{r}");
    assert_eq!(output_of(r), b"begun\n", "{r}");
    assert_eq!(lines(&stopped_log).len(), 1, "not run again");
    assert_eq!(lines(&timed_log).len(), 1, "not run again");
}

#[test]
fn stop_after_restart_reaches_a_reattached_run() {
    let (hub, mut a, id, marker) = online();
    let log = marker.path().join("ran.log");
    let inv = hub.run(&format!("echo begun; echo begun >> {}; sleep 120", log.display()), &[&id], &[("Timeout", "300")]);
    wait_until("script started", WAIT, || (lines(&log).len() == 1).then_some(()));
    a.kill();
    a.spawn();
    hub.wait_online(&id);
    wait_until("re-attached", WAIT, || a.log().contains("re-attaching to a run").then_some(()));
    hub.call("StopInvocation", &[("InvokeId", &inv)]).unwrap();
    let r = &hub.wait_final(&inv, WAIT)[0];
    assert_eq!(r["InvocationStatus"], "Terminated", "{r}");
    assert_eq!(output_of(r), b"begun\n", "{r}");
}

/// What `systemctl restart` does under `KillMode=process`: SIGTERM to the
/// agent alone, a graceful exit, a new agent.
#[test]
fn graceful_restart_mid_run_keeps_runs_and_their_output() {
    let (hub, mut a, id, marker) = online();
    let log = marker.path().join("ran.log");
    let invs: Vec<String> = (0..3)
        .map(|i| hub.run(&format!("echo run-{i} >> {}; sleep 2; echo done-{i}", log.display()), &[&id], &[("Timeout", "60")]))
        .collect();
    wait_until("3 scripts started", WAIT, || (lines(&log).len() == 3).then_some(()));
    assert!(a.terminate().success(), "graceful exit");
    a.spawn();
    for (i, inv) in invs.iter().enumerate() {
        let r = &hub.wait_final(inv, WAIT)[0];
        assert_eq!(r["InvocationStatus"], "Success", "{r}");
        assert_eq!(output_of(r), format!("done-{i}\n").as_bytes());
    }
    assert_eq!(lines(&log).len(), 3, "none ran twice");
}

/// SIGTERM to a run's supervisor is a stop: the tree ends and the result
/// says `Terminated` (what the agent falls back to when it cannot write a
/// stop file, and what the test harness does on cleanup).
#[test]
fn sigterm_to_a_supervisor_stops_its_run() {
    let (hub, a, id, marker) = online();
    let log = marker.path().join("ran.log");
    let inv = hub.run(&format!("echo begun; echo begun >> {}; sleep 120", log.display()), &[&id], &[("Timeout", "300")]);
    // The script has printed (the marker comes after the echo).
    wait_until("script started", WAIT, || (lines(&log).len() == 1).then_some(()));
    let pid = wait_until("supervisor started the script", WAIT, || a.supervisor_pids().first().copied());
    harness::unsafe_kill(pid, "TERM");
    let r = &hub.wait_final(&inv, WAIT)[0];
    assert_eq!(r["InvocationStatus"], "Terminated", "{r}");
    assert_eq!(output_of(r), b"begun\n", "{r}");
}

/// A supervisor whose run directory is removed under it (the test
/// harness's own cleanup did this: SIGTERM, then the state directory
/// deleted during the stop) ends with its script. Before, it retried
/// writing the result into the missing directory every second for an
/// hour, a process left behind per such run.
#[test]
fn a_supervisor_whose_run_directory_is_removed_ends_with_its_script() {
    let (hub, mut a, id, marker) = online();
    let log = marker.path().join("ran.log");
    hub.run(&format!("echo begun >> {}; sleep 2", log.display()), &[&id], &[("Timeout", "60")]);
    wait_until("script started", WAIT, || (lines(&log).len() == 1).then_some(()));
    let pid = wait_until("supervisor started the script", WAIT, || a.supervisor_pids().first().copied());
    // No agent left to remove or read the directory: only the supervisor's
    // own handling of the missing directory can end it.
    a.kill();
    std::fs::remove_dir_all(a.state_dir().join("runs")).unwrap();
    let is_supervisor =
        || std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| c.split(|b| *b == 0).any(|arg| arg == b"__supervise"));
    assert!(is_supervisor(), "the supervisor outlives the agent's kill");
    // The script sleeps 2 s; the old retry loop would hold on for an hour.
    wait_until("the supervisor ended", WAIT, || (!is_supervisor()).then_some(()));
}

/// The supervisor writes the result first and removes the script's
/// directory after it (issue #21: the removal is off the path to the
/// result); it is still removed, and the reported output is whole.
#[test]
fn a_supervised_runs_script_directory_is_removed_after_its_result() {
    let (hub, a, id, _scratch) = online();
    let inv = hub.run("echo \"$0\"; tr '\\0' ' ' < /proc/$PPID/cmdline; echo; echo last line", &[&id], &[("Timeout", "60")]);
    let results = hub.wait_final(&inv, WAIT);
    assert_eq!(results[0]["InvocationStatus"], "Success", "{results:?}");
    let out = String::from_utf8(output_of(&results[0])).unwrap();
    let mut lines = out.lines();
    let script = std::path::PathBuf::from(lines.next().expect("the script's path"));
    // Its parent was the run's supervisor, not the agent.
    assert!(lines.next().is_some_and(|l| l.contains("__supervise")), "{out}");
    assert_eq!(lines.next(), Some("last line"), "{out}");
    assert!(script.is_absolute() && script.parent().is_some(), "{out}");
    let dir = script.parent().unwrap().to_path_buf();
    wait_until("the script's directory removed", WAIT, || (!dir.exists()).then_some(()));
    drop(a);
}

/// Runs are supervised by `deckhand-supervise` when it sits beside the
/// agent and says the agent's version, and by the agent's own binary
/// otherwise (a copy of the agent alone in a directory: a package without
/// it, or a self-update that replaced only the agent). Either way the run
/// completes as a supervised one.
#[test]
fn runs_use_the_supervisor_binary_only_beside_an_agent_of_its_version() {
    let script = "readlink /proc/$PPID/exe; tr '\\0' ' ' < /proc/$PPID/cmdline";
    let parent_of = |hub: &Hub, id: &str| {
        let inv = hub.run(script, &[id], &[("Timeout", "60")]);
        let r = &hub.wait_final(&inv, WAIT)[0];
        assert_eq!(r["InvocationStatus"], "Success", "{r}");
        String::from_utf8(output_of(r)).unwrap()
    };
    let hub = Hub::start();
    let (_a, id) = hub.online_agent();
    let out = parent_of(&hub, &id);
    let beside = std::path::Path::new(env!("CARGO_BIN_EXE_deckhand-agent")).with_file_name("deckhand-supervise");
    let mut lines = out.lines();
    assert_eq!(lines.next().map(std::path::PathBuf::from), Some(beside.canonicalize().unwrap()), "{out}");
    assert!(lines.next().is_some_and(|l| l.contains("__supervise")), "{out}");

    let alone = tempfile::tempdir().unwrap();
    let agent = alone.path().join("deckhand-agent");
    std::fs::copy(env!("CARGO_BIN_EXE_deckhand-agent"), &agent).unwrap();
    // A `deckhand-supervise` of another version beside it is not used either.
    let other = alone.path().join("deckhand-supervise");
    std::fs::write(&other, "#!/bin/sh\necho 'deckhand-supervise 0.0.1 (supervise revision 1)'\n").unwrap();
    std::fs::set_permissions(&other, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let b = hub.agent_binary(&hub.url, agent.clone());
    let id_b = b.instance_id();
    hub.wait_online(&id_b);
    let out = parent_of(&hub, &id_b);
    let mut lines = out.lines();
    assert_eq!(lines.next().map(std::path::PathBuf::from), Some(agent.canonicalize().unwrap()), "{out}");
    assert!(lines.next().is_some_and(|l| l.contains("__supervise")), "{out}");
}
