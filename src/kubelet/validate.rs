//! Validation of a planned reservation against the node: allocatable must stay positive for
//! every resource, low allocatable memory is warned about, and `enforceNodeAllocatable`
//! entries must have the cgroups kubelet needs to enforce them.

use super::KubeletError;
use super::config::ConfigState;
use super::policy::{EvictionMap, NodeFacts, Reservation, Threshold};
use super::quantity::Quantity;

/// Node allocatable = capacity - kubeReserved - systemReserved - hard eviction threshold
/// (memory.available for memory, nodefs.available for ephemeral-storage).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Allocatable {
    pub cpu_millis: i128,
    pub memory_bytes: i128,
    pub ephemeral_storage_bytes: Option<i128>,
}

/// Warn below this share of capacity left allocatable for pods.
pub const MEMORY_WARN_PERCENT: i128 = 50;

fn reserved_units(r: &Reservation, name: &str) -> i128 {
    r.kube_reserved.get(name).map(|q| q.units_ceil()).unwrap_or(0) + r.system_reserved.get(name).map(|q| q.units_ceil()).unwrap_or(0)
}

/// Eviction map kubelet actually uses: its built-in defaults when none is configured.
fn effective_eviction(r: &Reservation) -> EvictionMap {
    if !r.eviction_hard.is_empty() {
        return r.eviction_hard.clone();
    }
    let mut m = EvictionMap::new();
    m.insert("memory.available".into(), Threshold::Quantity(Quantity::from_mebibytes(100)));
    m.insert("nodefs.available".into(), Threshold::Percent(10_000));
    m
}

pub fn allocatable(f: &NodeFacts, r: &Reservation) -> Allocatable {
    let eviction = effective_eviction(r);
    let cpu_reserved = r.kube_reserved.get("cpu").map(|q| q.millis_ceil()).unwrap_or(0)
        + r.system_reserved.get("cpu").map(|q| q.millis_ceil()).unwrap_or(0);
    let mem_evict = eviction.get("memory.available").map(|t| t.amount_of(f.memory_bytes)).unwrap_or(0) as i128;
    let ephemeral = f.ephemeral_storage_bytes.map(|cap| {
        let evict = eviction.get("nodefs.available").map(|t| t.amount_of(cap)).unwrap_or(0) as i128;
        cap as i128 - reserved_units(r, "ephemeral-storage") - evict
    });
    Allocatable {
        cpu_millis: f.cpus as i128 * 1000 - cpu_reserved,
        memory_bytes: f.memory_bytes as i128 - reserved_units(r, "memory") - mem_evict,
        ephemeral_storage_bytes: ephemeral,
    }
}

