//! `deckhand dev`: hub + one local agent on loopback in one process, real
//! TLS with a generated CA, SQLite under a data dir. Runs until Ctrl-C.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use super::CliError;
use super::client::{ClientConfig, default_config_path};
use crate::agent::{self, AgentConfig};
use crate::hub::agents::hash_token;
use crate::hub::store::{ActivationRow, SqlStore, Store, now_str};
use crate::hub::{self, HubConfig};

#[derive(Debug, clap::Args)]
pub struct DevArgs {
    /// Where the hub database, agent state and certificates live.
    #[arg(long, default_value = ".deckhand-dev")]
    pub data_dir: PathBuf,
    #[arg(long, default_value = "127.0.0.1:7070")]
    pub listen: SocketAddr,
    /// Do not write the CLI config to ~/.config/deckhand/cli.json.
    #[arg(long)]
    pub no_cli_config: bool,
}

#[derive(Serialize, Deserialize)]
struct DevKey {
    id: String,
    secret: String,
}

fn err(e: impl std::fmt::Display) -> CliError {
    CliError::Usage(format!("dev mode: {e}"))
}

fn dev_key(dir: &Path) -> Result<DevKey, CliError> {
    let path = dir.join("access-key.json");
    if let Ok(b) = std::fs::read(&path) {
        return serde_json::from_slice(&b).map_err(|source| CliError::Parse { path, source });
    }
    let key = DevKey { id: crate::ids::random("LTAIdev", 16), secret: uuid::Uuid::new_v4().simple().to_string() };
    crate::tls::write_private(&path, super::client::pretty_json("the dev key", &key)?.as_bytes(), 0o600).map_err(err)?;
    Ok(key)
}

/// The dev console's sign-in, made once per data dir.
#[derive(Serialize, Deserialize)]
struct DevConsoleUser {
    name: String,
    password: String,
}

fn dev_console_user(dir: &Path) -> Result<DevConsoleUser, CliError> {
    let path = dir.join("console-user.json");
    if let Ok(b) = std::fs::read(&path) {
        return serde_json::from_slice(&b).map_err(|source| CliError::Parse { path, source });
    }
    let user = DevConsoleUser { name: "admin".into(), password: uuid::Uuid::new_v4().simple().to_string() };
    let body = serde_json::to_string_pretty(&user).map_err(err)?;
    crate::tls::write_private(&path, body.as_bytes(), 0o600).map_err(err)?;
    Ok(user)
}

