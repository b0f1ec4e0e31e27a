//! `deckhand-agent`: the node daemon. Thin main: flags → AgentConfig → run.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use tokio_util::sync::CancellationToken;

#[derive(Debug, Parser)]
#[command(name = "deckhand-agent", version, about = "deckhand node agent")]
struct Args {
    #[arg(long, global = true)]
    log_json: bool,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Debug, clap::Args)]
struct Conn {
    /// Hub URL, e.g. https://hub.example:7070
    #[arg(long, env = "DECKHAND_AGENT_HUB")]
    hub: String,
    #[arg(long, env = "DECKHAND_AGENT_STATE_DIR", default_value = "/var/lib/deckhand/agent")]
    state_dir: PathBuf,
    /// Pin this CA instead of trusting the system roots.
    #[arg(long, env = "DECKHAND_AGENT_CA_FILE")]
    ca_file: Option<PathBuf>,
    /// Allow plain ws:// to a loopback hub (tests only).
    #[arg(long)]
    insecure_loopback: bool,
    #[arg(long, env = "DECKHAND_ACTIVATION_ID")]
    activation_id: Option<String>,
    #[arg(long, env = "DECKHAND_ACTIVATION_CODE", hide_env_values = true)]
    activation_code: Option<String>,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Connect to the hub and serve invocations until stopped.
    Run {
        #[command(flatten)]
        conn: Conn,
        /// Scripts run at once; the rest wait in order.
        #[arg(long, default_value_t = 8)]
        max_concurrent: usize,
        /// Reconnect back-off cap in seconds.
        #[arg(long, default_value_t = 60)]
        backoff_cap_secs: u64,
    },
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_env("DECKHAND_LOG").unwrap_or_else(|_| "info".into());
    if args.log_json {
        tracing_subscriber::fmt().json().with_env_filter(filter).with_writer(std::io::stderr).init();
    } else {
        tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).init();
    }
    deckhand::tls::install_crypto_provider();
    match args.command {
        Cmd::Run { conn, max_concurrent, backoff_cap_secs } => {
            let mut cfg = deckhand::agent::AgentConfig::new(conn.hub, conn.state_dir);
            cfg.ca_file = conn.ca_file;
            cfg.insecure_loopback = conn.insecure_loopback;
            cfg.activation = conn.activation_id.zip(conn.activation_code);
            anyhow::ensure!((1..=256).contains(&max_concurrent), "--max-concurrent must be within 1..=256, got {max_concurrent}");
            cfg.max_concurrent = max_concurrent;
            cfg.backoff_cap = Duration::from_secs(backoff_cap_secs.clamp(1, 3600));
            // Small runtime: the agent is mostly idle; two workers suffice.
            let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
            rt.block_on(async move {
                let shutdown = CancellationToken::new();
                let stop = shutdown.clone();
                tokio::spawn(async move {
                    deckhand::cli::wait_for_signal().await;
                    tracing::info!("shutdown signal received");
                    stop.cancel();
                });
                deckhand::agent::run(cfg, shutdown).await.context("agent")
            })
        }
    }
}
