//! Per-tenant credentials and scoped tokens over real sockets and a real SQLite file: the
//! proxy injects a tenant's credential in place of the client's, and the credential never
//! shows in an API answer, a proxied answer, the logs or the database file; scoped tokens act
//! as their tenant only; the admin API refuses bad input with problem+json and stores nothing.

use std::io::Write;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use headroom::cfg::Config;
use headroom::server::{self, serve};
use http::{HeaderMap, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;
use serde_json::{json, Value};
use tokio::sync::oneshot;

type HttpClient = Client<HttpConnector, Full<Bytes>>;

const ADMIN: &str = "admin-token-0123456789";
const SECRET: &str = "sk_live_SECRET-4f8a1c9e";

/// A local upstream that records the headers of every call and answers 200.
#[derive(Clone, Default)]
struct Recorder(Arc<Mutex<Vec<HeaderMap>>>);

impl Recorder {
    async fn spawn(&self) -> SocketAddr {
        let seen = self.clone();
        let app = axum::Router::new().fallback(move |headers: HeaderMap| {
            let seen = seen.clone();
            async move {
                seen.0.lock().unwrap().push(headers);
                ([("x-upstream", "recorder")], "ok")
            }
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        addr
    }

    fn calls(&self) -> usize {
        self.0.lock().unwrap().len()
    }

    fn last(&self) -> HeaderMap {
        self.0
            .lock()
            .unwrap()
            .last()
            .cloned()
            .expect("a recorded call")
    }
}

/// Headroom on 127.0.0.1:0 with one upstream, `crm`, in front of a recorder.
struct Headroom {
    url: String,
    client: HttpClient,
    stop: Option<oneshot::Sender<()>>,
    done: Option<tokio::task::JoinHandle<()>>,
}

impl Headroom {
    async fn start(dir: &std::path::Path, upstream: SocketAddr) -> Headroom {
        let text = format!(
            "store = \"sqlite://{}/headroom.db\"\n\
             [[upstreams]]\n\
             name = \"crm\"\n\
             base_url = \"http://{upstream}/api\"\n\
             limits = [{{ quota = 1000, window = \"1s\" }}]\n",
            dir.display()
        );
        let config = Config::parse(&text, "test.toml").unwrap();
        let state = server::start(config, Some(ADMIN.to_string()))
            .await
            .unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let (stop, stopped) = oneshot::channel::<()>();
        let done = tokio::spawn(async move {
            serve(state, listener, async {
                let _ = stopped.await;
            })
            .await
            .unwrap()
        });
        Headroom {
            url,
            client: Client::builder(TokioExecutor::new()).build_http(),
            stop: Some(stop),
            done: Some(done),
        }
    }

    async fn stop(mut self) {
        let _ = self.stop.take().unwrap().send(());
        self.done.take().unwrap().await.unwrap();
    }

    async fn send(&self, method: &str, path: &str, headers: &[(&str, &str)], body: &str) -> Reply {
        let mut request = Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.url));
        for (k, v) in headers {
            request = request.header(*k, *v);
        }
        let request = request
            .body(Full::new(Bytes::from(body.to_string())))
            .unwrap();
        let response = self.client.request(request).await.unwrap();
        let (parts, body) = response.into_parts();
        Reply {
            status: parts.status,
            headers: parts.headers,
            body: body.collect().await.unwrap().to_bytes(),
        }
    }

    /// An admin API call.
    async fn admin(&self, method: &str, path: &str, body: &str) -> Reply {
        let auth = format!("Bearer {ADMIN}");
        self.send(method, path, &[("authorization", &auth)], body)
            .await
    }

    async fn put_credential(&self, tenant: &str, credential: &str) {
        let r = self
            .admin(
                "PUT",
                &format!("/v1/tenants/{tenant}/credentials/crm"),
                &json!({ "credential": credential }).to_string(),
            )
            .await;
        assert_eq!(r.status, StatusCode::NO_CONTENT, "{}", r.text());
    }
}

struct Reply {
    status: StatusCode,
    headers: HeaderMap,
    body: Bytes,
}

impl Reply {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|_| panic!("JSON: {}", self.text()))
    }

    /// The whole answer, headers and body, as text.
    fn everything(&self) -> String {
        let mut all = String::new();
        for (k, v) in &self.headers {
            all.push_str(&format!("{k}: {}\n", String::from_utf8_lossy(v.as_bytes())));
        }
        all + &self.text()
    }

    fn assert_problem(&self, status: StatusCode, mentions: &str) {
        assert_eq!(self.status, status, "{}", self.text());
        assert_eq!(
            self.headers.get("content-type").unwrap(),
            "application/problem+json"
        );
        let detail = self.json()["detail"].as_str().unwrap().to_string();
        assert!(
            detail.contains(mentions),
            "{detail:?} should mention {mentions:?}"
        );
    }
}

