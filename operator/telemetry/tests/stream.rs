//! The stream end to end over loopback: authentication, refusal, reconnection.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests may panic

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use sovereign_telemetry::proto::{
    BmcSummary, Source, sample::Body, telemetry_client::TelemetryClient,
};
use sovereign_telemetry::publisher::{self, PublisherConfig};
use sovereign_telemetry::{
    Hub, Identity, Sample, ServerTls, StaticTokens, TelemetryService, serve, serve_tls,
};
use tokio::net::TcpListener;

const AGENT: &str = "system:serviceaccount:sovereign-system:sovereign-collector";

fn now_ms() -> i64 {
    i64::try_from(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_millis(),
    )
    .unwrap()
}

fn sample(server: &str, at: i64, watts: f64) -> Sample {
    Sample {
        server: server.into(),
        source: Source::Redfish as i32,
        observed_at_unix_ms: at,
        body: Some(Body::Bmc(BmcSummary {
            consumed_watts: Some(watts),
            ..BmcSummary::default()
        })),
    }
}

/// An operator in its own runtime: dropping it kills the listener and every connection, as a
/// process exit would (aborting only the accept loop leaves hyper's connection tasks running).
struct Operator(Option<tokio::runtime::Runtime>);

impl Operator {
    fn start(addr: SocketAddr, hub: Arc<Hub>) -> Self {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let listener = std::net::TcpListener::bind(addr).unwrap();
        listener.set_nonblocking(true).unwrap();
        let verifier = Arc::new(StaticTokens::new([(
            "good-token".to_owned(),
            Identity::collector(AGENT),
        )]));
        rt.spawn(async move {
            let listener = TcpListener::from_std(listener).unwrap();
            let _ = serve(listener, hub, verifier, std::future::pending()).await;
        });
        Self(Some(rt))
    }
}

impl Drop for Operator {
    fn drop(&mut self) {
        if let Some(rt) = self.0.take() {
            rt.shutdown_background();
        }
    }
}

fn config(addr: SocketAddr) -> PublisherConfig {
    PublisherConfig {
        endpoint: format!("http://{addr}"),
        buffer: 64,
        backoff_base: Duration::from_millis(50),
        backoff_cap: Duration::from_millis(400),
        connect_timeout: Duration::from_secs(2),
        ca_pem: None,
    }
}

