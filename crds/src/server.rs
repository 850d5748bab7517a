//! Server: a physical machine with a BMC, in a rack.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::common::{
    Condition, Health, Quantity, ResourceSet, SecretReference, StorageTier, conditions_list_map,
};

/// A physical server: its place (rack), its Kubernetes node and how to reach its BMC.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "sovereign.io",
    version = "v1alpha1",
    kind = "Server",
    plural = "servers",
    shortname = "srv",
    category = "sovereign",
    status = "ServerStatus",
    derive = "PartialEq",
    doc = "A physical server in a rack, managed through its BMC (Redfish) and its Kubernetes node.",
    printcolumn = r#"{"name":"Rack","type":"string","jsonPath":".spec.rack"}"#,
    printcolumn = r#"{"name":"Node","type":"string","jsonPath":".spec.nodeName","priority":1}"#,
    printcolumn = r#"{"name":"Power","type":"string","jsonPath":".status.power.state"}"#,
    printcolumn = r#"{"name":"Health","type":"string","jsonPath":".status.health"}"#,
    printcolumn = r#"{"name":"Watts","type":"integer","jsonPath":".status.power.consumedWatts"}"#,
    printcolumn = r#"{"name":"Inlet °C","type":"number","jsonPath":".status.thermal.inletCelsius"}"#,
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Reason","type":"string","jsonPath":".status.conditions[?(@.type==\"Schedulable\")].reason","priority":1}"#,
    printcolumn = r#"{"name":"Maintenance","type":"boolean","jsonPath":".spec.maintenance","priority":1}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {"rule": "!has(self.maintenanceReason) || self.maintenance",
     "message": "maintenanceReason is only allowed while maintenance is true"}
]))]
pub struct ServerSpec {
    /// Name of the Rack this server is mounted in. Immutable: to move a server, delete and
    /// register it again so its allocations are re-placed.
    #[schemars(
        length(min = 1, max = 253),
        pattern(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"),
        extend("x-kubernetes-validations" = [{"rule": "self == oldSelf", "message": "rack is immutable"}])
    )]
    pub rack: String,
    /// Name of the Kubernetes Node running on this server, if it has joined the cluster.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(
        length(min = 1, max = 253),
        pattern(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
    )]
    pub node_name: Option<String>,
    /// How to reach the server's baseboard management controller.
    pub bmc: BmcSpec,
    /// Take the server out of scheduling (cordon). Existing replicas are re-placed.
    #[serde(default)]
    pub maintenance: bool,
    /// Why the server is in maintenance (ticket number, reason); shown in audit records.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 256))]
    pub maintenance_reason: Option<String>,
    /// Declared capacity from the asset register, used until the agent has reported the
    /// server's inventory (status.capacity wins once present).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capacity: Option<ResourceSet>,
    /// Resources kept back for the host itself (OS, agents, kubelet); never placed on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reserved: Option<ResourceSet>,
}

/// Connection to a BMC over Redfish. TLS is verified against caBundle unless
/// insecureSkipVerify is set explicitly.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {"rule": "has(self.caBundle) || self.insecureSkipVerify",
     "message": "caBundle is required unless insecureSkipVerify is true: BMC TLS is verified by default"},
    {"rule": "!(has(self.caBundle) && self.insecureSkipVerify)",
     "message": "caBundle and insecureSkipVerify are mutually exclusive"}
]))]
pub struct BmcSpec {
    /// Redfish service URL of the BMC, https only (e.g. https://10.20.0.11 or
    /// https://bmc-r1-01.mgmt.example:8443).
    #[schemars(length(min = 9, max = 2048), pattern(r"^https://[^\s/?#]+(/[^\s]*)?$"))]
    pub address: String,
    /// Secret (in the collector's namespace) holding `username` and `password` for the BMC.
    pub credentials_secret_ref: SecretReference,
    /// PEM-encoded CA certificate(s) that sign the BMC's TLS certificate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(
        length(min = 1, max = 65536),
        pattern(r"^\s*-----BEGIN CERTIFICATE-----")
    )]
    pub ca_bundle: Option<String>,
    /// Skip TLS verification of the BMC. Only for lab equipment; recorded in audit logs.
    #[serde(default)]
    pub insecure_skip_verify: bool,
    /// Seconds between telemetry polls of this BMC.
    #[serde(default = "default_poll_interval")]
    #[schemars(range(min = 10, max = 3600))]
    pub poll_interval_seconds: u32,
}

fn default_poll_interval() -> u32 {
    60
}

/// Power state as reported by Redfish.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum PowerState {
    On,
    Off,
    PoweringOn,
    PoweringOff,
    Paused,
    #[default]
    Unknown,
}

/// Chassis intrusion state (Redfish PhysicalSecurity.IntrusionSensor).
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum IntrusionState {
    Normal,
    HardwareIntrusion,
    TamperingDetected,
    #[default]
    Unknown,
}

