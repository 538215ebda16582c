//! Any JSON bulk endpoint, described by JSON pointers (RFC 6901).

use std::collections::{HashMap, VecDeque};

use serde_json::{Map, Value};

use super::{
    clip, retryable_status, text, Answer, ChunkOutcome, FormatError, Record, RecordOutcome,
};

/// A bulk endpoint described by JSON pointers.
///
/// Request: the payloads, as an array, at `records_pointer` of the body (`""`: the body is the
/// array). Answer (2xx): the results array at `results_pointer`. A result belongs to the record
/// whose id is at `id_pointer` in the result (a string or a number), else to the record at the
/// same position. Within a result, `status_pointer` reads a number (2xx succeeded; 408, 429 and
/// 5xx retryable; others failed), a numeric string, a boolean, or a word (`ok`, `success`,
/// `succeeded`, `created`, `updated` / `error`, `failed`, `failure`); `error_pointer` reads the
/// error (a string, or any JSON, shown as is). A result without a status failed if it has an
/// error and succeeded otherwise. On a refused call, `error_pointer` is also read from the
/// whole body for the message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GenericFormat {
    pub records_pointer: String,
    pub results_pointer: String,
    pub id_pointer: Option<String>,
    pub status_pointer: Option<String>,
    pub error_pointer: Option<String>,
}

const FIELDS: &[&str] = &[
    "records_pointer",
    "results_pointer",
    "id_pointer",
    "status_pointer",
    "error_pointer",
];

fn pointer_error(name: &str, pointer: &str) -> Option<FormatError> {
    let valid = pointer.is_empty()
        || (pointer.starts_with('/')
            && pointer
                .split('~')
                .skip(1)
                .all(|after| after.starts_with(['0', '1'])));
    (!valid).then(|| {
        FormatError(format!(
            "generic.{name}: \"{pointer}\" is not a JSON pointer; write \"\" or a path that \
             starts with \"/\", such as \"/items\" (\"~1\" for a \"/\" in a key, \"~0\" for \
             \"~\")"
        ))
    })
}

impl GenericFormat {
    /// Records at `records_pointer`, results at `results_pointer`, matched by position, every
    /// result a success.
    pub fn new(records_pointer: impl Into<String>, results_pointer: impl Into<String>) -> Self {
        GenericFormat {
            records_pointer: records_pointer.into(),
            results_pointer: results_pointer.into(),
            id_pointer: None,
            status_pointer: None,
            error_pointer: None,
        }
    }

    /// Checks every pointer (they are checked when read from JSON; fields are public).
    pub fn check(&self) -> Result<(), FormatError> {
        let optional = [
            ("id_pointer", &self.id_pointer),
            ("status_pointer", &self.status_pointer),
            ("error_pointer", &self.error_pointer),
        ];
        [
            ("records_pointer", Some(&self.records_pointer)),
            ("results_pointer", Some(&self.results_pointer)),
        ]
        .into_iter()
        .chain(optional.into_iter().map(|(n, p)| (n, p.as_ref())))
        .filter_map(|(name, p)| pointer_error(name, p?))
        .next()
        .map_or(Ok(()), Err)
    }

    /// Reads the object under `"generic"`; errors name the field (`generic.records_pointer`).
    pub fn from_json(value: &Value) -> Result<GenericFormat, FormatError> {
        let Value::Object(map) = value else {
            return Err(FormatError(
                "generic: must be an object of JSON pointers, such as {\"records_pointer\": \
                 \"/items\", \"results_pointer\": \"/results\"}"
                    .into(),
            ));
        };
        if let Some(key) = map.keys().find(|k| !FIELDS.contains(&k.as_str())) {
            return Err(FormatError(format!(
                "generic.{key}: unknown field; expected one of {}",
                FIELDS.join(", ")
            )));
        }
        let field = |name: &str| -> Result<Option<String>, FormatError> {
            match map.get(name) {
                None | Some(Value::Null) => Ok(None),
                Some(Value::String(p)) => match pointer_error(name, p) {
                    Some(e) => Err(e),
                    None => Ok(Some(p.clone())),
                },
                Some(_) => Err(FormatError(format!(
                    "generic.{name}: must be a string (a JSON pointer such as \"/items\")"
                ))),
            }
        };
        let required = |name: &str, what: &str| -> Result<String, FormatError> {
            field(name)?.ok_or_else(|| {
                FormatError(format!(
                    "generic.{name}: missing; the JSON pointer {what}, such as \"/items\" (\"\" \
                     for the whole body)"
                ))
            })
        };
        Ok(GenericFormat {
            records_pointer: required(
                "records_pointer",
                "where the records array goes in the request body",
            )?,
            results_pointer: required(
                "results_pointer",
                "where the results array is in the response body",
            )?,
            id_pointer: field("id_pointer")?,
            status_pointer: field("status_pointer")?,
            error_pointer: field("error_pointer")?,
        })
    }

