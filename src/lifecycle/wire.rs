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
///   `InstanceRestarted`); `Aborted` for a 0.1.0 hub's delivery timeout
///   (`ClientNotResponse`, read from its stored rows); `Failed` with an
///   exit code (a protocol 2 agent's `Failed` always has one, or a
///   SendFile code such as `FileAlreadyExists`); `Invalid`
///   when it could not start (no start time, or a could-not-start code
///   such as `DirectoryNotExists`); otherwise `Error` (0.1.0's failed
///   kubelet apply).
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
        // Only a 0.1.0 hub wrote these (its delivery sweeper), into its own rows.
        "Failed" if matches!(code, Some(ErrorCode::ClientNotResponse | ErrorCode::DeliveryTimeout)) => S::Aborted,
        // A protocol 2 agent's Failed: a non-zero exit (a script killed by
        // a signal from elsewhere has no exit code, but this code).
        "Failed" if exit_code.is_some() || code == Some(&ErrorCode::ExitCodeNonzero) => S::Failed,
        // A file delivery that could not create the file (protocol 2 only).
        "Failed" if code.is_some_and(ErrorCode::is_file_code) => S::Failed,
        "Failed" if !started || code.is_some_and(ErrorCode::is_start_failure) => S::Invalid,
        "Failed" => S::Error,
        other => InvocationStatus::parse(other)?,
    })
}
