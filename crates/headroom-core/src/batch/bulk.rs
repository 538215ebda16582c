//! Asynchronous bulk APIs: a job is created, its records uploaded, the job closed, its state
//! polled until the API has processed it, and its per-record results downloaded. Salesforce
//! Bulk API 2.0 ingest is the one implemented ([`SalesforceBulk2`]).
//!
//! Pure: each step is a [`BulkCall`] to make and a reader of its answer; the batch runner
//! makes the calls (through the governor), stores the job's phase between them and resumes it
//! after a crash. Another API (HubSpot imports, BigQuery load jobs) would implement
//! [`AsyncBulkApi`]: how to create, upload, close, poll, abort, and which result calls map
//! back to the records.

use std::collections::HashMap;
use std::time::Duration;

use serde_json::{json, Map, Value};

use super::{clip, snippet, BatchError, FormatError, Record, RecordOutcome};

/// Records per Salesforce ingest job when the batch does not say (Salesforce counts every
/// 10,000 records of a job as one batch against its daily batch allocation).
pub const DEFAULT_RECORDS_PER_JOB: usize = 10_000;
/// The most records Headroom puts in one ingest job.
pub const MAX_RECORDS_PER_JOB: usize = 100_000;
/// Salesforce takes at most 150 MB of base64 per upload, which it says is about 100 MB of CSV.
pub const MAX_UPLOAD_BYTES: usize = 100 << 20;

/// One HTTP call of a bulk job's life.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BulkCall {
    pub method: &'static str,
    pub path: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl BulkCall {
    fn json(method: &'static str, path: String, body: Option<Value>) -> BulkCall {
        let mut headers = vec![("accept".to_string(), "application/json".to_string())];
        let body = match body {
            Some(b) => {
                headers.push(("content-type".into(), "application/json".into()));
                serde_json::to_vec(&b).expect("a serde_json::Value always serializes")
            }
            None => Vec::new(),
        };
        BulkCall {
            method,
            path,
            headers,
            body,
        }
    }
}

/// Where a job is in the API's processing, in words common to bulk APIs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JobState {
    /// Created; takes data.
    Open,
    /// Closed, waiting for or under processing.
    Processing,
    /// Processed; every record has a result.
    Complete,
    /// The job failed as a whole; its unprocessed records were not applied.
    Failed,
    /// Aborted (by Headroom on a cancel, or by someone else).
    Aborted,
}

impl JobState {
    pub fn is_final(self) -> bool {
        matches!(
            self,
            JobState::Complete | JobState::Failed | JobState::Aborted
        )
    }
}

/// What a job's status call said.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobStatus {
    pub state: JobState,
    /// The API's own name for the state (`InProgress`), for the batch view.
    pub api_state: String,
    /// Why the job failed, if it says.
    pub error: Option<String>,
    pub processed: Option<u64>,
    pub failed: Option<u64>,
}

/// A step's answer that was not what the step needed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct AnswerError(pub String);

/// An asynchronous bulk API, as pure call builders and answer readers.
pub trait AsyncBulkApi {
    /// The call that creates a job.
    fn create(&self) -> BulkCall;
    /// The job's id in the create call's 2xx answer.
    fn created(&self, body: &[u8]) -> Result<String, AnswerError>;
    /// The call that uploads `records` to `job` (one upload per job).
    fn upload(&self, job: &str, records: &[Record]) -> Result<BulkCall, BatchError>;
    /// The call that tells the API the upload is complete, so processing starts.
    fn close(&self, job: &str) -> BulkCall;
    /// The call that aborts a job.
    fn abort(&self, job: &str) -> BulkCall;
    /// The call that reads a job's state.
    fn status(&self, job: &str) -> BulkCall;
    /// Reads the status call's 2xx answer (also the close and abort calls' answers).
    fn read_status(&self, body: &[u8]) -> Result<JobStatus, AnswerError>;
    /// The calls whose answers say what happened to each record of a final job.
    fn results(&self, job: &str) -> Vec<BulkCall>;
    /// One outcome per record, in `records`' order, from the answers of [`Self::results`] (in
    /// that order) and the job's final status.
    fn outcomes(
        &self,
        records: &[Record],
        status: &JobStatus,
        results: &[&[u8]],
    ) -> Vec<RecordOutcome>;
}

/// What a Salesforce ingest job does to each row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operation {
    Insert,
    Update,
    Upsert,
    Delete,
    HardDelete,
}

