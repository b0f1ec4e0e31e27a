//! Read-only listings (instances, invocations, results) and small actions
//! (stop, activate), as tables or `--json`.

use base64::Engine;
use serde_json::{Value, json};

use super::{Cli, CliError};

pub(super) fn s(v: &Value, k: &str) -> String {
    match v.get(k) {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Null) | None => String::new(),
        Some(other) => other.to_string(),
    }
}

pub(super) fn items<'a>(v: &'a Value, outer: &str, inner: &str) -> Vec<&'a Value> {
    v.get(outer).and_then(|o| o.get(inner)).and_then(Value::as_array).map(|a| a.iter().collect()).unwrap_or_default()
}

pub(super) fn decode_output(v: &Value) -> Vec<u8> {
    base64::engine::general_purpose::STANDARD.decode(s(v, "Output")).unwrap_or_default()
}

/// Follows NextToken until the listing ends (bounded to 100 pages).
pub(super) fn all_pages(cli: &Cli, action: &str, params: &[(&str, String)], outer: &str, inner: &str) -> Result<Vec<Value>, CliError> {
    let client = cli.client()?;
    let mut out = Vec::new();
    let mut token = String::new();
    for _ in 0..100 {
        let mut p = params.to_vec();
        p.push(("MaxResults", "50".into()));
        if !token.is_empty() {
            p.push(("NextToken", token.clone()));
        }
        let v = client.call(action, &p)?;
        out.extend(items(&v, outer, inner).into_iter().cloned());
        token = s(&v, "NextToken");
        if token.is_empty() {
            break;
        }
    }
    Ok(out)
}

pub fn instances(cli: &Cli) -> Result<(), CliError> {
    let list = all_pages(cli, "DescribeManagedInstances", &[], "Instances", "Instance")?;
    if cli.json {
        println!("{}", super::client::pretty_json("the answer", &list)?);
        return Ok(());
    }
    println!("{:<26} {:<8} {:<24} {:<8} {:<6} LAST SEEN", "INSTANCE", "STATUS", "HOSTNAME", "OS", "CPUS");
    for i in list {
        println!(
            "{:<26} {:<8} {:<24} {:<8} {:<6} {}",
            s(&i, "InstanceId"),
            s(&i, "Status"),
            s(&i, "Hostname"),
            s(&i, "OsType"),
            s(&i, "CpuCount"),
            s(&i, "LastSeen")
        );
    }
    Ok(())
}

pub fn invocations(cli: &Cli, limit: u32) -> Result<(), CliError> {
    let v = cli.client()?.call("DescribeInvocations", &[("PageSize", limit.clamp(1, 50).to_string())])?;
    let list = items(&v, "Invocations", "Invocation");
    if cli.json {
        println!("{}", super::client::pretty_json("the answer", &list)?);
        return Ok(());
    }
    println!("{:<26} {:<14} {:<20} {:<9} COMMAND", "INVOKE ID", "STATUS", "CREATED", "TARGETS");
    for i in list {
        let targets = items(i, "InvokeInstances", "InvokeInstance").len();
        let content = base64::engine::general_purpose::STANDARD.decode(s(i, "CommandContent")).unwrap_or_default();
        let first_line: String = String::from_utf8_lossy(&content).lines().next().unwrap_or("").chars().take(40).collect();
        println!("{:<26} {:<14} {:<20} {:<9} {}", s(i, "InvokeId"), s(i, "InvocationStatus"), s(i, "CreationTime"), targets, first_line);
    }
    Ok(())
}

pub fn results(cli: &Cli, invoke_id: &str, history: bool) -> Result<i32, CliError> {
    let mut p = vec![("InvokeId", invoke_id.to_string())];
    if history {
        p.push(("IncludeHistory", "true".into()));
    }
    let client = cli.client()?;
    let v = client.call("DescribeInvocationResults", &[p.clone(), vec![("PageSize", "50".into())]].concat())?;
    let inv = v.get("Invocation").cloned().unwrap_or(json!({}));
    let list = items(&inv, "InvocationResults", "InvocationResult");
    if cli.json {
        println!("{}", super::client::pretty_json("the answer", &list)?);
    } else {
        for r in &list {
            print_result(r);
        }
    }
    Ok(if list.iter().all(|r| succeeded(r)) { 0 } else { 1 })
}

/// A result's per-instance `InvocationStatus`, through the lifecycle codec.
pub(crate) fn instance_status(r: &Value) -> Option<crate::lifecycle::InvocationStatus> {
    crate::lifecycle::InvocationStatus::parse(&s(r, "InvocationStatus")).ok()
}

pub(super) fn succeeded(r: &Value) -> bool {
    instance_status(r) == Some(crate::lifecycle::InvocationStatus::Success)
}

pub(super) fn print_result(r: &Value) {
    print_result_with(r, true)
}

/// `with_output: false` when the output was already streamed live.
pub(super) fn print_result_with(r: &Value, with_output: bool) {
    let exit = r.get("ExitCode").and_then(Value::as_i64).map(|c| c.to_string()).unwrap_or_else(|| "-".into());
    let mut head = format!("== {}  {}  exit={}", s(r, "InstanceId"), s(r, "InvocationStatus"), exit);
    if !s(r, "ErrorCode").is_empty() {
        head += &format!("  {}: {}", s(r, "ErrorCode"), s(r, "ErrorInfo"));
    }
    println!("{head}");
    let out = if with_output { decode_output(r) } else { Vec::new() };
    if !out.is_empty() {
        print!("{}", String::from_utf8_lossy(&out));
        if !out.ends_with(b"\n") {
            println!();
        }
    }
    let dropped = r.get("Dropped").and_then(Value::as_i64).unwrap_or(0);
    if dropped > 0 {
        println!("   [{dropped} bytes of output dropped from the middle]");
    }
}

pub fn stop(cli: &Cli, invoke_id: &str, instances: &[String]) -> Result<(), CliError> {
    let mut p = vec![("InvokeId", invoke_id.to_string())];
    let keys: Vec<String> = (1..=instances.len()).map(|i| format!("InstanceId.{i}")).collect();
    for (k, v) in keys.iter().zip(instances) {
        p.push((k.as_str(), v.clone()));
    }
    cli.client()?.call("StopInvocation", &p)?;
    if !cli.json {
        println!("stop requested for {invoke_id}");
    }
    Ok(())
}

pub fn activate(cli: &Cli, count: u32, ttl: u32, name: Option<&str>) -> Result<(), CliError> {
    let mut p = vec![("InstanceCount", count.to_string()), ("TimeToLiveInHours", ttl.to_string())];
    if let Some(n) = name {
        p.push(("InstanceName", n.to_string()));
    }
    let v = cli.client()?.call("CreateActivation", &p)?;
    if cli.json {
        println!("{}", super::client::pretty_json("the answer", &v)?);
    } else {
        println!("ActivationId:   {}\nActivationCode: {}", s(&v, "ActivationId"), s(&v, "ActivationCode"));
        println!(
            "register a machine with:\n  deckhand-agent run --hub <HUB URL> --activation-id {} --activation-code {}",
            s(&v, "ActivationId"),
            s(&v, "ActivationCode")
        );
    }
    Ok(())
}
