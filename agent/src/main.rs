//! `sovereign-agent`: thin binary over the agent library.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};
use sovereign_agent::os::OsCollector;
use sovereign_agent::redfish::{self, Endpoint};
use sovereign_agent::report::{Collected, render_table};
use sovereign_node_agent::stream::StreamArgs;

#[derive(Parser, Debug)]
#[command(
    name = "sovereign-agent",
    version,
    about = "Sovereign hardware and OS telemetry agent"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// BMC role (collector on the management network): polls BMCs, streams to the operator.
    Bmc {
        #[command(flatten)]
        stream: StreamArgs,
        /// YAML list of {server, address, username, passwordFile, caBundleFile?, insecureSkipVerify?}.
        #[arg(
            long,
            required_unless_present = "from_cluster",
            conflicts_with = "from_cluster"
        )]
        targets: Option<PathBuf>,
        /// Poll the BMCs of the cluster's Server objects, with credentials from the Secrets
        /// they name (read with `get`, in --credentials-namespace only).
        #[arg(long)]
        from_cluster: bool,
        /// Namespace of the BMC credential Secrets (the collector's own).
        #[arg(long, env = "POD_NAMESPACE", default_value = "sovereign-system")]
        credentials_namespace: String,
        /// Only Servers with these labels, e.g. `sovereign.io/site=hn1` (one collector per
        /// site's management network).
        #[arg(long)]
        selector: Option<String>,
        /// Serve the collector's own /metrics here (cycle time, failures by class, drops).
        #[arg(long)]
        metrics_addr: Option<std::net::SocketAddr>,
        #[arg(long, default_value_t = 60)]
        interval_seconds: u64,
        /// BMCs polled at once.
        #[arg(long, default_value_t = 1024)]
        concurrency: usize,
        /// Deadline for one BMC's poll, seconds.
        #[arg(long, default_value_t = 55)]
        deadline_seconds: u64,
        /// Per-request timeout, seconds.
        #[arg(long, default_value_t = 30)]
        timeout_seconds: u64,
        /// A slow BMC (full poll over a quarter of the deadline) is polled light, with a full
        /// poll (inventory, event logs) every this many polls.
        #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u32).range(1..))]
        full_every: u32,
    },
    /// Read telemetry once and print it (no cluster needed).
    Collect {
        /// Exactly once (the streaming roles run in the cluster).
        #[arg(long, required = true)]
        once: bool,
        /// BMC Redfish address, e.g. https://10.20.0.11.
        #[arg(long)]
        bmc: Option<String>,
        /// BMC user name.
        #[arg(long, requires = "bmc")]
        user: Option<String>,
        /// File holding the BMC password (else the SOVEREIGN_BMC_PASSWORD environment variable).
        #[arg(long, requires = "bmc")]
        password_file: Option<PathBuf>,
        /// PEM CA bundle the BMC certificate must chain to.
        #[arg(long, requires = "bmc", conflicts_with = "insecure")]
        ca_bundle: Option<PathBuf>,
        /// Skip TLS verification of the BMC (lab equipment only).
        #[arg(long, requires = "bmc")]
        insecure: bool,
        /// Per-request timeout in seconds.
        #[arg(long, default_value_t = 30)]
        timeout_seconds: u64,
        /// Also read this host's OS telemetry.
        #[arg(long)]
        os: bool,
        /// Where the host's / is mounted (inside a container), for OS identity.
        #[arg(long, default_value = "/")]
        host_root: PathBuf,
        #[arg(short = 'o', long, value_enum, default_value_t = Output::Table)]
        output: Output,
    },
}

#[derive(ValueEnum, Clone, Copy, Debug)]
enum Output {
    Table,
    Json,
    Yaml,
}

fn publisher(
    args: &StreamArgs,
) -> Result<
    (
        sovereign_telemetry_api::publisher::Publisher,
        tokio::task::JoinHandle<()>,
    ),
    Box<dyn std::error::Error>,
> {
    sovereign_node_agent::stream::start(args)
}

