//! OAuth grants per tenant against the mock provider (`headroom_mock::oauth`): refreshed once
//! however many calls need it, broken grants fail fast, tokens never shown.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use headroom_mock::oauth::{OAuthMockConfig, OAuthMockHandle};
use http::{Method, StatusCode};
use http_body_util::Full;

use crate::common::{send, Reply, Rig, Server};
use crate::distributed::{delete_prefix, Node};

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
    crate::common::call(
        &server.client,
        server.addr,
        Method::PUT,
        path,
        &[],
        Some(&body),
    )
    .await
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
    let config = format!("{CONFIG}\n[[alerts]]\nname = \"reconnect\"\nrule = \"oauth_broken\"\n");
    let server = Server::start(&config, &provider.url()).await;
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
    // One alert, and `headroom status` lists the connection.
    headroom::work::observe::tick(&server.state).await.unwrap();
    let firing = |alerts: &serde_json::Value| -> Vec<String> {
        alerts["alerts"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|a| a["state"] == "firing")
            .map(|a| a["name"].as_str().unwrap().to_string())
            .collect()
    };
    let alerts = server.get("/v1/alerts").await.json();
    assert_eq!(firing(&alerts), vec!["reconnect"], "{alerts}");
    let status = server.get("/v1/status").await.json();
    let broken = status["broken_connections"].as_array().unwrap();
    assert_eq!(broken.len(), 1, "{status}");
    assert_eq!(
        (broken[0]["tenant"].as_str(), broken[0]["upstream"].as_str()),
        (Some("acme"), Some("crm"))
    );
    let metrics = String::from_utf8_lossy(&server.get("/metrics").await.body).to_string();
    assert!(
        metrics.contains("headroom_oauth_refreshes_total{upstream=\"crm\",outcome=\"broken\"} 1"),
        "{metrics}"
    );
    let everything = [
        answers.join("\n"),
        listed.to_string(),
        events.to_string(),
        metrics,
        alerts.to_string(),
        status.to_string(),
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
    headroom::work::observe::tick(&server.state).await.unwrap();
    assert!(firing(&server.get("/v1/alerts").await.json()).is_empty());
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

/// Two tenants' scoped tokens: neither can connect, see or remove the other's grant (the
/// grant endpoints are the admin's), nor spend it: a call as the other tenant is refused, and
/// its own calls go without the other's token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scoped_tokens_cannot_see_or_spend_another_tenants_grant() {
    let provider = provider(OAuthMockConfig::default()).await;
    let upstream = format!(
        "[upstreams.oauth]\ntoken_url = \"{}/oauth/token\"\nclient_id = \"client\"\nclient_secret = \"s3cret-client\"",
        provider.url()
    );
    let admin = "hr_admin_token_for_oauth_tests";
    let rig = Rig::start_with_token(
        crate::common::mock(headroom_mock::Profile::Ietf, 100, 10),
        &upstream,
        Some(admin),
    )
    .await;
    let admin_auth = format!("Bearer {admin}");
    let (access, refresh) = provider.grant();
    let grant =
        serde_json::json!({"access_token": access, "refresh_token": refresh, "expires_in": 3600});
    let r = crate::common::call(
        &rig.client,
        rig.addr,
        Method::PUT,
        "/v1/tenants/acme/oauth/up",
        &[("authorization", &admin_auth)],
        Some(&grant),
    )
    .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{:?}", r.body);
    let globex = crate::common::mint(&rig, admin, "globex").await;
    for (method, path, body) in [
        (Method::PUT, "/v1/tenants/acme/oauth/up", Some(&grant)),
        (Method::GET, "/v1/tenants/acme/oauth", None),
        (Method::DELETE, "/v1/tenants/acme/oauth/up", None),
        (Method::PUT, "/v1/tenants/globex/oauth/up", Some(&grant)),
    ] {
        let r = crate::common::call(
            &rig.client,
            rig.addr,
            method.clone(),
            path,
            &[("authorization", &globex)],
            body,
        )
        .await;
        assert_eq!(
            r.status,
            StatusCode::FORBIDDEN,
            "{method} {path}: {:?}",
            r.body
        );
    }
    let proxy_auth = globex.clone();
    let as_acme = rig
        .get(
            "/proxy/up/v1/x",
            &[
                ("proxy-authorization", &proxy_auth),
                ("headroom-tenant", "acme"),
            ],
        )
        .await;
    assert_eq!(as_acme.status, StatusCode::FORBIDDEN);
    let own = rig
        .get("/proxy/up/v1/x", &[("proxy-authorization", &proxy_auth)])
        .await;
    assert_eq!(own.status, StatusCode::OK);
    let seen = rig.mock.stats().by_tenant;
    assert!(
        seen.keys().all(|k| !k.contains(&access)),
        "acme's token reached the upstream: {seen:?}"
    );
    // The admin's call as acme carries acme's token.
    let acme = rig
        .get(
            "/proxy/up/v1/x",
            &[
                ("proxy-authorization", &admin_auth),
                ("headroom-tenant", "acme"),
            ],
        )
        .await;
    assert_eq!(acme.status, StatusCode::OK);
    assert!(rig
        .mock
        .stats()
        .by_tenant
        .contains_key(&format!("Bearer {access}")));
    rig.shutdown().await;
}

