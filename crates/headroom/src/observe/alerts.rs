//! Alerts: `[[alerts]]` rules evaluated on the observer's clock over the event log (and job
//! durations), each firing instance notified once to its webhooks, then once more when it
//! resolves.
//!
//! ```toml
//! [[alerts]]
//! name = "crm-retries"
//! rule = "retry_exhaustion"     # throttled_spike | execution_failed | retry_pending
//!                               # | event_level | duration
//! upstream = "crm"              # optional: only this upstream
//! window = "15m"
//! threshold_percent = 1.0
//! webhooks = ["https://hooks.slack.com/services/…"]
//! ```

use std::collections::{BTreeMap, HashMap, VecDeque};

use serde::{Deserialize, Serialize};
use serde_json::json;

pub use crate::cfg::alerts::{AlertRule, RuleKind};
use crate::clock::Millis;

const DAY: Millis = 86_400_000;
/// Recent job durations kept per queue for the windowed mean.
const RECENT_DURATIONS: usize = 10_000;

/// Job attempt durations per queue: recent ones for windowed means, daily sums for trends.
#[derive(Debug, Default)]
pub struct Durations {
    recent: HashMap<String, VecDeque<(Millis, i64)>>,
    daily: HashMap<String, BTreeMap<i64, (i64, u64)>>,
}

impl Durations {
    pub fn record(&mut self, queue: &str, at: Millis, took_ms: i64) {
        // Look up before inserting: one String per queue, not per job.
        if !self.recent.contains_key(queue) {
            self.recent.insert(queue.to_string(), VecDeque::new());
            self.daily.insert(queue.to_string(), BTreeMap::new());
        }
        let Some(recent) = self.recent.get_mut(queue) else {
            return;
        };
        if recent.len() >= RECENT_DURATIONS {
            recent.pop_front();
        }
        recent.push_back((at, took_ms));
        let Some(daily) = self.daily.get_mut(queue) else {
            return;
        };
        let day = daily.entry(at.div_euclid(DAY)).or_insert((0, 0));
        day.0 += took_ms;
        day.1 += 1;
        // 90 days is the longest trend.
        while daily.len() > 91 {
            daily.pop_first();
        }
    }

    /// Mean duration (ms) of attempts in `[since, until)` per queue.
    pub(crate) fn mean_since(&self, since: Millis, until: Millis) -> Vec<(String, f64)> {
        self.recent
            .iter()
            .filter_map(|(q, v)| {
                let (sum, n) = v
                    .iter()
                    .filter(|(at, _)| *at >= since && *at < until)
                    .fold((0i64, 0u64), |(s, n), (_, d)| (s + d, n + 1));
                (n > 0).then(|| (q.clone(), sum as f64 / n as f64))
            })
            .collect()
    }

    /// Today's mean and the mean of the daily means of the `days` before, per queue.
    pub(crate) fn trend(&self, now: Millis, days: u32) -> Vec<(String, f64, f64)> {
        let today = now.div_euclid(DAY);
        self.daily
            .iter()
            .filter_map(|(q, d)| {
                let (s, n) = d.get(&today)?;
                let before: Vec<f64> = d
                    .range(today - i64::from(days)..today)
                    .map(|(_, (s, n))| *s as f64 / (*n).max(1) as f64)
                    .collect();
                if before.is_empty() {
                    return None;
                }
                let base = before.iter().sum::<f64>() / before.len() as f64;
                Some((q.clone(), *s as f64 / (*n).max(1) as f64, base))
            })
            .collect()
    }
}

/// One firing instance of a rule.
#[derive(Debug, Clone, Serialize)]
pub struct Firing {
    pub alert: String,
    pub rule: &'static str,
    /// The upstream (or queue) it fires for.
    pub subject: String,
    pub since: Millis,
    pub value: f64,
    pub threshold: f64,
    pub message: String,
    /// Set once resolved.
    pub resolved_at: Option<Millis>,
    /// Whether a webhook took the firing notification; if none did, the next tick tries
    /// again.
    #[serde(skip)]
    pub notified: bool,
}

