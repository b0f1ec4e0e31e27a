//! `RepeatMode` and the boot-triggered modes (`NextRebootOnly`,
//! `EveryReboot`). Owns the rule deciding whether a reboot has happened
//! since an invocation last looked, by comparing boot ids (Linux
//! `/proc/sys/kernel/random/boot_id`; see `agent::identity::boot_id`).

/// The type lives in the lifecycle module; the scheduler re-exports it
/// for its own callers.
pub use crate::lifecycle::RepeatMode;

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
