//! `headroom tenants …` and `headroom tokens …`: the credential and token admin API from the
//! command line, against a running `headroom serve`.
//!
//! Credentials are read from standard input, never from arguments, so they stay out of shell
//! history and `ps`. With `HEADROOM_API_TOKEN` set, requests carry it as a bearer token.

use std::io::{BufRead, IsTerminal, Read};
use std::time::Duration;

use anyhow::Context;
use axum::body::Body;
use http::{header, Method, Request, StatusCode};
use http_body_util::BodyExt;
use percent_encoding::{utf8_percent_encode, AsciiSet, CONTROLS};
use serde_json::{json, Value};

use crate::credentials::check_credential_value;

const DEFAULT_SERVER: &str = "http://127.0.0.1:7878";
const TIMEOUT: Duration = Duration::from_secs(30);
/// Characters escaped in a path segment.
const SEGMENT: &AsciiSet = &CONTROLS
    .add(b' ')
    .add(b'"')
    .add(b'#')
    .add(b'%')
    .add(b'/')
    .add(b'<')
    .add(b'>')
    .add(b'?')
    .add(b'\\')
    .add(b'`')
    .add(b'{')
    .add(b'}');

/// Which Headroom to talk to.
#[derive(Debug, Clone, clap::Args)]
pub struct ServerArgs {
    /// The Headroom server (its `listen` address), as an http:// or https:// URL.
    #[arg(long, value_name = "URL", default_value = DEFAULT_SERVER, global = true)]
    pub server: String,
}

#[derive(Debug, clap::Args)]
pub struct TenantsArgs {
    #[command(subcommand)]
    pub command: TenantsCommand,
    #[command(flatten)]
    pub server: ServerArgs,
}

#[derive(Debug, clap::Subcommand)]
pub enum TenantsCommand {
    /// Store TENANT's credential for UPSTREAM, read from standard input
    ///
    /// The proxy then puts it on every call TENANT makes to UPSTREAM, in the upstream's
    /// credential header (Authorization: Bearer … unless the config says otherwise). One
    /// trailing newline is removed.
    ///
    /// Examples:
    ///
    ///   headroom tenants set acme crm < acme-crm.token
    ///   printf '%s' "$CRM_TOKEN" | headroom tenants set acme crm
    #[command(verbatim_doc_comment)]
    Set {
        /// The tenant, as sent in `Headroom-Tenant`.
        tenant: String,
        /// The upstream's name in the config.
        upstream: String,
    },
    /// Delete TENANT's credential for UPSTREAM.
    Unset { tenant: String, upstream: String },
    /// Show which upstreams TENANT has a credential for (never the credentials), as JSON.
    List { tenant: String },
}

#[derive(Debug, clap::Args)]
pub struct TokensArgs {
    #[command(subcommand)]
    pub command: TokensCommand,
    #[command(flatten)]
    pub server: ServerArgs,
}

#[derive(Debug, clap::Subcommand)]
pub enum TokensCommand {
    /// Create an API token scoped to a tenant and print it, as JSON. It is shown only once.
    ///
    /// A scoped token acts as its tenant only: on /proxy (as `Proxy-Authorization: Bearer
    /// <token>`) it needs no Headroom-Tenant header and cannot name another tenant.
    ///
    /// Example:
    ///
    ///   headroom tokens create --tenant acme
    #[command(verbatim_doc_comment)]
    Create {
        /// The tenant the token acts as.
        #[arg(long)]
        tenant: String,
    },
    /// Revoke a token by its id (the "id" that `tokens create` printed).
    Revoke { id: String },
    /// List tokens (ids, tenants, creation times; never the tokens), as JSON.
    List {
        /// Only this tenant's tokens.
        #[arg(long)]
        tenant: Option<String>,
    },
}

