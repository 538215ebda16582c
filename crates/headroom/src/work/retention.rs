//! Retention of jobs and batches (`[jobs] retention`, default 7 days): every hour, what
//! finished longer ago than that is deleted (see `store::retention` for exactly what).

use std::time::Duration;

use crate::app::AppState;
use crate::jobs::*;

/// How often the store is pruned.
pub const PRUNE_EVERY: Duration = Duration::from_secs(3600);

/// Prunes what finished more than the retention before `now` (and dedup ids whose window
/// ended by `now`). Tests call it with a `now` of their choosing.
pub async fn prune(app: &AppState, now: Millis) -> anyhow::Result<Pruned> {
    let keep = app.config.job_retention.as_millis().min(i64::MAX as u128) as Millis;
    let before = now.saturating_sub(keep);
    let pruned = app.store.prune_jobs(before, now).await? + app.store.prune_batches(before).await?;
    if pruned != Pruned::default() {
        tracing::info!(
            jobs = pruned.jobs,
            attempts = pruned.attempts,
            dedup_ids = pruned.dedup_ids,
            batches = pruned.batches,
            records = pruned.records,
            "deleted finished work past its retention"
        );
    }
    Ok(pruned)
}

/// Prunes at start, then every `PRUNE_EVERY`.
pub(crate) async fn run_loop(app: AppState) {
    loop {
        if let Err(e) = prune(&app, app.clock.now_millis()).await {
            tracing::error!(error = %format!("{e:#}"), "cannot prune finished jobs and batches; trying again in an hour");
        }
        tokio::time::sleep(PRUNE_EVERY).await;
    }
}
