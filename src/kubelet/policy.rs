//! Reservation policies: pure functions from node facts (vCPUs, memory, max pods, ephemeral
//! storage) to `kubeReserved` / `systemReserved` / `evictionHard`. Some providers changed their
//! rule between Kubernetes versions, so a `Policy` (what the operator names) resolves to a
//! `Rule` (the formula actually used) through the node's kubelet version. Formulas and their
//! sources are documented in docs/kubelet.md; every rule here is deterministic and does no I/O.

use std::collections::BTreeMap;
use std::fmt;

use super::KubeletError;
use super::explicit::ExplicitSpec;
use super::quantity::Quantity;
use super::version::KubeVersion;

const MI: u64 = 1 << 20;
const GI: u64 = 1 << 30;

/// Bounds on node facts: outside them the input is a typo, not a node.
pub const MAX_CPUS: u32 = 4096;
pub const MIN_MEMORY_BYTES: u64 = 64 * MI;
pub const MAX_MEMORY_BYTES: u64 = 64 << 40;
pub const MAX_PODS_LIMIT: u32 = 2000;

/// What a policy needs to know about the node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct NodeFacts {
    pub cpus: u32,
    pub memory_bytes: u64,
    pub max_pods: u32,
    pub ephemeral_storage_bytes: Option<u64>,
}

impl NodeFacts {
    /// Refuse facts no real node has, naming the field and the limit.
    pub fn check(&self) -> Result<(), KubeletError> {
        if self.cpus == 0 || self.cpus > MAX_CPUS {
            return Err(KubeletError::InvalidPlan(format!("cpus must be 1..={MAX_CPUS}, got {}", self.cpus)));
        }
        if self.memory_bytes < MIN_MEMORY_BYTES || self.memory_bytes > MAX_MEMORY_BYTES {
            return Err(KubeletError::InvalidPlan(format!(
                "memory must be between 64Mi and 64Ti, got {}",
                Quantity::from_bytes(self.memory_bytes)
            )));
        }
        if self.max_pods == 0 || self.max_pods > MAX_PODS_LIMIT {
            return Err(KubeletError::InvalidPlan(format!("maxPods must be 1..={MAX_PODS_LIMIT}, got {}", self.max_pods)));
        }
        Ok(())
    }
}

/// An eviction threshold value: an absolute quantity or a percentage of capacity.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Threshold {
    Quantity(Quantity),
    /// Thousandths of a percent (`10%` = 10_000), so `7.5%` stays exact.
    Percent(u32),
}

impl Threshold {
    pub fn parse(s: &str) -> Result<Threshold, String> {
        if let Some(p) = s.strip_suffix('%') {
            let (int, frac) = p.split_once('.').unwrap_or((p, ""));
            let ok = !int.is_empty() && int.len() <= 3 && frac.len() <= 3 && int.bytes().chain(frac.bytes()).all(|b| b.is_ascii_digit());
            if !ok {
                return Err(format!("threshold {s:?} is not a percentage like 10% or 7.5%"));
            }
            let v: u32 = int.parse::<u32>().unwrap_or(0) * 1000 + format!("{frac:0<3}").parse::<u32>().unwrap_or(0);
            if v > 100_000 {
                return Err(format!("threshold {s:?} is above 100%"));
            }
            return Ok(Threshold::Percent(v));
        }
        let q = Quantity::parse(s).map_err(|e| e.to_string())?;
        if q.nanos() < 0 {
            return Err(format!("threshold {s:?} is negative"));
        }
        Ok(Threshold::Quantity(q))
    }

    /// The amount this threshold takes out of `capacity_bytes` (percentages round up).
    pub fn amount_of(&self, capacity: u64) -> u64 {
        match self {
            Threshold::Quantity(q) => q.units_ceil().clamp(0, u64::MAX as i128) as u64,
            Threshold::Percent(p) => ((capacity as u128 * *p as u128).div_ceil(100_000)) as u64,
        }
    }
}

impl fmt::Display for Threshold {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Threshold::Quantity(q) => write!(f, "{q}"),
            Threshold::Percent(p) if p % 1000 == 0 => write!(f, "{}%", p / 1000),
            Threshold::Percent(p) => {
                let frac = format!("{:03}", p % 1000);
                write!(f, "{}.{}%", p / 1000, frac.trim_end_matches('0'))
            }
        }
    }
}

pub type ResourceMap = BTreeMap<String, Quantity>;
pub type EvictionMap = BTreeMap<String, Threshold>;

/// The three KubeletConfiguration maps a policy decides.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Reservation {
    pub kube_reserved: ResourceMap,
    pub system_reserved: ResourceMap,
    pub eviction_hard: EvictionMap,
}

/// A named policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Policy {
    Eks,
    Gke,
    Aks,
    Ack,
    Tke,
    Cce,
    Explicit(ExplicitSpec),
}

/// The formula a policy resolves to for a given Kubernetes version.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rule {
    Eks,
    Gke,
    /// AKS before 1.29: the 25/20/10/6/2 % memory ladder, memory.available<750Mi.
    AksBefore129,
    /// AKS 1.29 and later: min(20Mi x maxPods + 50Mi, 25 %), memory.available<100Mi.
    Aks129,
    /// ACK for Kubernetes 1.20-1.27: 100m + 2.5 %... CPU, 25/20/10/6/2 % memory.
    Ack120,
    /// ACK for Kubernetes 1.28 and later: the 6/1/0.5/0.25 % CPU ladder, min(11 x maxPods + 255Mi, 25 %).
    Ack128,
    Tke,
    /// Huawei CCE's published "v1" memory model (system components + kubelet by max pods).
    CceV1,
    /// Huawei CCE's "v2" memory model: 400MiB + 25MiB/GiB for the system, 500MiB + 5MiB/pod
    /// (containerd) for Kubernetes.
    CceV2,
    Explicit,
}

