//! Tenant onboarding, decided purely: which namespaces to create, adopt or refuse, and the
//! objects each one gets (ResourceQuota, NetworkPolicies, admin RoleBinding), all labelled
//! with the tenant so drift is seen and removal is clean. The shell in `tenants.rs` applies it.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Namespace;
use serde_json::{Value, json};
use sovereign_crds::tenant::SubjectKind;
use sovereign_crds::{ConditionStatus, Tenant};

use super::conditions::Desired;

/// Label naming a namespace's (and each owned object's) tenant.
pub const TENANT_LABEL: &str = "sovereign.io/tenant";
/// Label carrying the tenant's classification on its namespaces.
pub const CLASSIFICATION_LABEL: &str = "sovereign.io/classification";
/// Annotation recording whether the operator created a namespace or adopted an existing one
/// (adopted ones are unlabelled, never deleted, when the tenant goes).
pub const ORIGIN_ANNOTATION: &str = "sovereign.io/tenant-namespace";
/// Annotation on a Tenant that lets its deletion delete its volumes and instances too.
pub const CASCADE_ANNOTATION: &str = "sovereign.io/cascade-delete";
/// Finalizer that releases a tenant's namespaces before it goes.
pub const FINALIZER: &str = "sovereign.io/tenant-cleanup";
/// ClusterRole tenant admins are bound to (shipped by the chart).
pub const ADMIN_ROLE: &str = "sovereign-tenant-admin";
/// Names of the objects the operator owns in each tenant namespace.
pub const QUOTA_NAME: &str = "sovereign-quota";
pub const DENY_POLICY: &str = "sovereign-default-deny";
pub const ALLOW_POLICY: &str = "sovereign-allow-tenant";
pub const ADMIN_BINDING: &str = "sovereign-tenant-admins";

/// Storage class per tier (the storage controller creates PVs in these).
pub fn storage_class(tier: &str) -> String {
    format!("sovereign-{tier}")
}

/// The namespaces a tenant owns: `spec.namespaces`, or one named after it.
pub fn namespaces(t: &Tenant) -> Vec<String> {
    if t.spec.namespaces.is_empty() {
        t.metadata.name.clone().into_iter().collect()
    } else {
        t.spec.namespaces.clone()
    }
}

/// What to do with one namespace of a tenant.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NamespacePlan {
    /// Absent: create it (and delete it when the tenant goes).
    Create,
    /// Present without a tenant: label it (and unlabel it when the tenant goes).
    Adopt,
    /// Already this tenant's; `created` tells which of the two it was.
    Keep { created: bool },
    /// Another tenant's: never taken over.
    Conflict { owner: String },
}

fn label<'a>(ns: &'a Namespace, key: &str) -> Option<&'a str> {
    ns.metadata.labels.as_ref()?.get(key).map(String::as_str)
}

/// Decides one namespace from what the cluster holds.
pub fn plan_namespace(tenant: &str, existing: Option<&Namespace>) -> NamespacePlan {
    let Some(ns) = existing else {
        return NamespacePlan::Create;
    };
    match label(ns, TENANT_LABEL) {
        Some(owner) if owner != tenant => NamespacePlan::Conflict {
            owner: owner.to_owned(),
        },
        Some(_) => NamespacePlan::Keep {
            created: ns
                .metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get(ORIGIN_ANNOTATION))
                .is_some_and(|o| o == "created"),
        },
        None => NamespacePlan::Adopt,
    }
}

fn labels(t: &Tenant) -> BTreeMap<String, String> {
    BTreeMap::from([
        (
            TENANT_LABEL.to_owned(),
            t.metadata.name.clone().unwrap_or_default(),
        ),
        (
            "app.kubernetes.io/managed-by".to_owned(),
            crate::FIELD_MANAGER.to_owned(),
        ),
    ])
}

