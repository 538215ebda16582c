//! A budget: the limits one credential has at one upstream, and when its next call may go.
//!
//! A call goes only when every limit allows it, the budget is not paused by a throttled
//! response, a concurrency slot is free and the circuit breaker is not open. Bulk calls get at
//! most `1 - realtime_reserve` of the pace (and of the concurrency) while real-time traffic is
//! active; when it is not, bulk may use the whole budget so that idle capacity is not wasted.

use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;

use crate::backoff::{Backoff, Jitter};
use crate::breaker::{Breaker, BreakerConfig, BreakerRefusal, BreakerState};
use crate::clock::{secs_to_duration, Timestamp};
use crate::limit::{Limit, LimitConfig, LimitSnapshot, Pace};
use crate::signals::{LimitSignal, Signals, Unit};

/// A budget holds at most this many limits; more learned from odd headers are ignored.
const MAX_LIMITS: usize = 8;
/// A throttled response multiplies the pace by this.
const DECREASE: f64 = 0.5;
/// How many intervals a real-time call may run ahead of the pace.
const REALTIME_BURST: f64 = 3.0;
/// The pace never drops below this fraction of what the limits allow.
const MIN_FACTOR: f64 = 0.05;
/// The window of a limit learned from throttles is the pause asked, within these bounds.
const MIN_LEARNED_WINDOW: Duration = Duration::from_secs(1);
const MAX_LEARNED_WINDOW: Duration = Duration::from_secs(3600);

/// The priority of a call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Lane {
    /// Webhooks and user actions: never waits behind queued bulk calls.
    Realtime,
    /// Syncs and imports: gets what real-time traffic leaves.
    Bulk,
}

impl std::str::FromStr for Lane {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.trim().to_ascii_lowercase().as_str() {
            "realtime" => Ok(Lane::Realtime),
            "bulk" => Ok(Lane::Bulk),
            other => Err(format!(
                "unknown lane \"{other}\"; use \"realtime\" or \"bulk\""
            )),
        }
    }
}

/// How a budget is configured. Budgets of one upstream share one `Arc<BudgetConfig>`.
#[derive(Debug, Clone, PartialEq)]
pub struct BudgetConfig {
    pub limits: Vec<LimitConfig>,
    /// The fraction of every quota Headroom aims to spend (the rest is left for others and for
    /// error).
    pub headroom: f64,
    pub max_concurrency: u32,
    /// The fraction of the pace (and of the concurrency) held for real-time calls while there
    /// are any.
    pub realtime_reserve: f64,
    /// Pause after a throttled response that says nothing about when to retry.
    pub backoff: Backoff,
    pub breaker: BreakerConfig,
    /// How long the pace takes to climb back to full after a throttled response halved it.
    pub recovery: Duration,
    /// The longest pause a throttled answer may put on the budget: an upstream's answer is
    /// untrusted input, and `Retry-After: 34000000` must not freeze a budget for a year.
    pub max_pause: Duration,
    /// What a quota reported above a configured one does.
    pub learn: Learn,
    /// An operator paused the budget until then (governor time): no call goes before.
    pub held_until: Option<Timestamp>,
    /// The limits are an operator's override for this budget, not the upstream's config.
    pub overridden: bool,
}

/// What a limit reported by the API does to a configured one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Learn {
    /// The config is a ceiling: a lower reported quota wins at once, a higher one is not
    /// taken (the config may keep room for other clients of the same account).
    #[default]
    Lower,
    /// The API's figure wins either way: the config is only the starting point.
    Raise,
}

/// The default cap on a budget's pause after a throttled answer.
pub const DEFAULT_MAX_PAUSE: Duration = Duration::from_secs(3600);

impl Default for BudgetConfig {
    fn default() -> Self {
        BudgetConfig {
            limits: Vec::new(),
            headroom: 0.8,
            max_concurrency: 10,
            realtime_reserve: 0.2,
            backoff: Backoff::default(),
            breaker: BreakerConfig::default(),
            recovery: Duration::from_secs(60),
            max_pause: DEFAULT_MAX_PAUSE,
            learn: Learn::Lower,
            held_until: None,
            overridden: false,
        }
    }
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum BudgetConfigError {
    #[error("headroom must be a fraction above 0 and at most 1 (like 0.8), got {0}")]
    Headroom(f64),
    #[error("realtime_reserve must be at least 0 and below 1 (like 0.2), got {0}")]
    RealtimeReserve(f64),
    #[error("max_concurrency must be at least 1")]
    MaxConcurrency,
    #[error("limits[{index}].quota must be a positive number, got {quota}")]
    Quota { index: usize, quota: f64 },
    #[error("limits[{index}].window must be longer than zero")]
    Window { index: usize },
    #[error("at most {MAX_LIMITS} limits per upstream, got {0}")]
    TooManyLimits(usize),
}

impl BudgetConfig {
    /// Checks the config, naming the field at fault.
    pub fn validate(&self) -> Result<(), BudgetConfigError> {
        if !(self.headroom > 0.0 && self.headroom <= 1.0) {
            return Err(BudgetConfigError::Headroom(self.headroom));
        }
        if !(self.realtime_reserve >= 0.0 && self.realtime_reserve < 1.0) {
            return Err(BudgetConfigError::RealtimeReserve(self.realtime_reserve));
        }
        if self.max_concurrency == 0 {
            return Err(BudgetConfigError::MaxConcurrency);
        }
        if self.limits.len() > MAX_LIMITS {
            return Err(BudgetConfigError::TooManyLimits(self.limits.len()));
        }
        for (index, l) in self.limits.iter().enumerate() {
            if !(l.quota.is_finite() && l.quota > 0.0) {
                return Err(BudgetConfigError::Quota {
                    index,
                    quota: l.quota,
                });
            }
            if l.window.is_zero() {
                return Err(BudgetConfigError::Window { index });
            }
        }
        Ok(())
    }
}

/// Leave to make one call, returned to the budget with the call's outcome.
#[derive(Debug, PartialEq)]
#[must_use = "a permit holds a concurrency slot until it is returned with an outcome"]
pub struct Permit {
    seq: u64,
    lane: Lane,
    cost: f64,
    spent_at: Spent,
    probe: bool,
    granted_at: Timestamp,
    /// Whether any limit paced the call when it went: a throttle of a call that went
    /// before the budget knew any limit says the limit, not that the pace was too fast.
    paced: bool,
    /// Where a [`crate::Governor`] holds the budget that gave it: its completion needs no
    /// lookup by key.
    pub(crate) slot: Option<u32>,
}

impl Permit {
    pub fn lane(&self) -> Lane {
        self.lane
    }
    pub fn cost(&self) -> f64 {
        self.cost
    }
    pub fn granted_at(&self) -> Timestamp {
        self.granted_at
    }
}

/// What became of a permitted call.
#[derive(Debug, Clone, Copy)]
pub enum Outcome<'a> {
    /// The upstream answered; `signals` is what [`crate::interpret`] read from the answer.
    Response { status: u16, signals: &'a Signals },
    /// No answer: connection refused, reset, timed out.
    TransportError,
    /// The call was given up before it could tell anything (client went away).
    Abandoned,
    /// The call was never sent (another budget it also needed said no at the same moment):
    /// what it spent is given back. Its place in the pace is not (others may have booked
    /// after it), so the budget is at worst a slot slower.
    Unsent,
}

/// Why a call cannot go now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wait {
    /// The pace (or a pause) allows it at this time.
    Until(Timestamp),
    /// Every concurrency slot is taken; a finishing call frees one.
    Concurrency,
    /// The circuit breaker refuses calls.
    Breaker(BreakerRefusal),
}

