//! Runs that outlive the agent (Unix): a per-run supervisor process and the
//! run directory it shares with the agent.
//!
//! Owns the run directory `<runs root>/<invoke id>.<record seq>/`:
//!
//! | file | written by | meaning |
//! |---|---|---|
//! | `spec.json` | agent, before the go | the [`RunSpec`] to run, and the run-as account as the agent resolved it (the supervisor need not look it up again) |
//! | `lock` | — | `flock`ed by the supervisor for its whole life (the agent takes it first and hands the locked descriptor over as fd 3, so there is no moment where a launched run is unlocked) |
//! | `ran` | supervisor, before the script starts | the script was started: never start it again |
//! | `output.spool` | supervisor | live output, first [`SPOOL_CAP`] bytes |
//! | `stop` | agent | a stop request (the supervisor polls for it) |
//! | `result.json` | supervisor, atomically | the [`RunOutcome`] |
//! | `supervisor.log` | supervisor | its own log (stderr) |
//! | `ran.reserve`, `result.reserve` | agent, before the go | space set aside so `ran` and `result.json` can still be written when the state dir fills up meanwhile (overwritten in place, then renamed) |
//!
//! The supervisor is [`BINARY`], a small binary installed beside the agent
//! (or, when that is absent or of another version, the agent's own binary
//! re-executed: [`program_for`]), run with a hidden subcommand in its own
//! session (`setsid`), so neither a signal to the
//! agent's process group nor the agent's death reaches it; it runs the
//! script with the ordinary engine ([`super::run`]), which enforces the
//! timeout and kills the tree on a stop. The agent only ever reads files, so
//! the first agent and a restarted one watch a run the same way.
//!
//! At most once: the script starts only under the lock and only if `ran`
//! is absent; `ran` is synced before the script starts.
//!
//! Launched ahead: the agent starts the supervisor as soon as it has
//! claimed the directory ([`claim`], [`Claimed::launch`]), so the process's
//! own start overlaps the spec's writing ([`fill`], not synced) and the
//! agent's journal sync of the run's start ([`prepare_off_loop`] does all
//! three steps). The supervisor then waits for one byte on its stdin
//! ([`Launched::go`]) before anything else; an end of stdin instead (the
//! run withdrawn, or the agent dead) makes it exit without a trace.

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use base64::Engine;
use chrono::{DateTime, Utc};
use nix::libc;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::{RunOutcome, RunSpec, Termination, codes};
use crate::lifecycle::CommandType;

/// Hidden subcommand of `deckhand-agent` that runs one supervisor; the
/// supervisor's own binary ([`BINARY`]) takes the same arguments.
pub const SUBCOMMAND: &str = "__supervise";
/// The supervisor's own binary, installed beside `deckhand-agent`: it
/// carries only what a supervisor runs, so it starts about 1 ms faster
/// than the agent's binary (issue #21).
pub const BINARY: &str = "deckhand-supervise";
/// What an agent and a supervisor agree on besides the version: the
/// arguments, the lock on fd 3, the go on stdin and the run directory's
/// files. Raised whenever one of them changes.
const REVISION: u32 = 1;
/// How long the agent waits, once at its start, for [`BINARY`] to say
/// which version it is.
const ASK_VERSION_WAIT: Duration = Duration::from_secs(2);
/// Live output spooled per run; beyond it live output stops (the result
/// still carries the head + tail kept by the output cap).
pub const SPOOL_CAP: u64 = 1024 * 1024;
/// Largest `spec.json` / `result.json` read back (the script is ≤ 16 KiB,
/// kept output ≤ 512 KiB before base64).
const MAX_FILE_BYTES: u64 = 2 * 1024 * 1024;
/// How often the agent looks at a run directory, and the supervisor at `stop`.
const POLL: Duration = Duration::from_millis(100);
/// How often the agent checks whether the supervisor still holds the lock.
const LIVENESS_EVERY: u32 = 10;
/// Seconds a supervisor keeps retrying to write a result (an hour).
const RESULT_RETRIES: u32 = 3600;
/// The descriptor the locked `lock` file is handed over as.
const LOCK_FD: i32 = 3;
/// Set (to `1`) in a supervisor's environment by an agent that launches
/// it ahead of its run: it waits for its go (one byte on stdin) before
/// anything else.
/// A supervisor started without it (by an older agent) starts at once.
pub const AFTER_GO_ENV: &str = "DECKHAND_SUPERVISE_AFTER_GO";
/// The byte that lets a waiting supervisor start its run.
const GO: u8 = b'1';
/// How long withdrawing a launched supervisor waits for it to exit.
const WITHDRAW_WAIT: Duration = Duration::from_secs(5);

const SPEC: &str = "spec.json";
const LOCK: &str = "lock";
const RAN: &str = "ran";
const SPOOL: &str = "output.spool";
const STOP: &str = "stop";
const RESULT: &str = "result.json";
const LOG: &str = "supervisor.log";
const RAN_RESERVE: &str = "ran.reserve";
const RESULT_RESERVE: &str = "result.reserve";
/// Longest invoke id used verbatim in a directory name.
const MAX_NAME_ID: usize = 64;

#[derive(Debug, thiserror::Error)]
pub enum SuperviseError {
    #[error("run directory {path}: {op}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("invoke id is {0} bytes; a supervised run needs at most {MAX_NAME_ID}")]
    IdTooLong(usize),
    #[error("a supervisor already holds {0}")]
    Busy(PathBuf),
    #[error("{path} is {size} bytes, over the {MAX_FILE_BYTES}-byte limit")]
    TooLarge { path: PathBuf, size: u64 },
    #[error("run directory {0} was removed while the run went on; its result has no reader")]
    Removed(PathBuf),
    #[error("{path}: {source}")]
    Decode {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
}

fn io<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> SuperviseError + 'a {
    move |source| SuperviseError::Io { op, path: path.to_path_buf(), source }
}

