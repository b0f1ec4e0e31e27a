//! The node daemon: connection loop, durable state, runs and reporting.
//!
//! Owns: dialing the hub with back-off, registration, the per-connection
//! session (hello, heartbeats, invocations, stops, report acks), and the
//! hand-off of accepted invocations to [`runner`]. Public surface:
//! [`AgentConfig`], [`run`], [`register`], [`identity`], [`schedule`].

pub mod config;
pub mod figures;
pub(crate) mod files;
pub(crate) mod grants;
pub mod identity;
pub(crate) mod journal;
pub(crate) mod periodic;
pub(crate) mod proxy;
pub(crate) mod runner;
pub(crate) mod schedule;
pub mod selfcheck;
pub mod service;
pub(crate) mod state;
pub mod transport;
pub mod update;
#[cfg(windows)]
pub mod winsvc;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use futures_util::StreamExt;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;

use crate::backoff::Backoff;
use crate::protocol::{self, AgentMsg, HubMsg, PROTOCOL_VERSION};
use identity::Identity;
use runner::{LiveChunk, Runner};
use transport::{HubUrl, Ws};

#[derive(Debug, Clone)]
pub struct AgentConfig {
    pub hub: String,
    pub state_dir: PathBuf,
    /// Pinned CA; `None` trusts the system roots.
    pub ca_file: Option<PathBuf>,
    /// mTLS client certificate and key.
    pub client_cert: Option<(PathBuf, PathBuf)>,
    pub insecure_loopback: bool,
    /// Used once, when no identity exists yet.
    pub activation: Option<(String, String)>,
    pub max_concurrent: usize,
    pub backoff_base: Duration,
    pub backoff_cap: Duration,
    /// The agent's own binary, re-executed as each run's supervisor so runs
    /// outlive the agent (Unix; see docs/exec.md). `None` (the default, and
    /// on Windows): runs are the agent's children and die with it.
    pub supervisor: Option<PathBuf>,
    /// The HTTP CONNECT proxy to the hub, hosts that bypass it, and whether
    /// scripts see it (docs/operations.md, "Proxies").
    pub proxy: proxy::ProxySettings,
    /// Ceilings on the agent's own memory and CPU ([`selfcheck`]).
    pub limits: selfcheck::Limits,
    /// Under systemd, the slice supervisors run in (empty: the agent's own
    /// cgroup); see [`crate::exec::scope`].
    pub runs_slice: String,
    /// Self-update: the pinned signing key (none: updates refused) and
    /// this agent's binary as resolved at start ([`update`]).
    pub update_key: Option<update::UpdateKey>,
    pub exe: Option<PathBuf>,
}

