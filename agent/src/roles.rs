//! The long-running roles: `node` (this host's OS, every interval) and `bmc` (a fleet of BMCs,
//! every cycle), both publishing through the telemetry stream.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::Deserialize;
use sovereign_telemetry_api::publisher::Publisher;
use thiserror::Error;

use crate::convert;
use crate::discovery::Discovery;
use crate::os::OsError;
use crate::poller::{CycleReport, Fleet};
use crate::redfish::Endpoint;
use crate::selfmetrics::CollectorMetrics;

/// Errors configuring a role.
#[derive(Debug, Error)]
pub enum RoleError {
    #[error("reading {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("parsing targets {path}: {source}")]
    Targets {
        path: String,
        #[source]
        source: serde_yaml_ng::Error,
    },
    #[error(
        "targets {path}: server {name:?} (entry {index}) is not a name a Server object can have: \
         {why}; the operator would drop its samples"
    )]
    TargetName {
        path: String,
        index: usize,
        name: String,
        why: String,
    },
    #[error(transparent)]
    Os(#[from] OsError),
}

/// Why `name` cannot name a Kubernetes object (DNS-1123 subdomain), if it cannot.
pub fn object_name_problem(name: &str) -> Option<String> {
    if name.is_empty() {
        return Some("it is empty".into());
    }
    if name.len() > 253 {
        return Some(format!(
            "it is {} characters long (at most 253)",
            name.len()
        ));
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '-' || *c == '.'))
    {
        return Some(format!(
            "{c:?} is not allowed (lower-case letters, digits, '-' and '.' only)"
        ));
    }
    let alnum = |c: Option<char>| c.is_some_and(|c| c.is_ascii_alphanumeric());
    if !alnum(name.chars().next()) || !alnum(name.chars().last()) {
        return Some("it must start and end with a letter or digit".into());
    }
    None
}

/// One BMC to poll, as given in a targets file (the in-cluster source, Server objects and their
/// credential Secrets, feeds the same shape).
#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Target {
    /// Server object name the samples are for.
    pub server: String,
    pub address: String,
    pub username: String,
    /// File holding the password (a mounted Secret key).
    pub password_file: String,
    #[serde(default)]
    pub ca_bundle_file: Option<String>,
    #[serde(default)]
    pub insecure_skip_verify: bool,
}

fn read(path: &str) -> Result<String, RoleError> {
    std::fs::read_to_string(path).map_err(|source| RoleError::Read {
        path: path.to_owned(),
        source,
    })
}

/// Reads a targets file and the secrets it points to.
pub fn load_targets(path: &str, timeout: Duration) -> Result<Vec<(String, Endpoint)>, RoleError> {
    let text = read(path)?;
    let targets: Vec<Target> =
        serde_yaml_ng::from_str(&text).map_err(|source| RoleError::Targets {
            path: path.to_owned(),
            source,
        })?;
    let mut seen = std::collections::BTreeSet::new();
    for (index, t) in targets.iter().enumerate() {
        let why = object_name_problem(&t.server)
            .or_else(|| (!seen.insert(t.server.as_str())).then(|| "it is listed twice".to_owned()));
        if let Some(why) = why {
            return Err(RoleError::TargetName {
                path: path.to_owned(),
                index,
                name: t.server.clone(),
                why,
            });
        }
    }
    targets
        .into_iter()
        .map(|t| {
            Ok((
                t.server,
                Endpoint {
                    address: t.address,
                    username: t.username,
                    password: read(&t.password_file)?
                        .trim_end_matches(['\n', '\r'])
                        .to_owned(),
                    ca_bundle_pem: t.ca_bundle_file.as_deref().map(read).transpose()?,
                    insecure_skip_verify: t.insecure_skip_verify,
                    timeout,
                },
            ))
        })
        .collect()
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(0))
}

/// A ticker where a slow round delays the next one instead of bunching up.
fn ticker(interval: Duration) -> tokio::time::Interval {
    let mut t = tokio::time::interval(interval);
    t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    t
}

/// One BMC cycle: poll, then publish a summary or a failure per BMC polled.
pub async fn bmc_cycle(fleet: &mut Fleet, publisher: &Publisher) -> CycleReport {
    let report = fleet.poll_cycle(Instant::now()).await;
    for o in &report.outcomes {
        let sample = match &o.result {
            Ok(s) => convert::bmc(&o.name, s),
            Err(e) => convert::failure(&o.name, e, now_ms()),
        };
        publisher.offer(sample);
    }
    report
}

/// The bmc role until `stop` resolves: a cycle every `interval` (a slow cycle delays the next
/// one instead of overlapping it). With `discovery`, the fleet follows the cluster's Servers
/// before each cycle.
pub async fn run_bmc(
    mut fleet: Fleet,
    publisher: Publisher,
    interval: Duration,
    mut discovery: Option<Discovery>,
    metrics: Option<std::sync::Arc<CollectorMetrics>>,
    stop: impl Future<Output = ()>,
) {
    tokio::pin!(stop);
    let mut ticker = ticker(interval);
    loop {
        tokio::select! {
            () = &mut stop => {
                // Leaked sessions exhaust BMC slots (iDRAC RAC0218): close ours.
                fleet.logout().await;
                return;
            }
            _ = ticker.tick() => {
                if let Some(d) = discovery.as_mut() {
                    let (changed, removed) = fleet.reconcile(d.targets().await).await;
                    if changed + removed > 0 {
                        tracing::info!(changed, removed, bmcs = fleet.members().len(), "BMC targets updated");
                    }
                }
                let started = Instant::now();
                let r = bmc_cycle(&mut fleet, &publisher).await;
                if let Some(m) = &metrics {
                    m.record(fleet.members().len(), &r, started.elapsed(), publisher.stats());
                }
                let failed = r.outcomes.iter().filter(|o| o.result.is_err()).count();
                tracing::info!(polled = r.outcomes.len(), failed, backing_off = r.skipped.len(), not_due = r.not_due, pending = r.pending.len(), "bmc cycle");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn targets(yaml: &str) -> Result<Vec<(String, Endpoint)>, RoleError> {
        let dir = std::env::temp_dir().join(format!("sovereign-targets-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap_or_default();
        std::fs::write(dir.join("pw"), "secret\n").unwrap_or_default();
        let file = dir.join(format!("t-{}.yaml", yaml.len()));
        let text = yaml.replace("PW", &dir.join("pw").display().to_string());
        std::fs::write(&file, text).unwrap_or_default();
        load_targets(&file.display().to_string(), Duration::from_secs(5))
    }

    #[test]
    fn a_name_the_operator_would_refuse_is_refused_at_load() {
        let ok = targets(
            "- {server: hn1-r1-s01, address: 'https://10.0.0.1', username: u, passwordFile: PW}\n",
        );
        assert_eq!(ok.map(|t| t.len()).ok(), Some(1));
        let err = targets(
            "- {server: nvidia_gb200, address: 'https://10.0.0.2', username: u, passwordFile: PW}\n",
        )
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
        assert!(err.contains("\"nvidia_gb200\""), "{err}");
        assert!(err.contains("'_'"), "{err}");
        let twice = targets(
            "- {server: a1, address: 'https://10.0.0.1', username: u, passwordFile: PW}\n\
             - {server: a1, address: 'https://10.0.0.3', username: u, passwordFile: PW}\n",
        )
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
        assert!(twice.contains("listed twice"), "{twice}");
        assert!(object_name_problem("-x").is_some());
        assert!(object_name_problem("Upper").is_some());
        assert!(object_name_problem("dgx-h100.rack-3").is_none());
    }
}
