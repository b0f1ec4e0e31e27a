//! The Windows agent for real, under Wine: the `x86_64-pc-windows-gnu`
//! `deckhand-agent.exe` in a throwaway WINEPREFIX, registered with a real hub
//! on 127.0.0.1 (harness), first as a console process, then as a service
//! installed with `deckhand-agent service install`.
//!
//! Checked in both modes: a bat run's output (stdout and stderr in the order
//! written: one pipe) and exit code, UTF-8 output kept byte for byte, a
//! timeout and a stop that end the whole process tree (a grandchild `ping`
//! must be gone afterwards), a periodic run; the state directory under
//! `%ProgramData%\deckhand\agent`; for the service: its registration
//! (automatic start, description, restart-on-failure recovery actions),
//! `sc stop` leaving STOPPED with exit code 0, the log files under
//! `%ProgramData%\deckhand\logs`, and `service uninstall` stopping and
//! removing it.
//!
//! The one stand-in: `bcryptprimitives.dll` (tests/support/wine/), which
//! Wine 8.0 lacks and Rust's std imports; it forwards to RtlGenRandom.
//! Wine's PowerShell is a stub, so PowerShell is not tested here.
//!
//! Needs `wine` (Debian `wine` + `wine64`), `x86_64-w64-mingw32-gcc` and the
//! Rust target. Without them it prints SKIPPED and passes, unless
//! `DECKHAND_REQUIRE_WINE=1` (CI) makes that a failure. The exe is built
//! here (`CARGO_PROFILE_DEV_DEBUG=0`) unless `DECKHAND_WINDOWS_AGENT` names
//! one already built.

#[path = "support/harness.rs"]
mod harness;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use harness::{Hub, output_of, wait_until};
use serde_json::Value;

/// Where the agent lives inside the prefix: a path with a space, so the
/// service's command line must quote it.
const WIN_DIR: &str = r"C:\Program Files\deckhand";
/// Files the test scripts read and write.
const DATA_DIR: &str = r"C:\deckhand";
/// A run's final state may take a while under Wine (process start is slow).
const FINAL_WAIT: Duration = Duration::from_secs(60);
/// Waits for Wine to do something (start a process, a service, connect):
/// generous, since CI machines are shared and Wine starts slowly under load.
const WINE_WAIT: Duration = Duration::from_secs(60);

fn find_in_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).map(|d| d.join(name)).find(|p| p.is_file())
}

fn first_existing(candidates: &[&str]) -> Option<PathBuf> {
    candidates.iter().find_map(|c| if c.starts_with('/') { Some(PathBuf::from(c)).filter(|p| p.is_file()) } else { find_in_path(c) })
}

/// SKIPPED (or, with DECKHAND_REQUIRE_WINE=1, a failure) with the reason.
fn unavailable(reason: &str) {
    if std::env::var("DECKHAND_REQUIRE_WINE").is_ok_and(|v| v == "1") {
        panic!("DECKHAND_REQUIRE_WINE=1 but {reason}");
    }
    eprintln!("SKIPPED: {reason}");
}

/// The Windows agent: `DECKHAND_WINDOWS_AGENT`, or built now.
fn windows_agent() -> Result<PathBuf, String> {
    if let Some(p) = std::env::var_os("DECKHAND_WINDOWS_AGENT") {
        let p = PathBuf::from(p);
        return if p.is_file() { Ok(p) } else { Err(format!("DECKHAND_WINDOWS_AGENT={} does not exist", p.display())) };
    }
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    let out = Command::new(&cargo)
        .args(["build", "--target", "x86_64-pc-windows-gnu", "--bin", "deckhand-agent", "--message-format", "short"])
        .env("CARGO_PROFILE_DEV_DEBUG", "0")
        .current_dir(manifest)
        .output()
        .map_err(|e| format!("cannot run cargo: {e}"))?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        if err.contains("target may not be installed") || err.contains("can't find crate for `std`") {
            return Err("the x86_64-pc-windows-gnu Rust target is not installed".into());
        }
        panic!("building the Windows agent failed:\n{err}");
    }
    let target = std::env::var_os("CARGO_TARGET_DIR").map(PathBuf::from).unwrap_or_else(|| manifest.join("target"));
    Ok(target.join("x86_64-pc-windows-gnu/debug/deckhand-agent.exe"))
}

