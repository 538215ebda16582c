//! Holes a security review of the issue-11 fixes found in them (each test failed on the
//! reviewed code): bodies that never arrive, one tenant holding the batch intake, work
//! acknowledged into a deleted database, readiness telling strangers internals.

use std::time::Duration;

use crate::common::{call, mock, Rig};
use headroom_mock::Profile;
use http::{Method, StatusCode};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const ADMIN: &str = "admin-token-for-review";

/// Tenant A opens four `POST /v1/batches` with a 63 MiB Content-Length and never sends the
/// body: the intake room (256 MiB in all) is taken before the body is read and the body read
/// has no time limit, so A holds it forever. Tenant B's one-record batch then waits 30 s and
/// is refused with 503 — one tenant starves every other tenant's batch intake.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_tenant_cannot_hold_the_batch_intake_with_bodies_it_never_sends() {
    let rig = Rig::start_with_token(mock(Profile::Ietf, 1000, 1), "", Some(ADMIN)).await;
    let (a, b) = (
        crate::common::mint(&rig, ADMIN, "tenant-a").await,
        crate::common::mint(&rig, ADMIN, "tenant-b").await,
    );
    let mut held = Vec::new();
    for _ in 0..4 {
        let mut s = tokio::net::TcpStream::connect(rig.addr).await.unwrap();
        let head = format!(
            "POST /v1/batches HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: {a}\r\n\
             Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{{",
            63u64 << 20
        );
        s.write_all(head.as_bytes()).await.unwrap();
        held.push(s);
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let batch = json!({
        "upstream": "up",
        "format": "hubspot",
        "request": {"method": "POST", "path": "/crm/v3/objects/contacts/batch/upsert"},
        "records": [{"id": "r1", "properties": {"email": "b@example.com"}}],
    });
    let started = tokio::time::Instant::now();
    let r = call(
        &rig.client,
        rig.addr,
        Method::POST,
        "/v1/batches",
        &[("authorization", &b)],
        Some(&batch),
    )
    .await;
    let took = started.elapsed();
    assert_eq!(
        r.status,
        StatusCode::ACCEPTED,
        "tenant B's batch was refused after {took:?} while tenant A holds the intake with \
         bodies it never sends: {}",
        String::from_utf8_lossy(&r.body)
    );
    drop(held);
    rig.shutdown().await;
}

/// Without a token, a `/v1` write is refused from its head: the body (announced, never sent)
/// is not waited for, whatever the body read timeout (30 s by default).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_caller_without_a_token_is_refused_before_its_body_is_read() {
    let rig = Rig::start_with_token(mock(Profile::Ietf, 1000, 1), "", Some(ADMIN)).await;
    for path in ["/v1/jobs", "/v1/batches", "/v1/schedules", "/v1/tokens"] {
        let mut s = tokio::net::TcpStream::connect(rig.addr).await.unwrap();
        let head = format!(
            "POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n\
             Content-Length: 100000\r\n\r\n{{"
        );
        s.write_all(head.as_bytes()).await.unwrap();
        let mut answer = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(5), async {
            let mut buf = [0u8; 1024];
            while !answer.windows(4).any(|w| w == b"\r\n\r\n") {
                let n = s.read(&mut buf).await.unwrap();
                if n == 0 {
                    break;
                }
                answer.extend_from_slice(&buf[..n]);
            }
        })
        .await;
        let text = String::from_utf8_lossy(&answer);
        assert!(
            read.is_ok() && text.starts_with("HTTP/1.1 401"),
            "POST {path} without a token waited for its body instead of answering 401: {text:?}"
        );
    }
    rig.shutdown().await;
}

/// `/readyz` answers anyone (no token) and names internals: the governor's Redis address
/// (and, for the store, the database's path and raw driver errors).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_tells_an_unauthenticated_caller_nothing_internal() {
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = dead.local_addr().unwrap().port();
    drop(dead);
    let top = format!("governor = \"redis://:hunter2@127.0.0.1:{port}\"\n");
    let rig = Rig::start_full(mock(Profile::Ietf, 1000, 1), &top, "", Some(ADMIN)).await;
    let r = rig.get("/readyz", &[]).await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
    let text = String::from_utf8_lossy(&r.body).to_string();
    assert!(!text.contains("hunter2"), "{text}");
    assert!(
        !text.contains(&format!("127.0.0.1:{port}")),
        "an unauthenticated /readyz shows where Redis is: {text}"
    );
    rig.shutdown().await;
}

/// The database file is deleted under a running server: `/readyz` says so, but a job is
/// still acknowledged `202` — written to an unlinked file, it is gone after a restart,
/// although a 202 promises it survives.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_job_is_acknowledged_into_a_deleted_database() {
    let up = crate::common::Recorder::start().await;
    let server = crate::common::Server::start(
        "[[upstreams]]\nname = \"up\"\nbase_url = \"{base}\"\n",
        &up.url(),
    )
    .await;
    std::fs::remove_file(server.dir.path().join("headroom.db")).unwrap();
    assert_eq!(
        server.get("/readyz").await.status,
        StatusCode::SERVICE_UNAVAILABLE
    );
    let r = server
        .post(
            "/v1/jobs",
            &json!({"upstream": "up", "request": {"method": "POST", "path": "/x"}}),
        )
        .await;
    assert_eq!(
        r.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "a job was acknowledged into a deleted database: {}",
        String::from_utf8_lossy(&r.body)
    );
    server.shutdown().await;
}

/// `POST /v1/jobs` (and the schedules API) take the body with axum's `Bytes` extractor,
/// which reads it *before* the handler authenticates, and nothing times a body read (the
/// header-read timeout ends with the head, the idle timeout applies between requests). So
/// a client with no token that sends a head and then no body holds its connection for
/// ever: `max_connections` such clients take every slot and `/healthz` goes unanswered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_never_sent_without_a_token_does_not_hold_a_connection() {
    let top = "[server]\nheader_read_timeout = \"1s\"\nidle_timeout = \"2s\"\nbody_read_timeout = \"2s\"\nmax_connections = 2\n";
    let rig = Rig::start_full(mock(Profile::Ietf, 1000, 1), top, "", Some(ADMIN)).await;
    let mut held = Vec::new();
    for _ in 0..2 {
        let mut s = tokio::net::TcpStream::connect(rig.addr).await.unwrap();
        s.write_all(
            b"POST /v1/jobs HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n\
              Content-Length: 100000\r\n\r\n{",
        )
        .await
        .unwrap();
        held.push(s);
    }
    // Well past both timeouts.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let health = tokio::time::timeout(Duration::from_secs(5), rig.get("/healthz", &[])).await;
    assert!(
        matches!(&health, Ok(r) if r.status == StatusCode::OK),
        "/healthz is not answered while two unauthenticated bodies are never sent"
    );
    drop(held);
    rig.shutdown().await;
}
