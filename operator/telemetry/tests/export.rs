//! Exports over loopback: `/metrics` scraped over HTTP, OTLP metrics and audit logs pushed to a
//! gRPC collector.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests may panic

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use opentelemetry_proto::tonic::collector::logs::v1::logs_service_server::{
    LogsService, LogsServiceServer,
};
use opentelemetry_proto::tonic::collector::logs::v1::{
    ExportLogsServiceRequest, ExportLogsServiceResponse,
};
use opentelemetry_proto::tonic::collector::metrics::v1::metrics_service_server::{
    MetricsService, MetricsServiceServer,
};
use opentelemetry_proto::tonic::collector::metrics::v1::{
    ExportMetricsServiceRequest, ExportMetricsServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::metrics::v1::{metric::Data, number_data_point};
use sovereign_telemetry::audit::AuditLogs;
use sovereign_telemetry::auth::Identity;
use sovereign_telemetry::export::{self, ExportError, Otlp, OtlpConfig};
use sovereign_telemetry::metrics::{Metrics, Placement};
use sovereign_telemetry::proto::{BmcSummary, Failure, Source, sample::Body};
use sovereign_telemetry::{Hub, Sample};
use tokio::sync::{mpsc, oneshot};

fn now_ms() -> i64 {
    i64::try_from(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_millis(),
    )
    .unwrap()
}

fn locate(server: &str) -> Placement {
    let rack = server.rsplit_once('-').map_or("", |(r, _)| r).to_owned();
    Placement {
        server: server.to_owned(),
        site: rack.split('-').next().unwrap_or("").to_owned(),
        rack,
    }
}

fn collector() -> Identity {
    Identity::collector("system:serviceaccount:sovereign-system:sovereign-collector")
}

fn samples() -> [Sample; 2] {
    [
        Sample {
            server: "hn1-r01-s01".into(),
            source: Source::Redfish as i32,
            observed_at_unix_ms: now_ms(),
            body: Some(Body::Bmc(BmcSummary {
                consumed_watts: Some(412.5),
                health: 1,
                ..BmcSummary::default()
            })),
        },
        Sample {
            server: "hn1-r02-s07".into(),
            source: Source::Redfish as i32,
            observed_at_unix_ms: now_ms(),
            body: Some(Body::Failure(Failure {
                class: "BmcUnauthorized".into(),
                reason: "401 from the BMC".into(),
            })),
        },
    ]
}

#[tokio::test]
async fn metrics_are_scraped_over_http() {
    let metrics = Arc::new(Metrics::new());
    let hub = Hub::new(16).with_metrics(metrics.clone(), locate);
    for s in samples() {
        hub.accept(s, &collector()).unwrap();
    }
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = oneshot::channel::<()>();
    let server = tokio::spawn(export::serve_metrics(listener, metrics, async {
        let _ = stopped.await;
    }));

    let client = reqwest::Client::new();
    let res = client
        .get(format!("http://{addr}/metrics"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert!(
        res.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("application/openmetrics-text")
    );
    let text = res.text().await.unwrap();
    assert!(
        text.contains(
            r#"sovereign_server_power_watts{server="hn1-r01-s01",rack="hn1-r01",site="hn1"} 412.5"#
        ),
        "{text}"
    );
    assert!(
        text.contains(r#"sovereign_server_bmc_unreadable{server="hn1-r02-s07",rack="hn1-r02",site="hn1",class="BmcUnauthorized"} 1.0"#),
        "{text}"
    );
    assert!(text.ends_with("# EOF\n"));
    let health = client
        .get(format!("http://{addr}/healthz"))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status(), 200);
    let missing = client
        .get(format!("http://{addr}/secrets"))
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), 404);

    stop.send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(5), server)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
}

/// An OTLP collector on loopback that hands every export to the test.
struct Receiver(mpsc::UnboundedSender<ExportMetricsServiceRequest>);

