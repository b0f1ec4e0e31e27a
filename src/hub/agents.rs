//! The agent WebSocket endpoint and the registry of connected agents.
//!
//! Owns: the per-connection state machine (register/hello → session),
//! delivery of invocations and stops to connected agents, heartbeat
//! supervision, and acknowledging reports only after the store commits.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures_util::StreamExt;
use hyper_util::rt::TokioIo;
use sha2::{Digest, Sha256};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};

use super::Hub;
use super::metrics::Direction;
use super::store::{InstanceRow, ReportEffect, WriteOp, now_str};
use crate::protocol::{self, AgentMsg, HubMsg, MAX_FRAME_BYTES, OLDEST_AGENT_PROTOCOL, PROTOCOL_VERSION};

/// Frames queued for one agent. A full queue means the agent is not
/// reading; we drop the connection and let it resync on reconnect rather
/// than buffer without bound. The queue holds boxed messages in a flume
/// channel, which allocates room only for messages queued: tokio's
/// channel allocated a block of 32 [`HubMsg`] slots (2.8 KB) and a 512-byte
/// cache-padded header for every connected agent (issue #21).
const OUTBOX: usize = 256;
/// tungstenite's read buffer per connection (see [`upgrade`]).
const WS_READ_BUFFER: usize = 512;

/// An agent's WebSocket, on the connection hyper hands over after the
/// upgrade. tokio-tungstenite directly rather than axum's wrapper, whose
/// messages cannot be sent as fragments (`protocol::frames`).
type WebSocket = WebSocketStream<TokioIo<hyper::upgrade::Upgraded>>;
/// First frame must arrive within this.
const HELLO_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest frame accepted before the agent has authenticated: `register`
/// and `hello` carry ids and host facts, a few KiB at most.
pub const MAX_PRE_HELLO_FRAME: usize = 64 * 1024;
/// Store writes one session may have in flight (submitted, not yet
/// committed) before it stops reading the agent's frames.
const MAX_IN_FLIGHT: usize = 64;
/// Invocation ids one session remembers as delivered to its agent; live
/// output is accepted only for those (a rogue agent cannot fill the hub
/// with output for invocations that are not its own).
const MAX_SESSION_INVOCATIONS: usize = 10_000;
/// How often a session asks whether its agent may be offered an update.
const UPDATE_CHECK: Duration = Duration::from_secs(1);
/// Fire requests one session may make per second (each is a store
/// transaction). A well-behaved agent asks once per fire and again every
/// few seconds while held; beyond this a request is dropped unanswered and
/// the agent's next ask gets through.
const FIRE_REQUESTS_PER_SEC: u32 = 50;

#[derive(Clone)]
struct Session {
    conn_id: u64,
    tx: flume::Sender<Box<HubMsg>>,
    /// The protocol the agent said it speaks (what it can be sent).
    protocol: u32,
}

/// Connected agents by instance id.
#[derive(Default)]
pub struct Registry {
    inner: Mutex<HashMap<String, Session>>,
    next_conn: AtomicU64,
}

impl Registry {
    /// A session id, unique within this process (the store keeps it with
    /// the instance's online state).
    fn new_session(&self) -> u64 {
        self.next_conn.fetch_add(1, Ordering::Relaxed) + 1
    }

    fn insert(&self, instance_id: &str, conn_id: u64, tx: flume::Sender<Box<HubMsg>>, protocol: u32) {
        let old = self.lock().insert(instance_id.to_string(), Session { conn_id, tx, protocol });
        if old.is_some() {
            // The old socket's task notices its sender is gone when it next sends.
            tracing::info!(instance_id, "agent reconnected; replacing older session");
        }
    }

