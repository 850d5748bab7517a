//! BMC role: Redfish telemetry through nv-redfish.
//!
//! Why nv-redfish (0.22, pinned): it lets us hand it our own `reqwest` client, so TLS is verified
//! against the Server's CA bundle (or skipped only when `insecureSkipVerify` is set), has session
//! and basic auth, timeouts, vendor quirk repairs, typed models for legacy Thermal/Power and the
//! newer subsystems, and a transport trait (`Bmc`). The `redfish` crate (0.3) has no TLS options.
//!
//! One BMC answering badly never fails the collection as a whole: each section that fails is
//! recorded in [`BmcSample::errors`] with a reason, and the rest is still read.

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use nv_redfish::ServiceRoot;
use nv_redfish::bmc_http::{BmcCredentials, CacheSettings, HttpBmc};
use nv_redfish::core::Bmc;
use nv_redfish::quirks::RulesBmc;
use nv_redfish::schema::resource::{Health as RfHealth, Status};
use serde::Serialize;

use crate::transport::{MAX_BODY_BYTES, RetryHint, Transport};

/// The BMC HTTP client used in production: nv-redfish's HTTP transport under our repairs.
pub type HttpRedfish = RulesBmc<HttpBmc<Transport>>;

mod chassis;
mod errors;
mod logs;
mod refresh;
mod repairs;
mod systems;

use errors::{Classified, Nav, describe, one_line};
pub use errors::{FailureClass, RedfishError, error_body_summary};
pub use refresh::refresh;
pub use repairs::{DocumentKind, REPAIRS, Repair, parse_document, repairs};

/// How to reach one BMC. The password is never printed.
#[derive(Clone, PartialEq, Eq)]
pub struct Endpoint {
    pub address: String,
    pub username: String,
    pub password: String,
    /// PEM CA bundle the BMC certificate must chain to.
    pub ca_bundle_pem: Option<String>,
    /// Skip TLS verification (explicit opt-out only).
    pub insecure_skip_verify: bool,
    /// Per-request timeout.
    pub timeout: Duration,
}

impl fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Endpoint")
            .field("address", &self.address)
            .field("username", &self.username)
            .field("password", &"<redacted>")
            .field(
                "ca_bundle_pem",
                &self.ca_bundle_pem.as_ref().map(|_| "<pem>"),
            )
            .field("insecure_skip_verify", &self.insecure_skip_verify)
            .field("timeout", &self.timeout)
            .finish()
    }
}

/// Redfish health, Unknown when absent or null (never assumed OK).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub enum Health {
    #[serde(rename = "OK")]
    Ok,
    Warning,
    Critical,
    #[default]
    Unknown,
}

impl Health {
    fn from_rf(h: Option<&RfHealth>) -> Self {
        match h {
            Some(RfHealth::Ok) => Health::Ok,
            Some(RfHealth::Warning) => Health::Warning,
            Some(RfHealth::Critical) => Health::Critical,
            _ => Health::Unknown,
        }
    }

    fn of(status: Option<&Status>) -> (Self, Self) {
        (
            Self::from_rf(
                status
                    .and_then(|s| s.health.as_ref())
                    .and_then(Option::as_ref),
            ),
            Self::from_rf(
                status
                    .and_then(|s| s.health_rollup.as_ref())
                    .and_then(Option::as_ref),
            ),
        )
    }

    /// The worse of two.
    #[must_use]
    pub fn worst(self, other: Health) -> Health {
        let rank = |h: Health| match h {
            Health::Ok => 0,
            Health::Unknown => 1,
            Health::Warning => 2,
            Health::Critical => 3,
        };
        if rank(other) > rank(self) {
            other
        } else {
            self
        }
    }
}

/// A named reading.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Reading {
    pub name: String,
    pub value: Option<f64>,
    pub unit: String,
    pub context: Option<String>,
    pub health: Health,
    /// The BMC computed it (`Implementation: Synthesized`, e.g. a GPU's margin to its slowdown
    /// limit), rather than measured it.
    pub synthesized: bool,
}

/// A component with a health (PSU, fan).
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Component {
    pub name: String,
    pub health: Health,
    /// Input power of a power supply (legacy `PowerInputWatts`), when reported.
    pub input_watts: Option<f64>,
    /// Why it is not OK, in the BMC's words (`Status.Conditions[].Message`).
    pub conditions: Vec<String>,
}

