//! `kubectl sovereign` against a real API server: `top servers`, `capacity` and `why` answer
//! from live objects, and a missing cluster is said in words.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests may panic

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

use k8s_openapi::api::core::v1::Namespace;
use kube::api::{Api, DeleteParams, Patch, PatchParams};
use serde_json::{Value, json};
use sovereign_crds::{Rack, Server, Site, StorageVolume, Tenant};
use sovereign_tests::e2e::{cluster, unique};

fn plugin(kubeconfig: &str, args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_kubectl-sovereign"))
        .args(args)
        .env("KUBECONFIG", kubeconfig)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn condition(type_: &str, status: &str, reason: &str, message: &str) -> Value {
    json!({"type": type_, "status": status, "reason": reason, "message": message,
        "lastTransitionTime": "2026-11-29T00:00:00Z"})
}

#[tokio::test]
async fn the_plugin_answers_top_capacity_and_why_from_the_cluster() {
    let Some(cluster) = cluster("kubectl sovereign").await else {
        return;
    };
    cluster.install_crds().await;
    let kubeconfig = std::env::var("KUBECONFIG").unwrap_or_default();
    let p = unique("pl");
    let site = format!("{p}-hn");
    cluster
        .apply(&json!({"apiVersion": "sovereign.io/v1alpha1", "kind": "Site", "metadata": {"name": site},
            "spec": {"jurisdiction": "VN", "region": "north", "securityTier": 3}}))
        .await
        .unwrap();
    let rack = format!("{site}-r1");
    cluster
        .apply(&json!({"apiVersion": "sovereign.io/v1alpha1", "kind": "Rack", "metadata": {"name": rack},
            "spec": {"site": site, "powerBudgetWatts": 12000, "maxInletCelsius": 35}}))
        .await
        .unwrap();
    let servers: Api<Server> = Api::all(cluster.client.clone());
    let now = chrono_now();
    for (name, watts, inlet, health, sched) in [
        ("s1", 350, 22.0, "OK", ("True", "Schedulable")),
        ("s2", 1950, 24.0, "Critical", ("False", "ChassisIntrusion")),
    ] {
        let name = format!("{rack}-{name}");
        cluster
            .apply(&json!({"apiVersion": "sovereign.io/v1alpha1", "kind": "Server", "metadata": {"name": name},
                "spec": {"rack": rack, "nodeName": format!("{name}-node"), "bmc": {"address": "https://10.0.0.1",
                    "credentialsSecretRef": {"name": "bmc", "namespace": "sovereign-system"},
                    "insecureSkipVerify": true},
                    "capacity": {"cpu": "64", "memory": "512Gi", "storage": {"ssd": "8Ti"}}}}))
            .await
            .unwrap();
        let status = json!({"status": {
        "health": health,
        "lastSeen": now,
        "power": {"consumedWatts": watts},
        "thermal": {"inletCelsius": inlet, "cpuMaxCelsius": 41.0, "fanCount": 6},
        "security": {"intrusion": if sched.0 == "True" {"Normal"} else {"HardwareIntrusion"}},
        "capacity": {"cpu": "64", "memory": "512Gi", "storage": {"ssd": "8Ti"}},
        "conditions": [
            condition("Ready", sched.0, sched.1, ""),
            condition("Schedulable", sched.0, sched.1, "")
        ]}});
        servers
            .patch_status(&name, &PatchParams::default(), &Patch::Merge(&status))
            .await
            .unwrap();
    }

    // top servers: the hungriest first, the intrusion said.
    let (ok, out, err) = plugin(
        &kubeconfig,
        &["top", "servers", "--site", &site, "--sort", "power"],
    );
    assert!(ok, "{err}");
    let s2 = out.find(&format!("{rack}-s2")).unwrap_or(usize::MAX);
    let s1 = out.find(&format!("{rack}-s1")).unwrap_or(usize::MAX);
    assert!(s2 < s1 && s1 < usize::MAX, "{out}");
    assert!(
        out.contains("1950") && out.contains("ChassisIntrusion"),
        "{out}"
    );
    let (ok, json_out, err) = plugin(
        &kubeconfig,
        &[
            "top", "servers", "--site", &site, "--health", "critical", "-o", "json",
        ],
    );
    assert!(ok, "{err}");
    let rows: Vec<Value> = serde_json::from_str(&json_out).unwrap();
    assert_eq!(rows.len(), 1, "{json_out}");
    assert_eq!(rows[0]["powerWatts"], 1950);

    // capacity: the site and its rack, one of two servers schedulable.
    let (ok, json_out, err) = plugin(&kubeconfig, &["capacity", "-o", "json"]);
    assert!(ok, "{err}");
    let rows: Vec<Value> = serde_json::from_str(&json_out).unwrap();
    let mine: Vec<&Value> = rows.iter().filter(|r| r["site"] == site.as_str()).collect();
    assert!(
        mine.iter().any(|r| r["rack"] == rack.as_str()
            && r["servers"] == 2
            && r["schedulableServers"] == 1),
        "{json_out}"
    );

    // why: a volume's replicas and the decision.
    let tenant = format!("{p}-t");
    let ns = format!("{p}-data");
    cluster
        .ensure_namespace(
            &ns,
            &BTreeMap::from([("sovereign.io/tenant".to_owned(), tenant.clone())]),
        )
        .await;
    cluster
        .apply(&json!({"apiVersion": "sovereign.io/v1alpha1", "kind": "Tenant", "metadata": {"name": tenant},
            "spec": {"classification": "Internal", "residency": {"jurisdictions": ["VN"]}, "namespaces": [ns]}}))
        .await
        .unwrap();
    cluster
        .apply(
            &json!({"apiVersion": "sovereign.io/v1alpha1", "kind": "StorageVolume",
            "metadata": {"name": "db", "namespace": ns},
            "spec": {"size": "10Gi", "tier": "ssd", "replicas": 1}}),
        )
        .await
        .unwrap();
    let volumes: Api<StorageVolume> = Api::namespaced(cluster.client.clone(), &ns);
    volumes
        .patch_status(
            "db",
            &PatchParams::default(),
            &Patch::Merge(&json!({"status": {"phase": "Bound",
                "replicas": [{"index": 0, "server": format!("{rack}-s1"), "rack": rack, "site": site, "state": "Ready"}],
                "conditions": [condition("Placed", "True", "Placed", "1 replica on 1 rack; residency VN")]}})),
        )
        .await
        .unwrap();
    let (ok, out, err) = plugin(&kubeconfig, &["why", "sv/db", "-n", &ns]);
    assert!(ok, "{err}");
    assert!(out.contains(&format!("{rack}-s1")), "{out}");
    assert!(out.contains("residency VN"), "{out}");
    assert!(out.contains(&format!("(tenant {tenant})")), "{out}");
    let (ok, out, err) = plugin(&kubeconfig, &["audit", "--tenant", &tenant]);
    assert!(ok, "{err}");
    assert!(
        out.contains(&format!("StorageVolume/{ns}/db")) && out.contains("placed"),
        "{out}"
    );
    let (ok, _, err) = plugin(&kubeconfig, &["why", "sv/nothing", "-n", &ns]);
    assert!(!ok && err.contains("not found"), "{err}");

    // No cluster: said, not a stack trace.
    let missing = std::env::temp_dir().join(format!("{p}-kubeconfig"));
    std::fs::write(
        &missing,
        "apiVersion: v1\nkind: Config\nclusters: [{name: c, cluster: {server: 'https://127.0.0.1:1'}}]\n\
         contexts: [{name: c, context: {cluster: c, user: u}}]\ncurrent-context: c\nusers: [{name: u, user: {}}]\n",
    )
    .unwrap();
    let (ok, _, err) = plugin(missing.to_str().unwrap(), &["top", "servers"]);
    assert!(!ok && err.contains("cannot reach the cluster"), "{err}");
    let _ = std::fs::remove_file(Path::new(&missing));

    // Clean up: the workload, the tenant and its namespace, the inventory.
    let dp = DeleteParams::default();
    let _ = volumes.delete("db", &dp).await;
    let _ = Api::<Tenant>::all(cluster.client.clone())
        .delete(&tenant, &dp)
        .await;
    let _ = Api::<Namespace>::all(cluster.client.clone())
        .delete(&ns, &dp)
        .await;
    for s in ["s1", "s2"] {
        let _ = servers.delete(&format!("{rack}-{s}"), &dp).await;
    }
    let _ = Api::<Rack>::all(cluster.client.clone())
        .delete(&rack, &dp)
        .await;
    let _ = Api::<Site>::all(cluster.client.clone())
        .delete(&site, &dp)
        .await;
}

fn chrono_now() -> String {
    k8s_openapi::jiff::Timestamp::now().to_string()
}
