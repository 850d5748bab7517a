//! How the controllers are wired to the shared watches: what wakes which object (a server
//! replicas must leave, a tenant whose policy changed, telemetry, leadership), the tenant
//! controller's inputs, and the ledger's view of workload deletions.

use std::sync::Arc;

use std::future::Future;

use futures::stream::BoxStream;
use futures::{Stream, StreamExt as _};
use k8s_openapi::api::core::v1::{Namespace, ResourceQuota};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::rbac::v1::RoleBinding;
use kube::Resource as _;
use kube::api::Api;
use kube::runtime::controller::{Action, Controller, ReconcileRequest};
use kube::runtime::reflector::ReflectHandle;
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::{WatchStreamExt as _, watcher};
use sovereign_crds::{ComputeInstance, StorageVolume, Tenant};
use sovereign_telemetry::cluster::Watched;
use sovereign_telemetry::hub::Hub;
use tokio::sync::watch;

use crate::controller::ledger::{Followed, Ledger};
use crate::controller::{self, Context, tenant};
use crate::packed::{Packed, PackedServer, PackedWorkload};
use crate::workload_store::{Observed, Subscription, WorkloadStore};

/// The ledger's view of a workload watch: deletions give capacity back, re-lists rebuild. A
/// deleted workload's namespace goes to `gone`: its tenant's usage changed, and the watch's
/// subscriptions carry no deletions.
pub(super) fn ledger_follows<K: PackedWorkload>(
    ledger: &Arc<Ledger>,
    gone: &tokio::sync::mpsc::UnboundedSender<String>,
) -> impl FnMut(Observed<'_, K>) + Send + 'static {
    let (ledger, gone) = (ledger.clone(), gone.clone());
    move |seen| match seen {
        Observed::Deleted(k) => {
            ledger.follow(Followed::Deleted(&k.consumer()));
            let _ = gone.send(k.namespace().to_owned());
        }
        Observed::Relisted => ledger.follow(Followed::Relisted),
    }
}

/// Tenants of the namespaces a workload left (see [`ledger_follows`]).
pub(super) fn tenants_of_gone(
    gone: tokio::sync::mpsc::UnboundedReceiver<String>,
    namespaces: Store<Namespace>,
) -> impl Stream<Item = ObjectRef<Tenant>> + Send + 'static {
    futures::stream::unfold((gone, namespaces), |(mut gone, namespaces)| async move {
        loop {
            let ns = gone.recv().await?;
            if let Some(t) = namespaces
                .get(&ObjectRef::new(&ns))
                .and_then(|n| by_tenant_label(n.as_ref()))
            {
                return Some((t, (gone, namespaces)));
            }
        }
    })
}

/// The shared watches' subscriptions the tenant controller reads.
pub(super) struct TenantInputs {
    pub(super) applied: Arc<controller::tenants::AppliedTenants>,
    pub(super) tenants: (Store<Tenant>, ReflectHandle<Tenant>),
    pub(super) namespaces: (Store<Namespace>, ReflectHandle<Namespace>),
    pub(super) volumes: Subscription<StorageVolume>,
    pub(super) instances: Subscription<ComputeInstance>,
    /// Namespaces a workload was deleted from.
    pub(super) gone: tokio::sync::mpsc::UnboundedReceiver<String>,
}

/// Server names the hub reports changed, as Server references (node agents publish under their
/// node's name).
pub(super) fn hub_triggers(
    hub: &Hub,
    servers: Store<PackedServer>,
) -> impl Stream<Item = ObjectRef<PackedServer>> + Send + 'static {
    let rx = hub.subscribe();
    futures::stream::unfold((rx, servers), |(mut rx, servers)| async move {
        loop {
            match rx.recv().await {
                Ok(name) => {
                    let direct = ObjectRef::<PackedServer>::new(&name);
                    let target = if servers.get(&direct).is_some() {
                        Some(direct)
                    } else {
                        servers
                            .find(|s| s.brief().node.as_deref() == Some(name.as_str()))
                            .map(|s| ObjectRef::from(s.as_ref()))
                    };
                    if let Some(t) = target {
                        return Some((t, (rx, servers)));
                    }
                }
                // Missed notifications are caught by each server's requeue timer.
                Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                    tracing::warn!(missed = n, "telemetry change notifications lagged");
                }
                Err(tokio::sync::broadcast::error::RecvError::Closed) => return None,
            }
        }
    })
}