/// The hub's bound URL, once it has written it (it does so right after
/// binding, before accepting).
async fn wait_for_addr(path: &Path) -> String {
    loop {
        if let Ok(s) = std::fs::read_to_string(path)
            && !s.trim().is_empty()
        {
            return s.trim().to_string();
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

pub fn run(args: &DevArgs) -> Result<(), CliError> {
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().map_err(err)?;
    rt.block_on(run_async(args))
}

async fn run_async(args: &DevArgs) -> Result<(), CliError> {
    let dir = std::path::absolute(&args.data_dir).map_err(err)?;
    agent::ensure_state_dir(&dir).map_err(err)?;
    let pki = crate::tls::ensure_dev_pki(&dir).map_err(err)?;
    let key = dev_key(&dir)?;
    let store = Arc::new(SqlStore::open_sqlite(&dir.join("hub.db")).await.map_err(err)?);
    let agent_dir = dir.join("agent");
    let mut activation = None;
    if agent::identity::load(&agent_dir).map_err(err)?.is_none() {
        let code = uuid::Uuid::new_v4().simple().to_string();
        let row = ActivationRow {
            activation_id: crate::ids::random("dev-", 12),
            code_hash: hash_token(&code),
            instance_name: "dev-local".into(),
            description: "created by deckhand dev".into(),
            instance_count: 1,
            time_to_live_hours: 1,
            ip_address_range: "127.0.0.0/8".into(),
            created_at: now_str(),
            ..Default::default()
        };
        store.create_activation(&row).await.map_err(err)?;
        activation = Some((row.activation_id, code));
    }
    let console = dev_console_user(&dir)?;
    let shutdown = CancellationToken::new();
    let mut hub_cfg = HubConfig::new(args.listen);
    hub_cfg.tls = Some((pki.server_cert.clone(), pki.server_key.clone()));
    hub_cfg.access_keys = vec![(key.id.clone(), key.secret.clone())];
    hub_cfg.secrets = Some(Arc::new(crate::hub::sealed::SecretBox::create_or_load(&dir.join("secrets.key")).map_err(err)?));
    let password_hash = crate::hub::console::hash_password(&console.password).map_err(err)?;
    hub_cfg.console.users = vec![crate::hub::console::users::User { name: console.name.clone(), password_hash, access_key_id: None }];
    // The agent starts only once the hub listens (no "connection refused"
    // on every start): the hub writes its bound address when it does.
    let addr_file = dir.join("hub.addr");
    let _ = std::fs::remove_file(&addr_file);
    hub_cfg.addr_file = Some(addr_file.clone());
    let mut hub_task = tokio::spawn(hub::run(hub_cfg, store, shutdown.clone()));
    let bound = tokio::select! {
        a = wait_for_addr(&addr_file) => a,
        r = &mut hub_task => return Err(err(format!("hub stopped: {}", match r { Ok(Err(e)) => e.to_string(), other => format!("{other:?}") }))),
    };
    let endpoint = bound.replace("http://", "https://");

    let cli_cfg = ClientConfig {
        endpoint: endpoint.clone(),
        access_key_id: key.id.clone(),
        access_key_secret: key.secret.clone(),
        ca_file: Some(pki.ca_cert.clone()),
    };
    let cfg_json = super::client::pretty_json("the CLI config", &cli_cfg)?;
    crate::tls::write_private(&dir.join("cli.json"), cfg_json.as_bytes(), 0o600).map_err(err)?;
    let cli_path = default_config_path();
    if !args.no_cli_config {
        if let Some(parent) = cli_path.parent() {
            std::fs::create_dir_all(parent).map_err(err)?;
        }
        crate::tls::write_private(&cli_path, cfg_json.as_bytes(), 0o600).map_err(err)?;
    }

    let mut agent_cfg = AgentConfig::new(endpoint.clone(), agent_dir);
    agent_cfg.ca_file = Some(pki.ca_cert.clone());
    agent_cfg.activation = activation;
    agent_cfg.backoff_cap = std::time::Duration::from_secs(2);
    let agent_task = tokio::spawn(agent::run(agent_cfg, shutdown.clone()));

    println!("deckhand dev mode");
    println!("  hub:        {endpoint} (TLS, CA {})", pki.ca_cert.display());
    println!("  console:    {endpoint}/console/");
    println!("  sign in:    {} / {}", console.name, console.password);
    println!("  data dir:   {}", dir.display());
    if args.no_cli_config {
        println!("  CLI config: {} (pass --config)", dir.join("cli.json").display());
    } else {
        println!("  CLI config: {}", cli_path.display());
    }
    println!("  AccessKey:  {} / {}", key.id, key.secret);
    println!("try, in another terminal:");
    println!("  deckhand instances");
    println!("  deckhand run -i <INSTANCE> -- 'uname -a; uptime'");
    println!("Ctrl-C stops hub and agent.");
    use std::io::Write;
    let _ = std::io::stdout().flush();

    tokio::select! {
        _ = crate::cli::dev::wait_for_signal() => {}
        r = hub_task => return Err(err(format!("hub stopped: {r:?}"))),
    }
    shutdown.cancel();
    let _ = agent_task.await;
    println!("stopped");
    Ok(())
}

/// A cancellation token that fires on Ctrl-C or SIGTERM (the daemons'
/// graceful shutdown). Call inside a tokio runtime.
pub fn shutdown_on_signal() -> CancellationToken {
    let shutdown = CancellationToken::new();
    let stop = shutdown.clone();
    tokio::spawn(async move {
        wait_for_signal().await;
        tracing::info!("shutdown signal received");
        stop.cancel();
    });
    shutdown
}

/// Ctrl-C or SIGTERM.
pub async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        // Without a SIGTERM handler (not expected), Ctrl-C still ends it.
        match signal(SignalKind::terminate()) {
            Ok(mut term) => tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            },
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
