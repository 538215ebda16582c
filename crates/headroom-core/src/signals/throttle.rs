//! Whether a response rejected the call for rate or capacity reasons.
//!
//! A 429 always did. A 403, 420, 503 or 529 did only with evidence that a limit is involved,
//! because the same statuses also mean "forbidden" or "down": an exhausted limit, a
//! Retry-After, or a body that says so. A GraphQL API that answers 200 with a throttling error
//! code (Shopify's `THROTTLED`, GitHub's `RATE_LIMITED`) did too. A 200 whose limit is at zero
//! did not: the call went through.

use super::input::{contains_ignore_case, Body};
use super::LimitSignal;

/// Only the start of a body is searched for evidence: error messages come first.
const BODY_SCAN: usize = 64 * 1024;

/// Lower-case phrases in error bodies that mean a rate limit: GitHub's "rate limit", Slack's
/// `ratelimited`, Google's `rateLimitExceeded` and `RESOURCE_EXHAUSTED`, Salesforce's
/// `REQUEST_LIMIT_EXCEEDED`, and the generic "too many requests".
const EVIDENCE: [&[u8]; 8] = [
    b"rate limit",
    b"ratelimit",
    b"rate_limit",
    b"rate-limit",
    b"request_limit_exceeded",
    b"resource_exhausted",
    b"too many requests",
    b"too_many_requests",
];

pub(crate) fn is_throttled(
    status: u16,
    limits: &[LimitSignal],
    has_retry_after: bool,
    body: &Body,
) -> bool {
    match status {
        429 => true,
        403 | 420 | 503 | 529 => {
            has_retry_after
                || limits.iter().any(is_exhausted)
                || body_mentions_rate_limit(body.bytes())
                || graphql_throttled(body)
        }
        200..=299 => graphql_throttled(body),
        _ => false,
    }
}

/// A limit with nothing left.
pub(crate) fn is_exhausted(limit: &LimitSignal) -> bool {
    limit.remaining.is_some_and(|r| r <= 0.0)
}

fn body_mentions_rate_limit(body: &[u8]) -> bool {
    let head = &body[..body.len().min(BODY_SCAN)];
    EVIDENCE.iter().any(|e| contains_ignore_case(head, e))
}

/// A GraphQL `errors` entry whose code says the call was throttled.
fn graphql_throttled(body: &Body) -> bool {
    let Some(errors) = body
        .json_mentioning(b"THROTTLED")
        .or_else(|| body.json_mentioning(b"RATE_LIMITED"))
        .and_then(|j| j.get("errors"))
        .and_then(|e| e.as_array())
    else {
        return false;
    };
    errors.iter().any(|e| {
        let code = e.pointer("/extensions/code").and_then(|c| c.as_str());
        let kind = e.get("type").and_then(|t| t.as_str());
        matches!(code, Some("THROTTLED" | "RATE_LIMITED")) || kind == Some("RATE_LIMITED")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn throttled(status: u16, limits: &[LimitSignal], retry_after: bool, body: &str) -> bool {
        is_throttled(status, limits, retry_after, &Body::new(body.as_bytes()))
    }

    fn exhausted() -> LimitSignal {
        LimitSignal {
            quota: Some(10.0),
            remaining: Some(0.0),
            ..LimitSignal::default()
        }
    }

    #[test]
    fn status_429_always() {
        assert!(throttled(429, &[], false, ""));
    }

    #[test]
    fn forbidden_and_unavailable_need_evidence() {
        for status in [403, 420, 503, 529] {
            assert!(!throttled(
                status,
                &[],
                false,
                r#"{"message":"Resource not accessible by integration"}"#
            ));
            assert!(throttled(status, &[exhausted()], false, ""));
            assert!(throttled(status, &[], true, ""));
        }
        for body in [
            r#"{"message":"API rate limit exceeded for user ID 1."}"#,
            r#"{"message":"You have exceeded a secondary rate limit"}"#,
            r#"[{"errorCode":"REQUEST_LIMIT_EXCEEDED"}]"#,
            r#"{"error":{"errors":[{"reason":"userRateLimitExceeded"}]}}"#,
            r#"{"error":{"status":"RESOURCE_EXHAUSTED"}}"#,
            r#"{"ok":false,"error":"ratelimited"}"#,
            "<html>Too Many Requests</html>",
        ] {
            assert!(throttled(403, &[], false, body), "{body}");
            assert!(throttled(503, &[], false, body), "{body}");
        }
    }

    #[test]
    fn evidence_beyond_the_scanned_head_is_ignored() {
        let body = format!("{}rate limit", " ".repeat(BODY_SCAN));
        assert!(!throttled(403, &[], false, &body));
    }

    #[test]
    fn ok_with_nothing_left_is_not_throttled() {
        assert!(!throttled(200, &[exhausted()], false, "rate limit"));
        assert!(!throttled(500, &[exhausted()], true, "rate limit"));
    }

    #[test]
    fn graphql_throttling_errors() {
        let shopify = r#"{"errors":[{"message":"Throttled","extensions":{"code":"THROTTLED"}}]}"#;
        let github = r#"{"errors":[{"type":"RATE_LIMITED","message":"API rate limit exceeded"}]}"#;
        assert!(throttled(200, &[], false, shopify));
        assert!(throttled(200, &[], false, github));
        assert!(!throttled(
            200,
            &[],
            false,
            r#"{"data":{"status":"THROTTLED"}}"#
        ));
    }
}
