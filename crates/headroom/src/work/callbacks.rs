//! Delivers due job and batch callbacks, with their durable retry schedule in the store
//! (see `crate::callbacks` for the destination policy, limits and signatures).

use std::time::Duration;

use crate::app::AppState;
use crate::callbacks::*;
use crate::jobs::*;

/// A callback held back by a limit (its host's or tenant's slots all taken) is looked at
/// again after at least this long, behind the other due ones; at most after a delivery's
/// timeout, when a slot has surely freed. Sooner would re-read and rewrite a hostile
/// tenant's backlog of hanging callbacks without pause.
const HOLD_BACK: Millis = 1_000;
/// Due callbacks read at a time.
const FETCH: u32 = 64;
/// How often to look for due callbacks when nothing wakes the loop earlier.
const IDLE_POLL: Duration = Duration::from_millis(250);
/// Callbacks are tried this many times, doubling the wait from one second.
const CALLBACK_ATTEMPTS: u32 = 8;

/// POSTs final outcomes to callback URLs, concurrently under the limits, with retries kept in
/// the store.
pub(crate) async fn run(app: AppState) {
    let notifier = &app.notifier;
    // A delivery may take the whole timeout; its record is written just after. Read again
    // only after that (a node that stopped meanwhile leaves it to be tried again).
    let in_flight_for = notifier.config.timeout.as_millis() as Millis + 10_000;
    let hold_back = (notifier.config.timeout.as_millis() as Millis).max(HOLD_BACK);
    loop {
        if app.shutdown.is_stopping() {
            return; // deliveries under way finish; the drain waits for them
        }
        let now = app.clock.now_millis();
        let jobs = app
            .store
            .due_callbacks(now, FETCH)
            .await
            .unwrap_or_else(|e| {
                tracing::error!(error = %format!("{e:#}"), "cannot read due callbacks");
                Vec::new()
            });
        let batches = app
            .store
            .due_batch_callbacks(now, FETCH)
            .await
            .unwrap_or_else(|e| {
                tracing::error!(error = %format!("{e:#}"), "cannot read due batch callbacks");
                Vec::new()
            });
        let full = jobs.len() == FETCH as usize || batches.len() == FETCH as usize;
        let due = jobs
            .into_iter()
            .map(Due::Job)
            .chain(batches.into_iter().map(Due::Batch));
        let mut start = Vec::new();
        let mut held_back = Vec::new();
        for due in due {
            let uri = callback_uri(due.url());
            let key = uri.as_ref().map(host_key).unwrap_or_default();
            match notifier.limits.try_take(&key, Some(due.tenant())) {
                Some(slot) => start.push((due, uri, slot)),
                None => held_back.push(due),
            }
        }
        // Behind the other due callbacks, so that the next read reaches other tenants' and
        // hosts' callbacks rather than these again.
        let mut look_further = full && !held_back.is_empty();
        if let Err(e) = postpone(&app, held_back.iter(), now + hold_back).await {
            tracing::error!(error = %format!("{e:#}"), "cannot postpone callbacks");
            look_further = false;
        }
        match postpone(&app, start.iter().map(|(d, ..)| d), now + in_flight_for).await {
            Ok(()) => {
                for (due, uri, slot) in start {
                    let app = app.clone();
                    let working = app.shutdown.working();
                    tokio::spawn(async move {
                        let _working = working;
                        deliver(&app, due, uri).await;
                        drop(slot);
                        app.notifier.done.notify_one();
                    });
                }
            }
            // Not started (the slots go back): they are read again on the next turn.
            Err(e) => tracing::error!(error = %format!("{e:#}"), "cannot take callbacks"),
        }
        if look_further {
            continue; // more may be due behind the ones held back
        }
        tokio::select! {
            _ = tokio::time::sleep(IDLE_POLL) => {}
            _ = notifier.done.notified() => {}
            _ = app.shutdown.stopped() => {}
        }
    }
}

/// A callback due: a final job's or a final batch's.
// Made once per delivery, beside an HTTP request: the size difference does not matter.
#[allow(clippy::large_enum_variant)]
enum Due {
    Job(Job),
    Batch(DueBatchCallback),
}

impl Due {
    fn id(&self) -> &str {
        match self {
            Due::Job(job) => &job.new.id,
            Due::Batch(batch) => &batch.id,
        }
    }

    fn tenant(&self) -> &str {
        match self {
            Due::Job(job) => job.new.tenant.as_deref().unwrap_or(""),
            Due::Batch(batch) => batch.tenant.as_deref().unwrap_or(""),
        }
    }

    fn url(&self) -> &str {
        match self {
            Due::Job(job) => job.new.callback_url.as_deref().unwrap_or(""),
            Due::Batch(batch) => &batch.callback_url,
        }
    }

