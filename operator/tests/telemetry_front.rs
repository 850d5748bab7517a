//! The operator's telemetry front against a fake Kubernetes API on loopback (inventory lists
//! and watches, TokenReview): agents stream, samples are authorised by role and land in
//! `/metrics` with the inventory's rack and site.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests may panic

use std::net::SocketAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};
use sovereign_operator::telemetry::{self, TelemetryError, TelemetryOptions};
use sovereign_telemetry::proto::{
    BmcSummary, OsSummary, Sample, Source, sample::Body as SampleBody,
};
use sovereign_telemetry::publisher::{self, PublisherConfig};
use sovereign_tests::fakeapi::FakeApi;

const COLLECTOR: &str = "system:serviceaccount:sovereign-system:sovereign-collector";
const AGENT: &str = "system:serviceaccount:sovereign-system:sovereign-agent";

fn token_review(review: &Value) -> Value {
    let token = review["spec"]["token"].as_str().unwrap_or_default();
    assert_eq!(review["spec"]["audiences"], json!(["sovereign-telemetry"]));
    let status = match token {
        "collector-token" => json!({"authenticated": true, "user": {"username": COLLECTOR}}),
        "node-token" => json!({"authenticated": true, "user": {
            "username": AGENT,
            "extra": {"authentication.kubernetes.io/node-name": ["worker-7"]}
        }}),
        _ => json!({"authenticated": false, "error": "invalid bearer token"}),
    };
    json!({
        "apiVersion": "authentication.k8s.io/v1",
        "kind": "TokenReview",
        "spec": review["spec"],
        "status": status,
    })
}

async fn fake_api() -> SocketAddr {
    let servers = json!([{
        "apiVersion": "sovereign.io/v1alpha1",
        "kind": "Server",
        "metadata": {"name": "hn1-r01-s01", "resourceVersion": "5"},
        "spec": {
            "rack": "hn1-r01",
            "nodeName": "worker-7",
            "bmc": {
                "address": "https://10.20.1.1",
                "credentialsSecretRef": {"name": "bmc-hn1-r01-s01", "namespace": "sovereign-system"},
                "insecureSkipVerify": true
            }
        }
    }]);
    let racks = json!([{
        "apiVersion": "sovereign.io/v1alpha1",
        "kind": "Rack",
        "metadata": {"name": "hn1-r01", "resourceVersion": "6"},
        "spec": {"site": "hn1", "powerBudgetWatts": 12000, "maxInletCelsius": 32}
    }]);
    FakeApi::new()
        .collection(
            "/apis/sovereign.io/v1alpha1/servers",
            "sovereign.io/v1alpha1",
            "Server",
            &servers,
        )
        .collection(
            "/apis/sovereign.io/v1alpha1/racks",
            "sovereign.io/v1alpha1",
            "Rack",
            &racks,
        )
        .post("/apis/authentication.k8s.io/v1/tokenreviews", token_review)
        .start()
        .await
        .unwrap()
}

fn free_addr() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

fn now_ms() -> i64 {
    i64::try_from(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_millis(),
    )
    .unwrap()
}

fn options(grpc: SocketAddr, metrics: SocketAddr) -> TelemetryOptions {
    TelemetryOptions {
        grpc_addr: grpc,
        metrics_addr: metrics,
        tls: None,
        plaintext: true,
        collectors: vec![COLLECTOR.into()],
        node_agents: vec![AGENT.into()],
    }
}

fn agent(
    grpc: SocketAddr,
    token: &'static str,
) -> (publisher::Publisher, tokio::task::JoinHandle<()>) {
    publisher::start(
        PublisherConfig {
            endpoint: format!("http://{grpc}"),
            buffer: 16,
            backoff_base: Duration::from_millis(50),
            backoff_cap: Duration::from_millis(200),
            connect_timeout: Duration::from_secs(2),
            ca_pem: None,
        },
        move || Some(token.to_owned()),
    )
}

/// None until the endpoint is up.
async fn scrape(metrics: SocketAddr) -> Option<String> {
    reqwest::get(format!("http://{metrics}/metrics"))
        .await
        .ok()?
        .text()
        .await
        .ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agents_stream_through_token_review_into_labelled_metrics() {
    let client = FakeApi::client(fake_api().await).unwrap();
    let (grpc, metrics) = (free_addr(), free_addr());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let front = telemetry::Front::start(client, options(grpc, metrics)).unwrap();
    let hub = front.hub();
    let front = tokio::spawn(front.serve(None, async {
        let _ = stopped.await;
    }));

    // The node agent on worker-7 reports its OS; the collector reports the BMC.
    let (node, node_task) = agent(grpc, "node-token");
    let (collector, collector_task) = agent(grpc, "collector-token");
    // A node agent claiming another node is refused sample by sample.
    let (liar, liar_task) = agent(grpc, "node-token");
    let os = |server: &str| Sample {
        server: server.into(),
        source: Source::Os as i32,
        observed_at_unix_ms: now_ms(),
        body: Some(SampleBody::Os(OsSummary {
            load1: 2.5,
            ..OsSummary::default()
        })),
    };
    assert!(liar.offer(os("worker-8")));
    assert!(node.offer(os("worker-7")));
    assert!(collector.offer(Sample {
        server: "hn1-r01-s01".into(),
        source: Source::Redfish as i32,
        observed_at_unix_ms: now_ms(),
        body: Some(SampleBody::Bmc(BmcSummary {
            consumed_watts: Some(388.0),
            health: 1,
            ..BmcSummary::default()
        })),
    }));

    let want_os = r#"sovereign_server_load1{server="hn1-r01-s01",rack="hn1-r01",site="hn1"} 2.5"#;
    let want_bmc =
        r#"sovereign_server_power_watts{server="hn1-r01-s01",rack="hn1-r01",site="hn1"} 388.0"#;
    let mut text = String::new();
    for _ in 0..100 {
        text = scrape(metrics).await.unwrap_or_default();
        if text.contains(want_os) && text.contains(want_bmc) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(text.contains(want_os), "{text}");
    assert!(text.contains(want_bmc), "{text}");
    assert!(!text.contains("worker-8"), "{text}");
    // What status writing and placement will read: one sample per source, under the names
    // the agents published.
    assert_eq!(hub.latest("worker-7").len(), 1);
    assert_eq!(hub.latest("hn1-r01-s01").len(), 1);
    assert!(hub.latest("worker-8").is_empty());

    for (p, t) in [
        (node, node_task),
        (collector, collector_task),
        (liar, liar_task),
    ] {
        drop(p);
        let _ = tokio::time::timeout(Duration::from_secs(5), t).await;
    }
    stop.send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(10), front)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
}

#[tokio::test]
async fn no_tls_without_an_explicit_opt_out() {
    let mut o = options(free_addr(), free_addr());
    o.plaintext = false;
    let err = o.validate().unwrap_err();
    assert!(matches!(err, TelemetryError::NoTls));
    assert!(err.to_string().contains("--tls-cert-file"));
}
