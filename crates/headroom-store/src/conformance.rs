//! The conformance suite every `JobStore + BatchStore` backend passes, written once.
//!
//! Each property is a function that takes an empty store and panics (with a message that
//! says what went wrong) when the backend breaks the contract of `crate::model::jobs`.
//! Times are fixed values passed as `now`: nothing here reads the clock or sleeps.
//!
//! Every backend runs it as one named test per property: see [`crate::conformance_tests`].

use std::collections::BTreeSet;

use headroom_core::Lane;

use crate::model::jobs::*;

// ---- helpers ---------------------------------------------------------------------------

/// A plain job of `queue`/`scope` created (and ready) at `at`.
pub fn new_job(id: &str, queue: &str, scope: &str, at: Millis) -> NewJob {
    NewJob {
        id: id.to_string(),
        queue: queue.to_string(),
        scope: scope.to_string(),
        upstream: "crm".to_string(),
        tenant: (!scope.is_empty()).then(|| scope.to_string()),
        lane: Lane::Bulk,
        request: JobRequest {
            method: "POST".to_string(),
            path: "/v1/things".to_string(),
            query: None,
            headers: Vec::new(),
            body: Some(br#"{"n":1}"#.to_vec()),
            body_is_json: true,
        },
        dedup_id: None,
        dedup_until: None,
        callback_url: None,
        max_attempts: 5,
        idempotency_key: format!("idem-{id}"),
        created_at: at,
    }
}

fn rules(list: &[(&str, QueueMode)]) -> Vec<QueueRule> {
    list.iter()
        .map(|(name, mode)| QueueRule {
            name: name.to_string(),
            mode: *mode,
        })
        .collect()
}

async fn insert<S: JobStore>(store: &S, job: NewJob) -> Job {
    let id = job.id.clone();
    match store.insert_job(job).await.expect("insert_job") {
        Inserted::Created(j) => j,
        Inserted::Duplicate(j) => panic!("{id}: unexpectedly a duplicate of {}", j.new.id),
    }
}

async fn get<S: JobStore>(store: &S, id: &str) -> Job {
    store
        .get_job(id)
        .await
        .expect("get_job")
        .unwrap_or_else(|| panic!("job {id} is missing"))
}

async fn claim<S: JobStore>(
    store: &S,
    now: Millis,
    rules: &[QueueRule],
    limit: u32,
) -> Vec<String> {
    let jobs = store
        .claim_ready(now, rules, limit)
        .await
        .expect("claim_ready");
    for j in &jobs {
        assert_eq!(
            j.status,
            JobStatus::Running,
            "{}: claimed but not running",
            j.new.id
        );
    }
    jobs.into_iter().map(|j| j.new.id).collect()
}

fn sorted(mut v: Vec<String>) -> Vec<String> {
    v.sort();
    v
}

fn ids(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
}

fn attempt(job_id: &str, number: u32, at: Millis) -> AttemptRecord {
    AttemptRecord {
        job_id: job_id.to_string(),
        number,
        started_at: at,
        finished_at: at + 5,
        status: Some(200),
        wait_ms: 3,
        rate_limit_headers: vec![("x-ratelimit-remaining".into(), "9".into())],
        error: None,
    }
}

fn ok_response() -> JobResponse {
    JobResponse {
        status: 201,
        headers: vec![("content-type".into(), "application/json".into())],
        body: br#"{"ok":true}"#.to_vec(),
    }
}

async fn succeed<S: JobStore>(store: &S, id: &str, now: Millis) -> Job {
    let n = get(store, id).await.attempts + 1;
    store
        .finish_attempt(
            attempt(id, n, now),
            Transition::Succeeded {
                response: ok_response(),
            },
            now,
        )
        .await
        .expect("finish_attempt")
}

async fn retry<S: JobStore>(store: &S, id: &str, now: Millis, at: Millis, burn: bool) -> Job {
    let n = get(store, id).await.attempts + 1;
    store
        .finish_attempt(
            attempt(id, n, now),
            Transition::Retry {
                at,
                error: "429 Too Many Requests".into(),
                burn_attempt: burn,
            },
            now,
        )
        .await
        .expect("finish_attempt")
}

// ---- jobs ------------------------------------------------------------------------------

/// What is inserted is what is read back: headers in order, JSON and binary bodies, every
/// optional field; a new job is queued, ready at its creation time, with no attempt.
pub async fn job_round_trip<S: JobStore>(store: &S) {
    let mut json = new_job("j-json", "default", "acme", 1_000);
    json.lane = Lane::Realtime;
    json.request.query = Some("a=1&b=%20".into());
    json.request.headers = vec![
        ("content-type".into(), "application/json".into()),
        ("x-trace".into(), "one".into()),
        ("x-trace".into(), "two".into()),
    ];
    json.dedup_id = Some("evt-1".into());
    json.dedup_until = Some(601_000);
    json.callback_url = Some("http://127.0.0.1:3000/done".into());
    json.max_attempts = 10;
    let created = insert(store, json.clone()).await;
    assert_eq!(created.new, json);
    assert_eq!(created.status, JobStatus::Queued);
    assert_eq!(created.attempts, 0);
    assert_eq!(created.next_attempt_at, 1_000);
    assert_eq!(
        created.callback,
        CallbackState::Pending,
        "a job with a callback URL"
    );
    assert_eq!(created.response, None);
    assert_eq!(created.last_error, None);
    let read = get(store, "j-json").await;
    assert_eq!(
        read.new, json,
        "the stored job differs from the inserted one"
    );
    assert_eq!(read, created, "insert_job and get_job disagree");

    let mut binary = new_job("j-bin", "default", "", 2_000);
    binary.request.method = "PUT".into();
    binary.request.body = Some(vec![0, 159, 146, 150, 255, 0, 10, 13]);
    binary.request.body_is_json = false;
    let created = insert(store, binary.clone()).await;
    let read = get(store, "j-bin").await;
    assert_eq!(
        read.new, binary,
        "a binary body must come back byte for byte"
    );
    assert_eq!(read.new.tenant, None);
    assert_eq!(read.callback, CallbackState::None, "no callback URL");
    assert_eq!(read, created);

    let mut empty = new_job("j-empty", "default", "", 3_000);
    empty.request.method = "GET".into();
    empty.request.body = None;
    empty.request.body_is_json = false;
    insert(store, empty.clone()).await;
    assert_eq!(get(store, "j-empty").await.new, empty);

    assert!(store.get_job("nope").await.unwrap().is_none());
    assert!(store.attempts("j-json").await.unwrap().is_empty());
}

/// A dedup id inside its window returns the existing job and stores nothing; after the
/// window a new job takes the id; ids are per queue.
pub async fn dedup_window<S: JobStore>(store: &S) {
    let window = 600_000;
    let mut first = new_job("d1", "default", "acme", 1_000);
    first.dedup_id = Some("evt-123".into());
    first.dedup_until = Some(1_000 + window);
    insert(store, first.clone()).await;

    let mut again = new_job("d2", "default", "acme", 1_000 + window - 1);
    again.dedup_id = Some("evt-123".into());
    again.dedup_until = Some(1_000 + 2 * window - 1);
    match store.insert_job(again).await.unwrap() {
        Inserted::Duplicate(j) => assert_eq!(j.new.id, "d1", "the duplicate names the first job"),
        Inserted::Created(_) => panic!("a dedup id inside its window must not insert a job"),
    }
    assert!(
        store.get_job("d2").await.unwrap().is_none(),
        "nothing stored"
    );

    // Another queue: its own ids.
    let mut other = new_job("d3", "other", "acme", 2_000);
    other.dedup_id = Some("evt-123".into());
    other.dedup_until = Some(2_000 + window);
    insert(store, other).await;

    // Without a dedup id, never a duplicate.
    insert(store, new_job("d4", "default", "acme", 2_000)).await;
    insert(store, new_job("d5", "default", "acme", 2_000)).await;

    // The window has passed: a new job takes the id, and holds it for its own window.
    let mut later = new_job("d6", "default", "acme", 1_000 + window + 1);
    later.dedup_id = Some("evt-123".into());
    later.dedup_until = Some(1_000 + 2 * window + 1);
    insert(store, later).await;
    let mut repeat = new_job("d7", "default", "acme", 1_000 + window + 2);
    repeat.dedup_id = Some("evt-123".into());
    repeat.dedup_until = Some(1_000 + 2 * window + 2);
    match store.insert_job(repeat).await.unwrap() {
        Inserted::Duplicate(j) => assert_eq!(j.new.id, "d6", "the newest holder of the id"),
        Inserted::Created(_) => panic!("d7 repeats d6 inside d6's window"),
    }
    assert!(store.get_job("d7").await.unwrap().is_none());
    assert!(
        store.get_job("d1").await.unwrap().is_some(),
        "the old job stays"
    );
}

/// Dedup ids are per (queue, tenant): a tenant reusing another tenant's id gets a job of its
/// own, never the other's; a repeat by the same tenant names its own job; jobs without a
/// tenant share the '' tenant.
pub async fn dedup_per_tenant<S: JobStore>(store: &S) {
    let until = 1_000 + 600_000;
    let with_id = |id: &str, tenant: &str, at: Millis| {
        let mut j = new_job(id, "default", tenant, at);
        j.dedup_id = Some("order-1001".into());
        j.dedup_until = Some(until);
        j
    };
    insert(store, with_id("b1", "tenant-b", 1_000)).await;
    let a1 = match store
        .insert_job(with_id("a1", "tenant-a", 1_001))
        .await
        .unwrap()
    {
        Inserted::Created(j) => j,
        Inserted::Duplicate(j) => panic!(
            "tenant-a's dedup id was answered with {} of tenant {:?}",
            j.new.id, j.new.tenant
        ),
    };
    assert_eq!(a1.new.tenant.as_deref(), Some("tenant-a"));
    match store
        .insert_job(with_id("a2", "tenant-a", 1_002))
        .await
        .unwrap()
    {
        Inserted::Duplicate(j) => assert_eq!(j.new.id, "a1", "tenant-a's repeat names its job"),
        Inserted::Created(_) => panic!("a repeat inside the window must not insert a job"),
    }
    match store
        .insert_job(with_id("b2", "tenant-b", 1_003))
        .await
        .unwrap()
    {
        Inserted::Duplicate(j) => assert_eq!(j.new.id, "b1", "tenant-b still holds its id"),
        Inserted::Created(_) => panic!("tenant-b's repeat must not insert a job"),
    }
    // No tenant: its own space ('').
    insert(store, with_id("n1", "", 1_004)).await;
    match store.insert_job(with_id("n2", "", 1_005)).await.unwrap() {
        Inserted::Duplicate(j) => assert_eq!(j.new.id, "n1"),
        Inserted::Created(_) => panic!("a tenant-less repeat must not insert a job"),
    }
    for id in ["a2", "b2", "n2"] {
        assert!(store.get_job(id).await.unwrap().is_none(), "{id} stored");
    }
    assert_eq!(
        get(store, "b1").await.new.tenant.as_deref(),
        Some("tenant-b")
    );
}

/// Writes issued at once (one task, many futures): every insert lands exactly once, one
/// job per dedup id gets in and the others name it, a job whose id is taken fails alone, and
/// attempts finished together each move their own job.
pub async fn concurrent_writes<S: JobStore>(store: &S) {
    let jobs: Vec<NewJob> = (0..300)
        .map(|i| {
            let mut j = new_job(&format!("w{i}"), "default", "acme", 1_000 + i);
            if i % 3 == 0 {
                j.dedup_id = Some(format!("evt-{}", i % 30));
                j.dedup_until = Some(1_000_000);
            }
            j
        })
        .chain(std::iter::once(new_job("w7", "default", "acme", 5_000)))
        .collect();
    let results =
        futures_util::future::join_all(jobs.into_iter().map(|j| store.insert_job(j))).await;
    let mut created = BTreeSet::new();
    let mut holders = std::collections::BTreeMap::new();
    let mut duplicates = Vec::new();
    for (i, r) in results.into_iter().enumerate() {
        match r {
            Ok(Inserted::Created(j)) => {
                if let Some(d) = &j.new.dedup_id {
                    assert!(
                        holders.insert(d.clone(), j.new.id.clone()).is_none(),
                        "two jobs got in with the dedup id {d}"
                    );
                }
                assert!(created.insert(j.new.id), "created twice");
            }
            Ok(Inserted::Duplicate(j)) => duplicates.push((i, j)),
            Err(_) => assert_eq!(i, 300, "only the job whose id was taken fails"),
        }
    }
    assert_eq!(
        created.len(),
        200 + 10,
        "200 without dedup id, one per dedup id"
    );
    assert_eq!(duplicates.len(), 90);
    for (i, j) in &duplicates {
        let dedup = format!("evt-{}", i % 30);
        assert_eq!(j.new.dedup_id.as_ref(), Some(&dedup));
        assert_eq!(
            Some(&j.new.id),
            holders.get(&dedup),
            "names the job that got in"
        );
    }
    assert_eq!(
        get(store, "w7").await.new.created_at,
        1_007,
        "the first w7 stays"
    );
    let page = store
        .list_jobs(&JobFilter::default(), None, 1_000)
        .await
        .unwrap();
    assert_eq!(page.items.len(), 210);

    let claimed = store.claim_ready(2_000, &[], 1_000).await.unwrap();
    assert_eq!(claimed.len(), 210);
    let finishes = claimed.iter().enumerate().map(|(i, j)| {
        let transition = match i % 3 {
            0 => Transition::Succeeded {
                response: ok_response(),
            },
            1 => Transition::Failed {
                error: format!("failed {}", j.new.id),
                response: None,
            },
            _ => Transition::Retry {
                at: 9_000,
                error: "later".into(),
                burn_attempt: i % 2 == 0,
            },
        };
        store.finish_attempt(attempt(&j.new.id, 1, 2_000), transition, 2_001)
    });
    let finished = futures_util::future::join_all(finishes).await;
    for (i, (r, j)) in finished.into_iter().zip(&claimed).enumerate() {
        let after = r.expect("finish_attempt");
        assert_eq!(
            after.new.id, j.new.id,
            "each finish answers with its own job"
        );
        let want = match i % 3 {
            0 => (JobStatus::Succeeded, 1),
            1 => (JobStatus::Failed, 1),
            _ => (JobStatus::RetryPending, u32::from(i % 2 == 0)),
        };
        assert_eq!((after.status, after.attempts), want, "{}", j.new.id);
        let want_response = (i % 3 == 0).then(ok_response);
        assert_eq!(after.response, want_response, "{}", j.new.id);
        let want_error = match i % 3 {
            0 => None,
            1 => Some(format!("failed {}", j.new.id)),
            _ => Some("later".to_string()),
        };
        assert_eq!(after.last_error, want_error, "{}", j.new.id);
        if i % 3 == 2 {
            assert_eq!(after.next_attempt_at, 9_000, "{}", j.new.id);
        }
        assert_eq!(get(store, &j.new.id).await, after);
        assert_eq!(store.attempts(&j.new.id).await.unwrap().len(), 1);
    }
}

/// Listing: insertion order, filters by status, tenant and queue (together too), cursor
/// pages that neither skip nor repeat, `next` None on the last page.
pub async fn list_filters_and_cursor<S: JobStore>(store: &S) {
    let mut all = Vec::new();
    for i in 0..25 {
        let tenant = ["acme", "globex"][i % 2];
        let queue = ["default", "sync", "default"][i % 3];
        // Creation times not in insertion order: the listing follows insertion.
        let id = format!("l{i:02}");
        insert(
            store,
            new_job(&id, queue, tenant, 10_000 - i as Millis * 7 % 50),
        )
        .await;
        all.push(id);
    }
    let everything = JobFilter::default();
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    let mut pages = 0;
    loop {
        let page = store
            .list_jobs(&everything, cursor.as_deref(), 10)
            .await
            .unwrap();
        pages += 1;
        assert!(page.items.len() <= 10);
        seen.extend(page.items.iter().map(|j| j.new.id.clone()));
        match page.next {
            Some(c) => {
                assert_eq!(page.items.len(), 10, "only the last page may be short");
                cursor = Some(c);
            }
            None => break,
        }
        assert!(pages < 10, "the cursor does not advance");
    }
    assert_eq!(pages, 3);
    assert_eq!(
        seen, all,
        "pages in insertion order, nothing skipped or repeated"
    );

    // Exactly one full page: no next.
    let page = store.list_jobs(&everything, None, 25).await.unwrap();
    assert_eq!(page.items.len(), 25);
    assert_eq!(
        page.next, None,
        "a page that ends with the last job has no next"
    );

    let acme = JobFilter {
        tenant: Some("acme".into()),
        ..Default::default()
    };
    let page = store.list_jobs(&acme, None, 100).await.unwrap();
    let want: Vec<_> = all.iter().step_by(2).cloned().collect();
    assert_eq!(
        page.items
            .iter()
            .map(|j| j.new.id.clone())
            .collect::<Vec<_>>(),
        want
    );

    let sync = JobFilter {
        queue: Some("sync".into()),
        ..Default::default()
    };
    let page = store.list_jobs(&sync, None, 100).await.unwrap();
    let want: Vec<_> = (0..25)
        .filter(|i| i % 3 == 1)
        .map(|i| all[i].clone())
        .collect();
    assert_eq!(
        page.items
            .iter()
            .map(|j| j.new.id.clone())
            .collect::<Vec<_>>(),
        want
    );

    // Paging through a filter.
    let first = store.list_jobs(&sync, None, 5).await.unwrap();
    assert_eq!(first.items.len(), 5);
    let rest = store
        .list_jobs(&sync, first.next.as_deref(), 5)
        .await
        .unwrap();
    assert_eq!(rest.items.len(), 3);
    assert_eq!(rest.next, None);
    assert_eq!(rest.items[0].new.id, want[5]);

    // Status: run a few, then list the running ones of acme in sync.
    let claimed = claim(store, 20_000, &[], 100).await;
    assert_eq!(claimed.len(), 25);
    succeed(store, &all[1], 20_001).await;
    succeed(store, &all[4], 20_001).await;
    let succeeded = JobFilter {
        status: Some(JobStatus::Succeeded),
        ..Default::default()
    };
    let page = store.list_jobs(&succeeded, None, 100).await.unwrap();
    assert_eq!(
        page.items
            .iter()
            .map(|j| j.new.id.clone())
            .collect::<Vec<_>>(),
        vec![all[1].clone(), all[4].clone()]
    );
    let combined = JobFilter {
        status: Some(JobStatus::Succeeded),
        tenant: Some("acme".into()),
        queue: Some("sync".into()),
        ..Default::default()
    };
    let page = store.list_jobs(&combined, None, 100).await.unwrap();
    assert_eq!(
        page.items
            .iter()
            .map(|j| j.new.id.clone())
            .collect::<Vec<_>>(),
        vec![all[4].clone()],
        "l04 is acme, sync, succeeded"
    );
    let none = JobFilter {
        tenant: Some("nobody".into()),
        ..Default::default()
    };
    let page = store.list_jobs(&none, None, 10).await.unwrap();
    assert!(page.items.is_empty() && page.next.is_none());
}

/// Parallel queues (and queues without a rule): every due job, earliest `next_attempt_at`
/// first, up to the limit; jobs not yet due stay; a claimed job is not claimed again.
pub async fn claim_parallel<S: JobStore>(store: &S) {
    // Inserted in an order different from their times.
    for (id, at) in [
        ("p3", 300),
        ("p1", 100),
        ("p5", 5_000),
        ("p2", 200),
        ("p4", 400),
    ] {
        insert(store, new_job(id, "default", "", at)).await;
    }
    insert(store, new_job("q1", "unlisted", "acme", 150)).await;
    let parallel = rules(&[("default", QueueMode::Parallel)]);
    assert!(
        claim(store, 50, &parallel, 10).await.is_empty(),
        "nothing due yet"
    );
    assert_eq!(
        claim(store, 1_000, &parallel, 3).await,
        ids(&["p1", "q1", "p2"]),
        "the earliest first, up to the limit; a queue without a rule is parallel"
    );
    assert_eq!(claim(store, 1_000, &parallel, 10).await, ids(&["p3", "p4"]));
    assert!(
        claim(store, 1_000, &parallel, 10).await.is_empty(),
        "running jobs are not claimed twice; p5 is not due"
    );
    assert_eq!(claim(store, 5_000, &[], 10).await, ids(&["p5"]));
    assert!(claim(store, 0, &[], 0).await.is_empty());
    for id in ["p1", "p2", "p3", "p4", "p5", "q1"] {
        assert_eq!(get(store, id).await.status, JobStatus::Running);
    }
}

/// Throttled(n): at most n running per scope, the rest in arrival order (not by time); a
/// job waiting for its retry does not hold back the ones behind it.
pub async fn claim_throttled<S: JobStore>(store: &S) {
    let throttled = rules(&[("sync", QueueMode::Throttled(2))]);
    // acme: five jobs; the third arrives with an earlier time than the first two.
    insert(store, new_job("a1", "sync", "acme", 100)).await;
    insert(store, new_job("a2", "sync", "acme", 110)).await;
    insert(store, new_job("a3", "sync", "acme", 10)).await;
    insert(store, new_job("a4", "sync", "acme", 120)).await;
    insert(store, new_job("a5", "sync", "acme", 130)).await;
    insert(store, new_job("g1", "sync", "globex", 100)).await;
    insert(store, new_job("g2", "sync", "globex", 100)).await;
    insert(store, new_job("g3", "sync", "globex", 100)).await;

    let got = claim(store, 1_000, &throttled, 100).await;
    assert_eq!(
        sorted(got),
        ids(&["a1", "a2", "g1", "g2"]),
        "two per scope, in arrival order"
    );
    assert!(
        claim(store, 1_000, &throttled, 100).await.is_empty(),
        "both scopes are at their cap"
    );
    succeed(store, "a1", 1_001).await;
    assert_eq!(claim(store, 1_002, &throttled, 100).await, ids(&["a3"]));
    assert!(claim(store, 1_002, &throttled, 100).await.is_empty());

    // a2 waits for its retry: a4 takes its place; when a2 is due, a2 waits for a slot.
    retry(store, "a2", 1_003, 5_000, true).await;
    assert_eq!(claim(store, 1_004, &throttled, 100).await, ids(&["a4"]));
    assert!(
        claim(store, 5_000, &throttled, 100).await.is_empty(),
        "a3 and a4 run"
    );
    succeed(store, "a3", 5_001).await;
    assert_eq!(
        claim(store, 5_002, &throttled, 100).await,
        ids(&["a2"]),
        "the older of the waiting jobs (a2 before a5)"
    );

    // The limit applies across scopes.
    succeed(store, "g1", 5_003).await;
    succeed(store, "g2", 5_003).await;
    succeed(store, "a2", 5_003).await;
    let got = claim(store, 5_004, &throttled, 1).await;
    assert_eq!(got.len(), 1);
    let got2 = claim(store, 5_004, &throttled, 10).await;
    assert_eq!(
        sorted([got, got2].concat()),
        ids(&["a5", "g3"]),
        "the rest once there is room"
    );

    // The same queue without a rule would be parallel.
    insert(store, new_job("a6", "sync", "acme", 6_000)).await;
    insert(store, new_job("a7", "sync", "acme", 6_000)).await;
    assert!(claim(store, 6_000, &throttled, 10).await.is_empty());
    assert_eq!(
        sorted(claim(store, 6_000, &[], 10).await),
        ids(&["a6", "a7"])
    );
}

/// Sequential: per scope, only the oldest unfinished job, only when none runs and it is
/// due; a head waiting for its retry (or not yet due) blocks the jobs behind it.
pub async fn claim_sequential<S: JobStore>(store: &S) {
    let seq = rules(&[
        ("orders", QueueMode::Sequential),
        ("ledger", QueueMode::Sequential),
    ]);
    insert(store, new_job("s1", "orders", "acme", 100)).await;
    insert(store, new_job("s2", "orders", "acme", 50)).await;
    insert(store, new_job("s3", "orders", "acme", 60)).await;
    insert(store, new_job("t1", "orders", "globex", 100)).await;
    insert(store, new_job("t2", "orders", "globex", 100)).await;

    assert_eq!(
        sorted(claim(store, 1_000, &seq, 100).await),
        ids(&["s1", "t1"]),
        "one per scope, the first to arrive"
    );
    assert!(
        claim(store, 1_000, &seq, 100).await.is_empty(),
        "one at a time"
    );

    // s1 waits for a retry: s2 must not overtake it.
    retry(store, "s1", 1_001, 3_000, true).await;
    assert!(
        claim(store, 2_000, &seq, 100).await.is_empty(),
        "strict FIFO: a retry_pending head blocks its scope"
    );
    succeed(store, "t1", 2_001).await;
    assert_eq!(
        claim(store, 2_002, &seq, 100).await,
        ids(&["t2"]),
        "globex goes on"
    );
    assert_eq!(claim(store, 3_000, &seq, 100).await, ids(&["s1"]));
    succeed(store, "s1", 3_001).await;
    assert_eq!(claim(store, 3_002, &seq, 100).await, ids(&["s2"]));
    // A failed job is finished: the next one goes.
    store
        .finish_attempt(
            attempt("s2", 1, 3_003),
            Transition::Failed {
                error: "400".into(),
                response: None,
            },
            3_003,
        )
        .await
        .unwrap();
    // A cancelled head is finished too.
    insert(store, new_job("s4", "orders", "acme", 3_004)).await;
    assert_eq!(
        store.cancel_job("s3", 3_004).await.unwrap(),
        Cancelled::Done(Job {
            status: JobStatus::Cancelled,
            updated_at: 3_004,
            next_callback_at: 3_004,
            ..get(store, "s3").await
        })
    );
    assert_eq!(claim(store, 3_005, &seq, 100).await, ids(&["s4"]));

    // A head that is not due yet blocks its scope as well.
    insert(store, new_job("u1", "ledger", "", 9_000)).await;
    insert(store, new_job("u2", "ledger", "", 100)).await;
    assert!(
        claim(store, 5_000, &seq, 100).await.is_empty(),
        "u1 is not due and u2 is behind it"
    );
    assert_eq!(claim(store, 9_000, &seq, 100).await, ids(&["u1"]));

    // A job running out of order (the queue ran in parallel before) holds the scope too.
    insert(store, new_job("v1", "journal", "", 200)).await;
    insert(store, new_job("v2", "journal", "", 50)).await;
    assert_eq!(claim(store, 1_000, &[], 1).await, ids(&["v2"]));
    let journal = rules(&[
        ("orders", QueueMode::Sequential),
        ("ledger", QueueMode::Sequential),
        ("journal", QueueMode::Sequential),
    ]);
    assert!(
        claim(store, 1_000, &journal, 100).await.is_empty(),
        "v1 is the oldest, but v2 runs"
    );
    succeed(store, "v2", 1_001).await;
    assert_eq!(claim(store, 1_002, &journal, 100).await, ids(&["v1"]));
}

/// Where a running job goes after an attempt, how attempts are counted (a retry that does
/// not burn an attempt does not count), and the attempt records.
pub async fn finish_attempt_transitions<S: JobStore>(store: &S) {
    let mut job = new_job("f1", "default", "acme", 100);
    job.callback_url = Some("http://127.0.0.1:1/cb".into());
    insert(store, job).await;
    insert(store, new_job("f2", "default", "acme", 100)).await;
    insert(store, new_job("f3", "default", "acme", 100)).await;
    assert_eq!(claim(store, 200, &[], 10).await.len(), 3);

    let j = retry(store, "f1", 300, 1_000, true).await;
    assert_eq!(j.status, JobStatus::RetryPending);
    assert_eq!(j.attempts, 1, "a retry burns an attempt");
    assert_eq!(j.next_attempt_at, 1_000);
    assert_eq!(j.updated_at, 300);
    assert_eq!(j.last_error.as_deref(), Some("429 Too Many Requests"));
    assert_eq!(j.callback, CallbackState::Pending);
    assert_eq!(get(store, "f1").await, j);
    assert!(claim(store, 999, &[], 10).await.is_empty());
    assert_eq!(claim(store, 1_000, &[], 10).await, ids(&["f1"]));

    let j = retry(store, "f1", 1_100, 60_000, false).await;
    assert_eq!(j.status, JobStatus::RetryPending);
    assert_eq!(j.attempts, 1, "a rescheduled attempt does not count");
    assert_eq!(j.next_attempt_at, 60_000);
    assert_eq!(claim(store, 60_000, &[], 10).await, ids(&["f1"]));

    let j = succeed(store, "f1", 60_100).await;
    assert_eq!(j.status, JobStatus::Succeeded);
    assert_eq!(j.attempts, 2);
    assert_eq!(j.response, Some(ok_response()));
    assert_eq!(j.callback, CallbackState::Pending);
    assert_eq!(j.next_callback_at, 60_100, "the callback is due now");
    assert_eq!(j.updated_at, 60_100);
    assert_eq!(get(store, "f1").await, j);

    let failed_response = JobResponse {
        status: 422,
        headers: vec![],
        body: b"bad email".to_vec(),
    };
    let j = store
        .finish_attempt(
            attempt("f2", 1, 400),
            Transition::Failed {
                error: "422 Unprocessable Entity".into(),
                response: Some(failed_response.clone()),
            },
            400,
        )
        .await
        .unwrap();
    assert_eq!(j.status, JobStatus::Failed);
    assert_eq!(j.attempts, 1);
    assert_eq!(j.last_error.as_deref(), Some("422 Unprocessable Entity"));
    assert_eq!(j.response, Some(failed_response));
    assert_eq!(j.callback, CallbackState::None, "no callback URL");

    let j = store
        .finish_attempt(
            AttemptRecord {
                status: None,
                error: Some("connection refused".into()),
                ..attempt("f3", 1, 500)
            },
            Transition::Failed {
                error: "connection refused".into(),
                response: None,
            },
            500,
        )
        .await
        .unwrap();
    assert_eq!(
        (j.status, j.attempts, j.response),
        (JobStatus::Failed, 1, None)
    );

    let records = store.attempts("f1").await.unwrap();
    assert_eq!(records.len(), 3);
    assert_eq!(records[0], attempt("f1", 1, 300));
    assert_eq!(records[1].number, 2, "the number of the next real attempt");
    assert_eq!(records[1].started_at, 1_100);
    assert_eq!(records[2].number, 2);
    assert_eq!(records[2].finished_at, 60_105);
    let records = store.attempts("f3").await.unwrap();
    assert_eq!(records.len(), 1);
    assert_eq!(records[0].status, None);
    assert_eq!(records[0].error.as_deref(), Some("connection refused"));

    // A final job is not moved again by a late attempt.
    let j = succeed(store, "f2", 700).await;
    assert_eq!(j.status, JobStatus::Failed, "a final job stays final");
    assert!(store
        .finish_attempt(
            attempt("missing", 1, 1),
            Transition::Succeeded {
                response: ok_response()
            },
            1
        )
        .await
        .is_err());
}

/// Cancel: queued and retry_pending jobs are cancelled (their callback becomes due), running
/// and final ones are unchanged, an unknown id is NotFound; a cancelled job never runs.
pub async fn cancel_job<S: JobStore>(store: &S) {
    let mut queued = new_job("c1", "default", "", 150);
    queued.callback_url = Some("http://127.0.0.1:1/cb".into());
    insert(store, queued).await;
    insert(store, new_job("c2", "default", "", 100)).await;
    insert(store, new_job("c3", "default", "", 100)).await;
    assert_eq!(claim(store, 100, &[], 2).await, ids(&["c2", "c3"]));
    retry(store, "c2", 150, 10_000, true).await;

    match store.cancel_job("c1", 200).await.unwrap() {
        Cancelled::Done(j) => {
            assert_eq!(j.status, JobStatus::Cancelled);
            assert_eq!(j.updated_at, 200);
            assert_eq!(j.callback, CallbackState::Pending);
            assert_eq!(j.next_callback_at, 200);
            assert_eq!(get(store, "c1").await, j);
        }
        other => panic!("a queued job is cancelled, got {other:?}"),
    }
    match store.cancel_job("c2", 201).await.unwrap() {
        Cancelled::Done(j) => {
            assert_eq!(j.status, JobStatus::Cancelled);
            assert_eq!(j.attempts, 1);
        }
        other => panic!("a retry_pending job is cancelled, got {other:?}"),
    }
    let running = get(store, "c3").await;
    assert_eq!(
        store.cancel_job("c3", 202).await.unwrap(),
        Cancelled::Unchanged(running)
    );
    let done = succeed(store, "c3", 203).await;
    assert_eq!(
        store.cancel_job("c3", 204).await.unwrap(),
        Cancelled::Unchanged(done)
    );
    let cancelled = get(store, "c1").await;
    assert_eq!(
        store.cancel_job("c1", 205).await.unwrap(),
        Cancelled::Unchanged(cancelled)
    );
    assert_eq!(
        store.cancel_job("nope", 206).await.unwrap(),
        Cancelled::NotFound
    );
    assert!(claim(store, 100_000, &[], 10).await.is_empty());
    assert_eq!(store.next_ready_at().await.unwrap(), None);
}

/// After a crash, running jobs go back to queued (attempts unchanged) and run again.
pub async fn requeue_running<S: JobStore>(store: &S) {
    for i in 0..4 {
        insert(store, new_job(&format!("r{i}"), "default", "", 100 + i)).await;
    }
    assert_eq!(claim(store, 1_000, &[], 3).await.len(), 3);
    retry(store, "r0", 1_001, 2_000, true).await;
    assert_eq!(claim(store, 2_000, &[], 10).await.len(), 2, "r0 and r3");
    assert_eq!(store.requeue_running(3_000).await.unwrap(), 4);
    for i in 0..4 {
        let j = get(store, &format!("r{i}")).await;
        assert_eq!(j.status, JobStatus::Queued);
        assert_eq!(j.updated_at, 3_000);
    }
    assert_eq!(get(store, "r0").await.attempts, 1);
    assert_eq!(store.requeue_running(3_001).await.unwrap(), 0);
    assert_eq!(claim(store, 3_000, &[], 10).await.len(), 4);
}

/// The earliest time a waiting (queued or retry_pending) job is due; running and final
/// jobs do not count.
pub async fn next_ready_at<S: JobStore>(store: &S) {
    assert_eq!(store.next_ready_at().await.unwrap(), None);
    insert(store, new_job("n1", "default", "", 500)).await;
    insert(store, new_job("n2", "default", "", 300)).await;
    assert_eq!(store.next_ready_at().await.unwrap(), Some(300));
    assert_eq!(claim(store, 300, &[], 10).await, ids(&["n2"]));
    assert_eq!(store.next_ready_at().await.unwrap(), Some(500));
    retry(store, "n2", 400, 450, true).await;
    assert_eq!(store.next_ready_at().await.unwrap(), Some(450));
    assert_eq!(claim(store, 1_000, &[], 10).await.len(), 2);
    assert_eq!(store.next_ready_at().await.unwrap(), None);
}

/// Callbacks are due once a job with a callback URL is final, at `next_callback_at`; a
/// failed delivery is retried at the time given, a delivered or abandoned one never again.
pub async fn callbacks<S: JobStore>(store: &S) {
    for id in ["cb1", "cb2", "cb3", "cb4"] {
        let mut j = new_job(id, "default", "", 100);
        j.callback_url = Some(format!("http://127.0.0.1:1/{id}"));
        insert(store, j).await;
    }
    insert(store, new_job("plain", "default", "", 100)).await;
    assert!(
        store.due_callbacks(1_000, 10).await.unwrap().is_empty(),
        "nothing final"
    );
    assert_eq!(claim(store, 100, &[], 10).await.len(), 5);
    succeed(store, "cb1", 200).await;
    succeed(store, "plain", 200).await;
    store
        .finish_attempt(
            attempt("cb2", 1, 300),
            Transition::Failed {
                error: "no".into(),
                response: None,
            },
            300,
        )
        .await
        .unwrap();
    retry(store, "cb3", 300, 5_000, true).await;
    assert!(store.due_callbacks(199, 10).await.unwrap().is_empty());
    let due: Vec<_> = store
        .due_callbacks(1_000, 10)
        .await
        .unwrap()
        .into_iter()
        .map(|j| j.new.id)
        .collect();
    assert_eq!(
        due,
        ids(&["cb1", "cb2"]),
        "final jobs with a URL, earliest first"
    );
    assert_eq!(
        store.due_callbacks(1_000, 1).await.unwrap().len(),
        1,
        "limit"
    );

    store.callback_attempted("cb1", true, None).await.unwrap();
    let j = get(store, "cb1").await;
    assert_eq!(
        (j.callback, j.callback_attempts),
        (CallbackState::Delivered, 1)
    );

    store
        .callback_attempted("cb2", false, Some(2_000))
        .await
        .unwrap();
    let j = get(store, "cb2").await;
    assert_eq!(j.callback, CallbackState::Pending);
    assert_eq!((j.callback_attempts, j.next_callback_at), (1, 2_000));
    assert!(store.due_callbacks(1_999, 10).await.unwrap().is_empty());
    assert_eq!(store.due_callbacks(2_000, 10).await.unwrap().len(), 1);
    store.callback_attempted("cb2", false, None).await.unwrap();
    let j = get(store, "cb2").await;
    assert_eq!(
        (j.callback, j.callback_attempts),
        (CallbackState::Failed, 2)
    );

    // Cancelling makes the callback due too.
    store.cancel_job("cb3", 3_000).await.unwrap();
    let due: Vec<_> = store
        .due_callbacks(3_000, 10)
        .await
        .unwrap()
        .into_iter()
        .map(|j| j.new.id)
        .collect();
    assert_eq!(due, ids(&["cb3"]));
    assert!(store.callback_attempted("nope", true, None).await.is_err());

    // Postponed (being delivered, or held back by a limit): due again at the time given,
    // without an attempt counted; a final callback state is left alone.
    store
        .postpone_callbacks(&ids(&["cb3", "cb1"]), 4_000)
        .await
        .unwrap();
    assert!(store.due_callbacks(3_999, 10).await.unwrap().is_empty());
    let j = get(store, "cb3").await;
    assert_eq!(
        (j.callback, j.callback_attempts, j.next_callback_at),
        (CallbackState::Pending, 0, 4_000)
    );
    assert_eq!(get(store, "cb1").await.callback, CallbackState::Delivered);
    let due: Vec<_> = store
        .due_callbacks(4_000, 10)
        .await
        .unwrap()
        .into_iter()
        .map(|j| j.new.id)
        .collect();
    assert_eq!(due, ids(&["cb3"]));
    store.postpone_callbacks(&[], 5_000).await.unwrap();
}

// ---- batches ---------------------------------------------------------------------------

/// A batch of `n` records `r0…` created at `at`.
pub fn new_batch(id: &str, n: usize, max_batch_size: u32, at: Millis) -> NewBatch {
    NewBatch {
        id: id.to_string(),
        upstream: "crm".into(),
        tenant: Some("acme".into()),
        lane: Lane::Bulk,
        format: r#"{"kind":"hubspot"}"#.into(),
        max_batch_size,
        request: JobRequest {
            method: "POST".into(),
            path: "/crm/v3/objects/contacts/batch/upsert".into(),
            query: Some("archived=false".into()),
            headers: vec![("x-source".into(), "import".into())],
            body: None,
            body_is_json: false,
        },
        max_attempts: 3,
        callback_url: None,
        created_at: at,
        records: (0..n)
            .map(|i| NewRecord {
                record_id: format!("r{i}"),
                payload: format!(r#"{{"email":"u{i}@example.com"}}"#).into_bytes(),
            })
            .collect(),
        asynchronous: false,
    }
}

/// Exports: stored queued; a claim leases one and makes it running; each step stores its
/// page with the next locator, under the lease only; a cancel makes it due and cancelled,
/// and a step does not undo the cancel.
pub async fn exports<S: BatchStore>(store: &S) {
    let new = |id: &str| NewExport {
        id: id.into(),
        upstream: "sf".into(),
        tenant: Some("acme".into()),
        lane: Lane::Bulk,
        request: JobRequest {
            method: "POST".into(),
            path: "/services/data/v62.0/jobs/query".into(),
            query: None,
            headers: vec![("x-a".into(), "b".into())],
            body: None,
            body_is_json: false,
        },
        job: r#"{"operation":"query","query":"SELECT Id FROM Account"}"#.into(),
        page_size: 1000,
        created_at: 10,
    };
    let v = store.insert_export(new("x1")).await.unwrap();
    assert_eq!((v.status, v.pages), (ExportStatus::Queued, 0));
    let t = store.claim_export(10, "a/1", 1_000).await.unwrap().unwrap();
    assert_eq!(
        (t.id.as_str(), t.phase, t.resumed),
        ("x1", ExportPhase::Create, false)
    );
    assert_eq!(
        t.request.headers,
        vec![("x-a".to_string(), "b".to_string())]
    );
    assert!(
        store
            .claim_export(10, "b/1", 1_000)
            .await
            .unwrap()
            .is_none(),
        "leased"
    );
    let step = |phase, page: Option<(u64, Vec<u8>)>, locator: Option<&str>, next_at| ExportStep {
        phase,
        status: ExportStatus::Running,
        job_id: Some("750q".into()),
        state: Some("JobComplete".into()),
        error: None,
        locator: locator.map(str::to_string),
        polls: 1,
        calls: 1,
        next_at,
        page,
    };
    assert!(store
        .save_export(&t, &step(ExportPhase::Page, None, None, 20), 11)
        .await
        .unwrap());
    let t = store.claim_export(20, "a/2", 1_000).await.unwrap().unwrap();
    let page1 = b"\"Id\"\n\"001\"\n".to_vec();
    assert!(store
        .save_export(
            &t,
            &step(
                ExportPhase::Page,
                Some((1, page1.clone())),
                Some("MTAwMA"),
                30
            ),
            21
        )
        .await
        .unwrap());
    assert!(
        !store
            .save_export(
                &t,
                &step(ExportPhase::Page, Some((1, page1.clone())), None, 30),
                22
            )
            .await
            .unwrap(),
        "a stale holder stores nothing"
    );
    assert_eq!(store.export_page("x1", 1).await.unwrap(), Some(page1));
    assert_eq!(store.export_page("x1", 2).await.unwrap(), None);
    let v = store.get_export("x1").await.unwrap().unwrap();
    assert_eq!(
        (v.status, v.pages, v.records, v.calls),
        (ExportStatus::Running, 1, 1, 2)
    );
    assert_eq!(store.next_export_at().await.unwrap(), Some(30));
    // Taken over once the lease runs out: resumed, at the stored locator.
    let t = store.claim_export(30, "a/3", 1_000).await.unwrap().unwrap();
    assert_eq!(t.locator.as_deref(), Some("MTAwMA"));
    assert_eq!(t.pages, 1);
    let t2 = store
        .claim_export(1_031, "b/2", 1_000)
        .await
        .unwrap()
        .unwrap();
    assert!(t2.resumed);
    // Cancelled: due now and cancelled; the step that follows keeps it cancelled.
    let v = store.cancel_export("x1", 1_100).await.unwrap().unwrap();
    assert_eq!(v.status, ExportStatus::Cancelled);
    let mut end = step(ExportPhase::Done, None, None, 0);
    end.status = ExportStatus::Succeeded;
    assert!(store.save_export(&t2, &end, 1_200).await.unwrap());
    assert_eq!(
        store.get_export("x1").await.unwrap().unwrap().status,
        ExportStatus::Cancelled
    );
    assert!(
        store
            .claim_export(5_000, "a/4", 1_000)
            .await
            .unwrap()
            .is_none(),
        "done"
    );
    assert!(store.get_export("nope").await.unwrap().is_none());
}

fn step(job: &BulkJob, phase: BulkPhase, next_at: Millis) -> BulkStep {
    BulkStep {
        job_id: Some("750000000000001".into()),
        phase,
        state: Some("InProgress".into()),
        error: None,
        polls: job.polls + 1,
        calls: 1,
        next_at,
        abandoned: None,
    }
}

/// Async batches go as bulk jobs: a claim makes a job of a chunk and leases it; its steps
/// are stored; a lease that runs out hands the job to the next claim as resumed; a restart
/// does not requeue a job's records (the job resumes); its end records the outcomes and the
/// calls at once; a cancel makes the job due at once.
pub async fn bulk_jobs<S: BatchStore>(store: &S) {
    let mut b = new_batch("bulk", 250, 100, 0);
    b.asynchronous = true;
    store.insert_batch(b).await.unwrap();
    store
        .insert_batch(new_batch("sync", 5, 100, 0))
        .await
        .unwrap();
    // Async batches are not chunks of calls.
    let c = store.claim_chunk(0, &[]).await.unwrap().unwrap();
    assert_eq!(c.batch.id, "sync");
    assert!(store
        .claim_chunk(0, &["sync".into()])
        .await
        .unwrap()
        .is_none());
    store.finish_chunk(&c, &all_succeeded(&c), 1).await.unwrap();

    let a = store
        .claim_bulk_job(10, "node-a", 1_000, 2)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (a.phase, a.records, a.resumed),
        (BulkPhase::Create, 100, false)
    );
    let b = store
        .claim_bulk_job(10, "node-a", 1_000, 2)
        .await
        .unwrap()
        .unwrap();
    assert_ne!(a.chunk_id, b.chunk_id);
    assert!(
        store
            .claim_bulk_job(10, "node-a", 1_000, 2)
            .await
            .unwrap()
            .is_none(),
        "two jobs per batch at most, both leased"
    );
    assert_eq!(store.bulk_job_records(&a).await.unwrap().len(), 100);
    // A step is stored and the lease given back; a stale holder stores nothing.
    assert!(store
        .save_bulk_job(&a, &step(&a, BulkPhase::Poll, 50), 20)
        .await
        .unwrap());
    assert!(!store
        .save_bulk_job(&a, &step(&a, BulkPhase::Upload, 50), 21)
        .await
        .unwrap());
    assert_eq!(store.next_bulk_job_at().await.unwrap(), Some(50));
    let a2 = store
        .claim_bulk_job(50, "node-b", 1_000, 2)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(a2.chunk_id, a.chunk_id);
    assert_eq!(
        (a2.phase, a2.polls, a2.calls, a2.resumed),
        (BulkPhase::Poll, 1, 1, false)
    );
    assert_eq!(a2.job_id.as_deref(), Some("750000000000001"));
    // b's holder stops; once its lease runs out the job goes to the next claim, resumed.
    assert!(store
        .claim_bulk_job(500, "node-c", 1_000, 2)
        .await
        .unwrap()
        .is_none());
    let b2 = store
        .claim_bulk_job(1_010, "node-c", 1_000, 2)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (b2.chunk_id.as_str(), b2.resumed),
        (b.chunk_id.as_str(), true)
    );
    // A restart does not send a job's records again.
    assert_eq!(store.requeue_in_flight(1_100).await.unwrap(), 0);
    assert_eq!(batch(store, "bulk").await.possibly_duplicated, 0);

    let records = store.bulk_job_records(&a2).await.unwrap();
    let results: Vec<RecordResult> = records
        .iter()
        .map(|r| match r.index % 10 {
            0 => RecordResult::Failed {
                error: "REQUIRED_FIELD_MISSING".into(),
            },
            1 => RecordResult::Retry {
                at: 2_000,
                error: "UNABLE_TO_LOCK_ROW".into(),
                burn_attempt: true,
            },
            _ => RecordResult::Succeeded,
        })
        .collect();
    let done = BulkStep {
        phase: BulkPhase::Done,
        ..step(&a2, BulkPhase::Done, 0)
    };
    store
        .finish_bulk_job(&a2, &records, &results, &done, 1_200)
        .await
        .unwrap();
    let s = batch(store, "bulk").await;
    assert_eq!((s.succeeded, s.failed, s.calls), (80, 10, 2), "{s:?}");
    assert_eq!(
        s.pending, 160,
        "50 never sent, 10 to retry, and b's 100 in flight"
    );
    let jobs = store.list_bulk_jobs("bulk").await.unwrap();
    assert_eq!(jobs.len(), 2);
    assert!(jobs
        .iter()
        .any(|j| j.phase == BulkPhase::Done && j.polls == 2));
    // A cancel makes the job under way due now, to be aborted.
    assert!(store
        .save_bulk_job(&b2, &step(&b2, BulkPhase::Poll, 90_000), 1_300)
        .await
        .unwrap());
    store.cancel_batch("bulk", 1_400).await.unwrap();
    let b3 = store
        .claim_bulk_job(1_400, "node-c", 1_000, 2)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (b3.chunk_id.as_str(), b3.cancelled),
        (b.chunk_id.as_str(), true)
    );
}

