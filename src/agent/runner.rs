//! Turns accepted invocations into runs: bounded concurrency (FIFO), stop
//! tokens, parameter rendering, and the reports each run produces.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use base64::Engine;
use tokio::sync::{Notify, Semaphore, mpsc};
use tokio_util::sync::CancellationToken;

use super::state::AgentState;
use crate::exec::{self, RunSpec, Termination};
use crate::lifecycle::{CommandType, ErrorCode, InvocationStatus, RepeatMode};
use crate::protocol::{Invocation, RecordReport};

/// Live output chunks waiting for the connection; full means we drop
/// chunks (the final report carries the kept output anyway).
pub const LIVE_QUEUE: usize = 16;

/// Everything runs share: the durable state, a wake-up for the sender, and
/// a channel of live output chunks.
pub struct Runner {
    pub state: Mutex<AgentState>,
    pub outbox_ready: Notify,
    pub live_tx: mpsc::Sender<LiveChunk>,
    slots: Arc<Semaphore>,
    stops: Mutex<HashMap<String, CancellationToken>>,
    instance_id: Mutex<String>,
    /// Where per-run script directories go (None: the engine's default).
    script_root: Option<std::path::PathBuf>,
}

#[derive(Debug)]
pub struct LiveChunk {
    pub invoke_id: String,
    pub record_seq: u32,
    pub offset: u64,
    pub data: Vec<u8>,
}

pub(super) fn now() -> String {
    chrono::Utc::now().format("%Y-%m-%dT%H:%M:%SZ").to_string()
}

impl Runner {
    pub fn new(state: AgentState, max_concurrent: usize, script_root: Option<std::path::PathBuf>) -> (Arc<Self>, mpsc::Receiver<LiveChunk>) {
        let (live_tx, live_rx) = mpsc::channel(LIVE_QUEUE);
        let r = Arc::new(Self {
            state: Mutex::new(state),
            outbox_ready: Notify::new(),
            live_tx,
            slots: Arc::new(Semaphore::new(max_concurrent.max(1))),
            stops: Mutex::new(HashMap::new()),
            instance_id: Mutex::new(String::new()),
            script_root,
        });
        (r, live_rx)
    }

    pub fn set_instance_id(&self, id: &str) {
        *self.instance_id.lock().unwrap_or_else(|e| e.into_inner()) = id.to_string();
    }

    pub(super) fn state(&self) -> std::sync::MutexGuard<'_, AgentState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Journals and reports; a journal failure is logged loudly but the
    /// report is still attempted in memory-less form by the caller's retry.
    pub(super) fn report(&self, report: RecordReport, closes: bool) {
        let invoke_id = report.invoke_id.clone();
        match self.state().report(report, closes) {
            Ok(_) => self.outbox_ready.notify_one(),
            Err(e) => tracing::error!(invoke_id, error = %e, "cannot journal report"),
        }
    }

    /// Called for every `Invoke` frame. Returns after journaling, so the
    /// caller can acknowledge; the run itself proceeds in the background.
    pub fn accept(self: &Arc<Self>, inv: Invocation) -> Result<(), super::journal::JournalError> {
        let fresh = self.state().accept(&inv)?;
        if fresh {
            tracing::info!(invoke_id = %inv.invoke_id, command_type = %inv.command_type, "invocation accepted");
            self.spawn(inv);
        }
        Ok(())
    }

    /// Starts (or queues) the work of an accepted invocation: one run, a
    /// schedule (`Period`), or a wait for the next boot.
    pub fn spawn(self: &Arc<Self>, inv: Invocation) {
        let token = CancellationToken::new();
        self.stops.lock().unwrap_or_else(|e| e.into_inner()).insert(inv.invoke_id.clone(), token.clone());
        let me = self.clone();
        tokio::spawn(async move {
            let id = inv.invoke_id.clone();
            match inv.repeat_mode {
                RepeatMode::Period => me.periodic(inv, token).await,
                RepeatMode::NextRebootOnly | RepeatMode::EveryReboot => me.on_boot(inv, token).await,
                RepeatMode::Once => me.run_once(inv, 0, token, true).await,
            }
            me.stops.lock().unwrap_or_else(|e| e.into_inner()).remove(&id);
        });
    }

