//! `list --store URL`: bundles, channels and pins.

use anyhow::Result;
use strata_common::channel;
use strata_common::pointer::PointerKind;
use strata_common::store::{self, StoreUrl};

/// Arguments of `list`.
#[derive(clap::Args)]
pub struct Args {
    /// Store URL.
    #[arg(long)]
    store: StoreUrl,
}

/// One line per bundle, channel pointer and pin.
pub fn run(args: Args) -> Result<()> {
    let store = store::open_write(&args.store)?;
    out!("store {}", store.url())?;
    for v in channel::list_versions(store.as_ref())? {
        out!("snapshot {v:>8}  {}", v.bundle_key())?;
    }
    for (kind, prefix) in [
        (PointerKind::Channel, "channels/"),
        (PointerKind::Pin, "pins/"),
    ] {
        for key in store::list(store.as_ref(), prefix)? {
            let Some(name) = key
                .strip_prefix(prefix)
                .and_then(|k| k.strip_suffix(".json"))
            else {
                continue;
            };
            match channel::read_pointer(store.as_ref(), kind, name) {
                Ok(Some((p, _))) => out!(
                    "{:<8} {name:<12} → version {} (expires {})",
                    if kind == PointerKind::Channel {
                        "channel"
                    } else {
                        "pin"
                    },
                    p.version,
                    p.expires_at
                )?,
                Ok(None) => {}
                Err(e) => out!("{key}: unreadable: {e}")?,
            }
        }
    }
    Ok(())
}
