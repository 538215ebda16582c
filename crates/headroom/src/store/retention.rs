//! Retention (`[jobs] retention`): what is finished and old enough is deleted, a chunk per
//! transaction so that other writers go in between. The statements are shared with the
//! PostgreSQL store (`pg::retention`).
//!
//! A job goes when it is final, its callback is not still to be delivered, it has not changed
//! since `before`, and its dedup window (if any) has ended, so that pruning never lets a
//! duplicate in; its attempts go with it. Dedup rows go once their window has ended. A batch
//! goes when it is final with no record in flight and has not changed since `before`; its
//! records go with it.

use anyhow::Context;
use sqlx::Row;

use super::jobs::{placeholders, FINAL};
use super::Store;
use crate::store::model::jobs::*;

/// Jobs deleted per transaction.
pub(super) const JOB_CHUNK: i64 = 500;
/// Batches deleted per transaction (each with all its records).
pub(super) const BATCH_CHUNK: i64 = 16;

/// Deletes a chunk of prunable jobs and returns their ids (binds: before, now, chunk);
/// `by` pins the index on SQLite.
pub(super) fn prune_jobs_sql(by: &str) -> String {
    format!(
        "DELETE FROM jobs WHERE seq IN (SELECT seq FROM jobs {by} WHERE {FINAL} \
         AND updated_at < ? AND callback <> 'pending' \
         AND (dedup_until IS NULL OR dedup_until <= ?) ORDER BY updated_at LIMIT ?) \
         RETURNING id"
    )
}

/// Deletes the attempts of `n` jobs (binds: their ids).
pub(super) fn prune_attempts_sql(n: usize) -> String {
    format!(
        "DELETE FROM job_attempts WHERE job_id IN ({})",
        placeholders(n)
    )
}

/// Deletes the dedup rows whose window has ended (binds: now).
pub(super) const PRUNE_DEDUP: &str = "DELETE FROM job_dedup WHERE until <= ?";

/// The final batches with nothing in flight unchanged since `before` (binds: before, chunk).
pub(super) fn prunable_batches_sql(by: &str) -> String {
    format!(
        "SELECT seq FROM batches {by} \
         WHERE status IN ('succeeded', 'completed_with_failures', 'cancelled') \
         AND in_flight = 0 AND updated_at < ? ORDER BY updated_at LIMIT ?"
    )
}

pub(super) fn prune_records_sql(n: usize) -> String {
    format!(
        "DELETE FROM batch_records WHERE batch_seq IN ({})",
        placeholders(n)
    )
}

pub(super) fn prune_batches_sql(n: usize) -> String {
    format!("DELETE FROM batches WHERE seq IN ({})", placeholders(n))
}

impl Store {
    pub(super) async fn prune_jobs_before(
        &self,
        before: Millis,
        now: Millis,
    ) -> anyhow::Result<Pruned> {
        let mut out = Pruned::default();
        let sql = prune_jobs_sql("INDEXED BY jobs_finished");
        loop {
            let mut tx = self.write().await?;
            let ids: Vec<String> = sqlx::query_scalar(&sql)
                .bind(before)
                .bind(now)
                .bind(JOB_CHUNK)
                .fetch_all(&mut *tx)
                .await
                .context("cannot delete finished jobs")?;
            if !ids.is_empty() {
                let sql = prune_attempts_sql(ids.len());
                let mut q = sqlx::query(&sql);
                for id in &ids {
                    q = q.bind(id);
                }
                out.attempts += q
                    .execute(&mut *tx)
                    .await
                    .context("cannot delete finished jobs' attempts")?
                    .rows_affected();
            }
            tx.commit().await.context("cannot commit a prune")?;
            out.jobs += ids.len() as u64;
            if (ids.len() as i64) < JOB_CHUNK {
                break;
            }
        }
        out.dedup_ids = sqlx::query(PRUNE_DEDUP)
            .bind(now)
            .execute(self.writer())
            .await
            .context("cannot delete ended dedup ids")?
            .rows_affected();
        Ok(out)
    }

    pub(super) async fn prune_batches_before(&self, before: Millis) -> anyhow::Result<Pruned> {
        let mut out = Pruned::default();
        let sql = prunable_batches_sql("INDEXED BY batches_finished");
        loop {
            let mut tx = self.write().await?;
            let seqs: Vec<i64> = sqlx::query(&sql)
                .bind(before)
                .bind(BATCH_CHUNK)
                .fetch_all(&mut *tx)
                .await
                .context("cannot find finished batches")?
                .iter()
                .map(|r| r.try_get::<i64, _>("seq"))
                .collect::<Result<_, _>>()?;
            if seqs.is_empty() {
                break;
            }
            let sql = prune_records_sql(seqs.len());
            let mut q = sqlx::query(&sql);
            for s in &seqs {
                q = q.bind(s);
            }
            out.records += q
                .execute(&mut *tx)
                .await
                .context("cannot delete finished batches' records")?
                .rows_affected();
            let sql = prune_batches_sql(seqs.len());
            let mut q = sqlx::query(&sql);
            for s in &seqs {
                q = q.bind(s);
            }
            out.batches += q
                .execute(&mut *tx)
                .await
                .context("cannot delete finished batches")?
                .rows_affected();
            tx.commit().await.context("cannot commit a prune")?;
            if (seqs.len() as i64) < BATCH_CHUNK {
                break;
            }
        }
        Ok(out)
    }
}
