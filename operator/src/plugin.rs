//! `kubectl sovereign`: answers an infrastructure team asks of a live cluster — which servers run
//! hot or are unhealthy, how much capacity each site and rack has left, and why a workload's
//! replicas are where they are. Reads the API (read-only), decides here, prints; the binary is
//! `src/bin/kubectl-sovereign.rs`.

use std::cmp::Ordering;
use std::collections::BTreeMap;
use std::fmt::Write as _;

use comfy_table::Table;
use comfy_table::presets::UTF8_BORDERS_ONLY;
use kube::api::{Api, ListParams};
use serde::Serialize;
use sovereign_crds::{ComputeInstance, Condition, Rack, Server, Site, StorageVolume, Tenant};
use sovereign_placement::from_crds::{HealthPolicy, PowerModel};
use sovereign_placement::{CapacityPolicy, Strategy};
use thiserror::Error;

use crate::plan::{self, Objects, Report};

/// What the plugin can fail with, said so a person knows what to do.
#[derive(Debug, Error)]
pub enum PluginError {
    #[error("cannot reach the cluster in KUBECONFIG: {0}")]
    NoCluster(String),
    #[error(
        "the Sovereign CRDs are not installed in this cluster ({0} not found): install them with \
         `sovereign-operator crds install` or the Helm chart"
    )]
    CrdsMissing(String),
    #[error("reading {what}: {message}")]
    Read { what: String, message: String },
    #[error("{0} not found")]
    NotFound(String),
    #[error("{0:?} is not KIND/NAME with KIND storagevolume (sv) or computeinstance (ci)")]
    BadReference(String),
    #[error(transparent)]
    Plan(#[from] plan::PlanError),
}

async fn list<K>(client: &kube::Client, what: &str) -> Result<Vec<K>, PluginError>
where
    K: kube::Resource<DynamicType = ()> + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    let api: Api<K> = Api::all(client.clone());
    match api.list(&ListParams::default()).await {
        Ok(l) => Ok(l.items),
        Err(kube::Error::Api(s)) if s.code == 404 => Err(PluginError::CrdsMissing(what.into())),
        Err(kube::Error::Api(s)) => Err(PluginError::Read {
            what: what.into(),
            message: s.message,
        }),
        Err(e) => Err(PluginError::NoCluster(e.to_string())),
    }
}

/// Every Sovereign object the plugin reads, from the API.
pub async fn read(client: &kube::Client) -> Result<Objects, PluginError> {
    Ok(Objects {
        sites: list::<Site>(client, "sites.sovereign.io").await?,
        racks: list::<Rack>(client, "racks.sovereign.io").await?,
        servers: list::<Server>(client, "servers.sovereign.io").await?,
        tenants: list::<Tenant>(client, "tenants.sovereign.io").await?,
        volumes: list::<StorageVolume>(client, "storagevolumes.sovereign.io").await?,
        instances: list::<ComputeInstance>(client, "computeinstances.sovereign.io").await?,
        skipped: 0,
    })
}

fn condition<'a>(conditions: &'a [Condition], type_: &str) -> Option<&'a Condition> {
    conditions.iter().find(|c| c.type_ == type_)
}

/// One line of `top servers`.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ServerRow {
    pub name: String,
    pub site: String,
    pub rack: String,
    pub health: String,
    pub ready: String,
    pub power_watts: Option<u32>,
    pub inlet_celsius: Option<f64>,
    pub cpu_max_celsius: Option<f64>,
    pub load1: Option<f64>,
    /// Why the server takes no replicas, when it does not.
    pub unschedulable: Option<String>,
}

/// Which servers `top servers` shows.
#[derive(Clone, Debug, Default)]
pub struct Filter {
    pub site: Option<String>,
    pub rack: Option<String>,
    /// OK, Warning, Critical or Unknown (case-insensitive).
    pub health: Option<String>,
}

/// How `top servers` sorts (the hottest, the hungriest or the sickest first).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SortKey {
    Name,
    Power,
    Inlet,
    Cpu,
    Health,
}

