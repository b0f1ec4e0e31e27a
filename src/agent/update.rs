//! Self-update on the agent (docs/operations.md, "Updates"): a build
//! offered by the hub is downloaded over the agent's own WebSocket in
//! bounded chunks, checked against its sha256 and an ed25519 signature by
//! the key pinned in agent.toml (`update_public_key`), tried, swapped in
//! atomically with the previous binary kept, and started in place.
//!
//! Safety net, in order:
//! 1. **Trial before swap.** The new binary runs as `__update-trial` with
//!    the agent's own arguments: it must print its version (the offered
//!    one) and complete a `trial` hello/welcome with the hub within
//!    [`TRIAL_TIMEOUT`]. A binary that exits at start, cannot reach the hub
//!    or lies about its version is never installed.
//! 2. **Atomic swap.** `<exe>.previous` is a hard link to the running
//!    binary, then the staged file is renamed over `<exe>`: there is never
//!    a moment without a working binary at the path the service starts.
//! 3. **Deadline after swap.** [`Pending`] (in `<state>/update/`) records
//!    the move with a deadline; the new agent clears it on its first
//!    welcome. If it does not reach the hub in time it renames
//!    `<exe>.previous` back and starts it, and the failure is reported
//!    from there.
//!
//! Runs in flight are untouched: they live under their own supervisors
//! (`exec::supervise`) and the new agent re-attaches to them.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use base64::Engine;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::protocol::{MAX_UPDATE_BYTES, MAX_UPDATE_TEXT, update_statement};

/// How long a new binary has to reach the hub, on trial and after the swap.
pub const TRIAL_TIMEOUT: Duration = Duration::from_secs(30);
/// After the swap, the new agent must reach the hub within this.
pub const SWAP_DEADLINE: Duration = Duration::from_secs(120);
/// The hidden subcommand a build on trial is started with.
pub const TRIAL_SUBCOMMAND: &str = "__update-trial";
/// Largest trial output read (its version line).
const MAX_TRIAL_OUTPUT: usize = 4096;

#[derive(Debug, thiserror::Error)]
pub enum UpdateError {
    #[error("no update_public_key is pinned in the agent's config: updates are refused")]
    NoKey,
    #[error("update_public_key must be the base64 of a 32-byte ed25519 public key")]
    BadKey,
    #[error("self-update is not supported on this platform yet")]
    Unsupported,
    #[error("offered build: {field} is invalid ({why})")]
    BadOffer { field: &'static str, why: String },
    #[error("build of {size} bytes is over the limit of {MAX_UPDATE_BYTES}")]
    TooLarge { size: u64 },
    #[error("chunk at offset {got} does not follow the {expected} bytes received")]
    Chunk { expected: u64, got: u64 },
    #[error("build is longer than the {size} bytes offered")]
    Overrun { size: u64 },
    #[error("sha256 of the downloaded build does not match the offer")]
    Digest,
    #[error("signature does not verify with the pinned update_public_key: build refused")]
    Signature,
    #[error("version {0} already failed on this agent")]
    AlreadyFailed(String),
    #[error("trial of the new binary failed: {0}")]
    Trial(String),
    #[error("{op} {path}: {source}")]
    Io { op: &'static str, path: PathBuf, source: std::io::Error },
}

fn io<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> UpdateError + 'a {
    move |source| UpdateError::Io { op, path: path.to_path_buf(), source }
}

/// The pinned ed25519 public key.
#[derive(Clone, PartialEq)]
pub struct UpdateKey(Vec<u8>);

impl std::fmt::Debug for UpdateKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "UpdateKey({})", base64::engine::general_purpose::STANDARD.encode(&self.0))
    }
}

impl UpdateKey {
    pub fn parse(b64: &str) -> Result<Self, UpdateError> {
        let raw = base64::engine::general_purpose::STANDARD.decode(b64.trim()).map_err(|_| UpdateError::BadKey)?;
        if raw.len() != 32 {
            return Err(UpdateError::BadKey);
        }
        Ok(Self(raw))
    }

