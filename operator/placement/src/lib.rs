//! Sovereign placement: where each replica of a tenant's volume or instance goes, and why.
//!
//! Pure: no I/O, no async, no clock. The operator and the `plan` command feed it inventory built
//! from the API objects ([`from_crds`]) and read back decisions or refusals that explain, per
//! filter, how many servers were removed.

pub mod engine;
pub mod from_crds;
pub mod model;
pub mod resources;
pub mod synthetic;

pub use engine::{Allocation, Decision, Placement, Placer, Reason, Refusal, Slot};
pub use model::{
    Inventory, InventoryError, Request, Server, Site, Strategy, TenantPolicy, Unhealthy,
};
pub use resources::{CapacityPolicy, Class, Resources};
