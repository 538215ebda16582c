//! The governor as the server uses it: the core [`Governor`] behind a mutex, a driver task
//! that wakes when the next queued call is due, and leases that return their permit with the
//! call's outcome (or as abandoned when dropped).

pub mod redis;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use headroom_core::budget::{BudgetSnapshot, Outcome, Reaction};
use headroom_core::{
    Admission, BudgetConfig, Clock, Decision, Governor, Lane, Permit, Rejection, Timestamp,
};
use serde::Serialize;
use tokio::sync::{oneshot, Notify};

/// A budget: an upstream (by index) and a budget key (tenant, credential hash or `shared`).
pub type BudgetKey = (u32, Arc<str>);

/// Whose turn a waiting call takes in its budget's queue: its tenant. In a shared budget,
/// tenants take turns, so one tenant's backlog does not hold back the others.
pub fn party_of(tenant: Option<&str>) -> u64 {
    use std::hash::{Hash, Hasher};
    let Some(tenant) = tenant else { return 0 };
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    tenant.hash(&mut hasher);
    hasher.finish()
}

/// Idle budgets are forgotten after this long (they are rebuilt from config on next use).
const IDLE_EVICTION: Duration = Duration::from_secs(15 * 60);
const EVICTION_SWEEP: Duration = Duration::from_secs(60);

/// A queued call's end of the channel. A grant travels as a [`Lease`], so that one nobody
/// receives (the caller went away just then) is still returned to its budget.
type Waiter = oneshot::Sender<Result<Lease, Rejection>>;

struct Inner {
    governor: Governor<BudgetKey, u64>,
    /// Queued calls: where to send the decision, and their budget (to return a grant nobody
    /// takes).
    waiters: HashMap<u64, (Waiter, BudgetKey)>,
    next_id: u64,
    decisions: Vec<Decision<u64>>,
    /// When the driver wakes next by itself (`None`: it is awake). A change to the governor
    /// wakes it only when it brings the next timer before this: on the common path a call's
    /// completion wakes nobody.
    driver_until: Option<Timestamp>,
}

impl Inner {
    /// Whether the driver must wake to see a timer sooner than it would by itself.
    fn driver_late(&self) -> bool {
        match (self.governor.next_wakeup(), self.driver_until) {
            (Some(next), Some(until)) => next < until,
            _ => false,
        }
    }
}

impl Inner {
    /// Hands decisions to their waiters. A grant whose waiter is gone is returned at once
    /// (here, under the lock, not by the lease's drop, which would take the lock again).
    fn deliver(&mut self, governor: &Arc<SharedGovernor>, now: Timestamp) {
        while let Some(decision) = self.decisions.pop() {
            let (token, permit) = match decision {
                Decision::Granted { token, permit, .. } => (token, permit),
                Decision::Rejected { token, rejection } => {
                    if let Some((waiter, _)) = self.waiters.remove(&token) {
                        let _ = waiter.send(Err(rejection));
                    }
                    continue;
                }
            };
            // A waiter withdraws from the governor and from here under this same lock, so
            // every grant finds its waiter.
            let Some((waiter, key)) = self.waiters.remove(&token) else {
                debug_assert!(false, "a grant without its waiter");
                continue;
            };
            let lease = Lease {
                governor: Arc::clone(governor),
                key,
                permit: Some(permit),
                waited: Duration::ZERO,
                remote: None,
                route: None,
            };
            if let Err(Ok(mut lease)) = waiter.send(Ok(lease)) {
                if let Some(permit) = lease.permit.take() {
                    let mut more = Vec::new();
                    self.governor
                        .complete(now, &lease.key, permit, Outcome::Abandoned, &mut more);
                    self.decisions.extend(more);
                }
            }
        }
    }
}

