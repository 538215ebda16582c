//! `EventStore` on SQLite: the event log, and the job counts observability reads.
//!
//! Events arrive in batches from the observer's background writer: one transaction on the
//! writer connection per batch, so the event log never adds a commit per event.

use anyhow::Context;
use sqlx::{ColumnIndex, Database, Decode, Row, Type};

use super::Store;
use crate::store::model::events::*;
use crate::store::model::jobs::{Millis, Page};

pub(super) const EVENT_COLUMNS: &str =
    "seq, at, level, kind, upstream, tenant, queue, endpoint, job_id, \
     attempt, status, wait_ms, outcome, headers, message";

pub(super) fn event_from_row<R, DB>(row: &R) -> anyhow::Result<StoredEvent>
where
    DB: Database,
    R: Row<Database = DB>,
    for<'r> &'r str: ColumnIndex<R>,
    for<'r> String: Decode<'r, DB>,
    String: Type<DB>,
    for<'r> i64: Decode<'r, DB>,
    i64: Type<DB>,
{
    let level: String = row.try_get("level")?;
    let kind: String = row.try_get("kind")?;
    let headers: String = row.try_get("headers")?;
    Ok(StoredEvent {
        seq: row.try_get("seq")?,
        event: Event {
            at: row.try_get("at")?,
            level: Level::parse(&level)
                .with_context(|| format!("unknown event level \"{level}\" in the store"))?,
            kind: Kind::parse(&kind)
                .with_context(|| format!("unknown event kind \"{kind}\" in the store"))?,
            upstream: row.try_get("upstream")?,
            tenant: row.try_get("tenant")?,
            queue: row.try_get("queue")?,
            endpoint: row.try_get("endpoint")?,
            job_id: row.try_get("job_id")?,
            attempt: row
                .try_get::<Option<i64>, _>("attempt")?
                .map(|a| a.clamp(0, u32::MAX as i64) as u32),
            status: row
                .try_get::<Option<i64>, _>("status")?
                .map(|s| s.clamp(0, u16::MAX as i64) as u16),
            wait_ms: row
                .try_get::<Option<i64>, _>("wait_ms")?
                .map(|w| w.max(0) as u64),
            outcome: row.try_get("outcome")?,
            headers: serde_json::from_str(&headers).context("event headers in the store")?,
            message: row.try_get("message")?,
        },
    })
}

pub(super) const INSERT_EVENT: &str =
    "INSERT INTO events (at, level, level_rank, kind, upstream, tenant, queue, \
     endpoint, job_id, attempt, status, wait_ms, outcome, headers, message) \
     VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)";
pub(super) const PRUNE_EVENTS: &str = "DELETE FROM events WHERE at < ?";
// PostgreSQL's SUM of BIGINT is NUMERIC: cast, so that both backends read the sums as i64.
pub(super) const EVENT_STATS: &str =
    "SELECT kind, level, upstream, tenant, queue, CAST(COUNT(*) AS BIGINT) AS n, \
     CAST(COALESCE(SUM(wait_ms), 0) AS BIGINT) AS w FROM events WHERE at >= ? AND at < ? \
     GROUP BY kind, level, upstream, tenant, queue";
pub(super) const JOB_BACKLOG: &str =
    "SELECT upstream, tenant, queue, lane, status, COUNT(*) AS n FROM jobs \
     WHERE status IN ('queued', 'running', 'retry_pending') \
     GROUP BY upstream, tenant, queue, lane, status";

/// The listing query for a filter (its binds: the cursor, `binds`, then the limit).
pub(super) fn list_sql(filter: &EventFilter) -> (String, Vec<Bind>) {
    let (clause, binds) = where_clause(filter);
    (
        format!("SELECT {EVENT_COLUMNS} FROM events WHERE seq > ?{clause} ORDER BY seq LIMIT ?"),
        binds,
    )
}

/// One row of `EVENT_STATS`; `None` for a kind or level this build does not know (a newer
/// node's), which is left out rather than fatal.
pub(super) fn stat_from_row<R, DB>(row: &R) -> anyhow::Result<Option<EventStat>>
where
    DB: Database,
    R: Row<Database = DB>,
    for<'r> &'r str: ColumnIndex<R>,
    for<'r> String: Decode<'r, DB>,
    String: Type<DB>,
    for<'r> i64: Decode<'r, DB>,
    i64: Type<DB>,
{
    let kind: String = row.try_get("kind")?;
    let level: String = row.try_get("level")?;
    let (Some(kind), Some(level)) = (Kind::parse(&kind), Level::parse(&level)) else {
        return Ok(None);
    };
    Ok(Some(EventStat {
        kind,
        level,
        upstream: row.try_get("upstream")?,
        tenant: row.try_get("tenant")?,
        queue: row.try_get("queue")?,
        count: row.try_get::<i64, _>("n")?.max(0) as u64,
        wait_ms: row.try_get::<i64, _>("w")?.max(0) as u64,
    }))
}

