//! The write path: backup (timestamped), atomic replace, restart the kubelet, wait for its
//! healthz, and on failure restore the backup and restart again. Applying a plan that
//! changes nothing writes nothing and restarts nothing.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::KubeletError;
use super::health::{HealthUrl, wait_healthy};
use super::plan::Plan;
use super::service::ServiceManager;

/// Backups kept per config file; older ones are pruned so repeated applies cannot fill a disk.
pub const MAX_BACKUPS: usize = 10;
pub const MAX_HEALTH_TIMEOUT: Duration = Duration::from_secs(600);

#[derive(Debug, Clone)]
pub struct ApplyOptions {
    pub unit: String,
    pub health_url: HealthUrl,
    pub health_timeout: Duration,
    pub poll_interval: Duration,
    /// Where backups go; default: next to the config file.
    pub backup_dir: Option<PathBuf>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ApplyOutcome {
    /// The config already held the plan: nothing written, no restart.
    Unchanged,
    /// Written, kubelet restarted and healthy.
    Applied { backup: PathBuf },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> KubeletError + '_ {
    move |source| KubeletError::Io { path: path.to_path_buf(), source }
}

/// Refuse files nobody may write: someone made them read-only on purpose (root ignores
/// permission bits, so the bits are checked, not the write call's result).
pub fn check_writable(path: &Path) -> Result<std::fs::Metadata, KubeletError> {
    let meta = std::fs::metadata(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => KubeletError::ConfigMissing(path.to_path_buf()),
        _ => KubeletError::Io { path: path.to_path_buf(), source: e },
    })?;
    if meta.permissions().readonly() {
        return Err(KubeletError::ConfigReadOnly(path.to_path_buf()));
    }
    Ok(meta)
}

/// Copy `path` to `<dir>/<name>.deckhand-<UTC timestamp>.bak`, then prune old backups.
pub fn backup(path: &Path, dir: Option<&Path>) -> Result<PathBuf, KubeletError> {
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("kubelet-config");
    let dir = dir.map(Path::to_path_buf).or_else(|| path.parent().map(Path::to_path_buf)).unwrap_or_else(|| PathBuf::from("."));
    let stamp = chrono::Utc::now().format("%Y%m%dT%H%M%S%.6fZ");
    let dest = dir.join(format!("{name}.deckhand-{stamp}.bak"));
    std::fs::copy(path, &dest).map_err(io(&dest))?;
    std::fs::File::open(&dest).and_then(|f| f.sync_all()).map_err(io(&dest))?;
    prune_backups(&dir, name);
    tracing::info!(config = %path.display(), backup = %dest.display(), "kubelet config backed up");
    Ok(dest)
}

fn prune_backups(dir: &Path, name: &str) {
    let prefix = format!("{name}.deckhand-");
    let Ok(rd) = std::fs::read_dir(dir) else { return };
    let mut found: Vec<PathBuf> = rd
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with(&prefix) && n.ends_with(".bak")))
        .collect();
    // Timestamps sort lexically.
    found.sort();
    while found.len() > MAX_BACKUPS {
        let old = found.remove(0);
        if let Err(e) = std::fs::remove_file(&old) {
            tracing::warn!(backup = %old.display(), error = %e, "could not prune old backup");
        }
    }
}

/// Replace `path` with `text` atomically: temp file in the same directory, same mode and
/// owner, fsync, rename, fsync the directory.
pub fn atomic_write(path: &Path, text: &str) -> Result<(), KubeletError> {
    let meta = std::fs::metadata(path).ok();
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("kubelet-config");
    let tmp = dir.join(format!(".{name}.deckhand-tmp"));
    let _ = std::fs::remove_file(&tmp);
    let mut f = std::fs::OpenOptions::new().write(true).create_new(true).open(&tmp).map_err(io(&tmp))?;
    let result = (|| {
        f.write_all(text.as_bytes())?;
        if let Some(m) = &meta {
            f.set_permissions(m.permissions())?;
            #[cfg(unix)]
            {
                use std::os::unix::fs::MetadataExt;
                // Best effort: only root can give the file back to another owner.
                let _ = std::os::unix::fs::fchown(&f, Some(m.uid()), Some(m.gid()));
            }
        }
        f.sync_all()?;
        std::fs::rename(&tmp, path)?;
        std::fs::File::open(dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result.map_err(io(path))
}

/// Apply `plan`: write, restart, wait healthy; roll back on failure.
pub async fn apply<S: ServiceManager>(plan: &Plan, opts: &ApplyOptions, svc: &S) -> Result<ApplyOutcome, KubeletError> {
    if !plan.changed {
        tracing::info!(config = %plan.config_path.display(), "kubelet reservation already applied; nothing to do");
        return Ok(ApplyOutcome::Unchanged);
    }
    if plan.offline {
        return Err(KubeletError::NoConfigFound("an offline plan has no config file to apply to".into()));
    }
    if opts.health_timeout.is_zero() || opts.health_timeout > MAX_HEALTH_TIMEOUT {
        return Err(KubeletError::InvalidPlan(format!("health timeout must be 1s..=600s, got {:?}", opts.health_timeout)));
    }
    let path = &plan.config_path;
    check_writable(path)?;
    // The plan was computed from a snapshot; refuse if someone changed the file since.
    let current = std::fs::read_to_string(path).map_err(io(path))?;
    if current != plan.old_text {
        return Err(KubeletError::Refused(format!("{} changed since the plan was made; plan again", path.display())));
    }
    let backup_path = backup(path, opts.backup_dir.as_deref())?;
    atomic_write(path, &plan.new_text)?;
    tracing::info!(config = %path.display(), policy = %plan.policy, "kubelet config written; restarting");

    let failure = match svc.restart(&opts.unit).await {
        Err(reason) => Some(Err(reason)),
        Ok(()) => match wait_healthy(&opts.health_url, opts.health_timeout, opts.poll_interval).await {
            Ok(()) => None,
            Err(last) => Some(Ok(last)),
        },
    };
    let Some(failure) = failure else {
        tracing::info!(config = %path.display(), "kubelet healthy with new reservation");
        return Ok(ApplyOutcome::Applied { backup: backup_path });
    };

    tracing::warn!(config = %path.display(), backup = %backup_path.display(), ?failure, "kubelet unhealthy after change; rolling back");
    let original = std::fs::read_to_string(&backup_path).map_err(io(&backup_path))?;
    atomic_write(path, &original)?;
    let recovered = match svc.restart(&opts.unit).await {
        Ok(()) => wait_healthy(&opts.health_url, opts.health_timeout, opts.poll_interval).await.is_ok(),
        Err(e) => {
            tracing::error!(unit = %opts.unit, error = %e, "restart after rollback failed");
            false
        }
    };
    match failure {
        Err(reason) => Err(KubeletError::RestartFailed { unit: opts.unit.clone(), reason, backup: backup_path }),
        Ok(last) => {
            tracing::error!(url = %opts.health_url, last = %last, recovered, "rolled back kubelet config");
            Err(KubeletError::Unhealthy {
                url: opts.health_url.to_string(),
                secs: opts.health_timeout.as_secs(),
                backup: backup_path,
                recovered,
            })
        }
    }
}
