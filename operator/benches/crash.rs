//! Crash test against the cluster in KUBECONFIG: the operator binary is SIGKILLed at random
//! moments (and restarted at once) while StorageVolumes and ComputeInstances are created. After
//! convergence it checks, and prints: every workload placed exactly once (replica count and
//! distinct indices), no PV, PVC or Pod orphaned or duplicated, and the ledger (the tenant's
//! usage, which the operator computes from its books) equal to the sum of the status replicas.
//!
//! `cargo bench -p sovereign-operator --bench crash -- [--objects 1000] [--kills 10] [--servers 40]`
//! Exits non-zero on any violation. Run it on a control plane of its own (see README).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // a bench may panic
#![allow(clippy::cast_precision_loss, clippy::cast_possible_truncation)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Namespace, Node, PersistentVolume, PersistentVolumeClaim, Pod};
use kube::api::{Api, DeleteParams, ListParams, PostParams};
use serde_json::json;
use sovereign_crds::{ComputeInstance, Phase, Rack, Server, Site, StorageVolume, Tenant};
use sovereign_tests::bench::arg;
use sovereign_tests::e2e::{
    ChildGuard, FakeNode, bmc_sample, cluster, local_publisher, spawn_operator,
};

const NS: &str = "sovereign-system";

fn operator(kubeconfig: &Path, port: u16, run: u32) -> ChildGuard {
    spawn_operator(
        Path::new(env!("CARGO_BIN_EXE_sovereign-operator")),
        &format!("crash-operator-{run}"),
        kubeconfig,
        port,
        &[],
        "warn",
    )
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let objects = arg("--objects", 1000) as usize;
    let kills = arg("--kills", 10) as u32;
    let servers = arg("--servers", 40) as usize;
    let Some(cluster) = cluster("crash bench").await else {
        return;
    };
    let helm = sovereign_tests::chart::helm().expect("helm (hack/install-helm.sh)");
    cluster.install_crds().await;
    cluster.install_admission().await;
    cluster.apply_chart_rbac(&helm).await;
    let p = format!("crash{}", std::process::id() % 10_000);
    let site = format!("{p}-site");
    cluster
        .apply(&json!({"apiVersion": "sovereign.io/v1alpha1", "kind": "Site", "metadata": {"name": site},
            "spec": {"jurisdiction": "VN", "region": "north", "securityTier": 3}}))
        .await
        .unwrap();
    let mut names = Vec::new();
    for i in 0..servers {
        let rack = format!("{p}-r{}", i / 10);
        if i % 10 == 0 {
            cluster
                .apply(&json!({"apiVersion": "sovereign.io/v1alpha1", "kind": "Rack", "metadata": {"name": rack},
                    "spec": {"site": site, "powerBudgetWatts": 250_000, "maxInletCelsius": 35}}))
                .await
                .unwrap();
        }
        let name = format!("{rack}-s{}", i % 10);
        let node = format!("{p}-node-{i}");
        cluster.create_node(&FakeNode::new(&node)).await;
        cluster
            .apply(&json!({"apiVersion": "sovereign.io/v1alpha1", "kind": "Server",
                "metadata": {"name": name, "labels": {"sovereign.io/crash": p}},
                "spec": {"rack": rack, "nodeName": node, "bmc": {"address": "https://bmc.mgmt.example",
                    "credentialsSecretRef": {"name": "bmc", "namespace": NS}, "insecureSkipVerify": true,
                    "pollIntervalSeconds": 60}}}))
            .await
            .unwrap();
        names.push(name);
    }
    let tenant = format!("{p}-tenant");
    let ns = format!("{p}-data");
    cluster
        .apply(&json!({"apiVersion": "sovereign.io/v1alpha1", "kind": "Tenant", "metadata": {"name": tenant},
            "spec": {"classification": "Internal", "residency": {"jurisdictions": ["VN"]}, "namespaces": [ns]}}))
        .await
        .unwrap();

    let kubeconfig = cluster
        .service_account_kubeconfig(NS, "sovereign-operator")
        .await;
    let token = cluster
        .service_account_token(NS, "sovereign-collector", &["sovereign-telemetry"])
        .await;
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut op = operator(&kubeconfig, port, 0);
    let (publisher, _task) = local_publisher(port, token);
    {
        let publisher = publisher.clone();
        let names = names.clone();
        tokio::spawn(async move {
            loop {
                for n in &names {
                    publisher.offer(bmc_sample(n, 256, 2048, 200_000_000_000_000, false));
                }
                tokio::time::sleep(Duration::from_secs(5)).await;
            }
        });
    }
    // Servers ready before the storm.
    let tenants: Api<Tenant> = Api::all(cluster.client.clone());
    for _ in 0..600 {
        let t = tenants
            .get(&tenant)
            .await
            .ok()
            .and_then(|t| serde_json::to_value(t).ok());
        if t.as_ref()
            .is_some_and(|t| sovereign_tests::e2e::has_condition(t, "Ready", "True"))
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_secs(3)).await;

    // Create while killing.
    let creating = Arc::new(AtomicBool::new(true));
    let started = Instant::now();
    let volumes: Api<StorageVolume> = Api::namespaced(cluster.client.clone(), &ns);
    let instances: Api<ComputeInstance> = Api::namespaced(cluster.client.clone(), &ns);
    let create = {
        let volumes = volumes.clone();
        let instances = instances.clone();
        let ns = ns.clone();
        let creating = creating.clone();
        async move {
            futures::stream::iter(0..objects)
                .for_each_concurrent(8, |i| {
                    let (volumes, instances, ns) = (volumes.clone(), instances.clone(), ns.clone());
                    async move {
                        if i % 2 == 0 {
                            let v: StorageVolume = serde_json::from_value(json!({
                                "apiVersion": "sovereign.io/v1alpha1", "kind": "StorageVolume",
                                "metadata": {"name": format!("v{i}"), "namespace": ns},
                                "spec": {"size": "10Gi", "tier": "ssd", "replicas": 2}
                            }))
                            .unwrap();
                            let _ = volumes.create(&PostParams::default(), &v).await;
                        } else {
                            let c: ComputeInstance = serde_json::from_value(json!({
                                "apiVersion": "sovereign.io/v1alpha1", "kind": "ComputeInstance",
                                "metadata": {"name": format!("c{i}"), "namespace": ns},
                                "spec": {"cpu": "500m", "memory": "1Gi", "image": "registry.example/app:1", "replicas": 2}
                            }))
                            .unwrap();
                            let _ = instances.create(&PostParams::default(), &c).await;
                        }
                    }
                })
                .await;
            creating.store(false, Ordering::Relaxed);
        }
    };
    let kill = async {
        let mut done = 0;
        while done < kills {
            tokio::time::sleep(Duration::from_millis(500 + fastrand::u64(0..2500))).await;
            op.kill();
            done += 1;
            op = operator(&kubeconfig, port, done);
        }
        done
    };
    let ((), killed) = tokio::join!(create, kill);
    let created_in = started.elapsed();

    // Converge.
    let deadline = Instant::now() + Duration::from_mins(5);
    let lp = ListParams::default();
    let (vs, cs) = loop {
        let vs = volumes.list(&lp).await.unwrap().items;
        let cs = instances.list(&lp).await.unwrap().items;
        // Converged: every workload placed with both replicas recorded (binding the PVCs is the
        // controller-manager's PV binder, reported separately below).
        let placed = vs
            .iter()
            .filter(|v| v.status.as_ref().is_some_and(|s| s.replicas.len() == 2))
            .count()
            + cs.iter()
                .filter(|c| c.status.as_ref().is_some_and(|s| s.replicas.len() == 2))
                .count();
        // ... and materialised, and the ledger caught up (the tenant's usage is the ledger's).
        let managed =
            ListParams::default().labels("app.kubernetes.io/managed-by=sovereign-operator");
        let children = Api::<PersistentVolumeClaim>::namespaced(cluster.client.clone(), &ns)
            .list(&managed)
            .await
            .map_or(0, |l| l.items.len())
            + Api::<Pod>::namespaced(cluster.client.clone(), &ns)
                .list(&managed)
                .await
                .map_or(0, |l| l.items.len());
        // The tenant's usage is rewritten at most every 5 s: wait for both kinds in it.
        let usage = tenants
            .get(&tenant)
            .await
            .ok()
            .and_then(|t| t.status?.usage);
        let usage_cpu = usage
            .as_ref()
            .and_then(|u| u.cpu.as_ref()?.parse().ok()?.to_milli().ok());
        let usage_ssd = usage.as_ref().and_then(|u| {
            u.storage
                .as_ref()?
                .ssd
                .as_ref()?
                .parse()
                .ok()?
                .to_units()
                .ok()
        });
        let want_cpu = 500 * 2 * cs.len() as u64;
        let want_ssd = 10 * (1 << 30) * 2 * vs.len() as u64;
        if (placed == objects
            && children == 2 * objects
            && usage_cpu == Some(want_cpu)
            && usage_ssd == Some(want_ssd))
            || Instant::now() > deadline
        {
            break (vs, cs);
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    };
    let converged_in = started.elapsed();

    let mut violations = Vec::new();
    let mut want_pvcs = BTreeSet::new();
    let mut want_volumes = BTreeSet::new();
    let mut want_pods = BTreeSet::new();
    let (mut cpu_milli, mut mem, mut ssd) = (0u64, 0u64, 0u64);
    let mut bound_volumes = 0;
    for v in &vs {
        let st = v.status.clone().unwrap_or_default();
        let idx: BTreeSet<u8> = st.replicas.iter().map(|r| r.index).collect();
        if st.phase == Phase::Bound {
            bound_volumes += 1;
        }
        if st.replicas.len() != 2 || idx.len() != 2 {
            violations.push(format!(
                "volume {:?}: {:?} with {} replicas",
                v.metadata.name,
                st.phase,
                st.replicas.len()
            ));
        }
        want_pvcs.extend(st.replicas.iter().filter_map(|r| r.pvc.clone()));
        want_volumes.extend(st.replicas.iter().filter_map(|r| r.pv.clone()));
        ssd += 10 * (1 << 30) * st.replicas.len() as u64;
    }
    for c in &cs {
        let st = c.status.clone().unwrap_or_default();
        let idx: BTreeSet<u8> = st.replicas.iter().map(|r| r.index).collect();
        if st.replicas.len() != 2 || idx.len() != 2 {
            violations.push(format!(
                "instance {:?}: {:?} with {} replicas",
                c.metadata.name,
                st.phase,
                st.replicas.len()
            ));
        }
        want_pods.extend(st.replicas.iter().filter_map(|r| r.pod.clone()));
        cpu_milli += 500 * st.replicas.len() as u64;
        mem += (1 << 30) * st.replicas.len() as u64;
    }
    if vs.len() + cs.len() != objects {
        violations.push(format!(
            "{} of {objects} objects exist",
            vs.len() + cs.len()
        ));
    }
    let managed = ListParams::default().labels("app.kubernetes.io/managed-by=sovereign-operator");
    let pvcs: BTreeSet<String> =
        Api::<PersistentVolumeClaim>::namespaced(cluster.client.clone(), &ns)
            .list(&managed)
            .await
            .unwrap()
            .items
            .into_iter()
            .filter_map(|p| p.metadata.name)
            .collect();
    let pods: BTreeSet<String> = Api::<Pod>::namespaced(cluster.client.clone(), &ns)
        .list(&managed)
        .await
        .unwrap()
        .items
        .into_iter()
        .filter_map(|p| p.metadata.name)
        .collect();
    let volumes_pv: BTreeSet<String> = Api::<PersistentVolume>::all(cluster.client.clone())
        .list(&managed)
        .await
        .unwrap()
        .items
        .into_iter()
        .filter(|p| {
            p.metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get("sovereign.io/volume"))
                .is_some_and(|v| v.starts_with(&format!("{ns}/")))
        })
        .filter_map(|p| p.metadata.name)
        .collect();
    for (what, want, have) in [
        ("PVC", &want_pvcs, &pvcs),
        ("PV", &want_volumes, &volumes_pv),
        ("Pod", &want_pods, &pods),
    ] {
        let orphans: Vec<_> = have.difference(want).collect();
        let missing: Vec<_> = want.difference(have).collect();
        if !orphans.is_empty() || !missing.is_empty() {
            violations.push(format!(
                "{what}: {} orphaned {:?}, {} missing {:?}",
                orphans.len(),
                orphans.iter().take(3).collect::<Vec<_>>(),
                missing.len(),
                missing.iter().take(3).collect::<Vec<_>>()
            ));
        }
    }
    // The ledger: the operator's usage for the tenant equals the sum of the status replicas.
    let usage = tenants
        .get(&tenant)
        .await
        .unwrap()
        .status
        .and_then(|s| s.usage);
    let got: BTreeMap<&str, u64> = usage.as_ref().map_or_else(BTreeMap::new, |u| {
        let parse = |q: &Option<sovereign_crds::Quantity>, milli: bool| {
            q.as_ref()
                .and_then(|q| q.parse().ok())
                .and_then(|p| {
                    if milli {
                        p.to_milli().ok()
                    } else {
                        p.to_units().ok()
                    }
                })
                .unwrap_or(0)
        };
        BTreeMap::from([
            ("cpu_milli", parse(&u.cpu, true)),
            ("memory", parse(&u.memory, false)),
            (
                "ssd",
                parse(&u.storage.as_ref().and_then(|s| s.ssd.clone()), false),
            ),
        ])
    });
    let want = BTreeMap::from([("cpu_milli", cpu_milli), ("memory", mem), ("ssd", ssd)]);
    if got != want {
        violations.push(format!("ledger {got:?} != status replicas {want:?}"));
    }
    println!(
        "objects {objects} ({} volumes, {} instances), operator killed {killed} times",
        vs.len(),
        cs.len()
    );
    println!(
        "created in {:.1} s, converged in {:.1} s",
        created_in.as_secs_f64(),
        converged_in.as_secs_f64()
    );
    println!(
        "PVs {}, PVCs {}, Pods {} (as named by status: {}, {}, {})",
        volumes_pv.len(),
        pvcs.len(),
        pods.len(),
        want_volumes.len(),
        want_pvcs.len(),
        want_pods.len()
    );
    println!("ledger usage {got:?}; sum of status replicas {want:?}");
    println!(
        "volumes Bound (PVCs bound by the PV binder) at the end: {bound_volumes}/{}",
        vs.len()
    );
    // With the operator still running, so the volumes' finalizers let them go.
    cleanup(&cluster, &p, &tenant, &ns, &site, &names).await;
    drop(op);
    if violations.is_empty() {
        println!("exactly once: OK");
    } else {
        for v in violations.iter().take(20) {
            println!("VIOLATION {v}");
        }
        std::process::exit(1);
    }
}

