//! What the store keeps and shows, over real sockets: dedup ids that stay inside their
//! tenant, credential-like request fields sealed at rest and never shown, private database
//! files, and a store that recovers from a full disk (with `/readyz` saying so meanwhile).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use crate::common::{call, mock, Reply, Rig};
use headroom_mock::Profile;
use http::{Method, StatusCode};
use serde_json::{json, Value};

const ADMIN: &str = "admin-token-for-store-safety";
const LONG: Duration = Duration::from_secs(60);

/// Tenant B holds dedup id "order-1001"; tenant A, with its own scoped token, submits the
/// same id: A gets a job of its own (202) and sees nothing of B's; A's repeat is
/// deduplicated to A's job, and B's job is untouched.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dedup_ids_never_cross_tenants() {
    let rig = Rig::start_with_token(mock(Profile::Ietf, 1000, 1), "", Some(ADMIN)).await;
    let (a, b) = (
        crate::common::mint(&rig, ADMIN, "tenant-a").await,
        crate::common::mint(&rig, ADMIN, "tenant-b").await,
    );
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

/// A tmpfs mounted on a temporary directory, unmounted (lazily: the server may still hold
/// its files) when dropped, whatever happened.
struct Tmpfs {
    dir: Arc<tempfile::TempDir>,
}

impl Tmpfs {
    /// Panics, saying why, where mounting is not allowed (the test needs root).
    fn mount(size: &str) -> Tmpfs {
        let dir = Arc::new(tempfile::tempdir().unwrap());
        let out = std::process::Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0700"),
                "tmpfs",
            ])
            .arg(dir.path())
            .output();
        match out {
            Ok(o) if o.status.success() => Tmpfs { dir },
            other => {
                let why = match other {
                    Ok(o) => String::from_utf8_lossy(&o.stderr).trim().to_string(),
                    Err(e) => e.to_string(),
                };
                panic!("cannot mount a tmpfs for the full-disk test ({why}); it needs root");
            }
        }
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(self.dir.path())
            .status();
    }
}

/// Fills the filesystem of `path` until a write fails; returns the bytes written.
fn fill(path: &std::path::Path) -> u64 {
    use std::io::Write;
    let mut f = std::fs::File::create(path).unwrap();
    let chunk = vec![0x5a_u8; 64 << 10];
    let mut written = 0u64;
    loop {
        match f.write(&chunk) {
            Ok(0) | Err(_) => break,
            Ok(n) => written += n as u64,
        }
    }
    // The last pages, a few bytes at a time.
    while let Ok(n) = f.write(&chunk[..512]) {
        if n == 0 {
            break;
        }
        written += n as u64;
    }
    let _ = f.sync_all();
    written
}

const JOBS_CONFIG: &str = r#"
[[upstreams]]
name = "up"
base_url = "{base}"
"#;

fn disk_job(n: usize) -> Value {
    json!({
        "upstream": "up",
        "tenant": "acme",
        "request": {
            "method": "POST",
            "path": format!("/disk/{n}"),
            "body": {"n": n, "pad": "x".repeat(8 << 10)},
        },
    })
}

async fn readyz(server: &crate::common::Server) -> Reply {
    server.get("/readyz").await
}

/// Counts the jobs in each status (every page).
async fn statuses(server: &crate::common::Server) -> std::collections::BTreeMap<String, usize> {
    let mut counts = std::collections::BTreeMap::new();
    let mut cursor: Option<String> = None;
    loop {
        let path = match &cursor {
            Some(c) => format!("/v1/jobs?limit=500&cursor={c}"),
            None => "/v1/jobs?limit=500".to_string(),
        };
        let page = server.get(&path).await.json();
        for j in page["jobs"].as_array().unwrap() {
            *counts
                .entry(j["status"].as_str().unwrap().to_string())
                .or_insert(0) += 1;
        }
        match page["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_string()),
            None => return counts,
        }
    }
}

/// An upstream that records each request's path and answers 200 once its gate is open, so
/// that jobs can be caught mid-call.
#[derive(Clone)]
struct Gate {
    addr: SocketAddr,
    open: Arc<tokio::sync::watch::Sender<bool>>,
    seen: Arc<std::sync::Mutex<Vec<(String, http::HeaderMap)>>>,
}

