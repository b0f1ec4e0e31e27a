//! Reservations pasted as seed 002 writes them (Bottlerocket TOML, eksctl YAML, Karpenter YAML,
//! a bootstrap.sh line) give the same plan as the equivalent JSON; version-aware policies
//! through the CLI surface; and the binaries' error output is the message chain only, with no
//! backtrace even when RUST_BACKTRACE is set.

use std::path::{Path, PathBuf};
use std::process::Command;

use deckhand::kubelet::KubeletCmd;
use deckhand::kubelet::cli::{PlanArgs, PolicyName, run_cmd_with};
use deckhand::kubelet::explicit::ExplicitSpec;
use deckhand::kubelet::invocation::run_invocation_with;
use deckhand::kubelet::pasted::{self, PastedFormat};
use deckhand::kubelet::service::ServiceManager;
use serde_json::json;

/// STAND-IN service manager: `plan` never restarts anything, so a restart is a test failure.
struct NoRestart;

impl ServiceManager for NoRestart {
    async fn restart(&self, unit: &str) -> Result<(), String> {
        Err(format!("plan must not restart {unit} (stand-in)"))
    }
}

fn seed(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/kubelet/seed002").join(name)
}

/// Each pasted form of seed 002 and the JSON it means.
fn forms() -> Vec<(&'static str, PastedFormat, serde_json::Value)> {
    let bottlerocket = json!({
        "kube-reserved": {"cpu": "100m", "memory": "500Mi", "ephemeral-storage": "1Gi"},
        "system-reserved": {"cpu": "100m", "memory": "500Mi", "ephemeral-storage": "1Gi"},
        "eviction-hard": {"memory.available": "15%"},
    });
    let karpenter = json!({
        "systemReserved": {"cpu": "500m", "memory": "500Mi", "ephemeral-storage": "1Gi"},
        "kubeReserved": {"cpu": "500m", "memory": "500Mi", "ephemeral-storage": "3Gi"},
        "evictionHard": {"memory.available": "5%", "nodefs.available": "10%", "nodefs.inodesFree": "10%"},
    });
    vec![
        ("bottlerocket-userdata.toml", PastedFormat::Toml, bottlerocket.clone()),
        ("eksctl-managed-bottlerocket.yaml", PastedFormat::Yaml, bottlerocket.clone()),
        (
            "eksctl-kubeletextraconfig.yaml",
            PastedFormat::Yaml,
            json!({
                "kubeReserved": {"cpu": "100m", "memory": "500Mi", "ephemeral-storage": "1Gi"},
                "systemReserved": {"cpu": "100m", "memory": "500Mi", "ephemeral-storage": "1Gi"},
                "evictionHard": {"memory.available": "200Mi", "nodefs.available": "10%"},
            }),
        ),
        ("karpenter-provisioner.yaml", PastedFormat::Yaml, karpenter.clone()),
        ("karpenter-provisioner-kebab.yaml", PastedFormat::Yaml, karpenter),
        ("karpenter-bottlerocket-nodetemplate.yaml", PastedFormat::Yaml, bottlerocket),
        (
            "bootstrap-extra-args.txt",
            PastedFormat::KubeletArgs,
            json!({
                "systemReserved": "cpu=200m,memory=200Mi,ephemeral-storage=1Gi",
                "kubeReserved": "cpu=200m,memory=200Mi,ephemeral-storage=1Gi",
                "evictionHard": "memory.available<100Mi,nodefs.available<10%",
            }),
        ),
    ]
}

