use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

/// Requests-per-minute and tokens-per-minute limits shared by every worker of a client.
///
/// Each limit is a token bucket that refills continuously at `limit / 60` per second and holds
/// at most one second's worth (at least one unit): the per-minute rate is kept, and bursts stay
/// short, as providers enforce limits over sub-minute windows. A cost larger than the bucket
/// waits for a full bucket and then leaves it in debt, so a long prompt is delayed, never
/// refused. Token costs are estimates made before a call ([`crate::LlmRequest::estimated_tokens`]),
/// corrected with the reported usage by [`RateLimiter::settle`].
#[derive(Debug)]
pub struct RateLimiter {
    buckets: Mutex<Buckets>,
}

#[derive(Debug)]
struct Buckets {
    requests: Option<Bucket>,
    tokens: Option<Bucket>,
}

#[derive(Debug)]
struct Bucket {
    capacity: f64,
    per_second: f64,
    level: f64,
    updated: Instant,
}

impl Bucket {
    fn per_minute(limit: u32, now: Instant) -> Self {
        let per_second = f64::from(limit) / 60.0;
        let capacity = per_second.max(1.0);
        Self {
            capacity,
            per_second,
            level: capacity,
            updated: now,
        }
    }

    fn refill(&mut self, now: Instant) {
        if now > self.updated {
            let elapsed = (now - self.updated).as_secs_f64();
            self.level = (self.level + elapsed * self.per_second).min(self.capacity);
            self.updated = now;
        }
    }

    fn wait_for(&self, cost: f64) -> Duration {
        let needed = cost.min(self.capacity);
        if self.level >= needed {
            Duration::ZERO
        } else {
            Duration::from_secs_f64((needed - self.level) / self.per_second)
        }
    }
}

impl RateLimiter {
    /// A limiter for these per-minute limits; `None` means no limit of that kind.
    pub fn new(requests_per_minute: Option<u32>, tokens_per_minute: Option<u32>) -> Self {
        Self::starting_at(requests_per_minute, tokens_per_minute, Instant::now())
    }

    fn starting_at(rpm: Option<u32>, tpm: Option<u32>, now: Instant) -> Self {
        let buckets = Buckets {
            requests: rpm.map(|limit| Bucket::per_minute(limit, now)),
            tokens: tpm.map(|limit| Bucket::per_minute(limit, now)),
        };
        Self {
            buckets: Mutex::new(buckets),
        }
    }

    /// Blocks until `requests` requests that use about `tokens` tokens may start, and takes
    /// them from the budget.
    pub fn acquire(&self, requests: usize, tokens: u64) {
        while let Some(wait) = self.try_acquire(requests, tokens, Instant::now()) {
            std::thread::sleep(wait);
        }
    }

    /// Takes the budget if it is there at `now` (`None`), or says how long to wait.
    fn try_acquire(&self, requests: usize, tokens: u64, now: Instant) -> Option<Duration> {
        let mut guard = self.buckets.lock().unwrap_or_else(PoisonError::into_inner);
        let buckets = &mut *guard;
        let costs = [(requests as f64), (tokens as f64)];
        let mut wait = Duration::ZERO;
        for (bucket, cost) in [buckets.requests.as_mut(), buckets.tokens.as_mut()]
            .into_iter()
            .zip(costs)
        {
            if let Some(bucket) = bucket {
                bucket.refill(now);
                wait = wait.max(bucket.wait_for(cost));
            }
        }
        if !wait.is_zero() {
            return Some(wait);
        }
        for (bucket, cost) in [buckets.requests.as_mut(), buckets.tokens.as_mut()]
            .into_iter()
            .zip(costs)
        {
            if let Some(bucket) = bucket {
                bucket.level -= cost;
            }
        }
        None
    }

    /// Replaces a call's estimated token cost with the tokens it really used.
    pub fn settle(&self, estimated_tokens: u64, used_tokens: u64) {
        let mut buckets = self.buckets.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(bucket) = buckets.tokens.as_mut() {
            let refund = estimated_tokens as f64 - used_tokens as f64;
            bucket.level = (bucket.level + refund).min(bucket.capacity);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn level(limiter: &RateLimiter, tokens: bool) -> f64 {
        let buckets = limiter.buckets.lock().unwrap();
        let bucket = if tokens {
            &buckets.tokens
        } else {
            &buckets.requests
        };
        bucket.as_ref().unwrap().level
    }

    #[test]
    fn requests_per_minute_hold_one_second_of_budget_then_space_requests_evenly() {
        let start = Instant::now();
        // 120 per minute: 2 per second, a bucket of 2.
        let limiter = RateLimiter::starting_at(Some(120), None, start);
        assert_eq!(limiter.try_acquire(1, 0, start), None);
        assert_eq!(limiter.try_acquire(1, 0, start), None);
        assert_eq!(
            limiter.try_acquire(1, 0, start),
            Some(Duration::from_millis(500))
        );
        let later = start + Duration::from_millis(250);
        assert_eq!(
            limiter.try_acquire(1, 0, later),
            Some(Duration::from_millis(250))
        );
        assert_eq!(
            limiter.try_acquire(1, 0, start + Duration::from_millis(500)),
            None
        );
        // A long idle time refills only up to the bucket size.
        let idle = start + Duration::from_secs(60);
        assert_eq!(limiter.try_acquire(2, 0, idle), None);
        assert_eq!(
            limiter.try_acquire(1, 0, idle),
            Some(Duration::from_millis(500))
        );
    }

    #[test]
    fn slow_limits_still_let_one_request_through_per_interval() {
        let start = Instant::now();
        // 30 per minute: a bucket of one request, refilled every 2 s.
        let limiter = RateLimiter::starting_at(Some(30), None, start);
        assert_eq!(limiter.try_acquire(1, 0, start), None);
        assert_eq!(
            limiter.try_acquire(1, 0, start),
            Some(Duration::from_secs(2))
        );
    }

    #[test]
    fn oversized_token_cost_goes_through_on_a_full_bucket_and_leaves_a_debt() {
        let start = Instant::now();
        // 6000 tokens per minute: 100 per second, a bucket of 100.
        let limiter = RateLimiter::starting_at(None, Some(6000), start);
        assert_eq!(limiter.try_acquire(1, 250, start), None);
        assert_eq!(level(&limiter, true), -150.0);
        // 50 more tokens need the debt of 150 paid plus 50: 2 s at 100 per second.
        assert_eq!(
            limiter.try_acquire(1, 50, start),
            Some(Duration::from_secs(2))
        );
        // The call used 120 tokens, not the 250 estimated: 130 come back.
        limiter.settle(250, 120);
        assert_eq!(level(&limiter, true), -20.0);
        // An underestimate is charged: 10 estimated, 60 used.
        limiter.settle(10, 60);
        assert_eq!(level(&limiter, true), -70.0);
    }

    #[test]
    fn both_limits_must_allow_a_start() {
        let start = Instant::now();
        let limiter = RateLimiter::starting_at(Some(600), Some(600), start);
        // Requests allow 10 now, tokens allow 10 now: a request of 12 tokens waits 0.2 s.
        assert_eq!(limiter.try_acquire(1, 8, start), None);
        assert_eq!(
            limiter.try_acquire(1, 4, start),
            Some(Duration::from_millis(200))
        );
        assert_eq!(level(&limiter, false), 9.0);
    }

    #[test]
    fn no_limits_never_wait() {
        let limiter = RateLimiter::new(None, None);
        for _ in 0..1000 {
            assert_eq!(limiter.try_acquire(64, 1_000_000, Instant::now()), None);
        }
    }
}
