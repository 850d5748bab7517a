//! `sovereign-operator`: thin binary; the logic lives in the library.

use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use sovereign_operator::controller::StatusPolicy;
use sovereign_operator::crds::CrdState;
use sovereign_operator::{connect, crds, inventory, plan, runtime, telemetry};
use sovereign_placement::from_crds::{HealthPolicy, PowerModel};
use sovereign_placement::{CapacityPolicy, Strategy};
use sovereign_telemetry::audit;
use tracing_subscriber::Layer as _;
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;

/// jemalloc, configured in `.cargo/config.toml`: glibc's arenas kept a placement burst's peak
/// resident (placement bench, docs/operations.md).
#[cfg(feature = "jemalloc")]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[derive(Parser, Debug)]
#[command(
    name = "sovereign-operator",
    version,
    about = "Sovereign cloud operator"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
#[allow(clippy::large_enum_variant)] // parsed once
enum Command {
    /// Install (or with --check-only, verify) the CRDs in the cluster from KUBECONFIG,
    /// summarise the Sovereign inventory, then serve the agents' telemetry stream, /metrics
    /// and OTLP (OTEL_EXPORTER_OTLP_ENDPOINT) until SIGTERM.
    Run {
        /// Do not install CRDs; fail if they are missing or outdated (for clusters where CRDs
        /// are managed by Helm or GitOps).
        #[arg(long)]
        check_only: bool,
        /// How long to wait for CRDs to become Established.
        #[arg(long, default_value_t = 60)]
        timeout_seconds: u64,
        /// Stop after the CRDs and the summary (no telemetry front).
        #[arg(long)]
        once: bool,
        /// Address of the agents' gRPC telemetry stream.
        #[arg(long, default_value = "0.0.0.0:8443")]
        telemetry_addr: std::net::SocketAddr,
        /// Address of /metrics and /healthz.
        #[arg(long, default_value = "0.0.0.0:9090")]
        metrics_addr: std::net::SocketAddr,
        /// Certificate (PEM) of the telemetry endpoint.
        #[arg(long, requires = "tls_key_file")]
        tls_cert_file: Option<std::path::PathBuf>,
        /// Key (PEM) of the telemetry endpoint.
        #[arg(long, requires = "tls_cert_file")]
        tls_key_file: Option<std::path::PathBuf>,
        /// Serve the telemetry stream without TLS (only behind a TLS-terminating mesh).
        #[arg(long, conflicts_with = "tls_cert_file")]
        plaintext_telemetry: bool,
        /// Publish this CA file (the `ca.crt` cert-manager puts beside the certificate) as
        /// ConfigMap --publish-ca-configmap in the lease namespace, for the agents to trust.
        #[arg(long, requires = "publish_ca_configmap")]
        publish_ca_file: Option<std::path::PathBuf>,
        #[arg(long, requires = "publish_ca_file")]
        publish_ca_configmap: Option<String>,
        /// ServiceAccount allowed to publish BMC telemetry for any server. Repeatable.
        #[arg(
            long = "collector",
            default_value = "system:serviceaccount:sovereign-system:sovereign-collector"
        )]
        collectors: Vec<String>,
        /// ServiceAccount of node agents (OS telemetry for their own node only). Repeatable.
        #[arg(
            long = "node-agent",
            default_value = "system:serviceaccount:sovereign-system:sovereign-agent"
        )]
        node_agents: Vec<String>,
        /// Address of /livez, /readyz and the controllers' /metrics.
        #[arg(long, default_value = "0.0.0.0:8080")]
        admin_addr: std::net::SocketAddr,
        /// Elect a leader on a Lease so several replicas can run; only the holder writes.
        #[arg(long)]
        leader_elect: bool,
        /// Namespace of the leader Lease.
        #[arg(long, env = "POD_NAMESPACE", default_value = "sovereign-system")]
        lease_namespace: String,
        /// Name of the leader Lease.
        #[arg(long, default_value = "sovereign-operator")]
        lease_name: String,
        /// This replica's identity in the Lease (the pod name).
        #[arg(long, env = "POD_NAME")]
        identity: Option<String>,
        /// Seconds a Lease is held without renewal; a dead leader is replaced after this.
        #[arg(long, default_value_t = 15, value_parser = clap::value_parser!(u64).range(2..=300))]
        lease_duration_seconds: u64,
        /// A server without a BMC reading for this long is stale (default: three of its poll
        /// intervals).
        #[arg(long, value_parser = clap::value_parser!(u64).range(1..=86_400))]
        stale_after_seconds: Option<u64>,
        /// How often a changed allocation (what the ledger placed on a server, and its rack's
        /// and site's sums) is rewritten into their status; placement reads the ledger, never
        /// these figures. Other changes (health, power, capacity, conditions) are written at
        /// once.
        #[arg(long, default_value_t = 300, value_parser = clap::value_parser!(u64).range(1..=86_400))]
        allocation_refresh_seconds: u64,
        /// Replica moves off unschedulable servers per site and minute.
        #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..=10_000))]
        moves_per_minute: u32,
        /// Reconciles each controller runs at once (bounds API server load, connections and
        /// memory on large fleets; a change still reaches every object, queued).
        #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u16).range(1..=1024))]
        reconcile_concurrency: u16,
        /// Log format.
        #[arg(long, value_enum, default_value_t = LogFormat::Text)]
        log_format: LogFormat,
    },
    /// Plan placements from YAML files (the objects users apply), without a cluster: records
    /// replicas already in status, places the rest, prints placements, refusals and capacity.
    Plan {
        /// Files or directories of YAML/JSON manifests (Sites, Racks, Servers, Tenants,
        /// StorageVolumes, ComputeInstances; other kinds are skipped).
        #[arg(short = 'f', long = "filename", required = true)]
        files: Vec<std::path::PathBuf>,
        /// Output format.
        #[arg(short = 'o', long, value_enum, default_value_t = Output::Table)]
        output: Output,
        /// Placement strategy.
        #[arg(long, value_enum, default_value_t = StrategyArg::Spread)]
        strategy: StrategyArg,
        /// Treat servers that never reported telemetry as healthy and able to encrypt (for
        /// planning before the agents run). Without it such servers are unschedulable.
        #[arg(long)]
        assume_healthy: bool,
        /// Telemetry older than this (seconds) makes a server unschedulable.
        #[arg(long, default_value_t = 300)]
        stale_after_seconds: i64,
        /// Over-commit per class as CLASS=RATIO (cpu, memory, gpus, nvme, ssd, hdd); capacity is
        /// (total - reserved) x ratio. Default 1 for every class. Repeatable.
        #[arg(long = "allocation-ratio", value_name = "CLASS=RATIO")]
        allocation_ratios: Vec<String>,
    },
    /// Manage the Sovereign CRDs.
    Crds {
        #[command(subcommand)]
        action: CrdAction,
    },
}

