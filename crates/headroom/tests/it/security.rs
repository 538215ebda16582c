//! The safe default and the open mode: a fresh server wants a token it generated itself, and
//! `auth = "none"` still refuses what a web page (cross-site requests, DNS rebinding) could
//! send.

use std::time::Duration;

use crate::common::{HttpClient, Recorder, Reply, Server};
use bytes::Bytes;
use headroom::cfg::Config;
use headroom::server;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::json;

const UPSTREAM: &str = r#"
[[upstreams]]
name = "up"
base_url = "{base}"
"#;

async fn request(
    client: &HttpClient,
    addr: std::net::SocketAddr,
    method: Method,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> Reply {
    let mut builder = Request::builder()
        .method(method)
        .uri(format!("http://{addr}{path}"));
    for (k, v) in headers {
        builder = builder.header(*k, *v);
    }
    let response = client
        .request(
            builder
                .body(Full::new(Bytes::from(body.to_string())))
                .unwrap(),
        )
        .await
        .expect("Headroom answers");
    let (parts, body) = response.into_parts();
    Reply {
        status: parts.status,
        headers: parts.headers,
        body: body.collect().await.unwrap().to_bytes(),
    }
}

fn job_body() -> String {
    json!({
        "upstream": "up", "tenant": "acme",
        "request": {"method": "POST", "path": "/steal"},
        "callback_url": "http://attacker.example/steal",
    })
    .to_string()
}

/// Without `HEADROOM_API_TOKEN` and without `auth = "none"`, a first start generates an
/// admin token (0600, next to the database), every call without it is refused, and a
/// restart keeps the same token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_default_generates_an_admin_token_and_requires_it() {
    let up = Recorder::start().await;
    let dir = tempfile::tempdir().unwrap();
    let toml = format!(
        "store = \"sqlite://{}/headroom.db\"\n{}",
        dir.path().display(),
        UPSTREAM.replace("{base}", &up.url())
    );
    let client: HttpClient = Client::builder(TokioExecutor::new()).build_http();
    let mut tokens = Vec::new();
    for _ in 0..2 {
        let config = Config::parse(&toml, "test.toml").unwrap();
        let state = server::start(config, None).await.unwrap();
        let token = state.api_token.clone().expect("an admin token was made");
        let file = dir.path().join("admin.token");
        assert_eq!(std::fs::read_to_string(&file).unwrap().trim(), token);
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&file).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600, "the token file is the owner's only");
        }
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let served = tokio::spawn(server::serve(state, listener, async {
            let _ = stopped.await;
        }));
        let json = [("content-type", "application/json")];
        let r = request(&client, addr, Method::POST, "/v1/jobs", &json, &job_body()).await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED);
        let r = request(
            &client,
            addr,
            Method::GET,
            "/proxy/up/x",
            &[("headroom-tenant", "acme")],
            "",
        )
        .await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED);
        let bearer = format!("Bearer {token}");
        let r = request(
            &client,
            addr,
            Method::GET,
            "/v1/jobs",
            &[("authorization", &bearer)],
            "",
        )
        .await;
        assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
        let r = request(
            &client,
            addr,
            Method::GET,
            "/proxy/up/x",
            &[("proxy-authorization", &bearer)],
            "",
        )
        .await;
        assert_eq!(r.status, StatusCode::OK);
        tokens.push(token);
        let _ = stop.send(());
        served.await.unwrap().unwrap();
    }
    assert_eq!(tokens[0], tokens[1], "a restart keeps the token");
    assert!(
        up.seen().iter().all(|r| r.path != "/steal"),
        "nothing unauthenticated reached the upstream"
    );
}

