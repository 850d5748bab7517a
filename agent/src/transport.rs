//! The HTTP transport under nv-redfish: its reqwest client, plus two things a collector facing
//! thousands of BMCs needs and it lacks:
//! - a cap on the size of a document (a broken BMC can send gigabytes; at 1,000 BMCs polled
//!   together an uncapped read is an out-of-memory kill of the whole collector);
//! - the `Retry-After` of a 503/429, kept in a [`RetryHint`] so the poller waits as long as the
//!   BMC asked instead of its own shorter backoff.
//!
//! Only `GET` (every read the collector makes) is done here; the other verbs (session login and
//! logout, which are one small request each) go to nv-redfish's own client over the same
//! connection pool.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use nv_redfish::bmc_http::reqwest::{BmcError, Client};
use nv_redfish::bmc_http::{
    BmcCredentials, HttpClient, HttpPushUriUpdateRequest, MultipartUpdateRequest,
};
use nv_redfish::core::{
    BoxTryStream, ModificationResponse, ODataETag, Repair, SessionCreateResponse, StreamEvent,
    UploadReader,
};
use reqwest::Url;
use reqwest::header::{ETAG, HeaderMap, IF_NONE_MATCH, RETRY_AFTER};
use serde::Serialize;
use serde::de::DeserializeOwned;

/// Largest document read from a BMC. The largest in the vendor captures is 0.6 MB (a Lenovo
/// metric report); an expanded event log of a few thousand entries stays well below this.
pub const MAX_BODY_BYTES: usize = 16 << 20;

/// Error pages are kept only this long (they end up in a condition message).
const MAX_ERROR_TEXT: usize = 4 << 10;

/// Longest wait a BMC may ask for; anything longer is treated as this.
pub const MAX_RETRY_AFTER: Duration = Duration::from_hours(1);

/// What the transport learned about one BMC, shared by its clients: the latest `Retry-After`
/// it sent, and the fields dropped to decode its documents since last asked.
#[derive(Clone, Debug, Default)]
pub struct RetryHint {
    retry_after: Arc<Mutex<Option<Duration>>>,
    dropped: Arc<Mutex<Vec<String>>>,
    /// The service root last read advertises `$expand` of subordinate links.
    expands: Arc<std::sync::atomic::AtomicBool>,
    /// A document was read since [`RetryHint::reset_answered`]: the BMC is slow, not dead.
    answered: Arc<std::sync::atomic::AtomicBool>,
}

/// Dropped-field notes kept between two polls (a broken BMC must not grow memory).
const MAX_DROPPED_NOTES: usize = 32;

impl RetryHint {
    /// Whether the BMC's service root (as last read) advertises `$expand` (`NoLinks`).
    pub fn expands(&self) -> bool {
        self.expands.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Whether a document was read since the last [`RetryHint::reset_answered`].
    pub fn answered(&self) -> bool {
        self.answered.load(std::sync::atomic::Ordering::Relaxed)
    }

    pub fn reset_answered(&self) {
        self.answered
            .store(false, std::sync::atomic::Ordering::Relaxed);
    }

    /// Takes the hint, leaving none.
    pub fn take(&self) -> Option<Duration> {
        self.retry_after
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
    }

    fn set(&self, d: Duration) {
        *self
            .retry_after
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(d.min(MAX_RETRY_AFTER));
    }

    /// Takes the notes of fields dropped or filled in to decode this BMC's documents.
    pub fn take_dropped(&self) -> Vec<String> {
        std::mem::take(&mut *self.dropped.lock().unwrap_or_else(PoisonError::into_inner))
    }

    fn note_dropped(&self, note: String) {
        let mut d = self.dropped.lock().unwrap_or_else(PoisonError::into_inner);
        if d.len() < MAX_DROPPED_NOTES && !d.contains(&note) {
            d.push(note);
        }
    }
}

/// Fields one document may lose before it is given up on.
const MAX_LOOSENED: usize = 16;

/// The name a member without `Name` (or `Id`) gets: its other name, else its URI's last segment.
fn filler(object: &serde_json::Map<String, serde_json::Value>, field: &str) -> Option<String> {
    let other = if field == "Name" { "Id" } else { "Name" };
    object
        .get(other)
        .and_then(serde_json::Value::as_str)
        .map(str::to_owned)
        .or_else(|| {
            object
                .get("@odata.id")
                .and_then(serde_json::Value::as_str)
                .and_then(|u| u.trim_end_matches('/').rsplit('/').next())
                .map(str::to_owned)
        })
}

/// The value at `segs` below `value`.
fn walk<'a>(
    value: &'a mut serde_json::Value,
    segs: &[&serde_path_to_error::Segment],
) -> Option<&'a mut serde_json::Value> {
    use serde_path_to_error::Segment;
    let mut cur = value;
    for seg in segs {
        cur = match seg {
            Segment::Map { key } => cur.get_mut(key.as_str())?,
            Segment::Seq { index } => cur.get_mut(*index)?,
            _ => return None,
        };
    }
    Some(cur)
}