/// The directory of one run (one record of one invocation). Invoke ids come
/// from the hub: anything but `[A-Za-z0-9_-]` is hex-encoded, so the name can
/// never leave `root`.
pub fn run_dir(root: &Path, invoke_id: &str, record_seq: u32) -> Result<PathBuf, SuperviseError> {
    if invoke_id.len() > MAX_NAME_ID {
        return Err(SuperviseError::IdTooLong(invoke_id.len()));
    }
    let plain = !invoke_id.is_empty() && invoke_id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    let name =
        if plain { invoke_id.to_string() } else { format!("x{}", invoke_id.bytes().map(|b| format!("{b:02x}")).collect::<String>()) };
    Ok(root.join(format!("{name}.{record_seq}")))
}

/// [`RunSpec`] as stored in `spec.json`.
#[derive(Debug, Serialize, Deserialize)]
struct StoredSpec {
    invoke_id: String,
    command_type: CommandType,
    script: String,
    working_dir: Option<PathBuf>,
    username: Option<String>,
    timeout_ms: u64,
    env: Vec<(String, String)>,
    output_cap: usize,
    kill_grace_ms: u64,
    drain_timeout_ms: u64,
    script_root: Option<PathBuf>,
    /// The run-as account as the agent resolved it (absent from older
    /// agents' specs, or when it did not resolve: the supervisor looks it up).
    #[serde(default)]
    account: Option<super::user::Handed>,
}

impl From<&RunSpec> for StoredSpec {
    fn from(s: &RunSpec) -> Self {
        Self {
            invoke_id: s.invoke_id.clone(),
            command_type: s.command_type,
            script: s.script.clone(),
            working_dir: s.working_dir.clone(),
            username: s.username.clone(),
            timeout_ms: s.timeout.as_millis().min(u64::MAX as u128) as u64,
            env: s.env.clone(),
            output_cap: s.output_cap,
            kill_grace_ms: s.kill_grace.as_millis().min(u64::MAX as u128) as u64,
            drain_timeout_ms: s.drain_timeout.as_millis().min(u64::MAX as u128) as u64,
            script_root: s.script_root.clone(),
            account: None,
        }
    }
}

impl From<StoredSpec> for RunSpec {
    fn from(s: StoredSpec) -> Self {
        RunSpec {
            invoke_id: s.invoke_id,
            command_type: s.command_type,
            script: s.script,
            working_dir: s.working_dir,
            username: s.username,
            timeout: Duration::from_millis(s.timeout_ms),
            env: s.env,
            output_cap: s.output_cap,
            kill_grace: Duration::from_millis(s.kill_grace_ms),
            drain_timeout: Duration::from_millis(s.drain_timeout_ms),
            script_root: s.script_root,
        }
    }
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum StoredTermination {
    Exited,
    TimedOut,
    Stopped,
    FailedToStart,
}

/// [`RunOutcome`] as stored in `result.json`.
#[derive(Debug, Serialize, Deserialize)]
struct StoredOutcome {
    termination: StoredTermination,
    exit_code: Option<i32>,
    signal: Option<i32>,
    error_code: String,
    error_info: String,
    output_b64: String,
    dropped: u64,
    start_time: DateTime<Utc>,
    finish_time: DateTime<Utc>,
}

impl From<&RunOutcome> for StoredOutcome {
    fn from(o: &RunOutcome) -> Self {
        Self {
            termination: match o.termination {
                Termination::Exited => StoredTermination::Exited,
                Termination::TimedOut => StoredTermination::TimedOut,
                Termination::Stopped => StoredTermination::Stopped,
                Termination::FailedToStart => StoredTermination::FailedToStart,
            },
            exit_code: o.exit_code,
            signal: o.signal,
            error_code: o.error_code.clone(),
            error_info: o.error_info.clone(),
            output_b64: base64::engine::general_purpose::STANDARD.encode(&o.output),
            dropped: o.dropped,
            start_time: o.start_time,
            finish_time: o.finish_time,
        }
    }
}

impl StoredOutcome {
    fn into_outcome(self) -> RunOutcome {
        let output = base64::engine::general_purpose::STANDARD.decode(self.output_b64.as_bytes()).unwrap_or_default();
        RunOutcome {
            termination: match self.termination {
                StoredTermination::Exited => Termination::Exited,
                StoredTermination::TimedOut => Termination::TimedOut,
                StoredTermination::Stopped => Termination::Stopped,
                StoredTermination::FailedToStart => Termination::FailedToStart,
            },
            exit_code: self.exit_code,
            signal: self.signal,
            error_code: self.error_code,
            error_info: self.error_info,
            output,
            dropped: self.dropped,
            start_time: self.start_time,
            finish_time: self.finish_time,
        }
    }
}

fn private_dir(dir: &Path) -> Result<(), SuperviseError> {
    use std::os::unix::fs::PermissionsExt;
    fs::create_dir_all(dir).map_err(io("create", dir))?;
    fs::set_permissions(dir, fs::Permissions::from_mode(0o700)).map_err(io("chmod", dir))
}

/// Writes `name` in `dir` atomically and durably (temp, fsync, rename, fsync dir).
fn write_atomic(dir: &Path, name: &str, body: &[u8]) -> Result<(), SuperviseError> {
    let tmp = dir.join(format!("{name}.tmp"));
    let path = dir.join(name);
    {
        let mut f = OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(&tmp).map_err(io("open", &tmp))?;
        f.write_all(body).map_err(io("write", &tmp))?;
        f.sync_all().map_err(io("fsync", &tmp))?;
    }
    fs::rename(&tmp, &path).map_err(io("rename", &tmp))?;
    File::open(dir).and_then(|d| d.sync_all()).map_err(io("fsync", dir))
}

/// Writes `name` in `dir` atomically (temp, rename) but not durably: for
/// the files a launch prepares ([`fill`]). They need not survive a power
/// loss: the supervisor reads them while running, and a crash that loses
/// them also ends the supervisor before it synced `ran`, so the script
/// never started. The reserves still hold their space: a write reserves
/// its blocks when it is made, not when it is synced.
fn write_prepared(dir: &Path, name: &str, body: &[u8]) -> Result<(), SuperviseError> {
    let tmp = dir.join(format!("{name}.tmp"));
    let path = dir.join(name);
    {
        let mut f = OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(&tmp).map_err(io("open", &tmp))?;
        f.write_all(body).map_err(io("write", &tmp))?;
    }
    fs::rename(&tmp, &path).map_err(io("rename", &tmp))
}

/// Like [`write_atomic`], but when the disk is full, writes `body` into the
/// space reserved at launch (`reserve`, overwritten in place: no new blocks;
/// JSON ignores the trailing padding) and renames it to `name`.
fn write_reserved(dir: &Path, name: &str, reserve: &str, body: &[u8]) -> Result<(), SuperviseError> {
    let first = match write_atomic(dir, name, body) {
        Ok(()) => return Ok(()),
        Err(e) => e,
    };
    let _ = fs::remove_file(dir.join(format!("{name}.tmp")));
    let path = dir.join(reserve);
    let fits = fs::metadata(&path).map(|m| m.len() >= body.len() as u64).unwrap_or(false);
    if !fits {
        return Err(first);
    }
    tracing::warn!(error = %first, file = name, "writing into the space reserved for it");
    {
        let mut f = OpenOptions::new().write(true).open(&path).map_err(io("open", &path))?;
        f.write_all(body).map_err(io("write", &path))?;
        f.sync_all().map_err(io("fsync", &path))?;
    }
    let target = dir.join(name);
    fs::rename(&path, &target).map_err(io("rename", &path))?;
    File::open(dir).and_then(|d| d.sync_all()).map_err(io("fsync", dir))
}

fn read_bounded(path: &Path) -> Result<Option<Vec<u8>>, SuperviseError> {
    let f = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io("open", path)(e)),
    };
    let mut buf = Vec::new();
    f.take(MAX_FILE_BYTES + 1).read_to_end(&mut buf).map_err(io("read", path))?;
    if buf.len() as u64 > MAX_FILE_BYTES {
        return Err(SuperviseError::TooLarge { path: path.to_path_buf(), size: buf.len() as u64 });
    }
    Ok(Some(buf))
}

