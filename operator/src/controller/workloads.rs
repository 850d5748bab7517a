//! The StorageVolume and ComputeInstance controllers' shells. Order is what makes a crash safe:
//! place in the ledger → write the placement to status (resourceVersion as precondition) →
//! materialise (PV + PVC, or Pod) → status. A restart rebuilds the ledger from status and
//! resumes at materialisation; nothing is placed twice.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::{PersistentVolume, PersistentVolumeClaim, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, DeleteParams, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::finalizer::{Event as FinalizerEvent, finalizer};
use kube::runtime::reflector::ObjectRef;
use kube::{Resource, ResourceExt};
use serde_json::{Value, json};
use sovereign_crds::workload::{InstanceReplica, ReplicaState, VolumeReplica};
use sovereign_crds::{
    Classification, ComputeInstance, ComputeInstanceStatus, ConditionStatus, Phase, StorageVolume,
    StorageVolumeStatus,
};
use sovereign_placement::{Decision, Refusal};

use super::conditions::{self, Desired, Transition};
use super::ledger::{LedgerError, Workload};
use super::materialise;
use super::tenant::TENANT_LABEL;
use super::{Context, Error};
use crate::FIELD_MANAGER;

/// Finalizer that releases a workload's capacity and children.
pub const FINALIZER: &str = "sovereign.io/release";

/// How soon a refused workload is tried again (inventory changes also wake it).
const RETRY_REFUSED: Duration = Duration::from_secs(15);

fn params() -> PatchParams {
    PatchParams::apply(FIELD_MANAGER).force()
}

/// The tenant of a namespace (its label) and that tenant's classification.
fn tenant_of(ctx: &Context, ns: &str) -> Option<(String, Classification)> {
    let namespace = ctx.namespaces.get(&ObjectRef::new(ns))?;
    let tenant = namespace.labels().get(TENANT_LABEL)?.clone();
    let class = ctx
        .tenants
        .get(&ObjectRef::new(&tenant))
        .map_or(Classification::Secret, |t| t.spec.classification);
    Some((tenant, class))
}

/// Writes a workload's status with server-side apply; with `resource_version`, only if the
/// object is still the one the decision was made on (a placement must never be written twice).
async fn write_status<K>(
    ctx: &Context,
    obj: &K,
    status: &Value,
    resource_version: Option<&str>,
) -> Result<(), Error>
where
    K: Resource<DynamicType = (), Scope = kube::core::NamespaceResourceScope>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug,
{
    let ns = obj.namespace().unwrap_or_default();
    let name = obj.name_any();
    let api: Api<K> = Api::namespaced(ctx.client.clone(), &ns);
    let mut body = json!({
        "apiVersion": K::api_version(&()),
        "kind": K::kind(&()),
        "status": status,
    });
    if let Some(rv) = resource_version {
        body["metadata"] = json!({"resourceVersion": rv});
    }
    api.patch_status(&name, &params(), &Patch::Apply(&body))
        .await
        .map_err(|source| Error::StatusWrite {
            kind: K::kind(&()).into_owned(),
            name: format!("{ns}/{name}"),
            source,
        })?;
    ctx.metrics.write(&K::kind(&()), "changed");
    Ok(())
}

async fn apply_child(ctx: &Context, obj: &Value) -> Result<(), Error> {
    let name = obj["metadata"]["name"].as_str().unwrap_or_default();
    let kind = obj["kind"].as_str().unwrap_or_default();
    let result = match (kind, obj["metadata"]["namespace"].as_str()) {
        ("PersistentVolume", _) => Api::<PersistentVolume>::all(ctx.client.clone())
            .patch(name, &params(), &Patch::Apply(obj))
            .await
            .map(|_| ()),
        ("PersistentVolumeClaim", Some(ns)) => {
            Api::<PersistentVolumeClaim>::namespaced(ctx.client.clone(), ns)
                .patch(name, &params(), &Patch::Apply(obj))
                .await
                .map(|_| ())
        }
        (_, Some(ns)) => Api::<Pod>::namespaced(ctx.client.clone(), ns)
            .patch(name, &params(), &Patch::Apply(obj))
            .await
            .map(|_| ()),
        _ => Ok(()),
    };
    result.map_err(|source| Error::Apply {
        what: format!("{kind} {name}"),
        source,
    })
}

async fn delete_ignoring_absent<K>(api: Api<K>, name: &str) -> Result<(), Error>
where
    K: Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    match api.delete(name, &DeleteParams::background()).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
        Err(source) => Err(Error::Delete {
            what: name.to_owned(),
            source,
        }),
    }
}

