//! The Helm chart rendered by a real helm: lints, renders into valid Kubernetes objects, least
//! privilege, hardened pods, TLS on by default, values refused by the schema.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests may panic

use k8s_openapi::api::apps::v1::{DaemonSet, Deployment};
use k8s_openapi::api::core::v1::PodSpec;
use k8s_openapi::api::rbac::v1::{ClusterRole, Role};
use serde_json::Value;
use sovereign_tests::chart::{self, ci_values, container_args, find};

fn typed<T: serde::de::DeserializeOwned>(v: &Value) -> T {
    serde_json::from_value(v.clone()).unwrap_or_else(|e| panic!("{e}: {v}"))
}

fn pod(objects: &[Value], kind: &str, name: &str) -> PodSpec {
    let o = find(objects, kind, name).unwrap_or_else(|| panic!("no {kind} {name}"));
    match kind {
        "DaemonSet" => typed::<DaemonSet>(o).spec.unwrap().template.spec.unwrap(),
        _ => typed::<Deployment>(o).spec.unwrap().template.spec.unwrap(),
    }
}

#[test]
fn lints_for_every_ci_values_file() {
    let Some(helm) = chart::helm() else { return };
    for values in ["default", "cert-manager", "plaintext"] {
        chart::lint(&helm, &["-f", &ci_values(values)]).unwrap_or_else(|e| panic!("{values}: {e}"));
    }
}

// Writes are only these: token reviews, status subresources (never specs but the Tenant's
// finalizer), node taints, Events, the operator's own Lease, and tenant onboarding (namespaces
// and what the operator owns in them).
const WRITABLE: &[&str] = &[
    "tokenreviews",
    "servers/status",
    "racks/status",
    "sites/status",
    "tenants/status",
    "tenants",
    "storagevolumes",
    "computeinstances",
    "storagevolumes/status",
    "computeinstances/status",
    "persistentvolumes",
    "persistentvolumeclaims",
    "pods",
    "nodes",
    "events",
    "leases",
    "namespaces",
    "resourcequotas",
    "networkpolicies",
    "rolebindings",
];
// Deletes: what the operator created for a tenant or a replica, and a cascaded tenant's
// workloads.
const DELETABLE: &[&str] = &[
    "persistentvolumes",
    "persistentvolumeclaims",
    "pods",
    "namespaces",
    "resourcequotas",
    "networkpolicies",
    "rolebindings",
    "storagevolumes",
    "computeinstances",
];

#[test]
fn rbac_is_least_privilege() {
    let Some(helm) = chart::helm() else { return };
    let objects = chart::render(&helm, &["-f", &ci_values("default")]).unwrap();
    for o in &objects {
        let rules = match o["kind"].as_str() {
            Some("ClusterRole") => typed::<ClusterRole>(o).rules.unwrap_or_default(),
            Some("Role") => typed::<Role>(o).rules.unwrap_or_default(),
            _ => continue,
        };
        for r in &rules {
            let all = r
                .verbs
                .iter()
                .chain(r.resources.iter().flatten())
                .chain(r.api_groups.iter().flatten());
            for item in all {
                assert_ne!(item, "*", "wildcard in {}", o["metadata"]["name"]);
            }
            let secrets = r.resources.iter().flatten().any(|x| x == "secrets");
            if secrets {
                assert_eq!(o["kind"], "Role", "Secrets only in a namespaced Role");
                assert_eq!(r.verbs, ["get"], "Secrets are read by name, never listed");
            }
            let name = o["metadata"]["name"].as_str().unwrap_or_default();
            // The tenant-admin role is what tenants get: their own workloads only.
            let tenant_role = name == "sovereign-tenant-admin";
            if r.verbs
                .iter()
                .any(|v| v == "delete" || v == "deletecollection")
            {
                for res in r.resources.iter().flatten() {
                    assert!(DELETABLE.contains(&res.as_str()), "{name}: deletes {res}");
                }
            }
            if tenant_role {
                for res in r.resources.iter().flatten() {
                    assert!(
                        !["secrets", "servers", "namespaces", "nodes"].contains(&res.as_str()),
                        "tenant admins get {res}"
                    );
                }
            }
            for write in ["create", "update", "patch"] {
                if !tenant_role && r.verbs.iter().any(|v| v == write) {
                    for res in r.resources.iter().flatten() {
                        assert!(
                            WRITABLE.contains(&res.as_str()),
                            "{}: {write} on {res}",
                            o["metadata"]["name"]
                        );
                    }
                }
            }
            if r.resources.iter().flatten().any(|x| x == "leases") {
                assert_eq!(o["kind"], "Role", "Leases only in the operator's namespace");
            }
        }
    }
    // Node agents run on tenant nodes: no API access at all.
    let bound: Vec<&str> = objects
        .iter()
        .filter(|o| o["kind"] == "RoleBinding" || o["kind"] == "ClusterRoleBinding")
        .flat_map(|o| o["subjects"].as_array().unwrap().iter())
        .filter_map(|s| s["name"].as_str())
        .collect();
    assert!(!bound.contains(&"sovereign-agent"), "{bound:?}");
    let agent_sa = find(&objects, "ServiceAccount", "sovereign-agent").unwrap();
    assert_eq!(agent_sa["automountServiceAccountToken"], false);
}

