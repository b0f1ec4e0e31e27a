//! The agent's append-only, fsync'd journal: a crash-safe record log with
//! no SQL engine.
//!
//! File format: a sequence of frames `len: u32 LE | crc32: u32 LE | payload`
//! where payload is one JSON record. `append` writes a frame and
//! `fdatasync`s before returning. `open` replays every complete frame and
//! truncates a torn or corrupt tail (power loss mid-write) so later appends
//! start clean. `compact` writes the live set to a temporary file, syncs
//! it, renames it over the journal and syncs the directory: a crash at any
//! point leaves either the old or the new journal, whole.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::marker::PhantomData;
use std::path::{Path, PathBuf};

use serde::Serialize;
use serde::de::DeserializeOwned;

const FILE: &str = "journal.log";
const TMP: &str = "journal.log.compact";
const HEADER: usize = 8;

#[derive(Debug, Clone)]
pub struct JournalLimits {
    /// Largest single record; an invocation (16 KiB script) plus a report
    /// (24 KiB output, base64) fits with room to spare.
    pub max_record_bytes: usize,
}

impl Default for JournalLimits {
    fn default() -> Self {
        Self { max_record_bytes: 1024 * 1024 }
    }
}

/// What `open` found.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct RecoveryReport {
    pub records: usize,
    /// Bytes cut from the end: a torn or corrupt tail.
    pub dropped_bytes: u64,
    /// Why the tail was cut, if it was.
    pub reason: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    #[error("journal {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("record of {size} bytes exceeds the journal limit of {limit} bytes")]
    TooLarge { size: usize, limit: usize },
    #[error("record does not serialize: {0}")]
    Encode(#[from] serde_json::Error),
}

pub struct Journal<T> {
    dir: PathBuf,
    file: File,
    size: u64,
    limits: JournalLimits,
    _t: PhantomData<T>,
}

fn io(path: &Path) -> impl Fn(std::io::Error) -> JournalError + '_ {
    move |source| JournalError::Io { path: path.to_path_buf(), source }
}

fn frame(payload: &[u8]) -> Vec<u8> {
    let mut buf = Vec::with_capacity(HEADER + payload.len());
    buf.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    buf.extend_from_slice(&crc32fast::hash(payload).to_le_bytes());
    buf.extend_from_slice(payload);
    buf
}

fn open_private(path: &Path, truncate: bool) -> std::io::Result<File> {
    let mut o = OpenOptions::new();
    o.read(true).write(true).create(true).truncate(truncate);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        o.mode(0o600);
    }
    o.open(path)
}

fn sync_dir(dir: &Path) -> std::io::Result<()> {
    #[cfg(unix)]
    File::open(dir)?.sync_all()?;
    #[cfg(not(unix))]
    let _ = dir;
    Ok(())
}

/// Parses frames from `data`; returns records, the length of the valid
/// prefix, and why parsing stopped early (if it did).
fn scan<T: DeserializeOwned>(data: &[u8], limits: &JournalLimits) -> (Vec<T>, usize, Option<String>) {
    let mut out = Vec::new();
    let mut pos = 0;
    while pos < data.len() {
        if data.len() - pos < HEADER {
            return (out, pos, Some(format!("torn header at byte {pos}")));
        }
        let len = u32::from_le_bytes(data[pos..pos + 4].try_into().expect("4 bytes")) as usize;
        let crc = u32::from_le_bytes(data[pos + 4..pos + 8].try_into().expect("4 bytes"));
        if len > limits.max_record_bytes {
            return (out, pos, Some(format!("record length {len} at byte {pos} exceeds the limit")));
        }
        let end = pos + HEADER + len;
        if end > data.len() {
            return (out, pos, Some(format!("torn record at byte {pos}")));
        }
        let payload = &data[pos + HEADER..end];
        if crc32fast::hash(payload) != crc {
            return (out, pos, Some(format!("checksum mismatch at byte {pos}")));
        }
        match serde_json::from_slice(payload) {
            Ok(r) => out.push(r),
            Err(e) => return (out, pos, Some(format!("undecodable record at byte {pos}: {e}"))),
        }
        pos = end;
    }
    (out, pos, None)
}