#[tonic::async_trait]
impl MetricsService for Receiver {
    async fn export(
        &self,
        request: tonic::Request<ExportMetricsServiceRequest>,
    ) -> Result<tonic::Response<ExportMetricsServiceResponse>, tonic::Status> {
        let _ = self.0.send(request.into_inner());
        Ok(tonic::Response::new(ExportMetricsServiceResponse {
            partial_success: None,
        }))
    }
}

/// (metric, attributes as "k=v" sorted, value) of every gauge point in an export.
fn points(req: &ExportMetricsServiceRequest) -> Vec<(String, Vec<String>, f64)> {
    let mut out = Vec::new();
    for rm in &req.resource_metrics {
        for sm in &rm.scope_metrics {
            for m in &sm.metrics {
                let Some(Data::Gauge(g)) = &m.data else {
                    continue;
                };
                for p in &g.data_points {
                    let mut attrs: Vec<String> = p
                        .attributes
                        .iter()
                        .map(|kv| {
                            let v = match kv.value.as_ref().and_then(|v| v.value.as_ref()) {
                                Some(Value::StringValue(s)) => s.clone(),
                                other => format!("{other:?}"),
                            };
                            format!("{}={v}", kv.key)
                        })
                        .collect();
                    attrs.sort();
                    let v = match p.value {
                        Some(number_data_point::Value::AsDouble(d)) => d,
                        #[allow(clippy::cast_precision_loss)]
                        Some(number_data_point::Value::AsInt(i)) => i as f64,
                        None => f64::NAN,
                    };
                    out.push((m.name.clone(), attrs, v));
                }
            }
        }
    }
    out
}

/// Flushes (a blocking call) and waits for what the collector received.
async fn push(
    otlp: &Arc<Otlp>,
    rx: &mut mpsc::UnboundedReceiver<ExportMetricsServiceRequest>,
) -> ExportMetricsServiceRequest {
    let flusher = otlp.clone();
    tokio::task::spawn_blocking(move || flusher.flush())
        .await
        .unwrap()
        .unwrap();
    tokio::time::timeout(Duration::from_secs(10), rx.recv())
        .await
        .expect("the collector received an export")
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn otlp_pushes_the_latest_samples_with_placement_attributes() {
    let (tx, mut rx) = mpsc::unbounded_channel();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = oneshot::channel::<()>();
    let server = tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(MetricsServiceServer::new(Receiver(tx)))
            .serve_with_incoming_shutdown(
                tokio_stream::wrappers::TcpListenerStream::new(listener),
                async {
                    let _ = stopped.await;
                },
            ),
    );

    let hub = Arc::new(Hub::new(16));
    for s in samples() {
        hub.accept(s, &collector()).unwrap();
    }
    let config = OtlpConfig {
        endpoint: format!("http://{addr}"),
        // Only the explicit flush below exports.
        interval: Duration::from_hours(1),
        timeout: Duration::from_secs(5),
        service_name: "sovereign-operator-test".into(),
    };
    let otlp = Arc::new(Otlp::start(&config, &hub, locate).unwrap());
    let export = push(&otlp, &mut rx).await;
    let got = points(&export);
    assert!(
        got.contains(&(
            "sovereign_server_power_watts".into(),
            vec![
                "rack=hn1-r01".into(),
                "server=hn1-r01-s01".into(),
                "site=hn1".into()
            ],
            412.5
        )),
        "{got:?}"
    );
    assert!(
        got.contains(&(
            "sovereign_server_bmc_unreadable".into(),
            vec![
                "class=BmcUnauthorized".into(),
                "rack=hn1-r02".into(),
                "server=hn1-r02-s07".into(),
                "site=hn1".into()
            ],
            1.0
        )),
        "{got:?}"
    );
    let service_name = export.resource_metrics[0]
        .resource
        .as_ref()
        .unwrap()
        .attributes
        .iter()
        .find(|kv| kv.key == "service.name")
        .and_then(|kv| kv.value.as_ref())
        .and_then(|v| v.value.clone());
    assert_eq!(
        service_name,
        Some(Value::StringValue("sovereign-operator-test".into()))
    );

    // A newer sample replaces the old value in the next export.
    let mut newer = samples()[0].clone();
    newer.observed_at_unix_ms += 1;
    newer.body = Some(Body::Bmc(BmcSummary {
        consumed_watts: Some(500.0),
        ..BmcSummary::default()
    }));
    hub.accept(newer, &collector()).unwrap();
    let export = push(&otlp, &mut rx).await;
    let watts: Vec<f64> = points(&export)
        .into_iter()
        .filter(|p| p.0 == "sovereign_server_power_watts")
        .map(|p| p.2)
        .collect();
    assert_eq!(watts, [500.0]);

    drop(otlp);
    stop.send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(5), server)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
}

