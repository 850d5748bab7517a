//! Rack and Site status from their servers' status, decided purely: counts, measured power
//! against the rack's budget, hottest inlet against its limits, capacity of the servers that
//! may receive replicas; `PowerHeadroom`, `Thermal` and `Ready` conditions. Written only when
//! something meaningful changed (same thresholds as servers).

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use sovereign_crds::{ConditionStatus, Rack, RackStatus, ResourceSet, Site, SiteStatus};
use sovereign_placement::Resources;
use sovereign_placement::from_crds::ServerFacts;

use super::conditions::{self, Desired, Transition};
use super::server_status::StatusPolicy;

/// A decided roll-up status and whether to write it.
#[derive(Clone, Debug)]
pub struct Rollup<S> {
    pub status: S,
    pub write: Option<&'static str>,
    pub transitions: Vec<Transition>,
}

/// Capacity a server offers: measured, else declared; unparsable sets count as nothing (the
/// API server's pattern makes that rare).
fn server_capacity(s: &ServerFacts) -> Resources {
    match &s.capacity {
        Some(Ok(r)) => *r,
        _ => Resources::ZERO,
    }
}

fn capacity_of<'a>(servers: impl Iterator<Item = &'a ServerFacts>) -> Option<ResourceSet> {
    let sum = servers
        .filter(|s| s.schedulable())
        .fold(Resources::ZERO, |acc, s| acc.plus(&server_capacity(s)));
    (!sum.is_zero()).then(|| sum.to_set())
}

/// What the ledger allocated on these servers (each server's `status.allocated`).
fn allocated_of<'a>(servers: impl Iterator<Item = &'a ServerFacts>) -> Option<ResourceSet> {
    let sum = servers
        .filter_map(|s| s.allocated.as_ref())
        .fold(Resources::ZERO, |acc, r| acc.plus(r));
    (!sum.is_zero()).then(|| sum.to_set())
}

fn power_and_inlet(servers: &[&ServerFacts]) -> (Option<u32>, Option<f64>) {
    let mut watts: Option<u32> = None;
    let mut inlet: Option<f64> = None;
    for s in servers {
        let Some(st) = &s.status else { continue };
        if let Some(w) = st.consumed_watts {
            watts = Some(watts.unwrap_or(0).saturating_add(w));
        }
        if let Some(t) = st.inlet_celsius {
            inlet = Some(inlet.map_or(t, |i: f64| i.max(t)));
        }
    }
    (watts, inlet)
}

fn rack_conditions(rack: &Rack, status: &RackStatus, ready_servers: usize) -> Vec<Desired> {
    use ConditionStatus::{False, True, Unknown};
    let budget = rack.spec.power_budget_watts;
    let power = match status.power_watts {
        Some(w) if w <= budget => Desired::new(
            "PowerHeadroom",
            True,
            "WithinBudget",
            format!("{w} W of {budget} W ({} W headroom)", budget - w),
        ),
        Some(w) => Desired::new(
            "PowerHeadroom",
            False,
            "OverBudget",
            format!("{w} W measured, budget {budget} W ({} W over)", w - budget),
        ),
        None => Desired::new(
            "PowerHeadroom",
            Unknown,
            "NoPowerReadings",
            "no server reports its power draw",
        ),
    };
    let max = f64::from(rack.spec.max_inlet_celsius);
    let warn = rack.spec.warn_inlet_celsius.map_or(max, f64::from);
    let thermal = match status.inlet_celsius {
        Some(t) if t > max => Desired::new(
            "Thermal",
            False,
            "InletTooHot",
            format!("hottest inlet {t} °C is above the rack's limit of {max} °C"),
        ),
        Some(t) if t > warn => Desired::new(
            "Thermal",
            True,
            "InletWarm",
            format!("hottest inlet {t} °C is above the warning level of {warn} °C"),
        ),
        Some(t) => Desired::new(
            "Thermal",
            True,
            "InletNormal",
            format!("hottest inlet {t} °C (limit {max} °C)"),
        ),
        None => Desired::new(
            "Thermal",
            Unknown,
            "NoInletReadings",
            "no server reports its inlet temperature",
        ),
    };
    let ready = if power.is_false() {
        Desired::new("Ready", False, "OverBudget", power.message.clone())
    } else if thermal.is_false() {
        Desired::new("Ready", False, "InletTooHot", thermal.message.clone())
    } else if ready_servers == 0 {
        Desired::new(
            "Ready",
            False,
            "NoSchedulableServers",
            format!("0 of {} servers may receive replicas", status.servers),
        )
    } else {
        Desired::new(
            "Ready",
            True,
            "Ready",
            format!(
                "{ready_servers} of {} servers may receive replicas",
                status.servers
            ),
        )
    };
    vec![power, thermal, ready]
}

