//! The governor: every budget, its two lanes of waiting calls, and one timer heap.
//!
//! A decision looks up one budget by key and touches a heap of armed budgets, so it costs the
//! same with 10 budgets or 100,000 (no scan). Waiting calls are identified by a token of the
//! caller's choosing; the governor never sleeps: callers ask [`Governor::next_wakeup`] and call
//! [`Governor::poll`] then.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::hash::Hash;
use std::sync::Arc;
use std::time::Duration;

use crate::backoff::Jitter;
use crate::breaker::BreakerRefusal;
use crate::budget::{Budget, BudgetConfig, Lane, Outcome, Permit, Reaction, Wait};
use crate::clock::Timestamp;
use crate::fair_queue::FairQueue;

/// A lane of one budget holds at most this many waiting calls; more are refused.
pub const MAX_QUEUED_PER_LANE: usize = 100_000;
/// One party (tenant) may hold at most this many of them, so that one cannot fill the lane.
pub const MAX_QUEUED_PER_PARTY: usize = 10_000;

/// Why a call was refused without being made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RejectReason {
    /// The budget cannot admit it within its max wait.
    WaitTooLong,
    /// The circuit breaker is open (or probing).
    BreakerOpen,
    /// Too many calls are already waiting.
    QueueFull,
    /// The budget's shared state (several nodes: Redis) cannot be reached.
    Unavailable,
    /// A long-window quota (an hour or more: daily, monthly) has nothing left above its
    /// reserve until its reset, beyond the max wait: not busy, spent; `retry_after` is the
    /// reset.
    QuotaExhausted,
    /// An operator paused the budget (an override) beyond the max wait; `retry_after` is
    /// the end of the pause.
    Paused,
}

/// A refusal, with when trying again makes sense.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rejection {
    pub reason: RejectReason,
    pub retry_after: Duration,
}

/// The answer to [`Governor::request`].
#[derive(Debug, PartialEq)]
pub enum Admission {
    /// Go now.
    Granted(Permit),
    /// Wait: a later [`Governor::poll`] or [`Governor::complete`] yields a [`Decision`].
    Queued,
    Rejected(Rejection),
}

/// What became of a queued call.
#[derive(Debug, PartialEq)]
pub enum Decision<W> {
    Granted {
        token: W,
        permit: Permit,
        waited: Duration,
    },
    Rejected {
        token: W,
        rejection: Rejection,
    },
}

#[derive(Debug)]
struct Waiter<W> {
    token: W,
    cost: f64,
    deadline: Timestamp,
    enqueued_at: Timestamp,
}

#[derive(Debug)]
struct Entry<K, W> {
    key: K,
    budget: Budget,
    realtime: FairQueue<Waiter<W>>,
    bulk: FairQueue<Waiter<W>>,
    /// The time of this budget's live heap entry, if any.
    armed: Option<Timestamp>,
    generation: u32,
}

impl<K, W> Entry<K, W> {
    fn lane(&mut self, lane: Lane) -> &mut FairQueue<Waiter<W>> {
        match lane {
            Lane::Realtime => &mut self.realtime,
            Lane::Bulk => &mut self.bulk,
        }
    }
}

/// Many budgets keyed by `K`, with waiting calls identified by `W`.
#[derive(Debug)]
pub struct Governor<K, W> {
    slots: Vec<Option<Entry<K, W>>>,
    free: Vec<u32>,
    generations: Vec<u32>,
    index: HashMap<K, u32>,
    timers: BinaryHeap<Reverse<(Timestamp, u32, u32)>>,
    jitter: Jitter,
}

impl<K: Hash + Eq + Clone, W> Governor<K, W> {
    /// `seed` seeds the jitter of backoff pauses, so that a simulation replays exactly.
    pub fn new(seed: u64) -> Self {
        Governor {
            slots: Vec::new(),
            free: Vec::new(),
            generations: Vec::new(),
            index: HashMap::new(),
            timers: BinaryHeap::new(),
            jitter: Jitter::new(seed),
        }
    }

