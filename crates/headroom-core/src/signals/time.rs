//! Times and durations as rate-limit headers write them, and the heuristics that tell an epoch
//! timestamp from a delay.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use chrono::{DateTime, NaiveDateTime};

/// Durations longer than this are treated as absurd and dropped (no API resets a quota or asks
/// for a wait of more than about a year).
pub(crate) const MAX_SECS: f64 = 400.0 * 86_400.0;

/// Numbers at or above this are epoch milliseconds (1e12 ms is September 2001).
const EPOCH_MILLIS_FROM: f64 = 1e12;
/// Numbers at or above this are epoch seconds (1e9 s is September 2001); below, a delay.
const EPOCH_SECS_FROM: f64 = 1e9;

/// Seconds as a duration, if finite, not negative and not absurdly long.
pub(crate) fn secs(s: f64) -> Option<Duration> {
    if s.is_finite() && (0.0..=MAX_SECS).contains(&s) {
        Some(Duration::from_secs_f64(s))
    } else {
        None
    }
}

/// Time from `now` until the absolute time `at` (both seconds since the epoch); a time in the
/// past is zero.
pub(crate) fn until(at: f64, now: f64) -> Option<Duration> {
    let d = at - now;
    if d.is_nan() {
        None
    } else {
        secs(d.max(0.0))
    }
}

/// Reads a reset or retry time in any form APIs use, as the time left from `now`:
/// an HTTP-date or ISO-8601 time (absolute), a duration with units such as `"6m0s"` or
/// `"20ms"` (a delay), or a number: epoch milliseconds from 1e12, epoch seconds from 1e9, and
/// a delay in seconds below that.
pub(crate) fn parse_when(value: &str, now: f64) -> Option<Duration> {
    let v = value.trim();
    if let Some(d) = parse_when_one(v, now) {
        return Some(d);
    }
    // A repeated field arrives as a comma list; dates contain commas, so this comes second.
    match v.split_once(',') {
        Some((first, _)) => parse_when_one(first.trim(), now),
        None => None,
    }
}

fn parse_when_one(v: &str, now: f64) -> Option<Duration> {
    if v.is_empty() {
        return None;
    }
    if let Ok(n) = v.parse::<f64>() {
        return number_when(n, now);
    }
    if v.starts_with(|c: char| c.is_ascii_digit() || c == '.') {
        if let Ok(d) = crate::duration::parse_duration(v) {
            return secs(d.as_secs_f64());
        }
    }
    parse_instant(v).and_then(|at| until(at, now))
}

/// A reset written as a number, by the heuristic of [`parse_when`].
pub(crate) fn number_when(n: f64, now: f64) -> Option<Duration> {
    if !n.is_finite() || n < 0.0 {
        None
    } else if n >= EPOCH_MILLIS_FROM {
        until(n / 1000.0, now)
    } else if n >= EPOCH_SECS_FROM {
        until(n, now)
    } else {
        secs(n)
    }
}

/// Reads an absolute time written as an HTTP-date (IMF-fixdate, RFC 850 or asctime) or as
/// RFC 3339 / ISO-8601 (a time without an offset is taken as UTC), in seconds since the epoch.
pub fn parse_instant(value: &str) -> Option<f64> {
    let v = value.trim();
    if v.is_empty() {
        return None;
    }
    if let Ok(t) = httpdate::parse_http_date(v) {
        return system_time_secs(t);
    }
    if let Ok(t) = DateTime::parse_from_rfc3339(v) {
        return Some(chrono_secs(t.timestamp(), t.timestamp_subsec_nanos()));
    }
    for fmt in ["%Y-%m-%dT%H:%M:%S%.f%z", "%Y-%m-%d %H:%M:%S%.f%z"] {
        if let Ok(t) = DateTime::parse_from_str(v, fmt) {
            return Some(chrono_secs(t.timestamp(), t.timestamp_subsec_nanos()));
        }
    }
    for fmt in ["%Y-%m-%dT%H:%M:%S%.f", "%Y-%m-%d %H:%M:%S%.f"] {
        if let Ok(t) = NaiveDateTime::parse_from_str(v, fmt) {
            let t = t.and_utc();
            return Some(chrono_secs(t.timestamp(), t.timestamp_subsec_nanos()));
        }
    }
    None
}

fn system_time_secs(t: SystemTime) -> Option<f64> {
    t.duration_since(UNIX_EPOCH).ok().map(|d| d.as_secs_f64())
}

fn chrono_secs(secs: i64, nanos: u32) -> f64 {
    secs as f64 + f64::from(nanos) / 1e9
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: f64 = 1_795_867_200.0; // Sat, 28 Nov 2026 12:00:00 GMT

    fn when(v: &str) -> Option<f64> {
        parse_when(v, NOW).map(|d| d.as_secs_f64())
    }

    #[test]
    fn numbers_by_magnitude() {
        assert_eq!(when("30"), Some(30.0));
        assert_eq!(when("0.25"), Some(0.25));
        assert_eq!(when("1795867500"), Some(300.0));
        assert_eq!(when("1795867500000"), Some(300.0));
        let frac = when("1795867264.57").unwrap();
        assert!((frac - 64.57).abs() < 1e-3);
    }

    #[test]
    fn absolute_times() {
        assert_eq!(when("2026-11-28T12:05:00Z"), Some(300.0));
        assert_eq!(when("2026-11-28T13:05:00+01:00"), Some(300.0));
        assert_eq!(when("2026-11-28T12:05:00.500Z"), Some(300.5));
        assert_eq!(when("2026-11-28T12:05:00"), Some(300.0));
        assert_eq!(when("2026-11-28 12:05:00+0000"), Some(300.0));
        assert_eq!(when("Sat, 28 Nov 2026 12:02:00 GMT"), Some(120.0));
        assert_eq!(when("Saturday, 28-Nov-26 12:02:00 GMT"), Some(120.0));
        assert_eq!(when("Sat Nov 28 12:02:00 2026"), Some(120.0));
    }

    #[test]
    fn durations_with_units() {
        assert_eq!(when("6m0s"), Some(360.0));
        assert_eq!(when("20ms"), Some(0.02));
        assert_eq!(when("1.5s"), Some(1.5));
    }

    #[test]
    fn past_is_zero_and_junk_is_dropped() {
        assert_eq!(when("1795867000"), Some(0.0));
        assert_eq!(when("Sat, 28 Nov 2026 11:00:00 GMT"), Some(0.0));
        for junk in [
            "",
            "-5",
            "NaN",
            "inf",
            "1e30",
            "soon",
            "40000000",
            "12abc",
            "2099-01-01T00:00:00Z",
        ] {
            assert_eq!(when(junk), None, "{junk}");
        }
    }

    #[test]
    fn repeated_field_takes_first() {
        assert_eq!(when("30, 30"), Some(30.0));
    }
}