fn open_lock(dir: &Path) -> Result<File, SuperviseError> {
    let path = dir.join(LOCK);
    OpenOptions::new().read(true).write(true).create(true).truncate(false).mode(0o600).open(&path).map_err(io("open", &path))
}

/// Non-blocking exclusive `flock`; false when someone else holds it.
fn try_lock(f: &File) -> bool {
    // SAFETY: flock on a descriptor we own; no memory is involved.
    unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) == 0 }
}

/// What [`BINARY`] prints for `--version`: its version and the supervise revision (`REVISION`).
/// An agent uses that binary only when this line matches its own.
pub fn version_line(version: &str) -> String {
    format!("{BINARY} {version} (supervise revision {REVISION})")
}

/// The program that supervises this agent's runs, chosen once at its
/// start: [`BINARY`] beside `agent_exe` when it says it is of the agent's
/// `version` and its supervise revision, else the agent's own binary (a package
/// without it, or a self-update that replaced only the agent): the two
/// must agree on the run directory's files. Checked once, at start: during
/// a package upgrade, until the service restarts, the old agent starts the
/// new binary by its path, as it always started the new agent binary.
pub fn program_for(agent_exe: &Path, version: &str) -> PathBuf {
    pick_program(agent_exe, &version_line(version), ASK_VERSION_WAIT)
}

fn pick_program(agent_exe: &Path, want: &str, wait: Duration) -> PathBuf {
    let sibling = agent_exe.with_file_name(BINARY);
    if !sibling.is_file() {
        tracing::debug!(program = %agent_exe.display(), "no {BINARY} beside the agent; runs are supervised by the agent's binary");
        return agent_exe.to_path_buf();
    }
    match ask_version(&sibling, wait) {
        Some(line) if line == want => {
            tracing::info!(program = %sibling.display(), "runs are supervised by {BINARY}");
            sibling
        }
        Some(_) => {
            // Its answer is not echoed: the file is not ours to trust.
            tracing::warn!(program = %sibling.display(), expected = want, "{BINARY} is of another version; runs are supervised by the agent's binary");
            agent_exe.to_path_buf()
        }
        None => {
            tracing::warn!(program = %sibling.display(), "{BINARY} did not say its version; runs are supervised by the agent's binary");
            agent_exe.to_path_buf()
        }
    }
}

