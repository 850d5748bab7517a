//! Polling many BMCs: bounded concurrency across BMCs, a deadline per BMC, one HTTP client per
//! BMC reused across cycles (connection reuse), and per-BMC backoff so a failing BMC is not
//! hammered. One BMC's failure is recorded against that BMC only.
//!
//! Full and light polls: a full poll reads the whole tree (inventory, logs, readings); a BMC
//! whose full poll takes more than a quarter of the deadline (a GPU server with dozens of
//! chassis, a slow BMC) is then polled light ([`redfish::refresh`]: health and readings only)
//! every cycle, with a full poll every [`PollConfig::full_every`] polls running in the
//! background. A full poll that outlives its cycle's deadline while the BMC is answering keeps
//! going in the background (up to [`PollConfig::inventory_deadline`]) instead of being lost.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use crate::redfish::{self, BmcSample, Endpoint, FailureClass, HttpRedfish, RedfishError};
use crate::transport::RetryHint;

/// Exponential backoff per BMC, capped, with deterministic jitter (no RNG: spreads BMCs by name
/// so a rack that failed together does not retry together).
#[derive(Clone, Debug)]
pub struct Backoff {
    pub base: Duration,
    pub cap: Duration,
    failures: u32,
    next_allowed: Option<Instant>,
    jitter_seed: u64,
}

impl Backoff {
    pub fn new(base: Duration, cap: Duration, name: &str) -> Self {
        // FNV-1a of the name: stable across runs and platforms.
        let jitter_seed = name.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
        });
        Self {
            base,
            cap,
            failures: 0,
            next_allowed: None,
            jitter_seed,
        }
    }

    pub fn failures(&self) -> u32 {
        self.failures
    }

    /// May this BMC be polled at `now`?
    pub fn due(&self, now: Instant) -> bool {
        self.next_allowed.is_none_or(|t| now >= t)
    }

    pub fn on_success(&mut self) {
        self.failures = 0;
        self.next_allowed = None;
    }

    /// When the next poll may happen (None: now).
    pub fn next_allowed(&self) -> Option<Instant> {
        self.next_allowed
    }

    /// Records a failure and returns how long to wait before the next try: never less than
    /// the `Retry-After` the BMC asked for, if it did.
    pub fn on_failure(
        &mut self,
        class: FailureClass,
        now: Instant,
        retry_after: Option<Duration>,
    ) -> Duration {
        self.failures = self.failures.saturating_add(1);
        let delay = match class {
            // Bad credentials: a retry loop locks the account out on many BMCs.
            FailureClass::Unauthorized | FailureClass::Forbidden | FailureClass::Config => self.cap,
            _ => {
                let exp = self.failures.saturating_sub(1).min(16);
                self.base.saturating_mul(1u32 << exp).min(self.cap)
            }
        };
        // Up to +20 % jitter, from the name and the attempt.
        let spread = f64::from(
            u32::try_from(self.jitter_seed.rotate_left(self.failures) % 200).unwrap_or(0),
        ) / 1000.0;
        let delay = delay.mul_f64(1.0 + spread).min(self.cap.mul_f64(1.2));
        let delay = delay.max(retry_after.unwrap_or_default());
        self.next_allowed = Some(now + delay);
        delay
    }
}

/// Why one BMC produced no sample this cycle.
#[derive(Debug, thiserror::Error)]
pub enum PollError {
    #[error("{0}")]
    Redfish(#[from] RedfishError),
    #[error("poll exceeded its {0:?} deadline")]
    Timeout(Duration),
    #[error("poll task failed: {0}")]
    Task(String),
}

impl PollError {
    pub fn class(&self) -> FailureClass {
        match self {
            PollError::Redfish(e) => e.class(),
            PollError::Timeout(_) => FailureClass::Timeout,
            PollError::Task(_) => FailureClass::Transport,
        }
    }
}

/// A BMC to poll: its endpoint (or why it has none) and how often.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    /// Server object name the samples are for.
    pub name: String,
    pub endpoint: Result<Endpoint, String>,
    /// Least time between two polls (the Server's `bmc.pollIntervalSeconds`); None polls it
    /// every cycle.
    pub interval: Option<Duration>,
}

impl Target {
    pub fn new(name: impl Into<String>, endpoint: Result<Endpoint, String>) -> Self {
        Self {
            name: name.into(),
            endpoint,
            interval: None,
        }
    }
}

