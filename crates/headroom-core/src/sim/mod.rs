//! A simulator: the governor against simulated upstreams, in virtual time.
//!
//! An upstream enforces its limit (fixed window, sliding window or leaky bucket), answers in
//! one header dialect (which goes through the real [`crate::interpret`]) and may be shared with
//! a hidden client that spends part of the quota where Headroom cannot see it. Headroom drives a
//! saturating bulk backlog and Poisson real-time arrivals through one budget.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;

use crate::backoff::Jitter;
use crate::budget::{BudgetConfig, Lane, Outcome, Permit};
use crate::clock::{secs_to_duration, Timestamp};
use crate::governor::{Admission, Decision, Governor};
use crate::limit::LimitConfig;

mod upstream;
pub use upstream::{Dialect, Model, Upstream};

/// 2026-11-28T12:00:00Z: the simulated clock's origin on the wall clock.
const EPOCH: f64 = 1_795_867_200.0;

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Scenario {
    pub name: String,
    pub model: Model,
    pub dialect: Dialect,
    pub quota: u32,
    #[serde(serialize_with = "secs")]
    pub window: Duration,
    /// Whether Headroom's config states the limit (else it learns from headers alone).
    pub configured: bool,
    /// Fraction of the quota per window that a hidden client spends.
    pub hidden_share: f64,
    pub headroom: f64,
    pub realtime_reserve: f64,
    pub max_concurrency: u32,
    #[serde(serialize_with = "secs")]
    pub latency: Duration,
    /// Real-time arrivals per second (Poisson).
    pub realtime_rate: f64,
    /// Bulk calls kept waiting at all times (0 for none).
    pub bulk_backlog: usize,
    pub windows: u32,
    pub seed: u64,
    /// At the start of window `.0` the upstream's quota becomes `.1` (Headroom's config, if
    /// any, still says `quota`).
    pub quota_change: Option<(u32, u32)>,
    /// Calls cost units of their own (tokens): the quota counts them, not calls.
    pub cost: Option<CallCost>,
}

/// What calls cost, when they cost more than one unit each.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct CallCost {
    /// Each call costs a uniform random amount between these.
    pub min: f64,
    pub max: f64,
    /// What the caller says each call costs (`Headroom-Cost`): `None` for its true cost,
    /// else this flat estimate, which the answer's reported cost then corrects.
    pub stated: Option<f64>,
}

fn secs<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64(d.as_secs_f64())
}

impl Scenario {
    /// A saturating bulk load with a trickle of real-time calls against a fixed window of 100
    /// per 10 s that speaks the IETF legacy headers.
    pub fn new(name: &str, model: Model, dialect: Dialect) -> Self {
        Scenario {
            name: name.to_string(),
            model,
            dialect,
            quota: 100,
            window: Duration::from_secs(10),
            configured: true,
            hidden_share: 0.0,
            headroom: 0.8,
            realtime_reserve: 0.2,
            max_concurrency: 10,
            latency: Duration::from_millis(80),
            realtime_rate: 0.4,
            bulk_backlog: 50,
            windows: 60,
            seed: 1,
            quota_change: None,
            cost: None,
        }
    }

    /// The even pace's interval between calls: `window / (headroom × quota)`.
    pub fn pacing_interval(&self) -> Duration {
        self.window
            .div_f64((self.headroom * self.quota as f64).max(1e-9))
    }

    /// The standard table: every model and dialect, alone and beside a hidden client.
    pub fn standard() -> Vec<Scenario> {
        let mut out = Vec::new();
        let cases = [
            ("fixed/ietf", Model::FixedWindow, Dialect::Ietf, true),
            (
                "fixed/ietf-legacy",
                Model::FixedWindow,
                Dialect::IetfLegacy,
                true,
            ),
            (
                "fixed/x-ratelimit-epoch",
                Model::FixedWindow,
                Dialect::XRateLimitEpoch,
                true,
            ),
            (
                "fixed/x-ratelimit-epoch, unconfigured",
                Model::FixedWindow,
                Dialect::XRateLimitEpoch,
                false,
            ),
            (
                "fixed/x-ratelimit-delta",
                Model::FixedWindow,
                Dialect::XRateLimitDelta,
                true,
            ),
            ("fixed/hubspot", Model::FixedWindow, Dialect::HubSpot, true),
            (
                "fixed/retry-after",
                Model::FixedWindow,
                Dialect::RetryAfter,
                true,
            ),
            ("fixed/bare", Model::FixedWindow, Dialect::Bare, true),
            (
                "sliding/ietf",
                Model::SlidingWindow,
                Dialect::IetfLegacy,
                true,
            ),
            (
                "sliding/retry-after",
                Model::SlidingWindow,
                Dialect::RetryAfter,
                true,
            ),
            ("leaky/shopify", Model::LeakyBucket, Dialect::Shopify, true),
            (
                "leaky/retry-after",
                Model::LeakyBucket,
                Dialect::RetryAfter,
                true,
            ),
        ];
        for (name, model, dialect, configured) in cases {
            for hidden in [0.0, 0.3] {
                let mut s = Scenario::new(name, model, dialect);
                s.configured = configured;
                s.hidden_share = hidden;
                if hidden > 0.0 {
                    s.name = format!("{name} + hidden 30%");
                }
                out.push(s);
            }
        }
        out.extend(Scenario::moving());
        out.extend(Scenario::costs());
        out
    }

