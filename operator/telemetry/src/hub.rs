//! The operator's view of telemetry: the latest sample per (server, source), and notifications
//! when something other than the timestamp changed.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::{SystemTime, UNIX_EPOCH};

use thiserror::Error;
use tokio::sync::broadcast;

use crate::auth::{Identity, Role};
use crate::metrics::{Metrics, Placement};
use crate::proto::{Sample, Source};

/// Why a sample was not taken.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum Rejection {
    #[error("server name {0:?} is not a valid object name")]
    BadServer(String),
    #[error("sample has no body")]
    Empty,
    #[error("observed {0} ms in the future")]
    FromTheFuture(i64),
    #[error("older than the sample already held")]
    Stale,
    #[error("{agent} may not publish {kind} samples for {server}")]
    NotAuthorized {
        agent: String,
        kind: String,
        server: String,
    },
}

/// Maps a server name to its rack and site for metric labels.
pub type Locate = Box<dyn Fn(&str) -> Placement + Send + Sync>;

/// Latest samples and change notifications. Cheap to share (`Arc<Hub>`).
pub struct Hub {
    /// Per server, its latest sample of each source, ordered by source. Keyed by server alone:
    /// a reconcile reads one server's samples (a scan of every pair did that before).
    latest: RwLock<HashMap<Box<str>, Vec<Held>>>,
    changes: broadcast::Sender<String>,
    metrics: Option<(Arc<Metrics>, Locate)>,
}

impl std::fmt::Debug for Hub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hub")
            .field("held", &self.len())
            .field("metrics", &self.metrics.is_some())
            .finish_non_exhaustive()
    }
}

/// A sample as held: its body protobuf-encoded. Decoded, a sample is ~500 bytes inline
/// before its strings and readings; 5,000 servers' samples held 4.4 MB that way.
struct Held {
    source: i32,
    observed_at_unix_ms: i64,
    /// The sample's body alone (no server name, no timestamp): equal bytes, same content.
    body: Box<[u8]>,
}

impl Held {
    fn of(sample: &Sample) -> Self {
        let body = Sample {
            server: String::new(),
            source: sample.source,
            observed_at_unix_ms: 0,
            body: sample.body.clone(),
        };
        Self {
            source: sample.source,
            observed_at_unix_ms: sample.observed_at_unix_ms,
            body: prost::Message::encode_to_vec(&body).into_boxed_slice(),
        }
    }

    /// The sample again (None only if the bytes this hub encoded do not decode).
    fn sample(&self, server: &str) -> Option<Sample> {
        let mut s: Sample = prost::Message::decode(&*self.body).ok()?;
        server.clone_into(&mut s.server);
        s.observed_at_unix_ms = self.observed_at_unix_ms;
        Some(s)
    }
}

/// Clock skew tolerated from agents.
const MAX_FUTURE_MS: i64 = 5 * 60 * 1000;

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.split('.').all(|l| {
            !l.is_empty()
                && l.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                && !l.starts_with('-')
                && !l.ends_with('-')
        })
}

impl Default for Hub {
    fn default() -> Self {
        Self::new(1024)
    }
}

impl Hub {
    /// `notify_capacity` bounds the change queue; a slow subscriber misses old notifications
    /// (it re-reads `latest`), it never holds memory for ever.
    pub fn new(notify_capacity: usize) -> Self {
        Self {
            latest: RwLock::new(HashMap::new()),
            changes: broadcast::channel(notify_capacity.max(1)).0,
            metrics: None,
        }
    }

    /// Also records every accepted sample in `metrics`, labelled by `locate`.
    #[must_use]
    pub fn with_metrics(
        mut self,
        metrics: Arc<Metrics>,
        locate: impl Fn(&str) -> Placement + Send + Sync + 'static,
    ) -> Self {
        self.metrics = Some((metrics, Box::new(locate)));
        self
    }

    /// Server names, once each, as their samples change meaningfully.
    pub fn subscribe(&self) -> broadcast::Receiver<String> {
        self.changes.subscribe()
    }

