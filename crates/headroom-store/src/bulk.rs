//! Asynchronous bulk jobs of async batches (the `bulk_jobs` table), on either backend.
//!
//! A job is one chunk of a batch's records, in flight from its claim until its results are
//! recorded. Between its calls it is a stored phase; the node making its next call holds a
//! lease on it. A holder that dies loses the lease when it runs out (on PostgreSQL also when
//! its node stops answering; on SQLite, at the restart), and the next holder is told the
//! job was `resumed`: it checks with the API before going on, so that no job is created
//! twice from one stored phase and no upload is processed twice.

use crate::error::Context;

use super::batches::{claim_records_in, finish_records_in};
use super::jobs::u32_col;
use super::row::StoreRow;
use super::sql::{Db, Sql};
use crate::model::jobs::*;

const JOB_COLUMNS: &str =
    "j.chunk_id, j.records, j.job_id, j.phase, j.state, j.error, j.polls, j.abandoned, \
     j.calls, j.lease_owner, b.status AS batch_status, b.id, b.upstream, b.tenant, b.lane, \
     b.format, b.max_batch_size, b.method, b.path, b.query, b.headers, b.max_attempts";

fn phase(s: &str) -> crate::Result<BulkPhase> {
    BulkPhase::parse(s)
        .ok_or_else(|| crate::StoreError::internal(format!("unknown bulk job phase \"{s}\"")))
}

fn job_from_row<R: StoreRow>(row: &R, owner: &str) -> crate::Result<BulkJob> {
    let records: i64 = row.col("records")?;
    let calls: i64 = row.col("calls")?;
    Ok(BulkJob {
        chunk_id: row.col("chunk_id")?,
        batch: super::batches::meta_from_row(row)?,
        cancelled: row.col::<String>("batch_status")? == "cancelled",
        records: records.max(0) as u64,
        job_id: row.col("job_id")?,
        phase: phase(&row.col::<String>("phase")?)?,
        state: row.col("state")?,
        error: row.col("error")?,
        polls: u32_col(row, "polls")?,
        calls: calls.max(0) as u64,
        resumed: row.col::<Option<String>>("lease_owner")?.is_some(),
        abandoned: row.col::<String>("abandoned")?.split_whitespace().count(),
        owner: owner.to_string(),
    })
}

/// "The lease is free": never taken, given back, run out, or (PostgreSQL) its node died.
/// `table` qualifies the lease columns (`"j."` in a join, or `""`); one bind: now.
pub(crate) fn lease_free(db: Db<'_>, table: &str) -> String {
    let dead = match db.node() {
        Some(_) => format!(
            " OR ({table}lease_node IS NOT NULL AND NOT {})",
            super::pg::alive(&format!("{table}lease_node"))
        ),
        None => String::new(),
    };
    format!("({table}lease_owner IS NULL OR {table}lease_until <= ?{dead})")
}

