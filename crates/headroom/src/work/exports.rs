//! The export runner: drives each bulk export (a Salesforce Bulk API 2.0 query job) one step
//! at a time — create, poll, then one result page per step — each step one governed call.
//! A page is stored with the next page's locator in one transaction, so that after a crash
//! the next holder reads on from the first page not stored: no page is stored twice, none
//! is skipped.

use std::sync::Arc;
use std::time::Duration;

use headroom_core::batch::bulk::{poll_interval, JobState, QueryJob, SalesforceQuery};
use serde_json::Value;

use super::bulk::{Caller, Reply};
use crate::app::AppState;
use crate::jobs::*;

/// How long a step may take before another holder may take the export over.
const LEASE: Duration = Duration::from_secs(600);
/// Steps in flight at once in this process.
const STEPS_AT_ONCE: usize = 8;
/// A result page is read up to this size.
const MAX_PAGE: usize = 64 << 20;
const MAX_ANSWER: usize = 1 << 20;

/// Takes due export steps from the store and runs them.
pub async fn run_loop(app: AppState) {
    let owner = crate::jobs::request::new_id("export");
    let slots = Arc::new(tokio::sync::Semaphore::new(STEPS_AT_ONCE));
    loop {
        if app.shutdown.is_stopping() {
            return;
        }
        let permit = Arc::clone(&slots)
            .acquire_owned()
            .await
            .expect("never closed");
        let now = app.clock.now_millis();
        match app
            .store
            .claim_export(now, &owner, LEASE.as_millis() as Millis)
            .await
        {
            Ok(Some(task)) => {
                let app = app.clone();
                let working = app.shutdown.working();
                tokio::spawn(async move {
                    let _working = working;
                    let step = run_step(&app, &task).await;
                    if let Err(e) = app
                        .store
                        .save_export(&task, &step, app.clock.now_millis())
                        .await
                    {
                        tracing::error!(export = %task.id, error = %format!("{e:#}"), "cannot store an export's step");
                    }
                    drop(permit);
                });
                continue;
            }
            Ok(None) => {}
            Err(e) => tracing::error!(error = %format!("{e:#}"), "cannot claim an export"),
        }
        drop(permit);
        let wait = match app.store.next_export_at().await {
            Ok(Some(at)) => Duration::from_millis((at - now).clamp(10, 500) as u64),
            _ => Duration::from_millis(500),
        };
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = app.shutdown.stopped() => {}
        }
    }
}

struct Ctx<'a> {
    task: &'a ExportTask,
    job: QueryJob,
    caller: Caller<'a>,
    now: Millis,
}

async fn run_step(app: &AppState, task: &ExportTask) -> ExportStep {
    let now = app.clock.now_millis();
    let fail = |error: String| ExportStep {
        phase: ExportPhase::Done,
        status: ExportStatus::Failed,
        job_id: task.job_id.clone(),
        state: task.state.clone(),
        error: Some(error),
        locator: task.locator.clone(),
        polls: task.polls,
        calls: 0,
        next_at: now,
        page: None,
    };
    let Some(upstream) = app.config.upstream(&task.upstream).cloned() else {
        return fail(format!(
            "upstream \"{}\" is no longer configured",
            task.upstream
        ));
    };
    let request = match crate::jobs::secrets::open(
        &app.credentials,
        &crate::jobs::secrets::export_owner(&task.id),
        &task.request,
    ) {
        Ok(r) => r,
        Err(e) => return fail(e),
    };
    let job = match serde_json::from_str::<Value>(&task.job)
        .map_err(|e| e.to_string())
        .and_then(|v| QueryJob::from_json(&v, "job").map_err(|e| e.to_string()))
    {
        Ok(j) => j,
        Err(e) => return fail(format!("the stored query job is unreadable: {e}")),
    };
    let mut ctx = Ctx {
        task,
        job,
        caller: Caller {
            app,
            upstream,
            tenant: task.tenant.as_deref(),
            lane: task.lane,
            headers: request.headers,
            calls: 0,
        },
        now,
    };
    let base = request.path;
    let mut step = ctx.step(&base).await;
    step.calls = ctx.caller.calls;
    step
}

