//! Turns accepted invocations into runs: bounded concurrency (FIFO), stop
//! tokens, parameter rendering, and the reports each run produces.
//!
//! On Unix, with a [`Supervision`] configured, each script runs under its own
//! supervisor process (see [`crate::exec::supervise`]) and this module only
//! watches its run directory, so a restarted agent re-attaches to runs the
//! previous one started ([`Runner::reattach`]).

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use base64::Engine;
use tokio::sync::{Notify, Semaphore, mpsc, watch};
use tokio_util::sync::CancellationToken;

use super::state::{Accepted, AgentState};
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
    /// One journal sync at a time: a caller that waited finds its changes
    /// synced by the one before it (a group commit).
    sync_lock: tokio::sync::Mutex<()>,
    pub outbox_ready: Notify,
    pub live_tx: mpsc::Sender<LiveChunk>,
    slots: Arc<Semaphore>,
    stops: Mutex<HashMap<String, CancellationToken>>,
    /// The newest definition of each invocation whose work is going, for
    /// a schedule to pick up a `ModifyInvocationAttribute` revision.
    revisions: Mutex<HashMap<String, watch::Sender<Invocation>>>,
    instance_id: Mutex<String>,
    /// Where per-run script directories go (None: the engine's default).
    script_root: Option<std::path::PathBuf>,
    /// Runs outlive the agent (Unix); None: runs are the agent's children.
    supervision: Option<Supervision>,
    /// Chunk pulls of file deliveries (answered by the connection loop).
    pub files: super::files::Fetcher,
    /// Fire requests of windowed periodic invocations (answered by the connection loop).
    pub grants: super::grants::Gate,
    /// File deliveries being done again after a restart (see `files::deliver`).
    file_reruns: Mutex<std::collections::HashSet<String>>,
    /// Given to every script under its invocation's own variables (the
    /// proxy, when the operator passes it on).
    script_env: Vec<(String, String)>,
}

/// How scripts are run apart from the agent. Unix only: the agent never
/// builds one on Windows, where scripts run in-process.
#[derive(Debug, Clone)]
#[cfg_attr(not(unix), allow(dead_code))]
pub struct Supervision {
    /// `deckhand-supervise`, or the agent's own binary, run as
    /// `__supervise <run dir>` (`exec::supervise::program_for`).
    pub program: PathBuf,
    /// Parent of the run directories (`<state dir>/runs`).
    pub runs_root: PathBuf,
    /// Under systemd: start each supervisor in its own scope of this slice.
    pub scope: Option<exec::scope::Scope>,
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
    pub fn new(
        state: AgentState,
        max_concurrent: usize,
        script_root: Option<PathBuf>,
        supervision: Option<Supervision>,
        script_env: Vec<(String, String)>,
    ) -> (Arc<Self>, mpsc::Receiver<LiveChunk>) {
        let (live_tx, live_rx) = mpsc::channel(LIVE_QUEUE);
        let r = Arc::new(Self {
            state: Mutex::new(state),
            sync_lock: tokio::sync::Mutex::new(()),
            outbox_ready: Notify::new(),
            live_tx,
            slots: Arc::new(Semaphore::new(max_concurrent.max(1))),
            stops: Mutex::new(HashMap::new()),
            revisions: Mutex::new(HashMap::new()),
            instance_id: Mutex::new(String::new()),
            script_root,
            supervision,
            files: super::files::Fetcher::default(),
            grants: super::grants::Gate::default(),
            file_reruns: Mutex::new(Default::default()),
            script_env,
        });
        (r, live_rx)
    }

    pub fn set_instance_id(&self, id: &str) {
        *self.instance_id.lock().unwrap_or_else(|e| e.into_inner()) = id.to_string();
    }

