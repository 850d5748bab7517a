//! Light poll: health and readings read again, inventory and logs kept from the last full poll.
//!
//! A GPU server's full read is hundreds of requests (a DGX H100: 47 chassis with sensors,
//! subsystems and logs, plus processors and storage); at seconds per request and four in
//! flight that is minutes. Between two polls what changes is health and readings, so a light
//! poll reads only every chassis' and system's status (the chassis collection in one `$expand`
//! request where the BMC expands) and the documents the last full poll took readings from (the
//! chassis' [`Source`]s), all independent, [`IN_FLIGHT`] at a time. Anything that no longer
//! matches (a chassis came or went, a document is gone) marks the sample
//! [`BmcSample::stale_plan`]: the next poll is a full one.

use std::sync::Arc;

use futures::StreamExt;
use nv_redfish::core::query::ExpandQuery;
use nv_redfish::core::{Bmc, EntityTypeRef, Expandable, NavProperty, ODataETag, ODataId};
use nv_redfish::schema::environment_metrics::EnvironmentMetrics;
use nv_redfish::schema::power::Power;
use nv_redfish::schema::power_supply::PowerSupply;
use nv_redfish::schema::resource::Status;
use nv_redfish::schema::sensor::Sensor;
use nv_redfish::schema::thermal::Thermal;
use serde::Deserialize;

use super::chassis::{
    add_sensor, derive, environment_watts, expanded_sensors, power_readings, power_supply,
    thermal_readings,
};
use super::{
    BmcSample, ChassisSample, Health, Nav, Source, conditions, fail, last_segment, nothing_read,
};
use crate::redfish::RedfishError;

/// Requests in flight to one BMC (fleets cap BMCs at about four).
const IN_FLIGHT: usize = 4;

/// What a light poll reads of a chassis or system: its status, intrusion and power state.
/// Every field optional: an expanded member may lack `Id` and `Name` (the DGX H100's BMC drops
/// them), which a light poll does not need.
#[derive(Debug, Deserialize)]
struct StatusOnly {
    #[serde(rename = "@odata.id")]
    odata_id: ODataId,
    #[serde(rename = "@odata.etag", default)]
    etag: Option<ODataETag>,
    #[serde(rename = "Id", default)]
    id: Option<serde_json::Value>,
    #[serde(rename = "Status", default)]
    status: Option<Status>,
    #[serde(rename = "PhysicalSecurity", default)]
    physical_security: Option<Security>,
    #[serde(rename = "PowerState", default)]
    power_state: Option<serde_json::Value>,
}

#[derive(Debug, Deserialize)]
struct Security {
    #[serde(rename = "IntrusionSensor", default)]
    intrusion_sensor: Option<serde_json::Value>,
}

impl StatusOnly {
    /// A member that came back as a link only (the BMC did not expand it).
    fn is_link(&self) -> bool {
        self.id.is_none()
            && self.status.is_none()
            && self.physical_security.is_none()
            && self.power_state.is_none()
    }

    fn intrusion(&self) -> Option<String> {
        self.physical_security
            .as_ref()
            .and_then(|p| p.intrusion_sensor.as_ref())
            .and_then(serde_json::Value::as_str)
            .map(str::to_owned)
    }
}

impl EntityTypeRef for StatusOnly {
    fn odata_id(&self) -> &ODataId {
        &self.odata_id
    }
    fn etag(&self) -> Option<&ODataETag> {
        self.etag.as_ref()
    }
}

#[derive(Debug, Deserialize)]
struct StatusCollection {
    #[serde(rename = "@odata.id")]
    odata_id: ODataId,
    #[serde(rename = "@odata.etag", default)]
    etag: Option<ODataETag>,
    #[serde(rename = "Members", default)]
    members: Vec<StatusOnly>,
}

impl EntityTypeRef for StatusCollection {
    fn odata_id(&self) -> &ODataId {
        &self.odata_id
    }
    fn etag(&self) -> Option<&ODataETag> {
        self.etag.as_ref()
    }
}

impl Expandable for StatusCollection {}

/// One request of a light poll.
enum Read {
    /// The chassis collection with its members inline.
    AllChassis(String),
    Chassis(usize, String),
    System(usize, String),
    /// Chassis index, source index within it, the source.
    Source(usize, usize, Source),
}

/// What one request brought.
enum Got {
    AllChassis(Arc<StatusCollection>),
    Chassis(usize, Arc<StatusOnly>),
    System(usize, Arc<StatusOnly>),
    /// The readings one source gave, in a blank chassis sample.
    Readings(usize, usize, Box<ChassisSample>),
    Nothing,
}

