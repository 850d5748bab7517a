//! Building the engine's inputs from the Sovereign API objects (pure conversion, no I/O).

use std::borrow::Borrow;

use sovereign_crds::quantity::QuantityError;
use sovereign_crds::server::IntrusionState;
use sovereign_crds::{
    ComputeInstance, ConditionStatus, Health, Rack, ResourceSet, Server, Site, StorageVolume,
    Tenant,
};
use thiserror::Error;

use crate::model::{
    Inventory, InventoryError, RackInput, Request, ServerInput, TenantPolicy, Unhealthy,
};
use crate::resources::{CapacityPolicy, Class, Resources};

/// Conversion errors, naming the object at fault.
#[derive(Debug, Error)]
pub enum ConvertError {
    #[error("{object}: {source}")]
    Quantity {
        object: String,
        #[source]
        source: QuantityError,
    },
    #[error(transparent)]
    Inventory(#[from] InventoryError),
    #[error("{object}: tenant {tenant} does not exist")]
    UnknownTenant { object: String, tenant: String },
    #[error("{object}: {message}")]
    Invalid { object: String, message: String },
}

/// How health is judged from Server status.
#[derive(Clone, Debug)]
pub struct HealthPolicy {
    /// Current time in Unix seconds (the caller's clock: the engine has none).
    pub now_unix: i64,
    /// Telemetry older than this makes a server unschedulable.
    pub stale_after_seconds: i64,
    /// Treat servers that never reported telemetry as healthy and able to encrypt (planning
    /// before agents run). Servers that did report are judged on what they reported.
    pub assume_healthy_without_telemetry: bool,
}

/// Rough power a replica adds, for the rack-budget filter.
#[derive(Clone, Debug)]
pub struct PowerModel {
    pub watts_per_core: u64,
    pub watts_per_gpu: u64,
    pub watts_per_tib_storage: u64,
}

impl Default for PowerModel {
    fn default() -> Self {
        Self {
            watts_per_core: 8,
            watts_per_gpu: 350,
            watts_per_tib_storage: 2,
        }
    }
}

impl PowerModel {
    pub fn estimate(&self, r: &Resources) -> u64 {
        let storage = r.get(Class::Nvme) + r.get(Class::Ssd) + r.get(Class::Hdd);
        r.get(Class::Cpu).div_ceil(1000) * self.watts_per_core
            + r.get(Class::Gpu) * self.watts_per_gpu
            + storage.div_ceil(1 << 40) * self.watts_per_tib_storage
    }
}

fn resources(object: &str, set: &ResourceSet) -> Result<Resources, ConvertError> {
    Resources::from_set(set).map_err(|source| ConvertError::Quantity {
        object: object.to_owned(),
        source,
    })
}

fn name(meta: &kube_meta::ObjectMeta) -> String {
    meta.name.clone().unwrap_or_default()
}

mod kube_meta {
    pub use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
}

/// What placement and the roll-ups read of a Server: a few dozen bytes where the decoded
/// object is ~3 KB. A fleet of decoded Servers was the operator's largest store; it holds
/// these and the objects packed (decoding only the one a reconcile works on).
#[derive(Clone, Debug, PartialEq)]
pub struct ServerFacts {
    pub rack: Box<str>,
    pub node: Option<Box<str>>,
    pub maintenance: bool,
    /// Measured capacity, else declared (None: neither is given).
    pub capacity: Option<Result<Resources, QuantityError>>,
    pub reserved: Option<Result<Resources, QuantityError>>,
    /// What the ledger last wrote as allocated (unparsable counts as none).
    pub allocated: Option<Resources>,
    /// None: no telemetry status yet.
    pub status: Option<StatusFacts>,
}

/// The parts of a Server's status that placement and the roll-ups judge.
#[derive(Clone, Debug, PartialEq)]
pub struct StatusFacts {
    pub intrusion: bool,
    /// Condition `Reachable` is False.
    pub unreachable: bool,
    /// Condition `Ready` is False.
    pub not_ready: bool,
    /// Condition `Schedulable` is True.
    pub schedulable: bool,
    /// Condition `Schedulable` is False: its reason (why replicas must leave).
    pub unschedulable: Option<Box<str>>,
    pub critical: bool,
    /// `lastSeen`, Unix seconds.
    pub last_seen: Option<i64>,
    /// Whether any drive can encrypt; None when no drive is reported.
    pub encryption_capable: Option<bool>,
    pub consumed_watts: Option<u32>,
    pub inlet_celsius: Option<f64>,
}

impl ServerFacts {
    pub fn of(server: &Server) -> Self {
        let condition = |t: &str| {
            server
                .status
                .as_ref()
                .and_then(|st| st.conditions.iter().find(|c| c.type_ == t))
                .map(|c| c.status)
        };
        Self {
            rack: server.spec.rack.as_str().into(),
            node: server.spec.node_name.as_deref().map(Into::into),
            maintenance: server.spec.maintenance,
            capacity: server
                .status
                .as_ref()
                .and_then(|st| st.capacity.as_ref())
                .or(server.spec.capacity.as_ref())
                .map(Resources::from_set),
            reserved: server.spec.reserved.as_ref().map(Resources::from_set),
            allocated: server
                .status
                .as_ref()
                .and_then(|st| st.allocated.as_ref())
                .and_then(|a| Resources::from_set(a).ok()),
            status: server.status.as_ref().map(|st| StatusFacts {
                intrusion: st.security.as_ref().is_some_and(|s| {
                    s.intrusion != IntrusionState::Normal && s.intrusion != IntrusionState::Unknown
                }),
                unreachable: condition("Reachable") == Some(ConditionStatus::False),
                not_ready: condition("Ready") == Some(ConditionStatus::False),
                schedulable: condition("Schedulable") == Some(ConditionStatus::True),
                unschedulable: st
                    .conditions
                    .iter()
                    .find(|c| c.type_ == "Schedulable")
                    .filter(|c| c.status == ConditionStatus::False)
                    .map(|c| c.reason.as_str().into()),
                critical: st.health == Health::Critical,
                last_seen: st.last_seen.as_ref().map(|t| t.0.as_second()),
                encryption_capable: (!st.drives.is_empty())
                    .then(|| st.drives.iter().any(|d| d.encryption_capable)),
                consumed_watts: st.power.as_ref().and_then(|p| p.consumed_watts),
                inlet_celsius: st.thermal.as_ref().and_then(|t| t.inlet_celsius),
            }),
        }
    }