/// Makes a document decodable again after `error` at `path`, at the cost of that one field or
/// member: a required `Name`/`Id` missing is filled in from the other (or the URI), a
/// collection without `Members` gets an empty list, anything else that does not decode (a
/// `UUID` that is not one, an unknown enum value, a member of the wrong shape) is removed.
/// Returns what was done, or None when it cannot be (then the section fails as before).
fn loosen(
    value: &mut serde_json::Value,
    path: &serde_path_to_error::Path,
    error: &str,
) -> Option<String> {
    use serde_path_to_error::Segment;
    let segments: Vec<&Segment> = path.iter().collect();
    if let Some(field) = error
        .strip_prefix("missing field `")
        .and_then(|r| r.split('`').next())
    {
        let object = walk(value, &segments)?.as_object_mut()?;
        let fill = match field {
            "Name" | "Id" => serde_json::Value::String(filler(object, field)?),
            "Members" => serde_json::Value::Array(Vec::new()),
            _ => return None,
        };
        object.insert(field.to_owned(), fill);
        let at = if segments.is_empty() {
            String::new()
        } else {
            format!("{path}.")
        };
        return Some(format!("{at}{field} missing, filled in"));
    }
    let (last, parent) = segments.split_last()?;
    match (last, walk(value, parent)?) {
        (Segment::Map { key }, serde_json::Value::Object(o)) => {
            o.remove(key.as_str())?;
        }
        (Segment::Seq { index }, serde_json::Value::Array(a)) if *index < a.len() => {
            a.remove(*index);
        }
        _ => return None,
    }
    Some(format!("{path} dropped: {error}"))
}

/// `Retry-After` as delay-seconds or an HTTP date (RFC 9110 §10.2.3).
fn retry_after(headers: &HeaderMap, now: SystemTime) -> Option<Duration> {
    let v = headers.get(RETRY_AFTER)?.to_str().ok()?.trim();
    if let Ok(secs) = v.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = httpdate::parse_http_date(v).ok()?;
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

/// nv-redfish's client with capped reads and `Retry-After` capture.
#[derive(Clone)]
pub struct Transport {
    http: reqwest::Client,
    inner: Client,
    max_body: usize,
    hint: RetryHint,
}

impl std::fmt::Debug for Transport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Transport")
            .field("max_body", &self.max_body)
            .finish_non_exhaustive()
    }
}

impl Transport {
    /// `http` must not follow redirects (nv-redfish sends tokens in headers).
    pub fn new(http: reqwest::Client, max_body: usize, hint: RetryHint) -> Self {
        Self {
            inner: Client::with_client(http.clone()),
            http,
            max_body,
            hint,
        }
    }
}

fn decode_error(message: String) -> BmcError {
    BmcError::DecodeError(<serde_json::Error as serde::de::Error>::custom(message))
}

