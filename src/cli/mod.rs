//! The `deckhand` command for people: run scripts on many nodes with live
//! progress, inspect and stop invocations, list instances, manage access
//! keys, policies and the audit trail, dev mode.
//!
//! Every command goes through the same signed Cloud Assistant API as any
//! SDK would, so there is one contract. Public surface: [`Cli`], [`main`].

mod access;
mod bench;
pub mod client;
pub(crate) mod dev;
mod fleet;
mod kubelet;
mod run;
mod sendfile;
mod show;

use std::path::PathBuf;

use clap::{Parser, Subcommand};

pub use client::{CliError, Client, ClientConfig};
pub use dev::{shutdown_on_signal, wait_for_signal};

#[derive(Debug, Parser)]
#[command(name = "deckhand", version, about = "Run commands on a fleet through a deckhand hub")]
pub struct Cli {
    /// Hub API endpoint, e.g. https://127.0.0.1:7070
    #[arg(long, global = true, env = "DECKHAND_ENDPOINT")]
    pub endpoint: Option<String>,
    #[arg(long, global = true, env = "DECKHAND_ACCESS_KEY_ID")]
    pub access_key_id: Option<String>,
    #[arg(long, global = true, env = "DECKHAND_ACCESS_KEY_SECRET", hide_env_values = true)]
    pub access_key_secret: Option<String>,
    /// CA certificate to trust for the hub (default: system roots).
    #[arg(long, global = true, env = "DECKHAND_CA_FILE")]
    pub ca_file: Option<PathBuf>,
    /// Client config file (written by `deckhand dev`).
    #[arg(long, global = true, env = "DECKHAND_CONFIG")]
    pub config: Option<PathBuf>,
    /// Print machine-readable JSON instead of tables.
    #[arg(long, global = true)]
    pub json: bool,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// All-in-one dev mode: hub + a local agent on loopback, SQLite under a data dir.
    Dev(dev::DevArgs),
    /// Run a script on instances (by id, tag or facts, optionally in a
    /// rate-controlled rollout) and follow it live.
    Run(run::RunArgs),
    /// Put a local file on instances (by id or tag) and follow each one
    /// (Cloud Assistant SendFile; larger than 32 KiB: docs/files.md).
    SendFile(sendfile::SendFileArgs),
    /// List managed instances.
    Instances,
    /// List recent invocations.
    Invocations {
        #[arg(long, default_value_t = 20)]
        limit: u32,
    },
    /// Show per-instance results of one invocation.
    Results {
        invoke_id: String,
        /// Include every record of a periodic invocation.
        #[arg(long)]
        history: bool,
    },
    /// Stop an invocation (on all its instances, or the ones given).
    Stop {
        invoke_id: String,
        #[arg(long = "instance")]
        instances: Vec<String>,
    },
    /// Plan kubelet reservations (offline for a hypothetical node with
    /// --cpus/--memory, or for this node). To apply on a fleet, run an
    /// `ApplyKubeletReserved` invocation (docs/kubelet.md).
    KubeletPlan {
        #[command(flatten)]
        args: crate::kubelet::cli::PlanArgs,
    },
    /// Kubelet reservations: `plan` (as kubelet-plan) and `apply`, a policy
    /// rolled over a node pool a window at a time (docs/kubelet.md).
    Kubelet {
        #[command(subcommand)]
        cmd: KubeletCommand,
    },
    /// Benchmarks (print figures; see docs/performance.md).
    Bench {
        #[command(subcommand)]
        what: bench::BenchCmd,
    },
    /// Stored AccessKeys (issue #18; docs/permissions.md).
    Keys {
        #[command(subcommand)]
        cmd: access::KeysCmd,
    },
    /// A stored key's policy document.
    Policy {
        #[command(subcommand)]
        cmd: access::PolicyCmd,
    },
    /// The audit trail: changes made and calls refused, newest first.
    Audit(access::AuditArgs),
    /// Create an activation code for registering new agents.
    Activate {
        #[arg(long, default_value_t = 10)]
        count: u32,
        #[arg(long, default_value_t = 24)]
        ttl_hours: u32,
        #[arg(long)]
        name: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
pub enum KubeletCommand {
    /// Plan reservations (as `deckhand kubelet-plan`).
    Plan(crate::kubelet::cli::PlanArgs),
    /// Roll a reservation policy over the selected nodes: one
    /// `ApplyKubeletReserved` invocation with a rollout window, followed
    /// live, then a per-node summary (before → after allocatable, result).
    Apply(kubelet::ApplyArgs),
}

impl Cli {
    /// Flags and env override the config file, field by field.
    pub fn client(&self) -> Result<Client, CliError> {
        let path = self.config.clone().unwrap_or_else(client::default_config_path);
        let mut cfg = ClientConfig::load(&path)?.unwrap_or_default();
        if let Some(e) = &self.endpoint {
            cfg.endpoint = e.clone();
        }
        if let Some(k) = &self.access_key_id {
            cfg.access_key_id = k.clone();
        }
        if let Some(s) = &self.access_key_secret {
            cfg.access_key_secret = s.clone();
        }
        if self.ca_file.is_some() {
            cfg.ca_file = self.ca_file.clone();
        }
        if cfg.endpoint.is_empty() {
            return Err(CliError::NoEndpoint(path.display().to_string()));
        }
        Client::new(cfg)
    }
}

/// Runs the CLI; returns the process exit code.
pub fn main(cli: Cli) -> anyhow_free::Result<i32> {
    match &cli.command {
        Command::Dev(args) => dev::run(args).map(|_| 0),
        Command::Run(args) => run::run(&cli, args),
        Command::SendFile(args) => sendfile::run(&cli, args),
        Command::Instances => show::instances(&cli).map(|_| 0),
        Command::Invocations { limit } => show::invocations(&cli, *limit).map(|_| 0),
        Command::Results { invoke_id, history } => show::results(&cli, invoke_id, *history),
        Command::Stop { invoke_id, instances } => show::stop(&cli, invoke_id, instances).map(|_| 0),
        Command::KubeletPlan { args } => {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(|e| CliError::Usage(e.to_string()))?;
            rt.block_on(crate::kubelet::run_cmd(crate::kubelet::KubeletCmd::Plan { args: args.clone() }))
                .map_err(|e| CliError::Usage(e.to_string()))
        }
        Command::Kubelet { cmd: KubeletCommand::Plan(args) } => {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(|e| CliError::Usage(e.to_string()))?;
            rt.block_on(crate::kubelet::run_cmd(crate::kubelet::KubeletCmd::Plan { args: args.clone() }))
                .map_err(|e| CliError::Usage(e.to_string()))
        }
        Command::Kubelet { cmd: KubeletCommand::Apply(args) } => kubelet::apply(&cli, args),
        Command::Bench { what } => bench::run(what).map(|_| 0),
        Command::Keys { cmd } => access::keys(&cli, cmd).map(|_| 0),
        Command::Policy { cmd } => access::policy(&cli, cmd).map(|_| 0),
        Command::Audit(args) => access::audit(&cli, args).map(|_| 0),
        Command::Activate { count, ttl_hours, name } => show::activate(&cli, *count, *ttl_hours, name.as_deref()).map(|_| 0),
    }
}

/// The CLI's error type at its edge (the binary maps it to anyhow).
pub mod anyhow_free {
    pub type Result<T> = std::result::Result<T, super::CliError>;
}
