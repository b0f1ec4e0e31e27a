//! Durable, append-only, crash-safe record log for the agent (issue 4).
//!
//! Owns one file, `<dir>/journal.log`, made of frames
//! `len: u32 LE | crc32(payload): u32 LE | payload (JSON)`. An append is
//! either written and `fdatasync`'d before it returns, or written only and
//! made durable later by a [`SyncPoint`], which the agent runs on a blocking
//! thread so its event loop never waits for the disk (issue #21); a record
//! is acted on only once it is on disk. `open` recovers every complete record and cuts a
//! torn/corrupt tail; `compact` rewrites the live set through a temp file and
//! an atomic rename. No SQL engine: the agent stays lean. See docs/journal.md.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::marker::PhantomData;
use std::path::{Path, PathBuf};

use serde::Serialize;
use serde::de::DeserializeOwned;

/// Name of the live journal file inside the journal directory.
pub const JOURNAL_FILE: &str = "journal.log";
/// Name of the compaction temp file; a leftover one is a crashed compaction.
pub const JOURNAL_TMP_FILE: &str = "journal.log.tmp";
/// Side file written and removed to test for free space.
pub const JOURNAL_PROBE_FILE: &str = "journal.probe";
/// Size of that probe: room for an acceptance (script ≤ 16 KiB) and more.
const PROBE_BYTES: usize = 64 * 1024;
/// Where bytes dropped at `open` are kept aside for an operator to inspect:
/// an undecodable record or a cut tail is never replayed (no crash loop)
/// and never silently lost.
pub const QUARANTINE_FILE: &str = "journal.quarantine";
/// The quarantine file stops growing here; later drops are only counted.
pub const MAX_QUARANTINE_BYTES: u64 = 4 * 1024 * 1024;
/// Frame header: u32 length + u32 crc32.
pub const FRAME_HEADER_BYTES: usize = 8;

/// Bounds on the journal. Every size has a limit so a bad caller or a bad
/// disk cannot make the agent allocate without bound.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JournalLimits {
    /// Largest payload of one record (bytes). Default 1 MiB.
    pub max_record_bytes: u32,
    /// Largest journal file (bytes); appends beyond it fail until compaction
    /// and `open` refuses a larger file. Default 256 MiB.
    pub max_file_bytes: u64,
    /// Compaction is advised once the file exceeds this size. Default 4 MiB:
    /// the live set is small (open invocations, unacknowledged reports), so
    /// compacting often is cheap.
    pub compact_after_bytes: u64,
    /// Compaction is advised once the file holds this many records. Default 10 000.
    pub compact_after_records: u64,
}

impl Default for JournalLimits {
    fn default() -> Self {
        Self {
            max_record_bytes: 1024 * 1024,
            max_file_bytes: 256 * 1024 * 1024,
            compact_after_bytes: 4 * 1024 * 1024,
            compact_after_records: 10_000,
        }
    }
}

/// What `open` had to drop to get back to a clean journal.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RecoveryReport {
    /// Records recovered intact.
    pub kept_records: u64,
    /// Bytes removed from the file (torn tail, corrupt frames, undecodable records).
    pub dropped_bytes: u64,
    /// Records dropped: undecodable ones plus the frames (complete or torn)
    /// that could be counted in the cut tail. Best effort past a bad length.
    pub dropped_records: u64,
    /// Offset of the first bad byte, if any.
    pub first_bad_offset: Option<u64>,
    /// Why the tail was cut, if it was.
    pub reason: Option<String>,
    /// A leftover compaction temp file was found and removed.
    pub removed_temp_file: bool,
    /// Dropped bytes copied to [`QUARANTINE_FILE`] (0 when nothing was
    /// dropped, or the quarantine is full).
    pub quarantined_bytes: u64,
}

impl RecoveryReport {
    /// True when nothing was dropped.
    pub fn is_clean(&self) -> bool {
        self.dropped_bytes == 0 && self.dropped_records == 0
    }
}