/// `auth = "none"`: what a web page could send is refused and stores nothing; Headroom's own
/// local clients (JSON, loopback Host, no Origin) are served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_open_mode_refuses_cross_site_and_rebound_requests() {
    let up = Recorder::start().await;
    let server = Server::start(UPSTREAM, &up.url()).await;
    let (client, addr) = (&server.client, server.addr);
    let host = addr.to_string();
    type Case<'a> = (
        &'a str,
        Method,
        &'a str,
        Vec<(&'a str, &'a str)>,
        StatusCode,
    );
    let cases: &[Case] = &[
        (
            "a form-like text/plain POST",
            Method::POST,
            "/v1/jobs",
            vec![("content-type", "text/plain")],
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
        ),
        (
            "a POST without a content type",
            Method::POST,
            "/v1/jobs",
            vec![],
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
        ),
        (
            "a cross-site Origin",
            Method::POST,
            "/v1/jobs",
            vec![
                ("content-type", "application/json"),
                ("origin", "https://evil.example"),
            ],
            StatusCode::FORBIDDEN,
        ),
        (
            "a cross-site fetch",
            Method::POST,
            "/v1/jobs",
            vec![
                ("content-type", "application/json"),
                ("sec-fetch-site", "cross-site"),
            ],
            StatusCode::FORBIDDEN,
        ),
        (
            "a same-site fetch from another port",
            Method::POST,
            "/v1/jobs",
            vec![
                ("content-type", "application/json"),
                ("origin", "http://127.0.0.1:3000"),
            ],
            StatusCode::FORBIDDEN,
        ),
        (
            "a rebound host name",
            Method::POST,
            "/v1/jobs",
            vec![
                ("content-type", "application/json"),
                ("host", "evil.example:7878"),
            ],
            StatusCode::FORBIDDEN,
        ),
        (
            "a read under a rebound host name",
            Method::GET,
            "/v1/jobs",
            vec![("host", "evil.example")],
            StatusCode::FORBIDDEN,
        ),
        (
            "a cross-site call through the proxy",
            Method::POST,
            "/proxy/up/steal",
            vec![
                ("content-type", "text/plain"),
                ("origin", "https://evil.example"),
            ],
            StatusCode::FORBIDDEN,
        ),
        (
            "an image load through the proxy",
            Method::GET,
            "/proxy/up/steal",
            vec![("sec-fetch-site", "cross-site")],
            StatusCode::FORBIDDEN,
        ),
    ];
    for (what, method, path, headers, want) in cases {
        let r = request(client, addr, method.clone(), path, headers, &job_body()).await;
        assert_eq!(r.status, *want, "{what}: {:?}", r.body);
        let detail = r.problem()["detail"].as_str().unwrap().to_string();
        assert!(
            detail.contains("Content-Type")
                || detail.contains("Origin")
                || detail.contains("Sec-Fetch-Site")
                || detail.contains("Host"),
            "{what}: the detail names the header: {detail}"
        );
    }
    let listed = server.get("/v1/jobs").await.json();
    assert_eq!(
        listed["jobs"].as_array().unwrap().len(),
        0,
        "nothing stored"
    );
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(up.seen().is_empty(), "nothing reached the upstream");

    // Headroom's own clients still work: JSON, a loopback Host, same-origin at most.
    let origin = format!("http://{host}");
    let r = request(
        client,
        addr,
        Method::POST,
        "/v1/jobs",
        &[
            ("content-type", "application/json; charset=utf-8"),
            ("origin", &origin),
            ("sec-fetch-site", "same-origin"),
        ],
        &job_body(),
    )
    .await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{:?}", r.body);
    let r = request(
        client,
        addr,
        Method::GET,
        "/proxy/up/ok",
        &[("host", &format!("localhost:{}", addr.port()))],
        "",
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
    server.shutdown().await;
}

/// With `auth = "none"` a scoped token would check nothing, so none can be minted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_open_mode_mints_no_scoped_tokens() {
    let up = Recorder::start().await;
    let server = Server::start(UPSTREAM, &up.url()).await;
    let r = server.post("/v1/tokens", &json!({"tenant": "acme"})).await;
    assert_eq!(r.status, StatusCode::CONFLICT);
    assert!(r.problem()["detail"]
        .as_str()
        .unwrap()
        .contains("auth = \"none\""));
    server.shutdown().await;
}

/// `auth = "none"` is for loopback: a wider listener with it does not start.
#[tokio::test]
async fn the_open_mode_does_not_start_beyond_loopback() {
    let dir = tempfile::tempdir().unwrap();
    let toml = format!(
        "listen = \"0.0.0.0:7878\"\nauth = \"none\"\nstore = \"sqlite://{}/h.db\"\n",
        dir.path().display()
    );
    let config = Config::parse(&toml, "test.toml").unwrap();
    let e = server::start(config, None).await.err().expect("refused");
    assert!(format!("{e:#}").contains("loopback"), "{e:#}");
    let e = Config::parse("auth = \"open\"\n", "h.toml").unwrap_err();
    assert!(e.to_string().contains("auth: \"open\""), "{e}");
}

