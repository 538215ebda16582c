//! `BatchStore`, on either backend.
//!
//! A batch row keeps its record counts by status (pending, in flight, succeeded, failed,
//! cancelled), updated in the same transaction that moves the records, so that reading a
//! batch of 35,000 records costs one row and its failures. Batches take turns: each claim
//! gives the claimed batch the highest `claim_order`, and the active batch with the lowest
//! one goes next.
//!
//! On PostgreSQL several nodes claim at once: a claim locks the batch it takes (`FOR UPDATE
//! OF b SKIP LOCKED`, so that no other node claims from it meanwhile), records in flight
//! name the node sending them (the node guard), and a stored batch wakes every node.

use crate::error::Context;

use super::jobs::{
    headers_json, lane_str, parse_headers, parse_lane, placeholders, postpone_callbacks_in,
    record_callback_attempt, u32_col, CALLBACK_HOLD,
};
use super::row::StoreRow;
use super::sql::{Conn, Db, Sql, SqlStore, Tx};
use crate::model::jobs::*;

/// Records per INSERT statement (5 values each, well under SQLite's 32,766 variables).
const INSERT_ROWS: usize = 400;
/// Records per UPDATE statement when finishing a chunk.
const FINISH_ROWS: usize = 500;

const BATCH_COLUMNS: &str = "seq, id, upstream, tenant, lane, format, max_batch_size, method, \
     path, query, headers, max_attempts, status, total, succeeded, failed, pending, in_flight, \
     calls, possibly_duplicated, created_at, updated_at";

const ACTIVE: &str = "status IN ('queued', 'running')";

pub(super) fn parse_batch_status(s: &str) -> crate::Result<BatchStatus> {
    BatchStatus::parse(s).ok_or_else(|| {
        crate::StoreError::internal(format!("unknown batch status \"{s}\" in the store"))
    })
}

fn count<R: StoreRow>(row: &R, name: &str) -> crate::Result<u64> {
    let v: i64 = row.col(name)?;
    u64::try_from(v).with_context(|| format!("stored {name} {v} is negative"))
}

/// The batch's row as a summary (failures not yet filled in), and its sequence.
fn summary_from_row<R: StoreRow>(row: &R) -> crate::Result<(i64, BatchSummary)> {
    Ok((
        row.col("seq")?,
        BatchSummary {
            id: row.col("id")?,
            status: parse_batch_status(&row.col::<String>("status")?)?,
            upstream: row.col("upstream")?,
            tenant: row.col("tenant")?,
            total: count(row, "total")?,
            succeeded: count(row, "succeeded")?,
            failed: count(row, "failed")?,
            pending: count(row, "pending")? + count(row, "in_flight")?,
            calls: count(row, "calls")?,
            possibly_duplicated: count(row, "possibly_duplicated")?,
            failures: Vec::new(),
            bulk_jobs: Vec::new(),
            created_at: row.col("created_at")?,
            updated_at: row.col("updated_at")?,
        },
    ))
}

pub(crate) fn meta_from_row<R: StoreRow>(row: &R) -> crate::Result<BatchMeta> {
    Ok(BatchMeta {
        id: row.col("id")?,
        upstream: row.col("upstream")?,
        tenant: row.col("tenant")?,
        lane: parse_lane(&row.col::<String>("lane")?)?,
        format: row.col("format")?,
        max_batch_size: u32_col(row, "max_batch_size")?,
        request: JobRequest {
            method: row.col("method")?,
            path: row.col("path")?,
            query: row.col("query")?,
            headers: parse_headers(&row.col::<String>("headers")?)?,
            body: None,
            body_is_json: false,
        },
        max_attempts: u32_col(row, "max_attempts")?,
    })
}

