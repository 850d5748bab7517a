//! Repairs for non-conforming BMC documents, and the decode check the tests run on every tree.

use nv_redfish::quirks::{Match, UserRule};
use serde_json::{Value, json};

use super::logs::{EntriesPage, age_key};
use super::{Health, name_of, opt};

/// Repairs for documents real services send without fields the schema requires, which
/// nv-redfish's typed model would otherwise refuse whole. Each is narrow: it only adds what is
/// missing, never changes a value the BMC sent. (Type name, repair.)
/// A document repair.
pub type Repair = fn(Value) -> Value;

pub const REPAIRS: &[(&str, Repair)] = &[
    // sushy-emulator and several DMTF demo trees: ServiceRoot without Links.
    ("ServiceRoot", repair_service_root_links),
    // DMTF mockups: EnvironmentMetrics and Drives without Id or Name.
    ("EnvironmentMetrics", repair_id_and_name),
    ("Drive", repair_id_and_name),
    // PDUs and power shelves: Chassis without ChassisType; NVIDIA DGX: EROT chassis without
    // Id. One bad member must not cost the whole Chassis section.
    ("Chassis", repair_chassis),
    // Legacy StorageControllers array items without MemberId (DMTF tower); NVIDIA DGX storage
    // units without Id.
    ("Storage", repair_storage),
    // NVIDIA DGX: a Storage collection without Name.
    ("StorageCollection", repair_collection_name),
    // NVIDIA DGX: a sensor whose Location.Contacts holds null; the contact is dropped, the
    // reading kept.
    ("Sensor", repair_null_contacts),
];

fn repair_null_contacts(mut v: Value) -> Value {
    if let Some(contacts) = v
        .get_mut("Location")
        .and_then(|l| l.get_mut("Contacts"))
        .and_then(Value::as_array_mut)
    {
        contacts.retain(|c| !c.is_null());
    }
    v
}

fn repair_chassis(v: Value) -> Value {
    repair_chassis_type(repair_links(repair_id_and_name(v)))
}

/// Links are references: a BMC that inlines part of the target (NVIDIA's `ContainedBy` with
/// sizes but no Id) is read as a half-expanded object and refused. Keep only `@odata.id`.
fn repair_links(mut v: Value) -> Value {
    fn reference_only(item: &mut Value) {
        if let Some(o) = item.as_object_mut()
            && let Some(id) = o.get("@odata.id").cloned()
            && !o.contains_key("Id")
        {
            o.clear();
            o.insert("@odata.id".into(), id);
        }
    }
    if let Some(links) = v.get_mut("Links").and_then(Value::as_object_mut) {
        for link in links.values_mut() {
            match link {
                Value::Array(items) => items.iter_mut().for_each(reference_only),
                other => reference_only(other),
            }
        }
    }
    v
}

fn repair_storage(v: Value) -> Value {
    repair_storage_controller_member_ids(repair_id_and_name(v))
}

/// A collection's Name is only a label: the last `@odata.id` segment stands in.
fn repair_collection_name(mut v: Value) -> Value {
    let id = v
        .get("@odata.id")
        .and_then(Value::as_str)
        .and_then(|p| p.trim_end_matches('/').rsplit('/').next())
        .map(str::to_owned);
    if let (Some(o), Some(id)) = (v.as_object_mut(), id) {
        o.entry("Name").or_insert_with(|| json!(id));
        // An empty collection that leaves out Members is still an empty collection.
        o.entry("Members").or_insert_with(|| json!([]));
    }
    v
}

fn repair_service_root_links(mut v: Value) -> Value {
    if let Some(o) = v.as_object_mut() {
        o.entry("Links").or_insert_with(
            || json!({"Sessions": {"@odata.id": "/redfish/v1/SessionService/Sessions"}}),
        );
    }
    v
}

