//! The event writer and the observer's periodic tick: pruning, sampling, alerts.

use std::time::Duration;

use tokio::sync::mpsc;

use crate::app::AppState;
use crate::jobs::Millis;
use crate::observe::model::*;
use crate::observe::*;

/// How often the background loop samples, prunes and evaluates alerts.
const TICK_EVERY: Duration = Duration::from_secs(10);
/// Events stored in one transaction at most.
const BATCH: usize = 512;
/// How often old events are pruned.
const PRUNE_EVERY: Millis = 3_600_000;

/// Starts the event writer and the periodic tick (pruning, sampling, alerts).
pub fn start(app: &AppState) {
    let rx = app.observe.rx.lock().ok().and_then(|mut rx| rx.take());
    if let Some(rx) = rx {
        tokio::spawn(write_loop(app.store.clone(), rx));
    }
    let app = app.clone();
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(TICK_EVERY).await;
            if let Err(e) = tick(&app).await {
                tracing::error!(error = %format!("{e:#}"), "observability tick failed");
            }
        }
    });
}

async fn write_loop(store: crate::store::AnyStore, mut rx: mpsc::Receiver<Msg>) {
    let mut batch: Vec<Event> = Vec::with_capacity(BATCH);
    let mut flushes = Vec::new();
    while let Some(first) = rx.recv().await {
        let mut next = Some(first);
        // Take whatever else is waiting, up to a batch.
        while let Some(msg) = next {
            match msg {
                Msg::Event(e) => batch.push(*e),
                Msg::Flush(done) => flushes.push(done),
            }
            next = if batch.len() < BATCH {
                rx.try_recv().ok()
            } else {
                None
            };
        }
        if let Err(e) = store.insert_events(&batch).await {
            tracing::error!(error = %format!("{e:#}"), events = batch.len(), "cannot store events");
        }
        batch.clear();
        for done in flushes.drain(..) {
            let _ = done.send(());
        }
    }
}

/// What one tick did.
#[derive(Debug, Default)]
pub struct Tick {
    pub pruned: u64,
    pub notifications: usize,
}

/// Stores pending events, prunes past the retention (hourly), samples budgets and queues,
/// and evaluates the alerts, all at the observer clock's now. Tests call it after moving a
/// manual clock.
pub async fn tick(app: &AppState) -> anyhow::Result<Tick> {
    app.observe.flush().await;
    let mut state = app.observe.state.lock().await;
    let now = app.observe.now();
    let mut out = Tick::default();
    if state
        .last_prune
        .is_none_or(|last| now - last >= PRUNE_EVERY || now < last)
    {
        let before = now - app.config.observe.retention.as_millis() as Millis;
        out.pruned = app.store.prune_events(before).await?;
        state.last_prune = Some(now);
    }
    super::status::sample(app, &mut state.samples, now).await?;
    out.notifications = super::alerts::evaluate(app, &mut state, now).await?;
    Ok(out)
}
