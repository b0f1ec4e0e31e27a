//! The agent's configuration: `/etc/deckhand/agent.toml` (every key
//! optional, unknown keys refused), overridden key by key by flags and
//! environment variables. `deckhand-agent config check` prints the result.
//! On Windows the defaults live under `%ProgramData%\deckhand\` instead
//! ([`default_path`], [`default_state_dir`], [`default_log_dir`]).

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::AgentConfig;
use super::proxy::ProxySettings;
use super::selfcheck;
use super::transport::HubUrl;
use crate::config::in_range;

/// Unix default config file; see [`default_path`] for the platform's.
pub const DEFAULT_PATH: &str = "/etc/deckhand/agent.toml";
/// Unix default state directory; see [`default_state_dir`] for the platform's.
pub const DEFAULT_STATE_DIR: &str = "/var/lib/deckhand/agent";

/// The machine-wide application data folder (`%ProgramData%`,
/// `C:\ProgramData` on a standard installation), asked of the shell's known
/// folders rather than read from the environment: a service's environment
/// need not have it right (Wine gives services `ProgramData=C:\users\Public`).
/// Falls back to the variable, then to `C:\ProgramData`.
#[cfg(windows)]
pub fn program_data() -> PathBuf {
    known_program_data()
        .or_else(|| std::env::var_os("ProgramData").map(PathBuf::from))
        .filter(|p| p.is_absolute())
        .unwrap_or_else(|| PathBuf::from(r"C:\ProgramData"))
}

/// `SHGetKnownFolderPath(FOLDERID_ProgramData)`. Declared here because the
/// crate's windows-sys features do not include the shell.
#[cfg(windows)]
fn known_program_data() -> Option<PathBuf> {
    use std::ffi::c_void;
    use std::os::windows::ffi::OsStringExt;

    use windows_sys::core::GUID;

    /// FOLDERID_ProgramData {62AB5D82-FDC1-4DC3-A9DD-070D1D495D97}.
    const FOLDERID_PROGRAM_DATA: GUID = GUID::from_u128(0x62ab5d82_fdc1_4dc3_a9dd_070d1d495d97);
    #[link(name = "shell32")]
    unsafe extern "system" {
        fn SHGetKnownFolderPath(rfid: *const GUID, flags: u32, token: *mut c_void, path: *mut *mut u16) -> i32;
    }
    #[link(name = "ole32")]
    unsafe extern "system" {
        fn CoTaskMemFree(pv: *const c_void);
    }
    let mut raw: *mut u16 = std::ptr::null_mut();
    // SAFETY: valid GUID pointer, default flags, no token (this user), and an
    // out pointer the call fills with a NUL-terminated string that we free
    // with CoTaskMemFree whatever the result (it may be set on failure too).
    unsafe {
        let hr = SHGetKnownFolderPath(&FOLDERID_PROGRAM_DATA, 0, std::ptr::null_mut(), &mut raw);
        let path = (hr >= 0 && !raw.is_null()).then(|| {
            // Bounded by the longest path Windows has (32 767 UTF-16 units).
            let len = (0..32_767).take_while(|&i| *raw.add(i) != 0).count();
            PathBuf::from(std::ffi::OsString::from_wide(std::slice::from_raw_parts(raw, len)))
        });
        CoTaskMemFree(raw.cast());
        path
    }
}

/// The default config file: `/etc/deckhand/agent.toml`;
/// Windows `%ProgramData%\deckhand\agent.toml`.
pub fn default_path() -> PathBuf {
    #[cfg(windows)]
    return program_data().join("deckhand").join("agent.toml");
    #[cfg(not(windows))]
    PathBuf::from(DEFAULT_PATH)
}

/// The default state directory (identity, journal, status):
/// `/var/lib/deckhand/agent`; Windows `%ProgramData%\deckhand\agent`
/// (a Unix path there would become `C:\var\lib\…`).
pub fn default_state_dir() -> PathBuf {
    #[cfg(windows)]
    return program_data().join("deckhand").join("agent");
    #[cfg(not(windows))]
    PathBuf::from(DEFAULT_STATE_DIR)
}

/// Windows only (Unix logs to the journal): where the service writes its
/// daily log files, `%ProgramData%\deckhand\logs`.
#[cfg(windows)]
pub fn default_log_dir() -> PathBuf {
    program_data().join("deckhand").join("logs")
}
/// More parallel scripts than this is a fork bomb, not a fleet tool.
pub const MAX_CONCURRENT: usize = 256;
pub const MAX_BACKOFF_CAP_SECS: u64 = 3600;