impl Operation {
    fn parse(s: &str) -> Option<Operation> {
        Some(match s {
            "insert" => Operation::Insert,
            "update" => Operation::Update,
            "upsert" => Operation::Upsert,
            "delete" => Operation::Delete,
            "hardDelete" => Operation::HardDelete,
            _ => return None,
        })
    }

    fn as_str(self) -> &'static str {
        match self {
            Operation::Insert => "insert",
            Operation::Update => "update",
            Operation::Upsert => "upsert",
            Operation::Delete => "delete",
            Operation::HardDelete => "hardDelete",
        }
    }
}

/// The ingest job a batch's records go to: Salesforce's create-job body (`object`,
/// `operation`, `externalIdFieldName`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IngestJob {
    pub object: String,
    pub operation: Operation,
    /// Upsert only: the field that matches records.
    pub external_id_field: Option<String>,
}

impl IngestJob {
    /// Reads Salesforce's create-job body. `contentType`, `lineEnding` and `columnDelimiter`
    /// may be given only as Headroom writes the CSV (`CSV`, `LF`, `COMMA`). Errors name the
    /// field, under `prefix` (`request.body`).
    pub fn from_json(value: &Value, prefix: &str) -> Result<IngestJob, FormatError> {
        let err = |field: &str, reason: String| FormatError(format!("{prefix}.{field}: {reason}"));
        let Some(map) = value.as_object() else {
            return Err(FormatError(format!(
                "{prefix}: the ingest job to create, such as {{\"object\": \"Account\", \
                 \"operation\": \"insert\"}}"
            )));
        };
        let text = |field: &str| -> Result<Option<&str>, FormatError> {
            match map.get(field) {
                None | Some(Value::Null) => Ok(None),
                Some(Value::String(s)) if !s.trim().is_empty() => Ok(Some(s.trim())),
                Some(_) => Err(err(field, "must be a non-empty string".into())),
            }
        };
        for key in map.keys() {
            if !matches!(
                key.as_str(),
                "object"
                    | "operation"
                    | "externalIdFieldName"
                    | "contentType"
                    | "lineEnding"
                    | "columnDelimiter"
            ) {
                return Err(err(
                    key,
                    "unknown field; the job takes object, operation and externalIdFieldName".into(),
                ));
            }
        }
        for (field, only) in [
            ("contentType", "CSV"),
            ("lineEnding", "LF"),
            ("columnDelimiter", "COMMA"),
        ] {
            if let Some(v) = text(field)? {
                if v != only {
                    return Err(err(
                        field,
                        format!("Headroom writes the CSV itself with {only}; leave it out"),
                    ));
                }
            }
        }
        let object = text("object")?
            .ok_or_else(|| err("object", "missing; the sObject, such as \"Account\"".into()))?;
        if !object
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_')
        {
            return Err(err(
                "object",
                format!("\"{object}\" is not an sObject name"),
            ));
        }
        let operation = text("operation")?.ok_or_else(|| {
            err(
                "operation",
                "missing; insert, update, upsert, delete or hardDelete".into(),
            )
        })?;
        let operation = Operation::parse(operation).ok_or_else(|| {
            err(
                "operation",
                format!("\"{operation}\" is not insert, update, upsert, delete or hardDelete"),
            )
        })?;
        let external_id_field = text("externalIdFieldName")?.map(str::to_string);
        match (operation, &external_id_field) {
            (Operation::Upsert, None) => {
                return Err(err(
                    "externalIdFieldName",
                    "missing; an upsert matches records on an external id field".into(),
                ))
            }
            (Operation::Upsert, Some(_)) | (_, None) => {}
            (_, Some(_)) => {
                return Err(err(
                    "externalIdFieldName",
                    "only an upsert takes an external id field".into(),
                ))
            }
        }
        Ok(IngestJob {
            object: object.to_string(),
            operation,
            external_id_field,
        })
    }

    /// The create-job body, as stored and as sent.
    pub fn to_json(&self) -> Value {
        let mut map = Map::new();
        map.insert("object".into(), json!(self.object));
        map.insert("operation".into(), json!(self.operation.as_str()));
        if let Some(f) = &self.external_id_field {
            map.insert("externalIdFieldName".into(), json!(f));
        }
        Value::Object(map)
    }

    /// The caller's id for a record: its `Id` (update, delete) or external id (upsert), when
    /// it has one.
    pub fn record_id(&self, payload: &Value) -> Option<String> {
        let field = match self.operation {
            Operation::Upsert => self.external_id_field.as_deref()?,
            _ => "Id",
        };
        match payload.get(field)? {
            Value::String(s) if !s.is_empty() => Some(s.clone()),
            Value::Number(n) => Some(n.to_string()),
            _ => None,
        }
    }
}

