//! Bulk endpoints: one chunk of records as one call, and the call's answer as one outcome per
//! record.
//!
//! Pure: no I/O and no clock. The batch dispatcher claims a chunk of at most
//! [`max_chunk`] records, sends what [`build`] makes, and hands the answer to [`parse`], which
//! always returns exactly one [`RecordOutcome`] per record, in the chunk's order, whatever the
//! upstream said (garbage included).
//!
//! Formats ([`Format`], written in the batch API as `"format"`):
//!
//! - `"hubspot"`: `{"inputs": [payload + "objectWriteTraceId"]}` to a CRM `…/batch/…` endpoint.
//!   200/201: every record applied. 207: the records named by `errors[].context.
//!   objectWriteTraceId` failed, the others succeeded.
//! - `"salesforce"`: sObject Collections, `{"allOrNone": false, "records": [payload]}`; the
//!   answer is an array of `{"success", "errors"}` in request order.
//! - `"graph"`: Microsoft Graph JSON batching (`$batch`, at most 20 requests per call); every
//!   inner response has its own status and `Retry-After`, in any order.
//! - `{"generic": {…}}`: JSON pointers say where the records go in the request and where the
//!   results, their ids, statuses and errors are in the answer ([`GenericFormat`]).
//! - `{"salesforce-bulk2": {"object", "operation", …}}`: not calls but asynchronous Bulk API
//!   2.0 ingest jobs, one per chunk ([`bulk`]); [`build`] and [`parse`] do not apply.
//!
//! Whole-call answers are read the same way for every format: 408, 429 and 5xx (and
//! Salesforce's 403 `REQUEST_LIMIT_EXCEEDED`) mean nothing was applied and every record may be
//! sent again ([`ChunkOutcome::whole_chunk_retryable`]); any other non-2xx fails every record
//! with the upstream's message, except that HubSpot errors naming some records fail only those
//! and leave the others retryable (the refused call applied nothing).

pub mod bulk;
mod generic;
mod graph;
mod hubspot;
mod salesforce;

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::Value;

pub use bulk::IngestJob;
pub use generic::GenericFormat;

/// HubSpot's batch endpoints take at most 100 inputs.
pub const HUBSPOT_MAX: usize = 100;
/// Salesforce sObject Collections take at most 200 records.
pub const SALESFORCE_MAX: usize = 200;
/// Microsoft Graph's `$batch` takes at most 20 requests.
pub const GRAPH_MAX: usize = 20;

/// The bulk format of an upstream endpoint.
///
/// In JSON: `"hubspot"`, `"salesforce"`, `"graph"`, or `{"generic": {"records_pointer":
/// "/items", "results_pointer": "/results", "id_pointer": "/id", "status_pointer": "/status",
/// "error_pointer": "/error"}}` (only the first two pointers are required). A bare
/// `"generic"` is refused with a message that shows the object form.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Format {
    Hubspot,
    Salesforce,
    Graph,
    Generic(GenericFormat),
    /// Salesforce Bulk API 2.0 ingest jobs.
    SalesforceBulk2(IngestJob),
}

