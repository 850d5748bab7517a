//! Typical workloads, as the operator's stores see them: the dictionaries packed workloads are
//! compressed against (see [`crate::packed`]). Only compression depends on them: an object
//! unlike every sample still packs and unpacks exactly, just larger.

use serde_json::{Value, json};

fn condition(type_: &str, status: &str, reason: &str, message: &str) -> Value {
    json!({"type": type_, "status": status, "observedGeneration": 1,
        "lastTransitionTime": "2026-11-29T20:29:24Z", "reason": reason, "message": message})
}

fn meta(name: &str) -> Value {
    json!({"name": name, "namespace": "tenant-data", "uid": "7c7eeb04-b6a4-4518-88f3-d0009ec9ee40",
        "resourceVersion": "33003", "generation": 1, "creationTimestamp": "2026-11-29T20:29:23Z",
        "finalizers": ["sovereign.io/release"]})
}

fn common_conditions() -> Vec<Value> {
    vec![
        condition(
            "Placed",
            "True",
            "Placed",
            "replicas on site-r10-s6 (rack site-r10, site site)",
        ),
        condition(
            "Degraded",
            "False",
            "AllReplicasPlaced",
            "every replica is on a schedulable server",
        ),
        condition(
            "Placed",
            "False",
            "NoCapacity",
            "0/1000 servers fit: 12 unhealthy, 988 insufficient cpu",
        ),
    ]
}

pub fn instances() -> Vec<Value> {
    let mut conditions = common_conditions();
    conditions.push(condition(
        "Ready",
        "False",
        "PodsBound",
        "1 pods bound to their nodes, 0 running",
    ));
    conditions.push(condition(
        "Ready",
        "True",
        "Running",
        "2 pods bound to their nodes, 2 running",
    ));
    let replica = |i: u8, state: &str| {
        json!({"index": i, "server": "site-r10-s6", "rack": "site-r10", "site": "site",
            "node": "site-node-206", "pod": format!("instance-{i}"), "state": state})
    };
    vec![
        json!({"apiVersion": "sovereign.io/v1alpha1", "kind": "ComputeInstance",
            "metadata": meta("instance"),
            "spec": {"cpu": "500m", "memory": "1Gi", "gpus": 0, "image": "registry.example/app:1",
                "replicas": 1, "spread": "Server"},
            "status": {"phase": "Bound", "replicas": [replica(0, "Placed"), replica(1, "Ready")],
                "conditions": conditions}}),
    ]
}

pub fn volumes() -> Vec<Value> {
    let mut conditions = common_conditions();
    conditions.push(condition(
        "Ready",
        "True",
        "Bound",
        "2/2 replicas bound to their PersistentVolumeClaims",
    ));
    conditions.push(condition(
        "Ready",
        "False",
        "Binding",
        "0/1 replicas bound to their PersistentVolumeClaims",
    ));
    let replica = |i: u8, state: &str| {
        json!({"index": i, "server": "site-r10-s6", "rack": "site-r10", "site": "site",
            "node": "site-node-206",
            "pv": format!("sv-7c7eeb04-b6a4-4518-88f3-d0009ec9ee40-{i}-site-r10-s6"),
            "pvc": format!("volume-r{i}-site-r10-s6"), "state": state})
    };
    vec![
        json!({"apiVersion": "sovereign.io/v1alpha1", "kind": "StorageVolume",
            "metadata": meta("volume"),
            "spec": {"size": "100Gi", "tier": "ssd", "replicas": 2, "spread": "Rack",
                "encrypted": true, "volumeMode": "Filesystem"},
            "status": {"phase": "Bound", "replicas": [replica(0, "Ready"), replica(1, "Placed")],
                "placedAt": "2026-11-29T20:29:24Z", "conditions": conditions}}),
    ]
}
