//! Nothing lost: kill -9 of agents and hubs, a proxy that cuts and
//! black-holes connections. Every invocation must end in a final state
//! with its real output, and none may run twice.

#[path = "support/harness.rs"]
mod harness;
#[path = "support/proxy.rs"]
mod proxy;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use harness::{Hub, output_of, wait_until};

const WAIT: Duration = Duration::from_secs(60);

fn status(hub: &Hub, invoke_id: &str) -> String {
    let v = hub.call("DescribeInvocationResults", &[("InvokeId", invoke_id)]).unwrap();
    v["Invocation"]["InvocationResults"]["InvocationResult"][0]["InvokeRecordStatus"].as_str().unwrap_or("").to_string()
}

#[test]
fn agent_and_supervisor_killed_mid_run_report_execution_interrupted() {
    let hub = Hub::start();
    let mut a = hub.agent();
    let id = a.instance_id();
    hub.wait_online(&id);
    let inv = hub.run("sleep 30", &[&id], &[("Timeout", "120")]);
    wait_until("running", WAIT, || (status(&hub, &inv) == "Running").then_some(()));
    wait_until("supervisor started the script", WAIT, || (!a.supervisor_pids().is_empty()).then_some(()));
    a.kill(); // SIGKILL
    // The run would survive the agent alone (tests/e2e_survive.rs); with its
    // supervisor gone too, as after a reboot, the outcome is unknown.
    a.kill_supervisors();
    a.spawn();
    let r = &hub.wait_final(&inv, WAIT)[0];
    assert_eq!(r["InvokeRecordStatus"], "Failed", "{r}");
    assert_eq!(r["InvocationStatus"], "Error", "{r}");
    assert_eq!(r["ErrorCode"], "ExecutionInterrupted");
    assert_eq!(r["ErrorInfo"], "the command execution has been interrupted");
}

#[test]
fn queued_invocation_survives_agent_kill_and_runs_once() {
    let hub = Hub::start();
    let mut a = hub.agent();
    a.extra = vec!["--max-concurrent".into(), "1".into()];
    a.restart();
    let id = a.instance_id();
    hub.wait_online(&id);
    let marker = tempfile::tempdir().unwrap();
    let log = marker.path().join("ran.log");
    let first = hub.run("sleep 30", &[&id], &[("Timeout", "120")]);
    wait_until("running", WAIT, || (status(&hub, &first) == "Running").then_some(()));
    // The hub shows Running once the agent journaled the start, before the
    // supervisor has written its pid to `ran`: without this wait a loaded
    // machine let the supervisor escape the kill below, and the first run
    // succeeded after its 30 s instead of being interrupted.
    wait_until("supervisor started the script", WAIT, || (!a.supervisor_pids().is_empty()).then_some(()));
    let second = hub.run(&format!("echo second >> {}; echo done", log.display()), &[&id], &[]);
    // Accepted but waiting for the one slot. The real sign that the agent
    // journaled it (not the Pending every target starts in): its id is in
    // the journal file, which is fdatasync'd before the acknowledgement.
    let journal = a.state_dir().join("journal/journal.log");
    wait_until("journaled by the agent", WAIT, || {
        let bytes = std::fs::read(&journal).ok()?;
        bytes.windows(second.len()).any(|w| w == second.as_bytes()).then_some(())
    });
    a.kill();
    a.kill_supervisors();
    a.spawn();
    assert_eq!(hub.wait_final(&first, WAIT)[0]["ErrorCode"], "ExecutionInterrupted");
    let r = &hub.wait_final(&second, WAIT)[0];
    assert_eq!(output_of(r), b"done\n");
    assert_eq!(std::fs::read_to_string(&log).unwrap(), "second\n", "ran exactly once");
}

