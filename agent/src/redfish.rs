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
use nv_redfish::quirks::{Match, RulesBmc, UserRule};
use nv_redfish::schema::resource::{Health as RfHealth, Status};
use serde::Serialize;
use serde_json::{Value, json};
use thiserror::Error;

use crate::transport::{MAX_BODY_BYTES, RetryHint, Transport};

/// The BMC HTTP client used in production: nv-redfish's HTTP transport under our repairs.
pub type HttpRedfish = RulesBmc<HttpBmc<Transport>>;

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
];

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

/// Why a BMC could not be read at all.
#[derive(Debug, Error)]
pub enum RedfishError {
    #[error("invalid BMC address {0:?}: {1}")]
    Address(String, String),
    #[error("CA bundle is not a valid PEM certificate bundle: {0}")]
    CaBundle(String),
    #[error("building the HTTP client: {0}")]
    Client(String),
    /// The BMC's configuration is unusable (bad address or CA, missing credentials Secret).
    #[error("{0}")]
    Unconfigured(String),
    #[error("reading the Redfish service root ({class}): {message}")]
    ServiceRoot {
        class: FailureClass,
        message: String,
    },
    #[error("nothing readable below the service root ({class}): {message}")]
    Tree {
        class: FailureClass,
        message: String,
    },
}

impl RedfishError {
    /// What kind of failure this is, for backoff and for the Server's condition reason.
    pub fn class(&self) -> FailureClass {
        match self {
            RedfishError::Address(..)
            | RedfishError::CaBundle(_)
            | RedfishError::Client(_)
            | RedfishError::Unconfigured(_) => FailureClass::Config,
            RedfishError::ServiceRoot { class, .. } | RedfishError::Tree { class, .. } => *class,
        }
    }
}

/// Kinds of BMC failure; each maps to a condition reason (`BmcUnauthorized`, ...).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
pub enum FailureClass {
    /// 401: wrong credentials. Never retried quickly (BMCs lock accounts out).
    Unauthorized,
    /// 403: the account lacks the privilege.
    Forbidden,
    /// 404 on the service root: not a Redfish service.
    NotFound,
    /// 503 or 429: overloaded, come back later.
    Unavailable,
    /// Other 5xx.
    ServerError,
    /// Answered, but not with a Redfish document we can read (HTML, malformed JSON, wrong types).
    Protocol,
    /// No usable answer: refused, reset, TLS failure, timeout.
    Transport,
    /// The poll took longer than its deadline.
    Timeout,
    /// Our side: bad address, bad CA bundle.
    Config,
}

impl fmt::Display for FailureClass {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            FailureClass::Unauthorized => "BmcUnauthorized",
            FailureClass::Forbidden => "BmcForbidden",
            FailureClass::NotFound => "BmcNotRedfish",
            FailureClass::Unavailable => "BmcUnavailable",
            FailureClass::ServerError => "BmcServerError",
            FailureClass::Protocol => "BmcProtocolError",
            FailureClass::Transport => "BmcUnreachable",
            FailureClass::Timeout => "BmcTimeout",
            FailureClass::Config => "BmcConfigInvalid",
        })
    }
}

fn classify<B: Bmc>(e: &nv_redfish::Error<B>) -> FailureClass {
    match e {
        nv_redfish::Error::Bmc(b) => classify_bmc(b),
        _ => FailureClass::Protocol,
    }
}

fn classify_bmc<E: nv_redfish::core::BmcError>(b: &E) -> FailureClass {
    use nv_redfish::core::BmcErrorClass;
    match b.error_class() {
        BmcErrorClass::HttpResponse { status: 401 } => FailureClass::Unauthorized,
        BmcErrorClass::HttpResponse { status: 403 } => FailureClass::Forbidden,
        BmcErrorClass::HttpResponse { status: 404 } => FailureClass::NotFound,
        BmcErrorClass::HttpResponse { status: 429 | 503 } => FailureClass::Unavailable,
        BmcErrorClass::HttpResponse { status } if status >= 500 => FailureClass::ServerError,
        BmcErrorClass::HttpResponse { .. } | BmcErrorClass::ResponseParse => FailureClass::Protocol,
        BmcErrorClass::Transport => FailureClass::Transport,
        // Other, and classes added by future nv-redfish releases.
        _ => {
            if b.to_string().contains("Decode") {
                FailureClass::Protocol
            } else {
                FailureClass::Transport
            }
        }
    }
}

