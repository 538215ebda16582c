//! Schedules as the store keeps them: definitions, slots (each tenant's next run), runs, and
//! the store interface every backend implements.

use serde::Serialize;

use super::jobs::{Millis, NewBatch, NewJob, Page};

/// What to enqueue for one run.
#[derive(Debug, Clone, PartialEq)]
pub enum Enqueue {
    Job(NewJob),
    Batch(NewBatch),
}

/// A schedule as stored: its definition (JSON of `ScheduleDef`) and its state.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredSchedule {
    pub name: String,
    pub definition: String,
    /// Defined in the config file (which owns it), else through the API.
    pub from_config: bool,
    pub paused: bool,
    pub created_at: Millis,
    pub updated_at: Millis,
}

/// The next run of one tenant of a schedule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Slot {
    pub schedule: String,
    pub tenant: String,
    /// The cron time.
    pub fire_at: Millis,
    /// `fire_at` plus the tenant's stagger offset: when it runs.
    pub due_at: Millis,
}

/// What a run did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RunOutcome {
    /// A job or batch was enqueued.
    Fired,
    /// Nothing was enqueued: the previous run was unfinished, or the run was missed.
    Skipped,
    /// The template could not be enqueued (e.g. its upstream is no longer configured).
    Failed,
}

impl RunOutcome {
    pub fn as_str(self) -> &'static str {
        match self {
            RunOutcome::Fired => "fired",
            RunOutcome::Skipped => "skipped",
            RunOutcome::Failed => "failed",
        }
    }

    pub fn parse(s: &str) -> Option<RunOutcome> {
        Some(match s {
            "fired" => RunOutcome::Fired,
            "skipped" => RunOutcome::Skipped,
            "failed" => RunOutcome::Failed,
            _ => return None,
        })
    }
}

/// What a run enqueued and where that is now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// A job and its status (`None` if the job is gone).
    Job {
        id: String,
        status: Option<super::jobs::JobStatus>,
    },
    /// A batch and its status (`None` if the batch is gone).
    Batch {
        id: String,
        status: Option<super::jobs::BatchStatus>,
    },
}

impl Target {
    /// Whether the job or batch is done (a missing one counts as done).
    pub fn finished(&self) -> bool {
        use super::jobs::BatchStatus;
        match self {
            Target::Job { status, .. } => status.is_none_or(|s| s.is_final()),
            Target::Batch { status, .. } => {
                !matches!(status, Some(BatchStatus::Queued | BatchStatus::Running))
            }
        }
    }
}

/// One recorded run.
#[derive(Debug, Clone, PartialEq)]
pub struct Run {
    pub schedule: String,
    pub tenant: String,
    pub fire_at: Millis,
    pub due_at: Millis,
    pub recorded_at: Millis,
    pub outcome: RunOutcome,
    pub reason: Option<String>,
    pub target: Option<Target>,
}

/// A slot whose time has come, with the last run that enqueued something for it.
#[derive(Debug, Clone, PartialEq)]
pub struct DueSlot {
    pub slot: Slot,
    pub previous: Option<Target>,
}

/// What to do with a due slot: record this run and move the slot on.
#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    pub action: Action,
    /// The slot's next cron time and due time; `None` removes the slot (no more runs).
    pub next: Option<(Millis, Millis)>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    Enqueue(Box<Enqueue>),
    Skip {
        reason: String,
    },
    Fail {
        reason: String,
    },
    /// Nothing runs now and nothing is recorded: the slot only moves to `next` (a catch-up
    /// run put at the tenant's offset after a restart, to keep the stagger).
    Defer,
}

/// The durable store of schedules, their slots and runs. Every backend passes
/// `store::schedule_conformance`.
#[allow(async_fn_in_trait)]
pub trait ScheduleStore: Send + Sync {
    /// Stores a new schedule; false (and nothing stored) if the name is taken.
    async fn create_schedule(&self, schedule: &StoredSchedule) -> crate::Result<bool>;
    /// Makes the config's schedules the stored config schedules: new ones are added,
    /// changed ones replaced (their slots dropped, to be recomputed; paused kept), those no
    /// longer in the config removed with their slots and runs. A name taken by an API
    /// schedule is an error naming it.
    async fn sync_config_schedules(
        &self,
        schedules: &[StoredSchedule],
        now: Millis,
    ) -> crate::Result<()>;
    async fn get_schedule(&self, name: &str) -> crate::Result<Option<StoredSchedule>>;
    /// Every schedule, by name.
    async fn list_schedules(&self) -> crate::Result<Vec<StoredSchedule>>;
    /// Pauses or resumes. Resuming drops the slots, so that runs start again from now
    /// rather than catching up the pause. `None` if there is no such schedule.
    async fn set_paused(
        &self,
        name: &str,
        paused: bool,
        now: Millis,
    ) -> crate::Result<Option<StoredSchedule>>;
    /// Deletes a schedule, its slots and its runs; false if there was none.
    async fn delete_schedule(&self, name: &str) -> crate::Result<bool>;
    /// The slots of a schedule, earliest due first.
    async fn slots(&self, schedule: &str) -> crate::Result<Vec<Slot>>;
    /// Adds slots (a slot that exists already is left as it is) and removes the slots of
    /// `remove` (schedule, tenant).
    async fn update_slots(&self, add: &[Slot], remove: &[(String, String)]) -> crate::Result<()>;
    /// In one transaction: takes up to `limit` slots of unpaused schedules due at `now`
    /// (earliest due first), asks `decide` what each does, enqueues and records that, and
    /// moves each slot on. Two callers at once never both take a slot. Returns the runs
    /// recorded (a deferred slot records none).
    async fn fire_due(
        &self,
        now: Millis,
        limit: u32,
        decide: &mut (dyn FnMut(&DueSlot) -> Decision + Send),
    ) -> crate::Result<Vec<Run>>;
    /// The earliest due time of a slot of an unpaused schedule.
    async fn next_due_at(&self) -> crate::Result<Option<Millis>>;
    /// A schedule's runs, oldest first, after the cursor `after`, optionally one tenant's.
    async fn list_runs(
        &self,
        schedule: &str,
        tenant: Option<&str>,
        after: Option<&str>,
        limit: u32,
    ) -> crate::Result<Page<Run>>;
    /// Deletes the runs recorded before `before`, except the last fired run of each
    /// (schedule, tenant), which `overlap = "skip"` reads. Returns how many.
    async fn prune_runs(&self, before: Millis) -> crate::Result<u64>;
    /// Tenants holding a credential for `upstream`, by name.
    async fn tenants_with_credential(&self, upstream: &str) -> crate::Result<Vec<String>>;
}
