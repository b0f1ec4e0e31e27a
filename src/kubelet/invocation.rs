//! Hub invocations of the reserved type `ApplyKubeletReserved`: the command content is a
//! JSON request (schema in docs/kubelet.md); the output is the plan diff and the outcome;
//! failures carry a stable error code (`InvalidKubeletPlan`, `KubeletUnhealthy`, ...).

use std::path::PathBuf;
use std::time::Duration;

use serde_json::Value;

use super::KubeletError;
use super::apply::{ApplyOptions, ApplyOutcome, apply};
use super::explicit::ExplicitSpec;
use super::health::{DEFAULT_HEALTH_URL, HealthUrl};
use super::pasted::{self, PastedFormat};
use super::plan::{PlanRequest, build};
use super::policy::Policy;
use super::quantity::Quantity;
use super::service::{ServiceManager, Systemctl};
use super::version::KubeVersion;

/// The reserved invocation type name.
pub const INVOCATION_TYPE: &str = "ApplyKubeletReserved";
/// Bound on the request document.
pub const MAX_CONTENT_BYTES: usize = 64 * 1024;

/// What the agent reports back for one invocation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvocationOutcome {
    pub ok: bool,
    pub output: String,
    pub error_code: String,
}

#[derive(Debug, serde::Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Request {
    policy: String,
    max_pods: Option<u32>,
    /// deckhand extension: the node's Kubernetes version (picks ack/aks/cce's rule).
    kubernetes_version: Option<String>,
    cpus: Option<u32>,
    memory: Option<String>,
    ephemeral_storage: Option<String>,
    config_path: Option<PathBuf>,
    #[serde(default)]
    dry_run: bool,
    health_url: Option<String>,
    health_timeout_secs: Option<u64>,
    health_poll_ms: Option<u64>,
    unit: Option<String>,
    #[serde(alias = "kube-reserved")]
    kube_reserved: Option<Value>,
    #[serde(alias = "system-reserved")]
    system_reserved: Option<Value>,
    #[serde(alias = "eviction-hard")]
    eviction_hard: Option<Value>,
    kubelet_args: Option<String>,
    /// deckhand extension: settings as pasted (Bottlerocket TOML, eksctl / Karpenter YAML,
    /// JSON or kubelet arguments), read like `kubelet plan --explicit`.
    explicit: Option<String>,
    /// deckhand extension: `toml`, `yaml`, `json` or `kubelet-args` (default: by content).
    explicit_format: Option<String>,
}

fn invalid(msg: impl Into<String>) -> KubeletError {
    KubeletError::InvalidPlan(msg.into())
}

fn bytes_field(field: &str, s: &str) -> Result<u64, KubeletError> {
    let q = Quantity::parse(s).map_err(|e| invalid(format!("{field}: {e}")))?;
    u64::try_from(q.units_ceil()).map_err(|_| invalid(format!("{field}: {s} is negative")))
}

