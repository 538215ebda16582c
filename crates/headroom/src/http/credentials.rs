//! `/v1/tenants/{tenant}/credentials`, the webhook signing secret and `/v1/tokens`: set,
//! list and delete tenants' credentials, and mint, list and revoke scoped API tokens.

use axum::body::Body;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path as UrlPath, State};
use axum::response::IntoResponse;
use axum::Json;
use base64::Engine;
use http::StatusCode;
use rand::RngCore;
use serde_json::{json, Value};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::auth::Admin;
use super::openapi::{
    CredentialList, CredentialSubmission, NewToken, Problem, TokenList, TokenSubmission,
    WebhookSecret,
};
use crate::app::AppState;
use crate::auth::Principal;
use crate::credentials::*;
use crate::error::{ApiError, ApiResult};

/// The largest request body the credential API reads.
const MAX_BODY: usize = 64 * 1024;
const CREDENTIAL_SHAPE: &str = "{\"credential\": \"<the secret for the upstream>\"}";
const TOKEN_SHAPE: &str = "{\"tenant\": \"<tenant>\"}";

pub(crate) fn check_tenant(field: &str, tenant: &str) -> ApiResult<()> {
    if valid_tenant(tenant) {
        return Ok(());
    }
    let shown: String = tenant.chars().take(64).collect();
    let ellipsis = if tenant.chars().count() > 64 {
        "…"
    } else {
        ""
    };
    Err(ApiError::bad_request(format!(
        "{field}: \"{shown}{ellipsis}\" must be 1 to 128 letters, digits, '.', '_', ':', '@' or '-'"
    )))
}

/// `/v1/tenants/…` and `/v1/tokens` routes.
pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_credentials))
        .routes(routes!(put_credential, delete_credential))
        .routes(routes!(rotate_webhook_secret))
        .routes(routes!(list_tokens, create_token))
        .routes(routes!(revoke_token))
        .routes(routes!(whoami))
}

/// Who the token is: `admin`, `tenant` (with its tenant) or `open` (`auth = "none"`). The
/// console asks this to know which pages to offer.
#[utoipa::path(get, path = "/v1/whoami", tag = "tenants",
    responses(
        (status = 200, description = "The caller", body = Value, example = json!({"role": "tenant", "tenant": "acme"})),
        (status = 401, description = "No or a wrong token", body = Problem, content_type = "application/problem+json"),
    ))]
async fn whoami(principal: Principal) -> Json<Value> {
    Json(match principal {
        Principal::Open => json!({ "role": "open", "tenant": null }),
        Principal::Admin => json!({ "role": "admin", "tenant": null }),
        Principal::Tenant(tenant) => json!({ "role": "tenant", "tenant": tenant }),
    })
}

/// The configured upstream of this name, or a 404 that lists the configured ones.
pub(crate) fn configured_upstream<'a>(
    app: &'a AppState,
    upstream: &str,
) -> ApiResult<&'a std::sync::Arc<crate::cfg::Upstream>> {
    app.config.upstream(upstream).ok_or_else(|| {
        let known: Vec<&str> = app
            .config
            .upstreams
            .iter()
            .map(|u| u.name.as_str())
            .collect();
        let shown: String = upstream.chars().take(64).collect();
        ApiError::not_found(format!(
            "upstream: \"{shown}\" is not configured; configured upstreams: {}",
            if known.is_empty() {
                "none".to_string()
            } else {
                known.join(", ")
            }
        ))
    })
}

pub(crate) fn path_error(e: PathRejection) -> ApiError {
    ApiError::bad_request(format!("the URL path is not valid: {e}"))
}

