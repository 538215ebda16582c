//! `/v1/budgets/{upstream}/{tenant}`: an operator changes one tenant's budget at run time
//! (limits, a pause), the next call runs under it, other tenants do not, and only the admin
//! token may do it.

use headroom_mock::Profile;
use http::{Method, StatusCode};
use serde_json::json;

use crate::common::*;

async fn patch(rig: &Rig, path: &str, auth: &[(&str, &str)], body: serde_json::Value) -> Reply {
    call(
        &rig.client,
        rig.addr,
        Method::PATCH,
        path,
        auth,
        Some(&body),
    )
    .await
}

async fn budget(rig: &Rig, tenant: &str) -> serde_json::Value {
    let r = rig.get(&format!("/v1/budgets/up/{tenant}"), &[]).await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    r.json()
}

#[tokio::test]
async fn an_override_replaces_a_tenants_limits_and_says_so() {
    let rig = Rig::start(
        mock(Profile::Unlimited, 1000, 10),
        "limits = [{ quota = 100, window = \"10s\" }]",
    )
    .await;
    let r = patch(
        &rig,
        "/v1/budgets/up/acme",
        &[],
        json!({"limits": [{"quota": 5, "window": "10s"}], "reason": "plan downgraded"}),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    let shown = r.json();
    assert_eq!(shown["config"]["limits_from"], "override", "{shown}");
    assert_eq!(shown["override"]["reason"], "plan downgraded");
    for tenant in ["acme", "globex"] {
        let r = rig.get("/proxy/up/x", &[("headroom-tenant", tenant)]).await;
        assert_eq!(r.status, StatusCode::OK);
    }
    // Acme's budget runs at 0.8 × 5 per 10 s; Globex's at the config's 100.
    let acme = budget(&rig, "acme").await;
    let limit = &acme["budget"]["limits"][0];
    assert_eq!(
        (limit["quota"].as_f64(), limit["source"].as_str()),
        (Some(5.0), Some("override")),
        "{acme}"
    );
    assert_eq!(limit["pace_per_s"].as_f64(), Some(0.4), "{acme}");
    let globex = budget(&rig, "globex").await;
    assert_eq!(
        globex["budget"]["limits"][0]["quota"].as_f64(),
        Some(100.0),
        "{globex}"
    );
    assert!(globex["override"].is_null());
    // The list says which budgets are overridden.
    let all = rig.get("/v1/budgets", &[]).await.json();
    assert_eq!(all["overrides"].as_array().unwrap().len(), 1, "{all}");
    let listed = all["budgets"]
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["tenant"] == "acme")
        .unwrap();
    assert_eq!(
        listed["override"]["limits"][0]["quota"].as_f64(),
        Some(5.0),
        "{listed}"
    );
    // Clearing the field brings the config back on the next call.
    let r = patch(&rig, "/v1/budgets/up/acme", &[], json!({"limits": null})).await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    rig.get("/proxy/up/x", &[("headroom-tenant", "acme")]).await;
    let acme = budget(&rig, "acme").await;
    assert_eq!(acme["budget"]["limits"][0]["source"], "config", "{acme}");
    assert_eq!(acme["override"]["reason"], "plan downgraded");
    assert_eq!(
        rig.send(Method::DELETE, "/v1/budgets/up/acme", &[])
            .await
            .status,
        StatusCode::NO_CONTENT
    );
    assert_eq!(
        rig.send(Method::DELETE, "/v1/budgets/up/acme", &[])
            .await
            .status,
        StatusCode::NOT_FOUND
    );
    rig.shutdown().await;
}

