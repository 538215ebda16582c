//! The PostgreSQL store, for several `headroom serve` nodes sharing one database.
//!
//! The same tables and the same SQL as the SQLite store (`super`), with the differences that
//! several writers at once bring:
//! - claims lock what they take with `FOR UPDATE SKIP LOCKED`, so that nodes claiming at
//!   the same time take different jobs, records and schedule slots without waiting for each
//!   other; throttled and sequential queues, whose claims depend on what is running, are
//!   claimed under a transaction-scoped advisory lock (one node at a time decides them);
//! - every running job and record in flight names the node that holds it. Each node
//!   heartbeats into `nodes` (on the database's clock, so node clocks may differ); the work
//!   of a node not seen for `NODE_TIMEOUT` goes back to the queue, and only that work: a
//!   node that starts does not take back the jobs its neighbours are running;
//! - a job or batch stored wakes every node's dispatcher through `NOTIFY` (LISTEN/NOTIFY),
//!   so that work stored through one node starts at once on any of them.
//!
//! The operations themselves are written once for both backends (`super::sql` and the
//! modules beside it); what is PostgreSQL's alone is here: the connection, this node's
//! heartbeat and the reaping of dead nodes, and LISTEN/NOTIFY.

use std::time::Duration;

use crate::error::Context;

use crate::sql::{Sql, SqlStore};
use sqlx::postgres::{PgListener, PgPoolOptions};
use sqlx::{PgPool, Postgres, Transaction};

/// A node not seen for this long is dead: its running jobs and records in flight go back.
pub const NODE_TIMEOUT: Duration = Duration::from_secs(10);
/// How often a node says it is alive (and looks for dead ones).
const HEARTBEAT: Duration = Duration::from_secs(1);
/// The channel that wakes dispatchers when work arrives.
pub const WAKE_CHANNEL: &str = "headroom_work";
/// The advisory lock under which throttled and sequential queues are claimed.
pub(crate) const CLAIM_LOCK: i64 = 0x6864_726d_636c_6d00; // "hdrmclm"

#[derive(Clone)]
pub struct PgStore {
    pool: PgPool,
    /// This node's id: the holder of what it claims.
    node: std::sync::Arc<str>,
    url: String,
    /// Writes that share transactions (group commit, see `writer`).
    ops: tokio::sync::mpsc::Sender<crate::writer::Op>,
}

impl std::fmt::Debug for PgStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgStore").field("node", &self.node).finish()
    }
}

impl PgStore {
    /// Connects to a `postgres://` URL, brings the schema up to date (migrations run under
    /// sqlx's advisory lock, so nodes starting together do not collide), registers this node
    /// and starts its heartbeat.
    pub async fn open(url: &str) -> crate::Result<PgStore> {
        let shown = redact(url);
        let pool = PgPoolOptions::new()
            .max_connections(16)
            .acquire_timeout(Duration::from_secs(10))
            // A connection given back inside a transaction (a failed COMMIT) is closed
            // rather than reused: the next write gets a fresh one.
            .after_release(|conn, _| {
                Box::pin(async move { Ok(!sqlx::Connection::is_in_transaction(conn)) })
            })
            .connect(url)
            .await
            .with_context(|| format!("cannot connect to the PostgreSQL store {shown}"))?;
        sqlx::migrate!("./migrations/postgres")
            .run(&pool)
            .await
            .with_context(|| format!("cannot bring the PostgreSQL store {shown} up to date"))?;
        let node: std::sync::Arc<str> = format!(
            "{}-{}-{:08x}",
            hostname(),
            std::process::id(),
            rand::random::<u32>()
        )
        .into();
        let ops = crate::writer::spawn(crate::writer::Writer::Postgres {
            pool: pool.clone(),
            node: node.to_string(),
        });
        let store = PgStore {
            pool,
            node,
            url: url.to_string(),
            ops,
        };
        store.heartbeat().await?;
        tokio::spawn(heartbeat_loop(store.clone()));
        Ok(store)
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// Where grouped writes are handed (`crate::writer`).
    pub(super) fn ops(&self) -> &tokio::sync::mpsc::Sender<crate::writer::Op> {
        &self.ops
    }

    /// This node's id in `nodes` and on what it claims.
    pub fn node(&self) -> &str {
        &self.node
    }

    pub(crate) async fn write(&self) -> crate::Result<Transaction<'static, Postgres>> {
        self.pool
            .begin()
            .await
            .context("cannot start a write transaction on PostgreSQL")
    }

