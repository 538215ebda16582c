//! `EventStore`, on either backend: the event log, and the job counts observability reads.
//!
//! Events arrive in batches from the observer's background writer: one transaction on the
//! writer connection per batch, so the event log never adds a commit per event.

use crate::error::Context;

use super::row::StoreRow;
use super::sql::{Sql, SqlStore, Value};
use crate::model::events::*;
use crate::model::jobs::{Millis, Page};

const EVENT_COLUMNS: &str = "seq, at, level, kind, upstream, tenant, queue, endpoint, job_id, \
     attempt, status, wait_ms, outcome, headers, message";

fn event_from_row<R: StoreRow>(row: &R) -> crate::Result<StoredEvent> {
    let level: String = row.col("level")?;
    let kind: String = row.col("kind")?;
    let headers: String = row.col("headers")?;
    Ok(StoredEvent {
        seq: row.col("seq")?,
        event: Event {
            at: row.col("at")?,
            level: Level::parse(&level)
                .with_context(|| format!("unknown event level \"{level}\" in the store"))?,
            kind: Kind::parse(&kind)
                .with_context(|| format!("unknown event kind \"{kind}\" in the store"))?,
            upstream: row.col("upstream")?,
            tenant: row.col("tenant")?,
            queue: row.col("queue")?,
            endpoint: row.col("endpoint")?,
            job_id: row.col("job_id")?,
            attempt: row
                .col::<Option<i64>>("attempt")?
                .map(|a| a.clamp(0, u32::MAX as i64) as u32),
            status: row
                .col::<Option<i64>>("status")?
                .map(|s| s.clamp(0, u16::MAX as i64) as u16),
            wait_ms: row.col::<Option<i64>>("wait_ms")?.map(|w| w.max(0) as u64),
            outcome: row.col("outcome")?,
            headers: serde_json::from_str(&headers).context("event headers in the store")?,
            message: row.col("message")?,
        },
    })
}

const INSERT_EVENT: &str =
    "INSERT INTO events (at, level, level_rank, kind, upstream, tenant, queue, \
     endpoint, job_id, attempt, status, wait_ms, outcome, headers, message) \
     VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)";
const PRUNE_EVENTS: &str = "DELETE FROM events WHERE at < ?";
// PostgreSQL's SUM of BIGINT is NUMERIC: cast, so that both backends read the sums as i64.
const EVENT_STATS: &str =
    "SELECT kind, level, upstream, tenant, queue, CAST(COUNT(*) AS BIGINT) AS n, \
     CAST(COALESCE(SUM(wait_ms), 0) AS BIGINT) AS w FROM events WHERE at >= ? AND at < ? \
     GROUP BY kind, level, upstream, tenant, queue";
const JOB_BACKLOG: &str = "SELECT upstream, tenant, queue, lane, status, COUNT(*) AS n FROM jobs \
     WHERE status IN ('queued', 'running', 'retry_pending') \
     GROUP BY upstream, tenant, queue, lane, status";

/// The listing query for a filter, bound: the cursor, the filter's values, the limit.
fn list_sql(filter: &EventFilter, after: i64, limit: i64) -> Sql<'static> {
    let (clause, binds) = where_clause(filter);
    Sql::new(format!(
        "SELECT {EVENT_COLUMNS} FROM events WHERE seq > ?{clause} ORDER BY seq LIMIT ?"
    ))
    .bind(after)
    .bind_all(binds)
    .bind(limit)
}

/// One row of `EVENT_STATS`; `None` for a kind or level this build does not know (a newer
/// node's), which is left out rather than fatal.
fn stat_from_row<R: StoreRow>(row: &R) -> crate::Result<Option<EventStat>> {
    let kind: String = row.col("kind")?;
    let level: String = row.col("level")?;
    let (Some(kind), Some(level)) = (Kind::parse(&kind), Level::parse(&level)) else {
        return Ok(None);
    };
    Ok(Some(EventStat {
        kind,
        level,
        upstream: row.col("upstream")?,
        tenant: row.col("tenant")?,
        queue: row.col("queue")?,
        count: row.col::<i64>("n")?.max(0) as u64,
        wait_ms: row.col::<i64>("w")?.max(0) as u64,
    }))
}