/// `grant = "client_credentials"`: one app token for every tenant's calls, got once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_credentials_token_is_got_once_and_shared() {
    let provider = provider(OAuthMockConfig::default()).await;
    let config = CONFIG.replace(
        "refresh_before = \"0s\"",
        "grant = \"client_credentials\"\nclient_auth = \"body\"\nscopes = [\"read\"]",
    );
    let server = Arc::new(Server::start(&config, &provider.url()).await);
    let calls: Vec<_> = (0..40)
        .map(|i| {
            let server = Arc::clone(&server);
            tokio::spawn(
                async move { call(&server, if i % 2 == 0 { "acme" } else { "globex" }).await },
            )
        })
        .collect();
    for c in calls {
        assert_eq!(c.await.unwrap().status, StatusCode::OK);
    }
    let stats = provider.stats();
    assert_eq!(
        (stats.client_credentials, stats.api_ok, stats.bad_clients),
        (1, 40, 0),
        "{stats:?}"
    );
    let r = put_json(
        &server,
        "/v1/tenants/acme/oauth/crm",
        serde_json::json!({"access_token": "a"}),
    )
    .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    Arc::into_inner(server).unwrap().shutdown().await;
}

/// `headroom serve` processes on one PostgreSQL store and one Redis governor, in front of the
/// mock provider; each node logs at debug level to a file of its own.
struct Nodes {
    nodes: Vec<Node>,
    client: crate::common::HttpClient,
    schema: Option<crate::services::PgSchema>,
    redis: String,
    prefix: String,
    dir: tempfile::TempDir,
}

impl Nodes {
    async fn start(n: usize, provider: &OAuthMockHandle, oauth_extra: &str) -> Nodes {
        let pg = crate::services::postgres();
        let redis = crate::services::redis();
        let schema = crate::services::PgSchema::create(&pg).await;
        let prefix = crate::services::unique("hro");
        let dir = tempfile::tempdir().unwrap();
        let config = format!(
            "store = \"{}\"\nauth = \"none\"\ngovernor = \"{redis}/?prefix={prefix}&lease_ttl=10s\"\n{}{oauth_extra}\n",
            schema.url(),
            CONFIG.replace("{base}", &provider.url()),
        );
        let path = dir.path().join("headroom.toml");
        std::fs::write(&path, config).unwrap();
        let client: crate::common::HttpClient =
            hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                .build_http();
        let mut nodes = Vec::new();
        for i in 0..n {
            let mut node = Node::start_logging(dir.path(), &path, i, "debug", &[]);
            node.ready(&client, &dir.path().join(format!("node{i}.log")))
                .await;
            nodes.push(node);
        }
        Nodes {
            nodes,
            client,
            schema: Some(schema),
            redis,
            prefix,
            dir,
        }
    }

    async fn call(&self, node: usize, tenant: &str) -> Reply {
        send(
            &self.client,
            self.nodes[node].addr,
            Method::GET,
            "/proxy/crm/v1/contacts",
            &[("headroom-tenant", tenant)],
        )
        .await
    }

