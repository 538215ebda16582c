//! Reading what an HTTP response says about rate limits.
//!
//! [`interpret`] turns a response's status, headers and body into [`Signals`]: whether the call
//! was throttled, how long to wait before retrying, and every limit the response describes.
//! Unknown or malformed values are dropped, never fatal; no number is negative or infinite.
//!
//! Each dialect has its own reader: `ietf` (`RateLimit`, `RateLimit-Policy` and the older
//! `RateLimit-*` fields), `xratelimit` (`X-RateLimit-*` and its vendor spellings) and `vendor`
//! (HubSpot, Shopify, Salesforce). `throttle` decides whether the call was throttled and
//! `retry_after` how long to wait; `time` holds the date and reset heuristics they share.
//! [`RawResponse`] parses a response pasted as text.

mod cost;
mod ietf;
mod input;
mod raw;
mod retry_after;
mod sf;
mod throttle;
mod time;
mod vendor;
mod xratelimit;

use std::time::Duration;

use serde::Serialize;

use input::{Body, Headers};

pub use raw::{RawResponse, RawResponseError};
pub use time::parse_instant;

/// What one response says about rate limits.
#[derive(Debug, Clone, PartialEq, Default, Serialize)]
pub struct Signals {
    /// The response rejected the call for rate or capacity reasons.
    pub throttled: bool,
    /// How long to wait before retrying: from Retry-After, else (on a throttled response) from
    /// the exhausted limit's reset.
    #[serde(rename = "retry_after_s", serialize_with = "serialize_secs")]
    pub retry_after: Option<Duration>,
    pub limits: Vec<LimitSignal>,
    /// What the call spent of cost-metered limits, where the body says (an LLM API's
    /// `usage` tokens, GraphQL query cost): reconciled with the cost it reserved.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cost: Option<f64>,
}

impl Signals {
    /// How long the answer asks the caller to wait: Retry-After, else the latest reset of a
    /// limit it reports exhausted. `None` when it says nothing.
    pub fn asked_wait(&self) -> Option<Duration> {
        self.retry_after.or_else(|| {
            self.limits
                .iter()
                .filter(|l| l.remaining == Some(0.0))
                .filter_map(|l| l.reset_in)
                .max()
        })
    }
}

/// One limit as a response describes it. Each field is `None` when the response does not say.
#[derive(Debug, Clone, PartialEq, Default, Serialize)]
pub struct LimitSignal {
    /// The policy's name, when the API names it (IETF policies, GitHub's resource…).
    pub name: Option<String>,
    #[serde(serialize_with = "serialize_quantity")]
    pub quota: Option<f64>,
    #[serde(rename = "window_s", serialize_with = "serialize_secs")]
    pub window: Option<Duration>,
    #[serde(serialize_with = "serialize_quantity")]
    pub remaining: Option<f64>,
    #[serde(rename = "reset_in_s", serialize_with = "serialize_secs")]
    pub reset_in: Option<Duration>,
    pub unit: Unit,
    /// IETF partition key (`pk`), when the API partitions the quota.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub partition_key: Option<String>,
}

/// What a limit counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Unit {
    /// Each call counts one.
    #[default]
    Requests,
    /// Each call counts its cost (GraphQL points, tokens…).
    Points,
    /// Calls count the bytes of their content.
    Bytes,
    /// A limit on calls in flight at once, not on a rate.
    Concurrent,
}

fn serialize_secs<S: serde::Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
    match d {
        None => s.serialize_none(),
        Some(d) => s.serialize_f64((d.as_secs_f64() * 1000.0).round() / 1000.0),
    }
}

/// Whole quantities print as integers (`100`, not `100.0`).
fn serialize_quantity<S: serde::Serializer>(q: &Option<f64>, s: S) -> Result<S::Ok, S::Error> {
    match *q {
        None => s.serialize_none(),
        // Quantities are at most MAX_QUANTITY, well inside the integers f64 holds exactly.
        Some(q) if q.fract() == 0.0 && (0.0..=MAX_QUANTITY).contains(&q) => {
            s.serialize_u64(q as u64)
        }
        Some(q) => s.serialize_f64(q),
    }
}

/// Counts above this are absurd (no quota is a quadrillion calls) and are dropped.
const MAX_QUANTITY: f64 = 1e15;

/// A count as a quota or remaining: finite, not negative and not absurd.
pub(crate) fn quantity(n: f64) -> Option<f64> {
    // Adding zero turns -0.0 into 0.0.
    (n.is_finite() && (0.0..=MAX_QUANTITY).contains(&n)).then_some(n + 0.0)
}