    /// Health verdict: None when it may receive replicas.
    pub fn unhealthy(&self, policy: &HealthPolicy) -> Option<Unhealthy> {
        if self.maintenance {
            return Some(Unhealthy::Maintenance);
        }
        if self.node.is_none() {
            return Some(Unhealthy::NoNode);
        }
        let Some(status) = &self.status else {
            return (!policy.assume_healthy_without_telemetry).then_some(Unhealthy::TelemetryStale);
        };
        if status.intrusion {
            return Some(Unhealthy::IntrusionDetected);
        }
        if status.unreachable {
            return Some(Unhealthy::BmcUnreachable);
        }
        match status.last_seen {
            Some(t) if policy.now_unix - t > policy.stale_after_seconds => {
                return Some(Unhealthy::TelemetryStale);
            }
            None if !policy.assume_healthy_without_telemetry => {
                return Some(Unhealthy::TelemetryStale);
            }
            _ => {}
        }
        if status.critical {
            return Some(Unhealthy::HealthCritical);
        }
        if status.not_ready {
            return Some(Unhealthy::NotReady);
        }
        None
    }

    fn encryption_capable(&self, policy: &HealthPolicy) -> bool {
        self.status
            .as_ref()
            .and_then(|s| s.encryption_capable)
            .unwrap_or(policy.assume_healthy_without_telemetry)
    }

