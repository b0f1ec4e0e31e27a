//! Fleet runs end to end (issue #16): one real `deckhand-hub` on SQLite and
//! 22 real `deckhand-agent` processes on loopback. Targeting by tag reaches
//! exactly the tagged instances (the offline one settles at once); the
//! window is checked from timestamps the scripts themselves write, never
//! from hub state; `MaxErrors` stops the rollout; a hub killed with
//! SIGKILL mid-rollout resumes the window and runs no target twice.

#[path = "support/harness.rs"]
mod harness;
#[path = "support/pg.rs"]
mod pg;

use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;

use harness::{Agent, Hub, wait_until};
use serde_json::Value;

const AGENTS: usize = 22;
/// Tagged env=prod: the first 16 agents (one of them is then stopped).
const PROD: usize = 16;
const WAIT: Duration = Duration::from_secs(120);

/// Each run writes its start and end (nanoseconds since the epoch) to a
/// file named after the invocation and the instance.
fn script(marks: &Path, sleep: &str, exit: u8) -> String {
    let f = format!("{}/{{{{ACS::InvokeId}}}}.{{{{ACS::InstanceId}}}}", marks.display());
    format!("echo \"start $(date +%s%N)\" >> {f}; sleep {sleep}; echo \"end $(date +%s%N)\" >> {f}; exit {exit}")
}

/// (instance, start ns, end ns) of every run of `invoke_id`, from the files
/// the scripts wrote. Panics on an instance that started twice.
fn runs(marks: &Path, invoke_id: &str) -> Vec<(String, u128, u128)> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(marks).unwrap() {
        let name = entry.unwrap().file_name().to_string_lossy().into_owned();
        let Some(instance) = name.strip_prefix(&format!("{invoke_id}.")) else {
            continue;
        };
        let text = std::fs::read_to_string(marks.join(&name)).unwrap();
        let starts: Vec<u128> = text.lines().filter_map(|l| l.strip_prefix("start ")).map(|n| n.parse().unwrap()).collect();
        let ends: Vec<u128> = text.lines().filter_map(|l| l.strip_prefix("end ")).map(|n| n.parse().unwrap()).collect();
        assert_eq!(starts.len(), 1, "{instance} ran {} times: {text}", starts.len());
        assert_eq!(ends.len(), 1, "{instance}: {text}");
        out.push((instance.to_string(), starts[0], ends[0]));
    }
    out
}

/// Most runs alive at one instant, from their own timestamps.
fn peak_overlap(runs: &[(String, u128, u128)]) -> usize {
    let mut events: Vec<(u128, i32)> = runs.iter().flat_map(|(_, s, e)| [(*s, 1), (*e, -1)]).collect();
    // An end at the same nanosecond as a start counts first (not overlapping).
    events.sort();
    let (mut now, mut peak) = (0i32, 0i32);
    for (_, d) in events {
        now += d;
        peak = peak.max(now);
    }
    peak as usize
}

fn results(hub: &Hub, invoke_id: &str) -> Vec<Value> {
    hub.wait_final(invoke_id, WAIT)
}

fn by_status<'a>(results: &'a [Value], status: &str) -> BTreeSet<&'a str> {
    results.iter().filter(|r| r["InvocationStatus"] == status).map(|r| r["InstanceId"].as_str().unwrap()).collect()
}

fn tag_all(hub: &Hub, ids: &[String], value: &str) {
    let mut p: Vec<(String, String)> =
        vec![("ResourceType".into(), "instance".into()), ("Tag.1.Key".into(), "env".into()), ("Tag.1.Value".into(), value.into())];
    p.extend(ids.iter().enumerate().map(|(i, id)| (format!("ResourceId.{}", i + 1), id.clone())));
    let p: Vec<(&str, &str)> = p.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    hub.call("TagResources", &p).expect("TagResources");
}

fn run_tagged(hub: &Hub, script: &str, extra: &[(&str, &str)]) -> String {
    let mut p = vec![
        ("Type", "RunShellScript"),
        ("CommandContent", script),
        ("EnableParameter", "true"),
        ("Timeout", "60"),
        ("ResourceTag.1.Key", "env"),
        ("ResourceTag.1.Value", "prod"),
    ];
    p.extend_from_slice(extra);
    let v = hub.call("RunCommand", &p).expect("RunCommand");
    v["InvokeId"].as_str().unwrap().to_string()
}

