//! Server status from live telemetry, decided purely: the stored Server and the newest samples
//! in, the desired status, whether it is worth a write, the Node taint and the condition
//! transitions out. No I/O here; `reconcile` in `servers.rs` applies what this decides.
//!
//! The rules a person can check:
//! - `Reachable`: the newest BMC sample is a reading (True) or a failure (False, its class).
//! - `Healthy`: the BMC's health (Critical is False; Warning stays True and says why).
//! - `Secure`: the chassis intrusion sensor (anything but Normal is False).
//! - `TelemetryFresh`: a BMC reading within the stale window (3 poll intervals unless the
//!   operator sets one), judged by the operator's clock, so silence turns it False.
//! - `Schedulable`: False for maintenance, intrusion, an unreachable BMC, stale or no telemetry,
//!   or critical hardware (that order decides the reason); `Ready` follows it.
//! - Write budget: only when a condition's status or reason changes, power moves by more than
//!   max(5 %, 20 W), a temperature by more than 2 °C, health, intrusion, power state,
//!   inventory, drives, PSUs or unhealthy fans change, or the stored reading is 5 min old.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use sovereign_crds::server::{
    ComponentHealth, DriveStatus, IntrusionState, Inventory, Observation, OsStatus, PowerState,
    PowerStatus, SecurityStatus, ThermalStatus,
};
use sovereign_crds::{
    ConditionStatus, Health, Quantity, ResourceSet, Server, ServerStatus, StorageTier,
    TieredStorage,
};
use sovereign_telemetry::proto::{self, Sample, sample::Body};

use super::conditions::{self, Desired, Transition};

/// Taint key the operator puts on the Node of an unschedulable server.
pub const TAINT_KEY: &str = "sovereign.io/unschedulable";

/// Thresholds of the write budget and freshness.
#[derive(Clone, Debug)]
pub struct StatusPolicy {
    /// Fixed stale window; None means three of the server's poll intervals.
    pub stale_after: Option<Duration>,
    /// A reading at least this much newer than the stored one is written anyway.
    pub heartbeat: Duration,
    /// Power changes smaller than max(this share of the stored value, `power_min_watts`) are
    /// not written.
    pub power_share: f64,
    pub power_min_watts: f64,
    /// Temperature changes up to this many °C are not written.
    pub temperature_delta: f64,
    /// A change of what the ledger allocated on the server waits at least this long after the
    /// stored reading: in a burst of placements every server's allocation changes with each
    /// sample, and those writes competed with the placements themselves.
    pub allocation_every: Duration,
}

impl Default for StatusPolicy {
    fn default() -> Self {
        Self {
            stale_after: None,
            heartbeat: Duration::from_mins(5),
            power_share: 0.05,
            power_min_watts: 20.0,
            temperature_delta: 2.0,
            // With the heartbeat: in a burst of placements each server's allocation changes
            // with every placement, and each rewrite of a large Server object competed with
            // the placements (1,000 Server writes in a 57 s burst on 1,000 servers at 1 min).
            allocation_every: Duration::from_mins(5),
        }
    }
}

impl StatusPolicy {
    /// The stale window for one server.
    pub fn stale_window(&self, server: &Server) -> Duration {
        self.stale_after.unwrap_or_else(|| {
            Duration::from_secs(3 * u64::from(server.spec.bmc.poll_interval_seconds))
        })
    }

    /// How old a Server's stored `lastSeen` may be before the ledger counts the server stale.
    /// `lastSeen` moves only with a status write — at the latest the server's heartbeat (up to
    /// six fifths of `heartbeat`) — while live staleness reaches the ledger sooner, through the
    /// TelemetryFresh and Ready conditions this controller writes at once. A window shorter
    /// than the heartbeat made every server with steady telemetry unplaceable for the rest of
    /// each heartbeat (all of them at once in a bench that waited five minutes).
    pub fn ledger_stale_after_seconds(&self) -> i64 {
        let beat_max = self.heartbeat + self.heartbeat / 5;
        let window = self.stale_after.unwrap_or(Duration::from_mins(5));
        i64::try_from((beat_max + window).as_secs()).unwrap_or(i64::MAX)
    }