async fn batch<S: BatchStore>(store: &S, id: &str) -> BatchSummary {
    store
        .get_batch(id, 100)
        .await
        .expect("get_batch")
        .unwrap_or_else(|| panic!("batch {id} is missing"))
}

async fn chunk<S: BatchStore>(store: &S, now: Millis, busy: &[String]) -> Chunk {
    store
        .claim_chunk(now, busy)
        .await
        .expect("claim_chunk")
        .expect("a chunk is due")
}

fn indexes(chunk: &Chunk) -> Vec<u64> {
    chunk.records.iter().map(|r| r.index).collect()
}

fn all_succeeded(chunk: &Chunk) -> Vec<RecordResult> {
    vec![RecordResult::Succeeded; chunk.records.len()]
}

/// Inserting 1,000 records, then chunks of at most `max_batch_size` lowest-index records,
/// each record once, with its payload and the batch's request; `busy` batches are skipped.
pub async fn batch_insert_and_claim<S: JobStore + BatchStore>(store: &S) {
    assert!(store.claim_chunk(0, &[]).await.unwrap().is_none());
    assert_eq!(store.next_chunk_at().await.unwrap(), None);
    let new = new_batch("b1", 1_000, 100, 1_000);
    let summary = store.insert_batch(new.clone()).await.unwrap();
    assert_eq!(summary.id, "b1");
    assert_eq!(summary.status, BatchStatus::Queued);
    assert_eq!((summary.total, summary.pending), (1_000, 1_000));
    assert_eq!(
        (summary.succeeded, summary.failed, summary.calls),
        (0, 0, 0)
    );
    assert_eq!(summary.tenant.as_deref(), Some("acme"));
    assert_eq!(batch(store, "b1").await, summary);
    assert!(store.get_batch("nope", 10).await.unwrap().is_none());
    assert_eq!(store.next_chunk_at().await.unwrap(), Some(1_000));

    assert!(
        store.claim_chunk(999, &[]).await.unwrap().is_none(),
        "not due yet"
    );
    let c1 = chunk(store, 1_000, &[]).await;
    assert_eq!(indexes(&c1), (0..100).collect::<Vec<u64>>());
    assert_eq!(c1.batch.id, "b1");
    assert_eq!(c1.batch.request, new.request);
    assert_eq!(c1.batch.format, new.format);
    assert_eq!((c1.batch.max_batch_size, c1.batch.max_attempts), (100, 3));
    assert_eq!(c1.batch.lane, Lane::Bulk);
    assert_eq!(c1.batch.upstream, "crm");
    for r in &c1.records {
        assert_eq!(r.record_id, format!("r{}", r.index));
        assert_eq!(r.payload, new.records[r.index as usize].payload);
        assert_eq!(r.attempts, 0);
    }
    let s = batch(store, "b1").await;
    assert_eq!(s.status, BatchStatus::Running);
    assert_eq!(s.pending, 1_000, "in flight counts as pending");

    let c2 = chunk(store, 1_000, &[]).await;
    assert_eq!(indexes(&c2), (100..200).collect::<Vec<u64>>());
    assert_ne!(c1.chunk_id, c2.chunk_id);
    assert!(
        store
            .claim_chunk(1_000, &["b1".to_string()])
            .await
            .unwrap()
            .is_none(),
        "a busy batch is skipped"
    );
    let mut seen: BTreeSet<u64> = indexes(&c1).into_iter().chain(indexes(&c2)).collect();
    for _ in 0..8 {
        let c = chunk(store, 1_000, &["other".to_string()]).await;
        assert!(c.records.len() <= 100);
        for i in indexes(&c) {
            assert!(seen.insert(i), "record {i} claimed twice");
        }
    }
    assert_eq!(seen.len(), 1_000);
    assert!(
        store.claim_chunk(1_000, &[]).await.unwrap().is_none(),
        "all in flight"
    );
    assert_eq!(store.next_chunk_at().await.unwrap(), None);
    let err = store
        .finish_chunk(&c1, &[RecordResult::Succeeded], 1_001)
        .await;
    assert!(err.is_err(), "one result per record");
}

