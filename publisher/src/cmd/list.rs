//! `list --store URL`: bundles, channels and pins.

use anyhow::Result;
use strata_common::channel;
use strata_common::pointer::{Pointer, PointerKind};
use strata_common::store::{self, StoreUrl};
use strata_common::time;

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
        // The manifest unverified, for the line only: which tenants a
        // rollback holds back there.
        let held = strata_common::bundle::peek_manifest(store.as_ref(), &v.bundle_key())
            .map(|m| held_note(&m.held))
            .unwrap_or_default();
        out!("snapshot {v:>8}  {}{held}", v.bundle_key())?;
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
            match Pointer::read_unverified(store.as_ref(), kind, name) {
                Ok(Some((p, _))) if p.kind == PointerKind::Unpin => out!(
                    "unpin    {name:<12} → the channel (signed {})",
                    p.created_at
                )?,
                Ok(Some((p, _))) => out!(
                    "{:<8} {name:<12} → version {} (expires {}){}",
                    if kind == PointerKind::Channel {
                        "channel"
                    } else {
                        "pin"
                    },
                    p.version,
                    p.expires_at,
                    expiry_note(kind, &p.expires_at)
                )?,
                Ok(None) => {}
                Err(e) => out!("{key}: unreadable: {e}")?,
            }
        }
    }
    Ok(())
}

/// `  held: a at 1.2.0 (until above 1.3.0), …` for a snapshot holding
/// tenants back by rollback; empty otherwise.
pub fn held_note(held: &std::collections::BTreeMap<String, strata_common::bundle::Hold>) -> String {
    if held.is_empty() {
        return String::new();
    }
    let each: Vec<String> = held
        .iter()
        .map(|(t, h)| format!("{t} at {} (until above {})", h.version, h.above))
        .collect();
    format!("  held: {}", each.join(", "))
}

/// What an operator must know of a document's expiry: agents refuse an
/// expired one, and one that expires within [`SOON`] needs a refresh.
fn expiry_note(kind: PointerKind, expires_at: &str) -> String {
    let now = time::now();
    let what = match kind {
        PointerKind::Channel => "`strata-publisher refresh` it",
        PointerKind::Pin | PointerKind::Unpin => "pin again, or unpin",
    };
    match time::parse_exact(expires_at) {
        Err(_) => "  UNREADABLE expiry: agents refuse it".to_owned(),
        Ok(t) if t <= now => format!("  EXPIRED: agents refuse it; {what}"),
        Ok(t) if t.duration_since(now).is_ok_and(|left| left < SOON) => {
            format!("  expires within a day: {what}")
        }
        Ok(_) => String::new(),
    }
}

/// How close an expiry is worth a word.
const SOON: std::time::Duration = std::time::Duration::from_secs(24 * 3600);