    /// The heartbeat of one server: the policy's plus a spread of up to a fifth of it, fixed by
    /// the name. A fleet whose statuses were written together (a restart) does not beat
    /// together, and steady telemetry stays under one write per server per heartbeat.
    pub fn heartbeat_for(&self, name: &str) -> Duration {
        let hash = super::stable_hash(name.as_bytes());
        let spread = u64::try_from((self.heartbeat / 5).as_millis())
            .unwrap_or(u64::MAX)
            .max(1);
        self.heartbeat + Duration::from_millis(hash % spread)
    }
}

/// The newest samples held for a server: from its BMC (by server name) and its node agent (by
/// node name).
#[derive(Clone, Debug, Default)]
pub struct Observed<'a> {
    pub bmc: Option<&'a Sample>,
    pub os: Option<&'a Sample>,
    /// What the placement ledger holds on this server (None before the ledger is built:
    /// the stored value is kept).
    pub allocated: Option<Option<ResourceSet>>,
}

/// The taint a server's Node should carry (None: no Sovereign taint).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Taint {
    pub reason: String,
    /// NoExecute (intrusion: tenants' pods must leave) or NoSchedule.
    pub effect: &'static str,
}

/// What to do for one server.
#[derive(Clone, Debug)]
pub struct Decision {
    /// The full desired status (conditions merged with their transition times).
    pub status: ServerStatus,
    /// Why the status is worth a write now; None: skip the write.
    pub write: Option<&'static str>,
    pub taint: Option<Taint>,
    pub transitions: Vec<Transition>,
    /// When to look again without a new sample (the telemetry turns stale then).
    pub requeue_after: Duration,
}

fn time_ms(ms: i64) -> Option<Time> {
    Timestamp::from_millisecond(ms).ok().map(Time)
}

fn observation(sample: &Sample, source: &str) -> Option<Observation> {
    time_ms(sample.observed_at_unix_ms).map(|t| Observation {
        observed_at: t,
        source: source.to_owned(),
    })
}

fn health(h: i32) -> Health {
    match proto::Health::try_from(h) {
        Ok(proto::Health::Ok) => Health::Ok,
        Ok(proto::Health::Warning) => Health::Warning,
        Ok(proto::Health::Critical) => Health::Critical,
        _ => Health::Unknown,
    }
}

fn power_state(s: &str) -> PowerState {
    match s {
        "On" => PowerState::On,
        "Off" => PowerState::Off,
        "PoweringOn" => PowerState::PoweringOn,
        "PoweringOff" => PowerState::PoweringOff,
        "Paused" => PowerState::Paused,
        _ => PowerState::Unknown,
    }
}

fn intrusion(s: &str) -> IntrusionState {
    match s {
        "Normal" => IntrusionState::Normal,
        "HardwareIntrusion" => IntrusionState::HardwareIntrusion,
        "TamperingDetected" => IntrusionState::TamperingDetected,
        _ => IntrusionState::Unknown,
    }
}

fn tier(s: &str) -> Option<StorageTier> {
    match s {
        "nvme" => Some(StorageTier::Nvme),
        "ssd" => Some(StorageTier::Ssd),
        "hdd" => Some(StorageTier::Hdd),
        _ => None,
    }
}

fn non_empty(s: &str) -> Option<String> {
    (!s.is_empty()).then(|| s.to_owned())
}

#[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
fn watts(w: f64) -> Option<u32> {
    (w.is_finite() && w >= 0.0).then(|| w.round().min(f64::from(u32::MAX)) as u32)
}

/// Rounded to 0.1 °C: status is for people; finer jitter is for metrics.
fn celsius(c: Option<f64>) -> Option<f64> {
    c.filter(|c| c.is_finite())
        .map(|c| (c * 10.0).round() / 10.0)
}

fn components(list: &[proto::Component], only_unhealthy: bool, max: usize) -> Vec<ComponentHealth> {
    list.iter()
        .map(|c| ComponentHealth {
            name: c.name.clone(),
            health: health(c.health),
        })
        .filter(|c| !only_unhealthy || c.health != Health::Ok)
        .take(max)
        .collect()
}

