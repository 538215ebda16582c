//! One limit of a budget (a quota per window, in some unit): what is known about it and the
//! pace it allows.
//!
//! A limit knows its quota and window from config, from the headers, or both. When a response
//! reports what remains and when the window resets, the limit aims to end the window having
//! spent `headroom × quota` in total — its own calls and everyone else's — by spreading what is
//! left of that over the time that is left. Without a fresh report it paces evenly at
//! `headroom × quota / window`.

use std::time::Duration;

use serde::Serialize;

use crate::clock::Timestamp;
use crate::signals::{LimitSignal, Unit};

/// A window at least this long is a quota rather than a rate (see [`Limit::burst`]).
const LONG_WINDOW: Duration = Duration::from_secs(3600);

/// The longest window a reset can stand for when no one states the window.
const MAX_INFERRED_WINDOW: Duration = Duration::from_secs(3600);

/// How long a report without a reset time describes a limit whose window is not known.
const MAX_REPORT_AGE: Duration = Duration::from_secs(60);

/// A limit learned from throttled answers alone grows by this fraction of its quota…
const THROTTLE_GROWTH: f64 = 0.1;
/// …every this long without another throttle, and is forgotten once it has doubled: the API
/// may have raised its limit, and the next throttle teaches it again.
const THROTTLE_GROWTH_PERIOD: Duration = Duration::from_secs(60);

/// A limit as configured: `quota` units per `window`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LimitConfig {
    pub name: Option<String>,
    pub quota: f64,
    #[serde(serialize_with = "crate::limit::serialize_secs")]
    pub window: Duration,
    pub unit: Unit,
}

impl LimitConfig {
    pub fn new(quota: f64, window: Duration) -> Self {
        LimitConfig {
            name: None,
            quota,
            window,
            unit: Unit::Requests,
        }
    }
}

pub(crate) fn serialize_secs<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64(d.as_secs_f64())
}

/// The pace a limit allows right now.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Pace {
    /// Nothing is known that bounds the rate (only concurrency does).
    Unpaced,
    /// Calls may go at this many units per second.
    Rate(f64),
    /// Nothing may go before this time.
    Blocked(Timestamp),
}

/// A remaining count that a response reported.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Report {
    remaining: f64,
    /// The budget's total spend in this limit's unit once the reporting call had been sent:
    /// everything sent after it may not be counted in `remaining` yet.
    spent_at: f64,
    /// Dispatch order of the reporting call, so a late response cannot overwrite a newer one.
    seq: u64,
    observed_at: Timestamp,
    reset_at: Option<Timestamp>,
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Limit {
    name: Option<Box<str>>,
    quota: f64,
    window: Option<Duration>,
    unit: Unit,
    /// The configured quota: a ceiling for what the headers report (a lower figure wins at
    /// once; a higher one is not taken: the config may keep room for other clients).
    ceiling: Option<f64>,
    /// The configured window, which names this limit in its config even after the API's
    /// window replaced `window` (`learn = "raise"`).
    config_window: Option<Duration>,
    report: Option<Report>,
    /// GCRA: the theoretical time of the next call at the pace, for any lane and for bulk.
    tat: Timestamp,
    tat_bulk: Timestamp,
    /// When the last call went, whatever the pace was.
    last_sent: Timestamp,
    /// Whether the resets look like a sliding window's (see `observe`).
    resets: ResetShape,
    /// When the limit was learned from a throttled answer that said nothing of the limit (see
    /// [`Limit::from_throttle`]); `None` for limits from config or headers.
    throttled_at: Option<Timestamp>,
    /// A configured limit that takes a higher reported quota too (`learn = "raise"`).
    raise: bool,
    /// Configured by an operator's override rather than the upstream's config.
    overridden: bool,
    /// The longest reset any answer reported (ms): a window is at least that long, which
    /// bounds the pace a limit no one gave a window can sustain.
    longest_reset_ms: u32,
}

/// The longest reset reported over each span of one window: a fixed window reports resets
/// from the whole window down to zero, a sliding (rolling) window only ever the expiry of its
/// oldest call, a small part of the window.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
struct ResetShape {
    span_start: Timestamp,
    /// In milliseconds, to keep an idle budget small.
    longest_ms: u32,
    sliding: bool,
    /// For a limit whose window no one stated: how far the last report's reset moved past
    /// the one before (ms). A fixed window's reset moves by its window from one window to the
    /// next; twice the same move is the window.
    jump_ms: u32,
}

