//! Reservations in the forms operators paste them (seed 002): Bottlerocket user-data TOML
//! (`[settings.kubernetes.kube-reserved]`), eksctl `kubeletExtraConfig` and
//! `bottlerocket.settings.kubernetes` YAML, Karpenter `kubeletConfiguration` YAML (camelCase or
//! kebab-case keys), plain JSON, and a kubelet / bootstrap.sh argument string. The text is
//! parsed by a maintained parser (`toml`, `saphyr`, `serde_json`) into one small tree that
//! remembers source lines, the one place that holds reservation keys is found in it, and every
//! refusal names the line it is about.

use std::collections::BTreeMap;

use saphyr::{LoadableYamlNode, MarkedYaml, Scalar, YamlData};

use super::KubeletError;
use super::explicit::{ExplicitSpec, insert_resource, insert_signal, parse_eviction_list, parse_resource_list};
use super::policy::{EvictionMap, ResourceMap};

/// Bound on pasted text (same as an `ApplyKubeletReserved` request).
pub const MAX_PASTED_BYTES: usize = 64 * 1024;
/// Bound on nesting: seed 002's deepest form (a Karpenter Provisioner) is 4 levels deep.
const MAX_DEPTH: usize = 32;

/// How pasted text is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum PastedFormat {
    Json,
    Toml,
    Yaml,
    /// `--kube-reserved=… --eviction-hard=…` (bootstrap.sh `--kubelet-extra-args`).
    KubeletArgs,
}

impl PastedFormat {
    /// By file name, when it says (`.toml`, `.yaml`/`.yml`, `.json`).
    pub fn from_extension(path: &std::path::Path) -> Option<PastedFormat> {
        match path.extension().and_then(|e| e.to_str()).map(str::to_ascii_lowercase).as_deref() {
            Some("toml") => Some(PastedFormat::Toml),
            Some("yaml" | "yml") => Some(PastedFormat::Yaml),
            Some("json") => Some(PastedFormat::Json),
            _ => None,
        }
    }

    /// By content: JSON opens with `{`; TOML has a `[table]` header at column 0 or
    /// `key = value` first;
    /// an argument string has a reservation flag and no `key: value` line; else YAML.
    pub fn detect(text: &str) -> PastedFormat {
        if text.trim_start().starts_with('{') {
            return PastedFormat::Json;
        }
        let mut lines = text.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')).peekable();
        let first_is_assignment = lines.peek().is_some_and(|l| match (l.find('='), l.find(':')) {
            (Some(eq), Some(colon)) => eq < colon && !l.starts_with("--"),
            (Some(_), None) => !l.starts_with('-') && !l.contains(" --"),
            _ => false,
        });
        let lines: Vec<&str> = lines.collect();
        // Headers at column 0 only: an indented one is TOML embedded in YAML (Karpenter's
        // `userData: |`), which the YAML reading finds.
        if first_is_assignment || text.lines().any(|l| is_toml_header(l.trim_end())) {
            return PastedFormat::Toml;
        }
        let has_flag = ["--kube-reserved", "--system-reserved", "--eviction-hard"].iter().any(|f| text.contains(f));
        let has_mapping = lines.iter().any(|l| l.ends_with(':') || l.contains(": "));
        if has_flag && !has_mapping {
            return PastedFormat::KubeletArgs;
        }
        PastedFormat::Yaml
    }
}

/// `[settings.kubernetes.kube-reserved]` or `[[x]]`: a bracketed dotted key, nothing else.
fn is_toml_header(l: &str) -> bool {
    let inner = l.trim_start_matches('[').trim_end_matches(']');
    l.starts_with('[')
        && l.ends_with(']')
        && !inner.is_empty()
        && inner.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_' | '"' | '\'' | ' '))
        && inner.contains(|c: char| c.is_ascii_alphabetic())
}