/// Leaves the cluster as it found it: a shared control plane with 1,000 leftover objects slows
/// every operator started on it afterwards.
async fn cleanup(
    cluster: &sovereign_tests::e2e::Cluster,
    p: &str,
    tenant: &str,
    ns: &str,
    site: &str,
    servers: &[String],
) {
    let c = cluster.client.clone();
    let dp = DeleteParams::default();
    let all = ListParams::default();
    let volumes = Api::<StorageVolume>::namespaced(c.clone(), ns);
    let instances = Api::<ComputeInstance>::namespaced(c.clone(), ns);
    let _ = volumes.delete_collection(&dp, &all).await;
    let _ = instances.delete_collection(&dp, &all).await;
    for _ in 0..120 {
        let left = volumes.list(&all).await.map_or(0, |l| l.items.len())
            + instances.list(&all).await.map_or(0, |l| l.items.len());
        if left == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    // No kubelet confirms a Pod's end: delete them at once so the namespace can go.
    let _ = Api::<Pod>::namespaced(c.clone(), ns)
        .delete_collection(&DeleteParams::default().grace_period(0), &all)
        .await;
    let _ = Api::<Namespace>::all(c.clone()).delete(ns, &dp).await;
    let _ = Api::<Tenant>::all(c.clone()).delete(tenant, &dp).await;
    let _ = Api::<Server>::all(c.clone())
        .delete_collection(
            &dp,
            &ListParams::default().labels(&format!("sovereign.io/crash={p}")),
        )
        .await;
    let racks: BTreeSet<String> = servers
        .iter()
        .filter_map(|s| s.rsplit_once('-').map(|(r, _)| r.to_string()))
        .collect();
    for rack in racks {
        let _ = Api::<Rack>::all(c.clone()).delete(&rack, &dp).await;
    }
    let _ = Api::<Site>::all(c.clone()).delete(site, &dp).await;
    for i in 0..servers.len() {
        let _ = Api::<Node>::all(c.clone())
            .delete(&format!("{p}-node-{i}"), &dp)
            .await;
    }
    // PVs are cluster-scoped and Retain: the operator's finalizers release them with the
    // workloads; whatever is left after the namespace goes is removed here.
    if let Ok(list) = Api::<PersistentVolume>::all(c.clone())
        .list(&ListParams::default().labels("app.kubernetes.io/managed-by=sovereign-operator"))
        .await
    {
        for pv in list.items.into_iter().filter(|pv| {
            pv.metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get("sovereign.io/volume"))
                .is_some_and(|v| v.starts_with(&format!("{ns}/")))
        }) {
            if let Some(name) = pv.metadata.name {
                let _ = Api::<PersistentVolume>::all(c.clone())
                    .delete(&name, &dp)
                    .await;
            }
        }
    }
}
