//! Group commit for the hub's small, frequent writes (agent reports,
//! delivery acks, heartbeats, sessions starting and ending): one task drains a bounded queue and applies
//! what is waiting in one transaction, so a fleet-wide fan-out costs a
//! handful of fsyncs instead of one per report. Once a batch committed,
//! the invocations it touched are announced (`hub::changes`).
//!
//! That task runs on a thread of its own (`hub-writer`, with a
//! single-threaded runtime), not among the agent sessions: every commit
//! wakes hundreds of sessions at once to send their acknowledgements, and
//! the writer's own next wake-up (each statement's answer) then waited
//! behind all of them, 3 to 8 ms a batch during a fan-out (issue #21).

use std::sync::Arc;

use tokio::sync::{mpsc, oneshot};

use super::changes::Changes;
use super::store::{ReportEffect, Store, StoreError, WriteOp};

/// Queue bound: senders wait (back-pressure on agent sockets) beyond it.
const QUEUE: usize = 8192;
/// Most operations per transaction; bounds transaction time and memory.
const MAX_BATCH: usize = 512;

/// The batch's error, shared by every operation in it (the cause kept).
type Reply = oneshot::Sender<Result<ReportEffect, Arc<StoreError>>>;

#[derive(Clone)]
pub struct Writer {
    tx: mpsc::Sender<(WriteOp, Option<Reply>)>,
}

impl Writer {
    /// Starts the writer's thread; it ends once every `Writer` is dropped.
    pub fn spawn(store: Arc<dyn Store>, changes: Arc<Changes>) -> std::io::Result<Self> {
        let (tx, rx) = mpsc::channel(QUEUE);
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        std::thread::Builder::new().name("hub-writer".into()).spawn(move || rt.block_on(run(store, changes, rx)))?;
        Ok(Self { tx })
    }

    /// Applies `op` durably; returns once its transaction committed.
    pub async fn write(&self, op: WriteOp) -> Result<ReportEffect, StoreError> {
        self.submit(op).await?.await
    }

    /// Queues `op` (waiting only for room in the queue, so ops keep the
    /// order they were submitted in) and returns what resolves once its
    /// transaction committed. A session submits the next frame's op while
    /// the previous one is still committing: both can share one batch.
    pub async fn submit(&self, op: WriteOp) -> Result<impl Future<Output = Result<ReportEffect, StoreError>> + use<>, StoreError> {
        let (reply, rx) = oneshot::channel();
        self.tx.send((op, Some(reply))).await.map_err(|_| StoreError::WriterStopped)?;
        Ok(async move { rx.await.map_err(|_| StoreError::WriterStopped)?.map_err(StoreError::Batch) })
    }

    /// Fire and forget (heartbeat `last_seen`): dropped when the queue is full.
    pub fn write_lossy(&self, op: WriteOp) {
        let _ = self.tx.try_send((op, None));
    }
}

async fn run(store: Arc<dyn Store>, changes: Arc<Changes>, mut rx: mpsc::Receiver<(WriteOp, Option<Reply>)>) {
    let mut ops = Vec::with_capacity(MAX_BATCH);
    let mut replies = Vec::with_capacity(MAX_BATCH);
    while let Some(first) = rx.recv().await {
        ops.clear();
        replies.clear();
        ops.push(first.0);
        replies.push(first.1);
        while ops.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok((op, r)) => {
                    ops.push(op);
                    replies.push(r);
                }
                Err(_) => break,
            }
        }
        let started = std::time::Instant::now();
        let applied = store.apply_batch(&ops).await;
        super::metrics::get().batch(ops.len(), started.elapsed());
        match applied {
            Ok(effects) => {
                for op in &ops {
                    match op {
                        WriteOp::Report { report, .. } => changes.announce(&report.invoke_id),
                        WriteOp::Delivered { invoke_id, .. } => changes.announce(invoke_id),
                        WriteOp::Touch { .. } | WriteOp::Connected { .. } | WriteOp::Disconnected { .. } => {}
                    }
                }
                for (r, e) in replies.drain(..).zip(effects) {
                    if let Some(r) = r {
                        let _ = r.send(Ok(e));
                    }
                }
            }
            Err(e) => {
                tracing::error!(error = %e, batch = ops.len(), "batched store write failed");
                let e = Arc::new(e);
                for r in replies.drain(..).flatten() {
                    let _ = r.send(Err(e.clone()));
                }
            }
        }
    }
}
