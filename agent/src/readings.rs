//! What a server's readings mean: server power, inlet and CPU temperature, GPUs, decided from
//! what each reading says it is (name, physical context, unit, containment), never from its
//! position in the tree. Pure functions over a [`BmcSample`], unit-tested here and checked on
//! every mockup tree in `tests/truth.rs`.
//!
//! ## Server power (first rule that gives a value)
//! 1. **The system's chassis**: legacy `PowerControl` (its largest entry: XCC lists CPU and
//!    memory sub-systems beside the total), else `EnvironmentMetrics.PowerWatts`, of the chassis
//!    the first system links to (`Links.Chassis`): what a rack server reports. The largest when
//!    it links to several (an enclosure repeats its blade's reading).
//! 2. **A whole-system sensor**: a power sensor whose name says system or total input (DGX
//!    `PWR_SYSTEM`), the largest.
//! 3. **Power supplies**: the sum of their input watts.
//! 4. **Top-level measured chassis**: the sum over chassis with a power of their own (legacy,
//!    `EnvironmentMetrics`, or a sensor named after the chassis itself) that no measured chassis
//!    contains, so a GPU inside a measured processor module is never counted twice.
//!
//! ## Inlet
//! Temperatures named inlet, intake or ambient; only when no name says so, those whose
//! `PhysicalContext` is `Intake`/`Ambient`. Limits and thresholds (`TLIMIT`, `TempLimit`) are
//! not readings. The **coldest** wins: air entering the server is the coldest it gets; inlets
//! deeper in (a GPU tray behind the CPUs) read air already warmed.
//!
//! ## Hottest CPU
//! Temperatures whose name or context says CPU/processor, except voltage regulators (`VR`,
//! `VRM`, `Vreg`), memory (`DIMM`) and limits; those named for the CPU alone (`TEMP_CPU0`) win
//! over qualified ones (`TEMP_CPU0_EFGH`, a DIMM bank) when there are any. The hottest wins.
//!
//! ## GPUs
//! Each `Processor` of type GPU; when it links to a chassis of its own (`HGX_GPU_SXM_1` for
//! `GPU_SXM_1`, not a PCIe card's host chassis), its power is that chassis' power (rule 4's own
//! power) and its temperature the hottest measured (not synthesized), non-memory, non-limit one.

use crate::redfish::{BmcSample, ChassisSample, GpuSample, Health, Reading};

