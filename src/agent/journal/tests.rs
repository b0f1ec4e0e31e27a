//! Tests for the journal: real files in temp dirs, no mocks.

use super::*;
use proptest::prelude::*;
use serde::Deserialize;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Rec {
    id: u64,
    body: String,
}

fn rec(id: u64) -> Rec {
    Rec { id, body: format!("result-{id}-{}", "x".repeat((id % 7) as usize)) }
}

fn open(dir: &Path) -> (Journal<Rec>, Vec<Rec>, RecoveryReport) {
    Journal::<Rec>::open(dir, JournalLimits::default()).expect("open")
}

/// Writes `n` records and returns the file bytes plus each frame's end offset.
fn write_n(dir: &Path, n: u64) -> (Vec<u8>, Vec<usize>) {
    let (mut j, _, _) = open(dir);
    let mut ends = Vec::new();
    for i in 0..n {
        j.append(&rec(i)).expect("append");
        ends.push(j.size_bytes() as usize);
    }
    (fs::read(dir.join(JOURNAL_FILE)).expect("read"), ends)
}

#[test]
fn round_trip_and_reopen_after_append() {
    let d = tempfile::tempdir().unwrap();
    let (mut j, recs, rep) = open(d.path());
    assert!(recs.is_empty());
    assert!(rep.is_clean());
    for i in 0..5 {
        j.append(&rec(i)).unwrap();
    }
    drop(j);
    let (mut j, recs, rep) = open(d.path());
    assert_eq!(recs, (0..5).map(rec).collect::<Vec<_>>());
    assert!(rep.is_clean(), "{rep:?}");
    j.append(&rec(5)).unwrap();
    drop(j);
    let (j, recs, _) = open(d.path());
    assert_eq!(recs.len(), 6);
    assert_eq!(recs[5], rec(5));
    assert_eq!(j.record_count(), 6);
    assert_eq!(j.size_bytes(), fs::metadata(d.path().join(JOURNAL_FILE)).unwrap().len());
}

#[test]
fn unsynced_appends_are_framed_like_the_rest_and_read_back() {
    let d = tempfile::tempdir().unwrap();
    let (mut j, _, _) = open(d.path());
    j.append(&rec(0)).unwrap();
    j.append_unsynced(&rec(1)).unwrap();
    j.append(&rec(2)).unwrap();
    assert_eq!(j.size_bytes(), fs::metadata(d.path().join(JOURNAL_FILE)).unwrap().len());
    drop(j);
    let (_, recs, rep) = open(d.path());
    assert_eq!(recs, (0..3).map(rec).collect::<Vec<_>>());
    assert!(rep.is_clean(), "{rep:?}");
}

#[cfg(unix)]
#[test]
fn file_and_dir_are_private() {
    use std::os::unix::fs::PermissionsExt;
    let d = tempfile::tempdir().unwrap();
    let dir = d.path().join("j");
    let (mut j, _, _) = open(&dir);
    j.append(&rec(1)).unwrap();
    j.compact(&[rec(1)]).unwrap();
    let fm = fs::metadata(dir.join(JOURNAL_FILE)).unwrap().permissions().mode() & 0o777;
    let dm = fs::metadata(&dir).unwrap().permissions().mode() & 0o777;
    assert_eq!(fm, 0o600);
    assert_eq!(dm, 0o700);
}

#[test]
fn torn_tail_is_cut_and_later_appends_are_clean() {
    let d = tempfile::tempdir().unwrap();
    let (bytes, ends) = write_n(d.path(), 3);
    // Power loss mid-write: half of the third frame reached disk.
    let cut = ends[1] + (ends[2] - ends[1]) / 2;
    fs::write(d.path().join(JOURNAL_FILE), &bytes[..cut]).unwrap();
    let (mut j, recs, rep) = open(d.path());
    assert_eq!(recs, vec![rec(0), rec(1)]);
    assert_eq!(rep.dropped_bytes, (cut - ends[1]) as u64);
    assert_eq!(rep.dropped_records, 1);
    assert_eq!(rep.first_bad_offset, Some(ends[1] as u64));
    assert_eq!(fs::metadata(d.path().join(JOURNAL_FILE)).unwrap().len(), ends[1] as u64);
    j.append(&rec(9)).unwrap();
    drop(j);
    let (_, recs, rep) = open(d.path());
    assert_eq!(recs, vec![rec(0), rec(1), rec(9)]);
    assert!(rep.is_clean());
}

