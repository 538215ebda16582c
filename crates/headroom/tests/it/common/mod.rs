//! What the socket tests share: Headroom in-process in front of `headroom mock`, and a small
//! HTTP client.
#![allow(dead_code)] // each test binary uses its own part

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use headroom::app::AppState;
use headroom::cfg::Config;
use headroom::server;
use headroom_mock::{MockConfig, MockHandle, Profile};
use http::{HeaderMap, Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;
use tokio::sync::oneshot;

pub type HttpClient = Client<HttpConnector, Full<Bytes>>;

pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Reply {
    pub fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }

    pub fn wait_ms(&self) -> u64 {
        self.header("headroom-wait-ms")
            .parse()
            .expect("Headroom-Wait-Ms")
    }

    pub fn attempts(&self) -> u32 {
        self.header("headroom-attempts")
            .parse()
            .expect("Headroom-Attempts")
    }

    pub fn problem(&self) -> serde_json::Value {
        assert_eq!(self.header("content-type"), "application/problem+json");
        serde_json::from_slice(&self.body).expect("a problem+json body")
    }
}

/// Headroom serving a config in front of a mock upstream.
pub struct Rig {
    pub mock: MockHandle,
    pub addr: SocketAddr,
    pub client: HttpClient,
    stop: Option<oneshot::Sender<()>>,
    server: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
    _dir: tempfile::TempDir,
}

impl Rig {
    /// `upstream` is the TOML of the `up` upstream after its name and base URL.
    pub async fn start(mock_config: MockConfig, upstream: &str) -> Rig {
        Rig::start_with_token(mock_config, upstream, None).await
    }

    pub async fn start_with_token(
        mock_config: MockConfig,
        upstream: &str,
        token: Option<&str>,
    ) -> Rig {
        Rig::start_full(mock_config, "", upstream, token).await
    }

    /// `top_level` is TOML placed before the upstream (e.g. `[[queues]]` tables after it
    /// would belong to the upstream).
    pub async fn start_full(
        mock_config: MockConfig,
        top_level: &str,
        upstream: &str,
        token: Option<&str>,
    ) -> Rig {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mock = headroom_mock::spawn(listener, mock_config).await.unwrap();
        let dir = tempfile::tempdir().unwrap();
        let toml = format!(
            "store = \"sqlite://{}/headroom.db\"\n{auth}{extra}\n[[upstreams]]\nname = \"up\"\nbase_url = \"{}\"\n{upstream}\n",
            dir.path().display(),
            mock.url(),
            auth = if token.is_none() { "auth = \"none\"\n" } else { "" },
            extra = top_level
        );
        let config = Config::parse(&toml, "test.toml").expect("a valid test config");
        let state = server::start(config, token.map(str::to_string))
            .await
            .unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        let server = tokio::spawn(server::serve(state, listener, async {
            let _ = stopped.await;
        }));
        Rig {
            mock,
            addr,
            client: Client::builder(TokioExecutor::new()).build_http(),
            stop: Some(stop),
            server: Some(server),
            _dir: dir,
        }
    }

    pub async fn send(&self, method: Method, path: &str, headers: &[(&str, &str)]) -> Reply {
        send(&self.client, self.addr, method, path, headers).await
    }

    pub async fn get(&self, path: &str, headers: &[(&str, &str)]) -> Reply {
        self.send(Method::GET, path, headers).await
    }

    pub async fn shutdown(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(server) = self.server.take() {
            server.await.unwrap().unwrap();
        }
    }
}

pub async fn send(
    client: &HttpClient,
    addr: SocketAddr,
    method: Method,
    path: &str,
    headers: &[(&str, &str)],
) -> Reply {
    let mut request = Request::builder()
        .method(method)
        .uri(format!("http://{addr}{path}"));
    for (k, v) in headers {
        request = request.header(*k, *v);
    }
    let response = client
        .request(
            request
                .body(Full::new(Bytes::from_static(b"{\"n\":1}")))
                .unwrap(),
        )
        .await
        .expect("Headroom answers");
    let (parts, body) = response.into_parts();
    Reply {
        status: parts.status,
        headers: parts.headers,
        body: body.collect().await.unwrap().to_bytes(),
    }
}

pub fn mock(profile: Profile, limit: u32, window_s: u64) -> MockConfig {
    MockConfig {
        profile,
        limit,
        window: Duration::from_secs(window_s),
        ..MockConfig::default()
    }
}

/// A request a [`Recorder`] received.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub method: String,
    pub path: String,
    pub headers: HeaderMap,
    pub body: Bytes,
}

/// An answer a [`Recorder`] is told to give: a status and headers.
type Scripted = (u16, Vec<(String, String)>);

