//! File deliveries (`SendFile`) on the agent: pulling the content from the
//! hub in chunks and writing it atomically where the invocation says.
//!
//! Owns: the chunk pulls ([`Fetcher`], answered by the connection loop in
//! `agent::mod`), the checks of name, directory, mode and owner (each
//! failure with Cloud Assistant's per-instance code), and the write: a
//! temporary file in the target directory, filled as chunks arrive (the
//! agent never holds more than one chunk), checked against the size and
//! SHA-256, given its mode and owner, `fsync`ed, then renamed over the
//! target and the directory `fsync`ed. A crash at any point leaves the
//! old file or the new one, never a torn one. On Unix every step after
//! opening the directory is relative to that directory's descriptor, a
//! symbolic link is never followed at the target nor in a directory the
//! agent creates, and nothing is written outside `TargetDir`.
//!
//! The invocation is journaled and reported like a run (`runner`); a
//! delivery the agent was doing when it died is done again from the start
//! after the restart (the temporary file is named by the invocation).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use base64::Engine;
use sha2::{Digest, Sha256};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use crate::lifecycle::{ErrorCode, InvocationStatus};
use crate::protocol::{FILE_CHUNK_BYTES, FileSpec, Invocation, MAX_FILE_BYTES, RecordReport};

/// Chunk requests waiting for the connection; beyond this a request is
/// dropped and asked again after [`ASK_AGAIN`].
const REQUEST_QUEUE: usize = 64;
/// A chunk not answered in this time is asked again (the connection loop
/// also asks every outstanding chunk again after a reconnect).
const ASK_AGAIN: Duration = Duration::from_secs(10);
/// Chunks asked for ahead of the one being written (memory: this many
/// chunks of `FILE_CHUNK_BYTES`, well inside the agent's budget).
const PULL_AHEAD: u64 = 4;
/// Longest file name, in bytes (NAME_MAX on Linux filesystems).
const MAX_NAME_BYTES: usize = 255;

type Answer = Result<Vec<u8>, String>;

/// Chunk pulls between file deliveries and the hub connection.
pub struct Fetcher {
    tx: mpsc::Sender<(String, u64)>,
    rx: tokio::sync::Mutex<mpsc::Receiver<(String, u64)>>,
    waiting: Mutex<HashMap<(String, u64), oneshot::Sender<Answer>>>,
}

impl Default for Fetcher {
    fn default() -> Self {
        let (tx, rx) = mpsc::channel(REQUEST_QUEUE);
        Self { tx, rx: tokio::sync::Mutex::new(rx), waiting: Mutex::new(HashMap::new()) }
    }
}

impl Fetcher {
    fn waiting(&self) -> std::sync::MutexGuard<'_, HashMap<(String, u64), oneshot::Sender<Answer>>> {
        self.waiting.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The queue of requests for the connection to send; held by one
    /// connection at a time.
    pub async fn requests(&self) -> tokio::sync::MutexGuard<'_, mpsc::Receiver<(String, u64)>> {
        self.rx.lock().await
    }

    /// Chunks asked for and not answered yet (asked again on a new connection).
    pub fn outstanding(&self) -> Vec<(String, u64)> {
        self.waiting().keys().cloned().collect()
    }

    /// The hub's answer to a request; an answer nobody waits for (a
    /// duplicate, or one for a delivery that ended) is dropped.
    pub fn answered(&self, invoke_id: &str, seq: u64, data_b64: &str, error: &str) {
        let Some(waiter) = self.waiting().remove(&(invoke_id.to_string(), seq)) else { return };
        let answer = if !error.is_empty() {
            Err(error.chars().take(256).collect())
        } else {
            base64::engine::general_purpose::STANDARD.decode(data_b64).map_err(|_| "chunk data is not valid base64".to_string())
        };
        let _ = waiter.send(answer);
    }

    /// Chunk `seq` of `invoke_id`'s content, asking again until answered.
    async fn fetch(&self, invoke_id: &str, seq: u64) -> Answer {
        let key = (invoke_id.to_string(), seq);
        loop {
            let (tx, rx) = oneshot::channel();
            self.waiting().insert(key.clone(), tx);
            // Full or no connection: the wait below times out and asks again.
            let _ = self.tx.try_send(key.clone());
            match tokio::time::timeout(ASK_AGAIN, rx).await {
                Ok(Ok(answer)) => return answer,
                // Replaced by a newer wait for the same chunk: ask again.
                Ok(Err(_)) | Err(_) => continue,
            }
        }
    }

    fn forget(&self, invoke_id: &str) {
        self.waiting().retain(|(id, _), _| id != invoke_id);
    }
}