    /// Condition `Schedulable` is True (what the roll-ups count as ready).
    pub fn schedulable(&self) -> bool {
        self.status.as_ref().is_some_and(|s| s.schedulable)
    }
}

/// Health verdict of one server: None when it may receive replicas.
pub fn server_health(server: &Server, policy: &HealthPolicy) -> Option<Unhealthy> {
    ServerFacts::of(server).unhealthy(policy)
}

/// Builds the inventory from Sites, Racks and Servers.
/// Takes owned objects or shared ones (`Arc`s from a reflector store) alike.
pub fn inventory(
    sites: &[impl Borrow<Site>],
    racks: &[impl Borrow<Rack>],
    servers: &[impl Borrow<Server>],
    capacity: &CapacityPolicy,
    health: &HealthPolicy,
) -> Result<Inventory, ConvertError> {
    let facts: Vec<(String, ServerFacts)> = servers
        .iter()
        .map(Borrow::borrow)
        .map(|s: &Server| (name(&s.metadata), ServerFacts::of(s)))
        .collect();
    inventory_of(
        sites,
        racks,
        facts.iter().map(|(n, f)| (n.as_str(), f)),
        capacity,
        health,
    )
}

/// [`inventory`] from the servers' names and facts.
pub fn inventory_of<'a>(
    sites: &[impl Borrow<Site>],
    racks: &[impl Borrow<Rack>],
    servers: impl Iterator<Item = (&'a str, &'a ServerFacts)>,
    capacity: &CapacityPolicy,
    health: &HealthPolicy,
) -> Result<Inventory, ConvertError> {
    let sites = sites
        .iter()
        .map(Borrow::borrow)
        .map(|s: &Site| crate::model::Site {
            name: name(&s.metadata),
            jurisdiction: s.spec.jurisdiction.0.clone(),
            security_tier: s.spec.security_tier,
        })
        .collect();
    let racks = racks
        .iter()
        .map(Borrow::borrow)
        .map(|r: &Rack| RackInput {
            name: name(&r.metadata),
            site: r.spec.site.clone(),
            power_budget_watts: u64::from(r.spec.power_budget_watts),
            measured_watts: r
                .status
                .as_ref()
                .and_then(|s| s.power_watts)
                .map_or(0, u64::from),
        })
        .collect();
    let servers = servers
        .map(|(name, s)| {
            let parsed = |set: &Option<Result<Resources, QuantityError>>| {
                set.clone()
                    .transpose()
                    .map_err(|source| ConvertError::Quantity {
                        object: format!("Server {name}"),
                        source,
                    })
                    .map(Option::unwrap_or_default)
            };
            Ok(ServerInput {
                name: name.to_owned(),
                rack: s.rack.as_ref().to_owned(),
                node: s.node.as_deref().map(str::to_owned),
                capacity: capacity.schedulable(&parsed(&s.capacity)?, &parsed(&s.reserved)?),
                unhealthy: s.unhealthy(health),
                encryption_capable: s.encryption_capable(health),
            })
        })
        .collect::<Result<_, ConvertError>>()?;
    Ok(Inventory::build(sites, racks, servers)?)
}

/// A tenant's policy.
pub fn tenant_policy(t: &Tenant) -> Result<TenantPolicy, ConvertError> {
    let tenant_name = name(&t.metadata);
    let quota = t
        .spec
        .quota
        .as_ref()
        .map(|q| {
            let object = format!("Tenant {tenant_name}");
            let mut r = resources(&object, q)?;
            // Classes without a quota are unlimited.
            let st = q.storage.clone().unwrap_or_default();
            for (class, absent) in [
                (Class::Cpu, q.cpu.is_none()),
                (Class::Memory, q.memory.is_none()),
                (Class::Gpu, q.gpus.is_none()),
                (Class::Nvme, st.nvme.is_none()),
                (Class::Ssd, st.ssd.is_none()),
                (Class::Hdd, st.hdd.is_none()),
            ] {
                if absent {
                    r.set(class, u64::MAX);
                }
            }
            Ok::<_, ConvertError>(r)
        })
        .transpose()?;
    Ok(TenantPolicy {
        name: tenant_name,
        jurisdictions: t
            .spec
            .residency
            .jurisdictions
            .iter()
            .map(|j| j.0.clone())
            .collect(),
        sites: t.spec.residency.sites.clone(),
        classification: t.spec.classification,
        quota,
    })
}

/// Which tenant owns a namespace: its `spec.namespaces`, or a namespace named after it.
pub fn tenant_for_namespace<'a>(
    tenants: &'a [TenantPolicyWithNamespaces],
    ns: &str,
) -> Option<&'a TenantPolicy> {
    tenants
        .iter()
        .find(|t| t.namespaces.iter().any(|n| n == ns))
        .map(|t| &t.policy)
}

/// A tenant policy with the namespaces it owns.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TenantPolicyWithNamespaces {
    pub policy: TenantPolicy,
    pub namespaces: Vec<String>,
}

