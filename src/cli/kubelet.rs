//! `deckhand kubelet apply`: a kubelet reservation policy rolled over a
//! node pool (issue #23, docs/kubelet.md "Rollout over a node pool").
//!
//! Owns only the operator's side: turning flags into one
//! `ApplyKubeletReserved` request (checked with the agents' own parser,
//! `kubelet::invocation::validate_request`), sending it as one fleet
//! invocation with a rollout window (the window and its halt live in the
//! hub's store, issue #16), following it with the fleet view, and the
//! per-node summary table read back from each node's output. Each node
//! plans, applies, health-checks and rolls itself back on its own.

use std::time::Instant;

use base64::Engine;
use clap::ValueEnum;
use serde_json::{Map, Value, json};

use super::run::{FLEET_GIVE_UP, FleetArgs, fleet_params, parse_duration};
use super::show::{items, s};
use super::{Cli, CliError, Client};
use crate::kubelet::cli::PolicyName;

/// Pages of results read for the summary (50 each): bounded like the
/// fleet itself (100,000 targets).
const MAX_SUMMARY_PAGES: usize = 2000;

#[derive(Debug, clap::Args)]
pub struct ApplyArgs {
    /// Target instance id (repeatable, up to 100).
    #[arg(long = "instance", short = 'i', required_unless_present_any = ["tags", "all", "os", "arch", "hostname"])]
    pub instances: Vec<String>,
    #[command(flatten)]
    pub fleet: FleetArgs,
    /// Reservation policy.
    #[arg(long, value_enum, default_value = "eks")]
    pub policy: PolicyName,
    /// Max pods (default: each node's config maxPods, else 110).
    #[arg(long)]
    pub max_pods: Option<u32>,
    /// The nodes' Kubernetes version, e.g. 1.28 (default: each node asks its kubelet).
    #[arg(long)]
    pub kubernetes_version: Option<String>,
    /// Kubelet config file on the nodes (default: each node's running kubelet's --config).
    /// `{{ACS::InstanceId}}` and the other built-in parameters are replaced per node.
    /// (`--config` is the client's own config file.)
    #[arg(long)]
    pub kubelet_config: Option<String>,
    /// vCPUs (default: each node's own).
    #[arg(long)]
    pub cpus: Option<u32>,
    /// Memory as a quantity, e.g. 16Gi (default: each node's own).
    #[arg(long)]
    pub memory: Option<String>,
    /// Ephemeral storage as a quantity (default: each node's kubelet root filesystem).
    #[arg(long)]
    pub ephemeral_storage: Option<String>,
    /// explicit: settings as pasted, from a local file or `-` (stdin): Bottlerocket TOML,
    /// eksctl / Karpenter YAML, JSON or kubelet arguments.
    #[arg(long, value_name = "FILE|-")]
    pub explicit: Option<std::path::PathBuf>,
    /// Format of --explicit: toml, yaml, json or kubelet-args (default: by content).
    #[arg(long, requires = "explicit")]
    pub explicit_format: Option<String>,
    /// The kubelet's systemd unit on the nodes.
    #[arg(long)]
    pub unit: Option<String>,
    /// The kubelet health endpoint on the nodes (built-in parameters are replaced per node).
    #[arg(long)]
    pub health_url: Option<String>,
    /// Seconds each node waits for its kubelet to be healthy before rolling back (1–600).
    #[arg(long)]
    pub health_timeout_secs: Option<u64>,
    /// Milliseconds between health probes (10–10000).
    #[arg(long)]
    pub health_poll_ms: Option<u64>,
    /// Each node plans and reports its diff; nothing is written or restarted.
    #[arg(long)]
    pub plan_only: bool,
    /// Resolve the targets and validate everything; nothing is sent.
    #[arg(long)]
    pub dry_run: bool,
    /// Timeout per node (plan, write, restart, health gate, rollback), e.g. 5m.
    #[arg(long, default_value = "5m", value_parser = parse_duration)]
    pub timeout: std::time::Duration,
}

