//! Per-storefront rate limits, without I/O: a token bucket per storefront, fed by the
//! caller's clock reading (seconds on any monotonic scale), so tests need no waiting.
//!
//! Each event costs one token; a storefront's bucket holds at most `burst` tokens and
//! refills at `rate` a second. A request takes all its events' tokens or none: one
//! that does not fit is refused whole (429) with the wait until it would fit, so a
//! storefront never has to sort out which part of a batch went through.

use std::collections::HashMap;

/// One token bucket.
#[derive(Debug, Clone, PartialEq)]
pub struct Bucket {
    tokens: f64,
    last: f64,
}

/// Rate limits for every storefront.
#[derive(Debug, Clone)]
pub struct RateLimiter {
    /// Events per second per storefront; `None` means no limit.
    rate: Option<f64>,
    burst: f64,
    buckets: HashMap<String, Bucket>,
}

impl RateLimiter {
    /// `rate` events a second per storefront (`None`: unlimited), up to `burst` at once.
    pub fn new(rate: Option<f64>, burst: u64) -> Self {
        Self { rate, burst: burst as f64, buckets: HashMap::new() }
    }

    /// Takes `events` tokens from `storefront`'s bucket at clock reading `now`
    /// (seconds), or returns how long to wait until they would be there. A request of
    /// more than `burst` events never fits; the caller bounds events per request below
    /// the burst.
    pub fn take(&mut self, storefront: &str, events: u64, now: f64) -> Result<(), std::time::Duration> {
        let Some(rate) = self.rate else { return Ok(()) };
        let burst = self.burst;
        let bucket = match self.buckets.get_mut(storefront) {
            Some(b) => b,
            None => self.buckets.entry(storefront.to_owned()).or_insert(Bucket { tokens: burst, last: now }),
        };
        bucket.tokens = (bucket.tokens + (now - bucket.last).max(0.0) * rate).min(burst);
        bucket.last = bucket.last.max(now);
        let need = events as f64;
        if need <= bucket.tokens {
            bucket.tokens -= need;
            return Ok(());
        }
        let wait = if need > burst { f64::INFINITY } else { (need - bucket.tokens) / rate };
        Err(std::time::Duration::try_from_secs_f64(wait).unwrap_or(std::time::Duration::MAX))
    }
}

/// The `Retry-After` value (whole seconds, at least 1) for a wait.
pub fn retry_after_secs(wait: std::time::Duration) -> u64 {
    wait.as_secs_f64().ceil().clamp(1.0, 86_400.0) as u64
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn a_storefront_gets_its_burst_then_its_rate() {
        let mut r = RateLimiter::new(Some(100.0), 200);
        assert_eq!(r.take("a", 150, 0.0), Ok(()));
        assert_eq!(r.take("a", 50, 0.0), Ok(()));
        // Empty: one more event needs a hundredth of a second.
        assert_eq!(r.take("a", 1, 0.0), Err(Duration::from_millis(10)));
        // Another storefront has its own bucket.
        assert_eq!(r.take("b", 200, 0.0), Ok(()));
        // Half a second later: 50 tokens back; a request of 60 waits for the other 10.
        assert_eq!(r.take("a", 60, 0.5), Err(Duration::from_millis(100)));
        assert_eq!(r.take("a", 50, 0.5), Ok(()));
        // Refills stop at the burst.
        assert_eq!(r.take("a", 201, 1000.0), Err(Duration::MAX));
        assert_eq!(r.take("a", 200, 1000.0), Ok(()));
        // A clock reading from before the last one adds nothing.
        assert!(r.take("a", 1, 999.0).is_err());
    }

    #[test]
    fn a_refused_request_takes_nothing() {
        let mut r = RateLimiter::new(Some(10.0), 10);
        assert!(r.take("a", 8, 0.0).is_ok());
        assert!(r.take("a", 5, 0.0).is_err());
        assert!(r.take("a", 2, 0.0).is_ok(), "the refused request left its two tokens");
    }

    #[test]
    fn no_rate_means_no_limit() {
        let mut r = RateLimiter::new(None, 0);
        assert_eq!(r.take("a", u64::MAX, 0.0), Ok(()));
    }

    #[test]
    fn retry_after_rounds_up_to_whole_seconds() {
        assert_eq!(retry_after_secs(Duration::from_millis(10)), 1);
        assert_eq!(retry_after_secs(Duration::from_millis(1001)), 2);
        assert_eq!(retry_after_secs(Duration::MAX), 86_400);
    }
}
