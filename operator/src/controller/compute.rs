//! The ComputeInstance controller: place, write the placement to status, then one Pod per
//! replica bound to the chosen node (recreated when deleted, moved off unschedulable servers);
//! the ledger gives the capacity back when the instance is gone (the Pods go with their owner).

use std::sync::Arc;

use k8s_openapi::api::core::v1::Pod;
use kube::api::Api;
use kube::runtime::controller::Action;
use kube::{Resource, ResourceExt};
use sovereign_crds::workload::{InstanceReplica, ReplicaState};
use sovereign_crds::{ComputeInstance, ComputeInstanceStatus, ConditionStatus, Phase};
use sovereign_placement::Placement;

use super::conditions::Desired;
use super::ledger::Workload;
use super::materialise;
use super::pods::PodBrief;
use super::scale;
use super::workloads::{
    Asked, FINALIZER, Move, RETRY_REFUSED, all_placed, announce_move, ask, carried,
    delete_ignoring_absent, merge, moving_conditions, placed_message, plan_move, tenant_of,
    write_status,
};
use super::{Context, Error};
use crate::packed::Packed;

/// The status entry of a replica placed on `p`.
fn replica(c: &ComputeInstance, p: &Placement, state: ReplicaState) -> InstanceReplica {
    InstanceReplica {
        index: p.replica,
        server: p.server.clone(),
        rack: Some(p.rack.clone()),
        site: Some(p.site.clone()),
        node: p.node.clone(),
        pod: Some(materialise::pod_name(c, p.replica)),
        state,
    }
}