/// One structured record per decision, for auditors (exported with the logs over OTLP).
fn audit(kind: &str, obj: &impl ResourceExt, tenant: &str, outcome: &Result<Decision, Refusal>) {
    let object = format!(
        "{kind}/{}/{}",
        obj.namespace().unwrap_or_default(),
        obj.name_any()
    );
    let generation = obj.meta().generation.unwrap_or_default();
    match outcome {
        Ok(d) => {
            let servers: Vec<String> = d
                .placements
                .iter()
                .map(|p| format!("{} ({}/{})", p.server, p.rack, p.site))
                .collect();
            tracing::info!(target: "sovereign::audit", decision = "placed", tenant, object, generation,
                servers = %servers.join(", "), engine = env!("CARGO_PKG_VERSION"), "placement decided");
        }
        Err(r) => {
            tracing::info!(target: "sovereign::audit", decision = "refused", tenant, object, generation,
                refusal = %r, engine = env!("CARGO_PKG_VERSION"), "placement refused");
        }
    }
}

fn placed_message(servers: &[(String, String, String)]) -> String {
    let parts: Vec<String> = servers
        .iter()
        .map(|(s, r, site)| format!("{s} (rack {r}, site {site})"))
        .collect();
    format!("replicas on {}", parts.join("; "))
}

fn refusal_reason(r: &Refusal) -> &'static str {
    match r {
        Refusal::Quota { .. } => "QuotaExceeded",
        Refusal::NoFit { .. } => "Unschedulable",
        Refusal::Ledger { .. } => "LedgerConflict",
    }
}

/// Outcome of asking the ledger, in the shape both controllers write.
enum Asked {
    Placed(Decision),
    Refused { reason: String, message: String },
}

fn ask(
    ctx: &Context,
    w: Workload<'_>,
    tenant: &str,
    kind: &str,
    obj: &impl ResourceExt,
) -> Result<Asked, Error> {
    match ctx.ledger.place(ctx, w) {
        Ok(outcome) => {
            audit(kind, obj, tenant, &outcome);
            Ok(match outcome {
                Ok(d) => Asked::Placed(d),
                Err(r) => Asked::Refused {
                    reason: refusal_reason(&r).to_owned(),
                    message: r.to_string(),
                },
            })
        }
        Err(LedgerError::Request(message)) => Ok(Asked::Refused {
            reason: "InvalidRequest".into(),
            message,
        }),
        Err(e @ LedgerError::Inventory(_)) => Err(Error::Ledger(e.to_string())),
    }
}

/// A stored condition kept as it is (server-side apply drops our conditions we leave out).
fn carried(stored: &[sovereign_crds::Condition], type_: &'static str) -> Option<Desired> {
    conditions::find(stored, type_)
        .map(|c| Desired::new(type_, c.status, c.reason.clone(), c.message.clone()))
}

fn merge(
    stored: &[sovereign_crds::Condition],
    desired: &[Desired],
    generation: Option<i64>,
) -> (Vec<sovereign_crds::Condition>, Vec<Transition>) {
    conditions::merge(stored, desired, generation, &Time(Timestamp::now()))
}

// ---------------------------------------------------------------- StorageVolume