impl Limit {
    pub(crate) fn from_config(c: &LimitConfig, raise: bool, overridden: bool) -> Self {
        Limit {
            // An operator's override is a cap the API's figures do not raise.
            raise: raise && !overridden,
            overridden,
            config_window: Some(c.window),
            longest_reset_ms: 0,
            name: c.name.as_deref().map(Into::into),
            quota: c.quota,
            window: Some(c.window),
            unit: c.unit,
            ceiling: Some(c.quota),
            report: None,
            tat: Timestamp::ZERO,
            tat_bulk: Timestamp::ZERO,
            last_sent: Timestamp::ZERO,
            resets: ResetShape::default(),
            throttled_at: None,
        }
    }

    pub(crate) fn learned(sig: &LimitSignal) -> Option<Self> {
        let quota = sig.quota.filter(|q| q.is_finite() && *q > 0.0)?;
        Some(Limit {
            name: sig.name.as_deref().map(Into::into),
            quota,
            window: sig.window.filter(|w| !w.is_zero()),
            unit: sig.unit,
            ceiling: None,
            config_window: None,
            report: None,
            tat: Timestamp::ZERO,
            tat_bulk: Timestamp::ZERO,
            last_sent: Timestamp::ZERO,
            resets: ResetShape::default(),
            throttled_at: None,
            raise: false,
            overridden: false,
            longest_reset_ms: 0,
        })
    }

    /// A limit an API never stated, learned from its throttles: `quota` calls per `window`
    /// is what it let through before it said no. It grows back slowly (see
    /// [`Limit::quota_at`]), so a limit that was raised is found again.
    pub(crate) fn from_throttle(now: Timestamp, quota: f64, window: Duration) -> Self {
        Limit {
            throttled_at: Some(now),
            ..Limit::learned(&LimitSignal {
                quota: Some(quota.max(1.0)),
                window: Some(window),
                ..LimitSignal::default()
            })
            .expect("a positive quota makes a limit")
        }
    }

    /// Whether this limit comes from config (or an override) rather than from the API.
    pub(crate) fn is_configured(&self) -> bool {
        self.ceiling.is_some()
    }

    /// Whether `c` configures this limit (same name, window and unit).
    pub(crate) fn same_as(&self, c: &LimitConfig) -> bool {
        self.unit == c.unit
            && self.name.as_deref() == c.name.as_deref()
            && self.config_window.or(self.window) == Some(c.window)
    }

    /// This limit under a new config of itself (`fresh`): the new quota and ceiling, and
    /// what the API reported and the place in the pace kept.
    pub(crate) fn reconfigured(self, fresh: Limit) -> Limit {
        Limit {
            report: self.report,
            tat: self.tat,
            tat_bulk: self.tat_bulk,
            last_sent: self.last_sent,
            resets: self.resets,
            ..fresh
        }
    }

    /// Call `seq` turned out to cost `delta` more than it reserved: a report from its own
    /// answer or a later call's already counts that in what it says remains.
    pub(crate) fn shift_reports_since(&mut self, seq: u64, delta: f64) {
        if let Some(r) = self.report.as_mut().filter(|r| r.seq >= seq) {
            r.spent_at += delta;
        }
    }

    /// Whether this limit was learned from throttles alone.
    pub(crate) fn is_from_throttles(&self) -> bool {
        self.throttled_at.is_some()
    }

    /// A limit learned from throttles that has grown back to twice what it was, without
    /// another throttle, says nothing any more.
    pub(crate) fn outgrown(&self, now: Timestamp) -> bool {
        self.throttled_at.is_some_and(|at| {
            let periods =
                now.saturating_since(at).as_secs_f64() / THROTTLE_GROWTH_PERIOD.as_secs_f64();
            periods * THROTTLE_GROWTH >= 1.0
        })
    }

    /// The quota per second now, when the window is known.
    pub(crate) fn rate_at(&self, now: Timestamp) -> Option<f64> {
        self.window
            .map(|w| self.quota_at(now) / w.as_secs_f64().max(1e-3))
    }