pub(crate) async fn claim(
    db: Db<'_>,
    now: Millis,
    owner: &str,
    lease: Millis,
    per_batch: u32,
) -> crate::Result<Option<BulkJob>> {
    let dialect = db.dialect();
    let mut tx = db.begin().await?;
    // A job whose next call is due.
    let q = Sql::new(format!(
        "SELECT {JOB_COLUMNS} FROM bulk_jobs AS j JOIN batches AS b ON b.seq = j.batch_seq \
         WHERE j.phase <> 'done' AND j.next_at <= ? AND {} \
         ORDER BY j.next_at LIMIT 1{}",
        lease_free(db, "j."),
        dialect.skip_locked_of("j")
    ))
    .bind(now)
    .bind(now);
    if let Some(row) = tx
        .fetch_optional(&q)
        .await
        .context("cannot pick a bulk job")?
    {
        let job = job_from_row(&row, owner)?;
        let q = Sql::new(
            "UPDATE bulk_jobs SET lease_owner = ?, lease_node = ?, lease_until = ? \
             WHERE chunk_id = ?",
        )
        .bind(owner)
        .bind(db.node())
        .bind(now + lease)
        .bind(&job.chunk_id);
        tx.execute(&q).await.context("cannot lease a bulk job")?;
        tx.commit()
            .await
            .context("cannot commit a bulk job lease")?;
        return Ok(Some(job));
    }
    // Else a new job, from an async batch with due records and room for another job.
    let q = Sql::new(format!(
        "SELECT seq, id, upstream, tenant, lane, format, max_batch_size, method, path, \
         query, headers, max_attempts FROM batches AS b \
         WHERE b.status IN ('queued', 'running') AND b.mode = 'async' \
         AND EXISTS (SELECT 1 FROM batch_records AS r WHERE r.batch_seq = b.seq \
         AND r.status = 'pending' AND r.next_attempt_at <= ?) \
         AND (SELECT COUNT(*) FROM bulk_jobs AS j WHERE j.batch_seq = b.seq \
         AND j.phase <> 'done') < ? \
         ORDER BY b.claim_order, b.seq LIMIT 1{}",
        dialect.skip_locked_of("b")
    ))
    .bind(now)
    .bind(i64::from(per_batch.max(1)));
    let Some(row) = tx
        .fetch_optional(&q)
        .await
        .context("cannot pick an async batch")?
    else {
        return Ok(None);
    };
    let seq: i64 = row.col("seq")?;
    let meta = super::batches::meta_from_row(&row)?;
    let (chunk_id, records) = claim_records_in(&mut tx, db, seq, &meta, now).await?;
    if records.is_empty() {
        return Ok(None); // taken by another node between the two statements
    }
    let q = Sql::new(
        "INSERT INTO bulk_jobs (chunk_id, batch_seq, records, phase, next_at, lease_owner, \
         lease_node, lease_until, created_at, updated_at) \
         VALUES (?, ?, ?, 'create', ?, ?, ?, ?, ?, ?)",
    )
    .bind(&chunk_id)
    .bind(seq)
    .bind(records.len() as i64)
    .bind(now)
    .bind(owner)
    .bind(db.node())
    .bind(now + lease)
    .bind(now)
    .bind(now);
    tx.execute(&q).await.context("cannot store a bulk job")?;
    tx.commit().await.context("cannot commit a bulk job")?;
    Ok(Some(BulkJob {
        chunk_id,
        batch: meta,
        cancelled: false,
        records: records.len() as u64,
        job_id: None,
        phase: BulkPhase::Create,
        state: None,
        error: None,
        polls: 0,
        calls: 0,
        resumed: false,
        abandoned: 0,
        owner: owner.to_string(),
    }))
}

pub(crate) async fn records(db: Db<'_>, job: &BulkJob) -> crate::Result<Vec<ChunkRecord>> {
    let q = Sql::new(
        "SELECT r.idx, r.record_id, r.payload, r.attempts FROM batch_records AS r \
         JOIN batches AS b ON b.seq = r.batch_seq \
         WHERE b.id = ? AND r.chunk_id = ? AND r.status = 'in_flight' ORDER BY r.idx",
    )
    .bind(&job.batch.id)
    .bind(&job.chunk_id);
    let rows = db
        .pool()
        .fetch_all(&q)
        .await
        .context("cannot read a bulk job's records")?;
    rows.iter()
        .map(|r| {
            let idx: i64 = r.col("idx")?;
            Ok(ChunkRecord {
                index: idx.max(0) as u64,
                record_id: r.col("record_id")?,
                payload: r.col("payload")?,
                attempts: u32_col(r, "attempts")?,
            })
        })
        .collect()
}

fn step_sql(done: bool) -> String {
    format!(
        "UPDATE bulk_jobs SET job_id = ?, phase = ?, state = ?, error = ?, polls = ?, \
         calls = calls + ?, next_at = ?, abandoned = TRIM(abandoned || ' ' || ?), \
         lease_owner = NULL, lease_until = 0, updated_at = ? \
         WHERE chunk_id = ? AND lease_owner = ?{}",
        if done { "" } else { " AND phase <> 'done'" }
    )
}