/// Seed 002's code blocks exactly as its text has them (the extraction joined each block's
/// lines with spaces), copied from the seed. Each fixture is that block with its line breaks
/// and indentation restored and nothing else changed: collapsing the fixture's whitespace gives
/// the seed's text back, token for token.
const SEED_002_BLOCKS: [(&str, &str); 6] = [
    (
        "bootstrap-extra-args.txt",
        r#"/etc/eks/bootstrap.sh {test} --kubelet-extra-args '--system-reserved=cpu=200m,memory=200Mi,ephemeral-storage=1Gi --kube-reserved=cpu=200m,memory=200Mi,ephemeral-storage=1Gi --kube-reserved-cgroup=/kube-reserved --eviction-hard=memory.available<100Mi,nodefs.available<10% --feature-gates=RotateKubeletServerCertificate=true'"#,
    ),
    (
        "bottlerocket-userdata.toml",
        r#"[settings.kubernetes.kube-reserved] cpu = "100m" memory = "500Mi" ephemeral-storage= "1Gi" [settings.kubernetes.system-reserved] cpu = "100m" memory = "500Mi" ephemeral-storage= "1Gi" [settings.kubernetes.eviction-hard] "memory.available" = "15%""#,
    ),
    (
        "eksctl-kubeletextraconfig.yaml",
        r#"nodeGroups: - name: ng-1 instanceType: m6a.xlarge desiredCapacity: 1 kubeletExtraConfig: # 设置预留资源 kubeReserved: cpu: "100m" memory: "500Mi" ephemeral-storage: "1Gi" kubeReservedCgroup: "/kube-reserved" systemReserved: cpu: "100m" memory: "500Mi" ephemeral-storage: "1Gi" evictionHard: memory.available: "200Mi" nodefs.available: "10%" featureGates: RotateKubeletServerCertificate: true # has to be enabled, otherwise it will be disabled"#,
    ),
    (
        "eksctl-managed-bottlerocket.yaml",
        r#"managedNodeGroups: - name: x86-br-ami amiFamily: Bottlerocket # 指定AMI类型 instanceTypes: [ "m6i.xlarge", "m6a.xlarge" ] minSize: 1 desiredCapacity: 1 maxSize: 2 volumeSize: 30 volumeType: gp3 volumeEncrypted: true updateConfig: maxUnavailablePercentage: 33 bottlerocket: # 设置bottlerocket参数 settings: kubernetes: kube-reserved: cpu: "100m" memory: "500Mi" ephemeral-storage: "1Gi" system-reserved: cpu: "100m" memory: "500Mi" ephemeral-storage: "1Gi" eviction-hard: "memory.available": "15%""#,
    ),
    (
        "karpenter-bottlerocket-nodetemplate.yaml",
        r#"apiVersion: karpenter.k8s.aws/v1alpha1 kind: AWSNodeTemplate metadata: name: br spec: subnetSelector: aws-ids: "subnet-077e3f24a51f979bf,subnet-0ddd33536fdafc3e9" # 设置Node子网 securityGroupSelector: aws-ids: "sg-04748bd94e6195921,sg-02ca123d0b291cc96" # 设置Node安全组 amiFamily: Bottlerocket # 指定AMI类型 userData: | [settings.kubernetes.kube-reserved] cpu = "100m" memory = "500Mi" ephemeral-storage= "1Gi" [settings.kubernetes.system-reserved] cpu = "100m" memory = "500Mi" ephemeral-storage= "1Gi" [settings.kubernetes.eviction-hard] "memory.available" = "15%""#,
    ),
    (
        "karpenter-provisioner.yaml",
        r#"apiVersion: karpenter.sh/v1alpha5 kind: Provisioner metadata: name: default spec: labels: intent: apps requirements: - key: karpenter.sh/capacity-type operator: In values: ["spot", "on-demand"] ttlSecondsAfterEmpty: 60 ttlSecondsUntilExpired: 1296000 providerRef: name: default kubeletConfiguration: # 指定预留资源 systemReserved: cpu: 500m memory: 500Mi ephemeral-storage: 1Gi kubeReserved: cpu: 500m memory: 500Mi ephemeral-storage: 3Gi evictionHard: memory.available: 5% nodefs.available: 10% nodefs.inodesFree: 10%"#,
    ),
];

#[test]
fn fixtures_are_seed_002_token_for_token() {
    for (name, block) in SEED_002_BLOCKS {
        let text = std::fs::read_to_string(seed(name)).unwrap();
        let collapsed = text.split_whitespace().collect::<Vec<_>>().join(" ");
        assert_eq!(collapsed, block, "{name}");
    }
    // Every fixture but the kebab-case variant (which is not in the seed) is checked.
    let fixtures = std::fs::read_dir(seed("")).unwrap().count();
    assert_eq!(fixtures, SEED_002_BLOCKS.len() + 2, "README.md and the kebab variant are the only others");
}

