//! Windows start: cmd.exe / powershell.exe in a fresh Job Object so timeout
//! and stop end every process the script started (`TerminateJobObject`).
//!
//! stdout and stderr share one pipe, as on Unix: a fresh named pipe (inbound
//! only, one instance, local clients only) whose server end the agent reads
//! asynchronously and whose client end is both of the child's handles, so
//! the kept output is in the order it was written.
//!
//! Limits, documented in docs/exec.md: the child is assigned to the job right
//! after it starts, so a grandchild spawned in that first instant could
//! escape; no graceful signal exists (terminate = kill); run-as another
//! account is not supported yet. Exercised under Wine by tests/windows_wine.rs.

use std::ffi::c_void;
use std::path::PathBuf;
use std::process::Stdio;

use futures_util::FutureExt;
use tokio::net::windows::named_pipe::{NamedPipeServer, PipeMode, ServerOptions};

use windows_sys::Win32::Foundation::{CloseHandle, HANDLE};
use windows_sys::Win32::System::JobObjects::{
    AssignProcessToJobObject, CreateJobObjectW, JOBOBJECT_BASIC_ACCOUNTING_INFORMATION, JobObjectBasicAccountingInformation,
    QueryInformationJobObject, TerminateJobObject,
};
use windows_sys::Win32::System::Threading::{CREATE_NEW_PROCESS_GROUP, CREATE_NO_WINDOW};

use super::super::{env, interpreter, scriptfile};
use super::{Group, Started};
use crate::exec::{RunSpec, StartError, codes};

/// Exit code given to processes killed through the job.
const KILLED_EXIT_CODE: u32 = 1;

struct Job(HANDLE);

// SAFETY: a job handle may be used from any thread.
unsafe impl Send for Job {}
unsafe impl Sync for Job {}

impl Job {
    fn new() -> std::io::Result<Job> {
        // SAFETY: null attributes and name create an anonymous job.
        let h = unsafe { CreateJobObjectW(std::ptr::null(), std::ptr::null()) };
        if h.is_null() { Err(std::io::Error::last_os_error()) } else { Ok(Job(h)) }
    }
}

impl Group for Job {
    fn terminate(&self) {
        self.kill();
    }

    fn kill(&self) {
        // SAFETY: self.0 is a live job handle.
        unsafe { TerminateJobObject(self.0, KILLED_EXIT_CODE) };
    }

    fn alive(&self) -> bool {
        // SAFETY: a zeroed accounting struct is valid; the size matches it.
        unsafe {
            let mut info: JOBOBJECT_BASIC_ACCOUNTING_INFORMATION = std::mem::zeroed();
            let ok = QueryInformationJobObject(
                self.0,
                JobObjectBasicAccountingInformation,
                (&mut info as *mut JOBOBJECT_BASIC_ACCOUNTING_INFORMATION).cast::<c_void>(),
                std::mem::size_of::<JOBOBJECT_BASIC_ACCOUNTING_INFORMATION>() as u32,
                std::ptr::null_mut(),
            );
            ok == 0 || info.ActiveProcesses > 0
        }
    }
}

impl Drop for Job {
    fn drop(&mut self) {
        // No KILL_ON_JOB_CLOSE: like on Unix, a finished script may leave
        // background processes behind; kills are explicit.
        // SAFETY: closing the handle we own.
        unsafe { CloseHandle(self.0) };
    }
}

/// Pipe buffer: one read's worth (the runner reads 64 KiB at a time).
const PIPE_BUFFER: u32 = 64 * 1024;

