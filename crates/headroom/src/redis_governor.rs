//! The governor's shared half in Redis (`governor = "redis://…"`), so that several nodes
//! spend one budget together.
//!
//! Each node keeps its in-memory governor (`crate::governor`): it queues the node's own
//! calls in lane order, learns from the headers it sees, and computes the pace. Before a
//! call goes, the node also takes leave from Redis, where one budget's shared state lives:
//! - the pace slots (`tat`, `tat_bulk`: when the next call of any node may go, as a GCRA
//!   "theoretical arrival time"), advanced by each call at the spacing the node asks for or
//!   the spacing any node learned from headers, whichever is slower;
//! - what was learned (`learned`: ms between calls of cost 1, valid until `learned_until`),
//!   written by whichever node saw rate-limit headers last, used by every node;
//! - pauses (`paused_until`) after a throttled response, seen by every node;
//! - lane shares: real-time calls may run `BURST` intervals ahead of the pace, and while any
//!   node has a real-time call in flight, bulk gets `1 - realtime_reserve` of the pace and
//!   of the concurrency;
//! - concurrency leases, one sorted-set member per call with its expiry as score: a node
//!   that dies gives its leases back when they expire.
//!
//! Every change is one Lua script, atomic in Redis, on Redis's own clock (`TIME`), so that
//! the nodes' clocks do not matter. A budget's keys share one hash tag (`{…}`), so a Redis
//! Cluster keeps them in one slot. When Redis cannot be reached, calls are refused with a
//! clear reason (and retried later by the jobs); the node keeps running and reconnects.
//!
//! URL: `redis://host:6379/0?prefix=hr&lease_ttl=60s` (both parameters optional).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use headroom_core::{Lane, RejectReason, Rejection};
use redis::aio::ConnectionManager;

/// How far ahead of the pace a real-time call may run, in intervals (as in the core).
const BURST: f64 = 3.0;
/// How long a call's concurrency lease lasts if its node never returns it (it died).
pub const DEFAULT_LEASE_TTL: Duration = Duration::from_secs(60);
/// A learned spacing is used this long after the last node that saw headers wrote it.
const LEARNED_TTL: Duration = Duration::from_secs(60);
/// A budget's keys are dropped after this long without a call.
const IDLE_TTL: Duration = Duration::from_secs(3600);
/// How long one Redis command may take before the call is refused.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(2);
/// After a failed connection attempt, calls fail at once for this long.
const RECONNECT_PAUSE: Duration = Duration::from_secs(1);
/// How long to wait before asking again when every concurrency slot is taken.
const CONCURRENCY_POLL: Duration = Duration::from_millis(20);

/// Takes leave for one call, or says how long to wait. Returns {1, 0} (granted),
/// {0, ms} (paced or paused: wait that long) or {0, -1} (every concurrency slot taken).
/// KEYS: state hash, leases, real-time leases. ARGV: lane ('r' | 'b'), spacing (ms between
/// calls of this cost, as the node computes it; 0 = unpaced), cost, realtime reserve,
/// concurrency cap, lease id, lease ttl ms, idle ttl ms, burst.
const ACQUIRE: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local lane, spacing, cost = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local reserve, cap, id = tonumber(ARGV[4]), tonumber(ARGV[5]), ARGV[6]
local ttl, idle, burst = tonumber(ARGV[7]), tonumber(ARGV[8]), tonumber(ARGV[9])
-- The leases of calls whose node never returned them (it died) expire.
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now)
redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', now)
local s = redis.call('HMGET', KEYS[1], 'paused_until', 'tat', 'tat_bulk', 'learned', 'learned_until')
local paused = tonumber(s[1]) or 0
if paused > now then return {0, paused - now} end
-- What any node learned from headers wins when it is slower than this node's own pace.
local learned = (tonumber(s[4]) or 0) * cost
if (tonumber(s[5]) or 0) > now and learned > spacing then spacing = learned end
local rt = redis.call('ZCARD', KEYS[3])
local share = 1
if lane == 'b' and rt > 0 and reserve > 0 then share = 1 - reserve end
local tat = tonumber(s[2]) or now
local tatb = tonumber(s[3]) or now
if spacing > 0 then
  local at = tat
  if lane == 'r' then at = tat - burst * spacing
  elseif share < 1 then at = math.max(tat, tatb) end
  if at > now then return {0, math.ceil(at - now)} end
