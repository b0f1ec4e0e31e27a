//! The private per-run directory holding the script file: created under a
//! root the agent owns, 0700 and owned by the run-as user, removed on drop.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use super::{StartError, codes};

/// Invoke ids longer than this are truncated in the directory name (the
/// random suffix keeps names unique).
const MAX_NAME_ID_CHARS: usize = 64;

/// Default parent of the per-run directories: `/run/deckhand/scripts` for a
/// root agent (tmpfs on systemd hosts: cheap to create and remove, gone after
/// a reboot), else `<temp dir>/deckhand-scripts`.
pub fn default_root() -> PathBuf {
    #[cfg(unix)]
    if nix::unistd::Uid::effective().is_root() && Path::new("/run").is_dir() {
        return PathBuf::from("/run/deckhand/scripts");
    }
    std::env::temp_dir().join("deckhand-scripts")
}

/// Owns the run directory; dropping it removes the directory and its content.
#[derive(Debug)]
pub struct ScriptDir {
    dir: PathBuf,
    script: PathBuf,
}

impl ScriptDir {
    pub fn script(&self) -> &Path {
        &self.script
    }
    #[allow(dead_code)] // used by tests and diagnostics
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Write `content` to `<root>/<id>-<random>/script.<ext>`. `owner` is the
    /// (uid, gid) to hand the directory and file to (Unix; None: keep ours).
    pub fn create(
        root: &Path,
        invoke_id: &str,
        extension: &str,
        content: &str,
        owner: Option<(u32, u32)>,
    ) -> Result<ScriptDir, StartError> {
        let fail = |what: &str, p: &Path, e: std::io::Error| {
            StartError::new(codes::EXECUTION_EXCEPTION, format!("cannot {what} {}: {e}", p.display()))
        };
        prepare_root(root, owner.is_some()).map_err(|e| fail("prepare script root", root, e))?;
        let id: String =
            invoke_id.chars().filter(|c| c.is_ascii_alphanumeric() || *c == '-' || *c == '_').take(MAX_NAME_ID_CHARS).collect();
        let dir = root.join(format!("{}-{:016x}", if id.is_empty() { "run" } else { &id }, rand::random::<u64>()));
        make_private_dir(&dir).map_err(|e| fail("create script directory", &dir, e))?;
        // From here on the guard removes the directory if anything fails.
        let guard = ScriptDir { script: dir.join(format!("script.{extension}")), dir };
        let mut f = new_private_file(&guard.script).map_err(|e| fail("create script file", &guard.script, e))?;
        f.write_all(content.as_bytes()).map_err(|e| fail("write script file", &guard.script, e))?;
        drop(f);
        #[cfg(unix)]
        if let Some((uid, gid)) = owner {
            use nix::unistd::{Gid, Uid, chown};
            for p in [&guard.script, &guard.dir] {
                chown(p.as_path(), Some(Uid::from_raw(uid)), Some(Gid::from_raw(gid))).map_err(|e| fail("hand over", p, e.into()))?;
            }
        }
        #[cfg(not(unix))]
        let _ = owner;
        Ok(guard)
    }
}

impl Drop for ScriptDir {
    fn drop(&mut self) {
        // remove_dir_all does not follow symlinks the script may have planted.
        if let Err(e) = fs::remove_dir_all(&self.dir) {
            tracing::warn!(dir = %self.dir.display(), error = %e, "could not remove script directory");
        }
    }
}

