//! What the socket tests share: Headroom in-process in front of `headroom mock`, and a small
//! HTTP client.
#![allow(dead_code)] // each test binary uses its own part

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use headroom::cfg::Config;
use headroom::mock::{self, MockConfig, MockHandle, Profile};
use headroom::server::{self, AppState};
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
        let mock = mock::spawn(listener, mock_config).await.unwrap();
        let dir = tempfile::tempdir().unwrap();
        let toml = format!(
            "store = \"sqlite://{}/headroom.db\"\n{extra}\n[[upstreams]]\nname = \"up\"\nbase_url = \"{}\"\n{upstream}\n",
            dir.path().display(),
            mock.url(),
            extra = top_level
        );
        let config = Config::parse(&toml, "test.toml").expect("a valid test config");
        let state = AppState::new(config, token.map(str::to_string))
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
