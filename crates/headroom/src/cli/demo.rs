//! `headroom demo`: the main job, end to end, in one process.
//!
//! The demo starts the mock upstream ([`headroom_mock`]) and the Headroom server
//! ([`headroom::server`]) on loopback ports, with the embedded SQLite store in a temporary
//! directory, and drives real HTTP traffic through the proxy:
//!
//! - a **bulk import**: `records` POSTs (lane `bulk`, tenant `acme`, a max wait of 10 minutes)
//!   sent by `concurrency` workers, many more than the budget admits, so it is saturated;
//! - **real-time calls**: GETs (lane `realtime`, same tenant) arriving as a Poisson stream of
//!   `realtime_rate` per second for as long as the import runs, each recording the
//!   `Headroom-Wait-Ms` Headroom reports.
//!
//! It shows live progress and ends with a table (or one JSON object): goodput per window
//! against `headroom × quota` and against the quota, the calls the mock throttled, Headroom's
//! retries, the real-time wait against the pacing interval and the busiest window at the mock.
//! [`execute_until`] runs it and returns a [`DemoReport`]; [`run`] is the command.

use std::collections::VecDeque;
use std::future::Future;
use std::io::IsTerminal;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use bytes::Bytes;
use headroom_core::duration::{format_duration, parse_duration};
use http::{HeaderMap, HeaderValue, Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use rand::{Rng, SeedableRng};
use serde::Serialize;
use tokio::net::TcpListener;
use tokio::sync::{oneshot, watch};
use tokio::task::JoinSet;
use tokio::time::Instant;

use headroom::cfg::Config;
use headroom::server;
use headroom_mock::{MockConfig, MockStats, Profile};

/// The demo's tenant, and the credential its calls carry to the mock (one bucket there).
const TENANT: &str = "acme";
const CREDENTIAL: &str = "Bearer demo-acme";
/// The upstream's name in the demo's config.
const UPSTREAM: &str = "mock";
/// How long a bulk call may wait in Headroom: long enough for any queue the demo builds.
const BULK_MAX_WAIT: &str = "10m";
/// How long real-time calls still in flight may take once the import is done.
const REALTIME_DRAIN: Duration = Duration::from_secs(30);
/// How long the server may take to drain once the demo is over or interrupted.
const SERVER_DRAIN: Duration = Duration::from_secs(2);
/// Failed calls kept in the report (all are counted).
const MAX_FAILURES_KEPT: usize = 20;

#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    /// Which provider's limits and headers the mock upstream imitates.
    #[arg(long, value_enum, default_value_t = Profile::Hubspot)]
    pub profile: Profile,
    /// Calls the upstream allows per window (the bucket size for `shopify`).
    #[arg(long, value_name = "N", default_value_t = 100,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub limit: u32,
    /// The window of the limit (for `shopify`, the time a full bucket takes to drain).
    #[arg(long, value_name = "DUR", default_value = "10s", value_parser = parse_window)]
    pub window: Duration,
    /// The share of each window Headroom aims to spend.
    #[arg(long, value_name = "F", default_value_t = 0.8, value_parser = parse_headroom)]
    pub headroom: f64,
    /// Share of the quota (0 to 1) that a hidden client spends on the same credential, out of
    /// Headroom's sight.
    #[arg(long, value_name = "F", default_value_t = 0.0, value_parser = parse_share)]
    pub hidden_share: f64,
    /// Delay the mock adds to every response.
    #[arg(long, value_name = "DUR", default_value = "0ms", value_parser = parse_latency)]
    pub latency: Duration,
    /// Records in the bulk import.
    #[arg(long, value_name = "N", default_value_t = 240,
          value_parser = clap::value_parser!(u64).range(1..=100_000))]
    pub records: u64,
    /// Records per bulk call. 1: each record is its own call through the proxy. More: the
    /// import is one batch (`POST /v1/batches`, HubSpot format) sent in chunks of this size,
    /// with every 33rd record failing the upstream's validation. Default: 1 up to 1,000
    /// records, else 100.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=100))]
    pub batch_size: Option<u32>,
    /// Real-time calls per second (a Poisson stream) while the import runs; 0 for none.
    #[arg(long, value_name = "PER_S", default_value_t = 1.0, value_parser = parse_rate)]
    pub realtime_rate: f64,
    /// Bulk workers sending records at once.
    #[arg(long, value_name = "N", default_value_t = 32,
          value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub concurrency: u32,
    /// No progress display: print one JSON object with the results (for scripts and
    /// benchmarks).
    #[arg(long, conflicts_with = "ui")]
    pub json: bool,
    /// Serve the console (`/ui`) while the import runs, on 127.0.0.1:7878 (or a free port
    /// when that is taken), and keep it up after the import until Ctrl-C.
    #[arg(long)]
    pub ui: bool,
}

fn parse_window(s: &str) -> Result<Duration, String> {
    let d = parse_duration(s).map_err(|e| e.to_string())?;
    if d < Duration::from_millis(10) {
        return Err("the window must be at least 10ms".into());
    }
    Ok(d)
}

fn parse_latency(s: &str) -> Result<Duration, String> {
    let d = parse_duration(s).map_err(|e| e.to_string())?;
    if d > Duration::from_secs(10) {
        return Err("the latency must be at most 10s".into());
    }
    Ok(d)
}

fn parse_share(s: &str) -> Result<f64, String> {
    match s.trim().parse::<f64>() {
        Ok(f) if (0.0..=1.0).contains(&f) => Ok(f),
        _ => Err(format!("\"{s}\" is not a share between 0 and 1, like 0.3")),
    }
}

