//! Foundation end to end: a real hub and two real agents over TLS on
//! 127.0.0.1, driven through the signed Cloud Assistant API and the CLI.

#[path = "support/harness.rs"]
mod harness;

use std::process::Command;
use std::time::Duration;

use harness::{Hub, output_of};

const WAIT: Duration = Duration::from_secs(30);

#[test]
fn script_runs_on_two_agents_with_per_instance_output() {
    let hub = Hub::start();
    let a = hub.agent();
    let b = hub.agent();
    let (ia, ib) = (a.instance_id(), b.instance_id());
    hub.wait_online(&ia);
    hub.wait_online(&ib);
    let id = hub.run("echo out-{{ACS::InstanceId}}; echo err >&2; exit 0", &[&ia, &ib], &[("EnableParameter", "true")]);
    let results = hub.wait_final(&id, WAIT);
    assert_eq!(results.len(), 2);
    for r in &results {
        let inst = r["InstanceId"].as_str().unwrap();
        assert_eq!(r["InvokeRecordStatus"], "Finished", "{r}");
        assert_eq!(r["InvocationStatus"], "Success", "{r}");
        assert_eq!(r["ExitCode"], 0);
        assert_eq!(r["Dropped"], 0);
        let out = String::from_utf8(output_of(r)).unwrap();
        assert!(out.contains(&format!("out-{inst}\n")), "{out:?}");
        assert!(out.contains("err\n"), "{out:?}");
        assert!(!r["StartTime"].as_str().unwrap().is_empty());
        assert!(!r["FinishedTime"].as_str().unwrap().is_empty());
    }
    let v = hub.call("DescribeInvocations", &[("InvokeId", &id)]).unwrap();
    let inv = &v["Invocations"]["Invocation"][0];
    assert_eq!(inv["InvokeStatus"], "Finished");
    assert_eq!(inv["InvocationStatus"], "Success");
    assert_eq!(inv["InvokeInstances"]["InvokeInstance"].as_array().unwrap().len(), 2);
}

#[test]
fn nonzero_exit_and_timeout_are_reported() {
    let hub = Hub::start();
    let a = hub.agent();
    let ia = a.instance_id();
    hub.wait_online(&ia);
    let id = hub.run("exit 7", &[&ia], &[]);
    let r = &hub.wait_final(&id, WAIT)[0];
    assert_eq!(r["InvokeRecordStatus"], "Finished");
    assert_eq!(r["ExitCode"], 7);
    assert_eq!(r["ErrorCode"], "ExitCodeNonzero");
    assert_eq!(r["InvocationStatus"], "Failed");

    let id = hub.run("echo started; sleep 60", &[&ia], &[("Timeout", "1")]);
    let r = &hub.wait_final(&id, WAIT)[0];
    // Cloud Assistant: a timed-out run is Failed at record level, Timeout per instance.
    assert_eq!(r["InvokeRecordStatus"], "Failed", "{r}");
    assert_eq!(r["InvocationStatus"], "Timeout", "{r}");
    assert_eq!(r["ErrorCode"], "ExecutionTimeout");
    assert_eq!(r["ErrorInfo"], "the command execution has been timeout");
    assert_eq!(String::from_utf8(output_of(r)).unwrap(), "started\n");
}

#[test]
fn output_over_24_kib_keeps_head_and_tail() {
    let hub = Hub::start();
    let a = hub.agent();
    let ia = a.instance_id();
    hub.wait_online(&ia);
    // 100,000 'a' then a marker line: 100,004 bytes in all.
    let id = hub.run("head -c 100000 /dev/zero | tr '\\0' a; echo END", &[&ia], &[]);
    let r = &hub.wait_final(&id, WAIT)[0];
    let out = output_of(r);
    assert_eq!(out.len(), 24576);
    assert_eq!(r["Dropped"], 100004 - 24576);
    assert!(out.starts_with(b"aaaa"));
    assert!(out.ends_with(b"aEND\n"), "tail kept");
}

