//! The store conformance suites, one test per property, on each backend: SQLite in memory
//! and in a WAL file, and PostgreSQL (a schema per test); plus what only a real file shows:
//! concurrent writers, a 35,000-record batch, a kill -9.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use tokio::time::Instant;

use headroom::jobs::{BatchStore, Inserted, JobFilter, JobStore};
use headroom::store::{conformance, AnyStore, Store};

static NEXT_DB: AtomicUsize = AtomicUsize::new(0);

async fn file_store(dir: &std::path::Path) -> Store {
    let n = NEXT_DB.fetch_add(1, Ordering::Relaxed);
    let url = format!("sqlite://{}", dir.join(format!("s{n}.db")).display());
    Store::open(&url).await.unwrap()
}

#[tokio::test]
async fn bundled_sqlite_has_returning_and_window_functions() {
    let store = Store::open("sqlite::memory:").await.unwrap();
    let version: String = sqlx::query_scalar("SELECT sqlite_version()")
        .fetch_one(store.pool())
        .await
        .unwrap();
    let parts: Vec<u32> = version.split('.').map(|p| p.parse().unwrap()).collect();
    assert!(
        parts[0] == 3 && parts[1] >= 35,
        "SQLite {version} is older than 3.35"
    );
}

/// Eight tasks insert 500 jobs each at once into one file: every job is there, no
/// `SQLITE_BUSY` reaches a caller.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_inserts_on_a_file() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(file_store(dir.path()).await);
    let started = Instant::now();
    let tasks: Vec<_> = (0..8)
        .map(|t| {
            let store = Arc::clone(&store);
            tokio::spawn(async move {
                for i in 0..500 {
                    let mut job = conformance::new_job(
                        &format!("t{t}-{i}"),
                        "default",
                        &format!("tenant{t}"),
                        1_000 + i,
                    );
                    if i % 10 == 0 {
                        job.dedup_id = Some(format!("evt-{t}-{i}"));
                        job.dedup_until = Some(1_000_000);
                    }
                    match store.insert_job(job).await.expect("insert") {
                        Inserted::Created(_) => {}
                        Inserted::Duplicate(_) => panic!("no duplicates here"),
                    }
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    let elapsed = started.elapsed();
    eprintln!("4,000 concurrent job inserts (8 tasks): {elapsed:?}");
    let mut n = 0;
    let mut cursor = None;
    loop {
        let page = store
            .list_jobs(&JobFilter::default(), cursor.as_deref(), 1_000)
            .await
            .unwrap();
        n += page.items.len();
        match page.next {
            Some(c) => cursor = Some(c),
            None => break,
        }
    }
    assert_eq!(n, 4_000);
    for t in 0..8 {
        assert!(store.get_job(&format!("t{t}-499")).await.unwrap().is_some());
    }
    // Claims and inserts at the same time.
    let claimer = {
        let store = Arc::clone(&store);
        tokio::spawn(async move {
            let mut claimed = 0;
            while claimed < 4_000 {
                claimed += store.claim_ready(10_000, &[], 128).await.unwrap().len();
            }
            claimed
        })
    };
    let inserter = {
        let store = Arc::clone(&store);
        tokio::spawn(async move {
            for i in 0..500 {
                let job = conformance::new_job(&format!("late-{i}"), "default", "", 20_000);
                store.insert_job(job).await.unwrap();
            }
        })
    };
    inserter.await.unwrap();
    assert_eq!(claimer.await.unwrap(), 4_000);
}

/// 35,000 records in one batch: one transaction, timed (printed, not asserted tightly).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_35000_record_batch() {
    let dir = tempfile::tempdir().unwrap();
    let store = file_store(dir.path()).await;
    let batch = conformance::new_batch("big", 35_000, 100, 0);
    let started = Instant::now();
    let summary = store.insert_batch(batch).await.unwrap();
    let insert = started.elapsed();
    assert_eq!(summary.total, 35_000);

    let started = Instant::now();
    let mut chunks = 0;
    while let Some(c) = store.claim_chunk(1, &[]).await.unwrap() {
        let results = vec![headroom::jobs::RecordResult::Succeeded; c.records.len()];
        store.finish_chunk(&c, &results, 2).await.unwrap();
        chunks += 1;
    }
    let drain = started.elapsed();
    let started = Instant::now();
    let s = store.get_batch("big", 100).await.unwrap().unwrap();
    let read = started.elapsed();
    assert_eq!((s.succeeded, s.pending, s.calls), (35_000, 0, 350));
    assert_eq!(chunks, 350);
    eprintln!(
        "35,000-record batch: insert {insert:?}; 350 claim+finish {drain:?}; get_batch {read:?}"
    );
    assert!(
        insert.as_secs() < 30,
        "inserting 35,000 records took {insert:?}"
    );
}

/// The child side of `kill_9_loses_no_acknowledged_write`: inserts jobs from four tasks
/// (so that commits are grouped) and a batch, printing each acknowledgement, until killed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn child_writer() {
    let Ok(url) = std::env::var("HEADROOM_STORE_CHILD") else {
        return; // only as a child process
    };
    let store = Arc::new(Store::open(&url).await.unwrap());
    let batch = conformance::new_batch("crash-batch", 2_000, 100, 0);
    store.insert_batch(batch).await.unwrap();
    println!("ack batch");
    let tasks: Vec<_> = (0..4)
        .map(|t| {
            let store = Arc::clone(&store);
            tokio::spawn(async move {
                for i in 0.. {
                    let id = format!("k{t}-{i}");
                    let job = conformance::new_job(&id, "default", "", i);
                    store.insert_job(job).await.unwrap();
                    println!("ack {id}");
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
}

/// kill -9 a process that is writing: every write it acknowledged is there after reopening,
/// and the database is intact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_loses_no_acknowledged_write() {
    use std::io::BufRead;
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("crash.db").display());
    let mut child = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            // This module's path in the `it` test binary.
            concat!(module_path!(), "::child_writer")
                .split_once("::")
                .map_or("child_writer", |(_, path)| path),
            "--nocapture",
            "--test-threads",
            "1",
        ])
        .env("HEADROOM_STORE_CHILD", &url)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let acked = tokio::task::spawn_blocking(move || {
        let mut acked = Vec::new();
        for line in std::io::BufReader::new(stdout).lines() {
            let line = line.unwrap();
            // The harness may print "test child_writer ... " before the first one.
            if let Some((_, id)) = line.split_once("ack ") {
                acked.push(id.to_string());
                if acked.len() == 1_500 {
                    break;
                }
            }
        }
        (acked, child)
    });
    let (acked, mut child) = acked.await.unwrap();
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    assert_eq!(acked.len(), 1_500, "the child stopped early");

    let store = Store::open(&url).await.unwrap();
    let check: String = sqlx::query_scalar("PRAGMA integrity_check")
        .fetch_one(store.pool())
        .await
        .unwrap();
    assert_eq!(check, "ok");
    assert_eq!(acked[0], "batch");
    let batch = store.get_batch("crash-batch", 0).await.unwrap().unwrap();
    assert_eq!(batch.total, 2_000);
    let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM batch_records")
        .fetch_one(store.pool())
        .await
        .unwrap();
    assert_eq!(n, 2_000);
    for id in &acked[1..] {
        assert!(
            store.get_job(id).await.unwrap().is_some(),
            "job {id} was acknowledged, then lost"
        );
    }
}

/// A fresh, empty store for one conformance property, and what to clean up after it.
struct Fresh {
    store: AnyStore,
    _dir: Option<tempfile::TempDir>,
    schema: Option<crate::services::PgSchema>,
}

impl Fresh {
    async fn finish(self) {
        if let Some(schema) = self.schema {
            schema.drop().await;
        }
    }
}

mod sqlite_memory {
    use super::*;

    async fn fresh() -> Option<Fresh> {
        let store = AnyStore::open("sqlite::memory:").await.unwrap();
        Some(Fresh {
            store,
            _dir: None,
            schema: None,
        })
    }

    headroom::store::conformance_tests!();
}

mod sqlite_file {
    use super::*;

    async fn fresh() -> Option<Fresh> {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("s.db").display());
        let store = AnyStore::open(&url).await.unwrap();
        Some(Fresh {
            store,
            _dir: Some(dir),
            schema: None,
        })
    }

    headroom::store::conformance_tests!();
}

mod postgres {
    use super::*;

    /// A schema of its own (dropped after).
    async fn fresh() -> Option<Fresh> {
        let base = crate::services::postgres();
        let schema = crate::services::PgSchema::create(&base).await;
        let store = AnyStore::open(&schema.url()).await.unwrap();
        assert!(store.is_shared());
        Some(Fresh {
            store,
            _dir: None,
            schema: Some(schema),
        })
    }

    headroom::store::conformance_tests!(#[ignore = "needs PostgreSQL (README: Run the tests)"]);
}
