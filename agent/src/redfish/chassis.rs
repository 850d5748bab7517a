//! Chassis: thermal, power, PSUs, fans and sensors, each chassis as the BMC reports it. What the
//! readings mean for the server is decided in [`crate::readings`].
//!
//! Two passes with bounded parallelism, so a 40+ chassis GPU server is read in the time of its
//! longest chain, not the sum: the chassis themselves (legacy `Thermal`/`Power`,
//! `EnvironmentMetrics`, `PowerSubsystem`), [`CHASSIS_IN_FLIGHT`] at a time; then the
//! `Sensors` they still need, [`SENSORS_IN_FLIGHT`] requests at a time across all chassis.
//! Where the BMC expands collections (`$expand`, advertised in its service root), a chassis'
//! `Sensors` come with their readings inline in one request and the second pass asks nothing.

use std::sync::Arc;

use futures::StreamExt;
use nv_redfish::ServiceRoot;
use nv_redfish::chassis::Chassis;
use nv_redfish::core::query::ExpandQuery;
use nv_redfish::core::{Bmc, NavProperty};
use nv_redfish::schema::environment_metrics::EnvironmentMetrics as EnvironmentMetricsSchema;
use nv_redfish::schema::power::Power as PowerSchema;
use nv_redfish::schema::power_supply::PowerSupply as PowerSupplySchema;
use nv_redfish::schema::sensor::Sensor;
use nv_redfish::schema::sensor_collection::SensorCollection;
use nv_redfish::schema::thermal::Thermal as ThermalSchema;
use nv_redfish::sensor::SensorLink;

use super::{
    BmcSample, ChassisSample, Component, Health, Nav, Needs, Reading, Source, conditions, fail,
    name_of, opt,
};
use crate::readings;

/// Chassis read at once.
const CHASSIS_IN_FLIGHT: usize = 4;
/// Sensor requests in flight at once, over all chassis of one BMC.
const SENSORS_IN_FLIGHT: usize = 8;

/// A sensor for the second pass: a link to fetch, or the reading itself when the collection
/// came with its members inline.
enum Pending<B: Bmc> {
    Link(SensorLink<B>),
    Read(Arc<Sensor>),
}

impl<B: Bmc> Pending<B> {
    fn uri(&self) -> String {
        match self {
            Pending::Link(l) => l.odata_id().to_string(),
            Pending::Read(s) => s.odata_id.to_string(),
        }
    }
}

/// Words in a sensor Id that say it is none of what we read (energy counters, currents,
/// voltages, utilisation, states): not fetched, to spare slow BMCs hundreds of requests.
const NOT_READ: &[&str] = &[
    "energy",
    "util",
    "amp",
    "amps",
    "curr",
    "current",
    "volt",
    "voltage",
    "state",
    "alert",
    "pwrgd",
    "rst",
    "sel",
    "redundancy",
    "fullness",
    "overt",
    "freq",
    "frequency",
];

/// Whether a sensor (by the last segment of its URI) may hold something `needs` asks for.
fn worth_fetching(uri: &str, needs: Needs) -> bool {
    let id = uri.rsplit('/').next().unwrap_or(uri);
    let w = readings::words(id);
    let says = |any: &[&str]| w.iter().any(|x| any.contains(&x.as_str()));
    if says(NOT_READ) {
        return false;
    }
    if says(&["temp", "tmp", "inlet", "ambient", "tlimit"]) {
        return needs.temperatures;
    }
    if says(&["fan", "spd"]) {
        return needs.fans;
    }
    if says(&["pwr", "power", "watts"]) {
        return needs.power;
    }
    needs.any()
}

