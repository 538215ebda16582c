//! Microsoft Graph JSON batching: `POST /v1.0/$batch` with
//! `{"requests": [{"id", "method", "url", "headers", "body"}]}` (at most 20), answered by
//! `{"responses": [{"id", "status", "headers", "body"}]}` in any order.

use std::time::Duration;

use serde_json::{json, Map, Value};

use super::{
    join, retryable_status, text, Answer, BatchError, ChunkOutcome, Record, RecordOutcome, Target,
};

/// Keys of a payload that is an inner request as is.
const REQUEST_KEYS: &[&str] = &["method", "url", "body", "headers"];

/// Where a batch with this method and path goes (see [`super::build`]).
pub(super) fn target(method: String, path: &str) -> Target {
    let (path_only, query) = match path.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (path, None),
    };
    let first = path_only[1..].split('/').next().unwrap_or("");
    let is_version = first == "beta"
        || (first.len() > 1 && first.starts_with('v') && first.as_bytes()[1].is_ascii_digit());
    let (root, rest) = if is_version {
        (format!("/{first}"), &path_only[1 + first.len()..])
    } else {
        (String::new(), path_only)
    };
    let is_batch = path_only.rsplit('/').next() == Some("$batch");
    let inner_path = (!is_batch).then(|| {
        let rest = if rest.is_empty() { "/" } else { rest };
        match query {
            Some(q) => format!("{rest}?{q}"),
            None => rest.to_string(),
        }
    });
    let call_path = if is_batch {
        path_only.to_string()
    } else {
        format!("{root}/$batch")
    };
    Target {
        method,
        call_method: "POST".into(),
        call_path,
        inner_path,
        root,
    }
}

/// The inner request for one payload, with id `n`.
pub(super) fn item(target: &Target, payload: &Value, n: usize) -> Result<Value, String> {
    let as_request = match payload {
        Value::Object(map)
            if map.get("url").is_some_and(Value::is_string)
                && map.keys().all(|k| REQUEST_KEYS.contains(&k.as_str())) =>
        {
            Some(map)
        }
        _ => None,
    };
    let (method, url, body, mut headers) = match as_request {
        Some(map) => {
            let method = match map.get("method") {
                None | Some(Value::Null) => target.method.clone(),
                Some(Value::String(m))
                    if !m.is_empty() && m.bytes().all(|b| b.is_ascii_alphabetic()) =>
                {
                    m.to_ascii_uppercase()
                }
                Some(other) => {
                    return Err(format!(
                        "method: {other} is not an HTTP method (write one like \"PATCH\")"
                    ))
                }
            };
            let url = map["url"].as_str().unwrap_or_default();
            if url.is_empty() || url.contains("://") {
                return Err(format!(
                    "url: \"{url}\" must be a path relative to the Graph version root, such as \
                     \"/users/{{id}}\""
                ));
            }
            let url = if !target.root.is_empty()
                && url.starts_with(&target.root)
                && url[target.root.len()..].starts_with(['/', '?'])
            {
                &url[target.root.len()..]
            } else {
                url
            };
            let headers = match map.get("headers") {
                None | Some(Value::Null) => Map::new(),
                Some(Value::Object(h)) if h.values().all(Value::is_string) => h.clone(),
                Some(_) => {
                    return Err(
                        "headers: must be an object of strings, such as {\"If-Match\": \"*\"}"
                            .into(),
                    )
                }
            };
            let body = map.get("body").filter(|b| !b.is_null()).cloned();
            (method, url.to_string(), body, headers)
        }
        None => {
            let Some(url) = &target.inner_path else {
                return Err(
                    "the batch path is Graph's $batch itself, so each record must be an inner \
                     request such as {\"method\": \"PATCH\", \"url\": \"/users/{id}\", \"body\": \
                     {…}}"
                        .into(),
                );
            };
            let body = (!payload.is_null()).then(|| payload.clone());
            (target.method.clone(), url.clone(), body, Map::new())
        }
    };
    if body.is_some()
        && !headers
            .keys()
            .any(|k| k.eq_ignore_ascii_case("content-type"))
    {
        headers.insert("Content-Type".into(), "application/json".into());
    }
    let mut request = Map::new();
    request.insert("id".into(), Value::String(n.to_string()));
    request.insert("method".into(), Value::String(method));
    request.insert("url".into(), Value::String(url));
    if !headers.is_empty() {
        request.insert("headers".into(), Value::Object(headers));
    }
    if let Some(body) = body {
        request.insert("body".into(), body);
    }
    Ok(Value::Object(request))
}