    /// The quota now: as stated, or, for a limit learned from throttles, grown by
    /// `THROTTLE_GROWTH` of it per `THROTTLE_GROWTH_PERIOD` since.
    fn quota_at(&self, now: Timestamp) -> f64 {
        match self.throttled_at {
            None => self.quota,
            Some(at) => {
                let periods =
                    now.saturating_since(at).as_secs_f64() / THROTTLE_GROWTH_PERIOD.as_secs_f64();
                self.quota * (1.0 + THROTTLE_GROWTH * periods).min(2.0)
            }
        }
    }

    /// The safety margin kept of this limit's quota: `1 - headroom` of it, in its unit.
    pub(crate) fn reserve(&self, now: Timestamp, headroom: f64) -> f64 {
        (1.0 - headroom) * self.quota_at(now)
    }

    pub(crate) fn unit(&self) -> Unit {
        self.unit
    }

    /// The next free slot at the pace, for any lane and for bulk.
    pub(crate) fn slots(&self) -> (Timestamp, Timestamp) {
        (self.tat, self.tat_bulk)
    }

    /// Books a call at `now`: the next call of any lane waits `gap`, the next bulk call
    /// `bulk_gap` (when the call is bulk). Without a gap the limit did not pace the call.
    pub(crate) fn book(
        &mut self,
        now: Timestamp,
        gap: Option<Duration>,
        bulk_gap: Option<Duration>,
    ) {
        self.last_sent = now;
        if let Some(gap) = gap {
            self.tat = self.tat.max(now) + gap;
        }
        if let Some(bulk_gap) = bulk_gap {
            self.tat_bulk = self.tat_bulk.max(now) + bulk_gap;
        }
    }

    /// How far ahead of its pace this limit lets calls run. A long window (an hour or more:
    /// hourly, daily, monthly quotas) is a quota to last until its reset, not a rate: paced
    /// evenly, a daily 250,000 held every call to 2.3/s beside a 100-per-10-s limit that
    /// allows 8/s, and refused floods that left the day's quota almost untouched. It may run
    /// a tenth of its window ahead (a burst of a tenth of its target), so it slows calls only
    /// when they keep spending faster than what remains can last; over any window it still
    /// sends at most `1.1 × headroom` of the quota (88 % at the default headroom), and with a
    /// fresh report never more than what remains above the reserve.
    pub(crate) fn burst(&self) -> Duration {
        match self.window {
            Some(w) if w >= LONG_WINDOW => w / 10,
            _ => Duration::ZERO,
        }
    }

    /// Whether this is a quota to last (a window of an hour or more) rather than a rate.
    pub(crate) fn is_long(&self) -> bool {
        self.window.is_some_and(|w| w >= LONG_WINDOW)
    }

    /// What one call of `cost` counts against this limit.
    pub(crate) fn unit_cost(&self, cost: f64) -> f64 {
        match self.unit {
            Unit::Points => cost,
            _ => 1.0,
        }
    }

    /// Whether this limit paces calls at all (content bytes and concurrency limits do not).
    pub(crate) fn paces(&self) -> bool {
        matches!(self.unit, Unit::Requests | Unit::Points)
    }

    /// How well a response's limit matches this one: by name, else window, else quota.
    pub(crate) fn matches(&self, sig: &LimitSignal) -> bool {
        if sig.unit != self.unit {
            return false;
        }
        if let (Some(a), Some(b)) = (self.name.as_deref(), sig.name.as_deref()) {
            return a == b;
        }
        if let (Some(a), Some(b)) = (self.window, sig.window) {
            return close(a.as_secs_f64(), b.as_secs_f64());
        }
        match sig.quota {
            Some(q) => close(q, self.quota),
            None => false,
        }
    }