/// Waits (bounded) until `cond` holds.
async fn eventually(what: &str, cond: impl Fn() -> bool) {
    for _ in 0..200 {
        if cond() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("timed out waiting for {what}");
}

fn free_addr() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn authenticated_agent_streams_and_the_operator_keeps_the_latest() {
    let addr = free_addr();
    let hub = Arc::new(Hub::new(64));
    let mut changes = hub.subscribe();
    let server = Operator::start(addr, hub.clone());
    let (publisher, task) = publisher::start(config(addr), || Some("good-token".into()));
    let t = now_ms();
    assert!(publisher.offer(sample("hn1-r01-s01", t, 310.0)));
    assert!(publisher.offer(sample("hn1-r01-s02", t, 290.0)));
    assert!(publisher.offer(sample("hn1-r01-s01", t + 1, 315.0)));
    eventually("three samples", || {
        hub.latest("hn1-r01-s01")
            .first()
            .is_some_and(|s| s.observed_at_unix_ms == t + 1)
            && !hub.latest("hn1-r01-s02").is_empty()
    })
    .await;
    let mut seen = Vec::new();
    while let Ok(s) = changes.try_recv() {
        seen.push(s);
    }
    assert_eq!(seen, ["hn1-r01-s01", "hn1-r01-s02", "hn1-r01-s01"]);
    assert_eq!(publisher.stats().sent.load(Ordering::Relaxed), 3);
    drop(publisher);
    tokio::time::timeout(Duration::from_secs(5), task)
        .await
        .unwrap()
        .unwrap();
    drop(server);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_token_is_refused_and_nothing_lands() {
    let addr = free_addr();
    let hub = Arc::new(Hub::new(64));
    let server = Operator::start(addr, hub.clone());

    // The raw call says why.
    let mut client = TelemetryClient::connect(format!("http://{addr}"))
        .await
        .unwrap();
    let mut req = tonic::Request::new(tokio_stream::iter(vec![sample(
        "hn1-r01-s01",
        now_ms(),
        1.0,
    )]));
    req.metadata_mut()
        .insert("authorization", "Bearer stolen".parse().unwrap());
    let status = client.publish(req).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unauthenticated);
    let no_token = client
        .publish(tokio_stream::iter(vec![sample(
            "hn1-r01-s01",
            now_ms(),
            1.0,
        )]))
        .await
        .unwrap_err();
    assert_eq!(no_token.code(), tonic::Code::Unauthenticated);

    // The publisher backs off and retries; still nothing lands.
    let (publisher, task) = publisher::start(config(addr), || Some("stolen".into()));
    publisher.offer(sample("hn1-r01-s01", now_ms(), 1.0));
    eventually("a refusal", || {
        publisher.stats().failures.load(Ordering::Relaxed) >= 1
    })
    .await;
    publisher.offer(sample("hn1-r01-s01", now_ms(), 2.0));
    eventually("a second refusal, after backoff", || {
        publisher.stats().failures.load(Ordering::Relaxed) >= 2
    })
    .await;
    assert!(hub.is_empty());
    task.abort();
    drop(server);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_reconnects_when_the_operator_comes_back() {
    let addr = free_addr();
    let first = Arc::new(Hub::new(64));
    let server = Operator::start(addr, first.clone());
    let (publisher, task) = publisher::start(config(addr), || Some("good-token".into()));
    let t = now_ms();
    publisher.offer(sample("hn1-r01-s01", t, 100.0));
    eventually("first sample", || !first.is_empty()).await;

    // The operator goes away (restart, leader change) ...
    drop(server);
    publisher.offer(sample("hn1-r01-s01", t + 1, 101.0));
    eventually("the broken stream to be noticed", || {
        publisher.stats().failures.load(Ordering::Relaxed) >= 1
    })
    .await;

    // ... and comes back on the same address with an empty hub.
    let second = Arc::new(Hub::new(64));
    let server = Operator::start(addr, second.clone());
    publisher.offer(sample("hn1-r01-s01", t + 2, 102.0));
    eventually("samples after the restart", || {
        second
            .latest("hn1-r01-s01")
            .first()
            .is_some_and(|s| s.observed_at_unix_ms == t + 2)
    })
    .await;
    assert!(publisher.stats().connects.load(Ordering::Relaxed) >= 2);
    task.abort();
    drop(server);
}

fn ca() -> rcgen::CertifiedIssuer<'static, rcgen::KeyPair> {
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    rcgen::CertifiedIssuer::self_signed(params, rcgen::KeyPair::generate().unwrap()).unwrap()
}

/// A certificate for 127.0.0.1 signed by `ca`, and its key (PEM).
fn leaf(ca: &rcgen::CertifiedIssuer<'static, rcgen::KeyPair>) -> (String, String) {
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["127.0.0.1".to_owned()])
        .unwrap()
        .signed_by(&key, ca)
        .unwrap();
    (cert.pem(), key.serialize_pem())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_tls_the_agent_verifies_the_operator() {
    let ca = ca();
    let (cert, key) = leaf(&ca);
    let tls = ServerTls::Pem { cert, key };
    let hub = Arc::new(Hub::new(64));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let verifier = Arc::new(StaticTokens::new([(
        "good-token".to_owned(),
        Identity::collector(AGENT),
    )]));
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(serve_tls(
        listener,
        TelemetryService::new(hub.clone(), verifier),
        Some(tls),
        async {
            let _ = stopped.await;
        },
    ));
    let tls_config = |ca_pem: String| PublisherConfig {
        endpoint: format!("https://{addr}"),
        ca_pem: Some(ca_pem),
        ..config(addr)
    };

    // An agent trusting another CA refuses the operator: nothing is sent.
    let (impostor, impostor_task) =
        publisher::start(tls_config(self::ca().pem()), || Some("good-token".into()));
    assert!(impostor.offer(sample("hn1-r09-s09", now_ms(), 1.0)));
    eventually("the impostor's handshake fails", || {
        impostor.stats().failures.load(Ordering::Relaxed) >= 2
    })
    .await;
    assert_eq!(impostor.stats().sent.load(Ordering::Relaxed), 0);
    assert!(hub.latest("hn1-r09-s09").is_empty());
    drop(impostor);
    impostor_task.abort();

    // With the operator's CA the stream is up and samples land.
    let (publisher, task) = publisher::start(tls_config(ca.pem()), || Some("good-token".into()));
    assert!(publisher.offer(sample("hn1-r01-s01", now_ms(), 330.0)));
    eventually("the sample over TLS", || {
        !hub.latest("hn1-r01-s01").is_empty()
    })
    .await;
    assert_eq!(publisher.stats().failures.load(Ordering::Relaxed), 0);
    drop(publisher);
    tokio::time::timeout(Duration::from_secs(5), task)
        .await
        .unwrap()
        .unwrap();
    stop.send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(5), server)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
}