    /// Whether `signature` is this key's signature of `message`.
    pub fn verify(&self, message: &[u8], signature: &[u8]) -> Result<(), UpdateError> {
        ring::signature::UnparsedPublicKey::new(&ring::signature::ED25519, &self.0)
            .verify(message, signature)
            .map_err(|_| UpdateError::Signature)
    }
}

/// An offer as the hub sent it, checked for shape.
#[derive(Debug, Clone, PartialEq)]
pub struct Offer {
    pub version: String,
    pub size: u64,
    pub sha256: [u8; 32],
    pub signature: Vec<u8>,
}

impl Offer {
    pub fn parse(version: &str, size: u64, sha256: &str, signature: &str) -> Result<Self, UpdateError> {
        let bad = |field, why: &str| UpdateError::BadOffer { field, why: why.to_string() };
        if version.is_empty() || version.len() > 64 || !version.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-+".contains(&b)) {
            return Err(bad("version", "1..=64 characters of [A-Za-z0-9._+-]"));
        }
        if size == 0 {
            return Err(bad("size", "empty"));
        }
        if size > MAX_UPDATE_BYTES {
            return Err(UpdateError::TooLarge { size });
        }
        let mut digest = [0u8; 32];
        hex::decode_to_slice(sha256, &mut digest).map_err(|_| bad("sha256", "64 hex digits"))?;
        let signature = base64::engine::general_purpose::STANDARD.decode(signature).map_err(|_| bad("signature", "base64"))?;
        if signature.len() != 64 {
            return Err(bad("signature", "64 bytes"));
        }
        Ok(Self { version: version.to_string(), size, sha256: digest, signature })
    }

    /// Checks the signature over the statement for this platform.
    pub fn verify_signature(&self, key: &UpdateKey) -> Result<(), UpdateError> {
        let statement = update_statement(&self.version, std::env::consts::OS, std::env::consts::ARCH, &hex::encode(self.sha256));
        key.verify(statement.as_bytes(), &self.signature)
    }
}

/// A build being received, staged next to the binary it will replace (the
/// rename that installs it must not cross filesystems).
#[derive(Debug)]
pub struct Download {
    pub offer: Offer,
    path: PathBuf,
    file: std::fs::File,
    received: u64,
    hasher: Sha256,
}

impl Download {
    /// Checks the signature first: a build not signed by the pinned key is
    /// not even downloaded.
    pub fn start(exe: &Path, offer: Offer, key: &UpdateKey) -> Result<Self, UpdateError> {
        offer.verify_signature(key)?;
        let path = staged_path(exe);
        let _ = std::fs::remove_file(&path);
        let mut opts = std::fs::OpenOptions::new();
        opts.write(true).create_new(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            opts.mode(0o700);
        }
        let file = opts.open(&path).map_err(io("create", &path))?;
        Ok(Self { offer, path, file, received: 0, hasher: Sha256::new() })
    }

    pub fn received(&self) -> u64 {
        self.received
    }

    pub fn complete(&self) -> bool {
        self.received == self.offer.size
    }

    pub fn append(&mut self, offset: u64, data: &[u8]) -> Result<(), UpdateError> {
        if offset != self.received {
            return Err(UpdateError::Chunk { expected: self.received, got: offset });
        }
        let end = self.received.saturating_add(data.len() as u64);
        if end > self.offer.size {
            return Err(UpdateError::Overrun { size: self.offer.size });
        }
        self.file.write_all(data).map_err(io("write", &self.path))?;
        self.hasher.update(data);
        self.received = end;
        Ok(())
    }

