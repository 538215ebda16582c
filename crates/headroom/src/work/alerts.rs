//! Evaluates the alert rules on each observer tick and sends their webhooks.

use std::collections::BTreeMap;

use headroom_core::duration::format_duration;
use serde_json::json;

use crate::app::AppState;
use crate::callbacks::Outcome;
use crate::jobs::Millis;
use crate::observe::alerts::*;
use crate::observe::model::*;
use crate::observe::TickState;

/// Resolved alerts kept for `GET /v1/alerts`.
const HISTORY: usize = 200;

/// What a rule finds now: subject → (value, threshold, message).
type Found = BTreeMap<String, (f64, f64, String)>;

fn sum(
    stats: &[EventStat],
    rule: &AlertRule,
    pick: impl Fn(&EventStat) -> bool,
    by_queue: bool,
) -> BTreeMap<String, u64> {
    let mut out = BTreeMap::new();
    for s in stats {
        if !pick(s) {
            continue;
        }
        if rule.upstream.is_some() && s.upstream != rule.upstream {
            continue;
        }
        if rule.queue.is_some() && s.queue != rule.queue {
            continue;
        }
        let subject = if by_queue { &s.queue } else { &s.upstream };
        *out.entry(subject.clone().unwrap_or_else(|| "-".into()))
            .or_insert(0) += s.count;
    }
    out
}

async fn find(app: &AppState, rule: &AlertRule, now: Millis) -> anyhow::Result<Found> {
    let window = rule.window.as_millis() as Millis;
    let mut found = Found::new();
    // Events stamped at `now` itself count (a manual clock stands still).
    let stats = || app.store.event_stats(now - window, now + 1);
    use crate::observe::model::EventStore as _;
    match &rule.kind {
        RuleKind::RetryExhaustion { percent } => {
            let stats = stats().await?;
            let bad = sum(&stats, rule, |s| s.kind == Kind::RetryExhausted, false);
            let good = sum(&stats, rule, |s| s.kind == Kind::RetrySucceeded, false);
            for (subject, b) in bad {
                let total = b + good.get(&subject).copied().unwrap_or(0);
                let share = 100.0 * b as f64 / total as f64;
                if share > *percent {
                    let message = format!(
                        "{subject}: {share:.1}% of retried calls ran out of retries in the last {} \
                         ({b} of {total}; threshold {percent}%)",
                        format_duration(rule.window)
                    );
                    found.insert(subject, (share, *percent, message));
                }
            }
        }
        RuleKind::ThrottledSpike {
            factor,
            baseline,
            min_count,
        } => {
            let base_ms = baseline.as_millis() as Millis;
            let current = sum(&stats().await?, rule, |s| s.kind == Kind::Throttled, false);
            let before = app
                .store
                .event_stats(now - window - base_ms, now - window)
                .await?;
            let before = sum(&before, rule, |s| s.kind == Kind::Throttled, false);
            let windows = (base_ms as f64 / window as f64).max(1.0);
            for (subject, n) in current {
                let avg = before.get(&subject).copied().unwrap_or(0) as f64 / windows;
                let threshold = factor * avg.max(1.0);
                if n >= *min_count && n as f64 > threshold {
                    let message = format!(
                        "{subject}: {n} throttled responses in the last {}, {factor}× above the \
                         trailing average of {avg:.1} per window",
                        format_duration(rule.window)
                    );
                    found.insert(subject, (n as f64, threshold, message));
                }
            }
        }
        RuleKind::ExecutionFailed | RuleKind::RetryPending => {
            let kind = if rule.kind == RuleKind::ExecutionFailed {
                Kind::JobFailed
            } else {
                Kind::JobRetryPending
            };
            let what = if kind == Kind::JobFailed {
                "failed for good"
            } else {
                "failed an attempt and wait for a retry"
            };
            for (subject, n) in sum(&stats().await?, rule, |s| s.kind == kind, true) {
                let message = format!(
                    "queue {subject}: {n} job{} {what} in the last {}",
                    if n == 1 { "" } else { "s" },
                    format_duration(rule.window)
                );
                found.insert(subject, (n as f64, 0.0, message));
            }
        }
        RuleKind::EventLevel { level } => {
            for (subject, n) in sum(&stats().await?, rule, |s| s.level >= *level, false) {
                let message = format!(
                    "{subject}: {n} event{} at {} or above in the last {}",
                    if n == 1 { "" } else { "s" },
                    level.as_str(),
                    format_duration(rule.window)
                );
                found.insert(subject, (n as f64, 0.0, message));
            }
        }
        RuleKind::OAuthBroken => {
            for g in app.store.list_oauth_grants(None, true).await? {
                if rule.upstream.as_ref().is_some_and(|u| *u != g.upstream) {
                    continue;
                }
                let message = format!(
                    "the OAuth connection of tenant {} to {} is broken ({}); the customer must \
                     connect again",
                    g.tenant,
                    g.upstream,
                    g.broken.as_deref().unwrap_or_default()
                );
                found.insert(format!("{}/{}", g.upstream, g.tenant), (1.0, 0.0, message));
            }
        }
        RuleKind::Duration {
            max,
            trend_days,
            trend_factor,
        } => {
            let durations = app
                .observe
                .durations
                .lock()
                .map_err(|_| anyhow::anyhow!("durations lock poisoned"))?;
            let wanted = |q: &String| rule.queue.as_ref().is_none_or(|r| r == q);
            if let Some(max) = max {
                let max_ms = max.as_millis() as f64;
                for (q, mean) in durations.mean_since(now - window, now + 1) {
                    if wanted(&q) && mean > max_ms {
                        let message = format!(
                            "queue {q}: job attempts took {mean:.0}ms on average in the last {}, \
                             above {}",
                            format_duration(rule.window),
                            format_duration(*max)
                        );
                        found.insert(q, (mean, max_ms, message));
                    }
                }
            }
            if let Some(f) = trend_factor {
                for (q, today, base) in durations.trend(now, *trend_days) {
                    if wanted(&q) && today > f * base && !found.contains_key(&q) {
                        let message = format!(
                            "queue {q}: job attempts take {today:.0}ms on average today, {:.1}× \
                             the {base:.0}ms of the previous {trend_days} days",
                            today / base.max(1e-9)
                        );
                        found.insert(q, (today, f * base, message));
                    }
                }
            }
        }
    }
    Ok(found)
}

