//! OAuth grants per tenant against the mock provider (`headroom_mock::oauth`): refreshed once
//! however many calls need it, broken grants fail fast, tokens never shown.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use headroom_mock::oauth::{OAuthMockConfig, OAuthMockHandle};
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};

use crate::common::{send, Reply, Server};

const CONFIG: &str = r#"
[[upstreams]]
name = "crm"
base_url = "{base}"
[upstreams.oauth]
token_url = "{base}/oauth/token"
client_id = "client"
client_secret = "s3cret-client"
refresh_before = "0s"
"#;

async fn provider(config: OAuthMockConfig) -> OAuthMockHandle {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    headroom_mock::oauth::spawn(
        listener,
        OAuthMockConfig {
            client_secret: "s3cret-client".into(),
            ..config
        },
    )
    .await
    .unwrap()
}

async fn put_json(server: &Server, path: &str, body: serde_json::Value) -> Reply {
    let request = Request::builder()
        .method(Method::PUT)
        .uri(format!("http://{}{path}", server.addr))
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.to_string())))
        .unwrap();
    let response = server.client.request(request).await.unwrap();
    let (parts, body) = response.into_parts();
    Reply {
        status: parts.status,
        headers: parts.headers,
        body: body.collect().await.unwrap().to_bytes(),
    }
}

async fn call(server: &Server, tenant: &str) -> Reply {
    send(
        &server.client,
        server.addr,
        Method::GET,
        "/proxy/crm/v1/contacts",
        &[("headroom-tenant", tenant)],
    )
    .await
}

/// 200 calls across the moment the access token expires (Headroom's view of the expiry and
/// the provider's agree to the millisecond, so calls in flight meet a 401 too): every call
/// succeeds and the token endpoint is asked exactly once. Another tenant, with no grant,
/// never gets the first tenant's token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expiring_token_is_refreshed_once_for_200_concurrent_calls() {
    let provider = provider(OAuthMockConfig {
        token_lifetime: Duration::from_secs(2),
        ..OAuthMockConfig::default()
    })
    .await;
    let server = Arc::new(Server::start(CONFIG, &provider.url()).await);
    let (access, refresh) = provider.grant();
    let r = put_json(
        &server,
        "/v1/tenants/acme/oauth/crm",
        serde_json::json!({"access_token": access, "refresh_token": refresh, "expires_in": 2}),
    )
    .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{:?}", r.body);
    assert_eq!(call(&server, "acme").await.status, StatusCode::OK);
    // Waves of 50 from just before the expiry to just after it.
    tokio::time::sleep(Duration::from_millis(1_800)).await;
    let mut calls = Vec::new();
    for _wave in 0..4 {
        for _ in 0..50 {
            let server = Arc::clone(&server);
            calls.push(tokio::spawn(async move { call(&server, "acme").await }));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for c in calls {
        let reply = c.await.unwrap();
        assert_eq!(reply.status, StatusCode::OK, "{:?}", reply.body);
    }
    let stats = provider.stats();
    assert_eq!(stats.refreshes, 1, "{stats:?}");
    assert_eq!(stats.api_ok, 201, "{stats:?}");
    // A tenant with no grant goes without a token: the provider's 401 comes back as it is.
    assert_eq!(
        call(&server, "globex").await.status,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(provider.stats().refreshes, 1);
    Arc::into_inner(server).unwrap().shutdown().await;
}

/// A refresh the provider refuses with `invalid_grant` breaks the grant: the call gets a 424
/// that says the customer must connect again, later calls fail at once without asking the
/// token endpoint, one event is recorded, and the grant's state shows it. No token appears
/// in any answer, event, listing or metric; connecting again mends it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_grant_breaks_fails_fast_and_leaks_nothing() {
    let provider = provider(OAuthMockConfig::default()).await;
    let server = Server::start(CONFIG, &provider.url()).await;
    let (access, refresh) = provider.expired_grant();
    provider.revoke();
    let r = put_json(
        &server,
        "/v1/tenants/acme/oauth/crm",
        serde_json::json!({"access_token": access, "refresh_token": refresh, "expires_in": 0}),
    )
    .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT);
    let mut answers = Vec::new();
    for _ in 0..3 {
        let r = call(&server, "acme").await;
        assert_eq!(r.status, StatusCode::FAILED_DEPENDENCY, "{:?}", r.body);
        let problem = r.problem();
        assert_eq!(problem["type"], "tag:headroom,2026:oauth-reconnect");
        assert!(
            problem["detail"]
                .as_str()
                .unwrap()
                .contains("must connect again"),
            "{problem}"
        );
        answers.push(String::from_utf8_lossy(&r.body).to_string());
    }
    let stats = provider.stats();
    assert_eq!(
        (stats.invalid_grants, stats.api_ok + stats.api_unauthorized),
        (1, 0),
        "{stats:?}"
    );
    let grants = server.get("/v1/tenants/acme/oauth").await;
    let listed = grants.json();
    assert!(
        listed["grants"][0]["broken"]
            .as_str()
            .unwrap()
            .contains("invalid_grant"),
        "{listed}"
    );
    // The event is recorded by the observer's writer: wait for it.
    let mut events = serde_json::Value::Null;
    for _ in 0..100 {
        events = server.get("/v1/events?kind=oauth_broken").await.json();
        if events["events"].as_array().is_some_and(|e| !e.is_empty()) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        events["events"].as_array().map(Vec::len),
        Some(1),
        "{events}"
    );
    let metrics = String::from_utf8_lossy(&server.get("/metrics").await.body).to_string();
    let everything = [
        answers.join("\n"),
        listed.to_string(),
        events.to_string(),
        metrics,
    ];
    for token in provider
        .every_token()
        .iter()
        .chain([&"s3cret-client".to_string()])
    {
        for text in &everything {
            assert!(!text.contains(token.as_str()), "{token} shown");
        }
    }
    // Connecting again mends it.
    let (access, refresh) = provider.grant();
    let r = put_json(
        &server,
        "/v1/tenants/acme/oauth/crm",
        serde_json::json!({"access_token": access, "refresh_token": refresh, "expires_in": 3600}),
    )
    .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT);
    assert_eq!(call(&server, "acme").await.status, StatusCode::OK);
    server.shutdown().await;
}

/// Bad grant submissions get a problem that names the field.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_grants_name_the_field() {
    let provider = provider(OAuthMockConfig::default()).await;
    let server = Server::start(CONFIG, &provider.url()).await;
    for (body, field) in [
        (
            serde_json::json!({"refresh_token": "r"}),
            "access_token: missing",
        ),
        (
            serde_json::json!({"access_token": "a", "expires_in": -1}),
            "expires_in",
        ),
        (
            serde_json::json!({"access_token": "a", "expires_at": "soon"}),
            "expires_at",
        ),
        (
            serde_json::json!({"access_token": "a", "expires_in": 1, "expires_at": "2030-01-01T00:00:00Z"}),
            "give one",
        ),
        (
            serde_json::json!({"access_token": "a", "token": "x"}),
            "token: unknown field",
        ),
    ] {
        let r = put_json(&server, "/v1/tenants/acme/oauth/crm", body).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST);
        let detail = r.problem()["detail"].as_str().unwrap().to_string();
        assert!(detail.contains(field), "{detail}");
    }
    let r = put_json(
        &server,
        "/v1/tenants/acme/oauth/nope",
        serde_json::json!({"access_token": "a"}),
    )
    .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    server.shutdown().await;
}
