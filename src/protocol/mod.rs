//! Wire types spoken between `deckhand-agent` and `deckhand-hub`.
//!
//! Owns: every message that crosses the agent WebSocket, the protocol
//! versions, and the frame bounds. Statuses, modes and error codes are the
//! lifecycle module's types (`crate::lifecycle`), spelled by its codec. JSON text messages, one protocol
//! message per WebSocket message (cut into frames of at most 1 KiB by
//! [`frames`]), internally tagged by `"type"`. docs/protocol.md is the prose
//! version of this file; keep the two in step.

use serde::{Deserialize, Serialize};

pub mod frames;

pub use crate::lifecycle::{CommandType, ErrorCode, InvocationStatus, RepeatMode};

/// Bumped on any incompatible change. 2: reports carry the per-instance
/// `InvocationStatus` (Success, Invalid, Cancelled, Terminated, …) instead
/// of 0.1.0's record states (Finished, Stopped, …).
pub const PROTOCOL_VERSION: u32 = 2;
/// Where the hub serves agents' WebSockets.
pub const WS_PATH: &str = "/agent/v1/ws";

/// The oldest agent protocol the hub still speaks. A fleet is upgraded
/// hub first, agents over days: the hub keeps accepting the version before
/// its own, and reads what such an agent sends through the lifecycle codec
/// (`lifecycle::reported_status`).
pub const OLDEST_AGENT_PROTOCOL: u32 = 1;

/// Whether the hub accepts an agent speaking `version`. Anything else is
/// refused with both versions named, rather than guessed at.
pub fn hub_speaks(version: u32) -> bool {
    (OLDEST_AGENT_PROTOCOL..=PROTOCOL_VERSION).contains(&version)
}

/// Largest frame either side accepts. An output report carries at most
/// 24 KiB of output (base64: 32 KiB) plus metadata, and an invocation at most
/// 16 KiB of script plus parameters, so 1 MiB leaves ample headroom while
/// bounding what a broken peer can make us buffer.
pub const MAX_FRAME_BYTES: usize = 1024 * 1024;

/// Cloud Assistant keeps 24 KiB of output per run (seed 001, "Output" quota).
pub const OUTPUT_CAP_BYTES: usize = 24 * 1024;

/// Cloud Assistant's script size limit (seed 001: 16 KB after encoding).
pub const MAX_SCRIPT_BYTES: usize = 16 * 1024;

/// Facts an agent reports about its host in `Hello`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct HostFacts {
    pub hostname: String,
    pub os_type: String,
    pub os_name: String,
    pub kernel: String,
    pub arch: String,
    pub cpu_count: u32,
    pub memory_bytes: u64,
    pub agent_version: String,
    /// Changes on every boot; lets the hub and scheduler detect reboots.
    #[serde(default)]
    pub boot_id: String,
    /// deckhand extension: why the agent's journal cannot be written (state
    /// dir full…), absent when it is healthy. The agent reconnects when this
    /// changes, so the hub's copy follows it (docs/journal.md).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub journal_degraded: Option<String>,
    /// deckhand extension: the agent understands `update_offer` (agents
    /// before self-update leave it out and are never offered a build).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub self_update: bool,
    /// deckhand extension: the agent asks the hub before each fire of an
    /// invocation with `fire_window` ([`AgentMsg::FireRequest`]). The hub
    /// refuses a per-fire rollout window on a target whose agent does not
    /// say so (agents before it would fire unwindowed).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub fire_grants: bool,
}

/// Longest `HostFacts::journal_degraded` an agent sends.
pub const MAX_DEGRADED_TEXT: usize = 512;

