//! A plan: the node's facts, the config file, the reservation before and after, node
//! allocatable before and after, warnings, and the exact new file text. Building a plan
//! reads but never writes; `render_diff` is what `kubelet plan` and invocations print.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use super::KubeletError;
use super::config::{ConfigFormat, ConfigState, KubeletConfigFile, flags_override};
use super::facts;
use super::policy::{NodeFacts, Policy, Reservation, Rule};
use super::quantity::Quantity;
use super::validate::{Allocatable, allocatable, validate};
use super::version::KubeVersion;

/// Inputs to a plan; `None` facts are detected on this machine.
#[derive(Debug, Clone)]
pub struct PlanRequest {
    pub policy: Policy,
    pub config_path: Option<PathBuf>,
    pub cpus: Option<u32>,
    pub memory_bytes: Option<u64>,
    pub max_pods: Option<u32>,
    pub ephemeral_storage_bytes: Option<u64>,
    /// The node's Kubernetes version, which picks a provider's rule (`--kubernetes-version`);
    /// None: ask the running kubelet when the policy depends on it.
    pub kubernetes_version: Option<KubeVersion>,
    /// When no config can be found (and none was named), plan against an empty
    /// KubeletConfiguration instead of failing: offline planning for a hypothetical node.
    pub allow_offline: bool,
}

