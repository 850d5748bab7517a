//! Replica-count changes of StorageVolumes and ComputeInstances, in the same order as a
//! placement: the ledger decides, status records it (resourceVersion as precondition), children
//! follow. A scale-down first marks the highest-numbered replicas `Releasing` in status, then
//! deletes their children, and only then gives their capacity back and drops them from status:
//! a crash anywhere re-runs the step, and capacity is never freed while its children exist.

use kube::runtime::events::{Event, EventType};
use kube::{Resource, ResourceExt};
use sovereign_crds::workload::ReplicaState;
use sovereign_crds::{Condition, ConditionStatus};
use sovereign_placement::{Decision, Placement};

use super::conditions::Desired;
use super::ledger::{LedgerError, Workload};
use super::workloads::{audit, placed_conditions, refusal_reason, write_status};
use super::{Context, Error};

/// A workload's status as scaling reads and writes it (StorageVolume and ComputeInstance).
pub(super) trait ScaledStatus: Clone + serde::Serialize {
    type Replica: Clone;
    fn replicas(&self) -> &[Self::Replica];
    fn replicas_mut(&mut self) -> &mut Vec<Self::Replica>;
    fn conditions(&self) -> &[Condition];
    fn set_conditions(&mut self, conditions: Vec<Condition>);
    /// Back to Pending (new replicas are not materialised yet).
    fn set_pending(&mut self);
    fn state(r: &Self::Replica) -> ReplicaState;
    fn set_state(r: &mut Self::Replica, state: ReplicaState);
    /// (index, server, rack, site) of a replica.
    fn location(r: &Self::Replica) -> (u8, String, String, String);
}

/// The status with `Placed` naming where its replicas now are.
fn with_placed<S: ScaledStatus>(mut status: S, generation: Option<i64>) -> S {
    let where_: Vec<_> = status
        .replicas()
        .iter()
        .map(|r| {
            let (_, server, rack, site) = S::location(r);
            (server, rack, site)
        })
        .collect();
    let conditions = placed_conditions(status.conditions(), &where_, generation);
    status.set_conditions(conditions);
    status
}

/// What a count change did.
pub(super) enum Counted {
    /// Nothing to change (or a move or release to finish first).
    Steady,
    /// Status written (replicas added, or marked Releasing): the next pass follows it.
    Wrote,
    /// Replicas could not be added; the Degraded condition says why.
    Refused(Desired),
}

/// Applies a change of `spec.replicas` to status: new replicas (made by `new_replica`) are
/// written before anything exists for them; extra ones are marked Releasing before their
/// `children` go. Both writes carry the object's resourceVersion as precondition.
#[allow(clippy::too_many_arguments)]
pub(super) async fn count<K, S>(
    ctx: &Context,
    obj: &K,
    w: Workload<'_>,
    tenant: &str,
    stored: &S,
    want: u8,
    new_replica: impl Fn(&Placement) -> S::Replica,
    children: &str,
) -> Result<Counted, Error>
where
    K: super::Namespaced,
    S: ScaledStatus,
{
    let replica_states: Vec<ReplicaState> = stored.replicas().iter().map(S::state).collect();
    let (status, reason, note) = match step(want, &replica_states) {
        Step::Steady | Step::Release { .. } => return Ok(Counted::Steady),
        Step::Shrink { keep } => {
            let mut status = stored.clone();
            for r in status.replicas_mut().iter_mut().skip(keep) {
                S::set_state(r, ReplicaState::Releasing);
            }
            let note =
                format!("scaling down to {keep}: replicas {keep}.. release their {children}");
            (status, "ScalingDown", note)
        }
        Step::Grow => {
            let kind = K::kind(&());
            let placements = match grow(ctx, w, tenant, &kind, obj, replica_states.len(), want)? {
                Grown::Placed(p) => p,
                Grown::Refused(d) => return Ok(Counted::Refused(d)),
            };
            let mut status = stored.clone();
            status
                .replicas_mut()
                .extend(placements.iter().map(new_replica));
            status.set_pending();
            let status = with_placed(status, obj.meta().generation);
            let where_: Vec<&str> = placements.iter().map(|p| p.server.as_str()).collect();
            let note = format!("scaled up to {want}: new replicas on {}", where_.join(", "));
            (status, "ScaledUp", note)
        }
    };
    let value = serde_json::to_value(&status).map_err(Error::Json)?;
    write_status(ctx, obj, &value, obj.meta().resource_version.as_deref()).await?;
    announce(ctx, obj, reason, note).await;
    Ok(Counted::Wrote)
}

/// Finishes a scale-down once the caller deleted the Releasing replicas' `children`: their
/// capacity goes back, then their status entries (a crash in between repeats the deletes,
/// which find nothing, and this).
pub(super) async fn finish_release<K, S>(
    ctx: &Context,
    obj: &K,
    w: Workload<'_>,
    stored: &S,
    keep: usize,
    children: &str,
) -> Result<kube::runtime::controller::Action, Error>
where
    K: super::Namespaced,
    S: ScaledStatus,
{
    release(ctx, w, keep)?;
    let gone: Vec<String> = stored
        .replicas()
        .iter()
        .filter(|r| S::state(r) == ReplicaState::Releasing)
        .map(|r| {
            let (index, server, _, _) = S::location(r);
            format!("{index} on {server}")
        })
        .collect();
    let mut status = stored.clone();
    status
        .replicas_mut()
        .retain(|r| S::state(r) != ReplicaState::Releasing);
    let status = with_placed(status, obj.meta().generation);
    let value = serde_json::to_value(&status).map_err(Error::Json)?;
    write_status(ctx, obj, &value, obj.meta().resource_version.as_deref()).await?;
    let note = format!(
        "released replicas {}: {children} deleted, capacity given back",
        gone.join(", ")
    );
    announce(ctx, obj, "ReplicasReleased", note).await;
    Ok(kube::runtime::controller::Action::await_change())
}

