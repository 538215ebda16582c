//! Observability: rate-limit events (logged through `tracing` and kept in the event log),
//! the metrics behind them, budget and queue sampling, alerts, and `headroom status`.
//!
//! The hot path pays nothing for this on an ordinary answer: events are made only where a
//! call is throttled, retried, paused or fails, and they go to a bounded channel that a
//! background writer drains in batches. When the channel is full the event is still logged,
//! but not stored, and `headroom_events_dropped_total` counts it.

pub mod alerts;
pub use crate::metrics::observe as metrics;
pub use crate::store::model::events as model;
pub mod otel;
pub mod status;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use headroom_core::clock::Clock;
use http::HeaderMap;
use tokio::sync::{mpsc, oneshot};

use self::metrics::{EndpointLabels, KindLabels, ObserveMetrics, QueueLabels, RetryOutcomeLabels};
use self::model::*;
use crate::clock::Millis;
use crate::store::model::jobs::{Job, Transition};

/// Events waiting for the writer; beyond this they are dropped (and counted).
const CHANNEL: usize = 8192;
/// Endpoint templates per upstream in metric labels; later ones count as `other`.
const MAX_ENDPOINTS: usize = 64;

pub use crate::cfg::alerts::ObserveConfig;

pub(crate) enum Msg {
    Event(Box<Event>),
    /// Answered once every event sent before it is stored.
    Flush(oneshot::Sender<()>),
}

/// One call to an upstream (attempt), as events and logs describe it.
pub(crate) struct Call<'a> {
    pub upstream: &'a crate::cfg::Upstream,
    /// The tenant (or budget key) for metrics and logs.
    pub tenant: &'a str,
    pub method: &'a http::Method,
    pub uri: &'a http::Uri,
    pub attempt: u32,
    /// The job's queue, for events.
    pub queue: Option<&'a str>,
}

/// Emits events and keeps what sampling and alerts remember. One per server.
pub struct Observer {
    /// Counted from the Unix epoch; the scheduler's clock (a manual one in tests).
    clock: Arc<dyn Clock>,
    tx: mpsc::Sender<Msg>,
    pub(crate) rx: Mutex<Option<mpsc::Receiver<Msg>>>,
    metrics: ObserveMetrics,
    /// Endpoint templates seen per upstream, to bound metric labels.
    endpoints: Mutex<HashMap<String, HashSet<String>>>,
    /// Job durations by queue and day, for the duration alerts.
    pub(crate) durations: Mutex<alerts::Durations>,
    /// What the periodic tick keeps: samples, alert states. One tick at a time.
    pub(crate) state: tokio::sync::Mutex<TickState>,
}

#[derive(Default)]
pub(crate) struct TickState {
    pub(crate) last_prune: Option<Millis>,
    pub(crate) samples: status::Samples,
    pub(crate) alerts: alerts::AlertStates,
}

impl Observer {
    pub fn new(clock: Arc<dyn Clock>, metrics: ObserveMetrics) -> Observer {
        let (tx, rx) = mpsc::channel(CHANNEL);
        Observer {
            clock,
            tx,
            rx: Mutex::new(Some(rx)),
            metrics,
            endpoints: Mutex::new(HashMap::new()),
            durations: Mutex::new(alerts::Durations::default()),
            state: tokio::sync::Mutex::new(TickState::default()),
        }
    }

    /// Now on the observer's clock, in Unix milliseconds.
    pub fn now(&self) -> Millis {
        crate::clock::epoch_millis(self.clock.now())
    }

    /// Logs an event and hands it to the event log without waiting.
    pub fn emit(&self, event: Event) {
        self.metrics
            .events
            .get_or_create(&KindLabels {
                kind: event.kind.as_str(),
            })
            .inc();
        log(&event);
        if self.tx.try_send(Msg::Event(Box::new(event))).is_err() {
            self.metrics.events_dropped.inc();
        }
    }

    /// Waits until every event emitted before the call is stored (or the writer is gone).
    pub async fn flush(&self) {
        let (done, wait) = oneshot::channel();
        if self.tx.send(Msg::Flush(done)).await.is_ok() {
            let _ = wait.await;
        }
    }

    /// An event about one call, with its upstream, tenant, endpoint and attempt filled in.
    fn call_event(&self, call: &Call<'_>, level: Level, kind: Kind, outcome: &str) -> Event {
        let endpoint = format!("{} {}", call.method, call.uri.path());
        let message = format!(
            "{}: {} {endpoint} (tenant {}, attempt {})",
            kind.as_str(),
            call.upstream.name,
            call.tenant,
            call.attempt
        );
        let mut e = Event::new(self.now(), level, kind, outcome, message);
        e.upstream = Some(call.upstream.name.clone());
        e.tenant = Some(call.tenant.to_string());
        e.queue = call.queue.map(str::to_string);
        e.endpoint = Some(endpoint);
        e.attempt = Some(call.attempt);
        e
    }