    async fn connect(&self, node: usize, grant: serde_json::Value) {
        let r = crate::common::call(
            &self.client,
            self.nodes[node].addr,
            Method::PUT,
            "/v1/tenants/acme/oauth/crm",
            &[],
            Some(&grant),
        )
        .await;
        assert_eq!(r.status, StatusCode::NO_CONTENT, "{:?}", r.body);
    }

    fn logs(&self) -> String {
        (0..self.nodes.len())
            .map(|n| {
                std::fs::read_to_string(self.dir.path().join(format!("node{n}.log")))
                    .unwrap_or_default()
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    async fn stop(mut self) {
        for node in &mut self.nodes {
            node.kill9();
        }
        if let Some(schema) = self.schema.take() {
            schema.drop().await;
        }
        delete_prefix(&self.redis, &self.prefix).await;
    }
}

/// Three nodes, 200 calls spread over them across the moment the token expires: the token
/// endpoint is asked exactly once, every call succeeds, and no token or client secret is in
/// any node's debug log.
#[ignore = "needs PostgreSQL and Redis (README: Run the tests)"]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_refresh_an_expiring_token_once() {
    let provider = provider(OAuthMockConfig {
        token_lifetime: Duration::from_secs(4),
        ..OAuthMockConfig::default()
    })
    .await;
    let nodes = Arc::new(Nodes::start(3, &provider, "").await);
    let (access, refresh) = provider.grant();
    nodes
        .connect(
            0,
            serde_json::json!({"access_token": access, "refresh_token": refresh, "expires_in": 4}),
        )
        .await;
    let connected = tokio::time::Instant::now();
    for n in 0..3 {
        assert_eq!(nodes.call(n, "acme").await.status, StatusCode::OK);
    }
    tokio::time::sleep_until(connected + Duration::from_millis(3_700)).await;
    let mut calls = Vec::new();
    for _wave in 0..4 {
        for i in 0..50 {
            let nodes = Arc::clone(&nodes);
            calls.push(tokio::spawn(async move { nodes.call(i % 3, "acme").await }));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut failed = Vec::new();
    for c in calls {
        let r = c.await.unwrap();
        if r.status != StatusCode::OK {
            failed.push(format!("{} {}", r.status, String::from_utf8_lossy(&r.body)));
        }
    }
    let stats = provider.stats();
    let logs = nodes.logs();
    let nodes = Arc::into_inner(nodes).unwrap();
    nodes.stop().await;
    assert!(
        failed.is_empty(),
        "{} failed: {:?}",
        failed.len(),
        &failed[..failed.len().min(3)]
    );
    assert_eq!(stats.refreshes, 1, "{stats:?}");
    assert_eq!(stats.api_ok, 203, "{stats:?}");
    assert!(
        logs.contains("OAuth token refreshed"),
        "debug logs were written"
    );
    for token in provider
        .every_token()
        .iter()
        .chain([&"s3cret-client".to_string()])
    {
        assert!(!logs.contains(token.as_str()), "{token} is in a log");
    }
}

/// A node killed (kill -9) after the provider rotated the refresh token but before its
/// answer arrived has lost the rotated token. The documented recovery: the dead node's lease
/// runs out, another node refreshes with the previous refresh token, which a rotating provider
/// accepts for its grace period; the calls succeed and the grant is not broken.
#[ignore = "needs PostgreSQL and Redis (README: Run the tests)"]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_killed_mid_refresh_loses_no_connection() {
    let provider = provider(OAuthMockConfig {
        rotate: true,
        reuse_grace: Duration::from_secs(60),
        answer_delay: Duration::from_secs(2),
        ..OAuthMockConfig::default()
    })
    .await;
    let mut nodes = Nodes::start(2, &provider, "token_timeout = \"4s\"\n").await;
    let (access, refresh) = provider.expired_grant();
    nodes
        .connect(
            0,
            serde_json::json!({"access_token": access, "refresh_token": refresh, "expires_in": 0}),
        )
        .await;
    let (client, addr) = (nodes.client.clone(), nodes.nodes[0].addr);
    let doomed = tokio::spawn(async move {
        let request = http::Request::get(format!("http://{addr}/proxy/crm/v1/contacts"))
            .header("headroom-tenant", "acme")
            .body(Full::new(Bytes::new()))
            .unwrap();
        let _ = client.request(request).await;
    });
    // The provider has issued the new pair (its answer is held back): kill the node now.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while provider.stats().refreshes == 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "node 0 never refreshed"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    nodes.nodes[0].kill9();
    doomed.abort();
    // Node 1 recovers once the dead node's lease has run out.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let mut last = String::new();
    loop {
        let r = nodes.call(1, "acme").await;
        if r.status == StatusCode::OK {
            break;
        }
        last = format!("{} {}", r.status, String::from_utf8_lossy(&r.body));
        assert!(
            tokio::time::Instant::now() < deadline,
            "no recovery: {last}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let listed = crate::common::send(
        &nodes.client,
        nodes.nodes[1].addr,
        Method::GET,
        "/v1/tenants/acme/oauth",
        &[],
    )
    .await
    .json();
    let stats = provider.stats();
    nodes.stop().await;
    assert_eq!(
        (stats.refreshes, stats.invalid_grants),
        (2, 0),
        "{stats:?} {last}"
    );
    assert!(listed["grants"][0]["broken"].is_null(), "{listed}");
}

/// The CLI connects a grant from the token endpoint's JSON answer on standard input (a
/// string `expires_in` and provider extras included), lists it without a token, and removes
/// it; the database never holds a token in the clear.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_connects_lists_and_removes_a_grant() {
    use std::io::Write;
    let provider = provider(OAuthMockConfig::default()).await;
    let server = Server::start(CONFIG, &provider.url()).await;
    let url = format!("http://{}", server.addr);
    let (access, refresh) = provider.grant();
    let cli = |args: &[&str], stdin: Option<String>| {
        let url = url.clone();
        let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
        tokio::task::spawn_blocking(move || {
            let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_headroom"))
                .args(&args)
                .args(["--server", &url])
                .stdin(std::process::Stdio::piped())
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap();
            let mut input = child.stdin.take().unwrap();
            if let Some(text) = stdin {
                input.write_all(text.as_bytes()).unwrap();
            }
            drop(input);
            child.wait_with_output().unwrap()
        })
    };
    let answer = serde_json::json!({
        "access_token": access, "refresh_token": refresh, "expires_in": "3600",
        "token_type": "bearer", "scope": "contacts", "hub_id": 42,
    });
    let out = cli(
        &["tenants", "connect", "acme", "crm"],
        Some(answer.to_string()),
    )
    .await
    .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(call(&server, "acme").await.status, StatusCode::OK);
    let out = cli(&["tenants", "grants", "acme"], None).await.unwrap();
    let listed = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        listed.contains("\"contacts\"") && !listed.contains(&access),
        "{listed}"
    );
    let out = cli(
        &["tenants", "connect", "acme", "crm"],
        Some("not json".into()),
    )
    .await
    .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("not the token endpoint's JSON"));
    let mut stored = Vec::new();
    for name in ["headroom.db", "headroom.db-wal"] {
        stored.extend(std::fs::read(server.dir.path().join(name)).unwrap_or_default());
    }
    assert!(!stored.is_empty());
    for token in [&access, &refresh] {
        assert!(
            !stored.windows(token.len()).any(|w| w == token.as_bytes()),
            "{token} stored in the clear"
        );
    }
    let out = cli(&["tenants", "disconnect", "acme", "crm"], None)
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(call(&server, "acme").await.status, StatusCode::UNAUTHORIZED);
    server.shutdown().await;
}

/// A caller that hangs up while its call refreshes the token does not cut the refresh off:
/// the provider here rotates strictly (the used refresh token dies at once) and is slow, so
/// a refresh dropped between its answer and storing it would break the grant. The next call
/// uses what that refresh stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_caller_hanging_up_mid_refresh_loses_nothing() {
    let provider = provider(OAuthMockConfig {
        rotate: true,
        reuse_grace: Duration::ZERO,
        answer_delay: Duration::from_millis(500),
        ..OAuthMockConfig::default()
    })
    .await;
    let server = Server::start(CONFIG, &provider.url()).await;
    let (access, refresh) = provider.expired_grant();
    let r = put_json(
        &server,
        "/v1/tenants/acme/oauth/crm",
        serde_json::json!({"access_token": access, "refresh_token": refresh, "expires_in": 0}),
    )
    .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT);
    // The client gives up while the token endpoint holds its answer back.
    let gave_up = tokio::time::timeout(Duration::from_millis(250), call(&server, "acme")).await;
    assert!(gave_up.is_err(), "the call should still be refreshing");
    tokio::time::sleep(Duration::from_millis(600)).await;
    let r = call(&server, "acme").await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    let stats = provider.stats();
    assert_eq!((stats.refreshes, stats.invalid_grants), (1, 0), "{stats:?}");
}

