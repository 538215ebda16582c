//! The mock upstream behind `headroom mock`: a rate-limited API to point Headroom (or anything
//! else) at. It depends on `headroom-core` alone, not on the service.
//!
//! The mock enforces `limit` calls per `window` with the counting model of a real provider and
//! answers with that provider's rate-limit headers, so the proxy, the demo, the tests and the
//! benchmarks have an API to be paced against without calling one. The counting and the headers
//! are [`headroom_core::sim::Upstream`], here driven by the real clock.
//!
//! Every caller is a tenant identified by its `Authorization` header (callers without one share
//! one bucket), and each tenant has its own limit. Any method on any path is an API call:
//! accepted calls get `200` and a JSON echo, throttled ones `429` and a JSON error. A few
//! extras serve tests:
//!
//! - `GET /_mock/stats`: counters as JSON ([`MockStats`]);
//! - `POST /_mock/reset`: forgets every tenant and counter and restarts the windows;
//! - `?status=503` on any call answers that status, `?sleep_ms=250` delays the answer; such a
//!   call is not counted against any limit.
//!
//! A hidden client (`--hidden-share`) spends a share of every tenant's quota, evenly over each
//! window, like another integration using the same credential.
//!
//! The `salesforce-bulk2` profile also runs Bulk API 2.0 ingest and query jobs ([`bulk2`]),
//! each of their calls counted as a Salesforce call.

pub mod bulk2;
pub mod oauth;

pub use bulk2::{Bulk2Control, Bulk2Stats};

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::body::Body;
use axum::extract::{Request, State};
use axum::response::Response;
use axum::routing::{get, post};
use axum::{Json, Router};
use headroom_core::duration::format_duration;
use headroom_core::sim::{Dialect, Model, Upstream};
use http::header::{AUTHORIZATION, CONTENT_TYPE};
use http::{HeaderName, HeaderValue, StatusCode};
use http_body_util::BodyExt;
use serde::Serialize;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// The bucket of callers that send no `Authorization` header.
pub const ANONYMOUS: &str = "(none)";

/// Windows whose accepted calls `/_mock/stats` lists.
const MAX_WINDOWS_KEPT: usize = 10_000;

/// Adds `n` to window `i`'s count, for the first `MAX_WINDOWS_KEPT` windows.
fn count_in(windows: &mut Vec<u64>, i: usize, n: u64) {
    if i < MAX_WINDOWS_KEPT {
        if windows.len() <= i {
            windows.resize(i + 1, 0);
        }
        windows[i] += n;
    }
}

/// The longest `?sleep_ms=` honoured; longer values are cut to it.
const MAX_SLEEP: Duration = Duration::from_secs(3600);

/// A provider to imitate: how it counts and which headers it sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Profile {
    /// Fixed window; IETF `RateLimit` and `RateLimit-Policy` (structured fields).
    #[value(name = "ietf")]
    Ietf,
    /// Fixed window; `RateLimit-Limit`, `-Remaining`, `-Reset` (seconds).
    #[value(name = "ietf-legacy")]
    IetfLegacy,
    /// Fixed window; `X-RateLimit-*` with the reset as epoch seconds, and a `Date`.
    #[value(name = "x-ratelimit")]
    XRatelimit,
    /// Fixed window; `X-RateLimit-*` with the reset as seconds from now.
    #[value(name = "x-ratelimit-delta")]
    XRatelimitDelta,
    /// Fixed window; `X-HubSpot-RateLimit-Max`, `-Remaining`, `-Interval-Milliseconds`.
    #[value(name = "hubspot")]
    Hubspot,
    /// Leaky bucket of `limit` calls draining over `window`; `X-Shopify-Shop-Api-Call-Limit`.
    #[value(name = "shopify")]
    Shopify,
    /// Fixed window; no headers but `Retry-After` on a 429.
    #[value(name = "retry-after")]
    RetryAfter,
    /// Fixed window of `limit` tokens; OpenAI's `x-ratelimit-*-tokens` headers. A call costs
    /// `?tokens=N` (else 200) tokens and reports them as `usage.total_tokens` in its body.
    #[value(name = "openai")]
    OpenAi,
    /// Shopify's GraphQL Admin API: a leaky bucket of `limit` points draining over `window`.
    /// A query costs `?cost=N` (else 10) points; every answer is a 200 whose
    /// `extensions.cost` reports the cost and the bucket (`throttleStatus`), and a query the
    /// bucket cannot take answers `errors[].extensions.code = "THROTTLED"`.
    #[value(name = "shopify-graphql")]
    ShopifyGraphql,
    /// Fixed window. Salesforce: `Sforce-Limit-Info: api-usage=N/M`; a spent limit is a 403 `REQUEST_LIMIT_EXCEEDED`.
    #[value(name = "salesforce")]
    Salesforce,
    /// `salesforce`'s limit and answers, plus Bulk API 2.0 ingest jobs under
    /// `/services/data/vNN.N/jobs/ingest` (create, one CSV upload, close or abort, poll,
    /// successful/failed/unprocessed results) and query jobs under `…/jobs/query` (create,
    /// poll, abort, results a page at a time); every Bulk call counts against the limit.
    #[value(name = "salesforce-bulk2")]
    SalesforceBulk2,
    /// Fixed window. GitHub REST: `x-ratelimit-*` with an epoch reset; a spent limit is a 403 that says so.
    #[value(name = "github")]
    Github,
    /// Fixed window. GitHub GraphQL: `x-ratelimit-*`; a spent limit is a 200 with a `RATE_LIMITED` error.
    #[value(name = "github-graphql")]
    GithubGraphql,
    /// Fixed window. Stripe: no rate-limit headers; a 429 with error code `rate_limit`.
    #[value(name = "stripe")]
    Stripe,
    /// Fixed window. Jira Cloud: `Beta-RateLimit-Policy` and `Beta-RateLimit`; a 429 with `Retry-After`.
    #[value(name = "jira")]
    Jira,
    /// Fixed window. Zendesk: `X-Rate-Limit` and `X-Rate-Limit-Remaining`; a 429 with `Retry-After`.
    #[value(name = "zendesk")]
    Zendesk,
    /// Fixed window. Intercom: `X-RateLimit-*` with an epoch reset; a 429 `rate_limit_exceeded`.
    #[value(name = "intercom")]
    Intercom,
    /// An average with bursts (a bucket of `limit` draining over `window`), as Slack says its
    /// tiers allow. Slack: only `Retry-After` on a 429 `{"ok":false,"error":"ratelimited"}`.
    #[value(name = "slack")]
    Slack,
    /// Fixed window. Microsoft Graph: only `Retry-After` on a 429 `TooManyRequests`.
    #[value(name = "microsoft-graph")]
    MicrosoftGraph,
    /// Fixed window. Google APIs: no headers; a spent quota is a 403 `userRateLimitExceeded`.
    #[value(name = "google")]
    Google,
    /// "An average of three requests per second", with bursts: a bucket of `limit` draining
    /// over `window`. Notion: only `Retry-After` on a 429 `rate_limited`.
    #[value(name = "notion")]
    Notion,
    /// Fixed window. Zoom: `X-RateLimit-Category`, `-Type`, `-Limit`, `-Remaining`; a 429 with `Retry-After`.
    #[value(name = "zoom")]
    Zoom,
    /// Fixed window. Twilio: no rate-limit headers; a 429 with error 20429.
    #[value(name = "twilio")]
    Twilio,
    /// Fixed window. Anthropic: `anthropic-ratelimit-requests-*` (reset in RFC 3339); a 429 `rate_limit_error` with `retry-after`.
    #[value(name = "anthropic")]
    Anthropic,
    /// No limit and no rate-limit headers, for measuring proxy overhead.
    #[value(name = "unlimited")]
    Unlimited,
}

