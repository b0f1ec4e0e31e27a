//! deckhand: a self-hosted fleet command system.
//!
//! One library, three thin binaries. Each module is a room with one job:
//! `lifecycle` (statuses, transitions, their codec), `protocol` (agent<->hub wire types), `exec` (running one script), `agent`
//! (connection loop, journal, scheduler), `kubelet` (reserved resources),
//! `hub` (WebSocket endpoint, Cloud Assistant OpenAPI, store) and `cli`.

pub mod agent;
pub mod backoff;
pub mod cli;
pub mod config;
pub mod exec;
#[doc(hidden)]
pub mod fuzzing;
pub mod hub;
pub mod kubelet;
pub mod lifecycle;
pub mod protocol;
pub mod tls;