/// Why a delivery did not complete: the per-instance status, Cloud
/// Assistant's code, and the text shown as `ErrorInfo`.
#[derive(Debug)]
pub struct Failure {
    status: InvocationStatus,
    code: ErrorCode,
    info: String,
}

impl Failure {
    fn invalid(code: ErrorCode, info: impl Into<String>) -> Self {
        Self { status: InvocationStatus::Invalid, code, info: info.into() }
    }

    fn failed(code: ErrorCode, info: impl Into<String>) -> Self {
        Self { status: InvocationStatus::Failed, code, info: info.into() }
    }

    /// An I/O error with no more specific code.
    fn io(what: &str, e: impl std::fmt::Display) -> Self {
        Self::failed(ErrorCode::FileCreateFail, format!("the file creation is failed: {what}: {e}"))
    }
}

/// The file name: one path component (Alibaba: "File name is invalid").
fn check_name(name: &str) -> Result<(), Failure> {
    let bad = name.is_empty()
        || name == "."
        || name == ".."
        || name.len() > MAX_NAME_BYTES
        || name.contains(['/', '\0'])
        || (cfg!(windows) && name.contains(['\\', ':', '*', '?', '"', '<', '>', '|']));
    if bad { Err(Failure::invalid(ErrorCode::FileNameInvalid, "File name is invalid")) } else { Ok(()) }
}

/// The target directory: absolute, no `..`, no NUL ("File path is invalid").
fn check_dir(dir: &str) -> Result<std::path::PathBuf, Failure> {
    let path = std::path::PathBuf::from(dir);
    let bad = dir.contains('\0') || !path.is_absolute() || path.components().any(|c| matches!(c, std::path::Component::ParentDir));
    if bad { Err(Failure::invalid(ErrorCode::FilePathInvalid, "File path is invalid")) } else { Ok(path) }
}

/// `FileMode` as `chmod` takes it: octal, at most `7777`.
fn parse_mode(mode: &str) -> Result<u32, Failure> {
    let digits = mode.trim();
    let ok = !digits.is_empty() && digits.len() <= 5 && digits.bytes().all(|b| (b'0'..=b'7').contains(&b));
    match ok.then(|| u32::from_str_radix(digits, 8).ok()).flatten().filter(|m| *m <= 0o7777) {
        Some(m) => Ok(m),
        None => Err(Failure::invalid(ErrorCode::FileAuthorityInvalid, "Mode is invalid")),
    }
}

/// The temporary file's name: hidden, unique to the invocation, short
/// enough for any file name length.
fn temp_name(invoke_id: &str) -> String {
    let id: String = invoke_id.chars().filter(|c| c.is_ascii_alphanumeric() || *c == '-').take(64).collect();
    format!(".deckhand-{id}.part")
}

