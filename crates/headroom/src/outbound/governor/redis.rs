//! The governor's shared half in Redis (`governor = "redis://…"`), so that several nodes
//! spend one budget together.
//!
//! Each node keeps its in-memory governor (`super`): it queues the node's own
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
//! clear reason (and retried later by the jobs); the node keeps running and reconnects
//! within about half a second of Redis answering again (see `Link`).
//!
//! URL: `redis://host:6379/0?prefix=hr&lease_ttl=60s` (both parameters optional).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use headroom_core::{Lane, RejectReason, Rejection};
use redis::aio::MultiplexedConnection;

use crate::cfg::RedisUrl;

/// How far ahead of the pace a real-time call may run, in intervals (as in the core).
const BURST: f64 = 3.0;
/// A learned spacing is used this long after the last node that saw headers wrote it.
const LEARNED_TTL: Duration = Duration::from_secs(60);
/// A budget's keys are dropped after this long without a call.
const IDLE_TTL: Duration = Duration::from_secs(3600);
/// How long one Redis command may take before the call is refused.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(2);
/// How long one connection attempt (TCP and handshake) may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// While Redis is down, the first reconnect attempt comes this soon, and the pause between
/// attempts doubles up to `RECONNECT_MAX`: Redis answering again is noticed within about
/// that long.
const RECONNECT_MIN: Duration = Duration::from_millis(100);
const RECONNECT_MAX: Duration = Duration::from_millis(500);
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
    link: Arc<Link>,
    acquire: redis::Script,
    release: redis::Script,
    prefix: String,
    lease_ttl: Duration,
    /// The upstreams' names by index: keys name the upstream, not its place in the config.
    upstreams: Vec<String>,
    /// Lease ids: this node's id and a counter.
    node: String,
    next: AtomicU64,
    /// Whether the last command was refused by Redis (to log it once, and its end).
    failing: AtomicBool,
}

/// The connection to Redis, and how it comes back.
///
/// Reconnecting is ours, not the redis crate's `ConnectionManager`: its backoff grows to a
/// minute between attempts, and every call awaited it, so a 2-second Redis restart refused
/// calls for minutes. Here, once a connection is lost, calls fail at once (a clear 503) while
/// one background task tries again every `RECONNECT_MAX` at most; the first attempt that
/// succeeds puts the connection back for every call.
struct Link {
    client: redis::Client,
    /// The URL as logs and errors show it (password hidden).
    url: String,
    /// The live connection with its generation (which connection a failed command used), or
    /// `None` before the first connection and while Redis is down.
    conn: std::sync::Mutex<Option<(u64, MultiplexedConnection)>>,
    generations: AtomicU64,
    /// Set while the reconnect task runs: calls fail at once instead of each connecting.
    down: AtomicBool,
    /// Makes the first connection once, however many calls want it at the same time.
    first: tokio::sync::Mutex<()>,
}

impl Link {
    fn error(&self, what: impl Into<String>) -> RedisError {
        RedisError {
            url: self.url.clone(),
            what: what.into(),
        }
    }

    fn current(&self) -> Option<(u64, MultiplexedConnection)> {
        self.conn.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// One attempt, bounded as a whole (TCP connect and handshake).
    async fn connect(&self) -> Result<MultiplexedConnection, RedisError> {
        let config = redis::AsyncConnectionConfig::new()
            .set_connection_timeout(CONNECT_TIMEOUT)
            .set_response_timeout(COMMAND_TIMEOUT);
        match tokio::time::timeout(
            CONNECT_TIMEOUT,
            self.client
                .get_multiplexed_async_connection_with_config(&config),
        )
        .await
        {
            Ok(Ok(c)) => Ok(c),
            Ok(Err(e)) => Err(self.error(format!("cannot be reached: {e}"))),
            Err(_) => Err(self.error(format!(
                "did not answer within {}s",
                CONNECT_TIMEOUT.as_secs()
            ))),
        }
    }

    fn install(&self, conn: MultiplexedConnection) -> (u64, MultiplexedConnection) {
        let generation = self.generations.fetch_add(1, Ordering::Relaxed) + 1;
        *self.conn.lock().unwrap_or_else(|e| e.into_inner()) = Some((generation, conn.clone()));
        (generation, conn)
    }

    /// The connection of `generation` failed (or the first one could not be made): drop it
    /// and, unless it is already running, start the reconnect task. Logs the outage once.
    fn lost(self: &Arc<Self>, generation: Option<u64>, error: &RedisError) {
        {
            let mut conn = self.conn.lock().unwrap_or_else(|e| e.into_inner());
            match (&*conn, generation) {
                // Another call already replaced it: that one is new and may well work.
                (Some((g, _)), Some(failed)) if *g != failed => return,
                _ => *conn = None,
            }
        }
        if self.down.swap(true, Ordering::SeqCst) {
            return;
        }
        tracing::error!(error = %error, url = %self.url, "the governor's Redis is unreachable: calls are refused (jobs wait) until it answers; reconnecting");
        let link = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut pause = RECONNECT_MIN;
            loop {
                tokio::time::sleep(pause).await;
                // The governor is gone (a test, a restart of the state): stop trying.
                let Some(link) = link.upgrade() else { return };
                match link.connect().await {
                    Ok(conn) => {
                        link.install(conn);
                        link.down.store(false, Ordering::SeqCst);
                        tracing::info!(url = %link.url, "the governor's Redis answers again");
                        return;
                    }
                    Err(e) => {
                        tracing::debug!(error = %e, "the governor's Redis still cannot be reached");
                        pause = (pause * 2).min(RECONNECT_MAX);
                    }
                }
            }
        });
    }
}

