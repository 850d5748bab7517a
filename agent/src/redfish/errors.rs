//! Why a BMC could not be read, in classes an operator can act on and one-line reasons: HTTP
//! status, TLS, timeouts, HTML where JSON was expected, Redfish `@Message.ExtendedInfo`.

use std::fmt;

use nv_redfish::core::Bmc;
use serde::Serialize;
use thiserror::Error;

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
    /// No usable answer: refused, reset, unreachable.
    Transport,
    /// The TLS handshake failed: untrusted, expired or misnamed certificate, no common cipher.
    Tls,
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
            FailureClass::Tls => "BmcTlsError",
            FailureClass::Timeout => "BmcTimeout",
            FailureClass::Config => "BmcConfigInvalid",
        })
    }
}

pub(super) fn classify<B: Bmc>(e: &nv_redfish::Error<B>) -> FailureClass {
    describe(e).0
}

/// Class and a one-line reason a person can act on, for any nv-redfish error.
pub(super) fn describe<B: Bmc>(e: &nv_redfish::Error<B>) -> (FailureClass, String) {
    match e {
        nv_redfish::Error::Bmc(b) => describe_bmc(b),
        other => (FailureClass::Protocol, one_line(&other.to_string())),
    }
}

/// What the BMC said when it refused: `@Message.ExtendedInfo` messages (e.g.
/// `PasswordChangeRequired`), an HTML page named as such, or the start of the text.
pub fn error_body_summary(body: &str) -> String {
    let trimmed = body.trim_start();
    if trimmed.starts_with('<') || trimmed.get(..512).unwrap_or(trimmed).contains("<html") {
        return "the BMC answered an HTML page (a login or error page?)".into();
    }
    if let Ok(v) = serde_json::from_str::<serde_json::Value>(trimmed) {
        let err = v.get("error");
        let infos = err
            .and_then(|e| e.get("@Message.ExtendedInfo"))
            .and_then(serde_json::Value::as_array);
        let messages: Vec<String> = infos
            .into_iter()
            .flatten()
            .filter_map(|i| {
                let id = i
                    .get("MessageId")
                    .and_then(serde_json::Value::as_str)
                    .and_then(|m| m.rsplit('.').next());
                let text = i.get("Message").and_then(serde_json::Value::as_str);
                match (id, text) {
                    (Some(id), Some(t)) => Some(format!("{id}: {t}")),
                    (None, Some(t)) => Some(t.to_owned()),
                    (Some(id), None) => Some(id.to_owned()),
                    (None, None) => None,
                }
            })
            .collect();
        if !messages.is_empty() {
            return messages.join("; ");
        }
        if let Some(m) = err
            .and_then(|e| e.get("message").or_else(|| e.get("code")))
            .and_then(serde_json::Value::as_str)
        {
            return m.to_owned();
        }
    }
    one_line(trimmed.get(..120).unwrap_or(trimmed))
}

/// Words for a certificate or handshake failure, from rustls' error text.
pub(super) fn tls_words(text: &str) -> Option<String> {
    let words = if text.contains("UnknownIssuer") {
        "the BMC's certificate is not signed by a CA this collector trusts (give the Server \
         its CA bundle, or set insecureSkipVerify to opt out)"
    } else if text.contains("NotValidForName") {
        "the BMC's certificate does not name the address it was reached at"
    } else if text.contains("Expired") {
        "the BMC's certificate has expired"
    } else if text.contains("NotValidYet") {
        "the BMC's certificate is not valid yet (check the clocks)"
    } else if text.contains("BadSignature") {
        "the BMC's certificate does not verify against the trusted CA (badly signed, or signed \
         by another CA of the same name)"
    } else if text.contains("BadEncoding") {
        "the BMC's certificate is malformed"
    } else if text.contains("certificate") || text.contains("handshake") || text.contains("TLS") {
        return Some(format!(
            "TLS handshake with the BMC failed: {}",
            one_line(text)
        ));
    } else {
        return None;
    };
    Some(words.to_owned())
}

pub(super) fn describe_bmc<E: nv_redfish::core::BmcError + 'static>(
    b: &E,
) -> (FailureClass, String) {
    use nv_redfish::core::BmcErrorClass;
    let said = || {
        b.response_body()
            .map(error_body_summary)
            .unwrap_or_default()
    };
    match b.error_class() {
        BmcErrorClass::HttpResponse { status } => {
            let class = match status {
                401 => FailureClass::Unauthorized,
                403 => FailureClass::Forbidden,
                404 => FailureClass::NotFound,
                429 | 503 => FailureClass::Unavailable,
                s if s >= 500 => FailureClass::ServerError,
                _ => FailureClass::Protocol,
            };
            let said = said();
            let reason = if said.is_empty() {
                format!("HTTP {status}")
            } else {
                format!("HTTP {status}: {said}")
            };
            (class, reason)
        }
        BmcErrorClass::ResponseParse => (FailureClass::Protocol, one_line(&b.to_string())),
        BmcErrorClass::Transport => describe_transport(b),
        // Other, and classes added by future nv-redfish releases.
        _ => {
            let text = b.to_string();
            let class = if text.contains("Decode") {
                FailureClass::Protocol
            } else {
                FailureClass::Transport
            };
            (class, one_line(&text))
        }
    }
}

/// A failure before any answer: timeout, TLS, refused; named from the innermost cause.
pub(super) fn describe_transport(b: &(dyn std::error::Error + 'static)) -> (FailureClass, String) {
    let mut chain = Vec::new();
    let mut timeout = false;
    let mut cur: Option<&dyn std::error::Error> = Some(b);
    while let Some(e) = cur {
        if e.downcast_ref::<reqwest::Error>()
            .is_some_and(reqwest::Error::is_timeout)
        {
            timeout = true;
        }
        chain.push(e.to_string());
        cur = e.source();
    }
    if timeout {
        return (
            FailureClass::Timeout,
            "the BMC did not answer within the request timeout".into(),
        );
    }
    let all = chain.join(": ");
    if let Some(words) = tls_words(&all) {
        return (FailureClass::Tls, words);
    }
    let innermost = chain.last().cloned().unwrap_or_default();
    (
        FailureClass::Transport,
        format!("could not reach the BMC: {}", one_line(&innermost)),
    )
}

/// One line, single spaces: reasons end up in conditions, Events and tables.
pub(super) fn one_line(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Errors a section can fail with: nv-redfish's, or the transport's from a navigation read.
pub(super) trait Classified: fmt::Display {
    fn class(&self) -> FailureClass;
    /// One line a person can act on.
    fn reason(&self) -> String {
        one_line(&self.to_string())
    }
}

impl<B: Bmc> Classified for nv_redfish::Error<B> {
    fn class(&self) -> FailureClass {
        classify(self)
    }
    fn reason(&self) -> String {
        describe(self).1
    }
}

/// A transport error read through a navigation property.
pub(super) struct Nav<'a, E>(pub(super) &'a E);

impl<E: fmt::Display> fmt::Display for Nav<'_, E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl<E: nv_redfish::core::BmcError + 'static> Classified for Nav<'_, E> {
    fn class(&self) -> FailureClass {
        describe_bmc(self.0).0
    }
    fn reason(&self) -> String {
        describe_bmc(self.0).1
    }
}