impl Gate {
    async fn start() -> Gate {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let gate = Gate {
            addr: listener.local_addr().unwrap(),
            open: Arc::new(tokio::sync::watch::channel(true).0),
            seen: Default::default(),
        };
        let g = gate.clone();
        let app = axum::Router::new().fallback(move |request: axum::extract::Request| {
            let g = g.clone();
            async move {
                let uri = request.uri().to_string();
                g.seen
                    .lock()
                    .unwrap()
                    .push((uri, request.headers().clone()));
                let mut open = g.open.subscribe();
                let _ = open.wait_for(|o| *o).await;
                axum::response::Response::builder()
                    .header("content-type", "application/json")
                    .body(axum::body::Body::from("{\"ok\":true}"))
                    .unwrap()
            }
        });
        tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        gate
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn set_open(&self, open: bool) {
        self.open.send_replace(open);
    }

    /// The path and query of each request.
    fn seen(&self) -> Vec<String> {
        self.seen
            .lock()
            .unwrap()
            .iter()
            .map(|(u, _)| u.clone())
            .collect()
    }

    fn requests(&self) -> Vec<(String, http::HeaderMap)> {
        self.seen.lock().unwrap().clone()
    }

    async fn wait_seen(&self, n: usize) {
        let deadline = tokio::time::Instant::now() + LONG;
        while self.seen().len() < n {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the upstream saw {} calls, not {n}",
                self.seen().len()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// The disk under the SQLite store fills up: submissions fail cleanly (503 problem, nothing
/// acknowledged and lost), the outcomes of calls that were in flight wait to be recorded,
/// and `/readyz` says the store is not ready; once space is freed, the same process takes
/// and runs new jobs to `succeeded`, every job acknowledged before or during the outage
/// finishes (none stays `running`, none is sent twice), and `/readyz` is 200 again.
#[ignore = "needs root: mounts a tmpfs (README: Run the tests)"]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_fails_cleanly_and_the_store_recovers() {
    let tmpfs = Tmpfs::mount("12m");
    let up = Gate::start().await;
    let server =
        crate::common::Server::start_in(Arc::clone(&tmpfs.dir), JOBS_CONFIG, &up.url()).await;
    let r = readyz(&server).await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    assert_eq!(r.json(), json!({"status": "ready"}));

    let mut acknowledged = Vec::new();
    let r = server.post("/v1/jobs", &disk_job(0)).await;
    assert_eq!(r.status, StatusCode::ACCEPTED);
    let first = r.json()["id"].as_str().unwrap().to_string();
    assert_eq!(server.wait_job(&first, LONG).await["status"], "succeeded");
    acknowledged.push(first);

    // Calls in flight when the disk fills: their outcomes cannot be recorded yet.
    up.set_open(false);
    for n in 1..=5 {
        let r = server.post("/v1/jobs", &disk_job(n)).await;
        assert_eq!(r.status, StatusCode::ACCEPTED);
        acknowledged.push(r.json()["id"].as_str().unwrap().to_string());
    }
    up.wait_seen(6).await;

    // Fill the disk, then submit until the store refuses.
    let filler = tmpfs.dir.path().join("filler");
    let filled = fill(&filler);
    assert!(filled > 0);
    up.set_open(true);
    let r = readyz(&server).await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE, "{:?}", r.body);
    let problem = r.problem();
    assert!(problem["checks"]["store"].is_string(), "{problem}");
    assert!(
        problem["detail"].as_str().unwrap().contains("store"),
        "{problem}"
    );

    let mut refused = None;
    for n in 100..=3_100 {
        let r = server.post("/v1/jobs", &disk_job(n)).await;
        if r.status == StatusCode::ACCEPTED {
            acknowledged.push(r.json()["id"].as_str().unwrap().to_string());
            continue;
        }
        refused = Some(r);
        break;
    }
    let refused = refused.expect("3,000 jobs of 8 KiB fit on a full 12 MiB disk");
    eprintln!(
        "disk filled with {filled} bytes; {} jobs acknowledged before the store refused one: {:?}",
        acknowledged.len(),
        String::from_utf8_lossy(&refused.body)
    );
    assert!(refused.status.is_server_error(), "{}", refused.status);
    assert_eq!(refused.status, StatusCode::SERVICE_UNAVAILABLE);
    let problem = refused.problem();
    assert!(
        problem["detail"]
            .as_str()
            .unwrap()
            .contains("nothing was stored"),
        "{problem}"
    );
    // Still full: still not ready.
    assert_eq!(
        readyz(&server).await.status,
        StatusCode::SERVICE_UNAVAILABLE
    );

    // Free the space: ready again, without a restart.
    std::fs::remove_file(&filler).unwrap();
    let deadline = tokio::time::Instant::now() + LONG;
    loop {
        let r = readyz(&server).await;
        if r.status == StatusCode::OK {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "/readyz stayed {} after the disk was freed: {:?}",
            r.status,
            r.body
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // New jobs are taken and run.
    for n in 10_001..10_006 {
        let r = server.post("/v1/jobs", &disk_job(n)).await;
        assert_eq!(r.status, StatusCode::ACCEPTED, "{:?}", r.body);
        acknowledged.push(r.json()["id"].as_str().unwrap().to_string());
    }
    for id in &acknowledged {
        let v = server.wait_job(id, LONG).await;
        assert_eq!(
            v["status"], "succeeded",
            "job {id} after the disk was freed: {v}"
        );
    }
    let counts = statuses(&server).await;
    assert_eq!(
        counts.keys().collect::<Vec<_>>(),
        vec!["succeeded"],
        "every job finished: {counts:?}"
    );
    assert_eq!(counts["succeeded"], acknowledged.len(), "{counts:?}");
    // Each acknowledged job reached the upstream once: none was left to be sent again.
    let mut paths = up.seen();
    paths.sort();
    let before = paths.len();
    paths.dedup();
    assert_eq!(before, paths.len(), "a job was sent twice");
    assert_eq!(paths.len(), acknowledged.len());
    assert_eq!(readyz(&server).await.status, StatusCode::OK);
    server.shutdown().await;
    drop(tmpfs);
}

/// A database file deleted under the running server: `/readyz` says so (writes would go to
/// a file no one can open again), while `/healthz` stays 200 (a restart would not bring it
/// back, and would start an empty database in its place).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_notices_a_deleted_database_file() {
    let up = crate::common::Recorder::start().await;
    let server = crate::common::Server::start(JOBS_CONFIG, &up.url()).await;
    assert_eq!(readyz(&server).await.status, StatusCode::OK);
    let db = server.dir.path().join("headroom.db");
    std::fs::remove_file(&db).unwrap();
    let r = readyz(&server).await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE, "{:?}", r.body);
    let problem = r.problem();
    let store = problem["checks"]["store"].as_str().unwrap();
    assert!(store.contains("deleted"), "{problem}");
    assert!(problem["checks"].get("governor").is_none(), "{problem}");
    assert_eq!(server.get("/healthz").await.status, StatusCode::OK);
    server.shutdown().await;
}

/// A Redis governor that does not answer: `/readyz` names the governor (PING), not the
/// store; the local Redis (when there is one): ready.
#[ignore = "needs Redis (README: Run the tests)"]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_pings_a_redis_governor() {
    let up = crate::common::Recorder::start().await;
    // A port nothing listens on.
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = dead.local_addr().unwrap().port();
    drop(dead);
    let config = format!("governor = \"redis://127.0.0.1:{port}\"\n{JOBS_CONFIG}");
    let server = crate::common::Server::start(&config, &up.url()).await;
    let r = readyz(&server).await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE, "{:?}", r.body);
    let problem = r.problem();
    assert!(problem["checks"]["governor"].is_string(), "{problem}");
    assert!(problem["checks"].get("store").is_none(), "{problem}");
    server.shutdown().await;