/// Policies of all tenants with their namespaces.
pub fn tenants(
    tenants: &[impl Borrow<Tenant>],
) -> Result<Vec<TenantPolicyWithNamespaces>, ConvertError> {
    tenants
        .iter()
        .map(Borrow::borrow)
        .map(|t: &Tenant| {
            let mut namespaces = t.spec.namespaces.clone();
            if namespaces.is_empty() {
                namespaces.push(name(&t.metadata));
            }
            Ok(TenantPolicyWithNamespaces {
                policy: tenant_policy(t)?,
                namespaces,
            })
        })
        .collect()
}

fn owner(
    tenants: &[TenantPolicyWithNamespaces],
    object: &str,
    ns: &str,
) -> Result<TenantPolicy, ConvertError> {
    tenant_for_namespace(tenants, ns)
        .cloned()
        .ok_or_else(|| ConvertError::UnknownTenant {
            object: object.to_owned(),
            tenant: format!("owning namespace {ns}"),
        })
}

/// Consumer id used in the ledger and in audit records.
pub fn consumer(kind: &str, meta: &kube_meta::ObjectMeta) -> String {
    format!(
        "{kind}/{}/{}",
        meta.namespace.as_deref().unwrap_or_default(),
        name(meta)
    )
}

/// The placement request of a StorageVolume.
pub fn volume_request(
    v: &StorageVolume,
    tenants: &[TenantPolicyWithNamespaces],
    power: &PowerModel,
) -> Result<Request, ConvertError> {
    let id = consumer("StorageVolume", &v.metadata);
    let size = v
        .spec
        .size
        .parse()
        .and_then(sovereign_crds::quantity::ParsedQuantity::to_units)
        .map_err(|source| ConvertError::Quantity {
            object: id.clone(),
            source,
        })?;
    let per_replica = Resources::ZERO.with(Class::for_tier(v.spec.tier), size);
    Ok(Request {
        tenant: owner(
            tenants,
            &id,
            v.metadata.namespace.as_deref().unwrap_or_default(),
        )?,
        consumer: id,
        watts_per_replica: power.estimate(&per_replica),
        per_replica,
        replicas: v.spec.replicas,
        spread: v.spec.spread,
        encrypted: v.spec.encrypted,
    })
}