    /// Learns from a response describing this limit. `seq` and `spent_at` describe the call the
    /// response answers.
    pub(crate) fn observe(&mut self, now: Timestamp, sig: &LimitSignal, seq: u64, spent_at: f64) {
        if let Some(q) = sig.quota.filter(|q| q.is_finite() && *q > 0.0) {
            // The API's own figure beats a configured guess where it is stricter (or either
            // way, with `learn = "raise"`).
            self.quota = match self.ceiling {
                Some(c) if !self.raise => q.min(c),
                _ => q,
            };
        }
        // With `learn = "raise"` the API's window wins too: a preset's guess of a bucket's
        // size and refill is a start only.
        if self.ceiling.is_none() || self.window.is_none() || self.raise {
            if let Some(w) = sig.window.filter(|w| !w.is_zero()) {
                self.window = Some(w);
            }
        }
        if self.name.is_none() {
            self.name = sig.name.as_deref().map(Into::into);
        }
        if let Some(r) = sig.reset_in {
            // A reset of days (a daily quota, or a hostile answer) would make the pace it
            // stands for nothing: it bounds the window only up to an hour.
            let r_ms = u32::try_from(r.min(MAX_INFERRED_WINDOW).as_millis()).unwrap_or(u32::MAX);
            self.longest_reset_ms = self.longest_reset_ms.max(r_ms);
        }
        let Some(remaining) = sig.remaining.filter(|r| r.is_finite() && *r >= 0.0) else {
            return;
        };
        // A reset rounded to whole seconds says little about a window of a second or two:
        // such a limit is paced as if the response gave no reset at all.
        let coarse = |r: &Duration| {
            r.subsec_nanos() == 0 && self.window.is_some_and(|w| w <= Duration::from_secs(2))
        };
        if let (Some(r), Some(w)) = (sig.reset_in, self.window) {
            let r_ms = u32::try_from(r.as_millis()).unwrap_or(u32::MAX);
            let shape = &mut self.resets;
            if now.saturating_since(shape.span_start) >= w {
                let quarter = u32::try_from(w.as_millis() / 4).unwrap_or(u32::MAX);
                *shape = ResetShape {
                    span_start: now,
                    longest_ms: r_ms,
                    sliding: shape.span_start != Timestamp::ZERO && shape.longest_ms < quarter,
                    jump_ms: shape.jump_ms,
                };
            } else {
                shape.longest_ms = shape.longest_ms.max(r_ms);
            }
        }
        // A window resets within its length: a reset beyond it (an API's bug, or a hostile
        // one) would block a known limit until then, where a pause is capped by max_pause.
        let within_window = |r: Duration| self.window.map_or(r, |w| r.min(w));
        let mut reset_at = sig
            .reset_in
            .filter(|r| !coarse(r))
            .map(|r| now + within_window(r));
        let newer = match self.report {
            None => true,
            Some(old) => {
                seq >= old.seq
                    || old.reset_at.is_some_and(|r| now >= r)
                    // A later window than the one the newer report described.
                    || matches!((reset_at, old.reset_at),
                        (Some(new), Some(old)) if new > old + Duration::from_secs(1))
            }
        };
        if newer {
            if let (None, Some(new), Some(old)) = (self.window, reset_at, self.report) {
                // A window that turned over refilled: what remains rose by a good part of
                // the quota (a sliding window's reset creeps without that).
                let refilled = remaining - old.remaining >= 0.25 * self.quota;
                if let Some(old_reset) = old.reset_at.filter(|_| refilled) {
                    self.infer_window(new.saturating_since(old_reset));
                }
            }
            // Resets are usually rounded up to whole seconds, so each report bounds the true
            // reset from above: within one window, the earliest bound is the tightest.
            if let (Some(new), Some(old)) = (reset_at, self.report.and_then(|r| r.reset_at)) {
                if new >= old && new.saturating_since(old) < Duration::from_secs(1) {
                    reset_at = Some(old);
                }
            }
            self.report = Some(Report {
                remaining,
                spent_at,
                seq,
                observed_at: now,
                reset_at,
            });
        }
    }

    /// Learns a window no one stated from how far a fixed window's reset moves from one
    /// window to the next, as it refills: the same move of a second or more twice in a row
    /// (within 5 %). A sliding window's reset (its oldest call's expiry) creeps instead, and
    /// an idle gap makes a longer move that the next one does not repeat.
    fn infer_window(&mut self, moved: Duration) {
        if moved < Duration::from_secs(1) {
            return;
        }
        let moved_ms = u32::try_from(moved.as_millis()).unwrap_or(u32::MAX);
        let last = self.resets.jump_ms;
        if last > 0 && moved_ms.abs_diff(last) <= moved_ms / 20 {
            self.window = Some(Duration::from_millis(u64::from(moved_ms.min(last))));
        }
        self.resets.jump_ms = moved_ms;
    }