#[test]
fn undecodable_record_is_skipped_and_later_ones_kept() {
    let d = tempfile::tempdir().unwrap();
    let (mut j, _, _) = open(d.path());
    j.append(&rec(0)).unwrap();
    drop(j);
    // A frame with a valid crc whose JSON is not a Rec (e.g. a schema change).
    let frame = encode_frame(&"not a record", 1 << 20).unwrap();
    let mut f = OpenOptions::new().append(true).open(d.path().join(JOURNAL_FILE)).unwrap();
    f.write_all(&frame).unwrap();
    drop(f);
    let (mut j, recs, rep) = open(d.path());
    assert_eq!(recs, vec![rec(0)]);
    assert_eq!(rep.dropped_records, 1);
    assert!(rep.dropped_bytes > 0);
    j.append(&rec(2)).unwrap();
    drop(j);
    // The rewrite removed it for good.
    let (_, recs, rep) = open(d.path());
    assert_eq!(recs, vec![rec(0), rec(2)]);
    assert!(rep.is_clean());
}

#[test]
fn record_size_limit_is_enforced_with_clear_error() {
    let d = tempfile::tempdir().unwrap();
    let limits = JournalLimits { max_record_bytes: 64, ..JournalLimits::default() };
    let (mut j, _, _) = Journal::<Rec>::open(d.path(), limits).unwrap();
    let big = Rec { id: 1, body: "y".repeat(100) };
    let err = j.append(&big).unwrap_err();
    assert!(matches!(err, JournalError::RecordTooLarge { limit: 64, .. }), "{err:?}");
    assert!(err.to_string().contains("max_record_bytes = 64"), "{err}");
    assert_eq!(j.size_bytes(), 0, "nothing written on rejection");
    j.append(&rec(1)).unwrap();
}

#[test]
fn file_size_limit_and_compaction_policy() {
    let d = tempfile::tempdir().unwrap();
    let limits = JournalLimits { max_file_bytes: 200, compact_after_bytes: 100, compact_after_records: 1000, ..JournalLimits::default() };
    let (mut j, _, _) = Journal::<Rec>::open(d.path(), limits).unwrap();
    assert!(!j.needs_compaction());
    let mut n = 0;
    let err = loop {
        match j.append(&rec(n)) {
            Ok(()) => n += 1,
            Err(e) => break e,
        }
        assert!(n < 100, "limit never hit");
    };
    assert!(matches!(err, JournalError::FileFull { limit: 200, .. }), "{err:?}");
    assert!(j.needs_compaction());
    j.compact(&[rec(n - 1)]).unwrap();
    assert!(!j.needs_compaction());
    assert_eq!(j.record_count(), 1);
    j.append(&rec(n)).unwrap();
    drop(j);
    let (_, recs, _) = Journal::<Rec>::open(d.path(), limits).unwrap();
    assert_eq!(recs, vec![rec(n - 1), rec(n)]);

    let few = JournalLimits { compact_after_records: 2, ..JournalLimits::default() };
    let d2 = tempfile::tempdir().unwrap();
    let (mut j, _, _) = Journal::<Rec>::open(d2.path(), few).unwrap();
    j.append(&rec(0)).unwrap();
    j.append(&rec(1)).unwrap();
    assert!(!j.needs_compaction());
    j.append(&rec(2)).unwrap();
    assert!(j.needs_compaction());
}

#[test]
fn oversized_file_is_refused_on_open() {
    let d = tempfile::tempdir().unwrap();
    write_n(d.path(), 10);
    let limits = JournalLimits { max_file_bytes: 50, ..JournalLimits::default() };
    let err = Journal::<Rec>::open(d.path(), limits).unwrap_err();
    assert!(err.to_string().contains("max_file_bytes = 50"), "{err}");
}

#[test]
fn compaction_replaces_contents() {
    let d = tempfile::tempdir().unwrap();
    let (mut j, _, _) = open(d.path());
    for i in 0..20 {
        j.append(&rec(i)).unwrap();
    }
    let before = j.size_bytes();
    j.compact(&[rec(3), rec(17)]).unwrap();
    assert!(j.size_bytes() < before);
    j.append(&rec(21)).unwrap();
    drop(j);
    let (_, recs, rep) = open(d.path());
    assert_eq!(recs, vec![rec(3), rec(17), rec(21)]);
    assert!(rep.is_clean());
    assert!(!d.path().join(JOURNAL_TMP_FILE).exists());
}

