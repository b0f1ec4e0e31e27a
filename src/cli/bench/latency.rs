//! Latency and footprint benchmarks against real hub and agent processes.
//!
//! latency: RunCommand(`true`) → result visible in DescribeInvocationResults,
//! sequentially, p50/p99; compared as a ratio with a bare `sh -c true`
//! fork/exec measured the same way on the same machine. (The footprint
//! benchmark is `footprint.rs`.)

use std::process::Command;
use std::time::{Duration, Instant};

use super::procs::{self, BenchHub, Proc, percentile};
use crate::cli::{CliError, Client};

fn err(e: impl std::fmt::Display) -> CliError {
    CliError::Usage(format!("bench: {e}"))
}

/// Starts a real agent registered with `hub`; returns it and its instance id.
pub(super) fn start_agent(hub: &BenchHub, dir: &std::path::Path, client: &Client) -> Result<(Proc, String), CliError> {
    procs::start_agents(hub, dir, client, 1, Duration::from_secs(30))?.pop().ok_or_else(|| err("no agent started"))
}

/// One run's latency and how many `DescribeInvocationResults` polls it took.
pub(super) struct Measured {
    pub took: Duration,
    polls: u32,
    invoke_id: String,
}

pub(super) fn run_and_wait(client: &Client, instance: &str, script: &str, timeout: Duration) -> Result<Measured, CliError> {
    let t0 = Instant::now();
    let v = client.call(
        "RunCommand",
        &[
            ("Type", "RunShellScript".into()),
            ("CommandContent", script.into()),
            ("InstanceId.1", instance.into()),
            ("Timeout", "600".into()),
        ],
    )?;
    let id = v["InvokeId"].as_str().unwrap_or("").to_string();
    let mut polls = 0;
    loop {
        let r = client.call("DescribeInvocationResults", &[("InvokeId", id.clone())])?;
        polls += 1;
        let st = r["Invocation"]["InvocationResults"]["InvocationResult"][0]["InvocationStatus"].as_str().unwrap_or("").to_string();
        if crate::lifecycle::InvocationStatus::parse(&st).is_ok_and(|s| s.is_final()) {
            return Ok(Measured { took: t0.elapsed(), polls, invoke_id: id });
        }
        if t0.elapsed() > timeout {
            return Err(err(format!("{id} not final after {timeout:?}")));
        }
        std::thread::sleep(Duration::from_micros(500));
    }
}

/// The hub's CPU for one `DescribeInvocationResults` by id (a settled
/// invocation of one target), and the client's wall time per call: the
/// price of each poll the latency figure includes.
fn describe_cost(client: &Client, hub_pid: u32, invoke_id: &str, calls: usize) -> Result<(Duration, Duration), CliError> {
    let cpu0 = procs::cpu_time_fine(hub_pid);
    let t0 = Instant::now();
    for _ in 0..calls {
        client.call("DescribeInvocationResults", &[("InvokeId", invoke_id.to_string())])?;
    }
    let n = calls.max(1) as u32;
    Ok(((procs::cpu_time_fine(hub_pid).saturating_sub(cpu0)) / n, t0.elapsed() / n))
}

pub fn latency(runs: usize, store: Option<&str>) -> Result<(), CliError> {
    let dir = tempfile::tempdir().map_err(err)?;
    let (store_args, store_name) = super::store_args(store);
    println!("  hub store: {store_name}");
    let hub = procs::start_hub(dir.path(), &store_args.iter().map(String::as_str).collect::<Vec<_>>())?;
    let hub_pid = hub.proc.pid();
    let client = hub.client()?;
    let (agent, instance) = start_agent(&hub, dir.path(), &client)?;
    // Warm up connections and caches.
    let mut last = String::new();
    for _ in 0..3 {
        last = run_and_wait(&client, &instance, "true", Duration::from_secs(30))?.invoke_id;
    }
    let mut lat = Vec::with_capacity(runs);
    let mut polls = 0u64;
    let (hub_cpu0, agent_cpu0) = (procs::cpu_time(hub_pid), procs::cpu_time(agent.pid()));
    for _ in 0..runs {
        let m = run_and_wait(&client, &instance, "true", Duration::from_secs(30))?;
        lat.push(m.took);
        polls += u64::from(m.polls);
        last = m.invoke_id;
    }
    let n = runs.max(1) as u32;
    let hub_cpu = procs::cpu_time(hub_pid).saturating_sub(hub_cpu0) / n;
    let agent_cpu = procs::cpu_time(agent.pid()).saturating_sub(agent_cpu0) / n;
    lat.sort();
    let (per_call_cpu, per_call_wall) = describe_cost(&client, hub_pid, &last, runs.max(200))?;
    let polls_per_run = polls as f64 / f64::from(n);
    let mut bare = Vec::with_capacity(runs);
    for _ in 0..runs {
        let t = Instant::now();
        Command::new("sh").args(["-c", "true"]).status().map_err(err)?;
        bare.push(t.elapsed());
    }
    bare.sort();
    let (p50, p99) = (percentile(&lat, 0.5), percentile(&lat, 0.99));
    let b50 = percentile(&bare, 0.5);
    println!("latency benchmark ({runs} sequential runs of `true`, API → result visible, TLS on loopback)");
    println!("  p50 {:.2} ms   p99 {:.2} ms   max {:.2} ms", ms(p50), ms(p99), ms(*lat.last().unwrap_or(&Duration::ZERO)));
    println!("  bare `sh -c true` fork/exec p50: {:.2} ms", ms(b50));
    println!("  ratio deckhand p50 / bare p50:   {:.1}x", ms(p50) / ms(b50).max(1e-6));
    println!("the polling this includes (DescribeInvocationResults every 0.5 ms until final):");
    println!("  polls per run: {polls_per_run:.1}; one poll costs the client {:.3} ms wall", ms(per_call_wall));
    println!(
        "DescribeInvocationResults by id ({} calls): hub CPU {:.3} ms per call (threads' schedstat, ns)",
        runs.max(200),
        ms(per_call_cpu)
    );
    let net = ms(hub_cpu) - polls_per_run * ms(per_call_cpu);
    println!(
        "CPU per run: hub {:.2} ms (of which polling ≈ {:.2} ms, the run itself ≈ {:.2} ms), agent {:.2} ms (incl. supervisor and sh)",
        ms(hub_cpu),
        polls_per_run * ms(per_call_cpu),
        net.max(0.0),
        ms(agent_cpu)
    );
    Ok(())
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}
