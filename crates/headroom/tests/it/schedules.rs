//! Schedules over real sockets, in virtual time: the scheduler's clock is a manual clock the
//! test moves, and `work::scheduler::tick` runs what is due at that time. Nothing waits on the
//! wall clock for a schedule to fire.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use crate::common::{Recorder, Server};
use headroom::clock::timestamp_of;
use headroom::schedules::ScheduleStore;
use headroom::work::scheduler;
use headroom_core::clock::ManualClock;
use http::StatusCode;
use serde_json::{json, Value};

const LONG: Duration = Duration::from_secs(20);

fn at(rfc3339: &str) -> i64 {
    chrono::DateTime::parse_from_rfc3339(rfc3339)
        .unwrap()
        .timestamp_millis()
}

fn clock_at(rfc3339: &str) -> ManualClock {
    let clock = ManualClock::new();
    clock.set(timestamp_of(at(rfc3339)));
    clock
}

fn set(clock: &ManualClock, rfc3339: &str) {
    clock.set(timestamp_of(at(rfc3339)));
}

async fn start(config: &str, base: &str, clock: &ManualClock) -> Server {
    start_in(Arc::new(tempfile::tempdir().unwrap()), config, base, clock).await
}

async fn start_in(
    dir: Arc<tempfile::TempDir>,
    config: &str,
    base: &str,
    clock: &ManualClock,
) -> Server {
    Server::start_with_clock(dir, config, base, Some(Arc::new(clock.clone()))).await
}

/// Runs what is due now on the clock; returns (tenant, outcome) of each run of the named
/// schedules recorded at this time, sorted. The server's own scheduler loop may have taken
/// some of them (it runs on the same clock); either way they are recorded at this time, and
/// once `tick` returns every run due now is recorded.
async fn tick(server: &Server, names: &[&str]) -> Vec<(String, String)> {
    scheduler::tick(&server.state).await.expect("tick");
    let now = server.state.scheduler.now();
    let mut out = Vec::new();
    for name in names {
        let mut cursor: Option<String> = None;
        loop {
            let page = server
                .state
                .store
                .list_runs(name, None, cursor.as_deref(), 500)
                .await
                .unwrap();
            out.extend(
                page.items
                    .iter()
                    .filter(|r| r.recorded_at == now)
                    .map(|r| (r.tenant.clone(), r.outcome.as_str().to_string())),
            );
            match page.next {
                Some(c) => cursor = Some(c),
                None => break,
            }
        }
    }
    out.sort();
    out
}

/// Every run of a schedule, through the paginated API.
async fn all_runs(server: &Server, name: &str, page: u32) -> Vec<Value> {
    let mut runs = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let mut path = format!("/v1/schedules/{name}/runs?limit={page}");
        if let Some(c) = &cursor {
            path.push_str(&format!("&cursor={c}"));
        }
        let r = server.get(&path).await;
        assert_eq!(
            r.status,
            StatusCode::OK,
            "{}",
            String::from_utf8_lossy(&r.body)
        );
        let v = r.json();
        runs.extend(v["runs"].as_array().unwrap().iter().cloned());
        match v["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_string()),
            None => return runs,
        }
    }
}

const UPSTREAM: &str = r#"
[[queues]]
name = "slow-retry"
retry = { max_attempts = 3, interval = "1h", backoff = "fixed" }

[[upstreams]]
name = "up"
base_url = "{base}"
retry = { max_wait = "2s" }
"#;

fn schedule(name: &str, cron: &str, tenants: Value) -> Value {
    json!({
        "name": name,
        "cron": cron,
        "tenants": tenants,
        "job": {"upstream": "up", "request": {"method": "POST", "path": "/sync", "body": {"full": false}}},
    })
}