    /// The whole build is here: its digest must be the one signed.
    pub fn finish(self) -> Result<PathBuf, UpdateError> {
        if !self.complete() {
            return Err(UpdateError::Chunk { expected: self.offer.size, got: self.received });
        }
        if self.hasher.finalize().as_slice() != self.offer.sha256 {
            let _ = std::fs::remove_file(&self.path);
            return Err(UpdateError::Digest);
        }
        self.file.sync_all().map_err(io("sync", &self.path))?;
        Ok(self.path)
    }

    /// Removes the partial file (a refused or abandoned download).
    pub fn abandon(self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

fn sibling(exe: &Path, suffix: &str) -> PathBuf {
    let mut name = exe.file_name().unwrap_or_default().to_os_string();
    name.push(suffix);
    exe.with_file_name(name)
}

pub fn staged_path(exe: &Path) -> PathBuf {
    sibling(exe, ".new")
}

pub fn previous_path(exe: &Path) -> PathBuf {
    sibling(exe, ".previous")
}

/// Runs `staged` as [`TRIAL_SUBCOMMAND`] with `args` (the agent's own
/// arguments, its subcommand replaced): it must exit 0 within
/// [`TRIAL_TIMEOUT`] having printed `version`.
pub async fn trial(staged: &Path, args: &[std::ffi::OsString], version: &str) -> Result<(), UpdateError> {
    let mut cmd = tokio::process::Command::new(staged);
    cmd.args(args)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true);
    let child = cmd.spawn().map_err(|e| UpdateError::Trial(format!("cannot start it: {e}")))?;
    let out = match tokio::time::timeout(TRIAL_TIMEOUT, child.wait_with_output()).await {
        Err(_) => return Err(UpdateError::Trial(format!("it did not reach the hub within {TRIAL_TIMEOUT:?}"))),
        Ok(Err(e)) => return Err(UpdateError::Trial(e.to_string())),
        Ok(Ok(out)) => out,
    };
    if !out.status.success() {
        return Err(UpdateError::Trial(format!("it exited with {} before completing a hello with the hub", out.status)));
    }
    let printed = String::from_utf8_lossy(&out.stdout[..out.stdout.len().min(MAX_TRIAL_OUTPUT)]).trim().to_string();
    if printed != version {
        let mut shown = printed;
        crate::protocol::truncate_text(&mut shown, 64);
        return Err(UpdateError::Trial(format!("it says it is version {shown:?}, not {version:?}")));
    }
    Ok(())
}

/// The agent's arguments with its `run` subcommand replaced by the trial's.
pub fn trial_args(own: impl IntoIterator<Item = std::ffi::OsString>) -> Vec<std::ffi::OsString> {
    let mut replaced = false;
    own.into_iter()
        .map(|a| {
            if !replaced && a == "run" {
                replaced = true;
                TRIAL_SUBCOMMAND.into()
            } else {
                a
            }
        })
        .collect()
}

/// Swaps `staged` in at `exe`, keeping the running binary as `<exe>.previous`.
pub fn install(exe: &Path, staged: &Path) -> Result<(), UpdateError> {
    let previous = previous_path(exe);
    let _ = std::fs::remove_file(&previous);
    std::fs::hard_link(exe, &previous).map_err(io("keep previous binary as", &previous))?;
    std::fs::rename(staged, exe).map_err(io("install new binary at", exe))?;
    sync_dir(exe);
    Ok(())
}

/// Puts `<exe>.previous` back at `exe`.
pub fn rollback(exe: &Path) -> Result<(), UpdateError> {
    let previous = previous_path(exe);
    std::fs::rename(&previous, exe).map_err(io("restore previous binary from", &previous))?;
    sync_dir(exe);
    Ok(())
}

/// Makes the renames durable (Unix; Windows has no directory handle to sync).
fn sync_dir(exe: &Path) {
    #[cfg(unix)]
    if let Some(dir) = exe.parent() {
        let _ = std::fs::File::open(dir).and_then(|d| d.sync_all());
    }
    #[cfg(not(unix))]
    let _ = exe;
}

/// Replaces this process with `exe` and the same arguments (same pid, so
/// systemd's main process and the status file stay right). Returns only on
/// failure.
#[cfg(unix)]
pub fn restart_in_place(exe: &Path) -> UpdateError {
    use std::os::unix::process::CommandExt;
    let e = std::process::Command::new(exe).args(std::env::args_os().skip(1)).exec();
    UpdateError::Io { op: "start", path: exe.to_path_buf(), source: e }
}

/// A swap in progress: written before the new binary starts, cleared by its
/// first welcome.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Pending {
    pub from: String,
    pub to: String,
    /// Unix seconds by which the new binary must have reached the hub.
    pub deadline: i64,
    /// Starts the service manager made since the swap (counted by
    /// [`guard`]); a binary that dies at every start is rolled back.
    #[serde(default)]
    pub starts: u32,
}

