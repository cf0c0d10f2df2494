//! `build --source DIR --key KEY --out FILE`: a signed bundle file, not
//! published.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result};
use strata_common::{bundle, channel, time};

use crate::input::{parse_duration, provenance_from_env};
use crate::source_arg::SignedSource;

/// Arguments of `build`.
#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    input: SignedSource,
    /// Bundle file to write.
    #[arg(long)]
    out: PathBuf,
    /// Snapshot version recorded in the bundle.
    #[arg(long, default_value_t = 1)]
    version: u64,
    /// Lifetime of the bundle's signature.
    #[arg(long, default_value = "365d", value_parser = parse_duration)]
    expires_in: Duration,
}

/// Validates, compiles, signs and writes the bundle; never overwrites a file.
pub fn run(args: Args) -> Result<()> {
    let (keys, compiled) = args.input.load()?;
    let manifest = channel::manifest(
        &compiled,
        args.version,
        time::now(),
        args.expires_in,
        &provenance_from_env(),
    );
    let bytes = bundle::write_bundle(&manifest, &compiled.payload.compressed, &keys)?;
    write_new_file(&args.out, &bytes)?;
    out!(
        "wrote {}: version {}, {} tenant(s), {} bytes (payload {} → {} bytes)",
        args.out.display(),
        args.version,
        compiled.tenant_count,
        bytes.len(),
        compiled.payload.raw_size,
        compiled.payload.compressed.len()
    )?;
    Ok(())
}

fn write_new_file(path: &Path, bytes: &[u8]) -> Result<()> {
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)
        .with_context(|| {
            format!(
                "creating {} (an existing bundle is never overwritten)",
                path.display()
            )
        })?;
    f.write_all(bytes)
        .with_context(|| format!("writing {}", path.display()))?;
    f.sync_all()
        .with_context(|| format!("writing {}", path.display()))
}
