//! The StorageVolume controller: place, write the placement to status, then one local PV and a
//! pre-bound PVC per replica; replicas leave unschedulable servers (new one bound first, old
//! one released after); the finalizer deletes the PVs and PVCs and gives the capacity back.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::{PersistentVolume, PersistentVolumeClaim};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::api::Api;
use kube::runtime::controller::Action;
use kube::runtime::finalizer::{Event as FinalizerEvent, finalizer};
use kube::{Resource, ResourceExt};
use sovereign_crds::workload::{ReplicaState, VolumeReplica};
use sovereign_crds::{ConditionStatus, Phase, StorageVolume, StorageVolumeStatus};
use sovereign_placement::Placement;

use super::conditions::Desired;
use super::ledger::Workload;
use super::materialise;
use super::scale;
use super::workloads::{
    Asked, FINALIZER, Move, RETRY_REFUSED, all_placed, announce_move, apply_child, ask, carried,
    delete_ignoring_absent, merge, moving_conditions, placed_message, plan_move, tenant_of,
    write_status,
};
use super::{Context, Error};
use crate::packed::Packed;

/// The status entry of a replica placed on `p`.
fn replica(v: &StorageVolume, p: &Placement, state: ReplicaState) -> VolumeReplica {
    VolumeReplica {
        index: p.replica,
        server: p.server.clone(),
        rack: p.rack.clone(),
        site: p.site.clone(),
        node: p.node.clone(),
        pv: Some(materialise::pv_name(v, p.replica, &p.server)),
        pvc: Some(materialise::pvc_name(v, p.replica, &p.server)),
        state,
    }
}

impl scale::ScaledStatus for StorageVolumeStatus {
    type Replica = VolumeReplica;
    fn replicas(&self) -> &[VolumeReplica] {
        &self.replicas
    }
    fn replicas_mut(&mut self) -> &mut Vec<VolumeReplica> {
        &mut self.replicas
    }
    fn conditions(&self) -> &[sovereign_crds::Condition] {
        &self.conditions
    }
    fn set_conditions(&mut self, conditions: Vec<sovereign_crds::Condition>) {
        self.conditions = conditions;
    }
    fn set_pending(&mut self) {
        self.phase = Phase::Pending;
    }
    fn state(r: &VolumeReplica) -> ReplicaState {
        r.state
    }
    fn set_state(r: &mut VolumeReplica, state: ReplicaState) {
        r.state = state;
    }
    fn location(r: &VolumeReplica) -> (u8, String, String, String) {
        (r.index, r.server.clone(), r.rack.clone(), r.site.clone())
    }
}

/// Deletes the PVCs and PVs of `replicas` (absent ones are fine).
async fn delete_volume_children<'a>(
    ctx: &Context,
    ns: &str,
    replicas: impl Iterator<Item = &'a VolumeReplica>,
) -> Result<(), Error> {
    for r in replicas {
        if let Some(pvc) = &r.pvc {
            delete_ignoring_absent(
                Api::<PersistentVolumeClaim>::namespaced(ctx.client.clone(), ns),
                pvc,
            )
            .await?;
        }
        if let Some(pv) = &r.pv {
            delete_ignoring_absent(Api::<PersistentVolume>::all(ctx.client.clone()), pv).await?;
        }
    }
    Ok(())
}

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
                        .map(|p| replica(v, p, ReplicaState::Placed))
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
                            observed_generation: stored.observed_generation,
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
            // The placement is written before anything exists. A failed write keeps the books as
            // they are: the write may have landed (a lost answer) and the next reconcile either
            // sees it or places afresh (placing releases the old decision first). Giving the
            // capacity back here would free it twice if the write had landed.
            write_status(
                ctx,
                v,
                &value,
                v.resource_version().as_deref().filter(|_| placed),
            )
            .await?;
            super::hardware::publish(ctx, &v.object_ref(&()), &transitions).await;
        }
        return Ok(if placed {
            Action::await_change()
        } else {
            Action::requeue(RETRY_REFUSED)
        });
    }

    let replica_states: Vec<ReplicaState> = stored.replicas.iter().map(|r| r.state).collect();
    if let scale::Step::Release { keep } = scale::step(v.spec.replicas, &replica_states) {
        let leaving = stored
            .replicas
            .iter()
            .filter(|r| r.state == ReplicaState::Releasing);
        delete_volume_children(ctx, &ns, leaving).await?;
        let workload = Workload::Volume(v);
        return scale::finish_release(ctx, v, workload, &stored, keep, "PersistentVolumes").await;
    }

    // Move a replica off an unschedulable server: the new home is written first.
    let on: Vec<(u8, String, String)> = stored
        .replicas
        .iter()
        .map(|r| (r.index, r.server.clone(), r.site.clone()))
        .collect();
    let mut degraded = all_placed();
    match plan_move(ctx, Workload::Volume(v), &tenant, classification, &on)? {
        Some(Move::To(p, from, reason)) => {
            let mut status = stored.clone();
            if let Some(r) = status.replicas.iter_mut().find(|r| r.index == p.replica) {
                *r = replica(v, &p, ReplicaState::Replacing);
            }
            status.phase = Phase::Degraded;
            status.conditions = moving_conditions(
                &stored.conditions,
                &p,
                &from,
                &reason,
                v.metadata.generation,
            );
            let value = serde_json::to_value(&status).map_err(Error::Json)?;
            // As for placements: a failed write keeps the books (the next pass moves again).
            write_status(ctx, v, &value, v.resource_version().as_deref()).await?;
            announce_move(ctx, v, &p, &from, &reason).await;
            return Ok(Action::await_change());
        }
        // A held move is tried again soon: the budget refills, a compliant server may free up.
        Some(Move::Held(d)) => degraded = d,
        None => {}
    }

    // A changed replica count: new replicas are written before anything exists for them; extra
    // ones are marked Releasing before their children go.
    let mut retry_soon = degraded.is_true();
    if !degraded.is_true() {
        let new_replica = |p: &Placement| replica(v, p, ReplicaState::Placed);
        let workload = Workload::Volume(v);
        let want = v.spec.replicas;
        match scale::count(
            ctx,
            v,
            workload,
            &tenant,
            &stored,
            want,
            new_replica,
            "PersistentVolumes",
        )
        .await?
        {
            scale::Counted::Wrote => return Ok(Action::await_change()),
            scale::Counted::Refused(d) => {
                degraded = d;
                retry_soon = true;
            }
            scale::Counted::Steady => {}
        }
    }

    // Materialise what the status records.
    let mut status = stored.clone();
    let was_moving = stored
        .replicas
        .iter()
        .any(|r| r.state == ReplicaState::Replacing);
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
        // A moving replica stays Replacing until its new claim is bound (then the old goes).
        r.state = if bound {
            ReplicaState::Ready
        } else if r.state == ReplicaState::Replacing {
            ReplicaState::Replacing
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
    if all && was_moving {
        // The new replica is bound: only now is the old one released.
        remove_stale_volume_children(ctx, v, &status.replicas).await?;
    }
    status.phase = if degraded.is_true() {
        Phase::Degraded
    } else if all {
        Phase::Bound
    } else {
        Phase::Pending
    };
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
        degraded,
    ];
    let desired: Vec<Desired> = carried(&stored.conditions, "Placed")
        .into_iter()
        .chain(desired)
        .collect();
    let (c, transitions) = merge(&stored.conditions, &desired, v.metadata.generation);
    status.conditions = c;
    if status != stored
        && write_status(
            ctx,
            v,
            &serde_json::to_value(&status).map_err(Error::Json)?,
            None,
        )
        .await?
    {
        super::hardware::publish(ctx, &v.object_ref(&()), &transitions).await;
    }
    Ok(if retry_soon {
        Action::requeue(RETRY_REFUSED)
    } else if all {
        // Steady: changes arrive as events (see compute.rs); no per-volume timer.
        Action::await_change()
    } else {
        // The PVC turning Bound wakes us (owned objects are watched); this is the fallback.
        Action::requeue(Duration::from_secs(30))
    })
}

