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

/// STAND-IN for systemd restarting a kubelet (neither can run in a test):
/// a `systemctl` found first on the node's agent's PATH. Each restart
/// appends its start and end (ns) to `restarts`, lasting a second; when
/// `break-on-apply` exists, the first restart leaves the "kubelet"
/// unhealthy and the next (the node's rollback) heals it.
fn stand_in_systemctl(node: &std::path::Path) {
    let bin = node.join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    let d = node.display();
    let script = format!(
        "#!/bin/sh\n\
         # STAND-IN for systemctl restart of a kubelet (tests/e2e_kubelet.rs)\n\
         echo \"start $(date +%s%N)\" >> '{d}/restarts'\n\
         sleep 1\n\
         if [ -f '{d}/break-on-apply' ] && [ ! -f '{d}/broke' ]; then touch '{d}/broke' '{d}/unhealthy'; else rm -f '{d}/unhealthy'; fi\n\
         echo \"end $(date +%s%N)\" >> '{d}/restarts'\n"
    );
    let path = bin.join("systemctl");
    std::fs::write(&path, script).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
}

/// STAND-IN kubelet healthz for every node: a real HTTP server on
/// 127.0.0.1:0; `GET /<instance>/healthz` is 503 while that node's
/// `unhealthy` file exists, 200 "ok" otherwise. Returns the port.
fn stand_in_healthz(nodes: std::path::PathBuf) -> u16 {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut s) = conn else { continue };
            let mut buf = [0u8; 2048];
            let n = s.read(&mut buf).unwrap_or(0);
            let req = String::from_utf8_lossy(&buf[..n]);
            let node = req.strip_prefix("GET /").and_then(|r| r.split_once("/healthz")).map(|(id, _)| id.to_string()).unwrap_or_default();
            let known = !node.is_empty() && node.chars().all(|c| c.is_ascii_alphanumeric() || c == '-') && nodes.join(&node).is_dir();
            let resp: &[u8] = if known && !nodes.join(&node).join("unhealthy").exists() {
                b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok"
            } else {
                b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
            };
            let _ = s.write_all(resp);
        }
    });
    port
}

/// (start, end) ns of every stand-in restart on one node.
fn restarts(node: &std::path::Path) -> Vec<(u128, u128)> {
    let text = std::fs::read_to_string(node.join("restarts")).unwrap_or_default();
    let marks = |tag: &str| -> Vec<u128> { text.lines().filter_map(|l| l.strip_prefix(tag)).map(|n| n.trim().parse().unwrap()).collect() };
    let (starts, ends) = (marks("start "), marks("end "));
    assert_eq!(starts.len(), ends.len(), "{text}");
    starts.into_iter().zip(ends).collect()
}

