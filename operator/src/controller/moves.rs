//! How fast replicas leave failing servers: a token bucket per site (default 10 moves a
//! minute), so a site-wide event (a power feed, a firmware push) does not make every replica
//! move at once. Moves of Confidential and Secret data off a breached chassis are never held.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Token buckets per site.
#[derive(Debug)]
pub struct MoveLimiter {
    per_minute: u32,
    buckets: Mutex<HashMap<String, (f64, Instant)>>,
}

impl MoveLimiter {
    pub fn new(per_minute: u32) -> Self {
        Self {
            per_minute: per_minute.max(1),
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Takes a token for a move at `site`; `urgent` moves always pass (and take none).
    pub fn try_take(&self, site: &str, urgent: bool) -> bool {
        self.try_take_at(site, urgent, Instant::now())
    }

    /// [`Self::try_take`] at a given instant (tests).
    pub fn try_take_at(&self, site: &str, urgent: bool, now: Instant) -> bool {
        if urgent {
            return true;
        }
        let capacity = f64::from(self.per_minute);
        let mut buckets = self
            .buckets
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let (tokens, last) = buckets.entry(site.to_owned()).or_insert((capacity, now));
        let refill = now.saturating_duration_since(*last).as_secs_f64() * capacity / 60.0;
        *tokens = (*tokens + refill).min(capacity);
        *last = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            true
        } else {
            false
        }
    }

    /// When the next token at a site is due, roughly (for the requeue).
    pub fn retry_after(&self) -> Duration {
        Duration::from_secs_f64(60.0 / f64::from(self.per_minute))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_site_gets_its_rate_and_urgent_moves_are_never_held() {
        let l = MoveLimiter::new(10);
        let t0 = Instant::now();
        let taken = (0..15).filter(|_| l.try_take_at("hn1", false, t0)).count();
        assert_eq!(taken, 10, "the burst is one minute's worth");
        assert!(
            l.try_take_at("hcm1", false, t0),
            "sites have their own buckets"
        );
        assert!(
            l.try_take_at("hn1", true, t0),
            "intrusion moves of sensitive data pass"
        );
        assert!(!l.try_take_at("hn1", false, t0 + Duration::from_secs(5)));
        assert!(
            l.try_take_at("hn1", false, t0 + Duration::from_secs(6)),
            "one token per 6 s"
        );
    }
}
