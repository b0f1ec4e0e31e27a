//! Reading and editing the kubelet's KubeletConfiguration file: JSON (EKS
//! `/etc/kubernetes/kubelet/kubelet-config.json`) through serde_json, YAML (kubeadm
//! `/var/lib/kubelet/config.yaml`) through a deliberately small line-level editor of top-level
//! keys (the project has no YAML crate by design). Only `kubeReserved`, `systemReserved` and
//! `evictionHard` are ever rewritten; every other key and line is kept. Anything the YAML
//! editor does not fully understand is refused rather than guessed at.

use std::path::{Path, PathBuf};

use serde_json::{Map, Value};

use super::KubeletError;
use super::policy::{EvictionMap, Reservation, ResourceMap, Threshold};
use super::quantity::Quantity;

/// Kubelet configs are a few KiB; anything past this is not one.
pub const MAX_CONFIG_BYTES: u64 = 1 << 20;
/// The keys this module owns, in the order they are appended when absent.
pub const OWNED_KEYS: [&str; 3] = ["kubeReserved", "systemReserved", "evictionHard"];
pub const EKS_CONFIG: &str = "/etc/kubernetes/kubelet/kubelet-config.json";
pub const KUBEADM_CONFIG: &str = "/var/lib/kubelet/config.yaml";

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ConfigFormat {
    Json,
    Yaml,
}

/// What the node currently has, as far as reservations are concerned.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ConfigState {
    pub reservation: Reservation,
    pub enforce_node_allocatable: Vec<String>,
    pub kube_reserved_cgroup: Option<String>,
    pub system_reserved_cgroup: Option<String>,
    pub max_pods: Option<u32>,
    /// `none` or `static` (ACK node pools expose this as `cpu_policy`).
    pub cpu_manager_policy: Option<String>,
}

/// One kubelet config file, loaded.
#[derive(Debug, Clone)]
pub struct KubeletConfigFile {
    pub path: PathBuf,
    pub format: ConfigFormat,
    pub text: String,
}

fn malformed(path: &Path, why: impl Into<String>) -> KubeletError {
    KubeletError::ConfigMalformed { path: path.to_path_buf(), reason: why.into() }
}

impl KubeletConfigFile {
    /// Read `path`, bounded in size; the format comes from the extension, else the content.
    pub fn load(path: &Path) -> Result<KubeletConfigFile, KubeletError> {
        let meta = std::fs::metadata(path).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => KubeletError::ConfigMissing(path.to_path_buf()),
            _ => KubeletError::Io { path: path.to_path_buf(), source: e },
        })?;
        if meta.len() > MAX_CONFIG_BYTES {
            return Err(malformed(path, format!("file is {} bytes, more than the {MAX_CONFIG_BYTES} limit", meta.len())));
        }
        let bytes = std::fs::read(path).map_err(|e| KubeletError::Io { path: path.to_path_buf(), source: e })?;
        let text = String::from_utf8(bytes).map_err(|_| malformed(path, "file is not UTF-8"))?;
        Ok(Self::from_text(path, text))
    }

    pub fn from_text(path: &Path, text: String) -> KubeletConfigFile {
        let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("");
        let format = match ext {
            "json" => ConfigFormat::Json,
            "yaml" | "yml" => ConfigFormat::Yaml,
            _ if text.trim_start().starts_with('{') => ConfigFormat::Json,
            _ => ConfigFormat::Yaml,
        };
        KubeletConfigFile { path: path.to_path_buf(), format, text }
    }

    pub fn state(&self) -> Result<ConfigState, KubeletError> {
        match self.format {
            ConfigFormat::Json => json_state(&self.path, &self.text),
            ConfigFormat::Yaml => yaml_state(&self.path, &self.text),
        }
    }

    /// The file's text with the three owned maps set to `r` (an empty map removes the key).
    /// The result is re-read and checked, so an edit that would not round-trip is refused.
    pub fn render(&self, r: &Reservation) -> Result<String, KubeletError> {
        let out = match self.format {
            ConfigFormat::Json => json_render(&self.path, &self.text, r)?,
            ConfigFormat::Yaml => yaml_render(&self.path, &self.text, r)?,
        };
        let again = KubeletConfigFile { text: out.clone(), ..self.clone() }.state()?;
        if &again.reservation != r {
            return Err(malformed(&self.path, "edited config did not read back as planned; refusing to write it"));
        }
        Ok(out)
    }
}