/// 500 tenants on `*/5 * * * *` with a 5-minute stagger: each runs once in the window, at
/// its own offset, and no minute gets more than twice its share (100).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_hundred_tenants_are_spread_over_the_stagger_window() {
    let up = Recorder::start().await;
    let clock = clock_at("2026-03-02T10:00:00Z");
    let server = start(UPSTREAM, &up.url(), &clock).await;
    let tenants: Vec<String> = (0..500).map(|i| format!("tenant-{i:03}")).collect();
    let mut body = schedule("sync", "*/5 * * * *", json!(tenants));
    body["stagger"] = json!("5m");
    body["overlap"] = json!("allow");
    let r = server.post("/v1/schedules", &body).await;
    assert_eq!(
        r.status,
        StatusCode::CREATED,
        "{}",
        String::from_utf8_lossy(&r.body)
    );
    assert_eq!(tick(&server, &["sync"]).await, vec![]);

    // Every tenant's first run is in the window that starts now: 10:00 plus its offset.
    let v = server.get("/v1/schedules/sync").await.json();
    assert_eq!(v["tenant_count"], 500);
    assert_eq!(v["source"], "api");

    let start = at("2026-03-02T10:00:00Z");
    let mut fired: HashMap<String, u32> = HashMap::new();
    let mut t = start;
    while t <= start + 300_000 {
        clock.set(timestamp_of(t));
        for (tenant, outcome) in tick(&server, &["sync"]).await {
            assert_eq!(outcome, "fired");
            *fired.entry(tenant).or_default() += 1;
        }
        t += 10_000;
    }
    assert_eq!(fired.len(), 500, "every tenant ran");
    assert!(fired.values().all(|n| *n == 1), "none ran twice");

    let runs = all_runs(&server, "sync", 200).await;
    assert_eq!(runs.len(), 500);
    let mut per_minute: BTreeMap<i64, u32> = BTreeMap::new();
    for run in &runs {
        assert_eq!(run["scheduled_for"], "2026-03-02T10:00:00.000Z", "{run}");
        let due = at(run["due_at"].as_str().unwrap());
        let recorded = at(run["recorded_at"].as_str().unwrap());
        assert!(
            (0..10_000).contains(&(recorded - due)),
            "run within a tick of its due time: {run}"
        );
        *per_minute.entry((due - start) / 60_000).or_default() += 1;
        assert!(run["job_id"].is_string(), "{run}");
    }
    assert_eq!(per_minute.len(), 5, "{per_minute:?}");
    for (minute, n) in &per_minute {
        assert!(*n <= 200, "minute {minute}: {n} runs, over twice its share");
    }
    eprintln!("runs per minute of the stagger window: {per_minute:?}");

    // The next runs are in the next window, at the same offsets.
    let v = server.get("/v1/schedules/sync").await.json();
    for next in v["next_runs"].as_array().unwrap() {
        assert_eq!(next["scheduled_for"], "2026-03-02T10:05:00.000Z", "{next}");
    }
    server.shutdown().await;
}

