//! What a placed replica becomes in Kubernetes, built purely: a local PersistentVolume on the
//! chosen node with the tenant's PersistentVolumeClaim pre-bound to it, or a Pod bound to the
//! chosen node. Names are derived from the workload and the server, so a re-run (after a crash)
//! applies the same objects instead of making new ones.

use serde_json::{Value, json};
use sovereign_crds::workload::VolumeMode;
use sovereign_crds::{Classification, ComputeInstance, StorageVolume};

use super::tenant::{TENANT_LABEL, storage_class};

/// Label naming the workload a child belongs to (`<kind>.<name>`).
pub const WORKLOAD_LABEL: &str = "sovereign.io/workload";
/// Label with the replica index.
pub const REPLICA_LABEL: &str = "sovereign.io/replica";
/// Where local volumes live on a node.
pub const VOLUME_ROOT: &str = "/var/lib/sovereign/volumes";

/// A DNS-1123 name from parts, shortened with a hash when too long.
pub fn child_name(parts: &[&str], max: usize) -> String {
    let joined = parts.join("-").to_ascii_lowercase();
    if joined.len() <= max {
        return joined;
    }
    let hash = format!("{:016x}", super::stable_hash(joined.as_bytes()));
    let keep = max.saturating_sub(hash.len() + 1);
    let head = joined[..keep].trim_end_matches(['-', '.']);
    format!("{head}-{hash}")
}

/// PV of replica `index` on `server` (cluster-scoped, so the name carries the volume's uid).
pub fn pv_name(v: &StorageVolume, index: u8, server: &str) -> String {
    let uid = v.metadata.uid.as_deref().unwrap_or_default();
    child_name(&["sv", uid, &index.to_string(), server], 253)
}

/// PVC of replica `index` on `server`, in the volume's namespace.
pub fn pvc_name(v: &StorageVolume, index: u8, server: &str) -> String {
    let name = v.metadata.name.as_deref().unwrap_or_default();
    child_name(&[name, &format!("r{index}"), server], 253)
}

/// Pod of replica `index` of an instance.
pub fn pod_name(c: &ComputeInstance, index: u8) -> String {
    let name = c.metadata.name.as_deref().unwrap_or_default();
    child_name(&[name, &index.to_string()], 63)
}

fn owner(
    api_version: &str,
    kind: &str,
    meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
) -> Value {
    json!({
        "apiVersion": api_version, "kind": kind,
        "name": meta.name, "uid": meta.uid,
        "controller": true, "blockOwnerDeletion": true,
    })
}

fn labels(kind: &str, name: &str, tenant: &str, index: u8) -> Value {
    json!({
        WORKLOAD_LABEL: child_name(&[&kind.to_ascii_lowercase(), name], 63),
        REPLICA_LABEL: index.to_string(),
        TENANT_LABEL: tenant,
        "app.kubernetes.io/managed-by": crate::FIELD_MANAGER,
    })
}

/// The local PersistentVolume of one replica. Confidential and Secret data is retained when
/// the claim goes (an operator wipes it deliberately); other data is deleted.
pub fn persistent_volume(
    v: &StorageVolume,
    tenant: &str,
    classification: Classification,
    index: u8,
    server: &str,
    node: &str,
) -> Value {
    let ns = v.metadata.namespace.as_deref().unwrap_or_default();
    let name = v.metadata.name.as_deref().unwrap_or_default();
    let tier = serde_json::to_value(v.spec.tier).unwrap_or_default();
    let tier = tier.as_str().unwrap_or("ssd");
    let retain = classification >= Classification::Confidential;
    json!({
        "apiVersion": "v1", "kind": "PersistentVolume",
        "metadata": {
            "name": pv_name(v, index, server),
            "labels": labels("StorageVolume", name, tenant, index),
            "annotations": {"sovereign.io/volume": format!("{ns}/{name}"), "sovereign.io/server": server},
        },
        "spec": {
            "capacity": {"storage": v.spec.size.0},
            "accessModes": ["ReadWriteOnce"],
            "persistentVolumeReclaimPolicy": if retain { "Retain" } else { "Delete" },
            "storageClassName": storage_class(tier),
            "volumeMode": match v.spec.volume_mode { VolumeMode::Filesystem => "Filesystem", VolumeMode::Block => "Block" },
            "local": {"path": format!("{VOLUME_ROOT}/{ns}/{name}/{index}")},
            "nodeAffinity": {"required": {"nodeSelectorTerms": [{"matchExpressions": [{
                "key": "kubernetes.io/hostname", "operator": "In", "values": [node],
            }]}]}},
            "claimRef": {
                "apiVersion": "v1", "kind": "PersistentVolumeClaim",
                "namespace": ns, "name": pvc_name(v, index, server),
            },
        },
    })
}

