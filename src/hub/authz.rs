//! Who may do what (issue #18): the typed access policy of a stored
//! AccessKey, parsed once from its JSON document, and its pure evaluation.
//!
//! Owns: the policy model ([`Policy`]), the caller as authorization sees it
//! ([`Principal`]), the facts of one API call ([`Access`]) and the decision
//! ([`check`]). No I/O here: the API layer gathers the facts (instance
//! tags, a saved command's type) and asks; the audit trail and key storage
//! live in the store. Semantics and examples: docs/permissions.md.

use std::sync::Arc;

use serde::Deserialize;

use crate::exec::params::ValuePolicy;
use crate::lifecycle::CommandType;

/// A policy document larger than this is refused when set: it is stored
/// per key and parsed on every call by that key.
pub const MAX_DOCUMENT_BYTES: usize = 64 * 1024;
/// Statements per document.
pub const MAX_STATEMENTS: usize = 256;
/// Patterns per statement field.
pub const MAX_PATTERNS: usize = 256;
/// Characters per pattern.
pub const MAX_PATTERN_CHARS: usize = 256;

/// The name a call without `Username` runs as, in `Username` conditions:
/// the agent's default run-as user (root on Linux, System on Windows).
pub const DEFAULT_USER: &str = "default";

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PolicyError {
    #[error("policy document is {0} bytes, the limit is {MAX_DOCUMENT_BYTES}")]
    TooLarge(usize),
    #[error("policy document is not valid: {0}")]
    Json(String),
    #[error("policy Version {0:?} is not supported (use \"1\")")]
    Version(String),
    #[error("policy has {0} statements, the limit is {MAX_STATEMENTS}")]
    TooManyStatements(usize),
    #[error("statement {index}: {field} has {count} patterns, the limit is {MAX_PATTERNS}")]
    TooManyPatterns { index: usize, field: &'static str, count: usize },
    #[error("statement {index}: a {field} pattern is longer than {MAX_PATTERN_CHARS} characters")]
    PatternTooLong { index: usize, field: &'static str },
    #[error("statement {index}: {field} must not be empty")]
    Empty { index: usize, field: &'static str },
    #[error("statement {index}: Instance pattern {pattern:?} is not an id pattern or tag:KEY=VALUE")]
    BadInstance { index: usize, pattern: String },
    #[error("statement {index}: CommandType {name:?} is not a command type")]
    BadCommandType { index: usize, name: String },
}

/// `"x"` or `["x", "y"]`, as RAM documents allow.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

impl OneOrMany {
    fn into_vec(self) -> Vec<String> {
        match self {
            OneOrMany::One(s) => vec![s],
            OneOrMany::Many(v) => v,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "PascalCase")]
struct RawPolicy {
    version: Option<String>,
    statement: Vec<RawStatement>,
    parameter_values: Option<ValuePolicy>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "PascalCase")]
struct RawStatement {
    effect: Effect,
    action: OneOrMany,
    instance: Option<OneOrMany>,
    command_type: Option<OneOrMany>,
    command_id: Option<OneOrMany>,
    username: Option<OneOrMany>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum Effect {
    Allow,
    Deny,
}

/// `*` (any run, possibly empty) and `?` (one character) wildcards,
/// sorted at parse time into the shapes that need no general matching
/// (exact names, `Describe*` prefixes, `*`): evaluation runs on every API
/// call and allocates nothing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pattern {
    shape: Shape,
    /// Actions compare ASCII case-insensitively, as RAM's do; the pattern
    /// is stored lower-cased.
    fold: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Shape {
    Any,
    Exact(String),
    Prefix(String),
    Glob(Vec<char>),
}

impl Pattern {
    fn new(s: &str, fold: bool) -> Self {
        let p = if fold { s.to_ascii_lowercase() } else { s.to_string() };
        let shape = match p.strip_suffix('*') {
            _ if p == "*" => Shape::Any,
            _ if !p.contains(['*', '?']) => Shape::Exact(p),
            Some(head) if !head.contains(['*', '?']) => Shape::Prefix(head.to_string()),
            _ => Shape::Glob(p.chars().collect()),
        };
        Self { shape, fold }
    }

    pub fn matches(&self, text: &str) -> bool {
        let eq = |a: &str, b: &str| if self.fold { a.eq_ignore_ascii_case(b) } else { a == b };
        match &self.shape {
            Shape::Any => true,
            Shape::Exact(p) => eq(p, text),
            Shape::Prefix(p) => text.get(..p.len()).is_some_and(|head| eq(p, head)),
            Shape::Glob(p) => glob(p, text, self.fold),
        }
    }
}

/// Iterative wildcard match with a single back-tracking point: linear in
/// practice, never exponential (a hostile pattern cannot stall a call).
fn glob(p: &[char], text: &str, fold: bool) -> bool {
    let t: Vec<char> = if fold { text.chars().map(|c| c.to_ascii_lowercase()).collect() } else { text.chars().collect() };
    let (mut pi, mut ti) = (0usize, 0usize);
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        match p.get(pi) {
            Some('*') => {
                star = Some((pi, ti));
                pi += 1;
            }
            Some(c) if *c == '?' || Some(c) == t.get(ti) => {
                pi += 1;
                ti += 1;
            }
            _ => match star {
                Some((sp, st)) => {
                    pi = sp + 1;
                    ti = st + 1;
                    star = Some((sp, st + 1));
                }
                None => return false,
            },
        }
    }
    p.get(pi..).is_some_and(|rest| rest.iter().all(|c| *c == '*'))
}

/// One instance pattern: an id pattern, or `tag:KEY=VALUE` (value may use
/// wildcards; the key is exact).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InstancePattern {
    Id(Pattern),
    Tag { key: String, value: Pattern },
}

impl InstancePattern {
    fn matches(&self, t: &Target<'_>) -> bool {
        match self {
            InstancePattern::Id(p) => p.matches(t.id),
            InstancePattern::Tag { key, value } => t.tags.iter().any(|(k, v)| k == key && value.matches(v)),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Statement {
    pub effect: Effect,
    actions: Vec<Pattern>,
    /// `None`: any instance (and calls naming none).
    instances: Option<Vec<InstancePattern>>,
    command_types: Option<Vec<CommandType>>,
    command_ids: Option<Vec<Pattern>>,
    usernames: Option<Vec<Pattern>>,
}

/// A parsed policy document.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    statements: Vec<Statement>,
    parameter_values: Option<ValuePolicy>,
}

fn patterns(index: usize, field: &'static str, v: OneOrMany, fold: bool) -> Result<Vec<Pattern>, PolicyError> {
    checked(index, field, v)?.iter().map(|s| Ok(Pattern::new(s, fold))).collect()
}

fn checked(index: usize, field: &'static str, v: OneOrMany) -> Result<Vec<String>, PolicyError> {
    let v = v.into_vec();
    if v.is_empty() {
        return Err(PolicyError::Empty { index, field });
    }
    if v.len() > MAX_PATTERNS {
        return Err(PolicyError::TooManyPatterns { index, field, count: v.len() });
    }
    if v.iter().any(|s| s.chars().count() > MAX_PATTERN_CHARS) {
        return Err(PolicyError::PatternTooLong { index, field });
    }
    Ok(v)
}

impl Policy {
    /// Parses and bounds a document; every name is checked here so a
    /// stored policy is always one the evaluator understands.
    pub fn parse(doc: &str) -> Result<Self, PolicyError> {
        if doc.len() > MAX_DOCUMENT_BYTES {
            return Err(PolicyError::TooLarge(doc.len()));
        }
        let raw: RawPolicy = serde_json::from_str(doc).map_err(|e| PolicyError::Json(e.to_string()))?;
        if let Some(v) = &raw.version
            && v != "1"
        {
            return Err(PolicyError::Version(v.clone()));
        }
        if raw.statement.len() > MAX_STATEMENTS {
            return Err(PolicyError::TooManyStatements(raw.statement.len()));
        }
        let mut statements = Vec::with_capacity(raw.statement.len());
        for (index, s) in raw.statement.into_iter().enumerate() {
            let instances = match s.instance {
                None => None,
                Some(v) => Some(
                    checked(index, "Instance", v)?
                        .into_iter()
                        .map(|p| match p.strip_prefix("tag:") {
                            Some(kv) => match kv.split_once('=') {
                                Some((k, v)) if !k.is_empty() => {
                                    Ok(InstancePattern::Tag { key: k.to_string(), value: Pattern::new(v, false) })
                                }
                                _ => Err(PolicyError::BadInstance { index, pattern: p.clone() }),
                            },
                            None => Ok(InstancePattern::Id(Pattern::new(&p, false))),
                        })
                        .collect::<Result<Vec<_>, _>>()?,
                ),
            };
            let command_types = match s.command_type {
                None => None,
                Some(v) => Some(
                    checked(index, "CommandType", v)?
                        .into_iter()
                        .map(|n| CommandType::parse(&n).map_err(|_| PolicyError::BadCommandType { index, name: n.clone() }))
                        .collect::<Result<Vec<_>, _>>()?,
                ),
            };
            statements.push(Statement {
                effect: s.effect,
                actions: patterns(index, "Action", s.action, true)?,
                instances,
                command_types,
                command_ids: s.command_id.map(|v| patterns(index, "CommandId", v, false)).transpose()?,
                usernames: s.username.map(|v| patterns(index, "Username", v, false)).transpose()?,
            });
        }
        Ok(Self { statements, parameter_values: raw.parameter_values })
    }

    /// A key none of whose Allow statements can match `RunCommand` may
    /// run only saved commands.
    pub fn saved_commands_only(&self) -> bool {
        !self.statements.iter().any(|s| s.effect == Effect::Allow && s.actions.iter().any(|a| a.matches("RunCommand")))
    }

    /// The custom parameter value rule for this key's calls: the
    /// document's `ParameterValues`, else strict for a saved-commands-only
    /// key (a parameter must not inject shell text into a command the key
    /// may not change), else the hub's setting.
    pub fn value_policy(&self, hub_default: ValuePolicy) -> ValuePolicy {
        match self.parameter_values {
            Some(v) => v,
            None if self.saved_commands_only() => ValuePolicy::Strict,
            None => hub_default,
        }
    }

    /// The statements whose call-level conditions (action, command type,
    /// command, user) match: computed once per call, so each instance is
    /// then decided only on its `Instance` conditions.
    fn applicable<'p>(&'p self, a: &Access<'_>) -> Vec<&'p Statement> {
        self.statements.iter().filter(|s| s.matches_call(a)).collect()
    }
}

/// The decision for one instance (or none) among the applicable
/// statements.
fn decide(applicable: &[&Statement], target: Option<&Target<'_>>) -> Decision {
    let mut allowed = false;
    for s in applicable {
        if !s.matches_target(target) {
            continue;
        }
        match s.effect {
            // Deny wins: no later statement can undo it.
            Effect::Deny => return Decision::ExplicitDeny,
            Effect::Allow => allowed = true,
        }
    }
    if allowed { Decision::Allow } else { Decision::ImplicitDeny }
}

impl Statement {
    /// A condition a call lacks the fact for (a command type on a
    /// Describe call) does not match: RAM's rule, so a condition never
    /// widens a statement.
    fn matches_target(&self, target: Option<&Target<'_>>) -> bool {
        match (&self.instances, target) {
            (None, _) => true,
            (Some(pats), Some(t)) => pats.iter().any(|p| p.matches(t)),
            (Some(_), None) => false,
        }
    }

    fn matches_call(&self, a: &Access<'_>) -> bool {
        if !self.actions.iter().any(|p| p.matches(a.action)) {
            return false;
        }
        if let Some(types) = &self.command_types {
            match a.command_type {
                Some(ct) if types.contains(&ct) => {}
                _ => return false,
            }
        }
        if let Some(ids) = &self.command_ids {
            match a.command_id {
                Some(id) if ids.iter().any(|p| p.matches(id)) => {}
                _ => return false,
            }
        }
        if let Some(users) = &self.usernames {
            match a.username {
                Some(u) if users.iter().any(|p| p.matches(if u.is_empty() { DEFAULT_USER } else { u })) => {}
                _ => return false,
            }
        }
        true
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    Allow,
    /// No statement allowed it.
    ImplicitDeny,
    /// A Deny statement matched.
    ExplicitDeny,
}

/// One instance as policies see it.
#[derive(Debug, Clone, Copy)]
pub struct Target<'a> {
    pub id: &'a str,
    pub tags: &'a [(String, String)],
}

/// The facts of one API call that policies can name.
#[derive(Debug, Clone, Default)]
pub struct Access<'a> {
    pub action: &'a str,
    pub targets: Vec<Target<'a>>,
    pub command_type: Option<CommandType>,
    pub command_id: Option<&'a str>,
    /// `Some("")`: the default run-as user.
    pub username: Option<&'a str>,
}

/// The caller, as authorization sees it.
#[derive(Debug, Clone)]
pub enum Principal {
    /// A key from hub.toml: full access (documented), as before issue #18.
    Configured { key_id: String },
    /// A key from the store, with its parsed policy (`None`: no access).
    Stored { key_id: String, policy: Option<Arc<Policy>> },
}

impl Principal {
    pub fn key_id(&self) -> &str {
        match self {
            Principal::Configured { key_id } | Principal::Stored { key_id, .. } => key_id,
        }
    }

    pub fn value_policy(&self, hub_default: ValuePolicy) -> ValuePolicy {
        match self {
            Principal::Configured { .. } => hub_default,
            Principal::Stored { policy: Some(p), .. } => p.value_policy(hub_default),
            Principal::Stored { policy: None, .. } => ValuePolicy::Strict,
        }
    }
}

/// Parsed policies of stored keys, so a document is parsed once, not on
/// every call. Keyed by key id and holding the document text: a policy
/// changed through any replica differs from the cached text and is parsed
/// again, so the cache can never apply a stale policy (the key's row, and
/// with it its enabled flag and document, is still read on every call).
#[derive(Debug, Default)]
pub struct PolicyCache {
    inner: std::sync::Mutex<std::collections::HashMap<String, (String, Arc<Policy>)>>,
}

/// Cached policies before the cache is emptied (keys beyond it are simply
/// parsed again): bounds memory whatever the number of keys.
const MAX_CACHED_POLICIES: usize = 4096;

impl PolicyCache {
    pub fn get_or_parse(&self, key_id: &str, doc: &str) -> Result<Arc<Policy>, PolicyError> {
        if let Ok(map) = self.inner.lock()
            && let Some((cached, p)) = map.get(key_id)
            && cached == doc
        {
            return Ok(p.clone());
        }
        // Parsed outside the lock: a large document never stalls others.
        let parsed = Arc::new(Policy::parse(doc)?);
        if let Ok(mut map) = self.inner.lock() {
            if map.len() >= MAX_CACHED_POLICIES && !map.contains_key(key_id) {
                map.clear();
            }
            map.insert(key_id.to_string(), (doc.to_string(), parsed.clone()));
        }
        Ok(parsed)
    }
}

/// Why a call was refused: the action, and the instance when the refusal
/// is about one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", self.describe())]
pub struct Denied {
    pub key_id: String,
    pub action: String,
    pub instance: Option<String>,
    pub explicit: bool,
}

impl Denied {
    fn describe(&self) -> String {
        let how = if self.explicit { "an explicit Deny in its policy" } else { "no Allow statement in its policy" };
        match &self.instance {
            Some(i) => format!("AccessKey {} may not call {} on instance {i} ({how})", self.key_id, self.action),
            None => format!("AccessKey {} may not call {} ({how})", self.key_id, self.action),
        }
    }
}

/// Allows or refuses one call. Every target must be allowed: instances a
/// key may not touch refuse the whole call, never silently drop.
pub fn check(principal: &Principal, a: &Access<'_>) -> Result<(), Denied> {
    let (key_id, policy) = match principal {
        Principal::Configured { .. } => return Ok(()),
        Principal::Stored { key_id, policy } => (key_id, policy),
    };
    let deny = |instance: Option<&str>, explicit| Denied {
        key_id: key_id.clone(),
        action: a.action.to_string(),
        instance: instance.map(str::to_string),
        explicit,
    };
    let Some(policy) = policy else { return Err(deny(None, false)) };
    let applicable = policy.applicable(a);
    if a.targets.is_empty() {
        return match decide(&applicable, None) {
            Decision::Allow => Ok(()),
            d => Err(deny(None, d == Decision::ExplicitDeny)),
        };
    }
    for t in &a.targets {
        match decide(&applicable, Some(t)) {
            Decision::Allow => {}
            d => return Err(deny(Some(t.id), d == Decision::ExplicitDeny)),
        }
    }
    Ok(())
}

/// API actions that change nothing (recorded in the audit trail only when
/// refused).
pub fn is_read_only(action: &str) -> bool {
    action.starts_with("Describe") || action.starts_with("List")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stored(doc: &str) -> Principal {
        Principal::Stored { key_id: "k1".into(), policy: Some(Arc::new(Policy::parse(doc).unwrap())) }
    }

    fn call<'a>(action: &'a str, targets: Vec<Target<'a>>) -> Access<'a> {
        Access { action, targets, ..Default::default() }
    }

    #[test]
    fn policy_cache_reparses_a_changed_document() {
        let cache = PolicyCache::default();
        let a = r#"{"Statement":[{"Effect":"Allow","Action":"Describe*"}]}"#;
        let b = r#"{"Statement":[{"Effect":"Allow","Action":"RunCommand"}]}"#;
        let p1 = cache.get_or_parse("k", a).unwrap();
        assert!(Arc::ptr_eq(&p1, &cache.get_or_parse("k", a).unwrap()), "same text: parsed once");
        let p2 = cache.get_or_parse("k", b).unwrap();
        assert!(!p2.saved_commands_only() && p1.saved_commands_only(), "changed text: the new policy applies");
        assert!(cache.get_or_parse("k", "{").is_err());
    }

    #[test]
    fn wildcards_match_as_documented() {
        assert!(Pattern::new("Describe*", true).matches("DescribeInvocations"));
        assert!(Pattern::new("describe*", true).matches("DescribeInvocations"));
        assert!(!Pattern::new("Describe*", true).matches("RunCommand"));
        assert!(Pattern::new("*", false).matches(""));
        assert!(Pattern::new("i-?b*", false).matches("i-abc"));
        assert!(!Pattern::new("i-?b", false).matches("i-abc"));
        assert!(Pattern::new("*a*b*c", false).matches("xxaxxbxxc"));
        // A pathological pattern stays fast (no exponential backtracking).
        let p = Pattern::new(&format!("{}b", "*a".repeat(100)), false);
        assert!(!p.matches(&"a".repeat(200)));
    }

    #[test]
    fn describe_only_key_cannot_run_commands() {
        let k = stored(r#"{"Version":"1","Statement":[{"Effect":"Allow","Action":"Describe*"}]}"#);
        assert!(check(&k, &call("DescribeInvocations", vec![])).is_ok());
        let e = check(&k, &call("RunCommand", vec![])).unwrap_err();
        assert_eq!((e.action.as_str(), e.explicit), ("RunCommand", false));
        assert!(e.to_string().contains("RunCommand"), "{e}");
    }

    #[test]
    fn deny_wins_over_allow_whatever_the_order() {
        let k = stored(r#"{"Statement":[{"Effect":"Deny","Action":"Delete*"},{"Effect":"Allow","Action":"*"}]}"#);
        assert!(check(&k, &call("DeleteCommand", vec![])).unwrap_err().explicit);
        assert!(check(&k, &call("CreateCommand", vec![])).is_ok());
    }

    #[test]
    fn tag_scoped_key_refuses_the_call_naming_the_out_of_scope_instance() {
        let k = stored(r#"{"Statement":[{"Effect":"Allow","Action":"*","Instance":"tag:env=staging"}]}"#);
        let staging = vec![("env".to_string(), "staging".to_string())];
        let prod = vec![("env".to_string(), "prod".to_string())];
        let both = vec![Target { id: "i-s", tags: &staging }, Target { id: "i-p", tags: &prod }];
        let e = check(&k, &call("RunCommand", both)).unwrap_err();
        assert_eq!(e.instance.as_deref(), Some("i-p"));
        assert!(check(&k, &call("RunCommand", vec![Target { id: "i-s", tags: &staging }])).is_ok());
        // An instance condition never matches a call naming no instance.
        assert!(check(&k, &call("DescribeInvocations", vec![])).is_err());
    }

    #[test]
    fn saved_commands_only_key_gets_strict_values_and_only_its_commands() {
        let doc = r#"{"Statement":[{"Effect":"Allow","Action":"InvokeCommand","CommandId":["c-good"],"Username":["deploy"]}]}"#;
        let k = stored(doc);
        assert_eq!(k.value_policy(ValuePolicy::Any), ValuePolicy::Strict);
        let ok = Access { action: "InvokeCommand", command_id: Some("c-good"), username: Some("deploy"), ..Default::default() };
        assert!(check(&k, &ok).is_ok());
        assert!(check(&k, &Access { command_id: Some("c-other"), ..ok.clone() }).is_err());
        assert!(check(&k, &Access { username: Some(""), ..ok.clone() }).is_err(), "default user is not deploy");
        assert!(check(&k, &Access { action: "RunCommand", ..ok.clone() }).is_err());
        let full = stored(r#"{"Statement":[{"Effect":"Allow","Action":"*"}]}"#);
        assert_eq!(full.value_policy(ValuePolicy::Any), ValuePolicy::Any);
        let explicit = stored(r#"{"ParameterValues":"any","Statement":[{"Effect":"Allow","Action":"InvokeCommand"}]}"#);
        assert_eq!(explicit.value_policy(ValuePolicy::Strict), ValuePolicy::Any);
    }

    #[test]
    fn command_type_condition() {
        let k = stored(r#"{"Statement":[{"Effect":"Allow","Action":"RunCommand","CommandType":"RunShellScript"}]}"#);
        let mut a = Access { action: "RunCommand", command_type: Some(CommandType::RunShellScript), ..Default::default() };
        assert!(check(&k, &a).is_ok());
        a.command_type = Some(CommandType::RunPowerShellScript);
        assert!(check(&k, &a).is_err());
    }

    #[test]
    fn no_policy_means_no_access_and_config_keys_have_all() {
        let none = Principal::Stored { key_id: "k".into(), policy: None };
        assert!(check(&none, &call("DescribeInvocations", vec![])).is_err());
        assert!(check(&Principal::Configured { key_id: "root".into() }, &call("DeleteAccessKey", vec![])).is_ok());
        let empty = stored(r#"{"Statement":[]}"#);
        assert!(check(&empty, &call("DescribeInvocations", vec![])).is_err());
    }

    #[test]
    fn hostile_documents_are_refused_naming_the_problem() {
        assert!(matches!(Policy::parse("[]"), Err(PolicyError::Json(_))));
        assert!(matches!(Policy::parse(r#"{"Statement":[{"Effect":"Allow","Action":"*","Bogus":1}]}"#), Err(PolicyError::Json(_))));
        assert!(matches!(Policy::parse(r#"{"Version":"2","Statement":[]}"#), Err(PolicyError::Version(_))));
        assert!(matches!(
            Policy::parse(r#"{"Statement":[{"Effect":"Allow","Action":[]}]}"#),
            Err(PolicyError::Empty { field: "Action", .. })
        ));
        assert!(matches!(
            Policy::parse(r#"{"Statement":[{"Effect":"Allow","Action":"*","Instance":"tag:=x"}]}"#),
            Err(PolicyError::BadInstance { .. })
        ));
        assert!(matches!(
            Policy::parse(r#"{"Statement":[{"Effect":"Allow","Action":"*","CommandType":"Bash"}]}"#),
            Err(PolicyError::BadCommandType { .. })
        ));
        let many = format!(r#"{{"Statement":[{}]}}"#, vec![r#"{"Effect":"Allow","Action":"x"}"#; MAX_STATEMENTS + 1].join(","));
        assert!(matches!(Policy::parse(&many), Err(PolicyError::TooManyStatements(_))));
        assert!(matches!(Policy::parse(&" ".repeat(MAX_DOCUMENT_BYTES + 1)), Err(PolicyError::TooLarge(_))));
    }
}