/// One chassis.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ChassisSample {
    pub id: String,
    /// The last segment of its URI: what links (`ContainedBy`, a system's `Chassis`) name.
    /// Usually the Id; some services (DMTF compose mockup) disagree.
    pub uri: String,
    pub name: String,
    pub chassis_type: Option<String>,
    /// Id of the chassis this one sits in (`Links.ContainedBy`): its power is part of that one's.
    pub contained_by: Option<String>,
    pub health: Health,
    pub health_rollup: Health,
    /// `PhysicalSecurity.IntrusionSensor` when the chassis reports it.
    pub intrusion: Option<String>,
    /// Why it is not OK, in the BMC's words (`Status.Conditions[].Message`).
    pub conditions: Vec<String>,
    /// This chassis' own readings, by the rules in [`crate::readings`].
    pub inlet_celsius: Option<f64>,
    pub cpu_max_celsius: Option<f64>,
    pub consumed_watts: Option<f64>,
    /// Legacy `Power.PowerControl[].PowerConsumedWatts`.
    pub power_control_watts: Option<f64>,
    /// `EnvironmentMetrics.PowerWatts`.
    pub environment_watts: Option<f64>,
    /// Power sensors (`Sensors`, watts), read where legacy power and `EnvironmentMetrics` say
    /// nothing.
    pub power_readings: Vec<Reading>,
    pub temperatures: Vec<Reading>,
    pub fans: Vec<Reading>,
    pub power_supplies: Vec<Component>,
    /// Its `@odata.id`, where a light poll reads its status again.
    #[serde(skip)]
    pub odata_id: String,
    /// The documents its readings came from: all a light poll reads again.
    #[serde(skip)]
    pub sources: Vec<Source>,
}

/// A document one chassis' readings came from in a full poll.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Source {
    Thermal(String),
    Power(String),
    Environment(String),
    PowerSupply(String),
    /// A `Sensors` collection read with its members inline, and what it was read for.
    Sensors(String, Needs),
    Sensor(String, Needs),
}

/// What a chassis takes from its `Sensors` (where legacy and subsystem reads said nothing).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Needs {
    pub temperatures: bool,
    pub fans: bool,
    pub power: bool,
}

impl Needs {
    fn any(self) -> bool {
        self.temperatures || self.fans || self.power
    }
}

impl ChassisSample {
    /// What links to this chassis name it by.
    #[must_use]
    pub fn key(&self) -> &str {
        if self.uri.is_empty() {
            &self.id
        } else {
            &self.uri
        }
    }
}

/// One drive.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DriveSample {
    pub id: String,
    pub model: Option<String>,
    pub media_type: Option<String>,
    pub protocol: Option<String>,
    pub capacity_bytes: Option<u64>,
    pub health: Health,
    pub failure_predicted: bool,
    pub life_left_percent: Option<f64>,
    pub encryption_capable: bool,
}

/// System inventory.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SystemSample {
    pub id: String,
    pub manufacturer: Option<String>,
    pub model: Option<String>,
    pub serial_number: Option<String>,
    pub bios_version: Option<String>,
    pub power_state: Option<String>,
    pub processor_model: Option<String>,
    pub processor_count: Option<i64>,
    pub logical_processors: Option<i64>,
    pub memory_gib: Option<f64>,
    pub health: Health,
    pub health_rollup: Health,
    /// Ids of the chassis the system sits in (`Links.Chassis`).
    pub chassis: Vec<String>,
    /// Why it is not OK, in the BMC's words (`Status.Conditions[].Message`).
    pub conditions: Vec<String>,
    /// Its `@odata.id`, where a light poll reads its status again.
    #[serde(skip)]
    pub odata_id: String,
}

/// One GPU (a `Processor` with `ProcessorType: GPU`).
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct GpuSample {
    pub id: String,
    pub model: Option<String>,
    pub health: Health,
    /// The chassis carrying its readings (`Links.Chassis`).
    pub chassis: Option<String>,
}

/// One system event log entry.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct LogEvent {
    /// The log it came from, e.g. `Managers/iDRAC.Embedded.1/Sel`.
    pub log: String,
    pub id: String,
    pub created: Option<String>,
    pub severity: Option<String>,
    pub message: Option<String>,
    pub message_id: Option<String>,
}

/// Entries kept per log per poll: the newest; older ones were reported by earlier polls.
const MAX_EVENTS_PER_LOG: usize = 200;

/// A section of the tree that could not be read, and why.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct SectionError {
    pub section: String,
    pub class: FailureClass,
    pub reason: String,
    /// The request that failed asked for `$expand` (the BMC may not support it).
    #[serde(skip)]
    pub expand: bool,
}

