//! Requests per account: a token bucket each, answered with `CallRateLimitExceededException`
//! (429, the model's throttling error) when empty.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Instant;

use crate::error::ApiError;

/// Token buckets by account.
pub struct Limiter {
    per_second: f64,
    burst: f64,
    buckets: Mutex<HashMap<String, (f64, Instant)>>,
}

impl Limiter {
    /// `per_second` requests on average, `burst` at once; 0 turns the limit off.
    pub fn new(per_second: u32, burst: u32) -> Limiter {
        Limiter {
            per_second: f64::from(per_second),
            burst: f64::from(burst.max(1)),
            buckets: Mutex::default(),
        }
    }

    /// Takes one request from the account's bucket.
    pub fn check(&self, account: &str) -> Result<(), ApiError> {
        if self.per_second <= 0.0 {
            return Ok(());
        }
        let now = Instant::now();
        let Ok(mut b) = self.buckets.lock() else {
            return Ok(());
        };
        let (tokens, at) = b.entry(account.to_string()).or_insert((self.burst, now));
        *tokens =
            (*tokens + now.duration_since(*at).as_secs_f64() * self.per_second).min(self.burst);
        *at = now;
        if *tokens < 1.0 {
            return Err(ApiError::new(
                "CallRateLimitExceededException",
                format!(
                    "account {account} sent more than {} requests a second; slow down and retry",
                    self.per_second
                ),
            ));
        }
        *tokens -= 1.0;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_is_allowed_then_refused_per_account() {
        let l = Limiter::new(1, 3);
        for _ in 0..3 {
            l.check("a").unwrap();
        }
        let e = l.check("a").unwrap_err();
        assert_eq!(
            (e.code.as_str(), e.status),
            ("CallRateLimitExceededException", 429)
        );
        l.check("b").unwrap();
        assert!(Limiter::new(0, 0).check("a").is_ok());
    }
}
