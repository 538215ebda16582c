//! Whatever a response holds, reading it never panics and never yields a negative, infinite or
//! absurd number.

use std::time::Duration;

use headroom_core::signals::{interpret, RawResponse, Signals};
use proptest::prelude::*;

const MAX_DURATION: Duration = Duration::from_secs(400 * 86_400);

const NAMES: &[&str] = &[
    "Date",
    "Retry-After",
    "retry-after-ms",
    "x-ms-retry-after-ms",
    "RateLimit",
    "RateLimit-Policy",
    "RateLimit-Limit",
    "RateLimit-Remaining",
    "RateLimit-Reset",
    "X-RateLimit-Limit",
    "X-RateLimit-Remaining",
    "X-RateLimit-Reset",
    "X-RateLimit-Used",
    "X-RateLimit-Reset-After",
    "X-RateLimit-Resource",
    "X-RateLimit-Bucket",
    "X-Rate-Limit",
    "X-RateLimit-Limit-Minute",
    "X-RateLimit-Remaining-Minute",
    "x-ratelimit-reset-tokens",
    "anthropic-ratelimit-requests-reset",
    "X-HubSpot-RateLimit-Max",
    "X-HubSpot-RateLimit-Remaining",
    "X-HubSpot-RateLimit-Interval-Milliseconds",
    "X-HubSpot-RateLimit-Daily",
    "X-HubSpot-RateLimit-Secondly-Remaining",
    "X-Shopify-Shop-Api-Call-Limit",
    "Sforce-Limit-Info",
];

fn number_text() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<f64>().prop_map(|n| n.to_string()),
        any::<i64>().prop_map(|n| n.to_string()),
        any::<u64>().prop_map(|n| n.to_string()),
        (0u64..2_000_000_000_000).prop_map(|n| n.to_string()),
        Just("NaN".to_string()),
        Just("-inf".to_string()),
        Just("1e308".to_string()),
        Just("1e-320".to_string()),
    ]
}

fn value_text() -> impl Strategy<Value = String> {
    prop_oneof![
        number_text(),
        (number_text(), number_text()).prop_map(|(a, b)| format!("{a}/{b}")),
        (number_text(), number_text(), number_text())
            .prop_map(|(q, w, r)| format!("\"p\";q={q};w={w};r={r};t={w};pk=:{r}:")),
        (number_text(), number_text(), number_text())
            .prop_map(|(l, r, t)| format!("limit={l}, remaining={r}, reset={t}")),
        (number_text(), number_text()).prop_map(|(q, w)| format!("{q}, {q};w={w}")),
        (number_text(), number_text()).prop_map(|(u, l)| format!("api-usage={u}/{l}(x=y)")),
        (0i64..10_000_000_000).prop_map(|s| {
            chrono::DateTime::from_timestamp(s, 0)
                .map(|t| t.to_rfc3339())
                .unwrap_or_default()
        }),
        // httpdate formats years up to 9999.
        (0u64..253_402_300_799).prop_map(|s| {
            httpdate::fmt_http_date(std::time::UNIX_EPOCH + Duration::from_secs(s))
        }),
        "[0-9]{1,4}(ns|us|ms|s|m|h|d|w|x)([0-9]{1,4}(ms|s|m))?",
        "[ -~]{0,60}",
        any::<String>(),
    ]
}

fn header() -> impl Strategy<Value = (String, Vec<u8>)> {
    let name = prop_oneof![
        4 => prop::sample::select(NAMES).prop_map(str::to_string),
        1 => "[A-Za-z-]{1,30}",
    ];
    let value = prop_oneof![
        6 => value_text().prop_map(String::into_bytes),
        1 => prop::collection::vec(any::<u8>(), 0..40),
    ];
    (name, value)
}

fn body() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        Just(Vec::new()),
        prop::collection::vec(any::<u8>(), 0..200),
        number_text().prop_map(|n| format!(r#"{{"retry_after": {n}}}"#).into_bytes()),
        value_text().prop_map(|d| {
            format!(r#"{{"error":{{"details":[{{"retryDelay":{}}}]}}}}"#, json_string(&d))
                .into_bytes()
        }),
        (number_text(), number_text(), number_text()).prop_map(|(m, c, r)| {
            format!(
                r#"{{"extensions":{{"cost":{{"throttleStatus":{{"maximumAvailable":{m},"currentlyAvailable":{c},"restoreRate":{r}}}}}}}}}"#
            )
            .into_bytes()
        }),
        Just(br#"{"errors":[{"extensions":{"code":"THROTTLED"}}]}"#.to_vec()),
        "[ -~]{0,80}".prop_map(String::into_bytes),
    ]
}

fn json_string(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_else(|_| "\"\"".to_string())
}

fn status() -> impl Strategy<Value = u16> {
    prop_oneof![
        prop::sample::select(vec![200u16, 403, 420, 429, 503, 529]),
        any::<u16>(),
    ]
}

fn check(signals: &Signals) -> Result<(), TestCaseError> {
    prop_assert!(short(signals.retry_after), "{signals:?}");
    for l in &signals.limits {
        for q in [l.quota, l.remaining].into_iter().flatten() {
            prop_assert!(q.is_finite() && q >= 0.0, "{l:?}");
        }
        prop_assert!(short(l.window) && short(l.reset_in), "{l:?}");
        prop_assert!(
            l.quota.is_some() || l.remaining.is_some() || l.reset_in.is_some(),
            "limit with no numbers: {l:?}"
        );
    }
    let json = serde_json::to_value(signals).map_err(|e| TestCaseError::fail(e.to_string()))?;
    prop_assert!(numbers_sane(&json), "bad number in {json}");
    Ok(())
}

fn short(d: Option<Duration>) -> bool {
    d.is_none_or(|d| d <= MAX_DURATION)
}

fn numbers_sane(v: &serde_json::Value) -> bool {
    use serde_json::Value;
    match v {
        Value::Number(n) => n.as_f64().is_some_and(|n| n.is_finite() && n >= 0.0),
        Value::Array(items) => items.iter().all(numbers_sane),
        Value::Object(fields) => fields.values().all(numbers_sane),
        _ => true,
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn interpret_never_panics_and_numbers_are_sane(
        status in status(),
        headers in prop::collection::vec(header(), 0..12),
        body in body(),
        now in prop_oneof![Just(1_795_867_200.0), any::<f64>()],
    ) {
        let signals = interpret(
            status,
            headers.iter().map(|(n, v)| (n.as_str(), v.as_slice())),
            &body,
            now,
        );
        check(&signals)?;
        if status == 429 {
            prop_assert!(signals.throttled);
        }
    }

    #[test]
    fn raw_parse_never_panics(input in prop::collection::vec(any::<u8>(), 0..400)) {
        let _ = RawResponse::parse(&input);
    }

    #[test]
    fn raw_parse_then_interpret_never_panics(
        status in "[0-9]{1,4}",
        lines in prop::collection::vec("[ -~\t]{0,60}", 0..10),
        crlf in any::<bool>(),
        body in prop::collection::vec(any::<u8>(), 0..100),
    ) {
        let eol = if crlf { "\r\n" } else { "\n" };
        let mut input = format!("HTTP/1.1 {status} X{eol}{}{eol}{eol}", lines.join(eol)).into_bytes();
        input.extend_from_slice(&body);
        if let Ok(response) = RawResponse::parse(&input) {
            check(&response.interpret(1_795_867_200.0))?;
        }
    }
}
