//! The agent's own figures, shown by `deckhand-agent status` (issue #21):
//! counters bumped where the events happen, and the process's memory,
//! threads and CPU read from `/proc` when the status file is written.
//!
//! Owns reading a process's figures from `/proc` (Linux); the benchmarks
//! call it for the processes they measure. Elsewhere those read as zero.

use std::sync::atomic::{AtomicU64, Ordering};

use serde::{Deserialize, Serialize};

/// One counter per event; process-wide (one agent per process).
#[derive(Default)]
struct Counters {
    connections: AtomicU64,
    frames_in: AtomicU64,
    frames_out: AtomicU64,
    bytes_in: AtomicU64,
    bytes_out: AtomicU64,
    runs_finished: AtomicU64,
    reports_acked: AtomicU64,
    live_chunks_dropped: AtomicU64,
    journal_syncs: AtomicU64,
}

static COUNTERS: Counters = Counters {
    connections: AtomicU64::new(0),
    frames_in: AtomicU64::new(0),
    frames_out: AtomicU64::new(0),
    bytes_in: AtomicU64::new(0),
    bytes_out: AtomicU64::new(0),
    runs_finished: AtomicU64::new(0),
    reports_acked: AtomicU64::new(0),
    live_chunks_dropped: AtomicU64::new(0),
    journal_syncs: AtomicU64::new(0),
};

fn bump(c: &AtomicU64, n: u64) {
    c.fetch_add(n, Ordering::Relaxed);
}

/// A session with the hub began (hello answered).
pub fn connected() {
    bump(&COUNTERS.connections, 1);
}

/// A WebSocket data frame of `bytes` to or from the hub.
pub fn frame_out(bytes: usize) {
    bump(&COUNTERS.frames_out, 1);
    bump(&COUNTERS.bytes_out, bytes as u64);
}

pub fn frame_in(bytes: usize) {
    bump(&COUNTERS.frames_in, 1);
    bump(&COUNTERS.bytes_in, bytes as u64);
}

pub fn run_finished() {
    bump(&COUNTERS.runs_finished, 1);
}

pub fn report_acked() {
    bump(&COUNTERS.reports_acked, 1);
}

/// A live output chunk dropped because the queue to the hub was full.
pub fn live_chunk_dropped() {
    bump(&COUNTERS.live_chunks_dropped, 1);
}

/// One `fdatasync` of the journal done (a sync that found its changes
/// already on disk is not counted).
pub fn journal_synced() {
    bump(&COUNTERS.journal_syncs, 1);
}

/// What status.json carries (all zero from an agent that predates them).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct Figures {
    pub rss_bytes: u64,
    pub threads: u64,
    pub cpu_ms: u64,
    pub connections: u64,
    pub frames_in: u64,
    pub frames_out: u64,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub runs_finished: u64,
    pub reports_acked: u64,
    pub live_chunks_dropped: u64,
    pub journal_syncs: u64,
}

/// The figures now (reads `/proc/self`).
pub fn snapshot() -> Figures {
    let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
    let c = &COUNTERS;
    Figures {
        rss_bytes: rss_bytes("self"),
        threads: threads("self"),
        cpu_ms: cpu_ms("self"),
        connections: get(&c.connections),
        frames_in: get(&c.frames_in),
        frames_out: get(&c.frames_out),
        bytes_in: get(&c.bytes_in),
        bytes_out: get(&c.bytes_out),
        runs_finished: get(&c.runs_finished),
        reports_acked: get(&c.reports_acked),
        live_chunks_dropped: get(&c.live_chunks_dropped),
        journal_syncs: get(&c.journal_syncs),
    }
}

/// A numeric field of `/proc/<pid>/status` (`pid` may be `self`), unit dropped.
fn status_field(pid: &str, name: &str) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines().find_map(|l| l.strip_prefix(name))?.split_whitespace().next()?.parse().ok()
}

/// Resident memory (bytes) and user + system CPU time of a process
/// (`pid` may be `self`); `None` where /proc is unavailable or unreadable.
pub fn usage(pid: &str) -> Option<(u64, std::time::Duration)> {
    #[cfg(target_os = "linux")]
    {
        let statm = std::fs::read_to_string(format!("/proc/{pid}/statm")).ok()?;
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        let page = nix::unistd::sysconf(nix::unistd::SysconfVar::PAGE_SIZE).ok()??;
        let hz = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK).ok()??;
        let (page, hz) = (u64::try_from(page).ok()?, u64::try_from(hz).ok().filter(|&h| h > 0)?);
        let ticks = cpu_ticks(&stat)?;
        Some((resident_pages(&statm)?.saturating_mul(page), std::time::Duration::from_millis(ticks.saturating_mul(1000) / hz)))
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = pid;
        None
    }
}

/// Resident memory of a process, bytes (0 where unknown).
pub fn rss_bytes(pid: &str) -> u64 {
    usage(pid).map_or(0, |(rss, _)| rss)
}

