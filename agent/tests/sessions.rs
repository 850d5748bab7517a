//! Redfish sessions: one per BMC, reused, renewed when expired, closed on logout, and basic
//! authentication when the BMC has no slot left.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests may panic

use std::path::PathBuf;
use std::time::{Duration, Instant};

use sovereign_agent::mockbmc::{self, MockBmc};
use sovereign_agent::poller::{Auth, Fleet, PollConfig};
use sovereign_agent::redfish::{Endpoint, FailureClass};

fn bmc(max_sessions: usize) -> MockBmc {
    let mut m = MockBmc::new(
        PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("../../shared/redfish-mockups/dmtf/public-rackmount1"),
    );
    m.credentials = Some(("sovereign-ro".into(), "s3cr3t".into()));
    m.max_sessions = max_sessions;
    m
}

fn endpoint(url: String, password: &str) -> Endpoint {
    Endpoint {
        address: url,
        username: "sovereign-ro".into(),
        password: password.into(),
        ca_bundle_pem: None,
        insecure_skip_verify: false,
        timeout: Duration::from_secs(5),
    }
}

#[tokio::test]
async fn one_session_reused_renewed_and_closed() {
    if !sovereign_agent::mockbmc::have_mockups("one_session_reused_renewed_and_closed") {
        return;
    }
    let m = bmc(2);
    let sessions = m.sessions.clone();
    let s = mockbmc::start(m).await.unwrap();
    let mut fleet = Fleet::new(
        vec![("s1".into(), endpoint(s.url(), "s3cr3t"))],
        PollConfig::default(),
    );
    for _ in 0..3 {
        let r = fleet.poll_cycle(Instant::now()).await;
        assert!(r.outcomes[0].result.is_ok(), "{:?}", r.outcomes[0].result);
    }
    assert_eq!(
        sessions.lock().unwrap().len(),
        1,
        "one session, reused across polls (no leak)"
    );
    assert_eq!(fleet.members()[0].auth, Auth::Session);

    // The BMC forgets its sessions (reboot, expiry): the next poll logs in again and succeeds.
    sessions.lock().unwrap().clear();
    let r = fleet.poll_cycle(Instant::now()).await;
    assert!(r.outcomes[0].result.is_ok(), "{:?}", r.outcomes[0].result);
    assert_eq!(sessions.lock().unwrap().len(), 1);

    fleet.logout().await;
    assert!(
        sessions.lock().unwrap().is_empty(),
        "logout deletes the session"
    );
}

#[tokio::test]
async fn no_session_slot_falls_back_to_basic() {
    if !sovereign_agent::mockbmc::have_mockups("no_session_slot_falls_back_to_basic") {
        return;
    }
    let m = bmc(0);
    let sessions = m.sessions.clone();
    let s = mockbmc::start(m).await.unwrap();
    let mut fleet = Fleet::new(
        vec![("s1".into(), endpoint(s.url(), "s3cr3t"))],
        PollConfig::default(),
    );
    let r = fleet.poll_cycle(Instant::now()).await;
    assert!(r.outcomes[0].result.is_ok(), "{:?}", r.outcomes[0].result);
    assert_eq!(fleet.members()[0].auth, Auth::Basic);
    assert!(sessions.lock().unwrap().is_empty());
}

#[tokio::test]
async fn wrong_password_opens_no_session() {
    if !sovereign_agent::mockbmc::have_mockups("wrong_password_opens_no_session") {
        return;
    }
    let m = bmc(2);
    let sessions = m.sessions.clone();
    let s = mockbmc::start(m).await.unwrap();
    let mut fleet = Fleet::new(
        vec![("s1".into(), endpoint(s.url(), "guess"))],
        PollConfig::default(),
    );
    let r = fleet.poll_cycle(Instant::now()).await;
    assert_eq!(
        r.outcomes[0].result.as_ref().unwrap_err().class(),
        FailureClass::Unauthorized
    );
    assert!(sessions.lock().unwrap().is_empty());
}