    let redis = crate::services::redis();
    let config = format!(
        "governor = \"{redis}/?prefix={}\"\n{JOBS_CONFIG}",
        crate::services::unique("readyz")
    );
    let server = crate::common::Server::start(&config, &up.url()).await;
    let r = readyz(&server).await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    server.shutdown().await;
}

/// A PostgreSQL password is never printed: not in the error of a store that cannot be
/// opened (outer message and inner ones), nor in check-config's refusal of a store URL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_password_is_never_printed() {
    let toml = "store = \"postgres://headroom:hunter2-pw@127.0.0.1:1/db\"\n";
    let config = headroom::cfg::Config::parse(toml, "t.toml").unwrap();
    let e = match headroom::server::start(config, None).await {
        Ok(_) => panic!("nothing listens on port 1"),
        Err(e) => e,
    };
    let shown = format!("{e:#}\n{e:?}");
    assert!(!shown.contains("hunter2-pw"), "{shown}");
    assert!(
        shown.contains("postgres://headroom:***@127.0.0.1:1/db"),
        "{shown}"
    );
    let e = headroom::cfg::Config::parse("store = \"mysql://u:hunter2-pw@h/db\"\n", "t.toml")
        .unwrap_err()
        .to_string();
    assert!(!e.contains("hunter2-pw"), "{e}");
    assert!(e.contains("store:"), "{e}");
}