/// Journal failures. Each names the file or limit concerned.
#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    #[error("journal {op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("journal record is {size} bytes, over max_record_bytes = {limit}")]
    RecordTooLarge { size: usize, limit: u32 },
    #[error("journal file would reach {size} bytes, over max_file_bytes = {limit}; compact first")]
    FileFull { size: u64, limit: u64 },
    #[error("journal file {path} is {size} bytes, over max_file_bytes = {limit}")]
    FileTooLarge { path: PathBuf, size: u64, limit: u64 },
    #[error("journal record could not be encoded: {0}")]
    Encode(#[source] serde_json::Error),
    #[error("journal degraded ({held} change(s) held in memory): {reason}")]
    Held { held: usize, reason: String },
}

fn io_err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> JournalError + 'a {
    move |source| JournalError::Io { op, path: path.to_path_buf(), source }
}

/// An open journal of records of type `T`.
#[derive(Debug)]
pub struct Journal<T> {
    dir: PathBuf,
    path: PathBuf,
    file: File,
    size: u64,
    records: u64,
    /// Frames appended by this process (never reset), and how many of them
    /// are known to be on disk.
    appended: u64,
    synced: u64,
    limits: JournalLimits,
    _t: PhantomData<fn(T) -> T>,
}

/// What a deferred `fdatasync` covers: the journal file as it was and the
/// appends made so far. [`SyncPoint::sync`] blocks; run it off the event loop.
#[derive(Debug)]
pub struct SyncPoint {
    file: File,
    path: PathBuf,
    upto: u64,
}

impl SyncPoint {
    /// The appends this sync makes durable (for [`Journal::mark_synced`]).
    pub fn upto(&self) -> u64 {
        self.upto
    }

    /// `fdatasync` of the journal file (it flushes every append before it).
    pub fn sync(self) -> Result<u64, JournalError> {
        if let Some(e) = fault_injected().or_else(sync_fault_injected) {
            return Err(io_err("fdatasync", &self.path)(e));
        }
        self.file.sync_data().map_err(io_err("fdatasync", &self.path))?;
        Ok(self.upto)
    }
}