fn moved_u32(old: Option<u32>, new: Option<u32>, policy: &StatusPolicy) -> bool {
    match (old, new) {
        (Some(o), Some(n)) => {
            (f64::from(n) - f64::from(o)).abs()
                > (f64::from(o) * policy.power_share).max(policy.power_min_watts)
        }
        (None, None) => false,
        _ => true,
    }
}

fn moved_f64(old: Option<f64>, new: Option<f64>, delta: f64) -> bool {
    match (old, new) {
        (Some(o), Some(n)) => (n - o).abs() > delta,
        (None, None) => false,
        _ => true,
    }
}

/// Why a rack is written when only what its servers hold changed: throttled by the caller
/// (`StatusPolicy::allocation_every`), as each server's own allocation is.
pub const ALLOCATION_CHANGED: &str = "allocation changed";

/// The status of `rack` from its servers (those whose `spec.rack` names it).
pub fn rack(
    rack: &Rack,
    servers: &[&ServerFacts],
    policy: &StatusPolicy,
    now: &Time,
) -> Rollup<RackStatus> {
    let stored = rack.status.clone().unwrap_or_default();
    let (power_watts, inlet_celsius) = power_and_inlet(servers);
    let mut status = RackStatus {
        servers: u32::try_from(servers.len()).unwrap_or(u32::MAX),
        power_watts,
        inlet_celsius,
        capacity: capacity_of(servers.iter().copied()),
        allocated: allocated_of(servers.iter().copied()),
        conditions: Vec::new(),
    };
    let ready = servers.iter().filter(|s| s.schedulable()).count();
    let desired = rack_conditions(rack, &status, ready);
    let (merged, transitions) =
        conditions::merge(&stored.conditions, &desired, rack.metadata.generation, now);
    status.conditions = merged;
    let write = if rack.status.is_none() {
        Some("first status")
    } else if !transitions.is_empty() {
        Some("condition changed")
    } else if status.servers != stored.servers || status.capacity != stored.capacity {
        Some("servers changed")
    } else if moved_u32(stored.power_watts, status.power_watts, policy) {
        Some("power moved")
    } else if moved_f64(
        stored.inlet_celsius,
        status.inlet_celsius,
        policy.temperature_delta,
    ) {
        Some("temperature moved")
    } else if status.allocated != stored.allocated {
        Some(ALLOCATION_CHANGED)
    } else {
        None
    };
    Rollup {
        status,
        write,
        transitions,
    }
}

