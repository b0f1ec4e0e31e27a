//! Fan-out benchmark: N simulated agents (real TLS WebSocket clients
//! speaking the real protocol, all in this process) against one real hub
//! process; one RunCommand per 100 instances (the API's bound) to all N;
//! time until every result is acknowledged as stored.
//!
//! With `--rollout P%` (issue #16) the fleet is instead tagged and reached
//! by one tag-targeted RunCommand with `MaxConcurrency=P%`: each simulated
//! run holds for [`ROLLOUT_HOLD`], and the peak number of runs alive at
//! once is measured on the agents' side (it must equal the window).

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use tokio::sync::{Semaphore, mpsc};
use tokio_tungstenite::tungstenite::Message;

use super::procs::{self, mib};
use crate::agent::transport::{self, HubUrl, Ws};
use crate::cli::CliError;
use crate::lifecycle::InvocationStatus;
use crate::protocol::{self, AgentMsg, HostFacts, HubMsg, PROTOCOL_VERSION, RecordReport};

/// Handshakes in flight at once while connecting the simulated fleet.
const CONNECT_PARALLELISM: usize = 128;
/// RunCommand calls in flight at once (100 targets each): all of a
/// 10,000-agent fleet's, a fifth of a 50,000-agent fleet's.
const API_PARALLELISM: usize = 100;
/// Activations allow at most 1000 instances each (Cloud Assistant's bound).
const PER_ACTIVATION: usize = 1000;
/// How long a simulated run lasts in a rollout run, so windows overlap
/// measurably.
const ROLLOUT_HOLD: Duration = Duration::from_secs(1);

/// Simulated runs alive now and the most ever alive at once (agents' view:
/// from receiving the invocation to sending its final report).
#[derive(Default)]
struct Alive {
    now: AtomicUsize,
    peak: AtomicUsize,
}

