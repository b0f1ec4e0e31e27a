//! Scripts in their own cgroup under systemd: each run's supervisor is
//! started through `systemd-run --scope` in [`DEFAULT_SLICE`], so the
//! agent's unit limits (`MemoryMax=`, `CPUQuota=`) bound the agent alone
//! and a runaway script is bounded by the slice, not by the agent's
//! budget (docs/operations.md, "Limits"). `systemd-run --scope` registers
//! its own process as the scope and then execs the command, so the
//! supervisor keeps its pid, session and inherited lock descriptor.
//!
//! Used only when the agent runs as a systemd service and a probe scope
//! starts; otherwise runs start as before and the agent says so once.

use std::path::{Path, PathBuf};
use std::time::Duration;

/// The slice runs go to; systemd/deckhand-runs.slice sets its weights.
pub const DEFAULT_SLICE: &str = "deckhand-runs.slice";
/// Where systemd puts `systemd-run` (merged /usr or not).
const SYSTEMD_RUN: &[&str] = &["/usr/bin/systemd-run", "/bin/systemd-run"];
/// A probe that takes longer than this means a wedged manager: no scopes.
const PROBE_TIMEOUT: Duration = Duration::from_secs(10);
/// A slice name as systemd accepts it (we pass it on a command line).
const MAX_SLICE_BYTES: usize = 128;

/// How supervisors are wrapped.
#[derive(Debug, Clone, PartialEq)]
pub struct Scope {
    pub systemd_run: PathBuf,
    pub slice: String,
}

impl Scope {
    /// The argv prefix that puts `program` in a transient scope of the slice.
    pub fn wrap(&self, program: &Path) -> (PathBuf, Vec<std::ffi::OsString>) {
        let mut args: Vec<std::ffi::OsString> =
            ["--scope", "--quiet", "--collect", "--slice", &self.slice, "--"].into_iter().map(Into::into).collect();
        args.push(program.as_os_str().to_owned());
        (self.systemd_run.clone(), args)
    }
}

/// Whether `slice` is a plain `name.slice` unit name.
pub fn valid_slice(slice: &str) -> bool {
    slice.len() <= MAX_SLICE_BYTES
        && slice.strip_suffix(".slice").is_some_and(|n| {
            n.bytes().next().is_some_and(|b| b.is_ascii_alphanumeric())
                && n.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(&b))
        })
}

/// The scope to use, if this agent is a systemd service (`INVOCATION_ID`
/// set) and a probe scope in `slice` starts. Logs once when it cannot.
pub async fn detect(slice: &str) -> Option<Scope> {
    std::env::var_os("INVOCATION_ID")?;
    if !valid_slice(slice) {
        tracing::warn!(slice, "runs_slice is not a valid slice name; scripts share the agent's cgroup");
        return None;
    }
    let systemd_run = SYSTEMD_RUN.iter().map(PathBuf::from).find(|p| p.exists())?;
    let scope = Scope { systemd_run, slice: slice.to_string() };
    let (prog, args) = scope.wrap(Path::new("/bin/true"));
    let probe =
        tokio::process::Command::new(prog).args(args).stdin(std::process::Stdio::null()).stdout(std::process::Stdio::null()).status();
    match tokio::time::timeout(PROBE_TIMEOUT, probe).await {
        Ok(Ok(s)) if s.success() => Some(scope),
        outcome => {
            let why = match outcome {
                Ok(Ok(s)) => format!("exit status {s}"),
                Ok(Err(e)) => e.to_string(),
                Err(_) => format!("no answer within {PROBE_TIMEOUT:?}"),
            };
            tracing::warn!(slice, error = %why, "cannot start a systemd scope; scripts share the agent's cgroup and its MemoryMax=");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wraps_the_supervisor_in_a_scope_of_the_slice() {
        let s = Scope { systemd_run: "/usr/bin/systemd-run".into(), slice: DEFAULT_SLICE.into() };
        let (prog, args) = s.wrap(Path::new("/usr/bin/deckhand-agent"));
        assert_eq!(prog, Path::new("/usr/bin/systemd-run"));
        let args: Vec<_> = args.iter().map(|a| a.to_str().unwrap()).collect();
        assert_eq!(args, ["--scope", "--quiet", "--collect", "--slice", "deckhand-runs.slice", "--", "/usr/bin/deckhand-agent"]);
    }

    #[test]
    fn slice_names() {
        assert!(valid_slice(DEFAULT_SLICE));
        assert!(valid_slice("batch-jobs.slice"));
        for bad in ["", ".slice", "x.service", "a b.slice", "--foo.slice x", "../x.slice", "--x.slice"] {
            assert!(!valid_slice(bad), "{bad}");
        }
    }
}
