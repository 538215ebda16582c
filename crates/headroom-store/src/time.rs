//! Time as the store keeps it: Unix milliseconds, shown as RFC 3339.
//!
//! What decides anything (when a job runs, a schedule fires) comes from the server's injected
//! clock as `Millis`; the store reads the system's clock itself only for bookkeeping (when a
//! credential or token was created, a readiness probe's value, a node's heartbeat).

/// Milliseconds since the Unix epoch.
pub type Millis = i64;

/// The system's wall-clock time in Unix milliseconds.
pub fn system_millis() -> Millis {
    #[allow(clippy::disallowed_methods)] // the store's one reading of the system's wall clock
    let since = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    i64::try_from(since.as_millis()).unwrap_or(i64::MAX)
}

/// Unix milliseconds as RFC 3339 UTC with milliseconds (`2026-03-02T10:00:00.000Z`), as the
/// API shows every time.
pub fn rfc3339(ms: Millis) -> String {
    chrono::DateTime::<chrono::Utc>::from_timestamp_millis(ms)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
        .unwrap_or_default()
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
