//! Listening: one port serves the OpenAPI and the agent WebSocket, over
//! TLS (rustls) or, for loopback tests, plain TCP.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::routing::{any, get};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use tokio_util::sync::CancellationToken;

use super::{Hub, HubError, agents, api};

/// A TLS handshake that has not finished by then is dropped, so slow or
/// idle clients cannot pin accept slots.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Completed handshakes waiting for axum to pick them up.
const ACCEPT_QUEUE: usize = 1024;

/// The peer address, and whether it presented a verified client
/// certificate, for both the plain and the TLS listener.
#[derive(Debug, Clone, Copy)]
pub struct Peer(pub SocketAddr, pub bool);

impl axum::extract::connect_info::Connected<axum::serve::IncomingStream<'_, TcpListener>> for Peer {
    fn connect_info(s: axum::serve::IncomingStream<'_, TcpListener>) -> Self {
        Peer(*s.remote_addr(), false)
    }
}

impl axum::extract::connect_info::Connected<axum::serve::IncomingStream<'_, TlsListener>> for Peer {
    fn connect_info(s: axum::serve::IncomingStream<'_, TlsListener>) -> Self {
        // rustls only exposes certificates it verified against the client CA.
        let cert = s.io().get_ref().1.peer_certificates().is_some_and(|c| !c.is_empty());
        Peer(*s.remote_addr(), cert)
    }
}

pub fn router(hub: Arc<Hub>) -> Router {
    Router::new()
        .route("/", any(api::handle))
        .route("/agent/v1/ws", get(agents::upgrade))
        .route("/healthz", get(|| async { "ok" }))
        .with_state(hub)
}

pub async fn serve(hub: Arc<Hub>, shutdown: CancellationToken) -> Result<(), HubError> {
    let addr = hub.config.listen;
    let tcp = TcpListener::bind(addr).await.map_err(|source| HubError::Bind { addr, source })?;
    let local = tcp.local_addr()?;
    let tls = match &hub.config.tls {
        Some((cert, key)) => Some(crate::tls::server_config(cert, key, hub.config.agent_client_ca.as_deref())?),
        None => None,
    };
    let scheme = if tls.is_some() { "https" } else { "http" };
    tracing::info!(addr = %local, scheme, "hub listening");
    if let Some(f) = &hub.config.addr_file {
        std::fs::write(f, format!("{scheme}://{local}"))?;
    }
    crate::agent::service::notify_ready();
    let app = router(hub.clone()).into_make_service_with_connect_info::<Peer>();
    let stop = shutdown.clone();
    let graceful = async move { stop.cancelled().await };
    match tls {
        None => axum::serve(tcp, app).with_graceful_shutdown(graceful).await?,
        Some(cfg) => {
            let listener = TlsListener::spawn(tcp, TlsAcceptor::from(cfg), shutdown.clone());
            axum::serve(listener, app).with_graceful_shutdown(graceful).await?
        }
    }
    tracing::info!("hub stopped");
    Ok(())
}

/// Accepts TCP and runs each TLS handshake in its own task, handing
/// finished streams to axum; one slow handshake never blocks the others.
pub struct TlsListener {
    rx: mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)>,
    local: SocketAddr,
}

impl TlsListener {
    fn spawn(tcp: TcpListener, acceptor: TlsAcceptor, shutdown: CancellationToken) -> Self {
        let local = tcp.local_addr().expect("bound listener has an address");
        let (tx, rx) = mpsc::channel(ACCEPT_QUEUE);
        tokio::spawn(async move {
            loop {
                let (sock, peer) = tokio::select! {
                    _ = shutdown.cancelled() => return,
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
                let _ = sock.set_nodelay(true);
                let acceptor = acceptor.clone();
                let tx = tx.clone();
                tokio::spawn(async move {
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(sock)).await {
                        Ok(Ok(s)) => {
                            let _ = tx.send((s, peer)).await;
                        }
                        Ok(Err(e)) => tracing::debug!(%peer, error = %e, "TLS handshake failed"),
                        Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                    }
                });
            }
        });
        Self { rx, local }
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.rx.recv().await {
            Some(x) => x,
            // The accept task ended (shutdown): park; graceful shutdown ends serve.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(self.local)
    }
}
