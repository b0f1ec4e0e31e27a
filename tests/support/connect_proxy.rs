//! A small HTTP CONNECT proxy on 127.0.0.1 for integration tests: real
//! sockets both sides, optional Basic authentication, and a record of the
//! tunnels it opened. It answers the way real proxies do (squid, tinyproxy):
//! `200 Connection established`, `407` with a body and
//! `Proxy-Authenticate`, `405` for anything but CONNECT, `502` when the
//! target cannot be reached. Use with `#[path = "support/connect_proxy.rs"] mod connect_proxy;`.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Text in every refusal body: an agent must never log it.
pub const BODY_MARKER: &str = "PROXY-BODY-MUST-NOT-BE-LOGGED";

#[derive(Default)]
struct Seen {
    tunnels: Vec<String>,
    refused: u64,
}

pub struct ConnectProxy {
    addr: SocketAddr,
    seen: Arc<Mutex<Seen>>,
    task: tokio::task::JoinHandle<()>,
}

impl ConnectProxy {
    /// `auth`: the `user:password` required, if any.
    pub async fn start(auth: Option<&str>) -> ConnectProxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let addr = listener.local_addr().expect("proxy addr");
        let seen = Arc::new(Mutex::new(Seen::default()));
        let expected = auth.map(|a| format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(a)));
        let s = seen.clone();
        let task = tokio::spawn(async move {
            while let Ok((sock, _)) = listener.accept().await {
                tokio::spawn(serve(sock, expected.clone(), s.clone()));
            }
        });
        ConnectProxy { addr, seen, task }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The `host:port` of every tunnel opened, in order.
    pub fn tunnels(&self) -> Vec<String> {
        self.seen.lock().unwrap().tunnels.clone()
    }

    /// Requests refused (bad method, credentials).
    pub fn refused(&self) -> u64 {
        self.seen.lock().unwrap().refused
    }
}

impl Drop for ConnectProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn serve(mut sock: TcpStream, expected: Option<String>, seen: Arc<Mutex<Seen>>) {
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        if head.len() > 16 * 1024 {
            return;
        }
        match tokio::time::timeout(Duration::from_secs(10), sock.read_u8()).await {
            Ok(Ok(b)) => head.push(b),
            _ => return,
        }
    }
    let text = String::from_utf8_lossy(&head).to_string();
    let mut lines = text.split("\r\n");
    let request = lines.next().unwrap_or_default().to_string();
    let mut parts = request.split(' ');
    let (method, target) = (parts.next().unwrap_or_default(), parts.next().unwrap_or_default().to_string());
    let auth = lines
        .find_map(|l| l.split_once(':').filter(|(k, _)| k.eq_ignore_ascii_case("proxy-authorization")).map(|(_, v)| v.trim().to_string()));
    let refuse = |status: &str, extra: &str| {
        format!("HTTP/1.1 {status}\r\n{extra}Content-Type: text/html\r\nContent-Length: {}\r\n\r\n{BODY_MARKER}", BODY_MARKER.len())
    };
    if method != "CONNECT" {
        seen.lock().unwrap().refused += 1;
        let _ = sock.write_all(refuse("405 Method Not Allowed", "").as_bytes()).await;
        return;
    }
    if expected.is_some() && auth != expected {
        seen.lock().unwrap().refused += 1;
        let _ =
            sock.write_all(refuse("407 Proxy Authentication Required", "Proxy-Authenticate: Basic realm=\"test\"\r\n").as_bytes()).await;
        return;
    }
    let Ok(Ok(mut upstream)) = tokio::time::timeout(Duration::from_secs(5), TcpStream::connect(target.as_str())).await else {
        let _ = sock.write_all(refuse("502 Bad Gateway", "").as_bytes()).await;
        return;
    };
    seen.lock().unwrap().tunnels.push(target);
    if sock.write_all(b"HTTP/1.1 200 Connection established\r\n\r\n").await.is_err() {
        return;
    }
    let _ = tokio::io::copy_bidirectional(&mut sock, &mut upstream).await;
}
