//! Secrets at rest: the stored AccessKey secrets are sealed with
//! AES-256-GCM under a key kept outside the store (`secrets_key_file`).
//!
//! The signature schemes are HMACs keyed with the secret, so the hub must
//! be able to recover it (a hash cannot verify a signature); sealing makes
//! a copied database or a PostgreSQL dump useless without the key file.
//! Owns: the key file's format and creation, and the sealed value's format
//! `sealed:v1:<base64(nonce ‖ ciphertext ‖ tag)>`. A value without the
//! prefix is a secret written before sealing was enabled: it is read as is
//! and sealed at the next start (`hub::run`).

use std::io::Read;
use std::path::{Path, PathBuf};

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use ring::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use ring::rand::{SecureRandom, SystemRandom};

/// Prefix of a sealed value (the version lets the format change later).
pub const PREFIX: &str = "sealed:v1:";
/// A key file is 64 hex digits (32 bytes) and an optional newline; anything
/// longer is not read past this.
const MAX_KEY_FILE_BYTES: u64 = 256;
/// A sealed value longer than this is refused before decoding (secrets
/// are 64 characters; the bound only stops a hostile row).
const MAX_SEALED_CHARS: usize = 4096;

#[derive(Debug, thiserror::Error)]
pub enum SealError {
    #[error("secrets key file {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("secrets key file {path} must hold 64 hex digits (32 bytes); {why}")]
    Format { path: PathBuf, why: &'static str },
    #[error("no random source for the secrets key")]
    Random,
    #[error("a stored secret is sealed but this hub has no secrets_key_file")]
    NoKey,
    #[error("a stored secret cannot be opened: {0} (a different secrets_key_file, or a damaged row)")]
    Open(&'static str),
}

/// The sealing key, loaded once at start.
pub struct SecretBox {
    key: LessSafeKey,
    rng: SystemRandom,
}

impl std::fmt::Debug for SecretBox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SecretBox(..)")
    }
}

impl SecretBox {
    fn from_bytes(bytes: &[u8; 32]) -> Result<Self, SealError> {
        // Fails only on a wrong key length, which the type rules out.
        let unbound = UnboundKey::new(&AES_256_GCM, bytes).map_err(|_| SealError::Open("the key was refused"))?;
        Ok(Self { key: LessSafeKey::new(unbound), rng: SystemRandom::new() })
    }

    /// Reads a key file written by [`SecretBox::create_or_load`] (or by an
    /// operator: `openssl rand -hex 32`).
    pub fn load(path: &Path) -> Result<Self, SealError> {
        let io = |source| SealError::Io { path: path.to_path_buf(), source };
        let mut text = String::new();
        std::fs::File::open(path).map_err(io)?.take(MAX_KEY_FILE_BYTES).read_to_string(&mut text).map_err(io)?;
        let format = |why| SealError::Format { path: path.to_path_buf(), why };
        let hex_digits = text.trim();
        if hex_digits.len() != 64 {
            return Err(format("it has another length"));
        }
        let mut bytes = [0u8; 32];
        hex::decode_to_slice(hex_digits, &mut bytes).map_err(|_| format("it has a character that is not a hex digit"))?;
        Self::from_bytes(&bytes)
    }

    /// Loads the key file, or creates it (mode 0600, never overwriting a
    /// file that appeared meanwhile) when it does not exist.
    pub fn create_or_load(path: &Path) -> Result<Self, SealError> {
        if path.exists() {
            return Self::load(path);
        }
        let mut bytes = [0u8; 32];
        SystemRandom::new().fill(&mut bytes).map_err(|_| SealError::Random)?;
        let mut opts = std::fs::OpenOptions::new();
        opts.write(true).create_new(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
        match opts.open(path) {
            Ok(mut f) => {
                use std::io::Write;
                let io = |source| SealError::Io { path: path.to_path_buf(), source };
                f.write_all(format!("{}\n", hex::encode(bytes)).as_bytes()).map_err(io)?;
                f.sync_all().map_err(io)?;
                Self::from_bytes(&bytes)
            }
            // Another hub process created it first: use theirs.
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Self::load(path),
            Err(source) => Err(SealError::Io { path: path.to_path_buf(), source }),
        }
    }

    /// Seals one secret with a fresh random nonce.
    pub fn seal(&self, plain: &str) -> Result<String, SealError> {
        let mut nonce = [0u8; NONCE_LEN];
        self.rng.fill(&mut nonce).map_err(|_| SealError::Random)?;
        let mut buf = plain.as_bytes().to_vec();
        self.key
            .seal_in_place_append_tag(Nonce::assume_unique_for_key(nonce), Aad::from(PREFIX), &mut buf)
            .map_err(|_| SealError::Open("sealing failed"))?;
        let mut out = nonce.to_vec();
        out.extend_from_slice(&buf);
        Ok(format!("{PREFIX}{}", STANDARD.encode(out)))
    }
}

/// The value to store for a new secret: sealed when the hub has a key.
pub fn to_store(sealer: Option<&SecretBox>, plain: &str) -> Result<String, SealError> {
    match sealer {
        Some(b) => b.seal(plain),
        None => Ok(plain.to_string()),
    }
}

/// What [`reseal_stored`] found.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Resealed {
    /// Secrets stored in clear, now sealed.
    pub sealed: usize,
    /// Sealed secrets this key cannot open (another key file): those keys
    /// cannot sign until the right file is restored.
    pub foreign: usize,
}

