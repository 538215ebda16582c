//! `EventStore` on PostgreSQL: the SQLite store's statements (`super::super::events`), with
//! numbered parameters.

use anyhow::Context;

use super::{pg, PgStore};
use crate::store::events::{
    backlog_from_row, bind_event, event_from_row, list_sql, stat_from_row, Bind, EVENT_STATS,
    INSERT_EVENT, JOB_BACKLOG, PRUNE_EVENTS,
};
use crate::store::model::events::*;
use crate::store::model::jobs::{Millis, Page};

impl EventStore for PgStore {
    async fn insert_events(&self, events: &[Event]) -> anyhow::Result<()> {
        if events.is_empty() {
            return Ok(());
        }
        let sql = pg(INSERT_EVENT);
        let mut tx = self.write().await?;
        for e in events {
            bind_event!(sqlx::query(&sql), e)
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
        let sql = pg(&sql);
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
        let done = sqlx::query(&pg(PRUNE_EVENTS))
            .bind(before)
            .execute(self.writer())
            .await
            .context("cannot prune events")?;
        Ok(done.rows_affected())
    }

    async fn event_stats(&self, since: Millis, until: Millis) -> anyhow::Result<Vec<EventStat>> {
        let rows = sqlx::query(&pg(EVENT_STATS))
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
        let rows = sqlx::query(&pg(JOB_BACKLOG))
            .fetch_all(self.pool())
            .await
            .context("cannot count unfinished jobs")?;
        rows.iter().map(backlog_from_row).collect()
    }
}
