//! A token bucket limiting download bandwidth.
//!
//! Tokens (bytes) accrue at `rate` per second up to a small burst; taking
//! more than there are leaves a debt that is slept off at once, so over any
//! stretch longer than the burst the average stays at or below `rate`.
//! Blocking (`std::thread::sleep`): the downloader runs on its own thread.

use std::time::{Duration, Instant};

/// Limits bytes per second.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    rate: f64,
    capacity: f64,
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    /// A bucket allowing `bytes_per_second` (at least 1), starting empty.
    pub fn new(bytes_per_second: u64) -> Self {
        let rate = bytes_per_second.max(1) as f64;
        // A quarter second's worth, between 1 KiB and 64 KiB: small enough
        // that the link is not flooded, large enough that reads are not tiny.
        let capacity = (rate / 4.0).clamp(1024.0, 65_536.0);
        Self {
            rate,
            capacity,
            tokens: 0.0,
            last: Instant::now(),
        }
    }

    /// The most bytes worth reading at once.
    pub fn burst(&self) -> usize {
        self.capacity as usize
    }

    /// Account for `bytes` just transferred, sleeping as long as needed to
    /// keep to the rate.
    pub fn take(&mut self, bytes: u64) {
        let now = Instant::now();
        let elapsed = now.duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + elapsed * self.rate).min(self.capacity);
        self.tokens -= bytes as f64;
        if self.tokens < 0.0 {
            let wait = Duration::from_secs_f64(-self.tokens / self.rate);
            std::thread::sleep(wait);
            self.last = Instant::now();
            // The sleep paid the debt; what accrued beyond it is not kept
            // (a late wake-up must not become a burst).
            self.tokens = 0.0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn burst_is_bounded() {
        assert_eq!(TokenBucket::new(1).burst(), 1024);
        assert_eq!(TokenBucket::new(100_000).burst(), 25_000);
        assert_eq!(TokenBucket::new(100_000_000).burst(), 65_536);
    }

    #[test]
    fn taking_more_than_the_rate_waits() {
        // 40 KiB at 80 KiB/s: at least half a second (sleeps never end early).
        let mut b = TokenBucket::new(80 * 1024);
        let start = Instant::now();
        for _ in 0..10 {
            b.take(4096);
        }
        assert!(
            start.elapsed() >= Duration::from_millis(490),
            "{:?}",
            start.elapsed()
        );
    }
}