/// Reads a JSON object body, with problem+json errors that say what to fix.
pub(crate) async fn json_object(
    body: Body,
    shape: &str,
) -> ApiResult<serde_json::Map<String, Value>> {
    let bytes =
        axum::body::to_bytes(body, MAX_BODY)
            .await
            .map_err(|_| ApiError::PayloadTooLarge {
                detail: format!("request body: larger than {MAX_BODY} bytes; the body is {shape}"),
            })?;
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Err(ApiError::bad_request(format!(
            "request body: empty; send {shape}"
        )));
    }
    match serde_json::from_slice::<Value>(&bytes) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(_) => Err(ApiError::bad_request(format!(
            "request body: must be a JSON object, {shape}"
        ))),
        Err(e) => Err(ApiError::bad_request(format!(
            "request body: not valid JSON ({e}); send {shape}"
        ))),
    }
}

pub(crate) fn only_fields(
    map: &serde_json::Map<String, Value>,
    allowed: &[&str],
    shape: &str,
) -> ApiResult<()> {
    match map.keys().find(|k| !allowed.contains(&k.as_str())) {
        Some(k) => {
            let shown: String = k.chars().take(64).collect();
            Err(ApiError::bad_request(format!(
                "{shown}: unknown field; the body is {shape}"
            )))
        }
        None => Ok(()),
    }
}

fn string_field<'a>(
    map: &'a serde_json::Map<String, Value>,
    field: &str,
    shape: &str,
) -> ApiResult<&'a str> {
    match map.get(field) {
        Some(Value::String(s)) => Ok(s),
        None | Some(Value::Null) => Err(ApiError::bad_request(format!(
            "{field}: missing; the body is {shape}"
        ))),
        Some(_) => Err(ApiError::bad_request(format!("{field}: must be a string"))),
    }
}

/// Sets a tenant's credential for an upstream: sealed at rest, never shown again, injected
/// into the tenant's calls (admin token).
#[utoipa::path(put, path = "/v1/tenants/{tenant}/credentials/{upstream}", tag = "tenants",
    params(("tenant" = String, Path, pattern = "^[A-Za-z0-9._:@-]{1,128}$"), ("upstream" = String, Path, description = "A configured upstream")),
    request_body = CredentialSubmission,
    responses(
        (status = 204, description = "Set"),
        (status = 400, description = "A parameter or the body is wrong; `detail` says what to fix", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "No or a wrong token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Not the admin token", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such upstream", body = Problem, content_type = "application/problem+json"),
    ))]
async fn put_credential(
    State(app): State<AppState>,
    path: Result<UrlPath<(String, String)>, PathRejection>,
    _admin: Admin,
    body: Body,
) -> ApiResult<StatusCode> {
    let UrlPath((tenant, upstream)) = path.map_err(path_error)?;
    check_tenant("tenant", &tenant)?;
    configured_upstream(&app, &upstream)?;
    let map = json_object(body, CREDENTIAL_SHAPE).await?;
    only_fields(&map, &["credential"], CREDENTIAL_SHAPE)?;
    let credential = string_field(&map, "credential", CREDENTIAL_SHAPE)?;
    check_credential_value(credential).map_err(ApiError::bad_request)?;
    app.credentials.set(&tenant, &upstream, credential).await?;
    tracing::info!(%tenant, %upstream, "credential set");
    Ok(StatusCode::NO_CONTENT)
}

/// Deletes a tenant's credential for an upstream (admin token).
#[utoipa::path(delete, path = "/v1/tenants/{tenant}/credentials/{upstream}", tag = "tenants",
    params(("tenant" = String, Path, pattern = "^[A-Za-z0-9._:@-]{1,128}$"), ("upstream" = String, Path, description = "A configured upstream")),
    responses(
        (status = 204, description = "Deleted"),
        (status = 400, description = "A parameter or the body is wrong; `detail` says what to fix", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "No or a wrong token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Not the admin token", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "The tenant has no credential for it", body = Problem, content_type = "application/problem+json"),
    ))]