// ---------- JSON ----------

fn json_root(path: &Path, text: &str) -> Result<Map<String, Value>, KubeletError> {
    let v: Value = serde_json::from_str(text).map_err(|e| malformed(path, format!("invalid JSON: {e}")))?;
    let Value::Object(m) = v else {
        return Err(malformed(path, "top level is not a JSON object"));
    };
    if let Some(kind) = m.get("kind") {
        if kind.as_str() != Some("KubeletConfiguration") {
            return Err(malformed(path, format!("kind is {kind}, not KubeletConfiguration")));
        }
    }
    Ok(m)
}

fn json_state(path: &Path, text: &str) -> Result<ConfigState, KubeletError> {
    let m = json_root(path, text)?;
    let str_map = |key: &str| -> Result<Vec<(String, String)>, KubeletError> {
        match m.get(key) {
            None | Some(Value::Null) => Ok(vec![]),
            Some(Value::Object(o)) => o
                .iter()
                .map(|(k, v)| {
                    v.as_str().map(|s| (k.clone(), s.to_string())).ok_or_else(|| malformed(path, format!("{key}.{k} is not a string")))
                })
                .collect(),
            Some(_) => Err(malformed(path, format!("{key} is not an object"))),
        }
    };
    let mut st = ConfigState::default();
    st.reservation.kube_reserved = resources(path, "kubeReserved", str_map("kubeReserved")?)?;
    st.reservation.system_reserved = resources(path, "systemReserved", str_map("systemReserved")?)?;
    st.reservation.eviction_hard = signals(path, str_map("evictionHard")?)?;
    st.enforce_node_allocatable = match m.get("enforceNodeAllocatable") {
        None | Some(Value::Null) => vec![],
        Some(Value::Array(a)) => a
            .iter()
            .map(|v| v.as_str().map(str::to_string).ok_or_else(|| malformed(path, "enforceNodeAllocatable has a non-string item")))
            .collect::<Result<_, _>>()?,
        Some(_) => return Err(malformed(path, "enforceNodeAllocatable is not a list")),
    };
    st.kube_reserved_cgroup = m.get("kubeReservedCgroup").and_then(Value::as_str).filter(|s| !s.is_empty()).map(str::to_string);
    st.system_reserved_cgroup = m.get("systemReservedCgroup").and_then(Value::as_str).filter(|s| !s.is_empty()).map(str::to_string);
    st.max_pods = m.get("maxPods").and_then(Value::as_u64).and_then(|n| u32::try_from(n).ok());
    st.cpu_manager_policy = m.get("cpuManagerPolicy").and_then(Value::as_str).map(str::to_string);
    Ok(st)
}

fn json_render(path: &Path, text: &str, r: &Reservation) -> Result<String, KubeletError> {
    let mut m = json_root(path, text)?;
    let maps: [(&str, Vec<(String, String)>); 3] = [
        ("kubeReserved", r.kube_reserved.iter().map(|(k, v)| (k.clone(), v.to_string())).collect()),
        ("systemReserved", r.system_reserved.iter().map(|(k, v)| (k.clone(), v.to_string())).collect()),
        ("evictionHard", r.eviction_hard.iter().map(|(k, v)| (k.clone(), v.to_string())).collect()),
    ];
    for (key, entries) in maps {
        if entries.is_empty() {
            m.remove(key);
        } else {
            let obj: Map<String, Value> = entries.into_iter().map(|(k, v)| (k, Value::String(v))).collect();
            m.insert(key.to_string(), Value::Object(obj));
        }
    }
    let mut out = serde_json::to_string_pretty(&Value::Object(m)).map_err(|e| malformed(path, e.to_string()))?;
    out.push('\n');
    Ok(out)
}

