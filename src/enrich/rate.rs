//! Per-role rate limits on inference (`[[rate_limits]]`): rows and calls per second, each a token
//! bucket holding one second's worth, shared by every session of the role. A call waits until
//! its role's buckets hold its rows and one call (a batch larger than a second's worth waits for
//! a full bucket and takes it all), so a role's statements slow down rather than fail; a cancel
//! or the client hanging up stops the wait like any other.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Deserialize;
use tokio::time::Instant;

/// One `[[rate_limits]]` table.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateRule {
    /// Database roles, exact or `prefix*`; `*` for every role. Each role has its own buckets.
    pub roles: Vec<String>,
    #[serde(default)]
    pub rows_per_second: Option<f64>,
    #[serde(default)]
    pub calls_per_second: Option<f64>,
}

/// A token bucket: `rate` tokens a second, at most `rate` held.
#[derive(Debug)]
struct Bucket {
    rate: f64,
    tokens: f64,
    at: Instant,
}

impl Bucket {
    fn new(rate: f64) -> Bucket {
        Bucket {
            rate,
            tokens: rate,
            at: Instant::now(),
        }
    }

    fn refill(&mut self, now: Instant) {
        self.tokens =
            (self.tokens + now.duration_since(self.at).as_secs_f64() * self.rate).min(self.rate);
        self.at = now;
    }

    /// Tokens a call of `n` needs: `n`, or a full bucket for more than it holds.
    fn needed(&self, n: f64) -> f64 {
        n.min(self.rate)
    }

    /// How long until `n` tokens are there (None: they are).
    fn shortfall(&self, n: f64) -> Option<Duration> {
        let needed = self.needed(n);
        (self.tokens < needed).then(|| Duration::from_secs_f64((needed - self.tokens) / self.rate))
    }

    fn spend(&mut self, n: f64) {
        self.tokens -= self.needed(n);
    }
}

fn lock(bucket: &Mutex<Bucket>) -> std::sync::MutexGuard<'_, Bucket> {
    // A bucket is a pair of numbers: usable whatever a panicking holder left.
    bucket.lock().unwrap_or_else(|p| p.into_inner())
}

/// One role's buckets.
#[derive(Debug)]
pub struct RoleLimit {
    rows: Option<Mutex<Bucket>>,
    calls: Option<Mutex<Bucket>>,
}

impl RoleLimit {
    /// Waits until a call of `rows` rows may go, then counts it.
    pub async fn admit(&self, rows: usize) {
        loop {
            let wait = {
                let now = Instant::now();
                let mut buckets: Vec<(std::sync::MutexGuard<'_, Bucket>, f64)> = Vec::new();
                if let Some(b) = &self.rows {
                    buckets.push((lock(b), rows as f64));
                }
                if let Some(b) = &self.calls {
                    buckets.push((lock(b), 1.0));
                }
                for (bucket, _) in &mut buckets {
                    bucket.refill(now);
                }
                // Both are checked before either is spent: waiting on one spends neither.
                let wait = buckets.iter().filter_map(|(b, n)| b.shortfall(*n)).max();
                if wait.is_none() {
                    for (bucket, n) in &mut buckets {
                        bucket.spend(*n);
                    }
                }
                wait
            };
            match wait {
                None => return,
                Some(wait) => tokio::time::sleep(wait).await,
            }
        }
    }
}

/// The configured rules and the buckets of the roles met so far.
#[derive(Debug, Default)]
pub struct RateLimits {
    rules: Vec<RateRule>,
    roles: Mutex<HashMap<String, Arc<RoleLimit>>>,
}

impl RateLimits {
    /// Checks the rules: a role list, and at least one positive rate each.
    pub fn new(rules: Vec<RateRule>) -> Result<RateLimits, String> {
        for (i, rule) in rules.iter().enumerate() {
            if rule.roles.is_empty() {
                return Err(format!("[[rate_limits]] rule {}: `roles` is empty", i + 1));
            }
            let rates = [rule.rows_per_second, rule.calls_per_second];
            if rates.iter().all(Option::is_none)
                || rates.iter().flatten().any(|r| !(r.is_finite() && *r > 0.0))
            {
                return Err(format!(
                    "[[rate_limits]] rule {}: give rows_per_second and/or calls_per_second, \
                     positive numbers",
                    i + 1
                ));
            }
        }
        Ok(RateLimits {
            rules,
            roles: Mutex::default(),
        })
    }

    /// The buckets of `role` (the first rule naming it), shared by its sessions; None: no limit.
    pub fn for_role(&self, role: &str) -> Option<Arc<RoleLimit>> {
        let rule = self
            .rules
            .iter()
            .find(|r| r.roles.iter().any(|p| crate::access::matches(p, role)))?;
        let mut roles = self.roles.lock().unwrap_or_else(|p| p.into_inner());
        Some(Arc::clone(roles.entry(role.to_owned()).or_insert_with(
            || {
                Arc::new(RoleLimit {
                    rows: rule.rows_per_second.map(|r| Mutex::new(Bucket::new(r))),
                    calls: rule.calls_per_second.map(|r| Mutex::new(Bucket::new(r))),
                })
            },
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(rows: Option<f64>, calls: Option<f64>) -> RateLimits {
        RateLimits::new(vec![RateRule {
            roles: vec!["analyst".into(), "etl_*".into()],
            rows_per_second: rows,
            calls_per_second: calls,
        }])
        .expect("valid")
    }

    #[tokio::test(start_paused = true)]
    async fn calls_beyond_the_rate_wait() {
        let limit = limits(None, Some(10.0))
            .for_role("analyst")
            .expect("limited");
        let started = Instant::now();
        for _ in 0..30 {
            limit.admit(1).await;
        }
        // 10 at once (the bucket's second), then one every 100 ms.
        let took = started.elapsed();
        assert!(took >= Duration::from_millis(1990), "{took:?}");
        assert!(took <= Duration::from_millis(2100), "{took:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn rows_are_counted_and_a_huge_batch_takes_a_full_bucket() {
        let limit = limits(Some(100.0), None)
            .for_role("etl_nightly")
            .expect("limited");
        let started = Instant::now();
        for _ in 0..6 {
            limit.admit(50).await;
        }
        let took = started.elapsed();
        assert!(took >= Duration::from_millis(1990), "{took:?}");
        // 500 rows at 100 a second: waits for a full bucket (1 s), not for ever.
        let before = Instant::now();
        limit.admit(500).await;
        assert!(before.elapsed() <= Duration::from_millis(1010));
    }

    #[test]
    fn roles_share_their_buckets_and_others_are_free() {
        let limits = limits(Some(1.0), Some(1.0));
        let a = limits.for_role("analyst").expect("limited");
        let b = limits.for_role("analyst").expect("limited");
        assert!(Arc::ptr_eq(&a, &b), "one bucket per role");
        assert!(limits.for_role("etl_a").is_some());
        assert!(limits.for_role("someone").is_none());
        assert!(RateLimits::new(vec![RateRule {
            roles: vec!["a".into()],
            rows_per_second: None,
            calls_per_second: None,
        }])
        .is_err());
        assert!(RateLimits::new(vec![RateRule {
            roles: vec!["a".into()],
            rows_per_second: Some(-1.0),
            calls_per_second: None,
        }])
        .is_err());
    }
}
