//! The Kubernetes minor version a reservation rule is chosen by: parsed once from what an
//! operator types (`--kubernetes-version 1.28`, `v1.30.2`) or from what `kubelet --version`
//! prints (`Kubernetes v1.30.2-eks-1552ad0`, CCE's `v1.27.4-r0`). Only major.minor matter to the
//! providers' rules, so the patch and any build suffix are read but not kept.

use std::fmt;

use super::KubeletError;

/// Bound on a version string: anything longer is not a version.
const MAX_VERSION_LEN: usize = 128;

/// `major.minor` of a Kubernetes release.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
pub struct KubeVersion {
    pub major: u32,
    pub minor: u32,
}

impl KubeVersion {
    pub const fn new(major: u32, minor: u32) -> KubeVersion {
        KubeVersion { major, minor }
    }

    /// Parse `1.28`, `v1.28.3`, `1.27.4-r0`, `v1.30.2-eks-1552ad0` or the whole line
    /// `Kubernetes v1.30.2` that `kubelet --version` prints. Refusals name the input's problem.
    pub fn parse(s: &str) -> Result<KubeVersion, KubeletError> {
        let bad = |why: &str| {
            KubeletError::InvalidPlan(format!(
                "kubernetes version {:?}: {why} (expected e.g. 1.28 or v1.30.2)",
                s.chars().take(40).collect::<String>()
            ))
        };
        if s.len() > MAX_VERSION_LEN {
            return Err(bad("too long"));
        }
        let t = s.trim();
        let t = t.strip_prefix("Kubernetes").map(str::trim_start).unwrap_or(t);
        let t = t.strip_prefix(['v', 'V']).unwrap_or(t);
        let mut parts = t.splitn(3, '.');
        let major = parts.next().unwrap_or("");
        let minor = parts.next().ok_or_else(|| bad("no minor version"))?;
        // The minor ends at the first non-digit (`28+`, `28-eks` are seen in the wild).
        let minor_digits: &str = {
            let end = minor.find(|c: char| !c.is_ascii_digit()).unwrap_or(minor.len());
            minor.get(..end).unwrap_or("")
        };
        let num = |p: &str| -> Option<u32> {
            (!p.is_empty() && p.len() <= 3 && p.bytes().all(|b| b.is_ascii_digit())).then(|| p.parse().ok()).flatten()
        };
        let major = num(major).ok_or_else(|| bad("major version is not a number"))?;
        let minor = num(minor_digits).ok_or_else(|| bad("minor version is not a number"))?;
        if major != 1 {
            return Err(bad("only Kubernetes 1.x exists"));
        }
        Ok(KubeVersion { major, minor })
    }
}

impl fmt::Display for KubeVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.major, self.minor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_parse_from_what_people_and_kubelets_write() {
        for (s, minor) in [
            ("1.28", 28),
            ("v1.28.3", 28),
            ("Kubernetes v1.30.2\n", 30),
            ("v1.30.2-eks-1552ad0", 30),
            ("1.27.4-r0", 27),
            ("v1.26.15-aliyun.1", 26),
            ("1.29+", 29),
        ] {
            assert_eq!(KubeVersion::parse(s).unwrap(), KubeVersion::new(1, minor), "{s}");
        }
        for bad in ["", "1", "v2.0", "1.x", "one.two", "1.1234", &"1".repeat(200)] {
            assert!(KubeVersion::parse(bad).is_err(), "{bad}");
        }
        assert_eq!(KubeVersion::new(1, 27).to_string(), "1.27");
        assert!(KubeVersion::new(1, 27) < KubeVersion::new(1, 28));
    }
}
