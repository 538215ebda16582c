//! `[events]` and `[[alerts]]`: how long events are kept, and the rules that raise alerts.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use headroom_core::duration::parse_duration;
use serde::Deserialize;

use crate::store::model::events::Level;

/// `[events]` and `[[alerts]]` of the config.
#[derive(Debug, Clone)]
pub struct ObserveConfig {
    /// How long events are kept (default 14 days).
    pub retention: Duration,
    pub alerts: Vec<Arc<AlertRule>>,
}

impl Default for ObserveConfig {
    fn default() -> Self {
        ObserveConfig {
            retention: Duration::from_secs(14 * 86_400),
            alerts: Vec::new(),
        }
    }
}

/// `[events]` as written.
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawEvents {
    retention: Option<String>,
}

impl ObserveConfig {
    /// Checks `[events]` and `[[alerts]]` against the rest of the config.
    pub(super) fn from_raw(
        events: Option<RawEvents>,
        alerts: Vec<RawAlert>,
        config: &super::Config,
    ) -> Result<ObserveConfig, String> {
        let mut out = ObserveConfig::default();
        if let Some(r) = events.and_then(|e| e.retention) {
            out.retention = headroom_core::duration::parse_duration(&r)
                .map_err(|e| format!("events.retention: {e}"))?;
            if out.retention.is_zero() {
                return Err("events.retention: must be longer than zero".into());
            }
        }
        let mut names = HashSet::new();
        for (i, raw) in alerts.into_iter().enumerate() {
            let key = format!("alerts[{i}]");
            let rule = raw.validate(&key, config)?;
            if !names.insert(rule.name.clone()) {
                return Err(format!(
                    "{key}.name: \"{}\" is used by two alerts; names must be unique",
                    rule.name
                ));
            }
            out.alerts.push(Arc::new(rule));
        }
        Ok(out)
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAlert {
    name: String,
    rule: String,
    upstream: Option<String>,
    queue: Option<String>,
    window: Option<String>,
    threshold_percent: Option<f64>,
    factor: Option<f64>,
    baseline: Option<String>,
    min_count: Option<u64>,
    level: Option<String>,
    max_duration: Option<String>,
    trend_days: Option<u32>,
    trend_factor: Option<f64>,
    #[serde(default)]
    webhooks: Vec<String>,
    /// Signs the notifications (Standard Webhooks), e.g. "${ALERTS_WEBHOOK_SECRET}".
    webhook_secret: Option<String>,
}

/// What an alert watches.
#[derive(Debug, Clone, PartialEq)]
pub enum RuleKind {
    /// Retried calls that ran out of retries, as a share of retried calls, above `percent`.
    RetryExhaustion { percent: f64 },
    /// Throttled answers in the window above `factor` × the average window of the baseline
    /// before it (and at least `min_count`).
    ThrottledSpike {
        factor: f64,
        baseline: Duration,
        min_count: u64,
    },
    /// A job failed for good within the window.
    ExecutionFailed,
    /// A job failed an attempt and waits for a retry, within the window.
    RetryPending,
    /// An event at or above `level` within the window.
    EventLevel { level: Level },
    /// A tenant's OAuth grant is broken (the customer must connect again): one alert per
    /// broken grant, resolved when it is connected again.
    OAuthBroken,
    /// Job attempts took longer than `max` on average over the window, or today's average
    /// is `trend_factor` × the average of the `trend_days` before.
    Duration {
        max: Option<Duration>,
        trend_days: u32,
        trend_factor: Option<f64>,
    },
}

impl RuleKind {
    pub fn name(&self) -> &'static str {
        match self {
            RuleKind::RetryExhaustion { .. } => "retry_exhaustion",
            RuleKind::ThrottledSpike { .. } => "throttled_spike",
            RuleKind::ExecutionFailed => "execution_failed",
            RuleKind::RetryPending => "retry_pending",
            RuleKind::EventLevel { .. } => "event_level",
            RuleKind::Duration { .. } => "duration",
            RuleKind::OAuthBroken => "oauth_broken",
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct AlertRule {
    pub name: String,
    pub kind: RuleKind,
    pub upstream: Option<String>,
    pub queue: Option<String>,
    pub window: Duration,
    pub webhooks: Vec<http::Uri>,
    /// `whsec_…`: the notifications carry webhook-id, webhook-timestamp, webhook-signature.
    pub webhook_secret: Option<String>,
}

impl RawAlert {
    fn validate(self, key: &str, config: &super::Config) -> Result<AlertRule, String> {
        if !super::valid_name(&self.name) {
            return Err(format!(
                "{key}.name: \"{}\" must be letters, digits, '-', '_' or '.'",
                self.name
            ));
        }
        let dur =
            |field: &str, v: &Option<String>, default: Duration| -> Result<Duration, String> {
                match v {
                    None => Ok(default),
                    Some(s) => parse_duration(s).map_err(|e| format!("{key}.{field}: {e}")),
                }
            };
        let window = dur("window", &self.window, Duration::from_secs(900))?;
        if window.is_zero() {
            return Err(format!("{key}.window: must be longer than zero"));
        }
        let positive = |field: &str, v: Option<f64>, default: f64| -> Result<f64, String> {
            let v = v.unwrap_or(default);
            if v.is_finite() && v > 0.0 {
                Ok(v)
            } else {
                Err(format!("{key}.{field}: {v} must be a positive number"))
            }
        };
        let kind = match self.rule.as_str() {
            "retry_exhaustion" => RuleKind::RetryExhaustion {
                percent: positive("threshold_percent", self.threshold_percent, 1.0)?,
            },
            "throttled_spike" => RuleKind::ThrottledSpike {
                factor: positive("factor", self.factor, 3.0)?,
                baseline: dur("baseline", &self.baseline, Duration::from_secs(3600))?,
                min_count: self.min_count.unwrap_or(10),
            },
            "execution_failed" => RuleKind::ExecutionFailed,
            "retry_pending" => RuleKind::RetryPending,
            "oauth_broken" => RuleKind::OAuthBroken,
            "event_level" => {
                let level = self.level.as_deref().unwrap_or("error");
                RuleKind::EventLevel {
                    level: Level::parse(level).ok_or_else(|| {
                        format!(
                            "{key}.level: \"{level}\" is not a level; use debug, info, warn or error"
                        )
                    })?,
                }
            }
            "duration" => {
                let max = self
                    .max_duration
                    .as_ref()
                    .map(|d| parse_duration(d).map_err(|e| format!("{key}.max_duration: {e}")))
                    .transpose()?;
                let trend_factor = self
                    .trend_factor
                    .map(|f| positive("trend_factor", Some(f), 1.0))
                    .transpose()?;
                if max.is_none() && trend_factor.is_none() {
                    return Err(format!(
                        "{key}: a duration alert needs max_duration (e.g. \"30s\"), trend_factor \
                         (e.g. 1.5), or both"
                    ));
                }
                RuleKind::Duration {
                    max,
                    trend_days: self.trend_days.unwrap_or(7).clamp(1, 90),
                    trend_factor,
                }
            }
            other => {
                return Err(format!(
                    "{key}.rule: \"{other}\" is not a rule; use \"retry_exhaustion\", \
                     \"throttled_spike\", \"execution_failed\", \"retry_pending\", \
                     \"event_level\", \"duration\" or \"oauth_broken\""
                ))
            }
        };
        if let Some(u) = &self.upstream {
            if config.upstream(u).is_none() {
                return Err(format!(
                    "{key}.upstream: \"{u}\" is not a configured upstream"
                ));
            }
        }
        if let Some(q) = &self.queue {
            if config.queue(q).is_none() {
                return Err(format!("{key}.queue: \"{q}\" is not a configured queue"));
            }
        }
        let webhook_secret = match self.webhook_secret {
            None => None,
            Some(s) => {
                use base64::Engine;
                let decoded = s
                    .strip_prefix("whsec_")
                    .and_then(|k| base64::engine::general_purpose::STANDARD.decode(k).ok());
                if decoded.is_none_or(|k| k.len() < 16) {
                    return Err(format!(
                        "{key}.webhook_secret: not a Standard Webhooks secret; write \"whsec_\" \
                         and at least 16 bytes in base64 (e.g. \"whsec_$(openssl rand -base64 \
                         32)\"), preferably as ${{VARIABLE}}"
                    ));
                }
                Some(s)
            }
        };
        let mut webhooks = Vec::new();
        for (i, w) in self.webhooks.iter().enumerate() {
            // The same destination policy as job callbacks (`[callbacks] allow`).
            let url = config
                .callbacks
                .allow
                .check_url(w)
                .map_err(|e| format!("{key}.webhooks[{i}]: \"{w}\" {e}"))?;
            let uri: http::Uri = url
                .as_str()
                .parse()
                .map_err(|_| format!("{key}.webhooks[{i}]: \"{w}\" is not a URL"))?;
            webhooks.push(uri);
        }
        Ok(AlertRule {
            name: self.name,
            kind,
            upstream: self.upstream,
            queue: self.queue,
            window,
            webhooks,
            webhook_secret,
        })
    }
}
