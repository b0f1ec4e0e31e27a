//! Real-process output tests: cap with head + tail, invalid UTF-8, live
//! chunks that never block the child, and 100 MiB with bounded memory.

use std::path::Path;

use deckhand::exec::{RunSpec, Termination, run};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

fn spec(root: &Path, script: &str) -> RunSpec {
    RunSpec { script_root: Some(root.to_path_buf()), ..RunSpec::new("t-out", deckhand::lifecycle::CommandType::RunShellScript, script) }
}

/// Peak resident set size of this process so far, in KiB.
fn vm_hwm_kib() -> u64 {
    let s = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = s.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

#[tokio::test]
async fn hundred_mib_keeps_head_and_tail_in_bounded_memory() {
    let t = tempfile::tempdir().unwrap();
    let before = vm_hwm_kib();
    // 'B' * 12 KiB first, then zeros, then a recognisable tail.
    let script = "head -c 12288 /dev/zero | tr '\\0' B; head -c 104857600 /dev/zero; printf 'the end\\n'";
    let (tx, mut rx) = mpsc::channel::<Vec<u8>>(64);
    // A consumer that reads slowly: the engine must drop chunks, not stall.
    let consumer = tokio::spawn(async move {
        let mut n = 0u64;
        while let Some(c) = rx.recv().await {
            n += c.len() as u64;
            tokio::time::sleep(std::time::Duration::from_millis(1)).await;
        }
        n
    });
    let o = run(spec(t.path(), script), CancellationToken::new(), Some(tx)).await;
    let live_bytes = consumer.await.unwrap();
    let after = vm_hwm_kib();
    let total = 12288u64 + 104_857_600 + 8;
    assert_eq!(o.termination, Termination::Exited);
    assert_eq!(o.exit_code, Some(0));
    assert_eq!(o.output.len(), deckhand::protocol::OUTPUT_CAP_BYTES);
    assert_eq!(o.dropped, total - o.output.len() as u64);
    assert!(o.output[..12288].iter().all(|b| *b == b'B'));
    assert!(o.output.ends_with(b"\0\0the end\n"));
    assert!(live_bytes <= total);
    let grown_mib = (after.saturating_sub(before)) / 1024;
    println!("peak RSS grew by {grown_mib} MiB for 100 MiB of output; live consumer saw {live_bytes} bytes");
    assert!(grown_mib < 32, "memory grew by {grown_mib} MiB");
}

#[tokio::test]
async fn invalid_utf8_is_preserved_and_live_chunks_match() {
    let t = tempfile::tempdir().unwrap();
    let (tx, mut rx) = mpsc::channel::<Vec<u8>>(1024);
    let o = run(spec(t.path(), "printf '\\377\\376ok\\n'; printf 'x\\200y' >&2"), CancellationToken::new(), Some(tx)).await;
    assert_eq!(o.output, b"\xff\xfeok\nx\x80y");
    assert_eq!(o.dropped, 0);
    let mut seen = Vec::new();
    while let Some(c) = rx.recv().await {
        seen.extend(c);
    }
    assert_eq!(seen, o.output);
}

#[tokio::test]
async fn full_live_channel_never_blocks_the_child() {
    let t = tempfile::tempdir().unwrap();
    // Capacity 1 and nobody reading: every chunk after the first is dropped.
    let (tx, rx) = mpsc::channel::<Vec<u8>>(1);
    let o = run(spec(t.path(), "i=0; while [ $i -lt 2000 ]; do echo line $i; i=$((i+1)); done"), CancellationToken::new(), Some(tx)).await;
    drop(rx);
    assert_eq!(o.termination, Termination::Exited);
    assert!(o.output.ends_with(b"line 1999\n"));
}

#[tokio::test]
async fn custom_cap_counts_the_dropped_middle() {
    let t = tempfile::tempdir().unwrap();
    let mut s = spec(t.path(), "printf 0123456789abcdefghij");
    s.output_cap = 10;
    let o = run(s, CancellationToken::new(), None).await;
    assert_eq!(o.output, b"01234fghij");
    assert_eq!(o.dropped, 10);
}
