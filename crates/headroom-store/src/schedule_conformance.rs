//! The conformance suite every `ScheduleStore` backend passes, written once, like
//! `conformance` for jobs and batches: each property takes an empty store and panics with a
//! message when the backend breaks the contract of `crate::model::schedules`. Times are fixed
//! values; nothing reads the clock.
//!
//! Every backend runs it as one named test per property: see [`crate::conformance_tests`].

use super::conformance::new_job;
use crate::model::jobs::*;
use crate::model::schedules::*;

pub fn stored(name: &str, from_config: bool, at: Millis) -> StoredSchedule {
    StoredSchedule {
        name: name.to_string(),
        definition: format!("{{\"name\":\"{name}\"}}"),
        from_config,
        paused: false,
        created_at: at,
        updated_at: at,
    }
}

fn slot(schedule: &str, tenant: &str, fire_at: Millis, due_at: Millis) -> Slot {
    Slot {
        schedule: schedule.to_string(),
        tenant: tenant.to_string(),
        fire_at,
        due_at,
    }
}

/// Enqueues a job for every due slot (id `<schedule>-<tenant>-<fire_at>`) and moves it a
/// minute on.
fn enqueue_all(due: &DueSlot) -> Decision {
    let s = &due.slot;
    let id = format!("{}-{}-{}", s.schedule, s.tenant, s.fire_at);
    let mut job = new_job(&id, "default", "", s.due_at);
    job.tenant = Some(s.tenant.clone());
    Decision {
        action: Action::Enqueue(Box::new(Enqueue::Job(job))),
        next: Some((s.fire_at + 60_000, s.due_at + 60_000)),
    }
}

async fn create<S: ScheduleStore>(store: &S, s: &StoredSchedule) {
    assert!(
        store.create_schedule(s).await.expect("create_schedule"),
        "{}: not created",
        s.name
    );
}

pub async fn schedule_round_trip<S: ScheduleStore>(store: &S) {
    let a = stored("a", false, 1_000);
    create(store, &a).await;
    assert!(
        !store
            .create_schedule(&stored("a", false, 2_000))
            .await
            .unwrap(),
        "a taken name is refused"
    );
    create(store, &stored("b", false, 1_000)).await;
    assert_eq!(store.get_schedule("a").await.unwrap(), Some(a.clone()));
    assert_eq!(store.get_schedule("zz").await.unwrap(), None);
    let names: Vec<String> = store
        .list_schedules()
        .await
        .unwrap()
        .into_iter()
        .map(|s| s.name)
        .collect();
    assert_eq!(names, ["a", "b"]);
    let paused = store.set_paused("a", true, 5_000).await.unwrap().unwrap();
    assert!(paused.paused);
    assert_eq!(paused.updated_at, 5_000);
    assert_eq!(store.set_paused("zz", true, 5_000).await.unwrap(), None);
    assert!(store.delete_schedule("a").await.unwrap());
    assert!(!store.delete_schedule("a").await.unwrap());
    assert_eq!(store.get_schedule("a").await.unwrap(), None);
}

pub async fn config_sync<S: ScheduleStore>(store: &S) {
    create(store, &stored("api", false, 1_000)).await;
    let c1 = stored("c1", true, 1_000);
    let c2 = stored("c2", true, 1_000);
    store
        .sync_config_schedules(&[c1.clone(), c2.clone()], 1_000)
        .await
        .unwrap();
    store
        .update_slots(&[slot("c1", "acme", 60_000, 60_000)], &[])
        .await
        .unwrap();
    store.set_paused("c1", true, 1_500).await.unwrap();
    // Unchanged: slots and paused kept. Changed: slots dropped. Gone: removed.
    let mut c1_changed = c1.clone();
    c1_changed.definition = "{\"name\":\"c1\",\"v\":2}".to_string();
    store
        .sync_config_schedules(std::slice::from_ref(&c1), 2_000)
        .await
        .unwrap();
    assert_eq!(store.slots("c1").await.unwrap().len(), 1);
    assert!(store.get_schedule("c1").await.unwrap().unwrap().paused);
    assert_eq!(
        store.get_schedule("c2").await.unwrap(),
        None,
        "a schedule gone from the config is removed"
    );
    assert!(
        store.get_schedule("api").await.unwrap().is_some(),
        "API schedules are not the config's"
    );
    store
        .sync_config_schedules(&[c1_changed.clone()], 3_000)
        .await
        .unwrap();
    let now = store.get_schedule("c1").await.unwrap().unwrap();
    assert_eq!(now.definition, c1_changed.definition);
    assert_eq!(now.updated_at, 3_000);
    assert!(now.paused, "a changed schedule stays paused");
    assert!(
        store.slots("c1").await.unwrap().is_empty(),
        "a changed schedule's slots are recomputed"
    );
    let clash = store
        .sync_config_schedules(&[stored("api", true, 4_000)], 4_000)
        .await
        .unwrap_err()
        .to_string();
    assert!(clash.contains("\"api\""), "{clash}");
}

