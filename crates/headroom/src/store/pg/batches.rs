//! `BatchStore` on PostgreSQL: the SQLite statements (`super::super::batches`), with claims
//! that several nodes can make at once (see `super`).
//!
//! A batch row keeps its record counts by status (pending, in flight, succeeded, failed,
//! cancelled), updated in the same transaction that moves the records, so that reading a
//! batch of 35,000 records costs one row and its failures. Batches take turns: each claim
//! gives the claimed batch the highest `claim_order`, and the active batch with the lowest
//! one goes next.

use crate::store::sql::SqlStore;
use anyhow::Context;
use sqlx::{PgConnection, Row};

use super::pg;
use super::PgStore as Store;
pub(super) use crate::store::batches::{
    batch_status_str, count, insert_records_sql, meta_from_row, parse_batch_status,
    summary_from_row, ACTIVE, BATCH_COLUMNS, FINISH_ROWS, INSERT_ROWS,
};
use crate::store::jobs::{headers_json, lane_str, placeholders, u32_col};
use crate::store::model::jobs::*;

/// The batch with its first `failures_limit` failures.
async fn read_batch(
    conn: &mut PgConnection,
    id: &str,
    failures_limit: u32,
) -> anyhow::Result<Option<BatchSummary>> {
    let Some(row) = sqlx::query(&pg(&format!(
        "SELECT {BATCH_COLUMNS} FROM batches WHERE id = ?"
    )))
    .bind(id)
    .fetch_optional(&mut *conn)
    .await
    .context("cannot read a batch")?
    else {
        return Ok(None);
    };
    let (seq, mut summary) = summary_from_row(&row)?;
    if failures_limit > 0 && summary.failed > 0 {
        let rows = sqlx::query(&pg("SELECT idx, record_id, error FROM batch_records \
             WHERE batch_seq = ? AND status = 'failed' ORDER BY idx LIMIT ?"))
        .bind(seq)
        .bind(i64::from(failures_limit))
        .fetch_all(&mut *conn)
        .await
        .context("cannot read a batch's failures")?;
        summary.failures = rows
            .iter()
            .map(|r| {
                Ok(RecordFailure {
                    index: count(r, "idx")?,
                    record_id: r.try_get("record_id")?,
                    error: r.try_get::<Option<String>, _>("error")?.unwrap_or_default(),
                })
            })
            .collect::<anyhow::Result<_>>()?;
    }
    Ok(Some(summary))
}

/// Inserts a batch and its records inside the caller's transaction (see `insert_batch`).
pub(crate) async fn insert_batch_in(
    conn: &mut PgConnection,
    batch: NewBatch,
) -> anyhow::Result<BatchSummary> {
    let total = batch.records.len() as i64;
    let status = if total == 0 {
        BatchStatus::Succeeded
    } else {
        BatchStatus::Queued
    };
    let seq: i64 = sqlx::query_scalar(&pg(
        "INSERT INTO batches (id, upstream, tenant, lane, format, max_batch_size, method, \
         path, query, headers, max_attempts, callback_url, status, total, pending, \
         created_at, updated_at) \
         VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) RETURNING seq",
    ))
    .bind(&batch.id)
    .bind(&batch.upstream)
    .bind(&batch.tenant)
    .bind(lane_str(batch.lane))
    .bind(&batch.format)
    .bind(i64::from(batch.max_batch_size))
    .bind(&batch.request.method)
    .bind(&batch.request.path)
    .bind(&batch.request.query)
    .bind(headers_json(&batch.request.headers))
    .bind(i64::from(batch.max_attempts))
    .bind(&batch.callback_url)
    .bind(batch_status_str(status))
    .bind(total)
    .bind(total)
    .bind(batch.created_at)
    .bind(batch.created_at)
    .fetch_one(&mut *conn)
    .await
    .with_context(|| format!("cannot store the batch {}", batch.id))?;
    let full_sql = insert_records_sql(INSERT_ROWS);
    for (n, part) in batch.records.chunks(INSERT_ROWS).enumerate() {
        let partial_sql;
        let sql = if part.len() == INSERT_ROWS {
            &full_sql
        } else {
            partial_sql = insert_records_sql(part.len());
            &partial_sql
        };
        let sql = pg(sql);
        let mut q = sqlx::query(&sql);
        for (i, record) in part.iter().enumerate() {
            q = q
                .bind(seq)
                .bind((n * INSERT_ROWS + i) as i64)
                .bind(&record.record_id)
                .bind(&record.payload)
                .bind(batch.created_at);
        }
        q.execute(&mut *conn)
            .await
            .context("cannot store a batch's records")?;
    }
    Ok(BatchSummary {
        id: batch.id,
        status,
        upstream: batch.upstream,
        tenant: batch.tenant,
        total: total as u64,
        succeeded: 0,
        failed: 0,
        pending: total as u64,
        calls: 0,
        possibly_duplicated: 0,
        failures: Vec::new(),
        created_at: batch.created_at,
        updated_at: batch.created_at,
    })
}