/// One pipe for both output streams: the agent's (async, overlapped) server
/// end and the child's (synchronous) client end. The name is unique per run
/// and `first_pipe_instance` makes creation fail if anyone squatted it.
fn output_pipe(invoke_id: &str) -> std::io::Result<(NamedPipeServer, std::fs::File)> {
    let name = format!(r"\\.\pipe\deckhand-run-{}-{}", std::process::id(), uuid::Uuid::new_v4().simple());
    let server = ServerOptions::new()
        .access_inbound(true)
        .access_outbound(false)
        .first_pipe_instance(true)
        .reject_remote_clients(true)
        .max_instances(1)
        .pipe_mode(PipeMode::Byte)
        .in_buffer_size(PIPE_BUFFER)
        .out_buffer_size(0)
        .create(&name)?;
    let client = std::fs::OpenOptions::new().write(true).open(&name)?;
    // The client is already connected, so this completes at once; it is
    // what tells the event loop to start reading. If it did not complete,
    // the connect is in flight and reading starts when it does.
    if let Some(Err(e)) = server.connect().now_or_never() {
        return Err(e);
    }
    tracing::debug!(invoke_id, pipe = %name, "output pipe created");
    Ok((server, client))
}

pub(crate) fn start(spec: &RunSpec) -> Result<Started, StartError> {
    let interp = interpreter::resolve_interpreter(spec.command_type, &spec.script)?;
    if let Some(u) = spec.username.as_deref().filter(|u| !u.is_empty()) {
        let me = std::env::var("USERNAME").unwrap_or_default();
        if !u.eq_ignore_ascii_case(&me) {
            return Err(StartError::new(
                codes::EXECUTION_EXCEPTION,
                format!("running as another account ({u:?}) is not supported on Windows yet"),
            ));
        }
    }
    env::validate(&spec.env)?;
    let cwd = match spec.working_dir.as_deref().filter(|p| !p.as_os_str().is_empty()) {
        Some(d) if d.is_dir() => d.to_path_buf(),
        Some(d) => {
            return Err(StartError::new(
                codes::DIRECTORY_NOT_EXISTS,
                format!("WorkingDir {} does not exist or is not a directory", d.display()),
            ));
        }
        // Cloud Assistant's default on Windows: the agent's own directory.
        None => std::env::current_dir().unwrap_or_else(|_| PathBuf::from(r"C:\Windows\System32")),
    };
    // Windows PowerShell reads a BOM-less .ps1 in the ANSI code page.
    let content = if interp.extension == "ps1" { format!("\u{feff}{}", spec.script) } else { spec.script.clone() };
    let root = spec.script_root.clone().unwrap_or_else(scriptfile::default_root);
    let script_dir = scriptfile::ScriptDir::create(&root, &spec.invoke_id, interp.extension, &content, None)?;

    let io_err = |what: &str, e: std::io::Error| StartError::new(codes::EXECUTION_EXCEPTION, format!("{what}: {e}"));
    let job = Job::new().map_err(|e| io_err("cannot create job object", e))?;
    let (reader, writer) = output_pipe(&spec.invoke_id).map_err(|e| io_err("cannot create output pipe", e))?;
    let writer2 = writer.try_clone().map_err(|e| io_err("cannot duplicate output pipe", e))?;
    let mut cmd = tokio::process::Command::new(&interp.program);
    cmd.args(interp.argv(script_dir.script()))
        .env_clear()
        .envs(env::windows(&spec.invoke_id, &spec.env))
        .current_dir(&cwd)
        .stdin(Stdio::null())
        .stdout(Stdio::from(writer))
        .stderr(Stdio::from(writer2))
        .creation_flags(CREATE_NEW_PROCESS_GROUP | CREATE_NO_WINDOW)
        .kill_on_drop(true);
    let spawned = cmd.spawn();
    // Drop our copies of the pipe's client end now, or EOF would never come.
    drop(cmd);
    let mut child = spawned.map_err(|e| io_err(&format!("cannot start {}", interp.program.display()), e))?;
    if let Some(h) = child.raw_handle() {
        // SAFETY: both handles are live.
        if unsafe { AssignProcessToJobObject(job.0, h as HANDLE) } == 0 {
            let e = std::io::Error::last_os_error();
            let _ = child.start_kill();
            return Err(io_err("cannot put the script in its job object", e));
        }
    }
    Ok(Started { child, outputs: vec![Box::pin(reader)], group: Box::new(job), script_dir })
}
