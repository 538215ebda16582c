//! Salesforce sObject Collections (`/services/data/vXX.X/composite/sobjects`), with
//! `allOrNone: false` so that each record stands alone. The answer is an array of
//! `{"id", "success", "errors": [{"statusCode", "message", "fields"}]}` in request order.

use serde_json::{json, Value};

use super::{
    join, retryable_status, text, Answer, BatchError, ChunkOutcome, Record, RecordOutcome,
};

/// Status codes that mean "not now" rather than "never".
const RETRYABLE_CODES: &[&str] = &[
    "UNABLE_TO_LOCK_ROW",
    "REQUEST_LIMIT_EXCEEDED",
    "SERVER_UNAVAILABLE",
    "REQUEST_RUNNING_TOO_LONG",
    // Only with allOrNone: the record was rolled back because of another one.
    "ALL_OR_NONE_OPERATION_ROLLED_BACK",
];

fn retryable_code(code: &str) -> bool {
    RETRYABLE_CODES.contains(&code)
}

pub(super) fn check(payload: &Value) -> Result<(), String> {
    if payload.is_object() {
        Ok(())
    } else {
        Err(
            "a salesforce record must be a JSON object, an sObject such as \
             {\"attributes\": {\"type\": \"Account\"}, \"Name\": \"…\"}"
                .into(),
        )
    }
}

pub(super) fn body(records: &[Record]) -> Result<Value, BatchError> {
    let items = records
        .iter()
        .map(|record| {
            check(&record.payload)
                .map(|()| record.payload.clone())
                .map_err(|reason| BatchError::Record {
                    index: record.index,
                    reason,
                })
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(json!({ "allOrNone": false, "records": items }))
}

/// The `(code, "code: message (fields: …)")` of each error in a list (or a single error).
fn read_errors(v: &Value) -> Vec<(String, String)> {
    let items: Vec<&Value> = match v {
        Value::Array(items) => items.iter().collect(),
        Value::Object(_) => vec![v],
        _ => Vec::new(),
    };
    items
        .into_iter()
        .map(|e| {
            let code = e
                .get("statusCode")
                .or_else(|| e.get("errorCode"))
                .map(text)
                .unwrap_or_default();
            let message = e.get("message").map(text);
            let fields: Vec<String> = e
                .get("fields")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .map(text)
                .collect();
            let mut line = join(&[Some(&code), message.as_deref()]).unwrap_or_default();
            if !fields.is_empty() {
                line.push_str(&format!(" (fields: {})", fields.join(", ")));
            }
            (code, line)
        })
        .collect()
}

fn summary(errors: &[(String, String)]) -> Option<String> {
    let lines: Vec<&str> = errors
        .iter()
        .map(|(_, line)| line.as_str())
        .filter(|l| !l.is_empty())
        .collect();
    (!lines.is_empty()).then(|| lines.join("; "))
}

pub(super) fn parse(records: &[Record], answer: &Answer) -> ChunkOutcome {
    let json = answer.json();
    let call_errors = json.as_ref().map(read_errors).unwrap_or_default();
    let limit_exceeded = answer.status == 403
        && call_errors
            .iter()
            .any(|(code, _)| code == "REQUEST_LIMIT_EXCEEDED");
    if retryable_status(answer.status) || limit_exceeded {
        return answer.refused(records, summary(&call_errors));
    }
    if !answer.is_success() {
        return answer.rejected(records, summary(&call_errors));
    }
    let json = match json {
        Ok(v) => v,
        Err(what) => return answer.unreadable(records, "salesforce", &what),
    };
    let Some(results) = json.as_array() else {
        return answer.unreadable(
            records,
            "salesforce",
            "expected an array of results in request order",
        );
    };
    if results.len() != records.len() {
        return answer.unreadable(
            records,
            "salesforce",
            &format!("{} results for {} records", results.len(), records.len()),
        );
    }
    let outcomes = results
        .iter()
        .map(
            |result| match result.get("success").and_then(Value::as_bool) {
                Some(true) => RecordOutcome::Succeeded,
                Some(false) => {
                    let errors = result.get("errors").map(read_errors).unwrap_or_default();
                    let Some(error) = summary(&errors) else {
                        return RecordOutcome::failed(
                            "Salesforce reported a failure without an error",
                        );
                    };
                    if errors.iter().all(|(code, _)| retryable_code(code)) {
                        RecordOutcome::retry(error, answer.retry_after)
                    } else {
                        RecordOutcome::failed(error)
                    }
                }
                None => RecordOutcome::failed(format!(
                    "unreadable salesforce result (no \"success\"): {}",
                    super::clip(result.to_string(), 200)
                )),
            },
        )
        .collect();
    ChunkOutcome {
        records: outcomes,
        whole_chunk_retryable: false,
    }
}
