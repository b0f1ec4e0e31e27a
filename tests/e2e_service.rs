//! Running as a service: systemd readiness and watchdog over a real
//! NOTIFY_SOCKET datagram socket, `deckhand-agent status`, and
//! `deckhand-agent config check`.

#[path = "support/harness.rs"]
mod harness;

use std::os::unix::net::UnixDatagram;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use harness::{Hub, wait_until};

fn agent_bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_deckhand-agent"))
}

#[test]
fn agent_notifies_ready_and_feeds_watchdog() {
    let hub = Hub::start();
    let v = hub.call("CreateActivation", &[("InstanceCount", "1")]).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let sock_path = dir.path().join("notify.sock");
    let sock = UnixDatagram::bind(&sock_path).unwrap();
    sock.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
    let mut child = agent_bin()
        .args(["run", "--hub", &hub.url, "--ca-file", hub.ca.to_str().unwrap(), "--state-dir"])
        .arg(dir.path().join("state"))
        .args(["--activation-id", v["ActivationId"].as_str().unwrap(), "--activation-code", v["ActivationCode"].as_str().unwrap()])
        .env("NOTIFY_SOCKET", &sock_path)
        .env("WATCHDOG_USEC", "1000000")
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut got = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut buf = [0u8; 512];
    while Instant::now() < deadline && got.iter().filter(|m: &&String| m.contains("WATCHDOG=1")).count() < 3 {
        if let Ok(n) = sock.recv(&mut buf) {
            got.push(String::from_utf8_lossy(&buf[..n]).into_owned());
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    assert!(got.first().is_some_and(|m| m.contains("READY=1")), "{got:?}");
    assert!(got.iter().filter(|m| m.contains("WATCHDOG=1")).count() >= 3, "{got:?}");
}

#[test]
fn status_reports_connection_and_backlog() {
    let hub = Hub::start();
    let a = hub.agent();
    let id = a.instance_id();
    hub.wait_online(&id);
    let s: serde_json::Value = wait_until("status connected", Duration::from_secs(20), || {
        let out = agent_bin().args(["status", "--json", "--state-dir"]).arg(a.state_dir()).output().ok()?;
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
        (v["connected"] == true).then_some(v)
    });
    assert_eq!(s["instance_id"], id.as_str());
    assert_eq!(s["hub"], hub.url.as_str());
    assert_eq!(s["journal_backlog"], 0);
    // The agent's own figures (issue #21): one run, its reports acknowledged.
    let invoke_id = hub.run("echo figures", &[&id], &[]);
    hub.wait_final(&invoke_id, Duration::from_secs(30));
    let f = wait_until("figures after one run", Duration::from_secs(30), || {
        let out = agent_bin().args(["status", "--json", "--state-dir"]).arg(a.state_dir()).output().ok()?;
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
        let f = v["figures"].clone();
        (f["runs_finished"] == 1 && f["reports_acked"].as_u64()? >= 2).then_some(f)
    });
    assert_eq!(f["connections"], 1, "{f}");
    assert!(f["rss_bytes"].as_u64().unwrap() > 1024 * 1024, "{f}");
    assert!(f["threads"].as_u64().unwrap() >= 1, "{f}");
    // Welcome, the invocation, two report acks at least; hello, ack, two reports.
    assert!(f["frames_in"].as_u64().unwrap() >= 4 && f["frames_out"].as_u64().unwrap() >= 4, "{f}");
    assert!(f["bytes_in"].as_u64().unwrap() > f["frames_in"].as_u64().unwrap(), "{f}");
    let out = agent_bin().args(["status", "--state-dir"]).arg(a.state_dir()).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("connected:       true") && text.contains(&id), "{text}");
    assert!(text.contains("1 run(s) finished") && text.contains("MiB resident"), "{text}");
}

#[test]
fn config_check_names_unknown_keys_and_bad_values() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("agent.toml");
    std::fs::write(&cfg, "hub = \"https://hub.example:7070\"\nmax_concurrrent = 4\n").unwrap();
    let out = agent_bin().arg("--config").arg(&cfg).args(["config", "check"]).output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("max_concurrrent"), "{out:?}");

    std::fs::write(&cfg, "hub = \"https://hub.example:7070\"\nmax_concurrent = 4\n").unwrap();
    let out = agent_bin().arg("--config").arg(&cfg).args(["config", "check"]).output().unwrap();
    assert!(out.status.success(), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("max_concurrent = 4"));

    // A flag overrides the file, and is validated the same way.
    let out = agent_bin().arg("--config").arg(&cfg).args(["config", "check", "--max-concurrent", "0"]).output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("max_concurrent: 0 is outside 1..=256"), "{out:?}");
}