#[test]
fn bad_requests_get_alibaba_style_errors() {
    let hub = Hub::start();
    let err =
        hub.call("RunCommand", &[("Type", "RunShellScript"), ("CommandContent", "true"), ("InstanceId.1", "mi-doesnotexist")]).unwrap_err();
    let s = err.to_string();
    assert!(s.contains("InvalidInstance.NotFound") && s.contains("HTTP 404") && s.contains("mi-doesnotexist"), "{s}");

    let s = hub.call("NoSuchAction", &[]).unwrap_err().to_string();
    assert!(s.contains("InvalidAction.NotFound") && s.contains("HTTP 404"), "{s}");

    let s = hub.call("RunCommand", &[("Type", "RunShellScript"), ("InstanceId.1", "x")]).unwrap_err().to_string();
    assert!(s.contains("MissingParameter.CommandContent") && s.contains("HTTP 400"), "{s}");

    let s = hub
        .call("RunCommand", &[("Type", "RunShellScript"), ("CommandContent", "true"), ("InstanceId.1", "x"), ("Timeout", "abc")])
        .unwrap_err()
        .to_string();
    assert!(s.contains("InvalidParameter.Timeout") && s.contains("not an integer"), "{s}");

    let big = "x".repeat(16 * 1024 + 1);
    let s = hub.call("RunCommand", &[("Type", "RunShellScript"), ("CommandContent", &big), ("InstanceId.1", "x")]).unwrap_err().to_string();
    assert!(s.contains("InvalidParameter.CommandContent") && s.contains("16384"), "{s}");

    let s = hub.call("RunCommand", &[("Type", "RunPerlScript"), ("CommandContent", "1"), ("InstanceId.1", "x")]).unwrap_err().to_string();
    assert!(s.contains("InvalidParameter.Type"), "{s}");

    let s = hub.call("DescribeInvocationResults", &[("InvokeId", "t-nope")]).unwrap_err().to_string();
    assert!(s.contains("InvalidInvokeId.NotFound"), "{s}");
    // Signatures: a wrong secret and an unknown key are refused.
    let wrong = deckhand::cli::Client::new(deckhand::cli::ClientConfig {
        endpoint: hub.url.clone(),
        access_key_id: harness::AK_ID.into(),
        access_key_secret: "wrong".into(),
        ca_file: Some(hub.ca.clone()),
    })
    .unwrap();
    let s = wrong.call("DescribeInvocations", &[]).unwrap_err().to_string();
    assert!(s.contains("SignatureDoesNotMatch") && s.contains("HTTP 400"), "{s}");
    let nobody = deckhand::cli::Client::new(deckhand::cli::ClientConfig {
        endpoint: hub.url.clone(),
        access_key_id: "LTAInobody".into(),
        access_key_secret: "x".into(),
        ca_file: Some(hub.ca.clone()),
    })
    .unwrap();
    let s = nobody.call("DescribeInvocations", &[]).unwrap_err().to_string();
    assert!(s.contains("InvalidAccessKeyId.NotFound") && s.contains("HTTP 404"), "{s}");
    // The hub keeps serving after all of that.
    assert!(hub.call("DescribeInvocations", &[]).is_ok());
}