/// Fires once each time this replica becomes the leader, so it reconciles everything it
/// skipped while following.
pub(super) fn on_leadership(
    rx: Option<watch::Receiver<bool>>,
) -> impl Stream<Item = ()> + Send + 'static {
    futures::stream::unfold(rx, |rx| async move {
        let mut rx = rx?;
        loop {
            if rx.changed().await.is_err() {
                return None;
            }
            if *rx.borrow_and_update() {
                return Some(((), Some(rx)));
            }
        }
    })
}

/// Objects the operator owns in tenant namespaces carry the tenant's label: a change to one
/// (a deleted NetworkPolicy, an edited RoleBinding) reconciles its tenant, which repairs it.
pub(super) fn by_tenant_label<K: kube::Resource>(obj: &K) -> Option<ObjectRef<Tenant>> {
    obj.meta()
        .labels
        .as_ref()?
        .get(tenant::TENANT_LABEL)
        .map(|t| ObjectRef::new(t))
}

/// The operator's ResourceQuotas, each time one is deleted or its `spec.hard` differs from the
/// last seen: the quota controller rewrites `status.used` on every Pod created in a tenant's
/// namespace, which must not re-apply the tenant's objects each time.
pub(super) fn quota_changes(
    client: &kube::Client,
    owned: watcher::Config,
) -> impl Stream<Item = Result<ResourceQuota, watcher::Error>> + Send + 'static {
    let mut last = std::collections::HashMap::new();
    watcher(Api::<ResourceQuota>::all(client.clone()), owned)
        .default_backoff()
        .filter_map(move |event| {
            let out = match event {
                Ok(watcher::Event::Apply(q) | watcher::Event::InitApply(q)) => {
                    let key = (q.metadata.namespace.clone(), q.metadata.name.clone());
                    let hard = q.spec.as_ref().and_then(|s| s.hard.clone());
                    (last.insert(key, hard.clone()) != Some(hard)).then_some(Ok(q))
                }
                Ok(watcher::Event::Delete(q)) => {
                    last.remove(&(q.metadata.namespace.clone(), q.metadata.name.clone()));
                    Some(Ok(q))
                }
                Ok(watcher::Event::Init | watcher::Event::InitDone) => None,
                Err(e) => Some(Err(e)),
            };
            std::future::ready(out)
        })
}

/// Watches only what this operator made (its managed-by label).
pub(super) fn owned_objects() -> watcher::Config {
    watcher::Config::default().labels(&format!(
        "app.kubernetes.io/managed-by={}",
        crate::FIELD_MANAGER
    ))
}

pub(super) fn tenant_controller(
    client: &kube::Client,
    config: kube::runtime::controller::Config,
    inputs: TenantInputs,
    lease_rx: Option<watch::Receiver<bool>>,
) -> Controller<Tenant> {
    let owned = owned_objects();
    let (tenants, tenant_events) = inputs.tenants;
    let (namespaces, namespace_events) = inputs.namespaces;
    let ns_store = namespaces.clone();
    // A change to what a tenant's objects are applied from, or to one of them, re-applies them.
    let dirty = |applied: &Arc<controller::tenants::AppliedTenants>| {
        let applied = applied.clone();
        move |r: Option<ObjectRef<Tenant>>| {
            if let Some(r) = &r {
                applied.forget(&r.name);
            }
            r
        }
    };
    let (on_ns, on_quota, on_policy, on_binding) = (
        dirty(&inputs.applied),
        dirty(&inputs.applied),
        dirty(&inputs.applied),
        dirty(&inputs.applied),
    );
    Controller::for_shared_stream(tenant_events, tenants)
        .with_config(config)
        .watches_shared_stream(namespace_events, move |n: Arc<Namespace>| {
            on_ns(by_tenant_label(n.as_ref()))
        })
        .watches_stream(
            quota_changes(client, owned.clone()),
            move |o: ResourceQuota| on_quota(by_tenant_label(&o)),
        )
        .watches(
            Api::<NetworkPolicy>::all(client.clone()),
            owned.clone(),
            move |o: NetworkPolicy| on_policy(by_tenant_label(&o)),
        )
        .watches(
            Api::<RoleBinding>::all(client.clone()),
            owned,
            move |o: RoleBinding| on_binding(by_tenant_label(&o)),
        )
        // Placements change the tenant's usage; a volume going away may unblock its deletion.
        .reconcile_on(
            futures::stream::select(
                inputs.instances.map(namespace_of),
                inputs.volumes.map(namespace_of),
            )
            .filter_map(move |ns| {
                let tenant = ns_store
                    .get(&ObjectRef::new(&ns))
                    .and_then(|n| by_tenant_label(n.as_ref()));
                std::future::ready(tenant)
            }),
        )
        .reconcile_on(tenants_of_gone(inputs.gone, namespaces.clone()))
        .reconcile_all_on(on_leadership(lease_rx))
}

