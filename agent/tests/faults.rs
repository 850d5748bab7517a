//! Faults: each yields a per-BMC error with a reason; the collector and the other BMCs go on.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests may panic

use std::path::PathBuf;
use std::time::{Duration, Instant};

use sovereign_agent::mockbmc::{self, Fault, MockBmc, Running};
use sovereign_agent::poller::{Fleet, PollConfig};
use sovereign_agent::redfish::{Endpoint, FailureClass};
use sovereign_agent::transport::MAX_BODY_BYTES;

fn rackmount() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../shared/redfish-mockups/dmtf/public-rackmount1")
}

fn endpoint(url: String, user: &str, pass: &str) -> Endpoint {
    Endpoint {
        address: url,
        username: user.into(),
        password: pass.into(),
        ca_bundle_pem: None,
        insecure_skip_verify: false,
        timeout: Duration::from_secs(5),
    }
}

async fn bmc(fault: Fault, latency: Duration) -> Running {
    let mut m = MockBmc::new(rackmount());
    m.fault = fault;
    m.latency = latency;
    mockbmc::start(m).await.unwrap()
}

#[tokio::test]
async fn every_fault_is_one_bmcs_problem() {
    if !sovereign_agent::mockbmc::have_mockups("every_fault_is_one_bmcs_problem") {
        return;
    }
    let cases: Vec<(&str, Fault, Duration, Option<FailureClass>)> = vec![
        ("healthy", Fault::None, Duration::ZERO, None),
        (
            "unauthorized",
            Fault::Status(401),
            Duration::ZERO,
            Some(FailureClass::Unauthorized),
        ),
        (
            "forbidden",
            Fault::Status(403),
            Duration::ZERO,
            Some(FailureClass::Forbidden),
        ),
        (
            "not-redfish",
            Fault::Status(404),
            Duration::ZERO,
            Some(FailureClass::NotFound),
        ),
        (
            "error-500",
            Fault::Status(500),
            Duration::ZERO,
            Some(FailureClass::ServerError),
        ),
        (
            "busy-503",
            Fault::Unavailable {
                retry_after_seconds: 30,
            },
            Duration::ZERO,
            Some(FailureClass::Unavailable),
        ),
        (
            "malformed",
            Fault::MalformedJson,
            Duration::ZERO,
            Some(FailureClass::Protocol),
        ),
        (
            "wrong-types",
            Fault::WrongTypes,
            Duration::ZERO,
            Some(FailureClass::Protocol),
        ),
        (
            "huge",
            Fault::HugeBody(MAX_BODY_BYTES + 1),
            Duration::ZERO,
            Some(FailureClass::Protocol),
        ),
        (
            "huge-chunked",
            Fault::HugeChunked(MAX_BODY_BYTES + (1 << 20)),
            Duration::ZERO,
            Some(FailureClass::Protocol),
        ),
        (
            "padded-but-small",
            Fault::HugeBody(1 << 20),
            Duration::ZERO,
            None,
        ),
        (
            "html",
            Fault::HtmlPage,
            Duration::ZERO,
            Some(FailureClass::Protocol),
        ),
        (
            "slow",
            Fault::None,
            Duration::from_secs(3),
            Some(FailureClass::Timeout),
        ),
    ];
    let mut servers = Vec::new();
    let mut targets = Vec::new();
    for (name, fault, latency, _) in &cases {
        let s = bmc(fault.clone(), *latency).await;
        targets.push(((*name).to_owned(), endpoint(s.url(), "root", "calvin")));
        servers.push(s);
    }
    // Connection refused: a port that was bound and released.
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    targets.push((
        "refused".into(),
        endpoint(format!("http://{closed}"), "root", "calvin"),
    ));
    targets.push((
        "bad-address".into(),
        endpoint("ftp://10.0.0.1".into(), "root", "calvin"),
    ));

    let config = PollConfig {
        concurrency: 4,
        // Well below the slow BMC's 3 s per request, well above a healthy poll on a loaded CI
        // machine (a 1 MiB padded document per request).
        deadline: Duration::from_secs(2),
        ..PollConfig::default()
    };
    let mut fleet = Fleet::new(targets, config);
    let report = fleet.poll_cycle(Instant::now()).await;
    assert_eq!(report.outcomes.len(), cases.len() + 2);
    for o in &report.outcomes {
        let expected = cases.iter().find(|c| c.0 == o.name).map_or(
            match o.name.as_str() {
                "refused" => Some(FailureClass::Transport),
                _ => Some(FailureClass::Config),
            },
            |c| c.3,
        );
        match (&o.result, expected) {
            (Ok(sample), None) => assert_eq!(sample.systems.len(), 1, "{}", o.name),
            (Err(e), Some(class)) => {
                assert_eq!(e.class(), class, "{}: {e}", o.name);
                assert!(!e.to_string().is_empty());
            }
            (r, want) => panic!(
                "{}: got {:?}, wanted {want:?}",
                o.name,
                r.as_ref().map(|_| "sample")
            ),
        }
    }
    for huge in ["huge", "huge-chunked"] {
        let o = report.outcomes.iter().find(|o| o.name == huge).unwrap();
        let e = o.result.as_ref().unwrap_err().to_string();
        assert!(e.contains("larger than 16777216 bytes"), "{huge}: {e}");
    }
    let slow = report.outcomes.iter().find(|o| o.name == "slow").unwrap();
    assert!(
        slow.elapsed < Duration::from_millis(2900),
        "the deadline (2 s) cut the slow BMC (3 s per request): {:?}",
        slow.elapsed
    );

    // Failed BMCs back off; the healthy one is polled again at once.
    let again = fleet.poll_cycle(Instant::now()).await;
    let polled: Vec<&str> = again.outcomes.iter().map(|o| o.name.as_str()).collect();
    assert_eq!(polled, ["healthy", "padded-but-small"]);
    assert_eq!(again.skipped.len(), cases.len());
    drop(servers);
}