#[test]
fn tags_windows_max_errors_and_a_hub_kill() {
    let mut hub = Hub::start();
    let mut agents: Vec<Agent> = (0..AGENTS).map(|_| hub.agent()).collect();
    let ids: Vec<String> = agents.iter().map(Agent::instance_id).collect();
    for id in &ids {
        hub.wait_online(id);
    }
    let tag = |ids: &[String], value: &str| {
        let mut p: Vec<(String, String)> =
            vec![("ResourceType".into(), "instance".into()), ("Tag.1.Key".into(), "env".into()), ("Tag.1.Value".into(), value.into())];
        p.extend(ids.iter().enumerate().map(|(i, id)| (format!("ResourceId.{}", i + 1), id.clone())));
        let p: Vec<(&str, &str)> = p.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        hub.call("TagResources", &p).expect("TagResources");
    };
    tag(&ids[..PROD], "prod");
    tag(&ids[PROD..], "dev");
    // One tagged instance is offline when the rollout is created.
    let offline = ids[PROD - 1].clone();
    agents[PROD - 1].kill();
    hub.wait_offline(&offline);
    let prod: BTreeSet<&str> = ids[..PROD].iter().map(String::as_str).collect();
    let online_prod: BTreeSet<&str> = ids[..PROD - 1].iter().map(String::as_str).collect();
    let marks = tempfile::tempdir().unwrap();

    // DryRun: resolves and validates, creates nothing.
    let before = hub.call("DescribeInvocations", &[]).unwrap()["TotalCount"].clone();
    let v = hub
        .call(
            "RunCommand",
            &[
                ("Type", "RunShellScript"),
                ("CommandContent", "true"),
                ("RepeatMode", "DryRun"),
                ("TargetAll", "true"),
                ("TargetOsType", "linux"),
                ("MaxConcurrency", "10%"),
            ],
        )
        .unwrap();
    assert_eq!(v["DryRunResult"]["TargetCount"], AGENTS - 1, "{v}");
    assert_eq!(v["DryRunResult"]["MaxConcurrency"], 3, "{v}");
    assert_eq!(v["InvokeId"], "", "{v}");
    assert_eq!(hub.call("DescribeInvocations", &[]).unwrap()["TotalCount"], before);
    // InvokeCommand resolves ResourceTag the same way (a key without a value
    // matches any value: prod and dev alike).
    let cmd = hub.call("CreateCommand", &[("Name", "fleet"), ("Type", "RunShellScript"), ("CommandContent", "dHJ1ZQ==")]).unwrap();
    let v = hub
        .call("InvokeCommand", &[("CommandId", cmd["CommandId"].as_str().unwrap()), ("ResourceTag.1.Key", "env"), ("RepeatMode", "DryRun")])
        .unwrap();
    assert_eq!(v["DryRunResult"]["TargetCount"], AGENTS, "{v}");
    assert_eq!(v["DryRunResult"]["UnreachableCount"], 1, "{v}");
    let e = hub
        .call(
            "RunCommand",
            &[("Type", "RunShellScript"), ("CommandContent", "true"), ("ResourceTag.1.Key", "env"), ("InstanceId.1", ids[0].as_str())],
        )
        .unwrap_err();
    assert!(e.to_string().contains("InvalidParameter.InstanceId"), "{e}");

    // 1. Tag targeting with MaxConcurrency=5: exactly the tagged instances,
    // never more than five running at once by the scripts' own clocks.
    let first = run_tagged(&hub, &script(marks.path(), "0.5", 0), &[("MaxConcurrency", "5")]);
    let r = results(&hub, &first);
    let targeted: BTreeSet<&str> = r.iter().map(|r| r["InstanceId"].as_str().unwrap()).collect();
    assert_eq!(targeted, prod, "exactly the instances tagged env=prod");
    assert_eq!(by_status(&r, "Success"), online_prod);
    let aborted: Vec<&Value> = r.iter().filter(|r| r["InstanceId"] == offline.as_str()).collect();
    assert_eq!(aborted[0]["InvocationStatus"], "Aborted", "{}", aborted[0]);
    assert_eq!(aborted[0]["ErrorCode"], "ClientNotRunning", "{}", aborted[0]);
    let ran = runs(marks.path(), &first);
    assert_eq!(ran.iter().map(|r| r.0.as_str()).collect::<BTreeSet<_>>(), online_prod, "each online tagged instance ran once");
    let peak = peak_overlap(&ran);
    assert!(peak <= 5, "MaxConcurrency 5 exceeded: {peak} ran at once");
    assert!(peak >= 2, "the window ran targets side by side (peak {peak})");
    // The resolved list is fixed and visible in DescribeInvocations.
    let v = hub.call("DescribeInvocations", &[("InvokeId", &first)]).unwrap();
    let inv = &v["Invocations"]["Invocation"][0];
    let listed: BTreeSet<&str> =
        inv["InvokeInstances"]["InvokeInstance"].as_array().unwrap().iter().map(|i| i["InstanceId"].as_str().unwrap()).collect();
    assert_eq!(listed, prod);
    assert_eq!((inv["MaxConcurrency"].clone(), inv["TargetCount"].clone()), (Value::from(5), Value::from(PROD)), "{inv}");

    // 2. MaxErrors=2 with failing scripts, two at a time: the third error
    // stops the rollout; what was running finishes, the rest never start.
    let second = run_tagged(&hub, &script(marks.path(), "0.3", 1), &[("MaxConcurrency", "2"), ("MaxErrors", "2")]);
    let r = results(&hub, &second);
    let ran: BTreeSet<String> = runs(marks.path(), &second).into_iter().map(|r| r.0).collect();
    let failed = by_status(&r, "Failed");
    assert_eq!(failed.iter().map(|s| s.to_string()).collect::<BTreeSet<_>>(), ran, "every run failed and nothing else ran");
    assert!((3..=4).contains(&ran.len()), "MaxErrors 2 with a window of 2 runs 3 or 4 targets, ran {}", ran.len());
    let cancelled: Vec<&Value> = r.iter().filter(|r| r["InvocationStatus"] == "Cancelled").collect();
    assert_eq!(cancelled.len(), PROD - 1 - ran.len(), "{r:?}");
    for c in &cancelled {
        assert_eq!(c["ErrorCode"], "MaxErrorsExceeded", "{c}");
        assert!(c["ErrorInfo"].as_str().unwrap().contains("more than MaxErrors 2"), "{c}");
        assert!(!ran.contains(c["InstanceId"].as_str().unwrap()));
    }

    // 4. The CLI: tag targeting with a window, live plain lines when stdout
    // is not a terminal, a failure's first line, and `--json` at the end.
    let cli = |args: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_deckhand"))
            .args(["--endpoint", &hub.url, "--ca-file", hub.ca.to_str().unwrap()])
            .args(["--access-key-id", harness::AK_ID, "--access-key-secret", harness::AK_SECRET])
            .args(["--config", "/nonexistent/cli.json"])
            .args(args)
            .output()
            .expect("run cli")
    };
    let dev: BTreeSet<&str> = ids[PROD..].iter().map(String::as_str).collect();
    let out = cli(&[
        "run",
        "--tag",
        "env=dev",
        "--max-concurrency",
        "50%",
        "--max-errors",
        "1",
        "--",
        "echo first-line-of-failure; sleep 1; exit 3",
    ]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.lines().any(|l| l.contains("settled: ") && l.contains("Running")), "live plain lines: {stdout}");
    assert!(stdout.contains("Failed: first-line-of-failure"), "{stdout}");
    let last = stdout.lines().last().unwrap_or("");
    assert!(
        last.contains(&format!("6 of {} targets", AGENTS - PROD)) && last.contains("Cancelled"),
        "MaxErrors 1 stopped the rollout: {stdout}"
    );
    let out = cli(&["--json", "run", "--tag", "env", "--os", "linux", "--hostname", "*", "--max-concurrency", "4", "--", "true"]);
    // Not every target succeeded (one was offline): exit 1.
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    // `--tag env` (any value): prod and dev, the offline one settled at once.
    assert_eq!(v["TargetCount"], AGENTS, "{v}");
    assert_eq!(
        (v["StatusCounts"]["Success"].clone(), v["StatusCounts"]["Aborted"].clone()),
        (Value::from(AGENTS - 1), Value::from(1)),
        "{v}"
    );
    assert_eq!(
        (v["Failures"][0]["InstanceId"].as_str(), v["Failures"][0]["ErrorCode"].as_str()),
        (Some(offline.as_str()), Some("ClientNotRunning")),
        "{v}"
    );
    let out = cli(&["run", "--all", "--dry-run", "--", "true"]);
    assert!(String::from_utf8_lossy(&out.stdout).contains(&format!("dry run: {} target(s)", AGENTS - 1)), "{out:?}");
    assert!(!dev.is_empty());
    // On a terminal (a pty from util-linux `script`): the indicatif bar
    // with settled/total, counts per state and an ETA.
    let line = format!(
        "{} --endpoint {} --ca-file {} --access-key-id {} --access-key-secret {} --config /nonexistent/cli.json \
         run --tag env=dev --max-concurrency 2 -- 'sleep 0.5; true'",
        env!("CARGO_BIN_EXE_deckhand"),
        hub.url,
        hub.ca.display(),
        harness::AK_ID,
        harness::AK_SECRET
    );
    let out = std::process::Command::new("script").args(["-qec", &line, "/dev/null"]).output().expect("script(1) from util-linux");
    let tty = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{tty}");
    assert!(tty.contains("settled") && tty.contains("ETA") && tty.contains("[="), "a bar was drawn: {tty:?}");
    assert!(tty.contains(&format!("6 of {} targets", AGENTS - PROD)), "{tty:?}");

    // 3. SIGKILL the hub mid-rollout: the window resumes where it was, the
    // targets already run are not run again.
    let third = run_tagged(&hub, &script(marks.path(), "1", 0), &[("MaxConcurrency", "3")]);
    wait_until("some targets of the rollout settled", WAIT, || {
        let v =
            hub.call("DescribeInvocationResults", &[("InvokeId", &third), ("InvokeRecordStatus", "Finished"), ("PageSize", "50")]).ok()?;
        (v["Invocation"]["TotalCount"].as_i64()? >= 4).then_some(())
    });
    hub.restart();
    let r = results(&hub, &third);
    assert_eq!(by_status(&r, "Success"), online_prod, "{r:?}");
    let ran = runs(marks.path(), &third);
    assert_eq!(ran.len(), PROD - 1, "each online tagged instance ran exactly once across the kill");
    let peak = peak_overlap(&ran);
    assert!(peak <= 3, "MaxConcurrency 3 exceeded across the restart: {peak}");
    drop(agents);
}

