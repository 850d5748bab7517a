//! Replica-count changes of StorageVolumes and ComputeInstances, in the same order as a
//! placement: the ledger decides, status records it (resourceVersion as precondition), children
//! follow. A scale-down first marks the highest-numbered replicas `Releasing` in status, then
//! deletes their children, and only then gives their capacity back and drops them from status:
//! a crash anywhere re-runs the step, and capacity is never freed while its children exist.

use kube::runtime::events::{Event, EventType};
use kube::{Resource, ResourceExt};
use sovereign_crds::ConditionStatus;
use sovereign_crds::workload::ReplicaState;
use sovereign_placement::{Decision, Placement};

use super::conditions::Desired;
use super::ledger::{LedgerError, Workload};
use super::workloads::{audit, refusal_reason};
use super::{Context, Error};

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
pub(super) enum Grown {
    Placed(Vec<Placement>),
    /// None placed; the Degraded condition says why (the others keep running).
    Refused(Desired),
}

/// Asks the ledger for the missing replicas; audited like a placement.
pub(super) fn grow(
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
pub(super) fn release(ctx: &Context, w: Workload<'_>, keep: usize) -> Result<(), Error> {
    ctx.ledger
        .shrink(ctx, w, keep)
        .map_err(|e| Error::Ledger(e.to_string()))?;
    tracing::info!(target: sovereign_telemetry::audit::AUDIT_TARGET, decision = "released", object = %w.consumer(),
        kept = keep, engine = env!("CARGO_PKG_VERSION"), "replicas released by a scale-down");
    Ok(())
}

/// A Normal Event on the workload (scaling is news to its tenant).
pub(super) async fn announce<K: Resource<DynamicType = ()>>(
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
