//! Per-fire rollout windows of periodic invocations end to end (issue #16,
//! docs/fleet.md "Periodic invocations"): one real `deckhand-hub` on
//! SQLite and six real `deckhand-agent` processes on loopback, on a
//! schedule firing every 10 seconds (cron `*/10`: `rate()` has Alibaba's
//! 60-second minimum, and cron fires share their instants across agents
//! just the same). Concurrency is read from the timestamps the scripts
//! themselves write, never from hub state; each fire is told apart by the
//! ten-second slot its runs started in. A "rogue agent" (a real registered
//! WebSocket client under the test's control) plays an agent that does not
//! ask before fires and a hostile one.

#[path = "support/harness.rs"]
mod harness;
#[path = "support/pg.rs"]
mod pg;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use deckhand::agent::transport::{self, HubUrl, Ws};
use deckhand::protocol::{self, AgentMsg, HostFacts, HubMsg, PROTOCOL_VERSION};
use futures_util::{SinkExt, StreamExt};
use harness::{Agent, Hub, wait_until};
use serde_json::Value;
use tokio_tungstenite::tungstenite::Message;

const AGENTS: usize = 6;
const WAIT: Duration = Duration::from_secs(120);
/// The schedule: every ten seconds, on the tens.
const EVERY_10S: &str = "*/10 * * * * ?";
const PERIOD_NS: u128 = 10_000_000_000;

/// A run appends `start <ns>` and `end <ns>` to a file named after its instance.
fn script(marks: &Path, sleep: &str, exit: u8) -> String {
    let f = format!("{}/{{{{ACS::InstanceId}}}}", marks.display());
    format!("echo \"start $(date +%s%N)\" >> {f}; sleep {sleep}; echo \"end $(date +%s%N)\" >> {f}; exit {exit}")
}

/// Runs per fire: fire (ten-second slot of the start) → (instance, start, end).
/// A run still going (no end yet) ends at "now" for the overlap count.
fn runs_by_fire(marks: &Path) -> BTreeMap<u128, Vec<(String, u128, u128)>> {
    let mut out: BTreeMap<u128, Vec<(String, u128, u128)>> = BTreeMap::new();
    for entry in std::fs::read_dir(marks).unwrap() {
        let instance = entry.unwrap().file_name().to_string_lossy().into_owned();
        let text = std::fs::read_to_string(marks.join(&instance)).unwrap();
        let mut start = None;
        for line in text.lines() {
            if let Some(ns) = line.strip_prefix("start ") {
                start = Some(ns.parse::<u128>().unwrap());
            } else if let (Some(ns), Some(s)) = (line.strip_prefix("end "), start.take()) {
                out.entry(s / PERIOD_NS).or_default().push((instance.clone(), s, ns.parse().unwrap()));
            }
        }
        if let Some(s) = start {
            out.entry(s / PERIOD_NS).or_default().push((instance.clone(), s, u128::MAX));
        }
    }
    out
}

/// Most runs alive at one instant, from their own timestamps.
fn peak_overlap(runs: &[(String, u128, u128)]) -> usize {
    let mut events: Vec<(u128, i32)> = runs.iter().flat_map(|(_, s, e)| [(*s, 1), (*e, -1)]).collect();
    events.sort();
    let (mut now, mut peak) = (0i32, 0i32);
    for (_, d) in events {
        now += d;
        peak = peak.max(now);
    }
    peak as usize
}

/// Every fire: no instance ran twice, never more than `window` at once.
fn check_fires(marks: &Path, window: usize) -> BTreeMap<u128, Vec<(String, u128, u128)>> {
    let fires = runs_by_fire(marks);
    for (fire, runs) in &fires {
        let mut seen = BTreeSet::new();
        for (instance, _, _) in runs {
            assert!(seen.insert(instance), "{instance} ran fire {fire} twice: {runs:?}");
        }
        let peak = peak_overlap(runs);
        assert!(peak <= window, "fire {fire}: {peak} runs at once, more than MaxConcurrency {window}: {runs:?}");
    }
    fires
}

