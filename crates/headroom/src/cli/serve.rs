//! `headroom serve` (the server itself is `headroom::server`) and `headroom check-config`.

use std::net::SocketAddr;
use std::path::PathBuf;

#[derive(Debug, clap::Args)]
pub struct ServeArgs {
    /// The TOML config (upstreams, limits, store). Without one, Headroom runs with no
    /// upstreams.
    #[arg(long, short, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Address to listen on; overrides `listen` in the config (default 127.0.0.1:7878).
    #[arg(long, value_name = "ADDR")]
    pub listen: Option<SocketAddr>,
    /// How logs are written on stderr: `json` (one object per line, for collectors) or
    /// `text` (for people).
    #[arg(
        long,
        value_name = "FORMAT",
        env = "HEADROOM_LOG_FORMAT",
        default_value = "json"
    )]
    pub log_format: LogFormat,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum LogFormat {
    Json,
    Text,
}

/// `headroom serve`.
pub fn run(args: ServeArgs) -> anyhow::Result<()> {
    let text = matches!(args.log_format, LogFormat::Text);
    headroom::server::run(args.config.as_ref(), args.listen, text)
}

/// `headroom check-config FILE`: validates a config and says what it found.
pub fn check_config(path: &std::path::Path) -> anyhow::Result<()> {
    let config = headroom::cfg::Config::load(path)?;
    headroom::schedules::from_config(&config)
        .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    let schedules = if config.schedules.is_empty() {
        String::new()
    } else {
        format!(
            "; {} schedule{}: {}",
            config.schedules.len(),
            if config.schedules.len() == 1 { "" } else { "s" },
            config
                .schedules
                .iter()
                .map(|s| s.name.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        )
    };
    let upstreams = match config.upstreams.len() {
        0 => "no upstreams".to_string(),
        n => format!(
            "{n} upstream{}: {}",
            if n == 1 { "" } else { "s" },
            config
                .upstreams
                .iter()
                .map(|u| u.name.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    };
    println!("{}: ok ({upstreams}{schedules})", path.display());
    Ok(())
}
