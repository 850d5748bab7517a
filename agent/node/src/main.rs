//! `sovereign-node`: the node agent (DaemonSet). Thin: arguments, logging, one thread.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use sovereign_node_agent::os::OsCollector;
use sovereign_node_agent::stream::{self, StreamArgs};

/// Sovereign node agent: this host's OS telemetry, streamed to the operator.
#[derive(Parser, Debug)]
#[command(name = "sovereign-node", version)]
struct Cli {
    #[command(flatten)]
    stream: StreamArgs,
    /// Name the samples are published under (the Kubernetes node name; the operator maps it to
    /// the Server whose spec.nodeName matches).
    #[arg(long, env = "NODE_NAME")]
    server: String,
    #[arg(long, default_value_t = 15)]
    interval_seconds: u64,
    /// Where the host's / is mounted.
    #[arg(long, default_value = "/")]
    host_root: PathBuf,
}

async fn run(cli: Cli) -> Result<(), Box<dyn std::error::Error>> {
    let collector = OsCollector::new(cli.host_root)?;
    let (publisher, task) = stream::start(&cli.stream)?;
    sovereign_node_agent::run(
        collector,
        cli.server,
        publisher,
        Duration::from_secs(cli.interval_seconds),
        sovereign_telemetry_api::shutdown_signal(),
    )
    .await;
    task.abort();
    Ok(())
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let cli = Cli::parse();
    // On every tenant node, one thing every 15 s: one thread is plenty, and a worker per core
    // (dozens on big nodes) would only cost memory.
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("sovereign-node: starting the runtime: {e}");
            return ExitCode::from(2);
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("sovereign-node: {e}");
            ExitCode::from(2)
        }
    }
}
