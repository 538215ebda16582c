//! The small HTTP client of a running `headroom serve`'s admin API that the commands
//! (`tenants`, `tokens`, `jobs`, `batches`, `schedules`, `events`, `status`, `alerts`) share:
//! which server (`--server`), the admin token (`HEADROOM_API_TOKEN`, else the one next to the
//! default database), problem+json errors, and printing answers.

use std::time::Duration;

use anyhow::Context;
use axum::body::Body;
use http::{header, Method, Request, StatusCode};
use http_body_util::BodyExt;
use percent_encoding::{utf8_percent_encode, AsciiSet, CONTROLS};
use serde_json::Value;

const DEFAULT_SERVER: &str = "http://127.0.0.1:7878";
const TIMEOUT: Duration = Duration::from_secs(30);
/// Characters escaped in a path segment.
const SEGMENT: &AsciiSet = &CONTROLS
    .add(b' ')
    .add(b'"')
    .add(b'#')
    .add(b'%')
    .add(b'/')
    .add(b'<')
    .add(b'>')
    .add(b'?')
    .add(b'\\')
    .add(b'`')
    .add(b'{')
    .add(b'}');

/// Which Headroom to talk to.
#[derive(Debug, Clone, clap::Args)]
pub struct ServerArgs {
    /// The Headroom server (its `listen` address), as an http:// or https:// URL.
    #[arg(long, value_name = "URL", default_value = DEFAULT_SERVER, global = true)]
    pub server: String,
}

pub fn seg(s: &str) -> String {
    utf8_percent_encode(s, SEGMENT).to_string()
}

pub fn print_json(body: &[u8]) {
    match serde_json::from_slice::<Value>(body) {
        Ok(v) => println!(
            "{}",
            serde_json::to_string_pretty(&v).unwrap_or_else(|_| v.to_string())
        ),
        Err(_) => println!("{}", String::from_utf8_lossy(body)),
    }
}

/// A small client of the admin API.
pub struct Api {
    base: String,
    token: Option<String>,
    runtime: tokio::runtime::Runtime,
}

impl Api {
    pub fn new(server: &str) -> anyhow::Result<Api> {
        let base = server.trim_end_matches('/').to_string();
        let uri: http::Uri = base
            .parse()
            .map_err(|_| anyhow::anyhow!("--server: \"{server}\" is not a URL"))?;
        if !matches!(uri.scheme_str(), Some("http" | "https")) || uri.host().is_none() {
            anyhow::bail!(
                "--server: \"{server}\" must be an http:// or https:// URL, like {DEFAULT_SERVER}"
            );
        }
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("cannot start the async runtime")?;
        let token = std::env::var("HEADROOM_API_TOKEN")
            .ok()
            .filter(|t| !t.is_empty())
            .or_else(local_admin_token);
        Ok(Api {
            base,
            token,
            runtime,
        })
    }

    /// Sends a request; the response body on success, else an error with the server's
    /// problem detail.
    pub fn call(&self, method: Method, path: &str, body: Option<Value>) -> anyhow::Result<Vec<u8>> {
        let url = format!("{}{path}", self.base);
        let mut builder = Request::builder().method(method.clone()).uri(&url);
        if let Some(token) = &self.token {
            let mut value = http::HeaderValue::from_str(&format!("Bearer {token}"))
                .context("HEADROOM_API_TOKEN is not a valid header value")?;
            value.set_sensitive(true);
            builder = builder.header(header::AUTHORIZATION, value);
        }
        let request = match body {
            Some(v) => builder
                .header(header::CONTENT_TYPE, "application/json")
                .body(Body::from(v.to_string())),
            None => builder.body(Body::empty()),
        }
        .with_context(|| format!("cannot build a request to {url}"))?;
        let base = self.base.clone();
        self.runtime.block_on(async move {
            let client = headroom::outbound::client::build(true);
            let response = tokio::time::timeout(TIMEOUT, client.request(request))
                .await
                .map_err(|_| {
                    anyhow::anyhow!("{base} did not answer within {}s", TIMEOUT.as_secs())
                })?
                .map_err(|e| {
                    let mut cause = String::new();
                    let mut source = std::error::Error::source(&e);
                    while let Some(s) = source {
                        cause.push_str(&format!(": {s}"));
                        source = s.source();
                    }
                    anyhow::anyhow!(
                        "cannot reach Headroom at {base}{cause}; is `headroom serve` running \
                         there? (set --server URL)"
                    )
                })?;
            let status = response.status();
            let bytes = tokio::time::timeout(TIMEOUT, response.into_body().collect())
                .await
                .map_err(|_| anyhow::anyhow!("{base} did not finish its answer in time"))?
                .context("the answer broke off")?
                .to_bytes();
            if status.is_success() {
                return Ok(bytes.to_vec());
            }
            Err(anyhow::anyhow!("{}", problem_message(status, &bytes)))
        })
    }
}

/// The admin token that `headroom serve` generated next to the default database, when this
/// command runs where the server does (readable by this user only).
fn local_admin_token() -> Option<String> {
    let db = headroom::cfg::DEFAULT_STORE.strip_prefix("sqlite://")?;
    let path = headroom::auth::admin_token_file_for(std::path::Path::new(db));
    headroom::auth::read_admin_token(&path).ok()
}

/// `404 Not Found: <detail>` from a problem+json answer, or the raw body.
fn problem_message(status: StatusCode, body: &[u8]) -> String {
    let detail = serde_json::from_slice::<Value>(body)
        .ok()
        .and_then(|v| v.get("detail").and_then(Value::as_str).map(str::to_string))
        .unwrap_or_else(|| String::from_utf8_lossy(body).trim().to_string());
    let mut message = format!("Headroom answered {status}");
    if !detail.is_empty() {
        message.push_str(": ");
        message.push_str(&detail);
    }
    if status == StatusCode::UNAUTHORIZED {
        message.push_str(
            " (set HEADROOM_API_TOKEN to the server's admin token: the one it printed on \
             first start, kept in admin.token next to its database)",
        );
    }
    message
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn problems_show_their_detail() {
        let m = problem_message(
            StatusCode::BAD_REQUEST,
            br#"{"type":"about:blank","status":400,"detail":"credential: missing"}"#,
        );
        assert_eq!(m, "Headroom answered 400 Bad Request: credential: missing");
        let m = problem_message(StatusCode::UNAUTHORIZED, b"");
        assert!(m.contains("HEADROOM_API_TOKEN"), "{m}");
        assert_eq!(seg("a b/c"), "a%20b%2Fc");
    }
}