    pub(super) fn state(&self) -> std::sync::MutexGuard<'_, AgentState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Journals a report; it goes out once [`Self::flush`] has put it on
    /// disk (the connection loop flushes before sending). A journal that
    /// cannot be written holds it in memory (see `state`), and it is sent
    /// all the same. Returns its id (`None`: it could not be journaled).
    pub(super) fn report(&self, report: RecordReport, closes: bool) -> Option<u64> {
        let invoke_id = report.invoke_id.clone();
        let id = self.state().report(report, closes);
        if let Err(e) = &id {
            tracing::error!(invoke_id, error = %e, "cannot journal report");
        }
        self.outbox_ready.notify_one();
        id.ok()
    }

    /// Puts every journal change made so far on disk: one `fdatasync` on a
    /// blocking thread, so the event loop never waits for the disk (issue
    /// #21). Returns whether they are all durable (false while the journal
    /// is degraded or the sync failed).
    pub(super) async fn flush(&self) -> bool {
        let _one = self.sync_lock.lock().await;
        // Bound first: a guard in the match's head would live through the arms.
        let point = self.state().sync_point();
        let point = match point {
            Ok(Some(p)) => p,
            Ok(None) => {
                // Synced by another path (a held change's synced append, a
                // compaction): release the reports that covers.
                let mut st = self.state();
                st.synced(0);
                return st.is_durable();
            }
            Err(e) => {
                self.state().sync_failed(&e);
                self.outbox_ready.notify_one();
                return false;
            }
        };
        let upto = point.upto();
        let synced = tokio::task::spawn_blocking(move || point.sync()).await;
        let mut st = self.state();
        let ok = match synced {
            Ok(Ok(_)) => {
                super::figures::journal_synced();
                st.synced(upto);
                st.is_durable()
            }
            Ok(Err(e)) => {
                st.sync_failed(&e);
                false
            }
            Err(e) => {
                let e = super::journal::JournalError::Held { held: st.held_count(), reason: format!("journal sync task failed: {e}") };
                st.sync_failed(&e);
                false
            }
        };
        drop(st);
        self.outbox_ready.notify_one();
        ok
    }

    /// The stop token of an invocation, shared by its schedule and a run
    /// re-attached after a restart.
    fn token(&self, invoke_id: &str) -> CancellationToken {
        self.stops.lock().unwrap_or_else(|e| e.into_inner()).entry(invoke_id.to_string()).or_default().clone()
    }

    /// Called for every `Invoke` frame. Returns once the acceptance is on
    /// disk, so the caller can acknowledge; the run itself proceeds in the
    /// background.
    pub async fn accept(self: &Arc<Self>, inv: Invocation) -> Result<(), super::journal::JournalError> {
        let (accepted, previous) = {
            let mut st = self.state();
            let previous = st.held_invocation(&inv.invoke_id).cloned();
            (st.accept(&inv)?, previous)
        };
        let early = if accepted == Accepted::New { self.start_at_once(&inv) } else { None };
        if accepted != Accepted::Duplicate && !self.flush().await {
            let mut st = self.state();
            if let Some(early) = &early {
                st.unstart(&inv.invoke_id, early.running_report);
            }
            st.unaccept(&inv.invoke_id, previous);
            let reason = st.degraded().unwrap_or("journal sync failed").to_string();
            let held = st.held_count();
            drop(st);
            if let Some(early) = early {
                early.abandon();
            }
            return Err(super::journal::JournalError::Held { held, reason });
        }
        match accepted {
            Accepted::New => {
                tracing::info!(invoke_id = %inv.invoke_id, command_type = %inv.command_type, "invocation accepted");
                self.spawn_with(inv, early);
            }
            Accepted::Revised => self.revise(inv),
            Accepted::Duplicate => {}
        }
        Ok(())
    }

    /// A journaled revision reaches the work in progress: a schedule
    /// re-arms with it at once; a run already going keeps the definition
    /// it started with (the next fire uses the new one).
    fn revise(&self, inv: Invocation) {
        let (invoke_id, revision) = (inv.invoke_id.clone(), inv.revision);
        let tx = self.revisions.lock().unwrap_or_else(|e| e.into_inner()).get(&invoke_id).cloned();
        match tx {
            Some(tx) => {
                tx.send_replace(inv);
                tracing::info!(invoke_id, revision, "invocation revised; schedule re-armed");
            }
            // Journaled: whatever starts it later (a restart) reads the new copy.
            None => tracing::info!(invoke_id, revision, "invocation revised while no work of it is going"),
        }
    }

