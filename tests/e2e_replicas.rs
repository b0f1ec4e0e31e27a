//! Several hub replicas on one real PostgreSQL: three `deckhand-hub`
//! processes, twenty `deckhand-agent` processes, real TLS. An invocation
//! created through one replica reaches agents held by another, results are
//! read through a third, and a replica killed mid-run loses nothing and
//! runs nothing twice. Skipped (visibly) only without a PostgreSQL server;
//! `.ci/run` starts one and makes its absence a failure.

#[path = "support/harness.rs"]
mod harness;
#[path = "support/pg.rs"]
mod pg;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use harness::{Agent, Hub, output_of, wait_until};

const AGENTS: usize = 20;
const WAIT: Duration = Duration::from_secs(90);

/// Each run appends its instance id to a file named after the invocation,
/// so runs can be counted after the fact.
fn script(marks: &Path, tag: &str, sleep_secs: u32) -> String {
    format!(
        "sleep {sleep_secs}; echo '{{{{ACS::InstanceId}}}}' >> {}/{{{{ACS::InvokeId}}}}; echo {tag} {{{{ACS::InstanceId}}}}",
        marks.display()
    )
}

fn run(hub: &Hub, script: &str, ids: &[String]) -> String {
    let ids: Vec<&str> = ids.iter().map(String::as_str).collect();
    hub.run(script, &ids, &[("EnableParameter", "true"), ("Timeout", "120")])
}

fn statuses(hub: &Hub, invoke_id: &str) -> BTreeMap<String, String> {
    let Ok(v) = hub.call("DescribeInvocationResults", &[("InvokeId", invoke_id), ("PageSize", "50")]) else { return BTreeMap::new() };
    v["Invocation"]["InvocationResults"]["InvocationResult"]
        .as_array()
        .map(|l| {
            l.iter()
                .map(|r| (r["InstanceId"].as_str().unwrap_or("").to_string(), r["InvokeRecordStatus"].as_str().unwrap_or("").to_string()))
                .collect()
        })
        .unwrap_or_default()
}

/// Finished fires of a schedule on one instance.
fn finished_fires(hub: &Hub, invoke_id: &str, instance_id: &str) -> usize {
    let Ok(v) = hub.call(
        "DescribeInvocationResults",
        &[("InvokeId", invoke_id), ("InstanceId", instance_id), ("IncludeHistory", "true"), ("PageSize", "50")],
    ) else {
        return 0;
    };
    v["Invocation"]["InvocationResults"]["InvocationResult"]
        .as_array()
        .map(|l| l.iter().filter(|r| r["InvokeRecordStatus"] == "Finished").count())
        .unwrap_or(0)
}

/// Every target Finished, exit 0, with its own output; and the marker file
/// shows exactly one run per instance.
fn assert_exactly_once(hub: &Hub, marks: &Path, invoke_id: &str, tag: &str, ids: &[String]) {
    let results = hub.wait_final(invoke_id, WAIT);
    assert_eq!(results.len(), ids.len(), "{invoke_id}: one result per target");
    for r in &results {
        let id = r["InstanceId"].as_str().unwrap();
        assert_eq!(r["InvokeRecordStatus"], "Finished", "{invoke_id} on {id}: {r}");
        assert_eq!(r["ExitCode"], 0, "{invoke_id} on {id}: {r}");
        assert_eq!(String::from_utf8_lossy(&output_of(r)), format!("{tag} {id}\n"), "{invoke_id} on {id}");
    }
    let text = std::fs::read_to_string(marks.join(invoke_id)).unwrap_or_default();
    let mut ran: Vec<&str> = text.lines().collect();
    ran.sort();
    let mut want: Vec<&str> = ids.iter().map(String::as_str).collect();
    want.sort();
    assert_eq!(ran, want, "{invoke_id}: each instance ran exactly once");
}

