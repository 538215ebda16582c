//! Heap bytes per idle budget, counted by a global allocator that tracks live bytes.
//!
//! Creates 100,000 budgets (keys and tokens are `u64`), each with one call granted and
//! completed with a response that reports its limits, so every budget holds learned state; then
//! divides the growth of live heap bytes by the number of budgets. The figure includes the
//! governor's index (hash map), slot vector and generation vector, whose capacities grow by
//! doubling, so it carries their spare capacity at this N. It counts bytes requested from the
//! allocator, not the allocator's own per-block overhead (the number of blocks is printed).
//!
//! `cargo bench -p headroom-core --bench memory`

use std::alloc::{GlobalAlloc, Layout, System};
use std::mem::size_of;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use headroom_core::limit::LimitConfig;
use headroom_core::{
    Admission, Budget, BudgetConfig, Decision, Governor, Lane, LimitSignal, Outcome, Permit,
    Signals, Timestamp,
};

const N: u64 = 100_000;

/// The system allocator, counting live bytes and live blocks.
struct Counting;

static LIVE_BYTES: AtomicUsize = AtomicUsize::new(0);
static LIVE_BLOCKS: AtomicUsize = AtomicUsize::new(0);

// SAFETY: every call is forwarded unchanged to `System`; the counters have no effect on it.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let ptr = System.alloc(layout);
        if !ptr.is_null() {
            LIVE_BYTES.fetch_add(layout.size(), Relaxed);
            LIVE_BLOCKS.fetch_add(1, Relaxed);
        }
        ptr
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        let ptr = System.alloc_zeroed(layout);
        if !ptr.is_null() {
            LIVE_BYTES.fetch_add(layout.size(), Relaxed);
            LIVE_BLOCKS.fetch_add(1, Relaxed);
        }
        ptr
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        System.dealloc(ptr, layout);
        LIVE_BYTES.fetch_sub(layout.size(), Relaxed);
        LIVE_BLOCKS.fetch_sub(1, Relaxed);
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let new = System.realloc(ptr, layout, new_size);
        if !new.is_null() {
            LIVE_BYTES.fetch_add(new_size, Relaxed);
            LIVE_BYTES.fetch_sub(layout.size(), Relaxed);
        }
        new
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

fn live() -> (usize, usize) {
    (LIVE_BYTES.load(Relaxed), LIVE_BLOCKS.load(Relaxed))
}

/// Creates `N` idle budgets of `limits` and returns the growth of live heap (bytes, blocks).
fn idle_budgets(limits: &[(f64, u64)]) -> (usize, usize) {
    let config = Arc::new(BudgetConfig {
        limits: limits
            .iter()
            .map(|&(quota, secs)| LimitConfig::new(quota, Duration::from_secs(secs)))
            .collect(),
        ..BudgetConfig::default()
    });
    config.validate().expect("valid config");
    // What the response says about each limit: the quota (how it is matched), what remains and
    // when the window resets. No names, as in the X-RateLimit family.
    let signals = Signals {
        throttled: false,
        retry_after: None,
        cost: None,
        limits: limits
            .iter()
            .map(|&(quota, secs)| LimitSignal {
                quota: Some(quota),
                remaining: Some(quota * 0.6),
                reset_in: Some(Duration::from_secs(secs / 2)),
                ..LimitSignal::default()
            })
            .collect(),
    };
    let mut governor: Governor<u64, u64> = Governor::new(1);
    let mut freed: Vec<Decision<u64>> = Vec::new();
    let now = Timestamp::from_nanos(1_000_000_000);
    let done = now + Duration::from_millis(50);

    let before = live();
    for key in 0..N {
        let Admission::Granted(permit) = governor.request(
            now,
            &key,
            &config,
            Lane::Bulk,
            1.0,
            Duration::from_secs(60),
            key,
        ) else {
            panic!("a fresh budget grants its first call");
        };
        let outcome = Outcome::Response {
            status: 200,
            signals: &signals,
        };
        governor.complete(done, &key, permit, outcome, &mut freed);
    }
    let after = live();

    assert_eq!(governor.len(), N as usize);
    assert!(freed.is_empty());
    assert!(governor.iter().all(|(_, budget)| budget.is_idle(done)));
    assert!(governor
        .iter()
        .all(|(_, budget)| budget.snapshot(done).limits.len() == limits.len()));
    drop(governor);
    (after.0 - before.0, after.1 - before.1)
}

fn main() {
    // `cargo bench` passes `--bench`; this target takes no options.
    println!("headroom-core memory, N = {N} idle budgets, Governor<u64 key, u64 token>");
    let cases: [(&str, &[(f64, u64)]); 2] = [
        ("1 limit (100/10s)", &[(100.0, 10)]),
        (
            "2 limits (100/10s + 250000/1d)",
            &[(100.0, 10), (250_000.0, 86_400)],
        ),
    ];
    let mut results = Vec::new();
    for (name, limits) in cases {
        let (total, blocks) = idle_budgets(limits);
        let bytes = total as f64 / N as f64;
        println!(
            "bytes per idle budget: {bytes:.1} ({name}; key u64; {total} bytes in {blocks} \
             heap blocks for {N} budgets, including the index and slot vectors' spare capacity)"
        );
        results.push(bytes);
    }
    println!(
        "heap bytes per extra limit: {:.1} (difference of the two lines above)",
        results[1] - results[0]
    );
    println!("size_of::<Budget>() = {}", size_of::<Budget>());
    println!(
        "size_of::<Governor<u64, u64>>() = {}",
        size_of::<Governor<u64, u64>>()
    );
    println!("size_of::<Permit>() = {}", size_of::<Permit>());
    println!("size_of::<Admission>() = {}", size_of::<Admission>());
    println!(
        "size_of::<Decision<u64>>() = {}",
        size_of::<Decision<u64>>()
    );
    println!("size_of::<BudgetConfig>() = {}", size_of::<BudgetConfig>());
    println!("size_of::<LimitSignal>() = {}", size_of::<LimitSignal>());
    println!("size_of::<Timestamp>() = {}", size_of::<Timestamp>());
}
