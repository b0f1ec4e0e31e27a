//! `deckhand-hub`: the control plane. Thin main: flags/env/hub.toml →
//! HubConfig → run; plus `config check`.

// The library's lint gate (src/lib.rs), for the binaries too.
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::string_slice))]

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use clap::{Parser, Subcommand};
use deckhand::exec::params::ValuePolicy;
use deckhand::hub::config::HubFile;

/// The hub's allocator (issue #21, docs/performance.md "The hub's
/// allocator"): mimalloc, which also serves SQLite's C allocations
/// (`override`). glibc only: a static override on musl could mix two
/// allocators. The agent, the supervisor and the CLI (and so the hub that
/// `deckhand dev` runs inside it) keep the system's.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Debug, Parser)]
#[command(name = "deckhand-hub", version, about = "deckhand control plane: agent WebSocket + Cloud Assistant API")]
struct Args {
    /// Config file (default /etc/deckhand/hub.toml when it exists).
    #[arg(long, global = true, env = "DECKHAND_HUB_CONFIG")]
    config: Option<PathBuf>,
    #[command(flatten)]
    flags: Flags,
    #[command(subcommand)]
    command: Option<Cmd>,
}

/// Every flag overrides the same key of hub.toml.
#[derive(Debug, Clone, clap::Args)]
struct Flags {
    #[arg(long, global = true, env = "DECKHAND_HUB_LISTEN")]
    listen: Option<String>,
    #[arg(long, global = true, env = "DECKHAND_HUB_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// `postgres://user:password@host/db` (several replicas) or
    /// `sqlite:///path/hub.db`; default: SQLite in the data directory.
    #[arg(long, global = true, env = "DECKHAND_HUB_STORE", hide_env_values = true)]
    store: Option<String>,
    #[arg(long, global = true, env = "DECKHAND_HUB_TLS_CERT")]
    tls_cert: Option<PathBuf>,
    #[arg(long, global = true, env = "DECKHAND_HUB_TLS_KEY")]
    tls_key: Option<PathBuf>,
    /// Require agents to present a client certificate signed by this CA (mTLS).
    #[arg(long, global = true, env = "DECKHAND_HUB_AGENT_CLIENT_CA")]
    agent_client_ca: Option<PathBuf>,
    /// Serve plain HTTP/WS (only on a loopback address).
    #[arg(long, global = true)]
    insecure_loopback: bool,
    /// API AccessKey pair `ID:SECRET` (repeatable).
    #[arg(long = "access-key", global = true, env = "DECKHAND_HUB_ACCESS_KEYS", value_delimiter = ',', hide_env_values = true)]
    access_keys: Vec<String>,
    #[arg(long, global = true)]
    heartbeat_secs: Option<u64>,
    /// Fail targets not picked up by their agent within this many seconds.
    #[arg(long, global = true)]
    delivery_timeout_secs: Option<u64>,
    /// Write the bound URL here once listening.
    #[arg(long, global = true)]
    addr_file: Option<PathBuf>,
    #[arg(long, global = true)]
    log_json: bool,
    /// Custom parameter values: `any` (Cloud Assistant's behaviour) or
    /// `strict` (only letters, digits and `._-:/@+,=`; docs/exec.md).
    #[arg(long, global = true, env = "DECKHAND_HUB_PARAMETER_VALUES", value_parser = ["any", "strict"])]
    parameter_values: Option<String>,
    /// Bearer token `/metrics` requires (default: loopback peers only).
    #[arg(long, global = true, env = "DECKHAND_HUB_METRICS_TOKEN", hide_env_values = true)]
    metrics_token: Option<String>,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Serve (the default).
    Serve,
    /// Read a password from standard input and print its argon2id hash
    /// for `password_hash` of a `[[console.users]]` entry (docs/console.md).
    ConsolePasswordHash,
    /// Validate the configuration and print the effective settings.
    Config {
        #[command(subcommand)]
        action: ConfigCmd,
    },
}

#[derive(Debug, Subcommand)]
enum ConfigCmd {
    Check,
}

fn main() -> std::process::ExitCode {
    // Where transparent huge pages are `always` (RHEL's default), each of
    // mimalloc's per-thread segments would be backed by 2 MiB pages: about
    // 2 MiB more resident a thread. Best effort: an older kernel refuses,
    // and the hub runs as before.
    #[cfg(target_os = "linux")]
    let _ = nix::sys::prctl::set_thp_disable(true);
    deckhand::config::exit_code(run())
}