async fn apply_volume(ctx: &Context, v: &StorageVolume) -> Result<Action, Error> {
    let ns = v.namespace().unwrap_or_default();
    let stored = v.status.clone().unwrap_or_default();
    let Some((tenant, classification)) = tenant_of(ctx, &ns) else {
        let desired = [Desired::new(
            "Placed",
            ConditionStatus::False,
            "NoTenant",
            format!("namespace {ns} belongs to no tenant"),
        )];
        let (c, t) = merge(&stored.conditions, &desired, v.metadata.generation);
        if !t.is_empty() {
            let status = StorageVolumeStatus {
                conditions: c,
                ..stored
            };
            write_status(
                ctx,
                v,
                &serde_json::to_value(&status).map_err(Error::Json)?,
                None,
            )
            .await?;
        }
        return Ok(Action::requeue(RETRY_REFUSED));
    };
    if stored.replicas.is_empty() {
        let (status, transitions, placed) =
            match ask(ctx, Workload::Volume(v), &tenant, "StorageVolume", v)? {
                Asked::Placed(d) => {
                    let replicas: Vec<VolumeReplica> = d
                        .placements
                        .iter()
                        .map(|p| VolumeReplica {
                            index: p.replica,
                            server: p.server.clone(),
                            rack: p.rack.clone(),
                            site: p.site.clone(),
                            node: p.node.clone(),
                            pv: Some(materialise::pv_name(v, p.replica, &p.server)),
                            pvc: Some(materialise::pvc_name(v, p.replica, &p.server)),
                            state: ReplicaState::Placed,
                        })
                        .collect();
                    let where_: Vec<_> = d
                        .placements
                        .iter()
                        .map(|p| (p.server.clone(), p.rack.clone(), p.site.clone()))
                        .collect();
                    let desired = [Desired::new(
                        "Placed",
                        ConditionStatus::True,
                        "Placed",
                        placed_message(&where_),
                    )];
                    let (c, t) = merge(&stored.conditions, &desired, v.metadata.generation);
                    (
                        StorageVolumeStatus {
                            phase: Phase::Pending,
                            replicas,
                            placed_at: Some(Time(Timestamp::now())),
                            conditions: c,
                        },
                        t,
                        true,
                    )
                }
                Asked::Refused { reason, message } => {
                    let desired = [Desired::new(
                        "Placed",
                        ConditionStatus::False,
                        reason,
                        message,
                    )];
                    let (c, t) = merge(&stored.conditions, &desired, v.metadata.generation);
                    (
                        StorageVolumeStatus {
                            phase: Phase::Pending,
                            conditions: c,
                            ..stored.clone()
                        },
                        t,
                        false,
                    )
                }
            };
        if placed || !transitions.is_empty() {
            let value = serde_json::to_value(&status).map_err(Error::Json)?;
            // The placement is written before anything exists; if the object moved on, the
            // books give the capacity back and the next reconcile decides again.
            if let Err(e) = write_status(
                ctx,
                v,
                &value,
                v.resource_version().as_deref().filter(|_| placed),
            )
            .await
            {
                if placed {
                    ctx.ledger.release(&Workload::Volume(v).consumer());
                }
                return Err(e);
            }
            super::hardware::publish(ctx, &v.object_ref(&()), &transitions).await;
        }
        return Ok(if placed {
            Action::await_change()
        } else {
            Action::requeue(RETRY_REFUSED)
        });
    }

    // Materialise what the status records.
    let mut status = stored.clone();
    let pvcs: Api<PersistentVolumeClaim> = Api::namespaced(ctx.client.clone(), &ns);
    for r in &mut status.replicas {
        let Some(node) = r.node.clone() else {
            r.state = ReplicaState::Pending;
            continue;
        };
        apply_child(
            ctx,
            &materialise::persistent_volume(v, &tenant, classification, r.index, &r.server, &node),
        )
        .await?;
        apply_child(
            ctx,
            &materialise::persistent_volume_claim(v, &tenant, r.index, &r.server),
        )
        .await?;
        let pvc_name = r
            .pvc
            .clone()
            .unwrap_or_else(|| materialise::pvc_name(v, r.index, &r.server));
        let bound = pvcs
            .get_opt(&pvc_name)
            .await
            .ok()
            .flatten()
            .and_then(|p| p.status)
            .and_then(|s| s.phase)
            .is_some_and(|p| p == "Bound");
        r.state = if bound {
            ReplicaState::Ready
        } else {
            ReplicaState::Placed
        };
    }
    let ready = status
        .replicas
        .iter()
        .filter(|r| r.state == ReplicaState::Ready)
        .count();
    let total = status.replicas.len();
    let all = ready == total;
    status.phase = if all { Phase::Bound } else { Phase::Pending };
    let desired = [
        Desired::new(
            "Ready",
            if all {
                ConditionStatus::True
            } else {
                ConditionStatus::False
            },
            if all { "Bound" } else { "Binding" },
            format!("{ready}/{total} replicas bound to their PersistentVolumeClaims"),
        ),
        Desired::new(
            "Degraded",
            ConditionStatus::False,
            "AllReplicasPlaced",
            "every replica is on a schedulable server",
        ),
    ];
    let desired: Vec<Desired> = carried(&stored.conditions, "Placed")
        .into_iter()
        .chain(desired)
        .collect();
    let (c, transitions) = merge(&stored.conditions, &desired, v.metadata.generation);
    status.conditions = c;
    if status != stored {
        write_status(
            ctx,
            v,
            &serde_json::to_value(&status).map_err(Error::Json)?,
            None,
        )
        .await?;
        super::hardware::publish(ctx, &v.object_ref(&()), &transitions).await;
    }
    Ok(if all {
        Action::requeue(Duration::from_mins(10))
    } else {
        Action::requeue(Duration::from_secs(2))
    })
}