    fn attempts(&self) -> u32 {
        match self {
            Due::Job(job) => job.callback_attempts,
            Due::Batch(batch) => batch.attempts,
        }
    }
}

/// Moves due callbacks to `at`, jobs' and batches' each in one statement.
async fn postpone<'a>(
    app: &AppState,
    due: impl Iterator<Item = &'a Due>,
    at: Millis,
) -> anyhow::Result<()> {
    let (mut jobs, mut batches) = (Vec::new(), Vec::new());
    for d in due {
        match d {
            Due::Job(_) => jobs.push(d.id().to_string()),
            Due::Batch(_) => batches.push(d.id().to_string()),
        }
    }
    app.store.postpone_callbacks(&jobs, at).await?;
    Ok(app.store.postpone_batch_callbacks(&batches, at).await?)
}

/// The URL as submitted, normalized as the submit check read it.
fn callback_uri(url: &str) -> Option<http::Uri> {
    url::Url::parse(url).ok()?.as_str().parse().ok()
}

/// One delivery attempt of a job's or a batch's callback (the job as `GET /v1/jobs/{id}`
/// shows it, the batch as `GET /v1/batches/{id}` does), recorded with its next time.
async fn deliver(app: &AppState, due: Due, uri: Option<http::Uri>) {
    let body = match &due {
        Due::Job(job) => serde_json::to_vec(&crate::jobs::request::job_view(job, None)).ok(),
        Due::Batch(batch) => match app.store.get_batch(&batch.id, 100).await {
            Ok(Some(summary)) => serde_json::to_vec(&summary).ok(),
            Ok(None) => None, // deleted meanwhile: nothing to say
            Err(e) => {
                tracing::error!(batch = %batch.id, error = %format!("{e:#}"), "cannot read a batch for its callback");
                return; // tried again once its hold ends
            }
        },
    };
    let header = match &due {
        Due::Job(_) => "headroom-job-id",
        Due::Batch(_) => "headroom-batch-id",
    };
    // Signed (Standard Webhooks) when the tenant has a signing secret; also with the one a
    // rotation replaced, for a while.
    let now = app.clock.now_millis();
    let (secret, previous) = match due.tenant() {
        "" => (None, None),
        tenant => {
            let current = app
                .credentials
                .get(tenant, crate::credentials::WEBHOOK_SECRET)
                .await;
            let previous = app
                .credentials
                .get(tenant, crate::credentials::WEBHOOK_SECRET_PREVIOUS)
                .await;
            match (current, previous) {
                (Ok(current), Ok(previous)) => (current, previous),
                (Err(e), _) | (_, Err(e)) => {
                    tracing::error!(id = %due.id(), error = %format!("{e:#}"), "cannot read the tenant's webhook secret");
                    return; // not sent unsigned: tried again once its hold ends
                }
            }
        }
    };
    let secrets: Vec<&str> = secret
        .as_deref()
        .into_iter()
        .chain(
            previous
                .as_deref()
                .and_then(|kept| crate::credentials::previous_webhook_secret(kept, now)),
        )
        .collect();
    let outcome = match (uri, body) {
        (Some(uri), Some(body)) => {
            let signed = Signed::new(&secrets, format!("msg_{}", due.id()), now, &body);
            let mut headers = vec![(header, due.id())];
            headers.extend(signed.as_ref().map(Signed::headers).into_iter().flatten());
            app.notifier.post(uri, &headers, body).await
        }
        (None, _) => Outcome::NoAnswer("the callback URL is not valid".into()),
        (_, None) => Outcome::NoAnswer("the batch is gone".into()),
    };
    let delivered = matches!(outcome, Outcome::Delivered);
    let attempts = due.attempts();
    let next = if delivered || attempts + 1 >= CALLBACK_ATTEMPTS {
        None
    } else {
        Some(app.clock.now_millis() + 1000 * (1i64 << attempts.min(20)))
    };
    if !delivered {
        // The reason is the operator's (the log), not the tenant's: the job or batch says
        // only that its callback is pending or failed, whatever the cause.
        tracing::debug!(id = %due.id(), outcome = ?outcome, "callback not delivered");
        if next.is_none() {
            tracing::warn!(id = %due.id(), outcome = ?outcome, "callback failed after its retries");
        }
    }
    let recorded = match &due {
        Due::Job(job) => {
            app.store
                .callback_attempted(&job.new.id, delivered, next)
                .await
        }
        Due::Batch(batch) => {
            app.store
                .batch_callback_attempted(&batch.id, delivered, next)
                .await
        }
    };
    if let Err(e) = recorded {
        tracing::error!(error = %format!("{e:#}"), "cannot record a callback");
    }
}