/// The `ApplyKubeletReserved` request the flags describe (docs/kubelet.md).
fn request(args: &ApplyArgs) -> Result<String, CliError> {
    let mut m = Map::new();
    let policy = args.policy.to_possible_value().map(|v| v.get_name().to_string()).unwrap_or_default();
    m.insert("policy".into(), Value::String(policy));
    let mut put = |k: &str, v: Option<Value>| {
        if let Some(v) = v {
            m.insert(k.into(), v);
        }
    };
    put("maxPods", args.max_pods.map(Value::from));
    put("kubernetesVersion", args.kubernetes_version.clone().map(Value::from));
    put("configPath", args.kubelet_config.clone().map(Value::from));
    put("cpus", args.cpus.map(Value::from));
    put("memory", args.memory.clone().map(Value::from));
    put("ephemeralStorage", args.ephemeral_storage.clone().map(Value::from));
    put("unit", args.unit.clone().map(Value::from));
    put("healthUrl", args.health_url.clone().map(Value::from));
    put("healthTimeoutSecs", args.health_timeout_secs.map(Value::from));
    put("healthPollMs", args.health_poll_ms.map(Value::from));
    put("dryRun", args.plan_only.then_some(Value::Bool(true)));
    put("explicitFormat", args.explicit_format.clone().map(Value::from));
    if let Some(path) = &args.explicit {
        let text = read_explicit(path)?;
        m.insert("explicit".into(), Value::String(text));
    }
    let content = Value::Object(m).to_string();
    crate::kubelet::invocation::validate_request(&content).map_err(|e| CliError::Usage(format!("{e:#}")))?;
    Ok(content)
}

fn read_explicit(path: &std::path::Path) -> Result<String, CliError> {
    use std::io::Read;
    let limit = crate::kubelet::pasted::MAX_PASTED_BYTES;
    let mut text = String::new();
    let read = if path.as_os_str() == "-" {
        std::io::stdin().take(limit as u64 + 1).read_to_string(&mut text)
    } else {
        std::fs::File::open(path).and_then(|f| f.take(limit as u64 + 1).read_to_string(&mut text))
    };
    read.map_err(|e| CliError::Usage(format!("--explicit {}: {e}", path.display())))?;
    if text.len() > limit {
        return Err(CliError::Usage(format!("--explicit {}: longer than {limit} bytes", path.display())));
    }
    Ok(text)
}

pub fn apply(cli: &Cli, args: &ApplyArgs) -> Result<i32, CliError> {
    let content = request(args)?;
    let client = cli.client()?;
    let mut p: Vec<(String, String)> = vec![
        ("Type".into(), crate::kubelet::invocation::INVOCATION_TYPE.into()),
        ("CommandContent".into(), base64::engine::general_purpose::STANDARD.encode(&content)),
        ("ContentEncoding".into(), "Base64".into()),
        ("Timeout".into(), args.timeout.as_secs().to_string()),
    ];
    // Built-in parameters (`{{ACS::InstanceId}}`) are replaced per node.
    if content.contains("{{") {
        p.push(("EnableParameter".into(), "true".into()));
    }
    for (i, id) in args.instances.iter().enumerate() {
        p.push((format!("InstanceId.{}", i + 1), id.clone()));
    }
    fleet_params(&args.fleet, args.dry_run, &mut p);
    let refs: Vec<(&str, String)> = p.iter().map(|(k, v)| (k.as_str(), v.clone())).collect();
    let v = client.call("RunCommand", &refs)?;
    if args.dry_run {
        let d = v.get("DryRunResult").cloned().unwrap_or(Value::Null);
        if cli.json {
            println!("{}", serde_json::to_string_pretty(&d).unwrap_or_default());
        } else {
            println!(
                "dry run: {} node(s), {} offline; {} at once; nothing was sent",
                s(&d, "TargetCount"),
                s(&d, "UnreachableCount"),
                s(&d, "MaxConcurrency")
            );
        }
        return Ok(0);
    }
    let invoke_id = s(&v, "InvokeId");
    if !cli.json {
        eprintln!(
            "kubelet rollout {invoke_id}: policy {}",
            args.policy.to_possible_value().map(|v| v.get_name().to_string()).unwrap_or_default()
        );
    }
    let followed = super::fleet::follow(&client, cli.json, &invoke_id, Instant::now() + FLEET_GIVE_UP)?;
    let nodes = node_rows(&client, &invoke_id)?;
    if cli.json {
        let mut summary = followed.summary;
        if let Value::Object(m) = &mut summary {
            m.insert("Nodes".into(), Value::Array(nodes.iter().map(NodeRow::to_json).collect()));
        }
        println!("{}", serde_json::to_string_pretty(&summary).unwrap_or_default());
    } else {
        print!("{}", table(&nodes));
    }
    Ok(followed.code)
}

