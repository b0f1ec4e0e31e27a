//! The statuses of the three levels Cloud Assistant reports (seed 001,
//! "执行状态"): per instance (and per run) [`InvocationStatus`], from which
//! the record level [`InvokeRecordStatus`] follows; and the invocation
//! level, [`InvocationOverall`] (current `InvocationStatus`) and
//! [`InvokeStatus`] (legacy), folded from per-instance counts.

use super::codec::named_enum;

named_enum! {
    /// Per-instance (and per-run) `InvocationStatus`: exactly Alibaba's
    /// twelve documented values. This is what deckhand stores for each
    /// target and each record; every other status is derived from it.
    pub enum InvocationStatus as "InvocationStatus" {
        /// Accepted by the hub; being sent, or sent and not yet started.
        Pending = "Pending",
        /// A boot-triggered invocation armed on the instance, waiting for the boot.
        Scheduled = "Scheduled",
        /// The command type or a parameter is invalid for this instance: it could not start.
        Invalid = "Invalid",
        /// Could not be sent: not delivered within the delivery timeout, or the instance is gone.
        Aborted = "Aborted",
        Running = "Running",
        /// Exited 0.
        Success = "Success",
        /// Exited with a code other than 0 (or an apply that was refused or rolled back).
        Failed = "Failed",
        /// The run could not complete because of an error (for example the agent died mid-run).
        Error = "Error",
        /// Killed because it outlived its timeout.
        Timeout = "Timeout",
        /// Stopped before it started.
        Cancelled = "Cancelled",
        /// Stop requested, not yet confirmed by the agent.
        Stopping = "Stopping",
        /// Stopped while running.
        Terminated = "Terminated",
    }
}

named_enum! {
    /// Record level `InvokeRecordStatus` (DescribeInvocationResults). There
    /// is no `Timeout` here: a timed-out run is `Failed` (seed 001,
    /// CreateCommand docs). deckhand also answers `Pending`, `Scheduled`
    /// and `Stopping` for runs not yet settled.
    pub enum InvokeRecordStatus as "InvokeRecordStatus" {
        Pending = "Pending",
        Scheduled = "Scheduled",
        Running = "Running",
        Stopping = "Stopping",
        Finished = "Finished",
        Failed = "Failed",
        Stopped = "Stopped",
    }
}

named_enum! {
    /// Invocation level, current `InvocationStatus` (DescribeInvocations).
    pub enum InvocationOverall as "InvocationStatus" {
        Pending = "Pending",
        Scheduled = "Scheduled",
        Running = "Running",
        Success = "Success",
        Failed = "Failed",
        PartialFailed = "PartialFailed",
        Stopping = "Stopping",
        Stopped = "Stopped",
    }
}

named_enum! {
    /// Invocation level, legacy `InvokeStatus` (seed 001's aggregation of
    /// record states).
    pub enum InvokeStatus as "InvokeStatus" {
        Pending = "Pending",
        Scheduled = "Scheduled",
        Running = "Running",
        Stopping = "Stopping",
        Finished = "Finished",
        Failed = "Failed",
        PartialFailed = "PartialFailed",
        Stopped = "Stopped",
    }
}

/// How a settled run ended, as the invocation-level rules group them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Succeeded,
    /// Invalid, Aborted, Failed, Error, Timeout.
    Failed,
    /// Cancelled, Terminated.
    Stopped,
}

impl InvocationStatus {
    /// Settled: no later report changes it.
    pub fn is_final(self) -> bool {
        self.outcome().is_some()
    }

    /// `None` while not settled.
    pub fn outcome(self) -> Option<Outcome> {
        use InvocationStatus::*;
        match self {
            Pending | Scheduled | Running | Stopping => None,
            Success => Some(Outcome::Succeeded),
            Invalid | Aborted | Failed | Error | Timeout => Some(Outcome::Failed),
            Cancelled | Terminated => Some(Outcome::Stopped),
        }
    }

    /// The record-level status this run shows as `InvokeRecordStatus`.
    /// A non-zero exit is `Finished` at record level (seed 001: finished
    /// does not mean succeeded); everything that did not run to its end by
    /// itself is `Failed` or `Stopped`.
    pub fn record_status(self) -> InvokeRecordStatus {
        use InvocationStatus::*;
        match self {
            Pending => InvokeRecordStatus::Pending,
            Scheduled => InvokeRecordStatus::Scheduled,
            Running => InvokeRecordStatus::Running,
            Stopping => InvokeRecordStatus::Stopping,
            Success | Failed => InvokeRecordStatus::Finished,
            Invalid | Aborted | Error | Timeout => InvokeRecordStatus::Failed,
            Cancelled | Terminated => InvokeRecordStatus::Stopped,
        }
    }

