//! The agent's durable state: which invocations it accepted and which
//! reports the hub has not acknowledged yet. Every change is journaled
//! before it is acted on or reported, so a restart loses nothing.
//!
//! A journal that cannot be written (state dir full, I/O error) does not
//! lose results: every change but an acceptance is then *held* — applied in
//! memory, queued in order, and retried by [`AgentState::retry_held`] — and
//! the state says it is degraded ([`AgentState::degraded`]). Reports keep
//! flowing to the hub, whose acknowledgement makes them durable there. An
//! acceptance alone must be on disk before it is acknowledged, so it fails
//! instead (the hub delivers the invocation again later).
//!
//! Changes are appended without waiting for the disk; the runner makes them
//! durable with one deferred `fdatasync` ([`AgentState::sync_point`], run on
//! a blocking thread) before anything depends on them: an acceptance before
//! its ack, a run's start before the script starts, a report before it is
//! sent ([`AgentState::sendable_below`]). One sync covers every change made
//! before it, so concurrent runs share them. A failed sync leaves the file's
//! tail unknown: the state turns degraded and rewrites the journal from
//! memory (a compaction) once the disk works again.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::journal::{Journal, JournalError, JournalLimits, SyncPoint};
use crate::lifecycle::InvocationStatus;
use crate::protocol::{Invocation, RecordReport};

/// Ids of finished invocations remembered so a late re-delivery is not
/// run twice. Bounded: the hub only re-delivers non-final work, so this
/// guards the window between our final report and its acknowledgement.
const REMEMBER_FINISHED: usize = 10_000;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "k", rename_all = "snake_case")]
pub enum Entry {
    Accepted {
        invocation: Invocation,
    },
    Started {
        invoke_id: String,
        record_seq: u32,
    },
    /// `closes`: this final report also ends the invocation — one record,
    /// so a crash cannot leave a final report without the end (older
    /// journals follow it with a separate `Finished`).
    Report {
        report_id: u64,
        report: RecordReport,
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        closes: bool,
    },
    Acked {
        report_id: u64,
    },
    Finished {
        invoke_id: String,
    },
    /// A periodic fire: its record number and nominal instant (RFC 3339).
    Fired {
        invoke_id: String,
        record_seq: u32,
        scheduled: String,
    },
    /// The boot a reboot-triggered invocation last saw.
    BootSeen {
        invoke_id: String,
        boot_id: String,
    },
}

/// What [`AgentState::accept`] made of a delivered invocation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accepted {
    /// Never seen: journaled, to be run.
    New,
    /// A higher revision of an open invocation: journaled in place of the
    /// held copy; its schedule is to be re-armed.
    Revised,
    /// Already held at this or a newer revision, or already finished: a
    /// re-delivery, only acknowledged.
    Duplicate,
}

/// What the agent must do after reopening its state.
#[derive(Debug, Default)]
pub struct Recovery {
    /// Accepted, never started: run them now.
    pub to_run: Vec<Invocation>,
    /// Were running when the agent died: their outcome is unknown.
    pub interrupted: Vec<(Invocation, u32)>,
}

pub struct AgentState {
    journal: Journal<Entry>,
    open: BTreeMap<String, Invocation>,
    started: HashMap<String, u32>,
    pending: BTreeMap<u64, RecordReport>,
    finished: VecDeque<String>,
    next_report_id: u64,
    fires: HashMap<String, (u32, String)>,
    boot_seen: HashMap<String, String>,
    /// Changes applied in memory that the journal could not take yet, in order.
    held: VecDeque<Entry>,
    /// Why the journal is failing, while it is.
    degraded: Option<String>,
    /// Reports appended but not yet synced, oldest first: (append number,
    /// report id). None of them may be sent yet.
    unsynced_reports: VecDeque<(u64, u64)>,
    /// A deferred sync failed: what the file holds past the last good sync
    /// is unknown, so it is rewritten from memory before anything else is
    /// appended.
    rewrite: bool,
}

/// Changes held in memory at most; beyond it the oldest are dropped (logged).
/// Each is small (a report ≤ ~40 KiB), and reports are also acked away.
const MAX_HELD: usize = 100_000;

