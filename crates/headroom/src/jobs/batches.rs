//! `/v1/batches`: many records sent to a bulk endpoint in chunks, each record tracked to its
//! own outcome; and the runner that sends the chunks through the governor.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Body;
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use headroom_core::batch::{self, Format, Record, RecordOutcome};
use headroom_core::verdict::{verdict, Attempted, GiveUpReason, RetryRule, Verdict};
use http::{HeaderName, HeaderValue, Method};
use serde::Deserialize;
use serde_json::{json, Value};

use super::api::{check_callback, check_request, check_tenant, new_id, parse_json, parse_lane};
use super::*;
use crate::auth::{Admin, Principal};
use crate::error::{ApiError, ApiResult};
use crate::outbound::{self, refusal, Answer, PrepareError, Read};
use crate::server::AppState;

/// Records per batch.
pub const MAX_RECORDS: usize = 100_000;
/// The JSON of a batch request.
pub const MAX_BATCH_BODY: usize = 64 << 20;
/// MiB of batch bodies read and checked at once (each takes its size, rounded up, and about
/// as much again while it is checked); submissions beyond wait for room.
pub const INTAKE_MIB: usize = 256;
/// MiB of that room one tenant's submissions may hold at once.
pub const INTAKE_MIB_PER_TENANT: u32 = INTAKE_MIB as u32 / 4;

/// The room each tenant's batch submissions hold while they are read.
#[derive(Default)]
pub struct IntakeShares(Arc<Mutex<HashMap<String, u32>>>);

/// A tenant's hold on intake room, given back when dropped.
pub struct IntakeShare {
    shares: Arc<Mutex<HashMap<String, u32>>>,
    tenant: String,
    mib: u32,
}

impl IntakeShares {
    /// Takes `mib` of `tenant`'s share, if that much is left of it.
    pub fn take(&self, tenant: &str, mib: u32) -> Option<IntakeShare> {
        let mut held = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let now = held.get(tenant).copied().unwrap_or(0);
        // One submission at a time always fits, even the largest.
        if now > 0 && now + mib > INTAKE_MIB_PER_TENANT {
            return None;
        }
        held.insert(tenant.to_string(), now + mib);
        Some(IntakeShare {
            shares: Arc::clone(&self.0),
            tenant: tenant.to_string(),
            mib,
        })
    }
}

impl Drop for IntakeShare {
    fn drop(&mut self) {
        let mut held = self.shares.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(now) = held.get_mut(&self.tenant) {
            *now = now.saturating_sub(self.mib);
            if *now == 0 {
                held.remove(&self.tenant);
            }
        }
    }
}