/// overlap = "skip": while a tenant's previous job is unfinished, its next run is recorded as
/// skipped; once the job is done, runs fire again. overlap = "allow" fires every time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_is_skipped_while_the_previous_one_is_unfinished() {
    let up = Recorder::start().await;
    // The first call fails: that job waits an hour for its retry (unfinished).
    up.answer(503, &[]);
    let clock = clock_at("2026-03-02T10:00:00Z");
    let server = start(UPSTREAM, &up.url(), &clock).await;
    let mut single = schedule("single", "* * * * *", json!(["acme"]));
    single["job"]["queue"] = json!("slow-retry");
    let r = server.post("/v1/schedules", &single).await;
    assert_eq!(
        r.status,
        StatusCode::CREATED,
        "{}",
        String::from_utf8_lossy(&r.body)
    );
    tick(&server, &["single"]).await;

    set(&clock, "2026-03-02T10:01:00Z");
    assert_eq!(
        tick(&server, &["single"]).await,
        vec![("acme".into(), "fired".into())]
    );
    let first = all_runs(&server, "single", 10).await;
    let job = first[0]["job_id"].as_str().unwrap().to_string();
    // Wait for its first attempt to fail: it is then retry_pending for an hour.
    let deadline = tokio::time::Instant::now() + LONG;
    loop {
        let v = server.get(&format!("/v1/jobs/{job}")).await.json();
        if v["status"] == "retry_pending" {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "job never failed once: {v}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    set(&clock, "2026-03-02T10:02:00Z");
    assert_eq!(
        tick(&server, &["single"]).await,
        vec![("acme".into(), "skipped".into())]
    );
    set(&clock, "2026-03-02T10:03:00Z");
    assert_eq!(
        tick(&server, &["single"]).await,
        vec![("acme".into(), "skipped".into())]
    );

    // The job ends (cancelled): the next run fires.
    let r = server.delete(&format!("/v1/jobs/{job}")).await;
    assert_eq!(r.json()["status"], "cancelled");
    set(&clock, "2026-03-02T10:04:00Z");
    assert_eq!(
        tick(&server, &["single"]).await,
        vec![("acme".into(), "fired".into())]
    );

    let runs = all_runs(&server, "single", 2).await;
    let statuses: Vec<&str> = runs.iter().map(|r| r["status"].as_str().unwrap()).collect();
    assert_eq!(
        statuses[..3],
        ["cancelled", "skipped", "skipped"],
        "{runs:?}"
    );
    assert!(["fired", "succeeded"].contains(&statuses[3]), "{runs:?}");
    let reason = runs[1]["reason"].as_str().unwrap();
    assert!(
        reason.contains(&job) && reason.contains("still in progress"),
        "{reason}"
    );
    // The second fired job runs to success.
    let second = runs[3]["job_id"].as_str().unwrap().to_string();
    assert_eq!(server.wait_job(&second, LONG).await["status"], "succeeded");
    let runs = all_runs(&server, "single", 100).await;
    assert_eq!(runs[3]["status"], "succeeded", "{}", runs[3]);

    // One tenant's runs only.
    let r = server.get("/v1/schedules/single/runs?tenant=nobody").await;
    assert_eq!(r.json()["runs"], json!([]));
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overlap_allow_fires_every_time() {
    let up = Recorder::start().await;
    up.answer(503, &[]);
    let clock = clock_at("2026-03-02T10:00:00Z");
    let server = start(UPSTREAM, &up.url(), &clock).await;
    let mut allow = schedule("allow", "* * * * *", json!(["acme"]));
    allow["job"]["queue"] = json!("slow-retry");
    allow["overlap"] = json!("allow");
    assert_eq!(
        server.post("/v1/schedules", &allow).await.status,
        StatusCode::CREATED
    );
    tick(&server, &["allow"]).await;
    for minute in 1..=3 {
        set(&clock, &format!("2026-03-02T10:0{minute}:00Z"));
        assert_eq!(
            tick(&server, &["allow"]).await,
            vec![("acme".into(), "fired".into())]
        );
    }
    server.shutdown().await;
}

const RESTART: &str = r#"
[[upstreams]]
name = "up"
base_url = "{base}"

[[schedules]]
name = "catch-once"
cron = "*/5 * * * *"
tenants = ["acme", "globex"]
overlap = "allow"
catch_up = "once"
job = { upstream = "up", request = { method = "POST", path = "/once" } }

[[schedules]]
name = "catch-skip"
cron = "*/5 * * * *"
tenants = ["acme", "globex"]
overlap = "allow"
catch_up = "skip"
job = { upstream = "up", request = { method = "POST", path = "/skip" } }
"#;

/// The next run of each tenant is in the store: a restart neither repeats a run nor loses
/// one, and runs missed while down follow catch_up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_neither_repeats_nor_loses_runs() {
    let up = Recorder::start().await;
    let dir = Arc::new(tempfile::tempdir().unwrap());

    // First life: runs at 10:05.
    let clock = clock_at("2026-03-02T10:00:00Z");
    let server = start_in(dir.clone(), RESTART, &up.url(), &clock).await;
    assert_eq!(tick(&server, &["catch-once", "catch-skip"]).await, vec![]);
    set(&clock, "2026-03-02T10:05:00Z");
    assert_eq!(tick(&server, &["catch-once", "catch-skip"]).await.len(), 4);
    tick(&server, &["catch-once", "catch-skip"]).await;
    assert_eq!(
        all_runs(&server, "catch-once", 100).await.len(),
        2,
        "no second run at the same time"
    );
    server.shutdown().await;

    // Second life, on its own clock (the first one's stays at 10:05): nothing is due
    // before 10:10, so nothing runs again.
    let clock = clock_at("2026-03-02T10:07:00Z");
    let server = start_in(dir.clone(), RESTART, &up.url(), &clock).await;
    assert_eq!(tick(&server, &["catch-once", "catch-skip"]).await, vec![]);
    let v = server.get("/v1/schedules/catch-once").await.json();
    assert_eq!(v["source"], "config");
    assert_eq!(
        v["next_runs"][0]["scheduled_for"],
        "2026-03-02T10:10:00.000Z"
    );
    server.shutdown().await;

    // Down from 10:07 to 10:31: five runs (10:10 … 10:30) missed.
    let clock = clock_at("2026-03-02T10:31:00Z");
    let server = start_in(dir.clone(), RESTART, &up.url(), &clock).await;
    let mut runs = tick(&server, &["catch-once", "catch-skip"]).await;
    runs.sort();
    assert_eq!(runs.len(), 4, "{runs:?}");
    assert_eq!(
        tick(&server, &["catch-once", "catch-skip"]).await.len(),
        4,
        "not again"
    );
    let once = all_runs(&server, "catch-once", 100).await;
    let skip = all_runs(&server, "catch-skip", 100).await;
    assert_eq!(
        once.len(),
        4,
        "two runs at 10:05, one catch-up each: {once:?}"
    );
    assert_eq!(skip.len(), 4, "{skip:?}");
    for run in &once[2..] {
        assert!(run["job_id"].is_string(), "{run}");
        assert_eq!(run["scheduled_for"], "2026-03-02T10:10:00.000Z");
        assert_eq!(run["recorded_at"], "2026-03-02T10:31:00.000Z");
    }
    for run in &skip[2..] {
        assert_eq!(run["status"], "skipped", "{run}");
        assert!(run["reason"].as_str().unwrap().contains("missed"), "{run}");
    }
    // Then on schedule again: 10:35.
    set(&clock, "2026-03-02T10:34:59Z");
    assert_eq!(tick(&server, &["catch-once", "catch-skip"]).await, vec![]);
    set(&clock, "2026-03-02T10:35:00Z");
    let runs = tick(&server, &["catch-once", "catch-skip"]).await;
    assert_eq!(runs.len(), 4);
    assert!(runs.iter().all(|(_, o)| o == "fired"), "{runs:?}");
    server.shutdown().await;

    // Down from 10:35 to 10:42, as across a deploy: the 10:40 run was due two minutes
    // before the start, so it runs now under either catch_up instead of counting as missed.
    let clock = clock_at("2026-03-02T10:42:00Z");
    let server = start_in(dir.clone(), RESTART, &up.url(), &clock).await;
    let runs = tick(&server, &["catch-once", "catch-skip"]).await;
    assert_eq!(runs.len(), 4, "{runs:?}");
    assert!(runs.iter().all(|(_, o)| o == "fired"), "{runs:?}");
    server.shutdown().await;
}

/// Pausing stops runs; resuming starts again from now, without catching up the pause.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paused_schedules_do_not_run_and_resume_from_now() {
    let up = Recorder::start().await;
    let clock = clock_at("2026-03-02T10:00:00Z");
    let server = start(UPSTREAM, &up.url(), &clock).await;
    let mut body = schedule("hourly", "0 * * * *", json!(["acme"]));
    body["catch_up"] = json!("once");
    assert_eq!(
        server.post("/v1/schedules", &body).await.status,
        StatusCode::CREATED
    );
    tick(&server, &["hourly"]).await;
    let r = server.post("/v1/schedules/hourly/pause", &json!({})).await;
    assert_eq!(r.json()["paused"], true);
    assert_eq!(
        server.get("/v1/schedules/hourly").await.json()["next_runs"],
        json!([])
    );
    set(&clock, "2026-03-02T13:30:00Z");
    assert_eq!(tick(&server, &["hourly"]).await, vec![]);
    let r = server.post("/v1/schedules/hourly/resume", &json!({})).await;
    assert_eq!(r.json()["paused"], false);
    assert_eq!(
        tick(&server, &["hourly"]).await,
        vec![],
        "the paused hours are not caught up"
    );
    set(&clock, "2026-03-02T14:00:00Z");
    assert_eq!(
        tick(&server, &["hourly"]).await,
        vec![("acme".into(), "fired".into())]
    );

    let list = server.get("/v1/schedules").await.json();
    assert_eq!(list["schedules"][0]["name"], "hourly");
    let r = server.delete("/v1/schedules/hourly").await;
    assert_eq!(r.json()["deleted"], true);
    assert_eq!(
        server.get("/v1/schedules/hourly").await.status,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        server.get("/v1/schedules/hourly/runs").await.status,
        StatusCode::NOT_FOUND
    );
    server.shutdown().await;
}

