//! The one error type of the HTTP API: RFC 9457 `application/problem+json` that tells the
//! client what to fix, and hides internals.

use std::time::Duration;

use axum::response::{IntoResponse, Response};
use http::{header, HeaderValue, StatusCode};
use serde::Serialize;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The request is wrong; `detail` says what to fix.
    #[error("{detail}")]
    BadRequest { detail: String },
    #[error("{detail}")]
    NotFound { detail: String },
    #[error("missing or wrong bearer token")]
    Unauthorized,
    #[error("{detail}")]
    Forbidden { detail: String },
    #[error("{detail}")]
    PayloadTooLarge { detail: String },
    #[error("{detail}")]
    UnsupportedMediaType { detail: String },
    /// The request clashes with what exists (e.g. a name taken).
    #[error("{detail}")]
    Conflict { detail: String },
    /// The budget cannot admit the call in time (429) or its breaker is open (503).
    #[error("{detail}")]
    Refused {
        status: StatusCode,
        detail: String,
        retry_after: Duration,
    },
    /// A long-window quota (daily, monthly) is spent until `until` (RFC 3339): not busy, so
    /// retrying soon cannot help. 429 with its own problem type and the reset.
    #[error("{detail}")]
    QuotaExhausted {
        detail: String,
        retry_after: Duration,
        until: String,
    },
    /// An operator paused the budget (`PATCH /v1/budgets/…`) until `until` (RFC 3339),
    /// beyond the call's max wait. 429 with its own problem type and the end of the pause.
    #[error("{detail}")]
    Paused {
        detail: String,
        retry_after: Duration,
        until: String,
    },
    /// The tenant's OAuth grant for the upstream is broken: 424 with its own problem type,
    /// until the customer connects again.
    #[error("{detail}")]
    OAuthBroken { detail: String },
    /// The upstream could not be reached.
    #[error("{detail}")]
    BadGateway { detail: String },
    /// Any other status, for rejections made outside the handlers (see
    /// `problem_for_rejections`).
    #[error("{detail}")]
    Status { status: StatusCode, detail: String },
    /// Anything else: logged, not shown.
    #[error(transparent)]
    Internal(anyhow::Error),
}

/// A store failure: 503 with a `Retry-After` when trying again later can help, else a 500
/// that is logged, not shown.
impl From<crate::store::StoreError> for ApiError {
    fn from(e: crate::store::StoreError) -> Self {
        if e.is_unavailable() {
            ApiError::store_unavailable(&e)
        } else {
            ApiError::Internal(e.into())
        }
    }
}

/// No OAuth access token: a broken grant is the customer's to mend (424), a token endpoint
/// that cannot answer now a 503 to try again later.
impl From<crate::oauth::TokenError> for ApiError {
    fn from(e: crate::oauth::TokenError) -> Self {
        use crate::oauth::TokenError;
        match e {
            TokenError::Broken { .. } => ApiError::OAuthBroken {
                detail: e.to_string(),
            },
            TokenError::Unavailable { .. } => ApiError::Refused {
                status: StatusCode::SERVICE_UNAVAILABLE,
                detail: e.to_string(),
                retry_after: Duration::from_secs(5),
            },
            TokenError::Store(e) => e.into(),
        }
    }
}

/// Anything else: a 500 that is logged, not shown; but a store failure anywhere in the chain
/// that trying again can help is a 503 (see `From<StoreError>`).
impl From<anyhow::Error> for ApiError {
    fn from(e: anyhow::Error) -> Self {
        match e
            .chain()
            .find_map(|c| c.downcast_ref::<crate::store::StoreError>())
        {
            Some(store) if store.is_unavailable() => ApiError::store_unavailable(store),
            _ => ApiError::Internal(e),
        }
    }
}

/// An error and its causes on one line (`what was done: why: …`).
pub fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut next = e.source();
    while let Some(cause) = next {
        out.push_str(": ");
        out.push_str(&cause.to_string());
        next = cause.source();
    }
    out
}

impl ApiError {
    pub fn bad_request(detail: impl Into<String>) -> Self {
        ApiError::BadRequest {
            detail: detail.into(),
        }
    }

    pub fn not_found(detail: impl Into<String>) -> Self {
        ApiError::NotFound {
            detail: detail.into(),
        }
    }

