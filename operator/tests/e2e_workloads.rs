//! End to end on a real API server: servers with live telemetry, a tenant, then volumes and
//! instances placed by the operator binary, materialised (PVs bound to PVCs by the real PV
//! binder, Pods bound to the chosen nodes), refused with reasons, placed once capacity appears,
//! scaled up and down, rolled to a new image one Pod at a time, and released on deletion.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests may panic

use std::collections::{BTreeSet, HashSet};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::api::core::v1::{PersistentVolume, PersistentVolumeClaim, Pod};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use serde_json::json;
use sovereign_crds::{ComputeInstance, Server, StorageVolume};
use sovereign_telemetry::publisher::{self, PublisherConfig};
use sovereign_tests::e2e::{
    Cluster, FakeNode, bmc_sample, cluster, free_port, has_condition, spawn_operator, wait_for,
};

const NS: &str = "sovereign-system";

async fn server(cluster: &Cluster, name: &str, rack: &str, node: &str) {
    cluster.create_node(&FakeNode::new(node)).await;
    cluster
        .apply(&json!({"apiVersion": "sovereign.io/v1alpha1", "kind": "Server",
            "metadata": {"name": name, "labels": {"sovereign.io/e2e": "workloads"}},
            "spec": {"rack": rack, "nodeName": node,
                "bmc": {"address": "https://bmc.mgmt.example", "credentialsSecretRef": {"name": "bmc", "namespace": NS},
                    "insecureSkipVerify": true, "pollIntervalSeconds": 10}}}))
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn volumes_and_instances_are_placed_materialised_and_released_on_a_real_api_server() {
    let Some(cluster) =
        cluster("volumes_and_instances_are_placed_materialised_and_released_on_a_real_api_server")
            .await
    else {
        return;
    };
    let Some(helm) = sovereign_tests::chart::helm() else {
        return;
    };
    cluster.install_crds().await;
    cluster.install_admission().await;
    cluster.apply_chart_rbac(&helm).await;
    let p = format!("wl{}", std::process::id() % 100_000);

    // One site, two racks, four servers with telemetry.
    let site = format!("{p}-site");
    cluster
        .apply(&json!({"apiVersion": "sovereign.io/v1alpha1", "kind": "Site", "metadata": {"name": site},
            "spec": {"jurisdiction": "VN", "region": "north", "securityTier": 3}}))
        .await
        .unwrap();
    let mut servers = Vec::new();
    let mut nodes = Vec::new();
    for r in 0..2 {
        let rack = format!("{p}-r{r}");
        cluster
            .apply(&json!({"apiVersion": "sovereign.io/v1alpha1", "kind": "Rack", "metadata": {"name": rack},
                "spec": {"site": site, "powerBudgetWatts": 20000, "maxInletCelsius": 35}}))
            .await
            .unwrap();
        for s in 0..2 {
            let name = format!("{rack}-s{s}");
            let node = format!("{p}-node-{r}{s}");
            server(&cluster, &name, &rack, &node).await;
            servers.push(name);
            nodes.push(node);
        }
    }
    let tenant = format!("{p}-agency");
    let ns = format!("{p}-data");
    cluster
        .apply(&json!({"apiVersion": "sovereign.io/v1alpha1", "kind": "Tenant", "metadata": {"name": tenant},
            "spec": {"classification": "Confidential", "residency": {"jurisdictions": ["VN"], "sites": [site]},
                "namespaces": [ns], "quota": {"cpu": 64, "memory": "256Gi", "storage": {"ssd": "20Ti"}}}}))
        .await
        .unwrap();

    let kubeconfig = cluster
        .service_account_kubeconfig(NS, "sovereign-operator")
        .await;
    let port = free_port();
    let operator = spawn_operator(
        Path::new(env!("CARGO_BIN_EXE_sovereign-operator")),
        "workloads-operator",
        &kubeconfig,
        port,
        &[],
        "info",
    );
    let token = cluster
        .service_account_token(NS, "sovereign-collector", &["sovereign-telemetry"])
        .await;
    let (publisher, _task) = publisher::start(
        PublisherConfig {
            endpoint: format!("http://127.0.0.1:{port}"),
            buffer: 1024,
            backoff_base: Duration::from_millis(100),
            backoff_cap: Duration::from_secs(1),
            connect_timeout: Duration::from_secs(5),
            ca_pem: None,
        },
        move || Some(token.clone()),
    );
    let intruded: Arc<Mutex<HashSet<String>>> = Arc::default();
    let feed = {
        let publisher = publisher.clone();
        let servers = servers.clone();
        let intruded = intruded.clone();
        tokio::spawn(async move {
            loop {
                for s in &servers {
                    let open = intruded.lock().unwrap().contains(s);
                    publisher.offer(bmc_sample(s, 32, 256, 4_000_000_000_000, open));
                }
                tokio::time::sleep(Duration::from_secs(2)).await;
            }
        })
    };
    let server_api: Api<Server> = Api::all(cluster.client.clone());
    for s in &servers {
        wait_for(
            Duration::from_mins(1),
            &format!("server {s} Ready"),
            || async {
                let v = serde_json::to_value(server_api.get(s).await.ok()?).ok()?;
                has_condition(&v, "Ready", "True").then_some(())
            },
        )
        .await;
    }
    wait_for(
        Duration::from_secs(30),
        "the tenant's namespace",
        || async {
            let t = serde_json::to_value(
                Api::<sovereign_crds::Tenant>::all(cluster.client.clone())
                    .get(&tenant)
                    .await
                    .ok()?,
            )
            .ok()?;
            has_condition(&t, "Ready", "True").then_some(())
        },
    )
    .await;

    // A replicated volume: two replicas on two racks, PVs bound to PVCs by the PV binder.
    let volumes: Api<StorageVolume> = Api::namespaced(cluster.client.clone(), &ns);
    let vol: StorageVolume = serde_json::from_value(json!({
        "apiVersion": "sovereign.io/v1alpha1", "kind": "StorageVolume",
        "metadata": {"name": "records", "namespace": ns},
        "spec": {"size": "100Gi", "tier": "ssd", "replicas": 2, "spread": "Rack"}
    }))
    .unwrap();
    volumes.create(&PostParams::default(), &vol).await.unwrap();
    let placed = wait_for(Duration::from_mins(1), "the volume Bound", || async {
        let v = volumes.get("records").await.ok()?;
        (v.status.as_ref()?.phase == sovereign_crds::Phase::Bound).then_some(v)
    })
    .await;
    let st = placed.status.unwrap();
    let racks: BTreeSet<&str> = st.replicas.iter().map(|r| r.rack.as_str()).collect();
    assert_eq!(racks.len(), 2, "spread Rack: {:?}", st.replicas);
    let pvcs: Api<PersistentVolumeClaim> = Api::namespaced(cluster.client.clone(), &ns);
    let volumes_pv: Api<PersistentVolume> = Api::all(cluster.client.clone());
    for r in &st.replicas {
        let pvc = pvcs.get(r.pvc.as_deref().unwrap()).await.unwrap();
        assert_eq!(pvc.status.unwrap().phase.as_deref(), Some("Bound"));
        let pv = volumes_pv.get(r.pv.as_deref().unwrap()).await.unwrap();
        let spec = pv.spec.unwrap();
        assert_eq!(
            spec.persistent_volume_reclaim_policy.as_deref(),
            Some("Retain"),
            "Confidential data is retained"
        );
        let term = &spec
            .node_affinity
            .unwrap()
            .required
            .unwrap()
            .node_selector_terms[0];
        assert_eq!(
            term.match_expressions.as_ref().unwrap()[0]
                .values
                .as_ref()
                .unwrap()[0],
            *r.node.as_ref().unwrap()
        );
    }
    let v = serde_json::to_value(volumes.get("records").await.unwrap()).unwrap();
    assert!(has_condition(&v, "Placed", "True"), "{v}");
    // kstatus: in progress (Reconciling) until Ready, never Stalled once placed.
    assert!(has_condition(&v, "Stalled", "False"), "{v}");
    assert_eq!(
        has_condition(&v, "Reconciling", "True"),
        !has_condition(&v, "Ready", "True"),
        "{v}"
    );
    assert_eq!(
        v["status"]["observedGeneration"], v["metadata"]["generation"],
        "{v}"
    );

    // An instance: Pods bound to the chosen nodes, recreated when deleted.
    let instances: Api<ComputeInstance> = Api::namespaced(cluster.client.clone(), &ns);
    let inst: ComputeInstance = serde_json::from_value(json!({
        "apiVersion": "sovereign.io/v1alpha1", "kind": "ComputeInstance",
        "metadata": {"name": "api", "namespace": ns},
        "spec": {"cpu": "4", "memory": "8Gi", "image": "registry.example/api@sha256:0123", "replicas": 2, "command": ["/api"]}
    }))
    .unwrap();
    instances
        .create(&PostParams::default(), &inst)
        .await
        .unwrap();
    let placed = wait_for(Duration::from_mins(1), "the instance's pods", || async {
        let c = instances.get("api").await.ok()?;
        (c.status.as_ref()?.phase == sovereign_crds::Phase::Bound).then_some(c)
    })
    .await;
    let pods: Api<Pod> = Api::namespaced(cluster.client.clone(), &ns);
    for r in &placed.status.as_ref().unwrap().replicas {
        let pod = pods.get(r.pod.as_deref().unwrap()).await.unwrap();
        let spec = pod.spec.unwrap();
        assert_eq!(spec.node_name.as_deref(), r.node.as_deref());
        assert_eq!(
            spec.containers[0].image.as_deref(),
            Some("registry.example/api@sha256:0123")
        );
    }
    let first = placed.status.unwrap().replicas[0].pod.clone().unwrap();
    pods.delete(&first, &DeleteParams::default().grace_period(0))
        .await
        .unwrap();
    wait_for(
        Duration::from_secs(20),
        "the deleted pod to be recreated",
        || async {
            let p = pods.get_opt(&first).await.ok()??;
            p.metadata.deletion_timestamp.is_none().then_some(())
        },
    )
    .await;

    instance_rolls_and_scales(&cluster, &ns).await;

    // Intrusion on a server holding a Confidential replica: the replica moves to a compliant
    // server (still another rack than its sibling), the new claim binds, the old PV/PVC go.
    let before = volumes.get("records").await.unwrap().status.unwrap();
    let victim = before.replicas[0].clone();
    let sibling_rack = before.replicas[1].rack.clone();
    intruded.lock().unwrap().insert(victim.server.clone());
    let moved = wait_for(
        Duration::from_mins(1),
        "the replica to move and bind",
        || async {
            let st = volumes.get("records").await.ok()?.status?;
            let r = st
                .replicas
                .iter()
                .find(|r| r.index == victim.index)?
                .clone();
            (r.server != victim.server && r.state == sovereign_crds::workload::ReplicaState::Ready)
                .then_some(r)
        },
    )
    .await;
    eprintln!(
        "moved replica {} from {} to {}",
        victim.index, victim.server, moved.server
    );
    assert_ne!(moved.rack, sibling_rack, "spread Rack kept while moving");
    wait_for(
        Duration::from_secs(30),
        "the old PV and PVC to go",
        || async {
            let old_pvc = pvcs.get_opt(victim.pvc.as_deref()?).await.ok()?;
            let old_pv = volumes_pv.get_opt(victim.pv.as_deref()?).await.ok()?;
            let gone =
                |d: Option<&k8s_openapi::apimachinery::pkg::apis::meta::v1::Time>| d.is_some();
            let pvc_gone = old_pvc.is_none_or(|p| gone(p.metadata.deletion_timestamp.as_ref()));
            let volume_gone = old_pv.is_none_or(|p| gone(p.metadata.deletion_timestamp.as_ref()));
            (pvc_gone && volume_gone).then_some(())
        },
    )
    .await;
    let events: Api<k8s_openapi::api::events::v1::Event> =
        Api::namespaced(cluster.client.clone(), &ns);
    let listed_events = events
        .list(&kube::api::ListParams::default())
        .await
        .unwrap();
    assert!(
        listed_events
            .items
            .iter()
            .any(|e| e.reason.as_deref() == Some("ReplicaMoving")
                && e.note
                    .as_deref()
                    .is_some_and(|n| n.contains(&victim.server) && n.contains("ChassisIntrusion"))),
        "an Event names from, to and why"
    );
    intruded.lock().unwrap().clear();
    volume_scales(&cluster, &ns).await;

    // Too big for any server: refused with the filters' counts, then placed once a big server
    // joins.
    let big: StorageVolume = serde_json::from_value(json!({
        "apiVersion": "sovereign.io/v1alpha1", "kind": "StorageVolume",
        "metadata": {"name": "archive", "namespace": ns},
        "spec": {"size": "6Ti", "tier": "ssd"}
    }))
    .unwrap();
    volumes.create(&PostParams::default(), &big).await.unwrap();
    let refused = wait_for(Duration::from_secs(30), "the refusal", || async {
        let v = serde_json::to_value(volumes.get("archive").await.ok()?).ok()?;
        let c = v["status"]["conditions"]
            .as_array()?
            .iter()
            .find(|c| c["type"] == "Placed")?
            .clone();
        (c["status"] == "False").then_some(c)
    })
    .await;
    let msg = refused["message"].as_str().unwrap();
    eprintln!("refusal: {msg}");
    assert!(
        msg.contains(" servers fit: ") && msg.contains("insufficient ssd"),
        "{msg}"
    );
    assert_eq!(refused["reason"], "Unschedulable");
    // GitOps tools (kstatus) read a refused volume as Failed, for the generation they applied.
    let v = serde_json::to_value(volumes.get("archive").await.unwrap()).unwrap();
    assert!(has_condition(&v, "Stalled", "True"), "{v}");
    assert!(has_condition(&v, "Reconciling", "False"), "{v}");
    assert_eq!(
        v["status"]["observedGeneration"], v["metadata"]["generation"],
        "{v}"
    );
    let big_server = format!("{p}-r1-big");
    server(
        &cluster,
        &big_server,
        &format!("{p}-r1"),
        &format!("{p}-node-big"),
    )
    .await;
    {
        let publisher = publisher.clone();
        let big_server = big_server.clone();
        tokio::spawn(async move {
            loop {
                let s = bmc_sample(&big_server, 32, 256, 16_000_000_000_000, false);
                publisher.offer(s);
                tokio::time::sleep(Duration::from_secs(2)).await;
            }
        });
    }
    let v = wait_for(Duration::from_mins(1), "the big volume placed", || async {
        let v = volumes.get("archive").await.ok()?;
        (v.status.as_ref()?.replicas.len() == 1).then_some(v)
    })
    .await;
    assert_eq!(v.status.unwrap().replicas[0].server, big_server);

    // The tenant's usage is the ledger's, and within quota.
    let tenants: Api<sovereign_crds::Tenant> = Api::all(cluster.client.clone());
    let t = wait_for(Duration::from_secs(30), "the tenant's usage", || async {
        let t = serde_json::to_value(tenants.get(&tenant).await.ok()?).ok()?;
        (t["status"]["usage"]["storage"]["ssd"].is_string()
            && has_condition(&t, "QuotaExceeded", "False"))
        .then_some(t)
    })
    .await;
    eprintln!("tenant usage: {}", t["status"]["usage"]);

    // Classification raised to Secret (needs a tier-4 site; this one is tier 3): the replicas
    // have nowhere compliant to go, so they stay, Degraded, saying why.
    cluster
        .apply(&json!({"apiVersion": "sovereign.io/v1alpha1", "kind": "Tenant", "metadata": {"name": tenant},
            "spec": {"classification": "Secret", "residency": {"jurisdictions": ["VN"], "sites": [site]},
                "namespaces": [ns], "quota": {"cpu": 64, "memory": "256Gi", "storage": {"ssd": "20Ti"}}}}))
        .await
        .unwrap();
    let degraded = wait_for(
        Duration::from_secs(30),
        "the volume Degraded by the new classification",
        || async {
            let v = serde_json::to_value(volumes.get("records").await.ok()?).ok()?;
            let c = v["status"]["conditions"]
                .as_array()?
                .iter()
                .find(|c| c["type"] == "Degraded")?
                .clone();
            (c["status"] == "True" && c["reason"] == "NoCompliantServer").then_some(c)
        },
    )
    .await;
    let why = degraded["message"].as_str().unwrap();
    eprintln!("degraded: {why}");
    assert!(
        why.contains("SecurityTierBelowClassification") && why.contains("security tier 4"),
        "{why}"
    );
    let t = wait_for(
        Duration::from_secs(30),
        "the tenant to report the replicas outside policy",
        || async {
            let t = serde_json::to_value(tenants.get(&tenant).await.ok()?).ok()?;
            has_condition(&t, "PlacementsCompliant", "False").then_some(t)
        },
    )
    .await;
    eprintln!("tenant: {}", t["status"]["conditions"]);

    // Deletion releases: PVs and PVCs go, and the finalizer lets the volume go.
    let pv_names: Vec<String> = st.replicas.iter().filter_map(|r| r.pv.clone()).collect();
    volumes
        .delete("records", &DeleteParams::default())
        .await
        .unwrap();
    wait_for(
        Duration::from_secs(30),
        "the volume and its PVs to go",
        || async {
            if volumes.get_opt("records").await.ok()?.is_some() {
                return None;
            }
            for pv in &pv_names {
                if volumes_pv
                    .get_opt(pv)
                    .await
                    .ok()?
                    .is_some_and(|p| p.metadata.deletion_timestamp.is_none())
                {
                    return None;
                }
            }
            Some(())
        },
    )
    .await;
    feed.abort();

    // An instance carries no finalizer (one API write less per instance): deleted, it is gone
    // at once, its Pods go by garbage collection and the ledger gives its capacity back (the
    // tenant's usage, which the ledger writes, loses its cpu).
    let api_now = instances.get("api").await.unwrap();
    assert!(
        api_now.metadata.finalizers.unwrap_or_default().is_empty(),
        "an instance needs no finalizer"
    );
    let cpu_used = |t: &serde_json::Value| t["status"]["usage"]["cpu"].as_str().map(str::to_owned);
    let before = serde_json::to_value(tenants.get(&tenant).await.unwrap()).unwrap();
    assert!(
        cpu_used(&before).is_some(),
        "the instance's cpu is in the tenant's usage: {}",
        before["status"]["usage"]
    );
    instances
        .delete("api", &DeleteParams::default())
        .await
        .unwrap();
    wait_for(
        Duration::from_secs(30),
        "the instance's capacity released and its Pods gone",
        || async {
            let t = serde_json::to_value(tenants.get(&tenant).await.ok()?).ok()?;
            let left = pods.list(&ListParams::default()).await.ok()?.items;
            kubelet_confirms_deletions(&pods).await;
            (instances.get_opt("api").await.ok()?.is_none()
                && cpu_used(&t).is_none()
                && left.is_empty())
            .then_some(())
        },
    )
    .await;

    // Leave nothing behind: volumes first (their finalizers need the operator), then the rest.
    volumes
        .delete("archive", &DeleteParams::default())
        .await
        .unwrap();
    wait_for(Duration::from_secs(30), "workloads to go", || async {
        let none = volumes.get_opt("archive").await.ok()?.is_none()
            && instances.get_opt("api").await.ok()?.is_none();
        none.then_some(())
    })
    .await;
    tenants
        .delete(&tenant, &DeleteParams::default())
        .await
        .unwrap();
    wait_for(Duration::from_secs(30), "the tenant to go", || async {
        tenants.get_opt(&tenant).await.ok()?.is_none().then_some(())
    })
    .await;
    for s in servers.iter().chain([&big_server]) {
        let _ = server_api.delete(s, &DeleteParams::default()).await;
    }
    nodes.push(format!("{p}-node-big"));
    cluster.delete_nodes(&nodes).await;
    operator.assert_watches_held();
}

/// What a kubelet does for a Pod being deleted on its node: confirms it (there is none here).
async fn kubelet_confirms_deletions(pods: &Api<Pod>) {
    for p in pods.list(&ListParams::default()).await.unwrap() {
        if p.metadata.deletion_timestamp.is_some() {
            let _ = pods
                .delete(
                    &p.metadata.name.unwrap(),
                    &DeleteParams::default().grace_period(0),
                )
                .await;
        }
    }
}

async fn events_with_reason(cluster: &Cluster, ns: &str, reason: &str) -> Vec<String> {
    Api::<k8s_openapi::api::events::v1::Event>::namespaced(cluster.client.clone(), ns)
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter(|e| e.reason.as_deref() == Some(reason))
        .filter_map(|e| e.note)
        .collect()
}

/// A new image rolls the Pods one at a time; more replicas get Pods on other servers; fewer
/// release the highest-numbered ones.
async fn instance_rolls_and_scales(cluster: &Cluster, ns: &str) {
    let instances: Api<ComputeInstance> = Api::namespaced(cluster.client.clone(), ns);
    let pods: Api<Pod> = Api::namespaced(cluster.client.clone(), ns);
    let merge = |spec: serde_json::Value| Patch::Merge(json!({ "spec": spec }));
    let new_image = "registry.example/api@sha256:4567";
    instances
        .patch(
            "api",
            &PatchParams::default(),
            &merge(json!({"image": new_image})),
        )
        .await
        .unwrap();
    let most_down = std::sync::atomic::AtomicUsize::new(0);
    wait_for(
        Duration::from_mins(1),
        "every pod on the new image",
        || async {
            let listed = pods.list(&ListParams::default()).await.ok()?.items;
            let up: Vec<&Pod> = listed
                .iter()
                .filter(|p| p.metadata.deletion_timestamp.is_none())
                .collect();
            most_down.fetch_max(
                2usize.saturating_sub(up.len()),
                std::sync::atomic::Ordering::Relaxed,
            );
            kubelet_confirms_deletions(&pods).await;
            let current = up
                .iter()
                .filter(|p| {
                    p.spec.as_ref().unwrap().containers[0].image.as_deref() == Some(new_image)
                })
                .count();
            let c = serde_json::to_value(instances.get("api").await.ok()?).ok()?;
            let rolling = c["status"]["conditions"]
                .as_array()?
                .iter()
                .any(|k| k["type"] == "Ready" && k["reason"] == "RollingOut");
            (current == 2 && up.len() == 2 && !rolling).then_some(())
        },
    )
    .await;
    let most_down = most_down.into_inner();
    assert!(
        most_down <= 1,
        "the rollout took {most_down} pods down at once"
    );

    // Scale up: the third replica on a server the others do not use, its Pod bound there.
    instances
        .patch(
            "api",
            &PatchParams::default(),
            &merge(json!({"replicas": 3})),
        )
        .await
        .unwrap();
    let grown = wait_for(Duration::from_secs(30), "three pods bound", || async {
        let c = instances.get("api").await.ok()?;
        let st = c.status?;
        (st.replicas.len() == 3 && st.phase == sovereign_crds::Phase::Bound).then_some(st)
    })
    .await;
    let servers: BTreeSet<&str> = grown.replicas.iter().map(|r| r.server.as_str()).collect();
    assert_eq!(servers.len(), 3, "spread Server: {:?}", grown.replicas);
    for r in &grown.replicas {
        let pod = pods.get(r.pod.as_deref().unwrap()).await.unwrap();
        assert_eq!(pod.spec.unwrap().node_name, r.node);
    }
    assert!(
        !events_with_reason(cluster, ns, "ScaledUp").await.is_empty(),
        "an Event says where the new replica went"
    );

    // Scale down: replicas 1 and 2 go, their Pods with them.
    instances
        .patch(
            "api",
            &PatchParams::default(),
            &merge(json!({"replicas": 1})),
        )
        .await
        .unwrap();
    wait_for(Duration::from_secs(30), "one replica left", || async {
        let st = instances.get("api").await.ok()?.status?;
        kubelet_confirms_deletions(&pods).await;
        let live = pods.list(&ListParams::default()).await.ok()?.items.len();
        (st.replicas.len() == 1 && st.replicas[0].index == 0 && live == 1).then_some(())
    })
    .await;
    let released = events_with_reason(cluster, ns, "ReplicasReleased").await;
    assert!(
        released.iter().any(|n| n.contains("Pods deleted")),
        "{released:?}"
    );
}

/// A volume asked for more replicas than it has failure domains stays as it is, Degraded with
/// the reason; fewer releases the highest-numbered replica's PV and PVC; more again places one.
async fn volume_scales(cluster: &Cluster, ns: &str) {
    let volumes: Api<StorageVolume> = Api::namespaced(cluster.client.clone(), ns);
    let pvcs: Api<PersistentVolumeClaim> = Api::namespaced(cluster.client.clone(), ns);
    let merge = |n: u8| Patch::Merge(json!({ "spec": {"replicas": n} }));
    volumes
        .patch("records", &PatchParams::default(), &merge(3))
        .await
        .unwrap();
    let degraded = wait_for(
        Duration::from_secs(30),
        "the third replica refused",
        || async {
            let v = serde_json::to_value(volumes.get("records").await.ok()?).ok()?;
            let c = v["status"]["conditions"]
                .as_array()?
                .iter()
                .find(|c| c["type"] == "Degraded" && c["reason"] == "Unschedulable")?
                .clone();
            Some(c)
        },
    )
    .await;
    let why = degraded["message"].as_str().unwrap();
    eprintln!("scale-up refused: {why}");
    assert_eq!(degraded["status"], "True");
    assert!(why.contains("2 of 3 replicas placed"), "{why}");
    let st = volumes.get("records").await.unwrap().status.unwrap();
    assert_eq!(st.replicas.len(), 2, "a refused scale-up changes nothing");

    volumes
        .patch("records", &PatchParams::default(), &merge(2))
        .await
        .unwrap();
    wait_for(
        Duration::from_secs(30),
        "back to two replicas, not degraded",
        || async {
            let v = serde_json::to_value(volumes.get("records").await.ok()?).ok()?;
            has_condition(&v, "Degraded", "False").then_some(())
        },
    )
    .await;

    // Fewer replicas: the highest-numbered goes with its claim; more again places one.
    let scratch: StorageVolume = serde_json::from_value(json!({
        "apiVersion": "sovereign.io/v1alpha1", "kind": "StorageVolume",
        "metadata": {"name": "scratch", "namespace": ns},
        "spec": {"size": "10Gi", "tier": "ssd", "replicas": 2}
    }))
    .unwrap();
    volumes
        .create(&PostParams::default(), &scratch)
        .await
        .unwrap();
    let st = wait_for(Duration::from_mins(1), "scratch Bound", || async {
        let st = volumes.get("scratch").await.ok()?.status?;
        (st.phase == sovereign_crds::Phase::Bound).then_some(st)
    })
    .await;
    volumes
        .patch("scratch", &PatchParams::default(), &merge(1))
        .await
        .unwrap();
    let leaving = st.replicas[1].clone();
    wait_for(
        Duration::from_secs(30),
        "replica 1 released with its claim",
        || async {
            let now = volumes.get("scratch").await.ok()?.status?;
            let claim = pvcs.get_opt(leaving.pvc.as_deref()?).await.ok()?;
            (now.replicas.len() == 1
                && claim.is_none_or(|c| c.metadata.deletion_timestamp.is_some()))
            .then_some(())
        },
    )
    .await;
    volumes
        .patch("scratch", &PatchParams::default(), &merge(2))
        .await
        .unwrap();
    let back = wait_for(
        Duration::from_mins(1),
        "two replicas bound again",
        || async {
            let now = volumes.get("scratch").await.ok()?.status?;
            (now.replicas.len() == 2 && now.phase == sovereign_crds::Phase::Bound).then_some(now)
        },
    )
    .await;
    let servers: BTreeSet<&str> = back.replicas.iter().map(|r| r.server.as_str()).collect();
    assert_eq!(servers.len(), 2, "spread Server kept: {:?}", back.replicas);
    volumes
        .delete("scratch", &DeleteParams::default())
        .await
        .unwrap();
    wait_for(Duration::from_secs(30), "scratch to go", || async {
        volumes
            .get_opt("scratch")
            .await
            .ok()?
            .is_none()
            .then_some(())
    })
    .await;
}
