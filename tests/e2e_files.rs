//! File deliveries (SendFile, issue #19) with real hub and agent processes:
//! a large file streamed in chunks survives an agent killed with SIGKILL
//! mid-write (the target holds the old file or the new one, never a torn
//! one), an agent too old for files gets a clear per-instance error, and
//! a chunk is served only to a target of its delivery.

#[path = "support/harness.rs"]
mod harness;

use std::time::Duration;

use base64::Engine;
use deckhand::agent::transport::{HubUrl, Ws, dial};
use deckhand::protocol::{self, AgentMsg, FILE_CHUNK_BYTES, HostFacts, HubMsg};
use futures_util::{SinkExt, StreamExt};
use harness::{Hub, wait_until};
use sha2::{Digest, Sha256};
use tokio_tungstenite::tungstenite::Message;

const WAIT: Duration = Duration::from_secs(120);

/// Deterministic bytes that differ from chunk to chunk.
fn content(size: usize, seed: u8) -> Vec<u8> {
    (0..size).map(|i| (i as u32).wrapping_mul(2_654_435_761).to_le_bytes()[i % 4] ^ seed).collect()
}

fn sha(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

/// Uploads `data` with PutFileContent, chunk by chunk.
fn upload(hub: &Hub, data: &[u8]) -> String {
    let digest = sha(data);
    let client = hub.client();
    for (i, chunk) in data.chunks(FILE_CHUNK_BYTES).enumerate() {
        client
            .call(
                "PutFileContent",
                &[
                    ("ContentSha256", digest.clone()),
                    ("Size", data.len().to_string()),
                    ("ChunkIndex", i.to_string()),
                    ("Content", base64::engine::general_purpose::STANDARD.encode(chunk)),
                ],
            )
            .expect("chunk uploaded");
    }
    digest
}

fn file_result(hub: &Hub, invoke_id: &str) -> serde_json::Value {
    let v = hub.call("DescribeSendFileResults", &[("InvokeId", invoke_id)]).unwrap();
    v["Invocations"]["Invocation"][0]["InvokeInstances"]["InvokeInstance"][0].clone()
}

fn wait_file_final(hub: &Hub, invoke_id: &str) -> serde_json::Value {
    wait_until("file delivery settled", WAIT, || {
        let r = file_result(hub, invoke_id);
        let st = r["InvocationStatus"].as_str().unwrap_or("");
        deckhand::lifecycle::InvocationStatus::parse(st).is_ok_and(|s| s.is_final()).then_some(r)
    })
}

#[cfg(unix)]
#[test]
fn agent_killed_mid_write_leaves_the_old_file_or_the_new_never_a_torn_one() {
    let hub = Hub::start();
    let mut a = hub.agent();
    let id = a.instance_id();
    hub.wait_online(&id);
    let dir = tempfile::tempdir().unwrap();
    let target = dir.path().join("data.bin");
    let old = b"the old file\n".to_vec();
    std::fs::write(&target, &old).unwrap();
    // 24 MiB: 512 chunks pulled one by one, long enough to be caught mid-write.
    let new = content(24 * 1024 * 1024, 7);
    let digest = upload(&hub, &new);
    let invoke_id = hub
        .call(
            "SendFile",
            &[
                ("Name", "data.bin"),
                ("TargetDir", dir.path().to_str().unwrap()),
                ("ContentSha256", &digest),
                ("Overwrite", "true"),
                ("Timeout", "600"),
                ("InstanceId.1", &id),
            ],
        )
        .unwrap()["InvokeId"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(invoke_id.starts_with("f-"), "{invoke_id}");
    // The real sign of a write in progress: the temporary file beside the
    // target has some of the content, not all of it.
    let part = dir.path().join(format!(".deckhand-{invoke_id}.part"));
    wait_until("the agent is writing the temporary file", WAIT, || {
        let len = std::fs::metadata(&part).ok()?.len();
        (len > 0 && len < new.len() as u64).then_some(())
    });
    a.kill(); // SIGKILL mid-write
    let now = std::fs::read(&target).unwrap();
    assert!(now == old || now == new, "after the kill the target is torn: {} bytes", now.len());
    a.spawn();
    let r = wait_file_final(&hub, &invoke_id);
    assert_eq!(r["InvocationStatus"], "Success", "{r}\n{}", a.log());
    assert!(std::fs::read(&target).unwrap() == new, "the delivery done again after the restart wrote the new file");
    assert!(!part.exists(), "no temporary file is left");
    assert!(a.log().contains("starting it again"), "the restarted agent did the delivery again");

    // Stopped mid-write (the same content, stored once, sent again): the
    // delivery ends Terminated and its temporary file is removed.
    let stopped = hub
        .call(
            "SendFile",
            &[
                ("Name", "stopped.bin"),
                ("TargetDir", dir.path().to_str().unwrap()),
                ("ContentSha256", &digest),
                ("Timeout", "600"),
                ("InstanceId.1", &id),
            ],
        )
        .unwrap()["InvokeId"]
        .as_str()
        .unwrap()
        .to_string();
    let part = dir.path().join(format!(".deckhand-{stopped}.part"));
    wait_until("the agent is writing the second file", WAIT, || {
        let len = std::fs::metadata(&part).ok()?.len();
        (len > 0 && len < new.len() as u64).then_some(())
    });
    hub.call("StopInvocation", &[("InvokeId", &stopped)]).unwrap();
    let r = wait_file_final(&hub, &stopped);
    assert_eq!(r["InvocationStatus"], "Terminated", "{r}");
    assert!(!part.exists(), "a stopped delivery removes its temporary file");
    assert!(!dir.path().join("stopped.bin").exists(), "a stopped delivery writes nothing");
}

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

fn send_file(hub: &Hub, id: &str, content: &str) -> String {
    hub.call("SendFile", &[("Name", "x.conf"), ("TargetDir", "/tmp/deckhand-never"), ("Content", content), ("InstanceId.1", id)]).unwrap()
        ["InvokeId"]
        .as_str()
        .unwrap()
        .to_string()
}

/// Raw frames stand in for a 0.1.0 agent (protocol 1): it is never sent a
/// file delivery it would not understand; the target settles `Invalid` /
/// `ClientNeedUpgrade`, whether owed at its hello or created while it is
/// connected. A protocol 2 session pulls chunks of its own deliveries only.
#[tokio::test(flavor = "multi_thread")]
async fn an_old_agent_gets_client_need_upgrade_and_chunks_go_only_to_targets() {
    let hub = Hub::start();
    let mut agent = hub.agent();
    let (id, token) = identity(&agent);
    agent.kill();
    let owed = send_file(&hub, &id, "owed");
    let mut ws = connect(&hub).await;
    let hello = |protocol| {
        protocol::encode(&AgentMsg::Hello { protocol, instance_id: id.clone(), token: token.clone(), facts: HostFacts::default() })
            .expect("encode")
    };
    ws.send(Message::Text(hello(1).into())).await.unwrap();
    assert!(matches!(next_msg(&mut ws).await, Some(HubMsg::Welcome { .. })));
    let r = wait_file_final(&hub, &owed);
    assert_eq!((r["InvocationStatus"].as_str(), r["ErrorCode"].as_str()), (Some("Invalid"), Some("ClientNeedUpgrade")), "{r}");
    assert_eq!(r["ErrorInfo"], "the aliyun service in the instance need upgrade");
    let live = send_file(&hub, &id, "live");
    let r = wait_file_final(&hub, &live);
    assert_eq!((r["InvocationStatus"].as_str(), r["ErrorCode"].as_str()), (Some("Invalid"), Some("ClientNeedUpgrade")), "{r}");
    // Nothing was sent to the old agent: its next frame answers a heartbeat.
    ws.send(Message::Text(protocol::encode(&AgentMsg::Heartbeat { sent_ms: 5 }).expect("encode").into())).await.unwrap();
    assert!(matches!(next_msg(&mut ws).await, Some(HubMsg::HeartbeatAck { sent_ms: 5 })), "no invocation sent to a protocol 1 agent");
    drop(ws);

    // Protocol 2: the owed delivery arrives as an invocation with its file spec.
    let other = hub.agent();
    let other_id = other.instance_id();
    hub.wait_online(&other_id);
    let theirs = send_file(&hub, &other_id, "not yours");
    let mine = send_file(&hub, &id, "mine");
    let mut ws = connect(&hub).await;
    ws.send(Message::Text(hello(2).into())).await.unwrap();
    assert!(matches!(next_msg(&mut ws).await, Some(HubMsg::Welcome { .. })));
    match next_msg(&mut ws).await {
        Some(HubMsg::Invoke { invocation }) => {
            assert_eq!(invocation.invoke_id, mine);
            let spec = invocation.file.expect("a file spec");
            assert_eq!((spec.size, spec.sha256.as_str()), (4, sha(b"mine").as_str()));
        }
        other => panic!("expected the file delivery, got {other:?}"),
    }
    let ask = |invoke_id: &str, seq| protocol::encode(&AgentMsg::FileChunkRequest { invoke_id: invoke_id.into(), seq }).expect("encode");
    ws.send(Message::Text(ask(&mine, 0).into())).await.unwrap();
    match next_msg(&mut ws).await {
        Some(HubMsg::FileChunk { invoke_id, seq: 0, data_b64, error }) => {
            assert_eq!((invoke_id.as_str(), error.as_str()), (mine.as_str(), ""));
            assert_eq!(base64::engine::general_purpose::STANDARD.decode(data_b64).unwrap(), b"mine");
        }
        other => panic!("expected the chunk, got {other:?}"),
    }
    // Another instance's delivery, a chunk beyond the content, a forged id: refused.
    for (invoke_id, seq) in [(theirs.as_str(), 0), (mine.as_str(), 1), ("f-forged\u{1}", 0)] {
        ws.send(Message::Text(ask(invoke_id, seq).into())).await.unwrap();
        match next_msg(&mut ws).await {
            Some(HubMsg::FileChunk { data_b64, error, .. }) => assert!(data_b64.is_empty() && !error.is_empty(), "{invoke_id} {seq}"),
            other => panic!("expected a refusal, got {other:?}"),
        }
    }
}

/// `deckhand send-file`: a small file goes as `Content`, a larger one is
/// uploaded in chunks and sent by digest; the exit status says whether
/// every instance succeeded, and a failure is named with its code's text.
#[test]
fn cli_send_file_small_and_large_and_reports_failures() {
    let hub = Hub::start();
    let a = hub.agent();
    let id = a.instance_id();
    hub.wait_online(&id);
    let local = tempfile::tempdir().unwrap();
    let out_dir = tempfile::tempdir().unwrap();
    let cli = |args: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_deckhand"))
            .args(["--endpoint", &hub.url, "--ca-file", hub.ca.to_str().unwrap()])
            .args(["--access-key-id", harness::AK_ID, "--access-key-secret", harness::AK_SECRET])
            .args(["--config", "/nonexistent/cli.json"])
            .args(args)
            .output()
            .expect("run cli")
    };
    let small = local.path().join("small.conf");
    std::fs::write(&small, b"key = value\n").unwrap();
    // 200 KiB + 1: over Content's 32 KiB, five chunks, the last one byte.
    let large = local.path().join("large.bin");
    let large_bytes = content(4 * FILE_CHUNK_BYTES + 1, 3);
    std::fs::write(&large, &large_bytes).unwrap();
    let to = out_dir.path().join("etc/app");
    let to = to.to_str().unwrap();
    for (file, mode) in [(&small, "0600"), (&large, "0755")] {
        let out = cli(&["send-file", file.to_str().unwrap(), "--to", to, "-i", &id, "--mode", mode]);
        let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        assert!(out.status.success(), "{text}\n{}", a.log());
        assert!(text.contains("Success 1"), "{text}");
    }
    assert_eq!(std::fs::read(out_dir.path().join("etc/app/small.conf")).unwrap(), b"key = value\n");
    assert!(std::fs::read(out_dir.path().join("etc/app/large.bin")).unwrap() == large_bytes, "the large file arrived intact");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(out_dir.path().join("etc/app/large.bin")).unwrap().permissions().mode() & 0o7777;
        assert_eq!(mode, 0o755);
    }
    // Again without --overwrite: FileAlreadyExists, exit status 1.
    let out = cli(&["send-file", small.to_str().unwrap(), "--to", to, "-i", &id]);
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(text.contains("File already exists"), "{text}");
}

