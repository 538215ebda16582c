//! `headroom simulate`: the pacing model against simulated upstreams, in virtual time.

use headroom_core::sim::{self, Scenario};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Run only the scenarios whose name contains this text (e.g. `leaky`, `hidden`).
    #[arg(long, value_name = "TEXT")]
    pub only: Option<String>,
    /// How many windows of the upstream's limit each scenario runs for.
    #[arg(long, default_value_t = 60)]
    pub windows: u32,
    /// Seed for arrivals and jitter; the same seed replays the same run.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Print one JSON report per line instead of a table.
    #[arg(long)]
    pub json: bool,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let scenarios: Vec<Scenario> = Scenario::standard()
        .into_iter()
        .filter(|s| {
            args.only
                .as_ref()
                .is_none_or(|o| s.name.contains(o.as_str()))
        })
        .map(|mut s| {
            s.windows = args.windows;
            s.seed = args.seed;
            s
        })
        .collect();
    if scenarios.is_empty() {
        anyhow::bail!(
            "no scenario matches --only; names are: {}",
            Scenario::standard()
                .iter()
                .map(|s| s.name.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    if !args.json {
        println!(
            "{:<68} {:>11} {:>9} {:>10} {:>12} {:>12} {:>18}",
            "scenario",
            "utilisation",
            "throttled",
            "max/window",
            "rt p99 wait",
            "interval",
            "after change"
        );
    }
    for s in &scenarios {
        let r = sim::run(s);
        if args.json {
            println!("{}", serde_json::to_string(&r)?);
        } else {
            // Utilisation of the new quota and the most sent in a window, after it changed.
            let after = match (r.utilisation_after_change, r.max_sent_after_change) {
                (Some(u), Some(m)) => format!("{:.1}% / {m}", u * 100.0),
                _ => "-".to_string(),
            };
            println!(
                "{:<68} {:>10.1}% {:>8.2}% {:>10} {:>10.0}ms {:>10.0}ms {:>18}",
                r.scenario,
                r.utilisation * 100.0,
                r.throttled_share * 100.0,
                r.max_sent_per_window,
                r.realtime_p99_wait_s * 1000.0,
                r.pacing_interval_s * 1000.0,
                after,
            );
        }
    }
    Ok(())
}