/// Two hub replicas on one real PostgreSQL, 20 agents split between them:
/// one window of 4 holds across both (the scripts' own clocks say so),
/// and survives the replica that created the rollout being killed.
#[test]
fn window_holds_across_two_replicas_on_postgres() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let Some(db) = rt.block_on(pg::TestDb::create("e2e_fleet::window_holds_across_two_replicas_on_postgres")) else {
        return;
    };
    let store = ["--store", db.url.as_str()];
    let mut a = Hub::start_with(&store);
    let b = Hub::start_replica(&a, &store);
    // Agent i starts on replica i % 2 and knows the other one.
    let agents = b.agents_across(&[&a, &b], 20);
    let ids: Vec<String> = agents.iter().map(Agent::instance_id).collect();
    for id in &ids {
        b.wait_online(id);
    }
    tag_all(&b, &ids, "prod");
    let marks = tempfile::tempdir().unwrap();
    let invoke_id = run_tagged(&a, &script(marks.path(), "0.5", 0), &[("MaxConcurrency", "4")]);
    wait_until("a few targets settled", WAIT, || {
        let v = b
            .call("DescribeInvocationResults", &[("InvokeId", &invoke_id), ("InvokeRecordStatus", "Finished"), ("PageSize", "50")])
            .ok()?;
        (v["Invocation"]["TotalCount"].as_i64()? >= 3).then_some(())
    });
    // The replica that created the rollout dies; B (and the agents moving to it) carry on.
    a.kill();
    let r = b.wait_final(&invoke_id, WAIT);
    let all: BTreeSet<&str> = ids.iter().map(String::as_str).collect();
    assert_eq!(by_status(&r, "Success"), all, "{r:?}");
    let ran = runs(marks.path(), &invoke_id);
    assert_eq!(ran.len(), ids.len(), "each instance ran exactly once");
    let peak = peak_overlap(&ran);
    assert!(peak <= 4, "MaxConcurrency 4 exceeded across replicas: {peak}");
    assert!(peak >= 2, "the window ran targets side by side (peak {peak})");
    drop(agents);
    rt.block_on(db.drop_db());
}