fn resources(path: &Path, field: &str, entries: Vec<(String, String)>) -> Result<ResourceMap, KubeletError> {
    let mut out = ResourceMap::new();
    for (k, v) in entries {
        let q = Quantity::parse(&v).map_err(|e| malformed(path, format!("{field}.{k}: {e}")))?;
        out.insert(k, q);
    }
    Ok(out)
}

fn signals(path: &Path, entries: Vec<(String, String)>) -> Result<EvictionMap, KubeletError> {
    let mut out = EvictionMap::new();
    for (k, v) in entries {
        let t = Threshold::parse(&v).map_err(|e| malformed(path, format!("evictionHard.{k}: {e}")))?;
        out.insert(k, t);
    }
    Ok(out)
}

// ---------- YAML (top-level keys only) ----------

/// One top-level `key:` and the indented lines under it.
#[derive(Debug)]
struct Block {
    key: String,
    /// Line index of the key line.
    start: usize,
    /// One past the last child line (blank and column-0 comment lines are never included).
    end: usize,
    inline: String,
    children: Vec<String>,
}

fn yaml_blocks(path: &Path, text: &str) -> Result<Vec<Block>, KubeletError> {
    let mut blocks: Vec<Block> = Vec::new();
    for (i, raw) in text.split('\n').enumerate() {
        let line = raw.strip_suffix('\r').unwrap_or(raw);
        let n = i + 1;
        if line.trim().is_empty() || line.starts_with('#') {
            continue;
        }
        if line.starts_with('\t') {
            return Err(malformed(path, format!("line {n}: tab indentation is not valid YAML")));
        }
        if line == "---" || line.starts_with("--- ") {
            if blocks.is_empty() {
                continue;
            }
            return Err(malformed(path, format!("line {n}: more than one YAML document; refusing to edit")));
        }
        if line == "..." {
            return Err(malformed(path, format!("line {n}: YAML document end marker; refusing to edit")));
        }
        if line.starts_with(' ') || line.starts_with('-') {
            let b = blocks.last_mut().ok_or_else(|| malformed(path, format!("line {n}: indented line before any top-level key")))?;
            if !b.inline.is_empty() && !line.trim_start().starts_with('#') {
                return Err(malformed(path, format!("line {n}: {} has both an inline value and indented lines", b.key)));
            }
            if !line.trim_start().starts_with('#') {
                b.children.push(line.to_string());
            }
            b.end = i + 1;
            continue;
        }
        let (key, rest) = line
            .split_once(':')
            .filter(|(k, r)| is_plain_key(k) && (r.is_empty() || r.starts_with(' ')))
            .ok_or_else(|| malformed(path, format!("line {n}: not a top-level `key: value` line")))?;
        if blocks.iter().any(|b| b.key == key) {
            return Err(malformed(path, format!("line {n}: duplicate top-level key {key}")));
        }
        blocks.push(Block { key: key.to_string(), start: i, end: i + 1, inline: strip_comment(rest.trim()), children: vec![] });
    }
    Ok(blocks)
}

fn is_plain_key(k: &str) -> bool {
    let mut chars = k.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
}

fn strip_comment(s: &str) -> String {
    if s.starts_with('"') || s.starts_with('\'') {
        return s.to_string();
    }
    match s.find(" #") {
        Some(p) => s[..p].trim_end().to_string(),
        None => s.to_string(),
    }
}

