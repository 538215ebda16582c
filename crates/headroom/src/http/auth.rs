//! Who is calling, as axum extractors (`Principal`, `Admin`), and the guard that keeps
//! `auth = "none"` to local clients (see `crate::auth`).

use http::HeaderMap;

use crate::app::AppState;
use crate::auth::*;
use crate::error::{ApiError, ApiResult};

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

/// A name made once, not parsed on every request as a `&str` would be.
const SEC_FETCH_SITE: http::HeaderName = http::HeaderName::from_static("sec-fetch-site");

pub(crate) fn check_open_request<B>(request: &http::Request<B>) -> ApiResult<()> {
    const HINT: &str = "Headroom runs with auth = \"none\", which serves only local clients; \
                        configure an API token to serve anything else";
    // One look over the names instead of a lookup per header (each hashes its name); the
    // first value of a repeated header counts, as `HeaderMap::get` would.
    let [mut host_header, mut site, mut origin, mut content_type] = [None; 4];
    for (name, value) in request.headers() {
        let slot = if name == http::header::HOST {
            &mut host_header
        } else if name == http::header::ORIGIN {
            &mut origin
        } else if name == http::header::CONTENT_TYPE {
            &mut content_type
        } else if name == SEC_FETCH_SITE {
            &mut site
        } else {
            continue;
        };
        slot.get_or_insert(value);
    }
    let host = request
        .uri()
        .authority()
        .map(|a| a.as_str())
        .or_else(|| host_header?.to_str().ok())
        .unwrap_or("");
    if !is_loopback_host(host) {
        return Err(ApiError::Forbidden {
            detail: format!("Host: \"{host}\" is not a loopback name or address; {HINT}"),
        });
    }
    if let Some(site) = site {
        if !matches!(site.as_bytes(), b"same-origin" | b"none") {
            return Err(ApiError::Forbidden {
                detail: format!(
                    "Sec-Fetch-Site: a request from another site (\"{}\") is refused; {HINT}",
                    String::from_utf8_lossy(site.as_bytes())
                ),
            });
        }
    }
    if let Some(origin) = origin {
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
        let json = content_type
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
    // The usual names first (every proxied call in open mode): `127.0.0.1` or `localhost`,
    // with or without a port.
    if let Some(rest) = authority
        .strip_prefix("127.0.0.1")
        .or_else(|| authority.strip_prefix("localhost"))
    {
        let port = |p: &str| p.bytes().all(|b| b.is_ascii_digit());
        if rest.is_empty() || rest.strip_prefix(':').is_some_and(port) {
            return true;
        }
    }
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
    // Checked on every proxied call in open mode: no allocation, no parse for the usual names.
    let host = host.trim_end_matches('.');
    let name = host.as_bytes();
    let localhost = |h: &[u8]| h.eq_ignore_ascii_case(b"localhost");
    if name == b"127.0.0.1"
        || localhost(name)
        || (name.len() > 10 && name[name.len() - 10] == b'.' && localhost(&name[name.len() - 9..]))
    {
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