    /// A throttled answer: the event, the budget pause it caused, and the per-endpoint count.
    pub(crate) fn throttled(
        &self,
        call: &Call<'_>,
        status: u16,
        headers: &HeaderMap,
        retry_after: Option<Duration>,
        paused_for: Option<Duration>,
    ) {
        let endpoint = self.endpoint_label(&call.upstream.name, call.method, call.uri.path());
        self.metrics
            .throttled_endpoint
            .get_or_create(&EndpointLabels {
                upstream: call.upstream.name.clone(),
                endpoint,
            })
            .inc();
        let mut e = self.call_event(call, Level::Warn, Kind::Throttled, "throttled");
        e.status = Some(status);
        e.headers = rate_limit_headers(headers);
        e.wait_ms = retry_after.or(paused_for).map(millis);
        let paused = paused_for.map(|p| {
            let mut p_e = e.clone();
            p_e.kind = Kind::BudgetPaused;
            p_e.outcome = "paused".into();
            p_e.wait_ms = Some(millis(p));
            p_e.message = format!(
                "budget of {} (tenant {}) paused for {:.1}s",
                call.upstream.name,
                call.tenant,
                p.as_secs_f64()
            );
            p_e
        });
        self.emit(e);
        if let Some(p) = paused {
            self.emit(p);
        }
    }

    /// A call goes again: after the budget's pause (`throttled`) or a backoff.
    /// Headroom refused a proxied call itself (the upstream was not called): `why` in words,
    /// the status the caller got, and when it may try again.
    pub(crate) fn refused(&self, call: &Call<'_>, status: u16, retry_after: Duration, why: &str) {
        let mut e = self.call_event(call, Level::Warn, Kind::Refused, "refused");
        e.status = Some(status);
        e.wait_ms = Some(millis(retry_after));
        e.message = format!("{} ({why}); answered {status}", e.message);
        self.emit(e);
    }

    pub(crate) fn retry(&self, call: &Call<'_>, throttled: bool, wait: Duration, why: &str) {
        let kind = if throttled {
            Kind::Retry
        } else {
            Kind::Backoff
        };
        let mut e = self.call_event(call, Level::Info, kind, "retrying");
        e.wait_ms = Some(millis(wait));
        e.message = format!("{} ({why}); waits {}ms", e.message, millis(wait));
        self.metrics
            .backoff_seconds
            .get_or_create(&metrics::UpstreamLabels {
                upstream: call.upstream.name.clone(),
            })
            .observe(wait.as_secs_f64());
        self.emit(e);
    }

    /// The end of a call that was retried: it succeeded, or its retries ran out.
    pub(crate) fn retry_outcome(
        &self,
        upstream: &str,
        tenant: &str,
        endpoint: &str,
        attempts: u32,
        status: Option<u16>,
        succeeded: bool,
    ) {
        self.metrics
            .retry_outcomes
            .get_or_create(&RetryOutcomeLabels {
                upstream: upstream.to_string(),
                outcome: if succeeded { "succeeded" } else { "exhausted" },
            })
            .inc();
        let (level, kind, outcome) = if succeeded {
            (Level::Info, Kind::RetrySucceeded, "succeeded")
        } else {
            (Level::Error, Kind::RetryExhausted, "exhausted")
        };
        let mut e = Event::new(
            self.now(),
            level,
            kind,
            outcome,
            format!(
                "{upstream} {endpoint} (tenant {tenant}) {outcome} after {attempts} attempts{}",
                status
                    .map(|s| format!(", last status {s}"))
                    .unwrap_or_default()
            ),
        );
        e.upstream = Some(upstream.to_string());
        e.tenant = Some(tenant.to_string());
        e.endpoint = Some(endpoint.to_string());
        e.attempt = Some(attempts);
        e.status = status;
        self.emit(e);
    }

    /// A tenant's OAuth grant broke; `reason` is the token endpoint's, never a token.
    pub(crate) fn oauth_broken(&self, upstream: &str, tenant: &str, reason: &str) {
        let mut e = Event::new(
            self.now(),
            Level::Error,
            Kind::OAuthBroken,
            "broken",
            format!(
                "the OAuth connection of tenant {tenant} to {upstream} is broken ({reason}); \
                 the customer must connect again"
            ),
        );
        e.upstream = Some(upstream.to_string());
        e.tenant = Some(tenant.to_string());
        self.emit(e);
    }

