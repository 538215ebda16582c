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
    let limits = budgets["budgets"][0]["limits"].to_string();
    assert!(limits.contains("points"), "{budgets}");
    assert!(
        limits.contains("50"),
        "the reported bucket of 50: {budgets}"
    );
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
}
