//! `--source`: a config-as-code directory, or the platform's PostgreSQL
//! (`postgres://…`, with Layer 1 from `--layer1`).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use strata_common::compile::{CompileOptions, Compiled};
use strata_common::database::rows::{RowHashes, Snapshot};
use strata_common::database::{self, Database};
use strata_common::sign::SigningKey;
use strata_common::source::{self, Source};

/// Where the tenants come from.
#[derive(clap::Args, Clone, Debug)]
pub struct SourceArgs {
    /// The source: a directory (layer1.toml, tenants/*.toml) or a
    /// PostgreSQL URL (postgres://USER@HOST:PORT/DB?sslmode=require; the
    /// password from PGPASSWORD or the URL), whose active
    /// tenant_configurations rows are the tenants (schema/postgres.sql).
    #[arg(long, env = "STRATA_SOURCE", value_name = "DIR|URL")]
    pub source: String,
    /// Layer 1, with a database source (it stays config-as-code, reviewed
    /// in git); a directory source has its own layer1.toml.
    #[arg(long, value_name = "FILE")]
    pub layer1: Option<PathBuf>,
    /// CA certificates (PEM) the database's TLS certificate is checked
    /// against, instead of the system's.
    #[arg(long, env = "STRATA_DATABASE_CA", value_name = "FILE")]
    pub database_ca: Option<PathBuf>,
    /// Where a directory source's file hashes are kept between publishes
    /// (a file per source directory, keyed by each file's status like
    /// git's index), so an incremental publish reads only the files that
    /// changed: a directory, or `off` to read every file. Default:
    /// $XDG_CACHE_HOME/strata, else ~/.cache/strata.
    #[arg(long, env = "STRATA_CACHE_DIR", value_name = "DIR|off")]
    pub cache_dir: Option<String>,
}

/// An opened source, and for a database its connection and snapshot (the
/// rows are fetched from it while compiling).
pub struct Opened {
    /// The source to compile.
    pub source: Source,
    /// The database connection and the transaction the rows are read in.
    pub db: Option<(Arc<Database>, Arc<Snapshot>)>,
}

impl SourceArgs {
    /// The directory the source hash cache is kept in, if any.
    fn hash_cache(&self) -> Option<PathBuf> {
        match self.cache_dir.as_deref() {
            Some("off") => None,
            Some(dir) => Some(PathBuf::from(dir)),
            None => std::env::var_os("XDG_CACHE_HOME")
                .filter(|d| Path::new(d).is_absolute())
                .map(PathBuf::from)
                .or_else(|| {
                    std::env::var_os("HOME")
                        .filter(|d| Path::new(d).is_absolute())
                        .map(|h| Path::new(&h).join(".cache"))
                })
                .map(|d| d.join("strata")),
        }
    }

    /// Whether the source is a database.
    pub fn is_database(&self) -> bool {
        database::is_database_url(&self.source)
    }

    /// What messages name the source by (a URL without its password).
    pub fn shown(&self) -> PathBuf {
        PathBuf::from(database::shown(&self.source))
    }

    /// Connects to the database source.
    pub fn connect(&self) -> Result<Arc<Database>> {
        Ok(Database::connect(
            &self.source,
            self.database_ca.as_deref(),
        )?)
    }

    /// Layer 1 of a database source, from `--layer1`.
    pub fn layer1(&self) -> Result<strata_common::model::Layer1> {
        let Some(path) = &self.layer1 else {
            bail!(
                "--source {} is a database: pass Layer 1 with --layer1 layer1.toml (it stays in git, reviewed)",
                self.shown().display()
            );
        };
        let dir = path.parent().filter(|d| !d.as_os_str().is_empty());
        let root = std::fs::canonicalize(dir.unwrap_or(Path::new(".")))
            .with_context(|| format!("{}: its directory", path.display()))?;
        source::read_layer1(path, &root).map_err(|e| crate::input::report(path, e))
    }

    /// Opens the source: lists a directory, or reads a database's active
    /// rows in a new snapshot of `db` (connected here if `None`), hashing
    /// those `hashes` does not know.
    pub fn open(&self, db: Option<&Arc<Database>>, hashes: &mut RowHashes) -> Result<Opened> {
        if !self.is_database() {
            if self.layer1.is_some() {
                bail!(
                    "--layer1 goes with a database --source; the directory {} has its own layer1.toml",
                    self.source
                );
            }
            let dir = Path::new(&self.source);
            let source = Source {
                hash_cache: self.hash_cache(),
                ..Source::open(dir).map_err(|e| crate::input::report(dir, e))?
            };
            return Ok(Opened { source, db: None });
        }
        let layer1 = self.layer1()?;
        let db = match db {
            Some(db) => db.clone(),
            None => self.connect()?,
        };
        let (source, snapshot) = database::rows::open_snapshot(&db, layer1, hashes)
            .map_err(|e| crate::input::report(&self.shown(), e))?;
        Ok(Opened {
            source,
            db: Some((db, snapshot)),
        })
    }
}

/// What `build` and `publish` both take: a source to compile and the keys
/// to sign it with.
#[derive(clap::Args)]
pub struct SignedSource {
    #[command(flatten)]
    pub source: SourceArgs,
    #[command(flatten)]
    keys: crate::input::SigningKeys,
}

impl SignedSource {
    /// The keys (files checked for their mode) and the compiled source,
    /// keys first so a bad key fails before minutes of compiling.
    pub fn load(&self) -> Result<(Vec<SigningKey>, Compiled)> {
        let keys = self.keys.load()?;
        let opened = self.source.open(None, &mut RowHashes::default())?;
        Ok((
            keys,
            crate::input::compile_source(&opened.source, CompileOptions::default())?,
        ))
    }

    /// The signing keys alone (checked for their mode).
    pub fn keys(&self) -> Result<Vec<SigningKey>> {
        self.keys.load()
    }
}
