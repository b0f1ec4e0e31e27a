//! Run-as account resolution (Unix): name → uid, gid, supplementary groups,
//! home and shell, all looked up in the parent so the forked child only makes
//! raw syscalls (NSS lookups are not async-signal-safe).

use std::ffi::CString;
use std::path::PathBuf;

use nix::unistd::{Gid, Uid, User, getgrouplist};

use super::{StartError, codes};

/// Longest user name we look up (Linux `LOGIN_NAME_MAX` is 256).
const MAX_USERNAME_BYTES: usize = 256;
/// Bound on supplementary groups carried into the child (Linux `NGROUPS_MAX` is 65536).
const MAX_GROUPS: usize = 65536;

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Account {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
    pub home: PathBuf,
    pub shell: PathBuf,
    /// Supplementary groups (from `getgrouplist`), for `setgroups` in the child.
    pub groups: Vec<u32>,
    /// False when the account is the agent's own: no identity change needed.
    pub switch: bool,
}

/// Accounts remembered between runs (issue #21: every run read and parsed
/// /etc/passwd and /etc/group). An entry is dropped when either file
/// changes (size, mtime or inode) and after [`CACHE_TTL`] in any case, for
/// accounts that come from NSS sources other than the files.
const CACHE_TTL: std::time::Duration = std::time::Duration::from_secs(60);
/// Most accounts remembered; beyond it the cache starts over.
const CACHE_MAX: usize = 64;

/// What identifies the files' current contents.
type Stamp = [(u64, i64, i64, u64); 2];

/// An account the agent resolved, handed to a run's supervisor in its
/// spec (issue #21): a supervisor is a new process with an empty cache,
/// and looking the account up again cost every supervised run a read of
/// the NSS configuration, /etc/passwd and /etc/group. Taken only while the
/// account files are as they were when it was resolved.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Handed {
    username: Option<String>,
    stamp: Stamp,
    account: Account,
}

/// `username`'s account as [`resolve`] gives it, to hand to a supervisor;
/// `None` when it does not resolve (the supervisor then reports why).
pub fn hand(username: Option<&str>) -> Option<Handed> {
    let (account, stamp) = resolve_stamped(username).ok()?;
    Some(Handed { username: cache_key(username), stamp, account })
}

/// Primes this process's cache with a handed account, if the account
/// files are unchanged since it was resolved; [`resolve`] then answers
/// from it.
pub fn take_handed(h: Handed) {
    let now = stamp();
    if h.stamp != now {
        return;
    }
    let mut guard = CACHE.lock().unwrap_or_else(|e| e.into_inner());
    current(&mut guard, now).entries.insert(h.username, (std::time::Instant::now(), h.account));
}

/// The cache for the account files as `now` stamps them: started over
/// when they changed, or when it is full.
fn current(guard: &mut Option<Cache>, now: Stamp) -> &mut Cache {
    let cache = guard.get_or_insert_with(|| Cache { stamp: now, entries: Default::default() });
    if cache.stamp != now || cache.entries.len() >= CACHE_MAX {
        *cache = Cache { stamp: now, entries: Default::default() };
    }
    cache
}

fn stamp() -> Stamp {
    use std::os::unix::fs::MetadataExt;
    ["/etc/passwd", "/etc/group"].map(|p| std::fs::metadata(p).map(|m| (m.size(), m.mtime(), m.mtime_nsec(), m.ino())).unwrap_or_default())
}

struct Cache {
    stamp: Stamp,
    entries: std::collections::HashMap<Option<String>, (std::time::Instant, Account)>,
}

static CACHE: std::sync::Mutex<Option<Cache>> = std::sync::Mutex::new(None);

/// Resolve `username` (None: the agent's own user), from the cache while
/// the account files are unchanged.
pub fn resolve(username: Option<&str>) -> Result<Account, StartError> {
    resolve_stamped(username).map(|(account, _)| account)
}

/// The cache's key for `username`: `None` for the agent's own user.
fn cache_key(username: Option<&str>) -> Option<String> {
    username.filter(|u| !u.is_empty()).map(str::to_string)
}

/// [`resolve`], with the account files' stamp taken before the answer (a
/// change after it makes the stamp stale, never the answer newer).
fn resolve_stamped(username: Option<&str>) -> Result<(Account, Stamp), StartError> {
    let key = cache_key(username);
    let now = stamp();
    {
        let mut guard = CACHE.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((at, account)) = current(&mut guard, now).entries.get(&key)
            && at.elapsed() < CACHE_TTL
        {
            return Ok((account.clone(), now));
        }
    }
    // Looked up outside the lock (NSS may be slow); only successes are kept.
    let account = lookup(key.as_deref())?;
    let mut guard = CACHE.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(cache) = guard.as_mut().filter(|c| c.stamp == now) {
        cache.entries.insert(key, (std::time::Instant::now(), account.clone()));
    }
    Ok((account, now))
}

