//! The service's time, from one place.
//!
//! - **Waits, deadlines and pacing** use tokio's monotonic clock (`tokio::time::Instant`,
//!   `sleep`; the governor reads it as a core [`Clock`] through [`MonotonicClock`]), which
//!   tests pause and advance.
//! - **Wall-clock time** — what is stored (a job's `run_at`, an attempt's times), compared
//!   across nodes and restarts, and shown — is Unix milliseconds read from the [`WallClock`]
//!   the server is built with: the system clock in production, a manual clock in tests.
//!
//! `SystemTime::now` and `std::time::Instant::now` are read here and nowhere else in the
//! crate (clippy's `disallowed-methods`, in `clippy.toml`). The store, built without the
//! server's clock, reads the system's time for its own bookkeeping (`headroom_store::time`).

use std::sync::Arc;

use headroom_core::clock::{Clock, Timestamp};

pub use headroom_store::time::{rfc3339, system_millis, Millis};

/// The system clock, counted from the Unix epoch.
#[derive(Debug, Clone, Copy, Default)]
pub struct UnixClock;

impl Clock for UnixClock {
    fn now(&self) -> Timestamp {
        #[allow(clippy::disallowed_methods)] // the one reading of the system's wall clock
        let since = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        Timestamp::ZERO + since
    }
}

/// Monotonic time for pacing (the governor's budgets, pauses and turns): tokio's clock, so that
/// tests can pause it and advance it, counted from when this clock was made.
#[derive(Debug, Clone, Copy)]
pub struct MonotonicClock {
    origin: tokio::time::Instant,
}

impl MonotonicClock {
    pub fn new() -> MonotonicClock {
        MonotonicClock {
            origin: tokio::time::Instant::now(),
        }
    }
}

impl Default for MonotonicClock {
    fn default() -> Self {
        MonotonicClock::new()
    }
}

impl Clock for MonotonicClock {
    fn now(&self) -> Timestamp {
        Timestamp::ZERO + self.origin.elapsed()
    }
}

/// Wall-clock time, injected: a core [`Clock`] counted from the Unix epoch.
#[derive(Clone)]
pub struct WallClock(Arc<dyn Clock>);

impl WallClock {
    /// The system's clock.
    pub fn system() -> WallClock {
        WallClock(Arc::new(UnixClock))
    }

    /// `clock`, read as counted from the Unix epoch (e.g. a `ManualClock` in tests).
    pub fn new(clock: Arc<dyn Clock>) -> WallClock {
        WallClock(clock)
    }

    /// The clock, for the parts that keep time in core [`Timestamp`]s (schedules, events).
    pub fn clock(&self) -> Arc<dyn Clock> {
        self.0.clone()
    }

    pub fn now(&self) -> Timestamp {
        self.0.now()
    }

    pub fn now_millis(&self) -> Millis {
        epoch_millis(self.0.now())
    }

    /// Seconds since the Unix epoch, for reading reset times that upstreams send as such.
    pub fn now_unix_secs(&self) -> f64 {
        self.0.now().as_secs_f64()
    }
}

impl Default for WallClock {
    fn default() -> Self {
        WallClock::system()
    }
}

impl std::fmt::Debug for WallClock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("WallClock")
    }
}

/// The epoch milliseconds of a timestamp of a clock counted from the Unix epoch.
pub fn epoch_millis(t: Timestamp) -> Millis {
    i64::try_from(t.as_nanos() / 1_000_000).unwrap_or(i64::MAX)
}

/// The timestamp of epoch milliseconds (for setting a manual clock).
pub fn timestamp_of(ms: Millis) -> Timestamp {
    Timestamp::from_nanos(u64::try_from(ms).unwrap_or(0).saturating_mul(1_000_000))
}
