//! The kubelet health probe: a minimal HTTP/1.1 GET over a tokio `TcpStream` (the agent
//! carries no HTTP client crate). Only `http://host:port/path` is supported — the kubelet's
//! healthz endpoint is plain HTTP on localhost.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::KubeletError;

pub const DEFAULT_HEALTH_URL: &str = "http://127.0.0.1:10248/healthz";
/// Only the status line matters; never read more than this.
const MAX_RESPONSE: usize = 8 * 1024;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthUrl {
    pub host: String,
    pub port: u16,
    pub path: String,
    raw: String,
}

impl std::fmt::Display for HealthUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.raw)
    }
}

impl HealthUrl {
    pub fn parse(s: &str) -> Result<HealthUrl, KubeletError> {
        let bad = |why: &str| KubeletError::InvalidPlan(format!("healthUrl {s:?}: {why}"));
        if s.len() > 2048 {
            return Err(bad("longer than 2048 characters"));
        }
        let rest = s.strip_prefix("http://").ok_or_else(|| bad("only http:// URLs are supported"))?;
        let (authority, path) = match rest.find('/').and_then(|i| rest.split_at_checked(i)) {
            Some(split) => split,
            None => (rest, "/"),
        };
        if path.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(bad("path contains whitespace"));
        }
        let (host, port) = match authority.rsplit_once(':') {
            Some((h, p)) => (h, p.parse::<u16>().map_err(|_| bad("port is not a number 1..=65535"))?),
            None => (authority, 80),
        };
        if host.is_empty() || port == 0 {
            return Err(bad("missing host or port"));
        }
        Ok(HealthUrl { host: host.to_string(), port, path: path.to_string(), raw: s.to_string() })
    }
}

/// One GET; returns the HTTP status code.
pub async fn get_status(url: &HealthUrl, timeout: Duration) -> Result<u16, String> {
    let fut = async {
        let host = url.host.trim_start_matches('[').trim_end_matches(']');
        let mut s = TcpStream::connect((host, url.port)).await.map_err(|e| format!("connect: {e}"))?;
        let req = format!(
            "GET {} HTTP/1.1\r\nHost: {}:{}\r\nUser-Agent: deckhand-agent\r\nConnection: close\r\n\r\n",
            url.path, url.host, url.port
        );
        s.write_all(req.as_bytes()).await.map_err(|e| format!("write: {e}"))?;
        let mut buf = Vec::with_capacity(512);
        let mut chunk = [0u8; 1024];
        // The status line is all we need; stop at the first line end or the size bound.
        while !buf.contains(&b'\n') && buf.len() < MAX_RESPONSE {
            let n = s.read(&mut chunk).await.map_err(|e| format!("read: {e}"))?;
            if n == 0 {
                break;
            }
            buf.extend_from_slice(&chunk[..n]);
        }
        let line = String::from_utf8_lossy(&buf);
        let line = line.lines().next().unwrap_or("");
        let mut parts = line.split_whitespace();
        match (parts.next(), parts.next()) {
            (Some(v), Some(code)) if v.starts_with("HTTP/1.") => code.parse::<u16>().map_err(|_| format!("bad status line {line:?}")),
            _ => Err(format!("bad status line {line:?}")),
        }
    };
    tokio::time::timeout(timeout, fut).await.map_err(|_| format!("no answer within {timeout:?}"))?
}

/// Consecutive 200s required: a kubelet that rejects part of its config can answer once
/// before it exits, so one success is not proof.
pub const REQUIRED_SUCCESSES: u32 = 3;

/// Poll until `REQUIRED_SUCCESSES` consecutive 200s or `total` elapses. Returns the last
/// failure on timeout.
pub async fn wait_healthy(url: &HealthUrl, total: Duration, interval: Duration) -> Result<(), String> {
    let deadline = tokio::time::Instant::now() + total;
    let mut last = String::from("never probed");
    let mut streak = 0;
    loop {
        let remaining = deadline.saturating_duration_since(tokio::time::Instant::now());
        if remaining.is_zero() {
            return Err(last);
        }
        match get_status(url, remaining.min(Duration::from_secs(5))).await {
            Ok(200) => {
                streak += 1;
                if streak >= REQUIRED_SUCCESSES {
                    return Ok(());
                }
                last = format!("only {streak} consecutive healthy answers");
            }
            Ok(code) => {
                streak = 0;
                last = format!("HTTP {code}");
            }
            Err(e) => {
                streak = 0;
                last = e;
            }
        }
        tracing::debug!(url = %url, last = %last, "kubelet not healthy yet");
        tokio::time::sleep(interval.min(deadline.saturating_duration_since(tokio::time::Instant::now()))).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One-shot local servers answering with canned bytes (stand-ins for a kubelet healthz).
    async fn serve(reply: &'static [u8]) -> HealthUrl {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = l.accept().await {
                let mut buf = [0u8; 1024];
                let _ = s.read(&mut buf).await;
                let _ = s.write_all(reply).await;
            }
        });
        HealthUrl::parse(&format!("http://{addr}/healthz")).unwrap()
    }

    #[tokio::test]
    async fn status_codes_and_garbage() {
        let t = Duration::from_secs(5);
        assert_eq!(get_status(&serve(b"HTTP/1.1 200 OK\r\n\r\nok").await, t).await, Ok(200));
        assert_eq!(get_status(&serve(b"HTTP/1.0 500 Oops\r\n\r\n").await, t).await, Ok(500));
        let e = get_status(&serve(b"SSH-2.0-OpenSSH\r\n").await, t).await.unwrap_err();
        assert!(e.contains("bad status line"), "{e}");
        let e = get_status(&serve(b"").await, t).await.unwrap_err();
        assert!(e.contains("bad status line"), "{e}");
        // Nothing listening: a closed port is an error, not a hang.
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        drop(l);
        let url = HealthUrl::parse(&format!("http://127.0.0.1:{port}/healthz")).unwrap();
        assert!(get_status(&url, t).await.unwrap_err().contains("connect"));
        let e = wait_healthy(&url, Duration::from_millis(300), Duration::from_millis(50)).await;
        assert!(e.unwrap_err().contains("connect"));
    }

    #[test]
    fn urls_parse_or_are_refused() {
        let u = HealthUrl::parse(DEFAULT_HEALTH_URL).unwrap();
        assert_eq!((u.host.as_str(), u.port, u.path.as_str()), ("127.0.0.1", 10248, "/healthz"));
        assert_eq!(HealthUrl::parse("http://localhost").unwrap().port, 80);
        for bad in ["https://127.0.0.1/healthz", "http://:80/", "http://h:x/", "http://h:0/", "ftp://x"] {
            assert!(HealthUrl::parse(bad).is_err(), "{bad}");
        }
    }
}
