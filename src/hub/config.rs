//! The hub's configuration: `/etc/deckhand/hub.toml` (unknown keys
//! refused), overridden key by key by flags and environment variables.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::HubConfig;
use crate::config::in_range;

pub const DEFAULT_PATH: &str = "/etc/deckhand/hub.toml";
pub const DEFAULT_LISTEN: &str = "127.0.0.1:7070";
pub const DEFAULT_DATA_DIR: &str = "/var/lib/deckhand/hub";

pub use crate::config::ConfigError;

/// Shortest `metrics_token` accepted: a guessable token would expose the
/// fleet's figures to anyone who can reach the listener.
const MIN_METRICS_TOKEN: usize = 16;

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct HubFile {
    /// Address for the API and the agent WebSocket (default 127.0.0.1:7070).
    pub listen: Option<String>,
    /// SQLite database directory (default /var/lib/deckhand/hub).
    pub data_dir: Option<PathBuf>,
    /// Where state lives: `sqlite:///path/hub.db` (default: hub.db in
    /// data_dir) or `postgres://user:password@host:5432/db` for several
    /// replicas on one database.
    pub store: Option<String>,
    /// PEM certificate chain and key for HTTPS/WSS.
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    /// mTLS: agents must present a client certificate signed by this CA (PEM).
    pub agent_client_ca: Option<PathBuf>,
    /// Serve plain HTTP/WS; refused unless `listen` is a loopback address.
    pub insecure_loopback: Option<bool>,
    /// API AccessKey pairs as `ID:SECRET`.
    pub access_keys: Option<Vec<String>>,
    /// Agent heartbeat interval, seconds (1..=3600, default 30).
    pub heartbeat_secs: Option<u64>,
    /// Undelivered targets fail with ClientNotResponse after this many
    /// seconds (1..=2592000, default 900).
    pub delivery_timeout_secs: Option<u64>,
    pub log_json: Option<bool>,
    /// Custom parameter values: `"any"` (default, Cloud Assistant's
    /// behaviour: spliced as given) or `"strict"` (only letters, digits and
    /// `._-:/@+,=`; see docs/exec.md).
    pub parameter_values: Option<crate::exec::params::ValuePolicy>,
    /// Audit trail events older than this many days are pruned
    /// (1..=3650, default 90; docs/permissions.md).
    pub audit_retention_days: Option<u64>,
    /// The audit trail keeps at most this many events, the oldest pruned
    /// first (1000..=1000000000, default 1000000): a bound that holds
    /// whatever the call rate.
    pub audit_max_events: Option<u64>,
    /// Stored SendFile contents not used for this many days are deleted,
    /// unless a delivery still needs them (1..=3650, default 7;
    /// docs/files.md).
    pub file_retention_days: Option<u64>,
    /// Bound on all stored SendFile contents, MiB (1..=1048576, default
    /// 10240): an upload beyond it is refused with `QuotaExceeded.FileStore`.
    pub file_store_max_mib: Option<u64>,
    /// AES-256 key (64 hex digits) sealing the stored AccessKey secrets.
    /// Default with SQLite: `<data_dir>/secrets.key`, created at first
    /// start; with PostgreSQL every replica must name the same file.
    pub secrets_key_file: Option<PathBuf>,
    /// `/metrics` requires `Authorization: Bearer <this>` (at least 16
    /// characters); unset, it is served to loopback peers only.
    pub metrics_token: Option<String>,
    /// The web console (docs/console.md).
    pub console: Option<super::console::ConsoleFile>,
    /// deckhand extension: agent self-update (`[agent_update]`:
    /// `builds_dir`, `version`, `percent`, `window`; docs/operations.md).
    pub agent_update: Option<super::updates::AgentUpdateFile>,
}