/// Delivers one file: the final report of the delivery.
///
/// `rerun`: the delivery is being done again after the agent restarted. If
/// the previous agent had already renamed the file into place, the target
/// holds exactly this content; without `Overwrite` that is this delivery's
/// own file, not `FileAlreadyExists`.
pub async fn deliver(inv: &Invocation, fetcher: &Fetcher, stop: CancellationToken, rerun: bool) -> RecordReport {
    let start = super::runner::now();
    let timeout = Duration::from_secs(inv.timeout_secs.max(1));
    let outcome = tokio::select! {
        r = tokio::time::timeout(timeout, write_file(inv, fetcher, rerun)) => match r {
            Ok(r) => r,
            Err(_) => Err(Failure {
                status: InvocationStatus::Timeout,
                code: ErrorCode::DeliveryTimeout,
                info: format!("the file was not written within the timeout of {} s", inv.timeout_secs),
            }),
        },
        _ = stop.cancelled() => Err(Failure { status: InvocationStatus::Terminated, code: ErrorCode::ExecutionInterrupted, info: "stopped while the file was being written".into() }),
    };
    fetcher.forget(&inv.invoke_id);
    let (status, error_code, error_info) = match outcome {
        Ok(()) => (InvocationStatus::Success, None, String::new()),
        Err(f) => (f.status, Some(f.code), f.info),
    };
    RecordReport {
        invoke_id: inv.invoke_id.clone(),
        record_seq: 0,
        status,
        exit_code: None,
        output_b64: String::new(),
        dropped: 0,
        error_code,
        error_info,
        start_time: start,
        finish_time: super::runner::now(),
    }
}

async fn write_file(inv: &Invocation, fetcher: &Fetcher, rerun: bool) -> Result<(), Failure> {
    let Some(spec) = inv.file.as_deref().cloned() else {
        return Err(Failure::invalid(ErrorCode::FileContentInvalid, "the invocation carries no file"));
    };
    if spec.size > MAX_FILE_BYTES {
        return Err(Failure::invalid(ErrorCode::FileContentInvalid, format!("file of {} bytes; the limit is {MAX_FILE_BYTES}", spec.size)));
    }
    let tmp = temp_name(&inv.invoke_id);
    // Checks, user lookups and directory creation may block (NSS, slow disks).
    let spec2 = spec.clone();
    let tmp2 = tmp.clone();
    let mut open = tokio::task::spawn_blocking(move || os::prepare(&spec2, &tmp2, rerun))
        .await
        .map_err(|e| Failure::io("preparing the target", e))??;
    let filled = fill(&mut open, inv, &spec, fetcher).await;
    // A failure drops (and so removes) the temporary file; a stop or a
    // timeout drops this whole future, with the same effect.
    filled?;
    tokio::task::spawn_blocking(move || open.commit(&spec)).await.map_err(|e| Failure::io("finishing the file", e))?
}

/// Pulls every chunk into the temporary file, checking size and digest.
/// Up to [`PULL_AHEAD`] chunks are asked for at once (a round trip per
/// chunk would bound the rate by the link's latency); they are written in
/// order as they arrive, so at most that many are held.
async fn fill(open: &mut os::Open, inv: &Invocation, spec: &FileSpec, fetcher: &Fetcher) -> Result<(), Failure> {
    use futures_util::StreamExt;
    let mut hasher = Sha256::new();
    let mut written = 0u64;
    let total = spec.chunks();
    let mut next = 0u64;
    let mut pulls = futures_util::stream::FuturesOrdered::new();
    for seq in 0..total {
        while next < total && next < seq + PULL_AHEAD {
            let n = next;
            pulls.push_back(async move { (n, fetcher.fetch(&inv.invoke_id, n).await) });
            next += 1;
        }
        let Some((n, answer)) = pulls.next().await else { break };
        let data = answer.map_err(|e| {
            Failure::failed(ErrorCode::FileContentInvalid, format!("the content of file is invalid: the hub did not send chunk {n}: {e}"))
        })?;
        let expected = (spec.size - n * FILE_CHUNK_BYTES as u64).min(FILE_CHUNK_BYTES as u64);
        if data.len() as u64 != expected {
            return Err(Failure::failed(
                ErrorCode::FileContentInvalid,
                format!("the content of file is invalid: chunk {n} is {} bytes, not {expected}", data.len()),
            ));
        }
        hasher.update(&data);
        open.write(&data).map_err(|e| Failure::io("writing the temporary file", e))?;
        written += data.len() as u64;
    }
    if written != spec.size || hex::encode(hasher.finalize()) != spec.sha256 {
        return Err(Failure::failed(ErrorCode::FileContentInvalid, "the content of file is invalid: its SHA-256 does not match"));
    }
    Ok(())
}