/// Evaluates every rule at `now`: notifies new firing instances and resolved ones. Returns
/// how many notifications went out.
pub(crate) async fn evaluate(
    app: &AppState,
    state: &mut TickState,
    now: Millis,
) -> anyhow::Result<usize> {
    let mut sent = 0;
    if state.alerts.saved.is_none() {
        state
            .alerts
            .load(&app.store, &app.config.observe.alerts)
            .await?;
    }
    for rule in &app.config.observe.alerts {
        let found = find(app, rule, now).await?;
        let states = &mut state.alerts;
        let mut resolved = Vec::new();
        for (key, firing) in states.firing.iter() {
            if key.0 == rule.name && !found.contains_key(&key.1) {
                resolved.push((key.clone(), firing.clone()));
            }
        }
        for (key, mut firing) in resolved {
            states.firing.remove(&key);
            firing.resolved_at = Some(now);
            sent += notify(app, rule, &firing, "resolved").await;
            states.history.push_front(firing);
            states.history.truncate(HISTORY);
        }
        let mut count = 0;
        for (subject, (value, threshold, message)) in found {
            count += 1;
            let key = (rule.name.clone(), subject.clone());
            match states.firing.get_mut(&key) {
                // Already notified: keep it current, say nothing (deduplicated).
                Some(f) => {
                    f.value = value;
                    f.message = message;
                    if !f.notified {
                        let ok = notify(app, rule, f, "firing").await;
                        f.notified = ok > 0;
                        sent += ok;
                    }
                }
                None => {
                    let mut firing = Firing {
                        alert: rule.name.clone(),
                        rule: rule.kind.name(),
                        subject,
                        since: now,
                        value,
                        threshold,
                        message,
                        resolved_at: None,
                        notified: false,
                    };
                    let ok = notify(app, rule, &firing, "firing").await;
                    firing.notified = ok > 0 || rule.webhooks.is_empty();
                    sent += ok;
                    states.firing.insert(key, firing);
                }
            }
        }
        app.observe
            .metrics()
            .alerts_firing
            .get_or_create(&crate::observe::metrics::AlertLabels {
                alert: rule.name.clone(),
            })
            .set(count);
    }
    state.alerts.save(&app.store).await?;
    Ok(sent)
}