fn bind_step<'a>(q: Sql<'a>, job: &'a BulkJob, step: &'a BulkStep, now: Millis) -> Sql<'a> {
    q.bind(&step.job_id)
        .bind(step.phase.as_str())
        .bind(&step.state)
        .bind(&step.error)
        .bind(i64::from(step.polls))
        .bind(step.calls as i64)
        .bind(step.next_at)
        .bind(step.abandoned.as_deref().unwrap_or(""))
        .bind(now)
        .bind(&job.chunk_id)
        .bind(&job.owner)
}

pub(crate) async fn save(
    db: Db<'_>,
    job: &BulkJob,
    step: &BulkStep,
    now: Millis,
) -> crate::Result<bool> {
    let sql = step_sql(false);
    let q = bind_step(Sql::new(&sql), job, step, now);
    let n = db
        .writer()
        .execute(&q)
        .await
        .context("cannot store a bulk job's step")?;
    Ok(n == 1)
}

pub(crate) async fn finish(
    db: Db<'_>,
    job: &BulkJob,
    records: &[ChunkRecord],
    results: &[RecordResult],
    step: &BulkStep,
    now: Millis,
) -> crate::Result<()> {
    let mut tx = db.begin().await?;
    let sql = step_sql(true);
    let q = bind_step(Sql::new(&sql), job, step, now);
    if tx
        .execute(&q)
        .await
        .context("cannot store a bulk job's end")?
        == 0
    {
        // Another holder took the job over: its outcome is theirs to record.
        return Ok(());
    }
    let calls = (job.calls + step.calls) as i64;
    finish_records_in(
        &mut tx,
        &job.batch.id,
        &job.chunk_id,
        records,
        results,
        now,
        calls,
    )
    .await?;
    tx.commit()
        .await
        .context("cannot commit a bulk job's outcome")?;
    Ok(())
}

pub(crate) async fn next_at(db: Db<'_>) -> crate::Result<Option<Millis>> {
    let q = Sql::new(
        "SELECT MIN(CASE WHEN lease_until > next_at THEN lease_until ELSE next_at END) AS at \
         FROM bulk_jobs WHERE phase <> 'done'",
    );
    let row = db
        .pool()
        .fetch_one(&q)
        .await
        .context("cannot read when the next bulk job step is due")?;
    row.col("at")
}

pub(crate) async fn list(db: Db<'_>, batch_id: &str) -> crate::Result<Vec<BulkJobView>> {
    let q = Sql::new(
        "SELECT j.job_id, j.phase, j.state, j.records, j.polls, j.error, j.abandoned \
         FROM bulk_jobs AS j JOIN batches AS b ON b.seq = j.batch_seq WHERE b.id = ? \
         ORDER BY j.created_at, j.chunk_id",
    )
    .bind(batch_id);
    let rows = db
        .pool()
        .fetch_all(&q)
        .await
        .context("cannot list a batch's bulk jobs")?;
    rows.iter()
        .map(|r| {
            let records: i64 = r.col("records")?;
            Ok(BulkJobView {
                job_id: r.col("job_id")?,
                phase: phase(&r.col::<String>("phase")?)?,
                state: r.col("state")?,
                records: records.max(0) as u64,
                polls: u32_col(r, "polls")?,
                error: r.col("error")?,
                abandoned: r
                    .col::<String>("abandoned")?
                    .split_whitespace()
                    .map(str::to_string)
                    .collect(),
            })
        })
        .collect()
}

/// SQLite, at a start: every lease is from a process that is gone. The holder stays named,
/// so that the next one knows it resumes.
pub(crate) async fn release_leases(db: Db<'_>) -> crate::Result<()> {
    let q = Sql::new("UPDATE bulk_jobs SET lease_until = 0 WHERE phase <> 'done'");
    db.writer()
        .execute(&q)
        .await
        .context("cannot release bulk job leases")?;
    Ok(())
}
