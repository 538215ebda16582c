//! `headroom serve`: the HTTP server — the proxy, the admin API, health and metrics.

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use axum::extract::State;
use axum::response::IntoResponse;
use axum::routing::{any, get};
use axum::{Json, Router};
use http::header::CONTENT_TYPE;
use serde_json::json;
use tokio::net::TcpListener;

use crate::auth::{authenticate, Admin};
use crate::cfg::{self, Config};
use crate::credentials::{self, Credentials};
use crate::error::ApiResult;
use crate::metrics::Metrics;
use crate::outbound::governor::SharedGovernor;
use crate::proxy;

/// What every handler shares. Cheap to clone.
#[derive(Clone)]
pub struct AppState(Arc<App>);

pub struct App {
    pub config: Arc<Config>,
    /// Wall-clock time (see `crate::clock`).
    pub clock: crate::clock::WallClock,
    pub governor: Arc<SharedGovernor>,
    /// Makes governed calls to upstreams (the proxy's, jobs', batches').
    pub outbound: crate::outbound::Outbound,
    pub metrics: Arc<Metrics>,
    pub credentials: Arc<Credentials>,
    /// The durable store (jobs, batches, credentials).
    pub store: crate::store::AnyStore,
    /// Wakes the job dispatcher when a job arrives or a slot frees.
    pub jobs_wake: tokio::sync::Notify,
    /// Wakes the batch runner when a batch arrives or a chunk finishes.
    pub batches_wake: tokio::sync::Notify,
    /// MiB of batch submissions being read and checked at once: bounds the memory that
    /// large batches posted together can take.
    pub batch_intake: tokio::sync::Semaphore,
    /// Each tenant's part of `batch_intake`, capped.
    pub batch_intake_shares: crate::jobs::batches::IntakeShares,
    /// The admin token: `/v1` and `/proxy` require it (or a scoped token). `None` only with
    /// `auth = "none"`.
    pub api_token: Option<String>,
    /// Runs schedules, on its own (injectable) clock.
    pub scheduler: crate::schedules::Scheduler,
    /// Rate-limit events, sampling and alerts, on the same clock as schedules.
    pub observe: Arc<crate::observe::Observer>,
    /// Sends job callbacks and alert webhooks (`[callbacks]`: allowed destinations, limits).
    pub notifier: crate::callbacks::Notifier,
    /// Stopping: the background loops take no new work once it begins.
    pub shutdown: crate::shutdown::Shutdown,
}

impl std::ops::Deref for AppState {
    type Target = App;
    fn deref(&self) -> &App {
        &self.0
    }
}

impl AppState {
    /// Builds the state: opens the store and starts the governor's timer. `api_token` is the
    /// admin token (`HEADROOM_API_TOKEN`); without one, `auth = "token"` (the default) reads
    /// or generates the one kept next to the database.
    pub async fn new(config: Config, api_token: Option<String>) -> anyhow::Result<AppState> {
        AppState::with_clock(config, api_token, Arc::new(crate::clock::UnixClock)).await
    }

