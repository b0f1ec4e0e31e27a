//! Policy checks on the shipped systemd units. `systemd-analyze verify`
//! (.ci/packaging.sh) proves they parse; these tests pin the decisions that
//! verify cannot see: the agent's notify/watchdog/KillMode/OOM contract and
//! the hub's sandbox, so an edit that silently weakens either fails here.

use std::collections::BTreeMap;
use std::path::Path;

/// Directives per section; a key given twice keeps every value in order
/// (systemd appends list settings such as SystemCallFilter=).
type Unit = BTreeMap<String, BTreeMap<String, Vec<String>>>;

fn load(name: &str) -> Unit {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("systemd").join(name);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    let mut unit = Unit::new();
    let mut section = String::new();
    for (no, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if let Some(s) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            section = s.to_string();
            continue;
        }
        let (k, v) = line.split_once('=').unwrap_or_else(|| panic!("{name}:{}: not key=value: {line}", no + 1));
        assert!(!section.is_empty(), "{name}:{}: directive outside a section", no + 1);
        unit.entry(section.clone()).or_default().entry(k.trim().to_string()).or_default().push(v.trim().to_string());
    }
    unit
}

/// The last value of `key` in `[Service]` (systemd: the last assignment wins).
fn service<'a>(unit: &'a Unit, key: &str) -> Option<&'a str> {
    unit.get("Service")?.get(key)?.last().map(String::as_str)
}

fn expect(unit: &Unit, key: &str, want: &str) {
    assert_eq!(service(unit, key), Some(want), "[Service] {key}");
}

/// `NNNM` as bytes.
fn mebibytes(v: &str) -> u64 {
    v.strip_suffix('M').and_then(|n| n.parse::<u64>().ok()).unwrap_or_else(|| panic!("{v} is not NNNM")) << 20
}

#[test]
fn agent_unit_limits_the_agent_alone_above_its_own_ceilings() {
    use deckhand::agent::selfcheck;
    let u = load("deckhand-agent.service");
    let max = mebibytes(service(&u, "MemoryMax").expect("MemoryMax="));
    let high = mebibytes(service(&u, "MemoryHigh").expect("MemoryHigh="));
    let low = mebibytes(service(&u, "MemoryLow").expect("MemoryLow="));
    let own = selfcheck::Limits::default().memory_max_bytes;
    // The agent restarts itself (gracefully, runs kept) before the kernel
    // throttles or kills it, and its idle ~8 MiB is protected from reclaim.
    assert!(low >= 16 << 20 && low < own && own < high && high < max, "low {low} own {own} high {high} max {max}");
    let quota: u32 = service(&u, "CPUQuota").and_then(|q| q.strip_suffix('%')).and_then(|q| q.parse().ok()).expect("CPUQuota=N%");
    assert!(quota > selfcheck::DEFAULT_CPU_MAX_PERCENT, "CPUQuota={quota}% is not above the agent's own ceiling");
    let weight: u32 = service(&u, "CPUWeight").and_then(|w| w.parse().ok()).expect("CPUWeight=");
    assert!(weight > 100, "the agent must win CPU over the runs slice (default weight 100)");
    // Self-update: the previous binary guards each start after a swap.
    let pre = service(&u, "ExecStartPre").expect("ExecStartPre=");
    assert!(
        pre.starts_with('-') && pre.contains("deckhand-agent.previous") && pre.contains("__update-guard /usr/bin/deckhand-agent"),
        "{pre}"
    );
    // The slice scripts go to is the one the agent uses.
    let text = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("systemd/deckhand-agent.service")).unwrap();
    assert!(text.contains(deckhand::exec::scope::DEFAULT_SLICE));
}

#[test]
fn agent_unit_is_notify_with_watchdog_and_spares_scripts() {
    let u = load("deckhand-agent.service");
    expect(&u, "Type", "notify");
    expect(&u, "Restart", "always");
    // Upgrades and restarts must not kill running scripts (docs/operations.md).
    expect(&u, "KillMode", "process");
    expect(&u, "StateDirectory", "deckhand/agent");
    expect(&u, "StateDirectoryMode", "0700");
    let watchdog: u64 = service(&u, "WatchdogSec").expect("WatchdogSec is set").parse().expect("WatchdogSec is plain seconds");
    assert!((10..=300).contains(&watchdog), "WatchdogSec {watchdog} outside 10..=300 s");
    let oom: i32 = service(&u, "OOMScoreAdjust").expect("OOMScoreAdjust is set").parse().unwrap();
    assert!((-999..0).contains(&oom), "agent OOMScoreAdjust {oom} must be negative, not -1000");
    // Root on purpose: scripts run as any user.
    assert_eq!(service(&u, "DynamicUser"), None, "the agent must run as root");
    assert_eq!(service(&u, "User"), None, "the agent must run as root");
    let exec = service(&u, "ExecStart").expect("ExecStart");
    assert!(exec.starts_with("/usr/bin/deckhand-agent ") && exec.ends_with(" run"), "{exec}");
    assert!(exec.contains("/etc/deckhand/agent.toml"), "ExecStart names the config: {exec}");
    expect(&u, "EnvironmentFile", "-/etc/deckhand/agent.env");
    // Scripts inherit the agent's umask: it must be the conventional one.
    expect(&u, "UMask", "0022");
    assert_eq!(u["Install"]["WantedBy"], ["multi-user.target"]);
}

#[test]
fn hub_unit_is_sandboxed_without_capabilities() {
    let u = load("deckhand-hub.service");
    expect(&u, "Type", "notify");
    expect(&u, "Restart", "on-failure");
    expect(&u, "DynamicUser", "yes");
    expect(&u, "StateDirectory", "deckhand/hub");
    for (key, want) in [
        ("ProtectSystem", "strict"),
        ("ProtectHome", "yes"),
        ("PrivateTmp", "yes"),
        ("PrivateDevices", "yes"),
        ("NoNewPrivileges", "yes"),
        ("ProtectKernelTunables", "yes"),
        ("ProtectKernelModules", "yes"),
        ("ProtectKernelLogs", "yes"),
        ("ProtectControlGroups", "yes"),
        ("RestrictNamespaces", "yes"),
        ("LockPersonality", "yes"),
        ("MemoryDenyWriteExecute", "yes"),
        ("RestrictAddressFamilies", "AF_INET AF_INET6 AF_UNIX"),
        // Empty: no capabilities at all; the default port 7070 needs none.
        ("CapabilityBoundingSet", ""),
        ("AmbientCapabilities", ""),
    ] {
        expect(&u, key, want);
    }
    let filters = &u["Service"]["SystemCallFilter"];
    assert_eq!(filters.first().map(String::as_str), Some("@system-service"), "{filters:?}");
    let exec = service(&u, "ExecStart").expect("ExecStart");
    assert!(exec.starts_with("/usr/bin/deckhand-hub "), "{exec}");
    assert!(exec.contains("/var/lib/deckhand/hub"), "data dir is the StateDirectory: {exec}");
    expect(&u, "EnvironmentFile", "-/etc/deckhand/hub.env");
}

#[test]
fn shipped_config_examples_are_commented_out() {
    // The packaged conffiles must not pin a value an operator did not choose:
    // every non-blank line is a comment.
    for name in ["agent.toml", "hub.toml"] {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("packaging").join(name);
        let text = std::fs::read_to_string(&path).unwrap();
        for (no, line) in text.lines().enumerate() {
            let line = line.trim();
            assert!(line.is_empty() || line.starts_with('#'), "{name}:{}: {line}", no + 1);
        }
    }
}
