//! Observability end to end: rate-limit events (logged, stored, searchable, pruned, never
//! holding a credential), metrics, alerts that fire and resolve against a recording webhook,
//! `/v1/status` with its capacity verdict, and the `events` and `status` commands. Alerts,
//! pruning and status run on a manual clock; assertions are on counts and contents.

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::common::{Recorder, Server};
use headroom_core::clock::{ManualClock, Timestamp};
use http::Method;
use serde_json::{json, Value};

/// 2025-03-01T12:00:00Z.
const T0: u64 = 1_740_830_400;

fn clock() -> ManualClock {
    let c = ManualClock::new();
    c.set(Timestamp::ZERO + Duration::from_secs(T0));
    c
}

/// The `up` upstream, after `[callbacks]` letting the webhooks reach the test's loopback
/// recorders (refused by default).
fn upstream(extra: &str) -> String {
    format!(
        "[callbacks]\nallow = [\"127.0.0.1/32\"]\n[[upstreams]]\nname = \"up\"\nbase_url = \"{{base}}\"\nlimits = [{{ quota = 1000, window = \"1s\" }}]\n{extra}\n"
    )
}

async fn events(server: &Server, query: &str) -> Vec<Value> {
    server.state.observe.flush().await;
    let r = server.get(&format!("/v1/events?{query}")).await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    r.json()["events"].as_array().unwrap().clone()
}

fn kinds(events: &[Value]) -> Vec<&str> {
    events.iter().map(|e| e["kind"].as_str().unwrap()).collect()
}

/// A writer the JSON logs go to, for reading them back.
#[derive(Clone, Default)]
struct Logs(Arc<Mutex<Vec<u8>>>);

impl Write for Logs {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

// Current-thread runtime: the server's tasks run on this thread, under this test's logger.
#[tokio::test(flavor = "current_thread")]
async fn throttles_retries_and_exhaustion_become_events_and_metrics_without_credentials() {
    let logs = Logs::default();
    let writer = logs.clone();
    let subscriber = tracing_subscriber::fmt()
        .json()
        .with_max_level(tracing::Level::INFO)
        .with_writer(move || writer.clone())
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);

    let up = Recorder::start().await;
    let server = Server::start(
        &upstream(
            "retry = { max_attempts = 2, base_delay = \"10ms\", max_wait = \"5s\", on_status = [502] }",
        ),
        &up.url(),
    )
    .await;
    // A throttled answer, then success on the retry.
    up.answer(
        429,
        &[
            ("retry-after", "1"),
            ("x-ratelimit-remaining", "0"),
            ("set-cookie", "sekrit-cookie"),
        ],
    );
    let secret = [
        ("authorization", "Bearer sekrit-token"),
        ("headroom-tenant", "acme"),
    ];
    let r = crate::common::send(
        &server.client,
        server.addr,
        Method::GET,
        "/proxy/up/things/42?api_key=sekrit-query",
        &secret,
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.attempts(), 2);
    // Two 502s: a backoff, then the retries run out.
    up.answer(502, &[]);
    up.answer(502, &[]);
    let r = crate::common::send(
        &server.client,
        server.addr,
        Method::POST,
        "/proxy/up/orders",
        &secret,
    )
    .await;
    assert_eq!(r.status, 502);

    let all = events(&server, "").await;
    assert_eq!(
        kinds(&all),
        vec![
            "throttled",
            "budget_paused",
            "retry",
            "retry_succeeded",
            "backoff",
            "retry_exhausted"
        ],
        "{all:#?}"
    );
    let throttled = &all[0];
    assert_eq!(throttled["level"], "warn");
    assert_eq!(throttled["upstream"], "up");
    assert_eq!(throttled["tenant"], "acme");
    assert_eq!(throttled["endpoint"], "GET /things/42");
    assert_eq!(throttled["attempt"], 1);
    assert_eq!(throttled["status"], 429);
    assert_eq!(throttled["wait_ms"], 1000);
    assert_eq!(throttled["outcome"], "throttled");
    assert_eq!(throttled["headers"]["retry-after"], "1");
    assert_eq!(throttled["headers"]["x-ratelimit-remaining"], "0");
    assert!(throttled["headers"].get("set-cookie").is_none());
    assert_eq!(all[3]["attempt"], 2, "succeeded on the second attempt");
    assert_eq!(all[4]["endpoint"], "POST /orders");
    assert_eq!(all[5]["level"], "error");
    assert_eq!(all[5]["status"], 502);