/// Everything read from one BMC in one poll.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct BmcSample {
    pub observed_at_unix_ms: u64,
    pub vendor: Option<String>,
    pub systems: Vec<SystemSample>,
    pub chassis: Vec<ChassisSample>,
    pub drives: Vec<DriveSample>,
    pub gpus: Vec<GpuSample>,
    pub errors: Vec<SectionError>,
    /// The BMC advertises `$expand` but refused it; poll it without.
    pub expand_refused: bool,
    /// System event log entries (all this poll read; the poller keeps only new ones).
    pub events: Vec<LogEvent>,
    /// Fields dropped or filled in so a document would decode, each with its URI: what the
    /// BMC sent that does not follow the schema, at the cost of that field only.
    pub warnings: Vec<String>,
    /// A light poll ([`refresh`]): readings and health read again, inventory and logs from
    /// the last full poll.
    #[serde(skip)]
    pub light: bool,
    /// The tree no longer matches the last full poll (a chassis came or went, a document
    /// moved): the next poll must be a full one.
    #[serde(skip)]
    pub stale_plan: bool,
}

impl BmcSample {
    /// Worst health over systems, chassis and drives, plus intrusion (Critical).
    pub fn overall_health(&self) -> Health {
        let mut h = Health::Ok;
        let mut seen = false;
        // A component without a Status (DGX boards, ERoTs) says nothing: it neither makes the
        // server Unknown nor OK. `Health` stands in where `HealthRollup` is absent.
        let known = |own: Health, rollup: Health| {
            let r = if rollup == Health::Unknown {
                own
            } else {
                rollup.worst(own)
            };
            (r != Health::Unknown).then_some(r)
        };
        for s in &self.systems {
            if let Some(x) = known(s.health, s.health_rollup) {
                h = h.worst(x);
                seen = true;
            }
        }
        for c in &self.chassis {
            if let Some(x) = known(c.health, Health::Unknown) {
                h = h.worst(x);
                seen = true;
            }
            if c.intrusion.as_deref().is_some_and(|i| i != "Normal") {
                h = Health::Critical;
                seen = true;
            }
        }
        for d in &self.drives {
            if d.health != Health::Unknown {
                h = h.worst(d.health);
            }
        }
        if seen { h } else { Health::Unknown }
    }
}

fn opt<T: Clone>(v: Option<&Option<T>>) -> Option<T> {
    v.and_then(Option::as_ref).cloned()
}

fn name_of<T: fmt::Debug>(v: &T) -> String {
    format!("{v:?}")
}

/// Builds the HTTP client for one endpoint with basic authentication.
pub fn connect(ep: &Endpoint) -> Result<HttpRedfish, RedfishError> {
    connect_hinted(ep, &RetryHint::default())
}

/// As [`connect`], recording the BMC's `Retry-After` answers in `hint`.
pub fn connect_hinted(ep: &Endpoint, hint: &RetryHint) -> Result<HttpRedfish, RedfishError> {
    connect_with(
        ep,
        BmcCredentials::new(ep.username.clone(), ep.password.clone()),
        hint,
    )
}

/// A Redfish session: the client that presents its token, and the session to delete on logout.
pub struct SessionLogin {
    pub client: Arc<HttpRedfish>,
    pub session: nv_redfish::session_service::Session<HttpRedfish>,
}

impl fmt::Debug for SessionLogin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SessionLogin")
            .field("location", &self.session.location())
            .finish_non_exhaustive()
    }
}