end
local n = redis.call('ZCARD', KEYS[2])
if n >= cap then return {0, -1} end
if lane == 'b' and share < 1 and n - rt >= math.max(1, math.floor(cap * share)) then
  return {0, -1}
end
if spacing > 0 then
  redis.call('HSET', KEYS[1], 'tat', tostring(math.max(tat, now) + spacing))
  if lane == 'b' then
    redis.call('HSET', KEYS[1], 'tat_bulk', tostring(math.max(tatb, now) + spacing / share))
  end
end
redis.call('ZADD', KEYS[2], now + ttl, id)
if lane == 'r' then redis.call('ZADD', KEYS[3], now + ttl, id) end
redis.call('PEXPIRE', KEYS[1], idle)
redis.call('PEXPIRE', KEYS[2], idle)
redis.call('PEXPIRE', KEYS[3], idle)
return {1, 0}
";

/// Returns a lease, and shares what its call taught: a spacing learned from headers (ms
/// between calls of cost 1; 0 = nothing learned) and a pause (ms; 0 = none).
/// KEYS: state hash, leases, real-time leases. ARGV: lease id, learned, learned ttl ms,
/// pause ms.
const RELEASE: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZREM', KEYS[2], ARGV[1])
redis.call('ZREM', KEYS[3], ARGV[1])
local learned, pause = tonumber(ARGV[2]), tonumber(ARGV[4])
if learned > 0 then
  redis.call('HSET', KEYS[1], 'learned', tostring(learned), 'learned_until', tostring(now + tonumber(ARGV[3])))
end
if pause > 0 then
  local p = tonumber(redis.call('HGET', KEYS[1], 'paused_until')) or 0
  if now + pause > p then redis.call('HSET', KEYS[1], 'paused_until', tostring(now + pause)) end
end
return 1
";

/// Where the shared budget state lives, and how leases behave.
pub struct RedisGovernor {
    client: redis::Client,
    conn: tokio::sync::Mutex<Option<ConnectionManager>>,
    /// When connecting last failed: calls fail at once for a second after that, rather
    /// than each waiting for its own attempt.
    failed_at: std::sync::Mutex<Option<std::time::Instant>>,
    acquire: redis::Script,
    release: redis::Script,
    prefix: String,
    lease_ttl: Duration,
    /// The upstreams' names by index: keys name the upstream, not its place in the config.
    upstreams: Vec<String>,
    /// Lease ids: this node's id and a counter.
    node: String,
    next: AtomicU64,
    /// Whether the last command failed (to log an outage once, and its end).
    failing: AtomicBool,
    url: String,
}

/// The Redis half of a lease: which budget, which member.
#[derive(Debug, Clone)]
pub struct RemoteLease {
    keys: [String; 3],
    id: String,
}

/// Why Redis did not answer, with where it was asked.
#[derive(Debug, thiserror::Error)]
#[error("the governor's Redis at {url} {what}")]
pub struct RedisError {
    url: String,
    what: String,
}

