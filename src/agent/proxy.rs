//! Reaching the hub through an HTTP CONNECT proxy: which proxy applies to
//! a hub (explicit `proxy` setting, else `https_proxy`/`HTTPS_PROXY`, minus
//! `no_proxy`), and the CONNECT handshake itself — a few lines over the TCP
//! stream, so the agent needs no HTTP client library. TLS to the hub runs
//! inside the tunnel with the same verification as a direct connection.

use std::time::Duration;

use base64::Engine;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Longest proxy response header we read: a CONNECT answer is a status
/// line and a few headers; more is a misbehaving (or hostile) proxy.
pub const MAX_RESPONSE_HEADER_BYTES: usize = 8 * 1024;
/// Longest proxy URL or `no_proxy` list accepted from config or environment.
pub const MAX_SETTING_BYTES: usize = 4096;
/// Most `no_proxy` entries.
pub const MAX_NO_PROXY_ENTRIES: usize = 256;

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ProxyError {
    #[error("proxy URL must look like http://[user:password@]host:port (got a {0}-byte value that does not)")]
    BadUrl(usize),
    #[error("proxy URL scheme {0:?} is not supported: only http:// (the tunnel carries TLS to the hub)")]
    Scheme(String),
    #[error("{key} is {len} bytes; the limit is {MAX_SETTING_BYTES}")]
    TooLong { key: &'static str, len: usize },
    #[error("no_proxy lists {0} entries; the limit is {MAX_NO_PROXY_ENTRIES}")]
    TooManyEntries(usize),
}

impl ProxyError {
    /// The setting at fault.
    pub fn key(&self) -> &'static str {
        match self {
            Self::TooLong { key, .. } => key,
            Self::TooManyEntries(_) => "no_proxy",
            Self::BadUrl(_) | Self::Scheme(_) => "proxy",
        }
    }
}

/// One HTTP proxy. `Debug` and `Display` never show the password.
#[derive(Clone, PartialEq)]
pub struct Proxy {
    pub host: String,
    pub port: u16,
    /// Basic auth (user, password), percent-decoded from the URL.
    auth: Option<(String, String)>,
    /// The URL as configured, handed to scripts when `pass_proxy_env` is on.
    url: String,
}

impl std::fmt::Debug for Proxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Proxy({self})")
    }
}

impl std::fmt::Display for Proxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let who = if self.auth.is_some() { "<credentials>@" } else { "" };
        write!(f, "http://{who}{}", authority(&self.host, self.port))
    }
}

fn authority(host: &str, port: u16) -> String {
    if host.contains(':') { format!("[{host}]:{port}") } else { format!("{host}:{port}") }
}

impl Proxy {
    /// `http://[user:password@]host[:port]` (port default 80; a trailing `/`
    /// allowed). A bare `host:port` is read as http://, as curl does.
    pub fn parse(url: &str) -> Result<Self, ProxyError> {
        if url.len() > MAX_SETTING_BYTES {
            return Err(ProxyError::TooLong { key: "proxy", len: url.len() });
        }
        let bad = || ProxyError::BadUrl(url.len());
        let rest = match url.split_once("://") {
            Some((scheme, rest)) if scheme.eq_ignore_ascii_case("http") => rest,
            // The scheme is ours to name back: it is short and has no secret.
            Some((scheme, _)) => return Err(ProxyError::Scheme(scheme.chars().take(16).collect())),
            None => url,
        };
        let rest = rest.strip_suffix('/').unwrap_or(rest);
        if rest.contains(['/', '?', '#']) || rest.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(bad());
        }
        let (auth, hostport) = match rest.rsplit_once('@') {
            Some((userinfo, hp)) => {
                let (u, p) = userinfo.split_once(':').unwrap_or((userinfo, ""));
                (Some((percent_decode(u).ok_or_else(bad)?, percent_decode(p).ok_or_else(bad)?)), hp)
            }
            None => (None, rest),
        };
        let (host, port) = match hostport.rsplit_once(':') {
            _ if hostport.ends_with(']') => (hostport, 80),
            Some((h, p)) => (h, p.parse::<u16>().map_err(|_| bad())?),
            None => (hostport, 80),
        };
        let host = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')).unwrap_or(host);
        if host.is_empty() || port == 0 || host.contains(['[', ']', '@']) {
            return Err(bad());
        }
        Ok(Self { host: host.to_string(), port, auth, url: url.to_string() })
    }

    /// The URL as configured (with its credentials), for scripts' environment.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The CONNECT request for `host:port`.
    fn request(&self, host: &str, port: u16) -> String {
        let target = authority(host, port);
        let mut req = format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n");
        if let Some((u, p)) = &self.auth {
            let token = base64::engine::general_purpose::STANDARD.encode(format!("{u}:{p}"));
            req.push_str(&format!("Proxy-Authorization: Basic {token}\r\n"));
        }
        req.push_str("\r\n");
        req
    }
}