#[test]
fn register_subcommand_stores_identity_0600() {
    let hub = Hub::start();
    let v = hub.call("CreateActivation", &[("InstanceCount", "1")]).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let reg = |code: &str| {
        agent_bin()
            .args(["register", "--hub", &hub.url, "--ca-file", hub.ca.to_str().unwrap(), "--state-dir"])
            .arg(&state)
            .args(["--activation-id", v["ActivationId"].as_str().unwrap(), "--activation-code", code])
            .output()
            .unwrap()
    };
    let out = reg("wrong-code");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("InvalidActivationCode"), "{out:?}");
    let out = reg(v["ActivationCode"].as_str().unwrap());
    assert!(out.status.success(), "{out:?}");
    use std::os::unix::fs::PermissionsExt;
    let meta = std::fs::metadata(state.join("identity.json")).unwrap();
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    assert_eq!(std::fs::metadata(&state).unwrap().permissions().mode() & 0o777, 0o700);
    // The activation allowed one instance: a second machine is refused.
    let other = dir.path().join("other");
    let out = agent_bin()
        .args(["register", "--hub", &hub.url, "--ca-file", hub.ca.to_str().unwrap(), "--state-dir"])
        .arg(&other)
        .args(["--activation-id", v["ActivationId"].as_str().unwrap(), "--activation-code", v["ActivationCode"].as_str().unwrap()])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stderr).contains("ActivationCountExceeded"), "{out:?}");
}

