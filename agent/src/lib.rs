//! Sovereign agent: node (OS) and BMC (Redfish) telemetry.

pub mod convert;
pub mod discovery;
pub mod mockbmc;
pub mod os;
pub mod poller;
pub mod readings;
pub mod redfish;
pub mod report;
pub mod roles;
pub mod selfmetrics;
pub mod transport;
