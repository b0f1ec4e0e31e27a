//! Running one script: interpreter choice, run-as, working directory,
//! process group / job object, timeout and stop, output capture with a cap.
//!
//! Owns nothing persistent: the agent hands in a [`RunSpec`], a stop token and
//! an optional live-output channel, and gets back one [`RunOutcome`].
//! Public surface: [`RunSpec`], [`run`], [`RunOutcome`], [`Termination`],
//! [`OutputCap`], [`codes`], [`params`], [`spec_for`]. docs/exec.md is the prose version.
//!
//! Layout: `interpreter` (type → argv), `scriptfile` (private per-run dir),
//! `env` (clean environment), `capture` (cap), `runner` (the wait/kill/drain
//! loop, platform neutral), `spawn/unix.rs` + `kill` (Unix process groups),
//! `spawn/windows.rs` (Job Objects), `supervise` (Unix: a per-run supervisor
//! process and run directory, so a run outlives the agent).

mod capture;
mod env;
mod interpreter;
mod invocation;
#[cfg(unix)]
mod kill;
pub mod params;
mod runner;
pub mod scope;
mod scriptfile;
mod spawn;
#[cfg(unix)]
pub mod supervise;
#[cfg(unix)]
mod user;

pub use capture::OutputCap;
pub use env::{MAX_ENV_BYTES, MAX_ENV_VARS, UNIX_PATH};
pub use interpreter::{Interpreter, Os, resolve_for, resolve_interpreter};
pub use invocation::spec_for;
pub use runner::{MAX_TIMEOUT, check_content};

use std::path::PathBuf;
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::lifecycle::CommandType;

/// Error codes put in [`RunOutcome::error_code`]. Names follow Cloud
/// Assistant's `DescribeInvocationResults` ErrorCode values where one exists.
pub mod codes {
    /// The script exited by itself with a code other than 0.
    pub const EXIT_CODE_NONZERO: &str = "ExitCodeNonzero";
    /// Killed because it outlived its timeout.
    pub const EXECUTION_TIMEOUT: &str = "ExecutionTimeout";
    /// The command type cannot run on this OS (or its interpreter is missing).
    pub const COMMAND_NOT_APPLICABLE: &str = "CommandNotApplicable";
    /// `Username` names no account on this host.
    pub const ACCOUNT_NOT_EXISTS: &str = "AccountNotExists";
    /// `WorkingDir` does not exist or is not a directory.
    pub const DIRECTORY_NOT_EXISTS: &str = "DirectoryNotExists";
    /// Script larger than [`crate::protocol::MAX_SCRIPT_BYTES`] or containing NUL.
    pub const INVALID_COMMAND_CONTENT: &str = "InvalidParameter.CommandContent";
    /// `RunSpec::env` breaks a rule (name syntax, NUL, count or size bound).
    pub const INVALID_ENV: &str = "InvalidParameter.Env";
    /// Anything else that stopped the process from starting (script file,
    /// fork/exec, setuid): the reason is in `error_info`.
    pub const EXECUTION_EXCEPTION: &str = "ExecutionException";
}

/// Default grace between SIGTERM and SIGKILL when a run is timed out or stopped.
pub const DEFAULT_KILL_GRACE: Duration = Duration::from_secs(3);
/// Default time we keep reading output after the script's main process is
/// gone, for background jobs that still hold the pipe open.
pub const DEFAULT_DRAIN_TIMEOUT: Duration = Duration::from_secs(2);
/// Upper bound on both of the above, whatever the spec says: stop must stay prompt.
pub const MAX_GRACE: Duration = Duration::from_secs(30);
/// Largest `output_cap` honoured: kept output must fit one protocol frame
/// (1 MiB) once base64-encoded.
pub const MAX_OUTPUT_CAP: usize = 512 * 1024;
/// Cloud Assistant's default command timeout.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);

/// Everything needed to run one script once.
#[derive(Debug, Clone)]
pub struct RunSpec {
    pub invoke_id: String,
    /// The script's type (`RunShellScript`, `RunPowerShellScript`,
    /// `RunBatScript`); other types are not scripts and refused at start.
    pub command_type: CommandType,
    /// Final script text (parameters already rendered, see [`params::render_script`]).
    pub script: String,
    /// Default: the run-as user's home directory (`/root` for root).
    pub working_dir: Option<PathBuf>,
    /// Run-as account; default: the agent's own user.
    pub username: Option<String>,
    pub timeout: Duration,
    /// Extra environment on top of the clean base.
    pub env: Vec<(String, String)>,
    /// Bytes of output kept (head + tail); the middle is dropped and counted.
    /// Clamped to [`MAX_OUTPUT_CAP`].
    pub output_cap: usize,
    /// SIGTERM → SIGKILL grace on timeout/stop (clamped to [`MAX_GRACE`]).
    pub kill_grace: Duration,
    /// How long output is still read after the main process exited
    /// (clamped to [`MAX_GRACE`]).
    pub drain_timeout: Duration,
    /// Parent of the per-run script directories; default
    /// `/run/deckhand/scripts` for a root agent, else `<temp dir>/deckhand-scripts`.
    pub script_root: Option<PathBuf>,
}

impl RunSpec {
    /// A spec with every optional field at its default.
    pub fn new(invoke_id: impl Into<String>, command_type: CommandType, script: impl Into<String>) -> Self {
        Self { invoke_id: invoke_id.into(), command_type, script: script.into(), ..Self::default() }
    }
}

impl Default for RunSpec {
    fn default() -> Self {
        Self {
            invoke_id: String::new(),
            command_type: CommandType::RunShellScript,
            script: String::new(),
            working_dir: None,
            username: None,
            timeout: DEFAULT_TIMEOUT,
            env: Vec::new(),
            output_cap: crate::protocol::OUTPUT_CAP_BYTES,
            kill_grace: DEFAULT_KILL_GRACE,
            drain_timeout: DEFAULT_DRAIN_TIMEOUT,
            script_root: None,
        }
    }
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
    /// One of [`codes`]; empty on a clean exit 0 and on `Stopped`.
    pub error_code: String,
    pub error_info: String,
    /// Kept output (head + tail of stdout and stderr interleaved as written:
    /// both go to one pipe).
    pub output: Vec<u8>,
    /// Bytes dropped from the middle.
    pub dropped: u64,
    pub start_time: DateTime<Utc>,
    pub finish_time: DateTime<Utc>,
}

impl RunOutcome {
    pub(crate) fn failed(start_time: DateTime<Utc>, code: &str, info: impl Into<String>) -> Self {
        RunOutcome {
            termination: Termination::FailedToStart,
            exit_code: None,
            signal: None,
            error_code: code.to_string(),
            error_info: info.into(),
            output: Vec::new(),
            dropped: 0,
            start_time,
            finish_time: Utc::now(),
        }
    }
}

/// A reason the run could not start: becomes a `FailedToStart` outcome.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{code}: {info}")]
pub struct StartError {
    /// One of [`codes`].
    pub code: &'static str,
    pub info: String,
}

impl StartError {
    pub(crate) fn new(code: &'static str, info: impl Into<String>) -> Self {
        Self { code, info: info.into() }
    }
}

/// Run one script to its end. Never panics on bad input: every problem is an
/// outcome with `Termination::FailedToStart` and an error code.
///
/// `live`, when given, receives output chunks as they are read (best effort:
/// a full channel drops chunks rather than stalling the child).
pub async fn run(spec: RunSpec, stop: CancellationToken, live: Option<mpsc::Sender<Vec<u8>>>) -> RunOutcome {
    runner::run(spec, stop, live).await
}