/// One node's line of the summary.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeRow {
    pub instance_id: String,
    /// (resource, before, after) from the node's plan diff.
    pub allocatable: Vec<(String, String, String)>,
    pub outcome: NodeOutcome,
}

/// What happened on one node, from its result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NodeOutcome {
    Applied,
    Unchanged,
    Planned,
    /// The apply failed and the node restored its previous config (the
    /// kubelet module's code: `KubeletUnhealthy`, `KubeletRestartFailed`).
    RolledBack(String),
    /// Refused or failed before writing anything (its error code).
    Failed(String),
    /// Never started: the rollout stopped first (`MaxErrorsExceeded`),
    /// a stop, or the node was offline.
    NotStarted(String),
}

impl NodeOutcome {
    fn applied(&self) -> bool {
        matches!(self, NodeOutcome::Applied)
    }

    fn text(&self) -> String {
        match self {
            NodeOutcome::Applied => "applied".into(),
            NodeOutcome::Unchanged => "unchanged".into(),
            NodeOutcome::Planned => "planned (plan only)".into(),
            NodeOutcome::RolledBack(code) => format!("rolled back ({code})"),
            NodeOutcome::Failed(code) => format!("failed ({code})"),
            NodeOutcome::NotStarted(why) => format!("not started ({why})"),
        }
    }
}

impl NodeRow {
    /// From one DescribeInvocationResults item (output in plain text).
    pub fn from_result(r: &Value) -> NodeRow {
        let output = s(r, "Output");
        let code = s(r, "ErrorCode");
        let outcome = match s(r, "InvocationStatus").as_str() {
            "Success" if output.contains("result: unchanged") => NodeOutcome::Unchanged,
            "Success" if output.contains("result: dry run") => NodeOutcome::Planned,
            "Success" => NodeOutcome::Applied,
            "Error" if matches!(code.as_str(), "KubeletUnhealthy" | "KubeletRestartFailed") => NodeOutcome::RolledBack(code),
            "Cancelled" | "Aborted" if s(r, "StartTime").is_empty() => {
                NodeOutcome::NotStarted(if code.is_empty() { s(r, "InvocationStatus") } else { code })
            }
            other => NodeOutcome::Failed(if code.is_empty() { other.to_string() } else { code }),
        };
        NodeRow { instance_id: s(r, "InstanceId"), allocatable: allocatable(&output), outcome }
    }

    fn to_json(&self) -> Value {
        let alloc: Map<String, Value> = self.allocatable.iter().map(|(k, b, a)| (k.clone(), json!({ "Before": b, "After": a }))).collect();
        json!({ "InstanceId": self.instance_id, "Allocatable": alloc, "Result": self.outcome.text(), "Applied": self.outcome.applied() })
    }

    /// `cpu 4000m → 3910m, memory 15Gi → 14Gi`; a node that did not apply
    /// shows what it still has.
    fn allocatable_text(&self) -> String {
        if self.allocatable.is_empty() {
            return "-".into();
        }
        let parts: Vec<String> = self
            .allocatable
            .iter()
            .map(|(k, before, after)| if self.outcome.applied() { format!("{k} {before} → {after}") } else { format!("{k} {before}") })
            .collect();
        parts.join(", ")
    }
}

/// `(resource, before, after)` from the plan diff's `allocatable.<r>: A -> B` lines.
pub fn allocatable(output: &str) -> Vec<(String, String, String)> {
    output
        .lines()
        .filter_map(|l| {
            let rest = l.trim().strip_prefix("allocatable.")?;
            let (resource, change) = rest.split_once(':')?;
            let (before, after) = change.split_once("->")?;
            Some((resource.trim().to_string(), before.trim().to_string(), after.trim().to_string()))
        })
        .collect()
}