impl HubFile {
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        crate::config::load(path)
    }

    /// The file named by `explicit`, else the default path if it exists.
    pub fn discover(explicit: Option<&Path>) -> Result<Self, ConfigError> {
        crate::config::discover(explicit, DEFAULT_PATH)
    }

    pub fn overlay(mut self, other: HubFile) -> Self {
        macro_rules! take {
            ($($f:ident),*) => { $( if other.$f.is_some() { self.$f = other.$f; } )* };
        }
        take!(
            listen,
            data_dir,
            store,
            tls_cert,
            tls_key,
            agent_client_ca,
            insecure_loopback,
            access_keys,
            heartbeat_secs,
            delivery_timeout_secs,
            log_json,
            parameter_values,
            audit_retention_days,
            audit_max_events,
            file_retention_days,
            file_store_max_mib,
            secrets_key_file,
            metrics_token,
            console,
            agent_update
        );
        self
    }

    pub fn data_dir(&self) -> PathBuf {
        self.data_dir.clone().unwrap_or_else(|| DEFAULT_DATA_DIR.into())
    }

    /// The store to open: a PostgreSQL URL or an SQLite path.
    pub fn store_spec(&self) -> Result<String, ConfigError> {
        match self.store.as_deref() {
            None => Ok(self.data_dir().join("hub.db").display().to_string()),
            Some(s) if s.starts_with("postgres://") || s.starts_with("postgresql://") => Ok(s.to_string()),
            Some(s) => match s.strip_prefix("sqlite://") {
                Some(path) if !path.is_empty() => Ok(path.to_string()),
                _ => Err(ConfigError::Invalid {
                    key: "store",
                    message: format!("{:?} is neither postgres://… nor sqlite:///path", redact(s)),
                }),
            },
        }
    }

    pub fn resolve(&self) -> Result<HubConfig, ConfigError> {
        self.store_spec()?;
        let listen_s = self.listen.clone().unwrap_or_else(|| DEFAULT_LISTEN.into());
        let listen: SocketAddr = listen_s
            .parse()
            .map_err(|_| ConfigError::Invalid { key: "listen", message: format!("{listen_s:?} is not an address like 0.0.0.0:7070") })?;
        let mut cfg = HubConfig::new(listen);
        match (&self.tls_cert, &self.tls_key) {
            (Some(c), Some(k)) => {
                for (key, p) in [("tls_cert", c), ("tls_key", k)] {
                    if !p.exists() {
                        return Err(ConfigError::Invalid { key, message: format!("{} does not exist", p.display()) });
                    }
                }
                cfg.tls = Some((c.clone(), k.clone()));
            }
            (None, None) if self.insecure_loopback == Some(true) => {
                if !listen.ip().is_loopback() {
                    return Err(ConfigError::Invalid {
                        key: "insecure_loopback",
                        message: format!("plain HTTP is refused on non-loopback address {listen}"),
                    });
                }
            }
            (None, None) => {
                return Err(ConfigError::Invalid {
                    key: "tls_cert",
                    message: "required (or insecure_loopback = true for a loopback-only test hub)".into(),
                });
            }
            _ => return Err(ConfigError::Invalid { key: "tls_key", message: "tls_cert and tls_key go together".into() }),
        }
        if let Some(ca) = &self.agent_client_ca {
            if cfg.tls.is_none() {
                return Err(ConfigError::Invalid { key: "agent_client_ca", message: "mTLS needs tls_cert and tls_key".into() });
            }
            if !ca.exists() {
                return Err(ConfigError::Invalid { key: "agent_client_ca", message: format!("{} does not exist", ca.display()) });
            }
            cfg.agent_client_ca = Some(ca.clone());
        }
        cfg.heartbeat = Duration::from_secs(in_range("heartbeat_secs", self.heartbeat_secs, 30, 1..=3600)?);
        // Up to 30 days.
        cfg.delivery_timeout = Duration::from_secs(in_range("delivery_timeout_secs", self.delivery_timeout_secs, 900, 1..=2_592_000)?);
        cfg.parameter_values = self.parameter_values.unwrap_or_default();
        cfg.audit_retention = Duration::from_secs(in_range("audit_retention_days", self.audit_retention_days, 90, 1..=3650)? * 86_400);
        cfg.audit_max_events =
            in_range("audit_max_events", self.audit_max_events, crate::hub::DEFAULT_AUDIT_MAX_EVENTS, 1000..=1_000_000_000)?;
        let days = in_range("file_retention_days", self.file_retention_days, crate::hub::DEFAULT_FILE_RETENTION_DAYS, 1..=3650)?;
        cfg.file_retention = Duration::from_secs(days * 86_400);
        // Up to 1 TiB.
        cfg.file_store_max_bytes =
            in_range("file_store_max_mib", self.file_store_max_mib, crate::hub::DEFAULT_FILE_STORE_MAX_MIB, 1..=1_048_576)? << 20;
        if let Some(path) = &self.secrets_key_file {
            let b = super::sealed::SecretBox::load(path)
                .map_err(|e| ConfigError::Invalid { key: "secrets_key_file", message: e.to_string() })?;
            cfg.secrets = Some(std::sync::Arc::new(b));
        }
        if let Some(t) = &self.metrics_token {
            if t.len() < MIN_METRICS_TOKEN || !t.bytes().all(|b| b.is_ascii_graphic()) {
                return Err(ConfigError::Invalid {
                    key: "metrics_token",
                    message: format!("must be at least {MIN_METRICS_TOKEN} printable ASCII characters without spaces"),
                });
            }
            cfg.metrics_token = Some(t.clone());
        }
        cfg.console = self.console.clone().unwrap_or_default().resolve().map_err(|e| match e {
            super::console::ConsoleError::Config { key, message } => ConfigError::Invalid { key, message },
            other => ConfigError::Invalid { key: "console", message: other.to_string() },
        })?;
        if let Some(u) = &self.agent_update {
            let catalog =
                super::updates::Catalog::load(u).map_err(|e| ConfigError::Invalid { key: "agent_update", message: e.to_string() })?;
            cfg.agent_updates = Some(std::sync::Arc::new(catalog));
        }
        for pair in self.access_keys.iter().flatten() {
            let Some((id, secret)) = pair.split_once(':').filter(|(i, s)| !i.is_empty() && !s.is_empty()) else {
                return Err(ConfigError::Invalid { key: "access_keys", message: "each entry must be ID:SECRET".into() });
            };
            cfg.access_keys.push((id.to_string(), secret.to_string()));
        }
        Ok(cfg)
    }
}

