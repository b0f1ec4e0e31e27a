//! Service-manager integration: systemd readiness and watchdog, and the
//! status file behind `deckhand-agent status`.
//!
//! The watchdog is fed only while the agent's main loop is turning: the
//! loop stamps [`Liveness`] on every pass, and the feeder skips a beat
//! when the stamp is stale, so a wedged loop gets the agent restarted.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

/// How often the main loop stamps liveness even when idle.
pub const LOOP_TICK: Duration = Duration::from_secs(5);

fn now_ms() -> u64 {
    chrono::Utc::now().timestamp_millis().max(0) as u64
}

#[derive(Default)]
pub struct Liveness {
    last_ms: AtomicU64,
}

impl Liveness {
    pub fn stamp(&self) {
        self.last_ms.store(now_ms(), Ordering::Relaxed);
    }

    #[cfg(unix)]
    fn age(&self) -> Duration {
        Duration::from_millis(now_ms().saturating_sub(self.last_ms.load(Ordering::Relaxed)))
    }
}

/// Tells systemd we are ready (no-op without NOTIFY_SOCKET).
pub fn notify_ready() {
    #[cfg(unix)]
    if let Err(e) = sd_notify::notify(false, &[sd_notify::NotifyState::Ready]) {
        tracing::debug!(error = %e, "sd_notify READY failed");
    }
}

pub fn notify_stopping() {
    #[cfg(unix)]
    let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Stopping]);
}

/// Feeds the systemd watchdog at half its interval while the main loop is
/// alive. Returns immediately when no watchdog is configured.
pub fn spawn_watchdog(live: Arc<Liveness>, shutdown: CancellationToken) {
    #[cfg(unix)]
    {
        let Some(usec) = watchdog_usec() else { return };
        let interval = Duration::from_micros(usec);
        // The loop stamps every LOOP_TICK; allow two missed stamps.
        let stale_after = (LOOP_TICK * 3).max(interval / 2);
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(interval / 2) => {}
                }
                if live.age() <= stale_after {
                    let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Watchdog]);
                } else {
                    tracing::error!(age_ms = live.age().as_millis() as u64, "main loop stalled; not feeding the watchdog");
                }
            }
        });
    }
    #[cfg(not(unix))]
    let _ = (live, shutdown);
}

/// The watchdog interval, by libsystemd's rule: `WATCHDOG_USEC` set, and
/// `WATCHDOG_PID` either unset or ours (the sd-notify crate insists on
/// the PID being present; systemd always sets it, but wrappers may not).
#[cfg(unix)]
fn watchdog_usec() -> Option<u64> {
    let usec: u64 = std::env::var("WATCHDOG_USEC").ok()?.parse().ok().filter(|u| *u > 0)?;
    match std::env::var("WATCHDOG_PID").ok().map(|p| p.parse::<u32>()) {
        None => Some(usec),
        Some(Ok(pid)) if pid == std::process::id() => Some(usec),
        _ => None,
    }
}

/// What `deckhand-agent status` prints.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Status {
    pub pid: u32,
    pub hub: String,
    pub instance_id: String,
    pub connected: bool,
    pub last_heartbeat_ack: String,
    pub running: Vec<String>,
    pub journal_backlog: usize,
    pub open_invocations: usize,
    pub updated_at: String,
    /// Why the journal cannot be written, while it cannot (the agent is degraded).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub journal_degraded: Option<String>,
    /// Journal changes (reports, acks) held in memory until the disk takes them.
    #[serde(default)]
    pub journal_held: usize,
    /// The agent's own figures (memory, CPU, frames, runs; issue #21).
    #[serde(default)]
    pub figures: super::figures::Figures,
    /// The agent's own resident memory at the last self-check, and its ceiling.
    #[serde(default)]
    pub rss_bytes: u64,
    #[serde(default)]
    pub memory_max_bytes: u64,
    /// The agent's own CPU use over the last check interval, percent of one core.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_percent: Option<f64>,
    #[serde(default)]
    pub cpu_max_percent: u32,
}

/// status.json is padded to this size, so it can be rewritten in place when
/// the state dir is full (the padding is JSON whitespace).
const STATUS_RESERVE: usize = 16 * 1024;

pub fn status_path(state_dir: &Path) -> PathBuf {
    state_dir.join("status.json")
}

/// Best effort: the status file is informational, never fatal.
pub fn write_status(state_dir: &Path, s: &Status) {
    let path = status_path(state_dir);
    let tmp = path.with_extension("json.tmp");
    let Ok(mut body) = serde_json::to_vec_pretty(s) else { return };
    if body.len() < STATUS_RESERVE {
        body.resize(STATUS_RESERVE - 1, b' ');
        body.push(b'\n');
    }
    if std::fs::write(&tmp, &body).and_then(|_| std::fs::rename(&tmp, &path)).is_ok() {
        return;
    }
    let _ = std::fs::remove_file(&tmp);
    // A full disk: overwrite the existing (padded) file in place, which
    // needs no new blocks, so `deckhand-agent status` can still say so.
    let in_place = std::fs::OpenOptions::new().write(true).open(&path).and_then(|mut f| {
        use std::io::Write;
        let len = f.metadata()?.len();
        if (body.len() as u64) > len {
            return Err(std::io::Error::other("status larger than the file it would overwrite"));
        }
        f.write_all(&body)?;
        f.set_len(body.len() as u64)
    });
    if let Err(e) = in_place {
        tracing::debug!(error = %e, "could not write status file");
    }
}

pub fn read_status(state_dir: &Path) -> std::io::Result<Status> {
    let b = std::fs::read(status_path(state_dir))?;
    serde_json::from_slice(&b).map_err(std::io::Error::other)
}
