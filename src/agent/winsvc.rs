//! Running the agent as a Windows service (the Service Control Manager
//! starts `deckhand-agent windows-service`). Scripts are confined to Job
//! Objects by the exec engine; this file only speaks to the SCM: report
//! Running, turn Stop/Shutdown into the agent's shutdown token, report
//! Stopped with the agent's exit status.
//!
//! Install (elevated prompt):
//! `sc.exe create deckhand-agent binPath= "C:\Program Files\deckhand\deckhand-agent.exe windows-service" start= auto`
//! with `C:\ProgramData\deckhand\agent.toml` holding the configuration.

#![cfg(windows)]

use std::ffi::OsString;
use std::sync::OnceLock;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use windows_service::service::{ServiceControl, ServiceControlAccept, ServiceExitCode, ServiceState, ServiceStatus, ServiceType};
use windows_service::service_control_handler::{self, ServiceControlHandlerResult};
use windows_service::{define_windows_service, service_dispatcher};

use super::AgentConfig;

pub const SERVICE_NAME: &str = "deckhand-agent";
/// Where the service reads its configuration.
pub const CONFIG_PATH: &str = r"C:\ProgramData\deckhand\agent.toml";

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
    let _ = handle.set_service_status(status(ServiceState::Stopped, ServiceControlAccept::empty(), code));
}