fn parse_headroom(s: &str) -> Result<f64, String> {
    match s.trim().parse::<f64>() {
        Ok(f) if f > 0.0 && f <= 1.0 => Ok(f),
        _ => Err(format!(
            "\"{s}\" is not a headroom above 0 and at most 1, like 0.8"
        )),
    }
}

fn parse_rate(s: &str) -> Result<f64, String> {
    match s.trim().parse::<f64>() {
        Ok(f) if f.is_finite() && (0.0..=1000.0).contains(&f) => Ok(f),
        _ => Err(format!(
            "\"{s}\" is not a rate from 0 to 1000 calls per second, like 1 or 0.5"
        )),
    }
}

/// What [`execute_until`] runs.
#[derive(Debug, Clone)]
pub struct Options {
    pub profile: Profile,
    pub limit: u32,
    pub window: Duration,
    pub headroom: f64,
    pub hidden_share: f64,
    pub latency: Duration,
    pub records: u64,
    /// Records per bulk call (1: proxied calls; more: one batch in chunks of this size).
    pub batch_size: u32,
    pub realtime_rate: f64,
    pub concurrency: u32,
    /// Print what is being started (to stdout) and, when stdout is a terminal, progress bars
    /// (to stderr). Off for JSON and tests.
    pub display: bool,
    /// Serve the console on a port a person can type, and keep it up after the import until
    /// the stop signal.
    pub ui: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            profile: Profile::Hubspot,
            limit: 100,
            window: Duration::from_secs(10),
            headroom: 0.8,
            hidden_share: 0.0,
            latency: Duration::ZERO,
            records: 240,
            batch_size: 1,
            realtime_rate: 1.0,
            concurrency: 32,
            display: false,
            ui: false,
        }
    }
}

impl From<&Args> for Options {
    fn from(a: &Args) -> Self {
        Options {
            profile: a.profile,
            limit: a.limit,
            window: a.window,
            headroom: a.headroom,
            hidden_share: a.hidden_share,
            latency: a.latency,
            records: a.records,
            batch_size: a
                .batch_size
                .unwrap_or(if a.records > 1000 { 100 } else { 1 }),
            realtime_rate: a.realtime_rate,
            concurrency: a.concurrency,
            display: !a.json,
            ui: a.ui,
        }
    }
}

impl Options {
    fn check(&self) -> anyhow::Result<()> {
        parse_headroom(&self.headroom.to_string()).map_err(anyhow::Error::msg)?;
        parse_share(&self.hidden_share.to_string()).map_err(anyhow::Error::msg)?;
        parse_rate(&self.realtime_rate.to_string()).map_err(anyhow::Error::msg)?;
        anyhow::ensure!(self.limit >= 1, "the limit must be at least 1");
        anyhow::ensure!(
            self.window >= Duration::from_millis(10),
            "the window must be at least 10ms"
        );
        anyhow::ensure!(self.records >= 1, "there must be at least 1 record");
        anyhow::ensure!(
            (1..=100).contains(&self.batch_size),
            "the batch size must be from 1 to 100"
        );
        anyhow::ensure!(
            (1..=1024).contains(&self.concurrency),
            "the concurrency must be from 1 to 1024"
        );
        Ok(())
    }

    /// `headroom × quota`: what Headroom aims to spend per window.
    fn target(&self) -> f64 {
        self.headroom * f64::from(self.limit)
    }

    /// The even interval between calls at the target pace.
    fn pacing_interval(&self) -> Duration {
        self.window.div_f64(self.target())
    }
}

/// A call that failed: an answer of 400 or more after Headroom's retries, or no answer.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct FailedCall {
    /// `bulk` or `realtime`.
    pub lane: &'static str,
    /// The record's index (bulk) or the call's number (real-time).
    pub index: u64,
    /// The status, if the proxy answered.
    pub status: Option<u16>,
    pub error: String,
}

/// The demo's results. Counts at the upstream are the mock's, not Headroom's.
#[derive(Debug, Clone, Serialize)]
pub struct DemoReport {
    pub profile: Profile,
    /// The upstream's limit: `quota` calls per `window_s`.
    pub quota: u32,
    pub window_s: f64,
    pub headroom: f64,
    /// `headroom × quota`.
    pub target_per_window: f64,
    pub hidden_share: f64,
    pub concurrency: u32,
    pub realtime_rate: f64,
    /// Ctrl-C (or the stop future) ended the run early.
    pub interrupted: bool,
    /// From the start of the traffic to the end of the import.
    pub duration_s: f64,

    pub records: u64,
    pub records_ok: u64,
    pub records_failed: u64,
    /// Records not finished when the run was interrupted.
    pub records_unfinished: u64,
    /// Records per bulk call.
    pub batch_size: u32,
    /// Batch mode: records the upstream applied twice (0 unless Headroom crashed mid-call).
    pub records_applied_twice: u64,

    /// Whole windows of the upstream's limit between the start and the end of the import.
    pub whole_windows: u64,
    /// Calls the upstream accepted (bulk and real-time) per whole window; null if the import
    /// took less than one window.
    pub goodput_per_window: Option<f64>,
    /// `goodput_per_window` as a percentage of `headroom × quota`.
    pub goodput_pct_of_target: Option<f64>,
    /// `goodput_per_window` as a percentage of the quota.
    pub goodput_pct_of_quota: Option<f64>,
    /// The hidden client's accepted calls per whole window.
    pub hidden_per_window: Option<f64>,

