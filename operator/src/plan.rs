//! `sovereign-operator plan`: placement from the YAML files users apply, without a cluster.

use std::path::{Path, PathBuf};

use comfy_table::{Table, presets::UTF8_BORDERS_ONLY};
use serde::Deserialize;
use serde::Serialize;
use sovereign_crds::{ComputeInstance, Rack, Server, Site, StorageVolume, Tenant};
use sovereign_placement::from_crds::{
    self, ConvertError, HealthPolicy, PowerModel, TenantPolicyWithNamespaces,
};
use sovereign_placement::resources::human;
use sovereign_placement::{CapacityPolicy, Class, Placer, Request, Resources, Slot, Strategy};
use thiserror::Error;

/// Errors of `plan`.
#[derive(Debug, Error)]
pub enum PlanError {
    #[error("reading {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: document {doc}: {source}")]
    Parse {
        path: PathBuf,
        doc: usize,
        #[source]
        source: serde_yaml_ng::Error,
    },
    #[error("{path}: document {doc} ({kind}): {source}")]
    Decode {
        path: PathBuf,
        doc: usize,
        kind: String,
        #[source]
        source: serde_json::Error,
    },
    #[error(transparent)]
    Convert(#[from] ConvertError),
    #[error("{0} records a replica on server {1}, which is not in the inventory")]
    UnknownServer(String, String),
    #[error("{0}")]
    Duplicate(String),
}

/// The Sovereign objects read from files.
#[derive(Debug, Default)]
pub struct Objects {
    pub sites: Vec<Site>,
    pub racks: Vec<Rack>,
    pub servers: Vec<Server>,
    pub tenants: Vec<Tenant>,
    pub volumes: Vec<StorageVolume>,
    pub instances: Vec<ComputeInstance>,
    /// Documents of other kinds (Namespaces, Secrets), skipped.
    pub skipped: usize,
}

fn files(path: &Path) -> Result<Vec<PathBuf>, PlanError> {
    let read = |source| PlanError::Read {
        path: path.to_owned(),
        source,
    };
    if !path.is_dir() {
        return Ok(vec![path.to_owned()]);
    }
    let mut out: Vec<PathBuf> = std::fs::read_dir(path)
        .map_err(read)?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| {
            p.extension()
                .is_some_and(|e| e == "yaml" || e == "yml" || e == "json")
        })
        .collect();
    out.sort();
    Ok(out)
}

/// Reads every document of every file (directories: their *.yaml, *.yml, *.json).
pub fn load(paths: &[PathBuf]) -> Result<Objects, PlanError> {
    let mut objects = Objects::default();
    for path in paths
        .iter()
        .map(|p| files(p))
        .collect::<Result<Vec<_>, _>>()?
        .into_iter()
        .flatten()
    {
        let text = std::fs::read_to_string(&path).map_err(|source| PlanError::Read {
            path: path.clone(),
            source,
        })?;
        for (doc, de) in serde_yaml_ng::Deserializer::from_str(&text).enumerate() {
            let value = serde_json::Value::deserialize(de).map_err(|source| PlanError::Parse {
                path: path.clone(),
                doc: doc + 1,
                source,
            })?;
            if value.is_null() {
                continue;
            }
            let kind = value["kind"].as_str().unwrap_or_default().to_owned();
            let sovereign = value["apiVersion"]
                .as_str()
                .is_some_and(|v| v.starts_with("sovereign.io/"));
            let decode_err = |source| PlanError::Decode {
                path: path.clone(),
                doc: doc + 1,
                kind: kind.clone(),
                source,
            };
            match (sovereign, kind.as_str()) {
                (true, "Site") => objects
                    .sites
                    .push(serde_json::from_value(value).map_err(decode_err)?),
                (true, "Rack") => objects
                    .racks
                    .push(serde_json::from_value(value).map_err(decode_err)?),
                (true, "Server") => objects
                    .servers
                    .push(serde_json::from_value(value).map_err(decode_err)?),
                (true, "Tenant") => objects
                    .tenants
                    .push(serde_json::from_value(value).map_err(decode_err)?),
                (true, "StorageVolume") => objects
                    .volumes
                    .push(serde_json::from_value(value).map_err(decode_err)?),
                (true, "ComputeInstance") => {
                    objects
                        .instances
                        .push(serde_json::from_value(value).map_err(decode_err)?);
                }
                _ => objects.skipped += 1,
            }
        }
    }
    Ok(objects)
}

