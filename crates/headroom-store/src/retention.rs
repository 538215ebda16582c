//! Retention (`[jobs] retention`): what is finished and old enough is deleted, a chunk per
//! transaction so that other writers go in between. Written once for both backends.
//!
//! A job goes when it is final, its callback is not still to be delivered, it has not changed
//! since `before`, and its dedup window (if any) has ended, so that pruning never lets a
//! duplicate in; its attempts go with it. Dedup rows go once their window has ended. A batch
//! goes when it is final with no record in flight and has not changed since `before`; its
//! records go with it.

use crate::error::Context;

use super::jobs::FINAL;
use super::row::StoreRow;
use super::sql::{placeholders, Db, Sql};
use crate::model::jobs::*;

/// Jobs deleted per transaction.
const JOB_CHUNK: i64 = 500;
/// Batches deleted per transaction (each with all its records).
const BATCH_CHUNK: i64 = 16;

/// Deletes a chunk of prunable jobs and returns their ids (binds: before, now, chunk);
/// `by` pins the index on SQLite.
fn prune_jobs_sql(by: &str) -> String {
    format!(
        "DELETE FROM jobs WHERE seq IN (SELECT seq FROM jobs {by} WHERE {FINAL} \
         AND updated_at < ? AND callback <> 'pending' \
         AND (dedup_until IS NULL OR dedup_until <= ?) ORDER BY updated_at LIMIT ?) \
         RETURNING id"
    )
}

/// Deletes the attempts of `n` jobs (binds: their ids).
fn prune_attempts_sql(n: usize) -> String {
    format!(
        "DELETE FROM job_attempts WHERE job_id IN ({})",
        placeholders(n)
    )
}

/// Deletes the dedup rows whose window has ended (binds: now).
const PRUNE_DEDUP: &str = "DELETE FROM job_dedup WHERE until <= ?";

/// The final batches with nothing in flight unchanged since `before` (binds: before, chunk).
fn prunable_batches_sql(by: &str) -> String {
    format!(
        "SELECT seq FROM batches {by} \
         WHERE status IN ('succeeded', 'completed_with_failures', 'cancelled') \
         AND in_flight = 0 AND callback <> 'pending' AND updated_at < ? \
         ORDER BY updated_at LIMIT ?"
    )
}

fn prune_records_sql(n: usize) -> String {
    format!(
        "DELETE FROM batch_records WHERE batch_seq IN ({})",
        placeholders(n)
    )
}

fn prune_batches_sql(n: usize) -> String {
    format!("DELETE FROM batches WHERE seq IN ({})", placeholders(n))
}

impl Db<'_> {
    pub(super) async fn prune_jobs_before(
        self,
        before: Millis,
        now: Millis,
    ) -> crate::Result<Pruned> {
        let mut out = Pruned::default();
        let sql = prune_jobs_sql(&self.dialect().indexed_by("jobs_finished"));
        loop {
            let mut tx = self.begin().await?;
            let q = Sql::new(&sql).bind(before).bind(now).bind(JOB_CHUNK);
            let ids: Vec<String> = tx
                .fetch_all(&q)
                .await
                .context("cannot delete finished jobs")?
                .iter()
                .map(|r| r.col("id"))
                .collect::<crate::Result<_>>()?;
            if !ids.is_empty() {
                let q = Sql::new(prune_attempts_sql(ids.len())).bind_all(&ids);
                out.attempts += tx
                    .execute(&q)
                    .await
                    .context("cannot delete finished jobs' attempts")?;
            }
            tx.commit().await.context("cannot commit a prune")?;
            out.jobs += ids.len() as u64;
            if (ids.len() as i64) < JOB_CHUNK {
                break;
            }
        }
        out.dedup_ids = self
            .writer()
            .execute(&Sql::new(PRUNE_DEDUP).bind(now))
            .await
            .context("cannot delete ended dedup ids")?;
        Ok(out)
    }

    pub(super) async fn prune_batches_before(self, before: Millis) -> crate::Result<Pruned> {
        let mut out = Pruned::default();
        // Locked on PostgreSQL so that two nodes pruning at once do not trip over the same
        // batches.
        let dialect = self.dialect();
        let sql = format!(
            "{}{}",
            prunable_batches_sql(&dialect.indexed_by("batches_finished")),
            dialect.skip_locked()
        );
        loop {
            let mut tx = self.begin().await?;
            let seqs: Vec<i64> = tx
                .fetch_all(&Sql::new(&sql).bind(before).bind(BATCH_CHUNK))
                .await
                .context("cannot find finished batches")?
                .iter()
                .map(|r| r.col("seq"))
                .collect::<crate::Result<_>>()?;
            if seqs.is_empty() {
                break;
            }
            let q = Sql::new(format!(
                "DELETE FROM bulk_jobs WHERE batch_seq IN ({})",
                super::sql::placeholders(seqs.len())
            ))
            .bind_all(seqs.iter().copied());
            tx.execute(&q)
                .await
                .context("cannot delete finished batches' bulk jobs")?;
            let q = Sql::new(prune_records_sql(seqs.len())).bind_all(seqs.iter().copied());
            out.records += tx
                .execute(&q)
                .await
                .context("cannot delete finished batches' records")?;
            let q = Sql::new(prune_batches_sql(seqs.len())).bind_all(seqs.iter().copied());
            out.batches += tx
                .execute(&q)
                .await
                .context("cannot delete finished batches")?;
            tx.commit().await.context("cannot commit a prune")?;
            if (seqs.len() as i64) < BATCH_CHUNK {
                break;
            }
        }
        // Exports over and unchanged since `before`, with their pages.
        let mut tx = self.begin().await?;
        let q = Sql::new(
            "DELETE FROM export_pages WHERE export_seq IN \
             (SELECT seq FROM exports WHERE phase = 'done' AND updated_at < ?)",
        )
        .bind(before);
        tx.execute(&q)
            .await
            .context("cannot delete finished exports' pages")?;
        let q =
            Sql::new("DELETE FROM exports WHERE phase = 'done' AND updated_at < ?").bind(before);
        out.batches += tx
            .execute(&q)
            .await
            .context("cannot delete finished exports")?;
        tx.commit().await.context("cannot commit a prune")?;
        Ok(out)
    }
}
