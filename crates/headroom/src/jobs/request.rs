//! `/v1/jobs`: submit, read, list and cancel jobs.

use base64::Engine;
use serde::Deserialize;
use serde_json::{json, Value};

use super::*;
use crate::cfg::QueueScope;
use crate::clock::rfc3339;
use crate::error::{ApiError, ApiResult};

/// A job's request body may be at most this large.
pub const MAX_JOB_BODY: usize = 1 << 20;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct SubmitJob {
    upstream: String,
    pub(crate) tenant: Option<String>,
    queue: Option<String>,
    lane: Option<String>,
    dedup_id: Option<String>,
    request: SubmitRequest,
    callback_url: Option<String>,
    max_attempts: Option<u32>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SubmitRequest {
    method: String,
    path: String,
    query: Option<String>,
    #[serde(default)]
    headers: std::collections::BTreeMap<String, String>,
    body: Option<Value>,
    body_base64: Option<String>,
}

pub(crate) fn new_id(prefix: &str) -> String {
    format!(
        "{prefix}_{:012x}{:016x}",
        // The system's time, not the server's clock: an id only has to be unique and roughly
        // ordered.
        crate::clock::system_millis(),
        rand::random::<u64>()
    )
}

pub(crate) fn check_tenant(t: &str) -> ApiResult<()> {
    if crate::credentials::valid_tenant(t) {
        Ok(())
    } else {
        Err(ApiError::bad_request(format!(
            "tenant: \"{t}\" must be 1 to 128 letters, digits, '-', '_', '.', ':' or '@'"
        )))
    }
}

pub(crate) fn parse_lane(
    lane: Option<&str>,
    default: headroom_core::Lane,
) -> ApiResult<headroom_core::Lane> {
    match lane {
        None => Ok(default),
        Some(l) => l
            .parse()
            .map_err(|e| ApiError::bad_request(format!("lane: {e}"))),
    }
}

/// The URL's form, and its host when that is an address the `[callbacks]` policy refuses
/// (names are checked on the addresses they resolve to, when delivering).
pub(crate) fn check_callback(config: &crate::cfg::Config, url: &str) -> ApiResult<()> {
    config
        .callbacks
        .allow
        .check_url(url)
        .map(|_| ())
        .map_err(|e| ApiError::bad_request(format!("callback_url: \"{url}\" {e}")))
}

/// The methods a job, batch or schedule may use. CONNECT and TRACE (and extension methods)
/// have no place in an API call and are refused.
const JOB_METHODS: [&str; 7] = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"];
/// A job's request carries at most this many headers…
pub(crate) const MAX_JOB_HEADERS: usize = 64;
/// …of at most this many bytes in all (names and values).
pub(crate) const MAX_JOB_HEADER_BYTES: usize = 16 << 10;

/// Headers a job may not set: `Host` (the upstream's base URL decides it; a tenant must not
/// hop to another virtual host with its injected credential), hop-by-hop headers (they
/// describe Headroom's connection, not the call), `Content-Length` (Headroom frames the body)
/// and `Headroom-*` (set by the job's fields).
pub(crate) fn is_reserved_header(name: &str) -> bool {
    const RESERVED: [&str; 18] = [
        "host",
        // Headers many servers and frameworks route on: a job must not pick another
        // method, path or virtual host than the one it was checked for.
        "x-http-method-override",
        "x-http-method",
        "x-method-override",
        "x-original-url",
        "x-rewrite-url",
        "x-forwarded-host",
        "x-forwarded-for",
        "forwarded",
        "connection",
        "keep-alive",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "proxy-authorization",
        "content-length",
    ];
    RESERVED.iter().any(|r| name.eq_ignore_ascii_case(r))
        || name
            .get(..9)
            .is_some_and(|p| p.eq_ignore_ascii_case("headroom-"))
}

/// A job's method, checked: one of `JOB_METHODS` (any case), upper-cased.
pub(crate) fn check_method(method: &str) -> ApiResult<&'static str> {
    let found = (method.len() <= 16)
        .then(|| JOB_METHODS.iter().find(|m| m.eq_ignore_ascii_case(method)))
        .flatten();
    found.copied().ok_or_else(|| {
        // A long token is not echoed back.
        let shown = if method.len() <= 16 { method } else { "…" };
        ApiError::bad_request(format!(
            "request.method: \"{shown}\" is not allowed; use one of {}",
            JOB_METHODS.join(", ")
        ))
    })
}

