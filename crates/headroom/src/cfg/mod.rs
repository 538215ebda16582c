//! The TOML config: what `headroom serve` and `headroom check-config` read.
//!
//! Parsing happens in two steps: serde reads the TOML into raw structs (unknown keys are an
//! error), then `validate` turns them into checked values, naming the file, the key and what
//! is wrong for anything it refuses.

pub mod alerts;
mod oauth;
pub mod providers;
mod routes;
mod schedules;
pub mod sources;

pub use oauth::{ClientAuth, GrantKind, OAuthConfig};
pub use routes::{PathPattern, Route};

pub use schedules::{ScheduleDef, TenantsDef};

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use headroom_core::backoff::Backoff;
use headroom_core::breaker::BreakerConfig;
use headroom_core::budget::BudgetConfig;
use headroom_core::duration::parse_duration;
use headroom_core::limit::LimitConfig;
use headroom_core::Unit;
use serde::{Deserialize, Serialize};

pub const DEFAULT_LISTEN: &str = "127.0.0.1:7878";
pub const DEFAULT_STORE: &str = "sqlite://headroom-data/headroom.db";

/// A config error: the file, the key at fault and what to fix; one line per error when the
/// file has several (every error the file shows is reported at once, not only the first).
#[derive(Debug, thiserror::Error)]
pub struct ConfigError {
    pub file: String,
    pub message: String,
}

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (i, line) in self.message.lines().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{}: {line}", self.file)?;
        }
        Ok(())
    }
}

/// The whole validated config.
#[derive(Debug, Clone)]
pub struct Config {
    pub listen: SocketAddr,
    /// `auth`: whether the API and the proxy want a token (the default) or are open to
    /// whoever can reach the loopback listener.
    pub auth: AuthMode,
    pub store: String,
    pub governor: String,
    pub upstreams: Vec<Arc<Upstream>>,
    /// Job queues (flows); always holds `default` (parallel).
    pub queues: Vec<Arc<Queue>>,
    /// `[[schedules]]` as written (names unique); `schedules::from_config` checks them
    /// against the upstreams and queues above.
    pub schedules: Vec<ScheduleDef>,
    /// `[events]` (retention) and `[[alerts]]`.
    pub observe: alerts::ObserveConfig,
    /// `[callbacks]`: where job callbacks and alert webhooks may go, and how they are sent.
    pub callbacks: CallbackConfig,
    /// `[server]`: timeouts and the connection cap of the HTTP listener.
    pub server: ServerLimits,
    /// `[metrics]`: label cardinality of `/metrics`.
    pub metrics: MetricsConfig,
    /// `[jobs] retention`: finished jobs and batches are deleted this long after they
    /// finished (default 7 days).
    pub job_retention: Duration,
    /// `[[sources]]`: webhooks received at `/intake/{name}`.
    pub sources: Vec<Arc<sources::Source>>,
}

/// `[server]`: what a client connection may take from the listener.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerLimits {
    /// An HTTP/1.1 request head must arrive whole within this long of its first byte, and a
    /// new connection must send its first byte within this long of opening.
    pub header_read_timeout: Duration,
    /// A connection with no request in progress and nothing read or written for this long
    /// is closed.
    pub idle_timeout: Duration,
    /// Connections served at once; more wait in the listen backlog until one closes.
    pub max_connections: usize,
    /// A request body to Headroom's own API (not the proxy's, which streams) must arrive
    /// whole within this long of the request's head.
    pub body_read_timeout: Duration,
    /// After SIGTERM or SIGINT: how long in-flight requests, job attempts and batch chunks
    /// may take to finish before the process exits anyway.
    pub shutdown_grace: Duration,
}

impl Default for ServerLimits {
    fn default() -> Self {
        ServerLimits {
            header_read_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            max_connections: 10_000,
            body_read_timeout: Duration::from_secs(30),
            shutdown_grace: Duration::from_secs(30),
        }
    }
}

/// `[metrics]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetricsConfig {
    /// Tenants with series of their own on `/metrics`; the rest count as `tenant="other"`.
    pub max_tenants: usize,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        MetricsConfig { max_tenants: 1000 }
    }
}

/// How long a call's concurrency lease in Redis lasts if its node never returns it (it
/// died): `?lease_ttl=` on the governor's URL.
pub const DEFAULT_LEASE_TTL: Duration = Duration::from_secs(60);

/// The governor's Redis, as its URL says: `redis://host:6379/0?prefix=headroom&lease_ttl=60s`.
#[derive(Debug, Clone, PartialEq)]
pub struct RedisUrl {
    /// The URL the Redis client opens (Headroom's own options taken out).
    pub client_url: String,
    /// The URL as logs show it (password hidden).
    pub shown: String,
    /// Prefix of Headroom's keys.
    pub prefix: String,
    pub lease_ttl: Duration,
}

impl RedisUrl {
    /// Reads (does not connect): a bad URL or option is found by `check-config`.
    pub fn parse(url: &str) -> Result<RedisUrl, String> {
        let mut parsed = url::Url::parse(url)
            .map_err(|e| format!("\"{}\" is not a URL: {e}", crate::store::pg::redact(url)))?;
        let mut prefix = "headroom".to_string();
        let mut lease_ttl = DEFAULT_LEASE_TTL;
        let mut rest = Vec::new();
        for (k, v) in parsed.query_pairs() {
            match &*k {
                "prefix" => prefix = v.to_string(),
                "lease_ttl" => {
                    lease_ttl = parse_duration(&v).map_err(|e| {
                        format!(
                            "\"{}\": lease_ttl \"{v}\": {e}",
                            crate::store::pg::redact(url)
                        )
                    })?
                }
                _ => rest.push((k.to_string(), v.to_string())),
            }
        }
        if rest.is_empty() {
            parsed.set_query(None);
        } else {
            parsed.query_pairs_mut().clear().extend_pairs(rest);
        }
        redis::Client::open(parsed.as_str())
            .map_err(|e| format!("\"{}\": {e}", crate::store::pg::redact(url)))?;
        Ok(RedisUrl {
            shown: crate::store::pg::redact(parsed.as_str()),
            client_url: parsed.to_string(),
            prefix,
            lease_ttl,
        })
    }
}

/// How long finished jobs and batches are kept by default.
pub const DEFAULT_JOB_RETENTION: Duration = Duration::from_secs(7 * 86_400);

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: DEFAULT_LISTEN.parse().expect("default listen address"),
            auth: AuthMode::Token,
            store: DEFAULT_STORE.to_string(),
            governor: "memory".to_string(),
            upstreams: Vec::new(),
            queues: vec![Arc::new(Queue::default())],
            schedules: Vec::new(),
            observe: Default::default(),
            callbacks: Default::default(),
            server: ServerLimits::default(),
            metrics: MetricsConfig::default(),
            job_retention: DEFAULT_JOB_RETENTION,
            sources: Vec::new(),
        }
    }
}

/// Who may call `/v1` and `/proxy`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthMode {
    /// An admin token is required: `HEADROOM_API_TOKEN`, else one generated on first start
    /// and kept next to the database (scoped tokens act as their tenant).
    Token,
    /// No token: anyone who can reach the loopback listener. Requests must still come from
    /// this machine's own clients, not from a web page (see `auth::open_guard`).
    None,
}

/// Whose jobs a queue's concurrency counts together.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QueueScope {
    Global,
    Tenant,
}

/// How a queue retries a job that failed for a retryable reason.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetryBackoff {
    Fixed,
    Exponential,
}

/// A job queue (a flow).
#[derive(Debug, Clone, PartialEq)]
pub struct Queue {
    pub name: String,
    pub mode: crate::store::model::jobs::QueueMode,
    pub scope: QueueScope,
    pub dedup_window: Duration,
    pub max_attempts: u32,
    pub interval: Duration,
    pub backoff: RetryBackoff,
}

