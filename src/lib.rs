//! deckhand: a self-hosted fleet command system.
//!
//! One library, three thin binaries. Each module is a room with one job:
//! `lifecycle` (statuses, transitions, their codec), `protocol` (agent<->hub wire types), `exec` (running one script), `agent`
//! (connection loop, journal, scheduler), `kubelet` (reserved resources),
//! `hub` (WebSocket endpoint, Cloud Assistant OpenAPI, store) and `cli`;
//! small shared ones: `config`, `tls`, `backoff`, `ids`.

// Hostile input must never reach a panic (docs/security.md, "Panics"):
// outside tests, no `unwrap`/`expect`/`panic!` and no slicing text by byte
// index. Tests are exempt; the gate runs with `cargo clippy`.
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::string_slice))]

pub mod agent;
pub mod backoff;
pub mod cli;
pub mod config;
pub mod exec;
#[doc(hidden)]
pub mod fuzzing;
pub mod hub;
pub mod ids;
pub mod kubelet;
pub mod lifecycle;
pub mod protocol;
pub mod tls;
