//! BMCs to the operator's hub: mock BMCs, the poller, the conversion and the authenticated
//! stream, all over loopback.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests may panic

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use sovereign_agent::mockbmc::{self, Fault, MockBmc};
use sovereign_agent::poller::{Fleet, PollConfig};
use sovereign_agent::redfish::Endpoint;
use sovereign_agent::roles;
use sovereign_telemetry::proto::{self, sample::Body};
use sovereign_telemetry::publisher::{self, PublisherConfig};
use sovereign_telemetry::{Hub, Identity, StaticTokens, serve};

fn tree(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../shared/redfish-mockups")
        .join(name)
}

fn endpoint(url: String) -> Endpoint {
    Endpoint {
        address: url,
        username: "root".into(),
        password: "calvin".into(),
        ca_bundle_pem: None,
        insecure_skip_verify: false,
        timeout: Duration::from_secs(5),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bmc_telemetry_reaches_the_operator() {
    if !sovereign_agent::mockbmc::have_mockups("bmc_telemetry_reaches_the_operator") {
        return;
    }
    let hub = Arc::new(Hub::new(64));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let verifier = Arc::new(StaticTokens::new([(
        "collector-token".to_owned(),
        Identity::collector("system:serviceaccount:sovereign-system:sovereign-collector"),
    )]));
    let server = tokio::spawn(serve(
        listener,
        hub.clone(),
        verifier,
        std::future::pending(),
    ));

    let healthy = mockbmc::start(MockBmc::new(tree("dmtf/public-rackmount1")))
        .await
        .unwrap();
    let intruded = mockbmc::start(MockBmc::new(tree("variants/dell-intrusion")))
        .await
        .unwrap();
    let mut locked = MockBmc::new(tree("dmtf/public-rackmount1"));
    locked.fault = Fault::Status(401);
    let locked = mockbmc::start(locked).await.unwrap();
    let mut fleet = Fleet::new(
        vec![
            ("hn1-r01-s01".into(), endpoint(healthy.url())),
            ("hn1-r01-s02".into(), endpoint(intruded.url())),
            ("hn1-r01-s03".into(), endpoint(locked.url())),
        ],
        PollConfig::default(),
    );
    let (publisher, task) = publisher::start(
        PublisherConfig {
            endpoint: format!("http://{addr}"),
            buffer: 64,
            backoff_base: Duration::from_millis(50),
            backoff_cap: Duration::from_millis(500),
            connect_timeout: Duration::from_secs(2),
            ca_pem: None,
        },
        || Some("collector-token".into()),
    );
    let report = roles::bmc_cycle(&mut fleet, &publisher).await;
    assert_eq!(report.outcomes.len(), 3);

    for _ in 0..200 {
        if hub.len() == 3 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert_eq!(hub.len(), 3, "one sample per BMC reached the hub");
    let body = |server: &str| hub.latest(server).remove(0).body.unwrap();
    let Body::Bmc(s01) = body("hn1-r01-s01") else {
        panic!("s01 should have a summary")
    };
    assert_eq!(s01.consumed_watts, Some(344.0));
    assert_eq!(s01.inlet_celsius, Some(25.0));
    assert_eq!(s01.manufacturer, "Contoso");
    let Body::Bmc(s02) = body("hn1-r01-s02") else {
        panic!("s02 should have a summary")
    };
    assert_eq!(s02.intrusion, "HardwareIntrusion");
    assert_eq!(s02.health, proto::Health::Critical as i32);
    let Body::Failure(s03) = body("hn1-r01-s03") else {
        panic!("s03 should be a failure")
    };
    assert_eq!(s03.class, "BmcUnauthorized");
    assert!(!s03.reason.contains("calvin"), "no credentials in reasons");

    drop(publisher);
    let _ = tokio::time::timeout(Duration::from_secs(5), task).await;
    server.abort();
}