    /// Calls of the demo's tenant the upstream accepted and throttled (429), over the run.
    pub upstream_accepted: u64,
    pub upstream_throttled: u64,
    /// `upstream_throttled / (upstream_accepted + upstream_throttled)`.
    pub throttled_share: f64,
    pub hidden_accepted: u64,
    pub hidden_throttled: u64,
    /// Headroom's retries: the sum of `Headroom-Attempts − 1` over every answer.
    pub retries: u64,

    pub realtime_calls: u64,
    pub realtime_ok: u64,
    pub realtime_failed: u64,
    /// `Headroom-Wait-Ms` of real-time calls.
    pub realtime_wait_p50_ms: Option<u64>,
    pub realtime_wait_p99_ms: Option<u64>,
    pub realtime_wait_max_ms: Option<u64>,
    /// `window / (headroom × quota)`.
    pub pacing_interval_ms: f64,

    /// The most calls the upstream accepted from the demo in one of its windows.
    pub max_in_window: u64,

    /// The first failed calls, with their errors (every failure is counted above).
    pub failures: Vec<FailedCall>,
}

/// What the calls report back, shared by the tasks.
#[derive(Default)]
struct Tally {
    next_record: AtomicU64,
    records_ok: AtomicU64,
    records_failed: AtomicU64,
    retries: AtomicU64,
    realtime_calls: AtomicU64,
    realtime_ok: AtomicU64,
    realtime_failed: AtomicU64,
    realtime_waits: Mutex<Vec<u64>>,
    failures: Mutex<Vec<FailedCall>>,
}

impl Tally {
    fn fail(&self, call: FailedCall) {
        let mut failures = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        if failures.len() < MAX_FAILURES_KEPT {
            failures.push(call);
        }
    }

    fn waits(&self) -> Vec<u64> {
        let mut w = self
            .realtime_waits
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        w.sort_unstable();
        w
    }
}

/// Whether record `i` of a batch import carries an address the upstream refuses.
fn is_invalid(i: u64) -> bool {
    i % 33 == 7
}

/// The `q` quantile (0 to 1) of sorted values, nearest rank.
fn quantile(sorted: &[u64], q: f64) -> Option<u64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = (q * sorted.len() as f64).ceil() as usize;
    Some(sorted[rank.clamp(1, sorted.len()) - 1])
}

type DemoClient = Client<HttpConnector, Full<Bytes>>;

/// Where the calls go and what they carry.
struct Caller {
    client: DemoClient,
    base: String,
    /// The admin token of the demo's server (the demo runs in the safe default too).
    bearer: String,
    tally: Arc<Tally>,
}

/// What one call through the proxy came to.
struct Answer {
    status: StatusCode,
    attempts: u64,
    wait_ms: u64,
    body: Bytes,
}

