//! The API's contract: an OpenAPI 3.1 document built from the handlers' `#[utoipa::path]`
//! annotations. The same registrations build the router (`utoipa_axum::routes!`), so a route
//! cannot be served without being in the document; it is served at `/openapi.json`, printed by
//! `headroom openapi`, and committed as `openapi.json` (a test fails when they differ).
//!
//! The shapes below are what the handlers answer, written for the document; the contract test
//! (schemathesis in CI) checks the live answers against them.

use serde_json::Value;
use utoipa::openapi::security::{ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi, ToSchema};

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Headroom",
        description = "Keeps B2B SaaS integrations under the rate limits of the APIs they call: \
                       the governing proxy (`/proxy/{upstream}/…`), durable jobs, batches and \
                       schedules, credentials and scoped tokens, and what the limits are doing. \
                       `/v1` wants `Authorization: Bearer <token>` (the admin token, or one \
                       scoped to a tenant); errors are `application/problem+json` whose \
                       `detail` says what to fix."
    ),
    modifiers(&Tokens),
    paths(super::proxy::documented),
    security(("bearer" = [])),
    tags(
        (name = "jobs", description = "Durable outbound calls, paced and retried"),
        (name = "batches", description = "Record imports through an API's batch endpoint"),
        (name = "exports", description = "Bulk exports: an API's query job read a page at a time into the store"),
        (name = "schedules", description = "Per-tenant cron runs of a job or batch"),
        (name = "tenants", description = "Tenants' credentials, webhook secrets and scoped tokens"),
        (name = "budgets", description = "Budgets as they are, and operators' overrides of a tenant's budget"),
        (name = "observe", description = "Events, status and alerts"),
        (name = "health", description = "Liveness, readiness and metrics"),
        (name = "proxy", description = "The governing proxy: calls passed to an upstream"),
    )
)]
pub struct ApiDoc;

/// The two ways to present a token: `Authorization` on `/v1`, `Proxy-Authorization` on
/// `/proxy` (so that `Authorization` stays free for the upstream).
struct Tokens;

impl Modify for Tokens {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
        components.add_security_scheme(
            "proxy_bearer",
            SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::with_description(
                "Proxy-Authorization",
                "Bearer <token>: the admin token or one scoped to a tenant",
            ))),
        );
    }
}

/// The document, as `/openapi.json` serves it.
pub fn document() -> utoipa::openapi::OpenApi {
    super::api().1
}

/// The document as JSON, as committed in `openapi.json`.
pub fn json() -> String {
    document()
        .to_pretty_json()
        .expect("the document always serialises")
        + "\n"
}

/// An error (RFC 9457), sent as `application/problem+json`.
#[derive(ToSchema)]
pub struct Problem {
    /// Always `about:blank`.
    #[schema(rename = "type")]
    pub kind: String,
    /// The status's reason phrase.
    pub title: String,
    pub status: u16,
    /// What went wrong and what to fix, naming the field, key or header at fault.
    pub detail: String,
}

/// `realtime` (ahead of bulk work, with a reserve of the pace) or `bulk`.
#[derive(ToSchema)]
#[schema(rename_all = "snake_case")]
pub enum Lane {
    Realtime,
    Bulk,
}

/// A job's state.
#[derive(ToSchema)]
#[schema(rename_all = "snake_case")]
pub enum JobStatus {
    Queued,
    Running,
    RetryPending,
    Succeeded,
    Failed,
    Cancelled,
}

/// A job's callback: not asked for, to be sent once the job is final, sent, or given up.
#[derive(ToSchema)]
#[schema(rename_all = "snake_case")]
pub enum CallbackState {
    None,
    Pending,
    Delivered,
    Failed,
}

/// The call a job makes, as submitted.
#[derive(ToSchema)]
pub struct JobRequestSubmission {
    /// GET, HEAD, POST, PUT, PATCH, DELETE or OPTIONS.
    pub method: String,
    /// Under the upstream's base URL, starting with `/`.
    pub path: String,
    pub query: Option<String>,
    /// Headers to send (not `Host`, hop-by-hop headers, `Content-Length` or `Headroom-*`).
    pub headers: Option<std::collections::BTreeMap<String, String>>,
    /// A JSON body.
    #[schema(value_type = Option<Object>)]
    pub body: Option<Value>,
    /// Or a body of any bytes, base64.
    pub body_base64: Option<String>,
}