/// A tiny upstream that records every request and answers from a script of statuses
/// (then 200s), for what the mock does not show: headers received, callbacks, order. It can
/// also hold answers ([`Recorder::hold`]): a request is recorded at once, answered later.
#[derive(Clone)]
pub struct Recorder {
    pub addr: SocketAddr,
    seen: std::sync::Arc<std::sync::Mutex<Vec<Recorded>>>,
    script: std::sync::Arc<std::sync::Mutex<std::collections::VecDeque<Scripted>>>,
    /// The path prefix whose requests are held (not answered) while set.
    held: std::sync::Arc<tokio::sync::watch::Sender<Option<String>>>,
}

impl Recorder {
    pub async fn start() -> Recorder {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let recorder = Recorder {
            addr,
            seen: Default::default(),
            script: Default::default(),
            held: std::sync::Arc::new(tokio::sync::watch::Sender::new(None)),
        };
        let r = recorder.clone();
        let app = axum::Router::new().fallback(move |request: axum::extract::Request| {
            let r = r.clone();
            async move {
                let (parts, body) = request.into_parts();
                let body = body.collect().await.unwrap().to_bytes();
                let path = parts.uri.path().to_string();
                let mut held = r.held.subscribe();
                r.seen.lock().unwrap().push(Recorded {
                    method: parts.method.to_string(),
                    path: path.clone(),
                    headers: parts.headers,
                    body,
                });
                // Recorded at once; answered once no hold covers its path (`wait_for` looks at
                // the current value first, so a release before this point is not missed).
                let _ = held
                    .wait_for(|prefix| !prefix.as_deref().is_some_and(|p| path.starts_with(p)))
                    .await;
                let (status, headers) = r
                    .script
                    .lock()
                    .unwrap()
                    .pop_front()
                    .unwrap_or((200, Vec::new()));
                let mut response = axum::response::Response::builder().status(status);
                for (k, v) in headers {
                    response = response.header(k, v);
                }
                response
                    .header("content-type", "application/json")
                    .body(axum::body::Body::from("{\"ok\":true}"))
                    .unwrap()
            }
        });
        tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        recorder
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The next answers, in order: a status and headers each.
    pub fn answer(&self, status: u16, headers: &[(&str, &str)]) {
        self.script.lock().unwrap().push_back((
            status,
            headers
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        ));
    }

    /// From now on, requests whose path starts with `path_prefix` are recorded as they arrive
    /// but not answered until [`Recorder::release`] (one prefix at a time: a new hold replaces
    /// the last and releases what it no longer covers).
    pub fn hold(&self, path_prefix: &str) {
        self.held.send_replace(Some(path_prefix.to_string()));
    }

    /// Answers every held request, and holds no more.
    pub fn release(&self) {
        self.held.send_replace(None);
    }

    pub fn seen(&self) -> Vec<Recorded> {
        self.seen.lock().unwrap().clone()
    }

    /// Waits (up to `limit`) until at least `n` requests arrived.
    pub async fn wait_for(&self, n: usize, limit: Duration) -> Vec<Recorded> {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let seen = self.seen();
            if seen.len() >= n || tokio::time::Instant::now() > deadline {
                return seen;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// Headroom alone (no mock) in front of `base_url`, with `config` as the whole TOML after
/// the store (use `{base}` where the upstream's URL goes).
pub struct Server {
    pub addr: SocketAddr,
    pub client: HttpClient,
    pub state: AppState,
    stop: Option<oneshot::Sender<()>>,
    server: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
    pub dir: std::sync::Arc<tempfile::TempDir>,
}

impl Server {
    pub async fn start(config: &str, base: &str) -> Server {
        Server::start_in(
            std::sync::Arc::new(tempfile::tempdir().unwrap()),
            config,
            base,
        )
        .await
    }

    /// Starts on the store in `dir` (to restart on the same data).
    pub async fn start_in(
        dir: std::sync::Arc<tempfile::TempDir>,
        config: &str,
        base: &str,
    ) -> Server {
        Server::start_with_clock(dir, config, base, None).await
    }

    /// As `start_in`, with schedules on `clock` (counted from the Unix epoch) when given.
    pub async fn start_with_clock(
        dir: std::sync::Arc<tempfile::TempDir>,
        config: &str,
        base: &str,
        clock: Option<std::sync::Arc<dyn headroom_core::clock::Clock>>,
    ) -> Server {
        let toml = format!(
            "store = \"sqlite://{}/headroom.db\"\nauth = \"none\"\n{}",
            dir.path().display(),
            config.replace("{base}", base)
        );
        let config = Config::parse(&toml, "test.toml").expect("a valid test config");
        let state = match clock {
            Some(clock) => server::start_with_clock(config, None, clock).await.unwrap(),
            None => server::start(config, None).await.unwrap(),
        };
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        let server = tokio::spawn(server::serve(state.clone(), listener, async {
            let _ = stopped.await;
        }));
        Server {
            addr,
            client: Client::builder(TokioExecutor::new()).build_http(),
            state,
            stop: Some(stop),
            server: Some(server),
            dir,
        }
    }

    pub async fn get(&self, path: &str) -> Reply {
        send(&self.client, self.addr, Method::GET, path, &[]).await
    }

    pub async fn delete(&self, path: &str) -> Reply {
        send(&self.client, self.addr, Method::DELETE, path, &[]).await
    }

    /// POSTs a JSON body.
    pub async fn post(&self, path: &str, body: &serde_json::Value) -> Reply {
        post_raw(
            &self.client,
            self.addr,
            path,
            serde_json::to_vec(body).unwrap(),
        )
        .await
    }

    pub async fn post_raw(&self, path: &str, body: &[u8]) -> Reply {
        post_raw(&self.client, self.addr, path, body.to_vec()).await
    }

    pub async fn shutdown(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(server) = self.server.take() {
            server.await.unwrap().unwrap();
        }
    }

    /// Polls a job until it is final (or `limit` passes); returns its last view.
    pub async fn wait_job(&self, id: &str, limit: Duration) -> serde_json::Value {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let v: serde_json::Value =
                serde_json::from_slice(&self.get(&format!("/v1/jobs/{id}")).await.body).unwrap();
            let status = v["status"].as_str().unwrap_or("").to_string();
            if ["succeeded", "failed", "cancelled"].contains(&status.as_str())
                || tokio::time::Instant::now() > deadline
            {
                return v;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }
}

pub async fn post_raw(client: &HttpClient, addr: SocketAddr, path: &str, body: Vec<u8>) -> Reply {
    let request = Request::builder()
        .method(Method::POST)
        .uri(format!("http://{addr}{path}"))
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body)))
        .unwrap();
    let response = client.request(request).await.expect("Headroom answers");
    let (parts, body) = response.into_parts();
    Reply {
        status: parts.status,
        headers: parts.headers,
        body: body.collect().await.unwrap().to_bytes(),
    }
}

impl Reply {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).expect("a JSON body")
    }
}

