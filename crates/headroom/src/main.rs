//! The `headroom` command.

mod cli;

use std::path::PathBuf;

use clap::{Parser, Subcommand};

use cli::{budgets, demo, explain, jobs, mock, observe, providers, serve, simulate, tenants};

// A proxy allocates a little for every call on every thread; the system allocator's locking
// showed as 13 % of the CPU under load (BENCHMARKS.md, proxy overhead).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Headroom keeps your integrations under the rate limits of the APIs they call.
///
/// Send outbound calls through Headroom and it paces every call per customer and credential
/// from what the API itself reports (RateLimit, X-RateLimit-*, Retry-After, HubSpot, Shopify,
/// Salesforce…), keeps real-time work ahead of bulk work, and retries what can be retried.
#[derive(Debug, Parser)]
#[command(name = "headroom", version, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Read a raw HTTP response and print what it says about rate limits, as JSON
    ///
    /// The input is a response as it travels on the wire: a status line, headers, a blank line
    /// and an optional body. Relative times are computed against the response's `Date` header,
    /// else `--now`, else the clock.
    ///
    /// Example:
    ///
    ///   printf 'HTTP/1.1 429 Too Many Requests\r\nRetry-After: 2\r\n\r\n' | headroom explain
    #[command(verbatim_doc_comment)]
    Explain(explain::Args),

    /// Run the pacing model against simulated upstreams in virtual time and print a table.
    ///
    /// Each scenario drives Headroom's governor against an upstream that enforces its limit
    /// (fixed window, sliding window or leaky bucket, with or without rate-limit headers,
    /// alone or beside a hidden client spending part of the quota) and reports utilisation of
    /// `headroom × quota`, the throttled share, and the real-time lane's p99 wait.
    Simulate(simulate::Args),

    /// Run the governing proxy: send calls to /proxy/{upstream}/{path} and Headroom paces
    /// them under the upstream's limits.
    ///
    /// Point your HTTP client at http://127.0.0.1:7878/proxy/crm/… instead of
    /// https://api.example.com/… and add `Headroom-Tenant: acme` (whose budget it spends),
    /// `Headroom-Lane: bulk` for background work, `Headroom-Max-Wait: 30s` to wait longer.
    /// Without --config there are no upstreams. Logs go to stderr, JSON by default
    /// (--log-format text for people; HEADROOM_LOG=debug for more). With HEADROOM_API_TOKEN set, /v1 wants `Authorization: Bearer <token>` and
    /// /proxy `Proxy-Authorization: Bearer <token>`.
    #[command(verbatim_doc_comment)]
    Serve(serve::ServeArgs),

    /// Run a rate-limited mock upstream that speaks a chosen provider's rate-limit headers.
    ///
    /// Each caller (by its Authorization header; callers without one share a bucket) may make
    /// --limit calls per --window; more get 429. Any method and path is a call and gets a
    /// JSON echo. GET /_mock/stats shows counters, POST /_mock/reset clears them, and
    /// ?status=503 or ?sleep_ms=500 on any call forces a status or a delay.
    ///
    /// Example: a HubSpot-like API behind the proxy
    ///
    ///   headroom mock --profile hubspot --limit 100 --window 10s
    #[command(verbatim_doc_comment)]
    Mock(mock::Args),

    /// See Headroom work in 30 seconds: a bulk import and real-time calls against a
    /// rate-limited mock API, paced live, with a closing table.
    ///
    /// Starts a mock upstream (HubSpot-like: 100 calls per 10 s) and a Headroom server on
    /// loopback ports, then imports --records records through the proxy with many concurrent
    /// bulk workers while real-time calls arrive at random. Headroom holds the import to
    /// headroom × quota (80 calls per window, one every 125 ms), so the mock throttles
    /// nothing, and lets each real-time call pass the queued import. The table shows goodput
    /// per window against headroom × quota and the quota, the calls the mock throttled,
    /// Headroom's retries, the real-time wait (p50/p99) against the pacing interval, and the
    /// busiest window at the mock. Nothing outside the process is touched; Ctrl-C stops it.
    ///
    /// Examples:
    ///
    ///   headroom demo
    ///   headroom demo --profile shopify --hidden-share 0.3
    ///   headroom demo --records 160 --json
    ///   headroom demo --ui            (watch it in the console at http://127.0.0.1:7878/ui)
    #[command(verbatim_doc_comment)]
    Demo(demo::Args),

    /// Manage per-tenant upstream credentials on a running server (stored encrypted,
    /// injected by the proxy, never shown again).
    ///
    /// The credential is read from standard input, so it stays out of shell history. With
    /// HEADROOM_API_TOKEN set, the admin token is sent as a bearer token.
    ///
    /// Examples:
    ///
    ///   headroom tenants set acme crm < acme-crm.token
    ///   headroom tenants list acme
    ///   headroom tenants unset acme crm
    ///   headroom tenants --server http://10.0.0.5:7878 list acme
    #[command(verbatim_doc_comment)]
    Tenants(tenants::TenantsArgs),

    /// Create, list and revoke API tokens scoped to one tenant.
    ///
    /// A scoped token, sent as `Proxy-Authorization: Bearer <token>` to /proxy, acts as its
    /// tenant only. The token is printed once, at creation; Headroom keeps only its hash.
    ///
    /// Examples:
    ///
    ///   headroom tokens create --tenant acme
    ///   headroom tokens list --tenant acme
    ///   headroom tokens revoke tok_3f2a9c0b1d4e5f60
    #[command(verbatim_doc_comment)]
    Tokens(tenants::TokensArgs),

    /// See budgets, and change one tenant's budget at run time: other limits, headroom or
    /// concurrency, or a pause (kept in the store, applied by every node). Output is JSON.
    ///
    /// Examples:
    ///
    ///   headroom budgets list
    ///   headroom budgets show crm acme
    ///   headroom budgets set crm acme --limit 190/10s --reason "Enterprise plan"
    ///   headroom budgets set crm acme --pause-for 30m
    ///   headroom budgets clear crm acme
    #[command(verbatim_doc_comment)]
    Budgets(budgets::BudgetsArgs),

    /// Submit, show, list and cancel durable jobs on a running server.
    Jobs(jobs::JobsArgs),

    /// Submit, show and cancel batches (many records sent in chunks to a bulk endpoint).
    Batches(jobs::BatchesArgs),
    /// Start, show, cancel and download bulk exports (an API's query job read a page at a
    /// time into the store).
    Exports(jobs::ExportsArgs),

    /// List received webhook events (`[[sources]]`, POST /intake/{source}) and replay them.
    Intake(jobs::IntakeArgs),

    /// Create, list, show, pause, resume and delete schedules (per-tenant cron runs of a job
    /// or batch), and list their runs, on a running server. Output is JSON.
    ///
    /// Examples:
    ///
    ///   headroom schedules create nightly.json
    ///   headroom schedules list
    ///   headroom schedules runs nightly --tenant acme
    ///   headroom schedules pause nightly
    #[command(verbatim_doc_comment)]
    Schedules(jobs::SchedulesArgs),

    /// Search the event log (throttled responses, retries, backoffs, budget pauses, breaker
    /// changes, exhausted retries, failed jobs), oldest first; --follow keeps printing.
    ///
    /// Examples:
    ///
    ///   headroom events --level warn --upstream crm --since 1h
    ///   headroom events --tenant acme --follow
    #[command(verbatim_doc_comment)]
    Events(observe::EventsArgs),

    /// Show per upstream and tenant: utilisation, throttled rate, retry success, average
    /// backoff, queue depths, open alerts, and whether demand fits the budget (with an ETA
    /// for the backlog) or the backlog grows faster than the budget drains.
    Status(observe::StatusArgs),

    /// List the configured alerts, what is firing, and what resolved lately (JSON).
    Alerts(observe::AlertsArgs),

    /// List the built-in provider presets (HubSpot, Salesforce, Shopify, GitHub, Stripe…), or
    /// print one as the config it stands for.
    ///
    /// An upstream written as `provider = "hubspot"` takes the preset's base URL, limits (of
    /// `tier = "…"`, else the lowest tier), endpoint routes, retry statuses and idempotency
    /// header; every key the upstream writes itself wins.
    ///
    /// Examples:
    ///
    ///   headroom providers
    ///   headroom providers show shopify-graphql --tier plus
    #[command(verbatim_doc_comment)]
    Providers(providers::Args),

    /// Check a config file and say what is wrong with it, naming the key.
    CheckConfig {
        /// The TOML config to check.
        #[arg(value_name = "FILE")]
        file: PathBuf,
    },

    /// Print a shell completion script for `headroom` on standard output.
    ///
    /// Examples:
    ///
    ///   headroom completions bash > /etc/bash_completion.d/headroom
    ///   headroom completions zsh > "${fpath[1]}/_headroom"
    ///   headroom completions fish > ~/.config/fish/completions/headroom.fish
    #[command(verbatim_doc_comment)]
    Completions {
        #[arg(value_name = "SHELL")]
        shell: clap_complete::Shell,
    },

    /// Print the manual page (roff) on standard output.
    ///
    /// Example: headroom man > /usr/local/share/man/man1/headroom.1
    Man,

    /// Print the OpenAPI 3.1 document of the HTTP API (as a server serves it at /openapi.json).
    ///
    /// Generate a client from it, or check a change of the API against the committed
    /// openapi.json.
    ///
    /// Example: headroom openapi > openapi.json
    Openapi,
}