    fn remove(&self, instance_id: &str, conn_id: u64) -> bool {
        let mut m = self.lock();
        if m.get(instance_id).is_some_and(|s| s.conn_id == conn_id) {
            m.remove(instance_id);
            return true;
        }
        false
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Session>> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn is_online(&self, instance_id: &str) -> bool {
        self.lock().contains_key(instance_id)
    }

    /// The protocol version of the agent's session here, if connected.
    pub fn protocol(&self, instance_id: &str) -> Option<u32> {
        self.lock().get(instance_id).map(|s| s.protocol)
    }

    pub fn count(&self) -> usize {
        self.lock().len()
    }

    /// Queue a frame for a connected agent; false if not connected (the
    /// store still holds the work, delivered on reconnect).
    pub fn send(&self, instance_id: &str, msg: HubMsg) -> bool {
        let session = self.lock().get(instance_id).cloned();
        let Some(s) = session else { return false };
        match s.tx.try_send(Box::new(msg)) {
            Ok(()) => true,
            Err(_) => {
                tracing::warn!(instance_id, "agent outbox full or closed; dropping session to resync");
                self.remove(instance_id, s.conn_id);
                false
            }
        }
    }
}

/// A fresh random credential (256 bits, hex).
pub fn new_token() -> String {
    uuid::Uuid::new_v4().simple().to_string() + &uuid::Uuid::new_v4().simple().to_string()
}

pub fn hash_token(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// Comparison time independent of where the strings differ.
pub fn constant_time_eq(a: &str, b: &str) -> bool {
    a.len() == b.len() && a.bytes().zip(b.bytes()).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

pub async fn upgrade(
    State(hub): State<Arc<Hub>>,
    ConnectInfo(super::server::Peer(peer, client_cert)): ConnectInfo<super::server::Peer>,
    mut req: Request,
) -> Response {
    if hub.config.agent_client_ca.is_some() && !client_cert {
        tracing::warn!(%peer, "agent connection without a client certificate refused (mTLS required)");
        return (StatusCode::FORBIDDEN, "a client certificate signed by the agent CA is required").into_response();
    }
    let accept = match accept_key(req.method(), req.headers()) {
        Ok(accept) => accept,
        Err(problem) => return (StatusCode::BAD_REQUEST, problem).into_response(),
    };
    let Some(upgrading) = req.extensions_mut().remove::<hyper::upgrade::OnUpgrade>() else {
        return (StatusCode::UPGRADE_REQUIRED, "this connection cannot be upgraded").into_response();
    };
    // Counted as pending for its address until its hello (`edge::HelloSlot`).
    let pending = req.extensions_mut().remove::<super::edge::HelloSlot>().and_then(|s| s.take());
    // Small buffers: at 10,000 connections the tungstenite defaults
    // (128 KiB each) would dominate hub memory. The read buffer is also the
    // largest read tungstenite makes; rustls already holds 4 KiB of every
    // connection's incoming bytes, so a second 4 KiB copy bought nothing but
    // fewer reads of a large frame (issue #21). Agents send frames of at
    // most 1 KiB (`protocol::frames`); a larger frame (0.1.0) grows the
    // buffer, within `max_frame_size`.
    let mut config = WebSocketConfig::default();
    config.read_buffer_size = WS_READ_BUFFER;
    config.write_buffer_size = 0;
    config.max_message_size = Some(MAX_FRAME_BYTES);
    config.max_frame_size = Some(MAX_FRAME_BYTES);
    // The connection gets a task of its own, which holds only the socket
    // and the session (issue #21): spawned once the upgrade is done, so its
    // future has no room for the upgrade's state (a task is allocated at
    // the size of its largest state, for the connection's whole life).
    tokio::spawn(async move {
        match upgrading.await {
            Ok(upgraded) => {
                let ws = WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, Some(config)).await;
                tokio::spawn(serve(hub, ws, peer, pending));
            }
            Err(e) => tracing::info!(%peer, error = %e, "agent WebSocket upgrade failed"),
        }
    });
    let mut response = StatusCode::SWITCHING_PROTOCOLS.into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    headers.insert(header::SEC_WEBSOCKET_ACCEPT, accept);
    response
}

/// Checks an agent's upgrade request (RFC 6455 §4.2.1) and derives the
/// `Sec-WebSocket-Accept` it is owed; the problem otherwise (the request's
/// values are not quoted).
fn accept_key(method: &axum::http::Method, headers: &HeaderMap) -> Result<HeaderValue, &'static str> {
    let has_token = |name: header::HeaderName, token: &str| {
        headers.get_all(name).iter().any(|v| v.to_str().is_ok_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token))))
    };
    if method != axum::http::Method::GET {
        return Err("a WebSocket upgrade is a GET");
    }
    if !has_token(header::CONNECTION, "upgrade") || !has_token(header::UPGRADE, "websocket") {
        return Err("expected Connection: upgrade and Upgrade: websocket");
    }
    if headers.get(header::SEC_WEBSOCKET_VERSION).map(HeaderValue::as_bytes) != Some(b"13") {
        return Err("Sec-WebSocket-Version must be 13");
    }
    let Some(key) = headers.get(header::SEC_WEBSOCKET_KEY) else { return Err("Sec-WebSocket-Key is missing") };
    // The key is 16 random bytes in base64 (24 characters).
    if key.len() != 24 {
        return Err("Sec-WebSocket-Key must be 24 characters");
    }
    HeaderValue::from_str(&tokio_tungstenite::tungstenite::handshake::derive_accept_key(key.as_bytes()))
        .map_err(|_| "Sec-WebSocket-Key cannot be answered")
}

/// The connection's task: [`connection`], its end logged. Not an `async fn`:
/// that would keep its own copy of the socket beside the one the
/// connection future holds.
fn serve(hub: Arc<Hub>, socket: WebSocket, peer: SocketAddr, pending: Option<super::edge::PendingSlot>) -> impl Future<Output = ()> + Send {
    use futures_util::FutureExt;
    connection(hub, socket, peer, pending).map(move |r| {
        if let Err(e) = r {
            tracing::info!(%peer, error = %e, "agent connection ended");
        }
    })
}

