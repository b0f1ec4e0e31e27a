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
}