/// The governor shared by every request of the server.
pub struct SharedGovernor {
    inner: Mutex<Inner>,
    wake: Notify,
    /// Pacing time: tokio's (pausable) monotonic clock.
    clock: crate::clock::MonotonicClock,
    /// The budgets' shared half when several nodes govern together (`governor = "redis://…"`).
    remote: Option<Arc<redis::RedisGovernor>>,
    /// With `remote`: each upstream's config as the local half uses it (by the address of
    /// the upstream's config), without its concurrency cap, which Redis keeps for all
    /// nodes. A local cap would let bulk calls waiting for the shared pace hold every local
    /// slot, and real-time calls would queue behind them. The config itself is held beside
    /// its local half, so that its address cannot be reused by another while it is here
    /// (overrides make configs that come and go; a few per change).
    local_configs: Mutex<HashMap<usize, ConfigAndLocal>>,
}

/// A budget config, and the same without its concurrency cap (see `local_configs`).
type ConfigAndLocal = (Arc<BudgetConfig>, Arc<BudgetConfig>);

/// A call's leave to go: return it with [`Lease::finish`]; dropping it returns it as
/// abandoned.
pub struct Lease {
    governor: Arc<SharedGovernor>,
    key: BudgetKey,
    permit: Option<Permit>,
    /// How long the call waited for its leave.
    pub waited: Duration,
    /// The call's leave from the shared budget (Redis governor).
    remote: Option<redis::RemoteLease>,
    /// The leave of the endpoint route's budget the call also spends, returned with this one.
    route: Option<Box<Lease>>,
}

impl Lease {
    /// Returns the lease of a call that was never sent: its spend is given back.
    pub fn unsend(mut self) {
        if let Some(permit) = self.permit.take() {
            self.governor.complete(&self.key, permit, Outcome::Unsent);
        }
        if let Some(remote) = self.remote.take() {
            self.governor.release_remote(&self.key, remote, false, None);
        }
    }

    pub fn finish(mut self, outcome: Outcome<'_>) -> Reaction {
        if let Some(route) = self.route.take() {
            // The route learns whether the call was throttled and for how long, not the
            // upstream's limits the answer describes (those are the upstream budget's).
            let _ = match outcome {
                Outcome::Response { status, signals } => {
                    let own = headroom_core::Signals {
                        limits: Vec::new(),
                        ..signals.clone()
                    };
                    route.finish(Outcome::Response {
                        status,
                        signals: &own,
                    })
                }
                other => route.finish(other),
            };
        }
        let learned = matches!(outcome, Outcome::Response { signals, .. }
            if signals.throttled || !signals.limits.is_empty());
        let reaction = match self.permit.take() {
            Some(permit) => self.governor.complete(&self.key, permit, outcome),
            None => Reaction::default(),
        };
        if let Some(remote) = self.remote.take() {
            self.governor
                .release_remote(&self.key, remote, learned, reaction.paused_for);
        }
        reaction
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        if let Some(permit) = self.permit.take() {
            self.governor
                .complete(&self.key, permit, Outcome::Abandoned);
        }
        if let Some(remote) = self.remote.take() {
            self.governor.release_remote(&self.key, remote, false, None);
        }
    }
}

/// Withdraws a queued waiter if its request goes away before a decision.
struct QueuedGuard<'a> {
    governor: &'a SharedGovernor,
    key: BudgetKey,
    id: u64,
    armed: bool,
}

impl Drop for QueuedGuard<'_> {
    fn drop(&mut self) {
        if self.armed {
            let mut inner = self.governor.lock();
            inner.governor.cancel(&self.key, &self.id);
            inner.waiters.remove(&self.id);
        }
    }
}

/// One budget as `/v1/budgets` shows it.
#[derive(Debug, Serialize)]
pub struct BudgetView {
    pub upstream_index: u32,
    pub key: String,
    #[serde(flatten)]
    pub budget: BudgetSnapshot,
    pub queued_realtime: usize,
    pub queued_bulk: usize,
}

impl SharedGovernor {
    pub fn new(seed: u64) -> Arc<Self> {
        Self::with_remote(seed, None)
    }