    /// The remaining count now: the last report minus what was sent since its call.
    pub(crate) fn estimated_remaining(&self, now: Timestamp, spent: f64) -> Option<f64> {
        let r = self.fresh_report(now)?;
        Some((r.remaining - (spent - r.spent_at)).max(0.0))
    }

    pub(crate) fn reset_at(&self, now: Timestamp) -> Option<Timestamp> {
        self.fresh_report(now).and_then(|r| r.reset_at)
    }

    /// The last report while it can still describe the window: until its reset, or, when it
    /// gave none, for one window after it came (`MAX_REPORT_AGE` when the window is not
    /// known). A report that outlived its window would hold the limit at what remained then
    /// for ever: a limit whose headers stopped matching it (the API changed its quota) was
    /// stuck at `remaining 0`, probing one call at a time.
    fn fresh_report(&self, now: Timestamp) -> Option<&Report> {
        self.report.as_ref().filter(|r| match r.reset_at {
            Some(reset) => now < reset,
            None => now < r.observed_at + self.window.unwrap_or(MAX_REPORT_AGE),
        })
    }

    /// A window no one stated that turned over at its reported reset holds its quota again,
    /// less what went since the last report (some of which the old window may have counted),
    /// until an answer reports on the new window. Without this, a limit with no window to pace
    /// by was unpaced after each reset, and the calls queued behind it all went at once.
    fn refilled_report(&self, now: Timestamp) -> Option<Report> {
        if self.window.is_some() {
            return None;
        }
        let r = self.report?;
        let reset = r
            .reset_at
            .filter(|t| now >= *t && now < *t + MAX_REPORT_AGE)?;
        Some(Report {
            remaining: self.quota,
            observed_at: reset,
            reset_at: None,
            ..r
        })
    }

    /// The pace this limit sustains over windows (units per second): `headroom` of its quota
    /// per window, or, with no window known, per the longest reset seen (a window is at
    /// least that long). Near a window's end the pace of the moment is far lower; a wait
    /// estimated at that pace for every call queued ahead ran away (a call refused with
    /// `Retry-After: 300` when the budget refilled every 2 s).
    pub(crate) fn sustained_rate(&self, now: Timestamp, headroom: f64) -> Option<f64> {
        let window = self.window.or_else(|| {
            (self.longest_reset_ms > 0)
                .then(|| Duration::from_millis(u64::from(self.longest_reset_ms)))
        })?;
        Some(headroom * self.quota_at(now) / window.as_secs_f64().max(1e-3))
    }

    /// The pace this limit allows now for a call counting `cost` units, when `spent` units have
    /// been sent in total and `headroom` of the quota is the target, of which the call may also
    /// spend the fraction `margin` of the rest.
    pub(crate) fn pace(
        &self,
        now: Timestamp,
        headroom: f64,
        spent: f64,
        cost: f64,
        margin: f64,
    ) -> Pace {
        if !self.paces() {
            return Pace::Unpaced;
        }
        let quota = self.quota_at(now);
        let nominal = self
            .window
            .map(|w| headroom * quota / w.as_secs_f64().max(1e-3));
        let refilled;
        let report = match self.fresh_report(now) {
            Some(r) => r,
            None => match self.refilled_report(now) {
                Some(r) => {
                    refilled = r;
                    &refilled
                }
                None => return nominal.map_or(Pace::Unpaced, Pace::Rate),
            },
        };
        let estimate = report.remaining - (spent - report.spent_at);
        // What may still be spent in this window, by everyone, leaving the reserve untouched.
        let reserve = (1.0 - headroom) * quota;
        // Only the fraction itself, rounded down by the calls' cost: a floor of one call's
        // worth spent a whole call of a small quota's margin (17 of 20 at headroom 0.8).
        let usable = margin * reserve;
        let reserve = reserve - usable;
        let allowance = estimate - reserve;
        match report.reset_at {
            Some(reset_at) if allowance >= cost => {
                let left = reset_at.saturating_since(now).as_secs_f64().max(1e-3);
                let rate = allowance / left;
                // A sliding window frees capacity all the time, not only at its reset (the
                // oldest call's expiry): go at least at the even pace while the report
                // allows it (what was left is still the bound).
                Pace::Rate(match nominal {
                    Some(n) if self.resets.sliding => rate.max(n),
                    _ => rate,
                })
            }
            // A sliding window at its target frees a call's worth about every even interval,
            // long before the reported reset (rounded up to whole seconds): keep to the even
            // pace while nothing else spends from the reserve.
            Some(reset_at) => match nominal {
                Some(n) if self.resets.sliding && allowance > -cost => {
                    let since = report.observed_at.max(self.last_sent);
                    Pace::Blocked(reset_at.min(since + crate::clock::secs_to_duration(cost / n)))
                }
                _ => Pace::Blocked(reset_at),
            },
            // No reset time: pace evenly. The even pace reaches the reserve at the end of every
            // window, which the response does not show, so it may run into half of it; below
            // that (someone else is spending), probe slowly enough that at most a quarter of
            // the reserve could go in one window, until the window turns over.
            // With no window known, the longest reset seen stands in for it, so that a
            // window's allowance is spread rather than spent at once when it turns over.
            None if allowance + 0.5 * reserve >= cost => nominal
                .or_else(|| self.sustained_rate(now, headroom))
                .map_or(Pace::Unpaced, Pace::Rate),
            None => {
                // With no window known, the longest reset seen stands in for it: one unit per
                // second held a 200-token call for 200 s.
                let probe_rate = match nominal.or_else(|| self.sustained_rate(now, headroom)) {
                    Some(n) => n * (1.0 - headroom).max(0.01) / headroom / 4.0,
                    None => 1.0,
                };
                let since = report.observed_at.max(self.last_sent);
                Pace::Blocked(since + crate::clock::secs_to_duration(cost / probe_rate))
            }
        }
    }