fn header_u64(headers: &HeaderMap, name: &str) -> u64 {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

/// A short reason for a failed answer: a problem+json `detail`, else the body's start.
fn reason(answer: &Answer) -> String {
    let detail = serde_json::from_slice::<serde_json::Value>(&answer.body)
        .ok()
        .and_then(|v| v.get("detail").and_then(|d| d.as_str()).map(str::to_string));
    detail.unwrap_or_else(|| {
        let text = String::from_utf8_lossy(&answer.body);
        let text: String = text.chars().take(200).collect();
        format!("{} {}", answer.status, text.trim())
    })
}

impl Caller {
    async fn send(
        &self,
        method: Method,
        path: &str,
        lane: &'static str,
        body: Bytes,
    ) -> Result<Answer, String> {
        let mut request = Request::builder()
            .method(method)
            .uri(format!("{}/proxy/{UPSTREAM}{path}", self.base))
            .header(http::header::AUTHORIZATION, CREDENTIAL)
            .header(http::header::PROXY_AUTHORIZATION, &self.bearer)
            .header("headroom-tenant", TENANT)
            .header("headroom-lane", lane);
        if lane == "bulk" {
            request = request.header("headroom-max-wait", BULK_MAX_WAIT);
        }
        if !body.is_empty() {
            request = request.header(
                http::header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
        }
        let request = request.body(Full::new(body)).map_err(|e| e.to_string())?;
        let response = self
            .client
            .request(request)
            .await
            .map_err(|e| format!("no answer from Headroom: {e}"))?;
        let (parts, body) = response.into_parts();
        let body = body
            .collect()
            .await
            .map_err(|e| format!("the answer's body broke off: {e}"))?
            .to_bytes();
        let attempts = header_u64(&parts.headers, "headroom-attempts");
        self.tally
            .retries
            .fetch_add(attempts.saturating_sub(1), Ordering::Relaxed);
        Ok(Answer {
            status: parts.status,
            attempts,
            wait_ms: header_u64(&parts.headers, "headroom-wait-ms"),
            body,
        })
    }

    /// One bulk worker: sends records until none are left.
    async fn bulk_worker(self: Arc<Self>, records: u64, bar: ProgressBar) {
        loop {
            let i = self.tally.next_record.fetch_add(1, Ordering::Relaxed);
            if i >= records {
                return;
            }
            let body = serde_json::json!({
                "properties": {
                    "email": format!("contact-{i}@example.com"),
                    "firstname": format!("Contact {i}"),
                }
            });
            let body = Bytes::from(body.to_string());
            let result = self
                .send(Method::POST, "/crm/v3/objects/contacts", "bulk", body)
                .await;
            match result {
                Ok(a) if a.status.as_u16() < 400 => {
                    self.tally.records_ok.fetch_add(1, Ordering::Relaxed);
                }
                other => {
                    self.tally.records_failed.fetch_add(1, Ordering::Relaxed);
                    let (status, error) = match other {
                        Ok(a) => (Some(a.status.as_u16()), reason(&a)),
                        Err(e) => (None, e),
                    };
                    self.tally.fail(FailedCall {
                        lane: "bulk",
                        index: i,
                        status,
                        error,
                    });
                }
            }
            bar.inc(1);
        }
    }

    /// The import as one batch: submits every record to `/v1/batches`, then follows the
    /// batch until no record is pending.
    async fn batch_import(self: Arc<Self>, records: u64, batch_size: u32, bar: ProgressBar) {
        let inputs: Vec<serde_json::Value> = (0..records)
            .map(|i| {
                // Every 33rd record fails the upstream's validation: the demo shows it reported.
                let email = if is_invalid(i) {
                    format!("invalid-address-{i}")
                } else {
                    format!("contact-{i}@example.com")
                };
                serde_json::json!({"id": format!("r{i}"), "properties": {"email": email}})
            })
            .collect();
        let body = serde_json::json!({
            "upstream": UPSTREAM,
            "tenant": TENANT,
            "format": "hubspot",
            "max_batch_size": batch_size,
            "request": {
                "method": "POST",
                "path": "/crm/v3/objects/contacts/batch/upsert",
                "headers": {"authorization": CREDENTIAL},
            },
            "records": inputs,
        });
        let fail_all = |error: String| {
            self.tally
                .records_failed
                .fetch_add(records, Ordering::Relaxed);
            self.tally.fail(FailedCall {
                lane: "bulk",
                index: 0,
                status: None,
                error,
            });
        };
        let submitted = self
            .admin(Method::POST, "/v1/batches", Bytes::from(body.to_string()))
            .await;
        let id = match submitted {
            Ok(v) => v["id"].as_str().unwrap_or_default().to_string(),
            Err(e) => return fail_all(format!("the batch was not accepted: {e}")),
        };
        loop {
            tokio::time::sleep(Duration::from_millis(250)).await;
            let path = format!("/v1/batches/{id}?failures_limit={MAX_FAILURES_KEPT}");
            let view = match self.admin(Method::GET, &path, Bytes::new()).await {
                Ok(v) => v,
                Err(_) => continue,
            };
            let count = |k: &str| view[k].as_u64().unwrap_or(0);
            self.tally
                .records_ok
                .store(count("succeeded"), Ordering::Relaxed);
            self.tally
                .records_failed
                .store(count("failed"), Ordering::Relaxed);
            bar.set_position(count("succeeded") + count("failed"));
            if count("pending") == 0 {
                let mut kept = self
                    .tally
                    .failures
                    .lock()
                    .unwrap_or_else(|e| e.into_inner());
                for f in view["failures"].as_array().into_iter().flatten() {
                    if kept.len() < MAX_FAILURES_KEPT {
                        kept.push(FailedCall {
                            lane: "bulk",
                            index: f["index"].as_u64().unwrap_or(0),
                            // The mock refuses invalid records in a 207 multi-status answer.
                            status: Some(207),
                            error: format!(
                                "{}: {}",
                                f["record_id"].as_str().unwrap_or(""),
                                f["error"].as_str().unwrap_or("")
                            ),
                        });
                    }
                }
                return;
            }
        }
    }

    /// A call to Headroom's own API; the JSON answer, or why it failed.
    async fn admin(
        &self,
        method: Method,
        path: &str,
        body: Bytes,
    ) -> Result<serde_json::Value, String> {
        let request = Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.base))
            .header(http::header::AUTHORIZATION, &self.bearer)
            .header(http::header::CONTENT_TYPE, "application/json")
            .body(Full::new(body))
            .map_err(|e| e.to_string())?;
        let response = self
            .client
            .request(request)
            .await
            .map_err(|e| e.to_string())?;
        let status = response.status();
        let body = response
            .into_body()
            .collect()
            .await
            .map_err(|e| e.to_string())?
            .to_bytes();
        let value: serde_json::Value = serde_json::from_slice(&body).map_err(|e| e.to_string())?;
        if status.is_success() {
            Ok(value)
        } else {
            Err(value["detail"].as_str().unwrap_or("error").to_string())
        }
    }

    async fn realtime_call(self: Arc<Self>, n: u64) {
        let path = format!("/crm/v3/objects/contacts/{n}");
        match self
            .send(Method::GET, &path, "realtime", Bytes::new())
            .await
        {
            Ok(a) if a.status.as_u16() < 400 => {
                self.tally.realtime_ok.fetch_add(1, Ordering::Relaxed);
                debug_assert!(a.attempts >= 1);
                self.tally
                    .realtime_waits
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push(a.wait_ms);
            }
            other => {
                self.tally.realtime_failed.fetch_add(1, Ordering::Relaxed);
                let (status, error) = match other {
                    Ok(a) => (Some(a.status.as_u16()), reason(&a)),
                    Err(e) => (None, e),
                };
                self.tally.fail(FailedCall {
                    lane: "realtime",
                    index: n,
                    status,
                    error,
                });
            }
        }
    }

    /// Real-time calls as a Poisson stream of `rate` per second until `stop` turns true;
    /// then waits for the calls still in flight.
    async fn realtime_stream(self: Arc<Self>, rate: f64, mut stop: watch::Receiver<bool>) {
        let mut calls = JoinSet::new();
        if rate > 0.0 {
            let mut rng = rand::rngs::StdRng::from_entropy();
            loop {
                // Exponential gaps between arrivals make a Poisson stream.
                let u: f64 = rng.gen();
                let gap = Duration::from_secs_f64((-(1.0 - u).ln() / rate).min(3600.0));
                tokio::select! {
                    _ = tokio::time::sleep(gap) => {}
                    _ = stop.wait_for(|s| *s) => break,
                }
                let n = self.tally.realtime_calls.fetch_add(1, Ordering::Relaxed);
                calls.spawn(self.clone().realtime_call(n));
            }
        }
        while calls.join_next().await.is_some() {}
    }
}

