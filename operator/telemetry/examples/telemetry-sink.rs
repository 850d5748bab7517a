//! A loopback operator endpoint for trying agents without a cluster:
//! `cargo run -p sovereign-telemetry --example telemetry-sink -- 127.0.0.1:8443 <token>`.
//! Accepts streams presenting `<token>`, prints each change it sees.

use std::sync::Arc;

use sovereign_telemetry::{Hub, StaticTokens, serve};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:8443".into());
    let token = std::env::args()
        .nth(2)
        .ok_or("usage: telemetry-sink <addr> <token>")?;
    let hub = Arc::new(Hub::default());
    let mut changes = hub.subscribe();
    let printer = tokio::spawn(async move {
        while let Ok(server) = changes.recv().await {
            println!("changed: {server}");
        }
    });
    let listener = tokio::net::TcpListener::bind(&addr).await?;
    println!("listening on {addr}");
    let verifier = Arc::new(StaticTokens::new([(token, "dev-agent".to_owned())]));
    serve(listener, hub, verifier, async {
        let _ = tokio::signal::ctrl_c().await;
    })
    .await?;
    printer.abort();
    Ok(())
}