    /// A budget's circuit breaker changed state.
    pub(crate) fn breaker(
        &self,
        upstream: &str,
        tenant: &str,
        state: &headroom_core::breaker::BreakerState,
    ) {
        use headroom_core::breaker::BreakerState;
        let (level, outcome) = match state {
            BreakerState::Closed { .. } => (Level::Info, "closed"),
            BreakerState::HalfOpen { .. } => (Level::Warn, "half_open"),
            BreakerState::Open { .. } => (Level::Error, "open"),
        };
        let mut e = Event::new(
            self.now(),
            level,
            Kind::Breaker,
            outcome,
            format!("circuit breaker of {upstream} (tenant {tenant}) is {outcome}"),
        );
        e.upstream = Some(upstream.to_string());
        e.tenant = Some(tenant.to_string());
        self.emit(e);
    }

    /// After a job's attempt is recorded: metrics, durations, and an event when it failed,
    /// waits for a retry, or succeeded after retries.
    pub(crate) fn job_attempt(
        &self,
        job: &Job,
        outcome: &JobOutcome,
        started: Millis,
        finished: Millis,
    ) {
        let n = &job.new;
        let labels = QueueLabels {
            queue: n.queue.clone(),
            lane: lane_name(n.lane).to_string(),
        };
        let took = (finished - started).max(0);
        self.metrics
            .job_duration_seconds
            .get_or_create(&labels)
            .observe(took as f64 / 1000.0);
        if job.attempts == 0 {
            self.metrics
                .queue_wait_seconds
                .get_or_create(&labels)
                .observe((started - n.created_at).max(0) as f64 / 1000.0);
        }
        if let Ok(mut d) = self.durations.lock() {
            d.record(&n.queue, self.now(), took);
        }
        let attempt = job.attempts + 1;
        // Built only for an event: a job that simply succeeded allocates nothing more.
        let event = |level, kind, out: &str, message: String| {
            let mut e = Event::new(self.now(), level, kind, out, message);
            e.upstream = Some(n.upstream.clone());
            e.tenant = n.tenant.clone();
            e.queue = Some(n.queue.clone());
            e.endpoint = Some(format!("{} {}", n.request.method, n.request.path));
            e.job_id = Some(n.id.clone());
            e.attempt = Some(attempt);
            e
        };
        match outcome {
            JobOutcome::Succeeded if attempt > 1 => {
                self.retry_outcome_metric(&n.upstream, true);
                self.emit(event(
                    Level::Info,
                    Kind::RetrySucceeded,
                    "succeeded",
                    format!("job {} succeeded after {attempt} attempts", n.id),
                ));
            }
            JobOutcome::Succeeded | JobOutcome::Waiting => {}
            JobOutcome::RetryPending { at, error } => {
                let mut e = event(
                    Level::Warn,
                    Kind::JobRetryPending,
                    "retry_pending",
                    format!(
                        "job {} attempt {attempt} failed: {error}; retries later",
                        n.id
                    ),
                );
                e.wait_ms = Some((at - finished).max(0) as u64);
                self.emit(e);
            }
            JobOutcome::Failed { error } => {
                if attempt > 1 {
                    self.retry_outcome_metric(&n.upstream, false);
                    self.emit(event(
                        Level::Error,
                        Kind::RetryExhausted,
                        "exhausted",
                        format!("job {} ran out of retries: {error}", n.id),
                    ));
                }
                self.emit(event(
                    Level::Error,
                    Kind::JobFailed,
                    "failed",
                    format!("job {} failed: {error}", n.id),
                ));
            }
        }
    }

    /// Records how long a job attempt of `queue` took, now (for the duration alerts).
    pub fn record_job_duration(&self, queue: &str, took_ms: i64) {
        if let Ok(mut d) = self.durations.lock() {
            d.record(queue, self.now(), took_ms);
        }
    }

    fn retry_outcome_metric(&self, upstream: &str, succeeded: bool) {
        self.metrics
            .retry_outcomes
            .get_or_create(&RetryOutcomeLabels {
                upstream: upstream.to_string(),
                outcome: if succeeded { "succeeded" } else { "exhausted" },
            })
            .inc();
    }

    /// `GET /v3/objects/{id}`, or `other` once the upstream has `MAX_ENDPOINTS` templates.
    fn endpoint_label(&self, upstream: &str, method: &http::Method, path: &str) -> String {
        let template = endpoint_template(method.as_str(), path);
        let Ok(mut seen) = self.endpoints.lock() else {
            return "other".into();
        };
        let set = seen.entry(upstream.to_string()).or_default();
        if set.contains(&template) {
            return template;
        }
        if set.len() >= MAX_ENDPOINTS {
            return "other".into();
        }
        set.insert(template.clone());
        template
    }

    pub fn metrics(&self) -> &ObserveMetrics {
        &self.metrics
    }
}