/// What a budget did with an outcome, for logs and events.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Reaction {
    /// The answer was throttled: the whole budget is now paused for this long (the longest
    /// of what this answer and earlier ones asked, at most `max_pause`).
    pub paused_for: Option<Duration>,
    /// The breaker changed state to this.
    pub breaker: Option<BreakerState>,
    /// The budget's tightest limit after the answer, as the caller may spend it.
    pub allowance: Option<Allowance>,
}

/// The tightest of a budget's limits as a caller sees it, for the IETF `RateLimit-Policy`
/// and `RateLimit` fields: `headroom` of the quota (what Headroom aims to spend, not the
/// API's whole quota) and what remains of that.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Allowance {
    pub quota: u64,
    pub window_s: Option<u64>,
    /// Known while a report from the API is fresh, or (0) while the budget is paused.
    pub remaining: Option<u64>,
    pub reset_s: Option<u64>,
}

/// Total units sent, by unit kind; limits measure what was sent since a report against it.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
struct Spent {
    requests: f64,
    points: f64,
}

impl Spent {
    fn of(&self, unit: Unit) -> f64 {
        match unit {
            Unit::Points => self.points,
            _ => self.requests,
        }
    }
}

#[derive(Debug, Clone)]
pub struct Budget {
    config: Arc<BudgetConfig>,
    limits: Vec<Limit>,
    spent: Spent,
    seq: u64,
    /// Real-time calls in flight: while there are any, bulk is held to its share so that
    /// the calls that follow them (a user action is often several) find the pace free.
    in_flight_realtime: u32,
    in_flight: u32,
    in_flight_bulk: u32,
    /// A concurrency limit the API announced (IETF `concurrent-requests`).
    learned_concurrency: Option<u32>,
    paused_until: Timestamp,
    /// Multiplier on the pace after throttling: `factor` at `factor_since`, climbing back to 1
    /// over `config.recovery`.
    factor: f64,
    factor_since: Timestamp,
    consecutive_throttles: u32,
    breaker: Breaker,
    last_active: Timestamp,
    /// When the first call since the last throttle went, and the requests spent before it:
    /// what an API that states no limit let through before it said no.
    since_throttle: Option<(Timestamp, f64)>,
}

impl Budget {
    pub fn new(config: Arc<BudgetConfig>) -> Self {
        Budget {
            limits: configured_limits(&config),
            config,
            spent: Spent::default(),
            seq: 0,
            in_flight_realtime: 0,
            in_flight: 0,
            in_flight_bulk: 0,
            learned_concurrency: None,
            paused_until: Timestamp::ZERO,
            factor: 1.0,
            factor_since: Timestamp::ZERO,
            consecutive_throttles: 0,
            breaker: Breaker::default(),
            last_active: Timestamp::ZERO,
            since_throttle: None,
        }
    }

    pub fn config(&self) -> &Arc<BudgetConfig> {
        &self.config
    }

    /// Takes a changed config (an operator's override set or cleared): the configured
    /// limits are replaced, each keeping what the API reported of it and its place in the
    /// pace when one of the same name, window and unit was there before; limits learned
    /// from headers or throttles stay. A config of the same address is the same config: one
    /// comparison, nothing else, on every call.
    pub fn reconfigure(&mut self, config: &Arc<BudgetConfig>) {
        if Arc::ptr_eq(&self.config, config) {
            return;
        }
        let config = Arc::clone(config);
        let mut old: Vec<Limit> = std::mem::take(&mut self.limits);
        let mut limits = Vec::with_capacity(config.limits.len() + old.len());
        for (c, fresh) in config.limits.iter().zip(configured_limits(&config)) {
            let kept = old
                .iter()
                .position(|l| l.is_configured() && l.same_as(c))
                .map(|i| old.swap_remove(i));
            limits.push(match kept {
                Some(l) => l.reconfigured(fresh),
                None => fresh,
            });
        }
        limits.extend(old.into_iter().filter(|l| !l.is_configured()));
        limits.truncate(MAX_LIMITS);
        self.limits = limits;
        self.config = config;
    }

    /// Until when an operator paused the budget (zero: not paused).
    pub fn held_until(&self) -> Timestamp {
        self.config.held_until.unwrap_or(Timestamp::ZERO)
    }

    pub fn in_flight(&self) -> u32 {
        self.in_flight
    }

    pub fn paused_until(&self) -> Timestamp {
        self.paused_until
    }

    pub fn breaker(&self) -> BreakerState {
        self.breaker.state()
    }

    pub fn last_active(&self) -> Timestamp {
        self.last_active
    }

    /// The current multiplier on the pace (1 = what the limits allow).
    pub fn factor(&self, now: Timestamp) -> f64 {
        let recovery = self.config.recovery.as_secs_f64();
        if self.factor >= 1.0 || recovery <= 0.0 {
            return 1.0;
        }
        let climbed = now.saturating_since(self.factor_since).as_secs_f64() / recovery;
        (self.factor + (1.0 - self.factor) * climbed).min(1.0)
    }

    /// Nothing in flight, no pause, breaker closed: the budget could be forgotten and rebuilt
    /// from config without changing a decision beyond what fresh headers will tell again.
    pub fn is_idle(&self, now: Timestamp) -> bool {
        self.in_flight == 0 && now >= self.paused_until && self.breaker.is_closed()
    }

    fn reserve_held(&self) -> bool {
        self.config.realtime_reserve > 0.0 && self.in_flight_realtime > 0
    }

    fn concurrency_cap(&self) -> u32 {
        let cap = self.config.max_concurrency;
        self.learned_concurrency.map_or(cap, |l| l.min(cap)).max(1)
    }

    /// The part of the safety margin (`1 - headroom` of each quota) a call of `lane` may spend:
    /// real-time calls may spend `realtime_reserve` of it, so that they still go at the end
    /// of a window that bulk work (or a hidden client) has used up.
    fn margin(&self, lane: Lane) -> f64 {
        match lane {
            Lane::Realtime => self.config.realtime_reserve,
            Lane::Bulk => 0.0,
        }
    }

    /// The share of the pace a call of `lane` may use now.
    fn lane_share(&self, lane: Lane) -> f64 {
        match lane {
            Lane::Bulk if self.reserve_held() => 1.0 - self.config.realtime_reserve,
            _ => 1.0,
        }
    }

    /// The earliest time a call of `lane` and `cost` may start, by pace and pauses alone.
    pub fn earliest(&self, now: Timestamp, lane: Lane, cost: f64) -> Timestamp {
        let mut at = now.max(self.paused_until).max(self.held_until());
        let factor = self.factor(now);
        let share = self.lane_share(lane);
        for limit in &self.limits {
            let spent = self.spent.of(limit.unit());
            let c = limit.unit_cost(cost);
            match limit.pace(now, self.config.headroom, spent, c, self.margin(lane)) {
                Pace::Unpaced => {}
                Pace::Blocked(until) => at = at.max(until),
                Pace::Rate(rate) => {
                    let (tat, tat_bulk) = limit.slots();
                    // A long window's quota may be spent ahead of its even pace.
                    let burst = limit.burst();
                    let (tat, tat_bulk) = (tat - burst, tat_bulk - burst);
                    at = match lane {
                        // A real-time call may run up to three intervals ahead of the pace (a
                        // burst of four), so that neither bulk nor a short burst of real-time
                        // calls makes it wait; but a rate's burst never further than its
                        // reserve holds, or a window with no report to bound it sends more
                        // than its quota (10 in 2 s at 0.8 paced 8, and the burst's 3 more met
                        // the API's limit). A long window's quota is bounded by what remains.
                        Lane::Realtime => {
                            let mut ahead = REALTIME_BURST * c;
                            if !limit.is_long() {
                                let reserve = limit.reserve(now, self.config.headroom);
                                ahead = ahead.min((reserve - c).max(0.0));
                            }
                            at.max(tat - spacing(ahead, rate * factor))
                        }
                        Lane::Bulk if share < 1.0 => at.max(tat).max(tat_bulk),
                        Lane::Bulk => at.max(tat),
                    };
                }
            }
        }
        at
    }