/// One invocation as the agent must run it, for one instance.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Invocation {
    pub invoke_id: String,
    pub command_id: String,
    pub command_type: CommandType,
    /// Script body, plain text (already base64-decoded by the hub).
    pub content: String,
    pub timeout_secs: u64,
    #[serde(default)]
    pub working_dir: Option<String>,
    #[serde(default)]
    pub username: Option<String>,
    #[serde(default)]
    pub enable_parameter: bool,
    /// Custom parameter values for `{{name}}` placeholders.
    #[serde(default)]
    pub parameters: serde_json::Map<String, serde_json::Value>,
    #[serde(default = "default_repeat_mode")]
    pub repeat_mode: RepeatMode,
    #[serde(default)]
    pub frequency: Option<String>,
    /// Instance name for `{{ACS::InstanceName}}`.
    #[serde(default)]
    pub instance_name: String,
    #[serde(default)]
    pub region_id: String,
    /// When the hub accepted it (RFC 3339): the anchor of `rate()` schedules.
    #[serde(default)]
    pub created_at: String,
    /// Which definition this is: 0 as created, +1 for each
    /// `ModifyInvocationAttribute` that changed what runs. An agent holding
    /// the invocation replaces its copy only with a higher revision, so a
    /// replayed older delivery never undoes a newer one. Absent on the wire
    /// when 0; agents that predate it ignore the field and keep the copy
    /// they hold (docs/protocol.md).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub revision: u64,
    /// A file delivery (`command_type` `SendFile`): where and how to write
    /// the file. Its bytes are not in `content`: the agent pulls them in
    /// chunks ([`AgentMsg::FileChunkRequest`]). Boxed: most invocations
    /// have none, and the agent's journal entries stay small.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file: Option<Box<FileSpec>>,
    /// deckhand extension (issue #16): a `Period` invocation with a
    /// rollout window. Before each fire the agent sends
    /// [`AgentMsg::FireRequest`] and runs only once granted
    /// ([`HubMsg::FireAnswer`]); a fire not granted before the next is
    /// due ends `Cancelled` (`FireNotGranted`). Absent when false.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub fire_window: bool,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// The oldest agent protocol that understands file deliveries
/// (`SendFile`); an older agent's targets are settled `Invalid` /
/// `ClientNeedUpgrade` by the hub instead of being sent one.
pub const FILE_PROTOCOL: u32 = 2;

/// Bytes per chunk of a delivered file, as uploaded (`PutFileContent`),
/// stored by the hub and pulled by the agent: 48 KiB base64-encodes to
/// exactly 64 KiB, the API's bound on one parameter value, and sits well
/// inside a frame.
pub const FILE_CHUNK_BYTES: usize = 48 * 1024;

/// Largest file deckhand delivers (deckhand extension; Cloud Assistant's
/// own `Content` limit is 32 KiB, [`MAX_FILE_CONTENT_BYTES`]).
pub const MAX_FILE_BYTES: u64 = 100 * 1024 * 1024;

/// Cloud Assistant's `SendFile` `Content` limit: 32 KiB after decoding.
pub const MAX_FILE_CONTENT_BYTES: usize = 32 * 1024;

/// What a file delivery writes, as `SendFile` asked for it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct FileSpec {
    /// File name (no directory part), as given.
    pub name: String,
    /// Absolute directory; created when missing.
    pub target_dir: String,
    /// `chmod`-style octal, e.g. `0644`.
    pub mode: String,
    /// User and group names; empty: the agent's own.
    #[serde(default)]
    pub owner: String,
    #[serde(default)]
    pub group: String,
    pub overwrite: bool,
    /// Size in bytes and lowercase hex SHA-256 of the content.
    pub size: u64,
    pub sha256: String,
}

impl FileSpec {
    /// Chunks the content is pulled in.
    pub fn chunks(&self) -> u64 {
        self.size.div_ceil(FILE_CHUNK_BYTES as u64)
    }
}

fn default_repeat_mode() -> RepeatMode {
    RepeatMode::Once
}

