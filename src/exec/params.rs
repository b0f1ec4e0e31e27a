//! `{{name}}` parameter rendering (placeholder; see issue 3).

use std::collections::BTreeMap;

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ParamError {
    #[error("parameter `{0}` is used in the script but no value was given")]
    Missing(String),
}

/// Replace `{{name}}` with values; built-ins are passed in `values` too
/// under their full names (`ACS::InstanceId`).
pub fn render(template: &str, values: &BTreeMap<String, String>) -> Result<String, ParamError> {
    let mut out = String::with_capacity(template.len());
    let mut rest = template;
    while let Some(start) = rest.find("{{") {
        let Some(end) = rest[start + 2..].find("}}") else { break };
        let name = rest[start + 2..start + 2 + end].trim();
        out.push_str(&rest[..start]);
        match values.get(name) {
            Some(v) => out.push_str(v),
            None => return Err(ParamError::Missing(name.to_string())),
        }
        rest = &rest[start + 2 + end + 2..];
    }
    out.push_str(rest);
    Ok(out)
}
