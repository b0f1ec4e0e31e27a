//! `ApplyKubeletReserved` through the hub: a real agent plans against a
//! real EKS-shaped kubelet config (dry run: the kubelet service itself is
//! the boundary that cannot exist here) and reports the diff as output.

#[path = "support/harness.rs"]
mod harness;

use std::time::Duration;

use harness::{Hub, output_of};

#[test]
fn kubelet_plan_runs_as_an_invocation_and_bad_plans_fail_cleanly() {
    let hub = Hub::start();
    let a = hub.agent();
    let id = a.instance_id();
    hub.wait_online(&id);
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("kubelet-config.json");
    std::fs::copy(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/kubelet/eks-kubelet-config.json"), &cfg).unwrap();
    let before = std::fs::read(&cfg).unwrap();
    let content = serde_json::json!({
        "policy": "gke", "maxPods": 58, "cpus": 4, "memory": "16Gi", "ephemeralStorage": "100Gi",
        "configPath": cfg, "dryRun": true,
    })
    .to_string();
    let v = hub.call("RunCommand", &[("Type", "ApplyKubeletReserved"), ("CommandContent", &content), ("InstanceId.1", &id)]).unwrap();
    let r = &hub.wait_final(v["InvokeId"].as_str().unwrap(), Duration::from_secs(30))[0];
    assert_eq!(r["InvokeRecordStatus"], "Finished", "{r}");
    assert_eq!(r["ExitCode"], 0);
    let out = String::from_utf8(output_of(r)).unwrap();
    assert!(out.contains("kubeReserved.memory") && out.contains("allocatable.memory"), "{out}");
    assert_eq!(std::fs::read(&cfg).unwrap(), before, "dry run changes nothing");

    // Seed 002's Bottlerocket TOML pasted into the request (deckhand extension `explicit`), and
    // a version-picked ACK rule: the node's plan comes back through the hub as written.
    let toml =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/kubelet/seed002/bottlerocket-userdata.toml")).unwrap();
    for (content, want) in [
        (
            serde_json::json!({"policy": "explicit", "explicit": toml, "cpus": 4, "memory": "16Gi", "configPath": cfg, "dryRun": true}),
            "~ systemReserved.memory: (unset) -> 500Mi",
        ),
        (
            serde_json::json!({"policy": "ack", "kubernetesVersion": "1.27", "cpus": 4, "memory": "8Gi", "configPath": cfg, "dryRun": true}),
            "rule: ACK rule for Kubernetes 1.20-1.27 (Kubernetes 1.27, as given)",
        ),
    ] {
        let v = hub
            .call("RunCommand", &[("Type", "ApplyKubeletReserved"), ("CommandContent", &content.to_string()), ("InstanceId.1", &id)])
            .unwrap();
        let r = &hub.wait_final(v["InvokeId"].as_str().unwrap(), Duration::from_secs(30))[0];
        assert_eq!(r["InvokeRecordStatus"], "Finished", "{r}");
        let out = String::from_utf8(output_of(r)).unwrap();
        assert!(out.contains(want), "{out}");
    }
    assert_eq!(std::fs::read(&cfg).unwrap(), before, "dry runs change nothing");

    let v = hub.call("RunCommand", &[("Type", "ApplyKubeletReserved"), ("CommandContent", "{not json"), ("InstanceId.1", &id)]).unwrap();
    let r = &hub.wait_final(v["InvokeId"].as_str().unwrap(), Duration::from_secs(30))[0];
    assert_eq!(r["InvokeRecordStatus"], "Failed", "{r}");
    assert_eq!(r["ErrorCode"], "InvalidKubeletPlan");
}
