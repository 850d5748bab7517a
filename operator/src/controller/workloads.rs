//! What the StorageVolume and ComputeInstance controllers share. Order is what makes a crash safe:
//! place in the ledger → write the placement to status (resourceVersion as precondition) →
//! materialise (PV + PVC, or Pod) → status. A restart rebuilds the ledger from status and
//! resumes at materialisation; nothing is placed twice.

use std::time::Duration;

use k8s_openapi::api::core::v1::{PersistentVolume, PersistentVolumeClaim};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, DeleteParams, Patch, PatchParams};
use kube::runtime::reflector::ObjectRef;
use kube::{Resource, ResourceExt};
use serde_json::{Value, json};
use sovereign_crds::{Classification, ConditionStatus};
use sovereign_placement::{Decision, Refusal};

use super::conditions::{self, Desired, Transition};
use super::ledger::{LedgerError, Workload};
use super::tenant::TENANT_LABEL;
use super::{Context, Error};
use crate::FIELD_MANAGER;

/// Finalizer that releases a workload's capacity and children.
pub const FINALIZER: &str = sovereign_crds::admission::RELEASE_FINALIZER;

/// How soon a refused workload is tried again (inventory changes also wake it).
pub(super) const RETRY_REFUSED: Duration = Duration::from_secs(15);

pub(super) fn params() -> PatchParams {
    PatchParams::apply(FIELD_MANAGER).force()
}

