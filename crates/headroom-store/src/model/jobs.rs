//! What a job, an attempt and a batch are, and the store interface every backend implements.
//!
//! Times are milliseconds since the Unix epoch (`Millis`) so that they survive restarts and
//! mean the same on every node.

use headroom_core::Lane;
use serde::{Deserialize, Serialize};

pub use crate::time::Millis;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobStatus {
    Queued,
    Running,
    RetryPending,
    Succeeded,
    Failed,
    Cancelled,
}

impl JobStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            JobStatus::Queued => "queued",
            JobStatus::Running => "running",
            JobStatus::RetryPending => "retry_pending",
            JobStatus::Succeeded => "succeeded",
            JobStatus::Failed => "failed",
            JobStatus::Cancelled => "cancelled",
        }
    }

    pub fn parse(s: &str) -> Option<JobStatus> {
        Some(match s {
            "queued" => JobStatus::Queued,
            "running" => JobStatus::Running,
            "retry_pending" => JobStatus::RetryPending,
            "succeeded" => JobStatus::Succeeded,
            "failed" => JobStatus::Failed,
            "cancelled" => JobStatus::Cancelled,
            _ => return None,
        })
    }

    pub fn is_final(self) -> bool {
        matches!(
            self,
            JobStatus::Succeeded | JobStatus::Failed | JobStatus::Cancelled
        )
    }
}

/// The HTTP request a job makes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobRequest {
    pub method: String,
    /// Path under the upstream's base URL, starting with `/`.
    pub path: String,
    pub query: Option<String>,
    pub headers: Vec<(String, String)>,
    /// The body bytes; `body_is_json` says whether they were given as JSON (else base64).
    pub body: Option<Vec<u8>>,
    pub body_is_json: bool,
}

/// How a queue runs its jobs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QueueMode {
    /// As many at once as the budgets allow.
    Parallel,
    /// At most this many running at once per scope; the rest wait in arrival order.
    Throttled(u32),
    /// Strict FIFO per scope, one at a time: a job waits while an earlier one is unfinished.
    Sequential,
}

/// A queue as the store needs to know it to claim jobs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueRule {
    pub name: String,
    pub mode: QueueMode,
}

/// A job to insert. `scope` is the concurrency scope within the queue: `""` for a globally
/// scoped queue, the tenant for a tenant-scoped one.
#[derive(Debug, Clone, PartialEq)]
pub struct NewJob {
    pub id: String,
    pub queue: String,
    pub scope: String,
    pub upstream: String,
    pub tenant: Option<String>,
    pub lane: Lane,
    pub request: JobRequest,
    /// With `dedup_until`: a job of the same queue and dedup id inserted before that time
    /// (and not yet past it) is returned instead of inserting this one.
    pub dedup_id: Option<String>,
    pub dedup_until: Option<Millis>,
    pub callback_url: Option<String>,
    pub max_attempts: u32,
    /// Sent on every attempt in the upstream's idempotency header, when it has one.
    pub idempotency_key: String,
    pub created_at: Millis,
}

/// What the upstream answered, kept with the job (body capped).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CallbackState {
    /// No callback URL.
    None,
    /// To be POSTed once the job is final.
    Pending,
    Delivered,
    /// Gave up after its retries.
    Failed,
}

/// A stored job.
#[derive(Debug, Clone, PartialEq)]
pub struct Job {
    pub new: NewJob,
    pub status: JobStatus,
    /// Attempts made (an attempt rescheduled by a long Retry-After does not count).
    pub attempts: u32,
    pub next_attempt_at: Millis,
    pub updated_at: Millis,
    pub last_error: Option<String>,
    pub response: Option<JobResponse>,
    pub callback: CallbackState,
    pub callback_attempts: u32,
    pub next_callback_at: Millis,
}

pub enum Inserted {
    Created(Job),
    /// A job with the same dedup id inside the window: nothing was inserted.
    Duplicate(Job),
}

