//! Dialing the hub: TCP (directly or through an HTTP CONNECT tunnel, see
//! [`super::proxy`]), then TLS (rustls, pinned CA or system roots), then
//! the WebSocket handshake, each under its own timeout.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

use super::proxy::Proxy;
use crate::protocol::MAX_FRAME_BYTES;

pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
pub use crate::protocol::WS_PATH;

pub trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

pub type Ws = WebSocketStream<Box<dyn Io>>;

#[derive(Debug, thiserror::Error)]
pub enum DialError {
    #[error("hub URL {0:?} must look like https://host:port or wss://host:port")]
    BadUrl(String),
    #[error("hub lists {0} URLs; at most {MAX_HUB_URLS} are accepted")]
    TooManyUrls(usize),
    #[error("plain ws:// to {0} refused: only loopback addresses may skip TLS, and only with --insecure-loopback")]
    InsecureRefused(String),
    #[error("connecting to {addr} timed out after {after:?}")]
    Timeout { addr: String, after: Duration },
    #[error("connecting to {addr}: {source}")]
    Io { addr: String, source: std::io::Error },
    #[error("{0}")]
    Proxy(#[from] super::proxy::ConnectError),
    #[error("TLS: {0}")]
    Tls(String),
    #[error("websocket handshake: {0}")]
    Ws(#[from] tokio_tungstenite::tungstenite::Error),
}

/// A parsed hub address.
#[derive(Debug, Clone, PartialEq)]
pub struct HubUrl {
    pub tls: bool,
    pub host: String,
    pub port: u16,
}

/// Replicas an agent may be pointed at directly (beyond that, use a load
/// balancer or a DNS name with several addresses).
pub const MAX_HUB_URLS: usize = 16;

impl HubUrl {
    /// One URL, or several separated by commas (hub replicas): the agent
    /// uses one at a time and moves to the next when a connection fails.
    pub fn parse_list(urls: &str) -> Result<Vec<Self>, DialError> {
        let list: Vec<Self> = urls.split(',').map(str::trim).filter(|u| !u.is_empty()).map(Self::parse).collect::<Result<_, _>>()?;
        match list.len() {
            0 => Err(DialError::BadUrl(urls.to_string())),
            n if n > MAX_HUB_URLS => Err(DialError::TooManyUrls(n)),
            _ => Ok(list),
        }
    }

    pub fn parse(url: &str) -> Result<Self, DialError> {
        let bad = || DialError::BadUrl(url.to_string());
        let (scheme, rest) = url.split_once("://").ok_or_else(bad)?;
        let tls = match scheme {
            "https" | "wss" => true,
            "http" | "ws" => false,
            _ => return Err(bad()),
        };
        let authority = rest.split('/').next().unwrap_or("");
        let (host, port) = match authority.rsplit_once(':') {
            Some((h, p)) if !h.ends_with(']') || h.starts_with('[') => (h, p.parse().map_err(|_| bad())?),
            _ => (authority, if tls { 443 } else { 80 }),
        };
        let host = host.trim_start_matches('[').trim_end_matches(']');
        if host.is_empty() {
            return Err(bad());
        }
        Ok(Self { tls, host: host.to_string(), port })
    }

    pub fn ws_url(&self) -> String {
        let scheme = if self.tls { "wss" } else { "ws" };
        let host = if self.host.contains(':') { format!("[{}]", self.host) } else { self.host.clone() };
        format!("{scheme}://{host}:{}{WS_PATH}", self.port)
    }
}

/// Dials the hub directly.
pub async fn dial(url: &HubUrl, tls: &Arc<rustls::ClientConfig>, insecure_loopback: bool) -> Result<Ws, DialError> {
    dial_via(url, tls, insecure_loopback, None).await
}

/// Dials the hub, through `proxy` when given: TCP to the proxy, CONNECT to
/// the hub, then TLS with the hub's name exactly as without a proxy.
pub async fn dial_via(
    url: &HubUrl,
    tls: &Arc<rustls::ClientConfig>,
    insecure_loopback: bool,
    proxy: Option<&Proxy>,
) -> Result<Ws, DialError> {
    let addr = format!("{}:{}", url.host, url.port);
    // The first hop: the proxy if any (named without its credentials).
    let (first_hop, first_addr) = match proxy {
        Some(p) => (format!("proxy {p}"), (p.host.clone(), p.port)),
        None => (addr.clone(), (url.host.clone(), url.port)),
    };
    let mut tcp = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect((first_addr.0.as_str(), first_addr.1)))
        .await
        .map_err(|_| DialError::Timeout { addr: first_hop.clone(), after: CONNECT_TIMEOUT })?
        .map_err(|source| DialError::Io { addr: first_hop.clone(), source })?;
    let _ = tcp.set_nodelay(true);
    if let Some(p) = proxy {
        if !url.tls {
            // The loopback exemption is about the hub's own address, which
            // a tunnel hides.
            return Err(DialError::InsecureRefused(addr));
        }
        super::proxy::connect(&mut tcp, p, &url.host, url.port, CONNECT_TIMEOUT).await?;
    }
    handshake(tcp, url, tls, insecure_loopback).await
}

/// TLS (unless the URL is plain loopback) and the WebSocket handshake over
/// an established TCP connection to the hub (or a tunnel to it).
pub async fn handshake(tcp: TcpStream, url: &HubUrl, tls: &Arc<rustls::ClientConfig>, insecure_loopback: bool) -> Result<Ws, DialError> {
    let addr = format!("{}:{}", url.host, url.port);
    let stream: Box<dyn Io> = if url.tls {
        let name = ServerName::try_from(url.host.clone()).map_err(|e| DialError::Tls(e.to_string()))?;
        let connector = tokio_rustls::TlsConnector::from(tls.clone());
        let s = tokio::time::timeout(CONNECT_TIMEOUT, connector.connect(name, tcp))
            .await
            .map_err(|_| DialError::Timeout { addr: addr.clone(), after: CONNECT_TIMEOUT })?
            .map_err(|e| DialError::Tls(e.to_string()))?;
        Box::new(s)
    } else {
        let peer = tcp.peer_addr().map_err(|source| DialError::Io { addr: addr.clone(), source })?;
        if !insecure_loopback || !is_loopback(&peer.ip()) {
            return Err(DialError::InsecureRefused(addr));
        }
        Box::new(tcp)
    };
    let mut cfg = WebSocketConfig::default();
    cfg.max_message_size = Some(MAX_FRAME_BYTES);
    cfg.max_frame_size = Some(MAX_FRAME_BYTES);
    // The agent sends and receives small frames; a 4 KiB initial read
    // buffer (default 128 KiB) keeps idle RSS down.
    cfg.read_buffer_size = 4096;
    cfg.write_buffer_size = 0;
    let (ws, _) = tokio::time::timeout(CONNECT_TIMEOUT, tokio_tungstenite::client_async_with_config(url.ws_url(), stream, Some(cfg)))
        .await
        .map_err(|_| DialError::Timeout { addr, after: CONNECT_TIMEOUT })??;
    Ok(ws)
}

fn is_loopback(ip: &IpAddr) -> bool {
    ip.is_loopback()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_list_of_replicas_with_bounds() {
        let l = HubUrl::parse_list("https://a:1, https://b:2,").unwrap();
        assert_eq!(l.iter().map(|u| (u.host.as_str(), u.port)).collect::<Vec<_>>(), [("a", 1), ("b", 2)]);
        assert!(matches!(HubUrl::parse_list(" , "), Err(DialError::BadUrl(_))));
        assert!(matches!(HubUrl::parse_list("https://a:1,ftp://b"), Err(DialError::BadUrl(u)) if u == "ftp://b"));
        let many = vec!["https://h:1"; MAX_HUB_URLS + 1].join(",");
        assert_eq!(HubUrl::parse_list(&many).unwrap_err().to_string(), format!("hub lists 17 URLs; at most {MAX_HUB_URLS} are accepted"));
    }

    #[test]
    fn parses_hub_urls() {
        let u = HubUrl::parse("https://hub.example:7070").unwrap();
        assert_eq!(u, HubUrl { tls: true, host: "hub.example".into(), port: 7070 });
        assert_eq!(u.ws_url(), "wss://hub.example:7070/agent/v1/ws");
        assert_eq!(HubUrl::parse("ws://127.0.0.1:9/x").unwrap().port, 9);
        assert_eq!(HubUrl::parse("https://h").unwrap().port, 443);
        assert!(HubUrl::parse("ftp://h").is_err());
        assert!(HubUrl::parse("https://:80").is_err());
    }
}