#[test]
fn cli_run_prints_results_and_exit_code() {
    let hub = Hub::start();
    let a = hub.agent();
    let ia = a.instance_id();
    hub.wait_online(&ia);
    let cli = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_deckhand"))
            .args(["--endpoint", &hub.url, "--ca-file", hub.ca.to_str().unwrap()])
            .args(["--access-key-id", harness::AK_ID, "--access-key-secret", harness::AK_SECRET])
            .args(["--config", "/nonexistent/cli.json"])
            .args(args)
            .output()
            .expect("run cli")
    };
    let out = cli(&["run", "-i", &ia, "--timeout", "30s", "--", "echo", "from-cli"]);
    assert!(out.status.success(), "{out:?}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("from-cli") && stdout.contains("Success") && stdout.contains("exit=0"), "{stdout}");

    let out = cli(&["--json", "run", "-i", &ia, "--", "exit 4"]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["Results"][0]["ExitCode"], 4);

    let out = cli(&["--json", "instances"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v[0]["InstanceId"], ia.as_str());
    assert_eq!(v[0]["Status"], "Online");

    let out = cli(&["--json", "invocations"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v.as_array().unwrap().len(), 2);

    let out = cli(&["run", "-i", "mi-missing", "--", "true"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("InvalidInstance.NotFound"));
}

#[test]
fn hub_and_agent_shut_down_gracefully_on_sigterm() {
    let mut hub = Hub::start();
    let mut a = hub.agent();
    hub.wait_online(&a.instance_id());
    assert!(a.terminate().success());
    assert!(hub.terminate().success());
}

/// `Connected` (deckhand extension) filters DescribeManagedInstances in the
/// store, so TotalCount and pages count only the instances asked for (the
/// console's Instances page filters this way at any fleet size).
#[test]
fn managed_instances_filter_by_connection_in_the_store() {
    let hub = Hub::start();
    let a = hub.agent();
    let mut b = hub.agent();
    let (ia, ib) = (a.instance_id(), b.instance_id());
    hub.wait_online(&ia);
    hub.wait_online(&ib);
    b.kill();
    hub.wait_offline(&ib);
    let ids = |connected: &str| {
        let v = hub.call("DescribeManagedInstances", &[("Connected", connected), ("PageSize", "1")]).unwrap();
        let list: Vec<String> =
            v["Instances"]["Instance"].as_array().unwrap().iter().map(|i| i["InstanceId"].as_str().unwrap().to_string()).collect();
        (v["TotalCount"].as_i64().unwrap(), list)
    };
    assert_eq!(ids("true"), (1, vec![ia.clone()]));
    assert_eq!(ids("false"), (1, vec![ib.clone()]));
    let all = hub.call("DescribeManagedInstances", &[]).unwrap();
    assert_eq!(all["TotalCount"], 2);
    let e = hub.call("DescribeManagedInstances", &[("Connected", "maybe")]).unwrap_err();
    assert!(format!("{e:?}").contains("Connected"), "{e:?}");
}

/// The hub allocates with mimalloc, SQLite's C allocations included (the
/// binary defines the C allocator's functions itself), and without
/// transparent huge pages; the agent, the supervisor and the CLI keep the
/// system's allocator (issue #21, docs/performance.md "The hub's
/// allocator").
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[test]
fn the_hub_alone_allocates_with_mimalloc_and_without_huge_pages() {
    let hub_bin = env!("CARGO_BIN_EXE_deckhand-hub");
    let others = [env!("CARGO_BIN_EXE_deckhand-agent"), env!("CARGO_BIN_EXE_deckhand-supervise"), env!("CARGO_BIN_EXE_deckhand")];
    let verbose = |bin: &str| {
        let out = Command::new(bin).arg("--version").env("MIMALLOC_VERBOSE", "1").output().expect("run --version");
        assert!(out.status.success(), "{bin} --version: {out:?}");
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    assert!(verbose(hub_bin).contains("mimalloc: option"), "the hub does not run on mimalloc");
    for bin in others {
        assert!(!verbose(bin).contains("mimalloc"), "{bin} must keep the system allocator");
    }
    // Every entry point of the C allocator, so that no memory is taken from
    // one allocator and given back to the other.
    const ENTRIES: [&str; 7] = ["malloc", "free", "calloc", "realloc", "posix_memalign", "aligned_alloc", "malloc_usable_size"];
    let defined = |bin: &str| -> Vec<String> {
        let out = Command::new("nm").args(["-D", "--defined-only", bin]).output().expect("nm (binutils, installed by .ci/run)");
        assert!(out.status.success(), "nm {bin}: {out:?}");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        ENTRIES.iter().filter(|e| text.lines().any(|l| l.ends_with(&format!(" T {e}")))).map(|e| e.to_string()).collect()
    };
    assert_eq!(defined(hub_bin), ENTRIES, "the hub must define the whole C allocator (SQLite allocates through it)");
    for bin in others {
        assert_eq!(defined(bin), Vec::<String>::new(), "{bin} defines C allocator functions");
    }

    let hub = Hub::start();
    let status = std::fs::read_to_string(format!("/proc/{}/status", hub.pid())).expect("hub status");
    assert!(status.lines().any(|l| l == "THP_enabled:\t0"), "transparent huge pages are not off for the hub:\n{status}");
}
