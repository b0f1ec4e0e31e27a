//! `kubelet plan` / `kubelet apply` subcommands, for the lead to mount under
//! `deckhand-agent` (and `deckhand`, which can plan offline for a hypothetical node with
//! `--cpus/--memory/--config`).

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::KubeletError;
use super::apply::{ApplyOptions, ApplyOutcome, apply};
use super::explicit::{ExplicitSpec, parse_eviction_list, parse_resource_list};
use super::health::{DEFAULT_HEALTH_URL, HealthUrl};
use super::pasted::{self, MAX_PASTED_BYTES, PastedFormat};
use super::plan::{PlanRequest, build};
use super::policy::Policy;
use super::quantity::Quantity;
use super::service::{ServiceManager, Systemctl};
use super::version::KubeVersion;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum PolicyName {
    Eks,
    Gke,
    Aks,
    Ack,
    Tke,
    Cce,
    Explicit,
}

/// What to reserve and for which node.
#[derive(Debug, Clone, clap::Args)]
pub struct PlanArgs {
    /// Reservation policy.
    #[arg(long, value_enum, default_value = "eks")]
    pub policy: PolicyName,
    /// Max pods (default: the config's maxPods, else 110).
    #[arg(long)]
    pub max_pods: Option<u32>,
    /// The node's Kubernetes version, e.g. 1.28: picks ack/aks/cce's rule (default: ask the
    /// running kubelet; unknown: the provider's current rule, with a warning).
    #[arg(long)]
    pub kubernetes_version: Option<String>,
    /// Kubelet config file (default: the kubelet's --config, else EKS then kubeadm paths).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Print the plan as JSON.
    #[arg(long)]
    pub json: bool,
    /// vCPUs (default: this machine).
    #[arg(long)]
    pub cpus: Option<u32>,
    /// Memory as a quantity, e.g. 16Gi (default: this machine).
    #[arg(long)]
    pub memory: Option<String>,
    /// Ephemeral storage capacity as a quantity (default: the kubelet root filesystem).
    #[arg(long)]
    pub ephemeral_storage: Option<String>,
    /// explicit: e.g. cpu=200m,memory=200Mi,ephemeral-storage=1Gi
    #[arg(long)]
    pub kube_reserved: Option<String>,
    /// explicit: e.g. cpu=200m,memory=200Mi
    #[arg(long)]
    pub system_reserved: Option<String>,
    /// explicit: e.g. memory.available<100Mi,nodefs.available<10%
    #[arg(long)]
    pub eviction_hard: Option<String>,
    /// explicit: a whole kubelet argument string (bootstrap.sh --kubelet-extra-args).
    #[arg(long)]
    pub kubelet_args: Option<String>,
    /// explicit: JSON with Karpenter (kubeReserved) or Bottlerocket (kube-reserved) names.
    #[arg(long)]
    pub explicit_json: Option<String>,
    /// explicit: settings as pasted, from a file or `-` (stdin): Bottlerocket TOML, eksctl
    /// kubeletExtraConfig / Karpenter kubeletConfiguration YAML, JSON or kubelet arguments.
    #[arg(long, value_name = "FILE|-")]
    pub explicit: Option<PathBuf>,
    /// Format of --explicit (default: the file's extension, else its content).
    #[arg(long, value_enum, requires = "explicit")]
    pub explicit_format: Option<PastedFormat>,
}

#[derive(Debug, Clone, clap::Subcommand)]
pub enum KubeletCmd {
    /// Show the change (before -> after, allocatable before -> after); changes nothing.
    Plan {
        #[command(flatten)]
        args: PlanArgs,
    },
    /// Apply: back up, write, restart kubelet, wait for healthz, roll back if unhealthy.
    Apply {
        #[command(flatten)]
        args: PlanArgs,
        /// systemd unit to restart.
        #[arg(long, default_value = "kubelet")]
        unit: String,
        /// Kubelet health endpoint.
        #[arg(long, default_value = DEFAULT_HEALTH_URL)]
        health_url: String,
        /// Seconds to wait for health after a restart (1..=600).
        #[arg(long, default_value_t = 60)]
        health_timeout_secs: u64,
        /// Milliseconds between health probes (10..=10000).
        #[arg(long, default_value_t = 500)]
        health_poll_ms: u64,
        /// Directory for backups (default: next to the config).
        #[arg(long)]
        backup_dir: Option<PathBuf>,
    },
}