/// `POST /v1/jobs`.
#[derive(ToSchema)]
pub struct JobSubmission {
    /// A configured upstream.
    pub upstream: String,
    /// The tenant whose credential and budget the call uses (a scoped token's own, if left
    /// out).
    #[schema(pattern = "^[A-Za-z0-9._:@-]{1,128}$")]
    pub tenant: Option<String>,
    /// A configured queue (`default` if left out).
    pub queue: Option<String>,
    pub lane: Option<Lane>,
    /// The same id from the same tenant within the queue's dedup window returns the first job.
    pub dedup_id: Option<String>,
    pub request: JobRequestSubmission,
    /// POSTed (signed, Standard Webhooks) once the job is final.
    pub callback_url: Option<String>,
    pub max_attempts: Option<u32>,
}

/// The call a job makes, as shown (the query with sealed values redacted).
#[derive(ToSchema)]
pub struct JobRequestView {
    pub method: String,
    pub path: String,
    pub query: Option<String>,
}

/// The upstream's final answer to a job.
#[derive(ToSchema)]
pub struct JobResponseView {
    pub status: u16,
    /// `[name, value]` pairs.
    pub headers: Vec<Vec<String>>,
    /// The body when it is JSON…
    #[schema(value_type = Option<Object>)]
    pub body: Option<Value>,
    /// …else its bytes, base64.
    pub body_base64: Option<String>,
}

/// One attempt of a job.
#[derive(ToSchema)]
pub struct AttemptView {
    pub number: u32,
    #[schema(format = DateTime)]
    pub started_at: String,
    #[schema(format = DateTime)]
    pub finished_at: String,
    pub status: Option<u16>,
    /// How long the attempt waited for its turn in the budget.
    pub wait_ms: u64,
    /// `[name, value]` pairs of the answer's rate-limit headers.
    pub rate_limit_headers: Vec<Vec<String>>,
    pub error: Option<String>,
}

/// A job.
#[derive(ToSchema)]
pub struct Job {
    pub id: String,
    pub status: JobStatus,
    pub queue: String,
    pub upstream: String,
    pub tenant: Option<String>,
    pub lane: Lane,
    pub dedup_id: Option<String>,
    pub request: JobRequestView,
    pub attempts: u32,
    pub max_attempts: u32,
    #[schema(format = DateTime)]
    pub next_attempt_at: String,
    #[schema(format = DateTime)]
    pub created_at: String,
    #[schema(format = DateTime)]
    pub updated_at: String,
    pub last_error: Option<String>,
    pub response: Option<JobResponseView>,
    pub callback_url: Option<String>,
    pub callback: CallbackState,
    /// `GET /v1/jobs/{id}` only: every attempt.
    pub attempts_log: Option<Vec<AttemptView>>,
    /// Set when a submission matched an earlier job's dedup id.
    pub deduplicated: Option<bool>,
}

/// A page of jobs.
#[derive(ToSchema)]
pub struct JobList {
    pub jobs: Vec<Job>,
    /// The next page's `cursor`; null on the last page.
    pub next_cursor: Option<String>,
}

/// A batch's state.
#[derive(ToSchema)]
#[schema(rename_all = "snake_case")]
pub enum BatchStatus {
    Queued,
    Running,
    Succeeded,
    CompletedWithFailures,
    Cancelled,
}

/// A record that failed for good.
#[derive(ToSchema)]
pub struct RecordFailure {
    pub index: u64,
    pub record_id: String,
    pub error: String,
}

/// A batch.
#[derive(ToSchema)]
pub struct Batch {
    pub id: String,
    pub status: BatchStatus,
    pub upstream: String,
    pub tenant: Option<String>,
    pub total: u64,
    pub succeeded: u64,
    pub failed: u64,
    pub pending: u64,
    /// Calls made to the batch endpoint.
    pub calls: u64,
    /// Records in flight at an abrupt stop, sent again (they may have been applied twice).
    pub possibly_duplicated: u64,
    /// Left out of lists.
    pub failures: Option<Vec<RecordFailure>>,
    /// `salesforce-bulk2`: the batch's bulk jobs (left out of lists and for other formats).
    pub bulk_jobs: Option<Vec<BulkJob>>,
    #[schema(format = DateTime)]
    pub created_at: String,
    #[schema(format = DateTime)]
    pub updated_at: String,
}

/// An asynchronous bulk job of a batch: one chunk of its records.
#[derive(ToSchema)]
pub struct BulkJob {
    /// The API's id for the job (none before it is created).
    pub job_id: Option<String>,
    /// The next step: `create`, `upload`, `close`, `poll`, `results`, or `done`.
    pub phase: String,
    /// The API's last word on the job's state (`InProgress`, `JobComplete`, …).
    pub state: Option<String>,
    pub records: u64,
    pub polls: u32,
    pub error: Option<String>,
    /// Jobs opened for these records and given up after a crash before they were closed
    /// (none of their data was processed).
    pub abandoned: Vec<String>,
}

