//! Properties of the pacing model, checked by simulating it against upstreams that enforce
//! their limits, in virtual time.

use std::time::Duration;

use headroom_core::sim::{run, Dialect, Model, Scenario};
use proptest::prelude::*;
use proptest::test_runner::RngSeed;

/// Upstreams that report what remains: a model and a dialect it plausibly speaks.
const WITH_HEADERS: &[(Model, Dialect)] = &[
    (Model::FixedWindow, Dialect::Ietf),
    (Model::FixedWindow, Dialect::IetfLegacy),
    (Model::FixedWindow, Dialect::XRateLimitEpoch),
    (Model::FixedWindow, Dialect::XRateLimitDelta),
    (Model::FixedWindow, Dialect::HubSpot),
    (Model::LeakyBucket, Dialect::Shopify),
];

/// Upstreams that say nothing but 429 (and maybe Retry-After).
///
/// A sliding window's reset (when its oldest call expires) frees one call, not the quota;
/// pacing from such resets is a known gap (see BENCHMARKS.md), so sliding windows appear here
/// without headers and in the quota check with them.
const WITHOUT_HEADERS: &[(Model, Dialect)] = &[
    (Model::FixedWindow, Dialect::Bare),
    (Model::FixedWindow, Dialect::RetryAfter),
    (Model::SlidingWindow, Dialect::Bare),
    (Model::SlidingWindow, Dialect::RetryAfter),
    (Model::LeakyBucket, Dialect::Bare),
    (Model::LeakyBucket, Dialect::RetryAfter),
];

fn scenario_of(kinds: &'static [(Model, Dialect)]) -> impl Strategy<Value = Scenario> {
    (
        prop::sample::select(kinds),
        20u32..400,
        prop_oneof![Just(1u64), Just(10), Just(60)],
        5u64..150,
        any::<u64>(),
    )
        .prop_map(|((model, dialect), quota, window_s, latency_ms, seed)| {
            let mut s = Scenario::new(&format!("{model:?}/{dialect:?}"), model, dialect);
            s.quota = quota;
            s.window = Duration::from_secs(window_s);
            s.latency = Duration::from_millis(latency_ms);
            s.seed = seed;
            s.windows = 12;
            // Enough concurrency for the pace at this latency: the cap is the user's choice,
            // not what these properties are about.
            let rate = s.headroom * quota as f64 / window_s as f64;
            s.max_concurrency = ((2.0 * rate * s.latency.as_secs_f64()).ceil() as u32).max(10);
            // Real-time traffic at a tenth of the even pace.
            s.realtime_rate = 0.1 * rate;
            s
        })
}

fn scenario() -> impl Strategy<Value = Scenario> {
    prop_oneof![scenario_of(WITH_HEADERS), scenario_of(WITHOUT_HEADERS)]
}

proptest! {
    // A fixed seed keeps CI deterministic; `PROPTEST_CASES=3000` explores further (it passes).
    #![proptest_config(ProptestConfig {
        cases: 48,
        rng_seed: RngSeed::Fixed(0x4EAD_2004),
        ..ProptestConfig::default()
    })]

    /// With the limit known and nobody else spending it, Headroom never sends more than the
    /// quota in a window, and is never throttled — sliding windows with reset headers too.
    #[test]
    fn never_more_than_the_quota_per_window(
        s in prop_oneof![scenario(), scenario_of(&[(Model::SlidingWindow, Dialect::IetfLegacy)])]
    ) {
        let r = run(&s);
        prop_assert!(r.max_sent_per_window <= s.quota as u64, "{r:?}");
        prop_assert_eq!(r.throttled, 0, "{:?}", r);
    }

    /// Alone, bulk work gets at least 97 % of `headroom × quota` (counted in whole calls: with
    /// a quota of 26, the target is 20 calls, not 20.8).
    #[test]
    fn alone_it_delivers_at_least_97_percent(mut s in scenario()) {
        s.realtime_rate = 0.0;
        let r = run(&s);
        let target = s.headroom * s.quota as f64;
        prop_assert!(r.utilisation >= 0.97 * target.floor() / target, "{r:?}");
    }

    /// A hidden client spending 30 % of the quota: Headroom sees it in the remaining counts
    /// and adapts, under 1 % throttled. (Upstreams that report nothing but 429s are checked
    /// below, over longer runs: there the 429s are the only signal.)
    #[test]
    fn beside_a_hidden_client_under_one_percent_throttled(mut s in scenario_of(WITH_HEADERS)) {
        s.hidden_share = 0.3;
        let r = run(&s);
        prop_assert!(r.throttled_share < 0.01, "{r:?}");
    }

    /// Under a saturating bulk load, real-time calls wait at most one pacing interval (p99).
    #[test]
    fn realtime_p99_wait_within_one_pacing_interval(s in scenario()) {
        let r = run(&s);
        prop_assert!(r.realtime_calls > 0);
        prop_assert!(r.realtime_p99_wait_s <= r.pacing_interval_s, "{r:?}");
    }
}

/// Without any rate-limit headers the only signal is the 429 itself: Headroom halves its pace
/// on each and recovers slowly, so over a run of an hour throttling stays under 1 %.
#[test]
fn beside_a_hidden_client_without_headers_throttling_stays_rare() {
    for &(model, dialect) in WITHOUT_HEADERS {
        for seed in 1..=3 {
            let mut s = Scenario::new("no headers", model, dialect);
            s.hidden_share = 0.3;
            s.windows = 360;
            s.seed = seed;
            let r = run(&s);
            assert!(r.throttled_share < 0.01, "{model:?} {dialect:?} {r:?}");
        }
    }
}

