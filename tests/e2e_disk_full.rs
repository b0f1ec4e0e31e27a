//! Agent state dir full (issue #14, finding 7): results reached while the
//! journal cannot be written are held in memory, still reported (the hub's
//! ack makes them durable), the agent says it is degraded (status, log),
//! and everything recovers by itself when space returns.
//!
//! As root the state dir is a real 4 MiB tmpfs filled to the last byte (CI
//! runs as root and sets DECKHAND_REQUIRE_TMPFS=1 so it cannot fall back).
//! Elsewhere (no mount permission) the documented fault hook
//! `DECKHAND_FAULT_JOURNAL_FULL` stands in for the full disk: it makes
//! journal appends fail with ENOSPC while a flag file exists.

#![cfg(unix)]

#[path = "support/harness.rs"]
mod harness;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use harness::{Hub, output_of, wait_until};

const WAIT: Duration = Duration::from_secs(60);

/// How the disk gets full and empty again.
enum Full {
    /// A tmpfs mounted over the agent's state dir (unmounted on drop).
    Tmpfs { mount: PathBuf },
    /// The fault hook's flag file.
    Hook { flag: PathBuf },
}

impl Full {
    fn fill(&self) {
        match self {
            Full::Tmpfs { mount } => {
                let mut f = std::fs::File::create(mount.join("filler")).unwrap();
                let chunk = vec![0u8; 4096];
                // Until the file system says no: it is full for real.
                while f.write_all(&chunk).is_ok() {}
                // And no room is left for even a small file.
                assert!(std::fs::write(mount.join("probe"), vec![0u8; 8192]).is_err(), "tmpfs is full");
            }
            Full::Hook { flag } => std::fs::write(flag, b"full").unwrap(),
        }
    }

    fn free(&self) {
        match self {
            Full::Tmpfs { mount } => std::fs::remove_file(mount.join("filler")).unwrap(),
            Full::Hook { flag } => std::fs::remove_file(flag).unwrap(),
        }
    }
}

impl Drop for Full {
    fn drop(&mut self) {
        if let Full::Tmpfs { mount } = self {
            let _ = Command::new("umount").arg("-l").arg(&*mount).status();
        }
    }
}

/// Puts the (stopped) agent's state dir on a small tmpfs when we may mount.
/// `DECKHAND_TEST_DISK_FULL_HOOK=1` uses the hook even as root (to test it).
fn small_state_dir(state: &Path, scratch: &Path) -> Option<Full> {
    if std::env::var_os("DECKHAND_TEST_DISK_FULL_HOOK").is_some() {
        return None;
    }
    let is_root = Command::new("id").arg("-u").output().ok().is_some_and(|o| o.stdout.starts_with(b"0\n"));
    if !is_root {
        return None;
    }
    let old = scratch.join("state.old");
    std::fs::rename(state, &old).unwrap();
    std::fs::create_dir(state).unwrap();
    let ok = Command::new("mount").args(["-t", "tmpfs", "-o", "size=4m,mode=0700", "tmpfs"]).arg(state).status().is_ok_and(|s| s.success());
    if !ok {
        std::fs::remove_dir(state).unwrap();
        std::fs::rename(&old, state).unwrap();
        return None;
    }
    let copied = Command::new("cp").arg("-a").arg(format!("{}/.", old.display())).arg(state).status().unwrap();
    assert!(copied.success());
    Some(Full::Tmpfs { mount: state.to_path_buf() })
}

fn agent_status(state: &Path) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_deckhand-agent")).arg("status").arg("--state-dir").arg(state).output().unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The hub's instance view of the agent's journal trouble (null when healthy).
fn hub_degraded(hub: &Hub, id: &str) -> serde_json::Value {
    let v = hub.call("DescribeManagedInstances", &[("InstanceId.1", id)]).unwrap();
    v["Instances"]["Instance"][0]["AgentJournalDegraded"].clone()
}

fn lines(path: &Path) -> usize {
    std::fs::read_to_string(path).map(|t| t.lines().count()).unwrap_or(0)
}

