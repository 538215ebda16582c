//! `POST /intake/{source}`: a provider's webhook delivery, verified by its signature (no
//! token: the signature is the auth), stored as a job before it is acknowledged, deduplicated
//! by its event id within the source's window.

use axum::body::Body;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path as UrlPath, State};
use axum::response::{IntoResponse, Response};
use axum::Json;
use http::{HeaderMap, Method, StatusCode, Uri};
use serde_json::json;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::credentials::path_error;
use super::openapi::{IntakeEventList, IntakeReceipt, Job, Problem};
use crate::app::AppState;
use crate::cfg::sources::{Order, Source};
use crate::cfg::QueueScope;
use crate::clock::Millis;
use crate::error::{ApiError, ApiResult};
use crate::intake::verify::Delivery;
use crate::metrics::IntakeLabels;
use crate::store::model::jobs::{Inserted, JobRequest, JobStore as _, NewJob};

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(receive))
        .routes(routes!(list_events))
        .routes(routes!(replay))
}

#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct EventQuery {
    source: Option<String>,
    tenant: Option<String>,
    status: Option<String>,
    cursor: Option<String>,
    limit: Option<u32>,
}

/// The source and event id of an intake job's dedup id (`intake:{source}:{event_id}`).
fn intake_ids(job: &crate::store::model::jobs::Job) -> Option<(&str, &str)> {
    job.new
        .dedup_id
        .as_deref()?
        .strip_prefix("intake:")?
        .split_once(':')
}

fn event_view(job: &crate::store::model::jobs::Job) -> serde_json::Value {
    let mut view = crate::jobs::request::job_view(job, None);
    if let Some((source, event_id)) = intake_ids(job) {
        view["source"] = json!(source);
        view["event_id"] = json!(event_id);
    }
    view
}

/// Received webhook events, oldest first, with the state of the job each became (a scoped
/// token sees its tenant's only). Kept as long as jobs are (`[jobs] retention`).
#[utoipa::path(get, path = "/v1/intake/events", tag = "intake",
    params(
        ("source" = Option<String>, Query, description = "A configured source"),
        ("tenant" = Option<String>, Query, pattern = "^[A-Za-z0-9._:@-]{1,128}$"),
        ("status" = Option<String>, Query, description = "The job's: queued, running, retry_pending, succeeded, failed or cancelled"),
        ("cursor" = Option<String>, Query, description = "`next_cursor` of the previous page"),
        ("limit" = Option<u32>, Query, description = "1 to 500 (100)"),
    ),
    responses(
        (status = 200, description = "The events", body = IntakeEventList),
        (status = 400, description = "A parameter is wrong; `detail` names it", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "No or a wrong token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "The token is scoped to another tenant", body = Problem, content_type = "application/problem+json"),
    ))]
async fn list_events(
    State(app): State<AppState>,
    principal: crate::auth::Principal,
    query: Result<axum::extract::Query<EventQuery>, axum::extract::rejection::QueryRejection>,
) -> ApiResult<Json<serde_json::Value>> {
    let axum::extract::Query(q) =
        query.map_err(|e| ApiError::bad_request(format!("query: {}", e.body_text())))?;
    let status = match q.status.as_deref() {
        None => None,
        Some(s) => Some(
            crate::store::model::jobs::JobStatus::parse(s).ok_or_else(|| {
                ApiError::bad_request(format!(
                    "status: \"{s}\" is not a job status; use queued, running, retry_pending, \
                 succeeded, failed or cancelled"
                ))
            })?,
        ),
    };
    if let Some(s) = &q.source {
        if app.config.source(s).is_none() {
            let shown: String = s.chars().take(64).collect();
            return Err(ApiError::bad_request(format!(
                "source: \"{shown}\" is not a configured source"
            )));
        }
    }
    let tenant = principal.tenant_for(q.tenant.as_deref())?;
    let limit = super::page_limit(q.limit, q.cursor.as_deref())?;
    let filter = crate::store::model::jobs::JobFilter {
        status,
        tenant,
        queue: None,
        dedup_prefix: Some(match &q.source {
            Some(s) => format!("intake:{s}:"),
            None => "intake:".to_string(),
        }),
    };
    let page = app
        .store
        .list_jobs(&filter, q.cursor.as_deref(), limit)
        .await?;
    Ok(Json(json!({
        "events": page.items.iter().map(event_view).collect::<Vec<_>>(),
        "next_cursor": page.next,
    })))
}