impl RedisGovernor {
    /// Parses the URL; connects on first use (a node starts while Redis is down, and
    /// refuses calls until it is up).
    pub fn new(url: &str, upstreams: Vec<String>) -> anyhow::Result<Arc<RedisGovernor>> {
        let mut parsed = url::Url::parse(url)
            .map_err(|e| anyhow::anyhow!("governor \"{url}\" is not a URL: {e}"))?;
        let mut prefix = "headroom".to_string();
        let mut lease_ttl = DEFAULT_LEASE_TTL;
        let mut rest = Vec::new();
        for (k, v) in parsed.query_pairs() {
            match &*k {
                "prefix" => prefix = v.to_string(),
                "lease_ttl" => {
                    lease_ttl = headroom_core::duration::parse_duration(&v).map_err(|e| {
                        anyhow::anyhow!("governor \"{url}\": lease_ttl \"{v}\": {e}")
                    })?
                }
                _ => rest.push((k.to_string(), v.to_string())),
            }
        }
        if rest.is_empty() {
            parsed.set_query(None);
        } else {
            parsed.query_pairs_mut().clear().extend_pairs(rest);
        }
        let client = redis::Client::open(parsed.as_str())
            .map_err(|e| anyhow::anyhow!("governor \"{url}\": {e}"))?;
        let shown = {
            let mut u = parsed.clone();
            if u.password().is_some() {
                let _ = u.set_password(Some("***"));
            }
            u.to_string()
        };
        Ok(Arc::new(RedisGovernor {
            client,
            conn: tokio::sync::Mutex::new(None),
            failed_at: std::sync::Mutex::new(None),
            acquire: redis::Script::new(ACQUIRE),
            release: redis::Script::new(RELEASE),
            prefix,
            lease_ttl,
            upstreams,
            node: format!("{}-{:08x}", std::process::id(), rand::random::<u32>()),
            next: AtomicU64::new(0),
            failing: AtomicBool::new(false),
            url: shown,
        }))
    }

    pub fn lease_ttl(&self) -> Duration {
        self.lease_ttl
    }

    /// The three keys of a budget, under one hash tag.
    pub fn keys(&self, upstream: u32, key: &str) -> [String; 3] {
        let name = self
            .upstreams
            .get(upstream as usize)
            .cloned()
            .unwrap_or_else(|| upstream.to_string());
        // Braces would end the hash tag early: keep them out of it.
        let clean = |s: &str| {
            s.replace('%', "%25")
                .replace('{', "%7B")
                .replace('}', "%7D")
        };
        let tag = format!(
            "{{{}:{}:{}}}",
            clean(&self.prefix),
            clean(&name),
            clean(key)
        );
        [format!("{tag}:s"), format!("{tag}:l"), format!("{tag}:r")]
    }

    async fn connection(&self) -> Result<ConnectionManager, RedisError> {
        let recent_failure = || {
            self.failed_at
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .is_some_and(|at| at.elapsed() < RECONNECT_PAUSE)
        };
        if recent_failure() {
            return Err(self.error("cannot be reached (retrying every second)"));
        }
        let mut conn = self.conn.lock().await;
        if let Some(c) = &*conn {
            return Ok(c.clone());
        }
        if recent_failure() {
            return Err(self.error("cannot be reached (retrying every second)"));
        }
        let made =
            tokio::time::timeout(COMMAND_TIMEOUT, ConnectionManager::new(self.client.clone()))
                .await
                .map_err(|_| self.error("did not answer within 2s"))
                .and_then(|r| r.map_err(|e| self.error(format!("cannot be reached: {e}"))));
        match made {
            Ok(made) => {
                *conn = Some(made.clone());
                Ok(made)
            }
            Err(e) => {
                *self.failed_at.lock().unwrap_or_else(|e| e.into_inner()) =
                    Some(std::time::Instant::now());
                Err(e)
            }
        }
    }

    fn error(&self, what: impl Into<String>) -> RedisError {
        RedisError {
            url: self.url.clone(),
            what: what.into(),
        }
    }

    /// Logs the first failure of an outage, and its end.
    fn note(&self, result: &Result<(), &RedisError>) {
        match result {
            Ok(()) => {
                if self.failing.swap(false, Ordering::Relaxed) {
                    tracing::info!(url = %self.url, "the governor's Redis answers again");
                }
            }
            Err(e) => {
                if !self.failing.swap(true, Ordering::Relaxed) {
                    tracing::error!(error = %e, "the governor's Redis is unreachable: calls are refused (jobs wait) until it answers");
                }
            }
        }
    }

    async fn run<T: redis::FromRedisValue>(
        &self,
        invocation: &redis::ScriptInvocation<'_>,
    ) -> Result<T, RedisError> {
        let mut conn = self.connection().await?;
        let result = tokio::time::timeout(COMMAND_TIMEOUT, invocation.invoke_async(&mut conn))
            .await
            .map_err(|_| self.error("did not answer within 2s"))
            .and_then(|r| r.map_err(|e| self.error(format!("failed: {e}"))));
        self.note(&result.as_ref().map(|_| ()));
        result
    }