impl AgentState {
    pub fn open(dir: &Path) -> Result<(Self, Recovery), JournalError> {
        let (journal, entries, report) = Journal::<Entry>::open(dir, JournalLimits::default())?;
        tracing::info!(entries = entries.len(), report = ?report, "journal opened");
        let mut s = Self {
            journal,
            open: BTreeMap::new(),
            started: HashMap::new(),
            pending: BTreeMap::new(),
            finished: VecDeque::new(),
            next_report_id: 1,
            fires: HashMap::new(),
            boot_seen: HashMap::new(),
            held: VecDeque::new(),
            degraded: None,
            unsynced_reports: VecDeque::new(),
            rewrite: false,
        };
        for e in entries {
            s.apply(e);
        }
        let mut rec = Recovery::default();
        for (id, inv) in &s.open {
            match s.started.get(id) {
                Some(seq) => rec.interrupted.push((inv.clone(), *seq)),
                None => rec.to_run.push(inv.clone()),
            }
        }
        Ok((s, rec))
    }

    fn apply(&mut self, e: Entry) {
        match e {
            // A later revision of an open invocation (ModifyInvocationAttribute)
            // replaces it; an older or equal one never does, so replaying the
            // journal in any order of deliveries ends on the newest copy.
            Entry::Accepted { invocation } => match self.open.get(&invocation.invoke_id) {
                Some(held) if held.revision >= invocation.revision => {}
                _ => {
                    self.open.insert(invocation.invoke_id.clone(), invocation);
                }
            },
            Entry::Started { invoke_id, record_seq } => {
                self.started.insert(invoke_id, record_seq);
            }
            Entry::Report { report_id, report, closes } => {
                if closes {
                    self.apply(Entry::Finished { invoke_id: report.invoke_id.clone() });
                }
                self.next_report_id = self.next_report_id.max(report_id.saturating_add(1));
                // A final report ends that record's run: it is no longer
                // "started" (periodic invocations stay open between runs).
                if report.status.is_final() && self.started.get(&report.invoke_id) == Some(&report.record_seq) {
                    self.started.remove(&report.invoke_id);
                }
                self.pending.insert(report_id, report);
            }
            Entry::Acked { report_id } => {
                self.pending.remove(&report_id);
            }
            Entry::Finished { invoke_id } => {
                self.open.remove(&invoke_id);
                self.started.remove(&invoke_id);
                self.fires.remove(&invoke_id);
                self.boot_seen.remove(&invoke_id);
                self.remember_finished(invoke_id);
            }
            Entry::Fired { invoke_id, record_seq, scheduled } => {
                self.fires.insert(invoke_id, (record_seq, scheduled));
            }
            Entry::BootSeen { invoke_id, boot_id } => {
                self.boot_seen.insert(invoke_id, boot_id);
            }
        }
    }

    fn remember_finished(&mut self, id: String) {
        self.finished.push_back(id);
        while self.finished.len() > REMEMBER_FINISHED {
            self.finished.pop_front();
        }
    }

    /// Journals `e` (appended, synced later: see the module doc) and
    /// applies it; when the disk refuses, holds it. Errors only for records
    /// no retry can write.
    fn write(&mut self, e: Entry) -> Result<(), JournalError> {
        // Awaiting a rewrite, only the status tick retries (a compaction
        // per change would be too much on a failing disk).
        if !self.held.is_empty() && !self.rewrite {
            self.retry_held();
        }
        if self.held.is_empty() && !self.rewrite {
            match self.journal.append_unsynced(&e) {
                Ok(()) => {
                    if let Entry::Report { report_id, .. } = &e {
                        self.unsynced_reports.push_back((self.journal.appended(), *report_id));
                    }
                }
                Err(err) if is_disk_trouble(&err) => {
                    self.enter_degraded(&err);
                    self.hold(e.clone());
                }
                Err(err) => return Err(err),
            }
        } else {
            self.hold(e.clone());
        }
        self.apply(e);
        Ok(())
    }

    /// Journals `e` only if the journal takes it now (held changes first,
    /// to keep the order); nothing is applied otherwise. The caller syncs
    /// before acting on it, and undoes it if that fails.
    fn write_durable(&mut self, e: Entry) -> Result<(), JournalError> {
        if !self.held.is_empty() && !self.rewrite {
            self.retry_held();
        }
        if let Some(reason) = &self.degraded {
            return Err(JournalError::Held { held: self.held.len(), reason: reason.clone() });
        }
        if let Err(err) = self.journal.append_unsynced(&e) {
            if is_disk_trouble(&err) {
                self.enter_degraded(&err);
            }
            return Err(err);
        }
        self.apply(e);
        Ok(())
    }

