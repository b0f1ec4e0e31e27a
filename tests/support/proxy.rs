//! Fault-injection TCP proxy on 127.0.0.1 for integration tests.
//!
//! Sits between agent and hub (real sockets both sides) and can cut every
//! live connection, refuse new ones, delay each forwarded chunk, or
//! blackhole traffic without closing (to exercise heartbeat detection).
//! Use from a test crate with `#[path = "support/proxy.rs"] mod proxy;`.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// Largest chunk read and forwarded in one go.
const CHUNK_BYTES: usize = 16 * 1024;
/// Bound on dialing the upstream so a dead upstream cannot hang a test.
const UPSTREAM_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Default)]
struct Shared {
    refuse: AtomicBool,
    blackhole: AtomicBool,
    delay: Mutex<Duration>,
    accepted: AtomicU64,
    refused: AtomicU64,
    active: AtomicU64,
    cut: AtomicU64,
    upstream_failed: AtomicU64,
}

/// A running proxy. Dropping it stops accepting and closes every connection.
pub struct FaultProxy {
    addr: SocketAddr,
    upstream: SocketAddr,
    shared: Arc<Shared>,
    /// Bumped by `cut_all`; every connection task watches it.
    cut_tx: watch::Sender<u64>,
    accept_task: JoinHandle<()>,
}

impl FaultProxy {
    /// Binds 127.0.0.1:0 and forwards every accepted connection to `upstream`.
    pub async fn start(upstream: SocketAddr) -> FaultProxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("proxy bind 127.0.0.1:0");
        let addr = listener.local_addr().expect("proxy local_addr");
        let shared = Arc::new(Shared::default());
        let (cut_tx, _) = watch::channel(0u64);
        let accept_task = tokio::spawn(accept_loop(listener, upstream, shared.clone(), cut_tx.clone()));
        FaultProxy { addr, upstream, shared, cut_tx, accept_task }
    }

    /// Address clients should dial instead of the upstream.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The real upstream address.
    pub fn upstream(&self) -> SocketAddr {
        self.upstream
    }

    /// Drops every live connection now (both sides see EOF/reset).
    pub fn cut_all(&self) {
        self.shared.cut.fetch_add(1, Ordering::SeqCst);
        self.cut_tx.send_modify(|g| *g += 1);
    }

    /// When true, new connections are accepted and closed immediately.
    pub fn set_refuse(&self, on: bool) {
        self.shared.refuse.store(on, Ordering::SeqCst);
    }

    /// Delay applied before forwarding each chunk, both directions.
    pub fn set_delay(&self, d: Duration) {
        *self.shared.delay.lock().unwrap_or_else(|p| p.into_inner()) = d;
    }

    /// When true, bytes are read and discarded in both directions while the
    /// connections stay open: a silent network, as seen by heartbeats.
    pub fn set_blackhole(&self, on: bool) {
        self.shared.blackhole.store(on, Ordering::SeqCst);
    }

    /// Connections accepted and forwarded (refused ones excluded).
    pub fn accepted(&self) -> u64 {
        self.shared.accepted.load(Ordering::SeqCst)
    }

    /// Connections closed on accept because of `set_refuse(true)`.
    pub fn refused(&self) -> u64 {
        self.shared.refused.load(Ordering::SeqCst)
    }

    /// Connections currently being forwarded.
    pub fn active(&self) -> u64 {
        self.shared.active.load(Ordering::SeqCst)
    }

    /// Times `cut_all` was called.
    pub fn cuts(&self) -> u64 {
        self.shared.cut.load(Ordering::SeqCst)
    }

    /// Accepted connections whose upstream dial failed.
    pub fn upstream_failures(&self) -> u64 {
        self.shared.upstream_failed.load(Ordering::SeqCst)
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.accept_task.abort();
        self.cut_all();
    }
}

async fn accept_loop(listener: TcpListener, upstream: SocketAddr, shared: Arc<Shared>, cut_tx: watch::Sender<u64>) {
    loop {
        let Ok((client, _)) = listener.accept().await else {
            // Transient accept errors (EMFILE...) should not kill the proxy.
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        if shared.refuse.load(Ordering::SeqCst) {
            shared.refused.fetch_add(1, Ordering::SeqCst);
            drop(client);
            continue;
        }
        shared.accepted.fetch_add(1, Ordering::SeqCst);
        let cut_rx = cut_tx.subscribe();
        tokio::spawn(handle(client, upstream, shared.clone(), cut_rx));
    }
}

async fn handle(client: TcpStream, upstream: SocketAddr, shared: Arc<Shared>, mut cut_rx: watch::Receiver<u64>) {
    let server = match tokio::time::timeout(UPSTREAM_CONNECT_TIMEOUT, TcpStream::connect(upstream)).await {
        Ok(Ok(s)) => s,
        _ => {
            shared.upstream_failed.fetch_add(1, Ordering::SeqCst);
            return;
        }
    };
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    shared.active.fetch_add(1, Ordering::SeqCst);
    let (cr, cw) = client.into_split();
    let (sr, sw) = server.into_split();
    let up = pump(cr, sw, shared.clone());
    let down = pump(sr, cw, shared.clone());
    // Mark the current generation seen so only later cuts count.
    cut_rx.borrow_and_update();
    tokio::select! {
        _ = async { tokio::join!(up, down) } => {}
        _ = cut_rx.changed() => {}
    }
    // Dropping the halves here closes both sockets.
    shared.active.fetch_sub(1, Ordering::SeqCst);
}

async fn pump(mut from: tokio::net::tcp::OwnedReadHalf, mut to: tokio::net::tcp::OwnedWriteHalf, shared: Arc<Shared>) {
    let mut buf = vec![0u8; CHUNK_BYTES];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if shared.blackhole.load(Ordering::SeqCst) {
            continue;
        }
        let delay = *shared.delay.lock().unwrap_or_else(|p| p.into_inner());
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            break;
        }
    }
    // Half-close so the peer sees EOF, like a real TCP path would pass on.
    let _ = to.shutdown().await;
}
