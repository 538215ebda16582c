//! Whatever an upstream answers, every record of a chunk gets exactly one outcome, and what
//! `build` sends is read back correctly when the upstream answers in the format's own terms.

use std::time::Duration;

use headroom_core::batch::{build, parse, Format, GenericFormat, Record, RecordOutcome};
use proptest::prelude::*;
use serde_json::{json, Value};

fn formats() -> impl Strategy<Value = Format> {
    prop_oneof![
        Just(Format::Hubspot),
        Just(Format::Salesforce),
        Just(Format::Graph),
        Just(Format::Generic(GenericFormat::new("/items", "/results"))),
        Just(Format::Generic(GenericFormat {
            id_pointer: Some("/id".into()),
            status_pointer: Some("/status".into()),
            error_pointer: Some("/error".into()),
            ..GenericFormat::new("", "")
        })),
    ]
}

fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        (100u16..600).prop_map(|n| json!(n)),
        any::<f64>().prop_map(|f| json!(f)),
        "[a-z0-9 ]{0,8}".prop_map(Value::String),
        prop_oneof![
            Just("r1"),
            Just("r2"),
            Just("1"),
            Just("2"),
            Just("error"),
            Just("RATE_LIMITS"),
            Just("UNABLE_TO_LOCK_ROW"),
            Just("Retry-After"),
        ]
        .prop_map(|s| json!(s)),
    ];
    let keys = prop_oneof![
        Just("results"),
        Just("errors"),
        Just("responses"),
        Just("items"),
        Just("id"),
        Just("status"),
        Just("success"),
        Just("body"),
        Just("headers"),
        Just("error"),
        Just("context"),
        Just("objectWriteTraceId"),
        Just("statusCode"),
        Just("errorCode"),
        Just("message"),
        Just("category"),
        Just("Retry-After"),
    ];
    leaf.prop_recursive(4, 48, 6, move |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::vec((keys.clone(), inner), 0..6).prop_map(|kv| {
                Value::Object(kv.into_iter().map(|(k, v)| (k.to_string(), v)).collect())
            }),
        ]
    })
}

fn bodies() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        prop::collection::vec(any::<u8>(), 0..64),
        json_value().prop_map(|v| v.to_string().into_bytes()),
        // Almost right: a valid answer cut short.
        (json_value(), 0usize..40).prop_map(|(v, cut)| {
            let mut b = v.to_string().into_bytes();
            b.truncate(b.len().saturating_sub(cut));
            b
        }),
    ]
}