/// `%XX` decoding of URL userinfo; `None` on a malformed escape or non-UTF-8.
fn percent_decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = b.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(std::str::from_utf8(hex).ok()?, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// `no_proxy`: hosts reached directly. Entries are comma- or space-separated:
/// `*` (everything), a host name (matches it and its subdomains; a leading
/// `.` is optional), or an IP address (exact). Ports in entries are ignored.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct NoProxy(Vec<String>);

impl NoProxy {
    pub fn parse(list: &str) -> Result<Self, ProxyError> {
        if list.len() > MAX_SETTING_BYTES {
            return Err(ProxyError::TooLong { key: "no_proxy", len: list.len() });
        }
        let entries: Vec<String> = list
            .split([',', ' '])
            .map(str::trim)
            .filter(|e| !e.is_empty())
            .map(|e| {
                let e = e.trim_start_matches("*.").trim_start_matches('.');
                // "host:port" / "[v6]:port": the port is not part of the match.
                let e = match e.strip_prefix('[') {
                    Some(v6) => v6.split(']').next().unwrap_or(v6),
                    None if e.matches(':').count() == 1 => e.split(':').next().unwrap_or(e),
                    None => e,
                };
                e.to_ascii_lowercase()
            })
            .collect();
        if entries.len() > MAX_NO_PROXY_ENTRIES {
            return Err(ProxyError::TooManyEntries(entries.len()));
        }
        Ok(Self(entries))
    }

    pub fn matches(&self, host: &str) -> bool {
        let host = host.trim_end_matches('.').to_ascii_lowercase();
        self.0.iter().any(|e| e == "*" || *e == host || host.strip_suffix(e.as_str()).is_some_and(|rest| rest.ends_with('.')))
    }
}

/// How the agent reaches the hub: the proxy (if any) and the hosts that
/// bypass it. Resolved once from config and environment.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ProxySettings {
    pub proxy: Option<Proxy>,
    pub no_proxy: NoProxy,
    /// Scripts get `http_proxy`/`https_proxy`/`no_proxy` (both cases).
    pub pass_to_scripts: bool,
}

/// The explicit `proxy` value that means "no proxy, whatever the environment says".
pub const DIRECT: &str = "direct";