    /// This limit as a caller sees it: `headroom` of the quota, and what remains of that
    /// while a report is fresh. With it, the share of that target still left (for picking
    /// the tightest limit; 1 when nothing is known).
    pub(crate) fn allowance(
        &self,
        now: Timestamp,
        headroom: f64,
        spent: f64,
    ) -> Option<(f64, crate::budget::Allowance)> {
        if !self.paces() {
            return None;
        }
        let quota = self.quota_at(now);
        let target = (headroom * quota).floor().max(1.0);
        let remaining = self
            .estimated_remaining(now, spent)
            .map(|r| (r - (1.0 - headroom) * quota).clamp(0.0, target).floor());
        let allowance = crate::budget::Allowance {
            quota: target as u64,
            window_s: self.window.map(|w| w.as_secs_f64().ceil() as u64),
            remaining: remaining.map(|r| r as u64),
            reset_s: self
                .reset_at(now)
                .map(|t| t.saturating_since(now).as_secs_f64().ceil() as u64),
        };
        Some((remaining.map_or(1.0, |r| r / target), allowance))
    }

    pub(crate) fn snapshot(&self, now: Timestamp, headroom: f64, spent: f64) -> LimitSnapshot {
        let pace = match self.pace(now, headroom, spent, self.unit_cost(1.0), 0.0) {
            Pace::Rate(r) => Some(r),
            Pace::Blocked(_) => Some(0.0),
            Pace::Unpaced => None,
        };
        LimitSnapshot {
            name: self.name.as_deref().map(str::to_string),
            quota: self.quota_at(now),
            window_s: self.window.map(|w| w.as_secs_f64()),
            unit: self.unit,
            source: if self.overridden {
                "override"
            } else if self.ceiling.is_some() {
                "config"
            } else if self.throttled_at.is_some() {
                "throttles"
            } else {
                "headers"
            },
            remaining: self.estimated_remaining(now, spent),
            reset_in_s: self
                .reset_at(now)
                .map(|t| t.saturating_since(now).as_secs_f64()),
            pace_per_s: pace,
        }
    }
}

