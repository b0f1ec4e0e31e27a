//! Delivery across outages: offline instances, delivery timeout, hub
//! restart with agents reconnecting, results that survive.

#[path = "support/harness.rs"]
mod harness;

use std::time::Duration;

use harness::{Hub, output_of, wait_until};

const WAIT: Duration = Duration::from_secs(30);

fn status(hub: &Hub, invoke_id: &str) -> String {
    let v = hub.call("DescribeInvocationResults", &[("InvokeId", invoke_id)]).unwrap();
    v["Invocation"]["InvocationResults"]["InvocationResult"][0]["InvokeRecordStatus"].as_str().unwrap().to_string()
}

#[test]
fn offline_instance_stays_pending_then_runs_when_it_connects() {
    let hub = Hub::start();
    let mut a = hub.agent();
    let id = a.instance_id();
    hub.wait_online(&id);
    a.kill();
    wait_until("offline", WAIT, || {
        let v = hub.call("DescribeManagedInstances", &[("InstanceId.1", &id)]).ok()?;
        (v["Instances"]["Instance"][0]["Status"] == "Offline").then_some(())
    });
    // Delivered by the reconnect resync, which must fill built-ins like a live push.
    let inv = hub.run("echo delivered-late {{ACS::RegionId}}", &[&id], &[("EnableParameter", "true")]);
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(status(&hub, &inv), "Pending");
    a.spawn();
    let r = &hub.wait_final(&inv, WAIT)[0];
    assert_eq!(output_of(r), b"delivered-late deckhand\n");
}

#[test]
fn undelivered_target_is_aborted_after_delivery_timeout() {
    let hub = Hub::start_with(&["--delivery-timeout-secs", "1"]);
    let mut a = hub.agent();
    let id = a.instance_id();
    hub.wait_online(&id);
    a.kill();
    let inv = hub.run("true", &[&id], &[]);
    let r = &hub.wait_final(&inv, WAIT)[0];
    assert_eq!(r["InvokeRecordStatus"], "Failed");
    // Offline the whole time: the client did not respond (Alibaba: Aborted).
    assert_eq!(r["ErrorCode"], "ClientNotResponse");
    assert_eq!(r["ErrorInfo"], "the aliyun service in the instance does not response");
    assert_eq!(r["InvocationStatus"], "Aborted");
}

#[test]
fn hub_restart_keeps_results_and_agents_reconnect() {
    let mut hub = Hub::start();
    let a = hub.agent();
    let id = a.instance_id();
    hub.wait_online(&id);
    let before = hub.run("echo before", &[&id], &[]);
    hub.wait_final(&before, WAIT);
    hub.restart(); // kill -9, same data dir and port
    // The agent reconnects on its own (back-off capped at 1 s in tests).
    hub.wait_online(&id);
    let r = &hub.wait_final(&before, WAIT)[0];
    assert_eq!(output_of(r), b"before\n", "acknowledged result survived kill -9");
    let after = hub.run("echo after", &[&id], &[]);
    assert_eq!(output_of(&hub.wait_final(&after, WAIT)[0]), b"after\n");
}

#[test]
fn stop_invocation_kills_the_run() {
    let hub = Hub::start();
    let a = hub.agent();
    let id = a.instance_id();
    hub.wait_online(&id);
    let inv = hub.run("echo begun; sleep 120", &[&id], &[("Timeout", "300")]);
    wait_until("running", WAIT, || (status(&hub, &inv) == "Running").then_some(()));
    let t0 = std::time::Instant::now();
    hub.call("StopInvocation", &[("InvokeId", &inv)]).unwrap();
    let r = &hub.wait_final(&inv, WAIT)[0];
    assert_eq!(r["InvokeRecordStatus"], "Stopped", "{r}");
    assert_eq!(r["InvocationStatus"], "Terminated", "stopped while running: {r}");
    // Within 1 s plus the kill grace (3 s), including API polling.
    assert!(t0.elapsed() < Duration::from_secs(4), "stopped promptly: {:?}", t0.elapsed());
    let v = hub.call("DescribeInvocations", &[("InvokeId", &inv)]).unwrap();
    assert_eq!(v["Invocations"]["Invocation"][0]["InvokeStatus"], "Stopped");
    assert_eq!(v["Invocations"]["Invocation"][0]["InvocationStatus"], "Stopped");
}
