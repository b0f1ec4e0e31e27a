//! Reservation policies: pure functions from node facts (vCPUs, memory, max pods, ephemeral
//! storage) to `kubeReserved` / `systemReserved` / `evictionHard`. Formulas and their sources
//! are documented in docs/kubelet.md; every policy here is deterministic and does no I/O.

use std::collections::BTreeMap;
use std::fmt;

use super::KubeletError;
use super::explicit::ExplicitSpec;
use super::quantity::Quantity;

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
            return Err(KubeletError::InvalidPlan(format!(
                "cpus must be 1..={MAX_CPUS}, got {}",
                self.cpus
            )));
        }
        if self.memory_bytes < MIN_MEMORY_BYTES || self.memory_bytes > MAX_MEMORY_BYTES {
            return Err(KubeletError::InvalidPlan(format!(
                "memory must be between 64Mi and 64Ti, got {}",
                Quantity::from_bytes(self.memory_bytes)
            )));
        }
        if self.max_pods == 0 || self.max_pods > MAX_PODS_LIMIT {
            return Err(KubeletError::InvalidPlan(format!(
                "maxPods must be 1..={MAX_PODS_LIMIT}, got {}",
                self.max_pods
            )));
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
            let ok = !int.is_empty()
                && int.len() <= 3
                && frac.len() <= 3
                && int.bytes().chain(frac.bytes()).all(|b| b.is_ascii_digit());
            if !ok {
                return Err(format!("threshold {s:?} is not a percentage like 10% or 7.5%"));
            }
            let v: u32 = int.parse::<u32>().unwrap_or(0) * 1000
                + format!("{frac:0<3}").parse::<u32>().unwrap_or(0);
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
    Explicit(ExplicitSpec),
}

impl Policy {
    pub fn name(&self) -> &'static str {
        match self {
            Policy::Eks => "eks",
            Policy::Gke => "gke",
            Policy::Aks => "aks",
            Policy::Ack => "ack",
            Policy::Explicit(_) => "explicit",
        }
    }

    /// Compute the reservation for `facts` (explicit maps left out become empty).
    pub fn compute(&self, facts: &NodeFacts) -> Result<Reservation, KubeletError> {
        self.compute_over(facts, &Reservation::default())
    }

    /// Compute the reservation; for `explicit`, maps the operator left out keep `current`.
    pub fn compute_over(
        &self,
        facts: &NodeFacts,
        current: &Reservation,
    ) -> Result<Reservation, KubeletError> {
        facts.check()?;
        Ok(match self {
            Policy::Eks => eks(facts),
            Policy::Gke => gke(facts),
            Policy::Aks => aks(facts),
            Policy::Ack => ack(facts),
            Policy::Explicit(spec) => spec.over(current),
        })
    }
}

/// Sum over `(start, end, rate)` ranges of `(min(total, end) - start) * rate / 10000`, with the
/// integer division per range exactly as amazon-eks-ami's `get_resource_to_reserve_in_range`.
fn laddered(total: u64, ranges: &[(u64, u64, u64)]) -> u64 {
    ranges
        .iter()
        .filter(|(start, _, _)| total > *start)
        .map(|(start, end, rate)| {
            ((total.min(*end) - start) as u128 * *rate as u128 / 10_000) as u64
        })
        .sum()
}

/// GKE/EKS CPU ladder in millicores: 6% of core 1, 1% of core 2, 0.5% of cores 3-4, 0.25% above.
pub fn cpu_ladder_millis(cpus: u32) -> u64 {
    let total = cpus as u64 * 1000;
    laddered(total, &[(0, 1000, 600), (1000, 2000, 100), (2000, 4000, 50), (4000, u64::MAX, 25)])
}

/// GKE memory ladder in bytes: 255Mi below 1GiB, else 25% / 20% / 10% / 6% / 2% tiers.
pub fn gke_memory_bytes(memory: u64) -> u64 {
    if memory < GI {
        return 255 * MI;
    }
    laddered(
        memory,
        &[
            (0, 4 * GI, 2500),
            (4 * GI, 8 * GI, 2000),
            (8 * GI, 16 * GI, 1000),
            (16 * GI, 128 * GI, 600),
            (128 * GI, u64::MAX, 200),
        ],
    )
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
    Reservation {
        kube_reserved: kube,
        system_reserved: ResourceMap::new(),
        eviction_hard: eviction("100Mi", &NODEFS),
    }
}