fn health_rank(h: &str) -> u8 {
    match h {
        "Critical" => 3,
        "Warning" => 2,
        "Unknown" => 1,
        _ => 0,
    }
}

fn desc(a: Option<f64>, b: Option<f64>) -> Ordering {
    b.unwrap_or(f64::NEG_INFINITY)
        .total_cmp(&a.unwrap_or(f64::NEG_INFINITY))
}

/// The servers as rows, filtered and sorted.
pub fn top_servers(objects: &Objects, filter: &Filter, sort: SortKey) -> Vec<ServerRow> {
    let site_of: BTreeMap<&str, &str> = objects
        .racks
        .iter()
        .filter_map(|r| Some((r.metadata.name.as_deref()?, r.spec.site.as_str())))
        .collect();
    let mut rows: Vec<ServerRow> = objects
        .servers
        .iter()
        .map(|s| {
            let st = s.status.clone().unwrap_or_default();
            let health = serde_json::to_value(st.health)
                .ok()
                .and_then(|v| v.as_str().map(str::to_owned))
                .unwrap_or_else(|| "Unknown".into());
            let schedulable = condition(&st.conditions, "Schedulable");
            ServerRow {
                name: s.metadata.name.clone().unwrap_or_default(),
                site: site_of
                    .get(s.spec.rack.as_str())
                    .map_or_else(String::new, |x| (*x).to_owned()),
                rack: s.spec.rack.clone(),
                health,
                ready: condition(&st.conditions, "Ready")
                    .map_or_else(|| "Unknown".into(), |c| format!("{:?}", c.status)),
                power_watts: st.power.as_ref().and_then(|p| p.consumed_watts),
                inlet_celsius: st.thermal.as_ref().and_then(|t| t.inlet_celsius),
                cpu_max_celsius: st.thermal.as_ref().and_then(|t| t.cpu_max_celsius),
                load1: st.os.as_ref().and_then(|o| o.load1),
                unschedulable: schedulable
                    .filter(|c| format!("{:?}", c.status) != "True")
                    .map(|c| c.reason.clone()),
            }
        })
        .filter(|r| filter.site.as_ref().is_none_or(|s| *s == r.site))
        .filter(|r| filter.rack.as_ref().is_none_or(|x| *x == r.rack))
        .filter(|r| {
            filter
                .health
                .as_ref()
                .is_none_or(|h| h.eq_ignore_ascii_case(&r.health))
        })
        .collect();
    rows.sort_by(|a, b| {
        let by = match sort {
            SortKey::Name => Ordering::Equal,
            SortKey::Power => desc(a.power_watts.map(f64::from), b.power_watts.map(f64::from)),
            SortKey::Inlet => desc(a.inlet_celsius, b.inlet_celsius),
            SortKey::Cpu => desc(a.cpu_max_celsius, b.cpu_max_celsius),
            SortKey::Health => health_rank(&b.health).cmp(&health_rank(&a.health)),
        };
        by.then_with(|| a.name.cmp(&b.name))
    });
    rows
}

fn dash<T: ToString>(v: Option<T>) -> String {
    v.map_or_else(|| "-".to_owned(), |x| x.to_string())
}

fn table(header: &[&str]) -> Table {
    let mut t = Table::new();
    t.load_preset(UTF8_BORDERS_ONLY);
    t.set_header(header.to_vec());
    t
}

/// `top servers` as a table.
pub fn render_servers(rows: &[ServerRow]) -> String {
    let mut t = table(&[
        "SERVER",
        "SITE",
        "RACK",
        "HEALTH",
        "READY",
        "POWER W",
        "INLET °C",
        "CPU °C",
        "LOAD",
        "UNSCHEDULABLE",
    ]);
    for r in rows {
        t.add_row(vec![
            r.name.clone(),
            r.site.clone(),
            r.rack.clone(),
            r.health.clone(),
            r.ready.clone(),
            dash(r.power_watts),
            dash(r.inlet_celsius),
            dash(r.cpu_max_celsius),
            dash(r.load1),
            r.unschedulable.clone().unwrap_or_default(),
        ]);
    }
    format!("{t}\n")
}

