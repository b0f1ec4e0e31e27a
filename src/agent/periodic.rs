//! Timed and boot-triggered invocations on the agent: schedules live here
//! (so they fire while the hub is unreachable) and their progress is
//! journaled (so they survive restarts).
//!
//! Policies (docs/schedule.md): a missed fire is skipped, never replayed
//! as a storm; a fire due while the previous run is still going is skipped
//! and recorded as a `Cancelled` record (it never started) with ErrorCode
//! `PreviousRunStillRunning`; `StopInvocation` ends the schedule and kills
//! the run in progress; a new revision (`ModifyInvocationAttribute`)
//! re-arms the schedule with the new definition. A windowed invocation
//! (`fire_window`, docs/fleet.md) asks the hub before each fire
//! (`agent::grants`) and runs only once granted; a fire still waiting when
//! the next one is due ends `Cancelled` with ErrorCode `FireNotGranted`,
//! one the hub denies ends `Cancelled` with the hub's code.

use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};

use chrono::{DateTime, Utc};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::grants::Answer;
use super::runner::{Runner, ended, now, stopped_before_start};
use super::schedule::{self, Due, Schedule, Zone};
use crate::lifecycle::{ErrorCode, InvocationStatus, RepeatMode};
use crate::protocol::Invocation;

/// Longest single sleep: re-evaluating at least this often keeps a
/// schedule honest across wall-clock jumps (NTP steps, suspend).
const MAX_SLEEP: std::time::Duration = std::time::Duration::from_secs(60);