/// The tenant's claim on one replica, pre-bound to its PV.
pub fn persistent_volume_claim(v: &StorageVolume, tenant: &str, index: u8, server: &str) -> Value {
    let ns = v.metadata.namespace.as_deref().unwrap_or_default();
    let name = v.metadata.name.as_deref().unwrap_or_default();
    let tier = serde_json::to_value(v.spec.tier).unwrap_or_default();
    json!({
        "apiVersion": "v1", "kind": "PersistentVolumeClaim",
        "metadata": {
            "name": pvc_name(v, index, server),
            "namespace": ns,
            "labels": labels("StorageVolume", name, tenant, index),
            "ownerReferences": [owner("sovereign.io/v1alpha1", "StorageVolume", &v.metadata)],
        },
        "spec": {
            "accessModes": ["ReadWriteOnce"],
            "resources": {"requests": {"storage": v.spec.size.0}},
            "storageClassName": storage_class(tier.as_str().unwrap_or("ssd")),
            "volumeMode": match v.spec.volume_mode { VolumeMode::Filesystem => "Filesystem", VolumeMode::Block => "Block" },
            "volumeName": pv_name(v, index, server),
        },
    })
}

/// Whether a Pod runs what the instance asks for now (image, command, args of its container);
/// resources are immutable on the instance. A Pod that does not is replaced.
pub fn runs_current_template(c: &ComputeInstance, pod: &super::pods::PodBrief) -> bool {
    pod.template
        == Some(super::pods::template(
            &c.spec.image,
            &c.spec.command,
            &c.spec.args,
        ))
}

/// The Pod of one replica, bound to its node (Sovereign is the placer: no scheduler involved).
pub fn pod(c: &ComputeInstance, tenant: &str, index: u8, node: &str) -> Value {
    let ns = c.metadata.namespace.as_deref().unwrap_or_default();
    let name = c.metadata.name.as_deref().unwrap_or_default();
    let mut resources = json!({"cpu": c.spec.cpu.0, "memory": c.spec.memory.0});
    if c.spec.gpus > 0 {
        resources["nvidia.com/gpu"] = json!(c.spec.gpus.to_string());
    }
    let mut container = json!({
        "name": "main",
        "image": c.spec.image,
        "resources": {"requests": resources, "limits": resources},
        "securityContext": {"allowPrivilegeEscalation": false, "capabilities": {"drop": ["ALL"]}},
    });
    if !c.spec.command.is_empty() {
        container["command"] = json!(c.spec.command);
    }
    if !c.spec.args.is_empty() {
        container["args"] = json!(c.spec.args);
    }
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {
            "name": pod_name(c, index),
            "namespace": ns,
            "labels": labels("ComputeInstance", name, tenant, index),
            "ownerReferences": [owner("sovereign.io/v1alpha1", "ComputeInstance", &c.metadata)],
        },
        "spec": {
            "nodeName": node,
            "containers": [container],
            "restartPolicy": "Always",
            "automountServiceAccountToken": false,
            // The Node's own Sovereign taint must not evict what Sovereign placed there on
            // purpose; moving replicas off failing servers is the controller's job.
            "tolerations": [{"key": super::server_status::TAINT_KEY, "operator": "Exists", "effect": "NoSchedule"}],
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn volume() -> StorageVolume {
        serde_json::from_value(json!({
            "apiVersion": "sovereign.io/v1alpha1", "kind": "StorageVolume",
            "metadata": {"name": "records", "namespace": "moh-records", "uid": "0f0e-11"},
            "spec": {"size": "100Gi", "tier": "nvme", "replicas": 2}
        }))
        .unwrap()
    }

    #[test]
    fn pv_and_pvc_are_prebound_to_each_other_on_the_chosen_node() {
        let v = volume();
        let pv = persistent_volume(
            &v,
            "moh",
            Classification::Confidential,
            1,
            "hn1-r01-s02",
            "worker-2",
        );
        let pvc = persistent_volume_claim(&v, "moh", 1, "hn1-r01-s02");
        assert_eq!(pv["spec"]["claimRef"]["name"], pvc["metadata"]["name"]);
        assert_eq!(pvc["spec"]["volumeName"], pv["metadata"]["name"]);
        assert_eq!(pv["spec"]["persistentVolumeReclaimPolicy"], "Retain");
        assert_eq!(pv["spec"]["storageClassName"], "sovereign-nvme");
        assert_eq!(
            pv["spec"]["nodeAffinity"]["required"]["nodeSelectorTerms"][0]["matchExpressions"][0]["values"]
                [0],
            "worker-2"
        );
        assert_eq!(
            pvc["metadata"]["ownerReferences"][0]["kind"],
            "StorageVolume"
        );
        let public = persistent_volume(&v, "x", Classification::Public, 0, "s", "n");
        assert_eq!(public["spec"]["persistentVolumeReclaimPolicy"], "Delete");
    }

    #[test]
    fn long_names_are_shortened_stably() {
        let long = "a".repeat(300);
        let n = child_name(&["sv", &long], 253);
        assert!(n.len() <= 253);
        assert_eq!(n, child_name(&["sv", &long], 253));
        assert_ne!(n, child_name(&["sv", &long, "x"], 253));
    }
}