/// The API halves its quota a third of the way through (a plan change): the new limit takes
/// effect at once (configured or learned), the pace recovers within two windows, and nothing
/// is throttled. Before, a configured 20 per 2 s fell to 1–2 calls per window and stayed there.
#[test]
fn a_falling_limit_takes_effect_and_the_pace_recovers() {
    let moving = Scenario::moving();
    let halves: Vec<&Scenario> = moving
        .iter()
        .filter(|s| s.name.contains("halves"))
        .collect();
    assert!(halves.len() >= 3);
    for s in halves {
        let r = run(s);
        let (_, new_quota) = s.quota_change.unwrap();
        let target = s.headroom * new_quota as f64;
        let after = r.utilisation_after_change.unwrap();
        assert!(after >= 0.7, "{}: {after:.3} of the new target", s.name);
        assert!(
            r.throttled_share <= 0.02,
            "{}: {:.4} throttled",
            s.name,
            r.throttled_share
        );
        // At most the target plus what real-time calls may take of the margin (plus one for a
        // window's edge). A limit learned without a window paces by the window its resets
        // show (it spent the whole new quota after each reset before it learned one).
        let bound = (target + s.realtime_reserve * (new_quota as f64 - target)).floor() as u64 + 1;
        let most = r.max_sent_after_change.unwrap();
        assert!(
            most <= bound,
            "{}: {most} in one window (bound {bound})",
            s.name
        );
    }
}

/// The API doubles its quota a third of the way through, no limit configured (a configured
/// one is a ceiling unless `learn = "raise"`): the new limit is learned from the headers and
/// spent, at least 0.7 of its target from two windows after the change, nothing throttled.
#[test]
fn a_rising_limit_is_learned_and_spent() {
    let moving = Scenario::moving();
    let rises: Vec<&Scenario> = moving
        .iter()
        .filter(|s| s.name.contains("doubles"))
        .collect();
    assert!(rises.len() >= 2);
    for s in rises {
        let r = run(s);
        let after = r.utilisation_after_change.unwrap();
        assert!(after >= 0.7, "{}: {after:.3} of the new target", s.name);
        assert!(after <= 1.1, "{}: {after:.3} of the new target", s.name);
        assert_eq!(r.throttled, 0, "{}: {r:?}", s.name);
    }
}

/// A token-metered API (OpenAI's headers, 3,000 tokens per 2 s, calls of 100–300 tokens, 16
/// callers at once): under 1 % of calls throttled and at least three quarters of the target
/// spent, whether each call states its cost, states a flat estimate that its answer's
/// `usage` corrects, or no limit is configured (learned from the headers, its window from
/// how the resets move). Before reconciliation and window inference, the unconfigured case
/// had 4.8 % of its calls throttled.
#[test]
fn a_token_metered_api_is_paced_by_cost() {
    for s in Scenario::costs() {
        for seed in 1..=3 {
            let mut s = s.clone();
            s.seed = seed;
            s.windows = 100;
            let r = run(&s);
            let at = format!("{} seed {seed}", s.name);
            assert!(r.throttled_share <= 0.01, "{at}: {r:?}");
            assert!(r.utilisation >= 0.75, "{at}: {r:?}");
            // Never a whole quota past the target: reservations hold even when estimates are off.
            assert!(r.utilisation <= 1.1, "{at}: {r:?}");
        }
    }
}

/// Learned from the headers alone, a 20-per-2-s limit with real-time calls only: at most
/// `headroom × quota` (16) in any window. Real-time calls may spend `realtime_reserve` of the
/// margin, 0.8 of a call here, which rounds down to none (it used to round up to one: 17).
#[test]
fn a_small_learned_limit_gets_no_more_than_its_headroom() {
    let s = Scenario::moving()
        .into_iter()
        .find(|s| s.name.contains("real-time only"))
        .expect("the scenario exists");
    let r = run(&s);
    assert_eq!(r.throttled, 0);
    assert!(
        r.max_sent_per_window <= 16,
        "{} in one window",
        r.max_sent_per_window
    );
    assert!(r.utilisation >= 0.85, "{:.3}", r.utilisation);
}

/// No limit in the config and none in the headers (a bare 429, or only Retry-After): what
/// passed before the first throttle becomes the limit. With Retry-After, throttles stay under
/// 1 % of calls (under 2 % with bare 429s) (they were 9 % with a fixed window and 43 % with a leaky bucket when every pause
/// released the whole queue), alone and beside a hidden client, and the budget is still used.
#[test]
fn an_api_that_states_no_limit_is_learned_from_its_throttles() {
    for &(model, dialect) in WITHOUT_HEADERS {
        for hidden in [0.0, 0.3] {
            for seed in 1..=3 {
                let mut s = Scenario::new("unconfigured, no headers", model, dialect);
                s.configured = false;
                s.hidden_share = hidden;
                s.seed = seed;
                let r = run(&s);
                let at = format!("{model:?} {dialect:?} hidden {hidden} seed {seed}");
                // A bare 429 does not say how long the window is, so the learned window is the
                // backoff's pause and the first estimate is rougher: up to 1.5 % seen.
                let bound = if dialect == Dialect::Bare { 0.02 } else { 0.01 };
                assert!(r.throttled_share <= bound, "{at}: {r:?}");
                assert!(r.utilisation >= 0.45, "{at}: {r:?}");
            }
        }
    }
}
