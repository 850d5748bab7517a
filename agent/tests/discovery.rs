//! The bmc role's targets from a (fake) cluster: Servers watched, credential Secrets read with
//! `get` and cached, problems reported per server, the fleet following changes.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests may panic

use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use sovereign_agent::discovery::Discovery;
use sovereign_agent::mockbmc::{self, MockBmc};
use sovereign_agent::poller::{Auth, Fleet, PollConfig, Target};
use sovereign_agent::redfish::FailureClass;
use sovereign_tests::fakeapi::FakeApi;

const NS: &str = "sovereign-system";

fn rackmount() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../shared/redfish-mockups/dmtf/public-rackmount1")
}

fn server(name: &str, address: &str, secret_ns: &str) -> Value {
    json!({
        "apiVersion": "sovereign.io/v1alpha1",
        "kind": "Server",
        "metadata": {"name": name, "resourceVersion": "3"},
        "spec": {
            "rack": "hn1-r01",
            "bmc": {
                "address": address,
                "credentialsSecretRef": {"name": format!("bmc-{name}"), "namespace": secret_ns},
                "insecureSkipVerify": true
            }
        }
    })
}

fn secret(name: &str, password: &str) -> Value {
    let b64 =
        |s: &str| serde_json::to_value(k8s_openapi::ByteString(s.as_bytes().to_vec())).unwrap();
    json!({
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": name, "namespace": NS},
        "type": "kubernetes.io/basic-auth",
        "data": {"username": b64("sovereign-ro"), "password": b64(password)}
    })
}

fn secret_path(name: &str) -> String {
    format!("/api/v1/namespaces/{NS}/secrets/{name}")
}

fn api(bmc_url: &str, password: &str) -> FakeApi {
    FakeApi::new()
        .collection(
            "/apis/sovereign.io/v1alpha1/servers",
            "sovereign.io/v1alpha1",
            "Server",
            &json!([
                server("hn1-r01-s01", bmc_url, NS),
                server("hn1-r01-s02", "https://10.20.1.2", NS),
                server("hn1-r01-s03", "https://10.20.1.3", "tenant-a"),
            ]),
        )
        .object(
            &secret_path("bmc-hn1-r01-s01"),
            secret("bmc-hn1-r01-s01", password),
        )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn servers_and_secrets_become_the_fleet() {
    if !sovereign_agent::mockbmc::have_mockups("servers_and_secrets_become_the_fleet") {
        return;
    }
    let mut m = MockBmc::new(rackmount());
    m.credentials = Some(("sovereign-ro".into(), "pw-1".into()));
    let sessions = m.sessions.clone();
    let bmc = mockbmc::start(m).await.unwrap();

    let fake = api(&bmc.url(), "pw-1");
    let client = FakeApi::client(fake.start().await.unwrap()).unwrap();
    let mut discovery = Discovery::start(client, NS, None, Duration::from_secs(5))
        .await
        .unwrap();
    let targets = discovery.targets().await;
    let names: Vec<&str> = targets.iter().map(|t| t.name.as_str()).collect();
    assert_eq!(names, ["hn1-r01-s01", "hn1-r01-s02", "hn1-r01-s03"]);
    let ep = targets[0].endpoint.as_ref().unwrap();
    assert_eq!(
        (ep.username.as_str(), ep.password.as_str()),
        ("sovereign-ro", "pw-1")
    );
    assert_eq!(
        targets[1].endpoint.as_ref().unwrap_err(),
        "credentials Secret sovereign-system/bmc-hn1-r01-s02 not found"
    );
    assert!(
        targets[2]
            .endpoint
            .as_ref()
            .unwrap_err()
            .contains("outside the collector's namespace sovereign-system")
    );
    // The foreign Secret is never asked for; the others once, then served from the cache.
    let _ = discovery.targets().await;
    assert_eq!(fake.hits(&secret_path("bmc-hn1-r01-s01")), 1);
    assert_eq!(fake.hits(&secret_path("bmc-hn1-r01-s02")), 1);
    assert_eq!(
        fake.hits("/api/v1/namespaces/tenant-a/secrets/bmc-hn1-r01-s03"),
        0
    );

    let mut fleet = Fleet::from_targets(targets.clone(), PollConfig::default());
    let report = fleet.poll_cycle(Instant::now()).await;
    for o in &report.outcomes {
        if o.name == "hn1-r01-s01" {
            assert!(o.result.is_ok(), "{:?}", o.result.as_ref().err());
        } else {
            let e = o.result.as_ref().unwrap_err();
            assert_eq!(e.class(), FailureClass::Config, "{e}");
            assert!(e.to_string().starts_with("credentials Secret"), "{e}");
        }
    }
    assert_eq!(fleet.members()[0].auth, Auth::Session);
    assert_eq!(sessions.lock().unwrap().len(), 1);

    // Unchanged targets keep their session.
    assert_eq!(fleet.reconcile(targets.clone()).await, (0, 0));
    assert_eq!(fleet.members()[0].auth, Auth::Session);

    // A rotated password replaces the member (its session is closed); a deleted Server goes.
    let mut rotated = targets.clone();
    if let Ok(ep) = &mut rotated[0].endpoint {
        ep.password = "pw-2".into();
    }
    rotated.pop();
    assert_eq!(fleet.reconcile(rotated).await, (1, 1));
    assert_eq!(fleet.members().len(), 2);
    assert_eq!(fleet.members()[0].auth, Auth::Unsettled);
    assert!(
        sessions.lock().unwrap().is_empty(),
        "the replaced member logged out"
    );
    drop(bmc);
}

#[tokio::test]
async fn a_servers_poll_interval_is_honoured() {
    if !sovereign_agent::mockbmc::have_mockups("a_servers_poll_interval_is_honoured") {
        return;
    }
    let bmc = mockbmc::start(MockBmc::new(rackmount())).await.unwrap();
    let endpoint = sovereign_agent::redfish::Endpoint {
        address: bmc.url(),
        username: "root".into(),
        password: "calvin".into(),
        ca_bundle_pem: None,
        insecure_skip_verify: false,
        timeout: Duration::from_secs(5),
    };
    let mut slow = Target::new("every-5-min", Ok(endpoint.clone()));
    slow.interval = Some(Duration::from_mins(5));
    let every = Target::new("every-cycle", Ok(endpoint));
    let mut fleet = Fleet::from_targets(vec![slow, every], PollConfig::default());
    let t0 = Instant::now();
    let polled = |r: &sovereign_agent::poller::CycleReport| -> Vec<String> {
        r.outcomes.iter().map(|o| o.name.clone()).collect()
    };
    let first = fleet.poll_cycle(t0).await;
    assert_eq!(polled(&first), ["every-5-min", "every-cycle"]);
    let minute = fleet.poll_cycle(t0 + Duration::from_mins(1)).await;
    assert_eq!(polled(&minute), ["every-cycle"]);
    assert_eq!(minute.not_due, 1);
    // A cycle ticking a moment before the 5 minutes are up still polls it.
    let five = fleet.poll_cycle(t0 + Duration::from_secs(299)).await;
    assert_eq!(polled(&five), ["every-5-min", "every-cycle"]);
}
