//! Node agent: this host's operating-system telemetry ([`os`]), turned into protocol samples
//! ([`sample`]) and streamed to the operator ([`stream`], [`run`]).

pub mod os;
pub mod stream;

use std::future::Future;
use std::time::Duration;

use sovereign_telemetry_api::proto::{self, OsSummary, Source, sample::Body};
use sovereign_telemetry_api::publisher::Publisher;

use crate::os::{OsCollector, OsSample};

/// An OS reading as sent to the operator for `server`.
pub fn sample(server: &str, s: &OsSample) -> proto::Sample {
    proto::Sample {
        server: server.to_owned(),
        source: Source::Os as i32,
        observed_at_unix_ms: i64::try_from(s.observed_at_unix_ms).unwrap_or(i64::MAX),
        body: Some(Body::Os(OsSummary {
            kernel: s.kernel.clone().unwrap_or_default(),
            os_version: s.os_version.clone().unwrap_or_default(),
            uptime_seconds: s.uptime_seconds,
            load1: s.load1,
            cpu_usage_percent: s.cpu_usage_percent,
            memory_total_bytes: s.memory_total_bytes,
            memory_used_bytes: s.memory_used_bytes,
        })),
    }
}

/// The node role until `stop` resolves: a sample every `interval` (a slow round delays the
/// next one instead of bunching up).
pub async fn run(
    mut collector: OsCollector,
    server: String,
    publisher: Publisher,
    interval: Duration,
    stop: impl Future<Output = ()>,
) {
    tokio::pin!(stop);
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = &mut stop => return,
            _ = ticker.tick() => match collector.sample() {
                Ok(s) => { publisher.offer(sample(&server, &s)); }
                Err(e) => tracing::warn!(error = %e, "os sample failed"),
            }
        }
    }
}
