//! `headroom demo` as a library call: the mock, the server and the traffic over real sockets,
//! on a small, fast setting. Behaviour only, no timing (the machine is shared and noisy).

use std::time::Duration;

use headroom::demo::{self, Options};
use headroom_mock::Profile;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_imports_everything_without_a_throttled_call() {
    let opts = Options {
        profile: Profile::Ietf,
        limit: 20,
        window: Duration::from_secs(2),
        headroom: 0.8,
        records: 40,
        // Two a second: a real-time call surely happens during the ~5 s import (P(none) ≈ 5e-5).
        realtime_rate: 2.0,
        concurrency: 16,
        ..Options::default()
    };
    let report = demo::execute(&opts).await.unwrap();
    let summary = report.table();
    println!("{summary}");

    assert!(!report.interrupted, "{summary}");
    assert_eq!(report.records_ok, 40, "{summary}");
    assert_eq!(report.records_failed, 0, "{summary}");
    assert_eq!(report.records_unfinished, 0, "{summary}");
    assert!(report.failures.is_empty(), "{summary}");
    assert_eq!(report.upstream_throttled, 0, "{summary}");
    assert_eq!(report.throttled_share, 0.0, "{summary}");
    assert!(report.max_in_window <= 20, "{summary}");
    assert!(report.realtime_calls > 0, "{summary}");
    assert_eq!(
        report.realtime_ok + report.realtime_failed,
        report.realtime_calls,
        "{summary}"
    );
    // Every accepted call at the mock is a record or a real-time call: none lost, none twice.
    assert_eq!(
        report.upstream_accepted,
        report.records_ok + report.realtime_ok,
        "{summary}"
    );

    // The JSON names what scripts and benchmarks read.
    let json = serde_json::to_value(&report).unwrap();
    for field in [
        "goodput_pct_of_target",
        "throttled_share",
        "realtime_wait_p50_ms",
        "realtime_wait_p99_ms",
        "max_in_window",
        "retries",
    ] {
        assert!(json.get(field).is_some(), "{field} missing from {json}");
    }
    assert_eq!(json["profile"], "ietf");
}

#[tokio::test]
async fn bad_options_are_refused_before_anything_starts() {
    let opts = Options {
        headroom: 0.0,
        ..Options::default()
    };
    let e = demo::execute(&opts).await.unwrap_err();
    assert!(e.to_string().contains("headroom"), "{e}");
}
