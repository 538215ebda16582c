//! `/v1/batches`: submit, read, list and cancel batches.

use std::time::Duration;

use axum::body::Body;
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::auth::Admin;
use super::openapi::{Batch, BatchAccepted, BatchList, BatchSubmission, Problem};
use super::parse_json;
use crate::app::AppState;
use crate::auth::Principal;
use crate::error::{ApiError, ApiResult};
use crate::jobs::batches::*;
use crate::jobs::request::*;
use crate::jobs::*;

/// How long a submission waits for room before it is refused with 503.
const INTAKE_WAIT: Duration = Duration::from_secs(30);

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(submit, list))
        .routes(routes!(get_one, cancel))
        .layer(DefaultBodyLimit::max(MAX_BATCH_BODY))
}

/// Submits a batch of records (JSON, or NDJSON for large ones): stored before the answer, then
/// sent through the upstream's batch endpoint in chunks, each record's outcome kept.
#[utoipa::path(post, path = "/v1/batches", tag = "batches",
    request_body(content = BatchSubmission, content_type = "application/json"),
    responses(
        (status = 202, description = "Stored: it runs as the budget allows", body = BatchAccepted),
        (status = 400, description = "The submission is wrong; `detail` names the field or line", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "No or a wrong token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "The token is scoped to another tenant", body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "Over the body or record limit", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "No room or the store cannot take it now; nothing was stored", body = Problem, content_type = "application/problem+json"),
    ))]
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
    crate::jobs::secrets::seal(
        &app.credentials,
        &crate::jobs::secrets::batch_owner(&new.id),
        &mut new.request,
    )?;
    let summary = app.store.insert_batch(new).await?;
    app.batches_wake.notify_one();
    Ok((
        StatusCode::ACCEPTED,
        Json(json!({"id": summary.id, "status": summary.status, "total": summary.total})),
    )
        .into_response())
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
#[utoipa::path(get, path = "/v1/batches", tag = "batches",
    params(
        ("status" = Option<String>, Query, description = "queued, running, succeeded, completed_with_failures or cancelled"),
        ("tenant" = Option<String>, Query, pattern = "^[A-Za-z0-9._:@-]{1,128}$"),
        ("upstream" = Option<String>, Query),
        ("cursor" = Option<String>, Query, description = "`next_cursor` of the previous page"),
        ("limit" = Option<u32>, Query, description = "1 to 500 (100)"),
    ),
    responses(
        (status = 200, description = "A page of batches", body = BatchList),
        (status = 400, description = "A filter is wrong", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "No or a wrong token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "The token is scoped to another tenant", body = Problem, content_type = "application/problem+json"),
    ))]
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
    let limit = super::page_limit(q.limit, q.cursor.as_deref())?;
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

/// A batch with its counts and failed records.
#[utoipa::path(get, path = "/v1/batches/{id}", tag = "batches",
    params(
        ("id" = String, Path, description = "The batch's id"),
        ("failures_limit" = Option<u32>, Query, description = "At most this many failures (all if left out)"),
    ),
    responses(
        (status = 200, description = "The batch", body = Batch),
        (status = 400, description = "A parameter is wrong", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "No or a wrong token", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such batch (or not the token's tenant's)", body = Problem, content_type = "application/problem+json"),
    ))]
async fn get_one(
    State(app): State<AppState>,
    principal: Principal,
    Path(id): Path<String>,
    query: Result<Query<GetQuery>, axum::extract::rejection::QueryRejection>,
) -> ApiResult<Json<BatchSummary>> {
    let Query(q) = query.map_err(|e| ApiError::bad_request(format!("query: {}", e.body_text())))?;
    let limit = q.failures_limit.unwrap_or(1000).min(100_000);
    let mut summary = app
        .store
        .get_batch(&id, limit)
        .await?
        .filter(|b| visible(&principal, b.tenant.as_deref()))
        .ok_or_else(|| ApiError::not_found(format!("no batch \"{id}\"")))?;
    summary.bulk_jobs = app.store.list_bulk_jobs(&id).await?;
    Ok(Json(summary))
}

/// Cancels an unfinished batch: its pending records are not sent (admin token).
#[utoipa::path(delete, path = "/v1/batches/{id}", tag = "batches",
    params(("id" = String, Path, description = "The batch's id")),
    responses(
        (status = 200, description = "Cancelled", body = Batch),
        (status = 401, description = "No or a wrong token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Not the admin token", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such batch", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "The batch is over", body = Problem, content_type = "application/problem+json"),
    ))]
async fn cancel(
    State(app): State<AppState>,
    _admin: Admin,
    Path(id): Path<String>,
) -> ApiResult<Json<BatchSummary>> {
    let mut summary = app
        .store
        .cancel_batch(&id, app.clock.now_millis())
        .await?
        .ok_or_else(|| ApiError::not_found(format!("no batch \"{id}\"")))?;
    summary.bulk_jobs = app.store.list_bulk_jobs(&id).await?;
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
