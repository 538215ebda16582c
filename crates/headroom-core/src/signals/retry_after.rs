//! How long to wait before retrying.
//!
//! `Retry-After` (delay-seconds, integer or fractional; any HTTP-date form; ISO-8601) and its
//! millisecond cousins `retry-after-ms` / `x-ms-retry-after-ms` say it outright. Without them,
//! a throttled response's body may (Discord's `retry_after`, Google's `RetryInfo.retryDelay`),
//! and failing that the exhausted limit's reset does.

use std::time::Duration;

use super::input::{Body, Headers};
use super::throttle::is_exhausted;
use super::{first_number, time, LimitSignal};

/// The wait the headers ask for.
pub(crate) fn from_headers(headers: &Headers, now: f64) -> Option<Duration> {
    ["retry-after-ms", "x-ms-retry-after-ms"]
        .iter()
        .find_map(|name| {
            headers
                .first(name)
                .and_then(first_number)
                .and_then(|ms| time::secs(ms / 1000.0))
        })
        .or_else(|| {
            headers
                .first("retry-after")
                .and_then(|v| time::parse_when(v, now))
        })
}

/// The wait a throttled response implies when no header says.
pub(crate) fn implied(body: &Body, limits: &[LimitSignal]) -> Option<Duration> {
    from_body(body).or_else(|| {
        limits
            .iter()
            .filter(|l| is_exhausted(l))
            .filter_map(|l| l.reset_in)
            .max()
    })
}

fn from_body(body: &Body) -> Option<Duration> {
    let json = body.json()?;
    let top_level = json
        .get("retry_after")
        .and_then(serde_json::Value::as_f64)
        .and_then(time::secs);
    top_level
        .or_else(|| {
            json.pointer("/error/details")?
                .as_array()?
                .iter()
                .filter_map(|d| d.get("retryDelay")?.as_str())
                .find_map(|delay| {
                    let d = crate::duration::parse_duration(delay).ok()?;
                    time::secs(d.as_secs_f64())
                })
        })
        .or_else(|| graphql_cost_wait(json))
}

/// Shopify GraphQL: a throttled query waits until the bucket has refilled to its requested
/// cost: `(requestedQueryCost − currentlyAvailable) / restoreRate`.
fn graphql_cost_wait(json: &serde_json::Value) -> Option<Duration> {
    let cost = json.pointer("/extensions/cost")?;
    let number = |p: &str| cost.pointer(p).and_then(serde_json::Value::as_f64);
    let requested = number("/requestedQueryCost")?;
    let available = number("/throttleStatus/currentlyAvailable")?;
    let rate = number("/throttleStatus/restoreRate").filter(|r| *r > 0.0)?;
    time::secs(((requested - available) / rate).max(0.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: f64 = 1_795_867_200.0;

    fn header_wait(lines: &[(&'static str, &'static str)]) -> Option<f64> {
        let h = Headers::collect(lines.iter().map(|(n, v)| (*n, v.as_bytes())));
        from_headers(&h, NOW).map(|d| d.as_secs_f64())
    }

    #[test]
    fn retry_after_forms() {
        assert_eq!(header_wait(&[("Retry-After", "120")]), Some(120.0));
        assert_eq!(header_wait(&[("Retry-After", "2.5")]), Some(2.5));
        assert_eq!(
            header_wait(&[("Retry-After", "Sat, 28 Nov 2026 12:02:00 GMT")]),
            Some(120.0)
        );
        assert_eq!(
            header_wait(&[("Retry-After", "Saturday, 28-Nov-26 12:02:00 GMT")]),
            Some(120.0)
        );
        assert_eq!(
            header_wait(&[("Retry-After", "Sat Nov 28 12:02:00 2026")]),
            Some(120.0)
        );
        assert_eq!(
            header_wait(&[("Retry-After", "2026-11-28T12:01:30Z")]),
            Some(90.0)
        );
        assert_eq!(
            header_wait(&[("Retry-After", "Sat, 28 Nov 2026 11:00:00 GMT")]),
            Some(0.0)
        );
        assert_eq!(
            header_wait(&[("retry-after-ms", "1500"), ("Retry-After", "2")]),
            Some(1.5)
        );
        assert_eq!(header_wait(&[("x-ms-retry-after-ms", "250")]), Some(0.25));
    }

    #[test]
    fn malformed_retry_after_is_dropped() {
        for v in ["-1", "soon", "NaN", "1e300", "99999999"] {
            assert_eq!(header_wait(&[("Retry-After", v)]), None, "{v}");
        }
    }

    #[test]
    fn body_hints() {
        let discord =
            Body::new(br#"{"message":"You are being rate limited.","retry_after":64.57}"#);
        assert_eq!(implied(&discord, &[]), Some(Duration::from_secs_f64(64.57)));
        let google = Body::new(
            br#"{"error":{"code":429,"status":"RESOURCE_EXHAUSTED","details":[
            {"@type":"type.googleapis.com/google.rpc.ErrorInfo"},
            {"@type":"type.googleapis.com/google.rpc.RetryInfo","retryDelay":"30s"}]}}"#,
        );
        assert_eq!(implied(&google, &[]), Some(Duration::from_secs(30)));
        let wrong = Body::new(br#"{"retry_after":"soon","error":{"details":[{"retryDelay":7}]}}"#);
        assert_eq!(implied(&wrong, &[]), None);
    }

    #[test]
    fn largest_reset_of_exhausted_limits() {
        let limit = |remaining: f64, reset: u64| LimitSignal {
            remaining: Some(remaining),
            reset_in: Some(Duration::from_secs(reset)),
            ..LimitSignal::default()
        };
        let limits = [limit(0.0, 30), limit(5.0, 900), limit(0.0, 60)];
        assert_eq!(
            implied(&Body::new(b""), &limits),
            Some(Duration::from_secs(60))
        );
    }
}
