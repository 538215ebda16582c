//! `headroom mock` over real sockets: each profile's headers read right, limits per
//! Authorization, the stats and the forced statuses. Windows are long (60 s or more) so nothing
//! resets during a test.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use headroom_core::signals::{interpret, Signals};
use headroom_mock::{MockConfig, MockHandle, Profile};
use http::{HeaderMap, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;

type HttpClient = Client<HttpConnector, Full<Bytes>>;

struct Reply {
    status: StatusCode,
    headers: HeaderMap,
    body: Bytes,
}

impl Reply {
    fn signals(&self) -> Signals {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs_f64();
        let headers = self.headers.iter().map(|(k, v)| (k.as_str(), v.as_bytes()));
        interpret(self.status.as_u16(), headers, &self.body, now)
    }

    fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).expect("a JSON body")
    }
}

async fn start(profile: Profile, limit: u32) -> (MockHandle, HttpClient) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let config = MockConfig {
        profile,
        limit,
        window: Duration::from_secs(600),
        ..MockConfig::default()
    };
    let mock = headroom_mock::spawn(listener, config).await.unwrap();
    let client = Client::builder(TokioExecutor::new()).build_http();
    (mock, client)
}

async fn send(
    client: &HttpClient,
    mock: &MockHandle,
    method: &str,
    path: &str,
    auth: Option<&str>,
) -> Reply {
    let mut request = Request::builder()
        .method(method)
        .uri(format!("{}{path}", mock.url()));
    if let Some(auth) = auth {
        request = request.header("authorization", auth);
    }
    let request = request
        .body(Full::new(Bytes::from_static(b"hello")))
        .unwrap();
    let response = client.request(request).await.unwrap();
    let (parts, body) = response.into_parts();
    Reply {
        status: parts.status,
        headers: parts.headers,
        body: body.collect().await.unwrap().to_bytes(),
    }
}

async fn get(client: &HttpClient, mock: &MockHandle, path: &str) -> Reply {
    send(client, mock, "GET", path, None).await
}

#[tokio::test]
async fn every_profile_reports_remaining_going_down_by_one() {
    for profile in [
        Profile::Ietf,
        Profile::IetfLegacy,
        Profile::XRatelimit,
        Profile::XRatelimitDelta,
        Profile::Hubspot,
        Profile::Shopify,
    ] {
        let (mock, client) = start(profile, 10).await;
        for call in 1..=3 {
            let reply = get(&client, &mock, "/v1/things").await;
            assert_eq!(reply.status, StatusCode::OK, "{profile:?}");
            let signals = reply.signals();
            assert!(!signals.throttled, "{profile:?}");
            assert_eq!(signals.limits.len(), 1, "{profile:?}: {signals:?}");
            let limit = &signals.limits[0];
            assert_eq!(limit.quota, Some(10.0), "{profile:?}");
            assert_eq!(limit.remaining, Some(10.0 - call as f64), "{profile:?}");
        }
    }
}

