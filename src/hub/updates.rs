//! Agent self-update on the hub (docs/operations.md, "Updates"): the
//! builds it was given (`[agent_update] builds_dir`: one TOML manifest per
//! build naming the file, version, OS, architecture, sha256 and ed25519
//! signature), the fleet policy (target version, UTC time window, percent
//! of connected agents updating at a time), which agent is offered what,
//! the chunks it fetches, and the outcome each agent reports.
//!
//! The hub never needs the signing key and does not check signatures:
//! agents do, against the key pinned in their own config. It checks each
//! build's sha256 at start so an operator's mistake shows up there.
//! Progress lives in the store (`Store::claim_update`), so replicas share
//! the offer slots and a failure outlives a hub restart; each hub reads
//! the fleet-wide counts at most once a second, so agents waiting for a
//! slot cost no store traffic.

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use base64::Engine;
use serde::Deserialize;
use sha2::{Digest, Sha256};

pub use crate::hub::store::AgentUpdateState;
use crate::hub::store::{Store, stamp};
use crate::protocol::{HostFacts, HubMsg, MAX_UPDATE_BYTES, MAX_UPDATE_TEXT, UPDATE_CHUNK_BYTES};

/// How stale each hub's copy of the fleet-wide counts may be.
const PROGRESS_READ_EVERY: Duration = Duration::from_secs(1);

/// Most builds read from `builds_dir`.
pub const MAX_BUILDS: usize = 64;
/// An agent offered a build that neither reconnects with it nor reports a
/// failure within this is counted as failed, freeing its slot.
pub const IN_FLIGHT_TIMEOUT: Duration = Duration::from_secs(600);

#[derive(Debug, thiserror::Error)]
pub enum UpdateConfigError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{path}: {message}")]
    Manifest { path: PathBuf, message: String },
    #[error("{0} holds more than {MAX_BUILDS} build manifests")]
    TooMany(PathBuf),
    #[error("window {0:?} must look like HH:MM-HH:MM (UTC)")]
    Window(String),
    #[error("percent {0} is outside 1..=100")]
    Percent(u8),
    #[error("no build of version {0:?} in builds_dir")]
    NoSuchVersion(String),
}

/// `[agent_update]` in hub.toml.
#[derive(Debug, Clone, Default, serde::Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct AgentUpdateFile {
    /// Directory of build manifests (`*.toml`).
    pub builds_dir: PathBuf,
    /// The version agents should run; absent: builds are served, none offered.
    pub version: Option<String>,
    /// Percent of connected agents updating at once (1..=100, default 10).
    pub percent: Option<u8>,
    /// UTC window offers are made in, `HH:MM-HH:MM` (may wrap midnight).
    pub window: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Manifest {
    version: String,
    os: String,
    arch: String,
    /// Relative to the manifest's directory.
    file: PathBuf,
    sha256: String,
    signature: String,
}

#[derive(Debug, Clone)]
pub struct Build {
    pub version: String,
    pub os: String,
    pub arch: String,
    pub path: PathBuf,
    pub size: u64,
    pub sha256: String,
    pub signature: String,
}

/// This hub's copy of the fleet-wide counts (see [`PROGRESS_READ_EVERY`]).
#[derive(Debug, Default)]
struct Progress {
    in_progress: i64,
    online: i64,
    read_at: Option<Instant>,
}

/// Builds, policy and progress; one per hub.
#[derive(Debug)]
pub struct Catalog {
    builds: Vec<Build>,
    target: Option<String>,
    percent: u8,
    /// Minutes after midnight UTC, [start, end).
    window: Option<(u32, u32)>,
    progress: Mutex<Progress>,
}

fn parse_window(w: &str) -> Result<(u32, u32), UpdateConfigError> {
    let bad = || UpdateConfigError::Window(w.chars().take(32).collect());
    let minutes = |hm: &str| -> Option<u32> {
        let (h, m) = hm.trim().split_once(':')?;
        let (h, m): (u32, u32) = (h.parse().ok()?, m.parse().ok()?);
        (h < 24 && m < 60).then_some(h * 60 + m)
    };
    let (a, b) = w.split_once('-').ok_or_else(bad)?;
    Ok((minutes(a).ok_or_else(bad)?, minutes(b).ok_or_else(bad)?))
}

impl Catalog {
    pub fn load(file: &AgentUpdateFile) -> Result<Self, UpdateConfigError> {
        let dir = &file.builds_dir;
        let entries = std::fs::read_dir(dir).map_err(|source| UpdateConfigError::Io { path: dir.clone(), source })?;
        let mut builds = Vec::new();
        for entry in entries {
            let path = entry.map_err(|source| UpdateConfigError::Io { path: dir.clone(), source })?.path();
            if path.extension().is_none_or(|e| e != "toml") {
                continue;
            }
            if builds.len() == MAX_BUILDS {
                return Err(UpdateConfigError::TooMany(dir.clone()));
            }
            builds.push(load_build(&path)?);
        }
        let percent = file.percent.unwrap_or(10);
        if !(1..=100).contains(&percent) {
            return Err(UpdateConfigError::Percent(percent));
        }
        let window = file.window.as_deref().map(parse_window).transpose()?;
        if let Some(v) = &file.version
            && !builds.iter().any(|b| &b.version == v)
        {
            return Err(UpdateConfigError::NoSuchVersion(v.clone()));
        }
        Ok(Self { builds, target: file.version.clone(), percent, window, progress: Mutex::default() })
    }

