//! Hostile input end to end (issue #14): a real hub over real TLS on
//! 127.0.0.1, real agents, and a "rogue agent" that is a real registered
//! WebSocket client speaking the protocol with bad intent. Each test names
//! the finding it guards; each failed on the main of 2026-11-24.

#[path = "support/harness.rs"]
mod harness;

use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine;
use deckhand::agent::transport::{self, HubUrl, Ws};
use deckhand::lifecycle::InvocationStatus;
use deckhand::protocol::{self, AgentMsg, HostFacts, HubMsg, PROTOCOL_VERSION, RecordReport};
use futures_util::{SinkExt, StreamExt};
use harness::{Hub, output_of, wait_until};
use tokio_tungstenite::tungstenite::Message;

const WAIT: Duration = Duration::from_secs(30);
const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

fn rss_kib(pid: u32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    s.lines().find_map(|l| l.strip_prefix("VmRSS:")).and_then(|v| v.split_whitespace().next()?.parse().ok()).unwrap_or(0)
}

fn tls(hub: &Hub) -> Arc<rustls::ClientConfig> {
    deckhand::tls::client_config(Some(&hub.ca)).expect("client tls")
}

async fn dial(hub: &Hub) -> Ws {
    transport::dial(&HubUrl::parse(&hub.url).unwrap(), &tls(hub), false).await.expect("dial")
}

async fn send(ws: &mut Ws, m: &AgentMsg) {
    ws.send(Message::Text(protocol::encode(m).expect("encode").into())).await.expect("send");
}

/// Next hub message, or None when the hub closed the connection.
async fn recv(ws: &mut Ws) -> Option<HubMsg> {
    loop {
        match tokio::time::timeout(WAIT, ws.next()).await.expect("hub answers in time") {
            Some(Ok(Message::Text(t))) => return Some(protocol::decode(t.as_str()).expect("hub frame")),
            Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return None,
            Some(Ok(_)) => {}
        }
    }
}

/// A registered agent under the test's control: (socket, instance id).
async fn rogue(hub: &Hub) -> (Ws, String) {
    let v = hub.call("CreateActivation", &[("InstanceCount", "1")]).unwrap();
    let (id, code) = (v["ActivationId"].as_str().unwrap().to_string(), v["ActivationCode"].as_str().unwrap().to_string());
    let mut ws = dial(hub).await;
    let facts = HostFacts { hostname: "rogue".into(), os_type: "linux".into(), agent_version: "rogue".into(), ..Default::default() };
    send(&mut ws, &AgentMsg::Register { protocol: PROTOCOL_VERSION, activation_id: id, activation_code: code, facts: facts.clone() }).await;
    let Some(HubMsg::Registered { instance_id, token }) = recv(&mut ws).await else { panic!("register") };
    send(&mut ws, &AgentMsg::Hello { protocol: PROTOCOL_VERSION, instance_id: instance_id.clone(), token, facts }).await;
    assert!(matches!(recv(&mut ws).await, Some(HubMsg::Welcome { .. })));
    (ws, instance_id)
}

fn report(invoke_id: &str, seq: u32, output: &[u8], dropped: u64) -> RecordReport {
    RecordReport {
        invoke_id: invoke_id.into(),
        record_seq: seq,
        status: InvocationStatus::Success,
        exit_code: Some(0),
        output_b64: B64.encode(output),
        dropped,
        error_code: None,
        error_info: String::new(),
        start_time: String::new(),
        finish_time: String::new(),
    }
}

