//! `sovereign-operator`: thin binary; the logic lives in the library.

use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use sovereign_operator::crds::CrdState;
use sovereign_operator::{connect, crds, inventory};

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
enum Command {
    /// Install (or with --check-only, verify) the CRDs in the cluster from KUBECONFIG, then
    /// summarise the Sovereign inventory.
    Run {
        /// Do not install CRDs; fail if they are missing or outdated (for clusters where CRDs
        /// are managed by Helm or GitOps).
        #[arg(long)]
        check_only: bool,
        /// How long to wait for CRDs to become Established.
        #[arg(long, default_value_t = 60)]
        timeout_seconds: u64,
    },
    /// Manage the Sovereign CRDs.
    Crds {
        #[command(subcommand)]
        action: CrdAction,
    },
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
        } => {
            let client = connect().await?;
            if check_only {
                crds::require_current(&client).await?;
                println!("CRDs up to date");
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
            Ok(true)
        }
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    match run(Cli::parse()).await {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("sovereign-operator: {e}");
            ExitCode::FAILURE
        }
    }
}