/// The state of one run (one record) as the agent reports it. Decoded
/// through [`RawReport`], so what a 0.1.0 agent (or journal) wrote reads
/// as the status it meant.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(try_from = "RawReport")]
pub struct RecordReport {
    pub invoke_id: String,
    /// 0 for one-shot invocations; 1, 2, … for each fire of a periodic one.
    pub record_seq: u32,
    pub status: InvocationStatus,
    pub exit_code: Option<i64>,
    /// Output, base64 of the raw bytes (invalid UTF-8 survives).
    pub output_b64: String,
    /// Bytes dropped from the middle of the output by the 24 KiB cap.
    pub dropped: u64,
    /// `""` on the wire when there is none.
    #[serde(with = "crate::lifecycle::opt_serde")]
    pub error_code: Option<ErrorCode>,
    /// Detail of the error; the API shows Alibaba's fixed text instead
    /// where the code has one.
    pub error_info: String,
    /// RFC 3339 UTC times; empty when not yet known.
    pub start_time: String,
    pub finish_time: String,
}

/// A report as either protocol version writes it.
#[derive(Deserialize)]
struct RawReport {
    invoke_id: String,
    record_seq: u32,
    status: String,
    #[serde(default)]
    exit_code: Option<i64>,
    #[serde(default)]
    output_b64: String,
    #[serde(default)]
    dropped: u64,
    #[serde(default)]
    error_code: String,
    #[serde(default)]
    error_info: String,
    #[serde(default)]
    start_time: String,
    #[serde(default)]
    finish_time: String,
}

impl TryFrom<RawReport> for RecordReport {
    type Error = crate::lifecycle::UnknownName;

    fn try_from(r: RawReport) -> Result<Self, Self::Error> {
        let error_code = ErrorCode::parse(&r.error_code);
        let status = crate::lifecycle::reported_status(&r.status, r.exit_code, !r.start_time.is_empty(), error_code.as_ref())?;
        Ok(RecordReport {
            invoke_id: r.invoke_id,
            record_seq: r.record_seq,
            status,
            exit_code: r.exit_code,
            output_b64: r.output_b64,
            dropped: r.dropped,
            error_code,
            error_info: r.error_info,
            start_time: r.start_time,
            finish_time: r.finish_time,
        })
    }
}

/// What an agent build's ed25519 signature covers: the version, OS,
/// architecture and digest together, so a signed build cannot be offered
/// as another version or for another platform.
pub fn update_statement(version: &str, os: &str, arch: &str, sha256_hex: &str) -> String {
    format!("deckhand-agent-build\nversion={version}\nos={os}\narch={arch}\nsha256={sha256_hex}\n")
}

/// Messages the agent sends.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum AgentMsg {
    /// First frame on every connection of a registered agent.
    Hello { protocol: u32, instance_id: String, token: String, facts: HostFacts },
    /// First frame of an unregistered agent: trade an activation for an
    /// instance id and credential.
    Register { protocol: u32, activation_id: String, activation_code: String, facts: HostFacts },
    Heartbeat {
        /// Unix millis on the agent, echoed back for round-trip time.
        sent_ms: u64,
    },
    /// The invocation is journaled on the agent: the hub marks it delivered.
    InvokeAck { invoke_id: String },
    /// A state change or final result. Journaled before sending; the hub
    /// answers with `ReportAck` once it is durably stored.
    Report { report_id: u64, report: RecordReport },
    /// The new credential from `rotate_credential` is stored durably; the
    /// hub may now forget the old one.
    CredentialSaved,
    /// Chunk `seq` (of [`FILE_CHUNK_BYTES`]) of a file delivery's content;
    /// answered with [`HubMsg::FileChunk`]. Asked again after a reconnect.
    FileChunkRequest { invoke_id: String, seq: u64 },
    /// deckhand extension (per-fire rollout windows, docs/fleet.md): fire
    /// `record_seq` of `invoke_id`, due at `scheduled` (RFC 3339, the
    /// schedule's nominal instant, shared by every target of a `rate()`
    /// schedule), may it run? Sent when the fire is due, again every few
    /// seconds and after a reconnect until answered.
    FireRequest { invoke_id: String, record_seq: u32, scheduled: String },
    /// Live output while running; best effort, not journaled.
    Output {
        invoke_id: String,
        record_seq: u32,
        /// Byte offset of this chunk in the run's full output stream.
        offset: u64,
        data_b64: String,
    },
    /// deckhand extension (self-update): first and only frame of a new
    /// agent binary on trial. The hub checks the credential and answers
    /// `welcome`, then closes; the session of the running agent is kept.
    Trial { protocol: u32, instance_id: String, token: String, agent_version: String },
    /// deckhand extension (self-update): send the offered build from `offset`.
    UpdateFetch { version: String, offset: u64 },
    /// deckhand extension (self-update): the offered build was refused or
    /// failed on this agent (`ok: false`), or is installed and running.
    UpdateResult { version: String, ok: bool, error: String },
}

