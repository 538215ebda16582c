//! What a schedule is, as written (config table or API body) and as checked, and the store
//! interface every backend implements.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::cron::CronSpec;
use crate::cfg::Config;
use crate::jobs::Millis;
pub use crate::store::model::schedules::*;

/// A schedule as written: `[[schedules]]` in the config or the body of `POST /v1/schedules`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScheduleDef {
    pub name: String,
    /// 5 fields (POSIX), or 6 with seconds first.
    pub cron: String,
    /// IANA time zone the cron fields are read in; UTC when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timezone: Option<String>,
    pub tenants: TenantsDef,
    /// A duration like "5m": each tenant's run is offset by a stable amount in [0, stagger).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stagger: Option<String>,
    /// "skip" (default) or "allow".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub overlap: Option<String>,
    /// "skip" (default) or "once".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub catch_up: Option<String>,
    /// A job as `POST /v1/jobs` takes it, without `tenant`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job: Option<Value>,
    /// A batch as `POST /v1/batches` takes it, without `tenant`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batch: Option<Value>,
}

/// The tenants a schedule runs for.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
pub enum TenantsDef {
    List(Vec<String>),
    /// Every tenant holding a credential for this upstream (looked up as they change).
    WithCredential {
        with_credential: String,
    },
}