/// A record is one CSV row: an object of field names to strings, numbers, booleans or null
/// (`null` leaves the field as it is, as an empty CSV field does; Salesforce's `#N/A` blanks
/// it).
pub(super) fn check(payload: &Value) -> Result<(), String> {
    let Some(map) = payload.as_object() else {
        return Err("a salesforce-bulk2 record must be a JSON object of field values".into());
    };
    if map.is_empty() {
        return Err("the record has no fields".into());
    }
    for (k, v) in map {
        if k.is_empty() || k.chars().any(|c| c.is_control() || c == ',' || c == '"') {
            return Err(format!("\"{k}\" is not a field name"));
        }
        if k.starts_with("sf__") {
            return Err(format!(
                "\"{k}\": Salesforce names its own result columns sf__…; a field cannot"
            ));
        }
        if matches!(v, Value::Array(_) | Value::Object(_)) {
            return Err(format!(
                "{k}: a CSV field takes a string, number, boolean or null; for a relationship \
                 write the field as \"Account.External_Id__c\""
            ));
        }
    }
    Ok(())
}

/// The CSV text of one field value.
fn cell(value: Option<&Value>) -> String {
    match value {
        None | Some(Value::Null) => String::new(),
        Some(Value::String(s)) => s.clone(),
        Some(other) => other.to_string(),
    }
}

/// The columns of a set of records: every field, in the order first seen (a record's own
/// fields in name order).
fn columns(records: &[Record]) -> Vec<String> {
    let mut seen: HashMap<&str, ()> = HashMap::new();
    let mut out = Vec::new();
    for r in records {
        if let Some(map) = r.payload.as_object() {
            for k in map.keys() {
                if seen.insert(k, ()).is_none() {
                    out.push(k.clone());
                }
            }
        }
    }
    out
}

fn row(record: &Record, columns: &[String]) -> Vec<String> {
    columns
        .iter()
        .map(|c| cell(record.payload.get(c)))
        .collect()
}

/// The records as one CSV upload (header, then a row per record, every field quoted, LF).
pub fn to_csv(records: &[Record]) -> Result<Vec<u8>, BatchError> {
    for r in records {
        check(&r.payload).map_err(|reason| BatchError::Record {
            index: r.index,
            reason,
        })?;
    }
    let columns = columns(records);
    let mut w = csv::WriterBuilder::new()
        .quote_style(csv::QuoteStyle::Always)
        .terminator(csv::Terminator::Any(b'\n'))
        .from_writer(Vec::with_capacity(records.len() * 64));
    // Writing to a Vec cannot fail.
    w.write_record(&columns).expect("CSV into memory");
    for r in records {
        w.write_record(row(r, &columns)).expect("CSV into memory");
    }
    let bytes = w.into_inner().expect("CSV into memory");
    if bytes.len() > MAX_UPLOAD_BYTES {
        return Err(BatchError::Request {
            field: "max_batch_size",
            reason: format!(
                "{} records make {} MB of CSV, over Salesforce's {} MB per job; use a smaller \
                 max_batch_size",
                records.len(),
                bytes.len() >> 20,
                MAX_UPLOAD_BYTES >> 20
            ),
        });
    }
    Ok(bytes)
}

/// Salesforce Bulk API 2.0 ingest, under a base path such as
/// `/services/data/v62.0/jobs/ingest`.
pub struct SalesforceBulk2<'a> {
    pub job: &'a IngestJob,
    pub base: &'a str,
}

/// Error codes that mean "not now" rather than "never".
const RETRYABLE_CODES: &[&str] = &[
    "UNABLE_TO_LOCK_ROW",
    "REQUEST_LIMIT_EXCEEDED",
    "SERVER_UNAVAILABLE",
    "REQUEST_RUNNING_TOO_LONG",
];

fn retryable_error(error: &str) -> bool {
    let code = error.split(':').next().unwrap_or("").trim();
    RETRYABLE_CODES.contains(&code) || RETRYABLE_CODES.iter().any(|c| error.contains(c))
}

impl SalesforceBulk2<'_> {
    fn job_path(&self, job: &str) -> String {
        format!("{}/{job}", self.base.trim_end_matches('/'))
    }
}