/// `POST /v1/exports`.
#[derive(ToSchema)]
pub struct ExportSubmission {
    pub upstream: String,
    #[schema(pattern = "^[A-Za-z0-9._:@-]{1,128}$")]
    pub tenant: Option<String>,
    /// `salesforce-bulk2` (the only one, and the default).
    pub format: Option<String>,
    pub lane: Option<Lane>,
    /// Records per result page (50,000 if left out; 1 to 500,000).
    #[schema(minimum = 1, maximum = 500000)]
    pub page_size: Option<u32>,
    pub request: ExportRequestSubmission,
}

/// The call that creates the query job.
#[derive(ToSchema)]
pub struct ExportRequestSubmission {
    /// `POST`.
    pub method: String,
    /// Bulk API 2.0's query path, e.g. `/services/data/v62.0/jobs/query`.
    pub path: String,
    pub headers: Option<std::collections::BTreeMap<String, String>>,
    /// The query job: `{"operation": "query" | "queryAll", "query": "SELECT Id, Name FROM Account"}`.
    #[schema(value_type = Object)]
    pub body: Value,
}

/// A bulk export.
#[derive(ToSchema)]
pub struct Export {
    pub id: String,
    /// `queued`, `running`, `succeeded`, `failed` or `cancelled`.
    pub status: String,
    pub upstream: String,
    pub tenant: Option<String>,
    /// The API's id for the query job, once created.
    pub job_id: Option<String>,
    /// The API's last word on the job's state.
    pub state: Option<String>,
    /// Result pages stored so far (`GET /v1/exports/{id}/pages/{n}`, from 1).
    pub pages: u64,
    pub records: u64,
    /// Calls made to the API.
    pub calls: u64,
    pub error: Option<String>,
    #[schema(format = DateTime)]
    pub created_at: String,
    #[schema(format = DateTime)]
    pub updated_at: String,
}

/// A new batch.
#[derive(ToSchema)]
pub struct BatchAccepted {
    pub id: String,
    pub status: BatchStatus,
    pub total: u64,
}

/// A page of batches.
#[derive(ToSchema)]
pub struct BatchList {
    pub batches: Vec<Batch>,
    pub next_cursor: Option<String>,
}

/// The batch endpoint's call: as a job's, without a body (Headroom writes it from the records).
#[derive(ToSchema)]
pub struct BatchRequestSubmission {
    pub method: String,
    pub path: String,
    pub query: Option<String>,
    pub headers: Option<std::collections::BTreeMap<String, String>>,
    /// `salesforce-bulk2` only: the ingest job to create, as Salesforce's create-job body
    /// (`{"object": "Account", "operation": "upsert", "externalIdFieldName": "Ext__c"}`).
    #[schema(value_type = Option<Object>)]
    pub body: Option<Value>,
}

/// `POST /v1/batches` (also sent as NDJSON: a first line with these fields but `records`,
/// then one record per line).
#[derive(ToSchema)]
pub struct BatchSubmission {
    pub upstream: String,
    #[schema(pattern = "^[A-Za-z0-9._:@-]{1,128}$")]
    pub tenant: Option<String>,
    /// `hubspot`, `salesforce`, `graph`, `salesforce-bulk2` (asynchronous Bulk API 2.0
    /// ingest jobs; the job goes in `request.body`), or a generic format as an object; left
    /// out, the upstream's provider's (`provider = "hubspot"` takes `hubspot`).
    #[schema(value_type = Option<Object>)]
    pub format: Option<Value>,
    /// Records per call, or per bulk job for `salesforce-bulk2` (100, or 10,000 records per
    /// bulk job, within the format's maximum, if left out).
    pub max_batch_size: Option<u32>,
    pub lane: Option<Lane>,
    pub request: BatchRequestSubmission,
    /// The records: JSON objects.
    #[schema(value_type = Vec<Object>)]
    pub records: Vec<Value>,
    pub max_attempts: Option<u32>,
    pub callback_url: Option<String>,
}