#[derive(Default)]
pub(crate) struct AlertStates {
    pub(crate) firing: BTreeMap<(String, String), Firing>,
    pub(crate) history: VecDeque<Firing>,
    /// The firing instances as last saved in the store (see `FIRING_KEY`); `None` until
    /// they are read back at the first evaluation.
    pub(crate) saved: Option<String>,
}

/// The store's meta key under which the firing instances are kept, so that a restart does
/// not notify again an alert that was already firing (nor forget to resolve it).
const FIRING_KEY: &str = "alerts.firing";

/// A firing instance as the store keeps it.
#[derive(Serialize, Deserialize)]
struct Saved {
    alert: String,
    subject: String,
    since: Millis,
    value: f64,
    threshold: f64,
    message: String,
    notified: bool,
}

impl AlertStates {
    fn snapshot(&self) -> String {
        let saved: Vec<Saved> = self
            .firing
            .values()
            .map(|f| Saved {
                alert: f.alert.clone(),
                subject: f.subject.clone(),
                since: f.since,
                value: f.value,
                threshold: f.threshold,
                message: f.message.clone(),
                notified: f.notified,
            })
            .collect();
        serde_json::to_string(&saved).expect("plain data always serialises")
    }

    /// Reads back what was firing before a restart (instances of rules still configured).
    pub(crate) async fn load(
        &mut self,
        store: &crate::store::AnyStore,
        rules: &[std::sync::Arc<AlertRule>],
    ) -> anyhow::Result<()> {
        let text = match store.get_meta(FIRING_KEY).await? {
            Some(bytes) => String::from_utf8(bytes).unwrap_or_default(),
            None => String::new(),
        };
        let saved: Vec<Saved> = serde_json::from_str(&text).unwrap_or_default();
        for s in saved {
            let Some(rule) = rules.iter().find(|r| r.name == s.alert) else {
                continue;
            };
            self.firing.insert(
                (s.alert.clone(), s.subject.clone()),
                Firing {
                    alert: s.alert,
                    rule: rule.kind.name(),
                    subject: s.subject,
                    since: s.since,
                    value: s.value,
                    threshold: s.threshold,
                    message: s.message,
                    resolved_at: None,
                    notified: s.notified,
                },
            );
        }
        self.saved = Some(self.snapshot());
        Ok(())
    }

    pub(crate) async fn save(&mut self, store: &crate::store::AnyStore) -> anyhow::Result<()> {
        let now = self.snapshot();
        if self.saved.as_deref() != Some(now.as_str()) {
            store.put_meta(FIRING_KEY, now.as_bytes()).await?;
            self.saved = Some(now);
        }
        Ok(())
    }
}

pub(crate) fn firing_view(f: &Firing) -> serde_json::Value {
    json!({
        "alert": f.alert,
        "rule": f.rule,
        "subject": f.subject,
        "since": crate::clock::rfc3339(f.since),
        "value": f.value,
        "threshold": f.threshold,
        "message": f.message,
        "resolved_at": f.resolved_at.map(crate::clock::rfc3339),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_mean_over_a_window_and_trend_over_days() {
        let mut d = Durations::default();
        let day0 = 20_000 * DAY;
        for day in 0..3 {
            d.record("q", day0 + day * DAY + 1_000, 100);
        }
        d.record("q", day0 + 3 * DAY + 1_000, 400);
        d.record("other", day0 + 3 * DAY + 1_000, 50);
        let now = day0 + 3 * DAY + 2_000;
        let mut means = d.mean_since(now - 60_000, now);
        means.sort_by(|a, b| a.0.cmp(&b.0));
        assert_eq!(means, vec![("other".into(), 50.0), ("q".into(), 400.0)]);
        let trend = d.trend(now, 7);
        assert_eq!(
            trend,
            vec![("q".to_string(), 400.0, 100.0)],
            "no history, no trend for other"
        );
    }
}