/// A chunk's mixed outcome: counts, failures (lowest index first, limited), retries due
/// later and claimed first then, the call count, and the final status.
pub async fn batch_finish_counts_and_completion<S: BatchStore>(store: &S) {
    store
        .insert_batch(new_batch("b1", 1_000, 100, 0))
        .await
        .unwrap();
    let c = chunk(store, 10, &[]).await;
    let results: Vec<_> = (0..100)
        .map(|i| match i {
            0..=89 => RecordResult::Succeeded,
            90..=94 => RecordResult::Failed {
                error: format!("INVALID_EMAIL r{i}"),
            },
            _ => RecordResult::Retry {
                at: 5_000,
                error: "rate limited".into(),
                burn_attempt: true,
            },
        })
        .collect();
    store.finish_chunk(&c, &results, 20).await.unwrap();
    let s = batch(store, "b1").await;
    assert_eq!((s.succeeded, s.failed, s.pending, s.calls), (90, 5, 905, 1));
    assert_eq!(s.status, BatchStatus::Running);
    assert_eq!(s.updated_at, 20);
    assert_eq!(
        s.failures,
        (90..95)
            .map(|i| RecordFailure {
                index: i,
                record_id: format!("r{i}"),
                error: format!("INVALID_EMAIL r{i}"),
            })
            .collect::<Vec<_>>()
    );
    let few = store.get_batch("b1", 2).await.unwrap().unwrap();
    assert_eq!(few.failures.len(), 2);
    assert_eq!(few.failures[0].index, 90);
    assert_eq!(few.failed, 5);

    // Finishing the same chunk again changes nothing.
    store.finish_chunk(&c, &results, 21).await.unwrap();
    let again = batch(store, "b1").await;
    assert_eq!(
        (again.succeeded, again.failed, again.pending, again.calls),
        (90, 5, 905, 1)
    );

    // Before the retries are due, the next records go; then the retries first.
    let c = chunk(store, 100, &[]).await;
    assert_eq!(indexes(&c), (100..200).collect::<Vec<u64>>());
    store
        .finish_chunk(&c, &all_succeeded(&c), 110)
        .await
        .unwrap();
    assert_eq!(store.next_chunk_at().await.unwrap(), Some(0));
    let c = chunk(store, 5_000, &[]).await;
    let want: Vec<u64> = (95..100).chain(200..295).collect();
    assert_eq!(indexes(&c), want, "lowest index first, retries included");
    assert!(c.records[..5].iter().all(|r| r.attempts == 1));
    assert!(c.records[5..].iter().all(|r| r.attempts == 0));
    store
        .finish_chunk(&c, &all_succeeded(&c), 5_001)
        .await
        .unwrap();

    let mut calls = 3;
    while let Some(c) = store.claim_chunk(6_000, &[]).await.unwrap() {
        store
            .finish_chunk(&c, &all_succeeded(&c), 6_001)
            .await
            .unwrap();
        calls += 1;
    }
    let s = batch(store, "b1").await;
    assert_eq!((s.succeeded, s.failed, s.pending), (995, 5, 0));
    assert_eq!(s.calls, calls);
    assert_eq!(s.calls, 11);
    assert_eq!(s.status, BatchStatus::CompletedWithFailures);
    assert_eq!(store.next_chunk_at().await.unwrap(), None);

    store
        .insert_batch(new_batch("b2", 250, 100, 7_000))
        .await
        .unwrap();
    while let Some(c) = store.claim_chunk(7_000, &[]).await.unwrap() {
        assert_eq!(c.batch.id, "b2");
        store
            .finish_chunk(&c, &all_succeeded(&c), 7_001)
            .await
            .unwrap();
    }
    let s = batch(store, "b2").await;
    assert_eq!(s.status, BatchStatus::Succeeded);
    assert_eq!((s.succeeded, s.pending, s.calls), (250, 0, 3));
    assert!(s.failures.is_empty());
}

