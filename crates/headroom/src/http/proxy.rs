//! `ANY /proxy/{upstream}/{path…}`: a call's journey through Headroom.
//!
//! Read the Headroom headers → pick the budget → buffer the body (so it can be retried) →
//! wait for leave from the governor → call the upstream → read its rate-limit signals back
//! into the budget → retry a throttled (or configured 5xx) answer within the max wait →
//! answer with the upstream's response plus `Headroom-Attempts` and `Headroom-Wait-Ms`.

use std::time::Duration;

use axum::body::Body;
use axum::response::IntoResponse;
use bytes::Bytes;
use headroom_core::backoff::Jitter;
use headroom_core::budget::Allowance;
use headroom_core::duration::{format_duration, parse_duration};
use headroom_core::verdict::{verdict, Attempted, RetryReason, RetryRule, Verdict};
use headroom_core::{Lane, RejectReason, Rejection};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, StatusCode};
use http_body::Body as _;
use hyper::body::Incoming;

use super::auth::authenticate;
use crate::app::AppState;
use crate::cfg::Upstream;
use crate::error::ApiError;
use crate::metrics::RetryLabels;
use crate::outbound::{self, read_up_to, Answer, AnswerBody, Call, PrepareError, Read};

/// Request bodies up to this size are buffered so that they can be retried; larger ones are
/// streamed and sent at most once.
pub const MAX_BUFFERED_BODY: usize = 1 << 20;
/// Response bodies of throttled or failed answers are read up to this size, for the signals
/// they hold and so that they can be returned after a retry.
const MAX_INSPECTED_BODY: usize = 256 << 10;
/// The longest `Headroom-Max-Wait` accepted.
const MAX_WAIT_CEILING: Duration = Duration::from_secs(3600);
use crate::outbound::MAX_COST;

/// What the response reports of the journey, whatever its outcome.
#[derive(Default)]
struct Journey {
    attempts: u32,
    waited: Duration,
    /// The call's lane once its headers are read (until then, and when they are wrong,
    /// real-time: the default).
    bulk: bool,
    /// Upstream, tenant and endpoint of a call that was retried (only then: the common path
    /// allocates nothing for it), for the retry's final outcome.
    retried: Option<Box<(String, String, String)>>,
}

/// The proxy's contract, for the OpenAPI document (`handle` serves it, for any method).
#[utoipa::path(
    method(get, post, put, patch, delete, head, options),
    path = "/proxy/{upstream}/{path}",
    tag = "proxy",
    security(("proxy_bearer" = [])),
    params(
        ("upstream" = String, Path, description = "A configured upstream"),
        ("path" = String, Path, description = "The path under the upstream's base URL"),
        ("Headroom-Tenant" = Option<String>, Header, description = "Whose credential and budget the call uses (a scoped token's own, if left out)"),
        ("Headroom-Lane" = Option<String>, Header, description = "realtime (the default) or bulk"),
        ("Headroom-Cost" = Option<f64>, Header, description = "What the call spends of cost-metered limits"),
        ("Headroom-Max-Wait" = Option<String>, Header, description = "How long the call may wait for its turn (a duration)"),
    ),
    responses(
        (status = "default", description = "The upstream's answer, passed through as it came"),
        (status = 400, description = "A Headroom-* header is wrong; `detail` names it", body = super::openapi::Problem, content_type = "application/problem+json"),
        (status = 429, description = "Headroom's own refusal: the budget cannot admit the call within its wait (`Retry-After` says when)", body = super::openapi::Problem, content_type = "application/problem+json"),
        (status = 503, description = "Headroom's own refusal: the upstream's breaker is open", body = super::openapi::Problem, content_type = "application/problem+json"),
        (status = 502, description = "The upstream could not be reached", body = super::openapi::Problem, content_type = "application/problem+json"),
    )
)]
#[allow(dead_code)] // documentation only
pub(crate) fn documented() {}

/// A proxied request, its body as hyper read it.
pub type Request = http::Request<Incoming>;
/// The proxy's answer: the upstream's body passed through as it comes, or Headroom's own.
pub type Response = http::Response<AnswerBody>;

