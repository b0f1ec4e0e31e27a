//! `deckhand-agent`: the node daemon. Thin main: flags/env/config file →
//! AgentConfig → run; plus `status`, `register` and `config check`, and on
//! Windows `service install|uninstall` and the SCM entry `windows-service`.

// The library's lint gate (src/lib.rs), for the binaries too.
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::string_slice))]

use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use deckhand::agent::config::AgentFile;

#[derive(Debug, Parser)]
#[command(name = "deckhand-agent", version = deckhand_version(), about = "deckhand node agent")]
struct Args {
    /// Config file (default /etc/deckhand/agent.toml, Windows %ProgramData%\deckhand\agent.toml, when it exists).
    #[arg(long, global = true, env = "DECKHAND_AGENT_CONFIG")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Cmd,
}

/// Every flag overrides the same key of agent.toml.
#[derive(Debug, clap::Args)]
struct Flags {
    /// Hub URL, e.g. https://hub.example:7070
    #[arg(long, env = "DECKHAND_AGENT_HUB")]
    hub: Option<String>,
    #[arg(long, env = "DECKHAND_AGENT_STATE_DIR")]
    state_dir: Option<PathBuf>,
    /// Pin this CA instead of trusting the system roots.
    #[arg(long, env = "DECKHAND_AGENT_CA_FILE")]
    ca_file: Option<PathBuf>,
    /// mTLS client certificate (PEM) presented to the hub.
    #[arg(long, env = "DECKHAND_AGENT_CLIENT_CERT")]
    client_cert: Option<PathBuf>,
    #[arg(long, env = "DECKHAND_AGENT_CLIENT_KEY")]
    client_key: Option<PathBuf>,
    /// Allow plain ws:// to a loopback hub (tests only).
    #[arg(long)]
    insecure_loopback: bool,
    #[arg(long, env = "DECKHAND_ACTIVATION_ID")]
    activation_id: Option<String>,
    #[arg(long, env = "DECKHAND_ACTIVATION_CODE", hide_env_values = true)]
    activation_code: Option<String>,
    /// Scripts run at once; the rest wait in order.
    #[arg(long, env = "DECKHAND_AGENT_MAX_CONCURRENT")]
    max_concurrent: Option<usize>,
    /// Reconnect back-off cap in seconds.
    #[arg(long)]
    backoff_cap_secs: Option<u64>,
    #[arg(long)]
    log_json: bool,
    /// HTTP CONNECT proxy to the hub, http://[user:password@]host:port ("direct": none).
    #[arg(long, env = "DECKHAND_AGENT_PROXY", hide_env_values = true)]
    proxy: Option<String>,
    /// Hosts reached without the proxy, comma-separated.
    #[arg(long, env = "DECKHAND_AGENT_NO_PROXY")]
    no_proxy: Option<String>,
    /// Give scripts the proxy variables (http_proxy, https_proxy, no_proxy).
    #[arg(long)]
    pass_proxy_env: bool,
}