impl AgentConfig {
    pub fn new(hub: impl Into<String>, state_dir: PathBuf) -> Self {
        Self {
            hub: hub.into(),
            state_dir,
            ca_file: None,
            client_cert: None,
            insecure_loopback: false,
            activation: None,
            max_concurrent: 8,
            backoff_base: Duration::from_millis(500),
            backoff_cap: Duration::from_secs(60),
            supervisor: None,
            proxy: proxy::ProxySettings::default(),
            limits: selfcheck::Limits::default(),
            runs_slice: crate::exec::scope::DEFAULT_SLICE.to_string(),
            update_key: None,
            exe: None,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("{0}")]
    Dial(#[from] transport::DialError),
    #[error("identity: {0}")]
    Identity(#[from] identity::IdentityError),
    #[error("journal: {0}")]
    Journal(#[from] journal::JournalError),
    #[error("tls: {0}")]
    Tls(#[from] crate::tls::TlsError),
    #[error("cannot create state directory {path}: {source}")]
    StateDir { path: PathBuf, source: std::io::Error },
    #[error("not registered: no identity in {0} and no activation code given")]
    NotRegistered(PathBuf),
    #[error("hub refused us: {code}: {message}")]
    Refused { code: String, message: String },
    #[error("websocket: {0}")]
    Ws(#[from] tokio_tungstenite::tungstenite::Error),
    #[error("encode: {0}")]
    Encode(#[from] protocol::FrameError),
    #[error("connection lost: {0}")]
    Lost(String),
    #[error("update: {0}")]
    Update(#[from] update::UpdateError),
    #[error("the agent's own {what} stayed over its ceiling for {checks} checks; restarting")]
    OverLimit { what: &'static str, checks: u32 },
}

impl AgentError {
    /// Refusals that retrying cannot fix: stop instead of hammering the hub.
    fn is_fatal(&self) -> bool {
        matches!(self, Self::Refused { code, .. } if code.starts_with("Invalid") || code.starts_with("Activation") || code == "IpNotAllowed")
            || matches!(
                self,
                Self::NotRegistered(_) | Self::Dial(transport::DialError::BadUrl(_) | transport::DialError::InsecureRefused(_))
            )
    }
}

pub fn ensure_state_dir(dir: &std::path::Path) -> Result<(), AgentError> {
    let err = |source| AgentError::StateDir { path: dir.to_path_buf(), source };
    std::fs::create_dir_all(dir).map_err(err)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).map_err(err)?;
    }
    Ok(())
}

/// Runs the agent until `shutdown` fires. With `supervisor` set, runs in
/// progress outlive this process and a restart re-attaches to them;
/// without, they end with it and a restart reports them interrupted (see
/// docs/journal.md).
pub async fn run(config: AgentConfig, shutdown: CancellationToken) -> Result<(), AgentError> {
    ensure_state_dir(&config.state_dir)?;
    let urls = HubUrl::parse_list(&config.hub)?;
    let mut current = 0usize;
    let tls = crate::tls::client_config_with_cert(
        config.ca_file.as_deref(),
        config.client_cert.as_ref().map(|(c, k)| (c.as_path(), k.as_path())),
    )?;
    let (state, recovery) = state::AgentState::open(&config.state_dir.join("journal"))?;
    // Root uses the engine's /run default; anyone else keeps scripts under
    // its own 0700 state dir, where no other local user can interfere.
    #[cfg(unix)]
    let script_root = (!nix::unistd::geteuid().is_root()).then(|| config.state_dir.join("scripts"));
    #[cfg(not(unix))]
    let script_root = None;
    let scope = match &config.supervisor {
        Some(_) if cfg!(unix) && !config.runs_slice.is_empty() => crate::exec::scope::detect(&config.runs_slice).await,
        _ => None,
    };
    let supervision = config.supervisor.clone().filter(|_| cfg!(unix)).map(|program| runner::Supervision {
        program,
        runs_root: config.state_dir.join("runs"),
        scope,
    });
    let (runner, mut live_rx) = Runner::new(state, config.max_concurrent, script_root, supervision, config.proxy.script_env());
    let mut identity = identity::load(&config.state_dir)?;
    if let Some(id) = &identity {
        runner.set_instance_id(&id.instance_id);
    }
    runner.sweep_run_dirs(&recovery.interrupted);
    for (inv, seq) in recovery.interrupted {
        // Supervised runs are watched to their real end; others are lost.
        runner.reattach(inv.clone(), seq);
        // A schedule outlives one interrupted run: resume it.
        if Runner::is_repeating(&inv) {
            runner.spawn(inv);
        }
    }
    for inv in recovery.to_run {
        runner.spawn(inv);
    }
    spawn_update_guard(&config);
    let live = Arc::new(service::Liveness::default());
    live.stamp();
    service::notify_ready();
    service::spawn_watchdog(live.clone(), shutdown.clone());
    let status =
        Arc::new(std::sync::Mutex::new(service::Status { pid: std::process::id(), hub: config.hub.clone(), ..Default::default() }));
    spawn_status_writer(config.state_dir.clone(), status.clone(), runner.clone(), shutdown.clone());
    let mut over_limit = spawn_self_check(config.limits, status.clone(), shutdown.clone());
    let mut backoff = Backoff::new(config.backoff_base, config.backoff_cap);
    let result = loop {
        if shutdown.is_cancelled() {
            break Ok(());
        }
        let url = &urls[current % urls.len()];
        let ctx = Ctx { config: &config, url, tls: &tls, runner: &runner, live: &live, status: &status, shutdown: &shutdown };
        let result = tokio::select! {
            _ = shutdown.cancelled() => break Ok(()),
            Ok(what) = over_limit.wait_for(Option::is_some) => break Err(AgentError::OverLimit { what: (*what).unwrap_or("usage"), checks: selfcheck::STRIKES }),
            r = connect_and_serve(&ctx, &mut identity, &mut live_rx, &mut backoff) => r,
        };
        set_status(&status, |s| s.connected = false);
        match result {
            Ok(()) => break Ok(()),
            Err(e) if e.is_fatal() => break Err(e),
            Err(e) => {
                // Several replicas: the next attempt goes to the next one.
                current = current.wrapping_add(1);
                let delay = backoff.next_delay();
                tracing::warn!(error = %e, hub = %url.ws_url(), retry_in_ms = delay.as_millis() as u64, "hub connection failed");
                // Sleep in slices so the watchdog sees the loop alive.
                let until = tokio::time::Instant::now() + delay;
                while tokio::time::Instant::now() < until {
                    live.stamp();
                    tokio::select! {
                        _ = shutdown.cancelled() => break,
                        _ = tokio::time::sleep_until(until.min(tokio::time::Instant::now() + service::LOOP_TICK)) => {}
                    }
                }
            }
        }
    };
    service::notify_stopping();
    set_status(&status, |s| s.connected = false);
    result
}

type SharedStatus = Arc<std::sync::Mutex<service::Status>>;

fn set_status(status: &SharedStatus, f: impl FnOnce(&mut service::Status)) {
    f(&mut status.lock().unwrap_or_else(|e| e.into_inner()));
}

/// Refreshes status.json every loop tick (and once more at shutdown).
fn spawn_status_writer(dir: PathBuf, status: SharedStatus, runner: Arc<Runner>, shutdown: CancellationToken) {
    tokio::spawn(async move {
        // Connected with no run going for this many ticks; None once the
        // cold code was shed (until the next run).
        let mut idle_ticks = Some(0u32);
        loop {
            let snapshot = {
                let mut s = status.lock().unwrap_or_else(|e| e.into_inner()).clone();
                s.running = runner.running_ids();
                idle_ticks = match idle_ticks {
                    _ if !s.running.is_empty() || !s.connected => Some(0),
                    Some(n) => Some(n + 1),
                    None => None,
                };
                let mut st = runner.state.lock().unwrap_or_else(|e| e.into_inner());
                // The retry of a failing journal rides on this tick.
                if st.degraded().is_some() {
                    st.retry_held();
                }
                s.journal_backlog = st.backlog();
                s.open_invocations = st.open_count();
                s.journal_degraded = st.degraded().map(str::to_string);
                s.journal_held = st.held_count();
                s.updated_at = chrono::Utc::now().to_rfc3339();
                s
            };
            // Changes nothing waited for (acks, a schedule's close) reach the
            // disk within a tick.
            runner.flush().await;
            // Off the event loop: /proc reads and a file write (issue #21).
            let d = dir.clone();
            let shed = idle_ticks.is_some_and(|n| n >= selfcheck::SHED_AFTER_IDLE_TICKS);
            if shed {
                idle_ticks = None;
            }
            let _ = tokio::task::spawn_blocking(move || {
                let mut snapshot = snapshot;
                if shed {
                    let bytes = selfcheck::shed_cold_code();
                    tracing::debug!(bytes, "idle: cold code pages given back to the kernel");
                }
                selfcheck::release_free_memory();
                snapshot.figures = figures::snapshot();
                service::write_status(&d, &snapshot)
            })
            .await;
            if shutdown.is_cancelled() {
                return;
            }
            tokio::select! {
                _ = shutdown.cancelled() => {}
                _ = tokio::time::sleep(service::LOOP_TICK) => {}
            }
        }
    });
}

/// Checks the agent's own usage every [`selfcheck::CHECK_EVERY`], keeps
/// the status file's figures current, and resolves with what stayed over
/// its ceiling (the agent then exits to be restarted, see [`selfcheck`]).
fn spawn_self_check(
    limits: selfcheck::Limits,
    status: SharedStatus,
    shutdown: CancellationToken,
) -> tokio::sync::watch::Receiver<Option<&'static str>> {
    let (tx, rx) = tokio::sync::watch::channel(None);
    set_status(&status, |s| {
        s.memory_max_bytes = limits.memory_max_bytes;
        s.cpu_max_percent = limits.cpu_max_percent;
    });
    tokio::spawn(async move {
        let mut monitor = selfcheck::Monitor::new(limits);
        let mut tick = tokio::time::interval(selfcheck::CHECK_EVERY);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tick.tick() => {}
            }
            let Some(usage) = selfcheck::read_usage() else { return };
            let (sample, verdict) = monitor.observe(std::time::Instant::now(), usage);
            set_status(&status, |s| {
                s.rss_bytes = sample.rss_bytes;
                s.cpu_percent = sample.cpu_percent.map(|p| (p * 10.0).round() / 10.0);
            });
            let (rss, max) = (sample.rss_bytes, limits.memory_max_bytes);
            match verdict {
                selfcheck::Verdict::Within => {}
                selfcheck::Verdict::Over { what, strikes } => {
                    tracing::warn!(
                        what,
                        strikes,
                        rss_bytes = rss,
                        memory_max_bytes = max,
                        cpu_percent = sample.cpu_percent,
                        cpu_max_percent = limits.cpu_max_percent,
                        "agent over its own ceiling"
                    )
                }
                selfcheck::Verdict::Restart { what } => {
                    tracing::error!(
                        what,
                        rss_bytes = rss,
                        memory_max_bytes = max,
                        cpu_percent = sample.cpu_percent,
                        cpu_max_percent = limits.cpu_max_percent,
                        "agent stayed over its own ceiling; exiting to be restarted (runs in flight continue under their supervisors)"
                    );
                    let _ = tx.send(Some(what));
                    return;
                }
            }
        }
    });
    rx
}

/// What one connection attempt needs from the agent.
struct Ctx<'a> {
    config: &'a AgentConfig,
    url: &'a HubUrl,
    tls: &'a Arc<rustls::ClientConfig>,
    runner: &'a Arc<Runner>,
    live: &'a Arc<service::Liveness>,
    status: &'a SharedStatus,
    shutdown: &'a CancellationToken,
}

/// Registers with the configured activation and returns the identity,
/// without serving (for `deckhand-agent register`). Already registered:
/// returns the stored identity.
pub async fn register(config: &AgentConfig) -> Result<Identity, AgentError> {
    ensure_state_dir(&config.state_dir)?;
    if let Some(id) = identity::load(&config.state_dir)? {
        return Ok(id);
    }
    let url = HubUrl::parse_list(&config.hub)?.swap_remove(0);
    let tls = crate::tls::client_config_with_cert(
        config.ca_file.as_deref(),
        config.client_cert.as_ref().map(|(c, k)| (c.as_path(), k.as_path())),
    )?;
    let mut ws = transport::dial_via(&url, &tls, config.insecure_loopback, config.proxy.for_host(&url.host)).await?;
    let id = register_on(&mut ws, config).await?;
    let _ = ws.close(None).await;
    Ok(id)
}

async fn register_on(ws: &mut Ws, config: &AgentConfig) -> Result<Identity, AgentError> {
    let Some((activation_id, activation_code)) = config.activation.clone() else {
        return Err(AgentError::NotRegistered(config.state_dir.clone()));
    };
    send(ws, &AgentMsg::Register { protocol: PROTOCOL_VERSION, activation_id, activation_code, facts: identity::host_facts() }).await?;
    match recv(ws).await? {
        HubMsg::Registered { instance_id, token } => {
            let id = Identity { instance_id, token, hub: config.hub.clone() };
            identity::save(&config.state_dir, &id)?;
            tracing::info!(instance_id = %id.instance_id, "registered with hub");
            Ok(id)
        }
        HubMsg::Error { code, message, .. } => Err(AgentError::Refused { code, message }),
        other => Err(AgentError::Lost(format!("unexpected answer to register: {other:?}"))),
    }
}

async fn send(ws: &mut Ws, msg: &AgentMsg) -> Result<(), AgentError> {
    let text = protocol::encode(msg)?;
    figures::frame_out(text.len());
    protocol::frames::send_text(ws, text).await?;
    Ok(())
}

/// Next hub message; garbage from the hub is logged and skipped.
async fn recv(ws: &mut Ws) -> Result<HubMsg, AgentError> {
    loop {
        match ws.next().await {
            None => return Err(AgentError::Lost("hub closed the connection".into())),
            Some(Err(e)) => return Err(e.into()),
            Some(Ok(Message::Text(t))) => {
                figures::frame_in(t.len());
                match protocol::decode::<HubMsg>(t.as_str()) {
                    Ok(m) => return Ok(m),
                    Err(e) => tracing::warn!(error = %e, "ignored malformed hub frame"),
                }
            }
            Some(Ok(Message::Close(_))) => return Err(AgentError::Lost("hub closed the connection".into())),
            Some(Ok(_)) => {}
        }
    }
}

async fn connect_and_serve(
    ctx: &Ctx<'_>,
    identity: &mut Option<Identity>,
    live_rx: &mut mpsc::Receiver<LiveChunk>,
    backoff: &mut Backoff,
) -> Result<(), AgentError> {
    let (config, url, tls, runner) = (ctx.config, ctx.url, ctx.tls, ctx.runner);
    let mut ws = transport::dial_via(url, tls, config.insecure_loopback, config.proxy.for_host(&url.host)).await?;
    let mut facts = identity::host_facts();
    facts.journal_degraded = journal_degraded(runner);
    let degraded_told = facts.journal_degraded.is_some();
    // The saved identity is the truth: a credential rotated during the
    // previous connection was saved there, not into this copy.
    if let Some(saved) = identity::load(&config.state_dir)? {
        *identity = Some(saved);
    }
    let id = match identity.clone() {
        Some(id) => id,
        None => {
            let id = register_on(&mut ws, config).await?;
            *identity = Some(id.clone());
            id
        }
    };
    runner.set_instance_id(&id.instance_id);
    send(&mut ws, &AgentMsg::Hello { protocol: PROTOCOL_VERSION, instance_id: id.instance_id.clone(), token: id.token.clone(), facts })
        .await?;
    let hb = match tokio::time::timeout(transport::CONNECT_TIMEOUT, recv(&mut ws)).await {
        Err(_) => return Err(AgentError::Lost("no welcome from hub".into())),
        Ok(r) => match r? {
            HubMsg::Welcome { heartbeat_secs, .. } => Duration::from_secs(heartbeat_secs.clamp(1, 3600)),
            HubMsg::Error { code, message, .. } => return Err(AgentError::Refused { code, message }),
            other => return Err(AgentError::Lost(format!("unexpected answer to hello: {other:?}"))),
        },
    };
    tracing::info!(instance_id = %id.instance_id, hub = %url.ws_url(), "connected");
    settle_update(&config.state_dir, &mut ws).await?;
    figures::connected();
    set_status(ctx.status, |s| {
        s.connected = true;
        s.instance_id = id.instance_id.clone();
    });
    let started = tokio::time::Instant::now();
    let result = session(ctx, &mut ws, live_rx, hb, degraded_told).await;
    // The back-off starts over only after a session that proved the hub
    // healthy by lasting; one that fails at once (a hub whose database
    // disk is full accepts hello but not our reports) keeps the delays
    // growing, so a fleet does not reconnect several times a second.
    if started.elapsed() >= HEALTHY_SESSION {
        backoff.reset();
    }
    result
}

/// A session that lasted this long resets the reconnect back-off.
const HEALTHY_SESSION: Duration = Duration::from_secs(10);

/// The journal's trouble, as told to the hub in the hello facts (bounded).
fn journal_degraded(runner: &Runner) -> Option<String> {
    let mut why = runner.state.lock().unwrap_or_else(|e| e.into_inner()).degraded()?.to_string();
    protocol::truncate_text(&mut why, protocol::MAX_DEGRADED_TEXT);
    Some(why)
}

/// `degraded_told`: whether this connection's hello said the journal was failing.
async fn session(
    ctx: &Ctx<'_>,
    ws: &mut Ws,
    live_rx: &mut mpsc::Receiver<LiveChunk>,
    hb: Duration,
    degraded_told: bool,
) -> Result<(), AgentError> {
    let (runner, shutdown) = (ctx.runner, ctx.shutdown);
    let mut stamp = tokio::time::interval(service::LOOP_TICK);
    // Reports the hub has not acknowledged are sent again on every connection.
    let mut sent_upto = 0u64;
    let mut ticker = tokio::time::interval(hb);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Nothing from the hub for two heartbeats: the link is dead.
    let dead_after = hb * 2;
    let mut last_heard = tokio::time::Instant::now();
    // An invocation arrived that the journal could not take.
    let mut resync_owed = false;
    // File deliveries' chunk pulls go out on this connection; those asked
    // on the previous one are asked again.
    let mut file_requests = runner.files.requests().await;
    for (invoke_id, seq) in runner.files.outstanding() {
        send(ws, &AgentMsg::FileChunkRequest { invoke_id, seq }).await?;
    }
    // Fires of windowed periodic invocations waiting for the hub's grant:
    // asked again on this connection (a restarted hub answers from its store).
    let mut fire_requests = runner.grants.requests().await;
    for ((invoke_id, record_seq), scheduled) in runner.grants.outstanding() {
        send(ws, &AgentMsg::FireRequest { invoke_id, record_seq, scheduled }).await?;
    }
    // A build being downloaded (self-update).
    let mut download: Option<update::Download> = None;
    loop {
        ctx.live.stamp();
        // Send whatever is pending beyond what this connection already sent.
        // Only reports on disk go out: one sync (off the event loop) for
        // all that are waiting.
        if runner.state().has_unsynced_reports() {
            runner.flush().await;
        }
        let batch: Vec<(u64, protocol::RecordReport)> = {
            let st = runner.state();
            let below = st.sendable_below();
            st.pending().filter(|(id, _)| **id > sent_upto && **id < below).take(64).map(|(id, r)| (*id, r.clone())).collect()
        };
        for (report_id, report) in batch {
            send(ws, &AgentMsg::Report { report_id, report }).await?;
            sent_upto = report_id;
        }
        tokio::select! {
            _ = shutdown.cancelled() => {
                let _ = ws.close(None).await;
                return Ok(());
            }
            _ = runner.outbox_ready.notified() => {}
            _ = stamp.tick() => {
                let healthy = runner.state.lock().unwrap_or_else(|e| e.into_inner()).degraded().is_none();
                if resync_owed && healthy {
                    return Err(AgentError::Lost("journal writable again; reconnecting to be sent what could not be accepted".into()));
                }
                // The hub learns of the journal's state from the hello facts:
                // a change is worth a reconnect (rare: once per episode each way).
                if healthy == degraded_told {
                    return Err(AgentError::Lost("journal state changed; reconnecting to tell the hub".into()));
                }
            }
            _ = ticker.tick() => {
                if last_heard.elapsed() > dead_after {
                    return Err(AgentError::Lost(format!("no frame from hub for {:?}", last_heard.elapsed())));
                }
                let sent_ms = chrono::Utc::now().timestamp_millis().max(0) as u64;
                send(ws, &AgentMsg::Heartbeat { sent_ms }).await?;
            }
            Some((invoke_id, seq)) = file_requests.recv() => {
                send(ws, &AgentMsg::FileChunkRequest { invoke_id, seq }).await?;
            }
            Some(((invoke_id, record_seq), scheduled)) = fire_requests.recv() => {
                send(ws, &AgentMsg::FireRequest { invoke_id, record_seq, scheduled }).await?;
            }
            Some(chunk) = live_rx.recv() => {
                let data_b64 = base64::engine::general_purpose::STANDARD.encode(&chunk.data);
                send(ws, &AgentMsg::Output { invoke_id: chunk.invoke_id, record_seq: chunk.record_seq, offset: chunk.offset, data_b64 }).await?;
            }
            msg = recv(ws) => {
                last_heard = tokio::time::Instant::now();
                match msg? {
                    HubMsg::Invoke { invocation } => {
                        let invoke_id = invocation.invoke_id.clone();
                        // Journal first; ack only what is durably ours.
                        match runner.accept(*invocation).await {
                            Ok(()) => send(ws, &AgentMsg::InvokeAck { invoke_id }).await?,
                            Err(e) => {
                                // Not acknowledged: the hub keeps it for us. Once the
                                // journal works again we reconnect, and it is re-sent.
                                if !resync_owed {
                                    tracing::warn!(error = %e, "cannot journal an invocation; not accepting it until the journal can be written");
                                }
                                resync_owed = true;
                            }
                        }
                    }
                    HubMsg::Stop { invoke_id } => runner.stop(&invoke_id),
                    HubMsg::FileChunk { invoke_id, seq, data_b64, error } => runner.files.answered(&invoke_id, seq, &data_b64, &error),
                    HubMsg::FireAnswer { invoke_id, record_seq, granted, error_code, error_info } => {
                        runner.grants.answered(&invoke_id, record_seq, granted, &error_code, &error_info)
                    }
                    HubMsg::ReportAck { report_id } => {
                        runner.state.lock().unwrap_or_else(|e| e.into_inner()).ack(report_id)?;
                        figures::report_acked();
                    }
                    HubMsg::HeartbeatAck { .. } => set_status(ctx.status, |s| s.last_heartbeat_ack = chrono::Utc::now().to_rfc3339()),
                    HubMsg::Error { code, message, fatal } => {
                        tracing::warn!(code, message, fatal, "hub reported an error");
                        if fatal {
                            return Err(AgentError::Refused { code, message });
                        }
                    }
                    HubMsg::RotateCredential { token } => {
                        // Save first (atomic rename, 0600), then confirm:
                        // until the hub hears back, both tokens work.
                        let mut id = identity::load(&ctx.config.state_dir)?.ok_or_else(|| AgentError::NotRegistered(ctx.config.state_dir.clone()))?;
                        id.token = token;
                        identity::save(&ctx.config.state_dir, &id)?;
                        send(ws, &AgentMsg::CredentialSaved).await?;
                        tracing::info!(instance_id = %id.instance_id, "credential rotated");
                    }
                    HubMsg::UpdateOffer { version, size, sha256, signature } => {
                        if let Some(d) = download.take() {
                            d.abandon();
                        }
                        match begin_update(ctx.config, &version, size, &sha256, &signature) {
                            Ok(None) => {}
                            Ok(Some(d)) => {
                                tracing::info!(version = %d.offer.version, size, "downloading agent update");
                                send(ws, &AgentMsg::UpdateFetch { version: d.offer.version.clone(), offset: 0 }).await?;
                                download = Some(d);
                            }
                            Err(e) => update_failed(ctx.config, ws, &version, &e).await?,
                        }
                    }
                    HubMsg::UpdateChunk { version, offset, data_b64 } => {
                        let Some(d) = download.as_mut().filter(|d| d.offer.version == version) else { continue };
                        let appended = base64::engine::general_purpose::STANDARD
                            .decode(data_b64.as_bytes())
                            .map_err(|_| update::UpdateError::BadOffer { field: "chunk", why: "not base64".into() })
                            .and_then(|data| d.append(offset, &data));
                        match appended {
                            Err(e) => {
                                if let Some(d) = download.take() {
                                    d.abandon();
                                }
                                update_failed(ctx.config, ws, &version, &e).await?;
                            }
                            Ok(()) if d.complete() => {
                                if let Some(d) = download.take() {
                                    finish_update(ctx.config, ws, d).await?;
                                }
                            }
                            Ok(()) => send(ws, &AgentMsg::UpdateFetch { version, offset: d.received() }).await?,
                        }
                    }
                    HubMsg::Welcome { .. } | HubMsg::Registered { .. } => {}
                }
            }
        }
    }
}

/// Checks an offer: `Ok(None)` when there is nothing to do (already this
/// version), a started download when it is acceptable.
fn begin_update(
    config: &AgentConfig,
    version: &str,
    size: u64,
    sha256: &str,
    signature: &str,
) -> Result<Option<update::Download>, update::UpdateError> {
    if version == identity::agent_version() {
        return Ok(None);
    }
    if !cfg!(unix) {
        return Err(update::UpdateError::Unsupported);
    }
    let key = config.update_key.as_ref().ok_or(update::UpdateError::NoKey)?;
    let exe = config.exe.as_deref().ok_or(update::UpdateError::Unsupported)?;
    let offer = update::Offer::parse(version, size, sha256, signature)?;
    if update::load_failed(&config.state_dir).is_some_and(|f| f.version == offer.version) {
        return Err(update::UpdateError::AlreadyFailed(offer.version));
    }
    update::Download::start(exe, offer, key).map(Some)
}

/// Records and reports a failed update; the agent stays on its version.
async fn update_failed(config: &AgentConfig, ws: &mut Ws, version: &str, e: &update::UpdateError) -> Result<(), AgentError> {
    let mut version = version.to_string();
    protocol::truncate_text(&mut version, 64);
    let mut error = e.to_string();
    protocol::truncate_text(&mut error, protocol::MAX_UPDATE_TEXT);
    tracing::warn!(error = %error, "agent update refused or failed; staying on this version");
    // Remembered only when trying the build cost something (a trial, a
    // swap): a refused signature or digest is checked again cheaply, and a
    // corrected build under the same version must still be accepted.
    if matches!(e, update::UpdateError::Trial(_) | update::UpdateError::Io { .. })
        && update::save_failed(&config.state_dir, &version, &error).is_ok()
    {
        update::mark_failed_reported(&config.state_dir);
    }
    send(ws, &AgentMsg::UpdateResult { version, ok: false, error }).await
}

/// The whole build is here: verify, try, swap, and start it in place.
async fn finish_update(config: &AgentConfig, ws: &mut Ws, d: update::Download) -> Result<(), AgentError> {
    let version = d.offer.version.clone();
    let Some(exe) = config.exe.clone() else { return update_failed(config, ws, &version, &update::UpdateError::Unsupported).await };
    let staged = match d.finish() {
        Ok(p) => p,
        Err(e) => return update_failed(config, ws, &version, &e).await,
    };
    let args = update::trial_args(std::env::args_os().skip(1));
    if let Err(e) = update::trial(&staged, &args, &version).await {
        let _ = std::fs::remove_file(&staged);
        return update_failed(config, ws, &version, &e).await;
    }
    let deadline = chrono::Utc::now().timestamp().saturating_add(update::SWAP_DEADLINE.as_secs() as i64);
    let pending = update::Pending { from: identity::agent_version(), to: version.clone(), deadline, starts: 0 };
    if let Err(e) = update::save_pending(&config.state_dir, &pending).and_then(|()| update::install(&exe, &staged)) {
        update::clear_pending(&config.state_dir);
        return update_failed(config, ws, &version, &e).await;
    }
    tracing::info!(from = %pending.from, to = %version, "agent update installed; restarting into it");
    let _ = ws.close(None).await;
    restart_into(config, &exe, &version)
}

/// Replaces this process with `exe` (Unix). If that fails, the previous
/// binary is put back and the failure is kept for the next session.
fn restart_into(config: &AgentConfig, exe: &std::path::Path, version: &str) -> Result<(), AgentError> {
    #[cfg(unix)]
    {
        let e = update::restart_in_place(exe);
        tracing::error!(error = %e, "cannot start the new agent binary; rolling back");
        update::clear_pending(&config.state_dir);
        let _ = update::save_failed(&config.state_dir, version, &e.to_string());
        update::rollback(exe)?;
        Err(AgentError::Update(e))
    }
    #[cfg(not(unix))]
    {
        let _ = (config, exe, version);
        Err(AgentError::Update(update::UpdateError::Unsupported))
    }
}

/// After a welcome: a swap in progress is complete, a failure not yet
/// told is told.
async fn settle_update(state_dir: &std::path::Path, ws: &mut Ws) -> Result<(), AgentError> {
    if let Some(p) = update::load_pending(state_dir).filter(|p| p.to == identity::agent_version()) {
        update::clear_pending(state_dir);
        tracing::info!(from = %p.from, to = %p.to, "agent update complete");
        send(ws, &AgentMsg::UpdateResult { version: p.to, ok: true, error: String::new() }).await?;
    }
    if let Some(f) = update::load_failed(state_dir).filter(|f| !f.reported) {
        send(ws, &AgentMsg::UpdateResult { version: f.version, ok: false, error: f.error }).await?;
        update::mark_failed_reported(state_dir);
    }
    Ok(())
}

/// Just swapped in: if this binary has not reached the hub by the
/// deadline, put the previous one back and start it.
fn spawn_update_guard(config: &AgentConfig) {
    let Some(p) = update::load_pending(&config.state_dir) else { return };
    let (Some(exe), true) = (config.exe.clone(), p.to == identity::agent_version()) else {
        // Not the binary the marker expects: a rollback already happened.
        update::clear_pending(&config.state_dir);
        return;
    };
    let state_dir = config.state_dir.clone();
    let config = config.clone();
    tokio::spawn(async move {
        let wait = (p.deadline - chrono::Utc::now().timestamp()).clamp(0, update::SWAP_DEADLINE.as_secs() as i64);
        tokio::time::sleep(Duration::from_secs(wait as u64)).await;
        if update::load_pending(&state_dir).as_ref() != Some(&p) {
            return;
        }
        tracing::error!(version = %p.to, back_to = %p.from, "the new agent did not reach the hub in time; rolling back");
        update::clear_pending(&state_dir);
        let why =
            format!("version {} did not reach the hub within {:?} of starting; rolled back to {}", p.to, update::SWAP_DEADLINE, p.from);
        let _ = update::save_failed(&state_dir, &p.to, &why);
        match update::rollback(&exe) {
            Ok(()) => {
                let _ = restart_into(&config, &exe, &p.from);
            }
            Err(e) => tracing::error!(error = %e, "rollback failed"),
        }
    });
}

/// `deckhand-agent __update-trial`: this binary, not yet installed, says a
/// trial hello to the hub with the agent's identity and prints its version
/// once welcomed.
pub async fn trial_hello(config: &AgentConfig) -> Result<String, AgentError> {
    let id = identity::load(&config.state_dir)?.ok_or_else(|| AgentError::NotRegistered(config.state_dir.clone()))?;
    let tls = crate::tls::client_config_with_cert(
        config.ca_file.as_deref(),
        config.client_cert.as_ref().map(|(c, k)| (c.as_path(), k.as_path())),
    )?;
    let mut last = AgentError::Lost("no hub URL".into());
    for url in HubUrl::parse_list(&config.hub)? {
        let mut ws = match transport::dial_via(&url, &tls, config.insecure_loopback, config.proxy.for_host(&url.host)).await {
            Ok(ws) => ws,
            Err(e) => {
                last = e.into();
                continue;
            }
        };
        let version = identity::agent_version();
        let hello = AgentMsg::Trial {
            protocol: PROTOCOL_VERSION,
            instance_id: id.instance_id.clone(),
            token: id.token.clone(),
            agent_version: version.clone(),
        };
        send(&mut ws, &hello).await?;
        match tokio::time::timeout(transport::CONNECT_TIMEOUT, recv(&mut ws)).await {
            Ok(Ok(HubMsg::Welcome { .. })) => {
                let _ = ws.close(None).await;
                return Ok(version);
            }
            Ok(Ok(HubMsg::Error { code, message, .. })) => last = AgentError::Refused { code, message },
            Ok(Ok(_)) => last = AgentError::Lost("unexpected answer to trial".into()),
            Ok(Err(e)) => last = e,
            Err(_) => last = AgentError::Lost("no welcome from hub".into()),
        }
    }
    Err(last)
}