impl Format {
    /// The name used in the API: `hubspot`, `salesforce`, `graph` or `generic`.
    pub fn name(&self) -> &'static str {
        match self {
            Format::Hubspot => "hubspot",
            Format::Salesforce => "salesforce",
            Format::Graph => "graph",
            Format::Generic(_) => "generic",
            Format::SalesforceBulk2(_) => "salesforce-bulk2",
        }
    }

    /// Sent as asynchronous bulk jobs (create, upload, close, poll, results), not as calls.
    pub fn is_async(&self) -> bool {
        matches!(self, Format::SalesforceBulk2(_))
    }

    /// Records per chunk when the batch does not say.
    pub fn default_chunk(&self) -> usize {
        match self {
            Format::SalesforceBulk2(_) => bulk::DEFAULT_RECORDS_PER_JOB,
            _ => 100,
        }
    }

    /// Reads a format from its JSON form (see [`Format`]); the error names the field at fault.
    pub fn from_json(value: &Value) -> Result<Format, FormatError> {
        match value {
            Value::String(name) => match name.to_ascii_lowercase().as_str() {
                "hubspot" => Ok(Format::Hubspot),
                "salesforce" => Ok(Format::Salesforce),
                "graph" => Ok(Format::Graph),
                "salesforce-bulk2" => Err(FormatError(
                    "format \"salesforce-bulk2\" needs the ingest job: give it as request.body \
                     ({\"object\": \"Account\", \"operation\": \"insert\"}) or write \
                     \"format\": {\"salesforce-bulk2\": {\"object\": …, \"operation\": …}}"
                        .into(),
                )),
                "generic" => Err(FormatError(
                    "format \"generic\" needs its JSON pointers: write \"format\": {\"generic\": \
                     {\"records_pointer\": \"/items\", \"results_pointer\": \"/results\"}} \
                     (optional: id_pointer, status_pointer, error_pointer)"
                        .into(),
                )),
                other => Err(unknown_format(&format!("\"{other}\""))),
            },
            Value::Object(map) if map.len() == 1 && map.contains_key("generic") => {
                GenericFormat::from_json(&map["generic"]).map(Format::Generic)
            }
            Value::Object(map) if map.len() == 1 && map.contains_key("salesforce-bulk2") => {
                IngestJob::from_json(&map["salesforce-bulk2"], "format.salesforce-bulk2")
                    .map(Format::SalesforceBulk2)
            }
            other => Err(unknown_format(&clip(other.to_string(), 80))),
        }
    }

    /// The JSON form [`Format::from_json`] reads.
    pub fn to_json(&self) -> Value {
        match self {
            Format::Generic(g) => serde_json::json!({ "generic": g.to_json() }),
            Format::SalesforceBulk2(job) => {
                serde_json::json!({ "salesforce-bulk2": job.to_json() })
            }
            other => Value::String(other.name().into()),
        }
    }
}

fn unknown_format(got: &str) -> FormatError {
    FormatError(format!(
        "unknown batch format {got}; expected \"hubspot\", \"salesforce\", \"graph\", \
         \"salesforce-bulk2\" or {{\"generic\": {{\"records_pointer\": …, \"results_pointer\": …}}}}"
    ))
}

/// A format that could not be read; the message says what to write and names the field at
/// fault within the format (`generic.records_pointer`), not the `format` field itself.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct FormatError(pub(crate) String);

impl Serialize for Format {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.to_json().serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for Format {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let value = Value::deserialize(deserializer)?;
        Format::from_json(&value).map_err(serde::de::Error::custom)
    }
}

/// One record of a chunk.
#[derive(Debug, Clone, PartialEq)]
pub struct Record {
    /// The record's position in its batch.
    pub index: u64,
    /// The caller's id for the record.
    pub id: String,
    /// The record as the caller gave it; how it is sent depends on the format.
    pub payload: Value,
}

/// The call that carries one chunk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChunkRequest {
    /// The method to call with: the batch's own, except `POST` for Graph's `$batch`.
    pub method: String,
    /// The path to call: the batch's own, except Graph's `…/$batch` (see [`build`]).
    pub path: String,
    /// Headers this call needs (`content-type`, `accept`); they take precedence over the
    /// batch's configured headers of the same name.
    pub headers: Vec<(String, String)>,
    /// The JSON body.
    pub body: Vec<u8>,
}

/// What one call did to each record of its chunk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChunkOutcome {
    /// One per record of the chunk, in the chunk's order.
    pub records: Vec<RecordOutcome>,
    /// The call as a whole was refused with a retryable status (408, 429, 5xx, Salesforce's
    /// 403 `REQUEST_LIMIT_EXCEEDED`): nothing was applied, every record is `Failed` with
    /// `retryable: true`, and the attempt need not count against the records.
    pub whole_chunk_retryable: bool,
}

/// What one call did to one record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RecordOutcome {
    Succeeded,
    Failed {
        /// What the upstream said (or what was wrong with its answer), for the batch report.
        error: String,
        /// Sending the record again may succeed (throttled, locked, unavailable).
        retryable: bool,
        /// When to send it again, if the upstream said.
        retry_after: Option<Duration>,
    },
}