/// Checks the method, path, query and headers of a job's request; the body is `body`.
pub(crate) fn check_request(
    upstream: &crate::cfg::Upstream,
    method: &str,
    path: &str,
    query: Option<&str>,
    headers: &std::collections::BTreeMap<String, String>,
) -> ApiResult<()> {
    check_method(method)?;
    if !path.starts_with('/') {
        return Err(ApiError::bad_request(format!(
            "request.path: \"{path}\" must start with '/'"
        )));
    }
    crate::outbound::target_uri(&upstream.base, path, query)
        .map_err(|e| ApiError::bad_request(format!("request.path: {e}")))?;
    if headers.len() > MAX_JOB_HEADERS {
        return Err(ApiError::bad_request(format!(
            "request.headers: {} headers; at most {MAX_JOB_HEADERS}",
            headers.len()
        )));
    }
    let bytes: usize = headers.iter().map(|(k, v)| k.len() + v.len()).sum();
    if bytes > MAX_JOB_HEADER_BYTES {
        return Err(ApiError::bad_request(format!(
            "request.headers: {bytes} bytes of names and values; at most {MAX_JOB_HEADER_BYTES}"
        )));
    }
    for (name, value) in headers {
        let n = http::HeaderName::from_bytes(name.as_bytes()).map_err(|_| {
            ApiError::bad_request(format!("request.headers: \"{name}\" is not a header name"))
        })?;
        if n.as_str().starts_with("headroom-") {
            return Err(ApiError::bad_request(format!(
                "request.headers.{name}: Headroom headers are set by the job's fields"
            )));
        }
        if is_reserved_header(n.as_str()) {
            return Err(ApiError::bad_request(format!(
                "request.headers.{name}: Host, Content-Length and hop-by-hop headers are set by \
                 Headroom for each call, not by the job"
            )));
        }
        http::HeaderValue::from_str(value).map_err(|_| {
            ApiError::bad_request(format!(
                "request.headers.{name}: the value must be visible ASCII without line breaks"
            ))
        })?;
    }
    Ok(())
}