/// A controller woken by its kind's shared watch through bare references (name, namespace).
/// kube-runtime's own trigger queues each object with its version, uid and an erased copy of
/// its type (a dozen strings, twice: queue and index): a burst of 20,000 new workloads held
/// 20,000 of those while they waited for a reconcile (the queue dedups by name either way).
pub(super) fn lean<K: Watched>(events: ReflectHandle<K>, store: Store<K>) -> Controller<K> {
    Controller::for_shared_stream(futures::stream::pending::<Arc<K>>(), store).reconcile_on(
        events.map(|k| {
            let r = ObjectRef::new(k.meta().name.as_deref().unwrap_or_default());
            match k.meta().namespace.as_deref() {
                Some(ns) => r.within(ns),
                None => r,
            }
        }),
    )
}

/// Workloads with a replica on a server (to re-place them when it fails).
pub(super) fn on_server<K: PackedWorkload>(
    store: &WorkloadStore<K>,
    servers: &Store<PackedServer>,
    server: &PackedServer,
) -> Vec<ObjectRef<Packed<K>>> {
    let name = server.meta().name.as_deref().unwrap_or_default();
    // Only a server replicas must leave concerns its workloads: unschedulable, or gone from
    // the store (deleted). Every other status write (heartbeats, the allocation the ledger
    // publishes on each placement) would wake all its workloads for nothing, and each mapping
    // scans every workload.
    if server.brief().schedulable() && servers.get(&ObjectRef::from(server)).is_some() {
        return Vec::new();
    }
    store
        .state()
        .iter()
        .filter(|w| w.spots().iter().any(|s| &*s.server == name))
        .map(|w| w.object_ref())
        .collect()
}

/// The workloads a child (PVC, Pod) names as its owner.
fn owners<K: PackedWorkload>(child: &kube::api::ObjectMeta) -> Vec<ObjectRef<Packed<K>>> {
    let (kind, version) = (K::kind(&()), K::api_version(&()));
    let namespace = child.namespace.as_deref().unwrap_or_default();
    child
        .owner_references
        .iter()
        .flatten()
        .filter(|o| o.kind == kind && o.api_version == version)
        .map(|o| ObjectRef::new(&o.name).within(namespace))
        .collect()
}

/// The owners of the children a watch touched (errors logged; the watch retries itself).
pub(super) fn owners_of<K, C>(
    children: impl Stream<Item = Result<C, watcher::Error>> + Send + 'static,
    what: &'static str,
) -> BoxStream<'static, ObjectRef<Packed<K>>>
where
    K: PackedWorkload,
    C: kube::Resource,
{
    children
        .flat_map(move |child| {
            futures::stream::iter(match child {
                Ok(c) => owners::<K>(c.meta()),
                Err(e) => {
                    tracing::warn!(error = %e, watch = what, "watch error; retrying");
                    Vec::new()
                }
            })
        })
        .boxed()
}

/// What wakes a workload controller.
pub(super) struct WorkloadTriggers<K: PackedWorkload> {
    /// Its own kind's watch: new and changed workloads.
    pub(super) own: Subscription<K>,
    /// Its children's owners (PVCs, Pods).
    pub(super) children: BoxStream<'static, ObjectRef<Packed<K>>>,
    /// Servers, for the workloads on one replicas must leave.
    pub(super) servers: (Store<PackedServer>, ReflectHandle<PackedServer>),
    /// Tenants, for the workloads of one whose policy changed.
    pub(super) tenants: (Store<Namespace>, ReflectHandle<Tenant>),
    /// Reconciles everything each time this replica becomes the leader.
    pub(super) leadership: Option<watch::Receiver<bool>>,
}