pub use crate::config::ConfigError;

/// Keys of agent.toml; the same names (upper-cased, DECKHAND_AGENT_ prefix
/// or as documented per flag) exist as flags and environment variables.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct AgentFile {
    /// Hub URL, `https://host:port`; several hub replicas may be listed,
    /// comma-separated (the agent moves to the next when one fails).
    pub hub: Option<String>,
    /// Journal, identity and status live here (0700).
    pub state_dir: Option<PathBuf>,
    /// Pinned CA certificate (PEM); absent: system roots.
    pub ca_file: Option<PathBuf>,
    /// mTLS: client certificate and key (PEM) presented to the hub.
    pub client_cert: Option<PathBuf>,
    pub client_key: Option<PathBuf>,
    /// Allow plain ws:// to a loopback hub.
    pub insecure_loopback: Option<bool>,
    /// Scripts running at once (1..=256, default 8).
    pub max_concurrent: Option<usize>,
    /// Reconnect back-off ceiling in seconds (1..=3600, default 60).
    pub backoff_cap_secs: Option<u64>,
    /// One-time registration, used only while no identity exists.
    pub activation_id: Option<String>,
    pub activation_code: Option<String>,
    /// Log as JSON lines.
    pub log_json: Option<bool>,
    /// HTTP CONNECT proxy to the hub, `http://[user:password@]host:port`;
    /// absent: `https_proxy`/`HTTPS_PROXY` from the environment; `"direct"`:
    /// no proxy whatever the environment says.
    pub proxy: Option<String>,
    /// Hosts reached without the proxy (comma-separated); absent:
    /// `no_proxy`/`NO_PROXY` from the environment.
    pub no_proxy: Option<String>,
    /// Give scripts `http_proxy`/`https_proxy`/`no_proxy` (default false).
    pub pass_proxy_env: Option<bool>,
    /// The agent's own resident memory ceiling in MiB (16..=65536, default
    /// 128); sustained excess restarts the agent (docs/operations.md).
    pub memory_max_mib: Option<u64>,
    /// The agent's own CPU ceiling, percent of one core (5..=100, default 50).
    pub cpu_max_percent: Option<u32>,
    /// Under systemd, the slice each run's supervisor is started in
    /// (default `deckhand-runs.slice`; `""`: runs share the agent's cgroup).
    pub runs_slice: Option<String>,
    /// Self-update: the base64 ed25519 public key builds must be signed
    /// with; absent: updates offered by the hub are refused.
    pub update_public_key: Option<String>,
}

