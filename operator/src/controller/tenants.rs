//! The Tenant controller's shell: namespaces created or adopted, their quota, network policies
//! and admin binding applied with server-side apply (one field manager), status written, and a
//! finalizer that holds deletion while volumes live and releases namespaces when it goes.

use std::sync::Arc;

use k8s_openapi::api::core::v1::{Namespace, ResourceQuota};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::rbac::v1::RoleBinding;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, DeleteParams, DynamicObject, ListParams, Patch, PatchParams};
use kube::core::GroupVersionKind;
use kube::discovery::ApiResource;
use kube::runtime::controller::Action;
use kube::runtime::finalizer::{Event as FinalizerEvent, finalizer};
use kube::runtime::reflector::ObjectRef;
use kube::{Resource, ResourceExt};
use serde_json::{Value, json};
use sovereign_crds::{ComputeInstance, StorageVolume, Tenant, TenantStatus};

use super::conditions;
use super::tenant::{
    self, ADMIN_BINDING, ALLOW_POLICY, CASCADE_ANNOTATION, DENY_POLICY, FINALIZER, NamespacePlan,
    QUOTA_NAME, TENANT_LABEL,
};
use super::{Context, Error};
use crate::FIELD_MANAGER;

fn apply_params() -> PatchParams {
    PatchParams::apply(FIELD_MANAGER).force()
}

fn api_for(ctx: &Context, obj: &Value) -> Api<DynamicObject> {
    let api_version = obj["apiVersion"].as_str().unwrap_or_default();
    let (group, version) = api_version.split_once('/').unwrap_or(("", api_version));
    let kind = obj["kind"].as_str().unwrap_or_default();
    let gvk = GroupVersionKind::gvk(group, version, kind);
    let plural = match kind {
        "NetworkPolicy" => "networkpolicies".to_owned(),
        other => format!("{}s", other.to_ascii_lowercase()),
    };
    let resource = ApiResource::from_gvk_with_plural(&gvk, &plural);
    match obj["metadata"]["namespace"].as_str() {
        Some(ns) => Api::namespaced_with(ctx.client.clone(), ns, &resource),
        None => Api::all_with(ctx.client.clone(), &resource),
    }
}

/// Server-side applies one object (a manifest as JSON).
async fn apply(ctx: &Context, obj: &Value) -> Result<(), Error> {
    let name = obj["metadata"]["name"].as_str().unwrap_or_default();
    api_for(ctx, obj)
        .patch(name, &apply_params(), &Patch::Apply(obj))
        .await
        .map(|_| ())
        .map_err(|source| Error::Apply {
            what: format!("{} {name}", obj["kind"].as_str().unwrap_or_default()),
            source,
        })
}

/// Deletes an object the operator owns; absent is fine.
async fn delete_owned<K>(ctx: &Context, ns: &str, name: &str) -> Result<(), Error>
where
    K: super::Namespaced,
{
    let api: Api<K> = Api::namespaced(ctx.client.clone(), ns);
    match api.delete(name, &DeleteParams::default()).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
        Err(source) => Err(Error::Delete {
            what: format!("{} {ns}/{name}", K::kind(&())),
            source,
        }),
    }
}

/// Everything one tenant namespace gets.
/// Tenants whose namespaced objects (namespace labels, quota, network policies, admin binding)
/// were applied for their current spec. A reconcile that only refreshes usage (every placement
/// in the tenant's namespaces triggers one) skips re-applying them: six server-side applies per
/// reconcile were most of the API server's writes during a burst of placements. A change to one
/// of those objects, or to a namespace, forgets the tenant so they are applied again; so does
/// a spec change (generation) and, as a backstop, ten minutes.
#[derive(Debug, Default)]
pub struct AppliedTenants(
    std::sync::Mutex<std::collections::HashMap<String, (Option<i64>, std::time::Instant)>>,
);

impl AppliedTenants {
    const BACKSTOP: std::time::Duration = std::time::Duration::from_mins(10);