/// The readings of one BMC summary, as status sections.
fn apply_bmc(status: &mut ServerStatus, b: &proto::BmcSummary, sample: &Sample) {
    let seen = observation(sample, "redfish");
    status.inventory = Some(Inventory {
        manufacturer: non_empty(&b.manufacturer),
        model: non_empty(&b.model),
        serial_number: non_empty(&b.serial_number),
        bios_version: non_empty(&b.bios_version),
        processor_model: non_empty(&b.processor_model),
        processor_count: (b.processor_count > 0).then_some(b.processor_count),
        logical_processors: (b.logical_processors > 0).then_some(b.logical_processors),
        memory: b.memory_bytes.map(|m| Quantity::new(m.to_string())),
        // None when the BMC lists no GPU: the asset register's count (spec.capacity) stands.
        gpus: (!b.gpus.is_empty()).then(|| u32::try_from(b.gpus.len()).unwrap_or(u32::MAX)),
        observed: seen.clone(),
        ..status.inventory.clone().unwrap_or_default()
    });
    status.power = Some(PowerStatus {
        state: power_state(&b.power_state),
        consumed_watts: b.consumed_watts.and_then(watts),
        supplies: components(&b.power_supplies, false, 16),
        observed: seen.clone(),
    });
    status.thermal = Some(ThermalStatus {
        inlet_celsius: celsius(b.inlet_celsius),
        cpu_max_celsius: celsius(b.cpu_max_celsius),
        fan_count: u32::try_from(b.fans.len()).unwrap_or(u32::MAX),
        fans: components(&b.fans, true, 32),
        observed: seen.clone(),
    });
    status.security = Some(SecurityStatus {
        intrusion: intrusion(&b.intrusion),
        observed: seen,
    });
    status.drives = b
        .drive_list
        .iter()
        .take(64)
        .map(|d| DriveStatus {
            id: d.id.clone(),
            tier: tier(&d.tier),
            capacity: d.capacity_bytes.map(|c| Quantity::new(c.to_string())),
            health: health(d.health),
            #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
            life_left_percent: d
                .life_left_percent
                .filter(|p| p.is_finite())
                .map(|p| p.clamp(0.0, 100.0).round() as u8),
            failure_predicted: d.failure_predicted,
            encryption_capable: d.encryption_capable,
        })
        .collect();
    status.health = health(b.health);
    status.last_seen = time_ms(sample.observed_at_unix_ms);
}

fn apply_os(status: &mut ServerStatus, o: &proto::OsSummary, sample: &Sample) {
    status.os = Some(OsStatus {
        kernel: non_empty(&o.kernel),
        os_version: non_empty(&o.os_version),
        uptime_seconds: Some(o.uptime_seconds),
        load1: Some((o.load1 * 100.0).round() / 100.0),
        cpu_usage_percent: Some((f64::from(o.cpu_usage_percent) * 10.0).round() / 10.0),
        memory_used: Some(Quantity::new(o.memory_used_bytes.to_string())),
        observed: observation(sample, "os"),
    });
}

/// Capacity measured from inventory; classes the BMC does not report are taken from the asset
/// register (`spec.capacity`), so a server whose BMC hides its memory is not made useless.
fn capacity(server: &Server, status: &ServerStatus) -> Option<ResourceSet> {
    let declared = server.spec.capacity.clone().unwrap_or_default();
    let inv = status.inventory.as_ref();
    let mut per_tier: BTreeMap<StorageTier, u128> = BTreeMap::new();
    for d in &status.drives {
        if let (Some(t), Some(c)) = (d.tier, d.capacity.as_ref()) {
            *per_tier.entry(t).or_default() += c.0.parse::<u128>().unwrap_or(0);
        }
    }
    let tiered = |t: StorageTier, declared: Option<&Quantity>| {
        per_tier
            .get(&t)
            .map(|b| Quantity::new(b.to_string()))
            .or_else(|| declared.cloned())
    };
    let ds = declared.storage.clone().unwrap_or_default();
    let storage = TieredStorage {
        nvme: tiered(StorageTier::Nvme, ds.nvme.as_ref()),
        ssd: tiered(StorageTier::Ssd, ds.ssd.as_ref()),
        hdd: tiered(StorageTier::Hdd, ds.hdd.as_ref()),
    };
    let set = ResourceSet {
        cpu: inv
            .and_then(|i| i.logical_processors)
            .map(|n| Quantity::new(n.to_string()))
            .or(declared.cpu),
        memory: inv.and_then(|i| i.memory.clone()).or(declared.memory),
        gpus: inv.and_then(|i| i.gpus).or(declared.gpus),
        storage: (storage != TieredStorage::default()).then_some(storage),
    };
    (set != ResourceSet::default()).then_some(set)
}

