//! Webhook intake: deliveries verified by their signature, stored as jobs before the 2xx,
//! deduplicated by event id, and processed by a governed call (FIFO per key where asked).

use std::time::Duration;

use base64::Engine;
use hmac::Mac;
use http::{Method, StatusCode};

use crate::common::{Recorder, Reply, Server};

const SECRET: &str = "shpss_intake_test_secret";

fn shopify_signature(body: &[u8]) -> String {
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(SECRET.as_bytes()).unwrap();
    mac.update(body);
    base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
}

async fn deliver(server: &Server, source: &str, headers: &[(&str, &str)], body: &[u8]) -> Reply {
    let mut request = http::Request::builder()
        .method(Method::POST)
        .uri(format!("http://{}/intake/{source}", server.addr))
        .header("content-type", "application/json");
    for (k, v) in headers {
        request = request.header(*k, *v);
    }
    let response = server
        .client
        .request(
            request
                .body(http_body_util::Full::new(bytes::Bytes::copy_from_slice(
                    body,
                )))
                .unwrap(),
        )
        .await
        .unwrap();
    let (parts, body) = response.into_parts();
    use http_body_util::BodyExt;
    Reply {
        status: parts.status,
        headers: parts.headers,
        body: body.collect().await.unwrap().to_bytes(),
    }
}

fn config(order: &str) -> String {
    format!(
        r#"
[[upstreams]]
name = "worker"
base_url = "{{base}}"
[[queues]]
name = "shopify"
mode = "sequential"
[[sources]]
name = "shop"
verify = "shopify"
secret = "{SECRET}"
event_id = "header:X-Shopify-Webhook-Id"
tenant = "header:X-Shopify-Shop-Domain"
[sources.route]
queue = "shopify"
upstream = "worker"
path = "/hooks/products/{{/id}}"
{order}
"#
    )
}

/// A delivery signed with the source's secret is stored and acknowledged, then sent to the
/// worker once, body and event id with it; the same event again is acknowledged as a
/// duplicate and not sent; a tampered or unsigned delivery gets a 401 that names the header
/// and stores nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_signed_delivery_is_processed_once_and_a_forged_one_never() {
    let worker = Recorder::start().await;
    let server = Server::start(&config(""), &worker.url()).await;
    let body = br#"{"id":632910392,"title":"IPod Nano - 8GB"}"#;
    let sig = shopify_signature(body);
    let headers = [
        ("x-shopify-hmac-sha256", sig.as_str()),
        (
            "x-shopify-webhook-id",
            "b54557e4-bdd9-4b37-8a5f-bf7d70bcd043",
        ),
        ("x-shopify-shop-domain", "acme.myshopify.com"),
    ];
    let mut tampered = body.to_vec();
    tampered[7] = b'9';
    let forged = deliver(&server, "shop", &headers, &tampered).await;
    assert_eq!(forged.status, StatusCode::UNAUTHORIZED);
    assert!(forged.problem()["detail"]
        .as_str()
        .unwrap()
        .contains("x-shopify-hmac-sha256"));
    let unsigned = deliver(&server, "shop", &headers[1..], body).await;
    assert_eq!(unsigned.status, StatusCode::UNAUTHORIZED);
    let jobs = server.get("/v1/jobs").await.json();
    assert_eq!(jobs["jobs"].as_array().map(Vec::len), Some(0), "{jobs}");

    let first = deliver(&server, "shop", &headers, body).await;
    assert_eq!(first.status, StatusCode::OK, "{:?}", first.body);
    assert_eq!(first.json()["duplicate"], false);
    let again = deliver(&server, "shop", &headers, body).await;
    assert_eq!(again.status, StatusCode::OK);
    assert_eq!(again.json()["duplicate"], true);
    assert_eq!(again.json()["job"], first.json()["job"]);
    let seen = worker.wait_for(1, Duration::from_secs(10)).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let seen_now = worker.seen();
    assert_eq!(
        seen_now.len(),
        1,
        "processed once: {:?}",
        seen_now.iter().map(|r| &r.path).collect::<Vec<_>>()
    );
    assert_eq!(seen[0].path, "/hooks/products/632910392");
    assert_eq!(&seen[0].body[..], &body[..]);
    assert_eq!(
        seen[0].headers["intake-event-id"],
        "b54557e4-bdd9-4b37-8a5f-bf7d70bcd043"
    );
    let job = server
        .wait_job(
            first.json()["job"].as_str().unwrap(),
            Duration::from_secs(10),
        )
        .await;
    assert_eq!(job["status"], "succeeded", "{job}");
    assert_eq!(job["tenant"], "acme.myshopify.com");
    let metrics = String::from_utf8_lossy(&server.get("/metrics").await.body).to_string();
    for line in [
        "headroom_intake_deliveries_total{source=\"shop\",outcome=\"accepted\"} 1",
        "headroom_intake_deliveries_total{source=\"shop\",outcome=\"duplicate\"} 1",
        "headroom_intake_deliveries_total{source=\"shop\",outcome=\"refused\"} 2",
    ] {
        assert!(metrics.contains(line), "{line}");
    }
    assert_eq!(
        deliver(&server, "nope", &headers, body).await.status,
        StatusCode::NOT_FOUND
    );
    server.shutdown().await;
}