/// Seals every stored secret written before sealing was enabled, and counts
/// the sealed ones this key cannot open. A row changed meanwhile (by
/// another replica) is left to it.
pub async fn reseal_stored(store: &dyn crate::hub::store::Store, sealer: &SecretBox) -> Result<Resealed, crate::hub::store::StoreError> {
    const PAGE: i64 = 100;
    let mut done = Resealed::default();
    let mut offset = 0;
    loop {
        let (rows, _) = store.list_access_keys(crate::hub::store::Page { offset, limit: PAGE }).await?;
        done.foreign += rows.iter().filter(|k| is_sealed(&k.secret) && open(Some(sealer), &k.secret).is_err()).count();
        for k in rows.iter().filter(|k| !is_sealed(&k.secret)) {
            match sealer.seal(&k.secret) {
                Ok(s) if store.reseal_access_key(&k.key_id, &k.secret, &s).await? => done.sealed += 1,
                Ok(_) => {}
                Err(e) => tracing::warn!(access_key_id = %k.key_id, error = %e, "cannot seal a stored secret"),
            }
        }
        if (rows.len() as i64) < PAGE {
            return Ok(done);
        }
        offset += PAGE;
    }
}

/// Whether a stored value is sealed.
pub fn is_sealed(stored: &str) -> bool {
    stored.starts_with(PREFIX)
}

/// The secret in a stored value: opened when sealed, as is when written
/// before sealing was enabled.
pub fn open(sealer: Option<&SecretBox>, stored: &str) -> Result<String, SealError> {
    let Some(body) = stored.strip_prefix(PREFIX) else { return Ok(stored.to_string()) };
    let sealer = sealer.ok_or(SealError::NoKey)?;
    if body.len() > MAX_SEALED_CHARS {
        return Err(SealError::Open("it is too long"));
    }
    let mut raw = STANDARD.decode(body).map_err(|_| SealError::Open("it is not base64"))?;
    if raw.len() < NONCE_LEN + AES_256_GCM.tag_len() {
        return Err(SealError::Open("it is too short"));
    }
    let mut nonce = [0u8; NONCE_LEN];
    nonce.copy_from_slice(&raw[..NONCE_LEN]);
    let plain = sealer
        .key
        .open_in_place(Nonce::assume_unique_for_key(nonce), Aad::from(PREFIX), &mut raw[NONCE_LEN..])
        .map_err(|_| SealError::Open("authentication failed"))?;
    String::from_utf8(plain.to_vec()).map_err(|_| SealError::Open("it is not UTF-8"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_plain_values_pass() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("secrets.key");
        let b = SecretBox::create_or_load(&p).unwrap();
        let s = b.seal("9a1e-secret").unwrap();
        assert!(is_sealed(&s) && !s.contains("9a1e"));
        assert_ne!(s, b.seal("9a1e-secret").unwrap(), "a fresh nonce each time");
        assert_eq!(open(Some(&b), &s).unwrap(), "9a1e-secret");
        // The same file loads the same key.
        assert_eq!(open(Some(&SecretBox::create_or_load(&p).unwrap()), &s).unwrap(), "9a1e-secret");
        assert_eq!(open(None, "legacy").unwrap(), "legacy");
        assert!(matches!(open(None, &s), Err(SealError::NoKey)));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            assert_eq!(std::fs::metadata(&p).unwrap().permissions().mode() & 0o777, 0o600);
        }
    }

    #[test]
    fn wrong_key_tampering_and_garbage_are_errors() {
        let d = tempfile::tempdir().unwrap();
        let a = SecretBox::create_or_load(&d.path().join("a")).unwrap();
        let b = SecretBox::create_or_load(&d.path().join("b")).unwrap();
        let s = a.seal("x").unwrap();
        assert!(matches!(open(Some(&b), &s), Err(SealError::Open(_))));
        let mut raw = STANDARD.decode(&s[PREFIX.len()..]).unwrap();
        let last = raw.len() - 1;
        raw[last] ^= 1;
        assert!(open(Some(&a), &format!("{PREFIX}{}", STANDARD.encode(raw))).is_err());
        for bad in ["", "!!", "AAAA", &"A".repeat(10_000)] {
            assert!(open(Some(&a), &format!("{PREFIX}{bad}")).is_err(), "{bad:.20}");
        }
    }

    #[test]
    fn key_file_errors_name_the_file() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("k");
        std::fs::write(&p, "abc").unwrap();
        let e = SecretBox::load(&p).unwrap_err().to_string();
        assert!(e.contains("64 hex digits") && e.contains(&p.display().to_string()), "{e}");
        std::fs::write(&p, "z".repeat(64)).unwrap();
        assert!(SecretBox::load(&p).unwrap_err().to_string().contains("not a hex digit"));
        std::fs::write(&p, format!("{}\n", "ab".repeat(32))).unwrap();
        assert!(SecretBox::load(&p).is_ok());
        assert!(SecretBox::load(&d.path().join("missing")).is_err());
    }
}