/// Service starts after a swap before [`guard`] gives up on the new binary.
pub const MAX_STARTS: u32 = 3;

/// What [`guard`] did.
#[derive(Debug, PartialEq)]
pub enum Guarded {
    /// No swap in progress.
    Nothing,
    /// A swap in progress, this start counted.
    Counted(u32),
    /// The new binary used up its starts or its deadline: the previous one is back.
    RolledBack { from: String, to: String },
}

/// `deckhand-agent.previous __update-guard <binary>`, run by the service
/// manager before each start (`ExecStartPre=`): the known-good previous
/// binary decides, so a new binary that dies at every start — before its
/// own deadline check can run — is still replaced.
pub fn guard(state_dir: &Path, binary: &Path, now_unix: i64) -> Result<Guarded, UpdateError> {
    let Some(mut p) = load_pending(state_dir) else { return Ok(Guarded::Nothing) };
    p.starts = p.starts.saturating_add(1);
    if p.starts <= MAX_STARTS && now_unix <= p.deadline {
        save_pending(state_dir, &p)?;
        return Ok(Guarded::Counted(p.starts));
    }
    rollback(binary)?;
    clear_pending(state_dir);
    let why = format!(
        "version {} did not stay up ({} starts, deadline passed: {}); rolled back to {}",
        p.to,
        p.starts - 1,
        now_unix > p.deadline,
        p.from
    );
    save_failed(state_dir, &p.to, &why)?;
    Ok(Guarded::RolledBack { from: p.to, to: p.from })
}

/// A version that failed here, reported to the hub from the next session.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Failed {
    pub version: String,
    pub error: String,
    pub reported: bool,
}

fn dir(state_dir: &Path) -> PathBuf {
    state_dir.join("update")
}

fn save<T: Serialize>(state_dir: &Path, name: &str, value: &T) -> Result<(), UpdateError> {
    let d = dir(state_dir);
    std::fs::create_dir_all(&d).map_err(io("create", &d))?;
    let path = d.join(name);
    let tmp = d.join(format!("{name}.tmp"));
    let body = serde_json::to_vec(value).unwrap_or_default();
    std::fs::write(&tmp, body).map_err(io("write", &tmp))?;
    std::fs::File::open(&tmp).and_then(|f| f.sync_all()).map_err(io("sync", &tmp))?;
    std::fs::rename(&tmp, &path).map_err(io("rename", &path))
}

fn load<T: for<'de> Deserialize<'de>>(state_dir: &Path, name: &str) -> Option<T> {
    let path = dir(state_dir).join(name);
    let meta = std::fs::metadata(&path).ok()?;
    if meta.len() > 64 * 1024 {
        return None;
    }
    serde_json::from_slice(&std::fs::read(&path).ok()?).ok()
}

const PENDING: &str = "pending.json";
const FAILED: &str = "failed.json";

pub fn save_pending(state_dir: &Path, p: &Pending) -> Result<(), UpdateError> {
    save(state_dir, PENDING, p)
}

pub fn load_pending(state_dir: &Path) -> Option<Pending> {
    load(state_dir, PENDING)
}