/// Logs in through the SessionService (one session per BMC, reused across polls: BMCs have few
/// session slots and leaked sessions lock them out). Errors tell the caller to fall back to basic
/// authentication, except `Unauthorized`, which means the credentials are wrong.
pub async fn login(ep: &Endpoint, hint: &RetryHint) -> Result<SessionLogin, RedfishError> {
    let basic = Arc::new(connect_hinted(ep, hint)?);
    let root = ServiceRoot::new(basic).await.map_err(|e| {
        let (class, message) = describe(&e);
        RedfishError::ServiceRoot { class, message }
    })?;
    let tree = |e: &nv_redfish::Error<HttpRedfish>| {
        let (class, message) = describe(e);
        RedfishError::Tree { class, message }
    };
    let unsupported = || RedfishError::Tree {
        class: FailureClass::NotFound,
        message: "no SessionService".into(),
    };
    let service = root
        .session_service()
        .await
        .map_err(|e| tree(&e))?
        .ok_or_else(unsupported)?;
    let sessions = service
        .sessions()
        .await
        .map_err(|e| tree(&e))?
        .ok_or_else(unsupported)?;
    let create = nv_redfish::schema::session::SessionCreate {
        user_name: ep.username.clone(),
        password: ep.password.clone(),
        oem: None,
        id: None,
        description: None,
        name: None,
        actions: None,
        session_type: None,
        oem_session_type: None,
        client_origin_ip_address: None,
        created_time: None,
        context: None,
        token: None,
        roles: None,
        links: None,
        expiration_time: None,
    };
    let session = sessions
        .create_session(&create)
        .await
        .map_err(|e| tree(&e))?;
    let token = session
        .auth_token()
        .ok_or_else(|| RedfishError::Tree {
            class: FailureClass::Protocol,
            message: "session without X-Auth-Token".into(),
        })?
        .to_owned();
    let client = Arc::new(connect_with(ep, BmcCredentials::token(token), hint)?);
    Ok(SessionLogin { client, session })
}

/// Builds the HTTP client for one endpoint: TLS verified against its CA bundle unless insecure
/// is explicit, per-request timeout, no redirects (nv-redfish must never follow one to another
/// origin with our credentials).
fn connect_with(
    ep: &Endpoint,
    credentials: BmcCredentials,
    hint: &RetryHint,
) -> Result<HttpRedfish, RedfishError> {
    let url = url_of(&ep.address)?;
    let mut builder = reqwest::Client::builder()
        .use_rustls_tls()
        .timeout(ep.timeout)
        .connect_timeout(ep.timeout.min(Duration::from_secs(10)))
        .redirect(reqwest::redirect::Policy::none())
        // Up to four requests at once per BMC (the sections of a poll read in parallel).
        .pool_max_idle_per_host(4)
        .user_agent(concat!("sovereign-agent/", env!("CARGO_PKG_VERSION")));
    if ep.insecure_skip_verify {
        builder = builder.danger_accept_invalid_certs(true);
    } else if let Some(pem) = &ep.ca_bundle_pem {
        let certs = reqwest::Certificate::from_pem_bundle(pem.as_bytes())
            .map_err(|e| RedfishError::CaBundle(e.to_string()))?;
        if certs.is_empty() {
            return Err(RedfishError::CaBundle(
                "no certificate in the bundle".into(),
            ));
        }
        // Only the BMC CA is trusted for this BMC, not the public web PKI.
        builder = builder.tls_built_in_root_certs(false);
        for c in certs {
            builder = builder.add_root_certificate(c);
        }
    }
    let client = builder
        .build()
        .map_err(|e| RedfishError::Client(e.to_string()))?;
    let http = HttpBmc::new(
        Transport::new(client, MAX_BODY_BYTES, hint.clone()),
        url,
        credentials,
        CacheSettings::default(),
    );
    Ok(RulesBmc::new(http, repairs()))
}

fn url_of(address: &str) -> Result<reqwest::Url, RedfishError> {
    let url = reqwest::Url::parse(address)
        .map_err(|e| RedfishError::Address(address.to_owned(), e.to_string()))?;
    if !matches!(url.scheme(), "https" | "http") {
        return Err(RedfishError::Address(
            address.to_owned(),
            "scheme must be https".into(),
        ));
    }
    Ok(url)
}

/// Reads one BMC, using `$expand` when the service root advertises it. Fails only when the
/// service root cannot be read; everything below degrades section by section.
pub async fn collect<B: Bmc + 'static>(bmc: Arc<B>) -> Result<BmcSample, RedfishError> {
    collect_with(bmc, true, false).await
}

