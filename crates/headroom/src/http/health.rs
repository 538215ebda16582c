//! `/healthz`, `/readyz` and `/metrics`.

use axum::extract::State;
use axum::response::IntoResponse;
use axum::Json;
use http::header::CONTENT_TYPE;
use serde_json::json;

use super::auth::{authenticate, Admin};
use super::openapi::{Health, Problem};
use crate::app::AppState;
use crate::error::ApiResult;

/// Liveness: the process serves requests. Not 200 only when the store's writer is stuck in
/// a way a restart would cure (see `store::health`); what a restart would not cure (a full
/// disk, a lost database file, Redis down) is for `/readyz`.
#[utoipa::path(get, path = "/healthz", tag = "health", security(()),
    responses(
        (status = 200, description = "Alive", body = Health),
        (status = 503, description = "Stuck in a way a restart would cure", body = Problem, content_type = "application/problem+json"),
    ))]
pub(crate) async fn healthz(
    State(app): State<AppState>,
    headers: http::HeaderMap,
) -> axum::response::Response {
    match app.store.stuck() {
        None => Json(json!({"status": "ok"})).into_response(),
        Some(why) => unavailable(
            "not healthy",
            &[("store", why)],
            admin(&app, &headers).await,
        ),
    }
}

/// Whether the caller may see internals (paths, addresses, driver errors): the admin token,
/// or anyone in the open mode. Probes without a token get the verdict only.
async fn admin(app: &AppState, headers: &http::HeaderMap) -> bool {
    authenticate(app, headers, false)
        .await
        .is_ok_and(|p| p.require_admin().is_ok())
}

/// Readiness: the store commits a real write (and on SQLite its file is in place with room
/// on its disk) and the governor answers (Redis: a PING). 503 names what is not ready.
#[utoipa::path(get, path = "/readyz", tag = "health", security(()),
    responses(
        (status = 200, description = "Ready", body = Health),
        (status = 503, description = "Not ready: `checks` names what fails", body = Problem, content_type = "application/problem+json"),
    ))]
pub(crate) async fn readyz(
    State(app): State<AppState>,
    headers: http::HeaderMap,
) -> axum::response::Response {
    let (store, governor) = tokio::join!(app.store.check_ready(), app.governor.check_ready());
    let failing: Vec<(&str, String)> = [("store", store), ("governor", governor)]
        .into_iter()
        .filter_map(|(what, r)| r.err().map(|e| (what, e)))
        .collect();
    if failing.is_empty() {
        return Json(json!({"status": "ready"})).into_response();
    }
    unavailable("not ready", &failing, admin(&app, &headers).await)
}

/// A 503 problem naming each check that failed, in `detail` and in `checks`; with why only
/// for `detailed` callers (the log always has it).
fn unavailable(what: &str, failing: &[(&str, String)], detailed: bool) -> axum::response::Response {
    for (k, e) in failing {
        tracing::warn!(check = k, error = %e, "{what}");
    }
    let why = |e: &String| {
        if detailed {
            e.clone()
        } else {
            "failing (details for the admin token, and in the server log)".to_string()
        }
    };
    let detail = failing
        .iter()
        .map(|(k, e)| format!("{k}: {}", why(e)))
        .collect::<Vec<_>>()
        .join("; ");
    let checks: serde_json::Map<String, serde_json::Value> = failing
        .iter()
        .map(|(k, e)| (k.to_string(), json!(why(e))))
        .collect();
    let body = json!({
        "type": "about:blank",
        "title": "Service Unavailable",
        "status": 503,
        "detail": format!("{what}: {detail}"),
        "checks": checks,
    });
    (
        http::StatusCode::SERVICE_UNAVAILABLE,
        [(CONTENT_TYPE, "application/problem+json")],
        body.to_string(),
    )
        .into_response()
}

/// Prometheus metrics (OpenMetrics when asked for) (admin token: tenants are in the labels).
#[utoipa::path(get, path = "/metrics", tag = "health",
    responses(
        (status = 200, description = "The metrics", body = String, content_type = "text/plain"),
        (status = 401, description = "No or a wrong token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Not the admin token", body = Problem, content_type = "application/problem+json"),
    ))]
pub(crate) async fn metrics(
    State(app): State<AppState>,
    _admin: Admin,
    headers: http::HeaderMap,
) -> ApiResult<impl IntoResponse> {
    // Tenant names are in the labels: with tokens on, only the admin token may scrape.
    // OpenMetrics for those who ask for it (Prometheus does), the older text format else.
    let openmetrics = headers
        .get_all(http::header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.contains("application/openmetrics-text"));
    Ok(if openmetrics {
        (
            [(
                CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            app.metrics.render(),
        )
    } else {
        (
            [(CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")],
            app.metrics.render_prometheus(),
        )
    })
}