    /// The object [`GenericFormat::from_json`] reads.
    pub fn to_json(&self) -> Value {
        let mut map = Map::new();
        map.insert(
            "records_pointer".into(),
            Value::String(self.records_pointer.clone()),
        );
        map.insert(
            "results_pointer".into(),
            Value::String(self.results_pointer.clone()),
        );
        for (name, value) in [
            ("id_pointer", &self.id_pointer),
            ("status_pointer", &self.status_pointer),
            ("error_pointer", &self.error_pointer),
        ] {
            if let Some(v) = value {
                map.insert(name.into(), Value::String(v.clone()));
            }
        }
        Value::Object(map)
    }

    pub(super) fn body(&self, records: &[Record]) -> Value {
        let mut body = Value::Array(records.iter().map(|r| r.payload.clone()).collect());
        if self.records_pointer.is_empty() {
            return body;
        }
        let tokens: Vec<String> = self.records_pointer[1..]
            .split('/')
            .map(|t| t.replace("~1", "/").replace("~0", "~"))
            .collect();
        for token in tokens.into_iter().rev() {
            let mut map = Map::new();
            map.insert(token, body);
            body = Value::Object(map);
        }
        body
    }

    fn error_at(&self, value: &Value) -> Option<String> {
        let error = value.pointer(self.error_pointer.as_deref()?)?;
        let present = match error {
            Value::Null | Value::Bool(false) => false,
            Value::String(s) => !s.trim().is_empty(),
            Value::Array(a) => !a.is_empty(),
            Value::Object(o) => !o.is_empty(),
            _ => true,
        };
        present.then(|| clip(text(error), 500))
    }

    fn outcome(&self, result: &Value, wait: Option<std::time::Duration>) -> RecordOutcome {
        let error = self.error_at(result);
        let status = self
            .status_pointer
            .as_deref()
            .and_then(|p| result.pointer(p))
            .filter(|s| !s.is_null());
        let with = |head: String| match &error {
            Some(e) => format!("{head}: {e}"),
            None => head,
        };
        let code = match status {
            None => {
                return match error {
                    Some(e) => RecordOutcome::failed(e),
                    None => RecordOutcome::Succeeded,
                }
            }
            Some(Value::Bool(true)) => return RecordOutcome::Succeeded,
            Some(Value::Bool(false)) => {
                return RecordOutcome::failed(error.unwrap_or_else(|| "failed".into()))
            }
            Some(Value::Number(n)) => n.as_u64(),
            Some(Value::String(s)) => {
                let word = s.trim().to_ascii_lowercase();
                match word.as_str() {
                    "ok" | "success" | "succeeded" | "created" | "updated" => {
                        return RecordOutcome::Succeeded
                    }
                    "error" | "failed" | "failure" => {
                        return RecordOutcome::failed(with(format!("status \"{s}\"")))
                    }
                    _ => word.parse().ok(),
                }
            }
            Some(_) => None,
        };
        match code.filter(|c| (100..1000).contains(c)) {
            Some(c) if (200..300).contains(&c) => RecordOutcome::Succeeded,
            Some(c) if retryable_status(c as u16) => {
                RecordOutcome::retry(with(format!("status {c}")), wait)
            }
            Some(c) => RecordOutcome::failed(with(format!("status {c}"))),
            None => RecordOutcome::failed(with(format!(
                "unrecognised status {}",
                clip(status.map(Value::to_string).unwrap_or_default(), 100)
            ))),
        }
    }

    pub(super) fn parse(&self, records: &[Record], answer: &Answer) -> ChunkOutcome {
        let json = answer.json();
        if retryable_status(answer.status) {
            let detail = json.ok().and_then(|v| self.error_at(&v));
            return answer.refused(records, detail);
        }
        if !answer.is_success() {
            let detail = json.ok().and_then(|v| self.error_at(&v));
            return answer.rejected(records, detail);
        }
        let json = match json {
            Ok(v) => v,
            Err(what) => return answer.unreadable(records, "generic", &what),
        };
        let Some(results) = json
            .pointer(&self.results_pointer)
            .and_then(Value::as_array)
        else {
            return answer.unreadable(
                records,
                "generic",
                &format!("no results array at \"{}\"", self.results_pointer),
            );
        };
        let mut outcomes: Vec<Option<RecordOutcome>> = vec![None; records.len()];
        match &self.id_pointer {
            Some(id_pointer) => {
                let mut positions: HashMap<&str, VecDeque<usize>> = HashMap::new();
                for (p, record) in records.iter().enumerate() {
                    positions
                        .entry(record.id.as_str())
                        .or_default()
                        .push_back(p);
                }
                for result in results {
                    let Some(id) = result
                        .pointer(id_pointer)
                        .filter(|v| v.is_string() || v.is_number())
                    else {
                        continue;
                    };
                    if let Some(p) = positions
                        .get_mut(text(id).as_str())
                        .and_then(VecDeque::pop_front)
                    {
                        outcomes[p] = Some(self.outcome(result, answer.retry_after));
                    }
                }
            }
            None => {
                if results.len() > records.len() {
                    return answer.unreadable(
                        records,
                        "generic",
                        &format!("{} results for {} records", results.len(), records.len()),
                    );
                }
                for (slot, result) in outcomes.iter_mut().zip(results) {
                    *slot = Some(self.outcome(result, answer.retry_after));
                }
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
}