/// The job a submission describes, checked against the config; `tenant` is the one it acts
/// as (already checked). Errors name the field at fault.
pub(crate) fn build_job(
    config: &crate::cfg::Config,
    s: SubmitJob,
    tenant: Option<String>,
    now: Millis,
) -> ApiResult<NewJob> {
    let upstream = config.upstream(&s.upstream).cloned().ok_or_else(|| {
        ApiError::bad_request(format!(
            "upstream: \"{}\" is not a configured upstream; configured: {}",
            s.upstream,
            config
                .upstreams
                .iter()
                .map(|u| u.name.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ))
    })?;
    let queue_name = s.queue.unwrap_or_else(|| "default".to_string());
    let queue = config.queue(&queue_name).cloned().ok_or_else(|| {
        ApiError::bad_request(format!(
            "queue: \"{queue_name}\" is not a configured queue; configured: {}",
            config
                .queues
                .iter()
                .map(|q| q.name.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ))
    })?;
    if queue.scope == QueueScope::Tenant && tenant.is_none() {
        return Err(ApiError::bad_request(format!(
            "tenant: queue \"{}\" is scoped per tenant; give the job a tenant",
            queue.name
        )));
    }
    let lane = parse_lane(s.lane.as_deref(), headroom_core::Lane::Bulk)?;
    let r = s.request;
    check_request(
        &upstream,
        &r.method,
        &r.path,
        r.query.as_deref(),
        &r.headers,
    )?;
    let (body, body_is_json) = match (r.body, r.body_base64) {
        (Some(_), Some(_)) => {
            return Err(ApiError::bad_request(
                "request: give either body (JSON) or body_base64, not both",
            ))
        }
        (Some(v), None) => (
            Some(serde_json::to_vec(&v).map_err(anyhow::Error::from)?),
            true,
        ),
        (None, Some(b64)) => (
            Some(
                base64::engine::general_purpose::STANDARD
                    .decode(b64.trim())
                    .map_err(|e| {
                        ApiError::bad_request(format!("request.body_base64: not valid base64: {e}"))
                    })?,
            ),
            false,
        ),
        (None, None) => (None, false),
    };
    if body.as_ref().is_some_and(|b| b.len() > MAX_JOB_BODY) {
        return Err(ApiError::PayloadTooLarge {
            detail: format!("request.body: at most {MAX_JOB_BODY} bytes"),
        });
    }
    if let Some(url) = &s.callback_url {
        check_callback(config, url)?;
    }
    let max_attempts = s.max_attempts.unwrap_or(queue.max_attempts);
    if !(1..=10).contains(&max_attempts) {
        return Err(ApiError::bad_request(format!(
            "max_attempts: {max_attempts} is out of range; use 1 to 10"
        )));
    }
    if let Some(d) = &s.dedup_id {
        if d.is_empty() || d.len() > 256 {
            return Err(ApiError::bad_request(
                "dedup_id: must be 1 to 256 characters",
            ));
        }
    }
    let id = new_id("job");
    let new = NewJob {
        id: id.clone(),
        queue: queue.name.clone(),
        scope: match queue.scope {
            QueueScope::Global => String::new(),
            QueueScope::Tenant => tenant.clone().unwrap_or_default(),
        },
        upstream: upstream.name.clone(),
        tenant,
        lane,
        request: JobRequest {
            method: check_method(&r.method)?.to_string(),
            path: r.path,
            query: r.query,
            headers: r.headers.into_iter().collect(),
            body,
            body_is_json,
        },
        dedup_until: s
            .dedup_id
            .as_ref()
            .map(|_| now + queue.dedup_window.as_millis() as Millis),
        dedup_id: s.dedup_id,
        callback_url: s.callback_url,
        max_attempts,
        idempotency_key: id,
        created_at: now,
    };
    Ok(new)
}

/// A scheduled run's job: a job template (a `POST /v1/jobs` body without `tenant`) with
/// the tenant filled in. Errors start with the key at fault (`request.path: …`), or with
/// `: ` when the template as a whole is wrong.
pub(crate) fn job_from_value(
    config: &crate::cfg::Config,
    template: &Value,
    tenant: &str,
    now: Millis,
) -> Result<NewJob, String> {
    let s: SubmitJob =
        serde_json::from_value(template.clone()).map_err(|e| format!(": not a job: {e}"))?;
    if s.dedup_id.is_some() {
        return Err("dedup_id: each run is a job of its own; leave it out".to_string());
    }
    check_tenant(tenant).map_err(|e| e.to_string())?;
    build_job(config, s, Some(tenant.to_string()), now).map_err(|e| e.to_string())
}

/// A job as the API shows it.
pub fn job_view(job: &Job, attempts: Option<&[AttemptRecord]>) -> Value {
    let n = &job.new;
    let response = job.response.as_ref().map(|r| {
        let body = match serde_json::from_slice::<Value>(&r.body) {
            Ok(v) => json!({ "body": v }),
            Err(_) if r.body.is_empty() => json!({}),
            Err(_) => {
                json!({ "body_base64": base64::engine::general_purpose::STANDARD.encode(&r.body) })
            }
        };
        let mut v = json!({
            "status": r.status,
            "headers": r.headers.iter().map(|(k, v)| json!([k, v])).collect::<Vec<_>>(),
        });
        if let (Some(obj), Some(b)) = (v.as_object_mut(), body.as_object()) {
            obj.extend(b.clone());
        }
        v
    });
    let mut v = json!({
        "id": n.id,
        "status": job.status.as_str(),
        "queue": n.queue,
        "upstream": n.upstream,
        "tenant": n.tenant,
        "lane": match n.lane { headroom_core::Lane::Realtime => "realtime", headroom_core::Lane::Bulk => "bulk" },
        "dedup_id": n.dedup_id,
        "request": {
            "method": n.request.method,
            "path": n.request.path,
            "query": n.request.query.as_deref().map(super::secrets::redact_query),
        },
        "attempts": job.attempts,
        "max_attempts": n.max_attempts,
        "next_attempt_at": rfc3339(job.next_attempt_at),
        "created_at": rfc3339(n.created_at),
        "updated_at": rfc3339(job.updated_at),
        "last_error": job.last_error,
        "response": response,
        "callback_url": n.callback_url,
        "callback": job.callback,
    });
    if let Some(attempts) = attempts {
        v["attempts_log"] = json!(attempts
            .iter()
            .map(|a| json!({
                "number": a.number,
                "started_at": rfc3339(a.started_at),
                "finished_at": rfc3339(a.finished_at),
                "status": a.status,
                "wait_ms": a.wait_ms,
                "rate_limit_headers": a.rate_limit_headers.iter().map(|(k, v)| json!([k, v])).collect::<Vec<_>>(),
                "error": a.error,
            }))
            .collect::<Vec<_>>());
    }
    v
}

/// Whether a principal may see something of `tenant`: a scoped token sees its tenant's only.
pub(crate) fn visible(principal: &crate::auth::Principal, tenant: Option<&str>) -> bool {
    match principal {
        crate::auth::Principal::Tenant(t) => tenant == Some(t.as_str()),
        _ => true,
    }
}
