//! RunPowerShellScript plumbing on Linux with a *stand-in* `pwsh` (real
//! PowerShell is not installed on this host): a shell script placed first on
//! the agent's PATH that records its argv and prints the script file. It
//! proves the engine finds pwsh, passes `-NoProfile -NonInteractive -File`,
//! and writes a `.ps1` file. Own test binary because it changes PATH.

use std::os::unix::fs::PermissionsExt;

use deckhand::exec::{RunSpec, Termination, run};
use tokio_util::sync::CancellationToken;

#[tokio::test]
async fn powershell_type_runs_pwsh_with_file_argument() {
    let t = tempfile::tempdir().unwrap();
    let bin = t.path().join("bin");
    std::fs::create_dir(&bin).unwrap();
    let fake = bin.join("pwsh");
    std::fs::write(&fake, "#!/bin/sh\necho \"argv: $*\" | sed \"s|$4|FILE|\"\ncase \"$4\" in *.ps1) echo ext-ok;; esac\ncat \"$4\"\n")
        .unwrap();
    std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o755)).unwrap();
    let path = format!("{}:{}", bin.display(), std::env::var("PATH").unwrap_or_default());
    // SAFETY: this test binary has a single test; nothing else reads PATH concurrently.
    unsafe { std::env::set_var("PATH", path) };
    let spec = RunSpec {
        script_root: Some(t.path().join("scripts")),
        ..RunSpec::new("t-ps", deckhand::lifecycle::CommandType::RunPowerShellScript, "Write-Output 'hello'")
    };
    let o = run(spec, CancellationToken::new(), None).await;
    assert_eq!(o.termination, Termination::Exited, "{o:?}");
    assert_eq!(String::from_utf8_lossy(&o.output), "argv: -NoProfile -NonInteractive -File FILE\next-ok\nWrite-Output 'hello'");
}
