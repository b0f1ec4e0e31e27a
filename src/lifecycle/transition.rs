//! The one transition function of a target (one instance's slice of an
//! invocation). Pure: no clock, no I/O. The store calls it inside the
//! transaction that writes the result, and derives its bulk SQL updates
//! from it ([`states_accepting`]), so no other code decides a state.

use super::{ErrorCode, InvocationStatus, RepeatMode};

/// What the hub knows of one target.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TargetState {
    pub status: InvocationStatus,
    /// The agent has journaled the invocation (it acknowledged it, or
    /// reported on it).
    pub delivered: bool,
}

impl TargetState {
    /// Every target starts here when the invocation is created.
    pub const CREATED: TargetState = TargetState { status: InvocationStatus::Pending, delivered: false };

    /// Every state a target can be in (for exhaustive tests and for
    /// deriving bulk updates).
    pub fn all() -> Vec<TargetState> {
        let mut v = Vec::new();
        for s in InvocationStatus::ALL {
            for delivered in [false, true] {
                v.push(TargetState { status: *s, delivered });
            }
        }
        v
    }
}

/// Something that happens to a target, and who causes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    /// Agent: `invoke_ack`, the invocation is journaled on the instance.
    Delivered,
    /// Agent: a report on a run (`Running`, or a final status; a final
    /// `Cancelled`/`Terminated` is the agent confirming a stop).
    Reported(InvocationStatus),
    /// API: `StopInvocation`.
    StopRequested,
    /// Hub sweeper: never delivered within the delivery timeout.
    DeliveryExpired,
    /// API: `DeregisterManagedInstance` while the target was not settled.
    InstanceDeregistered,
    /// API, at creation (tag or fact targeting, docs/fleet.md): the
    /// instance matched but its agent was not connected, so nothing is
    /// sent and the target ends at once (Alibaba's `ClientNotRunning`).
    ClientNotRunning,
    /// Store, rate control (docs/fleet.md): errors exceeded `MaxErrors`
    /// while this target still waited for the window; it never starts.
    RolloutHalted,
}

impl Event {
    /// The error code a hub-side event stamps on the target.
    pub fn error_code(self, online: bool) -> Option<ErrorCode> {
        match self {
            // Online but never acknowledged: the delivery itself timed
            // out; offline the whole time: the client did not respond.
            Event::DeliveryExpired if online => Some(ErrorCode::DeliveryTimeout),
            Event::DeliveryExpired => Some(ErrorCode::ClientNotResponse),
            Event::InstanceDeregistered => Some(ErrorCode::InstanceReleased),
            Event::ClientNotRunning => Some(ErrorCode::ClientNotRunning),
            Event::RolloutHalted => Some(ErrorCode::MaxErrorsExceeded),
            _ => None,
        }
    }
}

/// Why an event does not change a target.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// The target is settled; nothing changes it again (late or repeated
    /// messages land here).
    #[error("target is already {0}")]
    Final(InvocationStatus),
    /// The event does not apply to this state (a delivery timeout on a
    /// target already delivered, …).
    #[error("{event:?} does not apply to a target in {status} (delivered: {delivered})")]
    NotApplicable { event: Event, status: InvocationStatus, delivered: bool },
    /// An agent reported a status only the hub may set.
    #[error("an agent cannot report {0}")]
    NotReportable(InvocationStatus),
}

/// The next state of a target of an invocation in `mode` (with
/// `frequency`) when `event` happens, or why it does not change.
///
/// Rules (seed 001 and the DescribeInvocationResults docs):
/// - A settled target never changes.
/// - `Delivered`: a boot-triggered once is `Scheduled` until its boot; a
///   repeating schedule is `Running` while armed; a one-shot stays
///   `Pending` until it starts.
/// - `Reported(s)`: a one-shot target mirrors its run; a repeating target
///   stays `Running` between fires and settles only when stopped
///   (`Cancelled`/`Terminated`). While `Stopping`, a `Running` report
///   keeps it `Stopping` (the stop is still owed).
/// - `StopRequested`: never delivered → `Cancelled` at once (nothing runs
///   anywhere); delivered → `Stopping` until the agent confirms.
/// - `DeliveryExpired`: a `Pending` target never delivered → `Aborted`.
/// - `InstanceDeregistered`: never delivered → `Aborted`; delivered →
///   `Error` (its outcome can no longer be known).
/// - `ClientNotRunning`: a target just created and never sent → `Aborted`.
/// - `RolloutHalted`: a target never sent → `Cancelled` (it did not start,
///   as a stop before the start).
pub fn transition(state: TargetState, event: Event, mode: RepeatMode, frequency: &str) -> Result<TargetState, Refusal> {
    use InvocationStatus as S;
    if state.status.is_final() {
        return Err(Refusal::Final(state.status));
    }
    let not_applicable = Err(Refusal::NotApplicable { event, status: state.status, delivered: state.delivered });
    let to = |status: InvocationStatus, delivered: bool| Ok(TargetState { status, delivered });
    match event {
        Event::Delivered => {
            let status = match (state.status, mode) {
                (S::Pending, RepeatMode::NextRebootOnly) => S::Scheduled,
                (S::Pending, m) if m.keeps_target_running(frequency) => S::Running,
                (s, _) => s,
            };
            to(status, true)
        }
        Event::Reported(r) => {
            if matches!(r, S::Pending | S::Stopping | S::Aborted) {
                return Err(Refusal::NotReportable(r));
            }
            let status = if mode.keeps_target_running(frequency) {
                match r {
                    // A Cancelled record of an armed schedule not being
                    // stopped is one fire that never started (skipped: the
                    // previous run still going, or no grant from its
                    // rollout window); the schedule goes on.
                    S::Cancelled if state.status != S::Stopping => S::Running,
                    S::Cancelled | S::Terminated => r,
                    _ if state.status == S::Stopping => S::Stopping,
                    _ => S::Running,
                }
            } else {
                match r {
                    S::Running | S::Scheduled if state.status == S::Stopping => S::Stopping,
                    other => other,
                }
            };
            to(status, true)
        }
        Event::StopRequested => match state.delivered {
            false => to(S::Cancelled, false),
            true => to(S::Stopping, true),
        },
        Event::DeliveryExpired => match (state.status, state.delivered) {
            (S::Pending, false) => to(S::Aborted, false),
            _ => not_applicable,
        },
        Event::InstanceDeregistered => match state.delivered {
            false => to(S::Aborted, false),
            true => to(S::Error, true),
        },
        Event::ClientNotRunning | Event::RolloutHalted => match (state.status, state.delivered) {
            (S::Pending, false) if event == Event::ClientNotRunning => to(S::Aborted, false),
            (S::Pending, false) => to(S::Cancelled, false),
            _ => not_applicable,
        },
    }
}

/// The states in which `event` changes a target (whatever the mode), for
/// bulk SQL updates that must agree with [`transition`].
pub fn states_accepting(event: Event) -> Vec<TargetState> {
    TargetState::all().into_iter().filter(|s| RepeatMode::ALL.iter().any(|m| transition(*s, event, *m, "").is_ok())).collect()
}