    /// As `new`, on `clock` (counted from the Unix epoch) instead of the system's: the time
    /// jobs, batches, schedules and events are stamped and scheduled with (a manual clock in
    /// tests). Waits and timeouts keep tokio's clock.
    pub async fn with_clock(
        config: Config,
        api_token: Option<String>,
        clock: Arc<dyn headroom_core::clock::Clock>,
    ) -> anyhow::Result<AppState> {
        let credentials = Credentials::open(&config.store).await.with_context(|| {
            format!(
                "cannot open the store {}",
                crate::store::pg::redact(&config.store)
            )
        })?;
        let api_token = match (api_token.filter(|t| !t.is_empty()), config.auth) {
            (Some(token), _) => Some(token),
            (None, cfg::AuthMode::Token) => {
                Some(crate::auth::stored_admin_token(credentials.store())?)
            }
            (None, cfg::AuthMode::None) => {
                if !config.listen.ip().is_loopback() {
                    anyhow::bail!(
                        "auth = \"none\" serves local clients only, but the listen address {} \
                         is not loopback; remove auth = \"none\" (an admin token is then \
                         required) or listen on 127.0.0.1",
                        config.listen
                    );
                }
                None
            }
        };
        let remote = match config.governor.as_str() {
            "memory" => None,
            url => Some(crate::outbound::governor::redis::RedisGovernor::new(
                url,
                config.upstreams.iter().map(|u| u.name.clone()).collect(),
            )?),
        };
        let governor = SharedGovernor::with_remote(rand::random(), remote);
        governor.spawn_driver();
        let metrics = Arc::new(Metrics::with_max_tenants(config.metrics.max_tenants));
        let clock = crate::clock::WallClock::new(clock);
        let observe = Arc::new(crate::observe::Observer::new(
            clock.clock(),
            metrics.observe.clone(),
        ));
        let credentials = Arc::new(credentials);
        let outbound = crate::outbound::Outbound::new(
            governor.clone(),
            credentials.clone(),
            metrics.clone(),
            observe.clone(),
            clock.clone(),
        );
        let notifier = crate::callbacks::Notifier::new(&config.callbacks);
        let state = AppState(Arc::new(App {
            config: Arc::new(config),
            governor,
            outbound,
            metrics,
            observe,
            notifier,
            store: credentials.store().clone(),
            credentials,
            jobs_wake: tokio::sync::Notify::new(),
            batches_wake: tokio::sync::Notify::new(),
            batch_intake: tokio::sync::Semaphore::new(crate::jobs::batches::INTAKE_MIB),
            batch_intake_shares: Default::default(),
            api_token,
            scheduler: crate::schedules::Scheduler::new(clock.clock()),
            shutdown: Default::default(),
            clock,
        }));
        if state.store.is_shared() {
            // Credentials and tokens changed (or revoked) through another node are seen
            // within this long.
            let app = Arc::downgrade(&state.0);
            tokio::spawn(async move {
                loop {
                    tokio::time::sleep(std::time::Duration::from_secs(5)).await;
                    match app.upgrade() {
                        Some(app) => app.credentials.forget_cached(),
                        None => return,
                    }
                }
            });
        }
        // Work stored through another node (shared store) wakes this node's runners.
        let woken = Arc::downgrade(&state.0);
        state.store.on_remote_work(move || {
            if let Some(app) = woken.upgrade() {
                app.jobs_wake.notify_one();
                app.batches_wake.notify_one();
            }
        });
        crate::observe::start(&state);
        crate::jobs::dispatcher::start(state.clone()).await?;
        crate::schedules::start(state.clone()).await?;
        Ok(state)
    }
}

pub fn router(state: AppState) -> Router {
    let open = state.api_token.is_none();
    let router = Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/v1/budgets", get(budgets))
        .merge(credentials::routes())
        .merge(crate::jobs::api::routes())
        .merge(crate::jobs::batches::routes())
        .merge(crate::schedules::api::routes())
        .merge(crate::observe::api::routes())
        // Headroom's own routes only: the proxy passes the upstream's answers through as-is
        // (and streams bodies, with no deadline on them).
        .layer(axum::middleware::map_response(
            crate::error::problem_for_rejections,
        ))
        .layer(axum::middleware::from_fn_with_state(
            state.config.server.body_read_timeout,
            crate::edge::body_deadline,
        ))
        .route("/proxy/{upstream}", any(proxy::handle))
        .route("/proxy/{upstream}/", any(proxy::handle))
        .route("/proxy/{upstream}/{*path}", any(proxy::handle))
        .fallback(not_found)
        .with_state(state);
    if open {
        router.layer(axum::middleware::from_fn(crate::auth::open_guard))
    } else {
        router
    }
}

async fn not_found(uri: http::Uri) -> crate::error::ApiError {
    crate::error::ApiError::not_found(format!(
        "no route for {}; the proxy is at /proxy/{{upstream}}/{{path}}, the API under /v1",
        uri.path()
    ))
}

/// Liveness: the process serves requests. Not 200 only when the store's writer is stuck in
/// a way a restart would cure (see `store::health`); what a restart would not cure (a full
/// disk, a lost database file, Redis down) is for `/readyz`.
async fn healthz(
    State(app): State<AppState>,
    headers: http::HeaderMap,
) -> axum::response::Response {
    match app.store.stuck() {
        None => Json(json!({"status": "ok"})).into_response(),
        Some(why) => unavailable(
            "not healthy",
            &[("store", why)],
            admin(&app, &headers).await,
        ),
    }
}

/// Whether the caller may see internals (paths, addresses, driver errors): the admin token,
/// or anyone in the open mode. Probes without a token get the verdict only.
async fn admin(app: &AppState, headers: &http::HeaderMap) -> bool {
    authenticate(app, headers, false)
        .await
        .is_ok_and(|p| p.require_admin().is_ok())
}