/// Errors a section can fail with: nv-redfish's, or the transport's from a navigation read.
trait Classified: fmt::Display {
    fn class(&self) -> FailureClass;
}

impl<B: Bmc> Classified for nv_redfish::Error<B> {
    fn class(&self) -> FailureClass {
        classify(self)
    }
}

/// A transport error read through a navigation property.
struct Nav<'a, E>(&'a E);

impl<E: fmt::Display> fmt::Display for Nav<'_, E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl<E: nv_redfish::core::BmcError> Classified for Nav<'_, E> {
    fn class(&self) -> FailureClass {
        classify_bmc(self.0)
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
}

/// A component with a health (PSU, fan).
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Component {
    pub name: String,
    pub health: Health,
}

/// One chassis.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ChassisSample {
    pub id: String,
    pub health: Health,
    pub health_rollup: Health,
    /// `PhysicalSecurity.IntrusionSensor` when the chassis reports it.
    pub intrusion: Option<String>,
    pub inlet_celsius: Option<f64>,
    pub cpu_max_celsius: Option<f64>,
    pub consumed_watts: Option<f64>,
    pub temperatures: Vec<Reading>,
    pub fans: Vec<Reading>,
    pub power_supplies: Vec<Component>,
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
    pub errors: Vec<SectionError>,
    /// The BMC advertises `$expand` but refused it; poll it without.
    pub expand_refused: bool,
    /// System event log entries (all this poll read; the poller keeps only new ones).
    pub events: Vec<LogEvent>,
}

impl BmcSample {
    /// Worst health over systems, chassis and drives, plus intrusion (Critical).
    pub fn overall_health(&self) -> Health {
        let mut h = Health::Ok;
        let mut seen = false;
        for s in &self.systems {
            h = h.worst(s.health.worst(s.health_rollup));
            seen = true;
        }
        for c in &self.chassis {
            h = h.worst(c.health);
            if c.intrusion.as_deref().is_some_and(|i| i != "Normal") {
                h = Health::Critical;
            }
            seen = true;
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
    let root = ServiceRoot::new(basic)
        .await
        .map_err(|e| RedfishError::ServiceRoot {
            class: classify(&e),
            message: e.to_string(),
        })?;
    let tree = |e: &nv_redfish::Error<HttpRedfish>| RedfishError::Tree {
        class: classify(e),
        message: e.to_string(),
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
    collect_with(bmc, true).await
}

/// Like [`collect`]; with `use_expand` false `$expand` is never sent. When a BMC advertises
/// `$expand` but refuses it (iDRAC without a licence, sushy-static), the tree is read again
/// without it and [`BmcSample::expand_refused`] tells the caller to stop asking.
pub async fn collect_with<B: Bmc + 'static>(
    bmc: Arc<B>,
    use_expand: bool,
) -> Result<BmcSample, RedfishError> {
    let mut root = ServiceRoot::new(bmc.clone())
        .await
        .map_err(|e| RedfishError::ServiceRoot {
            class: classify(&e),
            message: e.to_string(),
        })?;
    if !use_expand {
        root = root.restrict_expand();
    }
    let mut sample = read_tree(&root, &*bmc).await;
    if use_expand && sample.errors.iter().any(|e| e.reason.contains("$expand")) {
        sample = read_tree(&root.restrict_expand(), &*bmc).await;
        sample.expand_refused = true;
    }
    // The service root answers without credentials; a BMC where nothing below it could be read
    // (bad credentials, overloaded) has failed, with the class of its first error.
    if sample.systems.is_empty()
        && sample.chassis.is_empty()
        && let Some(first) = sample.errors.first()
    {
        return Err(RedfishError::Tree {
            class: first.class,
            message: format!("{}: {}", first.section, first.reason),
        });
    }
    Ok(sample)
}

async fn read_tree<B: Bmc + 'static>(root: &ServiceRoot<B>, bmc: &B) -> BmcSample {
    let mut sample = BmcSample {
        observed_at_unix_ms: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(0)),
        vendor: root.vendor().map(|v| v.to_string()),
        ..BmcSample::default()
    };
    // The sections are independent: read them at once, so a slow BMC (seconds per request)
    // costs the longest chain of requests, not their sum. At most four requests in flight.
    let mut parts: [BmcSample; 4] = Default::default();
    let [sys, chs, slog, mlog] = &mut parts;
    tokio::join!(
        systems(root, sys),
        chassis(root, bmc, chs),
        system_logs(root, bmc, slog),
        manager_logs(root, bmc, mlog),
    );
    for part in parts {
        sample.systems.extend(part.systems);
        sample.chassis.extend(part.chassis);
        sample.drives.extend(part.drives);
        sample.errors.extend(part.errors);
        sample.events.extend(part.events);
    }
    sample
}