/// User + system CPU time of a process, ms (0 where unknown).
pub fn cpu_ms(pid: &str) -> u64 {
    usage(pid).map_or(0, |(_, cpu)| u64::try_from(cpu.as_millis()).unwrap_or(u64::MAX))
}

/// Proportional set size of a process in bytes (Linux): its private pages
/// plus its share of pages mapped by others, from `/proc/<pid>/smaps_rollup`.
/// Unlike RSS, summing it over processes does not count shared code twice.
pub fn pss_bytes(pid: &str) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).ok()?;
    kib_field(&s, "Pss:").map(|k| k.saturating_mul(1024))
}

/// Threads of a process (0 where unknown).
pub fn threads(pid: &str) -> u64 {
    status_field(pid, "Threads:").unwrap_or(0)
}

/// `pid` and every process descended from it (Linux; just `pid` elsewhere),
/// found by each process's parent in `/proc/<n>/stat`. A process that ends
/// while the tree is read is left out.
pub fn process_tree(pid: u32) -> Vec<u32> {
    let mut parents: Vec<(u32, u32)> = Vec::new();
    if let Ok(dir) = std::fs::read_dir("/proc") {
        for e in dir.flatten() {
            let Some(n) = e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else { continue };
            if let Some(ppid) = std::fs::read_to_string(format!("/proc/{n}/stat")).ok().and_then(|s| parent_pid(&s)) {
                parents.push((n, ppid));
            }
        }
    }
    let mut tree = vec![pid];
    let mut i = 0;
    while let Some(&p) = tree.get(i) {
        tree.extend(parents.iter().filter(|(_, pp)| *pp == p).map(|(n, _)| *n));
        i += 1;
    }
    tree
}

/// `stat`'s fourth field, the parent pid (counted after the last `)`, as in [`cpu_ticks`]).
fn parent_pid(stat: &str) -> Option<u32> {
    let (_, rest) = stat.rsplit_once(')')?;
    rest.split_ascii_whitespace().nth(1)?.parse().ok()
}

/// A `Name:   123 kB` line's number.
fn kib_field(text: &str, name: &str) -> Option<u64> {
    text.lines().find_map(|l| l.strip_prefix(name))?.split_whitespace().next()?.parse().ok()
}

/// `statm`'s second field: resident pages.
#[cfg_attr(not(target_os = "linux"), allow(dead_code))]
fn resident_pages(statm: &str) -> Option<u64> {
    statm.split_ascii_whitespace().nth(1)?.parse().ok()
}

/// `utime + stime` (fields 14 and 15) of `stat`. The command name (field 2)
/// may hold spaces and parentheses, so fields are counted after the last `)`.
#[cfg_attr(not(target_os = "linux"), allow(dead_code))]
fn cpu_ticks(stat: &str) -> Option<u64> {
    let (_, rest) = stat.rsplit_once(')')?;
    let mut fields = rest.split_ascii_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(utime.saturating_add(stime))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_proc_files_including_odd_command_names() {
        assert_eq!(resident_pages("5000 2048 300 10 0 900 0\n"), Some(2048));
        assert_eq!(resident_pages("garbage"), None);
        let stat = "42 (a) b) c) S 1 42 42 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 1 0 100 1000 200";
        assert_eq!(cpu_ticks(stat), Some(300));
        assert_eq!(cpu_ticks("42 (x) S 1"), None);
        assert_eq!(cpu_ticks("no paren"), None);
        assert_eq!(parent_pid(stat), Some(1));
        assert_eq!(parent_pid("7 (x) S"), None);
        assert_eq!(kib_field("Rss:  900 kB\nPss:   512 kB\n", "Pss:"), Some(512));
        assert_eq!(kib_field("Pss: lots", "Pss:"), None);
    }

    #[test]
    fn counters_and_process_figures() {
        let before = snapshot();
        frame_out(10);
        frame_in(7);
        report_acked();
        let after = snapshot();
        assert!(after.frames_out > before.frames_out && after.bytes_out >= before.bytes_out + 10);
        assert!(after.frames_in > before.frames_in && after.bytes_in >= before.bytes_in + 7);
        assert!(after.reports_acked > before.reports_acked);
        if cfg!(target_os = "linux") {
            assert!(after.rss_bytes > 1024 * 1024, "{after:?}");
            assert!(after.threads >= 1, "{after:?}");
            let me = std::process::id();
            let pss = pss_bytes(&me.to_string()).unwrap();
            assert!(pss > 0 && pss <= after.rss_bytes * 2, "{pss}");
            let mut child = std::process::Command::new("sleep").arg("5").spawn().unwrap();
            let tree = process_tree(me);
            let _ = child.kill();
            let _ = child.wait();
            assert_eq!(tree.first(), Some(&me));
            assert!(tree.contains(&child.id()), "{tree:?}");
        }
    }
}