    /// When a long-window quota (an hour or more) that has nothing left for a call of `lane`
    /// and `cost` resets: the latest such reset, if any.
    pub fn exhausted_until(&self, now: Timestamp, lane: Lane, cost: f64) -> Option<Timestamp> {
        self.limits
            .iter()
            .filter(|l| l.is_long())
            .filter_map(|l| {
                let spent = self.spent.of(l.unit());
                match l.pace(
                    now,
                    self.config.headroom,
                    spent,
                    l.unit_cost(cost),
                    self.margin(lane),
                ) {
                    Pace::Blocked(until) => Some(until),
                    _ => None,
                }
            })
            .max()
    }

    /// The time between two calls of `cost` at the current pace, if the pace is bounded.
    pub fn interval(&self, now: Timestamp, lane: Lane, cost: f64) -> Option<Duration> {
        let share = self.lane_share(lane);
        let factor = self.factor(now);
        self.limits
            .iter()
            .filter_map(|l| {
                let spent = self.spent.of(l.unit());
                let c = l.unit_cost(cost);
                match l.pace(now, self.config.headroom, spent, c, self.margin(lane)) {
                    Pace::Rate(r) => Some(spacing(c, r * factor * share)),
                    _ => None,
                }
            })
            .max()
    }

    /// The time between two calls of `cost` over the longer run, for estimating how long the
    /// calls queued ahead take: each limit at the pace it sustains over windows, not the
    /// pace of the moment (which falls near a window's end and rises after its reset).
    pub fn sustained_interval(&self, now: Timestamp, lane: Lane, cost: f64) -> Option<Duration> {
        let share = self.lane_share(lane);
        let factor = self.factor(now);
        let headroom = self.config.headroom;
        self.limits
            .iter()
            .filter_map(|l| {
                let c = l.unit_cost(cost);
                let sustained = l.sustained_rate(now, headroom);
                let rate =
                    match l.pace(now, headroom, self.spent.of(l.unit()), c, self.margin(lane)) {
                        // A long window's quota may run a tenth of its window ahead of its
                        // even pace (`Limit::burst`): while it does, it spaces no calls.
                        Pace::Rate(_) if l.is_long() => None,
                        Pace::Rate(r) => Some(sustained.map_or(r, |s| r.max(s))),
                        Pace::Blocked(_) => sustained,
                        Pace::Unpaced => None,
                    }?;
                Some(spacing(c, rate * factor * share))
            })
            .max()
    }

    /// Whether the circuit breaker lets calls through now.
    pub fn check_breaker(&self, now: Timestamp) -> Result<(), BreakerRefusal> {
        self.breaker.check(now)
    }

    /// Takes leave for a call now, or says what it waits for.
    pub fn try_acquire(&mut self, now: Timestamp, lane: Lane, cost: f64) -> Result<Permit, Wait> {
        self.breaker.check(now).map_err(Wait::Breaker)?;
        let at = self.earliest(now, lane, cost);
        if at > now {
            return Err(Wait::Until(at));
        }
        let cap = self.concurrency_cap();
        if self.in_flight >= cap {
            return Err(Wait::Concurrency);
        }
        if lane == Lane::Bulk && self.reserve_held() {
            let bulk_cap = ((cap as f64) * (1.0 - self.config.realtime_reserve)).floor() as u32;
            if self.in_flight_bulk >= bulk_cap.max(1) {
                return Err(Wait::Concurrency);
            }
        }
        Ok(self.dispatch(now, lane, cost))
    }

    fn dispatch(&mut self, now: Timestamp, lane: Lane, cost: f64) -> Permit {
        let probe = self.breaker.on_dispatch(now);
        let paced = self.limits.iter().any(Limit::paces);
        // Book the call's slots at the pace it went at (before it counts as spent).
        let factor = self.factor(now);
        let share = self.lane_share(lane);
        let headroom = self.config.headroom;
        let margin = self.margin(lane);
        for limit in &mut self.limits {
            let spent = self.spent.of(limit.unit());
            let c = limit.unit_cost(cost);
            match limit.pace(now, headroom, spent, c, margin) {
                Pace::Rate(rate) => {
                    let rate = rate * factor;
                    let bulk = (lane == Lane::Bulk).then(|| spacing(c, rate * share));
                    limit.book(now, Some(spacing(c, rate)), bulk);
                }
                _ => limit.book(now, None, None),
            }
        }
        self.seq += 1;
        if self.since_throttle.is_none() {
            self.since_throttle = Some((now, self.spent.requests));
        }
        self.spent.requests += 1.0;
        self.spent.points += cost;
        self.in_flight += 1;
        match lane {
            Lane::Bulk => self.in_flight_bulk += 1,
            Lane::Realtime => self.in_flight_realtime += 1,
        }
        self.last_active = now;
        Permit {
            seq: self.seq,
            lane,
            cost,
            spent_at: self.spent,
            probe,
            granted_at: now,
            paced,
            slot: None,
        }
    }

    /// Returns a permit with what became of its call, and learns from it.
    pub fn complete(
        &mut self,
        now: Timestamp,
        permit: Permit,
        outcome: Outcome<'_>,
        jitter: &mut Jitter,
    ) -> Reaction {
        self.in_flight = self.in_flight.saturating_sub(1);
        match permit.lane {
            Lane::Bulk => self.in_flight_bulk = self.in_flight_bulk.saturating_sub(1),
            Lane::Realtime => self.in_flight_realtime = self.in_flight_realtime.saturating_sub(1),
        }
        self.last_active = now;
        let breaker_before = self.breaker.state();
        let mut reaction = Reaction::default();
        match outcome {
            Outcome::Response { status, signals } => {
                self.learn(now, &permit, signals);
                if let Some(actual) = signals.cost {
                    self.reconcile(&permit, actual);
                }
                self.limits.retain(|l| !l.outgrown(now));
                if signals.throttled {
                    reaction.paused_for = Some(self.throttled(now, &permit, signals, jitter));
                } else {
                    self.consecutive_throttles = 0;
                    if status >= 500 {
                        self.breaker
                            .on_failure(now, permit.probe, &self.config.breaker);
                    } else {
                        self.breaker.on_success();
                    }
                }
            }
            Outcome::TransportError => {
                self.breaker
                    .on_failure(now, permit.probe, &self.config.breaker)
            }
            Outcome::Abandoned => self.breaker.on_abandoned(permit.probe),
            Outcome::Unsent => {
                self.breaker.on_abandoned(permit.probe);
                self.spent.requests = (self.spent.requests - 1.0).max(0.0);
                self.spent.points = (self.spent.points - permit.cost).max(0.0);
                // Reports taken since it was dispatched counted it as spent.
                for limit in &mut self.limits {
                    let delta = match limit.unit() {
                        Unit::Points => -permit.cost,
                        _ => -1.0,
                    };
                    limit.shift_reports_since(permit.seq, delta);
                }
            }
        }
        let breaker_after = self.breaker.state();
        if std::mem::discriminant(&breaker_before) != std::mem::discriminant(&breaker_after) {
            reaction.breaker = Some(breaker_after);
        }
        reaction.allowance = self.allowance(now);
        reaction
    }

    /// The tightest limit as a caller may spend it (the least of its target left); while the
    /// budget is paused, nothing remains until the pause ends.
    pub fn allowance(&self, now: Timestamp) -> Option<Allowance> {
        let headroom = self.config.headroom;
        let (_, mut tightest) = self
            .limits
            .iter()
            .filter_map(|l| l.allowance(now, headroom, self.spent.of(l.unit())))
            .min_by(|a, b| a.0.total_cmp(&b.0))?;
        if now < self.paused_until {
            let pause = self.paused_until.saturating_since(now).as_secs_f64().ceil() as u64;
            tightest.remaining = Some(0);
            tightest.reset_s = Some(tightest.reset_s.map_or(pause, |r| r.max(pause)));
        }
        Some(tightest)
    }

