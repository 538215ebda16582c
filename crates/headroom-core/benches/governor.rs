//! Cost of one pacing decision as the number of budgets grows.
//!
//! - `decision/N`: a call on a random one of N budgets is granted at once, then completed with
//!   a response carrying rate-limit headers (what the proxy does for a call that does not wait).
//! - `decision_queued/N`: every one of N budgets has a call waiting on the timer heap; one
//!   iteration polls the next due call, grants it, completes it, and queues that budget's next
//!   call (which must wait, so it goes back on the heap).
//! - `decision_active1000/N`, `decision_queued_active1000/N`: the same with N budgets held but
//!   calls on only 1,000 of them, which shows how much of the growth with N is cache misses.
//!
//! Time is virtual, so pacing never sleeps: the benchmark measures decisions, not waits.
//! `cargo bench -p headroom-core --bench governor`

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use headroom_core::backoff::Jitter;
use headroom_core::limit::LimitConfig;
use headroom_core::{
    Admission, BudgetConfig, Decision, Governor, Lane, LimitSignal, Outcome, Signals, Timestamp,
};

const SIZES: [u32; 3] = [10, 10_000, 100_000];
const ACTIVE_SIZES: [u32; 2] = [10_000, 100_000];
const MAX_WAIT: Duration = Duration::from_secs(60);
/// Virtual time between two decisions of `decision/N`: longer than the widest pacing interval
/// of the config (the daily limit at its slowest, 1.74/s), so a call is granted even when the
/// same budget is drawn twice in a row.
const STEP: Duration = Duration::from_secs(1);
const SECOND: u64 = 1_000_000_000;
const DAY: u64 = 86_400 * SECOND;

/// 100 per 10 s and 250,000 per day, like many SaaS APIs; one config shared by every tenant.
fn config() -> Arc<BudgetConfig> {
    let config = BudgetConfig {
        limits: vec![
            LimitConfig::new(100.0, Duration::from_secs(10)),
            LimitConfig::new(250_000.0, Duration::from_secs(86_400)),
        ],
        ..BudgetConfig::default()
    };
    config.validate().expect("valid config");
    Arc::new(config)
}

/// What an X-RateLimit style response says about both limits, with plenty remaining.
fn signals() -> Signals {
    let limit = |quota, remaining| LimitSignal {
        quota: Some(quota),
        remaining: Some(remaining),
        ..LimitSignal::default()
    };
    Signals {
        throttled: false,
        retry_after: None,
        limits: vec![limit(100.0, 60.0), limit(250_000.0, 200_000.0)],
        cost: None,
    }
}

/// Fixed windows reset on multiples of their length; the response reports the time left.
fn set_resets(signals: &mut Signals, now: Timestamp) {
    for (signal, window) in signals.limits.iter_mut().zip([10 * SECOND, DAY]) {
        signal.reset_in = Some(Duration::from_nanos(window - now.as_nanos() % window));
    }
}

fn response(signals: &Signals) -> Outcome<'_> {
    Outcome::Response {
        status: 200,
        signals,
    }
}

/// A governor holding `n` budgets (keys `0..n`), each with one call done and learned from.
fn populated(n: u32, config: &Arc<BudgetConfig>, signals: &mut Signals) -> Governor<u32, u32> {
    let mut governor = Governor::new(1);
    let mut freed = Vec::new();
    let now = Timestamp::from_nanos(SECOND);
    set_resets(signals, now);
    for key in 0..n {
        let Admission::Granted(permit) =
            governor.request(now, &key, config, Lane::Bulk, 1.0, MAX_WAIT, key)
        else {
            panic!("a fresh budget grants its first call");
        };
        governor.complete(now, &key, permit, response(signals), &mut freed);
    }
    assert_eq!(governor.len(), n as usize);
    governor
}

/// `decision/N` with calls spread evenly over `active` of the `n` budgets.
fn bench_decision(c: &mut Criterion, group: &str, sizes: &[u32], active: Option<u32>) {
    let mut group = c.benchmark_group(group);
    group.throughput(Throughput::Elements(1));
    for &n in sizes {
        let config = config();
        let mut signals = signals();
        let mut governor = populated(n, &config, &mut signals);
        let active = active.unwrap_or(n);
        let stride = n / active;
        let mut rng = Jitter::new(7);
        let mut freed: Vec<Decision<u32>> = Vec::new();
        let mut now = Timestamp::from_nanos(2 * SECOND);
        group.bench_function(BenchmarkId::from_parameter(n), |b| {
            b.iter(|| {
                let key = (rng.next_u64() % u64::from(active)) as u32 * stride;
                now += STEP;
                set_resets(&mut signals, now);
                let admission = governor.request(
                    now,
                    black_box(&key),
                    &config,
                    Lane::Bulk,
                    1.0,
                    MAX_WAIT,
                    key,
                );
                let Admission::Granted(permit) = admission else {
                    panic!("budget {key} not granted at {now:?}: {admission:?}");
                };
                let reaction = governor.complete(now, &key, permit, response(&signals), &mut freed);
                debug_assert!(freed.is_empty());
                black_box(reaction)
            });
        });
        assert_eq!(governor.len(), n as usize);
    }
    group.finish();
}