    /// Number of budgets held.
    pub fn len(&self) -> usize {
        self.index.len()
    }

    pub fn is_empty(&self) -> bool {
        self.index.is_empty()
    }

    pub fn budget(&self, key: &K) -> Option<&Budget> {
        let slot = *self.index.get(key)?;
        self.slots[slot as usize].as_ref().map(|e| &e.budget)
    }

    /// Calls waiting in (realtime, bulk).
    pub fn queued(&self, key: &K) -> (usize, usize) {
        self.index
            .get(key)
            .and_then(|s| self.slots[*s as usize].as_ref())
            .map_or((0, 0), |e| (e.realtime.len(), e.bulk.len()))
    }

    /// Every budget with its key, for inspection.
    pub fn iter(&self) -> impl Iterator<Item = (&K, &Budget)> {
        self.slots.iter().flatten().map(|e| (&e.key, &e.budget))
    }

    fn slot_of(&mut self, key: &K, config: &Arc<BudgetConfig>) -> u32 {
        if let Some(&slot) = self.index.get(key) {
            self.entry(slot).budget.reconfigure(config);
            return slot;
        }
        let entry = |generation| Entry {
            key: key.clone(),
            budget: Budget::new(Arc::clone(config)),
            realtime: FairQueue::default(),
            bulk: FairQueue::default(),
            armed: None,
            generation,
        };
        let slot = match self.free.pop() {
            Some(slot) => {
                let generation = self.generations[slot as usize];
                self.slots[slot as usize] = Some(entry(generation));
                slot
            }
            None => {
                self.slots.push(Some(entry(0)));
                self.generations.push(0);
                (self.slots.len() - 1) as u32
            }
        };
        self.index.insert(key.clone(), slot);
        slot
    }

    fn entry(&mut self, slot: u32) -> &mut Entry<K, W> {
        self.slots[slot as usize]
            .as_mut()
            .expect("slot referenced by the index is occupied")
    }

    /// Asks to make a call of `cost` in `lane` on the budget `key` (created from `config` on
    /// first use), waiting at most `max_wait`.
    #[allow(clippy::too_many_arguments)]
    pub fn request(
        &mut self,
        now: Timestamp,
        key: &K,
        config: &Arc<BudgetConfig>,
        lane: Lane,
        cost: f64,
        max_wait: Duration,
        token: W,
    ) -> Admission {
        self.request_for(now, key, config, lane, cost, max_wait, 0, token)
    }

    /// As [`Governor::request`], for `party` (e.g. a hash of the tenant): waiting calls of a
    /// lane are served in turns by party, so one party's backlog does not hold back the
    /// others sharing the budget.
    #[allow(clippy::too_many_arguments)]
    pub fn request_for(
        &mut self,
        now: Timestamp,
        key: &K,
        config: &Arc<BudgetConfig>,
        lane: Lane,
        cost: f64,
        max_wait: Duration,
        party: u64,
        token: W,
    ) -> Admission {
        let slot = self.slot_of(key, config);
        let entry = self.entry(slot);
        if let Err(refusal) = entry.budget.check_breaker(now) {
            return Admission::Rejected(breaker_rejection(now, refusal));
        }
        // A real-time call waits only behind real-time calls; a bulk call behind every
        // real-time call. Within its lane, parties take turns.
        let ahead = match lane {
            Lane::Realtime => entry.realtime.ahead_of(party),
            Lane::Bulk => entry.realtime.len() + entry.bulk.ahead_of(party),
        };
        if ahead == 0 {
            match entry.budget.try_acquire(now, lane, cost) {
                Ok(mut permit) => {
                    permit.slot = Some(slot);
                    return Admission::Granted(permit);
                }
                Err(Wait::Breaker(refusal)) => {
                    return Admission::Rejected(breaker_rejection(now, refusal))
                }
                Err(Wait::Until(_) | Wait::Concurrency) => {}
            }
        }
        let per_call = entry.budget.sustained_interval(now, lane, cost);
        let queue = entry.lane(lane);
        if queue.len() >= MAX_QUEUED_PER_LANE || queue.len_of(party) >= MAX_QUEUED_PER_PARTY {
            return Admission::Rejected(Rejection {
                reason: RejectReason::QueueFull,
                retry_after: per_call.unwrap_or(Duration::from_secs(1)),
            });
        }
        // Estimate the wait: the first free time plus one interval per call ahead.
        let first = entry.budget.earliest(now, lane, cost).saturating_since(now);
        let ahead = u32::try_from(ahead).unwrap_or(u32::MAX);
        let estimate =
            first.saturating_add(per_call.unwrap_or(Duration::ZERO).saturating_mul(ahead));
        // No wait at all (a caller asking "now or not"): never queued, so it holds nothing
        // while a timer or a finishing call decides.
        if estimate > max_wait || max_wait.is_zero() {
            return Admission::Rejected(too_long(
                &entry.budget,
                now,
                lane,
                cost,
                max_wait,
                estimate,
            ));
        }
        entry.lane(lane).push(
            party,
            Waiter {
                token,
                cost,
                deadline: now + max_wait,
                enqueued_at: now,
            },
        );
        self.rearm(slot, now);
        Admission::Queued
    }