    fn lock(
        &self,
    ) -> std::sync::MutexGuard<
        '_,
        std::collections::HashMap<String, (Option<i64>, std::time::Instant)>,
    > {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Something the tenant's objects depend on changed: apply them at the next reconcile.
    pub fn forget(&self, tenant: &str) {
        self.lock().remove(tenant);
    }

    fn current(&self, tenant: &str, generation: Option<i64>) -> bool {
        self.lock()
            .get(tenant)
            .is_some_and(|(g, at)| *g == generation && at.elapsed() < Self::BACKSTOP)
    }

    fn record(&self, tenant: &str, generation: Option<i64>) {
        self.lock()
            .insert(tenant.to_owned(), (generation, std::time::Instant::now()));
    }
}

async fn onboard(ctx: &Context, t: &Tenant, ns: &str, created: bool) -> Result<(), Error> {
    apply(ctx, &tenant::namespace(t, ns, created)).await?;
    match tenant::quota(t, ns) {
        Some(q) => apply(ctx, &q).await?,
        None => delete_owned::<ResourceQuota>(ctx, ns, QUOTA_NAME).await?,
    }
    for policy in tenant::network_policies(t, ns) {
        apply(ctx, &policy).await?;
    }
    match tenant::admin_binding(t, ns) {
        Some(b) => apply(ctx, &b).await?,
        None => delete_owned::<RoleBinding>(ctx, ns, ADMIN_BINDING).await?,
    }
    Ok(())
}

/// Gives a namespace back: deleted when the operator created it; otherwise its objects are
/// removed and the labels the operator set are taken away (the namespace stays).
async fn release(ctx: &Context, ns: &Namespace) -> Result<(), Error> {
    let name = ns.name_any();
    let created = tenant::plan_namespace(
        ns.labels().get(TENANT_LABEL).map_or("", String::as_str),
        Some(ns),
    ) == (NamespacePlan::Keep { created: true });
    if created {
        let api: Api<Namespace> = Api::all(ctx.client.clone());
        return match api.delete(&name, &DeleteParams::background()).await {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
            Err(source) => Err(Error::Delete {
                what: format!("Namespace {name}"),
                source,
            }),
        };
    }
    delete_owned::<ResourceQuota>(ctx, &name, QUOTA_NAME).await?;
    delete_owned::<NetworkPolicy>(ctx, &name, DENY_POLICY).await?;
    delete_owned::<NetworkPolicy>(ctx, &name, ALLOW_POLICY).await?;
    delete_owned::<RoleBinding>(ctx, &name, ADMIN_BINDING).await?;
    // Applying nothing under our field manager removes the labels and annotation we set.
    apply(
        ctx,
        &json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}}),
    )
    .await
}

/// Namespaces labelled as this tenant's.
fn labelled(ctx: &Context, tenant: &str) -> Vec<Arc<Namespace>> {
    ctx.namespaces
        .state()
        .into_iter()
        .filter(|n| n.labels().get(TENANT_LABEL).is_some_and(|l| l == tenant))
        .collect()
}

/// Whether every replica of the tenant's workloads sits on a site its policy allows now (a
/// raised classification or a narrowed residency leaves some behind until they move).
fn compliance(ctx: &Context, t: &Tenant) -> conditions::Desired {
    use sovereign_crds::ConditionStatus::{False, True};
    let name = t.name_any();
    let ours: Vec<String> = labelled(ctx, &name).iter().map(|n| n.name_any()).collect();
    let min_tier = t.spec.classification.min_security_tier();
    // The few sites outside the policy, once: a lookup per replica allocated a key each, for
    // every workload in the cluster on every reconcile of every tenant.
    let outside_policy: std::collections::HashSet<String> = ctx
        .sites
        .state()
        .iter()
        .filter(|s| {
            let name = s.metadata.name.as_deref().unwrap_or_default();
            !(s.spec.security_tier >= min_tier
                && t.spec
                    .residency
                    .jurisdictions
                    .contains(&s.spec.jurisdiction)
                && t.spec
                    .residency
                    .sites
                    .as_ref()
                    .is_none_or(|a| a.iter().any(|x| x == name)))
        })
        .filter_map(|s| s.metadata.name.clone())
        .collect();
    let ours = |ns: Option<&str>| ns.is_some_and(|ns| ours.iter().any(|o| o == ns));
    let mut outside = Vec::new();
    let mut check = |kind: &str, id: &str, spots: &[crate::packed::Spot]| {
        if !ours(id.split_once('/').map(|(ns, _)| ns)) {
            return;
        }
        for r in spots.iter().filter(|r| outside_policy.contains(&*r.site)) {
            outside.push(format!("{kind} {id} replica {} at {}", r.index, r.site));
        }
    };
    for v in ctx.volumes.state() {
        check("StorageVolume", v.id(), v.spots());
    }
    for c in ctx.instances.state() {
        check("ComputeInstance", c.id(), c.spots());
    }
    if outside.is_empty() {
        conditions::Desired::new(
            "PlacementsCompliant",
            True,
            "AllReplicasCompliant",
            "every replica is at a site the tenant's policy allows",
        )
    } else {
        let n = outside.len();
        outside.truncate(10);
        conditions::Desired::new(
            "PlacementsCompliant",
            False,
            "ReplicasOutsidePolicy",
            format!(
                "{n} replicas at sites the policy no longer allows (moving, or Degraded where nothing complies): {}",
                outside.join("; ")
            ),
        )
    }
}

