//! Placement benchmark against the cluster in KUBECONFIG, side by side with kube-scheduler on
//! the same control plane and the same fake Nodes: N Servers with live telemetry, each with its
//! Node; then
//!   1. kube-scheduler: M Pods (500m CPU, 1 GiB) created as fast as the client goes; the time
//!      from the first create to the last binding, and create → bound per Pod;
//!   2. Sovereign: M ComputeInstances (one replica, the same size) created the same way; the time
//!      from the first create to the last Pod bound to its node (placed and materialised), and
//!      create → placed (the placement in status) per instance;
//!   3. both again at a steady arrival rate (`--rate` per second, `--paced` objects each): the
//!      latency a user sees when the system is not flooded.
//!
//! Prints the figures and the operator's RSS: before the burst, at its end (the last reconciles
//! may still run), and settled (`--settle-seconds` later, default 30: what it holds with the
//! fleet and its workloads once the burst is done). The fake Nodes' Leases are renewed as
//! kubelets would (when kube-scheduler is measured), so no Node turns unreachable during a run.
//!
//! `cargo bench -p sovereign-operator --bench placement -- [--nodes 1000] [--objects 5000]
//!  [--paced 500] [--rate 40] [--concurrency N (the operator's --reconcile-concurrency)]
//!  [--compare 0 (Sovereign only: a memory run at fleet scale)] [--settle-seconds 30]`
//!
//! Run it on a control plane of its own (`K8S_BASE=... controlplane.sh up`, see README): it
//! leaves its objects behind (`controlplane.sh clean` removes them).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // a bench may panic
#![allow(clippy::cast_precision_loss, clippy::cast_possible_truncation)]

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, DeleteParams, ListParams};
use kube::runtime::{WatchStreamExt, watcher};
use serde_json::{Value, json};
use sovereign_crds::{ComputeInstance, Server};
use sovereign_tests::bench::{arg, quantile, rss_kib, rss_split_kib};
use sovereign_tests::e2e::{
    Cluster, FakeNode, bmc_sample, cluster, free_port, local_publisher, spawn_operator,
};

const NS: &str = "sovereign-system";
/// How many creates are in flight at once (both phases alike).
const CREATE_CONCURRENCY: usize = 16;

/// When each object was created and when it reached the state measured.
#[derive(Default)]
struct Clock {
    created: HashMap<String, Instant>,
    reached: HashMap<String, Instant>,
}

type Shared = Arc<Mutex<Clock>>;

struct Phase {
    name: &'static str,
    objects: usize,
    /// First create to the last object reaching the state.
    elapsed: Duration,
    latencies: Vec<f64>,
}

impl Phase {
    fn print(&mut self) {
        let per_s = self.objects as f64 / self.elapsed.as_secs_f64();
        let (p50, p99) = (
            quantile(&mut self.latencies, 0.5),
            quantile(&mut self.latencies, 0.99),
        );
        println!(
            "{:<44} {:>6} objects in {:>7.1} s = {:>6.1}/s; create → reached p50 {:.3} s, p99 {:.3} s, max {:.3} s",
            self.name,
            self.objects,
            self.elapsed.as_secs_f64(),
            per_s,
            p50,
            p99,
            self.latencies.last().copied().unwrap_or(f64::NAN)
        );
    }
}

/// Records, per object name, the first time `reached` holds for it in the watch.
fn observe<K, F>(api: Api<K>, config: watcher::Config, clock: Shared, reached: F)
where
    K: kube::Resource
        + Clone
        + std::fmt::Debug
        + serde::de::DeserializeOwned
        + Send
        + Sync
        + 'static,
    F: Fn(&K) -> bool + Send + 'static,
{
    tokio::spawn(async move {
        let mut events = watcher(api, config).applied_objects().boxed();
        while let Ok(Some(obj)) = events.try_next().await {
            if reached(&obj) {
                let name = obj.meta().name.clone().unwrap_or_default();
                let mut c = clock.lock().unwrap();
                c.reached.entry(name).or_insert_with(Instant::now);
            }
        }
    });
}

