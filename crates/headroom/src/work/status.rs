//! Budget and queue sampling (each observer tick) and `GET /v1/status`'s report.

use std::collections::{BTreeMap, HashMap};

use crate::app::AppState;
use crate::cfg::BudgetScope;
use crate::jobs::Millis;
use crate::observe::metrics::{DepthLabels, LimitLabels};
use crate::observe::model::*;
use crate::observe::status::*;

/// The shortest span a trend is computed over.
const MIN_TREND_SPAN: Millis = 20_000;

/// The tenant label a job's backlog counts under: `shared` on a shared budget.
fn backlog_tenant(app: &AppState, b: &Backlog) -> String {
    match app.config.upstream(&b.upstream) {
        Some(u) if u.budget == BudgetScope::Shared => "shared".into(),
        _ => b.tenant.clone().unwrap_or_else(|| "anonymous".into()),
    }
}

/// Takes the periodic samples and sets the budget and queue gauges.
pub(crate) async fn sample(
    app: &AppState,
    samples: &mut Samples,
    now: Millis,
) -> anyhow::Result<()> {
    let views = app.governor.snapshot();
    let gov_now = app.governor.now().as_secs_f64();
    let mut seen = std::collections::HashSet::new();
    // Per (upstream, limit): busiest utilisation, summed spend and allowance.
    let mut gauges: BTreeMap<(String, String), (f64, f64, f64)> = BTreeMap::new();
    for v in &views {
        let key = (v.upstream_index, v.key.clone());
        seen.insert(key.clone());
        let b = &v.budget;
        let next = match samples.spend.get(&key) {
            Some(prev) if gov_now - prev.at >= 1.0 => {
                let dt = gov_now - prev.at;
                Spend {
                    at: gov_now,
                    requests: b.spent_requests,
                    points: b.spent_points,
                    rate_requests: Some(smooth(
                        prev.rate_requests,
                        (b.spent_requests - prev.requests).max(0.0) / dt,
                    )),
                    rate_points: Some(smooth(
                        prev.rate_points,
                        (b.spent_points - prev.points).max(0.0) / dt,
                    )),
                }
            }
            Some(prev) => *prev,
            None => Spend {
                at: gov_now,
                requests: b.spent_requests,
                points: b.spent_points,
                rate_requests: None,
                rate_points: None,
            },
        };
        samples.spend.insert(key, next);
        let Some(upstream) = app.config.upstreams.get(v.upstream_index as usize) else {
            continue;
        };
        for l in &b.limits {
            let Some(u) = limit_use(l, b.headroom, &next) else {
                continue;
            };
            let g = gauges
                .entry((upstream.name.clone(), limit_label(l)))
                .or_insert((0.0, 0.0, 0.0));
            g.0 = g.0.max(u.utilisation.unwrap_or(0.0));
            g.1 += u.spend_per_s.unwrap_or(0.0);
            g.2 += u.allowance_per_s;
        }
    }
    samples.spend.retain(|k, _| seen.contains(k));
    let m = app.observe.metrics();
    for ((upstream, limit), (util, spend, allowance)) in gauges {
        let labels = LimitLabels { upstream, limit };
        m.budget_utilisation.get_or_create(&labels).set(util);
        m.budget_spend_rate.get_or_create(&labels).set(spend);
        m.budget_allowance_rate
            .get_or_create(&labels)
            .set(allowance);
    }

    let backlog = app.store.job_backlog().await?;
    let mut depths: BTreeMap<DepthLabels, i64> = BTreeMap::new();
    let mut totals: HashMap<(String, String), u64> = HashMap::new();
    for b in &backlog {
        *depths
            .entry(DepthLabels {
                queue: b.queue.clone(),
                lane: b.lane.clone(),
                status: b.status.clone(),
            })
            .or_insert(0) += b.count as i64;
        *totals
            .entry((b.upstream.clone(), backlog_tenant(app, b)))
            .or_insert(0) += b.count;
    }
    for old in std::mem::take(&mut samples.depth_labels) {
        if !depths.contains_key(&old) {
            m.queue_depth.get_or_create(&old).set(0);
        }
    }
    for (labels, n) in &depths {
        m.queue_depth.get_or_create(labels).set(*n);
    }
    samples.depth_labels = depths.into_keys().collect();
    for (key, series) in samples.backlog.iter_mut() {
        if !totals.contains_key(key) {
            series.push_back((now, 0));
        }
    }
    for (key, n) in totals {
        samples.backlog.entry(key).or_default().push_back((now, n));
    }
    samples.backlog.retain(|_, series| {
        while series.front().is_some_and(|(t, _)| *t < now - TREND_SPAN) {
            series.pop_front();
        }
        // A clock moved back (tests) leaves samples from the future: start again.
        series.retain(|(t, _)| *t <= now);
        series.iter().any(|(_, n)| *n > 0)
    });
    Ok(())
}

