//! `headroom providers`: the built-in provider presets, and one resolved as config.

use headroom::cfg::providers::{self, Provider};

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(subcommand)]
    command: Option<Command>,
    /// Print JSON instead of a table.
    #[arg(long, global = true)]
    json: bool,
}

#[derive(Debug, clap::Subcommand)]
enum Command {
    /// Print a preset as the `[[upstreams]]` entry it stands for (TOML), with its tiers, the
    /// vendor pages it follows and what it cannot know.
    ///
    /// Example: headroom providers show hubspot --tier pro
    #[command(verbatim_doc_comment)]
    Show {
        /// The provider, like hubspot or shopify-graphql.
        name: String,
        /// One of its plan tiers (default: the lowest the vendor documents).
        #[arg(long)]
        tier: Option<String>,
    },
}

pub fn run(args: Args) -> anyhow::Result<()> {
    match args.command {
        None => list(args.json),
        Some(Command::Show { name, tier }) => show(&name, tier.as_deref(), args.json),
    }
}

fn limits_of(p: &Provider) -> String {
    let (limits, tier) = p.default_limits();
    let limits: Vec<String> = limits.iter().map(|l| l.to_string()).collect();
    match (limits.is_empty(), tier) {
        (true, _) => "from its answers (and its routes)".to_string(),
        (false, Some(tier)) => format!("{} ({tier})", limits.join(" + ")),
        (false, None) => limits.join(" + "),
    }
}

fn list(json: bool) -> anyhow::Result<()> {
    let all = providers::all();
    if json {
        let rows: Vec<serde_json::Value> = all
            .iter()
            .map(|p| {
                serde_json::json!({
                    "name": p.name, "title": p.title, "tiers": p.tiers.keys().collect::<Vec<_>>(),
                    "default_tier": p.default_tier, "limits": limits_of(p), "reads": p.reads,
                    "learns": p.learns, "docs": p.docs,
                })
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&rows)?);
        return Ok(());
    }
    let width = all.iter().map(|p| p.name.len()).max().unwrap_or(8);
    let title = all.iter().map(|p| p.title.len()).max().unwrap_or(8);
    println!(
        "{:width$}  {:title$}  DEFAULT LIMITS (TIER)",
        "PROVIDER", "API"
    );
    for p in &all {
        println!("{:width$}  {:title$}  {}", p.name, p.title, limits_of(p));
    }
    println!(
        "\nUse one: [[upstreams]] name = \"crm\"  provider = \"hubspot\"  (tier = \"pro\").\n\
         See one: headroom providers show hubspot"
    );
    Ok(())
}

fn show(name: &str, tier: Option<&str>, json: bool) -> anyhow::Result<()> {
    let p = providers::find(name).ok_or_else(|| {
        anyhow::anyhow!(
            "\"{name}\" is not a provider; use one of: {}",
            providers::all()
                .iter()
                .map(|p| p.name.clone())
                .collect::<Vec<_>>()
                .join(", ")
        )
    })?;
    let resolved = providers::resolved_toml(&p, tier).map_err(|e| anyhow::anyhow!("{e}"))?;
    if json {
        let config: toml::Value = toml::from_str(&resolved)?;
        let mut v = serde_json::to_value(&p)?;
        v["resolved"] = serde_json::to_value(&config["upstreams"][0])?;
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    let mut out = format!("# {} (provider = \"{}\")\n", p.title, p.name);
    out.push_str(&format!("# Follows, as read on {}:\n", p.read_on));
    for d in &p.docs {
        out.push_str(&format!("#   {d}\n"));
    }
    out.push_str(&format!(
        "# Reads: {}\n# Learns: {}\n# Cannot know: {}\n",
        p.reads, p.learns, p.unknown
    ));
    if let Some(f) = &p.batch_format {
        out.push_str(&format!("# Batches: format = \"{f}\" on /v1/batches\n"));
    }
    if !p.tiers.is_empty() {
        out.push_str("# Tiers (tier = \"…\"):\n");
        let chosen = p.tier(tier).ok().flatten().map(|(n, _)| n.to_string());
        for (n, t) in &p.tiers {
            let mark = if chosen.as_deref() == Some(n) {
                " (this one)"
            } else {
                ""
            };
            out.push_str(&format!("#   {n}: {}{mark}\n", t.plans));
        }
    }
    if let Some(example) = &p.base_url_example {
        out.push_str(&format!(
            "# base_url is each account's own: write yours, like base_url = \"{example}\"\n"
        ));
    }
    out.push('\n');
    out.push_str(&resolved);
    print!("{out}");
    Ok(())
}
