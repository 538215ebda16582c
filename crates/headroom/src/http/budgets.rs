//! `/v1/budgets`: every budget's limits, remaining, pace, pause and breaker; and
//! `/v1/budgets/{upstream}/{tenant}`, where an operator changes one tenant's budget at run
//! time (other limits, headroom or concurrency, or a pause), kept in the store for every node.

use axum::extract::rejection::PathRejection;
use axum::extract::{Path as UrlPath, State};
use axum::response::IntoResponse;
use axum::Json;
use http::StatusCode;
use serde_json::{json, Map, Value};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::auth::Admin;
use super::credentials::{check_tenant, configured_upstream, json_object, path_error};
use super::openapi::{BudgetDetail, Budgets, Problem};
use crate::app::AppState;
use crate::cfg::{BudgetScope, Upstream};
use crate::error::{ApiError, ApiResult};
use crate::outbound::governor::BudgetView;
use crate::overrides::{activate, tenant_budget, BudgetOverride};

const OVERRIDE_SHAPE: &str = "{\"limits\": [{\"quota\": 100, \"window\": \"10s\"}], \"headroom\": 0.5, \
     \"max_concurrency\": 4, \"paused_until\": \"<RFC 3339>\" or \"pause_for\": \"30m\", \"reason\": \"…\"} \
     (each optional; null clears it)";
/// The longest `pause_for` taken (a later end is a date: `paused_until`).
const MAX_PAUSE_FOR: std::time::Duration = std::time::Duration::from_secs(366 * 86_400);
const FIELDS: &[&str] = &[
    "limits",
    "headroom",
    "max_concurrency",
    "paused_until",
    "pause_for",
    "reason",
];

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list))
        .routes(routes!(show, change, clear))
}

/// A budget view as JSON: the upstream by name, the tenant when the budget is a tenant's.
fn view_json(app: &AppState, view: &BudgetView) -> Value {
    let mut value = serde_json::to_value(view).unwrap_or_default();
    if let Some(obj) = value.as_object_mut() {
        obj.remove("upstream_index");
        let upstream = app.config.upstreams.get(view.upstream_index as usize);
        obj.insert("upstream".into(), json!(upstream.map(|u| &u.name)));
        // An endpoint route's budget: `route` names it; its tenant as for the upstream's.
        let key = match crate::outbound::split_route_key(&view.key) {
            Some((route, rest)) => {
                obj.insert("route".into(), json!(route));
                if let Some(tenant) = rest.strip_prefix("tenant:") {
                    obj.insert("tenant".into(), json!(tenant));
                }
                return value;
            }
            None => view.key.as_str(),
        };
        if let Some(tenant) = key.strip_prefix("tenant:") {
            obj.insert("tenant".into(), json!(tenant));
            if let Some(active) = app
                .overrides
                .get(&(view.upstream_index, view.key.as_str().into()))
            {
                obj.insert("override".into(), json!(active.value));
            }
        }
    }
    value
}

/// `GET /v1/budgets` filters: a console searching 10k+ budgets asks for a page of matches,
/// not all of them every few seconds.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct ListQuery {
    /// Budgets whose tenant or key contains this (any case).
    q: Option<String>,
    /// Budgets of this upstream.
    upstream: Option<String>,
    /// At most this many budgets (`total` still counts every match).
    limit: Option<usize>,
}

/// Every budget the governor holds (or those matching `q` and `upstream`, up to `limit`),
/// and every override in force (admin token). A budget is made on its first call and
/// forgotten after 15 idle minutes.
#[utoipa::path(get, path = "/v1/budgets", tag = "budgets",
    params(
        ("q" = Option<String>, Query, description = "Only budgets whose tenant or key contains this (any case)"),
        ("upstream" = Option<String>, Query, description = "Only this upstream's budgets"),
        ("limit" = Option<usize>, Query, description = "At most this many budgets (1 to 100000); `total` counts every match"),
    ),
    responses(
        (status = 200, description = "The budgets", body = Budgets),
        (status = 400, description = "A parameter is wrong", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "No or a wrong token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Not the admin token", body = Problem, content_type = "application/problem+json"),
    ))]
