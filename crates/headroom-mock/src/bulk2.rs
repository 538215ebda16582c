//! Salesforce Bulk API 2.0 *ingest* jobs, served by the `salesforce-bulk2` profile, so a
//! client of the asynchronous API (create, upload once, close, poll, fetch results) can be
//! tested against its real rules without an org.
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
//! `GET /_mock/bulk/stats` ([`Bulk2Stats`]) and `GET`/`POST /_mock/bulk/config` (fields
//! `processing_base_ms`, `processing_per_record_us`, `upload_delay_ms`, `max_upload_bytes`,
//! `key_column`, all optional) are never counted; [`crate::MockHandle::bulk`] sets the same in
//! process. `processed_by_key` shows whether any record was processed twice.

use std::collections::hash_map::DefaultHasher;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::hash::Hasher;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::body::Body;
use axum::response::Response;
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
    /// Abort requests answered 200 (repeats included).
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
}

#[derive(Debug, Clone)]
struct Knobs {
    base: Duration,
    per_record: Duration,
    upload_delay: Duration,
    max_upload_bytes: usize,
    key_column: String,
}

impl Default for Knobs {
    fn default() -> Self {
        Knobs {
            base: Duration::from_millis(200),
            per_record: Duration::from_micros(20),
            upload_delay: Duration::ZERO,
            max_upload_bytes: 150_000_000,
            key_column: "External_Id__c".into(),
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

    /// The counters, with every job's processing brought up to now.
    pub fn stats(&self) -> Bulk2Stats {
        self.bulk.stats()
    }

    /// A job's state now (`"Open"`, `"InProgress"`, …), `None` if there is no such job.
    pub fn job_state(&self, id: &str) -> Option<&'static str> {
        let mut guard = self.bulk.lock();
        let s = &mut *guard;
        let job = s.jobs.get_mut(id)?;
        job.advance(Instant::now(), &mut s.world, &s.knobs.key_column);
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
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Successful,
    Failed,
    Unprocessed,
}

impl Route {
    /// The route of `path`, if it is a Bulk 2.0 ingest path.
    pub(crate) fn parse(path: &str) -> Option<Route> {
        let path = path.strip_suffix('/').unwrap_or(path);
        let mut segs = path.strip_prefix("/services/data/")?.split('/');
        let v = segs.next()?;
        let version = v.strip_prefix('v')?;
        let (major, minor) = version.split_once('.').unwrap_or((version, "0"));
        let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
        if !digits(major) || !digits(minor) || segs.next()? != "jobs" || segs.next()? != "ingest" {
            return None;
        }
        let Some(id) = segs.next() else {
            return Some(Route::Jobs { v: v.to_string() });
        };
        let id = id.to_string();
        if id.is_empty() {
            return None;
        }
        let tail = segs.next();
        if segs.next().is_some() {
            return None;
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
            next_job: 0,
            seed: h.finish(),
            world: World::default(),
        }
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
        }
        let k = &s.knobs;
        let now = ConfigJson {
            processing_base_ms: Some(k.base.as_millis() as u64),
            processing_per_record_us: Some(k.per_record.as_micros() as u64),
            upload_delay_ms: Some(k.upload_delay.as_millis() as u64),
            max_upload_bytes: Some(k.max_upload_bytes),
            key_column: Some(k.key_column.clone()),
        };
        json_response(StatusCode::OK, serde_json::to_vec(&now).unwrap_or_default())
    }

    /// Answers a call the rate limit accepted.
    pub(crate) async fn serve(
        &self,
        route: Route,
        method: &Method,
        headers: &HeaderMap,
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
            (Route::Jobs { .. }, _) => "GET,POST",
            (Route::Job { .. }, _) => "GET,PATCH,DELETE",
            (Route::Batches { .. }, _) => "PUT",
            (Route::Results { .. }, _) => "GET",
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
        let spec: serde_json::Value = match serde_json::from_slice(body) {
            Ok(spec @ serde_json::Value::Object(_)) => spec,
            Ok(_) => {
                return error(
                    StatusCode::BAD_REQUEST,
                    "JSON_PARSER_ERROR",
                    "Expected a JSON object",
                )
            }
            Err(e) => return error(StatusCode::BAD_REQUEST, "JSON_PARSER_ERROR", &e.to_string()),
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
        if field("contentType").is_some_and(|c| c != "CSV") {
            return invalid("InvalidJob : Unsupported content type; only CSV is supported");
        }
        let crlf = match field("lineEnding") {
            None | Some("LF") => false,
            Some("CRLF") => true,
            Some(other) => return invalid(&format!("InvalidJob : Invalid lineEnding: {other}")),
        };
        let delimiter = match field("columnDelimiter") {
            None => DELIMITERS[0],
            Some(d) => match DELIMITERS.iter().find(|(name, _)| *name == d) {
                Some(found) => *found,
                None => return invalid(&format!("InvalidJob : Invalid columnDelimiter: {d}")),
            },
        };
        let mut s = self.lock();
        s.next_job += 1;
        let id = sf_id(
            "750",
            (s.seed % 62u64.pow(3)) * 62u64.pow(7) + s.next_job % 62u64.pow(7),
        );
        let now = SystemTime::now();
        let job = Job {
            seq: s.next_job,
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
        for other in [
            "/services/data/62.0/jobs/ingest",
            "/services/data/vx/jobs/ingest",
            "/services/data/v62.0/jobs/query",
            "/services/data/v62.0/jobs/ingest/750x/other",
            "/services/data/v62.0/sobjects/Account",
        ] {
            assert_eq!(Route::parse(other), None, "{other}");
        }
        assert_eq!(sf_id("001", 1), "001000000000001AAA");
        assert_eq!(sf_id("001", 35).len(), 18);
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
}