/// Batches take turns: a second batch does not wait for the first to finish.
pub async fn batch_turns<S: BatchStore>(store: &S) {
    store
        .insert_batch(new_batch("a", 500, 50, 0))
        .await
        .unwrap();
    store
        .insert_batch(new_batch("b", 500, 50, 10))
        .await
        .unwrap();
    let mut order = Vec::new();
    for _ in 0..4 {
        let c = chunk(store, 100, &[]).await;
        order.push(c.batch.id.clone());
        store
            .finish_chunk(&c, &all_succeeded(&c), 100)
            .await
            .unwrap();
    }
    assert_eq!(order, ids(&["a", "b", "a", "b"]), "batches alternate");
    let c = chunk(store, 100, &["a".to_string()]).await;
    assert_eq!(c.batch.id, "b");
}

/// A record that keeps failing for a retryable reason fails for good when its attempts reach
/// `max_attempts` (with the last error); retries that do not burn an attempt do not count.
pub async fn batch_max_attempts<S: BatchStore>(store: &S) {
    store.insert_batch(new_batch("m", 2, 10, 0)).await.unwrap();
    let throttled = |at| RecordResult::Retry {
        at,
        error: "429 whole call throttled".into(),
        burn_attempt: false,
    };
    let flaky = |at| RecordResult::Retry {
        at,
        error: format!("503 at {at}"),
        burn_attempt: true,
    };
    let mut now = 0;
    for _ in 0..5 {
        let c = chunk(store, now, &[]).await;
        assert_eq!(c.records.len(), 2);
        assert!(
            c.records.iter().all(|r| r.attempts == 0),
            "throttling is free"
        );
        store
            .finish_chunk(&c, &[throttled(now + 10), throttled(now + 10)], now + 1)
            .await
            .unwrap();
        now += 10;
    }
    let c = chunk(store, now, &[]).await;
    assert_eq!(indexes(&c), vec![0, 1]);
    store
        .finish_chunk(&c, &[flaky(now + 10), RecordResult::Succeeded], now + 1)
        .await
        .unwrap();
    now += 10;
    assert_eq!(batch(store, "m").await.pending, 1);
    // Record 1 succeeded and is never sent again; two more burning failures exhaust
    // record 0.
    let mut attempts_seen = Vec::new();
    while let Some(c) = store.claim_chunk(now, &[]).await.unwrap() {
        assert_eq!(
            indexes(&c),
            vec![0],
            "only the record that failed goes again"
        );
        attempts_seen.push(c.records[0].attempts);
        store
            .finish_chunk(&c, &[flaky(now + 10)], now + 1)
            .await
            .unwrap();
        now += 10;
        assert!(attempts_seen.len() < 10, "a retried record never fails");
    }
    assert_eq!(attempts_seen, vec![1, 2], "attempts before each chunk");
    let s = batch(store, "m").await;
    assert_eq!((s.succeeded, s.failed, s.pending), (1, 1, 0));
    assert_eq!(s.status, BatchStatus::CompletedWithFailures);
    assert_eq!(s.failures.len(), 1);
    assert_eq!(s.failures[0].index, 0);
    assert!(
        s.failures[0].error.starts_with("503"),
        "the last error is kept: {}",
        s.failures[0].error
    );
}