fn owner_reference(t: &Tenant) -> Value {
    json!({
        "apiVersion": "sovereign.io/v1alpha1",
        "kind": "Tenant",
        "name": t.metadata.name,
        "uid": t.metadata.uid,
        "controller": true,
        "blockOwnerDeletion": false,
    })
}

fn meta(t: &Tenant, name: &str, ns: &str) -> Value {
    json!({
        "name": name,
        "namespace": ns,
        "labels": labels(t),
        "ownerReferences": [owner_reference(t)],
    })
}

/// The namespace as the operator applies it (only the fields it owns).
pub fn namespace(t: &Tenant, name: &str, created: bool) -> Value {
    let mut l = labels(t);
    l.insert(
        CLASSIFICATION_LABEL.to_owned(),
        format!("{:?}", t.spec.classification),
    );
    json!({
        "apiVersion": "v1", "kind": "Namespace",
        "metadata": {
            "name": name,
            "labels": l,
            "annotations": {ORIGIN_ANNOTATION: if created { "created" } else { "adopted" }},
        },
    })
}

/// The ResourceQuota of one tenant namespace, or None without a quota. Each namespace gets the
/// whole tenant quota as its ceiling; the tenant-wide sum is the placement engine's to keep.
pub fn quota(t: &Tenant, ns: &str) -> Option<Value> {
    if t.spec.quota.is_none() && t.spec.object_limits.is_none() {
        return None;
    }
    let q = t.spec.quota.clone().unwrap_or_default();
    let mut hard = serde_json::Map::new();
    if let Some(limits) = &t.spec.object_limits {
        if let Some(n) = limits.storage_volumes {
            hard.insert(
                "count/storagevolumes.sovereign.io".into(),
                json!(n.to_string()),
            );
        }
        if let Some(n) = limits.compute_instances {
            hard.insert(
                "count/computeinstances.sovereign.io".into(),
                json!(n.to_string()),
            );
        }
    }
    if let Some(cpu) = &q.cpu {
        hard.insert("requests.cpu".into(), json!(cpu.0));
        hard.insert("limits.cpu".into(), json!(cpu.0));
    }
    if let Some(mem) = &q.memory {
        hard.insert("requests.memory".into(), json!(mem.0));
        hard.insert("limits.memory".into(), json!(mem.0));
    }
    if let Some(g) = q.gpus {
        hard.insert("requests.nvidia.com/gpu".into(), json!(g.to_string()));
    }
    if let Some(st) = &q.storage {
        for (tier, v) in [("nvme", &st.nvme), ("ssd", &st.ssd), ("hdd", &st.hdd)] {
            if let Some(v) = v {
                hard.insert(
                    format!(
                        "{}.storageclass.storage.k8s.io/requests.storage",
                        storage_class(tier)
                    ),
                    json!(v.0),
                );
            }
        }
    }
    Some(json!({
        "apiVersion": "v1", "kind": "ResourceQuota",
        "metadata": meta(t, QUOTA_NAME, ns),
        "spec": {"hard": hard},
    }))
}

/// Default deny, then traffic within the tenant's namespaces and DNS.
pub fn network_policies(t: &Tenant, ns: &str) -> [Value; 2] {
    let tenant = t.metadata.name.clone().unwrap_or_default();
    let same_tenant = json!([{"namespaceSelector": {"matchLabels": {TENANT_LABEL: tenant}}}]);
    [
        json!({
            "apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
            "metadata": meta(t, DENY_POLICY, ns),
            "spec": {"podSelector": {}, "policyTypes": ["Ingress", "Egress"]},
        }),
        json!({
            "apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
            "metadata": meta(t, ALLOW_POLICY, ns),
            "spec": {
                "podSelector": {},
                "policyTypes": ["Ingress", "Egress"],
                "ingress": [{"from": same_tenant}],
                "egress": [
                    {"to": same_tenant},
                    {
                        "to": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "kube-system"}},
                                "podSelector": {"matchLabels": {"k8s-app": "kube-dns"}}}],
                        "ports": [{"protocol": "UDP", "port": 53}, {"protocol": "TCP", "port": 53}],
                    },
                ],
            },
        }),
    ]
}