fn history(hub: &Hub, invoke_id: &str) -> Vec<Value> {
    let v = hub
        .call("DescribeInvocationResults", &[("InvokeId", invoke_id), ("IncludeHistory", "true"), ("PageSize", "50")])
        .expect("DescribeInvocationResults");
    v["Invocation"]["InvocationResults"]["InvocationResult"].as_array().cloned().unwrap_or_default()
}

fn periodic(hub: &Hub, script: &str, ids: &[&str], window: &[(&str, &str)]) -> String {
    let mut extra = vec![("EnableParameter", "true"), ("RepeatMode", "Period"), ("Frequency", EVERY_10S), ("Timeout", "9")];
    extra.extend_from_slice(window);
    hub.run(script, ids, &extra)
}

fn stop(hub: &Hub, invoke_id: &str) {
    hub.call("StopInvocation", &[("InvokeId", invoke_id)]).expect("StopInvocation");
    hub.wait_final(invoke_id, WAIT);
}

#[test]
fn each_fire_of_a_periodic_invocation_holds_its_window() {
    let mut hub = Hub::start();
    let agents: Vec<Agent> = (0..AGENTS).map(|_| hub.agent()).collect();
    let ids: Vec<String> = agents.iter().map(Agent::instance_id).collect();
    for id in &ids {
        hub.wait_online(id);
    }
    let targets: Vec<&str> = ids.iter().map(String::as_str).collect();
    let all: BTreeSet<String> = ids.iter().cloned().collect();

    // 1. MaxConcurrency=2: each fire runs on every instance, two at a time,
    // each instance once. 1.5 s runs: three slots' worth fit in a fire.
    let marks = tempfile::tempdir().unwrap();
    let invoke_id = periodic(&hub, &script(marks.path(), "1.5", 0), &targets, &[("MaxConcurrency", "2")]);
    let complete = |fires: &BTreeMap<u128, Vec<(String, u128, u128)>>| {
        fires.values().filter(|runs| runs.iter().map(|r| r.0.clone()).collect::<BTreeSet<_>>() == all).count()
    };
    wait_until("two fires that ran on every instance", WAIT, || (complete(&check_fires(marks.path(), 2)) >= 2).then_some(()));
    // 2. A hub killed with SIGKILL during a fire: the window is in the
    // store, grants still pending reach the agents after they reconnect.
    let before = runs_by_fire(marks.path()).values().map(Vec::len).sum::<usize>();
    wait_until("a fire under way", WAIT, || (runs_by_fire(marks.path()).values().map(Vec::len).sum::<usize>() > before).then_some(()));
    hub.restart();
    let fire_of_kill = *runs_by_fire(marks.path()).keys().last().unwrap();
    wait_until("a complete fire after the restart", WAIT, || {
        let fires = check_fires(marks.path(), 2);
        fires.iter().any(|(f, runs)| *f > fire_of_kill && runs.len() == AGENTS).then_some(())
    });
    stop(&hub, &invoke_id);
    let fires = check_fires(marks.path(), 2);
    assert!(fires.values().any(|runs| peak_overlap(runs) == 2), "the window ran fires two at a time: {fires:?}");
    // Every record the hub keeps is a fire that ran (Success) or the stop.
    for r in history(&hub, &invoke_id) {
        assert!(matches!(r["InvocationStatus"].as_str(), Some("Success" | "Cancelled" | "Terminated" | "Stopped")), "{r}");
    }

    // 3. MaxErrors counts per fire: with a window of one and MaxErrors=0,
    // the first failure of a fire denies the rest of that fire only; the
    // next fire starts fresh and again runs exactly one.
    let marks = tempfile::tempdir().unwrap();
    let failing = periodic(&hub, &script(marks.path(), "0.2", 1), &targets, &[("MaxConcurrency", "1"), ("MaxErrors", "0")]);
    let halted = |hub: &Hub| history(hub, &failing).iter().filter(|r| r["ErrorCode"] == "MaxErrorsExceeded").count();
    wait_until("two fires stopped by MaxErrors", WAIT, || (halted(&hub) >= 2 * (AGENTS - 1)).then_some(()));
    stop(&hub, &failing);
    let fires = check_fires(marks.path(), 1);
    let full: Vec<_> = fires.values().filter(|runs| !runs.is_empty()).collect();
    assert!(full.len() >= 2, "{fires:?}");
    for runs in full {
        assert_eq!(runs.len(), 1, "one failure per fire stops that fire: {runs:?}");
    }
    let denied: Vec<Value> = history(&hub, &failing).into_iter().filter(|r| r["ErrorCode"] == "MaxErrorsExceeded").collect();
    for r in &denied {
        assert_eq!(r["InvocationStatus"], "Cancelled", "{r}");
        assert!(r["ErrorInfo"].as_str().unwrap().contains("more than MaxErrors 0"), "{r}");
    }

    // 4. A fire not granted before the next is due ends Cancelled with
    // FireNotGranted: 4 s runs one at a time cannot serve six instances in 10 s.
    let marks = tempfile::tempdir().unwrap();
    let slow = periodic(&hub, &script(marks.path(), "4", 0), &targets, &[("MaxConcurrency", "1")]);
    let starved = |hub: &Hub| history(hub, &slow).into_iter().filter(|r| r["ErrorCode"] == "FireNotGranted").collect::<Vec<_>>();
    let late = wait_until("fires ended without a grant", WAIT, || {
        let s = starved(&hub);
        (s.len() >= 3).then_some(s)
    });
    stop(&hub, &slow);
    check_fires(marks.path(), 1);
    for r in &late {
        assert_eq!(r["InvocationStatus"], "Cancelled", "{r}");
        assert!(r["ErrorInfo"].as_str().unwrap().contains("before the next fire was due"), "{r}");
    }
    drop(agents);
}

