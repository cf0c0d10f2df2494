//! `import --source DIR --to postgres://…`: a config-as-code directory
//! loaded into the database the seed's way (a new row per changed tenant,
//! `is_active` moved to it, all in one transaction). Platforms moving from
//! git run it once; tests seed a database with it.

use std::path::PathBuf;

use anyhow::{Result, bail};
use strata_common::database::{self, Database};
use strata_common::source::Source;

/// Arguments of `import`.
#[derive(clap::Args)]
pub struct Args {
    /// The directory source (layer1.toml, tenants/*.toml).
    #[arg(long)]
    source: PathBuf,
    /// The database (postgres://USER@HOST:PORT/DB; the password from
    /// PGPASSWORD or the URL), holding schema/postgres.sql's tables.
    #[arg(long, env = "STRATA_IMPORT_TO", value_name = "URL")]
    to: String,
    /// CA certificates (PEM) the database's TLS certificate is checked
    /// against, instead of the system's.
    #[arg(long, env = "STRATA_DATABASE_CA", value_name = "FILE")]
    database_ca: Option<PathBuf>,
}

/// Imports, printing what changed.
pub fn run(args: Args) -> Result<()> {
    if !database::is_database_url(&args.to) {
        bail!(
            "--to {} is not a postgres:// URL",
            database::shown(&args.to)
        );
    }
    let source = Source::open(&args.source).map_err(|e| crate::input::report(&args.source, e))?;
    let db = Database::connect(&args.to, args.database_ca.as_deref())?;
    let done = database::import::import(&db, &source)?;
    out!(
        "imported {} into {}: {} tenant file(s), {} new tenant(s), {} new active row(s), {} unchanged",
        args.source.display(),
        db.name(),
        done.files,
        done.new_tenants,
        done.new_rows,
        done.unchanged
    )?;
    Ok(())
}
