//! Systems: inventory, drives and GPUs.

use futures::StreamExt as _;
use nv_redfish::ServiceRoot;
use nv_redfish::computer_system::ComputerSystem;
use nv_redfish::core::{Bmc, ODataId};
use serde_json::Value;

/// Members of a collection fetched at once.
const MEMBERS_IN_FLIGHT: usize = 4;

use super::{
    BmcSample, DriveSample, GpuSample, Health, Nav, SystemSample, conditions, fail, name_of, opt,
};

/// The Systems collection's members, read once per poll for inventory and logs alike (with
/// bad credentials, every request is a failed login the BMC counts).
pub(super) async fn members<B: Bmc + 'static>(
    root: &ServiceRoot<B>,
    sample: &mut BmcSample,
) -> Vec<ComputerSystem<B>> {
    match root.systems().await {
        Ok(Some(c)) => match c.members().await {
            Ok(m) => m,
            Err(e) => {
                fail(sample, "Systems", &e);
                Vec::new()
            }
        },
        Ok(None) => Vec::new(),
        Err(e) => {
            fail(sample, "Systems", &e);
            Vec::new()
        }
    }
}

pub(super) async fn systems<B: Bmc + 'static>(
    members: &[ComputerSystem<B>],
    bmc: &B,
    sample: &mut BmcSample,
) {
    for system in members {
        let raw = system.raw();
        let (health, health_rollup) = Health::of(raw.status.as_ref());
        let ps = raw.processor_summary.as_ref();
        sample.systems.push(SystemSample {
            id: raw.id.clone(),
            odata_id: raw.odata_id.to_string(),
            manufacturer: opt(raw.manufacturer.as_ref()),
            model: opt(raw.model.as_ref()),
            serial_number: opt(raw.serial_number.as_ref()),
            bios_version: opt(raw.bios_version.as_ref()),
            power_state: system.power_state().map(|p| name_of(&p)),
            processor_model: ps.and_then(|p| opt(p.model.as_ref())),
            processor_count: ps.and_then(|p| opt(p.count.as_ref())),
            logical_processors: ps.and_then(|p| opt(p.logical_processor_count.as_ref())),
            memory_gib: raw
                .memory_summary
                .as_ref()
                .and_then(|m| opt(m.total_system_memory_gi_b.as_ref())),
            health,
            health_rollup,
            conditions: conditions(raw.status.as_ref()),
            chassis: raw
                .links
                .as_ref()
                .and_then(|l| l.chassis.as_ref())
                .map(|c| {
                    c.iter()
                        .map(|nav| super::last_segment(&nav.id().to_string()))
                        .collect()
                })
                .unwrap_or_default(),
        });
        // GPUs and drives are independent chains of requests: read at once (slow BMCs).
        let (mut gpu_part, mut drive_part) = (BmcSample::default(), BmcSample::default());
        tokio::join!(
            gpus(system, bmc, &mut gpu_part),
            drives(system, bmc, &mut drive_part),
        );
        for part in [gpu_part, drive_part] {
            sample.gpus.extend(part.gpus);
            sample.drives.extend(part.drives);
            sample.errors.extend(part.errors);
        }
    }
}

/// GPUs are processors of type GPU (on DGX/HGX under a baseboard system of their own). The
/// members are fetched at once, not one after another: on a slow BMC the chain of requests is
/// the poll's time.
async fn gpus<B: Bmc + 'static>(system: &ComputerSystem<B>, bmc: &B, sample: &mut BmcSample) {
    use nv_redfish::schema::processor::Processor;
    let raw = system.raw();
    let Some(link) = raw.processors.as_ref() else {
        return;
    };
    let section = format!("Systems/{}/Processors", raw.id);
    let list = match bmc.get::<Doc>(link.id()).await {
        Ok(l) => l,
        Err(e) => return fail(sample, section, &Nav(&e)),
    };
    let requests: Vec<_> = list
        .members
        .iter()
        .filter_map(|m| m.get("@odata.id").and_then(Value::as_str))
        .map(|uri| {
            let uri = ODataId::from(uri.to_owned());
            async move { bmc.get::<Processor>(&uri).await }
        })
        .collect();
    let mut found: Vec<GpuSample> = Vec::new();
    let fetched: Vec<_> = futures::stream::iter(requests)
        .buffer_unordered(MEMBERS_IN_FLIGHT)
        .collect()
        .await;
    for result in fetched {
        let r = match result {
            Ok(r) => r,
            Err(e) => {
                fail(sample, section.clone(), &Nav(&e));
                continue;
            }
        };
        let kind = r
            .processor_type
            .as_ref()
            .and_then(Option::as_ref)
            .map(name_of);
        if kind.as_deref() != Some("Gpu") && kind.as_deref() != Some("GPU") {
            continue;
        }
        found.push(GpuSample {
            id: r.id.clone(),
            model: opt(r.model.as_ref()),
            health: Health::of(r.status.as_ref()).0,
            chassis: r
                .links
                .as_ref()
                .and_then(|l| l.chassis.as_ref())
                .map(|nav| super::last_segment(&nav.id().to_string())),
        });
    }
    found.sort_by(|a, b| a.id.cmp(&b.id));
    sample.gpus.extend(found);
}