pub async fn handle(app: AppState, request: Request) -> Response {
    let mut journey = Journey::default();
    let upstream = upstream_name(request.uri().path()).and_then(|name| app.config.upstream(name));
    // Exported to OTLP when asked for; otherwise disabled at the call site (no cost).
    let span = tracing::debug_span!(target: "headroom::trace", "proxy",
        upstream = upstream.map_or("", |u| u.name.as_str()), method = %request.method());
    let result = tracing::Instrument::instrument(forward(&app, request, &mut journey), span).await;
    let outcome = match &result {
        Ok(_) => "forwarded",
        Err(ApiError::Refused { .. }) => "refused",
        Err(ApiError::BadGateway { .. }) => "error",
        Err(_) => "invalid",
    };
    if let Some(upstream) = upstream {
        // A request refused before its lane was read (a bad header) counts in the default lane.
        let lane = if journey.bulk { "bulk" } else { "realtime" };
        app.metrics.proxy_request(upstream, lane, outcome);
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
    let mut response =
        result.unwrap_or_else(|e| e.into_response().map(http_body_util::Either::Right));
    let headers = response.headers_mut();
    // The usual values (one attempt, no wait) made once: a number's value allocates.
    headers.insert(
        ATTEMPTS,
        match journey.attempts {
            1 => HeaderValue::from_static("1"),
            n => HeaderValue::from(n),
        },
    );
    headers.insert(
        WAIT_MS,
        match journey.waited.as_millis().min(u64::MAX as u128) as u64 {
            0 => HeaderValue::from_static("0"),
            ms => HeaderValue::from(ms),
        },
    );
    response
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
    /// `Headroom-Cost`; without it, what past calls of the route cost, else 1.
    cost: Option<f64>,
}

fn header_str<'a>(name: &str, value: Option<&'a HeaderValue>) -> Result<Option<&'a str>, ApiError> {
    match value {
        None => Ok(None),
        Some(v) => v.to_str().map(|s| Some(s.trim())).map_err(|_| {
            ApiError::bad_request(format!("header {name}: the value is not visible ASCII"))
        }),
    }
}

