//! Real-process tests of the execution engine: interpreters, working
//! directory, environment, script directory, run-as, parameters end to end.

use std::path::Path;

use deckhand::exec::{RunOutcome, RunSpec, Termination, codes, params, run};
use serde_json::json;
use tokio_util::sync::CancellationToken;

fn spec(root: &Path, script: &str) -> RunSpec {
    RunSpec { script_root: Some(root.to_path_buf()), ..RunSpec::new("t-test", deckhand::lifecycle::CommandType::RunShellScript, script) }
}

async fn go(s: RunSpec) -> RunOutcome {
    run(s, CancellationToken::new(), None).await
}

fn out(o: &RunOutcome) -> String {
    String::from_utf8_lossy(&o.output).into_owned()
}

#[tokio::test]
async fn echo_exit_zero() {
    let t = tempfile::tempdir().unwrap();
    let o = go(spec(t.path(), "echo hi")).await;
    assert_eq!(o.termination, Termination::Exited);
    assert_eq!((o.exit_code, o.signal), (Some(0), None));
    assert_eq!(o.error_code, "");
    assert_eq!(out(&o), "hi\n");
    assert!(o.start_time <= o.finish_time);
}

#[tokio::test]
async fn nonzero_exit_code() {
    let t = tempfile::tempdir().unwrap();
    let o = go(spec(t.path(), "echo bad >&2; exit 3")).await;
    assert_eq!(o.termination, Termination::Exited);
    assert_eq!(o.exit_code, Some(3));
    assert_eq!(o.error_code, codes::EXIT_CODE_NONZERO);
    assert_eq!(out(&o), "bad\n");
}

#[tokio::test]
async fn stdout_and_stderr_keep_their_order() {
    let t = tempfile::tempdir().unwrap();
    let o = go(spec(t.path(), "echo a; echo b >&2; echo c; echo d >&2")).await;
    assert_eq!(out(&o), "a\nb\nc\nd\n");
}

#[tokio::test]
async fn shebang_line_is_honoured() {
    let t = tempfile::tempdir().unwrap();
    // `sh -e` stops at `false`: proves the #! argument reached the interpreter.
    let o = go(spec(t.path(), "#!/bin/sh -e\necho one\nfalse\necho two\n")).await;
    assert_eq!(out(&o), "one\n");
    assert_eq!(o.exit_code, Some(1));
    if Path::new("/bin/bash").exists() {
        let o = go(spec(t.path(), "#!/usr/bin/env bash\necho \"${BASH_VERSINFO[0]}\" | grep -c .\n")).await;
        assert_eq!(out(&o), "1\n", "bash arrays only work under bash: {o:?}");
    }
    let o = go(spec(t.path(), "#!/no/such/interp\necho x")).await;
    assert_eq!(o.termination, Termination::FailedToStart);
    assert_eq!(o.error_code, codes::COMMAND_NOT_APPLICABLE);
}

#[tokio::test]
async fn unsupported_types_are_not_applicable() {
    let t = tempfile::tempdir().unwrap();
    let mut s = spec(t.path(), "echo x");
    s.command_type = deckhand::lifecycle::CommandType::RunBatScript;
    let o = go(s).await;
    assert_eq!(o.termination, Termination::FailedToStart);
    assert_eq!(o.error_code, codes::COMMAND_NOT_APPLICABLE);
    assert!(o.error_info.contains("RunBatScript"));
    let has_pwsh = ["/usr/bin/pwsh", "/usr/local/bin/pwsh", "/opt/microsoft/powershell/7/pwsh"].iter().any(|p| Path::new(p).exists());
    let mut s = spec(t.path(), "Write-Output \"ps $($PSVersionTable.PSVersion.Major)\"");
    s.command_type = deckhand::lifecycle::CommandType::RunPowerShellScript;
    let o = go(s).await;
    if has_pwsh {
        assert!(out(&o).starts_with("ps "), "{o:?}");
    } else {
        println!("pwsh not installed: checking RunPowerShellScript is CommandNotApplicable");
        assert_eq!(o.error_code, codes::COMMAND_NOT_APPLICABLE);
        assert!(o.error_info.contains("pwsh"));
    }
}

