//! The service-manager boundary: restarting the kubelet. Production uses `systemctl`; tests
//! use a stand-in, because a real kubelet and systemd cannot exist in the test environment.

use std::future::Future;
use std::time::Duration;

/// Bound on one `systemctl restart` (kubelet stops within its own shutdown grace).
pub const RESTART_TIMEOUT: Duration = Duration::from_secs(120);

/// Something that can restart a unit.
pub trait ServiceManager: Send + Sync {
    fn restart(&self, unit: &str) -> impl Future<Output = Result<(), String>> + Send;
}

/// `systemctl restart <unit>`.
#[derive(Debug, Clone, Default)]
pub struct Systemctl;

impl ServiceManager for Systemctl {
    async fn restart(&self, unit: &str) -> Result<(), String> {
        if unit.is_empty() || unit.len() > 256 || unit.starts_with('-') {
            return Err(format!("invalid unit name {unit:?}"));
        }
        tracing::info!(unit, "restarting via systemctl");
        let child = tokio::process::Command::new("systemctl").args(["restart", "--", unit]).kill_on_drop(true).output();
        let out = tokio::time::timeout(RESTART_TIMEOUT, child)
            .await
            .map_err(|_| format!("systemctl restart {unit} did not finish within {RESTART_TIMEOUT:?}"))?
            .map_err(|e| format!("cannot run systemctl: {e}"))?;
        if out.status.success() {
            Ok(())
        } else {
            let err = String::from_utf8_lossy(&out.stderr);
            Err(format!("systemctl restart {unit} exited {}: {}", out.status, err.trim().chars().take(500).collect::<String>()))
        }
    }
}
