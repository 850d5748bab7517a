//! Serves a mockup tree as a BMC on loopback until Ctrl-C:
//! `cargo run -p sovereign-agent --example mock-bmc -- ../shared/redfish-mockups/vendor/dell`

use std::time::Duration;

use sovereign_agent::mockbmc::{self, MockBmc};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let tree = std::env::args()
        .nth(1)
        .ok_or("usage: mock-bmc <mockup tree> [latency-ms]")?;
    let latency = std::env::args()
        .nth(2)
        .and_then(|v| v.parse().ok())
        .map_or(Duration::ZERO, Duration::from_millis);
    let mut bmc = MockBmc::new(tree);
    bmc.latency = latency;
    let running = mockbmc::start(bmc).await?;
    println!("{}", running.url());
    tokio::signal::ctrl_c().await?;
    Ok(())
}