fn quantity_bytes(field: &str, s: &str) -> Result<u64, KubeletError> {
    let q = Quantity::parse(s).map_err(|e| KubeletError::InvalidPlan(format!("{field}: {e}")))?;
    u64::try_from(q.units_ceil()).map_err(|_| KubeletError::InvalidPlan(format!("{field}: {s} is negative")))
}

/// Read `--explicit FILE|-`, bounded at `MAX_PASTED_BYTES`.
fn read_pasted(path: &Path) -> Result<String, KubeletError> {
    let io = |e: std::io::Error| KubeletError::Io { path: path.to_path_buf(), source: e };
    let mut buf = Vec::new();
    let limit = MAX_PASTED_BYTES as u64 + 1;
    if path == Path::new("-") {
        std::io::stdin().lock().take(limit).read_to_end(&mut buf).map_err(io)?;
    } else {
        std::fs::File::open(path).map_err(io)?.take(limit).read_to_end(&mut buf).map_err(io)?;
    }
    if buf.len() > MAX_PASTED_BYTES {
        return Err(KubeletError::InvalidPlan(format!("--explicit {}: more than {MAX_PASTED_BYTES} bytes", path.display())));
    }
    String::from_utf8(buf).map_err(|_| KubeletError::InvalidPlan(format!("--explicit {}: not UTF-8 text", path.display())))
}

/// Turn the flags into a plan request, refusing inconsistent ones.
pub fn plan_request(a: &PlanArgs) -> Result<PlanRequest, KubeletError> {
    let explicit_given = a.kube_reserved.is_some()
        || a.system_reserved.is_some()
        || a.eviction_hard.is_some()
        || a.kubelet_args.is_some()
        || a.explicit_json.is_some()
        || a.explicit.is_some();
    let policy = match a.policy {
        PolicyName::Eks => Policy::Eks,
        PolicyName::Gke => Policy::Gke,
        PolicyName::Aks => Policy::Aks,
        PolicyName::Ack => Policy::Ack,
        PolicyName::Tke => Policy::Tke,
        PolicyName::Cce => Policy::Cce,
        PolicyName::Explicit => {
            let sources = [a.kubelet_args.is_some(), a.explicit_json.is_some(), a.explicit.is_some()];
            if sources.iter().filter(|x| **x).count() > 1 {
                return Err(KubeletError::InvalidPlan("give one of --kubelet-args, --explicit-json and --explicit".into()));
            }
            let mut spec = if let Some(args) = &a.kubelet_args {
                ExplicitSpec::from_kubelet_args(args)?
            } else if let Some(js) = &a.explicit_json {
                // `--explicit-json` keeps its name but reads every pasted form, so a TOML
                // block given to it works too (it is what operators tried first).
                pasted::parse(js, None).map_err(|e| match e {
                    KubeletError::InvalidPlan(m) => KubeletError::InvalidPlan(format!("--explicit-json: {m}")),
                    e => e,
                })?
            } else if let Some(path) = &a.explicit {
                let text = read_pasted(path)?;
                let format = a.explicit_format.or_else(|| PastedFormat::from_extension(path));
                pasted::parse(&text, format).map_err(|e| match e {
                    KubeletError::InvalidPlan(m) => KubeletError::InvalidPlan(format!("--explicit {}: {m}", path.display())),
                    e => e,
                })?
            } else {
                ExplicitSpec::default()
            };
            if let Some(s) = &a.kube_reserved {
                spec.kube_reserved = Some(parse_resource_list("kube-reserved", s)?);
            }
            if let Some(s) = &a.system_reserved {
                spec.system_reserved = Some(parse_resource_list("system-reserved", s)?);
            }
            if let Some(s) = &a.eviction_hard {
                spec.eviction_hard = Some(parse_eviction_list(s)?);
            }
            if spec.is_empty() {
                return Err(KubeletError::InvalidPlan(
                    "policy explicit needs --kube-reserved, --system-reserved, --eviction-hard, --kubelet-args, --explicit-json or --explicit".into(),
                ));
            }
            Policy::Explicit(spec)
        }
    };
    if explicit_given && a.policy != PolicyName::Explicit {
        return Err(KubeletError::InvalidPlan(format!("explicit values given with --policy {}; use --policy explicit", policy.name())));
    }
    Ok(PlanRequest {
        policy,
        config_path: a.config.clone(),
        cpus: a.cpus,
        memory_bytes: a.memory.as_deref().map(|m| quantity_bytes("memory", m)).transpose()?,
        max_pods: a.max_pods,
        kubernetes_version: a.kubernetes_version.as_deref().map(KubeVersion::parse).transpose()?,
        ephemeral_storage_bytes: a.ephemeral_storage.as_deref().map(|m| quantity_bytes("ephemeral-storage", m)).transpose()?,
        allow_offline: false,
    })
}