    /// Limits that move or that the config does not state: the API halves its quota in the
    /// middle of the run (configured or learned; 20 per 2 s, whose resets in whole seconds
    /// say little, and 100 per 10 s), and a small learned limit with real-time traffic only.
    pub fn moving() -> Vec<Scenario> {
        let mut out = Vec::new();
        for (name, dialect, configured, quota, window) in [
            (
                "fixed/x-ratelimit-delta, 20 per 2 s, quota halves",
                Dialect::XRateLimitDelta,
                true,
                20,
                2,
            ),
            (
                "fixed/x-ratelimit-delta, unconfigured, 20 per 2 s, quota halves",
                Dialect::XRateLimitDelta,
                false,
                20,
                2,
            ),
            (
                "fixed/x-ratelimit-delta, quota halves",
                Dialect::XRateLimitDelta,
                true,
                100,
                10,
            ),
            (
                "fixed/hubspot, quota halves",
                Dialect::HubSpot,
                true,
                100,
                10,
            ),
            (
                "fixed/x-ratelimit-delta, unconfigured, 20 per 2 s, quota doubles",
                Dialect::XRateLimitDelta,
                false,
                20,
                2,
            ),
            (
                "fixed/ietf, unconfigured, quota doubles",
                Dialect::Ietf,
                false,
                100,
                10,
            ),
        ] {
            let mut s = Scenario::new(name, Model::FixedWindow, dialect);
            s.configured = configured;
            s.quota = quota;
            s.window = Duration::from_secs(window);
            s.realtime_rate = 0.04 * quota as f64 / window as f64;
            let after = if name.contains("doubles") {
                quota * 2
            } else {
                quota / 2
            };
            s.quota_change = Some((20, after));
            out.push(s);
        }
        // Only Retry-After on a 429 (or nothing at all), no limit in the config: nothing to
        // learn the quota from but the throttles themselves.
        for (name, model, dialect) in [
            (
                "fixed/retry-after, unconfigured",
                Model::FixedWindow,
                Dialect::RetryAfter,
            ),
            (
                "fixed/bare, unconfigured",
                Model::FixedWindow,
                Dialect::Bare,
            ),
            (
                "sliding/retry-after, unconfigured",
                Model::SlidingWindow,
                Dialect::RetryAfter,
            ),
            (
                "leaky/retry-after, unconfigured",
                Model::LeakyBucket,
                Dialect::RetryAfter,
            ),
        ] {
            let mut s = Scenario::new(name, model, dialect);
            s.configured = false;
            out.push(s);
        }
        // 20 per 2 s learned from headers, real-time calls only (the proxy's default lane).
        let mut s = Scenario::new(
            "fixed/x-ratelimit-delta, unconfigured, 20 per 2 s, real-time only",
            Model::FixedWindow,
            Dialect::XRateLimitDelta,
        );
        s.configured = false;
        s.quota = 20;
        s.window = Duration::from_secs(2);
        s.bulk_backlog = 0;
        s.realtime_rate = 40.0;
        s.windows = 200;
        out.push(s);
        out
    }
}

impl Scenario {
    /// A token-metered API (OpenAI's headers): 3,000 tokens per 2 s, calls of 100–300
    /// tokens, 16 callers at once; the cost stated exactly, estimated flat (and corrected by
    /// the answers' `usage`), or learned from headers alone.
    pub fn costs() -> Vec<Scenario> {
        let mut out = Vec::new();
        for (name, configured, stated) in [
            ("fixed/openai tokens, cost stated", true, None),
            (
                "fixed/openai tokens, cost estimated at 200",
                true,
                Some(200.0),
            ),
            (
                "fixed/openai tokens, cost estimated at 100",
                true,
                Some(100.0),
            ),
            (
                "fixed/openai tokens, unconfigured, cost stated",
                false,
                None,
            ),
        ] {
            let mut s = Scenario::new(name, Model::FixedWindow, Dialect::OpenAiTokens);
            s.configured = configured;
            s.quota = 3000;
            s.window = Duration::from_secs(2);
            s.max_concurrency = 16;
            s.bulk_backlog = 16;
            s.realtime_rate = 0.5;
            s.windows = 300;
            s.cost = Some(CallCost {
                min: 100.0,
                max: 300.0,
                stated,
            });
            out.push(s);
        }
        out
    }
}

