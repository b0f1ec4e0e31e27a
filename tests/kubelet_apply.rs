//! End-to-end apply tests on real files in temp dirs (fixtures shaped like a bootstrapped EKS
//! node and a kubeadm node). The kubelet itself cannot run here, so two STAND-INS replace it
//! at that boundary: `StandInKubelet` (the service manager: on "restart" it reads the config
//! the way a kubelet would and decides whether it comes up healthy) and a real tiny HTTP
//! server on 127.0.0.1:0 serving its healthz.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use deckhand::kubelet::KubeletError;
use deckhand::kubelet::cli::{KubeletCmd, PlanArgs, PolicyName, run_cmd_with};
use deckhand::kubelet::invocation::run_invocation_with;
use deckhand::kubelet::service::ServiceManager;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/kubelet");

/// STAND-IN for systemd + kubelet: counts restarts and, on each restart, decides health by
/// applying `healthy_if` to the config file content (a kubelet that rejects its config never
/// becomes healthy).
struct StandInKubelet {
    config: PathBuf,
    healthy: Arc<AtomicBool>,
    restarts: AtomicUsize,
    fail_restart: bool,
    healthy_if: Box<dyn Fn(&str) -> bool + Send + Sync>,
}

impl ServiceManager for StandInKubelet {
    async fn restart(&self, unit: &str) -> Result<(), String> {
        assert_eq!(unit, "kubelet");
        self.restarts.fetch_add(1, Ordering::SeqCst);
        let text = std::fs::read_to_string(&self.config).map_err(|e| e.to_string())?;
        if self.fail_restart && self.restarts.load(Ordering::SeqCst) == 1 {
            return Err("Job for kubelet.service failed (stand-in)".into());
        }
        self.healthy.store((self.healthy_if)(&text), Ordering::SeqCst);
        Ok(())
    }
}

/// STAND-IN kubelet healthz: a real HTTP server on 127.0.0.1:0 answering 200 "ok" while
/// `healthy`, 503 otherwise.
async fn stand_in_healthz(healthy: Arc<AtomicBool>) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = listener.accept().await else { return };
            let healthy = healthy.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 2048];
                let mut n = 0;
                while n < buf.len() {
                    match s.read(&mut buf[n..]).await {
                        Ok(0) | Err(_) => break,
                        Ok(k) => n += k,
                    }
                    if buf[..n].windows(4).any(|w| w == b"\r\n\r\n") {
                        break;
                    }
                }
                assert!(buf[..n].starts_with(b"GET /healthz HTTP/1.1\r\n"));
                let resp: &[u8] = if healthy.load(Ordering::SeqCst) {
                    b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
                } else {
                    b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n\r\n"
                };
                let _ = s.write_all(resp).await;
            });
        }
    });
    format!("http://{addr}/healthz")
}

struct Node {
    _dir: tempfile::TempDir,
    dir: PathBuf,
    config: PathBuf,
    original: String,
    kubelet: StandInKubelet,
    health_url: String,
}

async fn node(fixture: &str, healthy_if: impl Fn(&str) -> bool + Send + Sync + 'static) -> Node {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join(fixture);
    let original = std::fs::read_to_string(Path::new(FIXTURES).join(fixture)).unwrap();
    std::fs::write(&config, &original).unwrap();
    let healthy = Arc::new(AtomicBool::new(true));
    let health_url = stand_in_healthz(healthy.clone()).await;
    Node {
        dir: dir.path().to_path_buf(),
        _dir: dir,
        config: config.clone(),
        original,
        kubelet: StandInKubelet { config, healthy, restarts: AtomicUsize::new(0), fail_restart: false, healthy_if: Box::new(healthy_if) },
        health_url,
    }
}

fn args(n: &Node, policy: PolicyName) -> PlanArgs {
    PlanArgs {
        policy,
        max_pods: None,
        config: Some(n.config.clone()),
        json: false,
        cpus: Some(4),
        memory: Some("16Gi".into()),
        ephemeral_storage: Some("100Gi".into()),
        kube_reserved: None,
        system_reserved: None,
        eviction_hard: None,
        kubelet_args: None,
        explicit_json: None,
        kubernetes_version: None,
        explicit: None,
        explicit_format: None,
    }
}

