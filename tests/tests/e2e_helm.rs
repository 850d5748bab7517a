//! `helm install` of the chart into a real API server: every object is created (the Lease,
//! RBAC, admission policies, StorageClasses, the dashboard), the workloads get their Pods, which
//! stay Pending (no kubelets here), and `helm uninstall` takes it away again.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests may panic

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use k8s_openapi::api::apps::v1::{DaemonSet, Deployment};
use k8s_openapi::api::core::v1::{ConfigMap, Pod, ServiceAccount};
use k8s_openapi::api::storage::v1::StorageClass;
use kube::api::{Api, ListParams};
use sovereign_tests::chart::{self, ci_values};
use sovereign_tests::e2e::{cluster, unique, wait_for};

fn helm(helm: &Path, args: &[&str]) -> (bool, String) {
    let out = Command::new(helm).args(args).output().unwrap();
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

#[tokio::test]
async fn helm_install_creates_everything_and_uninstall_removes_it() {
    let Some(cluster) = cluster("helm install").await else {
        return;
    };
    let Some(helm_bin) = chart::helm() else {
        return;
    };
    let ns = unique("sov-helm");
    let chart_dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../charts/sovereign");
    // Other e2e tests apply the CRDs (as the operator does) and the chart's cluster-wide RBAC
    // and policies themselves: the release takes them over (same content) instead of failing.
    let (ok, out) = helm(
        &helm_bin,
        &[
            "install",
            "sovereign",
            chart_dir,
            "--namespace",
            &ns,
            "--create-namespace",
            "-f",
            &ci_values("default"),
            "--set",
            "dashboard.enabled=true",
            "--take-ownership",
            "--force-conflicts",
        ],
    );
    assert!(ok, "helm install: {out}");

    let c = cluster.client.clone();
    let deployments: Api<Deployment> = Api::namespaced(c.clone(), &ns);
    for name in ["sovereign-operator", "sovereign-collector"] {
        deployments
            .get(name)
            .await
            .unwrap_or_else(|e| panic!("{name}: {e}"));
    }
    let ds: Api<DaemonSet> = Api::namespaced(c.clone(), &ns);
    ds.get("sovereign-agent").await.unwrap();
    let sas: Api<ServiceAccount> = Api::namespaced(c.clone(), &ns);
    for name in [
        "sovereign-operator",
        "sovereign-collector",
        "sovereign-agent",
    ] {
        sas.get(name)
            .await
            .unwrap_or_else(|e| panic!("{name}: {e}"));
    }
    Api::<ConfigMap>::namespaced(c.clone(), &ns)
        .get("sovereign-dashboard")
        .await
        .unwrap();
    Api::<StorageClass>::all(c.clone())
        .get("sovereign-ssd")
        .await
        .unwrap();

    // The controller-manager makes the operator's and collector's Pods; no kubelet runs them.
    let pods: Api<Pod> = Api::namespaced(c.clone(), &ns);
    let listed = wait_for(Duration::from_mins(1), "the release's Pods", || {
        let pods = pods.clone();
        async move {
            let l = pods.list(&ListParams::default()).await.ok()?;
            let names: Vec<String> = l
                .items
                .iter()
                .filter_map(|p| p.metadata.name.clone())
                .collect();
            let has = |prefix: &str| names.iter().any(|n| n.starts_with(prefix));
            (has("sovereign-operator-") && has("sovereign-collector-")).then_some(l.items)
        }
    })
    .await;
    for p in &listed {
        let phase = p.status.as_ref().and_then(|s| s.phase.clone());
        assert_eq!(phase.as_deref(), Some("Pending"), "{:?}", p.metadata.name);
    }

    let (ok, out) = helm(&helm_bin, &["uninstall", "sovereign", "--namespace", &ns]);
    assert!(ok, "helm uninstall: {out}");
    assert!(deployments.get("sovereign-operator").await.is_err());
    let _ = Api::<k8s_openapi::api::core::v1::Namespace>::all(c)
        .delete(&ns, &kube::api::DeleteParams::default())
        .await;
}