/// What a simulation measured.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Report {
    pub scenario: String,
    /// Calls Headroom made (including those throttled).
    pub calls: u64,
    pub accepted: u64,
    pub throttled: u64,
    /// Headroom's accepted calls (or their cost, when calls cost units of their own) over
    /// `headroom × quota` per window, after the first window.
    pub utilisation: f64,
    pub throttled_share: f64,
    /// The most calls Headroom sent in one window (aligned windows for a fixed window,
    /// any window otherwise).
    pub max_sent_per_window: u64,
    /// Accepted calls of the bulk lane over all accepted calls.
    pub bulk_share: f64,
    pub realtime_calls: u64,
    pub realtime_p50_wait_s: f64,
    pub realtime_p99_wait_s: f64,
    pub pacing_interval_s: f64,
    /// With a quota change: accepted calls from two windows after it to the end, over
    /// `headroom ×` the new quota per window.
    pub utilisation_after_change: Option<f64>,
    /// With a quota change: the most Headroom sent in one window from the change on.
    pub max_sent_after_change: Option<u64>,
}

#[derive(Debug)]
enum Event {
    /// Headroom's call reaches the upstream.
    Arrive(u64),
    /// Its response reaches Headroom.
    Respond(u64),
    Hidden,
    Realtime,
}

struct Call {
    lane: Lane,
    /// What the call costs, and what its caller says it costs.
    cost: f64,
    stated: f64,
    requested_at: Timestamp,
    permit: Option<Permit>,
    status: u16,
    headers: Vec<(String, String)>,
}

