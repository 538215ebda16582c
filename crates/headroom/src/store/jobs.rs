//! `JobStore` on SQLite.
//!
//! Jobs carry an arrival sequence (`seq`): throttled and sequential claims and list cursors
//! follow it. Every write is one transaction on the writer connection (see `super`).

use crate::store::sql::SqlStore;
use anyhow::Context;
use headroom_core::Lane;
use sqlx::{Row, SqliteConnection};

use super::row::StoreRow;
use super::Store;
use crate::store::model::jobs::*;

/// The columns of `jobs` that make a `Job`, in the order `job_from_row` reads them.
pub(super) const JOB_COLUMNS: &str =
    "seq, id, queue, scope, upstream, tenant, lane, method, path, query, \
     headers, body, body_is_json, dedup_id, dedup_until, callback_url, max_attempts, \
     idempotency_key, created_at, status, attempts, next_attempt_at, updated_at, last_error, \
     response_status, response_headers, response_body, callback, callback_attempts, \
     next_callback_at";

/// The statuses of a job waiting to run: the same text as the `jobs_waiting` index's
/// condition, so that SQLite uses it.
pub(super) const WAITING: &str = "status IN ('queued', 'retry_pending')";
pub(super) const UNFINISHED: &str = "status IN ('queued', 'running', 'retry_pending')";
pub(super) const FINAL: &str = "status IN ('succeeded', 'failed', 'cancelled')";

// SQLite only: on a young database the planner has no statistics and takes the listing
// indexes ((status, seq), (queue, seq)) for the hot queries below, which then read every
// job ever run. `INDEXED BY` pins the partial index made for each (and fails loudly if it
// cannot be used). Another backend leaves these out.
const BY_WAITING: &str = "INDEXED BY jobs_waiting";
const BY_UNFINISHED: &str = "INDEXED BY jobs_unfinished";
const BY_CALLBACK: &str = "INDEXED BY jobs_callbacks";
const BY_RUNNING: &str = "INDEXED BY jobs_running";

pub(super) fn lane_str(lane: Lane) -> &'static str {
    match lane {
        Lane::Realtime => "realtime",
        Lane::Bulk => "bulk",
    }
}

pub(super) fn parse_lane(s: &str) -> anyhow::Result<Lane> {
    s.parse::<Lane>().map_err(anyhow::Error::msg)
}

pub(super) fn headers_json(headers: &[(String, String)]) -> String {
    serde_json::to_string(headers).expect("pairs of strings always serialise")
}

pub(super) fn parse_headers(s: &str) -> anyhow::Result<Vec<(String, String)>> {
    serde_json::from_str(s).context("stored headers are not a JSON list of pairs")
}

pub(super) fn callback_str(c: CallbackState) -> &'static str {
    match c {
        CallbackState::None => "none",
        CallbackState::Pending => "pending",
        CallbackState::Delivered => "delivered",
        CallbackState::Failed => "failed",
    }
}

pub(super) fn parse_callback(s: &str) -> anyhow::Result<CallbackState> {
    Ok(match s {
        "none" => CallbackState::None,
        "pending" => CallbackState::Pending,
        "delivered" => CallbackState::Delivered,
        "failed" => CallbackState::Failed,
        other => anyhow::bail!("unknown callback state \"{other}\" in the store"),
    })
}

pub(crate) fn job_from_row<R: StoreRow>(row: &R) -> anyhow::Result<(i64, Job)> {
    let status: String = row.col("status")?;
    let response = match row.col::<Option<i64>>("response_status")? {
        Some(code) => Some(JobResponse {
            status: u16::try_from(code).context("stored response status")?,
            headers: match row.col::<Option<String>>("response_headers")? {
                Some(h) => parse_headers(&h)?,
                None => Vec::new(),
            },
            body: row
                .col::<Option<Vec<u8>>>("response_body")?
                .unwrap_or_default(),
        }),
        None => None,
    };
    let job = Job {
        new: NewJob {
            id: row.col("id")?,
            queue: row.col("queue")?,
            scope: row.col("scope")?,
            upstream: row.col("upstream")?,
            tenant: row.col("tenant")?,
            lane: parse_lane(&row.col::<String>("lane")?)?,
            request: JobRequest {
                method: row.col("method")?,
                path: row.col("path")?,
                query: row.col("query")?,
                headers: parse_headers(&row.col::<String>("headers")?)?,
                body: row.col("body")?,
                body_is_json: row.col("body_is_json")?,
            },
            dedup_id: row.col("dedup_id")?,
            dedup_until: row.col("dedup_until")?,
            callback_url: row.col("callback_url")?,
            max_attempts: u32_col(row, "max_attempts")?,
            idempotency_key: row.col("idempotency_key")?,
            created_at: row.col("created_at")?,
        },
        status: JobStatus::parse(&status)
            .with_context(|| format!("unknown job status \"{status}\" in the store"))?,
        attempts: u32_col(row, "attempts")?,
        next_attempt_at: row.col("next_attempt_at")?,
        updated_at: row.col("updated_at")?,
        last_error: row.col("last_error")?,
        response,
        callback: parse_callback(&row.col::<String>("callback")?)?,
        callback_attempts: u32_col(row, "callback_attempts")?,
        next_callback_at: row.col("next_callback_at")?,
    };
    Ok((row.col("seq")?, job))
}

