//! Bad input on the agent WebSocket: malformed frames, unknown types,
//! oversized frames, wrong protocol version, wrong credentials, and forged
//! reports. Each gets a clear error and the hub keeps serving others.

#[path = "support/harness.rs"]
mod harness;

use std::time::Duration;

use deckhand::agent::transport::{HubUrl, Ws, dial};
use deckhand::lifecycle::InvocationStatus;
use deckhand::protocol::{self, AgentMsg, HostFacts, HubMsg, RecordReport};
use futures_util::{SinkExt, StreamExt};
use harness::Hub;
use tokio_tungstenite::tungstenite::Message;

async fn connect(hub: &Hub) -> Ws {
    let tls = deckhand::tls::client_config(Some(&hub.ca)).unwrap();
    dial(&HubUrl::parse(&hub.url).unwrap(), &tls, false).await.expect("dial")
}

async fn next_msg(ws: &mut Ws) -> Option<HubMsg> {
    loop {
        match tokio::time::timeout(Duration::from_secs(10), ws.next()).await.expect("hub answered in time") {
            Some(Ok(Message::Text(t))) => return Some(protocol::decode(t.as_str()).expect("hub sends valid frames")),
            Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return None,
            Some(Ok(_)) => {}
        }
    }
}

fn identity(agent: &harness::Agent) -> (String, String) {
    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(agent.state_dir().join("identity.json")).unwrap()).unwrap();
    (v["instance_id"].as_str().unwrap().into(), v["token"].as_str().unwrap().into())
}

fn hello(id: &str, token: &str, protocol: u32) -> String {
    protocol::encode(&AgentMsg::Hello { protocol, instance_id: id.into(), token: token.into(), facts: HostFacts::default() })
        .expect("encode")
}