/// The live display: a bar for the import and a status line, on stderr.
struct Display {
    multi: Option<MultiProgress>,
    bulk: ProgressBar,
    status: ProgressBar,
    /// (time, calls accepted at the upstream), for a recent calls-per-second figure.
    recent: VecDeque<(Instant, u64)>,
}

impl Display {
    fn new(show: bool, records: u64) -> Display {
        if !show {
            return Display {
                multi: None,
                bulk: ProgressBar::hidden(),
                status: ProgressBar::hidden(),
                recent: VecDeque::new(),
            };
        }
        let multi = MultiProgress::with_draw_target(ProgressDrawTarget::stderr_with_hz(8));
        let bulk = multi.add(ProgressBar::new(records));
        bulk.set_style(
            ProgressStyle::with_template(
                "bulk [{bar:32.cyan/blue}] {pos}/{len} records  {msg}  ETA {eta}",
            )
            .expect("a valid template")
            .progress_chars("=> "),
        );
        let status = multi.add(ProgressBar::new_spinner());
        status
            .set_style(ProgressStyle::with_template("{spinner} {msg}").expect("a valid template"));
        Display {
            multi: Some(multi),
            bulk,
            status,
            recent: VecDeque::new(),
        }
    }

    fn update(&mut self, stats: &MockStats, tally: &Tally, interval_ms: f64) {
        if self.multi.is_none() {
            return;
        }
        let now = Instant::now();
        self.recent.push_back((now, stats.accepted));
        while self
            .recent
            .front()
            .is_some_and(|(t, _)| now.duration_since(*t) > Duration::from_secs(3))
        {
            self.recent.pop_front();
        }
        let rate = match self.recent.front() {
            Some((t, n)) if now.duration_since(*t) >= Duration::from_millis(500) => {
                (stats.accepted - n) as f64 / now.duration_since(*t).as_secs_f64()
            }
            _ => 0.0,
        };
        let elapsed = self.bulk.elapsed().as_secs_f64();
        if elapsed > 0.5 {
            let per_s = self.bulk.position() as f64 / elapsed;
            self.bulk.set_message(format!("{per_s:.1}/s"));
        }
        let waits = tally.waits();
        let ms = |v: Option<u64>| v.map_or("-".to_string(), |v| v.to_string());
        self.status.set_message(format!(
            "{rate:.1} calls/s · throttled {} · real-time {} calls, wait p50/p99 {}/{} ms (interval {interval_ms:.0} ms)",
            stats.throttled,
            waits.len(),
            ms(quantile(&waits, 0.5)),
            ms(quantile(&waits, 0.99)),
        ));
        self.status.tick();
    }

    fn finish(&self) {
        if let Some(multi) = &self.multi {
            self.bulk.finish_and_clear();
            self.status.finish_and_clear();
            let _ = multi.clear();
        }
    }
}

/// The demo's config: one upstream, the mock, paced at `headroom × limit` per window.
fn config_text(opts: &Options, store: &str, mock_url: &str) -> String {
    let s = |v: &str| toml::Value::String(v.to_string()).to_string();
    format!(
        "store = {store}\n\n\
         [[upstreams]]\n\
         name = {name}\n\
         base_url = {url}\n\
         budget = \"tenant\"\n\
         headroom = {headroom}\n\
         limits = [{{ quota = {limit}, window = {window} }}]\n\
         max_concurrency = 10\n\
         realtime_reserve = 0.2\n\
         retry = {{ max_attempts = 5, base_delay = \"500ms\", max_delay = \"30s\", max_wait = \"15s\" }}\n",
        store = s(store),
        name = s(UPSTREAM),
        url = s(mock_url),
        headroom = opts.headroom,
        limit = opts.limit,
        window = s(&format_duration(opts.window)),
    )
}

/// Runs the demo to its end (the tests' entry; the command stops on Ctrl-C). See
/// [`execute_until`].
#[cfg(test)]
pub async fn execute(opts: &Options) -> anyhow::Result<DemoReport> {
    execute_until(opts, std::future::pending()).await
}