impl<T: Serialize + DeserializeOwned> Journal<T> {
    /// Opens (creating) the journal in `dir` (0700) and replays it.
    pub fn open(dir: &Path, limits: JournalLimits) -> Result<(Self, Vec<T>, RecoveryReport), JournalError> {
        std::fs::create_dir_all(dir).map_err(io(dir))?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).map_err(io(dir))?;
        }
        // A compaction that died before its rename left only garbage.
        let _ = std::fs::remove_file(dir.join(TMP));
        let path = dir.join(FILE);
        let mut file = open_private(&path, false).map_err(io(&path))?;
        let mut data = Vec::new();
        file.read_to_end(&mut data).map_err(io(&path))?;
        let (records, valid, reason) = scan::<T>(&data, &limits);
        let dropped = (data.len() - valid) as u64;
        if dropped > 0 {
            tracing::warn!(dropped_bytes = dropped, kept_records = records.len(), reason = reason.as_deref().unwrap_or(""), "journal tail discarded");
            file.set_len(valid as u64).map_err(io(&path))?;
            file.sync_all().map_err(io(&path))?;
        }
        file.seek(SeekFrom::Start(valid as u64)).map_err(io(&path))?;
        let report = RecoveryReport { records: records.len(), dropped_bytes: dropped, reason };
        Ok((Self { dir: dir.to_path_buf(), file, size: valid as u64, limits, _t: PhantomData }, records, report))
    }

    /// Appends one record and syncs it to disk before returning.
    pub fn append(&mut self, rec: &T) -> Result<(), JournalError> {
        let payload = serde_json::to_vec(rec)?;
        if payload.len() > self.limits.max_record_bytes {
            return Err(JournalError::TooLarge { size: payload.len(), limit: self.limits.max_record_bytes });
        }
        let path = self.dir.join(FILE);
        let buf = frame(&payload);
        self.file.write_all(&buf).map_err(io(&path))?;
        self.file.sync_data().map_err(io(&path))?;
        self.size += buf.len() as u64;
        Ok(())
    }

    /// Replaces the journal with exactly `live`, atomically.
    pub fn compact(&mut self, live: &[T]) -> Result<(), JournalError> {
        let tmp = self.dir.join(TMP);
        let path = self.dir.join(FILE);
        let mut buf = Vec::new();
        for r in live {
            let payload = serde_json::to_vec(r)?;
            if payload.len() > self.limits.max_record_bytes {
                return Err(JournalError::TooLarge { size: payload.len(), limit: self.limits.max_record_bytes });
            }
            buf.extend(frame(&payload));
        }
        let mut f = open_private(&tmp, true).map_err(io(&tmp))?;
        f.write_all(&buf).map_err(io(&tmp))?;
        f.sync_all().map_err(io(&tmp))?;
        std::fs::rename(&tmp, &path).map_err(io(&path))?;
        sync_dir(&self.dir).map_err(io(&self.dir))?;
        f.seek(SeekFrom::End(0)).map_err(io(&path))?;
        self.file = f;
        self.size = buf.len() as u64;
        Ok(())
    }

    pub fn size_bytes(&self) -> u64 {
        self.size
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn open(dir: &Path) -> (Journal<String>, Vec<String>, RecoveryReport) {
        Journal::open(dir, JournalLimits::default()).unwrap()
    }

    #[test]
    fn append_reopen_and_compact() {
        let d = tempfile::tempdir().unwrap();
        let (mut j, recs, rep) = open(d.path());
        assert!(recs.is_empty() && rep.dropped_bytes == 0);
        for i in 0..5 {
            j.append(&format!("r{i}")).unwrap();
        }
        drop(j);
        let (mut j, recs, _) = open(d.path());
        assert_eq!(recs, ["r0", "r1", "r2", "r3", "r4"]);
        j.compact(&["r3".to_string()]).unwrap();
        j.append(&"r5".to_string()).unwrap();
        drop(j);
        let (_, recs, _) = open(d.path());
        assert_eq!(recs, ["r3", "r5"]);
    }

    #[test]
    fn leftover_compaction_file_is_ignored() {
        let d = tempfile::tempdir().unwrap();
        let (mut j, _, _) = open(d.path());
        j.append(&"kept".to_string()).unwrap();
        drop(j);
        std::fs::write(d.path().join(TMP), b"half-written garbage").unwrap();
        let (_, recs, _) = open(d.path());
        assert_eq!(recs, ["kept"]);
        assert!(!d.path().join(TMP).exists());
    }

    #[test]
    fn oversized_record_is_refused_by_name() {
        let d = tempfile::tempdir().unwrap();
        let (mut j, _, _) = Journal::<String>::open(d.path(), JournalLimits { max_record_bytes: 16 }).unwrap();
        let e = j.append(&"x".repeat(100)).unwrap_err().to_string();
        assert!(e.contains("exceeds the journal limit of 16 bytes"), "{e}");
    }

    #[cfg(unix)]
    #[test]
    fn files_are_private() {
        use std::os::unix::fs::PermissionsExt;
        let d = tempfile::tempdir().unwrap();
        let jd = d.path().join("j");
        let (mut j, _, _) = open(&jd);
        j.append(&"x".to_string()).unwrap();
        assert_eq!(std::fs::metadata(&jd).unwrap().permissions().mode() & 0o777, 0o700);
        assert_eq!(std::fs::metadata(jd.join(FILE)).unwrap().permissions().mode() & 0o777, 0o600);
    }

    /// Power loss at every byte offset: open never panics, keeps exactly
    /// the records that were complete, and later appends land cleanly.
    #[test]
    fn truncation_at_every_offset_keeps_complete_records() {
        let d = tempfile::tempdir().unwrap();
        let recs: Vec<String> = (0..6).map(|i| format!("record-{i}-{}", "z".repeat(i * 3))).collect();
        let (mut j, _, _) = open(d.path());
        let mut ends = Vec::new();
        for r in &recs {
            j.append(r).unwrap();
            ends.push(j.size_bytes());
        }
        drop(j);
        let full = std::fs::read(d.path().join(FILE)).unwrap();
        for cut in 0..=full.len() {
            let t = tempfile::tempdir().unwrap();
            std::fs::write(t.path().join(FILE), &full[..cut]).unwrap();
            let (mut j, got, rep) = open(t.path());
            let complete = ends.iter().filter(|e| **e as usize <= cut).count();
            assert_eq!(got, recs[..complete], "cut at {cut}");
            assert_eq!(rep.dropped_bytes as usize, cut - ends.get(complete.wrapping_sub(1)).map_or(0, |e| *e as usize));
            j.append(&"after".to_string()).unwrap();
            drop(j);
            let (_, again, rep) = open(t.path());
            assert_eq!(again.len(), complete + 1, "cut at {cut}");
            assert_eq!(rep.dropped_bytes, 0);
        }
    }

    proptest! {
        /// A flipped byte anywhere never panics and never yields a record
        /// that was not written.
        #[test]
        fn corrupt_byte_never_panics(pos in 0usize..400, val in any::<u8>()) {
            let d = tempfile::tempdir().unwrap();
            let (mut j, _, _) = open(d.path());
            let recs: Vec<String> = (0..8).map(|i| format!("rec{i}")).collect();
            for r in &recs { j.append(r).unwrap(); }
            drop(j);
            let p = d.path().join(FILE);
            let mut data = std::fs::read(&p).unwrap();
            let pos = pos % data.len();
            data[pos] = val;
            std::fs::write(&p, &data).unwrap();
            let (_, got, _) = open(d.path());
            prop_assert!(got.len() <= recs.len());
            prop_assert_eq!(&got[..], &recs[..got.len()]);
        }
    }
}