fn tls(hub: &Hub) -> Arc<rustls::ClientConfig> {
    deckhand::tls::client_config(Some(&hub.ca)).expect("client tls")
}

async fn send(ws: &mut Ws, m: &AgentMsg) {
    ws.send(Message::Text(protocol::encode(m).expect("encode").into())).await.expect("send");
}

/// Next hub message that is not an invocation, heartbeat or ack; None
/// when the hub stays silent for `within`.
async fn answer(ws: &mut Ws, within: Duration) -> Option<HubMsg> {
    loop {
        match tokio::time::timeout(within, ws.next()).await {
            Err(_) => return None,
            Ok(Some(Ok(Message::Text(t)))) => match protocol::decode::<HubMsg>(t.as_str()).expect("hub frame") {
                HubMsg::Invoke { invocation } => {
                    send(ws, &AgentMsg::InvokeAck { invoke_id: invocation.invoke_id }).await;
                }
                HubMsg::HeartbeatAck { .. } | HubMsg::ReportAck { .. } => {}
                other => return Some(other),
            },
            Ok(Some(Ok(_))) => {}
            Ok(_) => panic!("the hub closed the connection"),
        }
    }
}

/// A registered agent under the test's control, saying `fire_grants` or not.
async fn rogue(hub: &Hub, fire_grants: bool) -> (Ws, String) {
    let v = hub.call("CreateActivation", &[("InstanceCount", "1")]).unwrap();
    let (id, code) = (v["ActivationId"].as_str().unwrap().to_string(), v["ActivationCode"].as_str().unwrap().to_string());
    let mut ws = transport::dial(&HubUrl::parse(&hub.url).unwrap(), &tls(hub), false).await.expect("dial");
    let facts =
        HostFacts { hostname: "rogue".into(), os_type: "linux".into(), agent_version: "rogue".into(), fire_grants, ..Default::default() };
    send(&mut ws, &AgentMsg::Register { protocol: PROTOCOL_VERSION, activation_id: id, activation_code: code, facts: facts.clone() }).await;
    let Some(HubMsg::Registered { instance_id, token }) = answer(&mut ws, WAIT).await else { panic!("register") };
    send(&mut ws, &AgentMsg::Hello { protocol: PROTOCOL_VERSION, instance_id: instance_id.clone(), token, facts }).await;
    assert!(matches!(answer(&mut ws, WAIT).await, Some(HubMsg::Welcome { .. })));
    (ws, instance_id)
}