/// Creates one object with a plain POST, as `kubectl create` does: the same request in both
/// phases, and no discovery or server-side apply per object (`Cluster::apply`'s), which cost
/// the API server work the system measured had to share it with.
async fn create(cluster: &Cluster, obj: Value) {
    let ns = obj["metadata"]["namespace"].as_str().unwrap().to_owned();
    let post = kube::api::PostParams::default();
    if obj["kind"] == "Pod" {
        let pod: Pod = serde_json::from_value(obj).unwrap();
        Api::<Pod>::namespaced(cluster.client.clone(), &ns)
            .create(&post, &pod)
            .await
            .unwrap();
    } else {
        let c: ComputeInstance = serde_json::from_value(obj).unwrap();
        Api::<ComputeInstance>::namespaced(cluster.client.clone(), &ns)
            .create(&post, &c)
            .await
            .unwrap();
    }
}

/// How often each fake Node's Lease is renewed: within the node lifecycle controller's grace
/// period (50 s), as a kubelet's renewals (every 10 s) would be.
const LEASE_RENEWAL: Duration = Duration::from_secs(35);

/// Renews each fake Node's Lease as its kubelet would, so that no Node turns unreachable while
/// it is measured. Without it the node lifecycle controller marked the 1,000 Nodes unreachable
/// (a status write, a taint and an event per Node, ~1,100 requests over minutes) at a pace of
/// its own, landing in one phase or the other and swinging the ratio between identical runs.
/// Renewals are spread evenly (29/s for 1,000 nodes), the same load in both phases.
async fn keep_nodes_alive(cluster: &Cluster, nodes: Vec<String>) -> tokio::task::JoinHandle<()> {
    use k8s_openapi::api::coordination::v1::Lease;
    let leases: Api<Lease> = Api::namespaced(cluster.client.clone(), "kube-node-lease");
    // MicroTime: the API server refuses a renewTime with more than microseconds.
    let now = || {
        serde_json::to_value(k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime(
            k8s_openapi::jiff::Timestamp::now(),
        ))
        .unwrap()
    };
    futures::stream::iter(&nodes)
        .for_each_concurrent(CREATE_CONCURRENCY, |node| {
            let leases = leases.clone();
            async move {
                let lease: Lease = serde_json::from_value(json!({
                    "metadata": {"name": node},
                    "spec": {"holderIdentity": node, "leaseDurationSeconds": 40, "renewTime": now()}
                }))
                .unwrap();
                leases
                    .create(&kube::api::PostParams::default(), &lease)
                    .await
                    .unwrap();
            }
        })
        .await;
    let gap = LEASE_RENEWAL / u32::try_from(nodes.len().max(1)).unwrap();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(gap);
        for node in nodes.iter().cycle() {
            tick.tick().await;
            // Not awaited in turn: under load one renewal takes longer than the gap, and
            // sequential renewals stretched the cycle past the grace period.
            let (leases, node, renew) = (
                leases.clone(),
                node.clone(),
                json!({"spec": {"renewTime": now()}}),
            );
            tokio::spawn(async move {
                if let Err(e) = leases
                    .patch(
                        &node,
                        &kube::api::PatchParams::default(),
                        &kube::api::Patch::Merge(&renew),
                    )
                    .await
                {
                    // A refused renewal would let the Nodes go unreachable unseen.
                    eprintln!("renewing the Lease of {node}: {e}");
                    std::process::exit(2);
                }
            });
        }
    })
}