    /// The per-instance statuses an `InvokeRecordStatus` filter selects.
    pub fn with_record_status(r: InvokeRecordStatus) -> Vec<InvocationStatus> {
        Self::ALL.iter().copied().filter(|s| s.record_status() == r).collect()
    }

    /// Column name of this status's count on the invocation row.
    pub fn count_column(self) -> &'static str {
        use InvocationStatus::*;
        match self {
            Pending => "n_pending",
            Scheduled => "n_scheduled",
            Invalid => "n_invalid",
            Aborted => "n_aborted",
            Running => "n_running",
            Success => "n_success",
            Failed => "n_failed",
            Error => "n_error",
            Timeout => "n_timeout",
            Cancelled => "n_cancelled",
            Stopping => "n_stopping",
            Terminated => "n_terminated",
        }
    }
}

/// How many targets of one invocation are in each per-instance status.
/// Kept on the invocation row and updated with every target transition,
/// so listing invocations never reads their targets.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts([i64; 12]);

impl Counts {
    fn index(s: InvocationStatus) -> usize {
        InvocationStatus::ALL.iter().position(|x| *x == s).unwrap_or(0)
    }

    pub fn get(&self, s: InvocationStatus) -> i64 {
        self.0[Self::index(s)]
    }

    pub fn set(&mut self, s: InvocationStatus, n: i64) {
        self.0[Self::index(s)] = n;
    }

    pub fn add(&mut self, s: InvocationStatus, n: i64) {
        self.0[Self::index(s)] += n;
    }

    pub fn of(states: &[InvocationStatus]) -> Self {
        let mut c = Counts::default();
        for s in states {
            c.add(*s, 1);
        }
        c
    }

    pub fn total(&self) -> i64 {
        self.0.iter().sum()
    }

    fn any(&self, s: InvocationStatus) -> bool {
        self.get(s) > 0
    }

    fn outcomes(&self) -> (i64, i64, i64) {
        let (mut ok, mut failed, mut stopped) = (0, 0, 0);
        for s in InvocationStatus::ALL {
            match s.outcome() {
                Some(Outcome::Succeeded) => ok += self.get(*s),
                Some(Outcome::Failed) => failed += self.get(*s),
                Some(Outcome::Stopped) => stopped += self.get(*s),
                None => {}
            }
        }
        (ok, failed, stopped)
    }

    /// Current invocation-level `InvocationStatus` (DescribeInvocations docs):
    /// Running / Stopping / Pending / Scheduled if any instance is; then
    /// Stopped if all stopped; Success if at least one succeeded and the
    /// rest succeeded or stopped; Failed if all failed or stopped;
    /// otherwise PartialFailed.
    pub fn overall(&self) -> InvocationOverall {
        use InvocationStatus as S;
        if self.total() == 0 {
            return InvocationOverall::Pending;
        }
        if self.any(S::Running) {
            return InvocationOverall::Running;
        }
        if self.any(S::Stopping) {
            return InvocationOverall::Stopping;
        }
        if self.any(S::Pending) {
            return InvocationOverall::Pending;
        }
        if self.any(S::Scheduled) {
            return InvocationOverall::Scheduled;
        }
        let (ok, failed, _stopped) = self.outcomes();
        match (ok > 0, failed > 0) {
            (false, false) => InvocationOverall::Stopped,
            (true, false) => InvocationOverall::Success,
            (false, true) => InvocationOverall::Failed,
            (true, true) => InvocationOverall::PartialFailed,
        }
    }

    /// Legacy `InvokeStatus`, seed 001's rules over record states: Running
    /// / Stopping / Pending / Scheduled if any; all Stopped → Stopped; all
    /// Failed → Failed; some Failed → PartialFailed; otherwise (Finished,
    /// possibly mixed with Stopped) → Finished.
    pub fn legacy(&self) -> InvokeStatus {
        use InvocationStatus as S;
        if self.total() == 0 {
            return InvokeStatus::Pending;
        }
        if self.any(S::Running) {
            return InvokeStatus::Running;
        }
        if self.any(S::Stopping) {
            return InvokeStatus::Stopping;
        }
        if self.any(S::Pending) {
            return InvokeStatus::Pending;
        }
        if self.any(S::Scheduled) {
            return InvokeStatus::Scheduled;
        }
        let mut failed = 0;
        let mut stopped = 0;
        for s in InvocationStatus::ALL {
            match s.record_status() {
                InvokeRecordStatus::Failed => failed += self.get(*s),
                InvokeRecordStatus::Stopped => stopped += self.get(*s),
                _ => {}
            }
        }
        let n = self.total();
        if stopped == n {
            InvokeStatus::Stopped
        } else if failed == n {
            InvokeStatus::Failed
        } else if failed > 0 {
            InvokeStatus::PartialFailed
        } else {
            InvokeStatus::Finished
        }
    }
}