pub async fn slots_add_and_remove<S: ScheduleStore>(store: &S) {
    create(store, &stored("s", false, 0)).await;
    store
        .update_slots(
            &[
                slot("s", "b", 60_000, 70_000),
                slot("s", "a", 60_000, 65_000),
                slot("gone", "a", 60_000, 60_000),
            ],
            &[],
        )
        .await
        .unwrap();
    // An existing slot is left as it is.
    store
        .update_slots(&[slot("s", "a", 120_000, 120_000)], &[])
        .await
        .unwrap();
    assert_eq!(
        store.slots("s").await.unwrap(),
        vec![
            slot("s", "a", 60_000, 65_000),
            slot("s", "b", 60_000, 70_000)
        ]
    );
    assert!(
        store.slots("gone").await.unwrap().is_empty(),
        "no slot for a schedule that does not exist"
    );
    assert_eq!(store.next_due_at().await.unwrap(), Some(65_000));
    store
        .update_slots(&[], &[("s".to_string(), "a".to_string())])
        .await
        .unwrap();
    assert_eq!(
        store.slots("s").await.unwrap(),
        vec![slot("s", "b", 60_000, 70_000)]
    );
    store.delete_schedule("s").await.unwrap();
    assert!(store.slots("s").await.unwrap().is_empty());
    assert_eq!(store.next_due_at().await.unwrap(), None);
}

pub async fn fire_due_claims_and_advances<S: ScheduleStore + JobStore>(store: &S) {
    create(store, &stored("s", false, 0)).await;
    create(store, &stored("p", false, 0)).await;
    store
        .update_slots(
            &[
                slot("s", "a", 60_000, 61_000),
                slot("s", "b", 60_000, 90_000),
                slot("p", "a", 60_000, 61_000),
            ],
            &[],
        )
        .await
        .unwrap();
    store.set_paused("p", true, 0).await.unwrap();
    assert_eq!(
        store.next_due_at().await.unwrap(),
        Some(61_000),
        "paused schedules are not due"
    );
    let runs = store.fire_due(61_000, 100, &mut enqueue_all).await.unwrap();
    assert_eq!(runs.len(), 1, "only s/a is due and unpaused: {runs:?}");
    let run = &runs[0];
    assert_eq!((run.schedule.as_str(), run.tenant.as_str()), ("s", "a"));
    assert_eq!(run.outcome, RunOutcome::Fired);
    assert_eq!(run.recorded_at, 61_000);
    let job_id = match &run.target {
        Some(Target::Job { id, status }) => {
            assert_eq!(*status, Some(JobStatus::Queued));
            id.clone()
        }
        other => panic!("a fired run names its job: {other:?}"),
    };
    assert!(
        store.get_job(&job_id).await.unwrap().is_some(),
        "the job is stored with the run"
    );
    assert_eq!(
        store.slots("s").await.unwrap(),
        vec![
            slot("s", "b", 60_000, 90_000),
            slot("s", "a", 120_000, 121_000)
        ],
        "the slot moved on"
    );
    assert!(
        store
            .fire_due(61_000, 100, &mut enqueue_all)
            .await
            .unwrap()
            .is_empty(),
        "a run is taken once"
    );
    // A skip and a failure are recorded; `next: None` removes the slot.
    let mut skip_all = |due: &DueSlot| Decision {
        action: if due.slot.tenant == "a" {
            Action::Skip {
                reason: "busy".into(),
            }
        } else {
            Action::Fail {
                reason: "broken".into(),
            }
        },
        next: (due.slot.tenant == "a").then_some((180_000, 181_000)),
    };
    let runs = store.fire_due(121_000, 100, &mut skip_all).await.unwrap();
    let outcomes: Vec<(String, RunOutcome, Option<String>)> = runs
        .into_iter()
        .map(|r| (r.tenant, r.outcome, r.reason))
        .collect();
    assert_eq!(
        outcomes,
        vec![
            ("b".into(), RunOutcome::Failed, Some("broken".into())),
            ("a".into(), RunOutcome::Skipped, Some("busy".into())),
        ],
        "earliest due first"
    );
    assert_eq!(
        store.slots("s").await.unwrap(),
        vec![slot("s", "a", 180_000, 181_000)]
    );
    // A deferred slot records nothing and moves.
    let mut defer = |due: &DueSlot| Decision {
        action: Action::Defer,
        next: Some((due.slot.fire_at, 185_000)),
    };
    assert!(store
        .fire_due(181_000, 100, &mut defer)
        .await
        .unwrap()
        .is_empty());
    assert_eq!(
        store.slots("s").await.unwrap(),
        vec![slot("s", "a", 180_000, 185_000)]
    );
    assert_eq!(
        store
            .list_runs("s", None, None, 100)
            .await
            .unwrap()
            .items
            .len(),
        3
    );
    // The limit is honoured.
    store
        .update_slots(
            &[
                slot("s", "c", 60_000, 100_000),
                slot("s", "d", 60_000, 100_000),
            ],
            &[],
        )
        .await
        .unwrap();
    for expected in [1, 1, 0] {
        assert_eq!(
            store
                .fire_due(150_000, 1, &mut enqueue_all)
                .await
                .unwrap()
                .len(),
            expected
        );
    }
}

