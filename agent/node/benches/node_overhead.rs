//! Node agent overhead: `cargo bench -p sovereign-node-agent --bench node_overhead [-- --interval-s 15 --samples 8]`.
//!
//! Runs the node role's loop (one OsCollector for the process's life, a sample every interval,
//! encoded as it is sent (protobuf)) and prints its own resident memory and CPU use:
//! mCPU = CPU seconds / wall seconds x 1000. Targets: <= 10 MiB RSS, <= 2 mCPU at 15 s.

#![allow(clippy::cast_precision_loss, clippy::cast_possible_truncation)] // figures for display

use std::time::{Duration, Instant};

use prost::Message as _;
use sovereign_node_agent::os::OsCollector;

fn arg(name: &str, default: u64) -> u64 {
    std::env::args()
        .skip_while(|a| a != name)
        .nth(1)
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// CPU time of this process (all threads), nanosecond resolution (/proc/self/stat counts 10 ms
/// ticks, too coarse for a mostly sleeping agent).
fn cpu_seconds() -> f64 {
    cpu_time::ProcessTime::try_now().map_or(0.0, |t| t.as_duration().as_secs_f64())
}

fn status_kib(key: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find_map(|l| {
            l.strip_prefix(key)
                .map(|v| v.trim().trim_end_matches(" kB").trim().parse().unwrap_or(0))
        })
        .unwrap_or(0)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let interval = Duration::from_secs(arg("--interval-s", 15));
    let samples = arg("--samples", 8);
    let mut collector = OsCollector::new("/")?;
    // Warm-up sample, as at agent start; measurement starts after it.
    let _ = sovereign_node_agent::sample("bench", &collector.sample()?).encoded_len();
    let (cpu0, t0) = (cpu_seconds(), Instant::now());
    let mut bytes = 0usize;
    for _ in 0..samples {
        std::thread::sleep(interval);
        let s = collector.sample()?;
        bytes += sovereign_node_agent::sample("bench", &s).encoded_len();
    }
    let wall = t0.elapsed().as_secs_f64();
    let cpu = cpu_seconds() - cpu0;
    println!(
        "node agent loop: {samples} samples every {} s over {wall:.0} s",
        interval.as_secs()
    );
    println!(
        "  CPU: {:.1} ms total = {:.3} mCPU",
        cpu * 1000.0,
        cpu / wall * 1000.0
    );
    println!(
        "  memory: RSS {} KiB now, peak {} KiB",
        status_kib("VmRSS:"),
        status_kib("VmHWM:")
    );
    println!(
        "  sample size: {:.0} bytes of JSON",
        bytes as f64 / samples as f64
    );
    Ok(())
}