impl Flags {
    fn as_file(&self) -> AgentFile {
        AgentFile {
            hub: self.hub.clone(),
            state_dir: self.state_dir.clone(),
            ca_file: self.ca_file.clone(),
            client_cert: self.client_cert.clone(),
            client_key: self.client_key.clone(),
            insecure_loopback: self.insecure_loopback.then_some(true),
            max_concurrent: self.max_concurrent,
            backoff_cap_secs: self.backoff_cap_secs,
            activation_id: self.activation_id.clone(),
            activation_code: self.activation_code.clone(),
            log_json: self.log_json.then_some(true),
            proxy: self.proxy.clone(),
            no_proxy: self.no_proxy.clone(),
            pass_proxy_env: self.pass_proxy_env.then_some(true),
            ..Default::default()
        }
    }
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Connect to the hub and serve invocations until stopped.
    Run(Flags),
    /// Register with an activation code, store the identity, and exit.
    Register(Flags),
    /// Print connection state, hub, last heartbeat, running invocations, backlog.
    Status {
        #[arg(long, env = "DECKHAND_AGENT_STATE_DIR")]
        state_dir: Option<PathBuf>,
        #[arg(long)]
        json: bool,
    },
    /// Run under the Windows Service Control Manager (config from
    /// %ProgramData%\deckhand\agent.toml unless --config is given).
    #[cfg(windows)]
    WindowsService(Flags),
    /// Register or remove the Windows service (elevated prompt).
    #[cfg(windows)]
    Service {
        #[command(subcommand)]
        action: ServiceCmd,
    },
    /// Plan or apply kubelet reserved resources on this node.
    Kubelet {
        #[command(subcommand)]
        cmd: deckhand::kubelet::KubeletCmd,
    },
    /// Internal: supervise one run in the given run directory (started by
    /// the agent itself; see docs/exec.md).
    #[cfg(unix)]
    #[command(name = "__supervise", hide = true)]
    Supervise { dir: PathBuf },
    /// Internal: a downloaded agent build proving it can reach the hub
    /// before it is installed (self-update; docs/operations.md).
    #[command(name = "__update-trial", hide = true)]
    UpdateTrial(Flags),
    /// Internal: run by the service manager before each start, as the
    /// previous binary kept by a self-update: rolls a new binary back when
    /// it keeps dying (docs/operations.md).
    #[command(name = "__update-guard", hide = true)]
    UpdateGuard {
        #[arg(long, env = "DECKHAND_AGENT_STATE_DIR")]
        state_dir: Option<PathBuf>,
        /// The installed binary (e.g. /usr/bin/deckhand-agent).
        binary: PathBuf,
    },
    /// Validate the configuration and print the effective settings.
    Config {
        #[command(subcommand)]
        action: ConfigCmd,
    },
}

#[derive(Debug, Subcommand)]
enum ConfigCmd {
    Check(Flags),
}

/// The supervisor's program, resolved once at start: `deckhand-supervise`
/// beside this binary when it is of our version, else this binary
/// (`exec::supervise::program_for`). An upgrade may replace the files later,
/// and the path (not the deleted inode) is what supervisors run.
/// `DECKHAND_AGENT_NO_SUPERVISOR=1` keeps runs as the agent's children.
fn supervisor_program() -> Option<PathBuf> {
    if !cfg!(unix) || std::env::var_os("DECKHAND_AGENT_NO_SUPERVISOR").is_some_and(|v| v == "1") {
        return None;
    }
    match std::env::current_exe() {
        #[cfg(unix)]
        Ok(p) => Some(deckhand::exec::supervise::program_for(&p, &deckhand::agent::identity::agent_version())),
        #[cfg(not(unix))]
        Ok(p) => Some(p),
        Err(e) => {
            tracing::warn!(error = %e, "cannot find our own binary; runs will not outlive the agent");
            None
        }
    }
}

#[cfg(windows)]
#[derive(Debug, Subcommand)]
enum ServiceCmd {
    /// Create (or update) the `deckhand-agent` service: automatic start,
    /// restart on failure, this executable with `--config` if given. Does
    /// not start it (`sc.exe start deckhand-agent`).
    Install,
    /// Stop the service if it runs, then delete it. Keeps config and state.
    Uninstall,
}

/// `--version`: the version slot this binary carries (what the hub sees).
fn deckhand_version() -> &'static str {
    Box::leak(deckhand::agent::identity::agent_version().into_boxed_str())
}

fn init_log(json: bool) {
    deckhand::config::init_logging(json);
}

fn main() -> std::process::ExitCode {
    // The supervisor starts once per run, on the path to its result: its
    // exact form (`__supervise <dir>`, as the agent spawns it) skips the
    // argument parser and TLS set-up it never uses (issue #21).
    #[cfg(unix)]
    {
        let mut argv = std::env::args_os().skip(1);
        if let (Some(sub), Some(dir), None) = (argv.next(), argv.next(), argv.next())
            && sub == deckhand::exec::supervise::SUBCOMMAND
        {
            init_log(false);
            std::process::exit(deckhand::exec::supervise::supervise_main(std::path::Path::new(&dir)));
        }
    }
    deckhand::config::exit_code(run())
}

