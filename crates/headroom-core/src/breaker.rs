//! A circuit breaker per budget: closed → open after sustained failure → half-open probe.

use std::time::Duration;

use serde::Serialize;

use crate::clock::Timestamp;

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BreakerConfig {
    /// Consecutive failures (5xx without throttling, transport errors) that open the breaker.
    pub failure_threshold: u32,
    /// How long the breaker stays open before it lets one probe through.
    pub open_for: Duration,
    /// Each failed probe doubles the open time, up to this.
    pub max_open_for: Duration,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        BreakerConfig {
            failure_threshold: 5,
            open_for: Duration::from_secs(30),
            max_open_for: Duration::from_secs(300),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum BreakerState {
    /// Calls flow; failures are counted.
    Closed { consecutive_failures: u32 },
    /// Calls are refused until `until`.
    Open {
        #[serde(skip)]
        until: Timestamp,
        reopened: u32,
    },
    /// One probe call may go; its outcome closes or reopens the breaker.
    HalfOpen {
        probe_in_flight: bool,
        reopened: u32,
    },
}

/// Why the breaker refused a call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerRefusal {
    /// Open until this time.
    OpenUntil(Timestamp),
    /// Half-open, and its one probe is in flight.
    Probing,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Breaker {
    state: BreakerState,
}

impl Default for Breaker {
    fn default() -> Self {
        Breaker {
            state: BreakerState::Closed {
                consecutive_failures: 0,
            },
        }
    }
}

impl Breaker {
    pub fn state(&self) -> BreakerState {
        self.state
    }

    pub fn is_closed(&self) -> bool {
        matches!(self.state, BreakerState::Closed { .. })
    }

    /// Whether a call may go now, without taking the probe slot.
    pub fn check(&self, now: Timestamp) -> Result<(), BreakerRefusal> {
        match self.state {
            BreakerState::Closed { .. } => Ok(()),
            BreakerState::Open { until, .. } if now < until => {
                Err(BreakerRefusal::OpenUntil(until))
            }
            BreakerState::Open { .. } => Ok(()),
            BreakerState::HalfOpen {
                probe_in_flight: true,
                ..
            } => Err(BreakerRefusal::Probing),
            BreakerState::HalfOpen { .. } => Ok(()),
        }
    }

    /// Records that a call is going. Returns true when it is the half-open probe.
    pub fn on_dispatch(&mut self, now: Timestamp) -> bool {
        match self.state {
            BreakerState::Open { until, reopened } if now >= until => {
                self.state = BreakerState::HalfOpen {
                    probe_in_flight: true,
                    reopened,
                };
                true
            }
            BreakerState::HalfOpen {
                probe_in_flight: false,
                reopened,
            } => {
                self.state = BreakerState::HalfOpen {
                    probe_in_flight: true,
                    reopened,
                };
                true
            }
            _ => false,
        }
    }

    pub fn on_success(&mut self) {
        self.state = BreakerState::Closed {
            consecutive_failures: 0,
        };
    }

    pub fn on_failure(&mut self, now: Timestamp, was_probe: bool, config: &BreakerConfig) {
        match self.state {
            BreakerState::Closed {
                consecutive_failures,
            } => {
                let failures = consecutive_failures + 1;
                self.state = if failures >= config.failure_threshold.max(1) {
                    BreakerState::Open {
                        until: now + config.open_for,
                        reopened: 0,
                    }
                } else {
                    BreakerState::Closed {
                        consecutive_failures: failures,
                    }
                };
            }
            BreakerState::HalfOpen { reopened, .. } if was_probe => {
                let reopened = reopened.saturating_add(1);
                let open_for = config
                    .open_for
                    .checked_mul(2u32.saturating_pow(reopened.min(16)))
                    .unwrap_or(config.max_open_for)
                    .min(config.max_open_for);
                self.state = BreakerState::Open {
                    until: now + open_for,
                    reopened,
                };
            }
            // A call dispatched before the breaker opened failing late adds nothing new.
            _ => {}
        }
    }

    /// A probe that ended without an outcome (cancelled) frees the probe slot.
    pub fn on_abandoned(&mut self, was_probe: bool) {
        if let BreakerState::HalfOpen { reopened, .. } = self.state {
            if was_probe {
                self.state = BreakerState::HalfOpen {
                    probe_in_flight: false,
                    reopened,
                };
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(secs: f64) -> Timestamp {
        Timestamp::from_secs_f64(secs)
    }

    #[test]
    fn opens_after_threshold_and_probes_after_open_for() {
        let cfg = BreakerConfig {
            failure_threshold: 3,
            open_for: Duration::from_secs(10),
            max_open_for: Duration::from_secs(40),
        };
        let mut b = Breaker::default();
        for _ in 0..2 {
            b.on_failure(t(0.0), false, &cfg);
        }
        assert!(b.check(t(0.0)).is_ok());
        b.on_failure(t(1.0), false, &cfg);
        assert_eq!(b.check(t(5.0)), Err(BreakerRefusal::OpenUntil(t(11.0))));

        // After open_for, exactly one probe goes.
        assert!(b.check(t(11.0)).is_ok());
        assert!(b.on_dispatch(t(11.0)));
        assert_eq!(b.check(t(11.0)), Err(BreakerRefusal::Probing));

        // A failed probe reopens for twice as long.
        b.on_failure(t(12.0), true, &cfg);
        assert_eq!(b.check(t(12.0)), Err(BreakerRefusal::OpenUntil(t(32.0))));
        assert!(b.on_dispatch(t(32.0)));
        b.on_success();
        assert!(b.is_closed());
        assert!(!b.on_dispatch(t(33.0)));
    }

    #[test]
    fn success_resets_the_failure_count() {
        let cfg = BreakerConfig::default();
        let mut b = Breaker::default();
        for _ in 0..4 {
            b.on_failure(t(0.0), false, &cfg);
        }
        b.on_success();
        for _ in 0..4 {
            b.on_failure(t(0.0), false, &cfg);
        }
        assert!(b.is_closed());
    }

    #[test]
    fn reopen_time_is_capped() {
        let cfg = BreakerConfig {
            failure_threshold: 1,
            open_for: Duration::from_secs(10),
            max_open_for: Duration::from_secs(25),
        };
        let mut b = Breaker::default();
        b.on_failure(t(0.0), false, &cfg);
        let mut now = 10.0;
        for _ in 0..5 {
            assert!(b.on_dispatch(t(now)));
            b.on_failure(t(now), true, &cfg);
            match b.state() {
                BreakerState::Open { until, .. } => {
                    assert!(until.saturating_since(t(now)) <= Duration::from_secs(25));
                    now = until.as_secs_f64();
                }
                s => panic!("expected open, got {s:?}"),
            }
        }
    }
}
