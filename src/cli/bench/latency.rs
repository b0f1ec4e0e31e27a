//! Latency and footprint benchmarks against real hub and agent processes.
//!
//! latency: RunCommand(`true`) → result visible in DescribeInvocationResults,
//! sequentially, p50/p99; compared as a ratio with a bare `sh -c true`
//! fork/exec measured the same way on the same machine.
//! footprint: a connected, idle agent's RSS and CPU over a window, then
//! RSS while 8 scripts run at once and while one prints 1 GiB.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::procs::{self, BenchHub, Proc, mib, percentile};
use crate::cli::{CliError, Client};

fn err(e: impl std::fmt::Display) -> CliError {
    CliError::Usage(format!("bench: {e}"))
}

/// Starts a real agent registered with `hub`; returns it and its instance id.
pub fn start_agent(hub: &BenchHub, dir: &std::path::Path, client: &Client) -> Result<(Proc, String), CliError> {
    let v = client.call("CreateActivation", &[("InstanceCount", "1".into())])?;
    let state = dir.join("agent-state");
    let child = Command::new(procs::sibling("deckhand-agent")?)
        .args(["run", "--hub", &hub.url, "--ca-file"])
        .arg(&hub.ca)
        .arg("--state-dir")
        .arg(&state)
        .args([
            "--activation-id",
            v["ActivationId"].as_str().unwrap_or(""),
            "--activation-code",
            v["ActivationCode"].as_str().unwrap_or(""),
        ])
        .env("DECKHAND_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(err)?;
    let proc = Proc { child };
    let ident = procs::wait_file(&state.join("identity.json"), Duration::from_secs(30))?;
    let id: serde_json::Value = serde_json::from_str(&ident).map_err(err)?;
    let instance = id["instance_id"].as_str().unwrap_or("").to_string();
    // Wait until it is online.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let v = client.call("DescribeCloudAssistantStatus", &[("InstanceId.1", instance.clone())])?;
        if v["InstanceCloudAssistantStatusSet"]["InstanceCloudAssistantStatus"][0]["CloudAssistantStatus"] == "true" {
            break;
        }
        if Instant::now() > deadline {
            return Err(err("agent did not come online"));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok((proc, instance))
}

fn run_and_wait(client: &Client, instance: &str, script: &str, timeout: Duration) -> Result<Duration, CliError> {
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
    loop {
        let r = client.call("DescribeInvocationResults", &[("InvokeId", id.clone())])?;
        let st = r["Invocation"]["InvocationResults"]["InvocationResult"][0]["InvocationStatus"].as_str().unwrap_or("").to_string();
        if crate::lifecycle::InvocationStatus::parse(&st).is_ok_and(|s| s.is_final()) {
            return Ok(t0.elapsed());
        }
        if t0.elapsed() > timeout {
            return Err(err(format!("{id} not final after {timeout:?}")));
        }
        std::thread::sleep(Duration::from_micros(500));
    }
}

pub fn latency(runs: usize, store: Option<&str>) -> Result<(), CliError> {
    let dir = tempfile::tempdir().map_err(err)?;
    let (store_args, store_name) = super::store_args(store);
    println!("  hub store: {store_name}");
    let hub = procs::start_hub(dir.path(), &store_args.iter().map(String::as_str).collect::<Vec<_>>())?;
    let client = hub.client()?;
    let (_agent, instance) = start_agent(&hub, dir.path(), &client)?;
    // Warm up connections and caches.
    for _ in 0..3 {
        run_and_wait(&client, &instance, "true", Duration::from_secs(30))?;
    }
    let mut lat = Vec::with_capacity(runs);
    for _ in 0..runs {
        lat.push(run_and_wait(&client, &instance, "true", Duration::from_secs(30))?);
    }
    lat.sort();
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
    Ok(())
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

pub fn footprint(window: Duration) -> Result<(), CliError> {
    let dir = tempfile::tempdir().map_err(err)?;
    let hub = procs::start_hub(dir.path(), &["--heartbeat-secs", "5"])?;
    let client = hub.client()?;
    let (agent, instance) = start_agent(&hub, dir.path(), &client)?;
    let pid = agent.pid();
    std::thread::sleep(Duration::from_millis(500));
    let cpu0 = procs::cpu_time(pid);
    let t0 = Instant::now();
    let mut peak_idle = 0;
    while t0.elapsed() < window {
        peak_idle = peak_idle.max(procs::rss_bytes(pid));
        std::thread::sleep(Duration::from_millis(250));
    }
    let idle_cpu = (procs::cpu_time(pid) - cpu0).as_secs_f64() / t0.elapsed().as_secs_f64() * 100.0;

    // 8 concurrent scripts.
    let mut ids = Vec::new();
    for _ in 0..8 {
        let v = client.call(
            "RunCommand",
            &[
                ("Type", "RunShellScript".into()),
                ("CommandContent", "for i in $(seq 1 50); do echo line $i; sleep 0.02; done".into()),
                ("InstanceId.1", instance.clone()),
            ],
        )?;
        ids.push(v["InvokeId"].as_str().unwrap_or("").to_string());
    }
    let mut peak_busy = 0;
    let t1 = Instant::now();
    while t1.elapsed() < Duration::from_secs(3) {
        peak_busy = peak_busy.max(procs::rss_bytes(pid));
        std::thread::sleep(Duration::from_millis(50));
    }
    // One script printing 1 GiB.
    let big = std::thread::spawn({
        let client = hub.client()?;
        let instance = instance.clone();
        move || run_and_wait(&client, &instance, "head -c 1073741824 /dev/zero", Duration::from_secs(600))
    });
    let mut peak_gib = 0;
    while !big.is_finished() {
        peak_gib = peak_gib.max(procs::rss_bytes(pid));
        std::thread::sleep(Duration::from_millis(50));
    }
    let gib_time = big.join().map_err(|_| err("1 GiB run panicked"))??;
    println!("agent footprint (connected over TLS, heartbeats every 5 s)");
    println!("  idle RSS (peak over {:.0} s):      {:.2} MiB", window.as_secs_f64(), mib(peak_idle));
    println!("  idle CPU:                         {idle_cpu:.3} %");
    println!("  RSS with 8 concurrent scripts:    {:.2} MiB", mib(peak_busy));
    println!("  RSS while a script prints 1 GiB:  {:.2} MiB  (run took {:.1} s)", mib(peak_gib), gib_time.as_secs_f64());
    Ok(())
}
