//! A rate-limited upstream: how it counts calls and the headers it answers with. Time is
//! passed in as seconds, so the simulator drives it in virtual time and `headroom mock` with
//! the real clock.

use std::collections::VecDeque;
use std::time::Duration;

use serde::Serialize;

use crate::clock::secs_to_duration;

/// How the simulated upstream counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Model {
    /// `quota` per aligned window.
    FixedWindow,
    /// `quota` in any window of the last `window`.
    SlidingWindow,
    /// A bucket of `quota` draining at `quota / window` per second.
    LeakyBucket,
}

/// Which headers the upstream sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Dialect {
    /// A bare 429: no headers at all.
    Bare,
    /// Only `Retry-After` on 429.
    RetryAfter,
    /// The current IETF form: `RateLimit-Policy: "default";q=…;w=…` and
    /// `RateLimit: "default";r=…;t=…`.
    Ietf,
    /// `RateLimit-Limit`, `-Remaining`, `-Reset` (delta seconds).
    IetfLegacy,
    /// `X-RateLimit-Limit`, `-Remaining`, `-Reset` as epoch seconds, with a `Date`.
    XRateLimitEpoch,
    /// `X-RateLimit-Limit`, `-Remaining`, `-Reset` as seconds until the reset.
    XRateLimitDelta,
    /// HubSpot's `X-HubSpot-RateLimit-Max`, `-Remaining`, `-Interval-Milliseconds` (no reset).
    HubSpot,
    /// Shopify's `X-Shopify-Shop-Api-Call-Limit: used/size` (no reset).
    Shopify,
    /// OpenAI's token limit: `x-ratelimit-limit-tokens`, `-remaining-tokens` and
    /// `-reset-tokens` (a Go duration such as `850ms`); calls cost their tokens.
    OpenAiTokens,
    /// Shopify GraphQL Admin: no headers; the body's `extensions.cost` says the bucket (the
    /// mock upstream writes it), a throttled query answers `THROTTLED` without Retry-After.
    ShopifyGraphql,
    /// Salesforce's `Sforce-Limit-Info: api-usage=used/quota` (no reset, no window).
    Salesforce,
    /// Jira Cloud's IETF fields under a prefix: `Beta-RateLimit-Policy` and `Beta-RateLimit`.
    JiraBeta,
    /// Zendesk's `X-Rate-Limit` and `X-Rate-Limit-Remaining` (no reset).
    Zendesk,
    /// Zoom's `X-RateLimit-Category`, `-Type`, `-Limit` and `-Remaining` (no reset).
    Zoom,
    /// Anthropic's `anthropic-ratelimit-requests-limit`, `-remaining` and `-reset` (RFC 3339).
    Anthropic,
}

/// A rate-limited upstream's state.
#[derive(Debug, Clone)]
pub struct Upstream {
    model: Model,
    quota: f64,
    window: f64,
    /// Fixed window: (index of the current window, count in it).
    fixed: (u64, f64),
    /// Sliding window: accepted calls' times and costs.
    log: VecDeque<(f64, f64)>,
    /// Leaky bucket: (level, time of that level).
    bucket: (f64, f64),
}

impl Upstream {
    pub fn new(model: Model, quota: u32, window: Duration) -> Self {
        Upstream {
            model,
            quota: quota as f64,
            window: window.as_secs_f64(),
            fixed: (0, 0.0),
            log: VecDeque::new(),
            bucket: (0.0, 0.0),
        }
    }

    /// Changes the quota from now on (a plan change, a vendor tightening its limits).
    pub fn set_quota(&mut self, quota: u32) {
        self.quota = quota as f64;
    }

    /// Counts a call at `now` (seconds); returns whether it was accepted.
    pub fn call(&mut self, now: f64) -> bool {
        self.call_costing(now, 1.0)
    }

    /// Counts a call of `cost` units (tokens, points) at `now`; returns whether it was
    /// accepted: only when all of its cost fits in what is left.
    pub fn call_costing(&mut self, now: f64, cost: f64) -> bool {
        self.advance(now);
        let used = self.used();
        if used + cost > self.quota + 1e-9 {
            return false;
        }
        match self.model {
            Model::FixedWindow => self.fixed.1 += cost,
            Model::SlidingWindow => self.log.push_back((now, cost)),
            Model::LeakyBucket => self.bucket.0 += cost,
        }
        true
    }

    fn advance(&mut self, now: f64) {
        match self.model {
            Model::FixedWindow => {
                let index = (now / self.window).floor() as u64;
                if index != self.fixed.0 {
                    self.fixed = (index, 0.0);
                }
            }
            Model::SlidingWindow => {
                while self
                    .log
                    .front()
                    .is_some_and(|(t, _)| *t <= now - self.window)
                {
                    self.log.pop_front();
                }
            }
            Model::LeakyBucket => {
                let leaked = (now - self.bucket.1) * self.quota / self.window;
                self.bucket = ((self.bucket.0 - leaked).max(0.0), now);
            }
        }
    }

    pub fn used(&self) -> f64 {
        match self.model {
            Model::FixedWindow => self.fixed.1,
            Model::SlidingWindow => self.log.iter().map(|(_, c)| c).sum(),
            Model::LeakyBucket => self.bucket.0,
        }
    }