pub(super) fn body(target: &Target, records: &[Record]) -> Result<Value, BatchError> {
    let requests = records
        .iter()
        .enumerate()
        .map(|(p, record)| {
            item(target, &record.payload, p + 1).map_err(|reason| BatchError::Record {
                index: record.index,
                reason,
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(json!({ "requests": requests }))
}

/// `code: message` of a Graph error body (`{"error": {"code", "message"}}`).
fn error_text(body: &Value) -> Option<String> {
    let error = body.get("error")?;
    match error {
        Value::String(s) => Some(s.clone()),
        _ => join(&[
            error.get("code").and_then(Value::as_str),
            error.get("message").and_then(Value::as_str),
        ]),
    }
}

/// An inner `Retry-After` in delay-seconds.
fn retry_after(headers: Option<&Value>) -> Option<Duration> {
    let (_, value) = headers?
        .as_object()?
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("retry-after"))?;
    let secs = match value {
        Value::Number(n) => n.as_f64()?,
        Value::String(s) => s.trim().parse::<f64>().ok()?,
        _ => return None,
    };
    if secs < 0.0 {
        return None;
    }
    Duration::try_from_secs_f64(secs).ok()
}

fn inner(response: &Value, outer_wait: Option<Duration>) -> RecordOutcome {
    let status = response.get("status").and_then(|s| match s {
        Value::Number(n) => n.as_u64(),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    });
    let Some(status) = status.filter(|s| (100..1000).contains(s)) else {
        return RecordOutcome::failed(format!(
            "unreadable graph response (no status): {}",
            super::clip(response.to_string(), 200)
        ));
    };
    if (200..300).contains(&status) {
        return RecordOutcome::Succeeded;
    }
    let detail = response.get("body").and_then(error_text);
    let error = match detail {
        Some(d) => format!("HTTP {status}: {d}"),
        None => format!("HTTP {status}"),
    };
    if matches!(status, 429 | 503 | 504) {
        let wait = retry_after(response.get("headers")).or(outer_wait);
        RecordOutcome::retry(error, wait)
    } else {
        RecordOutcome::failed(error)
    }
}

pub(super) fn parse(records: &[Record], answer: &Answer) -> ChunkOutcome {
    let json = answer.json();
    if retryable_status(answer.status) {
        return answer.refused(records, json.ok().as_ref().and_then(error_text));
    }
    if !answer.is_success() {
        return answer.rejected(records, json.ok().as_ref().and_then(error_text));
    }
    let json = match json {
        Ok(v) => v,
        Err(what) => return answer.unreadable(records, "graph", &what),
    };
    let Some(responses) = json.get("responses").and_then(Value::as_array) else {
        return answer.unreadable(records, "graph", "no \"responses\" array");
    };
    let mut outcomes: Vec<Option<RecordOutcome>> = vec![None; records.len()];
    for response in responses {
        let Some(id) = response.get("id").map(text) else {
            continue;
        };
        let Some(p) = id
            .trim()
            .parse::<usize>()
            .ok()
            .filter(|n| (1..=records.len()).contains(n))
            .map(|n| n - 1)
        else {
            continue;
        };
        if outcomes[p].is_none() {
            outcomes[p] = Some(inner(response, answer.retry_after));
        }
    }
    ChunkOutcome {
        records: outcomes
            .into_iter()
            .map(|o| o.unwrap_or_else(|| RecordOutcome::failed("no result for this record")))
            .collect(),
        whole_chunk_retryable: false,
    }
}
