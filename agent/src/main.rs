//! `sovereign-agent`: node telemetry (sysinfo) and BMC collection (Redfish).
//!
//! The collectors are built in issue 4; until then the binary refuses to pretend.

use std::process::ExitCode;

fn main() -> ExitCode {
    if std::env::args().any(|a| a == "--version" || a == "-V") {
        println!("sovereign-agent {}", env!("CARGO_PKG_VERSION"));
        return ExitCode::SUCCESS;
    }
    eprintln!("sovereign-agent: the node and bmc collectors are not built yet (see issue 4)");
    ExitCode::from(2)
}
