//! `JobStore` on PostgreSQL: the SQLite statements (`super::super::jobs`), with claims that
//! several nodes can make at once (see `super`).

use crate::store::sql::SqlStore;
use anyhow::Context;
use sqlx::{PgConnection, Row};

use super::pg;
use super::PgStore as Store;
pub(super) use crate::store::jobs::{
    attempts_sql, bind_attempt, bind_finish, bind_new_job, callback_str, dedup_tenant, finish_sql,
    headers_json, insert_failed, insert_jobs_sql, job_from_row, lane_str, moved_jobs,
    parse_headers, placeholders, queued_job, same_owner, u32_col, Finish, CLAIM_DEDUP, FINAL,
    HELD_DEDUP, JOB_COLUMNS, UNFINISHED, WAITING,
};
use crate::store::model::jobs::*;

/// How long a node holds the callbacks it took (ms): time enough to deliver them.
const CALLBACK_HOLD: Millis = 60_000;

// The SQLite store pins its partial indexes with `INDEXED BY`; PostgreSQL's planner picks
// them itself.
const BY_WAITING: &str = "";
const BY_UNFINISHED: &str = "";
const BY_RUNNING: &str = "";

async fn fetch_job(conn: &mut PgConnection, id: &str) -> anyhow::Result<Option<Job>> {
    let row = sqlx::query(&pg(&format!("SELECT {JOB_COLUMNS} FROM jobs WHERE id = ?")))
        .bind(id)
        .fetch_optional(conn)
        .await
        .context("cannot read a job")?;
    row.map(|r| job_from_row(&r).map(|(_, j)| j)).transpose()
}

/// Inserts a job inside the caller's transaction (see `insert_job`).
pub(crate) async fn insert_job_in(
    conn: &mut PgConnection,
    job: &NewJob,
) -> anyhow::Result<Inserted> {
    if let Some(dedup_id) = &job.dedup_id {
        // Two nodes inserting the same dedup id at once: the second waits for the first.
        sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended($1, 0))")
            .bind(format!(
                "{}\u{1f}{}\u{1f}{dedup_id}",
                job.queue,
                dedup_tenant(job)
            ))
            .execute(&mut *conn)
            .await
            .context("cannot lock a deduplication id")?;
        let held = sqlx::query(&pg(HELD_DEDUP))
            .bind(&job.queue)
            .bind(dedup_tenant(job))
            .bind(dedup_id)
            .fetch_optional(&mut *conn)
            .await
            .context("cannot look up a deduplication id")?;
        if let Some(row) = held {
            let until: i64 = row.try_get("until")?;
            let holder: String = row.try_get("job_id")?;
            if until > job.created_at {
                if let Some(existing) = fetch_job(conn, &holder).await? {
                    if same_owner(&existing, job) {
                        return Ok(Inserted::Duplicate(existing));
                    }
                }
            }
        }
    }
    let mut created = insert_jobs_in(conn, &[job]).await?;
    if let (Some(dedup_id), Some(until)) = (&job.dedup_id, job.dedup_until) {
        sqlx::query(&pg(CLAIM_DEDUP))
            .bind(&job.queue)
            .bind(dedup_tenant(job))
            .bind(dedup_id)
            .bind(&job.id)
            .bind(until)
            .execute(&mut *conn)
            .await
            .context("cannot store a deduplication id")?;
    }
    Ok(Inserted::Created(created.remove(0)))
}

/// Inserts jobs with one statement inside the caller's transaction, without looking at their
/// dedup ids (`insert_job_in` does that). One statement for many rows is what makes a group
/// commit cheap: each statement is a round trip to the connection's thread.
pub(super) async fn insert_jobs_in(
    conn: &mut PgConnection,
    jobs: &[&NewJob],
) -> anyhow::Result<Vec<Job>> {
    if jobs.is_empty() {
        return Ok(Vec::new());
    }
    let sql = pg(&insert_jobs_sql(jobs.len()));
    let mut q = sqlx::query(&sql);
    for job in jobs {
        q = bind_new_job!(q, job);
    }
    q.execute(&mut *conn)
        .await
        .with_context(|| insert_failed(jobs))?;
    Ok(jobs.iter().map(|job| queued_job(job)).collect())
}