#[tokio::test]
async fn a_paused_tenant_is_told_until_when_and_others_go_on() {
    let rig = Rig::start(mock(Profile::Unlimited, 1000, 10), "").await;
    let r = patch(&rig, "/v1/budgets/up/acme", &[], json!({"pause_for": "1h"})).await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    assert!(r.json()["override"]["paused_until"]
        .as_str()
        .unwrap()
        .ends_with('Z'));
    let r = rig
        .get(
            "/proxy/up/x",
            &[("headroom-tenant", "acme"), ("headroom-max-wait", "2s")],
        )
        .await;
    assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(r.attempts(), 0);
    let problem = r.problem();
    assert_eq!(
        problem["type"], "tag:headroom,2026:budget-paused",
        "{problem}"
    );
    assert!(problem["paused_until"].as_str().is_some(), "{problem}");
    let retry: u64 = r.header("retry-after").parse().unwrap();
    assert!((3500..=3600).contains(&retry), "Retry-After {retry}");
    let r = rig
        .get("/proxy/up/x", &[("headroom-tenant", "globex")])
        .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(
        rig.mock.stats().accepted,
        1,
        "nothing of Acme's reached the upstream"
    );
    let r = patch(
        &rig,
        "/v1/budgets/up/acme",
        &[],
        json!({"paused_until": null}),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    assert!(
        r.json()["override"].is_null(),
        "an emptied override is removed"
    );
    let r = rig.get("/proxy/up/x", &[("headroom-tenant", "acme")]).await;
    assert_eq!(r.status, StatusCode::OK);
    rig.shutdown().await;
}

#[tokio::test]
async fn a_wrong_override_is_refused_naming_the_field() {
    let rig = Rig::start(mock(Profile::Unlimited, 1000, 10), "").await;
    for (body, names) in [
        (json!({"headroom": 2}), "headroom"),
        (
            json!({"limits": [{"quota": 5, "window": "soon"}]}),
            "limits[0].window",
        ),
        (
            json!({"limits": [{"quota": -1, "window": "1s"}]}),
            "limits[0].quota",
        ),
        (json!({"max_concurrency": 0}), "max_concurrency"),
        (json!({"paused_until": "tomorrow"}), "paused_until"),
        (json!({"pause_for": "a while"}), "pause_for"),
        (json!({"pause_for": "100000000d"}), "pause_for"),
        (json!({"reason": "x".repeat(501)}), "reason"),
        (json!({"limit": []}), "limit"),
        (json!({"headroom": "half"}), "headroom"),
    ] {
        let r = patch(&rig, "/v1/budgets/up/acme", &[], body.clone()).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{body}");
        let detail = r.problem()["detail"].as_str().unwrap().to_string();
        assert!(detail.contains(names), "{body}: {detail}");
    }
    let r = patch(&rig, "/v1/budgets/nope/acme", &[], json!({"headroom": 0.5})).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    let r = patch(&rig, "/v1/budgets/up/a%20b", &[], json!({"headroom": 0.5})).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    // Nothing was stored.
    assert!(budget(&rig, "acme").await["override"].is_null());
    rig.shutdown().await;

    let shared = Rig::start(mock(Profile::Unlimited, 1000, 10), "budget = \"shared\"").await;
    let r = patch(
        &shared,
        "/v1/budgets/up/acme",
        &[],
        json!({"headroom": 0.5}),
    )
    .await;
    assert_eq!(r.status, StatusCode::CONFLICT);
    assert!(r.problem()["detail"].as_str().unwrap().contains("shared"));
    shared.shutdown().await;
}

/// Tenants cannot see or change budgets, their own or another's: quotas are the operator's.
#[tokio::test]
async fn only_the_admin_token_sees_and_changes_budgets() {
    let admin = "admin-token-for-budgets-test";
    let rig = Rig::start_with_token(mock(Profile::Unlimited, 1000, 10), "", Some(admin)).await;
    let acme = mint(&rig, admin, "acme").await;
    let globex = mint(&rig, admin, "globex").await;
    for (token, tenant) in [(&acme, "acme"), (&acme, "globex"), (&globex, "acme")] {
        let auth = [("authorization", token.as_str())];
        let path = format!("/v1/budgets/up/{tenant}");
        let r = patch(
            &rig,
            &path,
            &auth,
            json!({"limits": [{"quota": 100000, "window": "1s"}]}),
        )
        .await;
        assert_eq!(r.status, StatusCode::FORBIDDEN, "{tenant}");
        assert_eq!(rig.get(&path, &auth).await.status, StatusCode::FORBIDDEN);
        let r = rig.send(Method::DELETE, &path, &auth).await;
        assert_eq!(r.status, StatusCode::FORBIDDEN);
    }
    assert_eq!(
        rig.get("/v1/budgets", &[("authorization", acme.as_str())])
            .await
            .status,
        StatusCode::FORBIDDEN
    );
    let bearer = format!("Bearer {admin}");
    let r = patch(
        &rig,
        "/v1/budgets/up/acme",
        &[("authorization", &bearer)],
        json!({"headroom": 0.5}),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    rig.shutdown().await;
}

/// Overrides are kept in the store: a restarted server has them in force.
#[tokio::test]
async fn an_override_outlives_a_restart() {
    let upstream = headroom_mock::spawn(
        tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap(),
        mock(Profile::Unlimited, 1000, 10),
    )
    .await
    .unwrap();
    let dir = std::sync::Arc::new(tempfile::tempdir().unwrap());
    let config = "[[upstreams]]\nname = \"up\"\nbase_url = \"{base}\"\nlimits = [{ quota = 100, window = \"10s\" }]\n";
    let server = Server::start_in(dir.clone(), config, &upstream.url()).await;
    let r = call(
        &server.client,
        server.addr,
        Method::PATCH,
        "/v1/budgets/up/acme",
        &[],
        Some(&json!({"limits": [{"quota": 7, "window": "1m"}]})),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    server.shutdown().await;
    let server = Server::start_in(dir, config, &upstream.url()).await;
    let shown = server.get("/v1/budgets/up/acme").await.json();
    assert_eq!(shown["config"]["limits"][0]["quota"], 7.0, "{shown}");
    assert_eq!(shown["config"]["limits"][0]["window"], 60.0, "{shown}");
    server.shutdown().await;
}

/// `headroom budgets set/show/clear` against a running server.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_sets_shows_and_clears_an_override() {
    let rig = Rig::start(mock(Profile::Unlimited, 1000, 10), "").await;
    let url = format!("http://{}", rig.addr);
    let cli = |args: Vec<String>| {
        let url = url.clone();
        tokio::task::spawn_blocking(move || {
            let out = std::process::Command::new(env!("CARGO_BIN_EXE_headroom"))
                .arg("budgets")
                .args(&args)
                .args(["--server", &url])
                .env_remove("HEADROOM_API_TOKEN")
                .output()
                .unwrap();
            (
                out.status.code(),
                String::from_utf8_lossy(&out.stdout).to_string(),
                String::from_utf8_lossy(&out.stderr).to_string(),
            )
        })
    };
    let args = |s: &str| s.split(' ').map(str::to_string).collect::<Vec<_>>();
    let (code, out, err) = cli(args(
        "set up acme --limit 90000/1m:points --limit 50/10s --pause-for 10m",
    ))
    .await
    .unwrap();
    assert_eq!(code, Some(0), "{err}");
    let shown: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        shown["config"]["limits"].as_array().unwrap().len(),
        2,
        "{shown}"
    );
    assert_eq!(shown["config"]["limits"][0]["unit"], "points", "{shown}");
    assert!(shown["override"]["paused_until"].is_string(), "{shown}");
    let (code, out, err) = cli(args("set up acme --resume --reset limits"))
        .await
        .unwrap();
    assert_eq!(code, Some(0), "{err}");
    assert!(
        serde_json::from_str::<serde_json::Value>(&out).unwrap()["override"].is_null(),
        "{out}"
    );
    // A wrong value is the server's problem detail, naming the field.
    let (code, _, err) = cli(args("set up acme --headroom 3")).await.unwrap();
    assert_eq!(code, Some(2));
    assert!(err.contains("headroom"), "{err}");
    let (code, _, err) = cli(args("set up acme")).await.unwrap();
    assert_eq!(code, Some(2));
    assert!(err.contains("nothing to change"), "{err}");
    let (code, _, err) = cli(args("clear up acme")).await.unwrap();
    assert_eq!(code, Some(2), "no override left to clear: {err}");
    rig.shutdown().await;
}

/// The list filters on the server: a search by tenant, a cap with the total of matches, and
/// parameters that name what is wrong.
#[tokio::test]
async fn the_budget_list_is_searched_and_capped_on_the_server() {
    let rig = Rig::start(mock(Profile::Unlimited, 1000, 10), "").await;
    for tenant in ["acme-eu", "acme-us", "globex", "initech"] {
        let r = rig.get("/proxy/up/x", &[("headroom-tenant", tenant)]).await;
        assert_eq!(r.status, StatusCode::OK);
    }
    let all = rig.get("/v1/budgets", &[]).await.json();
    assert_eq!(all["total"], 4, "{all}");
    assert_eq!(all["budgets"].as_array().unwrap().len(), 4);

    let acme = rig.get("/v1/budgets?q=ACME&limit=1", &[]).await.json();
    assert_eq!(acme["total"], 2, "two match, {acme}");
    let shown = acme["budgets"].as_array().unwrap();
    assert_eq!(shown.len(), 1, "one shown under the cap");
    assert_eq!(
        shown[0]["tenant"], "acme-eu",
        "the first in order, every time"
    );
    // The `tenant:` prefix every key carries is not searched.
    let prefix = rig.get("/v1/budgets?q=tenant", &[]).await.json();
    assert_eq!(prefix["total"], 0, "{prefix}");

    let none = rig
        .get("/v1/budgets?q=umbrella&upstream=up", &[])
        .await
        .json();
    assert_eq!(
        (
            none["total"].as_u64(),
            none["budgets"].as_array().map(Vec::len)
        ),
        (Some(0), Some(0))
    );

    for (query, names) in [
        ("limit=0", "limit"),
        ("limit=many", "limit"),
        ("upstream=nope", "nope"),
        ("upstream=", "upstream"),
        ("tenant=acme", "tenant"),
    ] {
        let r = rig.get(&format!("/v1/budgets?{query}"), &[]).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{query}");
        let detail = r.problem()["detail"].as_str().unwrap().to_string();
        assert!(detail.contains(names), "{query}: {detail}");
    }
}