#[derive(Debug, thiserror::Error)]
enum ConnError {
    #[error("closed by peer")]
    Closed,
    #[error("no hello within {0:?}")]
    HelloTimeout(Duration),
    #[error("refused: {0}")]
    Refused(String),
    #[error("heartbeat lost")]
    HeartbeatLost,
    #[error("websocket: {0}")]
    Ws(#[from] tokio_tungstenite::tungstenite::Error),
    #[error("store: {0}")]
    Store(#[from] super::store::StoreError),
    #[error("encode: {0}")]
    Encode(#[from] protocol::FrameError),
}

/// Encodes `msg` now and sends it. The sending is boxed: every await of a
/// send in the session loop would otherwise reserve its 336 bytes in
/// every connection's future for the connection's whole life (issue
/// #21); the box lives only while a message goes out.
fn send<'a>(ws: &'a mut WebSocket, msg: &HubMsg) -> std::pin::Pin<Box<dyn Future<Output = Result<(), ConnError>> + Send + 'a>> {
    let text = outgoing(msg);
    Box::pin(async move { Ok(protocol::frames::send_text(ws, text?).await?) })
}

/// `msg` encoded, and counted as an outgoing frame.
fn outgoing(msg: &HubMsg) -> Result<String, protocol::FrameError> {
    let text = protocol::encode(msg)?;
    super::metrics::get().frame(Direction::Out, text.len());
    Ok(text)
}

/// Sends `msgs` in order and flushes once: the answers of writes that
/// committed together leave in one TLS record and one `writev` instead
/// of one each (issue #21). Boxed as [`send`] is.
fn send_all<'a>(ws: &'a mut WebSocket, msgs: Vec<HubMsg>) -> std::pin::Pin<Box<dyn Future<Output = Result<(), ConnError>> + Send + 'a>> {
    Box::pin(async move {
        for msg in &msgs {
            protocol::frames::feed_text(ws, outgoing(msg)?, protocol::frames::MAX_SENT_FRAME).await?;
        }
        Ok(futures_util::SinkExt::flush(ws).await?)
    })
}

/// Counts an incoming data frame (control frames are the transport's).
fn count_in(frame: &Message) {
    let len = match frame {
        Message::Text(t) => t.len(),
        Message::Binary(b) => b.len(),
        _ => return,
    };
    super::metrics::get().frame(Direction::In, len);
}

async fn refuse(ws: &mut WebSocket, code: &str, message: String) -> ConnError {
    let _ = send(ws, &HubMsg::Error { code: code.into(), message: message.clone(), fatal: true }).await;
    let _ = ws.close(None).await;
    ConnError::Refused(format!("{code}: {message}"))
}

/// Ends a connection the store cannot serve: a full disk (or any store
/// failure) is told to the agent as `ServiceUnavailable`, so it backs off.
async fn unavailable(ws: &mut WebSocket, e: super::store::StoreError) -> ConnError {
    let message = if e.is_disk_full() {
        "the hub's database disk is full; retry later".to_string()
    } else {
        "the hub cannot use its database right now; retry later".to_string()
    };
    // Its own limiter: a flood of peer garbage must not hide this one.
    static STORE_WARNINGS: std::sync::OnceLock<super::edge::LogLimiter> = std::sync::OnceLock::new();
    let limiter = STORE_WARNINGS.get_or_init(|| super::edge::LogLimiter::new(Duration::from_secs(10), 10));
    if let Some(suppressed) = limiter.allow() {
        tracing::warn!(error = %e, suppressed, "agent turned away: store unavailable");
    }
    let _ = refuse(ws, "ServiceUnavailable", message).await;
    ConnError::Store(e)
}

/// The first frame of a connection: small, well formed, or the connection
/// is closed at once (issue #14). Nothing of the frame is logged or echoed.
async fn recv_first(ws: &mut WebSocket, peer: SocketAddr) -> Result<AgentMsg, ConnError> {
    loop {
        let Some(frame) = ws.next().await else { return Err(ConnError::Closed) };
        let frame = frame?;
        count_in(&frame);
        let problem = match frame {
            Message::Text(t) if t.len() > MAX_PRE_HELLO_FRAME => {
                format!("a first frame of {} bytes exceeds the limit of {MAX_PRE_HELLO_FRAME} bytes", t.len())
            }
            Message::Text(t) => match protocol::decode::<AgentMsg>(t.as_str()) {
                Ok(m) => return Ok(m),
                Err(e) => e.to_string(),
            },
            Message::Binary(_) => "binary frames are not part of the protocol".to_string(),
            Message::Close(_) => return Err(ConnError::Closed),
            _ => continue,
        };
        if let Some(suppressed) = super::edge::peer_warnings().allow() {
            tracing::warn!(%peer, problem, suppressed, "malformed first frame; closing");
        }
        return Err(refuse(ws, "MalformedFrame", problem).await);
    }
}

/// Next agent message, or the answer owed to a malformed frame (not fatal:
/// the agent has authenticated). Neither the answer nor the log quotes the
/// frame. The answer is returned, not sent here, and both are boxed, so
/// that the session's state while it waits stays small (issue #21).
async fn recv(ws: &mut WebSocket) -> Result<Result<Box<AgentMsg>, Box<HubMsg>>, ConnError> {
    loop {
        let Some(frame) = ws.next().await else { return Err(ConnError::Closed) };
        let frame = frame?;
        count_in(&frame);
        let malformed = |message: String| Ok(Err(Box::new(HubMsg::Error { code: "MalformedFrame".into(), message, fatal: false })));
        match frame {
            Message::Text(t) => match protocol::decode::<AgentMsg>(t.as_str()) {
                Ok(m) => return Ok(Ok(Box::new(m))),
                Err(e) => {
                    if let Some(suppressed) = super::edge::peer_warnings().allow() {
                        tracing::warn!(error = %e, suppressed, "rejected agent frame");
                    }
                    return malformed(e.to_string());
                }
            },
            Message::Close(_) => return Err(ConnError::Closed),
            Message::Binary(_) => return malformed("binary frames are not part of the protocol".into()),
            _ => {}
        }
    }
}

