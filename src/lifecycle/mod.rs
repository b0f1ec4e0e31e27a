//! The invocation lifecycle: one typed core used by the agent, the store,
//! the API and the CLI.
//!
//! Owns: the names ([`CommandType`], [`RepeatMode`]), the statuses of every
//! level ([`InvocationStatus`] per instance and per run, the record-level
//! [`InvokeRecordStatus`] derived from it, and the invocation-level
//! [`InvocationOverall`] / [`InvokeStatus`] folded from [`Counts`]),
//! [`ErrorCode`] with Alibaba's fixed `ErrorInfo` texts, the one
//! [`transition`] function of a target, and the codec that turns all of
//! these into strings and back (including what 0.1.0 agents send,
//! [`reported_status`]). No status, mode or type string exists outside this
//! module. docs/architecture.md draws it.

mod codec;
mod error_code;
mod kinds;
mod status;
#[cfg(test)]
mod tests;
mod transition;
mod wire;

pub use codec::UnknownName;
pub use error_code::{ErrorCode, MAX_ERROR_CODE_LEN, error_info, opt_serde};
pub use kinds::{CommandType, RepeatMode};
pub use status::{Counts, InvocationOverall, InvocationStatus, InvokeRecordStatus, InvokeStatus, Outcome};
pub use transition::{Event, Refusal, TargetState, states_accepting, transition};
pub use wire::reported_status;
