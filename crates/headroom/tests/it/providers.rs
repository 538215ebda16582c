//! Provider presets through the real proxy: an upstream written as `provider = "…"` and
//! nothing else but its address is paced as the vendor's API wants, against the mock upstream
//! playing that vendor.

use std::sync::Arc;
use std::time::Duration;

use headroom_mock::Profile;
use http::{Method, StatusCode};

use crate::common::{mock, Rig};

/// `provider = "shopify-graphql"` and no other key: queries are paced by their cost, which
/// Headroom learns from the answers' `extensions.cost`, and the bucket the API reports
/// replaces the preset's tier; the mock (a 50-point bucket restoring 25 points a second)
/// throttles nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shopify_graphql_is_paced_by_query_cost_with_one_line_of_config() {
    let rig = Rig::start(
        mock(Profile::ShopifyGraphql, 50, 2),
        "provider = \"shopify-graphql\"",
    )
    .await;
    let headers = [("headroom-tenant", "shop-1"), ("headroom-max-wait", "60s")];
    // The first query of its shape teaches its cost (a new shape reserves 1 point).
    let first = rig
        .send(Method::POST, "/proxy/up/graphql.json?cost=5", &headers)
        .await;
    assert_eq!(first.status, StatusCode::OK);
    let rig = Arc::new(rig);
    let calls: Vec<_> = (0..30)
        .map(|_| {
            let rig = Arc::clone(&rig);
            tokio::spawn(async move {
                rig.send(Method::POST, "/proxy/up/graphql.json?cost=5", &headers)
                    .await
            })
        })
        .collect();
    for call in calls {
        let reply = call.await.unwrap();
        assert_eq!(reply.status, StatusCode::OK);
        let body: serde_json::Value = serde_json::from_slice(&reply.body).unwrap();
        assert!(body["errors"].is_null(), "a query was refused: {body}");
    }
    let stats = rig.mock.stats();
    assert_eq!(
        stats.throttled, 0,
        "the bucket throttled queries: {stats:?}"
    );
    assert_eq!(stats.accepted_cost, 31 * 5, "{stats:?}");
    // The budget knows the bucket the API reported, in points.
    let budgets = rig.get("/v1/budgets", &[]).await.json();
    let limit = &budgets["budgets"][0]["limits"][0];
    assert_eq!(limit["quota"], 50.0, "the reported bucket: {budgets}");
    assert_eq!(
        limit["window_s"], 2.0,
        "50 points at 25 a second: {budgets}"
    );
    assert_eq!(limit["unit"], "points");
}

/// An endpoint route spends its own budget beside the upstream's: HubSpot's CRM search at 4
/// a second, while other calls of the same tenant are not held up behind a search backlog.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_route_paces_its_endpoint_and_leaves_the_rest_alone() {
    let rig = Arc::new(Rig::start(mock(Profile::Hubspot, 100, 10), "provider = \"hubspot\"").await);
    let headers = [("headroom-tenant", "acme"), ("headroom-max-wait", "30s")];
    let started = tokio::time::Instant::now();
    let searches: Vec<_> = (0..12)
        .map(|_| {
            let rig = Arc::clone(&rig);
            tokio::spawn(async move {
                let r = rig
                    .send(
                        Method::POST,
                        "/proxy/up/crm/v3/objects/contacts/search",
                        &headers,
                    )
                    .await;
                (r.status, tokio::time::Instant::now())
            })
        })
        .collect();
    // Give the searches a head start, then a call of another endpoint.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let other = rig
        .send(Method::GET, "/proxy/up/crm/v3/objects/contacts/1", &headers)
        .await;
    let other_done = tokio::time::Instant::now();
    assert_eq!(other.status, StatusCode::OK);
    // Another tenant's search spends its own route budget, not acme's.
    let globex = rig
        .send(
            Method::POST,
            "/proxy/up/crm/v3/objects/contacts/search",
            &[("headroom-tenant", "globex"), ("headroom-max-wait", "30s")],
        )
        .await;
    let globex_done = tokio::time::Instant::now();
    assert_eq!(globex.status, StatusCode::OK);
    let mut last = started;
    for s in searches {
        let (status, at) = s.await.unwrap();
        assert_eq!(status, StatusCode::OK);
        last = last.max(at);
    }
    // 12 searches at 4 a second (90 % headroom) cannot all be done in under 2 s…
    assert!(
        last - started >= Duration::from_millis(1900),
        "the searches were not paced by their route: {:?}",
        last - started
    );
    // …and the other call did not wait behind them.
    assert!(
        other_done < last,
        "a call of another endpoint waited behind the searches"
    );
    assert!(globex_done < last, "globex's search waited behind acme's");
    assert_eq!(rig.mock.stats().throttled, 0);
    // The route's budget is listed with its route and tenant.
    let budgets = rig.get("/v1/budgets?q=acme", &[]).await.json();
    let routed: Vec<_> = budgets["budgets"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|b| b["route"] == "crm-search")
        .collect();
    assert_eq!(routed.len(), 1, "{budgets}");
    assert_eq!(routed[0]["tenant"], "acme");
    assert_eq!(
        routed[0]["spent_requests"], 12.0,
        "acme's searches only: {budgets}"
    );
    let globex = rig.get("/v1/budgets?q=globex", &[]).await.json();
    let theirs: Vec<_> = globex["budgets"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|b| b["route"] == "crm-search")
        .collect();
    assert_eq!(
        theirs.len(),
        1,
        "globex has a route budget of its own: {globex}"
    );
    assert_eq!(theirs[0]["spent_requests"], 1.0, "{globex}");
}

