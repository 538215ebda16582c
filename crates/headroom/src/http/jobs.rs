//! `/v1/jobs`: submit, read, list and cancel jobs.

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::openapi::{Job, JobList, JobSubmission, Problem};
use super::{page_limit, parse_json};
use crate::app::AppState;
use crate::auth::Principal;
use crate::error::{ApiError, ApiResult};
use crate::jobs::request::*;
use crate::jobs::*;

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list, submit))
        .routes(routes!(get_one, cancel))
}

/// Submits a job: stored before the answer, then sent as its queue and the upstream's budget
/// allow, and retried as the answer says.
#[utoipa::path(post, path = "/v1/jobs", tag = "jobs",
    request_body = JobSubmission,
    responses(
        (status = 202, description = "Stored: it runs as its queue allows", body = Job),
        (status = 200, description = "A job with this dedup_id was submitted within the window", body = Job),
        (status = 400, description = "The submission is wrong; `detail` names the field", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "No or a wrong token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "The token is scoped to another tenant", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "The store cannot take it now; nothing was stored", body = Problem, content_type = "application/problem+json"),
    ))]
async fn submit(
    State(app): State<AppState>,
    principal: Principal,
    body: Bytes,
) -> ApiResult<Response> {
    let s: SubmitJob = parse_json(&body)?;
    if let Some(t) = &s.tenant {
        check_tenant(t)?;
    }
    let tenant = principal.tenant_for(s.tenant.as_deref())?;
    let mut new = build_job(&app.config, s, tenant, app.clock.now_millis())?;
    crate::jobs::secrets::seal(
        &app.credentials,
        &crate::jobs::secrets::job_owner(&new.id),
        &mut new.request,
    )?;
    let inserted = app.store.insert_job(new).await?;
    let (status, job, deduplicated) = match inserted {
        Inserted::Created(job) => (StatusCode::ACCEPTED, job, false),
        Inserted::Duplicate(job) => (StatusCode::OK, job, true),
    };
    app.jobs_wake.notify_one();
    let mut view = job_view(&job, None);
    if deduplicated {
        view["deduplicated"] = json!(true);
    }
    Ok((status, Json(view)).into_response())
}

/// A job with every attempt.
#[utoipa::path(get, path = "/v1/jobs/{id}", tag = "jobs",
    params(("id" = String, Path, description = "The job's id")),
    responses(
        (status = 200, description = "The job", body = Job),
        (status = 401, description = "No or a wrong token", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such job (or not the token's tenant's)", body = Problem, content_type = "application/problem+json"),
    ))]
async fn get_one(
    State(app): State<AppState>,
    principal: Principal,
    Path(id): Path<String>,
) -> ApiResult<Json<Value>> {
    let job = app
        .store
        .get_job(&id)
        .await?
        .filter(|j| visible(&principal, j.new.tenant.as_deref()))
        .ok_or_else(|| ApiError::not_found(format!("no job \"{id}\"")))?;
    let attempts = app.store.attempts(&id).await?;
    Ok(Json(job_view(&job, Some(&attempts))))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ListQuery {
    status: Option<String>,
    tenant: Option<String>,
    queue: Option<String>,
    cursor: Option<String>,
    limit: Option<u32>,
}

/// Jobs, newest first, filtered; a scoped token sees its tenant's only.
#[utoipa::path(get, path = "/v1/jobs", tag = "jobs",
    params(
        ("status" = Option<String>, Query, description = "queued, running, retry_pending, succeeded, failed or cancelled"),
        ("tenant" = Option<String>, Query, pattern = "^[A-Za-z0-9._:@-]{1,128}$"),
        ("queue" = Option<String>, Query),
        ("cursor" = Option<String>, Query, description = "`next_cursor` of the previous page"),
        ("limit" = Option<u32>, Query, description = "1 to 500 (100)"),
    ),
    responses(
        (status = 200, description = "A page of jobs", body = JobList),
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
        Some(s) => Some(JobStatus::parse(s).ok_or_else(|| {
            ApiError::bad_request(format!(
                "status: \"{s}\" is not a job status; use queued, running, retry_pending, succeeded, failed or cancelled"
            ))
        })?),
    };
    let tenant = principal.tenant_for(q.tenant.as_deref())?;
    let limit = page_limit(q.limit, q.cursor.as_deref())?;
    let filter = JobFilter {
        status,
        tenant,
        queue: q.queue,
        dedup_prefix: None,
    };
    let page = app
        .store
        .list_jobs(&filter, q.cursor.as_deref(), limit)
        .await?;
    Ok(Json(json!({
        "jobs": page.items.iter().map(|j| job_view(j, None)).collect::<Vec<_>>(),
        "next_cursor": page.next,
    })))
}

/// Cancels a queued or retry_pending job (cancelling a cancelled job again is fine).
#[utoipa::path(delete, path = "/v1/jobs/{id}", tag = "jobs",
    params(("id" = String, Path, description = "The job's id")),
    responses(
        (status = 200, description = "Cancelled", body = Job),
        (status = 401, description = "No or a wrong token", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such job", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "The job is running or over", body = Problem, content_type = "application/problem+json"),
    ))]
async fn cancel(
    State(app): State<AppState>,
    principal: Principal,
    Path(id): Path<String>,
) -> ApiResult<Json<Value>> {
    if let Some(job) = app.store.get_job(&id).await? {
        if !visible(&principal, job.new.tenant.as_deref()) {
            return Err(ApiError::not_found(format!("no job \"{id}\"")));
        }
    }
    match app.store.cancel_job(&id, app.clock.now_millis()).await? {
        Cancelled::NotFound => Err(ApiError::not_found(format!("no job \"{id}\""))),
        Cancelled::Done(job) => Ok(Json(job_view(&job, None))),
        // Cancelling again is fine; anything else already under way or over is a conflict.
        Cancelled::Unchanged(job) if job.status == JobStatus::Cancelled => {
            Ok(Json(job_view(&job, None)))
        }
        Cancelled::Unchanged(job) => Err(ApiError::Conflict {
            detail: format!(
                "job \"{id}\" is {}; only queued or retry_pending jobs can be cancelled",
                job.status.as_str()
            ),
        }),
    }
}