    fn hold(&mut self, e: Entry) {
        self.held.push_back(e);
        if self.held.len() > MAX_HELD {
            self.held.pop_front();
            tracing::error!(limit = MAX_HELD, "too many journal changes held in memory; the oldest is dropped");
        }
    }

    fn enter_degraded(&mut self, err: &JournalError) {
        if self.degraded.is_none() {
            // Once per episode, not per write: a full disk must not flood the log.
            tracing::error!(error = %err, "journal cannot be written; holding changes in memory and reporting anyway (agent degraded)");
        }
        self.degraded = Some(err.to_string());
    }

    /// Writes held changes, oldest first, until one fails. Returns true when
    /// nothing is held any more (the agent is healthy again).
    pub fn retry_held(&mut self) -> bool {
        let before = self.held.len();
        if self.rewrite {
            // After a failed sync, appending to the file would build on a
            // tail of unknown content: the compacted file is the whole
            // in-memory state, held changes included.
            return match self.compact_now() {
                Ok(()) => {
                    self.held.clear();
                    self.rewrite = false;
                    self.degraded = None;
                    tracing::info!(written = before, "journal rewritten after a failed sync (agent healthy)");
                    true
                }
                Err(err) => {
                    self.degraded = Some(err.to_string());
                    false
                }
            };
        }
        while let Some(e) = self.held.front() {
            match self.journal.append(e) {
                Ok(()) => {
                    self.held.pop_front();
                }
                Err(JournalError::FileFull { .. }) if self.compact_now().is_ok() => {
                    // The file reached its size limit: the compacted file
                    // holds the live state, held changes included.
                    self.held.clear();
                }
                Err(err) if is_disk_trouble(&err) => {
                    self.degraded = Some(err.to_string());
                    return false;
                }
                Err(err) => {
                    // Cannot ever be written: keep going without it.
                    tracing::error!(error = %err, "held journal change can never be written; dropped");
                    self.held.pop_front();
                }
            }
        }
        // Nothing held (only acceptances failed): ask the disk directly.
        if before == 0
            && self.degraded.is_some()
            && let Err(err) = self.journal.probe()
        {
            self.degraded = Some(err.to_string());
            return false;
        }
        if self.degraded.take().is_some() {
            tracing::info!(written = before, "journal writable again; held changes written (agent healthy)");
            if let Err(e) = self.maybe_compact() {
                tracing::warn!(error = %e, "journal compaction failed");
            }
        }
        true
    }

    /// Why the journal is failing, while it is.
    pub fn degraded(&self) -> Option<&str> {
        self.degraded.as_deref()
    }

    /// Changes held in memory, not yet on disk.
    pub fn held_count(&self) -> usize {
        self.held.len()
    }

    /// What a delivered invocation is to us, journaled before it is
    /// acknowledged. Never held: an acknowledged invocation (or revision)
    /// must survive a crash, or a re-delivery after restart could run it a
    /// second time or fall back to the older definition.
    pub fn accept(&mut self, inv: &Invocation) -> Result<Accepted, JournalError> {
        if self.finished.contains(&inv.invoke_id) {
            return Ok(Accepted::Duplicate);
        }
        let fresh = match self.open.get(&inv.invoke_id) {
            None => true,
            Some(held) if inv.revision > held.revision => false,
            Some(_) => return Ok(Accepted::Duplicate),
        };
        self.write_durable(Entry::Accepted { invocation: inv.clone() })?;
        Ok(if fresh { Accepted::New } else { Accepted::Revised })
    }

    /// The definition held for an open invocation (its newest revision).
    pub fn held_invocation(&self, invoke_id: &str) -> Option<&Invocation> {
        self.open.get(invoke_id)
    }

    pub fn started(&mut self, invoke_id: &str, record_seq: u32) -> Result<(), JournalError> {
        self.write(Entry::Started { invoke_id: invoke_id.to_string(), record_seq })
    }

