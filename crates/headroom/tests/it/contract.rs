//! The API's OpenAPI document: the committed `openapi.json` is what a server serves and what
//! `headroom openapi` prints, and every documented operation reaches a handler (the router's
//! fallback never answers a documented path). The contract itself (answers against the
//! document) is checked by schemathesis in CI: `.ci/contract.sh`.

use http::{Method, StatusCode};

use crate::common::{send, Recorder, Server};

const COMMITTED: &str = include_str!("../../../../openapi.json");

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_committed_document_is_the_served_one() {
    let up = Recorder::start().await;
    let server = Server::start(
        "[[upstreams]]\nname = \"up\"\nbase_url = \"{base}\"\n",
        &up.url(),
    )
    .await;
    let r = server.get("/openapi.json").await;
    assert_eq!(r.status, StatusCode::OK);
    let served = String::from_utf8(r.body.to_vec()).unwrap();
    assert_eq!(
        served.trim_end(),
        headroom::http::openapi::json().trim_end()
    );
    assert!(
        served.trim_end() == COMMITTED.trim_end(),
        "openapi.json is out of date with the code: run \
         `cargo run -p headroom -- openapi > openapi.json` and commit it"
    );
    let doc: serde_json::Value = serde_json::from_str(&served).unwrap();
    assert_eq!(doc["openapi"], "3.1.0");
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_documented_operation_is_routed() {
    let up = Recorder::start().await;
    let server = Server::start(
        "[[upstreams]]\nname = \"up\"\nbase_url = \"{base}\"\n",
        &up.url(),
    )
    .await;
    let doc: serde_json::Value = serde_json::from_str(COMMITTED).unwrap();
    let mut checked = 0;
    for (template, item) in doc["paths"].as_object().unwrap() {
        // Parameters filled with a value every route takes (the proxy's upstream exists).
        let path = template
            .replace("{upstream}", "up")
            .replace("{path}", "x")
            .replace(['{', '}'], "");
        for method in item.as_object().unwrap().keys() {
            let method = Method::from_bytes(method.to_ascii_uppercase().as_bytes()).unwrap();
            let r = send(&server.client, server.addr, method.clone(), &path, &[]).await;
            let body = String::from_utf8_lossy(&r.body);
            assert!(
                !(r.status == StatusCode::NOT_FOUND && body.contains("no route for"))
                    && r.status != StatusCode::METHOD_NOT_ALLOWED,
                "{method} {template} is documented but not routed: {} {body}",
                r.status
            );
            checked += 1;
        }
    }
    assert!(checked >= 30, "only {checked} operations documented");
    server.shutdown().await;
}