#[tokio::test(flavor = "multi_thread")]
async fn malformed_unknown_and_version_errors() {
    let hub = Hub::start();
    let mut agent = hub.agent();
    let (id, token) = identity(&agent);
    agent.kill();

    // Before hello a malformed frame is fatal: answered once, then closed
    // (issue #14: unauthenticated peers get nothing to loop on).
    let mut ws = connect(&hub).await;
    ws.send(Message::Text("this is not json".into())).await.unwrap();
    match next_msg(&mut ws).await {
        Some(HubMsg::Error { code, fatal, .. }) => assert!(code == "MalformedFrame" && fatal),
        other => panic!("expected MalformedFrame, got {other:?}"),
    }
    assert!(next_msg(&mut ws).await.is_none(), "closed after a malformed first frame");
    let mut ws = connect(&hub).await;
    ws.send(Message::Text(hello(&id, &token, 99).into())).await.unwrap();
    match next_msg(&mut ws).await {
        Some(HubMsg::Error { code, message, fatal }) => {
            assert_eq!(code, "UnsupportedProtocol");
            assert!(fatal && message.contains("99") && message.contains("hub speaks 1 to 2"), "{message}");
        }
        other => panic!("expected UnsupportedProtocol, got {other:?}"),
    }
    assert!(next_msg(&mut ws).await.is_none(), "connection closed after a fatal error");

    let mut ws = connect(&hub).await;
    ws.send(Message::Text(hello(&id, "wrong-token", 1).into())).await.unwrap();
    match next_msg(&mut ws).await {
        Some(HubMsg::Error { code, fatal, .. }) => assert!(code == "InvalidCredential" && fatal),
        other => panic!("expected InvalidCredential, got {other:?}"),
    }

    // Authenticated session: an unknown message type is rejected, the
    // session lives on (a heartbeat is still answered).
    let mut ws = connect(&hub).await;
    ws.send(Message::Text(hello(&id, &token, 1).into())).await.unwrap();
    assert!(matches!(next_msg(&mut ws).await, Some(HubMsg::Welcome { .. })));
    ws.send(Message::Text(r#"{"type":"self_destruct"}"#.into())).await.unwrap();
    assert!(matches!(next_msg(&mut ws).await, Some(HubMsg::Error { ref code, fatal: false, .. }) if code == "MalformedFrame"));
    ws.send(Message::Text(protocol::encode(&AgentMsg::Heartbeat { sent_ms: 7 }).expect("encode").into())).await.unwrap();
    assert!(matches!(next_msg(&mut ws).await, Some(HubMsg::HeartbeatAck { sent_ms: 7 })));

    // An oversized frame ends that connection only.
    let big = "x".repeat(protocol::MAX_FRAME_BYTES + 10);
    let _ = ws.send(Message::Text(big.into())).await;
    assert!(next_msg(&mut ws).await.is_none(), "oversized frame closes the connection");
    let b = hub.agent();
    hub.wait_online(&b.instance_id());
    let inv = hub.run("echo still-serving", &[&b.instance_id()], &[]);
    let r = &hub.wait_final(&inv, Duration::from_secs(30))[0];
    assert_eq!(harness::output_of(r), b"still-serving\n");
}

#[tokio::test(flavor = "multi_thread")]
async fn forged_report_for_another_instance_is_refused() {
    let hub = Hub::start();
    let victim = hub.agent();
    let mut attacker = hub.agent();
    let vid = victim.instance_id();
    hub.wait_online(&vid);
    let inv = hub.run("echo genuine", &[&vid], &[]);
    hub.wait_final(&inv, Duration::from_secs(30));

    let (aid, atoken) = identity(&attacker);
    attacker.kill();
    let mut ws = connect(&hub).await;
    ws.send(Message::Text(hello(&aid, &atoken, 1).into())).await.unwrap();
    assert!(matches!(next_msg(&mut ws).await, Some(HubMsg::Welcome { .. })));
    let forged = RecordReport {
        invoke_id: inv.clone(),
        record_seq: 0,
        status: InvocationStatus::Success,
        exit_code: Some(0),
        output_b64: "Zm9yZ2Vk".into(),
        dropped: 0,
        error_code: None,
        error_info: String::new(),
        start_time: String::new(),
        finish_time: String::new(),
    };
    ws.send(Message::Text(protocol::encode(&AgentMsg::Report { report_id: 1, report: forged }).expect("encode").into())).await.unwrap();
    match next_msg(&mut ws).await {
        Some(HubMsg::Error { code, .. }) => assert_eq!(code, "NotATarget"),
        other => panic!("expected NotATarget, got {other:?}"),
    }
    let r = &hub.wait_final(&inv, Duration::from_secs(5))[0];
    assert_eq!(harness::output_of(r), b"genuine\n", "stored result untouched");
}

/// A 0.1.0 agent (protocol 1) keeps working against this hub: its hello is
/// accepted and the record states it reports (`Finished`, `Stopped`) are
/// recorded as the per-instance statuses they meant. Raw frames stand in
/// for the old binary here; tests/upgrade.rs runs the real one when built.
#[tokio::test(flavor = "multi_thread")]
async fn protocol_1_agent_reports_are_read_as_meant() {
    let hub = Hub::start();
    let mut agent = hub.agent();
    let (id, token) = identity(&agent);
    agent.kill();
    let inv = hub.run("echo never-run-here", &[&id], &[]);
    let mut ws = connect(&hub).await;
    ws.send(Message::Text(hello(&id, &token, 1).into())).await.unwrap();
    assert!(matches!(next_msg(&mut ws).await, Some(HubMsg::Welcome { .. })));
    match next_msg(&mut ws).await {
        Some(HubMsg::Invoke { invocation }) => assert_eq!(invocation.invoke_id, inv),
        other => panic!("expected the owed invocation, got {other:?}"),
    }
    let old = format!(
        r#"{{"type":"report","report_id":1,"report":{{"invoke_id":"{inv}","record_seq":0,"status":"Finished","exit_code":0,"output_b64":"b2xkCg==","dropped":0,"error_code":"","error_info":"","start_time":"2026-11-24T00:00:00Z","finish_time":"2026-11-24T00:00:01Z"}}}}"#
    );
    ws.send(Message::Text(old.into())).await.unwrap();
    assert!(matches!(next_msg(&mut ws).await, Some(HubMsg::ReportAck { report_id: 1 })));
    let r = &hub.wait_final(&inv, Duration::from_secs(10))[0];
    assert_eq!((r["InvocationStatus"].as_str(), r["InvokeRecordStatus"].as_str()), (Some("Success"), Some("Finished")), "{r}");
    assert_eq!(harness::output_of(r), b"old\n");

    // A report whose output is not base64 is refused, not stored empty.
    let inv2 = hub.run("echo x", &[&id], &[]);
    assert!(matches!(next_msg(&mut ws).await, Some(HubMsg::Invoke { .. })));
    let bad = format!(
        r#"{{"type":"report","report_id":2,"report":{{"invoke_id":"{inv2}","record_seq":0,"status":"Success","exit_code":0,"output_b64":"%%%","start_time":"2026-11-24T00:00:00Z"}}}}"#
    );
    ws.send(Message::Text(bad.into())).await.unwrap();
    match next_msg(&mut ws).await {
        Some(HubMsg::Error { code, message, fatal: false }) => {
            assert!(code == "InvalidReport" && message.contains("output_b64"), "{code}: {message}")
        }
        other => panic!("expected InvalidReport, got {other:?}"),
    }
    assert!(matches!(next_msg(&mut ws).await, Some(HubMsg::ReportAck { report_id: 2 })));
    let v = hub.call("DescribeInvocationResults", &[("InvokeId", &inv2)]).unwrap();
    assert_eq!(v["Invocation"]["InvocationResults"]["InvocationResult"][0]["InvocationStatus"], "Pending", "{v}");
}

/// Reports sent back to back are committed together and their
/// acknowledgements leave together (one flush, issue #21): each is still
/// answered exactly once, in the order the reports were sent, and every
/// one is stored.
#[tokio::test(flavor = "multi_thread")]
async fn reports_sent_back_to_back_are_each_acknowledged_in_order() {
    let hub = Hub::start();
    let mut agent = hub.agent();
    let (id, token) = identity(&agent);
    agent.kill();
    let invs: Vec<String> = (0..3).map(|i| hub.run(&format!("echo burst-{i}"), &[&id], &[])).collect();
    let mut ws = connect(&hub).await;
    ws.send(Message::Text(hello(&id, &token, 2).into())).await.unwrap();
    assert!(matches!(next_msg(&mut ws).await, Some(HubMsg::Welcome { .. })));
    let mut owed = Vec::new();
    while owed.len() < invs.len() {
        match next_msg(&mut ws).await {
            Some(HubMsg::Invoke { invocation }) => owed.push(invocation.invoke_id),
            other => panic!("expected the owed invocations, got {other:?}"),
        }
    }
    owed.sort();
    let mut sorted = invs.clone();
    sorted.sort();
    assert_eq!(owed, sorted);
    // Acknowledgement, Running and the result of each, all in one write.
    let report = |inv: &str, status, out: &str| RecordReport {
        invoke_id: inv.into(),
        record_seq: 0,
        status,
        exit_code: status.is_final().then_some(0),
        output_b64: out.into(),
        dropped: 0,
        error_code: None,
        error_info: String::new(),
        start_time: "2026-11-25T00:00:00Z".into(),
        finish_time: if status.is_final() { "2026-11-25T00:00:01Z".into() } else { String::new() },
    };
    let mut report_id = 0;
    for (i, inv) in invs.iter().enumerate() {
        ws.feed(Message::Text(protocol::encode(&AgentMsg::InvokeAck { invoke_id: inv.clone() }).expect("encode").into())).await.unwrap();
        for (status, out) in [(InvocationStatus::Running, String::new()), (InvocationStatus::Success, base64_of(&format!("burst-{i}\n")))] {
            report_id += 1;
            let m = AgentMsg::Report { report_id, report: report(inv, status, &out) };
            ws.feed(Message::Text(protocol::encode(&m).expect("encode").into())).await.unwrap();
        }
    }
    ws.flush().await.unwrap();
    let mut acked = Vec::new();
    while acked.len() < report_id as usize {
        match next_msg(&mut ws).await {
            Some(HubMsg::ReportAck { report_id }) => acked.push(report_id),
            other => panic!("expected report acknowledgements, got {other:?}"),
        }
    }
    assert_eq!(acked, (1..=report_id).collect::<Vec<_>>(), "each once, in the order sent");
    for (i, inv) in invs.iter().enumerate() {
        let r = &hub.wait_final(inv, Duration::from_secs(10))[0];
        assert_eq!(r["InvocationStatus"], "Success", "{r}");
        assert_eq!(harness::output_of(r), format!("burst-{i}\n").as_bytes());
    }
}

fn base64_of(s: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(s)
}