/// After a crash, records in flight go back to pending and count as possibly duplicated;
/// the chunks from before the crash can no longer move them.
pub async fn batch_requeue_in_flight<S: BatchStore>(store: &S) {
    store
        .insert_batch(new_batch("q", 300, 100, 0))
        .await
        .unwrap();
    store
        .insert_batch(new_batch("idle", 10, 100, 0))
        .await
        .unwrap();
    let c1 = chunk(store, 0, &["idle".to_string()]).await;
    let c2 = chunk(store, 0, &["idle".to_string()]).await;
    let c3 = chunk(store, 0, &["idle".to_string()]).await;
    store
        .finish_chunk(&c3, &all_succeeded(&c3), 1)
        .await
        .unwrap();
    assert_eq!(store.requeue_in_flight(5).await.unwrap(), 200);
    let s = batch(store, "q").await;
    assert_eq!(
        (s.pending, s.succeeded, s.possibly_duplicated),
        (200, 100, 200)
    );
    assert_eq!(batch(store, "idle").await.possibly_duplicated, 0);
    assert_eq!(store.requeue_in_flight(6).await.unwrap(), 0);

    // The old chunks are stale.
    store
        .finish_chunk(&c1, &all_succeeded(&c1), 7)
        .await
        .unwrap();
    let s = batch(store, "q").await;
    assert_eq!(
        (s.pending, s.succeeded, s.calls),
        (200, 100, 1),
        "a stale chunk moves nothing"
    );

    let again = chunk(store, 10, &["idle".to_string()]).await;
    assert_eq!(indexes(&again), indexes(&c1), "requeued records go again");
    store
        .finish_chunk(&again, &all_succeeded(&again), 11)
        .await
        .unwrap();
    let again = chunk(store, 10, &["idle".to_string()]).await;
    assert_eq!(indexes(&again), indexes(&c2));
    store
        .finish_chunk(&again, &all_succeeded(&again), 11)
        .await
        .unwrap();
    let s = batch(store, "q").await;
    assert_eq!(
        (s.succeeded, s.pending, s.possibly_duplicated),
        (300, 0, 200)
    );
    assert_eq!(s.status, BatchStatus::Succeeded);
}

