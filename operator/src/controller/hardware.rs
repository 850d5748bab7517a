//! The shells of the Server, Rack and Site controllers: read from stores and the hub, decide
//! with the pure cores, then (leader only) taint the Node, patch status, publish Events.

use std::sync::Arc;

use k8s_openapi::api::core::v1::{Node, Taint as NodeTaint};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType};

use kube::Resource;
use serde::Serialize;
use sovereign_crds::{ConditionStatus, Rack, Server, Site};
use sovereign_telemetry::proto::Source;

use super::conditions::Transition;
use super::server_status::{self, Observed, TAINT_KEY, Taint};
use super::{Context, Error, WrittenStatus, rollup};
use crate::FIELD_MANAGER;
use crate::packed::PackedServer;
use sovereign_placement::from_crds::ServerFacts;

/// Server-side applies `status` to the status subresource of a cluster-scoped object.
async fn patch_status<K, S>(ctx: &Context, kind: &str, name: &str, status: &S) -> Result<(), Error>
where
    K: Resource<DynamicType = (), Scope = kube::core::ClusterResourceScope>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug,
    S: Serialize,
{
    let api: Api<K> = Api::all(ctx.client.clone());
    let body = serde_json::json!({
        "apiVersion": K::api_version(&()),
        "kind": K::kind(&()),
        "status": status,
    });
    api.patch_status(
        name,
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(&body),
    )
    .await
    .map(|_| ())
    .map_err(|source| Error::StatusWrite {
        kind: kind.to_owned(),
        name: name.to_owned(),
        source,
    })
}

/// Conditions whose True is good news: a flip to False is a Warning Event.
fn event_type(t: &Transition) -> EventType {
    if t.to == ConditionStatus::False {
        EventType::Warning
    } else {
        EventType::Normal
    }
}

pub(crate) async fn publish(
    ctx: &Context,
    reference: &k8s_openapi::api::core::v1::ObjectReference,
    transitions: &[Transition],
) {
    for t in transitions {
        // The first status of an object is not news.
        if t.from.is_none() {
            continue;
        }
        let event = Event {
            type_: event_type(t),
            reason: t.reason.clone(),
            note: Some(
                format!("{} {:?}: {}", t.type_, t.to, t.message)
                    .chars()
                    .take(1000)
                    .collect(),
            ),
            action: format!("Observe{}", t.type_),
            secondary: None,
        };
        if let Err(e) = ctx.recorder.publish(&event, reference).await {
            tracing::warn!(error = %e, "publishing Event failed");
        }
    }
}