/// Processes a received event again: a new job with the same call (no dedup), for an event
/// whose processing failed or must run again.
#[utoipa::path(post, path = "/v1/intake/events/{job}/replay", tag = "intake",
    params(("job" = String, Path, description = "The job the event became")),
    responses(
        (status = 202, description = "A new job, queued", body = Job),
        (status = 401, description = "No or a wrong token", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such event (or not the token's tenant's)", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "The store cannot take it now; nothing was stored", body = Problem, content_type = "application/problem+json"),
    ))]
async fn replay(
    State(app): State<AppState>,
    principal: crate::auth::Principal,
    path: Result<UrlPath<String>, PathRejection>,
) -> ApiResult<Response> {
    let UrlPath(id) = path.map_err(path_error)?;
    let job = app
        .store
        .get_job(&id)
        .await?
        .filter(|j| intake_ids(j).is_some())
        .filter(|j| crate::jobs::request::visible(&principal, j.new.tenant.as_deref()))
        .ok_or_else(|| {
            let shown: String = id.chars().take(64).collect();
            ApiError::not_found(format!("no intake event with job \"{shown}\""))
        })?;
    let now: Millis = app.clock.now_millis();
    let new_id = crate::jobs::request::new_id("job");
    let new = NewJob {
        id: new_id.clone(),
        dedup_id: None,
        dedup_until: None,
        idempotency_key: new_id,
        created_at: now,
        ..job.new.clone()
    };
    let Inserted::Created(created) = app.store.insert_job(new).await? else {
        return Err(ApiError::Internal(anyhow::anyhow!(
            "a replay without dedup id was deduplicated"
        )));
    };
    app.jobs_wake.notify_one();
    tracing::info!(job = %id, replay = %created.new.id, "intake event replayed");
    let mut view = crate::jobs::request::job_view(&created, None);
    view["replay_of"] = json!(id);
    Ok((StatusCode::ACCEPTED, Json(view)).into_response())
}

/// Receives a webhook delivery for a configured source: verified, stored as a job, then
/// acknowledged (200). A delivery with an event id already received within the source's
/// dedup window is acknowledged and not processed again.
#[utoipa::path(post, path = "/intake/{source}", tag = "intake",
    params(("source" = String, Path, description = "A configured `[[sources]]` name")),
    request_body(content = Vec<u8>, description = "The provider's delivery, as it sent it", content_type = "application/octet-stream"),
    responses(
        (status = 200, description = "Stored (or a duplicate of one stored): the provider may stop retrying", body = IntakeReceipt),
        (status = 400, description = "No event id (or tenant) where the source says", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "The signature is missing, wrong or too old; `detail` names the header", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such source", body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "Larger than the source's max_body_kib", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "The route's path needs a value the event does not have", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "The store cannot take it now; nothing was stored", body = Problem, content_type = "application/problem+json"),
    ))]
