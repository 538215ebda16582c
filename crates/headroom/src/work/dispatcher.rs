//! The job dispatcher: claims ready jobs from the store, sends each through the governor
//! (budgets, lanes, breaker) like a proxied call, and records where it goes next. Waiting
//! retries live in the store as `retry_pending` with a time, never as sleeping tasks.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use headroom_core::verdict::{verdict, Attempted, GiveUpReason, RetryReason, RetryRule, Verdict};
use http::{HeaderMap, HeaderName, HeaderValue, Method};
use tokio::sync::Semaphore;

use crate::app::AppState;
use crate::cfg::{Queue, Upstream};
use crate::jobs::*;
use crate::oauth::TokenError;
use crate::observe::is_rate_limit_header;
use crate::outbound::{self, refusal, Answer, PrepareError, Read};

/// Sleeps at most this long between looks for ready jobs, even with nothing scheduled.
pub const IDLE_POLL: Duration = Duration::from_secs(1);

/// Jobs running at once in this process (each waits in the governor or on its upstream).
const MAX_RUNNING: usize = 512;
/// With more than half of `MAX_RUNNING` in hand, claim once this many slots are free…
const CLAIM_BATCH: usize = 64;
/// …or this long after the last claim, whichever comes first.
const CLAIM_DELAY: Duration = Duration::from_millis(20);
/// A job keeps at most this much of the upstream's answer (the rest is not read; the stored
/// headers then say `Headroom-Body-Truncated`).
const MAX_STORED_BODY: usize = 1 << 20;

/// Starts the dispatcher and the callback sender; first puts back what a crash left running.
pub async fn start(app: AppState) -> anyhow::Result<()> {
    let requeued = app.store.requeue_running(app.clock.now_millis()).await?;
    if requeued > 0 {
        tracing::warn!(
            requeued,
            "jobs left running by an abrupt stop go again (they may have been sent once)"
        );
    }
    let records = app.store.requeue_in_flight(app.clock.now_millis()).await?;
    if records > 0 {
        tracing::warn!(
            records,
            "batch records in flight at an abrupt stop go again (counted as possibly duplicated)"
        );
    }
    tokio::spawn(dispatch_loop(app.clone()));
    tokio::spawn(super::batches::run_loop(app.clone()));
    tokio::spawn(super::bulk::run_loop(app.clone()));
    tokio::spawn(super::exports::run_loop(app.clone()));
    tokio::spawn(super::retention::run_loop(app.clone()));
    tokio::spawn(super::callbacks::run(app));
    Ok(())
}

fn rules(app: &AppState) -> Vec<QueueRule> {
    app.config
        .queues
        .iter()
        .map(|q| QueueRule {
            name: q.name.clone(),
            mode: q.mode,
        })
        .collect()
}

