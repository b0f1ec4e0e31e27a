//! Running one script: interpreter choice, run-as, working directory,
//! process group, timeout/stop, output capture with a cap.
//!
//! Owns nothing persistent: the agent hands in a [`RunSpec`], a stop token and
//! an optional live-output channel, and gets back one [`RunOutcome`].
//! Public surface: [`RunSpec`], [`run`], [`RunOutcome`], [`Termination`],
//! [`OutputCap`], [`params::render`].

mod capture;
pub mod params;

pub use capture::OutputCap;

use std::path::PathBuf;
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// Everything needed to run one script once.
#[derive(Debug, Clone)]
pub struct RunSpec {
    pub invoke_id: String,
    /// Cloud Assistant type name: `RunShellScript`, `RunPowerShellScript`, `RunBatScript`.
    pub command_type: String,
    /// Final script text (parameters already rendered).
    pub script: String,
    pub working_dir: Option<PathBuf>,
    pub username: Option<String>,
    pub timeout: Duration,
    /// Extra environment on top of the clean base.
    pub env: Vec<(String, String)>,
    /// Bytes of output kept (head + tail); the middle is dropped and counted.
    pub output_cap: usize,
}

/// How a run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Termination {
    /// The process exited by itself (any exit code).
    Exited,
    /// Killed because it outlived `timeout`.
    TimedOut,
    /// Killed because the stop token fired.
    Stopped,
    /// Never started (bad user, bad directory, unsupported type, spawn error).
    FailedToStart,
}

#[derive(Debug, Clone)]
pub struct RunOutcome {
    pub termination: Termination,
    pub exit_code: Option<i32>,
    /// Signal that ended the process, if any (Unix).
    pub signal: Option<i32>,
    /// Cloud Assistant error code: `ExitCodeNonzero`, `ExecutionTimeout`,
    /// `CommandNotApplicable`, `AccountNotExists`, `DirectoryNotExists`, … ;
    /// empty on a clean exit 0.
    pub error_code: String,
    pub error_info: String,
    /// Kept output (head + tail of stdout and stderr interleaved as read).
    pub output: Vec<u8>,
    /// Bytes dropped from the middle.
    pub dropped: u64,
    pub start_time: DateTime<Utc>,
    pub finish_time: DateTime<Utc>,
}

/// Run one script to its end. Never panics on bad input: every problem is an
/// outcome with `Termination::FailedToStart` and an error code.
///
/// `live`, when given, receives output chunks as they are read (best effort:
/// a full channel drops chunks rather than stalling the child).
pub async fn run(
    spec: RunSpec,
    stop: CancellationToken,
    live: Option<mpsc::Sender<Vec<u8>>>,
) -> RunOutcome {
    unix_basic::run(spec, stop, live).await
}

mod unix_basic;
