//! `deckhand bench` starts real `deckhand-hub` and `deckhand-agent`
//! processes; they must not outlive a bench that is killed (Ctrl-C or
//! SIGKILL), or an interrupted benchmark leaves a hub and its agents
//! running. Linux: the parent-death signal (`bench::procs::dies_with_bench`).

#![cfg(target_os = "linux")]

#[path = "support/harness.rs"]
mod harness;

use std::time::Duration;

use harness::wait_until;

/// The processes whose parent is `pid` (from each process's `stat`, which
/// every Linux kernel has).
fn children(pid: u32) -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir("/proc") else { return Vec::new() };
    dir.flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|p| {
            let stat = std::fs::read_to_string(format!("/proc/{p}/stat")).unwrap_or_default();
            // `pid (comm) state ppid …`: the fields after the last ')'.
            stat.rsplit_once(')').and_then(|(_, rest)| rest.split_whitespace().nth(1)?.parse::<u32>().ok()) == Some(pid)
        })
        .collect()
}

fn cmdline(pid: u32) -> String {
    std::fs::read(format!("/proc/{pid}/cmdline")).map(|b| String::from_utf8_lossy(&b).replace('\0', " ")).unwrap_or_default()
}

/// Gone, or a zombie nobody has reaped yet (it no longer runs).
fn ended(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        // `pid (comm) S …`: the state follows the last ')'.
        Ok(stat) => stat.rsplit_once(')').and_then(|(_, rest)| rest.split_whitespace().next()) == Some("Z"),
    }
}

#[test]
fn a_killed_bench_takes_its_hub_and_agent_with_it() {
    let mut bench = std::process::Command::new(env!("CARGO_BIN_EXE_deckhand"))
        .args(["bench", "latency", "--runs", "1000000"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let pid = bench.id();
    // Both started: the hub, then an agent registered with it.
    let kids = wait_until("the bench's hub and agent", Duration::from_secs(60), || {
        let kids = children(pid);
        let hub = kids.iter().copied().find(|k| cmdline(*k).contains("deckhand-hub"));
        let agent = kids.iter().copied().find(|k| cmdline(*k).contains("deckhand-agent run"));
        hub.zip(agent)
    });
    bench.kill().unwrap();
    bench.wait().unwrap();
    let (hub, agent) = kids;
    wait_until("hub and agent ended with the bench", Duration::from_secs(30), || (ended(hub) && ended(agent)).then_some(()));
}
