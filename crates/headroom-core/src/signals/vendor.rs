//! Vendor dialects with a shape of their own: HubSpot, Shopify (REST header and GraphQL cost
//! extension) and Salesforce.

use std::time::Duration;

use super::input::{Body, Headers};
use super::{first_number, quantity, window_secs, LimitSignal, Unit};

/// HubSpot: `X-HubSpot-RateLimit-Max`/`-Remaining` per `-Interval-Milliseconds`, plus the
/// `-Secondly` and `-Daily` pairs.
pub(crate) fn hubspot(headers: &Headers) -> Vec<LimitSignal> {
    let number = |field: &str| {
        headers
            .first(&format!("x-hubspot-ratelimit-{field}"))
            .and_then(first_number)
    };
    let interval = number("interval-milliseconds").and_then(|ms| window_secs(ms / 1000.0));
    [
        ("interval", number("max"), number("remaining"), interval),
        (
            "secondly",
            number("secondly"),
            number("secondly-remaining"),
            Some(Duration::from_secs(1)),
        ),
        (
            "daily",
            number("daily"),
            number("daily-remaining"),
            Some(Duration::from_secs(86_400)),
        ),
    ]
    .into_iter()
    .filter(|(_, quota, remaining, _)| quota.is_some() || remaining.is_some())
    .map(|(name, quota, remaining, window)| LimitSignal {
        name: Some(name.to_string()),
        quota,
        window,
        remaining,
        ..LimitSignal::default()
    })
    .collect()
}

/// Shopify REST: `X-Shopify-Shop-Api-Call-Limit: 32/40`, calls used of the bucket's size.
pub(crate) fn shopify(headers: &Headers) -> Vec<LimitSignal> {
    headers
        .first("x-shopify-shop-api-call-limit")
        .and_then(used_of)
        .map(|(used, size)| LimitSignal {
            quota: Some(size),
            remaining: Some((size - used).max(0.0)),
            ..LimitSignal::default()
        })
        .into_iter()
        .collect()
}

/// Shopify GraphQL: the cost extension's `throttleStatus`, a leaky bucket of points whose
/// window is the time it takes to refill from empty.
pub(crate) fn shopify_graphql(body: &Body) -> Vec<LimitSignal> {
    let Some(status) = body
        .json_mentioning(b"throttleStatus")
        .and_then(|j| j.pointer("/extensions/cost/throttleStatus"))
    else {
        return Vec::new();
    };
    let number = |key: &str| {
        status
            .get(key)
            .and_then(serde_json::Value::as_f64)
            .and_then(quantity)
    };
    let quota = number("maximumAvailable");
    let remaining = number("currentlyAvailable");
    let restore_rate = number("restoreRate").filter(|r| *r > 0.0);
    if quota.is_none() && remaining.is_none() {
        return Vec::new();
    }
    vec![LimitSignal {
        name: Some("cost".to_string()),
        quota,
        window: quota
            .zip(restore_rate)
            .and_then(|(q, rate)| window_secs(q / rate)),
        remaining,
        unit: Unit::Points,
        ..LimitSignal::default()
    }]
}

/// Salesforce: `Sforce-Limit-Info: api-usage=25/5000, per-app-api-usage=17/250(appName=x)`,
/// each entry used/limit. The response does not say the window (a rolling 24 hours).
pub(crate) fn salesforce(headers: &Headers) -> Vec<LimitSignal> {
    let Some(field) = headers.joined("sforce-limit-info") else {
        return Vec::new();
    };
    field
        .split(',')
        .filter_map(|entry| {
            let (name, value) = entry.split_once('=')?;
            // Drop a trailing "(appName=x)".
            let value = value.split('(').next().unwrap_or(value);
            let (used, limit) = used_of(value)?;
            let name = name.trim();
            Some(LimitSignal {
                name: (!name.is_empty()).then(|| name.to_string()),
                quota: Some(limit),
                remaining: Some((limit - used).max(0.0)),
                ..LimitSignal::default()
            })
        })
        .collect()
}

