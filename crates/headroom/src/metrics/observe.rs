//! The observability metrics (events, retries, queues, budgets, alerts), registered beside
//! the proxy's. Labels stay bounded: endpoints are method + path template (at most
//! `MAX_ENDPOINTS` per upstream), tenants appear only on throttled counts, and queue labels
//! come from the config.

use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EndpointLabels {
    pub upstream: String,
    /// `GET /v3/objects/{id}`: a bounded template, see `observe::endpoint_template`.
    pub endpoint: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RetryOutcomeLabels {
    pub upstream: String,
    /// `succeeded` or `exhausted`.
    pub outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct UpstreamLabels {
    pub upstream: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct QueueLabels {
    pub queue: String,
    pub lane: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, PartialOrd, Ord, EncodeLabelSet)]
pub struct DepthLabels {
    pub queue: String,
    pub lane: String,
    /// `queued`, `running` or `retry_pending`.
    pub status: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct LimitLabels {
    pub upstream: String,
    /// The limit's name, else its window (`10s`, `1d`).
    pub limit: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AlertLabels {
    pub alert: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabels {
    pub kind: &'static str,
}

/// Backoff and pause lengths, seconds.
const BACKOFF_BUCKETS: [f64; 12] = [
    0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0,
];
/// Time a job waited in its queue before an attempt, seconds.
const QUEUE_WAIT_BUCKETS: [f64; 14] = [
    0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0, 21600.0, 86400.0,
];
/// Time one job attempt took, seconds.
const JOB_DURATION_BUCKETS: [f64; 13] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];

#[derive(Clone)]
pub struct ObserveMetrics {
    pub throttled_endpoint: Family<EndpointLabels, Counter>,
    pub retry_outcomes: Family<RetryOutcomeLabels, Counter>,
    pub backoff_seconds: Family<UpstreamLabels, Histogram>,
    pub queue_depth: Family<DepthLabels, Gauge>,
    pub queue_wait_seconds: Family<QueueLabels, Histogram>,
    pub job_duration_seconds: Family<QueueLabels, Histogram>,
    pub budget_utilisation: Family<LimitLabels, Gauge<f64, AtomicU64>>,
    pub budget_spend_rate: Family<LimitLabels, Gauge<f64, AtomicU64>>,
    pub budget_allowance_rate: Family<LimitLabels, Gauge<f64, AtomicU64>>,
    pub events: Family<KindLabels, Counter>,
    pub events_dropped: Counter,
    pub alerts_firing: Family<AlertLabels, Gauge>,
}

impl ObserveMetrics {
    pub fn register(registry: &mut Registry) -> ObserveMetrics {
        let m = ObserveMetrics {
            throttled_endpoint: Family::default(),
            retry_outcomes: Family::default(),
            backoff_seconds: Family::new_with_constructor(|| Histogram::new(BACKOFF_BUCKETS)),
            queue_depth: Family::default(),
            queue_wait_seconds: Family::new_with_constructor(|| Histogram::new(QUEUE_WAIT_BUCKETS)),
            job_duration_seconds: Family::new_with_constructor(|| {
                Histogram::new(JOB_DURATION_BUCKETS)
            }),
            budget_utilisation: Family::default(),
            budget_spend_rate: Family::default(),
            budget_allowance_rate: Family::default(),
            events: Family::default(),
            events_dropped: Counter::default(),
            alerts_firing: Family::default(),
        };
        registry.register(
            "throttled_endpoint_responses",
            "Throttled upstream responses by upstream and endpoint (method + path template)",
            m.throttled_endpoint.clone(),
        );
        registry.register(
            "retry_outcomes",
            "Calls that needed retries, by final outcome: succeeded or exhausted",
            m.retry_outcomes.clone(),
        );
        registry.register(
            "backoff_seconds",
            "Computed waits before a retry (backoff, budget pause, Retry-After)",
            m.backoff_seconds.clone(),
        );
        registry.register(
            "queue_depth",
            "Unfinished jobs by queue, lane and status (sampled)",
            m.queue_depth.clone(),
        );
        registry.register(
            "queue_wait_seconds",
            "Time a job waited from its arrival to its first attempt, by queue and lane",
            m.queue_wait_seconds.clone(),
        );
        registry.register(
            "job_duration_seconds",
            "Time one job attempt took (budget wait and upstream call), by queue and lane",
            m.job_duration_seconds.clone(),
        );
        registry.register(
            "budget_utilisation_ratio",
            "Spend rate over headroom x quota per window, busiest budget of the upstream",
            m.budget_utilisation.clone(),
        );
        registry.register(
            "budget_spend_per_second",
            "Units spent per second, summed over the upstream's budgets (sampled)",
            m.budget_spend_rate.clone(),
        );
        registry.register(
            "budget_allowance_per_second",
            "headroom x quota / window, summed over the upstream's budgets",
            m.budget_allowance_rate.clone(),
        );
        registry.register(
            "rate_limit_events",
            "Rate-limit events emitted, by kind",
            m.events.clone(),
        );
        registry.register(
            "events_dropped",
            "Events not stored because the event log's channel was full",
            m.events_dropped.clone(),
        );
        registry.register(
            "alerts_firing",
            "Alert instances firing, by alert name",
            m.alerts_firing.clone(),
        );
        m
    }
}
