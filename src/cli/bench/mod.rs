//! `deckhand bench`: prints speed and memory figures with their method.
//! Not a test: CI runs a short smoke form that only asserts completion.

mod fanout;
mod footprint;
mod latency;
mod listing;
mod policy;
mod procs;
mod sendfile;
mod signature;

use std::time::Duration;

use super::CliError;

#[derive(Debug, clap::Subcommand)]
pub enum BenchCmd {
    /// N simulated agents, one RunCommand to all, time until all stored.
    Fanout {
        #[arg(long, default_value_t = 1000)]
        agents: usize,
        /// Hub store (`postgres://…`); default: SQLite in a temporary directory.
        #[arg(long)]
        store: Option<String>,
        /// Instead: tag the fleet and reach it with one tag-targeted
        /// RunCommand with this MaxConcurrency (`10%`, `500`); prints the
        /// peak concurrency the agents saw.
        #[arg(long, value_name = "N|P%")]
        rollout: Option<String>,
        /// Output of each simulated run, in KiB (at most 24: the report's
        /// cap); the hub's RSS after the fan-out shows what large reports
        /// leave behind per connection.
        #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u16).range(0..=24))]
        output_kib: u16,
        /// The simulated agents send each message as one WebSocket frame,
        /// as agents did before issue #21 (for a before/after in one run).
        #[arg(long)]
        whole_frames: bool,
        /// Size of the script each run is sent, in KiB (at most 16: the
        /// protocol's script bound); what large invocations leave in the
        /// hub's RSS shows after the fan-out.
        #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u16).range(0..=16))]
        script_kib: u16,
    },
    /// API → result latency over sequential runs of `true`, vs bare fork/exec.
    Latency {
        #[arg(long, default_value_t = 1000)]
        runs: usize,
        /// Hub store (`postgres://…`); default: SQLite in a temporary directory.
        #[arg(long)]
        store: Option<String>,
    },
    /// Hub CPU of one `DescribeInvocationResults` by id (a settled run of
    /// one target), over many sequential calls: long enough to profile.
    Describe {
        #[arg(long, default_value_t = 5000)]
        calls: usize,
        /// Hub store (`postgres://…`); default: SQLite in a temporary directory.
        #[arg(long)]
        store: Option<String>,
    },
    /// Agent RSS, PSS, threads and CPU: idle (beside any `--peer` agents,
    /// in the same window), then 8 concurrent scripts, one printing 1 GiB.
    Footprint {
        #[arg(long, default_value_t = 60)]
        secs: u64,
        /// A peer agent measured beside deckhand's: `NAME=PROGRAM [ARGS]`
        /// (split at spaces), started in its own scratch directory, which
        /// is also its HOME; repeatable. docs/performance.md.
        #[arg(long, value_name = "NAME=PROGRAM [ARGS]")]
        peer: Vec<footprint::PeerSpec>,
        /// Another build of deckhand-agent, connected to the same hub and
        /// measured in the same window: `NAME=PATH`; repeatable.
        #[arg(long, value_name = "NAME=PATH")]
        agent: Vec<footprint::PeerSpec>,
        /// Time given to every agent to settle before the window (the
        /// agent gives its cold code back after 15 s connected and idle).
        #[arg(long, default_value_t = 30)]
        settle_secs: u64,
    },
    /// One DescribeInvocations page over invocations of many targets each:
    /// the time must not grow with the targets.
    Listing {
        #[arg(long, default_value_t = 50)]
        invocations: usize,
        #[arg(long, default_value_t = 10_000)]
        targets: usize,
        /// Hub store (`postgres://…`); default: SQLite in a temporary directory.
        #[arg(long)]
        store: Option<String>,
    },
    /// Authorization cost: one policy of N statements evaluated per call.
    Policy {
        #[arg(long, default_value_t = 100)]
        statements: usize,
        #[arg(long, default_value_t = 20_000)]
        calls: usize,
    },
    /// Signature canonicalisation of one signed RunCommand: now and before.
    Signature {
        #[arg(long, default_value_t = 20_000)]
        calls: usize,
    },
    /// One file to N real agents (SendFile with uploaded content): MB/s
    /// and each agent's peak RSS while it writes (docs/files.md).
    Sendfile {
        #[arg(long, default_value_t = 100)]
        size_mib: u64,
        #[arg(long, default_value_t = 20)]
        agents: usize,
    },
    /// Everything, small sizes: proves the benchmarks still run.
    Smoke,
}

/// Extra hub flags selecting the store, and its name for the report.
fn store_args(store: Option<&str>) -> (Vec<String>, String) {
    match store {
        Some(s) => (vec!["--store".into(), s.into()], crate::hub::config::redact(s)),
        None => (Vec::new(), "SQLite (temporary file)".into()),
    }
}

pub fn run(cmd: &BenchCmd) -> Result<(), CliError> {
    crate::tls::install_crypto_provider();
    let rt = || tokio::runtime::Builder::new_multi_thread().enable_all().build().map_err(|e| CliError::Usage(e.to_string()));
    match cmd {
        BenchCmd::Fanout { agents, store, rollout, output_kib, whole_frames, script_kib } => {
            let shape =
                fanout::Shape { output_kib: usize::from(*output_kib), whole_frames: *whole_frames, script_kib: usize::from(*script_kib) };
            rt()?.block_on(fanout::run(*agents, store.as_deref(), rollout.as_deref(), shape))
        }
        BenchCmd::Latency { runs, store } => latency::latency(*runs, store.as_deref()),
        BenchCmd::Describe { calls, store } => latency::describe(*calls, store.as_deref()),
        BenchCmd::Footprint { secs, peer, agent, settle_secs } => {
            footprint::run(Duration::from_secs(*secs), peer, agent, Duration::from_secs(*settle_secs))
        }
        BenchCmd::Listing { invocations, targets, store } => rt()?.block_on(listing::run(*invocations, *targets, store.as_deref())),
        BenchCmd::Policy { statements, calls } => policy::run(*statements, *calls),
        BenchCmd::Signature { calls } => signature::run(*calls),
        BenchCmd::Sendfile { size_mib, agents } => sendfile::run(*size_mib, *agents),
        BenchCmd::Smoke => {
            policy::run(100, 200)?;
            signature::run(200)?;
            rt()?.block_on(fanout::run(50, None, None, fanout::Shape { output_kib: 24, script_kib: 12, whole_frames: false }))?;
            rt()?.block_on(fanout::run(50, None, Some("50%"), fanout::Shape::default()))?;
            // 50 invocations: both rounds fill the page of 50 (the second round
            // lists on top of the first), so only the targets differ.
            rt()?.block_on(listing::run(50, 200, None))?;
            latency::latency(20, None)?;
            latency::describe(50, None)?;
            sendfile::run(1, 2)?;
            footprint::run(Duration::from_secs(2), &[], &[], Duration::ZERO)
        }
    }
}
