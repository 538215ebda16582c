//! An OAuth 2.0 provider to test against: a token endpoint (`POST /oauth/token`, RFC 6749
//! refresh-token and client-credentials grants, client authentication by Basic or in the
//! body) and an API behind it whose every other path wants a current access token.
//!
//! Access tokens expire after `token_lifetime`; the API answers an expired or unknown one with
//! `401 {"error":"invalid_token"}` and `WWW-Authenticate`, as RFC 6750 says. With `rotate`,
//! each refresh gives a new refresh token and the one used stops working after `reuse_grace`
//! (Atlassian's reuse interval, Okta's grace period; zero: at once), after which using it is
//! `invalid_grant`. `revoke()` makes every refresh token `invalid_grant`. `token_latency`
//! slows the token endpoint; `answer_delay` holds its answer after the tokens are issued.
//! `POST /_mock/oauth/grant` gives a fresh grant (what the authorization code flow would),
//! `POST /_mock/oauth/revoke` revokes every refresh token, `GET /_mock/oauth/stats` counts.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::{Request, State};
use axum::response::Response;
use axum::routing::post;
use axum::Router;
use base64::Engine as _;
use http::header::{AUTHORIZATION, CONTENT_TYPE, WWW_AUTHENTICATE};
use http::StatusCode;
use http_body_util::BodyExt;
use serde::Serialize;
use tokio::net::TcpListener;
use tokio::sync::oneshot;

/// How the provider behaves.
#[derive(Debug, Clone)]
pub struct OAuthMockConfig {
    pub client_id: String,
    pub client_secret: String,
    pub token_lifetime: Duration,
    pub rotate: bool,
    pub reuse_grace: Duration,
    pub token_latency: Duration,
    /// How long the token endpoint waits after issuing tokens before it answers (the window
    /// in which a client killed has lost them).
    pub answer_delay: Duration,
}

impl Default for OAuthMockConfig {
    fn default() -> Self {
        OAuthMockConfig {
            client_id: "client".into(),
            client_secret: "secret".into(),
            token_lifetime: Duration::from_secs(3600),
            rotate: true,
            reuse_grace: Duration::ZERO,
            token_latency: Duration::ZERO,
            answer_delay: Duration::ZERO,
        }
    }
}

/// What the provider counted.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct OAuthMockStats {
    /// Token requests with `grant_type=refresh_token` that got tokens.
    pub refreshes: u64,
    /// …that were refused with `invalid_grant`.
    pub invalid_grants: u64,
    /// Token requests with `grant_type=client_credentials` that got a token.
    pub client_credentials: u64,
    /// Token requests whose client did not authenticate.
    pub bad_clients: u64,
    /// Token requests answered 503 while the endpoint was set down.
    pub unavailable: u64,
    /// API calls with a current token.
    pub api_ok: u64,
    /// API calls refused for an expired or unknown token.
    pub api_unauthorized: u64,
}

#[derive(Default)]
struct State_ {
    /// Access token → when it expires.
    access: HashMap<String, Instant>,
    /// Refresh token → until when it works (`None`: until it is used).
    refresh: HashMap<String, Option<Instant>>,
    revoked: bool,
    next: u64,
    stats: OAuthMockStats,
}

struct Shared {
    config: OAuthMockConfig,
    state: Mutex<State_>,
    calls: AtomicU64,
    /// The token endpoint answers 503 while set.
    down: std::sync::atomic::AtomicBool,
}

pub struct OAuthMockHandle {
    addr: SocketAddr,
    shared: Arc<Shared>,
    stop: Option<oneshot::Sender<()>>,
}

impl Drop for OAuthMockHandle {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

impl OAuthMockHandle {
    /// `http://ADDR`, without a trailing slash.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn stats(&self) -> OAuthMockStats {
        self.shared.state.lock().unwrap().stats.clone()
    }

    /// Grants a fresh pair, as the authorization code flow would: (access, refresh).
    pub fn grant(&self) -> (String, String) {
        let mut s = self.shared.state.lock().unwrap();
        let lifetime = self.shared.config.token_lifetime;
        issue(&mut s, lifetime)
    }

    /// An access token that has already expired, with a working refresh token.
    pub fn expired_grant(&self) -> (String, String) {
        let mut s = self.shared.state.lock().unwrap();
        issue(&mut s, Duration::ZERO)
    }

    /// The token endpoint answers 503 from now on (or again normally).
    pub fn set_token_endpoint_down(&self, down: bool) {
        self.shared.down.store(down, Ordering::SeqCst);
    }