/// The root must be a real directory we own that others cannot write into:
/// in a shared temp dir an attacker could otherwise pre-create it or plant a
/// symlink. We create it 0711 (a run-as user can reach its own 0700 run
/// directory but not list the others). An existing root is never chmodded —
/// it might be `/tmp` itself — only refused with the reason.
#[cfg(unix)]
fn prepare_root(root: &Path, run_as_other: bool) -> std::io::Result<()> {
    use std::os::unix::fs::{DirBuilderExt, MetadataExt};
    match fs::DirBuilder::new().recursive(true).mode(0o711).create(root) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(e),
    }
    let md = fs::symlink_metadata(root)?;
    let me = nix::unistd::Uid::effective().as_raw();
    if !md.file_type().is_dir() || md.uid() != me {
        return Err(std::io::Error::other(format!("must be a directory owned by uid {me} (found owner {}, symlink or file?)", md.uid())));
    }
    if md.mode() & 0o022 != 0 {
        return Err(std::io::Error::other(format!(
            "must not be writable by group or others (mode {:o}); use a private directory",
            md.mode() & 0o7777
        )));
    }
    if run_as_other && md.mode() & 0o001 == 0 {
        return Err(std::io::Error::other(format!(
            "must be searchable by others (mode {:o}, want 0711) to run scripts as another user",
            md.mode() & 0o7777
        )));
    }
    Ok(())
}

#[cfg(not(unix))]
fn prepare_root(root: &Path, _run_as_other: bool) -> std::io::Result<()> {
    fs::create_dir_all(root)
}

#[cfg(unix)]
fn make_private_dir(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    // Not recursive: fails if the name already exists, so we never reuse one.
    fs::DirBuilder::new().mode(0o700).create(dir)
}

#[cfg(not(unix))]
fn make_private_dir(dir: &Path) -> std::io::Result<()> {
    fs::DirBuilder::new().create(dir)
}

fn new_private_file(path: &Path) -> std::io::Result<fs::File> {
    let mut o = fs::OpenOptions::new();
    o.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        o.mode(0o600).custom_flags(nix::libc::O_NOFOLLOW);
    }
    o.open(path)
}

#[cfg(all(test, unix))]
mod tests {
    use super::*;
    use std::os::unix::fs::{MetadataExt, PermissionsExt};

    #[test]
    fn private_dir_is_0700_and_removed_on_drop() {
        let root = tempfile::tempdir().unwrap();
        let r = root.path().join("scripts");
        let d = ScriptDir::create(&r, "t-1/../x", "sh", "echo hi\n", None).unwrap();
        let md = fs::metadata(d.dir()).unwrap();
        assert_eq!(md.mode() & 0o777, 0o700);
        assert_eq!(fs::metadata(&r).unwrap().mode() & 0o777, 0o711);
        assert_eq!(fs::read_to_string(d.script()).unwrap(), "echo hi\n");
        assert!(d.dir().file_name().unwrap().to_str().unwrap().starts_with("t-1x-"));
        let dir = d.dir().to_path_buf();
        drop(d);
        assert!(!dir.exists());
    }

    #[test]
    fn refuses_a_symlinked_root() {
        let root = tempfile::tempdir().unwrap();
        let target = root.path().join("elsewhere");
        fs::create_dir(&target).unwrap();
        let link = root.path().join("scripts");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        let e = ScriptDir::create(&link, "x", "sh", "", None).unwrap_err();
        assert_eq!(e.code, codes::EXECUTION_EXCEPTION);
        assert!(e.info.contains("must be a directory owned by"), "{}", e.info);
    }

    #[test]
    fn refuses_a_world_writable_or_unsearchable_root() {
        let root = tempfile::tempdir().unwrap();
        fs::set_permissions(root.path(), fs::Permissions::from_mode(0o1777)).unwrap();
        let e = ScriptDir::create(root.path(), "x", "sh", "", None).unwrap_err();
        assert!(e.info.contains("writable by group or others"), "{}", e.info);
        assert_eq!(fs::metadata(root.path()).unwrap().mode() & 0o7777, 0o1777, "never chmod an existing root");
        fs::set_permissions(root.path(), fs::Permissions::from_mode(0o700)).unwrap();
        let e = ScriptDir::create(root.path(), "x", "sh", "", Some((65534, 65534))).unwrap_err();
        assert!(e.info.contains("searchable"), "{}", e.info);
        assert!(ScriptDir::create(root.path(), "x", "sh", "", None).is_ok());
    }
}