impl Default for Queue {
    fn default() -> Self {
        Queue {
            name: "default".to_string(),
            mode: crate::store::model::jobs::QueueMode::Parallel,
            scope: QueueScope::Global,
            dedup_window: Duration::from_secs(600),
            max_attempts: 5,
            interval: Duration::from_secs(60),
            backoff: RetryBackoff::Exponential,
        }
    }
}

impl Queue {
    /// The wait before the retry after `attempts` attempts (1-based).
    pub fn retry_delay(&self, attempts: u32) -> Duration {
        match self.backoff {
            RetryBackoff::Fixed => self.interval,
            RetryBackoff::Exponential => self
                .interval
                .checked_mul(2u32.saturating_pow(attempts.saturating_sub(1).min(16)))
                .unwrap_or(Duration::MAX),
        }
    }
}

/// Whose budget a call spends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BudgetScope {
    /// Each tenant (or credential) has its own budget.
    Tenant,
    /// One budget for every tenant: one credential shared by all.
    Shared,
}

/// How a stored credential is put on the upstream request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CredentialInjection {
    pub header: http::HeaderName,
    /// Written before the credential with a space, e.g. `Bearer`; empty for none.
    pub scheme: String,
}

/// When and how a proxied call is retried.
#[derive(Debug, Clone, PartialEq)]
pub struct RetryPolicy {
    pub max_attempts: u32,
    pub backoff: Backoff,
    /// The longest a request may wait in Headroom in total (queueing, pauses, backoff),
    /// unless its `Headroom-Max-Wait` says otherwise.
    pub max_wait: Duration,
    /// Statuses retried besides throttled responses (e.g. 502, 503, 504).
    pub on_status: Vec<u16>,
}

/// An upstream's base URL as a call's target is built from it: scheme and authority ready to
/// be shared by every call (cloning them copies no bytes), the path without its last '/'.
#[derive(Debug, Clone)]
pub struct BaseUri {
    pub scheme: http::uri::Scheme,
    pub authority: http::uri::Authority,
    pub path: String,
    /// The `Host` header of every call (made once: the client would format it per call).
    pub host: http::HeaderValue,
}

impl BaseUri {
    /// Takes an http(s) URL with a host apart; `None` when its host cannot be an authority.
    pub fn try_new(url: &url::Url) -> Option<BaseUri> {
        let host = url.host_str()?;
        let authority = match url.port() {
            Some(port) => format!("{host}:{port}"),
            None => host.to_string(),
        };
        Some(BaseUri {
            scheme: url.scheme().parse().ok()?,
            host: http::HeaderValue::from_str(&authority).ok()?,
            authority: authority.parse().ok()?,
            path: url.path().trim_end_matches('/').to_string(),
        })
    }
}

/// One upstream API.
#[derive(Debug, Clone)]
pub struct Upstream {
    pub name: String,
    pub index: u32,
    pub base_url: url::Url,
    /// `base_url` taken apart once, for building each call's target URI.
    pub base: BaseUri,
    pub budget: BudgetScope,
    pub budget_config: Arc<BudgetConfig>,
    pub retry: RetryPolicy,
    pub credential: CredentialInjection,
    /// Where the injected credential is an OAuth access token: how it is got and refreshed.
    pub oauth: Option<Arc<OAuthConfig>>,
    /// How long one upstream call may take before it counts as a transport error.
    pub timeout: Duration,
    /// The header that carries a job's idempotency key on every attempt (e.g.
    /// `Idempotency-Key`), if the upstream takes one.
    pub idempotency_header: Option<http::HeaderName>,
    /// Whether proxy answers carry the IETF `RateLimit-Policy` / `RateLimit` fields of the
    /// budget the caller spends (in place of the upstream's own). On unless turned off.
    pub ratelimit_headers: bool,
    /// Whether the proxy reads a JSON answer's body for what the call cost (an LLM API's
    /// `usage` tokens, GraphQL query cost) to reconcile it with the cost it reserved. Jobs
    /// and batches read every body anyway.
    pub cost_from_body: bool,
    /// Endpoint-scoped limits: a call spends the first matching route's budget as well.
    pub routes: Vec<Route>,
    /// The provider preset it was built from, if any.
    pub provider: Option<String>,
    /// The `/v1/batches` format its provider's batch endpoints take (a batch that names
    /// none uses it).
    pub batch_format: Option<String>,
}

impl Upstream {
    /// Whether calls spend a cost of their own here: a limit counts points, or answers
    /// are read for what they cost (`cost_from_body`).
    pub fn meters_cost(&self) -> bool {
        self.cost_from_body
            || self
                .budget_config
                .limits
                .iter()
                .any(|l| l.unit == headroom_core::Unit::Points)
    }
}

impl Config {
    pub fn upstream(&self, name: &str) -> Option<&Arc<Upstream>> {
        self.upstreams.iter().find(|u| u.name == name)
    }

    pub fn source(&self, name: &str) -> Option<&Arc<sources::Source>> {
        self.sources.iter().find(|s| s.name == name)
    }

    pub fn queue(&self, name: &str) -> Option<&Arc<Queue>> {
        self.queues.iter().find(|q| q.name == name)
    }

    /// Reads and validates a config file, with the process environment: `${VAR}` references
    /// in the file and the `HEADROOM_LISTEN`, `HEADROOM_STORE` and `HEADROOM_GOVERNOR`
    /// overrides (see [`Config::parse_with`]).
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let file = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            file: file.clone(),
            message: format!("cannot read the file: {e}"),
        })?;
        Config::parse_with(&text, &file, &process_env)
    }

    /// Parses and validates config text as written (no environment); `file` names it in
    /// errors.
    pub fn parse(text: &str, file: &str) -> Result<Config, ConfigError> {
        Config::parse_with(text, file, &|_| None)
    }

    /// Parses and validates config text with `env` as the environment: each `${VAR}` (or
    /// `${VAR:-default}`) outside comments is replaced by the variable's value first (an unset
    /// variable without a default is an error; `$${` is a literal `${`), and
    /// `HEADROOM_LISTEN`, `HEADROOM_STORE` and `HEADROOM_GOVERNOR`, when set, replace
    /// `listen`, `store` and `governor` (so that a password need not sit in the file).
    pub fn parse_with(
        text: &str,
        file: &str,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Config, ConfigError> {
        let err = |message: String| ConfigError {
            file: file.to_string(),
            message,
        };
        let text = expand_env(text, env).map_err(err)?;
        let deserializer = toml::Deserializer::new(&text);
        let mut raw: RawConfig = serde_path_to_error::deserialize(deserializer).map_err(|e| {
            let key = e.path().to_string();
            let mut messages = vec![toml_message(e.inner(), &text, &key)];
            // The first error has its line; the others the file shows are found by reading
            // each key (each entry of an array of tables) on its own.
            messages.extend(
                shape_errors(&text)
                    .into_iter()
                    .filter(|(path, _)| *path != key)
                    .map(|(_, message)| message),
            );
            err(messages.join("\n"))
        })?;
        let mut overridden = Vec::new();
        for (key, var, slot) in [
            ("listen", "HEADROOM_LISTEN", &mut raw.listen),
            ("store", "HEADROOM_STORE", &mut raw.store),
            ("governor", "HEADROOM_GOVERNOR", &mut raw.governor),
        ] {
            if let Some(value) = env(var).filter(|v| !v.trim().is_empty()) {
                *slot = Some(value);
                overridden.push((key, var));
            }
        }
        raw.validate().map_err(|messages| {
            // An overridden value at fault is named by its variable, not by the file.
            let messages: Vec<String> = messages
                .into_iter()
                .map(|message| {
                    overridden
                        .iter()
                        .find(|(key, _)| message.starts_with(&format!("{key}:")))
                        .map(|(key, var)| format!("{key} (from {var}){}", &message[key.len()..]))
                        .unwrap_or(message)
                })
                .collect();
            err(messages.join("\n"))
        })
    }
}