fn read_ask(headers: &HeaderMap) -> Result<Ask, ApiError> {
    // One look over the names (most calls carry none or one of these) instead of a lookup
    // per header; the first value of a repeated header counts, as `HeaderMap::get` would.
    let [mut tenant, mut lane, mut max_wait, mut cost] = [None; 4];
    for (name, value) in headers {
        let Some(which) = name.as_str().strip_prefix("headroom-") else {
            continue;
        };
        let slot = match which {
            "tenant" => &mut tenant,
            "lane" => &mut lane,
            "max-wait" => &mut max_wait,
            "cost" => &mut cost,
            _ => continue,
        };
        slot.get_or_insert(value);
    }
    let tenant = match header_str("headroom-tenant", tenant)? {
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
    let lane = match header_str("headroom-lane", lane)? {
        None => Lane::Realtime,
        Some(l) => l
            .parse()
            .map_err(|e| ApiError::bad_request(format!("header Headroom-Lane: {e}")))?,
    };
    let max_wait = match header_str("headroom-max-wait", max_wait)? {
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
    let cost = match header_str("headroom-cost", cost)? {
        None => None,
        Some(c) => match c.parse::<f64>() {
            Ok(v) if v.is_finite() && v > 0.0 && v <= MAX_COST => Some(v),
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

/// A request body: in memory (replayable) or a stream (sent once).
enum OutBody {
    Buffered(Bytes),
    Streamed(Option<Body>),
}

impl OutBody {
    fn take(&mut self) -> Option<Body> {
        match self {
            // An empty body (most calls: GET, DELETE…) is not boxed.
            OutBody::Buffered(bytes) if bytes.is_empty() => Some(Body::empty()),
            OutBody::Buffered(bytes) => Some(Body::from(bytes.clone())),
            OutBody::Streamed(body) => body.take(),
        }
    }

    fn replayable(&self) -> bool {
        matches!(self, OutBody::Buffered(_))
    }
}

fn is_idempotent(method: &Method) -> bool {
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::PUT | Method::DELETE | Method::TRACE
    )
}

/// Whether a header describes one connection, not the message (RFC 9110 §7.6.1). A `match`
/// (by length, then bytes) rather than a scan of a list: it runs for every header of every
/// call and answer.
fn is_hop_by_hop(name: &str) -> bool {
    matches!(
        name,
        "connection"
            | "keep-alive"
            | "proxy-authenticate"
            | "proxy-authorization"
            | "proxy-connection"
            | "te"
            | "trailer"
            | "transfer-encoding"
            | "upgrade"
    )
}

/// The header names a `Connection` value lists beyond the hop-by-hop ones (`keep-alive`,
/// `close`, the usual values, list nothing more).
fn listed_in_connection<'a>(values: impl Iterator<Item = &'a HeaderValue>) -> Vec<HeaderName> {
    values
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|s| s.trim().to_ascii_lowercase())
        .filter(|s| s != "close" && !is_hop_by_hop(s))
        .filter_map(|s| HeaderName::from_bytes(s.as_bytes()).ok())
        .collect()
}

/// The headers to send upstream: the client's minus hop-by-hop and `Headroom-*`, `Host` as
/// `host` (the upstream's), and without `Content-Length` when `drop_length` (a buffered body
/// goes with its length known to the client anew).
fn forwarded_headers(incoming: &HeaderMap, drop_length: bool, host: &HeaderValue) -> HeaderMap {
    let listed = if incoming.contains_key(header::CONNECTION) {
        listed_in_connection(incoming.get_all(header::CONNECTION).iter())
    } else {
        Vec::new()
    };
    let mut out = HeaderMap::with_capacity(incoming.len());
    let mut host_done = false;
    for (name, value) in incoming {
        if name == header::HOST {
            // The client's names Headroom: the upstream's in its place, once.
            if !std::mem::replace(&mut host_done, true) {
                out.append(header::HOST, host.clone());
            }
            continue;
        }
        let drop = is_hop_by_hop(name.as_str())
            || name.as_str().starts_with("headroom-")
            || (drop_length && name == header::CONTENT_LENGTH)
            || listed.contains(name);
        if !drop {
            out.append(name.clone(), value.clone());
        }
    }
    out
}

/// Removes an answer's hop-by-hop headers, and those its `Connection` lists. One look over
/// the names first, then a removal only of what is there: most answers carry one
/// (`Connection: keep-alive`) or none, and a removal by name hashes it.
fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let mut connection = false;
    let mut lists_more = false;
    // The others are rare in answers: the vector allocates only when there is one.
    let mut others: Vec<HeaderName> = Vec::new();
    for (name, value) in headers.iter() {
        if name == header::CONNECTION {
            connection = true;
            let v = value.as_bytes();
            lists_more |=
                !v.eq_ignore_ascii_case(b"keep-alive") && !v.eq_ignore_ascii_case(b"close");
        } else if is_hop_by_hop(name.as_str()) && !others.contains(name) {
            others.push(name.clone());
        }
    }
    let listed = if lists_more {
        listed_in_connection(headers.get_all(header::CONNECTION).iter())
    } else {
        Vec::new()
    };
    if connection {
        headers.remove(header::CONNECTION);
    }
    for name in others.into_iter().chain(listed) {
        headers.remove(name);
    }
}

fn refused(
    app: &AppState,
    upstream: &Upstream,
    key: &str,
    max_wait: Duration,
    rejection: Rejection,
) -> ApiError {
    let retry = format!("{:.1}s", rejection.retry_after.as_secs_f64());
    // When a refusal that lasts (a spent quota, a pause) ends, on the wall clock.
    let until = || {
        let wait = i64::try_from(rejection.retry_after.as_millis()).unwrap_or(i64::MAX);
        crate::clock::rfc3339(app.clock.now_millis().saturating_add(wait))
    };
    match rejection.reason {
        RejectReason::QuotaExhausted => {
            let until = until();
            ApiError::QuotaExhausted {
                detail: format!(
                    "upstream \"{}\" (budget {key}) has spent its long-window quota (daily, \
                     monthly…): nothing is left above the reserve until it resets at {until}, \
                     beyond this call's max wait of {}; send it as a job to have it wait for the \
                     reset",
                    upstream.name,
                    format_duration(max_wait)
                ),
                retry_after: rejection.retry_after,
                until,
            }
        }
        RejectReason::Paused => {
            let until = until();
            ApiError::Paused {
                detail: format!(
                    "the budget of upstream \"{}\" ({key}) is paused by an operator until \
                     {until} (see GET /v1/budgets/{}/…), beyond this call's max wait of {}; \
                     send it as a job to have it wait for the pause to end",
                    upstream.name,
                    upstream.name,
                    format_duration(max_wait)
                ),
                retry_after: rejection.retry_after,
                until,
            }
        }
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
    journey.bulk = ask.lane == Lane::Bulk;
    let tenant = principal.tenant_for(ask.tenant.as_deref())?;
    let rest = &path["/proxy/".len() + name.len()..];
    // A body announced larger than the buffer is streamed (and sent once); any other is read
    // first, and goes without the client's `Content-Length` (its length known anew).
    // hyper's size hint is the announced length, read without a header lookup.
    let announced_large = body.size_hint().lower() > MAX_BUFFERED_BODY as u64;
    let mut call = app
        .outbound
        .prepare(
            upstream,
            tenant.as_deref(),
            parts.method.clone(),
            rest,
            parts.uri.query(),
            forwarded_headers(&parts.headers, !announced_large, &upstream.base.host),
        )
        .await
        .map_err(|e| match e {
            PrepareError::Target(e) => ApiError::bad_request(e.to_string()),
            PrepareError::OAuth(e) => e.into(),
            e => ApiError::Internal(e.into()),
        })?;

    let mut out_body = if announced_large {
        OutBody::Streamed(Some(Body::new(body)))
    } else if body.is_end_stream() {
        // No body (most calls): nothing to read.
        OutBody::Buffered(Bytes::new())
    } else {
        match read_up_to(body, MAX_BUFFERED_BODY).await {
            Ok(Ok(bytes)) => OutBody::Buffered(bytes),
            Ok(Err(stream)) => {
                // Longer than the buffer without announcing it (chunked): it has no
                // `Content-Length` to keep.
                OutBody::Streamed(Some(stream))
            }
            Err(e) => {
                return Err(ApiError::bad_request(format!(
                    "cannot read the request body: {e}"
                )))
            }
        }
    };
    let max_wait = ask.max_wait.unwrap_or(upstream.retry.max_wait);
    let deadline = tokio::time::Instant::now() + max_wait;
    let lane_name = match ask.lane {
        Lane::Realtime => "realtime",
        Lane::Bulk => "bulk",
    };
    // Seeded only when a backoff is drawn (a retry), not on every call.
    let mut jitter: Option<Jitter> = None;
    // The last answer worth returning if a retry cannot happen in time.
    let mut last: Option<Response> = None;
    // Whether the call went again with a renewed OAuth token (at most once).
    let mut renewed = false;

    let response = loop {
        let Some(body) = out_body.take() else {
            // A streamed body went with the first attempt (and is never retried).
            break last
                .take()
                .expect("a streamed body's first attempt left a response");
        };
        let attempt = journey.attempts + 1;
        if journey.attempts > 0 {
            // The last send took the headers (a copy per call costs more than this rebuild
            // per retry).
            call.set_headers(forwarded_headers(
                &parts.headers,
                !announced_large,
                &upstream.base.host,
            ));
        }
        let how = outbound::Send {
            lane: ask.lane,
            cost: ask.cost.or_else(|| call.estimated_cost()).unwrap_or(1.0),
            // The first attempt has the whole wait (no second look at the clock).
            max_wait: if attempt == 1 {
                max_wait
            } else {
                deadline.saturating_duration_since(tokio::time::Instant::now())
            },
            attempt,
            queue: None,
            // Reading a throttled answer that could be retried must not outlast the wait.
            wait_until: (out_body.replayable() && attempt < upstream.retry.max_attempts)
                .then_some(deadline),
            read: Read::Inspect(MAX_INSPECTED_BODY),
            take_headers: true,
        };
        let (mut resp_parts, resp_body, inspected, signals, budget_pause, allowance) = match call
            .send(body, how)
            .await
        {
            Answer::Refused(rejection) => {
                if let Some(previous) = last.take() {
                    break previous;
                }
                if rejection.reason == RejectReason::BreakerOpen {
                    tracing::warn!(upstream = %upstream.name, budget = %call.key.1, "breaker open: call refused");
                }
                let error = refused(app, upstream, &call.key.1, max_wait, rejection);
                if matches!(
                    error,
                    ApiError::Refused { .. }
                        | ApiError::QuotaExhausted { .. }
                        | ApiError::Paused { .. }
                ) {
                    app.observe.refused(
                        &call.call(attempt, None),
                        error.status().as_u16(),
                        rejection.retry_after,
                        outbound::refusal(&rejection),
                    );
                }
                return Err(error);
            }
            Answer::Answered {
                parts,
                body,
                inspected,
                signals,
                budget_pause,
                waited,
                allowance,
                ..
            } => {
                journey.attempts = attempt;
                journey.waited += waited;
                (parts, body, inspected, signals, budget_pause, allowance)
            }
            Answer::Unreachable { reason, waited } => {
                journey.attempts = attempt;
                journey.waited += waited;
                let can_retry = is_idempotent(&parts.method)
                    && out_body.replayable()
                    && attempt < upstream.retry.max_attempts;
                let jitter = jitter.get_or_insert_with(|| Jitter::new(rand::random()));
                let delay = upstream.retry.backoff.delay(attempt - 1, jitter);
                if can_retry && tokio::time::Instant::now() + delay < deadline {
                    let about = call.call(attempt, None);
                    app.observe
                        .retry(&about, false, delay, "upstream unreachable");
                    journey.retried.get_or_insert_with(|| retry_trail(&about));
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
        // An answer that says the OAuth token expired: the call goes again, once, with the
        // token refreshed (or the one another call refreshed meanwhile).
        if !renewed && out_body.replayable() {
            if let Some(body) = inspected.as_deref() {
                if call.renew_token(status, body).await? {
                    renewed = true;
                    continue;
                }
            }
        }
        strip_hop_by_hop(&mut resp_parts.headers);
        if let Some(allowance) = allowance.filter(|_| upstream.ratelimit_headers) {
            set_ratelimit_fields(&mut resp_parts.headers, &allowance);
        }
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
        // The backoff counts only for a failed answer that may be retried (see `verdict`):
        // a successful or throttled one draws none.
        let backoff = if (200..300).contains(&status) || signals.throttled {
            Duration::ZERO
        } else {
            let jitter = jitter.get_or_insert_with(|| Jitter::new(rand::random()));
            upstream.retry.backoff.delay(attempt - 1, jitter)
        };
        let outcome = Attempted::Answered {
            status,
            signals: &signals,
        };
        let (after, throttled) = match verdict(outcome, attempt, &rule, budget_pause, backoff) {
            Verdict::Retry { after, why, .. } => (after, why == RetryReason::Throttled),
            Verdict::Done | Verdict::GiveUp(_) => break response,
        };
        let can_retry = inspected.is_some()
            && out_body.replayable()
            && attempt < upstream.retry.max_attempts
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
        let about = call.call(attempt, None);
        app.observe.retry(&about, throttled, after, why);
        journey.retried.get_or_insert_with(|| retry_trail(&about));
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
        .proxy_wait(upstream, lane_name, journey.waited.as_secs_f64());
    Ok(response)
}

/// Tells the caller the budget it spends in the IETF fields (draft-ietf-httpapi-ratelimit-
/// headers), in place of the upstream's own: the API's whole quota is not what this caller
/// may spend, and clients that read the fields back off by them.
fn set_ratelimit_fields(headers: &mut HeaderMap, allowance: &Allowance) {
    use std::fmt::Write;
    let mut policy = format!("\"headroom\";q={}", allowance.quota);
    if let Some(w) = allowance.window_s {
        let _ = write!(policy, ";w={w}");
    }
    headers.remove(RATELIMIT);
    let value = HeaderValue::try_from(policy).expect("digits and ASCII");
    headers.insert(RATELIMIT_POLICY, value);
    if let Some(r) = allowance.remaining {
        let mut now = format!("\"headroom\";r={r}");
        if let Some(t) = allowance.reset_s {
            let _ = write!(now, ";t={t}");
        }
        headers.insert(
            RATELIMIT,
            HeaderValue::try_from(now).expect("digits and ASCII"),
        );
    }
}

const ATTEMPTS: HeaderName = HeaderName::from_static("headroom-attempts");
const WAIT_MS: HeaderName = HeaderName::from_static("headroom-wait-ms");
const RATELIMIT: HeaderName = HeaderName::from_static("ratelimit");
const RATELIMIT_POLICY: HeaderName = HeaderName::from_static("ratelimit-policy");

/// Upstream, tenant and endpoint of a call, kept once it is retried.
fn retry_trail(call: &Call<'_>) -> Box<(String, String, String)> {
    Box::new((
        call.upstream.name.clone(),
        call.tenant.to_string(),
        format!("{} {}", call.method, call.uri.path()),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_answers_hop_by_hop_headers_are_removed_and_nothing_else() {
        let mut h = HeaderMap::new();
        h.insert("content-type", HeaderValue::from_static("application/json"));
        h.insert("x-ratelimit-remaining", HeaderValue::from_static("3"));
        let untouched = h.clone();
        strip_hop_by_hop(&mut h);
        assert_eq!(h, untouched);
        h.insert(
            "connection",
            HeaderValue::from_static("keep-alive, X-Private"),
        );
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert("x-private", HeaderValue::from_static("1"));
        h.insert("transfer-encoding", HeaderValue::from_static("chunked"));
        strip_hop_by_hop(&mut h);
        assert_eq!(h, untouched);
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
        let upstream = HeaderValue::from_static("api.example.com");
        let out = forwarded_headers(&h, true, &upstream);
        let names: Vec<&str> = out.keys().map(|k| k.as_str()).collect();
        assert_eq!(names, vec!["host", "authorization", "x-custom"]);
        assert_eq!(out[header::HOST], "api.example.com");
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
        assert_eq!(ask.cost, None);
    }
}