fn now_unix() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

/// Placement options as the operator uses them (stale after 5 minutes, no over-commit).
pub fn live_options(strategy: Strategy) -> plan::Options {
    plan::Options {
        strategy,
        health: HealthPolicy {
            now_unix: now_unix(),
            stale_after_seconds: 300,
            assume_healthy_without_telemetry: false,
        },
        capacity: CapacityPolicy::default(),
        power: PowerModel::default(),
    }
}

/// Capacity per site and rack as the cluster stands: placed replicas only (what is pending is
/// not yet anyone's).
pub fn capacity(objects: &Objects) -> Result<Report, PluginError> {
    let placed = Objects {
        sites: objects.sites.clone(),
        racks: objects.racks.clone(),
        servers: objects.servers.clone(),
        tenants: objects.tenants.clone(),
        volumes: objects
            .volumes
            .iter()
            .filter(|v| v.status.as_ref().is_some_and(|s| !s.replicas.is_empty()))
            .cloned()
            .collect(),
        instances: objects
            .instances
            .iter()
            .filter(|c| c.status.as_ref().is_some_and(|s| !s.replicas.is_empty()))
            .cloned()
            .collect(),
        skipped: 0,
    };
    Ok(plan::plan(&placed, &live_options(Strategy::Spread))?)
}

/// The capacity part of a plan report.
pub fn render_capacity(report: &Report) -> String {
    let t = plan::capacity_table(&report.capacity);
    format!(
        "Capacity (used/capacity after reservations; SERVERS = schedulable/total; POWER W = measured/budget)\n{t}\n"
    )
}

/// One replica of `why`.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct WhyReplica {
    pub index: u8,
    pub server: String,
    pub rack: Option<String>,
    pub site: Option<String>,
    pub node: Option<String>,
    pub state: String,
}

/// Where a workload's replicas are, and what the operator said about deciding it.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Why {
    pub workload: String,
    pub tenant: Option<String>,
    pub phase: String,
    pub replicas: Vec<WhyReplica>,
    /// Conditions as `Type=Status (Reason): message` — the decision, or the per-filter refusal.
    pub decision: Vec<String>,
}

fn said(conditions: &[Condition]) -> Vec<String> {
    conditions
        .iter()
        .map(|c| format!("{}={:?} ({}): {}", c.type_, c.status, c.reason, c.message))
        .collect()
}

/// `why KIND/NAME` in `namespace`.
pub fn why(objects: &Objects, reference: &str, namespace: &str) -> Result<Why, PluginError> {
    let (kind, name) = reference
        .split_once('/')
        .ok_or_else(|| PluginError::BadReference(reference.into()))?;
    let is = |meta: &kube::api::ObjectMeta| {
        meta.name.as_deref() == Some(name) && meta.namespace.as_deref() == Some(namespace)
    };
    // The workload's label when set, else the Tenant that owns the namespace.
    let owner = objects
        .tenants
        .iter()
        .find(|t| {
            let name = t.metadata.name.as_deref().unwrap_or_default();
            t.spec.namespaces.iter().any(|n| n == namespace)
                || (t.spec.namespaces.is_empty() && name == namespace)
        })
        .and_then(|t| t.metadata.name.clone());
    let tenant_of = |meta: &kube::api::ObjectMeta| {
        meta.labels
            .as_ref()
            .and_then(|l| l.get("sovereign.io/tenant").cloned())
            .or_else(|| owner.clone())
    };
    match kind.to_ascii_lowercase().as_str() {
        "storagevolume" | "storagevolumes" | "sv" => {
            let v = objects
                .volumes
                .iter()
                .find(|v| is(&v.metadata))
                .ok_or_else(|| {
                    PluginError::NotFound(format!("StorageVolume {namespace}/{name}"))
                })?;
            let st = v.status.clone().unwrap_or_default();
            Ok(Why {
                workload: format!("StorageVolume {namespace}/{name}"),
                tenant: tenant_of(&v.metadata),
                phase: format!("{:?}", st.phase),
                replicas: st
                    .replicas
                    .iter()
                    .map(|r| WhyReplica {
                        index: r.index,
                        server: r.server.clone(),
                        rack: Some(r.rack.clone()),
                        site: Some(r.site.clone()),
                        node: r.node.clone(),
                        state: format!("{:?}", r.state),
                    })
                    .collect(),
                decision: said(&st.conditions),
            })
        }
        "computeinstance" | "computeinstances" | "ci" => {
            let c = objects
                .instances
                .iter()
                .find(|c| is(&c.metadata))
                .ok_or_else(|| {
                    PluginError::NotFound(format!("ComputeInstance {namespace}/{name}"))
                })?;
            let st = c.status.clone().unwrap_or_default();
            Ok(Why {
                workload: format!("ComputeInstance {namespace}/{name}"),
                tenant: tenant_of(&c.metadata),
                phase: format!("{:?}", st.phase),
                replicas: st
                    .replicas
                    .iter()
                    .map(|r| WhyReplica {
                        index: r.index,
                        server: r.server.clone(),
                        rack: r.rack.clone(),
                        site: r.site.clone(),
                        node: r.node.clone(),
                        state: format!("{:?}", r.state),
                    })
                    .collect(),
                decision: said(&st.conditions),
            })
        }
        _ => Err(PluginError::BadReference(reference.into())),
    }
}