    // Searchable: level at or above, tenant, upstream, kind, pages.
    let errors = events(&server, "level=error").await;
    assert_eq!(kinds(&errors), vec!["retry_exhausted"]);
    assert!(events(&server, "tenant=globex").await.is_empty());
    assert_eq!(events(&server, "upstream=up&tenant=acme").await.len(), 6);
    assert_eq!(
        kinds(&events(&server, "kind=backoff").await),
        vec!["backoff"]
    );
    let mut cursor = String::new();
    let mut paged = 0;
    loop {
        let r = server
            .get(&format!("/v1/events?limit=4{cursor}"))
            .await
            .json();
        paged += r["events"].as_array().unwrap().len();
        match r["next_cursor"].as_str() {
            Some(c) => cursor = format!("&cursor={c}"),
            None => break,
        }
    }
    assert_eq!(paged, 6, "pages of 4 cover every event once");
    assert!(events(&server, "since=1h").await.len() == 6);
    assert!(events(&server, "until=1h").await.is_empty());
    let bad = server.get("/v1/events?level=loud").await;
    assert_eq!(bad.status, 400);
    assert!(bad.problem()["detail"].as_str().unwrap().contains("level"));

    // Never a credential, in the event log or in the logs.
    let stored = server.get("/v1/events").await;
    let text = String::from_utf8_lossy(&stored.body);
    assert!(!text.contains("sekrit"), "{text}");
    let logged = String::from_utf8(logs.0.lock().unwrap().clone()).unwrap();
    assert!(logged.contains("\"kind\":\"throttled\""), "{logged}");
    assert!(logged.contains("retry_exhausted"));
    assert!(!logged.contains("sekrit"), "{logged}");

    let metrics = String::from_utf8(server.get("/metrics").await.body.to_vec()).unwrap();
    for line in [
        "headroom_throttled_endpoint_responses_total{upstream=\"up\",endpoint=\"GET /things/{id}\"} 1",
        "headroom_retry_outcomes_total{upstream=\"up\",outcome=\"succeeded\"} 1",
        "headroom_retry_outcomes_total{upstream=\"up\",outcome=\"exhausted\"} 1",
        "headroom_throttled_responses_total{upstream=\"up\",tenant=\"acme\"} 1",
        "headroom_rate_limit_events_total{kind=\"throttled\"} 1",
        "headroom_events_dropped_total 0",
    ] {
        assert!(metrics.contains(line), "{line} missing from\n{metrics}");
    }
    assert!(metrics.contains("headroom_backoff_seconds_bucket{le=\"1.0\",upstream=\"up\"}"));
    server.shutdown().await;
}

#[tokio::test]
async fn events_are_pruned_after_the_retention() {
    let clock = clock();
    let up = Recorder::start().await;
    let server = Server::start_with_clock(
        Arc::new(tempfile::tempdir().unwrap()),
        &format!(
            "[events]\nretention = \"1d\"\n{}",
            upstream("retry = { max_attempts = 1 }")
        ),
        &up.url(),
        Some(Arc::new(clock.clone())),
    )
    .await;
    up.answer(429, &[("retry-after", "1")]);
    let r = crate::common::send(&server.client, server.addr, Method::GET, "/proxy/up/a", &[]).await;
    assert_eq!(r.status, 429);
    assert_eq!(events(&server, "").await.len(), 2, "throttled and paused");
    headroom::work::observe::tick(&server.state).await.unwrap();
    assert_eq!(events(&server, "").await.len(), 2, "within the retention");
    clock.advance(Duration::from_secs(86_400 + 3_600));
    up.answer(429, &[("retry-after", "1")]);
    let r = crate::common::send(&server.client, server.addr, Method::GET, "/proxy/up/b", &[]).await;
    assert_eq!(r.status, 429);
    let tick = headroom::work::observe::tick(&server.state).await.unwrap();
    let left = events(&server, "").await;
    assert_eq!(
        left.iter()
            .map(|e| e["endpoint"].as_str().unwrap())
            .collect::<Vec<_>>(),
        vec!["GET /b", "GET /b"],
        "the day-old events are gone, the new ones stay"
    );
    assert!(tick.pruned == 2 || tick.pruned == 0, "{tick:?}"); // 0 if the background tick pruned first
    server.shutdown().await;
}