async fn cleanup_volume(ctx: &Context, v: &StorageVolume) -> Result<Action, Error> {
    let ns = v.namespace().unwrap_or_default();
    for r in v.status.iter().flat_map(|s| &s.replicas) {
        if let Some(pvc) = &r.pvc {
            delete_ignoring_absent(
                Api::<PersistentVolumeClaim>::namespaced(ctx.client.clone(), &ns),
                pvc,
            )
            .await?;
        }
        if let Some(pv) = &r.pv {
            delete_ignoring_absent(Api::<PersistentVolume>::all(ctx.client.clone()), pv).await?;
        }
    }
    ctx.ledger.release(&Workload::Volume(v).consumer());
    tracing::info!(target: "sovereign::audit", decision = "released", object = %format!("StorageVolume/{ns}/{}", v.name_any()), "capacity released");
    Ok(Action::await_change())
}

/// StorageVolume: place, record, materialise; finalizer releases.
pub async fn reconcile_volume(v: Arc<StorageVolume>, ctx: Arc<Context>) -> Result<Action, Error> {
    let mut guard = ctx.metrics.start("storagevolume");
    if !ctx.leader.is_leader() {
        guard.result("follower");
        return Ok(Action::await_change());
    }
    let api: Api<StorageVolume> =
        Api::namespaced(ctx.client.clone(), &v.namespace().unwrap_or_default());
    let result = finalizer(&api, FINALIZER, v, |event| async {
        match event {
            FinalizerEvent::Apply(v) => apply_volume(&ctx, &v).await,
            FinalizerEvent::Cleanup(v) => cleanup_volume(&ctx, &v).await,
        }
    })
    .await
    .map_err(|e| Error::Finalizer(Box::new(e)));
    guard.result(if result.is_ok() { "applied" } else { "error" });
    result
}

// ---------------------------------------------------------------- ComputeInstance