impl scale::ScaledStatus for ComputeInstanceStatus {
    type Replica = InstanceReplica;
    fn replicas(&self) -> &[InstanceReplica] {
        &self.replicas
    }
    fn replicas_mut(&mut self) -> &mut Vec<InstanceReplica> {
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
    fn state(r: &InstanceReplica) -> ReplicaState {
        r.state
    }
    fn set_state(r: &mut InstanceReplica, state: ReplicaState) {
        r.state = state;
    }
    fn location(r: &InstanceReplica) -> (u8, String, String, String) {
        (
            r.index,
            r.server.clone(),
            r.rack.clone().unwrap_or_default(),
            r.site.clone().unwrap_or_default(),
        )
    }
}

/// How long a reconcile waits for the Pod watch's first list.
const POD_LIST_WAIT: std::time::Duration = std::time::Duration::from_secs(30);

/// Creates a Pod (a plain create costs the API server less than an apply; a Pod is never
/// updated in place). One that exists already (created by a pass whose answer was lost) is fine.
async fn create_pod(pods: &Api<Pod>, pod: &serde_json::Value) -> Result<(), Error> {
    let name = pod["metadata"]["name"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let pod: Pod = serde_json::from_value(pod.clone()).map_err(Error::Json)?;
    match pods.create(&kube::api::PostParams::default(), &pod).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 409 => Ok(()),
        Err(source) => Err(Error::Apply {
            what: format!("Pod {name}"),
            source,
        }),
    }
}

/// Creates each replica's Pod on its node, recreates deleted ones, and replaces Pods of an older
/// template (image, command, args) one at a time: an outdated Pod is deleted only while every
/// other replica has its Pod. Returns how many Pods still run an older template.
async fn bind_pods(
    ctx: &Context,
    c: &ComputeInstance,
    tenant: &str,
    replicas: &mut [InstanceReplica],
) -> Result<usize, Error> {
    let ns = c.namespace().unwrap_or_default();
    let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), &ns);
    let name_of = |r: &InstanceReplica| {
        r.pod
            .clone()
            .unwrap_or_else(|| materialise::pod_name(c, r.index))
    };
    // From the Pod watch: a Pod created or deleted a moment ago may not show yet. A create it
    // does not show answers 409 (fine); a deletion it does not show wakes this instance again.
    // Reconciles start with the watch; its first list comes in moments later.
    tokio::time::timeout(POD_LIST_WAIT, ctx.pods.wait_until_ready())
        .await
        .map_err(|_| Error::PodsNotListed)?;
    let live: Vec<Option<PodBrief>> = replicas
        .iter()
        .map(|r| ctx.pods.get(&ns, &name_of(r)))
        .collect();
    // A replica without a live Pod is already down: no other may be taken down for a rollout.
    let mut disrupted = live
        .iter()
        .any(|p| p.as_ref().is_none_or(|p| p.terminating));
    let mut outdated = 0;
    for (r, live) in replicas.iter_mut().zip(live) {
        let Some(node) = r.node.clone() else {
            r.state = ReplicaState::Pending;
            continue;
        };
        let name = name_of(r);
        let running = match live {
            // The replica moved: the old Pod goes first (same name), the next pass recreates it.
            Some(p) if !p.terminating && p.node.as_deref() != Some(node.as_str()) => {
                delete_ignoring_absent(pods.clone(), &name).await?;
                false
            }
            Some(p) if !p.terminating => {
                let current = materialise::runs_current_template(c, &p);
                if !current {
                    outdated += 1;
                }
                if !current && !disrupted {
                    disrupted = true;
                    delete_ignoring_absent(pods.clone(), &name).await?;
                    tracing::info!(target: sovereign_telemetry::audit::AUDIT_TARGET, decision = "rollout",
                        object = %format!("ComputeInstance/{}/{}", c.namespace().unwrap_or_default(), c.name_any()),
                        pod = %name, "pod replaced: the instance's image, command or args changed");
                    false
                } else {
                    p.running
                }
            }
            // Terminating: recreated once gone (a Pod's spec is immutable, the name is reused).
            Some(_) => false,
            None => {
                create_pod(&pods, &materialise::pod(c, tenant, r.index, &node)).await?;
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
    Ok(outdated)
}

async fn apply_instance(ctx: &Context, c: &ComputeInstance) -> Result<Action, Error> {
    let ns = c.namespace().unwrap_or_default();
    let stored = c.status.clone().unwrap_or_default();
    let Some((tenant, classification)) = tenant_of(ctx, &ns) else {
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
                        .map(|p| replica(c, p, ReplicaState::Placed))
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
            // The placement is written before anything exists. A failed write keeps the books as
            // they are: the write may have landed (a lost answer) and the next reconcile either
            // sees it or places afresh (placing releases the old decision first). Giving the
            // capacity back here would free it twice if the write had landed.
            write_status(
                ctx,
                c,
                &value,
                c.resource_version().as_deref().filter(|_| placed),
            )
            .await?;
            super::hardware::publish(ctx, &c.object_ref(&()), &transitions).await;
        }
        return Ok(if placed {
            Action::await_change()
        } else {
            Action::requeue(RETRY_REFUSED)
        });
    }

    let replica_states: Vec<ReplicaState> = stored.replicas.iter().map(|r| r.state).collect();
    if let scale::Step::Release { keep } = scale::step(c.spec.replicas, &replica_states) {
        let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), &ns);
        for r in stored
            .replicas
            .iter()
            .filter(|r| r.state == ReplicaState::Releasing)
        {
            let name = r
                .pod
                .clone()
                .unwrap_or_else(|| materialise::pod_name(c, r.index));
            delete_ignoring_absent(pods.clone(), &name).await?;
        }
        let workload = Workload::Instance(c);
        return scale::finish_release(ctx, c, workload, &stored, keep, "Pods").await;
    }

    let on: Vec<(u8, String, String)> = stored
        .replicas
        .iter()
        .map(|r| {
            (
                r.index,
                r.server.clone(),
                r.site.clone().unwrap_or_default(),
            )
        })
        .collect();
    let mut degraded = all_placed();
    match plan_move(ctx, Workload::Instance(c), &tenant, classification, &on)? {
        Some(Move::To(p, from, reason)) => {
            let mut status = stored.clone();
            if let Some(r) = status.replicas.iter_mut().find(|r| r.index == p.replica) {
                *r = replica(c, &p, ReplicaState::Replacing);
            }
            status.phase = Phase::Degraded;
            status.conditions = moving_conditions(
                &stored.conditions,
                &p,
                &from,
                &reason,
                c.metadata.generation,
            );
            let value = serde_json::to_value(&status).map_err(Error::Json)?;
            // As for placements: a failed write keeps the books (the next pass moves again).
            write_status(ctx, c, &value, c.resource_version().as_deref()).await?;
            announce_move(ctx, c, &p, &from, &reason).await;
            return Ok(Action::await_change());
        }
        // A held move is tried again soon: the budget refills, a compliant server may free up.
        Some(Move::Held(d)) => degraded = d,
        None => {}
    }

    // A changed replica count: new replicas are written before their Pods exist; extra ones are
    // marked Releasing before their Pods go.
    let mut retry_soon = degraded.is_true();
    if !degraded.is_true() {
        let new_replica = |p: &Placement| replica(c, p, ReplicaState::Placed);
        let workload = Workload::Instance(c);
        match scale::count(
            ctx,
            c,
            workload,
            &tenant,
            &stored,
            c.spec.replicas,
            new_replica,
            "Pods",
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

    let mut status = stored.clone();
    let outdated = bind_pods(ctx, c, &tenant, &mut status.replicas).await?;
    let total = status.replicas.len();
    status.phase = if degraded.is_true() {
        Phase::Degraded
    } else {
        Phase::Bound
    };
    let running = status
        .replicas
        .iter()
        .filter(|r| r.state == ReplicaState::Ready)
        .count();
    let desired = [
        Desired::new(
            "Ready",
            if running == total && outdated == 0 {
                ConditionStatus::True
            } else {
                ConditionStatus::False
            },
            if outdated > 0 {
                "RollingOut"
            } else if running == total {
                "Running"
            } else {
                "PodsBound"
            },
            if outdated > 0 {
                format!(
                    "{total} pods bound to their nodes, {running} running, {outdated} still on the previous image, command or args (replaced one at a time)"
                )
            } else {
                format!("{total} pods bound to their nodes, {running} running")
            },
        ),
        degraded,
    ];
    let desired: Vec<Desired> = carried(&stored.conditions, "Placed")
        .into_iter()
        .chain(desired)
        .collect();
    let (cs, transitions) = merge(&stored.conditions, &desired, c.metadata.generation);
    status.conditions = cs;
    if status != stored
        && write_status(
            ctx,
            c,
            &serde_json::to_value(&status).map_err(Error::Json)?,
            None,
        )
        .await?
    {
        super::hardware::publish(ctx, &c.object_ref(&()), &transitions).await;
    }
    // Steady: every change that matters arrives as an event (the instance, its Pods, a server
    // turning unschedulable, a tenant's policy). A periodic requeue per instance held an entry
    // in the controller's queue for each of tens of thousands of instances (14 MB of 48 in a
    // heap profile of 8,000 instances).
    Ok(if retry_soon {
        Action::requeue(RETRY_REFUSED)
    } else {
        Action::await_change()
    })
}

/// A ComputeInstance carries no finalizer: its Pods go with it by garbage collection and the
/// ledger gives its capacity back when the watch reports it gone (or rebuilds from the stores
/// after a re-list or a restart). A finalizer cost every instance one more API write, a quarter
/// of what placing it costs the API server. Instances from before carry one: released here.
async fn release_instance(ctx: &Context, c: &ComputeInstance) -> Result<Action, Error> {
    ctx.ledger.release(&Workload::Instance(c).consumer());
    if !c.finalizers().iter().any(|f| f == FINALIZER) {
        return Ok(Action::await_change());
    }
    let api: Api<ComputeInstance> =
        Api::namespaced(ctx.client.clone(), &c.namespace().unwrap_or_default());
    // The others' finalizers kept, over the version read (a changed list answers 409 and the
    // change's event brings the instance back).
    let keep: Vec<&String> = c.finalizers().iter().filter(|f| *f != FINALIZER).collect();
    let patch = serde_json::json!({"metadata": {
        "finalizers": keep, "resourceVersion": c.resource_version()}});
    match api
        .patch(
            &c.name_any(),
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(&patch),
        )
        .await
    {
        Ok(_) => {}
        // Gone already, or the list changed under us (the next event retries).
        Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 => {}
        Err(source) => {
            return Err(Error::Apply {
                what: format!("ComputeInstance {} finalizer", c.name_any()),
                source,
            });
        }
    }
    tracing::info!(target: sovereign_telemetry::audit::AUDIT_TARGET, decision = "released",
        object = %format!("ComputeInstance/{}/{}", c.namespace().unwrap_or_default(), c.name_any()), "capacity released");
    Ok(Action::await_change())
}

/// ComputeInstance: place, record, bind Pods; released when it goes.
pub async fn reconcile_instance(
    packed: Arc<Packed<ComputeInstance>>,
    ctx: Arc<Context>,
) -> Result<Action, Error> {
    let mut guard = ctx.metrics.start("computeinstance");
    if !ctx.leader.is_leader() {
        guard.result("follower");
        return Ok(Action::await_change());
    }
    let c = packed.unpack()?;
    let result = if c.meta().deletion_timestamp.is_some() {
        release_instance(&ctx, &c).await
    } else {
        apply_instance(&ctx, &c).await
    };
    guard.result(if result.is_ok() { "applied" } else { "error" });
    result
}
