//! Process plumbing for benchmarks: start the real binaries next to this
//! one, read RSS and CPU time from /proc, raise the fd limit.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::cli::CliError;

pub fn sibling(name: &str) -> Result<PathBuf, CliError> {
    let exe = std::env::current_exe().map_err(|e| CliError::Usage(format!("bench: {e}")))?;
    let p = exe.with_file_name(name);
    if !p.exists() {
        return Err(CliError::Usage(format!("bench needs {} next to {} (cargo build --release --bins)", name, exe.display())));
    }
    Ok(p)
}

/// Resident set size of a process in bytes (Linux).
pub fn rss_bytes(pid: u32) -> u64 {
    crate::agent::figures::rss_bytes(&pid.to_string())
}

/// User + system CPU time of a process (Linux).
pub fn cpu_time(pid: u32) -> Duration {
    Duration::from_millis(crate::agent::figures::cpu_ms(&pid.to_string()))
}

/// On-CPU time of `pid`'s live threads, to the nanosecond (each thread's
/// `schedstat`), where [`cpu_time`] counts 10 ms ticks. Threads that end
/// in between are not counted, so only for short spans (a few seconds of
/// calls); zero where `/proc` has no schedstat.
pub fn cpu_time_fine(pid: u32) -> Duration {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else { return Duration::ZERO };
    let ns: u64 = tasks
        .flatten()
        .filter_map(|t| std::fs::read_to_string(t.path().join("schedstat")).ok())
        .filter_map(|s| s.split_whitespace().next().and_then(|n| n.parse::<u64>().ok()))
        .sum();
    Duration::from_nanos(ns)
}

pub use crate::hub::raise_fd_limit as raise_nofile;

pub struct Proc {
    pub child: Child,
}

impl Proc {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Makes `cmd`'s process end with the bench, even when the bench is killed
/// (Ctrl-C, SIGKILL): otherwise a hub and its agents outlive an interrupted
/// bench. Linux's parent-death signal, set between fork and exec; it
/// follows the thread that forked, and every bench starts its processes
/// from its main thread, which lives as long as the bench.
pub fn dies_with_bench(cmd: &mut Command) -> &mut Command {
    #[cfg(target_os = "linux")]
    {
        use std::os::unix::process::CommandExt;
        let bench = std::process::id();
        // SAFETY: between fork and exec only two system calls (prctl,
        // getppid), on a value computed before the fork.
        unsafe {
            cmd.pre_exec(move || {
                nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGTERM).map_err(std::io::Error::from)?;
                // The bench ended before the signal was armed: do not start.
                if std::os::unix::process::parent_id() != bench {
                    return Err(std::io::Error::other("the bench has exited"));
                }
                Ok(())
            });
        }
    }
    cmd
}

pub fn wait_file(path: &Path, timeout: Duration) -> Result<String, CliError> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Ok(s) = std::fs::read_to_string(path)
            && !s.is_empty()
        {
            return Ok(s);
        }
        if Instant::now() > deadline {
            return Err(CliError::Usage(format!("bench: {} did not appear within {timeout:?}", path.display())));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A hub process on 127.0.0.1:0 with TLS and a fresh SQLite file.
pub struct BenchHub {
    pub proc: Proc,
    pub url: String,
    pub ca: PathBuf,
    pub key: (String, String),
}

pub fn start_hub(dir: &Path, extra: &[&str]) -> Result<BenchHub, CliError> {
    let pki = crate::tls::ensure_dev_pki(dir).map_err(|e| CliError::Usage(format!("bench: {e}")))?;
    let key = ("LTAIbench".to_string(), uuid::Uuid::new_v4().simple().to_string());
    let addr_file = dir.join("hub.addr");
    let child = dies_with_bench(&mut Command::new(sibling("deckhand-hub")?))
        .args(["--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir.join("hub-data"))
        .arg("--tls-cert")
        .arg(&pki.server_cert)
        .arg("--tls-key")
        .arg(&pki.server_key)
        .arg("--addr-file")
        .arg(&addr_file)
        .args(["--access-key", &format!("{}:{}", key.0, key.1)])
        .args(extra)
        // `DECKHAND_BENCH_HUB_LOG`: the hub's log filter while profiling
        // (the log is `hub.log` in the bench's directory while it runs).
        .env("DECKHAND_LOG", std::env::var("DECKHAND_BENCH_HUB_LOG").unwrap_or_else(|_| "warn".into()))
        .stdout(Stdio::null())
        .stderr(Stdio::from(std::fs::File::create(dir.join("hub.log")).map_err(|e| CliError::Usage(e.to_string()))?))
        .spawn()
        .map_err(|e| CliError::Usage(format!("bench: starting hub: {e}")))?;
    let proc = Proc { child };
    let url = wait_file(&addr_file, Duration::from_secs(30))?;
    Ok(BenchHub { proc, url, ca: pki.ca_cert, key })
}

impl BenchHub {
    pub fn client(&self) -> Result<crate::cli::Client, CliError> {
        crate::cli::Client::new(crate::cli::ClientConfig {
            endpoint: self.url.clone(),
            access_key_id: self.key.0.clone(),
            access_key_secret: self.key.1.clone(),
            ca_file: Some(self.ca.clone()),
        })
    }
}

pub fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx.min(sorted.len() - 1)]
}

pub fn mib(b: u64) -> f64 {
    b as f64 / (1024.0 * 1024.0)
}

/// Starts `n` real agents registered with one activation and waits (up to
/// `timeout` for each step) until the hub shows every one online; their
/// processes and instance ids.
pub fn start_agents(
    hub: &BenchHub,
    dir: &Path,
    client: &crate::cli::Client,
    n: usize,
    timeout: Duration,
) -> Result<Vec<(Proc, String)>, CliError> {
    start_agents_of(&sibling("deckhand-agent")?, hub, dir, client, n, timeout)
}

/// [`start_agents`] with another agent binary (another build, to compare).
pub fn start_agents_of(
    program: &Path,
    hub: &BenchHub,
    dir: &Path,
    client: &crate::cli::Client,
    n: usize,
    timeout: Duration,
) -> Result<Vec<(Proc, String)>, CliError> {
    let v = client.call("CreateActivation", &[("InstanceCount", n.to_string())])?;
    let (aid, code) = (v["ActivationId"].as_str().unwrap_or("").to_string(), v["ActivationCode"].as_str().unwrap_or("").to_string());
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        let state = dir.join(format!("agent-{i}"));
        let child = dies_with_bench(&mut Command::new(program))
            .args(["run", "--hub", &hub.url, "--ca-file"])
            .arg(&hub.ca)
            .arg("--state-dir")
            .arg(&state)
            .args(["--activation-id", &aid, "--activation-code", &code])
            .env("DECKHAND_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| CliError::Usage(format!("bench: {e}")))?;
        let proc = Proc { child };
        let ident = wait_file(&state.join("identity.json"), timeout)?;
        let id: serde_json::Value = serde_json::from_str(&ident).map_err(|e| CliError::Usage(format!("bench: {e}")))?;
        out.push((proc, id["instance_id"].as_str().unwrap_or("").to_string()));
    }
    let deadline = Instant::now() + timeout;
    for (_, id) in &out {
        loop {
            let v = client.call("DescribeCloudAssistantStatus", &[("InstanceId.1", id.clone())])?;
            if v["InstanceCloudAssistantStatusSet"]["InstanceCloudAssistantStatus"][0]["CloudAssistantStatus"] == "true" {
                break;
            }
            if Instant::now() > deadline {
                return Err(CliError::Usage("bench: agents did not come online".into()));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    Ok(out)
}