/// How a BMC is authenticated.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Auth {
    /// Not settled: try a SessionService login at the next poll.
    Unsettled,
    /// A session is open; its token is sent instead of the password.
    Session,
    /// The BMC has no usable SessionService (absent, out of slots): basic auth on every request.
    Basic,
}

/// One BMC in the fleet.
pub struct Member {
    pub name: String,
    /// What the member was built from, to tell whether a new target changes it.
    target: Result<Endpoint, String>,
    endpoint: Endpoint,
    interval: Option<Duration>,
    last_polled: Option<Instant>,
    /// Basic-auth client, built once; the fallback when sessions are not available.
    basic: Result<Arc<HttpRedfish>, String>,
    session: Option<redfish::SessionLogin>,
    /// `Retry-After` from this BMC's last busy answer, shared with its clients.
    hint: RetryHint,
    pub auth: Auth,
    pub backoff: Backoff,
    /// Cleared once the BMC refused `$expand`.
    pub use_expand: bool,
    /// Event log entries already reported (log|id|created); empty until the first poll sets the
    /// baseline, so an agent restart does not replay a BMC's whole history.
    seen_events: std::collections::HashSet<String>,
    events_baselined: bool,
    /// The last full poll's sample (its events dropped): what light polls read again.
    base: Option<Arc<BmcSample>>,
    /// Polled light: its last full poll took more than a quarter of the deadline.
    pub light: bool,
    /// Light polls since the last full one.
    light_polls: u32,
    /// A full poll running in the background (outlived its cycle, or a periodic one).
    inventory: Option<tokio::task::JoinHandle<Background>>,
    inventory_holds_session: bool,
    /// Events of a background full poll, reported with the next light poll.
    pending_events: Vec<redfish::LogEvent>,
}

/// What a background full poll brings back: its result, and the job when it was one that
/// outlived its cycle (it holds the session).
type Background = (Result<BmcSample, PollError>, Option<Job>, Duration);

/// Seen-event keys kept per BMC before the baseline is taken again (bounds memory).
const MAX_SEEN_EVENTS: usize = 20_000;

impl Member {
    /// Keeps only entries not reported before; the first poll only records the baseline.
    fn new_events_only(&mut self, sample: &mut BmcSample) {
        if self.seen_events.len() > MAX_SEEN_EVENTS {
            self.seen_events.clear();
            self.events_baselined = false;
        }
        let seen = &mut self.seen_events;
        sample.events.retain(|e| {
            seen.insert(format!(
                "{}|{}|{}",
                e.log,
                e.id,
                e.created.as_deref().unwrap_or("")
            ))
        });
        if !self.events_baselined {
            sample.events.clear();
            self.events_baselined = true;
        }
    }
}

impl Drop for Member {
    /// A member replaced or removed stops its background poll.
    fn drop(&mut self) {
        if let Some(h) = &self.inventory {
            h.abort();
        }
    }
}

impl std::fmt::Debug for Member {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Member")
            .field("name", &self.name)
            .field("endpoint", &self.endpoint)
            .field("auth", &self.auth)
            .field("backoff", &self.backoff)
            .field("use_expand", &self.use_expand)
            .finish_non_exhaustive()
    }
}

/// Result of polling one BMC.
#[derive(Debug)]
pub struct Outcome {
    pub name: String,
    pub result: Result<BmcSample, PollError>,
    pub elapsed: Duration,
}

/// What one poll needs, moved into its task and back.
struct Job {
    endpoint: Endpoint,
    hint: RetryHint,
    basic: Result<Arc<HttpRedfish>, String>,
    session: Option<redfish::SessionLogin>,
    auth: Auth,
    use_expand: bool,
}

fn blank_endpoint() -> Endpoint {
    Endpoint {
        address: String::new(),
        username: String::new(),
        password: String::new(),
        ca_bundle_pem: None,
        insecure_skip_verify: false,
        timeout: Duration::ZERO,
    }
}

impl Member {
    fn new(t: Target, config: &PollConfig) -> Self {
        let Target {
            name,
            endpoint: target,
            interval,
        } = t;
        let hint = RetryHint::default();
        let (endpoint, basic) = match &target {
            Ok(ep) => (
                ep.clone(),
                redfish::connect_hinted(ep, &hint)
                    .map(Arc::new)
                    .map_err(|e| e.to_string()),
            ),
            Err(reason) => (blank_endpoint(), Err(reason.clone())),
        };
        Member {
            backoff: Backoff::new(config.backoff_base, config.backoff_cap, &name),
            basic,
            session: None,
            hint,
            auth: Auth::Unsettled,
            use_expand: true,
            seen_events: std::collections::HashSet::new(),
            events_baselined: false,
            base: None,
            light: false,
            light_polls: 0,
            inventory: None,
            inventory_holds_session: false,
            pending_events: Vec::new(),
            target,
            endpoint,
            interval,
            last_polled: None,
            name,
        }
    }

