//! Rate-limit events and what the event log stores and answers.

use serde::Serialize;

use super::jobs::{Millis, Page};

/// How much an event matters. Ordered: `Debug < Info < Warn < Error`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Level {
    Debug,
    Info,
    Warn,
    Error,
}

impl Level {
    pub fn as_str(self) -> &'static str {
        match self {
            Level::Debug => "debug",
            Level::Info => "info",
            Level::Warn => "warn",
            Level::Error => "error",
        }
    }

    pub fn rank(self) -> i64 {
        self as i64
    }

    pub fn parse(s: &str) -> Option<Level> {
        Some(match s.to_ascii_lowercase().as_str() {
            "debug" => Level::Debug,
            "info" => Level::Info,
            "warn" | "warning" => Level::Warn,
            "error" => Level::Error,
            _ => return None,
        })
    }
}

/// What happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// An upstream answer rejected a call for rate or capacity reasons.
    Throttled,
    /// A throttled call goes again once its budget's pause is over.
    Retry,
    /// A failed call (configured status or transport error) goes again after a backoff.
    Backoff,
    /// A throttled answer paused the whole budget.
    BudgetPaused,
    /// A budget's circuit breaker changed state.
    Breaker,
    /// A call that was retried finally succeeded.
    RetrySucceeded,
    /// A call's retries ran out (or its wait did) without success.
    RetryExhausted,
    /// A job failed for good.
    JobFailed,
    /// A job failed an attempt and waits for its retry.
    JobRetryPending,
    /// Headroom itself refused a proxied call without calling the upstream (no room in the
    /// budget within the call's max wait, too many waiting, breaker open, Redis unreachable).
    Refused,
    /// A tenant's OAuth grant stopped working (`invalid_grant`): the customer must connect
    /// again.
    OAuthBroken,
}

impl Kind {
    pub const ALL: [Kind; 11] = [
        Kind::Throttled,
        Kind::Retry,
        Kind::Backoff,
        Kind::BudgetPaused,
        Kind::Breaker,
        Kind::RetrySucceeded,
        Kind::RetryExhausted,
        Kind::JobFailed,
        Kind::JobRetryPending,
        Kind::Refused,
        Kind::OAuthBroken,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Throttled => "throttled",
            Kind::Retry => "retry",
            Kind::Backoff => "backoff",
            Kind::BudgetPaused => "budget_paused",
            Kind::Breaker => "breaker",
            Kind::RetrySucceeded => "retry_succeeded",
            Kind::RetryExhausted => "retry_exhausted",
            Kind::JobFailed => "job_failed",
            Kind::JobRetryPending => "job_retry_pending",
            Kind::Refused => "refused",
            Kind::OAuthBroken => "oauth_broken",
        }
    }

    pub fn parse(s: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.as_str() == s)
    }
}

/// One rate-limit event. Never holds a credential: headers are only rate-limit headers, the
/// endpoint is the method and path without the query.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Event {
    /// Milliseconds since the Unix epoch.
    pub at: Millis,
    pub level: Level,
    pub kind: Kind,
    pub upstream: Option<String>,
    pub tenant: Option<String>,
    pub queue: Option<String>,
    /// `GET /v3/contacts`: method and path, no query.
    pub endpoint: Option<String>,
    pub job_id: Option<String>,
    pub attempt: Option<u32>,
    pub status: Option<u16>,
    /// The computed wait (backoff, pause, Retry-After), in milliseconds.
    pub wait_ms: Option<u64>,
    /// `throttled`, `retrying`, `paused`, `open`, `succeeded`, `exhausted`, `failed`…
    pub outcome: String,
    /// The rate-limit headers seen on the answer.
    pub headers: Vec<(String, String)>,
    pub message: String,
}

impl Event {
    pub fn new(at: Millis, level: Level, kind: Kind, outcome: &str, message: String) -> Event {
        Event {
            at,
            level,
            kind,
            upstream: None,
            tenant: None,
            queue: None,
            endpoint: None,
            job_id: None,
            attempt: None,
            status: None,
            wait_ms: None,
            outcome: outcome.to_string(),
            headers: Vec::new(),
            message,
        }
    }
}

/// An event as stored: with its place in the log.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StoredEvent {
    pub seq: i64,
    #[serde(flatten)]
    pub event: Event,
}

/// Which events to list; every field narrows.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct EventFilter {
    /// At or above this level.
    pub level: Option<Level>,
    pub kind: Option<Kind>,
    pub upstream: Option<String>,
    pub tenant: Option<String>,
    pub queue: Option<String>,
    /// `at >= since`.
    pub since: Option<Millis>,
    /// `at < until`.
    pub until: Option<Millis>,
}

/// Events of one kind, level, upstream, tenant and queue within a time range.
#[derive(Debug, Clone, PartialEq)]
pub struct EventStat {
    pub kind: Kind,
    pub level: Level,
    pub upstream: Option<String>,
    pub tenant: Option<String>,
    pub queue: Option<String>,
    pub count: u64,
    /// The sum of `wait_ms` of the counted events.
    pub wait_ms: u64,
}

/// Unfinished jobs of one upstream, tenant, queue, lane and status.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Backlog {
    pub upstream: String,
    pub tenant: Option<String>,
    pub queue: String,
    pub lane: String,
    /// `queued`, `running` or `retry_pending`.
    pub status: String,
    pub count: u64,
}

/// The event log, and what observability reads of the jobs. Every backend passes
/// `store::event_conformance`.
#[allow(async_fn_in_trait)]
pub trait EventStore: Send + Sync {
    /// Appends events, in order, in one transaction.
    async fn insert_events(&self, events: &[Event]) -> crate::Result<()>;
    /// Events in log order after the cursor `after` (a `seq`).
    async fn list_events(
        &self,
        filter: &EventFilter,
        after: Option<i64>,
        limit: u32,
    ) -> crate::Result<Page<StoredEvent>>;
    /// Deletes the events before `before`; returns how many.
    async fn prune_events(&self, before: Millis) -> crate::Result<u64>;
    /// Counts of the events in `[since, until)`, grouped by kind, level, upstream, tenant
    /// and queue.
    async fn event_stats(&self, since: Millis, until: Millis) -> crate::Result<Vec<EventStat>>;
    /// The unfinished jobs (queued, running, retry_pending), counted by group.
    async fn job_backlog(&self) -> crate::Result<Vec<Backlog>>;
}