#[test]
fn full_state_dir_keeps_every_result_and_recovers_by_itself() {
    let hub = Hub::start();
    let mut a = hub.agent();
    let id = a.instance_id();
    hub.wait_online(&id);
    a.kill();
    let scratch = tempfile::tempdir().unwrap();
    let full = match small_state_dir(&a.state_dir(), scratch.path()) {
        Some(f) => f,
        None => {
            // CI runs as root and sets this: there the real tmpfs must be used.
            assert!(
                std::env::var_os("DECKHAND_REQUIRE_TMPFS").is_none() || std::env::var_os("DECKHAND_TEST_DISK_FULL_HOOK").is_some(),
                "cannot mount tmpfs but DECKHAND_REQUIRE_TMPFS is set"
            );
            let flag = scratch.path().join("journal-full");
            a.env.push(("DECKHAND_FAULT_JOURNAL_FULL".into(), flag.display().to_string()));
            eprintln!("no tmpfs (not root, mount refused, or DECKHAND_TEST_DISK_FULL_HOOK set): using the journal fault hook");
            Full::Hook { flag }
        }
    };
    a.spawn();
    hub.wait_online(&id);

    // Runs in flight when the disk fills: their final reports cannot be
    // journaled. Each prints 6000 bytes, so its report needs new pages (a
    // small one could still fit in the journal file's last page).
    let marker = scratch.path().join("ran.log");
    let invs: Vec<String> = (0..3)
        .map(|i| {
            hub.run(
                &format!("echo run >> {}; sleep 2; head -c 6000 /dev/zero | tr '\\0' x; echo; echo out-{i}", marker.display()),
                &[&id],
                &[("Timeout", "60")],
            )
        })
        .collect();
    // And one to be stopped while the disk is full (no room for a stop file).
    let long_marker = scratch.path().join("long.log");
    let long = hub.run(&format!("echo begun >> {}; echo begun; sleep 120", long_marker.display()), &[&id], &[("Timeout", "300")]);
    wait_until("4 runs started", WAIT, || (lines(&marker) == 3 && lines(&long_marker) == 1).then_some(()));
    full.fill();
    for (i, inv) in invs.iter().enumerate() {
        let r = &hub.wait_final(inv, WAIT)[0];
        assert_eq!(r["InvocationStatus"], "Success", "{r}");
        assert_eq!(String::from_utf8(output_of(r)).unwrap(), format!("{}\nout-{i}\n", "x".repeat(6000)), "real output");
    }
    let st = wait_until("status shows the agent degraded", WAIT, || Some(agent_status(&a.state_dir())).filter(|s| s.contains("DEGRADED")));
    assert!(st.contains("held in memory"), "{st}");
    assert!(a.log().contains("journal cannot be written; holding changes in memory"), "a log line says so");

    hub.call("StopInvocation", &[("InvokeId", &long)]).unwrap();
    let r = &hub.wait_final(&long, WAIT)[0];
    if r["InvocationStatus"] != "Terminated" {
        // Evidence for the failure report: what the run directories hold.
        let sh = format!("ls -la {0}/runs/*; cat {0}/runs/*/supervisor.log; df {0}", a.state_dir().display());
        let out = Command::new("sh").arg("-c").arg(sh).output().unwrap();
        eprintln!("run directories:\n{}", String::from_utf8_lossy(&out.stdout));
    }
    assert_eq!(r["InvocationStatus"], "Terminated", "{r}");
    assert_eq!(output_of(r), b"begun\n", "{r}");
    if matches!(full, Full::Tmpfs { .. }) {
        // No page left for the stop file: the supervisor was signalled.
        assert!(a.log().contains("cannot write the stop file; signalling the supervisor"));
    }
    let shown = wait_until("hub shows the agent degraded", WAIT, || Some(hub_degraded(&hub, &id)).filter(|v| v.is_string()));
    assert!(shown.as_str().unwrap().contains("journal"), "{shown}");

    // A new invocation cannot be accepted durably: it waits at the hub.
    let late_marker = scratch.path().join("late.log");
    let late = hub.run(&format!("echo late >> {}; echo late", late_marker.display()), &[&id], &[("Timeout", "60")]);

    full.free();
    wait_until("status healthy again", WAIT, || Some(agent_status(&a.state_dir())).filter(|s| s.contains("journal:         ok")));
    assert!(a.log().contains("journal writable again"), "a log line says so");
    wait_until("hub shows the agent healthy", WAIT, || hub_degraded(&hub, &id).is_null().then_some(()));
    let r = &hub.wait_final(&late, WAIT)[0];
    assert_eq!(r["InvocationStatus"], "Success", "{r}");
    assert_eq!(output_of(r), b"late\n");
    assert_eq!(lines(&late_marker), 1, "ran once");

    // What was held is on disk now: a restart reports nothing as interrupted.
    a.kill();
    a.spawn();
    hub.wait_online(&id);
    wait_until("backlog drained", WAIT, || Some(agent_status(&a.state_dir())).filter(|s| s.contains("journal backlog: 0")));
    assert!(!a.log().contains("run interrupted by agent restart"), "no run lost its result");
    for inv in &invs {
        assert_eq!(hub.wait_final(inv, WAIT)[0]["InvocationStatus"], "Success");
    }
    assert_eq!(lines(&marker), 3, "none ran twice");
    drop(a);
    drop(full);
}