pub fn run_tenants(args: TenantsArgs) -> anyhow::Result<()> {
    let api = Api::new(&args.server.server)?;
    match args.command {
        TenantsCommand::Set { tenant, upstream } => {
            let credential = read_credential(&tenant, &upstream)?;
            api.call(
                Method::PUT,
                &format!(
                    "/v1/tenants/{}/credentials/{}",
                    seg(&tenant),
                    seg(&upstream)
                ),
                Some(json!({ "credential": credential })),
            )?;
            println!("stored the credential of tenant {tenant} for upstream {upstream}");
        }
        TenantsCommand::Unset { tenant, upstream } => {
            api.call(
                Method::DELETE,
                &format!(
                    "/v1/tenants/{}/credentials/{}",
                    seg(&tenant),
                    seg(&upstream)
                ),
                None,
            )?;
            println!("deleted the credential of tenant {tenant} for upstream {upstream}");
        }
        TenantsCommand::List { tenant } => {
            let body = api.call(
                Method::GET,
                &format!("/v1/tenants/{}/credentials", seg(&tenant)),
                None,
            )?;
            print_json(&body);
        }
    }
    Ok(())
}

pub fn run_tokens(args: TokensArgs) -> anyhow::Result<()> {
    let api = Api::new(&args.server.server)?;
    match args.command {
        TokensCommand::Create { tenant } => {
            let body = api.call(
                Method::POST,
                "/v1/tokens",
                Some(json!({ "tenant": tenant })),
            )?;
            print_json(&body);
        }
        TokensCommand::Revoke { id } => {
            api.call(Method::DELETE, &format!("/v1/tokens/{}", seg(&id)), None)?;
            println!("revoked token {id}");
        }
        TokensCommand::List { tenant } => {
            let path = match tenant {
                Some(t) => format!("/v1/tokens?tenant={}", seg(&t)),
                None => "/v1/tokens".to_string(),
            };
            let body = api.call(Method::GET, &path, None)?;
            print_json(&body);
        }
    }
    Ok(())
}

pub(crate) fn seg(s: &str) -> String {
    utf8_percent_encode(s, SEGMENT).to_string()
}

pub(crate) fn print_json(body: &[u8]) {
    match serde_json::from_slice::<Value>(body) {
        Ok(v) => println!(
            "{}",
            serde_json::to_string_pretty(&v).unwrap_or_else(|_| v.to_string())
        ),
        Err(_) => println!("{}", String::from_utf8_lossy(body)),
    }
}

/// The credential from standard input: one line when typed at a terminal, else all of it,
/// less one trailing newline.
fn read_credential(tenant: &str, upstream: &str) -> anyhow::Result<String> {
    let stdin = std::io::stdin();
    let mut text = String::new();
    if stdin.is_terminal() {
        eprint!("credential of tenant {tenant} for upstream {upstream}: ");
        stdin
            .lock()
            .read_line(&mut text)
            .context("cannot read the credential from standard input")?;
    } else {
        stdin
            .lock()
            .read_to_string(&mut text)
            .context("cannot read the credential from standard input (it must be text)")?;
    }
    let value = strip_newline(&text);
    if value.is_empty() {
        anyhow::bail!(
            "no credential on standard input; pipe it in, e.g. \
             `headroom tenants set {tenant} {upstream} < file`"
        );
    }
    check_credential_value(value).map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok(value.to_string())
}

fn strip_newline(text: &str) -> &str {
    match text.strip_suffix('\n') {
        Some(rest) => rest.strip_suffix('\r').unwrap_or(rest),
        None => text,
    }
}

/// A small client of the admin API.
pub(crate) struct Api {
    base: String,
    token: Option<String>,
    runtime: tokio::runtime::Runtime,
}

impl Api {
    pub(crate) fn new(server: &str) -> anyhow::Result<Api> {
        let base = server.trim_end_matches('/').to_string();
        let uri: http::Uri = base
            .parse()
            .map_err(|_| anyhow::anyhow!("--server: \"{server}\" is not a URL"))?;
        if !matches!(uri.scheme_str(), Some("http" | "https")) || uri.host().is_none() {
            anyhow::bail!(
                "--server: \"{server}\" must be an http:// or https:// URL, like {DEFAULT_SERVER}"
            );
        }
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("cannot start the async runtime")?;
        let token = std::env::var("HEADROOM_API_TOKEN")
            .ok()
            .filter(|t| !t.is_empty())
            .or_else(local_admin_token);
        Ok(Api {
            base,
            token,
            runtime,
        })
    }

