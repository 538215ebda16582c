//! Durable jobs over real sockets: submit, run through the governor, retry, reschedule,
//! deduplicate, cancel, call back, and refuse bad input without storing anything.

use std::time::Duration;

use crate::common::{Recorder, Server};
use http::StatusCode;
use serde_json::json;

const CONFIG: &str = r#"
# The callbacks go to the test's loopback recorders (refused by default).
[callbacks]
allow = ["127.0.0.1/32"]

[[queues]]
name = "retrying"
retry = { max_attempts = 3, interval = "100ms", backoff = "fixed" }

[[queues]]
name = "ordered"
mode = "sequential"

[[queues]]
name = "two-at-a-time"
mode = "throttled"
max_concurrency = 2

[[upstreams]]
name = "up"
base_url = "{base}"
idempotency_header = "Idempotency-Key"
retry = { max_wait = "2s" }
"#;

const LONG: Duration = Duration::from_secs(20);

/// The job's view once it has `status`, or after `LONG` whatever it is then.
async fn job_once(server: &Server, id: &str, status: &str) -> serde_json::Value {
    let deadline = tokio::time::Instant::now() + LONG;
    loop {
        let v = server.get(&format!("/v1/jobs/{id}")).await.json();
        if v["status"] == status || tokio::time::Instant::now() > deadline {
            return v;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

fn job(path: &str) -> serde_json::Value {
    json!({
        "upstream": "up",
        "tenant": "acme",
        "request": {"method": "POST", "path": path, "headers": {"x-trace": "t1"}, "body": {"email": "a@example.com"}},
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_is_stored_run_and_recorded() {
    let up = Recorder::start().await;
    up.answer(
        200,
        &[
            ("x-ratelimit-limit", "100"),
            ("x-ratelimit-remaining", "99"),
        ],
    );
    let server = Server::start(CONFIG, &up.url()).await;
    let r = server.post("/v1/jobs", &job("/crm/contacts")).await;
    assert_eq!(r.status, StatusCode::ACCEPTED);
    let submitted = r.json();
    assert_eq!(submitted["status"], "queued");
    assert_eq!(submitted["lane"], "bulk");
    let id = submitted["id"].as_str().unwrap().to_string();

    let done = server.wait_job(&id, LONG).await;
    assert_eq!(done["status"], "succeeded", "{done}");
    assert_eq!(done["attempts"], 1);
    assert_eq!(done["response"]["status"], 200);
    assert_eq!(done["response"]["body"], json!({"ok": true}));
    let log = &done["attempts_log"][0];
    assert_eq!(log["status"], 200);
    assert!(
        log["rate_limit_headers"]
            .to_string()
            .contains("x-ratelimit-remaining"),
        "{log}"
    );

    let seen = up.seen();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].method, "POST");
    assert_eq!(seen[0].path, "/crm/contacts");
    assert_eq!(seen[0].headers["x-trace"], "t1");
    assert_eq!(seen[0].headers["idempotency-key"], id.as_str());
    assert_eq!(seen[0].headers["content-type"], "application/json");
    assert_eq!(&seen[0].body[..], br#"{"email":"a@example.com"}"#);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_repeated_dedup_id_returns_the_existing_job() {
    let up = Recorder::start().await;
    let server = Server::start(CONFIG, &up.url()).await;
    let mut body = job("/x");
    body["dedup_id"] = json!("evt-123");
    let first = server.post("/v1/jobs", &body).await;
    assert_eq!(first.status, StatusCode::ACCEPTED);
    let again = server.post("/v1/jobs", &body).await;
    assert_eq!(again.status, StatusCode::OK);
    assert_eq!(again.json()["deduplicated"], true);
    assert_eq!(again.json()["id"], first.json()["id"]);
    server
        .wait_job(first.json()["id"].as_str().unwrap(), LONG)
        .await;
    assert_eq!(up.seen().len(), 1);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retryable_failures_are_retried_with_the_same_idempotency_key_then_fail() {
    let up = Recorder::start().await;
    for _ in 0..3 {
        up.answer(503, &[]);
    }
    let server = Server::start(CONFIG, &up.url()).await;
    let mut body = job("/flaky");
    body["queue"] = json!("retrying");
    let id = server.post("/v1/jobs", &body).await.json()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let done = server.wait_job(&id, LONG).await;
    assert_eq!(done["status"], "failed", "{done}");
    assert_eq!(done["attempts"], 3);
    assert!(done["last_error"].as_str().unwrap().contains("503"));
    assert_eq!(done["attempts_log"].as_array().unwrap().len(), 3);
    let keys: Vec<String> = up
        .seen()
        .iter()
        .map(|r| r.headers["idempotency-key"].to_str().unwrap().to_string())
        .collect();
    assert_eq!(keys, vec![id.clone(), id.clone(), id]);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_retry_after_reschedules_without_burning_an_attempt() {
    let up = Recorder::start().await;
    up.answer(429, &[("retry-after", "3600")]);
    let server = Server::start(CONFIG, &up.url()).await;
    let id = server.post("/v1/jobs", &job("/busy")).await.json()["id"]
        .as_str()
        .unwrap()
        .to_string();
    up.wait_for(1, LONG).await;
    let view = job_once(&server, &id, "retry_pending").await;
    assert_eq!(view["status"], "retry_pending", "{view}");
    assert_eq!(view["attempts"], 0, "a throttled attempt does not count");
    let next =
        chrono::DateTime::parse_from_rfc3339(view["next_attempt_at"].as_str().unwrap()).unwrap();
    assert!(
        next.timestamp_millis() > headroom::clock::system_millis() + 50 * 60 * 1000,
        "rescheduled at the upstream's time"
    );
    assert_eq!(view["attempts_log"][0]["status"], 429);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_final_outcome_is_posted_to_the_callback() {
    let up = Recorder::start().await;
    let hook = Recorder::start().await;
    hook.answer(500, &[]); // the first delivery fails and is retried
    let server = Server::start(CONFIG, &up.url()).await;
    let mut body = job("/x");
    body["callback_url"] = json!(format!("{}/done", hook.url()));
    let id = server.post("/v1/jobs", &body).await.json()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let calls = hook.wait_for(2, LONG).await;
    assert_eq!(calls.len(), 2, "delivered on the second try");
    let delivered: serde_json::Value = serde_json::from_slice(&calls[1].body).unwrap();
    assert_eq!(delivered["id"], id.as_str());
    assert_eq!(delivered["status"], "succeeded");
    assert_eq!(calls[1].headers["headroom-job-id"], id.as_str());
    // A finished job cannot be cancelled: 409, saying why.
    let r = server.delete(&format!("/v1/jobs/{id}")).await;
    assert_eq!(r.status, StatusCode::CONFLICT);
    let detail = r.problem()["detail"].as_str().unwrap().to_string();
    assert!(
        detail.contains("is succeeded") && detail.contains("can be cancelled"),
        "{detail}"
    );
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sequential_queue_runs_one_at_a_time_in_order() {
    let up = Recorder::start().await;
    let server = Server::start(CONFIG, &up.url()).await;
    let mut ids = Vec::new();
    for i in 0..8 {
        let mut body = job(&format!("/step/{i}"));
        body["queue"] = json!("ordered");
        ids.push(
            server.post("/v1/jobs", &body).await.json()["id"]
                .as_str()
                .unwrap()
                .to_string(),
        );
    }
    for id in &ids {
        assert_eq!(server.wait_job(id, LONG).await["status"], "succeeded");
    }
    let paths: Vec<String> = up.seen().iter().map(|r| r.path.clone()).collect();
    let expected: Vec<String> = (0..8).map(|i| format!("/step/{i}")).collect();
    assert_eq!(paths, expected);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_list_and_bad_input() {
    let up = Recorder::start().await;
    up.answer(429, &[("retry-after", "3600")]);
    let server = Server::start(CONFIG, &up.url()).await;
    // Bad input: 400 naming the field, nothing stored.
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (b"{not json".to_vec(), "not valid"),
        (serde_json::to_vec(&json!({"upstream": "nope", "request": {"method": "GET", "path": "/"}})).unwrap(), "upstream"),
        (serde_json::to_vec(&json!({"upstream": "up", "queue": "nope", "request": {"method": "GET", "path": "/"}})).unwrap(), "queue"),
        (serde_json::to_vec(&json!({"upstream": "up", "request": {"method": "G ET", "path": "/"}})).unwrap(), "request.method"),
        (serde_json::to_vec(&json!({"upstream": "up", "request": {"method": "GET", "path": "/a/../b"}})).unwrap(), "request.path"),
        (serde_json::to_vec(&json!({"upstream": "up", "request": {"method": "GET", "path": "x"}})).unwrap(), "request.path"),
        (serde_json::to_vec(&json!({"upstream": "up", "max_attempts": 11, "request": {"method": "GET", "path": "/"}})).unwrap(), "max_attempts"),
        (serde_json::to_vec(&json!({"upstream": "up", "request": {"method": "GET", "path": "/", "body": {}, "body_base64": "AA=="}})).unwrap(), "body_base64"),
        (serde_json::to_vec(&json!({"upstream": "up", "request": {"method": "GET", "path": "/"}, "callback_url": "ftp://x"})).unwrap(), "callback_url"),
        (serde_json::to_vec(&json!({"upstream": "up", "request": {"method": "GET"}})).unwrap(), "path"),
    ];
    for (body, field) in cases {
        let r = server.post_raw("/v1/jobs", &body).await;
        assert_eq!(
            r.status,
            StatusCode::BAD_REQUEST,
            "{}",
            String::from_utf8_lossy(&body)
        );
        let detail = r.problem()["detail"].as_str().unwrap().to_string();
        assert!(detail.contains(field), "{detail} should name {field}");
    }
    assert_eq!(server.get("/v1/jobs").await.json()["jobs"], json!([]));

    // A job waiting for its retry can be cancelled.
    let id = server.post("/v1/jobs", &job("/x")).await.json()["id"]
        .as_str()
        .unwrap()
        .to_string();
    up.wait_for(1, LONG).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let r = server.delete(&format!("/v1/jobs/{id}")).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.json()["status"], "cancelled");
    assert_eq!(
        server.delete("/v1/jobs/job_nope").await.status,
        StatusCode::NOT_FOUND
    );
    // Again: still cancelled, still 200 (a repeated DELETE is harmless).
    let r = server.delete(&format!("/v1/jobs/{id}")).await;
    assert_eq!(r.status, StatusCode::OK);

    // Listing: filters and cursor pages.
    for i in 0..5 {
        let mut body = job(&format!("/p/{i}"));
        body["tenant"] = json!("globex");
        server.post("/v1/jobs", &body).await;
    }
    let first = server.get("/v1/jobs?tenant=globex&limit=2").await.json();
    assert_eq!(first["jobs"].as_array().unwrap().len(), 2);
    let cursor = first["next_cursor"].as_str().unwrap();
    let second = server
        .get(&format!("/v1/jobs?tenant=globex&limit=2&cursor={cursor}"))
        .await
        .json();
    assert_eq!(second["jobs"].as_array().unwrap().len(), 2);
    assert_ne!(first["jobs"][0]["id"], second["jobs"][0]["id"]);
    let cancelled = server.get("/v1/jobs?status=cancelled").await.json();
    assert_eq!(cancelled["jobs"].as_array().unwrap().len(), 1);
    let r = server.get("/v1/jobs?status=done").await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert!(r.problem()["detail"].as_str().unwrap().contains("status"));
    let r = server.get("/v1/jobs?cursor=abc").await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert!(r.problem()["detail"].as_str().unwrap().contains("cursor"));
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_throttled_queue_runs_at_most_its_concurrency_in_arrival_order() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let config = headroom_mock::MockConfig {
        profile: headroom_mock::Profile::Unlimited,
        ..Default::default()
    };
    let mock = headroom_mock::spawn(listener, config).await.unwrap();
    let server = Server::start(CONFIG, &mock.url()).await;
    let mut ids = Vec::new();
    for i in 0..6 {
        let body = json!({
            "upstream": "up",
            "queue": "two-at-a-time",
            "request": {"method": "GET", "path": format!("/slow/{i}"), "query": "sleep_ms=300"},
        });
        ids.push(
            server.post("/v1/jobs", &body).await.json()["id"]
                .as_str()
                .unwrap()
                .to_string(),
        );
    }
    let mut spans = Vec::new();
    for id in &ids {
        let job = server.wait_job(id, LONG).await;
        assert_eq!(job["status"], "succeeded", "{job}");
        let a = &job["attempts_log"][0];
        let t = |k: &str| {
            chrono::DateTime::parse_from_rfc3339(a[k].as_str().unwrap())
                .unwrap()
                .timestamp_millis()
        };
        spans.push((t("started_at"), t("finished_at")));
    }
    // At no moment were more than two running.
    for (start, _) in &spans {
        let running = spans
            .iter()
            .filter(|(s, f)| s <= start && start < f)
            .count();
        assert!(running <= 2, "{running} running at once: {spans:?}");
    }
    // Taken in arrival order: two jobs claimed together may start in either order, but no
    // job starts before one that arrived two places earlier.
    for i in 0..spans.len() {
        for j in i + 2..spans.len() {
            assert!(
                spans[i].0 <= spans[j].0,
                "job {j} started before job {i}: {spans:?}"
            );
        }
    }
    server.shutdown().await;
}

// ---- where callbacks may go, and how they are sent (issue 11, items 5 and 6) ------------

/// `CONFIG` without `[callbacks] allow`: the default policy.
fn default_policy() -> String {
    CONFIG.replace("[callbacks]\nallow = [\"127.0.0.1/32\"]\n", "")
}

/// A callback URL naming a private, loopback or link-local address (in any spelling) is
/// refused at submit with a 400 naming `callback_url`, for jobs and batches; nothing is
/// stored. With `[callbacks] allow` naming it, it is taken.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn callbacks_to_private_addresses_are_refused_at_submit() {
    let up = Recorder::start().await;
    let server = Server::start(&default_policy(), &up.url()).await;
    for url in [
        "http://127.0.0.1:6379/",
        "http://127.0.0.1:5432/x",
        "http://169.254.169.254/latest/meta-data/",
        "http://[::1]:8080/",
        "http://[::ffff:127.0.0.1]:6379/",
        "http://[fd00::1]/",
        "http://10.0.0.8/hook",
        "http://192.168.1.1/",
        "http://100.64.0.1/",
        "http://0.0.0.0:7878/",
        "http://2130706433:6379/",
        "http://0x7f.1:6379/",
        "http://localhost:6379/",
    ] {
        let mut body = job("/x");
        body["callback_url"] = json!(url);
        let r = server.post("/v1/jobs", &body).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{url}");
        let detail = r.problem()["detail"].as_str().unwrap().to_string();
        assert!(detail.starts_with("callback_url:"), "{url}: {detail}");
        let batch = json!({
            "upstream": "up",
            "tenant": "acme",
            "format": "hubspot",
            "request": {"method": "POST", "path": "/crm/v3/objects/contacts/batch/upsert"},
            "records": [{"id": "r0", "properties": {"email": "a@example.com"}}],
            "callback_url": url,
        });
        let r = server.post("/v1/batches", &batch).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "batch {url}");
        let detail = r.problem()["detail"].as_str().unwrap().to_string();
        assert!(detail.contains("callback_url"), "batch {url}: {detail}");
    }
    let listed = server.get("/v1/jobs").await.json();
    assert_eq!(listed["jobs"].as_array().map(Vec::len), Some(0), "{listed}");
    server.shutdown().await;

    // Allowed by the operator: taken.
    let server = Server::start(CONFIG, &up.url()).await;
    let mut body = job("/x");
    body["callback_url"] = json!("http://127.0.0.1:9/");
    assert_eq!(
        server.post("/v1/jobs", &body).await.status,
        StatusCode::ACCEPTED
    );
    server.shutdown().await;
}

/// A host name passes the submit check, but the address it resolves to is checked when
/// connecting: a name of a loopback address (this machine's host name) is not called, and
/// the job's callback looks exactly like one whose URL is unreachable (no port-scan oracle).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_name_of_a_private_address_is_refused_when_connecting_like_an_unreachable_url() {
    use headroom::jobs::JobStore;
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .unwrap_or_default()
        .trim()
        .to_string();
    let private = !host.is_empty()
        && std::net::ToSocketAddrs::to_socket_addrs(&(host.as_str(), 80))
            .map(|mut a| a.any(|a| headroom::destination::denied_by_default(a.ip())))
            .unwrap_or(false);
    if !private {
        eprintln!(
            "SKIPPED: this machine's host name \"{host}\" does not resolve to a private address"
        );
        return;
    }
    let up = Recorder::start().await;
    let hook = Recorder::start().await;
    let server = Server::start(&default_policy(), &up.url()).await;
    let submit = |url: String| {
        let mut body = job("/x");
        body["callback_url"] = json!(url);
        let server = &server;
        async move {
            let r = server.post("/v1/jobs", &body).await;
            assert_eq!(r.status, StatusCode::ACCEPTED, "{:?}", r.body);
            r.json()["id"].as_str().unwrap().to_string()
        }
    };
    // Through a name: refused when connecting. A closed port on a public test address
    // (TEST-NET-3): unreachable.
    let refused = submit(format!("http://{host}:{}/cb", hook.addr.port())).await;
    let unreachable = submit("http://203.0.113.1:9/cb".to_string()).await;
    let attempted = |id: String| {
        let server = &server;
        async move {
            let deadline = tokio::time::Instant::now() + LONG;
            loop {
                let job = server.state.store.get_job(&id).await.unwrap().unwrap();
                if job.callback_attempts >= 1 || tokio::time::Instant::now() > deadline {
                    return job;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };
    let (a, b) = (
        attempted(refused.clone()).await,
        attempted(unreachable.clone()).await,
    );
    assert!(a.callback_attempts >= 1 && b.callback_attempts >= 1);
    assert!(hook.seen().is_empty(), "the loopback hook was called");
    let view = |id: String| {
        let server = &server;
        async move { server.get(&format!("/v1/jobs/{id}")).await.json() }
    };
    let (a, b) = (view(refused).await, view(unreachable).await);
    assert_eq!(a["status"], "succeeded");
    assert_eq!(a["callback"], "pending", "{a}");
    assert_eq!(
        a["callback"], b["callback"],
        "refused and unreachable look alike"
    );
    let keys = |v: &serde_json::Value| {
        let mut k: Vec<String> = v.as_object().unwrap().keys().cloned().collect();
        k.sort();
        k
    };
    assert_eq!(keys(&a), keys(&b));
    server.shutdown().await;
}

/// Callbacks go out concurrently, bounded per host and per tenant, with a short timeout:
/// five callbacks of tenant A to a URL that accepts and never answers do not delay tenant
/// B's (it waited behind them for 50 s: one at a time, 10 s each).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hanging_callbacks_do_not_delay_another_tenants() {
    // Accepts connections and never answers; counts those open at once.
    let hang = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let hang_addr = hang.local_addr().unwrap();
    // (open now, most open at once, accepted in all)
    let held = std::sync::Arc::new(std::sync::Mutex::new((0usize, 0usize, 0usize)));
    let keep = held.clone();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = hang.accept().await {
            {
                let mut h = keep.lock().unwrap();
                h.0 += 1;
                h.1 = h.1.max(h.0);
                h.2 += 1;
            }
            let keep = keep.clone();
            tokio::spawn(async move {
                use tokio::io::AsyncReadExt;
                let mut buf = [0u8; 4096];
                while matches!(s.read(&mut buf).await, Ok(n) if n > 0) {}
                keep.lock().unwrap().0 -= 1;
            });
        }
    });
    let up = Recorder::start().await;
    let hook = Recorder::start().await;
    let server = Server::start(CONFIG, &up.url()).await;
    let mut a_ids = Vec::new();
    for i in 0..6 {
        let mut body = job(&format!("/a/{i}"));
        body["callback_url"] = json!(format!("http://{hang_addr}/hang/{i}"));
        a_ids.push(
            server.post("/v1/jobs", &body).await.json()["id"]
                .as_str()
                .unwrap()
                .to_string(),
        );
    }
    for id in &a_ids {
        assert_eq!(server.wait_job(id, LONG).await["status"], "succeeded");
    }
    // A's callbacks are due first and hang.
    let deadline = tokio::time::Instant::now() + LONG;
    while held.lock().unwrap().2 == 0 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(held.lock().unwrap().2 > 0, "A's callbacks were not sent");
    let mut body = job("/b");
    body["tenant"] = json!("bravo");
    body["callback_url"] = json!(format!("{}/b", hook.url()));
    let b = server.post("/v1/jobs", &body).await.json()["id"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(server.wait_job(&b, LONG).await["status"], "succeeded");
    let finished = tokio::time::Instant::now();
    let seen = hook.wait_for(1, Duration::from_secs(60)).await;
    let took = finished.elapsed();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].headers["headroom-job-id"], b.as_str());
    // Well under a second is expected; 5 s leaves room for a loaded machine.
    assert!(
        took < Duration::from_secs(5),
        "B's callback came {took:?} after its job finished"
    );
    // At most 4 at once to one host.
    let most = held.lock().unwrap().1;
    assert!(most <= 4, "{most} connections to the hanging host at once");
    eprintln!("B's callback arrived {took:?} after its job finished");
    server.shutdown().await;
}

/// A tenant's callbacks are signed the Standard Webhooks way once it has a signing secret
/// (`POST /v1/tenants/{tenant}/webhook-secret`, shown once): its own token may rotate its own
/// secret, not another tenant's; another tenant's callbacks are not signed with it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn callbacks_are_signed_with_the_tenants_own_secret() {
    const ADMIN: &str = "admin-token-for-signing";
    let rig = crate::common::Rig::start_full(
        crate::common::mock(headroom_mock::Profile::Ietf, 1000, 1),
        "[callbacks]\nallow = [\"127.0.0.1/32\"]\n",
        "",
        Some(ADMIN),
    )
    .await;
    let a = crate::common::mint(&rig, ADMIN, "tenant-a").await;
    let b = crate::common::mint(&rig, ADMIN, "tenant-b").await;
    let post = |token: String, path: String, body: Option<serde_json::Value>| {
        let rig = &rig;
        async move {
            crate::common::call(
                &rig.client,
                rig.addr,
                http::Method::POST,
                &path,
                &[("authorization", &token)],
                body.as_ref(),
            )
            .await
        }
    };
    let other = post(
        a.clone(),
        "/v1/tenants/tenant-b/webhook-secret".into(),
        None,
    )
    .await;
    assert_eq!(other.status, StatusCode::FORBIDDEN, "A rotates B's secret");
    let made = post(
        a.clone(),
        "/v1/tenants/tenant-a/webhook-secret".into(),
        None,
    )
    .await;
    assert_eq!(made.status, StatusCode::CREATED, "{:?}", made.body);
    let secret = made.json()["secret"].as_str().unwrap().to_string();
    assert!(secret.starts_with("whsec_"));

    let hook = Recorder::start().await;
    let job = json!({"upstream": "up", "request": {"method": "GET", "path": "/x"},
                     "callback_url": format!("{}/done", hook.url())});
    let id_a = post(a.clone(), "/v1/jobs".into(), Some(job.clone()))
        .await
        .json()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let calls = hook.wait_for(1, LONG).await;
    let signed = &calls[0];
    let (id, ts, sig) = (
        signed.headers["webhook-id"].to_str().unwrap(),
        signed.headers["webhook-timestamp"].to_str().unwrap(),
        signed.headers["webhook-signature"].to_str().unwrap(),
    );
    assert_eq!(id, format!("msg_{id_a}"));
    assert_eq!(
        headroom::callbacks::sign(&secret, id, ts, &signed.body).as_deref(),
        Some(sig),
        "the signature verifies with the tenant's secret"
    );
    post(b.clone(), "/v1/jobs".into(), Some(job.clone())).await;
    let calls = hook.wait_for(2, LONG).await;
    assert!(
        !calls[1].headers.contains_key("webhook-signature"),
        "tenant B has no secret: its callback is not signed with A's"
    );
    // A rotation: the new secret signs, and the replaced one too for a day (two signatures,
    // the new first), so that a receiver switching over drops nothing.
    let rotated = post(
        a.clone(),
        "/v1/tenants/tenant-a/webhook-secret".into(),
        None,
    )
    .await;
    assert_eq!(rotated.status, StatusCode::CREATED);
    let new_secret = rotated.json()["secret"].as_str().unwrap().to_string();
    assert_ne!(new_secret, secret);
    assert!(rotated.json()["previous_valid_until"].is_string());
    let id_a2 = post(a.clone(), "/v1/jobs".into(), Some(job)).await.json()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let calls = hook.wait_for(3, LONG).await;
    let signed = &calls[2];
    let (id, ts, sig) = (
        signed.headers["webhook-id"].to_str().unwrap(),
        signed.headers["webhook-timestamp"].to_str().unwrap(),
        signed.headers["webhook-signature"].to_str().unwrap(),
    );
    assert_eq!(id, format!("msg_{id_a2}"));
    let want = [
        headroom::callbacks::sign(&new_secret, id, ts, &signed.body).unwrap(),
        headroom::callbacks::sign(&secret, id, ts, &signed.body).unwrap(),
    ]
    .join(" ");
    assert_eq!(sig, want, "signed with the new secret and the replaced one");
    // The secret is not listed among the tenant's credentials.
    let listed = rig
        .get(
            "/v1/tenants/tenant-a/credentials",
            &[("authorization", &format!("Bearer {ADMIN}"))],
        )
        .await;
    assert_eq!(listed.json()["credentials"], json!([]));
    rig.shutdown().await;
}

/// A job whose upstream has spent its daily quota waits in the store for the reset the API
/// reported, without spending an attempt (the proxy would refuse it as quota-exhausted).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spent_daily_quota_parks_the_job_until_its_reset() {
    let up = Recorder::start().await;
    up.answer(
        200,
        &[
            ("ratelimit-policy", "\"day\";q=1000;w=86400"),
            ("ratelimit", "\"day\";r=100;t=18000"),
        ],
    );
    let server = Server::start(CONFIG, &up.url()).await;
    let first = server.post("/v1/jobs", &job("/a")).await.json()["id"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(server.wait_job(&first, LONG).await["status"], "succeeded");
    // 100 left of 1,000 is below the reserve of 200: nothing more today.
    let id = server.post("/v1/jobs", &job("/b")).await.json()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let view = job_once(&server, &id, "retry_pending").await;
    assert_eq!(view["status"], "retry_pending", "{view}");
    assert_eq!(view["attempts"], 0, "{view}");
    let next =
        chrono::DateTime::parse_from_rfc3339(view["next_attempt_at"].as_str().unwrap()).unwrap();
    let hours = (next.timestamp_millis() - headroom::clock::system_millis()) as f64 / 3.6e6;
    assert!(
        (4.9..=5.01).contains(&hours),
        "parked for {hours:.2} h: {view}"
    );
    assert!(view.to_string().contains("quota"), "{view}");
    assert_eq!(up.seen().len(), 1, "the parked job reached nothing");
    server.shutdown().await;
}
