//! The bulk job runner: drives each asynchronous bulk job (a chunk of a `salesforce-bulk2`
//! batch) one step at a time — create, upload, close, poll, results — each step one governed
//! call in the batch's lane, so that polling spends the upstream's budget like any call and
//! real-time work stays ahead of it.
//!
//! A step's outcome is stored before the next step is taken. A crash loses at most the step
//! in flight; the next holder of the job (this node after a restart, or another node) is told
//! it resumes and asks the API what that step did before it goes on:
//!
//! - create: the answer was lost, so no id is known. A new job is created; the lost one, if
//!   it exists, is empty and Open (never processed).
//! - upload: the job is still Open, so none of its data was processed. It is aborted and a
//!   new job takes the records (its id is kept as `abandoned`): no record is processed twice.
//! - close, poll, results: asking the job's state again is harmless.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::HeaderMap;
use headroom_core::batch::bulk::{
    poll_interval, AsyncBulkApi, BulkCall, JobState, JobStatus, SalesforceBulk2,
};
use headroom_core::batch::{Format, IngestJob, Record, RecordOutcome};
use headroom_core::verdict::{verdict, Attempted, GiveUpReason, RetryRule, Verdict};
use http::{HeaderName, HeaderValue, Method};
use serde_json::Value;

use crate::app::AppState;
use crate::cfg::Upstream;
use crate::jobs::*;
use crate::outbound::{self, refusal, Answer, PrepareError, Read};

/// How long a step may take before another holder may take the job over.
const LEASE: Duration = Duration::from_secs(600);
/// A step still running this long is dropped (the lease has a minute left).
const STEP_LIMIT: Duration = Duration::from_secs(540);
/// Results steps at once in this process: each holds up to three result files.
const RESULTS_AT_ONCE: usize = 2;
/// Jobs given up for one chunk (uploads whose answer was lost) before its records spend an
/// attempt and wait.
const MAX_ABANDONED: usize = 3;
/// The longest a step waits on an upstream's word before it asks again.
const MAX_STEP_PAUSE: Duration = Duration::from_secs(3600);
/// Jobs of one batch under way at once.
const JOBS_PER_BATCH: u32 = 4;
/// Steps in flight at once in this process.
const STEPS_AT_ONCE: usize = 16;
/// A results file is read up to this size.
const MAX_RESULTS: usize = 128 << 20;
/// A status or create answer is read up to this size.
const MAX_ANSWER: usize = 1 << 20;
/// Marks an upload whose answer did not arrive: the next step checks the job first.
const UPLOAD_UNKNOWN: &str = "upload-unknown";

/// Takes due bulk job steps from the store and runs them, a few at a time.
pub async fn run_loop(app: AppState) {
    let owner = crate::jobs::request::new_id("bulk");
    let slots = Arc::new(tokio::sync::Semaphore::new(STEPS_AT_ONCE));
    let results_slots = Arc::new(tokio::sync::Semaphore::new(RESULTS_AT_ONCE));
    let mut claims = 0u64;
    loop {
        if app.shutdown.is_stopping() {
            return; // the steps under way finish; the drain waits for them
        }
        let permit = Arc::clone(&slots)
            .acquire_owned()
            .await
            .expect("never closed");
        let now = app.clock.now_millis();
        // Each claim holds the lease under its own name: a step that outlived its lease
        // cannot store over the next holder's, even in this process.
        claims += 1;
        let token = format!("{owner}/{claims}");
        match app
            .store
            .claim_bulk_job(now, &token, LEASE.as_millis() as Millis, JOBS_PER_BATCH)
            .await
        {
            Ok(Some(job)) => {
                let app = app.clone();
                let working = app.shutdown.working();
                let results_slots = Arc::clone(&results_slots);
                tokio::spawn(async move {
                    let _working = working;
                    // Given up well before the lease runs out: nothing is stored, and the next
                    // holder resumes the job (checking what this step did).
                    let step = run_step(&app, job, &results_slots);
                    if tokio::time::timeout(STEP_LIMIT, step).await.is_err() {
                        tracing::warn!(
                            "a bulk job step took longer than {}s; it resumes",
                            STEP_LIMIT.as_secs()
                        );
                    }
                    drop(permit);
                });
                continue;
            }
            Ok(None) => {}
            Err(e) => tracing::error!(error = %format!("{e:#}"), "cannot claim a bulk job"),
        }
        drop(permit);
        // New async batches are found within half a second; due steps on time.
        let wait = match app.store.next_bulk_job_at().await {
            Ok(Some(at)) => Duration::from_millis((at - now).clamp(10, 500) as u64),
            _ => Duration::from_millis(500),
        };
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = app.shutdown.stopped() => {}
        }
    }
}