impl Rule {
    /// What the plan prints after the policy name.
    pub fn describe(&self) -> &'static str {
        match self {
            Rule::Eks => "amazon-eks-ami bootstrap",
            Rule::Gke => "GKE node allocatable",
            Rule::AksBefore129 => "AKS rule for Kubernetes < 1.29",
            Rule::Aks129 => "AKS rule for Kubernetes >= 1.29",
            Rule::Ack120 => "ACK rule for Kubernetes 1.20-1.27",
            Rule::Ack128 => "ACK rule for Kubernetes >= 1.28",
            Rule::Tke => "TKE node resource reservation",
            Rule::CceV1 => "CCE memory model v1",
            Rule::CceV2 => "CCE memory model v2 (containerd)",
            Rule::Explicit => "operator's values",
        }
    }
}

/// A rule and, when the choice was a guess or an approximation, why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleChoice {
    pub rule: Rule,
    pub warning: Option<String>,
}

const ACK_128: KubeVersion = KubeVersion::new(1, 28);
const ACK_OLDEST: KubeVersion = KubeVersion::new(1, 20);
const AKS_129: KubeVersion = KubeVersion::new(1, 29);
/// CCE versions older than this reserve memory with the v1 model only.
const CCE_V2_FROM: KubeVersion = KubeVersion::new(1, 21);
/// CCE's own version table (cce_10_0178, "Relationship Between Node Resource Reservation and
/// Cluster Versions"): per minor line, the first `1.minor.patch-r0` from which every node
/// pool uses v2, and for 1.21/1.23 the first from which default node pools do (custom node
/// pools keep v1 until the first threshold; earlier releases are v1 throughout). Lines not
/// listed (1.22, 1.24, 1.26: never shipped by CCE; 1.29 on) are v2.
const CCE_V2_EVERY_POOL: [(u32, u32); 5] = [(21, 13), (23, 12), (25, 7), (27, 4), (28, 2)];
const CCE_V2_DEFAULT_POOLS: [(u32, u32); 2] = [(21, 4), (23, 3)];

impl Policy {
    pub fn name(&self) -> &'static str {
        match self {
            Policy::Eks => "eks",
            Policy::Gke => "gke",
            Policy::Aks => "aks",
            Policy::Ack => "ack",
            Policy::Tke => "tke",
            Policy::Cce => "cce",
            Policy::Explicit(_) => "explicit",
        }
    }

    /// The rule for a node running Kubernetes `version` (None: unknown, which picks the
    /// provider's current rule and says so).
    pub fn rule_for(&self, version: Option<KubeVersion>) -> RuleChoice {
        let unknown = |rule: Rule, newest: &str| RuleChoice {
            rule,
            warning: Some(format!("kubelet version unknown: used the {} ({newest}); pass --kubernetes-version to choose", rule.describe())),
        };
        let plain = |rule: Rule| RuleChoice { rule, warning: None };
        match (self, version) {
            (Policy::Eks, _) => plain(Rule::Eks),
            (Policy::Gke, _) => plain(Rule::Gke),
            (Policy::Tke, _) => plain(Rule::Tke),
            (Policy::Explicit(_), _) => plain(Rule::Explicit),
            (Policy::Aks, None) => unknown(Rule::Aks129, "the current one"),
            (Policy::Aks, Some(v)) if v >= AKS_129 => plain(Rule::Aks129),
            (Policy::Aks, Some(_)) => plain(Rule::AksBefore129),
            (Policy::Ack, None) => unknown(Rule::Ack128, "the current one"),
            (Policy::Ack, Some(v)) if v >= ACK_128 => plain(Rule::Ack128),
            (Policy::Ack, Some(v)) if v < ACK_OLDEST => RuleChoice {
                rule: Rule::Ack120,
                warning: Some(format!("ACK publishes no rule before Kubernetes 1.20; used its 1.20-1.27 rule for {v}")),
            },
            (Policy::Ack, Some(_)) => plain(Rule::Ack120),
            (Policy::Cce, None) => unknown(Rule::CceV2, "the current one"),
            (Policy::Cce, Some(v)) => cce_rule(v),
        }
    }

    /// Compute the reservation for `facts` (explicit maps left out become empty) with the
    /// provider's current rule.
    pub fn compute(&self, facts: &NodeFacts) -> Result<Reservation, KubeletError> {
        self.compute_over(facts, &Reservation::default())
    }

    /// As `compute`; for `explicit`, maps the operator left out keep `current`.
    pub fn compute_over(&self, facts: &NodeFacts, current: &Reservation) -> Result<Reservation, KubeletError> {
        self.compute_for(facts, None, current).map(|(r, _)| r)
    }

    /// Compute the reservation with the rule for Kubernetes `version`.
    pub fn compute_for(
        &self,
        facts: &NodeFacts,
        version: Option<KubeVersion>,
        current: &Reservation,
    ) -> Result<(Reservation, RuleChoice), KubeletError> {
        facts.check()?;
        let choice = self.rule_for(version);
        let r = match (choice.rule, self) {
            (_, Policy::Explicit(spec)) => spec.over(current),
            (Rule::Eks, _) => eks(facts),
            (Rule::Gke, _) => gke(facts),
            (Rule::AksBefore129, _) => aks_before_129(facts),
            (Rule::Aks129, _) => aks(facts),
            (Rule::Ack120, _) => ack(facts),
            (Rule::Ack128, _) => ack_128(facts),
            (Rule::Tke, _) => tke(facts),
            (Rule::CceV1, _) => cce_v1(facts),
            (Rule::CceV2, _) => cce_v2(facts),
            // Only `Policy::Explicit` resolves to `Rule::Explicit` (matched above).
            (Rule::Explicit, _) => current.clone(),
        };
        Ok((r, choice))
    }
}