impl Runner {
    /// A `Period` invocation's schedule. `revisions` carries its newest
    /// definition: a `ModifyInvocationAttribute` revision re-arms the
    /// schedule at once (new frequency, content and parameters for the next
    /// fire); a run already going finishes with the definition it started with.
    pub(super) async fn periodic(self: &Arc<Self>, mut revisions: watch::Receiver<Invocation>, stop: CancellationToken) {
        let mut inv = revisions.borrow_and_update().clone();
        let Some(mut sched) = self.schedule_of(&inv, 1) else { return };
        let created = DateTime::parse_from_rfc3339(&inv.created_at).map(|t| t.with_timezone(&Utc)).unwrap_or_else(|_| Utc::now());
        let (mut seq, mut last_fire) = match self.state().last_fire(&inv.invoke_id) {
            Some((seq, at)) => (seq, DateTime::parse_from_rfc3339(&at).ok().map(|t| t.with_timezone(&Utc))),
            None => (0, None),
        };
        // When the schedule was last re-armed by a revision: fires count
        // from then, so a new frequency does not fire at once for slots it
        // would have had before the change.
        let mut rearmed: Option<DateTime<Utc>> = None;
        let mut current: Option<tokio::task::JoinHandle<()>> = None;
        // The fire in `current`, when it waits for the hub's grant.
        let mut ticket: Option<Arc<Ticket>> = None;
        // The sender lives in the runner for as long as this task does; if
        // it is gone anyway, stop listening rather than spin.
        let mut listening = true;
        // `changed()` below marks the new value seen: remember it was.
        let mut revised = false;
        let mut invalid = false;
        loop {
            if listening && (std::mem::take(&mut revised) || revisions.has_changed().unwrap_or(false)) {
                let next = revisions.borrow_and_update().clone();
                match self.schedule_of_quiet(&next) {
                    Ok(s) => {
                        tracing::info!(invoke_id = %next.invoke_id, revision = next.revision, frequency = ?next.frequency, "schedule re-armed with a new revision");
                        // A windowed invocation's fires must keep the nominal
                        // instants every target shares (one window per
                        // instant): a revision that keeps the frequency
                        // keeps the anchor (the hub refuses a frequency
                        // change on one).
                        let keep_anchor = next.fire_window && next.frequency == inv.frequency;
                        sched = s;
                        inv = next;
                        if !keep_anchor {
                            rearmed = Some(Utc::now());
                        }
                    }
                    Err(e) => {
                        // The hub validates with the same grammar, so only a
                        // version skew gets here: end as a bad first frequency does.
                        inv = next;
                        invalid = true;
                        self.report(ended(&inv, seq + 1, InvocationStatus::Invalid, Some(ErrorCode::BadCronExpression), &e), true);
                        break;
                    }
                }
            }
            let anchor = match (&sched, rearmed) {
                (Schedule::At(_), _) | (_, None) => last_fire,
                (_, Some(r)) => Some(last_fire.map_or(r, |l| l.max(r))),
            };
            let due = sched.next_due(created, anchor, Utc::now());
            match due {
                Due::Now { scheduled, missed } => {
                    if missed > 0 {
                        tracing::warn!(invoke_id = %inv.invoke_id, missed, "skipped missed fires");
                    }
                    seq += 1;
                    last_fire = Some(scheduled);
                    if let Err(e) = self.state().fired(&inv.invoke_id, seq, scheduled.to_rfc3339()) {
                        tracing::error!(invoke_id = %inv.invoke_id, error = %e, "cannot journal fire");
                    }
                    // A fire still waiting for the hub's grant ends now:
                    // this one takes its place.
                    if current.as_ref().is_some_and(|h| !h.is_finished())
                        && ticket.as_ref().is_some_and(|t| t.supersede())
                        && let Some(h) = current.take()
                    {
                        let _ = h.await;
                    }
                    if current.as_ref().is_some_and(|h| !h.is_finished()) {
                        tracing::warn!(invoke_id = %inv.invoke_id, record_seq = seq, "previous run still going; fire skipped");
                        let info = "the previous run had not finished when this fire was due; skipped";
                        self.report(
                            ended(&inv, seq, InvocationStatus::Cancelled, ErrorCode::parse("PreviousRunStillRunning"), info),
                            false,
                        );
                        continue;
                    }
                    let me = self.clone();
                    let (inv2, token) = (inv.clone(), stop.child_token());
                    if inv.fire_window {
                        let t = Arc::new(Ticket::default());
                        ticket = Some(t.clone());
                        current = Some(tokio::spawn(async move { me.gated_fire(inv2, seq, scheduled, t, token).await }));
                    } else {
                        ticket = None;
                        current = Some(tokio::spawn(async move { me.run_once(inv2, seq, token, false).await }));
                    }
                }
                Due::Wait { until, .. } => {
                    let wait = (until - Utc::now()).to_std().unwrap_or_default().min(MAX_SLEEP);
                    tokio::select! {
                        _ = stop.cancelled() => break,
                        _ = tokio::time::sleep(wait) => {}
                        changed = revisions.changed(), if listening => {
                            listening = changed.is_ok();
                            revised = listening;
                        }
                    }
                }
                Due::Done { .. } => break,
            }
        }
        // Stopped, or no fires left: let the run in progress end (a stop
        // kills it through the child token), then close the invocation.
        if let Some(h) = current {
            let _ = h.await;
        }
        if invalid {
            return;
        }
        if stop.is_cancelled() {
            // The hub needs a Stopped record to mark the instance Stopped.
            let mut r = stopped_before_start(&inv, seq + 1);
            r.error_info = "schedule stopped".into();
            self.report(r, true);
        } else if let Err(e) = self.state().close(&inv.invoke_id) {
            tracing::error!(invoke_id = %inv.invoke_id, error = %e, "cannot journal close");
        }
    }

    /// One fire of a windowed invocation: ask the hub, run once granted.
    /// Ends `Cancelled` when the hub denies it or the next fire comes
    /// first (`ticket` superseded); a stop ends the wait silently (the
    /// schedule reports the stop).
    async fn gated_fire(
        self: Arc<Self>,
        inv: Invocation,
        seq: u32,
        scheduled: DateTime<Utc>,
        ticket: Arc<Ticket>,
        stop: CancellationToken,
    ) {
        let at = scheduled.to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
        let answer = tokio::select! {
            a = self.grants.ask(&inv.invoke_id, seq, &at) => Some(a),
            _ = ticket.superseded.cancelled() => None,
            _ = stop.cancelled() => return,
        };
        let (code, info) = match answer {
            Some(Answer::Granted) if ticket.start() => {
                tracing::debug!(invoke_id = %inv.invoke_id, record_seq = seq, "fire granted");
                return self.run_once(inv, seq, stop, false).await;
            }
            Some(Answer::Denied { code, info }) => (code.unwrap_or(ErrorCode::FireNotGranted), info),
            // Superseded (a grant arriving at the same moment is too late).
            _ => (ErrorCode::FireNotGranted, format!("no slot in the rollout window of the fire due at {at} before the next fire was due")),
        };
        tracing::info!(invoke_id = %inv.invoke_id, record_seq = seq, code = %code, "fire not granted; not run");
        self.report(ended(&inv, seq, InvocationStatus::Cancelled, Some(code), &info), false);
    }