/// What a step leaves: the next step, or the records' outcomes.
enum Next {
    Step(BulkStep),
    Finish(Vec<ChunkRecord>, Vec<RecordResult>, BulkStep),
}

async fn run_step(app: &AppState, job: BulkJob, results_slots: &tokio::sync::Semaphore) {
    let next = match Ctx::new(app, &job, results_slots) {
        Ok(ctx) => ctx.step().await,
        Err(error) => ctx_failed(app, &job, error).await,
    };
    let now = app.clock.now_millis();
    let stored = match &next {
        Next::Step(step) => app.store.save_bulk_job(&job, step, now).await.map(drop),
        Next::Finish(records, results, step) => {
            app.store
                .finish_bulk_job(&job, records, results, step, now)
                .await
        }
    };
    if let Err(e) = stored {
        tracing::error!(batch = %job.batch.id, job = ?job.job_id, error = %format!("{e:#}"), "cannot store a bulk job's step");
    }
}

/// A job whose batch cannot be read any more (its upstream left the config): its records
/// fail with the reason.
async fn ctx_failed(app: &AppState, job: &BulkJob, error: String) -> Next {
    match app.store.bulk_job_records(job).await {
        Ok(records) => {
            let results = vec![RecordResult::Failed { error }; records.len()];
            Next::Finish(records, results, done(job, 0))
        }
        Err(e) => {
            let mut step = done(job, 0);
            step.phase = job.phase;
            step.error = Some(format!("{e:#}"));
            step.next_at = app.clock.now_millis() + 5000;
            Next::Step(step)
        }
    }
}

fn done(job: &BulkJob, calls: u64) -> BulkStep {
    BulkStep {
        job_id: job.job_id.clone(),
        phase: BulkPhase::Done,
        state: job.state.clone(),
        error: None,
        polls: job.polls,
        calls,
        next_at: 0,
        abandoned: None,
    }
}

/// A call's answer, as a step reads it.
pub(crate) enum Reply {
    /// A 2xx: its body (up to the read limit) and headers.
    Ok(bytes::Bytes, HeaderMap),
    /// Not now: nothing was done (throttled, refused by the budget, a 5xx), or the answer was
    /// lost (`lost`: the call may have arrived).
    Retry {
        after: Duration,
        error: String,
        lost: bool,
    },
    /// The API said no for good.
    Fatal(String),
}

struct Ctx<'a> {
    app: &'a AppState,
    job: &'a BulkJob,
    ingest: IngestJob,
    base: String,
    caller: Caller<'a>,
    results_slots: &'a tokio::sync::Semaphore,
}