/// Whether `f` holds exactly the content `spec` describes (read in chunks).
fn holds_content(mut f: std::fs::File, spec: &FileSpec) -> bool {
    use std::io::Read;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; FILE_CHUNK_BYTES];
    let mut size = 0u64;
    loop {
        match f.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                hasher.update(&buf[..n]);
                size += n as u64;
                if size > spec.size {
                    return false;
                }
            }
            Err(_) => return false,
        }
    }
    size == spec.size && hex::encode(hasher.finalize()) == spec.sha256
}

#[cfg(unix)]
mod os {
    //! The Unix write: every step relative to the target directory's descriptor.

    use std::fs::File;
    use std::io::Write;
    use std::os::fd::OwnedFd;
    use std::path::{Component, Path};

    use nix::errno::Errno;
    use nix::fcntl::{AtFlags, OFlag, openat};
    use nix::sys::stat::{Mode, SFlag, fchmod, fstatat, mkdirat};
    use nix::unistd::{Gid, Group, Uid, UnlinkatFlags, User, fchown, unlinkat};

    use super::{Failure, check_dir, check_name, parse_mode};
    use crate::lifecycle::ErrorCode;
    use crate::protocol::FileSpec;

    /// The temporary file, open in the opened target directory. Dropped
    /// before it was renamed into place (a failure, a stop, a timeout), it
    /// removes itself.
    pub struct Open {
        dir: OwnedFd,
        file: File,
        tmp: String,
        mode: u32,
        owner: Option<Uid>,
        group: Option<Gid>,
        renamed: bool,
        rerun: bool,
    }

    impl Drop for Open {
        fn drop(&mut self) {
            if !self.renamed {
                let _ = unlinkat(&self.dir, self.tmp.as_str(), UnlinkatFlags::NoRemoveDir);
            }
        }
    }

    fn owner_of(spec: &FileSpec) -> Result<(Option<Uid>, Option<Gid>), Failure> {
        // Empty: the agent's own user and group (root for a root agent,
        // Cloud Assistant's default).
        let owner = match spec.owner.as_str() {
            "" => None,
            name => match User::from_name(name) {
                Ok(Some(u)) => Some(u.uid),
                Ok(None) => return Err(Failure::invalid(ErrorCode::UserGroupNotExists, "Owner not exists")),
                Err(e) => return Err(Failure::io("looking up the owner", e)),
            },
        };
        let group = match spec.group.as_str() {
            "" => None,
            name => match Group::from_name(name) {
                Ok(Some(g)) => Some(g.gid),
                Ok(None) => return Err(Failure::invalid(ErrorCode::UserGroupNotExists, "Group not exists")),
                Err(e) => return Err(Failure::io("looking up the group", e)),
            },
        };
        Ok((owner, group))
    }

    /// Opens `dir`, creating what is missing. Existing directories are
    /// the administrator's layout and may be reached through links (e.g.
    /// `/var/run`); a directory the agent creates is opened with
    /// `O_NOFOLLOW`, so a link planted in its place is refused.
    fn open_dir(dir: &Path) -> Result<OwnedFd, Failure> {
        let flags = OFlag::O_DIRECTORY | OFlag::O_RDONLY | OFlag::O_CLOEXEC;
        let mut fd = nix::fcntl::open("/", flags, Mode::empty()).map_err(|e| Failure::io("opening /", e))?;
        let mut created = false;
        for c in dir.components() {
            let Component::Normal(name) = c else { continue };
            if !created {
                match openat(&fd, name, flags, Mode::empty()) {
                    Ok(next) => {
                        fd = next;
                        continue;
                    }
                    Err(Errno::ENOENT) => created = true,
                    Err(Errno::ENOTDIR) => {
                        return Err(Failure::invalid(ErrorCode::FilePathInvalid, "File path is invalid: a component is not a directory"));
                    }
                    Err(e) => return Err(Failure::io("opening the target directory", e)),
                }
            }
            match mkdirat(&fd, name, Mode::from_bits_truncate(0o755)) {
                Ok(()) | Err(Errno::EEXIST) => {}
                Err(e) => return Err(Failure::io("creating the target directory", e)),
            }
            fd = openat(&fd, name, flags | OFlag::O_NOFOLLOW, Mode::empty()).map_err(|e| match e {
                Errno::ELOOP | Errno::ENOTDIR => Failure::invalid(
                    ErrorCode::FilePathInvalid,
                    "File path is invalid: a symbolic link appeared where a directory was created",
                ),
                e => Failure::io("opening a created directory", e),
            })?;
        }
        Ok(fd)
    }