impl AgentFile {
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        crate::config::load(path)
    }

    /// The file named by `explicit`, else the default path if it exists.
    pub fn discover(explicit: Option<&Path>) -> Result<Self, ConfigError> {
        let default = default_path();
        match explicit {
            Some(p) => Self::load(p),
            None if default.exists() => Self::load(&default),
            None => Ok(Self::default()),
        }
    }

    /// `other`'s set keys win.
    pub fn overlay(mut self, other: AgentFile) -> Self {
        macro_rules! take {
            ($($f:ident),*) => { $( if other.$f.is_some() { self.$f = other.$f; } )* };
        }
        take!(
            hub,
            state_dir,
            ca_file,
            client_cert,
            client_key,
            insecure_loopback,
            max_concurrent,
            backoff_cap_secs,
            activation_id,
            activation_code,
            log_json,
            proxy,
            no_proxy,
            pass_proxy_env,
            memory_max_mib,
            cpu_max_percent,
            runs_slice,
            update_public_key
        );
        self
    }

    /// Validates every key and builds the runtime config.
    pub fn resolve(&self) -> Result<AgentConfig, ConfigError> {
        let hub = self.hub.clone().ok_or(ConfigError::Invalid {
            key: "hub",
            message: "required (flag --hub, env DECKHAND_AGENT_HUB, or `hub` in agent.toml)".into(),
        })?;
        HubUrl::parse_list(&hub).map_err(|e| ConfigError::Invalid { key: "hub", message: e.to_string() })?;
        let mut cfg = AgentConfig::new(hub, self.state_dir.clone().unwrap_or_else(default_state_dir));
        if let Some(ca) = &self.ca_file {
            if !ca.exists() {
                return Err(ConfigError::Invalid { key: "ca_file", message: format!("{} does not exist", ca.display()) });
            }
            cfg.ca_file = Some(ca.clone());
        }
        cfg.client_cert = match (&self.client_cert, &self.client_key) {
            (Some(c), Some(k)) => Some((c.clone(), k.clone())),
            (None, None) => None,
            _ => return Err(ConfigError::Invalid { key: "client_key", message: "client_cert and client_key go together".into() }),
        };
        cfg.insecure_loopback = self.insecure_loopback.unwrap_or(false);
        cfg.max_concurrent = in_range("max_concurrent", self.max_concurrent, 8, 1..=MAX_CONCURRENT)?;
        cfg.backoff_cap = Duration::from_secs(in_range("backoff_cap_secs", self.backoff_cap_secs, 60, 1..=MAX_BACKOFF_CAP_SECS)?);
        let mem = in_range("memory_max_mib", self.memory_max_mib, selfcheck::DEFAULT_MEMORY_MAX_MIB, selfcheck::MEMORY_MAX_MIB_RANGE)?;
        let cpu = in_range("cpu_max_percent", self.cpu_max_percent, selfcheck::DEFAULT_CPU_MAX_PERCENT, selfcheck::CPU_MAX_PERCENT_RANGE)?;
        cfg.limits = selfcheck::Limits { memory_max_bytes: mem * 1024 * 1024, cpu_max_percent: cpu };
        if let Some(slice) = &self.runs_slice {
            if !slice.is_empty() && !crate::exec::scope::valid_slice(slice) {
                return Err(ConfigError::Invalid {
                    key: "runs_slice",
                    message: "must be a unit name like deckhand-runs.slice, or empty".into(),
                });
            }
            cfg.runs_slice = slice.clone();
        }
        if let Some(k) = &self.update_public_key {
            cfg.update_key = Some(
                super::update::UpdateKey::parse(k)
                    .map_err(|e| ConfigError::Invalid { key: "update_public_key", message: e.to_string() })?,
            );
        }
        cfg.proxy = ProxySettings::resolve(self.proxy.as_deref(), self.no_proxy.as_deref(), self.pass_proxy_env.unwrap_or(false), |name| {
            std::env::var(name).ok()
        })
        .map_err(|e| ConfigError::Invalid { key: e.key(), message: e.to_string() })?;
        cfg.activation = match (&self.activation_id, &self.activation_code) {
            (Some(i), Some(c)) => Some((i.clone(), c.clone())),
            (None, None) => None,
            _ => {
                return Err(ConfigError::Invalid {
                    key: "activation_code",
                    message: "activation_id and activation_code go together".into(),
                });
            }
        };
        Ok(cfg)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_key_is_named() {
        let e = toml::from_str::<AgentFile>("hub = \"https://h:1\"\nmax_concurent = 3\n").unwrap_err().to_string();
        assert!(e.contains("max_concurent"), "{e}");
    }

    #[test]
    fn overlay_and_validation() {
        let file: AgentFile = toml::from_str("hub = \"https://h:1\"\nmax_concurrent = 4\n").unwrap();
        let flags = AgentFile { max_concurrent: Some(300), ..Default::default() };
        let e = file.clone().overlay(flags).resolve().unwrap_err().to_string();
        assert!(e.contains("max_concurrent") && e.contains("1..=256"), "{e}");
        let cfg = file.clone().resolve().unwrap();
        assert_eq!(cfg.max_concurrent, 4);
        assert_eq!(cfg.limits, selfcheck::Limits::default());
        let e = file.clone().overlay(AgentFile { memory_max_mib: Some(8), ..Default::default() }).resolve().unwrap_err().to_string();
        assert_eq!(e, "memory_max_mib: 8 is outside 16..=65536");
        let e = file.clone().overlay(AgentFile { cpu_max_percent: Some(0), ..Default::default() }).resolve().unwrap_err().to_string();
        assert_eq!(e, "cpu_max_percent: 0 is outside 5..=100");
        let e =
            file.clone().overlay(AgentFile { proxy: Some("socks5://p:1".into()), ..Default::default() }).resolve().unwrap_err().to_string();
        assert!(e.starts_with("proxy: proxy URL scheme \"socks5\""), "{e}");
        assert_eq!(cfg.backoff_cap, Duration::from_secs(60));
        let e = AgentFile::default().resolve().unwrap_err().to_string();
        assert!(e.starts_with("hub: required"), "{e}");
        let e = AgentFile { hub: Some("ftp://x".into()), ..Default::default() }.resolve().unwrap_err().to_string();
        assert!(e.starts_with("hub:"), "{e}");
    }
}