/// Every tenant holding a credential for the upstream, as tenants come and go.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenants_with_a_credential_are_followed() {
    let up = Recorder::start().await;
    let clock = clock_at("2026-03-02T10:00:00Z");
    let server = start(UPSTREAM, &up.url(), &clock).await;
    let sealed = headroom::store::SealedCredential {
        nonce: vec![1; 24],
        ciphertext: vec![2; 40],
    };
    let store = &server.state.store;
    store.put_credential("acme", "up", &sealed).await.unwrap();
    store.put_credential("globex", "up", &sealed).await.unwrap();
    store
        .put_credential("initech", "other", &sealed)
        .await
        .unwrap();
    let body = schedule("all", "*/5 * * * *", json!({"with_credential": "up"}));
    assert_eq!(
        server.post("/v1/schedules", &body).await.status,
        StatusCode::CREATED
    );
    tick(&server, &["all"]).await;
    set(&clock, "2026-03-02T10:05:00Z");
    let mut runs = tick(&server, &["all"]).await;
    runs.sort();
    assert_eq!(
        runs,
        vec![
            ("acme".into(), "fired".into()),
            ("globex".into(), "fired".into())
        ]
    );
    store.delete_credential("globex", "up").await.unwrap();
    store
        .put_credential("umbrella", "up", &sealed)
        .await
        .unwrap();
    tick(&server, &["all"]).await;
    set(&clock, "2026-03-02T10:10:00Z");
    let mut runs = tick(&server, &["all"]).await;
    runs.sort();
    assert_eq!(
        runs,
        vec![
            ("acme".into(), "fired".into()),
            ("umbrella".into(), "fired".into())
        ]
    );
    server.shutdown().await;
}

