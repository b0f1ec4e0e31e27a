//! A fault-injecting TCP proxy on 127.0.0.1 for tests: forwards bytes
//! between a client and an upstream, and on command cuts every live
//! connection, refuses new ones, or black-holes traffic (connections stay
//! open, nothing flows) so heartbeat detection can be tested, or delays
//! every forwarded chunk.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

pub struct FaultProxy {
    addr: SocketAddr,
    cut: watch::Sender<u64>,
    refuse: Arc<AtomicBool>,
    blackhole: Arc<AtomicBool>,
    delay_ms: Arc<AtomicU64>,
    pub connections: Arc<AtomicU64>,
}

impl FaultProxy {
    /// Must be called inside a tokio runtime; the proxy lives as long as it.
    pub async fn start(upstream: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (cut, cut_rx) = watch::channel(0u64);
        let refuse = Arc::new(AtomicBool::new(false));
        let blackhole = Arc::new(AtomicBool::new(false));
        let connections = Arc::new(AtomicU64::new(0));
        let delay_ms = Arc::new(AtomicU64::new(0));
        let (r, b, c, dl) = (refuse.clone(), blackhole.clone(), connections.clone(), delay_ms.clone());
        tokio::spawn(async move {
            loop {
                let Ok((client, _)) = listener.accept().await else { return };
                if r.load(Ordering::SeqCst) {
                    drop(client);
                    continue;
                }
                c.fetch_add(1, Ordering::SeqCst);
                let (b, mut cut_rx, dl) = (b.clone(), cut_rx.clone(), dl.clone());
                tokio::spawn(async move {
                    let Ok(server) = TcpStream::connect(upstream).await else { return };
                    let (mut cr, mut cw) = client.into_split();
                    let (mut sr, mut sw) = server.into_split();
                    let (b1, b2, d1, d2) = (b.clone(), b.clone(), dl.clone(), dl.clone());
                    let up = async move { pump(&mut cr, &mut sw, &b1, &d1).await };
                    let down = async move { pump(&mut sr, &mut cw, &b2, &d2).await };
                    cut_rx.borrow_and_update();
                    tokio::select! {
                        _ = up => {}
                        _ = down => {}
                        _ = cut_rx.changed() => {}
                    }
                });
            }
        });
        Self { addr, cut, refuse, blackhole, delay_ms, connections }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Drops every live connection now.
    pub fn cut_all(&self) {
        self.cut.send_modify(|n| *n += 1);
    }

    pub fn set_refuse(&self, on: bool) {
        self.refuse.store(on, Ordering::SeqCst);
    }

    /// Delays every forwarded chunk by this long.
    pub fn set_delay(&self, d: std::time::Duration) {
        self.delay_ms.store(d.as_millis() as u64, Ordering::SeqCst);
    }

    /// Stops forwarding without closing anything.
    pub fn set_blackhole(&self, on: bool) {
        self.blackhole.store(on, Ordering::SeqCst);
    }
}

async fn pump(r: &mut (impl AsyncReadExt + Unpin), w: &mut (impl AsyncWriteExt + Unpin), blackhole: &AtomicBool, delay_ms: &AtomicU64) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = match r.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        if blackhole.load(Ordering::SeqCst) {
            continue; // swallowed
        }
        let d = delay_ms.load(Ordering::SeqCst);
        if d > 0 {
            tokio::time::sleep(std::time::Duration::from_millis(d)).await;
        }
        if w.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}