async fn list(
    State(app): State<AppState>,
    _admin: Admin,
    query: Result<axum::extract::Query<ListQuery>, axum::extract::rejection::QueryRejection>,
) -> ApiResult<impl IntoResponse> {
    let axum::extract::Query(q) =
        query.map_err(|e| ApiError::bad_request(format!("query: {}", e.body_text())))?;
    let limit = q.limit.unwrap_or(usize::MAX);
    if limit == 0 || (q.limit.is_some() && limit > 100_000) {
        return Err(ApiError::bad_request("limit: use 1 to 100000"));
    }
    let upstream = match q.upstream.as_deref() {
        // A filter that names no upstream is the query's fault (400), not a missing resource.
        Some(name) => match app.config.upstream(name) {
            Some(u) => Some(u.index),
            None => {
                let known: Vec<&str> = app
                    .config
                    .upstreams
                    .iter()
                    .map(|u| u.name.as_str())
                    .collect();
                let known = if known.is_empty() {
                    "none".to_string()
                } else {
                    known.join(", ")
                };
                return Err(ApiError::bad_request(format!(
                    "upstream: \"{name}\" is not configured; configured upstreams: {known}"
                )));
            }
        },
        None => None,
    };
    let needle =
        q.q.as_deref()
            .map(str::to_lowercase)
            .filter(|n| !n.is_empty());
    let snapshot = app.governor.snapshot();
    // Matched on the tenant (or a shared key), not on the `tenant:` prefix every key has.
    let mut matches: Vec<&BudgetView> = snapshot
        .iter()
        .filter(|view| upstream.is_none_or(|u| view.upstream_index == u))
        .filter(|view| {
            let key =
                crate::outbound::split_route_key(&view.key).map_or(view.key.as_str(), |(_, k)| k);
            let name = key.strip_prefix("tenant:").unwrap_or(key);
            needle
                .as_deref()
                .is_none_or(|n| name.to_lowercase().contains(n))
        })
        .collect();
    // A stable order, so a capped page is the same page on every refresh.
    matches.sort_unstable_by(|a, b| (a.upstream_index, &a.key).cmp(&(b.upstream_index, &b.key)));
    let total = matches.len();
    let budgets: Vec<Value> = matches
        .into_iter()
        .take(limit)
        .map(|view| view_json(&app, view))
        .collect();
    Ok(Json(json!({
        "budgets": budgets,
        "total": total,
        "overrides": app.overrides.list(),
    })))
}

/// The upstream and tenant of a path, checked: the upstream must keep a budget per tenant.
fn target(
    app: &AppState,
    path: Result<UrlPath<(String, String)>, PathRejection>,
) -> ApiResult<(&Upstream, String)> {
    let (upstream, tenant) = named(app, path)?;
    if upstream.budget == BudgetScope::Shared {
        return Err(ApiError::Conflict {
            detail: format!(
                "upstream \"{}\" has budget = \"shared\": one budget for every tenant, changed in \
                 its config; a tenant's budget can be changed where budget = \"tenant\"",
                upstream.name
            ),
        });
    }
    Ok((upstream, tenant))
}

/// The upstream and tenant of a path, checked as names only.
fn named(
    app: &AppState,
    path: Result<UrlPath<(String, String)>, PathRejection>,
) -> ApiResult<(&Upstream, String)> {
    let UrlPath((upstream, tenant)) = path.map_err(path_error)?;
    check_tenant("tenant", &tenant)?;
    Ok((configured_upstream(app, &upstream)?, tenant))
}