    /// A governor whose budgets are also shared, through `remote`, with other nodes.
    pub fn with_remote(seed: u64, remote: Option<Arc<redis::RedisGovernor>>) -> Arc<Self> {
        Arc::new(SharedGovernor {
            remote,
            local_configs: Mutex::new(HashMap::new()),
            inner: Mutex::new(Inner {
                governor: Governor::new(seed),
                waiters: HashMap::new(),
                next_id: 0,
                decisions: Vec::new(),
                driver_until: None,
            }),
            wake: Notify::new(),
            clock: crate::clock::MonotonicClock::new(),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock cannot leave the governor half-updated in a way that
        // matters more than stopping every request, so take the data as it is.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn now(&self) -> Timestamp {
        self.clock.now()
    }

    /// Ready (`/readyz`): in memory always; with Redis, when it answers a PING.
    pub async fn check_ready(&self) -> Result<(), String> {
        match &self.remote {
            None => Ok(()),
            Some(remote) => remote.ping().await.map_err(|e| e.to_string()),
        }
    }

    /// Leave for a call that spends two budgets (an endpoint route's and its upstream's), taken
    /// in one decision: the call waits in the route's queue (so a burst on one endpoint does
    /// not hold up the upstream's other calls); once the route lets it go, the upstream must
    /// let it go at that moment too, or the route's leave is given back unspent and the call
    /// waits for the route again after the upstream's hint. So no call holds one budget while
    /// it waits for the other, and calls the route let through never pile up behind the
    /// upstream. At most `max_wait` in all.
    #[allow(clippy::too_many_arguments)]
    pub async fn acquire_both(
        self: &Arc<Self>,
        (route_key, route_config): (&BudgetKey, &Arc<BudgetConfig>),
        key: &BudgetKey,
        // Read at each try: an operator's override may change (a pause lifted) meanwhile.
        config: &(dyn Fn() -> Arc<BudgetConfig> + Send + Sync),
        lane: Lane,
        cost: f64,
        max_wait: Duration,
        party: u64,
    ) -> Result<Lease, Rejection> {
        use headroom_core::RejectReason;
        let start = tokio::time::Instant::now();
        loop {
            let left = max_wait.saturating_sub(start.elapsed());
            let route = self
                .acquire(route_key.clone(), route_config, lane, cost, left, party)
                .await?;
            match self
                .acquire(key.clone(), &config(), lane, cost, Duration::ZERO, party)
                .await
            {
                Ok(mut lease) => {
                    lease.waited = start.elapsed();
                    lease.route = Some(Box::new(route));
                    return Ok(lease);
                }
                Err(rejection) => {
                    route.unsend();
                    let left = max_wait.saturating_sub(start.elapsed());
                    let wait = match rejection.reason {
                        // An open breaker or an unreachable Redis is the caller's answer now.
                        RejectReason::BreakerOpen | RejectReason::Unavailable => {
                            return Err(rejection)
                        }
                        // A pause or a spent quota says when it ends: worth waiting only if
                        // that is within the wait.
                        RejectReason::Paused | RejectReason::QuotaExhausted => {
                            if rejection.retry_after > left {
                                return Err(rejection);
                            }
                            rejection.retry_after
                        }
                        // No room now (pace or a connection cap, whose slot frees when a call
                        // ends): ask again soon, until the wait runs out.
                        RejectReason::WaitTooLong | RejectReason::QueueFull => {
                            rejection.retry_after.min(Duration::from_millis(100))
                        }
                    };
                    if left.is_zero() {
                        return Err(rejection);
                    }
                    tokio::time::sleep(wait.max(Duration::from_millis(25)).min(left)).await;
                }
            }
        }
    }

    /// Waits for leave to make a call, at most `max_wait`: from this node's budget, then
    /// (several nodes) from the shared one.
    #[allow(clippy::too_many_arguments)]
    pub async fn acquire(
        self: &Arc<Self>,
        key: BudgetKey,
        config: &Arc<BudgetConfig>,
        lane: Lane,
        cost: f64,
        max_wait: Duration,
        party: u64,
    ) -> Result<Lease, Rejection> {
        let Some(remote) = &self.remote else {
            return self
                .acquire_local(key, config, lane, cost, max_wait, party)
                .await;
        };
        let start = tokio::time::Instant::now();
        let local = {
            let mut configs = self.local_configs.lock().unwrap_or_else(|e| e.into_inner());
            let (_, local) = configs
                .entry(Arc::as_ptr(config) as usize)
                .or_insert_with(|| {
                    let local = Arc::new(BudgetConfig {
                        max_concurrency: u32::MAX,
                        ..(**config).clone()
                    });
                    (Arc::clone(config), local)
                });
            Arc::clone(local)
        };
        let mut lease = self
            .acquire_local(key, &local, lane, cost, max_wait, party)
            .await?;
        // The pace this node computes (config, headers it saw, slow-down after throttling).
        let spacing = {
            let now = self.now();
            let inner = self.lock();
            inner
                .governor
                .budget(&lease.key)
                .and_then(|b| b.interval(now, Lane::Realtime, cost))
        };
        let granted = remote
            .acquire(
                lease.key.0,
                &lease.key.1,
                lane,
                cost,
                spacing,
                config.realtime_reserve,
                config.max_concurrency,
                max_wait.saturating_sub(start.elapsed()),
            )
            .await;
        // Refused by the shared budget: the call was never sent, so this node's budget gets
        // its spend back.
        let granted = match granted {
            Ok(granted) => granted,
            Err(rejection) => {
                lease.unsend();
                return Err(rejection);
            }
        };
        lease.remote = Some(granted);
        lease.waited = start.elapsed();
        Ok(lease)
    }

    /// Returns a shared lease in the background, with the pace this node now computes
    /// when its call taught something (`learned`) and the pause it caused.
    fn release_remote(
        &self,
        key: &BudgetKey,
        lease: redis::RemoteLease,
        learned: bool,
        pause: Option<Duration>,
    ) {
        let Some(remote) = self.remote.clone() else {
            return;
        };
        let spacing = if learned {
            let now = self.now();
            let inner = self.lock();
            inner
                .governor
                .budget(key)
                .and_then(|b| b.interval(now, Lane::Realtime, 1.0))
        } else {
            None
        };
        if let Ok(handle) = tokio::runtime::Handle::try_current() {
            // Not returned (Redis down): the lease expires by itself.
            handle.spawn(async move {
                let _ = remote.release(&lease, spacing, pause).await;
            });
        }
    }

    async fn acquire_local(
        self: &Arc<Self>,
        key: BudgetKey,
        config: &Arc<BudgetConfig>,
        lane: Lane,
        cost: f64,
        max_wait: Duration,
        party: u64,
    ) -> Result<Lease, Rejection> {
        let start = self.now();
        let (id, mut rx) = {
            let mut inner = self.lock();
            let id = inner.next_id;
            inner.next_id += 1;
            match inner
                .governor
                .request_for(start, &key, config, lane, cost, max_wait, party, id)
            {
                Admission::Granted(permit) => {
                    return Ok(self.lease(key, permit, Duration::ZERO));
                }
                Admission::Rejected(rejection) => return Err(rejection),
                Admission::Queued => {
                    let (tx, rx) = oneshot::channel();
                    inner.waiters.insert(id, (tx, key.clone()));
                    if inner.driver_late() {
                        self.wake.notify_one();
                    }
                    (id, rx)
                }
            }
        };
        let mut guard = QueuedGuard {
            governor: self,
            key: key.clone(),
            id,
            armed: true,
        };
        // The governor expires waiters itself; the timeout only guards against a lost wake-up.
        let result = tokio::time::timeout(max_wait + Duration::from_millis(250), &mut rx).await;
        let result = match result {
            Ok(Ok(decision)) => {
                guard.armed = false;
                decision
            }
            _ => {
                // Withdraw first: after that no decision can arrive, but one may have just
                // before; take it rather than lose its slot.
                drop(guard);
                match rx.try_recv() {
                    Ok(decision) => decision,
                    Err(_) => Err(Rejection {
                        reason: headroom_core::RejectReason::WaitTooLong,
                        retry_after: Duration::from_secs(1),
                    }),
                }
            }
        };
        result.map(|mut lease| {
            lease.waited = self.now().saturating_since(start);
            lease
        })
    }

    fn lease(self: &Arc<Self>, key: BudgetKey, permit: Permit, waited: Duration) -> Lease {
        Lease {
            governor: Arc::clone(self),
            key,
            permit: Some(permit),
            waited,
            remote: None,
            route: None,
        }
    }

    fn complete(
        self: &Arc<Self>,
        key: &BudgetKey,
        permit: Permit,
        outcome: Outcome<'_>,
    ) -> Reaction {
        let now = self.now();
        let reaction = {
            let mut inner = self.lock();
            let mut out = std::mem::take(&mut inner.decisions);
            let reaction = inner.governor.complete(now, key, permit, outcome, &mut out);
            inner.decisions = out;
            inner.deliver(self, now);
            if inner.driver_late() {
                self.wake.notify_one();
            }
            reaction
        };
        reaction
    }

    /// Gives a budget a new config now and drives its queue (see `Governor::reconfigure`).
    pub fn reconfigure(self: &Arc<Self>, key: &BudgetKey, config: &Arc<BudgetConfig>) {
        let now = self.now();
        let mut inner = self.lock();
        let mut out = std::mem::take(&mut inner.decisions);
        inner.governor.reconfigure(now, key, config, &mut out);
        inner.decisions = out;
        inner.deliver(self, now);
        if inner.driver_late() {
            self.wake.notify_one();
        }
    }

    /// Runs the timer: grants queued calls when they are due and forgets idle budgets.
    pub fn spawn_driver(self: &Arc<Self>) -> tokio::task::JoinHandle<()> {
        let this = Arc::clone(self);
        tokio::spawn(async move {
            let mut last_sweep = this.now();
            loop {
                let sleep_for = {
                    let mut inner = this.lock();
                    let now = this.now();
                    let sleep_for = inner
                        .governor
                        .next_wakeup()
                        .map(|t| t.saturating_since(now))
                        .unwrap_or(EVICTION_SWEEP)
                        .min(EVICTION_SWEEP);
                    inner.driver_until = Some(now + sleep_for);
                    sleep_for
                };
                tokio::select! {
                    _ = tokio::time::sleep(sleep_for) => {}
                    _ = this.wake.notified() => {}
                }
                let now = this.now();
                let mut inner = this.lock();
                inner.driver_until = None;
                let mut out = std::mem::take(&mut inner.decisions);
                inner.governor.poll(now, &mut out);
                inner.decisions = out;
                inner.deliver(&this, now);
                if now.saturating_since(last_sweep) >= EVICTION_SWEEP {
                    inner.governor.evict_idle(now, IDLE_EVICTION);
                    last_sweep = now;
                }
            }
        })
    }

    /// Every budget, for `/v1/budgets`.
    /// Taken a chunk of budgets at a time, the lock let go in between: the observer samples
    /// every budget each second, and with 100,000 tenants one pass under the lock held every
    /// call for tens of milliseconds (the p99 of a proxied call at one connection was 42 ms).
    pub fn snapshot(&self) -> Vec<BudgetView> {
        let keys: Vec<BudgetKey> = {
            let inner = self.lock();
            inner.governor.iter().map(|(key, _)| key.clone()).collect()
        };
        let mut views = Vec::with_capacity(keys.len());
        for chunk in keys.chunks(SNAPSHOT_CHUNK) {
            let now = self.now();
            let inner = self.lock();
            // A budget evicted since the keys were taken is left out.
            views.extend(chunk.iter().filter_map(|key| inner.view(key, now)));
        }
        views
    }

    /// One budget, if the governor holds it (it is made on first use, and forgotten when idle).
    pub fn snapshot_of(&self, key: &BudgetKey) -> Option<BudgetView> {
        let now = self.now();
        self.lock().view(key, now)
    }
}

impl Inner {
    fn view(&self, key: &BudgetKey, now: Timestamp) -> Option<BudgetView> {
        let budget = self.governor.budget(key)?;
        let (queued_realtime, queued_bulk) = self.governor.queued(key);
        Some(BudgetView {
            upstream_index: key.0,
            key: key.1.to_string(),
            budget: budget.snapshot(now),
            queued_realtime,
            queued_bulk,
        })
    }
}

/// How many budgets a snapshot reads under one hold of the lock.
const SNAPSHOT_CHUNK: usize = 512;

#[cfg(test)]
mod tests {
    use headroom_core::limit::LimitConfig;
    use headroom_core::signals::Signals;

    use super::*;

    /// A routed call in front of an upstream at its connection cap: it holds no route leave
    /// while the upstream is full, and goes once a call there ends (not refused because the
    /// upstream could not take it at that very moment), within its wait.
    #[tokio::test(start_paused = true)]
    async fn a_routed_call_waits_out_a_full_upstream_without_holding_its_route() {
        let governor = SharedGovernor::new(1);
        governor.spawn_driver();
        let upstream = Arc::new(BudgetConfig {
            max_concurrency: 1,
            ..Default::default()
        });
        let route = Arc::new(BudgetConfig {
            limits: vec![LimitConfig::new(100.0, Duration::from_secs(1))],
            ..Default::default()
        });
        let key: BudgetKey = (0, Arc::from("tenant:acme"));
        let route_key: BudgetKey = (0, Arc::from("route:search:tenant:acme"));
        let held = governor
            .acquire(
                key.clone(),
                &upstream,
                Lane::Realtime,
                1.0,
                Duration::ZERO,
                0,
            )
            .await
            .unwrap();
        let release = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(100)).await;
            held.finish(Outcome::Abandoned);
        });
        let start = tokio::time::Instant::now();
        let lease = governor
            .acquire_both(
                (&route_key, &route),
                &key,
                &|| Arc::clone(&upstream),
                Lane::Realtime,
                1.0,
                Duration::from_millis(500),
                0,
            )
            .await
            .expect("a slot freed within the wait");
        assert!(start.elapsed() >= Duration::from_millis(100));
        release.await.unwrap();
        // Only the call that went spent the route.
        let view = governor.snapshot_of(&route_key).unwrap();
        assert_eq!(view.budget.spent_requests, 1.0);
        lease.finish(Outcome::Abandoned);
    }

    /// Pacing runs on tokio's clock: on paused time, ten calls against 5 per second (4 with
    /// the default 80 % headroom) wait for their turns in virtual time, and the test takes no
    /// real time. On a clock of its own the governor would never see the paused time move.
    #[tokio::test(start_paused = true)]
    async fn pacing_runs_on_pausable_time() {
        let governor = SharedGovernor::new(1);
        governor.spawn_driver();
        let config = Arc::new(BudgetConfig {
            limits: vec![LimitConfig::new(5.0, Duration::from_secs(1))],
            ..Default::default()
        });
        let key: BudgetKey = (0, Arc::from("acme"));
        let start = tokio::time::Instant::now();
        for _ in 0..10 {
            let lease = governor
                .acquire(
                    key.clone(),
                    &config,
                    Lane::Bulk,
                    1.0,
                    Duration::from_secs(60),
                    0,
                )
                .await
                .expect("a turn within the wait");
            lease.finish(Outcome::Response {
                status: 200,
                signals: &Signals::default(),
            });
        }
        let took = start.elapsed();
        assert!(
            took >= Duration::from_secs(1) && took <= Duration::from_secs(3),
            "ten calls at 4/s took {took:?} of (virtual) time"
        );
    }
}
