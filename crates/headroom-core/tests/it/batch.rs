//! Bulk formats against realistic provider bodies (`tests/data/batch/`).

use std::time::Duration;

use headroom_core::batch::{
    build, max_chunk, parse, validate, BatchError, ChunkOutcome, Format, GenericFormat, Record,
    RecordOutcome,
};
use serde_json::{json, Value};

fn fixture(name: &str) -> Vec<u8> {
    let path = format!("{}/tests/data/batch/{name}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn records(payloads: Vec<Value>) -> Vec<Record> {
    payloads
        .into_iter()
        .enumerate()
        .map(|(i, payload)| Record {
            index: 10 + i as u64,
            id: format!("r{}", i + 1),
            payload,
        })
        .collect()
}

fn contacts(n: usize) -> Vec<Record> {
    records(
        (1..=n)
            .map(|i| json!({"properties": {"email": format!("c{i}@example.com")}}))
            .collect(),
    )
}

fn body_json(body: &[u8]) -> Value {
    serde_json::from_slice(body).expect("the request body is JSON")
}

fn failed(o: &RecordOutcome) -> (&str, bool, Option<Duration>) {
    match o {
        RecordOutcome::Failed {
            error,
            retryable,
            retry_after,
        } => (error.as_str(), *retryable, *retry_after),
        RecordOutcome::Succeeded => panic!("expected a failure, got a success"),
    }
}

fn all_succeeded(out: &ChunkOutcome, n: usize) {
    assert_eq!(out.records, vec![RecordOutcome::Succeeded; n]);
    assert!(!out.whole_chunk_retryable);
}

const WAIT: Option<Duration> = Some(Duration::from_secs(10));

// ---------------------------------------------------------------- hubspot

#[test]
fn hubspot_request_carries_a_trace_id_per_input() {
    let recs = contacts(3);
    let req = build(
        &Format::Hubspot,
        "post",
        "/crm/v3/objects/contacts/batch/create",
        &recs,
    )
    .unwrap();
    assert_eq!(req.method, "POST");
    assert_eq!(req.path, "/crm/v3/objects/contacts/batch/create");
    assert!(req
        .headers
        .contains(&("content-type".into(), "application/json".into())));
    assert_eq!(
        body_json(&req.body),
        json!({"inputs": [
            {"properties": {"email": "c1@example.com"}, "objectWriteTraceId": "r1"},
            {"properties": {"email": "c2@example.com"}, "objectWriteTraceId": "r2"},
            {"properties": {"email": "c3@example.com"}, "objectWriteTraceId": "r3"},
        ]})
    );
}

#[test]
fn hubspot_repeated_ids_fall_back_to_indexes() {
    let mut recs = contacts(2);
    recs[1].id = "r1".into();
    let req = build(&Format::Hubspot, "POST", "/x/batch/upsert", &recs).unwrap();
    let traces: Vec<Value> = body_json(&req.body)["inputs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["objectWriteTraceId"].clone())
        .collect();
    assert_eq!(traces, vec![json!("10"), json!("11")]);
    let resp = json!({"status": "COMPLETE", "results": [{"id": "1", "objectWriteTraceId": "10"}],
        "errors": [{"status": "error", "category": "VALIDATION_ERROR", "message": "bad",
                    "context": {"objectWriteTraceId": ["11"]}}]});
    let out = parse(
        &Format::Hubspot,
        &recs,
        207,
        resp.to_string().as_bytes(),
        None,
    );
    assert_eq!(out.records[0], RecordOutcome::Succeeded);
    assert_eq!(failed(&out.records[1]).0, "VALIDATION_ERROR: bad");
}

#[test]
fn hubspot_all_succeeded() {
    let out = parse(
        &Format::Hubspot,
        &contacts(3),
        201,
        &fixture("hubspot_200.json"),
        None,
    );
    all_succeeded(&out, 3);
}

#[test]
fn hubspot_207_fails_only_the_named_records() {
    let out = parse(
        &Format::Hubspot,
        &contacts(4),
        207,
        &fixture("hubspot_207.json"),
        None,
    );
    assert!(!out.whole_chunk_retryable);
    assert_eq!(out.records[0], RecordOutcome::Succeeded);
    assert_eq!(out.records[2], RecordOutcome::Succeeded);
    let (error, retryable, _) = failed(&out.records[1]);
    assert!(
        error.starts_with("VALIDATION_ERROR: Property values were not valid"),
        "{error}"
    );
    assert!(!retryable);
    assert_eq!(
        failed(&out.records[3]),
        (
            "CONFLICT: Contact already exists. Existing ID: 1201",
            false,
            None
        )
    );
}

#[test]
fn hubspot_207_with_echoed_results_fails_a_record_named_nowhere() {
    // Five records, the answer speaks of four.
    let out = parse(
        &Format::Hubspot,
        &contacts(5),
        207,
        &fixture("hubspot_207.json"),
        None,
    );
    assert_eq!(
        failed(&out.records[4]),
        ("no result for this record", false, None)
    );
}

#[test]
fn hubspot_207_without_echoed_results_counts_the_rest_as_applied() {
    let out = parse(
        &Format::Hubspot,
        &contacts(3),
        207,
        &fixture("hubspot_207_untraced_results.json"),
        WAIT,
    );
    assert_eq!(out.records[0], RecordOutcome::Succeeded);
    assert_eq!(out.records[1], RecordOutcome::Succeeded);
    assert_eq!(
        failed(&out.records[2]),
        (
            "RATE_LIMITS: Too many concurrent writes to this record, try again",
            true,
            WAIT
        )
    );
}

#[test]
fn hubspot_throttled_call_retries_the_whole_chunk() {
    let out = parse(
        &Format::Hubspot,
        &contacts(3),
        429,
        &fixture("hubspot_429.json"),
        WAIT,
    );
    assert!(out.whole_chunk_retryable);
    for o in &out.records {
        let (error, retryable, wait) = failed(o);
        assert!(retryable);
        assert_eq!(wait, WAIT);
        assert!(
            error.contains("HTTP 429") && error.contains("ten_secondly_rolling"),
            "{error}"
        );
    }
    let out = parse(
        &Format::Hubspot,
        &contacts(2),
        502,
        b"<html>Bad gateway</html>",
        None,
    );
    assert!(out.whole_chunk_retryable);
    assert!(out.records.iter().all(RecordOutcome::is_retryable));
}

#[test]
fn hubspot_refused_call_fails_every_record_with_the_message() {
    let out = parse(
        &Format::Hubspot,
        &contacts(3),
        400,
        &fixture("hubspot_400.json"),
        None,
    );
    assert!(!out.whole_chunk_retryable);
    for o in &out.records {
        let (error, retryable, _) = failed(o);
        assert!(!retryable);
        assert!(
            error.starts_with("HTTP 400: VALIDATION_ERROR: Invalid input JSON"),
            "{error}"
        );
    }
}

#[test]
fn hubspot_refused_call_naming_records_lets_the_others_go_again() {
    let resp = json!({"status": "error", "category": "VALIDATION_ERROR",
        "message": "Property values were not valid",
        "errors": [{"message": "Email address bad is invalid", "code": "INVALID_EMAIL",
                    "context": {"objectWriteTraceId": ["r2"]}}]});
    let out = parse(
        &Format::Hubspot,
        &contacts(3),
        400,
        resp.to_string().as_bytes(),
        None,
    );
    assert!(!out.whole_chunk_retryable);
    let (error, retryable, _) = failed(&out.records[1]);
    assert_eq!(error, "INVALID_EMAIL: Email address bad is invalid");
    assert!(!retryable);
    for p in [0, 2] {
        let (error, retryable, _) = failed(&out.records[p]);
        assert!(retryable);
        assert!(error.starts_with("not applied"), "{error}");
    }
}

#[test]
fn hubspot_garbage_fails_every_record_and_says_why() {
    for (status, body) in [
        (
            200,
            &b"<html><body>Service Temporarily Unavailable</body></html>"[..],
        ),
        (207, b""),
        (200, b"{\"status\": \"COMPLETE\"}"),
        (200, b"[1, 2, 3]"),
    ] {
        let out = parse(&Format::Hubspot, &contacts(2), status, body, None);
        assert!(!out.whole_chunk_retryable);
        assert_eq!(out.records.len(), 2);
        for o in &out.records {
            let (error, retryable, _) = failed(o);
            assert!(!retryable);
            assert!(
                error.contains("unreadable hubspot batch response"),
                "{status} {error}"
            );
        }
    }
}

#[test]
fn hubspot_records_must_be_objects() {
    let recs = records(vec![json!({"properties": {}}), json!("nope")]);
    let e = build(&Format::Hubspot, "POST", "/b", &recs).unwrap_err();
    assert!(
        matches!(&e, BatchError::Record { index: 11, reason } if reason.contains("JSON object")),
        "{e}"
    );
    let payloads = [json!({}), json!([1])];
    let e = validate(&Format::Hubspot, "POST", "/b", &payloads).unwrap_err();
    assert!(e.to_string().starts_with("records[1]: "), "{e}");
    assert!(build(&Format::Hubspot, "POST", "/b", &contacts(101)).is_err());
}

// ---------------------------------------------------------------- salesforce

fn accounts(n: usize) -> Vec<Record> {
    records(
        (1..=n)
            .map(|i| json!({"attributes": {"type": "Account"}, "Name": format!("Acme {i}")}))
            .collect(),
    )
}

#[test]
fn salesforce_request_wraps_records_with_all_or_none_false() {
    let recs = accounts(2);
    let req = build(
        &Format::Salesforce,
        "POST",
        "/services/data/v62.0/composite/sobjects",
        &recs,
    )
    .unwrap();
    assert_eq!(req.path, "/services/data/v62.0/composite/sobjects");
    assert_eq!(
        body_json(&req.body),
        json!({"allOrNone": false, "records": [
            {"attributes": {"type": "Account"}, "Name": "Acme 1"},
            {"attributes": {"type": "Account"}, "Name": "Acme 2"},
        ]})
    );
}

#[test]
fn salesforce_results_in_request_order_with_retryable_lock_errors() {
    let out = parse(
        &Format::Salesforce,
        &accounts(4),
        200,
        &fixture("salesforce_mixed.json"),
        None,
    );
    assert!(!out.whole_chunk_retryable);
    assert_eq!(out.records[0], RecordOutcome::Succeeded);
    assert_eq!(out.records[3], RecordOutcome::Succeeded);
    assert_eq!(
        failed(&out.records[1]),
        (
            "REQUIRED_FIELD_MISSING: Required fields are missing: [Name] (fields: Name)",
            false,
            None
        )
    );
    let (error, retryable, _) = failed(&out.records[2]);
    assert!(error.starts_with("UNABLE_TO_LOCK_ROW: unable to obtain exclusive access"));
    assert!(retryable);
}

#[test]
fn salesforce_all_succeeded() {
    let resp = json!([{"id": "001A", "success": true, "errors": []},
                      {"id": "001B", "success": true, "errors": []}]);
    let out = parse(
        &Format::Salesforce,
        &accounts(2),
        200,
        resp.to_string().as_bytes(),
        None,
    );
    all_succeeded(&out, 2);
}

#[test]
fn salesforce_limit_exceeded_403_retries_the_whole_chunk() {
    let out = parse(
        &Format::Salesforce,
        &accounts(3),
        403,
        &fixture("salesforce_403_limit.json"),
        WAIT,
    );
    assert!(out.whole_chunk_retryable);
    let (error, retryable, wait) = failed(&out.records[0]);
    assert_eq!(
        error,
        "HTTP 403, nothing applied: REQUEST_LIMIT_EXCEEDED: TotalRequests Limit exceeded."
    );
    assert!(retryable);
    assert_eq!(wait, WAIT);
    for status in [429, 503] {
        let out = parse(&Format::Salesforce, &accounts(3), status, b"", None);
        assert!(out.whole_chunk_retryable);
    }
}

#[test]
fn salesforce_refused_calls_fail_every_record() {
    for (status, file, code) in [
        (400, "salesforce_400.json", "INVALID_FIELD"),
        (401, "salesforce_401.json", "INVALID_SESSION_ID"),
    ] {
        let out = parse(
            &Format::Salesforce,
            &accounts(2),
            status,
            &fixture(file),
            None,
        );
        assert!(!out.whole_chunk_retryable);
        for o in &out.records {
            let (error, retryable, _) = failed(o);
            assert!(!retryable);
            assert!(
                error.starts_with(&format!("HTTP {status}: {code}: ")),
                "{error}"
            );
        }
    }
}

#[test]
fn salesforce_result_count_must_match() {
    let out = parse(
        &Format::Salesforce,
        &accounts(5),
        200,
        &fixture("salesforce_mixed.json"),
        None,
    );
    assert!(!out.whole_chunk_retryable);
    assert_eq!(out.records.len(), 5);
    for o in &out.records {
        let (error, retryable, _) = failed(o);
        assert!(!retryable);
        assert!(error.contains("4 results for 5 records"), "{error}");
    }
    let out = parse(
        &Format::Salesforce,
        &accounts(2),
        200,
        b"{\"oops\": 1}",
        None,
    );
    assert!(failed(&out.records[0]).0.contains("expected an array"));
}

#[test]
fn salesforce_takes_post_or_patch_and_objects() {
    assert!(build(
        &Format::Salesforce,
        "PATCH",
        "/composite/sobjects/Account/Ext__c",
        &accounts(1)
    )
    .is_ok());
    let e = build(
        &Format::Salesforce,
        "PUT",
        "/composite/sobjects",
        &accounts(1),
    )
    .unwrap_err();
    assert!(
        matches!(
            e,
            BatchError::Request {
                field: "method",
                ..
            }
        ),
        "{e}"
    );
    let e = validate(&Format::Salesforce, "POST", "/c", &[json!(3)]).unwrap_err();
    assert!(e.to_string().starts_with("records[0]: "), "{e}");
    assert!(build(&Format::Salesforce, "POST", "/c", &accounts(201)).is_err());
    assert_eq!(max_chunk(&Format::Salesforce, 1000), 200);
}

// ---------------------------------------------------------------- graph

fn users(n: usize) -> Vec<Record> {
    records(
        (1..=n)
            .map(|i| {
                json!({"accountEnabled": true, "displayName": format!("User {i}"),
                            "mailNickname": format!("user{i}")})
            })
            .collect(),
    )
}

#[test]
fn graph_payloads_become_inner_requests_to_the_batch_path() {
    let req = build(&Format::Graph, "POST", "/v1.0/users", &users(2)).unwrap();
    assert_eq!(req.method, "POST");
    assert_eq!(req.path, "/v1.0/$batch");
    assert_eq!(
        body_json(&req.body),
        json!({"requests": [
            {"id": "1", "method": "POST", "url": "/users",
             "headers": {"Content-Type": "application/json"},
             "body": {"accountEnabled": true, "displayName": "User 1", "mailNickname": "user1"}},
            {"id": "2", "method": "POST", "url": "/users",
             "headers": {"Content-Type": "application/json"},
             "body": {"accountEnabled": true, "displayName": "User 2", "mailNickname": "user2"}},
        ]})
    );
    // A base URL that already holds the version: the batch goes to /$batch.
    let req = build(&Format::Graph, "POST", "/users?$select=id", &users(1)).unwrap();
    assert_eq!(req.path, "/$batch");
    assert_eq!(
        body_json(&req.body)["requests"][0]["url"],
        "/users?$select=id"
    );
}

#[test]
fn graph_payloads_that_are_requests_go_as_they_are() {
    let recs = records(vec![
        json!({"method": "patch", "url": "/v1.0/users/6e0d1e83", "body": {"jobTitle": "Analyst"},
               "headers": {"If-Match": "*"}}),
        json!({"method": "DELETE", "url": "/groups/02bd9fd6/members/6e0d1e83/$ref"}),
        json!({"url": "/me/messages?$top=1"}),
    ]);
    let req = build(&Format::Graph, "GET", "/v1.0/$batch", &recs).unwrap();
    assert_eq!(req.method, "POST");
    assert_eq!(req.path, "/v1.0/$batch");
    assert_eq!(
        body_json(&req.body),
        json!({"requests": [
            {"id": "1", "method": "PATCH", "url": "/users/6e0d1e83",
             "headers": {"If-Match": "*", "Content-Type": "application/json"},
             "body": {"jobTitle": "Analyst"}},
            {"id": "2", "method": "DELETE", "url": "/groups/02bd9fd6/members/6e0d1e83/$ref"},
            {"id": "3", "method": "GET", "url": "/me/messages?$top=1"},
        ]})
    );
    // The batch endpoint itself needs every record to say where it goes.
    let e = build(&Format::Graph, "POST", "/v1.0/$batch", &users(1)).unwrap_err();
    assert!(e.to_string().contains("inner request"), "{e}");
    let e = validate(
        &Format::Graph,
        "POST",
        "/v1.0/users",
        &[json!({"url": "https://evil.example/x"})],
    )
    .unwrap_err();
    assert!(e.to_string().starts_with("records[0]: url:"), "{e}");
}

#[test]
fn graph_caps_chunks_at_twenty() {
    assert_eq!(max_chunk(&Format::Graph, 100), 20);
    assert!(build(&Format::Graph, "POST", "/v1.0/users", &users(20)).is_ok());
    assert_eq!(
        build(&Format::Graph, "POST", "/v1.0/users", &users(21)),
        Err(BatchError::TooMany {
            format: "graph",
            max: 20,
            got: 21
        })
    );
}

#[test]
fn graph_matches_out_of_order_responses_by_id() {
    let out = parse(
        &Format::Graph,
        &users(6),
        200,
        &fixture("graph_mixed.json"),
        Some(Duration::from_secs(1)),
    );
    assert!(!out.whole_chunk_retryable);
    assert_eq!(out.records[0], RecordOutcome::Succeeded);
    assert_eq!(out.records[1], RecordOutcome::Succeeded);
    assert_eq!(
        failed(&out.records[2]),
        (
            "HTTP 429: TooManyRequests: Too many requests, retry after some time.",
            true,
            Some(Duration::from_secs(7))
        )
    );
    assert_eq!(
        failed(&out.records[3]),
        (
            "HTTP 400: Request_BadRequest: Another object with the same value for property \
             userPrincipalName already exists.",
            false,
            None
        )
    );
    assert_eq!(
        failed(&out.records[4]),
        (
            "HTTP 503: serviceNotAvailable: Service unavailable",
            true,
            Some(Duration::from_millis(2500))
        )
    );
    assert_eq!(
        failed(&out.records[5]),
        ("no result for this record", false, None)
    );
}

#[test]
fn graph_inner_throttle_without_retry_after_takes_the_calls() {
    let resp =
        json!({"responses": [{"id": "1", "status": 504, "body": {}}, {"id": 2, "status": 200}]});
    let out = parse(
        &Format::Graph,
        &users(2),
        200,
        resp.to_string().as_bytes(),
        WAIT,
    );
    assert_eq!(failed(&out.records[0]), ("HTTP 504", true, WAIT));
    assert_eq!(out.records[1], RecordOutcome::Succeeded);
}

#[test]
fn graph_whole_call_failures() {
    let out = parse(
        &Format::Graph,
        &users(3),
        429,
        b"{\"error\":{\"code\":\"TooManyRequests\",\"message\":\"slow down\"}}",
        WAIT,
    );
    assert!(out.whole_chunk_retryable);
    assert_eq!(
        failed(&out.records[1]),
        (
            "HTTP 429, nothing applied: TooManyRequests: slow down",
            true,
            WAIT
        )
    );
    let out = parse(
        &Format::Graph,
        &users(2),
        400,
        b"{\"error\":{\"code\":\"BadRequest\",\"message\":\"Invalid batch payload format.\"}}",
        None,
    );
    assert!(!out.whole_chunk_retryable);
    assert_eq!(
        failed(&out.records[0]),
        (
            "HTTP 400: BadRequest: Invalid batch payload format.",
            false,
            None
        )
    );
    let out = parse(&Format::Graph, &users(2), 200, b"{\"value\": []}", None);
    assert!(failed(&out.records[1]).0.contains("no \"responses\" array"));
}

// ---------------------------------------------------------------- generic

fn generic(value: Value) -> Format {
    serde_json::from_value(json!({ "generic": value })).unwrap()
}

#[test]
fn generic_places_records_at_the_pointer() {
    let format = generic(json!({"records_pointer": "/data/items", "results_pointer": "/results"}));
    let recs = records(vec![json!({"sku": "A-1"}), json!({"sku": "B-2"})]);
    let req = build(&format, "PUT", "/v2/products/bulk", &recs).unwrap();
    assert_eq!(
        (req.method.as_str(), req.path.as_str()),
        ("PUT", "/v2/products/bulk")
    );
    assert_eq!(
        body_json(&req.body),
        json!({"data": {"items": [{"sku": "A-1"}, {"sku": "B-2"}]}})
    );
    let bare = generic(json!({"records_pointer": "", "results_pointer": ""}));
    assert_eq!(
        body_json(&build(&bare, "POST", "/bulk", &recs).unwrap().body),
        json!([{"sku": "A-1"}, {"sku": "B-2"}])
    );
    let escaped = generic(json!({"records_pointer": "/a~1b/c~0d", "results_pointer": ""}));
    assert_eq!(
        body_json(&build(&escaped, "POST", "/bulk", &recs[..1]).unwrap().body),
        json!({"a/b": {"c~d": [{"sku": "A-1"}]}})
    );
}

#[test]
fn generic_by_id_matches_results_in_any_order() {
    let format = generic(json!({
        "records_pointer": "/items", "results_pointer": "/data/results",
        "id_pointer": "/ref", "status_pointer": "/code", "error_pointer": "/error/message"
    }));
    let recs = records(vec![json!({}), json!({}), json!({}), json!({}), json!({})]);
    let resp = json!({"data": {"results": [
        {"ref": "r3", "code": 429, "error": {"message": "slow down"}},
        {"ref": "r1", "code": 201},
        {"ref": "r2", "code": 422, "error": {"message": "sku is required"}},
        {"ref": "r4", "code": "200"},
        {"ref": "nobody", "code": 500},
    ]}});
    let out = parse(&format, &recs, 200, resp.to_string().as_bytes(), WAIT);
    assert!(!out.whole_chunk_retryable);
    assert_eq!(out.records[0], RecordOutcome::Succeeded);
    assert_eq!(
        failed(&out.records[1]),
        ("status 422: sku is required", false, None)
    );
    assert_eq!(
        failed(&out.records[2]),
        ("status 429: slow down", true, WAIT)
    );
    assert_eq!(out.records[3], RecordOutcome::Succeeded);
    assert_eq!(
        failed(&out.records[4]),
        ("no result for this record", false, None)
    );
}

#[test]
fn generic_by_order_with_boolean_status() {
    let format = generic(json!({
        "records_pointer": "/records", "results_pointer": "/results",
        "status_pointer": "/ok", "error_pointer": "/error"
    }));
    let recs = records(vec![json!(1), json!(2), json!(3), json!(4)]);
    let resp = json!({"results": [
        {"ok": true}, {"ok": false, "error": "duplicate"}, {"ok": false}
    ]});
    let out = parse(&format, &recs, 200, resp.to_string().as_bytes(), None);
    assert_eq!(out.records[0], RecordOutcome::Succeeded);
    assert_eq!(failed(&out.records[1]), ("duplicate", false, None));
    assert_eq!(failed(&out.records[2]), ("failed", false, None));
    // A short array: the missing ones have no result.
    assert_eq!(
        failed(&out.records[3]),
        ("no result for this record", false, None)
    );
    // A long one does not match the request at all.
    let resp =
        json!({"results": [{"ok": true}, {"ok": true}, {"ok": true}, {"ok": true}, {"ok": true}]});
    let out = parse(&format, &recs, 200, resp.to_string().as_bytes(), None);
    assert!(out
        .records
        .iter()
        .all(|o| failed(o).0.contains("5 results for 4 records")));
}

#[test]
fn generic_without_status_reads_errors_only() {
    let format = generic(json!({"records_pointer": "", "results_pointer": "",
                                "error_pointer": "/errors"}));
    let recs = records(vec![json!(1), json!(2)]);
    let resp = json!([{"id": 1, "errors": []}, {"errors": [{"field": "name", "msg": "blank"}]}]);
    let out = parse(&format, &recs, 207, resp.to_string().as_bytes(), None);
    assert_eq!(out.records[0], RecordOutcome::Succeeded);
    assert_eq!(
        failed(&out.records[1]).0,
        "[{\"field\":\"name\",\"msg\":\"blank\"}]"
    );
}

#[test]
fn generic_whole_call_and_garbage() {
    let format = generic(
        json!({"records_pointer": "/items", "results_pointer": "/results",
                                "error_pointer": "/message"}),
    );
    let recs = records(vec![json!(1), json!(2)]);
    let out = parse(&format, &recs, 503, b"{\"message\": \"maintenance\"}", WAIT);
    assert!(out.whole_chunk_retryable);
    assert_eq!(
        failed(&out.records[0]),
        ("HTTP 503, nothing applied: maintenance", true, WAIT)
    );
    let out = parse(
        &format,
        &recs,
        413,
        b"{\"message\": \"payload too large\"}",
        None,
    );
    assert!(!out.whole_chunk_retryable);
    assert_eq!(
        failed(&out.records[1]),
        ("HTTP 413: payload too large", false, None)
    );
    let out = parse(&format, &recs, 200, b"{\"items\": []}", None);
    assert!(failed(&out.records[0])
        .0
        .contains("no results array at \"/results\""));
    let out = parse(&format, &recs, 200, b"\x00\xff", None);
    assert!(failed(&out.records[0]).0.contains("not JSON"));
}

#[test]
fn generic_format_parses_from_the_api_shape() {
    let batch: Value = json!({"upstream": "crm", "format": {"generic": {
        "records_pointer": "/items", "results_pointer": "/results", "id_pointer": "/id"}}});
    let format: Format = serde_json::from_value(batch["format"].clone()).unwrap();
    assert_eq!(
        format,
        Format::Generic(GenericFormat {
            id_pointer: Some("/id".into()),
            ..GenericFormat::new("/items", "/results")
        })
    );
    let e = build(
        &Format::Generic(GenericFormat::new("items", "/r")),
        "POST",
        "/b",
        &records(vec![json!(1)]),
    )
    .unwrap_err();
    assert!(
        e.to_string()
            .starts_with("request.format: generic.records_pointer"),
        "{e}"
    );
}