/// Crash simulation: the process died during compaction, before the rename,
/// leaving a complete or partial temp file. The old journal must win and the
/// temp file must be removed.
#[test]
fn crash_before_rename_keeps_old_journal_and_cleans_temp() {
    for partial in [false, true] {
        let d = tempfile::tempdir().unwrap();
        let (bytes, _) = write_n(d.path(), 4);
        let mut tmp = encode_frame(&rec(99), 1 << 20).unwrap();
        if partial {
            tmp.truncate(tmp.len() / 2);
        }
        fs::write(d.path().join(JOURNAL_TMP_FILE), &tmp).unwrap();
        let (_, recs, rep) = open(d.path());
        assert_eq!(recs, (0..4).map(rec).collect::<Vec<_>>());
        assert!(rep.removed_temp_file);
        assert!(!d.path().join(JOURNAL_TMP_FILE).exists());
        assert_eq!(fs::read(d.path().join(JOURNAL_FILE)).unwrap(), bytes);
    }
}

/// Crash simulation: died after the rename (before the dir fsync or reopen).
/// The new file is complete; open sees exactly the live set.
#[test]
fn crash_after_rename_sees_new_journal() {
    let d = tempfile::tempdir().unwrap();
    write_n(d.path(), 4);
    let mut new = Vec::new();
    for r in [rec(1), rec(3)] {
        new.extend(encode_frame(&r, 1 << 20).unwrap());
    }
    fs::write(d.path().join(JOURNAL_TMP_FILE), &new).unwrap();
    fs::rename(d.path().join(JOURNAL_TMP_FILE), d.path().join(JOURNAL_FILE)).unwrap();
    let (_, recs, rep) = open(d.path());
    assert_eq!(recs, vec![rec(1), rec(3)]);
    assert!(rep.is_clean());
}

/// Truncation at every byte offset: open never panics and keeps exactly the
/// records whose frames were complete, and the file is cut to them.
#[test]
fn truncate_at_every_offset_keeps_complete_records() {
    let d = tempfile::tempdir().unwrap();
    let (bytes, ends) = write_n(d.path(), 6);
    for cut in 0..=bytes.len() {
        let c = tempfile::tempdir().unwrap();
        fs::write(c.path().join(JOURNAL_FILE), &bytes[..cut]).unwrap();
        let (_, recs, rep) = open(c.path());
        let complete = ends.iter().filter(|&&e| e <= cut).count();
        assert_eq!(recs, (0..complete as u64).map(rec).collect::<Vec<_>>(), "cut {cut}");
        let good = if complete == 0 { 0 } else { ends[complete - 1] };
        assert_eq!(rep.dropped_bytes, (cut - good) as u64, "cut {cut}");
        assert_eq!(rep.dropped_records, u64::from(cut > good), "cut {cut}");
        assert_eq!(fs::metadata(c.path().join(JOURNAL_FILE)).unwrap().len(), good as u64);
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Flipping any byte: open never panics and keeps exactly the records
    /// before the damaged frame (crc32 catches every single-byte error).
    #[test]
    fn flipped_byte_keeps_prefix(n in 1u64..8, pos_seed in any::<usize>(), mask in 1u8..=255) {
        let d = tempfile::tempdir().unwrap();
        let (mut bytes, ends) = write_n(d.path(), n);
        let pos = pos_seed % bytes.len();
        bytes[pos] ^= mask;
        fs::write(d.path().join(JOURNAL_FILE), &bytes).unwrap();
        let (mut j, recs, rep) = open(d.path());
        let damaged = ends.iter().position(|&e| pos < e).unwrap();
        prop_assert_eq!(recs, (0..damaged as u64).map(rec).collect::<Vec<_>>());
        prop_assert!(rep.dropped_records >= 1);
        prop_assert_eq!(rep.first_bad_offset, Some(if damaged == 0 { 0 } else { ends[damaged - 1] as u64 }));
        // Appends after recovery are readable.
        j.append(&rec(100)).unwrap();
        drop(j);
        let (_, again, rep2) = open(d.path());
        prop_assert_eq!(again.last().cloned(), Some(rec(100)));
        prop_assert!(rep2.is_clean());
    }

    /// Arbitrary garbage never panics open, and whatever it keeps is
    /// followed by a clean, readable append.
    #[test]
    fn garbage_never_panics(garbage in proptest::collection::vec(any::<u8>(), 0..512)) {
        let d = tempfile::tempdir().unwrap();
        fs::write(d.path().join(JOURNAL_FILE), &garbage).unwrap();
        let (mut j, recs, _) = open(d.path());
        let kept = recs.len();
        j.append(&rec(1)).unwrap();
        drop(j);
        let (_, again, rep) = open(d.path());
        prop_assert_eq!(again.len(), kept + 1);
        prop_assert!(rep.is_clean());
    }
}

const CHILD_ENV: &str = "DECKHAND_JOURNAL_CHILD_DIR";
/// Bound on the child's appends, so a stray child cannot fill the disk.
const CHILD_MAX_RECORDS: u64 = 100_000;

/// Child half of `kill_9_mid_append_loses_no_acknowledged_record`: appends
/// forever, printing each id only after `append` returned (= acknowledged).
#[test]
fn child_appender() {
    let Ok(dir) = std::env::var(CHILD_ENV) else {
        return;
    };
    let (mut j, _, _) = open(Path::new(&dir));
    let mut out = io::stdout();
    for i in 0..CHILD_MAX_RECORDS {
        j.append(&rec(i)).unwrap();
        writeln!(out, "ACK {i}").unwrap();
        out.flush().unwrap();
    }
}

/// A real process is killed with SIGKILL while appending; every record it
/// acknowledged must be recovered, in order, and the journal stays usable.
#[cfg(unix)]
#[test]
fn kill_9_mid_append_loses_no_acknowledged_record() {
    use std::io::BufRead;
    use std::process::{Command, Stdio};
    let d = tempfile::tempdir().unwrap();
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["agent::journal::tests::child_appender", "--exact", "--nocapture", "--test-threads=1"])
        .env(CHILD_ENV, d.path())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut acked: Option<u64> = None;
    let mut lines = io::BufReader::new(child.stdout.take().unwrap()).lines();
    while let Some(Ok(line)) = lines.next() {
        if let Some(n) = line.strip_prefix("ACK ") {
            acked = Some(n.parse().unwrap());
            if acked >= Some(200) {
                break;
            }
        }
    }
    child.kill().unwrap(); // SIGKILL on Unix
    child.wait().unwrap();
    let acked = acked.expect("child acknowledged nothing");
    let (mut j, recs, _) = open(d.path());
    assert!(recs.len() as u64 > acked, "acked {acked}, recovered {}", recs.len());
    for (i, r) in recs.iter().enumerate() {
        assert_eq!(*r, rec(i as u64));
    }
    eprintln!("kill -9: acknowledged {}, recovered {}", acked + 1, recs.len());
    j.append(&rec(u64::MAX)).unwrap();
}