#[tokio::test]
async fn alerts_fire_once_and_resolve_to_a_webhook() {
    const ALERT_SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    let clock = clock();
    let up = Recorder::start().await;
    let hook = Recorder::start().await;
    let config = format!(
        "{}\n\
         [[alerts]]\nname = \"retries\"\nrule = \"retry_exhaustion\"\nwindow = \"5m\"\nwebhooks = [\"{hook}/hook\"]\nwebhook_secret = \"{ALERT_SECRET}\"\n\
         [[alerts]]\nname = \"errors\"\nrule = \"event_level\"\nlevel = \"error\"\nupstream = \"up\"\nwindow = \"5m\"\nwebhooks = [\"{hook}/hook\"]\n\
         [[alerts]]\nname = \"slow\"\nrule = \"duration\"\nmax_duration = \"1s\"\nwindow = \"5m\"\nwebhooks = [\"{hook}/hook\"]\n",
        upstream("retry = { max_attempts = 2, base_delay = \"10ms\", on_status = [502] }"),
        hook = hook.url()
    );
    let server = Server::start_with_clock(
        Arc::new(tempfile::tempdir().unwrap()),
        &config,
        &up.url(),
        Some(Arc::new(clock.clone())),
    )
    .await;
    up.answer(502, &[]);
    up.answer(502, &[]);
    let r = crate::common::send(&server.client, server.addr, Method::GET, "/proxy/up/x", &[]).await;
    assert_eq!(r.status, 502);
    server.state.observe.record_job_duration("default", 2_500);

    headroom::work::observe::tick(&server.state).await.unwrap();
    let seen = hook.wait_for(3, Duration::from_secs(10)).await;
    let bodies: Vec<Value> = seen
        .iter()
        .map(|r| serde_json::from_slice(&r.body).unwrap())
        .collect();
    assert_eq!(bodies.len(), 3, "{bodies:#?}");
    for b in &bodies {
        assert_eq!(b["status"], "firing");
        assert!(b["text"].as_str().unwrap().contains("FIRING"), "{b}");
    }
    // The rule with a webhook_secret signs its notifications (Standard Webhooks); the others
    // do not.
    for (r, b) in seen.iter().zip(&bodies) {
        let signed = r.headers.get("webhook-signature");
        if b["alert"] == "retries" {
            let (id, ts) = (&r.headers["webhook-id"], &r.headers["webhook-timestamp"]);
            assert_eq!(
                headroom::callbacks::sign(
                    ALERT_SECRET,
                    id.to_str().unwrap(),
                    ts.to_str().unwrap(),
                    &r.body
                )
                .as_deref(),
                signed.and_then(|s| s.to_str().ok()),
                "{b}"
            );
        } else {
            assert!(signed.is_none(), "{b}");
        }
    }
    let mut names: Vec<&str> = bodies
        .iter()
        .map(|b| b["alert"].as_str().unwrap())
        .collect();
    names.sort();
    assert_eq!(names, vec!["errors", "retries", "slow"]);
    let retries = bodies.iter().find(|b| b["alert"] == "retries").unwrap();
    assert_eq!(retries["subject"], "up");
    assert_eq!(retries["value"], 100.0);
    assert_eq!(retries["threshold"], 1.0);
    assert_eq!(seen[0].headers["content-type"], "application/json");

    // Deduplicated: still firing, nothing new sent.
    clock.advance(Duration::from_secs(60));
    headroom::work::observe::tick(&server.state).await.unwrap();
    let alerts = server.get("/v1/alerts").await.json();
    let states: Vec<(&str, &str)> = alerts["alerts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| (a["name"].as_str().unwrap(), a["state"].as_str().unwrap()))
        .collect();
    assert_eq!(
        states,
        vec![
            ("retries", "firing"),
            ("errors", "firing"),
            ("slow", "firing")
        ]
    );
    assert_eq!(hook.seen().len(), 3, "no repeat while it keeps firing");

    // Past the window: every alert resolves, once.
    clock.advance(Duration::from_secs(600));
    headroom::work::observe::tick(&server.state).await.unwrap();
    let seen = hook.wait_for(6, Duration::from_secs(10)).await;
    assert_eq!(seen.len(), 6);
    for r in &seen[3..] {
        let b: Value = serde_json::from_slice(&r.body).unwrap();
        assert_eq!(b["status"], "resolved", "{b}");
        assert!(b["text"].as_str().unwrap().contains("RESOLVED"));
    }
    headroom::work::observe::tick(&server.state).await.unwrap();
    assert_eq!(hook.seen().len(), 6, "resolved once");
    let alerts = server.get("/v1/alerts").await.json();
    assert!(alerts["alerts"]
        .as_array()
        .unwrap()
        .iter()
        .all(|a| a["state"] == "ok"));
    assert_eq!(alerts["resolved"].as_array().unwrap().len(), 3);
    server.shutdown().await;
}

#[tokio::test]
async fn alert_config_errors_name_the_key() {
    for (toml, want) in [
        (
            "[[alerts]]\nname = \"a\"\nrule = \"loud\"\n",
            "alerts[0].rule",
        ),
        (
            "[[alerts]]\nname = \"a\"\nrule = \"duration\"\n",
            "max_duration",
        ),
        (
            "[[alerts]]\nname = \"a\"\nrule = \"retry_exhaustion\"\nupstream = \"nope\"\n",
            "alerts[0].upstream",
        ),
        (
            "[[alerts]]\nname = \"a\"\nrule = \"execution_failed\"\nwebhooks = [\"ftp://x\"]\n",
            "alerts[0].webhooks[0]",
        ),
        // The destination policy of job callbacks: private addresses need `[callbacks] allow`.
        (
            "[[alerts]]\nname = \"a\"\nrule = \"execution_failed\"\nwebhooks = [\"http://169.254.169.254/x\"]\n",
            "alerts[0].webhooks[0]: \"http://169.254.169.254/x\" points to",
        ),
        (
            "[[alerts]]\nname = \"a\"\nrule = \"execution_failed\"\nwebhooks = [\"http://127.0.0.1:9/x\"]\n",
            "[callbacks] allow",
        ),
        (
            "[callbacks]\nallow = [\"10.0.0.0/40\"]\n",
            "callbacks.allow[0]: \"10.0.0.0/40\"",
        ),
        ("[events]\nretention = \"forever\"\n", "events.retention"),
        (
            "[[alerts]]\nname = \"a\"\nrule = \"execution_failed\"\nwebhook_secret = \"hunter2\"\n",
            "alerts[0].webhook_secret",
        ),
    ] {
        let e = headroom::cfg::Config::parse(toml, "h.toml")
            .unwrap_err()
            .to_string();
        assert!(e.contains("h.toml") && e.contains(want), "{e}");
    }
    let c = headroom::cfg::Config::parse("", "h.toml").unwrap();
    assert_eq!(c.observe.retention, Duration::from_secs(14 * 86_400));
}

#[tokio::test]
async fn status_gives_a_capacity_verdict_and_the_commands_show_it() {
    let clock = clock();
    let up = Recorder::start().await;
    // 0.8 calls an hour: every job but perhaps the first waits.
    let server = Server::start_with_clock(
        Arc::new(tempfile::tempdir().unwrap()),
        "[[upstreams]]\nname = \"up\"\nbase_url = \"{base}\"\nlimits = [{ quota = 1, window = \"1h\" }]\n",
        &up.url(),
        Some(Arc::new(clock.clone())),
    )
    .await;
    let submit = |n: usize| {
        let server = &server;
        async move {
            for _ in 0..n {
                let r = server
                    .post(
                        "/v1/jobs",
                        &json!({"upstream": "up", "tenant": "acme",
                                "request": {"method": "POST", "path": "/import", "body": {}}}),
                    )
                    .await;
                assert_eq!(r.status, 202);
            }
        }
    };
    submit(5).await;
    headroom::work::observe::tick(&server.state).await.unwrap();
    clock.advance(Duration::from_secs(60));
    submit(5).await;
    headroom::work::observe::tick(&server.state).await.unwrap();

    let status = server.get("/v1/status").await.json();
    let rows = status["rows"].as_array().unwrap();
    let row = rows
        .iter()
        .find(|r| r["upstream"] == "up" && r["tenant"] == "acme")
        .unwrap_or_else(|| panic!("{status:#}"));
    let waiting = row["queued"].as_u64().unwrap()
        + row["retry_pending"].as_u64().unwrap()
        + row["running"].as_u64().unwrap()
        + row["waiting_bulk"].as_u64().unwrap();
    assert!(waiting >= 9, "{row:#}");
    assert_eq!(row["verdict"], "over_capacity", "{row:#}");
    assert!(row["eta_s"].is_null());
    assert!(
        (row["drain_per_min"].as_f64().unwrap() - 0.8 / 60.0).abs() < 0.01,
        "{row:#}"
    );
    assert!(
        row["backlog_trend_per_min"].as_f64().unwrap() >= 3.5,
        "{row:#}"
    );
    assert!(row["detail"].as_str().unwrap().contains("grows"));

    // Nothing new arrives for a while: the backlog holds, so it fits with an ETA at the
    // budget's pace.
    clock.advance(Duration::from_secs(700));
    headroom::work::observe::tick(&server.state).await.unwrap();
    clock.advance(Duration::from_secs(60));
    headroom::work::observe::tick(&server.state).await.unwrap();
    let status = server.get("/v1/status?window=1h").await.json();
    let row = status["rows"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["upstream"] == "up" && r["tenant"] == "acme")
        .unwrap()
        .clone();
    assert_eq!(row["verdict"], "fits", "{row:#}");
    assert!(row["eta_s"].as_f64().unwrap() > 3600.0, "{row:#}");
    assert_eq!(status["window_s"], 3600.0);
    assert_eq!(server.get("/v1/status?window=soon").await.status, 400);

    let metrics = String::from_utf8(server.get("/metrics").await.body.to_vec()).unwrap();
    assert!(
        metrics.contains("headroom_queue_depth{queue=\"default\",lane=\"bulk\""),
        "{metrics}"
    );
    assert!(
        metrics.contains("headroom_budget_allowance_per_second{upstream=\"up\",limit=\"1h\"}"),
        "{metrics}"
    );

    // The commands, as a user runs them.
    let bin = env!("CARGO_BIN_EXE_headroom");
    let url = format!("http://{}", server.addr);
    let out = tokio::process::Command::new(bin)
        .args(["status", "--server", &url])
        .output()
        .await
        .unwrap();
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        table.contains("UPSTREAM") && table.contains("VERDICT"),
        "{table}"
    );
    assert!(table.contains("acme") && table.contains("fits"), "{table}");
    assert!(table.contains("Open alerts: 0"), "{table}");
    let out = tokio::process::Command::new(bin)
        .args(["status", "--json", "--server", &url])
        .output()
        .await
        .unwrap();
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(v["rows"].is_array());
    server.shutdown().await;
}

