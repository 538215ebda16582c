//! Reads every `tests/data/ratelimit/NAME.http` (a real API's response) in-process, as
//! `headroom explain` does, and compares the signals with `NAME.json`.
//!
//! Matching rules (see the fixtures' README): `throttled` is equal; `retry_after_s` is within
//! one second, and null only when expected null; there are as many limits as expected, each
//! expected limit matched by position or else by quota, with every field it lists equal (numbers
//! within one unit or second). Fields an expected limit leaves out may be anything.

use std::path::{Path, PathBuf};

use headroom_core::signals::RawResponse;
use serde_json::{Map, Value};

const TOLERANCE: f64 = 1.0;

fn fixtures_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/ratelimit")
}

#[test]
fn every_fixture_reads_as_expected() {
    let dir = fixtures_dir();
    let mut cases: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("cannot list {}: {e}", dir.display()))
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|ext| ext == "http"))
        .collect();
    cases.sort();
    assert!(!cases.is_empty(), "no .http fixtures in {}", dir.display());

    let failures: Vec<String> = cases
        .iter()
        .filter_map(|case| check(case).err().map(|e| format!("{}: {e}", name(case))))
        .collect();
    assert!(
        failures.is_empty(),
        "{} of {} fixtures differ:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}

fn name(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

fn check(http: &Path) -> Result<(), String> {
    let expected_path = http.with_extension("json");
    let expected: Value = std::fs::read(&expected_path)
        .map_err(|e| format!("cannot read {}: {e}", expected_path.display()))
        .and_then(|b| serde_json::from_slice(&b).map_err(|e| format!("bad expected JSON: {e}")))?;

    let input = std::fs::read(http).map_err(|e| format!("cannot read it: {e}"))?;
    let response = RawResponse::parse(&input).map_err(|e| format!("cannot parse it: {e}"))?;
    // As `headroom explain` without `--now`: resets relative to the response's `Date`.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64());
    let actual = serde_json::to_value(response.interpret(now)).map_err(|e| e.to_string())?;
    compare(&expected, &actual).map_err(|e| format!("{e}\n  got: {actual}"))
}

fn compare(expected: &Value, actual: &Value) -> Result<(), String> {
    if expected["throttled"] != actual["throttled"] {
        return Err(format!(
            "throttled: expected {}, got {}",
            expected["throttled"], actual["throttled"]
        ));
    }
    if !values_match(&expected["retry_after_s"], &actual["retry_after_s"]) {
        return Err(format!(
            "retry_after_s: expected {}, got {}",
            expected["retry_after_s"], actual["retry_after_s"]
        ));
    }
    let empty = Vec::new();
    let want = expected["limits"].as_array().unwrap_or(&empty);
    let got = actual["limits"]
        .as_array()
        .ok_or("output has no \"limits\" array")?;
    if want.len() != got.len() {
        return Err(format!("expected {} limits, got {}", want.len(), got.len()));
    }
    let mut used = vec![false; got.len()];
    for (i, w) in want.iter().enumerate() {
        let w = w.as_object().ok_or("an expected limit is not an object")?;
        // By position first, then any unused limit with the same quota.
        let candidates = std::iter::once(i).chain(
            (0..got.len()).filter(|&j| j != i && values_match(&w["quota"], &got[j]["quota"])),
        );
        let found = candidates
            .filter(|&j| !used[j])
            .find(|&j| limit_matches(w, &got[j]));
        match found {
            Some(j) => used[j] = true,
            None => {
                return Err(format!(
                    "no limit matches expected {}",
                    Value::Object(w.clone())
                ))
            }
        }
    }
    Ok(())
}

fn limit_matches(want: &Map<String, Value>, got: &Value) -> bool {
    want.iter()
        .all(|(field, w)| values_match(w, got.get(field).unwrap_or(&Value::Null)))
}

fn values_match(want: &Value, got: &Value) -> bool {
    match (want, got) {
        (Value::Number(w), Value::Number(g)) => match (w.as_f64(), g.as_f64()) {
            (Some(w), Some(g)) => (w - g).abs() <= TOLERANCE,
            _ => false,
        },
        (w, g) => w == g,
    }
}