/// One throwaway prefix. Dropping it kills every Wine process of the prefix
/// (`wineserver -k`), also when the test failed.
struct Wine {
    wine: PathBuf,
    wineserver: PathBuf,
    dir: tempfile::TempDir,
}

impl Wine {
    fn prefix(&self) -> PathBuf {
        self.dir.path().join("prefix")
    }

    /// A Windows path `C:\…` as seen from Linux.
    fn host(&self, win: &str) -> PathBuf {
        let rest = win.strip_prefix(r"C:\").expect("C: path");
        rest.split('\\').fold(self.prefix().join("drive_c"), |p, part| p.join(part))
    }

    fn cmd(&self, program: &str) -> Command {
        let mut c = Command::new(&self.wine);
        c.arg(program)
            .env("WINEPREFIX", self.prefix())
            .env("WINEDEBUG", "-all")
            // No Mono/Gecko download prompts.
            .env("WINEDLLOVERRIDES", "mscoree,mshtml=")
            .env_remove("DISPLAY")
            .stdin(Stdio::null());
        c
    }

    /// Runs `program args…` to completion with a deadline.
    fn run(&self, program: &str, args: &[&str]) -> Output {
        let mut child = self.cmd(program).args(args).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("spawn wine");
        let what = format!("wine {program} {args:?}");
        wait_until(&what, Duration::from_secs(120), || child.try_wait().ok().flatten());
        child.wait_with_output().expect("wine output")
    }

    fn sc_query(&self) -> String {
        let o = self.run("sc", &["query", "deckhand-agent"]);
        String::from_utf8_lossy(&o.stdout).into_owned()
    }
}

impl Drop for Wine {
    fn drop(&mut self) {
        let _ = Command::new(&self.wineserver).arg("-k").env("WINEPREFIX", self.prefix()).status();
        // -k is asynchronous; -w waits until the server (and so every process) is gone.
        let _ = Command::new(&self.wineserver).arg("-w").env("WINEPREFIX", self.prefix()).status();
    }
}

/// Processes whose command line has every word of `words` (e.g. a `ping`
/// with a count no other test uses): Wine processes are Linux processes.
fn processes_with(words: &[&str]) -> Vec<u32> {
    let Ok(rd) = std::fs::read_dir("/proc") else { return vec![] };
    rd.filter_map(|e| {
        let e = e.ok()?;
        let pid: u32 = e.file_name().to_str()?.parse().ok()?;
        let cmdline = std::fs::read(e.path().join("cmdline")).ok()?;
        let text = String::from_utf8_lossy(&cmdline).replace('\0', " ").to_ascii_lowercase();
        words.iter().all(|w| text.contains(&w.to_ascii_lowercase())).then_some(pid)
    })
    .collect()
}

fn run_bat(hub: &Hub, id: &str, script: &str, extra: &[(&str, &str)]) -> String {
    let mut p: Vec<(&str, &str)> = vec![("Type", "RunBatScript"), ("CommandContent", script), ("InstanceId.1", id)];
    p.extend_from_slice(extra);
    let v = hub.call("RunCommand", &p).expect("RunCommand");
    v["InvokeId"].as_str().expect("InvokeId").to_string()
}

fn one_result(hub: &Hub, invoke: &str) -> Value {
    hub.wait_final(invoke, FINAL_WAIT).into_iter().next().expect("one result")
}

/// Everything checked the same way in console and service mode. `mode`
/// makes ping counts (the survivors looked for) unique per mode.
fn exercise(hub: &Hub, wine: &Wine, id: &str, mode: u32) {
    // 1. Output order and exit code: stdout and stderr alternate 20 times;
    // with two pipes read separately the lines come back regrouped.
    let mut script = String::new();
    let mut want = Vec::new();
    for i in 1..=20 {
        script.push_str(&format!("@echo out{i}\r\n@echo err{i}>&2\r\n"));
        want.push(format!("out{i}"));
        want.push(format!("err{i}"));
    }
    script.push_str("@exit /b 3\r\n");
    let r = one_result(hub, &run_bat(hub, id, &script, &[]));
    let out = String::from_utf8_lossy(&output_of(&r)).into_owned();
    let got: Vec<&str> = out.lines().map(str::trim).filter(|l| !l.is_empty()).collect();
    assert_eq!(got, want, "stdout and stderr must come back in the order written: {r}");
    assert_eq!(r["ExitCode"], 3, "{r}");
    assert_eq!(r["InvokeRecordStatus"], "Finished", "{r}");
    assert_eq!(r["InvocationStatus"], "Failed", "{r}");
    assert_eq!(r["ErrorCode"], "ExitCodeNonzero", "{r}");

    // 2. UTF-8 bytes a script writes come back unchanged (`type` copies the
    // file's bytes to stdout; the agent must not re-encode them).
    let text = "héllo wörld ✓ 日本語 ∑\r\n";
    std::fs::write(wine.host(r"C:\deckhand\utf8.txt"), text).expect("write utf8 sample");
    let r = one_result(hub, &run_bat(hub, id, "@type C:\\deckhand\\utf8.txt\r\n", &[]));
    assert_eq!(r["InvokeRecordStatus"], "Finished", "{r}");
    assert_eq!(output_of(&r), text.as_bytes(), "UTF-8 output must be kept byte for byte: {r}");

    // 3. Timeout ends the whole tree: cmd → cmd → ping (a grandchild).
    let count = (4100 + mode).to_string();
    let script = format!("@cmd /c \"cmd /c ping -n {count} 127.0.0.1 >nul\"\r\n");
    // Long enough for three Wine processes to start on a loaded machine:
    // the grandchild must be seen alive before the timeout, or nothing is proven.
    let inv = run_bat(hub, id, &script, &[("Timeout", "15")]);
    wait_until("the timed-out tree's ping to start", WINE_WAIT, || (!processes_with(&["ping", &count]).is_empty()).then_some(()));
    let r = one_result(hub, &inv);
    // Alibaba's values: the record Failed, the instance Timeout.
    assert_eq!((r["InvokeRecordStatus"].as_str(), r["InvocationStatus"].as_str()), (Some("Failed"), Some("Timeout")), "{r}");
    assert_eq!(r["ErrorCode"], "ExecutionTimeout", "{r}");
    wait_until("no survivor of the timed-out tree", Duration::from_secs(10), || processes_with(&["ping", &count]).is_empty().then_some(()));

    // 4. Stop ends the tree too.
    let count = (4200 + mode).to_string();
    let inv = run_bat(hub, id, &format!("@ping -n {count} 127.0.0.1 >nul\r\n"), &[("Timeout", "600")]);
    wait_until("the stopped run's ping to start", WINE_WAIT, || (!processes_with(&["ping", &count]).is_empty()).then_some(()));
    hub.call("StopInvocation", &[("InvokeId", &inv), ("InstanceId.1", id)]).expect("StopInvocation");
    let r = one_result(hub, &inv);
    // Stopped while running: the record Stopped, the instance Terminated.
    assert_eq!((r["InvokeRecordStatus"].as_str(), r["InvocationStatus"].as_str()), (Some("Stopped"), Some("Terminated")), "{r}");
    wait_until("no survivor of the stopped run", Duration::from_secs(10), || processes_with(&["ping", &count]).is_empty().then_some(()));

    // 5. A periodic run fires more than once (every 10 s): each fire appends a line.
    let ticks = wine.host(&format!(r"C:\deckhand\ticks{mode}.txt"));
    let script = format!("@echo tick>>C:\\deckhand\\ticks{mode}.txt\r\n");
    let inv = run_bat(hub, id, &script, &[("RepeatMode", "Period"), ("Frequency", "*/10 * * * * ?"), ("Timeout", "8")]);
    wait_until("two periodic fires", WINE_WAIT, || {
        let n = std::fs::read_to_string(&ticks).ok()?.lines().filter(|l| l.trim() == "tick").count();
        (n >= 2).then_some(())
    });
    hub.call("StopInvocation", &[("InvokeId", &inv)]).expect("stop the periodic invocation");
}

/// Like the harness's, with Wine's slower start in mind.
fn wait_online(hub: &Hub, id: &str) {
    wait_until(&format!("{id} online"), WINE_WAIT, || {
        let v = hub.call("DescribeCloudAssistantStatus", &[("InstanceId.1", id)]).ok()?;
        let s = v["InstanceCloudAssistantStatusSet"]["InstanceCloudAssistantStatus"][0]["CloudAssistantStatus"].as_str()?.to_string();
        (s == "true").then_some(())
    });
}

fn identity_in(dir: &Path) -> Option<String> {
    let v: Value = serde_json::from_slice(&std::fs::read(dir.join("identity.json")).ok()?).ok()?;
    Some(v["instance_id"].as_str()?.to_string())
}

/// Kills the console agent even when an assertion failed.
struct Console(Child);

impl Drop for Console {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn windows_agent_under_wine_console_and_service() {
    let Some(wine_bin) = first_existing(&["wine", "wine64", "/usr/lib/wine/wine64"]) else {
        return unavailable("wine is not installed (Debian: apt-get install wine wine64)");
    };
    let Some(wineserver) = first_existing(&["wineserver", "/usr/lib/wine/wineserver64", "/usr/lib/wine/wineserver"]) else {
        return unavailable("wineserver is not installed");
    };
    let Some(gcc) = first_existing(&["x86_64-w64-mingw32-gcc"]) else {
        return unavailable("x86_64-w64-mingw32-gcc is not installed (Debian: gcc-mingw-w64-x86-64)");
    };
    let exe = match windows_agent() {
        Ok(p) => p,
        Err(reason) => return unavailable(&reason),
    };