/// Whether a log service holds hardware events (SEL and its vendor names).
fn is_event_log(id: &str, entry_type: Option<&str>) -> bool {
    entry_type == Some("Sel")
        || matches!(
            id.to_ascii_lowercase().as_str(),
            "sel" | "log" | "log1" | "iml" | "event"
        )
}

/// One page of a log's entries: members inline (most BMCs) or as links, and the next page.
#[derive(serde::Deserialize)]
struct EntriesPage {
    #[serde(rename = "@odata.id")]
    id: nv_redfish::core::ODataId,
    #[serde(rename = "Members", default)]
    members: Vec<Value>,
    #[serde(rename = "Members@odata.nextLink", default)]
    next: Option<String>,
}

impl nv_redfish::core::EntityTypeRef for EntriesPage {
    fn odata_id(&self) -> &nv_redfish::core::ODataId {
        &self.id
    }

    fn etag(&self) -> Option<&nv_redfish::core::ODataETag> {
        None
    }
}

/// Pages of entries read per log and poll: BMCs page at 50 (iDRAC) to 1,000 (bmcweb), oldest or
/// newest first, so the new entries can be on any page; bounded so a huge log cannot eat the
/// poll's deadline.
const MAX_PAGES: usize = 8;
/// Entries fetched one by one per log and poll when a BMC lists links only.
const MAX_LINKED: usize = 32;

/// Sort key putting newer entries last: creation time, then numeric Id.
fn age_key(e: &nv_redfish::schema::log_entry::LogEntry) -> (String, u64, String) {
    (
        e.created
            .as_ref()
            .map(ToString::to_string)
            .unwrap_or_default(),
        e.id.parse().unwrap_or(0),
        e.id.clone(),
    )
}

/// Reads a log's entries across pages: inline members parsed, link-only members fetched
/// (the newest [`MAX_LINKED`] by Id). Returns the entries and the errors met on the way.
async fn read_entries<B: Bmc + 'static>(
    bmc: &B,
    first: nv_redfish::core::ODataId,
) -> (
    Vec<Arc<nv_redfish::schema::log_entry::LogEntry>>,
    Vec<(String, B::Error)>,
) {
    use nv_redfish::schema::log_entry::LogEntry;
    let mut entries = Vec::new();
    let mut links: Vec<String> = Vec::new();
    let mut errors = Vec::new();
    let mut next = Some(first);
    for _ in 0..MAX_PAGES {
        let Some(page_id) = next.take() else { break };
        let page = match bmc.get::<EntriesPage>(&page_id).await {
            Ok(p) => p,
            Err(e) => {
                errors.push(("Entries".to_owned(), e));
                break;
            }
        };
        for m in &page.members {
            if m.get("Id").is_some() {
                if let Ok(e) = serde_json::from_value::<LogEntry>(m.clone()) {
                    entries.push(Arc::new(e));
                }
            } else if let Some(link) = m.get("@odata.id").and_then(Value::as_str) {
                links.push(link.to_owned());
            }
        }
        next = page
            .next
            .clone()
            .filter(|n| *n != page_id.to_string())
            .map(nv_redfish::core::ODataId::from);
    }
    let last_number = |l: &String| -> u64 {
        l.rsplit('/')
            .next()
            .and_then(|id| id.parse().ok())
            .unwrap_or(0)
    };
    links.sort_by_key(last_number);
    let skip = links.len().saturating_sub(MAX_LINKED);
    for link in links.into_iter().skip(skip) {
        match bmc
            .get::<LogEntry>(&nv_redfish::core::ODataId::from(link))
            .await
        {
            Ok(e) => entries.push(e),
            Err(e) => errors.push(("Entries/member".to_owned(), e)),
        }
    }
    entries.sort_by_cached_key(|e| age_key(e));
    (entries, errors)
}