fn plan_args(config: &Path, policy: PolicyName) -> PlanArgs {
    PlanArgs {
        policy,
        max_pods: Some(58),
        config: Some(config.to_path_buf()),
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

async fn plan(a: PlanArgs) -> Result<String, deckhand::kubelet::KubeletError> {
    let mut out = Vec::new();
    run_cmd_with(KubeletCmd::Plan { args: a }, &NoRestart, &mut out).await?;
    Ok(String::from_utf8(out).unwrap())
}

fn eks_config(dir: &Path) -> PathBuf {
    let cfg = dir.join("kubelet-config.json");
    std::fs::copy(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/kubelet/eks-kubelet-config.json"), &cfg).unwrap();
    cfg
}

#[tokio::test]
async fn each_seed_form_gives_the_same_plan_as_its_json() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = eks_config(dir.path());
    for (name, format, equivalent) in forms() {
        let text = std::fs::read_to_string(seed(name)).unwrap();
        assert_eq!(PastedFormat::detect(&text), format, "{name}: detected format");
        let from_paste = pasted::parse(&text, None).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(from_paste, ExplicitSpec::from_json(&equivalent).unwrap(), "{name}");
        assert!(from_paste.kube_reserved.is_some() && from_paste.eviction_hard.is_some(), "{name}");

        let by_file = plan(PlanArgs { explicit: Some(seed(name)), ..plan_args(&cfg, PolicyName::Explicit) })
            .await
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        let by_json =
            plan(PlanArgs { explicit_json: Some(equivalent.to_string()), ..plan_args(&cfg, PolicyName::Explicit) }).await.unwrap();
        assert_eq!(by_file, by_json, "{name}: same plan as the equivalent JSON");
        assert!(by_file.contains("change: yes"), "{name}: {by_file}");
    }
    // What the issue's new user tried first: the TOML block handed to --explicit-json.
    let toml = std::fs::read_to_string(seed("bottlerocket-userdata.toml")).unwrap();
    let out = plan(PlanArgs { explicit_json: Some(toml), ..plan_args(&cfg, PolicyName::Explicit) }).await.unwrap();
    assert!(out.contains("~ evictionHard.memory.available: 100Mi -> 15%"), "{out}");
    assert!(out.contains("~ systemReserved.memory: (unset) -> 500Mi"), "{out}");
}

#[tokio::test]
async fn a_named_format_overrides_detection_and_errors_point_at_the_line() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = eks_config(dir.path());
    // A TOML block saved without an extension and named by --explicit-format.
    let plain = dir.path().join("user-data");
    std::fs::copy(seed("bottlerocket-userdata.toml"), &plain).unwrap();
    let a = PlanArgs { explicit: Some(plain.clone()), explicit_format: Some(PastedFormat::Toml), ..plan_args(&cfg, PolicyName::Explicit) };
    assert!(plan(a).await.unwrap().contains("systemReserved.cpu: (unset) -> 100m"));
    // The same text read as YAML is refused, naming the format and the line.
    let a = PlanArgs { explicit: Some(plain.clone()), explicit_format: Some(PastedFormat::Yaml), ..plan_args(&cfg, PolicyName::Explicit) };
    let e = plan(a).await.unwrap_err().to_string();
    assert!(e.contains("line ") && e.contains("YAML"), "{e}");
    // A typo on line 7 of the eksctl block.
    let typo = std::fs::read_to_string(seed("eksctl-kubeletextraconfig.yaml")).unwrap().replacen(
        "ephemeral-storage: \"1Gi\"",
        "ephemeral-storage: \"1 Gi\"",
        1,
    );
    let bad = dir.path().join("bad.yaml");
    std::fs::write(&bad, typo).unwrap();
    let a = PlanArgs { explicit: Some(bad.clone()), ..plan_args(&cfg, PolicyName::Explicit) };
    let e = plan(a).await.unwrap_err().to_string();
    assert!(e.contains(&format!("--explicit {}: line 9: kubeReserved.ephemeral-storage", bad.display())), "{e}");
    // --explicit with another policy is refused, as every explicit value is.
    let a = PlanArgs { explicit: Some(seed("karpenter-provisioner.yaml")), ..plan_args(&cfg, PolicyName::Eks) };
    assert!(plan(a).await.unwrap_err().to_string().contains("use --policy explicit"));
}

#[tokio::test]
async fn version_aware_policies_through_the_cli() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = eks_config(dir.path());
    let with = |policy, version: Option<&str>| PlanArgs {
        kubernetes_version: version.map(str::to_string),
        cpus: Some(4),
        memory: Some("8Gi".into()),
        max_pods: Some(64),
        ..plan_args(&cfg, policy)
    };
    let old = plan(with(PolicyName::Ack, Some("v1.27.9-aliyun.1"))).await.unwrap();
    assert!(old.contains("rule: ACK rule for Kubernetes 1.20-1.27 (Kubernetes 1.27.9, as given)"), "{old}");
    assert!(old.contains("kubeReserved.cpu: 80m -> 50m") && old.contains("kubeReserved.memory: 893Mi -> 922Mi"), "{old}");
    let new = plan(with(PolicyName::Ack, Some("1.28"))).await.unwrap();
    assert!(new.contains("rule: ACK rule for Kubernetes >= 1.28"), "{new}");
    assert!(new.contains("kubeReserved.cpu: 80m -> 40m") && new.contains("kubeReserved.memory: 893Mi -> 480Mi"), "{new}");
    // Unknown version (no kubelet runs here): the current rule, and the plan says so.
    let unknown = plan(with(PolicyName::Aks, None)).await.unwrap();
    assert!(unknown.contains("rule: AKS rule for Kubernetes >= 1.29\n"), "{unknown}");
    assert!(unknown.contains("warning: kubelet version unknown"), "{unknown}");
    let pre = plan(with(PolicyName::Aks, Some("1.28"))).await.unwrap();
    assert!(pre.contains("evictionHard.memory.available: 100Mi -> 750Mi"), "{pre}");
    let tke = plan(with(PolicyName::Tke, None)).await.unwrap();
    assert!(tke.contains("kubeReserved.memory: 893Mi -> 1843Mi") && !tke.contains("warning"), "{tke}");
    // CCE: its version table turns on the patch and -rN revision (v1.28.2-r0 on: model v2).
    let v2 = plan(with(PolicyName::Cce, Some("v1.28.2-r0"))).await.unwrap();
    assert!(v2.contains("rule: CCE memory model v2 (containerd) (Kubernetes 1.28.2-r0, as given)"), "{v2}");
    assert!(v2.contains("kubeReserved.memory: 893Mi -> 820Mi") && v2.contains("systemReserved.memory: (unset) -> 600Mi"), "{v2}");
    assert!(!v2.contains("warning"), "{v2}");
    let v1 = plan(with(PolicyName::Cce, Some("1.21.3-r0"))).await.unwrap();
    assert!(v1.contains("rule: CCE memory model v1 ") && v1.contains("kubeReserved.memory: 893Mi -> 1224Mi"), "{v1}");
    let mixed = plan(with(PolicyName::Cce, Some("1.27.2-r0"))).await.unwrap();
    assert!(mixed.contains("warning: CCE 1.27.2-r0: nodes of custom node pools before v1.27.4-r0"), "{mixed}");
    // A Docker node (its config names cri-dockerd): v2's per-pod figure is Docker's, and the
    // plan says deckhand used containerd's.
    let docker_dir = tempfile::tempdir().unwrap();
    let docker_cfg = eks_config(docker_dir.path());
    let mut doc: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&docker_cfg).unwrap()).unwrap();
    doc["containerRuntimeEndpoint"] = json!("unix:///var/run/cri-dockerd.sock");
    std::fs::write(&docker_cfg, doc.to_string()).unwrap();
    let a = PlanArgs {
        kubernetes_version: Some("1.29".into()),
        cpus: Some(4),
        memory: Some("8Gi".into()),
        ..plan_args(&docker_cfg, PolicyName::Cce)
    };
    let docker = plan(a).await.unwrap();
    assert!(docker.contains("warning: this kubelet uses Docker"), "{docker}");
    assert!(!v2.contains("uses Docker"), "{v2}");
    let e = plan(with(PolicyName::Ack, Some("2.0"))).await.unwrap_err().to_string();
    assert!(e.contains("only Kubernetes 1.x"), "{e}");
}