/// `[jobs] retention`: finished jobs are kept until their retention has passed, then the
/// prune deletes them with their attempts (what else it keeps is the conformance suite's
/// `retention` property, on both backends).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finished_jobs_are_deleted_after_their_retention() {
    let up = crate::common::Recorder::start().await;
    let config = format!("[jobs]\nretention = \"1h\"\n{JOBS_CONFIG}");
    let server = crate::common::Server::start(&config, &up.url()).await;
    assert_eq!(server.state.config.job_retention, Duration::from_secs(3600));
    let mut ids = Vec::new();
    for n in 1..=2 {
        let r = server.post("/v1/jobs", &disk_job(n)).await;
        assert_eq!(r.status, StatusCode::ACCEPTED);
        let id = r.json()["id"].as_str().unwrap().to_string();
        assert_eq!(server.wait_job(&id, LONG).await["status"], "succeeded");
        ids.push(id);
    }
    let now = headroom::clock::system_millis();
    let pruned = headroom::work::retention::prune(&server.state, now)
        .await
        .unwrap();
    assert_eq!(pruned.jobs, 0, "{pruned:?}");
    for id in &ids {
        let r = server.get(&format!("/v1/jobs/{id}")).await;
        assert_eq!(r.status, StatusCode::OK);
    }
    let pruned = headroom::work::retention::prune(&server.state, now + 2 * 3_600_000)
        .await
        .unwrap();
    assert_eq!((pruned.jobs, pruned.attempts), (2, 2), "{pruned:?}");
    for id in &ids {
        let r = server.get(&format!("/v1/jobs/{id}")).await;
        assert_eq!(r.status, StatusCode::NOT_FOUND);
    }
    server.shutdown().await;
}

/// Whether any file in `dir` (the database, its WAL) holds `needle`.
fn files_hold(dir: &std::path::Path, needle: &[u8]) -> Option<String> {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if let Ok(bytes) = std::fs::read(&path) {
            if bytes.windows(needle.len()).any(|w| w == needle) {
                return Some(path.display().to_string());
            }
        }
    }
    None
}

/// A job's credential-like headers and query parameters are sealed in the database and
/// never shown by the API (`<redacted>`), and the upstream still receives the real values.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn job_credentials_are_sealed_at_rest_and_never_shown() {
    let up = Gate::start().await;
    let server = crate::common::Server::start(JOBS_CONFIG, &up.url()).await;
    let secrets = [
        "sk_live_HDR_AUTH",
        "sk_live_HDR_KEY",
        "sk_live_QUERY",
        "sess_COOKIE",
    ];
    let body = json!({
        "upstream": "up",
        "tenant": "acme",
        "request": {
            "method": "GET",
            "path": "/contacts",
            "query": "page=2&api_key=sk_live_QUERY",
            "headers": {
                "Authorization": "Bearer sk_live_HDR_AUTH",
                "X-Api-Key": "sk_live_HDR_KEY",
                "Cookie": "s=sess_COOKIE",
                "x-trace": "t1",
            },
        },
    });
    let r = server.post("/v1/jobs", &body).await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{:?}", r.body);
    let id = r.json()["id"].as_str().unwrap().to_string();
    let mut shown = String::from_utf8_lossy(&r.body).to_string();
    let done = server.wait_job(&id, LONG).await;
    assert_eq!(done["status"], "succeeded", "{done}");
    assert_eq!(done["request"]["query"], "page=2&api_key=<redacted>");
    shown.push_str(&done.to_string());
    shown.push_str(&String::from_utf8_lossy(&server.get("/v1/jobs").await.body));
    for s in secrets {
        assert!(!shown.contains(s), "the API shows {s}: {shown}");
        if let Some(file) = files_hold(server.dir.path(), s.as_bytes()) {
            panic!("{file} holds {s} in clear");
        }
    }
    // The upstream got the real values.
    let requests = up.requests();
    assert_eq!(requests.len(), 1);
    let (uri, headers) = &requests[0];
    assert_eq!(uri, "/contacts?page=2&api_key=sk_live_QUERY");
    assert_eq!(headers["authorization"], "Bearer sk_live_HDR_AUTH");
    assert_eq!(headers["x-api-key"], "sk_live_HDR_KEY");
    assert_eq!(headers["cookie"], "s=sess_COOKIE");
    assert_eq!(headers["x-trace"], "t1");
    server.shutdown().await;
}

