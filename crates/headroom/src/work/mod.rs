//! The background loops: each takes due work from the store and does it through the parts
//! below (`outbound` for calls upstream). `server::start` starts them.

pub mod alerts;
pub mod batches;
pub mod bulk;
pub mod callbacks;
pub mod dispatcher;
pub mod exports;
pub mod observe;
pub mod retention;
pub mod scheduler;
pub mod status;

use crate::app::AppState;

/// Starts every loop: the event writer and observer tick, the job dispatcher (with the batch
/// runner, retention and callback delivery) and the scheduler (after storing the config's
/// schedules).
pub async fn start(app: &AppState) -> anyhow::Result<()> {
    observe::start(app);
    dispatcher::start(app.clone()).await?;
    scheduler::start(app.clone()).await?;
    Ok(())
}
