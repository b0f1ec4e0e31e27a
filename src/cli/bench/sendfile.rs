//! `deckhand bench sendfile`: one file of SIZE to N real agents through
//! `PutFileContent` + `SendFile` (docs/files.md), against a real hub.
//!
//! Prints the upload time, the delivery time (SendFile → every target
//! settled, as DescribeSendFileResults shows it), the aggregate MB/s
//! written on the agents, and the peak RSS of each agent while it pulled
//! and wrote the file (sampled from /proc every 20 ms), with the largest
//! of them. Every agent writes into its own directory, checked afterwards.

use std::time::{Duration, Instant};

use base64::Engine;
use sha2::{Digest, Sha256};

use super::procs::{self, mib};
use crate::cli::CliError;
use crate::protocol::FILE_CHUNK_BYTES;

fn err(e: impl std::fmt::Display) -> CliError {
    CliError::Usage(format!("bench: {e}"))
}

/// Deterministic content, generated chunk by chunk (never held whole).
fn chunk(seq: u64, len: usize) -> Vec<u8> {
    let mut x = seq.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

pub fn run(size_mib: u64, agents: usize) -> Result<(), CliError> {
    let size = size_mib * 1024 * 1024;
    let dir = tempfile::tempdir().map_err(err)?;
    let hub = procs::start_hub(dir.path(), &["--heartbeat-secs", "5"])?;
    let client = hub.client()?;
    let fleet = procs::start_agents(&hub, dir.path(), &client, agents, Duration::from_secs(60))?;
    let chunks = size.div_ceil(FILE_CHUNK_BYTES as u64);
    let mut hasher = Sha256::new();
    for seq in 0..chunks {
        hasher.update(chunk(seq, (size - seq * FILE_CHUNK_BYTES as u64).min(FILE_CHUNK_BYTES as u64) as usize));
    }
    let sha = hex::encode(hasher.finalize());
    let t_up = Instant::now();
    for seq in 0..chunks {
        let data = chunk(seq, (size - seq * FILE_CHUNK_BYTES as u64).min(FILE_CHUNK_BYTES as u64) as usize);
        client.call(
            "PutFileContent",
            &[
                ("ContentSha256", sha.clone()),
                ("Size", size.to_string()),
                ("ChunkIndex", seq.to_string()),
                ("Content", base64::engine::general_purpose::STANDARD.encode(&data)),
            ],
        )?;
    }
    let upload = t_up.elapsed();
    // Each agent writes into its own directory: one SendFile per agent,
    // all created at once, the content stored once.
    let t0 = Instant::now();
    let mut ids = Vec::with_capacity(agents);
    for (i, (_, instance)) in fleet.iter().enumerate() {
        let target = dir.path().join(format!("out-{i}"));
        let v = client.call(
            "SendFile",
            &[
                ("Name", "big.bin".into()),
                ("TargetDir", target.display().to_string()),
                ("ContentSha256", sha.clone()),
                ("Timeout", "3600".into()),
                ("InstanceId.1", instance.clone()),
            ],
        )?;
        ids.push(v["InvokeId"].as_str().unwrap_or("").to_string());
    }
    let mut peaks = vec![0u64; agents];
    let mut settled = vec![None::<String>; agents];
    let mut last_poll = Instant::now() - Duration::from_secs(1);
    while settled.iter().any(Option::is_none) {
        for (i, (p, _)) in fleet.iter().enumerate() {
            peaks[i] = peaks[i].max(procs::rss_bytes(p.pid()));
        }
        if last_poll.elapsed() >= Duration::from_millis(250) {
            last_poll = Instant::now();
            for (i, id) in ids.iter().enumerate() {
                if settled[i].is_some() {
                    continue;
                }
                let v = client.call("DescribeSendFileResults", &[("InvokeId", id.clone())])?;
                let st = v["Invocations"]["Invocation"][0]["InvokeInstances"]["InvokeInstance"][0]["InvocationStatus"]
                    .as_str()
                    .unwrap_or("")
                    .to_string();
                if crate::lifecycle::InvocationStatus::parse(&st).is_ok_and(|s| s.is_final()) {
                    settled[i] = Some(st);
                }
            }
        }
        if t0.elapsed() > Duration::from_secs(3600) {
            return Err(err("deliveries not settled within an hour"));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let took = t0.elapsed();
    let ok = settled.iter().filter(|s| s.as_deref() == Some("Success")).count();
    let sizes_ok =
        (0..agents).filter(|i| std::fs::metadata(dir.path().join(format!("out-{i}/big.bin"))).is_ok_and(|m| m.len() == size)).count();
    let total_mb = (size * agents as u64) as f64 / 1e6;
    let max_peak = peaks.iter().copied().max().unwrap_or(0);
    println!("sendfile benchmark ({size_mib} MiB to {agents} agents, real hub and agents, TLS on loopback, SQLite)");
    println!("  upload (PutFileContent, {chunks} chunks of {} KiB): {:.1} s", FILE_CHUNK_BYTES / 1024, upload.as_secs_f64());
    println!(
        "  delivery to all agents: {:.1} s   {:.1} MB/s aggregate   {:.1} MB/s per agent",
        took.as_secs_f64(),
        total_mb / took.as_secs_f64(),
        total_mb / agents as f64 / took.as_secs_f64()
    );
    println!("  succeeded: {ok}/{agents}   files of the right size: {sizes_ok}/{agents}");
    let mut sorted = peaks.clone();
    sorted.sort_unstable();
    println!(
        "  agent peak RSS while writing: max {:.2} MiB   median {:.2} MiB   (target < 16 MiB)",
        mib(max_peak),
        mib(sorted.get(sorted.len() / 2).copied().unwrap_or(0))
    );
    if ok != agents || sizes_ok != agents {
        return Err(err(format!("{} of {agents} deliveries did not succeed", agents - ok.min(sizes_ok))));
    }
    Ok(())
}