/// Run a subcommand with the real systemctl, printing to stdout. Returns the exit code.
pub async fn run_cmd(cmd: KubeletCmd) -> Result<i32, KubeletError> {
    let mut out = std::io::stdout();
    run_cmd_with(cmd, &Systemctl, &mut out).await
}

/// As `run_cmd`, with the service manager and output given (tests use stand-ins).
pub async fn run_cmd_with<S: ServiceManager>(cmd: KubeletCmd, svc: &S, out: &mut (dyn Write + Send)) -> Result<i32, KubeletError> {
    let (args, apply_opts) = match cmd {
        KubeletCmd::Plan { args } => (args, None),
        KubeletCmd::Apply { args, unit, health_url, health_timeout_secs, health_poll_ms, backup_dir } => {
            if !(10..=10_000).contains(&health_poll_ms) {
                return Err(KubeletError::InvalidPlan(format!("--health-poll-ms must be 10..=10000, got {health_poll_ms}")));
            }
            let opts = ApplyOptions {
                unit,
                health_url: HealthUrl::parse(&health_url)?,
                health_timeout: Duration::from_secs(health_timeout_secs),
                poll_interval: Duration::from_millis(health_poll_ms),
                backup_dir,
            };
            (args, Some(opts))
        }
    };
    let mut req = plan_request(&args)?;
    // `plan` may run offline (no kubelet here): plan against an empty config then.
    req.allow_offline = apply_opts.is_none();
    let plan = build(&req)?;
    let print = |out: &mut (dyn Write + Send), extra: Option<(&str, Option<&std::path::Path>)>| {
        if args.json {
            let mut v = plan.to_json();
            if let Some((result, backup)) = extra {
                v["result"] = result.into();
                v["backup"] = backup.map(|b| b.display().to_string()).into();
            }
            let _ = writeln!(out, "{v:#}");
        } else {
            let _ = write!(out, "{}", plan.render_diff());
            if let Some((result, backup)) = extra {
                let _ = writeln!(out, "result: {result}{}", backup.map(|b| format!(" (backup {})", b.display())).unwrap_or_default());
            }
        }
    };
    let Some(opts) = apply_opts else {
        print(out, None);
        return Ok(0);
    };
    match apply(&plan, &opts, svc).await? {
        ApplyOutcome::Unchanged => print(out, Some(("unchanged", None))),
        ApplyOutcome::Applied { backup } => print(out, Some(("applied", Some(&backup)))),
    }
    Ok(0)
}
