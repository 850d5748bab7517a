//! `kubectl sovereign` (install as `kubectl-sovereign` on PATH): read-only answers from a live
//! cluster. Thin: arguments, the API client, printing; the logic is `sovereign_operator::plugin`.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};
use serde::Serialize;
use sovereign_operator::plan;
use sovereign_operator::plugin::{self, Filter, PluginError, SortKey};
use sovereign_placement::Strategy;

/// Sovereign: servers, capacity and placements of the cluster in KUBECONFIG.
#[derive(Parser, Debug)]
#[command(name = "kubectl-sovereign", bin_name = "kubectl sovereign", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// Output format.
    #[arg(short = 'o', long, value_enum, default_value_t = Output::Table, global = true)]
    output: Output,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Live readings per server.
    Top {
        #[command(subcommand)]
        what: Top,
    },
    /// Per site and rack: capacity, allocated, free, power measured against budget.
    Capacity,
    /// Where a workload's replicas are and what decided it (or why it was refused).
    Why {
        /// storagevolume/NAME (sv/NAME) or computeinstance/NAME (ci/NAME).
        reference: String,
        #[arg(short = 'n', long, default_value = "default")]
        namespace: String,
    },
    /// A tenant's placement decisions and refusals, newest first (each workload's latest).
    Audit {
        #[arg(long)]
        tenant: String,
    },
    /// What-if: place the workloads in these files against the live inventory (nothing is
    /// written), printed like the offline `sovereign-operator plan`.
    Plan {
        #[arg(short = 'f', long = "filename", required = true)]
        files: Vec<PathBuf>,
        #[arg(long, value_enum, default_value_t = StrategyArg::Spread)]
        strategy: StrategyArg,
    },
}

#[derive(Subcommand, Debug)]
enum Top {
    /// Power, inlet, hottest CPU, health and load per server.
    Servers {
        #[arg(long)]
        site: Option<String>,
        #[arg(long)]
        rack: Option<String>,
        /// OK, Warning, Critical or Unknown.
        #[arg(long)]
        health: Option<String>,
        #[arg(long, value_enum, default_value_t = Sort::Name)]
        sort: Sort,
    },
}

#[derive(ValueEnum, Clone, Copy, Debug)]
enum Sort {
    Name,
    Power,
    Inlet,
    Cpu,
    Health,
}

#[derive(ValueEnum, Clone, Copy, Debug)]
enum StrategyArg {
    Spread,
    Pack,
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum Output {
    Table,
    Json,
    Yaml,
}

fn print<T: Serialize>(
    output: Output,
    value: &T,
    table: impl FnOnce() -> String,
) -> Result<(), Box<dyn std::error::Error>> {
    match output {
        Output::Table => print!("{}", table()),
        Output::Json => println!("{}", serde_json::to_string_pretty(value)?),
        Output::Yaml => print!("{}", serde_yaml_ng::to_string(value)?),
    }
    Ok(())
}

async fn run(cli: Cli) -> Result<(), Box<dyn std::error::Error>> {
    let client = kube::Client::try_default()
        .await
        .map_err(|e| PluginError::NoCluster(e.to_string()))?;
    let objects = plugin::read(&client).await?;
    match cli.command {
        Command::Top {
            what:
                Top::Servers {
                    site,
                    rack,
                    health,
                    sort,
                },
        } => {
            let sort = match sort {
                Sort::Name => SortKey::Name,
                Sort::Power => SortKey::Power,
                Sort::Inlet => SortKey::Inlet,
                Sort::Cpu => SortKey::Cpu,
                Sort::Health => SortKey::Health,
            };
            let rows = plugin::top_servers(&objects, &Filter { site, rack, health }, sort);
            print(cli.output, &rows, || plugin::render_servers(&rows))
        }
        Command::Capacity => {
            let report = plugin::capacity(&objects)?;
            print(cli.output, &report.capacity, || {
                plugin::render_capacity(&report)
            })
        }
        Command::Why {
            reference,
            namespace,
        } => {
            let w = plugin::why(&objects, &reference, &namespace)?;
            print(cli.output, &w, || plugin::render_why(&w))
        }
        Command::Audit { tenant } => {
            let rows = plugin::audit(&objects, &tenant);
            print(cli.output, &rows, || plugin::render_audit(&rows))
        }
        Command::Plan { files, strategy } => {
            let requested = plan::load(&files)?;
            let mut live = objects;
            live.volumes.extend(requested.volumes);
            live.instances.extend(requested.instances);
            let strategy = match strategy {
                StrategyArg::Spread => Strategy::Spread,
                StrategyArg::Pack => Strategy::Pack,
            };
            let report = plan::plan(&live, &plugin::live_options(strategy))?;
            print(cli.output, &report, || plan::render_table(&report))
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("kubectl sovereign: {e}");
            return ExitCode::from(2);
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("kubectl sovereign: {e}");
            ExitCode::FAILURE
        }
    }
}