/// One attempt of a job.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AttemptRecord {
    pub job_id: String,
    /// 1-based; rescheduled attempts keep the number of the next real one.
    pub number: u32,
    pub started_at: Millis,
    pub finished_at: Millis,
    /// The upstream's status; `None` when it could not be reached (or Headroom refused).
    pub status: Option<u16>,
    /// Time waiting in Headroom before the call (governor queue, pauses).
    pub wait_ms: u64,
    /// The rate-limit headers the response carried.
    pub rate_limit_headers: Vec<(String, String)>,
    pub error: Option<String>,
}

/// Where a job goes after an attempt.
#[derive(Debug, Clone, PartialEq)]
pub enum Transition {
    Succeeded {
        response: JobResponse,
    },
    Failed {
        error: String,
        response: Option<JobResponse>,
    },
    /// `retry_pending` until `at`. `burn_attempt` is false when a long Retry-After rescheduled
    /// the job: that attempt does not count against `max_attempts`.
    Retry {
        at: Millis,
        error: String,
        burn_attempt: bool,
    },
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct JobFilter {
    pub status: Option<JobStatus>,
    pub tenant: Option<String>,
    pub queue: Option<String>,
    /// Jobs whose dedup id starts with this (webhook intake's `intake:{source}:`).
    pub dedup_prefix: Option<String>,
}

/// One page of a listing; `next` is the cursor of the following page.
#[derive(Debug, Clone, PartialEq)]
pub struct Page<T> {
    pub items: Vec<T>,
    pub next: Option<String>,
}

/// The sequence number a page's cursor names (0 for the first page): decimal text, as
/// `Page::from_rows` gives it.
pub(crate) fn parse_cursor(after: Option<&str>) -> crate::Result<i64> {
    match after {
        None | Some("") => Ok(0),
        Some(c) => c.parse().ok().filter(|n: &i64| *n >= 0).ok_or_else(|| {
            crate::StoreError::invalid(format!("cursor \"{c}\" is not one this server gave"))
        }),
    }
}

impl<T> Page<T> {
    /// A page from up to `limit + 1` rows fetched in cursor order: the extra row only says
    /// there is a next page, whose cursor is the sequence number of this page's last item.
    pub(crate) fn from_rows<R>(
        rows: &[R],
        limit: u32,
        read: impl Fn(&R) -> crate::Result<(i64, T)>,
    ) -> crate::Result<Page<T>> {
        let limit = limit as usize;
        let mut items = Vec::with_capacity(rows.len().min(limit));
        let mut last = 0;
        for row in rows.iter().take(limit) {
            let (seq, item) = read(row)?;
            last = seq;
            items.push(item);
        }
        Ok(Page {
            items,
            next: (rows.len() > limit).then(|| last.to_string()),
        })
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum Cancelled {
    NotFound,
    /// Was queued or waiting for a retry: now cancelled.
    Done(Job),
    /// Already final or running: unchanged.
    Unchanged(Job),
}

/// What a retention prune deleted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Pruned {
    pub jobs: u64,
    pub attempts: u64,
    pub dedup_ids: u64,
    pub batches: u64,
    pub records: u64,
}

impl std::ops::Add for Pruned {
    type Output = Pruned;
    fn add(self, o: Pruned) -> Pruned {
        Pruned {
            jobs: self.jobs + o.jobs,
            attempts: self.attempts + o.attempts,
            dedup_ids: self.dedup_ids + o.dedup_ids,
            batches: self.batches + o.batches,
            records: self.records + o.records,
        }
    }
}

/// The durable store of jobs. Every backend passes `store::conformance`.
#[allow(async_fn_in_trait)]
pub trait JobStore: Send + Sync {
    /// Stores a job (durably, before this returns) unless its dedup id is taken.
    async fn insert_job(&self, job: NewJob) -> crate::Result<Inserted>;
    async fn get_job(&self, id: &str) -> crate::Result<Option<Job>>;
    /// Jobs in insertion order, after the cursor `after`.
    async fn list_jobs(
        &self,
        filter: &JobFilter,
        after: Option<&str>,
        limit: u32,
    ) -> crate::Result<Page<Job>>;
    async fn cancel_job(&self, id: &str, now: Millis) -> crate::Result<Cancelled>;
    /// Marks up to `limit` jobs whose time has come `running` and returns them, honouring
    /// each queue's mode per scope (queues not in `rules` run in parallel): throttled queues
    /// keep at most N running per scope, taking the oldest first; sequential queues run a
    /// job only when it is the oldest unfinished one of its scope and none is running.
    async fn claim_ready(
        &self,
        now: Millis,
        rules: &[QueueRule],
        limit: u32,
    ) -> crate::Result<Vec<Job>>;
    /// Records an attempt and moves the (running) job on.
    async fn finish_attempt(
        &self,
        attempt: AttemptRecord,
        transition: Transition,
        now: Millis,
    ) -> crate::Result<Job>;
    async fn attempts(&self, job_id: &str) -> crate::Result<Vec<AttemptRecord>>;
    /// After a crash: jobs left `running` go back to `queued`. Returns how many.
    async fn requeue_running(&self, now: Millis) -> crate::Result<u64>;
    /// The earliest `next_attempt_at` of a waiting job, to know when to look again.
    async fn next_ready_at(&self) -> crate::Result<Option<Millis>>;
    /// Final jobs whose callback is due.
    async fn due_callbacks(&self, now: Millis, limit: u32) -> crate::Result<Vec<Job>>;
    /// Records a callback delivery attempt: delivered, or retry at `next` (None: give up).
    async fn callback_attempted(
        &self,
        id: &str,
        delivered: bool,
        next: Option<Millis>,
    ) -> crate::Result<()>;
    /// Moves pending callbacks to `at` without counting an attempt: those being delivered
    /// (read again only if the node stops before recording the attempt), and those held back
    /// by a limit (behind the other due ones). On a shared store, no other node takes them
    /// before `at` either.
    async fn postpone_callbacks(&self, ids: &[String], at: Millis) -> crate::Result<()>;
    /// Retention: deletes the jobs final and unchanged since `before` whose callback is
    /// delivered or given up and whose dedup window ended by `now`, with their attempts, and
    /// the dedup ids whose window ended by `now`.
    async fn prune_jobs(&self, before: Millis, now: Millis) -> crate::Result<Pruned>;
}

/// A batch to insert: records sent in chunks to a bulk endpoint.
#[derive(Debug, Clone, PartialEq)]
pub struct NewBatch {
    pub id: String,
    pub upstream: String,
    pub tenant: Option<String>,
    pub lane: Lane,
    /// `headroom_core::batch::Format` as JSON.
    pub format: String,
    pub max_batch_size: u32,
    /// Method, path, query and headers of every chunk's call (no body).
    pub request: JobRequest,
    /// Attempts per record before it fails.
    pub max_attempts: u32,
    pub callback_url: Option<String>,
    pub created_at: Millis,
    pub records: Vec<NewRecord>,
    /// Sent as asynchronous bulk jobs (see [`BulkJob`]), not as calls.
    pub asynchronous: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub struct NewRecord {
    /// The caller's id for the record (its index as text when none was given).
    pub record_id: String,
    /// The record as JSON.
    pub payload: Vec<u8>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BatchStatus {
    Queued,
    Running,
    Succeeded,
    CompletedWithFailures,
    Cancelled,
}

impl BatchStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            BatchStatus::Queued => "queued",
            BatchStatus::Running => "running",
            BatchStatus::Succeeded => "succeeded",
            BatchStatus::CompletedWithFailures => "completed_with_failures",
            BatchStatus::Cancelled => "cancelled",
        }
    }