    /// Books what a call really spent (`actual`, from its answer) in place of the cost it
    /// reserved. Its own answer's report and those of calls sent after it already count its
    /// real cost (APIs count a call when they admit it), so their baselines move with it.
    fn reconcile(&mut self, permit: &Permit, actual: f64) {
        let delta = actual - permit.cost;
        if delta == 0.0 || !delta.is_finite() {
            return;
        }
        self.spent.points = (self.spent.points + delta).max(0.0);
        for limit in &mut self.limits {
            if limit.unit() == Unit::Points {
                limit.shift_reports_since(permit.seq, delta);
            }
        }
    }

    fn learn(&mut self, now: Timestamp, permit: &Permit, signals: &Signals) {
        for sig in &signals.limits {
            if sig.unit == Unit::Concurrent {
                if let Some(q) = sig.quota.filter(|q| *q >= 1.0) {
                    self.learned_concurrency = Some(q.min(u32::MAX as f64) as u32);
                }
                continue;
            }
            let index = match self
                .limits
                .iter()
                .position(|l| l.matches(sig))
                .or_else(|| self.only_limit_for(sig))
            {
                Some(i) => i,
                None if self.limits.len() < MAX_LIMITS => match Limit::learned(sig) {
                    Some(l) => {
                        self.limits.push(l);
                        self.limits.len() - 1
                    }
                    None => continue,
                },
                None => continue,
            };
            let limit = &mut self.limits[index];
            let spent_at = permit.spent_at.of(limit.unit());
            limit.observe(now, sig, permit.seq, spent_at);
        }
    }

    /// A response's limit that names neither itself nor its window, and matches no limit by
    /// quota, is the budget's only limit of its unit when it has just one: the API changed
    /// that limit's quota (a plan change, a vendor tightening limits), it did not add a new one.
    fn only_limit_for(&self, sig: &LimitSignal) -> Option<usize> {
        if sig.name.is_some() || sig.window.is_some() {
            return None;
        }
        let mut same_unit = self
            .limits
            .iter()
            .enumerate()
            .filter(|(_, l)| l.unit() == sig.unit);
        match (same_unit.next(), same_unit.next()) {
            (Some((i, _)), None) => Some(i),
            _ => None,
        }
    }

    /// Pauses the whole budget and slows its pace after a throttled response.
    fn throttled(
        &mut self,
        now: Timestamp,
        permit: &Permit,
        signals: &Signals,
        jitter: &mut Jitter,
    ) -> Duration {
        let pause = signals
            .asked_wait()
            .unwrap_or_else(|| {
                self.config
                    .backoff
                    .delay(self.consecutive_throttles, jitter)
            })
            .min(self.config.max_pause);
        // Responses to calls already in flight report the same overload: slow down once per
        // pause, not once per response.
        if now >= self.paused_until
            && !self.learn_from_throttle(permit, signals, pause)
            && permit.paced
        {
            self.factor = (self.factor(now) * DECREASE).max(MIN_FACTOR);
            self.factor_since = now;
        }
        self.since_throttle = None;
        self.consecutive_throttles = self.consecutive_throttles.saturating_add(1);
        self.paused_until = self.paused_until.max(now + pause);
        // The budget's whole pause: an earlier answer may have asked for longer.
        self.paused_until.saturating_since(now)
    }

    /// An API that states no limit (a bare 429, or only Retry-After) still shows one by what
    /// it let through: the calls that went before the throttled one since the last throttle,
    /// over the time they took or the pause asked, whichever is longer (a fixed window's
    /// Retry-After is the rest of its window). That becomes the budget's limit, so the calls
    /// queued behind the pause go at what passed times the headroom instead of all at once
    /// into the next throttle. It replaces the halving of the pace: it is the decrease.
    fn learn_from_throttle(&mut self, permit: &Permit, signals: &Signals, pause: Duration) -> bool {
        let paces = |unit: Unit| matches!(unit, Unit::Requests | Unit::Points);
        if signals.limits.iter().any(|l| paces(l.unit))
            || self
                .limits
                .iter()
                .any(|l| l.paces() && !l.is_from_throttles())
        {
            return false;
        }
        let Some((from, spent_from)) = self.since_throttle else {
            return false;
        };
        let taken = permit.spent_at.requests - 1.0 - spent_from;
        if taken < 1.0 {
            return false;
        }
        let window = pause.clamp(MIN_LEARNED_WINDOW, MAX_LEARNED_WINDOW);
        let elapsed = permit.granted_at.saturating_since(from).max(window);
        let mut quota = taken * window.as_secs_f64() / elapsed.as_secs_f64();
        let earlier = self.limits.iter().position(Limit::is_from_throttles);
        if let Some(rate) = earlier.and_then(|i| self.limits[i].rate_at(permit.granted_at)) {
            // A throttle soon after a pause counts only the few calls since it, while the
            // window also holds those before: fall at most by half per throttle.
            quota = quota.max(DECREASE * rate * window.as_secs_f64());
        }
        let limit = Limit::from_throttle(permit.granted_at, quota, window);
        match earlier {
            Some(i) => self.limits[i] = limit,
            None if self.limits.len() < MAX_LIMITS => self.limits.push(limit),
            None => return false,
        }
        true
    }

    pub fn snapshot(&self, now: Timestamp) -> BudgetSnapshot {
        BudgetSnapshot {
            limits: self
                .limits
                .iter()
                .map(|l| l.snapshot(now, self.config.headroom, self.spent.of(l.unit())))
                .collect(),
            headroom: self.config.headroom,
            pace_factor: self.factor(now),
            in_flight: self.in_flight,
            max_concurrency: self.concurrency_cap(),
            paused_for_s: self.paused_until.saturating_since(now).as_secs_f64(),
            held_for_s: self.held_until().saturating_since(now).as_secs_f64(),
            reserve_held: self.reserve_held(),
            breaker: self.breaker.state(),
            spent_requests: self.spent.requests,
            spent_points: self.spent.points,
        }
    }
}

/// What `/v1/budgets` shows of a budget.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BudgetSnapshot {
    pub limits: Vec<LimitSnapshot>,
    pub headroom: f64,
    /// Multiplier on the pace after throttling (1 = full pace).
    pub pace_factor: f64,
    pub in_flight: u32,
    pub max_concurrency: u32,
    pub paused_for_s: f64,
    /// How much longer an operator's pause (an override) holds every call.
    pub held_for_s: f64,
    /// Whether bulk is currently held to `1 - realtime_reserve`.
    pub reserve_held: bool,
    pub breaker: BreakerState,
    /// Requests and cost points sent since the budget was created (for spend rates).
    pub spent_requests: f64,
    pub spent_points: f64,
}

fn configured_limits(config: &BudgetConfig) -> Vec<Limit> {
    config
        .limits
        .iter()
        .map(|c| Limit::from_config(c, config.learn == Learn::Raise, config.overridden))
        .collect()
}