/// A token endpoint that is down does not stop calls while the token held is still good:
/// it is used, and the endpoint is asked again only after a while, not on every call.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_endpoint_down_leaves_the_held_token_in_use() {
    let provider = provider(OAuthMockConfig::default()).await;
    let config = CONFIG.replace("refresh_before = \"0s\"", "refresh_before = \"2s\"");
    let server = Server::start(&config, &provider.url()).await;
    let (access, refresh) = provider.grant();
    // Headroom is told the token lives 6 s: due for a refresh 2 to 2.5 s before that.
    let r = put_json(
        &server,
        "/v1/tenants/acme/oauth/crm",
        serde_json::json!({"access_token": access, "refresh_token": refresh, "expires_in": 6}),
    )
    .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT);
    let connected = tokio::time::Instant::now();
    assert_eq!(call(&server, "acme").await.status, StatusCode::OK);
    assert_eq!(provider.stats().refreshes, 0, "not due yet");
    provider.set_token_endpoint_down(true);
    tokio::time::sleep_until(connected + Duration::from_millis(4_600)).await;
    for _ in 0..20 {
        let r = call(&server, "acme").await;
        assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    }
    let stats = provider.stats();
    assert_eq!((stats.unavailable, stats.refreshes), (1, 0), "{stats:?}");
    // Past its expiry, with the endpoint still down, a call is told to come back later.
    tokio::time::sleep_until(connected + Duration::from_millis(6_300)).await;
    let r = call(&server, "acme").await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE, "{:?}", r.body);
    assert!(r.problem()["detail"]
        .as_str()
        .unwrap()
        .contains("token endpoint"));
    // Told at once, for 2 s after the failure, without asking the endpoint again.
    assert_eq!(provider.stats().unavailable, 1);
    // Back up: once those 2 s are over, refreshed, and calls go again.
    provider.set_token_endpoint_down(false);
    tokio::time::sleep_until(connected + Duration::from_millis(6_800)).await;
    assert_eq!(call(&server, "acme").await.status, StatusCode::OK);
    assert_eq!(provider.stats().refreshes, 1);
    server.shutdown().await;
}

