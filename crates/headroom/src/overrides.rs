//! Operators' changes to one tenant's budget at one upstream, made at run time
//! (`PATCH /v1/budgets/{upstream}/{tenant}`): other limits, headroom or concurrency, or a
//! pause. They are kept in the store, so every node sees them (a shared store is re-read
//! every few seconds), and turned here into the config the tenant's budget runs with; the
//! governor takes a budget's new config on its next call.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};

use headroom_core::{BudgetConfig, Timestamp};
use serde::{Deserialize, Serialize};

use crate::cfg::{Config, RawLimit, Upstream};
use crate::clock::Millis;

/// A budget: an upstream's index and the budget's key (as `outbound::governor::BudgetKey`).
pub type BudgetKey = (u32, Arc<str>);

/// What an operator changed of a budget; a field not set keeps the upstream's config.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BudgetOverride {
    /// In place of the upstream's configured limits, as in `[[upstreams.limits]]`
    /// (`{"quota": 100, "window": "10s"}`; `unit` and `name` optional). Limits learned from
    /// the API's headers still apply beside them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Vec<Object>>)]
    pub limits: Option<Vec<RawLimit>>,
    /// The fraction of each quota to spend, above 0 and at most 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub headroom: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_concurrency: Option<u32>,
    /// No call of the budget goes before this time (RFC 3339): calls are refused with
    /// problem type `tag:headroom,2026:budget-paused`, jobs wait.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub paused_until: Option<String>,
    /// Why, for whoever looks next (at most 500 characters).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

const MAX_REASON: usize = 500;

impl BudgetOverride {
    pub fn is_empty(&self) -> bool {
        *self == BudgetOverride::default()
    }

    /// The budget config of `upstream` with this override applied, checked: errors name the
    /// field at fault. `held_until` is the pause's end in governor time, if it is to come.
    pub fn apply(
        &self,
        upstream: &Upstream,
        held_until: Option<Timestamp>,
    ) -> Result<BudgetConfig, String> {
        let base = &upstream.budget_config;
        let mut config = BudgetConfig {
            held_until,
            ..(**base).clone()
        };
        if let Some(limits) = &self.limits {
            config.limits = limits
                .iter()
                .enumerate()
                .map(|(i, l)| l.clone().validate(&format!("limits[{i}]")))
                .collect::<Result<_, _>>()?;
            config.overridden = true;
        }
        if let Some(h) = self.headroom {
            config.headroom = h;
        }
        if let Some(c) = self.max_concurrency {
            config.max_concurrency = c;
        }
        if let Some(r) = &self.reason {
            if r.chars().count() > MAX_REASON {
                return Err(format!("reason: longer than {MAX_REASON} characters"));
            }
        }
        config.validate().map_err(|e| e.to_string())?;
        Ok(config)
    }

    /// `paused_until` in milliseconds since the epoch.
    pub fn paused_until_millis(&self) -> Result<Option<Millis>, String> {
        self.paused_until
            .as_deref()
            .map(|t| {
                chrono::DateTime::parse_from_rfc3339(t)
                    .map(|t| t.timestamp_millis())
                    .map_err(|e| {
                        format!("paused_until: \"{t}\" is not an RFC 3339 time ({e}), like \"2026-12-05T18:00:00Z\"")
                    })
            })
            .transpose()
    }
}

/// One override in force, as `/v1/budgets` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct Active {
    pub upstream: String,
    pub tenant: String,
    #[serde(rename = "override")]
    pub value: BudgetOverride,
    pub updated_at: String,
    #[serde(skip)]
    config: Arc<BudgetConfig>,
}

/// The overrides in force on this node.
#[derive(Default)]
pub struct Overrides {
    by_key: RwLock<HashMap<BudgetKey, Active>>,
    /// Whether there are any: a call looks them up only then.
    any: AtomicBool,
}

/// The key of a tenant's own budget at an upstream.
pub fn tenant_budget(tenant: &str) -> Arc<str> {
    Arc::from(format!("tenant:{tenant}"))
}

fn tenant_key(upstream: &Upstream, tenant: &str) -> BudgetKey {
    (upstream.index, tenant_budget(tenant))
}

impl Overrides {
    /// The config a budget runs with when an operator changed it.
    pub fn config(&self, key: &BudgetKey) -> Option<Arc<BudgetConfig>> {
        if !self.any.load(Ordering::Relaxed) {
            return None;
        }
        let map = self.by_key.read().unwrap_or_else(|e| e.into_inner());
        map.get(key).map(|a| Arc::clone(&a.config))
    }

