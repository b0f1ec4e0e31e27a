//! `deckhand run`: submit a script, follow per-instance progress, print
//! each instance's status, exit code and output; non-zero exit if any
//! instance did not finish with exit code 0.

use crate::lifecycle::CommandType;
use std::collections::BTreeMap;
use std::io::Write;
use std::time::{Duration, Instant};

use base64::Engine;
use serde_json::Value;

use super::show::{decode_output, items, print_result_with, s, succeeded};
use super::{Cli, CliError};

/// Poll interval while following; fast enough to feel live, slow enough
/// that a thousand terminals do not load the hub.
const POLL: Duration = Duration::from_millis(250);
/// Longest a fleet rollout is followed (a week).
pub(super) const FLEET_GIVE_UP: Duration = Duration::from_secs(7 * 86_400);

#[derive(Debug, clap::Args)]
pub struct RunArgs {
    /// Target instance id (repeatable, up to 100).
    #[arg(long = "instance", short = 'i', required_unless_present_any = ["tags", "all", "os", "arch", "hostname"])]
    pub instances: Vec<String>,
    #[command(flatten)]
    pub fleet: FleetArgs,
    /// Resolve targets and validate everything; run nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Timeout per run, e.g. 60s, 5m, 1h.
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    pub timeout: Duration,
    /// RunShellScript, RunPowerShellScript or RunBatScript.
    #[arg(long = "type", default_value_t = CommandType::RunShellScript, value_parser = CommandType::parse)]
    pub command_type: CommandType,
    #[arg(long)]
    pub username: Option<String>,
    #[arg(long)]
    pub working_dir: Option<String>,
    /// Custom parameter `name=value` (repeatable); enables `{{name}}`.
    #[arg(long = "param")]
    pub params: Vec<String>,
    /// Submit and print the invoke id without waiting.
    #[arg(long)]
    pub no_wait: bool,
    /// The script (use `--` before it).
    #[arg(required = true, last = true)]
    pub script: Vec<String>,
}

/// Which instances of a fleet, and how fast (issue #16): shared by
/// `deckhand run` and `deckhand kubelet apply`.
#[derive(Debug, clap::Args)]
pub struct FleetArgs {
    /// Target every instance carrying this tag: KEY=VALUE, or KEY for any
    /// value (repeatable; an instance must carry all of them).
    #[arg(long = "tag", value_name = "KEY[=VALUE]")]
    pub tags: Vec<String>,
    /// Target every online instance (deckhand extension).
    #[arg(long)]
    pub all: bool,
    /// Target instances of this OS type, e.g. linux, windows (deckhand extension).
    #[arg(long)]
    pub os: Option<String>,
    /// Target instances of this architecture, e.g. x86_64 (deckhand extension).
    #[arg(long)]
    pub arch: Option<String>,
    /// Target instances whose hostname matches this glob (`*`, `?`).
    #[arg(long, value_name = "GLOB")]
    pub hostname: Option<String>,
    /// Targets running at once: a count or a percentage (`10%`).
    #[arg(long, value_name = "N|P%")]
    pub max_concurrency: Option<String>,
    /// Targets allowed to fail before the rest are cancelled: a count or a percentage.
    #[arg(long, value_name = "N|P%")]
    pub max_errors: Option<String>,
    /// Pause after a target settles before the next starts, e.g. 5s.
    #[arg(long, value_parser = parse_duration)]
    pub batch_wait: Option<Duration>,
}

/// `--tag KEY[=VALUE]` flags as Cloud Assistant's `ResourceTag.N.Key` /
/// `ResourceTag.N.Value` (a key alone matches any value).
pub(super) fn tag_params(tags: &[String], p: &mut Vec<(String, String)>) {
    for (i, t) in tags.iter().enumerate() {
        let (k, v) = t.split_once('=').unwrap_or((t.as_str(), ""));
        p.push((format!("ResourceTag.{}.Key", i + 1), k.to_string()));
        if !v.is_empty() {
            p.push((format!("ResourceTag.{}.Value", i + 1), v.to_string()));
        }
    }
}