    pub fn parse(s: &str) -> Option<BatchStatus> {
        Some(match s {
            "queued" => BatchStatus::Queued,
            "running" => BatchStatus::Running,
            "succeeded" => BatchStatus::Succeeded,
            "completed_with_failures" => BatchStatus::CompletedWithFailures,
            "cancelled" => BatchStatus::Cancelled,
            _ => return None,
        })
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RecordFailure {
    pub index: u64,
    pub record_id: String,
    pub error: String,
}

/// What `GET /v1/batches/{id}` shows.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BatchSummary {
    pub id: String,
    pub status: BatchStatus,
    pub upstream: String,
    pub tenant: Option<String>,
    pub total: u64,
    pub succeeded: u64,
    pub failed: u64,
    pub pending: u64,
    /// Calls made to the bulk endpoint.
    pub calls: u64,
    /// Records whose call was in flight when Headroom stopped abruptly: they may have been
    /// applied once already and were sent again.
    pub possibly_duplicated: u64,
    pub failures: Vec<RecordFailure>,
    /// Async batches: their bulk jobs (filled in when one batch is read).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub bulk_jobs: Vec<BulkJobView>,
    /// Shown as RFC 3339 (as a job's times are); kept as Unix milliseconds.
    #[serde(serialize_with = "rfc3339")]
    pub created_at: Millis,
    #[serde(serialize_with = "rfc3339")]
    pub updated_at: Millis,
}

/// Unix milliseconds as RFC 3339 UTC with milliseconds, e.g. `2025-03-01T12:00:00.123Z`.
fn rfc3339<S: serde::Serializer>(ms: &Millis, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&crate::time::rfc3339(*ms))
}

/// The batch a chunk belongs to.
#[derive(Debug, Clone, PartialEq)]
pub struct BatchMeta {
    pub id: String,
    pub upstream: String,
    pub tenant: Option<String>,
    pub lane: Lane,
    pub format: String,
    pub max_batch_size: u32,
    pub request: JobRequest,
    pub max_attempts: u32,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ChunkRecord {
    pub index: u64,
    pub record_id: String,
    pub payload: Vec<u8>,
    /// Attempts this record has had before this chunk.
    pub attempts: u32,
}

/// Records of one batch claimed for one call: they are `in_flight` until finished.
#[derive(Debug, Clone, PartialEq)]
pub struct Chunk {
    pub chunk_id: String,
    pub batch: BatchMeta,
    pub records: Vec<ChunkRecord>,
}

/// Where a record goes after a chunk's call.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum RecordResult {
    Succeeded,
    Failed {
        error: String,
    },
    /// Pending again until `at`; `burn_attempt` false when the whole call was refused or
    /// throttled (nothing applied).
    Retry {
        at: Millis,
        error: String,
        burn_attempt: bool,
    },
}

/// The durable store of batches and their records.
#[allow(async_fn_in_trait)]
pub trait BatchStore: Send + Sync {
    /// Stores a batch and all its records in one transaction.
    async fn insert_batch(&self, batch: NewBatch) -> crate::Result<BatchSummary>;
    /// The batch with up to `failures_limit` failures listed (lowest index first).
    async fn get_batch(&self, id: &str, failures_limit: u32)
        -> crate::Result<Option<BatchSummary>>;
    /// Claims up to `max_batch_size` pending records of one batch whose time has come
    /// (lowest index first), skipping batches in `busy` (already at their concurrency), and
    /// marks them in flight.
    async fn claim_chunk(&self, now: Millis, busy: &[String]) -> crate::Result<Option<Chunk>>;
    /// Records the call's outcome for every record of the chunk (same order as
    /// `chunk.records`) and counts the call.
    async fn finish_chunk(
        &self,
        chunk: &Chunk,
        results: &[RecordResult],
        now: Millis,
    ) -> crate::Result<()>;
    /// After a crash: records left in flight go back to pending and are counted as possibly
    /// duplicated. Returns how many.
    async fn requeue_in_flight(&self, now: Millis) -> crate::Result<u64>;
    /// The earliest time a pending record becomes claimable.
    async fn next_chunk_at(&self) -> crate::Result<Option<Millis>>;
    /// Cancels the batch's pending records. `None` if there is no such batch.
    async fn cancel_batch(&self, id: &str, now: Millis) -> crate::Result<Option<BatchSummary>>;
    /// Retention: deletes the batches final, with nothing in flight, unchanged since
    /// `before`, whose callback is not still to be delivered, with their records.
    async fn prune_batches(&self, before: Millis) -> crate::Result<Pruned>;
    /// Final batches (nothing in flight) whose callback is due, oldest first. On PostgreSQL
    /// this node takes them for a while: another node does not deliver them meanwhile.
    async fn due_batch_callbacks(
        &self,
        now: Millis,
        limit: u32,
    ) -> crate::Result<Vec<DueBatchCallback>>;
    /// Records a batch callback delivery attempt: delivered, or retry at `next` (None: give up).
    async fn batch_callback_attempted(
        &self,
        id: &str,
        delivered: bool,
        next: Option<Millis>,
    ) -> crate::Result<()>;
    /// Moves the due batch callbacks `ids` to `at` (held back by a limit, or being delivered).
    async fn postpone_batch_callbacks(&self, ids: &[String], at: Millis) -> crate::Result<()>;
    /// Asynchronous bulk jobs: the next step to take, leased to `owner` until `now + lease`.
    /// A job whose next call is due goes first (`resumed` when the previous lease holder
    /// stopped mid-step); else a new job takes up to `max_batch_size` pending records of an
    /// async batch with fewer than `per_batch` jobs under way.
    async fn claim_bulk_job(
        &self,
        now: Millis,
        owner: &str,
        lease: Millis,
        per_batch: u32,
    ) -> crate::Result<Option<BulkJob>>;
    /// The records a bulk job carries, by index.
    async fn bulk_job_records(&self, job: &BulkJob) -> crate::Result<Vec<ChunkRecord>>;
    /// Stores a step and gives the lease back; `false` (nothing stored) when the lease was
    /// lost to another holder meanwhile.
    async fn save_bulk_job(
        &self,
        job: &BulkJob,
        step: &BulkStep,
        now: Millis,
    ) -> crate::Result<bool>;
    /// Records the outcome of every record of a bulk job (as `finish_chunk` does, counting
    /// the job's calls) and marks the job done, in one transaction.
    async fn finish_bulk_job(
        &self,
        job: &BulkJob,
        records: &[ChunkRecord],
        results: &[RecordResult],
        step: &BulkStep,
        now: Millis,
    ) -> crate::Result<()>;
    /// When the next bulk job step is due, if a job is under way.
    async fn next_bulk_job_at(&self) -> crate::Result<Option<Millis>>;
    /// A batch's bulk jobs, oldest first.
    async fn list_bulk_jobs(&self, batch_id: &str) -> crate::Result<Vec<BulkJobView>>;
    /// Stores an export (queued, due now).
    async fn insert_export(&self, export: NewExport) -> crate::Result<ExportView>;
    async fn get_export(&self, id: &str) -> crate::Result<Option<ExportView>>;
    /// Marks a queued or running export cancelled and due now (its job is aborted at its
    /// next step). `None` if there is no such export.
    async fn cancel_export(&self, id: &str, now: Millis) -> crate::Result<Option<ExportView>>;
    /// The export whose next step is due, leased to `owner` until `now + lease`.
    async fn claim_export(
        &self,
        now: Millis,
        owner: &str,
        lease: Millis,
    ) -> crate::Result<Option<ExportTask>>;
    /// Stores a step (and its page) and gives the lease back, in one transaction; `false`
    /// when the lease was lost meanwhile (nothing stored).
    async fn save_export(
        &self,
        task: &ExportTask,
        step: &ExportStep,
        now: Millis,
    ) -> crate::Result<bool>;
    /// A stored result page (from 1), as CSV.
    async fn export_page(&self, id: &str, page: u64) -> crate::Result<Option<Vec<u8>>>;
    /// When the next export step is due, if one is under way.
    async fn next_export_at(&self) -> crate::Result<Option<Millis>>;
    /// Batches in submission order after the cursor `after`, without their failures.
    async fn list_batches(
        &self,
        filter: &BatchFilter,
        after: Option<&str>,
        limit: u32,
    ) -> crate::Result<Page<BatchSummary>>;
}

/// Where an asynchronous bulk job is: the phase names the next call to make.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum BulkPhase {
    /// Create the job (no job yet).
    Create,
    /// Upload the records to the created job.
    Upload,
    /// Tell the API the upload is complete.
    Close,
    /// Ask the job's state until it is final.
    Poll,
    /// Download the per-record results of the final job.
    Results,
    /// The records have their outcomes.
    Done,
}

