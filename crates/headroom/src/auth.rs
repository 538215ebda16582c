//! Who is calling. With `HEADROOM_API_TOKEN` set, `/v1` wants `Authorization: Bearer <token>`
//! and `/proxy` wants `Proxy-Authorization: Bearer <token>` (so that `Authorization` stays
//! free for the upstream); a token may be the admin token or one scoped to a tenant.

use http::HeaderMap;

use crate::error::{ApiError, ApiResult};
use crate::server::AppState;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Principal {
    /// No API token is configured: everyone may call (the listener is loopback by default).
    Open,
    Admin,
    /// A token scoped to this tenant: it acts as that tenant only.
    Tenant(String),
}

impl Principal {
    /// The tenant a request acts as: the scoped token's tenant, else what it asks for.
    pub fn tenant_for(&self, asked: Option<&str>) -> ApiResult<Option<String>> {
        match (self, asked) {
            (Principal::Tenant(t), Some(a)) if a != t => Err(ApiError::Forbidden {
                detail: format!(
                    "this API token is scoped to tenant \"{t}\"; Headroom-Tenant \"{a}\" is not allowed"
                ),
            }),
            (Principal::Tenant(t), _) => Ok(Some(t.clone())),
            (_, asked) => Ok(asked.map(str::to_string)),
        }
    }

    pub fn require_admin(&self) -> ApiResult<()> {
        match self {
            Principal::Open | Principal::Admin => Ok(()),
            Principal::Tenant(t) => Err(ApiError::Forbidden {
                detail: format!(
                    "this API token is scoped to tenant \"{t}\"; an admin token is needed"
                ),
            }),
        }
    }
}

fn bearer<'a>(headers: &'a HeaderMap, name: &http::HeaderName) -> Option<&'a str> {
    let value = headers.get(name)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

/// Compares in time independent of where the inputs differ.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

pub async fn authenticate(
    app: &AppState,
    headers: &HeaderMap,
    proxy: bool,
) -> ApiResult<Principal> {
    let Some(admin) = app.api_token.as_deref() else {
        return Ok(Principal::Open);
    };
    let header = if proxy {
        http::header::PROXY_AUTHORIZATION
    } else {
        http::header::AUTHORIZATION
    };
    let token = bearer(headers, &header).ok_or(ApiError::Unauthorized)?;
    if constant_time_eq(token.as_bytes(), admin.as_bytes()) {
        return Ok(Principal::Admin);
    }
    match app.credentials.tenant_of_token(token).await? {
        Some(tenant) => Ok(Principal::Tenant(tenant)),
        None => Err(ApiError::Unauthorized),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scoped_tokens_act_as_their_tenant_only() {
        let p = Principal::Tenant("acme".into());
        assert_eq!(p.tenant_for(None).unwrap(), Some("acme".into()));
        assert_eq!(p.tenant_for(Some("acme")).unwrap(), Some("acme".into()));
        assert!(p.tenant_for(Some("globex")).is_err());
        assert!(p.require_admin().is_err());
        assert_eq!(
            Principal::Admin.tenant_for(Some("globex")).unwrap(),
            Some("globex".into())
        );
    }

    #[test]
    fn bearer_tokens_are_read_case_insensitively() {
        let mut h = HeaderMap::new();
        h.insert(http::header::AUTHORIZATION, "bearer abc".parse().unwrap());
        assert_eq!(bearer(&h, &http::header::AUTHORIZATION), Some("abc"));
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"ab"));
    }
}
