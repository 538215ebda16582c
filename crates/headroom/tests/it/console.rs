//! The console (`/ui`) in a real browser: Debian's Chromium driven through chromedriver
//! (WebDriver, `fantoccini`), against a real `headroom serve` with an admin token in front of
//! the mock upstream, after real traffic: throttled calls, jobs of two tenants, a batch with
//! failed records. Screenshots of each page go to `$CARGO_TARGET_TMPDIR/ui-screenshots`
//! (CI keeps them).
//!
//! Needs `chromium` and `chromedriver` (`.ci/run` installs them): without them the test
//! fails and says so; it never passes without a browser.

use std::path::PathBuf;
use std::time::Duration;

use fantoccini::{Client, ClientBuilder, Locator};
use headroom::cfg::Config;
use headroom::server;
use headroom_mock::{MockConfig, Profile};
use http::{Method, StatusCode};
use serde_json::{json, Value};

use crate::common::{free_port, HttpClient};

const ADMIN: &str = "console-admin-token-0123456789";

/// A chromedriver process, stopped when dropped.
struct Driver(std::process::Child, u16);

impl Drop for Driver {
    fn drop(&mut self) {
        // The driver runs in its own process group with the Chromium it started: end them
        // all, or a failed test leaves browsers behind.
        // Not `kill -KILL -PID`: procps reads `-PID` as options and may signal another group
        // (it killed CI's own). A process group id is the driver's pid (`process_group(0)`).
        if let Ok(pgid) = i32::try_from(self.0.id()) {
            if pgid > 1 {
                // SAFETY: kill(2) with a negative pid signals that process group only.
                unsafe { libc::kill(-pgid, libc::SIGKILL) };
            }
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn chromedriver() -> Driver {
    let binary = std::env::var("CHROMEDRIVER").unwrap_or_else(|_| "chromedriver".into());
    let port = free_port();
    // Its log goes beside the screenshots (CI keeps them), for a session that will not start.
    let log = screenshot_dir().join("chromedriver.log");
    use std::os::unix::process::CommandExt;
    let child = std::process::Command::new(&binary)
        .arg(format!("--port={port}"))
        .process_group(0)
        .arg(format!("--log-path={}", log.display()))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap_or_else(|e| {
            panic!(
                "the console test needs chromedriver ({binary}: {e}); install Debian's \
                 `chromium` and `chromium-driver` (.ci/run does), or set CHROMEDRIVER"
            )
        });
    Driver(child, port)
}

async fn browser(driver: &Driver) -> Client {
    let mut caps = serde_json::Map::new();
    let chromium = std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    caps.insert(
        "goog:chromeOptions".into(),
        json!({
            "binary": chromium,
            "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                     "--window-size=1280,1000"],
        }),
    );
    let url = format!("http://127.0.0.1:{}", driver.1);
    // chromedriver takes a moment to listen; a browser that will not start fails within 30 s.
    let mut last_error = String::new();
    for _ in 0..300 {
        // Plain HTTP to the local driver: no TLS needed.
        let connector = hyper_util::client::legacy::connect::HttpConnector::new();
        match ClientBuilder::new(connector)
            .capabilities(caps.clone())
            .connect(&url)
            .await
        {
            Ok(client) => return client,
            Err(e) => {
                last_error = e.to_string();
                tokio::time::sleep(Duration::from_millis(100)).await
            }
        }
    }
    panic!(
        "chromedriver on {url} did not start a Chromium session in 30 s: {last_error} (its log: {})",
        screenshot_dir().join("chromedriver.log").display()
    );
}

async fn api(
    client: &HttpClient,
    addr: std::net::SocketAddr,
    method: Method,
    path: &str,
    token: &str,
    body: Option<Value>,
) -> (StatusCode, Value) {
    use http_body_util::{BodyExt, Full};
    let mut request = http::Request::builder()
        .method(method)
        .uri(format!("http://{addr}{path}"))
        .header("authorization", format!("Bearer {token}"));
    if body.is_some() {
        request = request.header("content-type", "application/json");
    }
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    let response = client
        .request(request.body(Full::new(bytes::Bytes::from(body))).unwrap())
        .await
        .unwrap();
    let status = response.status();
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

/// Waits for the element, up to 20 s (the pages poll every few seconds).
async fn find(c: &Client, css: &str) -> fantoccini::elements::Element {
    c.wait()
        .at_most(Duration::from_secs(20))
        .for_element(Locator::Css(css))
        .await
        .unwrap_or_else(|e| panic!("no `{css}` on the page: {e}"))
}

/// Waits until the page's text contains `text`; returns the text.
async fn page_text_with(c: &Client, text: &str) -> String {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let body = c
            .find(Locator::Css("#page"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        if body.contains(text) {
            return body;
        }
        if tokio::time::Instant::now() > deadline {
            panic!("the page never showed {text:?}; it shows:\n{body}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn screenshot_dir() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("ui-screenshots");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

async fn screenshot(c: &Client, name: &str) {
    let dir = screenshot_dir();
    let png = c.screenshot().await.unwrap();
    std::fs::write(dir.join(format!("{name}.png")), png).unwrap();
}

async fn sign_in(c: &Client, base: &str, token: &str) {
    c.goto(&format!("{base}/ui")).await.unwrap();
    let field = find(c, "#signin:not([hidden]) #token").await;
    field.send_keys(token).await.unwrap();
    find(c, "#signin button[type=submit]")
        .await
        .click()
        .await
        .unwrap();
    find(c, "#signout:not([hidden])").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Chromium and chromedriver; the README's test command runs it"]
async fn the_console_shows_limits_jobs_and_failures_and_keeps_tenants_apart() {
    // The upstream: HubSpot's dialect, 5 calls per 2 s for each credential.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let mock = headroom_mock::spawn(
        listener,
        MockConfig {
            profile: Profile::Hubspot,
            limit: 5,
            window: Duration::from_secs(2),
            ..MockConfig::default()
        },
    )
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let toml = format!(
        "store = \"sqlite://{}/headroom.db\"\n[[upstreams]]\nname = \"crm\"\nbase_url = \"{}\"\n",
        dir.path().display(),
        mock.url()
    );
    let state = server::start(
        Config::parse(&toml, "test.toml").unwrap(),
        Some(ADMIN.into()),
    )
    .await
    .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let served = tokio::spawn(server::serve(state, listener, async {
        let _ = stopped.await;
    }));
    let http: HttpClient =
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .build_http();
    let base = format!("http://{addr}");

    // Two tenants with their own tokens.
    let mut tokens = std::collections::HashMap::new();
    for tenant in ["acme", "globex"] {
        let (status, v) = api(
            &http,
            addr,
            Method::POST,
            "/v1/tokens",
            ADMIN,
            Some(json!({ "tenant": tenant })),
        )
        .await;
        assert_eq!(status, StatusCode::CREATED, "{v}");
        tokens.insert(tenant, v["token"].as_str().unwrap().to_string());
    }
    // Traffic: a burst of calls for acme, over the upstream's limit, so that it throttles.
    let calls: Vec<_> = (0..20)
        .map(|_| {
            let http = http.clone();
            let token = tokens["acme"].clone();
            tokio::spawn(async move {
                let r = http
                    .request(
                        http::Request::get(format!(
                            "http://{addr}/proxy/crm/crm/v3/objects/contacts"
                        ))
                        .header("proxy-authorization", format!("Bearer {token}"))
                        .header("headroom-max-wait", "0s")
                        .body(http_body_util::Full::new(bytes::Bytes::new()))
                        .unwrap(),
                    )
                    .await
                    .unwrap();
                r.status()
            })
        })
        .collect();
    for call in calls {
        call.await.unwrap();
    }
    // On a loaded machine the first answer can teach the limit before the rest of the burst
    // is sent, and Headroom then refuses the rest itself: one answer the upstream throttles
    // for certain (the mock's `?status=429`, for another tenant) keeps the events page from
    // depending on that.
    let r = http
        .request(
            http::Request::get(format!(
                "http://{addr}/proxy/crm/crm/v3/objects/contacts?status=429"
            ))
            .header("proxy-authorization", format!("Bearer {ADMIN}"))
            // A tenant of its own: a budget that knows nothing yet, so the call goes.
            .header("headroom-tenant", "initech")
            .header("headroom-max-wait", "0s")
            .body(http_body_util::Full::new(bytes::Bytes::new()))
            .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
    assert!(
        r.headers()
            .get("headroom-attempts")
            .is_some_and(|a| a != "0"),
        "the upstream answered it: {:?}",
        r.headers()
    );
    // A job each; and for acme a batch whose records include ones the upstream refuses, one
    // of them with an id that is markup (it must show as text).
    let mut job_ids = std::collections::HashMap::new();
    for tenant in ["acme", "globex"] {
        let (status, v) = api(
            &http,
            addr,
            Method::POST,
            "/v1/jobs",
            &tokens[tenant],
            Some(json!({
                "upstream": "crm", "tenant": tenant,
                "request": {"method": "GET", "path": format!("/crm/v3/objects/contacts/{tenant}")},
            })),
        )
        .await;
        assert_eq!(status, StatusCode::ACCEPTED, "{v}");
        job_ids.insert(tenant, v["id"].as_str().unwrap().to_string());
    }
    let records: Vec<Value> = (0..30)
        .map(|i| {
            let (id, email) = match i {
                7 => (
                    "<img src=x id=injected>".to_string(),
                    "invalid-7".to_string(),
                ),
                19 => ("r19".to_string(), "invalid-19".to_string()),
                _ => (format!("r{i}"), format!("c{i}@example.com")),
            };
            json!({"id": id, "properties": {"email": email}})
        })
        .collect();
    let (status, v) = api(
        &http,
        addr,
        Method::POST,
        "/v1/batches",
        &tokens["acme"],
        Some(json!({
            "upstream": "crm", "tenant": "acme", "format": "hubspot", "max_batch_size": 10,
            "request": {"method": "POST", "path": "/crm/v3/objects/contacts/batch/upsert"},
            "records": records,
        })),
    )
    .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{v}");
    let batch_id = v["id"].as_str().unwrap().to_string();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let (_, v) = api(
            &http,
            addr,
            Method::GET,
            &format!("/v1/batches/{batch_id}"),
            ADMIN,
            None,
        )
        .await;
        if v["status"] == "completed_with_failures" {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the batch did not finish: {v}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // The upstream throttled answers (the burst's, or the forced one): the events page has
    // throttled answers to show (checked here, so the browser's check below cannot pass on
    // something else).
    let (_, throttled) = api(
        &http,
        addr,
        Method::GET,
        "/v1/events?kind=throttled",
        ADMIN,
        None,
    )
    .await;
    assert!(
        !throttled["events"].as_array().unwrap().is_empty(),
        "the burst was not throttled once: {throttled}"
    );

    let driver = chromedriver();
    let c = browser(&driver).await;

    // The admin: overview with a verdict per upstream.
    sign_in(&c, &base, ADMIN).await;
    assert_eq!(find(&c, "#who").await.text().await.unwrap(), "admin");
    let overview = page_text_with(&c, "crm").await;
    assert!(
        ["idle", "fits", "over capacity"]
            .iter()
            .any(|v| overview.contains(v)),
        "the overview shows the upstream's verdict:\n{overview}"
    );
    screenshot(&c, "overview").await;

    // Budgets: acme's budget, with the limit learned from the upstream's headers.
    c.goto(&format!("{base}/ui#/budgets")).await.unwrap();
    let budgets = page_text_with(&c, "acme").await;
    assert!(budgets.contains("headers"), "a learned limit:\n{budgets}");
    screenshot(&c, "budgets").await;
    find(&c, "#budget-search")
        .await
        .send_keys("nobody-has-this")
        .await
        .unwrap();
    page_text_with(&c, "No budget matches.").await;

    // Events: the throttled answers of the burst.
    c.goto(&format!("{base}/ui#/events")).await.unwrap();
    page_text_with(&c, "throttled").await;
    assert!(
        c.find(Locator::Css("#page td")).await.is_ok(),
        "the events are rows of the table"
    );
    screenshot(&c, "events").await;

    // The batch: its failed records with the upstream's error; markup stays text.
    c.goto(&format!("{base}/ui#/batches/{batch_id}"))
        .await
        .unwrap();
    let batch = page_text_with(&c, "Failed records (2)").await;
    assert!(batch.contains("r19"), "{batch}");
    assert!(batch.contains("<img src=x id=injected>"), "{batch}");
    assert!(
        c.find(Locator::Css("#injected")).await.is_err(),
        "a record id became markup"
    );
    assert!(batch.contains("Download failures (CSV)"), "{batch}");
    screenshot(&c, "batch").await;

    // Jobs: both tenants' for the admin.
    c.goto(&format!("{base}/ui#/jobs")).await.unwrap();
    let jobs = page_text_with(&c, &job_ids["globex"]).await;
    assert!(jobs.contains(&job_ids["acme"]), "{jobs}");
    screenshot(&c, "jobs").await;
    c.goto(&format!("{base}/ui#/jobs/{}", job_ids["acme"]))
        .await
        .unwrap();
    page_text_with(&c, "Attempts").await;
    screenshot(&c, "job").await;

    // A tenant: its own jobs only, no admin pages, and another tenant's job is not shown.
    find(&c, "#signout").await.click().await.unwrap();
    sign_in(&c, &base, &tokens["acme"]).await;
    assert_eq!(find(&c, "#who").await.text().await.unwrap(), "tenant acme");
    let budgets_link = find(&c, "nav a[data-page=budgets]").await;
    assert!(
        !budgets_link.is_displayed().await.unwrap(),
        "a tenant is not offered the budgets page"
    );
    c.goto(&format!("{base}/ui#/jobs")).await.unwrap();
    let own = page_text_with(&c, &job_ids["acme"]).await;
    assert!(
        !own.contains(&job_ids["globex"]),
        "acme's console lists globex's job:\n{own}"
    );
    screenshot(&c, "tenant-jobs").await;
    c.goto(&format!("{base}/ui#/jobs/{}", job_ids["globex"]))
        .await
        .unwrap();
    let other = page_text_with(&c, &format!("no job \"{}\"", job_ids["globex"])).await;
    assert!(
        !other.contains("/crm/v3/objects/contacts/globex"),
        "acme sees globex's job:\n{other}"
    );
    c.goto(&format!("{base}/ui#/budgets")).await.unwrap();
    page_text_with(&c, "an admin token is needed").await;

    // No token, no data: after signing out a fresh load of the page holds none (a hash change
    // alone would not reload it), and the API it calls refuses.
    find(&c, "#signout").await.click().await.unwrap();
    c.goto("about:blank").await.unwrap();
    c.goto(&format!("{base}/ui#/jobs")).await.unwrap();
    find(&c, "#signin:not([hidden])").await;
    let page = c
        .find(Locator::Css("#page"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(!page.contains(&job_ids["acme"]), "{page}");
    let unsigned = http
        .request(
            http::Request::get(format!("http://{addr}/v1/jobs"))
                .body(http_body_util::Full::new(bytes::Bytes::new()))
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(unsigned.status(), StatusCode::UNAUTHORIZED);

    c.close().await.unwrap();
    let _ = stop.send(());
    served.await.unwrap().unwrap();
}
