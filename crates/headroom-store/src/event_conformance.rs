//! The conformance suite every `EventStore` backend passes, like `conformance` for jobs:
//! each property takes an empty store and panics with a message when the backend breaks the
//! contract of `crate::model::events`. Times are fixed values; nothing reads the clock.
//!
//! Every backend runs it as one named test per property: see [`crate::conformance_tests`].

use super::conformance::new_job;
use crate::model::events::*;
use crate::model::jobs::{JobStore, Millis};

pub fn event(at: Millis, level: Level, kind: Kind, upstream: &str, tenant: &str) -> Event {
    let mut e = Event::new(at, level, kind, "throttled", format!("{kind:?} at {at}"));
    e.upstream = Some(upstream.to_string());
    e.tenant = Some(tenant.to_string());
    e
}

async fn all<S: EventStore>(store: &S, filter: &EventFilter) -> Vec<StoredEvent> {
    let mut out = Vec::new();
    let mut after = None;
    loop {
        let page = store
            .list_events(filter, after, 2)
            .await
            .expect("list_events");
        out.extend(page.items);
        match page.next {
            Some(next) => after = Some(next.parse().expect("a cursor is a seq")),
            None => return out,
        }
    }
}

pub async fn round_trip<S: EventStore>(store: &S) {
    let mut e = event(1_000, Level::Warn, Kind::Throttled, "crm", "acme");
    e.queue = Some("imports".into());
    e.endpoint = Some("POST /v3/contacts".into());
    e.job_id = Some("j1".into());
    e.attempt = Some(2);
    e.status = Some(429);
    e.wait_ms = Some(1500);
    e.headers = vec![("retry-after".into(), "2".into())];
    let plain = Event::new(1_001, Level::Info, Kind::Breaker, "closed", "plain".into());
    store
        .insert_events(&[e.clone(), plain.clone()])
        .await
        .expect("insert_events");
    store.insert_events(&[]).await.expect("insert no events");
    let got = all(store, &EventFilter::default()).await;
    assert_eq!(got.len(), 2, "two events stored");
    assert_eq!(got[0].event, e, "an event comes back as stored");
    assert_eq!(got[1].event, plain, "an event without context comes back");
    assert!(got[0].seq < got[1].seq, "seq follows insertion order");
}

pub async fn filters_and_cursor<S: EventStore>(store: &S) {
    let mut events = Vec::new();
    for i in 0..10i64 {
        let level = [Level::Debug, Level::Info, Level::Warn, Level::Error][i as usize % 4];
        let mut e = event(
            1_000 + i,
            level,
            Kind::Throttled,
            if i % 2 == 0 { "crm" } else { "erp" },
            if i < 5 { "acme" } else { "globex" },
        );
        e.queue = Some(if i % 3 == 0 { "q3" } else { "q" }.into());
        events.push(e);
    }
    store.insert_events(&events).await.expect("insert_events");
    let ats = |v: Vec<StoredEvent>| v.into_iter().map(|e| e.event.at).collect::<Vec<_>>();
    let f = EventFilter::default();
    assert_eq!(
        ats(all(store, &f).await).len(),
        10,
        "every event, by pages of 2"
    );
    let f = EventFilter {
        level: Some(Level::Warn),
        ..Default::default()
    };
    assert_eq!(
        ats(all(store, &f).await),
        vec![1002, 1003, 1006, 1007],
        "level is at or above"
    );
    let f = EventFilter {
        upstream: Some("crm".into()),
        tenant: Some("acme".into()),
        ..Default::default()
    };
    assert_eq!(
        ats(all(store, &f).await),
        vec![1000, 1002, 1004],
        "upstream and tenant"
    );
    let f = EventFilter {
        queue: Some("q3".into()),
        ..Default::default()
    };
    assert_eq!(
        ats(all(store, &f).await),
        vec![1000, 1003, 1006, 1009],
        "queue"
    );
    let f = EventFilter {
        since: Some(1_003),
        until: Some(1_006),
        ..Default::default()
    };
    assert_eq!(
        ats(all(store, &f).await),
        vec![1003, 1004, 1005],
        "since ≤ at < until"
    );
    let f = EventFilter {
        kind: Some(Kind::RetryExhausted),
        ..Default::default()
    };
    assert!(all(store, &f).await.is_empty(), "kind");
    let page = store
        .list_events(&EventFilter::default(), None, 10)
        .await
        .expect("list_events");
    assert_eq!(page.items.len(), 10);
    assert_eq!(page.next, None, "no cursor after the last page");
    let last = page.items.last().unwrap().seq;
    store
        .insert_events(&[event(2_000, Level::Info, Kind::Retry, "crm", "acme")])
        .await
        .unwrap();
    let after = store
        .list_events(&EventFilter::default(), Some(last), 10)
        .await
        .unwrap();
    assert_eq!(ats(after.items), vec![2000], "a cursor follows new events");
}