/// Largest chunk of an agent build in one `update_chunk` (base64 makes it
/// 4/3 larger, still far below [`MAX_FRAME_BYTES`]).
pub const UPDATE_CHUNK_BYTES: usize = 256 * 1024;
/// Largest agent build an agent downloads.
pub const MAX_UPDATE_BYTES: u64 = 128 * 1024 * 1024;
/// Longest version string and error text in update messages.
pub const MAX_UPDATE_TEXT: usize = 512;

/// Messages the hub sends.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum HubMsg {
    Welcome {
        protocol: u32,
        instance_id: String,
        heartbeat_secs: u64,
    },
    /// Answer to `Register`: the agent stores these and then says `Hello`.
    Registered {
        instance_id: String,
        token: String,
    },
    /// A new credential: store it (atomically), answer `credential_saved`,
    /// and use it from the next connection. Until then both work.
    RotateCredential {
        token: String,
    },
    // Boxed: the other messages are small, and every agent's outbox slot
    // would otherwise be as large as an invocation (issue #21).
    Invoke {
        invocation: Box<Invocation>,
    },
    Stop {
        invoke_id: String,
    },
    /// Answer to `file_chunk_request`: the chunk's bytes, or `error` (the
    /// instance is not a target, the chunk does not exist) and no data.
    FileChunk {
        invoke_id: String,
        seq: u64,
        #[serde(default)]
        data_b64: String,
        #[serde(default, skip_serializing_if = "String::is_empty")]
        error: String,
    },
    /// deckhand extension: the answer to `fire_request` once the hub has
    /// decided (a fire waiting for a slot gets no answer yet). `granted`:
    /// run it now; otherwise the agent records the fire `Cancelled` with
    /// `error_code` / `error_info` (`MaxErrorsExceeded`, `FireNotGranted`).
    FireAnswer {
        invoke_id: String,
        record_seq: u32,
        granted: bool,
        #[serde(default, skip_serializing_if = "String::is_empty")]
        error_code: String,
        #[serde(default, skip_serializing_if = "String::is_empty")]
        error_info: String,
    },
    HeartbeatAck {
        sent_ms: u64,
    },
    ReportAck {
        report_id: u64,
    },
    /// deckhand extension (self-update): a build for this agent's OS and
    /// architecture. `sha256` is hex; `signature` the base64 ed25519
    /// signature of [`update_statement`], checked against the key pinned in
    /// the agent's config.
    UpdateOffer {
        version: String,
        size: u64,
        sha256: String,
        signature: String,
    },
    /// deckhand extension (self-update): bytes of the offered build.
    UpdateChunk {
        version: String,
        offset: u64,
        data_b64: String,
    },
    /// A refusal; the sender closes the connection after a fatal one.
    Error {
        code: String,
        message: String,
        fatal: bool,
    },
}

/// Why a frame could not be decoded; the peer is told this text, and it
/// may be logged, so it never carries any of the frame's content (serde's
/// own messages quote the offending value).
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("frame of {size} bytes exceeds the limit of {limit} bytes")]
    TooLarge { size: usize, limit: usize },
    #[error("malformed message ({kind} error at line {line} column {column})")]
    Malformed { kind: &'static str, line: usize, column: usize },
}