/// What `/v1/budgets` shows of a limit.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LimitSnapshot {
    pub name: Option<String>,
    pub quota: f64,
    pub window_s: Option<f64>,
    pub unit: Unit,
    /// `config`, `override` (set through `PATCH /v1/budgets/…`), `headers` or `throttles`
    /// (learned from what passed before a throttled answer that stated no limit).
    pub source: &'static str,
    /// The remaining count estimated from the last report, when one is fresh.
    pub remaining: Option<f64>,
    pub reset_in_s: Option<f64>,
    /// Units per second the limit allows now, before the budget's pace factor.
    pub pace_per_s: Option<f64>,
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() <= 0.01 * a.abs().max(b.abs()).max(1.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(secs: f64) -> Timestamp {
        Timestamp::from_secs_f64(secs)
    }

    fn report(remaining: f64, reset_in: Option<f64>) -> LimitSignal {
        LimitSignal {
            quota: Some(100.0),
            remaining: Some(remaining),
            reset_in: reset_in.map(Duration::from_secs_f64),
            ..LimitSignal::default()
        }
    }

    /// A limit whose window no one states (OpenAI's token headers say the reset, not the
    /// window) learns it from how far the reset moves from one window to the next; a reset
    /// that creeps (a sliding window) or an odd move teaches nothing.
    #[test]
    fn a_window_no_one_stated_is_learned_from_how_the_reset_moves() {
        let mut l = Limit::learned(&report(100.0, Some(1.5))).unwrap();
        assert_eq!(l.window, None);
        let mut seq = 0;
        let mut see = |l: &mut Limit, at: f64, remaining: f64, reset_in: f64| {
            seq += 1;
            l.observe(t(at), &report(remaining, Some(reset_in)), seq, 0.0);
        };
        see(&mut l, 0.0, 90.0, 1.5);
        see(&mut l, 0.5, 20.0, 1.0); // the same window, spent
        see(&mut l, 1.6, 95.0, 1.9); // the next, refilled: its reset moved by 2 s
        assert_eq!(l.window, None, "one move is not yet a window");
        see(&mut l, 2.5, 10.0, 1.0);
        see(&mut l, 3.7, 96.0, 1.8); // and again by 2 s
        assert_eq!(l.window, Some(Duration::from_secs(2)));

        // A sliding window at its limit: the reset creeps, nothing refills.
        let mut creeping = Limit::learned(&report(100.0, Some(1.0))).unwrap();
        for i in 1..40 {
            see(&mut creeping, f64::from(i) * 0.3, f64::from(i % 2), 1.0);
        }
        assert_eq!(creeping.window, None);
        let mut odd = Limit::learned(&report(100.0, Some(1.0))).unwrap();
        for (at, reset_in) in [(0.0, 1.0), (1.0, 0.1), (2.0, 2.0), (3.0, 0.1), (6.5, 1.5)] {
            let remaining = if reset_in > 1.0 { 100.0 } else { 0.0 };
            see(&mut odd, at, remaining, reset_in);
        }
        assert_eq!(odd.window, None, "moves of 3 s and 4.5 s");
    }

    #[test]
    fn short_resets_for_a_whole_window_mean_a_sliding_window() {
        let config = LimitConfig::new(100.0, Duration::from_secs(10));
        // Sliding: every reset is the oldest call's expiry, a second or less away.
        let mut sliding = Limit::from_config(&config, false, false);
        // Fixed: resets count down from the window's length.
        let mut fixed = Limit::from_config(&config, false, false);
        for i in 0..=40u64 {
            let now = t(0.5 + i as f64 * 0.5);
            sliding.observe(now, &report(20.0, Some(1.0)), i, i as f64);
            let left = 10.0 - (now.as_secs_f64() % 10.0);
            fixed.observe(now, &report(20.0, Some(left.ceil())), i, i as f64);
        }
        assert!(sliding.resets.sliding);
        assert!(!fixed.resets.sliding);
        // At its target (remaining = the reserve), a sliding window keeps the even pace
        // instead of waiting for the reported reset; a fixed one waits.
        let now = t(20.6);
        let spent = 40.0;
        match sliding.pace(now, 0.8, spent, 1.0, 0.0) {
            Pace::Blocked(at) => assert!(at <= now + Duration::from_millis(125), "{at:?}"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn without_reports_paces_evenly_at_headroom() {
        let l = Limit::from_config(
            &LimitConfig::new(100.0, Duration::from_secs(10)),
            false,
            false,
        );
        assert_eq!(l.pace(t(0.0), 0.8, 0.0, 1.0, 0.0), Pace::Rate(8.0));
    }

    #[test]
    fn spreads_what_is_left_of_the_target_over_the_time_left() {
        let mut l = Limit::from_config(
            &LimitConfig::new(100.0, Duration::from_secs(10)),
            false,
            false,
        );
        // Someone else spent 40 of the window; 5 s left; target is 80 in total.
        l.observe(t(5.0), &report(60.0, Some(5.0)), 1, 1.0);
        match l.pace(t(5.0), 0.8, 1.0, 1.0, 0.0) {
            Pace::Rate(r) => assert!((r - 8.0).abs() < 1e-9, "(60 - 20) / 5 s, got {r}"),
            p => panic!("{p:?}"),
        }
        // Our own calls since that report count against it.
        match l.pace(t(5.0), 0.8, 11.0, 1.0, 0.0) {
            Pace::Rate(r) => assert!((r - 6.0).abs() < 1e-9, "(50 - 20) / 5 s, got {r}"),
            p => panic!("{p:?}"),
        }
        // Down to the reserve: nothing goes until the reset.
        assert_eq!(l.pace(t(5.0), 0.8, 41.0, 1.0, 0.0), Pace::Blocked(t(10.0)));
        // After the reset the report is stale and the even pace returns.
        assert_eq!(l.pace(t(10.0), 0.8, 41.0, 1.0, 0.0), Pace::Rate(8.0));
    }

    #[test]
    fn a_reset_beyond_the_window_is_cut_to_it() {
        let mut l = Limit::from_config(
            &LimitConfig::new(100.0, Duration::from_secs(10)),
            false,
            false,
        );
        // "Nothing left until next year" from a 10-s limit: blocked for one window at most.
        l.observe(t(1.0), &report(0.0, Some(3.0e7)), 1, 1.0);
        assert_eq!(l.pace(t(1.0), 0.8, 1.0, 1.0, 0.0), Pace::Blocked(t(11.0)));
        assert_eq!(l.pace(t(11.0), 0.8, 1.0, 1.0, 0.0), Pace::Rate(8.0));
    }

    #[test]
    fn a_late_response_does_not_overwrite_a_newer_report() {
        let mut l = Limit::from_config(
            &LimitConfig::new(100.0, Duration::from_secs(10)),
            false,
            false,
        );
        l.observe(t(1.0), &report(50.0, Some(9.0)), 7, 7.0);
        l.observe(t(1.1), &report(90.0, Some(8.9)), 3, 3.0);
        assert_eq!(l.estimated_remaining(t(1.1), 7.0), Some(50.0));
        // But a report of the next window replaces it.
        l.observe(t(1.2), &report(99.0, Some(19.0)), 4, 4.0);
        assert_eq!(l.estimated_remaining(t(1.2), 7.0), Some(96.0));
    }

    #[test]
    fn without_a_reset_time_the_reserve_is_probed_slowly() {
        let mut l = Limit::from_config(
            &LimitConfig::new(100.0, Duration::from_secs(10)),
            false,
            false,
        );
        // The even pace may run into half of the reserve (20 of 100)…
        l.observe(t(0.0), &report(11.0, None), 1, 1.0);
        assert_eq!(l.pace(t(0.0), 0.8, 1.0, 1.0, 0.0), Pace::Rate(8.0));
        // …below that it probes at 8 × 0.2 / 0.8 / 4 = 0.5/s.
        l.observe(t(0.0), &report(10.0, None), 2, 2.0);
        assert_eq!(l.pace(t(0.0), 0.8, 2.0, 1.0, 0.0), Pace::Blocked(t(2.0)));
    }

    #[test]
    fn matches_by_name_then_window_then_quota() {
        let mut cfg = LimitConfig::new(100.0, Duration::from_secs(10));
        let l = Limit::from_config(&cfg, false, false);
        let by_window = LimitSignal {
            quota: Some(110.0),
            window: Some(Duration::from_secs(10)),
            ..LimitSignal::default()
        };
        assert!(l.matches(&by_window));
        let by_quota = LimitSignal {
            quota: Some(100.0),
            ..LimitSignal::default()
        };
        assert!(l.matches(&by_quota));
        assert!(!l.matches(&LimitSignal {
            quota: Some(700.0),
            ..LimitSignal::default()
        }));
        cfg.name = Some("burst".into());
        let named = Limit::from_config(&cfg, false, false);
        assert!(!named.matches(&LimitSignal {
            name: Some("daily".into()),
            quota: Some(100.0),
            ..LimitSignal::default()
        }));
    }
}