impl BulkPhase {
    pub fn as_str(self) -> &'static str {
        match self {
            BulkPhase::Create => "create",
            BulkPhase::Upload => "upload",
            BulkPhase::Close => "close",
            BulkPhase::Poll => "poll",
            BulkPhase::Results => "results",
            BulkPhase::Done => "done",
        }
    }

    pub fn parse(s: &str) -> Option<BulkPhase> {
        Some(match s {
            "create" => BulkPhase::Create,
            "upload" => BulkPhase::Upload,
            "close" => BulkPhase::Close,
            "poll" => BulkPhase::Poll,
            "results" => BulkPhase::Results,
            "done" => BulkPhase::Done,
            _ => return None,
        })
    }
}

/// An asynchronous bulk job (one chunk of an async batch's records), leased for its next
/// step.
#[derive(Debug, Clone, PartialEq)]
pub struct BulkJob {
    pub chunk_id: String,
    pub batch: BatchMeta,
    /// The batch was cancelled: the job is to be aborted.
    pub cancelled: bool,
    /// How many records the job carries.
    pub records: u64,
    /// The API's id for the job, once created.
    pub job_id: Option<String>,
    pub phase: BulkPhase,
    /// The API's last word on the job's state.
    pub state: Option<String>,
    /// What the last step stored: why the job failed, or why a step is to be tried again.
    pub error: Option<String>,
    pub polls: u32,
    pub calls: u64,
    /// The previous holder of the lease stopped during a step (a crash): what it sent may
    /// or may not have arrived.
    pub resumed: bool,
    /// Jobs given up for these records so far (uploads whose answer was lost).
    pub abandoned: usize,
    /// Who holds the lease now (this claim).
    pub owner: String,
}