    /// Ready (`/readyz`): a write (this node's heartbeat) commits within 5 s.
    pub async fn check_ready(&self) -> Result<(), String> {
        match tokio::time::timeout(Duration::from_secs(5), self.heartbeat()).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(format!("cannot write: {e:#}")),
            Err(_) => Err("PostgreSQL did not commit a write within 5s".to_string()),
        }
    }

    /// Says this node is alive, on the database's clock.
    async fn heartbeat(&self) -> crate::Result<()> {
        let q = Sql::new(format!(
            "INSERT INTO nodes (id, seen_at) VALUES (?, {DB_NOW}) \
             ON CONFLICT (id) DO UPDATE SET seen_at = excluded.seen_at"
        ))
        .bind(&*self.node);
        self.db()
            .pool()
            .execute(&q)
            .await
            .with_context(|| format!("node {}: cannot write its heartbeat", self.node))?;
        Ok(())
    }

    /// Calls `wake` whenever any node stores work, until the store is dropped everywhere.
    /// Reconnects (with a pause) when the connection drops; `wake` is also called then, in
    /// case a notification was missed.
    pub fn listen(&self, wake: impl Fn() + Send + Sync + 'static) {
        let url = self.url.clone();
        tokio::spawn(async move {
            loop {
                match PgListener::connect(&url).await {
                    Ok(mut listener) => {
                        if let Err(e) = listener.listen(WAKE_CHANNEL).await {
                            tracing::warn!(error = %e, "cannot LISTEN on PostgreSQL; retrying");
                        } else {
                            wake();
                            while listener.recv().await.is_ok() {
                                wake();
                            }
                        }
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot connect to PostgreSQL to LISTEN; retrying")
                    }
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        });
    }
}

/// The database's clock in milliseconds since the epoch.
const DB_NOW: &str = "(EXTRACT(EPOCH FROM clock_timestamp()) * 1000)::BIGINT";

/// The condition "the node `col` is alive" (one bind: none; uses the timeout constant).
pub(crate) fn alive(col: &str) -> String {
    format!(
        "{col} IN (SELECT id FROM nodes WHERE seen_at >= {DB_NOW} - {})",
        NODE_TIMEOUT.as_millis()
    )
}

/// Heartbeats, and gives back the work of dead nodes. Stops when this is the last clone of
/// the store (the pool is then only held here).
async fn heartbeat_loop(store: PgStore) {
    let mut tick = tokio::time::interval(HEARTBEAT);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut failing = false;
    loop {
        tick.tick().await;
        if std::sync::Arc::strong_count(&store.node) == 1 {
            return;
        }
        let result = async {
            store.heartbeat().await?;
            store.reap_dead_nodes().await
        }
        .await;
        match result {
            Ok(()) if failing => {
                failing = false;
                tracing::info!(node = %store.node, "PostgreSQL store reachable again");
            }
            Ok(()) => {}
            Err(e) if !failing => {
                failing = true;
                tracing::error!(node = %store.node, error = %format!("{e:#}"), "PostgreSQL store unreachable; retrying every second");
            }
            Err(_) => {}
        }
    }
}

impl PgStore {
    /// Puts the running jobs and records in flight of dead nodes back in the queue, then
    /// forgets those nodes. Returns (jobs, records).
    pub async fn reap_dead_nodes(&self) -> crate::Result<()> {
        // Requeued to run now: the store has no clock of its own; a node's stored times are
        // the system's in production.
        let now = crate::time::system_millis();
        let jobs = crate::jobs::requeue_jobs(self.db(), false, now).await?;
        let records = crate::batches::requeue_records(self.db(), false, now).await?;
        if jobs > 0 || records > 0 {
            tracing::warn!(
                jobs,
                records,
                "work of a node that stopped answering goes again (it may have been sent once)"
            );
            self.notify().await?;
        }
        let q = Sql::new(format!("DELETE FROM nodes WHERE seen_at < {DB_NOW} - ?"))
            .bind(NODE_TIMEOUT.as_millis() as i64 * 6);
        self.db()
            .pool()
            .execute(&q)
            .await
            .context("cannot forget dead nodes")?;
        Ok(())
    }

    /// Wakes every node's dispatcher.
    pub(crate) async fn notify(&self) -> crate::Result<()> {
        sqlx::query("SELECT pg_notify($1, '')")
            .bind(WAKE_CHANNEL)
            .execute(&self.pool)
            .await
            .context("cannot NOTIFY the other nodes")?;
        Ok(())
    }
}

/// `NOTIFY` inside a transaction: delivered when (if) it commits.
pub(super) async fn notify_in(conn: &mut sqlx::PgConnection) -> crate::Result<()> {
    sqlx::query("SELECT pg_notify($1, '')")
        .bind(WAKE_CHANNEL)
        .execute(conn)
        .await
        .context("cannot NOTIFY the other nodes")?;
    Ok(())
}

/// The URL without its password, for messages (a store or a governor URL): the userinfo's
/// password and any query parameter named like a password (`password`, `pass`) become
/// `***`. Text the URL parser refuses is redacted by hand (whatever
/// sits between `user:` and the authority's last `@`).
pub fn redact(url: &str) -> String {
    let Ok(mut u) = url::Url::parse(url) else {
        return redact_by_hand(url);
    };
    let mut changed = false;
    if u.password().is_some() {
        let _ = u.set_password(Some("***"));
        changed = true;
    }
    // `password=` (libpq), `pass=` (redis+unix): any key naming a password.
    let secret_key = |k: &str| k.to_ascii_lowercase().contains("pass");
    if u.query_pairs().any(|(k, _)| secret_key(&k)) {
        let pairs: Vec<(String, String)> = u
            .query_pairs()
            .map(|(k, v)| {
                let v = if secret_key(&k) {
                    "***".into()
                } else {
                    v.into_owned()
                };
                (k.into_owned(), v)
            })
            .collect();
        u.query_pairs_mut().clear().extend_pairs(pairs);
        changed = true;
    }
    if changed {
        u.to_string()
    } else {
        url.to_string()
    }
}

fn redact_by_hand(url: &str) -> String {
    let Some(start) = url.find("://").map(|i| i + 3) else {
        return url.to_string();
    };
    let rest = &url[start..];
    let authority = &rest[..rest.find(['/', '?', '#']).unwrap_or(rest.len())];
    match authority.rfind('@') {
        Some(at) => match authority[..at].find(':') {
            Some(colon) => format!(
                "{}{}:***{}",
                &url[..start],
                &authority[..colon],
                &rest[at..]
            ),
            None => url.to_string(),
        },
        None => url.to_string(),
    }
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "node".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_not_shown() {
        assert_eq!(
            redact("postgres://u:secret@localhost/db"),
            "postgres://u:***@localhost/db"
        );
        assert_eq!(redact("postgres://localhost/db"), "postgres://localhost/db");
        assert_eq!(
            redact("postgres://u@localhost/db?password=secret&sslmode=disable"),
            "postgres://u@localhost/db?password=***&sslmode=disable"
        );
        // Not a URL the parser takes (a space in the port): still redacted.
        let shown = redact("postgres://u:se@cr:et@local host:5x/db");
        assert!(
            !shown.contains("se@cr") && !shown.contains("et@"),
            "{shown}"
        );
        assert!(shown.starts_with("postgres://u:***@local host"), "{shown}");
    }
}