/// Cancel: pending records are cancelled, records in flight finish, nothing more is claimed;
/// a finished batch keeps its status; an unknown id is None.
pub async fn batch_cancel<S: BatchStore>(store: &S) {
    store
        .insert_batch(new_batch("x", 500, 100, 0))
        .await
        .unwrap();
    let c = chunk(store, 0, &[]).await;
    let s = store
        .cancel_batch("x", 50)
        .await
        .unwrap()
        .expect("the batch");
    assert_eq!(s.status, BatchStatus::Cancelled);
    assert_eq!(s.pending, 100, "only the records in flight are left");
    assert_eq!(s.updated_at, 50);
    assert!(store.claim_chunk(100, &[]).await.unwrap().is_none());
    assert_eq!(store.next_chunk_at().await.unwrap(), None);
    let mut results = all_succeeded(&c);
    results[0] = RecordResult::Retry {
        at: 60,
        error: "503".into(),
        burn_attempt: true,
    };
    results[1] = RecordResult::Failed {
        error: "bad".into(),
    };
    store.finish_chunk(&c, &results, 60).await.unwrap();
    let s = batch(store, "x").await;
    assert_eq!(s.status, BatchStatus::Cancelled);
    assert_eq!((s.succeeded, s.failed, s.pending, s.calls), (98, 1, 0, 1));
    assert!(
        store.claim_chunk(1_000, &[]).await.unwrap().is_none(),
        "a retry is not sent"
    );

    store
        .insert_batch(new_batch("done", 5, 10, 0))
        .await
        .unwrap();
    let c = chunk(store, 0, &[]).await;
    store.finish_chunk(&c, &all_succeeded(&c), 1).await.unwrap();
    let s = store.cancel_batch("done", 2).await.unwrap().unwrap();
    assert_eq!(
        s.status,
        BatchStatus::Succeeded,
        "a finished batch stays as it is"
    );
    assert!(store.cancel_batch("nope", 3).await.unwrap().is_none());
}