/// Readiness: the store commits a real write (and on SQLite its file is in place with room
/// on its disk) and the governor answers (Redis: a PING). 503 names what is not ready.
async fn readyz(State(app): State<AppState>, headers: http::HeaderMap) -> axum::response::Response {
    let (store, governor) = tokio::join!(app.store.check_ready(), app.governor.check_ready());
    let failing: Vec<(&str, String)> = [("store", store), ("governor", governor)]
        .into_iter()
        .filter_map(|(what, r)| r.err().map(|e| (what, e)))
        .collect();
    if failing.is_empty() {
        return Json(json!({"status": "ready"})).into_response();
    }
    unavailable("not ready", &failing, admin(&app, &headers).await)
}

/// A 503 problem naming each check that failed, in `detail` and in `checks`; with why only
/// for `detailed` callers (the log always has it).
fn unavailable(what: &str, failing: &[(&str, String)], detailed: bool) -> axum::response::Response {
    for (k, e) in failing {
        tracing::warn!(check = k, error = %e, "{what}");
    }
    let why = |e: &String| {
        if detailed {
            e.clone()
        } else {
            "failing (details for the admin token, and in the server log)".to_string()
        }
    };
    let detail = failing
        .iter()
        .map(|(k, e)| format!("{k}: {}", why(e)))
        .collect::<Vec<_>>()
        .join("; ");
    let checks: serde_json::Map<String, serde_json::Value> = failing
        .iter()
        .map(|(k, e)| (k.to_string(), json!(why(e))))
        .collect();
    let body = json!({
        "type": "about:blank",
        "title": "Service Unavailable",
        "status": 503,
        "detail": format!("{what}: {detail}"),
        "checks": checks,
    });
    (
        http::StatusCode::SERVICE_UNAVAILABLE,
        [(CONTENT_TYPE, "application/problem+json")],
        body.to_string(),
    )
        .into_response()
}