/// `POST /v1/schedules`: a schedule as `[[schedules]]` in the config takes it.
#[derive(ToSchema)]
pub struct ScheduleSubmission {
    pub name: String,
    /// 5 fields (POSIX), or 6 with seconds first.
    pub cron: String,
    /// The IANA time zone the cron fields are read in (UTC if left out).
    pub timezone: Option<String>,
    /// A list of tenants, or `{"with_credential": "UPSTREAM"}`.
    #[schema(value_type = Object)]
    pub tenants: Value,
    /// A duration: each tenant's run is offset by a stable amount below it.
    pub stagger: Option<String>,
    /// `skip` (the default) or `allow`.
    pub overlap: Option<String>,
    /// `skip` (the default) or `once`.
    pub catch_up: Option<String>,
    /// A job as `POST /v1/jobs` takes it, without `tenant`.
    #[schema(value_type = Option<Object>)]
    pub job: Option<Value>,
    /// A batch as `POST /v1/batches` takes it, without `tenant`.
    #[schema(value_type = Option<Object>)]
    pub batch: Option<Value>,
}

/// A schedule: its definition as written, where it comes from and its state.
#[derive(ToSchema)]
pub struct Schedule {
    #[serde(flatten)]
    pub definition: ScheduleSubmission,
    /// `config` or `api`.
    pub source: String,
    pub paused: bool,
    #[schema(format = DateTime)]
    pub created_at: String,
    #[schema(format = DateTime)]
    pub updated_at: String,
    /// `GET /v1/schedules/{name}` only: the tenants it runs for…
    pub tenant_count: Option<u64>,
    /// …and the next runs (none while paused).
    pub next_runs: Option<Vec<NextRun>>,
}

/// Every schedule.
#[derive(ToSchema)]
pub struct ScheduleList {
    pub schedules: Vec<Schedule>,
}

/// A tenant's next run.
#[derive(ToSchema)]
pub struct NextRun {
    pub tenant: String,
    #[schema(format = DateTime)]
    pub scheduled_for: String,
    /// `scheduled_for` plus the tenant's stagger offset.
    #[schema(format = DateTime)]
    pub due_at: String,
}

/// A deleted schedule.
#[derive(ToSchema)]
pub struct ScheduleDeleted {
    pub name: String,
    pub deleted: bool,
}

/// One run of a schedule for one tenant.
#[derive(ToSchema)]
pub struct ScheduleRun {
    pub tenant: String,
    /// fired, skipped, succeeded, failed or cancelled.
    pub status: String,
    #[schema(format = DateTime)]
    pub scheduled_for: String,
    #[schema(format = DateTime)]
    pub due_at: String,
    #[schema(format = DateTime)]
    pub recorded_at: String,
    pub reason: Option<String>,
    pub job_id: Option<String>,
    pub job_status: Option<String>,
    pub batch_id: Option<String>,
    pub batch_status: Option<String>,
}

/// A page of a schedule's runs.
#[derive(ToSchema)]
pub struct ScheduleRuns {
    pub runs: Vec<ScheduleRun>,
    pub next_cursor: Option<String>,
}

/// `PUT /v1/tenants/{tenant}/credentials/{upstream}`.
#[derive(ToSchema)]
pub struct CredentialSubmission {
    /// The secret Headroom injects into the tenant's calls to the upstream (sealed at rest,
    /// never shown again).
    pub credential: String,
}

/// That a tenant has a credential for an upstream (never the credential).
#[derive(ToSchema)]
pub struct CredentialInfo {
    pub upstream: String,
    #[schema(format = DateTime)]
    pub updated_at: String,
}

/// A tenant's credentials.
#[derive(ToSchema)]
pub struct CredentialList {
    pub tenant: String,
    pub credentials: Vec<CredentialInfo>,
}

/// A new webhook signing secret, shown once.
#[derive(ToSchema)]
pub struct WebhookSecret {
    pub tenant: String,
    /// `whsec_…` (Standard Webhooks).
    pub secret: String,
    /// Until when the secret it replaced also signs (none if there was none).
    #[schema(format = DateTime)]
    pub previous_valid_until: Option<String>,
    pub detail: String,
}

/// `POST /v1/tokens`.
#[derive(ToSchema)]
pub struct TokenSubmission {
    /// The tenant the token acts as.
    #[schema(pattern = "^[A-Za-z0-9._:@-]{1,128}$")]
    pub tenant: String,
}

/// An API token (never the token itself).
#[derive(ToSchema)]
pub struct TokenInfo {
    pub id: String,
    pub tenant: String,
    #[schema(format = DateTime)]
    pub created_at: String,
}

/// A new API token, shown once.
#[derive(ToSchema)]
pub struct NewToken {
    pub id: String,
    pub tenant: String,
    #[schema(format = DateTime)]
    pub created_at: String,
    /// `hr_…`: shown once.
    pub token: String,
}