/// Parse pasted text in `format` (None: detected) into the operator's maps.
pub fn parse(text: &str, format: Option<PastedFormat>) -> Result<ExplicitSpec, KubeletError> {
    if text.len() > MAX_PASTED_BYTES {
        return Err(bad(format!("pasted settings are {} bytes, more than {MAX_PASTED_BYTES}", text.len())));
    }
    let format = format.unwrap_or_else(|| PastedFormat::detect(text));
    let roots = match format {
        PastedFormat::KubeletArgs => return ExplicitSpec::from_kubelet_args(text),
        PastedFormat::Json => {
            let v: serde_json::Value =
                serde_json::from_str(text).map_err(|e| bad(format!("line {}, column {}: not valid JSON: {e}", e.line(), e.column())))?;
            vec![Node::from_json(&v, 0)?]
        }
        PastedFormat::Toml => vec![toml_tree(text)?],
        PastedFormat::Yaml => yaml_trees(text)?,
    };
    let mut holders = Vec::new();
    for root in &roots {
        find_holders(text, root, String::new(), &mut holders, 0)?;
    }
    match holders.len() {
        0 => Err(bad(format!(
            "no kubeReserved / systemReserved / evictionHard (or kube-reserved / system-reserved / eviction-hard) found in the pasted {}",
            format_name(format)
        ))),
        1 => {
            let (_, node) = holders.remove(0);
            spec_from_holder(&node)
        }
        _ => Err(bad(format!(
            "reservations found in {} places ({}); paste one",
            holders.len(),
            holders.iter().map(|(p, n)| at_line(p, n.line)).collect::<Vec<_>>().join(", ")
        ))),
    }
}

fn format_name(f: PastedFormat) -> &'static str {
    match f {
        PastedFormat::Json => "JSON",
        PastedFormat::Toml => "TOML",
        PastedFormat::Yaml => "YAML",
        PastedFormat::KubeletArgs => "kubelet arguments",
    }
}

fn bad(msg: String) -> KubeletError {
    KubeletError::InvalidPlan(msg)
}

fn at_line(what: &str, line: Option<usize>) -> String {
    let what = if what.is_empty() { "the top level" } else { what };
    match line {
        Some(n) => format!("{what} (line {n})"),
        None => what.to_string(),
    }
}

/// A parsed value with the source line it starts on (None for JSON built in memory).
#[derive(Debug, Clone)]
pub(crate) struct Node {
    line: Option<usize>,
    value: Value,
}