/// How often a Tenant's usage alone is rewritten (condition changes are written at once).
const USAGE_EVERY: std::time::Duration = std::time::Duration::from_secs(5);

/// Writes the Tenant's status when it changed; returns its condition transitions and, when a
/// usage-only change was held back, how long until it may be written.
async fn write_status(
    ctx: &Context,
    t: &Tenant,
    namespaces: &[(String, NamespacePlan)],
    blocked: Option<&[String]>,
) -> Result<(Vec<conditions::Transition>, Option<std::time::Duration>), Error> {
    let name = t.name_any();
    let stored = t.status.clone().unwrap_or_default();
    let mut desired = tenant::conditions(namespaces, blocked);
    desired.push(compliance(ctx, t));
    // Usage is what the ledger holds for the tenant (all replicas of placed workloads).
    let used = ctx.ledger.tenant_used(&name);
    if let Some(used) = used {
        desired.push(tenant::quota_condition(t, &used));
    }
    let (merged, transitions) = conditions::merge(
        &stored.conditions,
        &desired,
        t.metadata.generation,
        &Time(Timestamp::now()),
    );
    let status = TenantStatus {
        namespaces: namespaces
            .iter()
            .filter(|(_, p)| !matches!(p, NamespacePlan::Conflict { .. }))
            .map(|(n, _)| n.clone())
            .collect(),
        usage: used.filter(|u| !u.is_zero()).map(|u| u.to_set()),
        conditions: merged,
    };
    if status.namespaces == stored.namespaces && transitions.is_empty() {
        if status.usage == stored.usage {
            return Ok((transitions, None));
        }
        // Usage alone changes with every placement of the tenant's (a burst rewrote the
        // Tenant several times a second): written at most every USAGE_EVERY, the rest later.
        if let Some(left) = ctx.tenant_writes.too_soon(&name, USAGE_EVERY) {
            return Ok((transitions, Some(left)));
        }
    }
    let api: Api<Tenant> = Api::all(ctx.client.clone());
    let body = json!({"apiVersion": "sovereign.io/v1alpha1", "kind": "Tenant", "status": status});
    api.patch_status(&name, &apply_params(), &Patch::Apply(&body))
        .await
        .map_err(|source| Error::StatusWrite {
            kind: "Tenant".into(),
            name: name.clone(),
            source,
        })?;
    ctx.tenant_writes.wrote(&name);
    ctx.metrics.write("Tenant", "changed");
    Ok((transitions, None))
}