#[tokio::test]
async fn a_busy_bmc_is_left_alone_for_as_long_as_it_asks() {
    if !sovereign_agent::mockbmc::have_mockups("a_busy_bmc_is_left_alone_for_as_long_as_it_asks") {
        return;
    }
    let busy = bmc(
        Fault::Unavailable {
            retry_after_seconds: 600,
        },
        Duration::ZERO,
    )
    .await;
    let flaky = bmc(Fault::Status(503), Duration::ZERO).await;
    let config = PollConfig {
        backoff_base: Duration::from_secs(1),
        ..PollConfig::default()
    };
    let mut fleet = Fleet::new(
        vec![
            ("busy".into(), endpoint(busy.url(), "root", "calvin")),
            ("flaky".into(), endpoint(flaky.url(), "root", "calvin")),
        ],
        config,
    );
    let start = Instant::now();
    let report = fleet.poll_cycle(start).await;
    assert!(report.outcomes.iter().all(|o| o.result.is_err()));
    let wait = |name: &str| {
        let m = fleet.members().iter().find(|m| m.name == name).unwrap();
        m.backoff.next_allowed().unwrap() - start
    };
    // Retry-After: 600 wins over the 1 s backoff; without it the backoff is its own.
    assert!(
        wait("busy") >= Duration::from_mins(10),
        "{:?}",
        wait("busy")
    );
    assert!(
        wait("flaky") < Duration::from_secs(5),
        "{:?}",
        wait("flaky")
    );
}

#[tokio::test]
async fn credentials_are_checked_and_never_printed() {
    if !sovereign_agent::mockbmc::have_mockups("credentials_are_checked_and_never_printed") {
        return;
    }
    let mut m = MockBmc::new(rackmount());
    m.credentials = Some(("sovereign-ro".into(), "s3cr3t-pass".into()));
    let s = mockbmc::start(m).await.unwrap();
    let good = endpoint(s.url(), "sovereign-ro", "s3cr3t-pass");
    let bad = endpoint(s.url(), "sovereign-ro", "wrong");
    assert!(
        !format!("{good:?}").contains("s3cr3t-pass"),
        "Debug must redact the password"
    );
    let mut fleet = Fleet::new(
        vec![("good".into(), good), ("bad".into(), bad)],
        PollConfig::default(),
    );
    let report = fleet.poll_cycle(Instant::now()).await;
    let by = |n: &str| report.outcomes.iter().find(|o| o.name == n).unwrap();
    assert!(by("good").result.is_ok());
    let err = by("bad").result.as_ref().unwrap_err();
    assert_eq!(err.class(), FailureClass::Unauthorized);
    assert!(!err.to_string().contains("wrong"), "{err}");
}