/// CCE's memory model for a known version (see `CCE_V2_EVERY_POOL`). Whether a node belongs
/// to a default or a custom node pool cannot be seen on the node, so where CCE's table depends
/// on it the rule is v2 (the default pools') and the plan says how to get v1.
fn cce_rule(v: KubeVersion) -> RuleChoice {
    let plain = |rule: Rule| RuleChoice { rule, warning: None };
    if v < CCE_V2_FROM {
        return plain(Rule::CceV1);
    }
    let Some(&(minor, every)) = CCE_V2_EVERY_POOL.iter().find(|(m, _)| *m == v.minor) else {
        return plain(Rule::CceV2);
    };
    // `-rN` revisions above r0 are later than r0; the thresholds are all r0.
    match v.patch {
        Some(p) if p >= every => plain(Rule::CceV2),
        Some(p) if CCE_V2_DEFAULT_POOLS.iter().any(|&(m, first)| m == minor && p < first) => plain(Rule::CceV1),
        _ => RuleChoice {
            rule: Rule::CceV2,
            warning: Some(format!(
                "CCE {v}: nodes of custom node pools before v1.{minor}.{every}-r0 reserve memory with CCE's v1 model, default node pools with v2; used v2 (pass --kubernetes-version 1.20 to plan v1)"
            )),
        },
    }
}

/// Sum over `(start, end, rate)` ranges of `(min(total, end) - start) * rate / 10000`, with the
/// integer division per range exactly as amazon-eks-ami's `get_resource_to_reserve_in_range`.
fn laddered(total: u64, ranges: &[(u64, u64, u64)]) -> u64 {
    ranges
        .iter()
        .filter(|(start, _, _)| total > *start)
        .map(|(start, end, rate)| ((total.min(*end) - start) as u128 * *rate as u128 / 10_000) as u64)
        .sum()
}

/// GKE/EKS CPU ladder in millicores: 6% of core 1, 1% of core 2, 0.5% of cores 3-4, 0.25% above.
pub fn cpu_ladder_millis(cpus: u32) -> u64 {
    let total = cpus as u64 * 1000;
    laddered(total, &[(0, 1000, 600), (1000, 2000, 100), (2000, 4000, 50), (4000, u64::MAX, 25)])
}

/// The 25 % / 20 % / 10 % / 6 % / 2 % memory tiers (first 4GiB, next 4, next 8, next 112,
/// the rest) that GKE, AKS before 1.29, ACK 1.20-1.27 and TKE all publish, in bytes.
pub fn tiered_memory_bytes(memory: u64) -> u64 {
    laddered(
        memory,
        &[(0, 4 * GI, 2500), (4 * GI, 8 * GI, 2000), (8 * GI, 16 * GI, 1000), (16 * GI, 128 * GI, 600), (128 * GI, u64::MAX, 200)],
    )
}

/// GKE memory ladder in bytes: 255Mi below 1GiB, else the 25/20/10/6/2 % tiers.
pub fn gke_memory_bytes(memory: u64) -> u64 {
    if memory < GI {
        return 255 * MI;
    }
    tiered_memory_bytes(memory)
}

fn ceil_mi(bytes: u64) -> Quantity {
    Quantity::from_mebibytes(bytes.div_ceil(MI))
}

fn threshold(s: &str) -> Threshold {
    // Only called with literals below; a failure is a programming error caught by the tests.
    Threshold::parse(s).unwrap_or(Threshold::Percent(0))
}

fn eviction(memory: &str, extra: &[(&str, &str)]) -> EvictionMap {
    let mut m = EvictionMap::new();
    m.insert("memory.available".into(), threshold(memory));
    for (k, v) in extra {
        m.insert((*k).into(), threshold(v));
    }
    m
}

const NODEFS: [(&str, &str); 2] = [("nodefs.available", "10%"), ("nodefs.inodesFree", "5%")];

/// amazon-eks-ami bootstrap: kubeReserved cpu ladder, memory 255Mi + 11Mi x maxPods,
/// ephemeral-storage 1Gi; no systemReserved.
pub fn eks(f: &NodeFacts) -> Reservation {
    let mut kube = ResourceMap::new();
    kube.insert("cpu".into(), Quantity::from_millis(cpu_ladder_millis(f.cpus) as i64));
    kube.insert("ephemeral-storage".into(), Quantity::from_bytes(GI));
    kube.insert("memory".into(), Quantity::from_mebibytes(255 + 11 * f.max_pods as u64));
    Reservation { kube_reserved: kube, system_reserved: ResourceMap::new(), eviction_hard: eviction("100Mi", &NODEFS) }
}

/// GKE node allocatable: CPU ladder, tiered memory; eviction memory.available<100Mi.
pub fn gke(f: &NodeFacts) -> Reservation {
    let mut kube = ResourceMap::new();
    kube.insert("cpu".into(), Quantity::from_millis(cpu_ladder_millis(f.cpus) as i64));
    kube.insert("memory".into(), ceil_mi(gke_memory_bytes(f.memory_bytes)));
    Reservation { kube_reserved: kube, system_reserved: ResourceMap::new(), eviction_hard: eviction("100Mi", &NODEFS) }
}

/// AKS kube-reserved CPU in millicores. The published table (1:60, 2:100, 4:140, 8:180,
/// 16:260, 32:420, 64:740) is exactly 60m for one core, 100m for two, +20m per core up to 4,
/// then +10m per core; sizes between table points follow the same line.
pub fn aks_cpu_millis(cpus: u32) -> u64 {
    let c = cpus as u64;
    match c {
        0 | 1 => 60,
        2..=4 => 100 + 20 * (c - 2),
        _ => 140 + 10 * (c - 4),
    }
}

/// AKS (1.29+): kube-reserved memory = min(20Mi x maxPods + 50Mi, 25% of memory);
/// eviction memory.available<100Mi.
pub fn aks(f: &NodeFacts) -> Reservation {
    let by_pods = (20 * f.max_pods as u64 + 50) * MI;
    let quarter = f.memory_bytes / 4;
    let mut kube = ResourceMap::new();
    kube.insert("cpu".into(), Quantity::from_millis(aks_cpu_millis(f.cpus) as i64));
    kube.insert("memory".into(), ceil_mi(by_pods.min(quarter)));
    Reservation { kube_reserved: kube, system_reserved: ResourceMap::new(), eviction_hard: eviction("100Mi", &NODEFS) }
}