#[tokio::test]
async fn the_events_command_prints_and_follows() {
    let up = Recorder::start().await;
    let server = Server::start(&upstream("retry = { max_attempts = 1 }"), &up.url()).await;
    up.answer(429, &[("retry-after", "1")]);
    let r = crate::common::send(
        &server.client,
        server.addr,
        Method::GET,
        "/proxy/up/a",
        &[("headroom-tenant", "acme")],
    )
    .await;
    assert_eq!(r.status, 429);
    server.state.observe.flush().await;
    let bin = env!("CARGO_BIN_EXE_headroom");
    let url = format!("http://{}", server.addr);
    let out = tokio::process::Command::new(bin)
        .args([
            "events", "--server", &url, "--level", "warn", "--tenant", "acme",
        ])
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("WARN") && text.contains("throttled") && text.contains("GET /a"),
        "{text}"
    );
    assert!(
        text.contains("tenant=acme") && text.contains("retry-after=1"),
        "{text}"
    );

    // --follow prints what arrives later.
    let mut follow = tokio::process::Command::new(bin)
        .args([
            "events",
            "--server",
            &url,
            "--json",
            "--follow",
            "--kind",
            "throttled",
        ])
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut stdout = follow.stdout.take().unwrap();
    use tokio::io::AsyncReadExt;
    let mut seen = String::new();
    let mut buf = [0u8; 4096];
    let n = stdout.read(&mut buf).await.unwrap();
    seen.push_str(&String::from_utf8_lossy(&buf[..n]));
    up.answer(429, &[("retry-after", "1")]);
    let r = crate::common::send(
        &server.client,
        server.addr,
        Method::GET,
        "/proxy/up/later",
        &[],
    )
    .await;
    assert_eq!(r.status, 429);
    server.state.observe.flush().await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while !seen.contains("GET /later") && tokio::time::Instant::now() < deadline {
        if let Ok(Ok(n)) = tokio::time::timeout(Duration::from_secs(1), stdout.read(&mut buf)).await
        {
            seen.push_str(&String::from_utf8_lossy(&buf[..n]));
        }
    }
    follow.kill().await.unwrap();
    let lines: Vec<Value> = seen
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(
        lines
            .iter()
            .map(|e| e["endpoint"].as_str().unwrap())
            .collect::<Vec<_>>(),
        vec!["GET /a", "GET /later"],
        "{seen}"
    );
    server.shutdown().await;
}