impl AsyncBulkApi for SalesforceBulk2<'_> {
    fn create(&self) -> BulkCall {
        let mut body = self.job.to_json();
        body["contentType"] = json!("CSV");
        body["lineEnding"] = json!("LF");
        body["columnDelimiter"] = json!("COMMA");
        BulkCall::json("POST", self.base.to_string(), Some(body))
    }

    fn created(&self, body: &[u8]) -> Result<String, AnswerError> {
        read_created(body)
    }

    fn upload(&self, job: &str, records: &[Record]) -> Result<BulkCall, BatchError> {
        Ok(BulkCall {
            method: "PUT",
            path: format!("{}/batches", self.job_path(job)),
            headers: vec![
                ("content-type".into(), "text/csv".into()),
                ("accept".into(), "application/json".into()),
            ],
            body: to_csv(records)?,
        })
    }

    fn close(&self, job: &str) -> BulkCall {
        BulkCall::json(
            "PATCH",
            self.job_path(job),
            Some(json!({"state": "UploadComplete"})),
        )
    }

    fn abort(&self, job: &str) -> BulkCall {
        BulkCall::json(
            "PATCH",
            self.job_path(job),
            Some(json!({"state": "Aborted"})),
        )
    }

    fn status(&self, job: &str) -> BulkCall {
        BulkCall::json("GET", self.job_path(job), None)
    }

    fn read_status(&self, body: &[u8]) -> Result<JobStatus, AnswerError> {
        read_job_status(body)
    }

    fn results(&self, job: &str) -> Vec<BulkCall> {
        let base = self.job_path(job);
        ["successfulResults", "failedResults", "unprocessedrecords"]
            .into_iter()
            .map(|what| {
                let mut call = BulkCall::json("GET", format!("{base}/{what}/"), None);
                call.headers = vec![("accept".into(), "text/csv".into())];
                call
            })
            .collect()
    }

    fn outcomes(
        &self,
        records: &[Record],
        status: &JobStatus,
        results: &[&[u8]],
    ) -> Vec<RecordOutcome> {
        let columns = columns(records);
        // Rows come back in any order, with the fields as uploaded: records are found by
        // their row's content (identical rows are interchangeable).
        let mut by_row: HashMap<Vec<String>, Vec<usize>> = HashMap::new();
        for (i, r) in records.iter().enumerate().rev() {
            by_row.entry(row(r, &columns)).or_default().push(i);
        }
        let mut out: Vec<Option<RecordOutcome>> = vec![None; records.len()];
        let mut unreadable = Vec::new();
        for (file, body) in results.iter().enumerate() {
            let read = read_results(body, &columns, |extra, fields| {
                let Some(i) = by_row.get_mut(&fields).and_then(Vec::pop) else {
                    return;
                };
                out[i] = Some(match file {
                    0 => RecordOutcome::Succeeded,
                    1 => {
                        let error = extra.get("sf__Error").cloned().unwrap_or_default();
                        let error = if error.is_empty() {
                            "Salesforce reported a failure without an error".to_string()
                        } else {
                            error
                        };
                        if retryable_error(&error) {
                            RecordOutcome::retry(error, None)
                        } else {
                            RecordOutcome::failed(error)
                        }
                    }
                    _ => unprocessed(status),
                });
            });
            if let Err(e) = read {
                unreadable.push(e);
            }
        }
        let missing = if unreadable.is_empty() {
            format!(
                "the bulk job's results ({}) do not list this record; it may have been applied",
                status.api_state
            )
        } else {
            format!(
                "the bulk job's results cannot be read ({}); the record may have been applied",
                unreadable.join("; ")
            )
        };
        out.into_iter()
            .map(|o| o.unwrap_or_else(|| RecordOutcome::failed(missing.clone())))
            .collect()
    }
}

/// The job's id in a create answer.
fn read_created(body: &[u8]) -> Result<String, AnswerError> {
    let v: Value = serde_json::from_slice(body).map_err(|e| {
        AnswerError(format!(
            "the created job is not JSON ({e}): {}",
            snippet(body)
        ))
    })?;
    match v.get("id").and_then(Value::as_str) {
        Some(id)
            if !id.is_empty()
                && id.len() <= 64
                && id.chars().all(|c| c.is_ascii_alphanumeric()) =>
        {
            Ok(id.to_string())
        }
        _ => Err(AnswerError(format!(
            "the created job has no usable \"id\": {}",
            snippet(body)
        ))),
    }
}

