//! `{{name}}` parameters: custom ones (with `EnableParameter`) and the
//! built-ins `{{ACS::InstanceId}}`, `{{ACS::InstanceName}}`,
//! `{{ACS::InvokeId}}`, `{{ACS::CommandId}}`, `{{ACS::RegionId}}`.
//!
//! Rules follow Cloud Assistant's CreateCommand: at most 20 custom
//! parameters; names of letters, digits, `-` and `_`, at most 64 bytes,
//! case-insensitive, `ACS::` reserved; spaces and newlines inside `{{ }}`
//! ignored. A `{{…}}` whose inside is not a name (Go templates such as
//! `{{.Name}}`) is left untouched.
//!
//! Values ([`ValuePolicy`]): by default a value is spliced verbatim, as
//! Cloud Assistant does, so an unchanged Cloud Assistant script with a value
//! like `hello world` works. An operator can turn on the strict rule on the
//! hub (`parameter_values = "strict"`): a value is then spliced only if every
//! character is in [`SAFE_VALUE_CHARS`] (ASCII letters, digits and
//! `. _ - : / @ + , =`), which no shell, cmd.exe or PowerShell treats as
//! syntax, whitespace, quote, glob or expansion; any other value is refused
//! *before anything runs*, naming the parameter and the character. Either
//! way every value also travels as an environment variable ([`param_env`]:
//! `DECKHAND_PARAM_<NAME>`), which a script can quote itself
//! (`"$DECKHAND_PARAM_MSG"`) and which no shell re-parses.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::protocol::MAX_SCRIPT_BYTES;

/// Most custom parameters one invocation may carry (Cloud Assistant: 20).
pub const MAX_PARAMS: usize = 20;
/// Longest parameter name, in bytes (Cloud Assistant: 64).
pub const MAX_NAME_BYTES: usize = 64;
/// Longest single value: no value can be larger than a whole script.
pub const MAX_VALUE_BYTES: usize = MAX_SCRIPT_BYTES;
/// Punctuation allowed in a spliced value besides ASCII letters and digits.
pub const SAFE_VALUE_CHARS: &str = "._-:/@+,=";
/// Prefix of the environment variables [`param_env`] produces.
pub const ENV_PREFIX: &str = "DECKHAND_PARAM_";

const BUILTIN_PREFIX: &str = "acs::";

/// Which custom parameter values may be spliced into a script.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ValuePolicy {
    /// Cloud Assistant's behaviour: any value (but NUL) is spliced as given.
    #[default]
    Any,
    /// Only values made of [`SAFE_VALUE_CHARS`], letters and digits: a value
    /// can never add shell syntax to a command its sender may not change.
    Strict,
}

impl ValuePolicy {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Any => "any",
            Self::Strict => "strict",
        }
    }
}

/// Values of the built-in parameters, filled in by the agent.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Builtins {
    pub instance_id: String,
    pub instance_name: String,
    pub invoke_id: String,
    pub command_id: String,
    pub region_id: String,
}

impl Builtins {
    /// (canonical name, value) of every built-in.
    fn entries(&self) -> [(&'static str, &str); 5] {
        [
            ("ACS::InstanceId", &self.instance_id),
            ("ACS::InstanceName", &self.instance_name),
            ("ACS::InvokeId", &self.invoke_id),
            ("ACS::CommandId", &self.command_id),
            ("ACS::RegionId", &self.region_id),
        ]
    }
}

#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum ParamError {
    #[error("parameter `{0}` is used in the script but no value was given")]
    Missing(String),
    #[error("{count} custom parameters given; the limit is {MAX_PARAMS}")]
    TooMany { count: usize },
    #[error("parameter name {0:?} is invalid: use 1 to {MAX_NAME_BYTES} bytes of letters, digits, '-' and '_'")]
    BadName(String),
    #[error("parameter name {0:?} is invalid: the ACS:: prefix is reserved for built-in parameters")]
    ReservedName(String),
    #[error("parameter names {0:?} and {1:?} differ only in case; names are case-insensitive")]
    DuplicateName(String, String),
    #[error(
        "built-in parameter `{0}` does not exist; known: ACS::InstanceId, ACS::InstanceName, ACS::InvokeId, ACS::CommandId, ACS::RegionId"
    )]
    UnknownBuiltin(String),
    #[error("value of parameter `{name}` is a JSON {kind}; use a string, number, boolean or null")]
    BadValueType { name: String, kind: &'static str },
    #[error("value of parameter `{name}` is {len} bytes; the limit is {MAX_VALUE_BYTES}")]
    ValueTooLong { name: String, len: usize },
    #[error("value of parameter `{name}` contains a NUL character")]
    NulInValue { name: String },
    #[error(
        "value of parameter `{name}` contains {ch:?}, which is not allowed in a value put into a script \
         under the hub's strict parameter_values setting (allowed: ASCII letters, digits and \
         {SAFE_VALUE_CHARS}); pass arbitrary text through the environment variable {env} instead"
    )]
    UnsafeValue { name: String, ch: char, env: String },
    #[error("the script is {len} bytes after parameters are filled in; the limit is {MAX_SCRIPT_BYTES}")]
    TooLarge { len: usize },
}

