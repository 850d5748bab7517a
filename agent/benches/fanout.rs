//! BMC polling fan-out: `cargo bench -p sovereign-agent --bench fanout [-- --bmcs 1000 --latency-ms 3000 --dgx-percent 10 --dgx-latency-ms 3000]`.
//!
//! Starts N simulated BMCs on loopback (the DMTF rack-mount tree; a share serving the NVIDIA
//! DGX H100 capture), every request answered after the given latency, and runs the collector's
//! poll cycles over all of them with a 55 s per-BMC deadline, one every 60 s: the first logs in
//! and reads every tree whole (a slow BMC's full poll goes on in the background past its
//! cycle: "pending"), until every BMC has answered, then two steady-state cycles (light polls
//! of slow BMCs, see `poller`). Prints per cycle the wall time, successes, full/light polls,
//! per-BMC poll time percentiles, requests, and the process's CPU time and peak RSS (simulated
//! BMCs included: one process, 2 cores).

#![allow(clippy::cast_precision_loss, clippy::cast_possible_truncation)] // figures for display

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use sovereign_agent::mockbmc::{self, MockBmc};
use sovereign_agent::poller::{Fleet, PollConfig};
use sovereign_agent::redfish::Endpoint;

fn arg(name: &str, default: u64) -> u64 {
    std::env::args()
        .skip_while(|a| a != name)
        .nth(1)
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// (user+system CPU seconds, peak RSS KiB) of this process, from /proc.
fn usage() -> (f64, u64) {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let fields: Vec<&str> = stat
        .rsplit(')')
        .next()
        .unwrap_or("")
        .split_whitespace()
        .collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    // utime and stime are fields 14 and 15 of stat; after the ")" they are at 11 and 12.
    #[allow(clippy::cast_precision_loss)]
    let cpu = (ticks(11) + ticks(12)) as f64 / 100.0;
    let hwm = std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find_map(|l| {
            l.strip_prefix("VmHWM:")
                .map(|v| v.trim().trim_end_matches(" kB").trim().parse().unwrap_or(0))
        })
        .unwrap_or(0);
    (cpu, hwm)
}

fn pct(sorted: &[Duration], p: f64) -> f64 {
    #[allow(
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss,
        clippy::cast_precision_loss
    )]
    let i = ((sorted.len().saturating_sub(1)) as f64 * p).round() as usize;
    sorted.get(i).map_or(0.0, Duration::as_secs_f64)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let n = arg("--bmcs", 1000);
    let latency = Duration::from_millis(arg("--latency-ms", 3000));
    let concurrency = usize::try_from(arg("--concurrency", n)).unwrap_or(usize::MAX);
    let limit = std::fs::read_to_string("/proc/self/limits")
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .and_then(|l| {
            l.split_whitespace()
                .nth(3)
                .and_then(|v| v.parse::<u64>().ok())
        })
        .unwrap_or(0);
    if limit < n * 4 {
        return Err(format!(
            "open-file limit {limit} is too low for {n} BMCs (needs ~{}); raise it with ulimit -n",
            n * 4
        )
        .into());
    }
    let mockups = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/redfish-mockups");
    let tree = mockups.join("dmtf/public-rackmount1");
    // A share of GPU servers: the DGX H100 capture (48 chassis, ~390 requests a poll).
    let dgx_tree = mockups.join("vendor/nvidia-viking");
    let dgx_percent = arg("--dgx-percent", 10);
    let dgx_latency = Duration::from_millis(arg(
        "--dgx-latency-ms",
        u64::try_from(latency.as_millis()).unwrap_or(u64::MAX),
    ));
    let is_dgx = |i: u64| i * 100 < dgx_percent * n;
    let requests = Arc::new(AtomicU64::new(0));
    let mut servers = Vec::new();
    let mut targets = Vec::new();
    for i in 0..n {
        let mut bmc = MockBmc::new(if is_dgx(i) { &dgx_tree } else { &tree });
        bmc.latency = if is_dgx(i) { dgx_latency } else { latency };
        // A DGX's BMC (OpenBMC) expands collections, as its service root advertises.
        bmc.expand = is_dgx(i);
        bmc.requests = requests.clone();
        let s = mockbmc::start(bmc).await?;
        targets.push((
            format!("{}-{i:04}", if is_dgx(i) { "dgx" } else { "bmc" }),
            Endpoint {
                address: s.url(),
                username: "root".into(),
                password: "calvin".into(),
                ca_bundle_pem: None,
                insecure_skip_verify: false,
                timeout: Duration::from_secs(30),
            },
        ));
        servers.push(s);
    }
    let config = PollConfig {
        concurrency,
        deadline: Duration::from_secs(55),
        ..PollConfig::default()
    };
    let mut fleet = Fleet::new(targets, config);
    let dgx = (0..n).filter(|i| is_dgx(*i)).count();
    println!(
        "fan-out: {n} BMCs ({dgx} DGX H100 at {} ms per request, the rest DMTF rack servers at {} ms), concurrency {concurrency}",
        dgx_latency.as_millis(),
        latency.as_millis()
    );
    // Cycle 1 logs in to every BMC's SessionService and reads each tree whole; then cycles
    // until every BMC has answered once, then two steady-state cycles.
    let max_cycles = arg("--max-cycles", 12);
    // Cycles start every 60 s, as a collector's would (a cycle that ends early waits).
    let every = Duration::from_secs(arg("--cycle-seconds", 60));
    let mut steady = 0;
    for cycle in 1..=max_cycles {
        if steady == 2 {
            break;
        }
        let before = requests.load(Ordering::Relaxed);
        let (cpu0, _) = usage();
        let start = Instant::now();
        let report = fleet.poll_cycle(Instant::now()).await;
        let wall = start.elapsed();
        let (cpu1, rss) = usage();
        let ok = report.outcomes.iter().filter(|o| o.result.is_ok()).count();
        let mut times: Vec<Duration> = report.outcomes.iter().map(|o| o.elapsed).collect();
        times.sort();
        let reqs = requests.load(Ordering::Relaxed) - before;
        let fits = if wall < Duration::from_mins(1) {
            "fits"
        } else {
            "DOES NOT fit"
        };
        let light = report
            .outcomes
            .iter()
            .filter(|o| o.result.as_ref().is_ok_and(|s| s.light))
            .count();
        let all_answered = ok == usize::try_from(n).unwrap_or(usize::MAX);
        if all_answered && report.pending.is_empty() {
            steady += 1;
        }
        println!(
            "  cycle {cycle}{}:",
            if cycle == 1 {
                " (session login, whole trees)"
            } else if steady > 0 {
                " (steady state)"
            } else {
                ""
            }
        );
        println!(
            "    {:.1} s wall ({fits} the 60 s cycle); polled OK {ok}/{n} ({light} light, {} full); {} full polls still running past their cycle",
            wall.as_secs_f64(),
            ok - light,
            report.pending.len()
        );
        println!(
            "    per-BMC poll p50 {:.1} s, p99 {:.1} s, max {:.1} s; {reqs} requests ({:.1} per BMC)",
            pct(&times, 0.5),
            pct(&times, 0.99),
            times.last().map_or(0.0, Duration::as_secs_f64),
            reqs as f64 / n as f64
        );
        println!(
            "    process (collector + {n} simulated BMCs): {:.1} s CPU, peak RSS {:.0} MiB",
            cpu1 - cpu0,
            rss as f64 / 1024.0
        );
        for kind in ["dgx", "bmc"] {
            let mine: Vec<_> = report
                .outcomes
                .iter()
                .filter(|o| o.name.starts_with(kind))
                .collect();
            let mut t: Vec<Duration> = mine.iter().map(|o| o.elapsed).collect();
            t.sort();
            println!(
                "    {kind}: OK {}/{}, poll p50 {:.1} s, max {:.1} s",
                mine.iter().filter(|o| o.result.is_ok()).count(),
                mine.len(),
                pct(&t, 0.5),
                t.last().map_or(0.0, Duration::as_secs_f64)
            );
        }
        for o in report.outcomes.iter().filter(|o| o.result.is_err()).take(3) {
            if let Err(e) = &o.result {
                println!("    e.g. {}: {e}", o.name);
            }
        }
        if steady < 2 {
            tokio::time::sleep(every.saturating_sub(start.elapsed())).await;
        }
    }
    fleet.logout().await;
    drop(servers);
    Ok(())
}
