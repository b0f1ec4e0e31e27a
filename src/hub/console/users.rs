//! Who may sign in to the console: users configured on the hub (argon2id
//! password hashes in PHC form), each bound to an AccessKey's permissions
//! or given full access, and AccessKey pairs themselves. Also makes the
//! hashes operators put in hub.toml (`deckhand-hub console-password-hash`).

use std::time::Duration;

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use serde::{Deserialize, Serialize};

use super::ConsoleError;

/// Longest user name; names are letters, digits and `._@-`.
pub const MAX_NAME_CHARS: usize = 64;
/// Longest password accepted at sign-in (argon2 takes any length; this
/// bounds the work one request can ask for).
pub const MAX_PASSWORD_BYTES: usize = 1024;
/// Most console users in hub.toml.
pub const MAX_USERS: usize = 1000;

/// One `[[console.users]]` entry of hub.toml.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct UserFile {
    pub name: String,
    /// `$argon2id$v=19$…` as printed by `deckhand-hub console-password-hash`.
    pub password_hash: String,
    /// The AccessKey whose permissions this user has (its policy, if a
    /// stored key; full access if a hub.toml key). Absent: full access.
    pub access_key_id: Option<String>,
}

/// The `[console]` table of hub.toml.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ConsoleFile {
    /// Serve `/console/` (default true).
    pub enabled: Option<bool>,
    /// Allow signing in with an AccessKey pair (default true).
    pub access_key_sign_in: Option<bool>,
    /// A session ends this many minutes after sign-in (5..=10080, default 480).
    pub session_minutes: Option<u64>,
    /// …or after this many idle minutes (1..=1440, default 30).
    pub idle_minutes: Option<u64>,
    pub users: Option<Vec<UserFile>>,
}

/// A configured console user, its hash already parsed once.
#[derive(Debug, Clone, PartialEq)]
pub struct User {
    pub name: String,
    pub password_hash: String,
    pub access_key_id: Option<String>,
}

/// The console's resolved settings (part of `HubConfig`).
#[derive(Debug, Clone, PartialEq)]
pub struct ConsoleConfig {
    pub enabled: bool,
    pub access_key_sign_in: bool,
    pub session_ttl: Duration,
    pub idle_timeout: Duration,
    pub users: Vec<User>,
}

impl Default for ConsoleConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            access_key_sign_in: true,
            session_ttl: Duration::from_secs(480 * 60),
            idle_timeout: Duration::from_secs(30 * 60),
            users: Vec::new(),
        }
    }
}

fn valid_name(n: &str) -> bool {
    !n.is_empty() && n.chars().count() <= MAX_NAME_CHARS && n.chars().all(|c| c.is_ascii_alphanumeric() || "._@-".contains(c))
}

impl ConsoleFile {
    /// Checks every bound and hash; the error names the key.
    pub fn resolve(&self) -> Result<ConsoleConfig, ConsoleError> {
        let mut c = ConsoleConfig { enabled: self.enabled.unwrap_or(true), ..Default::default() };
        c.access_key_sign_in = self.access_key_sign_in.unwrap_or(true);
        let minutes = self.session_minutes.unwrap_or(480);
        if !(5..=10_080).contains(&minutes) {
            return Err(ConsoleError::Config { key: "console.session_minutes", message: format!("{minutes} is outside 5..=10080") });
        }
        c.session_ttl = Duration::from_secs(minutes * 60);
        let idle = self.idle_minutes.unwrap_or(30);
        if !(1..=1440).contains(&idle) {
            return Err(ConsoleError::Config { key: "console.idle_minutes", message: format!("{idle} is outside 1..=1440") });
        }
        c.idle_timeout = Duration::from_secs(idle * 60);
        let users = self.users.as_deref().unwrap_or_default();
        if users.len() > MAX_USERS {
            return Err(ConsoleError::Config { key: "console.users", message: format!("{} users, the limit is {MAX_USERS}", users.len()) });
        }
        for u in users {
            if !valid_name(&u.name) {
                return Err(ConsoleError::Config {
                    key: "console.users.name",
                    message: format!("{:?} is not 1..={MAX_NAME_CHARS} letters, digits or ._@-", u.name),
                });
            }
            if c.users.iter().any(|x: &User| x.name == u.name) {
                return Err(ConsoleError::Config { key: "console.users.name", message: format!("{:?} appears twice", u.name) });
            }
            if PasswordHash::new(&u.password_hash).is_err() {
                return Err(ConsoleError::Config {
                    key: "console.users.password_hash",
                    message: format!("user {:?}: not a PHC hash (make one with `deckhand-hub console-password-hash`)", u.name),
                });
            }
            c.users.push(User { name: u.name.clone(), password_hash: u.password_hash.clone(), access_key_id: u.access_key_id.clone() });
        }
        Ok(c)
    }
}