pub(crate) fn u32_col<R: StoreRow>(row: &R, name: &str) -> anyhow::Result<u32> {
    let v: i64 = row.col(name)?;
    u32::try_from(v).with_context(|| format!("stored {name} {v} is out of range"))
}

async fn fetch_job(conn: &mut SqliteConnection, id: &str) -> anyhow::Result<Option<Job>> {
    let row = sqlx::query(&format!("SELECT {JOB_COLUMNS} FROM jobs WHERE id = ?"))
        .bind(id)
        .fetch_optional(conn)
        .await
        .context("cannot read a job")?;
    row.map(|r| job_from_row(&r).map(|(_, j)| j)).transpose()
}

pub(super) use super::sql::placeholders;

/// The tenant a dedup id belongs to: the job's, or '' for a job without one. Dedup ids are
/// per (queue, tenant), so that one tenant's id never names (nor hides) another's job.
pub(super) fn dedup_tenant(job: &NewJob) -> &str {
    job.tenant.as_deref().unwrap_or("")
}

/// Whether `holder` (the job a dedup row names) may answer for `job`: same queue and tenant.
/// The key says so already; this keeps a job the caller cannot see from ever being returned.
pub(super) fn same_owner(holder: &Job, job: &NewJob) -> bool {
    holder.new.queue == job.queue && holder.new.tenant == job.tenant
}

/// Takes (or takes over) a dedup id for a job just inserted (binds: queue, tenant, dedup id,
/// job id, until).
pub(super) const CLAIM_DEDUP: &str =
    "INSERT INTO job_dedup (queue, tenant, dedup_id, job_id, until) VALUES (?, ?, ?, ?, ?) \
     ON CONFLICT (queue, tenant, dedup_id) DO UPDATE SET \
     job_id = excluded.job_id, until = excluded.until";

/// The job holding a dedup id (binds: queue, tenant, dedup id).
pub(super) const HELD_DEDUP: &str =
    "SELECT job_id, until FROM job_dedup WHERE queue = ? AND tenant = ? AND dedup_id = ?";

