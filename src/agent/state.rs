//! The agent's durable state: which invocations it accepted and which
//! reports the hub has not acknowledged yet. Every change is journaled
//! before it is acted on or reported, so a restart loses nothing.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::journal::{Journal, JournalError, JournalLimits};
use crate::lifecycle::InvocationStatus;
use crate::protocol::{Invocation, RecordReport};

/// Compact when the journal grows past this; the live set is small (open
/// invocations and unacknowledged reports), so compaction is cheap.
const COMPACT_AFTER_BYTES: u64 = 4 * 1024 * 1024;
/// Ids of finished invocations remembered so a late re-delivery is not
/// run twice. Bounded: the hub only re-delivers non-final work, so this
/// guards the window between our final report and its acknowledgement.
const REMEMBER_FINISHED: usize = 10_000;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "k", rename_all = "snake_case")]
pub enum Entry {
    Accepted { invocation: Invocation },
    Started { invoke_id: String, record_seq: u32 },
    Report { report_id: u64, report: RecordReport },
    Acked { report_id: u64 },
    Finished { invoke_id: String },
    /// A periodic fire: its record number and nominal instant (RFC 3339).
    Fired { invoke_id: String, record_seq: u32, scheduled: String },
    /// The boot a reboot-triggered invocation last saw.
    BootSeen { invoke_id: String, boot_id: String },
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
}

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
            Entry::Accepted { invocation } => {
                self.open.insert(invocation.invoke_id.clone(), invocation);
            }
            Entry::Started { invoke_id, record_seq } => {
                self.started.insert(invoke_id, record_seq);
            }
            Entry::Report { report_id, report } => {
                self.next_report_id = self.next_report_id.max(report_id + 1);
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

    fn write(&mut self, e: Entry) -> Result<(), JournalError> {
        self.journal.append(&e)?;
        self.apply(e);
        Ok(())
    }

    /// True if this invocation is new (journaled now); false if we already
    /// have it or already finished it (a re-delivery: just re-ack).
    pub fn accept(&mut self, inv: &Invocation) -> Result<bool, JournalError> {
        if self.open.contains_key(&inv.invoke_id) || self.finished.contains(&inv.invoke_id) {
            return Ok(false);
        }
        self.write(Entry::Accepted { invocation: inv.clone() })?;
        Ok(true)
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
                .filter(|(_, r)| r.invoke_id == report.invoke_id && r.record_seq == report.record_seq && r.status == InvocationStatus::Running)
                .map(|(k, _)| *k)
                .collect();
            for k in stale {
                self.write(Entry::Acked { report_id: k })?;
            }
        }
        let invoke_id = report.invoke_id.clone();
        self.write(Entry::Report { report_id: id, report })?;
        if closes {
            self.write(Entry::Finished { invoke_id })?;
        }
        self.maybe_compact()?;
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

    pub fn ack(&mut self, report_id: u64) -> Result<(), JournalError> {
        if self.pending.contains_key(&report_id) {
            self.write(Entry::Acked { report_id })?;
            self.maybe_compact()?;
        }
        Ok(())
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
        if self.journal.size_bytes() < COMPACT_AFTER_BYTES {
            return Ok(());
        }
        let mut live = Vec::new();
        for inv in self.open.values() {
            live.push(Entry::Accepted { invocation: inv.clone() });
        }
        for (id, seq) in &self.started {
            live.push(Entry::Started { invoke_id: id.clone(), record_seq: *seq });
        }
        for (id, r) in &self.pending {
            live.push(Entry::Report { report_id: *id, report: r.clone() });
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
        tracing::info!(entries = live.len(), "journal compacted");
        Ok(())
    }
}