impl ProxySettings {
    /// `explicit` (the `proxy` setting) wins; `"direct"` ignores the
    /// environment. Otherwise `https_proxy`, then `HTTPS_PROXY` (curl's
    /// order). `no_proxy` likewise: the setting, else `no_proxy`/`NO_PROXY`.
    pub fn resolve(
        explicit: Option<&str>,
        no_proxy: Option<&str>,
        pass_to_scripts: bool,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Self, ProxyError> {
        let from_env = |names: &[&str]| names.iter().find_map(|n| env(n).filter(|v| !v.trim().is_empty()));
        let proxy = match explicit.map(str::trim) {
            Some(DIRECT) | Some("") => None,
            Some(url) => Some(Proxy::parse(url)?),
            None => from_env(&["https_proxy", "HTTPS_PROXY"]).map(|u| Proxy::parse(u.trim())).transpose()?,
        };
        let no_proxy = match no_proxy {
            Some(list) => NoProxy::parse(list)?,
            None => from_env(&["no_proxy", "NO_PROXY"]).map(|l| NoProxy::parse(&l)).transpose()?.unwrap_or_default(),
        };
        Ok(Self { proxy, no_proxy, pass_to_scripts })
    }

    /// The proxy to use for `host`, if any.
    pub fn for_host(&self, host: &str) -> Option<&Proxy> {
        self.proxy.as_ref().filter(|_| !self.no_proxy.matches(host))
    }

    /// Variables given to scripts: only when the operator said so.
    pub fn script_env(&self) -> Vec<(String, String)> {
        let Some(p) = self.proxy.as_ref().filter(|_| self.pass_to_scripts) else {
            return Vec::new();
        };
        let mut env = Vec::new();
        for name in ["http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY"] {
            env.push((name.to_string(), p.url().to_string()));
        }
        if !self.no_proxy.0.is_empty() {
            let list = self.no_proxy.0.join(",");
            env.push(("no_proxy".to_string(), list.clone()));
            env.push(("NO_PROXY".to_string(), list));
        }
        env
    }
}

/// Why a CONNECT failed. The proxy's own words (reason phrase, body) are
/// never kept: they are untrusted and may be large.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("proxy {proxy} answered CONNECT with HTTP {status} ({meaning})")]
    Status { proxy: String, status: u16, meaning: &'static str },
    #[error("the hub's host name cannot be sent in a CONNECT request (empty, or holds spaces or control characters)")]
    BadTarget,
    #[error("proxy {proxy} sent no valid HTTP response to CONNECT")]
    Malformed { proxy: String },
    #[error("proxy {proxy} sent a response header over {MAX_RESPONSE_HEADER_BYTES} bytes")]
    TooLarge { proxy: String },
    #[error("proxy {proxy} closed the connection during CONNECT")]
    Closed { proxy: String },
    #[error("proxy {proxy} did not answer CONNECT within {after:?}")]
    Timeout { proxy: String, after: Duration },
    #[error("proxy {proxy}: {source}")]
    Io { proxy: String, source: std::io::Error },
}

fn meaning(status: u16) -> &'static str {
    match status {
        400 => "bad request",
        403 => "forbidden by the proxy",
        404 | 502 | 503 | 504 => "the proxy could not reach the hub",
        405 => "the proxy does not allow CONNECT",
        407 => "proxy authentication required or credentials refused",
        _ => "refused",
    }
}

/// Sends CONNECT for `host:port` on `tcp` (already connected to `proxy`)
/// and reads the answer within `timeout`. On success the stream is a raw
/// tunnel to the hub: nothing past the header has been read (the proxy
/// sends nothing more before the TLS client hello, which we send first).
pub async fn connect(tcp: &mut TcpStream, proxy: &Proxy, host: &str, port: u16, timeout: Duration) -> Result<(), ConnectError> {
    let name = proxy.to_string();
    tokio::time::timeout(timeout, handshake(tcp, proxy, host, port, &name))
        .await
        .map_err(|_| ConnectError::Timeout { proxy: name.clone(), after: timeout })?
}

async fn handshake(tcp: &mut TcpStream, proxy: &Proxy, host: &str, port: u16, name: &str) -> Result<(), ConnectError> {
    let io = |source| ConnectError::Io { proxy: name.to_string(), source };
    // The hub's name goes into a request line: nothing that could end it.
    if host.is_empty() || host.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return Err(ConnectError::BadTarget);
    }
    tcp.write_all(proxy.request(host, port).as_bytes()).await.map_err(io)?;
    // Byte at a time: the header is small, and reading past its end would
    // swallow the start of the tunnel.
    let mut head = Vec::with_capacity(256);
    while !head.ends_with(b"\r\n\r\n") {
        if head.len() >= MAX_RESPONSE_HEADER_BYTES {
            return Err(ConnectError::TooLarge { proxy: name.to_string() });
        }
        match tcp.read_u8().await {
            Ok(b) => head.push(b),
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Err(ConnectError::Closed { proxy: name.to_string() }),
            Err(e) => return Err(io(e)),
        }
    }
    match status_code(&head) {
        Some(200..=299) => Ok(()),
        Some(status) => Err(ConnectError::Status { proxy: name.to_string(), status, meaning: meaning(status) }),
        None => Err(ConnectError::Malformed { proxy: name.to_string() }),
    }
}

