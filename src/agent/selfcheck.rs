//! The agent's watch on its own footprint: its resident memory
//! (`/proc/self/statm`) and CPU time (`/proc/self/stat`), checked every
//! [`CHECK_EVERY`] against the configured ceilings, shown by
//! `deckhand-agent status`. Scripts are not counted: they run under their
//! own supervisors (and, under systemd, in their own slice).
//!
//! What it does when over (docs/operations.md, "Limits"): a ceiling
//! exceeded at [`STRIKES`] checks in a row (a sustained excess, not one
//! spike) is logged and the agent exits with [`EXIT_OVER_LIMIT`]; the
//! service manager starts it again (`Restart=always`), runs in flight keep
//! running under their supervisors and the new agent re-attaches to them,
//! and the journal carries every unacknowledged report across. This is what
//! Cloud Assistant's own client does over its 20% CPU / 50 MiB. The kernel
//! enforces the unit's `MemoryMax=`/`CPUQuota=` independently.

use std::time::{Duration, Instant};

/// Memory ceiling default: the agent idles at about 8 MiB; sixteen times
/// that leaves room for a busy fleet's output buffers.
pub const DEFAULT_MEMORY_MAX_MIB: u64 = 128;
/// CPU ceiling default, percent of one core averaged over a check interval.
pub const DEFAULT_CPU_MAX_PERCENT: u32 = 50;
/// Bounds on the settings: below 16 MiB the agent cannot work; a CPU
/// ceiling is per core, and a single-threaded agent uses one.
pub const MEMORY_MAX_MIB_RANGE: std::ops::RangeInclusive<u64> = 16..=65_536;
pub const CPU_MAX_PERCENT_RANGE: std::ops::RangeInclusive<u32> = 5..=100;
pub const CHECK_EVERY: Duration = Duration::from_secs(10);
/// Consecutive checks over a ceiling before the agent acts (30 s).
pub const STRIKES: u32 = 3;
/// The agent's exit status when it restarts itself over a ceiling
/// (EX_TEMPFAIL: the service manager should start it again).
pub const EXIT_OVER_LIMIT: i32 = 75;

/// One malloc arena (glibc) for the whole agent (issue #21). Its event loop
/// is one thread; the blocking threads it borrows now and then (journal
/// syncs, the status file) would otherwise each get an arena of their own,
/// whose pages stay resident for the life of the process. Called before
/// any other thread starts.
pub fn lean_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets one of glibc's allocator tunables; no
    // pointer is passed, and no other thread exists yet.
    unsafe {
        nix::libc::mallopt(nix::libc::M_ARENA_MAX, 1);
    }
}

/// Hands freed heap pages back to the kernel: glibc keeps them otherwise, so
/// RSS would stay at the last burst's peak (a large report, a file chunk).
/// Blocking (it walks the heap); called from the status tick's blocking task.
pub fn release_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim takes no pointer and is thread-safe in glibc.
    unsafe {
        nix::libc::malloc_trim(0);
    }
}

/// Status ticks (5 s each) the agent must be connected with no run going
/// before it gives its cold code back ([`shed_cold_code`]): once after it
/// starts, and once after each burst of runs.
pub const SHED_AFTER_IDLE_TICKS: u32 = 3;

/// Gives the kernel back the pages of the agent's own executable that are
/// mapped but cold (issue #21): start-up (configuration, recovery, the TLS
/// handshake) and the last runs touch most of the binary, and the kernel
/// maps file pages around each fault, so an idle agent would keep nearly
/// all of its code resident. `MADV_PAGEOUT` (Linux 5.4+; elsewhere or on
/// older kernels nothing happens) reclaims the clean pages only this
/// process maps; what is used again faults back in. Returns the bytes
/// advised. Blocking (reads `/proc/self/maps`).
pub fn shed_cold_code() -> u64 {
    #[cfg(target_os = "linux")]
    {
        // After a self-update swap both name the file " (deleted)".
        let Ok(exe) = std::fs::read_link("/proc/self/exe") else { return 0 };
        let Ok(maps) = std::fs::read_to_string("/proc/self/maps") else { return 0 };
        let mut advised = 0u64;
        for (start, end) in mappings_of(&maps, &exe.to_string_lossy()) {
            let Ok(len) = usize::try_from(end.saturating_sub(start)) else { continue };
            // SAFETY: the range is one of this process's own mappings as the
            // kernel lists it; MADV_PAGEOUT never changes their contents
            // (clean pages are dropped and fault back in, dirty ones stay).
            let r = unsafe { nix::libc::madvise(start as usize as *mut nix::libc::c_void, len, nix::libc::MADV_PAGEOUT) };
            if r == 0 {
                advised += len as u64;
            }
        }
        advised
    }
    #[cfg(not(target_os = "linux"))]
    0
}

