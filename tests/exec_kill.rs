//! Real-process tests of timeout, stop and tree killing: TERM-trapping
//! grandchildren, background jobs holding the output pipe, dropped runs.
//! Time bounds here are generous ceilings (a broken engine would take the
//! scripts' full 30 s), not performance assertions.

use std::path::Path;
use std::time::{Duration, Instant};

use deckhand::exec::{RunSpec, Termination, codes, run};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

const CEILING: Duration = Duration::from_secs(15);

fn spec(root: &Path, script: &str) -> RunSpec {
    RunSpec {
        script_root: Some(root.to_path_buf()),
        kill_grace: Duration::from_millis(500),
        drain_timeout: Duration::from_millis(500),
        ..RunSpec::new("t-kill", deckhand::lifecycle::CommandType::RunShellScript, script)
    }
}

/// Gone, or a zombie waiting for a reaper that is not us.
fn is_gone(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(s) => s.rsplit(')').next().map(|r| r.trim_start().starts_with('Z')).unwrap_or(false),
    }
}

fn pids_in(file: &Path) -> Vec<i32> {
    std::fs::read_to_string(file).unwrap_or_default().split_whitespace().filter_map(|p| p.parse().ok()).collect()
}

/// A shell that ignores SIGTERM and starts a grandchild that ignores it too.
fn stubborn_tree(pidfile: &Path) -> String {
    format!(
        "trap '' TERM\nsh -c 'trap \"\" TERM; while :; do sleep 1; done' &\necho $! > {p}\necho $$ >> {p}\necho ready\nwhile :; do sleep 1; done\n",
        p = pidfile.display()
    )
}

#[tokio::test]
async fn timeout_kills_tree_that_traps_sigterm() {
    let t = tempfile::tempdir().unwrap();
    let pidfile = t.path().join("pids");
    let mut s = spec(t.path(), &stubborn_tree(&pidfile));
    s.script_root = Some(t.path().join("scripts"));
    s.timeout = Duration::from_millis(1500); // room for the script to write its pid file under load
    let began = Instant::now();
    let o = run(s, CancellationToken::new(), None).await;
    assert!(began.elapsed() < CEILING);
    assert_eq!(o.termination, Termination::TimedOut);
    assert_eq!(o.error_code, codes::EXECUTION_TIMEOUT);
    assert_eq!(o.signal, Some(9), "the TERM-ignoring leader needed SIGKILL");
    assert_eq!(o.exit_code, None);
    assert_eq!(String::from_utf8_lossy(&o.output), "ready\n");
    let pids = pids_in(&pidfile);
    assert_eq!(pids.len(), 2);
    for p in pids {
        assert!(is_gone(p), "pid {p} survived");
    }
}

#[tokio::test]
async fn stop_ends_a_cooperative_tree_without_waiting_for_the_grace() {
    let t = tempfile::tempdir().unwrap();
    let pidfile = t.path().join("pids");
    let script = format!("sleep 30 &\necho $! > {}\necho ready\nwait\n", pidfile.display());
    let mut s = spec(t.path(), &script);
    s.script_root = Some(t.path().join("scripts"));
    s.kill_grace = Duration::from_secs(20);
    let stop = CancellationToken::new();
    let (tx, mut rx) = mpsc::channel(16);
    let task = tokio::spawn(run(s, stop.clone(), Some(tx)));
    assert_eq!(rx.recv().await.unwrap(), b"ready\n");
    let began = Instant::now();
    stop.cancel();
    let o = task.await.unwrap();
    // Everything dies on SIGTERM, so we must not sit out the 20 s grace.
    assert!(began.elapsed() < CEILING, "took {:?}", began.elapsed());
    assert_eq!(o.termination, Termination::Stopped);
    assert_eq!(o.error_code, "");
    assert_eq!(o.signal, Some(15));
    for p in pids_in(&pidfile) {
        assert!(is_gone(p), "pid {p} survived");
    }
}

#[tokio::test]
async fn stop_kills_stubborn_tree_after_grace() {
    let t = tempfile::tempdir().unwrap();
    let pidfile = t.path().join("pids");
    let mut s = spec(t.path(), &stubborn_tree(&pidfile));
    s.script_root = Some(t.path().join("scripts"));
    let stop = CancellationToken::new();
    let (tx, mut rx) = mpsc::channel(16);
    let task = tokio::spawn(run(s, stop.clone(), Some(tx)));
    assert_eq!(rx.recv().await.unwrap(), b"ready\n");
    stop.cancel();
    let o = task.await.unwrap();
    assert_eq!(o.termination, Termination::Stopped);
    assert_eq!(o.signal, Some(9));
    for p in pids_in(&pidfile) {
        assert!(is_gone(p), "pid {p} survived");
    }
}

#[tokio::test]
async fn background_job_holding_the_pipe_does_not_hang_a_finished_run() {
    let t = tempfile::tempdir().unwrap();
    let pidfile = t.path().join("pids");
    // The background sleep inherits stdout, so EOF would only come in 30 s.
    let script = format!("sleep 30 &\necho $! > {}\necho done\n", pidfile.display());
    let mut s = spec(t.path(), &script);
    s.script_root = Some(t.path().join("scripts"));
    let began = Instant::now();
    let o = run(s, CancellationToken::new(), None).await;
    assert!(began.elapsed() < CEILING, "waited for EOF: {:?}", began.elapsed());
    assert_eq!(o.termination, Termination::Exited);
    assert_eq!(o.exit_code, Some(0));
    assert_eq!(o.error_code, "");
    assert_eq!(String::from_utf8_lossy(&o.output), "done\n");
    // A finished script may leave daemons behind on purpose: not killed.
    let pids = pids_in(&pidfile);
    assert!(!is_gone(pids[0]));
    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pids[0]), nix::sys::signal::Signal::SIGKILL);
}

#[tokio::test]
async fn dropping_the_run_kills_the_tree() {
    let t = tempfile::tempdir().unwrap();
    let pidfile = t.path().join("pids");
    let mut s = spec(t.path(), &stubborn_tree(&pidfile));
    s.script_root = Some(t.path().join("scripts"));
    let (tx, mut rx) = mpsc::channel(16);
    let task = tokio::spawn(run(s, CancellationToken::new(), Some(tx)));
    assert_eq!(rx.recv().await.unwrap(), b"ready\n");
    task.abort();
    let _ = task.await;
    let pids = pids_in(&pidfile);
    assert_eq!(pids.len(), 2);
    // SIGKILL is delivered at once; the processes may need a moment to be reaped.
    let began = Instant::now();
    while !pids.iter().all(|p| is_gone(*p)) && began.elapsed() < CEILING {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for p in pids {
        assert!(is_gone(p), "pid {p} survived the dropped run");
    }
}