fn age(now: Timestamp, then: Option<&Time>) -> Option<Duration> {
    then.map(|t| {
        let ms = now.as_millisecond() - t.0.as_millisecond();
        Duration::from_millis(u64::try_from(ms).unwrap_or(0))
    })
}

fn secs(d: Duration) -> u64 {
    d.as_secs()
}

/// The conditions for a status whose readings are already merged.
fn decide_conditions(
    server: &Server,
    status: &ServerStatus,
    stored: &ServerStatus,
    bmc: Option<&Sample>,
    now: Timestamp,
    window: Duration,
    health_reason: &str,
) -> Vec<Desired> {
    use ConditionStatus::{False, True, Unknown};
    let reachable = match bmc.and_then(|s| s.body.as_ref()) {
        Some(Body::Bmc(_)) => Desired::new(
            "Reachable",
            True,
            "BmcAnswered",
            "the BMC answered the last poll",
        ),
        Some(Body::Failure(f)) => Desired::new(
            "Reachable",
            False,
            if f.class.is_empty() {
                "BmcUnreachable".to_owned()
            } else {
                f.class.clone()
            },
            f.reason.clone(),
        ),
        _ => match conditions::find(&stored.conditions, "Reachable") {
            Some(c) => Desired::new("Reachable", c.status, c.reason.clone(), c.message.clone()),
            None => Desired::new(
                "Reachable",
                Unknown,
                "NoTelemetry",
                "no sample from the BMC collector yet",
            ),
        },
    };
    let healthy = match status.health {
        Health::Ok => Desired::new("Healthy", True, "HardwareOK", "every component reports OK"),
        Health::Warning => Desired::new(
            "Healthy",
            True,
            "HardwareWarning",
            if health_reason.is_empty() {
                "a component reports Warning"
            } else {
                health_reason
            },
        ),
        Health::Critical => Desired::new(
            "Healthy",
            False,
            "HardwareCritical",
            if health_reason.is_empty() {
                "a component reports Critical"
            } else {
                health_reason
            },
        ),
        Health::Unknown => Desired::new("Healthy", Unknown, "HealthUnknown", "no health reading"),
    };
    let secure = match status.security.as_ref().map(|s| s.intrusion) {
        Some(IntrusionState::Normal) => Desired::new(
            "Secure",
            True,
            "ChassisClosed",
            "the chassis intrusion sensor is Normal",
        ),
        Some(i @ (IntrusionState::HardwareIntrusion | IntrusionState::TamperingDetected)) => {
            Desired::new(
                "Secure",
                False,
                "ChassisIntrusion",
                format!("the chassis intrusion sensor reports {i:?}"),
            )
        }
        _ => Desired::new(
            "Secure",
            Unknown,
            "NoIntrusionSensor",
            "the BMC reports no chassis intrusion sensor",
        ),
    };
    let fresh = match age(now, status.last_seen.as_ref()) {
        Some(a) if a <= window => Desired::new(
            "TelemetryFresh",
            True,
            "ReadingsArriving",
            format!(
                "last BMC reading {} s ago (stale after {} s)",
                secs(a),
                secs(window)
            ),
        ),
        Some(a) => Desired::new(
            "TelemetryFresh",
            False,
            "TelemetryStale",
            format!(
                "no BMC reading for {} s (stale after {} s)",
                secs(a),
                secs(window)
            ),
        ),
        None => Desired::new(
            "TelemetryFresh",
            False,
            "NoTelemetry",
            "no BMC reading has been received for this server",
        ),
    };
    let schedulable = if server.spec.maintenance {
        Desired::new(
            "Schedulable",
            False,
            "Maintenance",
            server
                .spec
                .maintenance_reason
                .clone()
                .unwrap_or_else(|| "spec.maintenance is true".to_owned()),
        )
    } else if secure.is_false() {
        Desired::new(
            "Schedulable",
            False,
            "ChassisIntrusion",
            secure.message.clone(),
        )
    } else if reachable.is_false() {
        Desired::new(
            "Schedulable",
            False,
            "BmcUnreachable",
            format!("{}: {}", reachable.reason, reachable.message),
        )
    } else if !fresh.is_true() {
        Desired::new(
            "Schedulable",
            False,
            fresh.reason.clone(),
            fresh.message.clone(),
        )
    } else if healthy.is_false() {
        Desired::new(
            "Schedulable",
            False,
            "HardwareCritical",
            healthy.message.clone(),
        )
    } else {
        Desired::new(
            "Schedulable",
            True,
            "Schedulable",
            "may receive tenant replicas",
        )
    };
    let ready = if schedulable.is_true() {
        Desired::new(
            "Ready",
            True,
            "Ready",
            "reachable, fresh, healthy and secure",
        )
    } else {
        Desired::new(
            "Ready",
            False,
            schedulable.reason.clone(),
            schedulable.message.clone(),
        )
    };
    vec![reachable, healthy, secure, fresh, schedulable, ready]
}

