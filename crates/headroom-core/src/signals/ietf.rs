//! The IETF `RateLimit` fields (draft-ietf-httpapi-ratelimit-headers), in all three shapes the
//! drafts have had:
//!
//! - current: `RateLimit-Policy: "burst";q=100;w=60` and `RateLimit: "burst";r=50;t=30`, with
//!   items matched by name (earlier drafts wrote the names as tokens or dictionary keys);
//! - interim: `RateLimit: limit=100, remaining=50, reset=30` with an optional
//!   `RateLimit-Policy: 100;w=60, 1000;w=3600` matched by quota;
//! - older separate fields: `RateLimit-Limit: 10, 10;w=1, 50;w=60`, `RateLimit-Remaining`,
//!   `RateLimit-Reset`.

use std::time::Duration;

use super::input::Headers;
use super::sf::{parse_members, Bare, Member};
use super::{first_number, quantity, time, window_secs, LimitSignal, Unit};

/// Limits from `RateLimit-Policy` and `RateLimit` (current and interim shapes), or, without
/// them, from the same fields under Jira Cloud's `Beta-` prefix.
pub(crate) fn current(headers: &Headers, now: f64) -> Vec<LimitSignal> {
    let plain = headers.first("ratelimit-policy").is_some() || headers.first("ratelimit").is_some();
    let (policy_name, field_name) = if plain {
        ("ratelimit-policy", "ratelimit")
    } else {
        ("beta-ratelimit-policy", "beta-ratelimit")
    };
    let mut limits: Vec<LimitSignal> = headers
        .joined(policy_name)
        .map(|field| parse_members(&field).iter().filter_map(policy).collect())
        .unwrap_or_default();
    let Some(field) = headers.joined(field_name) else {
        return limits;
    };
    let members = parse_members(&field);
    let interim = members.iter().any(|m| {
        m.entry
            .as_ref()
            .is_some_and(|(k, _)| matches!(k.as_str(), "limit" | "remaining" | "reset"))
    });
    if interim {
        apply_interim(&mut limits, &members, now);
    } else {
        for m in &members {
            apply_item(&mut limits, m, now);
        }
    }
    limits
}

/// Limits from the older `RateLimit-Limit`, `RateLimit-Remaining` and `RateLimit-Reset` fields.
pub(crate) fn legacy(headers: &Headers, now: f64) -> Vec<LimitSignal> {
    let (quota, window, mut others) = headers
        .joined("ratelimit-limit")
        .map(|field| limit_with_policies(&field))
        .unwrap_or_default();
    let remaining = headers.first("ratelimit-remaining").and_then(first_number);
    let reset_in = headers
        .first("ratelimit-reset")
        .and_then(|v| time::parse_when(v, now));
    if quota.is_none() && remaining.is_none() && reset_in.is_none() {
        return others;
    }
    let primary = LimitSignal {
        quota,
        window,
        remaining,
        reset_in,
        ..LimitSignal::default()
    };
    others.insert(0, primary);
    others
}

/// Reads a limit field that may advertise quota policies, like `10` or `10, 10;w=1, 50;w=60`:
/// the quota is the first number, its window comes from the policy with the same quota, and
/// the other policies are returned as limits of their own.
pub(crate) fn limit_with_policies(
    field: &str,
) -> (Option<f64>, Option<Duration>, Vec<LimitSignal>) {
    let members = parse_members(field);
    let quota = members
        .first()
        .and_then(|m| m.head.as_ref())
        .and_then(Bare::as_number)
        .and_then(quantity);
    let mut policies: Vec<LimitSignal> = members
        .iter()
        .filter(|m| m.param("w").is_some())
        .filter_map(policy)
        .collect();
    let matched = quota.and_then(|q| policies.iter().position(|p| p.quota == Some(q)));
    let window = matched.and_then(|i| policies.remove(i).window);
    (quota, window, policies)
}

/// A policy item: `"name";q=100;w=60;qu="requests";pk=:…:` or, in the interim drafts,
/// `100;w=60`.
fn policy(m: &Member) -> Option<LimitSignal> {
    let (name, head_quota) = match (&m.head, &m.entry) {
        (Some(Bare::Number(n)), _) => (None, quantity(*n)),
        (Some(head), _) => (Some(head.as_text()?.to_string()), None),
        // A dictionary key with a boolean value, as one draft wrote named policies.
        (None, Some((key, Bare::Bool(true)))) => (Some(key.clone()), None),
        _ => return None,
    };
    Some(LimitSignal {
        name,
        quota: m.param_number("q").and_then(quantity).or(head_quota),
        window: m.param_number("w").and_then(window_secs),
        unit: m
            .param("qu")
            .and_then(Bare::as_text)
            .map_or(Unit::Requests, quota_unit),
        partition_key: partition_key(m),
        ..LimitSignal::default()
    })
}