impl RecordOutcome {
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            RecordOutcome::Failed {
                retryable: true,
                ..
            }
        )
    }

    fn failed(error: impl Into<String>) -> RecordOutcome {
        RecordOutcome::Failed {
            error: clip(error.into(), MAX_ERROR),
            retryable: false,
            retry_after: None,
        }
    }

    fn retry(error: impl Into<String>, retry_after: Option<Duration>) -> RecordOutcome {
        RecordOutcome::Failed {
            error: clip(error.into(), MAX_ERROR),
            retryable: true,
            retry_after,
        }
    }

    /// A retryable failure without its own wait takes the call's.
    fn with_retry_after(self, wait: Option<Duration>) -> RecordOutcome {
        match self {
            RecordOutcome::Failed {
                error,
                retryable: true,
                retry_after: None,
            } => RecordOutcome::Failed {
                error,
                retryable: true,
                retry_after: wait,
            },
            other => other,
        }
    }
}

/// Why a chunk (or a batch, see [`validate`]) cannot be sent in a format.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BatchError {
    /// The batch's method or path does not suit the format.
    #[error("request.{field}: {reason}")]
    Request { field: &'static str, reason: String },
    /// A record's payload does not suit the format.
    #[error("records[{index}]: {reason}")]
    Record { index: u64, reason: String },
    #[error("a chunk needs at least one record")]
    Empty,
    #[error("{format} takes at most {max} records per call, not {got}")]
    TooMany {
        format: &'static str,
        max: usize,
        got: usize,
    },
}

/// The most records to send in one call: `requested` (the batch's `max_batch_size`, at least
/// 1) within the provider's cap (HubSpot 100, Salesforce 200, Graph 20; none for generic).
pub fn max_chunk(format: &Format, requested: usize) -> usize {
    let cap = match format {
        Format::Hubspot => HUBSPOT_MAX,
        Format::Salesforce => SALESFORCE_MAX,
        Format::Graph => GRAPH_MAX,
        Format::Generic(_) => usize::MAX,
        Format::SalesforceBulk2(_) => bulk::MAX_RECORDS_PER_JOB,
    };
    requested.clamp(1, cap)
}

/// Checks a batch before it is stored: its method and path, then every record's payload
/// (errors name the record by its position in `payloads`). [`build`] accepts every chunk of a
/// batch that passes.
pub fn validate<'a>(
    format: &Format,
    method: &str,
    path: &str,
    payloads: impl IntoIterator<Item = &'a Value>,
) -> Result<(), BatchError> {
    let target = Target::new(format, method, path)?;
    for (index, payload) in payloads.into_iter().enumerate() {
        let encoded = match format {
            Format::Hubspot => hubspot::check(payload),
            Format::Salesforce => salesforce::check(payload),
            Format::Graph => graph::item(&target, payload, 0).map(drop),
            Format::Generic(_) => Ok(()),
            Format::SalesforceBulk2(_) => bulk::check(payload),
        };
        encoded.map_err(|reason| BatchError::Record {
            index: index as u64,
            reason,
        })?;
    }
    Ok(())
}