/// POSTs the notification to every webhook of the rule (JSON with a Slack-compatible
/// `text`); returns how many accepted it.
async fn notify(app: &AppState, rule: &AlertRule, firing: &Firing, status: &str) -> usize {
    let icon = if status == "firing" { "🔥" } else { "✅" };
    let text = format!(
        "{icon} [{}] {} ({}): {}",
        status.to_uppercase(),
        rule.name,
        rule.kind.name(),
        firing.message
    );
    let body = json!({
        "text": text,
        "status": status,
        "alert": rule.name,
        "rule": rule.kind.name(),
        "subject": firing.subject,
        "value": firing.value,
        "threshold": firing.threshold,
        "message": firing.message,
        "since": crate::clock::rfc3339(firing.since),
        "resolved_at": firing.resolved_at.map(crate::clock::rfc3339),
    })
    .to_string();
    tracing::warn!(alert = %rule.name, subject = %firing.subject, status, "{}", firing.message);
    // All webhooks at once (a hanging one does not delay the others), under the limits
    // and timeouts of `[callbacks]`.
    // Signed when the rule has a secret: one message id per notification, on every webhook.
    let signed = crate::callbacks::Signed::new(
        rule.webhook_secret.as_deref().as_slice(),
        format!("msg_alert_{}_{}_{}", rule.name, status, firing.since),
        app.clock.now_millis(),
        body.as_bytes(),
    );
    let headers: Vec<(&str, &str)> = signed
        .as_ref()
        .map_or_else(Vec::new, |s| s.headers().to_vec());
    let sent = rule.webhooks.iter().map(|uri| {
        let body = body.clone().into_bytes();
        let headers = &headers;
        async move { (uri, app.notifier.post_webhook(uri, headers, body).await) }
    });
    let mut ok = 0;
    for (uri, outcome) in futures_util::future::join_all(sent).await {
        match outcome {
            Outcome::Delivered => ok += 1,
            Outcome::Status(status) => {
                tracing::warn!(alert = %rule.name, webhook = %uri, status = status.as_u16(), "alert webhook refused the notification")
            }
            Outcome::NoAnswer(error) => {
                tracing::warn!(alert = %rule.name, webhook = %uri, error = %error, "cannot reach an alert webhook")
            }
        }
    }
    ok
}

/// `GET /v1/alerts`: every rule with its firing instances, and recently resolved ones.
pub(crate) async fn view(app: &AppState) -> serde_json::Value {
    let state = app.observe.state.lock().await;
    let rules: Vec<serde_json::Value> = app
        .config
        .observe
        .alerts
        .iter()
        .map(|r| {
            let firing: Vec<serde_json::Value> = state
                .alerts
                .firing
                .values()
                .filter(|f| f.alert == r.name)
                .map(firing_view)
                .collect();
            json!({
                "name": r.name,
                "rule": r.kind.name(),
                "upstream": r.upstream,
                "queue": r.queue,
                "window_s": r.window.as_secs_f64(),
                "webhooks": r.webhooks.len(),
                "state": if firing.is_empty() { "ok" } else { "firing" },
                "firing": firing,
            })
        })
        .collect();
    let recent: Vec<serde_json::Value> = state.alerts.history.iter().map(firing_view).collect();
    json!({ "alerts": rules, "resolved": recent })
}