#[test]
fn the_grafana_dashboard_uses_only_metrics_that_exist() {
    let text = include_str!("../../../../deploy/grafana/headroom.json");
    let dash: Value = serde_json::from_str(text).expect("the dashboard is JSON");
    assert!(dash["panels"].as_array().unwrap().len() >= 10);
    let rendered = headroom::metrics::Metrics::new().render();
    let mut names = std::collections::BTreeSet::new();
    let mut rest = text;
    while let Some(i) = rest.find("headroom_") {
        let name: String = rest[i..]
            .chars()
            .take_while(|c| c.is_ascii_lowercase() || *c == '_')
            .collect();
        rest = &rest[i + name.len()..];
        names.insert(name);
    }
    assert!(names.len() >= 10, "{names:?}");
    for name in names {
        let base = name
            .strip_suffix("_total")
            .or_else(|| name.strip_suffix("_bucket"))
            .unwrap_or(&name);
        assert!(
            rendered.contains(&format!("# TYPE {base} ")),
            "the dashboard uses {name}, which /metrics does not have"
        );
    }
}

/// Waits until the event log holds an event of `kind`.
async fn wait_for_kind(server: &Server, kind: &str) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while events(server, &format!("kind={kind}")).await.is_empty() {
        assert!(tokio::time::Instant::now() < deadline, "no {kind} event");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn spike_failed_and_retry_pending_alerts_fire() {
    let clock = clock();
    let up = Recorder::start().await;
    let hook = Recorder::start().await;
    let config = format!(
        "{}\n\
         [[alerts]]\nname = \"spike\"\nrule = \"throttled_spike\"\nwindow = \"5m\"\nfactor = 2.0\nmin_count = 3\nwebhooks = [\"{hook}/a\"]\n\
         [[alerts]]\nname = \"failed\"\nrule = \"execution_failed\"\nwebhooks = [\"{hook}/b\"]\n\
         [[alerts]]\nname = \"pending\"\nrule = \"retry_pending\"\nwebhooks = [\"{hook}/c\"]\n",
        upstream("retry = { max_attempts = 1, on_status = [502] }"),
        hook = hook.url()
    );
    let server = Server::start_with_clock(
        Arc::new(tempfile::tempdir().unwrap()),
        &config,
        &up.url(),
        Some(Arc::new(clock.clone())),
    )
    .await;
    // Two throttled answers: below min_count, nothing fires.
    for _ in 0..2 {
        up.answer(429, &[("retry-after", "0")]);
        let r =
            crate::common::send(&server.client, server.addr, Method::GET, "/proxy/up/s", &[]).await;
        assert_eq!(r.status, 429);
    }
    headroom::work::observe::tick(&server.state).await.unwrap();
    assert!(hook.seen().is_empty(), "{:?}", hook.seen());
    up.answer(429, &[("retry-after", "0")]);
    let r = crate::common::send(&server.client, server.addr, Method::GET, "/proxy/up/s", &[]).await;
    assert_eq!(r.status, 429);
    // A job that fails for good (400), and one that fails an attempt (502) and waits.
    up.answer(400, &[]);
    let job = json!({"upstream": "up", "request": {"method": "POST", "path": "/bad"}});
    assert_eq!(server.post("/v1/jobs", &job).await.status, 202);
    wait_for_kind(&server, "job_failed").await;
    up.answer(502, &[]);
    let job = json!({"upstream": "up", "max_attempts": 3, "request": {"method": "POST", "path": "/flaky"}});
    assert_eq!(server.post("/v1/jobs", &job).await.status, 202);
    wait_for_kind(&server, "job_retry_pending").await;

    headroom::work::observe::tick(&server.state).await.unwrap();
    let seen = hook.wait_for(3, Duration::from_secs(10)).await;
    let mut got: Vec<(String, Value)> = seen
        .iter()
        .map(|r| (r.path.clone(), serde_json::from_slice(&r.body).unwrap()))
        .collect();
    got.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(got.len(), 3, "{got:#?}");
    assert_eq!(
        (got[0].0.as_str(), &got[0].1["alert"]),
        ("/a", &json!("spike"))
    );
    assert_eq!(got[0].1["value"], 3.0);
    assert_eq!(
        (got[1].0.as_str(), &got[1].1["subject"]),
        ("/b", &json!("default"))
    );
    assert!(got[1].1["text"]
        .as_str()
        .unwrap()
        .contains("failed for good"));
    assert_eq!(
        (got[2].0.as_str(), &got[2].1["alert"]),
        ("/c", &json!("pending"))
    );
    let failed = events(&server, "kind=job_failed").await;
    assert_eq!(failed[0]["queue"], "default");
    assert_eq!(failed[0]["endpoint"], "POST /bad");
    server.shutdown().await;
}

#[tokio::test]
async fn a_tenant_token_sees_its_own_events_only() {
    let rig = crate::common::Rig::start_with_token(
        crate::common::mock(headroom_mock::Profile::RetryAfter, 1, 60),
        "retry = { max_attempts = 1, max_wait = \"10ms\" }",
        Some("admin-token"),
    )
    .await;
    let request = http::Request::post(format!("http://{}/v1/tokens", rig.addr))
        .header("authorization", "Bearer admin-token")
        .header("content-type", "application/json")
        .body(http_body_util::Full::new(bytes::Bytes::from(
            r#"{"tenant":"acme"}"#,
        )))
        .unwrap();
    let response = rig.client.request(request).await.unwrap();
    use http_body_util::BodyExt;
    let created: Value =
        serde_json::from_slice(&response.into_body().collect().await.unwrap().to_bytes()).unwrap();
    let scoped = format!("Bearer {}", created["token"].as_str().unwrap());
    // Both tenants get throttled by the mock after their first call.
    for tenant in ["acme", "globex"] {
        for _ in 0..2 {
            rig.get(
                "/proxy/up/x",
                &[
                    ("proxy-authorization", "Bearer admin-token"),
                    ("headroom-tenant", tenant),
                    ("authorization", tenant),
                ],
            )
            .await;
        }
    }
    let admin = [("authorization", "Bearer admin-token")];
    // Stored by the background writer: wait for both.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let tenants = loop {
        let all = rig.get("/v1/events?kind=throttled", &admin).await.json();
        let tenants: std::collections::BTreeSet<String> = all["events"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["tenant"].as_str().unwrap().to_string())
            .collect();
        if tenants.len() == 2 || tokio::time::Instant::now() > deadline {
            break tenants;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(
        tenants.into_iter().collect::<Vec<_>>(),
        vec!["acme", "globex"]
    );
    let own = rig
        .get("/v1/events?kind=throttled", &[("authorization", &scoped)])
        .await;
    assert_eq!(own.status, 200);
    let own = own.json();
    assert!(!own["events"].as_array().unwrap().is_empty());
    assert!(own["events"]
        .as_array()
        .unwrap()
        .iter()
        .all(|e| e["tenant"] == "acme"));
    let other = rig
        .get("/v1/events?tenant=globex", &[("authorization", &scoped)])
        .await;
    assert_eq!(other.status, 403);
    assert_eq!(
        rig.get("/v1/status", &[("authorization", &scoped)])
            .await
            .status,
        403
    );
    assert_eq!(rig.get("/v1/alerts", &[]).await.status, 401);
    rig.shutdown().await;
}

#[tokio::test]
async fn a_refused_notification_is_sent_again_on_the_next_tick() {
    let clock = clock();
    let up = Recorder::start().await;
    let hook = Recorder::start().await;
    let config = format!(
        "{}\n[[alerts]]\nname = \"errors\"\nrule = \"event_level\"\nwebhooks = [\"{}/hook\"]\n",
        upstream("retry = { max_attempts = 2, base_delay = \"10ms\", on_status = [502] }"),
        hook.url()
    );
    let server = Server::start_with_clock(
        Arc::new(tempfile::tempdir().unwrap()),
        &config,
        &up.url(),
        Some(Arc::new(clock.clone())),
    )
    .await;
    hook.answer(500, &[]);
    up.answer(502, &[]);
    up.answer(502, &[]);
    let r = crate::common::send(&server.client, server.addr, Method::GET, "/proxy/up/x", &[]).await;
    assert_eq!(r.status, 502);
    headroom::work::observe::tick(&server.state).await.unwrap();
    // (The background tick may already have sent it again.)
    assert!(!hook.wait_for(1, Duration::from_secs(10)).await.is_empty());
    headroom::work::observe::tick(&server.state).await.unwrap();
    let seen = hook.wait_for(2, Duration::from_secs(10)).await;
    assert_eq!(seen.len(), 2, "sent again after the 500");
    headroom::work::observe::tick(&server.state).await.unwrap();
    assert_eq!(hook.seen().len(), 2, "and not a third time once taken");
    for r in &seen {
        let b: Value = serde_json::from_slice(&r.body).unwrap();
        assert_eq!(b["status"], "firing");
    }
    server.shutdown().await;
}

/// A rule's webhooks are notified at once, not one after the other: one that accepts and
/// never answers does not hold back the others (it did, for 5 s each).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hanging_webhook_does_not_hold_back_the_others() {
    let clock = clock();
    let up = Recorder::start().await;
    let hook = Recorder::start().await;
    let hang = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let hang_addr = hang.local_addr().unwrap();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = hang.accept().await {
            held.push(s);
        }
    });
    // A long delivery timeout: the hanging webhooks are still waited for when the working
    // one is (or is not yet) notified.
    let config = format!(
        "{}\n[[alerts]]\nname = \"errors\"\nrule = \"event_level\"\n\
         webhooks = [\"http://{hang_addr}/a\", \"http://{hang_addr}/b\", \"{}/hook\"]\n",
        upstream("retry = { max_attempts = 2, base_delay = \"10ms\", on_status = [502] }")
            .replacen("]\n", "]\ntimeout = \"20s\"\n", 1),
        hook.url()
    );
    let server = Server::start_with_clock(
        Arc::new(tempfile::tempdir().unwrap()),
        &config,
        &up.url(),
        Some(Arc::new(clock.clone())),
    )
    .await;
    up.answer(502, &[]);
    up.answer(502, &[]);
    let r = crate::common::send(&server.client, server.addr, Method::GET, "/proxy/up/x", &[]).await;
    assert_eq!(r.status, 502);
    let state = server.state.clone();
    let started = tokio::time::Instant::now();
    let tick = tokio::spawn(async move { headroom::work::observe::tick(&state).await });
    let seen = hook.wait_for(1, Duration::from_secs(30)).await;
    let took = started.elapsed();
    assert_eq!(seen.len(), 1);
    // Milliseconds are expected; one after the other it took at least 5 s per hanging one.
    assert!(
        took < Duration::from_secs(4),
        "the working webhook waited {took:?}"
    );
    tick.abort();
    server.shutdown().await;
}

