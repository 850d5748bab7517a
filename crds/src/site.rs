//! Site: a data centre in one jurisdiction.

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use schemars::Schema;

use crate::common::{Condition, Jurisdiction, ResourceSet, conditions_list_map, push_rule};

/// A data centre (site) of the sovereign cloud: where racks stand and under whose law their data
/// lives. Tenants' residency rules and classification are checked against it.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "sovereign.io",
    version = "v1alpha1",
    kind = "Site",
    plural = "sites",
    shortname = "site",
    category = "sovereign",
    status = "SiteStatus",
    derive = "PartialEq",
    doc = "A data centre of the sovereign cloud, in one jurisdiction, with a security tier.",
    printcolumn = r#"{"name":"Jurisdiction","type":"string","jsonPath":".spec.jurisdiction"}"#,
    printcolumn = r#"{"name":"Region","type":"string","jsonPath":".spec.region"}"#,
    printcolumn = r#"{"name":"Tier","type":"integer","jsonPath":".spec.securityTier"}"#,
    printcolumn = r#"{"name":"Racks","type":"integer","jsonPath":".status.racks"}"#,
    printcolumn = r#"{"name":"Servers","type":"integer","jsonPath":".status.servers"}"#,
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct SiteSpec {
    /// Country whose law governs data stored at this site (ISO 3166-1 alpha-2, e.g. VN).
    /// Immutable: moving a site across a border would silently break every tenant's residency.
    #[schemars(transform = jurisdiction_immutable)]
    pub jurisdiction: Jurisdiction,
    /// Region or city inside the jurisdiction (free text, e.g. hanoi-north).
    #[schemars(length(min = 1, max = 63), pattern(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"))]
    pub region: String,
    /// Physical and organisational security tier, 1 (lowest) to 4 (highest). A tenant's
    /// classification needs at least: Public 1, Internal 2, Confidential 3, Secret 4.
    #[schemars(range(min = 1, max = 4))]
    pub security_tier: u8,
    /// Human-readable name (e.g. "Hanoi Data Centre 1").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 256))]
    pub display_name: Option<String>,
    /// Operator of the facility, for audit records.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 256))]
    pub operator: Option<String>,
}

/// Observed state of a site, aggregated from its racks and servers.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SiteStatus {
    /// Number of racks registered at this site.
    #[serde(default)]
    pub racks: u32,
    /// Number of servers registered at this site.
    #[serde(default)]
    pub servers: u32,
    /// Number of servers that are Ready and schedulable.
    #[serde(default)]
    pub ready_servers: u32,
    /// Schedulable capacity of the site (sum over its healthy servers).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capacity: Option<ResourceSet>,
    /// Resources allocated to tenant replicas at this site.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allocated: Option<ResourceSet>,
    /// Latest observations; Ready summarises the site.
    #[serde(default)]
    #[schemars(transform = conditions_list_map, length(max = 16))]
    pub conditions: Vec<Condition>,
}

fn jurisdiction_immutable(schema: &mut Schema) {
    push_rule(schema, "self == oldSelf", "jurisdiction is immutable");
}