/// Observed state of a server, kept small: time series go to metrics, not etcd.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ServerStatus {
    /// Hardware inventory read from the BMC.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inventory: Option<Inventory>,
    /// Power state and draw.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub power: Option<PowerStatus>,
    /// Temperatures and fans.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub thermal: Option<ThermalStatus>,
    /// Storage drives with wear and encryption ability.
    #[serde(default)]
    #[schemars(length(max = 64))]
    pub drives: Vec<DriveStatus>,
    /// Physical security of the chassis.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub security: Option<SecurityStatus>,
    /// Operating system telemetry from the node agent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub os: Option<OsStatus>,
    /// Rolled-up health: the worst of the BMC's HealthRollup and Sovereign's own checks.
    #[serde(default)]
    pub health: Health,
    /// Schedulable capacity measured from inventory, before reservations.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capacity: Option<ResourceSet>,
    /// Resources allocated to tenant replicas on this server.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allocated: Option<ResourceSet>,
    /// When the newest telemetry sample for this server was observed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_seen: Option<Time>,
    /// Latest observations: Reachable, Healthy, Secure, TelemetryFresh, Schedulable, Ready.
    #[serde(default)]
    #[schemars(transform = conditions_list_map, length(max = 16))]
    pub conditions: Vec<Condition>,
}

/// Hardware inventory from the BMC.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Inventory {
    /// Manufacturer (e.g. Dell Inc.).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub manufacturer: Option<String>,
    /// Model (e.g. PowerEdge R760).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// Chassis serial number.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub serial_number: Option<String>,
    /// BIOS version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bios_version: Option<String>,
    /// BMC firmware version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bmc_firmware_version: Option<String>,
    /// Processor model (e.g. Intel Xeon Gold 6430).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub processor_model: Option<String>,
    /// Number of processor sockets populated.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub processor_count: Option<u32>,
    /// Total logical processors (threads).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub logical_processors: Option<u32>,
    /// Installed memory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<Quantity>,
    /// Number of network interfaces.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network_interfaces: Option<u32>,
    /// Number of GPUs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gpus: Option<u32>,
    /// When the inventory was read, and from where (redfish).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed: Option<Observation>,
}

/// When and from which source a reading was taken.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Observation {
    /// Time the agent took the reading.
    pub observed_at: Time,
    /// Where it came from: redfish (the BMC collector) or os (the node agent).
    #[schemars(length(max = 16))]
    pub source: String,
}

/// Power readings.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PowerStatus {
    /// Power state of the system.
    #[serde(default)]
    pub state: PowerState,
    /// Power the chassis draws now, in watts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consumed_watts: Option<u32>,
    /// Power supplies and their health.
    #[serde(default)]
    #[schemars(length(max = 16))]
    pub supplies: Vec<ComponentHealth>,
    /// When and where the reading was taken.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed: Option<Observation>,
}

/// Temperature and fan readings.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ThermalStatus {
    /// Inlet (intake) air temperature in °C.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inlet_celsius: Option<f64>,
    /// Hottest CPU temperature in °C.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_max_celsius: Option<f64>,
    /// Number of fans the BMC reports.
    #[serde(default)]
    pub fan_count: u32,
    /// Fans whose health is not OK (all fans are metrics, not status).
    #[serde(default)]
    #[schemars(length(max = 32))]
    pub fans: Vec<ComponentHealth>,
    /// When and where the reading was taken.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed: Option<Observation>,
}

/// Health of one component (PSU, fan).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ComponentHealth {
    /// Component name as the BMC reports it.
    pub name: String,
    /// Component health.
    #[serde(default)]
    pub health: Health,
}

/// One storage drive.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DriveStatus {
    /// Drive id as the BMC reports it.
    pub id: String,
    /// Media tier derived from protocol and media type.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tier: Option<StorageTier>,
    /// Raw capacity.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capacity: Option<Quantity>,
    /// Drive health.
    #[serde(default)]
    pub health: Health,
    /// Percentage of rated media life left (SSD wear).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 100))]
    pub life_left_percent: Option<u8>,
    /// The drive predicts its own failure.
    #[serde(default)]
    pub failure_predicted: bool,
    /// The drive can encrypt data at rest (self-encrypting drive).
    #[serde(default)]
    pub encryption_capable: bool,
}

/// Physical security of the chassis.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SecurityStatus {
    /// Intrusion sensor state; anything but Normal makes the server unschedulable.
    #[serde(default)]
    pub intrusion: IntrusionState,
    /// When and where the reading was taken.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed: Option<Observation>,
}

/// OS telemetry from the node agent.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct OsStatus {
    /// Kernel version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kernel: Option<String>,
    /// OS name and version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub os_version: Option<String>,
    /// Seconds since boot.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uptime_seconds: Option<u64>,
    /// One-minute load average.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub load1: Option<f64>,
    /// CPU usage in percent over the last interval.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_usage_percent: Option<f64>,
    /// Memory in use.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_used: Option<Quantity>,
    /// When and where the reading was taken.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed: Option<Observation>,
}