    let wine = Wine { wine: wine_bin, wineserver, dir: tempfile::tempdir().expect("tempdir") };
    let o = wine.run("wineboot", &["--init"]);
    assert!(o.status.success(), "wineboot --init failed: {}", String::from_utf8_lossy(&o.stderr));
    let app = wine.host(WIN_DIR);
    std::fs::create_dir_all(&app).expect("the agent's directory");
    std::fs::create_dir_all(wine.host(DATA_DIR)).expect("the data directory");
    std::fs::copy(&exe, app.join("deckhand-agent.exe")).expect("copy the exe");
    let shim_src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/support/wine/bcryptprimitives.c");
    let o = Command::new(&gcc)
        .args(["-shared", "-O2", "-o"])
        .arg(app.join("bcryptprimitives.dll"))
        .arg(&shim_src)
        .arg("-ladvapi32")
        .output()
        .expect("run mingw gcc");
    assert!(o.status.success(), "building the ProcessPrng shim failed: {}", String::from_utf8_lossy(&o.stderr));

    let hub = Hub::start();
    std::fs::copy(&hub.ca, app.join("ca.pem")).expect("copy the CA");
    let agent_exe = format!(r"{WIN_DIR}\deckhand-agent.exe");
    let ca = format!(r"{WIN_DIR}\ca.pem");
    let state = wine.host(r"C:\ProgramData\deckhand\agent");
    let logs = wine.host(r"C:\ProgramData\deckhand\logs");