/// Refuse a plan that would starve pods or stop kubelet from starting; return warnings.
pub fn validate(f: &NodeFacts, r: &Reservation, after: &ConfigState) -> Result<Vec<String>, KubeletError> {
    let a = allocatable(f, r);
    let mut refusals = Vec::new();
    if a.cpu_millis <= 0 {
        refusals.push(format!("allocatable cpu would be {}m of {} vCPU", a.cpu_millis, f.cpus));
    }
    if a.memory_bytes <= 0 {
        refusals.push(format!("allocatable memory would be {} bytes of {}", a.memory_bytes, f.memory_bytes));
    }
    if let Some(e) = a.ephemeral_storage_bytes.filter(|e| *e <= 0) {
        refusals.push(format!("allocatable ephemeral-storage would be {e} bytes"));
    }
    for (entry, cgroup, key) in [
        ("kube-reserved", &after.kube_reserved_cgroup, "kubeReservedCgroup"),
        ("system-reserved", &after.system_reserved_cgroup, "systemReservedCgroup"),
    ] {
        if after.enforce_node_allocatable.iter().any(|e| e == entry) && cgroup.is_none() {
            refusals.push(format!("enforceNodeAllocatable contains {entry} but {key} is not set; kubelet would refuse to start"));
        }
    }
    let cpu_reserved = f.cpus as i128 * 1000 - a.cpu_millis;
    if after.cpu_manager_policy.as_deref() == Some("static") && cpu_reserved <= 0 {
        refusals.push(
            "cpuManagerPolicy is static but no CPU is reserved (kubeReserved/systemReserved cpu); kubelet would refuse to start".into(),
        );
    }
    if !refusals.is_empty() {
        return Err(KubeletError::Refused(refusals.join("; ")));
    }
    let mut warnings = Vec::new();
    if a.memory_bytes * 100 < f.memory_bytes as i128 * MEMORY_WARN_PERCENT {
        warnings.push(format!(
            "allocatable memory is {}% of capacity (below {MEMORY_WARN_PERCENT}%)",
            a.memory_bytes * 100 / f.memory_bytes as i128
        ));
    }
    Ok(warnings)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kubelet::policy::{self, Policy};

    const GI: u64 = 1 << 30;

    fn facts(cpus: u32, mem: u64, storage: Option<u64>) -> NodeFacts {
        NodeFacts { cpus, memory_bytes: mem, max_pods: 58, ephemeral_storage_bytes: storage }
    }

    #[test]
    fn eks_m5_xlarge_allocatable() {
        let f = facts(4, 16 * GI, Some(100 * GI));
        let r = policy::eks(&f);
        let a = allocatable(&f, &r);
        assert_eq!(a.cpu_millis, 3920);
        // 16Gi - 893Mi - 100Mi
        assert_eq!(a.memory_bytes, (16 * 1024 - 993) as i128 * (1 << 20));
        // 100Gi - 1Gi - 10%
        assert_eq!(a.ephemeral_storage_bytes, Some((100 * GI - GI - 10 * GI) as i128));
        assert!(validate(&f, &r, &ConfigState::default()).unwrap().is_empty());
    }

    #[test]
    fn starving_plans_are_refused_and_low_memory_warned() {
        let f = facts(2, GI, None);
        let spec = crate::kubelet::explicit::ExplicitSpec::from_kubelet_args("--kube-reserved=cpu=2,memory=1Gi").unwrap();
        let r = Policy::Explicit(spec).compute(&f).unwrap();
        let e = validate(&f, &r, &ConfigState::default()).unwrap_err().to_string();
        assert!(e.contains("allocatable cpu would be 0m") && e.contains("allocatable memory"), "{e}");

        // EKS on a 1Gi node with 29 pods: 574Mi + 100Mi reserved leaves < 50%.
        let f = NodeFacts { cpus: 2, memory_bytes: GI, max_pods: 29, ephemeral_storage_bytes: None };
        let w = validate(&f, &policy::eks(&f), &ConfigState::default()).unwrap();
        assert!(w[0].contains("below 50%"), "{w:?}");
    }

    #[test]
    fn enforce_kube_reserved_needs_cgroup() {
        let f = facts(4, 16 * GI, None);
        let r = policy::eks(&f);
        let mut st = ConfigState { enforce_node_allocatable: vec!["pods".into(), "kube-reserved".into()], ..Default::default() };
        let e = validate(&f, &r, &st).unwrap_err().to_string();
        assert!(e.contains("kubeReservedCgroup is not set"), "{e}");
        st.kube_reserved_cgroup = Some("/kube-reserved".into());
        assert!(validate(&f, &r, &st).is_ok());
        // Static CPU manager (ACK cpu_policy=static) needs some reserved CPU.
        st.cpu_manager_policy = Some("static".into());
        assert!(validate(&f, &r, &st).is_ok());
        let e = validate(&f, &Reservation::default(), &st).unwrap_err().to_string();
        assert!(e.contains("cpuManagerPolicy is static"), "{e}");
    }

    #[test]
    fn unset_eviction_uses_kubelet_defaults() {
        let f = facts(2, 4 * GI, Some(10 * GI));
        let a = allocatable(&f, &Reservation::default());
        assert_eq!(a.cpu_millis, 2000);
        assert_eq!(a.memory_bytes, (4 * GI - 100 * (1 << 20)) as i128);
        assert_eq!(a.ephemeral_storage_bytes, Some((9 * GI) as i128));
    }
}
