//! `ANY /proxy/{upstream}/{path…}`: a call's journey through Headroom.
//!
//! Read the Headroom headers → pick the budget → buffer the body (so it can be retried) →
//! wait for leave from the governor → call the upstream → read its rate-limit signals back
//! into the budget → retry a throttled (or configured 5xx) answer within the max wait →
//! answer with the upstream's response plus `Headroom-Attempts` and `Headroom-Wait-Ms`.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::body::Body;
use axum::extract::{Request, State};
use axum::response::{IntoResponse, Response};
use bytes::{Bytes, BytesMut};
use headroom_core::backoff::Jitter;
use headroom_core::budget::Outcome;
use headroom_core::duration::{format_duration, parse_duration};
use headroom_core::verdict::{verdict, Attempted, RetryReason, RetryRule, Verdict};
use headroom_core::{interpret, Lane, RejectReason, Rejection};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, StatusCode};
use http_body_util::BodyExt;
use percent_encoding::percent_decode;
use sha2::{Digest, Sha256};

use crate::auth::authenticate;
use crate::cfg::{BudgetScope, Upstream};
use crate::error::ApiError;
use crate::governor::BudgetKey;
use crate::metrics::{LaneLabels, RequestLabels, ResponseLabels, RetryLabels};
use crate::server::AppState;

/// Request bodies up to this size are buffered so that they can be retried; larger ones are
/// streamed and sent at most once.
pub const MAX_BUFFERED_BODY: usize = 1 << 20;
/// Response bodies of throttled or failed answers are read up to this size, for the signals
/// they hold and so that they can be returned after a retry.
const MAX_INSPECTED_BODY: usize = 256 << 10;
/// The longest `Headroom-Max-Wait` accepted.
const MAX_WAIT_CEILING: Duration = Duration::from_secs(3600);
const MAX_COST: f64 = 1e6;

/// Headers that describe one connection, not the message (RFC 9110 §7.6.1).
const HOP_BY_HOP: [&str; 9] = [
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

/// What the response reports of the journey, whatever its outcome.
#[derive(Default)]
struct Journey {
    attempts: u32,
    waited: Duration,
    /// Upstream, tenant and endpoint of a call that was retried (only then: the common path
    /// allocates nothing for it), for the retry's final outcome.
    retried: Option<Box<(String, String, String)>>,
}

pub async fn handle(State(app): State<AppState>, request: Request) -> Response {
    let mut journey = Journey::default();
    let lane_hint = lane_label(request.headers());
    let upstream_hint = upstream_name(request.uri().path())
        .unwrap_or("")
        .to_string();
    // Exported to OTLP when asked for; otherwise disabled at the call site (no cost).
    let span = tracing::debug_span!(target: "headroom::trace", "proxy", upstream = %upstream_hint, method = %request.method());
    let result = tracing::Instrument::instrument(forward(&app, request, &mut journey), span).await;
    let outcome = match &result {
        Ok(_) => "forwarded",
        Err(ApiError::Refused { .. }) => "refused",
        Err(ApiError::BadGateway { .. }) => "error",
        Err(_) => "invalid",
    };
    if app.config.upstream(&upstream_hint).is_some() {
        app.metrics
            .requests
            .get_or_create(&RequestLabels {
                upstream: upstream_hint,
                lane: lane_hint,
                outcome,
            })
            .inc();
    }
    if let Some(trail) = journey.retried.take() {
        let (upstream, tenant, endpoint) = *trail;
        let status = match &result {
            Ok(r) => Some(r.status().as_u16()),
            Err(ApiError::Refused { status, .. }) => Some(status.as_u16()),
            Err(_) => None,
        };
        let succeeded = matches!(&result, Ok(r) if r.status().is_success());
        app.observe.retry_outcome(
            &upstream,
            &tenant,
            &endpoint,
            journey.attempts,
            status,
            succeeded,
        );
    }
    let mut response = result.unwrap_or_else(IntoResponse::into_response);
    let headers = response.headers_mut();
    headers.insert("headroom-attempts", HeaderValue::from(journey.attempts));
    headers.insert(
        "headroom-wait-ms",
        HeaderValue::from(journey.waited.as_millis().min(u64::MAX as u128) as u64),
    );
    response
}

fn lane_label(headers: &HeaderMap) -> &'static str {
    match headers.get("headroom-lane").and_then(|v| v.to_str().ok()) {
        Some(v) if v.eq_ignore_ascii_case("bulk") => "bulk",
        _ => "realtime",
    }
}

