//! Least privilege for real: the chart's RBAC, rendered by helm, applied to the cluster; then
//! each component's ServiceAccount (impersonated, so the real authorizer decides) does what it
//! needs and is refused the rest.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests may panic

use std::collections::BTreeMap;
use std::fmt::Write as _;

use k8s_openapi::api::authentication::v1::TokenReview;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Node, Pod, Secret, ServiceAccount};
use k8s_openapi::api::rbac::v1::ClusterRole;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams, WatchParams};
use serde_json::json;
use sovereign_crds::{ComputeInstance, Server, StorageVolume, Tenant};
use sovereign_tests::chart;
use sovereign_tests::e2e::Access::{Allowed, Refused};
use sovereign_tests::e2e::{Access, access, cluster};

const NS: &str = "sovereign-system";

struct Check {
    who: &'static str,
    what: &'static str,
    expected: Access,
    got: Access,
}

#[tokio::test]
async fn chart_rbac_is_least_privilege_on_a_real_api_server() {
    let Some(cluster) = cluster("chart_rbac_is_least_privilege_on_a_real_api_server").await else {
        return;
    };
    let Some(helm) = chart::helm() else { return };
    cluster.install_crds().await;
    cluster.ensure_namespace(NS, &BTreeMap::new()).await;
    cluster.apply_chart_rbac(&helm).await;

    // Objects to ask about: a BMC Secret in the collector's namespace and one elsewhere.
    let secrets: Api<Secret> = Api::namespaced(cluster.client.clone(), NS);
    let bmc_secret: Secret = serde_json::from_value(json!({
        "metadata": {"name": "bmc-rbac-e2e"},
        "stringData": {"username": "root", "password": "calvin"},
    }))
    .unwrap();
    let _ = secrets
        .patch(
            "bmc-rbac-e2e",
            &PatchParams::apply("sovereign-e2e"),
            &Patch::Apply(&bmc_secret),
        )
        .await
        .unwrap();

    let operator = cluster.as_service_account(NS, "sovereign-operator");
    let collector = cluster.as_service_account(NS, "sovereign-collector");
    let agent = cluster.as_service_account(NS, "sovereign-agent");
    let mut checks = Vec::new();
    macro_rules! check {
        ($who:literal, $what:literal, $expected:expr, $req:expr) => {
            checks.push(Check {
                who: $who,
                what: $what,
                expected: $expected,
                got: access($what, $req.await),
            });
        };
    }
    let lp = ListParams::default().limit(1);

    // The operator: reads the Sovereign API, checks CRDs, reviews agents' tokens.
    let review: TokenReview = serde_json::from_value(json!({
        "spec": {"token": "not-a-token", "audiences": ["sovereign-telemetry"]}
    }))
    .unwrap();
    check!(
        "operator",
        "list servers",
        Allowed,
        Api::<Server>::all(operator.clone()).list(&lp)
    );
    check!(
        "operator",
        "list tenants",
        Allowed,
        Api::<Tenant>::all(operator.clone()).list(&lp)
    );
    check!(
        "operator",
        "get a Server",
        Allowed,
        Api::<Server>::all(operator.clone()).get("rbac-e2e")
    );
    check!(
        "operator",
        "list computeinstances in all namespaces",
        Allowed,
        Api::<ComputeInstance>::all(operator.clone()).list(&lp)
    );
    check!(
        "operator",
        "list storagevolumes in all namespaces",
        Allowed,
        Api::<StorageVolume>::all(operator.clone()).list(&lp)
    );
    check!(
        "operator",
        "get CRD servers.sovereign.io",
        Allowed,
        Api::<CustomResourceDefinition>::all(operator.clone()).get("servers.sovereign.io")
    );
    check!(
        "operator",
        "create tokenreviews",
        Allowed,
        Api::<TokenReview>::all(operator.clone()).create(&PostParams::default(), &review)
    );
    check!(
        "operator",
        "get BMC credential Secret",
        Refused,
        Api::<Secret>::namespaced(operator.clone(), NS).get("bmc-rbac-e2e")
    );
    check!(
        "operator",
        "list Secrets in all namespaces",
        Refused,
        Api::<Secret>::all(operator.clone()).list(&lp)
    );
    check!(
        "operator",
        "delete a CRD",
        Refused,
        Api::<CustomResourceDefinition>::all(operator.clone())
            .delete("servers.sovereign.io", &DeleteParams::default())
    );
    check!(
        "operator",
        "create a ClusterRole (escalation)",
        Refused,
        Api::<ClusterRole>::all(operator.clone()).create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": "rbac-e2e-escalate"}})).unwrap()
        )
    );

    // ... writes status (never specs), taints Nodes, holds its Lease in its own namespace.
    let status_patch = Patch::Merge(json!({"status": {"health": "OK"}}));
    check!(
        "operator",
        "patch a Server's status",
        Allowed,
        Api::<Server>::all(operator.clone()).patch_status(
            "rbac-e2e",
            &PatchParams::default(),
            &status_patch
        )
    );
    check!(
        "operator",
        "patch a Server's spec",
        Refused,
        Api::<Server>::all(operator.clone()).patch(
            "rbac-e2e",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"maintenance": true}}))
        )
    );
    check!(
        "operator",
        "patch a Node (taints)",
        Allowed,
        Api::<Node>::all(operator.clone()).patch(
            "rbac-e2e-node",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"taints": []}}))
        )
    );
    check!(
        "operator",
        "delete a Node",
        Refused,
        Api::<Node>::all(operator.clone()).delete("rbac-e2e-node", &DeleteParams::default())
    );
    check!(
        "operator",
        "get its Lease",
        Allowed,
        Api::<Lease>::namespaced(operator.clone(), NS).get("sovereign-operator")
    );
    check!(
        "operator",
        "get a Lease in kube-system",
        Refused,
        Api::<Lease>::namespaced(operator.clone(), "kube-system").get("kube-scheduler")
    );

    // The collector: which BMCs exist, and their credentials by name, in its namespace only.
    check!(
        "collector",
        "list servers",
        Allowed,
        Api::<Server>::all(collector.clone()).list(&lp)
    );
    check!(
        "collector",
        "get a Server",
        Allowed,
        Api::<Server>::all(collector.clone()).get("rbac-e2e")
    );
    check!(
        "collector",
        "watch servers",
        Allowed,
        Api::<Server>::all(collector.clone()).watch(&WatchParams::default().timeout(1), "0")
    );
    check!(
        "collector",
        "get a named BMC Secret in its namespace",
        Allowed,
        Api::<Secret>::namespaced(collector.clone(), NS).get("bmc-rbac-e2e")
    );
    check!(
        "collector",
        "list Secrets in its namespace",
        Refused,
        Api::<Secret>::namespaced(collector.clone(), NS).list(&lp)
    );
    check!(
        "collector",
        "get a Secret in another namespace",
        Refused,
        Api::<Secret>::namespaced(collector.clone(), "kube-system").get("bmc-rbac-e2e")
    );
    check!(
        "collector",
        "list tenants",
        Refused,
        Api::<Tenant>::all(collector.clone()).list(&lp)
    );
    check!(
        "collector",
        "patch a Server",
        Refused,
        Api::<Server>::all(collector.clone()).patch(
            "any-server",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"maintenance": true}}))
        )
    );
    check!(
        "collector",
        "create tokenreviews",
        Refused,
        Api::<TokenReview>::all(collector.clone()).create(&PostParams::default(), &review)
    );

    // The node agent never talks to the Kubernetes API: everything is refused.
    check!(
        "agent",
        "get a BMC Secret",
        Refused,
        Api::<Secret>::namespaced(agent.clone(), NS).get("bmc-rbac-e2e")
    );
    check!(
        "agent",
        "list servers",
        Refused,
        Api::<Server>::all(agent.clone()).list(&lp)
    );
    check!(
        "agent",
        "list nodes",
        Refused,
        Api::<Node>::all(agent.clone()).list(&lp)
    );
    check!(
        "agent",
        "list pods",
        Refused,
        Api::<Pod>::all(agent.clone()).list(&lp)
    );
    check!(
        "agent",
        "list ServiceAccounts",
        Refused,
        Api::<ServiceAccount>::namespaced(agent.clone(), NS).list(&lp)
    );

    let mut table = String::new();
    let mut wrong = 0;
    for c in &checks {
        let mark = if c.expected == c.got { "ok " } else { "BAD" };
        if c.expected != c.got {
            wrong += 1;
        }
        let _ = writeln!(
            table,
            "{mark} {:<9} {:<42} expected {:?}, got {:?}",
            c.who, c.what, c.expected, c.got
        );
    }
    eprintln!("{table}");
    let allowed = checks.iter().filter(|c| c.got == Allowed).count();
    let refused = checks.iter().filter(|c| c.got == Refused).count();
    assert_eq!(wrong, 0, "RBAC differs from least privilege:\n{table}");
    assert!(
        allowed >= 10 && refused >= 10,
        "{allowed} allowed, {refused} refused"
    );
    let _ = secrets
        .delete("bmc-rbac-e2e", &DeleteParams::default())
        .await;
}