/// An argon2id hash of `password` with a random salt, in PHC form.
pub fn hash_password(password: &str) -> Result<String, ConsoleError> {
    let salt_bytes: [u8; 16] = rand::random();
    let salt = SaltString::encode_b64(&salt_bytes).map_err(|e| ConsoleError::Hash(e.to_string()))?;
    argon2::Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| ConsoleError::Hash(e.to_string()))
}

/// A hash no password matches, verified for unknown user names so that a
/// wrong name takes as long as a wrong password (no user enumeration by
/// timing). Made once per process.
fn decoy_hash() -> &'static str {
    static DECOY: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    DECOY.get_or_init(|| hash_password(&uuid::Uuid::new_v4().to_string()).unwrap_or_default())
}

/// Whether `password` is `user`'s. CPU-heavy (argon2): call on a blocking thread.
pub fn verify(users: &[User], name: &str, password: &str) -> Option<User> {
    let user = users.iter().find(|u| u.name == name);
    let hash: &str = match user {
        Some(u) => &u.password_hash,
        None => decoy_hash(),
    };
    let ok = PasswordHash::new(hash).is_ok_and(|h| argon2::Argon2::default().verify_password(password.as_bytes(), &h).is_ok());
    user.filter(|_| ok).cloned()
}

/// Equality that takes the same time wherever the first difference is
/// (AccessKey secrets at sign-in).
pub fn same_secret(a: &str, b: &str) -> bool {
    use sha2::Digest;
    let (x, y) = (sha2::Sha256::digest(a.as_bytes()), sha2::Sha256::digest(b.as_bytes()));
    x.iter().zip(y.iter()).fold(0u8, |acc, (p, q)| acc | (p ^ q)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_verifies_its_password_only() {
        let h = hash_password("correct horse").unwrap();
        assert!(h.starts_with("$argon2id$"), "{h}");
        let users = vec![User { name: "alice".into(), password_hash: h, access_key_id: None }];
        assert!(verify(&users, "alice", "correct horse").is_some());
        assert!(verify(&users, "alice", "wrong").is_none());
        assert!(verify(&users, "bob", "correct horse").is_none());
        assert!(same_secret("abc", "abc") && !same_secret("abc", "abd"));
    }

    #[test]
    fn config_names_the_bad_key() {
        let f = ConsoleFile { users: Some(vec![UserFile { name: "a b".into(), ..Default::default() }]), ..Default::default() };
        assert!(f.resolve().unwrap_err().to_string().starts_with("console.users.name"));
        let f = ConsoleFile {
            users: Some(vec![UserFile { name: "ab".into(), password_hash: "plain".into(), ..Default::default() }]),
            ..Default::default()
        };
        assert!(f.resolve().unwrap_err().to_string().starts_with("console.users.password_hash"));
        let f = ConsoleFile { idle_minutes: Some(0), ..Default::default() };
        assert!(f.resolve().unwrap_err().to_string().starts_with("console.idle_minutes"));
        assert_eq!(ConsoleFile::default().resolve().unwrap(), ConsoleConfig::default());
    }
}
