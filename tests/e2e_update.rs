//! Agent self-update end to end (issue #20): a real hub serving real agent
//! builds to real agents over their TLS WebSockets.
//!
//! "Version N+1" is this build's agent binary with its version slot
//! rewritten (identity::VERSION_SLOT_PREFIX): a different file with a
//! different digest that reports a different version, as a release would.
//! Each agent runs its own copy of the binary, so a swap replaces that copy.
//! The signing key is generated here; agents pin its public half.

#[path = "support/harness.rs"]
mod harness;

use std::path::{Path, PathBuf};
use std::time::Duration;

use base64::Engine;
use deckhand::agent::identity::{VERSION_SLOT_BYTES, VERSION_SLOT_PREFIX};
use harness::{Agent, Hub, output_of, wait_until};
use ring::signature::{Ed25519KeyPair, KeyPair};
use sha2::{Digest, Sha256};

const WAIT: Duration = Duration::from_secs(90);
const N: &str = env!("CARGO_PKG_VERSION");

fn b64(b: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(b)
}

fn keypair() -> Ed25519KeyPair {
    let pkcs8 = Ed25519KeyPair::generate_pkcs8(&ring::rand::SystemRandom::new()).unwrap();
    Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).unwrap()
}

/// This build's agent with its version slot saying `version`.
fn agent_as(version: &str) -> Vec<u8> {
    let mut bin = std::fs::read(env!("CARGO_BIN_EXE_deckhand-agent")).unwrap();
    let at = bin.windows(VERSION_SLOT_PREFIX.len()).position(|w| w == VERSION_SLOT_PREFIX).expect("version slot in the binary");
    let field = &mut bin[at + VERSION_SLOT_PREFIX.len()..at + VERSION_SLOT_BYTES];
    field.fill(0);
    field[..version.len()].copy_from_slice(version.as_bytes());
    bin
}

/// Writes `body` and its manifest into `dir`; `signed` is what the key signs
/// (normally `body`; another file's bytes for a tampered build).
fn publish(dir: &Path, key: &Ed25519KeyPair, version: &str, body: &[u8], signed: &[u8]) {
    std::fs::create_dir_all(dir).unwrap();
    let file = format!("deckhand-agent-{version}");
    std::fs::write(dir.join(&file), body).unwrap();
    let digest = hex::encode(Sha256::digest(body));
    let statement =
        deckhand::protocol::update_statement(version, std::env::consts::OS, std::env::consts::ARCH, &hex::encode(Sha256::digest(signed)));
    let sig = b64(key.sign(statement.as_bytes()).as_ref());
    let manifest = format!(
        "version = \"{version}\"\nos = \"{}\"\narch = \"{}\"\nfile = \"{file}\"\nsha256 = \"{digest}\"\nsignature = \"{sig}\"\n",
        std::env::consts::OS,
        std::env::consts::ARCH
    );
    std::fs::write(dir.join(format!("{version}.toml")), manifest).unwrap();
}

/// hub.toml offering `version` to `percent`% at a time (none: serve only).
fn hub_config(dir: &Path, builds: &Path, version: Option<&str>, percent: u8) -> PathBuf {
    let path = dir.join("hub.toml");
    let version = version.map(|v| format!("version = \"{v}\"\n")).unwrap_or_default();
    std::fs::write(&path, format!("[agent_update]\nbuilds_dir = \"{}\"\n{version}percent = {percent}\n", builds.display())).unwrap();
    path
}

/// A registered agent running its own copy of this build, pinning `key`.
fn agent(hub: &Hub, key: &Ed25519KeyPair) -> Agent {
    let mut a = hub.agent_unstarted(&hub.url, PathBuf::new());
    a.bin = a.dir.path().join("bin").join("deckhand-agent");
    std::fs::create_dir_all(a.bin.parent().unwrap()).unwrap();
    std::fs::copy(env!("CARGO_BIN_EXE_deckhand-agent"), &a.bin).unwrap();
    let cfg = a.dir.path().join("agent.toml");
    std::fs::write(&cfg, format!("update_public_key = \"{}\"\n", b64(key.public_key().as_ref()))).unwrap();
    a.extra = vec!["--config".into(), cfg.display().to_string()];
    a.spawn();
    a.instance_id();
    a
}