/// `crm` of `/proxy/crm/v3/contacts`.
fn upstream_name(path: &str) -> Option<&str> {
    let rest = path.strip_prefix("/proxy/")?;
    Some(rest.split('/').next().unwrap_or(rest))
}

/// The Headroom headers of a proxied request, checked.
#[derive(Debug)]
struct Ask {
    tenant: Option<String>,
    lane: Lane,
    max_wait: Option<Duration>,
    cost: f64,
}

fn header_str<'a>(headers: &'a HeaderMap, name: &str) -> Result<Option<&'a str>, ApiError> {
    match headers.get(name) {
        None => Ok(None),
        Some(v) => v.to_str().map(|s| Some(s.trim())).map_err(|_| {
            ApiError::bad_request(format!("header {name}: the value is not visible ASCII"))
        }),
    }
}

fn read_ask(headers: &HeaderMap) -> Result<Ask, ApiError> {
    let tenant = match header_str(headers, "headroom-tenant")? {
        None => None,
        Some(t) => {
            let ok = !t.is_empty()
                && t.len() <= 128
                && t.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_.:@".contains(c));
            if !ok {
                return Err(ApiError::bad_request(format!(
                    "header Headroom-Tenant: \"{t}\" must be 1 to 128 letters, digits, '-', '_', '.', ':' or '@'"
                )));
            }
            Some(t.to_string())
        }
    };
    let lane = match header_str(headers, "headroom-lane")? {
        None => Lane::Realtime,
        Some(l) => l
            .parse()
            .map_err(|e| ApiError::bad_request(format!("header Headroom-Lane: {e}")))?,
    };
    let max_wait = match header_str(headers, "headroom-max-wait")? {
        None => None,
        Some(w) => {
            let d = parse_duration(w)
                .map_err(|e| ApiError::bad_request(format!("header Headroom-Max-Wait: {e}")))?;
            if d > MAX_WAIT_CEILING {
                return Err(ApiError::bad_request(format!(
                    "header Headroom-Max-Wait: {w} is longer than the {} a request may wait; \
                     use a job for longer waits",
                    format_duration(MAX_WAIT_CEILING)
                )));
            }
            Some(d)
        }
    };
    let cost = match header_str(headers, "headroom-cost")? {
        None => 1.0,
        Some(c) => match c.parse::<f64>() {
            Ok(v) if v.is_finite() && v > 0.0 && v <= MAX_COST => v,
            _ => {
                return Err(ApiError::bad_request(format!(
                    "header Headroom-Cost: \"{c}\" must be a positive number of points up to {MAX_COST}"
                )))
            }
        },
    };
    Ok(Ask {
        tenant,
        lane,
        max_wait,
        cost,
    })
}

/// The upstream URI for `rest` (the path after `/proxy/{upstream}`, still percent-encoded)
/// under the upstream's base URL. Refuses any segment that could climb out of the base path.
pub(crate) fn target_uri(
    base: &url::Url,
    rest: &str,
    query: Option<&str>,
) -> Result<http::Uri, ApiError> {
    for segment in rest.split('/') {
        if !segment_is_safe(segment) {
            return Err(ApiError::bad_request(format!(
                "path segment \"{segment}\" is not allowed: '.', '..' (also as '..;' or encoded \
                 more than once), encoded slashes, backslashes and control characters could \
                 leave the upstream's base path"
            )));
        }
    }
    let base_path = base.path().trim_end_matches('/');
    let mut path = format!("{base_path}{rest}");
    if path.is_empty() {
        path.push('/');
    }
    if let Some(q) = query {
        path.push('?');
        path.push_str(q);
    }
    let authority = match base.port() {
        Some(port) => format!("{}:{port}", base.host_str().unwrap_or_default()),
        None => base.host_str().unwrap_or_default().to_string(),
    };
    http::Uri::builder()
        .scheme(base.scheme())
        .authority(authority)
        .path_and_query(path)
        .build()
        .map_err(|e| ApiError::bad_request(format!("the proxied path or query is not valid: {e}")))
}

