//! Prometheus metrics, served on `/metrics` in the OpenMetrics text format. Histograms use
//! explicit buckets so that they aggregate across nodes.

pub mod observe;
mod sharded;

use std::sync::OnceLock;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use sharded::{ShardedCounter, ShardedHistogram};

use crate::cfg::Upstream;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub upstream: String,
    pub lane: &'static str,
    /// `forwarded`, `refused` (429/503 from Headroom) or `error` (upstream unreachable).
    pub outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResponseLabels {
    pub upstream: String,
    pub status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TenantLabels {
    pub upstream: String,
    pub tenant: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct IntakeLabels {
    pub source: String,
    /// `accepted`, `duplicate`, `refused` (signature) or `invalid`.
    pub outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OAuthLabels {
    pub upstream: String,
    /// `refreshed`, `failed` (try again later) or `broken` (`invalid_grant`).
    pub outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RetryLabels {
    pub upstream: String,
    /// `throttled`, `status` (a configured 5xx) or `transport`.
    pub reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct LaneLabels {
    pub upstream: String,
    pub lane: &'static str,
}

/// Seconds a request waited in Headroom (queue, pauses, backoff).
const WAIT_BUCKETS: [f64; 14] = [
    0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];

/// Handles on the series every proxied call touches, for one upstream, each made on first
/// use (so `/metrics` shows only series that happened). A family lookup clones the labels'
/// strings and hashes them under a lock; a handle shares the series' atomic.
struct UpstreamSeries {
    /// By lane (realtime, bulk) and outcome (forwarded, refused, error, invalid).
    requests: [[OnceLock<ShardedCounter>; 4]; 2],
    /// By lane.
    wait: [OnceLock<ShardedHistogram>; 2],
    /// By status, 100 to 599.
    responses: Box<[OnceLock<ShardedCounter>]>,
}

impl UpstreamSeries {
    fn new() -> UpstreamSeries {
        UpstreamSeries {
            requests: Default::default(),
            wait: Default::default(),
            responses: (100..600).map(|_| OnceLock::new()).collect(),
        }
    }
}

/// Applies `f` to a series: through its handle when there is one (made from the family on
/// first use), else looked up in the family by its labels.
fn with_series<L, M, C>(
    handle: Option<&OnceLock<M>>,
    family: &Family<L, M, C>,
    labels: impl FnOnce() -> L,
    f: impl FnOnce(&M),
) where
    L: Clone + std::hash::Hash + Eq,
    M: Clone,
    C: prometheus_client::metrics::family::MetricConstructor<M>,
{
    match handle {
        Some(handle) => f(handle.get_or_init(|| family.get_or_create(&labels()).clone())),
        None => f(&family.get_or_create(&labels())),
    }
}

fn lane_slot(lane: &str) -> usize {
    usize::from(lane == "bulk")
}

pub struct Metrics {
    registry: Registry,
    /// By upstream index (see [`UpstreamSeries`]).
    series: Vec<UpstreamSeries>,
    /// Per call: sharded (see `sharded`), like `upstream_responses` and `wait_seconds`.
    pub requests: Family<RequestLabels, ShardedCounter>,
    pub upstream_responses: Family<ResponseLabels, ShardedCounter>,
    pub throttled: Family<TenantLabels, Counter>,
    pub retries: Family<RetryLabels, Counter>,
    pub oauth_refreshes: Family<OAuthLabels, Counter>,
    pub intake: Family<IntakeLabels, Counter>,
    pub wait_seconds: Family<LaneLabels, ShardedHistogram>,
    /// 0 closed, 1 half-open, 2 open.
    pub breaker_state: Family<TenantLabels, Gauge>,
    /// Rate-limit events, retries, queues, budgets, alerts (the observe module).
    pub observe: observe::ObserveMetrics,
    /// The tenants that have series of their own (at most `max_tenants`); the rest are
    /// counted as `tenant="other"`, so a scrape stays bounded whatever the tenant count.
    tenants: std::sync::Mutex<std::collections::HashSet<String>>,
    max_tenants: usize,
}

/// The tenant label of tenants beyond `[metrics] max_tenants`.
pub const OTHER_TENANT: &str = "other";

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        Metrics::with_limits(crate::cfg::MetricsConfig::default().max_tenants, 0)
    }

    /// Metrics for `upstreams` configured upstreams, with at most `max_tenants` tenants'
    /// own series.
    pub fn with_limits(max_tenants: usize, upstreams: usize) -> Self {
        let mut registry = Registry::with_prefix("headroom");
        let requests = Family::<RequestLabels, ShardedCounter>::default();
        registry.register(
            "proxy_requests",
            "Requests to the proxy, by upstream, lane and outcome",
            requests.clone(),
        );
        let upstream_responses = Family::<ResponseLabels, ShardedCounter>::default();
        registry.register(
            "upstream_responses",
            "Responses from upstreams (every attempt), by status",
            upstream_responses.clone(),
        );
        let throttled = Family::<TenantLabels, Counter>::default();
        registry.register(
            "throttled_responses",
            "Upstream responses that rejected a call for rate or capacity reasons",
            throttled.clone(),
        );
        let retries = Family::<RetryLabels, Counter>::default();
        registry.register("retries", "Calls retried, by reason", retries.clone());
        let oauth_refreshes = Family::<OAuthLabels, Counter>::default();
        registry.register(
            "oauth_refreshes",
            "OAuth token requests (refresh or client credentials), by outcome",
            oauth_refreshes.clone(),
        );
        let intake = Family::<IntakeLabels, Counter>::default();
        registry.register(
            "intake_deliveries",
            "Webhook deliveries at /intake, by source and outcome",
            intake.clone(),
        );
        let wait_seconds = Family::<LaneLabels, ShardedHistogram>::new_with_constructor(|| {
            ShardedHistogram::new(&WAIT_BUCKETS)
        });
        registry.register(
            "wait_seconds",
            "Time a proxied request waited in Headroom (queue, pauses, backoff), by lane",
            wait_seconds.clone(),
        );
        let breaker_state = Family::<TenantLabels, Gauge>::default();
        registry.register(
            "breaker_state",
            "Circuit breaker per budget: 0 closed, 1 half-open, 2 open",
            breaker_state.clone(),
        );
        let observe = observe::ObserveMetrics::register(&mut registry);
        Metrics {
            observe,
            registry,
            series: (0..upstreams).map(|_| UpstreamSeries::new()).collect(),
            requests,
            upstream_responses,
            throttled,
            retries,
            oauth_refreshes,
            intake,
            wait_seconds,
            breaker_state,
            tenants: Default::default(),
            max_tenants,
        }
    }

    /// Counts a proxied call of `upstream` in `lane` (`realtime` or `bulk`) by `outcome`
    /// (`forwarded`, `refused`, `error` or `invalid`).
    pub fn proxy_request(&self, upstream: &Upstream, lane: &'static str, outcome: &'static str) {
        let slot = match outcome {
            "forwarded" => Some(0),
            "refused" => Some(1),
            "error" => Some(2),
            "invalid" => Some(3),
            _ => None,
        };
        let handle =
            slot.and_then(|o| Some(&self.series_of(upstream)?.requests[lane_slot(lane)][o]));
        let labels = || RequestLabels {
            upstream: upstream.name.clone(),
            lane,
            outcome,
        };
        with_series(handle, &self.requests, labels, |c| {
            c.inc();
        });
    }

    /// Counts an upstream's answer by status.
    pub fn upstream_response(&self, upstream: &Upstream, status: u16) {
        let handle = self
            .series_of(upstream)
            .and_then(|s| s.responses.get(usize::from(status).checked_sub(100)?));
        let labels = || ResponseLabels {
            upstream: upstream.name.clone(),
            status,
        };
        with_series(handle, &self.upstream_responses, labels, |c| {
            c.inc();
        });
    }

    /// Records how long a proxied call of `upstream` in `lane` waited in Headroom.
    pub fn proxy_wait(&self, upstream: &Upstream, lane: &'static str, seconds: f64) {
        let handle = self.series_of(upstream).map(|s| &s.wait[lane_slot(lane)]);
        let labels = || LaneLabels {
            upstream: upstream.name.clone(),
            lane,
        };
        with_series(handle, &self.wait_seconds, labels, |h| h.observe(seconds));
    }

    fn series_of(&self, upstream: &Upstream) -> Option<&UpstreamSeries> {
        self.series.get(upstream.index as usize)
    }

    /// The labels for a tenant's series: its own name while fewer than `max_tenants` have
    /// one, else `other`. Only throttled answers and breaker changes ask (not every call).
    pub fn tenant_labels(&self, upstream: &str, tenant: &str) -> TenantLabels {
        let mut seen = self.tenants.lock().unwrap_or_else(|e| e.into_inner());
        let own = seen.contains(tenant)
            || (seen.len() < self.max_tenants && seen.insert(tenant.to_string()));
        TenantLabels {
            upstream: upstream.to_string(),
            tenant: if own { tenant } else { OTHER_TENANT }.to_string(),
        }
    }

    /// The OpenMetrics text of every metric.
    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }

    /// The same in the Prometheus text format (0.0.4), for scrapers and tools that do not ask
    /// for OpenMetrics (`promtool check metrics`, curl): a counter family is named with
    /// `_total`, as its samples are, and there is no `# EOF` or `# UNIT`.
    pub fn render_prometheus(&self) -> String {
        prometheus_text(&self.render())
    }
}

/// OpenMetrics text as the Prometheus text format (0.0.4).
fn prometheus_text(open: &str) -> String {
    let counters: std::collections::HashSet<&str> = open
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE ")?.strip_suffix(" counter"))
        .collect();
    let mut out = String::with_capacity(open.len() + 16 * counters.len());
    for line in open.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        let meta = ["# HELP ", "# TYPE "]
            .into_iter()
            .find_map(|p| Some((p, line.strip_prefix(p)?)));
        match meta {
            Some((prefix, rest)) => {
                let (name, tail) = rest.split_once(' ').unwrap_or((rest, ""));
                if counters.contains(name) {
                    out.push_str(&format!("{prefix}{name}_total {tail}"));
                } else {
                    out.push_str(line);
                }
            }
            None => {
                // A counter's `_created` sample has no place in the older format.
                let name = line.split(['{', ' ']).next().unwrap_or("");
                if name
                    .strip_suffix("_created")
                    .is_some_and(|family| counters.contains(family))
                {
                    continue;
                }
                out.push_str(line);
            }
        }
        out.push('\n');
    }
    out
}