impl Ctx<'_> {
    fn api<'b>(&'b self, base: &'b str) -> SalesforceQuery<'b> {
        SalesforceQuery {
            job: &self.job,
            base,
        }
    }

    /// The step as it stands, to go on with.
    fn next(&self, phase: ExportPhase) -> ExportStep {
        ExportStep {
            phase,
            status: ExportStatus::Running,
            job_id: self.task.job_id.clone(),
            state: self.task.state.clone(),
            error: None,
            locator: self.task.locator.clone(),
            polls: self.task.polls,
            calls: 0,
            next_at: self.now,
            page: None,
        }
    }

    fn again(&self, after: Duration, error: String) -> ExportStep {
        let mut step = self.next(self.task.phase);
        step.error = Some(error);
        step.next_at = self.now + after.as_millis() as Millis;
        step
    }

    fn end(&self, status: ExportStatus, error: Option<String>) -> ExportStep {
        let mut step = self.next(ExportPhase::Done);
        step.status = status;
        step.error = error;
        step
    }

    async fn step(&mut self, base: &str) -> ExportStep {
        if self.task.cancelled {
            // A job under way is aborted (a complete one has nothing left to stop).
            if let (Some(id), ExportPhase::Poll) = (&self.task.job_id, self.task.phase) {
                let call = self.api(base).abort(id);
                if let Reply::Retry { after, error, .. } = self.caller.call(call, MAX_ANSWER).await
                {
                    return self.again(after, error);
                }
            }
            return self.end(ExportStatus::Cancelled, None);
        }
        match (self.task.phase, self.task.job_id.clone()) {
            (ExportPhase::Create, _) => {
                let call = self.api(base).create();
                match self.caller.call(call, MAX_ANSWER).await {
                    Reply::Ok(body, _) => match self.api(base).created(&body) {
                        Ok(id) => {
                            let mut step = self.next(ExportPhase::Poll);
                            step.job_id = Some(id);
                            step.next_at += poll_interval(0).as_millis() as Millis;
                            step
                        }
                        Err(e) => self.end(ExportStatus::Failed, Some(e.to_string())),
                    },
                    // A lost answer may have created a job that is never read: harmless.
                    Reply::Retry { after, error, .. } => self.again(after, error),
                    Reply::Fatal(e) => self.end(
                        ExportStatus::Failed,
                        Some(format!("cannot create the query job: {e}")),
                    ),
                }
            }
            (ExportPhase::Poll, Some(id)) => {
                let call = self.api(base).status(&id);
                match self.caller.call(call, MAX_ANSWER).await {
                    Reply::Ok(body, _) => match self.api(base).read_status(&body) {
                        Ok(status) => match status.state {
                            JobState::Complete => {
                                let mut step = self.next(ExportPhase::Page);
                                step.state = Some(status.api_state);
                                step.polls += 1;
                                step
                            }
                            JobState::Open | JobState::Processing => {
                                let mut step = self.next(ExportPhase::Poll);
                                step.state = Some(status.api_state);
                                step.polls += 1;
                                step.next_at += poll_interval(step.polls).as_millis() as Millis;
                                step
                            }
                            JobState::Failed | JobState::Aborted => {
                                let mut step = self.end(
                                    ExportStatus::Failed,
                                    Some(format!(
                                        "the query job {id} ended {}: {}",
                                        status.api_state,
                                        status.error.as_deref().unwrap_or("no reason given")
                                    )),
                                );
                                step.state = Some(status.api_state);
                                step
                            }
                        },
                        Err(e) => self.again(Duration::from_secs(5), e.to_string()),
                    },
                    Reply::Retry { after, error, .. } => self.again(after, error),
                    Reply::Fatal(e) => self.end(
                        ExportStatus::Failed,
                        Some(format!("the query job {id} cannot be read: {e}")),
                    ),
                }
            }
            (ExportPhase::Page, Some(id)) => {
                let api = self.api(base);
                let call = api.page(&id, self.task.locator.as_deref(), self.task.page_size);
                match self.caller.call(call, MAX_PAGE).await {
                    Reply::Ok(body, headers) => {
                        let header = headers.get("sforce-locator").and_then(|v| v.to_str().ok());
                        let next = match self.api(base).next_locator(header) {
                            Ok(next) => next,
                            Err(e) => return self.end(ExportStatus::Failed, Some(e.to_string())),
                        };
                        let records = match headroom_core::batch::bulk::count_rows(&body) {
                            Ok(n) => n,
                            Err(e) => {
                                return self.end(
                                    ExportStatus::Failed,
                                    Some(format!("page {} is not CSV: {e}", self.task.pages + 1)),
                                )
                            }
                        };
                        let last = next.is_none();
                        let mut step = if last {
                            self.end(ExportStatus::Succeeded, None)
                        } else {
                            self.next(ExportPhase::Page)
                        };
                        step.locator = next;
                        step.page = Some((records, body.to_vec()));
                        step
                    }
                    Reply::Retry { after, error, .. } => self.again(after, error),
                    Reply::Fatal(e) => self.end(
                        ExportStatus::Failed,
                        Some(format!("page {} cannot be read: {e}", self.task.pages + 1)),
                    ),
                }
            }
            (ExportPhase::Done, _) => self.end(ExportStatus::Succeeded, None),
            (phase, None) => self.end(
                ExportStatus::Failed,
                Some(format!("export in phase {} without a job", phase.as_str())),
            ),
        }
    }
}