    /// The schedule of `inv`; a frequency the agent cannot use ends the
    /// invocation `Invalid` with Cloud Assistant's code for it (record `seq`).
    fn schedule_of(&self, inv: &Invocation, seq: u32) -> Option<Schedule> {
        match self.schedule_of_quiet(inv) {
            Ok(s) => Some(s),
            Err(e) => {
                self.report(ended(inv, seq, InvocationStatus::Invalid, Some(ErrorCode::BadCronExpression), &e), true);
                None
            }
        }
    }

    fn schedule_of_quiet(&self, inv: &Invocation) -> Result<Schedule, String> {
        let freq = inv.frequency.clone().unwrap_or_default();
        // A cron without a zone runs in the instance's own zone.
        schedule::parse(&freq).map(|s| s.with_default_zone(Zone::system())).map_err(|e| e.to_string())
    }

    /// `NextRebootOnly` / `EveryReboot`: remember the boot we were accepted
    /// on; run when started on a different one.
    pub(super) async fn on_boot(self: &Arc<Self>, inv: Invocation, stop: CancellationToken) {
        let mode = inv.repeat_mode;
        let current = super::identity::boot_id();
        let seen = self.state().boot_seen(&inv.invoke_id);
        if seen.is_none() {
            if let Err(e) = self.state().see_boot(&inv.invoke_id, &current) {
                tracing::error!(invoke_id = %inv.invoke_id, error = %e, "cannot journal boot id");
            }
        } else if schedule::reboot_due(mode, seen.as_deref(), &current) {
            let seq = self.state().last_fire(&inv.invoke_id).map(|(s, _)| s).unwrap_or(0) + 1;
            // Journal the boot and the fire first: a crash during the run
            // must not fire again on this same boot.
            let journaled = {
                let mut st = self.state();
                st.see_boot(&inv.invoke_id, &current).and_then(|_| st.fired(&inv.invoke_id, seq, now()))
            };
            if let Err(e) = journaled {
                tracing::error!(invoke_id = %inv.invoke_id, error = %e, "cannot journal boot fire");
            }
            let closes = mode == RepeatMode::NextRebootOnly;
            self.run_once(inv.clone(), seq, stop.child_token(), closes).await;
            if closes {
                return;
            }
        }
        // Wait (possibly for ever) for a stop; the next boot restarts us.
        stop.cancelled().await;
        let seq = self.state().last_fire(&inv.invoke_id).map(|(s, _)| s).unwrap_or(0) + 1;
        let mut r = stopped_before_start(&inv, seq);
        r.error_info = "stopped before the next boot".into();
        debug_assert_eq!(r.status, InvocationStatus::Cancelled);
        self.report(r, true);
    }
}

/// Whether a gated fire started or was superseded: decided once, by
/// whichever comes first (a grant, or the next fire being due).
#[derive(Default)]
struct Ticket {
    state: AtomicU8,
    superseded: CancellationToken,
}

const WAITING: u8 = 0;
const STARTED: u8 = 1;
const SUPERSEDED: u8 = 2;

impl Ticket {
    /// The grant arrived: true when the fire may still run.
    fn start(&self) -> bool {
        self.state.compare_exchange(WAITING, STARTED, Ordering::AcqRel, Ordering::Acquire).is_ok()
    }

    /// The next fire is due: true when this one was still waiting (it
    /// now ends without running).
    fn supersede(&self) -> bool {
        let won = self.state.compare_exchange(WAITING, SUPERSEDED, Ordering::AcqRel, Ordering::Acquire).is_ok();
        if won {
            self.superseded.cancel();
        }
        won
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ticket_is_started_or_superseded_never_both() {
        let t = Ticket::default();
        assert!(t.start());
        assert!(!t.supersede());
        assert!(!t.superseded.is_cancelled());
        let t = Ticket::default();
        assert!(t.supersede());
        assert!(t.superseded.is_cancelled());
        assert!(!t.start());
    }
}
