//! Command type → how to launch the script file: program, leading arguments
//! and the file extension the interpreter insists on.
//!
//! `RunShellScript` honours a `#!` line the way the kernel would (program plus
//! at most one argument), but we launch that interpreter ourselves with the
//! script path as an argument, so a `noexec` temp directory still works.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use super::{StartError, codes};
use crate::lifecycle::CommandType;

/// Kernel limit on a `#!` line (Linux ≥ 5.1: 256 bytes including `#!`).
const MAX_SHEBANG_BYTES: usize = 256;

/// Which OS family the type is resolved for (a parameter so both families'
/// argv rules are unit-testable on either).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Os {
    Unix,
    Windows,
}

impl Os {
    pub const fn current() -> Os {
        if cfg!(windows) { Os::Windows } else { Os::Unix }
    }
}

/// How to launch one script.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Interpreter {
    pub program: PathBuf,
    /// Arguments placed before the script path.
    pub args: Vec<OsString>,
    /// Extension of the script file (`sh`, `ps1`, `bat`): pwsh `-File`
    /// refuses other extensions and cmd.exe picks batch mode by it.
    pub extension: &'static str,
}

impl Interpreter {
    /// Full argument list after the program: leading args then the script.
    pub fn argv(&self, script: &Path) -> Vec<OsString> {
        let mut v = self.args.clone();
        v.push(script.as_os_str().to_owned());
        v
    }
}

/// Resolve for this OS, looking programs up on the agent's PATH.
pub fn resolve_interpreter(command_type: CommandType, script: &str) -> Result<Interpreter, StartError> {
    resolve_for(Os::current(), command_type, script, &find_program)
}

/// The rules, with the OS and the program lookup injectable.
pub fn resolve_for(
    os: Os,
    command_type: CommandType,
    script: &str,
    find: &dyn Fn(&str) -> Option<PathBuf>,
) -> Result<Interpreter, StartError> {
    let not_here = |why: String| StartError::new(codes::COMMAND_NOT_APPLICABLE, why);
    match (command_type, os) {
        (CommandType::RunShellScript, Os::Unix) => shell(script),
        (CommandType::RunPowerShellScript, _) => {
            let names: &[&str] = match os {
                Os::Windows => &["powershell.exe", "pwsh.exe"],
                Os::Unix => &["pwsh", "powershell"],
            };
            let program = names
                .iter()
                .find_map(|n| find(n))
                .ok_or_else(|| not_here(format!("RunPowerShellScript needs one of {names:?}, none found on PATH")))?;
            let mut args: Vec<OsString> = ["-NoProfile", "-NonInteractive"].iter().map(Into::into).collect();
            if os == Os::Windows {
                // Execution policy only exists on Windows; pwsh on Linux ignores it anyway.
                args.extend(["-ExecutionPolicy", "Bypass"].iter().map(Into::into));
            }
            args.push("-File".into());
            Ok(Interpreter { program, args, extension: "ps1" })
        }
        (CommandType::RunBatScript, Os::Windows) => {
            let program = find("cmd.exe").unwrap_or_else(|| PathBuf::from(r"C:\Windows\System32\cmd.exe"));
            // /D: no AutoRun registry commands; /C: run then exit.
            Ok(Interpreter { program, args: vec!["/D".into(), "/C".into()], extension: "bat" })
        }
        (CommandType::RunShellScript | CommandType::RunBatScript, _) => Err(not_here(format!("{command_type} cannot run on {os:?} hosts"))),
        // Not a script: the agent's runner handles it before exec (a spec
        // of this type reaching here is refused, never guessed at).
        (CommandType::ApplyKubeletReserved | CommandType::SendFile, _) => Err(not_here(format!("{command_type} is not a script type"))),
    }
}

fn shell(script: &str) -> Result<Interpreter, StartError> {
    let Some(rest) = script.strip_prefix("#!") else {
        return Ok(Interpreter { program: "/bin/sh".into(), args: vec![], extension: "sh" });
    };
    let line = rest.split('\n').next().unwrap_or("");
    if line.len() + 2 > MAX_SHEBANG_BYTES {
        return Err(StartError::new(
            codes::INVALID_COMMAND_CONTENT,
            format!("the #! line is {} bytes; the limit is {MAX_SHEBANG_BYTES}", line.len() + 2),
        ));
    }
    let line = line.trim_end_matches('\r').trim();
    // Like the kernel: the first word is the program, the rest (if any) one argument.
    let (prog, arg) = match line.split_once([' ', '\t']) {
        Some((p, a)) => (p, Some(a.trim())),
        None => (line, None),
    };
    let program = PathBuf::from(prog);
    if !program.is_absolute() {
        return Err(StartError::new(codes::INVALID_COMMAND_CONTENT, format!("the #! line must name an absolute path, got {prog:?}")));
    }
    if !program.is_file() {
        return Err(StartError::new(
            codes::COMMAND_NOT_APPLICABLE,
            format!("interpreter {prog} named on the #! line does not exist on this host"),
        ));
    }
    let args = arg.filter(|a| !a.is_empty()).map(|a| vec![OsString::from(a)]).unwrap_or_default();
    Ok(Interpreter { program, args, extension: "sh" })
}

