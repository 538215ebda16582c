//! `JobStore`, on either backend.
//!
//! Jobs carry an arrival sequence (`seq`): throttled and sequential claims and list cursors
//! follow it. Every write is one transaction (on SQLite, on the writer connection, see
//! `super`). Where the backends differ, it is said at the seam (`Dialect`, `Db::node`):
//! on PostgreSQL several nodes claim at once, so claims lock what they take (`FOR UPDATE
//! SKIP LOCKED`, and an advisory lock for throttled and sequential queues and for dedup
//! ids), and a running job, or a callback being delivered, names the node that holds it.

use crate::error::Context;
use headroom_core::Lane;

use super::row::StoreRow;
use super::sql::{Conn, Db, Dialect, Sql, SqlStore};
use crate::model::jobs::*;

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
// cannot be used); PostgreSQL's planner picks them itself (`Dialect::indexed_by`).
const BY_WAITING: &str = "jobs_waiting";
const BY_UNFINISHED: &str = "jobs_unfinished";
const BY_CALLBACK: &str = "jobs_callbacks";
const BY_RUNNING: &str = "jobs_running";

/// How long a PostgreSQL node holds the callbacks it took (ms): time enough to deliver them.
pub(super) const CALLBACK_HOLD: Millis = 60_000;

pub(super) fn lane_str(lane: Lane) -> &'static str {
    match lane {
        Lane::Realtime => "realtime",
        Lane::Bulk => "bulk",
    }
}

pub(super) fn parse_lane(s: &str) -> crate::Result<Lane> {
    s.parse::<Lane>().map_err(crate::StoreError::internal)
}

pub(super) fn headers_json(headers: &[(String, String)]) -> String {
    serde_json::to_string(headers).expect("pairs of strings always serialise")
}