/// A batch's callback is due once the batch is final with nothing in flight, not before; a
/// failed delivery waits for its next time; a delivered one is not due again; a batch without
/// a callback URL never is; a final batch with its callback pending is kept by retention.
pub async fn batch_callbacks<S: BatchStore>(store: &S) {
    let mut with = new_batch("cb", 150, 100, 0);
    with.callback_url = Some("https://hooks.example.com/done".into());
    store.insert_batch(with).await.unwrap();
    store
        .insert_batch(new_batch("quiet", 5, 100, 0))
        .await
        .unwrap();
    assert!(store.due_batch_callbacks(10, 10).await.unwrap().is_empty());
    let mut now = 1;
    let mut before_final = 0;
    while let Some(c) = store.claim_chunk(now, &[]).await.unwrap() {
        store
            .finish_chunk(&c, &all_succeeded(&c), now)
            .await
            .unwrap();
        now += 1;
        if batch(store, "cb").await.status != BatchStatus::Succeeded {
            before_final += 1;
            assert!(
                store.due_batch_callbacks(now, 10).await.unwrap().is_empty(),
                "not before the batch is final"
            );
        }
    }
    assert!(before_final >= 1, "the batch took more than one chunk");
    let due = store.due_batch_callbacks(10, 10).await.unwrap();
    assert_eq!(due.len(), 1, "only the batch with a callback URL: {due:?}");
    assert_eq!(due[0].id, "cb");
    assert_eq!(due[0].tenant.as_deref(), Some("acme"));
    assert_eq!(due[0].callback_url, "https://hooks.example.com/done");
    assert_eq!(due[0].attempts, 0);

    store
        .batch_callback_attempted("cb", false, Some(1_000))
        .await
        .unwrap();
    assert!(store.due_batch_callbacks(999, 10).await.unwrap().is_empty());
    let due = store.due_batch_callbacks(1_000, 10).await.unwrap();
    assert_eq!(due.len(), 1);
    assert_eq!(due[0].attempts, 1);
    store
        .postpone_batch_callbacks(&["cb".into()], 2_000)
        .await
        .unwrap();
    assert!(store
        .due_batch_callbacks(1_500, 10)
        .await
        .unwrap()
        .is_empty());
    assert_eq!(
        store.prune_batches(1_000_000).await.unwrap().batches,
        1,
        "the quiet batch goes; the one whose callback is pending stays"
    );
    assert!(store.get_batch("cb", 0).await.unwrap().is_some());
    store
        .batch_callback_attempted("cb", true, None)
        .await
        .unwrap();
    assert!(store
        .due_batch_callbacks(10_000, 10)
        .await
        .unwrap()
        .is_empty());
    assert_eq!(store.prune_batches(1_000_000).await.unwrap().batches, 1);
}