pub(super) async fn chassis<B: Bmc + 'static>(
    root: &ServiceRoot<B>,
    bmc: &B,
    sample: &mut BmcSample,
    expand_sensors: bool,
) {
    // Links, not `ChassisCollection::members`: that reads the members one after another, which
    // on a 47-chassis DGX at 3 s per request is minutes before the first reading. Each chassis
    // is read at the head of its own chain instead, and a member that fails costs only itself.
    let links = match root.chassis_links().await {
        Ok(Some(links)) => links,
        Ok(None) => return,
        Err(e) => return fail(sample, "Chassis", &e),
    };
    // Futures made first, then streamed: a closure inside the stream would make the poll
    // task's future not `Send` for every lifetime (rustc's higher-ranked closure limitation).
    let reads: Vec<_> = links
        .into_iter()
        .map(|link| async move {
            match link.upgrade::<Chassis<B>>().await {
                Ok(ch) => one_chassis(ch, bmc, expand_sensors).await,
                Err(e) => {
                    let mut part = BmcSample::default();
                    let id = super::last_segment(&link.odata_id().to_string());
                    fail(&mut part, format!("Chassis/{id}"), &e);
                    (part, Vec::new(), Needs::default())
                }
            }
        })
        .collect();
    let read: Vec<(BmcSample, Vec<Pending<B>>, Needs)> = futures::stream::iter(reads)
        .buffered(CHASSIS_IN_FLIGHT)
        .collect()
        .await;
    // A chassis inside one whose legacy Thermal/Power was read is covered by it (a DGX's
    // CPU board repeats the DGX's 120 temperatures as Sensors): only its own gaps are fetched.
    let all: Vec<&ChassisSample> = read
        .iter()
        .filter_map(|(p, _, _)| p.chassis.first())
        .collect();
    let covered = |c: &ChassisSample, has: &dyn Fn(&ChassisSample) -> bool| {
        let mut parent = c.contained_by.clone();
        for _ in 0..16 {
            let Some(id) = parent.take() else {
                return false;
            };
            let Some(p) = all.iter().find(|x| x.key() == id && x.key() != c.key()) else {
                return false;
            };
            if has(p) {
                return true;
            }
            parent.clone_from(&p.contained_by);
        }
        false
    };
    let mut wanted = Vec::new();
    let mut inline = Vec::new();
    for (i, (part, pending, needs)) in read.iter().enumerate() {
        let mut needs = *needs;
        if let Some(c) = part.chassis.first() {
            needs.temperatures &= !covered(c, &|p| !p.temperatures.is_empty());
            needs.fans &= !covered(c, &|p| !p.fans.is_empty());
            needs.power &= !covered(c, &|p| {
                p.power_control_watts.is_some() || p.environment_watts.is_some()
            });
        }
        for p in pending {
            if !worth_fetching(&p.uri(), needs) {
                continue;
            }
            match p {
                Pending::Link(link) => wanted.push((i, needs, link)),
                Pending::Read(sensor) => inline.push((i, needs, sensor.clone())),
            }
        }
    }
    let requests: Vec<_> = wanted
        .into_iter()
        .map(|(i, needs, link)| async move { (i, needs, link.fetch().await) })
        .collect();
    let fetched: Vec<_> = futures::stream::iter(requests)
        .buffer_unordered(SENSORS_IN_FLIGHT)
        .collect()
        .await;
    let mut parts: Vec<BmcSample> = read.into_iter().map(|(part, _, _)| part).collect();
    for (i, needs, sensor) in inline {
        if let Some(cs) = parts.get_mut(i).and_then(|p| p.chassis.first_mut())
            && add_sensor(cs, &sensor, needs)
        {
            // The collection is read again whole: one request however many sensors.
            let uri = sensor.odata_id.to_string();
            let collection = uri.rsplit_once('/').map_or(uri.as_str(), |(c, _)| c);
            let source = Source::Sensors(collection.to_owned(), needs);
            if !cs.sources.contains(&source) {
                cs.sources.push(source);
            }
        }
    }
    for (i, needs, result) in fetched {
        let Some(part) = parts.get_mut(i) else {
            continue;
        };
        let id = part
            .chassis
            .first()
            .map(|c| c.id.clone())
            .unwrap_or_default();
        match result {
            Ok(sensor) => {
                if let Some(cs) = part.chassis.first_mut()
                    && add_sensor(cs, &sensor, needs)
                {
                    cs.sources
                        .push(Source::Sensor(sensor.odata_id.to_string(), needs));
                }
            }
            Err(e) => fail(part, format!("Chassis/{id}/Sensors"), &e),
        }
    }
    for mut part in parts {
        for cs in &mut part.chassis {
            derive(cs);
        }
        sample.chassis.append(&mut part.chassis);
        sample.errors.append(&mut part.errors);
        sample.events.append(&mut part.events);
    }
}

/// The chassis' own power, inlet and hottest CPU, from its readings.
pub(super) fn derive(cs: &mut ChassisSample) {
    cs.consumed_watts = readings::chassis_power(cs);
    cs.inlet_celsius = readings::inlet(cs.temperatures.iter());
    cs.cpu_max_celsius = readings::cpu_max(cs.temperatures.iter());
}