#[test]
fn three_replicas_twenty_agents_survive_a_replica_kill() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let Some(db) = rt.block_on(pg::TestDb::create("e2e_replicas::three_replicas_twenty_agents_survive_a_replica_kill")) else { return };
    let store = ["--store", db.url.as_str()];
    let mut a = Hub::start_with(&store);
    let b = Hub::start_replica(&a, &store);
    let c = Hub::start_replica(&a, &store);
    // Agent i starts on replica i % 3 and knows the other two.
    let agents = b.agents_across(&[&a, &b, &c], AGENTS);
    let ids: Vec<String> = agents.iter().map(Agent::instance_id).collect();
    for id in &ids {
        c.wait_online(id);
    }
    let marks = tempfile::tempdir().unwrap();

    // Created through B; a third of the agents are held by A and another
    // third by C, so they can only hear of it through an announcement.
    let first = run(&b, &script(marks.path(), "first", 0), &ids);
    assert_exactly_once(&c, marks.path(), &first, "first", &ids);
    let routed = |hub: &Hub| hub.log().lines().any(|l| l.contains("pushed invocation announced by another replica") && l.contains(&first));
    assert!(routed(&a) && routed(&c), "A and C pushed B's invocation to the agents they hold");

    // A retry with the same ClientToken through another replica is the
    // same invocation, not a second run.
    let once = |hub: &Hub| {
        let v = hub
            .call(
                "RunCommand",
                &[("Type", "RunShellScript"), ("CommandContent", "true"), ("InstanceId.1", &ids[1]), ("ClientToken", "retry-1")],
            )
            .unwrap();
        v["InvokeId"].as_str().unwrap().to_string()
    };
    assert_eq!(once(&b), once(&c));

    // A credential rotation asked of C for an agent A holds: A issues it,
    // and the agent later reconnects to a survivor with the new one.
    let token = |a: &Agent| std::fs::read_to_string(a.state_dir().join("identity.json")).unwrap_or_default();
    let before = token(&agents[0]);
    let v = c.call("RotateInstanceCredential", &[("InstanceId.1", &ids[0])]).unwrap();
    assert_eq!(v["RotatedInstances"]["InstanceId"][0], ids[0].as_str(), "{v}");
    wait_until("rotated credential saved by the agent", WAIT, || {
        (token(&agents[0]) != before && !token(&agents[0]).is_empty()).then_some(())
    });

    // A schedule, every 10 s (the minimum), created through C before A dies.
    let periodic = {
        let ids: Vec<&str> = ids.iter().map(String::as_str).collect();
        let fire = format!("echo \"{{{{ACS::InstanceId}}}} $(date +%s)\" >> {}/periodic; echo fire", marks.path().display());
        c.run(&fire, &ids, &[("EnableParameter", "true"), ("RepeatMode", "Period"), ("Frequency", "*/10 * * * * ?"), ("Timeout", "8")])
    };

    // Long runs, then A dies with a third of them in flight.
    let second = run(&b, &script(marks.path(), "second", 4), &ids);
    wait_until("every target running", WAIT, || {
        (statuses(&c, &second).values().filter(|s| *s == "Running").count() == AGENTS).then_some(())
    });
    a.kill();
    // Created while A's agents are moving to B and C.
    let third = run(&c, &script(marks.path(), "third", 0), &ids);

    assert_exactly_once(&b, marks.path(), &second, "second", &ids);
    assert_exactly_once(&b, marks.path(), &third, "third", &ids);
    // A's agents are back online through the survivors.
    for id in &ids {
        b.wait_online(id);
    }

    // The schedule fires once per instance, not once per replica, and kept
    // firing across the move; a stop through C reaches agents held by B.
    wait_until("two fires on every instance", WAIT, || ids.iter().all(|id| finished_fires(&b, &periodic, id) >= 2).then_some(()));
    c.call("StopInvocation", &[("InvokeId", &periodic)]).unwrap();
    wait_until("schedule stopped everywhere", WAIT, || (statuses(&b, &periodic).values().all(|s| s == "Stopped")).then_some(()));
    let fires = std::fs::read_to_string(marks.path().join("periodic")).unwrap();
    for id in &ids {
        let mut seconds: Vec<&str> = fires.lines().filter_map(|l| l.strip_prefix(id.as_str())).collect();
        let n = seconds.len();
        seconds.sort();
        seconds.dedup();
        assert_eq!(seconds.len(), n, "{id} fired twice in the same second: {fires}");
        let recorded = finished_fires(&b, &periodic, id);
        // A fire cut short by the stop ran but has no Finished record.
        assert!(n == recorded || n == recorded + 1, "{id}: {n} fires ran, {recorded} recorded");
    }
    drop(agents);
    rt.block_on(db.drop_db());
}

/// `WaitSeconds` on a replica that does not hold the agent: the result is
/// committed by the other replica, whose announcement this one never hears;
/// its waiting call still answers with the final result, through its
/// once-a-second re-read, long before its deadline.
#[test]
fn a_waiting_call_on_another_replica_sees_the_result() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let Some(db) = rt.block_on(pg::TestDb::create("e2e_replicas::a_waiting_call_on_another_replica_sees_the_result")) else { return };
    let store = ["--store", db.url.as_str()];
    let a = Hub::start_with(&store);
    let b = Hub::start_replica(&a, &store);
    // The agent knows only A: every report is committed by A.
    let agent = a.agent();
    let id = agent.instance_id();
    a.wait_online(&id);
    let marks = tempfile::tempdir().unwrap();
    let go = marks.path().join("go");
    let inv = a.run(&format!("while [ ! -e '{}' ]; do sleep 0.05; done", go.display()), &[&id], &[("Timeout", "60")]);
    wait_until("Running, read through B", WAIT, || (statuses(&b, &inv).get(&id).map(String::as_str) == Some("Running")).then_some(()));
    let client = b.client();
    let asked = inv.clone();
    let waiter = std::thread::spawn(move || {
        let t0 = std::time::Instant::now();
        let v = client.call("DescribeInvocationResults", &[("InvokeId", asked), ("WaitSeconds", "25".to_string())]);
        (v, t0.elapsed())
    });
    // B holds the call (loopback peers may read its /metrics) before the run ends.
    let waiting = || {
        let (_, body) = b.client().get("/metrics", None).ok()?;
        body.lines().find_map(|l| l.strip_prefix("deckhand_hub_api_waiting_calls ")?.parse::<f64>().ok())
    };
    wait_until("B holding the call", WAIT, || (waiting() == Some(1.0)).then_some(()));
    std::fs::write(&go, b"").unwrap();
    let (v, took) = waiter.join().unwrap();
    let v = v.expect("waiting call on B");
    let result = &v["Invocation"]["InvocationResults"]["InvocationResult"][0];
    assert_eq!(result["InvokeRecordStatus"], "Finished", "{v}");
    assert!(took < Duration::from_secs(15), "B answered at its deadline, not by re-reading: {took:?}");
}