/// Lines `<tag> <instance> <unix ns>` the schedule's runs appended, per instance, in file order.
fn fires(file: &Path) -> std::collections::BTreeMap<String, Vec<(String, u128)>> {
    let mut out: std::collections::BTreeMap<String, Vec<(String, u128)>> = Default::default();
    for line in std::fs::read_to_string(file).unwrap_or_default().lines() {
        let parts: Vec<&str> = line.split_whitespace().collect();
        if let [tag, instance, ns] = parts[..]
            && let Ok(ns) = ns.parse()
        {
            out.entry(instance.to_string()).or_default().push((tag.to_string(), ns));
        }
    }
    out
}

/// `ModifyInvocationAttribute` reaches agents that already hold (journaled
/// and armed) a periodic invocation: a new `Frequency` and `Parameters`
/// re-arm every instance's schedule, then new `CommandContent` replaces
/// the script; each is observed from what the runs themselves write. The
/// old schedule fires at seconds 0, 10, 20…; the new one at 5, 15, 25…,
/// so each run's own clock tells which schedule fired it. A 0.1.0 agent
/// (when its binary is available) keeps the copy it holds, as documented.
#[test]
fn a_modified_schedule_reaches_the_agents_that_hold_it() {
    let hub = Hub::start();
    let agents: Vec<Agent> = (0..3).map(|_| hub.agent()).collect();
    let old =
        std::env::var_os("DECKHAND_V010_BIN").map(|dir| hub.agent_binary(&hub.url, std::path::PathBuf::from(dir).join("deckhand-agent")));
    let ids: Vec<String> = agents.iter().map(Agent::instance_id).collect();
    let old_id = old.as_ref().map(Agent::instance_id);
    let everyone: Vec<&str> = ids.iter().chain(old_id.iter()).map(String::as_str).collect();
    for id in &everyone {
        hub.wait_online(id);
    }
    let marks = tempfile::tempdir().unwrap();
    let file = marks.path().join("fires");
    let script = |tag: &str| format!("echo \"{tag} {{{{ACS::InstanceId}}}} $(date +%s%N)\" >> {}", file.display());
    let invoke_id = hub.run(
        &script("{{ver}}"),
        &everyone,
        &[
            ("EnableParameter", "true"),
            ("Parameters", r#"{"ver":"v1"}"#),
            ("RepeatMode", "Period"),
            ("Frequency", "0/10 * * * * ?"),
            ("Timeout", "5"),
        ],
    );
    let count = |instance: &str, tag: &str| fires(&file).get(instance).map_or(0, |f| f.iter().filter(|(t, _)| t == tag).count());
    for id in &everyone {
        wait_until(&format!("a first v1 fire on {id}"), WAIT, || (count(id, "v1") >= 1).then_some(()));
    }
    hub.call(
        "ModifyInvocationAttribute",
        &[("InvokeId", invoke_id.as_str()), ("Frequency", "5/10 * * * * ?"), ("Parameters", r#"{"ver":"v2"}"#)],
    )
    .expect("ModifyInvocationAttribute");
    for id in &ids {
        wait_until(&format!("two v2 fires on {id}"), WAIT, || (count(id, "v2") >= 2).then_some(()));
    }
    let seen = fires(&file);
    for id in &ids {
        let f = &seen[id];
        let first_v2 = f.iter().position(|(t, _)| t == "v2").unwrap();
        assert!(f[first_v2..].iter().all(|(t, _)| t == "v2"), "{id} ran the old definition after the new one: {f:?}");
        // Which schedule fired a run, from the run's own clock: the old
        // one in seconds 0–4 of each ten, the new one in 5–9.
        let phase = |ns: u128| (ns / 1_000_000_000) % 10;
        assert!(f[..first_v2].iter().all(|(_, ns)| phase(*ns) < 5), "{id}: {f:?}");
        assert!(f[first_v2..].iter().all(|(_, ns)| phase(*ns) >= 5), "{id} still fires on the old schedule: {f:?}");
    }
    // New content, with the stored (modified) parameter values.
    hub.call("ModifyInvocationAttribute", &[("InvokeId", invoke_id.as_str()), ("CommandContent", script("c3-{{ver}}").as_str())])
        .expect("ModifyInvocationAttribute");
    for id in &ids {
        wait_until(&format!("the new content on {id}"), WAIT, || (count(id, "c3-v2") >= 1).then_some(()));
    }
    if let Some(old_id) = &old_id {
        // Protocol 1 ignores the revision: the 0.1.0 agent keeps firing
        // what it journaled (docs/protocol.md), and is not disturbed.
        let before = count(old_id, "v1");
        wait_until("the 0.1.0 agent fires again", WAIT, || (count(old_id, "v1") > before).then_some(()));
        assert_eq!(count(old_id, "v2") + count(old_id, "c3-v2"), 0, "{:?}", fires(&file).get(old_id));
    }
    let v = hub.call("DescribeInvocations", &[("InvokeId", invoke_id.as_str()), ("ContentEncoding", "PlainText")]).unwrap();
    let inv = &v["Invocations"]["Invocation"][0];
    assert_eq!(inv["Frequency"], "5/10 * * * * ?", "{inv}");
    hub.call("StopInvocation", &[("InvokeId", invoke_id.as_str())]).unwrap();
    let r = hub.wait_final(&invoke_id, WAIT);
    assert!(r.iter().all(|r| r["InvokeRecordStatus"] == "Stopped"), "{r:?}");
    drop((agents, old));
}

#[test]
fn an_added_instance_fires_the_modified_schedule() {
    let hub = Hub::start();
    let (a, b) = (hub.agent(), hub.agent());
    let (ia, ib) = (a.instance_id(), b.instance_id());
    hub.wait_online(&ia);
    hub.wait_online(&ib);
    let marks = tempfile::tempdir().unwrap();
    let file = marks.path().join("fires");
    let fire = |v: &str| format!("echo \"{v} {{{{ACS::InstanceId}}}}\" >> {}", file.display());
    let invoke_id = hub.run(
        &fire("v1"),
        &[&ia],
        &[("EnableParameter", "true"), ("RepeatMode", "Period"), ("Frequency", "*/10 * * * * ?"), ("Timeout", "5")],
    );
    let text = || std::fs::read_to_string(&file).unwrap_or_default();
    wait_until("a first fire on A", WAIT, || text().contains(&format!("v1 {ia}")).then_some(()));
    hub.call(
        "ModifyInvocationAttribute",
        &[("InvokeId", invoke_id.as_str()), ("CommandContent", fire("v2").as_str()), ("InstanceId.1", ib.as_str())],
    )
    .expect("ModifyInvocationAttribute");
    wait_until("B fires the modified script", WAIT, || text().contains(&format!("v2 {ib}")).then_some(()));
    assert!(!text().contains(&format!("v1 {ib}")), "B never ran the old script: {}", text());
    let v = hub.call("DescribeInvocations", &[("InvokeId", invoke_id.as_str()), ("ContentEncoding", "PlainText")]).unwrap();
    let inv = &v["Invocations"]["Invocation"][0];
    assert_eq!(inv["CommandContent"], fire("v2").as_str(), "{inv}");
    assert_eq!(inv["InvokeInstances"]["InvokeInstance"].as_array().map(Vec::len), Some(2), "{inv}");
    // Only Period invocations change.
    let once = hub.run("true", &[&ia], &[]);
    let e = hub.call("ModifyInvocationAttribute", &[("InvokeId", once.as_str()), ("Frequency", "rate(5m)")]).unwrap_err();
    assert!(e.to_string().contains("InvalidParameter.InvokeId"), "{e}");
    hub.call("StopInvocation", &[("InvokeId", invoke_id.as_str())]).unwrap();
    drop((a, b));
}
