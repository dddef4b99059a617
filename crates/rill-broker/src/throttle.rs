//! Replication throttles (Kafka's `leader.replication.throttled.rate` and
//! `follower.replication.throttled.rate`, bytes/s, cluster-wide dynamic configs): a token bucket
//! that bounds how fast out-of-sync replicas catch up, so moving or rebuilding a replica does
//! not starve producers and consumers. Replicas in the ISR are never throttled (as in Kafka):
//! throttling them would hold back the high watermark and every acks=all write.

use std::time::Instant;

use parking_lot::Mutex;

/// A rate limit in bytes per second; 0 means unlimited.
#[derive(Debug)]
pub struct Throttle {
    state: Mutex<Bucket>,
}

#[derive(Debug)]
struct Bucket {
    rate: u64,
    /// Bytes that may still be sent now; negative after a large batch (a debt paid off by time).
    tokens: f64,
    refilled: Instant,
}

impl Default for Throttle {
    fn default() -> Self {
        Throttle {
            state: Mutex::new(Bucket {
                rate: 0,
                tokens: 0.0,
                refilled: Instant::now(),
            }),
        }
    }
}

impl Throttle {
    /// Sets the rate (bytes/s, 0 = unlimited); a new rate starts with one second of budget.
    pub fn set_rate(&self, rate: u64) {
        let mut b = self.state.lock();
        if b.rate != rate {
            b.rate = rate;
            b.tokens = rate as f64;
            b.refilled = Instant::now();
        }
    }

    /// The rate in bytes/s (0 = unlimited).
    pub fn rate(&self) -> u64 {
        self.state.lock().rate
    }

    fn refill(b: &mut Bucket, now: Instant) {
        let elapsed = now.saturating_duration_since(b.refilled).as_secs_f64();
        b.tokens = (b.tokens + elapsed * b.rate as f64).min(b.rate as f64);
        b.refilled = now;
    }

    /// True when throttled traffic must wait (the budget is spent).
    pub fn exceeded(&self) -> bool {
        let mut b = self.state.lock();
        if b.rate == 0 {
            return false;
        }
        Self::refill(&mut b, Instant::now());
        b.tokens <= 0.0
    }

    /// Counts `bytes` of throttled traffic against the budget.
    pub fn record(&self, bytes: usize) {
        let mut b = self.state.lock();
        if b.rate == 0 {
            return;
        }
        Self::refill(&mut b, Instant::now());
        b.tokens -= bytes as f64;
    }
}

/// The rate a cluster config names: a non-negative integer, absent or invalid = unlimited (the
/// controller validates the value before it is committed).
pub fn rate_from_config(value: Option<&String>) -> u64 {
    value
        .and_then(|v| v.trim().parse::<u64>().ok())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_budget_is_spent_then_refilled_by_time() {
        let t = Throttle::default();
        assert!(!t.exceeded(), "unlimited by default");
        t.record(10 << 20);
        assert!(!t.exceeded());
        t.set_rate(100_000);
        assert!(!t.exceeded(), "a new rate starts with a second of budget");
        t.record(250_000);
        assert!(t.exceeded(), "spent: 150 KB of debt");
        std::thread::sleep(std::time::Duration::from_millis(1700));
        assert!(!t.exceeded(), "1.7 s at 100 KB/s paid the debt");
        t.set_rate(0);
        t.record(1 << 30);
        assert!(!t.exceeded(), "0 turns it off");
        assert_eq!(rate_from_config(Some(&"2048".to_owned())), 2048);
        assert_eq!(rate_from_config(None), 0);
    }
}