impl<'a> Ctx<'a> {
    fn new(
        app: &'a AppState,
        job: &'a BulkJob,
        results_slots: &'a tokio::sync::Semaphore,
    ) -> Result<Ctx<'a>, String> {
        let request = crate::jobs::secrets::open(
            &app.credentials,
            &crate::jobs::secrets::batch_owner(&job.batch.id),
            &job.batch.request,
        )?;
        let upstream = app
            .config
            .upstream(&job.batch.upstream)
            .cloned()
            .ok_or_else(|| {
                format!(
                    "upstream \"{}\" is no longer configured",
                    job.batch.upstream
                )
            })?;
        let format = serde_json::from_str::<Value>(&job.batch.format)
            .map_err(|e| e.to_string())
            .and_then(|v| Format::from_json(&v).map_err(|e| e.to_string()))
            .map_err(|e| format!("the stored batch format is unreadable: {e}"))?;
        let Format::SalesforceBulk2(ingest) = format else {
            return Err(format!("format {format} is not an asynchronous bulk API"));
        };
        Ok(Ctx {
            app,
            job,
            results_slots,
            ingest,
            base: request.path,
            caller: Caller {
                app,
                upstream,
                tenant: job.batch.tenant.as_deref(),
                lane: job.batch.lane,
                headers: request.headers,
                calls: 0,
            },
        })
    }

    fn api(&self) -> SalesforceBulk2<'_> {
        SalesforceBulk2 {
            job: &self.ingest,
            base: &self.base,
        }
    }

    fn now(&self) -> Millis {
        self.app.clock.now_millis()
    }

    /// A final step, counting this step's calls.
    fn stamp(&self, mut step: BulkStep) -> BulkStep {
        step.calls = self.caller.calls;
        step
    }

    fn next(&self, phase: BulkPhase, job_id: Option<String>, state: Option<String>) -> BulkStep {
        BulkStep {
            job_id,
            phase,
            state,
            error: None,
            polls: if phase == BulkPhase::Poll {
                self.job.polls
            } else {
                0
            },
            calls: self.caller.calls,
            next_at: self.now(),
            abandoned: None,
        }
    }

    /// The same step again after `after`.
    fn again(&self, after: Duration, error: String) -> Next {
        Next::Step(self.again_step(after, error))
    }

    fn again_step(&self, after: Duration, error: String) -> BulkStep {
        // In the results phase `error` is the job's own reason for failing: kept.
        let error = match self.job.phase {
            BulkPhase::Results => self.job.error.clone(),
            _ => Some(error),
        };
        BulkStep {
            job_id: self.job.job_id.clone(),
            phase: self.job.phase,
            state: self.job.state.clone(),
            error,
            polls: self.job.polls,
            calls: self.caller.calls,
            next_at: self.now() + after.as_millis() as Millis,
            abandoned: None,
        }
    }

    async fn step(mut self) -> Next {
        let job_id = self.job.job_id.clone();
        match (self.job.phase, job_id) {
            (BulkPhase::Create, _) => self.create().await,
            (BulkPhase::Upload, Some(id)) => self.upload(id).await,
            (BulkPhase::Close, Some(id)) => self.close(id).await,
            (BulkPhase::Poll, Some(id)) => self.poll(id).await,
            (BulkPhase::Results, Some(id)) => self.results(id).await,
            (BulkPhase::Done, _) => Next::Step(done(self.job, 0)),
            (phase, None) => {
                // Cannot happen: every phase after create stores the job's id.
                let error = format!("bulk job in phase {} without an id", phase.as_str());
                self.fail_all(error).await
            }
        }
    }

    async fn records(&self) -> Result<Vec<ChunkRecord>, Next> {
        self.app
            .store
            .bulk_job_records(self.job)
            .await
            .map_err(|e| self.again(Duration::from_secs(5), format!("{e:#}")))
    }

    /// Every record fails with `error` (sending them again would not help).
    async fn fail_all(&self, error: String) -> Next {
        match self.records().await {
            Ok(records) => {
                let results = vec![RecordResult::Failed { error }; records.len()];
                Next::Finish(records, results, self.stamp(done(self.job, 0)))
            }
            Err(next) => next,
        }
    }

    /// Nothing of the job was processed: every record spends an attempt and waits for
    /// another job.
    async fn retry_all(&self, error: String) -> Next {
        match self.records().await {
            Ok(records) => {
                let now = self.now();
                let results = records
                    .iter()
                    .map(|r| RecordResult::Retry {
                        at: now + record_backoff(r.attempts + 1).as_millis() as Millis,
                        error: error.clone(),
                        burn_attempt: true,
                    })
                    .collect();
                Next::Finish(records, results, self.stamp(done(self.job, 0)))
            }
            Err(next) => next,
        }
    }

    /// Nothing of the job was processed: every record goes back to wait for another job
    /// (or is cancelled with its batch), without spending an attempt.
    async fn give_back(&self, error: String) -> Next {
        match self.records().await {
            Ok(records) => {
                let at = self.now();
                let results = vec![
                    RecordResult::Retry {
                        at,
                        error,
                        burn_attempt: false,
                    };
                    records.len()
                ];
                Next::Finish(records, results, self.stamp(done(self.job, 0)))
            }
            Err(next) => next,
        }
    }

    async fn create(&mut self) -> Next {
        if self.job.cancelled {
            return self.give_back("the batch was cancelled".into()).await;
        }
        let call = self.api().create();
        match self.caller.call(call, MAX_ANSWER).await {
            Reply::Ok(body, _) => match self.api().created(&body) {
                Ok(id) => Next::Step(self.next(BulkPhase::Upload, Some(id), Some("Open".into()))),
                Err(e) => {
                    self.fail_all(format!("cannot create the bulk job: {e}"))
                        .await
                }
            },
            // A lost answer may have created an empty job: harmless, it is never closed.
            Reply::Retry { after, error, .. } => self.again(after, error),
            Reply::Fatal(e) => {
                self.fail_all(format!("cannot create the bulk job: {e}"))
                    .await
            }
        }
    }

    async fn upload(&mut self, id: String) -> Next {
        let unsure = self.job.resumed || self.job.state.as_deref() == Some(UPLOAD_UNKNOWN);
        if self.job.cancelled || unsure {
            // Whatever was uploaded to an Open job is never processed: abort it, and (unless
            // cancelled) let a new job take the records once the abort is confirmed. Until
            // then the job stays marked unsure, whatever defers the check.
            let next = self.abandon(id).await;
            return match next {
                Next::Step(mut step) if step.phase == BulkPhase::Upload => {
                    step.state = Some(UPLOAD_UNKNOWN.into());
                    Next::Step(step)
                }
                other => other,
            };
        }
        let records = match self.records().await {
            Ok(r) => r,
            Err(next) => return next,
        };
        let as_records = to_records(&records);
        let call = match self.api().upload(&id, &as_records) {
            Ok(call) => call,
            Err(e) => {
                let aborted = self.api().abort(&id);
                let _ = self.caller.call(aborted, MAX_ANSWER).await;
                return self.fail_all(e.to_string()).await;
            }
        };
        match self.caller.call(call, MAX_ANSWER).await {
            Reply::Ok(..) => Next::Step(self.next(BulkPhase::Close, Some(id), Some("Open".into()))),
            Reply::Retry {
                after,
                error,
                lost: true,
            } => {
                let mut step = self.again_step(after, error);
                step.state = Some(UPLOAD_UNKNOWN.into());
                Next::Step(step)
            }
            Reply::Retry { after, error, .. } => self.again(after, error),
            Reply::Fatal(e) => {
                let aborted = self.api().abort(&id);
                let _ = self.caller.call(aborted, MAX_ANSWER).await;
                self.fail_all(format!("the upload to bulk job {id} was refused: {e}"))
                    .await
            }
        }
    }

    /// The upload step's check after an upload that may have arrived (or a cancel).
    async fn abandon(&mut self, id: String) -> Next {
        let status = match self.status(&id).await {
            Ok(status) => status,
            Err(next) => return next,
        };
        if status.state != JobState::Open {
            // Closed by someone else meanwhile: follow it.
            return Next::Step(self.next(BulkPhase::Poll, Some(id), Some(status.api_state)));
        }
        let aborted = self.api().abort(&id);
        let confirmed = match self.caller.call(aborted, MAX_ANSWER).await {
            Reply::Ok(body, _) => self.api().read_status(&body).ok(),
            Reply::Retry { after, error, .. } => return self.again(after, error),
            Reply::Fatal(_) => None,
        };
        match confirmed.map(|s| s.state) {
            Some(JobState::Aborted) | Some(JobState::Failed) => {}
            // Not confirmed: look again before anything else takes the records.
            _ => {
                return self.again(
                    Duration::from_secs(5),
                    format!("the abort of bulk job {id} is not confirmed"),
                )
            }
        }
        if self.job.cancelled {
            return self.give_back("the batch was cancelled".into()).await;
        }
        if self.job.abandoned + 1 >= MAX_ABANDONED {
            // Uploads keep losing their answer (too slow for the upstream's timeout?): the
            // records spend an attempt and wait, so that max_attempts ends it.
            return self
                .retry_all(format!(
                    "{} uploads of these records got no answer (the last to bulk job {id}); \
                     is the upstream's timeout long enough for an upload?",
                    self.job.abandoned + 1
                ))
                .await;
        }
        let mut step = self.next(BulkPhase::Create, None, None);
        step.abandoned = Some(id);
        Next::Step(step)
    }

    async fn close(&mut self, id: String) -> Next {
        if self.job.cancelled {
            return self.abort_then_results(id).await;
        }
        if self.job.resumed {
            match self.status(&id).await {
                Ok(status) if status.state != JobState::Open => {
                    return Next::Step(self.next(BulkPhase::Poll, Some(id), Some(status.api_state)))
                }
                Ok(_) => {}
                Err(next) => return next,
            }
        }
        let call = self.api().close(&id);
        match self.caller.call(call, MAX_ANSWER).await {
            Reply::Ok(body, _) => {
                let state = self.api().read_status(&body).map(|s| s.api_state).ok();
                let mut step = self.next(BulkPhase::Poll, Some(id), state);
                step.next_at += poll_interval(0).as_millis() as Millis;
                Next::Step(step)
            }
            Reply::Retry { after, error, .. } => self.again(after, error),
            // Poll says whether it closed (a poll of an Open job comes back here).
            Reply::Fatal(e) => {
                let mut step = self.next(BulkPhase::Poll, Some(id), None);
                step.error = Some(e);
                Next::Step(step)
            }
        }
    }

    async fn abort_then_results(&mut self, id: String) -> Next {
        let call = self.api().abort(&id);
        match self.caller.call(call, MAX_ANSWER).await {
            Reply::Retry { after, error, .. } => self.again(after, error),
            // Aborted, or already final (an abort then fails): read where it stands.
            Reply::Ok(..) | Reply::Fatal(_) => match self.status(&id).await {
                Ok(status) if status.state.is_final() => {
                    let mut step = self.next(BulkPhase::Results, Some(id), Some(status.api_state));
                    step.error = status.error;
                    Next::Step(step)
                }
                Ok(status) => {
                    let mut step = self.next(BulkPhase::Poll, Some(id), Some(status.api_state));
                    step.polls = self.job.polls + 1;
                    step.next_at += poll_interval(step.polls).as_millis() as Millis;
                    Next::Step(step)
                }
                Err(next) => next,
            },
        }
    }

    async fn poll(&mut self, id: String) -> Next {
        if self.job.cancelled {
            return self.abort_then_results(id).await;
        }
        match self.status(&id).await {
            Ok(status) => match status.state {
                // The close was refused before (its error stored): it will not go through.
                JobState::Open if self.job.error.is_some() => {
                    let error = self.job.error.clone().unwrap_or_default();
                    let aborted = self.api().abort(&id);
                    let _ = self.caller.call(aborted, MAX_ANSWER).await;
                    self.fail_all(format!("bulk job {id} could not be closed: {error}"))
                        .await
                }
                JobState::Open => {
                    Next::Step(self.next(BulkPhase::Close, Some(id), Some(status.api_state)))
                }
                JobState::Processing => {
                    let mut step = self.next(BulkPhase::Poll, Some(id), Some(status.api_state));
                    step.polls = self.job.polls + 1;
                    step.next_at += poll_interval(step.polls).as_millis() as Millis;
                    Next::Step(step)
                }
                _ => {
                    let mut step = self.next(BulkPhase::Results, Some(id), Some(status.api_state));
                    step.polls = self.job.polls + 1;
                    step.error = status.error;
                    Next::Step(step)
                }
            },
            Err(next) => next,
        }
    }

    async fn results(&mut self, id: String) -> Next {
        // The final state and its reason, as the last poll stored them.
        let status = JobStatus {
            state: match self.job.state.as_deref() {
                Some("JobComplete") => JobState::Complete,
                Some("Failed") => JobState::Failed,
                _ => JobState::Aborted,
            },
            api_state: self.job.state.clone().unwrap_or_default(),
            error: self.job.error.clone(),
            processed: None,
            failed: None,
        };
        let _slot = self.results_slots.acquire().await.expect("never closed");
        let mut bodies = Vec::new();
        for call in self.api().results(&id) {
            match self.caller.call(call, MAX_RESULTS).await {
                Reply::Ok(body, _) => bodies.push(body),
                Reply::Retry { after, error, .. } => return self.again(after, error),
                Reply::Fatal(e) => {
                    return self
                        .fail_all(format!(
                            "the results of bulk job {id} cannot be read ({e}); the records \
                             may have been applied"
                        ))
                        .await
                }
            }
        }
        let records = match self.records().await {
            Ok(r) => r,
            Err(next) => return next,
        };
        let views: Vec<&[u8]> = bodies.iter().map(|b: &bytes::Bytes| b.as_ref()).collect();
        let outcomes = self.api().outcomes(&to_records(&records), &status, &views);
        let now = self.now();
        let results = outcomes
            .into_iter()
            .zip(&records)
            .map(|(o, r)| match o {
                RecordOutcome::Succeeded => RecordResult::Succeeded,
                RecordOutcome::Failed {
                    error,
                    retryable: false,
                    ..
                } => RecordResult::Failed { error },
                RecordOutcome::Failed {
                    error, retry_after, ..
                } => RecordResult::Retry {
                    at: now
                        + retry_after
                            .unwrap_or_else(|| record_backoff(r.attempts + 1))
                            .as_millis() as Millis,
                    error,
                    burn_attempt: true,
                },
            })
            .collect();
        let mut step = done(self.job, 0);
        step.error = status.error;
        Next::Finish(records, results, self.stamp(step))
    }

    /// The job's state, or the step to take when it cannot be had now.
    async fn status(&mut self, id: &str) -> Result<JobStatus, Next> {
        let call = self.api().status(id);
        match self.caller.call(call, MAX_ANSWER).await {
            Reply::Ok(body, _) => self
                .api()
                .read_status(&body)
                .map_err(|e| self.again(Duration::from_secs(5), format!("bulk job {id}: {e}"))),
            Reply::Retry { after, error, .. } => Err(self.again(after, error)),
            Reply::Fatal(e) => Err(self
                .fail_all(format!(
                    "bulk job {id} cannot be read ({e}); its records may have been applied"
                ))
                .await),
        }
    }
}