/// `headroom serve` as a process, so that it can be killed (SIGKILL) or stopped (SIGTERM).
pub struct Process {
    pub child: std::process::Child,
    pub addr: String,
}

impl Process {
    pub fn start(dir: &std::path::Path, config: &str, port: u16) -> Process {
        let path = dir.join("headroom.toml");
        std::fs::write(&path, config).unwrap();
        let addr = format!("127.0.0.1:{port}");
        let child = std::process::Command::new(env!("CARGO_BIN_EXE_headroom"))
            .args([
                "serve",
                "--config",
                path.to_str().unwrap(),
                "--listen",
                &addr,
            ])
            .env("HEADROOM_LOG", "warn")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("headroom serve starts");
        Process { child, addr }
    }

    pub async fn ready(&self, client: &HttpClient) {
        for _ in 0..200 {
            let ok = client
                .get(format!("http://{}/healthz", self.addr).parse().unwrap())
                .await
                .is_ok();
            if ok {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("headroom serve did not come up on {}", self.addr);
    }

    /// SIGTERM, as systemd, Docker and Kubernetes stop a service.
    pub fn terminate(&self) {
        let status = std::process::Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("kill runs");
        assert!(status.success(), "kill -TERM failed");
    }

    /// Waits up to `limit` for the process to exit; its status, or `None` if it did not.
    pub async fn exited(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return Some(status);
            }
            if tokio::time::Instant::now() > deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub fn kill9(&mut self) {
        // SIGKILL: no shutdown, no drain, nothing flushed by Headroom itself.
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Any request, with headers and (when given) a JSON body.
pub async fn call(
    client: &HttpClient,
    addr: SocketAddr,
    method: Method,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&serde_json::Value>,
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

/// Mints a token scoped to `tenant` through the API with the `admin` token; returns it as
/// an `Authorization` value.
pub async fn mint(rig: &Rig, admin: &str, tenant: &str) -> String {
    let r = call(
        &rig.client,
        rig.addr,
        Method::POST,
        "/v1/tokens",
        &[("authorization", &format!("Bearer {admin}"))],
        Some(&serde_json::json!({ "tenant": tenant })),
    )
    .await;
    assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
    format!("Bearer {}", r.json()["token"].as_str().unwrap())
}