pub async fn previous_run_status<S: ScheduleStore + JobStore + BatchStore>(store: &S) {
    create(store, &stored("s", false, 0)).await;
    store
        .update_slots(&[slot("s", "a", 60_000, 60_000)], &[])
        .await
        .unwrap();
    let mut seen: Vec<Option<Target>> = Vec::new();
    let mut record = |due: &DueSlot| {
        seen.push(due.previous.clone());
        enqueue_all(due)
    };
    store.fire_due(60_000, 10, &mut record).await.unwrap();
    store.fire_due(120_000, 10, &mut record).await.unwrap();
    assert_eq!(seen[0], None, "no run before the first");
    let first = "s-a-60000".to_string();
    assert_eq!(
        seen[1],
        Some(Target::Job {
            id: first.clone(),
            status: Some(JobStatus::Queued)
        })
    );
    assert!(!seen[1].as_ref().unwrap().finished());
    // The job is cancelled: the next run sees it finished; a skipped run in between does
    // not hide it.
    store.cancel_job(&first, 130_000).await.unwrap();
    let mut skip = |due: &DueSlot| Decision {
        action: Action::Skip { reason: "x".into() },
        next: Some((due.slot.fire_at + 60_000, due.slot.due_at + 60_000)),
    };
    store.fire_due(180_000, 10, &mut skip).await.unwrap();
    let mut last = None;
    let mut look = |due: &DueSlot| {
        last = due.previous.clone();
        enqueue_all(due)
    };
    store.fire_due(240_000, 10, &mut look).await.unwrap();
    assert_eq!(
        last,
        Some(Target::Job {
            id: "s-a-120000".to_string(),
            status: Some(JobStatus::Queued)
        }),
        "the previous run is the last one that enqueued something"
    );
    // A batch target.
    create(store, &stored("b", false, 0)).await;
    store
        .update_slots(&[slot("b", "a", 60_000, 60_000)], &[])
        .await
        .unwrap();
    let mut batch = |due: &DueSlot| {
        let mut b = super::conformance::new_batch("batch-1", 3, 10, 60_000);
        b.tenant = Some(due.slot.tenant.clone());
        Decision {
            action: Action::Enqueue(Box::new(Enqueue::Batch(b))),
            next: Some((120_000, 120_000)),
        }
    };
    let runs = store.fire_due(60_000, 10, &mut batch).await.unwrap();
    assert_eq!(
        runs[0].target,
        Some(Target::Batch {
            id: "batch-1".into(),
            status: Some(BatchStatus::Queued)
        })
    );
    assert!(store.get_batch("batch-1", 10).await.unwrap().is_some());
    let page = store.list_runs("b", None, None, 10).await.unwrap();
    assert_eq!(page.items[0].target, runs[0].target);
}

pub async fn concurrent_fires_take_a_slot_once<S: ScheduleStore + JobStore>(store: &S) {
    create(store, &stored("s", false, 0)).await;
    let slots: Vec<Slot> = (0..50)
        .map(|i| slot("s", &format!("t{i:02}"), 60_000, 60_000 + i))
        .collect();
    store.update_slots(&slots, &[]).await.unwrap();
    let (mut d1, mut d2) = (enqueue_all, enqueue_all);
    let (a, b) = futures_util::future::join(
        store.fire_due(70_000, 7, &mut d1),
        store.fire_due(70_000, 7, &mut d2),
    )
    .await;
    let mut total = a.unwrap().len() + b.unwrap().len();
    loop {
        let n = store
            .fire_due(70_000, 7, &mut enqueue_all)
            .await
            .unwrap()
            .len();
        if n == 0 {
            break;
        }
        total += n;
    }
    assert_eq!(total, 50, "each due slot runs exactly once");
    let page = store.list_runs("s", None, None, 500).await.unwrap();
    assert_eq!(page.items.len(), 50);
}

