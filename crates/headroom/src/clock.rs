//! The service's time, from one place.
//!
//! - **Waits and deadlines** use tokio's monotonic clock (`tokio::time::Instant`, `sleep`),
//!   which tests pause and advance.
//! - **Wall-clock time** — what is stored (a job's `run_at`, an attempt's times), compared
//!   across nodes and restarts, and shown — is Unix milliseconds read from the [`WallClock`]
//!   the server is built with: the system clock in production, a manual clock in tests.
//!
//! `SystemTime::now` and `std::time::Instant::now` are read here and nowhere else in the
//! crate (clippy's `disallowed-methods`, in `clippy.toml`).

use std::sync::Arc;

use headroom_core::clock::{Clock, Timestamp};

/// Milliseconds since the Unix epoch.
pub type Millis = i64;

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
        millis(self.0.now())
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

/// The system's wall-clock time in Unix milliseconds, for bookkeeping that does not decide
/// anything (when a credential or token was created, a readiness probe's value) in parts
/// built without the server's clock (the store).
pub fn system_millis() -> Millis {
    millis(UnixClock.now())
}

fn millis(t: Timestamp) -> Millis {
    (t.as_nanos() / 1_000_000) as Millis
}

/// Unix milliseconds as RFC 3339 UTC with milliseconds (`2026-03-02T10:00:00.000Z`), as the
/// API shows every time.
pub fn rfc3339(ms: Millis) -> String {
    chrono::DateTime::<chrono::Utc>::from_timestamp_millis(ms)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
        .unwrap_or_default()
}

/// The epoch milliseconds of a timestamp of a clock counted from the Unix epoch.
pub fn epoch_millis(t: Timestamp) -> Millis {
    i64::try_from(t.as_nanos() / 1_000_000).unwrap_or(i64::MAX)
}

/// The timestamp of epoch milliseconds (for setting a manual clock).
pub fn timestamp_of(ms: Millis) -> Timestamp {
    Timestamp::from_nanos(u64::try_from(ms).unwrap_or(0).saturating_mul(1_000_000))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_are_rfc3339_utc_with_milliseconds() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339(951_782_400_005), "2000-02-29T00:00:00.005Z");
        assert_eq!(rfc3339(1_740_830_461_999), "2025-03-01T12:01:01.999Z");
        assert_eq!(rfc3339(-1), "1969-12-31T23:59:59.999Z");
    }
}