/// Drives from Storage; from SimpleStorage when Storage lists none.
async fn drives<B: Bmc + 'static>(system: &ComputerSystem<B>, bmc: &B, sample: &mut BmcSample) {
    let raw = system.raw();
    let section = format!("Systems/{}/Storage", raw.id);
    let storages = match system.storage_controllers().await {
        Ok(s) => s.unwrap_or_default(),
        Err(e) => {
            fail(sample, section.clone(), &e);
            Vec::new()
        }
    };
    for storage in storages {
        match storage.drives().await {
            Ok(drives) => {
                for d in drives.unwrap_or_default() {
                    let r = d.raw();
                    let encryption = opt(r.encryption_ability.as_ref()).map(|e| name_of(&e));
                    sample.drives.push(DriveSample {
                        id: r.id.clone(),
                        model: opt(r.model.as_ref()),
                        media_type: opt(r.media_type.as_ref()).map(|m| name_of(&m)),
                        protocol: opt(r.protocol.as_ref()).map(|p| name_of(&p)),
                        capacity_bytes: opt(r.capacity_bytes.as_ref())
                            .and_then(|b| u64::try_from(b).ok()),
                        health: Health::of(r.status.as_ref()).0,
                        failure_predicted: opt(r.failure_predicted.as_ref()).unwrap_or(false),
                        life_left_percent: opt(r.predicted_media_life_left_percent.as_ref()),
                        encryption_capable: encryption.is_some_and(|e| e != "None"),
                    });
                }
            }
            Err(e) => fail(sample, section.clone(), &e),
        }
    }
    // DGX and other AMI BMCs list their NVMe drives only under SimpleStorage.
    if sample.drives.is_empty()
        && let Some(link) = raw.simple_storage.as_ref()
    {
        simple_storage(bmc, &raw.id, link.odata_id.clone(), sample).await;
    }
}

/// A document read as plain JSON: collections' `Members`, SimpleStorage's `Devices`.
#[derive(serde::Deserialize)]
struct Doc {
    #[serde(rename = "@odata.id")]
    id: ODataId,
    #[serde(rename = "Members", default)]
    members: Vec<Value>,
    #[serde(rename = "Devices", default)]
    devices: Vec<Value>,
}

impl nv_redfish::core::EntityTypeRef for Doc {
    fn odata_id(&self) -> &ODataId {
        &self.id
    }

    fn etag(&self) -> Option<&nv_redfish::core::ODataETag> {
        None
    }
}

/// Whether a SimpleStorage device is a disk, not the BMC's virtual media (`Virtual Cdrom
/// Device`, `Virtual HDisk Device`) or an absent bay.
fn is_disk(device: &Value) -> bool {
    let text = |k: &str| device.get(k).and_then(Value::as_str).unwrap_or_default();
    let words = crate::readings::words(&format!("{} {}", text("Model"), text("Name")));
    let absent = device
        .get("Status")
        .and_then(|s| s.get("State"))
        .and_then(Value::as_str)
        == Some("Absent");
    !absent && !words.iter().any(|w| w == "virtual" || w == "cdrom")
}

async fn simple_storage<B: Bmc + 'static>(
    bmc: &B,
    system: &str,
    collection: ODataId,
    sample: &mut BmcSample,
) {
    let section = format!("Systems/{system}/SimpleStorage");
    let list = match bmc.get::<Doc>(&collection).await {
        Ok(l) => l,
        Err(e) => return fail(sample, section, &Nav(&e)),
    };
    for member in &list.members {
        let Some(uri) = member.get("@odata.id").and_then(Value::as_str) else {
            continue;
        };
        let doc = match bmc.get::<Doc>(&ODataId::from(uri.to_owned())).await {
            Ok(d) => d,
            Err(e) => {
                fail(sample, section.clone(), &Nav(&e));
                continue;
            }
        };
        for d in doc.devices.iter().filter(|d| is_disk(d)) {
            let text = |k: &str| d.get(k).and_then(Value::as_str).map(str::to_owned);
            let name = text("Name").unwrap_or_default();
            let says_nvme = crate::readings::words(&name).iter().any(|w| w == "nvme");
            let status = d.get("Status");
            let health = match status.and_then(|s| s.get("Health")).and_then(Value::as_str) {
                Some("OK") => Health::Ok,
                Some("Warning") => Health::Warning,
                Some("Critical") => Health::Critical,
                _ => Health::Unknown,
            };
            sample.drives.push(DriveSample {
                id: name,
                model: text("Model"),
                media_type: None,
                protocol: says_nvme.then(|| "NVMe".to_owned()),
                capacity_bytes: d.get("CapacityBytes").and_then(Value::as_u64),
                health,
                failure_predicted: false,
                life_left_percent: None,
                encryption_capable: false,
            });
        }
    }
}
