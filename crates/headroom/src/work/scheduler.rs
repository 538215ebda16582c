//! The scheduler loop: reconciles stored schedules into slots and fires due runs.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use crate::app::AppState;
use crate::jobs::Millis;
use crate::schedules::*;

/// Due slots taken per store transaction.
const FIRE_BATCH: u32 = 200;

/// With nothing due sooner, the scheduler looks again this often (virtual or real time):
/// tenants gaining or losing a credential are picked up then.
const RECONCILE_EVERY: Millis = 10_000;

/// Old runs are deleted this often.
const PRUNE_EVERY: Millis = 3_600_000;

/// What one tick did.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Tick {
    pub runs: Vec<Run>,
    /// The earliest due time left.
    pub next_due_at: Option<Millis>,
}

/// Stores the config's schedules and starts the scheduler loop.
pub async fn start(app: AppState) -> anyhow::Result<()> {
    let now = app.scheduler.now();
    let stored: Vec<StoredSchedule> = app
        .scheduler
        .configured()
        .iter()
        .map(|s| StoredSchedule {
            name: s.name().to_string(),
            definition: serde_json::to_string(&s.def).expect("a definition always serialises"),
            from_config: true,
            paused: false,
            created_at: now,
            updated_at: now,
        })
        .collect();
    app.store.sync_config_schedules(&stored, now).await?;
    tokio::spawn(run_loop(app));
    Ok(())
}

/// How long before the start a run must have been due to count as missed while down.
const MISSED_AFTER: Millis = 5 * 60 * 1000;

async fn run_loop(app: AppState) {
    loop {
        let force = app.scheduler.dirty.swap(false, Ordering::SeqCst);
        let wait = match tick_inner(&app, force).await {
            Ok(tick) => {
                let now = app.scheduler.now();
                tick.next_due_at
                    .map_or(RECONCILE_EVERY, |at| at - now)
                    .clamp(10, RECONCILE_EVERY)
            }
            Err(e) => {
                if force {
                    // The change that asked for this tick is not applied yet.
                    app.scheduler.dirty.store(true, Ordering::SeqCst);
                }
                tracing::error!(error = %format!("{e:#}"), "schedules: cannot run due runs; retrying in a second");
                1000
            }
        };
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(wait as u64)) => {}
            _ = app.scheduler.wake.notified() => {}
        }
    }
}

/// Runs everything due at the scheduler clock's now: reconciles the slots with each
/// schedule's tenants, then takes, enqueues and records every due run. Waits for a tick in
/// progress; when it returns, every run due at now has been handled (tests call it after
/// moving a manual clock).
pub async fn tick(app: &AppState) -> anyhow::Result<Tick> {
    tick_inner(app, true).await
}

async fn tick_inner(app: &AppState, force: bool) -> anyhow::Result<Tick> {
    let mut parsed = app.scheduler.state.lock().await;
    let now = app.scheduler.now();
    let stored = app.store.list_schedules().await?;
    let changed = refresh(&mut parsed, &stored, &app.config);
    if force
        || changed
        || parsed
            .last_reconcile
            .is_none_or(|t| now - t >= RECONCILE_EVERY)
    {
        reconcile(app, &parsed, &stored, now).await?;
        parsed.last_reconcile = Some(now);
    }
    if parsed.last_prune.is_none_or(|t| now - t >= PRUNE_EVERY) {
        let pruned = app.store.prune_runs(now - RUN_RETENTION).await?;
        if pruned > 0 {
            tracing::info!(pruned, "schedules: deleted runs older than two weeks");
        }
        parsed.last_prune = Some(now);
    }
    let started_at = app.scheduler.started_at;
    let config = Arc::clone(&app.config);
    let mut all = Vec::new();
    // Each pass moves every slot it takes past now, except a deferred catch-up (once), so
    // this ends; the bound is a guard. A read first: the write transaction (which queues
    // behind job writes) only when something is due.
    for _ in 0..10_000 {
        if app.store.next_due_at().await?.is_none_or(|at| at > now) {
            break;
        }
        let schedules = &parsed.schedules;
        let mut decide = |due: &DueSlot| {
            let mut decision = decide(schedules, &config, due, now, started_at);
            seal_run(&app.credentials, &mut decision.action);
            decision
        };
        all.extend(app.store.fire_due(now, FIRE_BATCH, &mut decide).await?);
    }
    if all
        .iter()
        .any(|r| matches!(r.target, Some(Target::Job { .. })))
    {
        app.jobs_wake.notify_one();
    }
    if all
        .iter()
        .any(|r| matches!(r.target, Some(Target::Batch { .. })))
    {
        app.batches_wake.notify_one();
    }
    for r in &all {
        tracing::info!(
            schedule = %r.schedule, tenant = %r.tenant, outcome = r.outcome.as_str(),
            reason = r.reason.as_deref().unwrap_or(""), "schedule run"
        );
    }
    Ok(Tick {
        runs: all,
        next_due_at: app.store.next_due_at().await?,
    })
}