/// What a bulk job's step leaves for the next one.
#[derive(Debug, Clone, PartialEq)]
pub struct BulkStep {
    pub job_id: Option<String>,
    pub phase: BulkPhase,
    pub state: Option<String>,
    pub error: Option<String>,
    pub polls: u32,
    /// Calls this step made.
    pub calls: u64,
    /// When the next step is due.
    pub next_at: Millis,
    /// A job given up (opened, never closed) to remember.
    pub abandoned: Option<String>,
}

/// A bulk job as a batch shows it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BulkJobView {
    /// The API's id for the job (none before it is created).
    pub job_id: Option<String>,
    pub phase: BulkPhase,
    /// The API's last word on the job's state (`InProgress`, `JobComplete`, …).
    pub state: Option<String>,
    pub records: u64,
    pub polls: u32,
    pub error: Option<String>,
    /// Jobs opened for these records and given up after a crash, before they were closed
    /// (none of their data was processed).
    pub abandoned: Vec<String>,
}

/// A bulk export to store: a query job whose result pages are kept in the store.
#[derive(Debug, Clone, PartialEq)]
pub struct NewExport {
    pub id: String,
    pub upstream: String,
    pub tenant: Option<String>,
    pub lane: Lane,
    /// Method, path and headers of the call that creates the job (its body is `job`).
    pub request: JobRequest,
    /// The query job to create, as JSON.
    pub job: String,
    /// Records per page.
    pub page_size: u32,
    pub created_at: Millis,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ExportStatus {
    Queued,
    Running,
    Succeeded,
    Failed,
    Cancelled,
}

impl ExportStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            ExportStatus::Queued => "queued",
            ExportStatus::Running => "running",
            ExportStatus::Succeeded => "succeeded",
            ExportStatus::Failed => "failed",
            ExportStatus::Cancelled => "cancelled",
        }
    }

    pub fn parse(s: &str) -> Option<ExportStatus> {
        Some(match s {
            "queued" => ExportStatus::Queued,
            "running" => ExportStatus::Running,
            "succeeded" => ExportStatus::Succeeded,
            "failed" => ExportStatus::Failed,
            "cancelled" => ExportStatus::Cancelled,
            _ => return None,
        })
    }
}