/// A workload controller (StorageVolume or ComputeInstance) on kube-runtime's `applier`,
/// which reads the workloads its triggers stage (see [`crate::workload_store`]). Runs until
/// `shutdown`, then finishes the reconciles under way.
pub(super) fn workload_controller<K, F, Fut>(
    store: &WorkloadStore<K>,
    triggers: WorkloadTriggers<K>,
    reconcile: F,
    ctx: Arc<Context>,
    config: kube::runtime::controller::Config,
    shutdown: tokio_util::sync::WaitForCancellationFutureOwned,
) -> impl Future<Output = ()> + Send + 'static
where
    K: PackedWorkload,
    F: Fn(Arc<Packed<K>>, Arc<Context>) -> Fut + Send + 'static,
    Fut: Future<Output = Result<Action, controller::Error>> + Send + 'static,
{
    let (servers, server_events) = triggers.servers;
    let (namespaces, tenant_events) = triggers.tenants;
    let (on_servers, on_tenants, all, stage, settle) = (
        store.clone(),
        store.clone(),
        store.clone(),
        store.clone(),
        store.clone(),
    );
    let policy = PolicyChanges::default();
    let queue = futures::stream::select_all([
        triggers.own.boxed(),
        triggers.children,
        server_events
            .flat_map(move |s| futures::stream::iter(on_server(&on_servers, &servers, &s)))
            .boxed(),
        // A tenant's classification raised or residency narrowed: its replicas are re-checked.
        tenant_events
            .flat_map(move |t| {
                futures::stream::iter(if policy.changed(&t) {
                    of_tenant(&on_tenants, &namespaces, &t)
                } else {
                    Vec::new()
                })
            })
            .boxed(),
        on_leadership(triggers.leadership)
            .flat_map(move |()| {
                futures::stream::iter(
                    all.state()
                        .iter()
                        .map(|w| w.object_ref())
                        .collect::<Vec<_>>(),
                )
            })
            .boxed(),
    ])
    .take_until(shutdown)
    .filter_map(move |r| {
        let request = stage
            .stage(&r)
            .then(|| Ok::<_, std::convert::Infallible>(ReconcileRequest::from(r)));
        std::future::ready(request)
    });
    let reconciler = move |obj: Arc<Packed<K>>, ctx: Arc<Context>| {
        let trigger = settle.trigger_of(&obj);
        let settle = settle.clone();
        let reconciled = reconcile(obj.clone(), ctx);
        Box::pin(async move {
            let result = reconciled.await;
            if let (Ok(action), Some(trigger)) = (&result, trigger)
                && *action == Action::await_change()
            {
                settle.settled(&obj, trigger);
            }
            result
        })
    };
    kube::runtime::applier(
        reconciler,
        controller::hardware::error_policy,
        ctx,
        store.staging(),
        queue,
        config,
    )
    .for_each(|_| async {})
}

/// Which Tenant events change its policy (a new generation: classification, residency,
/// namespaces). Its status is rewritten with each placement (usage): waking every workload of
/// the tenant then made each placement cost a reconcile of all the tenant's workloads.
#[derive(Default)]
pub(super) struct PolicyChanges(std::sync::Mutex<std::collections::HashMap<String, Option<i64>>>);

impl PolicyChanges {
    fn changed(&self, t: &Tenant) -> bool {
        let name = t.metadata.name.clone().unwrap_or_default();
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(name, t.metadata.generation)
            != Some(t.metadata.generation)
    }
}

/// Workloads in the namespaces of a tenant.
pub(super) fn of_tenant<K: PackedWorkload>(
    store: &WorkloadStore<K>,
    namespaces: &Store<Namespace>,
    t: &Tenant,
) -> Vec<ObjectRef<Packed<K>>> {
    let tenant = t.metadata.name.as_deref().unwrap_or_default();
    store
        .state()
        .iter()
        .filter(|w| {
            namespaces
                .get(&ObjectRef::new(w.namespace()))
                .is_some_and(|n| by_tenant_label(n.as_ref()).is_some_and(|r| r.name == tenant))
        })
        .map(|w| w.object_ref())
        .collect()
}