/// Issue #23's node-pool rollout: `deckhand kubelet apply --tag pool=web
/// --policy gke --max-concurrency 3 --max-errors 1` over 10 real agents, each with a
/// stand-in kubelet (above). The first two nodes' kubelets come up
/// unhealthy after the apply: each rolls itself back, and the second
/// failure is one more than MaxErrors, so the rollout halts — nodes not yet
/// started end Cancelled and are untouched. The window is checked from the
/// stand-in's own timestamps, never from hub state. (With SSM's MaxErrors,
/// which issue #16 implements, one failure is tolerated by `--max-errors 1`:
/// it takes a second to halt.)
#[test]
fn kubelet_apply_rolls_a_policy_over_a_node_pool_and_halts_at_max_errors() {
    let hub = Hub::start();
    let nodes = tempfile::tempdir().unwrap();
    let port = stand_in_healthz(nodes.path().to_path_buf());
    let fixture = std::fs::read(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/kubelet/eks-kubelet-config.json")).unwrap();
    let path = std::env::var("PATH").unwrap_or_default();
    let mut agents = Vec::new();
    for k in 0..11 {
        // Each agent starts once, with the stand-in systemctl already first on its PATH: the
        // node's directory is made before the agent has an id, and named by the id (which
        // `{{ACS::InstanceId}}` gives the config and healthz paths) once it has one.
        let slot = nodes.path().join(format!("slot-{k}"));
        std::fs::create_dir_all(&slot).unwrap();
        std::fs::write(slot.join("kubelet-config.json"), &fixture).unwrap();
        stand_in_systemctl(&slot);
        let mut a = hub.agent_unstarted(&hub.url, std::path::PathBuf::from(env!("CARGO_BIN_EXE_deckhand-agent")));
        a.env.push(("PATH".into(), format!("{}:{path}", slot.join("bin").display())));
        a.spawn();
        let id = a.instance_id();
        std::os::unix::fs::symlink(&slot, nodes.path().join(&id)).unwrap();
        agents.push((id, a));
    }
    agents.sort_by(|a, b| a.0.cmp(&b.0));
    let ids: Vec<String> = agents.iter().map(|(id, _)| id.clone()).collect();
    for id in &ids {
        hub.wait_online(id);
    }
    // Ten nodes in the pool; the eleventh is not, and is never touched.
    let (pool, outsider) = (&ids[..10], &ids[10]);
    let mut p = vec![
        ("ResourceType".to_string(), "instance".to_string()),
        ("Tag.1.Key".into(), "pool".into()),
        ("Tag.1.Value".into(), "web".into()),
    ];
    p.extend(pool.iter().enumerate().map(|(i, id)| (format!("ResourceId.{}", i + 1), id.clone())));
    let p: Vec<(&str, &str)> = p.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    hub.call("TagResources", &p).unwrap();
    for id in &pool[..2] {
        std::fs::write(nodes.path().join(id).join("break-on-apply"), "").unwrap();
    }
    let config = format!("{}/{{{{ACS::InstanceId}}}}/kubelet-config.json", nodes.path().display());
    let health = format!("http://127.0.0.1:{port}/{{{{ACS::InstanceId}}}}/healthz");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_deckhand"))
        .args(["--endpoint", &hub.url, "--access-key-id", harness::AK_ID, "--access-key-secret", harness::AK_SECRET, "--ca-file"])
        .arg(&hub.ca)
        .args([
            "kubelet",
            "apply",
            "--tag",
            "pool=web",
            "--policy",
            "gke",
            "--max-pods",
            "58",
            "--max-concurrency",
            "3",
            "--max-errors",
            "1",
        ])
        .args(["--kubelet-config", &config, "--health-url", &health, "--health-timeout-secs", "1", "--health-poll-ms", "100"])
        .args(["--cpus", "4", "--memory", "16Gi", "--ephemeral-storage", "100Gi", "--timeout", "60s"])
        .env_remove("DECKHAND_CONFIG")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(1), "not every node applied: exit 1\n{stdout}\n{stderr}");

    let config_of = |id: &str| std::fs::read(nodes.path().join(id).join("kubelet-config.json")).unwrap();
    let (mut applied, mut rolled_back, mut untouched) = (0, 0, 0);
    let mut all_restarts = Vec::new();
    for id in pool {
        let node = nodes.path().join(id);
        let r = restarts(&node);
        let row = stdout.lines().find(|l| l.starts_with(id.as_str())).unwrap_or_else(|| panic!("{id} in the summary:\n{stdout}"));
        if pool[..2].contains(id) {
            // Applied, unhealthy, restored: two restarts, the file as it was.
            assert_eq!(r.len(), 2, "{id}: {r:?}");
            assert_eq!(config_of(id), fixture, "{id} rolled back to its previous config");
            assert!(row.contains("rolled back (KubeletUnhealthy)"), "{row}");
            rolled_back += 1;
        } else if r.is_empty() {
            assert_eq!(config_of(id), fixture, "{id} was never started: untouched");
            assert!(row.contains("not started (MaxErrorsExceeded)"), "{row}");
            untouched += 1;
        } else {
            assert_eq!(r.len(), 1, "{id}: {r:?}");
            let text = String::from_utf8(config_of(id)).unwrap();
            assert!(text.contains("kubeReserved"), "{id} applied: {text}");
            assert!(row.contains("applied") && row.contains(" → "), "{row}");
            applied += 1;
        }
        all_restarts.extend(r);
    }
    assert!(applied >= 1 && untouched >= 1, "applied {applied}, rolled back {rolled_back}, untouched {untouched}\n{stdout}");
    assert!(restarts(&nodes.path().join(outsider)).is_empty() && config_of(outsider) == fixture, "the node outside the pool");
    assert!(stdout.contains("the rollout stopped at MaxErrors"), "{stdout}");
    assert!(
        stdout.contains(&format!("10 nodes: {applied} applied, 0 unchanged, 2 rolled back, 0 failed, {untouched} not started")),
        "{stdout}"
    );
    // The window, from the stand-in's clock: at most 3 kubelets restarting at once.
    let mut events: Vec<(u128, i32)> = all_restarts.iter().flat_map(|(s, e)| [(*s, 1), (*e, -1)]).collect();
    events.sort();
    let (mut now, mut peak) = (0, 0);
    for (_, d) in events {
        now += d;
        peak = peak.max(now);
    }
    assert!(peak <= 3, "MaxConcurrency 3 exceeded: {peak} restarts at once");
    assert!(peak >= 2, "the window ran nodes side by side (peak {peak})");
    drop(agents);
}
