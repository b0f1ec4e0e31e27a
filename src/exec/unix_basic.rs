//! Minimal Unix runner (placeholder until the full engine lands).

use super::*;
use std::process::Stdio;
use tokio::io::AsyncReadExt;

pub(super) async fn run(
    spec: RunSpec,
    stop: CancellationToken,
    live: Option<mpsc::Sender<Vec<u8>>>,
) -> RunOutcome {
    let start_time = Utc::now();
    let fail = |code: &str, info: String| RunOutcome {
        termination: Termination::FailedToStart,
        exit_code: None,
        signal: None,
        error_code: code.to_string(),
        error_info: info,
        output: Vec::new(),
        dropped: 0,
        start_time,
        finish_time: Utc::now(),
    };
    if spec.command_type != "RunShellScript" {
        return fail("CommandNotApplicable", format!("{} is not supported on this OS", spec.command_type));
    }
    let mut cmd = tokio::process::Command::new("/bin/sh");
    cmd.arg("-c").arg(&spec.script).stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
    cmd.process_group(0).kill_on_drop(true);
    if let Some(d) = &spec.working_dir {
        cmd.current_dir(d);
    }
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => return fail("CommandFailed", e.to_string()),
    };
    let pid = child.id().unwrap_or(0) as i32;
    let mut out = child.stdout.take().unwrap();
    let mut err = child.stderr.take().unwrap();
    let mut cap = OutputCap::new(spec.output_cap);
    let (mut b1, mut b2) = (vec![0u8; 8192], vec![0u8; 8192]);
    let (mut o_open, mut e_open) = (true, true);
    let deadline = tokio::time::sleep(spec.timeout);
    tokio::pin!(deadline);
    let mut termination = Termination::Exited;
    let mut status = None;
    loop {
        tokio::select! {
            n = out.read(&mut b1), if o_open => match n { Ok(0) | Err(_) => o_open = false, Ok(n) => { cap.push(&b1[..n]); if let Some(l) = &live { let _ = l.try_send(b1[..n].to_vec()); } } },
            n = err.read(&mut b2), if e_open => match n { Ok(0) | Err(_) => e_open = false, Ok(n) => { cap.push(&b2[..n]); if let Some(l) = &live { let _ = l.try_send(b2[..n].to_vec()); } } },
            s = child.wait(), if status.is_none() => { status = Some(s); if !o_open && !e_open { break; } },
            _ = &mut deadline, if termination == Termination::Exited => { termination = Termination::TimedOut; let _ = nix::sys::signal::killpg(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL); },
            _ = stop.cancelled(), if termination == Termination::Exited => { termination = Termination::Stopped; let _ = nix::sys::signal::killpg(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL); },
        }
        if status.is_some() && !o_open && !e_open { break; }
    }
    let st = match status { Some(Ok(s)) => Some(s), _ => None };
    use std::os::unix::process::ExitStatusExt;
    let exit_code = st.and_then(|s| s.code());
    let signal = st.and_then(|s| s.signal());
    let (output, dropped) = cap.finish();
    let (error_code, error_info) = match termination {
        Termination::TimedOut => ("ExecutionTimeout".to_string(), "the script ran longer than its timeout".to_string()),
        Termination::Stopped => (String::new(), String::new()),
        _ if exit_code != Some(0) => ("ExitCodeNonzero".to_string(), format!("exit code {:?}", exit_code)),
        _ => (String::new(), String::new()),
    };
    RunOutcome { termination, exit_code, signal, error_code, error_info, output, dropped, start_time, finish_time: Utc::now() }
}
