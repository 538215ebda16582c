//! `/v1/tenants/{tenant}/oauth/…`: connecting a tenant's OAuth grant, seeing its state
//! (never a token), and removing it.

use axum::body::Body;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path as UrlPath, State};
use axum::response::IntoResponse;
use axum::Json;
use http::StatusCode;
use serde_json::{json, Value};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::auth::Admin;
use super::credentials::{check_tenant, configured_upstream, json_object, only_fields, path_error};
use super::openapi::{OAuthGrantList, OAuthGrantSubmission, Problem};
use crate::app::AppState;
use crate::clock::{rfc3339, system_millis, Millis};
use crate::credentials::check_credential_value;
use crate::error::{ApiError, ApiResult};
use crate::oauth::Tokens;

const SHAPE: &str = "{\"access_token\": \"…\", \"refresh_token\": \"…\", \"expires_in\": 3600, \
                     \"scope\": \"…\"}";

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_grants))
        .routes(routes!(put_grant, delete_grant))
}

/// Connects a tenant's OAuth grant for an upstream whose `[upstreams.oauth]` uses
/// `grant = "refresh_token"`: the tokens are sealed at rest, never shown again, and
/// refreshed before they expire (admin token).
#[utoipa::path(put, path = "/v1/tenants/{tenant}/oauth/{upstream}", tag = "tenants",
    params(("tenant" = String, Path, pattern = "^[A-Za-z0-9._:@-]{1,128}$"), ("upstream" = String, Path, description = "A configured upstream with `[upstreams.oauth]`")),
    request_body = OAuthGrantSubmission,
    responses(
        (status = 204, description = "Connected"),
        (status = 400, description = "A parameter or the body is wrong; `detail` says what to fix", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "No or a wrong token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Not the admin token", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such upstream", body = Problem, content_type = "application/problem+json"),
    ))]
async fn put_grant(
    State(app): State<AppState>,
    path: Result<UrlPath<(String, String)>, PathRejection>,
    _admin: Admin,
    body: Body,
) -> ApiResult<StatusCode> {
    let UrlPath((tenant, upstream)) = path.map_err(path_error)?;
    check_tenant("tenant", &tenant)?;
    let up = configured_upstream(&app, &upstream)?;
    match up.oauth.as_deref() {
        Some(o) if o.grant == crate::cfg::GrantKind::RefreshToken => {}
        Some(_) => {
            return Err(ApiError::bad_request(format!(
                "upstream: \"{upstream}\" uses one app token (grant = \"client_credentials\"); \
                 tenants connect no grant of their own"
            )))
        }
        None => {
            return Err(ApiError::bad_request(format!(
                "upstream: \"{upstream}\" has no [upstreams.oauth] in the config; set a static \
                 credential with PUT /v1/tenants/{tenant}/credentials/{upstream}"
            )))
        }
    }
    let map = json_object(body, SHAPE).await?;
    only_fields(
        &map,
        &[
            "access_token",
            "refresh_token",
            "expires_in",
            "expires_at",
            "scope",
            "token_type",
        ],
        SHAPE,
    )?;
    let text = |field: &str| -> ApiResult<Option<String>> {
        match map.get(field) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(_) => Err(ApiError::bad_request(format!("{field}: must be a string"))),
        }
    };
    let access_token = text("access_token")?.ok_or_else(|| {
        ApiError::bad_request(format!("access_token: missing; the body is {SHAPE}"))
    })?;
    check_credential_value(&access_token)
        .map_err(|e| ApiError::bad_request(format!("access_token: {e}")))?;
    let refresh_token = text("refresh_token")?;
    if let Some(r) = &refresh_token {
        check_credential_value(r)
            .map_err(|e| ApiError::bad_request(format!("refresh_token: {e}")))?;
    }
    let now = system_millis();
    let expires_at: Option<Millis> = match (map.get("expires_in"), text("expires_at")?) {
        (Some(v), Some(_)) if !v.is_null() => {
            return Err(ApiError::bad_request(
                "expires_in, expires_at: give one of them, not both",
            ))
        }
        // Some providers send it as a string ("3600").
        (Some(v @ (Value::Number(_) | Value::String(_))), None) => match v
            .as_f64()
            .or_else(|| v.as_str().and_then(|s| s.trim().parse().ok()))
        {
            Some(s) if s.is_finite() && (0.0..=31_622_400.0).contains(&s) => {
                Some(now + (s * 1000.0) as Millis)
            }
            _ => {
                return Err(ApiError::bad_request(
                    "expires_in: must be a number of seconds from 0 to 31622400 (a year)",
                ))
            }
        },
        (Some(Value::Null) | None, None) => None,
        (Some(_), None) => {
            return Err(ApiError::bad_request(
                "expires_in: must be a number of seconds",
            ))
        }
        (_, Some(at)) => Some(
            chrono::DateTime::parse_from_rfc3339(&at)
                .map_err(|e| {
                    ApiError::bad_request(format!(
                        "expires_at: \"{}\" is not an RFC 3339 time ({e})",
                        at.chars().take(64).collect::<String>()
                    ))
                })?
                .timestamp_millis(),
        ),
    };
    let scope = text("scope")?.unwrap_or_default();
    let tokens = Tokens {
        access_token,
        refresh_token,
    };
    app.outbound
        .oauth
        .connect(&tenant, &upstream, &tokens, expires_at, &scope)
        .await?;
    tracing::info!(%tenant, %upstream, "OAuth grant connected");
    Ok(StatusCode::NO_CONTENT)
}

