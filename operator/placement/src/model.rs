//! The inventory the engine places into: sites, racks and servers, indexed by position.

use std::collections::HashMap;
use std::fmt;

use serde::Serialize;
use sovereign_crds::{Classification, Spread};
use thiserror::Error;

use crate::resources::Resources;

/// Why a server may not receive new replicas.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub enum Unhealthy {
    Maintenance,
    IntrusionDetected,
    BmcUnreachable,
    TelemetryStale,
    NotReady,
    HealthCritical,
    /// Not a Kubernetes Node (no `nodeName`): nowhere to bind a Pod or a local volume.
    NoNode,
}

impl fmt::Display for Unhealthy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Unhealthy::Maintenance => "in maintenance",
            Unhealthy::IntrusionDetected => "chassis intrusion",
            Unhealthy::BmcUnreachable => "BMC unreachable",
            Unhealthy::TelemetryStale => "telemetry stale",
            Unhealthy::NotReady => "not ready",
            Unhealthy::HealthCritical => "health critical",
            Unhealthy::NoNode => "not a node of the cluster",
        })
    }
}

/// A site as placement sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Site {
    pub name: String,
    pub jurisdiction: String,
    pub security_tier: u8,
}

/// A rack as placement sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rack {
    pub name: String,
    pub site: usize,
    pub power_budget_watts: u64,
    /// Last measured draw of the rack (sum of its servers' BMC readings).
    pub measured_watts: u64,
}

/// A server as placement sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Server {
    pub name: String,
    pub rack: usize,
    pub site: usize,
    pub node: Option<String>,
    /// Schedulable capacity: `(total - reserved) * allocation ratio`.
    pub capacity: Resources,
    /// None when healthy; otherwise the first reason it is not.
    pub unhealthy: Option<Unhealthy>,
    /// Has self-encrypting drives, so it can hold encrypted volumes.
    pub encryption_capable: bool,
}

/// Placement strategy.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub enum Strategy {
    /// Least allocated first: spreads load, keeps headroom everywhere.
    #[default]
    Spread,
    /// Most allocated first: packs servers full, leaves whole servers free.
    Pack,
}

/// A tenant's placement policy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TenantPolicy {
    pub name: String,
    pub jurisdictions: Vec<String>,
    /// Site allow-list; None allows every site in an allowed jurisdiction.
    pub sites: Option<Vec<String>>,
    pub classification: Classification,
    /// Quota per class; None means no quota.
    pub quota: Option<Resources>,
}

/// What to place: `replicas` copies of `per_replica`, on distinct `spread` domains.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Request {
    /// Consumer id (for example `StorageVolume/moh-records/patient-records`).
    pub consumer: String,
    pub tenant: TenantPolicy,
    pub per_replica: Resources,
    pub replicas: u8,
    pub spread: Spread,
    /// Needs self-encrypting drives.
    pub encrypted: bool,
    /// Estimated extra power draw of one replica, in watts.
    pub watts_per_replica: u64,
}

/// Errors building an inventory.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum InventoryError {
    #[error("{kind} {name} is defined twice")]
    Duplicate { kind: &'static str, name: String },
    #[error("rack {rack} names site {site}, which does not exist")]
    UnknownSite { rack: String, site: String },
    #[error("server {server} names rack {rack}, which does not exist")]
    UnknownRack { server: String, rack: String },
}

/// Sites, racks and servers, sorted by name so every index order is deterministic.
#[derive(Clone, Debug, Default)]
pub struct Inventory {
    pub sites: Vec<Site>,
    pub racks: Vec<Rack>,
    pub servers: Vec<Server>,
    pub(crate) server_index: HashMap<String, usize>,
}

/// Equal when sites, racks and servers are (the index follows from them).
impl PartialEq for Inventory {
    fn eq(&self, other: &Self) -> bool {
        self.sites == other.sites && self.racks == other.racks && self.servers == other.servers
    }
}

impl Eq for Inventory {}

/// Server as given to the builder, before racks are resolved.
#[derive(Clone, Debug)]
pub struct ServerInput {
    pub name: String,
    pub rack: String,
    pub node: Option<String>,
    pub capacity: Resources,
    pub unhealthy: Option<Unhealthy>,
    pub encryption_capable: bool,
}

/// Rack as given to the builder.
#[derive(Clone, Debug)]
pub struct RackInput {
    pub name: String,
    pub site: String,
    pub power_budget_watts: u64,
    pub measured_watts: u64,
}

impl Inventory {
    /// Builds and validates an inventory; order of inputs does not matter.
    pub fn build(
        mut sites: Vec<Site>,
        mut racks: Vec<RackInput>,
        mut servers: Vec<ServerInput>,
    ) -> Result<Inventory, InventoryError> {
        sites.sort_by(|a, b| a.name.cmp(&b.name));
        racks.sort_by(|a, b| a.name.cmp(&b.name));
        servers.sort_by(|a, b| a.name.cmp(&b.name));
        let site_index = index("site", sites.iter().map(|s| s.name.as_str()))?;
        let rack_index = index("rack", racks.iter().map(|r| r.name.as_str()))?;
        let server_index = index("server", servers.iter().map(|s| s.name.as_str()))?;
        let racks: Vec<Rack> = racks
            .into_iter()
            .map(|r| {
                let site = *site_index
                    .get(&r.site)
                    .ok_or_else(|| InventoryError::UnknownSite {
                        rack: r.name.clone(),
                        site: r.site.clone(),
                    })?;
                Ok(Rack {
                    name: r.name,
                    site,
                    power_budget_watts: r.power_budget_watts,
                    measured_watts: r.measured_watts,
                })
            })
            .collect::<Result<_, InventoryError>>()?;
        let servers = servers
            .into_iter()
            .map(|s| {
                let rack = *rack_index
                    .get(&s.rack)
                    .ok_or_else(|| InventoryError::UnknownRack {
                        server: s.name.clone(),
                        rack: s.rack.clone(),
                    })?;
                Ok(Server {
                    name: s.name,
                    rack,
                    site: racks[rack].site,
                    node: s.node,
                    capacity: s.capacity,
                    unhealthy: s.unhealthy,
                    encryption_capable: s.encryption_capable,
                })
            })
            .collect::<Result<_, InventoryError>>()?;
        Ok(Inventory {
            sites,
            racks,
            servers,
            server_index,
        })
    }

    pub fn server_by_name(&self, name: &str) -> Option<usize> {
        self.server_index.get(name).copied()
    }
}

fn index<'a>(
    kind: &'static str,
    names: impl Iterator<Item = &'a str>,
) -> Result<HashMap<String, usize>, InventoryError> {
    let mut map = HashMap::new();
    for (i, n) in names.enumerate() {
        if map.insert(n.to_owned(), i).is_some() {
            return Err(InventoryError::Duplicate {
                kind,
                name: n.to_owned(),
            });
        }
    }
    Ok(map)
}