async fn metrics(
    State(app): State<AppState>,
    _admin: Admin,
    headers: http::HeaderMap,
) -> ApiResult<impl IntoResponse> {
    // Tenant names are in the labels: with tokens on, only the admin token may scrape.
    // OpenMetrics for those who ask for it (Prometheus does), the older text format else.
    let openmetrics = headers
        .get_all(http::header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.contains("application/openmetrics-text"));
    Ok(if openmetrics {
        (
            [(
                CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            app.metrics.render(),
        )
    } else {
        (
            [(CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")],
            app.metrics.render_prometheus(),
        )
    })
}

async fn budgets(State(app): State<AppState>, _admin: Admin) -> ApiResult<impl IntoResponse> {
    let budgets: Vec<serde_json::Value> = app
        .governor
        .snapshot()
        .into_iter()
        .map(|view| {
            let upstream = app
                .config
                .upstreams
                .get(view.upstream_index as usize)
                .map(|u| u.name.clone());
            let mut value = serde_json::to_value(&view).unwrap_or_default();
            if let Some(obj) = value.as_object_mut() {
                obj.remove("upstream_index");
                obj.insert("upstream".into(), json!(upstream));
            }
            value
        })
        .collect();
    Ok(Json(json!({ "budgets": budgets })))
}

/// Serves until `shutdown` resolves, then stops accepting and drains in-flight requests.
/// Connections are capped and timed as `[server]` says (see `crate::edge`).
pub async fn serve(
    state: AppState,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let limits = state.config.server.clone();
    crate::edge::serve(router(state), listener, limits, shutdown)
        .await
        .context("server failed")
}

/// Raises the soft limit of open files to the hard limit: each connection is a file, and
/// the usual soft limit (1024) is far below `[server] max_connections`.
#[cfg(unix)]
#[allow(clippy::unnecessary_cast)] // rlim_t is u64 on Linux and macOS, not everywhere
fn raise_open_files_limit(max_connections: usize) {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit only read and write the struct given.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return;
    }
    let before = limit.rlim_cur;
    // macOS refuses RLIM_INFINITY as a soft limit; a million files is plenty anywhere.
    let target = limit.rlim_max.min(1 << 20);
    if target > before {
        let raised = libc::rlimit {
            rlim_cur: target,
            rlim_max: limit.rlim_max,
        };
        // SAFETY: as above.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
            limit.rlim_cur = target;
            tracing::info!(
                from = before as u64,
                to = target as u64,
                "raised the open files limit"
            );
        }
    }
    if (limit.rlim_cur as u64) < max_connections as u64 + 256 {
        tracing::warn!(
            open_files = limit.rlim_cur as u64,
            max_connections,
            "the open files limit is below [server] max_connections: connections beyond it \
             will fail to be accepted; raise `ulimit -n` (hard) or lower max_connections"
        );
    }
}

#[cfg(not(unix))]
fn raise_open_files_limit(_max_connections: usize) {}

/// Logs on stderr, JSON (or `text` for people; `HEADROOM_LOG`, default `info`), plus OTLP export of traces and
/// logs when the `OTEL_EXPORTER_OTLP_*` variables ask for it. Keep the guard until the end:
/// dropping it flushes the exporters.
pub fn init_logging(text: bool) -> anyhow::Result<crate::observe::otel::OtelGuard> {
    use tracing_subscriber::prelude::*;
    use tracing_subscriber::EnvFilter;
    let filter =
        || EnvFilter::try_from_env("HEADROOM_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    let otel = crate::observe::otel::OtelConfig::from_vars(|k| std::env::var(k).ok())?;
    let (layers, guard) = crate::observe::otel::layers(&otel)?;
    // Spans (target `headroom::trace`, debug level) go to OTLP only: without an exporter no
    // layer wants them and they cost nothing.
    let otel_filter =
        filter().add_directive("headroom::trace=debug".parse().expect("a valid directive"));
    let _ = tracing_subscriber::registry()
        .with((!layers.is_empty()).then(|| layers.with_filter(otel_filter)))
        .with((!text).then(|| {
            tracing_subscriber::fmt::layer()
                .json()
                .with_writer(std::io::stderr)
                .with_filter(filter())
        }))
        .with(text.then(|| {
            tracing_subscriber::fmt::layer()
                .with_writer(std::io::stderr)
                .with_filter(filter())
        }))
        .try_init();
    if guard.enabled() {
        tracing::info!(
            traces = otel.traces_endpoint.as_deref(),
            logs = otel.logs_endpoint.as_deref(),
            "exporting OTLP"
        );
    }
    Ok(guard)
}

/// `headroom serve`: loads the config at `config` (none: no upstreams), listens on `listen`
/// (none: the config's) and serves until Ctrl-C, then drains in-flight requests.
pub fn run(
    config: Option<&PathBuf>,
    listen: Option<SocketAddr>,
    text_logs: bool,
) -> anyhow::Result<()> {
    let _otel = init_logging(text_logs)?;
    let mut config = cfg::load_or_default(config)?;
    if let Some(listen) = listen {
        config.listen = listen;
    }
    raise_open_files_limit(config.server.max_connections);
    let runtime = tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
    runtime.block_on(async move {
        let listen = config.listen;
        let upstreams = config.upstreams.len();
        let api_token = std::env::var("HEADROOM_API_TOKEN").ok();
        let state = AppState::new(config, api_token).await?;
        if state.api_token.is_none() {
            tracing::warn!("auth = \"none\": the API and the proxy take no token; only local clients on loopback are served");
        }
        let listener = TcpListener::bind(listen)
            .await
            .with_context(|| format!("cannot listen on {listen}"))?;
        tracing::info!(%listen, upstreams, "headroom listening");
        let shutdown = state.shutdown.clone();
        let grace = state.config.server.shutdown_grace;
        serve(state.clone(), listener, async move {
            let signal = crate::shutdown::signal().await;
            tracing::info!(
                signal,
                grace_s = grace.as_secs_f64(),
                "shutting down: no new connections or work; in-flight requests, job attempts \
                 and batch chunks may finish within the grace ([server] shutdown_grace)"
            );
            shutdown.begin();
        })
        .await?;
        let left = state.shutdown.drain(state.shutdown.grace_left(grace)).await;
        if left > 0 {
            tracing::warn!(
                left,
                "job attempts or batch chunks still running at the end of the grace: they go \
                 again at the next start (they may have been sent once)"
            );
        }
        if tokio::time::timeout(std::time::Duration::from_secs(5), state.observe.flush())
            .await
            .is_err()
        {
            tracing::warn!("the event log did not take the last events within 5s");
        }
        tracing::info!("stopped");
        Ok(())
    })
}