// By hand: an untagged enum's error ("did not match any variant") does not say what to write.
impl<'de> Deserialize<'de> for TenantsDef {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        let wrong = || {
            D::Error::custom(
                "tenants: give a list of tenants, like [\"acme\", \"globex\"], or \
                 { with_credential = \"UPSTREAM\" } for every tenant holding a credential for it",
            )
        };
        match Value::deserialize(d)? {
            Value::Array(items) => items
                .into_iter()
                .map(|item| match item {
                    Value::String(s) => Ok(s),
                    _ => Err(wrong()),
                })
                .collect::<Result<Vec<_>, _>>()
                .map(TenantsDef::List),
            Value::Object(map) if map.len() == 1 => match map.get("with_credential") {
                Some(Value::String(upstream)) => Ok(TenantsDef::WithCredential {
                    with_credential: upstream.clone(),
                }),
                _ => Err(wrong()),
            },
            _ => Err(wrong()),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Overlap {
    /// Singleton: while the previous run of a tenant is unfinished, the new one is skipped.
    Skip,
    Allow,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CatchUp {
    /// Runs missed while Headroom was down are recorded as skipped.
    Skip,
    /// A tenant that missed one or more runs while Headroom was down runs once after the
    /// start, at its stagger offset.
    Once,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Tenants {
    List(Vec<String>),
    WithCredential(String),
}

#[derive(Debug, Clone, PartialEq)]
pub enum Template {
    Job(Value),
    Batch(Value),
}

/// A checked schedule.
#[derive(Debug, Clone)]
pub struct Schedule {
    pub def: ScheduleDef,
    pub cron: CronSpec,
    pub tenants: Tenants,
    pub stagger: Duration,
    pub overlap: Overlap,
    pub catch_up: CatchUp,
    pub template: Template,
}

impl Schedule {
    /// Checks a definition against the config (its upstream, queue…). Errors start with the
    /// key at fault (`cron: …`, `job.request.path: …`) for the caller to prefix.
    pub fn check(def: ScheduleDef, config: &Config) -> Result<Schedule, String> {
        if !crate::cfg::valid_name(&def.name) {
            return Err(format!(
                "name: \"{}\" must be 1 to 64 letters, digits, '-', '_' or '.' (it appears in URLs)",
                def.name
            ));
        }
        let cron = CronSpec::parse(&def.cron, def.timezone.as_deref())
            .map_err(|e| format!("{}: {e}", e.field()))?;
        let tenants = match &def.tenants {
            TenantsDef::List(list) => {
                if list.is_empty() {
                    return Err("tenants: give at least one tenant, or \
                                { with_credential = \"UPSTREAM\" }"
                        .to_string());
                }
                let mut seen = std::collections::HashSet::new();
                for (i, t) in list.iter().enumerate() {
                    crate::jobs::api::check_tenant(t)
                        .map_err(|e| format!("tenants[{i}]: {}", strip_key(&e.to_string())))?;
                    if !seen.insert(t) {
                        return Err(format!("tenants[{i}]: \"{t}\" is listed twice"));
                    }
                }
                Tenants::List(list.clone())
            }
            TenantsDef::WithCredential { with_credential } => {
                if config.upstream(with_credential).is_none() {
                    return Err(format!(
                        "tenants.with_credential: \"{with_credential}\" is not a configured upstream"
                    ));
                }
                Tenants::WithCredential(with_credential.clone())
            }
        };
        let stagger = match &def.stagger {
            None => Duration::ZERO,
            Some(s) => {
                headroom_core::duration::parse_duration(s).map_err(|e| format!("stagger: {e}"))?
            }
        };
        let overlap = match def.overlap.as_deref() {
            None | Some("skip") => Overlap::Skip,
            Some("allow") => Overlap::Allow,
            Some(other) => {
                return Err(format!(
                    "overlap: \"{other}\" is not an overlap policy; use \"skip\" or \"allow\""
                ))
            }
        };
        let catch_up = match def.catch_up.as_deref() {
            None | Some("skip") => CatchUp::Skip,
            Some("once") => CatchUp::Once,
            Some(other) => {
                return Err(format!(
                    "catch_up: \"{other}\" is not a catch-up policy; use \"skip\" or \"once\""
                ))
            }
        };
        let template = match (&def.job, &def.batch) {
            (Some(job), None) => Template::Job(job.clone()),
            (None, Some(batch)) => Template::Batch(batch.clone()),
            (Some(_), Some(_)) => {
                return Err("job: give either job or batch, not both".to_string());
            }
            (None, None) => {
                return Err("job: give the job (or batch) each run enqueues".to_string());
            }
        };
        let schedule = Schedule {
            def,
            cron,
            tenants,
            stagger,
            overlap,
            catch_up,
            template,
        };
        // Built once with a stand-in tenant, so that a bad template fails here, not at 3 am.
        schedule
            .enqueue("tenant-check", 0, config)
            .map_err(|e| e.to_string())?;
        Ok(schedule)
    }

    pub fn name(&self) -> &str {
        &self.def.name
    }

    /// The job or batch of one run for `tenant`, stamped `created_at`, checked against
    /// `config` like `POST /v1/jobs` or `POST /v1/batches` would.
    pub fn enqueue(
        &self,
        tenant: &str,
        created_at: Millis,
        config: &Config,
    ) -> Result<Enqueue, TemplateError> {
        let (key, value) = match &self.template {
            Template::Job(v) => ("job", v),
            Template::Batch(v) => ("batch", v),
        };
        if value.get("tenant").is_some() {
            return Err(TemplateError(format!(
                "{key}.tenant: leave it out; each run fills in its tenant"
            )));
        }
        match &self.template {
            Template::Job(v) => {
                crate::jobs::api::job_from_value(config, v, tenant, created_at).map(Enqueue::Job)
            }
            Template::Batch(v) => {
                crate::jobs::batches::batch_from_value(config, v, tenant, created_at)
                    .map(Enqueue::Batch)
            }
        }
        .map_err(|e| {
            TemplateError(match e.strip_prefix(": ") {
                Some(whole) => format!("{key}: {whole}"),
                None => format!("{key}.{e}"),
            })
        })
    }
}

/// Why a run's job or batch could not be made from the template (a message naming the key).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct TemplateError(pub String);

/// `tenant: "x" must be…` → `"x" must be…`, to put another key in front.
fn strip_key(message: &str) -> &str {
    message.split_once(": ").map_or(message, |(_, rest)| rest)
}