fn apply_cmd(n: &Node, a: PlanArgs) -> KubeletCmd {
    KubeletCmd::Apply {
        args: a,
        unit: "kubelet".into(),
        health_url: n.health_url.clone(),
        health_timeout_secs: 1,
        health_poll_ms: 20,
        backup_dir: None,
    }
}

async fn run(n: &Node, cmd: KubeletCmd) -> Result<String, KubeletError> {
    let mut out: Vec<u8> = Vec::new();
    run_cmd_with(cmd, &n.kubelet, &mut out).await?;
    Ok(String::from_utf8(out).unwrap())
}

fn backups(n: &Node) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> =
        std::fs::read_dir(&n.dir).unwrap().flatten().map(|e| e.path()).filter(|p| p.to_string_lossy().ends_with(".bak")).collect();
    v.sort();
    v
}

fn seed_explicit(n: &Node) -> PlanArgs {
    PlanArgs {
        kubelet_args: Some("--system-reserved=cpu=200m,memory=200Mi,ephemeral-storage=1Gi --kube-reserved=cpu=200m,memory=200Mi,ephemeral-storage=1Gi --eviction-hard=memory.available<100Mi,nodefs.available<10%".into()),
        ..args(n, PolicyName::Explicit)
    }
}

#[tokio::test]
async fn eks_policy_on_bootstrapped_eks_node_is_a_no_op() {
    let n = node("eks-kubelet-config.json", |_| true).await;
    // The fixture is what bootstrap.sh writes for m5.xlarge (4 vCPU, 58 pods): same formula.
    let out = run(&n, apply_cmd(&n, args(&n, PolicyName::Eks))).await.unwrap();
    assert!(out.contains("kubeReserved.memory: 893Mi -> 893Mi"), "{out}");
    assert!(out.contains("result: unchanged"), "{out}");
    assert_eq!(n.kubelet.restarts.load(Ordering::SeqCst), 0);
    assert_eq!(std::fs::read_to_string(&n.config).unwrap(), n.original);
    assert!(backups(&n).is_empty());
}

#[tokio::test]
async fn explicit_apply_on_eks_backs_up_restarts_preserves_keys_and_is_idempotent() {
    let n = node("eks-kubelet-config.json", |_| true).await;
    let out = run(&n, apply_cmd(&n, seed_explicit(&n))).await.unwrap();
    assert!(out.contains("~ kubeReserved.cpu: 80m -> 200m"), "{out}");
    assert!(out.contains("~ systemReserved.memory: (unset) -> 200Mi"), "{out}");
    assert!(out.contains("~ evictionHard.nodefs.inodesFree: 5% -> (unset)"), "{out}");
    assert!(out.contains("allocatable.cpu: 3920m -> 3600m"), "{out}");
    assert!(out.contains("result: applied"), "{out}");
    assert_eq!(n.kubelet.restarts.load(Ordering::SeqCst), 1);

    let before: serde_json::Value = serde_json::from_str(&n.original).unwrap();
    let after: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&n.config).unwrap()).unwrap();
    for (k, v) in before.as_object().unwrap() {
        if !["kubeReserved", "systemReserved", "evictionHard"].contains(&k.as_str()) {
            assert_eq!(&after[k], v, "key {k} preserved");
        }
    }
    assert_eq!(after["kubeReserved"]["memory"], "200Mi");
    assert_eq!(after["systemReserved"]["ephemeral-storage"], "1Gi");
    assert_eq!(after["evictionHard"], serde_json::json!({"memory.available": "100Mi", "nodefs.available": "10%"}));
    let b = backups(&n);
    assert_eq!(b.len(), 1);
    assert_eq!(std::fs::read_to_string(&b[0]).unwrap(), n.original, "backup holds the original");

    // Same plan again: nothing written, no restart, no new backup.
    let written = std::fs::read(&n.config).unwrap();
    let out = run(&n, apply_cmd(&n, seed_explicit(&n))).await.unwrap();
    assert!(out.contains("result: unchanged"), "{out}");
    assert_eq!(n.kubelet.restarts.load(Ordering::SeqCst), 1);
    assert_eq!(std::fs::read(&n.config).unwrap(), written);
    assert_eq!(backups(&n).len(), 1);
}