#[tokio::test(flavor = "multi_thread")]
async fn blackholed_link_is_detected_and_recovered() {
    let hub = Hub::start_with(&["--heartbeat-secs", "1"]);
    let upstream: std::net::SocketAddr = hub.url.trim_start_matches("https://").parse().unwrap();
    let proxy = proxy::FaultProxy::start(upstream).await;
    let v = hub.call("CreateActivation", &[("InstanceCount", "1")]).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let mut agent = std::process::Command::new(env!("CARGO_BIN_EXE_deckhand-agent"))
        .args([
            "run",
            "--hub",
            &format!("https://{}", proxy.addr()),
            "--ca-file",
            hub.ca.to_str().unwrap(),
            "--backoff-cap-secs",
            "1",
            "--state-dir",
        ])
        .arg(&state)
        .args(["--activation-id", v["ActivationId"].as_str().unwrap(), "--activation-code", v["ActivationCode"].as_str().unwrap()])
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let id = tokio::task::block_in_place(|| {
        wait_until("identity", WAIT, || {
            let v: serde_json::Value = serde_json::from_slice(&std::fs::read(state.join("identity.json")).ok()?).ok()?;
            Some(v["instance_id"].as_str()?.to_string())
        })
    });
    tokio::task::block_in_place(|| hub.wait_online(&id));
    let conns_before = proxy.accepted();
    proxy.set_blackhole(true);
    let t0 = Instant::now();
    tokio::task::block_in_place(|| {
        wait_until("hub notices the dead link", Duration::from_secs(15), || {
            let v = hub.call("DescribeCloudAssistantStatus", &[("InstanceId.1", &id)]).ok()?;
            (v["InstanceCloudAssistantStatusSet"]["InstanceCloudAssistantStatus"][0]["CloudAssistantStatus"] == "false").then_some(())
        })
    });
    let detected = t0.elapsed();
    // Two 1 s heartbeats plus the hub's 2 s slack, plus polling.
    assert!(detected < Duration::from_secs(8), "detected after {detected:?}");
    // Work queued while the link is dead is delivered once it heals.
    let inv = hub.run("echo healed", &[&id], &[]);
    proxy.set_blackhole(false);
    proxy.cut_all();
    let r = tokio::task::block_in_place(|| hub.wait_final(&inv, WAIT));
    assert_eq!(output_of(&r[0]), b"healed\n");
    assert!(proxy.accepted() > conns_before, "agent reconnected");
    // A slow link (200 ms per chunk each way) still delivers, just later.
    proxy.set_delay(Duration::from_millis(200));
    let slow = hub.run("echo slow-link", &[&id], &[]);
    let r = tokio::task::block_in_place(|| hub.wait_final(&slow, WAIT));
    assert_eq!(output_of(&r[0]), b"slow-link\n");
    proxy.set_delay(Duration::ZERO);
    println!("dead link detected in {detected:?}");
    let _ = agent.kill();
    let _ = agent.wait();
}

/// 100 invocations on 5 agents while agents and the hub are killed with
/// SIGKILL at pseudo-random points. Every invocation ends final; every
/// Finished one carries its real output; no script ran twice.
#[test]
fn chaos_kill_agents_and_hub_nothing_lost_nothing_twice() {
    let mut hub = Hub::start();
    let mut agents: Vec<_> = (0..5).map(|_| hub.agent()).collect();
    let ids: Vec<String> = agents.iter().map(|a| a.instance_id()).collect();
    for id in &ids {
        hub.wait_online(id);
    }
    let logs = tempfile::tempdir().unwrap();
    let mut invs: Vec<(String, String)> = Vec::new();
    // A small LCG: reproducible "random" kill points without a dependency.
    let mut seed: u64 = 0x9E3779B97F4A7C15;
    let mut next = move |n: u64| {
        seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (seed >> 33) % n
    };
    let mut kills = (0, 0);
    for i in 0..100 {
        let target = &ids[i % 5];
        let log = logs.path().join(format!("{target}.log"));
        let script = format!("echo run-{i} >> {}; sleep 0.{}; echo out-{i}", log.display(), next(5));
        let inv = loop {
            // The hub may be restarting: retry the submission.
            match hub.call(
                "RunCommand",
                &[
                    ("Type", "RunShellScript"),
                    ("CommandContent", &script),
                    ("InstanceId.1", target),
                    ("ClientToken", &format!("chaos-{i}")),
                ],
            ) {
                Ok(v) => break v["InvokeId"].as_str().unwrap().to_string(),
                Err(_) => std::thread::sleep(Duration::from_millis(100)),
            }
        };
        invs.push((inv, format!("out-{i}\n")));
        match next(12) {
            0 => {
                let k = next(5) as usize;
                agents[k].kill();
                agents[k].spawn();
                kills.0 += 1;
            }
            1 if kills.1 < 3 => {
                hub.restart();
                kills.1 += 1;
            }
            _ => {}
        }
        std::thread::sleep(Duration::from_millis(next(60)));
    }
    let mut counts: HashMap<String, usize> = HashMap::new();
    for (inv, expected) in &invs {
        let r = &hub.wait_final(inv, WAIT)[0];
        let st = r["InvokeRecordStatus"].as_str().unwrap().to_string();
        if st == "Finished" {
            assert_eq!(String::from_utf8(output_of(r)).unwrap(), *expected, "{inv}");
        } else {
            assert_eq!(r["ErrorCode"], "ExecutionInterrupted", "only an agent kill may fail a run: {r}");
        }
        *counts.entry(st).or_default() += 1;
    }
    // None twice: every run line appears at most once across all logs.
    let mut seen = HashMap::new();
    for id in &ids {
        let text = std::fs::read_to_string(logs.path().join(format!("{id}.log"))).unwrap_or_default();
        for line in text.lines() {
            *seen.entry(line.to_string()).or_insert(0) += 1;
        }
    }
    let twice: Vec<_> = seen.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "ran more than once: {twice:?}");
    println!("chaos: {} invocations, agent kills {}, hub kills {}, final states {counts:?}", invs.len(), kills.0, kills.1);
    assert_eq!(counts.values().sum::<usize>(), 100);
}

