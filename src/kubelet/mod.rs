//! Kubelet reserved resources: compute `kubeReserved` / `systemReserved` / `evictionHard` for a
//! node from a named policy (eks, gke, aks, ack, tke, cce, explicit; ack and aks by the node's
//! Kubernetes version), validate that the node keeps
//! positive allocatable, and apply the result to the kubelet's config file safely (backup,
//! atomic write, restart, health wait, rollback). See docs/kubelet.md.
//!
//! Layout: `quantity` (Kubernetes quantities), `version` (Kubernetes versions), `policy` +
//! `explicit` (pure formulas), `pasted` (settings as operators paste them),
//! `validate` (allocatable and refusals), `config` + `yaml` (config file editing), `health`
//! (tiny HTTP GET), `service` (systemd boundary), `plan` (plan + diff), `apply` (the write
//! path), `facts` (node detection), `cli` and `invocation` (surfaces for the binaries/agent).

use std::path::PathBuf;

pub(crate) mod apply;
pub mod cli;
pub(crate) mod config;
pub mod explicit;
pub(crate) mod facts;
pub(crate) mod health;
pub mod invocation;
pub mod pasted;
pub mod plan;
pub mod policy;
pub(crate) mod quantity;
pub mod service;
pub(crate) mod validate;
pub(crate) mod version;
pub(crate) mod yaml;

pub use cli::{KubeletCmd, run_cmd};
pub use invocation::{InvocationOutcome, run_invocation};

/// Everything that can go wrong planning or applying a reservation.
#[derive(Debug, thiserror::Error)]
pub enum KubeletError {
    #[error("invalid kubelet plan: {0}")]
    InvalidPlan(String),
    #[error("plan refused: {0}")]
    Refused(String),
    #[error("kubelet config {0} does not exist")]
    ConfigMissing(PathBuf),
    #[error("no kubelet config found (looked for {0}); pass --config")]
    NoConfigFound(String),
    #[error("kubelet config {path} is malformed: {reason}")]
    ConfigMalformed { path: PathBuf, reason: String },
    #[error("kubelet config {0} is read-only (no write permission bits); refusing to change it")]
    ConfigReadOnly(PathBuf),
    #[error("I/O on {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("restarting {unit} failed: {reason}; config rolled back to {backup}")]
    RestartFailed { unit: String, reason: String, backup: PathBuf },
    #[error(
        "kubelet did not answer healthy at {url} within {secs}s after the change; rolled back to {backup} and restarted ({})",
        if *recovered { "healthy again" } else { "STILL UNHEALTHY after rollback" }
    )]
    Unhealthy { url: String, secs: u64, backup: PathBuf, recovered: bool },
}

impl KubeletError {
    /// Stable error code reported to the hub (`ErrorCode` of an invocation).
    pub fn code(&self) -> &'static str {
        match self {
            KubeletError::InvalidPlan(_) | KubeletError::Refused(_) => "InvalidKubeletPlan",
            KubeletError::ConfigMissing(_) | KubeletError::NoConfigFound(_) => "KubeletConfigMissing",
            KubeletError::ConfigMalformed { .. } => "KubeletConfigMalformed",
            KubeletError::ConfigReadOnly(_) => "KubeletConfigReadOnly",
            KubeletError::Io { .. } => "KubeletIoError",
            KubeletError::RestartFailed { .. } => "KubeletRestartFailed",
            KubeletError::Unhealthy { .. } => "KubeletUnhealthy",
        }
    }
}
