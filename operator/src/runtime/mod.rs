//! `sovereign-operator run`: the telemetry front, the Server/Rack/Site controllers, leader
//! election on a Lease and the admin endpoints (`/livez`, `/readyz`, `/metrics`), together
//! until the shutdown signal.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use futures::StreamExt as _;
use k8s_openapi::api::core::v1::{Namespace, PersistentVolumeClaim, Pod};
use kube::api::Api;
use kube::runtime::controller::Controller;
use kube::runtime::events::Recorder;
use kube::runtime::reflector::ReflectHandle;
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::{WatchStreamExt as _, watcher};
use sovereign_crds::{ComputeInstance, Rack, Site, StorageVolume, Tenant};
use sovereign_telemetry::cluster::{Watched, shared_mirror_observed};
use thiserror::Error;
use tokio_util::sync::CancellationToken;

use crate::controller::ledger::{Ledger, LedgerOptions};
use crate::controller::{
    self, Context, ControllerMetrics, Leadership, StatusPolicy, compute, hardware, storage, tenants,
};
use crate::packed::{Packed, PackedServer};
use crate::telemetry::{Front, TelemetryError, TelemetryOptions};
use crate::workload_store;

mod wiring;
use wiring::{
    TenantInputs, WorkloadTriggers, hub_triggers, lean, ledger_follows, on_leadership,
    owned_objects, owners_of, tenant_controller, workload_controller,
};

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
    let nodes = crate::node_taints::NodeIndex::watch(client.clone());
    let (namespaces, [namespace_events]) = shared::<Namespace, 1>(&client, "Namespace", |_| {})?;
    // Workloads are held compact (see `crate::workload_store`): tens of thousands of them were
    // the largest part of the operator's memory.
    let (volumes, [volume_events, volumes_to_tenants]) = workload_store::watch::<StorageVolume, 2>(
        client.clone(),
        "StorageVolume",
        ledger_follows(&ledger, &gone),
    );
    let (instances, [instance_events, instances_to_tenants]) =
        workload_store::watch::<ComputeInstance, 2>(
            client.clone(),
            "ComputeInstance",
            ledger_follows(&ledger, &gone),
        );
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
        &volumes,
        WorkloadTriggers {
            own: volume_events,
            children: owners_of::<StorageVolume, _>(
                watcher(
                    Api::<PersistentVolumeClaim>::all(client.clone()),
                    owned_objects(),
                )
                .default_backoff()
                .touched_objects(),
                "PersistentVolumeClaim",
            ),
            servers: (ctx.servers.clone(), servers_to_volumes),
            tenants: (ctx.namespaces.clone(), tenants_to_volumes),
            leadership: lease_rx.clone(),
        },
        storage::reconcile_volume,
        ctx.clone(),
        config.clone(),
        shutdown_signal(),
    );
    let instance_controller = workload_controller(
        &instances,
        WorkloadTriggers {
            own: instance_events,
            // The Pod watch wakes an instance when one of its Pods changes and keeps the index
            // the instance controller reads Pods from (instead of a GET per replica).
            children: owners_of::<ComputeInstance, _>(
                ctx.pods.clone().follow(
                    watcher(Api::<Pod>::all(client.clone()), owned_objects()).default_backoff(),
                ),
                "Pod",
            ),
            servers: (ctx.servers.clone(), servers_to_instances),
            tenants: (ctx.namespaces.clone(), tenants_to_instances),
            leadership: lease_rx.clone(),
        },
        compute::reconcile_instance,
        ctx.clone(),
        config,
        shutdown_signal(),
    );

    let front_stop = stop.clone();
    let front_leading = lease_rx.clone().map(|rx| relay_until(rx, stop.clone()));
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
    // Dropping the receivers makes the lease manager release the Lease for a fast hand-over
    // (this one too: held here, it kept the Lease until it expired, 15 s with no leader).
    drop(lease_rx);
    if let Some(task) = lease_task {
        let _ = tokio::time::timeout(Duration::from_secs(5), task).await;
    }
    let _ = tokio::time::timeout(Duration::from_secs(5), admin_task).await;
    front_result?;
    Ok(())
}

/// A copy of the leadership channel for the telemetry front, which ends (saying "not leading")
/// when `stop` fires. Agents' streams live on in tonic's connection tasks after the server
/// future is dropped; holding the Lease's own receiver they kept the lease manager from
/// releasing the Lease at shutdown, so the next leader waited for it to expire.
fn relay_until(
    mut lease: tokio::sync::watch::Receiver<bool>,
    stop: CancellationToken,
) -> tokio::sync::watch::Receiver<bool> {
    let (tx, rx) = tokio::sync::watch::channel(*lease.borrow());
    tokio::spawn(async move {
        loop {
            tokio::select! {
                changed = lease.changed() => {
                    if changed.is_err() {
                        break;
                    }
                    let _ = tx.send(*lease.borrow_and_update());
                }
                () = stop.cancelled() => break,
            }
        }
        drop(lease);
        let _ = tx.send(false);
    });
    rx
}

#[cfg(test)]
mod tests {
    use kube::core::DeserializeGuard;
    use kube::runtime::reflector::{self, ObjectRef};
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

    #[tokio::test]
    async fn the_front_s_leadership_copy_lets_go_of_the_lease_at_stop() {
        let (tx, rx) = tokio::sync::watch::channel(true);
        let stop = super::CancellationToken::new();
        let mut front = super::relay_until(rx, stop.clone());
        assert!(*front.borrow());
        tx.send(false).unwrap();
        front.changed().await.unwrap();
        assert!(!*front.borrow_and_update());
        tx.send(true).unwrap();
        front.changed().await.unwrap();
        assert!(*front.borrow_and_update());
        // At stop the front hears "not leading" and the Lease's channel has no receiver left
        // (the lease manager then releases the Lease), though the front's copy lives on.
        stop.cancel();
        front.changed().await.unwrap();
        assert!(!*front.borrow());
        tokio::time::timeout(std::time::Duration::from_secs(5), tx.closed())
            .await
            .unwrap();
    }

    #[test]
    fn an_object_that_does_not_decode_is_left_out_and_its_readable_siblings_kept() {
        let (store, mut writer) = reflector::store::<Server>();
        let held = |k: &ObjectRef<Server>| store.get(k).map(|o| (*o).clone());
        let events = [
            Event::Init,
            Event::InitApply(guard("good", &json!("r1"))),
            Event::InitApply(guard("bad", &json!(["not", "a", "rack"]))),
            Event::InitDone,
        ];
        for e in events {
            if let Some(e) = readable(e, held, "Server") {
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
        let e = readable(Event::Apply(guard("good", &json!(7))), held, "Server");
        assert!(matches!(&e, Some(Event::Delete(s)) if s.metadata.name.as_deref() == Some("good")));
        writer.apply_watcher_event(&e.unwrap());
        assert!(store.is_empty());
        // Deleting an object never seen readable changes nothing.
        assert!(readable(Event::Delete(guard("bad", &json!(1))), held, "Server").is_none());
        // Fixed, it comes back.
        let e = readable(Event::Apply(guard("good", &json!("r2"))), held, "Server").unwrap();
        writer.apply_watcher_event(&e);
        assert_eq!(store.state()[0].spec.rack, "r2");
    }
}
