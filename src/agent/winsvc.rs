//! Running the agent as a Windows service, and registering it with the
//! Service Control Manager. Scripts are confined to Job Objects by the exec
//! engine; this file only speaks to the SCM:
//! - [`run`] (the `deckhand-agent windows-service` entry the SCM starts):
//!   report Running, turn Stop/Shutdown into the agent's shutdown token,
//!   report Stopped with the agent's exit status (0 after a requested stop).
//! - [`install`] / [`uninstall`] (`deckhand-agent service install|uninstall`,
//!   elevated prompt): create or update the service (automatic start,
//!   description, restart on failure), or stop and delete it.
//!
//! Configuration: `%ProgramData%\deckhand\agent.toml` unless `--config` was
//! given to `service install` (then the service is started with it).

#![cfg(windows)]

use std::ffi::{OsStr, OsString};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;
use windows_service::service::{
    ServiceAccess, ServiceAction, ServiceActionType, ServiceControl, ServiceControlAccept, ServiceErrorControl, ServiceExitCode,
    ServiceFailureActions, ServiceFailureResetPeriod, ServiceInfo, ServiceStartType, ServiceState, ServiceStatus, ServiceType,
};
use windows_service::service_control_handler::{self, ServiceControlHandlerResult};
use windows_service::service_manager::{ServiceManager, ServiceManagerAccess};
use windows_service::{define_windows_service, service_dispatcher};

use super::AgentConfig;

pub const SERVICE_NAME: &str = "deckhand-agent";
const DISPLAY_NAME: &str = "deckhand agent";
const DESCRIPTION: &str = "deckhand node agent: runs commands sent by the deckhand hub (Cloud Assistant-compatible).";
/// The argument that makes `deckhand-agent` speak to the SCM.
const SERVICE_ARG: &str = "windows-service";
/// Restart delays after the first, second and later failures; the failure
/// count resets after a day without one. Short first delay: a crash should
/// not leave the node unmanaged; growing ones: a crash loop should not spin.
const RESTART_DELAYS: [Duration; 3] = [Duration::from_secs(5), Duration::from_secs(30), Duration::from_secs(120)];
const FAILURE_RESET: Duration = Duration::from_secs(24 * 3600);
/// How long `uninstall` waits for the running service to reach STOPPED (the
/// agent stops within its shutdown grace; the SCM's own limit is similar).
const STOP_WAIT: Duration = Duration::from_secs(60);
/// Win32 `ERROR_SERVICE_DOES_NOT_EXIST`.
const ERROR_SERVICE_DOES_NOT_EXIST: i32 = 1060;
/// Win32 `ERROR_INVALID_LEVEL` (a configuration level the SCM lacks).
const ERROR_INVALID_LEVEL: i32 = 124;
/// Win32 `ERROR_SERVICE_NOT_ACTIVE` (stop sent to a service already stopping).
const ERROR_SERVICE_NOT_ACTIVE: i32 = 1062;

/// Where the service reads its configuration by default.
pub fn config_path() -> PathBuf {
    super::config::default_path()
}

/// A failed service-manager operation, naming which one.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error("{op}: {source}")]
    Scm { op: &'static str, source: windows_service::Error },
    #[error("cannot locate this executable: {0}")]
    Exe(std::io::Error),
    #[error("config file {path}: {source}")]
    Config { path: PathBuf, source: std::io::Error },
    #[error("service deckhand-agent is not installed")]
    NotInstalled,
    #[error("service deckhand-agent did not reach STOPPED within {0:?}; not deleted")]
    StopTimeout(Duration),
}

fn scm(op: &'static str) -> impl FnOnce(windows_service::Error) -> ServiceError {
    move |source| ServiceError::Scm { op, source }
}

fn win32_code(e: &windows_service::Error) -> Option<i32> {
    match e {
        windows_service::Error::Winapi(io) => io.raw_os_error(),
        _ => None,
    }
}

static CONFIG: OnceLock<AgentConfig> = OnceLock::new();

define_windows_service!(ffi_service_main, service_main);

/// Hands control to the SCM; returns when the service stops.
pub fn run(config: AgentConfig) -> Result<(), windows_service::Error> {
    let _ = CONFIG.set(config);
    service_dispatcher::start(SERVICE_NAME, ffi_service_main)
}

fn status(state: ServiceState, accept: ServiceControlAccept, code: u32) -> ServiceStatus {
    ServiceStatus {
        service_type: ServiceType::OWN_PROCESS,
        current_state: state,
        controls_accepted: accept,
        exit_code: ServiceExitCode::Win32(code),
        checkpoint: 0,
        wait_hint: Duration::from_secs(10),
        process_id: None,
    }
}

fn service_main(_args: Vec<OsString>) {
    let Some(config) = CONFIG.get().cloned() else { return };
    let shutdown = CancellationToken::new();
    let stop = shutdown.clone();
    let handler = move |event| match event {
        ServiceControl::Stop | ServiceControl::Shutdown => {
            stop.cancel();
            ServiceControlHandlerResult::NoError
        }
        ServiceControl::Interrogate => ServiceControlHandlerResult::NoError,
        _ => ServiceControlHandlerResult::NotImplemented,
    };
    let Ok(handle) = service_control_handler::register(SERVICE_NAME, handler) else { return };
    let _ = handle.set_service_status(status(ServiceState::Running, ServiceControlAccept::STOP | ServiceControlAccept::SHUTDOWN, 0));
    let code = match tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build() {
        Ok(rt) => match rt.block_on(super::run(config, shutdown)) {
            Ok(()) => 0,
            Err(e) => {
                tracing::error!(error = %e, "agent stopped with an error");
                1
            }
        },
        Err(_) => 1,
    };
    if code == 0 {
        tracing::info!("service stopped");
    }
    // A non-zero code counts as a failure for the recovery actions
    // (`install` enables them for non-crash failures), so the SCM restarts us.
    let _ = handle.set_service_status(status(ServiceState::Stopped, ServiceControlAccept::empty(), code));
}

