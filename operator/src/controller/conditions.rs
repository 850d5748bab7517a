//! Conditions in the Kubernetes shape: build them purely, keep `lastTransitionTime` when the
//! status did not change, and tell which ones flipped (for Events and the write budget).

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use sovereign_crds::{Condition, ConditionStatus};

/// A condition as decided, before transition times are merged in.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Desired {
    pub type_: &'static str,
    pub status: ConditionStatus,
    pub reason: String,
    pub message: String,
}

impl Desired {
    pub fn new(
        type_: &'static str,
        status: ConditionStatus,
        reason: impl Into<String>,
        message: impl Into<String>,
    ) -> Self {
        Self {
            type_,
            status,
            reason: reason.into(),
            message: message.into(),
        }
    }

    pub fn is_true(&self) -> bool {
        self.status == ConditionStatus::True
    }

    pub fn is_false(&self) -> bool {
        self.status == ConditionStatus::False
    }
}

/// One condition whose status or reason changed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Transition {
    pub type_: &'static str,
    pub from: Option<ConditionStatus>,
    pub to: ConditionStatus,
    pub reason: String,
    pub message: String,
}

/// Merges desired conditions into the stored ones: stored conditions of other types (other
/// writers') are not returned, since server-side apply keeps them; a condition whose status is
/// unchanged keeps its transition time.
pub fn merge(
    stored: &[Condition],
    desired: &[Desired],
    generation: Option<i64>,
    now: &Time,
) -> (Vec<Condition>, Vec<Transition>) {
    let mut out = Vec::with_capacity(desired.len());
    let mut transitions = Vec::new();
    for d in desired {
        let old = stored.iter().find(|c| c.type_ == d.type_);
        let changed = old.is_none_or(|o| o.status != d.status);
        if old.is_none_or(|o| o.status != d.status || o.reason != d.reason) {
            transitions.push(Transition {
                type_: d.type_,
                from: old.map(|o| o.status),
                to: d.status,
                reason: d.reason.clone(),
                message: d.message.clone(),
            });
        }
        out.push(Condition {
            type_: d.type_.to_owned(),
            status: d.status,
            observed_generation: generation,
            last_transition_time: match old {
                Some(o) if !changed => o.last_transition_time.clone(),
                _ => now.clone(),
            },
            reason: d.reason.clone(),
            message: d.message.clone(),
        });
    }
    (out, transitions)
}

/// The stored condition of `type_`.
pub fn find<'a>(conditions: &'a [Condition], type_: &str) -> Option<&'a Condition> {
    conditions.iter().find(|c| c.type_ == type_)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn time(s: i64) -> Time {
        Time(k8s_openapi::jiff::Timestamp::from_second(s).unwrap())
    }

    #[test]
    fn unchanged_status_keeps_its_transition_time_and_is_no_transition() {
        let stored = vec![Condition {
            type_: "Ready".into(),
            status: ConditionStatus::True,
            observed_generation: Some(1),
            last_transition_time: time(100),
            reason: "Ready".into(),
            message: "old words".into(),
        }];
        let desired = [Desired::new(
            "Ready",
            ConditionStatus::True,
            "Ready",
            "new words",
        )];
        let (merged, transitions) = merge(&stored, &desired, Some(2), &time(200));
        assert_eq!(merged[0].last_transition_time, time(100));
        assert_eq!(merged[0].message, "new words");
        assert!(transitions.is_empty());

        let flipped = [Desired::new("Ready", ConditionStatus::False, "Down", "")];
        let (merged, transitions) = merge(&stored, &flipped, Some(2), &time(200));
        assert_eq!(merged[0].last_transition_time, time(200));
        assert_eq!(transitions.len(), 1);
        assert_eq!(transitions[0].from, Some(ConditionStatus::True));
    }
}
