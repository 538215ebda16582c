//! `/v1/jobs`: submit, read, list and cancel jobs.

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{json, Value};

use super::{page_limit, parse_json};
use crate::app::AppState;
use crate::auth::Principal;
use crate::error::{ApiError, ApiResult};
use crate::jobs::request::*;
use crate::jobs::*;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/v1/jobs", get(list).post(submit))
        .route("/v1/jobs/{id}", get(get_one).delete(cancel))
}

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