fn run() -> anyhow::Result<()> {
    let args = Args::parse();
    deckhand::tls::install_crypto_provider();
    match args.command {
        Cmd::Run(flags) => {
            let file = AgentFile::discover(args.config.as_deref())?.overlay(flags.as_file());
            init_log(file.log_json.unwrap_or(false));
            let mut cfg = file.resolve()?;
            cfg.supervisor = supervisor_program();
            // Resolved before any swap: afterwards /proc/self/exe names a deleted file.
            cfg.exe = std::env::current_exe().ok();
            // One thread: the agent is mostly idle and I/O bound; a single
            // scheduler thread (plus the blocking pool on demand) keeps idle
            // RSS low (fewer stacks and malloc arenas).
            deckhand::agent::selfcheck::lean_allocator();
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            match rt.block_on(async move { deckhand::agent::run(cfg, deckhand::cli::shutdown_on_signal()).await }) {
                // Its own distinct status: the service manager restarts it.
                Err(e @ deckhand::agent::AgentError::OverLimit { .. }) => {
                    eprintln!("deckhand-agent: {e}");
                    std::process::exit(deckhand::agent::selfcheck::EXIT_OVER_LIMIT);
                }
                r => r.context("agent"),
            }
        }
        Cmd::UpdateTrial(flags) => {
            let file = AgentFile::discover(args.config.as_deref())?.overlay(flags.as_file());
            init_log(file.log_json.unwrap_or(false));
            let cfg = file.resolve()?;
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            let version = rt.block_on(deckhand::agent::trial_hello(&cfg)).context("update trial")?;
            println!("{version}");
            Ok(())
        }
        Cmd::UpdateGuard { state_dir, binary } => {
            init_log(false);
            let dir = state_dir
                .or_else(|| AgentFile::discover(args.config.as_deref()).ok().and_then(|f| f.state_dir))
                .unwrap_or_else(deckhand::agent::config::default_state_dir);
            match deckhand::agent::update::guard(&dir, &binary, chrono::Utc::now().timestamp())? {
                deckhand::agent::update::Guarded::RolledBack { from, to } => {
                    eprintln!("deckhand-agent: update to {from} did not stay up; rolled back to {to}")
                }
                deckhand::agent::update::Guarded::Counted(n) => eprintln!("deckhand-agent: start {n} since the update"),
                deckhand::agent::update::Guarded::Nothing => {}
            }
            Ok(())
        }
        Cmd::Register(flags) => {
            let file = AgentFile::discover(args.config.as_deref())?.overlay(flags.as_file());
            init_log(file.log_json.unwrap_or(false));
            let cfg = file.resolve()?;
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            let id = rt.block_on(deckhand::agent::register(&cfg)).context("register")?;
            println!("registered as {} (identity in {})", id.instance_id, cfg.state_dir.display());
            Ok(())
        }
        Cmd::Status { state_dir, json } => {
            let dir = state_dir
                .or_else(|| AgentFile::discover(args.config.as_deref()).ok().and_then(|f| f.state_dir))
                .unwrap_or_else(deckhand::agent::config::default_state_dir);
            let s = deckhand::agent::service::read_status(&dir)
                .with_context(|| format!("no status in {} (is the agent running?)", dir.display()))?;
            if json {
                println!("{}", serde_json::to_string_pretty(&s)?);
            } else {
                println!("instance:        {}", s.instance_id);
                println!("hub:             {}", s.hub);
                println!("connected:       {}", s.connected);
                println!("last heartbeat:  {}", if s.last_heartbeat_ack.is_empty() { "-" } else { &s.last_heartbeat_ack });
                println!("running:         {}", if s.running.is_empty() { "-".to_string() } else { s.running.join(", ") });
                println!("journal backlog: {} report(s) not yet acknowledged", s.journal_backlog);
                match &s.journal_degraded {
                    Some(why) => {
                        println!("journal:         DEGRADED: {} change(s) held in memory, retried every few seconds: {why}", s.journal_held)
                    }
                    None => println!("journal:         ok"),
                }
                let f = &s.figures;
                println!(
                    "memory:          {:.2} MiB resident, {} thread(s), {:.2} s CPU",
                    f.rss_bytes as f64 / 1048576.0,
                    f.threads,
                    f.cpu_ms as f64 / 1000.0
                );
                println!(
                    "since start:     {} connection(s), {} run(s) finished, {} report(s) acknowledged, {} journal sync(s)",
                    f.connections, f.runs_finished, f.reports_acked, f.journal_syncs
                );
                println!(
                    "frames:          {} in ({} B), {} out ({} B); {} live chunk(s) dropped",
                    f.frames_in, f.bytes_in, f.frames_out, f.bytes_out, f.live_chunks_dropped
                );
                let mib = |b: u64| b as f64 / (1024.0 * 1024.0);
                let cpu = s.cpu_percent.map_or("-".to_string(), |p| format!("{p:.1}%"));
                let rss = if s.rss_bytes == 0 { "-".to_string() } else { format!("{:.1} MiB", mib(s.rss_bytes)) };
                println!(
                    "self:            memory {rss} of {:.0} MiB, cpu {cpu} of {}% (scripts not counted)",
                    mib(s.memory_max_bytes),
                    s.cpu_max_percent
                );
                println!("pid / updated:   {} / {}", s.pid, s.updated_at);
            }
            Ok(())
        }
        #[cfg(windows)]
        Cmd::WindowsService(flags) => {
            let path = args.config.clone().unwrap_or_else(deckhand::agent::winsvc::config_path);
            let file = AgentFile::discover(Some(&path))?.overlay(flags.as_file());
            // Daily files, the last 14 kept: %ProgramData%\deckhand\logs\agent.YYYY-MM-DD.log
            let appender = tracing_appender::rolling::Builder::new()
                .rotation(tracing_appender::rolling::Rotation::DAILY)
                .max_log_files(14)
                .filename_prefix("agent")
                .filename_suffix("log")
                .build(deckhand::agent::config::default_log_dir())?;
            let filter = tracing_subscriber::EnvFilter::try_from_env("DECKHAND_LOG").unwrap_or_else(|_| "info".into());
            tracing_subscriber::fmt().with_env_filter(filter).with_ansi(false).with_writer(appender).init();
            deckhand::agent::winsvc::run(file.resolve()?)?;
            Ok(())
        }
        #[cfg(windows)]
        Cmd::Service { action } => {
            init_log(false);
            match action {
                ServiceCmd::Install => {
                    deckhand::agent::winsvc::install(args.config.as_deref())?;
                    println!(
                        "service {} installed (automatic start); start it with: sc.exe start {}",
                        deckhand::agent::winsvc::SERVICE_NAME,
                        deckhand::agent::winsvc::SERVICE_NAME
                    );
                }
                ServiceCmd::Uninstall => {
                    deckhand::agent::winsvc::uninstall()?;
                    println!("service {} stopped and removed", deckhand::agent::winsvc::SERVICE_NAME);
                }
            }
            Ok(())
        }
        Cmd::Kubelet { cmd } => {
            init_log(false);
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            let code = rt.block_on(deckhand::kubelet::run_cmd(cmd))?;
            std::process::exit(code);
        }
        #[cfg(unix)]
        Cmd::Supervise { dir } => {
            init_log(false);
            std::process::exit(deckhand::exec::supervise::supervise_main(&dir));
        }
        Cmd::Config { action: ConfigCmd::Check(flags) } => {
            let file = AgentFile::discover(args.config.as_deref())?.overlay(flags.as_file());
            let cfg = file.resolve()?;
            println!("configuration OK");
            println!(
                "hub = {:?}\nstate_dir = {:?}\nca_file = {:?}\nmax_concurrent = {}\nbackoff_cap_secs = {}\nproxy = {}\npass_proxy_env = {}\nmemory_max_mib = {}\ncpu_max_percent = {}\nruns_slice = {:?}",
                cfg.hub,
                cfg.state_dir,
                cfg.ca_file,
                cfg.max_concurrent,
                cfg.backoff_cap.as_secs(),
                cfg.proxy.proxy.as_ref().map_or("direct".to_string(), |p| p.to_string()),
                cfg.proxy.pass_to_scripts,
                cfg.limits.memory_max_bytes >> 20,
                cfg.limits.cpu_max_percent,
                cfg.runs_slice
            );
            Ok(())
        }
    }
}