/// Whether a raw path segment stays a plain name for every server behind the upstream: not
/// `.` or `..` once decoded (any number of times: `%252e` is `%2e` to a server that decodes
/// again), nor once a `;` path parameter is cut off (Tomcat reads `..;x` as `..`), and no
/// slash, backslash or control character at any decoding depth.
fn segment_is_safe(segment: &str) -> bool {
    let mut current: std::borrow::Cow<'_, [u8]> = std::borrow::Cow::Borrowed(segment.as_bytes());
    // Each round decodes one more level; a segment still changing after four is refused.
    for _ in 0..4 {
        let name = current.split(|b| *b == b';').next().unwrap_or_default();
        if name == b"." || name == b".." {
            return false;
        }
        if current
            .iter()
            .any(|b| *b == b'/' || *b == b'\\' || b.is_ascii_control())
        {
            return false;
        }
        if !current.contains(&b'%') {
            return true; // the common case: nothing left to decode, nothing allocated
        }
        let decoded: Vec<u8> = percent_decode(&current).collect();
        if *decoded == *current {
            return true;
        }
        current = std::borrow::Cow::Owned(decoded);
    }
    false
}

/// The budget a call spends: shared, the tenant's, or one per credential (hashed, never the
/// credential itself).
pub(crate) fn budget_key(
    upstream: &Upstream,
    tenant: Option<&str>,
    headers: &HeaderMap,
) -> Arc<str> {
    if upstream.budget == BudgetScope::Shared {
        return Arc::from("shared");
    }
    if let Some(t) = tenant {
        return Arc::from(format!("tenant:{t}"));
    }
    match headers.get(&upstream.credential.header) {
        Some(credential) => {
            let digest = Sha256::digest(credential.as_bytes());
            let hex: String = digest[..12].iter().map(|b| format!("{b:02x}")).collect();
            Arc::from(format!("credential:{hex}"))
        }
        None => Arc::from("anonymous"),
    }
}

/// A request body: in memory (replayable) or a stream (sent once).
enum OutBody {
    Buffered(Bytes),
    Streamed(Option<Body>),
}

impl OutBody {
    fn take(&mut self) -> Option<Body> {
        match self {
            OutBody::Buffered(bytes) => Some(Body::from(bytes.clone())),
            OutBody::Streamed(body) => body.take(),
        }
    }

    fn replayable(&self) -> bool {
        matches!(self, OutBody::Buffered(_))
    }
}

/// Reads a body up to `limit` bytes: the whole of it, or (when larger) a body that yields
/// what was read followed by the rest.
async fn read_up_to<B>(mut body: B, limit: usize) -> Result<Result<Bytes, Body>, B::Error>
where
    B: http_body::Body<Data = Bytes> + Send + Unpin + 'static,
    B::Error: Into<axum::BoxError>,
{
    let mut buffer = BytesMut::new();
    while let Some(frame) = body.frame().await {
        let Ok(data) = frame?.into_data() else {
            continue; // trailers are not forwarded
        };
        buffer.extend_from_slice(&data);
        if buffer.len() > limit {
            let head = futures_util::stream::once(std::future::ready(Ok::<_, axum::BoxError>(
                http_body::Frame::data(buffer.freeze()),
            )));
            let rest = http_body_util::BodyStream::new(body.map_err(Into::into));
            use futures_util::StreamExt;
            let stream = head.chain(rest);
            return Ok(Err(Body::new(http_body_util::StreamBody::new(stream))));
        }
    }
    Ok(Ok(buffer.freeze()))
}

/// Reads at most `limit` bytes of a body: the whole of it, or its first `limit` bytes and
/// `true` when it is longer (the rest is not read).
async fn read_capped<B>(mut body: B, limit: usize) -> Result<(Bytes, bool), B::Error>
where
    B: http_body::Body<Data = Bytes> + Unpin,
{
    let mut buffer = BytesMut::new();
    while let Some(frame) = body.frame().await {
        let Ok(data) = frame?.into_data() else {
            continue;
        };
        if buffer.len() + data.len() > limit {
            buffer.extend_from_slice(&data[..limit - buffer.len()]);
            return Ok((buffer.freeze(), true));
        }
        buffer.extend_from_slice(&data);
    }
    Ok((buffer.freeze(), false))
}

fn is_idempotent(method: &Method) -> bool {
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::PUT | Method::DELETE | Method::TRACE
    )
}