/// The call that sends `records` with the batch's `method` and `path`.
///
/// - hubspot: `method path` with `{"inputs": [...]}`; each input is the payload (an object)
///   with `objectWriteTraceId` set to the record's id (to its index when ids repeat within the
///   chunk).
/// - salesforce: `method path` (POST to create, PATCH to update or upsert) with
///   `{"allOrNone": false, "records": [...]}`; each payload goes as is (it carries its own
///   `attributes`).
/// - graph: `POST <version root>/$batch` with one inner request per record, ids `"1"`…`"n"`
///   in chunk order. The version root is the path's first segment when it is `v1.0`, `beta`
///   or another `v<digit>…` (else the root of the upstream). A payload that is an object with a
///   string `url` and nothing besides `method`, `body` and `headers` is an inner request as is
///   (`method` defaults to the batch's); any other payload is the body of a request with the
///   batch's method and path (relative to the version root). A batch whose path is itself
///   `…/$batch` must give every record its `url`. A body without a `Content-Type` gets
///   `application/json`.
/// - generic: `method path` with the payloads, as an array, at `records_pointer` (objects are
///   created along the pointer; `""` makes the array the whole body).
pub fn build(
    format: &Format,
    method: &str,
    path: &str,
    records: &[Record],
) -> Result<ChunkRequest, BatchError> {
    if records.is_empty() {
        return Err(BatchError::Empty);
    }
    let max = max_chunk(format, usize::MAX);
    if records.len() > max {
        return Err(BatchError::TooMany {
            format: format.name(),
            max,
            got: records.len(),
        });
    }
    let target = Target::new(format, method, path)?;
    let body = match format {
        Format::Hubspot => hubspot::body(records)?,
        Format::Salesforce => salesforce::body(records)?,
        Format::Graph => graph::body(&target, records)?,
        Format::Generic(g) => g.body(records),
        Format::SalesforceBulk2(_) => return Err(not_a_call()),
    };
    // A `Value` has string keys and finite numbers only: writing it cannot fail.
    let body = serde_json::to_vec(&body).expect("a serde_json::Value always serializes");
    Ok(ChunkRequest {
        method: target.call_method,
        path: target.call_path,
        headers: vec![
            ("content-type".into(), "application/json".into()),
            ("accept".into(), "application/json".into()),
        ],
        body,
    })
}

/// What the call that carried `records` (as [`build`] made it) did to each of them.
///
/// `status`, `body` and `retry_after` (the response's `Retry-After`, already read) are the
/// call's answer. Never panics; the outcome has exactly one entry per record. An answer that
/// cannot be read fails every record: retryably when the status is retryable, otherwise not,
/// with an error that says what was wrong with it.
pub fn parse(
    format: &Format,
    records: &[Record],
    status: u16,
    body: &[u8],
    retry_after: Option<Duration>,
) -> ChunkOutcome {
    let answer = Answer {
        status,
        body,
        retry_after,
    };
    let outcome = match format {
        Format::Hubspot => hubspot::parse(records, &answer),
        Format::Salesforce => salesforce::parse(records, &answer),
        Format::Graph => graph::parse(records, &answer),
        Format::Generic(g) => g.parse(records, &answer),
        Format::SalesforceBulk2(_) => {
            answer.all(records, RecordOutcome::failed(not_a_call().to_string()))
        }
    };
    debug_assert_eq!(outcome.records.len(), records.len());
    outcome
}

fn not_a_call() -> BatchError {
    BatchError::Request {
        field: "format",
        reason: "salesforce-bulk2 records go as bulk jobs, not as one call per chunk".into(),
    }
}

/// The call's answer, as the formats read it.
struct Answer<'a> {
    status: u16,
    body: &'a [u8],
    retry_after: Option<Duration>,
}

impl Answer<'_> {
    fn is_success(&self) -> bool {
        (200..300).contains(&self.status)
    }

    fn json(&self) -> Result<Value, String> {
        serde_json::from_slice(self.body).map_err(|e| {
            if self.body.iter().all(u8::is_ascii_whitespace) {
                "the body is empty".to_string()
            } else {
                format!("the body is not JSON ({e}): {}", snippet(self.body))
            }
        })
    }

    /// Every record fails the same way.
    fn all(&self, records: &[Record], outcome: RecordOutcome) -> ChunkOutcome {
        ChunkOutcome {
            records: vec![outcome; records.len()],
            whole_chunk_retryable: false,
        }
    }

    /// The whole call was refused for a retryable reason: nothing was applied.
    fn refused(&self, records: &[Record], detail: Option<String>) -> ChunkOutcome {
        let error = match detail {
            Some(d) => format!("HTTP {}, nothing applied: {d}", self.status),
            None => format!("HTTP {}, nothing applied", self.status),
        };
        ChunkOutcome {
            records: vec![RecordOutcome::retry(error, self.retry_after); records.len()],
            whole_chunk_retryable: true,
        }
    }

    /// The whole call failed for a reason that sending it again will not fix.
    fn rejected(&self, records: &[Record], detail: Option<String>) -> ChunkOutcome {
        let detail = detail.unwrap_or_else(|| snippet(self.body));
        let error = if detail.is_empty() {
            format!("HTTP {}", self.status)
        } else {
            format!("HTTP {}: {detail}", self.status)
        };
        self.all(records, RecordOutcome::failed(error))
    }

    /// The answer could not be read as the format's response.
    fn unreadable(&self, records: &[Record], format: &str, what: &str) -> ChunkOutcome {
        let error = format!(
            "HTTP {}: unreadable {format} batch response: {what}",
            self.status
        );
        if retryable_status(self.status) {
            self.refused(records, Some(format!("unreadable response: {what}")))
        } else {
            self.all(records, RecordOutcome::failed(error))
        }
    }
}