/// Words of a name: lower case, split at punctuation, case changes and letter/digit changes
/// (`TEMP_CPU0` → temp cpu 0; `TotalHSC` → total hsc; `SocPower` → soc power).
pub fn words(name: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    let mut cur = String::new();
    let mut prev: Option<char> = None;
    for c in name.chars() {
        if !c.is_alphanumeric() {
            if !cur.is_empty() {
                out.push(std::mem::take(&mut cur));
            }
            prev = None;
            continue;
        }
        if let Some(p) = prev {
            let camel = p.is_lowercase() && c.is_uppercase();
            let digit = p.is_ascii_digit() != c.is_ascii_digit();
            if (camel || digit) && !cur.is_empty() {
                out.push(std::mem::take(&mut cur));
            }
        }
        cur.extend(c.to_lowercase());
        prev = Some(c);
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

fn has(words: &[String], any: &[&str]) -> bool {
    words.iter().any(|w| any.contains(&w.as_str()))
}

/// Words that make a temperature a limit or threshold, not a measurement.
const LIMIT: &[&str] = &["limit", "tlimit", "threshold", "margin"];

fn is_limit(w: &[String]) -> bool {
    has(w, LIMIT)
}

fn plausible_celsius(v: f64) -> bool {
    v.is_finite() && v > 0.0 && v < 150.0
}

/// Whether a temperature is an air inlet by its name.
fn named_inlet(t: &Reading) -> bool {
    let w = words(&t.name);
    has(&w, &["inlet", "intake", "ambient"]) && !is_limit(&w)
}

fn context_inlet(t: &Reading) -> bool {
    matches!(t.context.as_deref(), Some("Intake" | "Ambient")) && !is_limit(&words(&t.name))
}

/// The coldest inlet among `temps` (see the module rules).
pub fn inlet<'a>(temps: impl Iterator<Item = &'a Reading> + Clone) -> Option<f64> {
    let by_name = temps
        .clone()
        .filter(|t| named_inlet(t))
        .filter_map(|t| t.value)
        .filter(|v| plausible_celsius(*v))
        .reduce(f64::min);
    by_name.or_else(|| {
        temps
            .filter(|t| context_inlet(t))
            .filter_map(|t| t.value)
            .filter(|v| plausible_celsius(*v))
            .reduce(f64::min)
    })
}

fn is_cpu_temperature(t: &Reading) -> bool {
    let w = words(&t.name);
    let cpu = has(&w, &["cpu", "processor"]) || t.context.as_deref() == Some("CPU");
    let excluded = is_limit(&w)
        || has(
            &w,
            &["vr", "vrm", "vreg", "regulator", "dimm", "mem", "memory"],
        )
        // Supermicro's CPU1_VRMIN / _VRMON / _VRMHV: the CPU's voltage regulators.
        || w.iter().any(|x| x.starts_with("vrm") || x.starts_with("vreg"))
        || t.context.as_deref() == Some("VoltageRegulator")
        || t.synthesized;
    cpu && !excluded
}

/// A CPU temperature named for the CPU alone (`TEMP_CPU0`, `CPU1 Temp`, `02-CPU 1`), not for
/// something beside it (`TEMP_CPU0_EFGH`: the DIMM channels E–H of CPU 0).
fn names_the_cpu_alone(t: &Reading) -> bool {
    words(&t.name).iter().all(|w| {
        ["temp", "tmp", "cpu", "processor", "package", "pkg", "die"].contains(&w.as_str())
            || w.chars().all(|c| c.is_ascii_digit())
    })
}

/// The hottest CPU among `temps`: among sensors named for the CPU alone when there are any,
/// else among all CPU temperatures.
pub fn cpu_max<'a>(temps: impl Iterator<Item = &'a Reading>) -> Option<f64> {
    let cpu: Vec<&Reading> = temps.filter(|t| is_cpu_temperature(t)).collect();
    let alone: Vec<&Reading> = cpu
        .iter()
        .copied()
        .filter(|t| names_the_cpu_alone(t))
        .collect();
    let pick = if alone.is_empty() { cpu } else { alone };
    pick.iter()
        .filter_map(|t| t.value)
        .filter(|v| plausible_celsius(*v))
        .reduce(f64::max)
}

/// A power sensor that measures the chassis itself: its name, once the chassis' own words are
/// taken away, says only power/total/input (`ProcessorModule 0 Power 0` on chassis
/// `HGX_ProcessorModule_0`), not a part of it (`... DRAM 0 Power 0`, `... HSC 3 Power 0`).
fn is_chassis_power(chassis: &ChassisSample, r: &Reading) -> bool {
    let own: Vec<String> = words(&chassis.id)
        .into_iter()
        .chain(words(&chassis.name))
        .collect();
    words(&r.name).iter().all(|w| {
        own.contains(w)
            || w.chars().all(|c| c.is_ascii_digit())
            || ["power", "pwr", "total", "input", "watts"].contains(&w.as_str())
    })
}

/// This chassis' own power: legacy, `EnvironmentMetrics`, or a sensor named after the chassis.
pub fn chassis_power(c: &ChassisSample) -> Option<f64> {
    c.power_control_watts.or(c.environment_watts).or_else(|| {
        c.power_readings
            .iter()
            .filter(|r| is_chassis_power(c, r))
            .filter_map(|r| r.value)
            .reduce(f64::max)
    })
}

fn is_system_power(r: &Reading) -> bool {
    let w = words(&r.name);
    has(&w, &["system", "sys"]) || (has(&w, &["total"]) && has(&w, &["input"]))
}