/// How long a submission waits for room before it is refused with 503.
const INTAKE_WAIT: Duration = Duration::from_secs(30);
/// Chunks of one batch in flight at once (the budget paces them anyway).
const CHUNKS_PER_BATCH: usize = 4;
/// Chunks in flight at once in this process.
const MAX_CHUNKS: usize = 64;
/// A chunk's answer is read up to this size.
const MAX_ANSWER: usize = 16 << 20;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/v1/batches", axum::routing::post(submit).get(list))
        .route("/v1/batches/{id}", get(get_one).delete(cancel))
        .layer(DefaultBodyLimit::max(MAX_BATCH_BODY))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct SubmitBatch {
    upstream: String,
    tenant: Option<String>,
    format: Value,
    max_batch_size: Option<u32>,
    lane: Option<String>,
    request: SubmitBatchRequest,
    /// Kept as their JSON text: a batch of 100,000 records is held about once, not also as
    /// a tree of values.
    records: Vec<Box<serde_json::value::RawValue>>,
    max_attempts: Option<u32>,
    callback_url: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SubmitBatchRequest {
    method: String,
    path: String,
    query: Option<String>,
    #[serde(default)]
    headers: std::collections::BTreeMap<String, String>,
}

/// A record's id: its `id` field (text or number), else its index.
fn record_id(record: &Value, index: usize) -> String {
    match record.get("id") {
        Some(Value::String(s)) if !s.is_empty() => s.clone(),
        Some(Value::Number(n)) => n.to_string(),
        _ => index.to_string(),
    }
}

async fn submit(
    State(app): State<AppState>,
    principal: Principal,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Response> {
    // Room is taken before the body is read: a body of unknown length counts as the largest.
    let size = headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<usize>().ok())
        .unwrap_or(MAX_BATCH_BODY)
        .min(MAX_BATCH_BODY);
    let mib = (size >> 20) as u32 + 1;
    // A tenant's share first: one tenant's uploads (fast or never finished) cannot take all
    // the room and turn every other tenant's batch away.
    let _share = match &principal {
        crate::auth::Principal::Tenant(t) => Some(
            app.batch_intake_shares
                .take(t, mib)
                .ok_or_else(|| ApiError::Refused {
                    status: StatusCode::TOO_MANY_REQUESTS,
                    detail: format!(
                        "tenant \"{t}\" already has {} MiB of batches being submitted; wait for \
                     them to be read, then retry",
                        INTAKE_MIB_PER_TENANT
                    ),
                    retry_after: Duration::from_secs(5),
                })?,
        ),
        _ => None,
    };
    let _room = tokio::time::timeout(INTAKE_WAIT, app.batch_intake.acquire_many(mib))
        .await
        .ok()
        .and_then(Result::ok)
        .ok_or_else(|| ApiError::Refused {
            status: StatusCode::SERVICE_UNAVAILABLE,
            detail: format!(
                "too many large batches are being submitted at once (at most {INTAKE_MIB} MiB \
                 are read together); retry shortly"
            ),
            retry_after: Duration::from_secs(5),
        })?;
    let body = axum::body::to_bytes(body, MAX_BATCH_BODY)
        .await
        .map_err(|e| {
            let too_large = std::error::Error::source(&e)
                .is_some_and(|s| s.is::<http_body_util::LengthLimitError>());
            if too_large {
                ApiError::PayloadTooLarge {
                    detail: format!(
                        "the batch's JSON is larger than {} MiB; split the records into \
                         several batches",
                        MAX_BATCH_BODY >> 20
                    ),
                }
            } else {
                ApiError::bad_request(format!("the request body could not be read: {e}"))
            }
        })?;
    let s: SubmitBatch = parse_json(&body)?;
    drop(body);
    if let Some(t) = &s.tenant {
        check_tenant(t)?;
    }
    let tenant = principal.tenant_for(s.tenant.as_deref())?;
    let mut new = build_batch(&app.config, s, tenant, app.clock.now_millis())?;
    super::secrets::seal(
        &app.credentials,
        &super::secrets::batch_owner(&new.id),
        &mut new.request,
    )?;
    let summary = app
        .store
        .insert_batch(new)
        .await
        .map_err(super::api::store_refused)?;
    app.batches_wake.notify_one();
    Ok((
        StatusCode::ACCEPTED,
        Json(json!({"id": summary.id, "status": summary.status, "total": summary.total})),
    )
        .into_response())
}

/// The batch a submission describes, checked against the config; `tenant` is the one it
/// acts as (already checked). Errors name the field at fault.
pub(crate) fn build_batch(
    config: &crate::cfg::Config,
    s: SubmitBatch,
    tenant: Option<String>,
    now: Millis,
) -> ApiResult<NewBatch> {
    let upstream = config.upstream(&s.upstream).cloned().ok_or_else(|| {
        ApiError::bad_request(format!(
            "upstream: \"{}\" is not a configured upstream",
            s.upstream
        ))
    })?;
    let format = Format::from_json(&s.format).map_err(|e| ApiError::bad_request(e.to_string()))?;
    let requested = s.max_batch_size.unwrap_or(100);
    if requested == 0 {
        return Err(ApiError::bad_request("max_batch_size: must be at least 1"));
    }
    let max_batch_size = batch::max_chunk(&format, requested as usize) as u32;
    let lane = parse_lane(s.lane.as_deref(), headroom_core::Lane::Bulk)?;
    let r = s.request;
    check_request(
        &upstream,
        &r.method,
        &r.path,
        r.query.as_deref(),
        &r.headers,
    )?;
    if s.records.is_empty() {
        return Err(ApiError::bad_request("records: give at least one record"));
    }
    if s.records.len() > MAX_RECORDS {
        return Err(ApiError::PayloadTooLarge {
            detail: format!(
                "records: at most {MAX_RECORDS} per batch, got {}; split it",
                s.records.len()
            ),
        });
    }
    let max_attempts = s.max_attempts.unwrap_or(5);
    if !(1..=10).contains(&max_attempts) {
        return Err(ApiError::bad_request(format!(
            "max_attempts: {max_attempts} is out of range; use 1 to 10"
        )));
    }
    if let Some(url) = &s.callback_url {
        check_callback(config, url)?;
    }
    // One record at a time: its value lives only while it is checked.
    let mut records = Vec::with_capacity(s.records.len());
    for (i, raw) in s.records.into_iter().enumerate() {
        let record: Value = serde_json::from_str(raw.get())
            .map_err(|e| ApiError::bad_request(format!("records[{i}]: {e}")))?;
        if !record.is_object() {
            return Err(ApiError::bad_request(format!(
                "records[{i}]: each record must be a JSON object"
            )));
        }
        batch::validate(&format, &r.method, &r.path, std::iter::once(&record)).map_err(
            |e| match e {
                batch::BatchError::Record { reason, .. } => {
                    ApiError::bad_request(format!("records[{i}]: {reason}"))
                }
                other => ApiError::bad_request(other.to_string()),
            },
        )?;
        let text: Box<str> = raw.into();
        records.push(NewRecord {
            record_id: record_id(&record, i),
            payload: text.into_string().into_bytes(),
        });
    }
    let new = NewBatch {
        id: new_id("batch"),
        upstream: upstream.name.clone(),
        tenant,
        lane,
        format: format.to_json().to_string(),
        max_batch_size,
        request: JobRequest {
            method: r.method.to_ascii_uppercase(),
            path: r.path,
            query: r.query,
            headers: r.headers.into_iter().collect(),
            body: None,
            body_is_json: false,
        },
        max_attempts,
        callback_url: s.callback_url,
        created_at: now,
        records,
    };
    Ok(new)
}

/// A scheduled run's batch: a batch template (a `POST /v1/batches` body without `tenant`)
/// with the tenant filled in. Errors as `api::job_from_value`.
pub(crate) fn batch_from_value(
    config: &crate::cfg::Config,
    template: &Value,
    tenant: &str,
    now: Millis,
) -> Result<NewBatch, String> {
    // Records are read as raw JSON text, which only a text parser gives.
    let s: SubmitBatch =
        serde_json::from_str(&template.to_string()).map_err(|e| format!(": not a batch: {e}"))?;
    check_tenant(tenant).map_err(|e| e.to_string())?;
    build_batch(config, s, Some(tenant.to_string()), now).map_err(|e| e.to_string())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct GetQuery {
    failures_limit: Option<u32>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ListQuery {
    status: Option<String>,
    tenant: Option<String>,
    upstream: Option<String>,
    cursor: Option<String>,
    limit: Option<u32>,
}

/// `GET /v1/batches?status=&tenant=&upstream=&cursor=&limit=`: batches in submission order,
/// without their failures (`GET /v1/batches/{id}` has them); a tenant's token sees its own.
async fn list(
    State(app): State<AppState>,
    principal: Principal,
    query: Result<Query<ListQuery>, axum::extract::rejection::QueryRejection>,
) -> ApiResult<Json<Value>> {
    let Query(q) = query.map_err(|e| ApiError::bad_request(format!("query: {}", e.body_text())))?;
    let status = match q.status.as_deref() {
        None => None,
        Some(s) => Some(BatchStatus::parse(s).ok_or_else(|| {
            ApiError::bad_request(format!(
                "status: \"{s}\" is not a batch status; use queued, running, succeeded, \
                 completed_with_failures or cancelled"
            ))
        })?),
    };
    if let Some(t) = &q.tenant {
        check_tenant(t)?;
    }
    let tenant = principal.tenant_for(q.tenant.as_deref())?;
    let limit = super::api::page_limit(q.limit, q.cursor.as_deref())?;
    let filter = BatchFilter {
        status,
        tenant,
        upstream: q.upstream,
    };
    let page = app
        .store
        .list_batches(&filter, q.cursor.as_deref(), limit)
        .await?;
    Ok(Json(
        json!({ "batches": page.items, "next_cursor": page.next }),
    ))
}

async fn get_one(
    State(app): State<AppState>,
    principal: Principal,
    Path(id): Path<String>,
    query: Result<Query<GetQuery>, axum::extract::rejection::QueryRejection>,
) -> ApiResult<Json<BatchSummary>> {
    let Query(q) = query.map_err(|e| ApiError::bad_request(format!("query: {}", e.body_text())))?;
    let limit = q.failures_limit.unwrap_or(1000).min(100_000);
    let summary = app
        .store
        .get_batch(&id, limit)
        .await?
        .filter(|b| super::api::visible(&principal, b.tenant.as_deref()))
        .ok_or_else(|| ApiError::not_found(format!("no batch \"{id}\"")))?;
    Ok(Json(summary))
}

async fn cancel(
    State(app): State<AppState>,
    _admin: Admin,
    Path(id): Path<String>,
) -> ApiResult<Json<BatchSummary>> {
    let summary = app
        .store
        .cancel_batch(&id, app.clock.now_millis())
        .await?
        .ok_or_else(|| ApiError::not_found(format!("no batch \"{id}\"")))?;
    match summary.status {
        BatchStatus::Succeeded | BatchStatus::CompletedWithFailures => Err(ApiError::Conflict {
            detail: format!(
                "batch \"{id}\" is finished ({}); only a queued or running batch can be cancelled",
                summary.status.as_str()
            ),
        }),
        _ => Ok(Json(summary)),
    }
}

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
    let meta = &match super::secrets::open(
        &app.credentials,
        &super::secrets::batch_owner(&chunk.batch.id),
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
        if super::api::is_reserved_header(k) {
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
    let call = match prepared {
        Ok(call) => call,
        Err(e @ PrepareError::CredentialUnreadable(_)) => {
            return wait(Duration::from_secs(5), e.to_string())
        }
        Err(e) => return fail(e.to_string()),
    };
    let attempts = chunk.records.iter().map(|r| r.attempts).max().unwrap_or(0) + 1;
    let how = outbound::Send {
        lane: meta.lane,
        cost: 1.0,
        max_wait: upstream.retry.max_wait,
        attempt: attempts,
        queue: None,
        wait_until: None,
        read: Read::All(MAX_ANSWER),
    };
    match call.send(Body::from(request.body), how).await {
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