/// The status of `site` from its racks and their servers.
pub fn site(
    site: &Site,
    racks: &[&Rack],
    servers: &[&ServerFacts],
    now: &Time,
) -> Rollup<SiteStatus> {
    use ConditionStatus::{False, True, Unknown};
    let stored = site.status.clone().unwrap_or_default();
    let ready = servers.iter().filter(|s| s.schedulable()).count();
    let mut status = SiteStatus {
        racks: u32::try_from(racks.len()).unwrap_or(u32::MAX),
        servers: u32::try_from(servers.len()).unwrap_or(u32::MAX),
        ready_servers: u32::try_from(ready).unwrap_or(u32::MAX),
        capacity: capacity_of(servers.iter().copied()),
        allocated: allocated_of(servers.iter().copied()),
        conditions: Vec::new(),
    };
    let rack_condition = |type_: &str, status: ConditionStatus| -> Vec<String> {
        racks
            .iter()
            .filter(|r| {
                r.status.as_ref().is_some_and(|st| {
                    conditions::find(&st.conditions, type_).is_some_and(|c| c.status == status)
                })
            })
            .filter_map(|r| r.metadata.name.clone())
            .collect()
    };
    let over = rack_condition("PowerHeadroom", False);
    let hot = rack_condition("Thermal", False);
    let power = if over.is_empty() {
        Desired::new(
            "PowerHeadroom",
            True,
            "WithinBudget",
            "every rack is within its power budget",
        )
    } else {
        Desired::new(
            "PowerHeadroom",
            False,
            "RackOverBudget",
            format!("over budget: {}", over.join(", ")),
        )
    };
    let thermal = if hot.is_empty() {
        Desired::new(
            "Thermal",
            True,
            "InletNormal",
            "every rack's inlet is within its limit",
        )
    } else {
        Desired::new(
            "Thermal",
            False,
            "RackInletTooHot",
            format!("too hot: {}", hot.join(", ")),
        )
    };
    let ready = if servers.is_empty() {
        Desired::new(
            "Ready",
            Unknown,
            "NoServers",
            "no servers registered at this site",
        )
    } else if ready == 0 {
        Desired::new(
            "Ready",
            False,
            "NoSchedulableServers",
            format!("0 of {} servers may receive replicas", servers.len()),
        )
    } else {
        Desired::new(
            "Ready",
            True,
            "Ready",
            format!("{ready} of {} servers may receive replicas", servers.len()),
        )
    };
    let (merged, transitions) = conditions::merge(
        &stored.conditions,
        &[power, thermal, ready],
        site.metadata.generation,
        now,
    );
    status.conditions = merged;
    let write = if site.status.is_none() {
        Some("first status")
    } else if !transitions.is_empty() {
        Some("condition changed")
    } else if status.racks != stored.racks
        || status.servers != stored.servers
        || status.ready_servers != stored.ready_servers
        || status.capacity != stored.capacity
        || status.allocated != stored.allocated
    {
        Some("inventory changed")
    } else {
        None
    };
    Rollup {
        status,
        write,
        transitions,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sovereign_crds::server::{PowerStatus, ThermalStatus};
    use sovereign_crds::{Condition, Server};

    fn rack_obj(budget: u32) -> Rack {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "sovereign.io/v1alpha1", "kind": "Rack",
            "metadata": {"name": "hn1-r01"},
            "spec": {"site": "hn1", "powerBudgetWatts": budget, "maxInletCelsius": 32, "warnInletCelsius": 27}
        }))
        .unwrap()
    }

    fn server(watts: u32, inlet: f64, schedulable: bool) -> ServerFacts {
        let mut s: Server = serde_json::from_value(serde_json::json!({
            "apiVersion": "sovereign.io/v1alpha1", "kind": "Server",
            "metadata": {"name": "s"},
            "spec": {"rack": "hn1-r01", "bmc": {"address": "https://10.0.0.1",
                "credentialsSecretRef": {"name": "b", "namespace": "n"}, "insecureSkipVerify": true},
                "capacity": {"cpu": 32, "memory": "256Gi"}}
        }))
        .unwrap();
        s.status = Some(sovereign_crds::ServerStatus {
            power: Some(PowerStatus {
                consumed_watts: Some(watts),
                ..PowerStatus::default()
            }),
            thermal: Some(ThermalStatus {
                inlet_celsius: Some(inlet),
                ..ThermalStatus::default()
            }),
            conditions: vec![Condition {
                type_: "Schedulable".into(),
                status: if schedulable {
                    ConditionStatus::True
                } else {
                    ConditionStatus::False
                },
                observed_generation: None,
                last_transition_time: now(),
                reason: "X".into(),
                message: String::new(),
            }],
            ..sovereign_crds::ServerStatus::default()
        });
        ServerFacts::of(&s)
    }

    fn now() -> Time {
        Time(k8s_openapi::jiff::Timestamp::from_second(1_800_000_000).unwrap())
    }

    fn cond<'a>(c: &'a [Condition], t: &str) -> &'a Condition {
        conditions::find(c, t).unwrap()
    }

    #[test]
    fn rack_sums_power_takes_the_hottest_inlet_and_counts_only_schedulable_capacity() {
        let (a, b, c) = (
            server(900, 24.0, true),
            server(1100, 28.5, true),
            server(400, 22.0, false),
        );
        let r = rack(
            &rack_obj(12_000),
            &[&a, &b, &c],
            &StatusPolicy::default(),
            &now(),
        );
        assert_eq!(r.status.power_watts, Some(2400));
        assert_eq!(r.status.inlet_celsius, Some(28.5));
        assert_eq!(
            r.status.capacity.as_ref().unwrap().cpu.as_ref().unwrap().0,
            "64"
        );
        assert_eq!(
            cond(&r.status.conditions, "PowerHeadroom").reason,
            "WithinBudget"
        );
        assert_eq!(cond(&r.status.conditions, "Thermal").reason, "InletWarm");
        assert_eq!(
            cond(&r.status.conditions, "Ready").status,
            ConditionStatus::True
        );
    }

    #[test]
    fn over_budget_rack_is_not_ready_and_small_moves_are_not_written() {
        let (a, b) = (server(900, 24.0, true), server(1100, 24.0, true));
        let r = rack(
            &rack_obj(1_500),
            &[&a, &b],
            &StatusPolicy::default(),
            &now(),
        );
        assert_eq!(
            cond(&r.status.conditions, "PowerHeadroom").status,
            ConditionStatus::False
        );
        assert_eq!(cond(&r.status.conditions, "Ready").reason, "OverBudget");
        let mut stored = rack_obj(1_500);
        stored.status = Some(r.status);
        let b2 = server(1150, 24.5, true);
        let again = rack(&stored, &[&a, &b2], &StatusPolicy::default(), &now());
        assert_eq!(
            again.write, None,
            "2000 W → 2050 W is within max(5 %, 20 W) = 100 W"
        );
    }

    #[test]
    fn an_allocation_change_alone_is_its_own_reason_and_a_power_move_wins() {
        let a = server(900, 24.0, true);
        let mut stored = rack_obj(5_000);
        stored.status = Some(rack(&stored, &[&a], &StatusPolicy::default(), &now()).status);
        let mut busy = a.clone();
        busy.allocated = Some(Resources::ZERO.with(sovereign_placement::Class::Cpu, 4_000));
        let r = rack(&stored, &[&busy], &StatusPolicy::default(), &now());
        assert_eq!(r.write, Some(ALLOCATION_CHANGED));
        let mut hot = busy.clone();
        if let Some(st) = hot.status.as_mut() {
            st.consumed_watts = Some(1_500);
        }
        let r = rack(&stored, &[&hot], &StatusPolicy::default(), &now());
        assert_eq!(r.write, Some("power moved"));
    }

    #[test]
    fn last_writes_say_how_long_to_wait() {
        let w = super::super::LastWrites::default();
        let minute = std::time::Duration::from_mins(1);
        assert_eq!(w.too_soon("r1", minute), None, "never written: write now");
        w.wrote("r1");
        assert!(
            w.too_soon("r1", minute)
                .is_some_and(|left| left > std::time::Duration::from_secs(50))
        );
        assert_eq!(w.too_soon("r1", std::time::Duration::ZERO), None);
    }

    #[test]
    fn site_lists_racks_over_budget() {
        let mut r = rack_obj(1_000);
        let s1 = server(1_200, 24.0, true);
        r.status = Some(rack(&r, &[&s1], &StatusPolicy::default(), &now()).status);
        let site_obj: Site = serde_json::from_value(serde_json::json!({
            "apiVersion": "sovereign.io/v1alpha1", "kind": "Site",
            "metadata": {"name": "hn1"},
            "spec": {"jurisdiction": "VN", "region": "north", "securityTier": 3}
        }))
        .unwrap();
        let st = site(&site_obj, &[&r], &[&s1], &now());
        assert_eq!(st.status.ready_servers, 1);
        let c = cond(&st.status.conditions, "PowerHeadroom");
        assert_eq!(
            (c.status, c.message.as_str()),
            (ConditionStatus::False, "over budget: hn1-r01")
        );
    }
}