/// Deletes the PVs and PVCs of this volume that its status no longer names (the replica a move
/// left behind, or an orphan of a crash between two writes).
async fn remove_stale_volume_children(
    ctx: &Context,
    v: &StorageVolume,
    replicas: &[VolumeReplica],
) -> Result<(), Error> {
    let ns = v.namespace().unwrap_or_default();
    let name = v.name_any();
    let selector = format!(
        "{}={}",
        materialise::WORKLOAD_LABEL,
        materialise::child_name(&["storagevolume", &name], 63)
    );
    let lp = kube::api::ListParams::default().labels(&selector);
    let listed = |what: String| move |source| Error::Apply { what, source };
    let claims: Api<PersistentVolumeClaim> = Api::namespaced(ctx.client.clone(), &ns);
    let keep_pvc: Vec<&str> = replicas.iter().filter_map(|r| r.pvc.as_deref()).collect();
    for pvc in claims
        .list(&lp)
        .await
        .map_err(listed(format!("PVCs of {ns}/{name}")))?
    {
        let n = pvc.name_any();
        if !keep_pvc.contains(&n.as_str()) {
            delete_ignoring_absent(claims.clone(), &n).await?;
        }
    }
    let volumes: Api<PersistentVolume> = Api::all(ctx.client.clone());
    let keep_pv: Vec<&str> = replicas.iter().filter_map(|r| r.pv.as_deref()).collect();
    let owner = format!("{ns}/{name}");
    for pv in volumes
        .list(&lp)
        .await
        .map_err(listed(format!("PVs of {owner}")))?
    {
        let n = pv.name_any();
        let ours = pv.annotations().get("sovereign.io/volume") == Some(&owner);
        if ours && !keep_pv.contains(&n.as_str()) {
            delete_ignoring_absent(volumes.clone(), &n).await?;
        }
    }
    Ok(())
}

async fn cleanup_volume(ctx: &Context, v: &StorageVolume) -> Result<Action, Error> {
    let ns = v.namespace().unwrap_or_default();
    delete_volume_children(ctx, &ns, v.status.iter().flat_map(|s| &s.replicas)).await?;
    ctx.ledger.release(&Workload::Volume(v).consumer());
    tracing::info!(target: sovereign_telemetry::audit::AUDIT_TARGET, decision = "released", object = %format!("StorageVolume/{ns}/{}", v.name_any()), "capacity released");
    Ok(Action::await_change())
}

/// StorageVolume: place, record, materialise; finalizer releases.
pub async fn reconcile_volume(
    packed: Arc<Packed<StorageVolume>>,
    ctx: Arc<Context>,
) -> Result<Action, Error> {
    let mut guard = ctx.metrics.start("storagevolume");
    if !ctx.leader.is_leader() {
        guard.result("follower");
        return Ok(Action::await_change());
    }
    let v = Arc::new(packed.unpack()?);
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
