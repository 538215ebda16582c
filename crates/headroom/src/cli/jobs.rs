//! `headroom jobs …`, `headroom batches …` and `headroom schedules …`: submit, show, list and
//! cancel durable work on a running `headroom serve` through its API.

use std::io::Read;

use anyhow::Context;
use http::Method;
use serde_json::{json, Value};

use super::api::{print_json, seg, Api, ServerArgs};

#[derive(Debug, clap::Args)]
pub struct JobsArgs {
    #[command(subcommand)]
    pub command: JobsCommand,
    #[command(flatten)]
    pub server: ServerArgs,
}

#[derive(Debug, clap::Subcommand)]
pub enum JobsCommand {
    /// Submit a job: its JSON (as `POST /v1/jobs` takes it) from FILE or standard input.
    ///
    ///   echo '{"upstream":"crm","tenant":"acme","request":{"method":"POST","path":"/x","body":{}}}' \
    ///     | headroom jobs submit
    #[command(verbatim_doc_comment)]
    Submit {
        /// The job's JSON; `-` or nothing reads standard input.
        #[arg(value_name = "FILE|-")]
        file: Option<std::path::PathBuf>,
    },
    /// Show a job: status, response and every attempt with its rate-limit headers.
    Get { id: String },
    /// List jobs, oldest first, one page at a time.
    List {
        /// queued, running, retry_pending, succeeded, failed or cancelled.
        #[arg(long)]
        status: Option<String>,
        #[arg(long)]
        tenant: Option<String>,
        #[arg(long)]
        queue: Option<String>,
        /// The `next_cursor` of the previous page.
        #[arg(long)]
        cursor: Option<String>,
        #[arg(long, default_value_t = 100)]
        limit: u32,
    },
    /// Cancel a job that is queued or waiting for a retry.
    Cancel { id: String },
}

#[derive(Debug, clap::Args)]
pub struct IntakeArgs {
    #[command(subcommand)]
    pub command: IntakeCommand,
    #[command(flatten)]
    pub server: ServerArgs,
}

#[derive(Debug, clap::Subcommand)]
pub enum IntakeCommand {
    /// List received webhook events (with the state of the job each became), oldest first,
    /// one page at a time, as JSON.
    ///
    ///   headroom intake list --source shopify --status failed
    #[command(verbatim_doc_comment)]
    List {
        /// A configured `[[sources]]` name.
        #[arg(long)]
        source: Option<String>,
        #[arg(long)]
        tenant: Option<String>,
        /// The job's: queued, running, retry_pending, succeeded, failed or cancelled.
        #[arg(long)]
        status: Option<String>,
        /// The `next_cursor` of the previous page.
        #[arg(long)]
        cursor: Option<String>,
        #[arg(long, default_value_t = 100)]
        limit: u32,
    },
    /// Process an event again: a new job with the same call. JOB is the job the event became
    /// (`job` in `intake list`).
    Replay { job: String },
}

pub fn run_intake(args: IntakeArgs) -> anyhow::Result<()> {
    let api = Api::new(&args.server.server)?;
    let body = match args.command {
        IntakeCommand::List {
            source,
            tenant,
            status,
            cursor,
            limit,
        } => {
            let mut query = vec![format!("limit={limit}")];
            for (k, v) in [
                ("source", source),
                ("tenant", tenant),
                ("status", status),
                ("cursor", cursor),
            ] {
                if let Some(v) = v {
                    query.push(format!("{k}={}", seg(&v)));
                }
            }
            api.call(
                Method::GET,
                &format!("/v1/intake/events?{}", query.join("&")),
                None,
            )?
        }
        IntakeCommand::Replay { job } => api.call(
            Method::POST,
            &format!("/v1/intake/events/{}/replay", seg(&job)),
            None,
        )?,
    };
    print_json(&body);
    Ok(())
}

#[derive(Debug, clap::Args)]
pub struct BatchesArgs {
    #[command(subcommand)]
    pub command: BatchesCommand,
    #[command(flatten)]
    pub server: ServerArgs,
}

#[derive(Debug, clap::Subcommand)]
pub enum BatchesCommand {
    /// Submit a batch: its JSON (as `POST /v1/batches` takes it) from FILE or standard input.
    Submit {
        #[arg(value_name = "FILE|-")]
        file: Option<std::path::PathBuf>,
    },
    /// Show a batch: counts and every failed record with its error.
    Get { id: String },
    /// List batches, oldest first, one page at a time (JSON with `next_cursor`).
    List {
        /// queued, running, succeeded, completed_with_failures or cancelled.
        #[arg(long)]
        status: Option<String>,
        #[arg(long)]
        tenant: Option<String>,
        #[arg(long)]
        upstream: Option<String>,
        /// The `next_cursor` of the previous page.
        #[arg(long)]
        cursor: Option<String>,
        #[arg(long, default_value_t = 100)]
        limit: u32,
    },
    /// Cancel a batch's pending records.
    Cancel { id: String },
}

/// A JSON document from a file or standard input, checked before it is sent.
fn read_json(file: Option<&std::path::Path>) -> anyhow::Result<Value> {
    let text = match file {
        Some(p) if p.as_os_str() != "-" => {
            std::fs::read_to_string(p).with_context(|| format!("cannot read {}", p.display()))?
        }
        _ => {
            let mut text = String::new();
            std::io::stdin()
                .lock()
                .read_to_string(&mut text)
                .context("cannot read standard input")?;
            text
        }
    };
    serde_json::from_str(&text).context("the input is not valid JSON")
}

