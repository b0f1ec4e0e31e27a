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

/// One run's latency and how many `DescribeInvocationResults` calls it took.
pub(super) struct Measured {
    pub took: Duration,
    calls: u32,
    invoke_id: String,
}

/// How the bench learns that a run finished.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Follow {
    /// `WaitSeconds` (a deckhand extension): the hub answers when the
    /// result changes, so the figure is not the polling's granularity.
    Wait,
    /// Plain polling every 0.5 ms, as a client without the extension does.
    Poll,
}

pub(super) fn run_and_wait(client: &Client, instance: &str, script: &str, timeout: Duration, follow: Follow) -> Result<Measured, CliError> {
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
    let mut calls = 0;
    let mut params = vec![("InvokeId", id.clone())];
    if follow == Follow::Wait {
        params.push(("WaitSeconds", crate::cli::client::FOLLOW_WAIT_SECONDS.to_string()));
    }
    loop {
        let r = client.call("DescribeInvocationResults", &params)?;
        calls += 1;
        let st = r["Invocation"]["InvocationResults"]["InvocationResult"][0]["InvocationStatus"].as_str().unwrap_or("").to_string();
        if crate::lifecycle::InvocationStatus::parse(&st).is_ok_and(|s| s.is_final()) {
            return Ok(Measured { took: t0.elapsed(), calls, invoke_id: id });
        }
        if t0.elapsed() > timeout {
            return Err(err(format!("{id} not final after {timeout:?}")));
        }
        if follow == Follow::Poll {
            std::thread::sleep(Duration::from_micros(500));
        }
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

/// One series of sequential runs followed the same way.
struct Series {
    /// Sorted.
    lat: Vec<Duration>,
    calls_per_run: f64,
    hub_cpu: Duration,
    agent_cpu: Duration,
    last: String,
}

fn series(client: &Client, instance: &str, hub_pid: u32, agent_pid: u32, runs: usize, follow: Follow) -> Result<Series, CliError> {
    let mut lat = Vec::with_capacity(runs);
    let mut calls = 0u64;
    let mut last = String::new();
    // Whole-process ticks: over a series of seconds, threads of the hub
    // may end (idle blocking threads), and `cpu_time_fine` counts only live ones.
    let (hub_cpu0, agent_cpu0) = (procs::cpu_time(hub_pid), procs::cpu_time(agent_pid));
    for _ in 0..runs {
        let m = run_and_wait(client, instance, "true", Duration::from_secs(30), follow)?;
        lat.push(m.took);
        calls += u64::from(m.calls);
        last = m.invoke_id;
    }
    let n = runs.max(1) as u32;
    let hub_cpu = procs::cpu_time(hub_pid).saturating_sub(hub_cpu0) / n;
    let agent_cpu = procs::cpu_time(agent_pid).saturating_sub(agent_cpu0) / n;
    lat.sort();
    Ok(Series { lat, calls_per_run: calls as f64 / f64::from(n), hub_cpu, agent_cpu, last })
}

/// A hub on `store` with one real agent connected, in a directory of its
/// own. Fields drop in order: the agent ends before its hub.
struct OneAgent {
    agent: Proc,
    instance: String,
    client: Client,
    hub: BenchHub,
    _dir: tempfile::TempDir,
}

fn one_agent(store: Option<&str>) -> Result<OneAgent, CliError> {
    let dir = tempfile::tempdir().map_err(err)?;
    let (store_args, store_name) = super::store_args(store);
    println!("  hub store: {store_name}");
    let hub = procs::start_hub(dir.path(), &store_args.iter().map(String::as_str).collect::<Vec<_>>())?;
    let client = hub.client()?;
    let (agent, instance) = start_agent(&hub, dir.path(), &client)?;
    Ok(OneAgent { agent, instance, client, hub, _dir: dir })
}

pub fn latency(runs: usize, store: Option<&str>) -> Result<(), CliError> {
    let one = one_agent(store)?;
    let (client, instance, hub_pid) = (&one.client, &one.instance, one.hub.proc.pid());
    // Warm up connections and caches.
    for _ in 0..3 {
        run_and_wait(client, instance, "true", Duration::from_secs(30), Follow::Poll)?;
    }
    // Same build, same processes, back to back: the two ways of following
    // a run compare as a ratio.
    let waited = series(client, instance, hub_pid, one.agent.pid(), runs, Follow::Wait)?;
    let polled = series(client, instance, hub_pid, one.agent.pid(), runs, Follow::Poll)?;
    let (per_call_cpu, per_call_wall) = describe_cost(client, hub_pid, &polled.last, runs.max(200))?;
    let mut bare = Vec::with_capacity(runs);
    for _ in 0..runs {
        let t = Instant::now();
        Command::new("sh").args(["-c", "true"]).status().map_err(err)?;
        bare.push(t.elapsed());
    }
    bare.sort();
    let b50 = percentile(&bare, 0.5);
    println!("latency benchmark ({runs} sequential runs of `true` each way, API → result visible, TLS on loopback)");
    for (name, s) in [("waiting (WaitSeconds)", &waited), ("polling every 0.5 ms", &polled)] {
        let (p50, p99) = (percentile(&s.lat, 0.5), percentile(&s.lat, 0.99));
        println!(
            "  {name:<22} p50 {:.2} ms   p99 {:.2} ms   max {:.2} ms   ({:.1} DescribeInvocationResults calls a run)",
            ms(p50),
            ms(p99),
            ms(*s.lat.last().unwrap_or(&Duration::ZERO)),
            s.calls_per_run
        );
    }
    let (w50, p50) = (percentile(&waited.lat, 0.5), percentile(&polled.lat, 0.5));
    println!("  ratio polling p50 / waiting p50:   {:.2}x", ms(p50) / ms(w50).max(1e-6));
    println!("  bare `sh -c true` fork/exec p50:   {:.2} ms", ms(b50));
    println!("  ratio waiting p50 / bare p50:      {:.1}x", ms(w50) / ms(b50).max(1e-6));
    println!(
        "DescribeInvocationResults by id ({} calls): hub CPU {:.3} ms per call (threads' schedstat, ns); one call costs the client {:.3} ms wall",
        runs.max(200),
        ms(per_call_cpu),
        ms(per_call_wall)
    );
    for (name, s) in [("waiting", &waited), ("polling", &polled)] {
        let calls = s.calls_per_run * ms(per_call_cpu);
        println!(
            "CPU per run, {name}: hub {:.2} ms (of which its Describe calls ≈ {:.2} ms, the run itself ≈ {:.2} ms), agent {:.2} ms (incl. supervisor and sh)",
            ms(s.hub_cpu),
            calls,
            (ms(s.hub_cpu) - calls).max(0.0),
            ms(s.agent_cpu)
        );
    }
    Ok(())
}

/// `deckhand bench describe`: only the Describe cost, on its own hub.
pub fn describe(calls: usize, store: Option<&str>) -> Result<(), CliError> {
    let one = one_agent(store)?;
    let (client, instance, hub_pid) = (&one.client, &one.instance, one.hub.proc.pid());
    let m = run_and_wait(client, instance, "true", Duration::from_secs(30), Follow::Poll)?;
    // Warm up the connection and the hub's caches.
    describe_cost(client, hub_pid, &m.invoke_id, 50)?;
    let (cpu, wall) = describe_cost(client, hub_pid, &m.invoke_id, calls)?;
    println!(
        "DescribeInvocationResults by id ({calls} calls): hub CPU {:.3} ms per call (threads' schedstat, ns); one call costs the client {:.3} ms wall",
        ms(cpu),
        ms(wall)
    );
    Ok(())
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}
