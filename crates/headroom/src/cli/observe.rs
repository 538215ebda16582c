//! `headroom events …`, `headroom status` and `headroom alerts`, against a running server.

use std::time::Duration;

use http::Method;
use serde_json::Value;

use super::api::{print_json, seg, Api, ServerArgs};

#[derive(Debug, clap::Args)]
pub struct EventsArgs {
    /// At or above: debug, info, warn or error.
    #[arg(long)]
    pub level: Option<String>,
    /// throttled, retry, backoff, budget_paused, breaker, retry_succeeded, retry_exhausted,
    /// job_failed, job_retry_pending, refused or oauth_broken.
    #[arg(long)]
    pub kind: Option<String>,
    #[arg(long)]
    pub upstream: Option<String>,
    #[arg(long)]
    pub tenant: Option<String>,
    #[arg(long)]
    pub queue: Option<String>,
    /// RFC 3339 time, or a duration ago (e.g. 1h).
    #[arg(long)]
    pub since: Option<String>,
    /// RFC 3339 time, or a duration ago.
    #[arg(long)]
    pub until: Option<String>,
    /// The `next_cursor` of the previous page.
    #[arg(long)]
    pub cursor: Option<String>,
    #[arg(long, default_value_t = 100)]
    pub limit: u32,
    /// Keep printing new events as they arrive (Ctrl-C stops).
    #[arg(long, short)]
    pub follow: bool,
    /// One JSON object per line instead of text lines.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub server: ServerArgs,
}

fn events_path(args: &EventsArgs, cursor: Option<&str>) -> String {
    let mut query = vec![format!("limit={}", args.limit.clamp(1, 500))];
    for (k, v) in [
        ("level", &args.level),
        ("kind", &args.kind),
        ("upstream", &args.upstream),
        ("tenant", &args.tenant),
        ("queue", &args.queue),
        ("since", &args.since),
        ("until", &args.until),
    ] {
        if let Some(v) = v {
            query.push(format!("{k}={}", seg(v)));
        }
    }
    if let Some(c) = cursor {
        query.push(format!("cursor={}", seg(c)));
    }
    format!("/v1/events?{}", query.join("&"))
}

/// `2025-03-01T12:00:00.000Z WARN  throttled crm POST /v3/x tenant=acme attempt=1 status=429 wait=2000ms`
pub fn event_line(e: &Value) -> String {
    let s = |k: &str| e.get(k).and_then(Value::as_str).unwrap_or("");
    let mut line = format!(
        "{} {:<5} {:<17} {}",
        s("time"),
        s("level").to_uppercase(),
        s("kind"),
        e.get("upstream").and_then(Value::as_str).unwrap_or("-")
    );
    if let Some(ep) = e.get("endpoint").and_then(Value::as_str) {
        line.push(' ');
        line.push_str(ep);
    }
    for k in ["tenant", "queue", "job_id"] {
        if let Some(v) = e.get(k).and_then(Value::as_str) {
            line.push_str(&format!(" {k}={v}"));
        }
    }
    for k in ["attempt", "status"] {
        if let Some(v) = e.get(k).and_then(Value::as_u64) {
            line.push_str(&format!(" {k}={v}"));
        }
    }
    if let Some(w) = e.get("wait_ms").and_then(Value::as_u64) {
        line.push_str(&format!(" wait={w}ms"));
    }
    line.push_str(&format!(" outcome={}", s("outcome")));
    if let Some(h) = e.get("headers").and_then(Value::as_object) {
        for (k, v) in h {
            line.push_str(&format!(" {k}={}", v.as_str().unwrap_or("")));
        }
    }
    line
}

pub fn run_events(args: EventsArgs) -> anyhow::Result<()> {
    let api = Api::new(&args.server.server)?;
    let mut cursor = args.cursor.clone();
    loop {
        let body = api.call(Method::GET, &events_path(&args, cursor.as_deref()), None)?;
        let page: Value = serde_json::from_slice(&body)?;
        for e in page["events"].as_array().into_iter().flatten() {
            if args.json {
                println!("{e}");
            } else {
                println!("{}", event_line(e));
            }
        }
        if let Some(last) = page["last_cursor"].as_str() {
            cursor = Some(last.to_string());
        }
        if page["next_cursor"].is_string() {
            continue;
        }
        if !args.follow {
            if !args.json && page["events"].as_array().is_some_and(|a| a.is_empty()) {
                eprintln!("no events");
            }
            return Ok(());
        }
        std::thread::sleep(Duration::from_secs(1));
    }
}

#[derive(Debug, clap::Args)]
pub struct StatusArgs {
    /// The span throttled and retry counts cover.
    #[arg(long, default_value = "15m")]
    pub window: String,
    /// The JSON of GET /v1/status instead of a table.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub server: ServerArgs,
}

