//! `gc --store URL --keep N [--dry-run]`: old bundles deleted, never one a
//! channel pointer or pin references.

use anyhow::Result;
use strata_common::gc::{self, Kept};
use strata_common::store::{self, StoreUrl};

/// Arguments of `gc`.
#[derive(clap::Args)]
pub struct Args {
    /// Store URL.
    #[arg(long)]
    store: StoreUrl,
    /// How many of the newest bundles to keep whatever references them.
    #[arg(long)]
    keep: usize,
    /// Show what would be deleted, delete nothing.
    #[arg(long)]
    dry_run: bool,
    /// How long an object no snapshot reaches is kept before it is deleted
    /// (format 3): a publish uploads its objects before its snapshot
    /// names them, so this must be longer than any publish takes.
    #[arg(long, default_value = "1h", value_parser = strata_common::time::parse_duration)]
    grace: std::time::Duration,
}

/// One line per bundle kept (with why) and per bundle deleted.
pub fn run(args: Args) -> Result<()> {
    let store = store::open_write(&args.store)?;
    let report = gc::gc(store.as_ref(), args.keep, args.dry_run, args.grace)?;
    for (v, why) in &report.kept {
        let why: Vec<String> = why
            .iter()
            .map(|k| match k {
                Kept::Newest => format!("among the newest {}", args.keep),
                Kept::Referenced(key) => format!("named by {key}"),
                Kept::InFlight => "newer than every pointer (a publish in flight)".to_owned(),
            })
            .collect();
        out!("keep   {v:>8}  {}", why.join(", "))?;
    }
    let verb = if args.dry_run {
        "would delete"
    } else {
        "deleted"
    };
    for v in &report.deleted {
        out!("{verb} {v:>8}")?;
    }
    let done = if args.dry_run {
        "to delete (dry run: nothing deleted)"
    } else {
        "deleted"
    };
    out!(
        "{}: {} bundle(s) {done}, {} kept",
        store.url(),
        report.deleted.len(),
        report.kept.len()
    )?;
    let o = &report.objects;
    out!(
        "objects: {} reachable, {} unreferenced {} ({} bytes), {} unreferenced kept for the grace period ({})",
        o.reachable,
        o.deleted,
        if args.dry_run { "to delete" } else { "deleted" },
        o.deleted_bytes,
        o.in_grace,
        format!("{} s", args.grace.as_secs()),
    )?;
    out!(
        "note: a node's local pin_file is not in the store; gc cannot see it, so keep enough versions for the nodes held by one"
    )?;
    Ok(())
}