    /// Sends a request; the response body on success, else an error with the server's
    /// problem detail.
    pub(crate) fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> anyhow::Result<Vec<u8>> {
        let url = format!("{}{path}", self.base);
        let mut builder = Request::builder().method(method.clone()).uri(&url);
        if let Some(token) = &self.token {
            let mut value = http::HeaderValue::from_str(&format!("Bearer {token}"))
                .context("HEADROOM_API_TOKEN is not a valid header value")?;
            value.set_sensitive(true);
            builder = builder.header(header::AUTHORIZATION, value);
        }
        let request = match body {
            Some(v) => builder
                .header(header::CONTENT_TYPE, "application/json")
                .body(Body::from(v.to_string())),
            None => builder.body(Body::empty()),
        }
        .with_context(|| format!("cannot build a request to {url}"))?;
        let base = self.base.clone();
        self.runtime.block_on(async move {
            let client = crate::client::build();
            let response = tokio::time::timeout(TIMEOUT, client.request(request))
                .await
                .map_err(|_| {
                    anyhow::anyhow!("{base} did not answer within {}s", TIMEOUT.as_secs())
                })?
                .map_err(|e| {
                    let mut cause = String::new();
                    let mut source = std::error::Error::source(&e);
                    while let Some(s) = source {
                        cause.push_str(&format!(": {s}"));
                        source = s.source();
                    }
                    anyhow::anyhow!(
                        "cannot reach Headroom at {base}{cause}; is `headroom serve` running \
                         there? (set --server URL)"
                    )
                })?;
            let status = response.status();
            let bytes = tokio::time::timeout(TIMEOUT, response.into_body().collect())
                .await
                .map_err(|_| anyhow::anyhow!("{base} did not finish its answer in time"))?
                .context("the answer broke off")?
                .to_bytes();
            if status.is_success() {
                return Ok(bytes.to_vec());
            }
            Err(anyhow::anyhow!("{}", problem_message(status, &bytes)))
        })
    }
}

/// The admin token that `headroom serve` generated next to the default database, when this
/// command runs where the server does (readable by this user only).
fn local_admin_token() -> Option<String> {
    let db = crate::cfg::DEFAULT_STORE.strip_prefix("sqlite://")?;
    let path = crate::auth::admin_token_file_for(std::path::Path::new(db));
    crate::auth::read_admin_token(&path).ok()
}

/// `404 Not Found: <detail>` from a problem+json answer, or the raw body.
fn problem_message(status: StatusCode, body: &[u8]) -> String {
    let detail = serde_json::from_slice::<Value>(body)
        .ok()
        .and_then(|v| v.get("detail").and_then(Value::as_str).map(str::to_string))
        .unwrap_or_else(|| String::from_utf8_lossy(body).trim().to_string());
    let mut message = format!("Headroom answered {status}");
    if !detail.is_empty() {
        message.push_str(": ");
        message.push_str(&detail);
    }
    if status == StatusCode::UNAUTHORIZED {
        message.push_str(
            " (set HEADROOM_API_TOKEN to the server's admin token: the one it printed on \
             first start, kept in admin.token next to its database)",
        );
    }
    message
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_trailing_newline_is_removed() {
        assert_eq!(strip_newline("abc\n"), "abc");
        assert_eq!(strip_newline("abc\r\n"), "abc");
        assert_eq!(strip_newline("abc"), "abc");
        assert_eq!(strip_newline("abc\n\n"), "abc\n");
    }

    #[test]
    fn problems_show_their_detail() {
        let m = problem_message(
            StatusCode::BAD_REQUEST,
            br#"{"type":"about:blank","status":400,"detail":"credential: missing"}"#,
        );
        assert_eq!(m, "Headroom answered 400 Bad Request: credential: missing");
        let m = problem_message(StatusCode::UNAUTHORIZED, b"");
        assert!(m.contains("HEADROOM_API_TOKEN"), "{m}");
        assert_eq!(seg("a b/c"), "a%20b%2Fc");
    }
}

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
