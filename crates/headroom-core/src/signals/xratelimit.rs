//! The `X-RateLimit-*` family, which every vendor spells a little differently:
//!
//! - `X-RateLimit-Limit` / `-Remaining` / `-Reset` / `-Used` (GitHub, Twitter as
//!   `X-Rate-Limit-*`, Zendesk's bare `X-Rate-Limit`), `-Resource` (GitHub's name for the
//!   quota), Discord's `-Reset-After` and `-Bucket`;
//! - a group suffix after the field, such as Kong's `X-RateLimit-Limit-Minute` or OpenAI's
//!   `x-ratelimit-remaining-tokens`, or before it, such as Anthropic's
//!   `anthropic-ratelimit-requests-limit`. Each group is a limit of its own.

use std::time::Duration;

use super::ietf::limit_with_policies;
use super::input::Headers;
use super::{first_number, time, LimitSignal, Unit};

const PREFIXES: [&str; 3] = ["x-ratelimit", "x-rate-limit", "anthropic-ratelimit"];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Field {
    Limit,
    Remaining,
    Reset,
    ResetAfter,
    Used,
    Resource,
    Bucket,
}

/// Longer names first, so that `reset-after` is not read as `reset` of a group `after`.
const FIELDS: [(&str, Field); 7] = [
    ("reset-after", Field::ResetAfter),
    ("remaining", Field::Remaining),
    ("resource", Field::Resource),
    ("bucket", Field::Bucket),
    ("limit", Field::Limit),
    ("reset", Field::Reset),
    ("used", Field::Used),
];

/// The raw values of one group's fields; the first line of each wins.
#[derive(Debug, Default)]
struct Group<'h> {
    suffix: Option<String>,
    values: Vec<(Field, &'h str)>,
}

impl<'h> Group<'h> {
    fn get(&self, field: Field) -> Option<&'h str> {
        self.values
            .iter()
            .find(|(f, _)| *f == field)
            .map(|(_, v)| *v)
    }
}

pub(crate) fn read(headers: &Headers, now: f64) -> Vec<LimitSignal> {
    let mut groups: Vec<Group> = Vec::new();
    for (name, value) in headers.iter() {
        let Some((field, suffix)) = split_name(name) else {
            continue;
        };
        let index = match groups.iter().position(|g| g.suffix == suffix) {
            Some(i) => i,
            None => {
                groups.push(Group {
                    suffix,
                    values: Vec::new(),
                });
                groups.len() - 1
            }
        };
        let group = &mut groups[index];
        if group.get(field).is_none() {
            group.values.push((field, value));
        }
    }
    groups.iter().flat_map(|g| group_limits(g, now)).collect()
}

/// Splits a header name into its field and group suffix, e.g. `x-ratelimit-limit-minute` →
/// (Limit, "minute"), `anthropic-ratelimit-tokens-limit` → (Limit, "tokens").
fn split_name(name: &str) -> Option<(Field, Option<String>)> {
    let rest = PREFIXES.iter().find_map(|p| name.strip_prefix(p))?;
    if rest.is_empty() {
        // Zendesk's `X-Rate-Limit: 700`.
        return Some((Field::Limit, None));
    }
    let rest = rest.strip_prefix('-')?;
    for (text, field) in FIELDS {
        if rest == text {
            return Some((field, None));
        }
        if let Some(suffix) = rest.strip_prefix(text).and_then(|s| s.strip_prefix('-')) {
            return (!suffix.is_empty()).then(|| (field, Some(suffix.to_string())));
        }
    }
    FIELDS.iter().find_map(|(text, field)| {
        let group = rest.strip_suffix(text)?.strip_suffix('-')?;
        (!group.is_empty()).then(|| (*field, Some(group.to_string())))
    })
}

fn group_limits(g: &Group, now: f64) -> Vec<LimitSignal> {
    let (quota, policy_window, others) = g
        .get(Field::Limit)
        .map(limit_with_policies)
        .unwrap_or_default();
    let used = g.get(Field::Used).and_then(first_number);
    let remaining = g
        .get(Field::Remaining)
        .and_then(first_number)
        .or_else(|| Some((quota? - used?).max(0.0)));
    let reset_in = g
        .get(Field::ResetAfter)
        .and_then(|v| time::parse_when(v, now))
        .or_else(|| g.get(Field::Reset).and_then(|v| time::parse_when(v, now)));
    let resource = g.get(Field::Resource).filter(|r| !r.is_empty());
    let name = g
        .suffix
        .clone()
        .or_else(|| {
            resource
                .or_else(|| g.get(Field::Bucket))
                .map(str::to_string)
        })
        .filter(|n| !n.is_empty());
    // Tokens (OpenAI, Anthropic) and GitHub's GraphQL resource count cost, not calls.
    let counts_cost = g.suffix.as_deref().is_some_and(|s| s.contains("token"))
        || resource.is_some_and(|r| r.eq_ignore_ascii_case("graphql"));
    let primary = LimitSignal {
        name,
        quota,
        window: g
            .suffix
            .as_deref()
            .and_then(suffix_window)
            .or(policy_window),
        remaining,
        reset_in,
        unit: if counts_cost {
            Unit::Points
        } else {
            Unit::Requests
        },
        partition_key: None,
    };
    std::iter::once(primary).chain(others).collect()
}

