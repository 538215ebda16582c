//! A counter and a histogram for the series every proxied call touches, kept in a few
//! cache-line-sized shards: each thread adds to its own shard, and a scrape sums them.
//!
//! prometheus-client's `Counter` is one atomic and its `Histogram` one lock, shared by every
//! thread: on a busy server every core writes the same cache lines (and takes the same lock)
//! for every call. Here each thread writes its own. (On the 2-vCPU machine of BENCHMARKS §6
//! the difference is inside the run-to-run spread; it is the many-core case this is for.)

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use prometheus_client::encoding::{EncodeMetric, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::{MetricType, TypedMetric};

/// Shards per series: threads beyond this share shards (still far fewer writers per line).
const SHARDS: usize = 8;

/// This thread's shard, given out in turn as threads first count something.
fn shard() -> usize {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local! {
        static SHARD: usize = NEXT.fetch_add(1, Ordering::Relaxed) % SHARDS;
    }
    SHARD.with(|s| *s)
}

/// A value alone on its cache line (128 bytes: two lines, for CPUs that fetch pairs).
#[repr(align(128))]
#[derive(Default)]
struct Padded<T>(T);

/// A monotonic counter (prometheus `counter`).
#[derive(Clone, Default)]
pub struct ShardedCounter {
    shards: Arc<[Padded<AtomicU64>; SHARDS]>,
}

impl ShardedCounter {
    pub fn inc(&self) {
        self.shards[shard()].0.fetch_add(1, Ordering::Relaxed);
    }

    pub fn get(&self) -> u64 {
        self.shards
            .iter()
            .map(|s| s.0.load(Ordering::Relaxed))
            .sum()
    }
}

impl std::fmt::Debug for ShardedCounter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("ShardedCounter").field(&self.get()).finish()
    }
}

impl TypedMetric for ShardedCounter {
    const TYPE: MetricType = MetricType::Counter;
}

impl EncodeMetric for ShardedCounter {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        encoder.encode_counter::<NoLabelSet, _, u64>(&self.get(), None)
    }

    fn metric_type(&self) -> MetricType {
        Self::TYPE
    }
}

/// Cells per cache-line-sized chunk.
const CELLS: usize = 16;

/// A histogram (prometheus `histogram`) with fixed upper bounds. Each shard has its own
/// chunks (whole cache lines): the count per bucket (the last for values above every bound),
/// then the sum of the values (an `f64`'s bits; written by few threads, so its
/// compare-and-swap rarely retries).
#[derive(Clone)]
pub struct ShardedHistogram {
    bounds: Arc<[f64]>,
    chunks: Arc<[Padded<[AtomicU64; CELLS]>]>,
}

impl ShardedHistogram {
    pub fn new(bounds: &[f64]) -> ShardedHistogram {
        let per_shard = Self::chunks_per_shard(bounds.len());
        ShardedHistogram {
            bounds: bounds.into(),
            chunks: (0..SHARDS * per_shard).map(|_| Padded::default()).collect(),
        }
    }

    /// Buckets (one per bound and one above) and the sum, in whole chunks.
    fn chunks_per_shard(bounds: usize) -> usize {
        (bounds + 2).div_ceil(CELLS)
    }

    /// Cell `i` of `shard`.
    fn cell(&self, shard: usize, i: usize) -> &AtomicU64 {
        let first = shard * Self::chunks_per_shard(self.bounds.len());
        &self.chunks[first + i / CELLS].0[i % CELLS]
    }

    pub fn observe(&self, value: f64) {
        let shard = shard();
        let bucket = self
            .bounds
            .iter()
            .position(|bound| value <= *bound)
            .unwrap_or(self.bounds.len());
        self.cell(shard, bucket).fetch_add(1, Ordering::Relaxed);
        if value != 0.0 {
            let sum = self.cell(shard, self.bounds.len() + 1);
            let _ = sum.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |bits| {
                Some((f64::from_bits(bits) + value).to_bits())
            });
        }
    }

    /// The sum, the count and each bucket's count (not cumulative), as prometheus-client's
    /// encoder takes them.
    pub fn get(&self) -> (f64, u64, Vec<(f64, u64)>) {
        let mut sum = 0.0;
        let mut buckets: Vec<(f64, u64)> = self
            .bounds
            .iter()
            .chain(std::iter::once(&f64::MAX))
            .map(|bound| (*bound, 0))
            .collect();
        for shard in 0..SHARDS {
            sum += f64::from_bits(
                self.cell(shard, self.bounds.len() + 1)
                    .load(Ordering::Relaxed),
            );
            for (i, total) in buckets.iter_mut().enumerate() {
                total.1 += self.cell(shard, i).load(Ordering::Relaxed);
            }
        }
        let count = buckets.iter().map(|(_, n)| n).sum();
        (sum, count, buckets)
    }
}

impl std::fmt::Debug for ShardedHistogram {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (sum, count, _) = self.get();
        f.debug_struct("ShardedHistogram")
            .field("sum", &sum)
            .field("count", &count)
            .finish()
    }
}

impl TypedMetric for ShardedHistogram {
    const TYPE: MetricType = MetricType::Histogram;
}

impl EncodeMetric for ShardedHistogram {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        let (sum, count, buckets) = self.get();
        encoder.encode_histogram::<NoLabelSet>(sum, count, &buckets, None)
    }

    fn metric_type(&self) -> MetricType {
        Self::TYPE
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Counts from many threads add up, and encode as prometheus-client's own types do.
    #[test]
    fn shards_add_up_and_encode_like_the_plain_types() {
        let counter = ShardedCounter::default();
        let histogram = ShardedHistogram::new(&[0.1, 1.0]);
        let plain_counter = prometheus_client::metrics::counter::Counter::<u64>::default();
        let plain_histogram = prometheus_client::metrics::histogram::Histogram::new([0.1, 1.0]);
        std::thread::scope(|s| {
            for t in 0..12 {
                let (counter, histogram) = (&counter, &histogram);
                s.spawn(move || {
                    for i in 0..1000 {
                        counter.inc();
                        histogram.observe(f64::from((t * 1000 + i) % 4) * 0.5);
                    }
                });
            }
        });
        for n in 0..12_000 {
            plain_counter.inc();
            plain_histogram.observe(f64::from(n % 4) * 0.5);
        }
        let encode = |register: &dyn Fn(&mut prometheus_client::registry::Registry)| {
            let mut registry = prometheus_client::registry::Registry::default();
            register(&mut registry);
            let mut text = String::new();
            prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
            text
        };
        let sharded = encode(&|r| {
            r.register("calls", "Calls", counter.clone());
            r.register("wait", "Wait", histogram.clone());
        });
        let plain = encode(&|r| {
            r.register("calls", "Calls", plain_counter.clone());
            r.register("wait", "Wait", plain_histogram.clone());
        });
        assert_eq!(counter.get(), 12_000);
        assert_eq!(sharded, plain);
        assert!(sharded.contains("wait_count 12000"), "{sharded}");
        assert!(sharded.contains("wait_sum 9000.0"), "{sharded}");
    }
}