async fn dispatch_loop(app: AppState) {
    let slots = Arc::new(Semaphore::new(MAX_RUNNING));
    let rules = rules(&app);
    let mut last_claim = tokio::time::Instant::now();
    loop {
        if app.shutdown.is_stopping() {
            return; // the attempts under way finish; the drain waits for them
        }
        let free = slots.available_permits();
        let busy = MAX_RUNNING - free;
        // While plenty of claimed jobs are in hand, claim in batches: one claim (a write) then
        // serves many jobs instead of one per finished job. Never hold back longer than
        // CLAIM_DELAY, so a ready job does not wait behind slow ones.
        let batch_due =
            busy < MAX_RUNNING / 2 || free >= CLAIM_BATCH || last_claim.elapsed() >= CLAIM_DELAY;
        if free == 0 {
            // A job finishing frees a slot and wakes us; the timeout covers one that panicked.
            tokio::select! {
                _ = tokio::time::sleep(IDLE_POLL) => {}
                _ = app.jobs_wake.notified() => {}
                _ = app.shutdown.stopped() => {}
            }
            continue;
        }
        if !batch_due {
            tokio::select! {
                _ = tokio::time::sleep_until(last_claim + CLAIM_DELAY) => {}
                _ = app.jobs_wake.notified() => {}
                _ = app.shutdown.stopped() => {}
            }
            continue;
        }
        last_claim = tokio::time::Instant::now();
        let claimed = match app
            .store
            .claim_ready(app.clock.now_millis(), &rules, free as u32)
            .await
        {
            Ok(jobs) => jobs,
            Err(e) => {
                tracing::error!(error = %format!("{e:#}"), "cannot claim jobs; retrying in a second");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        let got = claimed.len();
        for job in claimed {
            let permit = Arc::clone(&slots)
                .acquire_owned()
                .await
                .expect("semaphore is never closed");
            let app = app.clone();
            let working = app.shutdown.working();
            tokio::spawn(async move {
                run_job(&app, job).await;
                drop((permit, working));
                app.jobs_wake.notify_one();
            });
        }
        if got == free {
            continue; // every free slot taken: there may be more ready
        }
        let wait = match app.store.next_ready_at().await {
            // A due job may be held back by its queue's mode: wait a little, or for a wake-up
            // (a job arriving or finishing).
            Ok(Some(at)) => {
                Duration::from_millis((at - app.clock.now_millis()).clamp(5, 1000) as u64)
            }
            _ => IDLE_POLL,
        };
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = app.jobs_wake.notified() => {}
            _ = app.shutdown.stopped() => {}
        }
    }
}

/// One attempt of a job, recorded whatever happens.
async fn run_job(app: &AppState, job: Job) {
    let started = app.clock.now_millis();
    let span = tracing::debug_span!(target: "headroom::trace", "job_attempt", job = %job.new.id, upstream = %job.new.upstream, queue = %job.new.queue, attempt = job.attempts + 1);
    let (transition, mut attempt) =
        tracing::Instrument::instrument(attempt_job(app, &job), span).await;
    attempt.started_at = started;
    attempt.finished_at = app.clock.now_millis();
    let outcome = crate::observe::JobOutcome::of(&transition);
    app.observe
        .job_attempt(&job, &outcome, started, attempt.finished_at);
    let id = job.new.id.clone();
    match record_attempt(app, attempt, transition).await {
        Ok(job) if job.status.is_final() => {
            tracing::info!(job = %id, status = job.status.as_str(), attempts = job.attempts, "job finished");
        }
        Ok(_) => {}
        Err(e) => {
            tracing::error!(job = %id, error = %format!("{e:#}"), "cannot record a job's attempt")
        }
    }
}

/// How long an attempt's outcome is retried while the store cannot take it.
const RECORD_PATIENCE: Duration = Duration::from_secs(3600);

/// Records an attempt, trying again while the store cannot take it (a full disk, a writer
/// connection being reopened): the call was made, so its outcome must not be lost, nor the
/// job left `running` until a restart sends it again.
async fn record_attempt(
    app: &AppState,
    attempt: AttemptRecord,
    transition: Transition,
) -> anyhow::Result<Job> {
    let deadline = tokio::time::Instant::now() + RECORD_PATIENCE;
    let mut wait = Duration::from_millis(100);
    loop {
        let result = app
            .store
            .finish_attempt(attempt.clone(), transition.clone(), app.clock.now_millis())
            .await;
        match result {
            Err(e) if tokio::time::Instant::now() < deadline => {
                tracing::warn!(job = %attempt.job_id, error = %format!("{e:#}"), retry_in_ms = wait.as_millis() as u64, "cannot record a job's attempt yet; trying again");
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(Duration::from_secs(5));
            }
            other => return Ok(other?),
        }
    }
}

fn blank_attempt(job: &Job) -> AttemptRecord {
    AttemptRecord {
        job_id: job.new.id.clone(),
        number: job.attempts + 1,
        started_at: 0,
        finished_at: 0,
        status: None,
        wait_ms: 0,
        rate_limit_headers: Vec::new(),
        error: None,
    }
}

fn failed(attempt: AttemptRecord, error: String) -> (Transition, AttemptRecord) {
    let mut attempt = attempt;
    attempt.error = Some(error.clone());
    (
        Transition::Failed {
            error,
            response: None,
        },
        attempt,
    )
}

/// Back to waiting until `at`, without spending an attempt: for
/// faults that are not the job's (no room in the budget, the store or Redis unavailable).
fn wait_without_attempt(
    attempt: AttemptRecord,
    error: String,
    at: Millis,
) -> (Transition, AttemptRecord) {
    let mut attempt = attempt;
    attempt.error = Some(error.clone());
    (
        Transition::Retry {
            at,
            error,
            burn_attempt: false,
        },
        attempt,
    )
}

async fn attempt_job(app: &AppState, job: &Job) -> (Transition, AttemptRecord) {
    let mut attempt = blank_attempt(job);
    // Credential-like header values and query parameters are sealed at rest.
    let job = &match crate::jobs::secrets::open(
        &app.credentials,
        &crate::jobs::secrets::job_owner(&job.new.id),
        &job.new.request,
    ) {
        Ok(request) => Job {
            new: NewJob {
                request,
                ..job.new.clone()
            },
            ..job.clone()
        },
        Err(e) => return failed(attempt, e),
    };
    let n = &job.new;
    let Some(upstream) = app.config.upstream(&n.upstream).cloned() else {
        return failed(
            attempt,
            format!("upstream \"{}\" is no longer configured", n.upstream),
        );
    };
    let queue = app
        .config
        .queue(&n.queue)
        .cloned()
        .unwrap_or_else(|| Arc::new(Queue::default()));
    // Checked again here: a job stored before a rule tightened is not sent against it.
    let method = crate::jobs::request::check_method(&n.request.method)
        .ok()
        .and_then(|m| Method::from_bytes(m.as_bytes()).ok());
    let Some(method) = method else {
        return failed(
            attempt,
            format!("request.method \"{}\" is not allowed", n.request.method),
        );
    };
    let headers = match job_headers(&upstream, job) {
        Ok(h) => h,
        Err(e) => return failed(attempt, e),
    };
    let prepared = app
        .outbound
        .prepare(
            &upstream,
            n.tenant.as_deref(),
            method,
            &n.request.path,
            n.request.query.as_deref(),
            headers,
        )
        .await;
    let mut call = match prepared {
        Ok(call) => call,
        Err(PrepareError::Target(e)) => return failed(attempt, format!("request.path: {e}")),
        // The token endpoint cannot give a token now: not the job's fault.
        Err(PrepareError::OAuth(e @ TokenError::Unavailable { .. })) => {
            let at = app.clock.now_millis().saturating_add(5_000);
            return wait_without_attempt(attempt, e.to_string(), at);
        }
        // A credential that cannot be read or opened fails the job (as it fails a proxied
        // call with 500): a sealed value the key cannot open does not heal by waiting.
        Err(e) => return failed(attempt, e.to_string()),
    };
    let body = || {
        n.request
            .body
            .clone()
            .map(Body::from)
            .unwrap_or_else(Body::empty)
    };
    let cost = call.estimated_cost().unwrap_or(1.0);
    let how = || outbound::Send {
        lane: n.lane,
        cost,
        max_wait: upstream.retry.max_wait,
        attempt: job.attempts + 1,
        queue: Some(&n.queue),
        wait_until: None,
        read: Read::All(MAX_STORED_BODY),
        take_headers: false,
    };
    let mut answer = call.send(body(), how()).await;
    // The OAuth token expired: once more with the renewed one.
    if let Answer::Answered {
        parts, inspected, ..
    } = &answer
    {
        let seen = inspected.as_deref().unwrap_or_default();
        match call.renew_token(parts.status.as_u16(), seen).await {
            Ok(true) => answer = call.send(body(), how()).await,
            Ok(false) => {}
            Err(e @ TokenError::Broken { .. }) => return failed(attempt, e.to_string()),
            Err(e) => {
                let at = app.clock.now_millis().saturating_add(5_000);
                return wait_without_attempt(attempt, e.to_string(), at);
            }
        }
    }
    match answer {
        // Not the job's fault: wait for the budget without spending an attempt.
        Answer::Refused(rejection) => {
            let after = rejection.retry_after.as_millis().max(100) as Millis;
            let at = app.clock.now_millis().saturating_add(after);
            wait_without_attempt(attempt, refusal(&rejection).into(), at)
        }
        Answer::Unreachable { reason, waited } => {
            attempt.wait_ms = waited.as_millis() as u64;
            attempt.error = Some(reason.clone());
            let outcome = Attempted::Unreachable;
            (
                transition(
                    app.clock.now_millis(),
                    job,
                    &queue,
                    &upstream,
                    outcome,
                    Duration::ZERO,
                    None,
                    || format!("cannot reach the upstream: {reason}"),
                ),
                attempt,
            )
        }
        Answer::Answered {
            parts,
            inspected,
            truncated,
            signals,
            budget_pause,
            waited,
            ..
        } => {
            attempt.wait_ms = waited.as_millis() as u64;
            let status = parts.status.as_u16();
            attempt.status = Some(status);
            attempt.rate_limit_headers = parts
                .headers
                .iter()
                .filter(|(k, _)| is_rate_limit_header(k.as_str()))
                .filter_map(|(k, v)| Some((k.to_string(), v.to_str().ok()?.to_string())))
                .collect();
            let mut headers: Vec<(String, String)> = parts
                .headers
                .iter()
                .filter_map(|(k, v)| Some((k.to_string(), v.to_str().ok()?.to_string())))
                .collect();
            if truncated {
                // Only the first MAX_STORED_BODY bytes were read and kept.
                headers.push((
                    "headroom-body-truncated".to_string(),
                    MAX_STORED_BODY.to_string(),
                ));
            }
            let response = JobResponse {
                status,
                headers,
                body: inspected.map(|b| b.to_vec()).unwrap_or_default(),
            };
            let outcome = Attempted::Answered {
                status,
                signals: &signals,
            };
            (
                transition(
                    app.clock.now_millis(),
                    job,
                    &queue,
                    &upstream,
                    outcome,
                    budget_pause,
                    Some(response),
                    || format!("the upstream answered {status}"),
                ),
                attempt,
            )
        }
    }
}

/// Where an attempt sends the job: the core's verdict on its outcome, carried out in the
/// store (a retry waits there, never in a sleeping task). `error` says what went wrong when
/// something did.
#[allow(clippy::too_many_arguments)] // one call site each way; a struct would only rename them
fn transition(
    now: Millis,
    job: &Job,
    queue: &Queue,
    upstream: &Upstream,
    outcome: Attempted<'_>,
    budget_pause: Duration,
    response: Option<JobResponse>,
    error: impl FnOnce() -> String,
) -> Transition {
    let attempts = job.attempts + 1;
    let rule = RetryRule {
        max_attempts: job.new.max_attempts,
        on_status: &upstream.retry.on_status,
        max_pause: upstream.budget_config.max_pause,
    };
    let backoff = queue.retry_delay(attempts);
    let at =
        |after: Duration| now.saturating_add(after.as_millis().min(i64::MAX as u128) as Millis);
    match verdict(outcome, attempts, &rule, budget_pause, backoff) {
        Verdict::Done => match response {
            Some(response) => Transition::Succeeded { response },
            // Only an answer is done; kept total for the type's sake.
            None => Transition::Failed {
                error: error(),
                response: None,
            },
        },
        Verdict::Retry {
            after,
            spends_attempt,
            why,
        } => Transition::Retry {
            // A throttled job waits for the budget's time, at least a moment.
            at: at(if spends_attempt {
                after
            } else {
                after.max(Duration::from_millis(50))
            }),
            error: match (why, outcome) {
                (RetryReason::Throttled, Attempted::Answered { status, .. }) => {
                    format!("throttled by the upstream ({status})")
                }
                _ => error(),
            },
            burn_attempt: spends_attempt,
        },
        Verdict::GiveUp(GiveUpReason::PauseTooLong(asked)) => {
            let status = match outcome {
                Attempted::Answered { status, .. } => status,
                Attempted::Unreachable => 0,
            };
            Transition::Failed {
                error: too_long_pause(status, asked, rule.max_pause),
                response,
            }
        }
        Verdict::GiveUp(GiveUpReason::AttemptsSpent(_)) => Transition::Failed {
            error: format!("{} (after {attempts} attempts)", error()),
            response,
        },
        Verdict::GiveUp(GiveUpReason::Final(_)) => Transition::Failed {
            error: error(),
            response,
        },
    }
}

/// Why a job or record is not retried after a throttled answer that asks for too long.
pub(crate) fn too_long_pause(status: u16, asked: Duration, max_pause: Duration) -> String {
    format!(
        "throttled by the upstream ({status}), which asks to wait {}, longer than the \
         upstream's max_pause ({}); not retried (raise max_pause to wait that long)",
        headroom_core::duration::format_duration(asked),
        headroom_core::duration::format_duration(max_pause),
    )
}

/// The job's headers and its idempotency key (the tenant's credential goes in when the call
/// is prepared).
fn job_headers(upstream: &Upstream, job: &Job) -> Result<HeaderMap, String> {
    let mut headers = HeaderMap::new();
    for (k, v) in &job.new.request.headers {
        if crate::jobs::request::is_reserved_header(k) {
            // Refused at submission; a job stored before that rule still never sets them.
            continue;
        }
        let name = HeaderName::from_bytes(k.as_bytes())
            .map_err(|_| format!("header \"{k}\" is not valid"))?;
        let value =
            HeaderValue::from_str(v).map_err(|_| format!("header \"{k}\" has an invalid value"))?;
        headers.append(name, value);
    }
    if job.new.request.body.is_some()
        && job.new.request.body_is_json
        && !headers.contains_key(http::header::CONTENT_TYPE)
    {
        headers.insert(
            http::header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
    }
    if let Some(name) = &upstream.idempotency_header {
        if let Ok(v) = HeaderValue::from_str(&job.new.idempotency_key) {
            headers.insert(name.clone(), v);
        }
    }
    Ok(headers)
}