    /// Gives a held budget a new config now (an operator's override set or cleared), and
    /// drives its queue under it: calls held by a pause that was lifted go, and the timer
    /// follows the new pace. A budget not held is made from the new config on its next call.
    pub fn reconfigure(
        &mut self,
        now: Timestamp,
        key: &K,
        config: &Arc<BudgetConfig>,
        out: &mut Vec<Decision<W>>,
    ) {
        let Some(&slot) = self.index.get(key) else {
            return;
        };
        self.entry(slot).budget.reconfigure(config);
        self.drive(slot, now, out);
    }

    /// When the next [`Governor::poll`] may have something to do.
    pub fn next_wakeup(&self) -> Option<Timestamp> {
        self.timers.peek().map(|Reverse((t, _, _))| *t)
    }

    /// Grants and expires waiting calls whose time has come.
    pub fn poll(&mut self, now: Timestamp, out: &mut Vec<Decision<W>>) {
        while let Some(Reverse((at, slot, generation))) = self.timers.peek().copied() {
            if at > now {
                break;
            }
            self.timers.pop();
            let live = self.slots[slot as usize]
                .as_ref()
                .is_some_and(|e| e.generation == generation && e.armed == Some(at));
            if live {
                self.entry(slot).armed = None;
                self.drive(slot, now, out);
            }
        }
    }

    /// Returns a permit with the outcome of its call; waiting calls it unblocks are granted
    /// into `out`.
    pub fn complete(
        &mut self,
        now: Timestamp,
        key: &K,
        permit: Permit,
        outcome: Outcome<'_>,
        out: &mut Vec<Decision<W>>,
    ) -> Reaction {
        // The permit says where its budget is (budgets with calls in flight are never
        // evicted); the key check makes a permit handed to the wrong governor harmless.
        let held = permit.slot.filter(|&s| {
            self.slots
                .get(s as usize)
                .and_then(Option::as_ref)
                .is_some_and(|e| e.key == *key)
        });
        let Some(slot) = held.or_else(|| self.index.get(key).copied()) else {
            // A caller's bug; the permit is simply dropped.
            return Reaction::default();
        };
        let entry = self.slots[slot as usize]
            .as_mut()
            .expect("slot referenced by the index is occupied");
        let reaction = entry
            .budget
            .complete(now, permit, outcome, &mut self.jitter);
        self.drive(slot, now, out);
        reaction
    }

    /// Withdraws a waiting call (its caller gave up). Returns whether it was found.
    pub fn cancel(&mut self, key: &K, token: &W) -> bool
    where
        W: PartialEq,
    {
        let Some(&slot) = self.index.get(key) else {
            return false;
        };
        let entry = self.entry(slot);
        [Lane::Realtime, Lane::Bulk]
            .into_iter()
            .any(|lane| entry.lane(lane).remove_first(|w| &w.token == token))
    }