/// A log sink for `tracing_subscriber::fmt`.
#[derive(Clone, Default)]
struct LogBuffer(Arc<Mutex<Vec<u8>>>);

impl Write for LogBuffer {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for LogBuffer {
    type Writer = LogBuffer;
    fn make_writer(&'a self) -> LogBuffer {
        self.clone()
    }
}

impl LogBuffer {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// Every byte SQLite keeps for the database: the file, its WAL and shared memory.
fn database_bytes(dir: &std::path::Path) -> Vec<u8> {
    let mut all = Vec::new();
    for name in ["headroom.db", "headroom.db-wal", "headroom.db-shm"] {
        if let Ok(bytes) = std::fs::read(dir.join(name)) {
            all.extend(bytes);
        }
    }
    assert!(!all.is_empty(), "no database in {}", dir.display());
    all
}

// The test runs on a current-thread runtime, so the server's tasks log to this thread's
// subscriber.
#[tokio::test]
async fn credentials_are_injected_and_never_leak() {
    let logs = LogBuffer::default();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(logs.clone())
        .with_max_level(tracing::Level::TRACE)
        .with_ansi(false)
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);

    let dir = tempfile::tempdir().unwrap();
    let recorder = Recorder::default();
    let upstream = recorder.spawn().await;
    let headroom = Headroom::start(dir.path(), upstream).await;

    headroom.put_credential("acme", SECRET).await;