/// What a job's attempt led to, taken before the transition goes to the store.
pub(crate) enum JobOutcome {
    Succeeded,
    /// Waits for its budget without spending an attempt (throttled, no room).
    Waiting,
    RetryPending {
        at: Millis,
        error: String,
    },
    Failed {
        error: String,
    },
}

impl JobOutcome {
    pub(crate) fn of(transition: &Transition) -> JobOutcome {
        match transition {
            Transition::Succeeded { .. } => JobOutcome::Succeeded,
            Transition::Retry {
                burn_attempt: false,
                ..
            } => JobOutcome::Waiting,
            Transition::Retry { at, error, .. } => JobOutcome::RetryPending {
                at: *at,
                error: error.clone(),
            },
            Transition::Failed { error, .. } => JobOutcome::Failed {
                error: error.clone(),
            },
        }
    }
}

pub(crate) fn lane_name(lane: headroom_core::Lane) -> &'static str {
    match lane {
        headroom_core::Lane::Realtime => "realtime",
        headroom_core::Lane::Bulk => "bulk",
    }
}

fn millis(d: Duration) -> u64 {
    d.as_millis().min(u64::MAX as u128) as u64
}

/// Rate-limit headers worth keeping with an event; nothing else (never a credential).
pub fn is_rate_limit_header(name: &str) -> bool {
    let n = name.to_ascii_lowercase();
    n.contains("ratelimit")
        || n.contains("rate-limit")
        || n == "retry-after"
        || n == "sforce-limit-info"
        || n == "x-shopify-shop-api-call-limit"
}

pub fn rate_limit_headers(headers: &HeaderMap) -> Vec<(String, String)> {
    headers
        .iter()
        .filter(|(k, _)| is_rate_limit_header(k.as_str()))
        .filter_map(|(k, v)| Some((k.to_string(), v.to_str().ok()?.to_string())))
        .collect()
}

/// Method and a bounded path template: at most three segments, ids (segments with a digit,
/// or longer than 24 characters) as `{id}`. `POST /crm/v3/objects/contacts/123/assoc`
/// becomes `POST /crm/v3/objects/…`.
pub fn endpoint_template(method: &str, path: &str) -> String {
    let mut out = String::from(method);
    out.push(' ');
    let segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    if segments.is_empty() {
        out.push('/');
    }
    for (i, s) in segments.iter().enumerate() {
        if i == 3 {
            out.push_str("/…");
            break;
        }
        out.push('/');
        if s.len() > 24 || s.chars().any(|c| c.is_ascii_digit() && !s.starts_with('v')) {
            out.push_str("{id}");
        } else {
            out.push_str(s);
        }
    }
    out
}

/// Writes the event to the log (JSON through `tracing`) at its level.
fn log(e: &Event) {
    macro_rules! at {
        ($level:expr) => {
            tracing::event!(
                target: "headroom::events",
                $level,
                kind = e.kind.as_str(),
                upstream = e.upstream.as_deref(),
                tenant = e.tenant.as_deref(),
                queue = e.queue.as_deref(),
                endpoint = e.endpoint.as_deref(),
                job = e.job_id.as_deref(),
                attempt = e.attempt,
                status = e.status,
                wait_ms = e.wait_ms,
                outcome = e.outcome.as_str(),
                headers = %serde_json::to_string(&e.headers).unwrap_or_default(),
                "{}",
                e.message
            )
        };
    }
    match e.level {
        Level::Debug => at!(tracing::Level::DEBUG),
        Level::Info => at!(tracing::Level::INFO),
        Level::Warn => at!(tracing::Level::WARN),
        Level::Error => at!(tracing::Level::ERROR),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoint_templates_are_bounded() {
        assert_eq!(
            endpoint_template("POST", "/crm/v3/objects/contacts/123"),
            "POST /crm/v3/objects/…"
        );
        assert_eq!(endpoint_template("GET", "/users/42"), "GET /users/{id}");
        assert_eq!(endpoint_template("GET", "/v2/things"), "GET /v2/things");
        assert_eq!(endpoint_template("GET", ""), "GET /");
    }

    #[test]
    fn only_rate_limit_headers_are_kept() {
        let mut h = HeaderMap::new();
        h.insert("authorization", "Bearer secret".parse().unwrap());
        h.insert("x-ratelimit-remaining", "0".parse().unwrap());
        h.insert("retry-after", "2".parse().unwrap());
        h.insert("set-cookie", "s=1".parse().unwrap());
        let kept = rate_limit_headers(&h);
        assert_eq!(kept.len(), 2, "{kept:?}");
        assert!(kept.iter().all(|(k, _)| k != "authorization"));
    }
}