/// A certificate rotated on disk (cert-manager renewing it, the chart signing a new one on
/// upgrade) is served to the next connection without restarting the server: an agent that
/// trusts only the new CA gets through once the files change, and not before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotated_certificate_is_served_without_a_restart() {
    let dir = std::env::temp_dir().join(format!("sovereign-tls-rotation-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (cert_file, key_file) = (dir.join("tls.crt"), dir.join("tls.key"));
    let issue = |ca: &rcgen::CertifiedIssuer<'static, rcgen::KeyPair>| {
        let (cert, key) = leaf(ca);
        std::fs::write(&key_file, key).unwrap();
        std::fs::write(&cert_file, cert).unwrap();
    };
    let (old_ca, new_ca) = (ca(), ca());
    issue(&old_ca);
    let hub = Arc::new(Hub::new(64));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let verifier = Arc::new(StaticTokens::new([(
        "good-token".to_owned(),
        Identity::collector(AGENT),
    )]));
    let tls = ServerTls::Files {
        cert: cert_file.clone(),
        key: key_file.clone(),
        every: Duration::from_millis(100),
    };
    let server = tokio::spawn(serve_tls(
        listener,
        TelemetryService::new(hub.clone(), verifier),
        Some(tls),
        std::future::pending(),
    ));
    let trusting = |ca_pem: String| PublisherConfig {
        endpoint: format!("https://{addr}"),
        ca_pem: Some(ca_pem),
        ..config(addr)
    };
    let (early, early_task) =
        publisher::start(trusting(new_ca.pem()), || Some("good-token".into()));
    assert!(early.offer(sample("hn1-r01-s01", now_ms(), 1.0)));
    eventually("the new CA is refused before the rotation", || {
        early.stats().failures.load(Ordering::Relaxed) >= 1
    })
    .await;
    assert_eq!(early.stats().sent.load(Ordering::Relaxed), 0);
    drop(early);
    early_task.abort();

    issue(&new_ca);
    let (publisher, task) = publisher::start(trusting(new_ca.pem()), || Some("good-token".into()));
    assert!(publisher.offer(sample("hn1-r01-s02", now_ms(), 2.0)));
    eventually("a sample over the rotated certificate", || {
        !hub.latest("hn1-r01-s02").is_empty()
    })
    .await;
    drop(publisher);
    task.abort();
    server.abort();
    let _ = std::fs::remove_dir_all(&dir);
}

/// With two operator replicas, only the Lease holder takes samples: a follower refuses the
/// stream (the agent reconnects, through the Service to a replica at random), and a leader that
/// loses the Lease ends its streams so agents find the new one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_leading_replica_takes_samples() {
    let hub = Arc::new(Hub::new(64));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let verifier = Arc::new(StaticTokens::new([(
        "good-token".to_owned(),
        Identity::collector(AGENT),
    )]));
    let (lease, leading) = tokio::sync::watch::channel(false);
    let service = TelemetryService::new(hub.clone(), verifier).leading(Some(leading));
    let server = tokio::spawn(serve_tls(listener, service, None, std::future::pending()));
    let (publisher, task) = publisher::start(config(addr), || Some("good-token".into()));
    // A collector offers a reading every 20 ms.
    let poller = {
        let publisher = publisher.clone();
        tokio::spawn(async move {
            for i in 0.. {
                publisher.offer(sample("hn1-r01-s01", now_ms(), f64::from(i)));
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    };
    eventually("the follower to refuse three times", || {
        publisher.stats().failures.load(Ordering::Relaxed) >= 3
    })
    .await;
    assert!(
        hub.latest("hn1-r01-s01").is_empty(),
        "a follower took a sample"
    );

    // Leading: the agent's next attempt streams.
    lease.send_replace(true);
    eventually("samples at the leader", || {
        !hub.latest("hn1-r01-s01").is_empty()
    })
    .await;
    let failures = publisher.stats().failures.load(Ordering::Relaxed);

    // Lost the Lease: the open stream ends and nothing more is taken.
    lease.send_replace(false);
    eventually("the stream to end", || {
        publisher.stats().failures.load(Ordering::Relaxed) > failures
    })
    .await;
    let last = hub.latest("hn1-r01-s01")[0].observed_at_unix_ms;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        hub.latest("hn1-r01-s01")[0].observed_at_unix_ms,
        last,
        "a replica that stopped leading took a sample"
    );
    poller.abort();
    drop(publisher);
    task.abort();
    server.abort();
}
