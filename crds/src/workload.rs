//! Tenant workloads: StorageVolume and ComputeInstance (namespaced).

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::common::{
    Condition, POSITIVE_QUANTITY_RULE, Quantity, Spread, StorageTier, conditions_list_map,
};

/// Rule shared by both workload kinds: spreading across racks or sites needs several replicas.
const SPREAD_RULE: &str = "self.spread == 'Server' || self.replicas >= 2";
const SPREAD_MESSAGE: &str = "spread Rack or Site needs at least 2 replicas";

/// A tenant's replicated block or filesystem volume, placed on servers that satisfy the
/// tenant's residency and classification and materialised as local PersistentVolumes.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "sovereign.io",
    version = "v1alpha1",
    kind = "StorageVolume",
    plural = "storagevolumes",
    shortname = "svol",
    category = "sovereign",
    namespaced,
    status = "StorageVolumeStatus",
    derive = "PartialEq",
    doc = "A tenant volume: size, media tier, replicas and their failure-domain spread.",
    printcolumn = r#"{"name":"Size","type":"string","jsonPath":".spec.size"}"#,
    printcolumn = r#"{"name":"Tier","type":"string","jsonPath":".spec.tier"}"#,
    printcolumn = r#"{"name":"Replicas","type":"integer","jsonPath":".spec.replicas"}"#,
    printcolumn = r#"{"name":"Spread","type":"string","jsonPath":".spec.spread"}"#,
    printcolumn = r#"{"name":"Phase","type":"string","jsonPath":".status.phase"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [{"rule": SPREAD_RULE, "message": SPREAD_MESSAGE}]))]
pub struct StorageVolumeSpec {
    /// Usable size of each replica (e.g. 100Gi). Immutable in v1alpha1 (no expansion yet).
    #[schemars(extend("x-kubernetes-validations" = [
        {"rule": "self == oldSelf", "message": "size is immutable"},
        {"rule": POSITIVE_QUANTITY_RULE, "message": "must be greater than zero"}
    ]))]
    pub size: Quantity,
    /// Media tier: nvme, ssd or hdd. Immutable: data is never silently moved between tiers.
    #[schemars(extend("x-kubernetes-validations" = [{"rule": "self == oldSelf", "message": "tier is immutable"}]))]
    pub tier: StorageTier,
    /// Number of copies, 1 to 5, each on a distinct failure domain (see spread). Raising it
    /// places the new copies beside the others; lowering it releases the highest-numbered.
    #[serde(default = "one")]
    #[schemars(range(min = 1, max = 5))]
    pub replicas: u8,
    /// Failure domain replicas must not share: Server, Rack or Site. Immutable: the placed
    /// replicas were spread by it.
    #[serde(default)]
    #[schemars(extend("x-kubernetes-validations" = [{"rule": "self == oldSelf", "message": "spread is immutable"}]))]
    pub spread: Spread,
    /// Encrypt data at rest (needs self-encrypting drives). On by default; immutable.
    #[serde(default = "yes")]
    #[schemars(extend("x-kubernetes-validations" = [{"rule": "self == oldSelf", "message": "encrypted is immutable"}]))]
    pub encrypted: bool,
    /// Filesystem (mounted) or Block (raw device). Immutable.
    #[serde(default)]
    #[schemars(extend("x-kubernetes-validations" = [{"rule": "self == oldSelf", "message": "volumeMode is immutable"}]))]
    pub volume_mode: VolumeMode,
}

fn one() -> u8 {
    1
}

fn yes() -> bool {
    true
}

/// How the volume is presented to pods.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum VolumeMode {
    #[default]
    Filesystem,
    Block,
}

/// Lifecycle phase of a workload.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum Phase {
    /// Not placed yet (waiting for capacity or policy).
    #[default]
    Pending,
    /// All replicas placed and materialised.
    Bound,
    /// Some replicas are unavailable or being re-placed.
    Degraded,
    /// Placement refused; see the Placed condition for why.
    Failed,
    /// Being deleted; capacity is being released.
    Releasing,
}

/// State of one replica.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum ReplicaState {
    #[default]
    Pending,
    Placed,
    Ready,
    Failed,
    Replacing,
    /// Left by a scale-down: its children are deleted, then its capacity given back.
    Releasing,
}

/// Where one replica of a volume lives.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct VolumeReplica {
    /// Replica index, 0-based.
    pub index: u8,
    /// Server holding the replica.
    pub server: String,
    /// Rack of that server.
    pub rack: String,
    /// Site of that rack.
    pub site: String,
    /// Kubernetes node of that server.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    /// Local PersistentVolume backing the replica.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pv: Option<String>,
    /// PersistentVolumeClaim bound to it, in the volume's namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pvc: Option<String>,
    /// Replica state.
    #[serde(default)]
    pub state: ReplicaState,
}