/// The tenant of a namespace (its label) and that tenant's classification.
pub(super) fn tenant_of(ctx: &Context, ns: &str) -> Option<(String, Classification)> {
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
/// False: this exact status was already written over this version (nothing sent).
pub(super) async fn write_status<K>(
    ctx: &Context,
    obj: &K,
    status: &Value,
    resource_version: Option<&str>,
) -> Result<bool, Error>
where
    K: super::Namespaced,
{
    let ns = obj.namespace().unwrap_or_default();
    let name = obj.name_any();
    let stored = obj_status(obj);
    let status = &with_kstatus(status, &stored, obj.meta().generation);
    if status_digest(status) == status_digest(&stored) {
        // Nothing the callers decided changes what is stored (kstatus included).
        return Ok(false);
    }
    // The store may not show our last write yet (a Pod event reconciles the object again at
    // once): the same status written over the same version again is skipped.
    let key = format!("{}/{ns}/{name}", K::kind(&()));
    let digest = status_digest(status);
    let before = obj.meta().resource_version.as_deref();
    if ctx.written_workloads.pending(&key, before) == Some(digest) {
        ctx.metrics.write(&K::kind(&()), "already written");
        return Ok(false);
    }
    let api: Api<K> = Api::namespaced(ctx.client.clone(), &ns);
    let mut body = json!({
        "apiVersion": K::api_version(&()),
        "kind": K::kind(&()),
        "status": status,
    });
    if let Some(rv) = resource_version {
        body["metadata"] = json!({"resourceVersion": rv});
    }
    if let Err(source) = api
        .patch_status(&name, &params(), &Patch::Apply(&body))
        .await
    {
        // Deleted meanwhile (instances carry no finalizer): a placement this pass made must
        // not outlive it; the watch's deletion may have been seen before it was made.
        if matches!(&source, kube::Error::Api(s) if s.code == 404) {
            ctx.ledger
                .release(&sovereign_placement::from_crds::consumer(
                    &K::kind(&()),
                    obj.meta(),
                ));
        }
        return Err(Error::StatusWrite {
            kind: K::kind(&()).into_owned(),
            name: format!("{ns}/{name}"),
            source,
        });
    }
    ctx.written_workloads.record(&key, before, &digest);
    ctx.metrics.write(&K::kind(&()), "changed");
    Ok(true)
}

/// The status stored on `obj` (Null when it has none).
fn obj_status<K: serde::Serialize>(obj: &K) -> Value {
    serde_json::to_value(obj)
        .ok()
        .and_then(|mut v| v.get_mut("status").map(Value::take))
        .unwrap_or(Value::Null)
}

/// What GitOps tools (kstatus: Flux, Argo CD) read to wait on a workload, derived from the
/// conditions the controllers decided: `Stalled` (Failed) while placement is refused,
/// `Reconciling` (InProgress) until Ready, neither once Ready; and the generation they were
/// decided from.
pub fn kstatus(conditions: &[sovereign_crds::Condition]) -> [Desired; 2] {
    use ConditionStatus::{False, True};
    let placed = conditions::find(conditions, "Placed");
    let ready = conditions::find(conditions, "Ready");
    if let Some(p) = placed.filter(|p| p.status == False) {
        return [
            Desired::new(
                "Reconciling",
                False,
                "Refused",
                "placement refused; see Stalled",
            ),
            Desired::new("Stalled", True, p.reason.clone(), p.message.clone()),
        ];
    }
    match ready {
        Some(r) if r.status == True => [
            Desired::new("Reconciling", False, "Ready", "every replica is ready"),
            Desired::new("Stalled", False, "Ready", "every replica is ready"),
        ],
        _ => {
            let (reason, message) = ready.map_or_else(
                || ("Placing".to_owned(), "being placed".to_owned()),
                |r| (r.reason.clone(), r.message.clone()),
            );
            [
                Desired::new("Reconciling", True, reason, message),
                Desired::new("Stalled", False, "InProgress", "placement is going on"),
            ]
        }
    }
}

/// `status` with top-level `observedGeneration` and the [`kstatus`] conditions (transition
/// times kept from `stored` when unchanged).
fn with_kstatus(status: &Value, stored: &Value, generation: Option<i64>) -> Value {
    let mut out = status.clone();
    let parse = |v: &Value| -> Vec<sovereign_crds::Condition> {
        serde_json::from_value(v["conditions"].clone()).unwrap_or_default()
    };
    let decided = parse(status);
    let (derived, _) = merge(&parse(stored), &kstatus(&decided), generation);
    let mut all: Vec<sovereign_crds::Condition> = decided
        .into_iter()
        .filter(|c| c.type_ != "Reconciling" && c.type_ != "Stalled")
        .collect();
    all.extend(derived);
    if let Some(obj) = out.as_object_mut() {
        obj.insert(
            "conditions".into(),
            serde_json::to_value(all).unwrap_or(Value::Null),
        );
        if let Some(g) = generation {
            obj.insert("observedGeneration".into(), g.into());
        }
    }
    out
}

/// A status' content without its conditions' transition times (a second pass over a stale copy
/// stamps the same transition a moment later).
fn status_digest(status: &Value) -> u64 {
    let mut v = status.clone();
    if let Some(conds) = v.get_mut("conditions").and_then(Value::as_array_mut) {
        for c in conds.iter_mut().filter_map(Value::as_object_mut) {
            c.remove("lastTransitionTime");
        }
    }
    super::stable_hash(v.to_string().as_bytes())
}

pub(super) async fn apply_child(ctx: &Context, obj: &Value) -> Result<(), Error> {
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
        _ => Ok(()),
    };
    result.map_err(|source| Error::Apply {
        what: format!("{kind} {name}"),
        source,
    })
}

pub(super) async fn delete_ignoring_absent<K>(api: Api<K>, name: &str) -> Result<(), Error>
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
pub(super) fn audit(
    kind: &str,
    obj: &impl ResourceExt,
    tenant: &str,
    outcome: &Result<Decision, Refusal>,
) {
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
            tracing::info!(target: sovereign_telemetry::audit::AUDIT_TARGET, decision = "placed", tenant, object, generation,
                servers = %servers.join(", "), engine = env!("CARGO_PKG_VERSION"), "placement decided");
        }
        Err(r) => {
            tracing::info!(target: sovereign_telemetry::audit::AUDIT_TARGET, decision = "refused", tenant, object, generation,
                refusal = %r, engine = env!("CARGO_PKG_VERSION"), "placement refused");
        }
    }
}