/// A tenant's budget at an upstream: the override in force, the config it runs with, and
/// its live state when the governor holds it.
fn detail(app: &AppState, upstream: &Upstream, tenant: &str) -> Value {
    let key = (upstream.index, tenant_budget(tenant));
    let active = app.overrides.get(&key);
    let config = app
        .overrides
        .config(&key)
        .unwrap_or_else(|| upstream.budget_config.clone());
    json!({
        "upstream": upstream.name,
        "tenant": tenant,
        "override": active.as_ref().map(|a| &a.value),
        "updated_at": active.as_ref().map(|a| &a.updated_at),
        "config": {
            "limits": config.limits,
            "limits_from": if config.overridden { "override" } else { "config" },
            "headroom": config.headroom,
            "max_concurrency": config.max_concurrency,
            "paused_until": active.as_ref().and_then(|a| a.value.paused_until.clone()),
        },
        "budget": app.governor.snapshot_of(&key).map(|v| view_json(app, &v)),
    })
}

/// One tenant's budget at an upstream: its override, the config it runs with and its live
/// state (admin token).
#[utoipa::path(get, path = "/v1/budgets/{upstream}/{tenant}", tag = "budgets",
    params(("upstream" = String, Path, description = "A configured upstream"), ("tenant" = String, Path, pattern = "^[A-Za-z0-9._:@-]{1,128}$")),
    responses(
        (status = 200, description = "The budget", body = BudgetDetail),
        (status = 400, description = "A parameter is wrong; `detail` says what to fix", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "No or a wrong token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Not the admin token", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such upstream", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "The upstream shares one budget among tenants", body = Problem, content_type = "application/problem+json"),
    ))]
async fn show(
    State(app): State<AppState>,
    path: Result<UrlPath<(String, String)>, PathRejection>,
    _admin: Admin,
) -> ApiResult<Json<Value>> {
    let (upstream, tenant) = target(&app, path)?;
    Ok(Json(detail(&app, upstream, &tenant)))
}

/// Changes one tenant's budget at an upstream (admin token), as a JSON merge patch of its
/// override: a field given sets it, `null` clears it, a field left out stays. `limits`
/// replace the upstream's configured limits for this tenant; `paused_until` (or `pause_for`,
/// a duration from now) holds every call until then. Kept in the store: every node applies
/// it (a node sharing the store within 5 s). Clearing every field removes the override.
#[utoipa::path(patch, path = "/v1/budgets/{upstream}/{tenant}", tag = "budgets",
    params(("upstream" = String, Path, description = "A configured upstream"), ("tenant" = String, Path, pattern = "^[A-Za-z0-9._:@-]{1,128}$")),
    request_body(content = BudgetOverride, content_type = "application/json"),
    responses(
        (status = 200, description = "The budget as changed", body = BudgetDetail),
        (status = 400, description = "A parameter or the body is wrong; `detail` names the field", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "No or a wrong token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Not the admin token", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such upstream", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "The upstream shares one budget among tenants", body = Problem, content_type = "application/problem+json"),
    ))]
async fn change(
    State(app): State<AppState>,
    path: Result<UrlPath<(String, String)>, PathRejection>,
    _admin: Admin,
    body: axum::body::Body,
) -> ApiResult<Json<Value>> {
    let (upstream, tenant) = target(&app, path)?;
    let patch = json_object(body, OVERRIDE_SHAPE).await?;
    if let Some(k) = patch.keys().find(|k| !FIELDS.contains(&k.as_str())) {
        let shown: String = k.chars().take(64).collect();
        return Err(ApiError::bad_request(format!(
            "{shown}: unknown field; the body is {OVERRIDE_SHAPE}"
        )));
    }
    if patch.contains_key("pause_for") && patch.contains_key("paused_until") {
        return Err(ApiError::bad_request(
            "pause_for: give pause_for or paused_until, not both",
        ));
    }
    let stored = app.store.budget_overrides().await?;
    let current = stored
        .iter()
        .find(|r| r.upstream == upstream.name && r.tenant == tenant)
        .and_then(|r| serde_json::from_str::<Map<String, Value>>(&r.value).ok())
        .unwrap_or_default();
    let clocks = app.override_clocks();
    let merged = merge(current, patch, clocks.wall_millis)?;
    let value = serde_json::to_string(&merged).map_err(|e| ApiError::Internal(e.into()))?;
    let active = activate(upstream, &tenant, &value, String::new(), clocks)
        .map_err(ApiError::bad_request)?;
    if active.value.is_empty() {
        app.store
            .delete_budget_override(&upstream.name, &tenant)
            .await?;
    } else {
        app.store
            .put_budget_override(&upstream.name, &tenant, &value)
            .await?;
    }
    app.reload_overrides().await?;
    tracing::info!(upstream = %upstream.name, %tenant, value = %value, "budget override changed");
    Ok(Json(detail(&app, upstream, &tenant)))
}

