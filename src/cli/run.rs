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

#[derive(Debug, clap::Args)]
pub struct RunArgs {
    /// Target instance id (repeatable, up to 100).
    #[arg(long = "instance", short = 'i', required = true)]
    pub instances: Vec<String>,
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
    let invoke_id = s(&v, "InvokeId");
    if args.no_wait {
        println!("{invoke_id}");
        return Ok(0);
    }
    if !cli.json {
        eprintln!("invocation {invoke_id} on {} instance(s)", args.instances.len());
    }
    let single = args.instances.len() == 1 && !cli.json;
    let mut last: BTreeMap<String, String> = BTreeMap::new();
    let mut shown_live = 0usize;
    // Bound the wait by the run timeout plus generous delivery slack.
    let give_up = Instant::now() + args.timeout + Duration::from_secs(600);
    let results = loop {
        let r = client.call("DescribeInvocationResults", &[("InvokeId", invoke_id.clone()), ("PageSize", "50".into())])?;
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
        std::thread::sleep(POLL);
    };
    if cli.json {
        println!("{}", serde_json::to_string_pretty(&serde_json::json!({"InvokeId": invoke_id, "Results": results})).expect("json"));
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
