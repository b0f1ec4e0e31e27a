//! Reading a run status from an agent report, whichever protocol version
//! wrote it. Protocol 2 agents send the per-instance [`InvocationStatus`];
//! protocol 1 (deckhand 0.1.0) agents sent the record-level vocabulary
//! (`Finished`, `Failed`, `Stopped`, `Timeout`). Both arrive here, so an old
//! agent's reports, and an old journal replayed by a new agent, are
//! recorded with the status they meant.

use super::{ErrorCode, InvocationStatus, UnknownName};

/// The per-instance status a report means. `exit_code`, `started` (the
/// report has a start time) and `code` disambiguate the 0.1.0 names:
/// - `Finished` → `Success` on exit 0, `Failed` otherwise;
/// - `Stopped` → `Terminated` if the run had started, else `Cancelled`;
/// - `Failed` → `Error` when the run was interrupted (0.1.0's
///   `InstanceRestarted`), `Invalid` when it never started and has no
///   exit code, else `Failed` (a protocol 2 agent's `Failed`, which always
///   has started, reads the same).
pub fn reported_status(
    raw: &str,
    exit_code: Option<i64>,
    started: bool,
    code: Option<&ErrorCode>,
) -> Result<InvocationStatus, UnknownName> {
    use InvocationStatus as S;
    Ok(match raw {
        "Finished" if exit_code == Some(0) => S::Success,
        "Finished" => S::Failed,
        "Stopped" if started => S::Terminated,
        "Stopped" => S::Cancelled,
        "Failed" if code == Some(&ErrorCode::ExecutionInterrupted) => S::Error,
        "Failed" if !started && exit_code.is_none() => S::Invalid,
        other => InvocationStatus::parse(other)?,
    })
}
