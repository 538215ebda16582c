//! The batch runner: takes ready chunks of records from the store, sends each chunk as one
//! governed call in the batch's format, and records each record's outcome.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Body;
use axum::http::HeaderMap;
use headroom_core::batch::{self, Format, Record, RecordOutcome};
use headroom_core::verdict::{verdict, Attempted, GiveUpReason, RetryRule, Verdict};
use http::{HeaderName, HeaderValue, Method};
use serde_json::Value;

use crate::app::AppState;
use crate::jobs::*;
use crate::outbound::{self, refusal, Answer, PrepareError, Read};

/// Chunks of one batch in flight at once (the budget paces them anyway).
const CHUNKS_PER_BATCH: usize = 4;

/// Chunks in flight at once in this process.
const MAX_CHUNKS: usize = 64;

/// A chunk's answer is read up to this size.
const MAX_ANSWER: usize = 16 << 20;

/// Sends claimed chunks through the governor, at most a few per batch at once.
pub async fn run_loop(app: AppState) {
    let in_flight: Arc<Mutex<HashMap<String, usize>>> = Arc::default();
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CHUNKS));
    loop {
        if app.shutdown.is_stopping() {
            return; // the chunks under way finish; the drain waits for them
        }
        let busy: Vec<String> = in_flight
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .filter(|(_, n)| **n >= CHUNKS_PER_BATCH)
            .map(|(id, _)| id.clone())
            .collect();
        let claimed = if slots.available_permits() > 0 {
            app.store.claim_chunk(app.clock.now_millis(), &busy).await
        } else {
            Ok(None)
        };
        match claimed {
            Ok(Some(chunk)) => {
                let permit = Arc::clone(&slots)
                    .acquire_owned()
                    .await
                    .expect("never closed");
                let batch_id = chunk.batch.id.clone();
                *in_flight
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .entry(batch_id.clone())
                    .or_default() += 1;
                let (app, in_flight) = (app.clone(), Arc::clone(&in_flight));
                let working = app.shutdown.working();
                tokio::spawn(async move {
                    let _working = working;
                    run_chunk(&app, chunk).await;
                    {
                        let mut map = in_flight.lock().unwrap_or_else(|e| e.into_inner());
                        if let Some(n) = map.get_mut(&batch_id) {
                            *n -= 1;
                            if *n == 0 {
                                map.remove(&batch_id);
                            }
                        }
                    }
                    drop(permit);
                    app.batches_wake.notify_one();
                });
                continue;
            }
            Ok(None) => {}
            Err(e) => tracing::error!(error = %format!("{e:#}"), "cannot claim batch records"),
        }
        // With batches at their chunk limit, a finishing chunk wakes the runner.
        let wait = match app.store.next_chunk_at().await {
            Ok(Some(_)) if !busy.is_empty() => Duration::from_secs(1),
            Ok(Some(at)) => {
                Duration::from_millis((at - app.clock.now_millis()).clamp(5, 1000) as u64)
            }
            _ => Duration::from_secs(1),
        };
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = app.batches_wake.notified() => {}
            _ = app.shutdown.stopped() => {}
        }
    }
}

/// Waits before a failed record is tried again: 1 s doubling per attempt, at most a minute.
fn record_backoff(attempts: u32) -> Duration {
    Duration::from_secs(1u64 << attempts.min(6)).min(Duration::from_secs(60))
}

fn all(chunk: &Chunk, result: RecordResult) -> Vec<RecordResult> {
    vec![result; chunk.records.len()]
}

async fn run_chunk(app: &AppState, chunk: Chunk) {
    let results = chunk_results(app, &chunk).await;
    if let Err(e) = app
        .store
        .finish_chunk(&chunk, &results, app.clock.now_millis())
        .await
    {
        tracing::error!(batch = %chunk.batch.id, error = %format!("{e:#}"), "cannot record a chunk's outcome");
    }
}

