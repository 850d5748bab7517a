//! Plumbing both binaries share, now in `sovereign-telemetry-api` (re-exported here so the
//! operator's paths stay put).

pub use sovereign_telemetry_api::shutdown_signal;
pub use sovereign_telemetry_api::watch::{
    Watched, mirror, mirror_trimmed, readable, shared_mirror, shared_mirror_observed,
};
