//! Node detection: vCPUs, memory and ephemeral storage of this machine (sysinfo / statvfs),
//! the running kubelet's command line (from /proc) and where its config file is.

use std::path::{Path, PathBuf};

use super::KubeletError;
use super::config::{EKS_CONFIG, KUBEADM_CONFIG};

/// kubelet's own default when the config does not set maxPods.
pub const DEFAULT_MAX_PODS: u32 = 110;
/// kubelet's default root dir; its filesystem is "nodefs".
pub const KUBELET_ROOT: &str = "/var/lib/kubelet";
/// Bound on /proc entries scanned looking for the kubelet.
const MAX_PROC_SCAN: usize = 100_000;

/// Logical CPUs of the machine (what kubelet reports as capacity), not the agent's own
/// cgroup quota; falls back to the process's parallelism.
pub fn detect_cpus() -> u32 {
    let from_sysinfo = sysinfo::System::new().ok().map(|mut sys| {
        sys.refresh_cpu_list(sysinfo::CpuRefreshKind::nothing());
        sys.cpus().len() as u32
    });
    match from_sysinfo {
        Some(n) if n > 0 => n,
        _ => std::thread::available_parallelism().map(|n| n.get() as u32).unwrap_or(1),
    }
}

/// Total memory in bytes; 0 when it cannot be read (the plan then refuses the node facts).
pub fn detect_memory_bytes() -> u64 {
    match sysinfo::System::new() {
        Ok(mut sys) => {
            sys.refresh_memory();
            sys.total_memory()
        }
        Err(e) => {
            tracing::warn!(error = %e, "cannot read memory size; pass --memory");
            0
        }
    }
}

/// Capacity of the filesystem holding the kubelet root dir (or `/`).
pub fn detect_ephemeral_storage_bytes() -> Option<u64> {
    #[cfg(unix)]
    {
        let path = if Path::new(KUBELET_ROOT).exists() { KUBELET_ROOT } else { "/" };
        let st = nix::sys::statvfs::statvfs(path).ok()?;
        Some((st.blocks() as u64).saturating_mul(st.fragment_size() as u64))
    }
    #[cfg(not(unix))]
    {
        None
    }
}

/// The running kubelet's argv, if one is running (Linux /proc only).
pub fn kubelet_cmdline() -> Option<Vec<String>> {
    let dir = std::fs::read_dir("/proc").ok()?;
    for entry in dir.flatten().take(MAX_PROC_SCAN) {
        let name = entry.file_name();
        let Some(pid) = name.to_str().filter(|s| s.bytes().all(|b| b.is_ascii_digit())) else {
            continue;
        };
        let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
        if comm.trim() != "kubelet" {
            continue;
        }
        let raw = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
        return Some(
            raw.split(|b| *b == 0)
                .filter(|a| !a.is_empty())
                .map(|a| String::from_utf8_lossy(a).into_owned())
                .collect(),
        );
    }
    None
}

/// Value of `--flag=value` or `--flag value` in argv.
pub fn flag_value(args: &[String], flag: &str) -> Option<String> {
    let mut it = args.iter();
    while let Some(a) = it.next() {
        if let Some(v) = a.strip_prefix(flag).and_then(|r| r.strip_prefix('=')) {
            return Some(v.to_string());
        }
        if a == flag {
            return it.next().cloned();
        }
    }
    None
}

/// The config to edit: the override, else the running kubelet's `--config`, else the EKS
/// path, else the kubeadm path.
pub fn locate_config(
    override_path: Option<&Path>,
    kubelet_args: Option<&[String]>,
) -> Result<PathBuf, KubeletError> {
    if let Some(p) = override_path {
        return Ok(p.to_path_buf());
    }
    if let Some(p) = kubelet_args.and_then(|a| flag_value(a, "--config")) {
        return Ok(PathBuf::from(p));
    }
    for p in [EKS_CONFIG, KUBEADM_CONFIG] {
        if Path::new(p).exists() {
            return Ok(PathBuf::from(p));
        }
    }
    Err(KubeletError::NoConfigFound(format!(
        "the kubelet's --config, {EKS_CONFIG}, {KUBEADM_CONFIG}"
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_location_prefers_override_then_kubelet_flag() {
        let args: Vec<String> = ["/usr/bin/kubelet", "--config", "/etc/k/kc.yaml", "--v=2"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        assert_eq!(
            locate_config(Some(Path::new("/x.json")), Some(&args)).unwrap(),
            PathBuf::from("/x.json")
        );
        assert_eq!(locate_config(None, Some(&args)).unwrap(), PathBuf::from("/etc/k/kc.yaml"));
        let eq: Vec<String> = vec!["kubelet".into(), "--config=/a.json".into()];
        assert_eq!(flag_value(&eq, "--config").as_deref(), Some("/a.json"));
        assert_eq!(flag_value(&eq, "--config-dir"), None);
    }

    #[test]
    fn detection_returns_plausible_values() {
        assert!(detect_cpus() >= 1);
        assert!(detect_memory_bytes() > 16 << 20);
    }
}