/// API tokens.
#[derive(ToSchema)]
pub struct TokenList {
    pub tokens: Vec<TokenInfo>,
}

/// A page of rate-limit events.
#[derive(ToSchema)]
pub struct Events {
    /// Each with `seq`, `time`, `level`, `kind`, `upstream`, `endpoint`, `tenant`, `queue`,
    /// `job_id`, `attempt`, `status`, `wait_ms`, `outcome`, `headers` (rate-limit headers
    /// only) and `message`.
    #[schema(value_type = Vec<Object>)]
    pub events: Vec<Value>,
    pub next_cursor: Option<String>,
    /// The cursor of the newest event there is, for tailing.
    pub last_cursor: Option<String>,
}

/// `GET /v1/status`: rows per upstream and tenant.
#[derive(ToSchema)]
pub struct Status {
    #[schema(value_type = Object)]
    #[serde(flatten)]
    pub report: Value,
}

/// `GET /v1/alerts`.
#[derive(ToSchema)]
pub struct Alerts {
    #[schema(value_type = Object)]
    #[serde(flatten)]
    pub report: Value,
}

/// `GET /v1/budgets`: every budget's limits (configured, learned, overridden), remaining,
/// reset, pace, pause and breaker.
#[derive(ToSchema)]
pub struct Budgets {
    /// Each with `upstream`, `key`, `tenant` (a tenant's budget), `route` (an endpoint
    /// route's budget, beside the upstream's), its limits and state.
    #[schema(value_type = Vec<Object>)]
    pub budgets: Vec<Value>,
    /// How many budgets matched (more than `budgets` holds when `limit` cut them).
    pub total: usize,
    /// Every override in force: `upstream`, `tenant`, `override`, `updated_at`.
    #[schema(value_type = Vec<Object>)]
    pub overrides: Vec<Value>,
}

/// `GET /v1/budgets/{upstream}/{tenant}`: the override in force, the config the budget runs
/// with, and its live state (`budget`, null until its first call).
#[derive(ToSchema)]
pub struct BudgetDetail {
    pub upstream: String,
    pub tenant: String,
    #[schema(value_type = Option<Object>)]
    pub r#override: Option<Value>,
    pub updated_at: Option<String>,
    #[schema(value_type = Object)]
    pub config: Value,
    #[schema(value_type = Option<Object>)]
    pub budget: Option<Value>,
}

/// `/healthz` and `/readyz`.
#[derive(ToSchema)]
pub struct Health {
    /// `ok`, or `unavailable`.
    pub status: String,
    /// `/readyz` when not ready: what is failing, with the admin token.
    #[schema(value_type = Option<Object>)]
    pub failing: Option<Value>,
}

/// `PUT /v1/tenants/{tenant}/oauth/{upstream}`: the tokens of a grant the tenant's customer
/// connected (the team's app ran the authorization code flow).
#[derive(ToSchema)]
pub struct OAuthGrantSubmission {
    pub access_token: String,
    /// Used to refresh the access token; rotated refresh tokens are kept as they come.
    pub refresh_token: Option<String>,
    /// Seconds from now until the access token expires (as the token endpoint said), or…
    pub expires_in: Option<f64>,
    /// …when it expires (RFC 3339). Neither: refreshed only when an answer says it expired.
    pub expires_at: Option<String>,
    /// Space-separated, as granted.
    pub scope: Option<String>,
}

/// A tenant's OAuth grant as shown: never a token.
#[derive(ToSchema)]
pub struct OAuthGrantInfo {
    pub upstream: String,
    /// When the access token held expires (RFC 3339), if known.
    pub expires_at: Option<String>,
    pub scopes: String,
    /// Why the grant no longer works (the customer must connect again), if it does not.
    pub broken: Option<String>,
    pub updated_at: String,
}

/// `GET /v1/tenants/{tenant}/oauth`.
#[derive(ToSchema)]
pub struct OAuthGrantList {
    pub tenant: String,
    pub grants: Vec<OAuthGrantInfo>,
}

/// What `POST /intake/{source}` answers once the delivery is stored.
#[derive(ToSchema)]
pub struct IntakeReceipt {
    pub received: bool,
    pub source: String,
    pub event_id: String,
    /// The job that processes it (for a duplicate, the first delivery's).
    pub job: String,
    pub duplicate: bool,
}

/// `GET /v1/intake/events`: each a job view with `source` and `event_id`.
#[derive(ToSchema)]
pub struct IntakeEventList {
    #[schema(value_type = Vec<Object>)]
    pub events: Vec<Value>,
    pub next_cursor: Option<String>,
}
