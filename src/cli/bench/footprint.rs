//! `deckhand bench footprint`: a connected, idle agent's memory, threads
//! and CPU over a window, then its RSS while 8 scripts run at once and
//! while one prints 1 GiB.
//!
//! Optionally beside peer agents (`--peer NAME=PROGRAM [ARGS]`, e.g.
//! Alibaba's aliyun-service and amazon-ssm-agent built from source), all
//! sampled in the same window of the same run, so the table compares like
//! with like. Each figure is summed over the process tree (amazon-ssm-agent
//! runs its work in a child, ssm-agent-worker). How the peers were built
//! and run: docs/performance.md. Other builds of deckhand's own agent
//! (`--agent NAME=PATH`, e.g. the build before a change) connect to the
//! same hub and are measured in the same window.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::latency::{Follow, run_and_wait, start_agent};
use super::procs::{self, mib};
use crate::agent::figures;
use crate::cli::CliError;

fn err(e: impl std::fmt::Display) -> CliError {
    CliError::Usage(format!("bench: {e}"))
}

/// A peer agent as given on the command line: `NAME=PROGRAM [ARGS…]`,
/// split at whitespace (a program that needs more wraps itself in a script
/// that `exec`s it).
#[derive(Debug, Clone, PartialEq)]
pub struct PeerSpec {
    pub name: String,
    pub program: PathBuf,
    pub args: Vec<String>,
}

impl std::str::FromStr for PeerSpec {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let (name, cmd) = s.split_once('=').ok_or("--peer: expected NAME=PROGRAM [ARGS]")?;
        let mut words = cmd.split_whitespace();
        let program = words.next().ok_or("--peer: PROGRAM is empty")?;
        if name.is_empty() || name.len() > 40 {
            return Err("--peer: NAME must be 1 to 40 characters".into());
        }
        Ok(PeerSpec { name: name.to_string(), program: program.into(), args: words.map(str::to_string).collect() })
    }
}

/// One measured agent: its root process and its figures over the window.
struct Subject {
    name: String,
    pid: u32,
    child: Option<Child>,
    peak_rss: u64,
    peak_pss: u64,
    peak_threads: u64,
    peak_procs: usize,
    cpu0: Duration,
    /// Distinct executables seen in the tree: path → size in bytes.
    binaries: Vec<(PathBuf, u64)>,
}

impl Subject {
    fn new(name: &str, pid: u32, child: Option<Child>) -> Self {
        Subject {
            name: name.to_string(),
            pid,
            child,
            peak_rss: 0,
            peak_pss: 0,
            peak_threads: 0,
            peak_procs: 0,
            cpu0: Duration::ZERO,
            binaries: Vec::new(),
        }
    }

    fn tree(&self) -> Vec<u32> {
        figures::process_tree(self.pid)
    }

    fn cpu(&self) -> Duration {
        self.tree().iter().map(|p| procs::cpu_time(*p)).sum()
    }

    fn sample(&mut self) {
        let tree = self.tree();
        let (mut rss, mut pss, mut threads) = (0, 0, 0);
        for p in &tree {
            let id = p.to_string();
            rss += figures::rss_bytes(&id);
            pss += figures::pss_bytes(&id).unwrap_or(0);
            threads += figures::threads(&id);
            if let Ok(exe) = std::fs::read_link(format!("/proc/{p}/exe"))
                && !self.binaries.iter().any(|(b, _)| *b == exe)
            {
                let size = std::fs::metadata(&exe).map_or(0, |m| m.len());
                self.binaries.push((exe, size));
            }
        }
        self.peak_rss = self.peak_rss.max(rss);
        self.peak_pss = self.peak_pss.max(pss);
        self.peak_threads = self.peak_threads.max(threads);
        self.peak_procs = self.peak_procs.max(tree.len());
    }

    /// Ends a peer and everything it started (its tree, read first: a
    /// worker may have left the peer's process group).
    fn stop(&mut self) {
        let Some(mut child) = self.child.take() else { return };
        #[cfg(unix)]
        {
            use nix::sys::signal::{Signal, kill};
            use nix::unistd::Pid;
            let tree = self.tree();
            for p in tree.iter().rev() {
                let _ = kill(Pid::from_raw(*p as i32), Signal::SIGKILL);
            }
        }
        let _ = child.kill();
        let _ = child.wait();
    }
}