pub async fn runs_cursor<S: ScheduleStore + JobStore>(store: &S) {
    create(store, &stored("s", false, 0)).await;
    create(store, &stored("other", false, 0)).await;
    store
        .update_slots(
            &[
                slot("s", "a", 60_000, 60_000),
                slot("s", "b", 60_000, 60_000),
                slot("other", "a", 60_000, 60_000),
            ],
            &[],
        )
        .await
        .unwrap();
    for t in [60_000, 120_000, 180_000] {
        store.fire_due(t, 100, &mut enqueue_all).await.unwrap();
    }
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let page = store
            .list_runs("s", None, cursor.as_deref(), 4)
            .await
            .unwrap();
        seen.extend(page.items.iter().map(|r| (r.fire_at, r.tenant.clone())));
        match page.next {
            Some(c) => cursor = Some(c),
            None => break,
        }
    }
    assert_eq!(seen.len(), 6, "{seen:?}");
    let mut sorted = seen.clone();
    sorted.sort();
    assert_eq!(seen, sorted, "oldest first");
    let only_b = store.list_runs("s", Some("b"), None, 100).await.unwrap();
    assert_eq!(only_b.items.len(), 3);
    assert!(only_b.items.iter().all(|r| r.tenant == "b"));
    assert!(store.list_runs("s", None, Some("x"), 4).await.is_err());
    // Deleting a schedule deletes its runs.
    store.delete_schedule("s").await.unwrap();
    assert!(store
        .list_runs("s", None, None, 10)
        .await
        .unwrap()
        .items
        .is_empty());
    assert_eq!(
        store
            .list_runs("other", None, None, 10)
            .await
            .unwrap()
            .items
            .len(),
        3
    );
}

pub async fn resume_resets_slots<S: ScheduleStore>(store: &S) {
    create(store, &stored("s", false, 0)).await;
    store
        .update_slots(&[slot("s", "a", 60_000, 60_000)], &[])
        .await
        .unwrap();
    store.set_paused("s", true, 1).await.unwrap();
    assert_eq!(
        store.slots("s").await.unwrap().len(),
        1,
        "pausing keeps slots"
    );
    store.set_paused("s", false, 2).await.unwrap();
    assert!(
        store.slots("s").await.unwrap().is_empty(),
        "resuming drops them, to be recomputed from now"
    );
}

pub async fn prune_keeps_the_last_fired_run<S: ScheduleStore + JobStore>(store: &S) {
    create(store, &stored("s", false, 0)).await;
    store
        .update_slots(
            &[
                slot("s", "a", 60_000, 60_000),
                slot("s", "b", 60_000, 60_000),
            ],
            &[],
        )
        .await
        .unwrap();
    // a: fired, fired, skipped; b: fired, skipped, skipped.
    let mut n = 0;
    let mut mixed = |due: &DueSlot| {
        n += 1;
        let fire = (due.slot.tenant == "a" && due.slot.fire_at < 180_000)
            || (due.slot.tenant == "b" && due.slot.fire_at == 60_000);
        let mut d = enqueue_all(due);
        if !fire {
            d.action = Action::Skip {
                reason: "busy".into(),
            };
        }
        d
    };
    for t in [60_000, 120_000, 180_000] {
        store.fire_due(t, 100, &mut mixed).await.unwrap();
    }
    assert_eq!(store.prune_runs(180_000).await.unwrap(), 2);
    let left: Vec<(String, Millis, RunOutcome)> = store
        .list_runs("s", None, None, 100)
        .await
        .unwrap()
        .items
        .into_iter()
        .map(|r| (r.tenant, r.fire_at, r.outcome))
        .collect();
    assert_eq!(
        left,
        vec![
            ("b".into(), 60_000, RunOutcome::Fired),
            ("a".into(), 120_000, RunOutcome::Fired),
            ("a".into(), 180_000, RunOutcome::Skipped),
            ("b".into(), 180_000, RunOutcome::Skipped),
        ],
        "old runs go, each tenant's last fired run stays"
    );
}
