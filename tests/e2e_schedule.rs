//! Timed invocations end to end: cron fires recorded one record each,
//! surviving an agent kill between fires, stopped by StopInvocation; a
//! one-shot at(); reboot-triggered runs (a stand-in boot id replaces the
//! reboot, which cannot happen here).

#[path = "support/harness.rs"]
mod harness;

use std::time::Duration;

use harness::{Hub, output_of, wait_until};

fn history(hub: &Hub, inv: &str) -> Vec<serde_json::Value> {
    let v = hub.call("DescribeInvocationResults", &[("InvokeId", inv), ("IncludeHistory", "true"), ("PageSize", "50")]).unwrap();
    v["Invocation"]["InvocationResults"]["InvocationResult"].as_array().unwrap().clone()
}

fn target_status(hub: &Hub, inv: &str) -> String {
    let v = hub.call("DescribeInvocations", &[("InvokeId", inv)]).unwrap();
    v["Invocations"]["Invocation"][0]["InvokeInstances"]["InvokeInstance"][0]["InstanceInvokeStatus"].as_str().unwrap().to_string()
}

#[test]
fn cron_fires_each_as_a_record_survives_restart_and_stops() {
    let hub = Hub::start();
    let mut a = hub.agent();
    let id = a.instance_id();
    hub.wait_online(&id);
    // Every 10 s (Cloud Assistant's minimum cron interval), seconds field first.
    let inv = hub.run("echo fire", &[&id], &[("RepeatMode", "Period"), ("Frequency", "*/10 * * * * ?"), ("Timeout", "5")]);
    let finished = |h: &[serde_json::Value]| h.iter().filter(|r| r["InvokeRecordStatus"] == "Finished").count();
    wait_until("first fire", Duration::from_secs(25), || (finished(&history(&hub, &inv)) >= 1).then_some(()));
    assert_eq!(target_status(&hub, &inv), "Running", "a periodic invocation stays Running between fires");
    a.kill();
    a.spawn();
    wait_until("a fire after the restart", Duration::from_secs(30), || (finished(&history(&hub, &inv)) >= 2).then_some(()));
    let h = history(&hub, &inv);
    let seqs: Vec<i64> = h.iter().map(|r| r["Repeats"].as_i64().unwrap()).collect();
    let mut sorted = seqs.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(sorted.len(), seqs.len(), "each fire is its own record: {seqs:?}");
    for r in h.iter().filter(|r| r["InvokeRecordStatus"] == "Finished") {
        assert_eq!(output_of(r), b"fire\n");
    }
    hub.call("StopInvocation", &[("InvokeId", &inv)]).unwrap();
    wait_until("stopped", Duration::from_secs(20), || (target_status(&hub, &inv) == "Stopped").then_some(()));
    let n = history(&hub, &inv).len();
    std::thread::sleep(Duration::from_secs(11));
    assert_eq!(history(&hub, &inv).len(), n, "no fires after stop");
    let v = hub.call("DescribeInvocations", &[("InvokeId", &inv)]).unwrap();
    assert_eq!(v["Invocations"]["Invocation"][0]["InvokeStatus"], "Stopped");
}

#[test]
fn at_fires_once_and_bad_frequencies_are_refused() {
    let hub = Hub::start();
    let a = hub.agent();
    let id = a.instance_id();
    hub.wait_online(&id);
    let when = (chrono::Utc::now() + chrono::Duration::seconds(3)).format("%Y-%m-%dT%H:%M:%SZ").to_string();
    let inv = hub.run("echo at-once", &[&id], &[("RepeatMode", "Period"), ("Frequency", &format!("at({when})"))]);
    let r = &hub.wait_final(&inv, Duration::from_secs(30))[0];
    assert_eq!(r["InvokeRecordStatus"], "Finished");
    assert_eq!(output_of(r), b"at-once\n");
    assert_eq!(history(&hub, &inv).len(), 1);

    for (freq, needle) in [("rate(2s)", "60"), ("0 0 25 * * ?", "hour"), ("at(2001-01-01T00:00:00Z)", "future"), ("every tuesday", "")] {
        let e = hub
            .call(
                "RunCommand",
                &[
                    ("Type", "RunShellScript"),
                    ("CommandContent", "true"),
                    ("InstanceId.1", &id),
                    ("RepeatMode", "Period"),
                    ("Frequency", freq),
                ],
            )
            .unwrap_err()
            .to_string();
        assert!(e.contains("InvalidParameter.Frequency") && e.contains(needle), "{freq}: {e}");
    }
}

#[test]
fn next_reboot_only_runs_after_a_new_boot_id() {
    let hub = Hub::start();
    let mut a = hub.agent();
    a.env = vec![("DECKHAND_TEST_BOOT_ID".into(), "boot-A".into())];
    a.restart();
    let id = a.instance_id();
    hub.wait_online(&id);
    let inv = hub.run("echo after-reboot", &[&id], &[("RepeatMode", "NextRebootOnly")]);
    wait_until("scheduled", Duration::from_secs(20), || (target_status(&hub, &inv) == "Scheduled").then_some(()));
    // Same boot: an agent restart alone does not fire it.
    a.restart();
    hub.wait_online(&id);
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(target_status(&hub, &inv), "Scheduled");
    a.env = vec![("DECKHAND_TEST_BOOT_ID".into(), "boot-B".into())];
    a.restart();
    let r = &hub.wait_final(&inv, Duration::from_secs(30))[0];
    assert_eq!(r["InvokeRecordStatus"], "Finished");
    assert_eq!(output_of(r), b"after-reboot\n");
}