async fn apply_instance(ctx: &Context, c: &ComputeInstance) -> Result<Action, Error> {
    let ns = c.namespace().unwrap_or_default();
    let stored = c.status.clone().unwrap_or_default();
    let Some((tenant, _)) = tenant_of(ctx, &ns) else {
        let desired = [Desired::new(
            "Placed",
            ConditionStatus::False,
            "NoTenant",
            format!("namespace {ns} belongs to no tenant"),
        )];
        let (cs, t) = merge(&stored.conditions, &desired, c.metadata.generation);
        if !t.is_empty() {
            let status = ComputeInstanceStatus {
                conditions: cs,
                ..stored
            };
            write_status(
                ctx,
                c,
                &serde_json::to_value(&status).map_err(Error::Json)?,
                None,
            )
            .await?;
        }
        return Ok(Action::requeue(RETRY_REFUSED));
    };
    if stored.replicas.is_empty() {
        let (status, transitions, placed) =
            match ask(ctx, Workload::Instance(c), &tenant, "ComputeInstance", c)? {
                Asked::Placed(d) => {
                    let replicas: Vec<InstanceReplica> = d
                        .placements
                        .iter()
                        .map(|p| InstanceReplica {
                            index: p.replica,
                            server: p.server.clone(),
                            rack: Some(p.rack.clone()),
                            site: Some(p.site.clone()),
                            node: p.node.clone(),
                            pod: Some(materialise::pod_name(c, p.replica)),
                            state: ReplicaState::Placed,
                        })
                        .collect();
                    let where_: Vec<_> = d
                        .placements
                        .iter()
                        .map(|p| (p.server.clone(), p.rack.clone(), p.site.clone()))
                        .collect();
                    let desired = [Desired::new(
                        "Placed",
                        ConditionStatus::True,
                        "Placed",
                        placed_message(&where_),
                    )];
                    let (cs, t) = merge(&stored.conditions, &desired, c.metadata.generation);
                    (
                        ComputeInstanceStatus {
                            phase: Phase::Pending,
                            replicas,
                            conditions: cs,
                        },
                        t,
                        true,
                    )
                }
                Asked::Refused { reason, message } => {
                    let desired = [Desired::new(
                        "Placed",
                        ConditionStatus::False,
                        reason,
                        message,
                    )];
                    let (cs, t) = merge(&stored.conditions, &desired, c.metadata.generation);
                    (
                        ComputeInstanceStatus {
                            phase: Phase::Pending,
                            conditions: cs,
                            ..stored.clone()
                        },
                        t,
                        false,
                    )
                }
            };
        if placed || !transitions.is_empty() {
            let value = serde_json::to_value(&status).map_err(Error::Json)?;
            if let Err(e) = write_status(
                ctx,
                c,
                &value,
                c.resource_version().as_deref().filter(|_| placed),
            )
            .await
            {
                if placed {
                    ctx.ledger.release(&Workload::Instance(c).consumer());
                }
                return Err(e);
            }
            super::hardware::publish(ctx, &c.object_ref(&()), &transitions).await;
        }
        return Ok(if placed {
            Action::await_change()
        } else {
            Action::requeue(RETRY_REFUSED)
        });
    }

    let mut status = stored.clone();
    let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), &ns);
    for r in &mut status.replicas {
        let Some(node) = r.node.clone() else {
            r.state = ReplicaState::Pending;
            continue;
        };
        let name = r
            .pod
            .clone()
            .unwrap_or_else(|| materialise::pod_name(c, r.index));
        // A Pod deleted by anyone is recreated on the same placement; an existing one is left
        // as it is (a Pod's spec is immutable).
        let live = pods.get_opt(&name).await.map_err(|source| Error::Apply {
            what: format!("Pod {name}"),
            source,
        })?;
        let running = match live {
            Some(p) if p.metadata.deletion_timestamp.is_none() => p
                .status
                .and_then(|s| s.phase)
                .is_some_and(|ph| ph == "Running"),
            Some(_) => false,
            None => {
                apply_child(ctx, &materialise::pod(c, &tenant, r.index, &node)).await?;
                false
            }
        };
        // Bound to its node is materialised (there may be no kubelet to run it yet).
        r.state = if running {
            ReplicaState::Ready
        } else {
            ReplicaState::Placed
        };
    }
    let total = status.replicas.len();
    status.phase = Phase::Bound;
    let running = status
        .replicas
        .iter()
        .filter(|r| r.state == ReplicaState::Ready)
        .count();
    let desired = [
        Desired::new(
            "Ready",
            if running == total {
                ConditionStatus::True
            } else {
                ConditionStatus::False
            },
            if running == total {
                "Running"
            } else {
                "PodsBound"
            },
            format!("{total} pods bound to their nodes, {running} running"),
        ),
        Desired::new(
            "Degraded",
            ConditionStatus::False,
            "AllReplicasPlaced",
            "every replica is on a schedulable server",
        ),
    ];
    let desired: Vec<Desired> = carried(&stored.conditions, "Placed")
        .into_iter()
        .chain(desired)
        .collect();
    let (cs, transitions) = merge(&stored.conditions, &desired, c.metadata.generation);
    status.conditions = cs;
    if status != stored {
        write_status(
            ctx,
            c,
            &serde_json::to_value(&status).map_err(Error::Json)?,
            None,
        )
        .await?;
        super::hardware::publish(ctx, &c.object_ref(&()), &transitions).await;
    }
    Ok(Action::requeue(Duration::from_mins(10)))
}

fn cleanup_instance(ctx: &Context, c: &ComputeInstance) -> Action {
    // Pods go with their owner (garbage collection); the capacity is ours to give back.
    ctx.ledger.release(&Workload::Instance(c).consumer());
    tracing::info!(target: "sovereign::audit", decision = "released",
        object = %format!("ComputeInstance/{}/{}", c.namespace().unwrap_or_default(), c.name_any()), "capacity released");
    Action::await_change()
}

/// ComputeInstance: place, record, bind Pods; finalizer releases.
pub async fn reconcile_instance(
    c: Arc<ComputeInstance>,
    ctx: Arc<Context>,
) -> Result<Action, Error> {
    let mut guard = ctx.metrics.start("computeinstance");
    if !ctx.leader.is_leader() {
        guard.result("follower");
        return Ok(Action::await_change());
    }
    let api: Api<ComputeInstance> =
        Api::namespaced(ctx.client.clone(), &c.namespace().unwrap_or_default());
    let result = finalizer(&api, FINALIZER, c, |event| async {
        match event {
            FinalizerEvent::Apply(c) => apply_instance(&ctx, &c).await,
            FinalizerEvent::Cleanup(c) => Ok(cleanup_instance(&ctx, &c)),
        }
    })
    .await
    .map_err(|e| Error::Finalizer(Box::new(e)));
    guard.result(if result.is_ok() { "applied" } else { "error" });
    result
}