/// A job's state from its info (create, status, close and abort answers).
fn read_job_status(body: &[u8]) -> Result<JobStatus, AnswerError> {
    let v: Value = serde_json::from_slice(body).map_err(|e| {
        AnswerError(format!(
            "the job's status is not JSON ({e}): {}",
            snippet(body)
        ))
    })?;
    let api_state = v.get("state").and_then(Value::as_str).ok_or_else(|| {
        AnswerError(format!(
            "the job's status has no \"state\": {}",
            snippet(body)
        ))
    })?;
    let state = match api_state {
        "Open" => JobState::Open,
        "UploadComplete" | "InProgress" => JobState::Processing,
        "JobComplete" => JobState::Complete,
        "Failed" => JobState::Failed,
        "Aborted" => JobState::Aborted,
        other => {
            return Err(AnswerError(format!(
                "the job's state \"{}\" is not one Bulk API 2.0 has",
                clip(other.to_string(), 40)
            )))
        }
    };
    let count = |k: &str| v.get(k).and_then(Value::as_u64);
    Ok(JobStatus {
        state,
        api_state: api_state.to_string(),
        error: v
            .get("errorMessage")
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
            .map(|s| clip(s.to_string(), 500)),
        processed: count("numberRecordsProcessed"),
        failed: count("numberRecordsFailed"),
    })
}

/// What an unprocessed record's outcome is, by the job's end.
fn unprocessed(status: &JobStatus) -> RecordOutcome {
    match (status.state, &status.error) {
        (JobState::Failed, Some(e)) if !retryable_error(e) => {
            RecordOutcome::failed(format!("the bulk job failed: {e}"))
        }
        (JobState::Failed, None) => RecordOutcome::failed("the bulk job failed without a reason"),
        (_, error) => RecordOutcome::retry(
            match error {
                Some(e) => format!("not processed by the bulk job ({}): {e}", status.api_state),
                None => format!("not processed by the bulk job ({})", status.api_state),
            },
            None,
        ),
    }
}

/// Reads a results CSV: for each row, its `sf__*` columns and its original fields in
/// `columns`' order. An empty body is no rows.
fn read_results(
    body: &[u8],
    columns: &[String],
    mut each: impl FnMut(&HashMap<String, String>, Vec<String>),
) -> Result<(), String> {
    let body = body.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(body);
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(());
    }
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(true)
        .flexible(false)
        .from_reader(body);
    let header = reader
        .headers()
        .map_err(|e| format!("CSV header: {e}"))?
        .clone();
    let mut extra_at = Vec::new();
    let mut index: HashMap<&str, usize> = HashMap::new();
    for (i, h) in header.iter().enumerate() {
        if h.starts_with("sf__") {
            extra_at.push((h.to_string(), i));
        } else {
            index.insert(h, i);
        }
    }
    let at: Vec<Option<usize>> = columns
        .iter()
        .map(|c| index.get(c.as_str()).copied())
        .collect();
    let mut extra = HashMap::new();
    for (n, record) in reader.records().enumerate() {
        let record = record.map_err(|e| format!("CSV row {}: {e}", n + 1))?;
        extra.clear();
        for (name, i) in &extra_at {
            extra.insert(name.clone(), record.get(*i).unwrap_or("").to_string());
        }
        let fields = at
            .iter()
            .map(|i| i.and_then(|i| record.get(i)).unwrap_or("").to_string())
            .collect();
        each(&extra, fields);
    }
    Ok(())
}

/// A Bulk API 2.0 query job (a bulk export): Salesforce's create-query-job body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueryJob {
    /// `query` or `queryAll` (deleted and archived records too).
    pub operation: String,
    /// The SOQL query.
    pub query: String,
}