/// A workload reference's namespace (for tenant triggers).
fn namespace_of<K: kube::Resource>(r: ObjectRef<K>) -> String {
    r.namespace.unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use kube::runtime::reflector;
    use kube::runtime::watcher::Event;
    use serde_json::json;

    fn server(name: &str, schedulable: &str) -> crate::packed::PackedServer {
        let s: sovereign_crds::Server = serde_json::from_value(json!({
            "apiVersion": "sovereign.io/v1alpha1", "kind": "Server",
            "metadata": {"name": name},
            "spec": {"rack": "r1", "bmc": {"address": "https://10.0.0.1",
                "credentialsSecretRef": {"name": "bmc", "namespace": "ns"}}},
            "status": {"conditions": [{"type": "Schedulable", "status": schedulable, "reason": "X",
                "message": "", "lastTransitionTime": "2026-11-29T00:00:00Z"}]}
        }))
        .unwrap();
        crate::packed::Packed::pack(s).unwrap()
    }

    #[test]
    fn only_a_server_replicas_must_leave_wakes_its_workloads() {
        let volumes = crate::workload_store::WorkloadStore::<sovereign_crds::StorageVolume>::listed(
            [serde_json::from_value(json!({
                "apiVersion": "sovereign.io/v1alpha1", "kind": "StorageVolume",
                "metadata": {"name": "db", "namespace": "t"},
                "spec": {"size": "1Gi", "tier": "ssd"},
                "status": {"phase": "Bound", "replicas": [{"index": 0, "server": "s1", "rack": "r1", "site": "x", "state": "Ready"}]}
            }))
            .unwrap()],
        );
        let (servers, mut sw) = reflector::store::<crate::packed::PackedServer>();
        let fine = server("s1", "True");
        sw.apply_watcher_event(&Event::Apply(fine.clone()));
        // A heartbeat or an allocation update of a schedulable server: nothing to do.
        assert!(super::on_server(&volumes, &servers, &fine).is_empty());
        // Unschedulable: its volume is woken to move.
        let failing = server("s1", "False");
        sw.apply_watcher_event(&Event::Apply(failing.clone()));
        assert_eq!(super::on_server(&volumes, &servers, &failing).len(), 1);
        // Deleted (gone from the store), even with a schedulable last state.
        sw.apply_watcher_event(&Event::Delete(fine.clone()));
        assert_eq!(super::on_server(&volumes, &servers, &fine).len(), 1);
    }

    #[test]
    fn a_child_wakes_the_workloads_of_its_kind_that_own_it() {
        let pod: k8s_openapi::api::core::v1::Pod = serde_json::from_value(json!({
            "metadata": {"name": "web-0", "namespace": "t", "ownerReferences": [
                {"apiVersion": "sovereign.io/v1alpha1", "kind": "ComputeInstance", "name": "web", "uid": "1"},
                {"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "web", "uid": "2"},
                {"apiVersion": "sovereign.io/v1alpha1", "kind": "StorageVolume", "name": "db", "uid": "3"}]}
        }))
        .unwrap();
        let owners = super::owners::<sovereign_crds::ComputeInstance>(&pod.metadata);
        assert_eq!(owners.len(), 1);
        assert_eq!(
            (owners[0].name.as_str(), owners[0].namespace.as_deref()),
            ("web", Some("t"))
        );
        assert!(
            super::owners::<sovereign_crds::StorageVolume>(&kube::api::ObjectMeta::default())
                .is_empty()
        );
    }

    #[test]
    fn only_a_new_tenant_generation_wakes_its_workloads() {
        let tenant = |generation: i64, used: &str| -> sovereign_crds::Tenant {
            serde_json::from_value(json!({
                "apiVersion": "sovereign.io/v1alpha1", "kind": "Tenant",
                "metadata": {"name": "moh", "generation": generation},
                "spec": {"classification": "Internal", "residency": {"jurisdictions": ["VN"]}},
                "status": {"usage": {"cpu": used}}
            }))
            .unwrap()
        };
        let policy = super::PolicyChanges::default();
        assert!(policy.changed(&tenant(1, "1")), "first seen");
        assert!(
            !policy.changed(&tenant(1, "2")),
            "a usage write is not a policy change"
        );
        assert!(policy.changed(&tenant(2, "2")), "a spec change is");
    }
}