    /// Whether its interval has passed (a tenth early still counts, so a cycle that ticks a
    /// moment before the interval is up does not skip a whole cycle).
    fn due(&self, now: Instant) -> bool {
        match (self.interval, self.last_polled) {
            (Some(interval), Some(last)) => now + interval / 10 >= last + interval,
            _ => true,
        }
    }
}

impl Job {
    fn lost() -> Self {
        Self {
            endpoint: blank_endpoint(),
            hint: RetryHint::default(),
            basic: Err("poll timed out".into()),
            session: None,
            auth: Auth::Unsettled,
            use_expand: true,
        }
    }

    /// Logs in if needed, polls (light over `base` when given), and re-logs in once when the
    /// session has expired.
    async fn run(mut self, base: Option<Arc<BmcSample>>) -> (Result<BmcSample, PollError>, Self) {
        let basic = match &self.basic {
            Ok(b) => b.clone(),
            Err(config) => {
                return (
                    Err(PollError::Redfish(RedfishError::Unconfigured(
                        config.clone(),
                    ))),
                    self,
                );
            }
        };
        for attempt in 0..2 {
            if self.auth == Auth::Unsettled
                || (self.auth == Auth::Session && self.session.is_none())
            {
                match redfish::login(&self.endpoint, &self.hint).await {
                    Ok(login) => {
                        self.session = Some(login);
                        self.auth = Auth::Session;
                    }
                    // Wrong credentials: a session will not help, and retrying locks accounts.
                    Err(e) if e.class() == FailureClass::Unauthorized => {
                        return (Err(e.into()), self);
                    }
                    Err(e) => {
                        tracing::debug!(error = %e, "no Redfish session; using basic authentication");
                        self.auth = Auth::Basic;
                    }
                }
            }
            let client = self
                .session
                .as_ref()
                .map_or_else(|| basic.clone(), |s| s.client.clone());
            // Sensors inline once the BMC's service root said it expands (from the first poll).
            let expand_sensors = self.use_expand && self.hint.expands();
            let result = match &base {
                Some(base) => redfish::refresh(&*client, base, expand_sensors).await,
                None => redfish::collect_with(client, self.use_expand, expand_sensors).await,
            };
            let result = result
                .map(|mut sample| {
                    sample.warnings = self.hint.take_dropped();
                    sample
                })
                .map_err(PollError::from);
            let expired = self.auth == Auth::Session
                && matches!(&result, Err(e) if e.class() == FailureClass::Unauthorized);
            if expired && attempt == 0 {
                // Session expired or the BMC rebooted: log in again, once.
                self.session = None;
                continue;
            }
            return (result, self);
        }
        (Err(PollError::Task("unreachable".into())), self)
    }
}

/// Fan-out settings.
#[derive(Clone, Debug)]
pub struct PollConfig {
    /// BMCs polled at the same time.
    pub concurrency: usize,
    /// Deadline for one BMC's whole poll.
    pub deadline: Duration,
    pub backoff_base: Duration,
    pub backoff_cap: Duration,
    /// A BMC polled light gets a full poll (inventory, logs) every this many polls.
    pub full_every: u32,
    /// Longest a full poll may run in the background.
    pub inventory_deadline: Duration,
}

impl Default for PollConfig {
    fn default() -> Self {
        Self {
            // 1,000 BMCs answering in 3 s per request (8 requests a poll) fit a 60 s cycle only if
            // polled together: measured by the fanout bench.
            concurrency: 1024,
            deadline: Duration::from_secs(55),
            backoff_base: Duration::from_secs(30),
            backoff_cap: Duration::from_mins(30),
            // Every 8 minutes at the collector's default 60 s interval.
            full_every: 8,
            inventory_deadline: Duration::from_mins(10),
        }
    }
}

/// The BMCs one collector polls.
#[derive(Debug)]
pub struct Fleet {
    members: Vec<Member>,
    config: PollConfig,
}

