//! `headroom mock`: serves the mock upstream (`headroom_mock`) until Ctrl-C.

use std::time::Duration;

use anyhow::Context;
use headroom_core::duration::parse_duration;
use headroom_mock::{MockConfig, Profile};
use tokio::net::TcpListener;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Address to listen on.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:9090")]
    pub listen: String,
    /// Which provider's limits and headers to imitate.
    #[arg(long, value_enum, default_value_t = Profile::Ietf)]
    pub profile: Profile,
    /// Calls each tenant may make per window (the bucket size for `shopify`, tokens for
    /// `openai`).
    #[arg(long, value_name = "N", default_value_t = 100,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub limit: u32,
    /// The window of the limit (for `shopify`, the time a full bucket takes to drain).
    #[arg(long, value_name = "DUR", default_value = "10s", value_parser = parse_window)]
    pub window: Duration,
    /// Delay added to every response.
    #[arg(long, value_name = "DUR", default_value = "0ms", value_parser = parse_latency)]
    pub latency: Duration,
    /// Share of each tenant's quota (0 to 1) that a hidden client spends, evenly over each
    /// window, as another integration on the same credential would.
    #[arg(long, value_name = "F", default_value_t = 0.0, value_parser = parse_share)]
    pub hidden_share: f64,
    /// Change every tenant's limit to `--limit-after` this long after the start (a plan
    /// change): `--limit-change-at 30s --limit-after 50`.
    #[arg(long, value_name = "DUR", value_parser = parse_latency, requires = "limit_after")]
    pub limit_change_at: Option<Duration>,
    /// The limit from `--limit-change-at` on.
    #[arg(long, value_name = "N", requires = "limit_change_at",
          value_parser = clap::value_parser!(u32).range(1..))]
    pub limit_after: Option<u32>,
    /// Also serve a mock OAuth 2.0 provider on this address: `POST /oauth/token` (grants
    /// `refresh_token` and `client_credentials`; client id `client`, secret `secret`, Basic or
    /// in the body), `POST /_mock/oauth/grant` for a fresh grant, `POST /_mock/oauth/revoke`,
    /// `GET /_mock/oauth/stats`; every other path is an API that wants a current token.
    #[arg(long, value_name = "ADDR")]
    pub oauth: Option<String>,
    /// How long the OAuth provider's access tokens live.
    #[arg(long, value_name = "DUR", default_value = "1h", value_parser = parse_window, requires = "oauth")]
    pub oauth_token_lifetime: Duration,
    /// Rotate refresh tokens; a used one keeps working this long (`0s`: not at all).
    #[arg(long, value_name = "DUR", value_parser = parse_latency, requires = "oauth")]
    pub oauth_rotate: Option<Duration>,
    /// Delay on every answer of the token endpoint.
    #[arg(long, value_name = "DUR", default_value = "0ms", value_parser = parse_latency, requires = "oauth")]
    pub oauth_latency: Duration,
}

fn parse_window(s: &str) -> Result<Duration, String> {
    let d = parse_duration(s).map_err(|e| e.to_string())?;
    if d < Duration::from_millis(1) {
        return Err("the window must be at least 1ms".into());
    }
    Ok(d)
}

fn parse_latency(s: &str) -> Result<Duration, String> {
    parse_duration(s).map_err(|e| e.to_string())
}

fn parse_share(s: &str) -> Result<f64, String> {
    match s.trim().parse::<f64>() {
        Ok(f) if (0.0..=1.0).contains(&f) => Ok(f),
        _ => Err(format!("\"{s}\" is not a share between 0 and 1, like 0.3")),
    }
}

/// `headroom mock`: serves until Ctrl-C.
pub fn run(args: Args) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
    runtime.block_on(async {
        let listener = TcpListener::bind(&args.listen)
            .await
            .with_context(|| format!("cannot listen on {}", args.listen))?;
        let config = MockConfig {
            profile: args.profile,
            limit: args.limit,
            window: args.window,
            latency: args.latency,
            hidden_share: args.hidden_share,
            limit_change: args.limit_change_at.zip(args.limit_after),
        };
        let mock = headroom_mock::spawn(listener, config).await?;
        println!(
            "mock upstream ({}) listening on {}",
            mock.config().describe(),
            mock.url()
        );
        if args.profile == Profile::SalesforceBulk2 {
            println!(
                "Bulk API 2.0 ingest at {}/services/data/v62.0/jobs/ingest (any vNN.N); \
                 GET /_mock/bulk/stats, GET or POST /_mock/bulk/config",
                mock.url()
            );
        }
        let _oauth = match &args.oauth {
            Some(addr) => {
                let listener = TcpListener::bind(addr)
                    .await
                    .with_context(|| format!("--oauth: cannot listen on {addr}"))?;
                let config = headroom_mock::oauth::OAuthMockConfig {
                    token_lifetime: args.oauth_token_lifetime,
                    rotate: args.oauth_rotate.is_some(),
                    reuse_grace: args.oauth_rotate.unwrap_or_default(),
                    token_latency: args.oauth_latency,
                    ..Default::default()
                };
                let oauth = headroom_mock::oauth::spawn(listener, config).await?;
                println!(
                    "mock OAuth provider listening on {} (token endpoint {}/oauth/token)",
                    oauth.url(),
                    oauth.url()
                );
                Some(oauth)
            }
            None => None,
        };
        tokio::signal::ctrl_c()
            .await
            .context("cannot wait for Ctrl-C")?;
        mock.shutdown().await;
        Ok(())
    })
}
