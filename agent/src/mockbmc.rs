//! A Redfish test server: serves mockup trees (DMTF layout, one `index.json` per URI) on
//! loopback, one listener per simulated BMC, with injectable latency and faults. Used by tests
//! and benchmarks; never bind it to anything but 127.0.0.1 / ::1.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri, header};
use axum::response::Response;
use base64::Engine as _;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

/// What a simulated BMC does wrong.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum Fault {
    #[default]
    None,
    /// Answer every request with this status (401, 403, 404, 500, 503 ...).
    Status(u16),
    /// 503 with `Retry-After: <seconds>`.
    Unavailable { retry_after_seconds: u32 },
    /// Valid status, body that is not JSON.
    MalformedJson,
    /// JSON whose fields have the wrong types (numbers as objects, strings as numbers).
    WrongTypes,
    /// The real document behind this many bytes of leading whitespace (valid JSON, so only a
    /// size cap refuses it), sent with a Content-Length.
    HugeBody(usize),
    /// As `HugeBody`, streamed in chunks without a Content-Length.
    HugeChunked(usize),
    /// HTML error page from a JSON URI (Supermicro-style).
    HtmlPage,
    /// Below the service root, this status with a Redfish error whose `@Message.ExtendedInfo`
    /// carries `message_id` (e.g. `Base.1.8.PasswordChangeRequired`) and `message`.
    Refused {
        status: u16,
        message_id: String,
        message: String,
    },
}

/// One simulated BMC.
#[derive(Clone, Debug)]
pub struct MockBmc {
    /// Folder whose `index.json` is `/redfish/v1`.
    pub tree: PathBuf,
    /// Added to every answer.
    pub latency: Duration,
    pub fault: Fault,
    /// Required basic-auth credentials; None accepts anything.
    pub credentials: Option<(String, String)>,
    /// Counts requests answered (shared across BMCs when the same counter is given).
    pub requests: Arc<AtomicU64>,
    /// SessionService slots; 0 answers session logins with 503 (as BMCs out of slots do).
    pub max_sessions: usize,
    /// Open sessions: token -> session id. Shared so tests can watch for leaks or expire them.
    pub sessions: Arc<Mutex<HashMap<String, u64>>>,
    /// Serve collections this many members a page, with `Members@odata.nextLink` and `$skip`.
    pub page_size: Option<usize>,
    /// Serve collection members as links only, as BMCs without inline members do.
    pub links_only: bool,
    /// Requests per path (query left off), for tests that count attempts.
    pub paths: Arc<Mutex<HashMap<String, u64>>>,
    /// Answer `$expand=.` / `*` (one level) on collections with their members inline, as a
    /// BMC whose service root advertises `ExpandQuery` does; off, the query is ignored.
    pub expand: bool,
}

impl MockBmc {
    pub fn new(tree: impl Into<PathBuf>) -> Self {
        Self {
            tree: tree.into(),
            latency: Duration::ZERO,
            fault: Fault::None,
            credentials: None,
            requests: Arc::new(AtomicU64::new(0)),
            max_sessions: 4,
            sessions: Arc::new(Mutex::new(HashMap::new())),
            page_size: None,
            links_only: false,
            paths: Arc::new(Mutex::new(HashMap::new())),
            expand: false,
        }
    }
}

/// A running BMC: its address and the task serving it (aborted on drop).
#[derive(Debug)]
pub struct Running {
    pub addr: SocketAddr,
    task: JoinHandle<()>,
}

