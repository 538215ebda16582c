//! `headroom explain`: what a raw HTTP response says about rate limits.

use std::path::PathBuf;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The time relative resets are computed against when the response has no `Date` header:
    /// epoch seconds, an RFC 3339 time or an HTTP-date.
    #[arg(long, value_name = "TIME")]
    pub now: Option<String>,
    /// A file holding the raw response; `-` or nothing reads standard input.
    #[arg(value_name = "FILE|-")]
    pub file: Option<PathBuf>,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let _input = crate::read_input(args.file.as_ref())?;
    anyhow::bail!("explain is not implemented yet")
}