/// `why` as text.
pub fn render_why(w: &Why) -> String {
    let mut t = table(&["REPLICA", "SERVER", "RACK", "SITE", "NODE", "STATE"]);
    for r in &w.replicas {
        t.add_row(vec![
            r.index.to_string(),
            r.server.clone(),
            dash(r.rack.clone()),
            dash(r.site.clone()),
            dash(r.node.clone()),
            r.state.clone(),
        ]);
    }
    let mut out = format!(
        "{} (tenant {}): {}\n",
        w.workload,
        w.tenant.as_deref().unwrap_or("-"),
        w.phase
    );
    if w.replicas.is_empty() {
        out.push_str("no replica placed\n");
    } else {
        let _ = writeln!(out, "{t}");
    }
    for d in &w.decision {
        let _ = writeln!(out, "  {d}");
    }
    out
}

/// One placement decision or refusal, as recorded on the workload (its `Placed` condition).
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct AuditRow {
    /// When the outcome last changed (RFC 3339).
    pub at: String,
    pub workload: String,
    /// `placed` or `refused`.
    pub outcome: String,
    pub reason: String,
    pub message: String,
}

/// The latest placement decision of each of a tenant's workloads, newest first.
pub fn audit(objects: &Objects, tenant: &str) -> Vec<AuditRow> {
    let namespaces: Vec<String> = objects
        .tenants
        .iter()
        .filter(|t| t.metadata.name.as_deref() == Some(tenant))
        .flat_map(|t| {
            if t.spec.namespaces.is_empty() {
                vec![tenant.to_owned()]
            } else {
                t.spec.namespaces.clone()
            }
        })
        .collect();
    let mine = |meta: &kube::api::ObjectMeta| {
        meta.namespace
            .as_ref()
            .is_some_and(|n| namespaces.contains(n))
    };
    let row = |kind: &str, meta: &kube::api::ObjectMeta, conditions: &[Condition]| {
        condition(conditions, "Placed").map(|c| AuditRow {
            at: c.last_transition_time.0.to_string(),
            workload: format!(
                "{kind}/{}/{}",
                meta.namespace.as_deref().unwrap_or_default(),
                meta.name.as_deref().unwrap_or_default()
            ),
            outcome: if format!("{:?}", c.status) == "True" {
                "placed".into()
            } else {
                "refused".into()
            },
            reason: c.reason.clone(),
            message: c.message.clone(),
        })
    };
    let mut rows: Vec<AuditRow> = objects
        .volumes
        .iter()
        .filter(|v| mine(&v.metadata))
        .filter_map(|v| {
            row(
                "StorageVolume",
                &v.metadata,
                &v.status.clone().unwrap_or_default().conditions,
            )
        })
        .chain(
            objects
                .instances
                .iter()
                .filter(|c| mine(&c.metadata))
                .filter_map(|c| {
                    row(
                        "ComputeInstance",
                        &c.metadata,
                        &c.status.clone().unwrap_or_default().conditions,
                    )
                }),
        )
        .collect();
    rows.sort_by(|a, b| b.at.cmp(&a.at).then_with(|| a.workload.cmp(&b.workload)));
    rows
}