/// A cycle's results, and the BMCs skipped because they are backing off.
#[derive(Debug, Default)]
pub struct CycleReport {
    pub outcomes: Vec<Outcome>,
    /// Backing off after failures.
    pub skipped: Vec<String>,
    /// Polled less often than every cycle (`pollIntervalSeconds`) and not due yet.
    pub not_due: usize,
    /// Its first full poll is still running in the background (a slow or very large BMC).
    pub pending: Vec<String>,
}

impl Fleet {
    /// Builds one HTTP client per BMC now; a BMC whose configuration is invalid stays in the
    /// fleet and reports that error every cycle instead of stopping the collector.
    pub fn new(targets: Vec<(String, Endpoint)>, config: PollConfig) -> Self {
        Self::from_targets(
            targets
                .into_iter()
                .map(|(n, ep)| Target::new(n, Ok(ep)))
                .collect(),
            config,
        )
    }

    /// As [`Fleet::new`], where a target may be an error (reported as that BMC's failure).
    pub fn from_targets(targets: Vec<Target>, config: PollConfig) -> Self {
        let members = targets
            .into_iter()
            .map(|t| Member::new(t, &config))
            .collect();
        Self { members, config }
    }

    /// Brings the fleet to `targets`: members whose target is unchanged keep their session,
    /// backoff and event baseline; changed ones (a rotated password, a new address) start
    /// afresh; removed ones are logged out. Returns (added or changed, removed).
    pub async fn reconcile(&mut self, targets: Vec<Target>) -> (usize, usize) {
        let mut old: std::collections::HashMap<String, Member> = self
            .members
            .drain(..)
            .map(|m| (m.name.clone(), m))
            .collect();
        let mut changed = 0;
        let mut replaced = Vec::new();
        for t in targets {
            match old.remove(&t.name) {
                Some(mut m) if m.target == t.endpoint => {
                    m.interval = t.interval;
                    self.members.push(m);
                }
                previous => {
                    replaced.extend(previous);
                    changed += 1;
                    self.members.push(Member::new(t, &self.config));
                }
            }
        }
        let removed = old.len();
        let mut retired = Fleet {
            members: old.into_values().chain(replaced).collect(),
            config: self.config.clone(),
        };
        retired.logout().await;
        (changed, removed)
    }

    /// Deletes every open session, all BMCs at once (call on shutdown: leaked sessions exhaust
    /// BMC slots; one at a time would take hours on a slow fleet).
    pub async fn logout(&mut self) {
        let mut tasks = JoinSet::new();
        for m in &mut self.members {
            if let Some(login) = m.session.take() {
                m.auth = Auth::Unsettled;
                let name = m.name.clone();
                let deadline = self.config.deadline;
                tasks.spawn(async move {
                    match tokio::time::timeout(deadline, login.session.delete()).await {
                        Ok(Ok(_)) => {}
                        Ok(Err(e)) => {
                            tracing::debug!(bmc = %name, error = %e, "session logout failed");
                        }
                        Err(_) => tracing::debug!(bmc = %name, "session logout timed out"),
                    }
                });
            }
        }
        while tasks.join_next().await.is_some() {}
    }

    pub fn members(&self) -> &[Member] {
        &self.members
    }

