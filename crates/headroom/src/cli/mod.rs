//! The `headroom` command's subcommands, compiled into the binary only: they use the service
//! library (`headroom`) and the mock upstream (`headroom_mock`) as any client would.

pub mod api;
pub mod budgets;
pub mod demo;
pub mod explain;
pub mod jobs;
pub mod mock;
pub mod observe;
pub mod providers;
pub mod serve;
pub mod simulate;
pub mod tenants;

use std::path::PathBuf;

/// Reads a file argument, where `-` or no argument means standard input.
pub fn read_input(path: Option<&PathBuf>) -> anyhow::Result<Vec<u8>> {
    use anyhow::Context;
    use std::io::Read;
    match path {
        Some(p) if p.as_os_str() != "-" => {
            std::fs::read(p).with_context(|| format!("cannot read {}", p.display()))
        }
        _ => {
            let mut buf = Vec::new();
            std::io::stdin()
                .read_to_end(&mut buf)
                .context("cannot read standard input")?;
            Ok(buf)
        }
    }
}