/// Like [`collect`]; with `use_expand` false `$expand` is never sent. When a BMC advertises
/// `$expand` but refuses it (iDRAC without a licence, sushy-static), the tree is read again
/// without it and [`BmcSample::expand_refused`] tells the caller to stop asking.
/// `expand_sensors` (for a BMC whose service root advertises `$expand`) reads each chassis'
/// `Sensors` with their readings inline: one request instead of one per sensor.
pub async fn collect_with<B: Bmc + 'static>(
    bmc: Arc<B>,
    use_expand: bool,
    expand_sensors: bool,
) -> Result<BmcSample, RedfishError> {
    let mut root = ServiceRoot::new(bmc.clone()).await.map_err(|e| {
        let (class, message) = describe(&e);
        RedfishError::ServiceRoot { class, message }
    })?;
    if !use_expand {
        root = root.restrict_expand();
    }
    let mut sample = read_tree(&root, &*bmc, use_expand && expand_sensors).await;
    // Never after a 401/403: a second pass is a second failed login per path (lockout risk).
    let refused_login = sample.errors.iter().any(|e| {
        matches!(
            e.class,
            FailureClass::Unauthorized | FailureClass::Forbidden
        )
    });
    if use_expand && !refused_login && sample.errors.iter().any(|e| e.expand) {
        sample = read_tree(&root.restrict_expand(), &*bmc, false).await;
        sample.expand_refused = true;
    }
    // The service root answers without credentials; a BMC where nothing below it could be read
    // (bad credentials, overloaded) has failed.
    if sample.systems.is_empty()
        && sample.chassis.is_empty()
        && let Some(e) = nothing_read(&sample.errors)
    {
        return Err(e);
    }
    Ok(sample)
}

/// The failure of a poll that read nothing: the class of its first error and every section's
/// reason (distinct ones, so ten 401s read as one).
fn nothing_read(errors: &[SectionError]) -> Option<RedfishError> {
    let first = errors.first()?;
    let mut reasons: Vec<String> = Vec::new();
    for e in errors {
        if !reasons.iter().any(|r| r.ends_with(&e.reason)) {
            reasons.push(format!("{}: {}", e.section, e.reason));
        }
    }
    let mut message = reasons.join("; ");
    truncate_reason(&mut message);
    Some(RedfishError::Tree {
        class: first.class,
        message,
    })
}

async fn read_tree<B: Bmc + 'static>(
    root: &ServiceRoot<B>,
    bmc: &B,
    expand_sensors: bool,
) -> BmcSample {
    let mut sample = BmcSample {
        observed_at_unix_ms: now_ms(),
        vendor: root.vendor().map(|v| v.to_string()),
        ..BmcSample::default()
    };
    // The sections are independent: read them at once, so a slow BMC (seconds per request)
    // costs the longest chain of requests, not their sum. At most four requests in flight.
    let mut parts: [BmcSample; 5] = Default::default();
    let [list, sys, chs, slog, mlog] = &mut parts;
    let systems_and_their_logs = async {
        let members = systems::members(root, list).await;
        tokio::join!(
            systems::systems(&members, bmc, sys),
            logs::system_logs(&members, bmc, slog),
        );
    };
    tokio::join!(
        systems_and_their_logs,
        chassis::chassis(root, bmc, chs, expand_sensors),
        logs::manager_logs(root, bmc, mlog),
    );
    for part in parts {
        sample.systems.extend(part.systems);
        sample.chassis.extend(part.chassis);
        sample.drives.extend(part.drives);
        sample.gpus.extend(part.gpus);
        sample.errors.extend(part.errors);
        sample.events.extend(part.events);
    }
    sample
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(0))
}

/// Longest reason kept: reasons end up in Server conditions and Events.
const MAX_REASON: usize = 256;

fn fail(sample: &mut BmcSample, section: impl Into<String>, error: &impl Classified) {
    let class = error.class();
    let mut reason = error.reason();
    truncate_reason(&mut reason);
    sample.errors.push(SectionError {
        section: section.into(),
        class,
        reason,
        // The full text names the URL the BMC refused.
        expand: error.to_string().contains("$expand"),
    });
}

fn truncate_reason(reason: &mut String) {
    if reason.len() > MAX_REASON {
        let cut = (0..=MAX_REASON)
            .rev()
            .find(|&i| reason.is_char_boundary(i))
            .unwrap_or(0);
        reason.truncate(cut);
        reason.push('…');
    }
}

/// The messages of a status' Warning and Critical conditions (e.g. a firmware strap mismatch,
/// a PSU's predicted failure), at most four, one line each.
fn conditions(status: Option<&Status>) -> Vec<String> {
    status
        .and_then(|s| s.conditions.as_ref())
        .and_then(Option::as_ref)
        .into_iter()
        .flatten()
        .filter(|c| !matches!(c.severity, Some(RfHealth::Ok)))
        .filter_map(|c| {
            c.message
                .as_deref()
                .map(one_line)
                .or_else(|| Some(c.message_id.clone()))
        })
        .take(4)
        .collect()
}

/// The Id at the end of a resource URI (`/redfish/v1/Chassis/DGX` → `DGX`).
fn last_segment(uri: &str) -> String {
    uri.trim_end_matches('/')
        .rsplit('/')
        .next()
        .unwrap_or(uri)
        .to_string()
}