/// What was firing survives a restart: the alert is not notified again while it keeps
/// firing, and is resolved (once) when it stops.
#[tokio::test]
async fn firing_alerts_survive_a_restart() {
    let clock = clock();
    let up = Recorder::start().await;
    let hook = Recorder::start().await;
    let dir = Arc::new(tempfile::tempdir().unwrap());
    let config = format!(
        "{}\n\
         [[alerts]]\nname = \"retries\"\nrule = \"retry_exhaustion\"\nwindow = \"5m\"\nwebhooks = [\"{hook}/hook\"]\n\
         [[alerts]]\nname = \"errors\"\nrule = \"event_level\"\nlevel = \"error\"\nupstream = \"up\"\nwindow = \"5m\"\nwebhooks = [\"{hook}/hook\"]\n",
        upstream("retry = { max_attempts = 2, base_delay = \"10ms\", on_status = [502] }"),
        hook = hook.url()
    );
    let base = up.url();
    let start =
        || Server::start_with_clock(dir.clone(), &config, &base, Some(Arc::new(clock.clone())));
    let server = start().await;
    up.answer(502, &[]);
    up.answer(502, &[]);
    let r = crate::common::send(&server.client, server.addr, Method::GET, "/proxy/up/x", &[]).await;
    assert_eq!(r.status, 502);
    headroom::work::observe::tick(&server.state).await.unwrap();
    assert_eq!(hook.wait_for(2, Duration::from_secs(10)).await.len(), 2);
    server.shutdown().await;

    // Restarted while the events that fire both alerts are still in the window.
    let server = start().await;
    clock.advance(Duration::from_secs(60));
    headroom::work::observe::tick(&server.state).await.unwrap();
    let alerts = server.get("/v1/alerts").await.json();
    assert!(
        alerts["alerts"]
            .as_array()
            .unwrap()
            .iter()
            .all(|a| a["state"] == "firing"),
        "{alerts}"
    );
    assert_eq!(hook.seen().len(), 2, "not notified again after the restart");

    clock.advance(Duration::from_secs(600));
    headroom::work::observe::tick(&server.state).await.unwrap();
    let seen = hook.wait_for(4, Duration::from_secs(10)).await;
    assert_eq!(seen.len(), 4);
    for r in &seen[2..] {
        let b: Value = serde_json::from_slice(&r.body).unwrap();
        assert_eq!(b["status"], "resolved", "{b}");
    }
    server.shutdown().await;
}