    fn progress(&self) -> std::sync::MutexGuard<'_, Progress> {
        self.progress.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn in_window(&self, now: chrono::DateTime<chrono::Utc>) -> bool {
        use chrono::Timelike;
        let Some((start, end)) = self.window else { return true };
        let m = now.hour() * 60 + now.minute();
        if start <= end { (start..end).contains(&m) } else { m >= start || m < end }
    }

    fn build(&self, version: &str, os: &str, arch: &str) -> Option<&Build> {
        self.builds.iter().find(|b| b.version == version && b.os == os && b.arch == arch)
    }

    /// What to offer `instance_id` now, if anything: the target version for
    /// its platform, inside the window, while fewer than `percent` of the
    /// online fleet (every replica's agents) are updating, and not a
    /// version that failed there. Store errors offer nothing (logged).
    pub async fn offer_for(
        &self,
        store: &dyn Store,
        instance_id: &str,
        facts: &HostFacts,
        now: chrono::DateTime<chrono::Utc>,
    ) -> Option<HubMsg> {
        let target = self.target.as_deref()?;
        if !facts.self_update || facts.agent_version == target || !self.in_window(now) {
            return None;
        }
        let build = self.build(target, &facts.os_type, &facts.arch)?;
        let slots = self.free_slots(store).await?;
        let stale_before = stamp(now - chrono::Duration::from_std(IN_FLIGHT_TIMEOUT).unwrap_or_default());
        let in_progress = match store.claim_update(instance_id, target, slots, &stale_before).await {
            Ok(Some(n)) => n,
            Ok(None) => return None,
            Err(e) => {
                tracing::warn!(instance_id, error = %e, "cannot record an agent update offer");
                return None;
            }
        };
        self.progress().in_progress = in_progress;
        tracing::info!(instance_id, version = target, in_progress, slots, "offering agent update");
        Some(HubMsg::UpdateOffer {
            version: build.version.clone(),
            size: build.size,
            sha256: build.sha256.clone(),
            signature: build.signature.clone(),
        })
    }

    /// The slots (`percent` of the online fleet, at least one) when this
    /// hub's copy of the counts says one may be free; `None` otherwise.
    async fn free_slots(&self, store: &dyn Store) -> Option<i64> {
        let fresh = self.progress().read_at.is_some_and(|t| t.elapsed() < PROGRESS_READ_EVERY);
        if !fresh {
            match store.update_progress().await {
                Ok((in_progress, online)) => *self.progress() = Progress { in_progress, online, read_at: Some(Instant::now()) },
                Err(e) => {
                    tracing::warn!(error = %e, "cannot read agent update progress");
                    return None;
                }
            }
        }
        let p = self.progress();
        let slots = (p.online.max(0) * i64::from(self.percent) / 100).max(1);
        (p.in_progress < slots).then_some(slots)
    }

    /// The chunk of `version` for this platform at `offset` (only to an
    /// agent it was offered to).
    pub async fn chunk(&self, store: &dyn Store, instance_id: &str, facts: &HostFacts, version: &str, offset: u64) -> Option<HubMsg> {
        let offered = match self.state_of(store, instance_id).await {
            Some(AgentUpdateState::InProgress { version: v }) => v == version,
            _ => false,
        };
        if !offered {
            return None;
        }
        let build = self.build(version, &facts.os_type, &facts.arch)?;
        if offset >= build.size {
            return None;
        }
        let len = (build.size - offset).min(UPDATE_CHUNK_BYTES as u64) as usize;
        let path = build.path.clone();
        let data = tokio::task::spawn_blocking(move || -> std::io::Result<Vec<u8>> {
            use std::io::{Read, Seek};
            let mut f = std::fs::File::open(path)?;
            f.seek(std::io::SeekFrom::Start(offset))?;
            let mut buf = vec![0u8; len];
            f.read_exact(&mut buf)?;
            Ok(buf)
        })
        .await
        .ok()?
        .map_err(|e| tracing::warn!(instance_id, version, error = %e, "cannot read agent build"))
        .ok()?;
        Some(HubMsg::UpdateChunk { version: version.to_string(), offset, data_b64: base64::engine::general_purpose::STANDARD.encode(data) })
    }

