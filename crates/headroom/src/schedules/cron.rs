//! When a schedule fires: a cron expression in a time zone (croner, chrono-tz), and each
//! tenant's stable stagger offset.

use std::str::FromStr;
use std::time::Duration;

use chrono::{TimeZone, Utc};
use chrono_tz::Tz;
use croner::parser::{CronParser, Seconds, Year};
use croner::Cron;

use crate::clock::Millis;

/// A parsed cron expression and the time zone its fields are read in.
#[derive(Debug, Clone)]
pub struct CronSpec {
    cron: Cron,
    tz: Tz,
}

impl CronSpec {
    /// Parses 5 fields (minute hour day-of-month month day-of-week, POSIX), or 6 with a
    /// leading seconds field, in `timezone` (an IANA name, default UTC). The error names the
    /// expression or the zone, for the caller to prefix with its key.
    pub fn parse(expression: &str, timezone: Option<&str>) -> Result<CronSpec, CronSpecError> {
        let fields = expression.split_whitespace().count();
        let nickname = expression.trim_start().starts_with('@');
        if !nickname && !(5..=6).contains(&fields) {
            return Err(CronSpecError::Cron {
                expression: expression.to_string(),
                reason: format!(
                    "it has {fields} field{}; write 5 (minute hour day-of-month month \
                     day-of-week), or 6 with seconds first",
                    if fields == 1 { "" } else { "s" }
                ),
            });
        }
        let cron = CronParser::builder()
            .seconds(Seconds::Optional)
            .year(Year::Disallowed)
            .build()
            .parse(expression)
            .map_err(|e| CronSpecError::Cron {
                expression: expression.to_string(),
                reason: out_of_range(expression).unwrap_or_else(|| {
                    let e = e.to_string();
                    e.trim_start_matches("Component error: ").to_string()
                }),
            })?;
        let tz = match timezone {
            None => Tz::UTC,
            Some(name) => Tz::from_str(name).map_err(|_| CronSpecError::TimeZone {
                name: name.to_string(),
            })?,
        };
        let spec = CronSpec { cron, tz };
        // A pattern that never matches (e.g. 30 February) is refused now, not at run time.
        if spec.next_after(0).is_none() {
            return Err(CronSpecError::Cron {
                expression: expression.to_string(),
                reason: "it never matches a real date".to_string(),
            });
        }
        Ok(spec)
    }

    /// The first time the expression matches strictly after `after` (ms since the epoch),
    /// `None` if it never does again.
    pub fn next_after(&self, after: Millis) -> Option<Millis> {
        // Whole seconds: a 5- or 6-field expression matches on whole seconds only.
        let secs = after.div_euclid(1000);
        let start = Utc.timestamp_opt(secs, 0).single()?.with_timezone(&self.tz);
        let next = self.cron.find_next_occurrence(&start, false).ok()?;
        Some(next.timestamp_millis())
    }
}

/// Which field of a 5- or 6-field expression has a number outside its range, said in words
/// (the parser says only "Number out of bounds").
fn out_of_range(expression: &str) -> Option<String> {
    const FIELDS: [(&str, u32, u32); 6] = [
        ("second", 0, 59),
        ("minute", 0, 59),
        ("hour", 0, 23),
        ("day-of-month", 1, 31),
        ("month", 1, 12),
        ("day-of-week", 0, 7),
    ];
    let fields: Vec<&str> = expression.split_whitespace().collect();
    let names = match fields.len() {
        5 => &FIELDS[1..],
        6 => &FIELDS[..],
        _ => return None,
    };
    for (field, (name, low, high)) in fields.iter().zip(names) {
        for part in field.split(',') {
            // `a-b/step`: the step is a count, not a value of the field.
            let values = part.split('/').next().unwrap_or(part);
            for value in values.split('-') {
                if let Ok(n) = value.parse::<u32>() {
                    if n < *low || n > *high {
                        return Some(format!(
                            "the {name} field has {n}; {name} values are {low} to {high}"
                        ));
                    }
                }
            }
        }
    }
    None
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CronSpecError {
    #[error("\"{expression}\" is not a cron expression: {reason}")]
    Cron { expression: String, reason: String },
    #[error("\"{name}\" is not a time zone; use an IANA name like \"Europe/Berlin\" or \"UTC\"")]
    TimeZone { name: String },
}

impl CronSpecError {
    /// The key of the field at fault: `cron` or `timezone`.
    pub fn field(&self) -> &'static str {
        match self {
            CronSpecError::Cron { .. } => "cron",
            CronSpecError::TimeZone { .. } => "timezone",
        }
    }
}