// ---- retention -------------------------------------------------------------------------

/// Pruning deletes what is finished and older than `before` (jobs whose callback is done,
/// with their attempts; ended dedup ids; final batches with their records) and keeps
/// everything else: unfinished work, recent work, a callback still to deliver, a job whose
/// dedup window still holds (so a repeat is still deduplicated), a batch with records in
/// flight.
pub async fn retention<S: JobStore + BatchStore>(store: &S) {
    let (old, before, recent) = (2_000, 10_000, 20_000);
    // Finished long ago, no callback: goes.
    for id in ["p-done", "p-failed-cb", "p-delivered-cb", "p-pending-cb"] {
        let mut job = new_job(id, "default", "acme", 1_000);
        if id.ends_with("-cb") {
            job.callback_url = Some("https://example.com/cb".into());
        }
        insert(store, job).await;
    }
    let mut dedup = new_job("p-dedup", "default", "acme", 1_000);
    dedup.dedup_id = Some("evt-1".into());
    dedup.dedup_until = Some(50_000);
    insert(store, dedup.clone()).await;
    insert(store, new_job("p-running", "default", "acme", 1_000)).await;
    insert(store, new_job("p-retry", "default", "acme", 1_000)).await;
    insert(store, new_job("p-cancelled", "default", "acme", 1_000)).await;
    assert!(matches!(
        store.cancel_job("p-cancelled", old).await.unwrap(),
        Cancelled::Done(_)
    ));
    let claimed = claim(store, old, &[], 100).await;
    assert_eq!(claimed.len(), 7, "{claimed:?}");
    for id in [
        "p-done",
        "p-failed-cb",
        "p-delivered-cb",
        "p-pending-cb",
        "p-dedup",
    ] {
        succeed(store, id, old).await;
    }
    retry(store, "p-retry", old, 1_000_000, true).await;
    store
        .callback_attempted("p-failed-cb", false, None)
        .await
        .unwrap();
    store
        .callback_attempted("p-delivered-cb", true, None)
        .await
        .unwrap();
    // Recent, and never run.
    insert(store, new_job("p-queued", "default", "acme", 500_000)).await;
    insert(store, new_job("p-recent", "default", "acme", recent)).await;
    assert_eq!(claim(store, recent, &[], 100).await, ids(&["p-recent"]));
    succeed(store, "p-recent", recent).await;

    let pruned = store.prune_jobs(before, recent).await.unwrap();
    assert_eq!(
        (pruned.jobs, pruned.attempts, pruned.dedup_ids),
        (4, 3, 0),
        "{pruned:?} (the cancelled job had no attempt)"
    );
    for id in ["p-done", "p-failed-cb", "p-delivered-cb", "p-cancelled"] {
        assert!(store.get_job(id).await.unwrap().is_none(), "{id} kept");
        assert!(
            store.attempts(id).await.unwrap().is_empty(),
            "{id}'s attempts kept"
        );
    }
    for id in [
        "p-pending-cb",
        "p-dedup",
        "p-running",
        "p-retry",
        "p-queued",
        "p-recent",
    ] {
        assert!(store.get_job(id).await.unwrap().is_some(), "{id} pruned");
    }
    assert_eq!(store.attempts("p-dedup").await.unwrap().len(), 1);
    // The dedup window still holds: a repeat names the kept job.
    let mut repeat = dedup.clone();
    repeat.id = "p-dedup-2".into();
    repeat.created_at = 30_000;
    match store.insert_job(repeat.clone()).await.unwrap() {
        Inserted::Duplicate(j) => assert_eq!(j.new.id, "p-dedup"),
        Inserted::Created(_) => panic!("pruning let a duplicate in"),
    }
    // Again, later: nothing more, until the dedup window and the callback are over.
    assert_eq!(
        store.prune_jobs(before, recent).await.unwrap(),
        Pruned::default()
    );
    store
        .callback_attempted("p-pending-cb", true, None)
        .await
        .unwrap();
    let pruned = store.prune_jobs(before, 60_000).await.unwrap();
    assert_eq!(
        (pruned.jobs, pruned.attempts, pruned.dedup_ids),
        (2, 2, 1),
        "{pruned:?}"
    );
    assert!(store.get_job("p-dedup").await.unwrap().is_none());
    assert!(store.get_job("p-pending-cb").await.unwrap().is_none());
    repeat.created_at = 60_001;
    repeat.dedup_until = Some(70_000);
    insert(store, repeat).await;

    // Batches: a finished one goes with its records; an active one and one with records in
    // flight stay.
    store
        .insert_batch(new_batch("b-done", 5, 10, 1_000))
        .await
        .unwrap();
    let c = chunk(store, old, &[]).await;
    store
        .finish_chunk(&c, &all_succeeded(&c), old)
        .await
        .unwrap();
    assert_eq!(batch(store, "b-done").await.status, BatchStatus::Succeeded);
    store
        .insert_batch(new_batch("b-flight", 5, 10, 1_000))
        .await
        .unwrap();
    let flying = chunk(store, old, &[]).await;
    assert_eq!(flying.batch.id, "b-flight");
    store.cancel_batch("b-flight", old).await.unwrap();
    store
        .insert_batch(new_batch("b-queued", 5, 10, 1_000))
        .await
        .unwrap();
    let pruned = store.prune_batches(before).await.unwrap();
    assert_eq!((pruned.batches, pruned.records), (1, 5), "{pruned:?}");
    assert!(store.get_batch("b-done", 10).await.unwrap().is_none());
    batch(store, "b-flight").await;
    batch(store, "b-queued").await;
    // The records in flight come back: then it goes too.
    store
        .finish_chunk(&flying, &all_succeeded(&flying), old)
        .await
        .unwrap();
    let pruned = store.prune_batches(before).await.unwrap();
    assert_eq!((pruned.batches, pruned.records), (1, 5), "{pruned:?}");
    assert!(store.get_batch("b-flight", 10).await.unwrap().is_none());
    batch(store, "b-queued").await;
}
