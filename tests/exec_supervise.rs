//! A supervisor launched ahead of its run (issue #21): it waits for the
//! agent's go before anything, and a run withdrawn before its go (or an
//! agent that died first) leaves no trace of a start. Real processes: the
//! built `deckhand-agent` re-executed as `__supervise`, as the agent does.
#![cfg(unix)]

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use deckhand::exec::RunSpec;
use deckhand::exec::supervise::{self, Watched};
use tokio_util::sync::CancellationToken;

const WAIT: Duration = Duration::from_secs(20);

fn agent() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_deckhand-agent"))
}

fn spec(root: &Path, script: &str) -> RunSpec {
    RunSpec { script_root: Some(root.to_path_buf()), ..RunSpec::new("t-ahead", deckhand::lifecycle::CommandType::RunShellScript, script) }
}

/// The pid of the supervisor started for `dir`, and the system call it is
/// in now (`/proc/<pid>/syscall`: number, then arguments).
fn supervisor_of(dir: &Path) -> Option<(u32, String)> {
    let want = dir.as_os_str().as_encoded_bytes();
    for e in std::fs::read_dir("/proc").ok()?.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else { continue };
        let Ok(cmdline) = std::fs::read(e.path().join("cmdline")) else { continue };
        let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
        if args.contains(&b"__supervise".as_slice()) && args.contains(&want) {
            let syscall = std::fs::read_to_string(e.path().join("syscall")).unwrap_or_default();
            return Some((pid, syscall));
        }
    }
    None
}

/// Waits until the supervisor for `dir` is blocked reading its stdin
/// (system call 0, `read`, on descriptor 0): parked, waiting for its go.
fn wait_parked(dir: &Path) -> u32 {
    let t = Instant::now();
    loop {
        if let Some((pid, syscall)) = supervisor_of(dir)
            && syscall.starts_with("0 0x0 ")
        {
            return pid;
        }
        assert!(t.elapsed() < WAIT, "the supervisor never waited on its stdin: {:?}", supervisor_of(dir));
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn gone(pid: u32) -> bool {
    // A zombie still has a /proc entry; its state letter is Z.
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map_or(true, |s| s.rsplit(')').next().is_some_and(|rest| rest.trim_start().starts_with('Z')))
}

#[tokio::test]
async fn a_supervisor_launched_ahead_runs_nothing_before_its_go() {
    let t = tempfile::tempdir().unwrap();
    let (dir, marker) = (t.path().join("runs/t-ahead.0"), t.path().join("marker"));
    std::fs::create_dir_all(t.path().join("runs")).unwrap();
    let launched = supervise::claim(&dir).unwrap().launch(&agent(), None).unwrap();
    supervise::fill(&dir, &spec(t.path(), &format!("echo once >> {}; echo ran", marker.display()))).unwrap();
    // Parked on its stdin with the spec already there: still no start.
    wait_parked(&dir);
    assert!(!dir.join("ran").exists() && !marker.exists(), "the script started before its go");
    let exited = launched.go().await.unwrap();
    let w = supervise::watch(&dir, CancellationToken::new(), None, false, Some(exited)).await;
    let Watched::Finished(out) = w else { panic!("not finished: {w:?}") };
    assert_eq!((out.exit_code, String::from_utf8_lossy(&out.output).as_ref()), (Some(0), "ran\n"));
    assert_eq!(std::fs::read_to_string(&marker).unwrap(), "once\n");
}

#[tokio::test]
async fn a_run_withdrawn_before_its_go_leaves_no_start_and_can_run_later() {
    let t = tempfile::tempdir().unwrap();
    let (dir, marker) = (t.path().join("runs/t-ahead.0"), t.path().join("marker"));
    std::fs::create_dir_all(t.path().join("runs")).unwrap();
    let script = format!("echo once >> {}", marker.display());
    let launched = supervise::claim(&dir).unwrap().launch(&agent(), None).unwrap();
    supervise::fill(&dir, &spec(t.path(), &script)).unwrap();
    let pid = wait_parked(&dir);
    // As when filling failed, or the agent died before the go.
    launched.withdraw().await;
    assert!(gone(pid), "the withdrawn supervisor still runs");
    assert!(!dir.join("ran").exists() && !marker.exists(), "a withdrawn run started");
    // What a restarted agent sees: never ran, and the directory free.
    assert!(matches!(supervise::inspect(&dir), Some(Watched::NeverRan)), "{:?}", supervise::inspect(&dir));
    // So it may run it, once.
    let launched = supervise::claim(&dir).unwrap().launch(&agent(), None).unwrap();
    let exited = launched.go().await.unwrap();
    let w = supervise::watch(&dir, CancellationToken::new(), None, false, Some(exited)).await;
    assert!(matches!(w, Watched::Finished(_)), "{w:?}");
    assert_eq!(std::fs::read_to_string(&marker).unwrap(), "once\n");
}

#[tokio::test]
async fn a_directory_already_claimed_is_busy() {
    let t = tempfile::tempdir().unwrap();
    let dir = t.path().join("t-ahead.0");
    let launched = supervise::claim(&dir).unwrap().launch(&agent(), None).unwrap();
    assert!(matches!(supervise::claim(&dir), Err(supervise::SuperviseError::Busy(_))), "the launched supervisor holds the lock");
    launched.withdraw().await;
    assert!(supervise::claim(&dir).is_ok(), "free once it is gone");
}

/// The agent hands the run-as account it resolved to the supervisor in
/// `spec.json` (tenth pass), and the supervisor runs the script with it
/// rather than looking the account up again; one resolved while the
/// account files were otherwise (its stamp differs) is not taken. Shown by
/// editing the handed home between the fill and the go: `$HOME` follows
/// the handed account only while its stamp is current.
#[tokio::test]
async fn a_supervisor_runs_with_the_account_the_agent_handed_it() {
    for stale in [false, true] {
        let t = tempfile::tempdir().unwrap();
        let dir = t.path().join("runs/t-ahead.0");
        std::fs::create_dir_all(t.path().join("runs")).unwrap();
        let launched = supervise::claim(&dir).unwrap().launch(&agent(), None).unwrap();
        supervise::fill(&dir, &spec(t.path(), "echo \"$HOME\"")).unwrap();
        let path = dir.join("spec.json");
        let mut stored: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        let account = &mut stored["account"];
        assert!(account["account"]["uid"].is_u64(), "the agent handed an account: {stored}");
        let resolved_home = account["account"]["home"].as_str().unwrap().to_string();
        let handed_home = t.path().display().to_string();
        account["account"]["home"] = handed_home.clone().into();
        if stale {
            let size = account["stamp"][0][0].as_u64().unwrap();
            account["stamp"][0][0] = (size + 1).into();
        }
        std::fs::write(&path, serde_json::to_vec(&stored).unwrap()).unwrap();
        let exited = launched.go().await.unwrap();
        let w = supervise::watch(&dir, CancellationToken::new(), None, false, Some(exited)).await;
        let Watched::Finished(out) = w else { panic!("not finished: {w:?}") };
        let home = String::from_utf8_lossy(&out.output).trim_end().to_string();
        if stale {
            assert_eq!(home, resolved_home, "a stale handed account was taken instead of a fresh lookup");
        } else {
            assert_eq!(home, handed_home, "the handed account was not used");
        }
    }
}