pub fn run_status(args: StatusArgs) -> anyhow::Result<()> {
    let api = Api::new(&args.server.server)?;
    let body = api.call(
        Method::GET,
        &format!("/v1/status?window={}", seg(&args.window)),
        None,
    )?;
    if args.json {
        print_json(&body);
        return Ok(());
    }
    let status: Value = serde_json::from_slice(&body)?;
    print!("{}", status_table(&status));
    Ok(())
}

/// The human table of a `/v1/status` answer.
pub fn status_table(status: &Value) -> String {
    let mut out = format!(
        "Status at {} (counts over the last {})\n\n",
        status["at"].as_str().unwrap_or("?"),
        headroom_core::duration::format_duration(Duration::from_secs_f64(
            status["window_s"].as_f64().unwrap_or(0.0)
        ))
    );
    let header = [
        "UPSTREAM",
        "TENANT",
        "UTIL",
        "THROTTLED/MIN",
        "REFUSED",
        "RETRY OK",
        "AVG BACKOFF",
        "QUEUED",
        "RUNNING",
        "RETRYING",
        "VERDICT",
        "ETA",
    ];
    let mut rows: Vec<Vec<String>> = vec![header.iter().map(|h| h.to_string()).collect()];
    let pct = |v: &Value| {
        v.as_f64()
            .map_or("-".to_string(), |x| format!("{:.0}%", x * 100.0))
    };
    for r in status["rows"].as_array().into_iter().flatten() {
        let n = |k: &str| r[k].as_u64().unwrap_or(0).to_string();
        rows.push(vec![
            r["upstream"].as_str().unwrap_or("").to_string(),
            r["tenant"].as_str().unwrap_or("").to_string(),
            pct(&r["utilisation"]),
            format!("{:.2}", r["throttled_per_min"].as_f64().unwrap_or(0.0)),
            n("refused"),
            pct(&r["retry_success_ratio"]),
            r["avg_backoff_ms"]
                .as_f64()
                .map_or("-".into(), |b| format!("{b:.0}ms")),
            (r["queued"].as_u64().unwrap_or(0)
                + r["waiting_realtime"].as_u64().unwrap_or(0)
                + r["waiting_bulk"].as_u64().unwrap_or(0))
            .to_string(),
            n("running"),
            n("retry_pending"),
            r["verdict"].as_str().unwrap_or("").to_string(),
            r["eta_s"].as_f64().map_or("-".into(), |s| {
                headroom_core::duration::format_duration(Duration::from_secs_f64(s))
            }),
        ]);
    }
    let widths: Vec<usize> = (0..header.len())
        .map(|i| rows.iter().map(|r| r[i].chars().count()).max().unwrap_or(0))
        .collect();
    for r in &rows {
        let cells: Vec<String> = r
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        out.push_str(cells.join("  ").trim_end());
        out.push('\n');
    }
    if rows.len() == 1 {
        out.push_str("(no budgets, events or jobs yet)\n");
    }
    for r in status["rows"].as_array().into_iter().flatten() {
        if r["verdict"] == "over_capacity" {
            out.push_str(&format!(
                "\n{} / {}: {}",
                r["upstream"].as_str().unwrap_or(""),
                r["tenant"].as_str().unwrap_or(""),
                r["detail"].as_str().unwrap_or("")
            ));
        }
    }
    let broken = status["broken_connections"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    if !broken.is_empty() {
        out.push_str(&format!(
            "\nBroken OAuth connections (the customer must connect again): {}\n",
            broken.len()
        ));
        for b in broken {
            out.push_str(&format!(
                "  {} / {} since {}: {}\n",
                b["tenant"].as_str().unwrap_or(""),
                b["upstream"].as_str().unwrap_or(""),
                b["since"].as_str().unwrap_or(""),
                b["reason"].as_str().unwrap_or("")
            ));
        }
    }
    let alerts = status["alerts"].as_array().cloned().unwrap_or_default();
    out.push_str(&format!("\nOpen alerts: {}\n", alerts.len()));
    for a in alerts {
        out.push_str(&format!(
            "  {} ({}) since {}: {}\n",
            a["alert"].as_str().unwrap_or(""),
            a["rule"].as_str().unwrap_or(""),
            a["since"].as_str().unwrap_or(""),
            a["message"].as_str().unwrap_or("")
        ));
    }
    out
}

#[derive(Debug, clap::Args)]
pub struct AlertsArgs {
    #[command(flatten)]
    pub server: ServerArgs,
}

pub fn run_alerts(args: AlertsArgs) -> anyhow::Result<()> {
    let api = Api::new(&args.server.server)?;
    print_json(&api.call(Method::GET, "/v1/alerts", None)?);
    Ok(())
}