async fn chunk_results(app: &AppState, chunk: &Chunk) -> Vec<RecordResult> {
    let fail = |error: String| all(chunk, RecordResult::Failed { error });
    // Credential-like header values and query parameters are sealed at rest.
    let meta = &match crate::jobs::secrets::open(
        &app.credentials,
        &crate::jobs::secrets::batch_owner(&chunk.batch.id),
        &chunk.batch.request,
    ) {
        Ok(request) => BatchMeta {
            request,
            ..chunk.batch.clone()
        },
        Err(e) => return fail(e),
    };
    let Some(upstream) = app.config.upstream(&meta.upstream).cloned() else {
        return fail(format!(
            "upstream \"{}\" is no longer configured",
            meta.upstream
        ));
    };
    let format = match serde_json::from_str::<Value>(&meta.format)
        .map_err(|e| e.to_string())
        .and_then(|v| Format::from_json(&v).map_err(|e| e.to_string()))
    {
        Ok(f) => f,
        Err(e) => return fail(format!("the stored batch format is unreadable: {e}")),
    };
    let records: Vec<Record> = chunk
        .records
        .iter()
        .map(|r| Record {
            index: r.index,
            id: r.record_id.clone(),
            payload: serde_json::from_slice(&r.payload).unwrap_or(Value::Null),
        })
        .collect();
    let request = match batch::build(&format, &meta.request.method, &meta.request.path, &records) {
        Ok(r) => r,
        Err(e) => return fail(e.to_string()),
    };
    // Graph puts the query into each inner request, not on `$batch`.
    let query = match format {
        Format::Graph => None,
        _ => meta.request.query.as_deref(),
    };
    let Ok(method) = Method::from_bytes(request.method.as_bytes()) else {
        return fail(format!("\"{}\" is not an HTTP method", request.method));
    };
    let mut headers = HeaderMap::new();
    for (k, v) in meta.request.headers.iter().chain(request.headers.iter()) {
        if crate::jobs::request::is_reserved_header(k) {
            continue; // refused at submission; never sent even for batches stored before
        }
        if let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(k.as_bytes()),
            HeaderValue::from_str(v),
        ) {
            headers.insert(name, value);
        }
    }
    // Not the records' fault: they wait without spending an attempt.
    let wait = |after: Duration, error: String| {
        let at = app.clock.now_millis() + after.as_millis().max(50) as Millis;
        all(
            chunk,
            RecordResult::Retry {
                at,
                error,
                burn_attempt: false,
            },
        )
    };
    let prepared = app
        .outbound
        .prepare(
            &upstream,
            meta.tenant.as_deref(),
            method,
            &request.path,
            query,
            headers,
        )
        .await;
    let mut call = match prepared {
        Ok(call) => call,
        Err(
            e @ (PrepareError::CredentialUnreadable(_)
            | PrepareError::OAuth(crate::oauth::TokenError::Unavailable { .. })),
        ) => return wait(Duration::from_secs(5), e.to_string()),
        Err(e) => return fail(e.to_string()),
    };
    let attempts = chunk.records.iter().map(|r| r.attempts).max().unwrap_or(0) + 1;
    let cost = call.estimated_cost().unwrap_or(1.0);
    let how = || outbound::Send {
        lane: meta.lane,
        cost,
        max_wait: upstream.retry.max_wait,
        attempt: attempts,
        queue: None,
        wait_until: None,
        read: Read::All(MAX_ANSWER),
        take_headers: false,
    };
    let mut answer = call.send(Body::from(request.body.clone()), how()).await;
    // The OAuth token expired: once more with the renewed one.
    if let Answer::Answered {
        parts, inspected, ..
    } = &answer
    {
        let seen = inspected.as_deref().unwrap_or_default();
        match call.renew_token(parts.status.as_u16(), seen).await {
            Ok(true) => answer = call.send(Body::from(request.body), how()).await,
            Ok(false) => {}
            Err(e @ crate::oauth::TokenError::Broken { .. }) => return fail(e.to_string()),
            Err(e) => return wait(Duration::from_secs(5), e.to_string()),
        }
    }
    match answer {
        Answer::Refused(rejection) => wait(rejection.retry_after, refusal(&rejection).into()),
        Answer::Unreachable { reason, .. } => {
            let at = app.clock.now_millis() + record_backoff(attempts).as_millis() as Millis;
            all(
                chunk,
                RecordResult::Retry {
                    at,
                    error: format!("cannot reach the upstream: {reason}"),
                    burn_attempt: true,
                },
            )
        }
        Answer::Answered {
            parts,
            inspected,
            truncated,
            signals,
            budget_pause,
            ..
        } => {
            let status = parts.status.as_u16();
            let max_pause = upstream.budget_config.max_pause;
            if signals.throttled {
                // The whole chunk was refused: the core's verdict on a throttled answer (the
                // records' own retry rules apply to what the upstream did per record).
                let rule = RetryRule {
                    max_attempts: u32::MAX,
                    on_status: &[],
                    max_pause,
                };
                let outcome = Attempted::Answered {
                    status,
                    signals: &signals,
                };
                let after = match verdict(outcome, attempts, &rule, budget_pause, Duration::ZERO) {
                    Verdict::GiveUp(GiveUpReason::PauseTooLong(asked)) => {
                        let error = super::dispatcher::too_long_pause(status, asked, max_pause);
                        return all(chunk, RecordResult::Failed { error });
                    }
                    Verdict::Retry { after, .. } => after,
                    // A throttled answer is always one of the two above.
                    _ => budget_pause,
                };
                let at = app.clock.now_millis()
                    + after.max(Duration::from_millis(50)).as_millis() as Millis;
                let error = format!("throttled by the upstream ({status}), nothing applied");
                return all(
                    chunk,
                    RecordResult::Retry {
                        at,
                        error,
                        burn_attempt: false,
                    },
                );
            }
            if truncated {
                // The upstream may have applied the records; what it says of each is cut off.
                return fail(format!(
                    "the upstream's answer ({status}) is larger than {} MiB; the records' \
                     outcomes cannot be read",
                    MAX_ANSWER >> 20
                ));
            }
            let body = inspected.unwrap_or_default();
            let outcome = batch::parse(&format, &records, status, &body, signals.retry_after);
            outcome
                .records
                .into_iter()
                .map(|o| match o {
                    RecordOutcome::Succeeded => RecordResult::Succeeded,
                    RecordOutcome::Failed {
                        error,
                        retryable: false,
                        ..
                    } => RecordResult::Failed { error },
                    RecordOutcome::Failed {
                        error,
                        retryable: true,
                        retry_after: Some(asked),
                    } if asked > max_pause => RecordResult::Failed {
                        error: format!(
                            "{error}; the upstream asks to wait {}, longer than max_pause ({})",
                            headroom_core::duration::format_duration(asked),
                            headroom_core::duration::format_duration(max_pause),
                        ),
                    },
                    RecordOutcome::Failed {
                        error,
                        retryable: true,
                        retry_after,
                    } => {
                        let wait = retry_after.unwrap_or_else(|| record_backoff(attempts));
                        RecordResult::Retry {
                            at: app.clock.now_millis() + wait.as_millis() as Millis,
                            error,
                            burn_attempt: true,
                        }
                    }
                })
                .collect()
        }
    }
}
