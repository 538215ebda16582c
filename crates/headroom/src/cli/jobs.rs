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
    ///
    /// With `--records-csv accounts.csv` the JSON is the batch without its records, and each
    /// row of the CSV (its first line names the fields) is one record; an empty cell leaves
    /// the field out.
    Submit {
        #[arg(value_name = "FILE|-")]
        file: Option<std::path::PathBuf>,
        /// A CSV file whose rows are the batch's records.
        #[arg(long, value_name = "CSV")]
        records_csv: Option<std::path::PathBuf>,
    },
    /// Show a batch: counts and every failed record with its error.
    Get {
        id: String,
        /// Print only the failures, as CSV (`index,record_id,error`), for a report.
        #[arg(long)]
        failures_csv: bool,
    },
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
        BatchesCommand::Submit { file, records_csv } => {
            let mut batch = read_json(file.as_deref())?;
            if let Some(csv) = records_csv {
                let Some(map) = batch.as_object_mut() else {
                    anyhow::bail!("the batch is not a JSON object");
                };
                if map.contains_key("records") {
                    anyhow::bail!(
                        "the batch has \"records\" and --records-csv gives them too; keep one"
                    );
                }
                map.insert("records".into(), Value::Array(records_from_csv(&csv)?));
            }
            api.call(Method::POST, "/v1/batches", Some(batch))?
        }
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
        BatchesCommand::Get { id, failures_csv } => {
            let path = match failures_csv {
                true => format!("/v1/batches/{}?failures_limit=100000", seg(&id)),
                false => format!("/v1/batches/{}", seg(&id)),
            };
            let body = api.call(Method::GET, &path, None)?;
            if failures_csv {
                let batch: Value =
                    serde_json::from_slice(&body).context("the batch's answer is not JSON")?;
                return print_failures_csv(&batch);
            }
            body
        }
        BatchesCommand::Cancel { id } => {
            api.call(Method::DELETE, &format!("/v1/batches/{}", seg(&id)), None)?
        }
    };
    print_json(&body);
    Ok(())
}

/// Each row of a CSV file as a record: `{field: value}` for its non-empty cells.
fn records_from_csv(path: &std::path::Path) -> anyhow::Result<Vec<Value>> {
    let mut reader =
        csv::Reader::from_path(path).with_context(|| format!("cannot read {}", path.display()))?;
    let header = reader
        .headers()
        .with_context(|| format!("{}: line 1 (the field names)", path.display()))?
        .clone();
    if let Some(empty) = header.iter().position(str::is_empty) {
        anyhow::bail!(
            "{}: line 1: column {} has no name",
            path.display(),
            empty + 1
        );
    }
    let mut records = Vec::new();
    for (n, row) in reader.records().enumerate() {
        let row = row.with_context(|| format!("{}: line {}", path.display(), n + 2))?;
        let record: serde_json::Map<String, Value> = header
            .iter()
            .zip(row.iter())
            .filter(|(_, v)| !v.is_empty())
            .map(|(k, v)| (k.to_string(), Value::String(v.to_string())))
            .collect();
        records.push(Value::Object(record));
    }
    Ok(records)
}

/// A batch's failures as CSV on standard output.
fn print_failures_csv(batch: &Value) -> anyhow::Result<()> {
    let mut out = csv::Writer::from_writer(std::io::stdout().lock());
    out.write_record(["index", "record_id", "error"])?;
    for f in batch["failures"].as_array().into_iter().flatten() {
        let text = |k: &str| match &f[k] {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        };
        out.write_record([text("index"), text("record_id"), text("error")])?;
    }
    out.flush()?;
    Ok(())
}

#[derive(Debug, clap::Args)]
pub struct ExportsArgs {
    #[command(subcommand)]
    pub command: ExportsCommand,
    #[command(flatten)]
    pub server: ServerArgs,
}

#[derive(Debug, clap::Subcommand)]
pub enum ExportsCommand {
    /// Start an export: its JSON (as `POST /v1/exports` takes it) from FILE or standard input.
    Submit {
        #[arg(value_name = "FILE|-")]
        file: Option<std::path::PathBuf>,
    },
    /// Show an export: its state, pages and records so far.
    Get { id: String },
    /// Write an export's stored pages as one CSV (one header line) to standard output.
    Download { id: String },
    /// Cancel an export: its query job is aborted.
    Cancel { id: String },
}

pub fn run_exports(args: ExportsArgs) -> anyhow::Result<()> {
    let api = Api::new(&args.server.server)?;
    let body = match args.command {
        ExportsCommand::Submit { file } => api.call(
            Method::POST,
            "/v1/exports",
            Some(read_json(file.as_deref())?),
        )?,
        ExportsCommand::Get { id } => {
            api.call(Method::GET, &format!("/v1/exports/{}", seg(&id)), None)?
        }
        ExportsCommand::Cancel { id } => {
            api.call(Method::DELETE, &format!("/v1/exports/{}", seg(&id)), None)?
        }
        ExportsCommand::Download { id } => return download_export(&api, &id),
    };
    print_json(&body);
    Ok(())
}

/// Every stored page in order; each page's header line after the first is left out.
fn download_export(api: &Api, id: &str) -> anyhow::Result<()> {
    use std::io::Write;
    let view: Value = serde_json::from_slice(&api.call(
        Method::GET,
        &format!("/v1/exports/{}", seg(id)),
        None,
    )?)
    .context("the export's answer is not JSON")?;
    if view["status"] != "succeeded" {
        anyhow::bail!(
            "export {id} is {} ({} pages so far); download it once it has succeeded",
            view["status"],
            view["pages"]
        );
    }
    let pages = view["pages"].as_u64().unwrap_or(0);
    let mut out = std::io::stdout().lock();
    for n in 1..=pages {
        let page = api.call(
            Method::GET,
            &format!("/v1/exports/{}/pages/{n}", seg(id)),
            None,
        )?;
        let body = if n == 1 {
            &page[..]
        } else {
            // The header is the first record: up to the first newline outside quotes.
            let mut quoted = false;
            let end = page
                .iter()
                .position(|&b| {
                    if b == b'"' {
                        quoted = !quoted;
                    }
                    b == b'\n' && !quoted
                })
                .map_or(page.len(), |i| i + 1);
            &page[end..]
        };
        out.write_all(body)?;
    }
    out.flush()?;
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