impl<T: Serialize + DeserializeOwned> Journal<T> {
    /// Opens (creating if needed) the journal in `dir`, returning every
    /// complete record in append order and what had to be dropped.
    pub fn open(dir: &Path, limits: JournalLimits) -> Result<(Journal<T>, Vec<T>, RecoveryReport), JournalError> {
        create_private_dir(dir)?;
        let path = dir.join(JOURNAL_FILE);
        let tmp = dir.join(JOURNAL_TMP_FILE);
        let mut report = RecoveryReport::default();
        // A temp file means a compaction crashed before its rename: the live
        // journal is still the complete old one, so the temp is garbage.
        match fs::remove_file(&tmp) {
            Ok(()) => {
                report.removed_temp_file = true;
                tracing::warn!(path = %tmp.display(), "removed leftover journal compaction file");
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_err("remove temp", &tmp)(e)),
        }

        let mut file = open_private(&path, false)?;
        let len = file.metadata().map_err(io_err("stat", &path))?.len();
        if len > limits.max_file_bytes {
            return Err(JournalError::FileTooLarge { path, size: len, limit: limits.max_file_bytes });
        }
        let mut bytes = Vec::with_capacity(len as usize);
        file.read_to_end(&mut bytes).map_err(io_err("read", &path))?;

        let scan = scan::<T>(&bytes, limits.max_record_bytes);
        report.kept_records = scan.records.len() as u64;
        report.dropped_records = scan.undecodable + scan.tail_records;
        report.dropped_bytes = scan.undecodable_bytes + (bytes.len() as u64 - scan.good_end);
        report.first_bad_offset = scan.first_bad_offset;
        report.reason = scan.reason.clone();

        if !report.is_clean() {
            let mut dropped: Vec<(u64, &[u8])> =
                scan.undecodable_at.iter().filter_map(|&(o, l)| Some((o, bytes.get(o as usize..(o + l) as usize)?))).collect();
            if let Some(tail) = bytes.get(scan.good_end as usize..).filter(|t| !t.is_empty()) {
                dropped.push((scan.good_end, tail));
            }
            report.quarantined_bytes = quarantine(dir, &dropped, report.reason.as_deref().unwrap_or("undecodable record"));
        }

        let mut journal = Journal {
            dir: dir.to_path_buf(),
            path: path.clone(),
            file,
            size: scan.good_end,
            records: scan.frames,
            appended: 0,
            synced: 0,
            limits,
            _t: PhantomData,
        };
        if scan.undecodable > 0 {
            // Undecodable records sit mid-file; rewriting is the only way to
            // drop them without losing the good records after them.
            journal.compact(&scan.records)?;
        } else if scan.good_end < bytes.len() as u64 {
            journal.file.set_len(scan.good_end).map_err(io_err("truncate", &path))?;
            journal.file.sync_all().map_err(io_err("fsync", &path))?;
        }
        if !report.is_clean() {
            tracing::warn!(
                path = %path.display(),
                kept_records = report.kept_records,
                dropped_records = report.dropped_records,
                dropped_bytes = report.dropped_bytes,
                first_bad_offset = ?report.first_bad_offset,
                reason = report.reason.as_deref().unwrap_or(""),
                quarantined_bytes = report.quarantined_bytes,
                quarantine = %dir.join(QUARANTINE_FILE).display(),
                "journal recovered with data dropped; the dropped bytes are kept in the quarantine file"
            );
        } else {
            tracing::debug!(path = %path.display(), records = report.kept_records, "journal opened");
        }
        Ok((journal, scan.records, report))
    }

    /// Appends one record; returns only after it is written and fdatasync'd.
    pub fn append(&mut self, rec: &T) -> Result<(), JournalError> {
        self.append_with(rec, true)
    }

    /// Appends one record without waiting for the disk: it becomes durable
    /// with the next synced append (fdatasync flushes the whole file), or
    /// is lost in a crash before that. Only for records whose loss is
    /// harmless (issue #21: a report acknowledgement; lost, the report is
    /// sent again and the hub answers it as a duplicate).
    pub fn append_unsynced(&mut self, rec: &T) -> Result<(), JournalError> {
        self.append_with(rec, false)
    }

    fn append_with(&mut self, rec: &T, sync: bool) -> Result<(), JournalError> {
        let frame = encode_frame(rec, self.limits.max_record_bytes)?;
        let new_size = self.size + frame.len() as u64;
        if new_size > self.limits.max_file_bytes {
            return Err(JournalError::FileFull { size: new_size, limit: self.limits.max_file_bytes });
        }
        // One write of the whole frame; on failure, cut back so a partial
        // frame never sits in front of later appends.
        if let Err(e) = fault_injected().map_or_else(|| self.file.write_all(&frame), Err) {
            let _ = self.file.set_len(self.size);
            return Err(io_err("write", &self.path)(e));
        }
        // A frame whose sync failed is cut too: the caller retries it, and
        // it must not end up in the file twice.
        if sync && let Err(e) = self.file.sync_data() {
            let _ = self.file.set_len(self.size);
            return Err(io_err("fdatasync", &self.path)(e));
        }
        self.size = new_size;
        self.records += 1;
        self.appended += 1;
        if sync {
            self.synced = self.appended;
        }
        Ok(())
    }

    /// Appends made by this process so far.
    pub fn appended(&self) -> u64 {
        self.appended
    }

    /// A sync covering every append so far, or `None` when they are all
    /// on disk already.
    pub fn sync_point(&self) -> Result<Option<SyncPoint>, JournalError> {
        if self.synced >= self.appended {
            return Ok(None);
        }
        // A second handle to the same file: the sync runs without the
        // journal (and the agent's state lock). After a compaction it names
        // the old file, whose sync is harmless: compaction synced everything.
        let file = self.file.try_clone().map_err(io_err("dup", &self.path))?;
        Ok(Some(SyncPoint { file, path: self.path.clone(), upto: self.appended }))
    }