/// An upstream's `Retry-After: 34000000` (393 days) is hostile input: the budget pauses for
/// at most `max_pause`, the proxy answers at once, a job fails with a reason instead of being
/// rescheduled a year ahead, and other tenants of a shared budget go on after the cap.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_year_long_retry_after_is_capped_by_max_pause() {
    let up = Recorder::start().await;
    let server = Server::start(
        r#"
[[upstreams]]
name = "up"
base_url = "{base}"
budget = "shared"
max_pause = "1s"
retry = { max_wait = "30s" }
"#,
        &up.url(),
    )
    .await;
    up.answer(429, &[("retry-after", "34000000")]);
    let started = tokio::time::Instant::now();
    let r = server_call(&server, "acme").await;
    assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS);
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "the proxy answers at once, not after its 30 s max wait"
    );
    assert_eq!(r.attempts(), 1, "not retried");
    let budgets = server.get("/v1/budgets").await.json();
    let paused = budgets["budgets"][0]["paused_for_s"].as_f64().unwrap();
    assert!(paused <= 1.0, "the pause is capped at max_pause: {budgets}");
    // Another tenant of the shared budget is served once the capped pause is over.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(server_call(&server, "globex").await.status, StatusCode::OK);

    // A job that gets the same answer fails with a reason, at once.
    up.answer(429, &[("retry-after", "34000000")]);
    let id = server
        .post(
            "/v1/jobs",
            &json!({"upstream": "up", "tenant": "acme", "request": {"method": "POST", "path": "/j"}}),
        )
        .await
        .json()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let view = server.wait_job(&id, Duration::from_secs(20)).await;
    assert_eq!(view["status"], "failed", "{view}");
    let error = view["last_error"].as_str().unwrap();
    assert!(error.contains("max_pause"), "{error}");
    server.shutdown().await;
}

async fn server_call(server: &Server, tenant: &str) -> Reply {
    crate::common::send(
        &server.client,
        server.addr,
        Method::GET,
        "/proxy/up/x",
        &[("headroom-tenant", tenant)],
    )
    .await
}

/// In a shared budget one tenant's backlog does not hold back the others: tenants take
/// turns, so another tenant's call waits about one pacing interval per waiting tenant, not
/// behind the whole backlog (which would be refused: ~10 s against a 5 s max wait).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_backlog_does_not_starve_others_in_a_shared_budget() {
    let up = Recorder::start().await;
    let server = Server::start(
        r#"
[[upstreams]]
name = "up"
base_url = "{base}"
budget = "shared"
limits = [{ quota = 10, window = "1s" }]
"#,
        &up.url(),
    )
    .await;
    let mut flood = Vec::new();
    for _ in 0..80 {
        let (client, addr) = (server.client.clone(), server.addr);
        flood.push(tokio::spawn(async move {
            crate::common::send(
                &client,
                addr,
                Method::GET,
                "/proxy/up/flood",
                &[
                    ("headroom-tenant", "hog"),
                    ("headroom-lane", "bulk"),
                    ("headroom-max-wait", "60s"),
                ],
            )
            .await
            .status
        }));
    }
    // Let the backlog form (8 calls per second go; 80 are queued).
    tokio::time::sleep(Duration::from_millis(500)).await;
    let r = crate::common::send(
        &server.client,
        server.addr,
        Method::GET,
        "/proxy/up/mine",
        &[
            ("headroom-tenant", "small"),
            ("headroom-lane", "bulk"),
            ("headroom-max-wait", "5s"),
        ],
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    assert!(
        r.wait_ms() < 3000,
        "waited {} ms behind another tenant's backlog",
        r.wait_ms()
    );
    let seen = up.seen();
    let hog_before = seen
        .iter()
        .take_while(|s| s.path != "/mine")
        .filter(|s| s.path == "/flood")
        .count();
    assert!(hog_before < 40, "{hog_before} of the backlog went first");
    for f in flood {
        assert_eq!(f.await.unwrap(), StatusCode::OK);
    }
    server.shutdown().await;
}