impl QueryJob {
    /// Reads `{"operation": "query" | "queryAll", "query": "SELECT …"}`; errors name the field,
    /// under `prefix`.
    pub fn from_json(value: &Value, prefix: &str) -> Result<QueryJob, FormatError> {
        let err = |field: &str, reason: &str| FormatError(format!("{prefix}.{field}: {reason}"));
        let Some(map) = value.as_object() else {
            return Err(FormatError(format!(
                "{prefix}: the query job to create, such as {{\"operation\": \"query\", \
                 \"query\": \"SELECT Id, Name FROM Account\"}}"
            )));
        };
        if let Some(key) = map.keys().find(|k| {
            !matches!(
                k.as_str(),
                "operation" | "query" | "contentType" | "lineEnding" | "columnDelimiter"
            )
        }) {
            return Err(err(key, "unknown field; the job takes operation and query"));
        }
        for (field, only) in [
            ("contentType", "CSV"),
            ("lineEnding", "LF"),
            ("columnDelimiter", "COMMA"),
        ] {
            if let Some(v) = map.get(field) {
                if v.as_str() != Some(only) {
                    return Err(err(field, &format!("Headroom reads {only}; leave it out")));
                }
            }
        }
        let operation = match map.get("operation") {
            None => "query".to_string(),
            Some(Value::String(s)) if s == "query" || s == "queryAll" => s.clone(),
            Some(_) => return Err(err("operation", "must be \"query\" or \"queryAll\"")),
        };
        let query = match map.get("query") {
            Some(Value::String(q)) if !q.trim().is_empty() => q.trim().to_string(),
            _ => {
                return Err(err(
                    "query",
                    "missing; the SOQL query, such as \"SELECT Id FROM Account\"",
                ))
            }
        };
        if !query
            .get(..7)
            .is_some_and(|w| w.eq_ignore_ascii_case("select "))
        {
            return Err(err("query", "must be a SOQL SELECT"));
        }
        if query.len() > 100_000 {
            return Err(err("query", "longer than SOQL's 100,000 characters"));
        }
        Ok(QueryJob { operation, query })
    }

    /// The create-job body, as stored and as sent.
    pub fn to_json(&self) -> Value {
        json!({"operation": self.operation, "query": self.query})
    }
}

/// Salesforce Bulk API 2.0 query jobs, under a base path such as
/// `/services/data/v62.0/jobs/query`: create, poll, then read the results a page at a time,
/// each page naming the next with its `Sforce-Locator` header.
pub struct SalesforceQuery<'a> {
    pub job: &'a QueryJob,
    pub base: &'a str,
}

impl SalesforceQuery<'_> {
    fn job_path(&self, job: &str) -> String {
        format!("{}/{job}", self.base.trim_end_matches('/'))
    }

    pub fn create(&self) -> BulkCall {
        let mut body = self.job.to_json();
        body["contentType"] = json!("CSV");
        body["lineEnding"] = json!("LF");
        body["columnDelimiter"] = json!("COMMA");
        BulkCall::json("POST", self.base.to_string(), Some(body))
    }

    pub fn created(&self, body: &[u8]) -> Result<String, AnswerError> {
        read_created(body)
    }

    pub fn status(&self, job: &str) -> BulkCall {
        BulkCall::json("GET", self.job_path(job), None)
    }

    pub fn read_status(&self, body: &[u8]) -> Result<JobStatus, AnswerError> {
        read_job_status(body)
    }

    pub fn abort(&self, job: &str) -> BulkCall {
        BulkCall::json(
            "PATCH",
            self.job_path(job),
            Some(json!({"state": "Aborted"})),
        )
    }

    /// The call for one page of results: the first (`locator` none) or the one a previous
    /// page named.
    pub fn page(&self, job: &str, locator: Option<&str>, max_records: u32) -> BulkCall {
        let mut path = format!(
            "{}/results?maxRecords={}",
            self.job_path(job),
            max_records.max(1)
        );
        if let Some(l) = locator {
            path.push_str("&locator=");
            path.push_str(l);
        }
        let mut call = BulkCall::json("GET", path, None);
        call.headers = vec![("accept".into(), "text/csv".into())];
        call
    }

    /// The next page's locator from a page's `Sforce-Locator` header: `None` after the last
    /// page (`null`). A locator that is not a short opaque token is refused (it goes into
    /// the next call's query string).
    pub fn next_locator(&self, header: Option<&str>) -> Result<Option<String>, AnswerError> {
        match header.map(str::trim) {
            None | Some("") | Some("null") => Ok(None),
            Some(l)
                if l.len() <= 256
                    && l.bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"-_=.~".contains(&b)) =>
            {
                Ok(Some(l.to_string()))
            }
            Some(l) => Err(AnswerError(format!(
                "the Sforce-Locator header \"{}\" is not a locator",
                clip(l.to_string(), 40)
            ))),
        }
    }
}

/// Rows in a CSV page (its header line excluded), read as CSV (quoted newlines are inside a
/// row).
pub fn count_rows(page: &[u8]) -> Result<u64, String> {
    if page.iter().all(u8::is_ascii_whitespace) {
        return Ok(0);
    }
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(true)
        .flexible(true)
        .from_reader(page);
    let mut record = csv::ByteRecord::new();
    let mut n = 0;
    loop {
        match reader.read_byte_record(&mut record) {
            Ok(true) => n += 1,
            Ok(false) => return Ok(n),
            Err(e) => return Err(format!("CSV row {}: {e}", n + 1)),
        }
    }
}