/// The RoleBinding of the tenant's admins, or None when it has none.
pub fn admin_binding(t: &Tenant, ns: &str) -> Option<Value> {
    if t.spec.admins.is_empty() {
        return None;
    }
    let subjects: Vec<Value> = t
        .spec
        .admins
        .iter()
        .map(|a| match a.kind {
            SubjectKind::ServiceAccount => json!({
                "kind": "ServiceAccount", "name": a.name, "namespace": a.namespace,
            }),
            SubjectKind::User => json!({
                "kind": "User", "apiGroup": "rbac.authorization.k8s.io", "name": a.name,
            }),
            SubjectKind::Group => json!({
                "kind": "Group", "apiGroup": "rbac.authorization.k8s.io", "name": a.name,
            }),
        })
        .collect();
    Some(json!({
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
        "metadata": meta(t, ADMIN_BINDING, ns),
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": ADMIN_ROLE},
        "subjects": subjects,
    }))
}

/// The tenant's conditions from what onboarding found.
pub fn conditions(
    namespaces: &[(String, NamespacePlan)],
    blocked_deletion: Option<&[String]>,
) -> Vec<Desired> {
    use ConditionStatus::{False, True};
    let conflicts: Vec<String> = namespaces
        .iter()
        .filter_map(|(n, p)| match p {
            NamespacePlan::Conflict { owner } => Some(format!("{n} (tenant {owner})")),
            _ => None,
        })
        .collect();
    let conflict = if conflicts.is_empty() {
        Desired::new(
            "NamespaceConflict",
            False,
            "NoConflict",
            "every namespace is this tenant's",
        )
    } else {
        Desired::new(
            "NamespaceConflict",
            True,
            "NamespaceOwnedByAnotherTenant",
            format!("not taken over: {}", conflicts.join(", ")),
        )
    };
    let ready = if let Some(live) = blocked_deletion {
        Desired::new(
            "Ready",
            False,
            "DeletionBlocked",
            format!(
                "deletion waits for these StorageVolumes to be deleted (or annotate the tenant {CASCADE_ANNOTATION}=true): {}",
                live.join(", ")
            ),
        )
    } else if !conflicts.is_empty() {
        Desired::new(
            "Ready",
            False,
            "NamespaceConflict",
            conflict.message.clone(),
        )
    } else {
        Desired::new(
            "Ready",
            True,
            "Onboarded",
            format!(
                "namespaces ready: {}",
                namespaces
                    .iter()
                    .map(|(n, _)| n.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        )
    };
    vec![ready, conflict]
}

/// `QuotaExceeded` from what the tenant uses (a quota lowered below what is already placed;
/// new placements over quota are refused by the engine).
pub fn quota_condition(t: &Tenant, used: &sovereign_placement::Resources) -> Desired {
    use ConditionStatus::{False, True};
    let quota = sovereign_placement::from_crds::tenant_policy(t)
        .ok()
        .and_then(|p| p.quota);
    match quota.and_then(|q| used.exceeds(&q).map(|c| (c, q))) {
        Some((class, q)) => Desired::new(
            "QuotaExceeded",
            True,
            "UsageAboveQuota",
            format!(
                "{} in use {} is above the quota of {}",
                class.describe(),
                sovereign_placement::resources::human(class, used.get(class)),
                sovereign_placement::resources::human(class, q.get(class))
            ),
        ),
        None => Desired::new(
            "QuotaExceeded",
            False,
            "WithinQuota",
            format!("in use: {used}"),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tenant(namespaces: &[&str]) -> Tenant {
        serde_json::from_value(json!({
            "apiVersion": "sovereign.io/v1alpha1", "kind": "Tenant",
            "metadata": {"name": "moh", "uid": "u-1"},
            "spec": {
                "classification": "Confidential",
                "residency": {"jurisdictions": ["VN"]},
                "namespaces": namespaces,
                "quota": {"cpu": "64", "memory": "256Gi", "gpus": 2, "storage": {"nvme": "10Ti"}},
                "objectLimits": {"storageVolumes": 50, "computeInstances": 20},
                "admins": [
                    {"kind": "User", "name": "alice@moh.gov.vn"},
                    {"kind": "ServiceAccount", "name": "ci", "namespace": "moh-ci"}
                ]
            }
        }))
        .unwrap()
    }

    fn ns(labels: &[(&str, &str)], origin: Option<&str>) -> Namespace {
        serde_json::from_value(json!({
            "metadata": {
                "name": "x",
                "labels": labels.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect::<BTreeMap<_, _>>(),
                "annotations": origin.map(|o| json!({ORIGIN_ANNOTATION: o})).unwrap_or(json!({})),
            }
        }))
        .unwrap()
    }

    #[test]
    fn namespaces_are_created_adopted_kept_or_refused() {
        assert_eq!(plan_namespace("moh", None), NamespacePlan::Create);
        assert_eq!(
            plan_namespace("moh", Some(&ns(&[], None))),
            NamespacePlan::Adopt
        );
        assert_eq!(
            plan_namespace("moh", Some(&ns(&[(TENANT_LABEL, "moh")], Some("created")))),
            NamespacePlan::Keep { created: true }
        );
        assert_eq!(
            plan_namespace("moh", Some(&ns(&[(TENANT_LABEL, "gdt")], None))),
            NamespacePlan::Conflict {
                owner: "gdt".into()
            }
        );
    }

    #[test]
    fn default_namespace_is_the_tenants_name() {
        assert_eq!(namespaces(&tenant(&[])), ["moh"]);
        assert_eq!(namespaces(&tenant(&["a", "b"])), ["a", "b"]);
    }

    #[test]
    fn quota_maps_every_class_and_binding_every_admin() {
        let t = tenant(&[]);
        let q = quota(&t, "moh").unwrap();
        let hard = &q["spec"]["hard"];
        assert_eq!(hard["requests.cpu"], "64");
        assert_eq!(hard["requests.memory"], "256Gi");
        assert_eq!(hard["requests.nvidia.com/gpu"], "2");
        assert_eq!(
            hard["sovereign-nvme.storageclass.storage.k8s.io/requests.storage"],
            "10Ti"
        );
        assert_eq!(q["metadata"]["labels"][TENANT_LABEL], "moh");
        assert_eq!(q["metadata"]["ownerReferences"][0]["uid"], "u-1");
        let b = admin_binding(&t, "moh").unwrap();
        assert_eq!(b["roleRef"]["name"], ADMIN_ROLE);
        assert_eq!(b["subjects"][1]["namespace"], "moh-ci");
        let [deny, allow] = network_policies(&t, "moh");
        assert_eq!(deny["spec"]["policyTypes"], json!(["Ingress", "Egress"]));
        assert_eq!(
            allow["spec"]["ingress"][0]["from"][0]["namespaceSelector"]["matchLabels"]
                [TENANT_LABEL],
            "moh"
        );
    }

    #[test]
    fn conflicts_and_blocked_deletion_are_not_ready_and_say_why() {
        let c = conditions(
            &[
                ("a".into(), NamespacePlan::Keep { created: true }),
                (
                    "b".into(),
                    NamespacePlan::Conflict {
                        owner: "gdt".into(),
                    },
                ),
            ],
            None,
        );
        assert_eq!(
            (c[0].status, c[0].reason.as_str()),
            (ConditionStatus::False, "NamespaceConflict")
        );
        assert!(c[1].message.contains("b (tenant gdt)"));
        let d = conditions(
            &[("a".into(), NamespacePlan::Keep { created: true })],
            Some(&["a/vol-1".into()]),
        );
        assert_eq!(d[0].reason, "DeletionBlocked");
        assert!(d[0].message.contains("a/vol-1"));
    }
}
