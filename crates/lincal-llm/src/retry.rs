use std::time::Duration;

/// When and how often a failed request is tried again.
///
/// Only retryable failures are retried ([`crate::LlmError::is_retryable`]). The wait before
/// retry `k` is uniformly random in `[0, min(max_backoff, initial_backoff * 2^(k-1))]` ("full
/// jitter": clients that failed together do not come back together), and never shorter than
/// the server's `Retry-After`, itself capped at `max_retry_after` (a server asking for a day
/// would otherwise hang the run without a word).
#[derive(Debug, Clone, PartialEq)]
pub struct RetryPolicy {
    /// Retries after the first attempt: a request is tried at most `max_retries + 1` times.
    pub max_retries: u32,
    /// The backoff cap of the first retry.
    pub initial_backoff: Duration,
    /// The backoff cap never grows past this (a server's `Retry-After` may be longer).
    pub max_backoff: Duration,
    /// The longest `Retry-After` honoured; a longer one is waited for this long.
    pub max_retry_after: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_retries: 8,
            initial_backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(60),
            max_retry_after: Duration::from_secs(300),
        }
    }
}

impl RetryPolicy {
    /// The largest wait before retry number `retry` (1 for the first retry).
    pub fn backoff_cap(&self, retry: u32) -> Duration {
        let doublings = retry.saturating_sub(1);
        self.initial_backoff
            .saturating_mul(2u32.saturating_pow(doublings))
            .min(self.max_backoff)
    }

    /// The wait before retry number `retry`, given the server's `Retry-After` if it sent one.
    pub fn delay(&self, retry: u32, retry_after: Option<Duration>) -> Duration {
        let jittered = self.backoff_cap(retry).mul_f64(rand::random::<f64>());
        retry_after.map_or(jittered, |wait| {
            wait.min(self.max_retry_after).max(jittered)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> RetryPolicy {
        RetryPolicy {
            max_retries: 5,
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_millis(500),
            max_retry_after: Duration::from_secs(10),
        }
    }

    #[test]
    fn cap_doubles_from_the_initial_backoff_up_to_the_maximum() {
        let caps: Vec<u64> = (1..=5)
            .map(|k| policy().backoff_cap(k).as_millis() as u64)
            .collect();
        assert_eq!(caps, [100, 200, 400, 500, 500]);
        // A huge retry number saturates instead of overflowing.
        assert_eq!(policy().backoff_cap(u32::MAX), Duration::from_millis(500));
    }

    #[test]
    fn delay_stays_within_the_cap_and_respects_retry_after() {
        for _ in 0..200 {
            assert!(policy().delay(2, None) <= Duration::from_millis(200));
            let wait = Duration::from_secs(3);
            assert!(policy().delay(2, Some(wait)) >= wait);
            // A day's Retry-After is waited for max_retry_after.
            let day = Duration::from_secs(86_400);
            assert_eq!(policy().delay(2, Some(day)), Duration::from_secs(10));
        }
    }
}
