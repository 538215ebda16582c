//! Runs `headroom explain` on every `tests/data/ratelimit/NAME.http` and compares its report
//! with `NAME.json`.
//!
//! Matching rules (see the fixtures' README): `throttled` is equal; `retry_after_s` is within
//! one second, and null only when expected null; there are as many limits as expected, each
//! expected limit matched by position or else by quota, with every field it lists equal (numbers
//! within one unit or second). Fields an expected limit leaves out may be anything.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde_json::{Map, Value};

const TOLERANCE: f64 = 1.0;

fn fixtures_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/ratelimit")
}

#[test]
fn explain_matches_every_fixture() {
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

    let out = Command::new(env!("CARGO_BIN_EXE_headroom"))
        .arg("explain")
        .arg(http)
        .output()
        .map_err(|e| format!("cannot run headroom: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "exit {}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    let actual: Value = serde_json::from_slice(&out.stdout).map_err(|e| {
        format!(
            "output is not JSON ({e}): {}",
            String::from_utf8_lossy(&out.stdout)
        )
    })?;
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

#[test]
fn unparseable_input_fails_with_a_clear_error() {
    let out = Command::new(env!("CARGO_BIN_EXE_headroom"))
        .args(["explain", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .and_then(|mut child| {
            use std::io::Write;
            if let Some(mut stdin) = child.stdin.take() {
                stdin.write_all(b"Retry-After: 5\n\n")?;
            }
            child.wait_with_output()
        })
        .expect("run headroom");
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.starts_with("error: "), "{stderr}");
    assert!(stderr.contains("status line"), "{stderr}");
}

#[test]
fn now_flag_is_used_without_a_date_header() {
    let dir = std::env::temp_dir().join(format!("headroom-explain-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let file = dir.join("no-date.http");
    std::fs::write(
        &file,
        "HTTP/1.1 200 OK\nX-RateLimit-Limit: 60\nX-RateLimit-Reset: 2026-11-28T12:01:00Z\n",
    )
    .expect("write fixture");
    let run = |now: &str| {
        Command::new(env!("CARGO_BIN_EXE_headroom"))
            .args(["explain", "--now", now])
            .arg(&file)
            .output()
            .expect("run headroom")
    };
    let out = run("2026-11-28T12:00:30Z");
    assert!(out.status.success());
    let json: Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(json["limits"][0]["reset_in_s"].as_f64(), Some(30.0));

    let bad = run("next tuesday");
    assert_eq!(bad.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("--now"));
    let _ = std::fs::remove_dir_all(&dir);
}