    /// Waits for leave from the shared budget, at most `max_wait`. `spacing` is the time
    /// between calls of this cost at the node's own pace (`None`: unpaced).
    #[allow(clippy::too_many_arguments)]
    pub async fn acquire(
        &self,
        upstream: u32,
        key: &str,
        lane: Lane,
        cost: f64,
        spacing: Option<Duration>,
        reserve: f64,
        max_concurrency: u32,
        max_wait: Duration,
    ) -> Result<RemoteLease, Rejection> {
        let deadline = tokio::time::Instant::now() + max_wait;
        let keys = self.keys(upstream, key);
        let id = format!(
            "{}-{}",
            self.node,
            self.next.fetch_add(1, Ordering::Relaxed)
        );
        let spacing_ms = spacing.map_or(0.0, |s| s.as_secs_f64() * 1000.0);
        loop {
            let mut invocation = self.acquire.prepare_invoke();
            for k in &keys {
                invocation.key(k);
            }
            invocation
                .arg(if lane == Lane::Realtime { "r" } else { "b" })
                .arg(spacing_ms)
                .arg(cost)
                .arg(reserve)
                .arg(max_concurrency.max(1))
                .arg(&id)
                .arg(self.lease_ttl.as_millis() as u64)
                .arg(IDLE_TTL.as_millis() as u64)
                .arg(BURST);
            let (granted, wait_ms): (i64, i64) = match self.run(&invocation).await {
                Ok(answer) => answer,
                Err(_) => {
                    return Err(Rejection {
                        reason: RejectReason::Unavailable,
                        retry_after: Duration::from_secs(1),
                    })
                }
            };
            if granted == 1 {
                return Ok(RemoteLease { keys, id });
            }
            let wait = if wait_ms < 0 {
                CONCURRENCY_POLL
            } else {
                Duration::from_millis(wait_ms as u64)
            };
            let now = tokio::time::Instant::now();
            if now + wait > deadline {
                return Err(Rejection {
                    reason: RejectReason::WaitTooLong,
                    retry_after: wait.max(Duration::from_millis(50)),
                });
            }
            tokio::time::sleep(wait).await;
        }
    }

    /// Returns a lease and shares what its call taught (see `RELEASE`).
    pub async fn release(
        &self,
        lease: &RemoteLease,
        learned: Option<Duration>,
        pause: Option<Duration>,
    ) -> Result<(), RedisError> {
        let mut invocation = self.release.prepare_invoke();
        for k in &lease.keys {
            invocation.key(k);
        }
        invocation
            .arg(&lease.id)
            .arg(learned.map_or(0.0, |d| d.as_secs_f64() * 1000.0))
            .arg(LEARNED_TTL.as_millis() as u64)
            .arg(pause.map_or(0, |d| d.as_millis() as u64));
        let _: i64 = self.run(&invocation).await?;
        Ok(())
    }

    /// Ready (`/readyz`): Redis answers a PING through the connection calls use.
    pub async fn ping(&self) -> Result<(), RedisError> {
        let mut conn = self.connection().await?;
        let result = tokio::time::timeout(
            COMMAND_TIMEOUT,
            redis::cmd("PING").query_async::<String>(&mut conn),
        )
        .await
        .map_err(|_| self.error("did not answer within 2s"))
        .and_then(|r| {
            r.map(|_| ())
                .map_err(|e| self.error(format!("failed: {e}")))
        });
        self.note(&result.as_ref().map(|_| ()));
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_share_one_hash_tag_without_stray_braces() {
        let g = RedisGovernor::new(
            "redis://127.0.0.1:6379/?prefix=t1&lease_ttl=5s",
            vec!["crm".into()],
        )
        .unwrap();
        assert_eq!(g.lease_ttl(), Duration::from_secs(5));
        let keys = g.keys(0, "ac{me}");
        assert_eq!(keys[0], "{t1:crm:ac%7Bme%7D}:s");
        assert!(keys.iter().all(|k| k.starts_with("{t1:crm:ac%7Bme%7D}")));
        assert!(RedisGovernor::new("redis://h/?lease_ttl=soon", vec![]).is_err());
    }
}