/// Refuses (fatally) an agent whose protocol version this hub does not speak.
async fn check_protocol(ws: &mut WebSocket, protocol: u32) -> Result<(), ConnError> {
    if protocol::hub_speaks(protocol) {
        return Ok(());
    }
    let message = format!("agent speaks protocol {protocol}, hub speaks {OLDEST_AGENT_PROTOCOL} to {PROTOCOL_VERSION}");
    Err(refuse(ws, "UnsupportedProtocol", message).await)
}

/// One agent connection, from its first frame to its end. Only what the
/// session needs stays in this future: the handshake, each message's
/// handling and the resync run in boxed futures that are freed when they
/// finish, so a connected, idle agent costs the hub a few KiB (issue #21).
///
/// Not an `async fn`: the future of one keeps its arguments twice, as
/// arguments and as the locals they are moved into (360 bytes a
/// connection); the async block uses them where they are.
#[allow(clippy::manual_async_fn)] // deliberately not an `async fn`: see above
fn connection(
    hub: Arc<Hub>,
    mut ws: WebSocket,
    peer: SocketAddr,
    pending: Option<super::edge::PendingSlot>,
) -> impl Future<Output = Result<(), ConnError>> + Send {
    async move {
        // Boxed in a statement of its own: a temporary lives to the end of its
        // statement, so `Box::pin(open(…)).await` would keep room for the
        // unboxed future across the await.
        let conn_id = hub.agents.new_session();
        let opening = Box::pin(open(&hub, &mut ws, peer, conn_id));
        let opened = opening.await;
        // Hello or not, the connection is no longer pending for its address.
        drop(pending);
        let Some((instance_id, facts, protocol)) = opened? else { return Ok(()) };
        let hb = hub.config.heartbeat;
        let (tx, rx) = flume::bounded(OUTBOX);
        // A stream keeps its waker registered between polls (a fresh
        // `recv_async` each turn of the session loop would allocate one).
        let mut rx = rx.into_stream();
        hub.agents.insert(&instance_id, conn_id, tx, protocol);
        tracing::info!(instance_id, %peer, "agent connected");
        let result = session(&hub, &mut ws, &instance_id, facts.as_deref(), &mut rx, hb).await;
        // Boxed, as `open`: the connection's future keeps no room for it.
        let ending = Box::pin(end(&hub, &mut ws, &instance_id, conn_id, result));
        ending.await
    }
}

/// The end of a session: a store failure told to the agent, the registry
/// entry and the instance's connected state removed, the socket closed.
async fn end(hub: &Hub, ws: &mut WebSocket, instance_id: &str, conn_id: u64, result: Result<(), ConnError>) -> Result<(), ConnError> {
    let result = match result {
        // Unacknowledged reports stay in the agent's journal; it sends them
        // again after its back-off, once space is back.
        Err(ConnError::Store(e)) => Err(unavailable(ws, e).await),
        other => other,
    };
    if hub.agents.remove(instance_id, conn_id) {
        let op = WriteOp::Disconnected { instance_id: instance_id.to_string(), hub_id: hub.id.clone(), session: conn_id };
        hub.writer.write(op).await?;
    }
    let _ = ws.close(None).await;
    tracing::info!(instance_id, "agent disconnected");
    result
}

