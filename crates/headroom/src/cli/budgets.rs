//! `headroom budgets …`: see budgets and change one tenant's budget at run time, against a
//! running `headroom serve` (`/v1/budgets`). Output is JSON.

use http::Method;
use serde_json::{json, Map, Value};

use super::api::{print_json, seg, Api, ServerArgs};

#[derive(Debug, clap::Args)]
pub struct BudgetsArgs {
    #[command(subcommand)]
    pub command: BudgetsCommand,
    #[command(flatten)]
    pub server: ServerArgs,
}

#[derive(Debug, clap::Subcommand)]
pub enum BudgetsCommand {
    /// Every budget the server holds (limits with their source, remaining, reset, pace,
    /// pause, breaker, queues) and every override in force.
    List,
    /// One tenant's budget at an upstream: its override, the config it runs with, its state.
    Show { upstream: String, tenant: String },
    /// Change one tenant's budget at an upstream; what is not given stays as it is.
    ///
    /// Kept in the store and applied by every node on the tenant's next call. `--limit`
    /// replaces the upstream's configured limits for this tenant (repeat it for several);
    /// `--pause-for` holds every call of the tenant (proxy calls are refused with problem
    /// type tag:headroom,2026:budget-paused, jobs wait); `--resume` ends a pause; `--reset`
    /// drops a field (back to the upstream's config).
    ///
    /// Examples:
    ///
    ///   headroom budgets set crm acme --limit 190/10s --reason "Enterprise plan"
    ///   headroom budgets set openai acme --limit 90000/1m:points --headroom 0.9
    ///   headroom budgets set crm acme --pause-for 30m --reason "vendor asked us to stop"
    ///   headroom budgets set crm acme --resume
    ///   headroom budgets set crm acme --reset limits
    #[command(verbatim_doc_comment)]
    Set {
        upstream: String,
        tenant: String,
        /// A limit as QUOTA/WINDOW, with `:points` for cost-metered limits (100/10s,
        /// 250000/1d, 90000/1m:points).
        #[arg(long = "limit", value_name = "QUOTA/WINDOW[:points]", value_parser = parse_limit)]
        limits: Vec<Value>,
        /// The fraction of each quota to spend (above 0, at most 1).
        #[arg(long, value_name = "F")]
        headroom: Option<f64>,
        #[arg(long, value_name = "N")]
        max_concurrency: Option<u32>,
        /// Hold every call for this long from now (30m, 2h).
        #[arg(long, value_name = "DUR", conflicts_with_all = ["paused_until", "resume"])]
        pause_for: Option<String>,
        /// Hold every call until this time (RFC 3339).
        #[arg(long, value_name = "TIME", conflicts_with = "resume")]
        paused_until: Option<String>,
        /// End a pause.
        #[arg(long)]
        resume: bool,
        /// Why, for whoever looks next.
        #[arg(long, value_name = "TEXT")]
        reason: Option<String>,
        /// Drop these fields of the override (limits, headroom, max_concurrency, reason).
        #[arg(long, value_name = "FIELD", value_delimiter = ',')]
        reset: Vec<String>,
    },
    /// Remove a tenant's override: the upstream's config applies again.
    Clear { upstream: String, tenant: String },
}

/// `100/10s` or `90000/1m:points` as the API's limit object.
fn parse_limit(s: &str) -> Result<Value, String> {
    let shape = "use QUOTA/WINDOW, like 100/10s, or 90000/1m:points";
    let (body, unit) = match s.rsplit_once(':') {
        Some((b, u)) if u == "points" || u == "requests" => (b, Some(u)),
        Some(_) => return Err(format!("\"{s}\": the unit after ':' is points or requests")),
        None => (s, None),
    };
    let (quota, window) = body
        .split_once('/')
        .ok_or_else(|| format!("\"{s}\": {shape}"))?;
    let quota: f64 = quota
        .trim()
        .parse()
        .map_err(|_| format!("\"{s}\": the quota is not a number; {shape}"))?;
    let mut limit = json!({ "quota": quota, "window": window.trim() });
    if let Some(u) = unit {
        limit["unit"] = json!(u);
    }
    Ok(limit)
}

pub fn run(args: BudgetsArgs) -> anyhow::Result<()> {
    let api = Api::new(&args.server.server)?;
    let path = |u: &str, t: &str| format!("/v1/budgets/{}/{}", seg(u), seg(t));
    match args.command {
        BudgetsCommand::List => print_json(&api.call(Method::GET, "/v1/budgets", None)?),
        BudgetsCommand::Show { upstream, tenant } => {
            print_json(&api.call(Method::GET, &path(&upstream, &tenant), None)?)
        }
        BudgetsCommand::Set {
            upstream,
            tenant,
            limits,
            headroom,
            max_concurrency,
            pause_for,
            paused_until,
            resume,
            reason,
            reset,
        } => {
            let mut patch = Map::new();
            for field in reset {
                patch.insert(field, Value::Null);
            }
            if !limits.is_empty() {
                patch.insert("limits".into(), Value::Array(limits));
            }
            if let Some(h) = headroom {
                patch.insert("headroom".into(), json!(h));
            }
            if let Some(c) = max_concurrency {
                patch.insert("max_concurrency".into(), json!(c));
            }
            if let Some(d) = pause_for {
                patch.insert("pause_for".into(), json!(d));
            }
            if let Some(t) = paused_until {
                patch.insert("paused_until".into(), json!(t));
            }
            if resume {
                patch.insert("paused_until".into(), Value::Null);
            }
            if let Some(r) = reason {
                patch.insert("reason".into(), json!(r));
            }
            if patch.is_empty() {
                anyhow::bail!(
                    "nothing to change: give --limit, --headroom, --max-concurrency, \
                     --pause-for, --paused-until, --resume, --reason or --reset"
                );
            }
            let body = api.call(
                Method::PATCH,
                &path(&upstream, &tenant),
                Some(Value::Object(patch)),
            )?;
            print_json(&body);
        }
        BudgetsCommand::Clear { upstream, tenant } => {
            api.call(Method::DELETE, &path(&upstream, &tenant), None)?;
            println!("removed the budget override of tenant {tenant} at upstream {upstream}");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_are_read_as_quota_per_window() {
        assert_eq!(
            parse_limit("100/10s").unwrap(),
            json!({"quota": 100.0, "window": "10s"})
        );
        assert_eq!(
            parse_limit("90000/1m:points").unwrap(),
            json!({"quota": 90000.0, "window": "1m", "unit": "points"})
        );
        assert!(parse_limit("100").unwrap_err().contains("QUOTA/WINDOW"));
        assert!(parse_limit("lots/1s").unwrap_err().contains("not a number"));
        assert!(parse_limit("5/1s:tokens")
            .unwrap_err()
            .contains("points or requests"));
    }
}