/// GKE node allocatable: CPU ladder, tiered memory; eviction memory.available<100Mi.
pub fn gke(f: &NodeFacts) -> Reservation {
    let mut kube = ResourceMap::new();
    kube.insert("cpu".into(), Quantity::from_millis(cpu_ladder_millis(f.cpus) as i64));
    kube.insert("memory".into(), ceil_mi(gke_memory_bytes(f.memory_bytes)));
    Reservation {
        kube_reserved: kube,
        system_reserved: ResourceMap::new(),
        eviction_hard: eviction("100Mi", &NODEFS),
    }
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
    Reservation {
        kube_reserved: kube,
        system_reserved: ResourceMap::new(),
        eviction_hard: eviction("100Mi", &NODEFS),
    }
}

/// ACK total CPU reservation in millicores: 100m up to 4 cores, then 2.5% per core to 64,
/// 1.25% per core to 128, 0.5% per core above (the ladder that reproduces ACK's published
/// 4-vCPU example, 4000m capacity -> 3900m allocatable; see docs/kubelet.md).
pub fn ack_cpu_millis(cpus: u32) -> u64 {
    let total = cpus as u64 * 1000;
    100 + laddered(total, &[(4000, 64_000, 250), (64_000, 128_000, 125), (128_000, u64::MAX, 50)])
}

/// ACK total memory reservation: the 25/20/10/6/2 % tiers, rounded down to whole MiB
/// (reproduces ACK's published example to the KiB together with memory.available<300Mi).
pub fn ack_memory_mebibytes(memory: u64) -> u64 {
    let tiers = laddered(
        memory,
        &[
            (0, 4 * GI, 2500),
            (4 * GI, 8 * GI, 2000),
            (8 * GI, 16 * GI, 1000),
            (16 * GI, 128 * GI, 600),
            (128 * GI, u64::MAX, 200),
        ],
    );
    tiers / MI
}

/// Alibaba ACK: the total reservation split 50/50 between kubeReserved and systemReserved
/// (as ACK's policy page states); eviction memory.available<300Mi plus kubelet's disk defaults.
pub fn ack(f: &NodeFacts) -> Reservation {
    let cpu = ack_cpu_millis(f.cpus);
    let mem_mi = ack_memory_mebibytes(f.memory_bytes);
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
        let table = [
            (1, 60),
            (2, 70),
            (3, 75),
            (4, 80),
            (8, 90),
            (16, 110),
            (32, 150),
            (48, 190),
            (64, 230),
            (96, 310),
            (192, 550),
        ];
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
            let r = gke(&NodeFacts {
                cpus: 4,
                memory_bytes: mem,
                max_pods: 110,
                ephemeral_storage_bytes: None,
            });
            assert_eq!(s(&r.kube_reserved, "memory"), want, "{mem}");
            assert_eq!(s(&r.kube_reserved, "cpu"), "80m");
        }
    }

    #[test]
    fn aks_table() {
        for (cpus, want) in [(1, 60), (2, 100), (4, 140), (8, 180), (16, 260), (32, 420), (64, 740)]
        {
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
        let f = NodeFacts {
            cpus: 4,
            memory_bytes: 7_925_980 * 1024,
            max_pods: 64,
            ephemeral_storage_bytes: None,
        };
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
        for (cpus, want) in [
            (1, 100),
            (2, 100),
            (4, 100),
            (8, 200),
            (32, 800),
            (64, 1600),
            (96, 2000),
            (128, 2400),
            (196, 2740),
        ] {
            assert_eq!(ack_cpu_millis(cpus), want, "{cpus} vCPU");
        }
        for (gi, want) in [(2, 512), (4, 1024), (8, 1843), (16, 2662), (32, 3645), (448, 16097)] {
            assert_eq!(ack_memory_mebibytes(gi * GI), want, "{gi} GiB");
        }
        // Odd totals give kubeReserved the extra unit.
        let r = ack(&facts(8, 8, 110));
        assert_eq!(
            (s(&r.kube_reserved, "memory"), s(&r.system_reserved, "memory")),
            ("922Mi".into(), "921Mi".into())
        );
        assert_eq!(
            (s(&r.kube_reserved, "cpu"), s(&r.system_reserved, "cpu")),
            ("100m".into(), "100m".into())
        );
    }

    #[test]
    fn facts_out_of_bounds_are_refused() {
        for f in [
            facts(0, 8, 10),
            facts(5000, 8, 10),
            facts(2, 0, 10),
            facts(2, 8, 0),
            facts(2, 8, 5000),
        ] {
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