/// The handshake: register (optionally), hello and its checks, `welcome`.
/// The agent's instance id, facts and protocol once it may start a
/// session; `None` for an update trial, which ends after `welcome`.
/// The facts are boxed (inline they are 200 bytes), and returned only when
/// the session needs them: for self-update offers.
async fn open(
    hub: &Hub,
    ws: &mut WebSocket,
    peer: SocketAddr,
    conn_id: u64,
) -> Result<Option<(String, Option<Box<protocol::HostFacts>>, u32)>, ConnError> {
    let first = tokio::time::timeout(HELLO_TIMEOUT, recv_first(ws, peer)).await.map_err(|_| ConnError::HelloTimeout(HELLO_TIMEOUT))??;
    let first = match first {
        AgentMsg::Register { protocol, activation_id, activation_code, facts } => {
            check_protocol(ws, protocol).await?;
            match register(hub, &activation_id, &activation_code, &facts, peer).await? {
                Ok((instance_id, token)) => send(ws, &HubMsg::Registered { instance_id, token }).await?,
                Err((code, msg)) => return Err(refuse(ws, code, msg).await),
            }
            tokio::time::timeout(HELLO_TIMEOUT, recv_first(ws, peer)).await.map_err(|_| ConnError::HelloTimeout(HELLO_TIMEOUT))??
        }
        other => other,
    };
    let (protocol, instance_id, token, facts, trial) = match first {
        AgentMsg::Hello { protocol, instance_id, token, facts } => (protocol, instance_id, token, facts, false),
        // A new agent binary proving it can reach us (self-update).
        AgentMsg::Trial { protocol, instance_id, token, agent_version: _ } => (protocol, instance_id, token, Default::default(), true),
        _ => return Err(refuse(ws, "ProtocolViolation", "first message must be hello or register".into()).await),
    };
    check_protocol(ws, protocol).await?;
    // Ids are ours (`mi-` + hex): anything else cannot be known, and is
    // refused before it reaches the store or a log line.
    if super::edge::shown_id(&instance_id) != instance_id {
        return Err(refuse(ws, "InvalidCredential", "malformed instance id".into()).await);
    }
    let known = hub.store.get_instance(&instance_id).await?;
    let presented = hash_token(&token);
    match known {
        Some(i) if constant_time_eq(&i.token_hash, &presented) => {}
        // The agent saved a rotated credential but its confirmation was
        // lost: the new one is now the only one.
        Some(i) if !i.pending_token_hash.is_empty() && constant_time_eq(&i.pending_token_hash, &presented) => {
            hub.store.promote_pending_token(&instance_id).await?;
            tracing::info!(instance_id, "rotated credential in use");
        }
        _ => {
            return Err(refuse(
                ws,
                "InvalidCredential",
                format!("unknown instance {} or wrong token", super::edge::shown_id(&instance_id)),
            )
            .await);
        }
    }
    let hb = hub.config.heartbeat;
    if trial {
        // Welcome and nothing else: the running agent keeps its session and
        // the store keeps its facts until the new binary really takes over.
        send(ws, &HubMsg::Welcome { protocol: PROTOCOL_VERSION, instance_id: instance_id.clone(), heartbeat_secs: hb.as_secs().max(1) })
            .await?;
        tracing::info!(instance_id, "agent update trial reached the hub");
        let _ = ws.close(None).await;
        return Ok(None);
    }
    if let Some(updates) = &hub.config.agent_updates {
        updates.connected(hub.store.as_ref(), &instance_id, &facts).await;
    }
    // Recorded before `welcome`: when the database cannot be written the
    // agent is refused before its back-off resets, so a fleet waits with
    // growing delays instead of reconnecting several times a second.
    let op = WriteOp::Connected {
        instance_id: instance_id.clone(),
        hub_id: hub.id.clone(),
        session: conn_id,
        facts: facts.clone(),
        ip: peer.ip().to_string(),
    };
    if let Err(e) = hub.writer.write(op).await {
        return Err(unavailable(ws, e).await);
    }
    send(ws, &HubMsg::Welcome { protocol: PROTOCOL_VERSION, instance_id: instance_id.clone(), heartbeat_secs: hb.as_secs().max(1) })
        .await?;
    // Only self-update reads the facts during a session: kept only when
    // updates are offered (200 bytes a connection otherwise; issue #21).
    let facts = hub.config.agent_updates.is_some().then(|| Box::new(facts));
    Ok(Some((instance_id, facts, protocol)))
}

async fn session(
    hub: &Hub,
    ws: &mut WebSocket,
    instance_id: &str,
    facts: Option<&crate::protocol::HostFacts>,
    rx: &mut flume::r#async::RecvStream<'static, Box<HubMsg>>,
    hb: Duration,
) -> Result<(), ConnError> {
    let mut mine = Delivered::default();
    let mut fire_budget = FireBudget::default();
    // Resync: everything owed to this instance, built by the delivery service.
    let owed = Box::pin(super::delivery::resync(hub, instance_id));
    let owed = owed.await?;
    for msg in owed {
        if let HubMsg::Invoke { invocation } = &msg {
            mine.note(&invocation.invoke_id);
        }
        send(ws, &msg).await?;
    }
    // Two missed heartbeats plus slack for a slow link.
    let dead_after = hb * 2 + Duration::from_secs(2);
    let mut deadline = tokio::time::Instant::now() + dead_after;
    // Writes submitted and not yet committed, oldest first: the next frame
    // is read meanwhile (issue #21), and each answer still goes out only
    // after its commit.
    let mut in_flight = futures_util::stream::FuturesOrdered::new();
    // Self-update: whether this agent may be offered a build now.
    // Only when updates are offered: an interval allocates its timer.
    let mut update_tick = hub.config.agent_updates.as_ref().map(|_| tokio::time::interval(UPDATE_CHECK));
    loop {
        tokio::select! {
            _ = hub.shutdown.cancelled() => return Ok(()),
            _ = tick(&mut update_tick), if update_tick.is_some() => {
                let offer = match (&hub.config.agent_updates, facts) {
                    (Some(u), Some(facts)) => u.offer_for(hub.store.as_ref(), instance_id, facts, chrono::Utc::now()).await,
                    _ => None,
                };
                if let Some(offer) = offer {
                    send(ws, &offer).await?;
                }
            }
            _ = tokio::time::sleep_until(deadline) => return Err(ConnError::HeartbeatLost),
            Some(committed) = futures_util::StreamExt::next(&mut in_flight), if !in_flight.is_empty() => {
                let mut msgs: Vec<HubMsg> = committed?;
                // The writes committed in the same batch are ready too. One
                // that failed ends the session, after the answers before it.
                let mut failed = None;
                while let Some(Some(more)) = futures_util::FutureExt::now_or_never(futures_util::StreamExt::next(&mut in_flight)) {
                    match more {
                        Ok(more) => msgs.extend(more),
                        Err(e) => {
                            failed = Some(e);
                            break;
                        }
                    }
                }
                if !msgs.is_empty() {
                    send_all(ws, msgs).await?;
                }
                if let Some(e) = failed {
                    return Err(e);
                }
            }
            out = futures_util::StreamExt::next(rx) => match out {
                Some(msg) => {
                    if let HubMsg::Invoke { invocation } = &*msg {
                        mine.note(&invocation.invoke_id);
                    }
                    send(ws, &msg).await?
                }
                // Registry replaced us (newer connection) or dropped us (slow).
                None => return Ok(()),
            },
            msg = recv(ws), if in_flight.len() < MAX_IN_FLIGHT => match msg? {
                Ok(msg) => {
                    deadline = tokio::time::Instant::now() + dead_after;
                    let handling = Box::pin(handle(hub, ws, instance_id, facts, &mine, &mut fire_budget, *msg));
                    if let Some(committing) = handling.await? {
                        in_flight.push_back(committing);
                    }
                }
                // Answered; as before, only a well-formed frame counts as a sign of life.
                Err(answer) => send(ws, &answer).await?,
            }
        }
    }
}