    pub fn prepare(spec: &FileSpec, tmp: &str, rerun: bool) -> Result<Open, Failure> {
        check_name(&spec.name)?;
        let path = check_dir(&spec.target_dir)?;
        let mode = parse_mode(&spec.mode)?;
        let (owner, group) = owner_of(spec)?;
        let dir = open_dir(&path)?;
        // A leftover from a delivery the agent died in is started over.
        match unlinkat(&dir, tmp, UnlinkatFlags::NoRemoveDir) {
            Ok(()) | Err(Errno::ENOENT) => {}
            Err(e) => return Err(Failure::io("removing a stale temporary file", e)),
        }
        // 0600 until complete: nobody reads a half-written file.
        let flags = OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
        let fd = openat(&dir, tmp, flags, Mode::from_bits_truncate(0o600)).map_err(|e| Failure::io("creating the temporary file", e))?;
        Ok(Open { dir, file: File::from(fd), tmp: tmp.to_string(), mode, owner, group, renamed: false, rerun })
    }

    impl Open {
        pub fn write(&mut self, data: &[u8]) -> std::io::Result<()> {
            self.file.write_all(data)
        }

        /// Checks the target and renames the file into place (removed
        /// instead, by `Drop`, when that fails).
        pub fn commit(mut self, spec: &FileSpec) -> Result<(), Failure> {
            self.finish(spec)
        }

        /// The target is this delivery's file, renamed into place by the
        /// agent that died before reporting.
        fn holds_new_content(&self, spec: &FileSpec) -> bool {
            let flags = OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
            openat(&self.dir, spec.name.as_str(), flags, Mode::empty()).is_ok_and(|fd| super::holds_content(File::from(fd), spec))
        }

        fn finish(&mut self, spec: &FileSpec) -> Result<(), Failure> {
            // Owner before mode: chown clears set-id bits.
            if self.owner.is_some() || self.group.is_some() {
                fchown(&self.file, self.owner, self.group).map_err(|e| {
                    Failure::failed(ErrorCode::FileAuthorityInvalid, format!("the authority of file is invalid: cannot set its owner: {e}"))
                })?;
            }
            fchmod(&self.file, Mode::from_bits_truncate(self.mode)).map_err(|e| {
                Failure::failed(ErrorCode::FileAuthorityInvalid, format!("the authority of file is invalid: cannot set its mode: {e}"))
            })?;
            self.file.sync_all().map_err(|e| Failure::io("flushing the temporary file", e))?;
            let name = spec.name.as_str();
            match fstatat(&self.dir, name, AtFlags::AT_SYMLINK_NOFOLLOW) {
                Ok(st) => {
                    let kind = SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT;
                    if kind == SFlag::S_IFLNK {
                        return Err(Failure::failed(
                            ErrorCode::FileCreateFail,
                            "the file creation is failed: the target is a symbolic link, which deckhand never follows or replaces",
                        ));
                    }
                    if kind == SFlag::S_IFDIR {
                        return Err(Failure::failed(ErrorCode::FileCreateFail, "the file creation is failed: the target is a directory"));
                    }
                    if !spec.overwrite {
                        if self.rerun && self.holds_new_content(spec) {
                            return Ok(());
                        }
                        return Err(Failure::failed(ErrorCode::FileAlreadyExists, "File already exists"));
                    }
                }
                Err(Errno::ENOENT) => {}
                Err(e) => return Err(Failure::io("checking the target", e)),
            }
            rename(&self.dir, &self.tmp, name, spec.overwrite)?;
            self.renamed = true;
            // The rename is durable once the directory is.
            nix::unistd::fsync(&self.dir).map_err(|e| Failure::io("flushing the target directory", e))?;
            Ok(())
        }
    }

