//! Self-test of the fault-injection proxy against a real TCP echo server.

#[path = "support/proxy.rs"]
mod proxy;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use proxy::FaultProxy;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Bound on every read in these tests so a bug fails instead of hanging.
const IO_BOUND: Duration = Duration::from_secs(5);

async fn echo_server() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                loop {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => {
                            if s.write_all(&buf[..n]).await.is_err() {
                                break;
                            }
                        }
                    }
                }
            });
        }
    });
    addr
}

async fn roundtrip(s: &mut TcpStream, msg: &[u8]) -> Vec<u8> {
    s.write_all(msg).await.unwrap();
    let mut got = vec![0u8; msg.len()];
    tokio::time::timeout(IO_BOUND, s.read_exact(&mut got)).await.expect("echo in time").unwrap();
    got
}

/// Reads until EOF or error; true if the connection was closed.
async fn closed(s: &mut TcpStream) -> bool {
    let mut b = [0u8; 64];
    matches!(tokio::time::timeout(IO_BOUND, s.read(&mut b)).await, Ok(Ok(0)) | Ok(Err(_)))
}

async fn wait_active(p: &FaultProxy, n: u64) {
    for _ in 0..500 {
        if p.active() == n {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("active never reached {n}, is {}", p.active());
}

#[tokio::test]
async fn forwards_and_counts() {
    let p = FaultProxy::start(echo_server().await).await;
    let mut a = TcpStream::connect(p.addr()).await.unwrap();
    let mut b = TcpStream::connect(p.addr()).await.unwrap();
    assert_eq!(roundtrip(&mut a, b"hello").await, b"hello");
    assert_eq!(roundtrip(&mut b, b"world").await, b"world");
    assert_eq!(p.accepted(), 2);
    wait_active(&p, 2).await;
    drop(a);
    wait_active(&p, 1).await;
}

#[tokio::test]
async fn cut_all_drops_live_connections_and_new_ones_work() {
    let p = FaultProxy::start(echo_server().await).await;
    let mut a = TcpStream::connect(p.addr()).await.unwrap();
    let mut b = TcpStream::connect(p.addr()).await.unwrap();
    roundtrip(&mut a, b"x").await;
    roundtrip(&mut b, b"y").await;
    p.cut_all();
    assert!(closed(&mut a).await, "a not cut");
    assert!(closed(&mut b).await, "b not cut");
    wait_active(&p, 0).await;
    assert_eq!(p.cuts(), 1);
    let mut c = TcpStream::connect(p.addr()).await.unwrap();
    assert_eq!(roundtrip(&mut c, b"again").await, b"again");
}

#[tokio::test]
async fn refuse_accepts_then_closes() {
    let p = FaultProxy::start(echo_server().await).await;
    p.set_refuse(true);
    let mut a = TcpStream::connect(p.addr()).await.unwrap();
    assert!(closed(&mut a).await);
    assert_eq!(p.refused(), 1);
    assert_eq!(p.accepted(), 0);
    p.set_refuse(false);
    let mut b = TcpStream::connect(p.addr()).await.unwrap();
    assert_eq!(roundtrip(&mut b, b"ok").await, b"ok");
}

#[tokio::test]
async fn delay_holds_each_chunk_at_least_that_long() {
    let p = FaultProxy::start(echo_server().await).await;
    let mut a = TcpStream::connect(p.addr()).await.unwrap();
    p.set_delay(Duration::from_millis(150));
    let t = Instant::now();
    roundtrip(&mut a, b"slow").await;
    // Delayed once each way; only a lower bound is asserted (no flaky upper bound).
    assert!(t.elapsed() >= Duration::from_millis(300), "elapsed {:?}", t.elapsed());
}

#[tokio::test]
async fn blackhole_stops_forwarding_without_closing() {
    let p = FaultProxy::start(echo_server().await).await;
    let mut a = TcpStream::connect(p.addr()).await.unwrap();
    roundtrip(&mut a, b"before").await;
    p.set_blackhole(true);
    a.write_all(b"lost").await.unwrap();
    let mut b = [0u8; 16];
    let r = tokio::time::timeout(Duration::from_millis(300), a.read(&mut b)).await;
    assert!(r.is_err(), "data or close leaked through blackhole: {r:?}");
    assert_eq!(p.active(), 1, "connection must stay open");
    p.set_blackhole(false);
    assert_eq!(roundtrip(&mut a, b"after").await, b"after");
}

#[tokio::test]
async fn dead_upstream_is_counted_and_client_closed() {
    // Bind then drop to get a port with nothing listening.
    let dead = TcpListener::bind("127.0.0.1:0").await.unwrap().local_addr().unwrap();
    let p = FaultProxy::start(dead).await;
    let mut a = TcpStream::connect(p.addr()).await.unwrap();
    assert!(closed(&mut a).await);
    assert_eq!(p.upstream_failures(), 1);
}