    /// The agent's own word on an update.
    pub async fn result(&self, store: &dyn Store, instance_id: &str, version: &str, ok: bool, error: &str) {
        let mut version = version.to_string();
        crate::protocol::truncate_text(&mut version, 64);
        let failure = (!ok).then(|| {
            let mut error = error.to_string();
            crate::protocol::truncate_text(&mut error, MAX_UPDATE_TEXT);
            error
        });
        if let Err(e) = store.settle_update(instance_id, &version, failure.as_deref()).await.map(drop) {
            tracing::warn!(instance_id, error = %e, "cannot record an agent update result");
            return;
        }
        if ok {
            tracing::info!(instance_id, version, "agent updated");
        } else {
            // The agent's own text is bounded and kept for the API; the log
            // names the failure without echoing it.
            tracing::warn!(instance_id, version, "agent update failed on the agent (DescribeCloudAssistantStatus shows why)");
        }
    }

    /// An agent said hello: running the target version settles its offer.
    pub async fn connected(&self, store: &dyn Store, instance_id: &str, facts: &HostFacts) {
        if self.target.as_deref() != Some(facts.agent_version.as_str()) {
            return;
        }
        match store.settle_update(instance_id, &facts.agent_version, None).await {
            Ok(true) => tracing::info!(instance_id, version = %facts.agent_version, "agent reconnected with the new version"),
            Ok(false) => {}
            Err(e) => tracing::warn!(instance_id, error = %e, "cannot record an agent update result"),
        }
    }

    /// One instance's update state (see [`Catalog::states_of`]).
    pub async fn state_of(&self, store: &dyn Store, instance_id: &str) -> Option<AgentUpdateState> {
        self.states_of(store, &[instance_id.to_string()]).await.pop().map(|(_, s)| s)
    }

    /// The update state of those of `instance_ids` that have one (a store
    /// error shows none, logged).
    pub async fn states_of(&self, store: &dyn Store, instance_ids: &[String]) -> Vec<(String, AgentUpdateState)> {
        store.update_states(instance_ids).await.unwrap_or_else(|e| {
            tracing::warn!(error = %e, "cannot read agent update states");
            Vec::new()
        })
    }
}

fn load_build(path: &Path) -> Result<Build, UpdateConfigError> {
    let bad = |message: String| UpdateConfigError::Manifest { path: path.to_path_buf(), message };
    let text = std::fs::read_to_string(path).map_err(|source| UpdateConfigError::Io { path: path.to_path_buf(), source })?;
    let m: Manifest = toml::from_str(&text).map_err(|e| bad(e.to_string()))?;
    crate::agent::update::Offer::parse(&m.version, 1, &m.sha256, &m.signature).map_err(|e| bad(e.to_string()))?;
    for (field, v) in [("os", &m.os), ("arch", &m.arch)] {
        if v.is_empty() || v.len() > 32 || !v.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
            return Err(bad(format!("{field} must be like linux / x86_64")));
        }
    }
    let file = path.parent().unwrap_or(Path::new(".")).join(&m.file);
    let body = std::fs::read(&file).map_err(|source| UpdateConfigError::Io { path: file.clone(), source })?;
    if body.len() as u64 > MAX_UPDATE_BYTES || body.is_empty() {
        return Err(bad(format!("{} is {} bytes; builds are 1..={MAX_UPDATE_BYTES}", file.display(), body.len())));
    }
    let digest = hex::encode(Sha256::digest(&body));
    if !digest.eq_ignore_ascii_case(&m.sha256) {
        return Err(bad(format!("sha256 of {} is {digest}, not the manifest's", file.display())));
    }
    Ok(Build { version: m.version, os: m.os, arch: m.arch, path: file, size: body.len() as u64, sha256: digest, signature: m.signature })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn catalog(dir: &Path, percent: u8, window: Option<&str>) -> Catalog {
        std::fs::write(dir.join("agent-2"), b"build two").unwrap();
        let sig = base64::engine::general_purpose::STANDARD.encode([7u8; 64]);
        let digest = hex::encode(Sha256::digest(b"build two"));
        std::fs::write(
            dir.join("two.toml"),
            format!(
                "version = \"2.0\"\nos = \"linux\"\narch = \"x86_64\"\nfile = \"agent-2\"\nsha256 = \"{digest}\"\nsignature = \"{sig}\"\n"
            ),
        )
        .unwrap();
        let file =
            AgentUpdateFile { builds_dir: dir.into(), version: Some("2.0".into()), percent: Some(percent), window: window.map(Into::into) };
        Catalog::load(&file).unwrap()
    }

    #[test]
    fn windows_and_bad_manifests() {
        let dir = tempfile::tempdir().unwrap();
        let c = catalog(dir.path(), 100, Some("22:00-02:00"));
        let at = |h: u32| chrono::NaiveDate::from_ymd_opt(2026, 1, 1).unwrap().and_hms_opt(h, 0, 0).unwrap().and_utc();
        assert!(c.in_window(at(23)) && c.in_window(at(1)) && !c.in_window(at(12)));
        assert!(matches!(parse_window("25:00-01:00"), Err(UpdateConfigError::Window(_))));
        std::fs::write(dir.path().join("agent-2"), b"changed").unwrap();
        let e = Catalog::load(&AgentUpdateFile { builds_dir: dir.path().into(), ..Default::default() }).unwrap_err().to_string();
        assert!(e.contains("not the manifest's"), "{e}");
    }
}
