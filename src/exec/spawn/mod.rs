//! Starting the script's process tree, per platform: Unix (session +
//! process group, run-as in `pre_exec`) and Windows (Job Object).
//! Both return a [`Started`] the platform-neutral runner drives.

use std::pin::Pin;

use tokio::io::AsyncRead;

use super::scriptfile::ScriptDir;

#[cfg(unix)]
mod unix;
#[cfg(unix)]
pub(crate) use unix::start;
#[cfg(windows)]
mod windows;
#[cfg(windows)]
pub(crate) use windows::start;

/// A stream of the child's output (stdout and/or stderr).
pub(crate) type Output = Pin<Box<dyn AsyncRead + Send>>;

/// The whole tree of one run, as something we can signal.
pub(crate) trait Group: Send + Sync {
    /// Ask every process to exit (SIGTERM; on Windows the same as `kill`).
    fn terminate(&self);
    /// Kill every process now.
    fn kill(&self);
    /// Whether any process of the tree is still there.
    fn alive(&self) -> bool;
}

/// A running script.
pub(crate) struct Started {
    pub child: tokio::process::Child,
    /// One pipe carrying stdout and stderr in the order they were written.
    pub outputs: Vec<Output>,
    pub group: Box<dyn Group>,
    /// Kept alive until the run ends; dropping it removes the script.
    pub script_dir: ScriptDir,
}