/// The Id is the last `@odata.id` segment and stands in for the Name.
fn repair_id_and_name(mut v: Value) -> Value {
    let id = v
        .get("@odata.id")
        .and_then(Value::as_str)
        .and_then(|p| p.rsplit('/').next())
        .map(str::to_owned);
    if let (Some(o), Some(id)) = (v.as_object_mut(), id) {
        o.entry("Name").or_insert_with(|| json!(id));
        o.entry("Id").or_insert_with(|| json!(id));
    }
    v
}

fn repair_chassis_type(mut v: Value) -> Value {
    if let Some(o) = v.as_object_mut() {
        o.entry("ChassisType").or_insert_with(|| json!("Other"));
    }
    v
}

fn repair_storage_controller_member_ids(mut v: Value) -> Value {
    if let Some(items) = v
        .get_mut("StorageControllers")
        .and_then(Value::as_array_mut)
    {
        for (i, item) in items.iter_mut().enumerate() {
            if let Some(o) = item.as_object_mut() {
                o.entry("MemberId").or_insert_with(|| json!(i.to_string()));
            }
        }
    }
    v
}

/// The repairs as nv-redfish rules for the transport.
pub fn repairs() -> Vec<UserRule> {
    REPAIRS
        .iter()
        .map(|&(t, fix)| UserRule::new(format!("sovereign-{t}"), Match::Type(t.into()), fix))
        .collect()
}

/// Kinds of document the collector decodes, for [`parse_document`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DocumentKind {
    ServiceRoot,
    ComputerSystem,
    Chassis,
    Thermal,
    Power,
    EnvironmentMetrics,
    Storage,
    Drive,
    /// A page of log entries (inline or links, with a next link).
    LogEntryCollection,
}

impl DocumentKind {
    pub const ALL: [DocumentKind; 9] = [
        DocumentKind::ServiceRoot,
        DocumentKind::ComputerSystem,
        DocumentKind::Chassis,
        DocumentKind::Thermal,
        DocumentKind::Power,
        DocumentKind::EnvironmentMetrics,
        DocumentKind::Storage,
        DocumentKind::Drive,
        DocumentKind::LogEntryCollection,
    ];
}

/// Repairs and decodes one wire document as the collector would. Errors are values, never
/// panics, whatever the bytes (fuzzed by `agent/fuzz`).
pub fn parse_document(kind: DocumentKind, bytes: &[u8]) -> Result<(), String> {
    use nv_redfish::schema as s;
    let mut value: Value = serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
    let type_name = format!("{kind:?}");
    for (t, fix) in REPAIRS {
        if *t == type_name {
            value = fix(value);
        }
    }
    let decoded = match kind {
        DocumentKind::ServiceRoot => {
            serde_json::from_value::<s::service_root::ServiceRoot>(value).map(drop)
        }
        DocumentKind::ComputerSystem => {
            serde_json::from_value::<s::computer_system::ComputerSystem>(value).map(|cs| {
                let _ = Health::of(cs.status.as_ref());
            })
        }
        DocumentKind::Chassis => serde_json::from_value::<s::chassis::Chassis>(value).map(|c| {
            let _ = c
                .physical_security
                .as_ref()
                .and_then(|p| opt(p.intrusion_sensor.as_ref()))
                .map(|i| name_of(&i));
        }),
        DocumentKind::Thermal => serde_json::from_value::<s::thermal::Thermal>(value).map(drop),
        DocumentKind::Power => serde_json::from_value::<s::power::Power>(value).map(drop),
        DocumentKind::EnvironmentMetrics => {
            serde_json::from_value::<s::environment_metrics::EnvironmentMetrics>(value).map(drop)
        }
        DocumentKind::Storage => serde_json::from_value::<s::storage::Storage>(value).map(drop),
        DocumentKind::Drive => serde_json::from_value::<s::drive::Drive>(value).map(drop),
        DocumentKind::LogEntryCollection => {
            serde_json::from_value::<EntriesPage>(value).map(|page| {
                for m in page.members {
                    let _ =
                        serde_json::from_value::<s::log_entry::LogEntry>(m).map(|e| age_key(&e));
                }
            })
        }
    };
    decoded.map_err(|e| e.to_string())
}