/// One row of `JOB_BACKLOG`.
pub(super) fn backlog_from_row<R, DB>(row: &R) -> anyhow::Result<Backlog>
where
    DB: Database,
    R: Row<Database = DB>,
    for<'r> &'r str: ColumnIndex<R>,
    for<'r> String: Decode<'r, DB>,
    String: Type<DB>,
    for<'r> i64: Decode<'r, DB>,
    i64: Type<DB>,
{
    Ok(Backlog {
        upstream: row.try_get("upstream")?,
        tenant: row.try_get("tenant")?,
        queue: row.try_get("queue")?,
        lane: row.try_get("lane")?,
        status: row.try_get("status")?,
        count: row.try_get::<i64, _>("n")?.max(0) as u64,
    })
}

/// The headers column: a JSON list of pairs.
pub(super) fn headers_text(e: &Event) -> String {
    serde_json::to_string(&e.headers).unwrap_or_else(|_| "[]".into())
}

/// Binds `INSERT_EVENT`, on either backend's query.
macro_rules! bind_event {
    ($q:expr, $event:expr) => {{
        let e: &$crate::store::model::events::Event = $event;
        $q.bind(e.at)
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
            .bind($crate::store::events::headers_text(e))
            .bind(&e.message)
    }};
}
pub(super) use bind_event;

/// ` AND …` for every field of the filter, with its binds in order.
pub(super) fn where_clause(filter: &EventFilter) -> (String, Vec<Bind>) {
    let mut sql = String::new();
    let mut binds = Vec::new();
    if let Some(level) = filter.level {
        sql.push_str(" AND level_rank >= ?");
        binds.push(Bind::Int(level.rank()));
    }
    if let Some(kind) = filter.kind {
        sql.push_str(" AND kind = ?");
        binds.push(Bind::Text(kind.as_str().to_string()));
    }
    for (column, value) in [
        ("upstream", &filter.upstream),
        ("tenant", &filter.tenant),
        ("queue", &filter.queue),
    ] {
        if let Some(v) = value {
            sql.push_str(&format!(" AND {column} = ?"));
            binds.push(Bind::Text(v.clone()));
        }
    }
    if let Some(since) = filter.since {
        sql.push_str(" AND at >= ?");
        binds.push(Bind::Int(since));
    }
    if let Some(until) = filter.until {
        sql.push_str(" AND at < ?");
        binds.push(Bind::Int(until));
    }
    (sql, binds)
}

pub(super) enum Bind {
    Int(i64),
    Text(String),
}

impl EventStore for Store {
    async fn insert_events(&self, events: &[Event]) -> anyhow::Result<()> {
        if events.is_empty() {
            return Ok(());
        }
        let mut tx = self.write().await?;
        for e in events {
            bind_event!(sqlx::query(INSERT_EVENT), e)
                .execute(&mut *tx)
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
    ) -> anyhow::Result<Page<StoredEvent>> {
        let limit = limit.max(1);
        let (sql, binds) = list_sql(filter);
        let mut q = sqlx::query(&sql).bind(after.unwrap_or(0));
        for b in binds {
            q = match b {
                Bind::Int(i) => q.bind(i),
                Bind::Text(t) => q.bind(t),
            };
        }
        let rows = q
            .bind(i64::from(limit) + 1)
            .fetch_all(self.pool())
            .await
            .context("cannot list events")?;
        Page::from_rows(&rows, limit, |row| {
            let e = event_from_row(row)?;
            Ok((e.seq, e))
        })
    }

    async fn prune_events(&self, before: Millis) -> anyhow::Result<u64> {
        let done = sqlx::query(PRUNE_EVENTS)
            .bind(before)
            .execute(self.writer())
            .await
            .context("cannot prune events")?;
        Ok(done.rows_affected())
    }

    async fn event_stats(&self, since: Millis, until: Millis) -> anyhow::Result<Vec<EventStat>> {
        let rows = sqlx::query(EVENT_STATS)
            .bind(since)
            .bind(until)
            .fetch_all(self.pool())
            .await
            .context("cannot count events")?;
        rows.iter()
            .filter_map(|row| stat_from_row(row).transpose())
            .collect()
    }

    async fn job_backlog(&self) -> anyhow::Result<Vec<Backlog>> {
        let rows = sqlx::query(JOB_BACKLOG)
            .fetch_all(self.pool())
            .await
            .context("cannot count unfinished jobs")?;
        rows.iter().map(backlog_from_row).collect()
    }
}