    /// True for invocations whose runs do not end them.
    pub fn is_repeating(inv: &Invocation) -> bool {
        inv.repeat_mode.is_repeating()
    }

    /// A run the agent was executing when it died: the child is gone with
    /// the pipes we held, so the outcome is unknown. Report it as `Error` /
    /// `ExecutionInterrupted` rather than leave it Running forever.
    pub fn report_interrupted(&self, inv: &Invocation, record_seq: u32) {
        let closes = !Self::is_repeating(inv);
        tracing::warn!(invoke_id = %inv.invoke_id, "run interrupted by agent restart");
        let info = "the agent restarted while the script was running; its outcome is unknown";
        self.report(ended(inv, record_seq, InvocationStatus::Error, Some(ErrorCode::ExecutionInterrupted), info), closes);
    }

    /// Invocations with a run queued or in progress.
    pub fn running_ids(&self) -> Vec<String> {
        let mut v: Vec<String> = self.stops.lock().unwrap_or_else(|e| e.into_inner()).keys().cloned().collect();
        v.sort();
        v
    }

    pub fn stop(&self, invoke_id: &str) {
        let token = self.stops.lock().unwrap_or_else(|e| e.into_inner()).get(invoke_id).cloned();
        match token {
            Some(t) => {
                tracing::info!(invoke_id, "stop requested");
                t.cancel();
            }
            None => tracing::debug!(invoke_id, "stop for an invocation not running here"),
        }
    }

    /// One run = one record. `closes`: its final report ends the invocation.
    pub(super) async fn run_once(self: &Arc<Self>, inv: Invocation, record_seq: u32, stop: CancellationToken, closes: bool) {
        // Wait for a slot in FIFO order; a stop while queued never starts it.
        let permit = tokio::select! {
            p = self.slots.clone().acquire_owned() => p.expect("semaphore never closed"),
            _ = stop.cancelled() => {
                self.report(stopped_before_start(&inv, record_seq), closes);
                return;
            }
        };
        let instance_id = self.instance_id.lock().unwrap_or_else(|e| e.into_inner()).clone();
        // Parameters are rendered (and refused) before anything runs.
        let spec = match exec::spec_for(&inv, &instance_id) {
            Ok(mut spec) => {
                spec.script_root = self.script_root.clone();
                spec
            }
            Err(e) => {
                // Could not start here (type, user, directory, parameters): Invalid.
                self.report(ended(&inv, record_seq, InvocationStatus::Invalid, ErrorCode::parse(e.error_code()), &e.to_string()), closes);
                return;
            }
        };
        if let Err(e) = self.state().started(&inv.invoke_id, record_seq) {
            tracing::error!(invoke_id = %inv.invoke_id, error = %e, "cannot journal start");
        }
        let start = now();
        self.report(
            RecordReport { invoke_id: inv.invoke_id.clone(), record_seq, status: InvocationStatus::Running, exit_code: None, output_b64: String::new(), dropped: 0, error_code: None, error_info: String::new(), start_time: start.clone(), finish_time: String::new() },
            false,
        );
        let report = if inv.command_type == CommandType::ApplyKubeletReserved {
            kubelet_run(&inv, record_seq, start, stop).await
        } else {
            self.script_run(&inv, record_seq, spec, stop).await
        };
        drop(permit);
        tracing::info!(invoke_id = %inv.invoke_id, status = report.status.as_str(), exit_code = ?report.exit_code, "run finished");
        self.report(report, closes);
    }

