//! What the API handlers and the background loops share: the config, the store, the
//! governor and outbound client, credentials, metrics, the observer and the wake-ups.

use std::sync::Arc;

use anyhow::Context;

use crate::cfg::{self, Config};
use crate::credentials::Credentials;
use crate::metrics::Metrics;
use crate::outbound::governor::SharedGovernor;

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
    /// Operators' changes to tenants' budgets (`PATCH /v1/budgets/…`), as read from the store.
    pub overrides: Arc<crate::overrides::Overrides>,
}

impl std::ops::Deref for AppState {
    type Target = App;
    fn deref(&self) -> &App {
        &self.0
    }
}

impl AppState {
    /// Now on the wall clock and on the governor's, which an override's pause is read with.
    pub fn override_clocks(&self) -> crate::overrides::Clocks {
        crate::overrides::Clocks {
            wall_millis: self.clock.now_millis(),
            governor: self.governor.now(),
        }
    }

    /// Reads the budget overrides from the store and puts them in force.
    pub async fn reload_overrides(&self) -> Result<(), crate::store::StoreError> {
        let rows = self.store.budget_overrides().await?;
        for (key, config) in self
            .overrides
            .load(rows, &self.config, self.override_clocks())
        {
            self.governor.reconfigure(&key, &config);
        }
        Ok(())
    }

    /// Builds the state: checks the config's schedules, opens the store and starts the
    /// governor's timer. `api_token` is the admin token (`HEADROOM_API_TOKEN`); without one,
    /// `auth = "token"` (the default) reads or generates the one kept next to the database.
    /// `clock` (counted from the Unix epoch) is the time jobs, batches, schedules and events
    /// are stamped and scheduled with (a manual clock in tests); waits and timeouts keep
    /// tokio's clock. The background loops are started by `server::start`.
    pub async fn build(
        config: Config,
        api_token: Option<String>,
        clock: Arc<dyn headroom_core::clock::Clock>,
    ) -> anyhow::Result<AppState> {
        let schedules = crate::schedules::from_config(&config).map_err(anyhow::Error::msg)?;
        let opened = async {
            let store = crate::store::AnyStore::open(&config.store).await?;
            Credentials::open(store).await
        };
        let credentials = opened.await.with_context(|| {
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
        let metrics = Arc::new(Metrics::with_limits(
            config.metrics.max_tenants,
            config.upstreams.len(),
        ));
        let clock = crate::clock::WallClock::new(clock);
        let observe = Arc::new(crate::observe::Observer::new(
            clock.clock(),
            metrics.observe.clone(),
        ));
        let credentials = Arc::new(credentials);
        let overrides = Arc::new(crate::overrides::Overrides::default());
        let shutdown = crate::shutdown::Shutdown::default();
        let outbound = crate::outbound::Outbound::new(
            governor.clone(),
            credentials.clone(),
            metrics.clone(),
            observe.clone(),
            clock.clone(),
            overrides.clone(),
            shutdown.clone(),
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
            scheduler: crate::schedules::Scheduler::new(clock.clock(), schedules),
            shutdown,
            clock,
            overrides,
        }));
        state
            .reload_overrides()
            .await
            .context("cannot read the budget overrides")?;
        if state.store.is_shared() {
            // Credentials and tokens changed (or revoked) through another node are seen
            // within this long.
            let app = Arc::downgrade(&state.0);
            tokio::spawn(async move {
                loop {
                    tokio::time::sleep(std::time::Duration::from_secs(5)).await;
                    match app.upgrade() {
                        Some(app) => {
                            app.credentials.forget_cached();
                            if let Err(e) = app.credentials.reload_holders().await {
                                tracing::warn!(error = format!("{e:#}"), "cannot read who holds credentials; every tenant's credential is read from the store until the next try");
                            }
                            if let Err(e) = AppState(app).reload_overrides().await {
                                tracing::warn!(error = %crate::error::chain(&e), "cannot read the budget overrides; the ones read before stay in force until the next try");
                            }
                        }
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
        Ok(state)
    }
}
