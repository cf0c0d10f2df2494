//! `diff --store URL A B [--json]`: tenants added, removed and changed
//! between two snapshots, with the changed fields.

use std::path::PathBuf;

use anyhow::Result;
use strata_common::diff;
use strata_common::store::{self, StoreUrl};

use crate::input::ReadTrust;

/// Arguments of `diff`.
#[derive(clap::Args)]
pub struct Args {
    /// Store URL.
    #[arg(long)]
    store: StoreUrl,
    /// The older version.
    #[arg(value_parser = clap::value_parser!(u64).range(1..))]
    a: u64,
    /// The newer version.
    #[arg(value_parser = clap::value_parser!(u64).range(1..))]
    b: u64,
    /// Print JSON for scripts.
    #[arg(long)]
    json: bool,
    /// A publisher public key: both bundles must carry its signature
    /// (repeat for several; without one, only integrity is checked).
    #[arg(long = "trusted-key", value_name = "PUB")]
    trusted_keys: Vec<PathBuf>,
}

/// Prints the difference.
pub fn run(args: Args) -> Result<()> {
    let trust = ReadTrust::load(&args.trusted_keys)?;
    let check = trust.check();
    let store = store::open_read(&args.store, None)?;
    let d = diff::diff(store.as_ref(), args.a, args.b, check)?;
    if args.json {
        out_block!("{}", serde_json::to_string_pretty(&d)?)?;
        return Ok(());
    }
    out!(
        "{} → {}: {} added, {} removed, {} changed",
        d.from,
        d.to,
        d.added.len(),
        d.removed.len(),
        d.changed.len()
    )?;
    if d.layer1_changed {
        out!(
            "layer1 changed: {} → {}",
            d.layer1_versions.0,
            d.layer1_versions.1
        )?;
    }
    for t in &d.added {
        out!("+ {t}")?;
    }
    for t in &d.removed {
        out!("- {t}")?;
    }
    for c in &d.changed {
        out!("~ {}: {}", c.tenant_id, c.fields.join(", "))?;
        for v in &c.values {
            out!(
                "    {}: {} → {}",
                v.field,
                v.old.as_deref().unwrap_or("(none)"),
                v.new.as_deref().unwrap_or("(none)")
            )?;
        }
    }
    Ok(())
}