/// Makes a bulk job's calls: each one governed call with the upstream's credential, in the
/// batch's lane, counted.
pub(crate) struct Caller<'a> {
    pub app: &'a AppState,
    pub upstream: Arc<Upstream>,
    pub tenant: Option<&'a str>,
    pub lane: headroom_core::Lane,
    /// The batch's own headers (sent with every call).
    pub headers: Vec<(String, String)>,
    pub calls: u64,
}

impl Caller<'_> {
    /// Makes one call through the governor (once more with a renewed OAuth token).
    pub(crate) async fn call(&mut self, call: BulkCall, limit: usize) -> Reply {
        let Ok(method) = Method::from_bytes(call.method.as_bytes()) else {
            return Reply::Fatal(format!("\"{}\" is not an HTTP method", call.method));
        };
        let mut headers = HeaderMap::new();
        for (k, v) in self.headers.iter().chain(call.headers.iter()) {
            if crate::jobs::request::is_reserved_header(k) {
                continue;
            }
            if let (Ok(name), Ok(value)) = (
                HeaderName::from_bytes(k.as_bytes()),
                HeaderValue::from_str(v),
            ) {
                headers.insert(name, value);
            }
        }
        let prepared = self
            .app
            .outbound
            .prepare(
                &self.upstream,
                self.tenant,
                method,
                &call.path,
                None,
                headers,
            )
            .await;
        let mut prepared = match prepared {
            Ok(p) => p,
            Err(
                e @ (PrepareError::CredentialUnreadable(_)
                | PrepareError::OAuth(crate::oauth::TokenError::Unavailable { .. })),
            ) => {
                return Reply::Retry {
                    after: Duration::from_secs(5),
                    error: e.to_string(),
                    lost: false,
                }
            }
            Err(e) => return Reply::Fatal(e.to_string()),
        };
        let how = || outbound::Send {
            lane: self.lane,
            cost: 1.0,
            max_wait: self.upstream.retry.max_wait,
            attempt: 1,
            queue: None,
            wait_until: None,
            read: Read::All(limit),
            take_headers: false,
        };
        let mut answer = prepared.send(Body::from(call.body.clone()), how()).await;
        // A call the budget refused was not made.
        if !matches!(answer, Answer::Refused(_)) {
            self.calls += 1;
        }
        if let Answer::Answered {
            parts, inspected, ..
        } = &answer
        {
            let seen = inspected.as_deref().unwrap_or_default();
            match prepared.renew_token(parts.status.as_u16(), seen).await {
                Ok(true) => {
                    answer = prepared.send(Body::from(call.body), how()).await;
                    if !matches!(answer, Answer::Refused(_)) {
                        self.calls += 1;
                    }
                }
                Ok(false) => {}
                Err(e @ crate::oauth::TokenError::Broken { .. }) => {
                    return Reply::Fatal(e.to_string())
                }
                Err(e) => {
                    return Reply::Retry {
                        after: Duration::from_secs(5),
                        error: e.to_string(),
                        lost: false,
                    }
                }
            }
        }
        self.read(answer, limit)
    }

    fn read(&self, answer: Answer, limit: usize) -> Reply {
        match answer {
            Answer::Refused(rejection) => Reply::Retry {
                after: rejection.retry_after.max(Duration::from_millis(50)),
                error: refusal(&rejection).into(),
                lost: false,
            },
            Answer::Unreachable { reason, .. } => Reply::Retry {
                after: Duration::from_secs(2),
                error: format!("cannot reach the upstream: {reason}"),
                lost: true,
            },
            Answer::Answered {
                parts,
                inspected,
                truncated,
                signals,
                budget_pause,
                ..
            } => {
                let status = parts.status.as_u16();
                let body = inspected.unwrap_or_default();
                // A 5xx may come after the call did its work, throttled or not.
                let lost = status >= 500;
                if signals.throttled {
                    let max_pause = self.upstream.budget_config.max_pause;
                    let rule = RetryRule {
                        max_attempts: u32::MAX,
                        on_status: &[],
                        max_pause,
                    };
                    let outcome = Attempted::Answered {
                        status,
                        signals: &signals,
                    };
                    // A bulk job under way waits out even a long pause (a daily limit spent):
                    // giving up would fail records the API may be processing.
                    let after = match verdict(outcome, 1, &rule, budget_pause, Duration::ZERO) {
                        Verdict::GiveUp(GiveUpReason::PauseTooLong(asked)) => asked,
                        Verdict::Retry { after, .. } => after,
                        _ => budget_pause,
                    };
                    return Reply::Retry {
                        after: after.clamp(Duration::from_millis(50), MAX_STEP_PAUSE),
                        error: format!("throttled by the upstream ({status})"),
                        lost,
                    };
                }
                if truncated {
                    return Reply::Fatal(format!(
                        "the answer ({status}) is larger than {} KiB",
                        limit >> 10
                    ));
                }
                if (200..300).contains(&status) {
                    return Reply::Ok(body, parts.headers);
                }
                let detail = salesforce_error(&body);
                if status == 408 || (500..600).contains(&status) {
                    // A 5xx may come after the call did its work: as unsure as no answer.
                    return Reply::Retry {
                        after: Duration::from_secs(5),
                        error: format!("HTTP {status}: {detail}"),
                        lost: true,
                    };
                }
                Reply::Fatal(format!("HTTP {status}: {detail}"))
            }
        }
    }
}

