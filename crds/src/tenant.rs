//! Tenant: a government agency or company, its residency policy and quota.

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::common::{
    Condition, Jurisdiction, ResourceSet, conditions_list_map, positive_resources,
};

/// A tenant of the sovereign cloud: who may use it, where its data may live, how sensitive the
/// data is and how much it may use.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "sovereign.io",
    version = "v1alpha1",
    kind = "Tenant",
    plural = "tenants",
    shortname = "tnt",
    category = "sovereign",
    status = "TenantStatus",
    derive = "PartialEq",
    doc = "A tenant: residency policy, data classification, quota, admins and namespaces.",
    printcolumn = r#"{"name":"Classification","type":"string","jsonPath":".spec.classification"}"#,
    printcolumn = r#"{"name":"Jurisdictions","type":"string","jsonPath":".spec.residency.jurisdictions"}"#,
    printcolumn = r#"{"name":"Namespaces","type":"string","jsonPath":".status.namespaces","priority":1}"#,
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {"rule": "self.classification != 'Secret' || (has(self.residency.sites) && size(self.residency.sites) > 0)",
     "message": "Secret tenants must list their allowed sites in residency.sites"}
]))]
pub struct TenantSpec {
    /// Where the tenant's data and workloads may be placed.
    pub residency: Residency,
    /// Sensitivity of the tenant's data. Sets the minimum site securityTier (Public 1,
    /// Internal 2, Confidential 3, Secret 4). May be raised, never lowered.
    #[schemars(extend("x-kubernetes-validations" = [{
        "rule": "{'Public': 1, 'Internal': 2, 'Confidential': 3, 'Secret': 4}[self] >= {'Public': 1, 'Internal': 2, 'Confidential': 3, 'Secret': 4}[oldSelf]",
        "message": "classification may be raised but never lowered"
    }]))]
    pub classification: Classification,
    /// Most the tenant may request in total, across all its namespaces.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(transform = positive_resources)]
    pub quota: Option<ResourceSet>,
    /// Most objects the tenant may have in each of its namespaces (a ResourceQuota count).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub object_limits: Option<ObjectLimits>,
    /// People and service accounts who administer the tenant's namespaces.
    #[serde(default)]
    #[schemars(length(max = 32))]
    pub admins: Vec<TenantAdmin>,
    /// Namespaces the tenant owns (created by the operator). Defaults to one namespace named
    /// after the tenant when empty.
    #[serde(default)]
    #[schemars(
        length(max = 16),
        inner(length(min = 1, max = 63), pattern(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")),
        extend("x-kubernetes-list-type" = "set"),
        transform = no_system_namespaces
    )]
    pub namespaces: Vec<String>,
}

/// Object counts per namespace.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ObjectLimits {
    /// StorageVolumes per namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 100_000))]
    pub storage_volumes: Option<u32>,
    /// ComputeInstances per namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 100_000))]
    pub compute_instances: Option<u32>,
}

/// Data residency policy.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Residency {
    /// Jurisdictions (ISO 3166-1 alpha-2) whose sites may hold the tenant's data.
    #[schemars(length(min = 1, max = 16), extend("x-kubernetes-list-type" = "set"))]
    pub jurisdictions: Vec<Jurisdiction>,
    /// Optional allow-list of Site names; when set, only these sites are used (and they must
    /// also be in an allowed jurisdiction).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(
        length(max = 64),
        inner(length(min = 1, max = 253), pattern(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")),
        extend("x-kubernetes-list-type" = "set")
    )]
    pub sites: Option<Vec<String>>,
}

/// Data classification, lowest to highest.
#[derive(
    Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, JsonSchema,
)]
pub enum Classification {
    Public,
    Internal,
    Confidential,
    Secret,
}

impl Classification {
    /// Lowest site security tier allowed to hold data of this classification.
    pub fn min_security_tier(self) -> u8 {
        match self {
            Self::Public => 1,
            Self::Internal => 2,
            Self::Confidential => 3,
            Self::Secret => 4,
        }
    }
}

/// Kind of subject granted admin rights.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum SubjectKind {
    User,
    Group,
    ServiceAccount,
}

/// A subject that administers the tenant's namespaces (bound to the tenant-admin role).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {"rule": "self.kind == 'ServiceAccount' ? has(self.__namespace__) : !has(self.__namespace__)",
     "message": "namespace is required for a ServiceAccount and not allowed for a User or Group"}
]))]
pub struct TenantAdmin {
    /// User, Group or ServiceAccount.
    pub kind: SubjectKind,
    /// Name of the subject as the cluster's authenticator reports it.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// Namespace of a ServiceAccount subject.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 63), pattern(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"))]
    pub namespace: Option<String>,
}

/// Observed state of a tenant.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TenantStatus {
    /// Namespaces the operator created and manages for this tenant.
    #[serde(default)]
    #[schemars(length(max = 16))]
    pub namespaces: Vec<String>,
    /// Resources the tenant's volumes and instances use now.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage: Option<ResourceSet>,
    /// Latest observations; Ready summarises onboarding.
    #[serde(default)]
    #[schemars(transform = conditions_list_map, length(max = 16))]
    pub conditions: Vec<Condition>,
}

/// Each namespace of a tenant is checked on its own (a rule per item, so the refusal names the
/// item and needs no list comprehension).
fn no_system_namespaces(schema: &mut schemars::Schema) {
    if let Some(items) = schema
        .get_mut("items")
        .and_then(serde_json::Value::as_object_mut)
    {
        items.insert(
            "x-kubernetes-validations".into(),
            serde_json::json!([{
                "rule": "!(self in ['default', 'sovereign-system']) && !self.startsWith('kube-')",
                "message": "system namespaces (default, kube-*, sovereign-system) cannot belong to a tenant"
            }]),
        );
    }
}