/// Puts or removes the Sovereign taint on a Node; other taints are kept. Uses the Node's
/// resourceVersion as a precondition so a concurrent change (kubelet, another controller) is a
/// conflict to retry, never a lost taint.
async fn ensure_taint(
    ctx: &Context,
    node_name: &str,
    desired: Option<&Taint>,
) -> Result<bool, Error> {
    let Some(node) = ctx.nodes.get(node_name) else {
        return Ok(false);
    };
    let current: Vec<NodeTaint> = node.taints.to_vec();
    let mut wanted: Vec<NodeTaint> = current
        .iter()
        .filter(|t| t.key != TAINT_KEY)
        .cloned()
        .collect();
    if let Some(d) = desired {
        let existing = current.iter().find(|t| {
            t.key == TAINT_KEY && t.value.as_deref() == Some(&d.reason) && t.effect == d.effect
        });
        wanted.push(existing.cloned().unwrap_or_else(|| NodeTaint {
            key: TAINT_KEY.to_owned(),
            value: Some(d.reason.clone()),
            effect: d.effect.to_owned(),
            time_added: Some(Time(Timestamp::now())),
        }));
    }
    let same = |a: &[NodeTaint], b: &[NodeTaint]| {
        a.len() == b.len()
            && a.iter().all(|x| {
                b.iter()
                    .any(|y| x.key == y.key && x.value == y.value && x.effect == y.effect)
            })
    };
    if same(&current, &wanted) {
        return Ok(false);
    }
    let api: Api<Node> = Api::all(ctx.client.clone());
    let patch = serde_json::json!({
        "metadata": {"resourceVersion": node.resource_version},
        "spec": {"taints": wanted},
    });
    api.patch(node_name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .map_err(|source| Error::Taint {
            node: node_name.to_owned(),
            source,
        })?;
    Ok(true)
}

/// Server: status from the hub's newest samples, Node taint, Events.
pub async fn reconcile_server(
    packed: Arc<PackedServer>,
    ctx: Arc<Context>,
) -> Result<Action, Error> {
    let mut guard = ctx.metrics.start("server");
    let server = Arc::new(packed.unpack()?);
    let name = server.metadata.name.clone().ok_or(Error::NoName)?;
    let bmc = ctx
        .hub
        .latest(&name)
        .into_iter()
        .find(|s| s.source == Source::Redfish as i32);
    let os = server.spec.node_name.as_deref().and_then(|node| {
        ctx.hub
            .latest(node)
            .into_iter()
            .find(|s| s.source == Source::Os as i32)
    });
    // The store may not show our last write yet: decide against what was written.
    let version = server.metadata.resource_version.clone();
    let effective = with_written(server.clone(), &ctx.written, |s| &mut s.status);
    let decision = server_status::decide(
        &effective,
        Observed {
            bmc: bmc.as_ref(),
            os: os.as_ref(),
            allocated: ctx
                .ledger
                .server_used(&name)
                .map(|r| (!r.is_zero()).then(|| r.to_set())),
        },
        Timestamp::now(),
        &ctx.policy,
    );
    if !ctx.leader.is_leader() {
        guard.result("follower");
        return Ok(Action::requeue(decision.requeue_after));
    }
    if let Some(node) = &server.spec.node_name
        && ensure_taint(&ctx, node, decision.taint.as_ref()).await?
    {
        tracing::info!(server = %name, node = %node, taint = ?decision.taint, "node taint updated");
    }
    if let Some(why) = decision.write {
        let status = decision.status;
        patch_status::<Server, _>(&ctx, "Server", &name, &status).await?;
        ctx.written.record(&name, version.as_deref(), &status);
        ctx.metrics.write("Server", why);
        guard.result("written");
        for t in &decision.transitions {
            tracing::info!(
                server = %name, condition = t.type_, from = ?t.from, to = ?t.to,
                reason = %t.reason, message = %t.message, "server condition changed"
            );
        }
        publish(&ctx, &server.object_ref(&()), &decision.transitions).await;
    } else {
        guard.result("unchanged");
    }
    Ok(Action::requeue(decision.requeue_after))
}

/// Rack: roll-up of its servers.
pub async fn reconcile_rack(rack: Arc<Rack>, ctx: Arc<Context>) -> Result<Action, Error> {
    let mut guard = ctx.metrics.start("rack");
    let name = rack.metadata.name.clone().ok_or(Error::NoName)?;
    let servers = ctx.servers.state();
    let members: Vec<&ServerFacts> = servers
        .iter()
        .map(|s| s.brief())
        .filter(|s| *s.rack == *name)
        .collect();
    let version = rack.metadata.resource_version.clone();
    let rack = with_written(rack, &ctx.written_racks, |r| &mut r.status);
    let mut decided = rollup::rack(&rack, &members, &ctx.policy, &Time(Timestamp::now()));
    // In a burst of placements the servers' allocations change one after another: the rack's
    // sum is written at most once per `allocation_every` (it was ~17 writes a second).
    let mut wait = None;
    if decided.write == Some(rollup::ALLOCATION_CHANGED)
        && let Some(left) = ctx.rack_writes.too_soon(&name, ctx.policy.allocation_every)
    {
        decided.write = None;
        wait = Some(left);
    }
    let status = decided.status.clone();
    ctx.metrics.rack(
        &name,
        &rack.spec.site,
        status.power_watts.map(f64::from),
        f64::from(rack.spec.power_budget_watts),
        status.inlet_celsius,
    );
    let action = write_rollup::<Rack, _>(
        &ctx,
        &mut guard,
        &rack.object_ref(&()),
        &name,
        decided.write,
        &status,
        &decided.transitions,
    )
    .await?;
    if decided.write.is_some() && ctx.leader.is_leader() {
        ctx.written_racks.record(&name, version.as_deref(), &status);
        ctx.rack_writes.wrote(&name);
    }
    Ok(wait.map_or(action, Action::requeue))
}

/// `obj` with the status this process last wrote when its store has not shown that write yet.
fn with_written<K: Clone + Resource, S: Clone>(
    obj: Arc<K>,
    written: &WrittenStatus<S>,
    status: impl Fn(&mut K) -> &mut Option<S>,
) -> Arc<K> {
    let name = obj.meta().name.clone().unwrap_or_default();
    match written.pending(&name, obj.meta().resource_version.as_deref()) {
        Some(w) => {
            let mut o = (*obj).clone();
            *status(&mut o) = Some(w);
            Arc::new(o)
        }
        None => obj,
    }
}

/// Site: roll-up of its racks and their servers.
pub async fn reconcile_site(site: Arc<Site>, ctx: Arc<Context>) -> Result<Action, Error> {
    let mut guard = ctx.metrics.start("site");
    let name = site.metadata.name.clone().ok_or(Error::NoName)?;
    let racks = ctx.racks.state();
    let racks: Vec<&Rack> = racks
        .iter()
        .filter(|r| r.spec.site == name)
        .map(AsRef::as_ref)
        .collect();
    let servers = ctx.servers.state();
    let members: Vec<&ServerFacts> = servers
        .iter()
        .map(|s| s.brief())
        .filter(|s| {
            racks
                .iter()
                .any(|r| r.metadata.name.as_deref() == Some(&*s.rack))
        })
        .collect();
    let version = site.metadata.resource_version.clone();
    let site = with_written(site, &ctx.written_sites, |s| &mut s.status);
    let decided = rollup::site(&site, &racks, &members, &Time(Timestamp::now()));
    // Allocation is the sum of what the ledger wrote on the site's servers.
    let status = decided.status.clone();
    ctx.metrics
        .site(&name, status.capacity.as_ref(), status.allocated.as_ref());
    let action = write_rollup::<Site, _>(
        &ctx,
        &mut guard,
        &site.object_ref(&()),
        &name,
        decided.write,
        &status,
        &decided.transitions,
    )
    .await?;
    if decided.write.is_some() && ctx.leader.is_leader() {
        ctx.written_sites.record(&name, version.as_deref(), &status);
    }
    Ok(action)
}

/// The shared tail of the roll-up controllers: only the leader writes, and only when the
/// decision says the status is worth it; then the Events of what changed.
async fn write_rollup<K, S>(
    ctx: &Context,
    guard: &mut super::metrics::ReconcileGuard<'_>,
    reference: &k8s_openapi::api::core::v1::ObjectReference,
    name: &str,
    write: Option<&'static str>,
    status: &S,
    transitions: &[Transition],
) -> Result<Action, Error>
where
    K: Resource<DynamicType = (), Scope = kube::core::ClusterResourceScope>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug,
    S: Serialize,
{
    if !ctx.leader.is_leader() {
        guard.result("follower");
        return Ok(Action::await_change());
    }
    let Some(why) = write else {
        guard.result("unchanged");
        return Ok(Action::await_change());
    };
    let kind = K::kind(&()).into_owned();
    patch_status::<K, _>(ctx, &kind, name, status).await?;
    ctx.metrics.write(&kind, why);
    guard.result("written");
    publish(ctx, reference, transitions).await;
    Ok(Action::await_change())
}

/// Error policy shared by the three controllers: count, log once, back off with jitter.
#[allow(clippy::needless_pass_by_value)] // the signature kube-runtime calls
pub fn error_policy<K>(_obj: Arc<K>, error: &Error, ctx: Arc<Context>) -> Action
where
    K: kube::Resource<DynamicType = ()>,
{
    ctx.metrics.error(&K::kind(&()), error.metric_label());
    if error.is_wait() {
        tracing::info!(reason = error.reason(), "{error}");
    } else {
        tracing::warn!(error = %error, reason = error.reason(), "reconcile failed");
    }
    super::backoff(error)
}