    let proxy_auth = format!("Bearer {ADMIN}");
    let r = headroom
        .send(
            "GET",
            "/proxy/crm/v3/contacts?limit=1",
            &[
                ("headroom-tenant", "acme"),
                ("proxy-authorization", &proxy_auth),
                ("authorization", "Bearer the-clients-own"),
            ],
            "",
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert_eq!(r.headers.get("x-upstream").unwrap(), "recorder");
    let seen = recorder.last();
    let auths: Vec<_> = seen.get_all("authorization").iter().collect();
    assert_eq!(
        auths,
        vec![&format!("Bearer {SECRET}")],
        "the stored credential replaces the client's"
    );
    assert!(seen.get("proxy-authorization").is_none());
    assert!(seen.get("headroom-tenant").is_none());
    assert!(
        !r.everything().contains(SECRET),
        "proxied answer: {}",
        r.everything()
    );

    // The API lists which upstreams have a credential, never the value.
    let r = headroom
        .admin("GET", "/v1/tenants/acme/credentials", "")
        .await;
    assert_eq!(r.status, StatusCode::OK);
    let listed = r.json();
    assert_eq!(listed["tenant"], "acme");
    assert_eq!(listed["credentials"][0]["upstream"], "crm");
    assert!(listed["credentials"][0]["updated_at"]
        .as_str()
        .unwrap()
        .ends_with('Z'));
    assert!(!r.everything().contains(SECRET));

    // Replacing it is seen by the next call (the cache follows writes).
    headroom.put_credential("acme", "sk_live_SECOND").await;
    let r = headroom
        .send(
            "GET",
            "/proxy/crm/x",
            &[
                ("headroom-tenant", "acme"),
                ("proxy-authorization", &proxy_auth),
            ],
            "",
        )
        .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(
        recorder.last().get("authorization").unwrap(),
        "Bearer sk_live_SECOND"
    );
    headroom.put_credential("acme", SECRET).await;

    // A tenant without a credential: the client's own header goes through untouched.
    let r = headroom
        .send(
            "GET",
            "/proxy/crm/x",
            &[
                ("headroom-tenant", "globex"),
                ("proxy-authorization", &proxy_auth),
                ("authorization", "Bearer the-clients-own"),
            ],
            "",
        )
        .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(
        recorder.last().get("authorization").unwrap(),
        "Bearer the-clients-own"
    );

    headroom.stop().await;

    let logged = logs.text();
    assert!(
        logged.contains("credential set"),
        "the log capture works: {logged}"
    );
    assert!(
        !logged.contains(SECRET),
        "a credential was logged:\n{logged}"
    );
    assert!(
        !logged.contains("sk_live_SECOND"),
        "a credential was logged:\n{logged}"
    );

    let db = database_bytes(dir.path());
    assert!(
        !contains(&db, SECRET.as_bytes()),
        "plaintext credential in the database"
    );
    assert!(
        !contains(&db, b"sk_live_SECOND"),
        "plaintext credential in the database"
    );

    #[cfg(unix)]
    if std::env::var_os("HEADROOM_SECRET_KEY").is_none() {
        use std::os::unix::fs::PermissionsExt;
        let key = dir.path().join("secret.key");
        let mode = std::fs::metadata(&key).unwrap().permissions().mode();
        assert_eq!(
            mode & 0o777,
            0o600,
            "{} is mode {:o}",
            key.display(),
            mode & 0o777
        );
    }
}

#[tokio::test]
async fn scoped_tokens_act_as_their_tenant_only() {
    let dir = tempfile::tempdir().unwrap();
    let recorder = Recorder::default();
    let upstream = recorder.spawn().await;
    let headroom = Headroom::start(dir.path(), upstream).await;
    headroom.put_credential("acme", "acme-credential").await;
    headroom.put_credential("globex", "globex-credential").await;

    let r = headroom
        .admin("POST", "/v1/tokens", r#"{"tenant":"acme"}"#)
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text());
    let created = r.json();
    assert_eq!(created["tenant"], "acme");
    let token = created["token"].as_str().unwrap().to_string();
    let id = created["id"].as_str().unwrap().to_string();
    assert!(token.starts_with("hr_"), "{token}");
    let bearer = format!("Bearer {token}");

    // Listed without the token; the database holds only its hash.
    let r = headroom.admin("GET", "/v1/tokens?tenant=acme", "").await;
    assert_eq!(r.json()["tokens"][0]["id"], id.as_str());
    assert!(!r.text().contains(&token));
    assert!(!contains(&database_bytes(dir.path()), token.as_bytes()));

    // Its own tenant, without Headroom-Tenant.
    let r = headroom
        .send(
            "GET",
            "/proxy/crm/deals",
            &[("proxy-authorization", &bearer)],
            "",
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert_eq!(
        recorder.last().get("authorization").unwrap(),
        "Bearer acme-credential"
    );
    // Or naming it.
    let r = headroom
        .send(
            "GET",
            "/proxy/crm/deals",
            &[
                ("proxy-authorization", &bearer),
                ("headroom-tenant", "acme"),
            ],
            "",
        )
        .await;
    assert_eq!(r.status, StatusCode::OK);

    // Another tenant: refused before the upstream is called.
    let calls = recorder.calls();
    let r = headroom
        .send(
            "GET",
            "/proxy/crm/deals",
            &[
                ("proxy-authorization", &bearer),
                ("headroom-tenant", "globex"),
            ],
            "",
        )
        .await;
    r.assert_problem(StatusCode::FORBIDDEN, "scoped to tenant \"acme\"");
    assert_eq!(recorder.calls(), calls);
    assert!(!r.text().contains("globex-credential"));

    // Not an admin: the admin API is closed to it.
    let r = headroom
        .send(
            "GET",
            "/v1/tenants/acme/credentials",
            &[("authorization", &bearer)],
            "",
        )
        .await;
    r.assert_problem(StatusCode::FORBIDDEN, "admin token");
    let r = headroom
        .send(
            "PUT",
            "/v1/tenants/acme/credentials/crm",
            &[("authorization", &bearer)],
            r#"{"credential":"mine-now"}"#,
        )
        .await;
    r.assert_problem(StatusCode::FORBIDDEN, "admin token");

    // Revoked: refused.
    let r = headroom
        .admin("DELETE", &format!("/v1/tokens/{id}"), "")
        .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{}", r.text());
    let r = headroom
        .send(
            "GET",
            "/proxy/crm/deals",
            &[("proxy-authorization", &bearer)],
            "",
        )
        .await;
    r.assert_problem(StatusCode::UNAUTHORIZED, "bearer token");
    assert_eq!(recorder.calls(), calls);
    let r = headroom
        .admin("DELETE", &format!("/v1/tokens/{id}"), "")
        .await;
    r.assert_problem(StatusCode::NOT_FOUND, "id");

    let r = headroom
        .admin("POST", "/v1/tokens", r#"{"tenant":"a b"}"#)
        .await;
    r.assert_problem(StatusCode::BAD_REQUEST, "tenant");
    let r = headroom.admin("POST", "/v1/tokens", r#"{}"#).await;
    r.assert_problem(StatusCode::BAD_REQUEST, "tenant");
    headroom.stop().await;
}

#[tokio::test]
async fn requests_without_a_token_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let recorder = Recorder::default();
    let upstream = recorder.spawn().await;
    let headroom = Headroom::start(dir.path(), upstream).await;

    for (method, path) in [
        ("GET", "/v1/tenants/acme/credentials"),
        ("PUT", "/v1/tenants/acme/credentials/crm"),
        ("DELETE", "/v1/tenants/acme/credentials/crm"),
        ("POST", "/v1/tokens"),
        ("GET", "/v1/tokens"),
        ("DELETE", "/v1/tokens/tok_1"),
    ] {
        let body = r#"{"credential":"x","tenant":"acme"}"#;
        let r = headroom.send(method, path, &[], body).await;
        r.assert_problem(StatusCode::UNAUTHORIZED, "bearer token");
        assert_eq!(r.headers.get("www-authenticate").unwrap(), "Bearer");
        let r = headroom
            .send(method, path, &[("authorization", "Bearer wrong")], body)
            .await;
        r.assert_problem(StatusCode::UNAUTHORIZED, "bearer token");
    }
    let r = headroom
        .send("GET", "/proxy/crm/x", &[("headroom-tenant", "acme")], "")
        .await;
    r.assert_problem(StatusCode::UNAUTHORIZED, "bearer token");
    // The admin token in Authorization is for /v1; /proxy wants it in Proxy-Authorization.
    let auth = format!("Bearer {ADMIN}");
    let r = headroom
        .send("GET", "/proxy/crm/x", &[("authorization", &auth)], "")
        .await;
    r.assert_problem(StatusCode::UNAUTHORIZED, "bearer token");
    assert_eq!(recorder.calls(), 0);
    headroom.stop().await;
}

#[tokio::test]
async fn bad_credential_requests_get_400_naming_the_field_and_store_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let recorder = Recorder::default();
    let upstream = recorder.spawn().await;
    let headroom = Headroom::start(dir.path(), upstream).await;

    let long = "L".repeat(8 * 1024 + 1);
    let cases: Vec<(String, &str)> = vec![
        ("{".into(), "request body"),
        ("".into(), "request body"),
        ("[]".into(), "request body"),
        (r#""just a string""#.into(), "request body"),
        ("{}".into(), "credential"),
        (r#"{"credential":null}"#.into(), "credential"),
        (r#"{"credential":""}"#.into(), "credential"),
        (r#"{"credential":42}"#.into(), "credential"),
        (
            json!({"credential": "MARK-newline\n"}).to_string(),
            "credential",
        ),
        (
            json!({"credential": "MARK-cr\rX"}).to_string(),
            "credential",
        ),
        (
            json!({"credential": "MARK-ctl\u{1}X"}).to_string(),
            "credential",
        ),
        (json!({"credential": long}).to_string(), "credential"),
        (
            json!({"credential": "MARK-extra", "tenant": "acme"}).to_string(),
            "tenant",
        ),
        (r#"{"credentail":"MARK-typo"}"#.into(), "credentail"),
    ];
    for (body, field) in &cases {
        let r = headroom
            .admin("PUT", "/v1/tenants/acme/credentials/crm", body)
            .await;
        r.assert_problem(StatusCode::BAD_REQUEST, field);
        assert!(
            !r.text().contains("MARK"),
            "the value is echoed: {}",
            r.text()
        );
    }
    let good = r#"{"credential":"MARK-good"}"#;
    let r = headroom
        .admin("PUT", "/v1/tenants/acme%20corp/credentials/crm", good)
        .await;
    r.assert_problem(StatusCode::BAD_REQUEST, "tenant");
    let r = headroom
        .admin(
            "PUT",
            &format!("/v1/tenants/{}/credentials/crm", "t".repeat(129)),
            good,
        )
        .await;
    r.assert_problem(StatusCode::BAD_REQUEST, "tenant");
    let r = headroom
        .admin("PUT", "/v1/tenants/acme/credentials/erp", good)
        .await;
    r.assert_problem(StatusCode::NOT_FOUND, "upstream");
    let r = headroom
        .admin("DELETE", "/v1/tenants/acme/credentials/crm", "")
        .await;
    r.assert_problem(StatusCode::NOT_FOUND, "no credential");

    let r = headroom
        .admin("GET", "/v1/tenants/acme/credentials", "")
        .await;
    assert_eq!(r.json()["credentials"], json!([]));
    headroom.stop().await;
    assert!(!contains(&database_bytes(dir.path()), b"MARK"));
}

#[tokio::test]
async fn credentials_survive_a_restart_and_can_be_deleted() {
    let dir = tempfile::tempdir().unwrap();
    let recorder = Recorder::default();
    let upstream = recorder.spawn().await;
    let headroom = Headroom::start(dir.path(), upstream).await;
    headroom.put_credential("acme", SECRET).await;
    headroom.stop().await;

    let headroom = Headroom::start(dir.path(), upstream).await;
    let proxy_auth = format!("Bearer {ADMIN}");
    let call = [
        ("headroom-tenant", "acme"),
        ("proxy-authorization", proxy_auth.as_str()),
    ];
    let r = headroom.send("POST", "/proxy/crm/x", &call, "{}").await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert_eq!(
        recorder.last().get("authorization").unwrap(),
        &format!("Bearer {SECRET}")
    );

    let r = headroom
        .admin("DELETE", "/v1/tenants/acme/credentials/crm", "")
        .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{}", r.text());
    let r = headroom.send("POST", "/proxy/crm/x", &call, "{}").await;
    assert_eq!(r.status, StatusCode::OK);
    assert!(recorder.last().get("authorization").is_none());
    headroom.stop().await;
}