#[test]
fn pods_are_hardened_and_stream_over_tls_with_audience_tokens() {
    let Some(helm) = chart::helm() else { return };
    let objects = chart::render(&helm, &["-f", &ci_values("default")]).unwrap();
    for (kind, name) in [
        ("Deployment", "sovereign-operator"),
        ("DaemonSet", "sovereign-agent"),
        ("Deployment", "sovereign-collector"),
    ] {
        let spec = pod(&objects, kind, name);
        for c in &spec.containers {
            let sc = c.security_context.as_ref().unwrap();
            assert_eq!(sc.read_only_root_filesystem, Some(true), "{name}");
            assert_eq!(sc.run_as_non_root, Some(true), "{name}");
            assert_eq!(sc.allow_privilege_escalation, Some(false), "{name}");
            assert_eq!(
                sc.capabilities.as_ref().unwrap().drop.as_deref(),
                Some(&["ALL".to_owned()][..]),
                "{name}"
            );
            assert!(
                c.resources
                    .as_ref()
                    .and_then(|r| r.limits.as_ref())
                    .is_some_and(|l| l.contains_key("memory")),
                "{name} has a memory limit"
            );
        }
    }
    let operator = container_args(find(&objects, "Deployment", "sovereign-operator").unwrap());
    assert!(
        operator.contains(&"--check-only".to_owned()),
        "{operator:?}"
    );
    assert!(
        operator.contains(&"--tls-cert-file=/etc/sovereign/tls/tls.crt".to_owned()),
        "{operator:?}"
    );
    assert!(operator.contains(
        &"--node-agent=system:serviceaccount:sovereign-system:sovereign-agent".to_owned()
    ));
    for (kind, name) in [
        ("DaemonSet", "sovereign-agent"),
        ("Deployment", "sovereign-collector"),
    ] {
        let args = container_args(find(&objects, kind, name).unwrap());
        assert!(
            args.contains(
                &"--operator=https://sovereign-operator.sovereign-system.svc:8443".to_owned()
            ),
            "{args:?}"
        );
        assert!(args.contains(&"--operator-ca-file=/etc/sovereign/operator-ca/ca.crt".to_owned()));
        let spec = pod(&objects, kind, name);
        let token = spec
            .volumes
            .unwrap()
            .into_iter()
            .find(|v| v.name == "telemetry-token")
            .unwrap();
        let sa_token = token.projected.unwrap().sources.unwrap()[0]
            .service_account_token
            .clone()
            .unwrap();
        assert_eq!(sa_token.audience.as_deref(), Some("sovereign-telemetry"));
    }
    // The CA reaches agents as a ConfigMap, never the operator's key Secret.
    let ca = find(&objects, "ConfigMap", "sovereign-operator-ca").unwrap();
    assert!(
        ca["data"]["ca.crt"]
            .as_str()
            .unwrap()
            .starts_with("-----BEGIN CERTIFICATE-----")
    );
    let agent = pod(&objects, "DaemonSet", "sovereign-agent");
    assert!(
        agent.volumes.unwrap().iter().all(|v| v.secret.is_none()),
        "no Secret volume on tenant nodes"
    );
}

