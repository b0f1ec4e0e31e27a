//! `deckhand-hub`: the control plane. Thin main: flags → HubConfig → run.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::Parser;
use tokio_util::sync::CancellationToken;

#[derive(Debug, Parser)]
#[command(name = "deckhand-hub", version, about = "deckhand control plane: agent WebSocket + Cloud Assistant API")]
struct Args {
    #[arg(long, env = "DECKHAND_HUB_LISTEN", default_value = "127.0.0.1:7070")]
    listen: SocketAddr,
    /// Directory for the SQLite database.
    #[arg(long, env = "DECKHAND_HUB_DATA_DIR", default_value = "/var/lib/deckhand")]
    data_dir: PathBuf,
    #[arg(long, env = "DECKHAND_HUB_TLS_CERT")]
    tls_cert: Option<PathBuf>,
    #[arg(long, env = "DECKHAND_HUB_TLS_KEY")]
    tls_key: Option<PathBuf>,
    /// Serve plain HTTP/WS (only on a loopback address).
    #[arg(long)]
    insecure_loopback: bool,
    /// API AccessKey pair `ID:SECRET` (repeatable).
    #[arg(long = "access-key", env = "DECKHAND_HUB_ACCESS_KEYS", value_delimiter = ',', hide_env_values = true)]
    access_keys: Vec<String>,
    #[arg(long, default_value_t = 30)]
    heartbeat_secs: u64,
    /// Fail targets not picked up by their agent within this many seconds.
    #[arg(long, default_value_t = 900)]
    delivery_timeout_secs: u64,
    /// Write the bound URL here once listening.
    #[arg(long)]
    addr_file: Option<PathBuf>,
    #[arg(long)]
    log_json: bool,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    deckhand_log(args.log_json);
    deckhand::tls::install_crypto_provider();
    let mut cfg = deckhand::hub::HubConfig::new(args.listen);
    match (&args.tls_cert, &args.tls_key) {
        (Some(c), Some(k)) => cfg.tls = Some((c.clone(), k.clone())),
        (None, None) if args.insecure_loopback => {
            if !args.listen.ip().is_loopback() {
                bail!("--insecure-loopback refuses to serve plain HTTP on non-loopback address {}", args.listen);
            }
        }
        (None, None) => bail!("no TLS certificate: pass --tls-cert and --tls-key (or --insecure-loopback for a loopback-only test hub)"),
        _ => bail!("--tls-cert and --tls-key go together"),
    }
    if !(1..=3600).contains(&args.heartbeat_secs) {
        bail!("--heartbeat-secs must be within 1..=3600, got {}", args.heartbeat_secs);
    }
    cfg.heartbeat = Duration::from_secs(args.heartbeat_secs);
    cfg.delivery_timeout = Duration::from_secs(args.delivery_timeout_secs.max(1));
    cfg.addr_file = args.addr_file.clone();
    for pair in &args.access_keys {
        let (id, secret) = pair.split_once(':').with_context(|| format!("--access-key {id:?}: expected ID:SECRET", id = pair.split(':').next().unwrap_or("")))?;
        cfg.access_keys.push((id.to_string(), secret.to_string()));
    }
    std::fs::create_dir_all(&args.data_dir).with_context(|| format!("creating {}", args.data_dir.display()))?;
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    rt.block_on(async move {
        let store = deckhand::hub::store::SqliteStore::open(&args.data_dir.join("hub.db")).await.context("opening the store")?;
        let shutdown = CancellationToken::new();
        let stop = shutdown.clone();
        tokio::spawn(async move {
            deckhand::cli::wait_for_signal().await;
            tracing::info!("shutdown signal received");
            stop.cancel();
        });
        deckhand::hub::run(cfg, Arc::new(store), shutdown).await.context("hub")
    })
}

fn deckhand_log(json: bool) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("DECKHAND_LOG").unwrap_or_else(|_| "info".into());
    if json {
        tracing_subscriber::fmt().json().with_env_filter(filter).with_writer(std::io::stderr).init();
    } else {
        tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).init();
    }
}
