//! End to end on a real API server: the operator binary (the chart's RBAC, its own token)
//! onboards the sample tenants; tenant admins act only in their namespaces; admission policies
//! refuse workloads outside tenant namespaces and namespace theft; owned objects come back when
//! deleted; deletion waits for volumes and releases namespaces.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests may panic

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Namespace, ResourceQuota};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::rbac::v1::RoleBinding;
use kube::api::{Api, DeleteParams, PostParams};
use serde_json::{Value, json};
use sovereign_crds::{Server, StorageVolume, Tenant};
use sovereign_tests::e2e::{
    Access, access, cluster, free_port, has_condition, spawn_operator, wait_for,
};
use sovereign_tests::samples::valid_objects;

const NS: &str = "sovereign-system";

fn volume(name: &str, ns: &str) -> StorageVolume {
    serde_json::from_value(json!({
        "apiVersion": "sovereign.io/v1alpha1", "kind": "StorageVolume",
        "metadata": {"name": name, "namespace": ns},
        "spec": {"size": "10Gi", "tier": "ssd"}
    }))
    .unwrap()
}

async fn tenant_json(api: &Api<Tenant>, name: &str) -> Option<Value> {
    api.get_opt(name)
        .await
        .ok()
        .flatten()
        .map(|t| serde_json::to_value(t).unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenants_are_onboarded_isolated_and_released_on_a_real_api_server() {
    let Some(cluster) =
        cluster("tenants_are_onboarded_isolated_and_released_on_a_real_api_server").await
    else {
        return;
    };
    let Some(helm) = sovereign_tests::chart::helm() else {
        return;
    };
    cluster.install_crds().await;
    cluster.install_admission().await;
    cluster.apply_chart_rbac(&helm).await;
    let kubeconfig = cluster
        .service_account_kubeconfig(NS, "sovereign-operator")
        .await;
    let operator = spawn_operator(
        Path::new(env!("CARGO_BIN_EXE_sovereign-operator")),
        "tenants-operator",
        &kubeconfig,
        free_port(),
        &[],
        "info",
    );

    // The sample namespaces (labelled by the cluster admin) and tenants.
    for (_, obj) in valid_objects().unwrap() {
        if obj["kind"] == "Namespace" || obj["kind"] == "Tenant" {
            cluster.apply(&obj).await.unwrap();
        }
    }
    let tenants: Api<Tenant> = Api::all(cluster.client.clone());
    for (tenant, ns, admins) in [
        ("moh", "moh-records", true),
        ("gdt", "gdt-ledger", true),
        ("vnshop", "vnshop", true),
    ] {
        wait_for(
            Duration::from_secs(30),
            &format!("tenant {tenant} Ready"),
            || async {
                let t = tenant_json(&tenants, tenant).await?;
                has_condition(&t, "Ready", "True").then_some(())
            },
        )
        .await;
        let quota: Api<ResourceQuota> = Api::namespaced(cluster.client.clone(), ns);
        let q = quota.get("sovereign-quota").await.unwrap();
        let hard = q.spec.unwrap().hard.unwrap();
        assert!(hard.contains_key("requests.cpu"), "{tenant}");
        if tenant == "moh" {
            assert_eq!(hard["count/storagevolumes.sovereign.io"].0, "20");
        }
        let np: Api<NetworkPolicy> = Api::namespaced(cluster.client.clone(), ns);
        np.get("sovereign-default-deny").await.unwrap();
        np.get("sovereign-allow-tenant").await.unwrap();
        let rb: Api<RoleBinding> = Api::namespaced(cluster.client.clone(), ns);
        assert_eq!(
            rb.get_opt("sovereign-tenant-admins")
                .await
                .unwrap()
                .is_some(),
            admins,
            "{tenant}"
        );
    }

    // A tenant admin (gdt's User) manages volumes in gdt-ledger only, nothing cluster-scoped.
    let gdt_admin = cluster.impersonate("nguyen.van.an@gdt.gov.vn", &["system:authenticated"]);
    let pp = PostParams::default();
    let own: Api<StorageVolume> = Api::namespaced(gdt_admin.clone(), "gdt-ledger");
    assert_eq!(
        access(
            "create a volume in its namespace",
            own.create(&pp, &volume("e2e-own", "gdt-ledger")).await
        ),
        Access::Allowed
    );
    let other: Api<StorageVolume> = Api::namespaced(gdt_admin.clone(), "moh-records");
    assert_eq!(
        access(
            "create a volume in another tenant's namespace",
            other.create(&pp, &volume("e2e-steal", "moh-records")).await
        ),
        Access::Refused
    );
    assert_eq!(
        access(
            "list servers",
            Api::<Server>::all(gdt_admin.clone())
                .list(&kube::api::ListParams::default())
                .await
        ),
        Access::Refused
    );
    assert_eq!(
        access(
            "delete a tenant",
            Api::<Tenant>::all(gdt_admin.clone())
                .delete("moh", &DeleteParams::default())
                .await
        ),
        Access::Refused
    );

    // A volume in a namespace of no tenant is refused at admission, naming the rule.
    let loose = cluster.namespace("e2e-loose").await;
    let err = Api::<StorageVolume>::namespaced(cluster.client.clone(), &loose.name)
        .create(&pp, &volume("stray", &loose.name))
        .await
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("sovereign-workloads-in-tenant-namespaces"),
        "{err}"
    );

    // Owned objects the operator repairs: deleted, back within 2 s.
    for (what, delete) in [
        (
            "NetworkPolicy",
            Box::pin(async {
                Api::<NetworkPolicy>::namespaced(cluster.client.clone(), "vnshop")
                    .delete("sovereign-allow-tenant", &DeleteParams::default())
                    .await
                    .map(|_| ())
            })
                as std::pin::Pin<
                    Box<dyn std::future::Future<Output = Result<(), kube::Error>> + Send>,
                >,
        ),
        (
            "RoleBinding",
            Box::pin(async {
                Api::<RoleBinding>::namespaced(cluster.client.clone(), "vnshop")
                    .delete("sovereign-tenant-admins", &DeleteParams::default())
                    .await
                    .map(|_| ())
            }),
        ),
    ] {
        delete.await.unwrap();
        let deleted = Instant::now();
        wait_for(
            Duration::from_secs(10),
            &format!("the {what} to come back"),
            || async {
                let back = match what {
                    "NetworkPolicy" => {
                        Api::<NetworkPolicy>::namespaced(cluster.client.clone(), "vnshop")
                            .get_opt("sovereign-allow-tenant")
                            .await
                            .ok()?
                            .is_some_and(|o| o.metadata.deletion_timestamp.is_none())
                    }
                    _ => Api::<RoleBinding>::namespaced(cluster.client.clone(), "vnshop")
                        .get_opt("sovereign-tenant-admins")
                        .await
                        .ok()?
                        .is_some(),
                };
                back.then_some(())
            },
        )
        .await;
        let took = deleted.elapsed();
        eprintln!("{what} deleted → recreated in {took:?}");
        assert!(took < Duration::from_secs(2), "{what}: {took:?}");
    }

    // Namespace theft: refused at admission when the other tenant claims it in its spec...
    let thief = json!({"apiVersion": "sovereign.io/v1alpha1", "kind": "Tenant",
        "metadata": {"name": "e2e-thief"},
        "spec": {"classification": "Public", "residency": {"jurisdictions": ["VN"]}, "namespaces": ["moh-records"]}});
    let err = cluster.apply(&thief).await.unwrap_err();
    assert!(
        err.to_string()
            .contains("sovereign-tenant-namespaces-unique")
            && err.to_string().contains("moh"),
        "{err}"
    );
    // ... and never taken over when only the namespace's label says so.
    let owned_name = sovereign_tests::e2e::unique("e2e-owned");
    cluster
        .ensure_namespace(
            &owned_name,
            &BTreeMap::from([("sovereign.io/tenant".to_owned(), "someone-else".to_owned())]),
        )
        .await;
    let late = json!({"apiVersion": "sovereign.io/v1alpha1", "kind": "Tenant",
        "metadata": {"name": "e2e-late"},
        "spec": {"classification": "Public", "residency": {"jurisdictions": ["VN"]}, "namespaces": [owned_name]}});
    cluster.apply(&late).await.unwrap();
    let t = wait_for(
        Duration::from_secs(20),
        "the late tenant's NamespaceConflict",
        || async {
            let t = tenant_json(&tenants, "e2e-late").await?;
            has_condition(&t, "NamespaceConflict", "True").then_some(t)
        },
    )
    .await;
    assert!(has_condition(&t, "Ready", "False"));
    let namespaces: Api<Namespace> = Api::all(cluster.client.clone());
    let ns = namespaces.get(&owned_name).await.unwrap();
    assert_eq!(
        ns.metadata.labels.unwrap()["sovereign.io/tenant"],
        "someone-else"
    );

    // Deletion: held while a volume lives, named in the condition; then the namespace the
    // tenant created is removed.
    let fresh_ns = sovereign_tests::e2e::unique("e2e-del");
    let del = json!({"apiVersion": "sovereign.io/v1alpha1", "kind": "Tenant",
        "metadata": {"name": "e2e-del"},
        "spec": {"classification": "Internal", "residency": {"jurisdictions": ["VN"]}, "namespaces": [fresh_ns]}});
    cluster.apply(&del).await.unwrap();
    wait_for(
        Duration::from_secs(20),
        "the e2e-del tenant Ready",
        || async {
            has_condition(&tenant_json(&tenants, "e2e-del").await?, "Ready", "True").then_some(())
        },
    )
    .await;
    let ns = namespaces.get(&fresh_ns).await.unwrap();
    assert_eq!(
        ns.metadata.annotations.unwrap()["sovereign.io/tenant-namespace"],
        "created"
    );
    let vols: Api<StorageVolume> = Api::namespaced(cluster.client.clone(), &fresh_ns);
    vols.create(&pp, &volume("keep-me", &fresh_ns))
        .await
        .unwrap();
    tenants
        .delete("e2e-del", &DeleteParams::default())
        .await
        .unwrap();
    let blocked = wait_for(Duration::from_secs(20), "deletion to be held", || async {
        let t = tenant_json(&tenants, "e2e-del").await?;
        let c = t["status"]["conditions"]
            .as_array()?
            .iter()
            .find(|c| c["type"] == "Ready")?
            .clone();
        (c["reason"] == "DeletionBlocked").then_some(c)
    })
    .await;
    assert!(
        blocked["message"]
            .as_str()
            .unwrap()
            .contains(&format!("{fresh_ns}/keep-me")),
        "{blocked}"
    );
    vols.delete("keep-me", &DeleteParams::default())
        .await
        .unwrap();
    wait_for(Duration::from_secs(30), "the tenant to go", || async {
        tenant_json(&tenants, "e2e-del")
            .await
            .is_none()
            .then_some(())
    })
    .await;
    wait_for(
        Duration::from_secs(30),
        "its namespace to be removed",
        || async {
            let gone = namespaces
                .get_opt(&fresh_ns)
                .await
                .ok()?
                .is_none_or(|n| n.metadata.deletion_timestamp.is_some());
            gone.then_some(())
        },
    )
    .await;

    // An adopted namespace is unlabelled, never deleted.
    own.delete("e2e-own", &DeleteParams::default())
        .await
        .unwrap();
    for name in ["e2e-late", "gdt", "moh", "vnshop"] {
        let _ = tenants.delete(name, &DeleteParams::default()).await;
    }
    // Wait for every finalizer to run while the operator is up: tenants left Terminating would
    // block later tests that apply the samples.
    for name in ["e2e-late", "gdt", "moh", "vnshop"] {
        wait_for(
            Duration::from_secs(30),
            &format!("{name} to go"),
            || async { tenant_json(&tenants, name).await.is_none().then_some(()) },
        )
        .await;
    }
    let ledger = namespaces.get("gdt-ledger").await.unwrap();
    assert!(
        ledger.metadata.deletion_timestamp.is_none(),
        "an adopted namespace was deleted"
    );
    let _ = namespaces
        .delete(&owned_name, &DeleteParams::default())
        .await;
    operator.assert_watches_held();
}