/// Reads `used/limit`.
fn used_of(value: &str) -> Option<(f64, f64)> {
    let (used, limit) = value.split_once('/')?;
    let used = quantity(used.trim().parse().ok()?)?;
    let limit = quantity(limit.trim().parse().ok()?)?;
    Some((used, limit))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(lines: &[(&'static str, &'static str)]) -> Headers {
        Headers::collect(lines.iter().map(|(n, v)| (*n, v.as_bytes())))
    }

    #[test]
    fn hubspot_interval_secondly_and_daily() {
        let l = hubspot(&headers(&[
            ("X-HubSpot-RateLimit-Daily", "250000"),
            ("X-HubSpot-RateLimit-Daily-Remaining", "249873"),
            ("X-HubSpot-RateLimit-Interval-Milliseconds", "10000"),
            ("X-HubSpot-RateLimit-Max", "100"),
            ("X-HubSpot-RateLimit-Remaining", "87"),
            ("X-HubSpot-RateLimit-Secondly", "10"),
            ("X-HubSpot-RateLimit-Secondly-Remaining", "9"),
        ]));
        let got: Vec<_> = l
            .iter()
            .map(|l| (l.name.as_deref().unwrap(), l.quota, l.remaining, l.window))
            .collect();
        assert_eq!(
            got,
            [
                (
                    "interval",
                    Some(100.0),
                    Some(87.0),
                    Some(Duration::from_secs(10))
                ),
                (
                    "secondly",
                    Some(10.0),
                    Some(9.0),
                    Some(Duration::from_secs(1))
                ),
                (
                    "daily",
                    Some(250000.0),
                    Some(249873.0),
                    Some(Duration::from_secs(86_400))
                ),
            ]
        );
    }

    #[test]
    fn shopify_bucket() {
        let l = shopify(&headers(&[("X-Shopify-Shop-Api-Call-Limit", "32/40")]));
        assert_eq!((l[0].quota, l[0].remaining), (Some(40.0), Some(8.0)));
        assert!(shopify(&headers(&[("X-Shopify-Shop-Api-Call-Limit", "x/40")])).is_empty());
        assert!(shopify(&headers(&[("X-Shopify-Shop-Api-Call-Limit", "-1/40")])).is_empty());
    }

    #[test]
    fn shopify_graphql_cost() {
        let body = br#"{"data":{},"extensions":{"cost":{"requestedQueryCost":10,
            "throttleStatus":{"maximumAvailable":1000.0,"currentlyAvailable":990,"restoreRate":50.0}}}}"#;
        let l = shopify_graphql(&Body::new(body));
        assert_eq!(l.len(), 1);
        assert_eq!((l[0].quota, l[0].remaining), (Some(1000.0), Some(990.0)));
        assert_eq!(
            (l[0].unit, l[0].window),
            (Unit::Points, Some(Duration::from_secs(20)))
        );
        let wrong_types = br#"{"extensions":{"cost":{"throttleStatus":{"maximumAvailable":"x","restoreRate":0}}}}"#;
        assert!(shopify_graphql(&Body::new(wrong_types)).is_empty());
    }

    #[test]
    fn salesforce_usage_entries() {
        let l = salesforce(&headers(&[(
            "Sforce-Limit-Info",
            "api-usage=25/5000, per-app-api-usage=17/250(appName=sample-app)",
        )]));
        assert_eq!(l.len(), 2);
        assert_eq!(l[0].name.as_deref(), Some("api-usage"));
        assert_eq!((l[0].quota, l[0].remaining), (Some(5000.0), Some(4975.0)));
        assert_eq!(l[1].name.as_deref(), Some("per-app-api-usage"));
        assert_eq!((l[1].quota, l[1].remaining), (Some(250.0), Some(233.0)));
        let over = salesforce(&headers(&[(
            "Sforce-Limit-Info",
            "api-usage=100018/100000",
        )]));
        assert_eq!(over[0].remaining, Some(0.0));
    }
}