/// Writes `bytes` to standard output; a reader that stops early (`| head`) is not an error.
fn print_bytes(bytes: &[u8]) -> anyhow::Result<()> {
    use std::io::Write;
    match std::io::stdout().lock().write_all(bytes) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(e.into()),
        _ => Ok(()),
    }
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Explain(args) => explain::run(args),
        Command::Simulate(args) => simulate::run(args),
        Command::Serve(args) => serve::run(args),
        Command::Mock(args) => mock::run(args),
        Command::Demo(args) => demo::run(args),
        Command::Tenants(args) => tenants::run_tenants(args),
        Command::Tokens(args) => tenants::run_tokens(args),
        Command::CheckConfig { file } => serve::check_config(&file),
        Command::Providers(args) => providers::run(args),
        Command::Budgets(args) => budgets::run(args),
        Command::Jobs(args) => jobs::run_jobs(args),
        Command::Intake(args) => jobs::run_intake(args),
        Command::Batches(args) => jobs::run_batches(args),
        Command::Exports(args) => jobs::run_exports(args),
        Command::Schedules(args) => jobs::run_schedules(args),
        Command::Events(args) => observe::run_events(args),
        Command::Status(args) => observe::run_status(args),
        Command::Alerts(args) => observe::run_alerts(args),
        Command::Completions { shell } => {
            use clap::CommandFactory;
            let mut script = Vec::new();
            clap_complete::generate(shell, &mut Cli::command(), "headroom", &mut script);
            print_bytes(&script)
        }
        Command::Openapi => print_bytes(headroom::http::openapi::json().as_bytes()),
        Command::Man => {
            use clap::CommandFactory;
            let mut page = Vec::new();
            clap_mangen::Man::new(Cli::command())
                .render(&mut page)
                .map_err(anyhow::Error::from)
                .and_then(|()| print_bytes(&page))
        }
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::from(2)
        }
    }
}