async fn read_log<B: Bmc + 'static>(
    owner: &str,
    bmc: &B,
    log: &nv_redfish::log_service::LogService<B>,
    sample: &mut BmcSample,
) {
    use nv_redfish::core::EntityTypeRef as _;
    let raw = log.raw();
    let entry_type = raw
        .log_entry_type
        .as_ref()
        .and_then(Option::as_ref)
        .map(name_of);
    if !is_event_log(&raw.id, entry_type.as_deref()) {
        return;
    }
    let name = format!("{owner}/{}", raw.id);
    let Some(entries_ref) = &raw.entries else {
        return;
    };
    let (entries, errors) = read_entries(bmc, entries_ref.odata_id().clone()).await;
    for (section, e) in &errors {
        fail(sample, format!("{name}/{section}"), &Nav(e));
    }
    let skip = entries.len().saturating_sub(MAX_EVENTS_PER_LOG);
    for e in entries.iter().skip(skip) {
        sample.events.push(LogEvent {
            log: name.clone(),
            id: e.id.clone(),
            created: e.created.as_ref().map(ToString::to_string),
            severity: e.severity.as_ref().and_then(Option::as_ref).map(name_of),
            message: opt(e.message.as_ref()),
            message_id: e.message_id.clone(),
        });
    }
}

/// System event logs under Systems.
async fn system_logs<B: Bmc + 'static>(root: &ServiceRoot<B>, bmc: &B, sample: &mut BmcSample) {
    if let Ok(Some(systems)) = root.systems().await
        && let Ok(members) = systems.members().await
    {
        for system in members {
            let owner = format!("Systems/{}", system.raw().id);
            match system.log_services().await {
                Ok(logs) => {
                    for log in logs.unwrap_or_default() {
                        read_log(&owner, bmc, &log, sample).await;
                    }
                }
                Err(e) => fail(sample, format!("{owner}/LogServices"), &e),
            }
        }
    }
}

/// System event logs under Managers (iDRAC, iLO and bmcweb keep the SEL there).
async fn manager_logs<B: Bmc + 'static>(root: &ServiceRoot<B>, bmc: &B, sample: &mut BmcSample) {
    match root.managers().await {
        Ok(Some(managers)) => match managers.members().await {
            Ok(members) => {
                for manager in members {
                    let owner = format!("Managers/{}", manager.raw().id);
                    match manager.log_services().await {
                        Ok(logs) => {
                            for log in logs.unwrap_or_default() {
                                read_log(&owner, bmc, &log, sample).await;
                            }
                        }
                        Err(e) => fail(sample, format!("{owner}/LogServices"), &e),
                    }
                }
            }
            Err(e) => fail(sample, "Managers", &e),
        },
        Ok(None) => {}
        Err(e) => fail(sample, "Managers", &e),
    }
}

/// Longest reason kept: reasons end up in Server conditions and Events.
const MAX_REASON: usize = 256;

fn fail(sample: &mut BmcSample, section: impl Into<String>, error: &impl Classified) {
    let class = error.class();
    let mut reason = error.to_string();
    if reason.len() > MAX_REASON {
        let cut = (0..=MAX_REASON)
            .rev()
            .find(|&i| reason.is_char_boundary(i))
            .unwrap_or(0);
        reason.truncate(cut);
        reason.push('…');
    }
    sample.errors.push(SectionError {
        section: section.into(),
        class,
        reason,
    });
}

async fn systems<B: Bmc + 'static>(root: &ServiceRoot<B>, sample: &mut BmcSample) {
    let members = match root.systems().await {
        Ok(Some(c)) => match c.members().await {
            Ok(m) => m,
            Err(e) => return fail(sample, "Systems", &e),
        },
        Ok(None) => return,
        Err(e) => return fail(sample, "Systems", &e),
    };
    for system in members {
        let raw = system.raw();
        let (health, health_rollup) = Health::of(raw.status.as_ref());
        let ps = raw.processor_summary.as_ref();
        sample.systems.push(SystemSample {
            id: raw.id.clone(),
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
        });
        let section = format!("Systems/{}/Storage", raw.id);
        let storages = match system.storage_controllers().await {
            Ok(s) => s.unwrap_or_default(),
            Err(e) => {
                fail(sample, section, &e);
                continue;
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
    }
}

fn is_inlet(name: &str, context: Option<&str>) -> bool {
    let n = name.to_ascii_lowercase();
    matches!(context, Some("Intake")) || n.contains("inlet") || n.contains("intake")
}

fn is_cpu(name: &str, context: Option<&str>) -> bool {
    matches!(context, Some("CPU")) || name.to_ascii_lowercase().contains("cpu")
}

async fn chassis<B: Bmc + 'static>(root: &ServiceRoot<B>, bmc: &B, sample: &mut BmcSample) {
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
