//! Retention on PostgreSQL: the statements of `crate::store::retention`, numbered.

use anyhow::Context;
use sqlx::Row;

use super::pg;
use super::PgStore as Store;
use crate::store::model::jobs::*;
use crate::store::retention::{
    prunable_batches_sql, prune_attempts_sql, prune_batches_sql, prune_jobs_sql, prune_records_sql,
    BATCH_CHUNK, JOB_CHUNK, PRUNE_DEDUP,
};

impl Store {
    pub(super) async fn prune_jobs_before(
        &self,
        before: Millis,
        now: Millis,
    ) -> anyhow::Result<Pruned> {
        let mut out = Pruned::default();
        let sql = pg(&prune_jobs_sql(""));
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
                let sql = pg(&prune_attempts_sql(ids.len()));
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
        out.dedup_ids = sqlx::query(&pg(PRUNE_DEDUP))
            .bind(now)
            .execute(self.writer())
            .await
            .context("cannot delete ended dedup ids")?
            .rows_affected();
        Ok(out)
    }

    pub(super) async fn prune_batches_before(&self, before: Millis) -> anyhow::Result<Pruned> {
        let mut out = Pruned::default();
        // Locked so that two nodes pruning at once do not trip over the same batches.
        let sql = pg(&format!(
            "{} FOR UPDATE SKIP LOCKED",
            prunable_batches_sql("")
        ));
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
            let sql = pg(&prune_records_sql(seqs.len()));
            let mut q = sqlx::query(&sql);
            for s in &seqs {
                q = q.bind(s);
            }
            out.records += q
                .execute(&mut *tx)
                .await
                .context("cannot delete finished batches' records")?
                .rows_affected();
            let sql = pg(&prune_batches_sql(seqs.len()));
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
