//! The child's environment: a clean base (never the agent's own variables,
//! which may hold its credentials) plus `RunSpec::env`, with bounds.

use std::ffi::OsString;

use super::{StartError, codes};

/// Most extra variables a run may declare.
pub const MAX_ENV_VARS: usize = 128;
/// Total bytes of extra names and values.
pub const MAX_ENV_BYTES: usize = 64 * 1024;

/// Default PATH for Unix children (what most distributions give root).
pub const UNIX_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Agent variables passed through on Unix: locale and time zone only.
#[cfg_attr(windows, allow(dead_code))]
const UNIX_PASSTHROUGH: &[&str] = &["LANG", "LC_ALL", "TZ"];
#[cfg_attr(unix, allow(dead_code))]
/// Agent variables passed through on Windows: what cmd/PowerShell need to work.
const WINDOWS_PASSTHROUGH: &[&str] = &[
    "SystemRoot",
    "windir",
    "SystemDrive",
    "ComSpec",
    "PATH",
    "PATHEXT",
    "TEMP",
    "TMP",
    "ProgramFiles",
    "ProgramFiles(x86)",
    "ProgramData",
    "ProgramW6432",
    "CommonProgramFiles",
    "PSModulePath",
    "NUMBER_OF_PROCESSORS",
    "PROCESSOR_ARCHITECTURE",
    "OS",
    "USERPROFILE",
    "USERNAME",
    "USERDOMAIN",
    "APPDATA",
    "LOCALAPPDATA",
    "ALLUSERSPROFILE",
    "PUBLIC",
];

/// Identity variables of the run-as user.
#[cfg_attr(windows, allow(dead_code))]
pub struct Identity<'a> {
    pub user: &'a str,
    pub home: &'a std::path::Path,
    pub shell: &'a std::path::Path,
}

/// Check `extra` against the rules: name non-empty, no `=` or NUL; value
/// without NUL; count and total size bounded.
pub fn validate(extra: &[(String, String)]) -> Result<(), StartError> {
    let bad = |m: String| StartError::new(codes::INVALID_ENV, m);
    if extra.len() > MAX_ENV_VARS {
        return Err(bad(format!("{} environment variables given; the limit is {MAX_ENV_VARS}", extra.len())));
    }
    let total: usize = extra.iter().map(|(k, v)| k.len() + v.len()).sum();
    if total > MAX_ENV_BYTES {
        return Err(bad(format!("environment is {total} bytes; the limit is {MAX_ENV_BYTES}")));
    }
    for (k, v) in extra {
        if k.is_empty() || k.contains(['=', '\0']) {
            return Err(bad(format!("environment variable name {k:?} is empty or contains '=' or NUL")));
        }
        if v.contains('\0') {
            return Err(bad(format!("environment variable {k} contains NUL")));
        }
    }
    Ok(())
}

/// Unix environment: PATH, HOME, USER, LOGNAME, SHELL, PWD, locale/TZ from the
/// agent, `DECKHAND_INVOKE_ID`, then `extra` (which may override any of them).
#[cfg_attr(windows, allow(dead_code))]
pub fn unix(id: &Identity<'_>, cwd: &std::path::Path, invoke_id: &str, extra: &[(String, String)]) -> Vec<(OsString, OsString)> {
    let mut env: Vec<(OsString, OsString)> = vec![
        ("PATH".into(), UNIX_PATH.into()),
        ("HOME".into(), id.home.into()),
        ("USER".into(), id.user.into()),
        ("LOGNAME".into(), id.user.into()),
        ("SHELL".into(), id.shell.into()),
        ("PWD".into(), cwd.into()),
        ("DECKHAND_INVOKE_ID".into(), invoke_id.into()),
    ];
    passthrough(&mut env, UNIX_PASSTHROUGH);
    env.extend(extra.iter().map(|(k, v)| (k.into(), v.into())));
    env
}

#[cfg_attr(unix, allow(dead_code))]
/// Windows environment: the pass-through list, `DECKHAND_INVOKE_ID`, then `extra`.
pub fn windows(invoke_id: &str, extra: &[(String, String)]) -> Vec<(OsString, OsString)> {
    let mut env = vec![("DECKHAND_INVOKE_ID".into(), invoke_id.into())];
    passthrough(&mut env, WINDOWS_PASSTHROUGH);
    env.extend(extra.iter().map(|(k, v)| (k.into(), v.into())));
    env
}

fn passthrough(env: &mut Vec<(OsString, OsString)>, names: &[&str]) {
    for n in names {
        if let Some(v) = std::env::var_os(n) {
            env.push(((*n).into(), v));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_bad_names_values_and_sizes() {
        let v = |k: &str, val: &str| vec![(k.to_string(), val.to_string())];
        assert!(validate(&v("A", "b")).is_ok());
        for bad in [v("", "x"), v("A=B", "x"), v("A\0", "x"), v("A", "x\0")] {
            let e = validate(&bad).unwrap_err();
            assert_eq!(e.code, codes::INVALID_ENV);
        }
        let many: Vec<_> = (0..=MAX_ENV_VARS).map(|i| (format!("V{i}"), String::new())).collect();
        assert!(validate(&many).unwrap_err().info.contains("limit is 128"));
        let big = v("A", &"x".repeat(MAX_ENV_BYTES));
        assert!(validate(&big).unwrap_err().info.contains("bytes"));
    }
}
