//! The HTTP edge and request validation over real sockets: connection timeouts and cap,
//! upstream bodies that stall, what a job may ask for, `/metrics` access, and errors that
//! stay problem+json.
//!
//! Timing assertions only have upper bounds far above what is asked for (a timeout of
//! 300 ms is checked within 10 s), or lower bounds that a timer cannot break (a timer does
//! not fire early).

use std::net::SocketAddr;
use std::time::Duration;

use tokio::time::Instant;

use crate::common::{mock, Recorder, Rig, Server};
use headroom_mock::Profile;
use http::{Method, StatusCode};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const GENEROUS: Duration = Duration::from_secs(10);

/// Reads until the peer closes (or `limit` passes): whether it closed, and what it sent.
async fn read_to_close(stream: &mut TcpStream, limit: Duration) -> (bool, Vec<u8>) {
    let mut seen = Vec::new();
    let deadline = Instant::now() + limit;
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Err(_) => return (false, seen),
            Ok(Ok(0)) | Ok(Err(_)) => return (true, seen),
            Ok(Ok(n)) => seen.extend_from_slice(&buf[..n]),
        }
    }
}

/// Sends `GET /healthz` on a raw connection and reads the answer (it is small and framed by
/// Content-Length: reading until the JSON body is in is enough).
async fn healthz_on(stream: &mut TcpStream, limit: Duration) -> Option<String> {
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await
        .ok()?;
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = Instant::now() + limit;
    loop {
        let n = tokio::time::timeout_at(deadline, stream.read(&mut buf))
            .await
            .ok()?
            .ok()?;
        if n == 0 {
            return None;
        }
        seen.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&seen).to_string();
        if text.contains("{\"status\":\"ok\"}") {
            return Some(text);
        }
    }
}

const EDGE: &str = r#"
[[upstreams]]
name = "up"
base_url = "{base}"

[server]
header_read_timeout = "300ms"
idle_timeout = "5s"
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_half_sent_request_head_is_closed_after_the_header_read_timeout() {
    let server = Server::start(EDGE, "http://127.0.0.1:9").await;
    // A fresh connection, then one that already served a request: both get 300 ms for a head
    // from its first byte.
    for warm in [false, true] {
        // Before the connect: a fresh connection's clock starts at the accept.
        let mut started = Instant::now();
        let mut stream = TcpStream::connect(server.addr).await.unwrap();
        if warm {
            assert!(healthz_on(&mut stream, GENEROUS).await.is_some());
            // Before the write: a later head's clock starts at its first byte.
            started = Instant::now();
        }
        stream
            .write_all(b"GET /healthz HTTP/1.1\r\nHost: loc")
            .await
            .unwrap();
        let (closed, _) = read_to_close(&mut stream, GENEROUS).await;
        assert!(
            closed,
            "a half-sent head keeps its connection (warm: {warm})"
        );
        assert!(started.elapsed() >= Duration::from_millis(300));
    }
    // A connection that never sends a byte is closed too.
    let mut silent = TcpStream::connect(server.addr).await.unwrap();
    let (closed, sent) = read_to_close(&mut silent, GENEROUS).await;
    assert!(closed && sent.is_empty());
    // And the server still answers.
    assert_eq!(server.get("/healthz").await.status, StatusCode::OK);
    server.shutdown().await;
}

