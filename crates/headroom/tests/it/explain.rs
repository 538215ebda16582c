//! `headroom explain` as a command: its errors and `--now`. (What it reads from each real
//! API's response is checked in-process in headroom-core's `header_fixtures`.)

use std::process::{Command, Stdio};

use serde_json::Value;

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
