//! What a schedule is, as written (config table or API body) and as checked, and the store
//! interface every backend implements.

use std::time::Duration;

use serde::Serialize;
use serde_json::Value;

use super::cron::CronSpec;
use crate::cfg::Config;
pub use crate::cfg::{ScheduleDef, TenantsDef};
use crate::clock::Millis;
pub use crate::store::model::schedules::*;

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
                    crate::jobs::request::check_tenant(t)
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
            Template::Job(v) => crate::jobs::request::job_from_value(config, v, tenant, created_at)
                .map(Enqueue::Job),
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
