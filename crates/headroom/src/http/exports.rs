//! `/v1/exports`: bulk exports (Salesforce Bulk API 2.0 query jobs) whose result pages are
//! kept in the store.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::Value;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::auth::Admin;
use super::openapi::{Export, ExportSubmission, Problem};
use super::parse_json;
use crate::app::AppState;
use crate::auth::Principal;
use crate::error::{ApiError, ApiResult};
use crate::jobs::request::*;
use crate::jobs::*;

/// Records per page when the export does not say (Salesforce's own default).
const DEFAULT_PAGE: u32 = 50_000;
/// The most records per page Headroom asks for.
const MAX_PAGE: u32 = 500_000;

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(submit))
        .routes(routes!(get_one, cancel))
        .routes(routes!(page))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SubmitExport {
    upstream: String,
    tenant: Option<String>,
    format: Option<String>,
    lane: Option<String>,
    page_size: Option<u32>,
    request: SubmitExportRequest,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SubmitExportRequest {
    method: String,
    path: String,
    #[serde(default)]
    headers: std::collections::BTreeMap<String, String>,
    body: Option<Value>,
}

/// Starts a bulk export: a query job created, polled and read a page at a time, each page
/// kept in the store (`GET /v1/exports/{id}/pages/{n}`).
#[utoipa::path(post, path = "/v1/exports", tag = "exports",
    request_body(content = ExportSubmission, content_type = "application/json"),
    responses(
        (status = 202, description = "Stored: it runs as the budget allows", body = Export),
        (status = 400, description = "The submission is wrong; `detail` names the field", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "No or a wrong token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "The token is scoped to another tenant", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "The store cannot take it now; nothing was stored", body = Problem, content_type = "application/problem+json"),
    ))]
async fn submit(
    State(app): State<AppState>,
    principal: Principal,
    body: axum::body::Bytes,
) -> ApiResult<Response> {
    let s: SubmitExport = parse_json(&body)?;
    if let Some(t) = &s.tenant {
        check_tenant(t)?;
    }
    let tenant = principal.tenant_for(s.tenant.as_deref())?;
    let upstream = app.config.upstream(&s.upstream).cloned().ok_or_else(|| {
        ApiError::bad_request(format!(
            "upstream: \"{}\" is not a configured upstream",
            s.upstream
        ))
    })?;
    match s.format.as_deref() {
        None | Some("salesforce-bulk2") => {}
        Some(other) => {
            return Err(ApiError::bad_request(format!(
                "format: \"{other}\" has no bulk export; write \"salesforce-bulk2\""
            )))
        }
    }
    let page_size = s.page_size.unwrap_or(DEFAULT_PAGE);
    if !(1..=MAX_PAGE).contains(&page_size) {
        return Err(ApiError::bad_request(format!(
            "page_size: {page_size} is out of range; use 1 to {MAX_PAGE}"
        )));
    }
    let lane = parse_lane(s.lane.as_deref(), headroom_core::Lane::Bulk)?;
    let r = s.request;
    check_request(&upstream, &r.method, &r.path, None, &r.headers)?;
    if !r.method.eq_ignore_ascii_case("POST") {
        return Err(ApiError::bad_request(format!(
            "request.method: a query job is created with POST, not {}",
            r.method
        )));
    }
    if !r.path.trim_end_matches('/').ends_with("/jobs/query") {
        return Err(ApiError::bad_request(format!(
            "request.path: \"{}\" is not Bulk API 2.0's query path; write \
             /services/data/v62.0/jobs/query (with your API version)",
            r.path
        )));
    }
    let job = headroom_core::batch::bulk::QueryJob::from_json(
        r.body.as_ref().unwrap_or(&Value::Null),
        "request.body",
    )
    .map_err(|e| ApiError::bad_request(e.to_string()))?;
    let mut new = NewExport {
        id: new_id("export"),
        upstream: upstream.name.clone(),
        tenant,
        lane,
        request: JobRequest {
            method: "POST".into(),
            path: r.path.trim_end_matches('/').to_string(),
            query: None,
            headers: r.headers.into_iter().collect(),
            body: None,
            body_is_json: false,
        },
        job: job.to_json().to_string(),
        page_size,
        created_at: app.clock.now_millis(),
    };
    crate::jobs::secrets::seal(
        &app.credentials,
        &crate::jobs::secrets::export_owner(&new.id),
        &mut new.request,
    )?;
    let view = app.store.insert_export(new).await?;
    Ok((StatusCode::ACCEPTED, Json(view)).into_response())
}