/// A bad cron expression, time zone or template is a 400 that names the field and quotes
/// it; nothing is stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_schedules_get_a_problem_naming_the_field() {
    let up = Recorder::start().await;
    let clock = clock_at("2026-03-02T10:00:00Z");
    let server = start(UPSTREAM, &up.url(), &clock).await;
    let cases: Vec<(Value, &str)> = vec![
        (
            schedule("a", "*/5 * * *", json!(["acme"])),
            "cron: \"*/5 * * *\" is not a cron expression",
        ),
        (
            schedule("a", "61 * * * *", json!(["acme"])),
            "cron: \"61 * * * *\" is not a cron expression",
        ),
        (
            {
                let mut b = schedule("a", "0 * * * *", json!(["acme"]));
                b["timezone"] = json!("Mars/Olympus");
                b
            },
            "timezone: \"Mars/Olympus\" is not a time zone",
        ),
        (
            {
                let mut b = schedule("a", "0 * * * *", json!(["acme"]));
                b["stagger"] = json!("5 parsecs");
                b
            },
            "stagger:",
        ),
        (
            {
                let mut b = schedule("a", "0 * * * *", json!(["acme"]));
                b["overlap"] = json!("queue");
                b
            },
            "overlap: \"queue\"",
        ),
        (
            {
                let mut b = schedule("a", "0 * * * *", json!(["acme"]));
                b["job"]["request"]["path"] = json!("sync");
                b
            },
            "job.request.path: \"sync\" must start with '/'",
        ),
        (
            {
                let mut b = schedule("a", "0 * * * *", json!(["acme"]));
                b["job"]["tenant"] = json!("acme");
                b
            },
            "job.tenant: leave it out",
        ),
        (
            {
                let mut b = schedule("a", "0 * * * *", json!(["acme"]));
                b["job"]["upstream"] = json!("nowhere");
                b
            },
            "job.upstream: \"nowhere\" is not a configured upstream",
        ),
        (schedule("a", "0 * * * *", json!([])), "tenants:"),
        (
            schedule("a", "0 * * * *", json!({"with_credential": "nowhere"})),
            "tenants.with_credential: \"nowhere\"",
        ),
        (schedule("a b", "0 * * * *", json!(["acme"])), "name:"),
    ];
    for (body, expected) in cases {
        let r = server.post("/v1/schedules", &body).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{body}");
        let detail = r.problem()["detail"].as_str().unwrap().to_string();
        assert!(detail.starts_with(expected), "{detail} (wanted {expected})");
    }
    let r = server
        .post_raw("/v1/schedules", b"{\"name\": \"x\", \"crn\": 1}")
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert!(r.problem()["detail"].as_str().unwrap().contains("crn"));
    assert_eq!(
        server.get("/v1/schedules").await.json()["schedules"],
        json!([])
    );

    let good = schedule("a", "0 * * * *", json!(["acme"]));
    assert_eq!(
        server.post("/v1/schedules", &good).await.status,
        StatusCode::CREATED
    );
    let r = server.post("/v1/schedules", &good).await;
    assert_eq!(r.status, StatusCode::CONFLICT);
    assert!(r.problem()["detail"].as_str().unwrap().starts_with("name:"));
    let r = server.get("/v1/schedules/a/runs?cursor=abc").await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    server.shutdown().await;
}

