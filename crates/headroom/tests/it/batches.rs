//! Batches over real sockets: records chunked to a HubSpot-like bulk endpoint, paced under
//! its limit, partial failures reported, nothing lost or sent twice — also across a kill -9.

use std::time::Duration;

use crate::common::{free_port, Process, Recorder, Server};
use headroom_mock::{MockConfig, MockHandle, Profile};
use http::StatusCode;
use serde_json::{json, Value};

/// `n` contact records; every 33rd has an email the upstream refuses.
fn records(n: usize) -> Vec<Value> {
    (0..n)
        .map(|i| {
            let email = if i % 33 == 7 {
                format!("invalid-{i}")
            } else {
                format!("c{i}@example.com")
            };
            json!({"id": format!("r{i}"), "properties": {"email": email}})
        })
        .collect()
}

fn invalid_count(n: usize) -> u64 {
    (0..n).filter(|i| i % 33 == 7).count() as u64
}

async fn start_mock(limit: u32, window_s: u64, latency_ms: u64) -> MockHandle {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let config = MockConfig {
        profile: Profile::Hubspot,
        limit,
        window: Duration::from_secs(window_s),
        latency: Duration::from_millis(latency_ms),
        ..MockConfig::default()
    };
    headroom_mock::spawn(listener, config).await.unwrap()
}

fn config(limit: u32, window_s: u64) -> String {
    format!(
        "[[upstreams]]\nname = \"crm\"\nbase_url = \"{{base}}\"\nlimits = [{{ quota = {limit}, window = \"{window_s}s\" }}]\n"
    )
}

fn batch(n: usize) -> Value {
    json!({
        "upstream": "crm",
        "tenant": "acme",
        "format": "hubspot",
        "max_batch_size": 100,
        "request": {"method": "POST", "path": "/crm/v3/objects/contacts/batch/upsert"},
        "records": records(n),
    })
}