async fn visible_export(app: &AppState, principal: &Principal, id: &str) -> ApiResult<ExportView> {
    app.store
        .get_export(id)
        .await?
        .filter(|e| visible(principal, e.tenant.as_deref()))
        .ok_or_else(|| ApiError::not_found(format!("no export \"{id}\"")))
}

/// An export: its state, the query job's id and state, pages and records stored so far.
#[utoipa::path(get, path = "/v1/exports/{id}", tag = "exports",
    params(("id" = String, Path, description = "The export's id")),
    responses(
        (status = 200, description = "The export", body = Export),
        (status = 401, description = "No or a wrong token", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such export (or not the token's tenant's)", body = Problem, content_type = "application/problem+json"),
    ))]
async fn get_one(
    State(app): State<AppState>,
    principal: Principal,
    Path(id): Path<String>,
) -> ApiResult<Json<ExportView>> {
    Ok(Json(visible_export(&app, &principal, &id).await?))
}

/// One page of an export's results, as the API gave it (CSV with its header line).
#[utoipa::path(get, path = "/v1/exports/{id}/pages/{page}", tag = "exports",
    params(
        ("id" = String, Path, description = "The export's id"),
        ("page" = u64, Path, description = "The page, from 1"),
    ),
    responses(
        (status = 200, description = "The page", content_type = "text/csv", body = String),
        (status = 401, description = "No or a wrong token", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such export or page", body = Problem, content_type = "application/problem+json"),
    ))]
async fn page(
    State(app): State<AppState>,
    principal: Principal,
    Path((id, page)): Path<(String, String)>,
) -> ApiResult<Response> {
    let export = visible_export(&app, &principal, &id).await?;
    let n: u64 = page.parse().ok().filter(|n| *n >= 1).ok_or_else(|| {
        ApiError::bad_request(format!("page: \"{page}\" is not a page number (1, 2, …)"))
    })?;
    let body = app.store.export_page(&export.id, n).await?.ok_or_else(|| {
        ApiError::not_found(format!(
            "export \"{id}\" has no page {n} ({} stored so far)",
            export.pages
        ))
    })?;
    Ok((
        StatusCode::OK,
        [(http::header::CONTENT_TYPE, "text/csv; charset=utf-8")],
        body,
    )
        .into_response())
}

/// Cancels an export: its query job is aborted, no further page is read (admin token).
#[utoipa::path(delete, path = "/v1/exports/{id}", tag = "exports",
    params(("id" = String, Path, description = "The export's id")),
    responses(
        (status = 200, description = "Cancelled", body = Export),
        (status = 401, description = "No or a wrong token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Not the admin token", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such export", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "The export is over", body = Problem, content_type = "application/problem+json"),
    ))]
async fn cancel(
    State(app): State<AppState>,
    _admin: Admin,
    Path(id): Path<String>,
) -> ApiResult<Json<ExportView>> {
    let view = app
        .store
        .cancel_export(&id, app.clock.now_millis())
        .await?
        .ok_or_else(|| ApiError::not_found(format!("no export \"{id}\"")))?;
    match view.status {
        ExportStatus::Succeeded | ExportStatus::Failed => Err(ApiError::Conflict {
            detail: format!(
                "export \"{id}\" is over ({}); only a queued or running export can be cancelled",
                view.status.as_str()
            ),
        }),
        _ => Ok(Json(view)),
    }
}