#[test]
fn credentials_rotate_without_downtime_and_the_old_one_dies() {
    let hub = Hub::start();
    let mut a = hub.agent();
    let id = a.instance_id();
    hub.wait_online(&id);
    let ident = a.state_dir().join("identity.json");
    let old = std::fs::read_to_string(&ident).unwrap();
    let v = hub.call("RotateInstanceCredential", &[("InstanceId.1", &id)]).unwrap();
    assert_eq!(v["RotatedInstances"]["InstanceId"][0], id.as_str());
    wait_until("new token stored", Duration::from_secs(20), || (std::fs::read_to_string(&ident).ok()? != old).then_some(()));
    // The session in progress was never interrupted.
    let inv = hub.run("echo still-here", &[&id], &[]);
    assert_eq!(harness::output_of(&hub.wait_final(&inv, Duration::from_secs(30))[0]), b"still-here\n");
    // The same agent process reconnects with the new token after losing
    // the hub (it once kept the old one in memory and was locked out).
    let mut hub = hub;
    hub.restart();
    hub.wait_online(&id);
    assert!(!a.log().contains("InvalidCredential"), "{}", a.log());
    // A restarted agent uses the new token.
    a.restart();
    hub.wait_online(&id);
    // The old token is refused: an agent holding it exits with the reason.
    let stale = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(stale.path().join("state")).unwrap();
    std::fs::write(stale.path().join("state/identity.json"), &old).unwrap();
    let out = agent_bin()
        .args(["run", "--hub", &hub.url, "--ca-file", hub.ca.to_str().unwrap(), "--state-dir"])
        .arg(stale.path().join("state"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("InvalidCredential"), "{out:?}");
}

/// A client CA and one client certificate signed by it, for mTLS tests.
fn client_pki(dir: &std::path::Path) -> (std::path::PathBuf, std::path::PathBuf, std::path::PathBuf) {
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let issuer = rcgen::Issuer::new(ca_params, ca_key);
    let mut params = rcgen::CertificateParams::new(vec!["agent-1".to_string()]).unwrap();
    params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = params.signed_by(&key, &issuer).unwrap();
    let paths = (dir.join("client-ca.pem"), dir.join("client.pem"), dir.join("client-key.pem"));
    std::fs::write(&paths.0, ca.pem()).unwrap();
    std::fs::write(&paths.1, cert.pem()).unwrap();
    std::fs::write(&paths.2, key.serialize_pem()).unwrap();
    paths
}

#[test]
fn mtls_agents_need_a_client_certificate_api_callers_do_not() {
    let dir = tempfile::tempdir().unwrap();
    let (client_ca, cert, key) = client_pki(dir.path());
    let hub = Hub::start_with(&["--agent-client-ca", client_ca.to_str().unwrap()]);
    let v = hub.call("CreateActivation", &[("InstanceCount", "2")]).unwrap(); // API: no client cert needed
    let (act, code) = (v["ActivationId"].as_str().unwrap(), v["ActivationCode"].as_str().unwrap());
    let run_agent = |state: &std::path::Path, with_cert: bool| {
        let mut c = agent_bin();
        c.args(["register", "--hub", &hub.url, "--ca-file", hub.ca.to_str().unwrap(), "--state-dir"]).arg(state);
        c.args(["--activation-id", act, "--activation-code", code]);
        if with_cert {
            c.arg("--client-cert").arg(&cert).arg("--client-key").arg(&key);
        }
        c.output().unwrap()
    };
    let out = run_agent(&dir.path().join("no-cert"), false);
    assert!(!out.status.success(), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("403"), "{out:?}");
    let out = run_agent(&dir.path().join("with-cert"), true);
    assert!(out.status.success(), "{out:?}");
}

#[test]
fn activation_ip_range_is_enforced() {
    let hub = Hub::start();
    let v = hub.call("CreateActivation", &[("InstanceCount", "1"), ("IpAddressRange", "10.0.0.0/8")]).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let out = agent_bin()
        .args(["register", "--hub", &hub.url, "--ca-file", hub.ca.to_str().unwrap(), "--state-dir"])
        .arg(dir.path().join("s"))
        .args(["--activation-id", v["ActivationId"].as_str().unwrap(), "--activation-code", v["ActivationCode"].as_str().unwrap()])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("IpNotAllowed"), "{out:?}");
    let e = hub.call("CreateActivation", &[("IpAddressRange", "not-an-ip")]).unwrap_err().to_string();
    assert!(e.contains("InvalidParameter.IpAddressRange"), "{e}");
    let e = hub.call("CreateActivation", &[("InstanceCount", "1001")]).unwrap_err().to_string();
    assert!(e.contains("InvalidParameter.InstanceCount") && e.contains("1..=1000"), "{e}");
}

/// A one-shot run costs the agent two journal syncs (issue #21): its
/// acceptance, start and `Running` report share one, its final report has
/// the other (three before: the start had its own). Counted by the agent
/// itself (`journal_syncs` in its status); the status tick's sync of the
/// last acknowledgements may add one or two.
#[test]
fn a_one_shot_run_costs_two_journal_syncs() {
    let hub = Hub::start();
    let a = hub.agent();
    let id = a.instance_id();
    hub.wait_online(&id);
    let figures = || {
        let out = agent_bin().args(["status", "--json", "--state-dir"]).arg(a.state_dir()).output().ok()?;
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
        Some(v["figures"].clone())
    };
    let before = wait_until("status written", Duration::from_secs(20), || figures().filter(|f| f["connections"] == 1));
    const RUNS: u64 = 10;
    for i in 0..RUNS {
        let inv = hub.run(&format!("echo {i}"), &[&id], &[]);
        hub.wait_final(&inv, Duration::from_secs(30));
    }
    let after = wait_until("figures after the runs", Duration::from_secs(30), || {
        figures().filter(|f| f["runs_finished"] == RUNS && f["reports_acked"].as_u64().is_some_and(|n| n >= RUNS))
    });
    let syncs = after["journal_syncs"].as_u64().unwrap() - before["journal_syncs"].as_u64().unwrap();
    assert!((RUNS..=2 * RUNS + 2).contains(&syncs), "{syncs} journal syncs for {RUNS} runs: {before} → {after}");
}