pub async fn prune_by_time<S: EventStore>(store: &S) {
    let events: Vec<Event> = (0..6)
        .map(|i| event(i * 1_000, Level::Info, Kind::Retry, "crm", "acme"))
        .collect();
    store.insert_events(&events).await.unwrap();
    assert_eq!(store.prune_events(3_000).await.expect("prune_events"), 3);
    assert_eq!(store.prune_events(3_000).await.unwrap(), 0, "pruning twice");
    let left = all(store, &EventFilter::default()).await;
    assert_eq!(
        left.iter().map(|e| e.event.at).collect::<Vec<_>>(),
        vec![3_000, 4_000, 5_000],
        "events at or after the cut stay"
    );
}

pub async fn stats_group_and_sum<S: EventStore>(store: &S) {
    let mut events = Vec::new();
    for i in 0..4 {
        let mut e = event(1_000 + i, Level::Warn, Kind::Backoff, "crm", "acme");
        e.wait_ms = Some(100 * (i as u64 + 1));
        events.push(e);
    }
    events.push(event(
        1_010,
        Level::Error,
        Kind::RetryExhausted,
        "crm",
        "acme",
    ));
    events.push(event(
        5_000,
        Level::Error,
        Kind::RetryExhausted,
        "crm",
        "acme",
    ));
    store.insert_events(&events).await.unwrap();
    let mut stats = store.event_stats(1_000, 5_000).await.expect("event_stats");
    stats.sort_by_key(|s| s.kind.as_str());
    assert_eq!(stats.len(), 2, "{stats:?}");
    assert_eq!(stats[0].kind, Kind::Backoff);
    assert_eq!(
        (stats[0].count, stats[0].wait_ms),
        (4, 1000),
        "counted and summed"
    );
    assert_eq!(stats[0].upstream.as_deref(), Some("crm"));
    assert_eq!(stats[0].tenant.as_deref(), Some("acme"));
    assert_eq!((stats[1].kind, stats[1].count), (Kind::RetryExhausted, 1));
    assert_eq!(stats[1].wait_ms, 0, "no wait sums to zero");
}

pub async fn backlog_counts_unfinished_jobs<S: EventStore + JobStore>(store: &S) {
    for i in 0..3 {
        let mut job = new_job(&format!("j{i}"), "imports", "", 1_000 + i);
        job.tenant = Some("acme".into());
        store.insert_job(job).await.expect("insert_job");
    }
    store
        .insert_job(new_job("other", "default", "", 1_000))
        .await
        .unwrap();
    let claimed = store.claim_ready(2_000, &[], 1).await.expect("claim_ready");
    assert_eq!(claimed.len(), 1);
    let mut backlog = store.job_backlog().await.expect("job_backlog");
    backlog.sort_by(|a, b| (&a.queue, &a.status).cmp(&(&b.queue, &b.status)));
    let summary: Vec<(&str, Option<&str>, &str, u64)> = backlog
        .iter()
        .map(|b| {
            (
                b.queue.as_str(),
                b.tenant.as_deref(),
                b.status.as_str(),
                b.count,
            )
        })
        .collect();
    let total: u64 = backlog.iter().map(|b| b.count).sum();
    assert_eq!(total, 4, "every unfinished job counted once: {summary:?}");
    assert!(
        summary.iter().any(|s| s.2 == "running" && s.3 == 1),
        "the claimed job is running: {summary:?}"
    );
}