    /// Records that a [`SyncPoint`] succeeded: appends up to `upto` are on disk.
    pub fn mark_synced(&mut self, upto: u64) {
        self.synced = self.synced.max(upto.min(self.appended));
    }

    /// Whether append number `n` (1-based, see [`Self::appended`]) is on disk.
    pub fn is_synced(&self, n: u64) -> bool {
        n <= self.synced
    }

    /// Whether the journal's disk takes a write of one full-size record
    /// now (written to a side file, synced, removed). Used to tell when a
    /// full state dir has room again.
    pub fn probe(&self) -> Result<(), JournalError> {
        let path = self.dir.join(JOURNAL_PROBE_FILE);
        let result = (|| {
            if let Some(e) = fault_injected() {
                return Err(e);
            }
            let mut f = OpenOptions::new().write(true).create(true).truncate(true).open(&path)?;
            f.write_all(&vec![0u8; PROBE_BYTES])?;
            f.sync_data()
        })();
        let _ = fs::remove_file(&path);
        result.map_err(io_err("probe", &path))
    }

    /// Replaces the journal with exactly `live`: temp file, fsync, atomic
    /// rename, fsync of the directory. A crash leaves the old or the new file.
    pub fn compact(&mut self, live: &[T]) -> Result<(), JournalError> {
        let tmp = self.dir.join(JOURNAL_TMP_FILE);
        let mut buf = Vec::new();
        for rec in live {
            buf.extend_from_slice(&encode_frame(rec, self.limits.max_record_bytes)?);
        }
        if buf.len() as u64 > self.limits.max_file_bytes {
            return Err(JournalError::FileFull { size: buf.len() as u64, limit: self.limits.max_file_bytes });
        }
        {
            let mut f = open_private(&tmp, true)?;
            f.write_all(&buf).map_err(io_err("write", &tmp))?;
            f.sync_all().map_err(io_err("fsync", &tmp))?;
        }
        fs::rename(&tmp, &self.path).map_err(io_err("rename", &tmp))?;
        sync_dir(&self.dir)?;
        // The old handle points at the unlinked inode; reopen the new file.
        self.file = open_private(&self.path, false)?;
        self.size = buf.len() as u64;
        self.records = live.len() as u64;
        self.synced = self.appended;
        tracing::info!(path = %self.path.display(), records = self.records, bytes = self.size, "journal compacted");
        Ok(())
    }
}

impl<T> Journal<T> {
    /// Current size of the journal file in bytes.
    #[cfg(test)]
    pub fn size_bytes(&self) -> u64 {
        self.size
    }

    /// Number of frames in the file (live and superseded).
    #[cfg(test)]
    pub fn record_count(&self) -> u64 {
        self.records
    }

    /// True when the file has grown past `compact_after_bytes` or
    /// `compact_after_records`: the caller should `compact` its live set.
    pub fn needs_compaction(&self) -> bool {
        self.size > self.limits.compact_after_bytes || self.records > self.limits.compact_after_records
    }
}

/// Test hook: `DECKHAND_FAULT_JOURNAL_FULL=<path>` makes every append fail
/// with ENOSPC while `<path>` exists (for a disk-full test where no small
/// file system can be mounted; see docs/journal.md).
fn fault_injected() -> Option<io::Error> {
    static FLAG: std::sync::OnceLock<Option<PathBuf>> = std::sync::OnceLock::new();
    // ENOSPC (28 on Linux and macOS).
    hook_fault(&FLAG, "DECKHAND_FAULT_JOURNAL_FULL", 28)
}

