//! Per-tenant credentials, encrypted at rest, injected by the proxy; and API tokens scoped to
//! a tenant. (Placeholder: stores nothing yet.)

use std::sync::Arc;

use axum::Router;

use crate::server::AppState;

pub struct Credentials {}

impl Credentials {
    /// Opens the credential store at `store` (a `sqlite://` URL).
    pub async fn open(_store: &str) -> anyhow::Result<Self> {
        Ok(Credentials {})
    }

    /// The decrypted credential `tenant` holds for `upstream`, if any.
    pub async fn get(&self, _tenant: &str, _upstream: &str) -> anyhow::Result<Option<Arc<str>>> {
        Ok(None)
    }

    /// The tenant an API token is scoped to, if it is a scoped token.
    pub async fn tenant_of_token(&self, _token: &str) -> anyhow::Result<Option<String>> {
        Ok(None)
    }
}

/// `/v1/tenants/…` routes.
pub fn routes() -> Router<AppState> {
    Router::new()
}