fn moved(old: Option<f64>, new: Option<f64>, threshold: impl Fn(f64) -> f64) -> bool {
    match (old, new) {
        (Some(o), Some(n)) => (n - o).abs() > threshold(o),
        (None, None) => false,
        _ => true,
    }
}

/// Why `new` is worth writing over `old`, or None.
fn worth_writing(
    old: &ServerStatus,
    new: &ServerStatus,
    transitions: &[Transition],
    policy: &StatusPolicy,
    beat_after: Duration,
) -> Option<&'static str> {
    if !transitions.is_empty() {
        return Some("condition changed");
    }
    let power = |s: &ServerStatus| {
        s.power
            .as_ref()
            .and_then(|p| p.consumed_watts)
            .map(f64::from)
    };
    if moved(power(old), power(new), |o| {
        (o * policy.power_share).max(policy.power_min_watts)
    }) {
        return Some("power moved");
    }
    let inlet = |s: &ServerStatus| s.thermal.as_ref().and_then(|t| t.inlet_celsius);
    let cpu = |s: &ServerStatus| s.thermal.as_ref().and_then(|t| t.cpu_max_celsius);
    if moved(inlet(old), inlet(new), |_| policy.temperature_delta)
        || moved(cpu(old), cpu(new), |_| policy.temperature_delta)
    {
        return Some("temperature moved");
    }
    if old.health != new.health {
        return Some("health changed");
    }
    let state = |s: &ServerStatus| s.power.as_ref().map(|p| (p.state, p.supplies.clone()));
    let fans = |s: &ServerStatus| s.thermal.as_ref().map(|t| (t.fan_count, t.fans.clone()));
    let intrusion = |s: &ServerStatus| s.security.as_ref().map(|x| x.intrusion);
    if state(old) != state(new) || fans(old) != fans(new) || intrusion(old) != intrusion(new) {
        return Some("components changed");
    }
    let inventory = |s: &ServerStatus| {
        s.inventory.clone().map(|mut i| {
            i.observed = None;
            i
        })
    };
    if inventory(old) != inventory(new) || old.drives != new.drives || old.capacity != new.capacity
    {
        return Some("inventory changed");
    }
    let since_stored = |a: Option<&Time>, b: Option<&Time>| match (a, b) {
        (Some(a), Some(b)) => b.0.as_millisecond() - a.0.as_millisecond(),
        _ => 0,
    };
    let allocation_every = i64::try_from(policy.allocation_every.as_millis()).unwrap_or(i64::MAX);
    if old.allocated != new.allocated
        && since_stored(old.last_seen.as_ref(), new.last_seen.as_ref()) >= allocation_every
    {
        return Some("allocation changed");
    }
    let os = |s: &ServerStatus| {
        s.os.as_ref()
            .map(|o| (o.kernel.clone(), o.os_version.clone()))
    };
    if os(old) != os(new) || old.os.is_some() != new.os.is_some() {
        return Some("operating system changed");
    }
    let beat = i64::try_from(beat_after.as_millis()).unwrap_or(i64::MAX);
    if since_stored(old.last_seen.as_ref(), new.last_seen.as_ref()) >= beat {
        return Some("heartbeat");
    }
    let os_seen = |s: &ServerStatus| {
        s.os.as_ref()
            .and_then(|o| o.observed.as_ref())
            .map(|o| o.observed_at.clone())
    };
    if since_stored(os_seen(old).as_ref(), os_seen(new).as_ref()) >= beat {
        return Some("heartbeat");
    }
    None
}