/// Runs the demo until the import is done or `stop` resolves (then the report says
/// `interrupted` and counts the unfinished records). Call it inside a multi-threaded or
/// current-thread tokio runtime.
pub async fn execute_until(
    opts: &Options,
    stop: impl Future<Output = ()>,
) -> anyhow::Result<DemoReport> {
    opts.check()?;
    let dir = tempfile::tempdir().context("cannot create a temporary directory for the store")?;
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .context("cannot listen on 127.0.0.1 for the mock upstream")?;
    let mock = headroom_mock::spawn(
        listener,
        MockConfig {
            profile: opts.profile,
            limit: opts.limit,
            window: opts.window,
            latency: opts.latency,
            hidden_share: opts.hidden_share,
            limit_change: None,
        },
    )
    .await
    .context("cannot start the mock upstream")?;

    let store = format!("sqlite://{}", dir.path().join("headroom.db").display());
    let text = config_text(opts, &store, &mock.url());
    let config = Config::parse(&text, "demo config")?;
    let token = format!("hr_demo_{:032x}", rand::random::<u128>());
    let state = server::start(config, Some(token.clone())).await?;
    // With the console, the port a person can type (the one `serve` uses), if it is free.
    let fixed = if opts.ui {
        TcpListener::bind("127.0.0.1:7878").await.ok()
    } else {
        None
    };
    let listener = match fixed {
        Some(listener) => listener,
        None => TcpListener::bind("127.0.0.1:0")
            .await
            .context("cannot listen on 127.0.0.1 for Headroom")?,
    };
    let proxy_addr = listener.local_addr()?;
    let (stop_server, server_stopped) = oneshot::channel::<()>();
    let mut server = tokio::spawn(server::serve(state, listener, async move {
        let _ = server_stopped.await;
    }));

    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    let client: DemoClient = Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(opts.concurrency as usize + 64)
        .pool_idle_timeout(Duration::from_secs(30))
        .build(connector);
    let tally = Arc::new(Tally::default());
    let caller = Arc::new(Caller {
        client,
        base: format!("http://{proxy_addr}"),
        bearer: format!("Bearer {token}"),
        tally: tally.clone(),
    });

    let target = opts.target();
    let interval_ms = opts.pacing_interval().as_secs_f64() * 1000.0;
    if opts.display {
        println!(
            "mock upstream ({}) at {}",
            mock.config().describe(),
            mock.url()
        );
        println!(
            "Headroom at http://{proxy_addr}, headroom {}: at most {} calls per {} (one every {:.0} ms)",
            opts.headroom,
            trim_float(target),
            format_duration(opts.window),
            interval_ms
        );
        if opts.batch_size > 1 {
            println!(
                "importing {} records for tenant {TENANT} as one batch in calls of {}, real-time calls at {}/s\n",
                opts.records, opts.batch_size, opts.realtime_rate
            );
        } else {
            println!(
                "importing {} records for tenant {TENANT} with {} bulk workers, real-time calls at {}/s\n",
                opts.records, opts.concurrency, opts.realtime_rate
            );
        }
    }
    if opts.ui {
        // The token is this run's own (made above, gone with it); it is shown here, never in
        // a URL.
        println!(
            "console at http://{proxy_addr}/ui — sign in with this run's admin token:\n  {token}\n"
        );
    }
    let show_bars = opts.display && std::io::stdout().is_terminal();
    let mut display = Display::new(show_bars, opts.records);

    // Windows at the mock are aligned to its start or its last reset: reset it now, so that
    // window k of the import is [t0 + k·window, t0 + (k+1)·window) at the mock too.
    mock.reset();
    let t0 = Instant::now();
    let mut workers = JoinSet::new();
    if opts.batch_size > 1 {
        workers.spawn(caller.clone().batch_import(
            opts.records,
            opts.batch_size,
            display.bulk.clone(),
        ));
    } else {
        for _ in 0..opts.concurrency {
            workers.spawn(
                caller
                    .clone()
                    .bulk_worker(opts.records, display.bulk.clone()),
            );
        }
    }
    let (stop_realtime, realtime_stop) = watch::channel(false);
    let mut realtime = tokio::spawn(
        caller
            .clone()
            .realtime_stream(opts.realtime_rate, realtime_stop),
    );

    // Goodput counts whole windows only. At each window boundary t0 + k·window the loop
    // samples the mock's counters; when the import ends, the last sample taken is the number
    // of calls accepted in the k whole windows before it, and goodput is that over k. The
    // partial window at the end (where the import runs dry) is left out, so a short tail
    // does not read as under-use; a boundary timer firing a millisecond late moves at most a
    // call between windows.
    let mut samples: Vec<(u64, u64)> = Vec::new();
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut stop = std::pin::pin!(stop);
    let mut interrupted = false;
    loop {
        let boundary = t0 + opts.window * (samples.len() as u32 + 1);
        tokio::select! {
            biased;
            _ = &mut stop => {
                interrupted = true;
                break;
            }
            _ = tokio::time::sleep_until(boundary) => {
                let s = mock.stats();
                samples.push((s.accepted, s.hidden_accepted));
            }
            joined = workers.join_next() => match joined {
                None => break,
                Some(Ok(())) => {}
                Some(Err(e)) => anyhow::bail!("a bulk worker failed: {e}"),
            },
            _ = tick.tick() => display.update(&mock.stats(), &tally, interval_ms),
        }
    }
    let duration = t0.elapsed();

    // Stop the real-time stream; let its calls in flight finish unless interrupted.
    let _ = stop_realtime.send(true);
    if interrupted {
        workers.abort_all();
    }
    let drained = !interrupted
        && tokio::time::timeout(REALTIME_DRAIN, &mut realtime)
            .await
            .is_ok();
    if !drained {
        realtime.abort();
        let _ = realtime.await;
    }
    while workers.join_next().await.is_some() {}
    display.update(&mock.stats(), &tally, interval_ms);
    display.finish();
    if opts.ui && !interrupted {
        println!(
            "the import is done ({} records ok, {} failed); the console stays up at \
             http://{proxy_addr}/ui until Ctrl-C",
            tally.records_ok.load(Ordering::Relaxed),
            tally.records_failed.load(Ordering::Relaxed)
        );
        (&mut stop).await;
    }

    let stats = mock.stats();
    let _ = stop_server.send(());
    if tokio::time::timeout(SERVER_DRAIN, &mut server)
        .await
        .is_err()
    {
        // Calls aborted mid-wait may hold the server's drain: it is over anyway.
        server.abort();
    }
    mock.shutdown().await;
    drop(dir);

    let ours = stats.by_tenant.get(CREDENTIAL).cloned().unwrap_or_default();
    let calls = ours.accepted + ours.throttled;
    let whole_windows = samples.len() as u64;
    let (goodput, hidden) = match samples.last() {
        Some((accepted, hidden)) => (
            Some(*accepted as f64 / whole_windows as f64),
            Some(*hidden as f64 / whole_windows as f64),
        ),
        None => (None, None),
    };
    let waits = tally.waits();
    let ok = tally.records_ok.load(Ordering::Relaxed);
    let failed = tally.records_failed.load(Ordering::Relaxed);
    let failures = tally
        .failures
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    Ok(DemoReport {
        profile: opts.profile,
        quota: opts.limit,
        window_s: opts.window.as_secs_f64(),
        headroom: opts.headroom,
        target_per_window: target,
        hidden_share: opts.hidden_share,
        concurrency: opts.concurrency,
        realtime_rate: opts.realtime_rate,
        interrupted,
        duration_s: duration.as_secs_f64(),
        records: opts.records,
        records_ok: ok,
        records_failed: failed,
        records_unfinished: opts.records.saturating_sub(ok + failed),
        batch_size: opts.batch_size,
        records_applied_twice: stats.batch_records_reapplied,
        whole_windows,
        goodput_per_window: goodput,
        goodput_pct_of_target: goodput.map(|g| 100.0 * g / target),
        goodput_pct_of_quota: goodput.map(|g| 100.0 * g / f64::from(opts.limit)),
        hidden_per_window: hidden.filter(|_| opts.hidden_share > 0.0),
        upstream_accepted: ours.accepted,
        upstream_throttled: ours.throttled,
        throttled_share: if calls == 0 {
            0.0
        } else {
            ours.throttled as f64 / calls as f64
        },
        hidden_accepted: stats.hidden_accepted,
        hidden_throttled: stats.hidden_throttled,
        retries: tally.retries.load(Ordering::Relaxed),
        realtime_calls: tally.realtime_calls.load(Ordering::Relaxed),
        realtime_ok: tally.realtime_ok.load(Ordering::Relaxed),
        realtime_failed: tally.realtime_failed.load(Ordering::Relaxed),
        realtime_wait_p50_ms: quantile(&waits, 0.5),
        realtime_wait_p99_ms: quantile(&waits, 0.99),
        realtime_wait_max_ms: waits.last().copied(),
        pacing_interval_ms: interval_ms,
        max_in_window: ours.max_in_window,
        failures,
    })
}