/// The next step of a workload's replica count.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Step {
    /// As many replicas as asked for, or a move to finish first.
    Steady,
    /// Replicas marked Releasing: delete their children, then keep the first `keep`.
    Release { keep: usize },
    /// Too many: mark every replica from index `keep` on Releasing.
    Shrink { keep: usize },
    /// Too few: place the missing ones beside the others.
    Grow,
}

/// Pure: what a workload asking for `want` replicas, with these replica states in status, does
/// next. A release under way is finished first; a move in flight waits for its new replica.
pub(super) fn step(want: u8, states: &[ReplicaState]) -> Step {
    let releasing = states
        .iter()
        .filter(|s| **s == ReplicaState::Releasing)
        .count();
    if releasing > 0 {
        return Step::Release {
            keep: states.len() - releasing,
        };
    }
    if states.contains(&ReplicaState::Replacing) {
        return Step::Steady;
    }
    let want = usize::from(want);
    match states.len().cmp(&want) {
        std::cmp::Ordering::Greater => Step::Shrink { keep: want },
        std::cmp::Ordering::Less => Step::Grow,
        std::cmp::Ordering::Equal => Step::Steady,
    }
}

/// What asking the ledger for the missing replicas gave.
enum Grown {
    Placed(Vec<Placement>),
    /// None placed; the Degraded condition says why (the others keep running).
    Refused(Desired),
}

/// Asks the ledger for the missing replicas; audited like a placement.
fn grow(
    ctx: &Context,
    w: Workload<'_>,
    tenant: &str,
    kind: &str,
    obj: &impl ResourceExt,
    have: usize,
    want: u8,
) -> Result<Grown, Error> {
    let refused = |reason: &str, message: String| {
        Grown::Refused(Desired::new(
            "Degraded",
            ConditionStatus::True,
            reason,
            format!("{have} of {want} replicas placed; the others: {message}"),
        ))
    };
    match ctx.ledger.grow(ctx, w, have) {
        Ok(outcome) => {
            let outcome = outcome.map(|placements| Decision {
                consumer: w.consumer(),
                placements,
            });
            audit(kind, obj, tenant, &outcome);
            ctx.metrics.decision(
                kind,
                outcome.as_ref().map_or_else(refusal_reason, |_| "Placed"),
            );
            Ok(match outcome {
                Ok(d) => Grown::Placed(d.placements),
                Err(r) => refused(refusal_reason(&r), r.to_string()),
            })
        }
        Err(LedgerError::Request(message)) => {
            ctx.metrics.decision(kind, "InvalidRequest");
            Ok(refused("InvalidRequest", message))
        }
        Err(e @ LedgerError::Inventory(_)) => Err(Error::Ledger(e.to_string())),
    }
}

/// Gives back the capacity of the replicas from `keep` on (their children are deleted).
fn release(ctx: &Context, w: Workload<'_>, keep: usize) -> Result<(), Error> {
    ctx.ledger
        .shrink(ctx, w, keep)
        .map_err(|e| Error::Ledger(e.to_string()))?;
    tracing::info!(target: sovereign_telemetry::audit::AUDIT_TARGET, decision = "released", object = %w.consumer(),
        kept = keep, engine = env!("CARGO_PKG_VERSION"), "replicas released by a scale-down");
    Ok(())
}

/// A Normal Event on the workload (scaling is news to its tenant).
async fn announce<K: Resource<DynamicType = ()>>(
    ctx: &Context,
    obj: &K,
    reason: &str,
    note: String,
) {
    let event = Event {
        type_: EventType::Normal,
        reason: reason.into(),
        note: Some(note),
        action: "Scale".into(),
        secondary: None,
    };
    if let Err(e) = ctx.recorder.publish(&event, &obj.object_ref(&())).await {
        tracing::warn!(error = %e, "publishing Event failed");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ReplicaState::{Placed, Ready, Releasing, Replacing};

    #[test]
    fn a_count_change_grows_or_shrinks_from_the_highest_index() {
        assert_eq!(step(2, &[Ready, Ready]), Step::Steady);
        assert_eq!(step(3, &[Ready, Ready]), Step::Grow);
        assert_eq!(step(1, &[Ready, Placed, Ready]), Step::Shrink { keep: 1 });
    }

    #[test]
    fn a_release_under_way_finishes_before_anything_else() {
        assert_eq!(step(1, &[Ready, Releasing]), Step::Release { keep: 1 });
        // Scaled back up while releasing: the release still finishes first, then it grows.
        assert_eq!(step(3, &[Ready, Releasing]), Step::Release { keep: 1 });
    }

    #[test]
    fn a_move_in_flight_is_not_interrupted_by_a_count_change() {
        assert_eq!(step(1, &[Ready, Replacing]), Step::Steady);
        assert_eq!(step(3, &[Replacing, Ready]), Step::Steady);
    }
}