async fn delete_credential(
    State(app): State<AppState>,
    path: Result<UrlPath<(String, String)>, PathRejection>,
    _admin: Admin,
) -> ApiResult<StatusCode> {
    let UrlPath((tenant, upstream)) = path.map_err(path_error)?;
    check_tenant("tenant", &tenant)?;
    // Not limited to configured upstreams: a credential outlives its upstream's config.
    if app.credentials.remove(&tenant, &upstream).await? {
        tracing::info!(%tenant, %upstream, "credential deleted");
        Ok(StatusCode::NO_CONTENT)
    } else {
        let shown: String = upstream.chars().take(64).collect();
        Err(ApiError::not_found(format!(
            "tenant \"{tenant}\" has no credential for upstream \"{shown}\""
        )))
    }
}

/// The upstreams a tenant has a credential for (never the credentials) (admin token).
#[utoipa::path(get, path = "/v1/tenants/{tenant}/credentials", tag = "tenants",
    params(("tenant" = String, Path, pattern = "^[A-Za-z0-9._:@-]{1,128}$")),
    responses(
        (status = 200, description = "The tenant's credentials", body = CredentialList),
        (status = 400, description = "A parameter or the body is wrong; `detail` says what to fix", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "No or a wrong token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Not the admin token", body = Problem, content_type = "application/problem+json"),
    ))]
async fn list_credentials(
    State(app): State<AppState>,
    path: Result<UrlPath<String>, PathRejection>,
    _admin: Admin,
) -> ApiResult<impl IntoResponse> {
    let UrlPath(tenant) = path.map_err(path_error)?;
    check_tenant("tenant", &tenant)?;
    let mut credentials = app.credentials.list(&tenant).await?;
    // Webhook signing secrets are kept beside credentials, under names no upstream can have.
    credentials.retain(|c| !c.upstream.starts_with(':'));
    Ok(Json(
        json!({ "tenant": tenant, "credentials": credentials }),
    ))
}

/// `POST /v1/tenants/{tenant}/webhook-secret`: a new secret (Standard Webhooks, `whsec_…`)
/// that signs the tenant's job and batch callbacks from now on; shown once. The admin token,
/// or the tenant's own.
#[utoipa::path(post, path = "/v1/tenants/{tenant}/webhook-secret", tag = "tenants",
    params(("tenant" = String, Path, pattern = "^[A-Za-z0-9._:@-]{1,128}$")),
    responses(
        (status = 201, description = "The new secret, shown once", body = WebhookSecret),
        (status = 400, description = "A parameter or the body is wrong; `detail` says what to fix", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "No or a wrong token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "The token is scoped to another tenant", body = Problem, content_type = "application/problem+json"),
    ))]
async fn rotate_webhook_secret(
    State(app): State<AppState>,
    path: Result<UrlPath<String>, PathRejection>,
    principal: Principal,
) -> ApiResult<impl IntoResponse> {
    let UrlPath(tenant) = path.map_err(path_error)?;
    check_tenant("tenant", &tenant)?;
    principal.tenant_for(Some(&tenant))?;
    let mut key = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut key);
    let secret = format!(
        "whsec_{}",
        base64::engine::general_purpose::STANDARD.encode(key)
    );
    // The replaced secret keeps signing beside the new one for a while (two signatures in
    // `webhook-signature`), so that receivers switch without dropping a callback.
    let previous_until = match app.credentials.get(&tenant, WEBHOOK_SECRET).await? {
        Some(old) => {
            let until = app.clock.now_millis() + WEBHOOK_SECRET_OVERLAP;
            app.credentials
                .set(&tenant, WEBHOOK_SECRET_PREVIOUS, &format!("{until} {old}"))
                .await?;
            Some(until)
        }
        None => None,
    };
    app.credentials
        .set(&tenant, WEBHOOK_SECRET, &secret)
        .await?;
    tracing::info!(%tenant, "webhook signing secret rotated");
    Ok((
        StatusCode::CREATED,
        Json(json!({
            "tenant": tenant,
            "secret": secret,
            "previous_valid_until": previous_until.map(crate::clock::rfc3339),
            "detail": "shown once: the tenant's callbacks are signed with it from now on \
                       (webhook-id, webhook-timestamp, webhook-signature headers); the \
                       secret it replaces, if any, also signs them until previous_valid_until",
        })),
    ))
}

