//! Rate-limited logging for events that repeat (a sink that keeps failing, a broker that stays
//! down, a kernel buffer that keeps overflowing): the first occurrence is logged, then at most
//! one line per interval, carrying the number of occurrences that were not logged in between.
//! The counters behind these events (metrics, shutdown totals) count every occurrence; only the
//! log lines are thinned out.
//!
//! ```
//! # use flowlens_sinks::log_limit::RateLimited;
//! let mut limit = RateLimited::default();
//! for _ in 0..3 {
//!     if let Some(suppressed) = limit.check() {
//!         tracing::warn!(suppressed, "the thing failed");
//!     }
//! }
//! ```

use std::time::{Duration, Instant};

/// Default spacing of repeated log lines of one event.
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(30);

/// One repeating event: decides whether this occurrence is logged.
#[derive(Debug, Clone)]
pub struct RateLimited {
    interval: Duration,
    last: Option<Instant>,
    suppressed: u64,
}

impl Default for RateLimited {
    fn default() -> Self {
        RateLimited::new(DEFAULT_INTERVAL)
    }
}

impl RateLimited {
    pub fn new(interval: Duration) -> Self {
        RateLimited {
            interval,
            last: None,
            suppressed: 0,
        }
    }

    /// Records one occurrence now. `Some(n)`: log it, mentioning the `n` occurrences suppressed
    /// since the last line; `None`: stay quiet (it is counted).
    pub fn check(&mut self) -> Option<u64> {
        self.check_at(Instant::now())
    }

    /// [`RateLimited::check`] at a given instant (tests).
    pub fn check_at(&mut self, now: Instant) -> Option<u64> {
        match self.last {
            Some(t) if now.saturating_duration_since(t) < self.interval => {
                self.suppressed += 1;
                None
            }
            _ => {
                self.last = Some(now);
                Some(std::mem::take(&mut self.suppressed))
            }
        }
    }

    /// Occurrences not logged since the last line.
    pub fn suppressed(&self) -> u64 {
        self.suppressed
    }
}

/// [`RateLimited`] for use behind `&self` (callbacks of other libraries, shared workers).
#[derive(Debug, Default)]
pub struct SharedRateLimited(std::sync::Mutex<RateLimited>);

impl SharedRateLimited {
    pub fn new(interval: Duration) -> Self {
        SharedRateLimited(std::sync::Mutex::new(RateLimited::new(interval)))
    }

    /// See [`RateLimited::check`]. A poisoned lock logs (never silences).
    pub fn check(&self) -> Option<u64> {
        match self.0.lock() {
            Ok(mut l) => l.check(),
            Err(_) => Some(0),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_logs_then_once_per_interval_with_the_suppressed_count() {
        let t0 = Instant::now();
        let s = Duration::from_secs(1);
        let mut l = RateLimited::new(Duration::from_secs(10));
        assert_eq!(l.check_at(t0), Some(0));
        for i in 1..=9u32 {
            assert_eq!(l.check_at(t0 + s * i), None, "at {i}s");
        }
        assert_eq!(l.suppressed(), 9);
        // The interval counts from the last logged line, not from the last occurrence.
        assert_eq!(l.check_at(t0 + s * 10), Some(9));
        assert_eq!(l.suppressed(), 0);
        assert_eq!(l.check_at(t0 + s * 11), None);
        assert_eq!(l.check_at(t0 + s * 100), Some(1));
        // A clock that goes backwards (it cannot with Instant, but be safe) stays quiet.
        assert_eq!(l.check_at(t0), None);
    }

    #[test]
    fn shared_limiter_behaves_the_same() {
        let l = SharedRateLimited::new(Duration::from_secs(3600));
        assert_eq!(l.check(), Some(0));
        assert_eq!(l.check(), None);
        assert_eq!(l.check(), None);
        assert_eq!(l.0.lock().unwrap().suppressed(), 2);
    }
}