/// What `GET /v1/exports/{id}` shows.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ExportView {
    pub id: String,
    pub status: ExportStatus,
    pub upstream: String,
    pub tenant: Option<String>,
    /// The API's id for the query job, once created.
    pub job_id: Option<String>,
    /// The API's last word on the job's state.
    pub state: Option<String>,
    /// Result pages stored (`GET /v1/exports/{id}/pages/{n}`, from 1).
    pub pages: u64,
    pub records: u64,
    /// Calls made to the API.
    pub calls: u64,
    pub error: Option<String>,
    #[serde(serialize_with = "rfc3339")]
    pub created_at: Millis,
    #[serde(serialize_with = "rfc3339")]
    pub updated_at: Millis,
}

/// Where an export is: the phase names the next call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExportPhase {
    Create,
    Poll,
    Page,
    Done,
}

impl ExportPhase {
    pub fn as_str(self) -> &'static str {
        match self {
            ExportPhase::Create => "create",
            ExportPhase::Poll => "poll",
            ExportPhase::Page => "page",
            ExportPhase::Done => "done",
        }
    }

    pub fn parse(s: &str) -> Option<ExportPhase> {
        Some(match s {
            "create" => ExportPhase::Create,
            "poll" => ExportPhase::Poll,
            "page" => ExportPhase::Page,
            "done" => ExportPhase::Done,
            _ => return None,
        })
    }
}