async fn wait_batch(get: impl Fn() -> tokio::task::JoinHandle<Value>, limit: Duration) -> Value {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        let v = get().await.unwrap();
        let done = v["status"] == "succeeded" || v["status"] == "completed_with_failures";
        if done || tokio::time::Instant::now() > deadline {
            return v;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_is_chunked_paced_and_every_record_accounted_for() {
    let mock = start_mock(20, 2, 0).await;
    let server = Server::start(&config(20, 2), &mock.url()).await;
    let r = server.post("/v1/batches", &batch(1000)).await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{:?}", r.body);
    let id = r.json()["id"].as_str().unwrap().to_string();
    assert_eq!(r.json()["total"], 1000);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let view = loop {
        let v = server.get(&format!("/v1/batches/{id}")).await.json();
        if v["pending"] == 0 || tokio::time::Instant::now() > deadline {
            break v;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let invalid = invalid_count(1000);
    assert_eq!(view["status"], "completed_with_failures", "{view}");
    assert_eq!(view["succeeded"], 1000 - invalid);
    assert_eq!(view["failed"], invalid);
    assert_eq!(view["calls"], 10, "100 records per call, each sent once");
    let failures = view["failures"].as_array().unwrap();
    assert_eq!(failures.len() as u64, invalid);
    assert_eq!(failures[0]["record_id"], "r7");
    assert!(failures[0]["error"]
        .as_str()
        .unwrap()
        .contains("VALIDATION_ERROR"));
    let stats = mock.stats();
    assert_eq!(stats.throttled, 0, "paced under the limit: {stats:?}");
    assert!(stats.max_in_window <= 20);
    assert_eq!(stats.batch_records_applied, 1000 - invalid);
    assert_eq!(stats.batch_records_reapplied, 0, "no record sent twice");
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_batches_are_refused_and_nothing_is_stored() {
    let up = Recorder::start().await;
    let server = Server::start(&config(100, 10), &up.url()).await;
    let mut unknown_format = batch(2);
    unknown_format["format"] = json!("soap");
    let mut not_objects = batch(2);
    not_objects["records"] = json!([1, 2]);
    let mut empty = batch(2);
    empty["records"] = json!([]);
    let mut bad_path = batch(2);
    bad_path["request"]["path"] = json!("/a/%2e%2e/b");
    let cases = [
        (unknown_format, "format"),
        (not_objects, "records[0]"),
        (empty, "records"),
        (bad_path, "request.path"),
        (json!({"upstream": "nope"}), "missing field"),
    ];
    for (body, field) in cases {
        let r = server.post("/v1/batches", &body).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{body}");
        let detail = r.problem()["detail"].as_str().unwrap().to_string();
        assert!(detail.contains(field), "{detail} should name {field}");
    }
    let mut huge = batch(1);
    huge["records"] = json!(vec![json!({"properties": {}}); 100_001]);
    let r = server.post("/v1/batches", &huge).await;
    assert_eq!(r.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(
        server.get("/v1/batches/batch_nope").await.status,
        StatusCode::NOT_FOUND
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(up.seen().is_empty(), "nothing was sent");
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kill_9_mid_import_loses_nothing_and_reports_what_may_repeat() {
    const N: usize = 4000;
    // 20 calls per 2 s at 80 %: 8 calls/s of 100 records, with 150 ms of upstream latency so
    // that calls are in flight when the kill comes.
    let mock = start_mock(20, 2, 150).await;
    let dir = tempfile::tempdir().unwrap();
    let config = format!(
        "store = \"sqlite://{}/headroom.db\"\nauth = \"none\"\n{}",
        dir.path().display(),
        config(20, 2).replace("{base}", &mock.url())
    );
    let client: crate::common::HttpClient =
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .build_http();
    let port = free_port();
    let mut first = Process::start(dir.path(), &config, port);
    first.ready(&client).await;
    let addr: std::net::SocketAddr = first.addr.parse().unwrap();
    let r = crate::common::post_raw(
        &client,
        addr,
        "/v1/batches",
        serde_json::to_vec(&batch(N)).unwrap(),
    )
    .await;
    assert_eq!(r.status, StatusCode::ACCEPTED);
    let id = r.json()["id"].as_str().unwrap().to_string();

    // Kill it once part of the import is done.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while mock.stats().batch_records < 1000 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    first.kill9();
    let at_kill = mock.stats();
    assert!(
        at_kill.batch_records >= 1000 && at_kill.batch_records < N as u64,
        "{at_kill:?}"
    );
    // Let calls that were in flight at the kill reach the upstream and finish.
    tokio::time::sleep(Duration::from_millis(500)).await;

    let second = Process::start(dir.path(), &config, port);
    second.ready(&client).await;
    let get = || {
        let (client, id) = (client.clone(), id.clone());
        tokio::spawn(async move {
            crate::common::send(
                &client,
                addr,
                http::Method::GET,
                &format!("/v1/batches/{id}?failures_limit=100000"),
                &[],
            )
            .await
            .json()
        })
    };
    let view = wait_batch(get, Duration::from_secs(90)).await;
    let invalid = invalid_count(N);
    assert_eq!(view["pending"], 0, "{view}");
    assert_eq!(
        view["succeeded"].as_u64().unwrap() + view["failed"].as_u64().unwrap(),
        N as u64
    );
    assert_eq!(view["failed"], invalid, "only the invalid records failed");
    for f in view["failures"].as_array().unwrap() {
        assert!(
            f["error"].as_str().unwrap().contains("VALIDATION_ERROR"),
            "{f}"
        );
    }
    let stats = mock.stats();
    // Every valid record was applied; any applied twice was in flight at the kill and is
    // counted in the batch's report.
    assert_eq!(stats.batch_records_applied, N as u64 - invalid);
    let possibly = view["possibly_duplicated"].as_u64().unwrap();
    assert!(
        stats.batch_records_reapplied <= possibly,
        "re-applied {} > reported {possibly}",
        stats.batch_records_reapplied
    );
    assert!(
        possibly <= 4 * 100,
        "at most the chunks in flight: {possibly}"
    );
    assert_eq!(stats.throttled, 0);
}

/// A batch's `callback_url` gets the finished batch, as `GET /v1/batches/{id}` shows it, once
/// it is final; a failed delivery is tried again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_finished_batch_is_posted_to_its_callback() {
    let mock = start_mock(1000, 1, 0).await;
    let hook = Recorder::start().await;
    hook.answer(500, &[]); // the first delivery fails and is retried
    let config = format!(
        "[callbacks]\nallow = [\"127.0.0.1/32\"]\n{}",
        config(1000, 1)
    );
    let server = Server::start(&config, &mock.url()).await;
    let mut body = batch(150);
    body["callback_url"] = json!(format!("{}/batch-done", hook.url()));
    let r = server.post("/v1/batches", &body).await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{:?}", r.body);
    let id = r.json()["id"].as_str().unwrap().to_string();
    let calls = hook.wait_for(2, Duration::from_secs(30)).await;
    assert_eq!(calls.len(), 2, "delivered on the second try");
    let delivered: Value = serde_json::from_slice(&calls[1].body).unwrap();
    assert_eq!(delivered["id"], id.as_str());
    // Final, every record accounted for (the mock fails a few records for good).
    assert!(
        delivered["status"] == "succeeded" || delivered["status"] == "completed_with_failures",
        "{delivered:#}"
    );
    let (ok, failed) = (
        delivered["succeeded"].as_u64().unwrap(),
        delivered["failed"].as_u64().unwrap(),
    );
    assert_eq!(ok + failed, 150, "{delivered:#}");
    assert_eq!(delivered["pending"], 0);
    // Times are RFC 3339, as a job's are.
    let created = delivered["created_at"].as_str().unwrap_or_default();
    assert!(
        created.len() == 24 && created.ends_with('Z') && created.contains('T'),
        "{delivered:#}"
    );
    assert_eq!(
        delivered["failures"]
            .as_array()
            .map_or(0, |f| f.len() as u64),
        failed,
        "the failures are listed"
    );
    assert_eq!(calls[1].headers["headroom-batch-id"], id.as_str());
    assert_eq!(calls[1].path, "/batch-done");
    // Delivered: not sent again.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(hook.seen().len(), 2);
    // A finished batch cannot be cancelled: 409, saying why.
    let r = server.delete(&format!("/v1/batches/{id}")).await;
    assert_eq!(r.status, StatusCode::CONFLICT);
    let detail = r.problem()["detail"].as_str().unwrap().to_string();
    assert!(detail.contains("is finished"), "{detail}");
    server.shutdown().await;
}

/// `GET /v1/batches` lists batches in submission order with filters and cursor pages; a
/// tenant's token lists its own tenant's only and cannot ask for another's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batches_are_listed_per_tenant_with_filters_and_pages() {
    const ADMIN: &str = "admin-token-for-batch-listing";
    let rig = crate::common::Rig::start_with_token(
        crate::common::mock(Profile::Hubspot, 1000, 1),
        "",
        Some(ADMIN),
    )
    .await;
    let admin = format!("Bearer {ADMIN}");
    let a = crate::common::mint(&rig, ADMIN, "tenant-a").await;
    let b = crate::common::mint(&rig, ADMIN, "tenant-b").await;
    let list = |token: String, query: &'static str| {
        let rig = &rig;
        async move {
            crate::common::call(
                &rig.client,
                rig.addr,
                http::Method::GET,
                &format!("/v1/batches{query}"),
                &[("authorization", &token)],
                None,
            )
            .await
        }
    };
    let mut ids = Vec::new();
    for token in [&a, &a, &b] {
        let mut body = batch(3);
        body["upstream"] = json!("up");
        body.as_object_mut().unwrap().remove("tenant");
        let r = crate::common::call(
            &rig.client,
            rig.addr,
            http::Method::POST,
            "/v1/batches",
            &[("authorization", token)],
            Some(&body),
        )
        .await;
        assert_eq!(r.status, StatusCode::ACCEPTED, "{:?}", r.body);
        ids.push(r.json()["id"].as_str().unwrap().to_string());
    }
    let listed = |r: &crate::common::Reply| -> Vec<String> {
        r.json()["batches"]
            .as_array()
            .unwrap()
            .iter()
            .map(|b| b["id"].as_str().unwrap().to_string())
            .collect()
    };
    let mine = list(a.clone(), "").await;
    assert_eq!(mine.status, StatusCode::OK);
    assert_eq!(listed(&mine), ids[..2].to_vec(), "tenant A sees its two");
    assert_eq!(listed(&list(b.clone(), "").await), ids[2..].to_vec());
    assert_eq!(
        list(a.clone(), "?tenant=tenant-b").await.status,
        StatusCode::FORBIDDEN,
        "a tenant's token cannot list another tenant's batches"
    );
    // The admin sees all, a page at a time.
    let first = list(admin.clone(), "?limit=2").await;
    assert_eq!(listed(&first), ids[..2].to_vec());
    let cursor = first.json()["next_cursor"].as_str().unwrap().to_string();
    let next = crate::common::call(
        &rig.client,
        rig.addr,
        http::Method::GET,
        &format!("/v1/batches?limit=2&cursor={cursor}"),
        &[("authorization", &admin)],
        None,
    )
    .await;
    assert_eq!(listed(&next), ids[2..].to_vec());
    assert!(next.json()["next_cursor"].is_null());
    assert_eq!(
        listed(&list(admin.clone(), "?tenant=tenant-b").await),
        ids[2..].to_vec()
    );
    assert!(listed(&list(admin.clone(), "?upstream=nope").await).is_empty());
    let bad = list(admin.clone(), "?status=done").await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST);
    assert!(bad.problem()["detail"].as_str().unwrap().contains("status"));
    assert!(
        mine.json()["batches"][0].get("failures").is_some(),
        "a listed batch has the summary's fields"
    );
    rig.shutdown().await;
}