fn now_plus(secs: i64) -> String {
    (chrono::Utc::now() + chrono::Duration::seconds(secs)).to_rfc3339()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agents_that_do_not_ask_are_refused_and_hostile_requests_are_bounded() {
    let hub = Hub::start();
    let agent = hub.agent();
    let real = agent.instance_id();
    let (mut old, old_id) = rogue(&hub, false).await;
    let (mut bad, bad_id) = rogue(&hub, true).await;
    for id in [&real, &old_id, &bad_id] {
        hub.wait_online(id);
    }
    let window = [("RepeatMode", "Period"), ("Frequency", "rate(5m)"), ("MaxConcurrency", "1")];
    let run = |ids: &[&str]| {
        let keys: Vec<String> = (1..=ids.len()).map(|i| format!("InstanceId.{i}")).collect();
        let mut p: Vec<(&str, &str)> = vec![("Type", "RunShellScript"), ("CommandContent", "true")];
        p.extend(keys.iter().map(String::as_str).zip(ids.iter().copied()));
        p.extend_from_slice(&window);
        hub.call("RunCommand", &p)
    };
    // An agent that does not ask before a fire would fire unwindowed: refused, named.
    let e = run(&[&real, &old_id]).unwrap_err().to_string();
    assert!(e.contains("InvalidParameter.MaxConcurrency") && e.contains(&old_id), "{e}");
    // ... by tag too; and without a window it is welcome.
    hub.call("TagResources", &[("ResourceType", "instance"), ("ResourceId.1", &old_id), ("Tag.1.Key", "old"), ("Tag.1.Value", "1")])
        .unwrap();
    let e = hub
        .call(
            "RunCommand",
            &[("Type", "RunShellScript"), ("CommandContent", "true"), ("ResourceTag.1.Key", "old"), window[0], window[1], window[2]],
        )
        .unwrap_err()
        .to_string();
    assert!(e.contains(&old_id), "{e}");
    let plain = run(&[&real]).map(|v| v["InvokeId"].as_str().unwrap().to_string()).expect("windowed Period on a capable agent");
    // BatchWait has no meaning per fire.
    let e = hub
        .call(
            "RunCommand",
            &[("Type", "RunShellScript"), ("CommandContent", "true"), ("InstanceId.1", &real), window[0], window[1], ("BatchWait", "5")],
        )
        .unwrap_err()
        .to_string();
    assert!(e.contains("InvalidParameter.BatchWait"), "{e}");
    // The frequency of a windowed invocation does not change (its fires' instants are shared).
    let e = hub.call("ModifyInvocationAttribute", &[("InvokeId", &plain), ("Frequency", "rate(10m)")]).unwrap_err().to_string();
    assert!(e.contains("InvalidParameter.Frequency"), "{e}");

    // Hostile requests. Not a target of that invocation: refused, no grant.
    send(&mut bad, &AgentMsg::FireRequest { invoke_id: plain.clone(), record_seq: 1, scheduled: now_plus(0) }).await;
    match answer(&mut bad, WAIT).await {
        Some(HubMsg::Error { code, fatal: false, .. }) => assert_eq!(code, "NotATarget"),
        other => panic!("{other:?}"),
    }
    // A target, asking for a fire far off, a junk instant, record 0: denied, named.
    let mine = run(&[&bad_id]).unwrap()["InvokeId"].as_str().unwrap().to_string();
    for (seq, at, why) in [(1, now_plus(86_400), "limit is 300 s"), (1, "x".repeat(5000), "RFC 3339"), (0, now_plus(0), "record_seq 0")] {
        send(&mut bad, &AgentMsg::FireRequest { invoke_id: mine.clone(), record_seq: seq, scheduled: at }).await;
        match answer(&mut bad, WAIT).await {
            Some(HubMsg::FireAnswer { granted: false, error_code, error_info, .. }) => {
                assert_eq!(error_code, "FireNotGranted");
                assert!(error_info.contains(why), "{error_info}");
            }
            other => panic!("{other:?}"),
        }
    }
    // A flood: bounded by the per-session rate; the hub stays up and answers
    // a proper request afterwards (granted: the window of one is free).
    for i in 0..500u32 {
        let m = AgentMsg::FireRequest { invoke_id: format!("t-flood-{i}-{}", "z".repeat(100)), record_seq: i, scheduled: "junk".into() };
        send(&mut bad, &m).await;
    }
    let mut refusals = 0;
    while let Some(m) = answer(&mut bad, Duration::from_secs(2)).await {
        assert!(matches!(m, HubMsg::Error { fatal: false, .. }), "{m:?}");
        refusals += 1;
    }
    assert!((1..=200).contains(&refusals), "{refusals} refusals for 500 requests: the rate limit holds");
    let mut granted = false;
    for _ in 0..20 {
        send(&mut bad, &AgentMsg::FireRequest { invoke_id: mine.clone(), record_seq: 2, scheduled: now_plus(0) }).await;
        if let Some(HubMsg::FireAnswer { granted: g, record_seq: 2, .. }) = answer(&mut bad, Duration::from_secs(2)).await {
            granted = g;
            break;
        }
    }
    assert!(granted, "a proper request is granted after the flood");
    // An older fire than one already asked for is refused.
    send(&mut bad, &AgentMsg::FireRequest { invoke_id: mine.clone(), record_seq: 1, scheduled: now_plus(0) }).await;
    match answer(&mut bad, WAIT).await {
        Some(HubMsg::FireAnswer { granted: false, error_info, .. }) => assert!(error_info.contains("older"), "{error_info}"),
        other => panic!("{other:?}"),
    }
    let log = hub.log();
    assert!(!log.contains("zzzzzzzzzz") && !log.contains("xxxxxxxxxx"), "payloads never logged");
    let _ = old.close(None).await;
    drop(agent);
}

/// The window lives in the store: two replicas on one real PostgreSQL,
/// agents split between them, one fire's window of two holds across both,
/// and across the death of the replica that created the invocation.
#[test]
fn a_fire_window_holds_across_two_replicas_on_postgres() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let Some(db) = rt.block_on(pg::TestDb::create("e2e_fire_window::a_fire_window_holds_across_two_replicas_on_postgres")) else {
        return;
    };
    let store = ["--store", db.url.as_str()];
    let mut a = Hub::start_with(&store);
    let b = Hub::start_replica(&a, &store);
    let agents = b.agents_across(&[&a, &b], AGENTS);
    let ids: Vec<String> = agents.iter().map(Agent::instance_id).collect();
    for id in &ids {
        b.wait_online(id);
    }
    let targets: Vec<&str> = ids.iter().map(String::as_str).collect();
    let all: BTreeSet<String> = ids.iter().cloned().collect();
    let marks = tempfile::tempdir().unwrap();
    let invoke_id = periodic(&a, &script(marks.path(), "1.5", 0), &targets, &[("MaxConcurrency", "2")]);
    let complete = |fires: &BTreeMap<u128, Vec<(String, u128, u128)>>| {
        fires
            .iter()
            .filter(|(_, runs)| runs.iter().map(|r| r.0.clone()).collect::<BTreeSet<_>>() == all)
            .map(|(f, _)| *f)
            .collect::<Vec<_>>()
    };
    wait_until("two fires that ran on every instance", WAIT, || (complete(&check_fires(marks.path(), 2)).len() >= 2).then_some(()));
    // The replica that created the invocation dies: its agents move to B,
    // ask again there, and later fires still hold the window.
    a.kill();
    let killed_after = *runs_by_fire(marks.path()).keys().last().unwrap();
    wait_until("a complete fire after the replica died", WAIT, || {
        complete(&check_fires(marks.path(), 2)).iter().any(|f| *f > killed_after).then_some(())
    });
    stop(&b, &invoke_id);
    let fires = check_fires(marks.path(), 2);
    assert!(fires.values().any(|runs| peak_overlap(runs) == 2), "{fires:?}");
    drop((agents, a, b));
    rt.block_on(db.drop_db());
}
