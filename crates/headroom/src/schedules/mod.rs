//! Schedules: per-tenant cron runs with a stable stagger and singleton runs.
//!
//! Each (schedule, tenant) has a slot in the store holding its next cron time and its due
//! time (the cron time plus the tenant's stagger offset). The scheduler takes due slots,
//! enqueues the schedule's job or batch for the tenant (or records why not), and moves the
//! slot to its next time, all in one store transaction: a restart neither loses nor repeats
//! a run. Time comes from an injected clock (the Unix epoch on the system clock in
//! production, a manual clock in tests), never from sleeping.

pub mod cron;
pub mod model;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use headroom_core::clock::Clock;

pub use model::*;

use crate::cfg::Config;
use crate::clock::epoch_millis;
use crate::clock::Millis;

/// Runs are kept this long (the last fired run of each tenant longer: see `prune_runs`).
pub const RUN_RETENTION: Millis = 14 * 86_400_000;

/// The scheduler's state, one per server.
pub struct Scheduler {
    /// Counted from the Unix epoch.
    clock: Arc<dyn Clock>,
    /// When this server's scheduler started: a slot due before then was missed while
    /// Headroom was down (`catch_up`).
    pub(crate) started_at: Millis,
    /// Wakes the loop: a schedule was created, paused, resumed or deleted.
    pub wake: tokio::sync::Notify,
    /// Set with `wake`: the slots are to be reconciled on the next tick.
    pub(crate) dirty: AtomicBool,
    /// The config's `[[schedules]]`, checked.
    configured: Vec<Arc<Schedule>>,
    /// One tick at a time (the loop's and a test's); holds the parsed schedules.
    pub(crate) state: tokio::sync::Mutex<Parsed>,
}

#[derive(Default)]
pub(crate) struct Parsed {
    /// By name: (stored definition, parsed schedule, or why it cannot be parsed).
    pub(crate) schedules: HashMap<String, (String, Result<Arc<Schedule>, String>)>,
    pub(crate) last_reconcile: Option<Millis>,
    pub(crate) last_prune: Option<Millis>,
}

impl Scheduler {
    pub fn new(clock: Arc<dyn Clock>, configured: Vec<Arc<Schedule>>) -> Scheduler {
        let started_at = epoch_millis(clock.now());
        Scheduler {
            clock,
            configured,
            started_at,
            wake: tokio::sync::Notify::new(),
            dirty: AtomicBool::new(true),
            state: tokio::sync::Mutex::new(Parsed::default()),
        }
    }

    /// Now on the scheduler's clock, in ms since the epoch.
    pub fn now(&self) -> Millis {
        epoch_millis(self.clock.now())
    }

    pub fn started_at(&self) -> Millis {
        self.started_at
    }

    /// The config's schedules, checked.
    pub fn configured(&self) -> &[Arc<Schedule>] {
        &self.configured
    }

    /// Something changed: reconcile and look for due runs now.
    pub fn poke(&self) {
        self.dirty.store(true, Ordering::SeqCst);
        self.wake.notify_one();
    }
}

pub(crate) fn offset_ms(schedule: &Schedule, tenant: &str) -> Millis {
    cron::stagger_offset(schedule.name(), tenant, schedule.stagger).as_millis() as Millis
}

/// A new slot: the first cron time whose due time is after now.
pub fn first_slot(schedule: &Schedule, tenant: &str, now: Millis) -> Option<Slot> {
    let offset = offset_ms(schedule, tenant);
    let fire_at = schedule.cron.next_after(now - offset)?;
    Some(Slot {
        schedule: schedule.name().to_string(),
        tenant: tenant.to_string(),
        fire_at,
        due_at: fire_at + offset,
    })
}

/// The config's `[[schedules]]`, each checked against the rest of the config (its template
/// against the upstreams and queues, as `POST /v1/jobs` or `/v1/batches` would check it).
/// Errors name the key (`schedules[0].job.request.path: …`).
pub fn from_config(config: &Config) -> Result<Vec<Arc<Schedule>>, String> {
    config
        .schedules
        .iter()
        .enumerate()
        .map(|(i, def)| {
            Schedule::check(def.clone(), config)
                .map(Arc::new)
                .map_err(|e| format!("schedules[{i}].{e}"))
        })
        .collect()
}