    /// The latest samples of a server (one per source).
    pub fn latest(&self, server: &str) -> Vec<Sample> {
        self.latest
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(server)
            .map(|held| held.iter().filter_map(|h| h.sample(server)).collect())
            .unwrap_or_default()
    }

    /// Every sample held (one per server and source), for exporters.
    pub fn snapshot(&self) -> Vec<Sample> {
        self.latest
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .iter()
            .flat_map(|(server, held)| held.iter().filter_map(|h| h.sample(server)))
            .collect()
    }

    /// Number of (server, source) pairs held.
    pub fn len(&self) -> usize {
        self.latest
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .values()
            .map(Vec::len)
            .sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Takes a sample from an authenticated agent.
    pub fn accept(&self, sample: Sample, from: &Identity) -> Result<(), Rejection> {
        if !valid_name(&sample.server) {
            return Err(Rejection::BadServer(sample.server));
        }
        if sample.body.is_none() {
            return Err(Rejection::Empty);
        }
        let source = Source::try_from(sample.source).unwrap_or(Source::Unspecified);
        let allowed = match &from.role {
            Role::Unrestricted => true,
            Role::Collector => source == Source::Redfish,
            Role::Node { node } => source == Source::Os && *node == sample.server,
        };
        if !allowed {
            return Err(Rejection::NotAuthorized {
                agent: from.username.clone(),
                kind: source.as_str_name().to_owned(),
                server: sample.server,
            });
        }
        let ahead = sample.observed_at_unix_ms - now_ms();
        if ahead > MAX_FUTURE_MS {
            return Err(Rejection::FromTheFuture(ahead));
        }
        let changed = {
            let mut map = self
                .latest
                .write()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let held = match map.get_mut(sample.server.as_str()) {
                Some(held) => held,
                None => map.entry(sample.server.as_str().into()).or_default(),
            };
            match held.binary_search_by_key(&sample.source, |h| h.source) {
                Ok(i) => {
                    if held[i].observed_at_unix_ms > sample.observed_at_unix_ms {
                        return Err(Rejection::Stale);
                    }
                    let new = Held::of(&sample);
                    let changed = new.body != held[i].body;
                    held[i] = new;
                    changed
                }
                Err(i) => {
                    held.insert(i, Held::of(&sample));
                    held.shrink_to_fit();
                    true
                }
            }
        };
        tracing::trace!(server = %sample.server, agent = %from.username, changed, "sample");
        if let Some((metrics, locate)) = &self.metrics {
            metrics.observe(&sample, &locate(&sample.server));
        }
        if changed {
            // No subscriber is not an error: the operator may not be watching yet.
            let _ = self.changes.send(sample.server);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::{BmcSummary, Source, sample::Body};

    fn bmc(server: &str, at: i64, watts: f64) -> Sample {
        Sample {
            server: server.into(),
            source: Source::Redfish as i32,
            observed_at_unix_ms: at,
            body: Some(Body::Bmc(BmcSummary {
                consumed_watts: Some(watts),
                ..BmcSummary::default()
            })),
        }
    }

    fn agent() -> Identity {
        Identity::collector("system:serviceaccount:sovereign-system:sovereign-collector")
    }

    #[test]
    fn keeps_the_latest_and_notifies_only_on_change() {
        let hub = Hub::new(16);
        let mut rx = hub.subscribe();
        let t = now_ms();
        hub.accept(bmc("hn1-r01-s01", t, 300.0), &agent()).unwrap();
        hub.accept(bmc("hn1-r01-s01", t + 1000, 300.0), &agent())
            .unwrap();
        hub.accept(bmc("hn1-r01-s01", t + 2000, 320.0), &agent())
            .unwrap();
        assert_eq!(rx.try_recv().unwrap(), "hn1-r01-s01");
        assert_eq!(rx.try_recv().unwrap(), "hn1-r01-s01", "320 W is a change");
        assert!(
            rx.try_recv().is_err(),
            "a new timestamp alone is not a change"
        );
        assert_eq!(hub.latest("hn1-r01-s01")[0].observed_at_unix_ms, t + 2000);
        assert_eq!(
            hub.accept(bmc("hn1-r01-s01", t, 1.0), &agent()),
            Err(Rejection::Stale)
        );
    }

    #[test]
    fn accepted_samples_update_metrics() {
        let metrics = Arc::new(Metrics::new());
        let hub = Hub::new(4).with_metrics(metrics.clone(), |server| Placement {
            server: server.to_owned(),
            rack: "hn1-r01".into(),
            site: "hn1".into(),
        });
        hub.accept(bmc("hn1-r01-s01", now_ms(), 410.0), &agent())
            .unwrap();
        assert!(metrics.encode().contains(
            r#"sovereign_server_power_watts{server="hn1-r01-s01",rack="hn1-r01",site="hn1"} 410.0"#
        ));
    }

    #[test]
    fn agents_publish_only_what_their_role_allows() {
        use crate::proto::OsSummary;
        let hub = Hub::default();
        let os = |server: &str| Sample {
            server: server.into(),
            source: Source::Os as i32,
            observed_at_unix_ms: now_ms(),
            body: Some(Body::Os(OsSummary::default())),
        };
        let node = Identity::node(
            "system:serviceaccount:sovereign-system:sovereign-agent",
            "n1",
        );
        assert_eq!(hub.accept(os("n1"), &node), Ok(()));
        let refused = hub.accept(os("n2"), &node).unwrap_err();
        assert_eq!(
            refused.to_string(),
            "system:serviceaccount:sovereign-system:sovereign-agent may not publish SOURCE_OS samples for n2"
        );
        assert!(matches!(
            hub.accept(bmc("n1", now_ms(), 1.0), &node),
            Err(Rejection::NotAuthorized { .. })
        ));
        assert!(matches!(
            hub.accept(os("n3"), &agent()),
            Err(Rejection::NotAuthorized { .. })
        ));
        assert_eq!(hub.accept(bmc("n3", now_ms(), 1.0), &agent()), Ok(()));
        assert_eq!(hub.len(), 2);
    }

    #[test]
    fn refuses_bad_samples() {
        let hub = Hub::default();
        assert!(matches!(
            hub.accept(bmc("Bad_Name", now_ms(), 1.0), &agent()),
            Err(Rejection::BadServer(_))
        ));
        assert!(matches!(
            hub.accept(bmc("s1", now_ms() + 3_600_000, 1.0), &agent()),
            Err(Rejection::FromTheFuture(_))
        ));
        let mut empty = bmc("s1", now_ms(), 1.0);
        empty.body = None;
        assert_eq!(hub.accept(empty, &agent()), Err(Rejection::Empty));
        assert!(hub.is_empty());
    }

    #[test]
    fn a_server_reads_its_own_samples_one_per_source_in_source_order() {
        use crate::proto::OsSummary;
        let hub = Hub::default();
        let t = now_ms();
        let os = Sample {
            server: "s1".into(),
            source: Source::Os as i32,
            observed_at_unix_ms: t,
            body: Some(Body::Os(OsSummary::default())),
        };
        let anyone = Identity::unrestricted("test");
        hub.accept(os.clone(), &anyone).unwrap();
        hub.accept(bmc("s1", t, 5.0), &anyone).unwrap();
        hub.accept(bmc("s10", t, 7.0), &anyone).unwrap();
        hub.accept(bmc("s1", t + 1, 6.0), &anyone).unwrap();
        let got = hub.latest("s1");
        assert_eq!(got.len(), 2, "one per source, not the other server's");
        assert_eq!(
            got[0],
            bmc("s1", t + 1, 6.0),
            "Redfish first, the newest one"
        );
        assert_eq!(got[1], os);
        assert_eq!(hub.len(), 3);
        assert_eq!(hub.snapshot().len(), 3);
        assert!(hub.latest("s2").is_empty());
    }
}