/// A scalar as written: plain, "double" (no escapes) or 'single' quoted.
fn unquote(path: &Path, s: &str) -> Result<String, KubeletError> {
    let s = strip_comment(s.trim());
    if s.starts_with(['&', '*', '!', '|', '>']) {
        return Err(malformed(path, format!("YAML anchors, aliases, tags and block scalars are not supported: {s}")));
    }
    if let Some(inner) = s.strip_prefix('"') {
        let inner = inner.strip_suffix('"').ok_or_else(|| malformed(path, format!("unterminated string {s}")))?;
        if inner.contains('\\') || inner.contains('"') {
            return Err(malformed(path, format!("escaped strings are not supported: {s}")));
        }
        return Ok(inner.to_string());
    }
    if let Some(inner) = s.strip_prefix('\'') {
        let inner = inner.strip_suffix('\'').ok_or_else(|| malformed(path, format!("unterminated string {s}")))?;
        return Ok(inner.replace("''", "'"));
    }
    Ok(s)
}

fn yaml_map(path: &Path, b: &Block) -> Result<Vec<(String, String)>, KubeletError> {
    let mut out = Vec::new();
    if !b.inline.is_empty() {
        let inner = b
            .inline
            .strip_prefix('{')
            .and_then(|s| s.strip_suffix('}'))
            .ok_or_else(|| malformed(path, format!("{} must be a mapping", b.key)))?;
        for item in inner.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            let (k, v) = item.split_once(':').ok_or_else(|| malformed(path, format!("{}: {item:?} is not key: value", b.key)))?;
            out.push((unquote(path, k)?, unquote(path, v)?));
        }
        return Ok(out);
    }
    let indent = b.children.first().map(|c| c.len() - c.trim_start().len()).unwrap_or(0);
    for c in &b.children {
        let ind = c.len() - c.trim_start().len();
        if ind != indent || indent == 0 {
            return Err(malformed(path, format!("{}: nested or uneven indentation is not supported", b.key)));
        }
        let (k, v) = c.trim().split_once(": ").or_else(|| c.trim().strip_suffix(':').map(|k| (k, "")))
            .ok_or_else(|| malformed(path, format!("{}: {:?} is not key: value", b.key, c.trim())))?;
        out.push((unquote(path, k)?, unquote(path, v)?));
    }
    Ok(out)
}

fn yaml_list(path: &Path, b: &Block) -> Result<Vec<String>, KubeletError> {
    if !b.inline.is_empty() {
        let inner = b
            .inline
            .strip_prefix('[')
            .and_then(|s| s.strip_suffix(']'))
            .ok_or_else(|| malformed(path, format!("{} must be a list", b.key)))?;
        return inner.split(',').map(str::trim).filter(|s| !s.is_empty()).map(|s| unquote(path, s)).collect();
    }
    b.children
        .iter()
        .map(|c| {
            let item = c.trim_start().strip_prefix('-').ok_or_else(|| malformed(path, format!("{} must be a list", b.key)))?;
            unquote(path, item)
        })
        .collect()
}

fn yaml_state(path: &Path, text: &str) -> Result<ConfigState, KubeletError> {
    let blocks = yaml_blocks(path, text)?;
    let get = |k: &str| blocks.iter().find(|b| b.key == k);
    if let Some(kind) = get("kind") {
        let v = unquote(path, &kind.inline)?;
        if v != "KubeletConfiguration" {
            return Err(malformed(path, format!("kind is {v}, not KubeletConfiguration")));
        }
    }
    let mut st = ConfigState::default();
    if let Some(b) = get("kubeReserved") {
        st.reservation.kube_reserved = resources(path, "kubeReserved", yaml_map(path, b)?)?;
    }
    if let Some(b) = get("systemReserved") {
        st.reservation.system_reserved = resources(path, "systemReserved", yaml_map(path, b)?)?;
    }
    if let Some(b) = get("evictionHard") {
        st.reservation.eviction_hard = signals(path, yaml_map(path, b)?)?;
    }
    if let Some(b) = get("enforceNodeAllocatable") {
        st.enforce_node_allocatable = yaml_list(path, b)?;
    }
    let scalar = |k: &str| -> Result<Option<String>, KubeletError> {
        match get(k) {
            Some(b) => Ok(Some(unquote(path, &b.inline)?).filter(|s| !s.is_empty())),
            None => Ok(None),
        }
    };
    st.kube_reserved_cgroup = scalar("kubeReservedCgroup")?;
    st.system_reserved_cgroup = scalar("systemReservedCgroup")?;
    st.max_pods = scalar("maxPods")?.and_then(|s| s.parse().ok());
    st.cpu_manager_policy = scalar("cpuManagerPolicy")?;
    Ok(st)
}

