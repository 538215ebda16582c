//! Who is calling. `/v1` wants `Authorization: Bearer <token>` and `/proxy` wants
//! `Proxy-Authorization: Bearer <token>` (so that `Authorization` stays free for the
//! upstream); a token may be the admin token or one scoped to a tenant.
//!
//! The admin token is `HEADROOM_API_TOKEN`, else one generated on first start and kept in
//! `admin.token` next to the database (mode 0600, printed once). Only `auth = "none"` in the
//! config turns tokens off, and then [`open_guard`] still refuses what a web page could send:
//! a listener reachable from any browser tab must not be a way to spend tenants' credentials.

use std::path::{Path, PathBuf};

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

/// A `/v1` handler's caller, as an extractor: the token is checked from the request head,
/// before the handler reads (or waits for) the body.
impl axum::extract::FromRequestParts<AppState> for Principal {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut http::request::Parts,
        app: &AppState,
    ) -> ApiResult<Principal> {
        authenticate(app, &parts.headers, false).await
    }
}

/// A `/v1` caller with the admin token (or any caller with `auth = "none"`), as an extractor.
pub struct Admin;

impl axum::extract::FromRequestParts<AppState> for Admin {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut http::request::Parts,
        app: &AppState,
    ) -> ApiResult<Admin> {
        authenticate(app, &parts.headers, false)
            .await?
            .require_admin()?;
        Ok(Admin)
    }
}

/// The admin token file's name, in the database's directory.
pub const ADMIN_TOKEN_FILE: &str = "admin.token";

/// The admin token file that goes with a database file.
pub fn admin_token_file_for(db: &Path) -> PathBuf {
    match db.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir.join(ADMIN_TOKEN_FILE),
        _ => PathBuf::from(ADMIN_TOKEN_FILE),
    }
}

/// The admin token when none is given in `HEADROOM_API_TOKEN`: read from the file next to
/// the SQLite database, or made (and printed once) on first start. A shared PostgreSQL store
/// has no such file: every node must be given the same token.
pub fn stored_admin_token(store: &crate::store::AnyStore) -> anyhow::Result<String> {
    if store.is_shared() {
        anyhow::bail!(
            "a PostgreSQL store is shared by several nodes: set HEADROOM_API_TOKEN to the same \
             admin token on every node, or write auth = \"none\" in the config to run without \
             tokens (loopback only)"
        );
    }
    let Some(db) = store.path() else {
        // An in-memory store: the token lives as long as the process, like the data.
        let token = generate_admin_token();
        eprintln!(
            "headroom: admin API token for this process (in-memory store): {token}\n\
             send it as `Authorization: Bearer …` to /v1 and `Proxy-Authorization: Bearer …` to /proxy"
        );
        return Ok(token);
    };
    let path = admin_token_file_for(db);
    if path.exists() {
        return read_admin_token(&path);
    }
    let token = generate_admin_token();
    write_admin_token(&path, &token)?;
    eprintln!(
        "headroom: generated an admin API token (shown once; kept in {path}, mode 0600):\n\n    \
         {token}\n\nsend it as `Authorization: Bearer …` to /v1 and `Proxy-Authorization: \
         Bearer …` to /proxy; the CLI reads it from HEADROOM_API_TOKEN or that file",
        path = path.display()
    );
    tracing::info!(path = %path.display(), "generated an admin API token");
    Ok(token)
}

fn generate_admin_token() -> String {
    use rand::RngCore;
    let mut bytes = [0u8; 24];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    format!("{}admin_{hex}", crate::credentials::TOKEN_PREFIX)
}

/// Reads an admin token file, refusing one that others may read.
pub fn read_admin_token(path: &Path) -> anyhow::Result<String> {
    let token = crate::credentials::read_private(path, "admin token file")?
        .trim()
        .to_string();
    if token.is_empty() || http::HeaderValue::from_str(&format!("Bearer {token}")).is_err() {
        anyhow::bail!(
            "the admin token file {} is empty or not one line of visible ASCII; delete it to \
             have a new token generated",
            path.display()
        );
    }
    Ok(token)
}

fn write_admin_token(path: &Path, token: &str) -> anyhow::Result<()> {
    crate::credentials::write_private(path, &format!("{token}\n"), "admin token file")
}