/// Runs a scenario to its end and reports what happened.
pub fn run(s: &Scenario) -> Report {
    let key = ();
    let config = Arc::new(BudgetConfig {
        limits: if s.configured {
            vec![LimitConfig {
                unit: if s.cost.is_some() {
                    crate::signals::Unit::Points
                } else {
                    crate::signals::Unit::Requests
                },
                ..LimitConfig::new(s.quota as f64, s.window)
            }]
        } else {
            vec![]
        },
        headroom: s.headroom,
        realtime_reserve: s.realtime_reserve,
        max_concurrency: s.max_concurrency,
        ..BudgetConfig::default()
    });
    let mut governor: Governor<(), u64> = Governor::new(s.seed);
    let mut upstream = Upstream::new(s.model, s.quota, s.window);
    let mut rng = Jitter::new(s.seed ^ 0x5EED);
    let end = Timestamp::ZERO + s.window * s.windows;
    let half_latency = s.latency / 2;

    let mut events: BinaryHeap<Reverse<(Timestamp, u64)>> = BinaryHeap::new();
    let mut payloads: HashMap<u64, Event> = HashMap::new();
    let mut next_id = 0u64;
    let mut schedule = |events: &mut BinaryHeap<_>, payloads: &mut HashMap<u64, Event>, at, ev| {
        next_id += 1;
        payloads.insert(next_id, ev);
        events.push(Reverse((at, next_id)));
    };

    let mut calls: HashMap<u64, Call> = HashMap::new();
    let mut next_token = 0u64;
    let draw = |rng: &mut Jitter| match s.cost {
        None => (1.0, 1.0),
        Some(c) => {
            let cost = (c.min + (c.max - c.min) * rng.unit()).round();
            (cost, c.stated.unwrap_or(cost))
        }
    };
    let mut new_call = |calls: &mut HashMap<u64, Call>, lane, now, (cost, stated): (f64, f64)| {
        next_token += 1;
        calls.insert(
            next_token,
            Call {
                lane,
                cost,
                stated,
                requested_at: now,
                permit: None,
                status: 0,
                headers: Vec::new(),
            },
        );
        next_token
    };

    let mut report = Report {
        scenario: s.name.clone(),
        calls: 0,
        accepted: 0,
        throttled: 0,
        utilisation: 0.0,
        throttled_share: 0.0,
        max_sent_per_window: 0,
        bulk_share: 0.0,
        realtime_calls: 0,
        realtime_p50_wait_s: 0.0,
        realtime_p99_wait_s: 0.0,
        pacing_interval_s: s.pacing_interval().as_secs_f64(),
        utilisation_after_change: None,
        max_sent_after_change: None,
    };
    // (start of the window in seconds, new quota)
    let change_at = s
        .quota_change
        .map(|(w, q)| (s.window.as_secs_f64() * w as f64, q));
    let mut changed = false;
    let mut accepted_after_change = 0u64;
    let mut max_after_change = 0u64;
    // In units: calls, or their cost.
    let mut accepted_after_first = 0.0f64;
    let mut accepted_bulk = 0u64;
    let mut realtime_waits: Vec<f64> = Vec::new();
    let mut sent_log: VecDeque<f64> = VecDeque::new();
    let mut sent_fixed = (u64::MAX, 0u64);
    let window_s = s.window.as_secs_f64();

    let hidden_interval = if s.hidden_share > 0.0 {
        Some(s.window.div_f64(s.hidden_share * s.quota as f64))
    } else {
        None
    };
    if let Some(iv) = hidden_interval {
        schedule(
            &mut events,
            &mut payloads,
            Timestamp::ZERO + iv.mul_f64(rng.unit()),
            Event::Hidden,
        );
    }
    let exp = |rng: &mut Jitter, rate: f64| secs_to_duration(-(1.0 - rng.unit()).ln() / rate);
    if s.realtime_rate > 0.0 {
        let at = Timestamp::ZERO + exp(&mut rng, s.realtime_rate);
        schedule(&mut events, &mut payloads, at, Event::Realtime);
    }

    let max_wait = Duration::from_secs(3600);
    let mut decisions = Vec::new();
    let mut now = Timestamp::ZERO;
    for _ in 0..s.bulk_backlog {
        let token = new_call(&mut calls, Lane::Bulk, now, draw(&mut rng));
        submit(
            &mut governor,
            &key,
            &config,
            &mut calls,
            token,
            now,
            max_wait,
            &mut decisions,
        );
    }

    loop {
        // Grants first: they were due before anything else happening at the same instant.
        let next_event = events.peek().map(|Reverse((t, _))| *t);
        let next_wake = governor.next_wakeup();
        let t = match (next_event, next_wake) {
            // Grants made at once (by the first submissions) go out before anything else.
            _ if !decisions.is_empty() => now,
            (Some(a), Some(b)) => a.min(b),
            (Some(a), None) => a,
            (None, Some(b)) => b,
            (None, None) => break,
        };
        if t > end {
            break;
        }
        now = t;
        if let Some((_, quota)) = change_at.filter(|(at, _)| !changed && now.as_secs_f64() >= *at) {
            upstream.set_quota(quota);
            changed = true;
        }
        if next_wake.is_some_and(|w| w <= now) {
            governor.poll(now, &mut decisions);
        }
        loop {
            for d in decisions.drain(..) {
                match d {
                    Decision::Granted { token, permit, .. } => {
                        let call = calls.get_mut(&token).expect("call exists");
                        if call.lane == Lane::Realtime {
                            realtime_waits
                                .push(now.saturating_since(call.requested_at).as_secs_f64());
                        }
                        call.permit = Some(permit);
                        schedule(
                            &mut events,
                            &mut payloads,
                            now + half_latency,
                            Event::Arrive(token),
                        );
                    }
                    Decision::Rejected { token, .. } => {
                        calls.remove(&token);
                    }
                }
            }
            let Some(Reverse((t, id))) = events.peek().copied() else {
                break;
            };
            if t > now {
                break;
            }
            events.pop();
            let ev = payloads.remove(&id).expect("payload exists");
            let secs = now.as_secs_f64();
            match ev {
                Event::Hidden => {
                    upstream.call(secs);
                    if let Some(iv) = hidden_interval {
                        schedule(&mut events, &mut payloads, now + iv, Event::Hidden);
                    }
                }
                Event::Realtime => {
                    let token = new_call(&mut calls, Lane::Realtime, now, draw(&mut rng));
                    submit(
                        &mut governor,
                        &key,
                        &config,
                        &mut calls,
                        token,
                        now,
                        max_wait,
                        &mut decisions,
                    );
                    let at = now + exp(&mut rng, s.realtime_rate);
                    schedule(&mut events, &mut payloads, at, Event::Realtime);
                }
                Event::Arrive(token) => {
                    report.calls += 1;
                    // Headroom's own sends per window, the way the upstream counts windows.
                    let in_window = match s.model {
                        Model::FixedWindow => {
                            let index = (secs / window_s).floor() as u64;
                            if index != sent_fixed.0 {
                                sent_fixed = (index, 0);
                            }
                            sent_fixed.1 += 1;
                            sent_fixed.1
                        }
                        _ => {
                            sent_log.push_back(secs);
                            while sent_log.front().is_some_and(|t| *t <= secs - window_s) {
                                sent_log.pop_front();
                            }
                            sent_log.len() as u64
                        }
                    };
                    report.max_sent_per_window = report.max_sent_per_window.max(in_window);
                    if changed {
                        max_after_change = max_after_change.max(in_window);
                    }
                    let call = calls.get_mut(&token).expect("call exists");
                    let accepted = upstream.call_costing(secs, call.cost);
                    call.status = if accepted { 200 } else { 429 };
                    call.headers = upstream.headers(s.dialect, secs, EPOCH + secs, accepted);
                    if accepted {
                        report.accepted += 1;
                        if secs >= window_s {
                            accepted_after_first += call.cost;
                        }
                        if change_at.is_some_and(|(at, _)| secs >= at + 2.0 * window_s) {
                            accepted_after_change += 1;
                        }
                        if call.lane == Lane::Bulk {
                            accepted_bulk += 1;
                        }
                    } else {
                        report.throttled += 1;
                    }
                    schedule(
                        &mut events,
                        &mut payloads,
                        now + half_latency,
                        Event::Respond(token),
                    );
                }
                Event::Respond(token) => {
                    let mut call = calls.remove(&token).expect("call exists");
                    let headers: Vec<(&str, &[u8])> = call
                        .headers
                        .iter()
                        .map(|(k, v)| (k.as_str(), v.as_bytes()))
                        .collect();
                    // An answer reports what the call cost, as an LLM API's `usage` does.
                    let body = match s.cost {
                        Some(_) if call.status == 200 => {
                            format!("{{\"usage\":{{\"total_tokens\":{}}}}}", call.cost)
                        }
                        _ => String::new(),
                    };
                    let signals = crate::signals::interpret(
                        call.status,
                        headers,
                        body.as_bytes(),
                        EPOCH + secs,
                    );
                    let permit = call.permit.take().expect("granted call has a permit");
                    let outcome = Outcome::Response {
                        status: call.status,
                        signals: &signals,
                    };
                    governor.complete(now, &key, permit, outcome, &mut decisions);
                    // A throttled call is retried; a finished bulk call is replaced by the
                    // next one of the backlog.
                    if call.status == 429 || call.lane == Lane::Bulk {
                        let requested_at = if call.status == 429 {
                            call.requested_at
                        } else {
                            now
                        };
                        // A retried call costs what it did; a new one its own.
                        let cost = if call.status == 429 {
                            (call.cost, call.stated)
                        } else {
                            draw(&mut rng)
                        };
                        let token = new_call(&mut calls, call.lane, requested_at, cost);
                        submit(
                            &mut governor,
                            &key,
                            &config,
                            &mut calls,
                            token,
                            now,
                            max_wait,
                            &mut decisions,
                        );
                    }
                }
            }
        }
    }

    let measured_windows = s.windows.saturating_sub(1).max(1) as f64;
    report.utilisation = accepted_after_first / (s.headroom * s.quota as f64 * measured_windows);
    report.throttled_share = report.throttled as f64 / (report.calls.max(1)) as f64;
    report.bulk_share = accepted_bulk as f64 / report.accepted.max(1) as f64;
    report.realtime_calls = realtime_waits.len() as u64;
    realtime_waits.sort_by(f64::total_cmp);
    report.realtime_p50_wait_s = percentile(&realtime_waits, 0.50);
    report.realtime_p99_wait_s = percentile(&realtime_waits, 0.99);
    if let Some((at_window, quota)) = s.quota_change {
        let windows = s.windows.saturating_sub(at_window + 2).max(1) as f64;
        report.utilisation_after_change =
            Some(accepted_after_change as f64 / (s.headroom * quota as f64 * windows));
        report.max_sent_after_change = Some(max_after_change);
    }
    report
}

#[allow(clippy::too_many_arguments)]
fn submit(
    governor: &mut Governor<(), u64>,
    key: &(),
    config: &Arc<BudgetConfig>,
    calls: &mut HashMap<u64, Call>,
    token: u64,
    now: Timestamp,
    max_wait: Duration,
    decisions: &mut Vec<Decision<u64>>,
) {
    let (lane, cost) = (calls[&token].lane, calls[&token].stated);
    match governor.request(now, key, config, lane, cost, max_wait, token) {
        Admission::Granted(permit) => decisions.push(Decision::Granted {
            token,
            permit,
            waited: Duration::ZERO,
        }),
        Admission::Queued => {}
        Admission::Rejected(_) => {
            calls.remove(&token);
        }
    }
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}