/// Adds the selector and rollout window parameters (and `RepeatMode=DryRun`
/// when `dry_run`); true when the run targets a fleet (a selector or a
/// window), which the live fleet view follows.
pub(super) fn fleet_params(args: &FleetArgs, dry_run: bool, p: &mut Vec<(String, String)>) -> bool {
    tag_params(&args.tags, p);
    let mut extend = |k: &str, v: Option<String>| {
        if let Some(v) = v {
            p.push((k.to_string(), v));
        }
    };
    extend("TargetAll", args.all.then(|| "true".to_string()));
    extend("TargetOsType", args.os.clone());
    extend("TargetArch", args.arch.clone());
    extend("TargetHostname", args.hostname.clone());
    extend("MaxConcurrency", args.max_concurrency.clone());
    extend("MaxErrors", args.max_errors.clone());
    extend("BatchWait", args.batch_wait.map(|d| d.as_secs().to_string()));
    extend("RepeatMode", dry_run.then(|| "DryRun".to_string()));
    let selector = !args.tags.is_empty() || args.all || args.os.is_some() || args.arch.is_some() || args.hostname.is_some();
    selector || args.max_concurrency.is_some() || args.max_errors.is_some() || args.batch_wait.is_some()
}

pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u64 = num.parse().map_err(|_| format!("{s:?}: expected a number with an optional unit s/m/h"))?;
    let secs = match unit {
        "" | "s" => n,
        "m" => n * 60,
        "h" => n * 3600,
        _ => return Err(format!("{s:?}: unit must be s, m or h")),
    };
    Ok(Duration::from_secs(secs))
}

