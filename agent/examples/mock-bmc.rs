//! Serves a mockup tree as a BMC until Ctrl-C:
//! `cargo run -p sovereign-agent --example mock-bmc -- ../shared/redfish-mockups/vendor/dell`
//! (loopback, plain HTTP, an ephemeral port), or for a cluster's collector to read over TLS:
//! `mock-bmc TREE [latency-ms] --listen 10.244.0.1:18443 --tls-cert bmc.crt --tls-key bmc.key`
//! (the node's own bridge address; never a network beyond the machine).

use std::path::PathBuf;
use std::time::Duration;

use sovereign_agent::mockbmc::{self, MockBmc};
use sovereign_telemetry::tls::{self, ServerTls};

/// TLS connections handed to axum.
struct TlsListener {
    incoming: tokio_stream::wrappers::ReceiverStream<
        Result<tokio_rustls::server::TlsStream<tokio::net::TcpStream>, std::io::Error>,
    >,
    addr: std::net::SocketAddr,
}

impl axum::serve::Listener for TlsListener {
    type Io = tokio_rustls::server::TlsStream<tokio::net::TcpStream>;
    type Addr = std::net::SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        use tokio_stream::StreamExt as _;
        loop {
            match self.incoming.next().await {
                Some(Ok(io)) => {
                    let peer = io.get_ref().0.peer_addr().unwrap_or(self.addr);
                    return (io, peer);
                }
                Some(Err(_)) => {}
                None => std::future::pending::<()>().await,
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(self.addr)
    }
}

fn flag(args: &[String], name: &str) -> Option<String> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let positional: Vec<&String> = args
        .iter()
        .enumerate()
        .filter(|(i, a)| !a.starts_with("--") && (*i == 0 || !args[*i - 1].starts_with("--")))
        .map(|(_, a)| a)
        .collect();
    let tree = positional.first().ok_or(
        "usage: mock-bmc <mockup tree> [latency-ms] [--listen ADDR --tls-cert F --tls-key F]",
    )?;
    let latency = positional
        .get(1)
        .and_then(|v| v.parse().ok())
        .map_or(Duration::ZERO, Duration::from_millis);
    let mut bmc = MockBmc::new(PathBuf::from(tree.as_str()));
    bmc.latency = latency;
    match (
        flag(&args, "--listen"),
        flag(&args, "--tls-cert"),
        flag(&args, "--tls-key"),
    ) {
        (Some(listen), Some(cert), Some(key)) => {
            let listener = tokio::net::TcpListener::bind(&listen).await?;
            let addr = listener.local_addr()?;
            let files = ServerTls::Files {
                cert: cert.into(),
                key: key.into(),
                every: Duration::from_secs(30),
            };
            let acceptor = tls::acceptor_for(&files, &[b"http/1.1", b"h2"])?;
            println!("https://{addr}");
            let listener = TlsListener {
                incoming: tls::incoming(listener, acceptor),
                addr,
            };
            tokio::select! {
                r = axum::serve(listener, mockbmc::app(bmc)) => r?,
                r = tokio::signal::ctrl_c() => r?,
            }
        }
        (None, None, None) => {
            let running = mockbmc::start(bmc).await?;
            println!("{}", running.url());
            tokio::signal::ctrl_c().await?;
        }
        _ => return Err("--listen, --tls-cert and --tls-key go together".into()),
    }
    Ok(())
}