/// The first number of a field that may be repeated (`"59, 59"`) or carry parameters
/// (`"10;w=1"`).
pub(crate) fn first_number(value: &str) -> Option<f64> {
    let first = value.split(',').next()?.split(';').next()?.trim();
    quantity(first.parse().ok()?)
}

/// A window in seconds; a zero window says nothing.
pub(crate) fn window_secs(secs: f64) -> Option<Duration> {
    time::secs(secs).filter(|d| !d.is_zero())
}

impl LimitSignal {
    /// Whether the limit carries anything a caller can pace by.
    fn is_usable(&self) -> bool {
        self.quota.is_some() || self.remaining.is_some() || self.reset_in.is_some()
    }

    /// Whether `other`, read from another dialect, describes the same limit: the same quota of
    /// the same unit, over the same window when both say.
    fn describes_same(&self, other: &LimitSignal) -> bool {
        let windows_agree = match (self.window, other.window) {
            (Some(a), Some(b)) => a == b,
            _ => true,
        };
        self.quota.is_some()
            && self.quota == other.quota
            && self.unit == other.unit
            && windows_agree
    }

    /// Fills what this limit does not say from `other`.
    fn fill_from(&mut self, other: LimitSignal) {
        self.name = self.name.take().or(other.name);
        self.window = self.window.or(other.window);
        self.remaining = self.remaining.or(other.remaining);
        self.reset_in = self.reset_in.or(other.reset_in);
        self.partition_key = self.partition_key.take().or(other.partition_key);
    }
}

/// Reads a response's rate-limit signals. `now_unix` (seconds since the epoch) is the time used
/// for absolute resets when the response has no `Date` header.
///
/// Header names are case-insensitive; a field on several lines is read as one comma list.
/// When several dialects describe the same limit, the first in this order wins and the others
/// fill its gaps: IETF, `X-RateLimit-*`, HubSpot, Shopify, Salesforce.
pub fn interpret<'a>(
    status: u16,
    headers: impl IntoIterator<Item = (&'a str, &'a [u8])>,
    body: &[u8],
    now_unix: f64,
) -> Signals {
    let headers = Headers::collect(headers);
    // The common case, an ordinary answer that says nothing about limits, costs no more.
    if headers.says_nothing() && body.is_empty() && !matches!(status, 403 | 420 | 429 | 503 | 529) {
        return Signals::default();
    }
    let body = Body::new(body);
    let now = headers
        .first("date")
        .and_then(parse_instant)
        .or(Some(now_unix).filter(|t| t.is_finite()))
        .unwrap_or(0.0);

    let mut limits = Vec::new();
    for dialect in [
        ietf::current(&headers, now),
        ietf::legacy(&headers, now),
        xratelimit::read(&headers, now),
        vendor::hubspot(&headers),
        vendor::shopify(&headers),
        vendor::shopify_graphql(&body),
        cost::github_graphql(&body, now),
        vendor::salesforce(&headers),
    ] {
        merge(&mut limits, dialect);
    }

    let header_wait = retry_after::from_headers(&headers, now);
    let throttled = throttle::is_throttled(status, &limits, header_wait.is_some(), &body);
    let retry_after = match header_wait {
        Some(wait) => Some(wait),
        None if throttled => retry_after::implied(&body, &limits),
        None => None,
    };
    Signals {
        throttled,
        retry_after,
        limits,
        cost: cost::reported(&body),
    }
}

