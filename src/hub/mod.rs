//! The control plane: agent WebSocket endpoint, Cloud Assistant OpenAPI,
//! and the durable store. Public surface: [`HubConfig`], [`run`], [`Hub`].

pub(crate) mod agents;
pub(crate) mod api;
pub(crate) mod authz;
pub mod changes;
pub(crate) mod cluster;
pub mod config;
pub mod console;
pub(crate) mod delivery;
pub mod edge;
mod live;
pub mod metrics;
mod rollout;
pub mod sealed;
mod server;
pub(crate) mod signature;
pub mod store;
pub mod updates;
mod writer;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

pub use server::{HEADER_READ_TIMEOUT, serve};

use store::Store;

#[derive(Debug, thiserror::Error)]
pub enum HubError {
    #[error("store: {0}")]
    Store(#[from] store::StoreError),
    #[error("tls: {0}")]
    Tls(#[from] crate::tls::TlsError),
    #[error("cannot listen on {addr}: {source}")]
    Bind { addr: SocketAddr, source: std::io::Error },
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

/// Everything the hub needs to run; built from flags/config by the binary.
#[derive(Debug, Clone)]
pub struct HubConfig {
    pub listen: SocketAddr,
    /// `None` serves plain HTTP/WS (tests and loopback only).
    pub tls: Option<(PathBuf, PathBuf)>,
    /// mTLS for agents: the agent endpoint requires a client certificate
    /// signed by this CA.
    pub agent_client_ca: Option<PathBuf>,
    pub heartbeat: Duration,
    /// A target never delivered within this time fails with `ClientNotResponse`.
    pub delivery_timeout: Duration,
    /// AccessKey pairs (id, secret) accepted on the API. Empty: API refuses all calls.
    pub access_keys: Vec<(String, String)>,
    /// Write the bound address here once listening (for tests and scripts).
    pub addr_file: Option<PathBuf>,
    pub region_id: String,
    /// Which custom parameter values RunCommand/InvokeCommand accept
    /// (`parameter_values` in hub.toml; docs/exec.md).
    pub parameter_values: crate::exec::params::ValuePolicy,
    /// The audit trail keeps events this long (`audit_retention_days`).
    pub audit_retention: Duration,
    /// ... and at most this many (`audit_max_events`).
    pub audit_max_events: u64,
    /// Stored file contents unused this long are deleted unless a delivery
    /// still needs them (`file_retention_days`; docs/files.md).
    pub file_retention: Duration,
    /// Bound on all stored file contents (`file_store_max_mib`).
    pub file_store_max_bytes: u64,
    /// Seals stored AccessKey secrets (`secrets_key_file`; docs/permissions.md).
    /// `None`: stored secrets are kept as written (PostgreSQL without a key file).
    pub secrets: Option<Arc<sealed::SecretBox>>,
    /// Bearer token `/metrics` requires; `None`: loopback peers only.
    pub metrics_token: Option<String>,
    /// The web console (`[console]` in hub.toml; docs/console.md).
    pub console: console::ConsoleConfig,
    /// Agent builds and the self-update policy (`[agent_update]`).
    pub agent_updates: Option<Arc<updates::Catalog>>,
}

/// Default bound on the audit trail's size in events.
pub const DEFAULT_AUDIT_MAX_EVENTS: u64 = 1_000_000;
/// Default `file_retention_days`.
pub const DEFAULT_FILE_RETENTION_DAYS: u64 = 7;
/// Default `file_store_max_mib` (10 GiB).
pub const DEFAULT_FILE_STORE_MAX_MIB: u64 = 10_240;

impl HubConfig {
    pub fn new(listen: SocketAddr) -> Self {
        Self {
            listen,
            tls: None,
            agent_client_ca: None,
            heartbeat: Duration::from_secs(30),
            delivery_timeout: Duration::from_secs(15 * 60),
            access_keys: Vec::new(),
            addr_file: None,
            region_id: "deckhand".to_string(),
            parameter_values: crate::exec::params::ValuePolicy::Any,
            audit_retention: Duration::from_secs(90 * 86_400),
            audit_max_events: DEFAULT_AUDIT_MAX_EVENTS,
            file_retention: Duration::from_secs(DEFAULT_FILE_RETENTION_DAYS * 86_400),
            file_store_max_bytes: DEFAULT_FILE_STORE_MAX_MIB << 20,
            secrets: None,
            metrics_token: None,
            console: console::ConsoleConfig::default(),
            agent_updates: None,
        }
    }
}

/// Lifts the soft open-file limit to the hard limit: every agent holds a
/// socket, and the default soft limit (1024) would cap the fleet.
/// Returns the limit now in force (0 where unknown).
pub fn raise_fd_limit() -> u64 {
    #[cfg(unix)]
    {
        use nix::sys::resource::{Resource, getrlimit, setrlimit};
        if let Ok((_, hard)) = getrlimit(Resource::RLIMIT_NOFILE) {
            let _ = setrlimit(Resource::RLIMIT_NOFILE, hard, hard);
            return hard;
        }
    }
    0
}

/// Shared state every handler sees.
pub struct Hub {
    /// This replica's identity (see `cluster`).
    pub id: String,
    pub store: Arc<dyn Store>,
    pub agents: agents::Registry,
    pub live: live::LiveOutput,
    pub writer: writer::Writer,
    /// Committed invocation changes, for calls that wait on them.
    pub changes: Arc<changes::Changes>,
    pub config: HubConfig,
    pub nonces: api::auth::NonceCache,
    /// Parsed policies of stored keys (see `authz::PolicyCache`).
    pub policies: authz::PolicyCache,
    /// Signed-in console users (this replica's memory; `console::session`).
    pub console_sessions: console::Sessions,
    pub console_limiter: console::SignInLimiter,
    pub shutdown: CancellationToken,
}

/// Runs the hub until `shutdown` fires, then closes agent sockets and
/// lets in-flight requests finish.
pub async fn run(config: HubConfig, store: Arc<dyn Store>, shutdown: CancellationToken) -> Result<(), HubError> {
    let fds = raise_fd_limit();
    let id = cluster::new_hub_id();
    tracing::info!(open_files_limit = fds, hub_id = %id, shared_store = store.shared(), "starting hub");
    // Alone on its store, a starting hub knows no agent is connected; with
    // replicas, only those of replicas that stopped are released.
    let cutoff =
        if store.shared() { store::ago_str(cluster::DEAD_AFTER) } else { store::stamp(chrono::Utc::now() + chrono::Duration::days(1)) };
    store.release_dead_hubs(&cutoff).await?;
    store.hub_alive(&id).await?;
    if let Some(sealer) = &config.secrets {
        match sealed::reseal_stored(store.as_ref(), sealer).await {
            Ok(r) => {
                if r.sealed > 0 {
                    tracing::info!(sealed = r.sealed, "stored access key secrets written before sealing are now sealed");
                }
                if r.foreign > 0 {
                    tracing::error!(
                        keys = r.foreign,
                        "stored access keys are sealed with another secrets_key_file: they cannot sign until that file is restored"
                    );
                }
            }
            Err(e) => tracing::warn!(error = %e, "sealing stored access key secrets; they stay readable as they are"),
        }
    }
    let changes = Arc::new(changes::Changes::default());
    let hub = Arc::new(Hub {
        id,
        writer: writer::Writer::spawn(store.clone(), changes.clone())?,
        changes,
        store,
        agents: agents::Registry::default(),
        live: live::LiveOutput::default(),
        nonces: api::auth::NonceCache::default(),
        policies: authz::PolicyCache::default(),
        console_sessions: console::Sessions::default(),
        console_limiter: console::SignInLimiter::default(),
        config: config.clone(),
        shutdown: shutdown.clone(),
    });
    tokio::spawn(api::sweeper(hub.clone()));
    tokio::spawn(cluster::run(hub.clone()));
    tokio::spawn(rollout::run(hub.clone()));
    tokio::spawn(api::audit::pruner(hub.clone()));
    tokio::spawn(api::files::pruner(hub.clone()));
    serve(hub, shutdown).await
}
