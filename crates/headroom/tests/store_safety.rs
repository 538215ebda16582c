//! What the store keeps and shows, over real sockets: dedup ids that stay inside their
//! tenant, credential-like request fields sealed at rest and never shown, private database
//! files, and a store that recovers from a full disk (with `/readyz` saying so meanwhile).

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use common::{mock, HttpClient, Reply, Rig};
use headroom::mock::Profile;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use serde_json::{json, Value};

const ADMIN: &str = "admin-token-for-store-safety";

/// Any request, with headers and a JSON body.
async fn call(
    client: &HttpClient,
    addr: SocketAddr,
    method: Method,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&Value>,
) -> Reply {
    let mut request = Request::builder()
        .method(method)
        .uri(format!("http://{addr}{path}"));
    for (k, v) in headers {
        request = request.header(*k, *v);
    }
    let body = match body {
        Some(v) => {
            request = request.header("content-type", "application/json");
            Bytes::from(serde_json::to_vec(v).unwrap())
        }
        None => Bytes::new(),
    };
    let response = client
        .request(request.body(Full::new(body)).unwrap())
        .await
        .expect("Headroom answers");
    let (parts, body) = response.into_parts();
    Reply {
        status: parts.status,
        headers: parts.headers,
        body: body.collect().await.unwrap().to_bytes(),
    }
}

/// Mints a token scoped to `tenant` through the API (as the admin).
async fn mint(rig: &Rig, tenant: &str) -> String {
    let admin = format!("Bearer {ADMIN}");
    let r = call(
        &rig.client,
        rig.addr,
        Method::POST,
        "/v1/tokens",
        &[("authorization", &admin)],
        Some(&json!({ "tenant": tenant })),
    )
    .await;
    assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
    let token = r.json()["token"].as_str().unwrap().to_string();
    format!("Bearer {token}")
}

/// Tenant B holds dedup id "order-1001"; tenant A, with its own scoped token, submits the
/// same id: A gets a job of its own (202) and sees nothing of B's; A's repeat is
/// deduplicated to A's job, and B's job is untouched.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dedup_ids_never_cross_tenants() {
    let rig = Rig::start_with_token(mock(Profile::Ietf, 1000, 1), "", Some(ADMIN)).await;
    let (a, b) = (mint(&rig, "tenant-a").await, mint(&rig, "tenant-b").await);
    let submit = |token: String, body: Value| {
        let (client, addr) = (rig.client.clone(), rig.addr);
        async move {
            call(
                &client,
                addr,
                Method::POST,
                "/v1/jobs",
                &[("authorization", &token)],
                Some(&body),
            )
            .await
        }
    };
    let b_job = json!({
        "upstream": "up",
        "dedup_id": "order-1001",
        "request": {
            "method": "POST",
            "path": "/b-private-path",
            "query": "b_marker=b-private-query",
            "body": {"b_marker": "b-private-body"},
        },
    });
    let r = submit(b.clone(), b_job).await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{:?}", r.body);
    let b_id = r.json()["id"].as_str().unwrap().to_string();
    assert_eq!(r.json()["tenant"], "tenant-b");

    let a_job = json!({
        "upstream": "up",
        "dedup_id": "order-1001",
        "request": {"method": "POST", "path": "/a-path", "body": {"n": 1}},
    });
    let r = submit(a.clone(), a_job.clone()).await;
    let text = String::from_utf8_lossy(&r.body).to_string();
    assert_eq!(r.status, StatusCode::ACCEPTED, "{text}");
    let view = r.json();
    assert_ne!(view["id"], b_id.as_str(), "{text}");
    assert_eq!(view["tenant"], "tenant-a", "{text}");
    assert!(view.get("deduplicated").is_none(), "{text}");
    for secret in [b_id.as_str(), "tenant-b", "b-private", "b_marker"] {
        assert!(!text.contains(secret), "A's answer shows {secret}: {text}");
    }
    let a_id = view["id"].as_str().unwrap().to_string();

    // A's repeat: A's own job.
    let r = submit(a.clone(), a_job).await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    assert_eq!(r.json()["deduplicated"], true);
    assert_eq!(r.json()["id"], a_id.as_str());

    // B's job is B's, and A cannot see it.
    let r = call(
        &rig.client,
        rig.addr,
        Method::GET,
        &format!("/v1/jobs/{b_id}"),
        &[("authorization", &a)],
        None,
    )
    .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    let r = call(
        &rig.client,
        rig.addr,
        Method::GET,
        &format!("/v1/jobs/{b_id}"),
        &[("authorization", &b)],
        None,
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.json()["request"]["path"], "/b-private-path");
    rig.shutdown().await;
}