/// Creates the objects (`rate` per second, or as fast as the client goes when 0) and waits
/// until every one has reached the state the clock's observer records.
async fn run_phase(
    name: &'static str,
    cluster: &Cluster,
    objects: Vec<Value>,
    rate: u64,
    clock: &Shared,
) -> Phase {
    let n = objects.len();
    let started = Instant::now();
    let creates = futures::stream::iter(objects.into_iter().enumerate()).map(|(i, obj)| {
        let clock = clock.clone();
        async move {
            if rate > 0 {
                let due = started + Duration::from_secs_f64(i as f64 / rate as f64);
                tokio::time::sleep_until(due.into()).await;
            }
            let name = obj["metadata"]["name"].as_str().unwrap().to_owned();
            clock.lock().unwrap().created.insert(name, Instant::now());
            create(cluster, obj).await;
        }
    });
    creates
        .buffer_unordered(CREATE_CONCURRENCY)
        .collect::<Vec<()>>()
        .await;
    let deadline = Instant::now() + Duration::from_mins(20);
    loop {
        let done = {
            let c = clock.lock().unwrap();
            c.created.keys().all(|k| c.reached.contains_key(k))
        };
        if done {
            break;
        }
        assert!(Instant::now() < deadline, "{name}: not converged in 20 min");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut c = clock.lock().unwrap();
    let last = c.reached.values().max().copied().unwrap_or(started);
    let latencies = c
        .created
        .iter()
        .map(|(k, t)| c.reached[k].duration_since(*t).as_secs_f64())
        .collect();
    c.created.clear();
    c.reached.clear();
    Phase {
        name,
        objects: n,
        elapsed: last.duration_since(started),
        latencies,
    }
}

fn pod(ns: &str, name: &str) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": ns},
        "spec": {
            "containers": [{"name": "main", "image": "registry.example/app:1",
                "resources": {"requests": {"cpu": "500m", "memory": "1Gi"},
                              "limits": {"cpu": "500m", "memory": "1Gi"}}}],
            // Fake nodes have no kubelet to renew their leases: the node lifecycle controller
            // taints them unreachable after its grace period, which would stop the scheduler.
            "tolerations": [
                {"key": "node.kubernetes.io/unreachable", "operator": "Exists"},
                {"key": "node.kubernetes.io/not-ready", "operator": "Exists"}
            ],
        }
    })
}

fn instance(ns: &str, name: &str) -> Value {
    json!({
        "apiVersion": "sovereign.io/v1alpha1", "kind": "ComputeInstance",
        "metadata": {"name": name, "namespace": ns},
        "spec": {"cpu": "500m", "memory": "1Gi", "image": "registry.example/app:1", "replicas": 1}
    })
}