impl Alive {
    fn start(&self) {
        let n = self.now.fetch_add(1, Ordering::SeqCst) + 1;
        self.peak.fetch_max(n, Ordering::SeqCst);
    }
    fn end(&self) {
        self.now.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Ephemeral ports the kernel hands out per source address (Linux's
/// `ip_local_port_range`, 28,232 by default), less a margin for the
/// bench's own API calls. Above this many agents the simulated fleet dials
/// from several loopback addresses (127.0.0.1, 127.0.0.2, …), each with
/// its own ports: a 50,000-agent run needs two.
/// `DECKHAND_BENCH_PORTS_PER_SOURCE` sets a smaller figure, so that a
/// small run exercises several source addresses.
fn ports_per_source() -> usize {
    if let Some(n) = std::env::var("DECKHAND_BENCH_PORTS_PER_SOURCE").ok().and_then(|v| v.parse::<usize>().ok()) {
        return n.max(1);
    }
    let range = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range").ok();
    let ports = range
        .and_then(|r| {
            let mut it = r.split_whitespace().filter_map(|p| p.parse::<usize>().ok());
            Some(it.next_back()?.saturating_sub(it.next()?) + 1)
        })
        .unwrap_or(28_232);
    ports.saturating_sub(2_000).max(1)
}

/// The loopback address simulated agent `i` dials from; `None` (the
/// kernel's choice, 127.0.0.1) while one address has ports enough.
fn source_for(i: usize, agents: usize, per_source: usize) -> Option<IpAddr> {
    (agents > per_source).then(|| IpAddr::V4(Ipv4Addr::new(127, 0, 0, 1 + (i / per_source).min(253) as u8)))
}

/// Dials the hub as an agent does, from `source` when given.
async fn dial(url: &HubUrl, tls: &Arc<rustls::ClientConfig>, source: Option<IpAddr>) -> Result<Ws, CliError> {
    let Some(ip) = source else { return transport::dial(url, tls, false).await.map_err(err) };
    let hub = tokio::net::lookup_host((url.host.as_str(), url.port)).await.map_err(err)?.next().ok_or_else(|| err("no hub address"))?;
    let sock = if hub.is_ipv4() { tokio::net::TcpSocket::new_v4() } else { tokio::net::TcpSocket::new_v6() }.map_err(err)?;
    sock.bind(SocketAddr::new(ip, 0)).map_err(|e| err(format!("binding source address {ip}: {e}")))?;
    let tcp = sock.connect(hub).await.map_err(|e| err(format!("connecting from {ip}: {e}")))?;
    let _ = tcp.set_nodelay(true);
    transport::handshake(tcp, url, tls, false).await.map_err(err)
}

/// The machine's available memory (Linux `MemAvailable`), bytes.
fn mem_available() -> u64 {
    let info = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    info.lines()
        .find_map(|l| l.strip_prefix("MemAvailable:")?.trim().strip_suffix("kB")?.trim().parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

fn err(e: impl std::fmt::Display) -> CliError {
    CliError::Usage(format!("bench fanout: {e}"))
}

/// What the simulated agents' reports look like on the wire.
#[derive(Debug, Clone, Copy, Default)]
pub struct Shape {
    /// Output bytes of each final report (before base64); 0: three bytes.
    pub output_kib: usize,
    /// Each message as one frame, as agents before issue #21's change (and
    /// 0.1.0) sent them, instead of fragments of `MAX_SENT_FRAME`.
    pub whole_frames: bool,
    /// Size of the script each `RunCommand` sends, in KiB; 0: `echo ok`.
    pub script_kib: usize,
}

impl Shape {
    /// The `CommandContent` of the fan-out's calls: `echo ok`, padded with
    /// a comment to `script_kib`.
    fn script(&self) -> String {
        let mut script = "echo ok\n#".to_string();
        let want = self.script_kib.saturating_mul(1024);
        script.push_str(&"x".repeat(want.saturating_sub(script.len())));
        script
    }
}

/// What every simulated agent does alike: the reports' output, the frame
/// bound, and in a rollout run the count of runs alive.
struct Wire {
    output_b64: String,
    max_frame: usize,
    alive: Option<Arc<Alive>>,
}

impl Wire {
    fn of(shape: Shape, alive: Option<Arc<Alive>>) -> Self {
        use base64::Engine;
        let output_b64 = match shape.output_kib {
            0 => "b2sK".to_string(),
            kib => base64::engine::general_purpose::STANDARD.encode(vec![b'x'; kib.saturating_mul(1024)]),
        };
        Self { output_b64, max_frame: if shape.whole_frames { usize::MAX } else { protocol::frames::MAX_SENT_FRAME }, alive }
    }
}

async fn send(ws: &mut Ws, m: &AgentMsg) -> Result<(), CliError> {
    send_framed(ws, m, protocol::frames::MAX_SENT_FRAME).await
}

async fn send_framed(ws: &mut Ws, m: &AgentMsg, max_frame: usize) -> Result<(), CliError> {
    protocol::frames::send_text_framed(ws, protocol::encode(m).map_err(err)?, max_frame).await.map_err(err)
}

async fn recv(ws: &mut Ws) -> Result<HubMsg, CliError> {
    loop {
        match ws.next().await {
            Some(Ok(Message::Text(t))) => return protocol::decode(t.as_str()).map_err(err),
            Some(Ok(_)) => {}
            Some(Err(e)) => return Err(err(e)),
            None => return Err(err("hub closed the connection")),
        }
    }
}

fn report(invoke_id: &str, status: InvocationStatus, output_b64: &str) -> RecordReport {
    let now = chrono::Utc::now().format("%Y-%m-%dT%H:%M:%SZ").to_string();
    RecordReport {
        invoke_id: invoke_id.to_string(),
        record_seq: 0,
        status,
        exit_code: status.is_final().then_some(0),
        output_b64: if status.is_final() { output_b64.to_string() } else { String::new() },
        dropped: 0,
        error_code: None,
        error_info: String::new(),
        start_time: now.clone(),
        finish_time: if status.is_final() { now } else { String::new() },
    }
}

/// One simulated agent: registers, says hello, answers every invocation
/// with Running then Finished, and signals when the final report is acked.
async fn sim_agent(
    url: HubUrl,
    tls: Arc<rustls::ClientConfig>,
    source: Option<IpAddr>,
    act: (String, String),
    ids: mpsc::Sender<String>,
    done: mpsc::UnboundedSender<()>,
    wire: Arc<Wire>,
) -> Result<(), CliError> {
    let mut ws = dial(&url, &tls, source).await?;
    let facts = HostFacts { hostname: "sim".into(), os_type: "linux".into(), agent_version: "bench".into(), ..Default::default() };
    send(&mut ws, &AgentMsg::Register { protocol: PROTOCOL_VERSION, activation_id: act.0, activation_code: act.1, facts: facts.clone() })
        .await?;
    let (instance_id, token) = match recv(&mut ws).await? {
        HubMsg::Registered { instance_id, token } => (instance_id, token),
        other => return Err(err(format!("register: {other:?}"))),
    };
    send(&mut ws, &AgentMsg::Hello { protocol: PROTOCOL_VERSION, instance_id: instance_id.clone(), token, facts }).await?;
    let hb = match recv(&mut ws).await? {
        HubMsg::Welcome { heartbeat_secs, .. } => Duration::from_secs(heartbeat_secs),
        other => return Err(err(format!("hello: {other:?}"))),
    };
    let _ = ids.send(instance_id).await;
    drop(ids);
    let mut ticker = tokio::time::interval(hb);
    let mut next_id = 1u64;
    let mut final_ids = std::collections::HashSet::new();
    loop {
        tokio::select! {
            _ = ticker.tick() => send(&mut ws, &AgentMsg::Heartbeat { sent_ms: 0 }).await?,
            m = recv(&mut ws) => match m? {
                HubMsg::Invoke { invocation } => {
                    send(&mut ws, &AgentMsg::InvokeAck { invoke_id: invocation.invoke_id.clone() }).await?;
                    send(&mut ws, &AgentMsg::Report { report_id: next_id, report: report(&invocation.invoke_id, InvocationStatus::Running, "") }).await?;
                    if let Some(alive) = &wire.alive {
                        // A run that lasts: the window's slots fill up.
                        alive.start();
                        tokio::time::sleep(ROLLOUT_HOLD).await;
                        alive.end();
                    }
                    let last = AgentMsg::Report { report_id: next_id + 1, report: report(&invocation.invoke_id, InvocationStatus::Success, &wire.output_b64) };
                    send_framed(&mut ws, &last, wire.max_frame).await?;
                    final_ids.insert(next_id + 1);
                    next_id += 2;
                }
                HubMsg::ReportAck { report_id } if final_ids.remove(&report_id) => {
                    let _ = done.send(());
                }
                _ => {}
            }
        }
    }
}

pub async fn run(agents: usize, store: Option<&str>, rollout: Option<&str>, shape: Shape) -> Result<(), CliError> {
    let fd_limit = procs::raise_nofile();
    if fd_limit != 0 && agents as u64 + 256 > fd_limit {
        return Err(err(format!(
            "{agents} agents need about {} file descriptors; the limit is {fd_limit} (raise it with `ulimit -n`; as root `ulimit -Hn` first)",
            agents + 256
        )));
    }
    let per_source = ports_per_source();
    let sources = agents.div_ceil(per_source).max(1);
    if sources > 254 {
        return Err(err(format!("{agents} agents need {sources} loopback source addresses of {per_source} ports each; at most 254 exist")));
    }
    println!(
        "limits: {fd_limit} open files per process (bench and hub each need {}), {sources} loopback source address(es) of {per_source} ephemeral ports, {:.1} GiB memory available, {} cores shared by the bench's agents and the hub",
        agents + 256,
        mib(mem_available()) / 1024.0,
        std::thread::available_parallelism().map_or(1, |n| n.get())
    );
    let dir = tempfile::tempdir().map_err(err)?;
    let (store_args, store_name) = super::store_args(store);
    let mut args = vec!["--heartbeat-secs", "60"];
    args.extend(store_args.iter().map(String::as_str));
    let hub = procs::start_hub(dir.path(), &args)?;
    let pid = hub.proc.pid();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let rss_idle = procs::rss_bytes(pid);
    let client = Arc::new(hub.client()?);
    let mut activations = Vec::new();
    for chunk in 0..agents.div_ceil(PER_ACTIVATION) {
        let n = (agents - chunk * PER_ACTIVATION).min(PER_ACTIVATION);
        let c = client.clone();
        let v = tokio::task::spawn_blocking(move || {
            c.call("CreateActivation", &[("InstanceCount", n.to_string()), ("TimeToLiveInHours", "1".into())])
        })
        .await
        .map_err(err)??;
        let id = v["ActivationId"].as_str().unwrap_or_default().to_string();
        let code = v["ActivationCode"].as_str().unwrap_or_default().to_string();
        activations.extend(std::iter::repeat_n((id, code), n));
    }
    let url = HubUrl::parse(&hub.url).map_err(err)?;
    let tls = crate::tls::client_config(Some(&hub.ca)).map_err(err)?;
    let (id_tx, mut id_rx) = mpsc::channel(agents.max(1));
    let (done_tx, mut done_rx) = mpsc::unbounded_channel();
    let gate = Arc::new(Semaphore::new(CONNECT_PARALLELISM));
    let failures = Arc::new(AtomicUsize::new(0));
    // What stopped the first agent that failed: the limit a large run hit.
    let first_failure = Arc::new(std::sync::Mutex::new(None::<String>));
    // After the measurement the hub is stopped; agents losing it then is expected.
    let finished = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let alive = rollout.map(|_| Arc::new(Alive::default()));
    let wire = Arc::new(Wire::of(shape, alive.clone()));
    if shape.script_kib > 0 {
        println!("scripts: {} KiB each (the invocation the hub sends every agent)", shape.script_kib);
    }
    if shape.output_kib > 0 || shape.whole_frames {
        println!(
            "reports: {} KiB of output each ({} bytes of base64), sent {}",
            shape.output_kib,
            wire.output_b64.len(),
            if shape.whole_frames {
                "as one frame each (as before issue #21)".to_string()
            } else {
                format!("in frames of at most {} bytes", protocol::frames::MAX_SENT_FRAME)
            }
        );
    }
    let t_connect = Instant::now();
    for (i, act) in activations.into_iter().enumerate() {
        let (url, tls, ids, done, gate, failures, finished, wire) =
            (url.clone(), tls.clone(), id_tx.clone(), done_tx.clone(), gate.clone(), failures.clone(), finished.clone(), wire.clone());
        let first_failure = first_failure.clone();
        let source = source_for(i, agents, per_source);
        tokio::spawn(async move {
            let permit = gate.acquire_owned().await;
            // The permit covers only the handshake phase.
            let (held_tx, mut held_rx) = mpsc::channel::<String>(1);
            let fut = sim_agent(url, tls, source, act, held_tx, done, wire);
            tokio::pin!(fut);
            let id = tokio::select! {
                r = &mut fut => {
                    if let Err(e) = r {
                        failures.fetch_add(1, Ordering::Relaxed);
                        first_failure.lock().unwrap_or_else(|p| p.into_inner()).get_or_insert_with(|| e.to_string());
                        tracing::warn!(error = %e, "simulated agent failed");
                    }
                    return;
                }
                id = held_rx.recv() => id,
            };
            drop(permit);
            if let Some(id) = id {
                let _ = ids.send(id).await;
            }
            if let Err(e) = fut.await {
                if finished.load(Ordering::Relaxed) {
                    return;
                }
                failures.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(error = %e, "simulated agent failed");
            }
        });
    }
    drop(id_tx);
    drop(done_tx);
    let mut ids = Vec::with_capacity(agents);
    while ids.len() + failures.load(Ordering::Relaxed) < agents {
        match tokio::time::timeout(Duration::from_secs(120), id_rx.recv()).await {
            Ok(Some(id)) => ids.push(id),
            _ => break,
        }
    }
    let connect_time = t_connect.elapsed();
    if ids.len() < agents {
        let first = first_failure.lock().unwrap_or_else(|p| p.into_inner()).clone().unwrap_or_else(|| "none failed; timed out".into());
        return Err(err(format!(
            "only {} of {agents} simulated agents connected ({} failed; first failure: {first}; hub RSS {:.1} MiB, bench RSS {:.1} MiB)",
            ids.len(),
            failures.load(Ordering::Relaxed),
            mib(procs::rss_bytes(pid)),
            mib(procs::rss_bytes(std::process::id()))
        )));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss_connected = procs::rss_bytes(pid);

    if let (Some(window), Some(alive)) = (rollout, &alive) {
        tag_fleet(&client, &ids).await?;
        return rollout_run(&client, window, agents, alive, &mut done_rx, pid, rss_connected, &finished).await;
    }
    let t_fan = Instant::now();
    let cpu_fan = procs::cpu_time(pid);
    let own_cpu_fan = procs::cpu_time(std::process::id());
    let script = shape.script();
    let (api_time, stored) = fan_out(&client, &ids, &mut done_rx, &script).await?;
    let fan_time = t_fan.elapsed();
    let hub_cpu = procs::cpu_time(pid).saturating_sub(cpu_fan);
    let own_cpu = procs::cpu_time(std::process::id()).saturating_sub(own_cpu_fan);
    let rss_after = procs::rss_bytes(pid);
    // With large reports, the same fan-out again: what the first left in
    // the hub's RSS is either held per connection (it grows again) or
    // memory the allocator reuses (it does not).
    let rss_again = if shape.output_kib > 0 || shape.script_kib > 0 {
        let (_, again) = fan_out(&client, &ids, &mut done_rx, &script).await?;
        (again == agents).then(|| procs::rss_bytes(pid))
    } else {
        None
    };
    finished.store(true, Ordering::Relaxed);
    let per_conn = rss_connected.saturating_sub(rss_idle) as f64 / agents.max(1) as f64;
    println!("fan-out benchmark ({agents} simulated agents, TLS WebSocket, store: {store_name})");
    println!(
        "  connect + register all agents:  {:.2} s ({:.0} agents/s)",
        connect_time.as_secs_f64(),
        agents as f64 / connect_time.as_secs_f64().max(1e-9)
    );
    println!("  hub RSS idle / connected / after: {:.1} / {:.1} / {:.1} MiB", mib(rss_idle), mib(rss_connected), mib(rss_after));
    println!("  hub memory per connection:      {:.1} KiB", per_conn / 1024.0);
    if let Some(again) = rss_again {
        println!(
            "  hub RSS after a second fan-out: {:.1} MiB (grew {:.1} KiB per connection in the first, {:.1} KiB in the second)",
            mib(again),
            rss_after.saturating_sub(rss_connected) as f64 / 1024.0 / agents.max(1) as f64,
            again.saturating_sub(rss_after) as f64 / 1024.0 / agents.max(1) as f64
        );
    }
    println!("  bench process RSS (the agents): {:.1} MiB", mib(procs::rss_bytes(std::process::id())));
    println!("  RunCommand calls ({}):          {:.3} s", agents.div_ceil(100), api_time.as_secs_f64());
    println!("  fan-out complete (all stored):  {:.3} s  ({stored}/{agents} results)", fan_time.as_secs_f64());
    println!("  results stored per second:      {:.0}", stored as f64 / fan_time.as_secs_f64().max(1e-9));
    println!(
        "  hub CPU during the fan-out:     {:.2} s ({:.0} % of one core; {:.3} ms per result)",
        hub_cpu.as_secs_f64(),
        hub_cpu.as_secs_f64() / fan_time.as_secs_f64().max(1e-9) * 100.0,
        hub_cpu.as_secs_f64() * 1000.0 / stored.max(1) as f64
    );
    // The simulated agents share the machine with the hub: at these costs
    // per result, the cores bound the rate whatever either side waits on.
    let per_result = |cpu: Duration| cpu.as_secs_f64() * 1000.0 / stored.max(1) as f64;
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
    println!(
        "  bench CPU (agents, API calls):  {:.2} s ({:.3} ms per result); {cores:.0} cores at hub + bench CPU per result bound the rate to {:.0}/s",
        own_cpu.as_secs_f64(),
        per_result(own_cpu),
        cores * 1000.0 / (per_result(hub_cpu) + per_result(own_cpu)).max(1e-9)
    );
    // The hub's own figures (loopback may read /metrics).
    let scraped = {
        let c = client.clone();
        tokio::task::spawn_blocking(move || c.get("/metrics", None)).await.map_err(err)?
    };
    if let Ok((200, text)) = scraped {
        let v = |name: &str| text.lines().find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse::<f64>().ok()).unwrap_or(0.0);
        let batches = v("deckhand_hub_store_batch_operations_count").max(1.0);
        println!(
            "  group commits (from /metrics):  {:.0}, {:.1} operations and {:.2} ms each on average",
            batches,
            v("deckhand_hub_store_batch_operations_sum") / batches,
            v("deckhand_hub_store_batch_seconds_sum") * 1000.0 / batches
        );
    }
    if stored < agents {
        return Err(err(format!("only {stored} of {agents} results were stored")));
    }
    Ok(())
}

/// One `RunCommand` per 100 instances to all of `ids`, then the wait for
/// every final report to be acknowledged as stored: the time the calls
/// took and how many results were stored (within 120 s of each other).
async fn fan_out(
    client: &Arc<crate::cli::Client>,
    ids: &[String],
    done_rx: &mut mpsc::UnboundedReceiver<()>,
    script: &str,
) -> Result<(Duration, usize), CliError> {
    let t_fan = Instant::now();
    let mut calls = Vec::new();
    // At most this many calls at once: each is a connection the hub counts
    // as pending until its headers are in (at most 256 per address).
    let api_gate = Arc::new(Semaphore::new(API_PARALLELISM));
    for chunk in ids.chunks(100) {
        let c = client.clone();
        let gate = api_gate.clone();
        let mut p: Vec<(String, String)> = vec![("Type".into(), "RunShellScript".into()), ("CommandContent".into(), script.to_string())];
        for (i, id) in chunk.iter().enumerate() {
            p.push((format!("InstanceId.{}", i + 1), id.clone()));
        }
        calls.push(tokio::spawn(async move {
            let _permit = gate.acquire_owned().await;
            tokio::task::spawn_blocking(move || {
                let refs: Vec<(&str, String)> = p.iter().map(|(k, v)| (k.as_str(), v.clone())).collect();
                c.call("RunCommand", &refs)
            })
            .await
        }));
    }
    for c in calls {
        c.await.map_err(err)?.map_err(err)??;
    }
    let api_time = t_fan.elapsed();
    let mut stored = 0usize;
    while stored < ids.len() {
        match tokio::time::timeout(Duration::from_secs(120), done_rx.recv()).await {
            Ok(Some(())) => stored += 1,
            _ => break,
        }
    }
    Ok((api_time, stored))
}

/// Tags every simulated instance `bench=fleet` (100 per TagResources call).
async fn tag_fleet(client: &Arc<crate::cli::Client>, ids: &[String]) -> Result<(), CliError> {
    for chunk in ids.chunks(100) {
        let c = client.clone();
        let mut p: Vec<(String, String)> =
            vec![("ResourceType".into(), "instance".into()), ("Tag.1.Key".into(), "bench".into()), ("Tag.1.Value".into(), "fleet".into())];
        p.extend(chunk.iter().enumerate().map(|(i, id)| (format!("ResourceId.{}", i + 1), id.clone())));
        tokio::task::spawn_blocking(move || {
            let refs: Vec<(&str, String)> = p.iter().map(|(k, v)| (k.as_str(), v.clone())).collect();
            c.call("TagResources", &refs)
        })
        .await
        .map_err(err)??;
    }
    Ok(())
}

/// One tag-targeted RunCommand with `MaxConcurrency=window` to the whole
/// simulated fleet; prints time to completion, the peak concurrency the
/// agents saw, and the window the hub resolved.
#[allow(clippy::too_many_arguments)]
async fn rollout_run(
    client: &Arc<crate::cli::Client>,
    window: &str,
    agents: usize,
    alive: &Alive,
    done_rx: &mut mpsc::UnboundedReceiver<()>,
    pid: u32,
    rss_connected: u64,
    finished: &std::sync::atomic::AtomicBool,
) -> Result<(), CliError> {
    let t = Instant::now();
    let c = client.clone();
    let w = window.to_string();
    let v = tokio::task::spawn_blocking(move || {
        c.call(
            "RunCommand",
            &[
                ("Type", "RunShellScript".into()),
                ("CommandContent", "echo ok".into()),
                ("ResourceTag.1.Key", "bench".into()),
                ("ResourceTag.1.Value", "fleet".into()),
                ("MaxConcurrency", w),
            ],
        )
    })
    .await
    .map_err(err)??;
    let api_time = t.elapsed();
    let invoke_id = v["InvokeId"].as_str().unwrap_or_default().to_string();
    let mut stored = 0usize;
    while stored < agents {
        match tokio::time::timeout(Duration::from_secs(300), done_rx.recv()).await {
            Ok(Some(())) => stored += 1,
            _ => break,
        }
    }
    let total = t.elapsed();
    finished.store(true, Ordering::Relaxed);
    let rss_after = procs::rss_bytes(pid);
    let c = client.clone();
    let inv = tokio::task::spawn_blocking(move || c.call("DescribeInvocations", &[("InvokeId", invoke_id)])).await.map_err(err)??;
    let resolved = inv["Invocations"]["Invocation"][0]["MaxConcurrency"].as_i64().unwrap_or(0);
    let peak = alive.peak.load(Ordering::SeqCst);
    println!(
        "rollout benchmark ({agents} simulated agents tagged bench=fleet, MaxConcurrency {window} = {resolved}, runs hold {} ms)",
        ROLLOUT_HOLD.as_millis()
    );
    println!("  tag-targeted RunCommand call:   {:.3} s", api_time.as_secs_f64());
    println!("  rollout complete (all stored):  {:.3} s  ({stored}/{agents} results)", total.as_secs_f64());
    println!("  peak concurrency observed:      {peak} (window {resolved})");
    println!("  hub RSS connected / after:      {:.1} / {:.1} MiB", mib(rss_connected), mib(rss_after));
    if stored < agents {
        return Err(err(format!("only {stored} of {agents} results were stored")));
    }
    if peak as i64 > resolved {
        return Err(err(format!("the window was exceeded: {peak} runs at once, MaxConcurrency {resolved}")));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn large_fleets_dial_from_several_loopback_addresses() {
        assert_eq!(source_for(9_999, 10_000, 26_000), None);
        assert_eq!(source_for(0, 50_000, 26_000), Some(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 1))));
        assert_eq!(source_for(26_000, 50_000, 26_000), Some(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2))));
        assert!(ports_per_source() >= 1);
    }
}
