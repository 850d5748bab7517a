//! Node role: operating-system telemetry with sysinfo.
//!
//! One `System` (plus disk, network and sensor lists) is kept for the life of the agent and only
//! what is sent is refreshed; CPU frequency is never read (costly on many-core hosts). The OS
//! identity is read under a host-root prefix because inside a DaemonSet container
//! `/etc/os-release` describes the image, not the host (mount the host's `/` at e.g. `/host`).

use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::Serialize;
use sysinfo::{Components, CpuRefreshKind, Disks, Networks, System};
use thiserror::Error;

/// Shortest interval between two CPU readings that gives a meaningful usage figure.
pub const MINIMUM_CPU_INTERVAL: std::time::Duration = sysinfo::MINIMUM_CPU_UPDATE_INTERVAL;

/// Errors reading OS telemetry.
#[derive(Debug, Error)]
pub enum OsError {
    #[error("sysinfo: {0}")]
    Sysinfo(String),
}

fn sys_err(e: impl std::fmt::Display) -> OsError {
    OsError::Sysinfo(e.to_string())
}

/// One filesystem.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DiskSample {
    pub mount_point: String,
    pub file_system: String,
    pub total_bytes: u64,
    pub available_bytes: u64,
}

/// One network interface, cumulative counters.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct NetworkSample {
    pub interface: String,
    pub received_bytes: u64,
    pub transmitted_bytes: u64,
    pub receive_errors: u64,
    pub transmit_errors: u64,
}

/// One temperature sensor exposed by the host (hwmon).
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TemperatureSample {
    pub label: String,
    pub celsius: f32,
    pub critical_celsius: Option<f32>,
}

/// What the node agent sends.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct OsSample {
    pub observed_at_unix_ms: u64,
    pub hostname: Option<String>,
    pub kernel: Option<String>,
    pub os_version: Option<String>,
    pub uptime_seconds: u64,
    pub load1: f64,
    pub load5: f64,
    pub load15: f64,
    pub cpu_count: usize,
    /// Average over all CPUs since the previous sample.
    pub cpu_usage_percent: f32,
    pub memory_total_bytes: u64,
    pub memory_used_bytes: u64,
    pub memory_available_bytes: u64,
    pub swap_total_bytes: u64,
    pub swap_used_bytes: u64,
    pub disks: Vec<DiskSample>,
    pub networks: Vec<NetworkSample>,
    pub temperatures: Vec<TemperatureSample>,
}

/// Reads `PRETTY_NAME` (or `NAME VERSION_ID`) from an os-release file.
pub fn parse_os_release(text: &str) -> Option<String> {
    let field = |key: &str| {
        text.lines().find_map(|l| {
            l.strip_prefix(key)
                .and_then(|v| v.strip_prefix('='))
                .map(|v| v.trim().trim_matches('"').to_owned())
        })
    };
    field("PRETTY_NAME").filter(|v| !v.is_empty()).or_else(|| {
        match (field("NAME"), field("VERSION_ID")) {
            (Some(n), Some(v)) => Some(format!("{n} {v}")),
            (n, _) => n,
        }
    })
}

/// Keeps sysinfo state between samples.
#[derive(Debug)]
pub struct OsCollector {
    host_root: PathBuf,
    system: System,
    disks: Disks,
    networks: Networks,
    components: Components,
}

impl OsCollector {
    /// `host_root` is where the host's `/` is visible (`/` outside a container).
    pub fn new(host_root: impl Into<PathBuf>) -> Result<Self, OsError> {
        let mut system = System::new().map_err(sys_err)?;
        // Prime CPU usage so the first real sample has a baseline.
        system.refresh_cpu_specifics(CpuRefreshKind::nothing().with_usage());
        Ok(Self {
            host_root: host_root.into(),
            system,
            disks: Disks::new_with_refreshed_list().map_err(sys_err)?,
            networks: Networks::new_with_refreshed_list().map_err(sys_err)?,
            components: Components::new_with_refreshed_list().map_err(sys_err)?,
        })
    }

    fn host_file(&self, path: &str) -> Option<String> {
        std::fs::read_to_string(self.host_root.join(path.trim_start_matches('/'))).ok()
    }

    /// OS name and version of the host (not of the agent's image).
    pub fn os_version(&self) -> Option<String> {
        self.host_file("etc/os-release")
            .or_else(|| self.host_file("usr/lib/os-release"))
            .as_deref()
            .and_then(parse_os_release)
    }

    /// Kernel release of the host.
    pub fn kernel(&self) -> Option<String> {
        self.host_file("proc/sys/kernel/osrelease")
            .map(|s| s.trim().to_owned())
            .filter(|s| !s.is_empty())
    }

