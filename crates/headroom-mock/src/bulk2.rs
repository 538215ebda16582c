//! Salesforce Bulk API 2.0 *ingest* and *query* jobs, served by the `salesforce-bulk2`
//! profile, so a client of the asynchronous API (create, upload once, close, poll, fetch
//! results; or create a query, poll, read its results a page at a time) can be tested against
//! its real rules without an org.
//!
//! Every Bulk call is one REST call: the profile counts and throttles it as `salesforce` does
//! (that is how a test sees whether polling stays inside the REST budget), and only a call
//! the limit accepted reaches this module. Jobs are shared by all tenants.
//!
//! Routes (`{v}` is any `vNN.N`, a trailing slash is optional):
//! `POST /services/data/{v}/jobs/ingest` creates a job and `GET` lists them;
//! `GET`/`PATCH`/`DELETE …/jobs/ingest/{id}` read, close (`UploadComplete`) or abort
//! (`Aborted`), and delete one; `PUT …/{id}/batches` uploads its only CSV (`text/csv`);
//! `GET …/{id}/successfulResults/`, `…/failedResults/`, `…/unprocessedrecords/` serve the
//! results once the job is `JobComplete`, `Failed` or `Aborted`.
//!
//! Processing starts at the close and takes `processing_base + processing_per_record × rows`
//! of real time; rows are processed in upload order, linearly over that time, and only when
//! something looks (a call, [`Bulk2Control::stats`]). An abort stops it: the rest of the rows
//! are unprocessed. A job closed without an upload, or whose CSV does not parse (no header, an
//! unterminated quote, a row with more or fewer fields than the header), goes `Failed` with
//! `InvalidBatch : …` and every row unprocessed (the upload as sent).
//!
//! An upload needs `Content-Type: text/csv`, at most `max_upload_bytes`, and an `Open` job
//! without one: the data is stored as soon as it is read (then `upload_delay` passes before
//! the `201`), and any second upload is refused as Salesforce refuses it. A job can be
//! deleted unless it is `Open` or `InProgress`. `POST /_mock/reset` forgets every job, counter
//! and remembered row, but keeps the settings.
//!
//! A processed row fails, checked in this order, when:
//! 1. update, delete, hardDelete: its `Id` is empty or not 15/18 alphanumerics
//!    (`MALFORMED_ID:Id: id value of incorrect type: <value>:Id --`);
//! 2. upsert: its external id column is missing or empty (`MISSING_ARGUMENT:<field> not specified:--`);
//! 3. insert, upsert: it has a `Name` column and it is empty
//!    (`REQUIRED_FIELD_MISSING:Required fields are missing: [Name]:Name --`);
//! 4. any value contains `#lock` and this mock never processed a row with the same values
//!    (`UNABLE_TO_LOCK_ROW:unable to obtain exclusive access to this record or 1 records:--`):
//!    the same row succeeds in a later job, as a retried lock would.
//!
//! Otherwise it succeeds: insert creates (`sf__Created` true, a fresh `001…` id); update and
//! delete echo the row's `Id`; upsert creates for an external id this mock has not upserted
//! before (per object and field) and reuses the id otherwise. Result files quote every value,
//! keep the original columns byte for byte, and list rows in an order of their own (by a hash
//! of the row), so a client must match results to its input by content, as with Salesforce.
//!
//! # Query jobs (bulk export)
//!
//! `POST /services/data/{v}/jobs/query` with `{"operation": "query"|"queryAll", "query":
//! "SELECT Id, Name FROM Account …"}` creates a job (`UploadComplete`) and `GET` lists them;
//! `GET`/`PATCH`/`DELETE …/jobs/query/{id}` read, abort (`{"state": "Aborted"}`, refused once
//! `JobComplete`) and delete one (refused while `InProgress`); `GET …/jobs/query/{id}/results`
//! serves the results once the job is `JobComplete`. The query must be `SELECT <fields> FROM
//! <Object>` (keywords in any case, fields comma-separated names such as `Id` or `Owner.Name`,
//! no duplicates); whatever follows the object (`WHERE`, `ORDER BY`, `LIMIT`, …) is accepted
//! and ignored. `lineEnding` and `columnDelimiter` are taken as for ingest (default `LF`,
//! `COMMA`), `contentType` must be `CSV`. A bad operation or a missing query is `INVALIDJOB`,
//! a query that does not parse `API_ERROR`.
//!
//! The org holds `query_records` rows (default 25,000; taken when the job is created), rows
//! `1..=query_records` in that order. Row `i`'s `Id` is a fixed 18-character `00100Q…` id
//! ([`query_value`]); any other field `F` (as written in the SELECT) is `"F i"`, except
//! that `Name` on every row whose `i` is a multiple of 1000 is `"Name i, \"quoted\"\nline
//! two"` (a comma, quotes and a newline, to exercise CSV quoting). Processing starts at the
//! creation and takes `processing_base + processing_per_record × query_records`, the records
//! counted as processed linearly over that time; an abort stops it.
//!
//! `…/results?maxRecords=N&locator=L` answers `text/csv` with the SELECT's fields as the
//! header line and the next up to `N` rows (default 50,000, at least 1), every value quoted;
//! `Sforce-NumberOfRecords` counts the rows of the page and `Sforce-Locator` names the next
//! page, `null` after the last. A locator is the URL-safe base64 of the row it starts at, but
//! only the locators a job gave out are accepted (any other is `INVALIDLOCATOR`); asking for
//! the same one again answers the same page. Results of a job that is not `JobComplete` are
//! `INVALIDJOBSTATE`.
//!
//! # Control
//!
//! `GET /_mock/bulk/stats` ([`Bulk2Stats`]) and `GET`/`POST /_mock/bulk/config` (fields
//! `processing_base_ms`, `processing_per_record_us`, `upload_delay_ms`, `max_upload_bytes`,
//! `key_column`, `query_records`, all optional) are never counted; [`crate::MockHandle::bulk`]
//! sets the same in process. `processed_by_key` shows whether any record was processed twice.

use std::collections::hash_map::DefaultHasher;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::hash::Hasher;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::body::Body;
use axum::response::Response;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as BASE64;
use base64::Engine as _;
use csv::ByteRecord;
use http::header::{ALLOW, CONTENT_TYPE};
use http::{HeaderMap, HeaderValue, Method, StatusCode};
use http_body_util::BodyExt;
use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use super::json_response;

/// The user every job is created by.
const CREATED_BY: &str = "005000000000001AAA";
/// JSON request bodies (job creation, close) are read up to this size.
const MAX_JSON_BODY: usize = 1 << 20;

/// What the Bulk endpoints counted, as `GET /_mock/bulk/stats` returns it. Only calls the
/// rate limit accepted reach the Bulk endpoints and count here.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Bulk2Stats {
    /// Jobs created (`POST …/jobs/ingest` answered 200).
    pub jobs_created: u64,
    /// Uploads accepted and stored (`PUT …/batches` whose data was kept).
    pub uploads: u64,
    /// `PUT …/batches` requests, counted as their headers arrive, before the body is read.
    pub uploads_started: u64,
    /// Close requests answered 200 (repeats included).
    pub closes: u64,
    /// Ingest abort requests answered 200 (repeats included).
    pub aborts: u64,
    /// `GET …/jobs/ingest/{id}` requests (job info polls).
    pub polls: u64,
    /// Result files served (any of the three).
    pub results_downloads: u64,
    /// Rows processed (succeeded or failed), over all jobs.
    pub rows_processed: u64,
    pub rows_succeeded: u64,
    pub rows_failed: u64,
    /// How many times a row was processed, by the value of its key column (see
    /// [`Bulk2Control::set_key_column`]), or the whole row joined by `,` without one.
    pub processed_by_key: BTreeMap<String, u32>,
    /// The same, for rows that succeeded.
    pub succeeded_by_key: BTreeMap<String, u32>,
    /// Query jobs created (`POST …/jobs/query` answered 200).
    pub query_jobs_created: u64,
    /// `GET …/jobs/query/{id}` requests (query job info polls).
    pub query_polls: u64,
    /// Result pages of query jobs served (answered 200), repeats included.
    pub result_pages: u64,
    /// Rows in those pages (header lines not counted), repeats included.
    pub result_rows_served: u64,
}

/// The runtime settings, as `GET`/`POST /_mock/bulk/config` show and take them.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct ConfigJson {
    processing_base_ms: Option<u64>,
    processing_per_record_us: Option<u64>,
    upload_delay_ms: Option<u64>,
    max_upload_bytes: Option<usize>,
    key_column: Option<String>,
    query_records: Option<usize>,
}

#[derive(Debug, Clone)]
struct Knobs {
    base: Duration,
    per_record: Duration,
    upload_delay: Duration,
    max_upload_bytes: usize,
    key_column: String,
    query_records: usize,
}

impl Default for Knobs {
    fn default() -> Self {
        Knobs {
            base: Duration::from_millis(200),
            per_record: Duration::from_micros(20),
            upload_delay: Duration::ZERO,
            max_upload_bytes: 150_000_000,
            key_column: "External_Id__c".into(),
            query_records: 25_000,
        }
    }
}

/// Settings and stats of the Bulk endpoints of a running mock ([`crate::MockHandle::bulk`]).
#[derive(Clone)]
pub struct Bulk2Control {
    pub(crate) bulk: Arc<Bulk2>,
}

impl Bulk2Control {
    /// Jobs closed from now on take `base + per_record × rows` to process.
    pub fn set_processing(&self, base: Duration, per_record: Duration) {
        let mut s = self.bulk.lock();
        s.knobs.base = base;
        s.knobs.per_record = per_record;
    }

    /// An upload stores its data, then waits this long before it answers.
    pub fn set_upload_delay(&self, delay: Duration) {
        self.bulk.lock().knobs.upload_delay = delay;
    }

    /// Uploads larger than this are refused (default 150 MB).
    pub fn set_max_upload_bytes(&self, max: usize) {
        self.bulk.lock().knobs.max_upload_bytes = max;
    }

    /// The column whose value keys `processed_by_key` (default `External_Id__c`).
    pub fn set_key_column(&self, column: &str) {
        self.bulk.lock().knobs.key_column = column.to_string();
    }

    /// Query jobs created from now on find this many records (default 25,000).
    pub fn set_query_records(&self, records: usize) {
        self.bulk.lock().knobs.query_records = records;
    }

    /// The counters, with every job's processing brought up to now.
    pub fn stats(&self) -> Bulk2Stats {
        self.bulk.stats()
    }