#[tokio::test]
async fn content_limit_is_enforced() {
    let t = tempfile::tempdir().unwrap();
    let big = format!("echo {}", "x".repeat(deckhand::protocol::MAX_SCRIPT_BYTES));
    let o = go(spec(t.path(), &big)).await;
    assert_eq!(o.termination, Termination::FailedToStart);
    assert_eq!(o.error_code, codes::INVALID_COMMAND_CONTENT);
    assert!(o.error_info.contains("16384"), "{}", o.error_info);
    // Nothing was written.
    assert_eq!(std::fs::read_dir(t.path()).map(|d| d.count()).unwrap_or(0), 0);
}

#[tokio::test]
async fn working_dir_default_explicit_and_missing() {
    let t = tempfile::tempdir().unwrap();
    let home = nix::unistd::User::from_uid(nix::unistd::Uid::effective()).unwrap().unwrap().dir;
    let o = go(spec(t.path(), "pwd")).await;
    assert_eq!(out(&o).trim_end(), home.to_str().unwrap());
    let wd = tempfile::tempdir().unwrap();
    let mut s = spec(t.path(), "pwd");
    s.working_dir = Some(wd.path().to_path_buf());
    assert_eq!(out(&go(s).await).trim_end(), wd.path().to_str().unwrap());
    let mut s = spec(t.path(), "pwd");
    s.working_dir = Some("/no/such/dir".into());
    let o = go(s).await;
    assert_eq!(o.termination, Termination::FailedToStart);
    assert_eq!(o.error_code, codes::DIRECTORY_NOT_EXISTS);
    assert!(o.error_info.contains("/no/such/dir"));
}

#[tokio::test]
async fn environment_is_clean_plus_declared() {
    let t = tempfile::tempdir().unwrap();
    // SAFETY: set once before any child is spawned by this test; no other test reads it.
    unsafe { std::env::set_var("DECKHAND_TEST_AGENT_SECRET", "leak") };
    let mut s = spec(
        t.path(),
        "echo \"${DECKHAND_TEST_AGENT_SECRET:-unset} $FOO $PATH $DECKHAND_INVOKE_ID\"; [ -n \"$HOME\" ] && [ -n \"$USER\" ] && [ \"$USER\" = \"$LOGNAME\" ] && [ -n \"$SHELL\" ] && echo ids",
    );
    s.env = vec![("FOO".into(), "bar baz".into())];
    let o = go(s).await;
    assert_eq!(out(&o), format!("unset bar baz {} t-test\nids\n", deckhand::exec::UNIX_PATH));
    let mut s = spec(t.path(), "true");
    s.env = vec![("A=B".into(), "x".into())];
    let o = go(s).await;
    assert_eq!(o.error_code, codes::INVALID_ENV);
}

#[tokio::test]
async fn script_dir_is_private_and_removed() {
    let t = tempfile::tempdir().unwrap();
    let o = go(spec(t.path(), "d=$(dirname \"$0\"); stat -c '%a %U' \"$d\"; stat -c '%a' \"$0\"; echo \"$d\"")).await;
    let text = out(&o);
    let lines: Vec<&str> = text.lines().collect();
    let me = nix::unistd::User::from_uid(nix::unistd::Uid::effective()).unwrap().unwrap().name;
    assert_eq!(lines[0], format!("700 {me}"));
    assert_eq!(lines[1], "600");
    assert!(lines[2].starts_with(t.path().to_str().unwrap()));
    assert!(!Path::new(lines[2]).exists(), "run directory must be removed");
    assert_eq!(std::fs::read_dir(t.path()).unwrap().count(), 0);
}

#[tokio::test]
async fn unknown_user_is_account_not_exists() {
    let t = tempfile::tempdir().unwrap();
    let mut s = spec(t.path(), "id");
    s.username = Some("deckhand-no-such-user".into());
    let o = go(s).await;
    assert_eq!(o.termination, Termination::FailedToStart);
    assert_eq!(o.error_code, codes::ACCOUNT_NOT_EXISTS);
    assert!(o.error_info.contains("deckhand-no-such-user"));
}

