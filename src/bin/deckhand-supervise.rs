//! `deckhand-supervise`: one run's supervisor (`exec::supervise`), as a
//! binary of its own. The agent starts one per supervised run, on the path
//! to the run's result; this binary carries only what a supervisor runs, so
//! it starts about 1 ms faster than `deckhand-agent __supervise` would
//! (issue #21). Same arguments as that subcommand; `--version` says which
//! agent it pairs with (`supervise::version_line`).

// The library's lint gate (src/lib.rs), for the binaries too.
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::string_slice))]

use std::process::ExitCode;

#[cfg(unix)]
fn main() -> ExitCode {
    use deckhand::exec::supervise;
    let mut argv = std::env::args_os().skip(1);
    match (argv.next(), argv.next(), argv.next()) {
        (Some(sub), Some(dir), None) if sub == supervise::SUBCOMMAND => {
            deckhand::config::init_logging(false);
            let code = supervise::supervise_main(std::path::Path::new(&dir));
            ExitCode::from(u8::try_from(code).unwrap_or(1))
        }
        (Some(flag), None, None) if flag == "--version" || flag == "-V" => {
            println!("{}", supervise::version_line(&deckhand::agent::identity::agent_version()));
            ExitCode::SUCCESS
        }
        _ => {
            eprintln!(
                "usage: {} {} <run directory>   (started by deckhand-agent, one per run)\n       {} --version",
                supervise::BINARY,
                supervise::SUBCOMMAND,
                supervise::BINARY
            );
            ExitCode::from(2)
        }
    }
}

/// Windows runs have no supervisor: the agent runs them as its children.
#[cfg(not(unix))]
fn main() -> ExitCode {
    eprintln!("deckhand-supervise is for Unix hosts; on Windows the agent runs scripts itself");
    ExitCode::from(2)
}