#[derive(clap::ValueEnum, Clone, Copy, Debug)]
enum Output {
    Table,
    Yaml,
    Json,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum LogFormat {
    Text,
    Json,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug)]
enum StrategyArg {
    /// Least allocated first.
    Spread,
    /// Most allocated first.
    Pack,
}

#[derive(Subcommand, Debug)]
enum CrdAction {
    /// Print the CRD YAML (as committed under crds/).
    Print,
    /// Server-side apply the CRDs and wait until they are Established.
    Install {
        #[arg(long, default_value_t = 60)]
        timeout_seconds: u64,
    },
    /// Report whether each CRD is installed and up to date.
    Check,
}

async fn run(cli: Cli) -> Result<bool, Box<dyn std::error::Error>> {
    match cli.command {
        Command::Plan {
            files,
            output,
            strategy,
            assume_healthy,
            stale_after_seconds,
            allocation_ratios,
        } => {
            let mut capacity = CapacityPolicy::default();
            for spec in &allocation_ratios {
                plan::apply_allocation_ratio(&mut capacity, spec)?;
            }
            let objects = plan::load(&files)?;
            let now_unix = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX));
            let opts = plan::Options {
                strategy: match strategy {
                    StrategyArg::Spread => Strategy::Spread,
                    StrategyArg::Pack => Strategy::Pack,
                },
                health: HealthPolicy {
                    now_unix,
                    stale_after_seconds,
                    assume_healthy_without_telemetry: assume_healthy,
                },
                capacity,
                power: PowerModel::default(),
            };
            let report = plan::plan(&objects, &opts)?;
            match output {
                Output::Table => print!("{}", plan::render_table(&report)),
                Output::Yaml => print!("{}", serde_yaml_ng::to_string(&report)?),
                Output::Json => println!("{}", serde_json::to_string_pretty(&report)?),
            }
            Ok(!report.placements.iter().any(|r| r.outcome == "refused"))
        }
        Command::Crds {
            action: CrdAction::Print,
        } => {
            for (_, yaml) in sovereign_crds::rendered()? {
                print!("---\n{yaml}");
            }
            Ok(true)
        }
        Command::Crds {
            action: CrdAction::Install { timeout_seconds },
        } => {
            let client = connect().await?;
            for name in crds::install(&client, Duration::from_secs(timeout_seconds)).await? {
                println!("{name} established");
            }
            Ok(true)
        }
        Command::Crds {
            action: CrdAction::Check,
        } => {
            let client = connect().await?;
            let reports = crds::check(&client).await?;
            for r in &reports {
                println!("{:<40} {:?}", r.name, r.state);
            }
            Ok(reports.iter().all(|r| r.state == CrdState::UpToDate))
        }
        Command::Run {
            check_only,
            timeout_seconds,
            once,
            telemetry_addr,
            metrics_addr,
            tls_cert_file,
            tls_key_file,
            plaintext_telemetry,
            publish_ca_file,
            publish_ca_configmap,
            collectors,
            node_agents,
            admin_addr,
            leader_elect,
            lease_namespace,
            lease_name,
            identity,
            lease_duration_seconds,
            stale_after_seconds,
            allocation_refresh_seconds,
            moves_per_minute,
            reconcile_concurrency,
            log_format: _,
        } => {
            let options = telemetry::TelemetryOptions {
                grpc_addr: telemetry_addr,
                metrics_addr,
                tls: tls_cert_file.zip(tls_key_file),
                plaintext: plaintext_telemetry,
                collectors,
                node_agents,
            };
            let client = connect().await?;
            if !once {
                options.validate()?;
            }
            if check_only {
                crds::require_current(&client, Duration::from_secs(timeout_seconds)).await?;
                println!("CRDs serve what this operator needs");
            } else {
                crds::install(&client, Duration::from_secs(timeout_seconds)).await?;
                println!("CRDs installed and established");
            }
            let s = inventory::summarise(&client).await?;
            println!(
                "inventory: {} sites, {} racks, {} servers ({} in maintenance), {} tenants, {} volumes, {} instances",
                s.sites,
                s.racks,
                s.servers,
                s.servers_in_maintenance,
                s.tenants,
                s.volumes,
                s.instances
            );
            if once {
                return Ok(true);
            }
            if let (Some(ca_file), Some(configmap)) = (publish_ca_file, publish_ca_configmap) {
                tokio::spawn(sovereign_operator::ca_publish::run(
                    client.clone(),
                    sovereign_operator::ca_publish::CaPublish {
                        ca_file,
                        namespace: lease_namespace.clone(),
                        configmap,
                    },
                ));
            }
            let lease = leader_elect.then(|| runtime::LeaseOptions {
                namespace: lease_namespace,
                name: lease_name,
                identity: identity.unwrap_or_else(default_identity),
                duration_seconds: lease_duration_seconds,
                grace_seconds: (lease_duration_seconds / 3).max(1),
            });
            let run_options = runtime::RunOptions {
                telemetry: options,
                admin_addr,
                lease,
                policy: StatusPolicy {
                    stale_after: stale_after_seconds.map(Duration::from_secs),
                    allocation_every: Duration::from_secs(allocation_refresh_seconds),
                    ..StatusPolicy::default()
                },
                moves_per_minute,
                reconcile_concurrency,
            };
            runtime::run(
                client,
                run_options,
                sovereign_telemetry::cluster::shutdown_signal(),
            )
            .await?;
            Ok(true)
        }
    }
}