/// Every node's result (paged), in instance order.
fn node_rows(client: &Client, invoke_id: &str) -> Result<Vec<NodeRow>, CliError> {
    let mut out = Vec::new();
    let mut token = String::new();
    for _ in 0..MAX_SUMMARY_PAGES {
        let mut p = vec![("InvokeId", invoke_id.to_string()), ("ContentEncoding", "PlainText".into()), ("MaxResults", "50".into())];
        if !token.is_empty() {
            p.push(("NextToken", token.clone()));
        }
        let v = client.call("DescribeInvocationResults", &p)?;
        let inner = v.get("Invocation").cloned().unwrap_or(Value::Null);
        out.extend(items(&inner, "InvocationResults", "InvocationResult").into_iter().map(NodeRow::from_result));
        token = s(&inner, "NextToken");
        if token.is_empty() {
            break;
        }
    }
    out.sort_by(|a, b| a.instance_id.cmp(&b.instance_id));
    Ok(out)
}

/// The summary table and its closing line.
pub fn table(rows: &[NodeRow]) -> String {
    let width = rows.iter().map(|r| r.instance_id.chars().count()).max().unwrap_or(4).max(4);
    let header = "ALLOCATABLE (BEFORE → AFTER)";
    let texts: Vec<String> = rows.iter().map(NodeRow::allocatable_text).collect();
    let alloc = texts.iter().map(|t| t.chars().count()).max().unwrap_or(0).max(header.chars().count());
    let mut t = format!("{:<width$}  {:<alloc$}  RESULT\n", "NODE", header);
    for (r, text) in rows.iter().zip(&texts) {
        t.push_str(&format!("{:<width$}  {:<alloc$}  {}\n", r.instance_id, text, r.outcome.text()));
    }
    let count = |f: &dyn Fn(&NodeOutcome) -> bool| rows.iter().filter(|r| f(&r.outcome)).count();
    let applied = count(&|o| matches!(o, NodeOutcome::Applied));
    let unchanged = count(&|o| matches!(o, NodeOutcome::Unchanged | NodeOutcome::Planned));
    let rolled_back = count(&|o| matches!(o, NodeOutcome::RolledBack(_)));
    let failed = count(&|o| matches!(o, NodeOutcome::Failed(_)));
    let halted = count(&|o| matches!(o, NodeOutcome::NotStarted(c) if c == "MaxErrorsExceeded"));
    let not_started = count(&|o| matches!(o, NodeOutcome::NotStarted(_)));
    t.push_str(&format!(
        "{} nodes: {applied} applied, {unchanged} unchanged, {rolled_back} rolled back, {failed} failed, {not_started} not started (untouched)\n",
        rows.len()
    ));
    if halted > 0 {
        t.push_str(&format!("the rollout stopped at MaxErrors: {halted} nodes were never started\n"));
    }
    t
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_from_results_and_the_table() {
        let diff = "policy: eks\n~ kubeReserved.cpu: (unset) -> 90m\nallocatable.cpu: 4000m -> 3910m\nallocatable.memory: 15Gi -> 14Gi\n";
        let ok = json!({"InstanceId": "mi-a", "InvocationStatus": "Success", "Output": format!("{diff}result: applied (backup /x)\n")});
        let bad = json!({"InstanceId": "mi-b", "InvocationStatus": "Error", "ErrorCode": "KubeletUnhealthy", "StartTime": "t",
            "Output": format!("{diff}error: kubelet unhealthy\n")});
        let held = json!({"InstanceId": "mi-c", "InvocationStatus": "Cancelled", "ErrorCode": "MaxErrorsExceeded", "StartTime": ""});
        let rows: Vec<NodeRow> = [ok, bad, held].iter().map(NodeRow::from_result).collect();
        assert_eq!(rows[0].outcome, NodeOutcome::Applied);
        assert_eq!(rows[0].allocatable[0], ("cpu".into(), "4000m".into(), "3910m".into()));
        assert_eq!(rows[1].outcome, NodeOutcome::RolledBack("KubeletUnhealthy".into()));
        assert_eq!(rows[2].outcome, NodeOutcome::NotStarted("MaxErrorsExceeded".into()));
        let t = table(&rows);
        assert!(t.contains("cpu 4000m → 3910m, memory 15Gi → 14Gi"), "{t}");
        assert!(t.contains("cpu 4000m, memory 15Gi") && t.contains("rolled back (KubeletUnhealthy)"), "{t}");
        assert!(t.contains("3 nodes: 1 applied, 0 unchanged, 1 rolled back, 0 failed, 1 not started (untouched)"), "{t}");
        assert!(t.contains("the rollout stopped at MaxErrors: 1 nodes were never started"), "{t}");
        assert!(allocatable("allocatable.cpu 4000m").is_empty());
    }
}