/// Whether a command's error means the connection is gone (rather than Redis refusing the
/// command): the connection is then dropped and made again.
fn connection_lost(e: &redis::RedisError) -> bool {
    e.is_io_error() || e.is_connection_dropped() || e.is_unrecoverable_error() || e.is_timeout()
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
        let RedisUrl {
            client_url,
            shown,
            prefix,
            lease_ttl,
        } = RedisUrl::parse(url).map_err(anyhow::Error::msg)?;
        let client = redis::Client::open(client_url.as_str())
            .map_err(|e| anyhow::anyhow!("governor \"{shown}\": {e}"))?;
        Ok(Arc::new(RedisGovernor {
            link: Arc::new(Link {
                client,
                url: shown,
                conn: std::sync::Mutex::new(None),
                generations: AtomicU64::new(0),
                down: AtomicBool::new(false),
                first: tokio::sync::Mutex::new(()),
            }),
            acquire: redis::Script::new(ACQUIRE),
            release: redis::Script::new(RELEASE),
            prefix,
            lease_ttl,
            upstreams,
            node: format!("{}-{:08x}", std::process::id(), rand::random::<u32>()),
            next: AtomicU64::new(0),
            failing: AtomicBool::new(false),
        }))
    }

    /// The URL as logs show it (password hidden).
    pub fn url(&self) -> &str {
        &self.link.url
    }

    /// Whether the last word from Redis was that it answers (false before the first call
    /// and while reconnecting).
    pub fn is_up(&self) -> bool {
        self.link.current().is_some() && !self.link.down.load(Ordering::SeqCst)
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

    /// The live connection; while Redis is down, an error at once.
    async fn connection(&self) -> Result<(u64, MultiplexedConnection), RedisError> {
        if let Some(c) = self.link.current() {
            return Ok(c);
        }
        let down = || {
            self.link
                .error("cannot be reached (reconnecting in the background)")
        };
        if self.link.down.load(Ordering::SeqCst) {
            return Err(down());
        }
        // The first connection: one call makes it, the others wait for it.
        let _first = self.link.first.lock().await;
        if let Some(c) = self.link.current() {
            return Ok(c);
        }
        if self.link.down.load(Ordering::SeqCst) {
            return Err(down());
        }
        match self.link.connect().await {
            Ok(conn) => Ok(self.link.install(conn)),
            Err(e) => {
                self.link.lost(None, &e);
                Err(e)
            }
        }
    }

    fn error(&self, what: impl Into<String>) -> RedisError {
        self.link.error(what)
    }

    async fn run<T: redis::FromRedisValue>(
        &self,
        invocation: &redis::ScriptInvocation<'_>,
    ) -> Result<T, RedisError> {
        let (generation, mut conn) = self.connection().await?;
        match tokio::time::timeout(COMMAND_TIMEOUT, invocation.invoke_async(&mut conn)).await {
            Ok(Ok(answer)) => {
                if self.failing.swap(false, Ordering::Relaxed) {
                    tracing::info!(url = %self.link.url, "the governor's Redis takes commands again");
                }
                Ok(answer)
            }
            Ok(Err(e)) if !connection_lost(&e) => {
                // Redis answered, with an error (out of memory, read-only replica…).
                let e = self.error(format!("failed: {e}"));
                if !self.failing.swap(true, Ordering::Relaxed) {
                    tracing::error!(error = %e, "the governor's Redis refuses commands: calls are refused (jobs wait) until it takes them");
                }
                Err(e)
            }
            Ok(Err(e)) => {
                let e = self.error(format!("failed: {e}"));
                self.link.lost(Some(generation), &e);
                Err(e)
            }
            Err(_) => {
                let e = self.error(format!(
                    "did not answer within {}s",
                    COMMAND_TIMEOUT.as_secs()
                ));
                self.link.lost(Some(generation), &e);
                Err(e)
            }
        }
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
        let (generation, mut conn) = self.connection().await?;
        match tokio::time::timeout(
            COMMAND_TIMEOUT,
            redis::cmd("PING").query_async::<String>(&mut conn),
        )
        .await
        {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => {
                let lost = connection_lost(&e);
                let e = self.error(format!("failed: {e}"));
                if lost {
                    self.link.lost(Some(generation), &e);
                }
                Err(e)
            }
            Err(_) => {
                let e = self.error(format!(
                    "did not answer within {}s",
                    COMMAND_TIMEOUT.as_secs()
                ));
                self.link.lost(Some(generation), &e);
                Err(e)
            }
        }
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

    #[test]
    fn the_url_shown_hides_passwords() {
        let g = RedisGovernor::new("redis://user:pw1@h:6379/0?prefix=x", vec![]).unwrap();
        assert_eq!(g.url(), "redis://user:***@h:6379/0");
        let g = RedisGovernor::new("redis+unix:///tmp/r.sock?db=1&pass=pw2", vec![]).unwrap();
        assert!(
            !g.url().contains("pw2") && g.url().contains("pass=***"),
            "{}",
            g.url()
        );
        assert!(!g.is_up());
    }
}