impl Profile {
    /// The counting model and header dialect; `None` for no limit at all.
    pub fn model(self) -> Option<(Model, Dialect)> {
        Some(match self {
            Profile::Ietf => (Model::FixedWindow, Dialect::Ietf),
            Profile::IetfLegacy => (Model::FixedWindow, Dialect::IetfLegacy),
            Profile::XRatelimit => (Model::FixedWindow, Dialect::XRateLimitEpoch),
            Profile::XRatelimitDelta => (Model::FixedWindow, Dialect::XRateLimitDelta),
            Profile::Hubspot => (Model::FixedWindow, Dialect::HubSpot),
            Profile::Shopify => (Model::LeakyBucket, Dialect::Shopify),
            Profile::RetryAfter => (Model::FixedWindow, Dialect::RetryAfter),
            Profile::OpenAi => (Model::FixedWindow, Dialect::OpenAiTokens),
            Profile::ShopifyGraphql => (Model::LeakyBucket, Dialect::ShopifyGraphql),
            Profile::Salesforce | Profile::SalesforceBulk2 => {
                (Model::FixedWindow, Dialect::Salesforce)
            }
            Profile::Github => (Model::FixedWindow, Dialect::XRateLimitEpoch),
            Profile::GithubGraphql => (Model::FixedWindow, Dialect::XRateLimitEpoch),
            Profile::Stripe => (Model::FixedWindow, Dialect::Bare),
            Profile::Jira => (Model::FixedWindow, Dialect::JiraBeta),
            Profile::Zendesk => (Model::FixedWindow, Dialect::Zendesk),
            Profile::Intercom => (Model::FixedWindow, Dialect::XRateLimitEpoch),
            Profile::Slack => (Model::LeakyBucket, Dialect::RetryAfter),
            Profile::MicrosoftGraph => (Model::FixedWindow, Dialect::RetryAfter),
            Profile::Google => (Model::FixedWindow, Dialect::Bare),
            Profile::Notion => (Model::LeakyBucket, Dialect::RetryAfter),
            Profile::Zoom => (Model::FixedWindow, Dialect::Zoom),
            Profile::Twilio => (Model::FixedWindow, Dialect::Bare),
            Profile::Anthropic => (Model::FixedWindow, Dialect::Anthropic),
            Profile::Unlimited => return None,
        })
    }