    /// Every refresh token stops working (the customer revoked the app).
    pub fn revoke(&self) {
        self.shared.state.lock().unwrap().revoked = true;
    }

    /// Every token ever issued, for checking that none leaked.
    pub fn every_token(&self) -> Vec<String> {
        let s = self.shared.state.lock().unwrap();
        s.access.keys().chain(s.refresh.keys()).cloned().collect()
    }
}

fn issue(s: &mut State_, lifetime: Duration) -> (String, String) {
    s.next += 1;
    let n = s.next;
    let access = format!("at-{n:06}-{:016x}", rand_u64(n));
    let refresh = format!("rt-{n:06}-{:016x}", rand_u64(n ^ 0x5bd1e995));
    s.access.insert(access.clone(), Instant::now() + lifetime);
    s.refresh.insert(refresh.clone(), None);
    (access, refresh)
}

fn rand_u64(seed: u64) -> u64 {
    // Unguessable enough for a mock, and distinct per token.
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    let mut x = seed ^ t ^ 0x9e37_79b9_7f4a_7c15;
    x ^= x >> 33;
    x = x.wrapping_mul(0xff51_afd7_ed55_8ccd);
    x ^= x >> 33;
    x
}

/// Serves the provider on `listener` until the handle is dropped.
pub async fn spawn(
    listener: TcpListener,
    config: OAuthMockConfig,
) -> std::io::Result<OAuthMockHandle> {
    let addr = listener.local_addr()?;
    let shared = Arc::new(Shared {
        config,
        state: Mutex::default(),
        calls: AtomicU64::new(0),
        down: std::sync::atomic::AtomicBool::new(false),
    });
    let app = Router::new()
        .route("/oauth/token", post(token))
        .route("/_mock/oauth/grant", post(grant))
        .route("/_mock/oauth/revoke", post(revoke))
        .route("/_mock/oauth/stats", axum::routing::get(stats))
        .fallback(api)
        .with_state(shared.clone());
    let (stop, stopped) = oneshot::channel::<()>();
    tokio::spawn(async move {
        let serve = axum::serve(listener, app).with_graceful_shutdown(async move {
            let _ = stopped.await;
        });
        if let Err(e) = serve.await {
            eprintln!("mock OAuth provider stopped: {e}");
        }
    });
    Ok(OAuthMockHandle {
        addr,
        shared,
        stop: Some(stop),
    })
}

fn json(status: StatusCode, value: serde_json::Value) -> Response {
    Response::builder()
        .status(status)
        .header(CONTENT_TYPE, "application/json")
        .header("cache-control", "no-store")
        .body(Body::from(value.to_string()))
        .expect("a valid response")
}

async fn token(State(shared): State<Arc<Shared>>, request: Request) -> Response {
    let (issued, answer) = token_answer(&shared, request).await;
    if issued && !shared.config.answer_delay.is_zero() {
        tokio::time::sleep(shared.config.answer_delay).await;
    }
    answer
}