    /// The store cannot take a write or answer a read now: 503 with a `Retry-After`, so that
    /// the client knows nothing was stored and sends it again; the cause is logged.
    pub fn store_unavailable(e: &crate::store::StoreError) -> Self {
        tracing::error!(error = %crate::error::chain(e), "the store is unavailable");
        ApiError::Refused {
            status: StatusCode::SERVICE_UNAVAILABLE,
            detail: "the store cannot be used right now (see /readyz); nothing was stored, \
                     send it again later"
                .to_string(),
            retry_after: Duration::from_secs(5),
        }
    }

    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::BadRequest { .. } => StatusCode::BAD_REQUEST,
            ApiError::NotFound { .. } => StatusCode::NOT_FOUND,
            ApiError::Unauthorized => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden { .. } => StatusCode::FORBIDDEN,
            ApiError::PayloadTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::UnsupportedMediaType { .. } => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ApiError::Conflict { .. } => StatusCode::CONFLICT,
            ApiError::Refused { status, .. } => *status,
            ApiError::QuotaExhausted { .. } | ApiError::Paused { .. } => {
                StatusCode::TOO_MANY_REQUESTS
            }
            ApiError::OAuthBroken { .. } => StatusCode::FAILED_DEPENDENCY,
            ApiError::BadGateway { .. } => StatusCode::BAD_GATEWAY,
            ApiError::Status { status, .. } => *status,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

#[derive(Serialize)]
struct Problem<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    title: &'a str,
    status: u16,
    detail: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    retry_after_s: Option<f64>,
    /// With `QUOTA_EXHAUSTED`: when the quota resets (RFC 3339).
    #[serde(skip_serializing_if = "Option::is_none")]
    exhausted_until: Option<&'a str>,
    /// With `BUDGET_PAUSED`: when the operator's pause ends (RFC 3339).
    #[serde(skip_serializing_if = "Option::is_none")]
    paused_until: Option<&'a str>,
}

/// The problem type of a spent long-window quota (a tag URI: a name, not a page).
pub const QUOTA_EXHAUSTED: &str = "tag:headroom,2026:quota-exhausted";
/// The problem type of a broken OAuth connection (the customer must connect again).
pub const OAUTH_BROKEN: &str = "tag:headroom,2026:oauth-reconnect";
/// The problem type of a budget an operator paused.
pub const BUDGET_PAUSED: &str = "tag:headroom,2026:budget-paused";

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        let detail = match &self {
            ApiError::Internal(e) => {
                tracing::error!(error = %format!("{e:#}"), "internal error");
                "internal error; the server log has the details".to_string()
            }
            other => other.to_string(),
        };
        let retry_after = match &self {
            ApiError::Refused { retry_after, .. }
            | ApiError::QuotaExhausted { retry_after, .. }
            | ApiError::Paused { retry_after, .. } => Some(*retry_after),
            _ => None,
        };
        let exhausted_until = match &self {
            ApiError::QuotaExhausted { until, .. } => Some(until.as_str()),
            _ => None,
        };
        let paused_until = match &self {
            ApiError::Paused { until, .. } => Some(until.as_str()),
            _ => None,
        };
        let problem = Problem {
            kind: match (exhausted_until, paused_until) {
                (Some(_), _) => QUOTA_EXHAUSTED,
                (_, Some(_)) => BUDGET_PAUSED,
                _ if matches!(self, ApiError::OAuthBroken { .. }) => OAUTH_BROKEN,
                _ => "about:blank",
            },
            exhausted_until,
            paused_until,
            title: status.canonical_reason().unwrap_or("error"),
            status: status.as_u16(),
            detail,
            retry_after_s: retry_after.map(|d| (d.as_secs_f64() * 1000.0).round() / 1000.0),
        };
        let body = serde_json::to_vec(&problem).unwrap_or_default();
        let mut response = (status, body).into_response();
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        if let Some(d) = retry_after {
            // Whole seconds, rounded up: a client waiting that long will be admitted.
            let secs = d.as_secs() + u64::from(d.subsec_nanos() > 0);
            headers.insert(header::RETRY_AFTER, HeaderValue::from(secs.max(1)));
        }
        if matches!(self, ApiError::Unauthorized) {
            headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}

pub type ApiResult<T> = Result<T, ApiError>;

/// Makes the errors axum answers by itself (a body over the route's limit, a path parameter
/// that is not UTF-8, a method the route does not take, a query that does not parse…),
/// which are `text/plain` or empty, into `application/problem+json` like every other error.
/// Layered on Headroom's own routes only: the proxy's answers are the upstream's.
pub async fn problem_for_rejections(response: Response) -> Response {
    let status = response.status();
    // axum's rejections are text/plain or have no body; a handler's own answer (problem+json,
    // or JSON such as a readiness report) is left as it is.
    let plain = match response.headers().get(header::CONTENT_TYPE) {
        None => true,
        Some(v) => v.as_bytes().starts_with(b"text/plain"),
    };
    if !plain || !(status.is_client_error() || status.is_server_error()) {
        return response;
    }
    let body = response.into_body();
    use http_body_util::BodyExt;
    let text = match http_body_util::Limited::new(body, 4096).collect().await {
        Ok(bytes) => String::from_utf8_lossy(&bytes.to_bytes())
            .trim()
            .to_string(),
        Err(_) => String::new(),
    };
    let detail = match status {
        StatusCode::PAYLOAD_TOO_LARGE => {
            "the request body is larger than this endpoint accepts".to_string()
        }
        // axum adds `Allow` outside this layer.
        StatusCode::METHOD_NOT_ALLOWED => {
            "this method is not allowed here; the Allow header lists those that are".to_string()
        }
        _ if text.is_empty() => status.canonical_reason().unwrap_or("error").to_string(),
        _ => text,
    };
    ApiError::Status { status, detail }.into_response()
}