/// The status now, with event counts over the last `window`.
pub async fn compute(app: &AppState, window: std::time::Duration) -> anyhow::Result<Status> {
    app.observe.flush().await;
    let now = app.observe.now();
    let window_ms = (window.as_millis() as Millis).max(1);
    let stats = app.store.event_stats(now - window_ms, now + 1).await?;
    let backlog = app.store.job_backlog().await?;
    let views = app.governor.snapshot();
    let state = app.observe.state.lock().await;
    let mut rows: BTreeMap<(String, String), Row> = BTreeMap::new();
    let mut row = |u: &str, t: &str| -> (String, String) {
        let key = (u.to_string(), t.to_string());
        rows.entry(key.clone()).or_insert_with(|| Row::new(u, t));
        key
    };
    let mut keys = Vec::new();
    for v in &views {
        let Some(upstream) = app.config.upstreams.get(v.upstream_index as usize) else {
            continue;
        };
        // An endpoint route's budget is not a row of its own (`/v1/budgets` shows it): the
        // row is the tenant's budget at the upstream.
        if crate::outbound::split_route_key(&v.key).is_some() {
            continue;
        }
        keys.push((row(&upstream.name, tenant_of_key(&v.key)), v));
    }
    let mut backoff: HashMap<(String, String), (u64, u64)> = HashMap::new();
    let mut stat_keys = Vec::new();
    for s in &stats {
        let (Some(u), Some(t)) = (&s.upstream, &s.tenant) else {
            continue;
        };
        stat_keys.push((row(u, t), s));
    }
    let mut backlog_keys = Vec::new();
    for b in &backlog {
        backlog_keys.push((row(&b.upstream, &backlog_tenant(app, b)), b));
    }
    for (key, v) in keys {
        let r = rows.get_mut(&key).expect("row made above");
        let spend = state.samples.spend.get(&(v.upstream_index, v.key.clone()));
        let b = &v.budget;
        let fallback = Spend {
            at: 0.0,
            requests: 0.0,
            points: 0.0,
            rate_requests: None,
            rate_points: None,
        };
        r.limits = b
            .limits
            .iter()
            .filter_map(|l| limit_use(l, b.headroom, spend.unwrap_or(&fallback)))
            .collect();
        r.utilisation = r
            .limits
            .iter()
            .filter_map(|l| l.utilisation)
            .fold(None, |m: Option<f64>, u| Some(m.map_or(u, |m| m.max(u))));
        r.waiting_realtime += v.queued_realtime as u64;
        r.waiting_bulk += v.queued_bulk as u64;
        r.breaker = Some(
            match b.breaker {
                headroom_core::breaker::BreakerState::Closed { .. } => "closed",
                headroom_core::breaker::BreakerState::HalfOpen { .. } => "half_open",
                headroom_core::breaker::BreakerState::Open { .. } => "open",
            }
            .to_string(),
        );
    }
    for (key, s) in stat_keys {
        let r = rows.get_mut(&key).expect("row made above");
        match s.kind {
            Kind::Throttled => r.throttled += s.count,
            Kind::Refused => r.refused += s.count,
            Kind::RetrySucceeded => r.retries_succeeded += s.count,
            Kind::RetryExhausted => r.retries_exhausted += s.count,
            Kind::Retry | Kind::Backoff => {
                let e = backoff.entry(key.clone()).or_default();
                e.0 += s.count;
                e.1 += s.wait_ms;
            }
            _ => {}
        }
    }
    for (key, b) in backlog_keys {
        let r = rows.get_mut(&key).expect("row made above");
        match b.status.as_str() {
            "queued" => r.queued += b.count,
            "running" => r.running += b.count,
            _ => r.retry_pending += b.count,
        }
    }
    let minutes = window_ms as f64 / 60_000.0;
    for (key, r) in rows.iter_mut() {
        r.throttled_per_min = (r.throttled as f64 / minutes * 100.0).round() / 100.0;
        let retried = r.retries_succeeded + r.retries_exhausted;
        r.retry_success_ratio = (retried > 0).then(|| r.retries_succeeded as f64 / retried as f64);
        r.avg_backoff_ms = backoff
            .get(key)
            .filter(|(n, _)| *n > 0)
            .map(|(n, w)| (*w as f64 / *n as f64).round());
        let pace = views
            .iter()
            .find(|v| {
                app.config
                    .upstreams
                    .get(v.upstream_index as usize)
                    .is_some_and(|u| u.name == r.upstream)
                    && tenant_of_key(&v.key) == r.tenant
            })
            .map_or(1.0, |v| v.budget.pace_factor);
        let drain = r
            .limits
            .iter()
            .map(|l| l.allowance_per_s * pace)
            .fold(None, |m: Option<f64>, a| Some(m.map_or(a, |m| m.min(a))))
            .or_else(|| configured_drain(app, &r.upstream));
        let trend = state.samples.backlog.get(key).and_then(|series| {
            let (t0, n0) = *series.front()?;
            let (t1, n1) = *series.back()?;
            (t1 - t0 >= MIN_TREND_SPAN)
                .then(|| (n1 as f64 - n0 as f64) / ((t1 - t0) as f64 / 1000.0))
        });
        let backlog = r.queued + r.running + r.retry_pending + r.waiting_realtime + r.waiting_bulk;
        r.verdict = verdict(backlog, drain, trend);
    }
    let alerts = state
        .alerts
        .firing
        .values()
        .map(crate::observe::alerts::firing_view)
        .collect();
    drop(state);
    let broken_connections = app
        .store
        .list_oauth_grants(None, true)
        .await?
        .into_iter()
        .map(|g| crate::observe::status::BrokenConnection {
            tenant: g.tenant,
            upstream: g.upstream,
            reason: g.broken.unwrap_or_default(),
            since: g.updated_at,
        })
        .collect();
    Ok(Status {
        at: crate::clock::rfc3339(now),
        window_s: window.as_secs_f64(),
        rows: rows.into_values().collect(),
        alerts,
        broken_connections,
    })
}