/// Removes a tenant's OAuth grant for an upstream (admin token).
#[utoipa::path(delete, path = "/v1/tenants/{tenant}/oauth/{upstream}", tag = "tenants",
    params(("tenant" = String, Path, pattern = "^[A-Za-z0-9._:@-]{1,128}$"), ("upstream" = String, Path, description = "A configured upstream")),
    responses(
        (status = 204, description = "Removed"),
        (status = 400, description = "A parameter is wrong; `detail` says what to fix", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "No or a wrong token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Not the admin token", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "The tenant has no grant for it", body = Problem, content_type = "application/problem+json"),
    ))]
async fn delete_grant(
    State(app): State<AppState>,
    path: Result<UrlPath<(String, String)>, PathRejection>,
    _admin: Admin,
) -> ApiResult<StatusCode> {
    let UrlPath((tenant, upstream)) = path.map_err(path_error)?;
    check_tenant("tenant", &tenant)?;
    if app.outbound.oauth.disconnect(&tenant, &upstream).await? {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::not_found(format!(
            "tenant \"{tenant}\" has no OAuth grant for \"{upstream}\""
        )))
    }
}

/// A tenant's OAuth grants: expiry, scopes, and whether each is broken; never a token
/// (admin token).
#[utoipa::path(get, path = "/v1/tenants/{tenant}/oauth", tag = "tenants",
    params(("tenant" = String, Path, pattern = "^[A-Za-z0-9._:@-]{1,128}$")),
    responses(
        (status = 200, description = "The tenant's grants", body = OAuthGrantList),
        (status = 400, description = "A parameter is wrong; `detail` says what to fix", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "No or a wrong token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Not the admin token", body = Problem, content_type = "application/problem+json"),
    ))]
async fn list_grants(
    State(app): State<AppState>,
    path: Result<UrlPath<String>, PathRejection>,
    _admin: Admin,
) -> ApiResult<impl IntoResponse> {
    let UrlPath(tenant) = path.map_err(path_error)?;
    check_tenant("tenant", &tenant)?;
    let grants = app.store.list_oauth_grants(Some(&tenant), false).await?;
    let shown: Vec<Value> = grants
        .into_iter()
        .map(|g| {
            json!({
                "upstream": g.upstream,
                "expires_at": g.expires_at.map(rfc3339),
                "scopes": g.scopes,
                "broken": g.broken,
                "updated_at": g.updated_at,
            })
        })
        .collect();
    Ok(Json(json!({ "tenant": tenant, "grants": shown })))
}