/// One preset against the mock playing its vendor.
struct Case {
    provider: &'static str,
    profile: Profile,
    /// The mock's limit per window (seconds).
    limit: u32,
    window_s: u64,
    /// Keys written beside `provider`: where a vendor's window is minutes or hours, the
    /// limit scaled down to seconds (as the mock enforces it) so the test takes seconds.
    extra: &'static str,
    method: Method,
    path: &'static str,
    calls: usize,
    /// Whether the vendor reports its limit in headers (so the budget learns it).
    reports: bool,
}

/// Every preset through the real proxy against its mock profile (the vendor's documented
/// headers, throttle status and body): after the first call, a burst of several windows'
/// worth is paced, every call succeeds and none is throttled; where the vendor reports its
/// state the budget read its limits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_preset_is_paced_against_its_vendors_profile() {
    let scaled = |name: &str| -> &'static str {
        Box::leak(format!("limits = [{{ {name}quota = 10, window = \"2s\" }}]").into_boxed_str())
    };
    let case = |provider, profile, limit, window_s, extra, method, path, calls, reports| Case {
        provider,
        profile,
        limit,
        window_s,
        extra,
        method,
        path,
        calls,
        reports,
    };
    let cases = vec![
        case(
            "hubspot",
            Profile::Hubspot,
            10,
            2,
            scaled("name = \"interval\", "),
            Method::GET,
            "/crm/v3/objects/contacts",
            24,
            true,
        ),
        case(
            "salesforce",
            Profile::Salesforce,
            10,
            2,
            scaled("name = \"api-usage\", "),
            Method::GET,
            "/sobjects/Account/001",
            24,
            true,
        ),
        // Shopify's Standard bucket as documented: 40, leaking 2 a second.
        case(
            "shopify",
            Profile::Shopify,
            40,
            20,
            "",
            Method::GET,
            "/products.json",
            48,
            true,
        ),
        case(
            "github",
            Profile::Github,
            10,
            2,
            scaled(""),
            Method::GET,
            "/repos/o/r/issues",
            24,
            true,
        ),
        case(
            "github-graphql",
            Profile::GithubGraphql,
            10,
            2,
            scaled(""),
            Method::POST,
            "/graphql",
            24,
            true,
        ),
        // Stripe's sandbox limit as documented: 25 a second.
        case(
            "stripe",
            Profile::Stripe,
            25,
            1,
            "tier = \"sandbox\"",
            Method::GET,
            "/v1/customers",
            60,
            false,
        ),
        case(
            "jira",
            Profile::Jira,
            10,
            2,
            "",
            Method::GET,
            "/rest/api/3/issue/A-1",
            24,
            true,
        ),
        case(
            "zendesk",
            Profile::Zendesk,
            10,
            2,
            scaled(""),
            Method::GET,
            "/api/v2/tickets.json",
            24,
            true,
        ),
        case(
            "intercom",
            Profile::Intercom,
            10,
            2,
            scaled(""),
            Method::GET,
            "/contacts",
            24,
            true,
        ),
        // Slack's conversations.history, Tier 3: 50 a minute (the preset's route).
        case(
            "slack",
            Profile::Slack,
            50,
            60,
            "",
            Method::GET,
            "/api/conversations.history",
            4,
            false,
        ),
        case(
            "microsoft-graph",
            Profile::MicrosoftGraph,
            10,
            2,
            scaled(""),
            Method::GET,
            "/v1.0/me",
            24,
            false,
        ),
        case(
            "google",
            Profile::Google,
            10,
            2,
            scaled(""),
            Method::GET,
            "/v4/spreadsheets/s",
            24,
            false,
        ),
        // Notion as documented: three a second.
        case(
            "notion",
            Profile::Notion,
            3,
            1,
            "",
            Method::GET,
            "/v1/pages/p",
            9,
            false,
        ),
        // Zoom's Free plan, Light category, as documented: four a second.
        case(
            "zoom",
            Profile::Zoom,
            4,
            1,
            "",
            Method::GET,
            "/v2/users/me",
            12,
            true,
        ),
        case(
            "twilio",
            Profile::Twilio,
            10,
            2,
            scaled(""),
            Method::GET,
            "/2010-04-01/Accounts/A/Messages.json",
            24,
            false,
        ),
        case(
            "anthropic",
            Profile::Anthropic,
            10,
            2,
            scaled("name = \"requests\", "),
            Method::POST,
            "/v1/messages",
            24,
            true,
        ),
    ];
    let runs: Vec<_> = cases
        .into_iter()
        .map(|c| tokio::spawn(run_case(c)))
        .collect();
    let mut failures = Vec::new();
    for run in runs {
        if let Err(e) = run.await.unwrap() {
            failures.push(e);
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

async fn run_case(c: Case) -> Result<(), String> {
    let rig = Arc::new(
        Rig::start(
            mock(c.profile, c.limit, c.window_s),
            &format!("provider = \"{}\"\n{}", c.provider, c.extra),
        )
        .await,
    );
    let headers = [("headroom-tenant", "acme"), ("headroom-max-wait", "60s")];
    let first = rig
        .send(c.method.clone(), &format!("/proxy/up{}", c.path), &headers)
        .await;
    if !first.status.is_success() {
        return Err(format!(
            "{}: the first call answered {}",
            c.provider, first.status
        ));
    }
    let calls: Vec<_> = (0..c.calls)
        .map(|_| {
            let rig = Arc::clone(&rig);
            let (method, path) = (c.method.clone(), format!("/proxy/up{}", c.path));
            tokio::spawn(async move { rig.send(method, &path, &headers).await })
        })
        .collect();
    for call in calls {
        let reply = call.await.unwrap();
        if !reply.status.is_success() {
            return Err(format!(
                "{}: a call answered {}: {}",
                c.provider,
                reply.status,
                String::from_utf8_lossy(&reply.body)
            ));
        }
    }
    let stats = rig.mock.stats();
    // Nothing is throttled: where the answers report the state (limit, remaining, reset or
    // bucket) the budget follows it; where they say nothing (Stripe, Slack, Graph, Google,
    // Notion, Twilio; Zoom reports no reset), the preset's figures pace the calls, and a
    // real-time burst never runs further ahead of that pace than the quota's reserve.
    if stats.throttled > 0 {
        let budgets = rig.get("/v1/budgets", &[]).await.json();
        return Err(format!(
            "{}: {} calls throttled ({:?} by window); budgets: {budgets}",
            c.provider, stats.throttled, stats.throttled_per_window
        ));
    }
    let budgets = rig.get("/v1/budgets", &[]).await.json();
    if c.reports {
        // A limit whose remaining is known was read from the answers' headers (a configured
        // limit keeps its source; one only the answers gave has source "headers").
        let read = budgets["budgets"][0]["limits"]
            .as_array()
            .is_some_and(|ls| ls.iter().any(|l| !l["remaining"].is_null()));
        if !read {
            return Err(format!(
                "{}: no limit read from headers: {budgets}",
                c.provider
            ));
        }
    }
    Ok(())
}

/// Submits a batch (202 expected) and waits up to `limit` for it to end; its view.
async fn run_batch(rig: &Rig, body: &serde_json::Value, limit: Duration) -> serde_json::Value {
    let r = crate::common::post_raw(
        &rig.client,
        rig.addr,
        "/v1/batches",
        body.to_string().into_bytes(),
    )
    .await;
    assert_eq!(
        r.status,
        StatusCode::ACCEPTED,
        "{}",
        String::from_utf8_lossy(&r.body)
    );
    let id = r.json()["id"].as_str().unwrap().to_string();
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        let b = rig.get(&format!("/v1/batches/{id}"), &[]).await.json();
        if !matches!(b["status"].as_str(), Some("queued" | "running")) {
            return b;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the batch did not finish: {b}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A batch to an upstream written as `provider = "hubspot"` needs no `format`: the preset's
/// batch format round-trips through HubSpot's batch endpoint (the mock answers it record by
/// record), and an upstream without a provider says what to write.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_providers_batch_format_is_the_default() {
    let rig = Rig::start(mock(Profile::Hubspot, 100, 10), "provider = \"hubspot\"").await;
    let records: Vec<serde_json::Value> = (0..25)
        .map(|i| serde_json::json!({"id": format!("r{i}"), "properties": {"email": format!("c{i}@example.com")}}))
        .collect();
    let body = serde_json::json!({
        "upstream": "up", "tenant": "acme",
        "request": {"method": "POST", "path": "/crm/v3/objects/contacts/batch/upsert"},
        "records": records,
    });
    let done = run_batch(&rig, &body, Duration::from_secs(30)).await;
    assert_eq!(done["status"], "succeeded", "{done}");
    assert_eq!(done["succeeded"], 25, "{done}");
    assert_eq!(rig.mock.stats().batch_records_applied, 25);
    rig.shutdown().await;

    let plain = Rig::start(mock(Profile::Hubspot, 100, 10), "").await;
    let r = crate::common::post_raw(
        &plain.client,
        plain.addr,
        "/v1/batches",
        body.to_string().into_bytes(),
    )
    .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    let detail = r.problem()["detail"].as_str().unwrap().to_string();
    assert!(detail.starts_with("format: missing"), "{detail}");
}

/// Microsoft Graph throttles each request inside a `$batch` on its own (a 429 item with its
/// own Retry-After in a 200 envelope): a batch through `provider = "microsoft-graph"`
/// retries only the throttled items, and every record is applied exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graph_batch_items_throttled_one_by_one_are_retried_alone() {
    let rig = Rig::start(
        mock(Profile::MicrosoftGraph, 15, 1),
        "provider = \"microsoft-graph\"",
    )
    .await;
    let records: Vec<serde_json::Value> = (0..60)
        .map(|i| serde_json::json!({"id": format!("u{i}"), "displayName": format!("User {i}")}))
        .collect();
    let body = serde_json::json!({
        "upstream": "up", "tenant": "contoso", "max_batch_size": 20,
        "request": {"method": "POST", "path": "/v1.0/users"},
        "records": records,
    });
    let done = run_batch(&rig, &body, Duration::from_secs(60)).await;
    assert_eq!(done["status"], "succeeded", "{done}");
    assert_eq!(done["succeeded"], 60, "{done}");
    let stats = rig.mock.stats();
    assert!(
        stats.throttled > 0,
        "no item was throttled: the test proves nothing: {stats:?}"
    );
    assert_eq!(stats.batch_records_applied, 60, "{stats:?}");
    assert_eq!(
        stats.batch_records_reapplied, 0,
        "an item applied twice: {stats:?}"
    );
}

/// A routed call goes only when the route and the upstream both let it go: when the
/// upstream says no (here a paused tenant), the route's leave is given back unspent, so a
/// refused call costs the endpoint's budget nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_the_upstream_refuses_spends_nothing_of_its_route() {
    let rig = Rig::start(mock(Profile::Hubspot, 100, 10), "provider = \"hubspot\"").await;
    let search = "/proxy/up/crm/v3/objects/contacts/search";
    let headers = [("headroom-tenant", "acme"), ("headroom-max-wait", "5s")];
    let first = rig.send(Method::POST, search, &headers).await;
    assert_eq!(first.status, StatusCode::OK);
    let pause = crate::common::call(
        &rig.client,
        rig.addr,
        Method::PATCH,
        "/v1/budgets/up/acme",
        &[],
        Some(&serde_json::json!({"pause_for": "1h"})),
    )
    .await;
    assert_eq!(pause.status, StatusCode::OK);
    for _ in 0..3 {
        let refused = rig.send(Method::POST, search, &headers).await;
        assert_eq!(refused.status, StatusCode::TOO_MANY_REQUESTS);
    }
    let budgets = rig.get("/v1/budgets?q=acme", &[]).await.json();
    let route = budgets["budgets"]
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["route"] == "crm-search")
        .cloned()
        .unwrap_or_default();
    assert_eq!(
        route["spent_requests"], 1.0,
        "refused calls spent the route: {budgets}"
    );
    assert_eq!(rig.mock.stats().accepted, 1);
}