/// How long to wait before asking a processing job's state again: 1 s, growing by half each
/// time, at most 30 s (Salesforce asks clients not to poll faster than they need).
pub fn poll_interval(polls: u32) -> Duration {
    let ms = 1000.0 * 1.5f64.powi(polls.min(20) as i32);
    Duration::from_millis(ms.min(30_000.0) as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job() -> IngestJob {
        IngestJob::from_json(&json!({"object": "Account", "operation": "insert"}), "b").unwrap()
    }

    fn rec(index: u64, payload: Value) -> Record {
        Record {
            index,
            id: index.to_string(),
            payload,
        }
    }

    #[test]
    fn the_job_body_is_read_and_errors_name_the_field() {
        let err = |v: Value| {
            IngestJob::from_json(&v, "request.body")
                .unwrap_err()
                .to_string()
        };
        assert!(err(json!({"operation": "insert"})).starts_with("request.body.object: missing"));
        assert!(err(json!({"object": "Account", "operation": "merge"}))
            .contains("request.body.operation: \"merge\""));
        assert!(err(json!({"object": "Account", "operation": "upsert"}))
            .starts_with("request.body.externalIdFieldName: missing"));
        assert!(
            err(json!({"object": "Account", "operation": "insert", "lineEnding": "CRLF"}))
                .starts_with("request.body.lineEnding:")
        );
        assert!(
            err(json!({"object": "Account", "operation": "insert", "objct": 1}))
                .starts_with("request.body.objct: unknown field")
        );
        let up = IngestJob::from_json(
            &json!({"object": "Contact", "operation": "upsert", "externalIdFieldName": "Ext__c"}),
            "x",
        )
        .unwrap();
        assert_eq!(
            up.record_id(&json!({"Ext__c": "e-1", "Name": "A"})),
            Some("e-1".into())
        );
        assert_eq!(
            IngestJob::from_json(&up.to_json(), "x").unwrap(),
            up,
            "stored form reads back"
        );
    }

    #[test]
    fn records_become_one_quoted_csv_with_every_field() {
        let records = [
            rec(0, json!({"Name": "Acme, Inc.", "Phone": "1"})),
            rec(
                1,
                json!({"Name": "Say \"hi\"\nthere", "Employees": 12, "Active": true}),
            ),
            rec(2, json!({"Name": null})),
        ];
        let csv = String::from_utf8(to_csv(&records).unwrap()).unwrap();
        assert_eq!(
            csv,
            "\"Name\",\"Phone\",\"Active\",\"Employees\"\n\
             \"Acme, Inc.\",\"1\",\"\",\"\"\n\
             \"Say \"\"hi\"\"\nthere\",\"\",\"true\",\"12\"\n\
             \"\",\"\",\"\",\"\"\n"
        );
        let bad = [rec(7, json!({"Name": {"x": 1}}))];
        assert!(matches!(
            to_csv(&bad),
            Err(BatchError::Record { index: 7, .. })
        ));
    }

    #[test]
    fn results_map_back_to_records_by_content_in_any_order() {
        let api = SalesforceBulk2 {
            job: &job(),
            base: "/services/data/v62.0/jobs/ingest",
        };
        let records = [
            rec(0, json!({"Name": "A, one", "City": "X"})),
            rec(1, json!({"Name": "", "City": "Y"})),
            rec(2, json!({"Name": "C #lock", "City": "Z"})),
            rec(3, json!({"Name": "D", "City": "W"})),
            rec(4, json!({"Name": "A, one", "City": "X"})),
            rec(5, json!({"Name": "lost", "City": "?"})),
        ];
        let ok = b"\"sf__Id\",\"sf__Created\",\"Name\",\"City\"\n\
                   \"001A\",\"true\",\"A, one\",\"X\"\n\"001B\",\"true\",\"A, one\",\"X\"\n";
        let failed = "\"sf__Id\",\"sf__Error\",\"City\",\"Name\"\n\
                      \"\",\"UNABLE_TO_LOCK_ROW:unable to obtain exclusive access:--\",\"Z\",\"C #lock\"\n\
                      \"\",\"REQUIRED_FIELD_MISSING:Required fields are missing: [Name]:Name --\",\"Y\",\"\"\n";
        let unprocessed = b"\"Name\",\"City\"\n\"D\",\"W\"\n";
        let status = JobStatus {
            state: JobState::Complete,
            api_state: "JobComplete".into(),
            error: None,
            processed: Some(4),
            failed: Some(2),
        };
        let out = api.outcomes(&records, &status, &[ok, failed.as_bytes(), unprocessed]);
        assert_eq!(out[0], RecordOutcome::Succeeded);
        assert_eq!(out[4], RecordOutcome::Succeeded);
        assert!(
            matches!(&out[1], RecordOutcome::Failed { error, retryable: false, .. }
                if error.starts_with("REQUIRED_FIELD_MISSING")),
            "{:?}",
            out[1]
        );
        assert!(out[2].is_retryable(), "{:?}", out[2]);
        assert!(out[3].is_retryable(), "unprocessed: {:?}", out[3]);
        assert!(
            matches!(&out[5], RecordOutcome::Failed { error, retryable: false, .. }
                if error.contains("do not list this record")),
            "{:?}",
            out[5]
        );
    }

    #[test]
    fn a_failed_job_fails_its_unprocessed_records_with_its_reason() {
        let api = SalesforceBulk2 {
            job: &job(),
            base: "/b",
        };
        let records = [rec(0, json!({"Nme": "A"}))];
        let status = api
            .read_status(br#"{"id":"750x","state":"Failed","errorMessage":"InvalidBatch : Field name not found : Nme"}"#)
            .unwrap();
        assert_eq!(status.state, JobState::Failed);
        let out = api.outcomes(&records, &status, &[b"", b"", b"\"Nme\"\n\"A\"\n"]);
        assert!(
            matches!(&out[0], RecordOutcome::Failed { error, retryable: false, .. }
                if error.contains("Field name not found")),
            "{:?}",
            out[0]
        );
        assert!(api.read_status(br#"{"state":"Sideways"}"#).is_err());
        assert!(api.created(br#"{"id":"../x"}"#).is_err());
        assert_eq!(
            api.created(br#"{"id":"7505e00000AbCdE"}"#).unwrap(),
            "7505e00000AbCdE"
        );
    }

    #[test]
    fn garbage_results_fail_records_without_panicking() {
        let api = SalesforceBulk2 {
            job: &job(),
            base: "/b",
        };
        let records = [rec(0, json!({"Name": "A"}))];
        let status = JobStatus {
            state: JobState::Complete,
            api_state: "JobComplete".into(),
            error: None,
            processed: None,
            failed: None,
        };
        let out = api.outcomes(
            &records,
            &status,
            &[b"\"a\",\"b\"\n\"1\"\n\xff\xfe", b"<html>", b""],
        );
        assert!(!out[0].is_retryable());
    }

    #[test]
    fn query_jobs_read_their_body_and_page_by_locator() {
        let err = |v: Value| {
            QueryJob::from_json(&v, "request.body")
                .unwrap_err()
                .to_string()
        };
        assert!(err(json!({})).starts_with("request.body.query: missing"));
        assert!(err(json!({"query": "DELETE FROM Account"})).contains("SOQL SELECT"));
        assert!(
            err(json!({"query": "SELECT Id FROM A", "operation": "merge"}))
                .starts_with("request.body.operation")
        );
        let job =
            QueryJob::from_json(&json!({"query": "SELECT Id, Name FROM Account"}), "b").unwrap();
        assert_eq!(job.operation, "query");
        let api = SalesforceQuery {
            job: &job,
            base: "/services/data/v62.0/jobs/query",
        };
        assert_eq!(
            api.page("750x", None, 50_000).path,
            "/services/data/v62.0/jobs/query/750x/results?maxRecords=50000"
        );
        assert_eq!(
            api.page("750x", Some("MTAwMDA"), 10).path,
            "/services/data/v62.0/jobs/query/750x/results?maxRecords=10&locator=MTAwMDA"
        );
        assert_eq!(api.next_locator(Some("null")).unwrap(), None);
        assert_eq!(api.next_locator(None).unwrap(), None);
        assert_eq!(
            api.next_locator(Some("MTAwMDA")).unwrap(),
            Some("MTAwMDA".into())
        );
        assert!(api.next_locator(Some("a&b=c")).is_err());
        assert_eq!(
            count_rows(b"\"Id\",\"Name\"\n\"1\",\"a\nb\"\n\"2\",\"c\"\n").unwrap(),
            2
        );
        assert_eq!(count_rows(b"").unwrap(), 0);
    }

    #[test]
    fn polls_back_off_to_thirty_seconds() {
        assert_eq!(poll_interval(0), Duration::from_secs(1));
        assert_eq!(poll_interval(1), Duration::from_millis(1500));
        assert_eq!(poll_interval(30), Duration::from_secs(30));
    }
}