fn yaml_block_lines(key: &str, entries: Vec<(String, String)>) -> Vec<String> {
    if entries.is_empty() {
        return vec![];
    }
    let mut v = vec![format!("{key}:")];
    v.extend(entries.into_iter().map(|(k, val)| format!("  {k}: \"{val}\"")));
    v
}

fn yaml_render(path: &Path, text: &str, r: &Reservation) -> Result<String, KubeletError> {
    let blocks = yaml_blocks(path, text)?;
    let mut lines: Vec<String> = text.split('\n').map(str::to_string).collect();
    let had_trailing_newline = text.ends_with('\n');
    if had_trailing_newline {
        lines.pop();
    }
    let wanted: [(&str, Vec<(String, String)>); 3] = [
        ("kubeReserved", r.kube_reserved.iter().map(|(k, v)| (k.clone(), v.to_string())).collect()),
        ("systemReserved", r.system_reserved.iter().map(|(k, v)| (k.clone(), v.to_string())).collect()),
        ("evictionHard", r.eviction_hard.iter().map(|(k, v)| (k.clone(), v.to_string())).collect()),
    ];
    let mut replace: Vec<(usize, usize, Vec<String>)> = Vec::new();
    let mut append: Vec<String> = Vec::new();
    for (key, entries) in wanted {
        let new = yaml_block_lines(key, entries);
        match blocks.iter().find(|b| b.key == key) {
            Some(b) => replace.push((b.start, b.end, new)),
            None => append.extend(new),
        }
    }
    // Bottom-up so earlier indices stay valid.
    replace.sort_by(|a, b| b.0.cmp(&a.0));
    for (start, end, new) in replace {
        lines.splice(start..end, new);
    }
    lines.extend(append);
    let mut out = lines.join("\n");
    out.push('\n');
    Ok(out)
}