async fn run(cli: Cli) -> Result<bool, Box<dyn std::error::Error>> {
    let command = match cli.command {
        Command::Bmc {
            stream,
            targets,
            from_cluster,
            credentials_namespace,
            selector,
            metrics_addr,
            interval_seconds,
            concurrency,
            deadline_seconds,
            timeout_seconds,
            full_every,
        } => {
            let timeout = Duration::from_secs(timeout_seconds);
            let config = sovereign_agent::poller::PollConfig {
                concurrency,
                deadline: Duration::from_secs(deadline_seconds),
                full_every,
                ..sovereign_agent::poller::PollConfig::default()
            };
            let (fleet, discovery) = match targets {
                Some(path) if !from_cluster => {
                    let path = path.display().to_string();
                    let targets = sovereign_agent::roles::load_targets(&path, timeout)?;
                    (sovereign_agent::poller::Fleet::new(targets, config), None)
                }
                _ => {
                    let client = kube::Client::try_default().await?;
                    let mut discovery = sovereign_agent::discovery::Discovery::start(
                        client,
                        &credentials_namespace,
                        selector.as_deref(),
                        timeout,
                    )
                    .await?;
                    let targets = discovery.targets().await;
                    tracing::info!(bmcs = targets.len(), "BMC targets from the cluster");
                    (
                        sovereign_agent::poller::Fleet::from_targets(targets, config),
                        Some(discovery),
                    )
                }
            };
            let metrics = match metrics_addr {
                Some(addr) => {
                    let listener = tokio::net::TcpListener::bind(addr).await?;
                    let metrics =
                        std::sync::Arc::new(sovereign_agent::selfmetrics::CollectorMetrics::new());
                    tokio::spawn(sovereign_agent::selfmetrics::serve(
                        listener,
                        metrics.clone(),
                        sovereign_telemetry_api::shutdown_signal(),
                    ));
                    Some(metrics)
                }
                None => None,
            };
            let (publisher, task) = publisher(&stream)?;
            sovereign_agent::roles::run_bmc(
                fleet,
                publisher,
                Duration::from_secs(interval_seconds),
                discovery,
                metrics,
                sovereign_telemetry_api::shutdown_signal(),
            )
            .await;
            task.abort();
            return Ok(true);
        }
        collect @ Command::Collect { .. } => collect,
    };
    let Command::Collect {
        once: _,
        bmc,
        user,
        password_file,
        ca_bundle,
        insecure,
        timeout_seconds,
        os,
        host_root,
        output,
    } = command
    else {
        return Ok(false);
    };
    if bmc.is_none() && !os {
        return Err("nothing to collect: give --bmc URL and/or --os".into());
    }
    let mut collected = Collected::default();
    let mut healthy = true;
    if let Some(address) = bmc {
        let password = match password_file {
            Some(p) => std::fs::read_to_string(&p)
                .map_err(|e| format!("reading password file {}: {e}", p.display()))?
                .trim_end_matches(['\n', '\r'])
                .to_owned(),
            None => std::env::var("SOVEREIGN_BMC_PASSWORD")
                .map_err(|_| "no BMC password: use --password-file or SOVEREIGN_BMC_PASSWORD")?,
        };
        let ca_bundle_pem = match ca_bundle {
            Some(p) => Some(
                std::fs::read_to_string(&p)
                    .map_err(|e| format!("reading CA bundle {}: {e}", p.display()))?,
            ),
            None => None,
        };
        if address.starts_with("https://") && ca_bundle_pem.is_none() && !insecure {
            eprintln!(
                "sovereign-agent: no --ca-bundle: the BMC certificate must chain to a public CA (use --insecure only for lab equipment)"
            );
        }
        let endpoint = Endpoint {
            address,
            username: user.unwrap_or_else(|| "root".to_owned()),
            password,
            ca_bundle_pem,
            insecure_skip_verify: insecure,
            timeout: Duration::from_secs(timeout_seconds),
        };
        let hint = sovereign_agent::transport::RetryHint::default();
        let client = redfish::connect_hinted(&endpoint, &hint)?;
        match redfish::collect(Arc::new(client)).await.map(|mut s| {
            s.warnings = hint.take_dropped();
            s
        }) {
            Ok(sample) => collected.bmc = Some(sample),
            Err(e) => {
                healthy = false;
                collected.bmc_error = Some(e.to_string());
            }
        }
    }
    if os {
        let mut collector = OsCollector::new(host_root)?;
        // CPU usage needs two readings at least this far apart.
        tokio::time::sleep(sysinfo_interval()).await;
        collected.os = Some(collector.sample()?);
    }
    match output {
        Output::Table => print!("{}", render_table(&collected)),
        Output::Json => println!("{}", serde_json::to_string_pretty(&collected)?),
        Output::Yaml => print!("{}", serde_yaml_ng::to_string(&collected)?),
    }
    Ok(healthy)
}

fn sysinfo_interval() -> Duration {
    sovereign_agent::os::MINIMUM_CPU_INTERVAL
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        // Plain text for log collectors; colours only on a terminal.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let cli = Cli::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build();
    let runtime = match runtime {
        Ok(r) => r,
        Err(e) => {
            eprintln!("sovereign-agent: starting the runtime: {e}");
            return ExitCode::from(2);
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("sovereign-agent: {e}");
            ExitCode::from(2)
        }
    }
}