#[derive(Debug, Clone)]
enum Value {
    /// Keys in source order, each with the line of its value.
    Map(Vec<(String, Node)>),
    Seq(Vec<Node>),
    /// Strings and numbers, as text (`cpu: 1` is the quantity `1`).
    Text(String),
    /// Booleans, nulls, dates: never a quantity; named in refusals.
    Other(&'static str),
}

impl Node {
    pub(crate) fn from_json(v: &serde_json::Value, depth: usize) -> Result<Node, KubeletError> {
        use serde_json::Value as J;
        if depth > MAX_DEPTH {
            return Err(bad(format!("nested more than {MAX_DEPTH} levels deep")));
        }
        let value = match v {
            J::Object(m) => {
                Value::Map(m.iter().map(|(k, v)| Ok((k.clone(), Node::from_json(v, depth + 1)?))).collect::<Result<_, KubeletError>>()?)
            }
            J::Array(a) => Value::Seq(a.iter().map(|v| Node::from_json(v, depth + 1)).collect::<Result<_, _>>()?),
            J::String(s) => Value::Text(s.clone()),
            J::Number(n) => Value::Text(n.to_string()),
            J::Bool(_) => Value::Other("a boolean"),
            J::Null => Value::Other("null"),
        };
        Ok(Node { line: None, value })
    }
}

/// 1-based line of byte `offset` in `text`.
fn line_of(text: &str, offset: usize) -> usize {
    text.get(..offset).map(|t| t.matches('\n').count()).unwrap_or(0) + 1
}

fn toml_tree(text: &str) -> Result<Node, KubeletError> {
    let doc = toml::de::DeTable::parse(text).map_err(|e| {
        let line = e.span().map(|s| line_of(text, s.start)).unwrap_or(1);
        bad(format!("line {line}: not valid TOML: {}", e.message().trim()))
    })?;
    toml_table(text, doc.get_ref(), Some(line_of(text, doc.span().start)), 0)
}

fn toml_table(text: &str, t: &toml::de::DeTable<'_>, line: Option<usize>, depth: usize) -> Result<Node, KubeletError> {
    let mut entries = Vec::new();
    for (k, v) in t.iter() {
        entries.push((k.get_ref().to_string(), toml_value(text, v, depth + 1)?));
    }
    Ok(Node { line, value: Value::Map(entries) })
}

fn toml_value(text: &str, v: &toml::Spanned<toml::de::DeValue<'_>>, depth: usize) -> Result<Node, KubeletError> {
    use toml::de::DeValue as T;
    let line = Some(line_of(text, v.span().start));
    if depth > MAX_DEPTH {
        return Err(bad(format!("line {}: nested more than {MAX_DEPTH} levels deep", line_of(text, v.span().start))));
    }
    let value = match v.get_ref() {
        T::Table(t) => return toml_table(text, t, line, depth),
        T::Array(a) => Value::Seq(a.iter().map(|x| toml_value(text, x, depth + 1)).collect::<Result<_, _>>()?),
        T::String(s) => Value::Text(s.to_string()),
        T::Integer(i) => Value::Text(i.as_str().to_string()),
        T::Float(f) => Value::Text(f.as_str().to_string()),
        T::Boolean(_) => Value::Other("a boolean"),
        T::Datetime(_) => Value::Other("a date"),
    };
    Ok(Node { line, value })
}

fn yaml_trees(text: &str) -> Result<Vec<Node>, KubeletError> {
    let docs = MarkedYaml::load_from_str(text).map_err(|e| bad(format!("line {}: not valid YAML: {}", e.marker().line(), e.info())))?;
    docs.iter().map(|d| yaml_node(d, 0)).collect()
}

fn yaml_node(y: &MarkedYaml<'_>, depth: usize) -> Result<Node, KubeletError> {
    let line = Some(y.span.start.line());
    if depth > MAX_DEPTH {
        return Err(bad(format!("line {}: nested more than {MAX_DEPTH} levels deep", y.span.start.line())));
    }
    let value = match &y.data {
        YamlData::Mapping(m) => {
            let mut entries = Vec::new();
            for (k, v) in m.iter() {
                let key = match &k.data {
                    YamlData::Value(Scalar::String(s)) => s.to_string(),
                    YamlData::Representation(s, _, _) => s.to_string(),
                    YamlData::Value(Scalar::Integer(i)) => i.to_string(),
                    _ => continue, // keys that are not text hold nothing of ours
                };
                entries.push((key, yaml_node(v, depth + 1)?));
            }
            Value::Map(entries)
        }
        YamlData::Sequence(s) => Value::Seq(s.iter().map(|x| yaml_node(x, depth + 1)).collect::<Result<_, _>>()?),
        YamlData::Value(Scalar::String(s)) => Value::Text(s.to_string()),
        YamlData::Representation(s, _, _) => Value::Text(s.to_string()),
        YamlData::Value(Scalar::Integer(i)) => Value::Text(i.to_string()),
        YamlData::Value(Scalar::FloatingPoint(f)) => Value::Text(f.to_string()),
        YamlData::Value(Scalar::Boolean(_)) => Value::Other("a boolean"),
        YamlData::Value(Scalar::Null) => Value::Other("null"),
        YamlData::Tagged(_, inner) => return yaml_node(inner, depth + 1),
        YamlData::Alias(_) | YamlData::BadValue => Value::Other("an unresolved alias"),
    };
    Ok(Node { line, value })
}

/// Every key a holder can have, in both spellings.
const KEYS: [(&str, &str); 3] =
    [("kubeReserved", "kube-reserved"), ("systemReserved", "system-reserved"), ("evictionHard", "eviction-hard")];

fn is_holder(entries: &[(String, Node)]) -> bool {
    entries.iter().any(|(k, _)| KEYS.iter().any(|(a, b)| k == a || k == b))
}

/// Collect the maps that hold reservation keys, with their paths. A string holding a
/// Bottlerocket TOML block (Karpenter `userData: |`) is searched too, its lines counted from
/// where its first line sits in `text`.
fn find_holders(text: &str, node: &Node, path: String, out: &mut Vec<(String, Node)>, depth: usize) -> Result<(), KubeletError> {
    if depth > MAX_DEPTH {
        return Ok(());
    }
    let join = |k: &str| if path.is_empty() { k.to_string() } else { format!("{path}.{k}") };
    match &node.value {
        Value::Map(entries) if is_holder(entries) => out.push((path, node.clone())),
        Value::Map(entries) => {
            for (k, v) in entries {
                find_holders(text, v, join(k), out, depth + 1)?;
            }
        }
        Value::Seq(items) => {
            for (i, v) in items.iter().enumerate() {
                find_holders(text, v, format!("{path}[{i}]"), out, depth + 1)?;
            }
        }
        Value::Text(s) if s.contains("[settings.kubernetes") => {
            let offset = embedded_offset(text, s, node.line);
            let inner = toml_tree(s).map_err(|e| shift(e, offset, &path))?;
            let mut found = Vec::new();
            find_holders(s, &inner, String::new(), &mut found, depth + 1)?;
            for (p, mut n) in found {
                shift_lines(&mut n, offset);
                out.push((format!("{path} (TOML) {}", p).trim_end().to_string(), n));
            }
        }
        _ => {}
    }
    Ok(())
}

/// Lines to add to a line number inside embedded text `s` to get one in `text`: where the
/// first non-blank line of `s` appears in `text` at or after `from`.
fn embedded_offset(text: &str, s: &str, from: Option<usize>) -> usize {
    let from = from.unwrap_or(1);
    let Some((first_idx, first)) = s.lines().enumerate().find(|(_, l)| !l.trim().is_empty()).map(|(i, l)| (i, l.trim())) else {
        return from.saturating_sub(1);
    };
    text.lines()
        .enumerate()
        .skip(from.saturating_sub(1))
        .find(|(_, l)| l.trim() == first)
        .map(|(i, _)| i.saturating_sub(first_idx))
        .unwrap_or(from.saturating_sub(1))
}

fn shift_lines(n: &mut Node, by: usize) {
    n.line = n.line.map(|l| l + by);
    match &mut n.value {
        Value::Map(entries) => entries.iter_mut().for_each(|(_, v)| shift_lines(v, by)),
        Value::Seq(items) => items.iter_mut().for_each(|v| shift_lines(v, by)),
        _ => {}
    }
}

/// Re-number an embedded TOML parse error (`line N: …`) into the outer text's lines.
fn shift(e: KubeletError, by: usize, path: &str) -> KubeletError {
    match e {
        KubeletError::InvalidPlan(m) => {
            let renumbered = m
                .strip_prefix("line ")
                .and_then(|r| r.split_once(':'))
                .and_then(|(n, rest)| n.parse::<usize>().ok().map(|n| format!("line {}:{rest}", n + by)))
                .unwrap_or(m);
            bad(format!("{renumbered} (in {path})"))
        }
        other => other,
    }
}

/// Prefix a refusal with the line it is about.
fn on_line(line: Option<usize>, e: KubeletError) -> KubeletError {
    match (line, e) {
        (Some(n), KubeletError::InvalidPlan(m)) => bad(format!("line {n}: {m}")),
        (_, e) => e,
    }
}

/// The operator's maps from one holder: either spelling of each key, a map of strings or a
/// flag-style string for each. Other keys are not ours and are left alone.
pub(crate) fn spec_from_holder(node: &Node) -> Result<ExplicitSpec, KubeletError> {
    let Value::Map(entries) = &node.value else {
        return Err(on_line(node.line, bad("explicit values must be an object / mapping".into())));
    };
    let pick = |a: &str, b: &str| -> Result<Option<&Node>, KubeletError> {
        let mut found = entries.iter().filter(|(k, _)| k == a || k == b);
        match (found.next(), found.next()) {
            (Some(_), Some((_, second))) => Err(on_line(second.line, bad(format!("both {a} and {b} given; use one")))),
            (first, _) => Ok(first.map(|(_, v)| v)),
        }
    };
    let mut spec = ExplicitSpec::default();
    if let Some(v) = pick("kubeReserved", "kube-reserved")? {
        spec.kube_reserved = Some(resources("kubeReserved", v)?);
    }
    if let Some(v) = pick("systemReserved", "system-reserved")? {
        spec.system_reserved = Some(resources("systemReserved", v)?);
    }
    if let Some(v) = pick("evictionHard", "eviction-hard")? {
        spec.eviction_hard = Some(signals(v)?);
    }
    Ok(spec)
}

fn describe(v: &Value) -> &'static str {
    match v {
        Value::Map(_) => "a mapping",
        Value::Seq(_) => "a list",
        Value::Text(_) => "text",
        Value::Other(what) => what,
    }
}