/// An export leased for its next step.
#[derive(Debug, Clone, PartialEq)]
pub struct ExportTask {
    pub id: String,
    pub upstream: String,
    pub tenant: Option<String>,
    pub lane: Lane,
    pub request: JobRequest,
    pub job: String,
    pub page_size: u32,
    pub phase: ExportPhase,
    pub job_id: Option<String>,
    pub state: Option<String>,
    pub error: Option<String>,
    /// The next page's locator.
    pub locator: Option<String>,
    pub pages: u64,
    pub polls: u32,
    /// Cancelled: the job is to be aborted.
    pub cancelled: bool,
    /// The previous lease holder stopped mid-step.
    pub resumed: bool,
    pub owner: String,
}

/// What an export's step leaves: the next step, and a page to store.
#[derive(Debug, Clone, PartialEq)]
pub struct ExportStep {
    pub phase: ExportPhase,
    pub status: ExportStatus,
    pub job_id: Option<String>,
    pub state: Option<String>,
    pub error: Option<String>,
    pub locator: Option<String>,
    pub polls: u32,
    pub calls: u64,
    pub next_at: Millis,
    /// A page read in this step: its records and CSV, stored as page `pages + 1`.
    pub page: Option<(u64, Vec<u8>)>,
}

/// Which batches a listing shows.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct BatchFilter {
    pub status: Option<BatchStatus>,
    pub tenant: Option<String>,
    pub upstream: Option<String>,
}

/// A batch whose callback is due.
#[derive(Debug, Clone, PartialEq)]
pub struct DueBatchCallback {
    pub id: String,
    pub tenant: Option<String>,
    pub callback_url: String,
    /// Deliveries tried so far.
    pub attempts: u32,
}