/// Mints an API token scoped to a tenant: it acts as that tenant only (admin token).
#[utoipa::path(post, path = "/v1/tokens", tag = "tenants",
    request_body = TokenSubmission,
    responses(
        (status = 201, description = "The token, shown once", body = NewToken),
        (status = 400, description = "A parameter or the body is wrong; `detail` says what to fix", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "No or a wrong token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Not the admin token", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "Headroom runs with auth = \"none\"", body = Problem, content_type = "application/problem+json"),
    ))]
async fn create_token(
    State(app): State<AppState>,
    principal: Principal,
    body: Body,
) -> ApiResult<impl IntoResponse> {
    principal.require_admin()?;
    if principal == crate::auth::Principal::Open {
        // A scoped token would be checked by nothing: without an admin token every caller
        // may act as any tenant.
        return Err(ApiError::Conflict {
            detail: "Headroom runs with auth = \"none\", so a scoped token would limit \
                     nothing; remove auth = \"none\" (an admin token is then required) to use \
                     scoped tokens"
                .to_string(),
        });
    }
    let map = json_object(body, TOKEN_SHAPE).await?;
    only_fields(&map, &["tenant"], TOKEN_SHAPE)?;
    let tenant = string_field(&map, "tenant", TOKEN_SHAPE)?;
    check_tenant("tenant", tenant)?;
    let (info, token) = app.credentials.create_token(tenant).await?;
    tracing::info!(id = %info.id, tenant = %info.tenant, "API token created");
    Ok((
        StatusCode::CREATED,
        Json(json!({
            "id": info.id,
            "tenant": info.tenant,
            "created_at": info.created_at,
            "token": token,
        })),
    ))
}

#[derive(serde::Deserialize)]
struct TokenFilter {
    tenant: Option<String>,
}

/// API tokens (never the tokens themselves) (admin token).
#[utoipa::path(get, path = "/v1/tokens", tag = "tenants",
    params(("tenant" = Option<String>, Query, pattern = "^[A-Za-z0-9._:@-]{1,128}$", description = "Only this tenant's")),
    responses(
        (status = 200, description = "The tokens", body = TokenList),
        (status = 400, description = "A parameter or the body is wrong; `detail` says what to fix", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "No or a wrong token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Not the admin token", body = Problem, content_type = "application/problem+json"),
    ))]
async fn list_tokens(
    State(app): State<AppState>,
    _admin: Admin,
    query: Result<axum::extract::Query<TokenFilter>, axum::extract::rejection::QueryRejection>,
) -> ApiResult<impl IntoResponse> {
    let axum::extract::Query(filter) =
        query.map_err(|e| ApiError::bad_request(format!("query: {e}; use ?tenant=<tenant>")))?;
    if let Some(t) = &filter.tenant {
        check_tenant("tenant", t)?;
    }
    let tokens = app
        .credentials
        .list_tokens(filter.tenant.as_deref())
        .await?;
    Ok(Json(json!({ "tokens": tokens })))
}

/// Revokes an API token (admin token).
#[utoipa::path(delete, path = "/v1/tokens/{id}", tag = "tenants",
    params(("id" = String, Path, description = "The token's id")),
    responses(
        (status = 204, description = "Revoked"),
        (status = 401, description = "No or a wrong token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Not the admin token", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such token", body = Problem, content_type = "application/problem+json"),
    ))]
async fn revoke_token(
    State(app): State<AppState>,
    path: Result<UrlPath<String>, PathRejection>,
    _admin: Admin,
) -> ApiResult<StatusCode> {
    let UrlPath(id) = path.map_err(path_error)?;
    if app.credentials.revoke_token(&id).await? {
        tracing::info!(%id, "API token revoked");
        Ok(StatusCode::NO_CONTENT)
    } else {
        let shown: String = id.chars().take(64).collect();
        Err(ApiError::not_found(format!("id: no API token \"{shown}\"")))
    }
}