/// ACK total CPU reservation in millicores: 100m up to 4 cores, then 2.5% per core to 64,
/// 1.25% per core to 128, 0.5% per core above (the ladder that reproduces ACK's published
/// 4-vCPU example, 4000m capacity -> 3900m allocatable; see docs/kubelet.md).
pub fn ack_cpu_millis(cpus: u32) -> u64 {
    let total = cpus as u64 * 1000;
    100 + laddered(total, &[(4000, 64_000, 250), (64_000, 128_000, 125), (128_000, u64::MAX, 50)])
}

/// The 25/20/10/6/2 % memory tiers with **each tier** rounded down to whole MiB, as ACK's
/// published table has them (256GiB -> 1024 + 819 + 819 + 6881 + 2621 = 12164MiB, where the
/// exact sum 12165.12 would round to 12165; 512GiB -> 17407).
fn tiered_memory_mebibytes_per_tier(memory: u64) -> u64 {
    const TIERS: [(u64, u64, u64); 5] =
        [(0, 4 * GI, 2500), (4 * GI, 8 * GI, 2000), (8 * GI, 16 * GI, 1000), (16 * GI, 128 * GI, 600), (128 * GI, u64::MAX, 200)];
    TIERS
        .iter()
        .filter(|(start, _, _)| memory > *start)
        .map(|(start, end, rate)| ((memory.min(*end) - start) as u128 * *rate as u128 / (10_000 * MI as u128)) as u64)
        .sum()
}

/// ACK total memory reservation (1.20-1.27): the 25/20/10/6/2 % tiers, each rounded down to
/// whole MiB. Reproduces every row of ACK's published example table and its worked node to
/// the KiB (together with memory.available<300Mi).
pub fn ack_memory_mebibytes(memory: u64) -> u64 {
    tiered_memory_mebibytes_per_tier(memory)
}

/// Alibaba ACK (Kubernetes 1.20-1.27): the total reservation split 50/50 between kubeReserved
/// and systemReserved (as ACK's policy page states); eviction memory.available<300Mi plus
/// kubelet's disk defaults.
pub fn ack(f: &NodeFacts) -> Reservation {
    ack_split(ack_cpu_millis(f.cpus), ack_memory_mebibytes(f.memory_bytes))
}

/// ACK total memory for Kubernetes 1.28 and later: min(11Mi x maxPods + 255Mi, 25 % of the
/// node's memory), in whole MiB (the quarter rounded down, like the 1.20-1.27 rule).
pub fn ack_128_memory_mebibytes(memory: u64, max_pods: u32) -> u64 {
    (11 * max_pods as u64 + 255).min(memory / 4 / MI)
}

/// Alibaba ACK (Kubernetes 1.28 and later): the 6/1/0.5/0.25 % CPU ladder and
/// `ack_128_memory_mebibytes`, split 50/50 like the older rule, same eviction thresholds.
pub fn ack_128(f: &NodeFacts) -> Reservation {
    ack_split(cpu_ladder_millis(f.cpus), ack_128_memory_mebibytes(f.memory_bytes, f.max_pods))
}

/// ACK's 50/50 split of a total (odd remainder to kubeReserved) and its eviction thresholds.
fn ack_split(cpu: u64, mem_mi: u64) -> Reservation {
    let mut kube = ResourceMap::new();
    let mut system = ResourceMap::new();
    kube.insert("cpu".into(), Quantity::from_millis(cpu.div_ceil(2) as i64));
    system.insert("cpu".into(), Quantity::from_millis((cpu / 2) as i64));
    kube.insert("memory".into(), Quantity::from_mebibytes(mem_mi.div_ceil(2)));
    system.insert("memory".into(), Quantity::from_mebibytes(mem_mi / 2));
    let mut ev = eviction("300Mi", &NODEFS);
    ev.insert("imagefs.available".into(), threshold("15%"));
    Reservation { kube_reserved: kube, system_reserved: system, eviction_hard: ev }
}

/// AKS before 1.29: the AKS CPU table, the 25/20/10/6/2 % memory tiers rounded down to whole
/// MiB (a measured DS2 v2 node, 7GiB, shows 1638Mi = 1.6GiB rounded down), and
/// memory.available<750Mi.
pub fn aks_before_129(f: &NodeFacts) -> Reservation {
    let mut kube = ResourceMap::new();
    kube.insert("cpu".into(), Quantity::from_millis(aks_cpu_millis(f.cpus) as i64));
    kube.insert("memory".into(), Quantity::from_mebibytes(tiered_memory_bytes(f.memory_bytes) / MI));
    Reservation { kube_reserved: kube, system_reserved: ResourceMap::new(), eviction_hard: eviction("750Mi", &NODEFS) }
}

/// Tencent TKE: the same CPU ladder and memory tiers as ACK 1.20-1.27 (its page's examples:
/// 32c -> 0.8c, 96c -> 2c, 196c -> 2.74c; 8GB -> 1843MB, 32GB -> 3645MB, 320GB -> 13475MB),
/// all in kubeReserved (the only reservation the page names); kubelet's default
/// memory.available<100Mi since the page sets no other.
pub fn tke(f: &NodeFacts) -> Reservation {
    let mut kube = ResourceMap::new();
    kube.insert("cpu".into(), Quantity::from_millis(ack_cpu_millis(f.cpus) as i64));
    // TKE's examples do not tell per-tier from total rounding; the total is rounded down.
    kube.insert("memory".into(), Quantity::from_mebibytes(tiered_memory_bytes(f.memory_bytes) / MI));
    Reservation { kube_reserved: kube, system_reserved: ResourceMap::new(), eviction_hard: eviction("100Mi", &NODEFS) }
}