impl ParamError {
    /// The error code the agent reports for this failure.
    pub fn error_code(&self) -> &'static str {
        match self {
            ParamError::Missing(_) => "MissingParameter",
            ParamError::TooLarge { .. } => super::codes::INVALID_COMMAND_CONTENT,
            _ => "InvalidParameter.Parameters",
        }
    }
}

/// Render a Cloud Assistant command: with `enable_parameter` false the
/// content is returned unchanged (`{{…}}` stays literal, as Cloud Assistant
/// does); otherwise every `{{name}}` / `{{ACS::…}}` is replaced under
/// `policy` (module doc).
pub fn render_script(
    content: &str,
    enable_parameter: bool,
    custom: &Map<String, Value>,
    builtins: &Builtins,
    policy: ValuePolicy,
) -> Result<String, ParamError> {
    if !enable_parameter {
        return Ok(content.to_string());
    }
    let values = custom_values(custom)?;
    let mut all: BTreeMap<String, (String, String)> = values.into_iter().map(|(name, v)| (name.to_ascii_lowercase(), (name, v))).collect();
    for (name, v) in builtins.entries() {
        all.insert(name.to_ascii_lowercase(), (name.to_string(), v.to_string()));
    }
    substitute(content, &all, policy)
}

/// Environment variables carrying every custom value verbatim:
/// `DECKHAND_PARAM_<NAME>` (upper-cased, `-` → `_`), to put in `RunSpec::env`.
/// Only NUL is refused (an environment cannot hold it).
pub fn param_env(custom: &Map<String, Value>) -> Result<Vec<(String, String)>, ParamError> {
    Ok(custom_values(custom)?.into_iter().map(|(name, v)| (env_name(&name), v)).collect())
}

fn env_name(name: &str) -> String {
    format!("{ENV_PREFIX}{}", name.to_ascii_uppercase().replace('-', "_"))
}

/// Validate names, count and value types; values as strings.
fn custom_values(custom: &Map<String, Value>) -> Result<Vec<(String, String)>, ParamError> {
    if custom.len() > MAX_PARAMS {
        return Err(ParamError::TooMany { count: custom.len() });
    }
    let mut seen: BTreeMap<String, String> = BTreeMap::new();
    let mut out = Vec::with_capacity(custom.len());
    for (name, v) in custom {
        if has_builtin_prefix(name) {
            return Err(ParamError::ReservedName(name.clone()));
        }
        if !valid_name(name) {
            return Err(ParamError::BadName(name.clone()));
        }
        if let Some(prev) = seen.insert(name.to_ascii_lowercase(), name.clone()) {
            return Err(ParamError::DuplicateName(prev, name.clone()));
        }
        let s = match v {
            Value::String(s) => s.clone(),
            Value::Number(n) => n.to_string(),
            Value::Bool(b) => b.to_string(),
            Value::Null => String::new(),
            Value::Array(_) => return Err(ParamError::BadValueType { name: name.clone(), kind: "array" }),
            Value::Object(_) => return Err(ParamError::BadValueType { name: name.clone(), kind: "object" }),
        };
        if s.len() > MAX_VALUE_BYTES {
            return Err(ParamError::ValueTooLong { name: name.clone(), len: s.len() });
        }
        if s.contains('\0') {
            return Err(ParamError::NulInValue { name: name.clone() });
        }
        out.push((name.clone(), s));
    }
    Ok(out)
}

