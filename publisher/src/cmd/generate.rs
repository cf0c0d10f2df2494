//! `generate --tenants N --out DIR`: a realistic synthetic source tree.

use std::path::PathBuf;

use anyhow::{Context, Result};
use strata_common::generate;

/// Arguments of `generate`.
#[derive(clap::Args)]
pub struct Args {
    /// Number of tenants.
    #[arg(long)]
    tenants: usize,
    /// Directory to write.
    #[arg(long)]
    out: PathBuf,
}

/// Writes layer1.toml and one file per tenant.
pub fn run(args: Args) -> Result<()> {
    generate::generate(&args.out, args.tenants)
        .with_context(|| format!("writing {}", args.out.display()))?;
    out!(
        "wrote {} tenant(s) and layer1.toml to {}",
        args.tenants,
        args.out.display()
    )?;
    Ok(())
}