fn quota_unit(qu: &str) -> Unit {
    match qu.to_ascii_lowercase().as_str() {
        "content-bytes" => Unit::Bytes,
        "concurrent-requests" => Unit::Concurrent,
        // "requests" and units this reader does not know.
        _ => Unit::Requests,
    }
}

fn partition_key(m: &Member) -> Option<String> {
    m.param("pk")
        .and_then(Bare::as_key_text)
        .filter(|k| !k.is_empty())
        .map(str::to_string)
}

/// A `RateLimit` item, `"name";r=50;t=30`, applied to the policy of the same name.
fn apply_item(limits: &mut Vec<LimitSignal>, m: &Member, now: f64) {
    let name = match (&m.head, &m.entry) {
        (Some(head), _) => head.as_text().map(str::to_string),
        (None, Some((key, Bare::Bool(true)))) => Some(key.clone()),
        _ => return,
    };
    let remaining = m.param_number("r").and_then(quantity);
    let reset_in = m.param("t").and_then(|t| bare_when(t, now));
    let pk = partition_key(m);
    let existing = name
        .as_ref()
        .and_then(|n| limits.iter_mut().find(|l| l.name.as_ref() == Some(n)));
    match existing {
        Some(l) => {
            l.remaining = remaining.or(l.remaining);
            l.reset_in = reset_in.or(l.reset_in);
            l.partition_key = l.partition_key.take().or(pk);
        }
        None => limits.push(LimitSignal {
            name,
            remaining,
            reset_in,
            partition_key: pk,
            ..LimitSignal::default()
        }),
    }
}

/// The interim `RateLimit: limit=100, remaining=50, reset=30`, applied to the policy with the
/// same quota.
fn apply_interim(limits: &mut Vec<LimitSignal>, members: &[Member], now: f64) {
    let entry = |key: &str| {
        members
            .iter()
            .filter_map(|m| m.entry.as_ref())
            .find(|(k, _)| k == key)
            .map(|(_, v)| v)
    };
    let quota = entry("limit").and_then(Bare::as_number).and_then(quantity);
    let remaining = entry("remaining")
        .and_then(Bare::as_number)
        .and_then(quantity);
    let reset_in = entry("reset").and_then(|v| bare_when(v, now));
    let existing = quota.and_then(|q| limits.iter_mut().find(|l| l.quota == Some(q)));
    match existing {
        Some(l) => {
            l.remaining = remaining;
            l.reset_in = reset_in;
        }
        None => limits.push(LimitSignal {
            quota,
            remaining,
            reset_in,
            ..LimitSignal::default()
        }),
    }
}