/// The log without its colour codes.
fn plain(log: &str) -> String {
    let mut out = String::with_capacity(log.len());
    let mut chars = log.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            chars.by_ref().find(|&c| c == 'm');
        } else {
            out.push(c);
        }
    }
    out
}

fn status_of(hub: &Hub, id: &str) -> serde_json::Value {
    let v = hub.call("DescribeCloudAssistantStatus", &[("InstanceId.1", id)]).unwrap();
    v["InstanceCloudAssistantStatusSet"]["InstanceCloudAssistantStatus"][0].clone()
}

#[test]
fn agents_update_half_at_a_time_and_runs_in_flight_survive() {
    let key = keypair();
    let work = tempfile::tempdir().unwrap();
    let builds = work.path().join("builds");
    let next = agent_as("0.2.0-test");
    publish(&builds, &key, "0.2.0-test", &next, &next);
    // First no offer: the agents start a run, then the hub is told the target.
    let cfg = hub_config(work.path(), &builds, None, 50);
    let mut hub = Hub::start_with(&["--config", cfg.to_str().unwrap()]);
    let agents = [agent(&hub, &key), agent(&hub, &key)];
    let ids: Vec<String> = agents.iter().map(|a| a.instance_id()).collect();
    for id in &ids {
        hub.wait_online(id);
    }
    let inv = hub.run("sleep 4; echo survived", &ids.iter().map(String::as_str).collect::<Vec<_>>(), &[("Timeout", "120")]);
    wait_until("runs started", WAIT, || agents.iter().all(|a| !a.supervisor_pids().is_empty()).then_some(()));
    hub_config(work.path(), &builds, Some("0.2.0-test"), 50);
    hub.restart();

    let versions = wait_until("both agents on 0.2.0-test", WAIT, || {
        let v: Vec<String> = ids.iter().map(|id| status_of(&hub, id)["CloudAssistantVersion"].as_str().unwrap_or("").to_string()).collect();
        (v.iter().all(|v| v == "0.2.0-test")).then_some(v)
    });
    assert_eq!(versions.len(), 2);
    // 50% of two agents: one offer at a time.
    let log = plain(&hub.log());
    let offers: Vec<&str> = log.lines().filter(|l| l.contains("offering agent update")).collect();
    assert_eq!(offers.len(), 2, "{log}");
    assert!(offers.iter().all(|l| l.contains("in_progress=1") && l.contains("slots=1")), "{offers:?}");
    assert!(log.matches("agent reconnected with the new version").count() >= 1 || log.matches("agent updated").count() >= 1, "{log}");
    for a in &agents {
        // The swap: the new bytes at the path, the previous kept beside it.
        assert_eq!(std::fs::read(&a.bin).unwrap(), next);
        assert!(Path::new(&format!("{}.previous", a.bin.display())).exists());
        let out = std::process::Command::new(&a.bin).arg("--version").output().unwrap();
        assert!(String::from_utf8_lossy(&out.stdout).contains("0.2.0-test"));
    }
    // The runs started under N finish and are reported by N+1.
    for r in hub.wait_final(&inv, WAIT) {
        assert_eq!(r["InvocationStatus"], "Success", "{r}");
        assert_eq!(output_of(&r), b"survived\n");
    }
    // And the updated agents run new work.
    let inv = hub.run("echo after", &ids.iter().map(String::as_str).collect::<Vec<_>>(), &[]);
    for r in hub.wait_final(&inv, WAIT) {
        assert_eq!(output_of(&r), b"after\n", "{r}");
    }
}

#[test]
fn a_build_that_exits_at_start_is_refused_on_every_agent_and_the_hub_shows_it() {
    let key = keypair();
    let work = tempfile::tempdir().unwrap();
    let builds = work.path().join("builds");
    let broken = b"#!/bin/sh\nexit 3\n".to_vec();
    publish(&builds, &key, "0.3.0-broken", &broken, &broken);
    let cfg = hub_config(work.path(), &builds, Some("0.3.0-broken"), 100);
    let hub = Hub::start_with(&["--config", cfg.to_str().unwrap()]);
    let agents = [agent(&hub, &key), agent(&hub, &key)];
    for a in &agents {
        let id = a.instance_id();
        let s = wait_until("update failure shown", WAIT, || {
            let s = status_of(&hub, &id);
            (s["DeckhandAgentUpdate"]["Status"] == "Failed").then_some(s)
        });
        assert_eq!(s["DeckhandAgentUpdate"]["Version"], "0.3.0-broken", "{s}");
        let err = s["DeckhandAgentUpdate"]["Error"].as_str().unwrap();
        assert!(err.contains("trial of the new binary failed") && err.contains("exited"), "{err}");
        assert_eq!(s["CloudAssistantVersion"], N, "{s}");
        // Still N on disk, nothing staged, and still serving.
        assert_eq!(std::fs::read(&a.bin).unwrap(), std::fs::read(env!("CARGO_BIN_EXE_deckhand-agent")).unwrap());
        assert!(!Path::new(&format!("{}.new", a.bin.display())).exists());
        let inv = hub.run("echo still", &[&id], &[]);
        assert_eq!(output_of(&hub.wait_final(&inv, WAIT)[0]), b"still\n");
    }
}