/// A call Headroom refuses itself (429 without calling the upstream: no room within its max
/// wait) is an event, and `headroom status` counts it per upstream and tenant.
#[tokio::test]
async fn refusals_are_events_and_counted_in_status() {
    let clock = clock();
    let up = Recorder::start().await;
    let server = Server::start_with_clock(
        Arc::new(tempfile::tempdir().unwrap()),
        "[[upstreams]]\nname = \"up\"\nbase_url = \"{base}\"\nlimits = [{ quota = 1, window = \"1h\" }]\n",
        &up.url(),
        Some(Arc::new(clock.clone())),
    )
    .await;
    let tenant = [("headroom-tenant", "acme"), ("headroom-max-wait", "1s")];
    let mut statuses = Vec::new();
    for _ in 0..5 {
        let r = crate::common::send(
            &server.client,
            server.addr,
            Method::GET,
            "/proxy/up/x",
            &tenant,
        )
        .await;
        statuses.push(r.status.as_u16());
    }
    let refused_calls = statuses.iter().filter(|s| **s == 429).count();
    assert!(refused_calls >= 1, "{statuses:?}");
    assert_eq!(
        up.seen().len(),
        5 - refused_calls,
        "refused calls did not reach the upstream"
    );

    let refused = events(&server, "kind=refused").await;
    assert_eq!(refused.len(), refused_calls, "{refused:#?}");
    assert_eq!(refused[0]["status"], 429);
    assert_eq!(refused[0]["tenant"], "acme");
    assert_eq!(refused[0]["upstream"], "up");
    assert!(
        refused[0]["wait_ms"].as_u64().unwrap() > 0,
        "{:#}",
        refused[0]
    );

    headroom::work::observe::tick(&server.state).await.unwrap();
    let status = server.get("/v1/status").await.json();
    let row = status["rows"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["upstream"] == "up" && r["tenant"] == "acme")
        .unwrap_or_else(|| panic!("{status:#}"))
        .clone();
    assert_eq!(row["refused"], refused_calls as u64, "{row:#}");
    server.shutdown().await;
}

/// `promtool check metrics` finds nothing wrong with `/metrics` (every family with its help
/// text, names as Prometheus wants them) after calls that fill most families.
#[ignore = "needs promtool: apt-get install prometheus (README: Run the tests)"]
#[tokio::test]
async fn promtool_finds_nothing_wrong_with_the_metrics() {
    let promtool = ["/usr/bin/promtool", "/usr/local/bin/promtool"]
        .into_iter()
        .find(|p| std::path::Path::new(p).exists())
        .expect("promtool is not installed: apt-get install prometheus");
    let up = Recorder::start().await;
    up.answer(429, &[("retry-after", "1")]);
    let server = Server::start(&upstream(""), &up.url()).await;
    for path in ["/proxy/up/a", "/proxy/up/b"] {
        crate::common::send(
            &server.client,
            server.addr,
            Method::GET,
            path,
            &[("headroom-tenant", "acme")],
        )
        .await;
    }
    let text = server.get("/metrics").await.body.to_vec();
    let mut child = std::process::Command::new(promtool)
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child.stdin.take().unwrap().write_all(&text).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success() && out.stdout.is_empty() && out.stderr.is_empty(),
        "promtool: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    server.shutdown().await;
}