/// What the SCM runs: this executable with `[--config PATH] windows-service`.
fn launch_arguments(config: Option<&Path>) -> Vec<OsString> {
    let mut args = Vec::new();
    if let Some(c) = config {
        args.push(OsString::from("--config"));
        args.push(c.as_os_str().to_owned());
    }
    args.push(OsString::from(SERVICE_ARG));
    args
}

/// Registers (or, when it exists, updates) the service: automatic start as
/// LocalSystem, description, restart on failure (crashes and non-zero exit
/// codes alike). Does not start it. `config` must exist; it is stored as an
/// absolute path, since the SCM starts the service in `System32`.
pub fn install(config: Option<&Path>) -> Result<(), ServiceError> {
    let exe = std::env::current_exe().map_err(ServiceError::Exe)?;
    let config = match config {
        Some(c) => {
            let abs = std::path::absolute(c).map_err(|e| ServiceError::Config { path: c.to_path_buf(), source: e })?;
            if !abs.is_file() {
                let e = std::io::Error::new(std::io::ErrorKind::NotFound, "not a file");
                return Err(ServiceError::Config { path: abs, source: e });
            }
            Some(abs)
        }
        None => None,
    };
    let info = ServiceInfo {
        name: OsString::from(SERVICE_NAME),
        display_name: OsString::from(DISPLAY_NAME),
        service_type: ServiceType::OWN_PROCESS,
        start_type: ServiceStartType::AutoStart,
        error_control: ServiceErrorControl::Normal,
        executable_path: exe,
        launch_arguments: launch_arguments(config.as_deref()),
        dependencies: vec![],
        account_name: None, // LocalSystem: scripts run as the machine's administrator, like Cloud Assistant's.
        account_password: None,
    };
    let manager = ServiceManager::local_computer(None::<&OsStr>, ServiceManagerAccess::CONNECT | ServiceManagerAccess::CREATE_SERVICE)
        .map_err(scm("connect to the service manager"))?;
    let access = ServiceAccess::CHANGE_CONFIG | ServiceAccess::QUERY_CONFIG | ServiceAccess::START;
    let service = match manager.open_service(SERVICE_NAME, access) {
        Ok(s) => {
            s.change_config(&info).map_err(scm("update the existing service"))?;
            tracing::info!(service = SERVICE_NAME, "existing service updated");
            s
        }
        Err(e) if win32_code(&e) == Some(ERROR_SERVICE_DOES_NOT_EXIST) => {
            manager.create_service(&info, access).map_err(scm("create the service"))?
        }
        Err(e) => return Err(ServiceError::Scm { op: "open the service", source: e }),
    };
    service.set_description(DESCRIPTION).map_err(scm("set the description"))?;
    let actions = RESTART_DELAYS.iter().map(|d| ServiceAction { action_type: ServiceActionType::Restart, delay: *d }).collect();
    service
        .update_failure_actions(ServiceFailureActions {
            reset_period: ServiceFailureResetPeriod::After(FAILURE_RESET),
            reboot_msg: None,
            command: None,
            actions: Some(actions),
        })
        .map_err(scm("set the recovery actions"))?;
    match service.set_failure_actions_on_non_crash_failures(true) {
        Ok(()) => {}
        // Every Windows since Vista has this level; Wine's service manager
        // does not. Recovery then covers crashes only: say so, do not fail.
        Err(e) if win32_code(&e) == Some(ERROR_INVALID_LEVEL) => {
            tracing::warn!("this service manager cannot apply the recovery actions to non-crash failures; they cover crashes only");
        }
        Err(e) => return Err(ServiceError::Scm { op: "enable recovery on non-crash failures", source: e }),
    }
    Ok(())
}

/// Stops the service if it runs (waiting for STOPPED), then deletes it.
pub fn uninstall() -> Result<(), ServiceError> {
    let manager =
        ServiceManager::local_computer(None::<&OsStr>, ServiceManagerAccess::CONNECT).map_err(scm("connect to the service manager"))?;
    let service = match manager.open_service(SERVICE_NAME, ServiceAccess::QUERY_STATUS | ServiceAccess::STOP | ServiceAccess::DELETE) {
        Ok(s) => s,
        Err(e) if win32_code(&e) == Some(ERROR_SERVICE_DOES_NOT_EXIST) => return Err(ServiceError::NotInstalled),
        Err(e) => return Err(ServiceError::Scm { op: "open the service", source: e }),
    };
    let state = service.query_status().map_err(scm("query the service"))?.current_state;
    if state != ServiceState::Stopped {
        match service.stop() {
            Ok(_) => {}
            Err(e) if win32_code(&e) == Some(ERROR_SERVICE_NOT_ACTIVE) => {}
            Err(e) => return Err(ServiceError::Scm { op: "stop the service", source: e }),
        }
        let deadline = Instant::now() + STOP_WAIT;
        loop {
            if service.query_status().map_err(scm("query the service"))?.current_state == ServiceState::Stopped {
                break;
            }
            if Instant::now() > deadline {
                return Err(ServiceError::StopTimeout(STOP_WAIT));
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }
    service.delete().map_err(scm("delete the service"))?;
    Ok(())
}