fn resources(field: &str, node: &Node) -> Result<ResourceMap, KubeletError> {
    match &node.value {
        Value::Text(s) => parse_resource_list(field, s).map_err(|e| on_line(node.line, e)),
        Value::Map(entries) => {
            let mut out = ResourceMap::new();
            for (k, v) in entries {
                let Value::Text(s) = &v.value else {
                    return Err(on_line(v.line, bad(format!("{field}.{k} must be a quantity like \"200m\", not {}", describe(&v.value)))));
                };
                insert_resource(field, &mut out, k, s).map_err(|e| on_line(v.line, e))?;
            }
            Ok(out)
        }
        other => {
            Err(on_line(node.line, bad(format!("{field} must be a mapping or a \"cpu=200m,memory=1Gi\" string, not {}", describe(other)))))
        }
    }
}

fn signals(node: &Node) -> Result<EvictionMap, KubeletError> {
    match &node.value {
        Value::Text(s) => parse_eviction_list(s).map_err(|e| on_line(node.line, e)),
        Value::Map(entries) => {
            let mut out = BTreeMap::new();
            for (k, v) in entries {
                let Value::Text(s) = &v.value else {
                    return Err(on_line(
                        v.line,
                        bad(format!("evictionHard.{k} must be a threshold like \"100Mi\" or \"10%\", not {}", describe(&v.value))),
                    ));
                };
                insert_signal(&mut out, k, s).map_err(|e| on_line(v.line, e))?;
            }
            Ok(out)
        }
        other => Err(on_line(
            node.line,
            bad(format!("evictionHard must be a mapping or a \"memory.available<100Mi\" string, not {}", describe(other))),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_are_detected_by_content() {
        let cases = [
            ("{\"kubeReserved\": {}}", PastedFormat::Json),
            ("[settings.kubernetes.kube-reserved]\ncpu = \"100m\"\n", PastedFormat::Toml),
            ("# user data\n\n[settings.kubernetes]\n", PastedFormat::Toml),
            ("spec:\n  userData: |\n    [settings.kubernetes]\n", PastedFormat::Yaml),
            ("settings.kubernetes.kube-reserved.cpu = \"1\"\n", PastedFormat::Toml),
            ("kubeReserved:\n  cpu: 100m\n", PastedFormat::Yaml),
            ("instanceTypes: [ \"m6i.xlarge\" ]\nkubeReserved: {cpu: 1}\n", PastedFormat::Yaml),
            ("--kube-reserved=cpu=1 --eviction-hard=memory.available<1Mi", PastedFormat::KubeletArgs),
            ("/etc/eks/bootstrap.sh test --kubelet-extra-args '--kube-reserved=cpu=200m'", PastedFormat::KubeletArgs),
        ];
        for (text, want) in cases {
            assert_eq!(PastedFormat::detect(text), want, "{text:?}");
        }
    }

    #[test]
    fn refusals_name_the_line() {
        let cases = [
            ("[settings.kubernetes.kube-reserved]\ncpu = \"100m\"\nmemory = \"lots\"\n", "line 3: kubeReserved.memory"),
            ("[settings.kubernetes.kube-reserved]\ncpu = \"100m\"\ncpu = \"1\"\n", "line 3: not valid TOML"),
            ("[settings.kubernetes.eviction-hard]\n\"memory.free\" = \"1Mi\"\n", "line 2: evictionHard: unknown signal"),
            (
                "nodeGroups:\n  - name: x\n    kubeletExtraConfig:\n      kubeReserved:\n        gpu: \"1\"\n",
                "line 5: kubeReserved: unknown resource \"gpu\"",
            ),
            ("kubeReserved:\n  cpu: true\n", "line 2: kubeReserved.cpu must be a quantity"),
            ("kubeReserved:\n  cpu: 1\n kube: [\n", "not valid YAML"),
            ("kubeReserved: {cpu: 1}\nkube-reserved: {cpu: 2}\n", "line 2: both kubeReserved and kube-reserved"),
            ("a:\n  kubeReserved: {cpu: 1}\nb:\n  kubeReserved: {cpu: 1}\n", "2 places (a (line 2), b (line 4))"),
            ("name: nothing here\n", "no kubeReserved"),
            ("{\"kubeReserved\": {\"cpu\": \"1\"},}", "line 1, column"),
        ];
        for (text, want) in cases {
            let e = parse(text, None).unwrap_err().to_string();
            assert!(e.contains(want), "{text:?}: {e}");
        }
        let huge = "#".repeat(MAX_PASTED_BYTES + 1);
        assert!(parse(&huge, None).unwrap_err().to_string().contains("more than"));
        let deep = format!("{}kubeReserved: {{cpu: 1}}{}", "a: {".repeat(40), "}".repeat(40));
        assert!(parse(&deep, None).unwrap_err().to_string().contains("levels deep"));
        // Nesting far past the bound, within the size bound: refused, never a stack overflow.
        for (open, close, format) in [("[", "]", PastedFormat::Toml), ("[", "]", PastedFormat::Yaml), ("[", "]", PastedFormat::Json)] {
            let prefix = if format == PastedFormat::Toml { "a = " } else { "" };
            let text = format!("{prefix}{}{}", open.repeat(20_000), close.repeat(20_000));
            assert!(parse(&text, Some(format)).is_err(), "{format:?}");
        }
        let laughs = "a: &a [x, x, x, x, x, x, x, x]\nb: &b [*a, *a, *a, *a, *a, *a, *a, *a]\nc: &c [*b, *b, *b, *b, *b, *b, *b, *b]\nd: &d [*c, *c, *c, *c, *c, *c, *c, *c]\ne: &e [*d, *d, *d, *d, *d, *d, *d, *d]\nf: &f [*e, *e, *e, *e, *e, *e, *e, *e]\ng: [*f, *f, *f, *f, *f, *f, *f, *f]\n";
        assert!(parse(laughs, None).is_err(), "alias expansion is bounded by the parser");
    }

    #[test]
    fn numbers_are_quantities_and_karpenter_user_data_is_searched() {
        let spec = parse("kubeReserved:\n  cpu: 1\n  pid: 1000\n", None).unwrap();
        let kube = spec.kube_reserved.unwrap();
        assert_eq!((kube["cpu"].to_string(), kube["pid"].to_string()), ("1".into(), "1k".into()));
        let user_data = "spec:\n  amiFamily: Bottlerocket\n  userData: |\n    [settings.kubernetes.kube-reserved]\n    cpu = \"100m\"\n    memory = \"oops\"\n";
        let e = parse(user_data, None).unwrap_err().to_string();
        assert!(e.contains("invalid kubelet plan: line 6: kubeReserved.memory"), "{e}");
    }
}
