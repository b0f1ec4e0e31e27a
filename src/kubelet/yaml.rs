//! The line-level YAML editor for kubeadm's `/var/lib/kubelet/config.yaml`. It uses no YAML
//! library on purpose: parsing and re-emitting would lose comments and layout (`saphyr` reads
//! pasted settings in `pasted`, where nothing is written back). It understands top-level keys only: it reads the owned maps
//! (block or flow style), lists and plain/quoted scalars, replaces or appends the
//! `kubeReserved` / `systemReserved` / `evictionHard` blocks and keeps every other line byte
//! for byte. Anything it does not fully understand is refused rather than guessed at.

use std::path::Path;

use super::KubeletError;
use super::config::{ConfigState, malformed, resources, signals};
use super::policy::Reservation;

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
    match s.split_once(" #") {
        Some((before, _)) => before.trim_end().to_string(),
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
        let (k, v) = c
            .trim()
            .split_once(": ")
            .or_else(|| c.trim().strip_suffix(':').map(|k| (k, "")))
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

pub(super) fn state(path: &Path, text: &str) -> Result<ConfigState, KubeletError> {
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

pub(super) fn render(path: &Path, text: &str, r: &Reservation) -> Result<String, KubeletError> {
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
    replace.sort_by_key(|r| std::cmp::Reverse(r.0));
    for (start, end, new) in replace {
        lines.splice(start..end, new);
    }
    lines.extend(append);
    let mut out = lines.join("\n");
    out.push('\n');
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kubelet::config::KubeletConfigFile;
    use crate::kubelet::policy::ResourceMap;
    use crate::kubelet::quantity::Quantity;

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

    mod props {
        use super::*;
        use crate::kubelet::policy::{EvictionMap, Threshold};
        use proptest::prelude::*;

        const FIXTURE: &str = include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/kubelet/kubeadm-config.yaml"));

        proptest! {
            #[test]
            fn render_reads_back_and_keeps_unowned_lines(cpu in 0i64..100_000, mem in 0u64..1_000_000, pct in 0u32..100, sys in any::<bool>()) {
                let mut r = Reservation::default();
                r.kube_reserved.insert("cpu".into(), Quantity::from_millis(cpu));
                r.kube_reserved.insert("memory".into(), Quantity::from_mebibytes(mem));
                if sys {
                    r.system_reserved.insert("memory".into(), Quantity::from_bytes(mem * 1000));
                }
                let mut ev = EvictionMap::new();
                ev.insert("nodefs.available".into(), Threshold::Percent(pct * 1000));
                r.eviction_hard = ev;
                let f = yaml(FIXTURE);
                let out = f.render(&r).unwrap();
                prop_assert_eq!(&yaml(&out).state().unwrap().reservation, &r);
                // Unowned lines survive in order.
                let owned = |l: &str| l.starts_with("evictionHard:") || l.starts_with("  imagefs.available") || l.starts_with("  memory.available");
                let mut it = out.lines();
                for line in FIXTURE.lines().filter(|l| !owned(l)) {
                    prop_assert!(it.any(|l| l == line), "lost {:?}", line);
                }
                // Applying the same reservation to the result changes nothing.
                prop_assert_eq!(yaml(&out).render(&r).unwrap(), out);
            }
        }
    }
}