/// Finding 1: multi-byte parameter names and `{{…}}` aborted the hub and
/// the agent; values with spaces were refused although Cloud Assistant
/// splices them.
#[test]
fn multibyte_parameters_neither_crash_nor_mislead() {
    let hub = Hub::start();
    let a = hub.agent();
    let ia = a.instance_id();
    hub.wait_online(&ia);
    // `{{abcdé}}` is not a parameter name: literal, the run works.
    let id = hub.run("echo '{{abcdé}}' {{x}}", &[&ia], &[("EnableParameter", "true"), ("Parameters", r#"{"x":"1"}"#)]);
    let r = &hub.wait_final(&id, WAIT)[0];
    assert_eq!(String::from_utf8(output_of(r)).unwrap(), "{{abcdé}} 1\n");
    // A saved command with it: DescribeCommands keeps answering.
    let c = hub
        .call(
            "CreateCommand",
            &[
                ("Name", "mb"),
                ("Type", "RunShellScript"),
                ("CommandContent", &B64.encode("echo {{abcdé}} {{ é }}")),
                ("EnableParameter", "true"),
            ],
        )
        .unwrap();
    for _ in 0..2 {
        let v = hub.call("DescribeCommands", &[("CommandId", c["CommandId"].as_str().unwrap())]).unwrap();
        assert_eq!(v["TotalCount"], 1, "{v}");
    }
    // A multi-byte parameter name is refused by the hub, naming the field.
    let e = hub
        .call(
            "RunCommand",
            &[
                ("Type", "RunShellScript"),
                ("CommandContent", "echo hi"),
                ("InstanceId.1", &ia),
                ("EnableParameter", "true"),
                ("Parameters", r#"{"abcdé":"1"}"#),
            ],
        )
        .unwrap_err()
        .to_string();
    assert!(e.contains("InvalidParameter") && e.contains("Parameters"), "{e}");
    // Values are spliced as Cloud Assistant does.
    let id = hub.run("echo {{greeting}}", &[&ia], &[("EnableParameter", "true"), ("Parameters", r#"{"greeting":"hello world"}"#)]);
    let r = &hub.wait_final(&id, WAIT)[0];
    assert_eq!(String::from_utf8(output_of(r)).unwrap(), "hello world\n");
    // The agent survived everything above and still runs.
    let id = hub.run("echo alive", &[&ia], &[]);
    assert_eq!(String::from_utf8(output_of(&hub.wait_final(&id, WAIT)[0])).unwrap(), "alive\n");
    assert!(hub.call("DescribeInvocations", &[]).is_ok(), "hub alive");
}

/// The strict parameter value rule, as a hub setting, refuses shell text.
#[test]
fn strict_parameter_values_are_an_operator_setting() {
    let hub = Hub::start_with(&["--parameter-values", "strict"]);
    let a = hub.agent();
    let ia = a.instance_id();
    hub.wait_online(&ia);
    let e = hub
        .call(
            "RunCommand",
            &[
                ("Type", "RunShellScript"),
                ("CommandContent", "echo {{v}}"),
                ("InstanceId.1", &ia),
                ("EnableParameter", "true"),
                ("Parameters", r#"{"v":"a b;reboot"}"#),
            ],
        )
        .unwrap_err()
        .to_string();
    assert!(e.contains("InvalidParameter.Parameters") || (e.contains("InvalidParameter") && e.contains("strict")), "{e}");
    let id = hub.run("echo {{v}}", &[&ia], &[("EnableParameter", "true"), ("Parameters", r#"{"v":"safe-1.2"}"#)]);
    assert_eq!(String::from_utf8(output_of(&hub.wait_final(&id, WAIT)[0])).unwrap(), "safe-1.2\n");
}

/// Finding 2: garbage before hello was logged with its contents (3 GB of
/// log in 20 s) and answered with an echo.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_before_hello_is_refused_without_echo_or_log_flood() {
    let hub = Hub::start();
    let marker = "GARBAGE-MARKER-";
    let garbage = format!("{{\"type\":\"{}\"}}", marker.repeat(60_000)); // ~900 KiB
    let log_before = hub.log().len();
    for _ in 0..20 {
        let mut ws = dial(&hub).await;
        ws.send(Message::Text(garbage.clone().into())).await.unwrap();
        // One refusal, then the hub closes: the connection is not kept.
        match recv(&mut ws).await {
            Some(HubMsg::Error { code, message, fatal }) => {
                assert_eq!(code, "MalformedFrame");
                assert!(fatal && !message.contains(marker) && message.len() < 200, "{message}");
            }
            other => panic!("expected a fatal MalformedFrame, got {other:?}"),
        }
        assert!(recv(&mut ws).await.is_none(), "connection closed after the first malformed frame");
    }
    // Small malformed JSON too.
    let mut ws = dial(&hub).await;
    ws.send(Message::Text(format!("{{\"type\":\"hello\",\"protocol\":\"{marker}\"}}").into())).await.unwrap();
    assert!(matches!(recv(&mut ws).await, Some(HubMsg::Error { fatal: true, .. })));
    let log = hub.log();
    assert!(!log.contains(marker), "hub log quotes the payload");
    assert!(log.len() - log_before < 64 * 1024, "log grew by {} bytes", log.len() - log_before);
    assert!(hub.call("DescribeInvocations", &[]).is_ok());
}

/// Findings 3 and 4: a registered agent flooding output for invocations
/// that are not its own grew hub memory and hid everyone's live output; a
/// rogue report stored 700 KiB, `Dropped: -1` and 200 records.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rogue_agent_cannot_flood_live_output_or_oversize_reports() {
    let hub = Hub::start();
    let a = hub.agent();
    let ia = a.instance_id();
    hub.wait_online(&ia);
    let (mut ws, rogue_id) = rogue(&hub).await;
    // A real run in progress whose live output must stay visible.
    let long = hub.run("echo live-marker; sleep 30", &[&ia], &[]);
    let live = || {
        let v = hub.call("DescribeInvocationResults", &[("InvokeId", long.as_str())]).ok()?;
        let r = v["Invocation"]["InvocationResults"]["InvocationResult"][0].clone();
        let out = String::from_utf8(output_of(&r)).ok()?;
        out.contains("live-marker").then_some(out)
    };
    wait_until("live output of the real run", WAIT, live);
    let pid = hub_pid(&hub);
    let rss_before = rss_kib(pid);
    let chunk = B64.encode(vec![b'R'; 24 * 1024]);
    for i in 0..5000u32 {
        let invoke_id = if i % 2 == 0 { long.clone() } else { format!("t-foreign{i}") };
        send(&mut ws, &AgentMsg::Output { invoke_id, record_seq: 0, offset: 0, data_b64: chunk.clone() }).await;
    }
    // A heartbeat round trip: every output frame before it was processed.
    send(&mut ws, &AgentMsg::Heartbeat { sent_ms: 7 }).await;
    while !matches!(recv(&mut ws).await, Some(HubMsg::HeartbeatAck { sent_ms: 7 })) {}
    let out = live().expect("the real run's live output is still shown");
    assert!(!out.contains('R'), "the rogue's bytes were shown as another instance's output");
    let grown = rss_kib(pid).saturating_sub(rss_before);
    assert!(grown < 40 * 1024, "hub RSS grew by {grown} KiB under the flood");

    // Reports: the rogue is a real target of its own invocation.
    let inv = hub.run("echo x", &[&rogue_id], &[]);
    let invoke_id = loop {
        if let Some(HubMsg::Invoke { invocation }) = recv(&mut ws).await {
            break invocation.invoke_id;
        }
    };
    send(&mut ws, &AgentMsg::InvokeAck { invoke_id: invoke_id.clone() }).await;
    let mut next = 1u64;
    for seq in 1..200u32 {
        send(&mut ws, &AgentMsg::Report { report_id: next, report: report(&invoke_id, seq, b"extra", 0) }).await;
        next += 1;
    }
    send(&mut ws, &AgentMsg::Report { report_id: next, report: report(&invoke_id, 0, &vec![b'z'; 700 * 1024], u64::MAX) }).await;
    loop {
        if let Some(HubMsg::ReportAck { report_id }) = recv(&mut ws).await
            && report_id == next
        {
            break;
        }
    }
    assert_eq!(inv, invoke_id);
    let v = hub.call("DescribeInvocationResults", &[("InvokeId", invoke_id.as_str()), ("IncludeHistory", "true")]).unwrap();
    let results = v["Invocation"]["InvocationResults"]["InvocationResult"].as_array().unwrap().clone();
    assert_eq!(results.len(), 1, "a one-shot invocation has one record: {v}");
    assert_eq!(output_of(&results[0]).len(), protocol::OUTPUT_CAP_BYTES);
    assert_eq!(results[0]["Dropped"], i64::MAX, "Dropped saturates");
    drop(a);
}

fn hub_pid(hub: &Hub) -> u32 {
    // The harness owns the child; find it by its data dir on the command line.
    let needle = hub.dir.path().to_string_lossy().to_string();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else { continue };
        let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        let cmd = String::from_utf8_lossy(&cmd);
        if cmd.contains("deckhand-hub") && cmd.contains(&needle) {
            return pid;
        }
    }
    panic!("hub process not found");
}

/// The hub's listening address (on 127.0.0.1).
fn hub_addr(hub: &Hub) -> std::net::SocketAddr {
    let port: u16 = hub.url.rsplit(':').next().unwrap().parse().unwrap();
    format!("127.0.0.1:{port}").parse().unwrap()
}

/// A TCP socket bound to another loopback address than the tests' own, so
/// per-address caps can be filled without touching 127.0.0.1's.
fn socket_from(ip: &str) -> tokio::net::TcpSocket {
    let sock = tokio::net::TcpSocket::new_v4().unwrap();
    sock.bind(format!("{ip}:0").parse().unwrap()).unwrap();
    sock
}

/// Finding 5: a TLS client sending one header byte every 2 s was never
/// closed, and a few hundred of them starved the API.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_headers_are_cut_and_idle_connections_are_capped_per_address() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let hub = Hub::start();
    let addr = hub_addr(&hub);
    let connector = tokio_rustls::TlsConnector::from(tls(&hub));
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut s = connector.connect(rustls_pki_types::ServerName::try_from("localhost").unwrap(), tcp).await.expect("handshake");
    let started = Instant::now();
    let mut closed = false;
    for b in b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa" {
        if s.write_all(&[*b]).await.is_err() || s.flush().await.is_err() {
            closed = true;
            break;
        }
        let mut buf = [0u8; 64];
        match tokio::time::timeout(Duration::from_secs(2), s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => {
                closed = true;
                break;
            }
            _ => {}
        }
    }
    let took = started.elapsed();
    assert!(closed, "a trickling request was never cut");
    assert!(took < deckhand::hub::HEADER_READ_TIMEOUT + Duration::from_secs(6), "cut after {took:?}");

    // Idle connections from one address (127.0.0.2) are capped; the API,
    // reached from 127.0.0.1, keeps answering.
    let cap = deckhand::hub::edge::MAX_PENDING_PER_ADDR;
    let mut held = Vec::new();
    for _ in 0..cap {
        held.push(socket_from("127.0.0.2").connect(addr).await.unwrap());
    }
    let mut extra = socket_from("127.0.0.2").connect(addr).await.unwrap();
    let mut buf = [0u8; 1];
    let r = tokio::time::timeout(Duration::from_secs(5), extra.read(&mut buf)).await;
    assert!(matches!(r, Ok(Ok(0)) | Ok(Err(_))), "connection past the cap was not closed: {r:?}");
    let t = Instant::now();
    let hub2 = &hub;
    tokio::task::block_in_place(|| assert!(hub2.call("DescribeInvocations", &[]).is_ok()));
    assert!(t.elapsed() < Duration::from_secs(5));
    drop(held);
}

/// Finding 9: `--data-dir` was 0755 and hub.db 0644.
#[test]
fn hub_data_is_private() {
    use std::os::unix::fs::PermissionsExt;
    let hub = Hub::start();
    let data = hub.dir.path().join("data");
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&data), 0o700);
    assert_eq!(mode(&data.join("hub.db")), 0o600);
    for side in ["hub.db-wal", "hub.db-shm"] {
        if data.join(side).exists() {
            assert_eq!(mode(&data.join(side)), 0o600, "{side}");
        }
    }
}

/// An agent WebSocket that never says hello stays pending for its address
/// until it does (or its hello timeout ends it): before, the address's
/// slot went back once the upgrade request's headers were in, so one
/// address could hold any number of unauthenticated WebSockets, each able
/// to make the hub buffer a first frame of up to the 1 MiB message bound.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_agent_websockets_stay_pending_until_their_hello() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let hub = Hub::start();
    let addr = hub_addr(&hub);
    let connector = tokio_rustls::TlsConnector::from(tls(&hub));
    let upgrade = format!(
        "GET {} HTTP/1.1\r\nHost: localhost\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
        protocol::WS_PATH
    );
    let cap = deckhand::hub::edge::MAX_PENDING_PER_ADDR;
    let mut held = Vec::new();
    for n in 0..cap {
        let tcp = socket_from("127.0.0.3").connect(addr).await.unwrap();
        let mut s = connector.connect(rustls_pki_types::ServerName::try_from("localhost").unwrap(), tcp).await.expect("handshake");
        s.write_all(upgrade.as_bytes()).await.unwrap();
        let mut head = [0u8; 12];
        s.read_exact(&mut head).await.unwrap_or_else(|e| panic!("upgrade {n}: {e}"));
        assert_eq!(&head, b"HTTP/1.1 101", "upgrade {n}");
        held.push(s);
    }
    // All upgraded, none said hello: the address is full.
    let mut extra = socket_from("127.0.0.3").connect(addr).await.unwrap();
    let mut buf = [0u8; 1];
    let r = tokio::time::timeout(Duration::from_secs(5), extra.read(&mut buf)).await;
    assert!(matches!(r, Ok(Ok(0)) | Ok(Err(_))), "a connection past the cap of silent WebSockets was not closed: {r:?}");
    // Another address is not affected: a real agent connects from 127.0.0.1.
    let (mut ws, _) = rogue(&hub).await;
    send(&mut ws, &AgentMsg::Heartbeat { sent_ms: 1 }).await;
    // Once they are gone, the address gets slots back.
    drop(held);
    wait_until("slots given back", WAIT, || {
        let ok = tokio::task::block_in_place(|| {
            tokio::runtime::Handle::current().block_on(async {
                let tcp = socket_from("127.0.0.3").connect(addr).await.ok()?;
                connector.connect(rustls_pki_types::ServerName::try_from("localhost").unwrap(), tcp).await.ok()
            })
        });
        ok.map(|_| ())
    });
}