pub(super) fn parse_headers(s: &str) -> crate::Result<Vec<(String, String)>> {
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

pub(super) fn parse_callback(s: &str) -> crate::Result<CallbackState> {
    Ok(match s {
        "none" => CallbackState::None,
        "pending" => CallbackState::Pending,
        "delivered" => CallbackState::Delivered,
        "failed" => CallbackState::Failed,
        other => crate::error::bail!("unknown callback state \"{other}\" in the store"),
    })
}

pub(crate) fn job_from_row<R: StoreRow>(row: &R) -> crate::Result<(i64, Job)> {
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

pub(crate) fn u32_col<R: StoreRow>(row: &R, name: &str) -> crate::Result<u32> {
    let v: i64 = row.col(name)?;
    u32::try_from(v).with_context(|| format!("stored {name} {v} is out of range"))
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

async fn fetch_job(conn: &mut Conn<'_>, id: &str) -> crate::Result<Option<Job>> {
    let q = Sql::new(format!("SELECT {JOB_COLUMNS} FROM jobs WHERE id = ?")).bind(id);
    let row = conn.fetch_optional(&q).await.context("cannot read a job")?;
    row.map(|r| job_from_row(&r).map(|(_, j)| j)).transpose()
}

/// Inserts a job inside the caller's transaction (see `insert_job`).
pub(crate) async fn insert_job_in(conn: &mut Conn<'_>, job: &NewJob) -> crate::Result<Inserted> {
    if let Some(dedup_id) = &job.dedup_id {
        // Two nodes inserting the same dedup id at once: the second waits for the first.
        let key = format!("{}\u{1f}{}\u{1f}{dedup_id}", job.queue, dedup_tenant(job));
        conn.lock_key(&key)
            .await
            .context("cannot lock a deduplication id")?;
        let q = Sql::new(HELD_DEDUP)
            .bind(&job.queue)
            .bind(dedup_tenant(job))
            .bind(dedup_id);
        let held = conn
            .fetch_optional(&q)
            .await
            .context("cannot look up a deduplication id")?;
        if let Some(row) = held {
            let until: i64 = row.col("until")?;
            let holder: String = row.col("job_id")?;
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
        let q = Sql::new(CLAIM_DEDUP)
            .bind(&job.queue)
            .bind(dedup_tenant(job))
            .bind(dedup_id)
            .bind(&job.id)
            .bind(until);
        conn.execute(&q)
            .await
            .context("cannot store a deduplication id")?;
    }
    Ok(Inserted::Created(created.remove(0)))
}

/// Inserts jobs with one statement inside the caller's transaction, without looking at their
/// dedup ids (`insert_job_in` does that). One statement for many rows is what makes a group
/// commit cheap: each statement is a round trip to the connection's thread.
pub(super) async fn insert_jobs_in(
    conn: &mut Conn<'_>,
    jobs: &[&NewJob],
) -> crate::Result<Vec<Job>> {
    if jobs.is_empty() {
        return Ok(Vec::new());
    }
    let mut q = Sql::new(insert_jobs_sql(jobs.len()));
    for job in jobs {
        q = bind_new_job(q, job);
    }
    conn.execute(&q)
        .await
        .with_context(|| insert_failed(jobs))?;
    Ok(jobs.iter().map(|job| queued_job(job)).collect())
}

/// The statement that inserts `n` jobs (binds: `bind_new_job` for each).
fn insert_jobs_sql(n: usize) -> String {
    let row = "(?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 'queued', 0, ?, ?, ?, 0, 0)";
    format!(
        "INSERT INTO jobs (id, queue, scope, upstream, tenant, lane, method, path, query, \
         headers, body, body_is_json, dedup_id, dedup_until, callback_url, max_attempts, \
         idempotency_key, created_at, status, attempts, next_attempt_at, updated_at, \
         callback, callback_attempts, next_callback_at) VALUES {}",
        vec![row; n].join(", ")
    )
}

/// Binds one row of `insert_jobs_sql`.
fn bind_new_job<'a>(q: Sql<'a>, job: &'a NewJob) -> Sql<'a> {
    q.bind(&job.id)
        .bind(&job.queue)
        .bind(&job.scope)
        .bind(&job.upstream)
        .bind(&job.tenant)
        .bind(lane_str(job.lane))
        .bind(&job.request.method)
        .bind(&job.request.path)
        .bind(&job.request.query)
        .bind(headers_json(&job.request.headers))
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
        .bind(callback_str(callback_of(job)))
}

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
///
/// The node guard: with `node` (PostgreSQL), only the jobs that node runs move; one given
/// back after the node was taken for dead may be running on another node now.
pub(super) async fn finish_attempts_in(
    conn: &mut Conn<'_>,
    finishes: &[Finish<'_>],
    node: Option<&str>,
) -> crate::Result<Vec<Job>> {
    if finishes.is_empty() {
        return Ok(Vec::new());
    }
    let also = if node.is_some() { " AND node = ?" } else { "" };
    let mut q = Sql::new(finish_sql(finishes.len(), also));
    for finish in finishes {
        q = bind_finish(q, finish);
    }
    let q = q.bind_all(node);
    let rows = conn.fetch_all(&q).await.context("cannot move jobs on")?;
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
    let mut q = Sql::new(attempts_sql(finishes.len()));
    for (attempt, _, _) in finishes {
        q = bind_attempt(q, attempt);
    }
    conn.execute(&q).await.context("cannot record attempts")?;
    Ok(jobs)
}

/// The statement that moves `n` jobs on (binds: `bind_finish` for each, then those of
/// `also`, a condition added to the jobs it may move).
fn finish_sql(n: usize, also: &str) -> String {
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
fn transition_columns(
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

/// Binds one row of `finish_sql`.
fn bind_finish<'a>(q: Sql<'a>, (attempt, transition, now): &Finish<'a>) -> Sql<'a> {
    let (status, burn, at, error, response) = transition_columns(transition);
    q.bind(&attempt.job_id)
        .bind(status.as_str())
        .bind(i64::from(burn))
        .bind(at)
        .bind(*now)
        .bind(error)
        .bind(at.is_none())
        .bind(response.map(|r| i64::from(r.status)))
        .bind(response.map(|r| headers_json(&r.headers)))
        .bind(response.map(|r| r.body.as_slice()))
}

/// The jobs `finish_sql` returned, by id.
fn moved_jobs<R: StoreRow>(rows: &[R]) -> crate::Result<std::collections::HashMap<String, Job>> {
    let mut moved = std::collections::HashMap::with_capacity(rows.len());
    for row in rows {
        let (_, job) = job_from_row(row)?;
        moved.insert(job.new.id.clone(), job);
    }
    Ok(moved)
}

/// The statement that records `n` attempts (binds: `bind_attempt` for each).
fn attempts_sql(n: usize) -> String {
    format!(
        "INSERT INTO job_attempts (job_id, number, started_at, finished_at, status, \
         wait_ms, rate_limit_headers, error) VALUES {}",
        vec!["(?, ?, ?, ?, ?, ?, ?, ?)"; n].join(", ")
    )
}

/// Binds one row of `attempts_sql`.
fn bind_attempt<'a>(q: Sql<'a>, attempt: &'a AttemptRecord) -> Sql<'a> {
    q.bind(&attempt.job_id)
        .bind(i64::from(attempt.number))
        .bind(attempt.started_at)
        .bind(attempt.finished_at)
        .bind(attempt.status.map(i64::from))
        .bind(i64::try_from(attempt.wait_ms).unwrap_or(i64::MAX))
        .bind(headers_json(&attempt.rate_limit_headers))
        .bind(&attempt.error)
}

/// The queues whose claims depend on what runs (throttled, sequential; the first rule of a
/// name wins): (name, mode, cap).
fn restricted_queues(rules: &[QueueRule]) -> Vec<(&str, &'static str, i64)> {
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
    named
}

/// `WITH RECURSIVE … restricted(seq, next_attempt_at) AS (…)`: the candidates of throttled
/// and sequential queues. For each scope of each such queue (walked through the index, one
/// step per scope rather than per job), the running count and the first jobs in arrival
/// order. Binds: `bind_restricted`.
fn restricted_cte(dialect: Dialect, n: usize) -> String {
    let values = vec!["(?, ?, ?)"; n].join(", ");
    let by_unfinished = dialect.indexed_by(BY_UNFINISHED);
    let by_running = dialect.indexed_by(BY_RUNNING);
    format!(
        "WITH RECURSIVE \
         rules(name, mode, cap) AS (VALUES {values}), \
         scopes(queue, mode, cap, scope) AS (\
           SELECT r.name, r.mode, r.cap, (SELECT MIN(scope) FROM jobs {by_unfinished} \
             WHERE queue = r.name AND {UNFINISHED}) FROM rules AS r \
           UNION ALL \
           SELECT s.queue, s.mode, s.cap, (SELECT MIN(scope) FROM jobs {by_unfinished} \
             WHERE queue = s.queue AND scope > s.scope AND {UNFINISHED}) \
           FROM scopes AS s WHERE s.scope IS NOT NULL), \
         heads AS (\
           SELECT s.queue, s.mode, s.cap, s.scope, \
             (SELECT COUNT(*) FROM jobs {by_running} WHERE queue = s.queue \
               AND scope = s.scope AND status = 'running') AS running \
           FROM scopes AS s WHERE s.scope IS NOT NULL), \
         throttled AS (\
           SELECT h.queue, h.scope, h.cap, h.running, j.seq, j.next_attempt_at \
           FROM heads AS h CROSS JOIN jobs AS j \
           WHERE h.mode = 'throttled' AND h.running < h.cap AND j.seq IN (\
             SELECT seq FROM jobs {by_unfinished} WHERE queue = h.queue \
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
             AND j.seq = (SELECT MIN(seq) FROM jobs {by_unfinished} \
               WHERE queue = h.queue AND scope = h.scope AND {UNFINISHED}) \
             AND j.status <> 'running' AND j.next_attempt_at <= ?) "
    )
}

/// The binds of `restricted_cte`.
fn bind_restricted<'a>(
    mut q: Sql<'a>,
    restricted: &[(&'a str, &'static str, i64)],
    now: Millis,
) -> Sql<'a> {
    // Candidates looked at per throttled scope: its cap at most.
    let most = restricted.iter().map(|(_, _, cap)| *cap).max().unwrap_or(0);
    for (name, mode, cap) in restricted {
        q = q.bind(*name).bind(*mode).bind(*cap);
    }
    q.bind(now).bind(most).bind(now)
}

/// ` AND queue NOT IN (…)` for the restricted queues (binds: their names), or nothing.
fn not_restricted(restricted: &[(&str, &'static str, i64)]) -> String {
    if restricted.is_empty() {
        return String::new();
    }
    format!(" AND queue NOT IN ({})", placeholders(restricted.len()))
}

/// The claimed rows, earliest due first.
fn claimed(rows: &[super::sql::Row]) -> crate::Result<Vec<Job>> {
    let mut claimed = rows
        .iter()
        .map(job_from_row)
        .collect::<crate::Result<Vec<_>>>()?;
    claimed.sort_by_key(|(seq, job)| (job.next_attempt_at, *seq));
    Ok(claimed.into_iter().map(|(_, job)| job).collect())
}

/// SQLite's claim, one statement on the one writer: the candidates of parallel queues (the
/// earliest due jobs, index by time) and of throttled and sequential queues together; the
/// `limit` earliest are marked running and returned.
async fn claim_on_sqlite(
    db: Db<'_>,
    now: Millis,
    restricted: &[(&str, &'static str, i64)],
    limit: u32,
) -> crate::Result<Vec<Job>> {
    let dialect = db.dialect();
    let mut sql = String::new();
    if !restricted.is_empty() {
        sql.push_str(&restricted_cte(dialect, restricted.len()));
    }
    sql.push_str(&format!(
        "UPDATE jobs SET status = 'running', updated_at = ? WHERE seq IN (\
         SELECT seq FROM (\
         SELECT seq, next_attempt_at FROM (\
         SELECT seq, next_attempt_at FROM jobs {} \
         WHERE {WAITING} AND next_attempt_at <= ?{} \
         ORDER BY next_attempt_at, seq LIMIT ?) AS parallel",
        dialect.indexed_by(BY_WAITING),
        not_restricted(restricted),
    ));
    if !restricted.is_empty() {
        sql.push_str(" UNION ALL SELECT seq, next_attempt_at FROM restricted");
    }
    sql.push_str(&format!(
        ") AS candidates ORDER BY next_attempt_at, seq LIMIT ?) RETURNING {JOB_COLUMNS}"
    ));
    let mut q = Sql::new(sql);
    if !restricted.is_empty() {
        q = bind_restricted(q, restricted, now);
    }
    let q = q
        .bind(now)
        .bind(now)
        .bind_all(restricted.iter().map(|(name, _, _)| *name))
        .bind(i64::from(limit))
        .bind(i64::from(limit));
    let rows = db
        .writer()
        .fetch_all(&q)
        .await
        .context("cannot claim jobs")?;
    claimed(&rows)
}

/// PostgreSQL's claim, one transaction among nodes claiming at once: the candidates of
/// throttled and sequential queues as on SQLite, under the claim lock (whether they may run
/// depends on what runs: one node at a time decides, on what the nodes before it
/// committed); those of parallel queues locked with `FOR UPDATE SKIP LOCKED`. The `limit`
/// earliest are marked running by this node (`node`) and returned.
async fn claim_on_postgres(
    db: Db<'_>,
    node: &str,
    now: Millis,
    restricted: &[(&str, &'static str, i64)],
    limit: u32,
) -> crate::Result<Vec<Job>> {
    let dialect = db.dialect();
    let mut tx = db.begin().await?;
    // (seq, next_attempt_at) of the candidates.
    let mut candidates: Vec<(i64, i64)> = Vec::new();
    let pair = |r: &super::sql::Row| -> crate::Result<(i64, i64)> {
        Ok((r.col("seq")?, r.col("next_attempt_at")?))
    };
    if !restricted.is_empty() {
        tx.conn()
            .lock_id(super::pg::CLAIM_LOCK)
            .await
            .context("cannot take the claim lock")?;
        let sql = format!(
            "{}SELECT seq, next_attempt_at FROM restricted",
            restricted_cte(dialect, restricted.len())
        );
        let q = bind_restricted(Sql::new(sql), restricted, now);
        for row in tx
            .fetch_all(&q)
            .await
            .context("cannot find throttled and sequential jobs to claim")?
        {
            candidates.push(pair(&row)?);
        }
    }
    // Parallel queues: the earliest due jobs that no other node is claiming right now.
    let sql = format!(
        "SELECT seq, next_attempt_at FROM jobs WHERE {WAITING} AND next_attempt_at <= ?{} \
         ORDER BY next_attempt_at, seq LIMIT ?{}",
        not_restricted(restricted),
        dialect.skip_locked()
    );
    let q = Sql::new(sql)
        .bind(now)
        .bind_all(restricted.iter().map(|(name, _, _)| *name))
        .bind(i64::from(limit));
    for row in tx
        .fetch_all(&q)
        .await
        .context("cannot find jobs to claim")?
    {
        candidates.push(pair(&row)?);
    }
    candidates.sort_by_key(|&(seq, at)| (at, seq));
    candidates.truncate(limit as usize);
    if candidates.is_empty() {
        tx.commit().await.context("cannot end a claim")?;
        return Ok(Vec::new());
    }
    let q = Sql::new(format!(
        "UPDATE jobs SET status = 'running', updated_at = ?, node = ? \
         WHERE seq IN ({}) AND {WAITING} RETURNING {JOB_COLUMNS}",
        placeholders(candidates.len())
    ))
    .bind(now)
    .bind(node)
    .bind_all(candidates.iter().map(|&(seq, _)| seq));
    let rows = tx.fetch_all(&q).await.context("cannot claim jobs")?;
    tx.commit().await.context("cannot commit a claim")?;
    claimed(&rows)
}

impl<S: SqlStore> JobStore for S {
    /// Inserts the job in a transaction committed before this returns: the job survives the
    /// process being killed right after (on SQLite the WAL is written; see `super` about
    /// power loss). The dedup check and the insert are in the same transaction (on
    /// PostgreSQL under a lock on the dedup id), so two jobs with the same dedup id never
    /// both get in, whichever nodes they arrive at. Concurrent inserts share transactions
    /// (`super::writer`). New work is refused while the SQLite file is gone or full.
    async fn insert_job(&self, job: NewJob) -> crate::Result<Inserted> {
        self.durable()?;
        self.db().grouped(super::writer::Op::insert(job)).await
    }

    async fn get_job(&self, id: &str) -> crate::Result<Option<Job>> {
        fetch_job(&mut self.db().pool(), id).await
    }

    /// The cursor is the arrival sequence of the page's last job, as decimal text.
    async fn list_jobs(
        &self,
        filter: &JobFilter,
        after: Option<&str>,
        limit: u32,
    ) -> crate::Result<Page<Job>> {
        let after = parse_cursor(after)?;
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
        // substr, not LIKE: exact on both backends (SQLite's LIKE ignores case).
        if filter.dedup_prefix.is_some() {
            sql.push_str(" AND substr(dedup_id, 1, ?) = ?");
        }
        sql.push_str(" ORDER BY seq LIMIT ?");
        let prefix = filter
            .dedup_prefix
            .as_deref()
            .map(|p| (p.chars().count() as i64, p));
        let q = Sql::new(sql)
            .bind(after)
            .bind_all(filter.status.map(|s| s.as_str()))
            .bind_all(&filter.tenant)
            .bind_all(&filter.queue)
            .bind_all(prefix.map(|p| p.0))
            .bind_all(prefix.map(|p| p.1))
            .bind(i64::from(limit) + 1);
        let rows = self
            .db()
            .pool()
            .fetch_all(&q)
            .await
            .context("cannot list jobs")?;
        Page::from_rows(&rows, limit, job_from_row)
    }

    async fn cancel_job(&self, id: &str, now: Millis) -> crate::Result<Cancelled> {
        let mut tx = self.db().begin().await?;
        let q = Sql::new(format!(
            "UPDATE jobs SET status = 'cancelled', updated_at = ?, next_callback_at = ? \
             WHERE id = ? AND {WAITING} RETURNING {JOB_COLUMNS}"
        ))
        .bind(now)
        .bind(now)
        .bind(id);
        let row = tx.fetch_optional(&q).await.context("cannot cancel a job")?;
        let out = match row {
            Some(row) => Cancelled::Done(job_from_row(&row)?.1),
            None => match fetch_job(&mut tx.conn(), id).await? {
                Some(job) => Cancelled::Unchanged(job),
                None => Cancelled::NotFound,
            },
        };
        tx.commit().await.context("cannot commit a cancellation")?;
        Ok(out)
    }

    /// The `limit` earliest due jobs that may run (parallel queues: any; throttled and
    /// sequential queues: as many as their scopes have room for) are marked running and
    /// returned, earliest first. How differs by backend: see `claim_on_sqlite` and
    /// `claim_on_postgres`.
    async fn claim_ready(
        &self,
        now: Millis,
        rules: &[QueueRule],
        limit: u32,
    ) -> crate::Result<Vec<Job>> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let restricted = restricted_queues(rules);
        let db = self.db();
        match db.node() {
            None => claim_on_sqlite(db, now, &restricted, limit).await,
            Some(node) => claim_on_postgres(db, node, now, &restricted, limit).await,
        }
    }

    /// A job that is not running (any more) is left as it is; the attempt is recorded all
    /// the same. Concurrent calls share transactions (`super::writer`); on PostgreSQL the
    /// group's commit notifies the other nodes (a finished job may free a throttled or
    /// sequential slot another node waits for).
    async fn finish_attempt(
        &self,
        attempt: AttemptRecord,
        transition: Transition,
        now: Millis,
    ) -> crate::Result<Job> {
        self.db()
            .grouped(super::writer::Op::finish(attempt, transition, now))
            .await
    }

    async fn attempts(&self, job_id: &str) -> crate::Result<Vec<AttemptRecord>> {
        let q = Sql::new(
            "SELECT job_id, number, started_at, finished_at, status, wait_ms, \
             rate_limit_headers, error FROM job_attempts WHERE job_id = ? ORDER BY seq",
        )
        .bind(job_id);
        let rows = self
            .db()
            .pool()
            .fetch_all(&q)
            .await
            .context("cannot read a job's attempts")?;
        rows.iter()
            .map(|r| {
                Ok(AttemptRecord {
                    job_id: r.col("job_id")?,
                    number: u32_col(r, "number")?,
                    started_at: r.col("started_at")?,
                    finished_at: r.col("finished_at")?,
                    status: r
                        .col::<Option<i64>>("status")?
                        .map(u16::try_from)
                        .transpose()
                        .context("stored attempt status")?,
                    wait_ms: u64::try_from(r.col::<i64>("wait_ms")?).unwrap_or(0),
                    rate_limit_headers: parse_headers(&r.col::<String>("rate_limit_headers")?)?,
                    error: r.col("error")?,
                })
            })
            .collect()
    }

    /// On SQLite every running job: this process is the only one running them. On
    /// PostgreSQL only the jobs of this node and of dead nodes: the other nodes are running
    /// theirs.
    async fn requeue_running(&self, now: Millis) -> crate::Result<u64> {
        requeue_jobs(self.db(), true, now).await
    }

    async fn next_ready_at(&self) -> crate::Result<Option<Millis>> {
        let db = self.db();
        let q = Sql::new(format!(
            "SELECT MIN(next_attempt_at) AS at FROM jobs {} WHERE {WAITING}",
            db.dialect().indexed_by(BY_WAITING)
        ));
        let row = db
            .pool()
            .fetch_one(&q)
            .await
            .context("cannot read when the next job is ready")?;
        row.col("at")
    }

    /// On PostgreSQL the due callbacks are taken for `CALLBACK_HOLD` by this node: another
    /// node does not deliver them meanwhile (this one may ask again and gets them again).
    async fn due_callbacks(&self, now: Millis, limit: u32) -> crate::Result<Vec<Job>> {
        let db = self.db();
        let rows = match db.node() {
            None => {
                let q = Sql::new(format!(
                    "SELECT {JOB_COLUMNS} FROM jobs {} WHERE callback = 'pending' AND {FINAL} \
                     AND next_callback_at <= ? ORDER BY next_callback_at, seq LIMIT ?",
                    db.dialect().indexed_by(BY_CALLBACK)
                ))
                .bind(now)
                .bind(i64::from(limit));
                db.pool()
                    .fetch_all(&q)
                    .await
                    .context("cannot read due callbacks")?
            }
            Some(node) => {
                let q = Sql::new(format!(
                    "UPDATE jobs SET callback_node = ?, callback_until = ? WHERE seq IN (\
                     SELECT seq FROM jobs WHERE callback = 'pending' AND {FINAL} \
                     AND next_callback_at <= ? \
                     AND (callback_until IS NULL OR callback_until <= ? OR callback_node = ?) \
                     ORDER BY next_callback_at, seq LIMIT ?{}) \
                     RETURNING {JOB_COLUMNS}",
                    db.dialect().skip_locked()
                ))
                .bind(node)
                .bind(now + CALLBACK_HOLD)
                .bind(now)
                .bind(now)
                .bind(node)
                .bind(i64::from(limit));
                db.pool()
                    .fetch_all(&q)
                    .await
                    .context("cannot take due callbacks")?
            }
        };
        let mut due = rows
            .iter()
            .map(job_from_row)
            .collect::<crate::Result<Vec<_>>>()?;
        due.sort_by_key(|(seq, j)| (j.next_callback_at, *seq));
        Ok(due.into_iter().map(|(_, j)| j).collect())
    }

    /// On PostgreSQL the node's hold on the callback ends.
    async fn callback_attempted(
        &self,
        id: &str,
        delivered: bool,
        next: Option<Millis>,
    ) -> crate::Result<()> {
        let done = record_callback_attempt(self.db(), "jobs", id, delivered, next).await?;
        if done == 0 {
            crate::error::bail!(Invalid, "no job \"{id}\"");
        }
        Ok(())
    }

    /// On PostgreSQL the hold lasts until `at` too: another node may take them then.
    async fn postpone_callbacks(&self, ids: &[String], at: Millis) -> crate::Result<()> {
        postpone_callbacks_in(self.db(), "jobs", ids, at).await
    }

    async fn prune_jobs(&self, before: Millis, now: Millis) -> crate::Result<Pruned> {
        self.db().prune_jobs_before(before, now).await
    }
}

/// Records a delivery attempt of the callback of job or batch `id` (`table`: `jobs` or
/// `batches`): delivered, or retry at `next` (None: given up); on PostgreSQL the node's hold on
/// it ends. Returns the rows changed.
pub(super) async fn record_callback_attempt(
    db: Db<'_>,
    table: &str,
    id: &str,
    delivered: bool,
    next: Option<Millis>,
) -> crate::Result<u64> {
    let state = match (delivered, next) {
        (true, _) => CallbackState::Delivered,
        (false, Some(_)) => CallbackState::Pending,
        (false, None) => CallbackState::Failed,
    };
    let release = match db.node() {
        None => "",
        Some(_) => ", callback_node = NULL, callback_until = NULL",
    };
    let q = Sql::new(format!(
        "UPDATE {table} SET callback = ?, callback_attempts = callback_attempts + 1, \
         next_callback_at = COALESCE(?, next_callback_at){release} WHERE id = ?"
    ))
    .bind(callback_str(state))
    .bind(next)
    .bind(id);
    db.writer()
        .execute(&q)
        .await
        .context("cannot record a callback")
}

/// Moves the pending callbacks of the jobs or batches `ids` (`table`) to `at`; on PostgreSQL
/// this node's hold on them lasts until then too.
pub(super) async fn postpone_callbacks_in(
    db: Db<'_>,
    table: &str,
    ids: &[String],
    at: Millis,
) -> crate::Result<()> {
    if ids.is_empty() {
        return Ok(());
    }
    let hold = db.node().is_some();
    let q = Sql::new(format!(
        "UPDATE {table} SET next_callback_at = ?{} WHERE callback = 'pending' AND id IN ({})",
        if hold { ", callback_until = ?" } else { "" },
        placeholders(ids.len())
    ))
    .bind(at)
    .bind_all(hold.then_some(at))
    .bind_all(ids);
    db.writer()
        .execute(&q)
        .await
        .context("cannot postpone callbacks")?;
    Ok(())
}

/// Puts running jobs back in the queue. Returns how many.
///
/// On SQLite every running job: this process was the only one running them. On PostgreSQL
/// (the node guard) those of dead nodes, and of this one if `mine`: jobs a node held when it
/// stopped answering.
pub(super) async fn requeue_jobs(db: Db<'_>, mine: bool, now: Millis) -> crate::Result<u64> {
    let q = match db.node() {
        None => {
            Sql::new("UPDATE jobs SET status = 'queued', updated_at = ? WHERE status = 'running'")
                .bind(now)
        }
        Some(node) => {
            let mut sql = format!(
                "UPDATE jobs SET status = 'queued', node = NULL, updated_at = ? \
                 WHERE status = 'running' AND (node IS NULL OR NOT {})",
                super::pg::alive("node")
            );
            if mine {
                sql.push_str(" OR (status = 'running' AND node = ?)");
            }
            Sql::new(sql).bind(now).bind_all(mine.then_some(node))
        }
    };
    db.writer()
        .execute(&q)
        .await
        .context("cannot requeue running jobs")
}
