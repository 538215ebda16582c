//! `GET /v1/events`, `GET /v1/status`, `GET /v1/alerts`.

use std::time::Duration;

use axum::extract::{Query, State};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
use headroom_core::duration::parse_duration;
use serde::Deserialize;
use serde_json::json;

use super::auth::Admin;
use crate::app::AppState;
use crate::auth::Principal;
use crate::error::{ApiError, ApiResult};
use crate::jobs::Millis;
use crate::observe::model::*;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/v1/events", get(events))
        .route("/v1/status", get(status))
        .route("/v1/alerts", get(alerts))
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

async fn alerts(State(app): State<AppState>, _admin: Admin) -> ApiResult<impl IntoResponse> {
    Ok(Json(crate::work::alerts::view(&app).await))
}