fn parse_request(content: &str) -> Result<(PlanRequest, ApplyOptions, bool), KubeletError> {
    if content.len() > MAX_CONTENT_BYTES {
        return Err(invalid(format!("content is {} bytes, more than {MAX_CONTENT_BYTES}", content.len())));
    }
    let r: Request =
        serde_json::from_str(content).map_err(|e| invalid(format!("content is not a valid {INVOCATION_TYPE} request: {e}")))?;
    let has_explicit = r.kube_reserved.is_some()
        || r.system_reserved.is_some()
        || r.eviction_hard.is_some()
        || r.kubelet_args.is_some()
        || r.explicit.is_some();
    let policy = match r.policy.as_str() {
        "eks" => Policy::Eks,
        "gke" => Policy::Gke,
        "aks" => Policy::Aks,
        "ack" => Policy::Ack,
        "tke" => Policy::Tke,
        "cce" => Policy::Cce,
        "explicit" => {
            let format = r
                .explicit_format
                .as_deref()
                .map(|f| {
                    <PastedFormat as clap::ValueEnum>::from_str(f, true)
                        .map_err(|_| invalid(format!("explicitFormat must be toml, yaml, json or kubelet-args; got {f:?}")))
                })
                .transpose()?;
            let mut spec = match (&r.kubelet_args, &r.explicit) {
                (Some(_), Some(_)) => {
                    return Err(invalid("give kubeletArgs or explicit, not both"));
                }
                (Some(a), None) => ExplicitSpec::from_kubelet_args(a)?,
                (None, Some(text)) => pasted::parse(text, format).map_err(|e| match e {
                    KubeletError::InvalidPlan(m) => invalid(format!("explicit: {m}")),
                    e => e,
                })?,
                (None, None) => ExplicitSpec::default(),
            };
            let mut obj = serde_json::Map::new();
            for (k, v) in [("kubeReserved", &r.kube_reserved), ("systemReserved", &r.system_reserved), ("evictionHard", &r.eviction_hard)] {
                if let Some(v) = v {
                    obj.insert(k.into(), v.clone());
                }
            }
            let from_obj = ExplicitSpec::from_json(&Value::Object(obj))?;
            spec.kube_reserved = from_obj.kube_reserved.or(spec.kube_reserved);
            spec.system_reserved = from_obj.system_reserved.or(spec.system_reserved);
            spec.eviction_hard = from_obj.eviction_hard.or(spec.eviction_hard);
            if spec.is_empty() {
                return Err(invalid("policy explicit needs kubeReserved, systemReserved, evictionHard, kubeletArgs or explicit"));
            }
            Policy::Explicit(spec)
        }
        other => {
            return Err(invalid(format!("policy must be one of eks, gke, aks, ack, tke, cce, explicit; got {other:?}")));
        }
    };
    if has_explicit && !matches!(policy, Policy::Explicit(_)) {
        return Err(invalid(format!("explicit values given with policy {}; use policy explicit", policy.name())));
    }
    let secs = r.health_timeout_secs.unwrap_or(60);
    if !(1..=600).contains(&secs) {
        return Err(invalid(format!("healthTimeoutSecs must be 1..=600, got {secs}")));
    }
    let poll = r.health_poll_ms.unwrap_or(500);
    if !(10..=10_000).contains(&poll) {
        return Err(invalid(format!("healthPollMs must be 10..=10000, got {poll}")));
    }
    let req = PlanRequest {
        policy,
        config_path: r.config_path,
        cpus: r.cpus,
        memory_bytes: r.memory.as_deref().map(|m| bytes_field("memory", m)).transpose()?,
        max_pods: r.max_pods,
        kubernetes_version: r.kubernetes_version.as_deref().map(KubeVersion::parse).transpose()?,
        ephemeral_storage_bytes: r.ephemeral_storage.as_deref().map(|m| bytes_field("ephemeralStorage", m)).transpose()?,
        allow_offline: false,
    };
    let opts = ApplyOptions {
        unit: r.unit.unwrap_or_else(|| "kubelet".into()),
        health_url: HealthUrl::parse(r.health_url.as_deref().unwrap_or(DEFAULT_HEALTH_URL))?,
        health_timeout: Duration::from_secs(secs),
        poll_interval: Duration::from_millis(poll),
        backup_dir: None,
    };
    Ok((req, opts, r.dry_run))
}

/// Checks a request as the agent will read it, without planning: what
/// `deckhand kubelet apply` runs before sending one to a fleet, so a bad
/// flag fails once on the operator's side instead of on every node.
pub fn validate_request(content: &str) -> Result<(), KubeletError> {
    parse_request(content).map(|_| ())
}

/// Run one `ApplyKubeletReserved` invocation with the real systemctl.
pub async fn run_invocation(content: &str) -> InvocationOutcome {
    run_invocation_with(content, &Systemctl).await
}

/// As `run_invocation`, with the service manager given (tests use a stand-in).
pub async fn run_invocation_with<S: ServiceManager>(content: &str, svc: &S) -> InvocationOutcome {
    let fail = |output: String, e: KubeletError| {
        tracing::warn!(code = e.code(), error = %e, "kubelet invocation failed");
        InvocationOutcome { ok: false, output: format!("{output}error: {e}\n"), error_code: e.code().to_string() }
    };
    let (req, opts, dry_run) = match parse_request(content) {
        Ok(x) => x,
        Err(e) => return fail(String::new(), e),
    };
    // Planning reads files, scans /proc and may run `kubelet --version` (up to 5 s): off the
    // agent's runtime thread, which also carries its heartbeats.
    let plan = match tokio::task::spawn_blocking(move || build(&req)).await {
        Ok(Ok(p)) => p,
        Ok(Err(e)) => return fail(String::new(), e),
        Err(e) => {
            return fail(String::new(), KubeletError::InvalidPlan(format!("planning stopped: {e}")));
        }
    };
    let diff = plan.render_diff();
    if dry_run {
        return InvocationOutcome { ok: true, output: format!("{diff}result: dry run, nothing changed\n"), error_code: String::new() };
    }
    match apply(&plan, &opts, svc).await {
        Ok(ApplyOutcome::Unchanged) => {
            InvocationOutcome { ok: true, output: format!("{diff}result: unchanged\n"), error_code: String::new() }
        }
        Ok(ApplyOutcome::Applied { backup }) => InvocationOutcome {
            ok: true,
            output: format!("{diff}result: applied (backup {})\n", backup.display()),
            error_code: String::new(),
        },
        Err(e) => fail(diff, e),
    }
}