pub fn run(cli: &Cli, args: &RunArgs) -> Result<i32, CliError> {
    let client = cli.client()?;
    let script = args.script.join(" ");
    let mut p: Vec<(String, String)> = vec![
        ("Type".into(), args.command_type.as_str().to_string()),
        ("CommandContent".into(), base64::engine::general_purpose::STANDARD.encode(&script)),
        ("ContentEncoding".into(), "Base64".into()),
        ("Timeout".into(), args.timeout.as_secs().to_string()),
    ];
    for (i, id) in args.instances.iter().enumerate() {
        p.push((format!("InstanceId.{}", i + 1), id.clone()));
    }
    let fleet = fleet_params(&args.fleet, args.dry_run, &mut p);
    if let Some(u) = &args.username {
        p.push(("Username".into(), u.clone()));
    }
    if let Some(w) = &args.working_dir {
        p.push(("WorkingDir".into(), w.clone()));
    }
    if !args.params.is_empty() {
        let mut m = serde_json::Map::new();
        for kv in &args.params {
            let (k, v) = kv.split_once('=').ok_or_else(|| CliError::Usage(format!("--param {kv:?}: expected name=value")))?;
            m.insert(k.to_string(), Value::String(v.to_string()));
        }
        p.push(("EnableParameter".into(), "true".into()));
        p.push(("Parameters".into(), Value::Object(m).to_string()));
    }
    let refs: Vec<(&str, String)> = p.iter().map(|(k, v)| (k.as_str(), v.clone())).collect();
    let v = client.call("RunCommand", &refs)?;
    if args.dry_run {
        let d = v.get("DryRunResult").cloned().unwrap_or(Value::Null);
        if cli.json {
            println!("{}", serde_json::to_string_pretty(&d).unwrap_or_default());
        } else {
            println!(
                "dry run: {} target(s), {} offline; window {} at once, MaxErrors {}; nothing was run",
                s(&d, "TargetCount"),
                s(&d, "UnreachableCount"),
                s(&d, "MaxConcurrency"),
                if s(&d, "MaxErrors").is_empty() { "none".to_string() } else { s(&d, "MaxErrors") }
            );
        }
        return Ok(0);
    }
    let invoke_id = s(&v, "InvokeId");
    if args.no_wait {
        println!("{invoke_id}");
        return Ok(0);
    }
    // Bound the wait by the run timeout plus generous delivery slack.
    let give_up = Instant::now() + args.timeout + Duration::from_secs(600);
    if fleet {
        if !cli.json {
            eprintln!("invocation {invoke_id} on the selected fleet");
        }
        // A rollout takes many run timeouts; every target settles by itself
        // (run timeout, delivery timeout), so this bound only ends the wait
        // on a hub that stops answering with progress.
        let followed = super::fleet::follow(&client, cli.json, &invoke_id, Instant::now() + FLEET_GIVE_UP)?;
        if cli.json {
            println!("{}", serde_json::to_string_pretty(&followed.summary).unwrap_or_default());
        }
        return Ok(followed.code);
    }
    if !cli.json {
        eprintln!("invocation {invoke_id} on {} instance(s)", args.instances.len());
    }
    let single = args.instances.len() == 1 && !cli.json;
    let mut last: BTreeMap<String, String> = BTreeMap::new();
    let mut shown_live = 0usize;
    // Statuses only (no live output to stream): the hub holds each call
    // until a status changes (`WaitSeconds`, a deckhand extension), so the
    // end shows at once and an idle run costs the hub one call in 20 s.
    let mut params = vec![("InvokeId", invoke_id.clone()), ("PageSize", "50".into())];
    if !single {
        params.push(("WaitSeconds", super::client::FOLLOW_WAIT_SECONDS.to_string()));
    }
    let results = loop {
        let asked = Instant::now();
        let r = client.call("DescribeInvocationResults", &params)?;
        let inv = r.get("Invocation").cloned().unwrap_or(Value::Null);
        let list: Vec<Value> = items(&inv, "InvocationResults", "InvocationResult").into_iter().cloned().collect();
        for res in &list {
            let id = s(res, "InstanceId");
            let st = s(res, "InvocationStatus");
            if last.get(&id) != Some(&st) && !cli.json {
                eprintln!("[{id}] {st}");
                last.insert(id.clone(), st.clone());
            }
            if single && super::show::instance_status(res) == Some(crate::lifecycle::InvocationStatus::Running) {
                let out = decode_output(res);
                if out.len() > shown_live {
                    let mut so = std::io::stdout();
                    let _ = so.write_all(&out[shown_live..]);
                    let _ = so.flush();
                    shown_live = out.len();
                }
            }
        }
        let done = !list.is_empty() && list.iter().all(|r| super::show::instance_status(r).is_some_and(|s| s.is_final()));
        if done {
            break list;
        }
        if Instant::now() > give_up {
            return Err(CliError::Usage(format!("gave up waiting for {invoke_id}; see `deckhand results {invoke_id}`")));
        }
        // At most one call per POLL either way: a hub that does not know
        // `WaitSeconds` answers at once, and is then polled as before.
        std::thread::sleep(POLL.saturating_sub(asked.elapsed()));
    };
    if cli.json {
        println!("{}", super::client::pretty_json("the results", &serde_json::json!({"InvokeId": invoke_id, "Results": results}))?);
    } else {
        if shown_live > 0 {
            println!();
        }
        // A live-streamed single run already showed its output (unless the
        // final result holds more than the stream delivered).
        for r in &results {
            let streamed_all = shown_live > 0 && decode_output(r).len() <= shown_live;
            print_result_with(r, !streamed_all);
        }
    }
    Ok(if results.iter().all(succeeded) { 0 } else { 1 })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("90").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_duration("5m").unwrap(), Duration::from_secs(300));
        assert!(parse_duration("5d").unwrap_err().contains("unit"));
        assert!(parse_duration("x").is_err());
    }
}