fn chunk() -> impl Strategy<Value = Vec<Record>> {
    prop::collection::vec(
        (
            0u64..5,
            prop_oneof![Just("r1"), Just("r2"), Just("1"), Just("x")],
        ),
        0..25,
    )
    .prop_map(|v| {
        v.into_iter()
            .enumerate()
            .map(|(i, (dup, id))| Record {
                index: i as u64 % (dup + 20),
                id: if dup == 0 {
                    id.to_string()
                } else {
                    format!("r{i}")
                },
                payload: json!({"properties": {"n": i}}),
            })
            .collect()
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn one_outcome_per_record_whatever_the_answer(
        format in formats(),
        records in chunk(),
        status in prop_oneof![Just(200u16), Just(201), Just(207), Just(400), Just(403), Just(429), Just(503), 0u16..1000],
        body in bodies(),
        wait in prop::option::of(0u64..100_000),
    ) {
        let wait = wait.map(Duration::from_millis);
        let out = parse(&format, &records, status, &body, wait);
        prop_assert_eq!(out.records.len(), records.len());
        if out.whole_chunk_retryable {
            prop_assert!(out.records.iter().all(RecordOutcome::is_retryable));
        }
        for o in &out.records {
            if let RecordOutcome::Failed { error, .. } = o {
                prop_assert!(!error.is_empty());
                prop_assert!(error.len() <= 1010);
            }
        }
    }
}

/// What a record should come back as, and how the upstream says it.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Fate {
    Applied,
    Invalid,
    Throttled,
}

fn fates(max: usize) -> impl Strategy<Value = Vec<Fate>> {
    prop::collection::vec(
        prop_oneof![
            4 => Just(Fate::Applied),
            1 => Just(Fate::Invalid),
            1 => Just(Fate::Throttled),
        ],
        1..=max,
    )
}

fn contacts(fates: &[Fate], ids: &[String]) -> Vec<Record> {
    fates
        .iter()
        .enumerate()
        .map(|(i, _)| Record {
            index: 100 + i as u64,
            id: ids[i].clone(),
            payload: json!({"properties": {"email": format!("c{i}@example.com")}}),
        })
        .collect()
}

fn check(fates: &[Fate], out: &[RecordOutcome]) -> Result<(), TestCaseError> {
    prop_assert_eq!(out.len(), fates.len());
    for (fate, o) in fates.iter().zip(out) {
        match fate {
            Fate::Applied => prop_assert_eq!(o, &RecordOutcome::Succeeded),
            Fate::Invalid => prop_assert!(
                matches!(
                    o,
                    RecordOutcome::Failed {
                        retryable: false,
                        ..
                    }
                ),
                "{:?}",
                o
            ),
            Fate::Throttled => prop_assert!(o.is_retryable(), "{:?}", o),
        }
    }
    Ok(())
}

fn ids(n: usize, repeat: bool) -> Vec<String> {
    (0..n)
        .map(|i| {
            if repeat {
                format!("r{}", i % 3)
            } else {
                format!("r{i}")
            }
        })
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]

    #[test]
    fn hubspot_round_trip(fates in fates(100), repeat in any::<bool>(), echo in any::<bool>()) {
        let records = contacts(&fates, &ids(fates.len(), repeat));
        let req = build(&Format::Hubspot, "POST", "/crm/v3/objects/contacts/batch/create", &records).unwrap();
        let sent: Value = serde_json::from_slice(&req.body).unwrap();
        let mut results = Vec::new();
        let mut errors = Vec::new();
        for (input, fate) in sent["inputs"].as_array().unwrap().iter().zip(&fates) {
            let trace = input["objectWriteTraceId"].clone();
            match fate {
                Fate::Applied if echo => results.push(json!({"id": "9", "objectWriteTraceId": trace})),
                Fate::Applied => results.push(json!({"id": "9"})),
                Fate::Invalid => errors.push(json!({"status": "error", "category": "VALIDATION_ERROR",
                    "message": "invalid", "context": {"objectWriteTraceId": [trace]}})),
                Fate::Throttled => errors.push(json!({"status": "error", "category": "RATE_LIMITS",
                    "message": "later", "context": {"objectWriteTraceId": [trace]}})),
            }
        }
        let status = if errors.is_empty() { 200 } else { 207 };
        let resp = json!({"status": "COMPLETE", "results": results, "numErrors": errors.len(), "errors": errors});
        let out = parse(&Format::Hubspot, &records, status, resp.to_string().as_bytes(), None);
        check(&fates, &out.records)?;
    }

    #[test]
    fn graph_round_trip(fates in fates(20), order in any::<prop::sample::Index>()) {
        let records = contacts(&fates, &ids(fates.len(), false));
        let req = build(&Format::Graph, "POST", "/v1.0/users", &records).unwrap();
        let sent: Value = serde_json::from_slice(&req.body).unwrap();
        let mut responses: Vec<Value> = sent["requests"].as_array().unwrap().iter().zip(&fates)
            .map(|(r, fate)| match fate {
                Fate::Applied => json!({"id": r["id"], "status": 201, "body": {}}),
                Fate::Invalid => json!({"id": r["id"], "status": 400,
                    "body": {"error": {"code": "Request_BadRequest", "message": "no"}}}),
                Fate::Throttled => json!({"id": r["id"], "status": 429, "headers": {"Retry-After": "3"}}),
            })
            .collect();
        let k = order.index(responses.len());
        responses.rotate_left(k);
        responses.reverse();
        let resp = json!({"responses": responses});
        let out = parse(&Format::Graph, &records, 200, resp.to_string().as_bytes(), None);
        check(&fates, &out.records)?;
        for (fate, o) in fates.iter().zip(&out.records) {
            if *fate == Fate::Throttled {
                let wait = match o {
                    RecordOutcome::Failed { retry_after, .. } => *retry_after,
                    RecordOutcome::Succeeded => None,
                };
                prop_assert_eq!(wait, Some(Duration::from_secs(3)));
            }
        }
    }

    #[test]
    fn generic_round_trip(fates in fates(60), order in any::<prop::sample::Index>(), repeat in any::<bool>()) {
        let format = Format::Generic(GenericFormat {
            id_pointer: Some("/ref".into()),
            status_pointer: Some("/code".into()),
            ..GenericFormat::new("/items", "/results")
        });
        let records = contacts(&fates, &ids(fates.len(), repeat));
        build(&format, "POST", "/bulk", &records).unwrap();
        let mut results: Vec<Value> = records.iter().zip(&fates)
            .map(|(r, fate)| json!({"ref": r.id, "code": match fate {
                Fate::Applied => 200, Fate::Invalid => 422, Fate::Throttled => 429 }}))
            .collect();
        // Results for the same id stay in request order; different ids may move.
        if !repeat {
            let k = order.index(results.len());
            results.rotate_left(k);
        }
        let resp = json!({"results": results});
        let out = parse(&format, &records, 200, resp.to_string().as_bytes(), None);
        check(&fates, &out.records)?;
    }

    #[test]
    fn salesforce_round_trip(fates in fates(200)) {
        let records = contacts(&fates, &ids(fates.len(), false));
        build(&Format::Salesforce, "POST", "/services/data/v62.0/composite/sobjects", &records).unwrap();
        let results: Vec<Value> = fates.iter().map(|fate| match fate {
            Fate::Applied => json!({"id": "001", "success": true, "errors": []}),
            Fate::Invalid => json!({"success": false, "errors": [{"statusCode": "FIELD_INTEGRITY_EXCEPTION", "message": "bad", "fields": ["Name"]}]}),
            Fate::Throttled => json!({"success": false, "errors": [{"statusCode": "UNABLE_TO_LOCK_ROW", "message": "locked", "fields": []}]}),
        }).collect();
        let out = parse(&Format::Salesforce, &records, 200, serde_json::to_vec(&results).unwrap().as_slice(), None);
        check(&fates, &out.records)?;
    }
}