    /// The override of a budget, if one is in force.
    pub fn get(&self, key: &BudgetKey) -> Option<Active> {
        let map = self.by_key.read().unwrap_or_else(|e| e.into_inner());
        map.get(key).cloned()
    }

    /// Every override in force.
    pub fn list(&self) -> Vec<Active> {
        let map = self.by_key.read().unwrap_or_else(|e| e.into_inner());
        let mut all: Vec<Active> = map.values().cloned().collect();
        all.sort_by(|a, b| (&a.upstream, &a.tenant).cmp(&(&b.upstream, &b.tenant)));
        all
    }

    /// Replaces what is in force with the store's rows. A row whose upstream is no longer
    /// configured (or no longer per tenant), or that no longer fits the config, is left out
    /// with a warning. An override unchanged since the last load keeps its config, so its
    /// budget is not reconfigured for nothing.
    ///
    /// Gives the budgets whose config changed (set, changed or cleared), each with the config
    /// it runs with now, so that budgets already held take it at once.
    pub fn load(
        &self,
        rows: Vec<crate::store::BudgetOverrideRow>,
        config: &Config,
        clocks: Clocks,
    ) -> Vec<(BudgetKey, Arc<BudgetConfig>)> {
        let previous = self
            .by_key
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let mut next = HashMap::with_capacity(rows.len());
        for row in rows {
            let Some(upstream) = config
                .upstream(&row.upstream)
                .filter(|u| u.budget == crate::cfg::BudgetScope::Tenant)
            else {
                tracing::debug!(upstream = %row.upstream, tenant = %row.tenant, "a budget override names an upstream that is not configured with a budget per tenant; it is ignored");
                continue;
            };
            let key = tenant_key(upstream, &row.tenant);
            if let Some(kept) = previous
                .get(&key)
                .filter(|a| a.updated_at == row.updated_at)
            {
                next.insert(key, kept.clone());
                continue;
            }
            match activate(upstream, &row.tenant, &row.value, row.updated_at, clocks) {
                Ok(active) => {
                    next.insert(key, active);
                }
                Err(e) => {
                    tracing::warn!(upstream = %row.upstream, tenant = %row.tenant, error = %e, "a stored budget override no longer fits the config; it is ignored")
                }
            }
        }
        let mut changed: Vec<(BudgetKey, Arc<BudgetConfig>)> = next
            .iter()
            .filter(|(k, a)| {
                previous
                    .get(*k)
                    .is_none_or(|p| !Arc::ptr_eq(&p.config, &a.config))
            })
            .map(|(k, a)| (k.clone(), Arc::clone(&a.config)))
            .collect();
        for key in previous.keys().filter(|k| !next.contains_key(*k)) {
            if let Some(upstream) = config.upstreams.get(key.0 as usize) {
                changed.push((key.clone(), Arc::clone(&upstream.budget_config)));
            }
        }
        self.any.store(!next.is_empty(), Ordering::Relaxed);
        *self.by_key.write().unwrap_or_else(|e| e.into_inner()) = next;
        changed
    }
}

/// The two clocks an override's pause is read with: the wall clock it is written in and the
/// governor's, which it is kept in.
#[derive(Debug, Clone, Copy)]
pub struct Clocks {
    pub wall_millis: Millis,
    pub governor: Timestamp,
}

impl Clocks {
    /// A wall-clock time as governor time, if it is still to come.
    fn governor_time(&self, wall: Millis) -> Option<Timestamp> {
        let ahead = wall.checked_sub(self.wall_millis).filter(|d| *d > 0)?;
        Some(self.governor + std::time::Duration::from_millis(ahead as u64))
    }
}

/// Checks a stored or submitted override against the upstream's config.
pub fn activate(
    upstream: &Upstream,
    tenant: &str,
    value: &str,
    updated_at: String,
    clocks: Clocks,
) -> Result<Active, String> {
    let value: BudgetOverride =
        serde_json::from_str(value).map_err(|e| format!("not an override: {e}"))?;
    let held_until = value
        .paused_until_millis()?
        .and_then(|t| clocks.governor_time(t));
    let config = value.apply(upstream, held_until)?;
    Ok(Active {
        upstream: upstream.name.clone(),
        tenant: tenant.to_string(),
        value,
        updated_at,
        config: Arc::new(config),
    })
}