/// `program --version`'s first line, when it exits with success within
/// `wait`; a program that hangs is killed.
fn ask_version(program: &Path, wait: Duration) -> Option<String> {
    let mut child = std::process::Command::new(program)
        .arg("--version")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .ok()?;
    let deadline = std::time::Instant::now() + wait;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if std::time::Instant::now() < deadline => std::thread::sleep(Duration::from_millis(2)),
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                return None;
            }
        }
    };
    if !status.success() {
        return None;
    }
    // What it printed is in the pipe already; read it without waiting, so
    // a process it left behind holding the pipe open cannot hang us. The
    // line we want is short; a program that says more is not it.
    let stdout = child.stdout.take()?;
    use nix::fcntl::{FcntlArg, OFlag, fcntl};
    fcntl(&stdout, FcntlArg::F_SETFL(OFlag::O_NONBLOCK)).ok()?;
    let mut out = Vec::new();
    match stdout.take(256).read_to_end(&mut out) {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
        Err(_) => return None,
    }
    let text = String::from_utf8(out).ok()?;
    text.lines().next().map(str::to_string)
}

/// A run directory claimed for one run: made, and its lock taken by us.
pub struct Claimed {
    lock: File,
    dir: PathBuf,
}

/// Claims `dir`: the first step of starting a supervised run. The
/// supervisor is launched at once ([`Claimed::launch`]) and waits for its
/// go ([`Launched::go`]), while [`fill`] writes what it will read and the
/// agent syncs the run's start in its journal: the supervisor's own start
/// (an `execve` of the agent's binary, about 1.7 ms) overlaps both instead
/// of following them (issue #21).
pub fn claim(dir: &Path) -> Result<Claimed, SuperviseError> {
    private_dir(dir)?;
    let lock = open_lock(dir)?;
    if !try_lock(&lock) {
        return Err(SuperviseError::Busy(dir.to_path_buf()));
    }
    Ok(Claimed { lock, dir: dir.to_path_buf() })
}

/// Writes the spec (with the run-as account, resolved here from the
/// agent's cache) and the reserves into a claimed `dir`: everything the
/// supervisor reads after its go. Nothing here is synced (issue #21): the
/// files only serve the supervisor, which reads them from the page cache,
/// and `ran`'s sync (file and directory) puts the directory on disk before
/// the script starts. A power loss before that sync may take the
/// directory with it; the restarted agent then finds the run's start in
/// its journal and no directory, and reports `ExecutionInterrupted`
/// without running it: at most once holds either way.
pub fn fill(dir: &Path, spec: &RunSpec) -> Result<(), SuperviseError> {
    let stored = StoredSpec { account: super::user::hand(spec.username.as_deref()), ..StoredSpec::from(spec) };
    let body = serde_json::to_vec(&stored).map_err(|source| SuperviseError::Decode { path: dir.join(SPEC), source })?;
    write_prepared(dir, SPEC, &body)?;
    // Kept output is at most the cap, base64 grows it by 4/3; the rest of a
    // result (codes, times, error text) fits in the extra 8 KiB.
    let result_room = spec.output_cap.min(super::MAX_OUTPUT_CAP) / 3 * 4 + 8 * 1024;
    write_prepared(dir, RESULT_RESERVE, &vec![b' '; result_room])?;
    write_prepared(dir, RAN_RESERVE, &[b' '; 64])
}

