//! Self-limits (issue #20): the agent reads its real usage from /proc and
//! `deckhand-agent status` shows it next to the configured ceilings.

#[path = "support/harness.rs"]
mod harness;

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use harness::{Hub, wait_until};

#[test]
fn status_shows_the_agents_own_usage_and_ceilings() {
    let hub = Hub::start();
    let mut a = hub.agent_unstarted(&hub.url, PathBuf::from(env!("CARGO_BIN_EXE_deckhand-agent")));
    let cfg = a.dir.path().join("agent.toml");
    std::fs::write(&cfg, "memory_max_mib = 96\ncpu_max_percent = 30\n").unwrap();
    a.extra = vec!["--config".into(), cfg.display().to_string()];
    a.spawn();
    hub.wait_online(&a.instance_id());
    let status = || {
        let out = Command::new(env!("CARGO_BIN_EXE_deckhand-agent"))
            .arg("status")
            .arg("--state-dir")
            .arg(a.state_dir())
            .arg("--json")
            .output()
            .unwrap();
        serde_json::from_slice::<serde_json::Value>(&out.stdout).ok()
    };
    // The first check runs at start; the CPU figure needs a second one.
    let s = wait_until("self-check figures", Duration::from_secs(30), || status().filter(|s| s["rss_bytes"].as_u64() > Some(0)));
    assert_eq!(s["memory_max_bytes"], 96 << 20, "{s}");
    assert_eq!(s["cpu_max_percent"], 30, "{s}");
    let rss = s["rss_bytes"].as_u64().unwrap();
    // The real figure of a real process: more than a MiB, less than the ceiling.
    assert!(rss > 1 << 20 && rss < 96 << 20, "{s}");
    let out = Command::new(env!("CARGO_BIN_EXE_deckhand-agent")).arg("status").arg("--state-dir").arg(a.state_dir()).output().unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    let line = text.lines().find(|l| l.starts_with("self:")).unwrap_or_else(|| panic!("{text}"));
    assert!(line.contains("MiB of 96 MiB") && line.contains("of 30%"), "{line}");
}