#[tokio::test]
async fn kubeadm_yaml_keeps_every_other_line() {
    let n = node("kubeadm-config.yaml", |_| true).await;
    let out = run(&n, apply_cmd(&n, args(&n, PolicyName::Gke))).await.unwrap();
    assert!(out.contains("config: ") && out.contains("(yaml)"), "{out}");
    assert!(out.contains("~ kubeReserved.memory: (unset) -> 2663Mi"), "{out}");
    assert!(out.contains("~ evictionHard.imagefs.available: 15% -> (unset)"), "{out}");
    let text = std::fs::read_to_string(&n.config).unwrap();
    // Every original line outside the evictionHard block survives, in order.
    let kept: Vec<&str> = n
        .original
        .lines()
        .filter(|l| !l.starts_with("evictionHard:") && !l.starts_with("  imagefs.available") && !l.starts_with("  memory.available"))
        .collect();
    let mut it = text.lines();
    for line in &kept {
        assert!(it.any(|l| l == *line), "line {line:?} kept in order:\n{text}");
    }
    assert!(text.contains("kubeReserved:\n  cpu: \"80m\"\n  memory: \"2663Mi\"\n"), "{text}");
    assert!(
        text.contains("evictionHard:\n  memory.available: \"100Mi\"\n  nodefs.available: \"10%\"\n  nodefs.inodesFree: \"5%\"\n"),
        "{text}"
    );
    assert_eq!(n.kubelet.restarts.load(Ordering::SeqCst), 1);

    let out = run(&n, apply_cmd(&n, args(&n, PolicyName::Gke))).await.unwrap();
    assert!(out.contains("result: unchanged"), "{out}");
    assert_eq!(n.kubelet.restarts.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn unhealthy_kubelet_is_rolled_back_and_restarted() {
    // The stand-in kubelet only comes up with the config it had before.
    let original = std::fs::read_to_string(Path::new(FIXTURES).join("eks-kubelet-config.json")).unwrap();
    let n = node("eks-kubelet-config.json", move |t| t == original).await;
    let err = run(&n, apply_cmd(&n, seed_explicit(&n))).await.unwrap_err();
    assert_eq!(err.code(), "KubeletUnhealthy");
    assert!(matches!(err, KubeletError::Unhealthy { recovered: true, .. }), "{err}");
    assert_eq!(std::fs::read_to_string(&n.config).unwrap(), n.original, "rolled back");
    assert_eq!(n.kubelet.restarts.load(Ordering::SeqCst), 2, "restarted with new config, then with the backup");
    assert_eq!(backups(&n).len(), 1);
}

#[tokio::test]
async fn failed_restart_is_rolled_back() {
    let mut n = node("eks-kubelet-config.json", |_| true).await;
    n.kubelet.fail_restart = true;
    let err = run(&n, apply_cmd(&n, seed_explicit(&n))).await.unwrap_err();
    assert_eq!(err.code(), "KubeletRestartFailed", "{err}");
    assert_eq!(std::fs::read_to_string(&n.config).unwrap(), n.original);
    assert_eq!(n.kubelet.restarts.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn plan_changes_nothing() {
    let n = node("kubeadm-config.yaml", |_| true).await;
    let mut a = args(&n, PolicyName::Eks);
    a.json = true;
    let out = run(&n, KubeletCmd::Plan { args: a }).await.unwrap();
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["changed"], true);
    assert_eq!(v["after"]["kubeReserved"]["memory"], "1465Mi", "255 + 11 x 110 default maxPods");
    assert_eq!(v["allocatableAfter"]["cpu"], "3920m");
    assert_eq!(std::fs::read_to_string(&n.config).unwrap(), n.original);
    assert_eq!(n.kubelet.restarts.load(Ordering::SeqCst), 0);
    assert!(backups(&n).is_empty());
}

#[tokio::test]
async fn malformed_configs_are_refused_untouched() {
    let cases: [(&str, &str, &str); 5] = [
        ("kubelet-config.json", "{\"kind\": \"KubeletConfiguration\", \"maxPods\": ", "invalid JSON"),
        ("kubelet-config.json", "{\"kind\": \"Pod\"}", "not KubeletConfiguration"),
        ("kubelet-config.json", "{\"kubeReserved\": {\"cpu\": \"lots\"}}", "kubeReserved.cpu"),
        ("config.yaml", "kind: KubeletConfiguration\n---\nkind: KubeletConfiguration\n", "more than one YAML document"),
        ("config.yaml", "kind: KubeletConfiguration\nkubeReserved:\n  cpu:\n    nested: 1\n", "nested or uneven"),
    ];
    for (name, text, want) in cases {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join(name);
        std::fs::write(&config, text).unwrap();
        let mut n = node("eks-kubelet-config.json", |_| true).await;
        n.config = config.clone();
        let err = run(&n, apply_cmd(&n, args(&n, PolicyName::Eks))).await.unwrap_err();
        assert_eq!(err.code(), "KubeletConfigMalformed", "{name}: {err}");
        assert!(err.to_string().contains(want), "{err}");
        assert_eq!(std::fs::read_to_string(&config).unwrap(), text, "untouched");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1, "no backup or temp file left");
        assert_eq!(n.kubelet.restarts.load(Ordering::SeqCst), 0);
    }
}

#[tokio::test]
async fn read_only_config_is_refused() {
    use std::os::unix::fs::PermissionsExt;
    let n = node("eks-kubelet-config.json", |_| true).await;
    std::fs::set_permissions(&n.config, std::fs::Permissions::from_mode(0o444)).unwrap();
    let err = run(&n, apply_cmd(&n, seed_explicit(&n))).await.unwrap_err();
    assert_eq!(err.code(), "KubeletConfigReadOnly", "{err}");
    assert_eq!(std::fs::read_to_string(&n.config).unwrap(), n.original);
    assert!(backups(&n).is_empty());
    assert_eq!(n.kubelet.restarts.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn missing_config_is_reported() {
    let mut n = node("eks-kubelet-config.json", |_| true).await;
    n.config = n.dir.join("nope").join("kubelet-config.json");
    let err = run(&n, apply_cmd(&n, args(&n, PolicyName::Eks))).await.unwrap_err();
    assert_eq!(err.code(), "KubeletConfigMissing", "{err}");
    assert_eq!(n.kubelet.restarts.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn enforce_kube_reserved_without_cgroup_is_refused() {
    let n = node("eks-kubelet-config.json", |_| true).await;
    let text = n.original.replacen("\"maxPods\": 58,", "\"maxPods\": 58,\n  \"enforceNodeAllocatable\": [\"pods\", \"kube-reserved\"],", 1);
    std::fs::write(&n.config, &text).unwrap();
    let err = run(&n, apply_cmd(&n, seed_explicit(&n))).await.unwrap_err();
    assert_eq!(err.code(), "InvalidKubeletPlan");
    assert!(err.to_string().contains("kubeReservedCgroup is not set"), "{err}");
    assert_eq!(std::fs::read_to_string(&n.config).unwrap(), text);
}

#[tokio::test]
async fn invocations_report_diff_and_codes() {
    let original = std::fs::read_to_string(Path::new(FIXTURES).join("eks-kubelet-config.json")).unwrap();
    let n = node("eks-kubelet-config.json", move |t| t == original).await;
    let base = serde_json::json!({
        "policy": "explicit", "cpus": 4, "memory": "16Gi", "ephemeralStorage": "100Gi",
        "configPath": n.config, "healthUrl": n.health_url, "healthTimeoutSecs": 1, "healthPollMs": 20,
        "kube-reserved": {"cpu": "100m", "memory": "500Mi", "ephemeral-storage": "1Gi"},
        "eviction-hard": {"memory.available": "15%"}
    });
    let mut dry = base.clone();
    dry["dryRun"] = true.into();
    let o = run_invocation_with(&dry.to_string(), &n.kubelet).await;
    assert!(o.ok, "{o:?}");
    assert!(o.output.contains("~ kubeReserved.memory: 893Mi -> 500Mi"), "{}", o.output);
    assert!(o.output.contains("dry run"));
    assert_eq!(std::fs::read_to_string(&n.config).unwrap(), n.original);

    let o = run_invocation_with(&base.to_string(), &n.kubelet).await;
    assert!(!o.ok);
    assert_eq!(o.error_code, "KubeletUnhealthy");
    assert!(o.output.contains("~ kubeReserved.memory: 893Mi -> 500Mi") && o.output.contains("rolled back"), "{}", o.output);
    assert_eq!(std::fs::read_to_string(&n.config).unwrap(), n.original);

    for bad in [
        "not json".to_string(),
        serde_json::json!({"policy": "eks", "maxPodz": 3}).to_string(),
        serde_json::json!({"policy": "openshift"}).to_string(),
        serde_json::json!({"policy": "eks", "kubeReserved": {"cpu": "1"}}).to_string(),
        serde_json::json!({"policy": "eks", "healthTimeoutSecs": 0}).to_string(),
        serde_json::json!({"policy": "eks", "memory": "16GB"}).to_string(),
    ] {
        let o = run_invocation_with(&bad, &n.kubelet).await;
        assert!(!o.ok);
        assert_eq!(o.error_code, "InvalidKubeletPlan", "{bad}: {}", o.output);
        assert!(o.output.starts_with("error: "), "{}", o.output);
    }
}

#[tokio::test]
async fn plan_runs_offline_for_a_hypothetical_node() {
    if Path::new("/etc/kubernetes/kubelet/kubelet-config.json").exists() || Path::new("/var/lib/kubelet/config.yaml").exists() {
        return; // a real node: detection would (rightly) find its config
    }
    let n = node("eks-kubelet-config.json", |_| true).await;
    let a = PlanArgs { config: None, max_pods: Some(29), cpus: Some(2), memory: Some("8Gi".into()), ..args(&n, PolicyName::Eks) };
    let out = run(&n, KubeletCmd::Plan { args: a.clone() }).await.unwrap();
    assert!(out.contains("offline plan"), "{out}");
    assert!(out.contains("~ kubeReserved.memory: (unset) -> 574Mi"), "{out}");
    assert!(out.contains("allocatable.cpu: 2000m -> 1930m"), "{out}");
    // Apply never runs offline.
    let err = run(&n, apply_cmd(&n, a)).await.unwrap_err();
    assert_eq!(err.code(), "KubeletConfigMissing");
    assert_eq!(n.kubelet.restarts.load(Ordering::SeqCst), 0);
}

#[test]
fn flags_and_drop_ins_that_override_the_file_are_warned() {
    use deckhand::kubelet::plan::{PlanRequest, build_with};
    use deckhand::kubelet::policy::Policy;
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("kubelet-config.json");
    std::fs::copy(Path::new(FIXTURES).join("eks-kubelet-config.json"), &config).unwrap();
    let dropins = dir.path().join("kubelet.conf.d");
    std::fs::create_dir(&dropins).unwrap();
    std::fs::write(dropins.join("10-reserved.conf"), "{\"kubeReserved\": {\"cpu\": \"1\"}}").unwrap();
    std::fs::write(dropins.join("20-other.conf"), "{\"maxPods\": 10}").unwrap();
    let argv: Vec<String> = vec![
        "/usr/bin/kubelet".into(),
        format!("--config={}", config.display()),
        format!("--config-dir={}", dropins.display()),
        "--eviction-hard=memory.available<1Gi".into(),
    ];
    let req = PlanRequest {
        policy: Policy::Gke,
        config_path: None,
        cpus: Some(4),
        memory_bytes: Some(16 << 30),
        max_pods: None,
        kubernetes_version: None,
        ephemeral_storage_bytes: None,
        allow_offline: false,
    };
    let plan = build_with(&req, Some(&argv)).unwrap();
    assert_eq!(plan.config_path, config, "config found through the kubelet's --config");
    assert_eq!(plan.warnings.len(), 2, "{:?}", plan.warnings);
    assert!(plan.warnings[0].contains("evictionHard as a command-line flag"));
    assert!(plan.warnings[1].contains("10-reserved.conf sets kubeReserved"));
    assert!(plan.render_diff().contains("warning: drop-in"));
}
