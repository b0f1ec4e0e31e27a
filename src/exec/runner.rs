//! The platform-neutral life of one run: validate, start, then one loop that
//! reads output, watches the timeout and the stop token, escalates
//! SIGTERM → grace → SIGKILL over the whole tree, and bounds the drain of
//! pipes that background jobs keep open.

use std::process::ExitStatus;
use std::time::Duration;

use chrono::Utc;
use tokio::io::AsyncReadExt;
use tokio::sync::mpsc;
use tokio::sync::mpsc::error::TrySendError;
use tokio::time::{Instant, sleep, sleep_until};
use tokio_util::sync::CancellationToken;

use super::scriptfile::ScriptDir;
use super::spawn::{self, Group, Output};
use super::{MAX_GRACE, MAX_OUTPUT_CAP, OutputCap, RunOutcome, RunSpec, StartError, Termination, codes};
use crate::protocol::MAX_SCRIPT_BYTES;

/// Longest timeout honoured (a week); longer values are clamped so deadline
/// arithmetic can never overflow.
pub const MAX_TIMEOUT: Duration = Duration::from_secs(7 * 24 * 3600);
/// Read buffer per output stream.
const READ_BUF: usize = 64 * 1024;
/// How often we look whether the tree died during the grace period.
const ALIVE_POLL: Duration = Duration::from_millis(50);

/// Reject content the agent must never write to disk.
pub fn check_content(script: &str) -> Result<(), StartError> {
    if script.len() > MAX_SCRIPT_BYTES {
        return Err(StartError::new(
            codes::INVALID_COMMAND_CONTENT,
            format!("CommandContent is {} bytes; the limit is {MAX_SCRIPT_BYTES} bytes", script.len()),
        ));
    }
    if script.contains('\0') {
        return Err(StartError::new(codes::INVALID_COMMAND_CONTENT, "CommandContent contains a NUL byte"));
    }
    Ok(())
}

/// Kills the tree if the run future is dropped mid-flight (agent shutdown).
struct KillOnDrop {
    group: Box<dyn Group>,
    armed: bool,
}

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if self.armed {
            self.group.kill();
        }
    }
}

pub(super) async fn run(spec: RunSpec, stop: CancellationToken, live: Option<mpsc::Sender<Vec<u8>>>) -> RunOutcome {
    let invoke_id = spec.invoke_id.clone();
    let (outcome, script_dir) = run_keeping_script(spec, stop, live).await;
    // rmdir can take milliseconds (ext4 with online discard: ~2.6 ms measured
    // here); keep it off the runtime's worker threads.
    if let Some(dir) = script_dir
        && tokio::task::spawn_blocking(move || drop(dir)).await.is_err()
    {
        tracing::warn!(invoke_id, "script directory cleanup task failed");
    }
    outcome
}