    /// A one-shot run whose slot is free now starts with its acceptance
    /// (issue #21): its start and `Running` report are journaled beside the
    /// acceptance, so one sync covers all three, and its supervisor is
    /// launched meanwhile, so the process's start overlaps that sync too.
    /// `None` (the run then starts as any other, after the acceptance's
    /// sync): a schedule or boot wait, a file delivery, no free slot, or a
    /// definition that cannot run here (reported as `Invalid` by the normal
    /// path).
    fn start_at_once(self: &Arc<Self>, inv: &Invocation) -> Option<EarlyStart> {
        if inv.repeat_mode != RepeatMode::Once || inv.command_type.is_file() {
            return None;
        }
        let permit = self.slots.clone().try_acquire_owned().ok()?;
        let spec = self.spec_of(inv).ok()??;
        let (start, running_report) = self.journal_start(inv, 0);
        let prepared = {
            let (me, inv, spec) = (self.clone(), inv.clone(), spec.clone());
            tokio::spawn(async move { me.prepare(&inv, 0, Some(&spec)).await })
        };
        Some(EarlyStart { permit, spec, start, running_report, prepared })
    }

    /// Starts (or queues) the work of an accepted invocation: one run, a
    /// schedule (`Period`), or a wait for the next boot.
    pub fn spawn(self: &Arc<Self>, inv: Invocation) {
        self.spawn_with(inv, None)
    }