/// A batch body over the limit is refused with a problem that says what to do, before it is
/// held in memory whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_batch_is_refused_with_a_problem() {
    let up = Recorder::start().await;
    let server = Server::start(UPSTREAM, &up.url()).await;
    let mut body = br#"{"upstream": "up", "format": "hubspot", "request": {"method": "POST", "path": "/b"}, "records": ["#.to_vec();
    let record = br#"{"id": "r", "properties": {"email": "a@example.com", "pad": "xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"}},"#;
    while body.len() <= headroom::jobs::batches::MAX_BATCH_BODY {
        body.extend_from_slice(record);
    }
    body.extend_from_slice(br#"{"id": "last"}]}"#);
    let r = server.post_raw("/v1/batches", &body).await;
    assert_eq!(r.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert!(r.problem()["detail"].as_str().unwrap().contains("split"));
    server.shutdown().await;
}

/// After a throttled answer that names no time (no Retry-After, no reset), a job and a
/// batch's records wait for the budget's own pause (the core's verdict), not a fixed second.
/// The pause is a jittered backoff of up to 60 s here, so a fixed 1 s is told apart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_and_a_batch_retry_at_the_budgets_pause() {
    use headroom::jobs::BatchStore;
    let up = Recorder::start().await;
    let server = Server::start(
        r#"
[[upstreams]]
name = "up"
base_url = "{base}"
breaker = { failure_threshold = 100 }
retry = { base_delay = "60s", max_delay = "60s" }
"#,
        &up.url(),
    )
    .await;
    let paused_until = |budgets: serde_json::Value, tenant: &str| {
        let b = budgets["budgets"]
            .as_array()
            .unwrap()
            .iter()
            .find(|b| b["key"] == format!("tenant:{tenant}"))
            .cloned()
            .unwrap_or_default();
        headroom::clock::system_millis()
            + (b["paused_for_s"].as_f64().unwrap_or(0.0) * 1000.0) as i64
    };

    up.answer(429, &[]);
    let id = server
        .post(
            "/v1/jobs",
            &json!({"upstream": "up", "tenant": "acme", "request": {"method": "POST", "path": "/j"}}),
        )
        .await
        .json()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let view = loop {
        let v = server.get(&format!("/v1/jobs/{id}")).await.json();
        if v["status"] == "retry_pending" || tokio::time::Instant::now() > deadline {
            break v;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(view["status"], "retry_pending", "{view}");
    let pause_end = paused_until(server.get("/v1/budgets").await.json(), "acme");
    let next = chrono::DateTime::parse_from_rfc3339(view["next_attempt_at"].as_str().unwrap())
        .unwrap()
        .timestamp_millis();
    assert!(
        (next - pause_end).abs() < 700,
        "the job retries at the budget's pause: next {next}, pause ends {pause_end}"
    );

    up.answer(429, &[]);
    let r = server
        .post(
            "/v1/batches",
            &json!({"upstream": "up", "tenant": "globex", "format": "hubspot",
                    "request": {"method": "POST", "path": "/crm/v3/objects/contacts/batch/upsert"},
                    "records": [{"id": "r1", "properties": {"email": "a@example.com"}}]}),
        )
        .await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{:?}", r.body);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while up.seen().len() < 2 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The chunk's answer is recorded just after it arrives.
    let store = &server.state.store;
    let next = loop {
        let next = store.next_chunk_at().await.unwrap();
        if next.is_some() || tokio::time::Instant::now() > deadline {
            break next;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let pause_end = paused_until(server.get("/v1/budgets").await.json(), "globex");
    let next = next.expect("the record waits for a retry");
    assert!(
        (next - pause_end).abs() < 700,
        "the batch's record retries at the budget's pause: next {next}, pause ends {pause_end}"
    );
    server.shutdown().await;
}

/// Headers many servers route on cannot ride along with a job: it must reach the method,
/// path and host it was checked for.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn job_headers_cannot_reroute_the_call() {
    let up = Recorder::start().await;
    let server = Server::start(UPSTREAM, &up.url()).await;
    for header in [
        "X-HTTP-Method-Override",
        "X-Original-URL",
        "X-Rewrite-URL",
        "X-Forwarded-Host",
        "Forwarded",
    ] {
        let r = server
            .post(
                "/v1/jobs",
                &json!({"upstream": "up", "tenant": "acme",
                        "request": {"method": "GET", "path": "/x", "headers": {header: "/admin"}}}),
            )
            .await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{header}");
        let detail = r.problem()["detail"].as_str().unwrap().to_string();
        assert!(detail.contains("request.headers"), "{header}: {detail}");
    }
    assert!(up.seen().is_empty());
    server.shutdown().await;
}