    /// Polls every BMC that is not backing off, at most `concurrency` at a time.
    pub async fn poll_cycle(&mut self, now: Instant) -> CycleReport {
        let semaphore = Arc::new(Semaphore::new(self.config.concurrency.max(1)));
        let mut tasks = JoinSet::new();
        let mut report = CycleReport::default();
        for (i, m) in self.members.iter_mut().enumerate() {
            if !m.backoff.due(now) {
                report.skipped.push(m.name.clone());
                continue;
            }
            if !m.due(now) {
                report.not_due += 1;
                continue;
            }
            let first_failed = m.collect_inventory(&self.config).await;
            if let Some(e) = first_failed {
                m.backoff
                    .on_failure(e.class(), Instant::now(), m.hint.take());
                report.outcomes.push(Outcome {
                    name: m.name.clone(),
                    result: Err(e),
                    elapsed: Duration::ZERO,
                });
                continue;
            }
            // A full poll that outlived its cycle holds the session; before the first one ends
            // there is nothing to read light.
            if m.inventory.is_some() && (m.inventory_holds_session || m.base.is_none()) {
                report.pending.push(m.name.clone());
                continue;
            }
            m.last_polled = Some(now);
            let base = m.base.clone().filter(|_| m.light);
            if base.is_some() {
                m.start_periodic_full(&self.config);
            }
            let job = Job {
                endpoint: m.endpoint.clone(),
                hint: m.hint.clone(),
                basic: m.basic.clone(),
                session: m.session.take(),
                auth: m.auth,
                use_expand: m.use_expand,
            };
            let config = self.config.clone();
            let semaphore = semaphore.clone();
            tasks.spawn(async move {
                let start = Instant::now();
                let done = match semaphore.acquire_owned().await {
                    Err(e) => Done::Polled(Err(PollError::Task(e.to_string())), job),
                    Ok(_permit) => job.poll(base, &config).await,
                };
                (i, done, start.elapsed())
            });
        }
        while let Some(joined) = tasks.join_next().await {
            let Ok((i, done, elapsed)) = joined else {
                continue;
            };
            let member = &mut self.members[i];
            let (mut result, job) = match done {
                Done::Polled(result, job) => (result, job),
                Done::Overflowed(handle) => {
                    member.inventory = Some(handle);
                    member.inventory_holds_session = true;
                    report.pending.push(member.name.clone());
                    continue;
                }
            };
            if let Ok(sample) = &mut result {
                member.took(sample, elapsed, &self.config);
                member.new_events_only(sample);
            }
            member.restore(job);
            match &result {
                Ok(sample) => {
                    member.hint.take();
                    member.backoff.on_success();
                    if sample.expand_refused {
                        member.use_expand = false;
                    }
                }
                Err(e) => {
                    // A light poll that read nothing may be reading a tree that is gone (new
                    // firmware, other URIs): the next poll brings a full one in the background.
                    if member.light {
                        member.light_polls = self.config.full_every;
                    }
                    member
                        .backoff
                        .on_failure(e.class(), Instant::now(), member.hint.take());
                }
            }
            report.outcomes.push(Outcome {
                name: member.name.clone(),
                result,
                elapsed,
            });
        }
        report.outcomes.sort_by(|a, b| a.name.cmp(&b.name));
        report
    }
}

/// How one member's poll in a cycle ended.
#[allow(clippy::large_enum_variant)] // one per BMC per cycle, moved once
enum Done {
    Polled(Result<BmcSample, PollError>, Job),
    /// A full poll that outlived the deadline while the BMC kept answering: still running.
    Overflowed(tokio::task::JoinHandle<Background>),
}

impl Job {
    /// A light poll over `base` within the deadline, or a full one that may go on in the
    /// background when the deadline passes while the BMC is still answering.
    async fn poll(self, base: Option<Arc<BmcSample>>, config: &PollConfig) -> Done {
        let deadline = config.deadline;
        if base.is_some() {
            return match tokio::time::timeout(deadline, self.run(base)).await {
                Ok((result, job)) => Done::Polled(result, job),
                Err(_) => Done::Polled(Err(PollError::Timeout(deadline)), Job::lost()),
            };
        }
        let hint = self.hint.clone();
        hint.reset_answered();
        let inventory_deadline = config.inventory_deadline;
        let started = Instant::now();
        let mut handle = tokio::spawn(async move {
            match tokio::time::timeout(inventory_deadline, self.run(None)).await {
                Ok((result, job)) => (result, Some(job), started.elapsed()),
                Err(_) => (
                    Err(PollError::Timeout(inventory_deadline)),
                    None,
                    started.elapsed(),
                ),
            }
        });
        match tokio::time::timeout(deadline, &mut handle).await {
            Ok(Ok((result, job, _))) => Done::Polled(result, job.unwrap_or_else(Job::lost)),
            Ok(Err(e)) => Done::Polled(Err(PollError::Task(e.to_string())), Job::lost()),
            Err(_) if hint.answered() => Done::Overflowed(handle),
            // Nothing answered: a dead or hung BMC. The job (and any session it opened) is lost
            // with the timeout; the BMC expires such a session on its own.
            Err(_) => {
                handle.abort();
                Done::Polled(Err(PollError::Timeout(deadline)), Job::lost())
            }
        }
    }
}

impl Member {
    /// Takes back the session and authentication a job used.
    fn restore(&mut self, job: Job) {
        if job.auth != Auth::Unsettled || job.session.is_some() {
            self.auth = job.auth;
        }
        self.session = job.session;
    }

    /// Learns from a poll's sample: a full one becomes the base of light polls (light from now
    /// on when it was slow); a light one gets the events of the last background full poll, and
    /// asks for a full poll soon when the tree changed under it.
    fn took(&mut self, sample: &mut BmcSample, elapsed: Duration, config: &PollConfig) {
        if sample.light {
            self.light_polls = self.light_polls.saturating_add(1);
            if sample.stale_plan {
                self.light_polls = config.full_every;
            }
            sample.events.append(&mut self.pending_events);
        } else {
            self.full_done(sample, elapsed, config);
        }
    }