/// `file_store_max_mib` bounds every stored content together: an upload
/// that would pass it is refused with `QuotaExceeded.FileStore` naming the
/// setting, before anything is stored; chunks of a content already stored
/// (a retried upload) are still taken; a content verified once is sent
/// again without being hashed again (its chunks never change).
#[test]
fn the_file_store_is_bounded_and_a_verified_content_is_reused() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("hub.toml");
    std::fs::write(&cfg, "file_store_max_mib = 1\n").unwrap();
    let hub = Hub::start_with(&["--config", cfg.to_str().unwrap()]);
    let agent = hub.agent();
    let id = agent.instance_id();
    hub.wait_online(&id);
    let first = content(700 * 1024, 1);
    let digest = upload(&hub, &first);
    let target = tempfile::tempdir().unwrap();
    let send = |name: &str| {
        let r = hub
            .call(
                "SendFile",
                &[
                    ("InstanceId.1", id.as_str()),
                    ("Name", name),
                    ("TargetDir", target.path().to_str().unwrap()),
                    ("ContentSha256", digest.as_str()),
                    ("Overwrite", "true"),
                ],
            )
            .expect("SendFile");
        r["InvokeId"].as_str().unwrap().to_string()
    };
    let a = send("a.bin");
    assert_eq!(wait_file_final(&hub, &a)["InvocationStatus"], "Success");
    // A second content of 700 KiB does not fit beside the first (1 MiB in all).
    let second = content(700 * 1024, 2);
    let err = hub
        .call(
            "PutFileContent",
            &[
                ("ContentSha256", &sha(&second)),
                ("Size", &second.len().to_string()),
                ("ChunkIndex", "0"),
                ("Content", &base64::engine::general_purpose::STANDARD.encode(&second[..FILE_CHUNK_BYTES])),
            ],
        )
        .unwrap_err();
    match err {
        deckhand::cli::client::CliError::Api { status, code, message, .. } => {
            assert_eq!((status, code.as_str()), (403, "QuotaExceeded.FileStore"));
            assert!(message.contains("file_store_max_mib"), "{message}");
        }
        other => panic!("expected an API error, got {other}"),
    }
    // The first content's chunks are still accepted (a retried upload).
    assert_eq!(upload(&hub, &first), digest);
    // Sent again from the remembered verification: the same bytes arrive.
    let b = send("b.bin");
    assert_eq!(wait_file_final(&hub, &b)["InvocationStatus"], "Success");
    assert_eq!(std::fs::read(target.path().join("b.bin")).unwrap(), first);
}