/// The headers to send upstream: the client's minus hop-by-hop, `Host` and `Headroom-*`.
fn forwarded_headers(incoming: &HeaderMap, buffered: bool) -> HeaderMap {
    let mut listed: Vec<String> = Vec::new();
    for value in incoming.get_all(header::CONNECTION) {
        if let Ok(v) = value.to_str() {
            listed.extend(v.split(',').map(|s| s.trim().to_ascii_lowercase()));
        }
    }
    let mut out = HeaderMap::with_capacity(incoming.len());
    for (name, value) in incoming {
        let n = name.as_str();
        let drop = HOP_BY_HOP.contains(&n)
            || n == "host"
            || n.starts_with("headroom-")
            || (buffered && n == "content-length")
            || listed.iter().any(|l| l == n);
        if !drop {
            out.append(name.clone(), value.clone());
        }
    }
    out
}

fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let listed: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(',').map(|s| s.trim().to_ascii_lowercase()))
        .filter_map(|s| HeaderName::from_bytes(s.as_bytes()).ok())
        .collect();
    for name in HOP_BY_HOP.iter() {
        headers.remove(*name);
    }
    for name in listed {
        headers.remove(name);
    }
}

fn refused(upstream: &Upstream, key: &str, max_wait: Duration, rejection: Rejection) -> ApiError {
    let retry = format!("{:.1}s", rejection.retry_after.as_secs_f64());
    match rejection.reason {
        RejectReason::BreakerOpen => ApiError::Refused {
            status: StatusCode::SERVICE_UNAVAILABLE,
            detail: format!(
                "the circuit breaker of upstream \"{}\" (budget {key}) is open after repeated \
                 upstream failures; retry after {retry}",
                upstream.name
            ),
            retry_after: rejection.retry_after,
        },
        RejectReason::Unavailable => ApiError::Refused {
            status: StatusCode::SERVICE_UNAVAILABLE,
            detail: format!(
                "the shared budget state of upstream \"{}\" (budget {key}) cannot be reached \
                 (the governor's Redis is down; see the server's log); retry after {retry}",
                upstream.name
            ),
            retry_after: rejection.retry_after,
        },
        RejectReason::WaitTooLong | RejectReason::QueueFull => ApiError::Refused {
            status: StatusCode::TOO_MANY_REQUESTS,
            detail: format!(
                "upstream \"{}\" (budget {key}) cannot take this call within its max wait of {} \
                 (raise it with Headroom-Max-Wait, or send it as a job); retry after {retry}",
                upstream.name,
                format_duration(max_wait)
            ),
            retry_after: rejection.retry_after,
        },
    }
}

fn now_unix() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

