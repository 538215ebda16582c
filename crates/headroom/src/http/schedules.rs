//! `/v1/schedules`: create, list, show, pause, resume and delete schedules, and list their
//! runs. Schedules span tenants, so every route wants the admin token (when one is set).

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::auth::Admin;
use super::openapi::{
    Problem, Schedule as ScheduleView, ScheduleDeleted, ScheduleList, ScheduleRuns,
    ScheduleSubmission,
};
use super::parse_json;
use crate::app::AppState;
use crate::clock::rfc3339;
use crate::error::{ApiError, ApiResult};
use crate::jobs::{BatchStatus, JobStatus};
use crate::schedules::*;

/// Upcoming runs shown with a schedule.
const NEXT_RUNS_SHOWN: usize = 100;

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list, create))
        .routes(routes!(get_one, delete))
        .routes(routes!(pause))
        .routes(routes!(resume))
        .routes(routes!(runs))
}

/// A schedule as the API shows it: its definition, where it comes from and its state.
fn schedule_view(s: &StoredSchedule) -> Value {
    let mut v = serde_json::from_str::<Value>(&s.definition).unwrap_or_else(|_| json!({}));
    if let Some(obj) = v.as_object_mut() {
        obj.insert("name".into(), json!(s.name));
        obj.insert(
            "source".into(),
            json!(if s.from_config { "config" } else { "api" }),
        );
        obj.insert("paused".into(), json!(s.paused));
        obj.insert("created_at".into(), json!(rfc3339(s.created_at)));
        obj.insert("updated_at".into(), json!(rfc3339(s.updated_at)));
    }
    v
}

/// What a run shows as its status: skipped or failed as recorded; a fired run takes its
/// job's or batch's outcome (`fired` while it is unfinished).
pub fn run_status(run: &Run) -> &'static str {
    match (run.outcome, &run.target) {
        (RunOutcome::Skipped, _) => "skipped",
        (RunOutcome::Failed, _) => "failed",
        (RunOutcome::Fired, Some(Target::Job { status, .. })) => match status {
            Some(JobStatus::Succeeded) => "succeeded",
            Some(JobStatus::Failed) => "failed",
            Some(JobStatus::Cancelled) => "cancelled",
            _ => "fired",
        },
        (RunOutcome::Fired, Some(Target::Batch { status, .. })) => match status {
            Some(BatchStatus::Succeeded) => "succeeded",
            Some(BatchStatus::CompletedWithFailures) => "failed",
            Some(BatchStatus::Cancelled) => "cancelled",
            _ => "fired",
        },
        (RunOutcome::Fired, None) => "fired",
    }
}

pub fn run_view(run: &Run) -> Value {
    let mut v = json!({
        "tenant": run.tenant,
        "status": run_status(run),
        "scheduled_for": rfc3339(run.fire_at),
        "due_at": rfc3339(run.due_at),
        "recorded_at": rfc3339(run.recorded_at),
        "reason": run.reason,
    });
    match &run.target {
        Some(Target::Job { id, status }) => {
            v["job_id"] = json!(id);
            v["job_status"] = json!(status.map(JobStatus::as_str));
        }
        Some(Target::Batch { id, status }) => {
            v["batch_id"] = json!(id);
            v["batch_status"] = json!(status);
        }
        None => {}
    }
    v
}

/// Creates a schedule (admin token).
#[utoipa::path(post, path = "/v1/schedules", tag = "schedules",
    request_body = ScheduleSubmission,
    responses(
        (status = 201, description = "Created; its tenants' first runs are set", body = ScheduleView),
        (status = 400, description = "The definition is wrong; `detail` names the key", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "No or a wrong token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Not the admin token", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "The name is taken", body = Problem, content_type = "application/problem+json"),
    ))]
async fn create(State(app): State<AppState>, _admin: Admin, body: Bytes) -> ApiResult<Response> {
    let def: ScheduleDef = parse_json(&body)?;
    let schedule = Schedule::check(def, &app.config).map_err(ApiError::bad_request)?;
    let now = app.scheduler.now();
    let stored = StoredSchedule {
        name: schedule.name().to_string(),
        definition: serde_json::to_string(&schedule.def).map_err(anyhow::Error::from)?,
        from_config: false,
        paused: false,
        created_at: now,
        updated_at: now,
    };
    if !app.store.create_schedule(&stored).await? {
        return Err(ApiError::Conflict {
            detail: format!(
                "name: a schedule \"{}\" exists; delete it first or choose another name",
                stored.name
            ),
        });
    }
    app.scheduler.poke();
    Ok((StatusCode::CREATED, Json(schedule_view(&stored))).into_response())
}

/// Every schedule, from the config and the API (admin token).
#[utoipa::path(get, path = "/v1/schedules", tag = "schedules",
    responses(
        (status = 200, description = "The schedules", body = ScheduleList),
        (status = 401, description = "No or a wrong token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Not the admin token", body = Problem, content_type = "application/problem+json"),
    ))]
async fn list(State(app): State<AppState>, _admin: Admin) -> ApiResult<Json<Value>> {
    let all = app.store.list_schedules().await?;
    Ok(Json(json!({
        "schedules": all.iter().map(schedule_view).collect::<Vec<_>>(),
    })))
}

async fn find(app: &AppState, name: &str) -> ApiResult<StoredSchedule> {
    app.store
        .get_schedule(name)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("no schedule \"{name}\"")))
}