#[tokio::test]
async fn otlp_refuses_an_endpoint_that_is_not_a_url() {
    let config = OtlpConfig {
        endpoint: "otel-collector:4317".into(),
        interval: Duration::from_mins(1),
        timeout: Duration::from_secs(5),
        service_name: "x".into(),
    };
    let err = Otlp::start(&config, &Arc::new(Hub::default()), locate).unwrap_err();
    assert!(matches!(err, ExportError::Endpoint(_)), "{err}");
    assert!(err.to_string().contains("otel-collector:4317"));
}

/// An OTLP logs collector on loopback that hands every export to the test.
struct LogReceiver(mpsc::UnboundedSender<ExportLogsServiceRequest>);

#[tonic::async_trait]
impl LogsService for LogReceiver {
    async fn export(
        &self,
        request: tonic::Request<ExportLogsServiceRequest>,
    ) -> Result<tonic::Response<ExportLogsServiceResponse>, tonic::Status> {
        let _ = self.0.send(request.into_inner());
        Ok(tonic::Response::new(ExportLogsServiceResponse {
            partial_success: None,
        }))
    }
}

fn text(v: Option<&opentelemetry_proto::tonic::common::v1::AnyValue>) -> String {
    match v.and_then(|v| v.value.as_ref()) {
        Some(Value::StringValue(s)) => s.clone(),
        other => format!("{other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_records_and_only_they_go_out_as_otlp_logs() {
    use tracing_subscriber::layer::SubscriberExt as _;
    let (tx, mut rx) = mpsc::unbounded_channel();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(LogsServiceServer::new(LogReceiver(tx)))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    let config = OtlpConfig {
        endpoint: format!("http://{addr}"),
        interval: Duration::from_hours(1),
        timeout: Duration::from_secs(5),
        service_name: "sovereign-operator-test".into(),
    };
    let logs = Arc::new(AuditLogs::start(&config).unwrap());
    let subscriber = tracing_subscriber::registry().with(logs.layer());
    tracing::subscriber::with_default(subscriber, || {
        tracing::info!(target: "sovereign::audit", decision = "placed", tenant = "moh",
            object = "StorageVolume/moh-records/db", servers = "hn1-r01-s02 (hn1-r01/hn1)",
            "placement decided");
        tracing::info!(target: "sovereign_operator::controller", "an ordinary log line");
    });
    let flusher = logs.clone();
    tokio::task::spawn_blocking(move || flusher.flush())
        .await
        .unwrap()
        .unwrap();
    let export = tokio::time::timeout(Duration::from_secs(10), rx.recv())
        .await
        .expect("the collector received an export")
        .unwrap();
    let records: Vec<_> = export
        .resource_logs
        .iter()
        .flat_map(|r| &r.scope_logs)
        .flat_map(|s| &s.log_records)
        .collect();
    assert_eq!(
        records.len(),
        1,
        "only the audit record leaves: {records:?}"
    );
    let r = records[0];
    assert_eq!(text(r.body.as_ref()), "placement decided");
    let attr = |k: &str| {
        text(
            r.attributes
                .iter()
                .find(|kv| kv.key == k)
                .and_then(|kv| kv.value.as_ref()),
        )
    };
    assert_eq!(attr("decision"), "placed");
    assert_eq!(attr("tenant"), "moh");
    assert_eq!(attr("object"), "StorageVolume/moh-records/db");
    drop(logs);
    server.abort();
}