/// A reset written as a number (seconds, or an epoch time by the usual heuristic) or as text.
fn bare_when(b: &Bare, now: f64) -> Option<Duration> {
    match b {
        Bare::Number(n) => time::number_when(*n, now),
        Bare::Text(t) => time::parse_when(t, now),
        Bare::Bytes(_) | Bare::Bool(_) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: f64 = 1_795_867_200.0;

    fn headers(lines: &[(&'static str, &'static str)]) -> Headers {
        Headers::collect(lines.iter().map(|(n, v)| (*n, v.as_bytes())))
    }

    fn secs(s: u64) -> Option<Duration> {
        Some(Duration::from_secs(s))
    }

    #[test]
    fn current_form_matches_items_to_policies_by_name() {
        let h = headers(&[
            (
                "RateLimit-Policy",
                r#""burst";q=100;w=60,"daily";q=1000;w=86400"#,
            ),
            ("RateLimit", r#""daily";r=900;t=3600, "other";r=3"#),
        ]);
        let l = current(&h, NOW);
        assert_eq!(l.len(), 3);
        assert_eq!(l[0].name.as_deref(), Some("burst"));
        assert_eq!(
            (l[0].quota, l[0].window, l[0].remaining),
            (Some(100.0), secs(60), None)
        );
        assert_eq!(l[1].name.as_deref(), Some("daily"));
        assert_eq!((l[1].remaining, l[1].reset_in), (Some(900.0), secs(3600)));
        assert_eq!(l[2].name.as_deref(), Some("other"));
        assert_eq!((l[2].quota, l[2].remaining), (None, Some(3.0)));
    }

    #[test]
    fn current_form_across_split_lines_with_units_and_partition_keys() {
        let h = headers(&[
            ("RateLimit-Policy", r#""conc";q=5;qu="concurrent-requests""#),
            (
                "ratelimit-policy",
                r#""bytes";q=1000000;w=60;qu="content-bytes";pk=:cHJvamVjdA==:"#,
            ),
            ("RATELIMIT", r#""bytes";r=10;t=5;pk=:cHJvamVjdA==:"#),
        ]);
        let l = current(&h, NOW);
        assert_eq!(l.len(), 2);
        assert_eq!(l[0].unit, Unit::Concurrent);
        assert_eq!(l[1].unit, Unit::Bytes);
        assert_eq!(l[1].partition_key.as_deref(), Some("cHJvamVjdA=="));
        assert_eq!((l[1].remaining, l[1].reset_in), (Some(10.0), secs(5)));
    }

    #[test]
    fn token_and_dictionary_key_names_from_earlier_drafts() {
        let h = headers(&[
            ("RateLimit-Policy", "burst;q=100;w=60, daily;q=1000;w=86400"),
            ("RateLimit", "burst;r=0;t=12"),
        ]);
        let l = current(&h, NOW);
        assert_eq!(l.len(), 2);
        assert_eq!((l[0].remaining, l[0].reset_in), (Some(0.0), secs(12)));
    }

    #[test]
    fn interim_dictionary_matches_policy_by_quota() {
        let h = headers(&[
            ("RateLimit", "limit=100, remaining=50, reset=30"),
            ("RateLimit-Policy", "1000;w=3600, 100;w=60"),
        ]);
        let l = current(&h, NOW);
        assert_eq!(l.len(), 2);
        assert_eq!(
            (l[0].quota, l[0].window, l[0].remaining),
            (Some(1000.0), secs(3600), None)
        );
        let m = &l[1];
        assert_eq!(
            (m.quota, m.window, m.remaining, m.reset_in),
            (Some(100.0), secs(60), Some(50.0), secs(30))
        );

        let alone = current(
            &headers(&[("RateLimit", "limit=10, remaining=0, reset=7")]),
            NOW,
        );
        assert_eq!(alone.len(), 1);
        assert_eq!((alone[0].quota, alone[0].window), (Some(10.0), None));
    }

    #[test]
    fn legacy_fields_with_quota_policies() {
        let h = headers(&[
            ("RateLimit-Limit", "10, 10;w=1, 50;w=60"),
            ("RateLimit-Remaining", "9"),
            ("RateLimit-Reset", "1"),
        ]);
        let l = legacy(&h, NOW);
        assert_eq!(l.len(), 2);
        assert_eq!(
            (l[0].quota, l[0].window, l[0].remaining, l[0].reset_in),
            (Some(10.0), secs(1), Some(9.0), secs(1))
        );
        assert_eq!(
            (l[1].quota, l[1].window, l[1].remaining),
            (Some(50.0), secs(60), None)
        );
    }

    #[test]
    fn legacy_reset_uses_the_general_heuristic() {
        let epoch = headers(&[("RateLimit-Limit", "10"), ("RateLimit-Reset", "1795867260")]);
        assert_eq!(legacy(&epoch, NOW)[0].reset_in, secs(60));
        let date = headers(&[
            ("RateLimit-Remaining", "3"),
            ("RateLimit-Reset", "Sat, 28 Nov 2026 12:01:00 GMT"),
        ]);
        assert_eq!(legacy(&date, NOW)[0].reset_in, secs(60));
    }

    #[test]
    fn malformed_values_are_dropped() {
        let h = headers(&[
            (
                "RateLimit-Policy",
                r#""a";q=-1;w=NaN, "b";q=1e30;w=0, "c";q="x";w=1e12"#,
            ),
            ("RateLimit", r#""a";r=-3;t=-1, "b";r=inf"#),
        ]);
        for l in current(&h, NOW) {
            assert_eq!(
                (l.quota, l.window, l.remaining, l.reset_in),
                (None, None, None, None)
            );
        }
    }
}