/// `order = "fifo"` by product id: with the worker failing each event's first attempt (so
/// that retries interleave), the events of one product still reach it in the order they
/// arrived, each once it succeeds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifo_per_key_holds_under_retries() {
    let worker = Recorder::start().await;
    // The first attempts fail (fewer than open the breaker): retries interleave with new
    // events.
    for _ in 0..3 {
        worker.answer(503, &[]);
    }
    let server = Server::start(
        &config("order = \"fifo\"\norder_key = \"/id\"").replace(
            "mode = \"sequential\"",
            "mode = \"sequential\"\nretry = { max_attempts = 10, interval = \"100ms\", backoff = \"fixed\" }",
        ),
        &worker.url(),
    )
    .await;
    let mut sent = 0;
    for n in 0..12u32 {
        let product = n % 3;
        let body = format!(r#"{{"id":{product},"n":{n}}}"#);
        let sig = shopify_signature(body.as_bytes());
        let id = format!("evt-{n}");
        let r = deliver(
            &server,
            "shop",
            &[
                ("x-shopify-hmac-sha256", &sig),
                ("x-shopify-webhook-id", &id),
                ("x-shopify-shop-domain", "acme.myshopify.com"),
            ],
            body.as_bytes(),
        )
        .await;
        assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
        sent += 1;
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let jobs = server
            .get("/v1/jobs?status=succeeded&limit=100")
            .await
            .json();
        if jobs["jobs"].as_array().map_or(0, Vec::len) == sent {
            break;
        }
        if tokio::time::Instant::now() > deadline {
            let all = server.get("/v1/jobs?limit=100").await.json();
            let states: Vec<String> = all["jobs"]
                .as_array()
                .unwrap()
                .iter()
                .map(|j| {
                    format!(
                        "{} {} {} {}",
                        j["request"]["path"], j["status"], j["attempts"], j["last_error"]
                    )
                })
                .collect();
            panic!("not all succeeded: {states:#?}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Per product, the successful deliveries are in arrival order.
    let mut by_product: std::collections::BTreeMap<u64, Vec<u64>> = Default::default();
    let mut failed_first = 0;
    for r in worker.seen() {
        let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
        by_product
            .entry(v["id"].as_u64().unwrap())
            .or_default()
            .push(v["n"].as_u64().unwrap());
        failed_first += 1;
    }
    for (product, ns) in &by_product {
        let mut dedup = ns.clone();
        dedup.dedup();
        assert!(
            dedup.windows(2).all(|w| w[0] < w[1]),
            "product {product}: {ns:?}"
        );
    }
    assert!(failed_first > sent, "some attempts failed and were retried");
    server.shutdown().await;
}
