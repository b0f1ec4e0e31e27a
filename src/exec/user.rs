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

#[derive(Debug, Clone)]
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

/// Resolve `username` (None: the agent's own user).
pub fn resolve(username: Option<&str>) -> Result<Account, StartError> {
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
        let cname = CString::new(user.name.clone()).expect("checked for NUL above");
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
    fn own_user_needs_no_switch() {
        let a = resolve(None).unwrap();
        assert!(!a.switch);
        assert_eq!(a.uid, Uid::effective().as_raw());
    }
}