/// `80` rather than `80.0`, `0.5` as is.
fn trim_float(v: f64) -> String {
    if v.fract() == 0.0 && v.abs() < 1e15 {
        format!("{v:.0}")
    } else {
        format!("{v:.1}")
    }
}

fn pct(part: u64, whole: u64) -> String {
    if whole == 0 {
        "0.00 %".to_string()
    } else {
        format!("{:.2} %", 100.0 * part as f64 / whole as f64)
    }
}

impl DemoReport {
    /// The closing table.
    pub fn table(&self) -> String {
        let window = format_duration(Duration::from_secs_f64(self.window_s));
        let ms = |v: Option<u64>| v.map_or("-".to_string(), |v| v.to_string());
        let mut rows: Vec<(String, String)> = Vec::new();
        let mut row = |k: &str, v: String| rows.push((k.to_string(), v));
        row(
            "duration",
            format!(
                "{:.1} s{}",
                self.duration_s,
                if self.interrupted {
                    " (interrupted)"
                } else {
                    ""
                }
            ),
        );
        let mut records = format!(
            "{} ok, {} failed of {}",
            self.records_ok, self.records_failed, self.records
        );
        if self.records_unfinished > 0 {
            records.push_str(&format!(", {} unfinished", self.records_unfinished));
        }
        row("bulk records", records);
        if self.batch_size > 1 {
            row(
                "batch",
                format!(
                    "{} records per call; records applied twice: {}",
                    self.batch_size, self.records_applied_twice
                ),
            );
        }
        match self.goodput_per_window {
            Some(g) => {
                row(
                    "goodput",
                    format!(
                        "{g:.1} calls per {window} window ({} whole window{})",
                        self.whole_windows,
                        if self.whole_windows == 1 { "" } else { "s" }
                    ),
                );
                row(
                    "  vs headroom × quota",
                    format!(
                        "{:.1} % of {}",
                        self.goodput_pct_of_target.unwrap_or_default(),
                        trim_float(self.target_per_window)
                    ),
                );
                row(
                    "  vs quota",
                    format!(
                        "{:.1} % of {}",
                        self.goodput_pct_of_quota.unwrap_or_default(),
                        self.quota
                    ),
                );
            }
            None => row(
                "goodput",
                format!("n/a: the import took less than one {window} window"),
            ),
        }
        if let Some(h) = self.hidden_per_window {
            row(
                "hidden client",
                format!(
                    "{h:.1} calls per window ({:.0} % of quota), {} throttled",
                    100.0 * self.hidden_share,
                    self.hidden_throttled
                ),
            );
        }
        let calls = self.upstream_accepted + self.upstream_throttled;
        row(
            "throttled at the upstream",
            format!(
                "{} of {} calls ({})",
                self.upstream_throttled,
                calls,
                pct(self.upstream_throttled, calls)
            ),
        );
        row("Headroom retries", self.retries.to_string());
        row(
            "real-time calls",
            format!(
                "{} ok, {} failed of {}",
                self.realtime_ok, self.realtime_failed, self.realtime_calls
            ),
        );
        row(
            "real-time wait p50 / p99",
            format!(
                "{} / {} ms (pacing interval {:.0} ms)",
                ms(self.realtime_wait_p50_ms),
                ms(self.realtime_wait_p99_ms),
                self.pacing_interval_ms
            ),
        );
        row(
            "most accepted in one window",
            format!(
                "{} (quota {}, headroom × quota {})",
                self.max_in_window,
                self.quota,
                trim_float(self.target_per_window)
            ),
        );
        let width = rows
            .iter()
            .map(|(k, _)| k.chars().count())
            .max()
            .unwrap_or(0);
        let mut out = String::new();
        for (k, v) in rows {
            out.push_str(&format!("{k:<width$}  {v}\n"));
        }
        if !self.failures.is_empty() {
            out.push_str("\nfailed calls (first ones):\n");
            for f in self.failures.iter().take(5) {
                let status = f.status.map_or("no answer".to_string(), |s| s.to_string());
                out.push_str(&format!(
                    "  {} #{}: {status}: {}\n",
                    f.lane, f.index, f.error
                ));
            }
        }
        out
    }
}

