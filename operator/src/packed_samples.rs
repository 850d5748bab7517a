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

/// Servers as the status controller writes them: a rack server with drives and a GPU server.
pub fn servers() -> Vec<Value> {
    let observed = |source: &str| json!({"observedAt": "2026-11-29T20:29:24Z", "source": source});
    let ok = |name: &str| json!({"name": name, "health": "OK"});
    let server = |name: &str, gpus: u32, drives: Vec<Value>| {
        json!({"apiVersion": "sovereign.io/v1alpha1", "kind": "Server",
        "metadata": {"name": name, "uid": "3f1d0e52-8c4b-4d7e-9a57-1b2f63a4c9d8",
            "resourceVersion": "48213", "generation": 1,
            "creationTimestamp": "2026-11-29T20:29:23Z",
            "labels": {"sovereign.io/rack": "site-r10", "sovereign.io/site": "site"}},
        "spec": {"rack": "site-r10", "nodeName": "site-node-206",
            "bmc": {"address": "https://10.20.10.6", "credentialsSecretRef":
                {"name": "bmc-site-r10-s6", "namespace": "sovereign-system"},
                "insecureSkipVerify": false, "pollIntervalSeconds": 30},
            "maintenance": false,
            "capacity": {"cpu": "128", "memory": "1Ti", "gpus": gpus,
                "storage": {"nvme": "15Ti", "ssd": "7680Gi"}},
            "reserved": {"cpu": "4", "memory": "16Gi"}},
        "status": {
            "inventory": {"manufacturer": "Dell Inc.", "model": "PowerEdge R760",
                "serialNumber": "CN7016BS1D0042", "biosVersion": "2.3.5",
                "bmcFirmwareVersion": "7.10.30.00", "processorModel":
                "Intel(R) Xeon(R) Platinum 8480+", "processorCount": 2,
                "logicalProcessors": 224, "memory": "1Ti", "networkInterfaces": 4,
                "gpus": gpus, "observed": observed("redfish")},
            "power": {"state": "On", "consumedWatts": 412,
                "supplies": [ok("PSU1"), ok("PSU2")], "observed": observed("redfish")},
            "thermal": {"inletCelsius": 23.5, "cpuMaxCelsius": 61.0, "fanCount": 6,
                "fans": [ok("Fan1"), ok("Fan2"), ok("Fan3")], "observed": observed("redfish")},
            "drives": drives,
            "security": {"intrusion": "Normal", "observed": observed("redfish")},
            "os": {"kernel": "6.1.0-27-amd64", "osVersion": "Debian GNU/Linux 12 (bookworm)",
                "uptimeSeconds": 864_000, "cpuUsagePercent": 12.5, "memoryUsed": "96Gi",
                "observed": observed("os")},
            "health": "OK",
            "capacity": {"cpu": "128", "memory": "1Ti", "gpus": gpus,
                "storage": {"nvme": "15Ti", "ssd": "7680Gi"}},
            "allocated": {"cpu": "24", "memory": "96Gi", "storage": {"nvme": "2Ti"}},
            "lastSeen": "2026-11-29T20:29:24Z",
            "conditions": [
                condition("Reachable", "True", "Responding", "the BMC answered"),
                condition("Ready", "True", "HealthOK", "hardware health is OK"),
                condition("Schedulable", "True", "Schedulable", "accepts new replicas"),
                condition("Schedulable", "False", "TelemetryStale",
                    "no telemetry for 320 s (stale after 300 s)"),
                condition("Reachable", "False", "BmcUnreachable",
                    "connection refused"),
            ]}})
    };
    let drive = |id: &str, tier: &str, capacity: &str| {
        json!({"id": id, "tier": tier, "capacity": capacity, "health": "OK",
            "lifeLeftPercent": 97, "failurePredicted": false, "encryptionCapable": true})
    };
    vec![
        server(
            "site-r10-s6",
            0,
            vec![
                drive("Disk.Bay.0", "nvme", "7680Gi"),
                drive("Disk.Bay.1", "ssd", "3840Gi"),
            ],
        ),
        server("site-r11-s1", 8, vec![drive("NVMe.0", "nvme", "3840Gi")]),
    ]
}