    /// [`Self::spawn`], for a run already started with its acceptance.
    fn spawn_with(self: &Arc<Self>, inv: Invocation, early: Option<EarlyStart>) {
        let token = self.token(&inv.invoke_id);
        // Registered before the task starts: a revision arriving at once is not missed.
        let (rev_tx, revisions) = watch::channel(inv.clone());
        self.revisions.lock().unwrap_or_else(|e| e.into_inner()).insert(inv.invoke_id.clone(), rev_tx);
        let me = self.clone();
        tokio::spawn(async move {
            let id = inv.invoke_id.clone();
            match (inv.repeat_mode, early) {
                (RepeatMode::Once, Some(early)) => {
                    let prepared = early.prepared.await.unwrap_or_else(|e| {
                        tracing::warn!(invoke_id = %id, error = %e, "preparing the run's supervisor failed; running it in-process");
                        None
                    });
                    let begun = Begun { permit: Some(early.permit), spec: Some(early.spec), start: early.start, prepared };
                    me.run_started(inv, 0, token, true, begun).await
                }
                (RepeatMode::Period, _) => me.periodic(revisions, token).await,
                (RepeatMode::NextRebootOnly | RepeatMode::EveryReboot, _) => me.on_boot(inv, token).await,
                (RepeatMode::Once, None) => me.run_once(inv, 0, token, true).await,
            }
            me.stops.lock().unwrap_or_else(|e| e.into_inner()).remove(&id);
            me.revisions.lock().unwrap_or_else(|e| e.into_inner()).remove(&id);
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

    /// A run that was going when the previous agent died. Supervised: watch
    /// its run directory and report the real outcome (a supervisor that is
    /// gone too means `ExecutionInterrupted`; one that never started the
    /// script starts it now). Otherwise: [`Self::report_interrupted`].
    pub fn reattach(self: &Arc<Self>, inv: Invocation, record_seq: u32) {
        // A file delivery is done again from the start: the write is
        // atomic, so the target holds the old file or the new one.
        if inv.command_type.is_file() {
            tracing::info!(invoke_id = %inv.invoke_id, "file delivery interrupted by the agent's restart; starting it again");
            self.file_reruns.lock().unwrap_or_else(|e| e.into_inner()).insert(inv.invoke_id.clone());
            let (token, me) = (self.token(&inv.invoke_id), self.clone());
            tokio::spawn(async move {
                let id = inv.invoke_id.clone();
                me.run_once(inv, record_seq, token, true).await;
                me.stops.lock().unwrap_or_else(|e| e.into_inner()).remove(&id);
            });
            return;
        }
        let dir = self.run_dir(&inv, record_seq).filter(|d| d.is_dir());
        let Some(dir) = dir else {
            self.report_interrupted(&inv, record_seq);
            return;
        };
        let closes = !Self::is_repeating(&inv);
        let token = self.token(&inv.invoke_id);
        let me = self.clone();
        tracing::info!(invoke_id = %inv.invoke_id, record_seq, "re-attaching to a run that outlived the previous agent");
        tokio::spawn(async move {
            // Already running: it takes a slot if one is free, but it cannot wait for one.
            let permit = me.slots.clone().try_acquire_owned().ok();
            match me.watch(&inv, record_seq, &dir, token.clone(), true, None).await {
                Watched::Finished(out) => {
                    drop(permit);
                    let report = outcome_report(&inv, record_seq, &out);
                    tracing::info!(invoke_id = %inv.invoke_id, status = report.status.as_str(), exit_code = ?report.exit_code, "re-attached run finished");
                    me.report(report, closes);
                    if me.flush().await {
                        remove_dir(dir).await;
                    }
                }
                Watched::Vanished => {
                    drop(permit);
                    me.report_interrupted(&inv, record_seq);
                    remove_dir(dir).await;
                }
                Watched::NeverRan => {
                    drop(permit);
                    tracing::info!(invoke_id = %inv.invoke_id, "the previous agent died before the run started; starting it now");
                    remove_dir(dir).await;
                    me.run_once(inv.clone(), record_seq, token, closes).await;
                }
            }
            if closes {
                me.stops.lock().unwrap_or_else(|e| e.into_inner()).remove(&inv.invoke_id);
            }
        });
    }

    /// Run directories of runs nobody will watch (a crash after the final
    /// report was journaled): removed at start, except `keep`'s.
    pub fn sweep_run_dirs(&self, keep: &[(Invocation, u32)]) {
        let Some(sup) = &self.supervision else { return };
        let keep: Vec<PathBuf> = keep.iter().filter_map(|(inv, seq)| self.run_dir(inv, *seq)).collect();
        #[cfg(unix)]
        for d in exec::supervise::stale_dirs(&sup.runs_root, &keep) {
            tracing::info!(dir = %d.display(), "removing a finished run's directory");
            exec::supervise::remove(&d);
        }
        #[cfg(not(unix))]
        let _ = (sup, keep);
    }

    fn run_dir(&self, inv: &Invocation, record_seq: u32) -> Option<PathBuf> {
        #[cfg(unix)]
        {
            let sup = self.supervision.as_ref()?;
            exec::supervise::run_dir(&sup.runs_root, &inv.invoke_id, record_seq).ok()
        }
        #[cfg(not(unix))]
        {
            let _ = (inv, record_seq);
            None
        }
    }

    /// Forwards live output of a run to the connection, numbering offsets.
    fn live_forwarder(&self, inv: &Invocation, record_seq: u32) -> (mpsc::Sender<Vec<u8>>, tokio::task::JoinHandle<()>) {
        let (chunk_tx, mut chunk_rx) = mpsc::channel::<Vec<u8>>(4);
        let live = self.live_tx.clone();
        let invoke_id = inv.invoke_id.clone();
        let forward = tokio::spawn(async move {
            let mut offset = 0u64;
            while let Some(data) = chunk_rx.recv().await {
                let len = data.len() as u64;
                if live.try_send(LiveChunk { invoke_id: invoke_id.clone(), record_seq, offset, data }).is_err() {
                    super::figures::live_chunk_dropped();
                }
                offset += len;
            }
        });
        (chunk_tx, forward)
    }

    async fn watch(
        &self,
        inv: &Invocation,
        record_seq: u32,
        dir: &std::path::Path,
        stop: CancellationToken,
        from_end: bool,
        // `exec::supervise::Exited`, spelled out: that module is Unix-only.
        exited: Option<tokio::sync::oneshot::Receiver<()>>,
    ) -> Watched {
        #[cfg(unix)]
        {
            let (tx, forward) = self.live_forwarder(inv, record_seq);
            let w = exec::supervise::watch(dir, stop, Some(tx), from_end, exited).await;
            let _ = forward.await;
            match w {
                exec::supervise::Watched::Finished(o) => Watched::Finished(o),
                exec::supervise::Watched::NeverRan => Watched::NeverRan,
                exec::supervise::Watched::Vanished => Watched::Vanished,
            }
        }
        #[cfg(not(unix))]
        {
            let _ = (inv, record_seq, dir, stop, from_end, exited);
            Watched::Vanished
        }
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
            // The semaphore is never closed; were it, the run goes on unslotted.
            p = self.slots.clone().acquire_owned() => p.ok(),
            _ = stop.cancelled() => {
                self.report(stopped_before_start(&inv, record_seq), closes);
                return;
            }
        };
        // Parameters are rendered (and refused) before anything runs. A
        // file delivery has none, and checks its own fields as it writes.
        let spec = match self.spec_of(&inv) {
            Ok(spec) => spec,
            Err(e) => {
                // Could not start here (type, user, directory, parameters): Invalid.
                self.report(ended(&inv, record_seq, InvocationStatus::Invalid, ErrorCode::parse(e.error_code()), &e.to_string()), closes);
                return;
            }
        };
        let (start, _) = self.journal_start(&inv, record_seq);
        // The start (and a schedule's fire before it) on disk before the
        // script starts, so a restart never runs it again; the Running
        // report shares the sync. A failing journal holds them and the run
        // goes on, as before. A supervised run's supervisor is launched and
        // its directory prepared (not synced) meanwhile: the supervisor waits
        // for its go, and the directory holds no trace of a start until the
        // supervisor syncs `ran`, so a crash in between loses nothing.
        let (_, prepared) = tokio::join!(self.flush(), self.prepare(&inv, record_seq, spec.as_ref()));
        self.run_started(inv, record_seq, stop, closes, Begun { permit, spec, start, prepared }).await;
    }

    /// What runs: the script's spec, parameters rendered (`None` for a
    /// file delivery, which has none and checks its own fields as it writes).
    fn spec_of(&self, inv: &Invocation) -> Result<Option<RunSpec>, exec::params::ParamError> {
        if inv.command_type.is_file() {
            return Ok(None);
        }
        let instance_id = self.instance_id.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let mut spec = exec::spec_for(inv, &instance_id)?;
        spec.script_root = self.script_root.clone();
        // First, so the invocation's own variables win.
        spec.env.splice(0..0, self.script_env.iter().cloned());
        Ok(Some(spec))
    }

    /// Journals a run's start and its `Running` report (not yet synced);
    /// returns the start time and the report's id.
    fn journal_start(&self, inv: &Invocation, record_seq: u32) -> (String, Option<u64>) {
        if let Err(e) = self.state().started(&inv.invoke_id, record_seq) {
            tracing::error!(invoke_id = %inv.invoke_id, error = %e, "cannot journal start");
        }
        let start = now();
        let running = RecordReport {
            invoke_id: inv.invoke_id.clone(),
            record_seq,
            status: InvocationStatus::Running,
            exit_code: None,
            output_b64: String::new(),
            dropped: 0,
            error_code: None,
            error_info: String::new(),
            start_time: start.clone(),
            finish_time: String::new(),
        };
        let id = self.report(running, false);
        (start, id)
    }

    /// A run whose start is journaled (and synced, or held by a degraded
    /// journal): runs it and reports its outcome.
    async fn run_started(self: &Arc<Self>, inv: Invocation, record_seq: u32, stop: CancellationToken, closes: bool, begun: Begun) {
        let Begun { permit, spec, start, prepared } = begun;
        let report = match spec {
            None => {
                let rerun = self.file_reruns.lock().unwrap_or_else(|e| e.into_inner()).remove(&inv.invoke_id);
                super::files::deliver(&inv, &self.files, stop, rerun).await
            }
            // Parameters (`{{name}}`, `{{ACS::InstanceId}}`) are spliced into
            // the request as into a script, so one invocation can name a
            // per-node path or health URL.
            Some(spec) if inv.command_type == CommandType::ApplyKubeletReserved => {
                kubelet_run(&inv, &spec.script, record_seq, start, stop).await
            }
            Some(spec) => self.script_run(&inv, record_seq, spec, stop, prepared).await,
        };
        drop(permit);
        super::figures::run_finished();
        tracing::info!(invoke_id = %inv.invoke_id, status = report.status.as_str(), exit_code = ?report.exit_code, "run finished");
        self.report(report, closes);
        // The run directory holds the result until the report is on disk:
        // a crash before that re-attaches and reports it again.
        if self.flush().await
            && let Some(dir) = self.run_dir(&inv, record_seq)
        {
            remove_dir(dir).await;
        }
    }

    /// A supervised script run's supervisor, launched and waiting for its
    /// go, and its directory made ready (`None`: the run is not supervised,
    /// or has no directory name).
    async fn prepare(&self, inv: &Invocation, record_seq: u32, spec: Option<&RunSpec>) -> Prepared {
        #[cfg(unix)]
        {
            let spec = spec.filter(|_| inv.command_type != CommandType::ApplyKubeletReserved && !inv.command_type.is_file())?;
            let sup = self.supervision.as_ref()?;
            let dir = self.run_dir(inv, record_seq)?;
            let launched = exec::supervise::prepare_off_loop(dir.clone(), sup.program.clone(), sup.scope.clone(), spec.clone()).await;
            Some((dir, launched))
        }
        #[cfg(not(unix))]
        {
            let _ = (inv, record_seq, spec);
            None
        }
    }

    async fn script_run(
        &self,
        inv: &Invocation,
        record_seq: u32,
        spec: RunSpec,
        stop: CancellationToken,
        prepared: Prepared,
    ) -> RecordReport {
        #[cfg(unix)]
        if let Some((dir, prepared)) = prepared {
            let started = match prepared {
                Ok(launched) => launched.go().await,
                Err(e) => Err(e),
            };
            let exited = match started {
                Ok(exited) => Some(Some(exited)),
                Err(exec::supervise::SuperviseError::Busy(_)) => Some(None),
                Err(e) => {
                    // No run directory (state dir full, unwritable): the run
                    // still happens, as the agent's child.
                    tracing::warn!(invoke_id = %inv.invoke_id, error = %e, "cannot supervise the run apart from the agent; running it in-process");
                    exec::supervise::remove(&dir);
                    None
                }
            };
            if let Some(exited) = exited {
                return match self.watch(inv, record_seq, &dir, stop, false, exited).await {
                    Watched::Finished(out) => outcome_report(inv, record_seq, &out),
                    Watched::Vanished => {
                        let info = "the run's supervisor ended without a result; its outcome is unknown";
                        ended(inv, record_seq, InvocationStatus::Error, Some(ErrorCode::ExecutionInterrupted), info)
                    }
                    Watched::NeverRan => {
                        let info = "the run's supervisor exited before starting the script (see supervisor.log in its run directory)";
                        ended(inv, record_seq, InvocationStatus::Invalid, ErrorCode::parse(exec::codes::EXECUTION_EXCEPTION), info)
                    }
                };
            }
        }
        #[cfg(not(unix))]
        let _ = prepared;
        let (chunk_tx, forward) = self.live_forwarder(inv, record_seq);
        let out = exec::run(spec, stop, Some(chunk_tx)).await;
        let _ = forward.await;
        outcome_report(inv, record_seq, &out)
    }
}

/// A run past its start: its slot, what it runs (`None`: a file
/// delivery), its start time, and its supervisor launched (or why not).
struct Begun {
    permit: Option<tokio::sync::OwnedSemaphorePermit>,
    spec: Option<RunSpec>,
    start: String,
    prepared: Prepared,
}

/// A one-shot run started with its acceptance ([`Runner::start_at_once`]):
/// its slot, what it runs, its journaled start and `Running` report, and
/// its supervisor being launched.
struct EarlyStart {
    permit: tokio::sync::OwnedSemaphorePermit,
    spec: RunSpec,
    start: String,
    running_report: Option<u64>,
    prepared: tokio::task::JoinHandle<Prepared>,
}

impl EarlyStart {
    /// The acceptance was not synced, so neither was the start: the run
    /// will come again with the hub's re-delivery. Its supervisor, launched
    /// and waiting for a go, is withdrawn: it exits without a trace. Its
    /// directory is left as it is (no `ran`): the re-delivery claims it
    /// again, and the next start of the agent sweeps it if none comes;
    /// removing it here could race that claim.
    fn abandon(self) {
        let EarlyStart { permit, prepared, .. } = self;
        tokio::spawn(async move {
            let prepared = prepared.await.ok().flatten();
            #[cfg(unix)]
            if let Some((_, Ok(launched))) = prepared {
                launched.withdraw().await;
            }
            #[cfg(not(unix))]
            let _ = prepared;
            drop(permit);
        });
    }
}

/// A supervised run's directory, and its supervisor launched (or why not).
#[cfg(unix)]
type Prepared = Option<(PathBuf, Result<exec::supervise::Launched, exec::supervise::SuperviseError>)>;
#[cfg(not(unix))]
type Prepared = Option<std::convert::Infallible>;

/// How watching a supervised run ended (platform-neutral mirror of
/// `exec::supervise::Watched`; elsewhere only `Vanished` is ever made).
#[cfg_attr(not(unix), allow(dead_code))]
enum Watched {
    Finished(Box<exec::RunOutcome>),
    NeverRan,
    Vanished,
}

async fn remove_dir(dir: PathBuf) {
    #[cfg(unix)]
    let _ = tokio::task::spawn_blocking(move || exec::supervise::remove(&dir)).await;
    #[cfg(not(unix))]
    let _ = dir;
}

/// The final report of a script run.
fn outcome_report(inv: &Invocation, record_seq: u32, out: &exec::RunOutcome) -> RecordReport {
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
        error_info: out.error_info.clone(),
        start_time: out.start_time.format("%Y-%m-%dT%H:%M:%SZ").to_string(),
        finish_time: out.finish_time.format("%Y-%m-%dT%H:%M:%SZ").to_string(),
    }
}

/// `ApplyKubeletReserved`: the content is a JSON plan request; the output
/// is the diff; a rollback or refusal is `Error` with the kubelet module's
/// error code (`KubeletUnhealthy`, `InvalidKubeletPlan`, …).
///
/// A stop request does not interrupt an apply: cutting it between the
/// write and the health check would skip the rollback. The apply is
/// bounded by its own health timeout and by the invocation timeout.
async fn kubelet_run(inv: &Invocation, content: &str, record_seq: u32, start: String, _stop: CancellationToken) -> RecordReport {
    let timeout = std::time::Duration::from_secs(inv.timeout_secs.max(1));
    let outcome = match tokio::time::timeout(timeout, crate::kubelet::run_invocation(content)).await {
        Ok(o) => o,
        Err(_) => {
            return RecordReport {
                start_time: start,
                ..ended(inv, record_seq, InvocationStatus::Timeout, Some(ErrorCode::ExecutionTimeout), "")
            };
        }
    };
    let output_b64 = base64::engine::general_purpose::STANDARD.encode(outcome.output.as_bytes());
    let finish_time = now();
    if outcome.ok {
        RecordReport {
            invoke_id: inv.invoke_id.clone(),
            record_seq,
            status: InvocationStatus::Success,
            exit_code: Some(0),
            output_b64,
            dropped: 0,
            error_code: None,
            error_info: String::new(),
            start_time: start,
            finish_time,
        }
    } else {
        let info = format!("kubelet reservation not applied: {}", outcome.error_code);
        // The apply did not complete (refused, or rolled back): Error, not
        // Failed, which Cloud Assistant keeps for a non-zero exit code.
        RecordReport {
            output_b64,
            start_time: start,
            ..ended(inv, record_seq, InvocationStatus::Error, ErrorCode::parse(&outcome.error_code), &info)
        }
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
