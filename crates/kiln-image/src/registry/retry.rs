//! Retrying what fails for a moment: which failures are transient, and how long to wait.

use std::time::Duration;

/// How [`super::Repository`] retries a request that failed transiently: the connection was
/// refused, reset or timed out, or the registry answered 5xx, 429 (too many requests) or 408
/// (request timeout). Other 4xx answers are never retried.
///
/// The wait doubles after each failure, from [`RetryPolicy::first_delay`] up to
/// [`RetryPolicy::max_delay`]; it is not jittered, so tests see the same timing every run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempts in all, the first one included; 0 counts as 1 (no retry).
    pub attempts: u32,
    /// The wait after the first failure.
    pub first_delay: Duration,
    /// The longest wait between two attempts.
    pub max_delay: Duration,
}

impl Default for RetryPolicy {
    /// 5 attempts, waiting 0.25 s, 0.5 s, 1 s and 2 s between them (4 s at most).
    fn default() -> Self {
        RetryPolicy {
            attempts: 5,
            first_delay: Duration::from_millis(250),
            max_delay: Duration::from_secs(4),
        }
    }
}

impl RetryPolicy {
    /// The wait after `failures` failed attempts in a row (1 for the first failure).
    pub fn delay(&self, failures: u32) -> Duration {
        let doublings = failures.saturating_sub(1).min(30);
        self.first_delay
            .saturating_mul(1u32 << doublings)
            .min(self.max_delay)
    }

    /// Whether another attempt may follow `failures` failed ones.
    pub(super) fn again(&self, failures: u32) -> bool {
        failures < self.attempts.max(1)
    }
}

/// Whether an answer is worth asking again for: the registry is overloaded or broken for now.
pub(super) fn transient_status(status: reqwest::StatusCode) -> bool {
    status.is_server_error()
        || status == reqwest::StatusCode::TOO_MANY_REQUESTS
        || status == reqwest::StatusCode::REQUEST_TIMEOUT
}

/// Whether a request that got no answer is worth sending again: anything but a request kiln
/// could not build or a redirect loop (refused, reset, timed out, broken off).
pub(super) fn transient_error(e: &reqwest::Error) -> bool {
    e.status().is_none() && !e.is_builder() && !e.is_redirect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_double_up_to_the_cap() {
        let p = RetryPolicy::default();
        let ms: Vec<u128> = (1..=7).map(|n| p.delay(n).as_millis()).collect();
        assert_eq!(ms, vec![250, 500, 1000, 2000, 4000, 4000, 4000]);
        assert!(p.again(4) && !p.again(5));
        let none = RetryPolicy { attempts: 0, ..p };
        assert!(!none.again(1));
        assert!(transient_status(reqwest::StatusCode::BAD_GATEWAY));
        assert!(transient_status(reqwest::StatusCode::TOO_MANY_REQUESTS));
        assert!(!transient_status(reqwest::StatusCode::NOT_FOUND));
        assert!(!transient_status(reqwest::StatusCode::UNAUTHORIZED));
    }
}
