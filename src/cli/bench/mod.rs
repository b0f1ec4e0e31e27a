//! `deckhand bench`: prints speed and memory figures with their method.
//! Not a test: CI runs a short smoke form that only asserts completion.

mod fanout;
mod latency;
mod procs;

use std::time::Duration;

use super::CliError;

#[derive(Debug, clap::Subcommand)]
pub enum BenchCmd {
    /// N simulated agents, one RunCommand to all, time until all stored.
    Fanout {
        #[arg(long, default_value_t = 1000)]
        agents: usize,
    },
    /// API → result latency over sequential runs of `true`, vs bare fork/exec.
    Latency {
        #[arg(long, default_value_t = 1000)]
        runs: usize,
    },
    /// Agent RSS and CPU: idle, 8 concurrent scripts, one printing 1 GiB.
    Footprint {
        #[arg(long, default_value_t = 60)]
        secs: u64,
    },
    /// Everything, small sizes: proves the benchmarks still run.
    Smoke,
}

pub fn run(cmd: &BenchCmd) -> Result<(), CliError> {
    crate::tls::install_crypto_provider();
    let rt = || tokio::runtime::Builder::new_multi_thread().enable_all().build().map_err(|e| CliError::Usage(e.to_string()));
    match cmd {
        BenchCmd::Fanout { agents } => rt()?.block_on(fanout::run(*agents)),
        BenchCmd::Latency { runs } => latency::latency(*runs),
        BenchCmd::Footprint { secs } => latency::footprint(Duration::from_secs(*secs)),
        BenchCmd::Smoke => {
            rt()?.block_on(fanout::run(50))?;
            latency::latency(20)?;
            latency::footprint(Duration::from_secs(2))
        }
    }
}