/// Creates a user (and a supplementary group) with useradd; needs root.
#[tokio::test]
async fn run_as_another_user() {
    if !nix::unistd::Uid::effective().is_root() {
        println!("skipping run_as_another_user: not running as root");
        return;
    }
    let name = format!("dkh{}", std::process::id() % 100000);
    let group = format!("{name}g");
    let sh = |args: &[&str]| std::process::Command::new(args[0]).args(&args[1..]).status().map(|s| s.success()).unwrap_or(false);
    if !sh(&["groupadd", &group]) || !sh(&["useradd", "-m", "-s", "/bin/sh", "-G", &group, &name]) {
        println!("skipping run_as_another_user: useradd/groupadd unavailable");
        return;
    }
    let t = tempfile::tempdir().unwrap();
    // A root the engine creates itself (0711), so the user can reach its run directory.
    let mut s = spec(
        &t.path().join("scripts"),
        "id -un; id -Gn; echo \"$HOME $USER $LOGNAME $SHELL\"; pwd; stat -c '%U %a' \"$(dirname \"$0\")\"; cat /proc/self/status | grep -c '^CapEff:.0000000000000000$'",
    );
    s.username = Some(name.clone());
    let o = go(s).await;
    let _ = sh(&["userdel", "-r", &name]);
    let _ = sh(&["groupdel", &group]);
    let text = out(&o);
    let l: Vec<&str> = text.lines().collect();
    assert_eq!(o.exit_code, Some(0), "{text}");
    let home = format!("/home/{name}");
    assert_eq!(l[0], name);
    assert!(l[1].split(' ').any(|g| g == group), "supplementary groups via initgroups: {}", l[1]);
    assert!(!l[1].split(' ').any(|g| g == "root"), "root's groups must be dropped: {}", l[1]);
    assert_eq!(l[2], format!("{home} {name} {name} /bin/sh"));
    assert_eq!(l[3], home);
    assert_eq!(l[4], format!("{name} 700"));
    assert_eq!(l[5], "1", "no capabilities left after setuid");
}

#[tokio::test]
async fn children_get_oom_score_adj_zero() {
    let t = tempfile::tempdir().unwrap();
    // Lower our own score (the agent may run with a negative one); needs CAP_SYS_RESOURCE.
    if std::fs::write("/proc/self/oom_score_adj", "-100").is_err() {
        println!("cannot lower oom_score_adj here; checking the child still reads 0");
    }
    let o = go(spec(t.path(), "cat /proc/self/oom_score_adj")).await;
    assert_eq!(out(&o), "0\n");
}

#[tokio::test]
async fn parameters_cannot_inject_commands() {
    let t = tempfile::tempdir().unwrap();
    let marker = t.path().join("pwned");
    let evil = format!("; touch {m} $(touch {m}) `touch {m}`", m = marker.display());
    let custom = json!({ "msg": evil }).as_object().unwrap().clone();
    let b = params::Builtins { instance_id: "i-1".into(), ..Default::default() };
    // Spliced under the hub's strict policy: refused before anything runs.
    let e = params::render_script("echo {{msg}}", true, &custom, &b, params::ValuePolicy::Strict).unwrap_err();
    assert!(matches!(e, params::ParamError::UnsafeValue { .. }), "{e}");
    // Through the environment: printed verbatim, never executed.
    let script =
        params::render_script("printf '%s\\n' \"$DECKHAND_PARAM_MSG\" {{ACS::InstanceId}}", true, &custom, &b, params::ValuePolicy::Any)
            .unwrap();
    let mut s = spec(t.path(), &script);
    s.env = params::param_env(&custom).unwrap();
    let o = go(s).await;
    assert_eq!(out(&o), format!("{evil}\ni-1\n"));
    assert!(!marker.exists(), "the value was executed");
}

#[tokio::test]
async fn stopped_before_start_runs_nothing() {
    let t = tempfile::tempdir().unwrap();
    let marker = t.path().join("ran");
    let stop = CancellationToken::new();
    stop.cancel();
    let o = run(spec(t.path(), &format!("touch {}", marker.display())), stop, None).await;
    assert_eq!(o.termination, Termination::Stopped);
    assert_eq!(o.error_code, "");
    assert!(!marker.exists());
}

#[tokio::test]
async fn scripts_get_umask_022_whatever_the_agent_has() {
    let mut spec =
        deckhand::exec::RunSpec::new("t-umask".to_string(), deckhand::lifecycle::CommandType::RunShellScript, "umask".to_string());
    spec.timeout = std::time::Duration::from_secs(10);
    // As under a service with UMask=0077: the script must still get 0022.
    let old = nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o077));
    let out = deckhand::exec::run(spec, tokio_util::sync::CancellationToken::new(), None).await;
    nix::sys::stat::umask(old);
    assert_eq!(String::from_utf8_lossy(&out.output).trim(), "0022");
}