/// A store URL fit for logs: the password replaced by `***`.
pub fn redact(spec: &str) -> String {
    let Some((scheme, rest)) = spec.split_once("://") else { return spec.to_string() };
    let Some((userinfo, host)) = rest.split_once('@') else { return spec.to_string() };
    match userinfo.split_once(':') {
        Some((user, _)) => format!("{scheme}://{user}:***@{host}"),
        None => spec.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_key_and_bounds() {
        let e = toml::from_str::<HubFile>("listn = \"1.2.3.4:1\"").unwrap_err().to_string();
        assert!(e.contains("listn"), "{e}");
        let f = HubFile { insecure_loopback: Some(true), heartbeat_secs: Some(0), ..Default::default() };
        assert!(f.resolve().unwrap_err().to_string().starts_with("heartbeat_secs: 0 is outside"));
        let f = HubFile { listen: Some("0.0.0.0:7070".into()), insecure_loopback: Some(true), ..Default::default() };
        assert!(f.resolve().unwrap_err().to_string().contains("non-loopback"));
        let f = HubFile { insecure_loopback: Some(true), access_keys: Some(vec!["nocolon".into()]), ..Default::default() };
        assert!(f.resolve().unwrap_err().to_string().starts_with("access_keys"));
        let f = HubFile { insecure_loopback: Some(true), access_keys: Some(vec!["a:b".into()]), ..Default::default() };
        assert_eq!(f.resolve().unwrap().access_keys, vec![("a".to_string(), "b".to_string())]);
        let f: HubFile = toml::from_str("insecure_loopback = true\nparameter_values = \"strict\"").unwrap();
        assert_eq!(f.resolve().unwrap().parameter_values, crate::exec::params::ValuePolicy::Strict);
        let e = toml::from_str::<HubFile>("parameter_values = \"loose\"").unwrap_err().to_string();
        assert!(e.contains("parameter_values") || e.contains("loose"), "{e}");
    }

    #[test]
    fn store_spec_defaults_to_sqlite_and_names_bad_values() {
        let f = HubFile { data_dir: Some("/d".into()), ..Default::default() };
        assert_eq!(f.store_spec().unwrap(), "/d/hub.db");
        let f = HubFile { store: Some("postgres://u:p@h/db".into()), ..Default::default() };
        assert_eq!(f.store_spec().unwrap(), "postgres://u:p@h/db");
        let f = HubFile { store: Some("sqlite:///x/h.db".into()), ..Default::default() };
        assert_eq!(f.store_spec().unwrap(), "/x/h.db");
        let f = HubFile { store: Some("mysql://u:secret@h/db".into()), insecure_loopback: Some(true), ..Default::default() };
        let e = f.resolve().unwrap_err().to_string();
        assert!(e.starts_with("store:") && !e.contains("secret"), "{e}");
        assert_eq!(redact("postgres://u:pw@h:5432/db"), "postgres://u:***@h:5432/db");
    }
}