/// A status that refuses a whole call without applying it and may be sent again.
fn retryable_status(status: u16) -> bool {
    status == 408 || status == 429 || (500..600).contains(&status)
}

/// Where a chunk's call goes, checked once per chunk.
struct Target {
    method: String,
    call_method: String,
    call_path: String,
    /// Graph: the batch path relative to the version root, `None` when it is `$batch` itself.
    inner_path: Option<String>,
    /// Graph: the version root (`/v1.0`), or empty.
    root: String,
}

impl Target {
    fn new(format: &Format, method: &str, path: &str) -> Result<Target, BatchError> {
        let method = method.trim().to_ascii_uppercase();
        if method.is_empty() || !method.bytes().all(|b| b.is_ascii_alphabetic()) {
            return Err(BatchError::Request {
                field: "method",
                reason: format!("\"{method}\" is not an HTTP method"),
            });
        }
        if !path.starts_with('/') {
            return Err(BatchError::Request {
                field: "path",
                reason: format!("\"{path}\" must start with \"/\""),
            });
        }
        match format {
            Format::Salesforce if method != "POST" && method != "PATCH" => {
                Err(BatchError::Request {
                    field: "method",
                    reason: format!(
                        "salesforce sObject collections take POST (create) or PATCH (update, \
                         upsert), not {method}"
                    ),
                })
            }
            Format::Graph => Ok(graph::target(method, path)),
            Format::SalesforceBulk2(_) if method != "POST" => Err(BatchError::Request {
                field: "method",
                reason: format!("a Bulk API 2.0 job is created with POST, not {method}"),
            }),
            Format::SalesforceBulk2(_) if !path.trim_end_matches('/').ends_with("/jobs/ingest") => {
                Err(BatchError::Request {
                    field: "path",
                    reason: format!(
                        "\"{path}\" is not Bulk API 2.0's ingest path; write \
                         /services/data/v62.0/jobs/ingest (with your API version)"
                    ),
                })
            }
            Format::Generic(g) => match g.check() {
                Err(e) => Err(BatchError::Request {
                    field: "format",
                    reason: e.to_string(),
                }),
                Ok(()) => Ok(Target::plain(method, path)),
            },
            _ => Ok(Target::plain(method, path)),
        }
    }

    fn plain(method: String, path: &str) -> Target {
        Target {
            call_method: method.clone(),
            method,
            call_path: path.to_string(),
            inner_path: None,
            root: String::new(),
        }
    }
}

const MAX_ERROR: usize = 1000;

/// `s` cut to at most `max` bytes (on a character boundary), marked when cut.
fn clip(mut s: String, max: usize) -> String {
    if s.len() > max {
        let mut end = max;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
        s.push('…');
    }
    s
}

/// The start of a body, as text, for an error message.
fn snippet(body: &[u8]) -> String {
    let head = &body[..body.len().min(200)];
    let text = String::from_utf8_lossy(head);
    let mut text: String = text
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    text = text.trim().to_string();
    if body.len() > head.len() {
        text.push('…');
    }
    text
}