    /// Seconds until the window frees capacity: the window's end (fixed), the oldest call's
    /// expiry (sliding), one call's worth of leak (bucket).
    fn reset_in(&self, now: f64) -> f64 {
        match self.model {
            Model::FixedWindow => (self.fixed.0 + 1) as f64 * self.window - now,
            Model::SlidingWindow => self
                .log
                .front()
                .map_or(self.window, |(t, _)| t + self.window - now),
            Model::LeakyBucket => self.window / self.quota,
        }
    }

    /// The response headers in `dialect` after a call at `now`; `epoch` is the wall-clock time
    /// (seconds since 1970) that `now` stands for.
    pub fn headers(
        &self,
        dialect: Dialect,
        now: f64,
        epoch: f64,
        accepted: bool,
    ) -> Vec<(String, String)> {
        let remaining = (self.quota - self.used()).max(0.0).floor();
        let reset = self.reset_in(now).max(0.0);
        let mut h: Vec<(String, String)> = Vec::new();
        let mut push = |k: &str, v: String| h.push((k.to_string(), v));
        match dialect {
            Dialect::Bare | Dialect::RetryAfter | Dialect::ShopifyGraphql => {}
            Dialect::Ietf => {
                push(
                    "RateLimit-Policy",
                    format!("\"default\";q={};w={}", self.quota, self.window.ceil()),
                );
                push(
                    "RateLimit",
                    format!("\"default\";r={remaining};t={}", reset.ceil()),
                );
            }
            Dialect::IetfLegacy => {
                push("RateLimit-Limit", format!("{}", self.quota));
                push("RateLimit-Remaining", format!("{remaining}"));
                push("RateLimit-Reset", format!("{}", reset.ceil()));
            }
            Dialect::XRateLimitEpoch => {
                push("Date", httpdate::fmt_http_date(to_system_time(epoch)));
                push("X-RateLimit-Limit", format!("{}", self.quota));
                push("X-RateLimit-Remaining", format!("{remaining}"));
                push("X-RateLimit-Reset", format!("{}", (epoch + reset).ceil()));
            }
            Dialect::XRateLimitDelta => {
                push("X-RateLimit-Limit", format!("{}", self.quota));
                push("X-RateLimit-Remaining", format!("{remaining}"));
                push("X-RateLimit-Reset", format!("{}", reset.ceil()));
            }
            Dialect::HubSpot => {
                push("X-HubSpot-RateLimit-Max", format!("{}", self.quota));
                push("X-HubSpot-RateLimit-Remaining", format!("{remaining}"));
                push(
                    "X-HubSpot-RateLimit-Interval-Milliseconds",
                    format!("{}", (self.window * 1000.0).round()),
                );
            }
            Dialect::Shopify => {
                push(
                    "X-Shopify-Shop-Api-Call-Limit",
                    format!("{}/{}", self.used().ceil(), self.quota),
                );
            }
            Dialect::Salesforce => {
                push(
                    "Sforce-Limit-Info",
                    format!("api-usage={}/{}", self.used().ceil(), self.quota),
                );
            }
            Dialect::JiraBeta => {
                push(
                    "Beta-RateLimit-Policy",
                    format!(
                        "\"tenant-app-quota\";q={};w={}",
                        self.quota,
                        self.window.ceil()
                    ),
                );
                push(
                    "Beta-RateLimit",
                    format!("\"tenant-app-quota\";r={remaining};t={}", reset.ceil()),
                );
            }
            Dialect::Zendesk => {
                push("X-Rate-Limit", format!("{}", self.quota));
                push("X-Rate-Limit-Remaining", format!("{remaining}"));
            }
            Dialect::Zoom => {
                push("X-RateLimit-Category", "Light".to_string());
                push("X-RateLimit-Type", "QPS".to_string());
                push("X-RateLimit-Limit", format!("{}", self.quota));
                push("X-RateLimit-Remaining", format!("{remaining}"));
            }
            Dialect::Anthropic => {
                let at = to_system_time(epoch + reset.ceil());
                let at = humantime_rfc3339(at);
                push(
                    "anthropic-ratelimit-requests-limit",
                    format!("{}", self.quota),
                );
                push(
                    "anthropic-ratelimit-requests-remaining",
                    format!("{remaining}"),
                );
                push("anthropic-ratelimit-requests-reset", at);
            }
            Dialect::OpenAiTokens => {
                push("x-ratelimit-limit-tokens", format!("{}", self.quota));
                push("x-ratelimit-remaining-tokens", format!("{remaining}"));
                push(
                    "x-ratelimit-reset-tokens",
                    format!("{}ms", (reset * 1000.0).ceil()),
                );
            }
        }
        if !accepted && !matches!(dialect, Dialect::Bare | Dialect::ShopifyGraphql) {
            push("Retry-After", format!("{}", reset.ceil().max(1.0)));
        }
        h
    }
}

/// `2026-11-28T12:00:12Z`, as Anthropic writes its resets.
fn humantime_rfc3339(at: std::time::SystemTime) -> String {
    chrono::DateTime::<chrono::Utc>::from(at)
        .format("%Y-%m-%dT%H:%M:%SZ")
        .to_string()
}

fn to_system_time(epoch: f64) -> std::time::SystemTime {
    std::time::UNIX_EPOCH + secs_to_duration(epoch)
}
