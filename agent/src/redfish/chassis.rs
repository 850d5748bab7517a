//! Chassis: thermal, power, PSUs, fans and sensors, each chassis as the BMC reports it.

use nv_redfish::ServiceRoot;
use nv_redfish::core::Bmc;

use super::{BmcSample, ChassisSample, Component, Health, Nav, Reading, fail, name_of, opt};

fn is_inlet(name: &str, context: Option<&str>) -> bool {
    let n = name.to_ascii_lowercase();
    matches!(context, Some("Intake")) || n.contains("inlet") || n.contains("intake")
}

fn is_cpu(name: &str, context: Option<&str>) -> bool {
    matches!(context, Some("CPU")) || name.to_ascii_lowercase().contains("cpu")
}

pub(super) async fn chassis<B: Bmc + 'static>(
    root: &ServiceRoot<B>,
    bmc: &B,
    sample: &mut BmcSample,
) {
    let members = match root.chassis().await {
        Ok(Some(c)) => match c.members().await {
            Ok(m) => m,
            Err(e) => return fail(sample, "Chassis", &e),
        },
        Ok(None) => return,
        Err(e) => return fail(sample, "Chassis", &e),
    };
    for ch in members {
        let raw = ch.raw();
        let id = raw.id.clone();
        let (health, health_rollup) = Health::of(raw.status.as_ref());
        let mut cs = ChassisSample {
            id: id.clone(),
            health,
            health_rollup,
            intrusion: raw
                .physical_security
                .as_ref()
                .and_then(|p| opt(p.intrusion_sensor.as_ref()))
                .map(|i| name_of(&i)),
            ..ChassisSample::default()
        };
        // Thermal, power and environment are independent reads: at once (slow BMCs).
        let (mut temps, mut temps_errors) = (ChassisSample::default(), BmcSample::default());
        let (mut power, mut power_errors) = (ChassisSample::default(), BmcSample::default());
        let (mut watts, mut env_errors) = (None, BmcSample::default());
        {
            let thermal = async {
                let (cs, sample) = (&mut temps, &mut temps_errors);
                match ch.thermal().await {
                    Ok(Some(t)) => {
                        let t = t.raw();
                        for nav in t.temperatures.iter().flatten() {
                            match nav.get(bmc).await {
                                Ok(temp) => {
                                    let name = opt(temp.name.as_ref())
                                        .unwrap_or_else(|| temp.member_id.clone());
                                    let context = temp.physical_context.as_ref().map(name_of);
                                    cs.temperatures.push(Reading {
                                        value: opt(temp.reading_celsius.as_ref()),
                                        health: Health::of(temp.status.as_ref()).0,
                                        unit: "Cel".into(),
                                        context,
                                        name,
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
                                    name: opt(fan.name.as_ref())
                                        .unwrap_or_else(|| fan.member_id.clone()),
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
                                }),
                                Err(e) => {
                                    fail(sample, format!("Chassis/{id}/Thermal/Fans"), &Nav(&e));
                                }
                            }
                        }
                    }
                    Ok(None) => {}
                    Err(e) => fail(sample, format!("Chassis/{id}/Thermal"), &e),
                }
                // Subsystem-only platforms (no legacy Thermal/Power): temperatures from Sensors, PSUs
                // from PowerSubsystem. Only then: reading sensors one by one is expensive on slow BMCs.
                if cs.temperatures.is_empty() && raw.thermal.is_none() {
                    match ch.sensor_links().await {
                        Ok(Some(links)) => {
                            for link in links {
                                match link.fetch().await {
                                    Ok(sensor) => {
                                        let kind = sensor
                                            .reading_type
                                            .as_ref()
                                            .and_then(Option::as_ref)
                                            .map(name_of);
                                        let unit = opt(sensor.reading_units.as_ref());
                                        // ReadingType is optional; the UCUM unit is what BMCs fill in.
                                        if kind.as_deref() == Some("Temperature")
                                            || unit.as_deref() == Some("Cel")
                                        {
                                            cs.temperatures.push(Reading {
                                                name: sensor.name.clone(),
                                                value: opt(sensor.reading.as_ref()),
                                                unit: "Cel".into(),
                                                context: sensor
                                                    .physical_context
                                                    .as_ref()
                                                    .and_then(Option::as_ref)
                                                    .map(name_of),
                                                health: Health::of(sensor.status.as_ref()).0,
                                            });
                                        }
                                    }
                                    Err(e) => fail(sample, format!("Chassis/{id}/Sensors"), &e),
                                }
                            }
                        }
                        Ok(None) => {}
                        Err(e) => fail(sample, format!("Chassis/{id}/Sensors"), &e),
                    }
                }
            };
            let power = async {
                let (cs, sample) = (&mut power, &mut power_errors);
                match ch.power().await {
                    Ok(Some(p)) => {
                        let p = p.raw();
                        for nav in p.power_control.iter().flatten() {
                            match nav.get(bmc).await {
                                Ok(pc) => {
                                    if let Some(w) = opt(pc.power_consumed_watts.as_ref()) {
                                        cs.consumed_watts =
                                            Some(cs.consumed_watts.unwrap_or(0.0) + w);
                                    }
                                }
                                Err(e) => {
                                    fail(
                                        sample,
                                        format!("Chassis/{id}/Power/PowerControl"),
                                        &Nav(&e),
                                    );
                                }
                            }
                        }
                        for nav in p.power_supplies.iter().flatten() {
                            match nav.get(bmc).await {
                                Ok(psu) => cs.power_supplies.push(Component {
                                    name: opt(psu.name.as_ref())
                                        .unwrap_or_else(|| psu.member_id.clone()),
                                    health: Health::of(psu.status.as_ref()).0,
                                }),
                                Err(e) => fail(
                                    sample,
                                    format!("Chassis/{id}/Power/PowerSupplies"),
                                    &Nav(&e),
                                ),
                            }
                        }
                    }
                    Ok(None) => {}
                    Err(e) => fail(sample, format!("Chassis/{id}/Power"), &e),
                }
                if cs.power_supplies.is_empty() && raw.power.is_none() {
                    match ch.power_supplies().await {
                        Ok(psus) => {
                            for psu in psus {
                                let r = psu.raw();
                                cs.power_supplies.push(Component {
                                    name: r.name.clone(),
                                    health: Health::of(r.status.as_ref()).0,
                                });
                            }
                        }
                        Err(e) => fail(sample, format!("Chassis/{id}/PowerSubsystem"), &e),
                    }
                }
            };
            let environment = async {
                let (env_watts, sample) = (&mut watts, &mut env_errors);
                match ch.environment_metrics().await {
                    Ok(Some(env)) => {
                        *env_watts = env
                            .raw()
                            .power_watts
                            .as_ref()
                            .and_then(|p| opt(p.reading.as_ref()));
                    }
                    Ok(None) => {}
                    Err(e) => fail(sample, format!("Chassis/{id}/EnvironmentMetrics"), &e),
                }
            };
            tokio::join!(thermal, power, environment);
        }
        cs.temperatures = temps.temperatures;
        cs.fans = temps.fans;
        cs.power_supplies = power.power_supplies;
        // Legacy PowerControl first; EnvironmentMetrics where there is none.
        cs.consumed_watts = power.consumed_watts.or(watts);
        for part in [temps_errors, power_errors, env_errors] {
            sample.errors.extend(part.errors);
        }
        cs.inlet_celsius = cs
            .temperatures
            .iter()
            .filter(|t| is_inlet(&t.name, t.context.as_deref()))
            .filter_map(|t| t.value)
            .reduce(f64::max);
        cs.cpu_max_celsius = cs
            .temperatures
            .iter()
            .filter(|t| is_cpu(&t.name, t.context.as_deref()))
            .filter_map(|t| t.value)
            .reduce(f64::max);
        sample.chassis.push(cs);
    }
}
