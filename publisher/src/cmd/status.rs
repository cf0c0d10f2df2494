//! `status --notify URL --store-id ID [--region R] [--json]`: what every
//! answering agent serves, by region, version and state, naming the nodes
//! not on the newest version and why (the Envoy CSDS model over NATS).

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{Context, Result};

use crate::push::{NotifyArgs, gather, laggard};

/// Arguments of `status`.
#[derive(clap::Args)]
pub struct Args {
    /// Where the agents listen.
    #[command(flatten)]
    notify: NotifyArgs,
    /// Only this region's nodes.
    #[arg(long)]
    region: Option<String>,
    /// One JSON document: every node's reply.
    #[arg(long)]
    json: bool,
    /// How long replies are gathered.
    #[arg(long, default_value = "1s", value_parser = crate::push::parse_short_duration)]
    timeout: Duration,
}

/// Asks, gathers for `--timeout`, prints.
pub fn run(args: Args) -> Result<()> {
    let cfg = args
        .notify
        .config()?
        .context("status asks the agents over NATS: give --notify and --store-id")?;
    let nodes: Vec<_> = gather(&cfg, args.timeout)?
        .into_iter()
        .filter(|n| args.region.as_ref().is_none_or(|r| *r == n.region))
        .collect();
    if args.json {
        out_block!("{}", serde_json::to_string_pretty(&nodes)?)?;
        return Ok(());
    }
    out!("{} node(s) answered within {:?}", nodes.len(), args.timeout)?;
    let mut regions: BTreeMap<&str, Vec<_>> = BTreeMap::new();
    for n in &nodes {
        regions.entry(n.region.as_str()).or_default().push(n);
    }
    for (region, nodes) in regions {
        let newest = nodes.iter().filter_map(|n| n.version).max();
        let mut by: BTreeMap<(Option<u64>, &str), usize> = BTreeMap::new();
        for n in &nodes {
            *by.entry((n.version, n.state.as_str())).or_default() += 1;
        }
        out!("region {region}: {} node(s)", nodes.len())?;
        for ((version, state), count) in by.iter().rev() {
            let v = version.map_or("nothing".to_owned(), |v| format!("version {v}"));
            out!("  {v}, {state}: {count}")?;
        }
        for n in nodes.iter().filter(|n| n.version != newest) {
            out!("  behind: {}", laggard(n))?;
        }
    }
    Ok(())
}