/// Issue #14: a record that cannot be applied is kept aside (quarantined),
/// reported and skipped, never replayed into a crash loop nor lost unseen.
#[test]
fn dropped_bytes_are_quarantined_once_and_bounded() {
    let d = tempfile::tempdir().unwrap();
    let (mut j, _, _) = open(d.path());
    j.append(&rec(0)).unwrap();
    drop(j);
    let bad = encode_frame(&"SECRET-POISON", 1 << 20).unwrap();
    let mut f = OpenOptions::new().append(true).open(d.path().join(JOURNAL_FILE)).unwrap();
    f.write_all(&bad).unwrap();
    f.write_all(&encode_frame(&rec(1), 1 << 20).unwrap()).unwrap();
    f.write_all(b"\x07\x00").unwrap(); // a torn header
    drop(f);
    let (_, recs, rep) = open(d.path());
    assert_eq!(recs, vec![rec(0), rec(1)]);
    assert_eq!(rep.quarantined_bytes, bad.len() as u64 + 2, "{rep:?}");
    let q = fs::read(d.path().join(QUARANTINE_FILE)).unwrap();
    assert!(q.windows(13).any(|w| w == b"SECRET-POISON"), "the poisoned record is kept aside");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(fs::metadata(d.path().join(QUARANTINE_FILE)).unwrap().permissions().mode() & 0o777, 0o600);
    }
    // Reopened: clean, nothing quarantined twice.
    let (_, _, rep) = open(d.path());
    assert!(rep.is_clean() && rep.quarantined_bytes == 0);
    assert_eq!(fs::read(d.path().join(QUARANTINE_FILE)).unwrap(), q);
    // The quarantine stops growing at its bound.
    for _ in 0..3 {
        let mut f = OpenOptions::new().append(true).open(d.path().join(JOURNAL_FILE)).unwrap();
        f.write_all(&encode_frame(&"x".repeat(900_000), 1 << 20).unwrap()).unwrap();
        f.write_all(&encode_frame(&"x".repeat(900_000), 1 << 20).unwrap()).unwrap();
        drop(f);
        let _ = open(d.path());
    }
    assert!(fs::metadata(d.path().join(QUARANTINE_FILE)).unwrap().len() <= MAX_QUARANTINE_BYTES);
}
