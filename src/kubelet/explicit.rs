//! The `explicit` policy: reservations written by the operator, accepted in the forms seed 002
//! shows — kubelet flags (`--kube-reserved=cpu=200m,memory=200Mi`,
//! `--eviction-hard=memory.available<100Mi,nodefs.available<10%`), KubeletConfiguration /
//! Karpenter camelCase maps (`kubeReserved`) and Bottlerocket kebab-case settings
//! (`kube-reserved`). A map left out is left as the node currently has it. Whole pasted
//! documents (TOML, YAML, JSON) are read by `pasted`, which ends here.

use serde_json::Value;

use super::KubeletError;
use super::policy::{EvictionMap, Reservation, ResourceMap, Threshold};
use super::quantity::Quantity;

/// Resources kubelet accepts in kubeReserved/systemReserved.
pub const RESOURCES: [&str; 4] = ["cpu", "memory", "ephemeral-storage", "pid"];
/// Hard eviction signals kubelet knows.
pub const SIGNALS: [&str; 8] = [
    "memory.available",
    "nodefs.available",
    "nodefs.inodesFree",
    "imagefs.available",
    "imagefs.inodesFree",
    "containerfs.available",
    "containerfs.inodesFree",
    "pid.available",
];
/// Bound on one explicit value string.
const MAX_SPEC_LEN: usize = 1024;

/// Operator-given maps; `None` means "leave as configured".
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ExplicitSpec {
    pub kube_reserved: Option<ResourceMap>,
    pub system_reserved: Option<ResourceMap>,
    pub eviction_hard: Option<EvictionMap>,
}

fn bad(msg: String) -> KubeletError {
    KubeletError::InvalidPlan(msg)
}