/// Reads at most `limit` bytes of body, refusing the response if there are more.
async fn read_capped(mut response: reqwest::Response, limit: usize) -> Result<Vec<u8>, BmcError> {
    let too_large = || decode_error(format!("response body larger than {limit} bytes"));
    if response
        .content_length()
        .is_some_and(|n| n > u64::try_from(limit).unwrap_or(u64::MAX))
    {
        return Err(too_large());
    }
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await? {
        if body.len() + chunk.len() > limit {
            return Err(too_large());
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// The start of an error page, for the message.
async fn error_text(mut response: reqwest::Response) -> String {
    let mut text = Vec::new();
    while let Ok(Some(chunk)) = response.chunk().await {
        let room = MAX_ERROR_TEXT.saturating_sub(text.len());
        text.extend_from_slice(&chunk[..chunk.len().min(room)]);
        if text.len() >= MAX_ERROR_TEXT {
            break;
        }
    }
    String::from_utf8_lossy(&text).into_owned()
}

fn auth(request: reqwest::RequestBuilder, credentials: &BmcCredentials) -> reqwest::RequestBuilder {
    match credentials {
        BmcCredentials::UsernamePassword { username, password } => {
            request.basic_auth(username, password.as_ref())
        }
        BmcCredentials::Token { token } => request.header("X-Auth-Token", token),
        BmcCredentials::Anonymous => request,
    }
}

impl HttpClient for Transport {
    type Error = BmcError;

    async fn get<T>(
        &self,
        url: Url,
        credentials: &BmcCredentials,
        etag: Option<ODataETag>,
        custom_headers: &HeaderMap,
        repair: &impl Repair,
    ) -> Result<T, Self::Error>
    where
        T: DeserializeOwned + Send + Sync,
    {
        let mut request =
            auth(self.http.get(url.clone()), credentials).headers(custom_headers.clone());
        if let Some(etag) = etag {
            request = request.header(IF_NONE_MATCH, etag.to_string());
        }
        let response = request.send().await?;
        let status = response.status();
        if !status.is_success() {
            if let Some(wait) = retry_after(response.headers(), SystemTime::now()) {
                self.hint.set(wait);
            }
            // 304 goes back as an error too: HttpBmc answers it from its cache.
            return Err(BmcError::InvalidResponse {
                url: response.url().clone(),
                status,
                text: error_text(response).await,
            });
        }
        let etag = response
            .headers()
            .get(ETAG)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let body = read_capped(response, self.max_body).await?;
        // A login or error page served with 200 where JSON was expected (Supermicro, proxies).
        if body
            .iter()
            .find(|b| !b.is_ascii_whitespace())
            .is_some_and(|b| *b == b'<')
        {
            return Err(decode_error(
                "the BMC answered an HTML page (a login or error page?) where JSON was expected"
                    .into(),
            ));
        }
        let mut value: serde_json::Value =
            serde_json::from_slice(&body).map_err(BmcError::DecodeError)?;
        drop(body);
        self.hint
            .answered
            .store(true, std::sync::atomic::Ordering::Relaxed);
        repair.repair(&mut value);
        if url.path().trim_end_matches('/') == "/redfish/v1" {
            let advertised = value.pointer("/ProtocolFeaturesSupported/ExpandQuery/NoLinks")
                == Some(&serde_json::Value::Bool(true));
            self.hint
                .expands
                .store(advertised, std::sync::atomic::Ordering::Relaxed);
        }
        // The header's ETag wins over the body's, as in nv-redfish's client (cache revalidation).
        if let (Some(etag), Some(o)) = (etag, value.as_object_mut()) {
            o.insert("@odata.etag".into(), serde_json::Value::String(etag));
        }
        // One bad field costs that field, never the document (and with `$expand`, never the
        // whole collection): loosen and retry, noting each change for the Server's warnings.
        let mut loosened = 0;
        loop {
            match serde_path_to_error::deserialize::<_, T>(&value) {
                Ok(t) => return Ok(t),
                Err(e) => {
                    let note = (loosened < MAX_LOOSENED)
                        .then(|| loosen(&mut value, e.path(), &e.inner().to_string()))
                        .flatten();
                    let Some(note) = note else {
                        return Err(BmcError::JsonError(e));
                    };
                    self.hint.note_dropped(format!("{url}: {note}"));
                    loosened += 1;
                }
            }
        }
    }

    async fn poll<T>(
        &self,
        url: Url,
        credentials: &BmcCredentials,
        custom_headers: &HeaderMap,
    ) -> Result<ModificationResponse<T>, Self::Error>
    where
        T: DeserializeOwned + Send + Sync,
    {
        self.inner.poll(url, credentials, custom_headers).await
    }

    async fn post<B, T>(
        &self,
        url: Url,
        body: &B,
        credentials: &BmcCredentials,
        custom_headers: &HeaderMap,
    ) -> Result<ModificationResponse<T>, Self::Error>
    where
        B: Serialize + Send + Sync,
        T: DeserializeOwned + Send + Sync,
    {
        self.inner
            .post(url, body, credentials, custom_headers)
            .await
    }

    async fn post_session<B, T>(
        &self,
        url: Url,
        body: &B,
        custom_headers: &HeaderMap,
    ) -> Result<SessionCreateResponse<T>, Self::Error>
    where
        B: Serialize + Send + Sync,
        T: DeserializeOwned + Send + Sync,
    {
        self.inner.post_session(url, body, custom_headers).await
    }

    async fn post_multipart_update<U, V, T>(
        &self,
        url: Url,
        request: MultipartUpdateRequest<'_, U, V>,
        credentials: &BmcCredentials,
        custom_headers: &HeaderMap,
    ) -> Result<ModificationResponse<T>, Self::Error>
    where
        U: UploadReader,
        T: DeserializeOwned + Send + Sync,
        V: Serialize + Send + Sync,
    {
        self.inner
            .post_multipart_update(url, request, credentials, custom_headers)
            .await
    }

    async fn post_http_push_uri_update<U, T>(
        &self,
        url: Url,
        request: HttpPushUriUpdateRequest<U>,
        credentials: &BmcCredentials,
        custom_headers: &HeaderMap,
    ) -> Result<ModificationResponse<T>, Self::Error>
    where
        U: UploadReader,
        T: DeserializeOwned + Send + Sync,
    {
        self.inner
            .post_http_push_uri_update(url, request, credentials, custom_headers)
            .await
    }

    async fn patch<B, T>(
        &self,
        url: Url,
        etag: ODataETag,
        body: &B,
        credentials: &BmcCredentials,
        custom_headers: &HeaderMap,
    ) -> Result<ModificationResponse<T>, Self::Error>
    where
        B: Serialize + Send + Sync,
        T: DeserializeOwned + Send + Sync,
    {
        self.inner
            .patch(url, etag, body, credentials, custom_headers)
            .await
    }

    async fn delete<T>(
        &self,
        url: Url,
        credentials: &BmcCredentials,
        custom_headers: &HeaderMap,
    ) -> Result<ModificationResponse<T>, Self::Error>
    where
        T: DeserializeOwned + Send + Sync,
    {
        self.inner.delete(url, credentials, custom_headers).await
    }

    async fn sse<T: Sized + for<'de> serde::Deserialize<'de> + Send>(
        &self,
        url: Url,
        credentials: &BmcCredentials,
        custom_headers: &HeaderMap,
    ) -> Result<BoxTryStream<T, Self::Error>, Self::Error> {
        self.inner.sse(url, credentials, custom_headers).await
    }

    async fn sse_events<T: Sized + for<'de> serde::Deserialize<'de> + Send + 'static>(
        &self,
        url: Url,
        credentials: &BmcCredentials,
        custom_headers: &HeaderMap,
        last_event_id: Option<&str>,
    ) -> Result<BoxTryStream<StreamEvent<T>, Self::Error>, Self::Error> {
        self.inner
            .sse_events(url, credentials, custom_headers, last_event_id)
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::header::HeaderValue;

    fn headers(v: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(RETRY_AFTER, HeaderValue::from_str(v).unwrap());
        h
    }

    #[test]
    fn retry_after_reads_seconds_and_dates() {
        let now = httpdate::parse_http_date("Tue, 24 Nov 2026 01:00:00 GMT").unwrap();
        assert_eq!(
            retry_after(&headers("120"), now),
            Some(Duration::from_mins(2))
        );
        assert_eq!(
            retry_after(&headers("Tue, 24 Nov 2026 01:05:00 GMT"), now),
            Some(Duration::from_mins(5))
        );
        // A date in the past means now.
        assert_eq!(
            retry_after(&headers("Tue, 24 Nov 2026 00:05:00 GMT"), now),
            Some(Duration::ZERO)
        );
        assert_eq!(retry_after(&headers("soon"), now), None);
        assert_eq!(retry_after(&HeaderMap::new(), now), None);
    }

    #[test]
    fn hints_are_capped_and_taken_once() {
        let h = RetryHint::default();
        h.set(Duration::from_hours(48));
        assert_eq!(h.clone().take(), Some(MAX_RETRY_AFTER));
        assert_eq!(h.take(), None);
    }
}