impl Claimed {
    /// Starts a supervisor for the claimed directory with `program` (the
    /// agent's own binary), handing it the lock. It does nothing until
    /// [`Launched::go`] (a byte on its stdin); the end of its stdin without
    /// one ([`Launched::withdraw`], or the agent's death) makes it exit
    /// without touching the directory. It is reaped by a background task
    /// while the agent lives, which fires [`Exited`] when it ends (its
    /// result is on disk by then), so [`watch`] reads the result at once
    /// instead of at its next poll. With `scope`, the supervisor starts in
    /// a systemd scope of its own ([`super::scope`]), outside the agent's
    /// cgroup.
    pub fn launch(self, program: &Path, scope: Option<&super::scope::Scope>) -> Result<Launched, SuperviseError> {
        let Claimed { lock, dir } = self;
        let log_path = dir.join(LOG);
        let log = OpenOptions::new().create(true).append(true).mode(0o600).open(&log_path).map_err(io("open", &log_path))?;
        let mut cmd = match scope {
            Some(scope) => {
                let (wrapper, args) = scope.wrap(program);
                let mut c = std::process::Command::new(wrapper);
                c.args(args);
                c
            }
            None => std::process::Command::new(program),
        };
        cmd.arg(SUBCOMMAND).arg(&dir).stdin(std::process::Stdio::piped()).stdout(std::process::Stdio::null()).stderr(log);
        cmd.env("DECKHAND_LOG", std::env::var("DECKHAND_LOG").unwrap_or_else(|_| "info".into()));
        cmd.env(AFTER_GO_ENV, "1");
        let lock_fd = lock.as_raw_fd();
        // SAFETY: between fork and exec we only make async-signal-safe calls
        // (setsid, dup2, fcntl) on values computed before the fork.
        unsafe {
            cmd.pre_exec(move || {
                if libc::setsid() < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                // The locked descriptor becomes fd 3, inherited across exec: the
                // lock (bound to the open file, not the process) passes to the
                // supervisor without ever being released.
                if lock_fd == LOCK_FD {
                    let flags = libc::fcntl(LOCK_FD, libc::F_GETFD);
                    if flags < 0 || libc::fcntl(LOCK_FD, libc::F_SETFD, flags & !libc::FD_CLOEXEC) < 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                } else if libc::dup2(lock_fd, LOCK_FD) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let mut child = tokio::process::Command::from(cmd).spawn().map_err(io("start supervisor", program))?;
        // Our copy of the lock closes here; the supervisor's keeps it held.
        drop(lock);
        let Some(go) = child.stdin.take() else {
            // Not reached (stdin is piped above); without it the supervisor
            // would read an end at once and exit, doing nothing.
            return Err(io("start supervisor", program)(std::io::ErrorKind::BrokenPipe.into()));
        };
        let (exited, rx) = tokio::sync::oneshot::channel();
        tokio::spawn(async move {
            let _ = child.wait().await;
            let _ = exited.send(());
        });
        Ok(Launched { go, exited: rx, dir })
    }
}

/// A supervisor started ahead of its run, waiting for its go.
pub struct Launched {
    go: tokio::process::ChildStdin,
    exited: Exited,
    dir: PathBuf,
}

impl Launched {
    /// Lets the supervisor start the run. Call once the spec is filled and
    /// the run's start is journaled: from here on the script may start.
    pub async fn go(self) -> Result<Exited, SuperviseError> {
        use tokio::io::AsyncWriteExt;
        let Launched { mut go, exited, dir } = self;
        // A supervisor already gone (EPIPE) never started the script.
        go.write_all(&[GO]).await.map_err(io("start supervisor", &dir))?;
        Ok(exited)
    }

    /// The run will not be supervised after all: the supervisor exits
    /// without touching the directory; returns once it has, or after
    /// 5 s (`WITHDRAW_WAIT`; a supervisor slow to start still exits at its
    /// first look at stdin, whoever waits for it).
    pub async fn withdraw(self) {
        let Launched { go, exited, dir } = self;
        drop(go);
        if tokio::time::timeout(WITHDRAW_WAIT, exited).await.is_err() {
            tracing::warn!(dir = %dir.display(), "a withdrawn supervisor has not exited yet; going on without it");
        }
    }
}

/// [`claim`], [`Claimed::launch`] and [`fill`] in one trip to a blocking
/// thread: the directory's making, the fork/exec of the supervisor and the
/// files' writing must not stall the agent's single-threaded event loop
/// (issue #21), where heartbeats, acks and other runs' reports wait. One
/// trip, not two: on a busy host each return to the event loop waits for
/// a core, and the fill would wait with it (tenth pass). The supervisor is
/// launched first, so its start overlaps the fill. A fill that fails
/// withdraws the launched supervisor before the error is returned.
pub async fn prepare_off_loop(
    dir: PathBuf,
    program: PathBuf,
    scope: Option<super::scope::Scope>,
    spec: RunSpec,
) -> Result<Launched, SuperviseError> {
    let at = dir.clone();
    let made = tokio::task::spawn_blocking(move || {
        let launched = claim_when_free(&dir)?.launch(&program, scope.as_ref())?;
        Ok::<_, SuperviseError>((fill(&dir, &spec), launched))
    })
    .await
    .unwrap_or_else(|e| Err(SuperviseError::Io { op: "prepare", path: at, source: std::io::Error::other(e.to_string()) }));
    match made {
        Ok((Ok(()), launched)) => Ok(launched),
        Ok((Err(e), launched)) => {
            launched.withdraw().await;
            Err(e)
        }
        Err(e) => Err(e),
    }
}

/// [`claim`], waiting up to [`WITHDRAW_WAIT`] while the directory is busy:
/// a supervisor withdrawn from this same run (its acceptance was not
/// synced, and the hub delivered it again) may still be on its way out.
/// One that holds on past that is a live run of it, and `Busy` says so.
fn claim_when_free(dir: &Path) -> Result<Claimed, SuperviseError> {
    let deadline = std::time::Instant::now() + WITHDRAW_WAIT;
    loop {
        match claim(dir) {
            Err(SuperviseError::Busy(_)) if std::time::Instant::now() < deadline => std::thread::sleep(Duration::from_millis(10)),
            other => return other,
        }
    }
}

/// Fires when a supervisor this agent started has exited.
pub type Exited = tokio::sync::oneshot::Receiver<()>;

/// How watching a run ended.
#[derive(Debug)]
pub enum Watched {
    /// The supervisor wrote its result.
    Finished(Box<RunOutcome>),
    /// No supervisor and no trace of a start: the script never ran (the
    /// agent died between preparing the directory and the supervisor's start).
    NeverRan,
    /// The supervisor is gone without a result (killed, or the host rebooted).
    Vanished,
}

/// What the directory says right now, without waiting.
pub fn inspect(dir: &Path) -> Option<Watched> {
    if let Some(w) = finished(dir) {
        return Some(w);
    }
    if !dir.is_dir() {
        // Removed under us (by hand): nothing will ever appear there.
        return Some(Watched::Vanished);
    }
    let lock = open_lock(dir).ok()?;
    if !try_lock(&lock) {
        return None;
    }
    // Gone: a result may have landed between the two looks.
    Some(finished(dir).unwrap_or_else(|| if dir.join(RAN).exists() { Watched::Vanished } else { Watched::NeverRan }))
}

fn finished(dir: &Path) -> Option<Watched> {
    let path = dir.join(RESULT);
    match read_bounded(&path) {
        Ok(None) => None,
        Ok(Some(b)) => match serde_json::from_slice::<StoredOutcome>(&b) {
            Ok(o) => Some(Watched::Finished(Box::new(o.into_outcome()))),
            Err(e) => Some(unreadable(&SuperviseError::Decode { path, source: e })),
        },
        Err(e) => Some(unreadable(&e)),
    }
}

fn unreadable(e: &SuperviseError) -> Watched {
    tracing::error!(error = %e, "run result unreadable");
    Watched::Finished(Box::new(RunOutcome::failed(
        Utc::now(),
        codes::EXECUTION_EXCEPTION,
        format!("the run's result could not be read: {e}"),
    )))
}

/// Follows a supervised run until it ends: forwards new spooled output to
/// `live` (from the start, or from the spool's current end when
/// `from_end`: the hub already showed the rest before a restart), turns
/// `stop` into a stop file, and returns the outcome.
///
/// `exited` (from [`Launched::go`]; `None` for a run re-attached after a restart,
/// whose supervisor is not our child) wakes the loop when the supervisor
/// ends; polling remains the fallback.
pub async fn watch(
    dir: &Path,
    stop: CancellationToken,
    live: Option<mpsc::Sender<Vec<u8>>>,
    from_end: bool,
    mut exited: Option<Exited>,
) -> Watched {
    let spool = dir.join(SPOOL);
    let mut offset = if from_end { fs::metadata(&spool).map(|m| m.len()).unwrap_or(0) } else { 0 };
    let mut stop_written = false;
    let mut tick = 0u32;
    loop {
        if stop.is_cancelled() && !stop_written {
            stop_written = true;
            if let Err(e) = write_atomic(dir, STOP, b"stop\n") {
                // No room for the file (state dir full): tell the live
                // supervisor directly; SIGTERM is a stop to it.
                tracing::warn!(error = %e, "cannot write the stop file; signalling the supervisor");
                signal_supervisor(dir);
            }
        }
        offset = forward(&spool, offset, live.as_ref()).await;
        let check_alive = tick.is_multiple_of(LIVENESS_EVERY);
        tick = tick.wrapping_add(1);
        let done = if check_alive { inspect(dir) } else { finished(dir) };
        if let Some(w) = done {
            forward(&spool, offset, live.as_ref()).await;
            return w;
        }
        tokio::select! {
            _ = tokio::time::sleep(POLL) => {}
            _ = stop.cancelled(), if !stop_written => {}
            _ = async { if let Some(rx) = exited.as_mut() { let _ = rx.await; } }, if exited.is_some() => {
                // Once: the supervisor is gone, the next look finds its result.
                exited = None;
            }
        }
    }
}

/// SIGTERM to the supervisor named in `ran`, only while it still holds the
/// run's lock and its command line is a supervisor's (never a recycled pid).
fn signal_supervisor(dir: &Path) {
    let Ok(text) = fs::read_to_string(dir.join(RAN)) else {
        return;
    };
    let Ok(pid) = text.trim().parse::<i32>() else {
        return;
    };
    if pid <= 1 {
        return;
    }
    let held = open_lock(dir).map(|l| !try_lock(&l)).unwrap_or(false);
    let ours =
        fs::read(format!("/proc/{pid}/cmdline")).map(|c| c.split(|b| *b == 0).any(|arg| arg == SUBCOMMAND.as_bytes())).unwrap_or(false);
    if held && ours {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGTERM);
    }
}

/// Sends spool bytes past `offset`; returns the new offset.
async fn forward(spool: &Path, offset: u64, live: Option<&mpsc::Sender<Vec<u8>>>) -> u64 {
    let Ok(mut f) = File::open(spool) else {
        return offset;
    };
    let len = f.metadata().map(|m| m.len()).unwrap_or(offset);
    if len <= offset || f.seek(SeekFrom::Start(offset)).is_err() {
        return offset;
    }
    let mut buf = Vec::new();
    if f.take((len - offset).min(SPOOL_CAP)).read_to_end(&mut buf).is_err() {
        return offset;
    }
    let n = buf.len() as u64;
    if let Some(tx) = live {
        // Best effort, as in-process live output: a full queue drops.
        let _ = tx.try_send(buf);
    }
    offset + n
}

/// Removes a finished run's directory (best effort).
pub fn remove(dir: &Path) {
    if let Err(e) = fs::remove_dir_all(dir)
        && e.kind() != std::io::ErrorKind::NotFound
    {
        tracing::warn!(dir = %dir.display(), error = %e, "cannot remove run directory");
    }
}

/// Run directories under `root` no supervisor holds (left by a crash after
/// the final report was journaled), except those in `keep`.
pub fn stale_dirs(root: &Path, keep: &[PathBuf]) -> Vec<PathBuf> {
    let Ok(rd) = fs::read_dir(root) else {
        return Vec::new();
    };
    rd.filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| p.is_dir() && !keep.contains(p))
        .filter(|p| open_lock(p).map(|l| try_lock(&l)).unwrap_or(false))
        .collect()
}

/// The supervisor: `deckhand-agent __supervise <dir>`. Returns the process
/// exit code (0: a result was written or the run had already been started).
pub fn supervise_main(dir: &Path) -> i32 {
    match supervise(dir) {
        Ok(()) => 0,
        Err(e) => {
            tracing::error!(dir = %dir.display(), error = %e, "supervisor failed");
            1
        }
    }
}

/// Which directory `dir` names now (device and inode).
fn identity(dir: &Path) -> std::io::Result<(u64, u64)> {
    fs::metadata(dir).map(|m| (m.dev(), m.ino()))
}

fn supervise(dir: &Path) -> Result<(), SuperviseError> {
    // Launched ahead of the run: nothing, not even the lock's check, until
    // the agent's go. An end of stdin instead (the agent withdrew the run,
    // or died first) leaves the directory as it is: no `ran`, so a
    // restarted agent starts the run itself.
    if std::env::var_os(AFTER_GO_ENV).is_some_and(|v| v == "1") && !go_given() {
        tracing::info!(dir = %dir.display(), "the run was withdrawn before its go; nothing started");
        return Ok(());
    }
    hold_lock(dir)?;
    // The directory we were started for: retrying a result into another
    // one (removed, then made again for a later run) would hand that run
    // our result.
    let home = identity(dir).map_err(io("stat", dir))?;
    let ran = dir.join(RAN);
    if ran.exists() {
        tracing::warn!(dir = %dir.display(), "run already started once; not starting it again");
        return Ok(());
    }
    let spec_path = dir.join(SPEC);
    let body = read_bounded(&spec_path)?.ok_or_else(|| io("read", &spec_path)(std::io::ErrorKind::NotFound.into()))?;
    let mut stored: StoredSpec =
        serde_json::from_slice(&body).map_err(|source| SuperviseError::Decode { path: spec_path.clone(), source })?;
    if let Some(handed) = stored.account.take() {
        super::user::take_handed(handed);
    }
    let spec = RunSpec::from(stored);
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(io("start runtime", dir))?;
    // SIGTERM/SIGINT must be a stop, never a silent death, from the moment
    // `ran` names our pid (the agent and operators signal that pid).
    let signals = {
        let _rt = rt.enter();
        let term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate());
        let int = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt());
        (term.map_err(io("handle SIGTERM", dir))?, int.map_err(io("handle SIGINT", dir))?)
    };
    write_reserved(dir, RAN, RAN_RESERVE, format!("{}\n", std::process::id()).as_bytes())?;
    let (outcome, script_dir) = rt.block_on(run_spooled(dir, spec, signals));
    let body =
        serde_json::to_vec(&StoredOutcome::from(&outcome)).map_err(|source| SuperviseError::Decode { path: dir.join(RESULT), source })?;
    // The script ran: its result must not be lost to a passing disk
    // problem. Keep the lock (the agent keeps waiting) and retry.
    let mut attempt = 0u32;
    loop {
        match write_reserved(dir, RESULT, RESULT_RESERVE, &body) {
            // The result first, then the script's directory: its removal
            // (milliseconds on some disks) is not on the way to the result.
            Ok(()) => {
                drop(script_dir);
                return Ok(());
            }
            // The agent removes a run directory only once nobody will read
            // it (a deregistered instance, a wiped state directory): waiting
            // an hour for it to come back would only leave us behind.
            Err(_) if identity(dir).ok() != Some(home) => {
                return Err(SuperviseError::Removed(dir.to_path_buf()));
            }
            Err(e) if attempt < RESULT_RETRIES => {
                if attempt == 0 {
                    tracing::error!(error = %e, "cannot write the run's result; retrying every second");
                }
                attempt += 1;
                std::thread::sleep(Duration::from_secs(1));
            }
            Err(e) => return Err(e),
        }
    }
}

