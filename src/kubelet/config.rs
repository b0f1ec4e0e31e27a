//! Reading and editing the kubelet's KubeletConfiguration file: JSON (EKS
//! `/etc/kubernetes/kubelet/kubelet-config.json`) through serde_json, YAML (kubeadm
//! `/var/lib/kubelet/config.yaml`) through a deliberately small line-level editor of top-level
//! keys (no YAML library: a parse-and-emit round trip would lose the file's comments and layout). Only `kubeReserved`, `systemReserved` and
//! `evictionHard` are ever rewritten; every other key and line is kept. The YAML side lives in
//! `yaml.rs`.

use std::path::{Path, PathBuf};

use serde_json::{Map, Value};

use super::KubeletError;
use super::policy::{EvictionMap, Reservation, ResourceMap, Threshold};
use super::quantity::Quantity;
use super::yaml;

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

pub(super) fn malformed(path: &Path, why: impl Into<String>) -> KubeletError {
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
            ConfigFormat::Yaml => yaml::state(&self.path, &self.text),
        }
    }

    /// The file's text with the three owned maps set to `r` (an empty map removes the key).
    /// The result is re-read and checked, so an edit that would not round-trip is refused.
    pub fn render(&self, r: &Reservation) -> Result<String, KubeletError> {
        let out = match self.format {
            ConfigFormat::Json => json_render(&self.path, &self.text, r)?,
            ConfigFormat::Yaml => yaml::render(&self.path, &self.text, r)?,
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
    if let Some(kind) = m.get("kind")
        && kind.as_str() != Some("KubeletConfiguration")
    {
        return Err(malformed(path, format!("kind is {kind}, not KubeletConfiguration")));
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

pub(super) fn resources(path: &Path, field: &str, entries: Vec<(String, String)>) -> Result<ResourceMap, KubeletError> {
    let mut out = ResourceMap::new();
    for (k, v) in entries {
        let q = Quantity::parse(&v).map_err(|e| malformed(path, format!("{field}.{k}: {e}")))?;
        out.insert(k, q);
    }
    Ok(out)
}

pub(super) fn signals(path: &Path, entries: Vec<(String, String)>) -> Result<EvictionMap, KubeletError> {
    let mut out = EvictionMap::new();
    for (k, v) in entries {
        let t = Threshold::parse(&v).map_err(|e| malformed(path, format!("evictionHard.{k}: {e}")))?;
        out.insert(k, t);
    }
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

    fn res(pairs: &[(&str, &str)]) -> ResourceMap {
        pairs.iter().map(|(k, v)| (k.to_string(), Quantity::parse(v).unwrap())).collect()
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
        let args: Vec<String> =
            ["kubelet", "--kube-reserved=cpu=1", "--eviction-hard", "memory.available<1Mi"].iter().map(|s| s.to_string()).collect();
        assert_eq!(flags_override(&args), vec!["kubeReserved", "evictionHard"]);
    }
}