/// First match of `name` on the agent's PATH plus a few well-known install
/// locations (PowerShell's Linux package does not always link into PATH).
fn find_program(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let mut dirs: Vec<PathBuf> = std::env::split_paths(&path).collect();
    if cfg!(windows) {
        if let Some(root) = std::env::var_os("SystemRoot") {
            let root = PathBuf::from(root);
            dirs.push(root.join("System32"));
            dirs.push(root.join(r"System32\WindowsPowerShell\v1.0"));
        }
    } else {
        dirs.extend(["/usr/bin", "/usr/local/bin", "/opt/microsoft/powershell/7", "/snap/bin"].map(PathBuf::from));
    }
    dirs.into_iter().map(|d| d.join(name)).find(|p| p.is_file())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn none(_: &str) -> Option<PathBuf> {
        None
    }
    fn all(n: &str) -> Option<PathBuf> {
        Some(PathBuf::from(format!("/x/{n}")))
    }

    #[test]
    fn plain_shell_uses_bin_sh() {
        let i = resolve_for(Os::Unix, CommandType::RunShellScript, "echo hi", &none).unwrap();
        assert_eq!(i.program, PathBuf::from("/bin/sh"));
        assert_eq!(i.argv(Path::new("/t/s.sh")), vec![OsString::from("/t/s.sh")]);
    }

    #[test]
    fn shebang_program_and_one_argument() {
        let i = resolve_for(Os::Unix, CommandType::RunShellScript, "#!/usr/bin/env  sh -e \r\necho", &none).unwrap();
        assert_eq!(i.program, PathBuf::from("/usr/bin/env"));
        assert_eq!(i.args, vec![OsString::from("sh -e")]);
    }

    #[test]
    fn shebang_errors_are_clear() {
        let e = resolve_for(Os::Unix, CommandType::RunShellScript, "#!bash\n", &none).unwrap_err();
        assert_eq!(e.code, codes::INVALID_COMMAND_CONTENT);
        let e = resolve_for(Os::Unix, CommandType::RunShellScript, "#!/nonexistent/python9\n", &none).unwrap_err();
        assert_eq!(e.code, codes::COMMAND_NOT_APPLICABLE);
        assert!(e.info.contains("/nonexistent/python9"));
        let long = format!("#!/bin/{}\n", "a".repeat(300));
        assert!(resolve_for(Os::Unix, CommandType::RunShellScript, &long, &none).unwrap_err().info.contains("256"));
    }

    #[test]
    fn windows_types() {
        let p = resolve_for(Os::Windows, CommandType::RunPowerShellScript, "", &all).unwrap();
        assert_eq!(p.program, PathBuf::from("/x/powershell.exe"));
        let args: Vec<_> = p.args.iter().map(|a| a.to_str().unwrap()).collect();
        assert_eq!(args, ["-NoProfile", "-NonInteractive", "-ExecutionPolicy", "Bypass", "-File"]);
        assert_eq!(p.extension, "ps1");
        let b = resolve_for(Os::Windows, CommandType::RunBatScript, "", &none).unwrap();
        assert_eq!(b.extension, "bat");
        let e = resolve_for(Os::Windows, CommandType::RunShellScript, "", &all).unwrap_err();
        assert_eq!(e.code, codes::COMMAND_NOT_APPLICABLE);
    }

    #[test]
    fn unix_rejects_bat_and_missing_pwsh() {
        assert_eq!(resolve_for(Os::Unix, CommandType::RunBatScript, "", &all).unwrap_err().code, codes::COMMAND_NOT_APPLICABLE);
        let e = resolve_for(Os::Unix, CommandType::RunPowerShellScript, "", &none).unwrap_err();
        assert_eq!(e.code, codes::COMMAND_NOT_APPLICABLE);
        let p = resolve_for(Os::Unix, CommandType::RunPowerShellScript, "", &all).unwrap();
        assert_eq!(p.program, PathBuf::from("/x/pwsh"));
        assert_eq!(resolve_for(Os::Unix, CommandType::ApplyKubeletReserved, "", &all).unwrap_err().code, codes::COMMAND_NOT_APPLICABLE);
    }
}
