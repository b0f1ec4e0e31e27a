//! Who this agent is: its credential file (instance id + token, 0600) and
//! the host facts it reports.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::protocol::HostFacts;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Identity {
    pub instance_id: String,
    pub token: String,
    pub hub: String,
}

#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error("cannot read {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{path} is not a valid identity file: {source}")]
    Parse { path: PathBuf, source: serde_json::Error },
    #[error("cannot encode the identity for {path}: {source}")]
    Encode { path: PathBuf, source: serde_json::Error },
    #[error("cannot write {path}: {0}", path = .0)]
    Write(#[from] crate::tls::TlsError),
}

pub fn identity_path(state_dir: &Path) -> PathBuf {
    state_dir.join("identity.json")
}

pub fn load(state_dir: &Path) -> Result<Option<Identity>, IdentityError> {
    let path = identity_path(state_dir);
    match std::fs::read(&path) {
        Ok(bytes) => serde_json::from_slice(&bytes).map(Some).map_err(|source| IdentityError::Parse { path, source }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(IdentityError::Read { path, source }),
    }
}

/// Written 0600 and atomically (temp + rename), so a crash never leaves a
/// half-written credential.
pub fn save(state_dir: &Path, id: &Identity) -> Result<(), IdentityError> {
    let path = identity_path(state_dir);
    let tmp = path.with_extension("json.tmp");
    let body = serde_json::to_string_pretty(id).map_err(|source| IdentityError::Encode { path: path.clone(), source })?;
    crate::tls::write_private(&tmp, body.as_bytes(), 0o600)?;
    std::fs::rename(&tmp, &path).map_err(|source| IdentityError::Read { path: path.clone(), source })?;
    Ok(())
}

/// Marks the version slot inside the binary.
pub const VERSION_SLOT_PREFIX: &[u8] = b"DECKHAND_AGENT_VERSION=";
/// Bytes of the whole slot (prefix, version, NUL padding).
pub const VERSION_SLOT_BYTES: usize = 80;

const fn version_slot() -> [u8; VERSION_SLOT_BYTES] {
    let mut slot = [0u8; VERSION_SLOT_BYTES];
    let v = env!("CARGO_PKG_VERSION").as_bytes();
    let mut i = 0;
    while i < VERSION_SLOT_PREFIX.len() {
        slot[i] = VERSION_SLOT_PREFIX[i];
        i += 1;
    }
    let mut j = 0;
    while j < v.len() && i + j < VERSION_SLOT_BYTES {
        slot[i + j] = v[j];
        j += 1;
    }
    slot
}

/// The version this binary reports, kept in one fixed-size slot of the
/// binary rather than folded into the code: a build is identified by its
/// bytes, and the self-update tests make "version N+1" by rewriting the
/// slot in a copy of this binary (tests/e2e_update.rs).
#[used]
static VERSION_SLOT: [u8; VERSION_SLOT_BYTES] = version_slot();

pub fn agent_version() -> String {
    // black_box: read the bytes in the binary, not a compile-time copy.
    let slot = std::hint::black_box(&VERSION_SLOT);
    let v = slot.get(VERSION_SLOT_PREFIX.len()..).unwrap_or_default();
    let end = v.iter().position(|&b| b == 0).unwrap_or(v.len());
    String::from_utf8_lossy(v.get(..end).unwrap_or_default()).into_owned()
}

/// Host facts via sysinfo; cheap enough to call once per connection.
pub fn host_facts() -> HostFacts {
    use sysinfo::{MemoryRefreshKind, RefreshKind, System};
    let sys = System::new_with_specifics(RefreshKind::nothing().with_memory(MemoryRefreshKind::nothing().with_ram()));
    HostFacts {
        hostname: System::host_name().unwrap_or_default(),
        os_type: std::env::consts::OS.to_string(),
        os_name: System::long_os_version().unwrap_or_default(),
        kernel: System::kernel_version().unwrap_or_default(),
        arch: System::cpu_arch(),
        cpu_count: std::thread::available_parallelism().map(|n| n.get() as u32).unwrap_or(1),
        memory_bytes: sys.map(|s| s.total_memory()).unwrap_or(0),
        agent_version: agent_version(),
        boot_id: boot_id(),
        journal_degraded: None,
        self_update: true,
        fire_grants: true,
    }
}

/// Linux boot id; elsewhere the boot time, which also changes per boot.
///
/// `DECKHAND_TEST_BOOT_ID` replaces it: a reboot is the one boundary the
/// reboot-triggered tests cannot cross for real, so they stand in a boot id.
pub fn boot_id() -> String {
    if let Ok(id) = std::env::var("DECKHAND_TEST_BOOT_ID") {
        return id;
    }
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| sysinfo::System::boot_time().map(|t| t.to_string()).unwrap_or_default())
}
