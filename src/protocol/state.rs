//! Run states and the rule that folds per-instance states into one
//! invocation status (seed 001, "命令执行状态").

use serde::{Deserialize, Serialize};

/// State of one record (one run on one instance), named as Cloud Assistant's
/// `InvokeRecordStatus` / `InvocationStatus` per instance.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Hash)]
pub enum RecordStatus {
    /// Accepted by the hub, not yet confirmed running on the instance.
    Pending,
    /// Periodic invocation waiting for its next fire.
    Scheduled,
    Running,
    /// Stop requested, not yet confirmed.
    Stopping,
    /// Ran to completion, whatever the exit code.
    Finished,
    /// Could not start, or the instance could not be reached.
    Failed,
    Stopped,
    Timeout,
}

impl RecordStatus {
    pub fn is_final(self) -> bool {
        matches!(self, Self::Finished | Self::Failed | Self::Stopped | Self::Timeout)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "Pending",
            Self::Scheduled => "Scheduled",
            Self::Running => "Running",
            Self::Stopping => "Stopping",
            Self::Finished => "Finished",
            Self::Failed => "Failed",
            Self::Stopped => "Stopped",
            Self::Timeout => "Timeout",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "Pending" => Self::Pending,
            "Scheduled" => Self::Scheduled,
            "Running" => Self::Running,
            "Stopping" => Self::Stopping,
            "Finished" => Self::Finished,
            "Failed" => Self::Failed,
            "Stopped" => Self::Stopped,
            "Timeout" => Self::Timeout,
            _ => return None,
        })
    }
}

/// Fold per-instance states into the invocation's overall status.
///
/// Seed 001's rules, in order of precedence:
/// - any instance Running (or Stopping) → `Running`
/// - any still Pending / Scheduled → `Pending` / `Scheduled` (not yet ended)
/// - all Finished, or Finished mixed with Stopped → `Finished`
/// - all Failed (a Timeout is a failure of the run) → `Failed`
/// - all Stopped → `Stopped`
/// - otherwise, some failed → `PartialFailed`
///
/// Returns a string because `PartialFailed` exists only at invocation level.
pub fn aggregate_invocation_status(states: &[RecordStatus]) -> &'static str {
    use RecordStatus::*;
    if states.is_empty() {
        return "Pending";
    }
    let any = |s: RecordStatus| states.iter().any(|x| *x == s);
    let all = |f: &dyn Fn(RecordStatus) -> bool| states.iter().all(|x| f(*x));
    if any(Running) {
        return "Running";
    }
    if any(Stopping) {
        return "Stopping";
    }
    if any(Pending) {
        return "Pending";
    }
    if any(Scheduled) {
        return "Scheduled";
    }
    let failed = |s: RecordStatus| matches!(s, Failed | Timeout);
    if all(&|s| s == Stopped) {
        return "Stopped";
    }
    if all(&failed) {
        return "Failed";
    }
    if states.iter().any(|s| failed(*s)) {
        return "PartialFailed";
    }
    // Only Finished and Stopped remain, at least one Finished.
    "Finished"
}
