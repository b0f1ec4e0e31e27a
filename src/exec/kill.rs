//! Unix process-group signalling: the run's shell is a session leader, so
//! its pgid names the whole tree it started (unless a descendant calls
//! `setsid` itself — documented in docs/exec.md).

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;

use super::spawn::Group;

#[derive(Debug)]
pub struct ProcessGroup {
    pgid: Pid,
}

impl ProcessGroup {
    pub fn new(pgid: u32) -> Self {
        Self { pgid: Pid::from_raw(pgid as i32) }
    }
}

impl Group for ProcessGroup {
    fn terminate(&self) {
        let _ = killpg(self.pgid, Signal::SIGTERM);
        // A stopped process would only see SIGTERM once continued.
        let _ = killpg(self.pgid, Signal::SIGCONT);
    }

    fn kill(&self) {
        let _ = killpg(self.pgid, Signal::SIGKILL);
    }

    fn alive(&self) -> bool {
        // Signal 0 only checks existence; ESRCH means the group is empty.
        killpg(self.pgid, None).is_ok()
    }
}