    fn full_done(&mut self, sample: &BmcSample, elapsed: Duration, config: &PollConfig) {
        self.light = elapsed > config.deadline / 4;
        self.light_polls = 0;
        self.base = Some(Arc::new(BmcSample {
            events: Vec::new(),
            ..sample.clone()
        }));
    }

    /// Takes in a finished background full poll. Returns the error of a first full poll that
    /// failed (the BMC's outcome this cycle); a later one that fails leaves the base as it was.
    async fn collect_inventory(&mut self, config: &PollConfig) -> Option<PollError> {
        let handle = self.inventory.take_if(|h| h.is_finished())?;
        self.inventory_holds_session = false;
        let (result, job, elapsed) = match handle.await {
            Ok(done) => done,
            Err(e) => (Err(PollError::Task(e.to_string())), None, Duration::ZERO),
        };
        if let Some(job) = job {
            self.restore(job);
        }
        match result {
            Ok(mut sample) => {
                // It ran for minutes: readings come from a light poll on the new base.
                self.full_done(&sample, elapsed, config);
                self.light = true;
                self.new_events_only(&mut sample);
                self.pending_events.append(&mut sample.events);
                None
            }
            Err(e) if self.base.is_none() => Some(e),
            Err(e) => {
                tracing::debug!(bmc = %self.name, error = %e, "background full poll failed");
                self.light_polls = 0;
                None
            }
        }
    }

    /// Starts the periodic full poll in the background when due, on the current session (it
    /// never logs in: the light polls keep the session alive).
    fn start_periodic_full(&mut self, config: &PollConfig) {
        if self.inventory.is_some() || self.light_polls + 1 < config.full_every {
            return;
        }
        let client = match (&self.session, &self.basic) {
            (Some(s), _) => s.client.clone(),
            (None, Ok(b)) if self.auth == Auth::Basic => b.clone(),
            _ => return,
        };
        let (use_expand, hint) = (self.use_expand, self.hint.clone());
        let deadline = config.inventory_deadline;
        self.inventory = Some(tokio::spawn(async move {
            let started = Instant::now();
            let expand_sensors = use_expand && hint.expands();
            let result = match tokio::time::timeout(
                deadline,
                redfish::collect_with(client, use_expand, expand_sensors),
            )
            .await
            {
                Ok(r) => r.map_err(PollError::from),
                Err(_) => Err(PollError::Timeout(deadline)),
            };
            (result, None, started.elapsed())
        }));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_caps_and_resets() {
        let now = Instant::now();
        let mut b = Backoff::new(Duration::from_secs(10), Duration::from_mins(5), "bmc-a");
        assert!(b.due(now));
        let d1 = b.on_failure(FailureClass::Transport, now, None);
        assert!(!b.due(now) && b.due(now + d1));
        let d2 = b.on_failure(FailureClass::Transport, now, None);
        assert!(
            d1 >= Duration::from_secs(10) && d1 <= Duration::from_secs(12),
            "{d1:?}"
        );
        assert!(
            d2 >= Duration::from_secs(20) && d2 <= Duration::from_secs(24),
            "{d2:?}"
        );
        for _ in 0..20 {
            let d = b.on_failure(FailureClass::ServerError, now, None);
            assert!(d <= Duration::from_mins(6), "{d:?}");
        }
        b.on_success();
        assert!(b.due(now) && b.failures() == 0);
    }

    #[test]
    fn bad_credentials_back_off_to_the_cap_at_once() {
        let now = Instant::now();
        let mut b = Backoff::new(Duration::from_secs(10), Duration::from_mins(10), "bmc-b");
        assert!(b.on_failure(FailureClass::Unauthorized, now, None) >= Duration::from_mins(10));
    }

    #[test]
    fn jitter_differs_between_bmcs() {
        let now = Instant::now();
        let delays: std::collections::BTreeSet<Duration> = (0..20)
            .map(|i| {
                Backoff::new(
                    Duration::from_secs(10),
                    Duration::from_mins(10),
                    &format!("bmc-{i}"),
                )
                .on_failure(FailureClass::Transport, now, None)
            })
            .collect();
        assert!(delays.len() > 10, "{delays:?}");
    }
}