/// A tenant's offset within a schedule's stagger window: stable (the same schedule and
/// tenant always get the same offset, on every node and version) and spread evenly over
/// `[0, stagger)`. FNV-1a over `schedule \0 tenant`, then a 64-bit finaliser so that names
/// differing in their last character land far apart; never `RandomState`, whose keys change
/// per process.
pub fn stagger_offset(schedule: &str, tenant: &str, stagger: Duration) -> Duration {
    let window = u64::try_from(stagger.as_millis()).unwrap_or(u64::MAX);
    if window == 0 {
        return Duration::ZERO;
    }
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in schedule.bytes().chain([0u8]).chain(tenant.bytes()) {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    // MurmurHash3's fmix64.
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^= h >> 33;
    // Scale to the window without modulo bias.
    let ms = ((u128::from(h) * u128::from(window)) >> 64) as u64;
    Duration::from_millis(ms)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(rfc3339: &str) -> Millis {
        chrono::DateTime::parse_from_rfc3339(rfc3339)
            .unwrap()
            .timestamp_millis()
    }

    #[test]
    fn five_fields_six_with_seconds_and_time_zones() {
        let every5 = CronSpec::parse("*/5 * * * *", None).unwrap();
        let t = ms("2026-03-01T12:03:10Z");
        assert_eq!(every5.next_after(t), Some(ms("2026-03-01T12:05:00Z")));
        // Strictly after: a time that matches gives the next one.
        assert_eq!(
            every5.next_after(ms("2026-03-01T12:05:00Z")),
            Some(ms("2026-03-01T12:10:00Z"))
        );
        assert_eq!(
            every5.next_after(ms("2026-03-01T12:04:59.500Z")),
            Some(ms("2026-03-01T12:05:00Z"))
        );
        let secs = CronSpec::parse("30 * * * * *", None).unwrap();
        assert_eq!(secs.next_after(t), Some(ms("2026-03-01T12:03:30Z")));
        let berlin = CronSpec::parse("0 2 * * *", Some("Europe/Berlin")).unwrap();
        assert_eq!(berlin.next_after(t), Some(ms("2026-03-02T01:00:00Z")));
        // Summer time: 02:00 Berlin is 00:00 UTC.
        assert_eq!(
            berlin.next_after(ms("2026-07-01T12:00:00Z")),
            Some(ms("2026-07-02T00:00:00Z"))
        );
    }

    #[test]
    fn bad_expressions_and_zones_say_which() {
        let e = CronSpec::parse("*/5 * * *", None).unwrap_err();
        assert_eq!(e.field(), "cron");
        assert!(e.to_string().contains("\"*/5 * * *\""), "{e}");
        assert!(e.to_string().contains("4 fields"), "{e}");
        let e = CronSpec::parse("61 * * * *", None).unwrap_err();
        assert!(e.to_string().starts_with("\"61 * * * *\" is not"), "{e}");
        assert!(
            e.to_string()
                .contains("the minute field has 61; minute values are 0 to 59"),
            "{e}"
        );
        let e = CronSpec::parse("0 25 * * *", None).unwrap_err();
        assert!(e.to_string().contains("the hour field has 25"), "{e}");
        let e = CronSpec::parse("0 0 1 * 1-9", None).unwrap_err();
        assert!(e.to_string().contains("the day-of-week field has 9"), "{e}");
        let e = CronSpec::parse("70 0 1 * * *", None).unwrap_err();
        assert!(e.to_string().contains("the second field has 70"), "{e}");
        let e = CronSpec::parse("0 0 30 2 *", None).unwrap_err();
        assert!(e.to_string().contains("never matches"), "{e}");
        let e = CronSpec::parse("0 * * * *", Some("Mars/Olympus")).unwrap_err();
        assert_eq!(e.field(), "timezone");
        assert!(e.to_string().contains("\"Mars/Olympus\""), "{e}");
        assert!(CronSpec::parse("@daily", None).is_ok());
    }

    #[test]
    fn offsets_are_stable_and_inside_the_window() {
        let w = Duration::from_secs(300);
        let a = stagger_offset("nightly", "acme", w);
        assert_eq!(a, stagger_offset("nightly", "acme", w));
        assert_ne!(a, stagger_offset("nightly", "acmf", w));
        assert_ne!(a, stagger_offset("hourly", "acme", w));
        assert_eq!(
            stagger_offset("nightly", "acme", Duration::ZERO),
            Duration::ZERO
        );
        // Pinned: a change of the hash would move every tenant's runs.
        assert_eq!(
            stagger_offset("nightly", "acme", w).as_millis(),
            PINNED_ACME_MS
        );
        for i in 0..1000 {
            assert!(stagger_offset("s", &format!("t{i}"), w) < w);
        }
    }

    const PINNED_ACME_MS: u128 = 57_637;

    /// 500 tenants on a 5-minute stagger: every minute gets its share (100), none more than
    /// about twice that; and every 10-second bucket gets some.
    #[test]
    fn five_hundred_tenants_spread_evenly_over_five_minutes() {
        let w = Duration::from_secs(300);
        let mut minutes = [0u32; 5];
        let mut tens = [0u32; 30];
        for i in 0..500 {
            let off = stagger_offset("sync", &format!("tenant-{i:03}"), w);
            minutes[(off.as_secs() / 60) as usize] += 1;
            tens[(off.as_secs() / 10) as usize] += 1;
        }
        for (m, n) in minutes.iter().enumerate() {
            assert!((60..=140).contains(n), "minute {m}: {n} runs ({minutes:?})");
        }
        assert!(tens.iter().all(|n| *n > 0), "{tens:?}");
    }
}