#[test]
fn bad_config_schedules_name_the_key_and_the_expression() {
    let base = "[[upstreams]]\nname = \"up\"\nbase_url = \"http://127.0.0.1:9\"\n";
    let table = |extra: &str| {
        format!(
            "{base}\n[[schedules]]\nname = \"s\"\ntenants = [\"acme\"]\n\
             job = {{ upstream = \"up\", request = {{ method = \"GET\", path = \"/x\" }} }}\n{extra}"
        )
    };
    // The file's shape and values first, then each schedule against the rest of the config.
    let check = |text: &str| {
        let config = headroom::cfg::Config::parse(text, "h.toml").map_err(|e| e.to_string())?;
        let schedules =
            headroom::schedules::from_config(&config).map_err(|e| format!("h.toml: {e}"))?;
        Ok::<_, String>(schedules)
    };
    let e = check(&table("cron = \"*/5 * * *\"")).unwrap_err();
    assert!(
        e.starts_with("h.toml: schedules[0].cron: \"*/5 * * *\" is not a cron expression"),
        "{e}"
    );
    let e = check(&table(
        "cron = \"0 2 * * *\"\ntimezone = \"Europe/Atlantis\"",
    ))
    .unwrap_err();
    assert!(
        e.starts_with("h.toml: schedules[0].timezone: \"Europe/Atlantis\""),
        "{e}"
    );
    let e = check(&table("cron = \"0 2 * * *\"\ncatchup = \"once\"")).unwrap_err();
    assert!(e.contains("catchup") && e.contains("line"), "{e}");
    let e =
        check(&table("cron = \"0 2 * * *\"").replace("tenants = [\"acme\"]", "tenants = \"acme\""))
            .unwrap_err();
    assert!(
        e.contains("tenants: give a list of tenants") && e.contains("line 7"),
        "{e}"
    );
    let ok = check(&table(
        "cron = \"0 0 2 * * *\"\ntimezone = \"Europe/Berlin\"\nstagger = \"10m\"",
    ))
    .unwrap();
    assert_eq!(ok.len(), 1);
    assert_eq!(ok[0].stagger, Duration::from_secs(600));
}

/// A config schedule cannot be deleted through the API (the config owns it), and a name
/// cannot be both a config and an API schedule.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_schedules_belong_to_the_config() {
    let up = Recorder::start().await;
    let clock = clock_at("2026-03-02T10:00:00Z");
    let server = start(RESTART, &up.url(), &clock).await;
    let r = server.delete("/v1/schedules/catch-once").await;
    assert_eq!(r.status, StatusCode::CONFLICT);
    assert!(r.problem()["detail"]
        .as_str()
        .unwrap()
        .contains("config file"));
    let r = server
        .post(
            "/v1/schedules",
            &schedule("catch-once", "0 * * * *", json!(["acme"])),
        )
        .await;
    assert_eq!(r.status, StatusCode::CONFLICT);
    server.shutdown().await;
}

/// `headroom schedules …` against a running server: JSON out, the server's problem detail
/// and exit code 2 on error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_manages_schedules() {
    let up = Recorder::start().await;
    let clock = clock_at("2026-03-02T10:00:00Z");
    let server = start(UPSTREAM, &up.url(), &clock).await;
    let url = format!("http://{}", server.addr);
    let cli = move |args: Vec<&'static str>, stdin: Option<String>| {
        let url = url.clone();
        tokio::task::spawn_blocking(move || {
            use std::io::Write;
            let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_headroom"))
                .arg("schedules")
                .args(&args)
                .args(["--server", &url])
                .env_remove("HEADROOM_API_TOKEN")
                .stdin(std::process::Stdio::piped())
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap();
            let mut input = child.stdin.take().unwrap();
            input
                .write_all(stdin.unwrap_or_default().as_bytes())
                .unwrap();
            drop(input);
            let out = child.wait_with_output().unwrap();
            (
                out.status.code(),
                String::from_utf8_lossy(&out.stdout).to_string(),
                String::from_utf8_lossy(&out.stderr).to_string(),
            )
        })
    };
    let body = schedule("nightly", "0 2 * * *", json!(["acme", "globex"])).to_string();
    let (code, out, err) = cli(vec!["create", "-"], Some(body)).await.unwrap();
    assert_eq!(code, Some(0), "{err}");
    let created: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(created["name"], "nightly");
    let (_, out, _) = cli(vec!["list"], None).await.unwrap();
    let list: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(list["schedules"][0]["cron"], "0 2 * * *");
    let (_, out, _) = cli(vec!["pause", "nightly"], None).await.unwrap();
    assert_eq!(serde_json::from_str::<Value>(&out).unwrap()["paused"], true);
    let (_, out, _) = cli(vec!["resume", "nightly"], None).await.unwrap();
    assert_eq!(
        serde_json::from_str::<Value>(&out).unwrap()["paused"],
        false
    );
    tick(&server, &["nightly"]).await;
    let (_, out, _) = cli(vec!["get", "nightly"], None).await.unwrap();
    let got: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(got["tenant_count"], 2, "{got}");
    assert_eq!(
        got["next_runs"][0]["scheduled_for"],
        "2026-03-03T02:00:00.000Z"
    );
    set(&clock, "2026-03-03T02:00:00Z");
    tick(&server, &["nightly"]).await;
    let (_, out, _) = cli(vec!["runs", "nightly", "--tenant", "acme"], None)
        .await
        .unwrap();
    let runs: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(runs["runs"].as_array().unwrap().len(), 1, "{runs}");
    assert_eq!(runs["runs"][0]["tenant"], "acme");

    let bad = schedule("bad", "0 25 * * *", json!(["acme"])).to_string();
    let (code, _, err) = cli(vec!["create"], Some(bad)).await.unwrap();
    assert_eq!(code, Some(2));
    assert!(
        err.contains("400 Bad Request: cron: \"0 25 * * *\" is not a cron expression"),
        "{err}"
    );
    let (code, out, err) = cli(vec!["delete", "nightly"], None).await.unwrap();
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(
        serde_json::from_str::<Value>(&out).unwrap()["deleted"],
        true
    );
    let (code, _, err) = cli(vec!["get", "nightly"], None).await.unwrap();
    assert_eq!(code, Some(2));
    assert!(err.contains("404"), "{err}");
    server.shutdown().await;
}

