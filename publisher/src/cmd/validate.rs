//! `validate --source DIR`: every overlay against Layer 1.

use std::path::PathBuf;

use anyhow::Result;
use strata_common::compile::{self, CompileOptions};

use crate::input::{open_source, print_warnings, report};

/// Arguments of `validate`.
#[derive(clap::Args)]
pub struct Args {
    /// Source directory (layer1.toml, tenants/*.toml).
    #[arg(long)]
    source: PathBuf,
}

/// One line per problem; an error (exit 1) if there is any.
pub fn run(args: Args) -> Result<()> {
    let src = open_source(&args.source)?;
    let warnings =
        compile::validate(&src, CompileOptions::default()).map_err(|e| report(&args.source, e))?;
    print_warnings(&warnings);
    out!(
        "{}: {} tenant(s) valid",
        args.source.display(),
        src.tenant_files.len()
    )?;
    Ok(())
}