/// Applies a merge patch to a stored override; `pause_for` becomes `paused_until`.
fn merge(
    mut current: Map<String, Value>,
    patch: Map<String, Value>,
    now: crate::clock::Millis,
) -> ApiResult<Map<String, Value>> {
    for (k, v) in patch {
        let (k, v) = if k == "pause_for" {
            let until = match &v {
                Value::Null => Value::Null,
                Value::String(d) => {
                    let d = headroom_core::duration::parse_duration(d).map_err(|e| {
                        ApiError::bad_request(format!("pause_for: {e}; like \"30m\" or \"2h\""))
                    })?;
                    if d > MAX_PAUSE_FOR {
                        return Err(ApiError::bad_request(
                            "pause_for: at most 366d; give paused_until for a later date",
                        ));
                    }
                    let ms = i64::try_from(d.as_millis()).unwrap_or(i64::MAX);
                    json!(crate::clock::rfc3339(now.saturating_add(ms)))
                }
                _ => {
                    return Err(ApiError::bad_request(
                        "pause_for: must be a duration like \"30m\", or null",
                    ))
                }
            };
            ("paused_until".to_string(), until)
        } else {
            (k, v)
        };
        match v {
            Value::Null => {
                current.remove(&k);
            }
            v => {
                current.insert(k, v);
            }
        }
    }
    // Typed once here, so that a wrong type is named by its field.
    serde_path_to_error::deserialize::<_, BudgetOverride>(Value::Object(current.clone()))
        .map_err(|e| ApiError::bad_request(format!("{}: {}", e.path(), e.inner())))?;
    Ok(current)
}

/// Removes a tenant's budget override: the upstream's config applies again (admin token).
#[utoipa::path(delete, path = "/v1/budgets/{upstream}/{tenant}", tag = "budgets",
    params(("upstream" = String, Path, description = "A configured upstream"), ("tenant" = String, Path, pattern = "^[A-Za-z0-9._:@-]{1,128}$")),
    responses(
        (status = 204, description = "Removed"),
        (status = 400, description = "A parameter is wrong; `detail` says what to fix", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "No or a wrong token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Not the admin token", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such upstream, or no override", body = Problem, content_type = "application/problem+json"),
    ))]
async fn clear(
    State(app): State<AppState>,
    path: Result<UrlPath<(String, String)>, PathRejection>,
    _admin: Admin,
) -> ApiResult<StatusCode> {
    // Any scope: an override stored before its upstream became shared can still be removed.
    let (upstream, tenant) = named(&app, path)?;
    if !app
        .store
        .delete_budget_override(&upstream.name, &tenant)
        .await?
    {
        return Err(ApiError::not_found(format!(
            "tenant \"{tenant}\" has no budget override at upstream \"{}\"",
            upstream.name
        )));
    }
    app.reload_overrides().await?;
    tracing::info!(upstream = %upstream.name, %tenant, "budget override removed");
    Ok(StatusCode::NO_CONTENT)
}
