//! How the controllers are wired to the shared watches: what wakes which object (a server
//! replicas must leave, a tenant whose policy changed, telemetry, leadership), the tenant
//! controller's inputs, and the ledger's view of workload deletions.

use std::sync::Arc;

use futures::{Stream, StreamExt as _};
use k8s_openapi::api::core::v1::{Namespace, ResourceQuota};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::rbac::v1::RoleBinding;
use kube::Resource as _;
use kube::api::Api;
use kube::runtime::controller::Controller;
use kube::runtime::reflector::ReflectHandle;
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::{WatchStreamExt as _, watcher};
use sovereign_crds::{ComputeInstance, StorageVolume, Tenant};
use sovereign_telemetry::cluster::{Watched, mirror};
use sovereign_telemetry::hub::Hub;
use tokio::sync::watch;

use crate::controller::ledger::{Followed, Ledger};
use crate::controller::{self, tenant};
use crate::node_taints::NodeTaints;
use crate::packed::{Packed, PackedServer, PackedWorkload};
use sovereign_placement::from_crds;

/// The ledger's view of a workload watch: deletions give capacity back, re-lists rebuild. A
/// deleted workload's namespace goes to `gone`: its tenant's usage changed, and the shared
/// watch's subscriptions carry no deletions.
pub(super) fn ledger_follows<K: PackedWorkload>(
    ledger: &Arc<Ledger>,
    gone: &tokio::sync::mpsc::UnboundedSender<String>,
) -> impl FnMut(&watcher::Event<Packed<K>>) + Send + 'static {
    let (ledger, gone) = (ledger.clone(), gone.clone());
    move |event| match event {
        watcher::Event::Delete(k) => {
            let consumer = from_crds::consumer(&K::kind(&()), k.meta());
            ledger.follow(Followed::Deleted(&consumer));
            if let Some(ns) = &k.meta().namespace {
                let _ = gone.send(ns.clone());
            }
        }
        watcher::Event::InitDone => ledger.follow(Followed::Relisted),
        _ => {}
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
    pub(super) volumes: ReflectHandle<Packed<StorageVolume>>,
    pub(super) instances: ReflectHandle<Packed<ComputeInstance>>,
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

/// Node store holding only what the taint writer reads (see [`NodeTaints`]).
pub(super) fn node_store(client: &kube::Client) -> Store<NodeTaints> {
    mirror(
        Api::<NodeTaints>::all(client.clone()),
        watcher::Config::default(),
        "Node",
    )
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
        // Placements change the tenant's usage.
        .watches_shared_stream(inputs.instances, {
            let ns_store = namespaces.clone();
            move |c: Arc<Packed<ComputeInstance>>| {
                let ns = ns_store.get(&ObjectRef::new(c.meta().namespace.as_deref()?))?;
                by_tenant_label(ns.as_ref())
            }
        })
        // A volume going away may unblock its tenant's deletion.
        .watches_shared_stream(inputs.volumes, move |v: Arc<Packed<StorageVolume>>| {
            let ns = ns_store.get(&ObjectRef::new(v.meta().namespace.as_deref()?))?;
            by_tenant_label(ns.as_ref())
        })
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
    store: &Store<Packed<K>>,
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
        .map(|w| ObjectRef::from(w.as_ref()))
        .collect()
}

/// A workload controller (StorageVolume or ComputeInstance): its own events, the children it
/// owns, a Server replicas must leave, and a Tenant whose policy changed.
pub(super) fn workload_controller<K: PackedWorkload>(
    (store, events): (Store<Packed<K>>, ReflectHandle<Packed<K>>),
    children: impl FnOnce(Controller<Packed<K>>) -> Controller<Packed<K>>,
    (servers, server_events): (Store<PackedServer>, ReflectHandle<PackedServer>),
    (namespaces, tenant_events): (Store<Namespace>, ReflectHandle<Tenant>),
    config: kube::runtime::controller::Config,
    lease_rx: Option<watch::Receiver<bool>>,
    shutdown: tokio_util::sync::WaitForCancellationFutureOwned,
) -> Controller<Packed<K>> {
    let on_servers = store.clone();
    let on_tenants = store.clone();
    let policy = PolicyChanges::default();
    children(lean(events, store).with_config(config))
        .watches_shared_stream(server_events, move |s: Arc<PackedServer>| {
            on_server(&on_servers, &servers, &s)
        })
        // A tenant's classification raised or residency narrowed: its replicas are re-checked.
        .watches_shared_stream(tenant_events, move |t: Arc<Tenant>| {
            if policy.changed(&t) {
                of_tenant(&on_tenants, &namespaces, &t)
            } else {
                Vec::new()
            }
        })
        .reconcile_all_on(on_leadership(lease_rx))
        .graceful_shutdown_on(shutdown)
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
pub(super) fn of_tenant<K>(
    store: &Store<K>,
    namespaces: &Store<Namespace>,
    t: &Tenant,
) -> Vec<ObjectRef<K>>
where
    K: kube::Resource<DynamicType = ()> + Clone + 'static,
{
    let tenant = t.metadata.name.as_deref().unwrap_or_default();
    store
        .state()
        .iter()
        .filter(|w| {
            w.meta().namespace.as_deref().is_some_and(|ns| {
                namespaces
                    .get(&ObjectRef::new(ns))
                    .is_some_and(|n| by_tenant_label(n.as_ref()).is_some_and(|r| r.name == tenant))
            })
        })
        .map(|w| ObjectRef::from(w.as_ref()))
        .collect()
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
        let (volumes, mut vw) =
            reflector::store::<crate::packed::Packed<sovereign_crds::StorageVolume>>();
        vw.apply_watcher_event(&Event::Apply(
            serde_json::from_value(json!({
                "apiVersion": "sovereign.io/v1alpha1", "kind": "StorageVolume",
                "metadata": {"name": "db", "namespace": "t"},
                "spec": {"size": "1Gi", "tier": "ssd"},
                "status": {"phase": "Bound", "replicas": [{"index": 0, "server": "s1", "rack": "r1", "site": "x", "state": "Ready"}]}
            }))
            .unwrap(),
        ));
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