async fn forward(
    app: &AppState,
    request: Request,
    journey: &mut Journey,
) -> Result<Response, ApiError> {
    let (parts, body) = request.into_parts();
    let path = parts.uri.path();
    let name = upstream_name(path).unwrap_or_default();
    // Who is asking comes first: configured upstream names are not told to strangers.
    let principal = authenticate(app, &parts.headers, true).await?;
    let upstream = app.config.upstream(name).ok_or_else(|| {
        let known: Vec<&str> = app
            .config
            .upstreams
            .iter()
            .map(|u| u.name.as_str())
            .collect();
        ApiError::not_found(format!(
            "unknown upstream \"{name}\"; configured upstreams: {}",
            if known.is_empty() {
                "none".to_string()
            } else {
                known.join(", ")
            }
        ))
    })?;
    let ask = read_ask(&parts.headers)?;
    let tenant = principal.tenant_for(ask.tenant.as_deref())?;
    let rest = &path["/proxy/".len() + name.len()..];
    let uri = target_uri(&upstream.base_url, rest, parts.uri.query())?;

    let mut out_body = match parts.headers.get(header::CONTENT_LENGTH) {
        Some(len)
            if len
                .to_str()
                .ok()
                .and_then(|l| l.parse::<usize>().ok())
                .is_some_and(|l| l > MAX_BUFFERED_BODY) =>
        {
            OutBody::Streamed(Some(body))
        }
        _ => match read_up_to(body, MAX_BUFFERED_BODY).await {
            Ok(Ok(bytes)) => OutBody::Buffered(bytes),
            Ok(Err(stream)) => OutBody::Streamed(Some(stream)),
            Err(e) => {
                return Err(ApiError::bad_request(format!(
                    "cannot read the request body: {e}"
                )))
            }
        },
    };
    let mut headers = forwarded_headers(&parts.headers, out_body.replayable());
    inject_credential(app, upstream, tenant.as_deref(), &mut headers)
        .await
        .map_err(anyhow::Error::msg)?;
    let key: BudgetKey = (
        upstream.index,
        budget_key(upstream, tenant.as_deref(), &headers),
    );
    let max_wait = ask.max_wait.unwrap_or(upstream.retry.max_wait);
    let started = tokio::time::Instant::now();
    let deadline = started + max_wait;
    let lane_name = match ask.lane {
        Lane::Realtime => "realtime",
        Lane::Bulk => "bulk",
    };
    let tenant_label = tenant.clone().unwrap_or_else(|| key.1.to_string());
    let mut jitter = Jitter::new(rand::random());
    // The last answer worth returning if a retry cannot happen in time.
    let mut last: Option<Response> = None;

    let response = loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let lease = match app
            .governor
            .acquire(
                key.clone(),
                &upstream.budget_config,
                ask.lane,
                ask.cost,
                left,
                crate::governor::party_of(tenant.as_deref()),
            )
            .await
        {
            Ok(lease) => lease,
            Err(rejection) => {
                if let Some(previous) = last.take() {
                    break previous;
                }
                if rejection.reason == RejectReason::BreakerOpen {
                    tracing::warn!(upstream = %upstream.name, budget = %key.1, "breaker open: call refused");
                }
                return Err(refused(upstream, &key.1, max_wait, rejection));
            }
        };
        journey.waited += lease.waited;
        journey.attempts += 1;
        let Some(body) = out_body.take() else {
            // A streamed body went with the first attempt.
            break last
                .take()
                .expect("a streamed body's first attempt left a response");
        };
        let call = Call {
            upstream,
            tenant: &tenant_label,
            method: &parts.method,
            uri: &uri,
            headers: &headers,
            attempt: journey.attempts,
            queue: None,
            // Reading a throttled answer that could be retried must not outlast the wait.
            wait_until: (out_body.replayable() && journey.attempts < upstream.retry.max_attempts)
                .then_some(deadline),
        };
        let (mut resp_parts, resp_body, inspected, signals, budget_pause) =
            match call_once(app, &call, lease, body, MAX_INSPECTED_BODY, false).await {
                Answer::Answered {
                    parts,
                    body,
                    inspected,
                    signals,
                    budget_pause,
                    ..
                } => (parts, body, inspected, signals, budget_pause),
                Answer::Unreachable(reason) => {
                    let can_retry = is_idempotent(&parts.method)
                        && out_body.replayable()
                        && journey.attempts < upstream.retry.max_attempts;
                    let delay = upstream
                        .retry
                        .backoff
                        .delay(journey.attempts - 1, &mut jitter);
                    if can_retry && tokio::time::Instant::now() + delay < deadline {
                        app.observe
                            .retry(&call, false, delay, "upstream unreachable");
                        journey.retried.get_or_insert_with(|| retry_trail(&call));
                        app.metrics
                            .retries
                            .get_or_create(&RetryLabels {
                                upstream: upstream.name.clone(),
                                reason: "transport",
                            })
                            .inc();
                        tokio::time::sleep(delay).await;
                        journey.waited += delay;
                        continue;
                    }
                    if let Some(previous) = last.take() {
                        break previous; // an answer already in hand beats none
                    }
                    return Err(ApiError::BadGateway {
                        detail: format!("cannot reach upstream \"{}\": {reason}", upstream.name),
                    });
                }
            };
        let status = resp_parts.status.as_u16();
        strip_hop_by_hop(&mut resp_parts.headers);
        // Answer in the client's HTTP version, not the upstream's.
        resp_parts.version = parts.version;
        let response = Response::from_parts(resp_parts, resp_body);
        // What the answer means is the core's verdict; whether the proxy can act on it is the
        // proxy's: an answer it read, a body it can send again, attempts left (a throttled one
        // counts here too: the caller is waiting), and time left in the max wait.
        let rule = RetryRule {
            max_attempts: upstream.retry.max_attempts,
            on_status: &upstream.retry.on_status,
            max_pause: upstream.budget_config.max_pause,
        };
        let backoff = upstream
            .retry
            .backoff
            .delay(journey.attempts - 1, &mut jitter);
        let outcome = Attempted::Answered {
            status,
            signals: &signals,
        };
        let (after, throttled) =
            match verdict(outcome, journey.attempts, &rule, budget_pause, backoff) {
                Verdict::Retry { after, why, .. } => (after, why == RetryReason::Throttled),
                Verdict::Done | Verdict::GiveUp(_) => break response,
            };
        let can_retry = inspected.is_some()
            && out_body.replayable()
            && journey.attempts < upstream.retry.max_attempts
            && tokio::time::Instant::now()
                .checked_add(after)
                .is_some_and(|at| at < deadline);
        if !can_retry {
            break response;
        }
        // A throttled call waits for the budget's pause in the governor; a failed one backs
        // off here first.
        let delay = if throttled { Duration::ZERO } else { after };
        let why = if throttled {
            "throttled"
        } else {
            "retryable status"
        };
        let wait = after;
        app.observe.retry(&call, throttled, wait, why);
        journey.retried.get_or_insert_with(|| retry_trail(&call));
        app.metrics
            .retries
            .get_or_create(&RetryLabels {
                upstream: upstream.name.clone(),
                reason: if throttled { "throttled" } else { "status" },
            })
            .inc();
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
            journey.waited += delay;
        }
        last = Some(response);
    };
    app.metrics
        .wait_seconds
        .get_or_create(&LaneLabels {
            upstream: upstream.name.clone(),
            lane: lane_name,
        })
        .observe(journey.waited.as_secs_f64());
    Ok(response)
}