/// `populated(n)`, then each of `active` budgets (spread evenly over the keys) gets a call that
/// must wait, armed in random order so that the heap hands out budgets in an order unrelated
/// to their layout in memory.
fn saturated(
    n: u32,
    active: u32,
    config: &Arc<BudgetConfig>,
    signals: &mut Signals,
) -> (Governor<u32, u32>, Timestamp) {
    let mut governor = populated(n, config, signals);
    let stride = n / active;
    let mut keys: Vec<u32> = (0..active).map(|i| i * stride).collect();
    let mut rng = Jitter::new(11);
    for i in (1..keys.len()).rev() {
        keys.swap(i, (rng.next_u64() % (i as u64 + 1)) as usize);
    }
    let mut freed = Vec::new();
    let start = 2 * SECOND;
    let mut now = Timestamp::from_nanos(start);
    for (i, key) in keys.iter().enumerate() {
        // Spread over one second of virtual time, so that no two budgets are due together.
        now = Timestamp::from_nanos(start + i as u64 * SECOND / u64::from(active));
        set_resets(signals, now);
        let Admission::Granted(permit) =
            governor.request(now, key, config, Lane::Bulk, 1.0, MAX_WAIT, *key)
        else {
            panic!("an idle budget grants a call");
        };
        governor.complete(now, key, permit, response(signals), &mut freed);
        let queued = governor.request(now, key, config, Lane::Bulk, 1.0, MAX_WAIT, *key);
        assert_eq!(
            queued,
            Admission::Queued,
            "the next call waits for the pace"
        );
    }
    (governor, now)
}

/// `decision_queued/N` with `active` of the `n` budgets (all when `None`) holding a waiting call.
fn bench_decision_queued(c: &mut Criterion, group: &str, sizes: &[u32], active: Option<u32>) {
    let mut group = c.benchmark_group(group);
    group.throughput(Throughput::Elements(1));
    for &n in sizes {
        let config = config();
        let mut signals = signals();
        let (mut governor, mut now) = saturated(n, active.unwrap_or(n), &config, &mut signals);
        let mut due: Vec<Decision<u32>> = Vec::with_capacity(16);
        let mut freed: Vec<Decision<u32>> = Vec::new();
        group.bench_function(BenchmarkId::from_parameter(n), |b| {
            b.iter_custom(|iters| {
                let mut done = 0;
                let start = Instant::now();
                while done < iters {
                    let at = governor
                        .next_wakeup()
                        .expect("every budget has a call waiting");
                    debug_assert!(at >= now);
                    now = at;
                    governor.poll(now, &mut due);
                    set_resets(&mut signals, now);
                    for decision in due.drain(..) {
                        let Decision::Granted {
                            token: key, permit, ..
                        } = decision
                        else {
                            panic!("a waiting call was refused: {decision:?}");
                        };
                        let reaction =
                            governor.complete(now, &key, permit, response(&signals), &mut freed);
                        black_box(reaction);
                        let admission = governor.request(
                            now,
                            black_box(&key),
                            &config,
                            Lane::Bulk,
                            1.0,
                            MAX_WAIT,
                            key,
                        );
                        assert!(
                            admission == Admission::Queued,
                            "budget {key} did not queue: {admission:?}"
                        );
                        done += 1;
                    }
                }
                start.elapsed()
            });
        });
        assert_eq!(governor.len(), n as usize);
    }
    group.finish();
}

fn decision(c: &mut Criterion) {
    bench_decision(c, "decision", &SIZES, None);
}

fn decision_queued(c: &mut Criterion) {
    bench_decision_queued(c, "decision_queued", &SIZES, None);
}

/// The same with traffic on 1,000 budgets only: separates the cost of holding many budgets
/// from the cost of touching many (cache misses).
fn active_1000(c: &mut Criterion) {
    bench_decision(c, "decision_active1000", &ACTIVE_SIZES, Some(1000));
    bench_decision_queued(c, "decision_queued_active1000", &ACTIVE_SIZES, Some(1000));
}

fn settings() -> Criterion {
    Criterion::default()
        .sample_size(30)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
}

criterion_group! {
    name = benches;
    config = settings();
    targets = decision, decision_queued, active_1000
}
criterion_main!(benches);