pub(super) fn placed_message(servers: &[(String, String, String)]) -> String {
    let parts: Vec<String> = servers
        .iter()
        .map(|(s, r, site)| format!("{s} (rack {r}, site {site})"))
        .collect();
    format!("replicas on {}", parts.join("; "))
}

/// The stored conditions with Placed naming where the replicas now are (server, rack, site).
pub(super) fn placed_conditions(
    stored: &[sovereign_crds::Condition],
    where_: &[(String, String, String)],
    generation: Option<i64>,
) -> Vec<sovereign_crds::Condition> {
    let placed = Desired::new(
        "Placed",
        ConditionStatus::True,
        "Placed",
        placed_message(where_),
    );
    let desired: Vec<Desired> = ["Ready", "Degraded"]
        .iter()
        .filter_map(|t| carried(stored, t))
        .chain([placed])
        .collect();
    merge(stored, &desired, generation).0
}

pub(super) fn refusal_reason(r: &Refusal) -> &'static str {
    match r {
        Refusal::Quota { .. } => "QuotaExceeded",
        Refusal::NoFit { .. } => "Unschedulable",
        Refusal::Ledger { .. } => "LedgerConflict",
    }
}

/// Outcome of asking the ledger, in the shape both controllers write.
pub(super) enum Asked {
    Placed(Decision),
    Refused { reason: String, message: String },
}

pub(super) fn ask(
    ctx: &Context,
    w: Workload<'_>,
    tenant: &str,
    kind: &str,
    obj: &impl ResourceExt,
) -> Result<Asked, Error> {
    match ctx.ledger.place(ctx, w) {
        Ok(outcome) => {
            audit(kind, obj, tenant, &outcome);
            ctx.metrics.decision(
                kind,
                outcome.as_ref().map_or_else(refusal_reason, |_| "Placed"),
            );
            Ok(match outcome {
                Ok(d) => Asked::Placed(d),
                Err(r) => Asked::Refused {
                    reason: refusal_reason(&r).to_owned(),
                    message: r.to_string(),
                },
            })
        }
        Err(LedgerError::Request(message)) => {
            ctx.metrics.decision(kind, "InvalidRequest");
            Ok(Asked::Refused {
                reason: "InvalidRequest".into(),
                message,
            })
        }
        Err(e @ LedgerError::Inventory(_)) => Err(Error::Ledger(e.to_string())),
    }
}

/// A stored condition kept as it is (server-side apply drops our conditions we leave out).
pub(super) fn carried(
    stored: &[sovereign_crds::Condition],
    type_: &'static str,
) -> Option<Desired> {
    conditions::find(stored, type_)
        .map(|c| Desired::new(type_, c.status, c.reason.clone(), c.message.clone()))
}

pub(super) fn merge(
    stored: &[sovereign_crds::Condition],
    desired: &[Desired],
    generation: Option<i64>,
) -> (Vec<sovereign_crds::Condition>, Vec<Transition>) {
    conditions::merge(stored, desired, generation, &Time(Timestamp::now()))
}

/// Why a replica must leave its server, or None: the server is unschedulable (its Schedulable
/// reason), or its site no longer satisfies the tenant's policy (classification raised,
/// residency narrowed).
pub(super) fn move_reason(ctx: &Context, server: &str, site: &str, tenant: &str) -> Option<String> {
    if let (Some(t), Some(s)) = (
        ctx.tenants.get(&ObjectRef::new(tenant)),
        ctx.sites.get(&ObjectRef::new(site)),
    ) {
        if s.spec.security_tier < t.spec.classification.min_security_tier() {
            return Some("SecurityTierBelowClassification".into());
        }
        if !t
            .spec
            .residency
            .jurisdictions
            .contains(&s.spec.jurisdiction)
        {
            return Some("OutsideResidency".into());
        }
        if t.spec
            .residency
            .sites
            .as_ref()
            .is_some_and(|allowed| !allowed.iter().any(|a| a == site))
        {
            return Some("SiteNotAllowed".into());
        }
    }
    let Some(s) = ctx.servers.get(&ObjectRef::new(server)) else {
        return Some("ServerRemoved".into());
    };
    s.brief()
        .status
        .as_ref()?
        .unschedulable
        .as_deref()
        .map(str::to_owned)
}