/// Upstream, tenant and endpoint of a call, kept once it is retried.
fn retry_trail(call: &Call<'_>) -> Box<(String, String, String)> {
    Box::new((
        call.upstream.name.clone(),
        call.tenant.to_string(),
        format!("{} {}", call.method, call.uri.path()),
    ))
}

/// Puts the tenant's stored credential for the upstream (if any) in the upstream's
/// credential header, replacing whatever the caller sent there.
pub(crate) async fn inject_credential(
    app: &AppState,
    upstream: &Upstream,
    tenant: Option<&str>,
    headers: &mut HeaderMap,
) -> Result<(), String> {
    let Some(tenant) = tenant else {
        return Ok(());
    };
    let credential = match app.credentials.get(tenant, &upstream.name).await {
        Ok(Some(c)) => c,
        Ok(None) => return Ok(()),
        Err(e) => return Err(format!("cannot read the tenant's credential: {e:#}")),
    };
    let value = if upstream.credential.scheme.is_empty() {
        credential.to_string()
    } else {
        format!("{} {credential}", upstream.credential.scheme)
    };
    let mut value = HeaderValue::from_str(&value)
        .map_err(|_| "the stored credential is not a valid header value".to_string())?;
    value.set_sensitive(true);
    headers.insert(upstream.credential.header.clone(), value);
    Ok(())
}

/// One call to an upstream, as the proxy and the job dispatcher both make it.
pub(crate) struct Call<'a> {
    pub upstream: &'a Upstream,
    /// The tenant (or budget key) for metrics and logs.
    pub tenant: &'a str,
    pub method: &'a Method,
    pub uri: &'a http::Uri,
    pub headers: &'a HeaderMap,
    pub attempt: u32,
    /// The job's queue, for events.
    pub queue: Option<&'a str>,
    /// The caller's deadline when a retry may follow (the proxy's max wait): reading a
    /// throttled or failed answer's body gives up there too.
    pub wait_until: Option<tokio::time::Instant>,
}

/// What one call gave.
// Made and moved once per call: boxing the answer would cost an allocation on the hot path.
#[allow(clippy::large_enum_variant)]
pub(crate) enum Answer {
    Answered {
        parts: http::response::Parts,
        body: Body,
        /// The body, when it was read (throttled and failed answers, or `read_all`), up to
        /// the limit.
        inspected: Option<Bytes>,
        /// With `read_all`: the body was longer than the limit and `inspected` is its start.
        truncated: bool,
        signals: headroom_core::Signals,
        /// How long the budget is paused after this answer (zero unless it was throttled).
        budget_pause: Duration,
    },
    /// No answer (connection refused or reset, timeout); the reason says which.
    Unreachable(String),
}