/// The next tick of an optional interval; never without one.
async fn tick(interval: &mut Option<tokio::time::Interval>) {
    match interval {
        Some(i) => {
            i.tick().await;
        }
        None => std::future::pending().await,
    }
}

/// A store write in flight and the frames to send the agent once it commits.
type Committing<'a> = std::pin::Pin<Box<dyn Future<Output = Result<Vec<HubMsg>, ConnError>> + Send + 'a>>;

/// Invocations delivered to this session's agent (bounded).
#[derive(Default)]
struct Delivered(std::collections::HashSet<String>);

impl Delivered {
    fn note(&mut self, invoke_id: &str) {
        if self.0.len() < MAX_SESSION_INVOCATIONS {
            self.0.insert(invoke_id.to_string());
        }
    }

    fn contains(&self, invoke_id: &str) -> bool {
        self.0.contains(invoke_id)
    }
}

/// Fire requests this session made in the current second.
#[derive(Default)]
struct FireBudget {
    second: Option<tokio::time::Instant>,
    used: u32,
}

impl FireBudget {
    fn allow(&mut self) -> bool {
        let now = tokio::time::Instant::now();
        if self.second.is_none_or(|s| now.duration_since(s) >= Duration::from_secs(1)) {
            self.second = Some(now);
            self.used = 0;
        }
        self.used += 1;
        self.used <= FIRE_REQUESTS_PER_SEC
    }
}