    /// Without `Overwrite`, a file that appeared since the check is not
    /// replaced either (Linux: `RENAME_NOREPLACE`).
    fn rename(dir: &OwnedFd, tmp: &str, name: &str, overwrite: bool) -> Result<(), Failure> {
        #[cfg(target_os = "linux")]
        if !overwrite {
            return match nix::fcntl::renameat2(dir, tmp, dir, name, nix::fcntl::RenameFlags::RENAME_NOREPLACE) {
                Ok(()) => Ok(()),
                Err(Errno::EEXIST) => Err(Failure::failed(ErrorCode::FileAlreadyExists, "File already exists")),
                Err(e) => Err(Failure::io("renaming the temporary file", e)),
            };
        }
        let _ = overwrite;
        nix::fcntl::renameat(dir, tmp, dir, name).map_err(|e| Failure::io("renaming the temporary file", e))
    }
}

#[cfg(not(unix))]
mod os {
    //! Elsewhere (Windows): the same temporary file and rename through the
    //! standard library. `FileMode`, `FileOwner` and `FileGroup` take
    //! effect only on Linux, as in Cloud Assistant.

    use std::fs::{File, OpenOptions};
    use std::io::Write;
    use std::path::PathBuf;

    use super::{Failure, check_dir, check_name, parse_mode};
    use crate::lifecycle::ErrorCode;
    use crate::protocol::FileSpec;

    /// Removes the temporary file when dropped before the rename.
    pub struct Open {
        dir: PathBuf,
        file: Option<File>,
        tmp: PathBuf,
        renamed: bool,
        rerun: bool,
    }

    impl Drop for Open {
        fn drop(&mut self) {
            self.file.take();
            if !self.renamed {
                let _ = std::fs::remove_file(&self.tmp);
            }
        }
    }

    pub fn prepare(spec: &FileSpec, tmp: &str, rerun: bool) -> Result<Open, Failure> {
        check_name(&spec.name)?;
        let dir = check_dir(&spec.target_dir)?;
        parse_mode(&spec.mode)?;
        std::fs::create_dir_all(&dir).map_err(|e| Failure::io("creating the target directory", e))?;
        let tmp = dir.join(tmp);
        let _ = std::fs::remove_file(&tmp);
        let file = OpenOptions::new().write(true).create_new(true).open(&tmp).map_err(|e| Failure::io("creating the temporary file", e))?;
        Ok(Open { dir, file: Some(file), tmp, renamed: false, rerun })
    }

    impl Open {
        pub fn write(&mut self, data: &[u8]) -> std::io::Result<()> {
            match &mut self.file {
                Some(f) => f.write_all(data),
                None => Err(std::io::Error::other("the temporary file is closed")),
            }
        }

