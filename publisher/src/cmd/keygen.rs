//! `keygen --out KEY`: a new ed25519 key pair.

use std::path::PathBuf;

use anyhow::Result;
use strata_common::sign;

/// Arguments of `keygen`.
#[derive(clap::Args)]
pub struct Args {
    /// Where to write the private key (KEY.pub gets the public key).
    #[arg(long)]
    out: PathBuf,
}

/// Writes KEY (0600) and KEY.pub; never overwrites a key.
pub fn run(args: Args) -> Result<()> {
    let id = sign::generate_key(&args.out)?;
    out!(
        "wrote {} (0600) and {}",
        args.out.display(),
        sign::public_path(&args.out).display()
    )?;
    out!("key id {id}")?;
    Ok(())
}