/// Answers one agent message. A message whose answer must wait for a commit
/// returns that wait (`Some`), already queued in the writer in order.
async fn handle<'h>(
    hub: &'h Hub,
    ws: &mut WebSocket,
    instance_id: &str,
    facts: Option<&crate::protocol::HostFacts>,
    mine: &Delivered,
    fire_budget: &mut FireBudget,
    msg: AgentMsg,
) -> Result<Option<Committing<'h>>, ConnError> {
    match msg {
        AgentMsg::FireRequest { invoke_id, record_seq, scheduled } => {
            if !fire_budget.allow() {
                if let Some(suppressed) = super::edge::peer_warnings().allow() {
                    tracing::warn!(instance_id, suppressed, limit = FIRE_REQUESTS_PER_SEC, "fire requests beyond the rate limit; dropped");
                }
                return Ok(None);
            }
            // Ids too long to be ours are refused unread; the store checks
            // the rest (a target of that invocation, the instant's skew, the
            // record number) with the invocation row locked.
            let outcome = if invoke_id.len() > protocol::report_limits::MAX_ID {
                crate::hub::store::FireOutcome::NotATarget
            } else {
                hub.store.fire_request(&invoke_id, instance_id, record_seq, &scheduled).await?
            };
            if let Some(msg) = super::delivery::fire_reply(instance_id, &invoke_id, record_seq, outcome) {
                send(ws, &msg).await?;
            }
        }
        AgentMsg::Heartbeat { sent_ms } => {
            hub.writer.write_lossy(WriteOp::Touch { instance_id: instance_id.to_string() });
            send(ws, &HubMsg::HeartbeatAck { sent_ms }).await?;
        }
        AgentMsg::InvokeAck { invoke_id } => {
            let committed = hub.writer.submit(WriteOp::Delivered { invoke_id, instance_id: instance_id.to_string() }).await?;
            return Ok(Some(Box::pin(async move {
                committed.await?;
                Ok(Vec::new())
            })));
        }
        AgentMsg::Report { report_id, report } => {
            // The hub enforces the caps itself: an agent cannot store more
            // than a well-behaved one would (issue #14).
            let report = match report.bounded() {
                Ok(r) => r,
                Err(e) => {
                    if let Some(suppressed) = super::edge::peer_warnings().allow() {
                        tracing::warn!(instance_id, error = %e, suppressed, "report refused");
                    }
                    // Acked: a report that can never be stored must not be retried forever.
                    send(ws, &HubMsg::Error { code: "InvalidReport".into(), message: e.to_string(), fatal: false }).await?;
                    send(ws, &HubMsg::ReportAck { report_id }).await?;
                    return Ok(None);
                }
            };
            let committed = hub.writer.submit(WriteOp::Report { instance_id: instance_id.to_string(), report: report.clone() }).await?;
            let instance_id = instance_id.to_string();
            return Ok(Some(Box::pin(async move {
                let effect = committed.await?;
                Ok(after_report(hub, &instance_id, report_id, &report, effect))
            })));
        }
        AgentMsg::Output { invoke_id, record_seq: _, offset: _, data_b64 } => {
            use base64::Engine;
            // Only for invocations this agent was given; others are dropped
            // unanswered (live output is best effort).
            if !mine.contains(&invoke_id) {
                if let Some(suppressed) = super::edge::peer_warnings().allow() {
                    tracing::warn!(
                        instance_id,
                        invoke_id = super::edge::shown_id(&invoke_id),
                        suppressed,
                        "live output for an invocation not delivered to this agent; dropped"
                    );
                }
                return Ok(None);
            }
            if let Ok(data) = base64::engine::general_purpose::STANDARD.decode(data_b64) {
                hub.live.push(&invoke_id, instance_id, &data);
            }
        }
        AgentMsg::FileChunkRequest { invoke_id, seq } => {
            // Served only to a target of that file delivery (checked in the
            // same query that reads the chunk); ids too long to be ours and
            // sequence numbers beyond the largest file are refused unread.
            let max_seq = crate::protocol::MAX_FILE_BYTES / crate::protocol::FILE_CHUNK_BYTES as u64;
            let chunk = if invoke_id.len() > protocol::report_limits::MAX_ID || seq > max_seq {
                None
            } else {
                hub.store.file_chunk_for(&invoke_id, instance_id, seq as i64).await?
            };
            let msg = match chunk {
                Some(data) => {
                    use base64::Engine;
                    let data_b64 = base64::engine::general_purpose::STANDARD.encode(data);
                    HubMsg::FileChunk { invoke_id, seq, data_b64, error: String::new() }
                }
                None => {
                    if let Some(suppressed) = super::edge::peer_warnings().allow() {
                        tracing::warn!(
                            instance_id,
                            invoke_id = super::edge::shown_id(&invoke_id),
                            seq,
                            suppressed,
                            "file chunk not available to this agent"
                        );
                    }
                    let error = format!("no chunk {seq} of a file delivery to {instance_id} with that invocation id");
                    HubMsg::FileChunk { invoke_id: super::edge::shown_id(&invoke_id).to_string(), seq, data_b64: String::new(), error }
                }
            };
            send(ws, &msg).await?;
        }
        AgentMsg::CredentialSaved => {
            hub.store.promote_pending_token(instance_id).await?;
            tracing::info!(instance_id, "credential rotated");
        }
        AgentMsg::UpdateFetch { version, offset } => {
            let chunk = match (&hub.config.agent_updates, facts) {
                (Some(u), Some(facts)) => u.chunk(hub.store.as_ref(), instance_id, facts, &version, offset).await,
                _ => None,
            };
            let msg = chunk.unwrap_or_else(|| HubMsg::Error {
                code: "UpdateNotOffered".into(),
                message: "no such build offered to this agent, or offset past its end".into(),
                fatal: false,
            });
            send(ws, &msg).await?;
        }
        AgentMsg::UpdateResult { version, ok, error } => {
            if let Some(u) = &hub.config.agent_updates {
                u.result(hub.store.as_ref(), instance_id, &version, ok, &error).await;
            }
        }
        AgentMsg::Hello { .. } | AgentMsg::Register { .. } | AgentMsg::Trial { .. } => {
            send(ws, &HubMsg::Error { code: "ProtocolViolation".into(), message: "already authenticated".into(), fatal: false }).await?;
        }
    }
    Ok(None)
}

/// What the agent is told once its report's transaction committed: always
/// the acknowledgement (a report that can never be stored must not be
/// resent forever), after an error for one that was refused.
fn after_report(hub: &Hub, instance_id: &str, report_id: u64, report: &protocol::RecordReport, effect: ReportEffect) -> Vec<HubMsg> {
    let invoke_id = report.invoke_id.as_str();
    let ack = HubMsg::ReportAck { report_id };
    match effect {
        ReportEffect::Applied | ReportEffect::Duplicate => {
            if report.status.is_final() {
                hub.live.clear(invoke_id, instance_id);
                if effect == ReportEffect::Applied {
                    super::metrics::get().result_stored();
                }
            }
            tracing::debug!(invoke_id, instance_id, status = %report.status, "report stored");
            vec![ack]
        }
        ReportEffect::Refused(why) => {
            // Logged without the payload.
            if let Some(suppressed) = super::edge::peer_warnings().allow() {
                tracing::warn!(invoke_id, instance_id, reason = %why, suppressed, "report refused");
            }
            vec![HubMsg::Error { code: "InvalidReport".into(), message: why, fatal: false }, ack]
        }
        ReportEffect::NotATarget => {
            tracing::warn!(
                invoke_id = super::edge::shown_id(invoke_id),
                instance_id,
                "report for an invocation this instance is not a target of"
            );
            let message = format!("instance {instance_id} is not a target of {invoke_id}");
            vec![HubMsg::Error { code: "NotATarget".into(), message, fatal: false }, ack]
        }
    }
}