/// CCE v1, system components: 0 up to 8GiB, 10 % of 8-16GiB, 6 % of 16-128GiB, 2 % above;
/// in hundredths of a MiB so the tiers add exactly.
fn cce_system_centi_mi(memory: u64) -> u64 {
    let r = laddered(memory, &[(8 * GI, 16 * GI, 1000), (16 * GI, 128 * GI, 600), (128 * GI, u64::MAX, 200)]);
    (r as u128 * 100 / MI as u128) as u64
}

/// CCE v1, kubelet managing pods: 25 % of memory up to 2GiB, else by max pods
/// (700MiB up to 16, then +18.75 / +6.25 / +7.80 / +11.20 MiB per pod from 16 / 32 / 64 / 128
/// pods, starting at 700 / 1024 / 1230 / 1740MiB), in hundredths of a MiB.
fn cce_kubelet_centi_mi(memory: u64, max_pods: u32) -> u64 {
    if memory <= 2 * GI {
        return (memory as u128 * 25 / MI as u128) as u64;
    }
    let p = max_pods as u64;
    match p {
        0..=16 => 70_000,
        17..=32 => 70_000 + (p - 16) * 1875,
        33..=64 => 102_400 + (p - 32) * 625,
        65..=128 => 123_000 + (p - 64) * 780,
        _ => 174_000 + (p - 128) * 1120,
    }
}

/// Huawei CCE (memory model v1): CPU on the 6/1/0.5/0.25 % ladder in kubeReserved; memory
/// split as the page splits it — the system-components part in systemReserved, the
/// kubelet-for-pods part in kubeReserved, each rounded down to whole MiB; memory.available<100Mi.
pub fn cce_v1(f: &NodeFacts) -> Reservation {
    let mut kube = ResourceMap::new();
    let mut system = ResourceMap::new();
    kube.insert("cpu".into(), Quantity::from_millis(cpu_ladder_millis(f.cpus) as i64));
    kube.insert("memory".into(), Quantity::from_mebibytes(cce_kubelet_centi_mi(f.memory_bytes, f.max_pods) / 100));
    let sys = cce_system_centi_mi(f.memory_bytes) / 100;
    if sys > 0 {
        system.insert("memory".into(), Quantity::from_mebibytes(sys));
    }
    Reservation { kube_reserved: kube, system_reserved: system, eviction_hard: eviction("100Mi", &NODEFS) }
}