impl Running {
    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Finds the folder that serves `/redfish/v1` inside a mockup (DMTF trees start at the service
/// root, vendor captures keep the `redfish/v1` prefix).
pub fn service_root(tree: &Path) -> PathBuf {
    let prefixed = tree.join("redfish/v1");
    if prefixed.join("index.json").is_file() {
        prefixed
    } else {
        tree.to_owned()
    }
}

/// `../shared/redfish-mockups`, beside this repository.
pub fn mockups() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/redfish-mockups")
}

/// Whether `../shared/redfish-mockups` is there; when not, says the test was skipped (a clone
/// without `../shared`), or under CI (`CI=true`) fails it.
pub fn have_mockups(test: &str) -> bool {
    if mockups().is_dir() {
        return true;
    }
    assert!(
        std::env::var("CI").as_deref() != Ok("true"),
        "{test}: {} is missing (CI=true: required)",
        mockups().display()
    );
    eprintln!(
        "SKIPPED {test}: no Redfish mockups at {} (clone the shared trees beside this repository)",
        mockups().display()
    );
    false
}

/// Every tree there with a service root, as `group/name` (dmtf/*, vendor/*, variants/*), sorted.
pub fn trees() -> Vec<String> {
    let mut out = Vec::new();
    for group in ["dmtf", "vendor", "variants"] {
        let Ok(dir) = std::fs::read_dir(mockups().join(group)) else {
            continue;
        };
        for e in dir.filter_map(Result::ok) {
            if service_root(&e.path()).join("index.json").is_file() {
                out.push(format!("{group}/{}", e.file_name().to_string_lossy()));
            }
        }
    }
    out.sort();
    out
}

/// The endpoint of a simulated BMC at `address`, with the credentials it accepts by default.
pub fn endpoint(address: String) -> crate::redfish::Endpoint {
    crate::redfish::Endpoint {
        address,
        username: "root".into(),
        password: "calvin".into(),
        ca_bundle_pem: None,
        insecure_skip_verify: false,
        timeout: Duration::from_secs(10),
    }
}

fn open_sessions(bmc: &MockBmc) -> std::sync::MutexGuard<'_, HashMap<String, u64>> {
    bmc.sessions
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn authorised(bmc: &MockBmc, headers: &HeaderMap) -> bool {
    if let Some(token) = headers.get("x-auth-token").and_then(|v| v.to_str().ok()) {
        return open_sessions(bmc).contains_key(token);
    }
    let Some((user, pass)) = &bmc.credentials else {
        return true;
    };
    let Some(value) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
    else {
        return false;
    };
    let Some(encoded) = value.strip_prefix("Basic ") else {
        return false;
    };
    base64::engine::general_purpose::STANDARD
        .decode(encoded)
        .is_ok_and(|d| d == format!("{user}:{pass}").as_bytes())
}

fn json(status: StatusCode, body: impl Into<Body>) -> Response {
    let mut r = Response::new(body.into());
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}

/// The SessionService collection every mock BMC answers logins on.
const SESSIONS: &str = "/redfish/v1/SessionService/Sessions";

async fn handle(
    State(bmc): State<Arc<MockBmc>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    bmc.requests.fetch_add(1, Ordering::Relaxed);
    *bmc.paths
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .entry(uri.path().to_owned())
        .or_default() += 1;
    if std::env::var_os("SOVEREIGN_MOCKBMC_LOG").is_some() {
        eprintln!("mockbmc: {method} {uri}");
    }
    if !bmc.latency.is_zero() {
        tokio::time::sleep(bmc.latency).await;
    }
    if method == Method::POST
        && uri.path().trim_end_matches('/') == SESSIONS
        && bmc.fault == Fault::None
    {
        return create_session(&bmc, &body);
    }
    if method == Method::DELETE
        && let Some(id) = uri
            .path()
            .strip_prefix(SESSIONS)
            .and_then(|r| r.trim_matches('/').parse::<u64>().ok())
    {
        let mut open = open_sessions(&bmc);
        let before = open.len();
        open.retain(|_, v| *v != id);
        let status = if open.len() < before {
            StatusCode::NO_CONTENT
        } else {
            StatusCode::NOT_FOUND
        };
        return json(status, "");
    }
    // As on real BMCs, the service root answers without credentials.
    let open_path = matches!(uri.path().trim_end_matches('/'), "/redfish" | "/redfish/v1");
    if !open_path && !authorised(&bmc, &headers) {
        let mut r = json(
            StatusCode::UNAUTHORIZED,
            r#"{"error":{"code":"Base.1.0.NoValidSession"}}"#,
        );
        r.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Basic realm=\"mockbmc\""),
        );
        return r;
    }
    match &bmc.fault {
        Fault::Status(code) => {
            let status = StatusCode::from_u16(*code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            return json(status, r#"{"error":{"code":"Base.1.0.GeneralError"}}"#);
        }
        Fault::Unavailable {
            retry_after_seconds,
        } => {
            let mut r = json(
                StatusCode::SERVICE_UNAVAILABLE,
                r#"{"error":{"code":"Base.1.0.ServiceTemporarilyUnavailable"}}"#,
            );
            if let Ok(v) = HeaderValue::from_str(&retry_after_seconds.to_string()) {
                r.headers_mut().insert(header::RETRY_AFTER, v);
            }
            return r;
        }
        Fault::MalformedJson => {
            return json(
                StatusCode::OK,
                "{\"@odata.id\": \"/redfish/v1\", \"Name\": ",
            );
        }
        Fault::HtmlPage => {
            let mut r = Response::new(Body::from("<html><body>504 Gateway Time-out</body></html>"));
            r.headers_mut()
                .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/html"));
            return r;
        }
        Fault::Refused {
            status,
            message_id,
            message,
        } if uri.path().trim_end_matches('/') != "/redfish/v1" => {
            let status = StatusCode::from_u16(*status).unwrap_or(StatusCode::FORBIDDEN);
            let body = serde_json::json!({"error": {"code": message_id, "message": "See ExtendedInfo",
                "@Message.ExtendedInfo": [{"MessageId": message_id, "Message": message, "Severity": "Critical"}]}});
            return json(status, body.to_string());
        }
        Fault::Refused { .. }
        | Fault::WrongTypes
        | Fault::None
        | Fault::HugeBody(_)
        | Fault::HugeChunked(_) => {}
    }
    if method != Method::GET {
        return json(StatusCode::METHOD_NOT_ALLOWED, "{}");
    }
    let path = uri.path().trim_end_matches('/');
    let Some(rest) = path
        .strip_prefix("/redfish/v1")
        .map(|r| r.trim_start_matches('/'))
    else {
        return json(StatusCode::NOT_FOUND, "{}");
    };
    if rest.split('/').any(|seg| seg == ".." || seg.contains('\\')) {
        return json(StatusCode::BAD_REQUEST, "{}");
    }
    let file = service_root(&bmc.tree).join(rest).join("index.json");
    match tokio::fs::read(&file).await {
        Ok(body) if bmc.fault == Fault::WrongTypes => json(StatusCode::OK, wrong_types(&body)),
        Ok(body) => match bmc.fault {
            Fault::HugeBody(n) => {
                let mut padded = vec![b' '; n];
                padded.extend_from_slice(&body);
                json(StatusCode::OK, padded)
            }
            Fault::HugeChunked(n) => {
                let chunks =
                    std::iter::repeat_n(bytes::Bytes::from(vec![b' '; 64 << 10]), n / (64 << 10))
                        .chain(std::iter::once(bytes::Bytes::from(body)))
                        .map(Ok::<_, std::convert::Infallible>);
                let mut r = Response::new(Body::from_stream(tokio_stream::iter(chunks)));
                r.headers_mut().insert(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("application/json"),
                );
                r
            }
            _ if bmc.expand && wants_expand(&uri) => {
                json(StatusCode::OK, expand_members(&bmc, body).await)
            }
            _ => json(StatusCode::OK, shape_collection(&bmc, &uri, body)),
        },
        Err(_) => json(
            StatusCode::NOT_FOUND,
            r#"{"error":{"code":"Base.1.0.ResourceMissingAtURI"}}"#,
        ),
    }
}

/// `$expand` of one level on subordinate links (`.`, `*`; `$levels` above 1 served as 1).
fn wants_expand(uri: &Uri) -> bool {
    uri.query().is_some_and(|q| {
        q.split('&').any(|p| {
            let p = p.replace("%24", "$");
            p.strip_prefix("$expand=")
                .is_some_and(|e| e.starts_with('.') || e.starts_with('*'))
        })
    })
}

/// A collection with each member's document inline (members the tree lacks stay links).
async fn expand_members(bmc: &MockBmc, body: Vec<u8>) -> Vec<u8> {
    let Ok(mut doc) = serde_json::from_slice::<serde_json::Value>(&body) else {
        return body;
    };
    let Some(members) = doc.get_mut("Members").and_then(|m| m.as_array_mut()) else {
        return body;
    };
    let root = service_root(&bmc.tree);
    for m in members.iter_mut() {
        let Some(rest) = m
            .get("@odata.id")
            .and_then(|v| v.as_str())
            .and_then(|id| id.trim_end_matches('/').strip_prefix("/redfish/v1/"))
        else {
            continue;
        };
        if rest.split('/').any(|seg| seg == ".." || seg.contains('\\')) {
            continue;
        }
        if let Ok(member) = tokio::fs::read(root.join(rest).join("index.json")).await
            && let Ok(v) = serde_json::from_slice::<serde_json::Value>(&member)
        {
            *m = v;
        }
    }
    serde_json::to_vec(&doc).unwrap_or(body)
}

/// Pages a collection and/or strips its members to links, as configured.
fn shape_collection(bmc: &MockBmc, uri: &Uri, body: Vec<u8>) -> Vec<u8> {
    if bmc.page_size.is_none() && !bmc.links_only {
        return body;
    }
    let Ok(mut doc) = serde_json::from_slice::<serde_json::Value>(&body) else {
        return body;
    };
    let Some(members) = doc.get_mut("Members").and_then(|m| m.as_array_mut()) else {
        return body;
    };
    if bmc.links_only {
        for m in members.iter_mut() {
            *m = serde_json::json!({"@odata.id": m.get("@odata.id").cloned().unwrap_or_default()});
        }
    }
    if let Some(size) = bmc.page_size.filter(|s| *s > 0) {
        let skip: usize = uri
            .query()
            .and_then(|q| q.split('&').find_map(|p| p.strip_prefix("$skip=")))
            .and_then(|n| n.parse().ok())
            .unwrap_or(0);
        let total = members.len();
        let page: Vec<serde_json::Value> = members.iter().skip(skip).take(size).cloned().collect();
        *members = page;
        if skip + size < total {
            doc["Members@odata.nextLink"] =
                serde_json::json!(format!("{}?$skip={}", uri.path(), skip + size));
        }
    }
    serde_json::to_vec(&doc).unwrap_or(body)
}

/// Turns numbers into objects and strings into numbers, keeping `@odata` links intact.
fn wrong_types(body: &[u8]) -> Vec<u8> {
    fn mangle(v: &mut serde_json::Value) {
        match v {
            serde_json::Value::Object(m) => {
                for (k, x) in m.iter_mut() {
                    if k.starts_with('@') || k == "Members" {
                        continue;
                    }
                    match x {
                        serde_json::Value::Number(_) => {
                            *x = serde_json::json!({"unexpected": true});
                        }
                        serde_json::Value::String(_) => *x = serde_json::json!(42),
                        _ => mangle(x),
                    }
                }
            }
            serde_json::Value::Array(a) => a.iter_mut().for_each(mangle),
            _ => {}
        }
    }
    match serde_json::from_slice::<serde_json::Value>(body) {
        Ok(mut v) => {
            mangle(&mut v);
            serde_json::to_vec(&v).unwrap_or_default()
        }
        Err(_) => body.to_vec(),
    }
}

fn create_session(bmc: &MockBmc, body: &[u8]) -> Response {
    let login: serde_json::Value = serde_json::from_slice(body).unwrap_or_default();
    let (user, pass) = (
        login["UserName"].as_str().unwrap_or_default(),
        login["Password"].as_str().unwrap_or_default(),
    );
    if bmc
        .credentials
        .as_ref()
        .is_some_and(|(u, p)| u != user || p != pass)
    {
        return json(
            StatusCode::UNAUTHORIZED,
            r#"{"error":{"code":"Base.1.0.NoValidSession"}}"#,
        );
    }
    let mut open = open_sessions(bmc);
    if open.len() >= bmc.max_sessions {
        return json(
            StatusCode::SERVICE_UNAVAILABLE,
            r#"{"error":{"code":"Base.1.0.SessionLimitExceeded"}}"#,
        );
    }
    let id = open.values().max().map_or(1, |m| m + 1);
    let token = format!("mock-token-{id}-{}", bmc.requests.load(Ordering::Relaxed));
    open.insert(token.clone(), id);
    let location = format!("/redfish/v1/SessionService/Sessions/{id}");
    let doc = serde_json::json!({
        "@odata.id": location, "@odata.type": "#Session.v1_0_0.Session",
        "Id": id.to_string(), "Name": "User Session", "UserName": user
    });
    let mut r = json(StatusCode::CREATED, doc.to_string());
    if let (Ok(t), Ok(l)) = (
        HeaderValue::from_str(&token),
        HeaderValue::from_str(&location),
    ) {
        r.headers_mut().insert("x-auth-token", t);
        r.headers_mut().insert(header::LOCATION, l);
    }
    r
}

/// The simulated BMC as a service, for callers that serve it themselves (the `mock-bmc`
/// example serves it over TLS for the demo).
pub fn app(bmc: MockBmc) -> Router {
    Router::new().fallback(handle).with_state(Arc::new(bmc))
}

/// Starts one simulated BMC on an ephemeral loopback port.
pub async fn start(bmc: MockBmc) -> std::io::Result<Running> {
    let listener = TcpListener::bind(("127.0.0.1", 0)).await?;
    let addr = listener.local_addr()?;
    let app = app(bmc);
    let task = tokio::spawn(async move {
        // A serve error ends this simulated BMC only; tests see it as connection refused.
        let _ = axum::serve(listener, app).await;
    });
    Ok(Running { addr, task })
}