/// Kong names its groups by window.
fn suffix_window(suffix: &str) -> Option<Duration> {
    let secs = match suffix.to_ascii_lowercase().as_str() {
        "second" => 1,
        "minute" => 60,
        "hour" => 3600,
        "day" => 86_400,
        "month" => 30 * 86_400,
        "year" => 365 * 86_400,
        _ => return None,
    };
    Some(Duration::from_secs(secs))
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: f64 = 1_795_867_200.0;

    fn limits(lines: &[(&'static str, &'static str)]) -> Vec<LimitSignal> {
        read(
            &Headers::collect(lines.iter().map(|(n, v)| (*n, v.as_bytes()))),
            NOW,
        )
    }

    fn secs(s: f64) -> Option<Duration> {
        Some(Duration::from_secs_f64(s))
    }

    #[test]
    fn names_split_into_field_and_group() {
        assert_eq!(split_name("x-ratelimit-limit"), Some((Field::Limit, None)));
        assert_eq!(split_name("x-rate-limit"), Some((Field::Limit, None)));
        assert_eq!(
            split_name("x-ratelimit-reset-after"),
            Some((Field::ResetAfter, None))
        );
        assert_eq!(
            split_name("x-ratelimit-remaining-minute"),
            Some((Field::Remaining, Some("minute".into())))
        );
        assert_eq!(
            split_name("anthropic-ratelimit-input-tokens-reset"),
            Some((Field::Reset, Some("input-tokens".into())))
        );
        assert_eq!(split_name("x-ratelimit-scope"), None);
        assert_eq!(split_name("x-hubspot-ratelimit-max"), None);
        assert_eq!(split_name("x-ratelimitx"), None);
    }

    #[test]
    fn github_reset_is_epoch_seconds_and_resource_names_it() {
        let l = limits(&[
            ("X-RateLimit-Limit", "5000"),
            ("X-RateLimit-Used", "13"),
            ("X-RateLimit-Reset", "1795869000"),
            ("X-RateLimit-Resource", "graphql"),
        ]);
        assert_eq!(l.len(), 1);
        assert_eq!(l[0].name.as_deref(), Some("graphql"));
        assert_eq!(l[0].unit, Unit::Points);
        assert_eq!((l[0].quota, l[0].remaining), (Some(5000.0), Some(4987.0)));
        assert_eq!(l[0].reset_in, secs(1800.0));
    }

    #[test]
    fn reset_forms_relative_to_now() {
        for (reset, want) in [
            ("1795867500000", 300.0),
            ("1795867500", 300.0),
            ("45", 45.0),
            ("2.5", 2.5),
            ("2026-11-28T12:05:00Z", 300.0),
            ("Sat, 28 Nov 2026 12:05:00 GMT", 300.0),
            ("1795867000", 0.0),
        ] {
            let l = limits(&[("X-RateLimit-Limit", "10"), ("X-RateLimit-Reset", reset)]);
            assert_eq!(l[0].reset_in, secs(want), "{reset}");
        }
    }

    #[test]
    fn discord_reset_after_wins_and_bucket_names_it() {
        let l = limits(&[
            ("X-RateLimit-Limit", "10"),
            ("X-RateLimit-Remaining", "0"),
            ("X-RateLimit-Reset", "1795867900"),
            ("X-RateLimit-Reset-After", "64.57"),
            ("X-RateLimit-Bucket", "abcd1234"),
        ]);
        assert_eq!(l[0].reset_in, secs(64.57));
        assert_eq!(l[0].name.as_deref(), Some("abcd1234"));
    }

    #[test]
    fn kong_suffixes_become_windows() {
        let l = limits(&[
            ("X-RateLimit-Limit-Second", "5"),
            ("X-RateLimit-Remaining-Second", "4"),
            ("X-RateLimit-Limit-Hour", "1000"),
            ("X-RateLimit-Remaining-Hour", "998"),
        ]);
        assert_eq!(l.len(), 2);
        assert_eq!(
            (l[0].name.as_deref(), l[0].window),
            (Some("second"), secs(1.0))
        );
        assert_eq!(
            (l[1].quota, l[1].remaining, l[1].window),
            (Some(1000.0), Some(998.0), secs(3600.0))
        );
    }

    #[test]
    fn openai_groups_with_go_durations() {
        let l = limits(&[
            ("x-ratelimit-limit-requests", "10000"),
            ("x-ratelimit-limit-tokens", "2000000"),
            ("x-ratelimit-remaining-requests", "9999"),
            ("x-ratelimit-remaining-tokens", "1999000"),
            ("x-ratelimit-reset-requests", "6ms"),
            ("x-ratelimit-reset-tokens", "6m0s"),
        ]);
        assert_eq!(l.len(), 2);
        assert_eq!((l[0].unit, l[0].reset_in), (Unit::Requests, secs(0.006)));
        assert_eq!((l[1].unit, l[1].reset_in), (Unit::Points, secs(360.0)));
        assert_eq!(l[1].remaining, Some(1_999_000.0));
    }

    #[test]
    fn zendesk_and_twitter_spellings() {
        let l = limits(&[("X-Rate-Limit", "700"), ("X-Rate-Limit-Remaining", "699")]);
        assert_eq!((l[0].quota, l[0].remaining), (Some(700.0), Some(699.0)));
        let l = limits(&[
            ("x-rate-limit-limit", "15"),
            ("x-rate-limit-reset", "1795868100"),
        ]);
        assert_eq!(l[0].reset_in, secs(900.0));
    }

    #[test]
    fn repeated_lines_take_the_first() {
        let l = limits(&[
            ("X-RateLimit-Limit", "60"),
            ("X-RateLimit-Limit", "60"),
            ("X-RateLimit-Remaining", "59, 59"),
        ]);
        assert_eq!(l.len(), 1);
        assert_eq!((l[0].quota, l[0].remaining), (Some(60.0), Some(59.0)));
    }

    #[test]
    fn used_beyond_limit_is_zero_remaining() {
        let l = limits(&[("X-RateLimit-Limit", "100"), ("X-RateLimit-Used", "130")]);
        assert_eq!(l[0].remaining, Some(0.0));
    }
}