/// `s` without a leading `ACS::` (any case). Compares bytes, never slices
/// text at a byte index that could fall inside a multi-byte character.
fn strip_builtin_prefix(s: &str) -> Option<&str> {
    let head = s.as_bytes().get(..BUILTIN_PREFIX.len())?;
    // The prefix is ASCII, so a match ends on a character boundary.
    if head.eq_ignore_ascii_case(BUILTIN_PREFIX.as_bytes()) { s.get(BUILTIN_PREFIX.len()..) } else { None }
}

fn has_builtin_prefix(s: &str) -> bool {
    strip_builtin_prefix(s).is_some()
}

fn valid_name(n: &str) -> bool {
    !n.is_empty() && n.len() <= MAX_NAME_BYTES && n.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

fn name_chars(n: &str) -> bool {
    !n.is_empty() && n.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// Whether `v` may be spliced into a script.
pub fn is_safe_value(v: &str) -> Result<(), char> {
    match v.chars().find(|c| !(c.is_ascii_alphanumeric() || SAFE_VALUE_CHARS.contains(*c))) {
        Some(c) => Err(c),
        None => Ok(()),
    }
}

/// What the inside of one `{{ }}` is.
enum Placeholder<'a> {
    Custom(&'a str),
    Builtin(&'a str),
    /// Not a parameter reference: leave the text alone.
    Literal,
}

fn classify(inner: &str) -> Result<Placeholder<'_>, ParamError> {
    let t = inner.trim_matches([' ', '\t', '\r', '\n']);
    if let Some(rest) = strip_builtin_prefix(t) {
        return Ok(if name_chars(rest) { Placeholder::Builtin(t) } else { Placeholder::Literal });
    }
    if !name_chars(t) {
        return Ok(Placeholder::Literal);
    }
    if t.len() > MAX_NAME_BYTES {
        return Err(ParamError::BadName(t.to_string()));
    }
    Ok(Placeholder::Custom(t))
}

/// The custom parameter names a script uses, first spelling kept, in
/// order; by the same rules as rendering (built-ins and non-parameter
/// `{{…}}` such as `{{.Name}}` are not listed; names compare case-insensitively).
pub fn custom_names(template: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    let mut rest = template;
    while let Some((_, after)) = rest.split_once("{{") {
        let Some((inner, tail)) = after.split_once("}}") else { break };
        if let Ok(Placeholder::Custom(n)) = classify(inner) {
            if !out.iter().any(|o| o.eq_ignore_ascii_case(n)) {
                out.push(n.to_string());
            }
            rest = tail;
        } else {
            rest = after;
        }
    }
    out
}

/// `values`: lower-cased name → (display name, value).
fn substitute(template: &str, values: &BTreeMap<String, (String, String)>, policy: ValuePolicy) -> Result<String, ParamError> {
    let mut out = String::with_capacity(template.len());
    let mut rest = template;
    while let Some((before, after)) = rest.split_once("{{") {
        let Some((inner, tail)) = after.split_once("}}") else { break };
        let (name, builtin) = match classify(inner)? {
            Placeholder::Literal => {
                out.push_str(before);
                out.push_str("{{");
                rest = after;
                continue;
            }
            Placeholder::Custom(n) => (n, false),
            Placeholder::Builtin(n) => (n, true),
        };
        let Some((display, value)) = values.get(&name.to_ascii_lowercase()) else {
            return Err(if builtin { ParamError::UnknownBuiltin(name.to_string()) } else { ParamError::Missing(name.to_string()) });
        };
        if policy == ValuePolicy::Strict
            && let Err(ch) = is_safe_value(value)
        {
            let env = if builtin { "(built-ins have none)".to_string() } else { env_name(display) };
            return Err(ParamError::UnsafeValue { name: display.clone(), ch, env });
        }
        out.push_str(before);
        out.push_str(value);
        rest = tail;
        if out.len() > MAX_SCRIPT_BYTES {
            return Err(ParamError::TooLarge { len: out.len().saturating_add(rest.len()) });
        }
    }
    out.push_str(rest);
    if out.len() > MAX_SCRIPT_BYTES {
        return Err(ParamError::TooLarge { len: out.len() });
    }
    Ok(out)
}

#[cfg(test)]
mod tests;
