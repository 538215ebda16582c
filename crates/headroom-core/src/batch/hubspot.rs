//! HubSpot CRM batch endpoints (`/crm/v3/objects/{type}/batch/create|update|upsert`).
//!
//! Every input carries an `objectWriteTraceId`, which turns on HubSpot's multi-status answers:
//! a 207 whose `errors[].context.objectWriteTraceId` names the inputs that failed. Results may
//! echo the trace id too; when they do, an input named nowhere has no result.

use std::collections::{HashMap, HashSet};

use serde_json::{json, Value};

use super::{
    join, retryable_status, text, Answer, BatchError, ChunkOutcome, Record, RecordOutcome,
};

const TRACE: &str = "objectWriteTraceId";

/// Error categories that mean "not now" rather than "never".
const RETRYABLE_CATEGORIES: &[&str] = &[
    "RATE_LIMITS",
    "RATE_LIMIT",
    "TOO_MANY_REQUESTS",
    "LOCKED",
    "TIMEOUT",
    "INTERNAL_ERROR",
    "SERVICE_UNAVAILABLE",
    "TEMPORARILY_UNAVAILABLE",
];

pub(super) fn check(payload: &Value) -> Result<(), String> {
    if payload.is_object() {
        Ok(())
    } else {
        Err(format!(
            "a hubspot record must be a JSON object (an input such as {{\"properties\": {{…}}}}), \
             not {}",
            kind(payload)
        ))
    }
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// Each record's `objectWriteTraceId`: its id when the chunk's ids are distinct, else its
/// index when those are, else `#<position>`. `parse` derives the same from the same records.
fn trace_ids(records: &[Record]) -> Vec<String> {
    fn distinct(ids: &[String]) -> bool {
        let mut seen = HashSet::with_capacity(ids.len());
        ids.iter().all(|id| seen.insert(id.as_str()))
    }
    let ids: Vec<String> = records.iter().map(|r| r.id.clone()).collect();
    if distinct(&ids) {
        return ids;
    }
    let ids: Vec<String> = records.iter().map(|r| r.index.to_string()).collect();
    if distinct(&ids) {
        return ids;
    }
    (0..records.len()).map(|p| format!("#{p}")).collect()
}

pub(super) fn body(records: &[Record]) -> Result<Value, BatchError> {
    let inputs = records
        .iter()
        .zip(trace_ids(records))
        .map(|(record, trace)| match &record.payload {
            Value::Object(map) => {
                let mut input = map.clone();
                input.insert(TRACE.into(), Value::String(trace));
                Ok(Value::Object(input))
            }
            other => Err(BatchError::Record {
                index: record.index,
                reason: check(other).unwrap_err(),
            }),
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(json!({ "inputs": inputs }))
}

/// One entry of `errors` (or the error body of a refused call).
struct HubError {
    message: String,
    retryable: bool,
    traces: Vec<String>,
}

/// `nested_traces`: also the records named by the error's own `errors[]` (not when those are read
/// as errors of their own).
fn read_error(e: &Value, nested_traces: bool) -> HubError {
    let category = e
        .get("category")
        .or_else(|| e.get("code"))
        .and_then(Value::as_str);
    let nested_messages: Vec<&str> = e
        .get("errors")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|n| n.get("message").and_then(Value::as_str))
        .collect();
    let own = e.get("message").and_then(Value::as_str);
    let message = match own {
        Some(m) if !m.trim().is_empty() => join(&[category, Some(m)]),
        _ => join(&[category, Some(&nested_messages.join("; "))]),
    }
    .unwrap_or_else(|| "HubSpot reported an error without a message".into());
    let retryable = category.is_some_and(|c| {
        RETRYABLE_CATEGORIES
            .iter()
            .any(|r| c.eq_ignore_ascii_case(r))
    });
    let mut traces = Vec::new();
    let mut collect = |v: Option<&Value>| match v {
        Some(Value::Array(items)) => traces.extend(items.iter().map(text)),
        Some(v @ (Value::String(_) | Value::Number(_))) => traces.push(text(v)),
        _ => {}
    };
    collect(e.pointer("/context/objectWriteTraceId"));
    collect(e.get(TRACE));
    if nested_traces {
        for n in e
            .get("errors")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            collect(n.pointer("/context/objectWriteTraceId"));
        }
    }
    HubError {
        message,
        retryable,
        traces,
    }
}

/// The errors, with what each says about the records: per position, the failure (messages
/// joined; retryable only if every error naming it is); and the errors that name no record.
fn failures(
    errors: &[HubError],
    positions: &HashMap<&str, usize>,
) -> (Vec<Option<RecordOutcome>>, Vec<String>) {
    let mut named: Vec<Option<(Vec<&str>, bool)>> = vec![None; positions.len()];
    let mut loose = Vec::new();
    for error in errors {
        let mut hit = false;
        for trace in &error.traces {
            if let Some(&p) = positions.get(trace.as_str()) {
                hit = true;
                let slot = named[p].get_or_insert_with(|| (Vec::new(), true));
                if !slot.0.contains(&error.message.as_str()) {
                    slot.0.push(&error.message);
                }
                slot.1 &= error.retryable;
            }
        }
        if !hit {
            loose.push(error.message.clone());
        }
    }
    let outcomes = named
        .into_iter()
        .map(|slot| {
            slot.map(|(messages, retryable)| {
                let error = messages.join("; ");
                if retryable {
                    RecordOutcome::retry(error, None)
                } else {
                    RecordOutcome::failed(error)
                }
            })
        })
        .collect();
    (outcomes, loose)
}

pub(super) fn parse(records: &[Record], answer: &Answer) -> ChunkOutcome {
    let json = answer.json();
    if retryable_status(answer.status) {
        let detail = json.as_ref().ok().map(|v| read_error(v, false).message);
        return answer.refused(records, detail);
    }
    let json = match json {
        Ok(v) => v,
        Err(what) if answer.is_success() => return answer.unreadable(records, "hubspot", &what),
        Err(_) => return answer.rejected(records, None),
    };
    let traces = trace_ids(records);
    // Trace ids are distinct by construction.
    let positions: HashMap<&str, usize> = traces
        .iter()
        .enumerate()
        .map(|(p, t)| (t.as_str(), p))
        .collect();
    if !answer.is_success() {
        return refused_call(records, answer, &json, &positions);
    }
    let Some(object) = json.as_object() else {
        return answer.unreadable(records, "hubspot", "expected an object with \"results\"");
    };
    let results = object.get("results").and_then(Value::as_array);
    let errors = object.get("errors").and_then(Value::as_array);
    if results.is_none() && errors.is_none() {
        return answer.unreadable(records, "hubspot", "no \"results\" or \"errors\" array");
    }
    let errors: Vec<HubError> = errors
        .into_iter()
        .flatten()
        .map(|e| read_error(e, true))
        .collect();
    let (mut named, loose) = failures(&errors, &positions);
    let mut in_results = vec![false; records.len()];
    let mut echoed = false;
    for result in results.into_iter().flatten() {
        if let Some(trace) = result.get(TRACE) {
            echoed = true;
            if let Some(&p) = positions.get(text(trace).as_str()) {
                in_results[p] = true;
            }
        }
    }
    let outcomes = (0..records.len())
        .map(|p| {
            if let Some(failed) = named[p].take() {
                failed.with_retry_after(answer.retry_after)
            } else if in_results[p] {
                RecordOutcome::Succeeded
            } else if !loose.is_empty() {
                RecordOutcome::failed(format!(
                    "HubSpot reported errors it did not tie to a record: {}",
                    loose.join("; ")
                ))
            } else if echoed {
                RecordOutcome::failed("no result for this record")
            } else {
                RecordOutcome::Succeeded
            }
        })
        .collect();
    ChunkOutcome {
        records: outcomes,
        whole_chunk_retryable: false,
    }
}

/// A refused call (4xx) applied nothing: records its errors name fail with them; when some
/// are named, the others did nothing wrong and may go again.
fn refused_call(
    records: &[Record],
    answer: &Answer,
    json: &Value,
    positions: &HashMap<&str, usize>,
) -> ChunkOutcome {
    let top = read_error(json, false);
    let mut errors: Vec<HubError> = json
        .get("errors")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .map(|e| read_error(e, false))
        .collect();
    let summary = top.message.clone();
    errors.push(top);
    let (named, _) = failures(&errors, positions);
    if named.iter().all(Option::is_none) {
        return answer.rejected(records, Some(summary));
    }
    let outcomes = named
        .into_iter()
        .map(|slot| {
            slot.map(|o| o.with_retry_after(answer.retry_after))
                .unwrap_or_else(|| {
                    RecordOutcome::retry(
                        format!(
                            "not applied: HubSpot refused the call for other records in it \
                             (HTTP {}: {summary})",
                            answer.status
                        ),
                        None,
                    )
                })
        })
        .collect();
    ChunkOutcome {
        records: outcomes,
        whole_chunk_retryable: false,
    }
}