/// A keep-alive connection that was idle a while (longer than the header-read timeout, well
/// within the idle one) and then starts a head it never finishes: closed the header-read
/// timeout after that head's first byte, not at the end of the idle timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_head_begun_after_an_idle_wait_gets_the_header_read_timeout() {
    let server = Server::start(EDGE, "http://127.0.0.1:9").await;
    let mut stream = TcpStream::connect(server.addr).await.unwrap();
    assert!(healthz_on(&mut stream, GENEROUS).await.is_some());
    tokio::time::sleep(Duration::from_millis(900)).await;
    let started = Instant::now();
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: loc")
        .await
        .unwrap();
    // The idle timeout is 5 s: closing within 3 s of the first byte can only be the
    // header-read timeout's doing (300 ms).
    let (closed, _) = read_to_close(&mut stream, Duration::from_secs(3)).await;
    assert!(
        closed,
        "a half-sent head after an idle wait kept its connection"
    );
    assert!(started.elapsed() >= Duration::from_millis(300));
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_keep_alive_connection_lasts_the_idle_timeout_then_closes() {
    let server = Server::start(EDGE, "http://127.0.0.1:9").await;
    let mut stream = TcpStream::connect(server.addr).await.unwrap();
    assert!(healthz_on(&mut stream, GENEROUS).await.is_some());
    // Idle longer than the header-read timeout (300 ms) but well within the idle one (5 s):
    // still open, and serves the next request.
    tokio::time::sleep(Duration::from_millis(900)).await;
    // Before the request: the server's idle wait starts after it answers.
    let idle_from = Instant::now();
    assert!(
        healthz_on(&mut stream, GENEROUS).await.is_some(),
        "an idle keep-alive connection must last the idle timeout, not the header-read one"
    );
    let (closed, _) = read_to_close(&mut stream, GENEROUS).await;
    assert!(
        closed,
        "an idle keep-alive connection stays open past its idle timeout"
    );
    assert!(idle_from.elapsed() >= Duration::from_secs(5));
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2c_still_works_and_an_idle_h2_connection_is_closed() {
    let server = Server::start(EDGE, "http://127.0.0.1:9").await;
    let tcp = TcpStream::connect(server.addr).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(tcp),
    )
    .await
    .unwrap();
    let conn = tokio::spawn(conn);
    let request = http::Request::get(format!("http://{}/healthz", server.addr))
        .body(http_body_util::Empty::<bytes::Bytes>::new())
        .unwrap();
    let response = sender.send_request(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.version(), http::Version::HTTP_2);
    drop(response);
    // Idle for the idle timeout (5 s): the server says GOAWAY and the connection ends.
    let ended = tokio::time::timeout(GENEROUS, conn).await;
    assert!(ended.is_ok(), "an idle HTTP/2 connection stays open");
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_the_connection_cap_a_new_client_waits_and_is_served_once_a_slot_frees() {
    let config = r#"
[server]
header_read_timeout = "30s"
idle_timeout = "60s"
max_connections = 3
"#;
    let server = Server::start(config, "http://127.0.0.1:9").await;
    // Three keep-alive clients take every slot (each served once, so surely accepted).
    let mut held = Vec::new();
    for _ in 0..3 {
        let mut stream = TcpStream::connect(server.addr).await.unwrap();
        assert!(healthz_on(&mut stream, GENEROUS).await.is_some());
        held.push(stream);
    }
    // A fourth waits in the backlog: connected, but not answered while the cap is reached.
    let mut waiting = TcpStream::connect(server.addr).await.unwrap();
    let early = healthz_on(&mut waiting, Duration::from_millis(700)).await;
    assert!(early.is_none(), "served beyond max_connections: {early:?}");
    // One closes: the waiting client is served (its request was already sent).
    drop(held.pop());
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(GENEROUS, waiting.read(&mut buf))
        .await
        .expect("the waiting client is served once a slot frees")
        .unwrap();
    let text = String::from_utf8_lossy(&buf[..n]).to_string();
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    // The existing clients were never disturbed.
    for stream in &mut held {
        assert!(healthz_on(stream, GENEROUS).await.is_some());
    }
    drop(held);
    drop(waiting);
    server.shutdown().await;
}

/// An upstream that answers every request with `head_and_part` and then never sends more,
/// holding the connection open.
async fn stalling_upstream(head_and_part: &'static [u8]) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut stream, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let mut buf = vec![0u8; 65536];
                let mut seen = Vec::new();
                while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
                    match stream.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => seen.extend_from_slice(&buf[..n]),
                    }
                }
                let _ = stream.write_all(head_and_part).await;
                tokio::time::sleep(Duration::from_secs(3600)).await;
            });
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_whose_answer_body_stalls_fails_and_gives_its_slot_back() {
    let upstream = stalling_upstream(
        b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 100\r\n\r\n{\"partial\":",
    )
    .await;
    let config = r#"
[[upstreams]]
name = "up"
base_url = "{base}"
timeout = "500ms"
max_concurrency = 1
"#;
    let server = Server::start(config, &format!("http://{upstream}")).await;
    let r = server
        .post(
            "/v1/jobs",
            &json!({"upstream": "up", "tenant": "acme", "max_attempts": 1,
                    "request": {"method": "GET", "path": "/slow"}}),
        )
        .await;
    assert_eq!(r.status, StatusCode::ACCEPTED);
    let id = r.json()["id"].as_str().unwrap().to_string();
    let job = server.wait_job(&id, Duration::from_secs(20)).await;
    assert_eq!(job["status"], "failed", "{job}");
    let error = job["last_error"].as_str().unwrap();
    assert!(error.contains("did not arrive within 500ms"), "{error}");
    // The budget's only slot is free again.
    let budgets = server.get("/v1/budgets").await.json();
    assert_eq!(budgets["budgets"][0]["in_flight"], 0, "{budgets}");
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_whose_answer_body_stalls_does_not_stay_running() {
    let upstream = stalling_upstream(
        b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 100\r\n\r\n{\"results\":",
    )
    .await;
    let config = r#"
[[upstreams]]
name = "up"
base_url = "{base}"
timeout = "500ms"
"#;
    let server = Server::start(config, &format!("http://{upstream}")).await;
    let r = server
        .post(
            "/v1/batches",
            &json!({"upstream": "up", "tenant": "acme", "format": "hubspot", "max_attempts": 1,
                    "request": {"method": "POST", "path": "/crm/v3/objects/contacts/batch/upsert"},
                    "records": [{"id": "r1", "properties": {"email": "a@example.com"}}]}),
        )
        .await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{:?}", r.body);
    let id = r.json()["id"].as_str().unwrap().to_string();
    let deadline = Instant::now() + Duration::from_secs(20);
    let summary = loop {
        let s = server.get(&format!("/v1/batches/{id}")).await.json();
        if s["status"] != "running" && s["status"] != "queued" || Instant::now() > deadline {
            break s;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(summary["status"], "completed_with_failures", "{summary}");
    let error = summary["failures"][0]["error"].as_str().unwrap_or_default();
    assert!(error.contains("did not arrive within 500ms"), "{summary}");
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_proxied_call_whose_429_body_stalls_answers_within_its_max_wait() {
    let upstream = stalling_upstream(
        b"HTTP/1.1 429 Too Many Requests\r\nretry-after: 0\r\ncontent-length: 100\r\n\r\n{\"error\":",
    )
    .await;
    // The upstream timeout (60 s) is far beyond the call's max wait (1 s).
    let config = r#"
[[upstreams]]
name = "up"
base_url = "{base}"
timeout = "60s"
"#;
    let server = Server::start(config, &format!("http://{upstream}")).await;
    let started = Instant::now();
    let call = crate::common::send(
        &server.client,
        server.addr,
        Method::GET,
        "/proxy/up/x",
        &[("headroom-max-wait", "1s")],
    );
    let r = tokio::time::timeout(Duration::from_secs(15), call)
        .await
        .expect("a stalled 429 body held the caller past its max wait");
    assert!(started.elapsed() < Duration::from_secs(15));
    assert_eq!(r.status, StatusCode::BAD_GATEWAY);
    let detail = r.problem()["detail"].as_str().unwrap().to_string();
    assert!(detail.contains("max wait"), "{detail}");
    let budgets = server.get("/v1/budgets").await.json();
    assert_eq!(budgets["budgets"][0]["in_flight"], 0, "{budgets}");
    server.shutdown().await;
}

const JOBS: &str = r#"
[[upstreams]]
name = "up"
base_url = "{base}"
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn job_batch_and_schedule_requests_may_not_set_host_hop_by_hop_or_odd_methods() {
    let recorder = Recorder::start().await;
    let server = Server::start(JOBS, &recorder.url()).await;
    let with = |method: &str, headers: serde_json::Value| {
        json!({"upstream": "up", "tenant": "acme",
               "request": {"method": method, "path": "/x", "headers": headers}})
    };
    let mut cases: Vec<(serde_json::Value, String)> = Vec::new();
    for name in [
        "Host",
        "Connection",
        "Keep-Alive",
        "Proxy-Connection",
        "TE",
        "Trailer",
        "Transfer-Encoding",
        "Upgrade",
        "Proxy-Authorization",
        "Content-Length",
    ] {
        cases.push((
            with("POST", json!({ name: "1" })),
            format!("request.headers.{name}"),
        ));
    }
    for method in ["CONNECT", "TRACE", "FOO", "get\u{0}", &"A".repeat(100_000)] {
        cases.push((with(method, json!({})), "request.method".to_string()));
    }
    let many: serde_json::Map<String, serde_json::Value> =
        (0..65).map(|i| (format!("x-h{i}"), json!("v"))).collect();
    cases.push((with("GET", json!(many)), "request.headers".to_string()));
    cases.push((
        with("GET", json!({"x-big": "v".repeat(20_000)})),
        "request.headers".to_string(),
    ));
    for (body, needle) in &cases {
        let r = server.post("/v1/jobs", body).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{needle}");
        let detail = r.problem()["detail"].as_str().unwrap().to_string();
        assert!(detail.contains(needle.as_str()), "{needle}: {detail}");
        assert!(
            detail.len() < 400,
            "the detail echoes too much: {}",
            detail.len()
        );
    }
    // Lower-case methods from the list are fine, as before.
    let r = server.post("/v1/jobs", &with("patch", json!({}))).await;
    assert_eq!(r.status, StatusCode::ACCEPTED);
    // Batches and schedules share the check.
    let r = server
        .post(
            "/v1/batches",
            &json!({"upstream": "up", "tenant": "acme", "format": "hubspot",
                    "request": {"method": "POST", "path": "/batch", "headers": {"host": "evil.example"}},
                    "records": [{"id": "r1"}]}),
        )
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert!(r.problem()["detail"]
        .as_str()
        .unwrap()
        .contains("request.headers.host"));
    let r = server
        .post(
            "/v1/schedules",
            &json!({"name": "s", "cron": "0 2 * * *", "tenants": ["acme"],
                    "job": {"upstream": "up", "request": {"method": "TRACE", "path": "/x"}}}),
        )
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{:?}", r.body);
    assert!(r.problem()["detail"]
        .as_str()
        .unwrap()
        .contains("request.method"));
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_stored_with_a_host_header_still_goes_to_the_base_urls_host() {
    use headroom::jobs::JobStore;
    let recorder = Recorder::start().await;
    let server = Server::start(JOBS, &recorder.url()).await;
    // As if stored before the rule: straight into the store.
    let job = headroom::jobs::NewJob {
        id: "job_legacy".into(),
        queue: "default".into(),
        scope: String::new(),
        upstream: "up".into(),
        tenant: Some("acme".into()),
        lane: headroom_core::Lane::Bulk,
        request: headroom::jobs::JobRequest {
            method: "GET".into(),
            path: "/x".into(),
            query: None,
            headers: vec![
                ("Host".into(), "evil.example".into()),
                ("Transfer-Encoding".into(), "chunked".into()),
                ("x-kept".into(), "1".into()),
            ],
            body: None,
            body_is_json: false,
        },
        dedup_id: None,
        dedup_until: None,
        callback_url: None,
        max_attempts: 1,
        idempotency_key: "job_legacy".into(),
        created_at: 0,
    };
    server.state.store.insert_job(job).await.unwrap();
    server.state.jobs_wake.notify_one();
    let job = server.wait_job("job_legacy", Duration::from_secs(20)).await;
    assert_eq!(job["status"], "succeeded", "{job}");
    let seen = recorder.seen();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].headers["host"], recorder.addr.to_string());
    assert!(seen[0].headers.get("transfer-encoding").is_none());
    assert_eq!(seen[0].headers["x-kept"], "1");
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tomcat_and_double_encoded_escapes_are_refused() {
    let rig = Rig::start(mock(Profile::Unlimited, 100, 10), "").await;
    for path in [
        "/proxy/up/..;/admin",
        "/proxy/up/a/..;jsessionid=1/admin",
        "/proxy/up/a/.;/b",
        "/proxy/up/%252e%252e/admin",
        "/proxy/up/a/%252E%252E/admin",
        "/proxy/up/a%252Fb",
        "/proxy/up/a%255c..%255cb",
    ] {
        let r = rig.get(path, &[]).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{path}");
        assert!(r.problem()["detail"]
            .as_str()
            .unwrap()
            .contains("not allowed"));
    }
    // Job paths go through the same check.
    let r = crate::common::post_raw(
        &rig.client,
        rig.addr,
        "/v1/jobs",
        serde_json::to_vec(&json!({"upstream": "up",
            "request": {"method": "GET", "path": "/a/..;/admin"}}))
        .unwrap(),
    )
    .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert!(r.problem()["detail"]
        .as_str()
        .unwrap()
        .contains("request.path"));
    // Plain names with dots and semicolons still pass.
    assert_eq!(
        rig.get("/proxy/up/v1/a;v=2/file.json", &[]).await.status,
        StatusCode::OK
    );
    assert_eq!(rig.mock.stats().accepted, 1);
    rig.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_want_the_admin_token_when_tokens_are_on() {
    let rig = Rig::start_with_token(mock(Profile::Ietf, 100, 10), "", Some("s3cret")).await;
    let r = rig.get("/metrics", &[]).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    r.problem();
    let r = rig
        .get("/metrics", &[("authorization", "Bearer wrong")])
        .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    let r = rig
        .get(
            "/metrics",
            &[
                ("authorization", "Bearer s3cret"),
                ("accept", "application/openmetrics-text;version=1.0.0"),
            ],
        )
        .await;
    assert_eq!(r.status, StatusCode::OK);
    assert!(String::from_utf8_lossy(&r.body).contains("# EOF"));
    // Without asking for OpenMetrics: the Prometheus text format.
    let r = rig
        .get("/metrics", &[("authorization", "Bearer s3cret")])
        .await;
    let text = String::from_utf8_lossy(&r.body).to_string();
    assert!(
        text.contains("# TYPE headroom_proxy_requests_total counter") && !text.contains("# EOF"),
        "{text}"
    );
    // A tenant-scoped token would see other tenants' names there: not enough.
    let request = http::Request::post(format!("http://{}/v1/tokens", rig.addr))
        .header("authorization", "Bearer s3cret")
        .header("content-type", "application/json")
        .body(http_body_util::Full::new(bytes::Bytes::from_static(
            br#"{"tenant":"acme"}"#,
        )))
        .unwrap();
    let response = rig.client.request(request).await.unwrap();
    assert!(response.status().is_success());
    use http_body_util::BodyExt;
    let token: serde_json::Value =
        serde_json::from_slice(&response.into_body().collect().await.unwrap().to_bytes()).unwrap();
    let scoped = token["token"].as_str().unwrap().to_string();
    let r = rig
        .get(
            "/metrics",
            &[("authorization", &format!("Bearer {scoped}"))],
        )
        .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    rig.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenant_series_on_metrics_stay_bounded() {
    let recorder = Recorder::start().await;
    let config = r#"
[metrics]
max_tenants = 3

[[upstreams]]
name = "up"
base_url = "{base}"
retry = { max_attempts = 1 }
"#;
    let server = Server::start(config, &recorder.url()).await;
    for i in 0..40 {
        recorder.answer(429, &[("retry-after", "0")]);
        let tenant = format!("t{i}");
        let r = crate::common::send(
            &server.client,
            server.addr,
            Method::GET,
            "/proxy/up/x",
            &[("headroom-tenant", &tenant)],
        )
        .await;
        assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS);
    }
    let text = String::from_utf8(server.get("/metrics").await.body.to_vec()).unwrap();
    let series: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("headroom_throttled_responses_total{"))
        .collect();
    assert_eq!(series.len(), 4, "{series:#?}");
    assert!(
        text.contains("headroom_throttled_responses_total{upstream=\"up\",tenant=\"other\"} 37")
    );
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_axum_makes_itself_are_problem_json() {
    let server = Server::start(JOBS, "http://127.0.0.1:9").await;
    // Over the body limit (2 MB by default on /v1/jobs). On a client of its own: the server
    // closes that connection without reading the body, and a pooled client could otherwise
    // send the next request on it.
    let own: crate::common::HttpClient =
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .build_http();
    let r = crate::common::post_raw(&own, server.addr, "/v1/jobs", vec![b' '; 3 << 20]).await;
    assert_eq!(r.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert!(r.problem()["detail"]
        .as_str()
        .unwrap()
        .contains("larger than"));
    // A path parameter that is not UTF-8.
    let r = server.get("/v1/jobs/%FF%FE").await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert!(r.problem()["detail"].as_str().unwrap().contains("UTF-8"));
    // A method the route does not take.
    let r = crate::common::send(
        &server.client,
        server.addr,
        Method::PUT,
        "/v1/jobs",
        &[("content-type", "application/json")],
    )
    .await;
    assert_eq!(r.status, StatusCode::METHOD_NOT_ALLOWED);
    let detail = r.problem()["detail"].as_str().unwrap().to_string();
    assert!(detail.contains("not allowed"), "{detail}");
    assert!(r.header("allow").contains("GET"), "{:?}", r.headers);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_names_are_not_told_before_authentication() {
    let rig = Rig::start_with_token(mock(Profile::Ietf, 100, 10), "", Some("s3cret")).await;
    let r = rig.get("/proxy/nope/x", &[]).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    let detail = r.problem()["detail"].as_str().unwrap().to_string();
    assert!(!detail.contains("up"), "{detail}");
    let r = rig
        .get("/proxy/nope/x", &[("proxy-authorization", "Bearer s3cret")])
        .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    assert!(r.problem()["detail"]
        .as_str()
        .unwrap()
        .contains("unknown upstream"));
    rig.shutdown().await;
}

/// An upstream that answers every request after `delay`, counting them.
async fn slow_upstream(
    delay: Duration,
) -> (SocketAddr, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = seen.clone();
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = listener.accept().await else {
                return;
            };
            let counter = counter.clone();
            tokio::spawn(async move {
                loop {
                    // One request head (these requests have no body), then the slow answer.
                    let mut head = Vec::new();
                    let mut buf = [0u8; 1024];
                    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                        match s.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => head.extend_from_slice(&buf[..n]),
                        }
                    }
                    counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    tokio::time::sleep(delay).await;
                    let answer = b"HTTP/1.1 200 OK\r\ncontent-length: 4\r\n\r\nslow";
                    if s.write_all(answer).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    (addr, seen)
}

/// SIGTERM (how systemd, Docker and Kubernetes stop a service) with a proxied call and a job
/// attempt in flight: both finish, the process exits 0, no new connection is taken meanwhile,
/// and the job is not sent again at the next start.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_calls_and_job_attempts_in_flight_finish_then_exits_0() {
    let (up, seen) = slow_upstream(Duration::from_millis(1500)).await;
    let dir = tempfile::tempdir().unwrap();
    let config = format!(
        "auth = \"none\"\nstore = \"sqlite://{}/h.db\"\n\
         [server]\nshutdown_grace = \"20s\"\n\
         [[upstreams]]\nname = \"slow\"\nbase_url = \"http://{up}\"\ntimeout = \"10s\"\n",
        dir.path().display()
    );
    let port = crate::common::free_port();
    let mut process = crate::common::Process::start(dir.path(), &config, port);
    let client: crate::common::HttpClient =
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .build_http();
    process.ready(&client).await;
    let addr: SocketAddr = process.addr.parse().unwrap();

    let job = crate::common::post_raw(
        &client,
        addr,
        "/v1/jobs",
        serde_json::to_vec(
            &json!({"upstream": "slow", "request": {"method": "GET", "path": "/job"}}),
        )
        .unwrap(),
    )
    .await;
    assert_eq!(job.status, StatusCode::ACCEPTED, "{:?}", job.body);
    let job_id = job.json()["id"].as_str().unwrap().to_string();
    let call = {
        let client = client.clone();
        tokio::spawn(async move {
            crate::common::send(&client, addr, Method::GET, "/proxy/slow/call", &[]).await
        })
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while seen.load(std::sync::atomic::Ordering::SeqCst) < 2 {
        assert!(
            Instant::now() < deadline,
            "the call and the job never reached the upstream"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    process.terminate();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        TcpStream::connect(addr).await.is_err(),
        "a new connection was taken after SIGTERM"
    );
    let answer = call.await.unwrap();
    assert_eq!(answer.status, StatusCode::OK, "the call in flight was cut");
    assert_eq!(&answer.body[..], b"slow");
    let status = process.exited(Duration::from_secs(15)).await;
    assert!(
        matches!(status, Some(s) if s.success()),
        "headroom did not exit 0 after SIGTERM: {status:?}"
    );

    // The attempt finished before the exit: at the next start the job is done, not sent again.
    let process = crate::common::Process::start(dir.path(), &config, port);
    process.ready(&client).await;
    let r = crate::common::send(
        &client,
        addr,
        Method::GET,
        &format!("/v1/jobs/{job_id}"),
        &[],
    )
    .await;
    assert_eq!(r.json()["status"], "succeeded", "{:?}", r.json());
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        seen.load(std::sync::atomic::Ordering::SeqCst),
        2,
        "the job was sent again"
    );
}