async fn receive(
    State(app): State<AppState>,
    path: Result<UrlPath<String>, PathRejection>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Response> {
    let UrlPath(name) = path.map_err(path_error)?;
    let source = app.config.source(&name).cloned().ok_or_else(|| {
        let shown: String = name.chars().take(64).collect();
        ApiError::not_found(format!("no intake source \"{shown}\""))
    })?;
    let count = |outcome: &'static str| {
        app.metrics
            .intake
            .get_or_create(&IntakeLabels {
                source: source.name.clone(),
                outcome,
            })
            .inc();
    };
    let bytes = axum::body::to_bytes(body, source.max_body)
        .await
        .map_err(|_| {
            count("invalid");
            ApiError::PayloadTooLarge {
                detail: format!(
                    "the delivery is larger than source \"{}\" takes ({} KiB; max_body_kib)",
                    source.name,
                    source.max_body / 1024
                ),
            }
        })?;
    let now: Millis = app.clock.now_millis();
    let url = signed_url(&source, &headers, &uri);
    let delivery = Delivery {
        method: method.as_str(),
        url: &url,
        headers: &headers,
        body: &bytes,
        now: now.div_euclid(1000),
    };
    if let Err(refused) = source.verifier.verify(&delivery) {
        count("refused");
        tracing::warn!(source = %source.name, reason = %refused, "intake delivery refused");
        return Err(ApiError::Status {
            status: StatusCode::UNAUTHORIZED,
            detail: format!("the delivery is not verified: {refused}"),
        });
    }
    let event: Option<serde_json::Value> = serde_json::from_slice(&bytes).ok();
    let invalid = |detail: String| {
        count("invalid");
        ApiError::bad_request(detail)
    };
    let event_id = source
        .event_id
        .value(&headers, event.as_ref())
        .filter(|id| id.len() <= 200)
        .ok_or_else(|| {
            invalid(format!(
                "event_id: the delivery has none (at {:?})",
                source.event_id
            ))
        })?;
    let tenant = match &source.tenant {
        None => None,
        Some(pick) => {
            let t = pick
                .value(&headers, event.as_ref())
                .ok_or_else(|| invalid(format!("tenant: the delivery has none (at {pick:?})")))?;
            if !crate::credentials::valid_tenant(&t) {
                return Err(invalid(format!(
                    "tenant: \"{}\" is not a tenant name ([A-Za-z0-9._:@-], 1 to 128)",
                    t.chars().take(64).collect::<String>()
                )));
            }
            Some(t)
        }
    };
    let route = &source.route;
    let path = route.path_for(event.as_ref()).map_err(|pointer| {
        count("invalid");
        ApiError::Status {
            status: StatusCode::UNPROCESSABLE_ENTITY,
            detail: format!(
                "route.path: the event has no value at {pointer} for \"{}\"",
                route.path
            ),
        }
    })?;
    let queue = app
        .config
        .queue(&route.queue)
        .ok_or_else(|| ApiError::Internal(anyhow::anyhow!("queue {} vanished", route.queue)))?;
    let scope = match &route.order {
        Order::Fifo { key } => key.value(&headers, event.as_ref()).unwrap_or_default(),
        Order::Parallel => match queue.scope {
            QueueScope::Global => String::new(),
            QueueScope::Tenant => tenant.clone().unwrap_or_default(),
        },
    };
    let mut forwarded = vec![
        ("intake-source".to_string(), source.name.clone()),
        ("intake-event-id".to_string(), event_id.clone()),
    ];
    if route.forward_body {
        if let Some(ct) = headers
            .get(http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
        {
            forwarded.push(("content-type".to_string(), ct.to_string()));
        }
    }
    let id = crate::jobs::request::new_id("job");
    let new = NewJob {
        id: id.clone(),
        queue: queue.name.clone(),
        scope,
        upstream: route.upstream.clone(),
        tenant,
        lane: route.lane,
        request: JobRequest {
            method: route.method.to_string(),
            path,
            query: None,
            headers: forwarded,
            body: route.forward_body.then(|| bytes.to_vec()),
            body_is_json: route.forward_body && event.is_some(),
        },
        dedup_id: Some(format!("intake:{}:{event_id}", source.name)),
        dedup_until: Some(now + source.dedup_window.as_millis() as Millis),
        callback_url: None,
        max_attempts: queue.max_attempts,
        idempotency_key: format!("{}:{event_id}", source.name),
        created_at: now,
    };
    let (job, duplicate) = match app.store.insert_job(new).await? {
        Inserted::Created(job) => (job, false),
        Inserted::Duplicate(job) => (job, true),
    };
    count(if duplicate { "duplicate" } else { "accepted" });
    if !duplicate {
        app.jobs_wake.notify_one();
    }
    Ok((
        StatusCode::OK,
        Json(json!({
            "received": true,
            "source": source.name,
            "event_id": event_id,
            "job": job.new.id,
            "duplicate": duplicate,
        })),
    )
        .into_response())
}

/// The URL the provider called, as schemes that sign it see it: the source's `public_url`
/// with the path and query received, else `https://{Host}{path}`.
fn signed_url(source: &Source, headers: &HeaderMap, uri: &Uri) -> String {
    let path = uri.path_and_query().map_or("/", |p| p.as_str());
    match &source.public_url {
        Some(base) => format!("{}{path}", base.trim_end_matches('/')),
        None => {
            let host = headers
                .get(http::header::HOST)
                .and_then(|h| h.to_str().ok())
                .unwrap_or("localhost");
            format!("https://{host}{path}")
        }
    }
}