/// How the server power was found (for the `collect` table and tests).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PowerSource {
    SystemChassis,
    SystemSensor,
    PowerSupplies,
    TopLevelChassis,
}

/// The server's power draw in watts and which rule gave it.
pub fn server_power(s: &BmcSample) -> Option<(f64, PowerSource)> {
    let linked: &[String] = s.systems.first().map_or(&[], |x| x.chassis.as_slice());
    let system_chassis = s
        .chassis
        .iter()
        .filter(|c| linked.iter().any(|l| l == c.key()))
        .filter_map(|c| c.power_control_watts.or(c.environment_watts))
        .filter(|w| w.is_finite() && *w >= 0.0)
        .reduce(f64::max);
    if let Some(w) = system_chassis {
        return Some((w, PowerSource::SystemChassis));
    }
    let sensor = s
        .chassis
        .iter()
        .flat_map(|c| &c.power_readings)
        .filter(|r| is_system_power(r))
        .filter_map(|r| r.value)
        .filter(|w| w.is_finite() && *w > 0.0)
        .reduce(f64::max);
    if let Some(w) = sensor {
        return Some((w, PowerSource::SystemSensor));
    }
    let psus: Vec<f64> = s
        .chassis
        .iter()
        .flat_map(|c| &c.power_supplies)
        .filter_map(|p| p.input_watts)
        .collect();
    if !psus.is_empty() {
        return Some((psus.iter().sum(), PowerSource::PowerSupplies));
    }
    let measured = |id: &str| {
        s.chassis
            .iter()
            .find(|c| c.key() == id)
            .and_then(chassis_power)
            .is_some()
    };
    // A chassis counts unless one of its ancestors (bounded walk: BMCs send loops) is measured.
    let inside_measured = |c: &ChassisSample| {
        let mut parent = c.contained_by.clone();
        for _ in 0..16 {
            let Some(p) = parent else { return false };
            if p == c.key() {
                return false;
            }
            if measured(&p) {
                return true;
            }
            parent = s
                .chassis
                .iter()
                .find(|x| x.key() == p)
                .and_then(|x| x.contained_by.clone());
        }
        false
    };
    let parts: Vec<f64> = s
        .chassis
        .iter()
        .filter(|c| !inside_measured(c))
        .filter_map(chassis_power)
        .collect();
    (!parts.is_empty()).then(|| (parts.iter().sum(), PowerSource::TopLevelChassis))
}

/// The server's inlet: the coldest inlet over all chassis.
pub fn server_inlet(s: &BmcSample) -> Option<f64> {
    inlet(s.chassis.iter().flat_map(|c| &c.temperatures))
}

/// The server's hottest CPU over all chassis.
pub fn server_cpu_max(s: &BmcSample) -> Option<f64> {
    cpu_max(s.chassis.iter().flat_map(|c| &c.temperatures))
}

/// One GPU with its readings.
#[derive(Clone, Debug, PartialEq)]
pub struct GpuReading {
    pub id: String,
    pub model: Option<String>,
    pub health: Health,
    pub power_watts: Option<f64>,
    pub temperature_celsius: Option<f64>,
}

fn gpu_temperature(t: &Reading) -> bool {
    let w = words(&t.name);
    !t.synthesized && !is_limit(&w) && !has(&w, &["dram", "hbm", "mem", "memory"])
}