/// Waits for the agent's go on stdin: true for [`GO`], false for an end
/// or anything else.
fn go_given() -> bool {
    let mut byte = [0u8; 1];
    std::io::stdin().read_exact(&mut byte).is_ok() && byte[0] == GO
}

/// Makes sure this process holds the run's lock: normally fd 3, handed
/// over locked by the agent (checked to be that very file); otherwise it
/// takes the lock itself or gives up.
fn hold_lock(dir: &Path) -> Result<(), SuperviseError> {
    let lock = open_lock(dir)?;
    let meta = lock.metadata().map_err(io("stat", &dir.join(LOCK)))?;
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: fstat writes into the struct we own; a bad fd only returns -1.
    let inherited = unsafe { libc::fstat(LOCK_FD, &mut st) } == 0 && st.st_dev as u64 == meta.dev() && st.st_ino as u64 == meta.ino();
    if inherited {
        // Keep the script from inheriting the lock: it must end with us.
        // SAFETY: fcntl on a descriptor verified above.
        unsafe {
            let flags = libc::fcntl(LOCK_FD, libc::F_GETFD);
            if flags >= 0 {
                libc::fcntl(LOCK_FD, libc::F_SETFD, flags | libc::FD_CLOEXEC);
            }
        }
        return Ok(());
    }
    if !try_lock(&lock) {
        return Err(SuperviseError::Busy(dir.to_path_buf()));
    }
    // Held until exit.
    std::mem::forget(lock);
    Ok(())
}