/// Every shape error of the file (a value of the wrong type, an unknown key) by key path, each
/// top-level key and each entry of an array of tables read on its own (without line numbers:
/// they are read from the parsed file).
fn shape_errors(text: &str) -> Vec<(String, String)> {
    let Ok(table) = text.parse::<toml::Table>() else {
        return Vec::new(); // a syntax error: the first error is all there is to say
    };
    let mut out = Vec::new();
    for (key, value) in table {
        let parts: Vec<(String, toml::Value)> = match value {
            toml::Value::Array(items) if items.iter().all(toml::Value::is_table) => items
                .into_iter()
                .enumerate()
                .map(|(i, item)| (format!("{key}[{i}]"), toml::Value::Array(vec![item])))
                .collect(),
            value => vec![(key.clone(), value)],
        };
        for (name, value) in parts {
            let mut one = toml::Table::new();
            one.insert(key.clone(), value);
            if let Err(e) =
                serde_path_to_error::deserialize::<_, RawConfig>(toml::Value::Table(one))
            {
                let path = e.path().to_string();
                let path = match path.strip_prefix(&format!("{key}[0]")) {
                    Some(rest) if name != key => format!("{name}{rest}"),
                    _ => path,
                };
                out.push((path.clone(), toml_message(e.inner(), "", &path)));
            }
        }
    }
    out
}

fn process_env(name: &str) -> Option<String> {
    std::env::var(name).ok()
}

/// Replaces `${VAR}` and `${VAR:-default}` with the variable's value, except on comment
/// lines; `$${` stays a literal `${`.
fn expand_env(text: &str, env: &dyn Fn(&str) -> Option<String>) -> Result<String, String> {
    if !text.contains("${") {
        return Ok(text.to_string());
    }
    let mut out = String::with_capacity(text.len());
    for (n, line) in text.split_inclusive('\n').enumerate() {
        if line.trim_start().starts_with('#') {
            out.push_str(line);
            continue;
        }
        let mut rest = line;
        while let Some(at) = rest.find("${") {
            if rest[..at].ends_with('$') {
                out.push_str(&rest[..at - 1]);
                out.push_str("${");
                rest = &rest[at + 2..];
                continue;
            }
            out.push_str(&rest[..at]);
            let Some(end) = rest[at..].find('}') else {
                return Err(format!("line {}: \"${{\" without a closing \"}}\"", n + 1));
            };
            let inner = &rest[at + 2..at + end];
            let (name, default) = match inner.split_once(":-") {
                Some((name, default)) => (name, Some(default)),
                None => (inner, None),
            };
            let valid = name.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
                && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
            if !valid {
                return Err(format!(
                    "line {}: \"${{{inner}}}\" is not a variable reference; write ${{NAME}} or \
                     ${{NAME:-default}}",
                    n + 1
                ));
            }
            match env(name).or_else(|| default.map(str::to_string)) {
                Some(value) => out.push_str(&value),
                None => {
                    return Err(format!(
                        "line {}: ${{{name}}} is not set; set the environment variable, or give \
                         a default as ${{{name}:-value}}",
                        n + 1
                    ))
                }
            }
            rest = &rest[at + end + 1..];
        }
        out.push_str(rest);
    }
    Ok(out)
}

/// A toml error as `line L, column C: key: message`, the wanted type in words.
fn toml_message(e: &toml::de::Error, text: &str, key: &str) -> String {
    let mut message = e.message().trim().to_string();
    for (rust, words) in [
        ("expected f64", "expected a number"),
        ("expected f32", "expected a number"),
        ("expected u64", "expected a whole number of at least 0"),
        ("expected u32", "expected a whole number of at least 0"),
        ("expected u16", "expected a whole number of at least 0"),
        ("expected usize", "expected a whole number of at least 0"),
        ("expected i64", "expected a whole number"),
        ("expected a boolean", "expected true or false"),
        ("expected a string", "expected a string in quotes"),
    ] {
        if let Some(at) = message.find(rust) {
            // Only the whole word: "expected u64" but not "expected u64s".
            if !message[at + rust.len()..].starts_with(|c: char| c.is_alphanumeric()) {
                message.replace_range(at..at + rust.len(), words);
            }
        }
    }
    // serde_path_to_error says `.` for the top level, and toml already names unknown keys.
    if !key.is_empty() && key != "." && !message.contains(&format!("`{key}`")) {
        message = format!("{key}: {message}");
    }
    match e.span() {
        Some(span) => {
            let before = &text[..span.start.min(text.len())];
            let line = before.matches('\n').count() + 1;
            let column = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
            format!("line {line}, column {column}: {message}")
        }
        None => message,
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    listen: Option<String>,
    auth: Option<String>,
    store: Option<String>,
    governor: Option<String>,
    #[serde(default)]
    upstreams: Vec<RawUpstream>,
    #[serde(default)]
    queues: Vec<RawQueue>,
    #[serde(default)]
    schedules: Vec<ScheduleDef>,
    events: Option<alerts::RawEvents>,
    #[serde(default)]
    alerts: Vec<alerts::RawAlert>,
    callbacks: Option<RawCallbacks>,
    server: Option<RawServer>,
    metrics: Option<RawMetrics>,
    jobs: Option<RawJobs>,
    #[serde(default)]
    sources: Vec<sources::RawSource>,
}

/// `[jobs]`: what applies to every job and batch.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawJobs {
    retention: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawServer {
    header_read_timeout: Option<String>,
    idle_timeout: Option<String>,
    max_connections: Option<u64>,
    body_read_timeout: Option<String>,
    shutdown_grace: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMetrics {
    max_tenants: Option<u64>,
}

impl RawServer {
    fn validate(self) -> Result<ServerLimits, String> {
        let mut limits = ServerLimits::default();
        let positive = |key: &str, value: &str| {
            let d = duration(key, value)?;
            if d.is_zero() || d > Duration::from_secs(3600) {
                return Err(format!(
                    "{key}: \"{value}\" is out of range; use more than 0 and at most 1h"
                ));
            }
            Ok(d)
        };
        if let Some(d) = self.header_read_timeout {
            limits.header_read_timeout = positive("server.header_read_timeout", &d)?;
        }
        if let Some(d) = self.idle_timeout {
            limits.idle_timeout = positive("server.idle_timeout", &d)?;
        }
        if let Some(d) = self.body_read_timeout {
            limits.body_read_timeout = positive("server.body_read_timeout", &d)?;
        }
        if let Some(d) = self.shutdown_grace {
            limits.shutdown_grace = positive("server.shutdown_grace", &d)?;
        }
        if let Some(n) = self.max_connections {
            if !(1..=1_000_000).contains(&n) {
                return Err(format!(
                    "server.max_connections: {n} is out of range; use 1 to 1000000"
                ));
            }
            limits.max_connections = n as usize;
        }
        Ok(limits)
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawQueue {
    name: String,
    mode: Option<String>,
    max_concurrency: Option<u32>,
    scope: Option<String>,
    dedup_window: Option<String>,
    retry: Option<RawQueueRetry>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawQueueRetry {
    max_attempts: Option<u32>,
    interval: Option<String>,
    backoff: Option<String>,
}

/// `[[upstreams]]` as written. With `provider`, the preset fills every key the upstream
/// leaves out ([`providers`]); the upstream's own keys win.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawUpstream {
    pub(crate) name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) provider: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) tier: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) base_url: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    budget: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    headroom: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    max_concurrency: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    realtime_reserve: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    timeout: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    idempotency_header: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    max_pause: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    ratelimit_headers: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    learn: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    cost_from_body: Option<bool>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub(crate) limits: Vec<RawLimit>,
    #[serde(skip_serializing_if = "Option::is_none")]
    retry: Option<RawRetry>,
    #[serde(skip_serializing_if = "Option::is_none")]
    breaker: Option<RawBreaker>,
    #[serde(skip_serializing_if = "Option::is_none")]
    credential: Option<RawCredential>,
    #[serde(skip_serializing_if = "Option::is_none")]
    oauth: Option<oauth::RawOAuth>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub(crate) routes: Vec<RawRoute>,
}

/// `[[upstreams.routes]]`: calls whose method and path match spend this route's limits as
/// well as the upstream's (HubSpot's search endpoints, Slack's method tiers).
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawRoute {
    name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    method: Option<String>,
    path: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    cost: Option<f64>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    limits: Vec<RawLimit>,
}

/// A limit as written in the config (`[[upstreams.limits]]`) or in a budget override.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawLimit {
    quota: f64,
    window: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    unit: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    name: Option<String>,
}

