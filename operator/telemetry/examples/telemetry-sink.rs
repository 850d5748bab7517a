//! A loopback operator endpoint for trying agents without a cluster:
//! `cargo run -p sovereign-telemetry --example telemetry-sink -- 127.0.0.1:8443 <token> [127.0.0.1:9090]`.
//! Accepts streams presenting `<token>`, prints each change it sees, serves `/metrics` on the
//! third address when given, and pushes OTLP when `OTEL_EXPORTER_OTLP_ENDPOINT` is set.
//! Without an inventory, rack and site labels are empty.

use std::sync::Arc;

use sovereign_telemetry::export::{self, Otlp, OtlpConfig};
use sovereign_telemetry::metrics::{Metrics, Placement};
use sovereign_telemetry::{Hub, Identity, StaticTokens, serve};

fn unplaced(server: &str) -> Placement {
    Placement {
        server: server.to_owned(),
        rack: String::new(),
        site: String::new(),
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let addr = args.next().unwrap_or_else(|| "127.0.0.1:8443".into());
    let token = args
        .next()
        .ok_or("usage: telemetry-sink <addr> <token> [metrics-addr]")?;
    let metrics_addr = args.next();
    let metrics = Arc::new(Metrics::new());
    let hub = Arc::new(Hub::default().with_metrics(metrics.clone(), unplaced));
    let mut changes = hub.subscribe();
    let printer = tokio::spawn(async move {
        while let Ok(server) = changes.recv().await {
            println!("changed: {server}");
        }
    });
    if let Some(metrics_addr) = metrics_addr {
        let listener = tokio::net::TcpListener::bind(&metrics_addr).await?;
        println!("metrics on http://{metrics_addr}/metrics");
        tokio::spawn(export::serve_metrics(listener, metrics, async {
            let _ = tokio::signal::ctrl_c().await;
        }));
    }
    let _otlp = match OtlpConfig::from_env("telemetry-sink") {
        Some(config) => {
            println!(
                "pushing OTLP to {} every {:?}",
                config.endpoint, config.interval
            );
            Some(Otlp::start(&config, &hub, unplaced)?)
        }
        None => None,
    };
    let listener = tokio::net::TcpListener::bind(&addr).await?;
    println!("listening on {addr}");
    let verifier = Arc::new(StaticTokens::new([(
        token,
        Identity::unrestricted("dev-agent"),
    )]));
    serve(listener, hub, verifier, async {
        let _ = tokio::signal::ctrl_c().await;
    })
    .await?;
    printer.abort();
    Ok(())
}