/// Decides the status, write, taint and requeue for one server.
pub fn decide(
    server: &Server,
    observed: Observed<'_>,
    now: Timestamp,
    policy: &StatusPolicy,
) -> Decision {
    let stored = server.status.clone().unwrap_or_default();
    let mut status = stored.clone();
    let mut health_reason = String::new();
    if let Some(sample) = observed.bmc {
        match &sample.body {
            // Never step back: a sample older than the stored reading changes nothing.
            Some(Body::Bmc(b))
                if stored
                    .last_seen
                    .as_ref()
                    .is_none_or(|t| t.0.as_millisecond() <= sample.observed_at_unix_ms) =>
            {
                apply_bmc(&mut status, b, sample);
                health_reason.clone_from(&b.health_reason);
            }
            // Readings of an unreachable BMC are kept with their age; health is no longer known.
            Some(Body::Failure(_)) => status.health = Health::Unknown,
            _ => {}
        }
    }
    if health_reason.is_empty() {
        // Keep the reason the stored condition carries while the BMC's health is the same.
        if let Some(c) = conditions::find(&stored.conditions, "Healthy")
            && stored.health == status.health
            && c.reason != "HardwareOK"
        {
            health_reason.clone_from(&c.message);
        }
    }
    if let Some(sample) = observed.os
        && let Some(Body::Os(o)) = &sample.body
    {
        apply_os(&mut status, o, sample);
    }
    status.capacity = capacity(server, &status);
    if let Some(allocated) = observed.allocated {
        status.allocated = allocated;
    }
    let window = policy.stale_window(server);
    let desired = decide_conditions(
        server,
        &status,
        &stored,
        observed.bmc,
        now,
        window,
        &health_reason,
    );
    let now_time = Time(now);
    let (merged, transitions) = conditions::merge(
        &stored.conditions,
        &desired,
        server.metadata.generation,
        &now_time,
    );
    status.conditions = merged;
    let write = if server.status.is_none() {
        Some("first status")
    } else {
        let name = server.metadata.name.as_deref().unwrap_or_default();
        worth_writing(
            &stored,
            &status,
            &transitions,
            policy,
            policy.heartbeat_for(name),
        )
    };
    let schedulable = desired.iter().find(|d| d.type_ == "Schedulable");
    let taint = schedulable.filter(|d| d.is_false()).map(|d| Taint {
        reason: d.reason.clone(),
        effect: if d.reason == "ChassisIntrusion" {
            "NoExecute"
        } else {
            "NoSchedule"
        },
    });
    // Look again when the newest reading turns stale (a silent BMC sends nothing to wake us).
    let requeue_after = match age(now, status.last_seen.as_ref()) {
        Some(a) if a <= window => window.saturating_sub(a) + Duration::from_millis(500),
        _ => policy.heartbeat,
    };
    Decision {
        status,
        write,
        taint,
        transitions,
        requeue_after,
    }
}

#[cfg(test)]
#[path = "server_status_tests.rs"]
mod tests;