/// The tightest configured `headroom × quota / window` of an upstream, per second.
fn configured_drain(app: &AppState, upstream: &str) -> Option<f64> {
    let u = app.config.upstream(upstream)?;
    let c = &u.budget_config;
    c.limits
        .iter()
        .filter(|l| !l.window.is_zero())
        .map(|l| c.headroom * l.quota / l.window.as_secs_f64())
        .fold(None, |m: Option<f64>, a| Some(m.map_or(a, |m| m.min(a))))
}

fn smooth(old: Option<f64>, new: f64) -> f64 {
    match old {
        Some(o) => 0.5 * o + 0.5 * new,
        None => new,
    }
}

fn limit_use(
    l: &headroom_core::limit::LimitSnapshot,
    headroom: f64,
    spend: &Spend,
) -> Option<LimitUse> {
    let window = l.window_s.filter(|w| *w > 0.0)?;
    let allowance = headroom * l.quota / window;
    let rate = match l.unit {
        headroom_core::Unit::Requests => spend.rate_requests,
        _ => spend.rate_points,
    };
    Some(LimitUse {
        limit: limit_label(l),
        quota: l.quota,
        window_s: window,
        headroom,
        spend_per_s: rate,
        allowance_per_s: allowance,
        utilisation: rate.filter(|_| allowance > 0.0).map(|r| r / allowance),
    })
}

fn limit_label(l: &headroom_core::limit::LimitSnapshot) -> String {
    l.name.clone().unwrap_or_else(|| match l.window_s {
        Some(w) => headroom_core::duration::format_duration(std::time::Duration::from_secs_f64(w)),
        None => "unknown".into(),
    })
}

/// The tenant a budget key stands for: `acme` for `tenant:acme`, else the key.
fn tenant_of_key(key: &str) -> &str {
    key.strip_prefix("tenant:").unwrap_or(key)
}