fn run() -> anyhow::Result<()> {
    let args = Args::parse();
    if let Some(Cmd::ConsolePasswordHash) = args.command {
        // One line; the trailing newline is not part of the password.
        let mut line = String::new();
        std::io::stdin().read_line(&mut line).context("reading the password from standard input")?;
        let password = line.trim_end_matches(['\n', '\r']);
        anyhow::ensure!(!password.is_empty(), "empty password on standard input");
        println!("{}", deckhand::hub::console::hash_password(password)?);
        return Ok(());
    }
    let f = &args.flags;
    let file = HubFile::discover(args.config.as_deref())?.overlay(HubFile {
        listen: f.listen.clone(),
        data_dir: f.data_dir.clone(),
        store: f.store.clone(),
        tls_cert: f.tls_cert.clone(),
        tls_key: f.tls_key.clone(),
        agent_client_ca: f.agent_client_ca.clone(),
        insecure_loopback: f.insecure_loopback.then_some(true),
        access_keys: (!f.access_keys.is_empty()).then(|| f.access_keys.clone()),
        heartbeat_secs: f.heartbeat_secs,
        delivery_timeout_secs: f.delivery_timeout_secs,
        log_json: f.log_json.then_some(true),
        parameter_values: f.parameter_values.as_deref().map(|v| if v == "strict" { ValuePolicy::Strict } else { ValuePolicy::Any }),
        audit_retention_days: None,
        audit_max_events: None,
        file_retention_days: None,
        file_store_max_mib: None,
        secrets_key_file: None,
        metrics_token: f.metrics_token.clone(),
        console: None,
        agent_update: None,
    });
    let mut cfg = file.resolve()?;
    let store_spec = file.store_spec()?;
    cfg.addr_file = f.addr_file.clone();
    if let Some(Cmd::Config { action: ConfigCmd::Check }) = args.command {
        println!("configuration OK");
        println!("store = {}", deckhand::hub::config::redact(&store_spec));
        println!(
            "listen = {}\ndata_dir = {:?}\ntls = {}\naccess_keys = {}\nheartbeat_secs = {}\ndelivery_timeout_secs = {}\nparameter_values = {}\nconsole = {} ({} users)",
            cfg.listen,
            file.data_dir(),
            cfg.tls.is_some(),
            cfg.access_keys.len(),
            cfg.heartbeat.as_secs(),
            cfg.delivery_timeout.as_secs(),
            cfg.parameter_values.as_str(),
            if cfg.console.enabled { "enabled" } else { "disabled" },
            cfg.console.users.len()
        );
        return Ok(());
    }
    init_log(file.log_json.unwrap_or(false));
    deckhand::tls::install_crypto_provider();
    let data_dir = file.data_dir();
    deckhand::config::private_dir(&data_dir).with_context(|| format!("creating {}", data_dir.display()))?;
    if !store_spec.starts_with("postgres") {
        let db = std::path::Path::new(store_spec.strip_prefix("sqlite://").unwrap_or(&store_spec));
        deckhand::config::private_sqlite_files(db).with_context(|| format!("making {} private", db.display()))?;
    }
    if cfg.secrets.is_none() {
        if store_spec.starts_with("postgres") {
            tracing::warn!("no secrets_key_file: stored AccessKey secrets are kept unsealed in PostgreSQL (docs/permissions.md)");
        } else {
            let path = data_dir.join("secrets.key");
            let sealer =
                deckhand::hub::sealed::SecretBox::create_or_load(&path).with_context(|| format!("secrets key {}", path.display()))?;
            cfg.secrets = Some(Arc::new(sealer));
        }
    }
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    rt.block_on(async move {
        let store = deckhand::hub::store::SqlStore::open(&store_spec)
            .await
            .with_context(|| format!("opening the store {}", deckhand::hub::config::redact(&store_spec)))?;
        deckhand::hub::run(cfg, Arc::new(store), deckhand::cli::shutdown_on_signal()).await.context("hub")
    })
}

fn init_log(json: bool) {
    deckhand::config::init_logging(json);
}
