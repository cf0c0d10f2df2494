//! `history --store URL --tenant X [--json]`: the tenant's versions across
//! the store's snapshots, with config hash, when, provenance and holds.

use std::path::PathBuf;

use anyhow::Result;
use strata_common::store::{self, StoreUrl};

use crate::input::ReadTrust;

/// Arguments of `history`.
#[derive(clap::Args)]
pub struct Args {
    /// Store URL.
    #[arg(long)]
    store: StoreUrl,
    /// The tenant.
    #[arg(long, value_name = "ID")]
    tenant: String,
    /// Print JSON for scripts.
    #[arg(long)]
    json: bool,
    /// A publisher public key: every snapshot must carry its signature
    /// (repeat for several; without one, only integrity is checked).
    #[arg(long = "trusted-key", value_name = "PUB")]
    trusted_keys: Vec<PathBuf>,
}

/// Prints one line per snapshot.
pub fn run(args: Args) -> Result<()> {
    strata_common::model::TenantId::check(&args.tenant)
        .map_err(|e| anyhow::anyhow!("--tenant: {e}"))?;
    let trust = ReadTrust::load(&args.trusted_keys)?;
    let check = trust.check();
    let store = store::open_write(&args.store)?;
    let entries = strata_common::history::history(store.as_ref(), &args.tenant, check)?;
    if args.json {
        out_block!("{}", serde_json::to_string_pretty(&entries)?)?;
        return Ok(());
    }
    out!(
        "tenant {} in {} snapshot(s) of {}",
        args.tenant,
        entries.len(),
        store.url()
    )?;
    for e in &entries {
        if let Some(error) = &e.error {
            out!("{:>6}  unreadable: {error}", e.snapshot)?;
            continue;
        }
        let what = match (&e.version, &e.config_hash) {
            (Some(v), Some(h)) => format!("{v:<10} config {}", &h[..h.len().min(12)]),
            _ => "(not in this snapshot)".to_owned(),
        };
        let held = e.held.as_ref().map_or(String::new(), |h| {
            format!(
                "  held: rolled back to snapshot {}'s record until the source is above {}",
                h.snapshot, h.above
            )
        });
        let from = match (
            e.provenance.git_commit.as_str(),
            e.provenance.ci_run_id.as_str(),
        ) {
            ("", "") => String::new(),
            (c, r) => format!("  commit {c} run {r}"),
        };
        out!("{:>6}  {}  {what}{from}{held}", e.snapshot, e.created_at)?;
    }
    Ok(())
}