/// The same crash on the embedded store: `headroom serve` on SQLite killed (kill -9) after the
/// provider rotated the refresh token but before its answer arrived; started again on the same
/// database, it waits out its dead lease and refreshes with the previous refresh token, which
/// the provider still accepts for its grace period.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_killed_mid_refresh_recovers_on_sqlite() {
    let provider = provider(OAuthMockConfig {
        rotate: true,
        reuse_grace: Duration::from_secs(60),
        answer_delay: Duration::from_secs(2),
        ..OAuthMockConfig::default()
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let config = format!(
        "store = \"sqlite://{}/headroom.db\"\nauth = \"none\"\n{}token_timeout = \"4s\"\n",
        dir.path().display(),
        CONFIG.replace("{base}", &provider.url())
    );
    let client: crate::common::HttpClient =
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .build_http();
    let mut first = crate::common::Process::start(dir.path(), &config, crate::common::free_port());
    first.ready(&client).await;
    let addr: std::net::SocketAddr = first.addr.parse().unwrap();
    let (access, refresh) = provider.expired_grant();
    let grant =
        serde_json::json!({"access_token": access, "refresh_token": refresh, "expires_in": 0});
    let r = crate::common::call(
        &client,
        addr,
        Method::PUT,
        "/v1/tenants/acme/oauth/crm",
        &[],
        Some(&grant),
    )
    .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{:?}", r.body);
    let doomed = {
        let client = client.clone();
        tokio::spawn(async move {
            send(
                &client,
                addr,
                Method::GET,
                "/proxy/crm/v1/contacts",
                &[("headroom-tenant", "acme")],
            )
            .await
        })
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while provider.stats().refreshes == 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the server never refreshed"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    first.kill9();
    doomed.abort();
    let second = crate::common::Process::start(dir.path(), &config, crate::common::free_port());
    second.ready(&client).await;
    let addr: std::net::SocketAddr = second.addr.parse().unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let r = send(
            &client,
            addr,
            Method::GET,
            "/proxy/crm/v1/contacts",
            &[("headroom-tenant", "acme")],
        )
        .await;
        if r.status == StatusCode::OK {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no recovery: {} {}",
            r.status,
            String::from_utf8_lossy(&r.body)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let stats = provider.stats();
    assert_eq!((stats.refreshes, stats.invalid_grants), (2, 0), "{stats:?}");
}

/// On PostgreSQL, a grant one node found broken is broken for every node: the other fails
/// fast without asking the token endpoint, and the status and events of any node show it.
#[ignore = "needs PostgreSQL and Redis (README: Run the tests)"]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_grant_is_broken_on_every_node() {
    let provider = provider(OAuthMockConfig::default()).await;
    let nodes = Nodes::start(2, &provider, "").await;
    let (access, refresh) = provider.expired_grant();
    provider.revoke();
    nodes
        .connect(
            0,
            serde_json::json!({"access_token": access, "refresh_token": refresh, "expires_in": 0}),
        )
        .await;
    for node in [0, 1, 1, 0] {
        let r = nodes.call(node, "acme").await;
        assert_eq!(
            r.status,
            StatusCode::FAILED_DEPENDENCY,
            "node {node}: {:?}",
            r.body
        );
    }
    let status = send(
        &nodes.client,
        nodes.nodes[1].addr,
        Method::GET,
        "/v1/status",
        &[],
    )
    .await
    .json();
    let mut events = serde_json::Value::Null;
    for _ in 0..100 {
        events = send(
            &nodes.client,
            nodes.nodes[1].addr,
            Method::GET,
            "/v1/events?kind=oauth_broken",
            &[],
        )
        .await
        .json();
        if events["events"].as_array().is_some_and(|e| !e.is_empty()) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let stats = provider.stats();
    nodes.stop().await;
    assert_eq!(stats.invalid_grants, 1, "{stats:?}");
    assert_eq!(
        status["broken_connections"].as_array().map(Vec::len),
        Some(1),
        "{status}"
    );
    assert_eq!(
        events["events"].as_array().map(Vec::len),
        Some(1),
        "{events}"
    );
}

/// A customer connecting again while a refresh of the old grant is in flight: the old
/// refresh token is refused (`invalid_grant`), and that breaks nothing — the call goes with
/// the new grant's token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connecting_again_during_a_refresh_breaks_nothing() {
    let provider = provider(OAuthMockConfig {
        token_latency: Duration::from_millis(800),
        ..OAuthMockConfig::default()
    })
    .await;
    let server = Arc::new(Server::start(CONFIG, &provider.url()).await);
    let (access, refresh) = provider.expired_grant();
    let old =
        serde_json::json!({"access_token": access, "refresh_token": refresh, "expires_in": 0});
    assert_eq!(
        put_json(&server, "/v1/tenants/acme/oauth/crm", old)
            .await
            .status,
        StatusCode::NO_CONTENT
    );
    let refreshing = {
        let server = Arc::clone(&server);
        tokio::spawn(async move { call(&server, "acme").await })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    // The customer reconnects; the provider revokes what the app held before.
    let (access, refresh) = provider.grant();
    provider.revoke();
    let new =
        serde_json::json!({"access_token": access, "refresh_token": refresh, "expires_in": 3600});
    assert_eq!(
        put_json(&server, "/v1/tenants/acme/oauth/crm", new)
            .await
            .status,
        StatusCode::NO_CONTENT
    );
    let r = refreshing.await.unwrap();
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    assert_eq!(provider.stats().invalid_grants, 1);
    let listed = server.get("/v1/tenants/acme/oauth").await.json();
    assert!(listed["grants"][0]["broken"].is_null(), "{listed}");
    assert_eq!(call(&server, "acme").await.status, StatusCode::OK);
    Arc::into_inner(server).unwrap().shutdown().await;
}