pub fn run_jobs(args: JobsArgs) -> anyhow::Result<()> {
    let api = Api::new(&args.server.server)?;
    let body = match args.command {
        JobsCommand::Submit { file } => {
            api.call(Method::POST, "/v1/jobs", Some(read_json(file.as_deref())?))?
        }
        JobsCommand::Get { id } => {
            api.call(Method::GET, &format!("/v1/jobs/{}", seg(&id)), None)?
        }
        JobsCommand::List {
            status,
            tenant,
            queue,
            cursor,
            limit,
        } => {
            let mut query = vec![format!("limit={limit}")];
            for (k, v) in [
                ("status", status),
                ("tenant", tenant),
                ("queue", queue),
                ("cursor", cursor),
            ] {
                if let Some(v) = v {
                    query.push(format!("{k}={}", seg(&v)));
                }
            }
            api.call(Method::GET, &format!("/v1/jobs?{}", query.join("&")), None)?
        }
        JobsCommand::Cancel { id } => {
            api.call(Method::DELETE, &format!("/v1/jobs/{}", seg(&id)), None)?
        }
    };
    print_json(&body);
    Ok(())
}

pub fn run_batches(args: BatchesArgs) -> anyhow::Result<()> {
    let api = Api::new(&args.server.server)?;
    let body = match args.command {
        BatchesCommand::Submit { file } => api.call(
            Method::POST,
            "/v1/batches",
            Some(read_json(file.as_deref())?),
        )?,
        BatchesCommand::List {
            status,
            tenant,
            upstream,
            cursor,
            limit,
        } => {
            let mut query = vec![format!("limit={limit}")];
            for (k, v) in [
                ("status", status),
                ("tenant", tenant),
                ("upstream", upstream),
                ("cursor", cursor),
            ] {
                if let Some(v) = v {
                    query.push(format!("{k}={}", seg(&v)));
                }
            }
            api.call(
                Method::GET,
                &format!("/v1/batches?{}", query.join("&")),
                None,
            )?
        }
        BatchesCommand::Get { id } => {
            api.call(Method::GET, &format!("/v1/batches/{}", seg(&id)), None)?
        }
        BatchesCommand::Cancel { id } => {
            api.call(Method::DELETE, &format!("/v1/batches/{}", seg(&id)), None)?
        }
    };
    print_json(&body);
    Ok(())
}

#[derive(Debug, clap::Args)]
pub struct SchedulesArgs {
    #[command(subcommand)]
    pub command: SchedulesCommand,
    #[command(flatten)]
    pub server: ServerArgs,
}

#[derive(Debug, clap::Subcommand)]
pub enum SchedulesCommand {
    /// List every schedule (from the config file and created through the API).
    List,
    /// Show a schedule and the next run of each tenant.
    Get { name: String },
    /// Create a schedule: its JSON (as `POST /v1/schedules` takes it) from FILE or standard
    /// input.
    ///
    ///   echo '{"name":"nightly","cron":"0 2 * * *","timezone":"Europe/Berlin",
    ///          "tenants":{"with_credential":"crm"},"stagger":"30m",
    ///          "job":{"upstream":"crm","request":{"method":"POST","path":"/sync"}}}' \
    ///     | headroom schedules create
    #[command(verbatim_doc_comment)]
    Create {
        /// The schedule's JSON; `-` or nothing reads standard input.
        #[arg(value_name = "FILE|-")]
        file: Option<std::path::PathBuf>,
    },
    /// Stop a schedule's runs until it is resumed.
    Pause { name: String },
    /// Start a paused schedule again, from now (the paused time is not caught up).
    Resume { name: String },
    /// Delete a schedule created through the API, with its runs.
    Delete { name: String },
    /// List a schedule's runs, oldest first, one page at a time: fired, skipped,
    /// succeeded, failed.
    Runs {
        name: String,
        #[arg(long)]
        tenant: Option<String>,
        /// The `next_cursor` of the previous page.
        #[arg(long)]
        cursor: Option<String>,
        #[arg(long, default_value_t = 100)]
        limit: u32,
    },
}

pub fn run_schedules(args: SchedulesArgs) -> anyhow::Result<()> {
    let api = Api::new(&args.server.server)?;
    let one = |name: &str, action: &str| format!("/v1/schedules/{}{action}", seg(name));
    let body = match args.command {
        SchedulesCommand::List => api.call(Method::GET, "/v1/schedules", None)?,
        SchedulesCommand::Get { name } => api.call(Method::GET, &one(&name, ""), None)?,
        SchedulesCommand::Create { file } => api.call(
            Method::POST,
            "/v1/schedules",
            Some(read_json(file.as_deref())?),
        )?,
        SchedulesCommand::Pause { name } => {
            api.call(Method::POST, &one(&name, "/pause"), Some(json!({})))?
        }
        SchedulesCommand::Resume { name } => {
            api.call(Method::POST, &one(&name, "/resume"), Some(json!({})))?
        }
        SchedulesCommand::Delete { name } => api.call(Method::DELETE, &one(&name, ""), None)?,
        SchedulesCommand::Runs {
            name,
            tenant,
            cursor,
            limit,
        } => {
            let mut query = vec![format!("limit={limit}")];
            for (k, v) in [("tenant", tenant), ("cursor", cursor)] {
                if let Some(v) = v {
                    query.push(format!("{k}={}", seg(&v)));
                }
            }
            api.call(
                Method::GET,
                &format!("{}?{}", one(&name, "/runs"), query.join("&")),
                None,
            )?
        }
    };
    print_json(&body);
    Ok(())
}
