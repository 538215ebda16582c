//! `GET /v1/status`: per upstream and tenant, how much of the budget is used, how often calls
//! are throttled and retried, what is queued, and a capacity verdict — whether demand fits
//! the budget, or the backlog grows faster than the budget drains — with an ETA.
//!
//! Spend rates and backlog trends come from samples the observer's tick takes (every 10 s):
//! the budgets' total spend (rate = Δspend / Δt, smoothed) and the unfinished jobs per
//! upstream and tenant (trend = slope over the last `TREND_SPAN`).

use std::collections::{HashMap, VecDeque};

use serde::Serialize;

use super::metrics::DepthLabels;
use crate::clock::Millis;

/// How far back the backlog trend looks.
pub(crate) const TREND_SPAN: Millis = 10 * 60_000;

#[derive(Default)]
pub struct Samples {
    /// Per budget (upstream index, key): the last total spend and the smoothed rates.
    pub(crate) spend: HashMap<(u32, String), Spend>,
    /// Per (upstream, tenant): (time, unfinished jobs), oldest first.
    pub(crate) backlog: HashMap<(String, String), VecDeque<(Millis, u64)>>,
    /// Depth gauges set on the last sample, to zero those that emptied.
    pub(crate) depth_labels: Vec<DepthLabels>,
}

#[derive(Debug, Clone, Copy)]
pub(crate) struct Spend {
    /// Governor seconds (monotonic) of the sample.
    pub(crate) at: f64,
    pub(crate) requests: f64,
    pub(crate) points: f64,
    pub(crate) rate_requests: Option<f64>,
    pub(crate) rate_points: Option<f64>,
}

/// One limit of a budget as status shows it.
#[derive(Debug, Clone, Serialize)]
pub struct LimitUse {
    pub limit: String,
    pub quota: f64,
    pub window_s: f64,
    pub headroom: f64,
    /// Units spent per second, measured.
    pub spend_per_s: Option<f64>,
    /// `headroom × quota / window`.
    pub allowance_per_s: f64,
    /// Spend rate over allowance.
    pub utilisation: Option<f64>,
}

/// Whether demand fits the budget.
#[derive(Debug, Clone, Serialize)]
pub struct Verdict {
    /// `idle` (nothing waiting), `fits` (the backlog drains) or `over_capacity` (the backlog
    /// grows faster than the budget drains it).
    pub verdict: &'static str,
    pub backlog: u64,
    /// The most the budget can drain per minute: `headroom × quota / window` of its tightest
    /// limit, slowed by any throttling.
    pub drain_per_min: Option<f64>,
    /// How fast the backlog changed per minute over the last minutes (positive: growing).
    pub backlog_trend_per_min: Option<f64>,
    /// Seconds until the current backlog is done, if it drains.
    pub eta_s: Option<f64>,
    pub detail: String,
}

pub(crate) fn verdict(backlog: u64, drain_per_s: Option<f64>, trend_per_s: Option<f64>) -> Verdict {
    let per_min = |x: f64| (x * 60.0 * 100.0).round() / 100.0;
    let mut v = Verdict {
        verdict: "fits",
        backlog,
        drain_per_min: drain_per_s.map(per_min),
        backlog_trend_per_min: trend_per_s.map(per_min),
        eta_s: None,
        detail: String::new(),
    };
    if backlog == 0 {
        v.verdict = "idle";
        v.eta_s = Some(0.0);
        v.detail = "nothing waiting".into();
        return v;
    }
    // Growing by more than a sliver of what the budget drains: demand exceeds the budget.
    let growing = match (trend_per_s, drain_per_s) {
        (Some(t), Some(d)) => t > 0.01 * d.max(1.0 / 60.0),
        (Some(t), None) => t > 0.0,
        _ => false,
    };
    if growing {
        v.verdict = "over_capacity";
        v.detail = format!(
            "the backlog of {backlog} grows by {:.1}/min{}; it will not clear at this demand",
            per_min(trend_per_s.unwrap_or(0.0)),
            drain_per_s
                .map(|d| format!(" while the budget drains at most {:.1}/min", per_min(d)))
                .unwrap_or_default()
        );
        return v;
    }
    let rate = match trend_per_s {
        Some(t) if t < 0.0 => Some(-t),
        _ => drain_per_s.filter(|d| *d > 0.0),
    };
    v.eta_s = rate.map(|r| (backlog as f64 / r).round());
    v.detail = match v.eta_s {
        Some(eta) => format!(
            "demand fits the budget: the backlog of {backlog} clears in about {}",
            headroom_core::duration::format_duration(std::time::Duration::from_secs_f64(eta))
        ),
        None => format!("the backlog of {backlog} has no known drain rate yet"),
    };
    v
}

/// One (upstream, tenant) row of the status.
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    pub upstream: String,
    pub tenant: String,
    /// The busiest limit's utilisation (spend rate over `headroom × quota / window`).
    pub utilisation: Option<f64>,
    pub limits: Vec<LimitUse>,
    pub throttled: u64,
    pub throttled_per_min: f64,
    /// Calls Headroom refused itself (429/503 without calling the upstream) in the span.
    pub refused: u64,
    pub retries_succeeded: u64,
    pub retries_exhausted: u64,
    pub retry_success_ratio: Option<f64>,
    pub avg_backoff_ms: Option<f64>,
    pub queued: u64,
    pub running: u64,
    pub retry_pending: u64,
    /// Calls waiting in the governor (proxied requests and jobs) now.
    pub waiting_realtime: u64,
    pub waiting_bulk: u64,
    pub breaker: Option<String>,
    #[serde(flatten)]
    pub verdict: Verdict,
}

impl Row {
    pub(crate) fn new(upstream: &str, tenant: &str) -> Row {
        Row {
            upstream: upstream.to_string(),
            tenant: tenant.to_string(),
            utilisation: None,
            limits: Vec::new(),
            throttled: 0,
            throttled_per_min: 0.0,
            refused: 0,
            retries_succeeded: 0,
            retries_exhausted: 0,
            retry_success_ratio: None,
            avg_backoff_ms: None,
            queued: 0,
            running: 0,
            retry_pending: 0,
            waiting_realtime: 0,
            waiting_bulk: 0,
            breaker: None,
            verdict: verdict(0, None, None),
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Status {
    pub at: String,
    pub window_s: f64,
    pub rows: Vec<Row>,
    pub alerts: Vec<serde_json::Value>,
    /// Tenants' OAuth grants that no longer work: the customers must connect again.
    pub broken_connections: Vec<BrokenConnection>,
}

/// A tenant's broken OAuth grant, as `headroom status` lists it.
#[derive(Debug, Clone, Serialize)]
pub struct BrokenConnection {
    pub tenant: String,
    pub upstream: String,
    pub reason: String,
    /// When it broke (RFC 3339).
    pub since: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verdicts() {
        assert_eq!(verdict(0, Some(1.0), None).verdict, "idle");
        let v = verdict(120, Some(1.0), Some(0.0));
        assert_eq!((v.verdict, v.eta_s), ("fits", Some(120.0)));
        let v = verdict(120, Some(1.0), Some(-2.0));
        assert_eq!((v.verdict, v.eta_s), ("fits", Some(60.0)));
        let v = verdict(120, Some(1.0), Some(0.5));
        assert_eq!((v.verdict, v.eta_s), ("over_capacity", None));
        assert!(v.detail.contains("grows"), "{}", v.detail);
        let v = verdict(5, None, None);
        assert_eq!((v.verdict, v.eta_s), ("fits", None));
    }
}