/// Reads health and readings again over `base`, the last full poll's sample. `expand`: the
/// BMC's service root advertises `$expand` (the chassis statuses then come in one request).
/// Fails only when nothing could be read, as a full poll does.
pub async fn refresh<B: Bmc + 'static>(
    bmc: &B,
    base: &BmcSample,
    expand: bool,
) -> Result<BmcSample, RedfishError> {
    let mut sample = BmcSample {
        observed_at_unix_ms: super::now_ms(),
        light: true,
        events: Vec::new(),
        errors: Vec::new(),
        warnings: Vec::new(),
        ..base.clone()
    };
    let collection = base
        .chassis
        .first()
        .and_then(|c| c.odata_id.rsplit_once('/'))
        .map(|(parent, _)| parent.to_owned());
    let mut reads = Vec::new();
    match collection {
        Some(uri) if expand && base.chassis.len() > 1 => reads.push(Read::AllChassis(uri)),
        _ => reads.extend(
            base.chassis
                .iter()
                .enumerate()
                .map(|(i, c)| Read::Chassis(i, c.odata_id.clone())),
        ),
    }
    for (i, s) in base.systems.iter().enumerate() {
        reads.push(Read::System(i, s.odata_id.clone()));
    }
    for (i, c) in base.chassis.iter().enumerate() {
        for (j, source) in c.sources.iter().enumerate() {
            reads.push(Read::Source(i, j, source.clone()));
        }
    }
    let requests = reads.len();
    let got = run(bmc, &base.chassis, reads).await;
    let failed = got.iter().filter(|(_, e)| !e.errors.is_empty()).count();
    // Readings are replaced whole: a source that failed this time leaves its readings empty
    // (with the error), as in a full poll, never last poll's values passed off as new.
    for c in &mut sample.chassis {
        if !c.sources.is_empty() {
            c.temperatures.clear();
            c.fans.clear();
            c.power_readings.clear();
            c.power_supplies.clear();
            c.power_control_watts = None;
            c.environment_watts = None;
        }
    }
    let mut readings = Vec::new();
    let mut unexpanded = Vec::new();
    for (done, errors) in got {
        sample.stale_plan |= errors.stale_plan;
        sample.errors.extend(errors.errors);
        match done {
            Got::AllChassis(all) => {
                let now: Vec<String> = all
                    .members
                    .iter()
                    .map(|m| last_segment(&m.odata_id.to_string()))
                    .collect();
                if now.len() != sample.chassis.len()
                    || sample.chassis.iter().any(|c| !now.contains(&c.uri))
                {
                    sample.stale_plan = true;
                }
                for m in &all.members {
                    let key = last_segment(&m.odata_id.to_string());
                    let Some(i) = sample.chassis.iter().position(|c| c.uri == key) else {
                        continue;
                    };
                    if m.is_link() {
                        unexpanded.push(i);
                    } else {
                        chassis_status(&mut sample.chassis[i], m);
                    }
                }
            }
            Got::Chassis(i, m) => chassis_status(&mut sample.chassis[i], &m),
            Got::System(i, m) => {
                let s = &mut sample.systems[i];
                (s.health, s.health_rollup) = Health::of(m.status.as_ref());
                s.conditions = conditions(m.status.as_ref());
                if let Some(p) = m.power_state.as_ref().and_then(serde_json::Value::as_str) {
                    p.clone_into(s.power_state.get_or_insert_default());
                }
            }
            Got::Readings(i, j, part) => readings.push((i, j, part)),
            Got::Nothing => {}
        }
    }
    // A BMC that answered the expanded collection with links: those that said something in
    // the full poll are read one by one.
    let worth: Vec<Read> = unexpanded
        .into_iter()
        .filter(|&i| {
            let c = &base.chassis[i];
            c.health != Health::Unknown || c.intrusion.is_some()
        })
        .map(|i| Read::Chassis(i, base.chassis[i].odata_id.clone()))
        .collect();
    for (done, errors) in run(bmc, &base.chassis, worth).await {
        sample.errors.extend(errors.errors);
        if let Got::Chassis(i, m) = done {
            chassis_status(&mut sample.chassis[i], &m);
        }
    }
    // In the order of the full poll, so lists read the same.
    readings.sort_by_key(|(i, j, _)| (*i, *j));
    for (i, _, part) in readings {
        let c = &mut sample.chassis[i];
        c.temperatures.extend(part.temperatures);
        c.fans.extend(part.fans);
        c.power_readings.extend(part.power_readings);
        c.power_supplies.extend(part.power_supplies);
        c.power_control_watts = c.power_control_watts.or(part.power_control_watts);
        c.environment_watts = c.environment_watts.or(part.environment_watts);
    }
    for c in &mut sample.chassis {
        derive(c);
    }
    if !sample.errors.is_empty() {
        sample.stale_plan = true;
    }
    if failed == requests
        && let Some(e) = nothing_read(&sample.errors)
    {
        return Err(e);
    }
    Ok(sample)
}