/// Which owned keys a kubelet command line sets as flags; flags win over the config file,
/// so editing the file would not take effect for those (reported as a warning).
pub fn flags_override(args: &[String]) -> Vec<&'static str> {
    [("--kube-reserved", "kubeReserved"), ("--system-reserved", "systemReserved"), ("--eviction-hard", "evictionHard")]
        .into_iter()
        .filter(|(flag, _)| args.iter().any(|a| a == flag || a.starts_with(&format!("{flag}="))))
        .map(|(_, name)| name)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn yaml(text: &str) -> KubeletConfigFile {
        KubeletConfigFile::from_text(Path::new("/x/config.yaml"), text.to_string())
    }

    fn res(pairs: &[(&str, &str)]) -> ResourceMap {
        pairs.iter().map(|(k, v)| (k.to_string(), Quantity::parse(v).unwrap())).collect()
    }

    #[test]
    fn yaml_reads_flow_block_quoted_and_lists() {
        let f = yaml(
            "# managed by kubeadm\nkind: KubeletConfiguration\nkubeReserved: {cpu: 100m, memory: \"1Gi\"}  \nsystemReserved:\n  cpu: '200m'\n  # comment inside\n  memory: 512Mi # trailing\nenforceNodeAllocatable:\n- pods\n- kube-reserved\nkubeReservedCgroup: /kube-reserved\nmaxPods: 42\n",
        );
        let st = f.state().unwrap();
        assert_eq!(st.reservation.kube_reserved, res(&[("cpu", "100m"), ("memory", "1Gi")]));
        assert_eq!(st.reservation.system_reserved, res(&[("cpu", "200m"), ("memory", "512Mi")]));
        assert_eq!(st.enforce_node_allocatable, vec!["pods", "kube-reserved"]);
        assert_eq!(st.kube_reserved_cgroup.as_deref(), Some("/kube-reserved"));
        assert_eq!(st.max_pods, Some(42));
    }

    #[test]
    fn yaml_render_replaces_only_owned_blocks() {
        let text = "apiVersion: kubelet.config.k8s.io/v1beta1\nkubeReserved: {cpu: 100m}\n# keep me\nauthentication:\n  anonymous:\n    enabled: false\nsystemReserved:\n  cpu: 1\nkind: KubeletConfiguration\n";
        let f = yaml(text);
        let r = Reservation { kube_reserved: res(&[("cpu", "70m"), ("memory", "574Mi")]), ..Default::default() };
        let out = f.render(&r).unwrap();
        assert_eq!(
            out,
            "apiVersion: kubelet.config.k8s.io/v1beta1\nkubeReserved:\n  cpu: \"70m\"\n  memory: \"574Mi\"\n# keep me\nauthentication:\n  anonymous:\n    enabled: false\nkind: KubeletConfiguration\n"
        );
        // Rendering the result again with the same reservation is a fixed point.
        assert_eq!(yaml(&out).render(&r).unwrap(), out);
    }

    #[test]
    fn yaml_refusals_name_the_line() {
        for (text, want) in [
            ("kind: KubeletConfiguration\n\tmaxPods: 3\n", "tab"),
            ("  indented: first\n", "before any top-level key"),
            ("maxPods: 1\nmaxPods: 2\n", "duplicate"),
            ("kubeReserved: &x {cpu: 1}\n", "mapping"),
            ("kubeReserved:\n  cpu: *ref\n", "anchors"),
            ("kubeReserved:\n  cpu: \"1\\n\"\n", "escaped"),
            ("{not yaml we edit\n", "not a top-level"),
            ("kind: Pod\n", "not KubeletConfiguration"),
            ("kubeReserved: 5\n", "must be a mapping"),
        ] {
            let e = yaml(text).state().unwrap_err().to_string();
            assert!(e.contains(want), "{text:?}: {e}");
        }
    }

    #[test]
    fn json_render_keeps_other_keys_and_drops_empty_maps() {
        let f = KubeletConfigFile::from_text(
            Path::new("/x/kubelet-config.json"),
            r#"{"kind":"KubeletConfiguration","maxPods":17,"systemReserved":{"cpu":"1"},"featureGates":{"A":true}}"#.into(),
        );
        assert_eq!(f.format, ConfigFormat::Json);
        let r = Reservation { kube_reserved: res(&[("cpu", "70m")]), ..Default::default() };
        let v: Value = serde_json::from_str(&f.render(&r).unwrap()).unwrap();
        assert_eq!(v["maxPods"], 17);
        assert_eq!(v["featureGates"]["A"], true);
        assert_eq!(v["kubeReserved"]["cpu"], "70m");
        assert!(v.get("systemReserved").is_none());
    }

    #[test]
    fn format_detection() {
        assert_eq!(KubeletConfigFile::from_text(Path::new("/c"), " {}".into()).format, ConfigFormat::Json);
        assert_eq!(KubeletConfigFile::from_text(Path::new("/c"), "kind: x".into()).format, ConfigFormat::Yaml);
        assert_eq!(KubeletConfigFile::from_text(Path::new("/c.yml"), "{}".into()).format, ConfigFormat::Yaml);
    }

    #[test]
    fn flags_on_the_command_line_are_noticed() {
        let args: Vec<String> = ["kubelet", "--kube-reserved=cpu=1", "--eviction-hard", "memory.available<1Mi"].iter().map(|s| s.to_string()).collect();
        assert_eq!(flags_override(&args), vec!["kubeReserved", "evictionHard"]);
    }
}