/// Records attempts and moves their jobs on, as the SQLite store does (`finish_sql`). Only
/// jobs this node (`node`) runs move: one given back after this node was taken for dead may
/// be running on another node now.
pub(super) async fn finish_attempts_in(
    conn: &mut PgConnection,
    finishes: &[Finish<'_>],
    node: &str,
) -> anyhow::Result<Vec<Job>> {
    if finishes.is_empty() {
        return Ok(Vec::new());
    }
    let sql = pg(&finish_sql(finishes.len(), " AND node = ?"));
    let mut q = sqlx::query(&sql);
    for finish in finishes {
        q = bind_finish!(q, finish);
    }
    let rows = q
        .bind(node)
        .fetch_all(&mut *conn)
        .await
        .context("cannot move jobs on")?;
    let mut moved = moved_jobs(&rows)?;
    let mut jobs = Vec::with_capacity(finishes.len());
    for (attempt, _, _) in finishes {
        jobs.push(match moved.remove(&attempt.job_id) {
            Some(job) => job,
            None => fetch_job(conn, &attempt.job_id)
                .await?
                .with_context(|| format!("no job \"{}\"", attempt.job_id))?,
        });
    }
    let sql = pg(&attempts_sql(finishes.len()));
    let mut q = sqlx::query(&sql);
    for (attempt, _, _) in finishes {
        q = bind_attempt!(q, attempt);
    }
    q.execute(&mut *conn)
        .await
        .context("cannot record attempts")?;
    Ok(jobs)
}

impl JobStore for Store {
    /// Inserts the job in a transaction committed before this returns. The dedup check and
    /// the insert are in the same transaction (and under a lock on the dedup id), so two
    /// jobs with the same dedup id never both get in, whichever nodes they arrive at.
    /// Concurrent inserts share transactions (`super::writer`).
    async fn insert_job(&self, job: NewJob) -> anyhow::Result<Inserted> {
        let (op, rx) = super::writer::Op::insert(job);
        super::writer::grouped(&self.ops, &self.pool, &self.node, op, rx).await
    }

    async fn get_job(&self, id: &str) -> anyhow::Result<Option<Job>> {
        let mut conn = self.pool().acquire().await?;
        fetch_job(&mut conn, id).await
    }

    /// The cursor is the arrival sequence of the page's last job, as decimal text.
    async fn list_jobs(
        &self,
        filter: &JobFilter,
        after: Option<&str>,
        limit: u32,
    ) -> anyhow::Result<Page<Job>> {
        let after: i64 = match after {
            None | Some("") => 0,
            Some(c) => c
                .parse()
                .ok()
                .filter(|n: &i64| *n >= 0)
                .with_context(|| format!("cursor \"{c}\" is not one this server gave"))?,
        };
        let limit = limit.max(1);
        let mut sql = format!("SELECT {JOB_COLUMNS} FROM jobs WHERE seq > ?");
        if filter.status.is_some() {
            sql.push_str(" AND status = ?");
        }
        if filter.tenant.is_some() {
            sql.push_str(" AND tenant = ?");
        }
        if filter.queue.is_some() {
            sql.push_str(" AND queue = ?");
        }
        sql.push_str(" ORDER BY seq LIMIT ?");
        let sql = pg(&sql);
        let mut q = sqlx::query(&sql).bind(after);
        if let Some(s) = filter.status {
            q = q.bind(s.as_str());
        }
        if let Some(t) = &filter.tenant {
            q = q.bind(t);
        }
        if let Some(queue) = &filter.queue {
            q = q.bind(queue);
        }
        let rows = q
            .bind(i64::from(limit) + 1)
            .fetch_all(self.pool())
            .await
            .context("cannot list jobs")?;
        Page::from_rows(&rows, limit, job_from_row)
    }

    async fn cancel_job(&self, id: &str, now: Millis) -> anyhow::Result<Cancelled> {
        let mut tx = self.write().await?;
        let row = sqlx::query(&pg(&format!(
            "UPDATE jobs SET status = 'cancelled', updated_at = ?, next_callback_at = ? \
             WHERE id = ? AND {WAITING} RETURNING {JOB_COLUMNS}"
        )))
        .bind(now)
        .bind(now)
        .bind(id)
        .fetch_optional(&mut *tx)
        .await
        .context("cannot cancel a job")?;
        let out = match row {
            Some(row) => Cancelled::Done(job_from_row(&row)?.1),
            None => match fetch_job(&mut tx, id).await? {
                Some(job) => Cancelled::Unchanged(job),
                None => Cancelled::NotFound,
            },
        };
        tx.commit().await.context("cannot commit a cancellation")?;
        Ok(out)
    }

    /// One transaction. Candidates of throttled and sequential queues as on SQLite (under
    /// the claim lock); candidates of parallel queues locked with `FOR UPDATE SKIP LOCKED`.
    /// The `limit` earliest are marked running by this node and returned, earliest first.
    async fn claim_ready(
        &self,
        now: Millis,
        rules: &[QueueRule],
        limit: u32,
    ) -> anyhow::Result<Vec<Job>> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        // Queues with a rule other than parallel (the first rule of a name wins).
        let mut named: Vec<(&str, &'static str, i64)> = Vec::new();
        for rule in rules {
            if named.iter().any(|(n, _, _)| *n == rule.name) {
                continue;
            }
            named.push(match rule.mode {
                QueueMode::Parallel => (&rule.name, "parallel", 0),
                QueueMode::Throttled(n) => (&rule.name, "throttled", n.into()),
                QueueMode::Sequential => (&rule.name, "sequential", 1),
            });
        }
        named.retain(|(_, mode, _)| *mode != "parallel");
        let restricted = named;
        // Candidates looked at per throttled scope: its cap at most.
        let most = restricted.iter().map(|(_, _, cap)| *cap).max().unwrap_or(0);

        let mut tx = self.write().await?;
        // (seq, next_attempt_at) of the candidates.
        let mut candidates: Vec<(i64, i64)> = Vec::new();
        if !restricted.is_empty() {
            // Whether a throttled or sequential job may run depends on what runs: one node
            // at a time decides, on what the nodes before it committed.
            sqlx::query("SELECT pg_advisory_xact_lock($1)")
                .bind(super::CLAIM_LOCK)
                .execute(&mut *tx)
                .await
                .context("cannot take the claim lock")?;
            let values = vec!["(?, ?, ?)"; restricted.len()].join(", ");
            let mut sql = String::new();
            sql.push_str(&format!(
                "WITH RECURSIVE \
                 rules(name, mode, cap) AS (VALUES {values}), \
                 scopes(queue, mode, cap, scope) AS (\
                   SELECT r.name, r.mode, r.cap, (SELECT MIN(scope) FROM jobs {BY_UNFINISHED} \
                     WHERE queue = r.name AND {UNFINISHED}) FROM rules AS r \
                   UNION ALL \
                   SELECT s.queue, s.mode, s.cap, (SELECT MIN(scope) FROM jobs {BY_UNFINISHED} \
                     WHERE queue = s.queue AND scope > s.scope AND {UNFINISHED}) \
                   FROM scopes AS s WHERE s.scope IS NOT NULL), \
                 heads AS (\
                   SELECT s.queue, s.mode, s.cap, s.scope, \
                     (SELECT COUNT(*) FROM jobs {BY_RUNNING} WHERE queue = s.queue \
                       AND scope = s.scope AND status = 'running') AS running \
                   FROM scopes AS s WHERE s.scope IS NOT NULL), \
                 throttled AS (\
                   SELECT h.queue, h.scope, h.cap, h.running, j.seq, j.next_attempt_at \
                   FROM heads AS h CROSS JOIN jobs AS j \
                   WHERE h.mode = 'throttled' AND h.running < h.cap AND j.seq IN (\
                     SELECT seq FROM jobs {BY_UNFINISHED} WHERE queue = h.queue \
                       AND scope = h.scope AND {UNFINISHED} AND status <> 'running' \
                       AND next_attempt_at <= ? ORDER BY seq LIMIT ?)), \
                 restricted(seq, next_attempt_at) AS (\
                   SELECT seq, next_attempt_at FROM (\
                     SELECT seq, next_attempt_at, cap, running, \
                       ROW_NUMBER() OVER (PARTITION BY queue, scope ORDER BY seq) AS rn \
                     FROM throttled) AS t WHERE t.rn + t.running <= t.cap \
                   UNION ALL \
                   SELECT j.seq, j.next_attempt_at FROM heads AS h CROSS JOIN jobs AS j \
                   WHERE h.mode = 'sequential' AND h.running = 0 \
                     AND j.seq = (SELECT MIN(seq) FROM jobs {BY_UNFINISHED} \
                       WHERE queue = h.queue AND scope = h.scope AND {UNFINISHED}) \
                     AND j.status <> 'running' AND j.next_attempt_at <= ?) \
                 SELECT seq, next_attempt_at FROM restricted"
            ));
            let sql = pg(&sql);
            let mut q = sqlx::query_as::<_, (i64, i64)>(&sql);
            for (name, mode, cap) in &restricted {
                q = q.bind(*name).bind(*mode).bind(*cap);
            }
            candidates = q
                .bind(now)
                .bind(most)
                .bind(now)
                .fetch_all(&mut *tx)
                .await
                .context("cannot find throttled and sequential jobs to claim")?;
        }
        // Parallel queues: the earliest due jobs that no other node is claiming right now.
        let mut sql = format!(
            "SELECT seq, next_attempt_at FROM jobs WHERE {WAITING} AND next_attempt_at <= ?"
        );
        if !restricted.is_empty() {
            sql.push_str(&format!(
                " AND queue NOT IN ({})",
                placeholders(restricted.len())
            ));
        }
        sql.push_str(" ORDER BY next_attempt_at, seq LIMIT ? FOR UPDATE SKIP LOCKED");
        let sql = pg(&sql);
        let mut q = sqlx::query_as::<_, (i64, i64)>(&sql).bind(now);
        for (name, _, _) in &restricted {
            q = q.bind(*name);
        }
        candidates.extend(
            q.bind(i64::from(limit))
                .fetch_all(&mut *tx)
                .await
                .context("cannot find jobs to claim")?,
        );
        candidates.sort_by_key(|&(seq, at)| (at, seq));
        candidates.truncate(limit as usize);
        if candidates.is_empty() {
            tx.commit().await.context("cannot end a claim")?;
            return Ok(Vec::new());
        }
        let seqs: Vec<i64> = candidates.iter().map(|&(seq, _)| seq).collect();
        let rows = sqlx::query(&pg(&format!(
            "UPDATE jobs SET status = 'running', updated_at = ?, node = ? \
             WHERE seq = ANY(?) AND {WAITING} RETURNING {JOB_COLUMNS}"
        )))
        .bind(now)
        .bind(self.node())
        .bind(&seqs)
        .fetch_all(&mut *tx)
        .await
        .context("cannot claim jobs")?;
        tx.commit().await.context("cannot commit a claim")?;
        let mut claimed = rows
            .iter()
            .map(job_from_row)
            .collect::<anyhow::Result<Vec<_>>>()?;
        claimed.sort_by_key(|(seq, job)| (job.next_attempt_at, *seq));
        Ok(claimed.into_iter().map(|(_, job)| job).collect())
    }

    /// A job that is not running (any more) is left as it is; the attempt is recorded all
    /// the same. Concurrent calls share transactions (`super::writer`).
    async fn finish_attempt(
        &self,
        attempt: AttemptRecord,
        transition: Transition,
        now: Millis,
    ) -> anyhow::Result<Job> {
        // A finished job may free a throttled or sequential slot that another node waits
        // for: the group's commit notifies the other nodes.
        let (op, rx) = super::writer::Op::finish(attempt, transition, now);
        super::writer::grouped(&self.ops, &self.pool, &self.node, op, rx).await
    }

    async fn attempts(&self, job_id: &str) -> anyhow::Result<Vec<AttemptRecord>> {
        let rows = sqlx::query(&pg(
            "SELECT job_id, number, started_at, finished_at, status, wait_ms, \
             rate_limit_headers, error FROM job_attempts WHERE job_id = ? ORDER BY seq",
        ))
        .bind(job_id)
        .fetch_all(self.pool())
        .await
        .context("cannot read a job's attempts")?;
        rows.iter()
            .map(|r| {
                Ok(AttemptRecord {
                    job_id: r.try_get("job_id")?,
                    number: u32_col(r, "number")?,
                    started_at: r.try_get("started_at")?,
                    finished_at: r.try_get("finished_at")?,
                    status: r
                        .try_get::<Option<i64>, _>("status")?
                        .map(u16::try_from)
                        .transpose()
                        .context("stored attempt status")?,
                    wait_ms: u64::try_from(r.try_get::<i64, _>("wait_ms")?).unwrap_or(0),
                    rate_limit_headers: parse_headers(r.try_get("rate_limit_headers")?)?,
                    error: r.try_get("error")?,
                })
            })
            .collect()
    }

    /// Only the jobs of this node and of dead nodes: the other nodes are running theirs.
    async fn requeue_running(&self, now: Millis) -> anyhow::Result<u64> {
        requeue_dead(self, true, now).await
    }

    async fn next_ready_at(&self) -> anyhow::Result<Option<Millis>> {
        let at: Option<i64> = sqlx::query_scalar(&pg(&format!(
            "SELECT MIN(next_attempt_at) FROM jobs {BY_WAITING} WHERE {WAITING}"
        )))
        .fetch_one(self.pool())
        .await
        .context("cannot read when the next job is ready")?;
        Ok(at)
    }

    /// The due callbacks are taken for `CALLBACK_HOLD` by this node: another node does not
    /// deliver them meanwhile (this one may ask again and gets them again).
    async fn due_callbacks(&self, now: Millis, limit: u32) -> anyhow::Result<Vec<Job>> {
        let rows = sqlx::query(&pg(&format!(
            "UPDATE jobs SET callback_node = ?, callback_until = ? WHERE seq IN (\
             SELECT seq FROM jobs WHERE callback = 'pending' AND {FINAL} \
             AND next_callback_at <= ? \
             AND (callback_until IS NULL OR callback_until <= ? OR callback_node = ?) \
             ORDER BY next_callback_at, seq LIMIT ? FOR UPDATE SKIP LOCKED) \
             RETURNING {JOB_COLUMNS}"
        )))
        .bind(self.node())
        .bind(now + CALLBACK_HOLD)
        .bind(now)
        .bind(now)
        .bind(self.node())
        .bind(i64::from(limit))
        .fetch_all(self.pool())
        .await
        .context("cannot take due callbacks")?;
        let mut due = rows
            .iter()
            .map(job_from_row)
            .collect::<anyhow::Result<Vec<_>>>()?;
        due.sort_by_key(|(seq, j)| (j.next_callback_at, *seq));
        Ok(due.into_iter().map(|(_, j)| j).collect())
    }

    async fn callback_attempted(
        &self,
        id: &str,
        delivered: bool,
        next: Option<Millis>,
    ) -> anyhow::Result<()> {
        let state = match (delivered, next) {
            (true, _) => CallbackState::Delivered,
            (false, Some(_)) => CallbackState::Pending,
            (false, None) => CallbackState::Failed,
        };
        let done = sqlx::query(&pg(
            "UPDATE jobs SET callback = ?, callback_attempts = callback_attempts + 1, \
             next_callback_at = COALESCE(?, next_callback_at), callback_node = NULL, \
             callback_until = NULL WHERE id = ?",
        ))
        .bind(callback_str(state))
        .bind(next)
        .bind(id)
        .execute(self.writer())
        .await
        .context("cannot record a callback")?;
        if done.rows_affected() == 0 {
            anyhow::bail!("no job \"{id}\"");
        }
        Ok(())
    }

    /// The hold lasts until `at` too: another node may take them then.
    async fn postpone_callbacks(&self, ids: &[String], at: Millis) -> anyhow::Result<()> {
        if ids.is_empty() {
            return Ok(());
        }
        let sql = pg(&format!(
            "UPDATE jobs SET next_callback_at = ?, callback_until = ? \
             WHERE callback = 'pending' AND id IN ({})",
            placeholders(ids.len())
        ));
        let mut q = sqlx::query(&sql).bind(at).bind(at);
        for id in ids {
            q = q.bind(id);
        }
        q.execute(self.writer())
            .await
            .context("cannot postpone callbacks")?;
        Ok(())
    }

    async fn prune_jobs(&self, before: Millis, now: Millis) -> anyhow::Result<Pruned> {
        self.db().prune_jobs_before(before, now).await
    }
}

/// Puts back the running jobs of dead nodes (and of this one if `mine`): jobs a node held
/// when it stopped answering. Returns how many.
pub(super) async fn requeue_dead(store: &Store, mine: bool, now: Millis) -> anyhow::Result<u64> {
    let mut sql = format!(
        "UPDATE jobs SET status = 'queued', node = NULL, updated_at = ? \
         WHERE status = 'running' AND (node IS NULL OR NOT {})",
        super::alive("node")
    );
    if mine {
        sql.push_str(" OR (status = 'running' AND node = ?)");
    }
    let sql = pg(&sql);
    let mut q = sqlx::query(&sql).bind(now);
    if mine {
        q = q.bind(store.node());
    }
    let done = q
        .execute(store.writer())
        .await
        .context("cannot requeue the running jobs of stopped nodes")?;
    Ok(done.rows_affected())
}