#[test]
fn plaintext_and_cert_manager_variants() {
    let Some(helm) = chart::helm() else { return };
    let plain = chart::render(&helm, &["-f", &ci_values("plaintext")]).unwrap();
    let collector = container_args(find(&plain, "Deployment", "sovereign-collector").unwrap());
    assert!(
        collector
            .contains(&"--operator=http://sovereign-operator.sovereign-system.svc:8443".to_owned())
    );
    assert!(
        !collector
            .iter()
            .any(|a| a.starts_with("--operator-ca-file"))
    );
    let operator = container_args(find(&plain, "Deployment", "sovereign-operator").unwrap());
    assert!(operator.contains(&"--plaintext-telemetry".to_owned()));
    assert!(find(&plain, "DaemonSet", "sovereign-agent").is_none());

    let cm = chart::render(&helm, &["-f", &ci_values("cert-manager")]).unwrap();
    let cert = find(&cm, "Certificate", "sovereign-operator").unwrap();
    assert_eq!(
        cert["spec"]["dnsNames"][0],
        "sovereign-operator.sovereign-system.svc"
    );
    assert_eq!(cert["spec"]["issuerRef"]["name"], "sovereign-ca");
    assert!(find(&cm, "ServiceMonitor", "sovereign-operator").is_some());
    assert!(find(&cm, "PodMonitor", "sovereign-collector").is_some());
    assert!(find(&cm, "PrometheusRule", "sovereign").is_some());
    // trust-manager publishes the CA there: the operator does not, and may not.
    let operator = container_args(find(&cm, "Deployment", "sovereign-operator").unwrap());
    assert!(!operator.iter().any(|a| a.starts_with("--publish-ca")));
}

/// Whatever the TLS mode, the CA ConfigMap the agents mount exists or is published: made by the
/// chart with the CA that signed the operator's certificate, or, with cert-manager alone,
/// published by the operator from the certificate's `ca.crt` (with RBAC for that one name).
#[test]
fn the_agents_ca_always_has_a_source() {
    let Some(helm) = chart::helm() else { return };
    let made = chart::render(&helm, &[]).unwrap();
    let secret = find(&made, "Secret", "sovereign-operator-tls").unwrap();
    let cm = find(&made, "ConfigMap", "sovereign-operator-ca").unwrap();
    let ca_in_secret =
        String::from_utf8(base64_decode(secret["data"]["ca.crt"].as_str().unwrap())).unwrap();
    assert_eq!(
        ca_in_secret.trim(),
        cm["data"]["ca.crt"].as_str().unwrap().trim(),
        "the ConfigMap holds the CA that signed the served certificate"
    );
    assert!(secret["data"]["tls.key"].is_string());
    assert!(
        cm["data"].get("tls.key").is_none(),
        "the agents' ConfigMap never holds a key"
    );

    let cm_only = chart::render(
        &helm,
        &[
            "--set",
            "tls.certManager.enabled=true",
            "--set",
            "tls.certManager.issuerRef.name=ca",
        ],
    )
    .unwrap();
    assert!(
        find(&cm_only, "Secret", "sovereign-operator-tls").is_none(),
        "cert-manager's"
    );
    let operator = container_args(find(&cm_only, "Deployment", "sovereign-operator").unwrap());
    assert!(operator.contains(&"--publish-ca-file=/etc/sovereign/tls/ca.crt".to_owned()));
    assert!(operator.contains(&"--publish-ca-configmap=sovereign-operator-ca".to_owned()));
    let role = find(&cm_only, "Role", "sovereign-operator-leader-election").unwrap();
    let rules = role["rules"].as_array().unwrap();
    let patch = rules
        .iter()
        .find(|r| {
            r["resources"][0] == "configmaps"
                && r["verbs"].as_array().unwrap().iter().any(|v| v == "patch")
        })
        .unwrap();
    assert_eq!(
        patch["resourceNames"][0], "sovereign-operator-ca",
        "patch narrowed to the one name"
    );
}

fn base64_decode(s: &str) -> Vec<u8> {
    let out = std::process::Command::new("base64")
        .arg("-d")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut c| {
            use std::io::Write as _;
            c.stdin.take().unwrap().write_all(s.as_bytes())?;
            c.wait_with_output()
        })
        .unwrap();
    out.stdout
}

#[test]
fn the_values_schema_refuses_bad_values() {
    let Some(helm) = chart::helm() else { return };
    for (set, why) in [
        ("operator.replicas=9", "more operators than a Lease needs"),
        ("operator.unknownKey=1", "a typo in a key"),
        ("collector.concurrency=0", "no BMC polled"),
        (
            "operator.otlpEndpoint=otel:4317",
            "an endpoint that is not a URL",
        ),
        (
            "tls.certManager.enabled=true",
            "cert-manager without an issuer",
        ),
    ] {
        let err =
            chart::render(&helm, &["-f", &ci_values("default"), "--set", set]).expect_err(why);
        assert!(err.contains("schema"), "{set}: {err}");
    }
}