#[test]
fn a_tampered_build_is_refused_by_signature() {
    let key = keypair();
    let work = tempfile::tempdir().unwrap();
    let builds = work.path().join("builds");
    let genuine = agent_as("0.4.0-test");
    let mut tampered = genuine.clone();
    // A few bytes changed after signing; the manifest's digest follows the
    // tampered file (whoever changed it could change the manifest too).
    let n = tampered.len();
    tampered[n / 2] ^= 0xff;
    publish(&builds, &key, "0.4.0-test", &tampered, &genuine);
    let cfg = hub_config(work.path(), &builds, Some("0.4.0-test"), 100);
    let hub = Hub::start_with(&["--config", cfg.to_str().unwrap()]);
    let a = agent(&hub, &key);
    let id = a.instance_id();
    let s = wait_until("signature refusal shown", WAIT, || {
        let s = status_of(&hub, &id);
        (s["DeckhandAgentUpdate"]["Status"] == "Failed").then_some(s)
    });
    assert!(s["DeckhandAgentUpdate"]["Error"].as_str().unwrap().contains("signature does not verify"), "{s}");
    assert_eq!(s["CloudAssistantVersion"], N);
    assert_eq!(std::fs::read(&a.bin).unwrap(), std::fs::read(env!("CARGO_BIN_EXE_deckhand-agent")).unwrap());
    assert!(!a.log().contains("downloading agent update"), "a build refused by signature is not even downloaded");
}

#[test]
fn the_guard_puts_the_previous_binary_back_when_the_new_one_keeps_dying() {
    // What the unit's ExecStartPre= does before each start after a swap:
    // the previous (real) binary counts the starts and, past the limit,
    // puts itself back.
    let dir = tempfile::tempdir().unwrap();
    let (bin, state) = (dir.path().join("deckhand-agent"), dir.path().join("state"));
    let previous = dir.path().join("deckhand-agent.previous");
    std::fs::write(&bin, b"#!/bin/sh\nexit 1\n").unwrap();
    std::fs::copy(env!("CARGO_BIN_EXE_deckhand-agent"), &previous).unwrap();
    std::fs::create_dir_all(state.join("update")).unwrap();
    let deadline = chrono::Utc::now().timestamp() + 600;
    std::fs::write(state.join("update/pending.json"), format!(r#"{{"from":"{N}","to":"0.5.0","deadline":{deadline}}}"#)).unwrap();
    let guard = || {
        let out = std::process::Command::new(&previous).arg("__update-guard").arg("--state-dir").arg(&state).arg(&bin).output().unwrap();
        assert!(out.status.success(), "{out:?}");
        String::from_utf8(out.stderr).unwrap()
    };
    for n in 1..=3 {
        assert!(guard().contains(&format!("start {n} since the update")));
        assert_eq!(std::fs::read(&bin).unwrap(), b"#!/bin/sh\nexit 1\n");
    }
    assert!(guard().contains(&format!("update to 0.5.0 did not stay up; rolled back to {N}")));
    assert_eq!(std::fs::read(&bin).unwrap(), std::fs::read(env!("CARGO_BIN_EXE_deckhand-agent")).unwrap());
    assert!(!previous.exists() && !state.join("update/pending.json").exists());
    let failed: serde_json::Value = serde_json::from_slice(&std::fs::read(state.join("update/failed.json")).unwrap()).unwrap();
    assert_eq!(failed["version"], "0.5.0");
    assert_eq!(failed["reported"], false, "told to the hub by the next session");
}