/// The placement request of a ComputeInstance.
pub fn instance_request(
    c: &ComputeInstance,
    tenants: &[TenantPolicyWithNamespaces],
    power: &PowerModel,
) -> Result<Request, ConvertError> {
    let id = consumer("ComputeInstance", &c.metadata);
    let set = ResourceSet {
        cpu: Some(c.spec.cpu.clone()),
        memory: Some(c.spec.memory.clone()),
        gpus: Some(u32::from(c.spec.gpus)),
        storage: None,
    };
    let per_replica = resources(&id, &set)?;
    Ok(Request {
        tenant: owner(
            tenants,
            &id,
            c.metadata.namespace.as_deref().unwrap_or_default(),
        )?,
        consumer: id,
        watts_per_replica: power.estimate(&per_replica),
        per_replica,
        replicas: c.spec.replicas,
        spread: c.spec.spread,
        encrypted: false,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
    use sovereign_crds::server::{SecurityStatus, ServerStatus};
    use sovereign_crds::{BmcSpec, Condition, SecretReference, ServerSpec};

    const NOW: i64 = 1_800_000_000;

    fn server(status: Option<ServerStatus>) -> Server {
        let mut s = Server::new(
            "s1",
            ServerSpec {
                rack: "r1".into(),
                node_name: Some("node-1".into()),
                bmc: BmcSpec {
                    address: "https://10.0.0.1".into(),
                    credentials_secret_ref: SecretReference {
                        name: "b".into(),
                        namespace: "n".into(),
                    },
                    ca_bundle: None,
                    insecure_skip_verify: true,
                    poll_interval_seconds: 60,
                },
                maintenance: false,
                maintenance_reason: None,
                capacity: None,
                reserved: None,
            },
        );
        s.status = status;
        s
    }

    fn fresh() -> ServerStatus {
        ServerStatus {
            last_seen: Some(Time(
                k8s_openapi::jiff::Timestamp::from_second(NOW - 30).unwrap(),
            )),
            health: Health::Ok,
            ..ServerStatus::default()
        }
    }

    fn policy(assume: bool) -> HealthPolicy {
        HealthPolicy {
            now_unix: NOW,
            stale_after_seconds: 300,
            assume_healthy_without_telemetry: assume,
        }
    }

    fn condition(t: &str, status: ConditionStatus) -> Condition {
        Condition {
            type_: t.into(),
            status,
            observed_generation: None,
            last_transition_time: Time(k8s_openapi::jiff::Timestamp::from_second(NOW).unwrap()),
            reason: "Test".into(),
            message: String::new(),
        }
    }

    #[test]
    fn facts_keep_what_placement_and_roll_ups_read() {
        let mut declared = server(None);
        declared.spec.capacity = Some(ResourceSet {
            cpu: Some(sovereign_crds::Quantity("16".into())),
            ..ResourceSet::default()
        });
        declared.spec.node_name = Some("node-1".into());
        let f = ServerFacts::of(&declared);
        assert_eq!((&*f.rack, f.node.as_deref()), ("r1", Some("node-1")));
        assert_eq!(
            f.capacity,
            Some(Ok(Resources::ZERO.with(Class::Cpu, 16_000))),
            "declared capacity without a measured one"
        );
        assert!(!f.schedulable() && f.status.is_none());

        let mut measured = fresh();
        measured.capacity = Some(ResourceSet {
            cpu: Some(sovereign_crds::Quantity("64".into())),
            ..ResourceSet::default()
        });
        measured.allocated = Some(ResourceSet {
            cpu: Some(sovereign_crds::Quantity("not a number".into())),
            ..ResourceSet::default()
        });
        measured
            .conditions
            .push(condition("Schedulable", ConditionStatus::False));
        declared.status = Some(measured);
        let f = ServerFacts::of(&declared);
        assert_eq!(
            f.capacity,
            Some(Ok(Resources::ZERO.with(Class::Cpu, 64_000))),
            "measured wins"
        );
        assert_eq!(f.allocated, None, "an unparsable allocation counts as none");
        let st = f.status.as_ref().unwrap();
        assert_eq!(st.unschedulable.as_deref(), Some("Test"), "the reason");
        assert!(!f.schedulable());
        assert_eq!(st.encryption_capable, None, "no drive reported");
        assert!(f.encryption_capable(&policy(true)) && !f.encryption_capable(&policy(false)));
    }

    #[test]
    fn health_from_status() {
        assert_eq!(server_health(&server(Some(fresh())), &policy(false)), None);
        // A server that has not joined the cluster can host no Pod or local volume.
        let mut unjoined = server(Some(fresh()));
        unjoined.spec.node_name = None;
        assert_eq!(
            server_health(&unjoined, &policy(true)),
            Some(Unhealthy::NoNode)
        );
        assert_eq!(
            server_health(&server(None), &policy(false)),
            Some(Unhealthy::TelemetryStale)
        );
        assert_eq!(server_health(&server(None), &policy(true)), None);

        let mut stale = fresh();
        stale.last_seen = Some(Time(
            k8s_openapi::jiff::Timestamp::from_second(NOW - 301).unwrap(),
        ));
        // Reported telemetry is judged even when assuming health for silent servers.
        assert_eq!(
            server_health(&server(Some(stale)), &policy(true)),
            Some(Unhealthy::TelemetryStale)
        );

        let mut intruded = fresh();
        intruded.security = Some(SecurityStatus {
            intrusion: IntrusionState::HardwareIntrusion,
            observed: None,
        });
        assert_eq!(
            server_health(&server(Some(intruded)), &policy(false)),
            Some(Unhealthy::IntrusionDetected)
        );

        let mut unreachable = fresh();
        unreachable
            .conditions
            .push(condition("Reachable", ConditionStatus::False));
        assert_eq!(
            server_health(&server(Some(unreachable)), &policy(false)),
            Some(Unhealthy::BmcUnreachable)
        );

        let mut critical = fresh();
        critical.health = Health::Critical;
        assert_eq!(
            server_health(&server(Some(critical)), &policy(false)),
            Some(Unhealthy::HealthCritical)
        );

        let mut maint = server(Some(fresh()));
        maint.spec.maintenance = true;
        assert_eq!(
            server_health(&maint, &policy(false)),
            Some(Unhealthy::Maintenance)
        );
    }

    #[test]
    fn power_estimate() {
        let m = PowerModel::default();
        let r = Resources::ZERO
            .with(Class::Cpu, 4_500)
            .with(Class::Gpu, 1)
            .with(Class::Nvme, 3 << 40);
        // 5 cores (rounded up) x 8 W + 350 W + 3 TiB x 2 W
        assert_eq!(m.estimate(&r), 40 + 350 + 6);
    }
}