impl BatchStore for Store {
    /// One transaction: the batch row, then its records in multi-row INSERTs of
    /// `INSERT_ROWS`. Committed (durable) before this returns.
    async fn insert_batch(&self, batch: NewBatch) -> anyhow::Result<BatchSummary> {
        let mut tx = self.write().await?;
        let summary = insert_batch_in(&mut tx, batch).await?;
        super::notify_in(&mut tx).await?;
        tx.commit().await.context("cannot commit a batch")?;
        Ok(summary)
    }

    async fn get_batch(
        &self,
        id: &str,
        failures_limit: u32,
    ) -> anyhow::Result<Option<BatchSummary>> {
        // One read transaction, so that the counts and the failures agree.
        let mut tx = self.pool().begin().await?;
        let out = read_batch(&mut tx, id, failures_limit).await?;
        tx.commit().await?;
        Ok(out)
    }

    async fn claim_chunk(&self, now: Millis, busy: &[String]) -> anyhow::Result<Option<Chunk>> {
        let mut tx = self.write().await?;
        let mut sql = format!(
            "SELECT seq, id, upstream, tenant, lane, format, max_batch_size, method, path, \
             query, headers, max_attempts FROM batches AS b WHERE b.{ACTIVE}"
        );
        if !busy.is_empty() {
            sql.push_str(&format!(" AND b.id NOT IN ({})", placeholders(busy.len())));
        }
        sql.push_str(
            " AND EXISTS (SELECT 1 FROM batch_records AS r WHERE r.batch_seq = b.seq \
             AND r.status = 'pending' AND r.next_attempt_at <= ?) \
             ORDER BY b.claim_order, b.seq LIMIT 1 FOR UPDATE OF b SKIP LOCKED",
        );
        let sql = pg(&sql);
        let mut q = sqlx::query(&sql);
        for id in busy {
            q = q.bind(id);
        }
        let Some(row) = q
            .bind(now)
            .fetch_optional(&mut *tx)
            .await
            .context("cannot pick a batch to send")?
        else {
            return Ok(None);
        };
        let seq: i64 = row.try_get("seq")?;
        let meta = meta_from_row(&row)?;
        let order: i64 = sqlx::query_scalar(&pg(&format!(
            "SELECT COALESCE(MAX(claim_order), 0) + 1 FROM batches WHERE {ACTIVE}"
        )))
        .fetch_one(&mut *tx)
        .await
        .context("cannot order batches")?;
        let chunk_id = format!("{}/{order}", meta.id);
        // The batch row is locked: no other node claims from this batch meanwhile.
        let rows = sqlx::query(&pg(
            "UPDATE batch_records SET status = 'in_flight', chunk_id = ?, node = ? \
             WHERE batch_seq = ? AND status = 'pending' AND idx IN (\
             SELECT idx FROM batch_records \
             WHERE batch_seq = ? AND status = 'pending' \
             AND next_attempt_at <= ? ORDER BY idx LIMIT ?) \
             RETURNING idx, record_id, payload, attempts",
        ))
        .bind(&chunk_id)
        .bind(self.node())
        .bind(seq)
        .bind(seq)
        .bind(now)
        .bind(i64::from(meta.max_batch_size.max(1)))
        .fetch_all(&mut *tx)
        .await
        .context("cannot claim a batch's records")?;
        let mut records = rows
            .iter()
            .map(|r| {
                Ok(ChunkRecord {
                    index: count(r, "idx")?,
                    record_id: r.try_get("record_id")?,
                    payload: r.try_get("payload")?,
                    attempts: u32_col(r, "attempts")?,
                })
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        records.sort_by_key(|r| r.index);
        let n = records.len() as i64;
        sqlx::query(&pg(
            "UPDATE batches SET status = 'running', pending = pending - ?, \
             in_flight = in_flight + ?, claim_order = ?, updated_at = ? WHERE seq = ?",
        ))
        .bind(n)
        .bind(n)
        .bind(order)
        .bind(now)
        .bind(seq)
        .execute(&mut *tx)
        .await
        .context("cannot update a batch's counts")?;
        tx.commit().await.context("cannot commit a chunk")?;
        Ok(Some(Chunk {
            chunk_id,
            batch: meta,
            records,
        }))
    }

    /// Records that are no longer in flight in this chunk (a chunk finished twice, or
    /// requeued after a restart) are left alone; the call is counted once something moved.
    async fn finish_chunk(
        &self,
        chunk: &Chunk,
        results: &[RecordResult],
        now: Millis,
    ) -> anyhow::Result<()> {
        if results.len() != chunk.records.len() {
            anyhow::bail!(
                "chunk {}: {} results for {} records",
                chunk.chunk_id,
                results.len(),
                chunk.records.len()
            );
        }
        let mut tx = self.write().await?;
        let row = sqlx::query(&pg(
            "SELECT seq, status, max_attempts FROM batches WHERE id = ?",
        ))
        .bind(&chunk.batch.id)
        .fetch_optional(&mut *tx)
        .await
        .context("cannot read a batch")?
        .with_context(|| format!("no batch \"{}\"", chunk.batch.id))?;
        let seq: i64 = row.try_get("seq")?;
        let cancelled = row.try_get::<String, _>("status")? == "cancelled";
        let max_attempts: i64 = row.try_get("max_attempts")?;

        // Records with the same outcome (and error, retry time) move in one statement: a
        // chunk that went through is one UPDATE, a throttled call one more.
        let mut groups: Vec<(&RecordResult, Vec<i64>)> = Vec::new();
        for (record, result) in chunk.records.iter().zip(results) {
            let index = i64::try_from(record.index).context("record index")?;
            match groups.iter_mut().find(|(r, _)| *r == result) {
                Some((_, indexes)) => indexes.push(index),
                None => groups.push((result, vec![index])),
            }
        }
        let (mut succeeded, mut failed, mut pending, mut gone) = (0i64, 0i64, 0i64, 0i64);
        for (result, indexes) in &groups {
            for part in indexes.chunks(FINISH_ROWS) {
                let (set, error, at, burn) = match result {
                    RecordResult::Succeeded => ("'succeeded'", None, None, 1i64),
                    RecordResult::Failed { error } => ("'failed'", Some(error.as_str()), None, 1),
                    RecordResult::Retry {
                        at,
                        error,
                        burn_attempt,
                    } => (
                        "CASE WHEN ? THEN 'cancelled' \
                         WHEN attempts + ? >= ? THEN 'failed' ELSE 'pending' END",
                        Some(error.as_str()),
                        Some(*at),
                        i64::from(*burn_attempt),
                    ),
                };
                let sql = format!(
                    "UPDATE batch_records SET status = {set}, attempts = attempts + ?, \
                     error = ?, next_attempt_at = COALESCE(?, next_attempt_at) \
                     WHERE batch_seq = ? AND status = 'in_flight' AND chunk_id = ? \
                     AND idx IN ({}) RETURNING status",
                    placeholders(part.len())
                );
                let sql = pg(&sql);
                let mut q = sqlx::query(&sql);
                if at.is_some() {
                    q = q.bind(cancelled).bind(burn).bind(max_attempts);
                }
                q = q
                    .bind(burn)
                    .bind(error)
                    .bind(at)
                    .bind(seq)
                    .bind(&chunk.chunk_id);
                for index in part {
                    q = q.bind(*index);
                }
                let rows = q
                    .fetch_all(&mut *tx)
                    .await
                    .context("cannot record a chunk's outcome")?;
                for r in &rows {
                    match r.try_get::<&str, _>("status")? {
                        "succeeded" => succeeded += 1,
                        "failed" => failed += 1,
                        "pending" => pending += 1,
                        _ => gone += 1,
                    }
                }
            }
        }
        let moved = succeeded + failed + pending + gone;
        if moved > 0 {
            sqlx::query(&pg("UPDATE batches SET \
                 status = CASE \
                   WHEN status = 'cancelled' THEN status \
                   WHEN pending + ? = 0 AND in_flight - ? = 0 THEN \
                     CASE WHEN failed + ? > 0 THEN 'completed_with_failures' ELSE 'succeeded' END \
                   ELSE status END, \
                 succeeded = succeeded + ?, failed = failed + ?, pending = pending + ?, \
                 cancelled = cancelled + ?, in_flight = in_flight - ?, calls = calls + 1, \
                 updated_at = ? WHERE seq = ?"))
            .bind(pending)
            .bind(moved)
            .bind(failed)
            .bind(succeeded)
            .bind(failed)
            .bind(pending)
            .bind(gone)
            .bind(moved)
            .bind(now)
            .bind(seq)
            .execute(&mut *tx)
            .await
            .context("cannot update a batch's counts")?;
        }
        tx.commit()
            .await
            .context("cannot commit a chunk's outcome")?;
        Ok(())
    }

    /// Records in flight in a cancelled batch are cancelled instead (they were not sent
    /// again, so they are not counted as possibly duplicated).
    /// Only the records of this node and of dead nodes: the other nodes are sending theirs.
    async fn requeue_in_flight(&self, now: Millis) -> anyhow::Result<u64> {
        requeue_dead(self, true, now).await
    }

    async fn next_chunk_at(&self) -> anyhow::Result<Option<Millis>> {
        let at: Option<i64> = sqlx::query_scalar(&pg(&format!(
            "SELECT MIN((SELECT MIN(r.next_attempt_at) FROM batch_records AS r \
             WHERE r.batch_seq = b.seq AND r.status = 'pending')) \
             FROM batches AS b WHERE b.{ACTIVE}"
        )))
        .fetch_one(self.pool())
        .await
        .context("cannot read when the next chunk is due")?;
        Ok(at)
    }

    /// Pending records become cancelled; records in flight finish (a retry among them is
    /// cancelled then). A batch already finished keeps its status.
    async fn cancel_batch(&self, id: &str, now: Millis) -> anyhow::Result<Option<BatchSummary>> {
        let mut tx = self.write().await?;
        let Some(row) = sqlx::query(&pg("SELECT seq, status FROM batches WHERE id = ?"))
            .bind(id)
            .fetch_optional(&mut *tx)
            .await
            .context("cannot read a batch")?
        else {
            return Ok(None);
        };
        let seq: i64 = row.try_get("seq")?;
        let status = parse_batch_status(row.try_get("status")?)?;
        if matches!(status, BatchStatus::Queued | BatchStatus::Running) {
            let n = sqlx::query(&pg("UPDATE batch_records SET status = 'cancelled' \
                 WHERE batch_seq = ? AND status = 'pending'"))
            .bind(seq)
            .execute(&mut *tx)
            .await
            .context("cannot cancel a batch's records")?
            .rows_affected() as i64;
            sqlx::query(&pg(
                "UPDATE batches SET status = 'cancelled', pending = pending - ?, \
                 cancelled = cancelled + ?, updated_at = ? WHERE seq = ?",
            ))
            .bind(n)
            .bind(n)
            .bind(now)
            .bind(seq)
            .execute(&mut *tx)
            .await
            .context("cannot cancel a batch")?;
        }
        let out = read_batch(&mut tx, id, 100).await?;
        tx.commit().await.context("cannot commit a cancellation")?;
        Ok(out)
    }

    async fn prune_batches(&self, before: Millis) -> anyhow::Result<Pruned> {
        self.db().prune_batches_before(before).await
    }
}

/// Puts back the records in flight of dead nodes (and of this one if `mine`), counted as
/// possibly duplicated; records of a cancelled batch are cancelled instead. Returns how many.
pub(super) async fn requeue_dead(store: &Store, mine: bool, now: Millis) -> anyhow::Result<u64> {
    let held = format!("(node IS NULL OR NOT {} OR node = ?)", super::alive("node"));
    let mut tx = store.write().await?;
    // Only the batches that hold such records: touching (locking) the others would make
    // claims that skip locked batches miss them.
    let batches = sqlx::query(&pg(&format!(
        "SELECT seq, status FROM batches WHERE in_flight > 0 AND seq IN (\
         SELECT batch_seq FROM batch_records WHERE status = 'in_flight' AND {held})"
    )))
    .bind(if mine { store.node() } else { "" })
    .fetch_all(&mut *tx)
    .await
    .context("cannot find batches in flight")?;
    let mut requeued = 0u64;
    for b in &batches {
        let seq: i64 = b.try_get("seq")?;
        let cancelled = b.try_get::<String, _>("status")? == "cancelled";
        let to = if cancelled { "cancelled" } else { "pending" };
        let n = sqlx::query(&pg(&format!(
            "UPDATE batch_records SET status = ?, chunk_id = NULL, node = NULL \
             WHERE batch_seq = ? AND status = 'in_flight' AND {held}"
        )))
        .bind(to)
        .bind(seq)
        .bind(if mine { store.node() } else { "" })
        .execute(&mut *tx)
        .await
        .context("cannot requeue records in flight")?
        .rows_affected() as i64;
        if n == 0 {
            continue;
        }
        let (pending, cancelled_n, duplicated) = if cancelled { (0, n, 0) } else { (n, 0, n) };
        sqlx::query(&pg(
            "UPDATE batches SET in_flight = in_flight - ?, pending = pending + ?, \
             cancelled = cancelled + ?, possibly_duplicated = possibly_duplicated + ?, \
             updated_at = ? WHERE seq = ?",
        ))
        .bind(n)
        .bind(pending)
        .bind(cancelled_n)
        .bind(duplicated)
        .bind(now)
        .bind(seq)
        .execute(&mut *tx)
        .await
        .context("cannot update a batch's counts")?;
        if !cancelled {
            requeued += n as u64;
        }
    }
    tx.commit()
        .await
        .context("cannot commit requeued records")?;
    Ok(requeued)
}
