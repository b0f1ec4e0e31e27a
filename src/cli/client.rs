//! The CLI's API client: signed RPC calls to the hub over HTTPS (ureq,
//! blocking: the CLI does one thing at a time).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// One API call never hangs the terminal longer than this.
const CALL_TIMEOUT: Duration = Duration::from_secs(30);
/// `WaitSeconds` when following a run (`deckhand run`, the latency bench):
/// well inside [`CALL_TIMEOUT`], so a held call is answered before the
/// client gives up on it.
pub const FOLLOW_WAIT_SECONDS: i64 = 20;
const _: () =
    assert!((FOLLOW_WAIT_SECONDS as u64) + 5 < CALL_TIMEOUT.as_secs() && FOLLOW_WAIT_SECONDS <= crate::hub::changes::MAX_WAIT_SECONDS);

#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error("no hub configured: pass --endpoint or set DECKHAND_ENDPOINT (or run `deckhand dev`, which writes {0})")]
    NoEndpoint(String),
    #[error("cannot read {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{path}: {source}")]
    Parse { path: PathBuf, source: serde_json::Error },
    #[error("CA file {0}: no certificate found")]
    BadCa(PathBuf),
    #[error("request to {endpoint} failed: {message}")]
    Transport { endpoint: String, message: String },
    #[error("{code}: {message} (HTTP {status}, RequestId {request_id})")]
    Api { status: u16, code: String, message: String, request_id: String },
    #[error("hub answered with something that is not JSON: {0}")]
    BadResponse(String),
    #[error("{0}")]
    Usage(String),
    #[error("cannot encode {what} as JSON: {source}")]
    Encode { what: &'static str, source: serde_json::Error },
}

/// `value` as pretty JSON (what `--json` prints, and the files `deckhand
/// dev` writes).
pub fn pretty_json(what: &'static str, value: &impl Serialize) -> Result<String, CliError> {
    serde_json::to_string_pretty(value).map_err(|source| CliError::Encode { what, source })
}

/// Where and how to reach the hub; `deckhand dev` writes one of these.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ClientConfig {
    pub endpoint: String,
    pub access_key_id: String,
    pub access_key_secret: String,
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
}

pub fn default_config_path() -> PathBuf {
    let base = std::env::var_os("XDG_CONFIG_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config")))
        .unwrap_or_else(|| PathBuf::from("."));
    base.join("deckhand").join("cli.json")
}

impl ClientConfig {
    pub fn load(path: &Path) -> Result<Option<Self>, CliError> {
        match std::fs::read(path) {
            Ok(b) => serde_json::from_slice(&b).map(Some).map_err(|source| CliError::Parse { path: path.into(), source }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(CliError::Read { path: path.into(), source }),
        }
    }
}

pub struct Client {
    cfg: ClientConfig,
    http: ureq::Agent,
}

impl Client {
    pub fn new(cfg: ClientConfig) -> Result<Self, CliError> {
        crate::tls::install_crypto_provider();
        let mut tls = ureq::tls::TlsConfig::builder().provider(ureq::tls::TlsProvider::Rustls);
        if let Some(ca) = &cfg.ca_file {
            let pem = std::fs::read(ca).map_err(|source| CliError::Read { path: ca.clone(), source })?;
            let certs: Vec<_> = ureq::tls::parse_pem(&pem)
                .filter_map(|i| match i {
                    Ok(ureq::tls::PemItem::Certificate(c)) => Some(c),
                    _ => None,
                })
                .collect();
            if certs.is_empty() {
                return Err(CliError::BadCa(ca.clone()));
            }
            tls = tls.root_certs(ureq::tls::RootCerts::Specific(Arc::new(certs)));
        } else {
            tls = tls.root_certs(ureq::tls::RootCerts::PlatformVerifier);
        }
        let http: ureq::Agent = ureq::Agent::config_builder()
            .tls_config(tls.build())
            .http_status_as_error(false)
            .timeout_global(Some(CALL_TIMEOUT))
            .build()
            .into();
        Ok(Self { cfg, http })
    }

    /// A plain GET of `path` on the endpoint (e.g. `/metrics`), with an
    /// optional bearer token: (HTTP status, body).
    pub fn get(&self, path: &str, bearer: Option<&str>) -> Result<(u16, String), CliError> {
        let url = self.cfg.endpoint.trim_end_matches('/').to_string() + path;
        let mut req = self.http.get(&url);
        if let Some(t) = bearer {
            req = req.header("authorization", format!("Bearer {t}"));
        }
        let resp = req.call().map_err(|e| CliError::Transport { endpoint: url.clone(), message: e.to_string() })?;
        let status = resp.status().as_u16();
        let text = resp
            .into_body()
            .with_config()
            .limit(16 * 1024 * 1024)
            .read_to_string()
            .map_err(|e| CliError::Transport { endpoint: url.clone(), message: e.to_string() })?;
        Ok((status, text))
    }

    /// One RPC call; `params` excludes the common ones (added here).
    pub fn call(&self, action: &str, params: &[(&str, String)]) -> Result<Value, CliError> {
        let mut all: Vec<(String, String)> = params.iter().map(|(k, v)| (k.to_string(), v.clone())).collect();
        all.push(("Action".into(), action.into()));
        all.push(("Version".into(), "2014-05-26".into()));
        all.push(("Format".into(), "JSON".into()));
        all.push(("RegionId".into(), "deckhand".into()));
        crate::hub::api::auth::sign_request(&mut all, &self.cfg.access_key_id, &self.cfg.access_key_secret);
        let body = form_urlencoded::Serializer::new(String::new()).extend_pairs(all.iter()).finish();
        let endpoint = self.cfg.endpoint.trim_end_matches('/').to_string() + "/";
        let resp = self
            .http
            .post(&endpoint)
            .header("content-type", "application/x-www-form-urlencoded")
            .send(body.as_bytes())
            .map_err(|e| CliError::Transport { endpoint: endpoint.clone(), message: e.to_string() })?;
        let status = resp.status().as_u16();
        let text = resp
            .into_body()
            .with_config()
            .limit(64 * 1024 * 1024)
            .read_to_string()
            .map_err(|e| CliError::Transport { endpoint: endpoint.clone(), message: e.to_string() })?;
        let v: Value = serde_json::from_str(&text).map_err(|_| CliError::BadResponse(text.chars().take(200).collect()))?;
        if status >= 400 {
            let s = |k: &str| v.get(k).and_then(Value::as_str).unwrap_or("").to_string();
            return Err(CliError::Api { status, code: s("Code"), message: s("Message"), request_id: s("RequestId") });
        }
        Ok(v)
    }
}