/// SQLite database files (and their WAL and shared-memory files) are readable by their
/// owner only, like the secret key beside them.
#[cfg(unix)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn database_files_are_created_private() {
    use std::os::unix::fs::PermissionsExt;
    let up = crate::common::Recorder::start().await;
    let server = crate::common::Server::start(JOBS_CONFIG, &up.url()).await;
    let r = server.post("/v1/jobs", &disk_job(1)).await;
    assert_eq!(r.status, StatusCode::ACCEPTED);
    for name in [
        "headroom.db",
        "headroom.db-wal",
        "headroom.db-shm",
        "secret.key",
    ] {
        let path = server.dir.path().join(name);
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{}: {mode:o}", path.display());
    }
    server.shutdown().await;
}

/// Jobs and dedup ids as the schema before the dedup migration kept them…
const DEDUP_BEFORE: &str = "INSERT INTO jobs (id, queue, scope, upstream, tenant, lane, method, \
        path, headers, body_is_json, max_attempts, idempotency_key, created_at, status, \
        next_attempt_at, updated_at, callback) VALUES \
        ('j1', 'default', '', 'up', 'acme', 'bulk', 'GET', '/', '[]', FALSE, 5, 'j1', 1, \
         'queued', 1, 1, 'none'), \
        ('j2', 'default', '', 'up', NULL, 'bulk', 'GET', '/', '[]', FALSE, 5, 'j2', 1, \
         'queued', 1, 1, 'none'); \
        INSERT INTO job_dedup (queue, dedup_id, job_id, until) VALUES \
        ('default', 'e1', 'j1', 100), ('default', 'e2', 'j2', 100), \
        ('default', 'e3', 'gone', 100);";
/// …and what the migration made of them.
const DEDUP_AFTER: &str = "SELECT tenant || '/' || dedup_id || '/' || job_id FROM job_dedup \
        ORDER BY dedup_id";
const DEDUP_WANT: [&str; 3] = ["acme/e1/j1", "/e2/j2", "/e3/gone"];

/// The dedup migration keeps existing dedup ids, each under its job's tenant ('' for a job
/// without one), on SQLite…
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dedup_migration_keeps_existing_ids_under_their_tenant() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("m.db").display());
    let opts: sqlx::sqlite::SqliteConnectOptions = url.parse().unwrap();
    let mut conn =
        <sqlx::SqliteConnection as sqlx::Connection>::connect_with(&opts.create_if_missing(true))
            .await
            .unwrap();
    for sql in [
        include_str!("../../../headroom-store/migrations/0001_credentials_and_tokens.sql"),
        include_str!("../../../headroom-store/migrations/0002_jobs_and_batches.sql"),
        include_str!("../../../headroom-store/migrations/0003_schedules.sql"),
        include_str!("../../../headroom-store/migrations/0004_events.sql"),
        DEDUP_BEFORE,
        include_str!("../../../headroom-store/migrations/0005_tenant_dedup_and_retention.sql"),
    ] {
        sqlx::raw_sql(sql).execute(&mut conn).await.unwrap();
    }
    let got: Vec<String> = sqlx::query_scalar(DEDUP_AFTER)
        .fetch_all(&mut conn)
        .await
        .unwrap();
    assert_eq!(got, DEDUP_WANT);
}

/// …and on PostgreSQL.
#[ignore = "needs PostgreSQL (README: Run the tests)"]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dedup_migration_keeps_existing_ids_under_their_tenant_on_postgres() {
    let base = crate::services::postgres();
    let schema = crate::services::PgSchema::create(&base).await;
    let mut conn = <sqlx::PgConnection as sqlx::Connection>::connect(&schema.url())
        .await
        .unwrap();
    for sql in [
        include_str!("../../../headroom-store/migrations/postgres/0001_schema.sql"),
        include_str!("../../../headroom-store/migrations/postgres/0002_events.sql"),
        DEDUP_BEFORE,
        include_str!(
            "../../../headroom-store/migrations/postgres/0003_tenant_dedup_and_retention.sql"
        ),
    ] {
        sqlx::raw_sql(sql).execute(&mut conn).await.unwrap();
    }
    let got: Vec<String> = sqlx::query_scalar(DEDUP_AFTER)
        .fetch_all(&mut conn)
        .await
        .unwrap();
    assert_eq!(got, DEDUP_WANT);
    drop(conn);
    schema.drop().await;
}