/// (start, end) of every mapping of `path` in a `/proc/<pid>/maps` text.
#[cfg_attr(not(target_os = "linux"), allow(dead_code))]
fn mappings_of(maps: &str, path: &str) -> Vec<(u64, u64)> {
    maps.lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            let range = f.next()?;
            let name: Vec<&str> = f.skip(4).collect();
            if name.join(" ") != path {
                return None;
            }
            let (a, b) = range.split_once('-')?;
            Some((u64::from_str_radix(a, 16).ok()?, u64::from_str_radix(b, 16).ok()?))
        })
        .collect()
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Limits {
    pub memory_max_bytes: u64,
    pub cpu_max_percent: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Self { memory_max_bytes: DEFAULT_MEMORY_MAX_MIB * 1024 * 1024, cpu_max_percent: DEFAULT_CPU_MAX_PERCENT }
    }
}

/// One reading of the process's own counters.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Usage {
    pub rss_bytes: u64,
    /// User + system CPU time so far.
    pub cpu_time: Duration,
}

/// Reads this process's usage; `None` where /proc is not available
/// (Windows, or a /proc we cannot parse — the check then does nothing).
/// The reading itself is `figures::usage`, the agent's one /proc reader.
pub fn read_usage() -> Option<Usage> {
    super::figures::usage("self").map(|(rss_bytes, cpu_time)| Usage { rss_bytes, cpu_time })
}

/// What one check found.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sample {
    pub rss_bytes: u64,
    /// Percent of one core since the previous check (`None` on the first).
    pub cpu_percent: Option<f64>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    Within,
    /// Over a ceiling, not yet for long enough to act.
    Over {
        what: &'static str,
        strikes: u32,
    },
    /// Over for [`STRIKES`] checks: the agent restarts.
    Restart {
        what: &'static str,
    },
}

/// The decision, apart from the clock and /proc so it can be tested.
#[derive(Debug)]
pub struct Monitor {
    limits: Limits,
    last: Option<(Instant, Duration)>,
    memory_strikes: u32,
    cpu_strikes: u32,
}

impl Monitor {
    pub fn new(limits: Limits) -> Self {
        Self { limits, last: None, memory_strikes: 0, cpu_strikes: 0 }
    }