/// Files one sensor reading where the chassis needs it, by its type or unit; false when it is
/// none of what the chassis needs.
pub(super) fn add_sensor(
    cs: &mut ChassisSample,
    sensor: &nv_redfish::schema::sensor::Sensor,
    needs: Needs,
) -> bool {
    let kind = sensor
        .reading_type
        .as_ref()
        .and_then(Option::as_ref)
        .map(name_of);
    let unit = opt(sensor.reading_units.as_ref());
    let reading = Reading {
        name: sensor.name.clone(),
        value: opt(sensor.reading.as_ref()),
        unit: unit.clone().unwrap_or_default(),
        context: sensor
            .physical_context
            .as_ref()
            .and_then(Option::as_ref)
            .map(name_of),
        health: Health::of(sensor.status.as_ref()).0,
        synthesized: sensor
            .implementation
            .as_ref()
            .and_then(Option::as_ref)
            .is_some_and(|i| name_of(i) == "Synthesized"),
    };
    // ReadingType is optional; the UCUM unit is what BMCs fill in.
    match (kind.as_deref(), unit.as_deref()) {
        (Some("Temperature"), _) | (_, Some("Cel")) if needs.temperatures => {
            cs.temperatures.push(Reading {
                unit: "Cel".into(),
                ..reading
            });
        }
        (Some("Power"), _) | (_, Some("W")) if needs.power => {
            cs.power_readings.push(Reading {
                unit: "W".into(),
                ..reading
            });
        }
        (Some("Rotational"), _) | (_, Some("RPM")) if needs.fans => cs.fans.push(reading),
        _ => return false,
    }
    true
}

/// Legacy Thermal, Power, EnvironmentMetrics and PowerSubsystem of one chassis; the sensor
/// links it still needs come back for the second pass.
async fn one_chassis<B: Bmc + 'static>(
    ch: Chassis<B>,
    bmc: &B,
    expand_sensors: bool,
) -> (BmcSample, Vec<Pending<B>>, Needs) {
    let raw = ch.raw();
    let id = raw.id.clone();
    let (health, health_rollup) = Health::of(raw.status.as_ref());
    let mut cs = ChassisSample {
        id: id.clone(),
        uri: super::last_segment(&raw.odata_id.to_string()),
        odata_id: raw.odata_id.to_string(),
        name: raw.name.clone(),
        chassis_type: Some(name_of(&raw.chassis_type)),
        contained_by: raw
            .links
            .as_ref()
            .and_then(|l| l.contained_by.as_ref())
            .map(|nav| super::last_segment(&nav.id().to_string())),
        health,
        health_rollup,
        conditions: conditions(raw.status.as_ref()),
        intrusion: raw
            .physical_security
            .as_ref()
            .and_then(|p| opt(p.intrusion_sensor.as_ref()))
            .map(|i| name_of(&i)),
        ..ChassisSample::default()
    };
    let mut errors = BmcSample::default();
    // Thermal, power and environment are independent reads: at once (slow BMCs).
    let (mut temps, mut temps_errors) = (ChassisSample::default(), BmcSample::default());
    let (mut power, mut power_errors) = (ChassisSample::default(), BmcSample::default());
    let (mut env, mut env_errors) = (ChassisSample::default(), BmcSample::default());
    tokio::join!(
        legacy_thermal(&ch, bmc, &id, &mut temps, &mut temps_errors),
        legacy_power(&ch, bmc, &id, &mut power, &mut power_errors),
        environment(&ch, &id, &mut env, &mut env_errors),
    );
    cs.temperatures = temps.temperatures;
    cs.fans = temps.fans;
    cs.power_supplies = power.power_supplies;
    cs.power_control_watts = power.power_control_watts;
    cs.environment_watts = env.environment_watts;
    for part in [temps.sources, power.sources, env.sources] {
        cs.sources.extend(part);
    }
    for part in [temps_errors, power_errors, env_errors] {
        errors.errors.extend(part.errors);
    }
    // PSUs from PowerSubsystem whenever the legacy list is empty.
    if cs.power_supplies.is_empty() && raw.power_subsystem.is_some() {
        match ch.power_supplies().await {
            Ok(psus) => {
                for psu in psus {
                    let r = psu.raw();
                    cs.power_supplies.push(power_supply(&r));
                    cs.sources.push(Source::PowerSupply(r.odata_id.to_string()));
                }
            }
            Err(e) => fail(&mut errors, format!("Chassis/{id}/PowerSubsystem"), &e),
        }
    }
    // Chassis keep event logs too: the DGX's IPMI SEL, each GPU's XID log.
    if raw.log_services.is_some() {
        let owner = format!("Chassis/{id}");
        match ch.log_services().await {
            Ok(logs) => {
                for log in logs.unwrap_or_default() {
                    super::logs::read_log(&owner, bmc, &log, &mut errors).await;
                }
            }
            Err(e) => fail(&mut errors, format!("{owner}/LogServices"), &e),
        }
    }
    let needs = Needs {
        temperatures: cs.temperatures.is_empty(),
        fans: cs.fans.is_empty(),
        power: cs.power_control_watts.is_none() && cs.environment_watts.is_none(),
    };
    let inline = match &raw.sensors {
        Some(nav) if needs.any() && expand_sensors => {
            match expanded_sensors(bmc, nav).await {
                Ok(read) => read,
                Err(e) => {
                    fail(&mut errors, format!("Chassis/{id}/Sensors"), &Nav(&e));
                    // Already failed: the link pass would ask again for nothing.
                    Some(Vec::new())
                }
            }
        }
        _ => None,
    };
    let pending = match inline {
        Some(read) => read.into_iter().map(Pending::Read).collect(),
        None if needs.any() && raw.sensors.is_some() => match ch.sensor_links().await {
            Ok(links) => links
                .unwrap_or_default()
                .into_iter()
                .map(Pending::Link)
                .collect(),
            Err(e) => {
                fail(&mut errors, format!("Chassis/{id}/Sensors"), &e);
                Vec::new()
            }
        },
        None => Vec::new(),
    };
    errors.chassis.push(cs);
    (errors, pending, needs)
}