/// The token endpoint's answer, and whether it issued tokens.
async fn token_answer(shared: &Shared, request: Request) -> (bool, Response) {
    let (parts, body) = request.into_parts();
    let bytes = match body.collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => {
            return (
                false,
                json(
                    StatusCode::BAD_REQUEST,
                    serde_json::json!({"error": "invalid_request"}),
                ),
            )
        }
    };
    if !shared.config.token_latency.is_zero() {
        tokio::time::sleep(shared.config.token_latency).await;
    }
    if shared.down.load(Ordering::SeqCst) {
        shared.state.lock().unwrap().stats.unavailable += 1;
        return (
            false,
            json(
                StatusCode::SERVICE_UNAVAILABLE,
                serde_json::json!({"error": "temporarily_unavailable"}),
            ),
        );
    }
    let form: HashMap<String, String> = url::form_urlencoded::parse(&bytes).into_owned().collect();
    let basic = parts
        .headers
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Basic "))
        .and_then(|b| base64::engine::general_purpose::STANDARD.decode(b).ok())
        .and_then(|b| String::from_utf8(b).ok());
    // RFC 6749 §2.3.1: Basic carries each form-encoded; else both are in the body.
    let decode = |s: &str| {
        url::form_urlencoded::parse(format!("v={s}").as_bytes())
            .next()
            .map(|(_, v)| v.into_owned())
            .unwrap_or_default()
    };
    let (id, secret) = match basic.as_deref().and_then(|b| b.split_once(':')) {
        Some((i, s)) => (decode(i), decode(s)),
        None => (
            form.get("client_id").cloned().unwrap_or_default(),
            form.get("client_secret").cloned().unwrap_or_default(),
        ),
    };
    let config = &shared.config;
    let mut s = shared.state.lock().unwrap();
    if id != config.client_id || secret != config.client_secret {
        s.stats.bad_clients += 1;
        return (
            false,
            json(
                StatusCode::UNAUTHORIZED,
                serde_json::json!({"error": "invalid_client"}),
            ),
        );
    }
    let now = Instant::now();
    match form.get("grant_type").map(String::as_str) {
        Some("refresh_token") => {
            let given = form.get("refresh_token").cloned().unwrap_or_default();
            let works = !s.revoked
                && s.refresh
                    .get(&given)
                    .is_some_and(|until| until.is_none_or(|u| now < u));
            if !works {
                s.stats.invalid_grants += 1;
                return (
                    false,
                    json(
                        StatusCode::BAD_REQUEST,
                        serde_json::json!({"error": "invalid_grant", "error_description": "the refresh token is invalid, expired or revoked"}),
                    ),
                );
            }
            s.stats.refreshes += 1;
            let lifetime = config.token_lifetime;
            let (access, refresh) = issue(&mut s, lifetime);
            let refresh = if config.rotate {
                let grace = config.reuse_grace;
                // The used token works a little longer, then never again.
                if let Some(until) = s.refresh.get_mut(&given) {
                    *until = Some(until.unwrap_or(now + grace).min(now + grace));
                }
                Some(refresh)
            } else {
                s.refresh.remove(&refresh);
                None
            };
            let mut answer = serde_json::json!({
                "access_token": access,
                "token_type": "Bearer",
                "expires_in": lifetime.as_secs(),
                "scope": "read write",
            });
            if let Some(r) = refresh {
                answer["refresh_token"] = r.into();
            }
            (true, json(StatusCode::OK, answer))
        }
        Some("client_credentials") => {
            s.stats.client_credentials += 1;
            let lifetime = config.token_lifetime;
            let (access, refresh) = issue(&mut s, lifetime);
            s.refresh.remove(&refresh);
            (
                true,
                json(
                    StatusCode::OK,
                    serde_json::json!({"access_token": access, "token_type": "Bearer", "expires_in": lifetime.as_secs()}),
                ),
            )
        }
        _ => (
            false,
            json(
                StatusCode::BAD_REQUEST,
                serde_json::json!({"error": "unsupported_grant_type"}),
            ),
        ),
    }
}

/// A fresh grant, as the authorization code flow would give one.
async fn grant(State(shared): State<Arc<Shared>>) -> Response {
    let lifetime = shared.config.token_lifetime;
    let (access, refresh) = issue(&mut shared.state.lock().unwrap(), lifetime);
    json(
        StatusCode::OK,
        serde_json::json!({"access_token": access, "refresh_token": refresh, "token_type": "Bearer", "expires_in": lifetime.as_secs()}),
    )
}

async fn revoke(State(shared): State<Arc<Shared>>) -> Response {
    shared.state.lock().unwrap().revoked = true;
    json(StatusCode::OK, serde_json::json!({"ok": true}))
}

async fn stats(State(shared): State<Arc<Shared>>) -> Response {
    let stats = shared.state.lock().unwrap().stats.clone();
    json(
        StatusCode::OK,
        serde_json::to_value(stats).unwrap_or_default(),
    )
}

async fn api(State(shared): State<Arc<Shared>>, request: Request) -> Response {
    shared.calls.fetch_add(1, Ordering::Relaxed);
    let token = request
        .headers()
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or_default()
        .to_string();
    let mut s = shared.state.lock().unwrap();
    let current = s
        .access
        .get(&token)
        .is_some_and(|exp| Instant::now() < *exp);
    if current {
        s.stats.api_ok += 1;
        json(
            StatusCode::OK,
            serde_json::json!({"ok": true, "path": request.uri().path()}),
        )
    } else {
        s.stats.api_unauthorized += 1;
        let mut r = json(
            StatusCode::UNAUTHORIZED,
            serde_json::json!({"error": "invalid_token", "error_description": "The access token expired"}),
        );
        r.headers_mut().insert(
            WWW_AUTHENTICATE,
            http::HeaderValue::from_static(
                "Bearer error=\"invalid_token\", error_description=\"The access token expired\"",
            ),
        );
        r
    }
}