    /// Forgets budgets idle since `now - idle_for` with nothing waiting. Returns how many.
    /// This scans every budget: call it from a background sweep, not per decision.
    pub fn evict_idle(&mut self, now: Timestamp, idle_for: Duration) -> usize {
        let mut evicted = 0;
        for slot in 0..self.slots.len() {
            let idle = self.slots[slot].as_ref().is_some_and(|e| {
                e.realtime.is_empty()
                    && e.bulk.is_empty()
                    && e.budget.is_idle(now)
                    && e.budget.last_active() + idle_for <= now
            });
            if idle {
                if let Some(e) = self.slots[slot].take() {
                    self.index.remove(&e.key);
                }
                self.generations[slot] = self.generations[slot].wrapping_add(1);
                self.free.push(slot as u32);
                evicted += 1;
            }
        }
        evicted
    }

    /// Grants every waiting call the budget allows now, head of the real-time lane first;
    /// expires those whose max wait cannot be met; arms the timer for the rest.
    fn drive(&mut self, slot: u32, now: Timestamp, out: &mut Vec<Decision<W>>) {
        let entry = self.entry(slot);
        loop {
            let lane = if !entry.realtime.is_empty() {
                Lane::Realtime
            } else if !entry.bulk.is_empty() {
                Lane::Bulk
            } else {
                break;
            };
            let (cost, deadline) = {
                let head = entry.lane(lane).head().expect("the lane is not empty");
                (head.cost, head.deadline)
            };
            let refusal = match entry.budget.try_acquire(now, lane, cost) {
                Ok(mut permit) => {
                    permit.slot = Some(slot);
                    let w = entry.lane(lane).pop().expect("head exists");
                    out.push(Decision::Granted {
                        token: w.token,
                        permit,
                        waited: now.saturating_since(w.enqueued_at),
                    });
                    continue;
                }
                Err(Wait::Until(at)) if at <= deadline => break,
                Err(Wait::Concurrency) if now < deadline => break,
                Err(Wait::Breaker(BreakerRefusal::Probing)) if now < deadline => break,
                Err(Wait::Until(at)) => {
                    let max_wait = deadline.saturating_since(now);
                    too_long(
                        &entry.budget,
                        now,
                        lane,
                        cost,
                        max_wait,
                        at.saturating_since(now),
                    )
                }
                Err(Wait::Concurrency) => Rejection {
                    reason: RejectReason::WaitTooLong,
                    retry_after: entry
                        .budget
                        .interval(now, lane, cost)
                        .unwrap_or(Duration::from_secs(1)),
                },
                Err(Wait::Breaker(refusal)) => breaker_rejection(now, refusal),
            };
            let w = entry.lane(lane).pop().expect("head exists");
            out.push(Decision::Rejected {
                token: w.token,
                rejection: refusal,
            });
        }
        self.rearm(slot, now);
    }

    /// Arms the budget's timer for its head waiter: when the pace allows it, or at its deadline
    /// when it waits for a concurrency slot or a probe (a finishing call drives it sooner).
    fn rearm(&mut self, slot: u32, now: Timestamp) {
        let entry = self.entry(slot);
        let lane = if !entry.realtime.is_empty() {
            Lane::Realtime
        } else if !entry.bulk.is_empty() {
            Lane::Bulk
        } else {
            return;
        };
        let (cost, deadline) = {
            let head = entry.lane(lane).head().expect("the lane is not empty");
            (head.cost, head.deadline)
        };
        let at = entry.budget.earliest(now, lane, cost);
        // Due now yet not granted: it waits for a slot or a probe, which `complete` drives.
        let at = if at <= now {
            deadline
        } else {
            at.min(deadline)
        };
        if entry.armed.is_none_or(|armed| at < armed) {
            entry.armed = Some(at);
            let generation = entry.generation;
            self.timers.push(Reverse((at, slot, generation)));
        }
    }
}