/// Parses `CLASS=RATIO` (for example `cpu=4` or `memory=1.5`) into the capacity policy.
pub fn apply_allocation_ratio(policy: &mut CapacityPolicy, spec: &str) -> Result<(), String> {
    let (class, ratio) = spec
        .split_once('=')
        .ok_or_else(|| format!("{spec:?}: expected CLASS=RATIO"))?;
    let class = Class::ALL
        .into_iter()
        .find(|c| c.describe().split(' ').next() == Some(class))
        .ok_or_else(|| format!("{class:?}: classes are cpu, memory, gpus, nvme, ssd, hdd"))?;
    let ratio: f64 = ratio
        .parse()
        .map_err(|_| format!("{ratio:?} is not a number"))?;
    if !(0.0..=100.0).contains(&ratio) {
        return Err(format!("allocation ratio {ratio} is outside 0..100"));
    }
    // Thousandths keep the ledger integral; rounding to 0.001 is far below any real ratio step.
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    let milli = (ratio * 1000.0).round() as u64;
    policy.allocation_ratio_milli[class as usize] = milli;
    Ok(())
}

/// How to plan.
#[derive(Clone, Debug)]
pub struct Options {
    pub strategy: Strategy,
    pub health: HealthPolicy,
    pub capacity: CapacityPolicy,
    pub power: PowerModel,
}

/// One replica's outcome.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Row {
    pub workload: String,
    pub tenant: String,
    pub replica: Option<u8>,
    pub server: Option<String>,
    pub rack: Option<String>,
    pub site: Option<String>,
    /// "placed", "existing" or "refused".
    pub outcome: String,
    /// For placed replicas: the chosen server's dominant utilisation before it, in percent
    /// (Spread picks the lowest, Pack the highest that fits).
    pub utilisation_percent: Option<f64>,
    pub reason: Option<String>,
}

/// Capacity of one site or rack.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CapacityRow {
    pub site: String,
    pub rack: Option<String>,
    pub servers: usize,
    pub schedulable_servers: usize,
    /// Per class: "used/capacity" in human units.
    pub cpu: String,
    pub memory: String,
    pub gpus: String,
    pub nvme: String,
    pub ssd: String,
    pub hdd: String,
    pub power_watts: Option<String>,
}

/// Everything `plan` prints.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Report {
    pub strategy: Strategy,
    pub placements: Vec<Row>,
    pub capacity: Vec<CapacityRow>,
}

fn existing(
    placer: &mut Placer,
    req: &Request,
    names: &[String],
    rows: &mut Vec<Row>,
) -> Result<bool, PlanError> {
    let id = req.consumer.as_str();
    if names.is_empty() {
        return Ok(false);
    }
    let mut slots = Vec::new();
    for (k, name) in names.iter().enumerate() {
        let server = placer
            .inventory()
            .server_by_name(name)
            .ok_or_else(|| PlanError::UnknownServer(id.to_owned(), name.clone()))?;
        slots.push(Slot {
            server,
            resources: req.per_replica,
            watts: req.watts_per_replica,
        });
        let s = &placer.inventory().servers[server];
        rows.push(Row {
            workload: id.to_owned(),
            tenant: req.tenant.name.clone(),
            replica: u8::try_from(k).ok(),
            server: Some(name.clone()),
            rack: Some(placer.inventory().racks[s.rack].name.clone()),
            site: Some(placer.inventory().sites[s.site].name.clone()),
            outcome: "existing".into(),
            utilisation_percent: None,
            reason: None,
        });
    }
    placer
        .record(id, &req.tenant.name, slots)
        .map_err(|r| PlanError::Duplicate(r.to_string()))?;
    Ok(true)
}

fn decide(placer: &mut Placer, req: &Request, rows: &mut Vec<Row>) {
    match placer.place(req) {
        Ok(d) => rows.extend(d.placements.into_iter().map(|p| Row {
            workload: req.consumer.clone(),
            tenant: req.tenant.name.clone(),
            replica: Some(p.replica),
            server: Some(p.server),
            rack: Some(p.rack),
            site: Some(p.site),
            outcome: "placed".into(),
            utilisation_percent: Some(f64::from(p.utilisation_ppm) / 10_000.0),
            reason: None,
        })),
        Err(refusal) => rows.push(Row {
            workload: req.consumer.clone(),
            tenant: req.tenant.name.clone(),
            replica: None,
            server: None,
            rack: None,
            site: None,
            outcome: "refused".into(),
            utilisation_percent: None,
            reason: Some(refusal.to_string()),
        }),
    }
}

fn used_of(used: &Resources, cap: &Resources, c: Class) -> String {
    format!("{}/{}", human(c, used.get(c)), human(c, cap.get(c)))
}