fn chassis_status(c: &mut ChassisSample, m: &StatusOnly) {
    (c.health, c.health_rollup) = Health::of(m.status.as_ref());
    c.conditions = conditions(m.status.as_ref());
    c.intrusion = m.intrusion();
}

/// Runs the reads, [`IN_FLIGHT`] at a time; each brings what it got and its errors.
async fn run<B: Bmc + 'static>(
    bmc: &B,
    chassis: &[ChassisSample],
    reads: Vec<Read>,
) -> Vec<(Got, BmcSample)> {
    let futures: Vec<_> = reads.into_iter().map(|r| one(bmc, chassis, r)).collect();
    futures::stream::iter(futures)
        .buffer_unordered(IN_FLIGHT)
        .collect()
        .await
}

async fn one<B: Bmc + 'static>(bmc: &B, chassis: &[ChassisSample], read: Read) -> (Got, BmcSample) {
    let mut errors = BmcSample::default();
    let got = match read {
        Read::AllChassis(uri) => match bmc
            .expand::<StatusCollection>(&ODataId::from(uri), ExpandQuery::no_links().levels(1))
            .await
        {
            Ok(all) => Got::AllChassis(all),
            Err(e) => {
                fail(&mut errors, "Chassis", &Nav(&e));
                Got::Nothing
            }
        },
        Read::Chassis(i, uri) => match bmc.get::<StatusOnly>(&ODataId::from(uri)).await {
            Ok(m) => Got::Chassis(i, m),
            Err(e) => {
                fail(&mut errors, format!("Chassis/{}", chassis[i].id), &Nav(&e));
                Got::Nothing
            }
        },
        Read::System(i, uri) => match bmc.get::<StatusOnly>(&ODataId::from(uri.clone())).await {
            Ok(m) => Got::System(i, m),
            Err(e) => {
                fail(
                    &mut errors,
                    format!("Systems/{}", last_segment(&uri)),
                    &Nav(&e),
                );
                Got::Nothing
            }
        },
        Read::Source(i, j, source) => {
            let mut part = ChassisSample::default();
            read_source(bmc, &chassis[i].id, &source, &mut part, &mut errors).await;
            Got::Readings(i, j, Box::new(part))
        }
    };
    (got, errors)
}

/// Reads one source document into `part` as the full poll did.
async fn read_source<B: Bmc + 'static>(
    bmc: &B,
    id: &str,
    source: &Source,
    part: &mut ChassisSample,
    errors: &mut BmcSample,
) {
    match source {
        Source::Thermal(uri) => match bmc.get::<Thermal>(&ODataId::from(uri.clone())).await {
            Ok(t) => thermal_readings(&t, bmc, id, part, errors).await,
            Err(e) => fail(errors, format!("Chassis/{id}/Thermal"), &Nav(&e)),
        },
        Source::Power(uri) => match bmc.get::<Power>(&ODataId::from(uri.clone())).await {
            Ok(p) => power_readings(&p, bmc, id, part, errors).await,
            Err(e) => fail(errors, format!("Chassis/{id}/Power"), &Nav(&e)),
        },
        Source::Environment(uri) => {
            match bmc
                .get::<EnvironmentMetrics>(&ODataId::from(uri.clone()))
                .await
            {
                Ok(env) => environment_watts(&env, part),
                Err(e) => fail(errors, format!("Chassis/{id}/EnvironmentMetrics"), &Nav(&e)),
            }
        }
        Source::PowerSupply(uri) => {
            match bmc.get::<PowerSupply>(&ODataId::from(uri.clone())).await {
                Ok(psu) => part.power_supplies.push(power_supply(&psu)),
                Err(e) => fail(errors, format!("Chassis/{id}/PowerSubsystem"), &Nav(&e)),
            }
        }
        Source::Sensors(uri, needs) => {
            let nav = NavProperty::new_reference(ODataId::from(uri.clone()));
            match expanded_sensors(bmc, &nav).await {
                Ok(Some(sensors)) => {
                    for s in &sensors {
                        add_sensor(part, s, *needs);
                    }
                }
                // It stopped expanding: the full poll reads the sensors one by one.
                Ok(None) => errors.stale_plan = true,
                Err(e) => fail(errors, format!("Chassis/{id}/Sensors"), &Nav(&e)),
            }
        }
        Source::Sensor(uri, needs) => match bmc.get::<Sensor>(&ODataId::from(uri.clone())).await {
            Ok(s) => {
                add_sensor(part, &s, *needs);
            }
            Err(e) => fail(errors, format!("Chassis/{id}/Sensors"), &Nav(&e)),
        },
    }
}