/// Run a binary with RUST_BACKTRACE=1 and return (exit code, stderr).
fn run_bin(exe: &str, args: &[&str]) -> (Option<i32>, String) {
    let out = Command::new(exe)
        .args(args)
        .env("RUST_BACKTRACE", "1")
        .env("RUST_LIB_BACKTRACE", "1")
        .env_remove("DECKHAND_AGENT_CONFIG")
        .env_remove("DECKHAND_HUB_CONFIG")
        .output()
        .unwrap();
    (out.status.code(), String::from_utf8_lossy(&out.stderr).into_owned())
}

fn assert_chain_only(what: &str, code: Option<i32>, stderr: &str, wants: &[&str]) {
    assert!(matches!(code, Some(c) if c != 0), "{what}: exit {code:?}\n{stderr}");
    assert!(!stderr.to_lowercase().contains("backtrace"), "{what}: {stderr}");
    assert!(!stderr.contains("Caused by") && !stderr.contains("at src/"), "{what}: Debug form printed: {stderr}");
    for w in wants {
        assert!(stderr.contains(w), "{what}: want {w:?} in {stderr}");
    }
}

#[test]
fn binaries_print_the_message_chain_without_a_backtrace() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = eks_config(dir.path());
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "[settings.kubernetes.kube-reserved]\ncpu = \"100m\"\nmemory = \"lots\"\n").unwrap();
    let cfg_s = cfg.to_str().unwrap();
    let bad_s = bad.to_str().unwrap();
    let (code, err) = run_bin(
        env!("CARGO_BIN_EXE_deckhand-agent"),
        &["kubelet", "plan", "--policy", "explicit", "--explicit", bad_s, "--config", cfg_s, "--cpus", "2", "--memory", "8Gi"],
    );
    assert_chain_only(
        "deckhand-agent kubelet plan",
        code,
        &err,
        &["error: invalid kubelet plan: --explicit", "line 3: kubeReserved.memory"],
    );
    let (code, err) = run_bin(
        env!("CARGO_BIN_EXE_deckhand"),
        &["kubelet-plan", "--policy", "explicit", "--explicit", bad_s, "--config", cfg_s, "--cpus", "2", "--memory", "8Gi"],
    );
    assert_chain_only("deckhand kubelet-plan", code, &err, &["error: ", "line 3: kubeReserved.memory"]);
    // The same binary reads a pasted block from stdin (`--explicit -`) and succeeds.
    let mut child = Command::new(env!("CARGO_BIN_EXE_deckhand-agent"))
        .args(["kubelet", "plan", "--policy", "explicit", "--explicit", "-", "--config", cfg_s])
        .args(["--cpus", "2", "--memory", "8Gi"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    {
        use std::io::Write;
        let toml = std::fs::read(seed("bottlerocket-userdata.toml")).unwrap();
        child.stdin.take().unwrap().write_all(&toml).unwrap();
    }
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("~ systemReserved.memory: (unset) -> 500Mi"), "{stdout}");
    // Other exit paths of the daemons: a config file that is not there.
    let missing = dir.path().join("absent.toml");
    let (code, err) = run_bin(env!("CARGO_BIN_EXE_deckhand-agent"), &["--config", missing.to_str().unwrap(), "config", "check"]);
    assert_chain_only("deckhand-agent config check", code, &err, &["error: "]);
    let (code, err) = run_bin(env!("CARGO_BIN_EXE_deckhand-hub"), &["--config", missing.to_str().unwrap(), "config", "check"]);
    assert_chain_only("deckhand-hub config check", code, &err, &["error: "]);
}