/// The status of `HTTP/1.x NNN ...`.
fn status_code(head: &[u8]) -> Option<u16> {
    let line = head.split(|&b| b == b'\r').next()?;
    let mut parts = line.split(|&b| b == b' ');
    let version = parts.next()?;
    if !version.starts_with(b"HTTP/1.") {
        return None;
    }
    let code = parts.next()?;
    if code.len() != 3 {
        return None;
    }
    std::str::from_utf8(code).ok()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_proxy_urls_and_hides_credentials() {
        let p = Proxy::parse("http://al%40ice:s3cr%3At@proxy.corp:3128/").unwrap();
        assert_eq!((p.host.as_str(), p.port), ("proxy.corp", 3128));
        assert_eq!(p.auth, Some(("al@ice".into(), "s3cr:t".into())));
        assert_eq!(p.to_string(), "http://<credentials>@proxy.corp:3128");
        assert!(!format!("{p:?}").contains("s3cr"));
        assert_eq!(Proxy::parse("proxy:8080").unwrap().port, 8080);
        assert_eq!(Proxy::parse("http://[::1]:3128").unwrap().host, "::1");
        assert_eq!(Proxy::parse("http://p").unwrap().port, 80);
        assert_eq!(Proxy::parse("http://[::1]").unwrap().port, 80);
        assert_eq!(Proxy::parse("socks5://p:1").unwrap_err(), ProxyError::Scheme("socks5".into()));
        for bad in ["http://", "http://p:x", "http://p:0", "http://p/path", "http://u:%zz@p:1", "http://p q:1"] {
            assert!(matches!(Proxy::parse(bad), Err(ProxyError::BadUrl(_))), "{bad}");
        }
        let long = format!("http://{}:1", "a".repeat(MAX_SETTING_BYTES));
        assert!(matches!(Proxy::parse(&long), Err(ProxyError::TooLong { key: "proxy", .. })));
    }

    #[test]
    fn connect_request_carries_basic_auth() {
        let p = Proxy::parse("http://u:p@h:1").unwrap();
        assert_eq!(p.request("hub", 443), "CONNECT hub:443 HTTP/1.1\r\nHost: hub:443\r\nProxy-Authorization: Basic dTpw\r\n\r\n");
        assert_eq!(Proxy::parse("h:1").unwrap().request("::1", 7), "CONNECT [::1]:7 HTTP/1.1\r\nHost: [::1]:7\r\n\r\n");
    }

    #[test]
    fn no_proxy_matching() {
        let np = NoProxy::parse(".corp.example, 10.0.0.1,localhost:8080 [::1]:9").unwrap();
        assert!(np.matches("hub.corp.example"));
        assert!(np.matches("corp.example"));
        assert!(!np.matches("evilcorp.example"));
        assert!(np.matches("10.0.0.1"));
        assert!(np.matches("LOCALHOST"));
        assert!(np.matches("::1"));
        assert!(!np.matches("10.0.0.10"));
        assert!(NoProxy::parse("*").unwrap().matches("anything"));
        let many = vec!["h"; MAX_NO_PROXY_ENTRIES + 1].join(",");
        assert_eq!(NoProxy::parse(&many).unwrap_err(), ProxyError::TooManyEntries(MAX_NO_PROXY_ENTRIES + 1));
    }

    #[test]
    fn resolution_order() {
        let env = |n: &str| match n {
            "HTTPS_PROXY" => Some("http://upper:1".to_string()),
            "https_proxy" => Some("http://lower:1".to_string()),
            "NO_PROXY" => Some("hub".to_string()),
            _ => None,
        };
        let s = ProxySettings::resolve(None, None, false, env).unwrap();
        assert_eq!(s.proxy.as_ref().unwrap().host, "lower");
        assert!(s.for_host("hub").is_none());
        assert_eq!(s.for_host("other").unwrap().host, "lower");
        assert!(s.script_env().is_empty(), "scripts get proxy variables only when told");
        let s = ProxySettings::resolve(Some("http://mine:2"), Some(""), true, env).unwrap();
        assert_eq!(s.for_host("hub").unwrap().host, "mine");
        let vars = s.script_env();
        assert!(vars.contains(&("https_proxy".into(), "http://mine:2".into())), "{vars:?}");
        assert!(ProxySettings::resolve(Some(DIRECT), None, true, env).unwrap().proxy.is_none());
        assert!(ProxySettings::resolve(None, None, false, |_| None).unwrap().proxy.is_none());
    }

    /// A one-shot proxy on 127.0.0.1 that reads the request header, then
    /// sends `answer` and closes.
    async fn answering(answer: Vec<u8>) -> (Proxy, TcpStream) {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(async move {
            let (mut s, _) = l.accept().await.unwrap();
            let mut head = Vec::new();
            while !head.ends_with(b"\r\n\r\n") {
                match s.read_u8().await {
                    Ok(b) => head.push(b),
                    Err(_) => return,
                }
            }
            let _ = s.write_all(&answer).await;
        });
        let tcp = TcpStream::connect(addr).await.unwrap();
        (Proxy::parse(&format!("http://u:pw@{addr}")).unwrap(), tcp)
    }

    #[tokio::test]
    async fn handshake_outcomes_over_real_sockets() {
        let t = Duration::from_secs(5);
        let (p, mut tcp) = answering(b"HTTP/1.1 200 Connection established\r\n\r\n".to_vec()).await;
        connect(&mut tcp, &p, "hub", 443, t).await.unwrap();
        let (p, mut tcp) = answering(b"HTTP/1.1 407 Nope\r\nProxy-Authenticate: Basic\r\n\r\nsecret body".to_vec()).await;
        let e = connect(&mut tcp, &p, "hub", 443, t).await.unwrap_err().to_string();
        assert!(e.contains("HTTP 407") && !e.contains("Nope") && !e.contains("secret") && !e.contains("pw"), "{e}");
        let (p, mut tcp) = answering(vec![b'x'; MAX_RESPONSE_HEADER_BYTES + 10]).await;
        assert!(matches!(connect(&mut tcp, &p, "hub", 443, t).await, Err(ConnectError::TooLarge { .. })));
        let (p, mut tcp) = answering(b"HTTP/1.1 200".to_vec()).await;
        assert!(matches!(connect(&mut tcp, &p, "hub", 443, t).await, Err(ConnectError::Closed { .. })));
        let (p, mut tcp) = answering(b"garbage\r\n\r\n".to_vec()).await;
        assert!(matches!(connect(&mut tcp, &p, "hub", 443, t).await, Err(ConnectError::Malformed { .. })));
        let (p, mut tcp) = answering(Vec::new()).await;
        assert!(matches!(connect(&mut tcp, &p, "hub\r\nX-Injected: 1", 443, t).await, Err(ConnectError::BadTarget)));
    }

    #[test]
    fn status_line_parsing() {
        assert_eq!(status_code(b"HTTP/1.1 200 Connection established\r\n\r\n"), Some(200));
        assert_eq!(status_code(b"HTTP/1.0 407 Proxy Authentication Required\r\n\r\n"), Some(407));
        assert_eq!(status_code(b"SSH-2.0-OpenSSH\r\n\r\n"), None);
        assert_eq!(status_code(b"HTTP/1.1 20000\r\n\r\n"), None);
        assert_eq!(status_code(b"\xff\xfe\r\n\r\n"), None);
    }
}
