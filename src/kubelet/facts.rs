//! Node detection: vCPUs, memory and ephemeral storage of this machine (sysinfo / statvfs),
//! the running kubelet's command line (from /proc), its version (by asking its executable)
//! and where its config file is.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::KubeletError;
use super::config::{EKS_CONFIG, KUBEADM_CONFIG};
use super::version::KubeVersion;

/// `kubelet --version` answers at once; a binary that does not is not asked twice.
const VERSION_TIMEOUT: Duration = Duration::from_secs(5);
/// `Kubernetes v1.30.2-eks-1552ad0` is one short line; read no more than this of it.
const MAX_VERSION_OUTPUT: u64 = 4096;

/// kubelet's own default when the config does not set maxPods.
pub const DEFAULT_MAX_PODS: u32 = 110;
/// kubelet's default root dir; its filesystem is "nodefs". Read only on
/// Unix: elsewhere ephemeral storage is not detected (None).
#[cfg_attr(not(unix), allow(dead_code))]
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
    running_kubelet().map(|(_, args)| args)
}

/// The running kubelet's version: its own executable (`/proc/<pid>/exe`, which stays right
/// even when the binary on disk was replaced) asked `--version`. None when no kubelet runs or
/// it cannot be asked; the plan then says the version is unknown.
pub fn detect_kubelet_version() -> Option<KubeVersion> {
    let (pid, _) = running_kubelet()?;
    match kubelet_version_of(Path::new(&format!("/proc/{pid}/exe"))) {
        Ok(v) => Some(v),
        Err(e) => {
            tracing::warn!(pid, error = %e, "cannot read the kubelet's version");
            None
        }
    }
}

/// Run `<exe> --version` (bounded in time and output) and parse `Kubernetes v1.30.2`.
pub fn kubelet_version_of(exe: &Path) -> Result<KubeVersion, KubeletError> {
    let fail = |why: String| KubeletError::InvalidPlan(format!("{} --version: {why}", exe.display()));
    let mut child = Command::new(exe)
        .arg("--version")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| fail(e.to_string()))?;
    let deadline = Instant::now() + VERSION_TIMEOUT;
    let status = loop {
        match child.try_wait() {
            Ok(Some(st)) => break st,
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(10)),
            Ok(None) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(fail(format!("no answer within {}s", VERSION_TIMEOUT.as_secs())));
            }
            Err(e) => return Err(fail(e.to_string())),
        }
    };
    let mut out = Vec::new();
    if let Some(stdout) = child.stdout.take() {
        stdout.take(MAX_VERSION_OUTPUT).read_to_end(&mut out).map_err(|e| fail(e.to_string()))?;
    }
    if !status.success() {
        return Err(fail(format!("exited with {status}")));
    }
    let text = String::from_utf8_lossy(&out);
    KubeVersion::parse(text.lines().next().unwrap_or(""))
}

/// The running kubelet's pid and argv (Linux /proc only).
fn running_kubelet() -> Option<(u32, Vec<String>)> {
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
        let pid: u32 = pid.parse().ok()?;
        return Some((pid, raw.split(|b| *b == 0).filter(|a| !a.is_empty()).map(|a| String::from_utf8_lossy(a).into_owned()).collect()));
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
pub fn locate_config(override_path: Option<&Path>, kubelet_args: Option<&[String]>) -> Result<PathBuf, KubeletError> {
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
    Err(KubeletError::NoConfigFound(format!("the kubelet's --config, {EKS_CONFIG}, {KUBEADM_CONFIG}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_location_prefers_override_then_kubelet_flag() {
        let args: Vec<String> = ["/usr/bin/kubelet", "--config", "/etc/k/kc.yaml", "--v=2"].iter().map(|s| s.to_string()).collect();
        assert_eq!(locate_config(Some(Path::new("/x.json")), Some(&args)).unwrap(), PathBuf::from("/x.json"));
        assert_eq!(locate_config(None, Some(&args)).unwrap(), PathBuf::from("/etc/k/kc.yaml"));
        let eq: Vec<String> = vec!["kubelet".into(), "--config=/a.json".into()];
        assert_eq!(flag_value(&eq, "--config").as_deref(), Some("/a.json"));
        assert_eq!(flag_value(&eq, "--config-dir"), None);
    }

    #[cfg(unix)]
    #[test]
    fn kubelet_version_is_read_from_the_binary() {
        use std::os::unix::fs::PermissionsExt;
        // Stand-in kubelet executables (no real kubelet can run here): one answers as kubelet
        // does, one hangs, one prints nonsense.
        let dir = tempfile::tempdir().unwrap();
        let script = |name: &str, body: &str| {
            let p = dir.path().join(name);
            std::fs::write(&p, format!("#!/bin/sh\n{body}\n")).unwrap();
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
            p
        };
        let good = script("kubelet", "echo 'Kubernetes v1.27.3-eks-a5565ad'");
        let v = kubelet_version_of(&good).unwrap();
        assert_eq!((v.minor_line(), v.patch), ((1, 27), Some(3)));
        let junk = script("junk", "echo 'hello'");
        assert!(kubelet_version_of(&junk).unwrap_err().to_string().contains("kubernetes version"));
        let failing = script("failing", "exit 3");
        assert!(kubelet_version_of(&failing).unwrap_err().to_string().contains("exited"));
        let missing = dir.path().join("absent");
        assert!(kubelet_version_of(&missing).is_err());
    }

    #[test]
    fn detection_returns_plausible_values() {
        assert!(detect_cpus() >= 1);
        assert!(detect_memory_bytes() > 16 << 20);
    }
}