/// A one-shot run whose slot is free starts with its acceptance (issue
/// #21): its start and `Running` report are journaled beside the
/// acceptance and its supervisor is launched before their one sync. When
/// that sync fails (the journal's sync fault hook: the disk takes the
/// writes, then fails to flush them), none of it happened: nothing is
/// acknowledged, the supervisor is withdrawn before its go and starts
/// nothing, and once the journal works again the hub's re-delivery runs
/// the script exactly once.
#[test]
fn a_failed_acceptance_sync_starts_nothing_and_the_redelivery_runs_once() {
    let hub = Hub::start();
    let scratch = tempfile::tempdir().unwrap();
    let flag = scratch.path().join("sync-fails");
    let mut a = hub.agent_unstarted(&hub.url, std::path::PathBuf::from(env!("CARGO_BIN_EXE_deckhand-agent")));
    a.env.push(("DECKHAND_FAULT_JOURNAL_SYNC".into(), flag.display().to_string()));
    a.spawn();
    let id = a.instance_id();
    hub.wait_online(&id);
    std::fs::write(&flag, b"EIO").unwrap();
    let marker = scratch.path().join("ran.log");
    let inv = hub.run(&format!("echo run >> {}; echo done", marker.display()), &[&id], &[("Timeout", "60")]);
    // The sign that the supervisor launched for the run was withdrawn: its
    // own log says so, as it exits.
    let runs = a.state_dir().join("runs");
    let withdrawn = || {
        let rd = std::fs::read_dir(&runs).ok()?;
        rd.filter_map(|e| e.ok()).find_map(|e| {
            let log = std::fs::read_to_string(e.path().join("supervisor.log")).ok()?;
            log.contains("withdrawn before its go").then(|| e.path())
        })
    };
    let dir = wait_until("a supervisor withdrawn before its go", WAIT, withdrawn);
    assert!(a.log().contains("cannot journal an invocation"), "the agent says why it did not accept");
    assert!(!marker.exists(), "the script never started");
    assert!(!dir.join("ran").exists(), "no start was recorded in {}", dir.display());
    assert_ne!(status(&hub, &inv), "Running", "no Running report reached the hub");
    std::fs::remove_file(&flag).unwrap();
    let r = &hub.wait_final(&inv, WAIT)[0];
    assert_eq!(r["InvocationStatus"], "Success", "{r}");
    assert_eq!(output_of(r), b"done\n", "{r}");
    assert_eq!(std::fs::read_to_string(&marker).unwrap(), "run\n", "the script ran exactly once");
}
