//! Sovereign BMC collector: Redfish telemetry from the servers' BMCs. (The node agent, OS
//! telemetry, is `sovereign-node-agent`; its `os` module is re-exported for `collect --os`.)

pub use sovereign_node_agent::os;

pub mod convert;
pub mod discovery;
pub mod mockbmc;
pub mod poller;
pub mod readings;
pub mod redfish;
pub mod report;
pub mod roles;
pub mod selfmetrics;
pub mod transport;
