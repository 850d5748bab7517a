//! `sovereign-operator run`: the telemetry front, the Server/Rack/Site controllers, leader
//! election on a Lease and the admin endpoints (`/livez`, `/readyz`, `/metrics`), together
//! until the shutdown signal.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use futures::{Stream, StreamExt as _};
use k8s_openapi::api::core::v1::{Namespace, PersistentVolumeClaim, Pod, ResourceQuota};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::rbac::v1::RoleBinding;
use kube::Resource as _;
use kube::api::Api;
use kube::runtime::controller::Controller;
use kube::runtime::events::Recorder;
use kube::runtime::reflector::ReflectHandle;
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::{WatchStreamExt as _, watcher};
use sovereign_crds::{ComputeInstance, Rack, Site, StorageVolume, Tenant};
use sovereign_telemetry::cluster::{Watched, mirror, shared_mirror_observed};
use sovereign_telemetry::hub::Hub;
use thiserror::Error;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::controller::ledger::{Followed, Ledger, LedgerOptions};
use crate::controller::{
    self, Context, ControllerMetrics, Leadership, StatusPolicy, compute, hardware, storage, tenant,
    tenants,
};
use crate::node_taints::NodeTaints;
use crate::packed::{Packed, PackedServer, PackedWorkload};
use crate::telemetry::{Front, TelemetryError, TelemetryOptions};
use sovereign_placement::from_crds;