/// `audit` as a table.
pub fn render_audit(rows: &[AuditRow]) -> String {
    let mut t = table(&["AT", "WORKLOAD", "OUTCOME", "REASON", "MESSAGE"]);
    for r in rows {
        t.add_row(vec![
            r.at.clone(),
            r.workload.clone(),
            r.outcome.clone(),
            r.reason.clone(),
            r.message.clone(),
        ]);
    }
    format!("{t}\n")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn objects() -> Objects {
        let rack = |name: &str, site: &str| -> Rack {
            serde_json::from_value(json!({"apiVersion": "sovereign.io/v1alpha1", "kind": "Rack",
                "metadata": {"name": name}, "spec": {"site": site, "powerBudgetWatts": 10000, "maxInletCelsius": 35}}))
            .unwrap_or_else(|e| panic!("{e}"))
        };
        let server = |name: &str,
                      rack: &str,
                      watts: u32,
                      inlet: f64,
                      health: &str,
                      sched: &str|
         -> Server {
            serde_json::from_value(json!({"apiVersion": "sovereign.io/v1alpha1", "kind": "Server",
                "metadata": {"name": name},
                "spec": {"rack": rack, "bmc": {"address": "https://10.0.0.1", "credentialsSecretRef": {"name": "b", "namespace": "s"}}},
                "status": {"health": health, "power": {"consumedWatts": watts}, "thermal": {"inletCelsius": inlet, "fanCount": 2},
                    "conditions": [{"type": "Schedulable", "status": sched, "reason": if sched == "True" {"Schedulable"} else {"ChassisIntrusion"},
                        "message": "", "lastTransitionTime": "2026-11-29T00:00:00Z"}]}}))
            .unwrap_or_else(|e| panic!("{e}"))
        };
        Objects {
            racks: vec![rack("hn-r1", "hn"), rack("hcm-r1", "hcm")],
            servers: vec![
                server("a", "hn-r1", 300, 22.0, "OK", "True"),
                server("b", "hn-r1", 900, 31.0, "Critical", "False"),
                server("c", "hcm-r1", 500, 25.0, "Warning", "True"),
            ],
            ..Objects::default()
        }
    }

    #[test]
    fn top_servers_sorts_filters_and_says_why_unschedulable() {
        let o = objects();
        let rows = top_servers(&o, &Filter::default(), SortKey::Power);
        let names: Vec<&str> = rows.iter().map(|r| r.name.as_str()).collect();
        assert_eq!(names, ["b", "c", "a"]);
        assert_eq!(rows[0].site, "hn");
        assert_eq!(rows[0].unschedulable.as_deref(), Some("ChassisIntrusion"));
        assert_eq!(rows[1].unschedulable, None);
        let hn = Filter {
            site: Some("hn".into()),
            ..Filter::default()
        };
        assert_eq!(top_servers(&o, &hn, SortKey::Inlet).len(), 2);
        let sick = Filter {
            health: Some("critical".into()),
            ..Filter::default()
        };
        assert_eq!(top_servers(&o, &sick, SortKey::Name)[0].name, "b");
        let by_health = top_servers(&o, &Filter::default(), SortKey::Health);
        assert_eq!(by_health[0].health, "Critical");
        assert!(render_servers(&rows).contains("ChassisIntrusion"));
    }

    #[test]
    fn why_refuses_what_it_cannot_name() {
        let o = objects();
        assert!(matches!(
            why(&o, "pod/x", "ns"),
            Err(PluginError::BadReference(_))
        ));
        assert!(matches!(
            why(&o, "sv/x", "ns"),
            Err(PluginError::NotFound(_))
        ));
    }
}