    // ---- console mode: `run` with no --state-dir: the default must be
    // %ProgramData%\deckhand\agent (not C:\var\lib\…).
    let v = hub.call("CreateActivation", &[("InstanceCount", "1")]).expect("activation");
    let (act_id, act_code) = (v["ActivationId"].as_str().unwrap().to_string(), v["ActivationCode"].as_str().unwrap().to_string());
    let console_log = wine.dir.path().join("console-agent.log");
    let child = wine
        .cmd(&agent_exe)
        .args([
            "run",
            "--hub",
            &hub.url,
            "--ca-file",
            &ca,
            "--backoff-cap-secs",
            "1",
            "--activation-id",
            &act_id,
            "--activation-code",
            &act_code,
        ])
        .env("DECKHAND_LOG", "info,deckhand=debug")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&console_log).expect("log file"))
        .spawn()
        .expect("start the console agent");
    let mut console = Console(child);
    let dump = |what: &str| format!("{what}\n---- console agent log ----\n{}", std::fs::read_to_string(&console_log).unwrap_or_default());
    let id = match (0..1200).find_map(|_| {
        if let Ok(Some(s)) = console.0.try_wait() {
            panic!("{}", dump(&format!("the console agent exited with {s}")));
        }
        identity_in(&state).or_else(|| {
            std::thread::sleep(Duration::from_millis(50));
            None
        })
    }) {
        Some(id) => id,
        None => panic!("{}", dump("no identity in %ProgramData%\\deckhand\\agent after 60 s")),
    };
    assert!(!wine.host(r"C:\var").exists(), "nothing may be written under C:\\var");
    wait_online(&hub, &id);
    exercise(&hub, &wine, &id, 1);
    assert!(state.join("status.json").is_file(), "status.json in the state dir");
    drop(console);