/// A JSON value as a key or an error text: strings as they are, numbers and others as JSON.
fn text(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// `"a: b"` from the parts present.
fn join(parts: &[Option<&str>]) -> Option<String> {
    let parts: Vec<&str> = parts
        .iter()
        .flatten()
        .map(|s| s.trim())
        .filter(|s| !s.is_empty())
        .collect();
    (!parts.is_empty()).then(|| parts.join(": "))
}

impl fmt::Display for Format {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn formats_read_and_write_their_json() {
        for (text, format) in [
            ("\"hubspot\"", Format::Hubspot),
            ("\"salesforce\"", Format::Salesforce),
            ("\"graph\"", Format::Graph),
        ] {
            assert_eq!(serde_json::from_str::<Format>(text).unwrap(), format);
            assert_eq!(serde_json::to_string(&format).unwrap(), text);
        }
        let generic: Format = serde_json::from_value(json!({"generic": {
            "records_pointer": "/items", "results_pointer": "/data/results", "id_pointer": "/ref"
        }}))
        .unwrap();
        let Format::Generic(g) = &generic else {
            panic!("not generic: {generic:?}")
        };
        assert_eq!(g.records_pointer, "/items");
        assert_eq!(g.results_pointer, "/data/results");
        assert_eq!(g.id_pointer.as_deref(), Some("/ref"));
        assert_eq!(g.status_pointer, None);
        let again: Format =
            serde_json::from_str(&serde_json::to_string(&generic).unwrap()).unwrap();
        assert_eq!(again, generic);
    }

    #[test]
    fn format_errors_name_the_field() {
        let err = |v: Value| serde_json::from_value::<Format>(v).unwrap_err().to_string();
        assert!(err(json!("hubspt")).contains("unknown batch format \"hubspt\""));
        assert!(err(json!("generic")).contains("records_pointer"));
        assert!(err(json!(7)).contains("unknown batch format 7"));
        assert!(err(json!({"generic": {"results_pointer": "/r"}}))
            .contains("generic.records_pointer: missing"));
        assert!(
            err(json!({"generic": {"records_pointer": "items", "results_pointer": "/r"}}))
                .contains("generic.records_pointer: \"items\" is not a JSON pointer")
        );
        assert!(err(
            json!({"generic": {"records_pointer": "/i", "results_pointer": "/r",
                                       "id_pointr": "/id"}})
        )
        .contains("generic.id_pointr: unknown field"));
        assert!(
            err(json!({"generic": {"records_pointer": "/i", "results_pointer": 3}}))
                .contains("generic.results_pointer: must be a string")
        );
    }

    #[test]
    fn chunk_sizes_respect_provider_caps() {
        let generic = Format::Generic(GenericFormat::new("/items", "/results"));
        assert_eq!(max_chunk(&Format::Hubspot, 500), 100);
        assert_eq!(max_chunk(&Format::Hubspot, 10), 10);
        assert_eq!(max_chunk(&Format::Salesforce, 500), 200);
        assert_eq!(max_chunk(&Format::Graph, 100), 20);
        assert_eq!(max_chunk(&generic, 5000), 5000);
        assert_eq!(max_chunk(&generic, 0), 1);
    }

    #[test]
    fn bad_methods_and_paths_are_refused() {
        let rec = Record {
            index: 0,
            id: "r".into(),
            payload: json!({}),
        };
        let e = build(&Format::Hubspot, "PO ST", "/x", std::slice::from_ref(&rec)).unwrap_err();
        assert!(e.to_string().starts_with("request.method:"), "{e}");
        let e = build(&Format::Hubspot, "POST", "x", std::slice::from_ref(&rec)).unwrap_err();
        assert!(e.to_string().starts_with("request.path:"), "{e}");
        let e = build(&Format::Salesforce, "DELETE", "/x", &[rec]).unwrap_err();
        assert!(e.to_string().contains("POST (create) or PATCH"), "{e}");
        assert_eq!(
            build(&Format::Hubspot, "POST", "/x", &[]),
            Err(BatchError::Empty)
        );
    }

    #[test]
    fn clip_cuts_on_a_char_boundary() {
        assert_eq!(clip("ééé".into(), 3), "é…");
        assert_eq!(clip("abc".into(), 3), "abc");
    }
}