/// The `limits` list under `key`, each checked (errors name `key.limits[j]`).
pub(crate) fn validate_limits(
    limits: Vec<RawLimit>,
    key: &str,
) -> Result<Vec<LimitConfig>, String> {
    limits
        .into_iter()
        .enumerate()
        .map(|(j, l)| l.validate(&format!("{key}.limits[{j}]")))
        .collect()
}

/// `100/10s`, `1000 points/10s`: a limit as a table shows it.
impl std::fmt::Display for RawLimit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.unit.as_deref() {
            Some("points") => write!(f, "{} points/{}", self.quota, self.window),
            _ => write!(f, "{}/{}", self.quota, self.window),
        }
    }
}

impl RawLimit {
    /// Reads the limit's unit and window; errors name the field under `lkey` (like
    /// `upstreams[0].limits[1]`). Its quota and a zero window are checked with the rest of
    /// the budget (`BudgetConfig::validate`).
    pub(crate) fn validate(self, lkey: &str) -> Result<LimitConfig, String> {
        let unit = match self.unit.as_deref() {
            None | Some("requests") => Unit::Requests,
            Some("points") => Unit::Points,
            Some(other) => {
                return Err(format!(
                    "{lkey}.unit: \"{other}\" is not a unit; use \"requests\" or \"points\""
                ))
            }
        };
        Ok(LimitConfig {
            name: self.name,
            quota: self.quota,
            window: duration(&format!("{lkey}.window"), &self.window)?,
            unit,
        })
    }
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct RawRetry {
    #[serde(skip_serializing_if = "Option::is_none")]
    max_attempts: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    base_delay: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    max_delay: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    max_wait: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    on_status: Option<Vec<u16>>,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct RawBreaker {
    #[serde(skip_serializing_if = "Option::is_none")]
    failure_threshold: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    open_for: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    max_open_for: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct RawCredential {
    #[serde(skip_serializing_if = "Option::is_none")]
    header: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    scheme: Option<String>,
}

impl RawUpstream {
    /// This upstream's keys over `preset`'s: a key written here wins, a table (`retry`,
    /// `breaker`, `credential`) key by key, a list (`limits`, `routes`) whole.
    pub(crate) fn over(self, preset: RawUpstream) -> RawUpstream {
        fn list<T>(mine: Vec<T>, theirs: Vec<T>) -> Vec<T> {
            if mine.is_empty() {
                theirs
            } else {
                mine
            }
        }
        let retry = match (self.retry, preset.retry) {
            (Some(m), Some(t)) => Some(RawRetry {
                max_attempts: m.max_attempts.or(t.max_attempts),
                base_delay: m.base_delay.or(t.base_delay),
                max_delay: m.max_delay.or(t.max_delay),
                max_wait: m.max_wait.or(t.max_wait),
                on_status: m.on_status.or(t.on_status),
            }),
            (m, t) => m.or(t),
        };
        let breaker = match (self.breaker, preset.breaker) {
            (Some(m), Some(t)) => Some(RawBreaker {
                failure_threshold: m.failure_threshold.or(t.failure_threshold),
                open_for: m.open_for.or(t.open_for),
                max_open_for: m.max_open_for.or(t.max_open_for),
            }),
            (m, t) => m.or(t),
        };
        // A header of the upstream's own takes the scheme that goes with it (the default for
        // that header unless written), not the preset's for another header.
        let credential = match (self.credential, preset.credential) {
            (Some(m), Some(t)) if m.header.is_none() => Some(RawCredential {
                header: t.header,
                scheme: m.scheme.or(t.scheme),
            }),
            (m, t) => m.or(t),
        };
        // A preset's OAuth settings (token URL, client authentication) apply only to an
        // upstream that uses OAuth: without its client id and secret they are no config.
        let oauth = match (self.oauth, preset.oauth) {
            (Some(m), Some(t)) => Some(m.over(t)),
            (m, _) => m,
        };
        // Limits of the upstream's own are its caps: the preset's `learn = "raise"` (the
        // API's figures replace the tier's guesses) does not apply to them.
        let learn = if self.limits.is_empty() {
            self.learn.or(preset.learn)
        } else {
            self.learn
        };
        RawUpstream {
            name: self.name,
            provider: self.provider,
            tier: self.tier,
            base_url: self.base_url.or(preset.base_url),
            budget: self.budget.or(preset.budget),
            headroom: self.headroom.or(preset.headroom),
            max_concurrency: self.max_concurrency.or(preset.max_concurrency),
            realtime_reserve: self.realtime_reserve.or(preset.realtime_reserve),
            timeout: self.timeout.or(preset.timeout),
            idempotency_header: self.idempotency_header.or(preset.idempotency_header),
            max_pause: self.max_pause.or(preset.max_pause),
            ratelimit_headers: self.ratelimit_headers.or(preset.ratelimit_headers),
            learn,
            cost_from_body: self.cost_from_body.or(preset.cost_from_body),
            limits: list(self.limits, preset.limits),
            retry,
            breaker,
            credential,
            oauth,
            routes: list(self.routes, preset.routes),
        }
    }
}

fn duration(key: &str, value: &str) -> Result<Duration, String> {
    parse_duration(value).map_err(|e| format!("{key}: {e}"))
}

impl RawConfig {
    /// The config, or every error found: each upstream and queue is checked even after one
    /// fails; the other sections stop at their first.
    fn validate(self) -> Result<Config, Vec<String>> {
        let mut errors = Vec::new();
        match self.validate_into(&mut errors) {
            Ok(config) if errors.is_empty() => Ok(config),
            Ok(_) => Err(errors),
            Err(e) => {
                errors.push(e);
                Err(errors)
            }
        }
    }

    fn validate_into(self, errors: &mut Vec<String>) -> Result<Config, String> {
        let mut config = Config::default();
        if let Some(listen) = self.listen {
            config.listen = listen.parse().map_err(|_| {
                format!("listen: \"{listen}\" is not an address; write it like \"127.0.0.1:7878\"")
            })?;
        }
        config.auth = match self.auth.as_deref() {
            None | Some("token") => AuthMode::Token,
            Some("none") => AuthMode::None,
            Some(other) => {
                return Err(format!(
                    "auth: \"{other}\" is not a mode; use \"token\" (the default: an admin token \
                     is required) or \"none\" (open to local clients on a loopback listener)"
                ))
            }
        };
        if let Some(store) = self.store {
            if !(store.starts_with("sqlite:")
                || store.starts_with("postgres://")
                || store.starts_with("postgresql://"))
            {
                return Err(format!(
                    "store: \"{}\" is not supported; use \"sqlite://path/to/file.db\" \
                     or \"postgres://user@host/database\"",
                    crate::store::pg::redact(&store)
                ));
            }
            config.store = store;
        }
        if let Some(governor) = self.governor {
            if governor != "memory"
                && !governor.starts_with("redis://")
                && !governor.starts_with("rediss://")
            {
                return Err(format!(
                    "governor: \"{governor}\" is not supported; use \"memory\" or \
                     \"redis://host:6379\""
                ));
            }
            if governor != "memory" {
                // Parsed (not connected) here, so that check-config finds a bad URL or option.
                RedisUrl::parse(&governor).map_err(|e| format!("governor: {e}"))?;
            }
            config.governor = governor;
        }
        let mut names = HashSet::new();
        for (i, raw) in self.upstreams.into_iter().enumerate() {
            let key = format!("upstreams[{i}]");
            let upstream = match raw.validate(&key, i as u32) {
                Ok(upstream) => upstream,
                Err(e) => {
                    errors.push(e);
                    continue;
                }
            };
            if !names.insert(upstream.name.clone()) {
                errors.push(format!(
                    "{key}.name: \"{}\" is used by two upstreams; names must be unique",
                    upstream.name
                ));
                continue;
            }
            config.upstreams.push(Arc::new(upstream));
        }
        let mut queue_names = HashSet::new();
        for (i, raw) in self.queues.into_iter().enumerate() {
            let key = format!("queues[{i}]");
            let queue = match raw.validate(&key) {
                Ok(queue) => queue,
                Err(e) => {
                    errors.push(e);
                    continue;
                }
            };
            if !queue_names.insert(queue.name.clone()) {
                errors.push(format!(
                    "{key}.name: \"{}\" is used by two queues; names must be unique",
                    queue.name
                ));
                continue;
            }
            if queue.name == "default" {
                config.queues[0] = Arc::new(queue);
            } else {
                config.queues.push(Arc::new(queue));
            }
        }
        // Before schedules and alerts: their callback URLs and webhooks are checked with it.
        config.callbacks = self.callbacks.unwrap_or_default().validate()?;
        let mut schedule_names = HashSet::new();
        for (i, def) in self.schedules.into_iter().enumerate() {
            if !schedule_names.insert(def.name.clone()) {
                return Err(format!(
                    "schedules[{i}].name: \"{}\" is used by two schedules; names must be unique",
                    def.name
                ));
            }
            config.schedules.push(def);
        }
        config.observe = alerts::ObserveConfig::from_raw(self.events, self.alerts, &config)?;
        if let Some(server) = self.server {
            config.server = server.validate()?;
        }
        if let Some(n) = self.metrics.and_then(|m| m.max_tenants) {
            if n > 1_000_000 {
                return Err(format!(
                    "metrics.max_tenants: {n} is out of range; use 0 to 1000000"
                ));
            }
            config.metrics.max_tenants = n as usize;
        }
        let mut source_names = HashSet::new();
        for (i, raw) in self.sources.into_iter().enumerate() {
            let key = format!("sources[{i}]");
            let source = raw.validate(&key, &config)?;
            if !source_names.insert(source.name.clone()) {
                return Err(format!(
                    "{key}.name: \"{}\" is used by two sources; names must be unique",
                    source.name
                ));
            }
            config.sources.push(Arc::new(source));
        }
        if let Some(r) = self.jobs.and_then(|j| j.retention) {
            config.job_retention = duration("jobs.retention", &r)?;
            if config.job_retention.is_zero() {
                return Err("jobs.retention: must be longer than zero".into());
            }
        }
        Ok(config)
    }
}

impl RawQueue {
    fn validate(self, key: &str) -> Result<Queue, String> {
        use crate::store::model::jobs::QueueMode;
        let defaults = Queue::default();
        if !valid_name(&self.name) {
            return Err(format!(
                "{key}.name: \"{}\" must be letters, digits, '-', '_' or '.'",
                self.name
            ));
        }
        let mode = match (self.mode.as_deref(), self.max_concurrency) {
            (None | Some("parallel"), None) => QueueMode::Parallel,
            (None | Some("parallel"), Some(_)) => {
                return Err(format!(
                    "{key}.max_concurrency: only a \"throttled\" queue takes max_concurrency; \
                     add mode = \"throttled\""
                ))
            }
            (Some("throttled"), Some(n)) if n >= 1 => QueueMode::Throttled(n),
            (Some("throttled"), _) => {
                return Err(format!(
                    "{key}.max_concurrency: a throttled queue needs max_concurrency of at least 1"
                ))
            }
            (Some("sequential"), None | Some(1)) => QueueMode::Sequential,
            (Some("sequential"), Some(_)) => {
                return Err(format!(
                    "{key}.max_concurrency: a sequential queue runs one job at a time; remove it"
                ))
            }
            (Some(other), _) => {
                return Err(format!(
                    "{key}.mode: \"{other}\" is not a mode; use \"parallel\", \"throttled\" or \"sequential\""
                ))
            }
        };
        let scope = match self.scope.as_deref() {
            None | Some("global") => QueueScope::Global,
            Some("tenant") => QueueScope::Tenant,
            Some(other) => {
                return Err(format!(
                    "{key}.scope: \"{other}\" is not a scope; use \"global\" or \"tenant\""
                ))
            }
        };
        let dedup_window = match self.dedup_window {
            Some(d) => duration(&format!("{key}.dedup_window"), &d)?,
            None => defaults.dedup_window,
        };
        let retry = self.retry.unwrap_or(RawQueueRetry {
            max_attempts: None,
            interval: None,
            backoff: None,
        });
        let max_attempts = retry.max_attempts.unwrap_or(defaults.max_attempts);
        if !(1..=10).contains(&max_attempts) {
            return Err(format!(
                "{key}.retry.max_attempts: {max_attempts} is out of range; use 1 to 10"
            ));
        }
        let interval = match retry.interval {
            Some(d) => duration(&format!("{key}.retry.interval"), &d)?,
            None => defaults.interval,
        };
        let backoff = match retry.backoff.as_deref() {
            None | Some("exponential") => RetryBackoff::Exponential,
            Some("fixed") => RetryBackoff::Fixed,
            Some(other) => {
                return Err(format!(
                    "{key}.retry.backoff: \"{other}\" is not a backoff; use \"exponential\" or \"fixed\""
                ))
            }
        };
        Ok(Queue {
            name: self.name,
            mode,
            scope,
            dedup_window,
            max_attempts,
            interval,
            backoff,
        })
    }
}

pub(crate) fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.')
}

impl RawUpstream {
    fn validate(self, key: &str, index: u32) -> Result<Upstream, String> {
        if !valid_name(&self.name) {
            return Err(format!(
                "{key}.name: \"{}\" must be letters, digits, '-', '_' or '.' (it appears in URLs)",
                self.name
            ));
        }
        let provider = self.provider.clone();
        let this = providers::resolve(self).map_err(|e| format!("{key}.{e}"))?;
        let Some(raw_base_url) = this.base_url.clone() else {
            return Err(match provider.as_deref().and_then(providers::find) {
                Some(p) => format!(
                    "{key}.base_url: missing; {}'s base URL is each account's own: write it, \
                     like \"{}\"",
                    p.title,
                    p.base_url_example.as_deref().unwrap_or("https://api.example.com")
                ),
                None => format!(
                    "{key}.base_url: missing; write the API's URL, like \"https://api.example.com\", \
                     or name a provider (`headroom providers` lists them)"
                ),
            });
        };
        this.validate_resolved(key, index, raw_base_url)
    }

    fn validate_resolved(
        mut self,
        key: &str,
        index: u32,
        raw_base_url: String,
    ) -> Result<Upstream, String> {
        let base_url = url::Url::parse(&raw_base_url)
            .map_err(|e| format!("{key}.base_url: \"{raw_base_url}\" is not a URL: {e}"))?;
        if !matches!(base_url.scheme(), "http" | "https") || base_url.host().is_none() {
            return Err(format!(
                "{key}.base_url: \"{}\" must be an http:// or https:// URL with a host",
                raw_base_url
            ));
        }
        if base_url.query().is_some() || base_url.fragment().is_some() {
            return Err(format!(
                "{key}.base_url: \"{}\" must not have a query or fragment",
                raw_base_url
            ));
        }
        let base = BaseUri::try_new(&base_url).ok_or_else(|| {
            format!(
                "{key}.base_url: \"{}\" has a host that cannot be sent as an HTTP authority",
                raw_base_url
            )
        })?;
        let budget = match self.budget.as_deref() {
            None | Some("tenant") => BudgetScope::Tenant,
            Some("shared") => BudgetScope::Shared,
            Some(other) => {
                return Err(format!(
                    "{key}.budget: \"{other}\" is not a budget scope; use \"tenant\" or \"shared\""
                ))
            }
        };
        let limits = validate_limits(self.limits, key)?;
        let learn = match self.learn.as_deref() {
            None | Some("lower") => headroom_core::budget::Learn::Lower,
            Some("raise") => headroom_core::budget::Learn::Raise,
            Some(other) => {
                return Err(format!(
                    "{key}.learn: \"{other}\" is not a choice; use \"lower\" (the config is a \
                     ceiling: the API's figure is taken only where it is lower) or \"raise\" \
                     (the API's figure is taken either way)"
                ))
            }
        };
        let defaults = BudgetConfig::default();
        let retry_raw = self.retry.unwrap_or(RawRetry {
            max_attempts: None,
            base_delay: None,
            max_delay: None,
            max_wait: None,
            on_status: None,
        });
        let backoff = Backoff {
            base_delay: match retry_raw.base_delay {
                Some(d) => duration(&format!("{key}.retry.base_delay"), &d)?,
                None => defaults.backoff.base_delay,
            },
            max_delay: match retry_raw.max_delay {
                Some(d) => duration(&format!("{key}.retry.max_delay"), &d)?,
                None => defaults.backoff.max_delay,
            },
        };
        let max_attempts = retry_raw.max_attempts.unwrap_or(5);
        if !(1..=10).contains(&max_attempts) {
            return Err(format!(
                "{key}.retry.max_attempts: {max_attempts} is out of range; use 1 to 10"
            ));
        }
        let on_status = retry_raw.on_status.unwrap_or_else(|| vec![502, 503, 504]);
        if let Some(bad) = on_status.iter().find(|s| !(500..=599).contains(*s)) {
            return Err(format!(
                "{key}.retry.on_status: {bad} is not a 5xx status; throttled responses are \
                 always retried, other statuses never"
            ));
        }
        let retry = RetryPolicy {
            max_attempts,
            backoff,
            max_wait: match retry_raw.max_wait {
                Some(d) => duration(&format!("{key}.retry.max_wait"), &d)?,
                None => Duration::from_secs(15),
            },
            on_status,
        };
        let mut breaker = BreakerConfig::default();
        if let Some(b) = self.breaker {
            if let Some(n) = b.failure_threshold {
                if n == 0 {
                    return Err(format!(
                        "{key}.breaker.failure_threshold: must be at least 1"
                    ));
                }
                breaker.failure_threshold = n;
            }
            if let Some(d) = b.open_for {
                breaker.open_for = duration(&format!("{key}.breaker.open_for"), &d)?;
            }
            if let Some(d) = b.max_open_for {
                breaker.max_open_for = duration(&format!("{key}.breaker.max_open_for"), &d)?;
            }
        }
        let budget_config = BudgetConfig {
            limits,
            headroom: self.headroom.unwrap_or(defaults.headroom),
            max_concurrency: self.max_concurrency.unwrap_or(defaults.max_concurrency),
            realtime_reserve: self.realtime_reserve.unwrap_or(defaults.realtime_reserve),
            backoff,
            breaker,
            recovery: defaults.recovery,
            max_pause: match self.max_pause {
                Some(d) => {
                    let pause = duration(&format!("{key}.max_pause"), &d)?;
                    if pause.is_zero() {
                        return Err(format!(
                            "{key}.max_pause: must be longer than zero, like \"1h\""
                        ));
                    }
                    pause
                }
                None => defaults.max_pause,
            },
            learn,
            ..defaults
        };
        budget_config.validate().map_err(|e| format!("{key}.{e}"))?;
        let routes = std::mem::take(&mut self.routes)
            .into_iter()
            .enumerate()
            .map(|(j, r)| r.validate(&format!("{key}.routes[{j}]"), &budget_config))
            .collect::<Result<Vec<_>, _>>()?;
        if let Some(dup) = routes
            .iter()
            .enumerate()
            .find(|(j, r)| routes[..*j].iter().any(|o| o.name == r.name))
        {
            return Err(format!(
                "{key}.routes[{}].name: \"{}\" is used by two routes; names must be unique",
                dup.0, dup.1.name
            ));
        }
        let credential = {
            let raw = self.credential.unwrap_or(RawCredential {
                header: None,
                scheme: None,
            });
            let header_name = raw.header.unwrap_or_else(|| "authorization".to_string());
            let header = http::HeaderName::from_bytes(header_name.as_bytes()).map_err(|_| {
                format!("{key}.credential.header: \"{header_name}\" is not a header name")
            })?;
            let scheme = raw.scheme.unwrap_or_else(|| {
                if header == http::header::AUTHORIZATION {
                    "Bearer".to_string()
                } else {
                    String::new()
                }
            });
            if scheme.chars().any(|c| c.is_whitespace() || c.is_control()) {
                return Err(format!(
                    "{key}.credential.scheme: \"{scheme}\" must be one word, like \"Bearer\""
                ));
            }
            CredentialInjection { header, scheme }
        };
        let oauth = match self.oauth {
            Some(o) => Some(Arc::new(o.validate(&format!("{key}.oauth"))?)),
            None => None,
        };
        let timeout = match self.timeout {
            Some(d) => duration(&format!("{key}.timeout"), &d)?,
            None => Duration::from_secs(30),
        };
        let idempotency_header =
            match self.idempotency_header {
                Some(h) => Some(http::HeaderName::from_bytes(h.as_bytes()).map_err(|_| {
                    format!("{key}.idempotency_header: \"{h}\" is not a header name")
                })?),
                None => None,
            };
        Ok(Upstream {
            name: self.name,
            index,
            base_url,
            base,
            budget,
            budget_config: Arc::new(budget_config),
            retry,
            credential,
            oauth,
            timeout,
            idempotency_header,
            ratelimit_headers: self.ratelimit_headers.unwrap_or(true),
            cost_from_body: self.cost_from_body.unwrap_or(false),
            routes,
            batch_format: self
                .provider
                .as_deref()
                .and_then(providers::find)
                .and_then(|p| p.batch_format),
            provider: self.provider,
        })
    }
}

/// The config `headroom serve` runs with: the file if given, else no upstreams.
pub fn load_or_default(path: Option<&PathBuf>) -> Result<Config, ConfigError> {
    match path {
        Some(p) => Config::load(p),
        // No file: the defaults, with the environment's overrides.
        None => Config::parse_with("", "(no config file)", &process_env),
    }
}

// ---- [callbacks] ----------------------------------------------------------------------

/// `[callbacks]`: where notifications may go, and how they are sent.
#[derive(Debug, Clone)]
pub struct CallbackConfig {
    pub allow: crate::destination::Allowlist,
    /// Connecting (resolution included) gives up after this long.
    pub connect_timeout: Duration,
    /// A delivery (connect, send, response head) gives up after this long.
    pub timeout: Duration,
    pub max_in_flight: usize,
    pub max_per_host: usize,
    pub max_per_tenant: usize,
}

impl Default for CallbackConfig {
    fn default() -> Self {
        CallbackConfig {
            allow: crate::destination::Allowlist::default(),
            connect_timeout: Duration::from_secs(3),
            timeout: Duration::from_secs(5),
            max_in_flight: 64,
            max_per_host: 4,
            max_per_tenant: 8,
        }
    }
}

#[derive(Debug, Clone, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCallbacks {
    allow: Option<Vec<String>>,
    connect_timeout: Option<String>,
    timeout: Option<String>,
    max_in_flight: Option<usize>,
    max_per_host: Option<usize>,
    max_per_tenant: Option<usize>,
}

impl RawCallbacks {
    fn validate(self) -> Result<CallbackConfig, String> {
        let mut c = CallbackConfig::default();
        for (i, entry) in self.allow.unwrap_or_default().iter().enumerate() {
            c.allow
                .add(entry)
                .map_err(|e| format!("callbacks.allow[{i}]: \"{entry}\" {e}"))?;
        }
        let positive = |key: &str, v: Option<String>, default: Duration| match v {
            None => Ok(default),
            Some(v) => match parse_duration(&v) {
                Ok(d) if !d.is_zero() => Ok(d),
                Ok(_) => Err(format!("callbacks.{key}: must be longer than zero")),
                Err(e) => Err(format!("callbacks.{key}: {e}")),
            },
        };
        c.timeout = positive("timeout", self.timeout, c.timeout)?;
        c.connect_timeout = positive(
            "connect_timeout",
            self.connect_timeout,
            c.connect_timeout.min(c.timeout),
        )?;
        if c.connect_timeout > c.timeout {
            return Err(format!(
                "callbacks.connect_timeout: longer than callbacks.timeout ({}), which it is part of",
                headroom_core::duration::format_duration(c.timeout)
            ));
        }
        for (key, value, slot) in [
            ("max_in_flight", self.max_in_flight, &mut c.max_in_flight),
            ("max_per_host", self.max_per_host, &mut c.max_per_host),
            ("max_per_tenant", self.max_per_tenant, &mut c.max_per_tenant),
        ] {
            match value {
                Some(n) if !(1..=10_000).contains(&n) => {
                    return Err(format!(
                        "callbacks.{key}: {n} is out of range; use 1 to 10000"
                    ))
                }
                Some(n) => *slot = n,
                None => {}
            }
        }
        Ok(c)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_keys_are_named() {
        let err = |raw: RawCallbacks| raw.validate().unwrap_err();
        let e = err(RawCallbacks {
            allow: Some(vec!["10.0.0.0/8".into(), "10.0.0.0/33".into()]),
            ..Default::default()
        });
        assert!(e.starts_with("callbacks.allow[1]: \"10.0.0.0/33\""), "{e}");
        let e = err(RawCallbacks {
            allow: Some(vec!["http://x".into()]),
            ..Default::default()
        });
        assert!(e.starts_with("callbacks.allow[0]"), "{e}");
        let e = err(RawCallbacks {
            timeout: Some("0s".into()),
            ..Default::default()
        });
        assert!(e.starts_with("callbacks.timeout"), "{e}");
        let e = err(RawCallbacks {
            connect_timeout: Some("10s".into()),
            ..Default::default()
        });
        assert!(e.starts_with("callbacks.connect_timeout"), "{e}");
        let e = err(RawCallbacks {
            max_per_host: Some(0),
            ..Default::default()
        });
        assert!(e.starts_with("callbacks.max_per_host: 0"), "{e}");
    }

    const GOOD: &str = r#"
listen = "127.0.0.1:7878"
store = "sqlite://headroom-data/headroom.db"
governor = "memory"

[[upstreams]]
name = "crm"
base_url = "https://api.example.com"
budget = "tenant"
headroom = 0.8
limits = [{ quota = 100, window = "10s" }, { quota = 250000, window = "1d" }]
max_concurrency = 10
realtime_reserve = 0.2
retry = { max_attempts = 5, base_delay = "500ms", max_delay = "30s", max_wait = "15s" }
"#;

    #[test]
    fn reads_the_brief_example() {
        let c = Config::parse(GOOD, "headroom.toml").unwrap();
        let u = &c.upstreams[0];
        assert_eq!(u.name, "crm");
        assert_eq!(u.budget, BudgetScope::Tenant);
        assert_eq!(u.budget_config.limits.len(), 2);
        assert_eq!(
            u.budget_config.limits[1].window,
            Duration::from_secs(86_400)
        );
        assert_eq!(u.retry.max_wait, Duration::from_secs(15));
        assert_eq!(u.credential.header, http::header::AUTHORIZATION);
        assert_eq!(u.credential.scheme, "Bearer");
    }

    fn error_of(text: &str) -> String {
        Config::parse(text, "h.toml").unwrap_err().to_string()
    }

    #[test]
    fn the_environment_fills_references_and_overrides_keys() {
        let env = |name: &str| match name {
            "DB_PASSWORD" => Some("s3cret".to_string()),
            "HEADROOM_LISTEN" => Some("127.0.0.1:9999".to_string()),
            _ => None,
        };
        let text = "# ${NOT_SET} in a comment is left alone\n\
                    store = \"postgres://headroom:${DB_PASSWORD}@db/headroom\"\n\
                    governor = \"${GOVERNOR_URL:-memory}\"\n\
                    listen = \"0.0.0.0:7878\"\nauth = \"token\"\n";
        let c = Config::parse_with(text, "h.toml", &env).unwrap();
        assert_eq!(c.store, "postgres://headroom:s3cret@db/headroom");
        assert_eq!(c.governor, "memory");
        assert_eq!(
            c.listen.to_string(),
            "127.0.0.1:9999",
            "HEADROOM_LISTEN wins"
        );
        // As written, without the environment: the reference is an error that names it.
        let e = Config::parse(text, "h.toml").unwrap_err().to_string();
        assert!(e.contains("line 2: ${DB_PASSWORD} is not set"), "{e}");
        let e = Config::parse_with("store = \"${db password}\"\n", "h.toml", &env)
            .unwrap_err()
            .to_string();
        assert!(e.contains("is not a variable reference"), "{e}");
        // `$${` is a literal.
        let c = Config::parse_with("store = \"sqlite://a$${b}.db\"\n", "h.toml", &env);
        assert_eq!(c.unwrap().store, "sqlite://a${b}.db");
        // A bad override is named by its variable.
        let bad = |name: &str| (name == "HEADROOM_LISTEN").then(|| "nowhere".to_string());
        let e = Config::parse_with("", "h.toml", &bad)
            .unwrap_err()
            .to_string();
        assert!(e.contains("listen (from HEADROOM_LISTEN):"), "{e}");
    }

    /// Every error the file shows comes in one run: shape errors of several keys (the first
    /// with its line), and value errors of several upstreams and queues.
    #[test]
    fn every_error_comes_at_once() {
        let text = "listen = 7878\n\
                    [[upstreams]]\nname = \"a\"\nbase_url = \"http://a\"\nheadroom = \"most\"\n\
                    [[upstreams]]\nname = \"b\"\nbase_url = \"http://b\"\ncolour = \"red\"\n\
                    [server]\nmax_connections = \"many\"\n";
        let e = error_of(text);
        let lines: Vec<&str> = e.lines().collect();
        assert_eq!(lines.len(), 4, "{e}");
        assert!(lines.iter().all(|l| l.starts_with("h.toml: ")), "{e}");
        assert!(
            lines[0].contains("line 1") && lines[0].contains("listen"),
            "{e}"
        );
        for wanted in [
            "upstreams[0].headroom",
            "unknown field `colour`",
            "server.max_connections",
        ] {
            assert!(e.contains(wanted), "{wanted} missing from: {e}");
        }
        let text = "[[upstreams]]\nname = \"a\"\nbase_url = \"ftp://a\"\n\
                    [[upstreams]]\nname = \"b\"\nbase_url = \"http://b\"\nheadroom = 1.5\n\
                    [[queues]]\nname = \"q\"\nmode = \"sideways\"\n";
        let e = error_of(text);
        assert_eq!(e.lines().count(), 3, "{e}");
        for wanted in [
            "upstreams[0].base_url",
            "upstreams[1].headroom",
            "queues[0].mode",
        ] {
            assert!(e.contains(wanted), "{wanted} missing from: {e}");
        }
    }

    #[test]
    fn errors_name_the_file_the_key_and_the_fix() {
        let e = error_of(&GOOD.replace("\"10s\"", "\"10 parsecs\""));
        assert!(
            e.starts_with("h.toml: upstreams[0].limits[0].window:"),
            "{e}"
        );
        let e = error_of(&GOOD.replace("headroom = 0.8", "headroom = 1.5"));
        assert!(e.contains("upstreams[0].headroom must be"), "{e}");
        let e = error_of(&GOOD.replace("budget = \"tenant\"", "budget = \"team\""));
        assert!(e.contains("upstreams[0].budget: \"team\""), "{e}");
        let e = error_of(&GOOD.replace("max_concurrency = 10", "max_concurency = 10"));
        assert!(
            e.contains("unknown field `max_concurency`") && e.contains("line 12"),
            "{e}"
        );
        let e = error_of(&GOOD.replace("https://api.example.com", "ftp://x"));
        assert!(e.contains("upstreams[0].base_url"), "{e}");
        let e = error_of(&format!(
            "{GOOD}\n[[upstreams]]\nname = \"crm\"\nbase_url = \"http://x\"\n"
        ));
        assert!(
            e.contains("upstreams[1].name: \"crm\" is used by two"),
            "{e}"
        );
        let e = error_of("listen = \"localhost\"");
        assert!(e.contains("listen:"), "{e}");
        let e = error_of("governor = \"redis://127.0.0.1:6379/?lease_ttl=soon\"");
        assert!(e.contains("governor:") && e.contains("lease_ttl"), "{e}");
        let e = error_of("governor = \"redis://[::1\"");
        assert!(e.contains("governor:"), "{e}");
        // A value of the wrong type: the key, and the type wanted in words.
        let e = error_of(&GOOD.replace("headroom = 0.8", "headroom = \"a hundred\""));
        assert!(
            e.contains(
                "upstreams[0].headroom: invalid type: string \"a hundred\", expected a number"
            ),
            "{e}"
        );
        let e = error_of("[server]\nmax_connections = -3\n");
        assert!(
            e.contains("server.max_connections:") && e.contains("a whole number"),
            "{e}"
        );
    }

    #[test]
    fn the_example_config_is_valid() {
        let text = include_str!("../../../../examples/headroom.toml");
        let c = Config::parse(text, "examples/headroom.toml").unwrap();
        assert_eq!(c.upstreams.len(), 3);
        assert_eq!(c.upstreams[0].routes[0].name, "crm-search");
        assert!(c.upstreams[1].budget_config.limits.is_empty());
        // The preset's sandbox tier and idempotency header.
        let payments = &c.upstreams[2];
        assert_eq!(payments.budget_config.limits[0].quota, 25.0);
        assert!(payments.idempotency_header.is_some());
        assert_eq!(c.schedules.len(), 1);
        assert_eq!(c.schedules[0].name, "nightly-sync");
    }

    #[test]
    fn job_retention_defaults_to_a_week_and_is_checked() {
        let c = Config::parse("", "t.toml").unwrap();
        assert_eq!(c.job_retention, Duration::from_secs(7 * 86_400));
        let c = Config::parse("[jobs]\nretention = \"36h\"\n", "t.toml").unwrap();
        assert_eq!(c.job_retention, Duration::from_secs(36 * 3600));
        let e = error_of("[jobs]\nretention = \"0s\"\n");
        assert!(
            e.contains("jobs.retention: must be longer than zero"),
            "{e}"
        );
        let e = error_of("[jobs]\nretention = \"soon\"\n");
        assert!(e.contains("jobs.retention"), "{e}");
        let e = error_of("[jobs]\nkeep = \"1d\"\n");
        assert!(e.contains("keep"), "{e}");
    }

    #[test]
    fn queues_are_read_and_checked() {
        let text = r#"
[[queues]]
name = "sync"
mode = "throttled"
max_concurrency = 3
scope = "tenant"
dedup_window = "5m"
retry = { max_attempts = 7, interval = "2m", backoff = "fixed" }

[[queues]]
name = "ordered"
mode = "sequential"
"#;
        let c = Config::parse(text, "h.toml").unwrap();
        assert_eq!(c.queues.len(), 3);
        assert_eq!(c.queues[0].name, "default");
        let sync = c.queue("sync").unwrap();
        assert_eq!(
            sync.mode,
            crate::store::model::jobs::QueueMode::Throttled(3)
        );
        assert_eq!(sync.scope, QueueScope::Tenant);
        assert_eq!(sync.retry_delay(3), Duration::from_secs(120));
        assert_eq!(
            c.queue("ordered").unwrap().mode,
            crate::store::model::jobs::QueueMode::Sequential
        );
        assert_eq!(Queue::default().retry_delay(3), Duration::from_secs(240));
        let e = error_of("[[queues]]\nname = \"q\"\nmode = \"throttled\"\n");
        assert!(e.contains("queues[0].max_concurrency"), "{e}");
        let e = error_of("[[queues]]\nname = \"q\"\nretry = { max_attempts = 11 }\n");
        assert!(e.contains("queues[0].retry.max_attempts: 11"), "{e}");
        let e = error_of("[[queues]]\nname = \"q\"\nmode = \"fifo\"\n");
        assert!(e.contains("queues[0].mode: \"fifo\""), "{e}");
    }

    #[test]
    fn server_limits_and_metrics_are_read_and_checked() {
        let c = Config::parse("", "h.toml").unwrap();
        assert_eq!(c.server, ServerLimits::default());
        assert_eq!(c.metrics.max_tenants, 1000);
        let c = Config::parse(
            "[server]\nheader_read_timeout = \"300ms\"\nidle_timeout = \"2s\"\nmax_connections = 4\n\
             [metrics]\nmax_tenants = 10\n",
            "h.toml",
        )
        .unwrap();
        assert_eq!(c.server.header_read_timeout, Duration::from_millis(300));
        assert_eq!(c.server.idle_timeout, Duration::from_secs(2));
        assert_eq!(c.server.max_connections, 4);
        assert_eq!(c.metrics.max_tenants, 10);
        for (text, key) in [
            (
                "[server]\nheader_read_timeout = \"0s\"\n",
                "server.header_read_timeout",
            ),
            ("[server]\nidle_timeout = \"soon\"\n", "server.idle_timeout"),
            ("[server]\nmax_connections = 0\n", "server.max_connections"),
            ("[metrics]\nmax_tenants = 2000000\n", "metrics.max_tenants"),
            ("[server]\nmax_conns = 3\n", "max_conns"),
        ] {
            let e = error_of(text);
            assert!(e.contains(key), "{text}: {e}");
        }
    }

    #[test]
    fn an_empty_config_has_no_upstreams() {
        let c = Config::parse("", "h.toml").unwrap();
        assert!(c.upstreams.is_empty());
        assert_eq!(c.listen.to_string(), DEFAULT_LISTEN);
    }
}