/// What trying to move one replica decided.
pub(super) enum Move {
    /// Moved in the ledger: the new placement, the server it leaves, and why.
    To(sovereign_placement::Placement, String, String),
    /// Must move but may not now (rate) or nowhere compliant (policy); the condition says why.
    Held(Desired),
}

/// Finds the first replica on an unschedulable server and asks the ledger for a compliant
/// new home, within the site's move budget (never held for a breach of sensitive data).
pub(super) fn plan_move(
    ctx: &Context,
    w: Workload<'_>,
    tenant: &str,
    classification: Classification,
    replicas: &[(u8, String, String)],
) -> Result<Option<Move>, Error> {
    for (index, server, site) in replicas {
        let Some(reason) = move_reason(ctx, server, site, tenant) else {
            continue;
        };
        let urgent = reason == "ChassisIntrusion" && classification >= Classification::Confidential;
        if !ctx.moves.try_take(site, urgent) {
            return Ok(Some(Move::Held(Desired::new(
                "Degraded",
                ConditionStatus::True,
                "MoveRateLimited",
                format!(
                    "replica {index} waits to leave {server} ({reason}): the site's move budget is spent"
                ),
            ))));
        }
        return match ctx.ledger.replace(ctx, w, *index) {
            Ok(Ok(p)) => Ok(Some(Move::To(p, server.clone(), reason))),
            Ok(Err(refusal)) => Ok(Some(Move::Held(Desired::new(
                "Degraded",
                ConditionStatus::True,
                "NoCompliantServer",
                format!("replica {index} stays on {server} ({reason}): {refusal}"),
            )))),
            Err(e) => Err(Error::Ledger(e.to_string())),
        };
    }
    Ok(None)
}

/// An Event and an audit record naming from, to and why.
pub(super) async fn announce_move<K: Resource<DynamicType = ()>>(
    ctx: &Context,
    obj: &K,
    p: &sovereign_placement::Placement,
    from: &str,
    reason: &str,
) {
    let note = format!(
        "replica {} moves from {from} to {} (rack {}, site {}): {reason}",
        p.replica, p.server, p.rack, p.site
    );
    tracing::info!(target: sovereign_telemetry::audit::AUDIT_TARGET, decision = "moved",
        object = %obj.meta().name.clone().unwrap_or_default(), from, to = %p.server, reason,
        engine = env!("CARGO_PKG_VERSION"), "{note}");
    let event = kube::runtime::events::Event {
        type_: kube::runtime::events::EventType::Normal,
        reason: "ReplicaMoving".into(),
        note: Some(note),
        action: "Move".into(),
        secondary: None,
    };
    if let Err(e) = ctx.recorder.publish(&event, &obj.object_ref(&())).await {
        tracing::warn!(error = %e, "publishing Event failed");
    }
}

pub(super) fn all_placed() -> Desired {
    Desired::new(
        "Degraded",
        ConditionStatus::False,
        "AllReplicasPlaced",
        "every replica is on a schedulable server",
    )
}

/// Conditions while a replica moves: Degraded says from, to and why; the others are kept.
pub(super) fn moving_conditions(
    stored: &[sovereign_crds::Condition],
    p: &sovereign_placement::Placement,
    from: &str,
    reason: &str,
    generation: Option<i64>,
) -> Vec<sovereign_crds::Condition> {
    let moving = Desired::new(
        "Degraded",
        ConditionStatus::True,
        "Moving",
        format!(
            "replica {} moves from {from} ({reason}) to {}",
            p.replica, p.server
        ),
    );
    let desired: Vec<Desired> = ["Placed", "Ready"]
        .iter()
        .filter_map(|t| carried(stored, t))
        .chain([moving])
        .collect();
    merge(stored, &desired, generation).0
}