/// Host name and process id: unique enough outside a pod (POD_NAME wins inside one).
fn default_identity() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map_or_else(|_| "sovereign-operator".to_owned(), |h| h.trim().to_owned());
    format!("{host}-{}", std::process::id())
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let json = matches!(
        cli.command,
        Command::Run {
            log_format: LogFormat::Json,
            ..
        }
    );
    let filter =
        tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into());
    let fmt = if json {
        tracing_subscriber::fmt::layer()
            .json()
            .with_writer(std::io::stderr)
            .with_filter(filter)
            .boxed()
    } else {
        tracing_subscriber::fmt::layer()
            .with_writer(std::io::stderr)
            // Plain text for log collectors; colours only on a terminal.
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .with_filter(filter)
            .boxed()
    };
    // Audit records (placements, refusals, moves, releases) also go out over OTLP logs when an
    // endpoint is configured; the exporter lives as long as the process.
    let audit = match (&cli.command, audit::config_from_env("sovereign-operator")) {
        (Command::Run { .. }, Some(config)) => match audit::AuditLogs::start(&config) {
            Ok(a) => Some((a, config.endpoint)),
            Err(e) => {
                eprintln!("sovereign-operator: {e}");
                return ExitCode::FAILURE;
            }
        },
        _ => None,
    };
    tracing_subscriber::registry()
        .with(fmt)
        .with(audit.as_ref().map(|(a, _)| a.layer()))
        .init();
    if let Some((_, endpoint)) = &audit {
        tracing::info!(%endpoint, "exporting audit records over OTLP logs");
    }
    match run(cli).await {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("sovereign-operator: {e}");
            ExitCode::FAILURE
        }
    }
}
