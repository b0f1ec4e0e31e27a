//! Listening: one port serves the OpenAPI and the agent WebSocket, over
//! TLS (rustls) or, for loopback tests, plain TCP.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::extract::ConnectInfo;
use axum::routing::{any, get};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tower::Service;

use super::edge::{self, PendingPeers, PendingSlot};
use super::{Hub, HubError, agents, api};

/// A TLS handshake that has not finished by then is dropped, so slow or
/// idle clients cannot pin connections.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// A request whose headers have not all arrived by then closes its
/// connection (issue #14: one header byte every 2 s kept sockets forever).
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// On shutdown, requests in flight get this long to finish.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

/// The peer address, and whether it presented a verified client
/// certificate, for both the plain and the TLS listener.
#[derive(Debug, Clone, Copy)]
pub struct Peer(pub SocketAddr, pub bool);

pub fn router(hub: Arc<Hub>) -> Router {
    let console = if hub.config.console.enabled { super::console::router() } else { Router::new() };
    Router::new()
        .merge(console)
        .route("/", any(api::handle))
        .route(crate::protocol::WS_PATH, get(agents::upgrade))
        .route("/healthz", get(|| async { "ok" }))
        .route("/metrics", get(super::metrics::scrape))
        .with_state(hub)
}

/// Accepts connections until `shutdown`, each served in its own task with
/// explicit time bounds: TLS handshake, request headers, and (for agents)
/// the hello, which `agents` bounds. An address holding
/// [`edge::MAX_PENDING_PER_ADDR`] connections that have not sent a request
/// yet has further connections closed at once.
pub async fn serve(hub: Arc<Hub>, shutdown: CancellationToken) -> Result<(), HubError> {
    let addr = hub.config.listen;
    let tcp = TcpListener::bind(addr).await.map_err(|source| HubError::Bind { addr, source })?;
    let local = tcp.local_addr()?;
    let tls = match &hub.config.tls {
        Some((cert, key)) => Some(TlsAcceptor::from(crate::tls::server_config(cert, key, hub.config.agent_client_ca.as_deref())?)),
        None => None,
    };
    let scheme = if tls.is_some() { "https" } else { "http" };
    tracing::info!(addr = %local, scheme, "hub listening");
    if let Some(f) = &hub.config.addr_file {
        // Written aside and renamed, so a reader never sees half an address.
        let tmp = f.with_extension("tmp");
        std::fs::write(&tmp, format!("{scheme}://{local}"))?;
        std::fs::rename(&tmp, f)?;
    }
    crate::agent::service::notify_ready();
    let app = router(hub.clone());
    let pending = PendingPeers::default();
    let mut conns = tokio::task::JoinSet::new();
    loop {
        let (sock, peer) = tokio::select! {
            _ = shutdown.cancelled() => break,
            r = tcp.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        while conns.try_join_next().is_some() {}
        let Some(slot) = pending.admit(peer.ip()) else {
            if let Some(suppressed) = edge::peer_warnings().allow() {
                tracing::warn!(%peer, limit = edge::MAX_PENDING_PER_ADDR, suppressed, "too many unauthenticated connections from one address; closing new ones");
            }
            continue;
        };
        let _ = sock.set_nodelay(true);
        conns.spawn(connection(sock, peer, tls.clone(), app.clone(), slot, shutdown.clone()));
    }
    let drain = async { while conns.join_next().await.is_some() {} };
    if tokio::time::timeout(DRAIN_TIMEOUT, drain).await.is_err() {
        conns.abort_all();
    }
    tracing::info!("hub stopped");
    Ok(())
}

async fn connection(
    sock: TcpStream,
    peer: SocketAddr,
    tls: Option<TlsAcceptor>,
    app: Router,
    slot: PendingSlot,
    shutdown: CancellationToken,
) {
    let Some(acceptor) = tls else {
        return serve_http(TokioIo::new(sock), Peer(peer, false), app, slot, shutdown).await;
    };
    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(sock)).await {
        Ok(Ok(s)) => {
            // rustls only exposes certificates it verified against the client CA.
            let cert = s.get_ref().1.peer_certificates().is_some_and(|c| !c.is_empty());
            serve_http(TokioIo::new(s), Peer(peer, cert), app, slot, shutdown).await
        }
        Ok(Err(e)) => tracing::debug!(%peer, error = %e, "TLS handshake failed"),
        Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
    }
}

/// HTTP/1.1 on one connection (WebSocket upgrades included). The pending
/// slot is given back when the first request's headers are in: from then
/// on the API authenticates each request. An agent's upgrade request
/// carries it on ([`edge::HelloSlot`]) until the agent's hello, which must
/// come within its own bound.
async fn serve_http<I>(io: TokioIo<I>, peer: Peer, app: Router, slot: PendingSlot, shutdown: CancellationToken)
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let slot = Mutex::new(Some(slot));
    let svc = hyper::service::service_fn(move |mut req: hyper::Request<hyper::body::Incoming>| {
        if let Some(first) = slot.lock().unwrap_or_else(|e| e.into_inner()).take()
            && req.uri().path() == crate::protocol::WS_PATH
        {
            req.extensions_mut().insert(edge::HelloSlot::new(first));
        }
        req.extensions_mut().insert(ConnectInfo(peer));
        let mut app = app.clone();
        async move { app.call(req).await }
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder.timer(TokioTimer::new()).header_read_timeout(HEADER_READ_TIMEOUT);
    let conn = builder.serve_connection(io, svc).with_upgrades();
    tokio::pin!(conn);
    let result = tokio::select! {
        r = conn.as_mut() => r,
        _ = shutdown.cancelled() => {
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    if let Err(e) = result {
        tracing::debug!(peer = %peer.0, error = %e, "HTTP connection ended");
    }
}