/// A chassis' sensors in one `$expand` request; None when the BMC answered links only (it
/// ignored the query), so the caller reads them one by one.
pub(super) async fn expanded_sensors<B: Bmc>(
    bmc: &B,
    nav: &NavProperty<SensorCollection>,
) -> Result<Option<Vec<Arc<Sensor>>>, B::Error> {
    let collection = bmc
        .expand::<SensorCollection>(nav.id(), ExpandQuery::no_links().levels(1))
        .await?;
    let mut read = Vec::with_capacity(collection.members.len());
    for member in &collection.members {
        match member {
            NavProperty::Expanded(_) => read.push(member.get(bmc).await?),
            NavProperty::Reference(_) => return Ok(None),
        }
    }
    Ok(Some(read))
}

async fn legacy_thermal<B: Bmc + 'static>(
    ch: &Chassis<B>,
    bmc: &B,
    id: &str,
    cs: &mut ChassisSample,
    sample: &mut BmcSample,
) {
    match ch.thermal().await {
        Ok(Some(t)) => thermal_readings(&t.raw(), bmc, id, cs, sample).await,
        Ok(None) => {}
        Err(e) => fail(sample, format!("Chassis/{id}/Thermal"), &e),
    }
}

/// Temperatures and fans of a legacy `Thermal` document.
pub(super) async fn thermal_readings<B: Bmc + 'static>(
    t: &ThermalSchema,
    bmc: &B,
    id: &str,
    cs: &mut ChassisSample,
    sample: &mut BmcSample,
) {
    for nav in t.temperatures.iter().flatten() {
        match nav.get(bmc).await {
            Ok(temp) => {
                let name = opt(temp.name.as_ref()).unwrap_or_else(|| temp.member_id.clone());
                cs.temperatures.push(Reading {
                    value: opt(temp.reading_celsius.as_ref()),
                    health: Health::of(temp.status.as_ref()).0,
                    unit: "Cel".into(),
                    context: temp.physical_context.as_ref().map(name_of),
                    name,
                    synthesized: false,
                });
            }
            Err(e) => fail(
                sample,
                format!("Chassis/{id}/Thermal/Temperatures"),
                &Nav(&e),
            ),
        }
    }
    for nav in t.fans.iter().flatten() {
        match nav.get(bmc).await {
            Ok(fan) => cs.fans.push(Reading {
                name: opt(fan.name.as_ref()).unwrap_or_else(|| fan.member_id.clone()),
                // Fan readings are RPM or percent: far below 2^52, exact in f64.
                #[allow(clippy::cast_precision_loss)]
                value: opt(fan.reading.as_ref()).map(|v| v as f64),
                unit: fan
                    .reading_units
                    .as_ref()
                    .and_then(Option::as_ref)
                    .map_or_else(String::new, name_of),
                context: fan.physical_context.as_ref().map(name_of),
                health: Health::of(fan.status.as_ref()).0,
                synthesized: false,
            }),
            Err(e) => fail(sample, format!("Chassis/{id}/Thermal/Fans"), &Nav(&e)),
        }
    }
    if !cs.temperatures.is_empty() || !cs.fans.is_empty() {
        cs.sources.push(Source::Thermal(t.odata_id.to_string()));
    }
}