/// Test hook: `DECKHAND_FAULT_JOURNAL_SYNC=<path>` makes the journal's
/// `fdatasync` of appended changes fail with EIO while `<path>` exists;
/// appends still succeed (a disk that takes writes but fails to flush
/// them, which no test machine can be made to do; see docs/journal.md).
fn sync_fault_injected() -> Option<io::Error> {
    static FLAG: std::sync::OnceLock<Option<PathBuf>> = std::sync::OnceLock::new();
    // EIO (5 on Linux and macOS).
    hook_fault(&FLAG, "DECKHAND_FAULT_JOURNAL_SYNC", 5)
}

/// A fault hook's error while the flag file that `var` names (read once
/// into `flag`) exists.
fn hook_fault(flag: &std::sync::OnceLock<Option<PathBuf>>, var: &str, errno: i32) -> Option<io::Error> {
    let path = flag.get_or_init(|| std::env::var_os(var).map(PathBuf::from)).as_ref()?;
    path.exists().then(|| io::Error::from_raw_os_error(errno))
}

/// Encodes one record as a complete frame.
fn encode_frame<T: Serialize>(rec: &T, max: u32) -> Result<Vec<u8>, JournalError> {
    let payload = serde_json::to_vec(rec).map_err(JournalError::Encode)?;
    if payload.len() > max as usize {
        return Err(JournalError::RecordTooLarge { size: payload.len(), limit: max });
    }
    let mut frame = Vec::with_capacity(FRAME_HEADER_BYTES + payload.len());
    frame.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    frame.extend_from_slice(&crc32fast::hash(&payload).to_le_bytes());
    frame.extend_from_slice(&payload);
    Ok(frame)
}

struct Scan<T> {
    records: Vec<T>,
    /// Frames kept in the file (including undecodable ones before rewrite).
    frames: u64,
    /// End of the last good frame.
    good_end: u64,
    undecodable: u64,
    undecodable_bytes: u64,
    /// (offset, length) of every undecodable frame.
    undecodable_at: Vec<(u64, u64)>,
    tail_records: u64,
    first_bad_offset: Option<u64>,
    reason: Option<String>,
}

/// Walks the frames. A bad length or crc ends the scan: framing after it
/// cannot be trusted, so everything from there is the dropped tail. A frame
/// whose crc is right but whose JSON does not decode is skipped alone.
fn scan<T: DeserializeOwned>(bytes: &[u8], max: u32) -> Scan<T> {
    let mut s = Scan {
        records: Vec::new(),
        frames: 0,
        good_end: 0,
        undecodable: 0,
        undecodable_bytes: 0,
        undecodable_at: Vec::new(),
        tail_records: 0,
        first_bad_offset: None,
        reason: None,
    };
    let mut off = 0usize;
    while off < bytes.len() {
        let rest = &bytes[off..];
        let bad = if rest.len() < FRAME_HEADER_BYTES {
            Some(format!("torn frame header ({} of {FRAME_HEADER_BYTES} bytes)", rest.len()))
        } else {
            let len = u32::from_le_bytes(rest[0..4].try_into().unwrap_or([0; 4]));
            let crc = u32::from_le_bytes(rest[4..8].try_into().unwrap_or([0; 4]));
            if len > max {
                Some(format!("frame length {len} over max_record_bytes = {max}"))
            } else if rest.len() < FRAME_HEADER_BYTES + len as usize {
                Some(format!("torn frame payload ({} of {len} bytes)", rest.len() - FRAME_HEADER_BYTES))
            } else {
                let payload = &rest[FRAME_HEADER_BYTES..FRAME_HEADER_BYTES + len as usize];
                if crc32fast::hash(payload) != crc {
                    Some("frame crc32 mismatch".to_string())
                } else {
                    let end = FRAME_HEADER_BYTES + len as usize;
                    match serde_json::from_slice::<T>(payload) {
                        Ok(rec) => s.records.push(rec),
                        Err(e) => {
                            // The error kind and position only: serde's
                            // message would quote the record.
                            tracing::warn!(offset = off, error = %crate::protocol::FrameError::from(e), "journal record undecodable, quarantined");
                            s.undecodable_at.push((off as u64, end as u64));
                            s.undecodable += 1;
                            s.undecodable_bytes += end as u64;
                            s.first_bad_offset.get_or_insert(off as u64);
                        }
                    }
                    s.frames += 1;
                    off += end;
                    s.good_end = off as u64;
                    None
                }
            }
        };
        if let Some(reason) = bad {
            s.first_bad_offset.get_or_insert(off as u64);
            s.reason = Some(reason);
            s.tail_records = count_tail_frames(rest, max);
            break;
        }
    }
    s
}