/// The batch with its first `failures_limit` failures.
async fn read_batch(
    conn: &mut Conn<'_>,
    id: &str,
    failures_limit: u32,
) -> crate::Result<Option<BatchSummary>> {
    let q = Sql::new(format!("SELECT {BATCH_COLUMNS} FROM batches WHERE id = ?")).bind(id);
    let Some(row) = conn
        .fetch_optional(&q)
        .await
        .context("cannot read a batch")?
    else {
        return Ok(None);
    };
    let (seq, mut summary) = summary_from_row(&row)?;
    if failures_limit > 0 && summary.failed > 0 {
        let q = Sql::new(
            "SELECT idx, record_id, error FROM batch_records \
             WHERE batch_seq = ? AND status = 'failed' ORDER BY idx LIMIT ?",
        )
        .bind(seq)
        .bind(i64::from(failures_limit));
        let rows = conn
            .fetch_all(&q)
            .await
            .context("cannot read a batch's failures")?;
        summary.failures = rows
            .iter()
            .map(|r| {
                Ok(RecordFailure {
                    index: count(r, "idx")?,
                    record_id: r.col("record_id")?,
                    error: r.col::<Option<String>>("error")?.unwrap_or_default(),
                })
            })
            .collect::<crate::Result<_>>()?;
    }
    Ok(Some(summary))
}

/// Claims up to `max_batch_size` due pending records of the batch `seq` (its row locked by
/// the caller) as a new chunk, and moves the batch's counts: the chunk's id and records.
pub(crate) async fn claim_records_in(
    tx: &mut Tx,
    db: Db<'_>,
    seq: i64,
    meta: &BatchMeta,
    now: Millis,
) -> crate::Result<(String, Vec<ChunkRecord>)> {
    let dialect = db.dialect();
    let q = Sql::new(format!(
        "SELECT COALESCE(MAX(claim_order), 0) + 1 AS n FROM batches WHERE {ACTIVE}"
    ));
    let order: i64 = tx
        .fetch_optional(&q)
        .await
        .context("cannot order batches")?
        .context("cannot order batches: no row")?
        .col("n")?;
    let chunk_id = format!("{}/{order}", meta.id);
    // SQLite: `INDEXED BY` makes the planner walk the batch's pending records in index
    // order (stopping at the chunk's size) instead of sorting all the due ones.
    // PostgreSQL: the batch row is locked, so no other node claims from this batch
    // meanwhile; the records name this node (the node guard). The chosen indexes are an
    // array computed once: as `idx IN (subquery)` the planner may rescan the subquery for
    // every record of the batch (seconds for a bulk job's 10,000 of 100,000).
    let (node_set, still_pending, open, close) = match db.node() {
        None => ("", "", "IN (", ")"),
        Some(_) => (
            ", node = ?",
            " AND status = 'pending'",
            "= ANY(ARRAY(",
            "))",
        ),
    };
    let q = Sql::new(format!(
        "UPDATE batch_records SET status = 'in_flight', chunk_id = ?{node_set} \
         WHERE batch_seq = ?{still_pending} AND idx {open}\
         SELECT idx FROM batch_records {} \
         WHERE batch_seq = ? AND status = 'pending' \
         AND next_attempt_at <= ? ORDER BY idx LIMIT ?{close} \
         RETURNING idx, record_id, payload, attempts",
        dialect.indexed_by("batch_records_status")
    ))
    .bind(&chunk_id)
    .bind_all(db.node())
    .bind(seq)
    .bind(seq)
    .bind(now)
    .bind(i64::from(meta.max_batch_size.max(1)));
    let rows = tx
        .fetch_all(&q)
        .await
        .context("cannot claim a batch's records")?;
    let mut records = rows
        .iter()
        .map(|r| {
            Ok(ChunkRecord {
                index: count(r, "idx")?,
                record_id: r.col("record_id")?,
                payload: r.col("payload")?,
                attempts: u32_col(r, "attempts")?,
            })
        })
        .collect::<crate::Result<Vec<_>>>()?;
    records.sort_by_key(|r| r.index);
    let n = records.len() as i64;
    let q = Sql::new(
        "UPDATE batches SET status = 'running', pending = pending - ?, \
         in_flight = in_flight + ?, claim_order = ?, updated_at = ? WHERE seq = ?",
    )
    .bind(n)
    .bind(n)
    .bind(order)
    .bind(now)
    .bind(seq);
    tx.execute(&q)
        .await
        .context("cannot update a batch's counts")?;
    Ok((chunk_id, records))
}