type Signals = (tokio::signal::unix::Signal, tokio::signal::unix::Signal);

async fn run_spooled(dir: &Path, spec: RunSpec, signals: Signals) -> (RunOutcome, Option<super::scriptfile::ScriptDir>) {
    let stop = CancellationToken::new();
    // A stop: the agent's stop file, or SIGTERM/SIGINT sent to us directly.
    let stop_file = dir.join(STOP);
    let s = stop.clone();
    let (mut term, mut int) = signals;
    tokio::spawn(async move {
        loop {
            if stop_file.exists() {
                break;
            }
            tokio::select! {
                _ = tokio::time::sleep(POLL) => {}
                _ = term.recv() => break,
                _ = int.recv() => break,
            }
        }
        tracing::info!("stop requested");
        s.cancel();
    });
    let (tx, mut rx) = mpsc::channel::<Vec<u8>>(64);
    let spool_path = dir.join(SPOOL);
    let writer = tokio::spawn(async move {
        let mut f = OpenOptions::new().create(true).append(true).mode(0o600).open(&spool_path).ok();
        let mut written = 0u64;
        while let Some(chunk) = rx.recv().await {
            let room = SPOOL_CAP.saturating_sub(written) as usize;
            let part = &chunk[..chunk.len().min(room)];
            if part.is_empty() {
                continue;
            }
            if let Some(file) = f.as_mut()
                && file.write_all(part).is_err()
            {
                // Disk full or gone: live output stops; the result still has it.
                f = None;
            }
            written += part.len() as u64;
        }
    });
    let (outcome, script_dir) = super::runner::run_keeping_script(spec, stop, Some(tx)).await;
    let _ = writer.await;
    (outcome, script_dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A stand-in `deckhand-supervise` beside a stand-in agent: a shell
    /// script with `body`, run for real when asked its version.
    fn beside_agent(body: Option<&str>) -> (tempfile::TempDir, PathBuf) {
        use std::os::unix::fs::PermissionsExt;
        let tmp = tempfile::tempdir().expect("tempdir");
        let agent = tmp.path().join("deckhand-agent");
        fs::write(&agent, b"").expect("agent file");
        if let Some(body) = body {
            let path = tmp.path().join(BINARY);
            fs::write(&path, format!("#!/bin/sh\n{body}\n")).expect("script");
            fs::set_permissions(&path, fs::Permissions::from_mode(0o755)).expect("chmod");
        }
        (tmp, agent)
    }

    #[test]
    fn the_supervisor_binary_is_used_only_when_it_says_our_version() {
        let want = version_line("9.9.9");
        let (_t, agent) = beside_agent(Some(&format!("[ \"$1\" = --version ] && echo '{want}'")));
        assert_eq!(pick_program(&agent, &want, ASK_VERSION_WAIT), agent.with_file_name(BINARY));
        // One that leaves a process behind holding its stdout open is
        // still heard, without waiting for that process: it is still alive
        // when the answer is in.
        let (t, agent) = beside_agent(Some(&format!("echo '{want}'; sleep 30 & echo $! > \"$(dirname \"$0\")/bg.pid\"")));
        assert_eq!(pick_program(&agent, &want, ASK_VERSION_WAIT), agent.with_file_name(BINARY));
        let bg = fs::read_to_string(t.path().join("bg.pid")).expect("bg pid");
        // A zombie (state Z) has ended: only a live process counts.
        let alive = fs::read_to_string(Path::new("/proc").join(bg.trim()).join("stat"))
            .is_ok_and(|st| st.rsplit(')').next().is_some_and(|rest| !rest.trim_start().starts_with('Z')));
        let _ = std::process::Command::new("kill").arg(bg.trim()).status();
        assert!(alive, "the answer waited for the process left behind");
        // Another version, another revision, a failure, a hang, nothing there:
        // the agent's own binary.
        let other = format!("echo '{}'", version_line("9.9.8"));
        let revision = format!("echo '{}'", want.replace(&format!("revision {REVISION}"), &format!("revision {}", REVISION + 1)));
        let failing = format!("echo '{want}'; exit 1");
        for body in [Some(other.as_str()), Some(revision.as_str()), Some(failing.as_str()), Some("exec sleep 30"), None] {
            let (_t, agent) = beside_agent(body);
            assert_eq!(pick_program(&agent, &want, Duration::from_millis(300)), agent, "{body:?}");
        }
    }

    #[test]
    fn run_dir_names_stay_inside_root() {
        let root = Path::new("/r");
        assert_eq!(run_dir(root, "t-abc_1", 3).unwrap(), Path::new("/r/t-abc_1.3"));
        assert_eq!(run_dir(root, "../x", 0).unwrap(), Path::new("/r/x2e2e2f78.0"));
        assert_eq!(run_dir(root, "", 0).unwrap(), Path::new("/r/x.0"));
        assert!(matches!(run_dir(root, &"a".repeat(65), 0), Err(SuperviseError::IdTooLong(65))));
    }

    #[test]
    fn spec_round_trips() {
        let mut s = RunSpec::new("t-1", CommandType::RunShellScript, "echo hi");
        s.timeout = Duration::from_millis(1500);
        s.env = vec![("A".into(), "b".into())];
        let back: RunSpec = serde_json::from_slice::<StoredSpec>(&serde_json::to_vec(&StoredSpec::from(&s)).unwrap()).unwrap().into();
        assert_eq!(
            (back.invoke_id.as_str(), back.script.as_str(), back.timeout, back.env.clone()),
            ("t-1", "echo hi", s.timeout, s.env.clone())
        );
    }

    #[test]
    fn never_ran_vanished_and_finished_are_told_apart() {
        let d = tempfile::tempdir().unwrap();
        let dir = d.path().join("t-1.0");
        private_dir(&dir).unwrap();
        assert!(matches!(inspect(&dir), Some(Watched::NeverRan)));
        write_atomic(&dir, RAN, b"1\n").unwrap();
        assert!(matches!(inspect(&dir), Some(Watched::Vanished)));
        // A held lock means a live supervisor: nothing to say yet.
        let held = open_lock(&dir).unwrap();
        assert!(try_lock(&held));
        assert!(inspect(&dir).is_none());
        drop(held);
        let o = RunOutcome {
            output: b"done\n".to_vec(),
            exit_code: Some(0),
            termination: Termination::Exited,
            ..RunOutcome::failed(Utc::now(), "", "")
        };
        write_atomic(&dir, RESULT, &serde_json::to_vec(&StoredOutcome::from(&o)).unwrap()).unwrap();
        match inspect(&dir) {
            Some(Watched::Finished(o)) => assert_eq!((o.output.as_slice(), o.exit_code), (&b"done\n"[..], Some(0))),
            other => panic!("{other:?}"),
        }
        write_atomic(&dir, RESULT, b"{not json").unwrap();
        match inspect(&dir) {
            Some(Watched::Finished(o)) => assert_eq!(o.error_code, codes::EXECUTION_EXCEPTION),
            other => panic!("{other:?}"),
        }
    }
}