    /// Journals a report and returns its id; a final report for a one-shot
    /// record also closes the invocation.
    pub fn report(&mut self, report: RecordReport, closes: bool) -> Result<u64, JournalError> {
        let id = self.next_report_id;
        // A queued Running report is superseded by the final one for the
        // same record: send only the newer state.
        if report.status.is_final() {
            let stale: Vec<u64> = self
                .pending
                .iter()
                .filter(|(_, r)| {
                    r.invoke_id == report.invoke_id && r.record_seq == report.record_seq && r.status == InvocationStatus::Running
                })
                .map(|(k, _)| *k)
                .collect();
            for k in stale {
                self.write(Entry::Acked { report_id: k })?;
            }
        }
        self.write(Entry::Report { report_id: id, report, closes })?;
        self.compact_quietly();
        Ok(id)
    }

    /// The last fire of a periodic invocation: (record_seq, nominal instant).
    pub fn last_fire(&self, invoke_id: &str) -> Option<(u32, String)> {
        self.fires.get(invoke_id).cloned()
    }

    pub fn fired(&mut self, invoke_id: &str, record_seq: u32, scheduled: String) -> Result<(), JournalError> {
        self.write(Entry::Fired { invoke_id: invoke_id.to_string(), record_seq, scheduled })
    }

    pub fn boot_seen(&self, invoke_id: &str) -> Option<String> {
        self.boot_seen.get(invoke_id).cloned()
    }

    pub fn see_boot(&mut self, invoke_id: &str, boot_id: &str) -> Result<(), JournalError> {
        self.write(Entry::BootSeen { invoke_id: invoke_id.to_string(), boot_id: boot_id.to_string() })
    }

    /// Ends an invocation without a report (a schedule that has no fires left).
    pub fn close(&mut self, invoke_id: &str) -> Result<(), JournalError> {
        if self.open.contains_key(invoke_id) {
            self.write(Entry::Finished { invoke_id: invoke_id.to_string() })?;
        }
        Ok(())
    }

    /// An acceptance whose sync failed is forgotten (the previous revision
    /// held again, if there was one), so the hub's re-delivery is taken
    /// afresh instead of answered as a duplicate it never was on disk.
    pub fn unaccept(&mut self, invoke_id: &str, previous: Option<Invocation>) {
        match previous {
            Some(inv) => {
                self.open.insert(invoke_id.to_string(), inv);
            }
            None => {
                self.open.remove(invoke_id);
            }
        }
    }

    /// A run's start journaled beside an acceptance that did not become
    /// durable is forgotten with it (see [`Self::unaccept`]): its start and
    /// its `Running` report, which must reach neither the hub nor the
    /// journal. The file may hold them already (the sync itself succeeded
    /// while another change was held), or a retry would append them (they
    /// were held), so they are dropped from what is held and the journal is
    /// rewritten from memory, as after a failed sync.
    pub fn unstart(&mut self, invoke_id: &str, running_report: Option<u64>) {
        self.started.remove(invoke_id);
        if let Some(id) = running_report {
            self.pending.remove(&id);
        }
        self.held.retain(|e| match e {
            Entry::Started { invoke_id: id, .. } => id != invoke_id,
            Entry::Report { report_id, .. } => Some(*report_id) != running_report,
            _ => true,
        });
        if !self.rewrite {
            let reason = "an acceptance and the start journaled with it did not become durable; rewriting the journal from memory";
            self.sync_failed(&JournalError::Held { held: self.held.len(), reason: reason.into() });
        }
    }

    pub fn ack(&mut self, report_id: u64) -> Result<(), JournalError> {
        if self.pending.contains_key(&report_id) {
            // Never waited for (issue #21): a lost ack costs one resend,
            // which the hub stores as a duplicate.
            self.write(Entry::Acked { report_id })?;
            self.compact_quietly();
        }
        Ok(())
    }

    /// A sync of every change so far, or `None` when there is nothing to
    /// sync (or the journal is degraded: its changes are held, not appended).
    pub fn sync_point(&self) -> Result<Option<SyncPoint>, JournalError> {
        if self.rewrite {
            return Ok(None);
        }
        self.journal.sync_point()
    }

    /// A sync up to append `upto` succeeded: those changes are on disk
    /// (`upto` 0: only release reports something else synced).
    pub fn synced(&mut self, upto: u64) {
        self.journal.mark_synced(upto);
        while self.unsynced_reports.front().is_some_and(|(n, _)| self.journal.is_synced(*n)) {
            self.unsynced_reports.pop_front();
        }
    }