/// A batch template: each run enqueues the batch for its tenant, and the run takes the
/// batch's outcome.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_schedule_runs_and_takes_the_batch_outcome() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let mock = headroom_mock::spawn(
        listener,
        headroom_mock::MockConfig {
            profile: headroom_mock::Profile::Hubspot,
            limit: 100,
            window: Duration::from_secs(10),
            ..headroom_mock::MockConfig::default()
        },
    )
    .await
    .unwrap();
    let clock = clock_at("2026-03-02T10:00:00Z");
    let server = start(UPSTREAM, &mock.url(), &clock).await;
    let body = json!({
        "name": "import",
        "cron": "0 * * * *",
        "tenants": ["acme"],
        "batch": {
            "upstream": "up", "format": "hubspot", "max_batch_size": 2,
            "request": {"method": "POST", "path": "/crm/v3/objects/contacts/batch/upsert"},
            "records": [
                {"id": "r1", "properties": {"email": "a@example.com"}},
                {"id": "r2", "properties": {"email": "b@example.com"}},
                {"id": "r3", "properties": {"email": "c@example.com"}}
            ]
        }
    });
    let r = server.post("/v1/schedules", &body).await;
    assert_eq!(
        r.status,
        StatusCode::CREATED,
        "{}",
        String::from_utf8_lossy(&r.body)
    );
    tick(&server, &["import"]).await;
    set(&clock, "2026-03-02T11:00:00Z");
    assert_eq!(
        tick(&server, &["import"]).await,
        vec![("acme".into(), "fired".into())]
    );
    let run = all_runs(&server, "import", 10).await.remove(0);
    let batch = run["batch_id"].as_str().unwrap().to_string();
    let deadline = tokio::time::Instant::now() + LONG;
    loop {
        let v = server.get(&format!("/v1/batches/{batch}")).await.json();
        if v["status"] == "succeeded" {
            assert_eq!(v["tenant"], "acme");
            assert_eq!(v["total"], 3);
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "batch never finished: {v}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let run = all_runs(&server, "import", 10).await.remove(0);
    assert_eq!(run["status"], "succeeded", "{run}");
    assert_eq!(run["batch_status"], "succeeded", "{run}");
    server.shutdown().await;
}

/// `headroom serve` on the real clock, killed with SIGKILL three times while 20 tenants run
/// every second: no (tenant, time) ever runs twice, and every fired run has its job (taken,
/// enqueued, recorded and moved on in one transaction). Asserts on uniqueness only, never on
/// timing, so a slow machine cannot make it fail.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_never_repeats_a_run() {
    use std::process::{Command, Stdio};
    let up = Recorder::start().await;
    let dir = tempfile::tempdir().unwrap();
    let tenants: Vec<String> = (0..20).map(|i| format!("\"t{i:02}\"")).collect();
    let config = format!(
        "store = \"sqlite://{}/headroom.db\"\nauth = \"none\"\n\
         [[upstreams]]\nname = \"up\"\nbase_url = \"{}\"\n\
         [[schedules]]\nname = \"every-second\"\ncron = \"* * * * * *\"\n\
         tenants = [{}]\nstagger = \"1s\"\noverlap = \"allow\"\n\
         job = {{ upstream = \"up\", request = {{ method = \"POST\", path = \"/tick\" }} }}\n",
        dir.path().display(),
        up.url(),
        tenants.join(", ")
    );
    let path = dir.path().join("headroom.toml");
    std::fs::write(&path, config).unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    for life in 0..3u64 {
        let mut child = Command::new(env!("CARGO_BIN_EXE_headroom"))
            .args(["serve", "--config", path.to_str().unwrap()])
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .env("HEADROOM_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("headroom serve starts");
        // Up (listening) first, however slow the machine, then a second or two of runs.
        let deadline = tokio::time::Instant::now() + LONG;
        while tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_err()
        {
            assert!(
                tokio::time::Instant::now() < deadline,
                "headroom serve never came up"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        tokio::time::sleep(Duration::from_millis(1200 + 400 * life)).await;
        child.kill().unwrap();
        child.wait().unwrap();
    }
    let store =
        headroom::store::Store::open(&format!("sqlite://{}/headroom.db", dir.path().display()))
            .await
            .unwrap();
    let mut runs = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let page = store
            .list_runs("every-second", None, cursor.as_deref(), 500)
            .await
            .unwrap();
        runs.extend(page.items);
        match page.next {
            Some(c) => cursor = Some(c),
            None => break,
        }
    }
    let fired: Vec<_> = runs
        .iter()
        .filter(|r| r.outcome == headroom::schedules::RunOutcome::Fired)
        .collect();
    assert!(fired.len() >= 20, "it ran: {} runs", fired.len());
    let mut seen = std::collections::HashSet::new();
    for r in &runs {
        assert!(
            seen.insert((r.tenant.clone(), r.fire_at)),
            "{} at {} recorded twice",
            r.tenant,
            r.fire_at
        );
    }
    use headroom::jobs::JobStore;
    let mut jobs = 0;
    let mut cursor: Option<String> = None;
    loop {
        let page = store
            .list_jobs(&Default::default(), cursor.as_deref(), 500)
            .await
            .unwrap();
        jobs += page.items.len();
        match page.next {
            Some(c) => cursor = Some(c),
            None => break,
        }
    }
    assert_eq!(
        jobs,
        fired.len(),
        "one job per fired run, no more, no fewer"
    );
    for r in &fired {
        match &r.target {
            Some(headroom::schedules::Target::Job { status, .. }) => {
                assert!(status.is_some(), "the job of {r:?} exists")
            }
            other => panic!("a fired run without its job: {other:?}"),
        }
    }
    eprintln!(
        "{} runs over three lives ({} fired)",
        runs.len(),
        fired.len()
    );
}

/// Tenants that all missed their runs while Headroom was down catch up (once) at their
/// stagger offsets after the start, not all at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn catch_up_once_keeps_the_stagger() {
    let up = Recorder::start().await;
    let dir = Arc::new(tempfile::tempdir().unwrap());
    let tenants: Vec<String> = (0..60).map(|i| format!("t{i:02}")).collect();
    let mut body = schedule("spread", "0 * * * *", json!(tenants));
    body["stagger"] = json!("10m");
    body["catch_up"] = json!("once");
    body["overlap"] = json!("allow");
    let clock = clock_at("2026-03-02T09:30:00Z");
    let server = start_in(dir.clone(), UPSTREAM, &up.url(), &clock).await;
    assert_eq!(
        server.post("/v1/schedules", &body).await.status,
        StatusCode::CREATED
    );
    tick(&server, &["spread"]).await;
    server.shutdown().await;

    // Down over 10:00-10:10; back at 12:00:30 (two more hours missed).
    let clock = clock_at("2026-03-02T12:00:30Z");
    let server = start_in(dir, UPSTREAM, &up.url(), &clock).await;
    let start = at("2026-03-02T12:00:30Z");
    let mut per_minute: BTreeMap<i64, u32> = BTreeMap::new();
    let mut t = start;
    while t < start + 600_000 {
        clock.set(timestamp_of(t));
        for (_, outcome) in tick(&server, &["spread"]).await {
            assert_eq!(outcome, "fired");
            *per_minute.entry((t - start) / 60_000).or_default() += 1;
        }
        t += 5_000;
    }
    let runs = all_runs(&server, "spread", 100).await;
    assert_eq!(runs.len(), 60, "each tenant caught up once");
    for run in &runs {
        assert_eq!(run["scheduled_for"], "2026-03-02T10:00:00.000Z", "{run}");
    }
    assert!(
        per_minute.len() >= 8 && per_minute.values().all(|n| *n <= 15),
        "spread over the 10 minutes after the start: {per_minute:?}"
    );
    // Then the 13:00 runs, at the usual offsets.
    let v = server.get("/v1/schedules/spread").await.json();
    assert_eq!(
        v["next_runs"][0]["scheduled_for"],
        "2026-03-02T13:00:00.000Z"
    );
    server.shutdown().await;
}