fn lookup(username: Option<&str>) -> Result<Account, StartError> {
    let me = Uid::effective();
    let user = match username.filter(|u| !u.is_empty()) {
        None => User::from_uid(me)
            .map_err(|e| StartError::new(codes::EXECUTION_EXCEPTION, format!("cannot look up uid {me}: {e}")))?
            .ok_or_else(|| StartError::new(codes::ACCOUNT_NOT_EXISTS, format!("the agent's uid {me} has no passwd entry")))?,
        Some(name) => {
            if name.len() > MAX_USERNAME_BYTES || name.contains('\0') {
                return Err(StartError::new(
                    codes::ACCOUNT_NOT_EXISTS,
                    format!("Username must be at most {MAX_USERNAME_BYTES} bytes without NUL"),
                ));
            }
            User::from_name(name)
                .map_err(|e| StartError::new(codes::EXECUTION_EXCEPTION, format!("cannot look up user {name:?}: {e}")))?
                .ok_or_else(|| StartError::new(codes::ACCOUNT_NOT_EXISTS, format!("user {name:?} does not exist on this host")))?
        }
    };
    let switch = user.uid != me;
    if switch && !me.is_root() {
        return Err(StartError::new(
            codes::EXECUTION_EXCEPTION,
            format!("the agent runs as uid {me}, not root, so it cannot run commands as {:?}", user.name),
        ));
    }
    let groups = if switch {
        // NUL was refused above; this only keeps the check local.
        let cname = CString::new(user.name.clone())
            .map_err(|_| StartError::new(codes::EXECUTION_EXCEPTION, format!("Username {:?} contains NUL", user.name)))?;
        let mut g: Vec<u32> = getgrouplist(&cname, user.gid)
            .map_err(|e| StartError::new(codes::EXECUTION_EXCEPTION, format!("cannot list groups of {:?}: {e}", user.name)))?
            .into_iter()
            .map(Gid::as_raw)
            .collect();
        g.truncate(MAX_GROUPS);
        g
    } else {
        Vec::new()
    };
    Ok(Account { name: user.name, uid: user.uid.as_raw(), gid: user.gid.as_raw(), home: user.dir, shell: user.shell, groups, switch })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_user_is_account_not_exists() {
        let e = resolve(Some("no-such-user-deckhand-x")).unwrap_err();
        assert_eq!(e.code, codes::ACCOUNT_NOT_EXISTS);
        assert!(e.info.contains("no-such-user-deckhand-x"));
        assert_eq!(resolve(Some("a\0b")).unwrap_err().code, codes::ACCOUNT_NOT_EXISTS);
    }

    #[test]
    fn cached_account_is_the_looked_up_one() {
        let first = resolve(None).unwrap();
        let again = resolve(None).unwrap();
        let fresh = lookup(None).unwrap();
        for a in [&again, &fresh] {
            assert_eq!((a.uid, a.gid, &a.name, &a.home, a.switch), (first.uid, first.gid, &first.name, &first.home, first.switch));
        }
        // Failures are not remembered: still refused, with the name.
        assert_eq!(resolve(Some("no-such-user-deckhand-y")).unwrap_err().code, codes::ACCOUNT_NOT_EXISTS);
        assert!(CACHE.lock().unwrap().as_ref().is_some_and(|c| !c.entries.contains_key(&Some("no-such-user-deckhand-y".into()))));
    }

    /// A supervisor answers from the account its spec hands it, while the
    /// account files are unchanged; a stale one is not taken. (Names no
    /// host has, so other tests sharing the cache never see them.)
    #[test]
    fn a_handed_account_is_taken_only_while_the_files_are_unchanged() {
        let mut h = hand(None).expect("the agent's own account resolves");
        // JSON, as spec.json carries it.
        h = serde_json::from_slice(&serde_json::to_vec(&h).unwrap()).unwrap();
        let fake_home = std::path::PathBuf::from("/handed-home-deckhand");
        let mut fresh = h.clone();
        fresh.username = Some("handed-deckhand-a".into());
        fresh.account.home = fake_home.clone();
        take_handed(fresh);
        assert_eq!(resolve(Some("handed-deckhand-a")).unwrap().home, fake_home);
        let mut stale = h;
        stale.username = Some("handed-deckhand-b".into());
        stale.stamp[0].0 = stale.stamp[0].0.wrapping_add(1);
        take_handed(stale);
        assert_eq!(resolve(Some("handed-deckhand-b")).unwrap_err().code, codes::ACCOUNT_NOT_EXISTS);
    }

    #[test]
    fn own_user_needs_no_switch() {
        let a = resolve(None).unwrap();
        assert!(!a.switch);
        assert_eq!(a.uid, Uid::effective().as_raw());
    }
}