async fn legacy_power<B: Bmc + 'static>(
    ch: &Chassis<B>,
    bmc: &B,
    id: &str,
    cs: &mut ChassisSample,
    sample: &mut BmcSample,
) {
    match ch.power().await {
        Ok(Some(p)) => power_readings(&p.raw(), bmc, id, cs, sample).await,
        Ok(None) => {}
        Err(e) => fail(sample, format!("Chassis/{id}/Power"), &e),
    }
}

/// Power control and power supplies of a legacy `Power` document.
pub(super) async fn power_readings<B: Bmc + 'static>(
    p: &PowerSchema,
    bmc: &B,
    id: &str,
    cs: &mut ChassisSample,
    sample: &mut BmcSample,
) {
    for nav in p.power_control.iter().flatten() {
        match nav.get(bmc).await {
            Ok(pc) => {
                // The largest entry, not the sum: XCC lists its CPU and memory sub-systems
                // beside the whole server.
                if let Some(w) = opt(pc.power_consumed_watts.as_ref()) {
                    cs.power_control_watts = Some(cs.power_control_watts.map_or(w, |p| p.max(w)));
                }
            }
            Err(e) => fail(sample, format!("Chassis/{id}/Power/PowerControl"), &Nav(&e)),
        }
    }
    for nav in p.power_supplies.iter().flatten() {
        match nav.get(bmc).await {
            Ok(psu) => cs.power_supplies.push(Component {
                name: opt(psu.name.as_ref()).unwrap_or_else(|| psu.member_id.clone()),
                health: Health::of(psu.status.as_ref()).0,
                input_watts: opt(psu.power_input_watts.as_ref()),
                conditions: conditions(psu.status.as_ref()),
            }),
            Err(e) => fail(
                sample,
                format!("Chassis/{id}/Power/PowerSupplies"),
                &Nav(&e),
            ),
        }
    }
    if cs.power_control_watts.is_some() || !cs.power_supplies.is_empty() {
        cs.sources.push(Source::Power(p.odata_id.to_string()));
    }
}

/// A PSU of `PowerSubsystem`.
pub(super) fn power_supply(r: &PowerSupplySchema) -> Component {
    Component {
        name: r.name.clone(),
        health: Health::of(r.status.as_ref()).0,
        input_watts: None,
        conditions: conditions(r.status.as_ref()),
    }
}

async fn environment<B: Bmc + 'static>(
    ch: &Chassis<B>,
    id: &str,
    cs: &mut ChassisSample,
    sample: &mut BmcSample,
) {
    match ch.environment_metrics().await {
        Ok(Some(env)) => environment_watts(&env.raw(), cs),
        Ok(None) => {}
        Err(e) => fail(sample, format!("Chassis/{id}/EnvironmentMetrics"), &e),
    }
}

/// The power an `EnvironmentMetrics` document reports.
pub(super) fn environment_watts(env: &EnvironmentMetricsSchema, cs: &mut ChassisSample) {
    cs.environment_watts = env
        .power_watts
        .as_ref()
        .and_then(|p| opt(p.reading.as_ref()));
    if cs.environment_watts.is_some() {
        cs.sources
            .push(Source::Environment(env.odata_id.to_string()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sensors_are_fetched_only_for_what_is_needed() {
        let power_only = Needs {
            power: true,
            ..Needs::default()
        };
        assert!(worth_fetching(
            "/redfish/v1/Chassis/DGX/Sensors/PWR_SYSTEM",
            power_only
        ));
        assert!(!worth_fetching(
            "/redfish/v1/Chassis/DGX/Sensors/TEMP_CPU0",
            power_only
        ));
        assert!(!worth_fetching(
            "/redfish/v1/Chassis/DGX/Sensors/ENERGY_GB_SXM1",
            power_only
        ));
        assert!(!worth_fetching(
            "/redfish/v1/Chassis/HGX_CPU_0/Sensors/ProcessorModule_0_CPU_0_CoreUtil_6",
            power_only
        ));
        // An Id that says nothing is read when anything is needed.
        assert!(worth_fetching(
            "/redfish/v1/Chassis/1/Sensors/S17",
            power_only
        ));
        assert!(!worth_fetching(
            "/redfish/v1/Chassis/1/Sensors/S17",
            Needs::default()
        ));
    }
}
