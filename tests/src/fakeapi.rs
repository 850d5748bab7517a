//! A fake Kubernetes API on loopback for controller and agent tests (testing ladder step 3):
//! collections that list at once and watch quietly, single objects, POST handlers, and a count
//! of requests per path so tests can check how often the API is asked.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::RawQuery;
use axum::http::{StatusCode, Uri, header};
use axum::response::Response;
use serde_json::{Value, json};

type Handler = Arc<dyn Fn(&Value) -> Value + Send + Sync>;

#[derive(Clone, Default)]
struct State {
    lists: HashMap<String, Value>,
    objects: HashMap<String, Value>,
    posts: HashMap<String, Handler>,
    hits: Arc<Mutex<HashMap<String, usize>>>,
}

/// Builder and handle of the fake API server.
#[derive(Clone, Default)]
pub struct FakeApi {
    state: State,
}

impl std::fmt::Debug for FakeApi {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FakeApi").finish_non_exhaustive()
    }
}

fn json_response(status: StatusCode, body: Body) -> Response {
    let mut r = Response::new(body);
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    r
}

fn not_found(path: &str) -> Response {
    let status = json!({
        "kind": "Status", "apiVersion": "v1", "status": "Failure",
        "reason": "NotFound", "code": 404, "message": format!("{path} not found"),
    });
    json_response(StatusCode::NOT_FOUND, Body::from(status.to_string()))
}

impl FakeApi {
    pub fn new() -> Self {
        Self::default()
    }

    /// `GET path` lists `items` (of `kind`); `GET path?watch=true` stays open without events.
    #[must_use]
    pub fn collection(mut self, path: &str, api_version: &str, kind: &str, items: &Value) -> Self {
        let list = json!({
            "apiVersion": api_version,
            "kind": format!("{kind}List"),
            "metadata": {"resourceVersion": "1"},
            "items": items,
        });
        self.state.lists.insert(path.to_owned(), list);
        self
    }

    /// `GET path` answers `object`.
    #[must_use]
    pub fn object(mut self, path: &str, object: Value) -> Self {
        self.state.objects.insert(path.to_owned(), object);
        self
    }

    /// `POST path` answers `handler(body)`.
    #[must_use]
    pub fn post(
        mut self,
        path: &str,
        handler: impl Fn(&Value) -> Value + Send + Sync + 'static,
    ) -> Self {
        self.state.posts.insert(path.to_owned(), Arc::new(handler));
        self
    }

    /// Requests seen for `path` (any method, watches included).
    pub fn hits(&self, path: &str) -> usize {
        self.state
            .hits
            .lock()
            .map_or(0, |h| h.get(path).copied().unwrap_or(0))
    }

    /// Serves on 127.0.0.1 until the runtime ends; returns the address.
    pub async fn start(&self) -> std::io::Result<SocketAddr> {
        let state = self.state.clone();
        let app = Router::new().fallback(
            move |method: axum::http::Method, uri: Uri, RawQuery(q): RawQuery, body: Bytes| {
                let state = state.clone();
                async move {
                    let path = uri.path().to_owned();
                    if let Ok(mut h) = state.hits.lock() {
                        *h.entry(path.clone()).or_default() += 1;
                    }
                    if method == axum::http::Method::POST {
                        let Some(handler) = state.posts.get(&path) else {
                            return not_found(&path);
                        };
                        let input = serde_json::from_slice(&body).unwrap_or(Value::Null);
                        return json_response(
                            StatusCode::CREATED,
                            Body::from(handler(&input).to_string()),
                        );
                    }
                    if let Some(list) = state.lists.get(&path) {
                        let watching = q.is_some_and(|q| {
                            q.split('&').any(|p| p == "watch=true" || p == "watch=1")
                        });
                        let body = if watching {
                            Body::from_stream(futures::stream::pending::<
                                Result<Bytes, std::io::Error>,
                            >())
                        } else {
                            Body::from(list.to_string())
                        };
                        return json_response(StatusCode::OK, body);
                    }
                    match state.objects.get(&path) {
                        Some(o) => json_response(StatusCode::OK, Body::from(o.to_string())),
                        None => not_found(&path),
                    }
                }
            },
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        tokio::spawn(async move { axum::serve(listener, app).await });
        Ok(addr)
    }

    /// A kube client for the fake API at `addr`.
    pub fn client(addr: SocketAddr) -> Result<kube::Client, kube::Error> {
        let url = format!("http://{addr}")
            .parse()
            .map_err(|e: axum::http::uri::InvalidUri| kube::Error::Service(Box::new(e)))?;
        kube::Client::try_from(kube::Config::new(url))
    }
}