/// One row of `JOB_BACKLOG`.
fn backlog_from_row<R: StoreRow>(row: &R) -> crate::Result<Backlog> {
    Ok(Backlog {
        upstream: row.col("upstream")?,
        tenant: row.col("tenant")?,
        queue: row.col("queue")?,
        lane: row.col("lane")?,
        status: row.col("status")?,
        count: row.col::<i64>("n")?.max(0) as u64,
    })
}

/// The headers column: a JSON list of pairs.
fn headers_text(e: &Event) -> String {
    serde_json::to_string(&e.headers).unwrap_or_else(|_| "[]".into())
}

/// `INSERT_EVENT`, bound to an event.
fn insert_event(e: &Event) -> Sql<'_> {
    Sql::new(INSERT_EVENT)
        .bind(e.at)
        .bind(e.level.as_str())
        .bind(e.level.rank())
        .bind(e.kind.as_str())
        .bind(&e.upstream)
        .bind(&e.tenant)
        .bind(&e.queue)
        .bind(&e.endpoint)
        .bind(&e.job_id)
        .bind(e.attempt.map(i64::from))
        .bind(e.status.map(i64::from))
        .bind(e.wait_ms.map(|w| w.min(i64::MAX as u64) as i64))
        .bind(&e.outcome)
        .bind(headers_text(e))
        .bind(&e.message)
}

/// ` AND …` for every field of the filter, with its binds in order.
fn where_clause(filter: &EventFilter) -> (String, Vec<Value<'static>>) {
    let mut sql = String::new();
    let mut binds = Vec::new();
    if let Some(level) = filter.level {
        sql.push_str(" AND level_rank >= ?");
        binds.push(Value::Int(level.rank()));
    }
    if let Some(kind) = filter.kind {
        sql.push_str(" AND kind = ?");
        binds.push(Value::from(kind.as_str()));
    }
    for (column, value) in [
        ("upstream", &filter.upstream),
        ("tenant", &filter.tenant),
        ("queue", &filter.queue),
    ] {
        if let Some(v) = value {
            sql.push_str(&format!(" AND {column} = ?"));
            binds.push(Value::from(v.clone()));
        }
    }
    if let Some(since) = filter.since {
        sql.push_str(" AND at >= ?");
        binds.push(Value::Int(since));
    }
    if let Some(until) = filter.until {
        sql.push_str(" AND at < ?");
        binds.push(Value::Int(until));
    }
    (sql, binds)
}

impl<S: SqlStore> EventStore for S {
    /// One transaction per batch of events (on SQLite's writer connection), so the event
    /// log never adds a commit per event.
    async fn insert_events(&self, events: &[Event]) -> crate::Result<()> {
        if events.is_empty() {
            return Ok(());
        }
        let mut tx = self.db().begin().await?;
        for e in events {
            tx.execute(&insert_event(e))
                .await
                .context("cannot store an event")?;
        }
        tx.commit().await.context("cannot store events")?;
        Ok(())
    }

    async fn list_events(
        &self,
        filter: &EventFilter,
        after: Option<i64>,
        limit: u32,
    ) -> crate::Result<Page<StoredEvent>> {
        let limit = limit.max(1);
        let q = list_sql(filter, after.unwrap_or(0), i64::from(limit) + 1);
        let rows = self
            .db()
            .pool()
            .fetch_all(&q)
            .await
            .context("cannot list events")?;
        Page::from_rows(&rows, limit, |row| {
            let e = event_from_row(row)?;
            Ok((e.seq, e))
        })
    }

    async fn prune_events(&self, before: Millis) -> crate::Result<u64> {
        self.db()
            .writer()
            .execute(&Sql::new(PRUNE_EVENTS).bind(before))
            .await
            .context("cannot prune events")
    }

    async fn event_stats(&self, since: Millis, until: Millis) -> crate::Result<Vec<EventStat>> {
        let q = Sql::new(EVENT_STATS).bind(since).bind(until);
        let rows = self
            .db()
            .pool()
            .fetch_all(&q)
            .await
            .context("cannot count events")?;
        rows.iter()
            .filter_map(|row| stat_from_row(row).transpose())
            .collect()
    }

    async fn job_backlog(&self) -> crate::Result<Vec<Backlog>> {
        let rows = self
            .db()
            .pool()
            .fetch_all(&Sql::new(JOB_BACKLOG))
            .await
            .context("cannot count unfinished jobs")?;
        rows.iter().map(backlog_from_row).collect()
    }
}
