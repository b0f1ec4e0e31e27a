//! `RepeatMode` and the boot-triggered modes (`NextRebootOnly`,
//! `EveryReboot`). Owns the rule deciding whether a reboot has happened
//! since an invocation last looked, by comparing boot ids (Linux
//! `/proc/sys/kernel/random/boot_id`; see `agent::identity::boot_id`).

use super::ScheduleError;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RepeatMode {
    /// Run once, now.
    Once,
    /// Run on the `Frequency` schedule.
    Period,
    /// Run once, after the next boot of the instance.
    NextRebootOnly,
    /// Run after every boot of the instance.
    EveryReboot,
}

impl RepeatMode {
    pub const ALL: [RepeatMode; 4] = [RepeatMode::Once, RepeatMode::Period, RepeatMode::NextRebootOnly, RepeatMode::EveryReboot];

    /// Exact, case-sensitive names as the Cloud Assistant API spells them.
    pub fn parse(s: &str) -> Result<RepeatMode, ScheduleError> {
        RepeatMode::ALL.into_iter().find(|m| m.as_str() == s).ok_or_else(|| ScheduleError::RepeatMode {
            value: s.chars().take(64).collect(),
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            RepeatMode::Once => "Once",
            RepeatMode::Period => "Period",
            RepeatMode::NextRebootOnly => "NextRebootOnly",
            RepeatMode::EveryReboot => "EveryReboot",
        }
    }

    /// Whether the mode ends after its first run (the invocation then
    /// finishes) or stays armed for further fires until stopped.
    pub fn is_repeating(self) -> bool {
        matches!(self, RepeatMode::Period | RepeatMode::EveryReboot)
    }
}

impl std::fmt::Display for RepeatMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Whether a boot-triggered invocation should run now.
///
/// `last_boot_id_seen` is the boot id the agent stored for the invocation:
/// the boot on which it was accepted, then (for `EveryReboot`) the boot on
/// which it last ran. It is due exactly when that differs from the current
/// boot id. `None` (nothing stored yet) is not due: the caller stores
/// `current_boot_id` now, so the *next* boot triggers it, never this one.
/// An empty id on either side means "unknown" and is never due, so a
/// failure to read the boot id cannot fire a run on every agent start.
///
/// After a run: `NextRebootOnly` finishes; `EveryReboot` stores
/// `current_boot_id` as seen. `Once` and `Period` are never boot-triggered.
pub fn reboot_due(mode: RepeatMode, last_boot_id_seen: Option<&str>, current_boot_id: &str) -> bool {
    match mode {
        RepeatMode::Once | RepeatMode::Period => false,
        RepeatMode::NextRebootOnly | RepeatMode::EveryReboot => match last_boot_id_seen {
            Some(seen) => !seen.is_empty() && !current_boot_id.is_empty() && seen != current_boot_id,
            None => false,
        },
    }
}
