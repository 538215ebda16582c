//! `headroom explain`: what a raw HTTP response says about rate limits.

use std::path::PathBuf;

use anyhow::Context;
use headroom_core::signals::{parse_instant, RawResponse};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The time relative resets are computed against when the response has no `Date` header:
    /// epoch seconds, an RFC 3339 time or an HTTP-date.
    #[arg(long, value_name = "TIME")]
    pub now: Option<String>,
    /// A file holding the raw response; `-` or nothing reads standard input.
    #[arg(value_name = "FILE|-")]
    pub file: Option<PathBuf>,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let now = match args.now.as_deref() {
        Some(text) => parse_now(text)?,
        None => system_now(),
    };
    let input = super::read_input(args.file.as_ref())?;
    let response = RawResponse::parse(&input).context("cannot read the response")?;
    let signals = response.interpret(now);
    println!("{}", serde_json::to_string_pretty(&signals)?);
    Ok(())
}

/// Reads `--now` as epoch seconds, an RFC 3339 time or an HTTP-date.
fn parse_now(text: &str) -> anyhow::Result<f64> {
    let epoch = text
        .trim()
        .parse::<f64>()
        .ok()
        .filter(|t| t.is_finite() && *t >= 0.0);
    epoch.or_else(|| parse_instant(text)).with_context(|| {
        format!(
            "--now {text:?} is not a time; give epoch seconds (1795867200), an RFC 3339 time \
             (2026-11-28T12:00:00Z) or an HTTP-date (\"Sat, 28 Nov 2026 12:00:00 GMT\")"
        )
    })
}

fn system_now() -> f64 {
    headroom::clock::WallClock::system().now_unix_secs()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn now_accepts_epoch_rfc3339_and_http_date() {
        for text in [
            "1795867200",
            "1795867200.0",
            "2026-11-28T12:00:00Z",
            "Sat, 28 Nov 2026 12:00:00 GMT",
        ] {
            assert_eq!(parse_now(text).unwrap(), 1_795_867_200.0, "{text}");
        }
    }

    #[test]
    fn bad_now_names_the_flag_and_the_forms() {
        let err = parse_now("tomorrow").unwrap_err().to_string();
        assert!(err.contains("--now"), "{err}");
        assert!(
            err.contains("RFC 3339") && err.contains("HTTP-date"),
            "{err}"
        );
        assert!(parse_now("-5").is_err());
        assert!(parse_now("inf").is_err());
    }
}