    /// A sync failed: the file's tail is unknown. Degraded (reports go out
    /// as held ones do) until the journal is rewritten from memory.
    pub fn sync_failed(&mut self, err: &JournalError) {
        self.enter_degraded(err);
        self.rewrite = true;
        self.unsynced_reports.clear();
    }

    /// Whether any report waits for a sync before it may be sent.
    pub fn has_unsynced_reports(&self) -> bool {
        !self.unsynced_reports.is_empty()
    }

    /// Reports with an id below this may be sent: they are on disk (or
    /// held while the journal is degraded, which are sent all the same).
    pub fn sendable_below(&self) -> u64 {
        self.unsynced_reports.front().map_or(u64::MAX, |(_, id)| *id)
    }

    /// A failed compaction leaves the old journal whole: log it, carry on.
    fn compact_quietly(&mut self) {
        if let Err(e) = self.maybe_compact() {
            tracing::warn!(error = %e, "journal compaction failed; the journal stays as it is");
        }
    }

    /// True when no change is held in memory for want of a working
    /// journal (appended changes may still wait for their sync).
    pub fn is_durable(&self) -> bool {
        self.held.is_empty() && !self.rewrite
    }

    pub fn pending(&self) -> impl Iterator<Item = (&u64, &RecordReport)> {
        self.pending.iter()
    }

    pub fn backlog(&self) -> usize {
        self.pending.len()
    }

    pub fn open_count(&self) -> usize {
        self.open.len()
    }

    fn maybe_compact(&mut self) -> Result<(), JournalError> {
        // While changes are held the file is not the whole truth: compacting
        // now would write the in-memory state out of order with them.
        if !self.journal.needs_compaction() || !self.held.is_empty() || self.rewrite {
            return Ok(());
        }
        self.compact_now()
    }

    /// Rewrites the journal as the in-memory live set, which already
    /// includes every held change: success makes them all durable.
    fn compact_now(&mut self) -> Result<(), JournalError> {
        let mut live = Vec::new();
        for inv in self.open.values() {
            live.push(Entry::Accepted { invocation: inv.clone() });
        }
        for (id, seq) in &self.started {
            live.push(Entry::Started { invoke_id: id.clone(), record_seq: *seq });
        }
        for (id, r) in &self.pending {
            live.push(Entry::Report { report_id: *id, report: r.clone(), closes: false });
        }
        for id in &self.finished {
            live.push(Entry::Finished { invoke_id: id.clone() });
        }
        for (id, (seq, scheduled)) in &self.fires {
            live.push(Entry::Fired { invoke_id: id.clone(), record_seq: *seq, scheduled: scheduled.clone() });
        }
        for (id, boot) in &self.boot_seen {
            live.push(Entry::BootSeen { invoke_id: id.clone(), boot_id: boot.clone() });
        }
        self.journal.compact(&live)?;
        // Compaction synced everything.
        self.unsynced_reports.clear();
        tracing::info!(entries = live.len(), "journal compacted");
        Ok(())
    }
}