/// The GPUs with their power and temperature.
pub fn gpus(s: &BmcSample) -> Vec<GpuReading> {
    s.gpus
        .iter()
        .map(|g: &GpuSample| {
            // Only a chassis of the GPU's own (HGX_GPU_SXM_1 for GPU_SXM_1): a PCIe GPU links
            // to the server's chassis, whose power and temperatures are not the GPU's.
            let own_words = words(&g.id);
            let ch = g
                .chassis
                .as_ref()
                .and_then(|id| s.chassis.iter().find(|c| c.key() == id))
                .filter(|c| words(c.key()).ends_with(&own_words) && !own_words.is_empty());
            GpuReading {
                id: g.id.clone(),
                model: g.model.clone(),
                health: g.health,
                power_watts: ch.and_then(chassis_power),
                temperature_celsius: ch.and_then(|c| {
                    c.temperatures
                        .iter()
                        .filter(|t| gpu_temperature(t))
                        .filter_map(|t| t.value)
                        .filter(|v| plausible_celsius(*v))
                        .reduce(f64::max)
                }),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::redfish::{Component, SystemSample};

    fn t(name: &str, v: f64, ctx: Option<&str>) -> Reading {
        Reading {
            name: name.into(),
            value: Some(v),
            unit: "Cel".into(),
            context: ctx.map(Into::into),
            health: Health::Ok,
            synthesized: false,
        }
    }

    fn w(name: &str, v: f64) -> Reading {
        Reading {
            unit: "W".into(),
            ..t(name, v, None)
        }
    }

    fn chassis(id: &str, parent: Option<&str>) -> ChassisSample {
        ChassisSample {
            id: id.into(),
            name: id.into(),
            contained_by: parent.map(Into::into),
            ..ChassisSample::default()
        }
    }

    #[test]
    fn words_split_at_punctuation_case_and_digits() {
        assert_eq!(words("TEMP_CPU0"), ["temp", "cpu", "0"]);
        assert_eq!(words("TotalHSC Power"), ["total", "hsc", "power"]);
        assert_eq!(
            words("ProcessorModule 0 Vreg 0 SocPower 0")[2..5],
            ["0", "vreg", "0"]
        );
        assert_eq!(words("TLIMIT_GB_SXM1"), ["tlimit", "gb", "sxm", "1"]);
    }

    #[test]
    fn inlet_by_name_ignores_limits_and_every_intake_context() {
        // DGX: every temperature says Intake; the GPU limit (60) and the GPU tray inlet (31)
        // must not win over the front ambient (22).
        let temps = [
            t("TLIMIT_GB_SXM1", 60.0, Some("Intake")),
            t("TEMP_GB1_INLET1", 31.0, Some("Intake")),
            t("TEMP_MB_INLET", 25.0, Some("Intake")),
            t("TEMP_AMBIENT", 22.0, Some("Intake")),
            t("TEMP_CPU0", 31.0, Some("Intake")),
        ];
        assert_eq!(inlet(temps.iter()), Some(22.0));
        // No name says inlet: the context decides.
        let temps = [
            t("Front Panel", 19.0, Some("Intake")),
            t("CPU1", 40.0, Some("CPU")),
        ];
        assert_eq!(inlet(temps.iter()), Some(19.0));
        assert_eq!(inlet([t("CPU1", 40.0, Some("CPU"))].iter()), None);
    }

    #[test]
    fn cpu_excludes_regulators_limits_and_memory() {
        let temps = [
            t("TEMP_VR_CPU0", 46.0, Some("Intake")),
            t("CPU 0 TempLimit 0", 51.0, Some("CPU")),
            t("CPU 0 DIMM A", 45.0, None),
            t("CPU 0 TempAvg 0", 38.0, Some("CPU")),
        ];
        assert_eq!(cpu_max(temps.iter()), Some(38.0));
        // DGX: the DIMM banks of CPU 0 (EFGH) run warmer than the CPU itself.
        let temps = [
            t("TEMP_CPU0", 31.0, Some("Intake")),
            t("TEMP_CPU0_EFGH", 38.0, Some("Intake")),
        ];
        assert_eq!(cpu_max(temps.iter()), Some(31.0));
    }

    #[test]
    fn system_chassis_power_first_then_system_sensor() {
        let mut s = BmcSample {
            systems: vec![SystemSample {
                chassis: vec!["DGX".into()],
                ..SystemSample::default()
            }],
            chassis: vec![chassis("DGX", None), chassis("HGX_Chassis_0", None)],
            ..BmcSample::default()
        };
        s.chassis[1].environment_watts = Some(825.0);
        s.chassis[0].power_readings = vec![w("PWR_GB1_TOT_HSC", 759.0), w("PWR_SYSTEM", 1950.0)];
        assert_eq!(server_power(&s), Some((1950.0, PowerSource::SystemSensor)));
        s.chassis[0].power_control_watts = Some(1900.0);
        assert_eq!(server_power(&s), Some((1900.0, PowerSource::SystemChassis)));
    }

    #[test]
    fn power_supplies_then_top_level_chassis_without_double_counting() {
        let mut s = BmcSample {
            chassis: vec![
                chassis("BMC_0", None),
                chassis("HGX_ProcessorModule_0", None),
                chassis("HGX_GPU_0", Some("HGX_ProcessorModule_0")),
                chassis("HGX_ProcessorModule_1", None),
                chassis("HGX_GPU_1", Some("HGX_ProcessorModule_1")),
            ],
            ..BmcSample::default()
        };
        s.chassis[1].power_readings = vec![
            w("ProcessorModule 0 Power 0", 165.0),
            w("ProcessorModule 0 Vreg 0 CpuPower 0", 30.0),
        ];
        s.chassis[2].environment_watts = Some(85.0);
        s.chassis[3].power_readings = vec![w("ProcessorModule 1 Power 0", 144.0)];
        s.chassis[4].environment_watts = Some(99.0);
        assert_eq!(
            server_power(&s),
            Some((309.0, PowerSource::TopLevelChassis))
        );
        s.chassis[0].power_supplies = vec![
            Component {
                name: "PSU1".into(),
                health: Health::Ok,
                input_watts: Some(200.0),
                conditions: Vec::new(),
            },
            Component {
                name: "PSU2".into(),
                health: Health::Ok,
                input_watts: Some(190.0),
                conditions: Vec::new(),
            },
        ];
        assert_eq!(server_power(&s), Some((390.0, PowerSource::PowerSupplies)));
    }

    #[test]
    fn containment_loops_end() {
        let mut s = BmcSample {
            chassis: vec![chassis("A", Some("B")), chassis("B", Some("A"))],
            ..BmcSample::default()
        };
        s.chassis[0].environment_watts = Some(10.0);
        // B is inside measured A; A is inside B (not measured) and beyond: counted once.
        assert_eq!(server_power(&s), Some((10.0, PowerSource::TopLevelChassis)));
    }

    #[test]
    fn gpu_readings_skip_synthesized_and_memory() {
        let mut ch = chassis("HGX_GPU_SXM_1", None);
        ch.environment_watts = Some(71.7);
        ch.temperatures = vec![
            t("HGX GPU SXM 1 TEMP 0", 26.75, Some("GPU")),
            Reading {
                synthesized: true,
                ..t("HGX GPU SXM 1 TEMP 1", 60.0, Some("GPU"))
            },
            t("HGX GPU SXM 1 DRAM 0 Temp 0", 35.0, Some("GPU")),
        ];
        let s = BmcSample {
            chassis: vec![ch],
            gpus: vec![GpuSample {
                id: "GPU_SXM_1".into(),
                model: Some("H100".into()),
                health: Health::Ok,
                chassis: Some("HGX_GPU_SXM_1".into()),
            }],
            ..BmcSample::default()
        };
        let g = gpus(&s);
        assert_eq!(g[0].power_watts, Some(71.7));
        assert_eq!(g[0].temperature_celsius, Some(26.75));
    }

    #[test]
    fn a_pcie_gpu_does_not_take_its_hosts_readings() {
        // Dell: the H100 PCIe card links to the server's chassis.
        let mut host = chassis("System.Embedded.1", None);
        host.power_control_watts = Some(614.0);
        host.temperatures = vec![t("CPU1 Temp", 39.0, Some("CPU"))];
        let s = BmcSample {
            chassis: vec![host],
            gpus: vec![GpuSample {
                id: "Video.Slot.2-1".into(),
                model: Some("NVIDIA H100 PCIe".into()),
                health: Health::Ok,
                chassis: Some("System.Embedded.1".into()),
            }],
            ..BmcSample::default()
        };
        let g = gpus(&s);
        assert_eq!((g[0].power_watts, g[0].temperature_celsius), (None, None));
    }
}