/// Adds one dialect's limits, folding each into an earlier dialect's description of the same
/// limit (at most one per earlier limit) instead of listing it twice.
fn merge(limits: &mut Vec<LimitSignal>, dialect: Vec<LimitSignal>) {
    let earlier = limits.len();
    let mut absorbed = vec![false; earlier];
    for limit in dialect.into_iter().filter(LimitSignal::is_usable) {
        let same = (0..earlier).find(|&i| !absorbed[i] && limits[i].describes_same(&limit));
        match same {
            Some(i) => {
                absorbed[i] = true;
                limits[i].fill_from(limit);
            }
            None => limits.push(limit),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DATE: &str = "Sat, 28 Nov 2026 12:00:00 GMT";
    const NOW: f64 = 1_795_867_200.0;

    fn run(status: u16, lines: &[(&str, &str)], body: &str) -> Signals {
        interpret(
            status,
            lines.iter().map(|(n, v)| (*n, v.as_bytes())),
            body.as_bytes(),
            0.0,
        )
    }

    fn secs(s: f64) -> Option<Duration> {
        Some(Duration::from_secs_f64(s))
    }

    #[test]
    fn relative_times_use_the_date_header_else_now() {
        let lines = [
            ("Date", DATE),
            ("X-RateLimit-Limit", "10"),
            ("X-RateLimit-Reset", "1795867260"),
        ];
        assert_eq!(run(200, &lines, "").limits[0].reset_in, secs(60.0));
        let no_date = [
            ("X-RateLimit-Limit", "10"),
            ("X-RateLimit-Reset", "1795867260"),
        ];
        let s = interpret(
            200,
            no_date.iter().map(|(n, v)| (*n, v.as_bytes())),
            b"",
            NOW - 40.0,
        );
        assert_eq!(s.limits[0].reset_in, secs(100.0));
        let bad_date = [
            ("Date", "yesterday"),
            ("X-RateLimit-Limit", "10"),
            ("X-RateLimit-Reset", "1795867260"),
        ];
        let s = interpret(
            200,
            bad_date.iter().map(|(n, v)| (*n, v.as_bytes())),
            b"",
            NOW,
        );
        assert_eq!(s.limits[0].reset_in, secs(60.0));
    }

    #[test]
    fn same_limit_in_two_dialects_is_listed_once() {
        let s = run(
            200,
            &[
                ("RateLimit-Limit", "10"),
                ("RateLimit-Remaining", "4"),
                ("RateLimit-Reset", "47"),
                ("X-RateLimit-Limit-Minute", "10"),
                ("X-RateLimit-Remaining-Minute", "4"),
                ("X-RateLimit-Limit-Hour", "500"),
                ("X-RateLimit-Remaining-Hour", "200"),
            ],
            "",
        );
        assert_eq!(s.limits.len(), 2);
        let first = &s.limits[0];
        assert_eq!(
            (first.quota, first.remaining, first.reset_in),
            (Some(10.0), Some(4.0), secs(47.0))
        );
        assert_eq!(
            (first.name.as_deref(), first.window),
            (Some("minute"), secs(60.0))
        );
        assert_eq!(s.limits[1].quota, Some(500.0));
    }

    #[test]
    fn limits_with_no_numbers_are_dropped() {
        let s = run(
            200,
            &[
                ("X-RateLimit-Limit", "lots"),
                ("X-RateLimit-Resource", "core"),
            ],
            "",
        );
        assert!(s.limits.is_empty());
    }

    #[test]
    fn retry_after_falls_back_to_body_then_exhausted_reset() {
        let exhausted = [
            ("Date", DATE),
            ("X-RateLimit-Limit", "5000"),
            ("X-RateLimit-Remaining", "0"),
            ("X-RateLimit-Reset", "1795867500"),
        ];
        let s = run(403, &exhausted, r#"{"message":"API rate limit exceeded"}"#);
        assert!(s.throttled);
        assert_eq!(s.retry_after, secs(300.0));
        let s = run(429, &exhausted, r#"{"retry_after": 12.5}"#);
        assert_eq!(s.retry_after, secs(12.5));
        // Not throttled: the reset is not a reason to wait.
        let s = run(200, &exhausted, r#"{"retry_after": 12.5}"#);
        assert!(!s.throttled);
        assert_eq!(s.retry_after, None);
    }

    #[test]
    fn retry_after_header_on_any_status() {
        let s = run(
            503,
            &[
                ("Date", DATE),
                ("Retry-After", "Sat, 28 Nov 2026 12:02:00 GMT"),
            ],
            "",
        );
        assert!(s.throttled);
        assert_eq!(s.retry_after, secs(120.0));
        let s = run(
            503,
            &[("Retry-After", "junk")],
            "<h1>Service Unavailable</h1>",
        );
        assert!(!s.throttled);
        assert_eq!(s.retry_after, None);
    }

    #[test]
    fn forbidden_without_evidence_is_not_throttled() {
        let s = run(
            403,
            &[
                ("X-RateLimit-Limit", "5000"),
                ("X-RateLimit-Remaining", "4999"),
            ],
            r#"{"message":"Must have admin rights to Repository."}"#,
        );
        assert!(!s.throttled);
        assert_eq!(s.limits.len(), 1);
    }

    #[test]
    fn quantities_serialize_as_integers_when_whole() {
        let s = Signals {
            cost: None,
            throttled: true,
            retry_after: secs(2.0),
            limits: vec![LimitSignal {
                quota: Some(100.0),
                remaining: Some(12.5),
                window: secs(60.0),
                ..LimitSignal::default()
            }],
        };
        let json = serde_json::to_string(&s).unwrap();
        assert_eq!(
            json,
            r#"{"throttled":true,"retry_after_s":2.0,"limits":[{"name":null,"quota":100,"window_s":60.0,"remaining":12.5,"reset_in_s":null,"unit":"requests"}]}"#
        );
    }
}