/// A schedule with its tenants' next runs (admin token).
#[utoipa::path(get, path = "/v1/schedules/{name}", tag = "schedules",
    params(("name" = String, Path, description = "The schedule's name")),
    responses(
        (status = 200, description = "The schedule", body = ScheduleView),
        (status = 401, description = "No or a wrong token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Not the admin token", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such schedule", body = Problem, content_type = "application/problem+json"),
    ))]
async fn get_one(
    State(app): State<AppState>,
    _admin: Admin,
    Path(name): Path<String>,
) -> ApiResult<Json<Value>> {
    let s = find(&app, &name).await?;
    let slots = app.store.slots(&name).await?;
    let mut v = schedule_view(&s);
    v["tenant_count"] = json!(slots.len());
    // A paused schedule has no next runs (resuming starts again from then).
    let upcoming = if s.paused { &[][..] } else { &slots[..] };
    v["next_runs"] = json!(upcoming
        .iter()
        .take(NEXT_RUNS_SHOWN)
        .map(|slot| json!({
            "tenant": slot.tenant,
            "scheduled_for": rfc3339(slot.fire_at),
            "due_at": rfc3339(slot.due_at),
        }))
        .collect::<Vec<_>>());
    Ok(Json(v))
}

async fn set_paused(app: &AppState, name: &str, paused: bool) -> ApiResult<Json<Value>> {
    let s = app
        .store
        .set_paused(name, paused, app.scheduler.now())
        .await?
        .ok_or_else(|| ApiError::not_found(format!("no schedule \"{name}\"")))?;
    app.scheduler.poke();
    Ok(Json(schedule_view(&s)))
}

/// Pauses a schedule: no runs until it is resumed (admin token).
#[utoipa::path(post, path = "/v1/schedules/{name}/pause", tag = "schedules",
    params(("name" = String, Path, description = "The schedule's name")),
    responses(
        (status = 200, description = "Paused", body = ScheduleView),
        (status = 401, description = "No or a wrong token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Not the admin token", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such schedule", body = Problem, content_type = "application/problem+json"),
    ))]
async fn pause(
    State(app): State<AppState>,
    _admin: Admin,
    Path(name): Path<String>,
) -> ApiResult<Json<Value>> {
    set_paused(&app, &name, true).await
}

/// Resumes a schedule from now: runs missed while paused are not made up (admin token).
#[utoipa::path(post, path = "/v1/schedules/{name}/resume", tag = "schedules",
    params(("name" = String, Path, description = "The schedule's name")),
    responses(
        (status = 200, description = "Resumed", body = ScheduleView),
        (status = 401, description = "No or a wrong token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Not the admin token", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such schedule", body = Problem, content_type = "application/problem+json"),
    ))]
async fn resume(
    State(app): State<AppState>,
    _admin: Admin,
    Path(name): Path<String>,
) -> ApiResult<Json<Value>> {
    set_paused(&app, &name, false).await
}

/// Deletes a schedule made through the API (admin token).
#[utoipa::path(delete, path = "/v1/schedules/{name}", tag = "schedules",
    params(("name" = String, Path, description = "The schedule's name")),
    responses(
        (status = 200, description = "Deleted", body = ScheduleDeleted),
        (status = 401, description = "No or a wrong token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Not the admin token", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such schedule", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "The schedule belongs to the config file", body = Problem, content_type = "application/problem+json"),
    ))]
async fn delete(
    State(app): State<AppState>,
    _admin: Admin,
    Path(name): Path<String>,
) -> ApiResult<Json<Value>> {
    let s = find(&app, &name).await?;
    if s.from_config {
        return Err(ApiError::Conflict {
            detail: format!(
                "schedule \"{name}\" is defined in the config file; remove it there and \
                 restart (or pause it)"
            ),
        });
    }
    app.store.delete_schedule(&name).await?;
    app.scheduler.poke();
    Ok(Json(json!({"name": name, "deleted": true})))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RunsQuery {
    tenant: Option<String>,
    cursor: Option<String>,
    limit: Option<u32>,
}

/// A schedule's runs, newest first (admin token).
#[utoipa::path(get, path = "/v1/schedules/{name}/runs", tag = "schedules",
    params(
        ("name" = String, Path, description = "The schedule's name"),
        ("tenant" = Option<String>, Query, pattern = "^[A-Za-z0-9._:@-]{1,128}$"),
        ("cursor" = Option<String>, Query, description = "`next_cursor` of the previous page"),
        ("limit" = Option<u32>, Query, description = "1 to 500 (100)"),
    ),
    responses(
        (status = 200, description = "A page of runs", body = ScheduleRuns),
        (status = 400, description = "A parameter is wrong", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "No or a wrong token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Not the admin token", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such schedule", body = Problem, content_type = "application/problem+json"),
    ))]
async fn runs(
    State(app): State<AppState>,
    _admin: Admin,
    Path(name): Path<String>,
    query: Result<Query<RunsQuery>, axum::extract::rejection::QueryRejection>,
) -> ApiResult<Json<Value>> {
    let Query(q) = query.map_err(|e| ApiError::bad_request(format!("query: {}", e.body_text())))?;
    let limit = super::page_limit(q.limit, q.cursor.as_deref())?;
    find(&app, &name).await?;
    let page = app
        .store
        .list_runs(&name, q.tenant.as_deref(), q.cursor.as_deref(), limit)
        .await?;
    Ok(Json(json!({
        "runs": page.items.iter().map(run_view).collect::<Vec<_>>(),
        "next_cursor": page.next,
    })))
}
