//! Sending a prepared call under a lease: the request out, the answer's head and (when it
//! matters) its body in, its rate-limit signals back into the budget, metrics and events.

use std::time::Duration;

use axum::body::Body;
use bytes::{Bytes, BytesMut};
use headroom_core::budget::Outcome;
use headroom_core::duration::format_duration;
use headroom_core::{interpret, Rejection};
use http_body_util::{BodyExt, Either};
use tokio::time::Instant;

use super::governor::Lease;
use super::Outbound;
use crate::cfg::Upstream;
use crate::observe::Call;

/// How much of an answer's body is read before it is handed back.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Read {
    /// Throttled and failed answers (the ones that may be retried, whose bodies may hold
    /// signals) up to this many bytes; other bodies are handed back unread, as a stream.
    Inspect(usize),
    /// Every body, up to this many bytes (jobs and batches keep or parse it).
    All(usize),
}

/// An answer's body: as the upstream sends it (most answers, passed through without a box:
/// an allocation per call saved), or what Headroom read of it.
pub(crate) type AnswerBody = http_body_util::Either<hyper::body::Incoming, Body>;

/// What one governed call gave.
// Made and moved once per call: boxing the answer would cost an allocation on the hot path.
#[allow(clippy::large_enum_variant)]
pub(crate) enum Answer {
    /// The governor gave no leave within the wait (no room, breaker open, Redis unreachable);
    /// nothing was sent.
    Refused(Rejection),
    Answered {
        parts: http::response::Parts,
        body: AnswerBody,
        /// The body, when it was read (throttled and failed answers, or `Read::All`), up to
        /// the limit.
        inspected: Option<Bytes>,
        /// With `Read::All`: the body was longer than the limit and `inspected` is its start.
        truncated: bool,
        signals: headroom_core::Signals,
        /// How long the budget is paused after this answer (zero unless it was throttled).
        budget_pause: Duration,
        /// How long the call waited for its budget.
        waited: Duration,
        /// The budget's tightest limit after the answer, as the caller may spend it.
        allowance: Option<headroom_core::budget::Allowance>,
    },
    /// No answer (connection refused or reset, timeout); the reason says which.
    Unreachable { reason: String, waited: Duration },
}

