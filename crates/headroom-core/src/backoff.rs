//! Exponential backoff with full jitter, and the small seeded random source behind it.

use std::time::Duration;

/// SplitMix64: tiny, seedable and plenty for jitter. Seeded so that simulations replay.
#[derive(Debug, Clone)]
pub struct Jitter {
    state: u64,
}

impl Jitter {
    pub fn new(seed: u64) -> Self {
        Jitter { state: seed }
    }

    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A uniform number in `[0, 1)`.
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// `min(max_delay, base_delay × 2^attempt)`, with full jitter on top.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Backoff {
    pub base_delay: Duration,
    pub max_delay: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            base_delay: Duration::from_millis(500),
            max_delay: Duration::from_secs(30),
        }
    }
}

impl Backoff {
    /// The cap for the given attempt (0-based): the largest delay full jitter may pick.
    pub fn ceiling(&self, attempt: u32) -> Duration {
        let factor = 2u32.saturating_pow(attempt.min(31));
        self.base_delay
            .checked_mul(factor)
            .unwrap_or(Duration::MAX)
            .min(self.max_delay)
    }

    /// Full jitter: uniform in `[0, ceiling(attempt)]`, which spreads retries of many clients
    /// instead of synchronising them.
    pub fn delay(&self, attempt: u32, jitter: &mut Jitter) -> Duration {
        self.ceiling(attempt).mul_f64(jitter.unit())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ceiling_doubles_then_caps() {
        let b = Backoff {
            base_delay: Duration::from_millis(100),
            max_delay: Duration::from_secs(1),
        };
        assert_eq!(b.ceiling(0), Duration::from_millis(100));
        assert_eq!(b.ceiling(3), Duration::from_millis(800));
        assert_eq!(b.ceiling(4), Duration::from_secs(1));
        assert_eq!(b.ceiling(u32::MAX), Duration::from_secs(1));
    }

    #[test]
    fn full_jitter_stays_within_ceiling_and_spreads() {
        let b = Backoff::default();
        let mut j = Jitter::new(7);
        let delays: Vec<Duration> = (0..1000).map(|_| b.delay(2, &mut j)).collect();
        assert!(delays.iter().all(|d| *d <= b.ceiling(2)));
        let low = delays.iter().filter(|d| **d < b.ceiling(2) / 2).count();
        assert!(
            (400..600).contains(&low),
            "uniform spread, got {low} of 1000 in the low half"
        );
    }
}