/// Makes the call under `lease`, reads the answer's rate-limit signals back into the budget
/// (returning the lease), and records metrics and a log line for throttled answers.
pub(crate) async fn call_once(
    app: &AppState,
    call: &Call<'_>,
    lease: crate::governor::Lease,
    body: Body,
    inspect_limit: usize,
    read_all: bool,
) -> Answer {
    let upstream = call.upstream;
    let mut outgoing = http::Request::new(body);
    *outgoing.method_mut() = call.method.clone();
    *outgoing.uri_mut() = call.uri.clone();
    *outgoing.headers_mut() = call.headers.clone();
    // The upstream's `timeout` covers the whole answer, head and the body Headroom reads: a
    // body that stalls is a transport error and gives the lease back.
    let give_up = tokio::time::Instant::now() + upstream.timeout;
    let sent = tokio::time::timeout_at(give_up, app.client.request(outgoing)).await;
    let upstream_response = match sent {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => {
            let reason = match std::error::Error::source(&e) {
                Some(source) => format!("{e}: {source}"),
                None => e.to_string(),
            };
            return unreachable_upstream(app, call, lease, reason);
        }
        Err(_) => {
            let reason = format!("no answer within {}", format_duration(upstream.timeout));
            return unreachable_upstream(app, call, lease, reason);
        }
    };
    let (parts, incoming) = upstream_response.into_parts();
    let status = parts.status.as_u16();
    let inspect = read_all
        || matches!(status, 403 | 420 | 429 | 503 | 529)
        || upstream.retry.on_status.contains(&status);
    // The caller's deadline only while a retry could still happen in it; past it, the
    // answer goes back as it is and its body may take the upstream's timeout.
    let read_until = match call.wait_until {
        Some(w) if w > tokio::time::Instant::now() => w.min(give_up),
        _ => give_up,
    };
    let stalled = || {
        if read_until < give_up {
            format!("the answer's body ({status}) did not arrive within the call's max wait")
        } else {
            format!(
                "the answer's body ({status}) did not arrive within {}",
                format_duration(upstream.timeout)
            )
        }
    };
    let (inspected, truncated, body) = if read_all {
        match tokio::time::timeout_at(read_until, read_capped(incoming, inspect_limit)).await {
            Ok(Ok((bytes, truncated))) => (Some(bytes), truncated, Body::empty()),
            Ok(Err(e)) => {
                let reason = format!("the answer broke off: {e}");
                return unreachable_upstream(app, call, lease, reason);
            }
            Err(_) => return unreachable_upstream(app, call, lease, stalled()),
        }
    } else if inspect {
        match tokio::time::timeout_at(read_until, read_up_to(incoming, inspect_limit)).await {
            Ok(Ok(Ok(bytes))) => (Some(bytes.clone()), false, Body::from(bytes)),
            Ok(Ok(Err(stream))) => (None, false, stream),
            Ok(Err(e)) => {
                let reason = format!("the answer broke off: {e}");
                return unreachable_upstream(app, call, lease, reason);
            }
            Err(_) => return unreachable_upstream(app, call, lease, stalled()),
        }
    } else {
        (None, false, Body::new(incoming))
    };
    let signals = interpret(
        status,
        parts
            .headers
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_bytes())),
        inspected.as_deref().unwrap_or_default(),
        now_unix(),
    );
    let reaction = lease.finish(Outcome::Response {
        status,
        signals: &signals,
    });
    record_breaker(app, upstream, call.tenant, reaction);
    app.metrics
        .upstream_responses
        .get_or_create(&ResponseLabels {
            upstream: upstream.name.clone(),
            status,
        })
        .inc();
    if signals.throttled {
        app.metrics
            .throttled
            .get_or_create(&app.metrics.tenant_labels(&upstream.name, call.tenant))
            .inc();
        // The event logs it (with the rate-limit headers) and stores it.
        app.observe.throttled(
            call,
            status,
            &parts.headers,
            signals.retry_after,
            reaction.paused_for,
        );
    }
    Answer::Answered {
        parts,
        body,
        inspected,
        truncated,
        signals,
        budget_pause: reaction.paused_for.unwrap_or_default(),
    }
}

fn unreachable_upstream(
    app: &AppState,
    call: &Call<'_>,
    lease: crate::governor::Lease,
    reason: String,
) -> Answer {
    let reaction = lease.finish(Outcome::TransportError);
    record_breaker(app, call.upstream, call.tenant, reaction);
    tracing::warn!(
        upstream = %call.upstream.name,
        method = %call.method,
        path = %call.uri.path(),
        attempt = call.attempt,
        error = %reason,
        "upstream unreachable"
    );
    Answer::Unreachable(reason)
}

