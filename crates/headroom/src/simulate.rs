//! `headroom simulate`: the pacing model against simulated upstreams, in virtual time.

#[derive(Debug, clap::Args)]
pub struct Args {}

pub fn run(_args: Args) -> anyhow::Result<()> {
    anyhow::bail!("simulate is not implemented yet")
}