/// With `auth = "none"`, refuses requests a web page could make or that did not come to a
/// loopback name: a page can send "simple" cross-site requests (form posts, `text/plain`
/// bodies, image loads) and, through DNS rebinding, requests under its own host name. None
/// of Headroom's own clients does any of that.
pub async fn open_guard(
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    match check_open_request(&request) {
        Ok(()) => next.run(request).await,
        Err(e) => e.into_response(),
    }
}

fn check_open_request(request: &axum::extract::Request) -> ApiResult<()> {
    const HINT: &str = "Headroom runs with auth = \"none\", which serves only local clients; \
                        configure an API token to serve anything else";
    let headers = request.headers();
    let host = request
        .uri()
        .authority()
        .map(|a| a.as_str())
        .or_else(|| headers.get(http::header::HOST)?.to_str().ok())
        .unwrap_or("");
    if !is_loopback_host(host) {
        return Err(ApiError::Forbidden {
            detail: format!("Host: \"{host}\" is not a loopback name or address; {HINT}"),
        });
    }
    if let Some(site) = headers.get("sec-fetch-site") {
        if !matches!(site.as_bytes(), b"same-origin" | b"none") {
            return Err(ApiError::Forbidden {
                detail: format!(
                    "Sec-Fetch-Site: a request from another site (\"{}\") is refused; {HINT}",
                    String::from_utf8_lossy(site.as_bytes())
                ),
            });
        }
    }
    if let Some(origin) = headers.get(http::header::ORIGIN) {
        let origin = origin.to_str().unwrap_or("");
        let same = origin
            .strip_prefix("http://")
            .or_else(|| origin.strip_prefix("https://"))
            .is_some_and(|o| o.eq_ignore_ascii_case(host));
        if !same {
            return Err(ApiError::Forbidden {
                detail: format!("Origin: \"{origin}\" is another site; {HINT}"),
            });
        }
    }
    let path = request.uri().path();
    let writes = matches!(
        *request.method(),
        http::Method::POST | http::Method::PUT | http::Method::PATCH
    );
    if writes && (path == "/v1" || path.starts_with("/v1/")) {
        let json = headers
            .get(http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(';').next())
            .map(|v| v.trim().to_ascii_lowercase())
            .is_some_and(|v| v == "application/json" || v.ends_with("+json"));
        if !json {
            return Err(ApiError::UnsupportedMediaType {
                detail: "Content-Type: the API takes JSON; send `Content-Type: application/json`"
                    .to_string(),
            });
        }
    }
    Ok(())
}

/// `localhost`, `*.localhost`, or a loopback IP, with or without a port.
fn is_loopback_host(authority: &str) -> bool {
    let host = match authority.strip_prefix('[') {
        // [v6]:port
        Some(rest) => match rest.split_once(']') {
            Some((ip, after)) if after.is_empty() || after.starts_with(':') => ip,
            _ => return false,
        },
        None => authority.rsplit_once(':').map_or(authority, |(h, port)| {
            if port.bytes().all(|b| b.is_ascii_digit()) {
                h
            } else {
                authority
            }
        }),
    };
    let host = host.trim_end_matches('.').to_ascii_lowercase();
    if host == "localhost" || host.ends_with(".localhost") {
        return true;
    }
    host.parse::<std::net::IpAddr>()
        .is_ok_and(|ip| ip.is_loopback())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_hosts_are_told_apart_from_others() {
        for ok in [
            "localhost",
            "localhost:7878",
            "api.localhost:80",
            "127.0.0.1",
            "127.0.0.1:7878",
            "127.1.2.3:1",
            "[::1]:7878",
            "[::1]",
            "LOCALHOST.:7878",
        ] {
            assert!(is_loopback_host(ok), "{ok}");
        }
        for bad in [
            "",
            "evil.example",
            "evil.example:7878",
            "localhost.evil.example",
            "127.0.0.1.nip.io",
            "10.0.0.1:7878",
            "[::2]:7878",
            "[::1]x",
            "0.0.0.0:7878",
        ] {
            assert!(!is_loopback_host(bad), "{bad}");
        }
    }

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