        pub fn commit(mut self, spec: &FileSpec) -> Result<(), Failure> {
            let target = self.dir.join(&spec.name);
            // Closed before the rename: Windows does not rename an open file.
            let file = self.file.take().ok_or_else(|| Failure::io("flushing the temporary file", "already closed"))?;
            file.sync_all().map_err(|e| Failure::io("flushing the temporary file", e))?;
            drop(file);
            match std::fs::symlink_metadata(&target) {
                Ok(m) if m.file_type().is_symlink() => {
                    return Err(Failure::failed(
                        ErrorCode::FileCreateFail,
                        "the file creation is failed: the target is a symbolic link, which deckhand never follows or replaces",
                    ));
                }
                Ok(m) if m.is_dir() => {
                    return Err(Failure::failed(ErrorCode::FileCreateFail, "the file creation is failed: the target is a directory"));
                }
                Ok(_) if !spec.overwrite => {
                    // The previous agent renamed it into place, then died.
                    if self.rerun && File::open(&target).is_ok_and(|f| super::holds_content(f, spec)) {
                        return Ok(());
                    }
                    return Err(Failure::failed(ErrorCode::FileAlreadyExists, "File already exists"));
                }
                _ => {}
            }
            std::fs::rename(&self.tmp, &target).map_err(|e| Failure::io("renaming the temporary file", e))?;
            self.renamed = true;
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_paths_and_modes_are_checked_with_alibabas_codes() {
        for bad in ["", ".", "..", "a/b", "a\0b", &"x".repeat(256)] {
            assert_eq!(check_name(bad).unwrap_err().code, ErrorCode::FileNameInvalid, "{bad:?}");
        }
        check_name("app.conf").unwrap();
        for bad in ["relative/dir", "/etc/../root", "/tmp/\0x"] {
            assert_eq!(check_dir(bad).unwrap_err().code, ErrorCode::FilePathInvalid, "{bad:?}");
        }
        assert_eq!(parse_mode("0644").unwrap(), 0o644);
        assert_eq!(parse_mode("755").unwrap(), 0o755);
        for bad in ["", "0999", "abc", "77777", "-1"] {
            assert_eq!(parse_mode(bad).unwrap_err().code, ErrorCode::FileAuthorityInvalid, "{bad:?}");
        }
        assert_eq!(temp_name("f-1/../x"), ".deckhand-f-1x.part");
    }

    fn spec_for(dir: &std::path::Path, data: &[u8], overwrite: bool) -> FileSpec {
        FileSpec {
            name: "f.bin".into(),
            target_dir: dir.display().to_string(),
            mode: "0640".into(),
            owner: String::new(),
            group: String::new(),
            overwrite,
            size: data.len() as u64,
            sha256: hex::encode(Sha256::digest(data)),
        }
    }

    fn write(spec: &FileSpec, data: &[u8], rerun: bool) -> Result<(), Failure> {
        let mut open = os::prepare(spec, ".deckhand-f-1.part", rerun)?;
        open.write(data).unwrap();
        open.commit(spec)
    }

    /// The write path itself: created directories, the rename, no temporary
    /// file left, `FileAlreadyExists` unless this is a re-run that finds its
    /// own content in place, a dropped write leaving nothing.
    #[test]
    fn atomic_write_and_reruns() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("a/b");
        let spec = spec_for(&dir, b"new", false);
        write(&spec, b"new", false).unwrap();
        assert_eq!(std::fs::read(dir.join("f.bin")).unwrap(), b"new");
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 1, "no temporary file left");
        assert_eq!(write(&spec, b"new", false).unwrap_err().code, ErrorCode::FileAlreadyExists);
        write(&spec, b"new", true).unwrap();
        let other = spec_for(&dir, b"other", false);
        assert_eq!(write(&other, b"other", true).unwrap_err().code, ErrorCode::FileAlreadyExists, "someone else's file");
        assert_eq!(std::fs::read(dir.join("f.bin")).unwrap(), b"new");
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 1);
        drop(os::prepare(&spec_for(&dir, b"x", true), ".deckhand-f-2.part", false).unwrap());
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 1, "a dropped write removes its temporary file");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            assert_eq!(std::fs::metadata(dir.join("f.bin")).unwrap().permissions().mode() & 0o7777, 0o640);
            std::os::unix::fs::symlink(root.path().join("victim"), dir.join("link")).unwrap();
            let mut link = spec_for(&dir, b"y", true);
            link.name = "link".into();
            assert_eq!(write(&link, b"y", false).unwrap_err().code, ErrorCode::FileCreateFail);
            assert!(!root.path().join("victim").exists(), "nothing written through the link");
        }
    }
}