    // ---- service mode: the config file in its default place, installed
    // with `service install`, started by the service manager. Wine ends
    // services when no other Wine process is left: keep one alive.
    let _keepalive = Console(
        wine.cmd("ping").args(["-n", "86400", "127.0.0.1"]).stdout(Stdio::null()).stderr(Stdio::null()).spawn().expect("keep-alive"),
    );
    std::fs::write(
        wine.host(r"C:\ProgramData\deckhand\agent.toml"),
        format!("hub = \"{}\"\nca_file = '{ca}'\nbackoff_cap_secs = 1\n", hub.url),
    )
    .expect("agent.toml");
    let o = wine.run(&agent_exe, &["service", "install"]);
    let said = String::from_utf8_lossy(&o.stdout).into_owned() + &String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success() && said.contains("installed"), "service install: {said}");
    let reg = wine.run("reg", &["query", r"HKLM\System\CurrentControlSet\Services\deckhand-agent"]);
    let reg = String::from_utf8_lossy(&reg.stdout).into_owned();
    let compact: String = reg.split_whitespace().collect::<Vec<_>>().join(" ");
    assert!(compact.contains("Start REG_DWORD 0x2"), "automatic start: {reg}");
    // Quoted: an unquoted path with a space is the classic hijackable service path.
    assert!(compact.contains(r#"ImagePath REG_SZ "C:\Program Files\deckhand\deckhand-agent.exe" windows-service"#), "ImagePath: {reg}");
    assert!(compact.contains("Description REG_SZ deckhand node agent"), "description: {reg}");
    // The recovery actions are not checked: Wine's service manager accepts
    // them but keeps nothing (docs/operations.md, "Only real Windows").
    // Installing again updates in place.
    let o = wine.run(&agent_exe, &["service", "install"]);
    assert!(o.status.success(), "second service install: {}", String::from_utf8_lossy(&o.stderr));

    let o = wine.run("sc", &["start", "deckhand-agent"]);
    assert!(o.status.success(), "sc start: {}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
    let service_logs = || -> String {
        let Ok(rd) = std::fs::read_dir(&logs) else { return String::new() };
        rd.filter_map(|e| e.ok()).map(|e| std::fs::read_to_string(e.path()).unwrap_or_default()).collect()
    };
    wait_until("service RUNNING", WINE_WAIT, || wine.sc_query().contains("RUNNING").then_some(()));
    wait_online(&hub, &id);
    exercise(&hub, &wine, &id, 2);

    let o = wine.run("sc", &["stop", "deckhand-agent"]);
    assert!(o.status.success(), "sc stop: {}", String::from_utf8_lossy(&o.stdout));
    let q = wait_until("service STOPPED", WINE_WAIT, || Some(wine.sc_query()).filter(|q| q.contains("STOPPED")));
    let exit_line = q.lines().find(|l| l.contains("WIN32_EXIT_CODE")).unwrap_or_default();
    assert!(exit_line.split(':').nth(1).is_some_and(|v| v.trim().starts_with("0 ")), "exit code 0 after a stop: {q}\n{}", service_logs());

    // Logs: daily files agent.YYYY-MM-DD.log under %ProgramData%\deckhand\logs.
    let names: Vec<String> = std::fs::read_dir(&logs).expect("logs dir").filter_map(|e| e.ok()?.file_name().into_string().ok()).collect();
    assert!(names.iter().any(|n| n.starts_with("agent.") && n.ends_with(".log")), "log files: {names:?}");
    let text = service_logs();
    assert!(text.contains("service stopped"), "the service log records the stop: {text}");

    // Uninstall stops a running service, then removes it.
    let o = wine.run("sc", &["start", "deckhand-agent"]);
    assert!(o.status.success(), "sc start again: {}", String::from_utf8_lossy(&o.stdout));
    wait_until("service RUNNING again", WINE_WAIT, || wine.sc_query().contains("RUNNING").then_some(()));
    let o = wine.run(&agent_exe, &["service", "uninstall"]);
    let said = String::from_utf8_lossy(&o.stdout).into_owned() + &String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success() && said.contains("removed"), "service uninstall: {said}");
    let q = wine.sc_query();
    assert!(!q.contains("RUNNING") && !q.contains("STOPPED"), "the service is gone: {q}");
    assert!(identity_in(&state).as_deref() == Some(id.as_str()), "uninstall keeps the state directory");
}
