//! `headroom serve`: starts the state and the background loops (`work`), serves the API and
//! the proxy (`http`) and stops cleanly on SIGTERM or SIGINT.

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use tokio::net::TcpListener;

use crate::app::AppState;
use crate::cfg::{self, Config};

/// Builds the state (see [`AppState::build`]) on the system clock and starts the background
/// loops: the event writer and observer tick, the job dispatcher and batch runner, callback
/// delivery and the scheduler.
pub async fn start(config: Config, api_token: Option<String>) -> anyhow::Result<AppState> {
    start_with_clock(config, api_token, Arc::new(crate::clock::UnixClock)).await
}

/// As [`start`], with jobs, batches, schedules and events on `clock` (a manual clock in tests).
pub async fn start_with_clock(
    config: Config,
    api_token: Option<String>,
    clock: Arc<dyn headroom_core::clock::Clock>,
) -> anyhow::Result<AppState> {
    let state = AppState::build(config, api_token, clock).await?;
    crate::work::start(&state).await?;
    Ok(state)
}

/// Serves until `shutdown` resolves, then stops accepting and drains in-flight requests.
/// Connections are capped and timed as `[server]` says (see `crate::edge`).
pub async fn serve(
    state: AppState,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let limits = state.config.server.clone();
    crate::edge::serve(crate::http::Service::new(state), listener, limits, shutdown)
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
    let config_path = config;
    let mut config = cfg::load_or_default(config_path)?;
    if let Err(e) = crate::schedules::from_config(&config) {
        let file = config_path.map_or("(no config file)".into(), |p| p.display().to_string());
        anyhow::bail!("{file}: {e}");
    }
    if let Some(listen) = listen {
        config.listen = listen;
    }
    raise_open_files_limit(config.server.max_connections);
    let runtime = tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
    runtime.block_on(async move {
        let listen = config.listen;
        let upstreams = config.upstreams.len();
        let api_token = std::env::var("HEADROOM_API_TOKEN").ok();
        let state = start(config, api_token).await?;
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