#[tokio::test]
async fn tls_needs_a_valid_ca_bundle_or_explicit_insecure() {
    if !sovereign_agent::mockbmc::have_mockups("tls_needs_a_valid_ca_bundle_or_explicit_insecure") {
        return;
    }
    let mut ep = endpoint("https://127.0.0.1:9".into(), "u", "p");
    ep.ca_bundle_pem = Some("not a pem".into());
    let err = sovereign_agent::redfish::connect(&ep).err().unwrap();
    assert_eq!(err.class(), FailureClass::Config, "{err}");
}

/// Every refusal reads as one line a person can act on, with the BMC's own words when it gave
/// some, and the class the operator turns into the condition reason.
#[tokio::test]
async fn failures_have_their_class_and_a_one_line_reason() {
    if !sovereign_agent::mockbmc::have_mockups("failures_have_their_class_and_a_one_line_reason") {
        return;
    }
    let refused = |status: u16, id: &str, message: &str| Fault::Refused {
        status,
        message_id: id.into(),
        message: message.into(),
    };
    let cases = [
        (
            "password-change",
            refused(
                403,
                "Base.1.8.PasswordChangeRequired",
                "The password provided for this account must be changed before access is granted.",
            ),
            FailureClass::Forbidden,
            "HTTP 403: PasswordChangeRequired: The password provided for this account must be changed",
        ),
        (
            "html",
            Fault::HtmlPage,
            FailureClass::Protocol,
            "the BMC answered an HTML page (a login or error page?)",
        ),
        (
            "busy",
            Fault::Unavailable {
                retry_after_seconds: 5,
            },
            FailureClass::Unavailable,
            "HTTP 503: Base.1.0.ServiceTemporarilyUnavailable",
        ),
    ];
    for (name, fault, class, words) in cases {
        let s = bmc(fault, Duration::ZERO).await;
        let client =
            sovereign_agent::redfish::connect(&endpoint(s.url(), "root", "calvin")).unwrap();
        let err = sovereign_agent::redfish::collect(std::sync::Arc::new(client))
            .await
            .unwrap_err();
        let text = err.to_string();
        assert_eq!(err.class(), class, "{name}: {text}");
        assert!(text.contains(words), "{name}: {text}");
        assert!(!text.contains('\n'), "{name}: one line: {text}");
        assert!(!text.contains("<html"), "{name}: no raw HTML: {text}");
        assert!(
            !text.contains("InvalidResponse") && !text.contains("Some("),
            "{name}: no Rust debug formatting: {text}"
        );
    }
}

/// A request that outlives its own timeout is `BmcTimeout`, not "unreachable".
#[tokio::test]
async fn a_request_timeout_is_a_timeout() {
    if !sovereign_agent::mockbmc::have_mockups("a_request_timeout_is_a_timeout") {
        return;
    }
    let s = bmc(Fault::None, Duration::from_millis(800)).await;
    let mut ep = endpoint(s.url(), "root", "calvin");
    ep.timeout = Duration::from_millis(200);
    let client = sovereign_agent::redfish::connect(&ep).unwrap();
    let err = sovereign_agent::redfish::collect(std::sync::Arc::new(client))
        .await
        .unwrap_err();
    assert_eq!(err.class(), FailureClass::Timeout, "{err}");
    assert!(err.to_string().contains("did not answer within"), "{err}");
}

/// Wrong credentials: every path is asked once, never a second `$expand`-less pass (each
/// attempt is a failed login the BMC counts towards locking the account).
#[tokio::test]
async fn a_refused_login_is_never_retried_in_the_same_poll() {
    if !sovereign_agent::mockbmc::have_mockups("a_refused_login_is_never_retried_in_the_same_poll")
    {
        return;
    }
    let mut m = MockBmc::new(rackmount());
    m.credentials = Some(("sovereign-ro".into(), "right".into()));
    let paths = m.paths.clone();
    let s = mockbmc::start(m).await.unwrap();
    let client =
        sovereign_agent::redfish::connect(&endpoint(s.url(), "sovereign-ro", "wrong")).unwrap();
    let err = sovereign_agent::redfish::collect(std::sync::Arc::new(client))
        .await
        .unwrap_err();
    assert_eq!(err.class(), FailureClass::Unauthorized, "{err}");
    let paths = paths.lock().unwrap().clone();
    assert!(paths.len() > 1, "{paths:?}");
    let repeated: Vec<_> = paths.iter().filter(|(_, n)| **n > 1).collect();
    assert!(repeated.is_empty(), "asked more than once: {repeated:?}");
}