impl ExplicitSpec {
    /// Fill the maps the operator left out from `current`.
    pub fn over(&self, current: &Reservation) -> Reservation {
        Reservation {
            kube_reserved: self.kube_reserved.clone().unwrap_or_else(|| current.kube_reserved.clone()),
            system_reserved: self.system_reserved.clone().unwrap_or_else(|| current.system_reserved.clone()),
            eviction_hard: self.eviction_hard.clone().unwrap_or_else(|| current.eviction_hard.clone()),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.kube_reserved.is_none() && self.system_reserved.is_none() && self.eviction_hard.is_none()
    }

    /// Parse a kubelet argument string such as bootstrap.sh's `--kubelet-extra-args`.
    /// Flags other than the three reservation flags are ignored (they are not ours to change).
    pub fn from_kubelet_args(args: &str) -> Result<ExplicitSpec, KubeletError> {
        if args.len() > MAX_SPEC_LEN * 4 {
            return Err(bad(format!("kubelet args longer than {} characters", MAX_SPEC_LEN * 4)));
        }
        let mut spec = ExplicitSpec::default();
        // Quotes around the pasted `--kubelet-extra-args '…'` value stick to the first and last
        // token; they are shell syntax, not part of the flag.
        for tok in args.split_whitespace().map(|t| t.trim_matches(['\'', '"'])) {
            if let Some(v) = tok.strip_prefix("--kube-reserved=") {
                spec.kube_reserved = Some(parse_resource_list("kube-reserved", v)?);
            } else if let Some(v) = tok.strip_prefix("--system-reserved=") {
                spec.system_reserved = Some(parse_resource_list("system-reserved", v)?);
            } else if let Some(v) = tok.strip_prefix("--eviction-hard=") {
                spec.eviction_hard = Some(parse_eviction_list(v)?);
            }
        }
        if spec.is_empty() {
            return Err(bad("no --kube-reserved, --system-reserved or --eviction-hard found in kubelet args".into()));
        }
        Ok(spec)
    }

    /// Parse an object with KubeletConfiguration/Karpenter (`kubeReserved`) or Bottlerocket
    /// (`kube-reserved`) names; each value is a map or a flag-style string. Other keys are
    /// ignored so a whole Bottlerocket `settings.kubernetes` table can be passed.
    /// Same rules as pasted documents (`pasted::spec_from_holder`), on an object already in
    /// memory: the invocation request's own fields.
    pub fn from_json(v: &Value) -> Result<ExplicitSpec, KubeletError> {
        if !v.is_object() {
            return Err(bad("explicit values must be a JSON object".into()));
        }
        super::pasted::spec_from_holder(&super::pasted::Node::from_json(v, 0)?)
    }
}

pub(super) fn insert_resource(field: &str, out: &mut ResourceMap, name: &str, value: &str) -> Result<(), KubeletError> {
    if !RESOURCES.contains(&name) {
        return Err(bad(format!("{field}: unknown resource {name:?} (expected one of {})", RESOURCES.join(", "))));
    }
    let q = Quantity::parse(value).map_err(|e| bad(format!("{field}.{name}: {e}")))?;
    if q.nanos() < 0 {
        return Err(bad(format!("{field}.{name}: {value} is negative")));
    }
    if out.insert(name.to_string(), q).is_some() {
        return Err(bad(format!("{field}: {name} given twice")));
    }
    Ok(())
}

pub(super) fn insert_signal(out: &mut EvictionMap, name: &str, value: &str) -> Result<(), KubeletError> {
    if !SIGNALS.contains(&name) {
        return Err(bad(format!("evictionHard: unknown signal {name:?} (expected one of {})", SIGNALS.join(", "))));
    }
    let t = Threshold::parse(value).map_err(|e| bad(format!("evictionHard.{name}: {e}")))?;
    if out.insert(name.to_string(), t).is_some() {
        return Err(bad(format!("evictionHard: {name} given twice")));
    }
    Ok(())
}

/// `cpu=200m,memory=200Mi,ephemeral-storage=1Gi` (an optional `--kube-reserved=` prefix is fine).
pub fn parse_resource_list(field: &str, s: &str) -> Result<ResourceMap, KubeletError> {
    if s.len() > MAX_SPEC_LEN {
        return Err(bad(format!("{field} longer than {MAX_SPEC_LEN} characters")));
    }
    let s = s.trim().trim_matches(['"', '\'']);
    let s = s.split_once('=').filter(|(k, _)| k.starts_with("--")).map(|(_, v)| v).unwrap_or(s);
    let mut out = ResourceMap::new();
    for item in s.split(',').map(str::trim).filter(|i| !i.is_empty()) {
        let (k, v) = item.split_once('=').ok_or_else(|| bad(format!("{field}: {item:?} is not name=quantity")))?;
        insert_resource(field, &mut out, k.trim(), v.trim())?;
    }
    Ok(out)
}

/// `memory.available<100Mi,nodefs.available<10%` (an optional `--eviction-hard=` prefix is fine).
pub fn parse_eviction_list(s: &str) -> Result<EvictionMap, KubeletError> {
    if s.len() > MAX_SPEC_LEN {
        return Err(bad(format!("evictionHard longer than {MAX_SPEC_LEN} characters")));
    }
    let s = s.trim().trim_matches(['"', '\'']);
    let s = s.strip_prefix("--eviction-hard=").unwrap_or(s);
    let mut out = EvictionMap::new();
    for item in s.split(',').map(str::trim).filter(|i| !i.is_empty()) {
        let (k, v) = item.split_once('<').ok_or_else(|| bad(format!("evictionHard: {item:?} is not signal<threshold")))?;
        insert_signal(&mut out, k.trim(), v.trim())?;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn seed_bootstrap_args_are_accepted() {
        // The exact --kubelet-extra-args from seed 002.
        let args = "--system-reserved=cpu=200m,memory=200Mi,ephemeral-storage=1Gi --kube-reserved=cpu=200m,memory=200Mi,ephemeral-storage=1Gi --kube-reserved-cgroup=/kube-reserved --eviction-hard=memory.available<100Mi,nodefs.available<10% --feature-gates=RotateKubeletServerCertificate=true";
        let spec = ExplicitSpec::from_kubelet_args(args).unwrap();
        let kube = spec.kube_reserved.unwrap();
        assert_eq!(kube["cpu"].to_string(), "200m");
        assert_eq!(kube["memory"].to_string(), "200Mi");
        assert_eq!(kube["ephemeral-storage"].to_string(), "1Gi");
        assert_eq!(spec.system_reserved.unwrap().len(), 3);
        let ev = spec.eviction_hard.unwrap();
        assert_eq!(ev["memory.available"].to_string(), "100Mi");
        assert_eq!(ev["nodefs.available"].to_string(), "10%");
    }

    #[test]
    fn bottlerocket_and_karpenter_names_are_accepted() {
        let bottlerocket = json!({
            "kube-reserved": {"cpu": "100m", "memory": "500Mi", "ephemeral-storage": "1Gi"},
            "system-reserved": {"cpu": "100m", "memory": "500Mi", "ephemeral-storage": "1Gi"},
            "eviction-hard": {"memory.available": "15%"}
        });
        let karpenter = json!({
            "systemReserved": {"cpu": "500m", "memory": "500Mi", "ephemeral-storage": "1Gi"},
            "kubeReserved": {"cpu": "500m", "memory": "500Mi", "ephemeral-storage": "3Gi"},
            "evictionHard": {"memory.available": "5%", "nodefs.available": "10%", "nodefs.inodesFree": "10%"}
        });
        let b = ExplicitSpec::from_json(&bottlerocket).unwrap();
        assert_eq!(b.eviction_hard.unwrap()["memory.available"].to_string(), "15%");
        let k = ExplicitSpec::from_json(&karpenter).unwrap();
        assert_eq!(k.kube_reserved.unwrap()["ephemeral-storage"].to_string(), "3Gi");
        let flags = ExplicitSpec::from_json(&json!({"kubeReserved": "cpu=200m,memory=1Gi"})).unwrap();
        assert_eq!(flags.kube_reserved.unwrap()["memory"].to_string(), "1Gi");
        assert!(flags.system_reserved.is_none(), "left-out map stays as configured");
    }

    #[test]
    fn bad_explicit_values_name_the_field() {
        let cases = [
            (json!({"kubeReserved": {"gpu": "1"}}), "unknown resource \"gpu\""),
            (json!({"kubeReserved": {"cpu": "lots"}}), "kubeReserved.cpu"),
            (json!({"kubeReserved": {"cpu": "-1"}}), "negative"),
            (json!({"evictionHard": {"memory.free": "1Mi"}}), "unknown signal"),
            (json!({"evictionHard": "memory.available=1Mi"}), "signal<threshold"),
            (json!({"kubeReserved": {}, "kube-reserved": {}}), "both"),
            (json!({"kubeReserved": 5}), "is not name=quantity"),
            (json!({"kubeReserved": true}), "must be a mapping"),
        ];
        for (v, want) in cases {
            let e = ExplicitSpec::from_json(&v).unwrap_err().to_string();
            assert!(e.contains(want), "{v}: {e}");
        }
        assert!(ExplicitSpec::from_kubelet_args("--v=2").is_err());
        assert!(parse_resource_list("kube-reserved", "cpu=1,cpu=2").unwrap_err().to_string().contains("twice"));
    }
}
