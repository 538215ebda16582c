//! Durations as people write them in config and headers: `"750ms"`, `"10s"`, `"2m"`, `"1h30m"`,
//! `"1d"`, and Go's `"6m0s"` / `"1.5s"`.

use std::time::Duration;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DurationError {
    #[error("empty duration; write a number with a unit, like \"10s\"")]
    Empty,
    #[error("\"{0}\" has no unit; write it like \"{0}s\" (units: ms, s, m, h, d)")]
    MissingUnit(String),
    #[error("\"{input}\" has an unknown unit \"{unit}\" (units: ns, us, ms, s, m, h, d, w)")]
    UnknownUnit { input: String, unit: String },
    #[error("\"{0}\" is not a duration; write a number with a unit, like \"750ms\" or \"2m\"")]
    Invalid(String),
    #[error("\"{0}\" is too long (more than 100 years)")]
    TooLong(String),
}

const MAX_SECS: f64 = 100.0 * 365.0 * 86_400.0;

/// Parses a duration made of one or more `<number><unit>` parts, e.g. `"1h30m"`.
pub fn parse_duration(input: &str) -> Result<Duration, DurationError> {
    let s = input.trim();
    if s.is_empty() {
        return Err(DurationError::Empty);
    }
    let mut total = 0f64;
    let mut rest = s;
    while !rest.is_empty() {
        let num_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        if num_len == 0 {
            return Err(DurationError::Invalid(s.to_string()));
        }
        let value: f64 = rest[..num_len]
            .parse()
            .map_err(|_| DurationError::Invalid(s.to_string()))?;
        rest = &rest[num_len..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let unit = rest[..unit_len].trim();
        rest = &rest[unit_len..];
        let scale = match unit {
            "" => return Err(DurationError::MissingUnit(s.to_string())),
            "ns" => 1e-9,
            "us" | "µs" => 1e-6,
            "ms" => 1e-3,
            "s" | "sec" | "secs" => 1.0,
            "m" | "min" | "mins" => 60.0,
            "h" | "hr" | "hrs" => 3600.0,
            "d" | "day" | "days" => 86_400.0,
            "w" => 7.0 * 86_400.0,
            other => {
                return Err(DurationError::UnknownUnit {
                    input: s.to_string(),
                    unit: other.to_string(),
                })
            }
        };
        total += value * scale;
    }
    if !total.is_finite() || total > MAX_SECS {
        return Err(DurationError::TooLong(s.to_string()));
    }
    Ok(Duration::from_secs_f64(total))
}

/// Formats a duration in the same language [`parse_duration`] reads (`"1m30s"`, `"250ms"`).
pub fn format_duration(d: Duration) -> String {
    let ms = d.as_millis();
    if ms == 0 {
        return if d.is_zero() {
            "0s".into()
        } else {
            format!("{}us", d.as_micros())
        };
    }
    if ms % 1000 != 0 {
        return if ms < 1000 {
            format!("{ms}ms")
        } else {
            format!("{:.3}s", d.as_secs_f64())
        };
    }
    let mut secs = d.as_secs();
    let mut out = String::new();
    for (unit, size) in [("d", 86_400), ("h", 3600), ("m", 60), ("s", 1)] {
        if secs >= size {
            out.push_str(&format!("{}{unit}", secs / size));
            secs %= size;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_config_and_go_forms() {
        assert_eq!(parse_duration("750ms"), Ok(Duration::from_millis(750)));
        assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("1d"), Ok(Duration::from_secs(86_400)));
        assert_eq!(parse_duration("1h30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_duration("6m0s"), Ok(Duration::from_secs(360)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
    }

    #[test]
    fn errors_say_what_to_fix() {
        assert_eq!(
            parse_duration("10"),
            Err(DurationError::MissingUnit("10".into()))
        );
        assert!(matches!(
            parse_duration("10 parsecs"),
            Err(DurationError::UnknownUnit { .. })
        ));
        assert!(matches!(
            parse_duration("s"),
            Err(DurationError::Invalid(_))
        ));
        assert!(parse_duration("1e400s").is_err());
        assert_eq!(parse_duration(""), Err(DurationError::Empty));
    }

    #[test]
    fn format_round_trips() {
        for s in ["250ms", "1m30s", "1d", "2h", "10s"] {
            assert_eq!(format_duration(parse_duration(s).unwrap()), s);
        }
    }
}