impl From<serde_json::Error> for FrameError {
    fn from(e: serde_json::Error) -> Self {
        use serde_json::error::Category;
        let kind = match e.classify() {
            Category::Io => "I/O",
            Category::Syntax => "syntax",
            Category::Data => "schema",
            Category::Eof => "truncated",
        };
        FrameError::Malformed { kind, line: e.line(), column: e.column() }
    }
}

/// Bounds the hub puts on a report whatever the agent claims (issue #14):
/// a rogue or buggy agent cannot store more than a well-behaved one.
pub mod report_limits {
    /// Longest `start_time` and `finish_time`, in bytes (`error_code` is
    /// a closed set, decoded by the lifecycle codec).
    pub const MAX_SHORT_TEXT: usize = 64;
    /// Longest `error_info`, in bytes.
    pub const MAX_ERROR_INFO: usize = 1024;
    /// Longest invoke id, in bytes.
    pub const MAX_ID: usize = 64;
    /// `dropped` saturates here: it is stored as a signed 64-bit integer.
    pub const MAX_DROPPED: u64 = i64::MAX as u64;
}

/// Why a report was refused outright (rather than trimmed to the bounds).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReportError {
    #[error("report for invocation id of {0} bytes; the limit is {max}", max = report_limits::MAX_ID)]
    IdTooLong(usize),
    #[error("report field output_b64 is not valid base64")]
    OutputNotBase64,
}

impl RecordReport {
    /// The report brought within the protocol's bounds: output longer than
    /// [`OUTPUT_CAP_BYTES`] keeps its head and tail with the rest counted in
    /// `dropped` (as the agent's own cap does), `dropped` saturates, text
    /// fields are cut at a character boundary. Refused: an over-long id or
    /// output that is not base64 (storing it as empty would lose it silently).
    pub fn bounded(mut self) -> Result<Self, ReportError> {
        use base64::Engine;
        use report_limits::*;
        if self.invoke_id.len() > MAX_ID {
            return Err(ReportError::IdTooLong(self.invoke_id.len()));
        }
        let b64 = base64::engine::general_purpose::STANDARD;
        // 4 base64 characters carry 3 bytes: a short string cannot be over the cap.
        if self.output_b64.len() > OUTPUT_CAP_BYTES / 3 * 4 {
            let raw = b64.decode(&self.output_b64).map_err(|_| ReportError::OutputNotBase64)?;
            if raw.len() > OUTPUT_CAP_BYTES {
                let mut cap = crate::exec::OutputCap::new(OUTPUT_CAP_BYTES);
                cap.push(&raw);
                let (kept, cut) = cap.finish();
                self.output_b64 = b64.encode(kept);
                self.dropped = self.dropped.saturating_add(cut);
            }
        } else if b64.decode(&self.output_b64).is_err() {
            return Err(ReportError::OutputNotBase64);
        }
        self.dropped = self.dropped.min(MAX_DROPPED);
        truncate_text(&mut self.start_time, MAX_SHORT_TEXT);
        truncate_text(&mut self.finish_time, MAX_SHORT_TEXT);
        truncate_text(&mut self.error_info, MAX_ERROR_INFO);
        Ok(self)
    }
}

/// Cuts `s` to at most `max` bytes, at a character boundary.
pub fn truncate_text(s: &mut String, max: usize) {
    if s.len() > max {
        let mut end = max;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
    }
}

/// Decode one text frame, enforcing the size bound before parsing.
pub fn decode<T: for<'de> Deserialize<'de>>(text: &str) -> Result<T, FrameError> {
    if text.len() > MAX_FRAME_BYTES {
        return Err(FrameError::TooLarge { size: text.len(), limit: MAX_FRAME_BYTES });
    }
    Ok(serde_json::from_str(text)?)
}

/// Encode one message. The wire types are plain structs and enums (no maps
/// with non-string keys), so this does not fail in practice; a failure is
/// still an error for the caller, never a panic.
pub fn encode<T: Serialize>(msg: &T) -> Result<String, FrameError> {
    Ok(serde_json::to_string(msg)?)
}

#[cfg(test)]
mod tests;