/// Makes the call under `lease`, reads the answer's rate-limit signals back into the budget
/// (returning the lease), and records metrics and a log line for throttled answers.
pub(super) async fn send(
    out: &Outbound,
    call: &Call<'_>,
    lease: Lease,
    body: Body,
    headers: http::HeaderMap,
    read: Read,
    wait_until: Option<Instant>,
) -> Answer {
    let waited = lease.waited;
    let (inspect_limit, read_all) = match read {
        Read::Inspect(limit) => (limit, false),
        Read::All(limit) => (limit, true),
    };
    let upstream = call.upstream;
    let mut outgoing = http::Request::new(body);
    *outgoing.method_mut() = call.method.clone();
    *outgoing.uri_mut() = call.uri.clone();
    *outgoing.headers_mut() = headers;
    // The client adds no `Host` (see `client::build`): the upstream's, unless the caller
    // gave one (HTTP/2 allows it beside `:authority` when they agree, as here). Looked up
    // first: `entry` would make room for one more header even when it is there.
    if !outgoing.headers().contains_key(http::header::HOST) {
        let host = upstream.base.host.clone();
        outgoing.headers_mut().insert(http::header::HOST, host);
    }
    // The upstream's `timeout` covers the whole answer, head and the body Headroom reads: a
    // body that stalls is a transport error and gives the lease back.
    let give_up = Instant::now() + upstream.timeout;
    let request = out.client.request(outgoing);
    let sent = out.timers.until(give_up).limit(request).await;
    let upstream_response = match sent {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => {
            let reason = match std::error::Error::source(&e) {
                Some(source) => format!("{e}: {source}"),
                None => e.to_string(),
            };
            return unreachable_upstream(out, call, lease, reason, waited);
        }
        Err(_) => {
            let reason = format!("no answer within {}", format_duration(upstream.timeout));
            return unreachable_upstream(out, call, lease, reason, waited);
        }
    };
    let (parts, incoming) = upstream_response.into_parts();
    let status = parts.status.as_u16();
    let inspect = read_all
        || matches!(status, 403 | 420 | 429 | 503 | 529)
        || upstream.retry.on_status.contains(&status)
        || (upstream.cost_from_body && is_json(&parts.headers))
        || upstream
            .oauth
            .as_ref()
            .is_some_and(|o| o.expired_status.contains(&status));
    // The caller's deadline only while a retry could still happen in it; past it, the
    // answer goes back as it is and its body may take the upstream's timeout.
    // (Only an answer whose body is read needs it: most are handed back unread.)
    let read_until = || match wait_until {
        Some(w) if w > Instant::now() => w.min(give_up),
        _ => give_up,
    };
    let stalled = |read_until: Instant| {
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
        let read_until = read_until();
        match tokio::time::timeout_at(read_until, read_capped(incoming, inspect_limit)).await {
            Ok(Ok((bytes, truncated))) => (Some(bytes), truncated, Either::Right(Body::empty())),
            Ok(Err(e)) => {
                let reason = format!("the answer broke off: {e}");
                return unreachable_upstream(out, call, lease, reason, waited);
            }
            Err(_) => return unreachable_upstream(out, call, lease, stalled(read_until), waited),
        }
    } else if inspect {
        let read_until = read_until();
        match tokio::time::timeout_at(read_until, read_up_to(incoming, inspect_limit)).await {
            Ok(Ok(Ok(bytes))) => (Some(bytes.clone()), false, Either::Right(Body::from(bytes))),
            Ok(Ok(Err(stream))) => (None, false, Either::Right(stream)),
            Ok(Err(e)) => {
                let reason = format!("the answer broke off: {e}");
                return unreachable_upstream(out, call, lease, reason, waited);
            }
            Err(_) => return unreachable_upstream(out, call, lease, stalled(read_until), waited),
        }
    } else {
        (None, false, Either::Left(incoming))
    };
    // An ordinary answer with only common headers that never carry limits says nothing:
    // `interpret` would answer the same after looking at every line (and the clock).
    let plain = inspected.is_none()
        && !matches!(status, 403 | 420 | 429 | 503 | 529)
        && parts.headers.keys().all(|k| PLAIN.contains(k));
    let signals = if plain {
        headroom_core::Signals::default()
    } else {
        interpret(
            status,
            parts
                .headers
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_bytes())),
            inspected.as_deref().unwrap_or_default(),
            out.clock.now_unix_secs(),
        )
    };
    let reaction = lease.finish(Outcome::Response {
        status,
        signals: &signals,
    });
    if let Some(cost) = signals.cost.filter(|_| upstream.meters_cost()) {
        out.costs
            .record(upstream.index, call.method, call.uri.path(), cost);
    }
    record_breaker(out, upstream, call.tenant, reaction);
    out.metrics.upstream_response(upstream, status);
    if signals.throttled {
        out.metrics
            .throttled
            .get_or_create(&out.metrics.tenant_labels(&upstream.name, call.tenant))
            .inc();
        // The event logs it (with the rate-limit headers) and stores it.
        out.observe.throttled(
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
        waited,
        allowance: reaction.allowance,
    }
}

/// Answer headers that never say anything about limits (no "limit", "retry" or "reset" in
/// the name; `Date` only dates lines that do). Compared as names made once: a standard
/// name's comparison is one byte's.
static PLAIN: [http::HeaderName; 10] = {
    use http::header::*;
    [
        CONTENT_TYPE,
        CONTENT_LENGTH,
        DATE,
        SERVER,
        CONNECTION,
        TRANSFER_ENCODING,
        CACHE_CONTROL,
        VARY,
        ETAG,
        CONTENT_ENCODING,
    ]
};

/// A JSON answer (`application/json`, `application/graphql-response+json`…): where an API
/// reports what a call cost. Event streams are not: their body is not read.
fn is_json(headers: &http::HeaderMap) -> bool {
    headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|t| {
            let t = t.trim();
            t.eq_ignore_ascii_case("application/json")
                || (t.len() > 5 && t[t.len() - 5..].eq_ignore_ascii_case("+json"))
        })
}

fn unreachable_upstream(
    out: &Outbound,
    call: &Call<'_>,
    lease: Lease,
    reason: String,
    waited: Duration,
) -> Answer {
    let reaction = lease.finish(Outcome::TransportError);
    record_breaker(out, call.upstream, call.tenant, reaction);
    tracing::warn!(
        upstream = %call.upstream.name,
        method = %call.method,
        path = %call.uri.path(),
        attempt = call.attempt,
        error = %reason,
        "upstream unreachable"
    );
    Answer::Unreachable { reason, waited }
}

fn record_breaker(
    out: &Outbound,
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
        out.observe.breaker(&upstream.name, tenant, &state);
        let labels = out.metrics.tenant_labels(&upstream.name, tenant);
        // A gauge shared by many tenants would show whichever changed last: none for them.
        if labels.tenant != crate::metrics::OTHER_TENANT {
            out.metrics.breaker_state.get_or_create(&labels).set(value);
        }
    }
}

/// Reads a body up to `limit` bytes: the whole of it, or (when larger) a body that yields
/// what was read followed by the rest.
pub(crate) async fn read_up_to<B>(
    mut body: B,
    limit: usize,
) -> Result<Result<Bytes, Body>, B::Error>
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