#[cfg(test)]
mod tests {
    use super::{kstatus, status_digest, with_kstatus};
    use serde_json::json;

    fn conds(list: &[(&str, &str, &str)]) -> Vec<sovereign_crds::Condition> {
        serde_json::from_value(json!(
            list.iter()
                .map(
                    |(t, s, r)| json!({"type": t, "status": s, "reason": r, "message": "m",
                "lastTransitionTime": "2026-12-07T10:00:00Z"})
                )
                .collect::<Vec<_>>()
        ))
        .unwrap()
    }

    /// kstatus reads Stalled=True as Failed, Reconciling=True as InProgress, neither as Current.
    #[test]
    fn kstatus_says_failed_when_refused_in_progress_until_ready_and_current_once_ready() {
        let verdict = |list: &[(&str, &str, &str)]| {
            let [r, s] = kstatus(&conds(list));
            (
                format!("{:?}", r.status),
                format!("{:?}", s.status),
                s.reason.clone(),
            )
        };
        let refused = verdict(&[("Placed", "False", "Unschedulable")]);
        assert_eq!(
            refused,
            ("False".into(), "True".into(), "Unschedulable".into())
        );
        let pending = verdict(&[
            ("Placed", "True", "Placed"),
            ("Ready", "False", "PodsBound"),
        ]);
        assert_eq!((pending.0.as_str(), pending.1.as_str()), ("True", "False"));
        let new = verdict(&[]);
        assert_eq!((new.0.as_str(), new.1.as_str()), ("True", "False"));
        let ready = verdict(&[("Placed", "True", "Placed"), ("Ready", "True", "Running")]);
        assert_eq!((ready.0.as_str(), ready.1.as_str()), ("False", "False"));
    }

    #[test]
    fn the_written_status_carries_its_generation_and_an_unchanged_one_is_the_same() {
        let decided = json!({"phase": "Pending", "conditions": [
            {"type": "Placed", "status": "False", "reason": "Unschedulable", "message": "0/3 servers fit",
             "lastTransitionTime": "2026-12-07T10:00:00Z"}]});
        let first = with_kstatus(&decided, &serde_json::Value::Null, Some(3));
        assert_eq!(first["observedGeneration"], 3);
        let stalled = first["conditions"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["type"] == "Stalled")
            .unwrap();
        assert_eq!(stalled["status"], "True");
        assert_eq!(stalled["message"], "0/3 servers fit");
        // Decided again over what was written: nothing to write.
        let again = with_kstatus(&decided, &first, Some(3));
        assert_eq!(status_digest(&again), status_digest(&first));
        // A new generation is a change.
        assert_ne!(
            status_digest(&with_kstatus(&decided, &first, Some(4))),
            status_digest(&first)
        );
    }

    #[test]
    fn a_status_rewritten_a_moment_later_has_the_same_digest_and_a_changed_one_does_not() {
        let at = |t: &str, reason: &str| {
            json!({"phase": "Bound", "replicas": [{"index": 0, "server": "s1"}],
                "conditions": [{"type": "Ready", "status": "False", "reason": reason,
                    "message": "1 pods bound to their nodes, 0 running", "lastTransitionTime": t}]})
        };
        let first = at("2026-11-29T16:00:00Z", "PodsBound");
        assert_eq!(
            status_digest(&first),
            status_digest(&at("2026-11-29T16:00:01Z", "PodsBound"))
        );
        assert_ne!(
            status_digest(&first),
            status_digest(&at("2026-11-29T16:00:00Z", "Running"))
        );
        let mut moved = first.clone();
        moved["replicas"][0]["server"] = "s2".into();
        assert_ne!(status_digest(&first), status_digest(&moved));
    }
}