/// [`run`], handing back the script's directory instead of removing it: a
/// supervisor writes the result first and removes it afterwards, so the
/// cleanup is not on the path to the result (issue #21).
pub(super) async fn run_keeping_script(
    spec: RunSpec,
    stop: CancellationToken,
    mut live: Option<mpsc::Sender<Vec<u8>>>,
) -> (RunOutcome, Option<ScriptDir>) {
    let start_time = Utc::now();
    let invoke_id = spec.invoke_id.as_str();
    if let Err(e) = check_content(&spec.script) {
        return (RunOutcome::failed(start_time, e.code, e.info), None);
    }
    if stop.is_cancelled() {
        // Stopped while still pending: nothing was started.
        let mut o = RunOutcome::failed(start_time, "", "stopped before it started");
        o.termination = Termination::Stopped;
        return (o, None);
    }
    let started = match spawn::start(&spec) {
        Ok(s) => s,
        Err(e) => {
            tracing::info!(invoke_id, code = e.code, reason = %e.info, "run failed to start");
            return (RunOutcome::failed(start_time, e.code, e.info), None);
        }
    };
    let spawn::Started { mut child, outputs, group, script_dir } = started;
    tracing::info!(invoke_id, pid = child.id(), script = %script_dir.script().display(), "run started");
    let guard = KillOnDrop { group, armed: true };
    let group = &*guard.group;

    let grace = spec.kill_grace.min(MAX_GRACE);
    let drain = spec.drain_timeout.min(MAX_GRACE);
    let deadline = Instant::now() + spec.timeout.min(MAX_TIMEOUT);
    let mut outs: Vec<Option<Output>> = outputs.into_iter().map(Some).collect();
    outs.resize_with(2, || None);
    let (mut out0, mut out1) = (outs[0].take(), outs[1].take());
    let (mut buf0, mut buf1) = (vec![0u8; READ_BUF], vec![0u8; READ_BUF]);
    let mut cap = OutputCap::new(spec.output_cap.min(MAX_OUTPUT_CAP));
    let mut live_dropped: u64 = 0;

    let mut reason: Option<Termination> = None;
    let mut kill_at: Option<Instant> = None;
    let mut killed = false;
    let mut status: Option<std::io::Result<ExitStatus>> = None;
    let mut drain_until: Option<Instant> = None;

    loop {
        let outputs_done = out0.is_none() && out1.is_none();
        if status.is_some() && outputs_done && (reason.is_none() || killed) {
            break;
        }
        let mut got: Option<(usize, usize)> = None; // (stream, bytes)
        tokio::select! {
            r = read(&mut out0, &mut buf0), if out0.is_some() => match r {
                Ok(n) if n > 0 => got = Some((0, n)),
                _ => out0 = None,
            },
            r = read(&mut out1, &mut buf1), if out1.is_some() => match r {
                Ok(n) if n > 0 => got = Some((1, n)),
                _ => out1 = None,
            },
            s = child.wait(), if status.is_none() => {
                status = Some(s);
                if drain_until.is_none() {
                    drain_until = Some(Instant::now() + drain);
                }
            }
            _ = sleep_until(deadline), if reason.is_none() && status.is_none() => {
                tracing::info!(invoke_id, timeout_s = spec.timeout.as_secs_f64(), "run timed out; terminating its tree");
                reason = Some(Termination::TimedOut);
                group.terminate();
                kill_at = Some(Instant::now() + grace);
                drain_until = None;
            }
            _ = stop.cancelled(), if reason.is_none() && status.is_none() => {
                tracing::info!(invoke_id, "run stopped; terminating its tree");
                reason = Some(Termination::Stopped);
                group.terminate();
                kill_at = Some(Instant::now() + grace);
                drain_until = None;
            }
            _ = until(kill_at), if reason.is_some() && !killed => {
                group.kill();
                killed = true;
                // Whatever still holds the pipe now has left the group: read briefly, then give up.
                drain_until = Some(Instant::now() + drain);
            }
            _ = sleep(ALIVE_POLL), if reason.is_some() && !killed && status.is_some() => {
                if !group.alive() {
                    // The whole tree honoured SIGTERM: no need to wait out the grace.
                    killed = true;
                    drain_until = Some(Instant::now() + drain);
                }
            }
            _ = until(drain_until), if drain_until.is_some() && (reason.is_none() || killed) => {
                tracing::info!(invoke_id, "output still open after the main process ended; no longer reading it");
                break;
            }
        }
        if let Some((i, n)) = got {
            let chunk = if i == 0 { &buf0[..n] } else { &buf1[..n] };
            cap.push(chunk);
            if let Some(tx) = &live {
                match tx.try_send(chunk.to_vec()) {
                    Ok(()) => {}
                    Err(TrySendError::Full(c)) => live_dropped += c.len() as u64,
                    Err(TrySendError::Closed(_)) => live = None,
                }
            }
        }
    }
    let mut guard = guard;
    // Normal exit: background jobs the script left behind are allowed to live.
    if reason.is_none() {
        guard.armed = false;
    }
    drop(guard);

    let termination = reason.unwrap_or(Termination::Exited);
    let (exit_code, signal) = match &status {
        Some(Ok(s)) => (s.code(), exit_signal(s)),
        _ => (None, None),
    };
    let (output, dropped) = cap.finish();
    let (error_code, error_info) = match termination {
        Termination::TimedOut => (
            codes::EXECUTION_TIMEOUT.to_string(),
            format!("the script ran longer than its {} s timeout and was killed", spec.timeout.as_secs()),
        ),
        Termination::Stopped | Termination::FailedToStart => (String::new(), String::new()),
        Termination::Exited => match (exit_code, signal, &status) {
            (Some(0), _, _) => (String::new(), String::new()),
            (Some(c), _, _) => (codes::EXIT_CODE_NONZERO.to_string(), format!("exit code {c}")),
            (None, Some(sig), _) => (codes::EXIT_CODE_NONZERO.to_string(), format!("killed by signal {sig}")),
            (None, None, Some(Err(e))) => (codes::EXECUTION_EXCEPTION.to_string(), format!("cannot wait for the script: {e}")),
            (None, None, _) => (codes::EXECUTION_EXCEPTION.to_string(), "exit status unknown".to_string()),
        },
    };
    tracing::info!(invoke_id, ?termination, exit_code, signal, kept = output.len(), dropped, live_dropped, "run ended");
    (
        RunOutcome { termination, exit_code, signal, error_code, error_info, output, dropped, start_time, finish_time: Utc::now() },
        Some(script_dir),
    )
}

async fn read(out: &mut Option<Output>, buf: &mut [u8]) -> std::io::Result<usize> {
    match out {
        Some(r) => r.read(buf).await,
        None => std::future::pending().await,
    }
}

async fn until(t: Option<Instant>) {
    match t {
        Some(t) => sleep_until(t).await,
        None => std::future::pending().await,
    }
}

#[cfg(unix)]
fn exit_signal(s: &ExitStatus) -> Option<i32> {
    std::os::unix::process::ExitStatusExt::signal(s)
}

#[cfg(not(unix))]
fn exit_signal(_: &ExitStatus) -> Option<i32> {
    None
}