/// Appends dropped byte ranges to the quarantine file, each behind a text
/// line naming its offset, length and the reason; returns the bytes kept.
/// Best effort: a quarantine that cannot be written (full disk, limit)
/// never stops the agent from starting.
fn quarantine(dir: &Path, dropped: &[(u64, &[u8])], reason: &str) -> u64 {
    let path = dir.join(QUARANTINE_FILE);
    let existing = fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
    let mut budget = MAX_QUARANTINE_BYTES.saturating_sub(existing);
    let Ok(mut f) = open_private_append(&path) else { return 0 };
    let mut kept = 0u64;
    let at = chrono::Utc::now().to_rfc3339();
    for (offset, data) in dropped {
        let header = format!("\n# {at} offset {offset} length {} ({reason})\n", data.len());
        let n = (header.len() + data.len()) as u64;
        if n > budget {
            break;
        }
        if f.write_all(header.as_bytes()).and_then(|_| f.write_all(data)).is_err() {
            break;
        }
        budget -= n;
        kept += data.len() as u64;
    }
    let _ = f.sync_all();
    kept
}

fn open_private_append(path: &Path) -> io::Result<File> {
    let mut o = OpenOptions::new();
    o.append(true).create(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        o.mode(0o600);
    }
    o.open(path)
}

/// Best-effort count of frames in a dropped tail, following length fields
/// while they look sane. Always at least 1 for a non-empty tail.
fn count_tail_frames(mut rest: &[u8], max: u32) -> u64 {
    let mut n = 0u64;
    while !rest.is_empty() {
        n += 1;
        if rest.len() < FRAME_HEADER_BYTES {
            break;
        }
        let len = u32::from_le_bytes(rest[0..4].try_into().unwrap_or([0; 4]));
        let end = FRAME_HEADER_BYTES + len as usize;
        if len > max || end > rest.len() {
            break;
        }
        rest = &rest[end..];
    }
    n
}

fn open_private(path: &Path, truncate: bool) -> Result<File, JournalError> {
    let mut o = OpenOptions::new();
    o.read(true).create(true);
    if truncate {
        o.write(true).truncate(true);
    } else {
        o.append(true);
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        o.mode(0o600);
    }
    let f = o.open(path).map_err(io_err("open", path))?;
    // mode() only applies on creation; force it for files made by older code.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        f.set_permissions(fs::Permissions::from_mode(0o600)).map_err(io_err("chmod", path))?;
    }
    Ok(f)
}

fn create_private_dir(dir: &Path) -> Result<(), JournalError> {
    fs::create_dir_all(dir).map_err(io_err("create dir", dir))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(dir, fs::Permissions::from_mode(0o700)).map_err(io_err("chmod", dir))?;
    }
    Ok(())
}

/// Makes a rename durable: the directory entry must reach disk too.
fn sync_dir(dir: &Path) -> Result<(), JournalError> {
    #[cfg(unix)]
    {
        File::open(dir).and_then(|d| d.sync_all()).map_err(io_err("fsync dir", dir))?;
    }
    // Windows cannot open a directory as a File; rename there is already
    // MoveFileEx with write-through semantics via std.
    #[cfg(not(unix))]
    let _ = dir;
    Ok(())
}

#[cfg(test)]
mod tests;