#[derive(Debug, Clone)]
pub struct Plan {
    /// Planned without a config file (see `PlanRequest::allow_offline`); cannot be applied.
    pub offline: bool,
    pub policy: String,
    /// The provider rule the policy resolved to (see `policy::Rule::describe`).
    pub rule: String,
    /// The version that picked the rule and where it came from.
    pub kubernetes_version: Option<(KubeVersion, &'static str)>,
    pub config_path: PathBuf,
    pub format: ConfigFormat,
    pub facts: NodeFacts,
    pub before: Reservation,
    pub after: Reservation,
    pub allocatable_before: Allocatable,
    pub allocatable_after: Allocatable,
    pub warnings: Vec<String>,
    /// False when the file already holds exactly this reservation (nothing to write, no restart).
    pub changed: bool,
    pub old_text: String,
    pub new_text: String,
}

/// Build a plan against the config at `req.config_path` (or the detected one).
pub fn build(req: &PlanRequest) -> Result<Plan, KubeletError> {
    let args = facts::kubelet_cmdline();
    let versioned = matches!(req.policy, Policy::Ack | Policy::Aks | Policy::Cce);
    // Only the policies whose rule depends on the version ask the kubelet (it runs a process).
    if versioned
        && req.kubernetes_version.is_none()
        && let Some(v) = facts::detect_kubelet_version()
    {
        return build_versioned(req, args.as_deref(), Some((v, "from the running kubelet")));
    }
    build_with(req, args.as_deref())
}

/// Whether the kubelet talks to Docker (dockershim or cri-dockerd) rather than containerd, by
/// its runtime flags or its config's `containerRuntimeEndpoint`.
fn runs_on_docker(kubelet_args: Option<&[String]>, config_text: &str) -> bool {
    let dockerish = |v: &str| v == "docker" || v.contains("dockershim") || v.contains("cri-dockerd") || v.contains("docker.sock");
    let by_flag = kubelet_args.is_some_and(|args| {
        ["--container-runtime", "--container-runtime-endpoint"].iter().any(|f| facts::flag_value(args, f).is_some_and(|v| dockerish(&v)))
    });
    let by_config = config_text
        .lines()
        .filter(|l| l.contains("containerRuntimeEndpoint"))
        .any(|l| l.contains("dockershim") || l.contains("cri-dockerd") || l.contains("docker.sock"));
    by_flag || by_config
}

/// As `build`, with the kubelet's argv given (None: no kubelet running).
pub fn build_with(req: &PlanRequest, kubelet_args: Option<&[String]>) -> Result<Plan, KubeletError> {
    let given = req.kubernetes_version.map(|v| (v, "as given"));
    build_versioned(req, kubelet_args, given)
}

fn build_versioned(
    req: &PlanRequest,
    kubelet_args: Option<&[String]>,
    version: Option<(KubeVersion, &'static str)>,
) -> Result<Plan, KubeletError> {
    let (path, file, offline) = match facts::locate_config(req.config_path.as_deref(), kubelet_args) {
        Ok(path) => {
            let file = KubeletConfigFile::load(&path)?;
            (path, file, false)
        }
        Err(KubeletError::NoConfigFound(_)) if req.allow_offline => {
            let path = PathBuf::from("(none: offline plan against an empty KubeletConfiguration)");
            let file = KubeletConfigFile { path: path.clone(), format: ConfigFormat::Json, text: "{}".into() };
            (path, file, true)
        }
        Err(e) => return Err(e),
    };
    let state = file.state()?;
    let node = NodeFacts {
        cpus: req.cpus.unwrap_or_else(facts::detect_cpus),
        memory_bytes: req.memory_bytes.unwrap_or_else(facts::detect_memory_bytes),
        max_pods: req.max_pods.or(state.max_pods).unwrap_or(facts::DEFAULT_MAX_PODS),
        ephemeral_storage_bytes: req.ephemeral_storage_bytes.or_else(facts::detect_ephemeral_storage_bytes),
    };
    let (after, choice) = req.policy.compute_for(&node, version.map(|(v, _)| v), &state.reservation)?;
    let after_state = ConfigState { reservation: after.clone(), ..state.clone() };
    let mut warnings: Vec<String> = choice.warning.into_iter().collect();
    if choice.rule == Rule::CceV2 && runs_on_docker(kubelet_args, &file.text) {
        warnings.push(
            "this kubelet uses Docker: CCE's v2 model reserves 20MiB per pod for Docker, deckhand planned containerd's 5MiB (set kubeReserved.memory with --policy explicit)"
                .into(),
        );
    }
    warnings.extend(validate(&node, &after, &after_state)?);
    if let Some(args) = kubelet_args {
        for key in flags_override(args) {
            warnings.push(format!("the running kubelet sets {key} as a command-line flag, which overrides the config file"));
        }
        if let Some(dir) = facts::flag_value(args, "--config-dir") {
            warnings.extend(drop_in_overrides(Path::new(&dir)));
        }
    }
    let changed = after != state.reservation;
    let new_text = if changed { file.render(&after)? } else { file.text.clone() };
    Ok(Plan {
        offline,
        policy: req.policy.name().to_string(),
        rule: choice.rule.describe().to_string(),
        kubernetes_version: version,
        config_path: path,
        format: file.format,
        facts: node,
        allocatable_before: allocatable(&node, &state.reservation),
        allocatable_after: allocatable(&node, &after),
        before: state.reservation,
        after,
        warnings,
        changed,
        old_text: file.text,
        new_text,
    })
}

/// Drop-ins (`--config-dir/*.conf`) are merged over the main file, so one that sets an owned
/// key would silently win over the edit; name them.
pub fn drop_in_overrides(dir: &Path) -> Vec<String> {
    let Ok(rd) = std::fs::read_dir(dir) else { return vec![] };
    let mut out = Vec::new();
    for entry in rd.flatten().take(100) {
        let p = entry.path();
        if p.extension().and_then(|e| e.to_str()) != Some("conf") {
            continue;
        }
        let text = std::fs::read_to_string(&p).unwrap_or_default();
        for key in super::config::OWNED_KEYS {
            if text.contains(key) {
                out.push(format!("drop-in {} sets {key}, which overrides the config file", p.display()));
            }
        }
    }
    out.sort();
    out
}

fn entries(r: &Reservation) -> Vec<(String, String)> {
    let mut v = Vec::new();
    v.extend(r.kube_reserved.iter().map(|(k, q)| (format!("kubeReserved.{k}"), q.to_string())));
    v.extend(r.system_reserved.iter().map(|(k, q)| (format!("systemReserved.{k}"), q.to_string())));
    v.extend(r.eviction_hard.iter().map(|(k, t)| (format!("evictionHard.{k}"), t.to_string())));
    v
}

fn bytes(b: i128) -> String {
    if b < 0 {
        return format!("-{}", bytes(-b));
    }
    let mi = 1i128 << 20;
    // Allocatable is printed in whole Mi (rounded down) the way a human compares nodes.
    Quantity::from_mebibytes((b / mi) as u64).to_string()
}

impl Plan {
    /// Human-readable diff: each owned key before -> after, then allocatable before -> after.
    pub fn render_diff(&self) -> String {
        let mut out = String::new();
        let f = &self.facts;
        let _ = writeln!(
            out,
            "kubelet config: {} ({})",
            self.config_path.display(),
            if self.format == ConfigFormat::Json { "json" } else { "yaml" }
        );
        let _ = writeln!(
            out,
            "policy: {}  node: {} vCPU, {} memory, maxPods {}{}",
            self.policy,
            f.cpus,
            Quantity::from_bytes(f.memory_bytes),
            f.max_pods,
            f.ephemeral_storage_bytes.map(|e| format!(", {} ephemeral-storage", bytes(e as i128))).unwrap_or_default()
        );
        let _ = writeln!(
            out,
            "rule: {}{}",
            self.rule,
            self.kubernetes_version.map(|(v, from)| format!(" (Kubernetes {v}, {from})")).unwrap_or_default()
        );
        let before = entries(&self.before);
        let after = entries(&self.after);
        let mut keys: Vec<&String> = before.iter().chain(after.iter()).map(|(k, _)| k).collect();
        keys.sort();
        keys.dedup();
        for k in keys {
            let b = before.iter().find(|(x, _)| x == k).map(|(_, v)| v.as_str()).unwrap_or("(unset)");
            let a = after.iter().find(|(x, _)| x == k).map(|(_, v)| v.as_str()).unwrap_or("(unset)");
            let mark = if a == b { "  " } else { "~ " };
            let _ = writeln!(out, "{mark}{k}: {b} -> {a}");
        }
        let (ab, aa) = (&self.allocatable_before, &self.allocatable_after);
        let _ = writeln!(out, "allocatable.cpu: {}m -> {}m", ab.cpu_millis, aa.cpu_millis);
        let _ = writeln!(out, "allocatable.memory: {} -> {}", bytes(ab.memory_bytes), bytes(aa.memory_bytes));
        if let (Some(b), Some(a)) = (ab.ephemeral_storage_bytes, aa.ephemeral_storage_bytes) {
            let _ = writeln!(out, "allocatable.ephemeral-storage: {} -> {}", bytes(b), bytes(a));
        }
        for w in &self.warnings {
            let _ = writeln!(out, "warning: {w}");
        }
        let _ = writeln!(out, "{}", if self.changed { "change: yes" } else { "change: none (already applied)" });
        out
    }

    /// Machine-readable form for `--json`.
    pub fn to_json(&self) -> serde_json::Value {
        let map = |r: &Reservation| {
            serde_json::json!({
                "kubeReserved": r.kube_reserved,
                "systemReserved": r.system_reserved,
                "evictionHard": r.eviction_hard.iter().map(|(k, t)| (k.clone(), t.to_string())).collect::<std::collections::BTreeMap<_, _>>(),
            })
        };
        serde_json::json!({
            "policy": self.policy,
            "rule": self.rule,
            "kubernetesVersion": self.kubernetes_version.map(|(v, _)| v.to_string()),
            "configPath": self.config_path,
            "format": self.format,
            "node": self.facts,
            "before": map(&self.before),
            "after": map(&self.after),
            "allocatableBefore": alloc_json(&self.allocatable_before),
            "allocatableAfter": alloc_json(&self.allocatable_after),
            "warnings": self.warnings,
            "changed": self.changed,
        })
    }

    pub fn path(&self) -> &Path {
        &self.config_path
    }
}

fn alloc_json(a: &Allocatable) -> serde_json::Value {
    serde_json::json!({
        "cpu": format!("{}m", a.cpu_millis),
        "memoryBytes": a.memory_bytes as i64,
        "ephemeralStorageBytes": a.ephemeral_storage_bytes.map(|e| e as i64),
    })
}
