//! OTLP export end to end: `headroom serve` with `OTEL_EXPORTER_OTLP_ENDPOINT` pointing at a
//! local receiver sends its traces (a job attempt's span) and logs (a rate-limit event) as
//! HTTP/protobuf; without the variable it sends nothing.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::common::Recorder;
use bytes::Bytes;
use http::Method;
use serde_json::json;

type Received = Arc<Mutex<Vec<(String, String, Bytes)>>>;

/// A tiny OTLP/HTTP receiver: records every POST (path, content type, body) and answers 200.
async fn receiver() -> (String, Received) {
    let received: Received = Default::default();
    let r = received.clone();
    let app = axum::Router::new().fallback(move |request: axum::extract::Request| {
        let r = r.clone();
        async move {
            use http_body_util::BodyExt;
            let (parts, body) = request.into_parts();
            let body = body.collect().await.unwrap().to_bytes();
            let content_type = parts
                .headers
                .get("content-type")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_string();
            r.lock()
                .unwrap()
                .push((parts.uri.path().to_string(), content_type, body));
            axum::response::Response::builder()
                .status(200)
                .header("content-type", "application/x-protobuf")
                .body(axum::body::Body::empty())
                .unwrap()
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (format!("http://{addr}"), received)
}

fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack
        .windows(needle.len())
        .any(|w| w == needle.as_bytes())
}

/// Runs `headroom serve` with `env`, makes a throttled proxied call and a job, then stops it
/// with SIGINT (which flushes the exporters) and returns what the receiver got.
async fn serve_and_stop(
    env: &[(&str, String)],
    received: &Received,
) -> Vec<(String, String, Bytes)> {
    let up = Recorder::start().await;
    up.answer(429, &[("retry-after", "1")]);
    let dir = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let config = dir.path().join("headroom.toml");
    std::fs::write(
        &config,
        format!(
            "listen = \"127.0.0.1:{port}\"\nstore = \"sqlite://{}/h.db\"\nauth = \"none\"\n[[upstreams]]\nname = \"up\"\nbase_url = \"{}\"\nretry = {{ max_attempts = 1 }}\n",
            dir.path().display(),
            up.url()
        ),
    )
    .unwrap();
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_headroom"));
    command
        .args(["serve", "--config"])
        .arg(&config)
        .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
        .env("HEADROOM_LOG", "info")
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true);
    for (k, v) in env {
        command.env(k, v);
    }
    let mut child = command.spawn().unwrap();
    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        if tokio::net::TcpStream::connect(addr).await.is_ok() {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "headroom serve did not listen"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let r = crate::common::send(&client, addr, Method::GET, "/proxy/up/limited", &[]).await;
    assert_eq!(r.status, 429);
    let job = crate::common::post_raw(
        &client,
        addr,
        "/v1/jobs",
        serde_json::to_vec(
            &json!({"upstream": "up", "request": {"method": "GET", "path": "/job"}}),
        )
        .unwrap(),
    )
    .await;
    assert_eq!(job.status, 202);
    let id = job.json()["id"].as_str().unwrap().to_string();
    loop {
        let v = crate::common::send(&client, addr, Method::GET, &format!("/v1/jobs/{id}"), &[])
            .await
            .json();
        if v["status"] == "succeeded" {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the job did not finish: {v}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // SIGINT: a graceful stop, which flushes the exporters.
    let pid = child.id().unwrap().to_string();
    let killed = std::process::Command::new("kill")
        .args(["-INT", &pid])
        .status()
        .unwrap();
    assert!(killed.success());
    let status = tokio::time::timeout(Duration::from_secs(30), child.wait())
        .await
        .expect("headroom serve stops on SIGINT")
        .unwrap();
    assert!(status.success(), "{status}");
    let got = received.lock().unwrap().clone();
    got
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn traces_and_logs_reach_an_otlp_receiver() {
    let (url, received) = receiver().await;
    let got = serve_and_stop(&[("OTEL_EXPORTER_OTLP_ENDPOINT", url)], &received).await;
    let traces: Vec<_> = got.iter().filter(|r| r.0 == "/v1/traces").collect();
    let logs: Vec<_> = got.iter().filter(|r| r.0 == "/v1/logs").collect();
    assert!(
        !traces.is_empty(),
        "no traces: {:?}",
        got.iter().map(|r| &r.0).collect::<Vec<_>>()
    );
    assert!(!logs.is_empty(), "no logs");
    for r in &got {
        assert_eq!(r.1, "application/x-protobuf");
    }
    assert!(
        traces.iter().any(|r| contains(&r.2, "job_attempt")),
        "no job_attempt span"
    );
    assert!(
        traces.iter().any(|r| contains(&r.2, "headroom")),
        "no service name"
    );
    assert!(
        logs.iter()
            .any(|r| contains(&r.2, "throttled") && contains(&r.2, "/limited")),
        "the throttled event is not among the logs"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_is_exported_without_the_variables() {
    let (_url, received) = receiver().await;
    let got = serve_and_stop(&[], &received).await;
    assert!(got.is_empty());
}
