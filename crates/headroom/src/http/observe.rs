//! `GET /v1/events`, `GET /v1/status`, `GET /v1/alerts`.

use std::time::Duration;

use axum::extract::{Query, State};
use axum::response::IntoResponse;
use axum::Json;
use headroom_core::duration::parse_duration;
use serde::Deserialize;
use serde_json::json;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::auth::Admin;
use super::openapi::{Alerts, Events, Problem, Status};
use crate::app::AppState;
use crate::auth::Principal;
use crate::error::{ApiError, ApiResult};
use crate::jobs::Millis;
use crate::observe::model::*;

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(events))
        .routes(routes!(status))
        .routes(routes!(alerts))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct EventsQuery {
    level: Option<String>,
    kind: Option<String>,
    upstream: Option<String>,
    tenant: Option<String>,
    queue: Option<String>,
    since: Option<String>,
    until: Option<String>,
    cursor: Option<String>,
    limit: Option<u32>,
}

/// An RFC 3339 time, Unix milliseconds, or a duration meaning that long before `now`.
pub fn parse_time(key: &str, value: &str, now: Millis) -> Result<Millis, ApiError> {
    if let Ok(t) = chrono::DateTime::parse_from_rfc3339(value) {
        return Ok(t.timestamp_millis());
    }
    if let Ok(ms) = value.parse::<i64>() {
        return Ok(ms);
    }
    if let Ok(d) = parse_duration(value) {
        return Ok(now - d.as_millis().min(i64::MAX as u128) as Millis);
    }
    Err(ApiError::bad_request(format!(
        "{key}: \"{value}\" is not a time; use RFC 3339 (2025-03-01T12:00:00Z), Unix \
         milliseconds, or a duration ago (15m, 2h, 1d)"
    )))
}

/// Rate-limit events (throttled answers, retries, pauses, refusals, failures), newest last;
/// a scoped token sees its tenant's only.
#[utoipa::path(get, path = "/v1/events", tag = "observe",
    params(
        ("level" = Option<String>, Query, description = "info, warn or error: this level and above"),
        ("kind" = Option<String>, Query),
        ("upstream" = Option<String>, Query),
        ("tenant" = Option<String>, Query, pattern = "^[A-Za-z0-9._:@-]{1,128}$"),
        ("queue" = Option<String>, Query),
        ("since" = Option<String>, Query, description = "RFC 3339, or a duration back from now (`15m`)"),
        ("until" = Option<String>, Query, description = "RFC 3339, or a duration back from now"),
        ("cursor" = Option<String>, Query, description = "`next_cursor` of the previous page"),
        ("limit" = Option<u32>, Query, description = "1 to 500 (100)"),
    ),
    responses(
        (status = 200, description = "A page of events", body = Events),
        (status = 400, description = "A parameter is wrong", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "No or a wrong token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "The token is scoped to another tenant", body = Problem, content_type = "application/problem+json"),
    ))]
async fn events(
    State(app): State<AppState>,
    principal: Principal,
    query: Result<Query<EventsQuery>, axum::extract::rejection::QueryRejection>,
) -> ApiResult<impl IntoResponse> {
    let Query(q) = query.map_err(|e| ApiError::bad_request(format!("query: {}", e.body_text())))?;
    // A tenant-scoped token sees its own tenant's events only.
    let tenant = principal.tenant_for(q.tenant.as_deref())?;
    let now = app.observe.now();
    let level = q
        .level
        .as_deref()
        .map(|l| {
            Level::parse(l).ok_or_else(|| {
                ApiError::bad_request(format!(
                    "level: \"{l}\" is not a level; use debug, info, warn or error"
                ))
            })
        })
        .transpose()?;
    let kind = q
        .kind
        .as_deref()
        .map(|k| {
            Kind::parse(k).ok_or_else(|| {
                let kinds: Vec<&str> = Kind::ALL.iter().map(|k| k.as_str()).collect();
                ApiError::bad_request(format!(
                    "kind: \"{k}\" is not a kind; use one of {}",
                    kinds.join(", ")
                ))
            })
        })
        .transpose()?;
    let filter = EventFilter {
        level,
        kind,
        upstream: q.upstream,
        tenant,
        queue: q.queue,
        since: q
            .since
            .as_deref()
            .map(|s| parse_time("since", s, now))
            .transpose()?,
        until: q
            .until
            .as_deref()
            .map(|s| parse_time("until", s, now))
            .transpose()?,
    };
    let limit = super::page_limit(q.limit, q.cursor.as_deref())?;
    // Checked by page_limit: a cursor is a sequence number.
    let after = q
        .cursor
        .as_deref()
        .filter(|c| !c.is_empty())
        .and_then(|c| c.parse::<i64>().ok());
    let page = app.store.list_events(&filter, after, limit).await?;
    // Where to go on from, even on the last page (for following new events).
    let last_cursor = page
        .items
        .last()
        .map(|e| e.seq.to_string())
        .or_else(|| after.map(|a| a.to_string()));
    Ok(Json(json!({
        "events": page.items.iter().map(event_view).collect::<Vec<_>>(),
        "next_cursor": page.next,
        "last_cursor": last_cursor,
    })))
}

fn event_view(e: &StoredEvent) -> serde_json::Value {
    let mut v = serde_json::to_value(e).unwrap_or_default();
    if let Some(obj) = v.as_object_mut() {
        obj.insert("time".into(), json!(crate::clock::rfc3339(e.event.at)));
        obj.insert(
            "headers".into(),
            e.event
                .headers
                .iter()
                .map(|(k, v)| (k.clone(), json!(v)))
                .collect::<serde_json::Map<_, _>>()
                .into(),
        );
    }
    v
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct StatusQuery {
    window: Option<String>,
}

/// Per upstream and tenant: spend against the limits, throttled and refused calls, retries,
/// backlog and whether it fits (admin token).
#[utoipa::path(get, path = "/v1/status", tag = "observe",
    params(("window" = Option<String>, Query, description = "A duration (`15m`)")),
    responses(
        (status = 200, description = "The status", body = Status),
        (status = 400, description = "A parameter is wrong", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "No or a wrong token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Not the admin token", body = Problem, content_type = "application/problem+json"),
    ))]
async fn status(
    State(app): State<AppState>,
    _admin: Admin,
    query: Result<Query<StatusQuery>, axum::extract::rejection::QueryRejection>,
) -> ApiResult<impl IntoResponse> {
    let Query(q) = query.map_err(|e| ApiError::bad_request(format!("query: {}", e.body_text())))?;
    let window = match q.window.as_deref() {
        None => Duration::from_secs(900),
        Some(w) => parse_duration(w)
            .ok()
            .filter(|d| !d.is_zero())
            .ok_or_else(|| {
                ApiError::bad_request(format!(
                    "window: \"{w}\" is not a duration; write it like \"15m\" or \"1h\""
                ))
            })?,
    };
    let status = crate::work::status::compute(&app, window).await?;
    Ok(Json(status))
}

/// The alert rules, what is firing and recent history (admin token).
#[utoipa::path(get, path = "/v1/alerts", tag = "observe",
    responses(
        (status = 200, description = "The alerts", body = Alerts),
        (status = 401, description = "No or a wrong token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Not the admin token", body = Problem, content_type = "application/problem+json"),
    ))]
async fn alerts(State(app): State<AppState>, _admin: Admin) -> ApiResult<impl IntoResponse> {
    Ok(Json(crate::work::alerts::view(&app).await))
}