#[tokio::test]
async fn invocations_take_pasted_settings_and_a_kubernetes_version() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = eks_config(dir.path());
    let base = json!({"cpus": 4, "memory": "8Gi", "maxPods": 64, "configPath": cfg, "dryRun": true});
    let with = |extra: serde_json::Value| {
        let mut v = base.clone();
        v.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
        v.to_string()
    };
    let toml = std::fs::read_to_string(seed("bottlerocket-userdata.toml")).unwrap();
    let o = run_invocation_with(&with(json!({"policy": "explicit", "explicit": toml})), &NoRestart).await;
    assert!(o.ok, "{o:?}");
    assert!(o.output.contains("~ systemReserved.memory: (unset) -> 500Mi"), "{}", o.output);
    let o = run_invocation_with(&with(json!({"policy": "ack", "kubernetesVersion": "1.27"})), &NoRestart).await;
    assert!(o.ok && o.output.contains("rule: ACK rule for Kubernetes 1.20-1.27"), "{}", o.output);
    let o = run_invocation_with(&with(json!({"policy": "cce", "kubernetesVersion": "v1.19.16-r4"})), &NoRestart).await;
    assert!(o.ok && o.output.contains("kubeReserved.memory: 893Mi -> 1224Mi") && !o.output.contains("warning"), "{}", o.output);
    for (bad, want) in [
        (
            json!({"policy": "explicit", "explicit": "[settings.kubernetes.kube-reserved]\ncpu = true\n"}),
            "explicit: line 2: kubeReserved.cpu",
        ),
        (json!({"policy": "explicit", "explicit": "kubeReserved: {cpu: 1}", "explicitFormat": "ini"}), "explicitFormat must be"),
        (json!({"policy": "explicit", "explicit": "kubeReserved: {cpu: 1}", "kubeletArgs": "--kube-reserved=cpu=1"}), "not both"),
        (json!({"policy": "eks", "explicit": "kubeReserved: {cpu: 1}"}), "use policy explicit"),
        (json!({"policy": "ack", "kubernetesVersion": "latest"}), "kubernetes version"),
    ] {
        let o = run_invocation_with(&with(bad.clone()), &NoRestart).await;
        assert!(!o.ok, "{bad}");
        assert_eq!(o.error_code, "InvalidKubeletPlan", "{bad}");
        assert!(o.output.contains(want), "{bad}: {}", o.output);
    }
}
