//! The wire form of a stored invocation. (Agent reports are applied by
//! the group-commit batch, `batch.rs`.)

use super::super::*;

/// The wire form of a stored invocation for one instance.
pub fn to_wire(inv: &InvocationRow, instance_name: String) -> Invocation {
    Invocation {
        invoke_id: inv.invoke_id.clone(),
        command_id: inv.command_id.clone(),
        command_type: inv.command_type,
        content: inv.content.clone(),
        timeout_secs: inv.timeout_secs.max(0) as u64,
        working_dir: (!inv.working_dir.is_empty()).then(|| inv.working_dir.clone()),
        username: (!inv.username.is_empty()).then(|| inv.username.clone()),
        enable_parameter: inv.enable_parameter,
        parameters: serde_json::from_str(&inv.parameters).unwrap_or_default(),
        repeat_mode: inv.repeat_mode,
        frequency: (!inv.frequency.is_empty()).then(|| inv.frequency.clone()),
        instance_name,
        region_id: String::new(),
        created_at: inv.created_at.clone(),
        revision: inv.revision.max(0) as u64,
        file: inv.file.as_ref().map(|f| Box::new(f.spec.clone())),
        fire_window: inv.repeat_mode == RepeatMode::Period && inv.window.max_concurrency > 0,
    }
}