    /// Hostname of the host.
    pub fn hostname(&self) -> Option<String> {
        self.host_file("etc/hostname")
            .map(|s| s.trim().to_owned())
            .filter(|s| !s.is_empty())
    }

    /// The host root this collector reads identity files from.
    pub fn host_root(&self) -> &Path {
        &self.host_root
    }

    /// Refreshes what is sent and returns a sample.
    pub fn sample(&mut self) -> Result<OsSample, OsError> {
        self.system
            .refresh_cpu_specifics(CpuRefreshKind::nothing().with_usage());
        self.system.refresh_memory();
        self.disks.refresh(true);
        self.networks.refresh(true);
        self.components.refresh(true);
        let load = System::load_average().map_err(sys_err)?;
        let observed_at_unix_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(0));
        Ok(OsSample {
            observed_at_unix_ms,
            hostname: self.hostname(),
            kernel: self.kernel(),
            os_version: self.os_version(),
            uptime_seconds: System::uptime().map_err(sys_err)?,
            load1: load.one,
            load5: load.five,
            load15: load.fifteen,
            cpu_count: self.system.cpus().len(),
            cpu_usage_percent: self.system.global_cpu_usage(),
            memory_total_bytes: self.system.total_memory(),
            memory_used_bytes: self.system.used_memory(),
            memory_available_bytes: self.system.available_memory(),
            swap_total_bytes: self.system.total_swap(),
            swap_used_bytes: self.system.used_swap(),
            disks: self
                .disks
                .iter()
                .map(|d| DiskSample {
                    mount_point: d.mount_point().display().to_string(),
                    file_system: d.file_system().to_string_lossy().into_owned(),
                    total_bytes: d.total_space(),
                    available_bytes: d.available_space(),
                })
                .collect(),
            networks: self
                .networks
                .iter()
                .map(|(name, n)| NetworkSample {
                    interface: name.to_string_lossy().into_owned(),
                    received_bytes: n.total_received(),
                    transmitted_bytes: n.total_transmitted(),
                    receive_errors: n.total_errors_on_received(),
                    transmit_errors: n.total_errors_on_transmitted(),
                })
                .collect(),
            temperatures: self
                .components
                .iter()
                .filter_map(|c| {
                    c.temperature().map(|t| TemperatureSample {
                        label: c.label().to_owned(),
                        celsius: t,
                        critical_celsius: c.critical(),
                    })
                })
                .collect(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn os_release_forms() {
        assert_eq!(
            parse_os_release(
                "NAME=\"Ubuntu\"\nVERSION_ID=\"24.04\"\nPRETTY_NAME=\"Ubuntu 24.04.1 LTS\"\n"
            )
            .as_deref(),
            Some("Ubuntu 24.04.1 LTS")
        );
        assert_eq!(
            parse_os_release("NAME=Flatcar\nVERSION_ID=4152.2.0\n").as_deref(),
            Some("Flatcar 4152.2.0")
        );
        assert_eq!(parse_os_release("garbage"), None);
    }

    #[test]
    fn identity_comes_from_the_host_root_not_the_container() {
        let root = std::env::temp_dir().join(format!("sovereign-hostroot-{}", std::process::id()));
        std::fs::create_dir_all(root.join("etc")).unwrap();
        std::fs::create_dir_all(root.join("proc/sys/kernel")).unwrap();
        std::fs::write(
            root.join("etc/os-release"),
            "PRETTY_NAME=\"Talos (v1.9.0)\"\n",
        )
        .unwrap();
        std::fs::write(root.join("proc/sys/kernel/osrelease"), "6.12.6-talos\n").unwrap();
        std::fs::write(root.join("etc/hostname"), "hn1-r01-s01\n").unwrap();
        let mut c = OsCollector::new(&root).unwrap();
        let s = c.sample().unwrap();
        std::fs::remove_dir_all(&root).unwrap();
        assert_eq!(s.os_version.as_deref(), Some("Talos (v1.9.0)"));
        assert_eq!(s.kernel.as_deref(), Some("6.12.6-talos"));
        assert_eq!(s.hostname.as_deref(), Some("hn1-r01-s01"));
    }

    #[test]
    fn a_real_sample_of_this_host() {
        let mut c = OsCollector::new("/").unwrap();
        std::thread::sleep(sysinfo::MINIMUM_CPU_UPDATE_INTERVAL);
        let s = c.sample().unwrap();
        assert!(s.cpu_count >= 1);
        assert!(s.memory_total_bytes > 0 && s.memory_used_bytes <= s.memory_total_bytes);
        assert!(s.uptime_seconds > 0);
        assert!((0.0..=100.0).contains(&s.cpu_usage_percent));
        assert!(
            s.kernel.is_some(),
            "/proc/sys/kernel/osrelease is readable on Linux"
        );
        assert!(!s.disks.is_empty() || !s.networks.is_empty());
    }
}
