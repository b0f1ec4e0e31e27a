//! The Kubernetes version a reservation rule is chosen by: parsed once from what an operator
//! types (`--kubernetes-version 1.28`, `v1.30.2`) or from what `kubelet --version` prints
//! (`Kubernetes v1.30.2-eks-1552ad0`, CCE's `v1.27.4-r0`). Most providers' rules turn on
//! major.minor only; Huawei CCE's turn on the patch and its `-rN` revision too, so those are
//! kept when present (any other build suffix is read but not kept).

use std::fmt;

use super::KubeletError;

/// Bound on a version string: anything longer is not a version.
const MAX_VERSION_LEN: usize = 128;

/// A Kubernetes release: `major.minor`, and the patch and CCE-style `-rN` revision when the
/// text had them. Ordered field by field, an absent patch before any patch (so `1.28` <=
/// `1.28.3`, and comparing with `KubeVersion::new(1, 28)` asks "1.28 or later").
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
pub struct KubeVersion {
    pub major: u32,
    pub minor: u32,
    pub patch: Option<u32>,
    /// `0` of `1.27.4-r0` (Huawei CCE's release revision).
    pub revision: Option<u32>,
}

impl KubeVersion {
    pub const fn new(major: u32, minor: u32) -> KubeVersion {
        KubeVersion { major, minor, patch: None, revision: None }
    }

    /// `major.minor` alone (what most providers' rules turn on).
    pub const fn minor_line(&self) -> (u32, u32) {
        (self.major, self.minor)
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
        let minor_ended_at_dot = minor_digits.len() == minor.len();
        let minor = num(minor_digits).ok_or_else(|| bad("minor version is not a number"))?;
        if major != 1 {
            return Err(bad("only Kubernetes 1.x exists"));
        }
        // The patch, when the minor ended at a dot: leading digits of the third part; a patch
        // that is not a short number is a build suffix we do not need, not an error.
        let (patch, revision) = match (minor_ended_at_dot, parts.next()) {
            (true, Some(rest)) => {
                let end = rest.find(|c: char| !c.is_ascii_digit()).unwrap_or(rest.len());
                let patch = rest.get(..end).and_then(num);
                // CCE writes `1.27.4-r0`: the revision follows `-r` directly.
                let revision = patch.and(rest.get(end..)).and_then(|t| t.strip_prefix("-r")).and_then(|t| {
                    let end = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
                    t.get(..end).and_then(num)
                });
                (patch, revision)
            }
            _ => (None, None),
        };
        Ok(KubeVersion { major, minor, patch, revision })
    }
}

impl fmt::Display for KubeVersion {
    /// As much as was known: `1.28`, `1.28.3`, `1.27.4-r0`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.major, self.minor)?;
        if let Some(p) = self.patch {
            write!(f, ".{p}")?;
        }
        if let Some(r) = self.revision {
            write!(f, "-r{r}")?;
        }
        Ok(())
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
            assert_eq!(KubeVersion::parse(s).unwrap().minor_line(), (1, minor), "{s}");
        }
        // Patch and CCE revision are kept where written.
        for (s, patch, rev) in [
            ("1.28", None, None),
            ("v1.28.3", Some(3), None),
            ("1.27.4-r0", Some(4), Some(0)),
            ("v1.28.2-r12-28.0.3", Some(2), Some(12)),
            ("v1.30.2-eks-1552ad0", Some(2), None),
            ("v1.26.15-aliyun.1", Some(15), None),
            ("1.29+", None, None),
            ("1.29.x", None, None),
        ] {
            let v = KubeVersion::parse(s).unwrap();
            assert_eq!((v.patch, v.revision), (patch, rev), "{s}");
        }
        assert!(KubeVersion::parse("1.28.3").unwrap() >= KubeVersion::new(1, 28));
        assert!(KubeVersion::parse("1.27.99").unwrap() < KubeVersion::new(1, 28));
        for bad in ["", "1", "v2.0", "1.x", "one.two", "1.1234", &"1".repeat(200)] {
            assert!(KubeVersion::parse(bad).is_err(), "{bad}");
        }
        assert_eq!(KubeVersion::new(1, 27).to_string(), "1.27");
        assert_eq!(KubeVersion::parse("v1.27.4-r0-27.0.3").unwrap().to_string(), "1.27.4-r0");
        assert_eq!(KubeVersion::parse("v1.30.2-eks-1552ad0").unwrap().to_string(), "1.30.2");
        assert!(KubeVersion::new(1, 27) < KubeVersion::new(1, 28));
    }
}
