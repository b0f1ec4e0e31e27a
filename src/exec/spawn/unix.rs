//! Unix start: resolve account, directory, environment and interpreter in
//! the parent, write the script, then fork with a `pre_exec` that only makes
//! raw syscalls: `setsid`, `oom_score_adj = 0`, `setgroups`, `setgid`,
//! `setuid`, `chdir` — in that order, so the directory is entered with the
//! run-as user's permissions.

use std::ffi::CString;
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use nix::libc;

use super::{super::env, super::interpreter, super::kill::ProcessGroup, super::scriptfile, super::user, Started};
use crate::exec::{RunSpec, StartError, codes};

pub(crate) fn start(spec: &RunSpec) -> Result<Started, StartError> {
    let interp = interpreter::resolve_interpreter(spec.command_type, &spec.script)?;
    let account = user::resolve(spec.username.as_deref())?;
    env::validate(&spec.env)?;
    let cwd = working_dir(spec.working_dir.as_deref(), &account.home)?;
    let root = spec.script_root.clone().unwrap_or_else(scriptfile::default_root);
    let owner = account.switch.then_some((account.uid, account.gid));
    let script_dir = scriptfile::ScriptDir::create(&root, &spec.invoke_id, interp.extension, &spec.script, owner)?;

    let io_err = |what: &str, e: std::io::Error| StartError::new(codes::EXECUTION_EXCEPTION, format!("{what}: {e}"));
    // One pipe for stdout and stderr: the kept output shows them in the order
    // they were written, and there is only one reader to keep draining.
    let (reader, writer) = std::io::pipe().map_err(|e| io_err("cannot create output pipe", e))?;
    let writer2 = writer.try_clone().map_err(|e| io_err("cannot duplicate output pipe", e))?;

    let identity = env::Identity { user: &account.name, home: &account.home, shell: &account.shell };
    let mut cmd = std::process::Command::new(&interp.program);
    cmd.args(interp.argv(script_dir.script()))
        .env_clear()
        .envs(env::unix(&identity, &cwd, &spec.invoke_id, &spec.env))
        .stdin(Stdio::null())
        .stdout(writer)
        .stderr(writer2);

    // Everything the child needs is allocated here, in the parent.
    let cwd_c =
        CString::new(cwd.as_os_str().as_bytes()).map_err(|_| StartError::new(codes::DIRECTORY_NOT_EXISTS, "WorkingDir contains NUL"))?;
    let switch = account.switch;
    let (uid, gid) = (account.uid, account.gid);
    let groups: Vec<libc::gid_t> = account.groups.clone();
    // SAFETY: the closure runs between fork and exec and only calls
    // async-signal-safe libc functions on data prepared above.
    unsafe {
        cmd.pre_exec(move || {
            if libc::setsid() < 0 {
                return Err(std::io::Error::last_os_error());
            }
            // Children must be OOM-killable even if the agent protects itself
            // with a negative score; failure (no /proc) is harmless.
            let fd = libc::open(c"/proc/self/oom_score_adj".as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
            if fd >= 0 {
                let _ = libc::write(fd, b"0".as_ptr().cast(), 1);
                libc::close(fd);
            }
            // Scripts get the conventional umask whatever the agent's own
            // (a restrictive service UMask would make every file they create private).
            libc::umask(0o022);
            // Groups and gid first: after setuid we no longer may change them.
            if switch && (libc::setgroups(groups.len() as _, groups.as_ptr()) < 0 || libc::setgid(gid) < 0 || libc::setuid(uid) < 0) {
                return Err(std::io::Error::last_os_error());
            }
            if libc::chdir(cwd_c.as_ptr()) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut cmd = tokio::process::Command::from(cmd);
    cmd.kill_on_drop(true);
    let spawned = cmd.spawn();
    // Drop our copies of the pipe's write end now, or EOF would never come.
    drop(cmd);
    let child = spawned.map_err(|e| {
        StartError::new(
            codes::EXECUTION_EXCEPTION,
            format!("cannot start {} as {:?} in {}: {e}", interp.program.display(), account.name, cwd.display()),
        )
    })?;
    let pgid = child.id().ok_or_else(|| StartError::new(codes::EXECUTION_EXCEPTION, "child exited before its pid was read"))?;
    let output =
        tokio::net::unix::pipe::Receiver::from_owned_fd(OwnedFd::from(reader)).map_err(|e| io_err("cannot register output pipe", e))?;
    Ok(Started { child, outputs: vec![Box::pin(output)], group: Box::new(ProcessGroup::new(pgid)), script_dir })
}

/// Explicit WorkingDir must be an absolute, existing directory; the default
/// is the user's home, or `/` when the account has no home on disk.
fn working_dir(requested: Option<&Path>, home: &Path) -> Result<PathBuf, StartError> {
    match requested.filter(|p| !p.as_os_str().is_empty()) {
        Some(d) => {
            if !d.is_absolute() {
                return Err(StartError::new(codes::DIRECTORY_NOT_EXISTS, format!("WorkingDir {} must be an absolute path", d.display())));
            }
            if !d.is_dir() {
                return Err(StartError::new(
                    codes::DIRECTORY_NOT_EXISTS,
                    format!("WorkingDir {} does not exist or is not a directory", d.display()),
                ));
            }
            Ok(d.to_path_buf())
        }
        None if home.is_dir() => Ok(home.to_path_buf()),
        None => {
            tracing::info!(home = %home.display(), "run-as user's home does not exist; running in /");
            Ok(PathBuf::from("/"))
        }
    }
}