    pub fn observe(&mut self, now: Instant, usage: Usage) -> (Sample, Verdict) {
        let cpu_percent = self.last.and_then(|(at, cpu)| {
            let wall = now.checked_duration_since(at)?.as_secs_f64();
            (wall > 0.0).then(|| usage.cpu_time.saturating_sub(cpu).as_secs_f64() * 100.0 / wall)
        });
        self.last = Some((now, usage.cpu_time));
        let bump = |strikes: &mut u32, over: bool| *strikes = if over { strikes.saturating_add(1) } else { 0 };
        bump(&mut self.memory_strikes, usage.rss_bytes > self.limits.memory_max_bytes);
        bump(&mut self.cpu_strikes, cpu_percent.is_some_and(|p| p > f64::from(self.limits.cpu_max_percent)));
        let sample = Sample { rss_bytes: usage.rss_bytes, cpu_percent };
        let verdict = match (self.memory_strikes, self.cpu_strikes) {
            (m, _) if m >= STRIKES => Verdict::Restart { what: "memory" },
            (_, c) if c >= STRIKES => Verdict::Restart { what: "cpu" },
            (m, _) if m > 0 => Verdict::Over { what: "memory", strikes: m },
            (_, c) if c > 0 => Verdict::Over { what: "cpu", strikes: c },
            _ => Verdict::Within,
        };
        (sample, verdict)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(target_os = "linux")]
    #[test]
    fn reads_this_process_for_real() {
        let before = read_usage().expect("/proc/self readable");
        // A test binary is at least a few hundred KiB resident and far below 16 GiB.
        assert!(before.rss_bytes > 256 * 1024 && before.rss_bytes < 16 << 30, "{before:?}");
        // Burn CPU until the kernel's counter moves (it ticks at CLK_TCK).
        let start = Instant::now();
        let mut x = 0u64;
        let after = loop {
            for i in 0..1_000_000u64 {
                x = x.wrapping_mul(31).wrapping_add(i);
            }
            let u = read_usage().expect("readable");
            if u.cpu_time > before.cpu_time || start.elapsed() > Duration::from_secs(10) {
                break u;
            }
        };
        std::hint::black_box(x);
        assert!(after.cpu_time > before.cpu_time, "CPU time never moved: {before:?} → {after:?}");
        // Memory we touch shows up as resident.
        let block = vec![1u8; 64 << 20];
        let grown = read_usage().expect("readable");
        std::hint::black_box(&block);
        assert!(grown.rss_bytes >= before.rss_bytes + (48 << 20), "{before:?} → {grown:?}");
    }

    #[test]
    fn acts_only_on_a_sustained_excess() {
        let limits = Limits { memory_max_bytes: 100, cpu_max_percent: 50 };
        let mut m = Monitor::new(limits);
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        let u = |rss: u64, cpu_ms: u64| Usage { rss_bytes: rss, cpu_time: Duration::from_millis(cpu_ms) };
        assert_eq!(m.observe(at(0), u(50, 0)).1, Verdict::Within);
        // 8 s of CPU in 10 s: 80%.
        let (s, v) = m.observe(at(10), u(50, 8_000));
        assert_eq!(s.cpu_percent.map(|p| p.round()), Some(80.0));
        assert_eq!(v, Verdict::Over { what: "cpu", strikes: 1 });
        // A calm interval clears the strikes.
        assert_eq!(m.observe(at(20), u(50, 8_100)).1, Verdict::Within);
        assert_eq!(m.observe(at(30), u(200, 8_200)).1, Verdict::Over { what: "memory", strikes: 1 });
        assert_eq!(m.observe(at(40), u(200, 8_300)).1, Verdict::Over { what: "memory", strikes: 2 });
        assert_eq!(m.observe(at(50), u(200, 8_400)).1, Verdict::Restart { what: "memory" });
        let mut m = Monitor::new(limits);
        m.observe(at(0), u(1, 0));
        for s in 1..STRIKES as u64 {
            m.observe(at(s * 10), u(1, s * 9_000));
        }
        assert_eq!(m.observe(at(STRIKES as u64 * 10), u(1, STRIKES as u64 * 9_000)).1, Verdict::Restart { what: "cpu" });
    }

    #[test]
    fn finds_the_mappings_of_one_file_and_sheds_them() {
        let maps = "55d0-55e0 r--p 00000000 08:01 42   /usr/bin/deckhand-agent (deleted)\n\
                    55e0-5600 r-xp 00010000 08:01 42   /usr/bin/deckhand-agent (deleted)\n\
                    7f00-7f10 r-xp 00000000 08:01 7    /usr/lib/libc.so.6\n\
                    7ff0-7ff8 rw-p 00000000 00:00 0    [stack]\n\
                    garbage\n";
        assert_eq!(mappings_of(maps, "/usr/bin/deckhand-agent (deleted)"), vec![(0x55d0, 0x55e0), (0x55e0, 0x5600)]);
        assert!(mappings_of(maps, "/usr/bin/deckhand-agent").is_empty());
        if cfg!(target_os = "linux") {
            // The test binary's own code: advised, and it keeps running.
            assert!(shed_cold_code() > 0);
            assert_eq!(mappings_of(maps, "/usr/lib/libc.so.6").len(), 1);
        }
    }
}