/// Errors that stop `run`.
#[derive(Debug, Error)]
pub enum RunError {
    #[error(transparent)]
    Telemetry(#[from] TelemetryError),
    #[error("binding the admin endpoint {addr}: {source}")]
    AdminBind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("leader election on Lease {namespace}/{name}: {source}")]
    Lease {
        namespace: String,
        name: String,
        #[source]
        source: kube_lease_manager::LeaseManagerError,
    },
    #[error("subscribing to the shared {kind} watch")]
    SharedWatch { kind: &'static str },
}

/// A watch of `K` shared by `N` readers (managed fields trimmed, unreadable objects left out).
fn shared<K, const N: usize>(
    client: &kube::Client,
    kind: &'static str,
    trim: impl FnMut(&mut K) + Send + 'static,
) -> Result<(Store<K>, [ReflectHandle<K>; N]), RunError>
where
    K: Watched,
{
    shared_observed(client, kind, trim, |_| {})
}

/// A shared watch of what placement reads (Servers, Racks, Sites, Tenants): each event tells
/// the ledger its inventory may have changed.
fn inventory<K, const N: usize>(
    client: &kube::Client,
    kind: &'static str,
    ledger: &Arc<Ledger>,
    trim: impl FnMut(&mut K) + Send + 'static,
) -> Result<(Store<K>, [ReflectHandle<K>; N]), RunError>
where
    K: Watched,
{
    let ledger = ledger.clone();
    shared_observed(client, kind, trim, move |_| ledger.inventory_changed())
}

/// [`shared`] whose events (once in the store) `observe` also sees.
fn shared_observed<K, const N: usize>(
    client: &kube::Client,
    kind: &'static str,
    trim: impl FnMut(&mut K) + Send + 'static,
    observe: impl FnMut(&watcher::Event<K>) + Send + 'static,
) -> Result<(Store<K>, [ReflectHandle<K>; N]), RunError>
where
    K: Watched,
{
    shared_mirror_observed(
        client.clone(),
        watcher::Config::default(),
        kind,
        trim,
        observe,
    )
    .ok_or(RunError::SharedWatch { kind })
}

/// The ledger's view of a workload watch: deletions give capacity back, re-lists rebuild. A
/// deleted workload's namespace goes to `gone`: its tenant's usage changed, and the shared
/// watch's subscriptions carry no deletions.
fn ledger_follows<K: PackedWorkload>(
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
fn tenants_of_gone(
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
struct TenantInputs {
    applied: Arc<controller::tenants::AppliedTenants>,
    tenants: (Store<Tenant>, ReflectHandle<Tenant>),
    namespaces: (Store<Namespace>, ReflectHandle<Namespace>),
    volumes: ReflectHandle<Packed<StorageVolume>>,
    instances: ReflectHandle<Packed<ComputeInstance>>,
    /// Namespaces a workload was deleted from.
    gone: tokio::sync::mpsc::UnboundedReceiver<String>,
}

/// Leader election settings.
#[derive(Clone, Debug)]
pub struct LeaseOptions {
    pub namespace: String,
    pub name: String,
    /// This replica's identity in the Lease (the pod name in a cluster).
    pub identity: String,
    pub duration_seconds: u64,
    pub grace_seconds: u64,
}

/// Everything `run` needs.
#[derive(Clone, Debug)]
pub struct RunOptions {
    pub telemetry: TelemetryOptions,
    pub admin_addr: SocketAddr,
    /// None: this replica always writes (one replica only).
    pub lease: Option<LeaseOptions>,
    pub policy: StatusPolicy,
    /// Replica moves off unschedulable servers per site and minute (intrusion moves of
    /// Confidential and Secret data are never held).
    pub moves_per_minute: u32,
    /// Reconciles each controller runs at once.
    pub reconcile_concurrency: u16,
}

/// Server names the hub reports changed, as Server references (node agents publish under their
/// node's name).
fn hub_triggers(
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
fn on_leadership(rx: Option<watch::Receiver<bool>>) -> impl Stream<Item = ()> + Send + 'static {
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
fn node_store(client: &kube::Client) -> Store<NodeTaints> {
    mirror(
        Api::<NodeTaints>::all(client.clone()),
        watcher::Config::default(),
        "Node",
    )
}

/// Objects the operator owns in tenant namespaces carry the tenant's label: a change to one
/// (a deleted NetworkPolicy, an edited RoleBinding) reconciles its tenant, which repairs it.
fn by_tenant_label<K: kube::Resource>(obj: &K) -> Option<ObjectRef<Tenant>> {
    obj.meta()
        .labels
        .as_ref()?
        .get(tenant::TENANT_LABEL)
        .map(|t| ObjectRef::new(t))
}

/// The operator's ResourceQuotas, each time one is deleted or its `spec.hard` differs from the
/// last seen: the quota controller rewrites `status.used` on every Pod created in a tenant's
/// namespace, which must not re-apply the tenant's objects each time.
fn quota_changes(
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
fn owned_objects() -> watcher::Config {
    watcher::Config::default().labels(&format!(
        "app.kubernetes.io/managed-by={}",
        crate::FIELD_MANAGER
    ))
}

fn tenant_controller(
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
fn lean<K: Watched>(events: ReflectHandle<K>, store: Store<K>) -> Controller<K> {
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
fn on_server<K: PackedWorkload>(
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
fn workload_controller<K: PackedWorkload>(
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
struct PolicyChanges(std::sync::Mutex<std::collections::HashMap<String, Option<i64>>>);

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
fn of_tenant<K>(store: &Store<K>, namespaces: &Store<Namespace>, t: &Tenant) -> Vec<ObjectRef<K>>
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

async fn serve_admin(
    listener: tokio::net::TcpListener,
    metrics: Arc<ControllerMetrics>,
    ready: Arc<AtomicBool>,
    stop: CancellationToken,
) {
    use axum::http::StatusCode;
    use axum::routing::get;
    let app = axum::Router::new()
        .route("/livez", get(|| async { "ok" }))
        .route(
            "/readyz",
            get(move || {
                let ready = ready.load(Ordering::Relaxed);
                async move {
                    if ready {
                        (StatusCode::OK, "ok")
                    } else {
                        (StatusCode::SERVICE_UNAVAILABLE, "caches not synced")
                    }
                }
            }),
        )
        .route(
            "/metrics",
            get(move || {
                let text = metrics.encode();
                async move {
                    (
                        [(
                            axum::http::header::CONTENT_TYPE,
                            "application/openmetrics-text; version=1.0.0; charset=utf-8",
                        )],
                        text,
                    )
                }
            }),
        );
    let _ = axum::serve(listener, app)
        .with_graceful_shutdown(stop.cancelled_owned())
        .await;
}

/// Runs the operator until `shutdown` resolves.
pub async fn run(
    client: kube::Client,
    options: RunOptions,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), RunError> {
    let stop = CancellationToken::new();
    let metrics = Arc::new(ControllerMetrics::new());
    let ready = Arc::new(AtomicBool::new(false));
    let admin = tokio::net::TcpListener::bind(options.admin_addr)
        .await
        .map_err(|source| RunError::AdminBind {
            addr: options.admin_addr,
            source,
        })?;
    let admin_task = tokio::spawn(serve_admin(
        admin,
        metrics.clone(),
        ready.clone(),
        stop.clone(),
    ));

    let (leadership, lease_rx, lease_task) = match &options.lease {
        None => (Leadership::always(), None, None),
        Some(l) => {
            let manager = kube_lease_manager::LeaseManagerBuilder::new(client.clone(), &l.name)
                .with_namespace(&l.namespace)
                .with_identity(&l.identity)
                .with_duration(l.duration_seconds)
                .with_grace(l.grace_seconds)
                .with_field_manager(crate::FIELD_MANAGER)
                .build()
                .await
                .map_err(|source| RunError::Lease {
                    namespace: l.namespace.clone(),
                    name: l.name.clone(),
                    source,
                })?;
            let (rx, task) = manager.watch().await;
            (Leadership::from_lease(rx.clone()), Some(rx), Some(task))
        }
    };
    if let Some(rx) = lease_rx.clone() {
        let metrics = metrics.clone();
        let identity = options
            .lease
            .as_ref()
            .map(|l| l.identity.clone())
            .unwrap_or_default();
        let stop = stop.clone();
        tokio::spawn(async move {
            let mut rx = rx;
            loop {
                let leading = *rx.borrow_and_update();
                metrics.set_leader(leading);
                tracing::info!(identity = %identity, leading, "leadership");
                tokio::select! {
                    changed = rx.changed() => if changed.is_err() { break },
                    () = stop.cancelled() => break,
                }
            }
        });
    } else {
        metrics.set_leader(true);
    }

    let (gone, gone_rx) = tokio::sync::mpsc::unbounded_channel();
    let ledger = Arc::new(Ledger::new(LedgerOptions {
        stale_after_seconds: options.policy.ledger_stale_after_seconds(),
        ..LedgerOptions::default()
    }));
    // One watch per kind, shared by every controller that reads it (a large fleet is held
    // once); the subscriptions are named by their reader.
    let (
        servers,
        [
            server_events,
            servers_to_racks,
            servers_to_sites,
            servers_to_volumes,
            servers_to_instances,
        ],
    ) = inventory::<PackedServer, 5>(&client, "Server", &ledger, Packed::forget_version)?;
    let (racks, [rack_events, racks_to_sites]) =
        inventory::<Rack, 2>(&client, "Rack", &ledger, |_| {})?;
    let front = Front::start_with(
        client.clone(),
        options.telemetry.clone(),
        servers.clone(),
        racks.clone(),
    )?;
    let hub = front.hub();
    let (sites, [site_events]) = inventory::<Site, 1>(&client, "Site", &ledger, |_| {})?;
    let nodes = node_store(&client);
    let (namespaces, [namespace_events]) = shared::<Namespace, 1>(&client, "Namespace", |_| {})?;
    // Workloads are held packed (see `crate::packed`): tens of thousands of them were the
    // largest part of the operator's memory decoded.
    let (volumes, [volume_events, volumes_to_tenants]) = shared_observed::<Packed<StorageVolume>, 2>(
        &client,
        "StorageVolume",
        Packed::forget_version,
        ledger_follows(&ledger, &gone),
    )?;
    let (instances, [instance_events, instances_to_tenants]) =
        shared_observed::<Packed<ComputeInstance>, 2>(
            &client,
            "ComputeInstance",
            Packed::forget_version,
            ledger_follows(&ledger, &gone),
        )?;
    let (tenants_store, [tenant_events, tenants_to_volumes, tenants_to_instances]) =
        inventory::<Tenant, 3>(&client, "Tenant", &ledger, |_| {})?;
    let _ = tokio::join!(
        servers.wait_until_ready(),
        racks.wait_until_ready(),
        sites.wait_until_ready(),
        nodes.wait_until_ready(),
        namespaces.wait_until_ready(),
        volumes.wait_until_ready(),
        instances.wait_until_ready(),
        tenants_store.wait_until_ready()
    );
    let ctx = Arc::new(Context {
        client: client.clone(),
        hub: hub.clone(),
        servers: servers.clone(),
        racks: racks.clone(),
        sites: sites.clone(),
        nodes,
        namespaces: namespaces.clone(),
        volumes: volumes.clone(),
        instances: instances.clone(),
        tenants: tenants_store,
        pods: Arc::default(),
        ledger,
        moves: Arc::new(crate::controller::moves::MoveLimiter::new(
            options.moves_per_minute,
        )),
        recorder: Recorder::new(client.clone(), controller::reporter()),
        written: Arc::default(),
        written_racks: Arc::default(),
        written_sites: Arc::default(),
        written_workloads: Arc::default(),
        rack_writes: Arc::default(),
        tenant_writes: Arc::default(),
        applied_tenants: Arc::default(),
        metrics: metrics.clone(),
        policy: options.policy.clone(),
        leader: leadership,
    });
    ready.store(true, Ordering::Relaxed);
    tracing::info!("caches synced; controllers starting");

    let shutdown_signal = || stop.clone().cancelled_owned();
    let config = kube::runtime::controller::Config::default()
        .debounce(Duration::from_millis(50))
        .concurrency(options.reconcile_concurrency);
    let server_controller = lean(server_events, servers.clone())
        .with_config(config.clone())
        .reconcile_on(hub_triggers(&hub, servers.clone()))
        .reconcile_all_on(on_leadership(lease_rx.clone()))
        .graceful_shutdown_on(shutdown_signal())
        .run(
            hardware::reconcile_server,
            hardware::error_policy,
            ctx.clone(),
        )
        .for_each(|_| async {});
    let rack_controller = Controller::for_shared_stream(rack_events, racks.clone())
        .with_config(config.clone())
        .watches_shared_stream(servers_to_racks, |s: Arc<PackedServer>| {
            Some(ObjectRef::new(&s.brief().rack))
        })
        .reconcile_all_on(on_leadership(lease_rx.clone()))
        .graceful_shutdown_on(shutdown_signal())
        .run(
            hardware::reconcile_rack,
            hardware::error_policy,
            ctx.clone(),
        )
        .for_each(|_| async {});
    let site_racks = racks.clone();
    let site_controller = Controller::for_shared_stream(site_events, sites.clone())
        .with_config(config.clone())
        .watches_shared_stream(racks_to_sites, |r: Arc<Rack>| {
            Some(ObjectRef::new(&r.spec.site))
        })
        .watches_shared_stream(servers_to_sites, move |s: Arc<PackedServer>| {
            site_racks
                .get(&ObjectRef::new(&s.brief().rack))
                .map(|r| ObjectRef::new(&r.spec.site))
        })
        .reconcile_all_on(on_leadership(lease_rx.clone()))
        .graceful_shutdown_on(shutdown_signal())
        .run(
            hardware::reconcile_site,
            hardware::error_policy,
            ctx.clone(),
        )
        .for_each(|_| async {});

    let tenant_controller = tenant_controller(
        &client,
        config.clone(),
        TenantInputs {
            applied: ctx.applied_tenants.clone(),
            tenants: (ctx.tenants.clone(), tenant_events),
            namespaces: (namespaces.clone(), namespace_events),
            volumes: volumes_to_tenants,
            instances: instances_to_tenants,
            gone: gone_rx,
        },
        lease_rx.clone(),
    )
    .graceful_shutdown_on(shutdown_signal())
    .run(
        tenants::reconcile_tenant,
        hardware::error_policy,
        ctx.clone(),
    )
    .for_each(|_| async {});

    let volume_controller = workload_controller(
        (volumes.clone(), volume_events),
        |c| {
            c.owns(
                Api::<PersistentVolumeClaim>::all(client.clone()),
                owned_objects(),
            )
        },
        (ctx.servers.clone(), servers_to_volumes),
        (ctx.namespaces.clone(), tenants_to_volumes),
        config.clone(),
        lease_rx.clone(),
        shutdown_signal(),
    )
    .run(
        storage::reconcile_volume,
        hardware::error_policy,
        ctx.clone(),
    )
    .for_each(|_| async {});
    let instance_controller = workload_controller(
        (instances.clone(), instance_events),
        // The Pod watch wakes an instance when one of its Pods changes and keeps the index
        // the instance controller reads Pods from (instead of a GET per replica).
        |c| {
            c.owns_stream(ctx.pods.clone().follow(
                watcher(Api::<Pod>::all(client.clone()), owned_objects()).default_backoff(),
            ))
        },
        (ctx.servers.clone(), servers_to_instances),
        (ctx.namespaces.clone(), tenants_to_instances),
        config,
        lease_rx.clone(),
        shutdown_signal(),
    )
    .run(
        compute::reconcile_instance,
        hardware::error_policy,
        ctx.clone(),
    )
    .for_each(|_| async {});

    let front_stop = stop.clone();
    let front_leading = lease_rx.clone();
    let front_task = {
        let stop = stop.clone();
        async move {
            let result = front
                .serve(front_leading, async move { front_stop.cancelled().await })
                .await;
            // The front failing (a port taken) stops everything rather than half-running.
            stop.cancel();
            result
        }
    };
    let stopper = {
        let stop = stop.clone();
        async move {
            shutdown.await;
            tracing::info!("shutting down");
            stop.cancel();
        }
    };
    let (front_result, (), (), (), (), (), (), ()) = tokio::join!(
        front_task,
        server_controller,
        rack_controller,
        site_controller,
        tenant_controller,
        volume_controller,
        instance_controller,
        stopper
    );
    stop.cancel();
    drop(ctx);
    // Dropping the receivers makes the lease manager release the Lease for a fast hand-over.
    if let Some(task) = lease_task {
        let _ = tokio::time::timeout(Duration::from_secs(5), task).await;
    }
    let _ = tokio::time::timeout(Duration::from_secs(5), admin_task).await;
    front_result?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use kube::core::DeserializeGuard;
    use kube::runtime::reflector;
    use kube::runtime::watcher::Event;
    use serde_json::json;
    use sovereign_crds::Server;
    use sovereign_telemetry::cluster::readable;

    fn guard(name: &str, rack: &serde_json::Value) -> DeserializeGuard<Server> {
        serde_json::from_value(json!({
            "apiVersion": "sovereign.io/v1alpha1", "kind": "Server",
            "metadata": {"name": name},
            "spec": {"rack": rack, "bmc": {"address": "https://10.0.0.1",
                "credentialsSecretRef": {"name": "bmc", "namespace": "ns"}}}
        }))
        .unwrap()
    }

    #[test]
    fn an_object_that_does_not_decode_is_left_out_and_its_readable_siblings_kept() {
        let (store, mut writer) = reflector::store::<Server>();
        let events = [
            Event::Init,
            Event::InitApply(guard("good", &json!("r1"))),
            Event::InitApply(guard("bad", &json!(["not", "a", "rack"]))),
            Event::InitDone,
        ];
        for e in events {
            if let Some(e) = readable(e, &store, "Server") {
                writer.apply_watcher_event(&e);
            }
        }
        let names: Vec<String> = store
            .state()
            .iter()
            .filter_map(|s| s.metadata.name.clone())
            .collect();
        assert_eq!(names, ["good"]);

        // An update that turns it unreadable removes it rather than keeping a stale copy.
        let e = readable(Event::Apply(guard("good", &json!(7))), &store, "Server");
        assert!(matches!(&e, Some(Event::Delete(s)) if s.metadata.name.as_deref() == Some("good")));
        writer.apply_watcher_event(&e.unwrap());
        assert!(store.is_empty());
        // Deleting an object never seen readable changes nothing.
        assert!(readable(Event::Delete(guard("bad", &json!(1))), &store, "Server").is_none());
        // Fixed, it comes back.
        let e = readable(Event::Apply(guard("good", &json!("r2"))), &store, "Server").unwrap();
        writer.apply_watcher_event(&e);
        assert_eq!(store.state()[0].spec.rack, "r2");
    }

    fn server(name: &str, schedulable: &str) -> super::PackedServer {
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
        let (servers, mut sw) = reflector::store::<super::PackedServer>();
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