/// `headroom demo`.
pub fn run(args: Args) -> anyhow::Result<()> {
    let opts = Options::from(&args);
    let runtime = tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
    let result = runtime.block_on(execute_until(&opts, async {
        if tokio::signal::ctrl_c().await.is_err() {
            // No signal handling here: run to the end.
            std::future::pending::<()>().await;
        }
    }));
    runtime.shutdown_timeout(Duration::from_secs(1));
    let report = result?;
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        print!("{}", report.table());
    }
    if report.interrupted {
        anyhow::bail!(
            "interrupted: {} of {} records were not sent",
            report.records_unfinished,
            report.records
        );
    }
    // A batch import plants invalid records; exactly those must fail.
    let planted = if report.batch_size > 1 {
        (0..report.records).filter(|i| is_invalid(*i)).count() as u64
    } else {
        0
    };
    if report.records_failed != planted {
        anyhow::bail!(
            "{} of {} records failed",
            report.records_failed,
            report.records
        );
    }
    if planted > 0 && !args.json {
        println!(
            "\nthe {planted} failed records are the planted invalid ones (every 33rd), each reported with the upstream's error"
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_are_nearest_rank() {
        assert_eq!(quantile(&[], 0.5), None);
        assert_eq!(quantile(&[7], 0.99), Some(7));
        let v: Vec<u64> = (1..=100).collect();
        assert_eq!(quantile(&v, 0.5), Some(50));
        assert_eq!(quantile(&v, 0.99), Some(99));
        assert_eq!(quantile(&v, 1.0), Some(100));
    }

    #[test]
    fn the_config_parses() {
        let opts = Options::default();
        let text = config_text(&opts, "sqlite:///tmp/x y/\"h\".db", "http://127.0.0.1:9");
        let c = Config::parse(&text, "demo").unwrap();
        let u = &c.upstreams[0];
        assert_eq!(u.name, UPSTREAM);
        assert_eq!(u.budget_config.limits[0].quota, 100.0);
        assert_eq!(u.budget_config.limits[0].window, Duration::from_secs(10));
        assert_eq!(u.budget_config.headroom, 0.8);
        assert_eq!(opts.pacing_interval(), Duration::from_millis(125));
    }

    #[test]
    fn options_are_checked() {
        let bad = Options {
            headroom: 1.5,
            ..Options::default()
        };
        assert!(bad.check().is_err());
        let bad = Options {
            concurrency: 0,
            ..Options::default()
        };
        assert!(bad.check().is_err());
        assert!(Options::default().check().is_ok());
    }

    // The whole demo as a call: the mock, the server and the traffic over real sockets, on a
    // small, fast setting. Behaviour only, no timing (the machine is shared and noisy).

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_demo_imports_everything_without_a_throttled_call() {
        let opts = Options {
            profile: Profile::Ietf,
            limit: 20,
            window: Duration::from_secs(2),
            headroom: 0.8,
            records: 40,
            // Two a second: a real-time call surely happens during the ~5 s import (P(none) ≈ 5e-5).
            realtime_rate: 2.0,
            concurrency: 16,
            ..Options::default()
        };
        let report = execute(&opts).await.unwrap();
        let summary = report.table();
        println!("{summary}");

        assert!(!report.interrupted, "{summary}");
        assert_eq!(report.records_ok, 40, "{summary}");
        assert_eq!(report.records_failed, 0, "{summary}");
        assert_eq!(report.records_unfinished, 0, "{summary}");
        assert!(report.failures.is_empty(), "{summary}");
        assert_eq!(report.upstream_throttled, 0, "{summary}");
        assert_eq!(report.throttled_share, 0.0, "{summary}");
        assert!(report.max_in_window <= 20, "{summary}");
        assert!(report.realtime_calls > 0, "{summary}");
        assert_eq!(
            report.realtime_ok + report.realtime_failed,
            report.realtime_calls,
            "{summary}"
        );
        // Every accepted call at the mock is a record or a real-time call: none lost, none twice.
        assert_eq!(
            report.upstream_accepted,
            report.records_ok + report.realtime_ok,
            "{summary}"
        );

        // The JSON names what scripts and benchmarks read.
        let json = serde_json::to_value(&report).unwrap();
        for field in [
            "goodput_pct_of_target",
            "throttled_share",
            "realtime_wait_p50_ms",
            "realtime_wait_p99_ms",
            "max_in_window",
            "retries",
        ] {
            assert!(json.get(field).is_some(), "{field} missing from {json}");
        }
        assert_eq!(json["profile"], "ietf");
    }

    #[tokio::test]
    async fn bad_options_are_refused_before_anything_starts() {
        let opts = Options {
            headroom: 0.0,
            ..Options::default()
        };
        let e = execute(&opts).await.unwrap_err();
        assert!(e.to_string().contains("headroom"), "{e}");
    }
}