type RegisterOutcome = Result<(String, String), (&'static str, String)>;

async fn register(
    hub: &Hub,
    activation_id: &str,
    code: &str,
    facts: &protocol::HostFacts,
    peer: SocketAddr,
) -> Result<RegisterOutcome, ConnError> {
    let Some(act) = hub.store.get_activation(activation_id).await? else {
        return Ok(Err(("InvalidActivationId.NotFound", format!("activation {} does not exist", super::edge::shown_id(activation_id)))));
    };
    if !constant_time_eq(&act.code_hash, &hash_token(code)) {
        return Ok(Err(("InvalidActivationCode", "activation code does not match".into())));
    }
    if act.disabled {
        return Ok(Err(("ActivationDisabled", format!("activation {activation_id} is disabled"))));
    }
    if super::api::activation_expired(&act) {
        return Ok(Err(("ActivationExpired", format!("activation {activation_id} expired after {} hours", act.time_to_live_hours))));
    }
    if !super::api::ip_in_range(&peer.ip(), &act.ip_address_range) {
        return Ok(Err(("IpNotAllowed", format!("{} is outside the activation's range {}", peer.ip(), act.ip_address_range))));
    }
    let instance_id = crate::ids::random("mi-", 20);
    let token = new_token();
    let name = if act.instance_name.is_empty() { facts.hostname.clone() } else { act.instance_name.clone() };
    let row = InstanceRow {
        instance_id: instance_id.clone(),
        instance_name: name,
        token_hash: hash_token(&token),
        facts: facts.clone(),
        ip: peer.ip().to_string(),
        registered_at: now_str(),
        activation_id: activation_id.to_string(),
        ..Default::default()
    };
    if !hub.store.register_instance(activation_id, &row).await? {
        return Ok(Err(("ActivationCountExceeded", format!("activation {activation_id} allows {} instances", act.instance_count))));
    }
    tracing::info!(instance_id, activation_id, "instance registered");
    Ok(Ok((instance_id, token)))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The size of the future an async fn returns, without calling it.
    fn future_size4<A, B, C, D, F: Future>(_: &impl Fn(A, B, C, D) -> F) -> usize {
        std::mem::size_of::<F>()
    }

    #[test]
    fn upgrade_requests_are_checked_and_answered_as_rfc_6455_says() {
        let request = |pairs: &[(&'static str, &'static str)]| {
            let mut h = HeaderMap::new();
            for (k, v) in pairs {
                h.append(*k, HeaderValue::from_static(v));
            }
            h
        };
        let good = [
            ("connection", "keep-alive, Upgrade"),
            ("upgrade", "WebSocket"),
            ("sec-websocket-version", "13"),
            ("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ=="),
        ];
        // RFC 6455 §1.3's own example.
        assert_eq!(accept_key(&axum::http::Method::GET, &request(&good)).unwrap(), "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
        assert!(accept_key(&axum::http::Method::POST, &request(&good)).is_err());
        for missing in 0..good.len() {
            let fewer: Vec<_> = good.iter().enumerate().filter(|(i, _)| *i != missing).map(|(_, p)| *p).collect();
            assert!(accept_key(&axum::http::Method::GET, &request(&fewer)).is_err(), "without {}", good[missing].0);
        }
        let mut bad_key = good;
        bad_key[3] = ("sec-websocket-key", "short");
        assert_eq!(accept_key(&axum::http::Method::GET, &request(&bad_key)), Err("Sec-WebSocket-Key must be 24 characters"));
        let mut old_version = good;
        old_version[2] = ("sec-websocket-version", "8");
        assert!(accept_key(&axum::http::Method::GET, &request(&old_version)).is_err());
    }

    #[test]
    fn per_connection_state_is_small() {
        // What each connected agent holds for its whole life besides its
        // buffers: the connection future (inside the task axum spawns).
        // The handshake alone is as large again; it is boxed and freed.
        let conn = future_size4(&serve);
        let open = future_size4(&open);
        println!("connection task's future: {conn} B (handshake, boxed: {open} B); WebSocket: {} B", size_of::<WebSocket>());
        // Debug builds lay futures out larger than release builds; this
        // bound holds for both. Past it, box the state of the await that
        // grew (as `open`, `handle` and `resync` are).
        assert!(conn <= 1450, "connection future is {conn} bytes");
        // An outbox slot is a pointer (see OUTBOX).
        assert_eq!(size_of::<Box<HubMsg>>(), size_of::<usize>());
    }
}