/// Observed state of a volume.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct StorageVolumeStatus {
    /// Lifecycle phase.
    #[serde(default)]
    pub phase: Phase,
    /// One entry per replica.
    #[serde(default)]
    #[schemars(length(max = 5))]
    pub replicas: Vec<VolumeReplica>,
    /// When the current placement was decided.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub placed_at: Option<Time>,
    /// Latest observations: Placed, Ready, and kstatus' Reconciling and Stalled.
    #[serde(default)]
    #[schemars(transform = conditions_list_map, length(max = 16))]
    pub conditions: Vec<Condition>,
    /// The metadata.generation this status was written for (kstatus: older means in progress).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub observed_generation: Option<i64>,
}

/// A tenant's compute: replicated pods with cpu, memory and gpus, placed by Sovereign on servers
/// that satisfy the tenant's residency and classification.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "sovereign.io",
    version = "v1alpha1",
    kind = "ComputeInstance",
    plural = "computeinstances",
    shortname = "sci",
    category = "sovereign",
    namespaced,
    status = "ComputeInstanceStatus",
    derive = "PartialEq",
    doc = "A tenant compute instance: image, resources, replicas and their spread.",
    printcolumn = r#"{"name":"CPU","type":"string","jsonPath":".spec.cpu"}"#,
    printcolumn = r#"{"name":"Memory","type":"string","jsonPath":".spec.memory"}"#,
    printcolumn = r#"{"name":"GPUs","type":"integer","jsonPath":".spec.gpus"}"#,
    printcolumn = r#"{"name":"Replicas","type":"integer","jsonPath":".spec.replicas"}"#,
    printcolumn = r#"{"name":"Phase","type":"string","jsonPath":".status.phase"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [{"rule": SPREAD_RULE, "message": SPREAD_MESSAGE}]))]
pub struct ComputeInstanceSpec {
    /// CPU per replica in cores (e.g. 4 or 500m). Immutable: the capacity is booked where the
    /// replicas were placed; a different size is a new instance.
    #[schemars(extend("x-kubernetes-validations" = [
        {"rule": "self == oldSelf", "message": "cpu is immutable: create a new ComputeInstance for another size"},
        {"rule": POSITIVE_QUANTITY_RULE, "message": "must be greater than zero"}
    ]))]
    pub cpu: Quantity,
    /// Memory per replica (e.g. 16Gi). Immutable, as cpu.
    #[schemars(extend("x-kubernetes-validations" = [
        {"rule": "self == oldSelf", "message": "memory is immutable: create a new ComputeInstance for another size"},
        {"rule": POSITIVE_QUANTITY_RULE, "message": "must be greater than zero"}
    ]))]
    pub memory: Quantity,
    /// Whole GPUs per replica. Immutable, as cpu.
    #[serde(default)]
    #[schemars(range(min = 0, max = 16))]
    #[schemars(extend("x-kubernetes-validations" = [{"rule": "self == oldSelf", "message": "gpus is immutable: create a new ComputeInstance for another size"}]))]
    pub gpus: u8,
    /// Container image, preferably pinned by digest (registry/name@sha256:...).
    #[schemars(length(min = 1, max = 512), pattern(r"^[^\s]+$"))]
    pub image: String,
    /// Entrypoint override.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64), inner(length(max = 4096)))]
    pub command: Vec<String>,
    /// Arguments to the entrypoint.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64), inner(length(max = 4096)))]
    pub args: Vec<String>,
    /// Number of pods, 1 to 64, each on a distinct failure domain (see spread). Raising it
    /// places the new pods beside the others; lowering it releases the highest-numbered.
    #[serde(default = "one")]
    #[schemars(range(min = 1, max = 64))]
    pub replicas: u8,
    /// Failure domain replicas must not share: Server, Rack or Site. Immutable: the placed
    /// replicas were spread by it.
    #[serde(default)]
    #[schemars(extend("x-kubernetes-validations" = [{"rule": "self == oldSelf", "message": "spread is immutable"}]))]
    pub spread: Spread,
}

/// Where one replica of an instance runs.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct InstanceReplica {
    /// Replica index, 0-based.
    pub index: u8,
    /// Server running the replica.
    pub server: String,
    /// Rack of that server.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rack: Option<String>,
    /// Site of that rack.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub site: Option<String>,
    /// Kubernetes node of that server.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    /// Pod running the replica.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod: Option<String>,
    /// Replica state.
    #[serde(default)]
    pub state: ReplicaState,
}

/// Observed state of an instance.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ComputeInstanceStatus {
    /// Lifecycle phase.
    #[serde(default)]
    pub phase: Phase,
    /// One entry per replica.
    #[serde(default)]
    #[schemars(length(max = 64))]
    pub replicas: Vec<InstanceReplica>,
    /// Latest observations: Placed, Ready, and kstatus' Reconciling and Stalled.
    #[serde(default)]
    #[schemars(transform = conditions_list_map, length(max = 16))]
    pub conditions: Vec<Condition>,
    /// The metadata.generation this status was written for (kstatus: older means in progress).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub observed_generation: Option<i64>,
}