    /// The status and body of a call the limit refused, as the vendor answers it.
    pub fn throttled(self) -> (StatusCode, &'static [u8]) {
        match self {
            Profile::Hubspot => (
                StatusCode::TOO_MANY_REQUESTS,
                br#"{"status":"error","message":"You have reached your ten_secondly_rolling limit.","errorType":"RATE_LIMIT","policyName":"TEN_SECONDLY_ROLLING"}"#,
            ),
            Profile::Shopify => (
                StatusCode::TOO_MANY_REQUESTS,
                br#"{"errors":"Exceeded 2 calls per second for api client. Reduce request rates to resume uninterrupted service."}"#,
            ),
            Profile::Salesforce | Profile::SalesforceBulk2 => (StatusCode::FORBIDDEN, br#"[{"message":"TotalRequests Limit exceeded.","errorCode":"REQUEST_LIMIT_EXCEEDED"}]"#),
            Profile::Github => (StatusCode::FORBIDDEN, br#"{"message":"API rate limit exceeded for user ID 1.","documentation_url":"https://docs.github.com/rest/overview/rate-limits-for-the-rest-api"}"#),
            Profile::GithubGraphql => (StatusCode::OK, br#"{"errors":[{"type":"RATE_LIMITED","message":"API rate limit exceeded for user ID 1."}]}"#),
            Profile::Stripe => (StatusCode::TOO_MANY_REQUESTS, br#"{"error":{"code":"rate_limit","message":"Too many requests hit the API too quickly.","type":"invalid_request_error"}}"#),
            Profile::Jira => (StatusCode::TOO_MANY_REQUESTS, br#"{"message":"Rate limit exceeded"}"#),
            Profile::Zendesk => (StatusCode::TOO_MANY_REQUESTS, br#"{"error":"TooManyRequests","description":"You have exceeded the rate limit"}"#),
            Profile::Intercom => (StatusCode::TOO_MANY_REQUESTS, br#"{"type":"error.list","errors":[{"code":"rate_limit_exceeded","message":"Exceeded rate limit"}]}"#),
            Profile::Slack => (StatusCode::TOO_MANY_REQUESTS, br#"{"ok":false,"error":"ratelimited"}"#),
            Profile::MicrosoftGraph => (StatusCode::TOO_MANY_REQUESTS, br#"{"error":{"code":"TooManyRequests","message":"Please retry again later."}}"#),
            Profile::Google => (StatusCode::FORBIDDEN, br#"{"error":{"errors":[{"domain":"usageLimits","reason":"userRateLimitExceeded","message":"User Rate Limit Exceeded"}],"code":403,"message":"User Rate Limit Exceeded"}}"#),
            Profile::Notion => (StatusCode::TOO_MANY_REQUESTS, br#"{"object":"error","status":429,"code":"rate_limited","message":"You have been rate limited."}"#),
            Profile::Zoom => (StatusCode::TOO_MANY_REQUESTS, br#"{"code":429,"message":"You have reached the maximum per-second rate limit for this API."}"#),
            Profile::Twilio => (StatusCode::TOO_MANY_REQUESTS, br#"{"code":20429,"message":"Too Many Requests","status":429}"#),
            Profile::Anthropic => (StatusCode::TOO_MANY_REQUESTS, br#"{"type":"error","error":{"type":"rate_limit_error","message":"Number of requests has exceeded your rate limit."}}"#),
            _ => (
                StatusCode::TOO_MANY_REQUESTS,
                br#"{"ok":false,"error":"too_many_requests","message":"Too many requests; the rate limit is exhausted"}"#,
            ),
        }
    }

    /// The name used on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Profile::Ietf => "ietf",
            Profile::IetfLegacy => "ietf-legacy",
            Profile::XRatelimit => "x-ratelimit",
            Profile::XRatelimitDelta => "x-ratelimit-delta",
            Profile::Hubspot => "hubspot",
            Profile::Shopify => "shopify",
            Profile::RetryAfter => "retry-after",
            Profile::OpenAi => "openai",
            Profile::ShopifyGraphql => "shopify-graphql",
            Profile::Salesforce => "salesforce",
            Profile::SalesforceBulk2 => "salesforce-bulk2",
            Profile::Github => "github",
            Profile::GithubGraphql => "github-graphql",
            Profile::Stripe => "stripe",
            Profile::Jira => "jira",
            Profile::Zendesk => "zendesk",
            Profile::Intercom => "intercom",
            Profile::Slack => "slack",
            Profile::MicrosoftGraph => "microsoft-graph",
            Profile::Google => "google",
            Profile::Notion => "notion",
            Profile::Zoom => "zoom",
            Profile::Twilio => "twilio",
            Profile::Anthropic => "anthropic",
            Profile::Unlimited => "unlimited",
        }
    }
}

/// What the mock enforces.
#[derive(Debug, Clone)]
pub struct MockConfig {
    pub profile: Profile,
    /// Calls per window for each tenant; at least 1 is enforced.
    pub limit: u32,
    /// At least 1 ms is enforced.
    pub window: Duration,
    /// Delay added to every response.
    pub latency: Duration,
    /// Share (0 to 1) of each tenant's quota a hidden client spends per window.
    pub hidden_share: f64,
    /// This long after the start (or a reset), every tenant's limit becomes this (a plan
    /// change, a vendor tightening its limits).
    pub limit_change: Option<(Duration, u32)>,
}

impl Default for MockConfig {
    fn default() -> Self {
        MockConfig {
            profile: Profile::Ietf,
            limit: 100,
            window: Duration::from_secs(10),
            latency: Duration::ZERO,
            hidden_share: 0.0,
            limit_change: None,
        }
    }
}

impl MockConfig {
    fn sanitised(mut self) -> Self {
        self.limit = self.limit.max(1);
        self.window = self.window.max(Duration::from_millis(1));
        self.hidden_share = if self.hidden_share.is_finite() {
            self.hidden_share.clamp(0.0, 1.0)
        } else {
            0.0
        };
        self
    }

    /// `"profile hubspot, 100 per 10s"`, plus latency and hidden share when set.
    pub fn describe(&self) -> String {
        let mut s = match self.profile {
            Profile::Unlimited => "profile unlimited".to_string(),
            p => format!(
                "profile {}, {} per {}",
                p.name(),
                self.limit,
                format_duration(self.window)
            ),
        };
        if !self.latency.is_zero() {
            s.push_str(&format!(", latency {}", format_duration(self.latency)));
        }
        if self.hidden_share > 0.0 && self.profile != Profile::Unlimited {
            s.push_str(&format!(
                ", hidden client {:.0}%",
                self.hidden_share * 100.0
            ));
        }
        if let Some((at, limit)) = self
            .limit_change
            .filter(|_| self.profile != Profile::Unlimited)
        {
            s.push_str(&format!(
                ", {limit} per window after {}",
                format_duration(at)
            ));
        }
        s
    }
}

/// The mock's counters, as `GET /_mock/stats` returns them.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct MockStats {
    /// Calls answered 200 (under the limit, or any call with the `unlimited` profile).
    pub accepted: u64,
    /// Calls answered 429.
    pub throttled: u64,
    /// Calls with `?status=` or `?sleep_ms=`, which bypass the limits.
    pub forced: u64,
    /// Calls of the hidden client, accepted and throttled (summed over tenants).
    pub hidden_accepted: u64,
    pub hidden_throttled: u64,
    /// Per tenant (the `Authorization` value, or `"(none)"`). Empty for `unlimited`.
    pub by_tenant: BTreeMap<String, TenantStats>,
    /// The most calls accepted in one window (windows aligned to the start or the last reset),
    /// over all tenants, not counting the hidden client. 0 for `unlimited`.
    pub max_in_window: u64,
    /// What accepted calls cost (calls, or tokens with `openai`) in each aligned window from
    /// the start (or the last reset), over all tenants, not counting the hidden client: the
    /// first 10,000 windows. Empty for `unlimited`.
    pub accepted_per_window: Vec<u64>,
    /// The units the accepted calls cost (tokens with `openai`; one per call otherwise).
    pub accepted_cost: u64,
    /// Calls throttled in each aligned window (as `accepted_per_window`, in calls).
    pub throttled_per_window: Vec<u64>,
    /// Records received in accepted HubSpot-style batch calls (`…/batch/…` with `inputs`).
    pub batch_records: u64,
    /// Distinct records applied by batch calls (accepted, not failing validation).
    pub batch_records_applied: u64,
    /// Records applied again after an earlier call had applied them already.
    pub batch_records_reapplied: u64,
    /// Records refused for validation (an `email` property containing `invalid`).
    pub batch_records_invalid: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct TenantStats {
    pub accepted: u64,
    pub throttled: u64,
    /// The most calls of this tenant accepted in one window.
    pub max_in_window: u64,
}

/// Accepted calls per aligned window, remembering the busiest.
#[derive(Debug, Default)]
struct WindowCount {
    index: u64,
    count: u64,
    max: u64,
}

impl WindowCount {
    fn add(&mut self, index: u64) {
        if index != self.index {
            *self = WindowCount {
                index,
                count: 0,
                max: self.max,
            };
        }
        self.count += 1;
        self.max = self.max.max(self.count);
    }
}

struct Tenant {
    upstream: Upstream,
    accepted: u64,
    throttled: u64,
    window: WindowCount,
}

struct Inner {
    /// Times are seconds since this instant; windows are aligned to it.
    start: Instant,
    tenants: HashMap<String, Tenant>,
    throttled: u64,
    forced: u64,
    hidden_done: u64,
    hidden_accepted: u64,
    hidden_throttled: u64,
    window: WindowCount,
    per_window: Vec<u64>,
    throttled_per_window: Vec<u64>,
    accepted_cost: u64,
    /// Batch records applied, by `objectWriteTraceId`, with how often.
    applied: HashMap<String, u32>,
    batch_records: u64,
    batch_records_invalid: u64,
}

impl Inner {
    fn new() -> Self {
        Inner {
            start: Instant::now(),
            tenants: HashMap::new(),
            throttled: 0,
            forced: 0,
            hidden_done: 0,
            hidden_accepted: 0,
            hidden_throttled: 0,
            window: WindowCount::default(),
            per_window: Vec::new(),
            throttled_per_window: Vec::new(),
            accepted_cost: 0,
            applied: HashMap::new(),
            batch_records: 0,
            batch_records_invalid: 0,
        }
    }
}

struct Shared {
    config: MockConfig,
    /// `Some` unless the profile is `unlimited`.
    limits: Option<(Model, Dialect)>,
    /// Accepted calls, kept outside the lock so the `unlimited` path takes none.
    accepted: AtomicU64,
    inner: Mutex<Inner>,
    /// The Bulk API 2.0 jobs of the `salesforce-bulk2` profile.
    bulk: Arc<bulk2::Bulk2>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic elsewhere cannot leave the counters inconsistent enough to matter.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn stats(&self) -> MockStats {
        let inner = self.lock();
        MockStats {
            accepted: self.accepted.load(Ordering::Relaxed),
            throttled: inner.throttled,
            forced: inner.forced,
            hidden_accepted: inner.hidden_accepted,
            hidden_throttled: inner.hidden_throttled,
            by_tenant: inner
                .tenants
                .iter()
                .map(|(k, t)| {
                    let stats = TenantStats {
                        accepted: t.accepted,
                        throttled: t.throttled,
                        max_in_window: t.window.max,
                    };
                    (k.clone(), stats)
                })
                .collect(),
            max_in_window: inner.window.max,
            accepted_per_window: inner.per_window.clone(),
            accepted_cost: inner.accepted_cost,
            throttled_per_window: inner.throttled_per_window.clone(),
            batch_records: inner.batch_records,
            batch_records_applied: inner.applied.len() as u64,
            batch_records_reapplied: inner.applied.values().map(|n| u64::from(n - 1)).sum(),
            batch_records_invalid: inner.batch_records_invalid,
        }
    }

    /// Answers an accepted HubSpot-style batch call: every input is applied except those
    /// whose `properties.email` contains `invalid`, which fail validation (a 207).
    fn batch(&self, body: &[u8]) -> Option<(StatusCode, Vec<u8>)> {
        let v: serde_json::Value = serde_json::from_slice(body).ok()?;
        let inputs = v.get("inputs")?.as_array()?;
        let mut inner = self.lock();
        let mut results = Vec::new();
        let mut errors = Vec::new();
        for input in inputs {
            let trace = input
                .get("objectWriteTraceId")
                .map(|t| t.as_str().map_or_else(|| t.to_string(), str::to_string))
                .unwrap_or_default();
            inner.batch_records += 1;
            let email = input
                .pointer("/properties/email")
                .and_then(|e| e.as_str())
                .unwrap_or("");
            if email.contains("invalid") {
                inner.batch_records_invalid += 1;
                errors.push(serde_json::json!({
                    "status": "error",
                    "category": "VALIDATION_ERROR",
                    "message": format!("Property values were not valid: email \"{email}\""),
                    "context": { "objectWriteTraceId": [trace] },
                }));
            } else {
                *inner.applied.entry(trace.clone()).or_insert(0) += 1;
                results.push(serde_json::json!({
                    "id": format!("{}", 1000 + inner.applied.len()),
                    "objectWriteTraceId": trace,
                    "properties": input.get("properties").cloned().unwrap_or_default(),
                }));
            }
        }
        let status = if errors.is_empty() {
            StatusCode::OK
        } else {
            StatusCode::MULTI_STATUS
        };
        let mut out = serde_json::json!({ "status": "COMPLETE", "results": results });
        if !errors.is_empty() {
            out["numErrors"] = serde_json::json!(errors.len());
            out["errors"] = serde_json::json!(errors);
        }
        Some((status, out.to_string().into_bytes()))
    }

    /// A Graph `$batch`: each inner request counted against `tenant`'s limit; `None` for a
    /// payload that is not one.
    fn graph_batch(
        &self,
        tenant: &str,
        model: Model,
        dialect: Dialect,
        body: &[u8],
    ) -> Option<Vec<u8>> {
        let v: serde_json::Value = serde_json::from_slice(body).ok()?;
        let requests = v.get("requests")?.as_array()?;
        let mut responses = Vec::with_capacity(requests.len());
        for request in requests {
            let id = request.get("id").cloned().unwrap_or_default();
            let (accepted, headers) = self.call(tenant, model, dialect, 1.0);
            if accepted {
                let mut inner = self.lock();
                inner.batch_records += 1;
                // Ids repeat from one batch to the next: a record is its url and body.
                let record = format!(
                    "{} {}",
                    request
                        .get("url")
                        .map(ToString::to_string)
                        .unwrap_or_default(),
                    request
                        .get("body")
                        .map(ToString::to_string)
                        .unwrap_or_default()
                );
                *inner.applied.entry(record).or_insert(0) += 1;
                responses.push(serde_json::json!({
                    "id": id, "status": 200, "headers": {"Content-Type": "application/json"},
                    "body": {"id": format!("{}", 1000 + inner.applied.len())},
                }));
            } else {
                let retry_after = headers
                    .iter()
                    .find(|(k, _)| k.eq_ignore_ascii_case("retry-after"))
                    .map_or_else(|| "1".to_string(), |(_, v)| v.clone());
                responses.push(serde_json::json!({
                    "id": id, "status": 429, "headers": {"Retry-After": retry_after},
                    "body": {"error": {"code": "TooManyRequests", "message": "Please retry again later."}},
                }));
            }
        }
        Some(
            serde_json::json!({ "responses": responses })
                .to_string()
                .into_bytes(),
        )
    }

    fn reset(&self) {
        let mut inner = self.lock();
        *inner = Inner::new();
        self.accepted.store(0, Ordering::Relaxed);
        drop(inner);
        self.bulk.reset();
    }

    fn new_upstream(&self, model: Model) -> Upstream {
        Upstream::new(model, self.config.limit, self.config.window)
    }

    /// The limit in force `now` seconds after the start.
    fn limit_at(&self, now: f64) -> u32 {
        match self.config.limit_change {
            Some((at, limit)) if now >= at.as_secs_f64() => limit.max(1),
            _ => self.config.limit,
        }
    }

    /// A tenant's bucket now: its size and what is left of it.
    fn level(&self, tenant: &str) -> (f64, f64) {
        let guard = self.lock();
        let quota = f64::from(self.config.limit);
        match guard.tenants.get(tenant) {
            Some(t) => (quota, (quota - t.upstream.used()).max(0.0)),
            None => (quota, quota),
        }
    }

    /// Counts one call of `tenant` costing `cost` units; returns whether it was accepted and
    /// the headers to send.
    fn call(
        &self,
        tenant: &str,
        model: Model,
        dialect: Dialect,
        cost: f64,
    ) -> (bool, Vec<(String, String)>) {
        let epoch = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64());
        let mut guard = self.lock();
        let inner = &mut *guard;
        let now = inner.start.elapsed().as_secs_f64();
        let index = (now / self.config.window.as_secs_f64()) as u64;
        if !inner.tenants.contains_key(tenant) {
            let t = Tenant {
                upstream: self.new_upstream(model),
                accepted: 0,
                throttled: 0,
                window: WindowCount::default(),
            };
            inner.tenants.insert(tenant.to_string(), t);
        }
        let Some(t) = inner.tenants.get_mut(tenant) else {
            return (false, Vec::new());
        };
        t.upstream.set_quota(self.limit_at(now));
        let accepted = t.upstream.call_costing(now, cost);
        if accepted {
            t.accepted += 1;
            t.window.add(index);
            inner.window.add(index);
            inner.accepted_cost += cost as u64;
            if let Ok(i) = usize::try_from(index) {
                count_in(&mut inner.per_window, i, cost as u64);
            }
            self.accepted.fetch_add(1, Ordering::Relaxed);
        } else {
            t.throttled += 1;
            inner.throttled += 1;
            if let Ok(i) = usize::try_from(index) {
                count_in(&mut inner.throttled_per_window, i, 1);
            }
        }
        let headers = t.upstream.headers(dialect, now, epoch, accepted);
        (accepted, headers)
    }

    /// The hidden client: spends `hidden_share` of every tenant's quota, evenly.
    async fn spend_hidden(self: Arc<Self>) {
        let per_sec = self.config.hidden_share * f64::from(self.config.limit)
            / self.config.window.as_secs_f64();
        let period = Duration::from_secs_f64((1.0 / per_sec).clamp(0.005, 1.0));
        // After a stall, catch up at most one window's worth of calls.
        let max_burst = (self.config.hidden_share * f64::from(self.config.limit)).ceil() as u64;
        let mut ticks = tokio::time::interval(period);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticks.tick().await;
            let mut guard = self.lock();
            let inner = &mut *guard;
            let now = inner.start.elapsed().as_secs_f64();
            let due = (now * per_sec) as u64;
            if due > inner.hidden_done + max_burst {
                inner.hidden_done = due - max_burst;
            }
            let limit = self.limit_at(now);
            while inner.hidden_done < due {
                inner.hidden_done += 1;
                for t in inner.tenants.values_mut() {
                    t.upstream.set_quota(limit);
                    if t.upstream.call(now) {
                        inner.hidden_accepted += 1;
                    } else {
                        inner.hidden_throttled += 1;
                    }
                }
            }
        }
    }
}

/// A running mock. Dropping it closes the listener at once and each open connection once its
/// call is answered; [`MockHandle::shutdown`] also waits for those calls.
pub struct MockHandle {
    addr: SocketAddr,
    shared: Arc<Shared>,
    stop: Option<oneshot::Sender<()>>,
    server: Option<JoinHandle<()>>,
    hidden: Option<JoinHandle<()>>,
}

impl MockHandle {
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://ADDR`, without a trailing slash.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn config(&self) -> &MockConfig {
        &self.shared.config
    }

    /// The counters, read in process.
    pub fn stats(&self) -> MockStats {
        self.shared.stats()
    }

    /// The Bulk API 2.0 endpoints (`salesforce-bulk2`): settings, stats, waiting.
    pub fn bulk(&self) -> Bulk2Control {
        Bulk2Control {
            bulk: self.shared.bulk.clone(),
        }
    }

    /// The Bulk API 2.0 counters, as `GET /_mock/bulk/stats` returns them.
    pub fn bulk_stats(&self) -> Bulk2Stats {
        self.shared.bulk.stats()
    }

    /// Forgets every tenant and counter (and every Bulk job), as `POST /_mock/reset` does.
    pub fn reset(&self) {
        self.shared.reset();
    }

    /// Stops accepting connections and waits for in-flight calls to finish.
    pub async fn shutdown(mut self) {
        if let Some(hidden) = self.hidden.take() {
            hidden.abort();
        }
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(server) = self.server.take() {
            let _ = server.await;
        }
    }
}

impl Drop for MockHandle {
    fn drop(&mut self) {
        // Open connections close once their call is answered; the listener closes now.
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        for task in [self.hidden.take(), self.server.take()]
            .into_iter()
            .flatten()
        {
            task.abort();
        }
    }
}

/// Serves the mock on `listener` until the handle is dropped or shut down. Call it inside a
/// tokio runtime.
pub async fn spawn(listener: TcpListener, config: MockConfig) -> std::io::Result<MockHandle> {
    let addr = listener.local_addr()?;
    let config = config.sanitised();
    let limits = config.profile.model();
    let shared = Arc::new(Shared {
        limits,
        accepted: AtomicU64::new(0),
        inner: Mutex::new(Inner::new()),
        config,
        bulk: Arc::new(bulk2::Bulk2::new()),
    });
    let hidden = match limits {
        Some(_) if shared.config.hidden_share > 0.0 => {
            Some(tokio::spawn(shared.clone().spend_hidden()))
        }
        _ => None,
    };
    let app = Router::new()
        .route("/_mock/stats", get(stats))
        .route("/_mock/reset", post(reset))
        .route("/_mock/bulk/stats", get(bulk_stats))
        .route("/_mock/bulk/config", get(bulk_config).post(bulk_config))
        .fallback(call)
        .with_state(shared.clone());
    let (stop, stopped) = oneshot::channel::<()>();
    let server = tokio::spawn(async move {
        let serve = axum::serve(listener, app).with_graceful_shutdown(async move {
            let _ = stopped.await;
        });
        if let Err(e) = serve.await {
            eprintln!("mock upstream stopped: {e}");
        }
    });
    Ok(MockHandle {
        addr,
        shared,
        stop: Some(stop),
        server: Some(server),
        hidden,
    })
}

async fn stats(State(shared): State<Arc<Shared>>) -> Json<MockStats> {
    Json(shared.stats())
}

async fn reset(State(shared): State<Arc<Shared>>) -> Json<serde_json::Value> {
    shared.reset();
    Json(serde_json::json!({ "ok": true }))
}

async fn bulk_stats(State(shared): State<Arc<Shared>>) -> Json<Bulk2Stats> {
    Json(shared.bulk.stats())
}

async fn bulk_config(State(shared): State<Arc<Shared>>, body: axum::body::Bytes) -> Response {
    shared.bulk.configure(Some(&body))
}

#[derive(Serialize)]
struct Echo<'a> {
    ok: bool,
    method: &'a str,
    path: &'a str,
    body_bytes: u64,
    /// What the call cost, as an LLM API reports it (the `openai` profile).
    #[serde(skip_serializing_if = "Option::is_none")]
    usage: Option<Usage>,
}

#[derive(Serialize)]
struct Usage {
    total_tokens: u64,
}

/// What a call costs: `?{name}=N` (1 to 1,000,000), else `default` — the tokens of an
/// `openai` call, the points of a `shopify-graphql` query.
fn cost_param(query: Option<&str>, name: &str, default: u64) -> u64 {
    query
        .into_iter()
        .flat_map(|q| url::form_urlencoded::parse(q.as_bytes()))
        .find(|(k, _)| k == name)
        .and_then(|(_, v)| v.parse::<u64>().ok())
        .filter(|n| (1..=1_000_000).contains(n))
        .unwrap_or(default)
}

/// A Shopify GraphQL answer: the data or the THROTTLED error, with the cost extension.
fn shopify_graphql_body(
    accepted: bool,
    cost: u64,
    quota: f64,
    available: f64,
    window: Duration,
) -> Vec<u8> {
    let restore = quota / window.as_secs_f64().max(1e-3);
    let status = serde_json::json!({
        "maximumAvailable": quota,
        "currentlyAvailable": available.floor().max(0.0),
        "restoreRate": (restore * 100.0).round() / 100.0,
    });
    let body = if accepted {
        serde_json::json!({
            "data": { "shop": { "name": "mock" } },
            "extensions": { "cost": {
                "requestedQueryCost": cost, "actualQueryCost": cost, "throttleStatus": status,
            } },
        })
    } else {
        serde_json::json!({
            "errors": [{ "message": "Throttled", "extensions": {
                "code": "THROTTLED",
                "documentation": "https://shopify.dev/api/usage/rate-limits",
            } }],
            "extensions": { "cost": {
                "requestedQueryCost": cost, "actualQueryCost": null, "throttleStatus": status,
            } },
        })
    };
    body.to_string().into_bytes()
}

/// Batch call bodies are read up to this size.
const MAX_BATCH_BODY: usize = 16 << 20;

/// What `?status=` and `?sleep_ms=` ask for.
#[derive(Default)]
struct Forced {
    status: Option<StatusCode>,
    sleep: Option<Duration>,
}

fn forced(query: &str) -> Result<Forced, String> {
    let mut f = Forced::default();
    for (k, v) in url::form_urlencoded::parse(query.as_bytes()) {
        match &*k {
            "status" => {
                let status = v
                    .parse::<u16>()
                    .ok()
                    .and_then(|n| StatusCode::from_u16(n).ok())
                    .filter(|s| (200..=599).contains(&s.as_u16()))
                    .ok_or_else(|| format!("status={v} is not a status from 200 to 599"))?;
                f.status = Some(status);
            }
            "sleep_ms" => {
                let ms = v
                    .parse::<u64>()
                    .map_err(|_| format!("sleep_ms={v} is not a number of milliseconds"))?;
                f.sleep = Some(Duration::from_millis(ms).min(MAX_SLEEP));
            }
            _ => {}
        }
    }
    Ok(f)
}

fn json_response(status: StatusCode, body: Vec<u8>) -> Response {
    let mut response = Response::new(Body::from(body));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

/// Any other method and path: one API call.
async fn call(State(shared): State<Arc<Shared>>, request: Request) -> Response {
    let (parts, body) = request.into_parts();
    let forced = match parts.uri.query().map(forced).transpose() {
        Ok(f) => f.unwrap_or_default(),
        Err(message) => {
            let body = serde_json::json!({ "ok": false, "error": message });
            return json_response(StatusCode::BAD_REQUEST, body.to_string().into_bytes());
        }
    };
    if let (Profile::SalesforceBulk2, Some((model, dialect)), None, None) = (
        shared.config.profile,
        shared.limits,
        forced.status,
        forced.sleep,
    ) {
        if let Some(route) = bulk2::Route::parse(parts.uri.path()) {
            return bulk_call(&shared, parts, body, route, model, dialect).await;
        }
    }
    // Count the body without buffering it, so any size is fine; batch calls are kept (up to
    // a limit) to answer them record by record.
    let graph_batch =
        shared.config.profile == Profile::MicrosoftGraph && parts.uri.path().ends_with("/$batch");
    let is_batch = parts.uri.path().contains("/batch/") || graph_batch;
    let mut kept = Vec::new();
    let mut body_bytes = 0u64;
    let mut body = body;
    while let Some(frame) = body.frame().await {
        match frame {
            Ok(frame) => {
                if let Some(data) = frame.data_ref() {
                    body_bytes += data.len() as u64;
                    if is_batch && kept.len() < MAX_BATCH_BODY {
                        kept.extend_from_slice(data);
                    }
                }
            }
            Err(_) => {
                let body = br#"{"ok":false,"error":"the request body could not be read"}"#;
                return json_response(StatusCode::BAD_REQUEST, body.to_vec());
            }
        }
    }
    let cost = match shared.config.profile {
        Profile::OpenAi => cost_param(parts.uri.query(), "tokens", 200),
        Profile::ShopifyGraphql => cost_param(parts.uri.query(), "cost", 10),
        _ => 1,
    };
    let echo = |ok: bool| Echo {
        ok,
        method: parts.method.as_str(),
        path: parts.uri.path(),
        body_bytes,
        usage: (ok && shared.config.profile == Profile::OpenAi)
            .then_some(Usage { total_tokens: cost }),
    };

    if forced.status.is_some() || forced.sleep.is_some() {
        shared.lock().forced += 1;
        let delay = forced.sleep.unwrap_or_default() + shared.config.latency;
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        let status = forced.status.unwrap_or(StatusCode::OK);
        let body = serde_json::to_vec(&echo(status.is_success())).unwrap_or_default();
        return json_response(status, body);
    }

    let Some((model, dialect)) = shared.limits else {
        shared.accepted.fetch_add(1, Ordering::Relaxed);
        if !shared.config.latency.is_zero() {
            tokio::time::sleep(shared.config.latency).await;
        }
        let body = serde_json::to_vec(&echo(true)).unwrap_or_default();
        return json_response(StatusCode::OK, body);
    };

    let tenant = tenant(&parts.headers);
    // Graph's JSON batching: the envelope is not a call; each inner request counts, and one
    // the limit refuses is a 429 item with its own Retry-After inside a 200 envelope.
    if graph_batch {
        let body = shared.graph_batch(&tenant, model, dialect, &kept);
        return match body {
            Some(body) => json_response(StatusCode::OK, body),
            None => json_response(
                StatusCode::BAD_REQUEST,
                br#"{"error":{"code":"BadRequest","message":"Invalid batch payload format."}}"#
                    .to_vec(),
            ),
        };
    }
    let (accepted, headers) = shared.call(&tenant, model, dialect, cost as f64);
    if !shared.config.latency.is_zero() {
        tokio::time::sleep(shared.config.latency).await;
    }
    let batch = if accepted && is_batch {
        shared.batch(&kept)
    } else {
        None
    };
    let mut response = if let Some((status, body)) = batch {
        json_response(status, body)
    } else if shared.config.profile == Profile::ShopifyGraphql {
        let (quota, available) = shared.level(&tenant);
        let body = shopify_graphql_body(accepted, cost, quota, available, shared.config.window);
        json_response(StatusCode::OK, body)
    } else if accepted {
        let body = serde_json::to_vec(&echo(true)).unwrap_or_default();
        json_response(StatusCode::OK, body)
    } else {
        let (status, body) = shared.config.profile.throttled();
        json_response(status, body.to_vec())
    };
    add_headers(&mut response, headers);
    response
}

/// The tenant of a call: its `Authorization` value.
fn tenant(headers: &http::HeaderMap) -> String {
    headers.get(AUTHORIZATION).map_or(ANONYMOUS.into(), |v| {
        String::from_utf8_lossy(v.as_bytes()).into_owned()
    })
}

fn add_headers(response: &mut Response, headers: Vec<(String, String)>) {
    let out = response.headers_mut();
    for (name, value) in headers {
        if let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_str(&value),
        ) {
            out.insert(name, value);
        }
    }
}

/// A Bulk API 2.0 call (`salesforce-bulk2`): counted against the tenant's limit like any
/// Salesforce call, then answered by [`bulk2`] if the limit accepted it.
async fn bulk_call(
    shared: &Shared,
    parts: http::request::Parts,
    body: Body,
    route: bulk2::Route,
    model: Model,
    dialect: Dialect,
) -> Response {
    let (accepted, headers) = shared.call(&tenant(&parts.headers), model, dialect, 1.0);
    if !shared.config.latency.is_zero() {
        tokio::time::sleep(shared.config.latency).await;
    }
    let mut response = if accepted {
        shared
            .bulk
            .serve(
                route,
                &parts.method,
                &parts.headers,
                parts.uri.query(),
                body,
            )
            .await
    } else {
        bulk2::drain(body).await;
        let (status, body) = shared.config.profile.throttled();
        json_response(status, body.to_vec())
    };
    add_headers(&mut response, headers);
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_parameters() {
        let f = forced("status=503&sleep_ms=20&x=1").unwrap();
        assert_eq!(f.status, Some(StatusCode::SERVICE_UNAVAILABLE));
        assert_eq!(f.sleep, Some(Duration::from_millis(20)));
        assert!(forced("status=abc").is_err());
        assert!(forced("status=99").is_err());
        assert!(forced("sleep_ms=-1").is_err());
        assert_eq!(
            forced("sleep_ms=99999999999999").unwrap().sleep,
            Some(MAX_SLEEP)
        );
    }

    #[test]
    fn window_count_keeps_the_busiest_window() {
        let mut w = WindowCount::default();
        for i in [0, 0, 1, 1, 1, 3] {
            w.add(i);
        }
        assert_eq!(w.max, 3);
        assert_eq!(w.count, 1);
    }

    #[test]
    fn profile_names() {
        use clap::ValueEnum;
        for p in Profile::value_variants() {
            let cli = p.to_possible_value().map(|v| v.get_name().to_string());
            assert_eq!(cli.as_deref(), Some(p.name()));
        }
        let names: Vec<_> = Profile::value_variants().iter().map(|p| p.name()).collect();
        assert_eq!(
            names,
            [
                "ietf",
                "ietf-legacy",
                "x-ratelimit",
                "x-ratelimit-delta",
                "hubspot",
                "shopify",
                "retry-after",
                "openai",
                "shopify-graphql",
                "salesforce",
                "salesforce-bulk2",
                "github",
                "github-graphql",
                "stripe",
                "jira",
                "zendesk",
                "intercom",
                "slack",
                "microsoft-graph",
                "google",
                "notion",
                "zoom",
                "twilio",
                "anthropic",
                "unlimited"
            ]
        );
    }

    #[test]
    fn config_is_sanitised() {
        let c = MockConfig {
            limit: 0,
            window: Duration::ZERO,
            hidden_share: f64::NAN,
            ..MockConfig::default()
        }
        .sanitised();
        assert_eq!(c.limit, 1);
        assert_eq!(c.window, Duration::from_millis(1));
        assert_eq!(c.hidden_share, 0.0);
    }
}
