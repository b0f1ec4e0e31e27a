//! Convenience for the agent: one protocol [`Invocation`] → a ready
//! [`RunSpec`], parameters rendered and exported under the rules of
//! [`super::params`]. A parameter problem is returned before anything runs.

use std::time::Duration;

use super::params::{self, Builtins, ParamError, ValuePolicy};
use super::{DEFAULT_TIMEOUT, RunSpec};
use crate::protocol::Invocation;

/// Build the spec for `inv` on the instance `instance_id`. `timeout_secs` 0
/// means Cloud Assistant's default (60 s). Custom parameters are also passed
/// as `DECKHAND_PARAM_*` variables when `enable_parameter` is set.
pub fn spec_for(inv: &Invocation, instance_id: &str) -> Result<RunSpec, ParamError> {
    let builtins = Builtins {
        instance_id: instance_id.to_string(),
        instance_name: inv.instance_name.clone(),
        invoke_id: inv.invoke_id.clone(),
        command_id: inv.command_id.clone(),
        region_id: inv.region_id.clone(),
    };
    // The strict value rule, when an operator wants it, is the hub's to
    // enforce when the invocation is created; the agent splices as Cloud
    // Assistant's client does.
    let script = params::render_script(&inv.content, inv.enable_parameter, &inv.parameters, &builtins, ValuePolicy::Any)?;
    let env = if inv.enable_parameter { params::param_env(&inv.parameters)? } else { Vec::new() };
    Ok(RunSpec {
        working_dir: inv.working_dir.as_deref().filter(|d| !d.is_empty()).map(Into::into),
        username: inv.username.clone().filter(|u| !u.is_empty()),
        timeout: if inv.timeout_secs == 0 { DEFAULT_TIMEOUT } else { Duration::from_secs(inv.timeout_secs) },
        env,
        ..RunSpec::new(inv.invoke_id.clone(), inv.command_type, script)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn renders_and_exports() {
        let inv: Invocation = serde_json::from_value(json!({
            "invoke_id": "t-1", "command_id": "c-1", "command_type": "RunShellScript",
            "content": "echo {{name}} {{ACS::InstanceId}} {{ACS::InvokeId}}", "timeout_secs": 0,
            "working_dir": "", "enable_parameter": true, "parameters": {"name": "Jack"},
        }))
        .unwrap();
        let s = spec_for(&inv, "i-9").unwrap();
        assert_eq!(s.script, "echo Jack i-9 t-1");
        assert_eq!(s.env, vec![("DECKHAND_PARAM_NAME".to_string(), "Jack".to_string())]);
        assert_eq!(s.timeout, DEFAULT_TIMEOUT);
        assert_eq!(s.working_dir, None);
        let mut spaced = inv.clone();
        spaced.parameters = json!({"name": "hello world"}).as_object().unwrap().clone();
        assert!(spec_for(&spaced, "i-9").unwrap().script.starts_with("echo hello world i-9"));
        let mut bad = inv.clone();
        bad.parameters = json!({"abcdé": "1"}).as_object().unwrap().clone();
        assert!(matches!(spec_for(&bad, "i-9"), Err(ParamError::BadName(_))));
    }
}