/// Parses what changed since the last tick; true if anything did.
fn refresh(parsed: &mut Parsed, stored: &[StoredSchedule], config: &crate::cfg::Config) -> bool {
    let mut changed = false;
    parsed.schedules.retain(|name, _| {
        let keep = stored.iter().any(|s| &s.name == name);
        changed |= !keep;
        keep
    });
    for s in stored {
        if parsed
            .schedules
            .get(&s.name)
            .is_some_and(|(def, _)| *def == s.definition)
        {
            continue;
        }
        changed = true;
        let result = serde_json::from_str::<ScheduleDef>(&s.definition)
            .map_err(|e| format!("the stored definition is not readable: {e}"))
            .and_then(|def| Schedule::check(def, config))
            .map(Arc::new);
        if let Err(e) = &result {
            tracing::error!(schedule = %s.name, error = %e, "schedule cannot run until fixed");
        }
        parsed
            .schedules
            .insert(s.name.clone(), (s.definition.clone(), result));
    }
    changed
}

/// Gives every tenant of every runnable, unpaused schedule a slot (its first run is the
/// first due time after now) and removes the slots of tenants no longer in it.
async fn reconcile(
    app: &AppState,
    parsed: &Parsed,
    stored: &[StoredSchedule],
    now: Millis,
) -> anyhow::Result<()> {
    let mut add = Vec::new();
    let mut remove = Vec::new();
    for s in stored.iter().filter(|s| !s.paused) {
        let Some((_, Ok(schedule))) = parsed.schedules.get(&s.name) else {
            continue;
        };
        let tenants: Vec<String> = match &schedule.tenants {
            Tenants::List(list) => list.clone(),
            Tenants::WithCredential(upstream) => {
                app.store.tenants_with_credential(upstream).await?
            }
        };
        let slots = app.store.slots(&s.name).await?;
        let have: std::collections::HashSet<&str> =
            slots.iter().map(|s| s.tenant.as_str()).collect();
        let want: std::collections::HashSet<&str> = tenants.iter().map(String::as_str).collect();
        for t in &tenants {
            if !have.contains(t.as_str()) {
                if let Some(slot) = first_slot(schedule, t, now) {
                    add.push(slot);
                }
            }
        }
        for slot in &slots {
            if !want.contains(slot.tenant.as_str()) {
                remove.push((slot.schedule.clone(), slot.tenant.clone()));
            }
        }
    }
    Ok(app.store.update_slots(&add, &remove).await?)
}

/// What a due slot does, and where it goes next (the first due time after now: runs missed
/// by more than one period collapse into this one).
fn decide(
    schedules: &HashMap<String, (String, Result<Arc<Schedule>, String>)>,
    config: &crate::cfg::Config,
    due: &DueSlot,
    now: Millis,
    started_at: Millis,
) -> Decision {
    let slot = &due.slot;
    let schedule = match schedules.get(&slot.schedule) {
        Some((_, Ok(s))) => s,
        Some((_, Err(e))) => {
            return Decision {
                action: Action::Fail {
                    reason: format!("the schedule cannot run: {e}"),
                },
                next: None,
            }
        }
        None => {
            return Decision {
                action: Action::Fail {
                    reason: "the schedule is gone".to_string(),
                },
                next: None,
            }
        }
    };
    let offset = offset_ms(schedule, &slot.tenant);
    let next = schedule
        .cron
        .next_after(slot.fire_at.max(now - offset))
        .map(|f| (f, f + offset));
    // A run due moments before the start (a crash, a deploy's restart) still runs: only one
    // due longer than MISSED_AFTER before the start counts as missed while down.
    let missed = slot.due_at < started_at - MISSED_AFTER;
    if missed && schedule.catch_up == CatchUp::Once {
        // The catch-up run waits for the tenant's offset after the start, so that tenants
        // that all missed their runs do not all run at once.
        return Decision {
            action: Action::Defer,
            next: Some((slot.fire_at, started_at + offset)),
        };
    }
    let action = if missed && schedule.catch_up == CatchUp::Skip {
        Action::Skip {
            reason: format!(
                "missed: Headroom was not running at {} (catch_up = \"skip\")",
                crate::clock::rfc3339(slot.due_at)
            ),
        }
    } else if let Some(previous) = due
        .previous
        .as_ref()
        .filter(|p| schedule.overlap == Overlap::Skip && !p.finished())
    {
        let what = match previous {
            Target::Job { id, .. } => format!("job {id}"),
            Target::Batch { id, .. } => format!("batch {id}"),
        };
        Action::Skip {
            reason: format!("the previous run ({what}) is still in progress (overlap = \"skip\")"),
        }
    } else {
        // The dispatcher runs on the same clock: the job is due at once.
        match schedule.enqueue(&slot.tenant, now, config) {
            Ok(e) => Action::Enqueue(Box::new(e)),
            Err(e) => Action::Fail { reason: e.0 },
        }
    };
    Decision { action, next }
}

/// Seals the credential-like request fields of what a run enqueues, as the API does
/// (`jobs::secrets`).
fn seal_run(credentials: &crate::credentials::Credentials, action: &mut Action) {
    use crate::jobs::secrets;
    let Action::Enqueue(enqueue) = action else {
        return;
    };
    let sealed = match &mut **enqueue {
        Enqueue::Job(j) => secrets::seal(credentials, &secrets::job_owner(&j.id), &mut j.request),
        Enqueue::Batch(b) => {
            secrets::seal(credentials, &secrets::batch_owner(&b.id), &mut b.request)
        }
    };
    if let Err(e) = sealed {
        *action = Action::Fail {
            reason: format!("cannot seal the request's credentials: {e:#}"),
        };
    }
}