#[tokio::test]
async fn after_the_limit_a_429_with_retry_after() {
    let (mock, client) = start(Profile::RetryAfter, 3).await;
    for _ in 0..3 {
        let reply = get(&client, &mock, "/").await;
        assert_eq!(reply.status, StatusCode::OK);
        assert!(reply.signals().limits.is_empty(), "no headers but on a 429");
        assert!(reply.headers.get("retry-after").is_none());
    }
    let reply = get(&client, &mock, "/").await;
    assert_eq!(reply.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(reply.headers["content-type"], "application/json");
    let signals = reply.signals();
    assert!(signals.throttled);
    let wait = signals.retry_after.expect("a Retry-After");
    assert!(
        wait > Duration::ZERO && wait <= Duration::from_secs(600),
        "{wait:?}"
    );
}

#[tokio::test]
async fn unlimited_never_throttles_and_sends_no_limit_headers() {
    let (mock, client) = start(Profile::Unlimited, 1).await;
    for _ in 0..20 {
        let reply = get(&client, &mock, "/bench").await;
        assert_eq!(reply.status, StatusCode::OK);
        assert_eq!(reply.signals(), Signals::default());
    }
    assert_eq!(mock.stats().accepted, 20);
}

#[tokio::test]
async fn each_authorization_has_its_own_bucket() {
    let (mock, client) = start(Profile::Ietf, 2).await;
    let status = |r: Reply| r.status;
    for _ in 0..2 {
        assert_eq!(
            status(send(&client, &mock, "GET", "/", Some("Bearer a")).await),
            200
        );
    }
    let a = send(&client, &mock, "GET", "/", Some("Bearer a")).await;
    assert_eq!(a.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(
        status(send(&client, &mock, "GET", "/", Some("Bearer b")).await),
        200
    );
    assert_eq!(status(get(&client, &mock, "/").await), 200);

    let stats = mock.stats();
    assert_eq!((stats.accepted, stats.throttled), (4, 1));
    let a = &stats.by_tenant["Bearer a"];
    assert_eq!((a.accepted, a.throttled, a.max_in_window), (2, 1, 2));
    assert_eq!(stats.by_tenant["Bearer b"].accepted, 1);
    assert_eq!(stats.by_tenant[headroom_mock::ANONYMOUS].accepted, 1);
}

#[tokio::test]
async fn stats_echo_and_reset_over_http() {
    let (mock, client) = start(Profile::Hubspot, 5).await;
    let reply = send(&client, &mock, "POST", "/crm/v3/objects?limit=5", None).await;
    assert_eq!(
        reply.json(),
        serde_json::json!({"ok": true, "method": "POST", "path": "/crm/v3/objects", "body_bytes": 5})
    );
    get(&client, &mock, "/x").await;

    let stats = get(&client, &mock, "/_mock/stats").await.json();
    assert_eq!(stats["accepted"], 2);
    assert_eq!(stats["throttled"], 0);
    assert_eq!(stats["max_in_window"], 2);
    assert_eq!(stats["by_tenant"][headroom_mock::ANONYMOUS]["accepted"], 2);

    let reset = send(&client, &mock, "POST", "/_mock/reset", None).await;
    assert_eq!(reset.status, StatusCode::OK);
    assert_eq!(mock.stats(), headroom_mock::MockStats::default());
    let reply = get(&client, &mock, "/x").await;
    assert_eq!(
        reply.signals().limits[0].remaining,
        Some(4.0),
        "limits reset too"
    );
}

#[tokio::test]
async fn forced_status_and_sleep_bypass_the_limit() {
    let (mock, client) = start(Profile::Ietf, 1).await;
    assert_eq!(get(&client, &mock, "/").await.status, StatusCode::OK);
    assert_eq!(get(&client, &mock, "/").await.status, 429);

    let reply = get(&client, &mock, "/orders?status=503").await;
    assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(
        !reply.signals().throttled,
        "a forced 503 is not a rate limit"
    );
    assert_eq!(get(&client, &mock, "/?sleep_ms=1").await.status, 200);
    assert_eq!(get(&client, &mock, "/?status=abc").await.status, 400);

    let stats = mock.stats();
    assert_eq!((stats.accepted, stats.throttled, stats.forced), (1, 1, 2));
}

#[tokio::test]
async fn a_hidden_client_spends_the_quota() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let config = MockConfig {
        profile: Profile::Ietf,
        limit: 1000,
        window: Duration::from_secs(1),
        hidden_share: 0.5,
        ..MockConfig::default()
    };
    let mock = headroom_mock::spawn(listener, config).await.unwrap();
    let client: HttpClient = Client::builder(TokioExecutor::new()).build_http();
    get(&client, &mock, "/").await; // creates the anonymous bucket
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while mock.stats().hidden_accepted == 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the hidden client never spent"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    mock.shutdown().await;
}

#[tokio::test]
async fn hubspot_batches_apply_records_and_refuse_invalid_ones() {
    let (mock, client) = start(Profile::Hubspot, 10).await;
    let batch = |ids: &[&str]| {
        let inputs: Vec<serde_json::Value> = ids
            .iter()
            .map(|id| {
                let email = if id.starts_with("bad") {
                    "invalid@"
                } else {
                    "a@example.com"
                };
                serde_json::json!({"objectWriteTraceId": id, "properties": {"email": email}})
            })
            .collect();
        serde_json::to_vec(&serde_json::json!({ "inputs": inputs })).unwrap()
    };
    let post = |body: Vec<u8>| {
        let request = Request::builder()
            .method("POST")
            .uri(format!(
                "{}/crm/v3/objects/contacts/batch/upsert",
                mock.url()
            ))
            .body(Full::new(Bytes::from(body)))
            .unwrap();
        client.request(request)
    };
    let r = post(batch(&["r1", "r2"])).await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let r = post(batch(&["r3", "bad4"])).await.unwrap();
    assert_eq!(r.status(), StatusCode::MULTI_STATUS);
    let body: serde_json::Value =
        serde_json::from_slice(&r.into_body().collect().await.unwrap().to_bytes()).unwrap();
    assert_eq!(
        body["errors"][0]["context"]["objectWriteTraceId"][0],
        "bad4"
    );
    assert_eq!(body["results"][0]["objectWriteTraceId"], "r3");
    post(batch(&["r1"])).await.unwrap();
    let stats = mock.stats();
    assert_eq!(stats.batch_records, 5);
    assert_eq!(stats.batch_records_applied, 3);
    assert_eq!(stats.batch_records_reapplied, 1);
    assert_eq!(stats.batch_records_invalid, 1);
}
