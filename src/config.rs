//! What the agent's and the hub's TOML configuration have in common: the
//! error type, loading a file with unknown keys refused, finding the file,
//! and setting up logging from it.

use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("{key}: {message}")]
    Invalid { key: &'static str, message: String },
}

/// A numeric setting: `value`, else `default`, refused outside `range`
/// with an error naming the key and the range.
pub fn in_range<T>(key: &'static str, value: Option<T>, default: T, range: std::ops::RangeInclusive<T>) -> Result<T, ConfigError>
where
    T: PartialOrd + Copy + std::fmt::Display,
{
    let v = value.unwrap_or(default);
    if !range.contains(&v) {
        return Err(ConfigError::Invalid { key, message: format!("{v} is outside {}..={}", range.start(), range.end()) });
    }
    Ok(v)
}

/// Parses a TOML file; the types use `deny_unknown_fields`, so a misspelt
/// key is an error naming it.
pub fn load<T: DeserializeOwned>(path: &Path) -> Result<T, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.into(), source })?;
    toml::from_str(&text).map_err(|e| ConfigError::Parse { path: path.into(), message: e.to_string() })
}

/// The file named by `explicit`, else `default_path` if it exists, else
/// all defaults.
pub fn discover<T: DeserializeOwned + Default>(explicit: Option<&Path>, default_path: &str) -> Result<T, ConfigError> {
    match explicit {
        Some(p) => load(p),
        None if Path::new(default_path).exists() => load(Path::new(default_path)),
        None => Ok(T::default()),
    }
}

/// Structured logs to stderr (the journal under systemd); `DECKHAND_LOG`
/// sets the filter (default `info`); JSON lines when asked.
pub fn init_logging(json: bool) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("DECKHAND_LOG").unwrap_or_else(|_| "info".into());
    if json {
        tracing_subscriber::fmt().json().with_env_filter(filter).with_writer(std::io::stderr).init();
    } else {
        tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).init();
    }
    log_panics();
}

/// The daemons' exit: the error's message chain (`{:#}`) for users, never
/// its Debug form — returning `anyhow::Result` from `main` prints Debug,
/// which includes a stack backtrace whenever RUST_BACKTRACE is set.
pub fn exit_code(result: anyhow::Result<()>) -> std::process::ExitCode {
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// Release builds unwind (docs/security.md): a panic ends only the task it
/// happens in (one request, one agent connection, one run), and this hook
/// leaves one log line naming where. The payload is not logged: it may
/// quote untrusted input.
fn log_panics() {
    std::panic::set_hook(Box::new(|info| {
        let location = info.location().map(|l| format!("{}:{}", l.file(), l.line())).unwrap_or_default();
        let thread = std::thread::current().name().unwrap_or("unnamed").to_string();
        tracing::error!(location, thread, "internal error: a task panicked and was ended (a bug; please report it)");
    }));
}

/// Creates `dir` (and missing parents) and leaves it `0700`: a hub's data
/// directory holds outputs and credential hashes no other local user may
/// read. An existing directory is tightened too (an install from 0.1.0 made
/// it 0755).
pub fn private_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
    }
    Ok(())
}

/// Makes the SQLite database at `db` and its `-wal`/`-shm` companions
/// `0600` before the store opens it: SQLite creates a new file with the
/// process umask (0644 under most service managers) and gives the WAL and
/// shared-memory files the database file's mode.
pub fn private_sqlite_files(db: &Path) -> std::io::Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
        std::fs::OpenOptions::new().write(true).create(true).truncate(false).mode(0o600).open(db)?;
        for suffix in ["", "-wal", "-shm", "-journal"] {
            let mut p = db.as_os_str().to_owned();
            p.push(suffix);
            match std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)) {
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                other => other?,
            }
        }
    }
    #[cfg(not(unix))]
    let _ = db;
    Ok(())
}

#[cfg(all(test, unix))]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    fn mode(p: &std::path::Path) -> u32 {
        std::fs::metadata(p).unwrap().permissions().mode() & 0o777
    }

    /// Regression (issue #14): `--data-dir` was created 0755 and hub.db 0644.
    #[test]
    fn data_dir_and_database_are_private_even_when_they_existed() {
        let t = tempfile::tempdir().unwrap();
        let dir = t.path().join("a/b");
        super::private_dir(&dir).unwrap();
        assert_eq!(mode(&dir), 0o700);
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        super::private_dir(&dir).unwrap();
        assert_eq!(mode(&dir), 0o700);
        let db = dir.join("hub.db");
        super::private_sqlite_files(&db).unwrap();
        assert_eq!(mode(&db), 0o600);
        let wal = dir.join("hub.db-wal");
        std::fs::write(&wal, b"").unwrap();
        std::fs::set_permissions(&wal, std::fs::Permissions::from_mode(0o644)).unwrap();
        std::fs::set_permissions(&db, std::fs::Permissions::from_mode(0o644)).unwrap();
        super::private_sqlite_files(&db).unwrap();
        assert_eq!((mode(&db), mode(&wal)), (0o600, 0o600));
    }
}