impl Drop for Subject {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Starts a peer in its own scratch directory (its working directory and
/// HOME), output to `<scratch>/out.log`.
fn start_peer(spec: &PeerSpec, dir: &Path) -> Result<Subject, CliError> {
    let scratch = dir.join(format!("peer-{}", spec.name));
    std::fs::create_dir_all(&scratch).map_err(err)?;
    let log = std::fs::File::create(scratch.join("out.log")).map_err(err)?;
    let mut cmd = Command::new(&spec.program);
    procs::dies_with_bench(&mut cmd);
    cmd.args(&spec.args).current_dir(&scratch).env("HOME", &scratch).stdin(Stdio::null()).stdout(log.try_clone().map_err(err)?).stderr(log);
    #[cfg(unix)]
    {
        use std::os::unix::process::CommandExt;
        cmd.process_group(0);
    }
    let child = cmd.spawn().map_err(|e| err(format!("starting peer {} ({}): {e}", spec.name, spec.program.display())))?;
    Ok(Subject::new(&spec.name, child.id(), Some(child)))
}

pub fn run(window: Duration, peers: &[PeerSpec], agents: &[PeerSpec], settle: Duration) -> Result<(), CliError> {
    let dir = tempfile::tempdir().map_err(err)?;
    let hub = procs::start_hub(dir.path(), &["--heartbeat-secs", "5"])?;
    let client = hub.client()?;
    let (agent, instance) = start_agent(&hub, dir.path(), &client)?;
    let mut subjects = vec![Subject::new("deckhand-agent", agent.pid(), None)];
    let mut others = Vec::new();
    for a in agents {
        let state = dir.path().join(format!("agent-{}", a.name));
        let (proc, _) = procs::start_agents_of(&a.program, &hub, &state, &client, 1, Duration::from_secs(30))?
            .pop()
            .ok_or_else(|| err("no agent started"))?;
        subjects.push(Subject::new(&a.name, proc.pid(), None));
        others.push(proc);
    }
    for p in peers {
        subjects.push(start_peer(p, dir.path())?);
    }
    // Peers reach their idle state (the retry loop of an unreachable cloud)
    // and the agent its steady heartbeats before anything is measured.
    std::thread::sleep(settle.max(Duration::from_millis(500)));
    for s in &mut subjects {
        if let Some(Ok(Some(status))) = s.child.as_mut().map(Child::try_wait) {
            return Err(err(format!("peer {} exited during the settle time ({status}); see its out.log", s.name)));
        }
        s.cpu0 = s.cpu();
    }
    let t0 = Instant::now();
    while t0.elapsed() < window {
        for s in &mut subjects {
            s.sample();
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    let secs = t0.elapsed().as_secs_f64();
    println!(
        "idle footprint, one run: peaks over {secs:.0} s after {:.0} s to settle, sampled every 250 ms, each summed over the process tree",
        settle.as_secs_f64()
    );
    println!("| agent | binary MiB | RSS MiB | PSS MiB | threads | processes | CPU % |");
    println!("|---|---|---|---|---|---|---|");
    for s in &mut subjects {
        let cpu = (s.cpu().saturating_sub(s.cpu0)).as_secs_f64() / secs * 100.0;
        let binary: u64 = s.binaries.iter().map(|(_, n)| n).sum();
        println!(
            "| {} | {:.2} | {:.2} | {:.2} | {} | {} | {cpu:.3} |",
            s.name,
            mib(binary),
            mib(s.peak_rss),
            mib(s.peak_pss),
            s.peak_threads,
            s.peak_procs
        );
    }
    for s in &subjects {
        for (b, n) in &s.binaries {
            println!("  {}: {} ({:.2} MiB)", s.name, b.display(), mib(*n));
        }
    }
    for s in &mut subjects {
        s.stop();
    }
    drop(others);
    let pid = agent.pid();

    // 8 concurrent scripts.
    for _ in 0..8 {
        client.call(
            "RunCommand",
            &[
                ("Type", "RunShellScript".into()),
                ("CommandContent", "for i in $(seq 1 50); do echo line $i; sleep 0.02; done".into()),
                ("InstanceId.1", instance.clone()),
            ],
        )?;
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
        move || run_and_wait(&client, &instance, "head -c 1073741824 /dev/zero", Duration::from_secs(600), Follow::Poll).map(|m| m.took)
    });
    let mut peak_gib = 0;
    while !big.is_finished() {
        peak_gib = peak_gib.max(procs::rss_bytes(pid));
        std::thread::sleep(Duration::from_millis(50));
    }
    let gib_time = big.join().map_err(|_| err("1 GiB run panicked"))??;
    println!("deckhand-agent under load (connected over TLS, heartbeats every 5 s)");
    println!("  RSS with 8 concurrent scripts:    {:.2} MiB", mib(peak_busy));
    println!("  RSS while a script prints 1 GiB:  {:.2} MiB  (run took {:.1} s)", mib(peak_gib), gib_time.as_secs_f64());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peer_specs_parse_and_refuse() {
        let p: PeerSpec = "ssm=/tmp/amazon-ssm-agent -x  y".parse().unwrap();
        assert_eq!(
            (p.name.as_str(), p.program.to_str(), p.args),
            ("ssm", Some("/tmp/amazon-ssm-agent"), vec!["-x".to_string(), "y".into()])
        );
        assert!("no-equals".parse::<PeerSpec>().is_err());
        assert!("=/bin/true".parse::<PeerSpec>().is_err());
        assert!("x=  ".parse::<PeerSpec>().is_err());
    }
}