/// Deletes the scheduler phase's Pods at once (no kubelet would confirm a graceful delete).
async fn clear_pods(cluster: &Cluster, ns: &str) {
    let pods: Api<Pod> = Api::namespaced(cluster.client.clone(), ns);
    let _ = pods
        .delete_collection(
            &DeleteParams::default().grace_period(0),
            &ListParams::default(),
        )
        .await;
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let nodes = arg("--nodes", 1000) as usize;
    let node_count = nodes;
    let objects = arg("--objects", 5000) as usize;
    let paced = arg("--paced", 500) as usize;
    let rate = arg("--rate", 40);
    // 0: the operator's default.
    let concurrency = arg("--concurrency", 0);
    // 0: Sovereign only (a memory run at fleet scale).
    let compare = arg("--compare", 1) > 0;
    let settle = Duration::from_secs(arg("--settle-seconds", 30));
    let Some(cluster) = cluster("placement bench").await else {
        return;
    };
    let helm = sovereign_tests::chart::helm().expect("helm (hack/install-helm.sh)");
    cluster.install_crds().await;
    cluster.install_admission().await;
    cluster.apply_chart_rbac(&helm).await;
    let p = format!("pl{}", std::process::id() % 10_000);
    let site = format!("{p}-site");
    cluster
        .apply(&json!({"apiVersion": "sovereign.io/v1alpha1", "kind": "Site", "metadata": {"name": site},
            "spec": {"jurisdiction": "VN", "region": "north", "securityTier": 3}}))
        .await
        .unwrap();
    let names: Vec<String> = (0..nodes)
        .map(|i| format!("{p}-r{}-s{}", i / 20, i % 20))
        .collect();
    for r in 0..nodes.div_ceil(20) {
        cluster
            .apply(&json!({"apiVersion": "sovereign.io/v1alpha1", "kind": "Rack", "metadata": {"name": format!("{p}-r{r}")},
                "spec": {"site": site, "powerBudgetWatts": 250_000, "maxInletCelsius": 35}}))
            .await
            .unwrap();
    }
    let set_up = Instant::now();
    futures::stream::iter(names.iter().enumerate())
        .for_each_concurrent(CREATE_CONCURRENCY, |(i, name)| {
            let cluster = &cluster;
            let p = &p;
            async move {
                let node = format!("{p}-node-{i}");
                cluster.create_node(&FakeNode::new(&node)).await;
                cluster
                    .apply(
                        &json!({"apiVersion": "sovereign.io/v1alpha1", "kind": "Server",
                        "metadata": {"name": name},
                        "spec": {"rack": format!("{p}-r{}", i / 20), "nodeName": node,
                            "bmc": {"address": "https://bmc.mgmt.example",
                                "credentialsSecretRef": {"name": "bmc", "namespace": NS},
                                "insecureSkipVerify": true, "pollIntervalSeconds": 60}}}),
                    )
                    .await
                    .unwrap();
            }
        })
        .await;
    eprintln!(
        "{nodes} Nodes and Servers created in {:.1} s",
        set_up.elapsed().as_secs_f64()
    );
    let node_names: Vec<String> = (0..nodes).map(|i| format!("{p}-node-{i}")).collect();
    let _kubelets = if compare {
        Some(keep_nodes_alive(&cluster, node_names).await)
    } else {
        None
    };

    let tenant_ns = format!("{p}-data");
    let plain_ns = format!("{p}-plain");
    cluster
        .apply(&json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": plain_ns}}))
        .await
        .unwrap();
    cluster
        .apply(&json!({"apiVersion": "sovereign.io/v1alpha1", "kind": "Tenant", "metadata": {"name": format!("{p}-tenant")},
            "spec": {"classification": "Internal", "residency": {"jurisdictions": ["VN"]}, "namespaces": [tenant_ns]}}))
        .await
        .unwrap();

    let kubeconfig = cluster
        .service_account_kubeconfig(NS, "sovereign-operator")
        .await;
    let token = cluster
        .service_account_token(NS, "sovereign-collector", &["sovereign-telemetry"])
        .await;
    let port = free_port();
    let op = spawn_operator(
        Path::new(env!("CARGO_BIN_EXE_sovereign-operator")),
        "placement-operator",
        &kubeconfig,
        port,
        &if concurrency > 0 {
            vec![format!("--reconcile-concurrency={concurrency}")]
        } else {
            Vec::new()
        },
        "warn",
    );
    let (publisher, _task) = local_publisher(port, token);
    {
        let publisher = publisher.clone();
        let names = names.clone();
        tokio::spawn(async move {
            loop {
                for n in &names {
                    publisher.offer(bmc_sample(n, 64, 512, 8_000_000_000_000, false));
                }
                tokio::time::sleep(Duration::from_secs(20)).await;
            }
        });
    }
    // Every server schedulable before anything is timed.
    let servers: Api<Server> = Api::all(cluster.client.clone());
    let ready_deadline = Instant::now() + Duration::from_mins(10);
    loop {
        let ready = servers.list(&ListParams::default()).await.map_or(0, |l| {
            l.items
                .iter()
                .filter(|s| names.contains(&s.metadata.name.clone().unwrap_or_default()))
                .filter(|s| {
                    serde_json::to_value(s)
                        .is_ok_and(|v| sovereign_tests::e2e::has_condition(&v, "Ready", "True"))
                })
                .count()
        });
        if ready == nodes {
            break;
        }
        assert!(
            Instant::now() < ready_deadline,
            "{ready} of {nodes} servers Ready after 10 min"
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    // Let the first-status writes settle.
    tokio::time::sleep(Duration::from_secs(10)).await;
    eprintln!("servers Ready; measuring");

    // kube-scheduler: a Pod reaches its state when bound to a node.
    let pods_clock = Shared::default();
    observe(
        Api::<Pod>::namespaced(cluster.client.clone(), &plain_ns),
        watcher::Config::default(),
        pods_clock.clone(),
        |p: &Pod| p.spec.as_ref().and_then(|s| s.node_name.as_ref()).is_some(),
    );
    // Sovereign: placed = the placement in status; materialised = its Pod bound to the node.
    let placed_clock = Shared::default();
    observe(
        Api::<ComputeInstance>::namespaced(cluster.client.clone(), &tenant_ns),
        watcher::Config::default(),
        placed_clock.clone(),
        |c: &ComputeInstance| c.status.as_ref().is_some_and(|s| !s.replicas.is_empty()),
    );
    let bound_clock = Shared::default();
    observe(
        Api::<Pod>::namespaced(cluster.client.clone(), &tenant_ns),
        watcher::Config::default(),
        bound_clock.clone(),
        |p: &Pod| p.spec.as_ref().and_then(|s| s.node_name.as_ref()).is_some(),
    );
    tokio::time::sleep(Duration::from_secs(2)).await;

    let mut results = Vec::new();
    let pods = |prefix: &str, n: usize| -> Vec<Value> {
        (0..n)
            .map(|i| pod(&plain_ns, &format!("{prefix}-{i}")))
            .collect()
    };
    let instances = |prefix: &str, n: usize| -> Vec<Value> {
        (0..n)
            .map(|i| instance(&tenant_ns, &format!("{prefix}-{i}")))
            .collect()
    };

    // Burst: as fast as the client creates.
    if compare {
        results.push(
            run_phase(
                "kube-scheduler: created → bound",
                &cluster,
                pods("burst", objects),
                0,
                &pods_clock,
            )
            .await,
        );
        clear_pods(&cluster, &plain_ns).await;
    }
    let rss_before = rss_kib(op.child.id());
    // Instance names map to their Pods (`<instance>-<replica>`): time the Pods by instance.
    let sovereign = {
        let started = Instant::now();
        let objs = instances("burst", objects);
        for o in &objs {
            let n = o["metadata"]["name"].as_str().unwrap();
            bound_clock
                .lock()
                .unwrap()
                .created
                .insert(format!("{n}-0"), started);
        }
        let placement = run_phase(
            "sovereign: created → placed",
            &cluster,
            objs,
            0,
            &placed_clock,
        )
        .await;
        // Materialised: every Pod bound (the bound clock's creates were stamped at the start).
        let deadline = Instant::now() + Duration::from_mins(20);
        loop {
            let done = {
                let c = bound_clock.lock().unwrap();
                c.created.keys().all(|k| c.reached.contains_key(k))
            };
            if done {
                break;
            }
            assert!(Instant::now() < deadline, "pods not bound in 20 min");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let last = bound_clock
            .lock()
            .unwrap()
            .reached
            .values()
            .max()
            .copied()
            .unwrap_or(started);
        let materialised = Phase {
            name: "sovereign: created → placed and Pod bound",
            objects,
            elapsed: last.duration_since(started),
            latencies: Vec::new(),
        };
        bound_clock.lock().unwrap().created.clear();
        bound_clock.lock().unwrap().reached.clear();
        (placement, materialised)
    };
    let rss_after_burst = rss_kib(op.child.id());
    results.push(sovereign.0);
    results.push(sovereign.1);

    // Paced: a steady arrival rate.
    if paced > 0 {
        if compare {
            results.push(
                run_phase(
                    "kube-scheduler paced: created → bound",
                    &cluster,
                    pods("paced", paced),
                    rate,
                    &pods_clock,
                )
                .await,
            );
            clear_pods(&cluster, &plain_ns).await;
        }
        results.push(
            run_phase(
                "sovereign paced: created → placed",
                &cluster,
                instances("paced", paced),
                rate,
                &placed_clock,
            )
            .await,
        );
    }

    println!(
        "{nodes} nodes/servers, {objects} objects per burst, {paced} paced at {rate}/s, {CREATE_CONCURRENCY} creates in flight"
    );
    for r in &mut results {
        r.print();
    }
    if compare {
        let ratio = results[0].elapsed.as_secs_f64() / results[2].elapsed.as_secs_f64();
        println!(
            "throughput, sovereign (placed and materialised) / kube-scheduler (bound): {ratio:.2}x"
        );
        // The Leases kept every Node Ready throughout (no unreachable wave in either phase).
        let nodes: Api<k8s_openapi::api::core::v1::Node> = Api::all(cluster.client.clone());
        let ready = nodes
            .list(&ListParams::default())
            .await
            .unwrap()
            .items
            .iter()
            .filter(|n| {
                n.metadata
                    .name
                    .as_deref()
                    .is_some_and(|m| m.starts_with(&p))
            })
            .filter(|n| {
                n.status
                    .iter()
                    .flat_map(|s| s.conditions.iter().flatten())
                    .any(|c| c.type_ == "Ready" && c.status == "True")
            })
            .count();
        println!("fake Nodes Ready at the end: {ready}/{node_count}");
    }
    let end = rss_kib(op.child.id());
    tokio::time::sleep(settle).await;
    let settled = rss_kib(op.child.id());
    let (anon, file) = rss_split_kib(op.child.id());
    println!(
        "operator RSS: before the burst {} KiB, after {} KiB, at the end {} KiB, settled ({} s later) {} KiB (anonymous {anon}, file {file}), VmHWM {} KiB",
        rss_before.0,
        rss_after_burst.0,
        end.0,
        settle.as_secs(),
        settled.0,
        settled.1
    );
}
