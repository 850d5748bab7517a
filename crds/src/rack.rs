//! Rack: a power and cooling failure domain inside a site.

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::common::{Condition, ResourceSet, conditions_list_map};

/// A rack of servers: one power feed and cooling zone, so one failure domain.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "sovereign.io",
    version = "v1alpha1",
    kind = "Rack",
    plural = "racks",
    shortname = "rack",
    category = "sovereign",
    status = "RackStatus",
    derive = "PartialEq",
    doc = "A rack of servers in a site, with a power budget and an inlet temperature limit.",
    printcolumn = r#"{"name":"Site","type":"string","jsonPath":".spec.site"}"#,
    printcolumn = r#"{"name":"Servers","type":"integer","jsonPath":".status.servers"}"#,
    printcolumn = r#"{"name":"Budget W","type":"integer","jsonPath":".spec.powerBudgetWatts"}"#,
    printcolumn = r#"{"name":"Watts","type":"integer","jsonPath":".status.powerWatts"}"#,
    printcolumn = r#"{"name":"Inlet °C","type":"number","jsonPath":".status.inletCelsius"}"#,
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {"rule": "!has(self.warnInletCelsius) || self.warnInletCelsius < self.maxInletCelsius",
     "message": "warnInletCelsius must be below maxInletCelsius"}
]))]
pub struct RackSpec {
    /// Name of the Site this rack stands in. Immutable: a moved rack is a new rack.
    #[schemars(
        length(min = 1, max = 253),
        pattern(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"),
        extend("x-kubernetes-validations" = [{"rule": "self == oldSelf", "message": "site is immutable"}])
    )]
    pub site: String,
    /// Power the rack may draw, in watts. Placement keeps measured draw plus the estimate for new
    /// load within this budget.
    #[schemars(range(min = 500, max = 250_000))]
    pub power_budget_watts: u32,
    /// Highest acceptable inlet air temperature in °C (ASHRAE A1 allows up to 32). Above it the
    /// rack's servers are unschedulable.
    #[schemars(range(min = 15, max = 45))]
    pub max_inlet_celsius: u8,
    /// Inlet temperature in °C at which the rack turns Warning; must be below maxInletCelsius.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 10, max = 45))]
    pub warn_inlet_celsius: Option<u8>,
    /// Row or hall position, for people walking the floor (e.g. hall-2/row-C/12).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 128))]
    pub location: Option<String>,
}

/// Observed state of a rack.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RackStatus {
    /// Number of servers in this rack.
    #[serde(default)]
    pub servers: u32,
    /// Measured power draw in watts (sum of the servers' BMC readings).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub power_watts: Option<u32>,
    /// Highest inlet temperature reported by the rack's servers, in °C.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inlet_celsius: Option<f64>,
    /// Schedulable capacity of the rack.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capacity: Option<ResourceSet>,
    /// Resources allocated to tenant replicas in this rack.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allocated: Option<ResourceSet>,
    /// Latest observations; Ready summarises the rack.
    #[serde(default)]
    #[schemars(transform = conditions_list_map, length(max = 16))]
    pub conditions: Vec<Condition>,
}