/// Salesforce's error array (`[{"errorCode", "message"}]`) as one line, else the body's start.
fn salesforce_error(body: &[u8]) -> String {
    let parsed: Option<Vec<Value>> = serde_json::from_slice(body).ok();
    if let Some(errors) = parsed {
        let lines: Vec<String> = errors
            .iter()
            .map(|e| {
                let code = e.get("errorCode").and_then(Value::as_str).unwrap_or("");
                let message = e.get("message").and_then(Value::as_str).unwrap_or("");
                format!("{code}: {message}")
            })
            .collect();
        if !lines.is_empty() {
            return lines.join("; ");
        }
    }
    let text = String::from_utf8_lossy(&body[..body.len().min(300)]);
    text.trim().to_string()
}

fn to_records(records: &[ChunkRecord]) -> Vec<Record> {
    records
        .iter()
        .map(|r| Record {
            index: r.index,
            id: r.record_id.clone(),
            payload: serde_json::from_slice(&r.payload).unwrap_or(Value::Null),
        })
        .collect()
}

/// Waits before a failed record goes in a new job: 1 s doubling per attempt, at most a minute.
fn record_backoff(attempts: u32) -> Duration {
    Duration::from_secs(1u64 << attempts.min(6)).min(Duration::from_secs(60))
}