/// Failures a later retry may get past (disk full, I/O error, the journal's
/// size limit before compaction), as opposed to a record that can never be
/// written.
fn is_disk_trouble(e: &JournalError) -> bool {
    matches!(e, JournalError::Io { .. } | JournalError::FileFull { .. })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inv(id: &str) -> Invocation {
        serde_json::from_value(serde_json::json!({
            "invoke_id": id, "command_id": "c-1", "command_type": "RunShellScript",
            "content": "true", "timeout_secs": 0, "working_dir": "", "enable_parameter": false, "parameters": {},
        }))
        .unwrap()
    }

    fn final_report(id: &str) -> RecordReport {
        RecordReport {
            invoke_id: id.into(),
            record_seq: 0,
            status: InvocationStatus::Success,
            exit_code: Some(0),
            output_b64: String::new(),
            dropped: 0,
            error_code: None,
            error_info: String::new(),
            start_time: String::new(),
            finish_time: String::new(),
        }
    }

    /// A crash right after a one-shot's final report must not make the
    /// restarted agent think the invocation was never started (it used to
    /// be two records, and the run ran again).
    #[test]
    fn final_report_ends_the_invocation_in_the_same_record() {
        let d = tempfile::tempdir().unwrap();
        {
            let (mut st, _) = AgentState::open(d.path()).unwrap();
            assert_eq!(st.accept(&inv("t-1")).unwrap(), Accepted::New);
            st.started("t-1", 0).unwrap();
            st.report(final_report("t-1"), true).unwrap();
        }
        let (st, rec) = AgentState::open(d.path()).unwrap();
        assert!(rec.to_run.is_empty() && rec.interrupted.is_empty(), "{rec:?}");
        assert_eq!((st.open_count(), st.backlog()), (0, 1));
        // The journal holds exactly three records: accepted, started, report.
        let (_, entries, _) = Journal::<Entry>::open(d.path(), JournalLimits::default()).unwrap();
        assert_eq!(entries.len(), 3);
    }

    /// Changes are appended without a sync; a report may go out only once
    /// a sync covers it, and one sync covers every change before it.
    #[test]
    fn reports_wait_for_a_sync_that_covers_them() {
        let d = tempfile::tempdir().unwrap();
        let (mut st, _) = AgentState::open(d.path()).unwrap();
        assert!(st.sync_point().unwrap().is_none(), "nothing to sync yet");
        st.accept(&inv("t-s")).unwrap();
        st.started("t-s", 0).unwrap();
        let id = st.report(final_report("t-s"), true).unwrap();
        assert!(st.has_unsynced_reports());
        assert_eq!(st.sendable_below(), id, "the report is not on disk yet");
        let point = st.sync_point().unwrap().unwrap();
        let upto = point.upto();
        st.synced(point.sync().unwrap());
        assert!(!st.has_unsynced_reports() && st.sendable_below() == u64::MAX && st.is_durable());
        assert!(st.sync_point().unwrap().is_none(), "all synced: {upto}");
        drop(st);
        let (st, rec) = AgentState::open(d.path()).unwrap();
        assert!(rec.to_run.is_empty() && rec.interrupted.is_empty());
        assert_eq!(st.backlog(), 1);
    }

    /// A failed deferred sync: the file's tail is unknown, so the state is
    /// degraded, reports go out as held ones do, later changes are held,
    /// and recovery rewrites the journal from memory, losing nothing.
    #[test]
    fn a_failed_sync_degrades_and_rewrites_from_memory() {
        let d = tempfile::tempdir().unwrap();
        let (mut st, _) = AgentState::open(d.path()).unwrap();
        st.accept(&inv("t-f")).unwrap();
        st.started("t-f", 0).unwrap();
        let first = st.report(final_report("t-f"), true).unwrap();
        st.sync_failed(&JournalError::Held { held: 0, reason: "EIO".into() });
        assert!(st.degraded().is_some() && !st.is_durable());
        assert_eq!(st.sendable_below(), u64::MAX, "degraded: reports are sent all the same");
        // An acceptance is refused while degraded; other changes are held.
        assert!(st.accept(&inv("t-g")).is_err());
        let second = st.report(final_report("t-h"), false).unwrap();
        assert!(st.held_count() >= 1);
        assert!(st.sync_point().unwrap().is_none(), "nothing is appended while a rewrite is owed");
        assert!(st.retry_held(), "the disk works: the journal is rewritten");
        assert!(st.degraded().is_none() && st.is_durable() && st.held_count() == 0);
        drop(st);
        let (st, _) = AgentState::open(d.path()).unwrap();
        let ids: Vec<u64> = st.pending().map(|(id, _)| *id).collect();
        assert_eq!(ids, vec![first, second]);
        assert_eq!(st.open_count(), 0);
    }

    /// An acceptance whose sync failed is forgotten, so the re-delivery is
    /// new again (not a duplicate acknowledged without being on disk).
    #[test]
    fn an_unsynced_acceptance_is_forgotten_on_failure() {
        let d = tempfile::tempdir().unwrap();
        let (mut st, _) = AgentState::open(d.path()).unwrap();
        assert_eq!(st.accept(&revision("t-u", 0, "v0")).unwrap(), Accepted::New);
        let point = st.sync_point().unwrap().unwrap();
        st.synced(point.sync().unwrap());
        let previous = st.held_invocation("t-u").cloned();
        assert_eq!(st.accept(&revision("t-u", 1, "v1")).unwrap(), Accepted::Revised);
        st.sync_failed(&JournalError::Held { held: 0, reason: "EIO".into() });
        st.unaccept("t-u", previous);
        assert_eq!(st.held_invocation("t-u").map(|i| i.content.as_str()), Some("v0"));
        assert!(st.retry_held());
        assert_eq!(st.accept(&revision("t-u", 1, "v1")).unwrap(), Accepted::Revised);
        st.unaccept("t-new", None);
        assert_eq!(st.accept(&inv("t-new")).unwrap(), Accepted::New);
        st.unaccept("t-new", None);
        assert_eq!(st.accept(&inv("t-new")).unwrap(), Accepted::New);
    }

    /// An acceptance and the start journaled with it, withdrawn after they
    /// reached the file (the sync succeeded, but the journal was not whole:
    /// another change was held) or while held: the journal is rewritten
    /// from memory, so neither a restart nor a retry brings them back.
    #[test]
    fn a_withdrawn_start_leaves_the_journal_by_a_rewrite() {
        let running = |id: &str| RecordReport { status: InvocationStatus::Running, finish_time: String::new(), ..final_report(id) };
        let d = tempfile::tempdir().unwrap();
        let (mut st, _) = AgentState::open(d.path()).unwrap();
        // On disk already.
        st.accept(&inv("t-w")).unwrap();
        st.started("t-w", 0).unwrap();
        let report = st.report(running("t-w"), false).unwrap();
        let point = st.sync_point().unwrap().unwrap();
        st.synced(point.sync().unwrap());
        // Held, not yet appended.
        st.accept(&inv("t-h")).unwrap();
        st.hold(Entry::Started { invoke_id: "t-h".into(), record_seq: 0 });
        st.started.insert("t-h".into(), 0);
        st.unstart("t-w", Some(report));
        st.unaccept("t-w", None);
        st.unstart("t-h", None);
        st.unaccept("t-h", None);
        assert!(!st.is_durable() && st.degraded().is_some(), "a rewrite is owed");
        assert_eq!(st.backlog(), 0, "the Running report is not sent");
        assert!(st.retry_held(), "the disk works: the journal is rewritten");
        assert!(st.is_durable() && st.held_count() == 0);
        drop(st);
        let (st, rec) = AgentState::open(d.path()).unwrap();
        assert!(rec.to_run.is_empty() && rec.interrupted.is_empty(), "nothing withdrawn comes back");
        assert_eq!((st.open_count(), st.backlog()), (0, 0));
    }

    fn revision(id: &str, revision: u64, content: &str) -> Invocation {
        Invocation { revision, content: content.into(), ..inv(id) }
    }

    /// ModifyInvocationAttribute on the agent: a higher revision replaces
    /// the journaled copy; a replayed older (or equal) one never does, and
    /// the newest survives a restart and a compaction.
    #[test]
    fn revisions_replace_the_held_copy_only_forwards() {
        let d = tempfile::tempdir().unwrap();
        {
            let (mut st, _) = AgentState::open(d.path()).unwrap();
            assert_eq!(st.accept(&revision("t-p", 0, "v0")).unwrap(), Accepted::New);
            assert_eq!(st.accept(&revision("t-p", 0, "v0")).unwrap(), Accepted::Duplicate);
            assert_eq!(st.accept(&revision("t-p", 2, "v2")).unwrap(), Accepted::Revised);
            // A delayed delivery of revision 1 after 2: ignored.
            assert_eq!(st.accept(&revision("t-p", 1, "v1")).unwrap(), Accepted::Duplicate);
            assert_eq!(st.held_invocation("t-p").map(|i| i.content.as_str()), Some("v2"));
        }
        let (mut st, rec) = AgentState::open(d.path()).unwrap();
        assert_eq!(rec.to_run.len(), 1);
        assert_eq!((rec.to_run[0].revision, rec.to_run[0].content.as_str()), (2, "v2"));
        st.compact_now().unwrap();
        drop(st);
        let (mut st, rec) = AgentState::open(d.path()).unwrap();
        assert_eq!(rec.to_run[0].content, "v2");
        // Once finished, no revision brings it back.
        st.close("t-p").unwrap();
        assert_eq!(st.accept(&revision("t-p", 3, "v3")).unwrap(), Accepted::Duplicate);
    }
}