/// Huawei CCE (memory model v2, cce_10_0178 "Node Memory Reservation Rule v2"): systemReserved
/// memory = 400MiB + 25MiB per GiB of node memory (the exact product rounded down to whole
/// MiB), kubeReserved memory = 500MiB + 5MiB per pod (the containerd figure; Docker nodes
/// reserve 20MiB per pod, see docs/kubelet.md), CPU as in v1 (kubeReserved);
/// memory.available<100Mi.
pub fn cce_v2(f: &NodeFacts) -> Reservation {
    let mut kube = ResourceMap::new();
    let mut system = ResourceMap::new();
    kube.insert("cpu".into(), Quantity::from_millis(cpu_ladder_millis(f.cpus) as i64));
    kube.insert("memory".into(), Quantity::from_mebibytes(500 + 5 * f.max_pods as u64));
    let kernel_mi = (f.memory_bytes as u128 * 25 / GI as u128) as u64;
    system.insert("memory".into(), Quantity::from_mebibytes(400 + kernel_mi));
    Reservation { kube_reserved: kube, system_reserved: system, eviction_hard: eviction("100Mi", &NODEFS) }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts(cpus: u32, mem_gi: u64, max_pods: u32) -> NodeFacts {
        NodeFacts { cpus, memory_bytes: mem_gi * GI, max_pods, ephemeral_storage_bytes: None }
    }

    fn s(m: &ResourceMap, k: &str) -> String {
        m.get(k).map(|q| q.to_string()).unwrap_or_default()
    }

    #[test]
    fn cpu_ladder_matches_eks_bootstrap() {
        // (vCPUs, millicores) worked with the bootstrap.sh integer arithmetic.
        let table = [(1, 60), (2, 70), (3, 75), (4, 80), (8, 90), (16, 110), (32, 150), (48, 190), (64, 230), (96, 310), (192, 550)];
        for (cpus, want) in table {
            assert_eq!(cpu_ladder_millis(cpus), want, "{cpus} vCPU");
        }
    }

    #[test]
    fn eks_table() {
        // (instance, vCPU, GiB, maxPods, cpu, memory): maxPods from eni-max-pods.txt.
        let table = [
            ("t3.medium", 2, 4, 17, "70m", "442Mi"),
            ("m5.large", 2, 8, 29, "70m", "574Mi"),
            ("m5.xlarge", 4, 16, 58, "80m", "893Mi"),
            ("m5.2xlarge", 8, 32, 58, "90m", "893Mi"),
            ("m5.4xlarge", 16, 64, 234, "110m", "2829Mi"),
            ("m5.24xlarge", 96, 384, 737, "310m", "8362Mi"),
        ];
        for (name, cpus, gi, pods, cpu, mem) in table {
            let r = eks(&facts(cpus, gi, pods));
            assert_eq!(s(&r.kube_reserved, "cpu"), cpu, "{name}");
            assert_eq!(s(&r.kube_reserved, "memory"), mem, "{name}");
            assert_eq!(s(&r.kube_reserved, "ephemeral-storage"), "1Gi", "{name}");
            assert!(r.system_reserved.is_empty());
            assert_eq!(r.eviction_hard["memory.available"].to_string(), "100Mi");
            assert_eq!(r.eviction_hard["nodefs.available"].to_string(), "10%");
            assert_eq!(r.eviction_hard["nodefs.inodesFree"].to_string(), "5%");
        }
    }

    #[test]
    fn gke_table() {
        // (GiB or MiB, memory reserved): 25% of 4Gi = 1024Mi, +20% of next 4Gi = 819.2Mi, ...
        let table: [(u64, &str); 7] = [
            (512 * MI, "255Mi"),
            (GI, "256Mi"),
            (4 * GI, "1Gi"),
            (8 * GI, "1844Mi"),
            (16 * GI, "2663Mi"),
            (32 * GI, "3646Mi"),
            (256 * GI, "12166Mi"),
        ];
        for (mem, want) in table {
            let r = gke(&NodeFacts { cpus: 4, memory_bytes: mem, max_pods: 110, ephemeral_storage_bytes: None });
            assert_eq!(s(&r.kube_reserved, "memory"), want, "{mem}");
            assert_eq!(s(&r.kube_reserved, "cpu"), "80m");
        }
    }

    #[test]
    fn aks_table() {
        for (cpus, want) in [(1, 60), (2, 100), (4, 140), (8, 180), (16, 260), (32, 420), (64, 740)] {
            assert_eq!(aks_cpu_millis(cpus), want, "{cpus} cores (published table)");
        }
        // Microsoft's examples: 8GB/30 pods -> 650MB; 4GB/70 pods -> 25% of memory.
        let r = aks(&facts(2, 8, 30));
        assert_eq!(s(&r.kube_reserved, "memory"), "650Mi");
        let r = aks(&facts(2, 4, 70));
        assert_eq!(s(&r.kube_reserved, "memory"), "1Gi");
        assert_eq!(r.eviction_hard["memory.available"].to_string(), "100Mi");
    }

    #[test]
    fn ack_reproduces_published_example() {
        // ACK's policy page: capacity cpu 4 / memory 7925980Ki -> allocatable 3900m / 5824732Ki.
        let f = NodeFacts { cpus: 4, memory_bytes: 7_925_980 * 1024, max_pods: 64, ephemeral_storage_bytes: None };
        let r = ack(&f);
        let a = crate::kubelet::validate::allocatable(&f, &r);
        assert_eq!(a.cpu_millis, 3900);
        assert_eq!(a.memory_bytes, 5_824_732 * 1024);
        assert_eq!(s(&r.kube_reserved, "cpu"), "50m");
        assert_eq!(s(&r.system_reserved, "cpu"), "50m");
        assert_eq!(s(&r.kube_reserved, "memory"), "876Mi");
        assert_eq!(s(&r.system_reserved, "memory"), "876Mi");
        assert_eq!(r.eviction_hard["memory.available"].to_string(), "300Mi");
        assert_eq!(r.eviction_hard["imagefs.available"].to_string(), "15%");
    }

    #[test]
    fn ack_table() {
        // (vCPU, total cpu m) and (GiB, total MiB): ladder worked by hand.
        for (cpus, want) in [(1, 100), (2, 100), (4, 100), (8, 200), (32, 800), (64, 1600), (96, 2000), (128, 2400), (196, 2740)] {
            assert_eq!(ack_cpu_millis(cpus), want, "{cpus} vCPU");
        }
        for (gi, want) in [(2, 512), (4, 1024), (8, 1843), (16, 2662), (32, 3645), (256, 12164), (448, 16096), (512, 17407)] {
            assert_eq!(ack_memory_mebibytes(gi * GI), want, "{gi} GiB");
        }
        // Odd totals give kubeReserved the extra unit.
        let r = ack(&facts(8, 8, 110));
        assert_eq!((s(&r.kube_reserved, "memory"), s(&r.system_reserved, "memory")), ("922Mi".into(), "921Mi".into()));
        assert_eq!((s(&r.kube_reserved, "cpu"), s(&r.system_reserved, "cpu")), ("100m".into(), "100m".into()));
    }

    /// Total (kubeReserved + systemReserved) cpu millicores and memory MiB of a reservation.
    fn totals(r: &Reservation) -> (i128, i128) {
        let sum = |k: &str| -> i128 { [&r.kube_reserved, &r.system_reserved].iter().filter_map(|m| m.get(k)).map(|q| q.nanos()).sum() };
        (sum("cpu") / 1_000_000, sum("memory") / 1_000_000_000 / (MI as i128))
    }

    #[test]
    fn ack_rules_follow_the_kubernetes_version() {
        let v = |m| Some(KubeVersion::new(1, m));
        assert_eq!(Policy::Ack.rule_for(v(27)).rule, Rule::Ack120);
        assert_eq!(Policy::Ack.rule_for(v(20)).rule, Rule::Ack120);
        assert_eq!(Policy::Ack.rule_for(v(28)).rule, Rule::Ack128);
        assert_eq!(Policy::Ack.rule_for(v(33)).rule, Rule::Ack128);
        assert!(Policy::Ack.rule_for(v(27)).warning.is_none());
        assert!(Policy::Ack.rule_for(v(18)).warning.unwrap().contains("before Kubernetes 1.20"));
        let unknown = Policy::Ack.rule_for(None);
        assert_eq!(unknown.rule, Rule::Ack128);
        assert!(unknown.warning.unwrap().contains("--kubernetes-version"));
        // ACK's published table "Example default resource reservations for ACK nodes" (ECS c7
        // and ebmc7a, maximum pods as Terway shared-ENI gives them): (cpus, GiB, maxPods,
        // 1.28+ totals, 1.20-1.27 totals) in (millicores, MiB), copied from the page.
        for (cpus, gi, pods, new, old) in [
            (2, 4, 15, (70, 420), (100, 1024)),
            (4, 8, 48, (80, 783), (100, 1843)),
            (8, 16, 48, (90, 783), (200, 2662)),
            (16, 32, 213, (110, 2598), (400, 3645)),
            (32, 64, 213, (150, 2598), (800, 5611)),
            (64, 128, 213, (230, 2598), (1600, 9543)),
            (128, 256, 423, (390, 4908), (2400, 12164)),
            (256, 512, 453, (710, 5238), (3040, 17407)),
        ] {
            let f = facts(cpus, gi, pods);
            let (r, c) = Policy::Ack.compute_for(&f, v(27), &Reservation::default()).unwrap();
            assert_eq!((c.rule, totals(&r)), (Rule::Ack120, old), "{cpus}c/{gi}G 1.27");
            let (r, c) = Policy::Ack.compute_for(&f, v(28), &Reservation::default()).unwrap();
            assert_eq!((c.rule, totals(&r)), (Rule::Ack128, new), "{cpus}c/{gi}G 1.28");
            assert_eq!(r.eviction_hard["memory.available"].to_string(), "300Mi");
        }
        // The page's worked lines: 256GiB with 213 pods -> min(11 x 213 + 255, 25 %) = 2598MiB
        // (>= 1.28) and 11.88GiB (1.20-1.27); a 4-core node reserves 80m (40m + 40m) on >= 1.28.
        assert_eq!(ack_128_memory_mebibytes(256 * GI, 213), 2598);
        assert_eq!(ack_memory_mebibytes(256 * GI), 12164);
        let r = ack_128(&facts(4, 8, 48));
        assert_eq!((s(&r.kube_reserved, "cpu"), s(&r.system_reserved, "cpu")), ("40m".into(), "40m".into()));
        // >= 1.28 honours maxPods: the pod term wins until 25 % of memory is smaller.
        assert_eq!(ack_128_memory_mebibytes(4 * GI, 110), 1024, "25% of 4GiB < 11x110+255");
        assert_eq!(ack_128_memory_mebibytes(8 * GI, 110), 1465);
        assert_eq!(ack_128_memory_mebibytes(2 * GI, 16), 431);
        assert_eq!(ack_128_memory_mebibytes(2 * GI, 64), 512);
        // The CPU figures: 4 cores -> 80m, 32 cores -> 150m, split 50/50.
        let r = ack_128(&facts(32, 64, 110));
        assert_eq!((s(&r.kube_reserved, "cpu"), s(&r.system_reserved, "cpu")), ("75m".into(), "75m".into()));
        let r = ack_128(&facts(4, 8, 110));
        assert_eq!((s(&r.kube_reserved, "memory"), s(&r.system_reserved, "memory")), ("733Mi".into(), "732Mi".into()));
    }

    #[test]
    fn aks_rules_follow_the_kubernetes_version() {
        let v = |m| Some(KubeVersion::new(1, m));
        assert_eq!(Policy::Aks.rule_for(v(28)).rule, Rule::AksBefore129);
        assert_eq!(Policy::Aks.rule_for(v(29)).rule, Rule::Aks129);
        assert_eq!(Policy::Aks.rule_for(None).rule, Rule::Aks129);
        // Before 1.29: the page's tiers; a measured Standard_DS2_v2 (2 vCPU, 7GiB VM, capacity
        // 7113660Ki, 110 pods) shows allocatable 1900m / 4668348Ki = 7GiB x 1.6/7 rounded down
        // (1638Mi) + 750Mi eviction taken from the capacity.
        let r = aks_before_129(&facts(2, 7, 110));
        assert_eq!(s(&r.kube_reserved, "cpu"), "100m");
        assert_eq!(s(&r.kube_reserved, "memory"), "1638Mi");
        assert_eq!(r.eviction_hard["memory.available"].to_string(), "750Mi");
        let capacity = NodeFacts { memory_bytes: 7_113_660 * 1024, ..facts(2, 7, 110) };
        let a = crate::kubelet::validate::allocatable(&capacity, &r);
        assert_eq!((a.cpu_millis, a.memory_bytes), (1900, 4_668_348 * 1024));
        for (gi, mi) in [(4, 1024), (8, 1843), (16, 2662), (32, 3645), (64, 5611), (256, 12165)] {
            let r = aks_before_129(&facts(4, gi, 30));
            assert_eq!(s(&r.kube_reserved, "memory"), Quantity::from_mebibytes(mi).to_string(), "{gi}GiB");
        }
        // 1.29 and later: the page's two examples.
        let (r, _) = Policy::Aks.compute_for(&facts(2, 8, 30), v(30), &Reservation::default()).unwrap();
        assert_eq!(s(&r.kube_reserved, "memory"), "650Mi");
        assert_eq!(r.eviction_hard["memory.available"].to_string(), "100Mi");
    }

    #[test]
    fn tke_matches_its_published_examples() {
        // tencentcloud.com/document/product/457/48777: CPU 32c -> 0.8c, 96c -> 2c, 196c -> 2.74c
        // (and <= 4c -> 0.1c); memory 2GB -> 512MB, 8GB -> 1843MB, 12GB -> 2252MB,
        // 32GB -> 3645MB, 320GB -> 13475MB.
        for (cpus, gi, cpu, mem) in [
            (2, 2, "100m", "512Mi"),
            (4, 8, "100m", "1843Mi"),
            (8, 12, "200m", "2252Mi"),
            (32, 32, "800m", "3645Mi"),
            (96, 192, "2", "10854Mi"),
            (196, 320, "2740m", "13475Mi"),
        ] {
            let r = Policy::Tke.compute(&facts(cpus, gi, 64)).unwrap();
            assert_eq!((s(&r.kube_reserved, "cpu"), s(&r.kube_reserved, "memory")), (cpu.into(), mem.into()), "{cpus}c/{gi}G");
            assert!(r.system_reserved.is_empty());
            assert_eq!(r.eviction_hard["memory.available"].to_string(), "100Mi");
        }
    }

    #[test]
    fn cce_v1_matches_its_published_tables() {
        // support.huaweicloud.com cce_10_0178, "rules v1": system components + kubelet by pods.
        // (cpus, GiB, maxPods, cpu, kubeReserved.memory, systemReserved.memory)
        for (cpus, gi, pods, cpu, kube, sys) in [
            (1, 2, 110, "60m", "512Mi", ""),           // <= 2GiB: 25 %
            (2, 4, 20, "70m", "775Mi", ""),            // 700 + 4 x 18.75
            (4, 8, 40, "80m", "1074Mi", ""),           // 1024 + 8 x 6.25
            (8, 16, 110, "90m", "1588Mi", "819Mi"),    // 1230 + 46 x 7.80; 8GiB x 10 %
            (16, 64, 256, "110m", "3173Mi", "3768Mi"), // 1740 + 128 x 11.20; 819.2 + 48 x 61.44
            (32, 256, 16, "150m", "700Mi", "10321Mi"), // 819.2 + 6881.28 + 2621.44 -> 10321.92
        ] {
            let r = cce_v1(&facts(cpus, gi, pods));
            assert_eq!(s(&r.kube_reserved, "cpu"), cpu, "{cpus}c");
            assert_eq!(s(&r.kube_reserved, "memory"), kube, "{gi}GiB/{pods} pods");
            assert_eq!(s(&r.system_reserved, "memory"), sys, "{gi}GiB system");
        }
        // The page's worked node: capacity 2 vCPU -> allocatable 1930m.
        let f = facts(2, 4, 20);
        let a = crate::kubelet::validate::allocatable(&f, &cce_v1(&f));
        assert_eq!(a.cpu_millis, 1930);
        assert_eq!(Policy::Cce.rule_for(Some(KubeVersion::new(1, 19))), RuleChoice { rule: Rule::CceV1, warning: None });
    }

    #[test]
    fn cce_v2_matches_its_published_rule() {
        // cce_10_0178 "Node Memory Reservation Rule v2" with containerd, at the default maximum
        // pods CCE gives each memory size (cce_10_0348 Table 1: 4GiB 20, 8GiB 40, 16GiB 60,
        // 32GiB 80, 64GiB or above 110): (cpus, GiB, pods, cpu, kubeReserved.memory,
        // systemReserved.memory) = (ladder, 500 + 5 x pods, 400 + 25 x GiB).
        for (cpus, gi, pods, cpu, kube, sys) in [
            (2, 4, 20, "70m", "600Mi", "500Mi"),
            (4, 8, 40, "80m", "700Mi", "600Mi"),
            (8, 16, 60, "90m", "800Mi", "800Mi"),
            (16, 32, 80, "110m", "900Mi", "1200Mi"),
            (32, 64, 110, "150m", "1050Mi", "2000Mi"),
            (64, 256, 110, "230m", "1050Mi", "6800Mi"),
        ] {
            let r = cce_v2(&facts(cpus, gi, pods));
            assert_eq!(s(&r.kube_reserved, "cpu"), cpu, "{cpus}c");
            assert_eq!(s(&r.kube_reserved, "memory"), kube, "{gi}GiB/{pods} pods");
            assert_eq!(s(&r.system_reserved, "memory"), sys, "{gi}GiB system");
            assert_eq!(r.eviction_hard["memory.available"].to_string(), "100Mi");
        }
        // Memory that is not whole GiB (capacity is below the flavour): 25MiB/GiB rounded down.
        let f = NodeFacts { memory_bytes: 7_660_952 * 1024, ..facts(4, 8, 40) };
        assert_eq!(s(&cce_v2(&f).system_reserved, "memory"), "582Mi"); // 400 + 182.6
    }

    #[test]
    fn cce_rules_follow_its_version_table() {
        let rule = |s: &str| Policy::Cce.rule_for(Some(KubeVersion::parse(s).unwrap()));
        // Every pool on v2: 1.29 on, and from each line's threshold.
        for s in ["1.29", "v1.31.1-r0", "1.28.2-r0", "1.28.5", "1.27.4-r0", "1.25.7-r1", "1.23.12-r0", "1.21.13-r0", "1.24", "1.26.3"] {
            assert_eq!(rule(s), RuleChoice { rule: Rule::CceV2, warning: None }, "{s}");
        }
        // v1 throughout: before 1.21, and 1.21 before v1.21.4-r0, 1.23 before v1.23.3-r0.
        for s in ["1.19", "v1.19.16-r4", "1.21.3-r0", "1.23.2"] {
            assert_eq!(rule(s), RuleChoice { rule: Rule::CceV1, warning: None }, "{s}");
        }
        // Custom pools v1, default pools v2 (or the patch is unknown): v2, and the plan says so.
        for s in ["1.28.1-r0", "1.27", "1.25.6", "1.23.3-r0", "1.21.12-r0", "1.21"] {
            let c = rule(s);
            assert_eq!(c.rule, Rule::CceV2, "{s}");
            assert!(c.warning.unwrap().contains("custom node pools"), "{s}");
        }
        let unknown = Policy::Cce.rule_for(None);
        assert_eq!(unknown.rule, Rule::CceV2);
        assert!(unknown.warning.unwrap().contains("--kubernetes-version"));
    }

    #[test]
    fn facts_out_of_bounds_are_refused() {
        for f in [facts(0, 8, 10), facts(5000, 8, 10), facts(2, 0, 10), facts(2, 8, 0), facts(2, 8, 5000)] {
            let e = Policy::Eks.compute(&f).unwrap_err().to_string();
            assert!(e.contains("must be"), "{e}");
        }
    }

    #[test]
    fn thresholds_parse_and_print() {
        assert_eq!(Threshold::parse("10%").unwrap(), Threshold::Percent(10_000));
        assert_eq!(Threshold::parse("7.5%").unwrap().to_string(), "7.5%");
        assert_eq!(Threshold::parse("100Mi").unwrap().to_string(), "100Mi");
        assert_eq!(Threshold::parse("10%").unwrap().amount_of(1000), 100);
        for bad in ["101%", "%", "x%", "-1Mi", "1.2345%", "abc"] {
            assert!(Threshold::parse(bad).is_err(), "{bad}");
        }
    }
}
