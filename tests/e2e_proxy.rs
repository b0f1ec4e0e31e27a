//! Agents behind an HTTP CONNECT proxy (issue #20): a real proxy process
//! on 127.0.0.1 (tests/support/connect_proxy.rs), real TLS to the hub
//! inside the tunnel, registration, runs and reports through it; a wrong
//! proxy fails with one clear log line per attempt and backs off.

#[path = "support/connect_proxy.rs"]
mod connect_proxy;
#[path = "support/harness.rs"]
mod harness;

use std::path::PathBuf;
use std::time::Duration;

use connect_proxy::{BODY_MARKER, ConnectProxy};
use harness::{Hub, output_of, wait_until};

const WAIT: Duration = Duration::from_secs(30);

fn agent_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_deckhand-agent"))
}

fn hub_authority(hub: &Hub) -> String {
    hub.url.trim_start_matches("https://").trim_end_matches('/').to_string()
}

#[tokio::test(flavor = "multi_thread")]
async fn agents_behind_a_connect_proxy_register_run_and_report() {
    let proxy = ConnectProxy::start(Some("fleet:s3cret")).await;
    let hub = Hub::start();
    let url = format!("http://fleet:s3cret@{}", proxy.addr());

    // Explicit setting, passed on to scripts.
    let mut a = hub.agent_unstarted(&hub.url, agent_bin());
    a.extra = vec!["--proxy".into(), url.clone(), "--pass-proxy-env".into()];
    a.spawn();
    // From the environment (https_proxy), not passed on.
    let mut b = hub.agent_unstarted(&hub.url, agent_bin());
    b.env = vec![("https_proxy".into(), url.clone())];
    b.spawn();
    let (ia, ib) = (a.instance_id(), b.instance_id());
    hub.wait_online(&ia);
    hub.wait_online(&ib);

    let id = hub.run("echo \"proxy=${https_proxy:-none}\"", &[&ia, &ib], &[]);
    let results = hub.wait_final(&id, WAIT);
    for r in &results {
        assert_eq!(r["InvocationStatus"], "Success", "{r}");
        let out = String::from_utf8(output_of(r)).unwrap();
        let want = if r["InstanceId"] == ia.as_str() { format!("proxy={url}\n") } else { "proxy=none\n".to_string() };
        assert_eq!(out, want, "{r}");
    }
    // Every connection went through the tunnel, to the hub's own address.
    let tunnels = proxy.tunnels();
    assert!(tunnels.len() >= 2, "{tunnels:?}");
    assert!(tunnels.iter().all(|t| *t == hub_authority(&hub)), "{tunnels:?} vs {}", hub.url);
    assert_eq!(proxy.refused(), 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_wrong_proxy_gives_one_clear_line_and_backs_off() {
    let proxy = ConnectProxy::start(Some("fleet:s3cret")).await;
    let hub = Hub::start();

    // Wrong credentials: refused by the proxy with 407.
    let mut wrong = hub.agent_unstarted(&hub.url, agent_bin());
    wrong.extra = vec!["--proxy".into(), format!("http://fleet:nope@{}", proxy.addr())];
    wrong.spawn();
    // No credentials at all.
    let mut none = hub.agent_unstarted(&hub.url, agent_bin());
    none.extra = vec!["--proxy".into(), format!("http://{}", proxy.addr())];
    none.spawn();
    // Nothing listens there.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead = closed.local_addr().unwrap();
    drop(closed);
    let mut nowhere = hub.agent_unstarted(&hub.url, agent_bin());
    nowhere.extra = vec!["--proxy".into(), format!("http://{dead}")];
    nowhere.spawn();

    let attempts = |log: &str, what: &str| log.lines().filter(|l| l.contains("hub connection failed") && l.contains(what)).count();
    let refused = format!("proxy http://<credentials>@{} answered CONNECT with HTTP 407", proxy.addr());
    for (agent, what) in [(&wrong, refused.as_str()), (&none, &format!("proxy http://{} answered CONNECT with HTTP 407", proxy.addr()))] {
        // Several attempts, each one line naming the proxy and the status,
        // spaced by the back-off.
        let log = wait_until("repeated refused attempts", WAIT, || {
            let log = agent.log();
            (attempts(&log, what) >= 3).then_some(log)
        });
        assert!(log.contains("retry_in_ms"), "{log}");
        assert!(!log.contains(BODY_MARKER), "the proxy's body was logged:\n{log}");
        assert!(!log.contains("nope"), "the password was logged:\n{log}");
        assert!(!agent.state_dir().join("identity.json").exists(), "registered through a refusing proxy");
    }
    let what = format!("connecting to proxy http://{dead}");
    let log = wait_until("repeated unreachable attempts", WAIT, || {
        let log = nowhere.log();
        (attempts(&log, &what) >= 3).then_some(log)
    });
    assert!(log.contains("retry_in_ms"), "{log}");
    assert!(proxy.tunnels().is_empty(), "{:?}", proxy.tunnels());
    assert!(proxy.refused() >= 6, "{}", proxy.refused());
}