/// Inserts a job inside the caller's transaction (see `insert_job`).
pub(crate) async fn insert_job_in(
    conn: &mut SqliteConnection,
    job: &NewJob,
) -> anyhow::Result<Inserted> {
    if let Some(dedup_id) = &job.dedup_id {
        let held = sqlx::query(HELD_DEDUP)
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
        sqlx::query(CLAIM_DEDUP)
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
    conn: &mut SqliteConnection,
    jobs: &[&NewJob],
) -> anyhow::Result<Vec<Job>> {
    if jobs.is_empty() {
        return Ok(Vec::new());
    }
    let sql = insert_jobs_sql(jobs.len());
    let mut q = sqlx::query(&sql);
    for job in jobs {
        q = bind_new_job!(q, job);
    }
    q.execute(&mut *conn)
        .await
        .with_context(|| insert_failed(jobs))?;
    Ok(jobs.iter().map(|job| queued_job(job)).collect())
}

/// The statement that inserts `n` jobs (binds: `bind_new_job!` for each).
pub(super) fn insert_jobs_sql(n: usize) -> String {
    let row = "(?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 'queued', 0, ?, ?, ?, 0, 0)";
    format!(
        "INSERT INTO jobs (id, queue, scope, upstream, tenant, lane, method, path, query, \
         headers, body, body_is_json, dedup_id, dedup_until, callback_url, max_attempts, \
         idempotency_key, created_at, status, attempts, next_attempt_at, updated_at, \
         callback, callback_attempts, next_callback_at) VALUES {}",
        vec![row; n].join(", ")
    )
}

/// Binds one row of `insert_jobs_sql`, on either backend's query.
macro_rules! bind_new_job {
    ($q:expr, $job:expr) => {{
        let job: &$crate::store::model::jobs::NewJob = $job;
        $q.bind(&job.id)
            .bind(&job.queue)
            .bind(&job.scope)
            .bind(&job.upstream)
            .bind(&job.tenant)
            .bind($crate::store::jobs::lane_str(job.lane))
            .bind(&job.request.method)
            .bind(&job.request.path)
            .bind(&job.request.query)
            .bind($crate::store::jobs::headers_json(&job.request.headers))
            .bind(&job.request.body)
            .bind(job.request.body_is_json)
            .bind(&job.dedup_id)
            .bind(job.dedup_until)
            .bind(&job.callback_url)
            .bind(i64::from(job.max_attempts))
            .bind(&job.idempotency_key)
            .bind(job.created_at)
            .bind(job.created_at)
            .bind(job.created_at)
            .bind($crate::store::jobs::callback_str(
                $crate::store::jobs::callback_of(job),
            ))
    }};
}
pub(super) use bind_new_job;

pub(super) fn insert_failed(jobs: &[&NewJob]) -> String {
    match jobs {
        [job] => format!("cannot store the job {}", job.id),
        _ => format!("cannot store {} jobs", jobs.len()),
    }
}

pub(super) fn callback_of(job: &NewJob) -> CallbackState {
    if job.callback_url.is_some() {
        CallbackState::Pending
    } else {
        CallbackState::None
    }
}

/// A job as `insert_jobs_sql` stores it.
pub(super) fn queued_job(job: &NewJob) -> Job {
    Job {
        new: job.clone(),
        status: JobStatus::Queued,
        attempts: 0,
        next_attempt_at: job.created_at,
        updated_at: job.created_at,
        last_error: None,
        response: None,
        callback: callback_of(job),
        callback_attempts: 0,
        next_callback_at: 0,
    }
}

/// One finished attempt: the attempt, where the job goes, and when.
pub(super) type Finish<'a> = (&'a AttemptRecord, &'a Transition, Millis);

/// Records attempts and moves their jobs on inside the caller's transaction, with one
/// statement for the jobs and one for the attempts, whatever their number (see
/// `insert_jobs_in` for why). A job that is not running (any more) is left as it is; its
/// attempt is recorded all the same. Each job appears at most once (a job has one running
/// attempt). Returns the jobs in the order of `finishes`.
pub(super) async fn finish_attempts_in(
    conn: &mut SqliteConnection,
    finishes: &[Finish<'_>],
) -> anyhow::Result<Vec<Job>> {
    if finishes.is_empty() {
        return Ok(Vec::new());
    }
    let sql = finish_sql(finishes.len(), "");
    let mut q = sqlx::query(&sql);
    for finish in finishes {
        q = bind_finish!(q, finish);
    }
    let rows = q
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
    let sql = attempts_sql(finishes.len());
    let mut q = sqlx::query(&sql);
    for (attempt, _, _) in finishes {
        q = bind_attempt!(q, attempt);
    }
    q.execute(&mut *conn)
        .await
        .context("cannot record attempts")?;
    Ok(jobs)
}

/// The statement that moves `n` jobs on (binds: `bind_finish!` for each, then those of
/// `also`, a condition added to the jobs it may move).
pub(super) fn finish_sql(n: usize, also: &str) -> String {
    // A final transition sets the outcome (response columns included, even to NULL) and
    // starts the callback clock; a retry keeps them and sets the next attempt's time.
    format!(
        "WITH v(v_id, v_status, v_burn, v_at, v_now, v_error, v_final, v_rstatus, \
         v_rheaders, v_rbody) AS (VALUES {}) \
         UPDATE jobs SET status = v_status, attempts = attempts + v_burn, \
         next_attempt_at = CASE WHEN v_final THEN next_attempt_at ELSE v_at END, \
         updated_at = v_now, last_error = v_error, \
         response_status = CASE WHEN v_final THEN v_rstatus ELSE response_status END, \
         response_headers = CASE WHEN v_final THEN v_rheaders ELSE response_headers END, \
         response_body = CASE WHEN v_final THEN v_rbody ELSE response_body END, \
         next_callback_at = CASE WHEN v_final THEN v_now ELSE next_callback_at END \
         FROM v WHERE id = v_id AND status = 'running'{also} RETURNING {JOB_COLUMNS}",
        vec!["(?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"; n].join(", ")
    )
}

/// The columns a transition sets: status, attempts burnt, next attempt time, error, and
/// response (final transitions only).
pub(super) fn transition_columns(
    transition: &Transition,
) -> (
    JobStatus,
    bool,
    Option<Millis>,
    Option<&String>,
    Option<&JobResponse>,
) {
    match transition {
        Transition::Succeeded { response } => {
            (JobStatus::Succeeded, true, None, None, Some(response))
        }
        Transition::Failed { error, response } => (
            JobStatus::Failed,
            true,
            None,
            Some(error),
            response.as_ref(),
        ),
        Transition::Retry {
            at,
            error,
            burn_attempt,
        } => (
            JobStatus::RetryPending,
            *burn_attempt,
            Some(*at),
            Some(error),
            None,
        ),
    }
}

/// Binds one row of `finish_sql`, on either backend's query.
macro_rules! bind_finish {
    ($q:expr, $finish:expr) => {{
        let (attempt, transition, now): &$crate::store::jobs::Finish<'_> = $finish;
        let (status, burn, at, error, response) =
            $crate::store::jobs::transition_columns(transition);
        $q.bind(&attempt.job_id)
            .bind(status.as_str())
            .bind(i64::from(burn))
            .bind(at)
            .bind(*now)
            .bind(error)
            .bind(at.is_none())
            .bind(response.map(|r| i64::from(r.status)))
            .bind(response.map(|r| $crate::store::jobs::headers_json(&r.headers)))
            .bind(response.map(|r| r.body.as_slice()))
    }};
}
pub(super) use bind_finish;

/// The jobs `finish_sql` returned, by id.
pub(super) fn moved_jobs<R: StoreRow>(
    rows: &[R],
) -> anyhow::Result<std::collections::HashMap<String, Job>> {
    let mut moved = std::collections::HashMap::with_capacity(rows.len());
    for row in rows {
        let (_, job) = job_from_row(row)?;
        moved.insert(job.new.id.clone(), job);
    }
    Ok(moved)
}

/// The statement that records `n` attempts (binds: `bind_attempt!` for each).
pub(super) fn attempts_sql(n: usize) -> String {
    format!(
        "INSERT INTO job_attempts (job_id, number, started_at, finished_at, status, \
         wait_ms, rate_limit_headers, error) VALUES {}",
        vec!["(?, ?, ?, ?, ?, ?, ?, ?)"; n].join(", ")
    )
}

/// Binds one row of `attempts_sql`, on either backend's query.
macro_rules! bind_attempt {
    ($q:expr, $attempt:expr) => {{
        let attempt: &$crate::store::model::jobs::AttemptRecord = $attempt;
        $q.bind(&attempt.job_id)
            .bind(i64::from(attempt.number))
            .bind(attempt.started_at)
            .bind(attempt.finished_at)
            .bind(attempt.status.map(i64::from))
            .bind(i64::try_from(attempt.wait_ms).unwrap_or(i64::MAX))
            .bind($crate::store::jobs::headers_json(
                &attempt.rate_limit_headers,
            ))
            .bind(&attempt.error)
    }};
}
pub(super) use bind_attempt;

impl JobStore for Store {
    /// Inserts the job in a transaction committed before this returns: the job survives the
    /// process being killed right after (the WAL is written; see `super` about power loss).
    /// The dedup check and the insert are in the same transaction, so two jobs with the same
    /// dedup id never both get in. Concurrent inserts share transactions (`super::writer`).
    async fn insert_job(&self, job: NewJob) -> anyhow::Result<Inserted> {
        self.grouped(super::writer::Op::insert(job)).await
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
        let row = sqlx::query(&format!(
            "UPDATE jobs SET status = 'cancelled', updated_at = ?, next_callback_at = ? \
             WHERE id = ? AND {WAITING} RETURNING {JOB_COLUMNS}"
        ))
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

    /// One statement. Candidates of parallel queues: the earliest due jobs (index by time).
    /// Candidates of throttled and sequential queues: for each scope of each such queue
    /// (walked through the index, one step per scope rather than per job), the running
    /// count and the first jobs in arrival order. Together, the `limit` earliest are marked
    /// running and returned, earliest first.
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

        let mut sql = String::new();
        if !restricted.is_empty() {
            let values = vec!["(?, ?, ?)"; restricted.len()].join(", ");
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
                     AND j.status <> 'running' AND j.next_attempt_at <= ?) "
            ));
        }
        sql.push_str(&format!(
            "UPDATE jobs SET status = 'running', updated_at = ? WHERE seq IN (\
             SELECT seq FROM (\
             SELECT seq, next_attempt_at FROM (\
             SELECT seq, next_attempt_at FROM jobs {BY_WAITING} \
             WHERE {WAITING} AND next_attempt_at <= ?"
        ));
        if !restricted.is_empty() {
            sql.push_str(&format!(
                " AND queue NOT IN ({})",
                placeholders(restricted.len())
            ));
        }
        sql.push_str(" ORDER BY next_attempt_at, seq LIMIT ?) AS parallel");
        if !restricted.is_empty() {
            sql.push_str(" UNION ALL SELECT seq, next_attempt_at FROM restricted");
        }
        sql.push_str(&format!(
            ") AS candidates ORDER BY next_attempt_at, seq LIMIT ?) RETURNING {JOB_COLUMNS}"
        ));

        let mut q = sqlx::query(&sql);
        if !restricted.is_empty() {
            for (name, mode, cap) in &restricted {
                q = q.bind(*name).bind(*mode).bind(*cap);
            }
            q = q.bind(now).bind(most).bind(now);
        }
        q = q.bind(now).bind(now);
        for (name, _, _) in &restricted {
            q = q.bind(*name);
        }
        q = q.bind(i64::from(limit)).bind(i64::from(limit));
        let rows = q
            .fetch_all(self.writer())
            .await
            .context("cannot claim jobs")?;
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
        self.grouped(super::writer::Op::finish(attempt, transition, now))
            .await
    }

    async fn attempts(&self, job_id: &str) -> anyhow::Result<Vec<AttemptRecord>> {
        let rows = sqlx::query(
            "SELECT job_id, number, started_at, finished_at, status, wait_ms, \
             rate_limit_headers, error FROM job_attempts WHERE job_id = ? ORDER BY seq",
        )
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

    async fn requeue_running(&self, now: Millis) -> anyhow::Result<u64> {
        let done = sqlx::query(
            "UPDATE jobs SET status = 'queued', updated_at = ? WHERE status = 'running'",
        )
        .bind(now)
        .execute(self.writer())
        .await
        .context("cannot requeue running jobs")?;
        Ok(done.rows_affected())
    }

    async fn next_ready_at(&self) -> anyhow::Result<Option<Millis>> {
        let at: Option<i64> = sqlx::query_scalar(&format!(
            "SELECT MIN(next_attempt_at) FROM jobs {BY_WAITING} WHERE {WAITING}"
        ))
        .fetch_one(self.pool())
        .await
        .context("cannot read when the next job is ready")?;
        Ok(at)
    }

    async fn due_callbacks(&self, now: Millis, limit: u32) -> anyhow::Result<Vec<Job>> {
        let rows = sqlx::query(&format!(
            "SELECT {JOB_COLUMNS} FROM jobs {BY_CALLBACK} WHERE callback = 'pending' AND {FINAL} \
             AND next_callback_at <= ? ORDER BY next_callback_at, seq LIMIT ?"
        ))
        .bind(now)
        .bind(i64::from(limit))
        .fetch_all(self.pool())
        .await
        .context("cannot read due callbacks")?;
        rows.iter()
            .map(|r| job_from_row(r).map(|(_, j)| j))
            .collect()
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
        let done = sqlx::query(
            "UPDATE jobs SET callback = ?, callback_attempts = callback_attempts + 1, \
             next_callback_at = COALESCE(?, next_callback_at) WHERE id = ?",
        )
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

    async fn postpone_callbacks(&self, ids: &[String], at: Millis) -> anyhow::Result<()> {
        if ids.is_empty() {
            return Ok(());
        }
        let sql = format!(
            "UPDATE jobs SET next_callback_at = ? WHERE callback = 'pending' AND id IN ({})",
            placeholders(ids.len())
        );
        let mut q = sqlx::query(&sql).bind(at);
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