fn breaker_rejection(now: Timestamp, refusal: BreakerRefusal) -> Rejection {
    Rejection {
        reason: RejectReason::BreakerOpen,
        retry_after: match refusal {
            BreakerRefusal::OpenUntil(until) => until.saturating_since(now),
            BreakerRefusal::Probing => Duration::from_secs(1),
        },
    }
}

/// A call that cannot go within `max_wait`: a spent long-window quota says so and when it
/// resets; anything else is a wait too long, retried after `estimate`.
fn too_long(
    budget: &Budget,
    now: Timestamp,
    lane: Lane,
    cost: f64,
    max_wait: Duration,
    estimate: Duration,
) -> Rejection {
    let held = budget.held_until().saturating_since(now);
    if held > max_wait {
        return Rejection {
            reason: RejectReason::Paused,
            retry_after: held,
        };
    }
    match budget.exhausted_until(now, lane, cost) {
        Some(reset) if reset.saturating_since(now) > max_wait => Rejection {
            reason: RejectReason::QuotaExhausted,
            retry_after: reset.saturating_since(now),
        },
        _ => Rejection {
            reason: RejectReason::WaitTooLong,
            retry_after: estimate,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::limit::LimitConfig;

    fn t(secs: f64) -> Timestamp {
        Timestamp::from_secs_f64(secs)
    }

    fn config(quota: f64, window_s: u64) -> Arc<BudgetConfig> {
        Arc::new(BudgetConfig {
            limits: vec![LimitConfig::new(quota, Duration::from_secs(window_s))],
            ..BudgetConfig::default()
        })
    }

    const LONG: Duration = Duration::from_secs(3600);

    fn granted(out: &[Decision<u32>]) -> Vec<u32> {
        out.iter()
            .filter_map(|d| match d {
                Decision::Granted { token, .. } => Some(*token),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn queued_calls_are_granted_at_the_pace() {
        let mut g: Governor<&str, u32> = Governor::new(1);
        let cfg = config(100.0, 10); // 8/s
        let mut permits = vec![];
        match g.request(t(0.0), &"a", &cfg, Lane::Bulk, 1.0, LONG, 0) {
            Admission::Granted(p) => permits.push(p),
            other => panic!("{other:?}"),
        }
        for token in 1..=3 {
            assert_eq!(
                g.request(t(0.0), &"a", &cfg, Lane::Bulk, 1.0, LONG, token),
                Admission::Queued
            );
        }
        assert_eq!(g.next_wakeup(), Some(t(0.125)));
        let mut out = vec![];
        g.poll(t(0.1), &mut out);
        assert!(out.is_empty());
        g.poll(t(0.125), &mut out);
        assert_eq!(granted(&out), vec![1]);
        assert_eq!(g.next_wakeup(), Some(t(0.25)));
    }

    #[test]
    fn tenants_of_a_shared_budget_take_turns() {
        // 100 per 10 s at headroom 0.8: one call every 125 ms.
        let mut g: Governor<&str, u32> = Governor::new(1);
        let cfg = config(100.0, 10);
        let (a, b) = (1, 2);
        let _first = g.request_for(t(0.0), &"shared", &cfg, Lane::Bulk, 1.0, LONG, a, 0);
        for token in 1..=200 {
            assert_eq!(
                g.request_for(t(0.0), &"shared", &cfg, Lane::Bulk, 1.0, LONG, a, token),
                Admission::Queued
            );
        }
        // b's call would wait 25 s behind a's backlog in arrival order; in turns it is
        // admitted within a 1 s max wait and goes second.
        assert_eq!(
            g.request_for(
                t(0.01),
                &"shared",
                &cfg,
                Lane::Bulk,
                1.0,
                Duration::from_secs(1),
                b,
                1000
            ),
            Admission::Queued
        );
        let mut out = vec![];
        let mut now = 0.0;
        while out.len() < 3 {
            now += 0.125;
            g.poll(t(now), &mut out);
        }
        assert_eq!(granted(&out), vec![1, 1000, 2]);
        // a's own backlog still counts against a's max wait.
        assert!(matches!(
            g.request_for(
                t(now),
                &"shared",
                &cfg,
                Lane::Bulk,
                1.0,
                Duration::from_secs(1),
                a,
                5000
            ),
            Admission::Rejected(Rejection {
                reason: RejectReason::WaitTooLong,
                ..
            })
        ));
    }

    #[test]
    fn realtime_never_waits_behind_queued_bulk() {
        let mut g: Governor<&str, u32> = Governor::new(1);
        let cfg = config(100.0, 10);
        let _first = g.request(t(0.0), &"a", &cfg, Lane::Bulk, 1.0, LONG, 0);
        for token in 1..=50 {
            g.request(t(0.0), &"a", &cfg, Lane::Bulk, 1.0, LONG, token);
        }
        // Three real-time calls go at once (they may run three intervals ahead of the pace)…
        for token in [96, 97, 98] {
            assert!(matches!(
                g.request(t(0.01), &"a", &cfg, Lane::Realtime, 1.0, LONG, token),
                Admission::Granted(_)
            ));
        }
        // …and the next one at the next slot, ahead of all fifty bulk calls.
        assert_eq!(
            g.request(t(0.02), &"a", &cfg, Lane::Realtime, 1.0, LONG, 99),
            Admission::Queued
        );
        let mut out = vec![];
        let wake = g.next_wakeup().unwrap();
        assert!(
            wake <= t(0.145),
            "one pacing interval at most, got {wake:?}"
        );
        g.poll(wake, &mut out);
        assert_eq!(granted(&out), vec![99]);
    }

    #[test]
    fn a_call_that_cannot_be_admitted_within_its_max_wait_is_refused_at_once() {
        let mut g: Governor<&str, u32> = Governor::new(1);
        let cfg = config(100.0, 10);
        let _first = g.request(t(0.0), &"a", &cfg, Lane::Bulk, 1.0, LONG, 0);
        for token in 1..=10 {
            g.request(t(0.0), &"a", &cfg, Lane::Bulk, 1.0, LONG, token);
        }
        // Ten ahead: the first at 1/8 s, then 1/8 s each.
        match g.request(
            t(0.0),
            &"a",
            &cfg,
            Lane::Bulk,
            1.0,
            Duration::from_secs(1),
            77,
        ) {
            Admission::Rejected(r) => {
                assert_eq!(r.reason, RejectReason::WaitTooLong);
                assert!(r.retry_after >= Duration::from_secs(1));
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(g.queued(&"a"), (0, 10));
    }

    #[test]
    fn budgets_are_independent() {
        let mut g: Governor<&str, u32> = Governor::new(1);
        let cfg = config(10.0, 10); // 0.8/s
        assert!(matches!(
            g.request(t(0.0), &"a", &cfg, Lane::Bulk, 1.0, LONG, 0),
            Admission::Granted(_)
        ));
        g.request(t(0.0), &"a", &cfg, Lane::Bulk, 1.0, LONG, 1);
        assert!(matches!(
            g.request(t(0.0), &"b", &cfg, Lane::Bulk, 1.0, LONG, 2),
            Admission::Granted(_)
        ));
        assert_eq!(g.len(), 2);
    }

    #[test]
    fn a_completion_frees_a_slot_for_the_next_waiter() {
        let mut g: Governor<&str, u32> = Governor::new(1);
        let cfg = Arc::new(BudgetConfig {
            max_concurrency: 1,
            ..BudgetConfig::default()
        });
        let Admission::Granted(p) = g.request(t(0.0), &"a", &cfg, Lane::Bulk, 1.0, LONG, 0) else {
            panic!()
        };
        assert_eq!(
            g.request(t(0.0), &"a", &cfg, Lane::Bulk, 1.0, LONG, 1),
            Admission::Queued
        );
        let mut out = vec![];
        g.complete(t(0.5), &"a", p, Outcome::Abandoned, &mut out);
        assert_eq!(granted(&out), vec![1]);
    }

    #[test]
    fn waiters_past_their_deadline_are_rejected() {
        let mut g: Governor<&str, u32> = Governor::new(1);
        let cfg = Arc::new(BudgetConfig {
            max_concurrency: 1,
            ..BudgetConfig::default()
        });
        let Admission::Granted(_p) = g.request(t(0.0), &"a", &cfg, Lane::Bulk, 1.0, LONG, 0) else {
            panic!()
        };
        g.request(
            t(0.0),
            &"a",
            &cfg,
            Lane::Bulk,
            1.0,
            Duration::from_secs(2),
            1,
        );
        assert_eq!(g.next_wakeup(), Some(t(2.0)));
        let mut out = vec![];
        g.poll(t(2.0), &mut out);
        assert!(matches!(
            out[0],
            Decision::Rejected {
                token: 1,
                rejection: Rejection {
                    reason: RejectReason::WaitTooLong,
                    ..
                }
            }
        ));
    }

    #[test]
    fn idle_budgets_are_evicted_and_rebuilt() {
        let mut g: Governor<u32, u32> = Governor::new(1);
        let cfg = config(100.0, 10);
        let mut out = vec![];
        let mut in_flight = vec![];
        for key in 0..100 {
            let Admission::Granted(p) = g.request(t(0.0), &key, &cfg, Lane::Bulk, 1.0, LONG, 0)
            else {
                panic!()
            };
            if key % 2 == 0 {
                g.complete(t(0.0), &key, p, Outcome::Abandoned, &mut out);
            } else {
                in_flight.push(p);
            }
        }
        assert_eq!(g.evict_idle(t(30.0), Duration::from_secs(60)), 0);
        // Budgets with a call in flight stay.
        assert_eq!(g.evict_idle(t(60.0), Duration::from_secs(60)), 50);
        assert_eq!(g.len(), 50);
        assert!(matches!(
            g.request(t(61.0), &0, &cfg, Lane::Bulk, 1.0, LONG, 0),
            Admission::Granted(_)
        ));
        assert_eq!(g.len(), 51);
    }

    #[test]
    fn an_open_breaker_refuses_without_queueing() {
        let mut g: Governor<&str, u32> = Governor::new(1);
        let cfg = Arc::new(BudgetConfig::default());
        let failed = crate::signals::Signals::default();
        let mut out = vec![];
        for _ in 0..5 {
            let Admission::Granted(p) = g.request(t(0.0), &"a", &cfg, Lane::Realtime, 1.0, LONG, 0)
            else {
                panic!()
            };
            g.complete(
                t(0.0),
                &"a",
                p,
                Outcome::Response {
                    status: 503,
                    signals: &failed,
                },
                &mut out,
            );
        }
        match g.request(t(1.0), &"a", &cfg, Lane::Realtime, 1.0, LONG, 1) {
            Admission::Rejected(r) => {
                assert_eq!(r.reason, RejectReason::BreakerOpen);
                assert_eq!(r.retry_after, Duration::from_secs(29));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_spent_long_quota_is_told_apart_from_a_long_wait() {
        use crate::limit::LimitConfig;
        use crate::signals::{LimitSignal, Signals};
        let cfg = Arc::new(BudgetConfig {
            limits: vec![
                LimitConfig::new(10.0, Duration::from_secs(10)),
                LimitConfig::new(1000.0, Duration::from_secs(86_400)),
            ],
            ..BudgetConfig::default()
        });
        let mut g: Governor<&str, u32> = Governor::new(1);
        let now = Timestamp::ZERO;
        let Admission::Granted(p) = g.request(now, &"a", &cfg, Lane::Bulk, 1.0, Duration::ZERO, 1)
        else {
            panic!("the first call goes");
        };
        // The day's quota: 150 left, below the reserve of 200, for five more hours.
        let signals = Signals {
            limits: vec![LimitSignal {
                quota: Some(1000.0),
                remaining: Some(150.0),
                window: Some(Duration::from_secs(86_400)),
                reset_in: Some(Duration::from_millis(18_000_500)),
                ..LimitSignal::default()
            }],
            ..Signals::default()
        };
        let ok = Outcome::Response {
            status: 200,
            signals: &signals,
        };
        let mut out = Vec::new();
        g.complete(now, &"a", p, ok, &mut out);
        match g.request(now, &"a", &cfg, Lane::Bulk, 1.0, Duration::from_secs(30), 2) {
            Admission::Rejected(r) => {
                assert_eq!(r.reason, RejectReason::QuotaExhausted);
                assert_eq!(r.retry_after, Duration::from_millis(18_000_500));
            }
            other => panic!("{other:?}"),
        }
        // A budget only busy at its 10-s pace is a wait too long, not a spent quota.
        let mut g: Governor<&str, u32> = Governor::new(1);
        let mut waiting = Vec::new();
        for id in 0..20 {
            waiting.push(g.request(now, &"b", &cfg, Lane::Bulk, 1.0, Duration::from_secs(5), id));
        }
        assert!(waiting.iter().any(|a| matches!(a,
            Admission::Rejected(r) if r.reason == RejectReason::WaitTooLong)));
    }

    /// A budget's config that changes between calls (an operator's override set or
    /// cleared) is taken by the next call; a pause beyond the wait is told as such.
    #[test]
    fn an_overridden_config_is_taken_by_the_next_call() {
        let cfg = config(100.0, 10);
        let held = Arc::new(BudgetConfig {
            held_until: Some(t(120.0)),
            ..(*cfg).clone()
        });
        let mut g: Governor<&str, u32> = Governor::new(1);
        assert!(matches!(
            g.request(t(0.0), &"a", &cfg, Lane::Realtime, 1.0, Duration::ZERO, 1),
            Admission::Granted(_)
        ));
        match g.request(
            t(1.0),
            &"a",
            &held,
            Lane::Realtime,
            1.0,
            Duration::from_secs(30),
            2,
        ) {
            Admission::Rejected(r) => {
                assert_eq!(r.reason, RejectReason::Paused);
                assert_eq!(r.retry_after, Duration::from_secs(119));
            }
            other => panic!("{other:?}"),
        }
        // Within the wait, a held call queues for the end of the pause.
        assert!(matches!(
            g.request(
                t(100.0),
                &"a",
                &held,
                Lane::Realtime,
                1.0,
                Duration::from_secs(30),
                3
            ),
            Admission::Queued
        ));
        assert!(matches!(
            g.request(t(1.0), &"b", &cfg, Lane::Realtime, 1.0, Duration::ZERO, 4),
            Admission::Granted(_)
        ));
        // The pause lifted: the call queued behind it goes at once, not at the old end.
        let mut out = Vec::new();
        g.reconfigure(t(101.0), &"a", &cfg, &mut out);
        assert!(
            matches!(out.as_slice(), [Decision::Granted { token: 3, .. }]),
            "{out:?}"
        );
    }

    /// The Quickstart flood: 200 bulk calls at once that may wait a minute, against 100 per
    /// 10 s beside 250,000 per day. At the 10-s limit's 8/s they fit in 25 s, and none is
    /// refused. (The wait used to be estimated at the daily limit's even pace, 2.3/s: 86 s
    /// for 200 calls, and 161 of 200 were refused through the proxy.)
    #[test]
    fn a_flood_that_fits_the_short_limit_is_not_refused_for_the_long_one() {
        use crate::limit::LimitConfig;
        let cfg = Arc::new(BudgetConfig {
            limits: vec![
                LimitConfig::new(100.0, Duration::from_secs(10)),
                LimitConfig::new(250_000.0, Duration::from_secs(86_400)),
            ],
            ..BudgetConfig::default()
        });
        let mut g: Governor<&str, u32> = Governor::new(1);
        let mut refused = 0;
        let mut permits = Vec::new();
        for id in 0..200 {
            match g.request(
                t(0.0),
                &"a",
                &cfg,
                Lane::Bulk,
                1.0,
                Duration::from_secs(60),
                id,
            ) {
                Admission::Rejected(_) => refused += 1,
                Admission::Granted(p) => permits.push(p),
                Admission::Queued => {}
            }
        }
        assert_eq!(refused, 0);
        drop(permits);
    }
}