fn record_breaker(
    app: &AppState,
    upstream: &Upstream,
    tenant: &str,
    reaction: headroom_core::budget::Reaction,
) {
    use headroom_core::breaker::BreakerState;
    if let Some(state) = reaction.breaker {
        let value = match state {
            BreakerState::Closed { .. } => 0,
            BreakerState::HalfOpen { .. } => 1,
            BreakerState::Open { .. } => 2,
        };
        app.observe.breaker(&upstream.name, tenant, &state);
        let labels = app.metrics.tenant_labels(&upstream.name, tenant);
        // A gauge shared by many tenants would show whichever changed last: none for them.
        if labels.tenant != crate::metrics::OTHER_TENANT {
            app.metrics.breaker_state.get_or_create(&labels).set(value);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base() -> url::Url {
        url::Url::parse("https://api.example.com/v2").unwrap()
    }

    #[test]
    fn paths_stay_under_the_base_path() {
        let uri = target_uri(&base(), "/crm/contacts", Some("a=1&b=%2F")).unwrap();
        assert_eq!(
            uri.to_string(),
            "https://api.example.com/v2/crm/contacts?a=1&b=%2F"
        );
        assert_eq!(
            target_uri(&base(), "", None).unwrap().to_string(),
            "https://api.example.com/v2"
        );
        for evil in [
            "/../admin",
            "/a/%2e%2e/admin",
            "/a/.%2E/b",
            "/a%2Fb",
            "/a%5cb",
            "/./x",
            "/a%00b",
            "/..;/admin",
            "/a/..;jsessionid=x/b",
            "/a/.;/b",
            "/a/%2e%2e;/b",
            "/a/%252e%252e/admin",
            "/a/%252E./admin",
            "/a/%25252e%25252e/admin",
            "/a%252fb",
            "/a%255cb",
            "/a%2500b",
        ] {
            assert!(
                target_uri(&base(), evil, None).is_err(),
                "{evil} must be refused"
            );
        }
        // Dots and semicolons inside a name, and single-encoded percent signs, stay allowed.
        for fine in [
            "/v1/file.json",
            "/a/...;b",
            "/a;v=1/b",
            "/a/%25/b",
            "/a/..x/b",
        ] {
            assert!(target_uri(&base(), fine, None).is_ok(), "{fine} must pass");
        }
        // An absolute URL in the path stays a path on the configured host.
        let uri = target_uri(&base(), "//evil.example/x", None).unwrap();
        assert_eq!(uri.host(), Some("api.example.com"));
    }

    #[test]
    fn hop_by_hop_and_headroom_headers_are_not_forwarded() {
        let mut h = HeaderMap::new();
        for (k, v) in [
            ("connection", "keep-alive, x-secret-hop"),
            ("x-secret-hop", "1"),
            ("keep-alive", "5"),
            ("proxy-authorization", "Bearer headroom"),
            ("headroom-tenant", "acme"),
            ("host", "localhost"),
            ("authorization", "Bearer upstream"),
            ("x-custom", "kept"),
        ] {
            h.append(HeaderName::from_static(k), HeaderValue::from_static(v));
        }
        let out = forwarded_headers(&h, true);
        let names: Vec<&str> = out.keys().map(|k| k.as_str()).collect();
        assert_eq!(names, vec!["authorization", "x-custom"]);
    }

    #[test]
    fn headroom_headers_are_checked() {
        let mut h = HeaderMap::new();
        h.insert("headroom-lane", HeaderValue::from_static("express"));
        assert!(read_ask(&h)
            .unwrap_err()
            .to_string()
            .contains("Headroom-Lane"));
        let mut h = HeaderMap::new();
        h.insert("headroom-cost", HeaderValue::from_static("-1"));
        assert!(read_ask(&h)
            .unwrap_err()
            .to_string()
            .contains("Headroom-Cost"));
        let mut h = HeaderMap::new();
        h.insert("headroom-max-wait", HeaderValue::from_static("forever"));
        assert!(read_ask(&h)
            .unwrap_err()
            .to_string()
            .contains("Headroom-Max-Wait"));
        let mut h = HeaderMap::new();
        h.insert("headroom-tenant", HeaderValue::from_static("acme corp"));
        assert!(read_ask(&h)
            .unwrap_err()
            .to_string()
            .contains("Headroom-Tenant"));
        let ask = read_ask(&HeaderMap::new()).unwrap();
        assert_eq!(ask.lane, Lane::Realtime);
        assert_eq!(ask.cost, 1.0);
    }
}