fn capacity_rows(placer: &Placer) -> Vec<CapacityRow> {
    let inv = placer.inventory();
    let row = |site: usize, rack: Option<usize>| {
        let members: Vec<usize> = (0..inv.servers.len())
            .filter(|&i| {
                inv.servers[i].site == site && rack.is_none_or(|r| inv.servers[i].rack == r)
            })
            .collect();
        let cap = members
            .iter()
            .fold(Resources::ZERO, |a, &i| a.plus(&inv.servers[i].capacity));
        let used = rack.map_or_else(|| placer.site_used(site), |r| placer.rack_used(r));
        CapacityRow {
            site: inv.sites[site].name.clone(),
            rack: rack.map(|r| inv.racks[r].name.clone()),
            servers: members.len(),
            schedulable_servers: members
                .iter()
                .filter(|&&i| inv.servers[i].unhealthy.is_none())
                .count(),
            cpu: used_of(&used, &cap, Class::Cpu),
            memory: used_of(&used, &cap, Class::Memory),
            gpus: used_of(&used, &cap, Class::Gpu),
            nvme: used_of(&used, &cap, Class::Nvme),
            ssd: used_of(&used, &cap, Class::Ssd),
            hdd: used_of(&used, &cap, Class::Hdd),
            power_watts: rack.map(|r| {
                format!(
                    "{}/{}",
                    placer.rack_watts(r),
                    inv.racks[r].power_budget_watts
                )
            }),
        }
    };
    let mut rows = Vec::new();
    for site in 0..inv.sites.len() {
        rows.push(row(site, None));
        for rack in (0..inv.racks.len()).filter(|&r| inv.racks[r].site == site) {
            rows.push(row(site, Some(rack)));
        }
    }
    rows
}

/// Plans every workload that is not placed yet, after recording those that are.
pub fn plan(objects: &Objects, opts: &Options) -> Result<Report, PlanError> {
    let inv = from_crds::inventory(
        &objects.sites,
        &objects.racks,
        &objects.servers,
        &opts.capacity,
        &opts.health,
    )?;
    let tenants: Vec<TenantPolicyWithNamespaces> = from_crds::tenants(&objects.tenants)?;
    let mut placer = Placer::new(inv, opts.strategy);
    let mut rows = Vec::new();
    let mut pending = Vec::new();
    // Volumes and instances alike: (request, servers already holding its replicas).
    let volumes = objects.volumes.iter().map(|v| {
        let recorded: Vec<String> = v
            .status
            .iter()
            .flat_map(|s| s.replicas.iter().map(|r| r.server.clone()))
            .collect();
        from_crds::volume_request(v, &tenants, &opts.power).map(|req| (req, recorded))
    });
    let instances = objects.instances.iter().map(|c| {
        let recorded: Vec<String> = c
            .status
            .iter()
            .flat_map(|s| s.replicas.iter().map(|r| r.server.clone()))
            .collect();
        from_crds::instance_request(c, &tenants, &opts.power).map(|req| (req, recorded))
    });
    for item in volumes.chain(instances) {
        let (req, recorded) = item?;
        if !existing(&mut placer, &req, &recorded, &mut rows)? {
            pending.push(req);
        }
    }
    for req in &pending {
        decide(&mut placer, req, &mut rows);
    }
    Ok(Report {
        strategy: opts.strategy,
        placements: rows,
        capacity: capacity_rows(&placer),
    })
}

/// The report as tables for people.
/// The capacity rows as a table (also `kubectl sovereign capacity`'s).
pub fn capacity_table(rows: &[CapacityRow]) -> Table {
    let mut c = Table::new();
    c.load_preset(UTF8_BORDERS_ONLY);
    c.set_header([
        "SITE", "RACK", "SERVERS", "CPU", "MEMORY", "GPUS", "NVME", "SSD", "HDD", "POWER W",
    ]);
    for r in rows {
        c.add_row([
            r.site.clone(),
            r.rack.clone().unwrap_or_else(|| "(site)".into()),
            format!("{}/{}", r.schedulable_servers, r.servers),
            r.cpu.clone(),
            r.memory.clone(),
            r.gpus.clone(),
            r.nvme.clone(),
            r.ssd.clone(),
            r.hdd.clone(),
            r.power_watts.clone().unwrap_or_default(),
        ]);
    }
    c
}

pub fn render_table(report: &Report) -> String {
    let mut t = Table::new();
    t.load_preset(UTF8_BORDERS_ONLY);
    t.set_header([
        "WORKLOAD",
        "TENANT",
        "REPLICA",
        "SERVER",
        "RACK",
        "SITE",
        "USED BEFORE",
        "OUTCOME",
    ]);
    for r in &report.placements {
        let dash = || "-".to_owned();
        t.add_row([
            r.workload.clone(),
            r.tenant.clone(),
            r.replica.map_or_else(dash, |x| x.to_string()),
            r.server.clone().unwrap_or_else(dash),
            r.rack.clone().unwrap_or_else(dash),
            r.site.clone().unwrap_or_else(dash),
            r.utilisation_percent
                .map_or_else(dash, |u| format!("{u:.1}%")),
            match &r.reason {
                Some(reason) => format!("{}: {reason}", r.outcome),
                None => r.outcome.clone(),
            },
        ]);
    }
    let c = capacity_table(&report.capacity);
    format!(
        "Placement ({:?} strategy)\n{t}\n\nCapacity (used/capacity after reservations; SERVERS = schedulable/total)\n{c}\n",
        report.strategy
    )
}