    async fn script_run(&self, inv: &Invocation, record_seq: u32, spec: RunSpec, stop: CancellationToken) -> RecordReport {
        let (chunk_tx, mut chunk_rx) = mpsc::channel::<Vec<u8>>(4);
        let live = self.live_tx.clone();
        let invoke_id = inv.invoke_id.clone();
        let forward = tokio::spawn(async move {
            let mut offset = 0u64;
            while let Some(data) = chunk_rx.recv().await {
                let len = data.len() as u64;
                let _ = live.try_send(LiveChunk { invoke_id: invoke_id.clone(), record_seq, offset, data });
                offset += len;
            }
        });
        let out = exec::run(spec, stop, Some(chunk_tx)).await;
        let _ = forward.await;
        let status = match out.termination {
            Termination::Exited if out.exit_code == Some(0) => InvocationStatus::Success,
            Termination::Exited => InvocationStatus::Failed,
            Termination::TimedOut => InvocationStatus::Timeout,
            Termination::Stopped => InvocationStatus::Terminated,
            Termination::FailedToStart => InvocationStatus::Invalid,
        };
        RecordReport {
            invoke_id: inv.invoke_id.clone(),
            record_seq,
            status,
            exit_code: out.exit_code.map(i64::from),
            output_b64: base64::engine::general_purpose::STANDARD.encode(&out.output),
            dropped: out.dropped,
            error_code: ErrorCode::parse(&out.error_code),
            error_info: out.error_info,
            start_time: out.start_time.format("%Y-%m-%dT%H:%M:%SZ").to_string(),
            finish_time: out.finish_time.format("%Y-%m-%dT%H:%M:%SZ").to_string(),
        }
    }
}

/// `ApplyKubeletReserved`: the content is a JSON plan request; the output
/// is the diff; a rollback or refusal is `Error` with the kubelet module's
/// error code (`KubeletUnhealthy`, `InvalidKubeletPlan`, …).
///
/// A stop request does not interrupt an apply: cutting it between the
/// write and the health check would skip the rollback. The apply is
/// bounded by its own health timeout and by the invocation timeout.
async fn kubelet_run(inv: &Invocation, record_seq: u32, start: String, _stop: CancellationToken) -> RecordReport {
    let timeout = std::time::Duration::from_secs(inv.timeout_secs.max(1));
    let outcome = match tokio::time::timeout(timeout, crate::kubelet::run_invocation(&inv.content)).await {
        Ok(o) => o,
        Err(_) => return RecordReport { start_time: start, ..ended(inv, record_seq, InvocationStatus::Timeout, Some(ErrorCode::ExecutionTimeout), "") },
    };
    let output_b64 = base64::engine::general_purpose::STANDARD.encode(outcome.output.as_bytes());
    let finish_time = now();
    if outcome.ok {
        RecordReport { invoke_id: inv.invoke_id.clone(), record_seq, status: InvocationStatus::Success, exit_code: Some(0), output_b64, dropped: 0, error_code: None, error_info: String::new(), start_time: start, finish_time }
    } else {
        let info = format!("kubelet reservation not applied: {}", outcome.error_code);
        // The apply did not complete (refused, or rolled back): Error, not
        // Failed, which Cloud Assistant keeps for a non-zero exit code.
        RecordReport { output_b64, start_time: start, ..ended(inv, record_seq, InvocationStatus::Error, ErrorCode::parse(&outcome.error_code), &info) }
    }
}

/// A final report for a run that produced no output.
pub(super) fn ended(inv: &Invocation, record_seq: u32, status: InvocationStatus, code: Option<ErrorCode>, info: &str) -> RecordReport {
    RecordReport {
        invoke_id: inv.invoke_id.clone(),
        record_seq,
        status,
        exit_code: None,
        output_b64: String::new(),
        dropped: 0,
        error_code: code,
        error_info: info.to_string(),
        start_time: String::new(),
        finish_time: now(),
    }
}

/// A stop that came before the run started: `Cancelled`.
pub(super) fn stopped_before_start(inv: &Invocation, record_seq: u32) -> RecordReport {
    ended(inv, record_seq, InvocationStatus::Cancelled, None, "stopped before it started")
}