    /// A job's state now (`"Open"`, `"InProgress"`, …), ingest or query, `None` if there is
    /// no such job.
    pub fn job_state(&self, id: &str) -> Option<&'static str> {
        let mut guard = self.bulk.lock();
        let s = &mut *guard;
        let now = Instant::now();
        if let Some(job) = s.queries.get_mut(id) {
            job.advance(now);
            return Some(job.state.name());
        }
        let job = s.jobs.get_mut(id)?;
        job.advance(now, &mut s.world, &s.knobs.key_column);
        Some(job.state.name())
    }

    /// Polls the stats every 5 ms until `done` holds (`Ok`) or `timeout` passes (`Err`, with
    /// the last stats).
    pub async fn wait_for(
        &self,
        timeout: Duration,
        done: impl Fn(&Bulk2Stats) -> bool,
    ) -> Result<Bulk2Stats, Bulk2Stats> {
        let deadline = Instant::now() + timeout;
        loop {
            let stats = self.stats();
            if done(&stats) {
                return Ok(stats);
            }
            if Instant::now() >= deadline {
                return Err(stats);
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

/// A Bulk 2.0 path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Route {
    Jobs { v: String },
    Job { id: String },
    Batches { id: String },
    Results { id: String, kind: Kind },
    QueryJobs { v: String },
    QueryJob { id: String },
    QueryResults { id: String },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Successful,
    Failed,
    Unprocessed,
}

impl Route {
    /// The route of `path`, if it is a Bulk 2.0 ingest or query path.
    pub(crate) fn parse(path: &str) -> Option<Route> {
        let path = path.strip_suffix('/').unwrap_or(path);
        let mut segs = path.strip_prefix("/services/data/")?.split('/');
        let v = segs.next()?;
        let version = v.strip_prefix('v')?;
        let (major, minor) = version.split_once('.').unwrap_or((version, "0"));
        let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
        if !digits(major) || !digits(minor) || segs.next()? != "jobs" {
            return None;
        }
        let query = match segs.next()? {
            "ingest" => false,
            "query" => true,
            _ => return None,
        };
        let Some(id) = segs.next() else {
            let v = v.to_string();
            return Some(if query {
                Route::QueryJobs { v }
            } else {
                Route::Jobs { v }
            });
        };
        let id = id.to_string();
        if id.is_empty() {
            return None;
        }
        let tail = segs.next();
        if segs.next().is_some() {
            return None;
        }
        if query {
            return match tail {
                None => Some(Route::QueryJob { id }),
                Some("results") => Some(Route::QueryResults { id }),
                Some(_) => None,
            };
        }
        let kind = |k| {
            Some(Route::Results {
                id: id.clone(),
                kind: k,
            })
        };
        match tail {
            None => Some(Route::Job { id }),
            Some("batches") => Some(Route::Batches { id }),
            Some(t) if t.eq_ignore_ascii_case("successfulResults") => kind(Kind::Successful),
            Some(t) if t.eq_ignore_ascii_case("failedResults") => kind(Kind::Failed),
            Some(t) if t.eq_ignore_ascii_case("unprocessedrecords") => kind(Kind::Unprocessed),
            Some(_) => None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Operation {
    Insert,
    Update,
    Upsert,
    Delete,
    HardDelete,
}

impl Operation {
    fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "insert" => Operation::Insert,
            "update" => Operation::Update,
            "upsert" => Operation::Upsert,
            "delete" => Operation::Delete,
            "hardDelete" => Operation::HardDelete,
            _ => return None,
        })
    }

    fn name(self) -> &'static str {
        match self {
            Operation::Insert => "insert",
            Operation::Update => "update",
            Operation::Upsert => "upsert",
            Operation::Delete => "delete",
            Operation::HardDelete => "hardDelete",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum JobState {
    Open,
    UploadComplete,
    InProgress,
    JobComplete,
    Failed,
    Aborted,
}

impl JobState {
    fn name(self) -> &'static str {
        match self {
            JobState::Open => "Open",
            JobState::UploadComplete => "UploadComplete",
            JobState::InProgress => "InProgress",
            JobState::JobComplete => "JobComplete",
            JobState::Failed => "Failed",
            JobState::Aborted => "Aborted",
        }
    }

    fn finished(self) -> bool {
        matches!(
            self,
            JobState::JobComplete | JobState::Failed | JobState::Aborted
        )
    }
}

/// The column delimiters Bulk 2.0 knows, with their bytes.
const DELIMITERS: [(&str, u8); 6] = [
    ("COMMA", b','),
    ("TAB", b'\t'),
    ("PIPE", b'|'),
    ("SEMICOLON", b';'),
    ("CARET", b'^'),
    ("BACKQUOTE", b'`'),
];

enum Upload {
    Parsed {
        header: ByteRecord,
        rows: Vec<ByteRecord>,
    },
    /// Kept as sent, to be answered as the unprocessed records.
    Invalid { raw: Vec<u8>, reason: String },
}

enum Outcome {
    Ok { id: String, created: bool },
    Failed { id: String, error: String },
}

struct Job {
    seq: u64,
    id: String,
    v: String,
    object: String,
    operation: Operation,
    external_id: Option<String>,
    crlf: bool,
    delimiter: (&'static str, u8),
    created: SystemTime,
    modified: SystemTime,
    state: JobState,
    error: Option<String>,
    upload: Option<Upload>,
    /// When processing started, how long it takes, and when it stopped (done or aborted).
    started: Option<(Instant, Duration)>,
    ended: Option<Instant>,
    /// One per processed row, in upload order.
    outcomes: Vec<Outcome>,
}

/// A query job. Its records are computed, not stored: see [`query_value`].
struct QueryJob {
    seq: u64,
    id: String,
    v: String,
    object: String,
    /// `query` or `queryAll`.
    operation: &'static str,
    /// The SELECT's fields, as written.
    fields: Vec<String>,
    crlf: bool,
    delimiter: (&'static str, u8),
    created: SystemTime,
    modified: SystemTime,
    state: JobState,
    /// Processing starts at the creation and takes `total`; `ended` when it stopped.
    started: Instant,
    total: Duration,
    ended: Option<Instant>,
    /// The rows the query finds, and how many are processed so far.
    records: usize,
    processed: usize,
    /// The locators this job gave out, each with the row (from 0) its page starts at.
    locators: HashMap<String, usize>,
}

/// What outlives a job: the counters and what rows did before.
#[derive(Default)]
struct World {
    stats: Bulk2Stats,
    next_record: u64,
    /// Hashes of the `#lock` rows that failed once already.
    locked: HashSet<u64>,
    /// `object/field/value` of upserted external ids → their record id.
    upserted: HashMap<String, String>,
}

struct State {
    knobs: Knobs,
    jobs: HashMap<String, Job>,
    queries: HashMap<String, QueryJob>,
    next_job: u64,
    /// Makes job ids differ from one mock to the next.
    seed: u64,
    world: World,
}

impl State {
    fn new(knobs: Knobs) -> Self {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let mut h = DefaultHasher::new();
        h.write_u128(nanos);
        State {
            knobs,
            jobs: HashMap::new(),
            queries: HashMap::new(),
            next_job: 0,
            seed: h.finish(),
            world: World::default(),
        }
    }

    /// A new job's sequence number and its `750…` id, unique among ingest and query jobs.
    fn new_job(&mut self) -> (u64, String) {
        self.next_job += 1;
        let id = sf_id(
            "750",
            (self.seed % 62u64.pow(3)) * 62u64.pow(7) + self.next_job % 62u64.pow(7),
        );
        (self.next_job, id)
    }

    /// Checks that job `id` takes an upload; gives its delimiter.
    fn uploadable(&self, id: &str) -> Result<u8, Box<Response>> {
        let Some(job) = self.jobs.get(id) else {
            return Err(Box::new(not_found()));
        };
        let refuse = |message: String| {
            Err(Box::new(error(
                StatusCode::BAD_REQUEST,
                "INVALIDJOB",
                &message,
            )))
        };
        if job.upload.is_some() {
            return refuse(format!("Found multiple contents for job: {id}, please 'Close' / 'Abort' / 'Delete' the current Job then create a new Job and make sure the content is being uploaded in a single request"));
        }
        if job.state != JobState::Open {
            return refuse(format!(
                "Job {id} is {}: data can only be uploaded to an Open job",
                job.state.name()
            ));
        }
        Ok(job.delimiter.1)
    }

    fn advance_all(&mut self) {
        let now = Instant::now();
        for job in self.jobs.values_mut() {
            job.advance(now, &mut self.world, &self.knobs.key_column);
        }
        for job in self.queries.values_mut() {
            job.advance(now);
        }
    }
}

pub(crate) struct Bulk2 {
    state: Mutex<State>,
}

impl Bulk2 {
    pub(crate) fn new() -> Self {
        Bulk2 {
            state: Mutex::new(State::new(Knobs::default())),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Forgets every job and counter; keeps the settings.
    pub(crate) fn reset(&self) {
        let mut s = self.lock();
        let knobs = s.knobs.clone();
        *s = State::new(knobs);
    }

    pub(crate) fn stats(&self) -> Bulk2Stats {
        let mut s = self.lock();
        s.advance_all();
        s.world.stats.clone()
    }

    /// `GET` (no body) or `POST /_mock/bulk/config`: applies the fields given, answers all.
    pub(crate) fn configure(&self, body: Option<&[u8]>) -> Response {
        let mut s = self.lock();
        if let Some(body) = body.filter(|b| !b.is_empty()) {
            let c: ConfigJson = match serde_json::from_slice(body) {
                Ok(c) => c,
                Err(e) => {
                    let body = serde_json::json!({ "ok": false, "error": e.to_string() });
                    return json_response(StatusCode::BAD_REQUEST, body.to_string().into_bytes());
                }
            };
            let k = &mut s.knobs;
            k.base = c.processing_base_ms.map_or(k.base, Duration::from_millis);
            k.per_record = c
                .processing_per_record_us
                .map_or(k.per_record, Duration::from_micros);
            k.upload_delay = c
                .upload_delay_ms
                .map_or(k.upload_delay, Duration::from_millis);
            k.max_upload_bytes = c.max_upload_bytes.unwrap_or(k.max_upload_bytes);
            k.key_column = c.key_column.unwrap_or_else(|| k.key_column.clone());
            k.query_records = c.query_records.unwrap_or(k.query_records);
        }
        let k = &s.knobs;
        let now = ConfigJson {
            processing_base_ms: Some(k.base.as_millis() as u64),
            processing_per_record_us: Some(k.per_record.as_micros() as u64),
            upload_delay_ms: Some(k.upload_delay.as_millis() as u64),
            max_upload_bytes: Some(k.max_upload_bytes),
            key_column: Some(k.key_column.clone()),
            query_records: Some(k.query_records),
        };
        json_response(StatusCode::OK, serde_json::to_vec(&now).unwrap_or_default())
    }

    /// Answers a call the rate limit accepted; `query` is the request's query string.
    pub(crate) async fn serve(
        &self,
        route: Route,
        method: &Method,
        headers: &HeaderMap,
        query: Option<&str>,
        body: Body,
    ) -> Response {
        if let (Route::Batches { id }, &Method::PUT) = (&route, method) {
            return self.upload(id, headers, body).await;
        }
        let body = match read_body(body, MAX_JSON_BODY).await {
            Ok(b) => b,
            Err(_) => return error(StatusCode::BAD_REQUEST, "INVALIDJOB", "body too large"),
        };
        let allowed = match (route, method) {
            (Route::Jobs { v }, &Method::POST) => return self.create(&v, &body),
            (Route::Jobs { .. }, &Method::GET) => return self.list(),
            (Route::Job { id }, &Method::GET) => return self.info(&id),
            (Route::Job { id }, &Method::PATCH) => return self.patch(&id, &body),
            (Route::Job { id }, &Method::DELETE) => return self.delete(&id),
            (Route::Results { id, kind }, &Method::GET) => return self.results(&id, kind),
            (Route::QueryJobs { v }, &Method::POST) => return self.create_query(&v, &body),
            (Route::QueryJobs { .. }, &Method::GET) => return self.list_queries(),
            (Route::QueryJob { id }, &Method::GET) => return self.query_info(&id),
            (Route::QueryJob { id }, &Method::PATCH) => return self.patch_query(&id, &body),
            (Route::QueryJob { id }, &Method::DELETE) => return self.delete_query(&id),
            (Route::QueryResults { id }, &Method::GET) => {
                return self.query_results(&id, query.unwrap_or(""))
            }
            (Route::Jobs { .. } | Route::QueryJobs { .. }, _) => "GET,POST",
            (Route::Job { .. } | Route::QueryJob { .. }, _) => "GET,PATCH,DELETE",
            (Route::Batches { .. }, _) => "PUT",
            (Route::Results { .. } | Route::QueryResults { .. }, _) => "GET",
        };
        let message = format!("HTTP Method '{method}' not allowed. Allowed are {allowed}");
        let mut r = error(
            StatusCode::METHOD_NOT_ALLOWED,
            "METHOD_NOT_ALLOWED",
            &message,
        );
        r.headers_mut()
            .insert(ALLOW, HeaderValue::from_static(allowed));
        r
    }

    fn create(&self, v: &str, body: &[u8]) -> Response {
        let spec = match json_object(body) {
            Ok(spec) => spec,
            Err(r) => return *r,
        };
        let field = |name: &str| spec.get(name).and_then(|v| v.as_str());
        let invalid = |message: &str| error(StatusCode::BAD_REQUEST, "INVALIDJOB", message);
        let Some(object) = field("object").filter(|o| !o.is_empty()) else {
            return invalid("InvalidJob : Object is required");
        };
        let Some(operation) = field("operation").and_then(Operation::parse) else {
            let op = field("operation").unwrap_or("");
            return invalid(&format!("InvalidJob : Invalid operation: '{op}'"));
        };
        let external_id = field("externalIdFieldName").filter(|f| !f.is_empty());
        if operation == Operation::Upsert && external_id.is_none() {
            return invalid(&format!("InvalidJob : External ID was blank for {object}. An External ID must be specified for upsert."));
        }
        let (crlf, delimiter) = match csv_format(&spec) {
            Ok(format) => format,
            Err(message) => return invalid(&message),
        };
        let mut s = self.lock();
        let (seq, id) = s.new_job();
        let now = SystemTime::now();
        let job = Job {
            seq,
            id: id.clone(),
            v: v.to_string(),
            object: object.to_string(),
            operation,
            external_id: external_id.map(str::to_string),
            crlf,
            delimiter,
            created: now,
            modified: now,
            state: JobState::Open,
            error: None,
            upload: None,
            started: None,
            ended: None,
            outcomes: Vec::new(),
        };
        let body = job.info(Instant::now(), false);
        s.jobs.insert(id, job);
        s.world.stats.jobs_created += 1;
        json_response(StatusCode::OK, body)
    }

    fn list(&self) -> Response {
        let mut s = self.lock();
        s.advance_all();
        let now = Instant::now();
        let mut jobs: Vec<&Job> = s.jobs.values().collect();
        jobs.sort_by_key(|j| j.seq);
        let records: Vec<serde_json::Value> = jobs
            .iter()
            .map(|j| serde_json::from_slice(&j.info(now, false)).unwrap_or_default())
            .collect();
        let body = serde_json::json!({ "done": true, "records": records, "nextRecordsUrl": null });
        json_response(StatusCode::OK, body.to_string().into_bytes())
    }

    /// Runs `f` on job `id` brought up to now, or answers 404.
    fn with_job(
        &self,
        id: &str,
        f: impl FnOnce(&mut Job, &mut World, &Knobs, Instant) -> Response,
    ) -> Response {
        let mut guard = self.lock();
        let s = &mut *guard;
        let now = Instant::now();
        match s.jobs.get_mut(id) {
            Some(job) => {
                job.advance(now, &mut s.world, &s.knobs.key_column);
                f(job, &mut s.world, &s.knobs, now)
            }
            None => not_found(),
        }
    }

    fn info(&self, id: &str) -> Response {
        self.with_job(id, |job, world, _, now| {
            world.stats.polls += 1;
            json_response(StatusCode::OK, job.info(now, true))
        })
    }

    fn patch(&self, id: &str, body: &[u8]) -> Response {
        let spec: serde_json::Value = match serde_json::from_slice(body) {
            Ok(v) => v,
            Err(e) => return error(StatusCode::BAD_REQUEST, "JSON_PARSER_ERROR", &e.to_string()),
        };
        let wanted = spec.get("state").and_then(|s| s.as_str()).unwrap_or("");
        self.with_job(id, |job, world, knobs, now| {
            let refuse = |message: String| error(StatusCode::BAD_REQUEST, "INVALIDJOB", &message);
            match (wanted, job.state) {
                ("UploadComplete", JobState::Aborted) => {
                    return refuse(format!("Job {id} is aborted and cannot be closed"));
                }
                ("UploadComplete", JobState::Open) => {
                    job.modified = SystemTime::now();
                    match &job.upload {
                        None => job.fail("No data uploaded".into()),
                        Some(Upload::Invalid { reason, .. }) => job.fail(reason.clone()),
                        Some(Upload::Parsed { rows, .. }) => {
                            let per = knobs.per_record.as_nanos() * rows.len() as u128;
                            let per = Duration::from_nanos(per.min(u64::MAX as u128) as u64);
                            job.state = JobState::UploadComplete;
                            job.started = Some((now, knobs.base.saturating_add(per)));
                            job.advance(now, world, &knobs.key_column);
                        }
                    }
                    world.stats.closes += 1;
                }
                ("UploadComplete", _) => world.stats.closes += 1,
                ("Aborted", JobState::JobComplete | JobState::Failed) => {
                    let state = job.state.name();
                    return refuse(format!("Job {id} is {state} and cannot be aborted"));
                }
                ("Aborted", state) => {
                    if state != JobState::Aborted {
                        job.state = JobState::Aborted;
                        job.modified = SystemTime::now();
                        job.ended = Some(now);
                    }
                    world.stats.aborts += 1;
                }
                (other, _) => return refuse(format!("Invalid state transition to '{other}'")),
            }
            json_response(StatusCode::OK, job.info(now, false))
        })
    }

    fn delete(&self, id: &str) -> Response {
        let mut s = self.lock();
        let now = Instant::now();
        let State {
            jobs, world, knobs, ..
        } = &mut *s;
        let Some(job) = jobs.get_mut(id) else {
            return not_found();
        };
        job.advance(now, world, &knobs.key_column);
        if matches!(job.state, JobState::Open | JobState::InProgress) {
            let state = job.state.name();
            let message = format!("Job {id} is {state} and cannot be deleted; abort it first");
            return error(StatusCode::BAD_REQUEST, "INVALIDJOB", &message);
        }
        jobs.remove(id);
        let mut r = Response::new(Body::empty());
        *r.status_mut() = StatusCode::NO_CONTENT;
        r
    }

    fn results(&self, id: &str, kind: Kind) -> Response {
        self.with_job(id, |job, world, _, _| {
            if !job.state.finished() {
                let message = format!("Job {id} is not complete: it is {}", job.state.name());
                return error(StatusCode::BAD_REQUEST, "INVALIDJOB", &message);
            }
            world.stats.results_downloads += 1;
            let (body, records) = job.results(kind);
            let mut r = Response::new(Body::from(body));
            let h = r.headers_mut();
            h.insert(CONTENT_TYPE, HeaderValue::from_static("text/csv"));
            h.insert("sforce-locator", HeaderValue::from_static("null"));
            h.insert("sforce-numberofrecords", HeaderValue::from(records));
            r
        })
    }

    fn create_query(&self, v: &str, body: &[u8]) -> Response {
        let spec = match json_object(body) {
            Ok(spec) => spec,
            Err(r) => return *r,
        };
        let field = |name: &str| spec.get(name).and_then(|v| v.as_str());
        let invalid = |message: &str| error(StatusCode::BAD_REQUEST, "INVALIDJOB", message);
        let operation = match field("operation") {
            Some("query") => "query",
            Some("queryAll") => "queryAll",
            other => {
                let op = other.unwrap_or("");
                return invalid(&format!("InvalidJob : Invalid operation: '{op}'"));
            }
        };
        let Some(soql) = field("query").filter(|q| !q.trim().is_empty()) else {
            return invalid("InvalidJob : A query is required");
        };
        let (fields, object) = match parse_select(soql) {
            Ok(parsed) => parsed,
            Err(message) => return error(StatusCode::BAD_REQUEST, "API_ERROR", &message),
        };
        let (crlf, delimiter) = match csv_format(&spec) {
            Ok(format) => format,
            Err(message) => return invalid(&message),
        };
        let mut s = self.lock();
        let (seq, id) = s.new_job();
        let records = s.knobs.query_records;
        let per = s.knobs.per_record.as_nanos() * records as u128;
        let per = Duration::from_nanos(per.min(u64::MAX as u128) as u64);
        let now = SystemTime::now();
        let job = QueryJob {
            seq,
            id: id.clone(),
            v: v.to_string(),
            object,
            operation,
            fields,
            crlf,
            delimiter,
            created: now,
            modified: now,
            state: JobState::UploadComplete,
            started: Instant::now(),
            total: s.knobs.base.saturating_add(per),
            ended: None,
            records,
            processed: 0,
            locators: HashMap::new(),
        };
        let body = job.info(Instant::now(), false);
        s.queries.insert(id, job);
        s.world.stats.query_jobs_created += 1;
        json_response(StatusCode::OK, body)
    }

    fn list_queries(&self) -> Response {
        let mut s = self.lock();
        s.advance_all();
        let now = Instant::now();
        let mut jobs: Vec<&QueryJob> = s.queries.values().collect();
        jobs.sort_by_key(|j| j.seq);
        let records: Vec<serde_json::Value> = jobs
            .iter()
            .map(|j| serde_json::from_slice(&j.info(now, false)).unwrap_or_default())
            .collect();
        let body = serde_json::json!({ "done": true, "records": records, "nextRecordsUrl": null });
        json_response(StatusCode::OK, body.to_string().into_bytes())
    }

    /// Runs `f` on query job `id` brought up to now, or answers 404.
    fn with_query(
        &self,
        id: &str,
        f: impl FnOnce(&mut QueryJob, &mut World, Instant) -> Response,
    ) -> Response {
        let mut guard = self.lock();
        let s = &mut *guard;
        let now = Instant::now();
        match s.queries.get_mut(id) {
            Some(job) => {
                job.advance(now);
                f(job, &mut s.world, now)
            }
            None => not_found(),
        }
    }

    fn query_info(&self, id: &str) -> Response {
        self.with_query(id, |job, world, now| {
            world.stats.query_polls += 1;
            json_response(StatusCode::OK, job.info(now, true))
        })
    }

    fn patch_query(&self, id: &str, body: &[u8]) -> Response {
        let spec: serde_json::Value = match serde_json::from_slice(body) {
            Ok(v) => v,
            Err(e) => return error(StatusCode::BAD_REQUEST, "JSON_PARSER_ERROR", &e.to_string()),
        };
        let wanted = spec.get("state").and_then(|s| s.as_str()).unwrap_or("");
        self.with_query(id, |job, _, now| {
            let refuse = |message: String| error(StatusCode::BAD_REQUEST, "INVALIDJOB", &message);
            match (wanted, job.state) {
                ("Aborted", JobState::JobComplete | JobState::Failed) => {
                    let state = job.state.name();
                    return refuse(format!("Job {id} is {state} and cannot be aborted"));
                }
                ("Aborted", state) => {
                    if state != JobState::Aborted {
                        job.state = JobState::Aborted;
                        job.modified = SystemTime::now();
                        job.ended = Some(now);
                    }
                }
                (other, _) => return refuse(format!("Invalid state transition to '{other}'")),
            }
            json_response(StatusCode::OK, job.info(now, false))
        })
    }

    fn delete_query(&self, id: &str) -> Response {
        let mut s = self.lock();
        let Some(job) = s.queries.get_mut(id) else {
            return not_found();
        };
        job.advance(Instant::now());
        if job.state == JobState::InProgress {
            let message = format!("Job {id} is InProgress and cannot be deleted; abort it first");
            return error(StatusCode::BAD_REQUEST, "INVALIDJOB", &message);
        }
        s.queries.remove(id);
        let mut r = Response::new(Body::empty());
        *r.status_mut() = StatusCode::NO_CONTENT;
        r
    }

    /// One page of a query job's results; `query` holds `maxRecords` and `locator`.
    fn query_results(&self, id: &str, query: &str) -> Response {
        let mut max_records = Ok(50_000);
        let mut locator = None;
        for (k, v) in url::form_urlencoded::parse(query.as_bytes()) {
            match &*k {
                "maxRecords" => {
                    max_records = v.parse::<usize>().ok().filter(|&n| n >= 1).ok_or(v);
                }
                "locator" if !v.is_empty() => locator = Some(v.into_owned()),
                _ => {}
            }
        }
        self.with_query(id, |job, world, _| {
            if job.state != JobState::JobComplete {
                let state = job.state.name();
                let message =
                    format!("Job {id} is {state}: results are ready once it is JobComplete");
                return error(StatusCode::BAD_REQUEST, "INVALIDJOBSTATE", &message);
            }
            let max = match max_records {
                Ok(max) => max,
                Err(v) => {
                    let message =
                        format!("maxRecords must be a whole number of at least 1, not '{v}'");
                    return error(StatusCode::BAD_REQUEST, "API_ERROR", &message);
                }
            };
            let from = match &locator {
                None => 0,
                Some(l) => match job.locators.get(l) {
                    Some(&from) => from,
                    None => {
                        let message = format!("Invalid locator '{l}' for job {id}");
                        return error(StatusCode::BAD_REQUEST, "INVALIDLOCATOR", &message);
                    }
                },
            };
            let to = from.saturating_add(max).min(job.records);
            let body = job.page(from, to);
            let next = if to < job.records {
                let next = BASE64.encode(to.to_string());
                job.locators.insert(next.clone(), to);
                next
            } else {
                "null".to_string()
            };
            let rows = to - from;
            world.stats.result_pages += 1;
            world.stats.result_rows_served += rows as u64;
            let mut r = Response::new(Body::from(body));
            let h = r.headers_mut();
            h.insert(CONTENT_TYPE, HeaderValue::from_static("text/csv"));
            if let Ok(next) = HeaderValue::from_str(&next) {
                h.insert("sforce-locator", next);
            }
            h.insert("sforce-numberofrecords", HeaderValue::from(rows));
            r
        })
    }

    async fn upload(&self, id: &str, headers: &HeaderMap, body: Body) -> Response {
        let (max, delay) = {
            let mut s = self.lock();
            s.world.stats.uploads_started += 1;
            (s.knobs.max_upload_bytes, s.knobs.upload_delay)
        };
        let checked = self.lock().uploadable(id);
        if let Err(r) = checked {
            drain(body).await;
            return *r;
        }
        let content_type = headers
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        if !content_type
            .trim()
            .to_ascii_lowercase()
            .starts_with("text/csv")
        {
            drain(body).await;
            let message = format!("Unsupported Content-Type '{content_type}': upload text/csv");
            return error(StatusCode::BAD_REQUEST, "INVALIDJOB", &message);
        }
        let raw = match read_body(body, max).await {
            Ok(raw) => raw,
            Err(BodyError::TooBig) => {
                let message = format!("Exceeded max content length of {max} bytes for job {id}");
                return error(StatusCode::BAD_REQUEST, "INVALIDJOB", &message);
            }
            Err(BodyError::Broken) => {
                let message = "The upload could not be read";
                return error(StatusCode::BAD_REQUEST, "INVALIDJOB", message);
            }
        };
        let checked = self.lock().uploadable(id);
        let delimiter = match checked {
            Ok(d) => d,
            Err(r) => return *r,
        };
        let upload = parse(raw, delimiter);
        {
            let mut s = self.lock();
            // Checked again: another upload may have landed while this one was parsed.
            if let Err(r) = s.uploadable(id) {
                return *r;
            }
            if let Some(job) = s.jobs.get_mut(id) {
                job.upload = Some(upload);
                job.modified = SystemTime::now();
            }
            s.world.stats.uploads += 1;
        }
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        let mut r = Response::new(Body::empty());
        *r.status_mut() = StatusCode::CREATED;
        r
    }
}

/// The columns of a header that the outcome rules look at.
struct Columns {
    id: Option<usize>,
    name: Option<usize>,
    external: Option<usize>,
    key: Option<usize>,
}

impl Job {
    fn fail(&mut self, reason: String) {
        self.state = JobState::Failed;
        self.error = Some(format!("InvalidBatch : {reason}"));
        self.ended = Some(Instant::now());
    }

    fn rows(&self) -> &[ByteRecord] {
        match &self.upload {
            Some(Upload::Parsed { rows, .. }) => rows,
            _ => &[],
        }
    }

    /// Processes the rows due by `now`, and completes the job when all are.
    fn advance(&mut self, now: Instant, world: &mut World, key_column: &str) {
        if !matches!(self.state, JobState::UploadComplete | JobState::InProgress) {
            return;
        }
        let (Some((started, total)), Some(Upload::Parsed { header, rows })) =
            (self.started, &self.upload)
        else {
            return;
        };
        let n = rows.len();
        let elapsed = now.saturating_duration_since(started);
        let due = if elapsed >= total {
            n
        } else {
            (n as u128 * elapsed.as_nanos() / total.as_nanos().max(1)) as usize
        };
        if due > self.outcomes.len() {
            let position = |name: &str| header.iter().position(|c| c == name.as_bytes());
            let columns = Columns {
                id: position("Id"),
                name: position("Name"),
                external: self.external_id.as_deref().and_then(position),
                key: position(key_column),
            };
            for row in &rows[self.outcomes.len()..due.min(n)] {
                let outcome = self.decide(&columns, row, world);
                let key = match columns.key.and_then(|i| row.get(i)) {
                    Some(v) => String::from_utf8_lossy(v).into_owned(),
                    None => row_text(row),
                };
                let st = &mut world.stats;
                st.rows_processed += 1;
                *st.processed_by_key.entry(key.clone()).or_insert(0) += 1;
                if let Outcome::Ok { .. } = outcome {
                    st.rows_succeeded += 1;
                    *st.succeeded_by_key.entry(key).or_insert(0) += 1;
                } else {
                    st.rows_failed += 1;
                }
                self.outcomes.push(outcome);
            }
        }
        if elapsed >= total {
            self.state = JobState::JobComplete;
            self.ended = Some(started + total);
            self.modified = SystemTime::now();
        } else if !self.outcomes.is_empty() && self.state == JobState::UploadComplete {
            self.state = JobState::InProgress;
            self.modified = SystemTime::now();
        }
    }

    /// What processing `row` does; see the module docs.
    fn decide(&self, columns: &Columns, row: &ByteRecord, world: &mut World) -> Outcome {
        let value = |i: Option<usize>| i.and_then(|i| row.get(i)).unwrap_or(b"");
        let id = String::from_utf8_lossy(value(columns.id)).into_owned();
        let valid_id =
            (id.len() == 15 || id.len() == 18) && id.bytes().all(|b| b.is_ascii_alphanumeric());
        let failed = |error: String| Outcome::Failed {
            id: if valid_id { id.clone() } else { String::new() },
            error,
        };
        let op = self.operation;
        if matches!(
            op,
            Operation::Update | Operation::Delete | Operation::HardDelete
        ) && !valid_id
        {
            return failed(format!(
                "MALFORMED_ID:Id: id value of incorrect type: {id}:Id --"
            ));
        }
        let field = self.external_id.as_deref().unwrap_or("");
        let external = String::from_utf8_lossy(value(columns.external)).into_owned();
        if op == Operation::Upsert && external.is_empty() {
            return failed(format!("MISSING_ARGUMENT:{field} not specified:--"));
        }
        if matches!(op, Operation::Insert | Operation::Upsert)
            && columns.name.is_some()
            && value(columns.name).is_empty()
        {
            return failed(
                "REQUIRED_FIELD_MISSING:Required fields are missing: [Name]:Name --".into(),
            );
        }
        let locks = row.iter().any(|v| v.windows(5).any(|w| w == b"#lock"));
        if locks && world.locked.insert(row_hash(row)) {
            return failed("UNABLE_TO_LOCK_ROW:unable to obtain exclusive access to this record or 1 records:--".into());
        }
        let mut fresh = || {
            world.next_record += 1;
            sf_id("001", world.next_record)
        };
        let (id, created) = match op {
            Operation::Insert => (fresh(), true),
            Operation::Update | Operation::Delete | Operation::HardDelete => (id, false),
            Operation::Upsert => {
                let key = format!("{}/{field}/{external}", self.object);
                match world.upserted.get(&key) {
                    Some(known) => (known.clone(), false),
                    None => {
                        let new = if valid_id { id } else { fresh() };
                        world.upserted.insert(key, new.clone());
                        (new, true)
                    }
                }
            }
        };
        Outcome::Ok { id, created }
    }

    /// The job info as JSON; with `progress`, the counts and times `GET` adds.
    fn info(&self, now: Instant, progress: bool) -> Vec<u8> {
        let mut info = serde_json::json!({
            "id": self.id,
            "operation": self.operation.name(),
            "object": self.object,
            "createdById": CREATED_BY,
            "createdDate": rfc3339(self.created),
            "systemModstamp": rfc3339(self.modified),
            "state": self.state.name(),
            "concurrencyMode": "Parallel",
            "contentType": "CSV",
            "apiVersion": self.v[1..].parse::<f64>().unwrap_or(62.0),
            "contentUrl": format!("services/data/{}/jobs/ingest/{}/batches", self.v, self.id),
            "lineEnding": if self.crlf { "CRLF" } else { "LF" },
            "columnDelimiter": self.delimiter.0,
        });
        if let Some(field) = &self.external_id {
            info["externalIdFieldName"] = field.as_str().into();
        }
        if progress {
            let failed = self
                .outcomes
                .iter()
                .filter(|o| matches!(o, Outcome::Failed { .. }))
                .count();
            let ms = self.started.map_or(0, |(started, total)| {
                let until = self.ended.unwrap_or(now);
                until
                    .saturating_duration_since(started)
                    .min(total)
                    .as_millis() as u64
            });
            info["jobType"] = "V2Ingest".into();
            info["numberRecordsProcessed"] = self.outcomes.len().into();
            info["numberRecordsFailed"] = failed.into();
            info["retries"] = 0.into();
            info["totalProcessingTime"] = ms.into();
            info["apiActiveProcessingTime"] = ms.into();
            info["apexProcessingTime"] = 0.into();
        }
        if let Some(message) = &self.error {
            info["errorMessage"] = message.as_str().into();
        }
        info.to_string().into_bytes()
    }

    /// A result file and how many records it has.
    fn results(&self, kind: Kind) -> (Vec<u8>, usize) {
        let header = match &self.upload {
            Some(Upload::Parsed { header, .. }) => Some(header),
            Some(Upload::Invalid { raw, .. }) if kind == Kind::Unprocessed => {
                return (raw.clone(), 0);
            }
            _ => None,
        };
        let d = self.delimiter.1;
        let eol: &[u8] = if self.crlf { b"\r\n" } else { b"\n" };
        let prefix: &[&str] = match kind {
            Kind::Successful => &["sf__Id", "sf__Created"],
            Kind::Failed => &["sf__Id", "sf__Error"],
            Kind::Unprocessed => &[],
        };
        let mut out = Vec::new();
        let mut first = true;
        let sep = |out: &mut Vec<u8>, first: &mut bool| {
            if !std::mem::take(first) {
                out.push(d);
            }
        };
        for p in prefix {
            sep(&mut out, &mut first);
            write_field(&mut out, p.as_bytes(), true, d);
        }
        for column in header.into_iter().flatten() {
            sep(&mut out, &mut first);
            write_field(&mut out, column, false, d);
        }
        if out.is_empty() {
            return (out, 0);
        }
        out.extend_from_slice(eol);
        let rows = self.rows();
        let done = self.outcomes.len().min(rows.len());
        let mut picked: Vec<(u64, usize)> = match kind {
            Kind::Unprocessed => (done..rows.len()).collect(),
            Kind::Successful => (0..done)
                .filter(|&i| matches!(self.outcomes[i], Outcome::Ok { .. }))
                .collect(),
            Kind::Failed => (0..done)
                .filter(|&i| matches!(self.outcomes[i], Outcome::Failed { .. }))
                .collect::<Vec<usize>>(),
        }
        .into_iter()
        .map(|i| (row_hash(&rows[i]), i))
        .collect();
        // Not the upload order: clients must match results by content.
        picked.sort_unstable();
        for &(_, i) in &picked {
            let mut first = true;
            let mut field = |out: &mut Vec<u8>, v: &[u8]| {
                sep(out, &mut first);
                write_field(out, v, true, d);
            };
            match (&self.outcomes.get(i), kind) {
                (Some(Outcome::Ok { id, created }), Kind::Successful) => {
                    field(&mut out, id.as_bytes());
                    field(&mut out, if *created { b"true" } else { b"false" });
                }
                (Some(Outcome::Failed { id, error }), Kind::Failed) => {
                    field(&mut out, id.as_bytes());
                    field(&mut out, error.as_bytes());
                }
                _ => {}
            }
            for v in &rows[i] {
                field(&mut out, v);
            }
            out.extend_from_slice(eol);
        }
        (out, picked.len())
    }
}

impl QueryJob {
    /// Counts the records processed by `now`, and completes the job when all are.
    fn advance(&mut self, now: Instant) {
        if !matches!(self.state, JobState::UploadComplete | JobState::InProgress) {
            return;
        }
        let elapsed = now.saturating_duration_since(self.started);
        if elapsed >= self.total {
            self.processed = self.records;
            self.state = JobState::JobComplete;
            self.ended = Some(self.started + self.total);
            self.modified = SystemTime::now();
            return;
        }
        let done = self.records as u128 * elapsed.as_nanos() / self.total.as_nanos().max(1);
        self.processed = (done as usize).min(self.records);
        if self.processed > 0 && self.state == JobState::UploadComplete {
            self.state = JobState::InProgress;
            self.modified = SystemTime::now();
        }
    }

    /// The job info as JSON; with `progress`, the counts and times `GET` adds.
    fn info(&self, now: Instant, progress: bool) -> Vec<u8> {
        let mut info = serde_json::json!({
            "id": self.id,
            "operation": self.operation,
            "object": self.object,
            "createdById": CREATED_BY,
            "createdDate": rfc3339(self.created),
            "systemModstamp": rfc3339(self.modified),
            "state": self.state.name(),
            "concurrencyMode": "Parallel",
            "contentType": "CSV",
            "apiVersion": self.v[1..].parse::<f64>().unwrap_or(62.0),
            "lineEnding": if self.crlf { "CRLF" } else { "LF" },
            "columnDelimiter": self.delimiter.0,
        });
        if progress {
            let until = self.ended.unwrap_or(now);
            let ms = until
                .saturating_duration_since(self.started)
                .min(self.total)
                .as_millis() as u64;
            info["jobType"] = "V2Query".into();
            info["numberRecordsProcessed"] = self.processed.into();
            info["retries"] = 0.into();
            info["totalProcessingTime"] = ms.into();
        }
        info.to_string().into_bytes()
    }

    /// The CSV of rows `from..to` (from 0), after the header line.
    fn page(&self, from: usize, to: usize) -> Vec<u8> {
        let d = self.delimiter.1;
        let eol: &[u8] = if self.crlf { b"\r\n" } else { b"\n" };
        let line = |out: &mut Vec<u8>, values: &mut dyn Iterator<Item = String>| {
            for (k, v) in values.enumerate() {
                if k > 0 {
                    out.push(d);
                }
                write_field(out, v.as_bytes(), true, d);
            }
            out.extend_from_slice(eol);
        };
        let mut out = Vec::with_capacity((to - from + 1) * self.fields.len() * 16);
        line(&mut out, &mut self.fields.iter().cloned());
        for i in from + 1..=to {
            line(&mut out, &mut self.fields.iter().map(|f| query_value(f, i)));
        }
        out
    }
}

/// What the mock org's query jobs find in field `field` of row `row` (from 1): for `Id` (in
/// any case) an 18-character `00100Q…` id of the row, for any other field `"{field} {row}"`,
/// except `Name` (in any case) on rows that are multiples of 1000:
/// `"{field} {row}, \"quoted\"\nline two"`.
pub fn query_value(field: &str, row: usize) -> String {
    if field.eq_ignore_ascii_case("Id") {
        return sf_id("001", QUERY_ID_BASE + row as u64);
    }
    if field.eq_ignore_ascii_case("Name") && row % 1000 == 0 {
        return format!("{field} {row}, \"quoted\"\nline two");
    }
    format!("{field} {row}")
}

/// Query record ids are `001` + `00Q` + the row in 9 base-62 digits + the checksum.
const QUERY_ID_BASE: u64 = 26 * 62u64.pow(9);

/// The fields and the object of `SELECT <fields> FROM <Object> [anything]`, keywords in any
/// case; or why the query is refused.
fn parse_select(query: &str) -> Result<(Vec<String>, String), String> {
    let q = query.trim();
    let lower = q.to_ascii_lowercase();
    let malformed = |why: &str| format!("MALFORMED_QUERY: {why}: {q}");
    let space = |b: Option<&u8>| b.is_none_or(u8::is_ascii_whitespace);
    if !lower.starts_with("select") || !lower.as_bytes().get(6).is_some_and(u8::is_ascii_whitespace)
    {
        return Err(malformed("expected SELECT <fields> FROM <object>"));
    }
    // The first FROM that stands alone, after SELECT.
    let from = lower
        .match_indices("from")
        .map(|(i, _)| i)
        .find(|&i| {
            i > 6 && space(lower.as_bytes().get(i - 1)) && space(lower.as_bytes().get(i + 4))
        })
        .ok_or_else(|| malformed("expected FROM <object> after the fields"))?;
    let name = |s: &str| {
        s.split('.').all(|part| {
            part.bytes().next().is_some_and(|b| b.is_ascii_alphabetic())
                && part.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
        })
    };
    let mut fields: Vec<String> = Vec::new();
    for field in q[6..from].split(',').map(str::trim) {
        if !name(field) {
            return Err(malformed(&format!("unexpected field '{field}'")));
        }
        if fields.iter().any(|f| f.eq_ignore_ascii_case(field)) {
            return Err(format!("duplicate field selected: {field}"));
        }
        fields.push(field.to_string());
    }
    let object = q[from + 4..].split_ascii_whitespace().next().unwrap_or("");
    if object.contains('.') || !name(object) {
        return Err(malformed(&format!("unexpected object '{object}'")));
    }
    Ok((fields, object.to_string()))
}

fn write_field(out: &mut Vec<u8>, v: &[u8], always: bool, delimiter: u8) {
    let quote = always
        || v.iter()
            .any(|&b| b == b'"' || b == delimiter || b == b'\n' || b == b'\r');
    if !quote {
        out.extend_from_slice(v);
        return;
    }
    out.push(b'"');
    for &b in v {
        if b == b'"' {
            out.push(b'"');
        }
        out.push(b);
    }
    out.push(b'"');
}

/// Parses an upload: a header row, then rows of as many fields (RFC 4180 quoting).
fn parse(raw: Vec<u8>, delimiter: u8) -> Upload {
    let parsed = (|| {
        let mut reader = csv::ReaderBuilder::new()
            .has_headers(false)
            .delimiter(delimiter)
            .from_reader(raw.as_slice());
        let mut records = reader.byte_records();
        let header = match records.next() {
            Some(Ok(h)) if h.iter().any(|c| !c.is_empty()) => h,
            Some(Err(e)) => return Err(e.to_string()),
            _ => return Err("No header row found in the CSV data".to_string()),
        };
        let rows = records
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| e.to_string())?;
        Ok((header, rows))
    })();
    match parsed {
        Ok((header, rows)) => Upload::Parsed { header, rows },
        Err(reason) => Upload::Invalid { raw, reason },
    }
}

/// A deterministic hash of a row's values.
fn row_hash(row: &ByteRecord) -> u64 {
    let mut h = DefaultHasher::new();
    for v in row {
        h.write_usize(v.len());
        h.write(v);
    }
    h.finish()
}

fn row_text(row: &ByteRecord) -> String {
    let fields: Vec<_> = row.iter().map(String::from_utf8_lossy).collect();
    fields.join(",")
}

/// An 18-character Salesforce id: the 3-character key prefix, `n` in 12 base-62 digits, and
/// the case-checksum suffix.
fn sf_id(prefix: &str, mut n: u64) -> String {
    const DIGITS: &[u8] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
    let mut body = [b'0'; 12];
    for slot in body.iter_mut().rev() {
        *slot = DIGITS[(n % 62) as usize];
        n /= 62;
    }
    let mut id = prefix.as_bytes().to_vec();
    id.extend_from_slice(&body);
    const SUFFIX: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ012345";
    let suffix: Vec<u8> = id
        .chunks(5)
        .map(|chunk| {
            let bits = chunk
                .iter()
                .enumerate()
                .filter(|(_, b)| b.is_ascii_uppercase())
                .fold(0, |acc, (i, _)| acc | (1 << i));
            SUFFIX[bits]
        })
        .collect();
    id.extend_from_slice(&suffix);
    String::from_utf8_lossy(&id).into_owned()
}

/// `2024-05-01T10:00:00.000Z`.
fn rfc3339(t: SystemTime) -> String {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs();
    let (rem, z) = (secs % 86_400, (secs / 86_400) as i64 + 719_468);
    // Days to a civil date (Howard Hinnant's algorithm).
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem / 60 % 60,
        rem % 60,
        d.subsec_millis()
    )
}

/// A request body that must be a JSON object, or the `JSON_PARSER_ERROR` answer.
fn json_object(body: &[u8]) -> Result<serde_json::Value, Box<Response>> {
    let refuse =
        |message: &str| Box::new(error(StatusCode::BAD_REQUEST, "JSON_PARSER_ERROR", message));
    match serde_json::from_slice(body) {
        Ok(spec @ serde_json::Value::Object(_)) => Ok(spec),
        Ok(_) => Err(refuse("Expected a JSON object")),
        Err(e) => Err(refuse(&e.to_string())),
    }
}

/// A job spec's `contentType`, `lineEnding` and `columnDelimiter`: whether lines end with
/// CRLF, and the delimiter; or why they are refused.
fn csv_format(spec: &serde_json::Value) -> Result<(bool, (&'static str, u8)), String> {
    let field = |name: &str| spec.get(name).and_then(|v| v.as_str());
    if field("contentType").is_some_and(|c| c != "CSV") {
        return Err("InvalidJob : Unsupported content type; only CSV is supported".into());
    }
    let crlf = match field("lineEnding") {
        None | Some("LF") => false,
        Some("CRLF") => true,
        Some(other) => return Err(format!("InvalidJob : Invalid lineEnding: {other}")),
    };
    let delimiter = match field("columnDelimiter") {
        None => DELIMITERS[0],
        Some(d) => match DELIMITERS.iter().find(|(name, _)| *name == d) {
            Some(found) => *found,
            None => return Err(format!("InvalidJob : Invalid columnDelimiter: {d}")),
        },
    };
    Ok((crlf, delimiter))
}

/// Salesforce's error array.
fn error(status: StatusCode, code: &str, message: &str) -> Response {
    let body = serde_json::json!([{ "errorCode": code, "message": message }]);
    json_response(status, body.to_string().into_bytes())
}

fn not_found() -> Response {
    let message = "The requested resource does not exist";
    error(StatusCode::NOT_FOUND, "NOT_FOUND", message)
}

enum BodyError {
    TooBig,
    Broken,
}

/// Reads a body of up to `max` bytes; a longer one is read to its end and refused.
async fn read_body(mut body: Body, max: usize) -> Result<Vec<u8>, BodyError> {
    let mut kept = Vec::new();
    let mut too_big = false;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|_| BodyError::Broken)?;
        if let Some(data) = frame.data_ref() {
            if too_big || kept.len() + data.len() > max {
                too_big = true;
                kept = Vec::new();
            } else {
                kept.extend_from_slice(data);
            }
        }
    }
    if too_big {
        Err(BodyError::TooBig)
    } else {
        Ok(kept)
    }
}

/// Reads and drops a body, so the connection stays usable.
pub(crate) async fn drain(body: Body) {
    let _ = read_body(body, 0).await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{MockConfig, MockHandle, Profile};
    use bytes::Bytes;
    use http_body_util::Full;
    use hyper_util::client::legacy::{connect::HttpConnector, Client};
    use hyper_util::rt::TokioExecutor;
    use serde_json::{json, Value};

    const JOBS: &str = "/services/data/v62.0/jobs/ingest";

    struct Sf {
        mock: MockHandle,
        client: Client<HttpConnector, Full<Bytes>>,
    }

    struct Reply {
        status: StatusCode,
        headers: HeaderMap,
        body: Vec<u8>,
    }

    impl Reply {
        fn json(&self) -> Value {
            serde_json::from_slice(&self.body).expect("a JSON body")
        }

        fn error_code(&self) -> String {
            self.json()[0]["errorCode"]
                .as_str()
                .unwrap_or("")
                .to_string()
        }
    }

    async fn start(limit: u32) -> Sf {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let config = MockConfig {
            profile: Profile::SalesforceBulk2,
            limit,
            window: Duration::from_secs(600),
            ..MockConfig::default()
        };
        let mock = crate::spawn(listener, config).await.unwrap();
        mock.bulk()
            .set_processing(Duration::from_millis(20), Duration::from_micros(100));
        let client = Client::builder(TokioExecutor::new()).build_http();
        Sf { mock, client }
    }

    impl Sf {
        async fn send(&self, method: &str, path: &str, content_type: &str, body: &[u8]) -> Reply {
            let request = http::Request::builder()
                .method(method)
                .uri(format!("{}{path}", self.mock.url()))
                .header("authorization", "Bearer t")
                .header("content-type", content_type)
                .body(Full::new(Bytes::copy_from_slice(body)))
                .unwrap();
            let response = self.client.request(request).await.unwrap();
            let (parts, body) = response.into_parts();
            let body = body.collect().await.unwrap().to_bytes().to_vec();
            Reply {
                status: parts.status,
                headers: parts.headers,
                body,
            }
        }

        async fn json(&self, method: &str, path: &str, body: Value) -> Reply {
            let body = body.to_string();
            self.send(method, path, "application/json", body.as_bytes())
                .await
        }

        async fn create(&self, operation: &str, extra: Value) -> String {
            let mut spec = json!({ "object": "Account", "operation": operation });
            if let (Value::Object(spec), Value::Object(extra)) = (&mut spec, extra) {
                spec.extend(extra);
            }
            let r = self.json("POST", JOBS, spec).await;
            assert_eq!(
                r.status,
                StatusCode::OK,
                "{}",
                String::from_utf8_lossy(&r.body)
            );
            r.json()["id"].as_str().unwrap().to_string()
        }

        async fn upload(&self, id: &str, csv: &str) -> Reply {
            let path = format!("{JOBS}/{id}/batches/");
            self.send("PUT", &path, "text/csv", csv.as_bytes()).await
        }

        async fn set_state(&self, id: &str, state: &str) -> Reply {
            self.json("PATCH", &format!("{JOBS}/{id}"), json!({ "state": state }))
                .await
        }

        async fn info(&self, id: &str) -> Value {
            let r = self.send("GET", &format!("{JOBS}/{id}"), "", b"").await;
            assert_eq!(r.status, StatusCode::OK);
            r.json()
        }

        /// Polls until the job is finished; gives its info and every state it was seen in.
        async fn finish(&self, id: &str) -> (Value, Vec<String>) {
            let mut seen: Vec<String> = Vec::new();
            for _ in 0..1000 {
                let info = self.info(id).await;
                let state = info["state"].as_str().unwrap().to_string();
                if seen.last() != Some(&state) {
                    seen.push(state.clone());
                }
                if ["JobComplete", "Failed", "Aborted"].contains(&state.as_str()) {
                    return (info, seen);
                }
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            panic!("job {id} did not finish: {seen:?}");
        }

        /// A result file's records, header first.
        async fn results(&self, id: &str, file: &str) -> Vec<Vec<String>> {
            let r = self
                .send("GET", &format!("{JOBS}/{id}/{file}/"), "", b"")
                .await;
            assert_eq!(
                r.status,
                StatusCode::OK,
                "{}",
                String::from_utf8_lossy(&r.body)
            );
            assert_eq!(r.headers[CONTENT_TYPE], "text/csv");
            csv::ReaderBuilder::new()
                .has_headers(false)
                .flexible(true)
                .from_reader(r.body.as_slice())
                .records()
                .map(|r| r.unwrap().iter().map(str::to_string).collect())
                .collect()
        }
    }

    #[test]
    fn routes() {
        let job = |id: &str| Some(Route::Job { id: id.into() });
        assert_eq!(
            Route::parse("/services/data/v62.0/jobs/ingest/"),
            Some(Route::Jobs { v: "v62.0".into() })
        );
        assert_eq!(
            Route::parse("/services/data/v58.0/jobs/ingest/750x"),
            job("750x")
        );
        assert_eq!(
            Route::parse("/services/data/v62.0/jobs/ingest/750x/unprocessedrecords/"),
            Some(Route::Results {
                id: "750x".into(),
                kind: Kind::Unprocessed
            })
        );
        assert_eq!(
            Route::parse("/services/data/v62.0/jobs/query/"),
            Some(Route::QueryJobs { v: "v62.0".into() })
        );
        assert_eq!(
            Route::parse("/services/data/v58.0/jobs/query/750x"),
            Some(Route::QueryJob { id: "750x".into() })
        );
        assert_eq!(
            Route::parse("/services/data/v62.0/jobs/query/750x/results/"),
            Some(Route::QueryResults { id: "750x".into() })
        );
        for other in [
            "/services/data/62.0/jobs/ingest",
            "/services/data/vx/jobs/ingest",
            "/services/data/v62.0/jobs/other",
            "/services/data/v62.0/jobs/ingest/750x/other",
            "/services/data/v62.0/jobs/query/750x/batches",
            "/services/data/v62.0/jobs/query/750x/results/more",
            "/services/data/v62.0/sobjects/Account",
        ] {
            assert_eq!(Route::parse(other), None, "{other}");
        }
        assert_eq!(sf_id("001", 1), "001000000000001AAA");
        assert_eq!(sf_id("001", 35).len(), 18);
        assert_eq!(query_value("Id", 1), "00100Q000000001ABA");
        assert_eq!(query_value("Phone", 7), "Phone 7");
        assert_eq!(query_value("name", 2000), "name 2000, \"quoted\"\nline two");
        assert_eq!(query_value("Name", 2001), "Name 2001");
        let fields = |q: &str| parse_select(q).map(|(f, o)| (f.join("|"), o));
        assert_eq!(
            fields("  select Id ,Owner.Name,x__c\nFrom\tAccount where a = 'FROM b'"),
            Ok(("Id|Owner.Name|x__c".into(), "Account".into()))
        );
        assert_eq!(
            fields("SELECT Id, FromDate__c FROM Event"),
            Ok(("Id|FromDate__c".into(), "Event".into()))
        );
        assert_eq!(
            rfc3339(UNIX_EPOCH + Duration::from_millis(951_782_400_123)),
            "2000-02-29T00:00:00.123Z"
        );
    }

    #[tokio::test]
    async fn insert_flow_states_and_results() {
        let sf = start(1000).await;
        let id = sf.create("insert", json!({})).await;
        assert!(id.starts_with("750") && id.len() == 18, "{id}");
        let info = sf.info(&id).await;
        assert_eq!(info["state"], "Open");
        assert_eq!(
            info["contentUrl"],
            format!("services/data/v62.0/jobs/ingest/{id}/batches")
        );
        assert_eq!(info["apiVersion"], 62.0);
        // Results are not there before the job is done.
        let r = sf
            .send("GET", &format!("{JOBS}/{id}/successfulResults"), "", b"")
            .await;
        assert_eq!(
            (r.status, r.error_code().as_str()),
            (StatusCode::BAD_REQUEST, "INVALIDJOB")
        );

        let csv = "Name,External_Id__c\nAcme,e1\n,e2\nGlobex #lock,e3\nInitech,e4\nUmbrella,e5\n";
        assert_eq!(sf.upload(&id, csv).await.status, StatusCode::CREATED);
        let closed = sf.set_state(&id, "UploadComplete").await;
        assert_eq!(closed.json()["state"], "UploadComplete");
        let (info, seen) = sf.finish(&id).await;
        assert_eq!(
            seen.last().map(String::as_str),
            Some("JobComplete"),
            "{seen:?}"
        );
        assert!(!seen.contains(&"Open".to_string()));
        assert_eq!(info["numberRecordsProcessed"], 5);
        assert_eq!(info["numberRecordsFailed"], 2);

        let ok = sf.results(&id, "successfulResults").await;
        assert_eq!(ok[0], ["sf__Id", "sf__Created", "Name", "External_Id__c"]);
        let mut names: Vec<&str> = ok[1..].iter().map(|r| r[2].as_str()).collect();
        names.sort_unstable();
        assert_eq!(names, ["Acme", "Initech", "Umbrella"]);
        assert!(ok[1..]
            .iter()
            .all(|r| r[0].starts_with("001") && r[0].len() == 18 && r[1] == "true"));
        let failed = sf.results(&id, "failedResults").await;
        assert_eq!(failed[0], ["sf__Id", "sf__Error", "Name", "External_Id__c"]);
        let mut errors: Vec<(&str, &str)> = failed[1..]
            .iter()
            .map(|r| (r[3].as_str(), r[1].as_str()))
            .collect();
        errors.sort_unstable();
        assert_eq!(
            errors,
            [
                ("e2", "REQUIRED_FIELD_MISSING:Required fields are missing: [Name]:Name --"),
                ("e3", "UNABLE_TO_LOCK_ROW:unable to obtain exclusive access to this record or 1 records:--"),
            ]
        );
        let unprocessed = sf.results(&id, "unprocessedrecords").await;
        assert_eq!(unprocessed, [["Name", "External_Id__c"]]);

        // The locked row goes through in a new job.
        let again = sf.create("insert", json!({})).await;
        sf.upload(&again, "Name,External_Id__c\nGlobex #lock,e3\n")
            .await;
        sf.set_state(&again, "UploadComplete").await;
        assert_eq!(sf.finish(&again).await.0["numberRecordsFailed"], 0);

        let stats = sf.mock.bulk_stats();
        assert_eq!(
            (stats.jobs_created, stats.uploads, stats.uploads_started),
            (2, 2, 2)
        );
        assert_eq!(
            (stats.closes, stats.rows_processed, stats.rows_failed),
            (2, 6, 2)
        );
        assert_eq!(stats.processed_by_key["e3"], 2);
        assert_eq!(stats.succeeded_by_key["e3"], 1);
        assert!(!stats.succeeded_by_key.contains_key("e2"));
        assert_eq!(stats.results_downloads, 3);
        let listed = sf.send("GET", JOBS, "", b"").await.json();
        assert_eq!(listed["done"], true);
        assert_eq!(listed["records"][0]["id"], id.as_str());
        assert_eq!(listed["records"][1]["id"], again.as_str());
        // Every Bulk call was a REST call (11 + the polls); the control routes were not.
        let http_stats = sf.send("GET", "/_mock/bulk/stats", "", b"").await.json();
        assert_eq!(http_stats["jobs_created"], 2);
        assert_eq!(sf.mock.stats().accepted, 11 + stats.polls);
        assert_eq!(
            sf.send("DELETE", &format!("{JOBS}/{id}"), "", b"")
                .await
                .status,
            StatusCode::NO_CONTENT
        );
        assert_eq!(sf.info_status(&id).await, StatusCode::NOT_FOUND);
    }

    impl Sf {
        async fn info_status(&self, id: &str) -> StatusCode {
            self.send("GET", &format!("{JOBS}/{id}"), "", b"")
                .await
                .status
        }
    }

    #[tokio::test]
    async fn results_are_not_in_upload_order_and_other_operations() {
        let sf = start(1000).await;
        let id = sf.create("insert", json!({ "lineEnding": "LF" })).await;
        let mut csv = String::from("External_Id__c,Name\n");
        for i in 0..50 {
            csv.push_str(&format!("k{i},N{i}\n"));
        }
        sf.upload(&id, &csv).await;
        sf.set_state(&id, "UploadComplete").await;
        sf.finish(&id).await;
        let ok = sf.results(&id, "successfulResults").await;
        let got: Vec<&str> = ok[1..].iter().map(|r| r[2].as_str()).collect();
        let uploaded: Vec<String> = (0..50).map(|i| format!("k{i}")).collect();
        assert_ne!(got, uploaded);
        let mut sorted = got.clone();
        sorted.sort_by_key(|k| k[1..].parse::<u32>().unwrap());
        assert_eq!(sorted, uploaded);
        let again = sf.results(&id, "successfulResults").await;
        assert_eq!(ok, again, "deterministic");

        // Update: ids echoed, malformed ones refused.
        let id = sf.create("update", json!({})).await;
        sf.upload(&id, "Id,Name\n001000000000001AAA,A\nbad,B\n,C\n")
            .await;
        sf.set_state(&id, "UploadComplete").await;
        sf.finish(&id).await;
        let ok = sf.results(&id, "successfulResults").await;
        assert_eq!(
            ok[1],
            ["001000000000001AAA", "false", "001000000000001AAA", "A"]
        );
        let mut failed: Vec<String> = sf.results(&id, "failedResults").await[1..]
            .iter()
            .map(|r| r[1].clone())
            .collect();
        failed.sort_unstable();
        assert_eq!(
            failed,
            [
                "MALFORMED_ID:Id: id value of incorrect type: :Id --",
                "MALFORMED_ID:Id: id value of incorrect type: bad:Id --"
            ]
        );

        // Upsert: created once per external id, a missing one refused.
        for created in ["true", "false"] {
            let id = sf
                .create("upsert", json!({ "externalIdFieldName": "Ext__c" }))
                .await;
            sf.upload(&id, "Ext__c,Name\nx1,A\n,B\n").await;
            sf.set_state(&id, "UploadComplete").await;
            sf.finish(&id).await;
            let ok = sf.results(&id, "successfulResults").await;
            assert_eq!(ok[1][1], created);
            let failed = sf.results(&id, "failedResults").await;
            assert_eq!(failed[1][1], "MISSING_ARGUMENT:Ext__c not specified:--");
        }
        // Without External_Id__c, rows are keyed by their whole text.
        assert_eq!(sf.mock.bulk_stats().processed_by_key["x1,A"], 2);
    }

    #[tokio::test]
    async fn refusals() {
        let sf = start(1000).await;
        let bad = |r: &Reply| (r.status, r.error_code());
        let invalid = (StatusCode::BAD_REQUEST, "INVALIDJOB".to_string());
        let r = sf.send("POST", JOBS, "application/json", b"{nope").await;
        assert_eq!(
            bad(&r),
            (StatusCode::BAD_REQUEST, "JSON_PARSER_ERROR".into())
        );
        for spec in [
            json!({ "operation": "insert" }),
            json!({ "object": "Account", "operation": "merge" }),
            json!({ "object": "Account", "operation": "upsert" }),
            json!({ "object": "Account", "operation": "insert", "contentType": "JSON" }),
        ] {
            assert_eq!(
                bad(&sf.json("POST", JOBS, spec.clone()).await),
                invalid,
                "{spec}"
            );
        }
        let r = sf.upload("750000000000000AAA", "Name\nx\n").await;
        assert_eq!(bad(&r), (StatusCode::NOT_FOUND, "NOT_FOUND".into()));

        let id = sf.create("insert", json!({})).await;
        let r = sf
            .send(
                "PUT",
                &format!("{JOBS}/{id}/batches"),
                "application/json",
                b"Name\nx\n",
            )
            .await;
        assert_eq!(bad(&r), invalid, "not text/csv");
        sf.mock.bulk().set_max_upload_bytes(10);
        let r = sf.upload(&id, "Name\nfar too long\n").await;
        assert_eq!(bad(&r), invalid);
        assert!(r.json()[0]["message"]
            .as_str()
            .unwrap()
            .contains("10 bytes"));
        sf.mock.bulk().set_max_upload_bytes(1000);
        assert_eq!(
            sf.upload(&id, "Name\nx\n").await.status,
            StatusCode::CREATED
        );
        let r = sf.upload(&id, "Name\ny\n").await;
        assert_eq!(bad(&r), invalid);
        assert!(r.json()[0]["message"]
            .as_str()
            .unwrap()
            .starts_with(&format!(
                "Found multiple contents for job: {id}, please 'Close'"
            )));
        sf.set_state(&id, "UploadComplete").await;
        assert_eq!(
            sf.set_state(&id, "UploadComplete").await.status,
            StatusCode::OK
        );
        sf.finish(&id).await;
        assert_eq!(bad(&sf.set_state(&id, "Aborted").await), invalid);
        let r = sf.send("POST", &format!("{JOBS}/{id}"), "", b"").await;
        assert_eq!(r.status, StatusCode::METHOD_NOT_ALLOWED);
        let stats = sf.mock.bulk_stats();
        assert_eq!(
            (stats.uploads, stats.uploads_started, stats.closes),
            (1, 5, 2)
        );

        // Closed without data; an upload without a header.
        let id = sf.create("insert", json!({})).await;
        let r = sf.set_state(&id, "UploadComplete").await.json();
        assert_eq!(r["state"], "Failed");
        assert_eq!(r["errorMessage"], "InvalidBatch : No data uploaded");
        let id = sf.create("insert", json!({})).await;
        assert_eq!(sf.upload(&id, "").await.status, StatusCode::CREATED);
        sf.set_state(&id, "UploadComplete").await;
        let (info, _) = sf.finish(&id).await;
        assert_eq!(info["state"], "Failed");
        assert!(info["errorMessage"]
            .as_str()
            .unwrap()
            .starts_with("InvalidBatch : "));
        let id = sf.create("insert", json!({})).await;
        sf.upload(&id, "Name,Other\n\"a,b\n").await;
        sf.set_state(&id, "UploadComplete").await;
        assert_eq!(sf.finish(&id).await.0["state"], "Failed");
        let r = sf
            .send("GET", &format!("{JOBS}/{id}/unprocessedrecords"), "", b"")
            .await;
        assert_eq!(r.body, b"Name,Other\n\"a,b\n");
    }

    #[tokio::test]
    async fn abort_mid_processing_leaves_the_rest_unprocessed() {
        let sf = start(1000).await;
        // 400 rows over 400 ms; the abort comes after about 50.
        sf.mock
            .bulk()
            .set_processing(Duration::ZERO, Duration::from_millis(1));
        let id = sf.create("insert", json!({})).await;
        let mut csv = String::from("External_Id__c,Name\n");
        for i in 0..400 {
            csv.push_str(&format!("k{i},N{i}\n"));
        }
        sf.upload(&id, &csv).await;
        sf.set_state(&id, "UploadComplete").await;
        tokio::time::sleep(Duration::from_millis(50)).await;
        let r = sf.set_state(&id, "Aborted").await;
        assert_eq!(r.json()["state"], "Aborted");
        assert_eq!(
            sf.set_state(&id, "Aborted").await.status,
            StatusCode::OK,
            "harmless again"
        );
        let info = sf.info(&id).await;
        let processed = info["numberRecordsProcessed"].as_u64().unwrap() as usize;
        assert!(processed > 0 && processed < 400, "{processed}");
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert_eq!(
            sf.info(&id).await["numberRecordsProcessed"],
            processed,
            "stopped"
        );
        let ok = sf.results(&id, "successfulResults").await;
        let unprocessed = sf.results(&id, "unprocessedrecords").await;
        assert_eq!(ok.len() - 1, processed);
        assert_eq!(unprocessed.len() - 1, 400 - processed);
        assert_eq!(unprocessed[0], ["External_Id__c", "Name"]);
        // The unprocessed rows are the tail of the upload.
        let mut tail: Vec<usize> = unprocessed[1..]
            .iter()
            .map(|r| r[0][1..].parse().unwrap())
            .collect();
        tail.sort_unstable();
        assert_eq!(tail, (processed..400).collect::<Vec<_>>());
        let stats = sf.mock.bulk_stats();
        assert_eq!(stats.rows_processed as usize, processed);
        assert_eq!(stats.aborts, 2);
        assert!(stats.processed_by_key.values().all(|&n| n == 1));
    }

    #[tokio::test]
    async fn quoted_csv_round_trips() {
        let sf = start(1000).await;
        let id = sf.create("insert", json!({ "lineEnding": "CRLF" })).await;
        let values = [
            ["a, with comma", "say \"hi\"", "two\nlines"],
            ["crlf\r\ninside", "", "ünïcödé ☃"],
            ["  spaces  ", "\"", ","],
        ];
        let mut csv = String::from("Name,Description,\"Odd, Header\"\r\n");
        for row in &values {
            let fields: Vec<String> = row
                .iter()
                .map(|v| format!("\"{}\"", v.replace('"', "\"\"")))
                .collect();
            csv.push_str(&fields.join(","));
            csv.push_str("\r\n");
        }
        sf.upload(&id, &csv).await;
        sf.set_state(&id, "UploadComplete").await;
        sf.finish(&id).await;
        let r = sf
            .send("GET", &format!("{JOBS}/{id}/successfulResults"), "", b"")
            .await;
        assert!(r
            .body
            .starts_with(b"\"sf__Id\",\"sf__Created\",Name,Description,\"Odd, Header\"\r\n"));
        let mut ok: Vec<Vec<String>> = sf.results(&id, "successfulResults").await[1..]
            .iter()
            .map(|r| r[2..].to_vec())
            .collect();
        ok.sort();
        let mut want: Vec<Vec<String>> = values
            .iter()
            .map(|r| r.iter().map(|v| v.to_string()).collect())
            .collect();
        want.sort();
        assert_eq!(ok, want);
    }

    #[tokio::test]
    async fn bulk_calls_count_against_the_rest_limit() {
        let sf = start(3).await;
        let id = sf.create("insert", json!({})).await;
        let r = sf.upload(&id, "Name\nx\n").await;
        assert_eq!(r.status, StatusCode::CREATED);
        assert_eq!(r.headers["sforce-limit-info"], "api-usage=2/3");
        sf.set_state(&id, "UploadComplete").await;
        let r = sf.send("GET", &format!("{JOBS}/{id}"), "", b"").await;
        assert_eq!(r.status, StatusCode::FORBIDDEN);
        assert_eq!(r.error_code(), "REQUEST_LIMIT_EXCEEDED");
        // Control routes are free and the throttled poll reached no job.
        let config = sf
            .json(
                "POST",
                "/_mock/bulk/config",
                json!({ "upload_delay_ms": 5, "key_column": "Name" }),
            )
            .await;
        assert_eq!(config.json()["key_column"], "Name");
        let stats = sf.send("GET", "/_mock/bulk/stats", "", b"").await.json();
        assert_eq!(
            (stats["polls"].as_u64(), stats["closes"].as_u64()),
            (Some(0), Some(1))
        );
        let totals = sf.mock.stats();
        assert_eq!((totals.accepted, totals.throttled), (3, 1));
        assert_eq!(totals.by_tenant["Bearer t"].throttled, 1);
    }

    #[tokio::test]
    async fn ten_thousand_rows() {
        let sf = start(100_000).await;
        sf.mock
            .bulk()
            .set_processing(Duration::from_millis(10), Duration::from_micros(5));
        let id = sf.create("insert", json!({})).await;
        let mut csv = String::from("External_Id__c,Name,Description\n");
        for i in 0..10_000 {
            csv.push_str(&format!("k{i},Name {i},\"text, {i}\"\n"));
        }
        sf.upload(&id, &csv).await;
        sf.set_state(&id, "UploadComplete").await;
        assert_eq!(sf.finish(&id).await.0["numberRecordsProcessed"], 10_000);
        assert_eq!(sf.results(&id, "successfulResults").await.len(), 10_001);
        let stats = sf
            .mock
            .bulk()
            .wait_for(Duration::from_secs(1), |s| s.rows_processed == 10_000)
            .await
            .unwrap();
        assert_eq!(stats.processed_by_key.len(), 10_000);
    }

    const QUERY: &str = "/services/data/v62.0/jobs/query";

    impl Sf {
        async fn create_query(&self, spec: Value) -> Value {
            let r = self.json("POST", QUERY, spec).await;
            assert_eq!(
                r.status,
                StatusCode::OK,
                "{}",
                String::from_utf8_lossy(&r.body)
            );
            r.json()
        }

        async fn query_info(&self, id: &str) -> Value {
            let r = self.send("GET", &format!("{QUERY}/{id}"), "", b"").await;
            assert_eq!(r.status, StatusCode::OK);
            r.json()
        }

        /// Polls until the query job is finished; gives its info and every state seen.
        async fn finish_query(&self, id: &str) -> (Value, Vec<String>) {
            let mut seen: Vec<String> = Vec::new();
            for _ in 0..1000 {
                let info = self.query_info(id).await;
                let state = info["state"].as_str().unwrap().to_string();
                if seen.last() != Some(&state) {
                    seen.push(state.clone());
                }
                if ["JobComplete", "Failed", "Aborted"].contains(&state.as_str()) {
                    return (info, seen);
                }
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            panic!("query job {id} did not finish: {seen:?}");
        }

        async fn page(&self, id: &str, params: &str) -> Reply {
            self.send("GET", &format!("{QUERY}/{id}/results?{params}"), "", b"")
                .await
        }
    }

    impl Reply {
        fn header(&self, name: &str) -> &str {
            self.headers[name].to_str().unwrap()
        }
    }

    fn csv_records(body: &[u8]) -> Vec<Vec<String>> {
        csv::ReaderBuilder::new()
            .has_headers(false)
            .from_reader(body)
            .records()
            .map(|r| r.unwrap().iter().map(str::to_string).collect())
            .collect()
    }

    #[tokio::test]
    async fn query_results_are_paged_by_locators() {
        let sf = start(1000).await;
        // 100 ms + 2,500 × 20 µs.
        sf.mock
            .bulk()
            .set_processing(Duration::from_millis(100), Duration::from_micros(20));
        sf.mock.bulk().set_query_records(2500);
        let soql = "SELECT Id, Name, Phone FROM Account WHERE Industry = 'Energy'";
        let created = sf
            .create_query(json!({ "operation": "query", "query": soql }))
            .await;
        let id = created["id"].as_str().unwrap().to_string();
        assert!(id.starts_with("750") && id.len() == 18, "{id}");
        for (field, value) in [
            ("operation", "query"),
            ("object", "Account"),
            ("createdById", CREATED_BY),
            ("state", "UploadComplete"),
            ("concurrencyMode", "Parallel"),
            ("contentType", "CSV"),
            ("lineEnding", "LF"),
            ("columnDelimiter", "COMMA"),
        ] {
            assert_eq!(created[field], value, "{field}");
        }
        assert_eq!(created["apiVersion"], 62.0);
        assert!(created["createdDate"].as_str().unwrap().ends_with('Z'));
        assert!(created["systemModstamp"].is_string());
        let mut calls = 1;

        // Not done yet; and not an ingest job.
        let r = sf.page(&id, "maxRecords=1000").await;
        assert_eq!(
            (r.status, r.error_code().as_str()),
            (StatusCode::BAD_REQUEST, "INVALIDJOBSTATE")
        );
        assert_eq!(sf.info_status(&id).await, StatusCode::NOT_FOUND);
        calls += 2;

        let (info, seen) = sf.finish_query(&id).await;
        assert_eq!(seen.last().map(String::as_str), Some("JobComplete"));
        let order = ["UploadComplete", "InProgress", "JobComplete"];
        let positions: Vec<usize> = seen
            .iter()
            .map(|s| order.iter().position(|o| o == s).unwrap())
            .collect();
        assert!(positions.windows(2).all(|w| w[0] < w[1]), "{seen:?}");
        assert_eq!(info["jobType"], "V2Query");
        assert_eq!(info["numberRecordsProcessed"], 2500);
        assert_eq!(info["retries"], 0);
        assert_eq!(info["totalProcessingTime"], 150);

        // Three pages of 1000, 1000 and 500, each naming the next.
        let mut locator: Option<String> = None;
        let mut pages: Vec<Reply> = Vec::new();
        let mut rows: Vec<Vec<String>> = Vec::new();
        loop {
            let params = match &locator {
                None => "maxRecords=1000".to_string(),
                Some(l) => format!("maxRecords=1000&locator={l}"),
            };
            let r = sf.page(&id, &params).await;
            calls += 1;
            assert_eq!(
                r.status,
                StatusCode::OK,
                "{}",
                String::from_utf8_lossy(&r.body)
            );
            assert_eq!(r.header("content-type"), "text/csv");
            assert!(r.body.starts_with(b"\"Id\",\"Name\",\"Phone\"\n"));
            assert!(!r.body.contains(&b'\r'));
            let page = csv_records(&r.body);
            assert_eq!(page[0], ["Id", "Name", "Phone"]);
            let n: usize = r.header("sforce-numberofrecords").parse().unwrap();
            assert_eq!(n, page.len() - 1);
            rows.extend(page.into_iter().skip(1));
            let next = r.header("sforce-locator").to_string();
            pages.push(r);
            if next == "null" {
                break;
            }
            assert!(
                next.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'),
                "{next}"
            );
            assert!(pages.len() < 10, "no end");
            locator = Some(next);
        }
        let sizes: Vec<&str> = pages
            .iter()
            .map(|p| p.header("sforce-numberofrecords"))
            .collect();
        assert_eq!(sizes, ["1000", "1000", "500"]);
        assert!(pages[2]
            .header("sforce-limit-info")
            .starts_with("api-usage="));
        assert_eq!(rows.len(), 2500);
        for (k, row) in rows.iter().enumerate() {
            let i = k + 1;
            let want = [
                query_value("Id", i),
                query_value("Name", i),
                format!("Phone {i}"),
            ];
            assert_eq!(row, &want, "row {i}");
        }
        assert_eq!(rows[1999][1], "Name 2000, \"quoted\"\nline two");
        let ids: HashSet<&str> = rows.iter().map(|r| r[0].as_str()).collect();
        assert_eq!(ids.len(), 2500);
        assert!(ids.iter().all(|id| id.len() == 18 && id.starts_with("001")));
        // Every value is quoted, quotes doubled.
        let first_row = format!("\"{}\",\"Name 1\",\"Phone 1\"\n", query_value("Id", 1));
        assert!(pages[0].body[20..].starts_with(first_row.as_bytes()));
        let quoted = b"\"Name 1000, \"\"quoted\"\"\nline two\",\"Phone 1000\"\n";
        assert!(pages[0].body.ends_with(quoted));

        // The same locator again: the same page.
        let second = pages[0].header("sforce-locator").to_string();
        for _ in 0..2 {
            let again = sf
                .page(&id, &format!("locator={second}&maxRecords=1000"))
                .await;
            calls += 1;
            assert_eq!(again.status, StatusCode::OK);
            assert_eq!(again.body, pages[1].body);
            assert_eq!(
                again.header("sforce-locator"),
                pages[1].header("sforce-locator")
            );
        }

        // Locators this job never gave out, and bad page sizes.
        let forged = BASE64.encode("1500");
        for params in [
            "locator=bogus".to_string(),
            "locator=null".to_string(),
            format!("locator={forged}"),
        ] {
            let r = sf.page(&id, &params).await;
            calls += 1;
            assert_eq!(
                (r.status, r.error_code().as_str()),
                (StatusCode::BAD_REQUEST, "INVALIDLOCATOR"),
                "{params}"
            );
        }
        for params in ["maxRecords=0", "maxRecords=ten", "maxRecords=-1"] {
            let r = sf.page(&id, params).await;
            calls += 1;
            assert_eq!(r.status, StatusCode::BAD_REQUEST, "{params}");
        }

        // Without maxRecords, up to 50,000 rows: all of them.
        let all = sf.page(&id, "").await;
        calls += 1;
        assert_eq!(all.header("sforce-numberofrecords"), "2500");
        assert_eq!(all.header("sforce-locator"), "null");
        assert_eq!(csv_records(&all.body)[1..], rows[..]);

        let listed = sf.send("GET", QUERY, "", b"").await.json();
        calls += 1;
        assert_eq!(listed["done"], true);
        assert_eq!(listed["records"][0]["id"], id.as_str());
        assert_eq!(listed["records"][0]["state"], "JobComplete");

        let stats = sf.mock.bulk_stats();
        assert_eq!(stats.query_jobs_created, 1);
        assert_eq!(stats.jobs_created, 0);
        assert_eq!(stats.result_pages, 3 + 2 + 1);
        assert_eq!(stats.result_rows_served, 2500 + 2 * 1000 + 2500);
        // Every call was a REST call.
        assert_eq!(sf.mock.stats().accepted, calls + stats.query_polls);

        let r = sf.send("DELETE", &format!("{QUERY}/{id}/"), "", b"").await;
        assert_eq!(r.status, StatusCode::NO_CONTENT);
        let r = sf.page(&id, "").await;
        assert_eq!(
            (r.status, r.error_code().as_str()),
            (StatusCode::NOT_FOUND, "NOT_FOUND")
        );
    }

    #[tokio::test]
    async fn query_abort_mid_processing() {
        let sf = start(1000).await;
        // 400 records over 400 ms; the abort comes after about 50.
        sf.mock
            .bulk()
            .set_processing(Duration::ZERO, Duration::from_millis(1));
        sf.mock.bulk().set_query_records(400);
        let spec = json!({ "operation": "queryAll", "query": "SELECT Id FROM Contact" });
        let id = sf.create_query(spec.clone()).await["id"]
            .as_str()
            .unwrap()
            .to_string();
        tokio::time::sleep(Duration::from_millis(50)).await;
        let path = format!("{QUERY}/{id}");
        let abort = json!({ "state": "Aborted" });
        let r = sf.json("PATCH", &path, abort.clone()).await;
        assert_eq!(r.status, StatusCode::OK);
        assert_eq!(r.json()["state"], "Aborted");
        assert_eq!(r.json()["operation"], "queryAll");
        let r = sf.json("PATCH", &path, abort.clone()).await;
        assert_eq!(r.status, StatusCode::OK, "harmless again");
        let info = sf.query_info(&id).await;
        let processed = info["numberRecordsProcessed"].as_u64().unwrap();
        assert!(processed > 0 && processed < 400, "{processed}");
        tokio::time::sleep(Duration::from_millis(20)).await;
        let info = sf.query_info(&id).await;
        assert_eq!(info["state"], "Aborted");
        assert_eq!(info["numberRecordsProcessed"], processed, "stopped");
        assert_eq!(sf.mock.bulk().job_state(&id), Some("Aborted"));
        let r = sf.page(&id, "").await;
        assert_eq!(
            (r.status, r.error_code().as_str()),
            (StatusCode::BAD_REQUEST, "INVALIDJOBSTATE")
        );

        // An InProgress job cannot be deleted.
        let busy = sf.create_query(spec.clone()).await["id"]
            .as_str()
            .unwrap()
            .to_string();
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert_eq!(sf.query_info(&busy).await["state"], "InProgress");
        let r = sf.send("DELETE", &format!("{QUERY}/{busy}"), "", b"").await;
        assert_eq!(
            (r.status, r.error_code().as_str()),
            (StatusCode::BAD_REQUEST, "INVALIDJOB")
        );
        let r = sf
            .json("PATCH", &format!("{QUERY}/{busy}"), abort.clone())
            .await;
        assert_eq!(r.json()["state"], "Aborted");
        let r = sf.send("DELETE", &format!("{QUERY}/{busy}"), "", b"").await;
        assert_eq!(r.status, StatusCode::NO_CONTENT);

        // A complete job cannot be aborted; other transitions are refused.
        sf.mock
            .bulk()
            .set_processing(Duration::ZERO, Duration::ZERO);
        let done = sf.create_query(spec).await["id"]
            .as_str()
            .unwrap()
            .to_string();
        let path = format!("{QUERY}/{done}");
        let r = sf.json("PATCH", &path, abort).await;
        assert_eq!(
            (r.status, r.error_code().as_str()),
            (StatusCode::BAD_REQUEST, "INVALIDJOB")
        );
        let r = sf
            .json("PATCH", &path, json!({ "state": "UploadComplete" }))
            .await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST);
        let r = sf.send("PATCH", &path, "application/json", b"{nope").await;
        assert_eq!(r.error_code(), "JSON_PARSER_ERROR");
        assert_eq!(sf.query_info(&done).await["state"], "JobComplete");
        let r = sf.send("PUT", &path, "", b"").await;
        assert_eq!(r.status, StatusCode::METHOD_NOT_ALLOWED);
        assert_eq!(r.header("allow"), "GET,PATCH,DELETE");
        let r = sf.send("POST", &format!("{path}/results"), "", b"").await;
        assert_eq!(r.status, StatusCode::METHOD_NOT_ALLOWED);
        assert_eq!(sf.mock.bulk_stats().query_jobs_created, 3);
    }

    #[tokio::test]
    async fn bad_queries_are_refused() {
        let sf = start(1000).await;
        let code = |r: &Reply| (r.status, r.error_code());
        let r = sf.send("POST", QUERY, "application/json", b"{nope").await;
        assert_eq!(
            code(&r),
            (StatusCode::BAD_REQUEST, "JSON_PARSER_ERROR".into())
        );
        let r = sf
            .json("POST", QUERY, json!(["SELECT Id FROM Account"]))
            .await;
        assert_eq!(
            code(&r),
            (StatusCode::BAD_REQUEST, "JSON_PARSER_ERROR".into())
        );
        let good = "SELECT Id FROM Account";
        for spec in [
            json!({ "query": good }),
            json!({ "operation": "insert", "query": good }),
            json!({ "operation": "Query", "query": good }),
            json!({ "operation": "query" }),
            json!({ "operation": "query", "query": "  " }),
            json!({ "operation": "query", "query": good, "contentType": "JSON" }),
            json!({ "operation": "query", "query": good, "lineEnding": "CR" }),
            json!({ "operation": "query", "query": good, "columnDelimiter": "COLON" }),
        ] {
            let r = sf.json("POST", QUERY, spec.clone()).await;
            assert_eq!(
                code(&r),
                (StatusCode::BAD_REQUEST, "INVALIDJOB".into()),
                "{spec}"
            );
        }
        for soql in [
            "Id FROM Account",
            "UPDATE Account SET Name = 'x'",
            "SELECT FROM Account",
            "SELECT Id Account",
            "SELECTId FROM Account",
            "SELECT Id FROMAccount",
            "SELECT Id,FROM Account",
            "SELECT Id, FROM Account",
            "SELECT Id,, Name FROM Account",
            "SELECT Id FROM",
            "SELECT Id FROM Account, Contact",
            "SELECT Id FROM 1Account",
            "SELECT COUNT() FROM Account",
            "SELECT Id, Name, id FROM Account",
            "SELECT Id, (SELECT Id FROM Contacts) FROM Account",
            "SELECT Owner..Name FROM Account",
        ] {
            let r = sf
                .json(
                    "POST",
                    QUERY,
                    json!({ "operation": "query", "query": soql }),
                )
                .await;
            assert_eq!(
                code(&r),
                (StatusCode::BAD_REQUEST, "API_ERROR".into()),
                "{soql}"
            );
        }
        assert_eq!(sf.mock.bulk_stats().query_jobs_created, 0);
        let r = sf
            .send("GET", &format!("{QUERY}/750000000000000AAA"), "", b"")
            .await;
        assert_eq!(code(&r), (StatusCode::NOT_FOUND, "NOT_FOUND".into()));

        // Keywords in any case, what follows the object ignored, the format options kept;
        // the record count and processing set over HTTP.
        let config = json!({
            "query_records": 3,
            "processing_base_ms": 0,
            "processing_per_record_us": 0,
        });
        let r = sf.json("POST", "/_mock/bulk/config", config).await;
        assert_eq!(r.json()["query_records"], 3);
        let soql =
            "select id, Name, Owner.Name from Contact where Name like '%,%' order by Name limit 1";
        let created = sf
            .create_query(json!({
                "operation": "query",
                "query": soql,
                "lineEnding": "CRLF",
                "columnDelimiter": "PIPE",
                "contentType": "CSV",
            }))
            .await;
        assert_eq!(created["object"], "Contact");
        assert_eq!(created["lineEnding"], "CRLF");
        assert_eq!(created["columnDelimiter"], "PIPE");
        let id = created["id"].as_str().unwrap();
        sf.finish_query(id).await;
        let r = sf.page(id, "maxRecords=2").await;
        let mut want = String::from("\"id\"|\"Name\"|\"Owner.Name\"\r\n");
        for i in 1..=2 {
            let id = query_value("id", i);
            want.push_str(&format!("\"{id}\"|\"Name {i}\"|\"Owner.Name {i}\"\r\n"));
        }
        assert_eq!(String::from_utf8_lossy(&r.body), want);
        let next = r.header("sforce-locator").to_string();
        let r = sf.page(id, &format!("maxRecords=2&locator={next}")).await;
        assert_eq!(r.header("sforce-numberofrecords"), "1");
        assert_eq!(r.header("sforce-locator"), "null");

        // An empty result: the header line alone.
        sf.mock.bulk().set_query_records(0);
        let id = sf
            .create_query(json!({ "operation": "query", "query": "SELECT Id FROM Lead" }))
            .await["id"]
            .as_str()
            .unwrap()
            .to_string();
        sf.finish_query(&id).await;
        let r = sf.page(&id, "").await;
        assert_eq!(r.body, b"\"Id\"\n");
        assert_eq!(r.header("sforce-numberofrecords"), "0");
        assert_eq!(r.header("sforce-locator"), "null");
    }
}