pub fn clear_pending(state_dir: &Path) {
    let _ = std::fs::remove_file(dir(state_dir).join(PENDING));
}

pub fn save_failed(state_dir: &Path, version: &str, error: &str) -> Result<(), UpdateError> {
    let mut error = error.to_string();
    crate::protocol::truncate_text(&mut error, MAX_UPDATE_TEXT);
    save(state_dir, FAILED, &Failed { version: version.to_string(), error, reported: false })
}

pub fn load_failed(state_dir: &Path) -> Option<Failed> {
    load(state_dir, FAILED)
}

pub fn mark_failed_reported(state_dir: &Path) {
    if let Some(mut f) = load_failed(state_dir) {
        f.reported = true;
        let _ = save(state_dir, FAILED, &f);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ring::signature::KeyPair;

    fn keypair() -> (ring::signature::Ed25519KeyPair, UpdateKey) {
        let pkcs8 = ring::signature::Ed25519KeyPair::generate_pkcs8(&ring::rand::SystemRandom::new()).unwrap();
        let kp = ring::signature::Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).unwrap();
        let key = UpdateKey::parse(&base64::engine::general_purpose::STANDARD.encode(kp.public_key().as_ref())).unwrap();
        (kp, key)
    }

    fn offer_for(kp: &ring::signature::Ed25519KeyPair, version: &str, body: &[u8]) -> Offer {
        let digest = hex::encode(Sha256::digest(body));
        let sig = kp.sign(update_statement(version, std::env::consts::OS, std::env::consts::ARCH, &digest).as_bytes());
        Offer::parse(version, body.len() as u64, &digest, &base64::engine::general_purpose::STANDARD.encode(sig.as_ref())).unwrap()
    }

    #[test]
    fn downloads_verify_digest_and_signature() {
        let (kp, key) = keypair();
        let dir = tempfile::tempdir().unwrap();
        let exe = dir.path().join("deckhand-agent");
        let body = b"#!/bin/sh\necho 9.9.9\n".repeat(1000);
        let offer = offer_for(&kp, "9.9.9", &body);
        let mut d = Download::start(&exe, offer.clone(), &key).unwrap();
        assert!(matches!(d.append(5, b"x"), Err(UpdateError::Chunk { expected: 0, got: 5 })));
        for (i, chunk) in body.chunks(4096).enumerate() {
            d.append((i * 4096) as u64, chunk).unwrap();
        }
        assert!(matches!(d.append(body.len() as u64, b"x"), Err(UpdateError::Overrun { .. })));
        let staged = d.finish().unwrap();
        assert_eq!(std::fs::read(&staged).unwrap(), body);

        // Same bytes, another version: the signature binds the version.
        let mut relabelled = offer.clone();
        relabelled.version = "10.0.0".into();
        assert!(matches!(Download::start(&exe, relabelled, &key), Err(UpdateError::Signature)));
        // Signed by another key.
        let (_, other) = keypair();
        assert!(matches!(Download::start(&exe, offer.clone(), &other), Err(UpdateError::Signature)));
        // Tampered bytes under a valid signature: the digest catches them.
        let mut d = Download::start(&exe, offer, &key).unwrap();
        let mut tampered = body.clone();
        tampered[10] ^= 1;
        d.append(0, &tampered).unwrap();
        assert!(matches!(d.finish(), Err(UpdateError::Digest)));
        assert!(!staged_path(&exe).exists(), "a tampered download is removed");
    }

    #[test]
    fn offers_and_keys_are_checked_for_shape() {
        assert!(matches!(UpdateKey::parse("AAAA"), Err(UpdateError::BadKey)));
        let ok_sig = base64::engine::general_purpose::STANDARD.encode([0u8; 64]);
        let digest = "ab".repeat(32);
        assert!(Offer::parse("1.2.3", 10, &digest, &ok_sig).is_ok());
        for (v, size, d, s, field) in [
            ("1 2", 10, digest.as_str(), ok_sig.as_str(), "version"),
            ("../x", 10, &digest, &ok_sig, "version"),
            ("1", 0, &digest, &ok_sig, "size"),
            ("1", 10, "zz", &ok_sig, "sha256"),
            ("1", 10, &digest, "AAAA", "signature"),
        ] {
            match Offer::parse(v, size, d, s) {
                Err(UpdateError::BadOffer { field: f, .. }) => assert_eq!(f, field),
                other => panic!("{v} {size}: {other:?}"),
            }
        }
        assert!(matches!(Offer::parse("1", MAX_UPDATE_BYTES + 1, &digest, &ok_sig), Err(UpdateError::TooLarge { .. })));
    }

    #[test]
    fn swap_keeps_the_previous_binary_and_rolls_back() {
        let dir = tempfile::tempdir().unwrap();
        let exe = dir.path().join("deckhand-agent");
        std::fs::write(&exe, b"old").unwrap();
        std::fs::write(staged_path(&exe), b"new").unwrap();
        install(&exe, &staged_path(&exe)).unwrap();
        assert_eq!(std::fs::read(&exe).unwrap(), b"new");
        assert_eq!(std::fs::read(previous_path(&exe)).unwrap(), b"old");
        rollback(&exe).unwrap();
        assert_eq!(std::fs::read(&exe).unwrap(), b"old");
        assert!(!previous_path(&exe).exists());
    }

    #[test]
    fn markers_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        assert!(load_pending(dir.path()).is_none());
        let p = Pending { from: "1".into(), to: "2".into(), deadline: 42, starts: 0 };
        save_pending(dir.path(), &p).unwrap();
        assert_eq!(load_pending(dir.path()), Some(p));
        clear_pending(dir.path());
        assert!(load_pending(dir.path()).is_none());
        save_failed(dir.path(), "2", "trial failed").unwrap();
        mark_failed_reported(dir.path());
        assert_eq!(load_failed(dir.path()).unwrap(), Failed { version: "2".into(), error: "trial failed".into(), reported: true });
    }

    #[test]
    fn guard_rolls_back_a_binary_that_keeps_dying() {
        let dir = tempfile::tempdir().unwrap();
        let exe = dir.path().join("deckhand-agent");
        std::fs::write(&exe, b"new").unwrap();
        std::fs::write(previous_path(&exe), b"old").unwrap();
        assert_eq!(guard(dir.path(), &exe, 0).unwrap(), Guarded::Nothing);
        save_pending(dir.path(), &Pending { from: "1".into(), to: "2".into(), deadline: 100, starts: 0 }).unwrap();
        for n in 1..=MAX_STARTS {
            assert_eq!(guard(dir.path(), &exe, 10).unwrap(), Guarded::Counted(n));
        }
        assert_eq!(std::fs::read(&exe).unwrap(), b"new");
        assert_eq!(guard(dir.path(), &exe, 10).unwrap(), Guarded::RolledBack { from: "2".into(), to: "1".into() });
        assert_eq!(std::fs::read(&exe).unwrap(), b"old");
        assert!(load_pending(dir.path()).is_none());
        assert!(load_failed(dir.path()).unwrap().error.contains("did not stay up"));
        // The deadline alone is enough.
        std::fs::write(previous_path(&exe), b"older").unwrap();
        save_pending(dir.path(), &Pending { from: "1".into(), to: "3".into(), deadline: 100, starts: 0 }).unwrap();
        assert!(matches!(guard(dir.path(), &exe, 101).unwrap(), Guarded::RolledBack { .. }));
        assert_eq!(std::fs::read(&exe).unwrap(), b"older");
    }

    #[test]
    fn trial_args_replace_only_the_subcommand() {
        let args = trial_args(["--config".into(), "run".into(), "run".into()]);
        assert_eq!(args, ["--config", TRIAL_SUBCOMMAND, "run"]);
    }
}
