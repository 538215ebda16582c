//! What a call actually spent, where the answer's body says: the tokens of an LLM API's
//! `usage`, Shopify GraphQL's `actualQueryCost`, GitHub GraphQL's `rateLimit { cost }`. A
//! call reserves its estimated cost when it goes; this is what the budget reconciles it with.
//! GitHub's `rateLimit` also describes the points limit itself.

use super::input::Body;
use super::{quantity, LimitSignal, Unit};

/// The call's cost as its answer reports it, if it does.
pub(crate) fn reported(body: &Body) -> Option<f64> {
    let number =
        |v: Option<&serde_json::Value>| v.and_then(serde_json::Value::as_f64).and_then(quantity);
    if let Some(json) = body.json_mentioning(b"actualQueryCost") {
        if let Some(c) = number(json.pointer("/extensions/cost/actualQueryCost")) {
            return Some(c);
        }
    }
    if let Some(json) = body.json_mentioning(b"rateLimit") {
        if let Some(c) = number(json.pointer("/data/rateLimit/cost")) {
            return Some(c);
        }
    }
    let usage = body.json_mentioning(b"usage")?.get("usage")?;
    // OpenAI (chat, embeddings, responses): `total_tokens`; Anthropic: input + output.
    number(usage.get("total_tokens")).or_else(|| {
        let input = number(usage.get("input_tokens"))?;
        let output = number(usage.get("output_tokens")).unwrap_or(0.0);
        quantity(input + output)
    })
}

/// GitHub GraphQL: `data.rateLimit { limit cost remaining resetAt }`, an hourly points limit.
pub(crate) fn github_graphql(body: &Body, now: f64) -> Vec<LimitSignal> {
    let Some(rate) = body
        .json_mentioning(b"rateLimit")
        .and_then(|j| j.pointer("/data/rateLimit"))
    else {
        return Vec::new();
    };
    let number = |key: &str| {
        rate.get(key)
            .and_then(serde_json::Value::as_f64)
            .and_then(quantity)
    };
    let quota = number("limit");
    let remaining = number("remaining");
    if quota.is_none() && remaining.is_none() {
        return Vec::new();
    }
    let reset_in = rate
        .get("resetAt")
        .and_then(serde_json::Value::as_str)
        .and_then(super::parse_instant)
        .and_then(|at| super::time::secs((at - now).max(0.0)));
    vec![LimitSignal {
        name: Some("graphql".to_string()),
        quota,
        window: super::window_secs(3600.0),
        remaining,
        reset_in,
        unit: Unit::Points,
        ..LimitSignal::default()
    }]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cost(body: &str) -> Option<f64> {
        reported(&Body::new(body.as_bytes()))
    }

    #[test]
    fn each_api_reports_cost_in_its_own_place() {
        assert_eq!(
            cost(
                r#"{"id":"c","usage":{"prompt_tokens":90,"completion_tokens":120,"total_tokens":210}}"#
            ),
            Some(210.0)
        );
        assert_eq!(
            cost(r#"{"type":"message","usage":{"input_tokens":40,"output_tokens":60}}"#),
            Some(100.0)
        );
        assert_eq!(
            cost(
                r#"{"data":{},"extensions":{"cost":{"requestedQueryCost":52,"actualQueryCost":12}}}"#
            ),
            Some(12.0)
        );
        assert_eq!(
            cost(
                r#"{"data":{"rateLimit":{"limit":5000,"cost":3,"remaining":4990,"resetAt":"2026-11-28T13:00:00Z"}}}"#
            ),
            Some(3.0)
        );
    }

    #[test]
    fn a_body_without_a_cost_or_with_a_hostile_one_says_nothing() {
        assert_eq!(cost(r#"{"data":{"user":"usage is fine"}}"#), None);
        assert_eq!(cost(r#"{"usage":{"total_tokens":-5}}"#), None);
        assert_eq!(cost(r#"{"usage":{"total_tokens":"lots"}}"#), None);
        assert_eq!(cost(r#"{"usage":{"total_tokens":1e300}}"#), None);
        assert_eq!(cost("usage: 12"), None);
    }

    #[test]
    fn github_graphql_rate_limit_is_an_hourly_points_limit() {
        let now = crate::signals::parse_instant("2026-11-28T12:00:00Z").unwrap();
        let body = br#"{"data":{"rateLimit":{"limit":5000,"cost":1,"remaining":4321,"resetAt":"2026-11-28T12:30:00Z"}}}"#;
        let l = github_graphql(&Body::new(body), now);
        assert_eq!(l.len(), 1);
        assert_eq!((l[0].quota, l[0].remaining), (Some(5000.0), Some(4321.0)));
        assert_eq!(l[0].unit, Unit::Points);
        assert_eq!(l[0].reset_in, Some(std::time::Duration::from_secs(1800)));
    }
}