async fn apply_tenant(ctx: &Context, t: &Tenant) -> Result<Action, Error> {
    let name = t.name_any();
    let wanted = tenant::namespaces(t);
    let applied = ctx.applied_tenants.current(&name, t.metadata.generation);
    let mut plans = Vec::new();
    for ns in &wanted {
        let existing = ctx.namespaces.get(&ObjectRef::new(ns));
        let plan = tenant::plan_namespace(&name, existing.as_deref());
        match &plan {
            NamespacePlan::Conflict { owner } => {
                tracing::warn!(tenant = %name, namespace = %ns, owner = %owner, "namespace belongs to another tenant; not taken over");
            }
            _ if applied => {}
            NamespacePlan::Create => onboard(ctx, t, ns, true).await?,
            NamespacePlan::Adopt => onboard(ctx, t, ns, false).await?,
            NamespacePlan::Keep { created } => onboard(ctx, t, ns, *created).await?,
        }
        plans.push((ns.clone(), plan));
    }
    if !applied {
        // Namespaces dropped from the spec are given back.
        for ns in labelled(ctx, &name) {
            if !wanted.contains(&ns.name_any()) {
                release(ctx, &ns).await?;
            }
        }
        ctx.applied_tenants.record(&name, t.metadata.generation);
    }
    let (transitions, usage_due) = write_status(ctx, t, &plans, None).await?;
    super::hardware::publish(ctx, &t.object_ref(&()), &transitions).await;
    for tr in &transitions {
        tracing::info!(tenant = %name, condition = tr.type_, to = ?tr.to, reason = %tr.reason, message = %tr.message, "tenant condition changed");
    }
    Ok(Action::requeue(
        usage_due.unwrap_or(std::time::Duration::from_mins(10)),
    ))
}

async fn cleanup_tenant(ctx: &Context, t: &Tenant) -> Result<Action, Error> {
    let name = t.name_any();
    let ours = labelled(ctx, &name);
    let our_names: Vec<String> = ours.iter().map(|n| n.name_any()).collect();
    let live: Vec<String> = ctx
        .volumes
        .state()
        .iter()
        .filter(|v| our_names.iter().any(|ns| ns == v.namespace()))
        .map(|v| v.id().to_owned())
        .collect();
    if !live.is_empty() {
        let cascade = t
            .annotations()
            .get(CASCADE_ANNOTATION)
            .is_some_and(|v| v == "true");
        if !cascade {
            let plans: Vec<(String, NamespacePlan)> = our_names
                .iter()
                .map(|n| (n.clone(), NamespacePlan::Keep { created: true }))
                .collect();
            let (transitions, _) = write_status(ctx, t, &plans, Some(&live)).await?;
            super::hardware::publish(ctx, &t.object_ref(&()), &transitions).await;
            return Err(Error::DeletionBlocked(live));
        }
        tracing::info!(tenant = %name, volumes = ?live, "cascade deletion of the tenant's volumes and instances");
        for ns in &our_names {
            let lp = ListParams::default();
            let dp = DeleteParams::background();
            let volumes: Api<StorageVolume> = Api::namespaced(ctx.client.clone(), ns);
            let instances: Api<ComputeInstance> = Api::namespaced(ctx.client.clone(), ns);
            for r in [
                volumes.delete_collection(&dp, &lp).await.map(|_| ()),
                instances.delete_collection(&dp, &lp).await.map(|_| ()),
            ] {
                r.map_err(|source| Error::Delete {
                    what: format!("workloads in {ns}"),
                    source,
                })?;
            }
        }
        return Err(Error::DeletionBlocked(live));
    }
    for ns in &ours {
        release(ctx, ns).await?;
    }
    tracing::info!(tenant = %name, namespaces = ?our_names, "tenant removed; namespaces released");
    Ok(Action::await_change())
}

/// Tenant: onboarding with a finalizer; only the leader writes.
pub async fn reconcile_tenant(t: Arc<Tenant>, ctx: Arc<Context>) -> Result<Action, Error> {
    let mut guard = ctx.metrics.start("tenant");
    if !ctx.leader.is_leader() {
        guard.result("follower");
        return Ok(Action::await_change());
    }
    let api: Api<Tenant> = Api::all(ctx.client.clone());
    let result = finalizer(&api, FINALIZER, t, |event| async {
        match event {
            FinalizerEvent::Apply(t) => apply_tenant(&ctx, &t).await,
            FinalizerEvent::Cleanup(t) => cleanup_tenant(&ctx, &t).await,
        }
    })
    .await
    .map_err(|e| Error::Finalizer(Box::new(e)));
    guard.result(if result.is_ok() { "applied" } else { "error" });
    result
}