fn spacing(cost: f64, rate: f64) -> Duration {
    secs_to_duration(cost / rate)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(secs: f64) -> Timestamp {
        Timestamp::from_secs_f64(secs)
    }

    fn budget(limits: Vec<LimitConfig>) -> Budget {
        let config = BudgetConfig {
            limits,
            ..BudgetConfig::default()
        };
        config.validate().unwrap();
        Budget::new(Arc::new(config))
    }

    fn ok(status: u16) -> Signals {
        Signals {
            throttled: status == 429,
            ..Signals::default()
        }
    }

    #[test]
    fn an_unsent_call_gives_its_spend_back() {
        let mut b = budget(vec![LimitConfig::new(100.0, Duration::from_secs(10))]);
        let sent = b.try_acquire(t(0.0), Lane::Realtime, 3.0).unwrap();
        let unsent = b.try_acquire(t(1.0), Lane::Realtime, 2.0).unwrap();
        assert_eq!(b.snapshot(t(1.0)).spent_points, 5.0);
        b.complete(t(1.0), unsent, Outcome::Unsent, &mut Jitter::new(1));
        let s = b.snapshot(t(1.0));
        assert_eq!(
            (s.spent_requests, s.spent_points, s.in_flight),
            (1.0, 3.0, 1)
        );
        b.complete(t(1.1), sent, Outcome::Abandoned, &mut Jitter::new(1));
    }

    #[test]
    fn a_realtime_flood_without_reports_stays_within_every_window() {
        // The API says nothing (no headers), so only the configured figures bound the calls:
        // a flood of real-time calls, each answered at once, never puts more than the quota
        // in any window of its length, starting anywhere (the API's windows are its own).
        for (quota, window) in [
            (10.0, 2.0),
            (3.0, 1.0),
            (4.0, 1.0),
            (25.0, 1.0),
            (100.0, 10.0),
        ] {
            let mut b = budget(vec![LimitConfig::new(quota, secs_to_duration(window))]);
            let (mut now, mut sent) = (t(0.0), Vec::new());
            while now < t(10.0 * window) {
                match b.try_acquire(now, Lane::Realtime, 1.0) {
                    Ok(p) => {
                        sent.push(now);
                        let signals = ok(200);
                        let answer = Outcome::Response {
                            status: 200,
                            signals: &signals,
                        };
                        b.complete(now, p, answer, &mut Jitter::new(1));
                    }
                    Err(Wait::Until(at)) => now = at,
                    Err(other) => panic!("{other:?}"),
                }
            }
            for (i, start) in sent.iter().enumerate() {
                let end = *start + secs_to_duration(window);
                let within = sent[i..].iter().take_while(|s| **s < end).count();
                assert!(
                    within as f64 <= quota,
                    "{quota} per {window} s: {within} from {start:?}"
                );
            }
            // And it is paced at the target, not below it: 0.8 of the quota per window.
            let per_window = sent.len() as f64 / 10.0;
            assert!(per_window >= 0.8 * quota - 1.0, "{quota}: {per_window}");
        }
    }

    #[test]
    fn every_limit_must_allow_the_call() {
        // 8/s from the first limit, 0.8 × 60 / 60 s = 0.8/s from the second.
        let mut b = budget(vec![
            LimitConfig::new(100.0, Duration::from_secs(10)),
            LimitConfig::new(60.0, Duration::from_secs(60)),
        ]);
        let p = b.try_acquire(t(0.0), Lane::Bulk, 1.0).unwrap();
        assert_eq!(
            b.try_acquire(t(0.2), Lane::Bulk, 1.0),
            Err(Wait::Until(t(1.25)))
        );
        b.complete(t(0.1), p, Outcome::Abandoned, &mut Jitter::new(1));
    }

    #[test]
    fn a_lower_quota_in_the_headers_replaces_the_configured_one_and_a_higher_one_does_not() {
        let mut b = budget(vec![LimitConfig::new(20.0, Duration::from_secs(2))]);
        let report = |quota: f64, remaining: f64| Signals {
            limits: vec![crate::LimitSignal {
                quota: Some(quota),
                remaining: Some(remaining),
                ..Default::default()
            }],
            ..Signals::default()
        };
        let mut j = Jitter::new(1);
        let p = b.try_acquire(t(0.0), Lane::Bulk, 1.0).unwrap();
        let signals = report(10.0, 9.0);
        let ok = Outcome::Response {
            status: 200,
            signals: &signals,
        };
        b.complete(t(0.1), p, ok, &mut j);
        // The same limit, now 10: no second limit beside the configured one.
        let snap = b.snapshot(t(0.1));
        assert_eq!(snap.limits.len(), 1, "{:?}", snap.limits);
        assert_eq!(snap.limits[0].quota, 10.0);
        assert_eq!(snap.limits[0].source, "config");
        // 0.8 × 10 / 2 s: the even pace of the new quota at once.
        assert_eq!(snap.limits[0].pace_per_s, Some(4.0));
        // A report without a reset describes one window at most: none stays stuck.
        let later = b.snapshot(t(2.2));
        assert_eq!(later.limits[0].remaining, None);
        assert_eq!(later.limits[0].pace_per_s, Some(4.0));
        // A higher figure is capped at the config (it may keep room for other clients).
        let p = b.try_acquire(t(3.0), Lane::Bulk, 1.0).unwrap();
        let signals = report(50.0, 49.0);
        let ok = Outcome::Response {
            status: 200,
            signals: &signals,
        };
        b.complete(t(3.1), p, ok, &mut j);
        let snap = b.snapshot(t(3.1));
        assert_eq!(snap.limits.len(), 1);
        assert_eq!(snap.limits[0].quota, 20.0);
    }

    #[test]
    fn with_learn_raise_a_higher_reported_quota_is_taken() {
        let config = BudgetConfig {
            limits: vec![LimitConfig::new(20.0, Duration::from_secs(2))],
            learn: Learn::Raise,
            ..BudgetConfig::default()
        };
        let mut b = Budget::new(Arc::new(config));
        let signals = Signals {
            limits: vec![crate::LimitSignal {
                quota: Some(50.0),
                remaining: Some(49.0),
                ..Default::default()
            }],
            ..Signals::default()
        };
        let p = b.try_acquire(t(0.0), Lane::Bulk, 1.0).unwrap();
        let ok = Outcome::Response {
            status: 200,
            signals: &signals,
        };
        b.complete(t(0.1), p, ok, &mut Jitter::new(1));
        let snap = b.snapshot(t(0.1));
        assert_eq!(snap.limits.len(), 1);
        assert_eq!(snap.limits[0].quota, 50.0);
    }

    /// An operator's override (a new config for this budget alone) takes effect on the next
    /// call: the lower quota paces at once, a pause holds every call until its end, and
    /// clearing it brings the upstream's config back with what the API reported kept.
    #[test]
    fn an_override_replaces_the_configured_limits_and_can_hold_the_budget() {
        let upstream = Arc::new(BudgetConfig {
            limits: vec![LimitConfig::new(100.0, Duration::from_secs(10))],
            ..BudgetConfig::default()
        });
        let mut b = Budget::new(Arc::clone(&upstream));
        let p = b.try_acquire(t(0.0), Lane::Bulk, 1.0).unwrap();
        b.complete(t(0.0), p, Outcome::Abandoned, &mut Jitter::new(1));
        // 8/s from config.
        assert_eq!(
            b.interval(t(0.0), Lane::Bulk, 1.0),
            Some(Duration::from_millis(125))
        );
        b.reconfigure(&Arc::new(BudgetConfig {
            limits: vec![LimitConfig::new(10.0, Duration::from_secs(10))],
            overridden: true,
            ..(*upstream).clone()
        }));
        // 0.8/s from the override, and the call booked before it still counts.
        assert_eq!(
            b.interval(t(0.0), Lane::Bulk, 1.0),
            Some(Duration::from_millis(1250))
        );
        let snap = b.snapshot(t(0.0));
        assert_eq!(snap.limits.len(), 1);
        assert_eq!(
            (snap.limits[0].quota, snap.limits[0].source),
            (10.0, "override")
        );
        b.reconfigure(&Arc::new(BudgetConfig {
            held_until: Some(t(60.0)),
            ..(*upstream).clone()
        }));
        assert_eq!(b.earliest(t(1.0), Lane::Realtime, 1.0), t(60.0));
        assert_eq!(b.snapshot(t(1.0)).held_for_s, 59.0);
        b.reconfigure(&upstream);
        assert!(b.earliest(t(1.0), Lane::Realtime, 1.0) <= t(1.0));
        assert_eq!(b.snapshot(t(1.0)).limits[0].source, "config");
    }

    /// A call reserves its estimated cost; the cost its answer reports replaces it. Calls
    /// that reserve 300 tokens of a 3,000-per-2-s limit but spend 100 leave room for more;
    /// calls that reserve 100 but spend 300 slow the pace at once.
    #[test]
    fn the_reported_cost_replaces_the_reserved_one() {
        let tokens = LimitConfig {
            unit: Unit::Points,
            ..LimitConfig::new(3000.0, Duration::from_secs(2))
        };
        let remaining_after = |reserve: f64, actual: f64| {
            let mut b = budget(vec![tokens.clone()]);
            let mut j = Jitter::new(1);
            // One report: 3,000 left when the first call went.
            let first = b.try_acquire(t(0.0), Lane::Bulk, reserve).unwrap();
            let report = Signals {
                limits: vec![crate::LimitSignal {
                    quota: Some(3000.0),
                    remaining: Some(3000.0 - actual),
                    reset_in: Some(Duration::from_millis(1990)),
                    unit: Unit::Points,
                    ..Default::default()
                }],
                cost: Some(actual),
                ..Signals::default()
            };
            let ok = Outcome::Response {
                status: 200,
                signals: &report,
            };
            b.complete(t(0.01), first, ok, &mut j);
            // Five more calls, answered without a report but with their cost.
            let mut now = t(0.02);
            for _ in 0..5 {
                now = b.earliest(now, Lane::Bulk, reserve);
                let p = b.try_acquire(now, Lane::Bulk, reserve).unwrap();
                let cost = Signals {
                    cost: Some(actual),
                    ..Signals::default()
                };
                let ok = Outcome::Response {
                    status: 200,
                    signals: &cost,
                };
                b.complete(now, p, ok, &mut j);
            }
            b.snapshot(now).limits[0].remaining.unwrap()
        };
        assert_eq!(remaining_after(300.0, 100.0), 2400.0);
        assert_eq!(remaining_after(100.0, 300.0), 1200.0);
        // Without a reported cost, the reserve stands.
        let mut b = budget(vec![tokens.clone()]);
        let p = b.try_acquire(t(0.0), Lane::Bulk, 300.0).unwrap();
        b.complete(
            t(0.0),
            p,
            Outcome::Response {
                status: 200,
                signals: &Signals::default(),
            },
            &mut Jitter::new(1),
        );
        assert_eq!(b.snapshot(t(0.0)).spent_points, 300.0);
    }

    /// OpenAI's token headers say what remains and when it resets, not the window. After the
    /// reset, the limit holds its quota again (less what went since), so the calls queued
    /// behind it do not all go at once; a throttle of calls that went before any limit was
    /// known teaches the limit and does not halve the pace; and the wait for calls queued
    /// near the window's end is estimated at the pace sustained over windows.
    #[test]
    fn a_limit_reported_without_its_window_still_paces_after_its_reset() {
        let mut b = Budget::new(Arc::new(BudgetConfig {
            max_concurrency: 100,
            ..BudgetConfig::default()
        }));
        let mut j = Jitter::new(1);
        let tokens = |remaining: f64, reset_ms: u64, throttled: bool| Signals {
            throttled,
            limits: vec![crate::LimitSignal {
                name: Some("tokens".into()),
                quota: Some(3000.0),
                remaining: Some(remaining),
                reset_in: Some(Duration::from_millis(reset_ms)),
                unit: Unit::Points,
                ..Default::default()
            }],
            ..Signals::default()
        };
        // Nothing known: 16 calls of 200 go at once; the last is throttled.
        let permits: Vec<Permit> = (0..16)
            .map(|_| b.try_acquire(t(0.0), Lane::Realtime, 200.0).unwrap())
            .collect();
        for (i, p) in permits.into_iter().enumerate() {
            let last = i == 15;
            let s = tokens(
                if last { 0.0 } else { 2800.0 - 200.0 * i as f64 },
                1900,
                last,
            );
            b.complete(
                t(0.1),
                p,
                Outcome::Response {
                    status: if last { 429 } else { 200 },
                    signals: &s,
                },
                &mut j,
            );
        }
        assert_eq!(
            b.factor(t(0.1)),
            1.0,
            "a throttle before any limit was known"
        );
        // Near the window's end, the wait for the next call is not estimated at the pace
        // of the moment (0 left): one call of 200 at the sustained pace of 0.8 × 3,000 per
        // 1.9 s (the longest reset seen) is well under a second.
        let per_call = b.sustained_interval(t(0.1), Lane::Realtime, 200.0).unwrap();
        assert!(per_call < Duration::from_millis(200), "{per_call:?}");
        // After the reset (at 2.0 s) calls go again, but not the whole queue at once: at the
        // pace of the longest reset seen, at most the target of 2,400 (plus half the margin
        // while no answer reports on the new window).
        let mut sent = 0.0;
        let mut in_flight = Vec::new();
        while b.earliest(t(2.1), Lane::Bulk, 200.0) <= t(2.1) {
            in_flight.push(b.try_acquire(t(2.1), Lane::Bulk, 200.0).unwrap());
            sent += 200.0;
            assert!(sent <= 3000.0, "the whole quota and more went at once");
        }
        assert!((200.0..=2800.0).contains(&sent), "{sent}");
    }

    /// Sends bulk calls one after another as early as the budget allows, each answered at
    /// once, until `until`; gives the times they went.
    fn flood(b: &mut Budget, n: usize, until: Timestamp) -> Vec<Timestamp> {
        let mut sent = Vec::new();
        let mut now = t(0.0);
        let mut j = Jitter::new(1);
        while sent.len() < n && now < until {
            now = b.earliest(now, Lane::Bulk, 1.0);
            let p = b.try_acquire(now, Lane::Bulk, 1.0).unwrap();
            b.complete(
                now,
                p,
                Outcome::Response {
                    status: 200,
                    signals: &ok(200),
                },
                &mut j,
            );
            sent.push(now);
        }
        sent
    }

    #[test]
    fn a_long_window_is_a_quota_to_last_not_a_rate() {
        // The Quickstart's limits: 200 calls go at the 10-s limit's 8/s, not the day's 2.3/s.
        let mut b = budget(vec![
            LimitConfig::new(100.0, Duration::from_secs(10)),
            LimitConfig::new(250_000.0, Duration::from_secs(86_400)),
        ]);
        let sent = flood(&mut b, 200, t(3600.0));
        let last = sent.last().unwrap().as_secs_f64();
        assert!(
            (24.0..=25.0).contains(&last),
            "the 200th call went at {last} s"
        );
    }

    #[test]
    fn a_long_window_still_bounds_what_is_spent_in_it() {
        // An hourly 1,000 alone, a backlog that never ends: a burst of a tenth of the target
        // at first, then the even pace; over the hour at most 1.1 × 0.8 × 1,000.
        let mut b = budget(vec![LimitConfig::new(1000.0, Duration::from_secs(3600))]);
        let sent = flood(&mut b, 100_000, t(7200.0));
        let first_hour = sent.iter().filter(|s| s.as_secs_f64() < 3600.0).count();
        assert!(
            (800..=880).contains(&first_hour),
            "{first_hour} in the first hour"
        );
        let burst = sent.iter().filter(|s| s.as_secs_f64() < 1.0).count();
        assert!((70..=90).contains(&burst), "{burst} at once");
        let second_hour = sent.len() - first_hour;
        assert!(
            second_hour <= 801,
            "{second_hour} in the second hour: the even pace"
        );
    }

    #[test]
    fn cost_counts_against_point_limits_only() {
        let mut points = LimitConfig::new(100.0, Duration::from_secs(10));
        points.unit = Unit::Points;
        let mut b = budget(vec![
            points,
            LimitConfig::new(1000.0, Duration::from_secs(10)),
        ]);
        let _p = b.try_acquire(t(0.0), Lane::Bulk, 4.0).unwrap();
        // 4 points at 8 points/s: 0.5 s; the request limit alone would allow 1/80 s.
        assert_eq!(b.earliest(t(0.0), Lane::Bulk, 1.0), t(0.5));
    }

    #[test]
    fn a_pause_longer_than_max_pause_is_cut_to_it() {
        let mut b = budget(vec![LimitConfig::new(100.0, Duration::from_secs(10))]);
        let mut j = Jitter::new(1);
        for (retry_after, reset_in) in [(Some(34_000_000), None), (None, Some(u32::MAX as u64))] {
            let p = b.try_acquire(b.paused_until(), Lane::Bulk, 1.0).unwrap();
            let signals = Signals {
                cost: None,
                throttled: true,
                retry_after: retry_after.map(Duration::from_secs),
                limits: vec![crate::LimitSignal {
                    remaining: Some(0.0),
                    reset_in: reset_in.map(Duration::from_secs),
                    ..Default::default()
                }],
            };
            let now = b.paused_until();
            let r = b.complete(
                now,
                p,
                Outcome::Response {
                    status: 429,
                    signals: &signals,
                },
                &mut j,
            );
            assert_eq!(r.paused_for, Some(DEFAULT_MAX_PAUSE));
            assert_eq!(b.paused_until(), now + DEFAULT_MAX_PAUSE);
        }
    }

    #[test]
    fn a_throttled_response_pauses_the_budget_and_halves_the_pace() {
        let mut b = budget(vec![LimitConfig::new(100.0, Duration::from_secs(10))]);
        let mut j = Jitter::new(1);
        let p = b.try_acquire(t(0.0), Lane::Bulk, 1.0).unwrap();
        let signals = Signals {
            throttled: true,
            retry_after: Some(Duration::from_secs(3)),
            limits: vec![],
            cost: None,
        };
        let r = b.complete(
            t(0.1),
            p,
            Outcome::Response {
                status: 429,
                signals: &signals,
            },
            &mut j,
        );
        assert_eq!(r.paused_for, Some(Duration::from_secs(3)));
        assert_eq!(b.earliest(t(0.2), Lane::Realtime, 1.0), t(3.1));
        assert_eq!(b.factor(t(0.1)), 0.5);
        // It climbs back linearly over `recovery` (60 s).
        assert!((b.factor(t(30.1)) - 0.75).abs() < 1e-9);
        assert_eq!(b.factor(t(60.1)), 1.0);
        // After the pause, calls are spaced at about half the pace.
        let p = b.try_acquire(t(3.1), Lane::Bulk, 1.0).unwrap();
        let Err(Wait::Until(next)) = b.try_acquire(t(3.1), Lane::Bulk, 1.0) else {
            panic!("spaced")
        };
        let gap = next.saturating_since(t(3.1)).as_secs_f64();
        assert!(
            (gap - 1.0 / (8.0 * b.factor(t(3.1)))).abs() < 1e-6,
            "gap {gap}"
        );
        b.complete(t(3.2), p, Outcome::Abandoned, &mut j);
    }

    #[test]
    fn a_throttle_without_hints_pauses_for_a_jittered_backoff() {
        let mut b = budget(vec![]);
        let mut j = Jitter::new(3);
        let mut pauses = vec![];
        for i in 0..4 {
            let now = t(100.0 * i as f64);
            let p = b.try_acquire(now, Lane::Realtime, 1.0).unwrap();
            let r = b.complete(
                now,
                p,
                Outcome::Response {
                    status: 429,
                    signals: &ok(429),
                },
                &mut j,
            );
            pauses.push(r.paused_for.unwrap());
        }
        for (i, p) in pauses.iter().enumerate() {
            assert!(*p <= b.config().backoff.ceiling(i as u32));
        }
    }

    #[test]
    fn the_exhausted_limits_reset_is_the_pause_when_retry_after_is_missing() {
        let mut b = budget(vec![]);
        let p = b.try_acquire(t(0.0), Lane::Realtime, 1.0).unwrap();
        let signals = Signals {
            cost: None,
            throttled: true,
            retry_after: None,
            limits: vec![LimitSignal {
                quota: Some(5000.0),
                remaining: Some(0.0),
                reset_in: Some(Duration::from_secs(300)),
                ..LimitSignal::default()
            }],
        };
        let r = b.complete(
            t(0.0),
            p,
            Outcome::Response {
                status: 403,
                signals: &signals,
            },
            &mut Jitter::new(1),
        );
        assert_eq!(r.paused_for, Some(Duration::from_secs(300)));
        // The limit was learned from the headers.
        assert_eq!(b.snapshot(t(0.0)).limits[0].quota, 5000.0);
    }

    #[test]
    fn bulk_gets_the_reserve_only_while_realtime_is_in_flight() {
        let mut b = budget(vec![LimitConfig::new(100.0, Duration::from_secs(10))]);
        let mut j = Jitter::new(1);
        let p = b.try_acquire(t(0.0), Lane::Bulk, 1.0).unwrap();
        b.complete(t(0.0), p, Outcome::Abandoned, &mut j);
        // No real-time traffic: bulk is spaced at the full 8/s.
        assert_eq!(b.earliest(t(0.0), Lane::Bulk, 1.0), t(0.125));
        let rt = b.try_acquire(t(0.2), Lane::Realtime, 1.0).unwrap();
        let p = b.try_acquire(t(0.325), Lane::Bulk, 1.0).unwrap();
        b.complete(t(0.325), p, Outcome::Abandoned, &mut j);
        // Real-time in flight: bulk at 0.8 × 8/s = 6.4/s, real-time at the full pace (and
        // up to three intervals early).
        assert!(b.reserve_held());
        assert_eq!(b.earliest(t(0.325), Lane::Bulk, 1.0), t(0.325 + 1.0 / 6.4));
        assert_eq!(b.earliest(t(0.325), Lane::Realtime, 1.0), t(0.325));
        b.complete(t(0.4), rt, Outcome::Abandoned, &mut j);
        assert!(!b.reserve_held());
        assert_eq!(b.earliest(t(0.4), Lane::Bulk, 1.0), t(0.45));
    }

    #[test]
    fn realtime_may_spend_part_of_the_margin_that_bulk_never_touches() {
        let mut b = budget(vec![LimitConfig::new(100.0, Duration::from_secs(10))]);
        let mut j = Jitter::new(1);
        // The API says 20 remain for 5 s: bulk has reached the 20 % margin; real-time may
        // spend 20 % of it (4 calls).
        let p = b.try_acquire(t(0.0), Lane::Bulk, 1.0).unwrap();
        let signals = Signals {
            cost: None,
            throttled: false,
            retry_after: None,
            limits: vec![LimitSignal {
                quota: Some(100.0),
                remaining: Some(20.0),
                reset_in: Some(Duration::from_secs(5)),
                ..LimitSignal::default()
            }],
        };
        let ok = Outcome::Response {
            status: 200,
            signals: &signals,
        };
        b.complete(t(5.0), p, ok, &mut j);
        assert_eq!(b.earliest(t(5.0), Lane::Bulk, 1.0), t(10.0));
        let mut now = t(5.0);
        for _ in 0..4 {
            // The pace quickens as the window ends, so the earliest time moves a little when
            // asked again at that time (the governor simply re-arms).
            let p = loop {
                match b.try_acquire(now, Lane::Realtime, 1.0) {
                    Ok(p) => break p,
                    Err(Wait::Until(at)) => now = at,
                    Err(other) => panic!("{other:?}"),
                }
            };
            assert!(now < t(10.0));
            b.complete(now, p, Outcome::Abandoned, &mut j);
        }
        assert_eq!(b.earliest(now, Lane::Realtime, 1.0), t(10.0));
    }

    #[test]
    fn concurrency_is_capped_and_bulk_leaves_slots_for_realtime() {
        let config = BudgetConfig {
            max_concurrency: 10,
            ..BudgetConfig::default()
        };
        let mut b = Budget::new(Arc::new(config));
        let mut permits = vec![b.try_acquire(t(0.0), Lane::Realtime, 1.0).unwrap()];
        for _ in 0..8 {
            permits.push(b.try_acquire(t(0.0), Lane::Bulk, 1.0).unwrap());
        }
        // With a real-time call in flight, bulk holds at most 80 % of the 10 slots.
        assert_eq!(
            b.try_acquire(t(0.0), Lane::Bulk, 1.0),
            Err(Wait::Concurrency)
        );
        permits.push(b.try_acquire(t(0.0), Lane::Realtime, 1.0).unwrap());
        assert_eq!(
            b.try_acquire(t(0.0), Lane::Realtime, 1.0),
            Err(Wait::Concurrency)
        );
        let mut j = Jitter::new(1);
        for p in permits {
            b.complete(t(0.1), p, Outcome::Abandoned, &mut j);
        }
        assert_eq!(b.in_flight(), 0);
    }

    #[test]
    fn the_breaker_opens_on_sustained_failure_and_refuses_calls() {
        let mut b = budget(vec![]);
        let mut j = Jitter::new(1);
        let mut last = Reaction::default();
        for _ in 0..5 {
            let p = b.try_acquire(t(0.0), Lane::Realtime, 1.0).unwrap();
            last = b.complete(
                t(0.0),
                p,
                Outcome::Response {
                    status: 502,
                    signals: &ok(502),
                },
                &mut j,
            );
        }
        assert!(matches!(last.breaker, Some(BreakerState::Open { .. })));
        assert_eq!(
            b.try_acquire(t(1.0), Lane::Realtime, 1.0),
            Err(Wait::Breaker(BreakerRefusal::OpenUntil(t(30.0))))
        );
        let probe = b.try_acquire(t(30.0), Lane::Realtime, 1.0).unwrap();
        assert_eq!(
            b.try_acquire(t(30.0), Lane::Realtime, 1.0),
            Err(Wait::Breaker(BreakerRefusal::Probing))
        );
        let r = b.complete(
            t(30.1),
            probe,
            Outcome::Response {
                status: 200,
                signals: &ok(200),
            },
            &mut j,
        );
        assert!(matches!(r.breaker, Some(BreakerState::Closed { .. })));
    }

    #[test]
    fn validation_names_the_field() {
        let mut c = BudgetConfig {
            headroom: 1.5,
            ..BudgetConfig::default()
        };
        assert!(c.validate().unwrap_err().to_string().contains("headroom"));
        c.headroom = 0.8;
        c.limits = vec![LimitConfig::new(0.0, Duration::from_secs(1))];
        assert!(c
            .validate()
            .unwrap_err()
            .to_string()
            .contains("limits[0].quota"));
    }

    /// A fixed window of 10 calls per 2 s that answers a 429 with only `Retry-After` (the rest
    /// of its window, in whole seconds) and says nothing on a success. Sends bulk calls as
    /// early as the budget allows, each answered at once, until `n` have passed; gives the
    /// times of the throttled ones.
    fn retry_after_only_api(b: &mut Budget, n: usize) -> Vec<Timestamp> {
        let mut throttled = Vec::new();
        let (mut now, mut passed) = (t(0.0), 0);
        let (mut window, mut in_window) = (0u64, 0);
        let mut j = Jitter::new(1);
        while passed < n {
            now = b.earliest(now, Lane::Bulk, 1.0);
            let p = b.try_acquire(now, Lane::Bulk, 1.0).unwrap();
            let w = (now.as_secs_f64() / 2.0) as u64;
            if w != window {
                (window, in_window) = (w, 0);
            }
            let signals = if in_window >= 10 {
                throttled.push(now);
                let reset = (w + 1) as f64 * 2.0 - now.as_secs_f64();
                Signals {
                    throttled: true,
                    retry_after: Some(Duration::from_secs(reset.ceil() as u64)),
                    ..Signals::default()
                }
            } else {
                in_window += 1;
                passed += 1;
                Signals::default()
            };
            let status = if signals.throttled { 429 } else { 200 };
            let outcome = Outcome::Response {
                status,
                signals: &signals,
            };
            b.complete(now, p, outcome, &mut j);
        }
        throttled
    }

    #[test]
    fn an_api_that_states_no_limit_is_paced_at_what_it_let_through() {
        let mut b = budget(Vec::new());
        let throttled = retry_after_only_api(&mut b, 60);
        // The first burst meets the limit once; after it, the budget goes at 0.8 × 10 per 2 s
        // (learned from the ten that passed), not at the whole queue after every pause.
        assert_eq!(throttled, vec![t(0.0)]);
        let snap = b.snapshot(t(20.0));
        assert_eq!(snap.limits.len(), 1, "{:?}", snap.limits);
        assert_eq!(snap.limits[0].source, "throttles");
        assert_eq!(snap.limits[0].window_s, Some(2.0));
        // The learned limit replaces the halving of the pace.
        assert_eq!(snap.pace_factor, 1.0);
    }

    #[test]
    fn a_limit_learned_from_throttles_grows_back_and_is_forgotten() {
        let mut b = budget(Vec::new());
        retry_after_only_api(&mut b, 20);
        let quota = |b: &Budget, at: f64| b.snapshot(t(at)).limits.first().map(|l| l.quota);
        assert_eq!(quota(&b, 0.0), Some(10.0));
        assert_eq!(quota(&b, 60.0), Some(11.0));
        // Doubled after ten minutes without a throttle: the next answer forgets it.
        let p = b.try_acquire(t(600.0), Lane::Bulk, 1.0).unwrap();
        let signals = Signals::default();
        let ok = Outcome::Response {
            status: 200,
            signals: &signals,
        };
        b.complete(t(600.0), p, ok, &mut Jitter::new(1));
        assert_eq!(quota(&b, 600.0), None);
    }

    #[test]
    fn a_throttle_beside_a_stated_limit_teaches_no_new_one() {
        let mut b = budget(vec![LimitConfig::new(100.0, Duration::from_secs(10))]);
        let p = b.try_acquire(t(0.0), Lane::Bulk, 1.0).unwrap();
        let p2 = b.try_acquire(t(0.2), Lane::Bulk, 1.0).unwrap();
        b.complete(
            t(0.2),
            p,
            Outcome::Response {
                status: 200,
                signals: &ok(200),
            },
            &mut Jitter::new(1),
        );
        b.complete(
            t(0.3),
            p2,
            Outcome::Response {
                status: 429,
                signals: &ok(429),
            },
            &mut Jitter::new(1),
        );
        let snap = b.snapshot(t(0.3));
        assert_eq!(snap.limits.len(), 1);
        assert_eq!(snap.limits[0].source, "config");
        assert_eq!(snap.pace_factor, 0.5);
        // While paused, a caller is told nothing remains until the pause ends.
        let a = b.allowance(t(0.3)).unwrap();
        assert_eq!((a.quota, a.window_s, a.remaining), (80, Some(10), Some(0)));
        assert!(a.reset_s.is_some_and(|r| r >= 1), "{a:?}");
    }
}