/// Records the outcome of each of a chunk's `records` (same order as `results`) and counts
/// `calls`, inside the caller's transaction. Records no longer in flight in this chunk (a
/// chunk finished twice, or requeued after a restart) are left alone; the calls are counted
/// once something moved.
pub(crate) async fn finish_records_in(
    tx: &mut Tx,
    batch_id: &str,
    chunk_id: &str,
    records: &[ChunkRecord],
    results: &[RecordResult],
    now: Millis,
    calls: i64,
) -> crate::Result<()> {
    if results.len() != records.len() {
        crate::error::bail!(
            "chunk {chunk_id}: {} results for {} records",
            results.len(),
            records.len()
        );
    }
    let q = Sql::new("SELECT seq, status, max_attempts FROM batches WHERE id = ?").bind(batch_id);
    let row = tx
        .fetch_optional(&q)
        .await
        .context("cannot read a batch")?
        .with_context(|| format!("no batch \"{}\"", batch_id))?;
    let seq: i64 = row.col("seq")?;
    let cancelled = row.col::<String>("status")? == "cancelled";
    let max_attempts: i64 = row.col("max_attempts")?;

    // Records with the same outcome (and error, retry time) move in one statement: a
    // chunk that went through is one UPDATE, a throttled call one more.
    // Grouped by a hash of the outcome: a bulk job's 100,000 records may each have their own
    // error.
    let mut groups: Vec<(&RecordResult, Vec<i64>)> = Vec::new();
    let mut group_of: std::collections::HashMap<&RecordResult, usize> = Default::default();
    for (record, result) in records.iter().zip(results) {
        let index = i64::try_from(record.index).context("record index")?;
        let n = *group_of.entry(result).or_insert_with(|| {
            groups.push((result, Vec::new()));
            groups.len() - 1
        });
        groups[n].1.push(index);
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
            let mut q = Sql::new(sql);
            if at.is_some() {
                q = q.bind(cancelled).bind(burn).bind(max_attempts);
            }
            let q = q
                .bind(burn)
                .bind(error)
                .bind(at)
                .bind(seq)
                .bind(chunk_id)
                .bind_all(part.iter().copied());
            let rows = tx
                .fetch_all(&q)
                .await
                .context("cannot record a chunk's outcome")?;
            for r in &rows {
                match r.col::<String>("status")?.as_str() {
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
        let q = Sql::new(
            "UPDATE batches SET \
             status = CASE \
               WHEN status = 'cancelled' THEN status \
               WHEN pending + ? = 0 AND in_flight - ? = 0 THEN \
                 CASE WHEN failed + ? > 0 THEN 'completed_with_failures' ELSE 'succeeded' END \
               ELSE status END, \
             succeeded = succeeded + ?, failed = failed + ?, pending = pending + ?, \
             cancelled = cancelled + ?, in_flight = in_flight - ?, calls = calls + ?, \
             updated_at = ? WHERE seq = ?",
        )
        .bind(pending)
        .bind(moved)
        .bind(failed)
        .bind(succeeded)
        .bind(failed)
        .bind(pending)
        .bind(gone)
        .bind(moved)
        .bind(calls)
        .bind(now)
        .bind(seq);
        tx.execute(&q)
            .await
            .context("cannot update a batch's counts")?;
    }
    Ok(())
}

/// Inserts a batch and its records inside the caller's transaction (see `insert_batch`).
pub(crate) async fn insert_batch_in(
    conn: &mut Conn<'_>,
    batch: NewBatch,
) -> crate::Result<BatchSummary> {
    let total = batch.records.len() as i64;
    let status = if total == 0 {
        BatchStatus::Succeeded
    } else {
        BatchStatus::Queued
    };
    let q = Sql::new(
        "INSERT INTO batches (id, upstream, tenant, lane, format, max_batch_size, method, \
         path, query, headers, max_attempts, callback_url, callback, status, total, pending, \
         created_at, updated_at, mode) \
         VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) RETURNING seq",
    )
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
    .bind(if batch.callback_url.is_some() {
        "pending"
    } else {
        "none"
    })
    .bind(status.as_str())
    .bind(total)
    .bind(total)
    .bind(batch.created_at)
    .bind(batch.created_at)
    .bind(if batch.asynchronous { "async" } else { "sync" });
    let seq: i64 = conn
        .fetch_one(&q)
        .await
        .with_context(|| format!("cannot store the batch {}", batch.id))?
        .col("seq")?;
    let full_sql = insert_records_sql(INSERT_ROWS);
    for (n, part) in batch.records.chunks(INSERT_ROWS).enumerate() {
        let mut q = if part.len() == INSERT_ROWS {
            Sql::new(full_sql.as_str())
        } else {
            Sql::new(insert_records_sql(part.len()))
        };
        for (i, record) in part.iter().enumerate() {
            q = q
                .bind(seq)
                .bind((n * INSERT_ROWS + i) as i64)
                .bind(&record.record_id)
                .bind(&record.payload)
                .bind(batch.created_at);
        }
        conn.execute(&q)
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
        bulk_jobs: Vec::new(),
        created_at: batch.created_at,
        updated_at: batch.created_at,
    })
}

impl<S: SqlStore> BatchStore for S {
    /// One transaction: the batch row, then its records in multi-row INSERTs of
    /// `INSERT_ROWS`. Committed (durable) before this returns; on PostgreSQL the commit
    /// wakes every node. New work is refused while the SQLite file is gone or full.
    async fn insert_batch(&self, batch: NewBatch) -> crate::Result<BatchSummary> {
        self.durable()?;
        let mut tx = self.db().begin().await?;
        let summary = insert_batch_in(&mut tx.conn(), batch).await?;
        tx.wake_nodes().await?;
        tx.commit().await.context("cannot commit a batch")?;
        Ok(summary)
    }

    async fn get_batch(
        &self,
        id: &str,
        failures_limit: u32,
    ) -> crate::Result<Option<BatchSummary>> {
        // One read transaction, so that the counts and the failures agree.
        let mut tx = self.db().read().await?;
        let out = read_batch(&mut tx.conn(), id, failures_limit).await?;
        tx.commit().await?;
        Ok(out)
    }

    async fn claim_chunk(&self, now: Millis, busy: &[String]) -> crate::Result<Option<Chunk>> {
        let db = self.db();
        let dialect = db.dialect();
        let mut tx = db.begin().await?;
        let mut sql = format!(
            "SELECT seq, id, upstream, tenant, lane, format, max_batch_size, method, path, \
             query, headers, max_attempts FROM batches AS b WHERE b.{ACTIVE} AND b.mode = 'sync'"
        );
        if !busy.is_empty() {
            sql.push_str(&format!(" AND b.id NOT IN ({})", placeholders(busy.len())));
        }
        sql.push_str(&format!(
            " AND EXISTS (SELECT 1 FROM batch_records AS r WHERE r.batch_seq = b.seq \
             AND r.status = 'pending' AND r.next_attempt_at <= ?) \
             ORDER BY b.claim_order, b.seq LIMIT 1{}",
            dialect.skip_locked_of("b")
        ));
        let q = Sql::new(sql).bind_all(busy).bind(now);
        let Some(row) = tx
            .fetch_optional(&q)
            .await
            .context("cannot pick a batch to send")?
        else {
            return Ok(None);
        };
        let seq: i64 = row.col("seq")?;
        let meta = meta_from_row(&row)?;
        let (chunk_id, records) = claim_records_in(&mut tx, db, seq, &meta, now).await?;
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
    ) -> crate::Result<()> {
        let mut tx = self.db().begin().await?;
        finish_records_in(
            &mut tx,
            &chunk.batch.id,
            &chunk.chunk_id,
            &chunk.records,
            results,
            now,
            1,
        )
        .await?;
        tx.commit()
            .await
            .context("cannot commit a chunk's outcome")?;
        Ok(())
    }

    async fn requeue_in_flight(&self, now: Millis) -> crate::Result<u64> {
        if self.db().node().is_none() {
            // SQLite has one process: the bulk jobs it held when it stopped are free to resume.
            crate::bulk::release_leases(self.db()).await?;
            crate::exports::release_leases(self.db()).await?;
        }
        requeue_records(self.db(), true, now).await
    }

    async fn next_chunk_at(&self) -> crate::Result<Option<Millis>> {
        let q = Sql::new(format!(
            "SELECT MIN((SELECT MIN(r.next_attempt_at) FROM batch_records AS r \
             WHERE r.batch_seq = b.seq AND r.status = 'pending')) AS at \
             FROM batches AS b WHERE b.{ACTIVE} AND b.mode = 'sync'"
        ));
        let row = self
            .db()
            .pool()
            .fetch_one(&q)
            .await
            .context("cannot read when the next chunk is due")?;
        row.col("at")
    }

    /// Pending records become cancelled; records in flight finish (a retry among them is
    /// cancelled then). A batch already finished keeps its status.
    async fn cancel_batch(&self, id: &str, now: Millis) -> crate::Result<Option<BatchSummary>> {
        let mut tx = self.db().begin().await?;
        let Some(row) = tx
            .fetch_optional(&Sql::new("SELECT seq, status FROM batches WHERE id = ?").bind(id))
            .await
            .context("cannot read a batch")?
        else {
            return Ok(None);
        };
        let seq: i64 = row.col("seq")?;
        let status = parse_batch_status(&row.col::<String>("status")?)?;
        if matches!(status, BatchStatus::Queued | BatchStatus::Running) {
            // Its bulk jobs under way are aborted at their next step: now. First, as a bulk
            // job's end locks its job, then records, then the batch (PostgreSQL deadlocks on
            // locks taken in another order).
            let q = Sql::new(
                "UPDATE bulk_jobs SET next_at = ? WHERE batch_seq = ? AND phase <> 'done'",
            )
            .bind(now)
            .bind(seq);
            tx.execute(&q)
                .await
                .context("cannot cancel a batch's bulk jobs")?;
            let q = Sql::new(
                "UPDATE batch_records SET status = 'cancelled' \
                 WHERE batch_seq = ? AND status = 'pending'",
            )
            .bind(seq);
            let n = tx
                .execute(&q)
                .await
                .context("cannot cancel a batch's records")? as i64;
            let q = Sql::new(
                "UPDATE batches SET status = 'cancelled', pending = pending - ?, \
                 cancelled = cancelled + ?, updated_at = ? WHERE seq = ?",
            )
            .bind(n)
            .bind(n)
            .bind(now)
            .bind(seq);
            tx.execute(&q).await.context("cannot cancel a batch")?;
        }
        let out = read_batch(&mut tx.conn(), id, 100).await?;
        tx.commit().await.context("cannot commit a cancellation")?;
        Ok(out)
    }

    async fn claim_bulk_job(
        &self,
        now: Millis,
        owner: &str,
        lease: Millis,
        per_batch: u32,
    ) -> crate::Result<Option<BulkJob>> {
        crate::bulk::claim(self.db(), now, owner, lease, per_batch).await
    }

    async fn bulk_job_records(&self, job: &BulkJob) -> crate::Result<Vec<ChunkRecord>> {
        crate::bulk::records(self.db(), job).await
    }

    async fn save_bulk_job(
        &self,
        job: &BulkJob,
        step: &BulkStep,
        now: Millis,
    ) -> crate::Result<bool> {
        crate::bulk::save(self.db(), job, step, now).await
    }

    async fn finish_bulk_job(
        &self,
        job: &BulkJob,
        records: &[ChunkRecord],
        results: &[RecordResult],
        step: &BulkStep,
        now: Millis,
    ) -> crate::Result<()> {
        crate::bulk::finish(self.db(), job, records, results, step, now).await
    }

    async fn next_bulk_job_at(&self) -> crate::Result<Option<Millis>> {
        crate::bulk::next_at(self.db()).await
    }

    async fn list_bulk_jobs(&self, batch_id: &str) -> crate::Result<Vec<BulkJobView>> {
        crate::bulk::list(self.db(), batch_id).await
    }

    async fn insert_export(&self, export: NewExport) -> crate::Result<ExportView> {
        self.durable()?;
        crate::exports::insert(self.db(), export).await
    }

    async fn get_export(&self, id: &str) -> crate::Result<Option<ExportView>> {
        crate::exports::get(self.db(), id).await
    }

    async fn cancel_export(&self, id: &str, now: Millis) -> crate::Result<Option<ExportView>> {
        crate::exports::cancel(self.db(), id, now).await
    }

    async fn claim_export(
        &self,
        now: Millis,
        owner: &str,
        lease: Millis,
    ) -> crate::Result<Option<ExportTask>> {
        crate::exports::claim(self.db(), now, owner, lease).await
    }

    async fn save_export(
        &self,
        task: &ExportTask,
        step: &ExportStep,
        now: Millis,
    ) -> crate::Result<bool> {
        crate::exports::save(self.db(), task, step, now).await
    }

    async fn export_page(&self, id: &str, page: u64) -> crate::Result<Option<Vec<u8>>> {
        crate::exports::page(self.db(), id, page).await
    }

    async fn next_export_at(&self) -> crate::Result<Option<Millis>> {
        crate::exports::next_at(self.db()).await
    }

    async fn prune_batches(&self, before: Millis) -> crate::Result<Pruned> {
        self.db().prune_batches_before(before).await
    }

    async fn list_batches(
        &self,
        filter: &BatchFilter,
        after: Option<&str>,
        limit: u32,
    ) -> crate::Result<Page<BatchSummary>> {
        let after = parse_cursor(after)?;
        let limit = limit.max(1);
        let mut sql = format!("SELECT {BATCH_COLUMNS} FROM batches WHERE seq > ?");
        if filter.status.is_some() {
            sql.push_str(" AND status = ?");
        }
        if filter.tenant.is_some() {
            sql.push_str(" AND tenant = ?");
        }
        if filter.upstream.is_some() {
            sql.push_str(" AND upstream = ?");
        }
        sql.push_str(" ORDER BY seq LIMIT ?");
        let q = Sql::new(sql)
            .bind(after)
            .bind_all(filter.status.map(BatchStatus::as_str))
            .bind_all(&filter.tenant)
            .bind_all(&filter.upstream)
            .bind(i64::from(limit) + 1);
        let rows = self
            .db()
            .pool()
            .fetch_all(&q)
            .await
            .context("cannot list batches")?;
        Page::from_rows(&rows, limit, summary_from_row)
    }

    async fn due_batch_callbacks(
        &self,
        now: Millis,
        limit: u32,
    ) -> crate::Result<Vec<DueBatchCallback>> {
        let db = self.db();
        const DUE: &str = "callback = 'pending' AND in_flight = 0 \
             AND status IN ('succeeded', 'completed_with_failures', 'cancelled') \
             AND next_callback_at <= ?";
        const COLUMNS: &str = "seq, id, tenant, callback_url, callback_attempts, next_callback_at";
        let q = match db.node() {
            None => Sql::new(format!(
                "SELECT {COLUMNS} FROM batches {} WHERE {DUE} \
                 ORDER BY next_callback_at, seq LIMIT ?",
                db.dialect().indexed_by("batches_callbacks")
            ))
            .bind(now)
            .bind(i64::from(limit)),
            Some(node) => Sql::new(format!(
                "UPDATE batches SET callback_node = ?, callback_until = ? WHERE seq IN (\
                 SELECT seq FROM batches WHERE {DUE} \
                 AND (callback_until IS NULL OR callback_until <= ? OR callback_node = ?) \
                 ORDER BY next_callback_at, seq LIMIT ?{}) RETURNING {COLUMNS}",
                db.dialect().skip_locked()
            ))
            .bind(node)
            .bind(now + CALLBACK_HOLD)
            .bind(now)
            .bind(now)
            .bind(node)
            .bind(i64::from(limit)),
        };
        let rows = db
            .pool()
            .fetch_all(&q)
            .await
            .context("cannot read due batch callbacks")?;
        let mut due = rows
            .iter()
            .map(|r| {
                Ok((
                    (r.col::<i64>("next_callback_at")?, r.col::<i64>("seq")?),
                    DueBatchCallback {
                        id: r.col("id")?,
                        tenant: r.col("tenant")?,
                        callback_url: r.col::<Option<String>>("callback_url")?.unwrap_or_default(),
                        attempts: u32_col(r, "callback_attempts")?,
                    },
                ))
            })
            .collect::<crate::Result<Vec<_>>>()?;
        due.sort_by_key(|(order, _)| *order);
        Ok(due.into_iter().map(|(_, d)| d).collect())
    }

    async fn batch_callback_attempted(
        &self,
        id: &str,
        delivered: bool,
        next: Option<Millis>,
    ) -> crate::Result<()> {
        record_callback_attempt(self.db(), "batches", id, delivered, next).await?;
        Ok(())
    }

    async fn postpone_batch_callbacks(&self, ids: &[String], at: Millis) -> crate::Result<()> {
        postpone_callbacks_in(self.db(), "batches", ids, at).await
    }
}

fn insert_records_sql(rows: usize) -> String {
    let values = vec!["(?, ?, ?, ?, 'pending', 0, ?)"; rows].join(", ");
    format!(
        "INSERT INTO batch_records (batch_seq, idx, record_id, payload, status, attempts, \
         next_attempt_at) VALUES {values}"
    )
}

/// Puts back records in flight, counted as possibly duplicated; records of a cancelled
/// batch are cancelled instead. Returns how many went back.
///
/// On SQLite every record in flight: this process was the only one sending them. On
/// PostgreSQL (the node guard) those of dead nodes, and of this one if `mine`: records a
/// node held when it stopped answering. Only the batches that hold such records are
/// touched there: locking the others would make claims that skip locked batches miss them.
pub(super) async fn requeue_records(db: Db<'_>, mine: bool, now: Millis) -> crate::Result<u64> {
    let held = db.node().map(|node| {
        let cond = format!(
            " AND (node IS NULL OR NOT {} OR node = ?)",
            super::pg::alive("node")
        );
        (cond, if mine { node } else { "" })
    });
    let (cond, holder) = match &held {
        Some((cond, holder)) => (cond.as_str(), Some(*holder)),
        None => ("", None),
    };
    let mut tx = db.begin().await?;
    // Records of a bulk job under way are not sent again: the job resumes (crate::bulk).
    let cond = format!(
        "{cond} AND (chunk_id IS NULL OR chunk_id NOT IN \
         (SELECT chunk_id FROM bulk_jobs WHERE phase <> 'done'))"
    );
    let cond = cond.as_str();
    let mut sql = "SELECT seq, status FROM batches WHERE in_flight > 0".to_string();
    sql.push_str(&format!(
        " AND seq IN (SELECT batch_seq FROM batch_records WHERE status = 'in_flight'{cond})"
    ));
    let batches = tx
        .fetch_all(&Sql::new(sql).bind_all(holder))
        .await
        .context("cannot find batches in flight")?;
    let release = if held.is_some() { ", node = NULL" } else { "" };
    let mut requeued = 0u64;
    for b in &batches {
        let seq: i64 = b.col("seq")?;
        let cancelled = b.col::<String>("status")? == "cancelled";
        let to = if cancelled { "cancelled" } else { "pending" };
        let q = Sql::new(format!(
            "UPDATE batch_records SET status = ?, chunk_id = NULL{release} \
             WHERE batch_seq = ? AND status = 'in_flight'{cond}"
        ))
        .bind(to)
        .bind(seq)
        .bind_all(holder);
        let n = tx
            .execute(&q)
            .await
            .context("cannot requeue records in flight")? as i64;
        if n == 0 {
            continue;
        }
        let (pending, cancelled_n, duplicated) = if cancelled { (0, n, 0) } else { (n, 0, n) };
        let q = Sql::new(
            "UPDATE batches SET in_flight = in_flight - ?, pending = pending + ?, \
             cancelled = cancelled + ?, possibly_duplicated = possibly_duplicated + ?, \
             updated_at = ? WHERE seq = ?",
        )
        .bind(n)
        .bind(pending)
        .bind(cancelled_n)
        .bind(duplicated)
        .bind(now)
        .bind(seq);
        tx.execute(&q)
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
